/*
 * ferry recover: after a crash, bring each unfinished migration of this
 * host to exactly one running copy of its guest, from the journal (what
 * ferry was doing, docs/journal.md) and the QEMU's own state (what
 * happened). Each side decides what it can alone:
 *
 *   source, QEMU's migration completed: the destination holds the whole
 *       guest; the source stays stopped (recover the destination);
 *   source, migration still streaming without ferry, before the
 *       switchover: cancelled; the source guest runs (as it was);
 *   source, migration failed or cancelled: the source guest runs (as it
 *       was), and what ferry left in QEMU is cleared;
 *   destination, incoming migration completed: it holds a whole copy,
 *       but a source QEMU whose return path broke at the very end fails
 *       and runs its guest again: resumed (unless the migration asked to
 *       leave it paused) only when the source host's recover said its QEMU
 *       completed (--source-completed ID); else it stays paused;
 *   destination, anything else: it does not hold the guest; nothing to do;
 *   source in post-copy: resumed on new connections to the receiver the
 *       journal names (which takes it back from its own journal) and run
 *       to completion (mig_resume_postcopy);
 *   destination in post-copy: it waits for that; after post-copy began
 *       and completed, it is resumed without the source's proof (the
 *       source can never run the guest again).
 * A migration recovered is marked so in its journal (state "recovered").
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "abi.h"
#include "blk.h"
#include "journal.h"
#include "mig.h"
#include "recover.h"
#include "transport/wire.h"
#include "common/util.h"

/* How long a cancelled migration may take to leave the active states. */
#define RECOVER_CANCEL_MS 10000
#define RECOVER_POLL_MS 50
/* recover_source(): resume the post-copy (the QMP connection must go). */
#define RECOVER_RESUME 1

struct recovery {
	const char *id, *side, *qmp, *last, *source_completed;
	bool was_running, paused;
	bool had_postcopy;	/* the journal says post-copy started */
	json_t *lines;		/* the journal */
	struct journal *j;	/* held; NULL once a resumed run took it */
	uint32_t wait_ms;
	char outcome[FERRY_ERROR_MSG_MAX];
	bool needs_person;
};

static void wait_inactive(struct qmp *q, struct mig_info *info)
{
	uint64_t deadline = ferry_now_ms() + RECOVER_CANCEL_MS;

	while (ferry_now_ms() < deadline && mig_query(q, info, NULL) == 0 &&
	       mig_state_active(info->state))
		usleep(RECOVER_POLL_MS * 1000);
}

/* The first entry's string @key, or NULL. */
static const char *first_str(const struct recovery *r, const char *key)
{
	return json_string_value(json_object_get(json_array_get(r->lines, 0), key));
}

/* The last value of @key in the journal's @state entries, or NULL. */
static const char *step_str(const struct recovery *r, const char *state,
			    const char *key)
{
	const char *v = NULL;
	size_t i;
	json_t *l;

	json_array_foreach(r->lines, i, l)
		if (!strcmp(json_string_value(json_object_get(l, "state")) ?: "",
			    state) && json_is_string(json_object_get(l, key)))
			v = json_string_value(json_object_get(l, key));
	return v;
}

/*
 * Whether post-copy began, as far as this side's journal can tell: the
 * source records its request; a destination records QEMU seen in
 * post-copy ("seen"), the only proof that the source can never run the
 * guest again (a request QEMU may not act on).
 */
static bool journal_saw_postcopy(const struct recovery *r)
{
	bool dest = !strcmp(r->side, "destination");
	size_t i;
	json_t *l;

	json_array_foreach(r->lines, i, l)
		if (!strcmp(json_string_value(json_object_get(l, "state")) ?: "",
			    JOURNAL_POSTCOPY) &&
		    (!dest || json_is_true(json_object_get(l, "seen"))))
			return true;
	return false;
}

/* The migration's options, as its start recorded them, for a resume. */
static int journal_opts(const struct recovery *r, struct ferry_migrate_opts *o,
			const char *state_dir, struct ferry_error *err)
{
	json_t *first = json_array_get(r->lines, 0);
	json_t *tls = json_object_get(first, "tls");
	const char *codec = first_str(r, "codec");

	memset(o, 0, sizeof(*o));
	o->qmp_path = r->qmp;
	o->to_host = first_str(r, "to_host");
	o->to_port = (uint16_t)json_integer_value(json_object_get(first, "to_port"));
	o->paused = r->paused;
	o->direct = json_is_true(json_object_get(first, "direct"));
	o->vm_name = first_str(r, "vm");
	o->state_dir = state_dir;
	o->streams = (uint32_t)json_integer_value(json_object_get(first, "streams"));
	o->no_handoff = json_is_true(json_object_get(first, "no_handoff"));
	o->max_bandwidth_bytes_per_s =
		(uint64_t)json_integer_value(json_object_get(first, "bandwidth"));
	o->tls.creds_dir = json_string_value(json_object_get(tls, "creds_dir"));
	o->tls.psk_file = json_string_value(json_object_get(tls, "psk_file"));
	o->tls.psk_identity = json_string_value(json_object_get(tls, "psk_identity"));
	o->tls.hostname = json_string_value(json_object_get(tls, "hostname"));
	o->tls.insecure = json_is_true(json_object_get(tls, "insecure"));
	if (!o->to_host || !o->to_port || !codec)
		return ferry_error_set(err, -EINVAL, "the journal of migration %s "
				       "does not say where its receiver was (a "
				       "journal of an older ferry)", r->id);
	if (ferry_codec_parse(codec, &o->codec, &o->codec_level, err) < 0)
		return -EINVAL;
	o->codec_level = (int)json_integer_value(json_object_get(first,
								"codec_level"));
	return 0;
}

/*
 * Source, post-copy paused (or still streaming on its own): resume it
 * on new connections to the receiver and run it to completion. The run
 * takes the journal over and writes its verdict there.
 */
static int resume_postcopy(struct recovery *r, const char *state_dir,
			   struct ferry_error *err)
{
	struct mig_resume rs = {
		.id = r->id,
		.transport = step_str(r, JOURNAL_STREAMING, "transport") ?: "tunnel",
		.journal = r->j,
		.wait_ms = r->wait_ms,
		.was_running = r->was_running,
	};
	struct ferry_migrate_opts o;
	struct ferry_migration *m;
	struct ferry_report rep;
	struct ferry_error e = { 0 };
	int rc;

	rc = journal_opts(r, &o, state_dir, err);
	if (rc < 0)
		return rc;
	m = ferry_migration_new(&o, err);
	if (!m)
		return ferry_error_prefix(err, "resuming post-copy: ");
	r->j = NULL;
	rc = mig_resume_postcopy(m, &rs, &rep, &e);
	ferry_migration_free(m);
	if (rc == 0) {
		snprintf(r->outcome, sizeof(r->outcome), "post-copy resumed and "
			 "completed: the destination holds the whole guest, which "
			 "%s; the source stays stopped", r->paused ?
			 "stays paused, as the migration asked" : "runs");
		return 0;
	}
	r->needs_person = true;
	snprintf(r->outcome, sizeof(r->outcome), "post-copy could not resume "
		 "(%s); the guest's memory is split between the hosts and both "
		 "stay paused. Run ferry recover again once a receiver runs on "
		 "the destination host (ferry serve, or ferry receive, with its "
		 "state directory)", e.msg);
	return 0;
}

/* Destination, in post-copy: it holds part of the guest, and waits. */
static bool dest_waits_in_postcopy(struct recovery *r, const struct mig_info *info)
{
	if (!mig_state_postcopy(info->state))
		return false;
	r->needs_person = true;
	snprintf(r->outcome, sizeof(r->outcome), "post-copy was interrupted "
		 "(QEMU: '%s'): the destination holds part of the guest and "
		 "waits. A receiver on this host (ferry serve, or ferry receive, "
		 "with this state directory) takes it back when ferry recover "
		 "on the source host resumes it", info->status);
	return true;
}

static int recover_source(struct recovery *r, struct qmp *q,
			  struct mig_info *info, struct ferry_error *err)
{
	char status[32];
	bool past_switchover = !strcmp(r->last, JOURNAL_SWITCHOVER);

	if (info->state == MIG_S_COMPLETED) {
		snprintf(r->outcome, sizeof(r->outcome), "the source QEMU completed "
			 "its migration: the destination holds the whole guest; "
			 "the source stays stopped. On the destination host run: "
			 "ferry recover --source-completed %s", r->id);
		return 0;
	}
	/* Post-copy: the destination runs on pages only the source has. */
	if (mig_state_postcopy(info->state))
		return RECOVER_RESUME;
	/* Waiting in pre-switchover, QEMU has not sent the device state:
	 * whatever the journal says, the source still holds the guest. */
	if (mig_state_active(info->state) && past_switchover &&
	    info->state != MIG_S_PRE_SWITCHOVER) {
		r->needs_person = true;
		snprintf(r->outcome, sizeof(r->outcome), "the switchover had "
			 "started and QEMU is still '%s': run ferry recover again "
			 "once it has finished", info->status);
		return 0;
	}
	if (mig_state_active(info->state)) {
		/* Streaming without ferry before the switchover: the source
		 * still holds the whole guest; stop the stream there. */
		qemu_migrate_cancel(q, NULL);
		wait_inactive(q, info);
		if (mig_state_active(info->state))
			return ferry_error_set(err, -ETIMEDOUT, "the source QEMU's "
					       "migration is still '%s' after "
					       "migrate_cancel", info->status);
		/* It completed before the cancel took: as above. */
		if (info->state == MIG_S_COMPLETED)
			return recover_source(r, q, info, err);
	}
	if (blk_clear_stale(q, err) < 0)
		return -EIO;
	if (mig_vm_status(q, status, sizeof(status), err) < 0)
		return -EIO;
	if (r->was_running && strcmp(status, "running") != 0 && qemu_cont(q, err) < 0)
		return ferry_error_prefix(err, "resuming the source guest: ");
	snprintf(r->outcome, sizeof(r->outcome), "the switchover never happened "
		 "(QEMU: '%s'): the source guest %s", info->status,
		 r->was_running ? "runs" : "stays paused, as it was");
	return 0;
}

static int recover_destination(struct recovery *r, struct qmp *q,
			       struct mig_info *info, struct ferry_error *err)
{
	char status[32];

	if (dest_waits_in_postcopy(r, info))
		return 0;
	if (mig_state_active(info->state)) {
		r->needs_person = true;
		snprintf(r->outcome, sizeof(r->outcome), "the destination QEMU is "
			 "still loading ('%s'): run ferry recover again once it "
			 "has finished", info->status);
		return 0;
	}
	if (info->state != MIG_S_COMPLETED) {
		snprintf(r->outcome, sizeof(r->outcome), "the destination QEMU's "
			 "migration is '%s': it does not hold the guest (the "
			 "source does)", info->status[0] ? info->status : "none");
		return 0;
	}
	/* After post-copy began, the source never runs its guest again. */
	if (!r->had_postcopy &&
	    (!r->source_completed || strcmp(r->source_completed, r->id) != 0)) {
		r->needs_person = true;
		snprintf(r->outcome, sizeof(r->outcome), "the destination QEMU "
			 "completed: it holds a whole copy, paused. Only the source "
			 "host can tell whether the source stopped for good: run "
			 "ferry recover there; if it says the source completed, run "
			 "ferry recover --source-completed %s here", r->id);
		return 0;
	}
	if (mig_vm_status(q, status, sizeof(status), err) < 0)
		return -EIO;
	if (!r->paused && strcmp(status, "running") != 0 && qemu_cont(q, err) < 0)
		return ferry_error_prefix(err, "resuming the destination guest: ");
	snprintf(r->outcome, sizeof(r->outcome), "the destination QEMU completed: "
		 "it holds the whole guest, which %s", r->paused ?
		 "stays paused, as the migration asked" : "runs");
	return 0;
}

/* What became of one migration, to the caller's o->each. */
static void tell(const struct ferry_recover_opts *o, const struct recovery *r,
		 const char *outcome, int error)
{
	struct ferry_recovery rec = {
		.size = sizeof(rec), .id = r->id, .side = r->id ? r->side : NULL,
		.outcome = outcome, .error = error,
		.needs_person = !error && r->needs_person,
	};

	if (o->each)
		o->each(&rec, o->opaque);
}

/* One journal file; o->each hears what became of it, unless it ended
 * long ago. */
static int recover_file(const struct ferry_recover_opts *o, const char *name,
			struct ferry_error *err)
{
	const char *state_dir = o->state_dir;
	char path[PATH_MAX];
	struct recovery r = { .source_completed = o->source_completed,
			      .wait_ms = o->wait_ms };
	struct mig_info info = { 0 };
	struct qmp *q;
	json_t *first;
	int rc;

	snprintf(path, sizeof(path), "%s/%s/%s", state_dir, JOURNAL_DIR, name);
	rc = journal_read(path, &r.lines, err);
	if (rc < 0)
		goto out_lines;
	first = json_array_get(r.lines, 0);
	r.last = json_string_value(json_object_get(
			json_array_get(r.lines, json_array_size(r.lines) - 1),
			"state"));
	if (!first || journal_terminal(r.last))
		goto out_lines;
	r.id = first_str(&r, "id");
	r.side = first_str(&r, "side");
	r.qmp = first_str(&r, "qmp");
	r.was_running = json_is_true(json_object_get(first, "was_running"));
	r.paused = json_is_true(json_object_get(first, "paused"));
	/* The id names a file: one safe path component, like a VM name. */
	if (!r.id || !r.side || !r.qmp || !wire_vm_name_valid(r.id)) {
		rc = ferry_error_set(err, -EINVAL, "%s: no id, side or QMP socket "
				     "in its first entry", path);
		goto out_lines;
	}
	r.had_postcopy = journal_saw_postcopy(&r);
	/* Its owner holds the journal while it lives: leave it be. */
	rc = journal_open(&r.j, state_dir, r.id, r.side, err);
	if (rc == -EBUSY) {
		tell(o, &r, "in progress (a live ferry holds its journal)", 0);
		rc = 0;
	}
	if (!r.j)
		goto out_lines;
	q = qmp_connect(r.qmp, MIG_QMP_TIMEOUT_MS, err);
	if (!q && err->code != -ENOENT && err->code != -ECONNREFUSED) {
		/* Connected, no greeting: another client holds QEMU's one
		 * QMP connection. It is not gone. */
		r.needs_person = true;
		snprintf(r.outcome, sizeof(r.outcome), "its QEMU (%s) does not "
			 "answer (%s): run ferry recover again when nothing else "
			 "holds its QMP socket", r.qmp, err->msg);
		rc = 0;
	} else if (!q) {
		snprintf(r.outcome, sizeof(r.outcome), "its QEMU (%s) is gone: %s",
			 r.qmp, r.had_postcopy ? "post-copy had started, so the "
			 "guest is lost (each side held part of its memory that "
			 "the other lacks)" : !strcmp(r.side, "source") ?
			 "the guest lives on only if the destination took over" :
			 "the destination does not hold the guest");
		rc = 0;
	} else {
		rc = mig_query(q, &info, err);
		if (rc == 0)
			rc = !strcmp(r.side, "source") ?
			     recover_source(&r, q, &info, err) :
			     recover_destination(&r, q, &info, err);
		/* QEMU's one QMP connection is the resumed run's now. */
		qmp_close(q);
		if (rc == RECOVER_RESUME)
			rc = resume_postcopy(&r, state_dir, err);
	}
	if (rc == 0) {
		tell(o, &r, r.outcome, 0);
		ferry_log(FERRY_LOG_INFO, "recover: migration %s (%s): %s", r.id,
			  r.side, r.outcome);
		/* Done with it, unless a person must decide (or the resumed
		 * run wrote its own verdict). */
		if (!r.needs_person && r.j)
			rc = journal_step(r.j, JOURNAL_RECOVERED,
					  json_pack("{s:s}", "outcome", r.outcome),
					  err);
	}
	journal_close(r.j);
out_lines:
	if (rc < 0)
		tell(o, &r, err->msg, rc);
	json_decref(r.lines);
	return rc;
}

_Static_assert(sizeof(struct ferry_recover_opts) >= ABI0_RECOVER_OPTS_SIZE,
	       "a public struct shrank");

int ferry_recover_sized(const struct ferry_recover_opts *in, size_t size,
			struct ferry_error *err)
{
	struct ferry_recover_opts o;
	char dir[PATH_MAX];
	struct dirent *e;
	int rc = 0;
	DIR *d;

	if (abi_copy_in(&o, sizeof(o), in, size) < 0)
		return ferry_error_set(err, -EINVAL, "this libferry (%s) does not "
				       "know an option the program set (built "
				       "against a later ferry.h)",
				       FERRY_VERSION_STRING);
	if (!o.state_dir)
		return ferry_error_set(err, -EINVAL, "recover needs the state "
				       "directory");
	snprintf(dir, sizeof(dir), "%s/%s", o.state_dir, JOURNAL_DIR);
	d = opendir(dir);
	if (!d) {
		if (errno == ENOENT)
			return 0;	/* nothing was ever recorded */
		return ferry_error_set(err, -errno, "cannot read %s: %s", dir,
				       strerror(errno));
	}
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		struct ferry_error one = { 0 };

		if (len < 7 || strcmp(e->d_name + len - 6, ".jsonl"))
			continue;
		if (recover_file(&o, e->d_name, &one) < 0 && !rc) {
			rc = one.code ? one.code : -EIO;
			*err = one;
		}
	}
	closedir(d);
	return rc;
}
