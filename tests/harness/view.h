/*
 * The guest's view of a migration, from its heartbeats as the host saw
 * them arrive (vm_beats()): what the application felt, not what QEMU
 * counted.
 *
 *   blackout     the longest time the guest made no progress at all (no
 *                heartbeat) in the window: the switchover, a post-copy
 *                stall, anything
 *   half rate    from the blackout's start until the guest first does work
 *                at half its undisturbed rate or better, over VIEW_RATE_MS
 *   work lost    the work the guest would have done undisturbed over the
 *                window, less what it did, in time at its undisturbed rate
 *
 * Work is the guest's dirtied-page counter; an idle guest's work is its
 * heartbeats. "Undisturbed" is its rate before the window.
 */
#ifndef FERRY_TESTS_VIEW_H
#define FERRY_TESTS_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tests/harness/vm.h"

/* The undisturbed rate needs at least this much of it before the window. */
#define VIEW_BASE_MIN_MS 500
/* How long the guest must keep up half its rate to count as recovered. */
#define VIEW_RATE_MS 200
/* The window may end this long after the last beat (it then ends there);
 * later, the guest stopped and its view is unknown. */
#define VIEW_TAIL_MS 1000
/* Enough heartbeats for a long benchmark run (10 min at 10 ms). */
#define VIEW_BEATS_MAX 60000

struct guest_view {
	double base_rate;	/* work per second before the window */
	bool by_beats;		/* the guest was idle: work is heartbeats */
	uint64_t blackout_us;
	uint64_t blackout_at_us;	/* CLOCK_MONOTONIC, us */
	uint64_t half_rate_us;	/* UINT64_MAX: not within the window */
	uint64_t lost_us;
};

/*
 * Analyse @n beats (time order) for the window [@from_us, @to_us]: the
 * beats must start at least VIEW_BASE_MIN_MS before @from_us and go on to
 * within VIEW_TAIL_MS of @to_us. Returns 0, or -ENODATA when there is not
 * enough before or in the window.
 */
int guest_view(const struct vm_beat *b, size_t n, uint64_t from_us,
	       uint64_t to_us, struct guest_view *v);

/* The same for a migration from @src to @dst (either may be NULL):
 * collects the beats since @base_us itself. */
int guest_view_of(struct vm *src, struct vm *dst, uint64_t base_us,
		  uint64_t from_us, uint64_t to_us, struct guest_view *v);

/* After a migration to a resumed destination: the guest's time to settle
 * before the window ends, and how often it must beat then, within how
 * long, to count as running. */
#define VIEW_SETTLE_MS 2000
#define VIEW_ALIVE_BEATS 5
#define VIEW_ALIVE_MS 10000

/* The view in whole ms, rounded up, as the benchmarks report it;
 * *@half_rate_ms UINT64_MAX: not within the window. */
void guest_view_ms(const struct guest_view *v, uint64_t *blackout_ms,
		   uint64_t *half_rate_ms, uint64_t *lost_ms);

/*
 * A resumed destination arrived whole: its guest beats on (so its memory
 * invariant held: a stale working-set page makes it halt) and the RAM it
 * never writes after READY equals the source's, byte for byte. Dumping
 * RAM stalls the guest: after the view. 0, or -errno with @err.
 */
int guest_intact(const char *dir, struct vm *src, struct vm *dst,
		 struct ferry_error *err);

/* The beats since @base_us as text, one "ms work" line each, ms from
 * @from_us (negative before it): the guest's progress to plot. */
int guest_view_trace(struct vm *src, struct vm *dst, uint64_t base_us,
		     uint64_t from_us, const char *path);

#endif /* FERRY_TESTS_VIEW_H */
