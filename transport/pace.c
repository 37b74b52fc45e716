/*
 * The pacer (see pace.h): a token bucket kept as two running totals.
 *
 *   issued   every byte ever taken; a take's bytes end at issued's value
 *            just after it (its mark);
 *   credit   every byte the rate has allowed so far, never more than
 *            issued + burst (an idle bucket saves at most one burst).
 *
 * A taker may go once credit has reached its mark. Since credit grows by
 * rate * dt and starts at 0, the bytes of every taker that went are at
 * most the rate's integral over the time: two tunnels on one pacer share
 * the rate whatever their frames. A waiter does not compute its deadline
 * once but looks again each tick, so a rate change applies to those
 * already waiting.
 *
 * Totals in double: exact to the byte up to 2^53 bytes (8 PiB), far
 * beyond any migration.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "common/util.h"
#include "pace.h"

struct pacer {
	pthread_mutex_t mu;
	int refs;			/* atomic */
	struct pace_clock clock;
	/* under mu */
	double rate;			/* bytes/s; 0: not paced */
	double burst;			/* bytes */
	double issued, credit;		/* bytes, since the start */
	uint64_t last_ns;		/* credit is counted up to here */
};

static uint64_t real_now_ns(void *opaque)
{
	(void)opaque;
	return ferry_now_ns();
}

static void real_sleep_ns(void *opaque, uint64_t ns)
{
	struct timespec ts = {
		.tv_sec = (time_t)(ns / 1000000000ull),
		.tv_nsec = (long)(ns % 1000000000ull),
	};

	(void)opaque;
	nanosleep(&ts, NULL);
}

static double burst_of(double rate)
{
	double b = rate * PACE_BURST_MS / 1000.0;

	return b < PACE_BURST_MIN_BYTES ? PACE_BURST_MIN_BYTES : b;
}

/* With mu held: credit counted up to now, at the current rate. */
static void refill_locked(struct pacer *p)
{
	uint64_t now = p->clock.now_ns(p->clock.opaque);

	if (p->rate <= 0)
		p->credit = p->issued;	/* not paced: everything may go */
	else if (now > p->last_ns)
		p->credit += (double)(now - p->last_ns) * p->rate / 1e9;
	if (p->credit > p->issued + p->burst)
		p->credit = p->issued + p->burst;
	p->last_ns = now;
}

/* With mu held, after refill_locked: how long until credit reaches @mark
 * at the current rate (0: go now). */
static uint64_t wait_ns_locked(const struct pacer *p, double mark)
{
	if (p->rate <= 0 || p->credit >= mark)
		return 0;	/* not paced, or reached */
	/* Rounded up: the next look finds it reached. */
	return (uint64_t)((mark - p->credit) * 1e9 / p->rate) + 1;
}

int pacer_new(struct pacer **out, uint64_t rate_bytes_per_s,
	      const struct pace_clock *clock)
{
	struct pacer *p = calloc(1, sizeof(*p));

	*out = NULL;
	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->mu, NULL);
	p->refs = 1;
	p->clock = clock ? *clock : (struct pace_clock){
		.now_ns = real_now_ns, .sleep_ns = real_sleep_ns,
	};
	p->rate = (double)rate_bytes_per_s;
	p->burst = burst_of(p->rate);
	p->last_ns = p->clock.now_ns(p->clock.opaque);
	*out = p;
	return 0;
}

struct pacer *pacer_ref(struct pacer *p)
{
	if (p)
		__atomic_fetch_add(&p->refs, 1, __ATOMIC_RELAXED);
	return p;
}

void pacer_unref(struct pacer *p)
{
	if (!p || __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	pthread_mutex_destroy(&p->mu);
	free(p);
}

void pacer_set_rate(struct pacer *p, uint64_t rate_bytes_per_s)
{
	pthread_mutex_lock(&p->mu);
	refill_locked(p);	/* what the old rate allowed until now */
	p->rate = (double)rate_bytes_per_s;
	p->burst = burst_of(p->rate);
	pthread_mutex_unlock(&p->mu);
}

uint64_t pacer_rate(struct pacer *p)
{
	uint64_t r;

	pthread_mutex_lock(&p->mu);
	r = (uint64_t)p->rate;
	pthread_mutex_unlock(&p->mu);
	return r;
}

int pacer_take(struct pacer *p, uint64_t bytes, bool (*stop)(void *arg),
	       void *arg)
{
	const uint64_t tick_ns = PACE_TICK_MS * 1000000ull;
	uint64_t wait;
	double mark;

	pthread_mutex_lock(&p->mu);
	refill_locked(p);
	p->issued += (double)bytes;
	mark = p->issued;
	wait = wait_ns_locked(p, mark);
	pthread_mutex_unlock(&p->mu);
	while (wait) {
		if (stop && stop(arg)) {
			/* Nothing goes: the bytes are the others' again. */
			pthread_mutex_lock(&p->mu);
			p->credit += (double)bytes;
			pthread_mutex_unlock(&p->mu);
			return -ECANCELED;
		}
		p->clock.sleep_ns(p->clock.opaque, wait < tick_ns ? wait : tick_ns);
		pthread_mutex_lock(&p->mu);
		refill_locked(p);
		wait = wait_ns_locked(p, mark);
		pthread_mutex_unlock(&p->mu);
	}
	return 0;
}

void pacer_charge(struct pacer *p, uint64_t bytes)
{
	pthread_mutex_lock(&p->mu);
	refill_locked(p);
	p->issued += (double)bytes;
	pthread_mutex_unlock(&p->mu);
}
