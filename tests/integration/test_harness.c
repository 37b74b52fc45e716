/*
 * The VM harness and the test guest, checked on real QEMU before anything
 * relies on them: every fill profile boots, reports READY and beats; the
 * RAM dump has the profile's character; heartbeat gaps see a pause; QEMU's
 * failures come back as errors with QEMU's message; and nothing (process,
 * socket, temp dir) survives vm_stop(), exit(), a signal or SIGKILL.
 *
 * Environment: FERRY_GUEST (the guest ELF; build/guest.elf by default).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/harness/vm.h"

#define T_MEM_MIB 128u
#define T_READY_MS 30000
#define T_HB_MS 5000
#define T_PAGE 4096u
/* Longest wait for an orphaned QEMU to die and its dir to go. */
#define T_GONE_MS 5000

static bool pid_gone(pid_t pid)
{
	char path[64], buf[256];
	ssize_t n;
	int fd;

	if (kill(pid, 0) < 0 && errno == ESRCH)
		return true;
	/* A zombie waiting for init to reap it is dead too. */
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return true;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return true;
	buf[n] = '\0';
	return strstr(buf, ") Z ") != NULL;
}

static bool dir_gone(const char *dir)
{
	struct stat st;

	return stat(dir, &st) < 0 && errno == ENOENT;
}

static void expect_cleaned_up(pid_t pid, const char *dir, int wait_ms)
{
	int waited = 0;

	while ((!pid_gone(pid) || !dir_gone(dir)) && waited < wait_ms) {
		usleep(10000);
		waited += 10;
	}
	ck_assert_msg(pid_gone(pid), "QEMU %d still running", (int)pid);
	ck_assert_msg(dir_gone(dir), "temp dir %s still there", dir);
}

struct dump_stats {
	uint64_t pages, zero_pages, text_pages;
};

static bool page_is_zero(const unsigned char *p)
{
	for (unsigned i = 0; i < T_PAGE; i++) {
		if (p[i])
			return false;
	}
	return true;
}

static bool page_is_text(const unsigned char *p)
{
	for (unsigned i = 0; i < T_PAGE; i++) {
		if (!((p[i] >= 'a' && p[i] <= 'z') || p[i] == ' ' || p[i] == '.' ||
		      p[i] == ',' || p[i] == '\n'))
			return false;
	}
	return true;
}

/* Classify the pages of the guest's filled area (from 8 MiB up, past the
 * image and its pools' alignment, to 120 MiB, below the pools). */
static void dump_stats(const char *path, struct dump_stats *s)
{
	unsigned char page[T_PAGE];
	FILE *f = fopen(path, "rb");
	struct stat st;

	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq((uint64_t)st.st_size, (uint64_t)T_MEM_MIB << 20);
	memset(s, 0, sizeof(*s));
	ck_assert_int_eq(fseek(f, 8 << 20, SEEK_SET), 0);
	for (uint64_t off = 8 << 20; off < (120u << 20); off += T_PAGE) {
		ck_assert_uint_eq(fread(page, 1, T_PAGE, f), T_PAGE);
		s->pages++;
		s->zero_pages += page_is_zero(page);
		s->text_pages += page_is_text(page);
	}
	fclose(f);
}

static void expect_profile(const char *fill, const struct dump_stats *s)
{
	uint64_t pct_zero = s->zero_pages * 100 / s->pages;
	uint64_t pct_text = s->text_pages * 100 / s->pages;

	if (strcmp(fill, "zero") == 0) {
		ck_assert_msg(pct_zero >= 99, "zero: only %llu%% zero pages",
			      (unsigned long long)pct_zero);
	} else if (strcmp(fill, "random") == 0) {
		ck_assert_msg(pct_zero == 0 && pct_text == 0,
			      "random: %llu%% zero, %llu%% text pages",
			      (unsigned long long)pct_zero, (unsigned long long)pct_text);
	} else if (strcmp(fill, "text") == 0) {
		ck_assert_msg(pct_text >= 99, "text: only %llu%% text pages",
			      (unsigned long long)pct_text);
	} else {
		ck_assert_msg(pct_zero >= 20 && pct_zero <= 30 && pct_text >= 35 &&
			      pct_text <= 45, "mix: %llu%% zero, %llu%% text pages",
			      (unsigned long long)pct_zero, (unsigned long long)pct_text);
	}
}

static const char *const fills[] = { "zero", "random", "text", "mix" };

/* Each profile: READY, heartbeats, running, a dump of its kind, then a
 * vm_stop() that leaves nothing behind. */
START_TEST(profile_boots_and_fills)
{
	struct vm_config c = { .mem_mib = T_MEM_MIB, .fill = fills[_i],
			       .ws_mib = 8, .rate_mib_s = 20 };
	struct ferry_error err = { 0 };
	char tmp[] = "/tmp/ferry-th.XXXXXX", dump[64], dir[128], st[32];
	struct dump_stats s;
	struct vm *vm;
	pid_t pid;

	ck_assert_ptr_nonnull(mkdtemp(tmp));
	snprintf(dump, sizeof(dump), "%s/ram", tmp);
	ck_assert_msg(vm_start(&vm, &c, &err) == 0, "%s", err.msg);
	pid = vm_pid(vm);
	snprintf(dir, sizeof(dir), "%s", vm_dir(vm));
	ck_assert_msg(vm_wait_ready(vm, T_READY_MS, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_wait_heartbeats(vm, 10, T_HB_MS, &err) == 0, "%s", err.msg);
	ck_assert(vm_last_heartbeat_us(vm) > 0);
	ck_assert_msg(vm_status(vm, st, sizeof(st), &err) == 0, "%s", err.msg);
	ck_assert_str_eq(st, "running");
	ck_assert_msg(vm_pmemsave(vm, dump, &err) == 0, "%s", err.msg);
	dump_stats(dump, &s);
	expect_profile(fills[_i], &s);
	unlink(dump);
	rmdir(tmp);
	ck_assert(vm_alive(vm));
	vm_stop(vm);
	expect_cleaned_up(pid, dir, 0);
}
END_TEST

/* A paused guest shows up as a heartbeat gap at least as long as the pause. */
START_TEST(gap_measures_pause)
{
	struct vm_config c = { .fill = "zero" };
	struct ferry_error err = { 0 };
	struct vm *vm;
	uint64_t since, gap;

	ck_assert_msg(vm_start(&vm, &c, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_wait_ready(vm, T_READY_MS, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_wait_heartbeats(vm, 2, T_HB_MS, &err) == 0, "%s", err.msg);
	since = vm_now_us();
	ck_assert_uint_eq(vm_max_heartbeat_gap_ms(vm, NULL, since), UINT64_MAX);
	ck_assert_msg(vm_wait_heartbeats(vm, 20, T_HB_MS, &err) == 0, "%s", err.msg);
	gap = vm_max_heartbeat_gap_ms(vm, NULL, since);
	ck_assert_msg(gap >= 5 && gap < 150, "running guest: gap %llu ms",
		      (unsigned long long)gap);
	ck_assert_msg(qmp_execute(vm_qmp(vm), "stop", NULL, NULL, 5000, &err) == 0,
		      "%s", err.msg);
	usleep(400 * 1000);
	ck_assert_msg(qmp_execute(vm_qmp(vm), "cont", NULL, NULL, 5000, &err) == 0,
		      "%s", err.msg);
	ck_assert_msg(vm_wait_heartbeats(vm, 5, T_HB_MS, &err) == 0, "%s", err.msg);
	gap = vm_max_heartbeat_gap_ms(vm, vm, since);
	ck_assert_msg(gap >= 400 && gap < 2000, "paused 400 ms: gap %llu ms",
		      (unsigned long long)gap);
	vm_stop(vm);
}
END_TEST

/* A destination waits in "inmigrate" and does not run the guest. */
START_TEST(incoming_waits)
{
	struct vm_config c = { .incoming = true, .prealloc = true };
	struct ferry_error err = { 0 };
	struct vm *vm;
	char st[32];

	ck_assert_msg(vm_start(&vm, &c, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_status(vm, st, sizeof(st), &err) == 0, "%s", err.msg);
	ck_assert_str_eq(st, "inmigrate");
	ck_assert_int_eq(vm_wait_heartbeats(vm, 1, 300, &err), -ETIMEDOUT);
	ck_assert_uint_eq(vm_heartbeats(vm), 0);
	vm_stop(vm);
}
END_TEST

START_TEST(bad_config_is_refused)
{
	struct vm_config c = { .fill = "bogus" };
	struct ferry_error err = { 0 };
	struct vm *vm = (struct vm *)1;

	ck_assert_int_eq(vm_start(&vm, &c, &err), -EINVAL);
	ck_assert_ptr_null(vm);
	ck_assert_msg(strstr(err.msg, "bogus"), "%s", err.msg);

	c.fill = NULL;
	c.mem_mib = 8;
	ck_assert_int_eq(vm_start(&vm, &c, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "mem_mib"), "%s", err.msg);

	c.mem_mib = 0;
	c.guest_path = "/nonexistent/guest.elf";
	ck_assert_int_eq(vm_start(&vm, &c, &err), -ENOENT);
	ck_assert_msg(strstr(err.msg, "/nonexistent/guest.elf"), "%s", err.msg);
}
END_TEST

/* QEMU refusing its command line comes back with QEMU's own words. */
START_TEST(qemu_failure_is_reported)
{
	struct vm_config c = { .extra_args = "-no-such-option" };
	struct ferry_error err = { 0 };
	struct vm *vm;

	ck_assert_int_eq(vm_start(&vm, &c, &err), -ECHILD);
	ck_assert_msg(strstr(err.msg, "no-such-option"), "%s", err.msg);
}
END_TEST

/* A QEMU that dies (vm_kill, as a crash) fails the waits fast. */
START_TEST(killed_vm_fails_waits)
{
	struct vm_config c = { .fill = "zero" };
	struct ferry_error err = { 0 };
	char dir[128], st[32];
	struct vm *vm;
	pid_t pid;

	ck_assert_msg(vm_start(&vm, &c, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_wait_ready(vm, T_READY_MS, &err) == 0, "%s", err.msg);
	pid = vm_pid(vm);
	snprintf(dir, sizeof(dir), "%s", vm_dir(vm));
	vm_kill(vm);
	ck_assert_int_eq(vm_wait_heartbeats(vm, 1000, T_HB_MS, &err), -ECHILD);
	ck_assert(!vm_alive(vm));
	ck_assert_int_lt(vm_status(vm, st, sizeof(st), &err), 0);
	vm_stop(vm);
	expect_cleaned_up(pid, dir, 0);
}
END_TEST

START_TEST(files_equal_finds_first_difference)
{
	char dir[] = "/tmp/ferry-th.XXXXXX", a[64], b[64];
	struct ferry_error err = { 0 };
	uint64_t diff = 0;
	FILE *f;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(a, sizeof(a), "%s/a", dir);
	snprintf(b, sizeof(b), "%s/b", dir);
	f = fopen(a, "w");
	fputs("hello world", f);
	fclose(f);
	f = fopen(b, "w");
	fputs("hello wOrld", f);
	fclose(f);
	ck_assert_int_eq(vm_files_equal(a, a, &diff, &err), 1);
	ck_assert_int_eq(vm_files_equal(a, b, &diff, &err), 0);
	ck_assert_uint_eq(diff, 7);
	ck_assert_int_eq(truncate(b, 5), 0);
	ck_assert_int_eq(vm_files_equal(a, b, &diff, &err), 0);
	ck_assert_uint_eq(diff, 5);
	unlink(b);
	ck_assert_int_eq(vm_files_equal(a, b, &diff, &err), -ENOENT);
	ck_assert_msg(strstr(err.msg, b), "%s", err.msg);
	unlink(a);
	rmdir(dir);
}
END_TEST

enum death { DIE_EXIT, DIE_SIGTERM, DIE_SIGKILL };

/*
 * A child process starts a VM and dies without vm_stop(): by exit(), by
 * SIGTERM, or by SIGKILL (only PDEATHSIG and the janitor can help then).
 * Its QEMU and temp dir must go all the same.
 */
START_TEST(dying_program_leaves_nothing)
{
	struct { pid_t pid; char dir[128]; } info;
	int pfd[2], status;
	pid_t child;

	ck_assert_int_eq(pipe(pfd), 0);
	child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		struct vm_config c = { .fill = "zero" };
		struct ferry_error err = { 0 };
		struct vm *vm;

		close(pfd[0]);
		/* libcheck's own SIGTERM handler (kill the test's process group)
		 * would take precedence over the harness's: a program with the
		 * default action is what this test is about. */
		signal(SIGTERM, SIG_DFL);
		if (vm_start(&vm, &c, &err) < 0 || vm_wait_ready(vm, T_READY_MS, &err) < 0)
			_exit(2);
		memset(&info, 0, sizeof(info));
		info.pid = vm_pid(vm);
		snprintf(info.dir, sizeof(info.dir), "%s", vm_dir(vm));
		if (write(pfd[1], &info, sizeof(info)) != sizeof(info))
			_exit(3);
		if (_i == DIE_EXIT)
			exit(0);
		raise(_i == DIE_SIGTERM ? SIGTERM : SIGKILL);
		_exit(4);
	}
	close(pfd[1]);
	ck_assert_int_eq(read(pfd[0], &info, sizeof(info)), sizeof(info));
	close(pfd[0]);
	ck_assert_int_eq(waitpid(child, &status, 0), child);
	if (_i == DIE_EXIT)
		ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	else
		ck_assert(WIFSIGNALED(status) &&
			  WTERMSIG(status) == (_i == DIE_SIGTERM ? SIGTERM : SIGKILL));
	expect_cleaned_up(info.pid, info.dir, T_GONE_MS);
}
END_TEST

static Suite *harness_suite(void)
{
	Suite *s = suite_create("harness");
	TCase *guest = tcase_create("guest");
	TCase *fail = tcase_create("failures");
	TCase *clean = tcase_create("cleanup");

	tcase_set_timeout(guest, 60);
	tcase_add_loop_test(guest, profile_boots_and_fills, 0, 4);
	tcase_add_test(guest, gap_measures_pause);
	tcase_add_test(guest, incoming_waits);
	suite_add_tcase(s, guest);

	tcase_set_timeout(fail, 30);
	tcase_add_test(fail, bad_config_is_refused);
	tcase_add_test(fail, qemu_failure_is_reported);
	tcase_add_test(fail, killed_vm_fails_waits);
	tcase_add_test(fail, files_equal_finds_first_difference);
	suite_add_tcase(s, fail);

	tcase_set_timeout(clean, 30);
	tcase_add_loop_test(clean, dying_program_leaves_nothing, DIE_EXIT, DIE_SIGKILL + 1);
	suite_add_tcase(s, clean);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(harness_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
