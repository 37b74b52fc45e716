/*
 * The built-in convergence policies (include/ferry_policy.h); the model of
 * "predict" is in docs/convergence.md.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"
#include "ferry_policy.h"
#include "policy.h"

/* Precopy is preferred unless post-copy is this much faster: precopy is
 * safer (the guest never runs split between two hosts) and the guest never
 * waits for a page over the network. */
#define PREDICT_POSTCOPY_GAIN 1.2
/* QEMU aims at this share of the user's downtime limit. */
#define PREDICT_DOWNTIME_HEADROOM 0.75
/* q = dirty / link at or above this: precopy passes no longer shrink. */
#define PREDICT_Q_DIVERGE 0.9
/*
 * The guest's stall at a post-copy switchover: its vCPUs run on the
 * destination at once, and fault on the pages they touch first, one after
 * another (code, stack, the data they were writing). Each fault waits for
 * its page behind whatever is queued ahead of it: nothing with the
 * preempt channel, the bytes in flight without it. Measured on this
 * project's TCG guests (bench_converge, 32 MiB/s link): about 40 ms of
 * switchover before the first heartbeat, and one to two faults in a row.
 */
#define PREDICT_POSTCOPY_SWITCH_S 0.040
#define PREDICT_POSTCOPY_FAULTS 2
#define PREDICT_PAGE_BYTES 4096.0
/* Passes without the remaining bytes shrinking before "not converging". */
#define PREDICT_STALL_PASSES 2
/* Nova's schedule starts at downtime / steps. */
#define NOVA_MIN_STEP_DELAY_S 1

static double dmin(double a, double b)
{
	return a < b ? a : b;
}

static double gib(uint64_t bytes)
{
	return (double)bytes / (double)(1ull << 30);
}

/* ---- nova: downtime steps, then whatever the timeout action says ---- */

struct nova {
	struct ferry_policy_limits l;
	uint32_t step;
};

static void *nova_create(const struct ferry_policy_limits *l)
{
	struct nova *n = calloc(1, sizeof(*n));

	if (n)
		n->l = *l;
	return n;
}

/* Nova's _migration_downtime_steps: (delay * i, base + offset * i). */
static void nova_decide(void *state, const struct ferry_policy_sample *s,
			struct ferry_policy_actions *out)
{
	struct nova *n = state;
	uint32_t steps = n->l.steps ? n->l.steps : 1;
	double delay = n->l.step_delay_s_per_gib * gib(s->ram_total_bytes);
	double base = (double)n->l.downtime_max_ms / steps;
	double offset = ((double)n->l.downtime_max_ms - base) / steps;
	uint32_t due;

	if (delay < NOVA_MIN_STEP_DELAY_S)
		delay = NOVA_MIN_STEP_DELAY_S;
	due = (uint32_t)((double)s->elapsed_ms / 1000.0 / delay);
	if (due > steps)
		due = steps;
	if (s->pass == 0 || due > n->step || s->downtime_limit_ms == 0) {
		if (s->pass > 0)
			n->step = due;
		out->set_downtime_ms = (uint32_t)(base + offset * n->step);
		snprintf(out->reason, sizeof(out->reason),
			 "downtime step %u of %u: allow %u ms", n->step, steps,
			 out->set_downtime_ms);
	}
	if (s->pass == 0)
		out->enable_auto_converge = n->l.auto_converge;
}

/* ---- qemu: QEMU's auto-converge, nothing else ---- */

static void *qemu_create(const struct ferry_policy_limits *l)
{
	struct ferry_policy_limits *c = malloc(sizeof(*c));

	if (c)
		*c = *l;
	return c;
}

static void qemu_decide(void *state, const struct ferry_policy_sample *s,
			struct ferry_policy_actions *out)
{
	const struct ferry_policy_limits *l = state;

	if (s->pass == 0) {
		out->enable_auto_converge = true;
		out->set_downtime_ms = l->downtime_max_ms;
		snprintf(out->reason, sizeof(out->reason),
			 "QEMU auto-converge, downtime %u ms", l->downtime_max_ms);
	}
}

/* ---- predict ---- */

enum strategy { S_PRECOPY, S_THROTTLE, S_POSTCOPY };

static const char *const strategy_names[] = { "precopy", "throttle", "post-copy" };

struct predict {
	struct ferry_policy_limits l;
	enum strategy strategy;
	bool decided;
	uint64_t best_remaining;	/* smallest remaining seen at a pass end */
	uint64_t last_pass;
	uint32_t stalled_passes;
	bool switched;
};

static void *predict_create(const struct ferry_policy_limits *l)
{
	struct predict *p = calloc(1, sizeof(*p));

	if (p) {
		p->l = *l;
		p->best_remaining = UINT64_MAX;
	}
	return p;
}

/* The downtime QEMU is told to aim at, in ms: what QEMU's estimate leaves
 * out (device state, the bytes in flight in ferry's pipeline) must still
 * fit in the user's limit. */
static uint32_t predict_target_ms(const struct ferry_policy_limits *l)
{
	uint32_t t = (uint32_t)(l->downtime_max_ms * PREDICT_DOWNTIME_HEADROOM);

	return t ? t : 1;
}

/*
 * Time for precopy to converge from now, in s, or INFINITY. @remaining is
 * what is left of the current pass, which began @pass_elapsed s ago; the
 * next pass carries what the guest dirtied during the whole of this one,
 * and each later pass shrinks by q = D / L until what remains fits in the
 * downtime budget L * T.
 */
double ferry_predict_precopy_s(double remaining, double pass_elapsed,
			       double total, double dirty, double link,
			       double downtime_s)
{
	double q, budget = link * downtime_s, t, next;

	if (link <= 0)
		return INFINITY;
	if (remaining <= budget)
		return remaining / link;
	q = dirty / link;
	if (q >= PREDICT_Q_DIVERGE)
		return INFINITY;
	t = remaining / link;
	next = dmin(dirty * (pass_elapsed + t), total);
	for (int i = 0; i < 64; i++) {
		if (next <= budget)
			return t + next / link;
		t += next / link;
		next *= q;
	}
	return INFINITY;
}

/*
 * Post-copy switched now, in s: what is left of this pass, plus the pages
 * sent earlier in it that the guest dirtied since, each sent once (the
 * source stops, so nothing is dirtied twice).
 */
double ferry_predict_postcopy_s(double remaining, double pass_elapsed,
				double total, double dirty, double link)
{
	if (link <= 0)
		return INFINITY;
	return (remaining + dmin(dirty * pass_elapsed, total - remaining)) / link;
}

/*
 * The guest's longest stall after a post-copy switchover, in s (its
 * blackout, which QEMU's downtime counter does not see).
 */
double ferry_predict_postcopy_stall_s(double link, double in_flight,
				      bool preempt)
{
	double fault;

	if (link <= 0)
		return INFINITY;
	fault = (PREDICT_PAGE_BYTES + (preempt ? 0 : in_flight)) / link;
	return PREDICT_POSTCOPY_SWITCH_S + PREDICT_POSTCOPY_FAULTS * fault;
}

static void predict_decide(void *state, const struct ferry_policy_sample *s,
			   struct ferry_policy_actions *out)
{
	struct predict *p = state;
	double R = (double)s->ram_remaining_bytes, D = (double)s->dirty_rate;
	double L = (double)s->link_rate, T = predict_target_ms(&p->l) / 1000.0;
	double total = (double)s->ram_total_bytes, e = s->pass_elapsed_ms / 1000.0;
	double pre, post, stall, limit_s = p->l.downtime_max_ms / 1000.0;
	bool post_ok = p->l.postcopy == FERRY_POSTCOPY_AUTO;
	bool pass_end = s->pass != p->last_pass;

	if (s->pass == 0) {
		/* Up front: switch on what the strategy may need, since QEMU
		 * takes capabilities only now. Asking for post-copy costs
		 * nothing until it is used. */
		out->set_downtime_ms = predict_target_ms(&p->l);
		out->enable_postcopy = post_ok;
		out->enable_auto_converge = p->l.auto_converge;
		R = total;
	}
	if (!L || !s->dirty_rate_known) {
		if (s->pass == 0)
			snprintf(out->reason, sizeof(out->reason),
				 "aim at %u ms of downtime (limit %u); deciding "
				 "once the dirty rate and the link are measured",
				 predict_target_ms(&p->l), p->l.downtime_max_ms);
		return;
	}
	if (s->throttle_pct)
		D *= 1.0 - s->throttle_pct / 100.0;
	pre = ferry_predict_precopy_s(R, e, total, D, L, T);
	post = ferry_predict_postcopy_s(R, e, total, D, L);
	stall = ferry_predict_postcopy_stall_s(L, (double)s->in_flight_bytes,
					       s->postcopy_preempt);
	/* A precopy that outlasts the completion timeout does not converge. */
	if (p->l.timeout_s && isfinite(pre) &&
	    s->elapsed_ms / 1000.0 + pre > p->l.timeout_s)
		pre = INFINITY;
	if (pass_end && s->pass > 1) {
		if (s->ram_remaining_bytes < p->best_remaining) {
			p->best_remaining = s->ram_remaining_bytes;
			p->stalled_passes = 0;
		} else {
			p->stalled_passes++;
		}
	}
	if (!p->decided || pass_end) {
		enum strategy want;

		if (isfinite(pre) && (!post_ok || pre <= post * PREDICT_POSTCOPY_GAIN))
			want = S_PRECOPY;
		else if (post_ok)
			want = S_POSTCOPY;
		else if (s->auto_converge)
			want = S_THROTTLE;
		else
			want = S_PRECOPY;
		/* Measured, not only modelled: passes that stop shrinking. */
		if (p->stalled_passes >= PREDICT_STALL_PASSES && post_ok)
			want = S_POSTCOPY;
		/* Not faster at the guest's expense: a post-copy whose stall
		 * breaks the downtime limit gives way to what keeps it. */
		if (want == S_POSTCOPY && stall > limit_s) {
			if (isfinite(pre) && p->stalled_passes < PREDICT_STALL_PASSES)
				want = S_PRECOPY;
			else if (s->auto_converge)
				want = S_THROTTLE;
		}
		if (!p->decided || want != p->strategy) {
			p->strategy = want;
			p->decided = true;
			char pre_s[32];

			if (isfinite(pre))
				snprintf(pre_s, sizeof(pre_s), "%.1f s", pre);
			else
				snprintf(pre_s, sizeof(pre_s), "never converges");
			snprintf(out->reason, sizeof(out->reason),
				 "%s%s: dirty %.0f MiB/s, link %.0f MiB/s; precopy %s, "
				 "post-copy now %.1f s stalling the guest ~%.0f ms%s",
				 strategy_names[want],
				 want != S_PRECOPY || isfinite(pre) ? "" :
				 p->l.postcopy == FERRY_POSTCOPY_AFTER_PASS ?
				 " (post-copy after the pass asked for)" :
				 " (neither post-copy nor auto-converge allowed)",
				 D / (1 << 20), L / (1 << 20), pre_s, post,
				 stall * 1000, stall <= limit_s ? "" :
				 want == S_POSTCOPY ? " (over the limit: nothing "
				 "else converges)" : " (over the limit)");
		}
		p->last_pass = s->pass;
	}
	if (p->strategy == S_POSTCOPY)
		out->predicted_remaining_ms = (uint64_t)(1000.0 * post);
	else if (isfinite(pre))
		out->predicted_remaining_ms = (uint64_t)(1000.0 * pre);
	/* Post-copy as soon as it is the choice: every second of precopy
	 * before the switch only sends pages the guest will dirty again. */
	if (p->strategy == S_POSTCOPY && !p->switched && s->postcopy_possible &&
	    s->pass >= 1 && !s->postcopy_active) {
		p->switched = true;
		out->start_postcopy = true;
	}
}

static void generic_destroy(void *state)
{
	free(state);
}

static const struct ferry_policy builtin[] = {
	{ "predict", predict_create, predict_decide, generic_destroy },
	{ "nova", nova_create, nova_decide, generic_destroy },
	{ "qemu", qemu_create, qemu_decide, generic_destroy },
};

const struct ferry_policy *ferry_policy_builtin(const char *name)
{
	for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
		if (!strcmp(builtin[i].name, name))
			return &builtin[i];
	return NULL;
}
