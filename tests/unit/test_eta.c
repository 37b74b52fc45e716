/*
 * The time-left estimate as shown (engine/eta.c): drops are bounded by the
 * error it stated, rises show at once, and its accuracy at 25/50/75% of
 * the run is what it predicted then against the run's real length.
 */
#include <check.h>
#include <stdlib.h>

#include "engine/eta.h"

START_TEST(drops_bounded_by_stated_error)
{
	static struct eta e;
	uint64_t err, prev, prev_err;

	eta_init(&e);
	eta_update(&e, 0, 20000);
	prev = eta_shown_ms(&e, 0, &prev_err);
	ck_assert_uint_eq(prev, 20000);
	ck_assert_uint_eq(prev_err, 5000);
	/* The policy suddenly thinks it is nearly done: shown drops by at
	 * most the error it stated, after counting down. */
	eta_update(&e, 1000, 1000);
	ck_assert_uint_ge(eta_shown_ms(&e, 1000, &err), prev - 1000 - prev_err);
	/* ...and the error grows to say how unsure it is now. */
	ck_assert_uint_ge(err, 10000);
	/* Bad news shows at once. */
	eta_update(&e, 2000, 60000);
	ck_assert_uint_eq(eta_shown_ms(&e, 2000, NULL), 60000);
}
END_TEST

/* Over a long, noisy run, no step down exceeds the stated error. */
START_TEST(never_down_by_more_than_error)
{
	static struct eta e;
	uint64_t prev = 0, prev_err = 0;
	uint32_t seed = 7;

	eta_init(&e);
	for (uint64_t t = 0; t < 600000; t += 500) {
		uint64_t left = 600000 - t, raw, shown, err;

		seed = seed * 1103515245u + 12345u;
		raw = left / 2 + (seed >> 8) % (left + 1);	/* +-50% noise */
		eta_update(&e, t, raw ? raw : 1);
		shown = eta_shown_ms(&e, t, &err);
		if (t > 0)
			ck_assert_msg(shown + 500 + prev_err >= prev,
				      "at %llu: %llu after %llu (error %llu)",
				      (unsigned long long)t,
				      (unsigned long long)shown,
				      (unsigned long long)prev,
				      (unsigned long long)prev_err);
		prev = shown;
		prev_err = err;
	}
}
END_TEST

START_TEST(accuracy_at_checkpoints)
{
	static struct eta e;
	int64_t off[ETA_CHECKPOINTS];

	eta_init(&e);
	/* A run of 10 s whose estimate always says 12 s in all. */
	for (uint64_t t = 0; t <= 10000; t += 100)
		eta_update(&e, t, 12000 - t);
	eta_accuracy(&e, 10000, off);
	for (int k = 0; k < ETA_CHECKPOINTS; k++)
		ck_assert_int_eq(off[k], 2000);
	/* No estimate near a checkpoint: unknown. */
	eta_init(&e);
	eta_update(&e, 9000, 500);
	eta_accuracy(&e, 10000, off);
	ck_assert(off[0] == INT64_MIN && off[1] == INT64_MIN);
}
END_TEST

/* A very long run keeps a bounded history, still spread over the run. */
START_TEST(history_is_bounded)
{
	static struct eta e;
	int64_t off[ETA_CHECKPOINTS];

	eta_init(&e);
	for (uint64_t t = 0; t <= 4000000; t += 100)
		eta_update(&e, t, 4000000 - t + 1000);
	ck_assert_uint_le(e.n, ETA_HISTORY);
	eta_accuracy(&e, 4000000, off);
	for (int k = 0; k < ETA_CHECKPOINTS; k++)
		ck_assert_int_eq(off[k], 1000);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("eta");
	TCase *tc = tcase_create("eta");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, drops_bounded_by_stated_error);
	tcase_add_test(tc, never_down_by_more_than_error);
	tcase_add_test(tc, accuracy_at_checkpoints);
	tcase_add_test(tc, history_is_bounded);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
