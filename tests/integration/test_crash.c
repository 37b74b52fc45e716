/*
 * Whatever dies mid-migration, the guest runs exactly once, with its
 * memory intact: the cells of the kill matrix that the living side
 * handles by itself.
 *
 * `ferry migrate` runs as a child process (as on its own host) and is
 * killed with SIGKILL while QEMU streams; the receiver runs in this
 * process, as libferry. With hand-off, QEMU's stream needs no ferry and
 * the migration completes without it: the destination holds a whole copy
 * and stays paused until `ferry recover`, with the source host's proof
 * that the source completed, resumes it; through the tunnel, the stream
 * dies with ferry, the source QEMU's migration fails and its guest runs
 * on. Each cell checks which
 * copy runs, and the data: RAM compared byte for byte where both guests
 * are quiescent, heartbeats where the guest runs.
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
#include "tests/harness/proxy.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

#define TEST_MEM_MIB 128
/* QEMU paces the stream: 128 MiB take about 8 s, time to kill ferry. */
#define CAP_MIB_S "16"
#define ACTIVE_TIMEOUT_MS 30000

/* The guests: incompressible, idle or dirtying a little. */
static const struct pair_opts idle = { .mem_mib = TEST_MEM_MIB,
				       .fill = "random" };
static const struct pair_opts dirtying = { .mem_mib = TEST_MEM_MIB,
					   .fill = "random", .ws_mib = 4,
					   .rate_mib_s = 8 };

/* Until the destination QEMU is loading a stream. */
static void wait_dest_active(struct pair *p)
{
	struct mig_info info;

	for (int i = 0; i < ACTIVE_TIMEOUT_MS / 20; i++) {
		if (mig_query(vm_qmp(p->dst), &info, NULL) == 0 &&
		    !strcmp(info.status, "active"))
			return;
		usleep(20 * 1000);
	}
	ck_abort_msg("the destination never started loading");
}

/* Start `ferry migrate` to @port with @extra options; killed with SIGKILL
 * once the destination loads. */
/* `ferry migrate` of @p to @port with @extra options, as a child process
 * (its host), once the destination loads. */
static pid_t spawn_migrate(struct pair *p, uint16_t port,
			   const char *const *extra)
{
	char to[32];
	char *argv[24] = { getenv("FERRY_BIN"), "migrate", "--qmp",
			   (char *)vm_qmp_path(p->src), "--to", to,
			   "--bandwidth", CAP_MIB_S, "--quiet" };
	struct ferry_error err = { 0 };
	int n = 9;
	pid_t mig;

	ck_assert_ptr_nonnull(argv[0]);
	snprintf(to, sizeof(to), "127.0.0.1:%u", port);
	for (; extra && *extra; extra++)
		argv[n++] = (char *)*extra;
	argv[n] = NULL;
	ck_assert_msg(proc_spawn(argv, NULL, &mig, &err) == 0, "%s", err.msg);
	wait_dest_active(p);
	return mig;
}

/* The same, killed with SIGKILL once the destination loads. */
static void migrate_and_kill(struct pair *p, uint16_t port,
			     const char *const *extra)
{
	pid_t mig = spawn_migrate(p, port, extra);

	kill(mig, SIGKILL);
	ck_assert_int_eq(proc_wait(mig), 128 + SIGKILL);
}

/* A --once receiver of @p's destination, journal in @state_dir (or none). */
static void rx_start_once(struct rx_thread *rx, struct pair *p,
			  const char *state_dir)
{
	pair_rx_start(p, rx, &(struct ferry_receiver_opts){ .once = true,
							    .state_dir = state_dir });
}

/*
 * Hand-off: ferry migrate dies and QEMU completes the migration without
 * it. The destination holds a whole copy, but only the source host can
 * tell that the source stopped for good, so the receiver leaves it
 * paused (not killed) and says to recover: the source is stopped, the
 * destination paused, their RAM the same.
 */
START_TEST(migrate_killed_handoff)
{
	static const char *const extra[] = { "--compress", "none", NULL };
	struct rx_thread rx;
	struct pair p;

	pair_start(&p, &idle);
	rx_start_once(&rx, &p, NULL);
	migrate_and_kill(&p, rx.port, extra);
	rx_thread_join(&rx);
	ck_assert_int_eq(rx.rc, -EINPROGRESS);
	ck_assert_msg(strstr(rx.err.msg, "holds a whole copy of the guest and "
			     "stays paused"), "%s", rx.err.msg);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/* Kills the destination QEMU (@opaque) a second into precopy. */
static void kill_dst_in_precopy(const struct ferry_progress *pr, void *opaque)
{
	if (pr->phase == FERRY_PHASE_PRECOPY && pr->elapsed_ms > 1000 &&
	    vm_alive(opaque))
		vm_kill(opaque);
}

/* `ferry recover --state-dir @dir [--source-completed @id]`: its exit
 * status, its output in @out. */
static int run_recover(const char *dir, const char *id, char *out, size_t len)
{
	struct ferry_error err = { 0 };
	int rc = proc_recover(dir, id ? "--source-completed" : NULL, id, out, len, &err);

	ck_assert_msg(rc >= 0, "%s", err.msg);
	return rc;
}

/*
 * After a migration that QEMU completed without ferry: recover on the
 * source host proves the source completed and names the migration;
 * recover on the destination leaves the guest paused without that proof
 * (exit 3), and with it resumes the guest there, once. A second recover
 * has nothing left to do.
 */
static void recover_with_proof(struct pair *p, const char *src_state,
			       const char *dst_state)
{
	static const char cmd[] = "ferry recover --source-completed ";
	char out[4096], id[40];
	const char *at;

	expect_listed(src_state, "source", "needs-recover");
	expect_listed(dst_state, "destination", "needs-recover");
	ck_assert_int_eq(run_recover(src_state, NULL, out, sizeof(out)), 0);
	expect_listed(src_state, "source", "recovered");
	at = strstr(out, cmd);
	ck_assert_msg(strstr(out, "(source): the source QEMU completed its "
			     "migration") && at, "%s", out);
	snprintf(id, sizeof(id), "%.36s", at + strlen(cmd));
	expect_status(p->src, "postmigrate");
	ck_assert_int_eq(run_recover(dst_state, NULL, out, sizeof(out)), 3);
	ck_assert_msg(strstr(out, "it holds a whole copy, paused"), "%s", out);
	expect_status(p->dst, "paused");
	ck_assert_int_eq(run_recover(dst_state, id, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "(destination): the destination QEMU completed: "
			     "it holds the whole guest, which runs"), "%s", out);
	expect_guest_runs(p->dst, "destination");
	expect_status(p->src, "postmigrate");
	ck_assert_int_eq(run_recover(dst_state, NULL, out, sizeof(out)), 0);
	ck_assert_msg(!strstr(out, "migration "), "%s", out);
	expect_listed(dst_state, "destination", "recovered");
}

/* The same with journals on both sides, then recover. */
START_TEST(migrate_killed_handoff_recover)
{
	static const char *extra[] = { "--compress", "none", "--state-dir", NULL,
				       NULL };
	char src_state[64], dst_state[64];
	struct rx_thread rx;
	struct pair p;

	ck_assert_int_eq(tmpdir_make(src_state, sizeof(src_state),
				     "ferry-src-state"), 0);
	ck_assert_int_eq(tmpdir_make(dst_state, sizeof(dst_state),
				     "ferry-dst-state"), 0);
	extra[3] = src_state;
	pair_start(&p, &dirtying);
	rx_start_once(&rx, &p, dst_state);
	migrate_and_kill(&p, rx.port, extra);
	rx_thread_join(&rx);
	ck_assert_int_eq(rx.rc, -EINPROGRESS);
	expect_status(p.dst, "paused");
	recover_with_proof(&p, src_state, dst_state);
	pair_stop(&p);
	tmpdir_remove(src_state);
	tmpdir_remove(dst_state);
}
END_TEST

/* The source guest, running after a failed attempt, migrates to a new
 * destination: completed, RAM the same. */
static void retry_to_new_destination(struct pair *p)
{
	struct ferry_migrate_opts o = { .paused = true };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;

	pair_new_dst(p);
	ck_assert_msg(pair_migrate(p, &o, NULL, &rx, &rep, &err) == 0, "retry: %s",
		      err.msg);
	expect_status(p->dst, "paused");
	expect_same_ram(p);
}

/*
 * Through the tunnel: the stream dies with ferry; the source guest runs
 * on (its heartbeat goes on), and a new migration of it to a fresh
 * destination completes with the same RAM.
 */
START_TEST(migrate_killed_tunnel_source_runs)
{
	static const char *const extra[] = { "--compress", "none",
					     "--no-handoff", NULL };
	struct rx_thread rx;
	struct pair p;

	pair_start(&p, &idle);
	rx_start_once(&rx, &p, NULL);
	migrate_and_kill(&p, rx.port, extra);
	rx_thread_join(&rx);
	ck_assert_int_lt(rx.rc, 0);
	expect_source_alive(&p);

	retry_to_new_destination(&p);
	pair_stop(&p);
}
END_TEST

/*
 * The destination QEMU differs in what the pre-check cannot see (a
 * device's memory size): it fails while it loads the stream (and exits,
 * as QEMU 7.2 does). The error says the
 * destination failed, not the source; the source guest runs on; the
 * report keeps what the migration had done. Through the tunnel and with
 * hand-off.
 */
START_TEST(destination_rejects_state)
{
	/* The same devices (the pre-check passes), but video memory of
	 * another size: QEMU finds out only while it loads. */
	static const struct pair_opts vga = { .mem_mib = 64, .fill = "mix",
		.src_args = "-device VGA,id=vga0,vgamem_mb=16",
		.dst_args = "-device VGA,id=vga0,vgamem_mb=8" };
	struct ferry_migrate_opts o = { .codec = FERRY_CODEC_NONE,
					.no_handoff = _i == 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;

	pair_start(&p, &vga);
	ck_assert_int_lt(pair_migrate(&p, &o, NULL, &rx, &rep, &err), 0);
	ck_assert_msg(strstr(err.msg, "the destination failed: the destination "
			     "QEMU exited while it loaded the migration stream"),
		      "%s", err.msg);
	ck_assert(rep.source_running);
	ck_assert_str_eq(rep.status, "failed");
	ck_assert_uint_gt(rep.total_ms, 0);
	expect_source_alive(&p);
	pair_stop(&p);
}
END_TEST

/*
 * The receiver killed during precopy (hand-off, then the tunnel): the
 * switchover never started, so the source's ferry cancels and its guest
 * runs on, once; the exit status says the source runs (1); a new
 * migration of it completes.
 */
START_TEST(receiver_killed)
{
	/* Hand-off, then the tunnel. */
	static const char *const extra[2][4] = {
		{ "--compress", "none", NULL },
		{ "--compress", "none", "--no-handoff" },
	};
	struct ferry_error err = { 0 };
	uint16_t port = proc_free_port();
	struct pair p;
	pid_t rxp, mig;

	pair_start(&p, &idle);
	ck_assert_msg(proc_spawn_receiver(vm_qmp_path(p.dst), port, &rxp, &err) == 0,
		      "%s", err.msg);
	mig = spawn_migrate(&p, port, extra[_i]);
	kill(rxp, SIGKILL);
	proc_wait(rxp);
	ck_assert_int_eq(proc_wait(mig), 1);
	expect_source_alive(&p);
	retry_to_new_destination(&p);
	pair_stop(&p);
}
END_TEST

/*
 * The source QEMU killed during precopy: it held the only whole copy of
 * the guest, which is lost; the destination must not run a partial one.
 * The receiver fails (the stream ended unfinished) and its QEMU never
 * runs the guest.
 */
START_TEST(source_qemu_killed)
{
	/* Hand-off, then the tunnel. */
	static const char *const extra[2][4] = {
		{ "--compress", "none", NULL },
		{ "--compress", "none", "--no-handoff", NULL },
	};
	struct ferry_error err = { 0 };
	struct rx_thread rx;
	struct pair p;
	pid_t mig;

	pair_start(&p, &idle);
	rx_start_once(&rx, &p, NULL);
	mig = spawn_migrate(&p, rx.port, extra[_i]);
	vm_kill(p.src);
	ck_assert_int_eq(proc_wait(mig), 3);
	rx_thread_join(&rx);
	ck_assert_int_lt(rx.rc, 0);
	/* The destination never ran a partial guest (QEMU 7.2 exits, maybe
	 * while it is asked). */
	if (vm_alive(p.dst)) {
		char st[32] = "";

		if (vm_status(p.dst, st, sizeof(st), &err) == 0)
			ck_assert_str_ne(st, "running");
		else
			for (int i = 0; i < 100 && vm_alive(p.dst); i++)
				usleep(50 * 1000);
		ck_assert_msg(!vm_alive(p.dst) || strcmp(st, "running"),
			      "the destination runs a partial guest");
	}
	pair_stop(&p);
}
END_TEST

/*
 * Both ferry processes killed (SIGKILL) during hand-off precopy, as a
 * crash of both would: QEMU completes the migration by itself, and the
 * guest is down on both hosts (the source stopped, the destination
 * paused, nobody to resume it). `ferry recover` on the source host says
 * the destination holds the guest and leaves the source stopped; on the
 * destination host it resumes the guest there, once; a second recover
 * finds nothing left to do.
 */
START_TEST(both_killed_handoff_then_recover)
{
	struct ferry_error err = { 0 };
	char src_state[64], dst_state[64], listen[32];
	uint16_t port = proc_free_port();
	struct pair p;
	pid_t rxp;

	ck_assert_int_eq(tmpdir_make(src_state, sizeof(src_state),
				     "ferry-src-state"), 0);
	ck_assert_int_eq(tmpdir_make(dst_state, sizeof(dst_state),
				     "ferry-dst-state"), 0);
	pair_start(&p, &dirtying);
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
	{
		char *argv[] = { getenv("FERRY_BIN"), "receive", "--listen", listen,
				 "--qmp", (char *)vm_qmp_path(p.dst), "--once",
				 "--state-dir", dst_state, NULL };

		ck_assert_msg(proc_spawn(argv, NULL, &rxp, &err) == 0, "%s",
			      err.msg);
		ck_assert_msg(proc_wait_port(port, 5000, &err) == 0, "%s", err.msg);
	}
	{
		static const char *extra[] = { "--compress", "none", "--state-dir",
					       NULL, NULL };

		extra[3] = src_state;
		migrate_and_kill(&p, port, extra);
	}
	kill(rxp, SIGKILL);
	proc_wait(rxp);
	/* QEMU goes on alone: the destination completes, paused. */
	for (int i = 0; i < 600; i++) {
		struct mig_info info;

		if (mig_query(vm_qmp(p.dst), &info, NULL) == 0 &&
		    !mig_status_active(info.status))
			break;
		usleep(50 * 1000);
	}
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");

	recover_with_proof(&p, src_state, dst_state);
	pair_stop(&p);
	tmpdir_remove(src_state);
	tmpdir_remove(dst_state);
}
END_TEST

/*
 * The destination QEMU killed during precopy (through the tunnel and with
 * hand-off): the source still holds the whole guest, its ferry cancels,
 * and its guest runs on, once; the report says so.
 */
START_TEST(destination_qemu_killed)
{
	struct ferry_migrate_opts o = { .to_host = "127.0.0.1",
					.codec = FERRY_CODEC_NONE,
					.no_handoff = _i == 0,
					.max_bandwidth_bytes_per_s = 16u << 20,
					.progress = kill_dst_in_precopy,
					.progress_interval_ms = 50 };
	struct ferry_error err = { 0 };
	struct ferry_migration *m;
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;

	pair_start(&p, &idle);
	rx_start_once(&rx, &p, NULL);
	o.qmp_path = vm_qmp_path(p.src);
	o.to_port = rx.port;
	o.progress_opaque = p.dst;
	m = ferry_migration_new(&o, &err);
	ck_assert_int_lt(ferry_migration_run(m, &rep, &err), 0);
	ferry_migration_free(m);
	rx_thread_join(&rx);
	ck_assert(!vm_alive(p.dst));
	ck_assert_msg(rep.source_running, "%s", err.msg);
	expect_source_alive(&p);
	retry_to_new_destination(&p);
	pair_stop(&p);
}
END_TEST

static void cut_when_completing(const struct ferry_progress *pr, void *opaque)
{
	struct proxy *px = opaque;

	if (pr->phase == FERRY_PHASE_COMPLETING && !px->cuts)
		proxy_cut(px);
}

/*
 * Every connection between the two ferry processes breaks right after the
 * source QEMU completed, before FINISH (a network break in the completion
 * window). Neither side may resume the guest on its own: the source
 * stays stopped (exit-status 3 territory: not running), the destination
 * holds a whole copy, paused; their RAM is the same. Then recover, with
 * the source host's proof, runs the guest on the destination, once.
 */
START_TEST(cut_in_completion_window)
{
	struct ferry_migrate_opts o = { .to_host = "127.0.0.1",
					.codec = FERRY_CODEC_NONE, .no_handoff = true,
					.progress = cut_when_completing,
					.progress_interval_ms = 50 };
	char src_state[64], dst_state[64];
	struct ferry_error err = { 0 };
	struct ferry_migration *m;
	struct ferry_report rep;
	struct rx_thread rx;
	struct proxy px;
	struct pair p;

	ck_assert_int_eq(tmpdir_make(src_state, sizeof(src_state),
				     "ferry-src-state"), 0);
	ck_assert_int_eq(tmpdir_make(dst_state, sizeof(dst_state),
				     "ferry-dst-state"), 0);
	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "mix" });
	rx_start_once(&rx, &p, dst_state);
	ck_assert_int_eq(proxy_start(&px, rx.port), 0);
	o.qmp_path = vm_qmp_path(p.src);
	o.to_port = px.port;
	o.progress_opaque = &px;
	o.state_dir = src_state;
	m = ferry_migration_new(&o, &err);
	ck_assert_int_lt(ferry_migration_run(m, &rep, &err), 0);
	ferry_migration_free(m);
	ck_assert_int_eq(px.cuts, 1);
	ck_assert(!rep.source_running);
	rx_thread_join(&rx);
	ck_assert_int_lt(rx.rc, 0);
	proxy_stop(&px);
	/* Zero running copies, not two. */
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	recover_with_proof(&p, src_state, dst_state);
	pair_stop(&p);
	tmpdir_remove(src_state);
	tmpdir_remove(dst_state);
}
END_TEST

static Suite *crash_suite(void)
{
	Suite *s = suite_create("crash");
	TCase *tc = tcase_create("migrate_killed");

	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, migrate_killed_handoff);
	tcase_add_test(tc, migrate_killed_handoff_recover);
	tcase_add_test(tc, migrate_killed_tunnel_source_runs);
	tcase_add_loop_test(tc, destination_rejects_state, 0, 2);
	tcase_add_test(tc, both_killed_handoff_then_recover);
	tcase_add_loop_test(tc, receiver_killed, 0, 2);
	tcase_add_loop_test(tc, source_qemu_killed, 0, 2);
	tcase_add_test(tc, cut_in_completion_window);
	tcase_add_loop_test(tc, destination_qemu_killed, 0, 2);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(crash_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
