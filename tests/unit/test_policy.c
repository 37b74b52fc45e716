/*
 * The convergence policies on synthetic progress traces, no QEMU: the
 * predictive policy picks post-copy where precopy cannot converge and
 * plain precopy where it can; Nova's schedule raises the downtime in its
 * steps.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/policy.h"
#include "common/util.h"
#include "ferry.h"
#include "ferry_policy.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

struct trace_case {
	const char *what;
	uint64_t ram, dirty, link;
	uint32_t timeout_s;
	bool expect_postcopy;
};

static const struct trace_case cases[] = {
	/* idle guest, fast link: precopy in one pass */
	{ "idle", 4 * GiB, 0, 1000 * MiB, 0, false },
	/* dirty at a tenth of the link: one short extra pass */
	{ "light", 4 * GiB, 100 * MiB, 1000 * MiB, 0, false },
	/* dirty at a quarter of a slow link: two short extra passes */
	{ "quarter", 256 * MiB, 4 * MiB, 32 * MiB, 0, false },
	/* dirty at half the link: converges, but its passes cost twice what
	 * post-copy would */
	{ "half", 1 * GiB, 50 * MiB, 100 * MiB, 0, true },
	/* dirty faster than the link: never converges */
	{ "faster", 1 * GiB, 200 * MiB, 100 * MiB, 0, true },
	/* dirty at 95% of the link: passes barely shrink */
	{ "barely", 2 * GiB, 95 * MiB, 100 * MiB, 0, true },
	/* converges, but not within the completion timeout */
	{ "light-timeout", 4 * GiB, 100 * MiB, 1000 * MiB, 3, true },
};

/*
 * Feed the policy a synthetic trace of precopy: pass 0 (before the
 * start), then a sample every 250 ms while QEMU sends what remains at the
 * link rate; at each pass end the next pass carries what the guest dirtied
 * during the pass, and precopy completes when that fits in the downtime
 * QEMU was told to aim at. The first two samples do not know the dirty rate
 * yet.
 */
#define TRACE_DT_MS 250
#define TRACE_MAX_MS (600 * 1000)

START_TEST(predict_picks)
{
	const struct trace_case *c = &cases[_i];
	const struct ferry_policy *p = ferry_policy_builtin("predict");
	struct ferry_policy_limits l = { .downtime_max_ms = 300,
					 .postcopy = FERRY_POSTCOPY_AUTO,
					 .timeout_s = c->timeout_s };
	void *st = p->create(&l);
	double remaining = (double)c->ram, dt = TRACE_DT_MS / 1000.0;
	uint64_t t = 0, pass = 0, pass_t0 = 0, predicted_ms = 0;
	uint32_t target_ms = 0;
	bool postcopy = false, converged = false;
	unsigned samples = 0;

	ck_assert_ptr_nonnull(st);
	while (t < TRACE_MAX_MS && !postcopy && !converged) {
		struct ferry_policy_sample s = {
			.elapsed_ms = t, .pass = pass, .pass_elapsed_ms = t - pass_t0,
			.ram_total_bytes = c->ram,
			.ram_remaining_bytes = (uint64_t)remaining,
			.dirty_rate = c->dirty, .link_rate = c->link,
			.dirty_rate_known = samples++ >= 3,
			.downtime_limit_ms = target_ms, .postcopy_possible = true,
		};
		struct ferry_policy_actions a = { 0 };

		p->decide(st, &s, &a);
		if (pass == 0) {
			ck_assert_msg(a.enable_postcopy, "%s: post-copy not enabled "
				      "up front", c->what);
			ck_assert_uint_gt(a.set_downtime_ms, 0);
			ck_assert_uint_le(a.set_downtime_ms, 300);
			target_ms = a.set_downtime_ms;
			pass = 1;
			continue;
		}
		if (!s.dirty_rate_known)
			ck_assert_msg(!a.start_postcopy && !a.predicted_remaining_ms,
				      "%s: decided before the dirty rate was known",
				      c->what);
		if (a.predicted_remaining_ms && !predicted_ms)
			predicted_ms = t + a.predicted_remaining_ms;
		postcopy = a.start_postcopy;
		t += TRACE_DT_MS;
		remaining -= (double)c->link * dt;
		if (remaining <= 0) {
			double next = (double)c->dirty * (double)(t - pass_t0) / 1000.0;

			remaining = next > (double)c->ram ? (double)c->ram : next;
			converged = remaining <= (double)c->link * target_ms / 1000.0;
			pass++;
			pass_t0 = t;
		}
	}
	ck_assert_msg(postcopy == c->expect_postcopy, "%s: post-copy %s",
		      c->what, postcopy ? "chosen" : "not chosen");
	if (!postcopy) {
		/* Precopy was the choice: it converged, as predicted (within
		 * a fifth, the trace's sampling granularity included). */
		ck_assert_msg(converged, "%s: precopy never converged", c->what);
		ck_assert_msg(predicted_ms, "%s: no prediction", c->what);
		ck_assert_msg(predicted_ms > t * 0.8 && predicted_ms < t * 1.2,
			      "%s: predicted %llu ms, took %llu ms", c->what,
			      (unsigned long long)predicted_ms,
			      (unsigned long long)t);
	} else {
		/* Post-copy as soon as the rate was known, not after failures. */
		ck_assert_uint_le(t, 4 * TRACE_DT_MS);
	}
	p->destroy(st);
}
END_TEST

/*
 * Not faster at the guest's expense: on a slow link with a tight limit,
 * post-copy's faults would each wait behind the bytes in flight and stall
 * the guest past the limit, so predict keeps to precopy (which converges)
 * and says why; with the preempt channel the faults jump the queue, and
 * post-copy is fine again.
 */
static bool chooses_postcopy(bool preempt, char *reason, size_t len)
{
	const struct ferry_policy *p = ferry_policy_builtin("predict");
	struct ferry_policy_limits l = { .downtime_max_ms = 100,
					 .postcopy = FERRY_POSTCOPY_AUTO,
					 .auto_converge = true };
	void *st = p->create(&l);
	bool post = false;

	reason[0] = '\0';
	for (uint64_t pass = 0; pass < 3 && !post; pass++) {
		struct ferry_policy_sample s = {
			.elapsed_ms = 1000 * pass, .pass = pass,
			.pass_elapsed_ms = 500, .ram_total_bytes = 256 * MiB,
			.ram_remaining_bytes = 200 * MiB,
			.dirty_rate = 2 * MiB, .dirty_rate_known = pass > 0,
			.link_rate = 4 * MiB, .downtime_limit_ms = 75,
			.postcopy_possible = true, .auto_converge = true,
			.in_flight_bytes = 192 << 10, .postcopy_preempt = preempt,
		};
		struct ferry_policy_actions a = { 0 };

		p->decide(st, &s, &a);
		if (pass > 0 && a.reason[0])
			snprintf(reason, len, "%s", a.reason);
		post = a.start_postcopy;
	}
	p->destroy(st);
	return post;
}

START_TEST(predict_keeps_blackout_in_limit)
{
	char why[160];

	ck_assert(!chooses_postcopy(false, why, sizeof(why)));
	ck_assert_msg(strstr(why, "over the limit"), "%s", why);
	ck_assert_msg(!strncmp(why, "precopy", 7), "%s", why);
	ck_assert(chooses_postcopy(true, why, sizeof(why)));
	ck_assert_msg(!strstr(why, "over the limit"), "%s", why);
	/* The model: switchover, then two faults, each behind what is in
	 * flight unless preempted. */
	ck_assert(ferry_predict_postcopy_stall_s(4.0 * MiB, 192 << 10, false) >
		  ferry_predict_postcopy_stall_s(4.0 * MiB, 192 << 10, true) + 0.09);
	ck_assert(isinf(ferry_predict_postcopy_stall_s(0, 0, true)));
}
END_TEST

/* The model itself: converging series, and the divergent case. */
START_TEST(precopy_model)
{
	double t;

	/* idle: one pass */
	t = ferry_predict_precopy_s(1e9, 0, 1e9, 0, 1e8, 0.3);
	ck_assert(t > 9.9 && t < 10.1);
	/* q = 0.5 from the start of pass 1: 10 + 5 + 2.5 + ... */
	t = ferry_predict_precopy_s(1e9, 0, 1e9, 5e7, 1e8, 0.3);
	ck_assert(t > 19 && t < 21);
	/* half way through pass 1: the next pass carries the whole pass's
	 * dirtying, not half of it */
	t = ferry_predict_precopy_s(5e8, 5, 1e9, 5e7, 1e8, 0.3);
	ck_assert(t > 14 && t < 16);
	ck_assert(isinf(ferry_predict_precopy_s(1e9, 0, 1e9, 2e8, 1e8, 0.3)));
	ck_assert(isinf(ferry_predict_precopy_s(1e9, 0, 1e9, 1e7, 0, 0.3)));
	/* post-copy now: the rest, plus what was re-dirtied, once */
	t = ferry_predict_postcopy_s(5e8, 5, 1e9, 5e7, 1e8);
	ck_assert(t > 7.4 && t < 7.6);
	t = ferry_predict_postcopy_s(5e8, 100, 1e9, 5e7, 1e8);
	ck_assert(t > 9.9 && t < 10.1);	/* capped at every page once */
}
END_TEST

/* Never post-copy when the user said never: precopy, downtime capped. */
START_TEST(predict_respects_never)
{
	const struct ferry_policy *p = ferry_policy_builtin("predict");
	struct ferry_policy_limits l = { .downtime_max_ms = 500 };
	void *st = p->create(&l);

	for (uint64_t pass = 0; pass < 6; pass++) {
		struct ferry_policy_sample s = {
			.pass = pass, .ram_total_bytes = GiB,
			.ram_remaining_bytes = GiB, .dirty_rate = 300 * MiB,
			.dirty_rate_known = true,
			.link_rate = 100 * MiB,
		};
		struct ferry_policy_actions a = { 0 };

		p->decide(st, &s, &a);
		ck_assert(!a.start_postcopy && !a.enable_postcopy);
		ck_assert_uint_le(a.set_downtime_ms, 500);
	}
	p->destroy(st);
}
END_TEST

/* Nova: 500 ms in 10 steps, 75 s per GiB between them (a 1 GiB guest). */
START_TEST(nova_schedule)
{
	const struct ferry_policy *p = ferry_policy_builtin("nova");
	struct ferry_policy_limits l = { .downtime_max_ms = 500, .steps = 10,
					 .step_delay_s_per_gib = 75 };
	void *st = p->create(&l);
	uint32_t last = 0, changes = 0;

	for (uint64_t t = 0; t <= 1000; t += 5) {
		struct ferry_policy_sample s = {
			.elapsed_ms = t * 1000, .pass = t ? 1 + t / 10 : 0,
			.ram_total_bytes = GiB, .ram_remaining_bytes = GiB / 2,
			.downtime_limit_ms = last,
		};
		struct ferry_policy_actions a = { 0 };

		p->decide(st, &s, &a);
		if (a.set_downtime_ms) {
			ck_assert_uint_gt(a.set_downtime_ms, last);
			last = a.set_downtime_ms;
			changes++;
		}
		if (t == 0)
			ck_assert_uint_eq(last, 50);	/* base = 500 / 10 */
		if (t == 150)
			ck_assert_uint_eq(last, 50 + 45 * 2);	/* step 2 at 150 s */
	}
	ck_assert_uint_eq(last, 500);
	ck_assert_uint_eq(changes, 11);
	p->destroy(st);
}
END_TEST

START_TEST(builtins_by_name)
{
	ck_assert_ptr_nonnull(ferry_policy_builtin("predict"));
	ck_assert_ptr_nonnull(ferry_policy_builtin("nova"));
	ck_assert_ptr_nonnull(ferry_policy_builtin("qemu"));
	ck_assert_ptr_null(ferry_policy_builtin("magic"));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("policy");
	TCase *tc = tcase_create("policy");
	SRunner *sr;
	int failed;

	tcase_add_loop_test(tc, predict_picks, 0, FERRY_ARRAY_SIZE(cases));
	tcase_add_test(tc, precopy_model);
	tcase_add_test(tc, predict_keeps_blackout_in_limit);
	tcase_add_test(tc, predict_respects_never);
	tcase_add_test(tc, nova_schedule);
	tcase_add_test(tc, builtins_by_name);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
