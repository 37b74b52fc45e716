/*
 * The pacer (transport/pace.c) on a clock of the test's own: time moves
 * only when a taker sleeps, by exactly what it sleeps, so every case is
 * deterministic and no check depends on how fast this machine is. Two
 * takers sharing one pacer never get more than rate * time + one burst
 * together, a rate change reaches a taker already waiting, and a stop
 * (cancel) ends a wait within one tick and gives the bytes back.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "common/util.h"
#include "transport/pace.h"

#define MiB (1ull << 20)
#define NS_PER_S 1000000000ull
#define TICK_NS (PACE_TICK_MS * 1000000ull)

/* The test's clock: now_ns moves on by each sleep, atomically, so that
 * threads may share it. A hook runs after each sleep. */
struct fake {
	uint64_t now_ns;		/* atomic */
	uint32_t sleeps;		/* atomic */
	uint64_t longest_ns;		/* the longest single sleep */
	void (*after_sleep)(struct fake *f);
	struct pacer *p;
	bool stop;			/* atomic: what the taker's stop says */
	uint64_t new_rate;		/* for after_sleep hooks */
};

static uint64_t fake_now(void *opaque)
{
	struct fake *f = opaque;

	return __atomic_load_n(&f->now_ns, __ATOMIC_SEQ_CST);
}

static void fake_sleep(void *opaque, uint64_t ns)
{
	struct fake *f = opaque;
	uint64_t prev = __atomic_load_n(&f->longest_ns, __ATOMIC_SEQ_CST);

	while (ns > prev && !__atomic_compare_exchange_n(&f->longest_ns, &prev, ns,
							  false, __ATOMIC_SEQ_CST,
							  __ATOMIC_SEQ_CST))
		;
	__atomic_fetch_add(&f->now_ns, ns, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&f->sleeps, 1, __ATOMIC_SEQ_CST);
	if (f->after_sleep)
		f->after_sleep(f);
}

static bool fake_stop(void *arg)
{
	struct fake *f = arg;

	return __atomic_load_n(&f->stop, __ATOMIC_SEQ_CST);
}

/* A pacer of @rate on @f's clock, which starts at an arbitrary time. */
static struct pacer *fake_pacer(struct fake *f, uint64_t rate)
{
	struct pace_clock c = { .now_ns = fake_now, .sleep_ns = fake_sleep,
				.opaque = f };

	f->now_ns = 1000 * NS_PER_S;
	ck_assert_int_eq(pacer_new(&f->p, rate, &c), 0);
	return f->p;
}

/* Take @bytes from @f's pacer: it must wait @want_ns of @f's time (and
 * at most a microsecond more, for rounding up). */
static void take_waiting(struct fake *f, uint64_t bytes, uint64_t want_ns)
{
	uint64_t t0 = f->now_ns;

	ck_assert_int_eq(pacer_take(f->p, bytes, NULL, NULL), 0);
	ck_assert_uint_ge(f->now_ns - t0, want_ns);
	ck_assert_uint_le(f->now_ns - t0, want_ns + 1000);
}

/* What a pacer of @rate may have let through in @ns: rate * time and
 * one burst (the larger of PACE_BURST_MS's worth and the minimum). */
static double allowed(uint64_t rate, uint64_t ns)
{
	double burst = (double)rate * PACE_BURST_MS / 1000.0;

	if (burst < PACE_BURST_MIN_BYTES)
		burst = PACE_BURST_MIN_BYTES;
	return (double)rate * (double)ns / NS_PER_S + burst;
}

/*
 * Two takers on one pacer, turn about, with frames of different sizes
 * (a memory tunnel's 1 MiB frames, a disk tunnel's smaller ones): after
 * every take, what both got together is within rate * time + burst; and
 * the pacer does not hold them back either (at least rate * time less one
 * frame, since they always have something to send).
 */
START_TEST(pace_two_takers_share_the_rate)
{
	const uint64_t rate = 8 * MiB;
	const uint64_t frame[2] = { MiB + 24, 300 * 1024 + 24 };
	struct fake f = { 0 };
	struct pacer *p = fake_pacer(&f, rate);
	uint64_t t0 = f.now_ns, got = 0;

	for (int i = 0; i < 400; i++) {
		uint64_t elapsed;

		ck_assert_int_eq(pacer_take(p, frame[i % 2], fake_stop, &f), 0);
		got += frame[i % 2];
		elapsed = f.now_ns - t0;
		ck_assert_msg((double)got <= allowed(rate, elapsed),
			      "take %d: %llu bytes in %llu ns at %llu B/s", i,
			      (unsigned long long)got, (unsigned long long)elapsed,
			      (unsigned long long)rate);
		ck_assert_msg((double)got + frame[0] >= (double)rate * elapsed / NS_PER_S,
			      "take %d: only %llu bytes in %llu ns", i,
			      (unsigned long long)got, (unsigned long long)elapsed);
	}
	/* No wait was longer than a tick: a stop would have been seen. */
	ck_assert_uint_le(f.longest_ns, TICK_NS);
	pacer_unref(p);
}
END_TEST

/* A priority stream's bytes go at once (charged), and the bulk taker
 * after them waits for them too: together they keep the rate. */
START_TEST(pace_charge_goes_first)
{
	const uint64_t rate = 8 * MiB;
	struct fake f = { 0 };
	struct pacer *p = fake_pacer(&f, rate);
	uint64_t t0 = f.now_ns;

	pacer_charge(p, 4 * MiB);
	ck_assert_uint_eq(f.now_ns, t0);		/* never waits */
	/* The bucket starts empty: the next bulk MiB waits for the charged
	 * 4 MiB and its own. */
	take_waiting(&f, MiB, (uint64_t)(5.0 * MiB / rate * NS_PER_S));
	pacer_unref(p);
}
END_TEST

/* A quiet bucket saves one burst, not the whole quiet time's worth. */
START_TEST(pace_idle_saves_one_burst)
{
	const uint64_t rate = 8 * MiB;
	struct fake f = { 0 };
	struct pacer *p = fake_pacer(&f, rate);

	f.now_ns += 60 * NS_PER_S;
	take_waiting(&f, PACE_BURST_MIN_BYTES, 0);
	ck_assert_uint_eq(f.sleeps, 0);
	take_waiting(&f, MiB, NS_PER_S / 8);
	pacer_unref(p);
}
END_TEST

struct taker {
	struct fake *f;
	uint64_t frame;
	int takes;
	uint64_t *got;		/* shared, atomic */
	uint32_t over;		/* takes after which the sum was over */
};

static void *taker_main(void *arg)
{
	struct taker *k = arg;
	const uint64_t rate = pacer_rate(k->f->p);

	for (int i = 0; i < k->takes; i++) {
		uint64_t got, now;

		if (pacer_take(k->f->p, k->frame, fake_stop, k->f))
			break;
		got = __atomic_add_fetch(k->got, k->frame, __ATOMIC_SEQ_CST);
		now = fake_now(k->f);
		if ((double)got > allowed(rate, now - 1000 * NS_PER_S))
			k->over++;
	}
	return NULL;
}

/*
 * The same from two threads at once (the pacer is shared by the send
 * workers of two tunnels): whatever the interleaving, the sum stays
 * within the rate, and both finish.
 */
START_TEST(pace_two_threads_share_the_rate)
{
	struct fake f = { 0 };
	struct pacer *p = fake_pacer(&f, 32 * MiB);
	uint64_t got = 0;
	struct taker k[2] = {
		{ .f = &f, .frame = MiB + 24, .takes = 200, .got = &got },
		{ .f = &f, .frame = 64 * 1024, .takes = 2000, .got = &got },
	};
	pthread_t th[2];

	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, taker_main, &k[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	ck_assert_uint_eq(k[0].over + k[1].over, 0);
	ck_assert_uint_eq(got, 200 * (MiB + 24) + 2000 * 64 * 1024);
	pacer_unref(p);
}
END_TEST

/* A new rate applies from now on, to takes to come. */
START_TEST(pace_rate_change)
{
	struct fake f = { 0 };
	struct pacer *p = fake_pacer(&f, 1 * MiB);

	/* 1 MiB at 1 MiB/s: a second. */
	take_waiting(&f, MiB, NS_PER_S);
	/* 4 MiB at 4 MiB/s: a second too. */
	pacer_set_rate(p, 4 * MiB);
	ck_assert_uint_eq(pacer_rate(p), 4 * MiB);
	take_waiting(&f, 4 * MiB, NS_PER_S);
	pacer_unref(p);
}
END_TEST

static void raise_rate_once(struct fake *f)
{
	if (f->sleeps == 1)
		pacer_set_rate(f->p, f->new_rate);
}

/*
 * ...and to a taker already waiting: 4 MiB at 1 MiB/s would take 4 s;
 * the rate goes to 4 MiB/s after its first tick (0.25 MiB allowed by
 * then), so the rest takes 3.75 MiB / 4 MiB/s = 0.9375 s.
 */
START_TEST(pace_rate_change_reaches_a_waiter)
{
	struct fake f = { .after_sleep = raise_rate_once, .new_rate = 4 * MiB };
	struct pacer *p = fake_pacer(&f, 1 * MiB);

	take_waiting(&f, 4 * MiB, TICK_NS + 937500000ull);
	pacer_unref(p);
}
END_TEST

static void stop_after_first_sleep(struct fake *f)
{
	__atomic_store_n(&f->stop, true, __ATOMIC_SEQ_CST);
}

/*
 * A stop (the tunnel cancelled) ends a wait at the next tick, however
 * long the wait would have been, and the bytes go back: the next taker
 * finds them in the bucket.
 */
START_TEST(pace_stop_ends_a_wait)
{
	struct fake f = { .after_sleep = stop_after_first_sleep };
	struct pacer *p = fake_pacer(&f, 1 * MiB);

	/* 100 MiB at 1 MiB/s: 100 s, unless stopped. */
	ck_assert_int_eq(pacer_take(p, 100 * MiB, fake_stop, &f), -ECANCELED);
	ck_assert_uint_eq(f.sleeps, 1);
	ck_assert_uint_eq(f.longest_ns, TICK_NS);
	/* After 0.25 s at 1 MiB/s, a quarter MiB may go at once. */
	f.after_sleep = NULL;
	ck_assert_int_eq(pacer_take(p, 256 * 1024, NULL, NULL), 0);
	ck_assert_uint_eq(f.sleeps, 1);
	pacer_unref(p);
}
END_TEST

/* A stop already set: the taker does not sleep at all. */
START_TEST(pace_stop_before_waiting)
{
	struct fake f = { .stop = true };
	struct pacer *p = fake_pacer(&f, 1 * MiB);

	ck_assert_int_eq(pacer_take(p, MiB, fake_stop, &f), -ECANCELED);
	ck_assert_uint_eq(f.sleeps, 0);
	pacer_unref(p);
}
END_TEST

struct waiter {
	struct pacer *p;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool sleeping;		/* under mu: the taker is in its wait */
	bool stop;		/* atomic */
	int rc;
};

static uint64_t real_now(void *opaque)
{
	return ferry_now_ns();
}

/* A real sleep, said to the test first. */
static void real_sleep(void *opaque, uint64_t ns)
{
	struct waiter *w = opaque;
	struct timespec ts = { .tv_sec = (time_t)(ns / NS_PER_S),
			       .tv_nsec = (long)(ns % NS_PER_S) };

	pthread_mutex_lock(&w->mu);
	w->sleeping = true;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	nanosleep(&ts, NULL);
}

static bool waiter_stop(void *arg)
{
	struct waiter *w = arg;

	return __atomic_load_n(&w->stop, __ATOMIC_SEQ_CST);
}

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;

	w->rc = pacer_take(w->p, 64 * MiB, waiter_stop, w);
	return NULL;
}

/*
 * On the real clock: a sender waiting for years (64 MiB at 1 byte/s) is
 * cancelled from another thread once it sleeps, and ends within a tick;
 * the join returning at all is the check (the test's timeout bounds it).
 */
START_TEST(pace_cancel_wakes_a_real_waiter)
{
	struct waiter w = { .mu = PTHREAD_MUTEX_INITIALIZER,
			    .cv = PTHREAD_COND_INITIALIZER };
	struct pace_clock c = { .now_ns = real_now, .sleep_ns = real_sleep,
				.opaque = &w };
	pthread_t th;

	ck_assert_int_eq(pacer_new(&w.p, 1, &c), 0);
	pthread_create(&th, NULL, waiter_main, &w);
	pthread_mutex_lock(&w.mu);
	while (!w.sleeping)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	__atomic_store_n(&w.stop, true, __ATOMIC_SEQ_CST);
	pthread_join(th, NULL);
	ck_assert_int_eq(w.rc, -ECANCELED);
	pacer_unref(w.p);
}
END_TEST

static void unpace_once(struct fake *f)
{
	pacer_set_rate(f->p, 0);
}

/* Rate 0 is no pacing: takes never wait, and waiters go at once. */
START_TEST(pace_unpaced)
{
	struct fake f = { 0 };
	struct pacer *p = fake_pacer(&f, 0);

	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(pacer_take(p, 64 * MiB, NULL, NULL), 0);
	ck_assert_uint_eq(f.sleeps, 0);
	pacer_set_rate(p, 1 * MiB);
	f.after_sleep = unpace_once;
	ck_assert_int_eq(pacer_take(p, 100 * MiB, NULL, NULL), 0);
	ck_assert_uint_eq(f.sleeps, 1);
	pacer_unref(p);
}
END_TEST

/* Every holder has its reference; the last one frees (ASan checks it). */
START_TEST(pace_references)
{
	struct fake f = { 0 };
	struct pacer *p = fake_pacer(&f, MiB);

	ck_assert_ptr_eq(pacer_ref(p), p);
	ck_assert_ptr_null(pacer_ref(NULL));
	pacer_unref(p);
	ck_assert_int_eq(pacer_take(p, 1, NULL, NULL), 0);
	pacer_unref(p);
	pacer_unref(NULL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("pace");
	TCase *tc = tcase_create("pace");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, pace_two_takers_share_the_rate);
	tcase_add_test(tc, pace_two_threads_share_the_rate);
	tcase_add_test(tc, pace_idle_saves_one_burst);
	tcase_add_test(tc, pace_charge_goes_first);
	tcase_add_test(tc, pace_rate_change);
	tcase_add_test(tc, pace_rate_change_reaches_a_waiter);
	tcase_add_test(tc, pace_stop_ends_a_wait);
	tcase_add_test(tc, pace_stop_before_waiting);
	tcase_add_test(tc, pace_cancel_wakes_a_real_waiter);
	tcase_add_test(tc, pace_unpaced);
	tcase_add_test(tc, pace_references);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
