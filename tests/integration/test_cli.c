/*
 * Messages a person can act on: the command line's mistakes each get one
 * line that names the option and what would be right, and exit status 2,
 * before anything is done (no QEMU is needed to see them).
 */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry.h"
#include "tests/harness/proc.h"

/* ferry @args...: exit status, stderr in @err. */
static int run(char *out, size_t len, char *const *args)
{
	char *argv[16] = { getenv("FERRY_BIN") };
	struct ferry_error e = { 0 };
	char path[] = "/tmp/ferry-cli-XXXXXX";
	int fd = mkstemp(path), saved = dup(2), n = 1, rc;
	pid_t pid;
	ssize_t got;

	ck_assert_int_ge(fd, 0);
	for (; *args && n < 15; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	dup2(fd, 2);		/* the child's stderr */
	rc = proc_spawn(argv, NULL, &pid, &e);
	dup2(saved, 2);
	close(saved);
	ck_assert_msg(rc == 0, "%s", e.msg);
	rc = proc_wait(pid);
	got = pread(fd, out, len - 1, 0);
	out[got > 0 ? got : 0] = '\0';
	close(fd);
	unlink(path);
	return rc;
}

static void expect(const char *want, char *const *args)
{
	char out[4096];
	int rc = run(out, sizeof(out), args);
	const char *nl = strchr(out, '\n');

	ck_assert_msg(rc == 2, "exit %d: %s", rc, out);
	ck_assert_msg(strstr(out, want), "'%s' not in: %s", want, out);
	/* One line, not the usage. */
	ck_assert_msg(nl && !nl[1], "more than one line: %s", out);
}

START_TEST(messages)
{
	expect("unknown option '--pasued'; did you mean --paused?",
	       (char *[]){ "migrate", "--pasued", NULL });
	expect("--postcopy: 'sometimes' is not one of: never, auto, after-pass=N",
	       (char *[]){ "migrate", "--postcopy", "sometimes", NULL });
	expect("--bandwidth: '-3' is not a valid number",
	       (char *[]){ "migrate", "--bandwidth", "-3", NULL });
	expect("--to '127.0.0.1' lacks the port",
	       (char *[]){ "migrate", "--qmp", "/x", "--to", "127.0.0.1", NULL });
	expect("--listen ':4444' lacks the host",
	       (char *[]){ "receive", "--listen", ":4444", "--qmp", "/x", NULL });
	expect("--paused is not an option of receive",
	       (char *[]){ "receive", "--listen", "127.0.0.1:1", "--qmp", "/x",
			   "--paused", NULL });
	expect("--to needs a value", (char *[]){ "migrate", "--to", NULL });
	expect("--log-level: 'verbose' is not one of: error, warn, info, debug",
	       (char *[]){ "list", "--log-level", "verbose", NULL });
	expect("--status 'bogus' is not valid",
	       (char *[]){ "list", "--status", "bogus", NULL });
}
END_TEST

/*
 * A source QEMU ferry never reaches: exit 1 (nothing of the guest
 * changed; not 3, "needs recovery"), and the error said once on stderr.
 */
START_TEST(untouched_source)
{
	char out[4096];
	const char *first;
	int rc = run(out, sizeof(out), (char *[]){ "migrate", "--qmp",
		     "/nonexistent/ferry-test.qmp", "--to", "127.0.0.1:1", NULL });

	ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
	first = strstr(out, "cannot connect to QMP socket");
	ck_assert_msg(first, "%s", out);
	ck_assert_msg(!strstr(first + 1, "cannot connect to QMP socket"),
		      "the error is said twice: %s", out);
	ck_assert_msg(!strstr(out, "the migration failed"), "%s", out);
}
END_TEST

/* Each command's own --help: its options, not the others'. On stdout,
 * so run() sees none of it on stderr. */
START_TEST(help_per_command)
{
	char out[8192], cmd[256];
	FILE *p;
	size_t n;

	snprintf(cmd, sizeof(cmd), "%s receive --help", getenv("FERRY_BIN"));
	p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	ck_assert_int_eq(pclose(p), 0);
	ck_assert_msg(strstr(out, "usage: ferry receive") &&
		      strstr(out, "--listen HOST:PORT") &&
		      strstr(out, "--config FILE"), "%s", out);
	ck_assert_msg(!strstr(out, "--paused") && !strstr(out, "--bandwidth"),
		      "receive's help shows migrate's options: %s", out);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cli");
	TCase *tc = tcase_create("messages");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, messages);
	tcase_add_test(tc, help_per_command);
	tcase_add_test(tc, untouched_source);
	/* untouched_source waits out the QMP client's 10 s for a socket
	 * that QEMU may still be creating. */
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
