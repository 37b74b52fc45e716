/*
 * The ABI's sized entry points (ferry.h): a caller's struct shorter than
 * the library's is read with the rest zero; a longer one is taken only
 * when what the library does not know is zero; a report goes out to the
 * caller's size, zeros past what the library has.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "engine/abi.h"
#include "ferry.h"

START_TEST(options_of_other_sizes)
{
	struct {
		struct ferry_migrate_opts o;
		char later[16];		/* a later header's fields */
	} big;
	struct ferry_error err = { 0 };
	struct ferry_migration *m;

	memset(&big, 0, sizeof(big));
	big.o.qmp_path = "/nonexistent/qmp.sock";
	big.o.to_host = "127.0.0.1";
	big.o.to_port = 4444;
	/* The first ABI's size: what it lacks is the default. */
	m = ferry_migration_new_sized(&big.o, ABI0_MIGRATE_OPTS_SIZE, &err);
	ck_assert_msg(m, "%s", err.msg);
	ferry_migration_free(m);
	/* Longer, the rest zero: taken. */
	m = ferry_migration_new_sized(&big.o, sizeof(big), &err);
	ck_assert_msg(m, "%s", err.msg);
	ferry_migration_free(m);
	/* Longer, with a field this library does not know: refused. */
	big.later[3] = 1;
	ck_assert_ptr_null(ferry_migration_new_sized(&big.o, sizeof(big), &err));
	ck_assert_int_eq(err.code, -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "does not know an option"));
}
END_TEST

START_TEST(report_to_other_sizes)
{
	struct ferry_report full;
	struct {
		struct ferry_report r;
		char later[16];
	} big;

	memset(&full, 0, sizeof(full));
	full.total_ms = 42;
	snprintf(full.status, sizeof(full.status), "completed");
	memset(&big, 0xaa, sizeof(big));
	report_copy_out(&big.r, sizeof(big), &full);
	ck_assert_uint_eq(big.r.total_ms, 42);
	for (size_t i = 0; i < sizeof(big.later); i++)
		ck_assert_int_eq(big.later[i], 0);
	/* The first ABI's report: no byte past its size is written. */
	memset(&big, 0xaa, sizeof(big));
	report_copy_out(&big.r, ABI0_REPORT_SIZE, &full);
	ck_assert_uint_eq(big.r.total_ms, 42);
	ck_assert_int_eq(((unsigned char *)&big)[ABI0_REPORT_SIZE], 0xaa);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("abi");
	TCase *tc = tcase_create("sized");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, options_of_other_sizes);
	tcase_add_test(tc, report_to_other_sizes);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
