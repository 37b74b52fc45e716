/*
 * The kill matrix with disks (--block): each of `ferry migrate`, the
 * receiver, the source QEMU and the destination QEMU killed with SIGKILL
 * while the mirrors copy the disks, and at the switchover with disks (the
 * mirrors completed and the source QEMU waiting in pre-switchover, its
 * device state not sent yet).
 *
 * `ferry migrate` and `ferry receive` run as child processes, as on their
 * own hosts, with their journals. The switchover is found with the
 * journal's fault points (FERRY_FAULT, docs/journal.md): `ferry migrate`
 * dies right after it recorded the switchover, or stalls there while the
 * test kills another process. Then, after the automatic handling and
 * where needed one `ferry recover`, exactly one copy of the guest runs:
 * the source's, on its disk untouched (byte for byte), without a trace of
 * ferry in its QEMU, and a new migration of it to a new destination
 * completes with disks and RAM the same; or, where the source QEMU was
 * killed, none, and nothing pretends otherwise.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "ferry.h"
#include "tests/harness/blkpair.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

#define DISK_BYTES (64 * MiB)
#define DISK_DATA_MIB 48
/* The disks mirror for a few seconds: time to kill in. */
#define CAP_MIB_S "12"
#define STALL_MS "4000"
#define WAIT_MS 60000

enum victim { V_MIGRATE, V_RECEIVER, V_SRC_QEMU, V_DST_QEMU };
enum phase { P_MIRROR, P_SWITCHOVER };

static const char *const victim_names[] = {
	"ferry migrate", "the receiver", "the source QEMU", "the destination QEMU",
};

struct cell {
	struct pair p;
	struct blkpair d;
	char before[160], src_state[64], dst_state[64];
	uint16_t port;
	pid_t mig, rxp;
};

static void cell_start(struct cell *c)
{
	memset(c, 0, sizeof(*c));
	blkpair_start(&c->p, &c->d, &(struct blkpair_opts){ .size = DISK_BYTES,
							    .data_mib = DISK_DATA_MIB });
	snprintf(c->before, sizeof(c->before), "%s/before.raw", c->p.dir);
	blkpair_make_raw(c->before, DISK_BYTES, DISK_DATA_MIB, 1);
	snprintf(c->src_state, sizeof(c->src_state), "%s/src-state", c->p.dir);
	snprintf(c->dst_state, sizeof(c->dst_state), "%s/dst-state", c->p.dir);
	c->port = proc_free_port();
}

/* Children: `ferry receive --once` and `ferry migrate --block` (with
 * @fault in its environment). A killed ferry leaves its NBD socket
 * directory behind: it goes into the test's own (TMPDIR). */
static void cell_spawn(struct cell *c, const char *fault)
{
	struct ferry_error err = { 0 };
	char addr[32];
	char *rx_argv[] = { getenv("FERRY_BIN"), "receive", "--listen", addr,
			    "--qmp", (char *)vm_qmp_path(c->p.dst), "--once",
			    "--state-dir", c->dst_state, NULL };
	char *mig_argv[] = { getenv("FERRY_BIN"), "migrate", "--qmp",
			     (char *)vm_qmp_path(c->p.src), "--to", addr,
			     "--block", "--paused", "--compress", "none",
			     "--bandwidth", CAP_MIB_S, "--quiet", "--state-dir",
			     c->src_state, NULL };

	snprintf(addr, sizeof(addr), "127.0.0.1:%u", c->port);
	setenv("TMPDIR", c->p.dir, 1);
	ck_assert_msg(proc_spawn(rx_argv, NULL, &c->rxp, &err) == 0, "%s", err.msg);
	ck_assert_msg(proc_wait_port(c->port, 5000, &err) == 0, "%s", err.msg);
	if (fault)
		setenv("FERRY_FAULT", fault, 1);
	ck_assert_msg(proc_spawn(mig_argv, NULL, &c->mig, &err) == 0, "%s",
		      err.msg);
	unsetenv("FERRY_FAULT");
	unsetenv("TMPDIR");
}

/* The source QEMU's migration status ("" when it does not answer). */
static void src_mig_status(struct cell *c, char *out, size_t len)
{
	json_t *ret = NULL;

	out[0] = '\0';
	if (qmp_execute(vm_qmp(c->p.src), "query-migrate", NULL, &ret,
			VM_QMP_TIMEOUT_MS, NULL) == 0)
		snprintf(out, len, "%s", json_string_value(json_object_get(ret,
			 "status")) ?: "none");
	json_decref(ret);
}

/* Until the phase to kill in: the mirror copying, or the source QEMU
 * waiting at pre-switchover with the mirrors completed and the
 * switchover recorded (ferry stalls, or dies, there). */
static void wait_phase(struct cell *c, enum phase ph)
{
	char st[32] = "";

	for (int i = 0; i < WAIT_MS / 10; i++) {
		if (ph == P_MIRROR && blkpair_mirror_running(c->p.src))
			return;
		if (ph == P_SWITCHOVER && proc_journal_has(c->src_state, "source",
							    "\"state\":\"switchover\"")) {
			src_mig_status(c, st, sizeof(st));
			ck_assert_str_eq(st, "pre-switchover");
			return;
		}
		usleep(10 * 1000);
	}
	ck_abort_msg("never reached the phase to kill in (source: '%s')", st);
}

/* `ferry recover --state-dir @dir`: its exit status, its output. */
static int run_recover(const char *dir, char *out, size_t len)
{
	struct ferry_error err = { 0 };
	int rc = proc_recover(dir, NULL, NULL, out, len, &err);

	ck_assert_msg(rc >= 0, "%s", err.msg);
	return rc;
}

/* The source's guest runs, once, on its disk as it was, and a new
 * migration of it completes: disks and RAM the same. */
static void expect_source_whole_then_retry(struct cell *c)
{
	struct ferry_migrate_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;

	expect_source_alive(&c->p);
	expect_source_clean(c->p.src);
	expect_same_file(c->before, c->d.src_img);
	blkpair_new_dst(&c->p, &c->d);
	setenv("TMPDIR", c->p.dir, 1);
	ck_assert_msg(blkpair_migrate(&c->p, &o, &rep, &err, &rx) == 0, "retry: %s",
		      err.msg);
	unsetenv("TMPDIR");
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	expect_same_file(c->d.src_img, c->d.dst_img);
	expect_same_ram(&c->p);
}

/* The guest's only whole copy was the source QEMU's: it is gone, and the
 * destination never runs a partial one. */
static void expect_lost(struct cell *c)
{
	struct ferry_error err = { 0 };
	char st[32];

	ck_assert(!vm_alive(c->p.src));
	/* QEMU 7.2 exits when its incoming migration fails, maybe while it
	 * is asked: gone, or not running. */
	if (vm_alive(c->p.dst) && vm_status(c->p.dst, st, sizeof(st), &err) == 0)
		ck_assert_str_ne(st, "running");
	(void)err;
}

static void run_cell(enum victim v, enum phase ph)
{
	struct cell c;
	char out[4096];
	int mig_rc;

	cell_start(&c);
	cell_spawn(&c, ph != P_SWITCHOVER ? NULL : v == V_MIGRATE ?
		   "source:switchover:kill" : "source:switchover:stall=" STALL_MS);
	wait_phase(&c, ph);
	fprintf(stderr, "-- killing %s %s\n", victim_names[v],
		ph == P_MIRROR ? "while the mirrors copy" :
		"at the switchover with disks");
	switch (v) {
	case V_MIGRATE:
		if (ph == P_MIRROR)
			kill(c.mig, SIGKILL);
		break;		/* at the switchover, the fault point kills */
	case V_RECEIVER:
		kill(c.rxp, SIGKILL);
		break;
	case V_SRC_QEMU:
		vm_kill(c.p.src);
		break;
	case V_DST_QEMU:
		vm_kill(c.p.dst);
		break;
	}
	mig_rc = proc_wait(c.mig);
	if (v == V_RECEIVER)
		ck_assert_int_eq(proc_wait(c.rxp), 128 + SIGKILL);
	else if (v != V_MIGRATE)
		proc_wait(c.rxp);
	switch (v) {
	case V_MIGRATE:
		ck_assert_int_eq(mig_rc, 128 + SIGKILL);
		/* Recover on the source host: the device state never left.
		 * (At the switchover the source QEMU waits for ferry, and the
		 * receiver for QEMU's stream, which hand-off gave QEMU: the
		 * recover's cancel ends both.) */
		ck_assert_int_eq(run_recover(c.src_state, out, sizeof(out)), 0);
		ck_assert_msg(strstr(out, "(source): the switchover never "
				     "happened"), "%s", out);
		proc_wait(c.rxp);
		expect_source_whole_then_retry(&c);
		break;
	case V_RECEIVER:
	case V_DST_QEMU:
		/* Failed, the source guest runs (exit status 1). */
		ck_assert_int_eq(mig_rc, 1);
		expect_source_whole_then_retry(&c);
		break;
	case V_SRC_QEMU:
		/* Failed, not running: exit status 3. */
		ck_assert_int_eq(mig_rc, 3);
		expect_lost(&c);
		ck_assert_int_eq(run_recover(c.src_state, out, sizeof(out)), 0);
		ck_assert_msg(strstr(out, "is gone"), "%s", out);
		break;
	}
	pair_stop(&c.p);
}

START_TEST(mirror)
{
	run_cell((enum victim)_i, P_MIRROR);
}
END_TEST

START_TEST(switchover)
{
	run_cell((enum victim)_i, P_SWITCHOVER);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("crash_block");
	TCase *tm = tcase_create("mirror"), *ts = tcase_create("switchover");
	SRunner *sr;
	int failed;

	/* ferry migrate and the receiver killed while the mirrors copy are
	 * test_block's (migrate_killed_then_retry, receiver_dies). */
	tcase_set_timeout(tm, 240);
	tcase_add_loop_test(tm, mirror, V_SRC_QEMU, V_DST_QEMU + 1);
	tcase_set_timeout(ts, 240);
	tcase_add_loop_test(ts, switchover, V_MIGRATE, V_DST_QEMU + 1);
	suite_add_tcase(s, tm);
	suite_add_tcase(s, ts);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
