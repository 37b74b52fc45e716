/*
 * The kill matrix in post-copy: once the destination runs on pages only
 * the source has, neither copy of the guest is whole, and the migration
 * must finish, not fall back.
 *
 * `ferry migrate` and, where it is killed, `ferry receive` run as child
 * processes (as on their own hosts); elsewhere the receiver runs in this
 * process, as libferry. Each cell kills with SIGKILL once the destination
 * QEMU itself runs post-copy, then checks which copy of the guest is left
 * and its data: the destination stays paused (--paused), so that once
 * post-copy completes both guests are quiescent and their RAM is compared
 * byte for byte. Where a QEMU was killed, the guest is lost (each side
 * held part of its state) and the cell asserts that nothing pretends
 * otherwise.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/mig.h"
#include "common/util.h"
#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

/* A working set that is still dirty after the first pass: post-copy has
 * ws_mib to fetch at the cap, a few seconds to kill in. */
static const struct pair_opts guest = { .mem_mib = 128, .fill = "random",
					.ws_mib = 48, .rate_mib_s = 64 };
#define CAP_MIB_S "16"
#define POSTCOPY_TIMEOUT_MS 60000
#define SETTLE_TIMEOUT_MS 30000

struct cell {
	struct pair p;
	char src_state[64], dst_state[64];
	uint16_t port;
};

static void cell_start(struct cell *c)
{
	ck_assert_int_eq(tmpdir_make(c->src_state, sizeof(c->src_state),
				     "ferry-src-state"), 0);
	ck_assert_int_eq(tmpdir_make(c->dst_state, sizeof(c->dst_state),
				     "ferry-dst-state"), 0);
	c->port = proc_free_port();
	pair_start(&c->p, &guest);
}

static void cell_stop(struct cell *c)
{
	pair_stop(&c->p);
	tmpdir_remove(c->src_state);
	tmpdir_remove(c->dst_state);
}

/* The destination QEMU's migration status. */
static void dst_status(struct cell *c, char *out, size_t len)
{
	struct mig_info info;

	out[0] = '\0';
	if (mig_query(vm_qmp(c->p.dst), &info, NULL) == 0)
		snprintf(out, len, "%s", info.status);
}

/* Until the destination QEMU runs post-copy. */
static void wait_dst_postcopy(struct cell *c)
{
	char st[32];

	for (int i = 0; i < POSTCOPY_TIMEOUT_MS / 10; i++) {
		dst_status(c, st, sizeof(st));
		if (!strcmp(st, "postcopy-active"))
			return;
		ck_assert_msg(strcmp(st, "completed") != 0, "post-copy ended "
			      "before it could be interrupted");
		usleep(10 * 1000);
	}
	ck_abort_msg("the destination never ran post-copy (it is '%s')", st);
}

/* Until the destination QEMU's migration is @want (or leaves post-copy,
 * when @want is NULL). */
static void wait_dst(struct cell *c, const char *want)
{
	char st[32];

	for (int i = 0; i < SETTLE_TIMEOUT_MS / 20; i++) {
		dst_status(c, st, sizeof(st));
		if (want ? !strcmp(st, want) : strncmp(st, "postcopy", 8) != 0)
			return;
		usleep(20 * 1000);
	}
	ck_abort_msg("the destination's migration is '%s', not '%s'", st,
		     want ? want : "out of post-copy");
}

/* `ferry migrate` into post-copy after the first pass, destination
 * paused, journal in src_state; @handoff: QEMU's own stream on ferry's
 * connection, else the tunnel. */
static pid_t spawn_migrate(struct cell *c, bool handoff)
{
	char to[32];
	char *argv[] = { getenv("FERRY_BIN"), "migrate", "--qmp",
			 (char *)vm_qmp_path(c->p.src), "--to", to,
			 "--bandwidth", CAP_MIB_S, "--compress", "none",
			 "--postcopy", "after-pass=1", "--paused", "--quiet",
			 "--state-dir", c->src_state,
			 handoff ? NULL : "--no-handoff", NULL };
	struct ferry_error err = { 0 };
	pid_t pid;

	snprintf(to, sizeof(to), "127.0.0.1:%u", c->port);
	ck_assert_msg(proc_spawn(argv, NULL, &pid, &err) == 0, "%s", err.msg);
	return pid;
}

/* `ferry receive --once` on c->port, journal in dst_state. */
static pid_t spawn_receiver(struct cell *c)
{
	char listen[32];
	char *argv[] = { getenv("FERRY_BIN"), "receive", "--listen", listen,
			 "--qmp", (char *)vm_qmp_path(c->p.dst), "--once",
			 "--state-dir", c->dst_state, NULL };
	struct ferry_error err = { 0 };
	pid_t pid;

	snprintf(listen, sizeof(listen), "127.0.0.1:%u", c->port);
	ck_assert_msg(proc_spawn(argv, NULL, &pid, &err) == 0, "%s", err.msg);
	ck_assert_msg(proc_wait_port(c->port, 5000, &err) == 0, "%s", err.msg);
	return pid;
}

/* The same in this process. */
static void rx_start(struct cell *c, struct rx_thread *rx)
{
	struct ferry_receiver_opts o = { .once = true, .state_dir = c->dst_state };

	pair_rx_start(&c->p, rx, &o);
	c->port = rx->port;
}

/* `ferry recover --state-dir @dir`: its exit status, its output. */
static int run_recover(const char *dir, char *out, size_t len)
{
	struct ferry_error err = { 0 };
	int rc = proc_recover(dir, "--wait", "30", out, len, &err);

	ck_assert_msg(rc >= 0, "%s", err.msg);
	return rc;
}

static void kill_wait(pid_t pid)
{
	kill(pid, SIGKILL);
	ck_assert_int_eq(proc_wait(pid), 128 + SIGKILL);
}

/* Post-copy finished: one copy, on the destination (paused, as asked),
 * the source stopped for good, their RAM the same. */
static void expect_moved(struct cell *c)
{
	wait_dst(c, "completed");
	expect_status(c->p.src, "postmigrate");
	expect_status(c->p.dst, "paused");
	expect_same_ram(&c->p);
}

/*
 * `ferry migrate` killed: the receiver (alive, in this process) waits for
 * the source to come back; `ferry recover` on the source host resumes the
 * post-copy from the journal and runs it to completion.
 */
START_TEST(migrate_killed)
{
	struct rx_thread rx;
	struct cell c;
	char out[4096];

	cell_start(&c);
	rx_start(&c, &rx);
	{
		pid_t mig = spawn_migrate(&c, false);

		wait_dst_postcopy(&c);
		kill_wait(mig);
	}
	ck_assert_int_eq(run_recover(c.src_state, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "(source): post-copy resumed and completed"),
		      "%s", out);
	rx_thread_join(&rx);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	expect_moved(&c);
	expect_listed(c.src_state, "source", "completed");
	expect_listed(c.dst_state, "destination", "completed");
	/* Nothing left to do. */
	ck_assert_int_eq(run_recover(c.src_state, out, sizeof(out)), 0);
	ck_assert_msg(!strstr(out, "migration "), "%s", out);
	cell_stop(&c);
}
END_TEST

/*
 * Both ferry processes killed: recover on the destination host says the
 * destination waits (exit 3); a receiver started again on its state
 * directory takes the migration back from the journal when recover on
 * the source host resumes it.
 */
START_TEST(both_killed)
{
	struct cell c;
	char out[4096];
	pid_t mig, rxp;

	cell_start(&c);
	rxp = spawn_receiver(&c);
	mig = spawn_migrate(&c, false);
	wait_dst_postcopy(&c);
	kill_wait(mig);
	kill_wait(rxp);
	wait_dst(&c, "postcopy-paused");
	expect_listed(c.src_state, "source", "needs-recover");
	ck_assert_int_eq(run_recover(c.dst_state, out, sizeof(out)), 3);
	ck_assert_msg(strstr(out, "(destination): post-copy was interrupted"),
		      "%s", out);
	expect_listed(c.dst_state, "destination", "needs-recover");
	rxp = spawn_receiver(&c);
	ck_assert_int_eq(run_recover(c.src_state, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "(source): post-copy resumed and completed"),
		      "%s", out);
	ck_assert_int_eq(proc_wait(rxp), 0);
	expect_moved(&c);
	ck_assert_int_eq(run_recover(c.dst_state, out, sizeof(out)), 0);
	cell_stop(&c);
}
END_TEST

/*
 * The receiver killed: `ferry migrate` keeps reconnecting (bounded); a
 * receiver started again on the same state directory takes the
 * migration back, and `ferry migrate` completes it by itself.
 */
START_TEST(receiver_killed)
{
	struct cell c;
	pid_t mig, rxp;

	cell_start(&c);
	rxp = spawn_receiver(&c);
	mig = spawn_migrate(&c, false);
	wait_dst_postcopy(&c);
	kill_wait(rxp);
	rxp = spawn_receiver(&c);
	ck_assert_int_eq(proc_wait(mig), 0);
	ck_assert_int_eq(proc_wait(rxp), 0);
	expect_moved(&c);
	cell_stop(&c);
}
END_TEST

/*
 * Hand-off: QEMU's stream runs on a connection QEMU holds itself, and
 * post-copy completes without either ferry. Recover on the source host
 * finds the source completed; on the destination host it needs no proof
 * from the source (after post-copy began the source never runs again)
 * and leaves the guest paused, as the migration asked.
 */
START_TEST(both_killed_handoff)
{
	struct cell c;
	char out[4096];
	pid_t mig, rxp;

	cell_start(&c);
	rxp = spawn_receiver(&c);
	mig = spawn_migrate(&c, true);
	wait_dst_postcopy(&c);
	/* Once the receiver saw its QEMU in post-copy (and journaled it):
	 * the proof that the source can never run the guest again. */
	for (int i = 0; i < 200 && !proc_journal_has(c.dst_state, "destination",
						      "\"seen\":true"); i++)
		usleep(10 * 1000);
	ck_assert_msg(proc_journal_has(c.dst_state, "destination",
				       "\"seen\":true"),
		      "the receiver never journaled its QEMU in post-copy");
	kill_wait(mig);
	kill_wait(rxp);
	wait_dst(&c, "completed");
	ck_assert_int_eq(run_recover(c.src_state, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "(source): the source QEMU completed"), "%s",
		      out);
	ck_assert_int_eq(run_recover(c.dst_state, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "(destination): the destination QEMU "
			     "completed: it holds the whole guest, which stays "
			     "paused"), "%s", out);
	expect_moved(&c);
	cell_stop(&c);
}
END_TEST

/*
 * The source QEMU killed: the pages the destination had not fetched are
 * gone, so is the guest. `ferry migrate` says so (exit 3) and tells the
 * receiver, which does not wait for a source that cannot come back; the
 * destination never completes.
 */
START_TEST(source_qemu_killed)
{
	struct rx_thread rx;
	struct cell c;
	pid_t mig;

	cell_start(&c);
	rx_start(&c, &rx);
	mig = spawn_migrate(&c, false);
	wait_dst_postcopy(&c);
	vm_kill(c.p.src);
	ck_assert_int_eq(proc_wait(mig), 3);
	rx_thread_join(&rx);
	ck_assert_int_lt(rx.rc, 0);
	ck_assert_msg(strstr(rx.err.msg, "lost"), "%s", rx.err.msg);
	{
		char st[32];

		dst_status(&c, st, sizeof(st));
		ck_assert_str_ne(st, "completed");
	}
	cell_stop(&c);
}
END_TEST

/*
 * The destination QEMU killed: it held the guest's state since the
 * switchover; the source QEMU cannot run the guest again (QEMU keeps it
 * in postcopy-paused). `ferry migrate` exits 3, the source stays stopped.
 */
START_TEST(destination_qemu_killed)
{
	struct rx_thread rx;
	struct cell c;
	struct mig_info info;
	pid_t mig;

	cell_start(&c);
	rx_start(&c, &rx);
	mig = spawn_migrate(&c, false);
	wait_dst_postcopy(&c);
	vm_kill(c.p.dst);
	ck_assert_int_eq(proc_wait(mig), 3);
	rx_thread_join(&rx);
	ck_assert_int_lt(rx.rc, 0);
	ck_assert_int_eq(mig_query(vm_qmp(c.p.src), &info, NULL), 0);
	ck_assert_str_eq(info.status, "postcopy-paused");
	{
		struct ferry_error err = { 0 };
		char st[32];

		ck_assert_msg(vm_status(c.p.src, st, sizeof(st), &err) == 0, "%s",
			      err.msg);
		ck_assert_str_ne(st, "running");
	}
	cell_stop(&c);
}
END_TEST

/* One case per cell: CK_RUN_CASE=name runs one. */
static void add(Suite *s, const char *name, const TTest *t)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}

static Suite *crash_postcopy_suite(void)
{
	Suite *s = suite_create("crash_postcopy");

	add(s, "migrate_killed", migrate_killed);
	add(s, "both_killed", both_killed);
	add(s, "receiver_killed", receiver_killed);
	add(s, "both_killed_handoff", both_killed_handoff);
	add(s, "source_qemu_killed", source_qemu_killed);
	add(s, "destination_qemu_killed", destination_qemu_killed);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(crash_postcopy_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
