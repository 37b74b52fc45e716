/*
 * ferry_evacuate()'s edge: its options are checked once, before anything
 * is tried (each malformed destination says which and why; the guests'
 * directory or one guest's socket, not both); a guest whose QEMU cannot
 * be reached is a result that says so; results are written in the
 * caller's size.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/evacuate.h"
#include "ferry.h"

/* No QEMU, and no wait for one to create its socket (ENOTDIR). */
#define NO_QEMU "/dev/null/ferry-test.qmp"

/* ferry_evacuate() of @o: its return, with *results NULL on failure. */
static int evacuate(struct ferry_evacuate_opts *o, struct ferry_error *err)
{
	struct ferry_evacuate_result *r = (void *)&r;
	uint32_t n = 7;
	int rc;

	*err = (struct ferry_error){ 0 };
	rc = ferry_evacuate(o, &r, &n, err);
	if (rc < 0) {
		ck_assert_ptr_null(r);
		ck_assert_uint_eq(n, 0);
		ck_assert_int_eq(err->code, rc);
	}
	free(r);
	return rc;
}

START_TEST(bad_options)
{
	static const struct {
		const char *to, *dir, *qmp, *only, *msg;
		uint32_t parallel;
	} cases[] = {
		{ "127.0.0.1", NULL, NO_QEMU, NULL,
		  "destination '127.0.0.1' lacks the port", 0 },
		{ ":4444", NULL, NO_QEMU, NULL, "destination ':4444' lacks the host", 0 },
		{ "[]:4444", NULL, NO_QEMU, NULL, "lacks the host", 0 },
		{ "::1:4444", NULL, NO_QEMU, NULL, "IPv6 address in brackets", 0 },
		{ "h:0", NULL, NO_QEMU, NULL, "'h:0': the port must be a number", 0 },
		{ "h:65536", NULL, NO_QEMU, NULL, "from 1 to 65535", 0 },
		{ "h:1,h:x", NULL, NO_QEMU, NULL, "destination 'h:x': the port", 0 },
		{ "h:1,", NULL, NO_QEMU, NULL, NULL, 0 },	/* a trailing comma */
		{ "", NULL, NO_QEMU, NULL, "needs 1 to 16 destinations", 0 },
		{ NULL, NULL, NO_QEMU, NULL, "needs 1 to 16 destinations", 0 },
		{ "h:1", NULL, NULL, NULL, "not neither", 0 },
		{ "h:1", "/tmp", NO_QEMU, NULL, "not both", 0 },
		{ "h:1", NULL, NO_QEMU, "a,b", "naming the guests", 0 },
		{ "h:1", NULL, NO_QEMU, NULL, "at most 16 migrations at once", 17 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct ferry_evacuate_opts o = {
			.to = cases[i].to, .qmp_dir = cases[i].dir,
			.qmp_path = cases[i].qmp, .only = cases[i].only,
			.parallel = cases[i].parallel,
		};
		struct ferry_error err;
		int rc = evacuate(&o, &err);

		if (!cases[i].msg) {
			ck_assert_msg(rc == 0, "%s: %s", cases[i].to, err.msg);
			continue;
		}
		ck_assert_msg(rc == -EINVAL, "case %zu: %d %s", i, rc, err.msg);
		ck_assert_msg(strstr(err.msg, cases[i].msg), "case %zu: '%s' not in "
			      "'%s'", i, cases[i].msg, err.msg);
	}
}
END_TEST

START_TEST(too_many_destinations)
{
	char to[FERRY_EVACUATE_DESTS_MAX * 16 + 16] = "";
	struct ferry_evacuate_opts o = { .to = to, .qmp_path = NO_QEMU };
	struct ferry_error err;

	for (int i = 0; i <= FERRY_EVACUATE_DESTS_MAX; i++)
		snprintf(to + strlen(to), sizeof(to) - strlen(to), "%sh:%d",
			 i ? "," : "", 1000 + i);
	ck_assert_int_eq(evacuate(&o, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "at most 16 destinations"));
	/* One fewer is taken. */
	*strrchr(to, ',') = '\0';
	ck_assert_msg(evacuate(&o, &err) == 0, "%s", err.msg);
}
END_TEST

/* A directory without a guest, or without the one named: nothing to do
 * is an error, said with the directory. */
START_TEST(no_guests)
{
	char dir[] = "/tmp/ferry-evac.XXXXXX", path[64];
	struct ferry_evacuate_opts o = { .to = "127.0.0.1:1", .qmp_dir = dir };
	struct ferry_error err;
	FILE *f;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(evacuate(&o, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "no VM to evacuate in"));
	snprintf(path, sizeof(path), "%s/vm1.qmp", dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	o.only = "vm1,vm2";
	ck_assert_int_eq(evacuate(&o, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "no VM 'vm2' in"));
	unlink(path);
	rmdir(dir);
	o.qmp_dir = "/nonexistent/ferry-test";
	o.only = NULL;
	ck_assert_int_eq(evacuate(&o, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "cannot read /nonexistent"));
}
END_TEST

/*
 * A guest whose QEMU is not there: the evacuation ran (0), and its one
 * result says the guest was not moved and why, in the caller's size
 * (a later header's, longer: zeros past what this library has).
 */
START_TEST(unreachable_guest)
{
	struct big {
		struct ferry_evacuate_result r;
		char later[16];
	} *out = NULL;
	struct ferry_migrate_opts mo = { .downtime_ms = 100 };
	struct ferry_evacuate_opts o = { .to = "127.0.0.1:1", .qmp_path = NO_QEMU,
					 .migrate = &mo };
	struct ferry_error err = { 0 };
	uint32_t n = 0;

	ck_assert_int_eq(ferry_evacuate_sized(&o, sizeof(o), sizeof(mo),
					      (struct ferry_evacuate_result **)&out,
					      sizeof(*out), &n, &err), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(out->r.status, "failed");
	ck_assert_str_eq(out->r.vm, "");
	ck_assert_str_eq(out->r.destination, "");
	ck_assert_msg(strstr(out->r.error, "its QEMU (" NO_QEMU ")"), "%s",
		      out->r.error);
	ck_assert(out->r.report.source_running);
	for (size_t i = 0; i < sizeof(out->later); i++)
		ck_assert_int_eq(out->later[i], 0);
	free(out);
	/* No header's result is shorter than the first one. */
	ck_assert_int_eq(ferry_evacuate_sized(&o, sizeof(o), sizeof(mo),
					      (struct ferry_evacuate_result **)&out,
					      ABI0_EVACUATE_RESULT_SIZE - 8, &n,
					      &err), -EINVAL);
	ck_assert_ptr_null(out);
}
END_TEST

/* An option of a later header, set: refused, not half understood. */
START_TEST(later_options)
{
	struct {
		struct ferry_migrate_opts o;
		char later[8];
	} mo;
	struct ferry_evacuate_opts o = { .to = "127.0.0.1:1", .qmp_path = NO_QEMU,
					 .migrate = &mo.o };
	struct ferry_evacuate_result *r = NULL;
	struct ferry_error err = { 0 };
	uint32_t n;

	memset(&mo, 0, sizeof(mo));
	mo.later[2] = 1;
	ck_assert_int_eq(ferry_evacuate_sized(&o, sizeof(o), sizeof(mo), &r,
					      sizeof(*r), &n, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "does not know an option"));
	/* Nothing running: a cancel is nothing. */
	ferry_evacuate_cancel();
}
END_TEST

int main(void)
{
	Suite *s = suite_create("evacuate");
	TCase *tc = tcase_create("edge");
	SRunner *sr;
	int failed;

	ferry_set_log(NULL, NULL, FERRY_LOG_ERROR);
	tcase_add_test(tc, bad_options);
	tcase_add_test(tc, too_many_destinations);
	tcase_add_test(tc, no_guests);
	tcase_add_test(tc, unreachable_guest);
	tcase_add_test(tc, later_options);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
