/*
 * Convergence of one migration (source side): runs the policy
 * (include/ferry_policy.h) on every progress sample, applies its actions
 * to the source QEMU, enforces --timeout-s with its action, and reports
 * every decision as an event (log line, and JSON lines with --events).
 */
#ifndef FERRY_CONVERGE_H
#define FERRY_CONVERGE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "ferry.h"
#include "ferry_policy.h"
#include "mig.h"

/* Defaults of Nova's downtime schedule. */
#define CONV_DEFAULT_STEPS 10
#define CONV_DEFAULT_STEP_DELAY_S_PER_GIB 75
/* How long calc-dirty-rate samples, alongside the first pass. */
#define CONV_DIRTY_RATE_CALC_S 1
/* Give up on the measurement this long after its end (the policy then
 * uses QEMU's own counters from the second pass on). */
#define CONV_DIRTY_RATE_GRACE_MS 5000

struct converge {
	const struct ferry_policy *policy;
	void *state;
	struct ferry_policy_limits limits;
	FILE *events;
	uint64_t t0_ms;
	uint64_t ram_bytes;
	uint64_t dirty_rate0;		/* calc-dirty-rate, once measured */
	bool measuring, dirty_known;
	uint64_t pass_seen, pass_t0_ms;	/* the current pass, since when */
	/* What the last pass left dirty over its length: the dirty rate
	 * before QEMU's own counter has its first whole second. */
	uint64_t dirty_pass_rate;
	bool dirty_pass_known;
	uint64_t eta_ms;		/* the policy's estimate of the rest */
	uint64_t link_cap;		/* --bandwidth, 0: none */
	uint64_t in_flight_bytes;	/* what QEMU does not count, at most */
	uint32_t in_flight_ms;		/* ...and how long the link drains it */
	bool preempt;			/* post-copy's preempt channel */
	uint32_t downtime_now;
	char mig_id[37];		/* the events' migration_id */
	bool postcopy_cap, auto_converge_cap;
	bool postcopy_active;
	uint64_t postcopy_t0_ms, postcopy_ms;
	uint32_t throttle_max, downtime_changes;
	uint64_t predicted_total_ms;
	bool timed_out;
	bool source_paused;
};

/* Set-up before the migration: the policy's up-front decision. */
/* @mig_id: the migration's id, for its events. */
int conv_init(struct converge *c, const struct ferry_migrate_opts *o,
	      struct qmp *q, uint64_t ram_bytes, uint64_t link_cap,
	      bool guest_running, const char *mig_id, struct ferry_error *err);

void conv_fini(struct converge *c);

/*
 * QEMU's own estimate of its last pass runs over: told 262 ms, a guest
 * dirtying 2 MiB/s over a 8 MiB/s cap paused for 310 (bench_converge,
 * QEMU 7.2). It is told this share of what is left of the limit.
 */
#define CONV_QEMU_DOWNTIME_SHARE 0.8
/* ...of at least this part of the limit, whatever is in flight. */
#define CONV_QEMU_DOWNTIME_MIN_DIV 4

/* The downtime QEMU is told for a pause of @ms in all: less what drains
 * from ferry's buffers after the guest stopped, and QEMU's own overrun
 * (CONV_QEMU_DOWNTIME_SHARE); at least 1 ms. */
uint32_t conv_qemu_downtime(const struct converge *c, uint32_t ms);

/* A new downtime limit while the migration runs (ferry set-downtime):
 * QEMU gets it now, and the policy's steps stay under it. */
int conv_set_downtime_limit(struct converge *c, struct qmp *q, uint32_t ms,
			    struct ferry_error *err);

/*
 * One sample during the migration. *start_postcopy is set when ferry must
 * switch now (the caller does it: QEMU and the receiver both take part).
 * Returns 0, or an error to end the migration (abort, timeout).
 */
int conv_step(struct converge *c, struct qmp *q, const struct mig_info *info,
	      bool *start_postcopy, struct ferry_error *err);

/* Record an event: a log line, and a JSON line with --events. @extra (may
 * be NULL) adds fields and is consumed. */
void conv_event(struct converge *c, const char *name, void *extra,
		const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif /* FERRY_CONVERGE_H */
