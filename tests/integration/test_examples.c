/*
 * The installed examples (the examples/ programs built against an installed
 * libferry by scripts/check-install.sh; $EXAMPLE_MIGRATE and
 * $EXAMPLE_RECEIVE) migrate a real guest: the receiver example takes it
 * into a waiting destination QEMU, the source example sends it, the
 * destination stays paused, RAM the same, and each prints its report.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/vm.h"

START_TEST(examples_migrate)
{
	const char *mig = getenv("EXAMPLE_MIGRATE"), *rcv = getenv("EXAMPLE_RECEIVE");
	struct ferry_error err = { 0 };
	char port[8], out[8192], rout[8192];
	uint16_t p16 = proc_free_port();
	struct pair p;
	pid_t rx, src;
	int fd, rfd;

	ck_assert_msg(mig && rcv, "EXAMPLE_MIGRATE and EXAMPLE_RECEIVE are needed");
	pair_start(&p, &(struct pair_opts){ .mem_mib = 64, .fill = "mix",
					    .ws_mib = 4, .rate_mib_s = 8 });
	snprintf(port, sizeof(port), "%u", p16);
	{
		char *argv[] = { (char *)rcv, (char *)vm_qmp_path(p.dst),
				 "127.0.0.1", port, NULL };

		ck_assert_msg(proc_spawn(argv, &rfd, &rx, &err) == 0, "%s", err.msg);
		ck_assert_msg(proc_wait_port(p16, 5000, &err) == 0, "%s", err.msg);
	}
	{
		char *argv[] = { (char *)mig, (char *)vm_qmp_path(p.src),
				 "127.0.0.1", port, "paused", NULL };

		ck_assert_msg(proc_spawn(argv, &fd, &src, &err) == 0, "%s", err.msg);
		proc_read_all(fd, out, sizeof(out));
		ck_assert_int_eq(proc_wait(src), 0);
	}
	proc_read_all(rfd, rout, sizeof(rout));
	ck_assert_int_eq(proc_wait(rx), 0);
	ck_assert_msg(strstr(out, "\"status\":\"completed\""), "%s", out);
	ck_assert_msg(strstr(rout, "\"status\":\"completed\""), "%s", rout);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("examples");
	TCase *tc = tcase_create("examples");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, examples_migrate);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
