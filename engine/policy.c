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

/* Precopy is preferred unless post-copy is this much faster (it is safer:
 * the guest never runs split between two hosts). */
#define PREDICT_POSTCOPY_GAIN 1.5
/* q = dirty / link at or above this: precopy passes no longer shrink. */
#define PREDICT_Q_DIVERGE 0.9
/* Passes without the remaining bytes shrinking before "not converging". */
#define PREDICT_STALL_PASSES 2
/* Nova's schedule starts at downtime / steps. */
#define NOVA_MIN_STEP_DELAY_S 1

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

/*
 * Time for precopy to converge, in s, or INFINITY: passes shrink by
 * q = D / L each until what remains fits in the downtime budget.
 */
double ferry_predict_precopy_s(double remaining, double dirty, double link,
			       double downtime_s);
double ferry_predict_precopy_s(double remaining, double dirty, double link,
			       double downtime_s)
{
	double q, budget = link * downtime_s, t = 0;

	if (link <= 0)
		return INFINITY;
	q = dirty / link;
	if (remaining <= budget)
		return remaining / link;
	if (q >= PREDICT_Q_DIVERGE)
		return INFINITY;
	/* Sum of the geometric series of pass times, pass by pass. */
	for (int i = 0; i < 64 && remaining > budget; i++) {
		t += remaining / link;
		remaining *= q;
	}
	return remaining > budget ? INFINITY : t + remaining / link;
}

/* Post-copy: one pass, then every page once more at most (s). */
double ferry_predict_postcopy_s(double remaining, double total, double dirty,
				double link);
double ferry_predict_postcopy_s(double remaining, double total, double dirty,
				double link)
{
	double first = remaining / link, redirtied = dirty * first;

	if (link <= 0)
		return INFINITY;
	if (redirtied > total)
		redirtied = total;
	return first + redirtied / link;
}

static void predict_decide(void *state, const struct ferry_policy_sample *s,
			   struct ferry_policy_actions *out)
{
	struct predict *p = state;
	double R = (double)s->ram_remaining_bytes, D = (double)s->dirty_rate;
	double L = (double)s->link_rate, T = p->l.downtime_max_ms / 1000.0;
	double pre, post;
	bool post_ok = p->l.postcopy != 0;	/* FERRY_POSTCOPY_NEVER is 0 */

	if (s->pass == 0) {
		/* Up front: switch on what the chosen strategy may need. QEMU
		 * takes capabilities only now. */
		out->set_downtime_ms = p->l.downtime_max_ms;
		out->enable_postcopy = post_ok;
		out->enable_auto_converge = p->l.auto_converge;
		if (!R)
			R = (double)s->ram_total_bytes;
	}
	if (!L) {
		if (s->pass == 0)
			snprintf(out->reason, sizeof(out->reason),
				 "dirty rate %.0f MiB/s; link not measured yet",
				 D / (1 << 20));
		return;
	}
	pre = ferry_predict_precopy_s(R, D, L, T);
	post = ferry_predict_postcopy_s(R, (double)s->ram_total_bytes, D, L);
	if (!p->decided || s->pass != p->last_pass) {
		enum strategy want;

		if (s->pass != p->last_pass && s->pass > 1) {
			if (s->ram_remaining_bytes < p->best_remaining) {
				p->best_remaining = s->ram_remaining_bytes;
				p->stalled_passes = 0;
			} else {
				p->stalled_passes++;
			}
		}
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
		if (!p->decided || want != p->strategy) {
			p->strategy = want;
			p->decided = true;
			snprintf(out->reason, sizeof(out->reason),
				 "%s: dirty %.0f MiB/s, link %.0f MiB/s, precopy %s, "
				 "post-copy %.1f s", strategy_names[want],
				 D / (1 << 20), L / (1 << 20),
				 isfinite(pre) ? "converges" : "cannot converge", post);
		}
		p->last_pass = s->pass;
	}
	out->predicted_remaining_ms = (uint64_t)(1000.0 *
		(p->strategy == S_POSTCOPY ? post : isfinite(pre) ? pre : post));
	/* Post-copy once the first full pass is done (pass 2 has begun):
	 * everything clean went across once, only the dirty rest is left. */
	if (p->strategy == S_POSTCOPY && !p->switched && s->postcopy_possible &&
	    s->pass >= 2 && !s->postcopy_active) {
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
