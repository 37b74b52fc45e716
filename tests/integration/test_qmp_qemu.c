/*
 * The QMP client against a real QEMU: greeting and capabilities, structured
 * errors, fd passing with getfd/add-fd, events, and QEMU going away.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qmp/qmp.h"
#include "tests/harness/vm.h"

static struct vm *start_vm(bool incoming)
{
	struct vm_config c = { .mem_mib = 64, .fill = "zero", .incoming = incoming };
	struct ferry_error err = { 0 };
	struct vm *vm = NULL;

	ck_assert_msg(vm_start(&vm, &c, &err) == 0, "%s", err.msg);
	return vm;
}

static struct qmp *connect_vm(struct vm *vm)
{
	struct ferry_error err = { 0 };
	struct qmp *q = qmp_connect(vm_qmp_path(vm), 5000, &err);

	ck_assert_msg(q, "%s", err.msg);
	return q;
}

START_TEST(status_and_errors)
{
	struct vm *vm = start_vm(true);
	struct qmp *q = connect_vm(vm);
	struct ferry_error err = { 0 };
	char st[32];

	ck_assert_int_eq(qmp_query_status_string(q, "query-status", st, sizeof(st),
						 5000, &err), 0);
	ck_assert_str_eq(st, "inmigrate");
	ck_assert_int_eq(qmp_execute(q, "no-such-command", NULL, NULL, 5000, &err),
			 -EREMOTEIO);
	ck_assert_str_eq(qmp_last_error(q)->cls, "CommandNotFound");
	ck_assert_msg(strstr(err.msg, "QMP no-such-command failed: CommandNotFound"),
		      "%s", err.msg);
	/* Bad arguments: QEMU's description comes back verbatim. */
	ck_assert_int_eq(qmp_execute(q, "migrate-set-parameters",
				     json_pack("{s:s}", "downtime-limit", "soon"),
				     NULL, 5000, &err), -EREMOTEIO);
	ck_assert_str_eq(qmp_last_error(q)->cls, "GenericError");
	ck_assert_msg(strstr(qmp_last_error(q)->desc, "downtime-limit"), "%s",
		      qmp_last_error(q)->desc);
	qmp_close(q);
	vm_stop(vm);
}
END_TEST

START_TEST(fd_passing)
{
	struct vm *vm = start_vm(true);
	struct qmp *q = connect_vm(vm);
	struct ferry_error err = { 0 };
	int64_t set = -1;
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_msg(qmp_getfd(q, sv[0], "t1", 5000, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(qmp_execute(q, "closefd", json_pack("{s:s}", "fdname", "t1"),
				     NULL, 5000, &err), 0);
	/* Closing it twice is QEMU's error, reported as such. */
	ck_assert_int_eq(qmp_execute(q, "closefd", json_pack("{s:s}", "fdname", "t1"),
				     NULL, 5000, &err), -EREMOTEIO);
	ck_assert_int_eq(qmp_add_fd(q, sv[1], -1, &set, 5000, &err), 0);
	ck_assert_int_ge(set, 0);
	/* getfd without an fd attached is refused by QEMU. */
	ck_assert_int_eq(qmp_execute(q, "getfd", json_pack("{s:s}", "fdname", "t2"),
				     NULL, 5000, &err), -EREMOTEIO);
	close(sv[0]);
	close(sv[1]);
	qmp_close(q);
	vm_stop(vm);
}
END_TEST

START_TEST(events_and_shutdown)
{
	struct vm *vm = start_vm(false);
	struct qmp *q = connect_vm(vm);
	struct ferry_error err = { 0 };
	struct qmp_event ev;

	ck_assert_int_eq(qmp_execute(q, "stop", NULL, NULL, 5000, &err), 0);
	ck_assert_msg(qmp_wait_event(q, "STOP", &ev, 5000, &err) == 0, "%s", err.msg);
	qmp_event_clear(&ev);
	ck_assert_int_eq(qmp_execute(q, "cont", NULL, NULL, 5000, &err), 0);
	ck_assert_msg(qmp_wait_event(q, "RESUME", &ev, 5000, &err) == 0, "%s", err.msg);
	ck_assert_int_gt(ev.seconds, 0);
	qmp_event_clear(&ev);
	ck_assert_int_eq(qmp_execute(q, "quit", NULL, NULL, 5000, &err), 0);
	ck_assert_msg(qmp_wait_event(q, "SHUTDOWN", &ev, 5000, &err) == 0, "%s", err.msg);
	qmp_event_clear(&ev);
	/* QEMU is gone: the next command fails cleanly. */
	ck_assert_int_lt(qmp_execute(q, "query-status", NULL, NULL, 5000, &err), 0);
	ck_assert_msg(err.msg[0], "no message");
	qmp_close(q);
	vm_stop(vm);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("qmp-qemu");
	TCase *tc = tcase_create("real-qemu");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, status_and_errors);
	tcase_add_test(tc, fd_passing);
	tcase_add_test(tc, events_and_shutdown);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
