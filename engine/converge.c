/* Convergence of a migration (see converge.h). */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <string.h>

#include "converge.h"
#include "common/util.h"

void conv_event(struct converge *c, const char *name, void *extra,
		const char *fmt, ...)
{
	json_t *o = extra ? extra : json_object();
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* The terminal events are the caller's to say (the report, and the
	 * error once): in the log only at debug level. */
	ferry_log(!strcmp(name, "completed") || !strcmp(name, "failed") ||
		  !strcmp(name, "cancelled") ? FERRY_LOG_DEBUG : FERRY_LOG_INFO,
		  "%s: %s", name, msg);
	if (c->events && o) {
		uint64_t now = ferry_unix_ms();
		json_t *e;
		char *line;

		/* QMP's shape, and the contract's envelope
		 * (docs/schema/event.schema.json). */
		json_object_set_new(o, "t_ms",
				    json_integer((json_int_t)(ferry_now_ms() - c->t0_ms)));
		json_object_set_new(o, "detail", json_string(msg));
		e = json_pack("{s:i,s:s,s:s,s:{s:I,s:I},s:O}",
			      "schema", FERRY_JSON_SCHEMA,
			      "migration_id", c->mig_id, "event", name,
			      "timestamp", "seconds", (json_int_t)(now / 1000),
			      "microseconds", (json_int_t)(now % 1000 * 1000),
			      "data", o);
		line = e ? json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		if (line) {
			fprintf(c->events, "%s\n", line);
			fflush(c->events);
			free(line);
		}
		json_decref(e);
	}
	json_decref(o);
}

static void sample_of(struct converge *c, const struct mig_info *info,
		      struct ferry_policy_sample *s)
{
	uint64_t dirty = info->dirty_pages_rate * info->page_size;
	uint64_t link = (uint64_t)(info->mbps * 1e6 / 8);

	memset(s, 0, sizeof(*s));
	s->elapsed_ms = ferry_now_ms() - c->t0_ms;
	s->pass = info->dirty_sync_count;
	s->pass_elapsed_ms = ferry_now_ms() - c->pass_t0_ms;
	s->ram_total_bytes = c->ram_bytes;
	s->ram_remaining_bytes = info->ram_remaining;
	s->ram_transferred_bytes = info->ram_transferred;
	/* QEMU's counter once it has a whole second of passes (it reflects
	 * any throttle); before that calc-dirty-rate, or else what the last
	 * pass left dirty over its length. */
	s->dirty_rate = dirty ? dirty : c->dirty_rate0 ? c->dirty_rate0 :
			c->dirty_pass_rate;
	s->dirty_rate_known = c->dirty_known || dirty || c->dirty_pass_known;
	s->link_rate = link;
	if (c->link_cap && (!s->link_rate || s->link_rate > c->link_cap))
		s->link_rate = c->link_cap;
	s->downtime_limit_ms = c->downtime_now;
	s->throttle_pct = info->throttle_pct;
	s->auto_converge = c->auto_converge_cap;
	s->postcopy_possible = c->postcopy_cap;
	s->postcopy_active = c->postcopy_active;
	s->in_flight_bytes = c->in_flight_bytes;
	s->postcopy_preempt = c->preempt;
}

uint32_t conv_qemu_downtime(const struct converge *c, uint32_t ms)
{
	uint32_t left = ms > c->in_flight_ms ? ms - c->in_flight_ms : 0;
	uint32_t t;

	/* On a link too slow for even the smallest buffers to drain in the
	 * limit, QEMU still gets a share: told 1 ms it would never converge. */
	if (left < ms / CONV_QEMU_DOWNTIME_MIN_DIV)
		left = ms / CONV_QEMU_DOWNTIME_MIN_DIV;
	t = (uint32_t)(left * CONV_QEMU_DOWNTIME_SHARE);

	return t ? t : 1;
}

static int set_downtime(struct converge *c, struct qmp *q, uint32_t ms,
			const char *why, struct ferry_error *err)
{
	int rc;

	if (ms > c->limits.downtime_max_ms)
		ms = c->limits.downtime_max_ms;
	if (!ms || ms == c->downtime_now)
		return 0;
	if (q) {
		rc = mig_set_downtime(q, conv_qemu_downtime(c, ms), err);
		if (rc < 0)
			return rc;
		c->downtime_changes++;
	}
	c->downtime_now = ms;
	if (c->in_flight_ms)
		conv_event(c, "downtime", json_pack("{s:i,s:i}", "downtime_ms",
						     (int)ms, "qemu_downtime_ms",
						     (int)conv_qemu_downtime(c, ms)),
			   "allow %u ms of downtime (%s; QEMU aims at %u: %u ms "
			   "drain from ferry's buffers after the stop)", ms, why,
			   conv_qemu_downtime(c, ms), c->in_flight_ms);
	else
		conv_event(c, "downtime", json_pack("{s:i}", "downtime_ms", (int)ms),
			   "allow %u ms of downtime (%s)", ms, why);
	return 0;
}

int conv_set_downtime_limit(struct converge *c, struct qmp *q, uint32_t ms,
			    struct ferry_error *err)
{
	c->limits.downtime_max_ms = ms;
	return set_downtime(c, q, ms, "the limit, changed while it runs", err);
}

int conv_init(struct converge *c, const struct ferry_migrate_opts *o,
	      struct qmp *q, uint64_t ram_bytes, uint64_t link_cap,
	      bool guest_running, const char *mig_id, struct ferry_error *err)
{
	const struct ferry_converge_opts *co = &o->converge;
	struct ferry_policy_actions a = { 0 };
	struct ferry_policy_sample s = { 0 };

	memset(c, 0, sizeof(*c));
	snprintf(c->mig_id, sizeof(c->mig_id), "%s", mig_id);
	c->t0_ms = ferry_now_ms();
	c->pass_t0_ms = c->t0_ms;
	c->ram_bytes = ram_bytes;
	c->link_cap = link_cap;
	c->policy = co->policy ? co->policy : ferry_policy_builtin("predict");
	c->limits = (struct ferry_policy_limits){
		.downtime_max_ms = o->downtime_ms ? o->downtime_ms :
						    FERRY_DEFAULT_DOWNTIME_MS,
		.timeout_s = o->timeout_s,
		.timeout_action = co->timeout_action,
		.postcopy = co->postcopy,
		.postcopy_after_pass = co->postcopy_after_pass,
		.auto_converge = co->auto_converge,
		.steps = co->downtime_steps ? co->downtime_steps : CONV_DEFAULT_STEPS,
		.step_delay_s_per_gib = co->downtime_step_delay_s_per_gib ?
			co->downtime_step_delay_s_per_gib :
			CONV_DEFAULT_STEP_DELAY_S_PER_GIB,
	};
	if (co->events_path) {
		c->events = fopen(co->events_path, "w");
		if (!c->events)
			return ferry_error_set(err, -errno, "--events %s: %s",
					       co->events_path, strerror(errno));
	}
	c->state = c->policy->create(&c->limits);
	if (!c->state)
		return ferry_error_set(err, -ENOMEM, "policy %s: out of memory",
				       c->policy->name);
	/* A policy with choices to make gets the guest's dirty rate, measured
	 * during the first second of the first pass. */
	c->dirty_known = !guest_running;
	if (guest_running && (co->postcopy != FERRY_POSTCOPY_NEVER ||
			      co->auto_converge)) {
		struct ferry_error e2 = { 0 };

		if (mig_dirty_rate_start(q, CONV_DIRTY_RATE_CALC_S, &e2) < 0)
			conv_event(c, "dirty_rate", NULL, "calc-dirty-rate refused (%s): "
				   "the policy waits for QEMU's counters", e2.msg);
		else
			c->measuring = true;
	}
	s.ram_total_bytes = s.ram_remaining_bytes = ram_bytes;
	s.dirty_rate_known = c->dirty_known;
	s.link_rate = link_cap;
	c->policy->decide(c->state, &s, &a);
	c->postcopy_cap = co->postcopy != FERRY_POSTCOPY_NEVER &&
			  (a.enable_postcopy || co->postcopy == FERRY_POSTCOPY_AFTER_PASS ||
			   co->timeout_action == FERRY_TIMEOUT_POSTCOPY);
	if (co->timeout_action == FERRY_TIMEOUT_POSTCOPY)
		c->postcopy_cap = true;
	c->auto_converge_cap = co->auto_converge || a.enable_auto_converge;
	c->downtime_now = a.set_downtime_ms ? a.set_downtime_ms :
					      c->limits.downtime_max_ms;
	if (c->downtime_now > c->limits.downtime_max_ms)
		c->downtime_now = c->limits.downtime_max_ms;
	if (a.predicted_remaining_ms)
		c->predicted_total_ms = a.predicted_remaining_ms;
	conv_event(c, "policy", json_pack("{s:s,s:b,s:b,s:i}", "policy",
					  c->policy->name, "postcopy",
					  c->postcopy_cap, "auto_converge",
					  c->auto_converge_cap, "downtime_ms",
					  (int)c->downtime_now),
		   "%s: %s%s%s, downtime %u ms%s%s", c->policy->name,
		   c->postcopy_cap ? "post-copy possible" : "no post-copy",
		   c->auto_converge_cap ? ", auto-converge" : "", "",
		   c->downtime_now, a.reason[0] ? "; " : "", a.reason);
	return 0;
}

void conv_fini(struct converge *c)
{
	if (c->state)
		c->policy->destroy(c->state);
	c->state = NULL;
	if (c->events)
		fclose(c->events);
	c->events = NULL;
}

/* The calc-dirty-rate started in conv_init: done yet? A failure only
 * costs the policy its early estimate. */
static void poll_dirty_rate(struct converge *c, struct qmp *q, uint64_t elapsed)
{
	struct ferry_error e2 = { 0 };
	uint64_t rate = 0;
	int rc = mig_dirty_rate_poll(q, &rate, &e2);

	if (rc == 0 && elapsed < CONV_DIRTY_RATE_CALC_S * 1000ull +
				  CONV_DIRTY_RATE_GRACE_MS)
		return;
	c->measuring = false;
	if (rc == 1) {
		c->dirty_rate0 = rate;
		c->dirty_known = true;
		conv_event(c, "dirty_rate", json_pack("{s:I}", "bytes_per_s",
						       (json_int_t)rate),
			   "the guest dirties %.1f MiB/s (calc-dirty-rate, %u s)",
			   (double)rate / (1 << 20), CONV_DIRTY_RATE_CALC_S);
	} else {
		conv_event(c, "dirty_rate", NULL, "calc-dirty-rate gave no answer "
			   "(%s): the policy waits for QEMU's counters",
			   rc < 0 ? e2.msg : "still measuring");
	}
}

int conv_step(struct converge *c, struct qmp *q, const struct mig_info *info,
	      bool *start_postcopy, struct ferry_error *err)
{
	struct ferry_policy_actions a = { 0 };
	struct ferry_policy_sample s;
	uint64_t elapsed = ferry_now_ms() - c->t0_ms;
	int rc;

	*start_postcopy = false;
	if (info->throttle_pct > c->throttle_max) {
		c->throttle_max = info->throttle_pct;
		conv_event(c, "throttle", json_pack("{s:i}", "throttle_pct",
						     (int)info->throttle_pct),
			   "QEMU throttles the guest's CPUs to %u%%",
			   info->throttle_pct);
	}
	if (c->postcopy_active)
		return 0;	/* nothing left to decide: post-copy finishes */
	if (info->dirty_sync_count != c->pass_seen) {
		uint64_t now = ferry_now_ms();

		/*
		 * A pass ended: what it left to send again was dirtied while
		 * it ran (at least: some went out before this sample). QEMU's
		 * dirty-pages-rate stays 0 until a second of passes, which a
		 * short migration never has.
		 */
		if (c->pass_seen >= 1 && info->dirty_sync_count == c->pass_seen + 1 &&
		    now > c->pass_t0_ms) {
			c->dirty_pass_rate = info->ram_remaining * 1000 /
					     (now - c->pass_t0_ms);
			c->dirty_pass_known = true;
		}
		c->pass_seen = info->dirty_sync_count;
		c->pass_t0_ms = now;
	}
	if (c->measuring)
		poll_dirty_rate(c, q, elapsed);
	sample_of(c, info, &s);
	c->policy->decide(c->state, &s, &a);
	if (a.reason[0] && !a.set_downtime_ms)
		conv_event(c, "policy", NULL, "%s", a.reason);
	c->eta_ms = a.predicted_remaining_ms;
	if (a.predicted_remaining_ms && !c->predicted_total_ms)
		c->predicted_total_ms = elapsed + a.predicted_remaining_ms;
	if (a.set_downtime_ms) {
		rc = set_downtime(c, q, a.set_downtime_ms,
				  a.reason[0] ? a.reason : c->policy->name, err);
		if (rc < 0)
			return rc;
	}
	if (a.abort)
		return ferry_error_set(err, -ECANCELED, "the %s policy aborted: %s",
				       c->policy->name, a.reason);
	if (a.start_postcopy && c->postcopy_cap)
		*start_postcopy = true;
	if (c->limits.postcopy == FERRY_POSTCOPY_AFTER_PASS && c->postcopy_cap &&
	    info->dirty_sync_count > c->limits.postcopy_after_pass)
		*start_postcopy = true;
	if (a.pause_source && !c->source_paused) {
		rc = qemu_stop(q, err);
		if (rc < 0)
			return rc;
		c->source_paused = true;
		conv_event(c, "pause", NULL, "source guest paused: %s", a.reason);
	}
	if (c->limits.timeout_s && elapsed > c->limits.timeout_s * 1000ull &&
	    !c->timed_out) {
		c->timed_out = true;
		switch ((enum ferry_timeout_action)c->limits.timeout_action) {
		case FERRY_TIMEOUT_POSTCOPY:
			if (c->postcopy_cap) {
				conv_event(c, "timeout", NULL,
					   "%u s passed: switching to post-copy",
					   c->limits.timeout_s);
				*start_postcopy = true;
				break;
			}
			/* no post-copy: abort */
			__attribute__((fallthrough));
		case FERRY_TIMEOUT_ABORT:
			conv_event(c, "timeout", NULL, "%u s passed: aborting",
				   c->limits.timeout_s);
			return ferry_error_set(err, -ETIMEDOUT,
				"the migration did not complete within %u s "
				"(%llu MiB still to send, the guest dirties "
				"%.0f MiB/s)", c->limits.timeout_s,
				(unsigned long long)(info->ram_remaining >> 20),
				(double)s.dirty_rate / (1 << 20));
		case FERRY_TIMEOUT_PAUSE:
			rc = qemu_stop(q, err);
			if (rc < 0)
				return rc;
			c->source_paused = true;
			conv_event(c, "timeout", NULL, "%u s passed: source guest "
				   "paused so that the migration completes",
				   c->limits.timeout_s);
			break;
		}
	}
	return 0;
}
