/*
 * The receiving service as systemd runs it (packaging/ferry-serve.service):
 * `ferry serve --config FILE`, Type=notify. READY=1 arrives on
 * $NOTIFY_SOCKET once it listens, and a migration through it right then
 * completes (RAM verified); SIGTERM stops it with status 0. A file with a
 * key that is not one is refused, naming the line.
 */
#include <check.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

#define READY_WAIT_MS 10000

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

START_TEST(notify_and_serve)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct ferry_migrate_opts o = { .to_host = "127.0.0.1", .paused = true,
					.vm_name = "web1" };
	struct ferry_error err = { 0 };
	struct ferry_migration *m;
	struct ferry_report rep;
	char dir[64], conf[128], text[1024], link[128], got[64] = "";
	uint16_t port = proc_free_port();
	struct pollfd pfd;
	struct pair p;
	pid_t pid;
	ssize_t n;
	int fd;

	pair_start(&p, &(struct pair_opts){ .mem_mib = 64, .fill = "mix" });
	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-unit"), 0);
	snprintf(link, sizeof(link), "%s/web1.qmp", dir);
	ck_assert_int_eq(symlink(vm_qmp_path(p.dst), link), 0);
	snprintf(conf, sizeof(conf), "%s/serve.conf", dir);
	snprintf(text, sizeof(text),
		 "# as /etc/ferry/serve.conf\n"
		 "listen = 127.0.0.1:%u\n"
		 "qmp-dir = %s\n"
		 "state-dir = %s\n"
		 "  max-migrations = 2  \n"
		 "\n"
		 "ram-allocation-ratio = 1.5\n"
		 "insecure = false\n", port, dir, dir);
	write_file(conf, text);
	/* systemd's side of Type=notify. */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/notify", dir);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	setenv("NOTIFY_SOCKET", sun.sun_path, 1);
	{
		char *argv[] = { getenv("FERRY_BIN"), "serve", "--config", conf,
				 NULL };

		ck_assert_msg(proc_spawn(argv, NULL, &pid, &err) == 0, "%s", err.msg);
	}
	unsetenv("NOTIFY_SOCKET");
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	ck_assert_msg(poll(&pfd, 1, READY_WAIT_MS) == 1, "no READY=1 from the "
		      "service");
	n = recv(fd, got, sizeof(got) - 1, 0);
	ck_assert_int_gt(n, 0);
	ck_assert_str_eq(got, "READY=1");
	close(fd);

	/* Ready means listening: no wait for the port. */
	o.qmp_path = vm_qmp_path(p.src);
	o.to_port = port;
	m = ferry_migration_new(&o, &err);
	ck_assert_msg(ferry_migration_run(m, &rep, &err) == 0, "%s", err.msg);
	ferry_migration_free(m);
	expect_status(p.dst, "paused");
	expect_same_ram(&p);

	kill(pid, SIGTERM);
	ck_assert_int_eq(proc_wait(pid), 0);
	pair_stop(&p);
	tmpdir_remove(dir);
}
END_TEST

START_TEST(bad_config)
{
	char dir[64], conf[128], out[256];
	struct ferry_error err = { 0 };
	char *argv[] = { getenv("FERRY_BIN"), "serve", "--config", conf, NULL };
	pid_t pid;
	int fd;

	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-unit"), 0);
	snprintf(conf, sizeof(conf), "%s/serve.conf", dir);
	write_file(conf, "listen = 127.0.0.1:1\nqmp-dir=/nonexistent\n"
		   "max-migration = 3\n");
	ck_assert_msg(proc_spawn(argv, &fd, &pid, &err) == 0, "%s", err.msg);
	proc_read_all(fd, out, sizeof(out));
	ck_assert_int_eq(proc_wait(pid), 2);
	tmpdir_remove(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("systemd");
	TCase *tc = tcase_create("unit");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, notify_and_serve);
	tcase_add_test(tc, bad_config);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
