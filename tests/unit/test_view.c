/*
 * The guest's view from its heartbeats (tests/harness/view.c), on beats
 * made up here: a switchover blackout, a post-copy slow start, an idle
 * guest, and too little to judge.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>

#include "tests/harness/view.h"

#define MS 1000ull
#define BEAT_MS 10
#define RATE 1000.0		/* pages per second, undisturbed */
#define MAX_BEATS 2000

struct trace {
	struct vm_beat b[MAX_BEATS];
	size_t n;
	uint64_t t;		/* us */
	double work;
};

/* Beat every BEAT_MS for @ms at @rate pages per second. */
static void run(struct trace *tr, uint64_t ms, double rate)
{
	for (uint64_t e = 0; e < ms; e += BEAT_MS) {
		tr->t += BEAT_MS * MS;
		tr->work += rate * BEAT_MS / 1000.0;
		tr->b[tr->n].t_us = tr->t;
		tr->b[tr->n].work = (uint64_t)tr->work;
		tr->n++;
	}
}

/* Nothing for @ms: no beat, no work. */
static void stall(struct trace *tr, uint64_t ms)
{
	tr->t += ms * MS - BEAT_MS * MS;
}

START_TEST(switchover_blackout)
{
	static struct trace tr;
	struct guest_view v;
	uint64_t from, to;

	run(&tr, 1000, RATE);
	from = tr.t;
	run(&tr, 1000, RATE);
	stall(&tr, 300);
	run(&tr, 1000, RATE);
	to = tr.t;
	ck_assert_int_eq(guest_view(tr.b, tr.n, from, to, &v), 0);
	ck_assert(!v.by_beats);
	ck_assert_uint_eq(v.blackout_us, 300 * MS);
	ck_assert_uint_eq(v.half_rate_us, 300 * MS);
	/* 290 ms of work missing: the stall less the beat that ends it. */
	ck_assert_uint_ge(v.lost_us, 280 * MS);
	ck_assert_uint_le(v.lost_us, 300 * MS);
}
END_TEST

START_TEST(postcopy_slow_start)
{
	static struct trace tr;
	struct guest_view v;
	uint64_t from, to;

	run(&tr, 1000, RATE);
	from = tr.t;
	run(&tr, 500, RATE);
	stall(&tr, 100);
	run(&tr, 1000, RATE / 4);	/* faulting on every page */
	run(&tr, 1000, RATE);
	to = tr.t;
	ck_assert_int_eq(guest_view(tr.b, tr.n, from, to, &v), 0);
	ck_assert_uint_eq(v.blackout_us, 100 * MS);
	/* Half the rate again only once the slow second is nearly over. */
	ck_assert_uint_ge(v.half_rate_us, 900 * MS);
	ck_assert_uint_le(v.half_rate_us, 1100 * MS);
	/* 90 ms stalled and 750 ms of the slow second. */
	ck_assert_uint_ge(v.lost_us, 820 * MS);
	ck_assert_uint_le(v.lost_us, 860 * MS);
}
END_TEST

START_TEST(idle_guest_counts_beats)
{
	static struct trace tr;
	struct guest_view v;
	uint64_t from, to;

	run(&tr, 1000, 0);
	from = tr.t;
	run(&tr, 500, 0);
	stall(&tr, 200);
	run(&tr, 500, 0);
	to = tr.t;
	ck_assert_int_eq(guest_view(tr.b, tr.n, from, to, &v), 0);
	ck_assert(v.by_beats);
	ck_assert_uint_eq(v.blackout_us, 200 * MS);
	ck_assert_uint_ge(v.lost_us, 180 * MS);
	ck_assert_uint_le(v.lost_us, 200 * MS);
}
END_TEST

START_TEST(undisturbed_loses_nothing)
{
	static struct trace tr;
	struct guest_view v;
	uint64_t from;

	run(&tr, 1000, RATE);
	from = tr.t;
	run(&tr, 1000, RATE);
	ck_assert_int_eq(guest_view(tr.b, tr.n, from, tr.t, &v), 0);
	ck_assert_uint_eq(v.blackout_us, BEAT_MS * MS);
	ck_assert_uint_eq(v.half_rate_us, BEAT_MS * MS);
	ck_assert_uint_le(v.lost_us, 2 * MS);
}
END_TEST

START_TEST(too_little_to_judge)
{
	static struct trace tr;
	struct guest_view v;
	uint64_t from;

	run(&tr, 300, RATE);	/* less than VIEW_BASE_MIN_MS before */
	from = tr.t;
	run(&tr, 1000, RATE);
	ck_assert_int_eq(guest_view(tr.b, tr.n, from, tr.t, &v), -ENODATA);
	/* A window that ends long after the last beat: the guest stopped. */
	ck_assert_int_eq(guest_view(tr.b, tr.n, 200 * MS,
				    tr.t + (VIEW_TAIL_MS + 1) * MS, &v), -ENODATA);
	ck_assert_int_eq(guest_view(tr.b, 0, 0, 1, &v), -ENODATA);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("view");
	TCase *tc = tcase_create("view");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, switchover_blackout);
	tcase_add_test(tc, postcopy_slow_start);
	tcase_add_test(tc, idle_guest_counts_beats);
	tcase_add_test(tc, undisturbed_loses_nothing);
	tcase_add_test(tc, too_little_to_judge);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
