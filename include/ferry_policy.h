/*
 * libferry convergence policies: the one replaceable component that
 * decides how a migration finishes.
 *
 * A policy sees one sample per progress interval (what QEMU and the
 * transport measured) and answers with actions: raise the allowed
 * downtime, switch to post-copy, pause the source, abort. ferry applies
 * them, reports each decision as an event, and keeps the rules that make a
 * migration safe (a post-copy migration is never abandoned, a failure
 * leaves the source running) outside the policy.
 *
 * A policy also answers once before the migration starts (sample->pass ==
 * 0, with the link rate configured, if any): this is where it asks for the
 * capabilities it may need, since QEMU only accepts auto-converge and
 * post-copy before a migration starts. The guest's dirty rate is measured
 * (QEMU's calc-dirty-rate) during the first second of the first pass, so
 * that measuring costs no time; dirty_rate_known says when it is there.
 *
 * ferry ships three: "nova" (the downtime steps and completion timeout of
 * OpenStack Nova), "qemu" (QEMU's own auto-converge, nothing else), and
 * "predict" (docs/convergence.md), the default. A program can pass its own
 * struct ferry_policy in ferry_migrate_opts.policy.
 */
#ifndef FERRY_POLICY_H
#define FERRY_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What a policy sees. Rates are bytes per second, 0 when not known yet. */
struct ferry_policy_sample {
	uint64_t elapsed_ms;
	uint64_t pass;			/* QEMU's dirty-sync count; 0 before */
	uint64_t ram_total_bytes;
	uint64_t ram_remaining_bytes;
	uint64_t ram_transferred_bytes;
	uint64_t pass_elapsed_ms;	/* since the current pass began */
	uint64_t dirty_rate;		/* guest dirtying, measured */
	bool dirty_rate_known;		/* false: still measuring */
	uint64_t link_rate;		/* RAM throughput, measured */
	uint32_t downtime_limit_ms;	/* in force now */
	uint32_t throttle_pct;		/* QEMU's CPU throttle now */
	bool auto_converge;		/* the capability is on */
	bool postcopy_possible;		/* the capability is on */
	bool postcopy_active;
	/* What may sit between QEMU and the destination that QEMU does not
	 * count (ferry's buffers and the kernel's), bytes; 0: unknown. */
	uint64_t in_flight_bytes;
	/* Post-copy's page requests have a channel of their own, ahead of
	 * the bulk stream (QEMU's postcopy-preempt through ferry). */
	bool postcopy_preempt;
};

/* The user's limits, which a policy must respect. */
struct ferry_policy_limits {
	uint32_t downtime_max_ms;	/* never allow more downtime */
	uint32_t timeout_s;		/* 0: none */
	int timeout_action;		/* enum ferry_timeout_action */
	int postcopy;			/* enum ferry_postcopy_mode */
	uint32_t postcopy_after_pass;	/* with FERRY_POSTCOPY_AFTER_PASS */
	bool auto_converge;		/* the user asked for it */
	uint32_t steps;			/* downtime schedule steps */
	uint32_t step_delay_s_per_gib;	/* schedule: delay between steps */
};

/* What a policy answers; zero-initialised means "nothing to change". */
struct ferry_policy_actions {
	uint32_t set_downtime_ms;	/* 0: leave it */
	bool enable_auto_converge;	/* only honoured before the start */
	bool enable_postcopy;		/* only honoured before the start */
	bool start_postcopy;
	bool pause_source;		/* stop the guest: the rest is downtime */
	bool abort;
	/* Estimated time to completion from now, ms; 0: no estimate. */
	uint64_t predicted_remaining_ms;
	char reason[160];		/* why, for the event log */
};

struct ferry_policy {
	const char *name;
	/* Allocate per-migration state; NULL is an error (out of memory). */
	void *(*create)(const struct ferry_policy_limits *limits);
	/* One decision per sample (the first one with pass == 0). */
	void (*decide)(void *state, const struct ferry_policy_sample *s,
		       struct ferry_policy_actions *out);
	void (*destroy)(void *state);
};

/* The built-in policies, by name ("predict", "nova", "qemu"); NULL if
 * unknown. */
const struct ferry_policy *ferry_policy_builtin(const char *name);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_POLICY_H */
