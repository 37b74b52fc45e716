/*
 * Pacing: one token bucket that any number of senders take from, so that
 * what they send together stays within one rate (--bandwidth). A
 * migration makes one pacer and gives it to each of its tunnels (memory,
 * disks); each sending thread takes a frame's bytes before it writes the
 * frame.
 *
 * A take reserves its bytes at once and waits while the bucket is in
 * debt: takers are served in the order they took, and the bytes they got
 * by time T, all together, are at most rate * T plus one burst. The
 * rate may change at any time (pacer_set_rate); waiters see the new one
 * within PACE_TICK_MS, as they see their stop condition.
 *
 * Thread-safe. Reference-counted: whoever holds a pointer holds a
 * reference (pacer_ref), and the last pacer_unref frees it.
 */
#ifndef FERRY_PACE_H
#define FERRY_PACE_H

#include <stdbool.h>
#include <stdint.h>

/* The bucket holds at most this much time's worth of bytes... */
#define PACE_BURST_MS 20
/* ...and at least this much: a whole tunnel frame (TUN_FRAME_BYTES) goes
 * out without waiting after a quiet moment. */
#define PACE_BURST_MIN_BYTES (1024u << 10)
/* A waiting taker looks at its stop condition and the rate this often. */
#define PACE_TICK_MS 250

/*
 * The time a pacer runs on: CLOCK_MONOTONIC and nanosleep unless a test
 * gives its own, to drive a pacer deterministically. now_ns never goes
 * back; sleep_ns may return early.
 */
struct pace_clock {
	uint64_t (*now_ns)(void *opaque);
	void (*sleep_ns)(void *opaque, uint64_t ns);
	void *opaque;
};

struct pacer;

/*
 * A pacer of @rate_bytes_per_s (0: not paced: takes never wait), on
 * @clock (NULL: the real one), holding one reference. The bucket starts
 * empty. Returns 0 or -ENOMEM.
 */
int pacer_new(struct pacer **out, uint64_t rate_bytes_per_s,
	      const struct pace_clock *clock);
/* Another reference to @p (NULL: NULL). */
struct pacer *pacer_ref(struct pacer *p);
/* Drop a reference; the last frees @p. NULL is fine. */
void pacer_unref(struct pacer *p);

/* The rate from now on (0: not paced, and every waiter goes at once). */
void pacer_set_rate(struct pacer *p, uint64_t rate_bytes_per_s);
uint64_t pacer_rate(struct pacer *p);

/*
 * Take @bytes, waiting while the bucket is in debt. Every PACE_TICK_MS of
 * waiting it asks @stop(@arg) (when @stop is not NULL) and gives up with
 * -ECANCELED when it says so, and its bytes go back to the bucket for the
 * others. Returns 0 once the bytes may go.
 */
int pacer_take(struct pacer *p, uint64_t bytes, bool (*stop)(void *arg),
	       void *arg);

/*
 * Count @bytes that went without waiting (a priority stream: post-copy's
 * urgent pages): the others' takes wait for them instead.
 */
void pacer_charge(struct pacer *p, uint64_t bytes);

#endif /* FERRY_PACE_H */
