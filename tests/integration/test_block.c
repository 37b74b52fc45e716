/*
 * Block migration (--block) with real QEMU on both sides, verified on the
 * data: the destination image must equal the source image as of the
 * switchover (the source QEMU leaves it untouched afterwards), and guest
 * RAM must be equal too.
 *
 * The source disk changes during the migration: QEMU writes to it (HMP
 * qemu-io on the drive) from the progress callback, while the mirrors copy
 * and while memory streams, as a guest would. The callback runs in the
 * migration's own thread, so every write lands before ferry's next step,
 * in particular before it completes the mirrors at pre-switchover.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "ferry.h"
#include "qmp/qmp.h"
#include "tests/harness/blkpair.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

/* QEMU writes to its own disk (drive0), as the guest would. */
static void qemu_io(struct vm *vm, const char *cmd)
{
	struct ferry_error err = { 0 };
	char line[256];
	json_t *ret = NULL;
	const char *out;

	snprintf(line, sizeof(line), "qemu-io drive0 \"%s\"", cmd);
	ck_assert_msg(qmp_execute(vm_qmp(vm), "human-monitor-command",
				  json_pack("{s:s}", "command-line", line), &ret,
				  VM_QMP_TIMEOUT_MS, &err) == 0, "%s", err.msg);
	out = json_string_value(ret);
	/* qemu-io prints on QEMU's stdout; the monitor returns errors. */
	ck_assert_msg(out && !*out, "qemu-io %s: %s", cmd, out ? out : "?");
	json_decref(ret);
}

struct writer {
	struct vm *vm;
	uint64_t disk_bytes;
	uint32_t disk_writes, ram_writes;
	enum ferry_phase last;
};

static bool source_before_switchover(struct vm *vm)
{
	struct ferry_error err = { 0 };
	json_t *ret = NULL;
	const char *st;
	bool before;

	ck_assert_msg(qmp_execute(vm_qmp(vm), "query-migrate", NULL, &ret,
				  VM_QMP_TIMEOUT_MS, &err) == 0, "%s", err.msg);
	st = json_string_value(json_object_get(ret, "status"));
	before = st && (!strcmp(st, "setup") || !strcmp(st, "active") ||
			!strcmp(st, "pre-switchover"));
	json_decref(ret);
	return before;
}

/* Progress callback: writes while the disks mirror, and while RAM goes. */
static void write_during(const struct ferry_progress *p, void *opaque)
{
	struct writer *w = opaque;
	char cmd[128];
	uint32_t n = w->disk_writes + w->ram_writes;
	uint64_t off = ((uint64_t)n * 7919 * 65536 + 4096 * (n % 3)) %
		       (w->disk_bytes - 2 * MiB);

	if (p->postcopy || (p->phase != FERRY_PHASE_DISKS &&
			    p->phase != FERRY_PHASE_PRECOPY))
		return;
	/*
	 * Not once ferry has completed the mirrors: QEMU then moves on to
	 * "device" and inactivates the disk. Up to pre-switchover, ferry has
	 * not acted yet (it runs this callback).
	 */
	if (p->phase == FERRY_PHASE_PRECOPY && !source_before_switchover(w->vm))
		return;
	/* Unaligned, zero and pattern writes over the whole disk. */
	if (n % 5 == 4)
		snprintf(cmd, sizeof(cmd), "write -z %llu 256k",
			 (unsigned long long)off);
	else
		snprintf(cmd, sizeof(cmd), "write -P 0x%02x %llu %u",
			 (n * 37 + 1) & 0xff, (unsigned long long)off,
			 n % 2 ? 1536 * 1024 : 300000);
	qemu_io(w->vm, cmd);
	if (p->phase == FERRY_PHASE_DISKS)
		w->disk_writes++;
	else
		w->ram_writes++;
}

/* Raw to raw, background mirror, with writes in both phases. */
START_TEST(block_raw_with_writes)
{
	struct pair p;
	struct blkpair d;
	struct rx_thread rx;
	struct ferry_report rep;
	struct ferry_error err = { 0 };
	struct writer w = { .disk_bytes = 96 * MiB };
	struct ferry_migrate_opts o = {
		.progress = write_during, .progress_opaque = &w,
		.codec = FERRY_CODEC_LZ4,
		.max_bandwidth_bytes_per_s = 32 * MiB,	/* a few seconds */
	};

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 96 * MiB,
						      .data_mib = 64 });
	w.vm = p.src;
	ck_assert_msg(blkpair_migrate(&p, &o, &rep, &err, &rx) == 0, "%s", err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	ck_assert_uint_eq(rep.disks, 1);
	ck_assert_uint_eq(rep.disk_size_bytes, 96 * MiB);
	ck_assert_uint_gt(rep.disk_data_bytes, 40 * MiB);
	ck_assert_uint_gt(rep.disk_zero_bytes, 0);
	ck_assert_uint_eq(rx.rep.disk_data_bytes, rep.disk_data_bytes);
	ck_assert_uint_gt(w.disk_writes + w.ram_writes, 0);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_file(d.src_img, d.dst_img);
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/* Raw to qcow2 (through the destination QEMU's NBD export), write-blocking. */
START_TEST(block_qcow2_write_blocking)
{
	struct pair p;
	struct blkpair d;
	struct rx_thread rx;
	struct ferry_report rep;
	struct ferry_error err = { 0 };
	struct writer w = { .disk_bytes = 64 * MiB };
	struct ferry_migrate_opts o = {
		.progress = write_during, .progress_opaque = &w,
		.block = { .mode = FERRY_BLOCK_WRITE_BLOCKING },
	};
	char cmd[512];

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 64 * MiB,
						      .data_mib = 40,
						      .dst_fmt = "qcow2" });
	w.vm = p.src;
	ck_assert_msg(blkpair_migrate(&p, &o, &rep, &err, &rx) == 0, "%s", err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	ck_assert_uint_eq(rep.disks, 1);
	ck_assert_uint_gt(w.disk_writes + w.ram_writes, 0);
	expect_status(p.dst, "paused");
	/* -U: both QEMUs still have the images open. */
	snprintf(cmd, sizeof(cmd), "qemu-img compare -q -U -f raw -F qcow2 %s %s",
		 d.src_img, d.dst_img);
	expect_command_ok(cmd);
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/* A mostly empty 4 GiB disk: the zeroes travel as headers. */
START_TEST(block_sparse_4g)
{
	struct pair p;
	struct blkpair d;
	struct rx_thread rx;
	struct ferry_report rep;
	struct ferry_error err = { 0 };
	struct ferry_migrate_opts o = { .codec = FERRY_CODEC_NONE,
					.no_handoff = true };

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 4096 * MiB,
						      .data_mib = 8 });
	ck_assert_msg(blkpair_migrate(&p, &o, &rep, &err, &rx) == 0, "%s", err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	fprintf(stderr, "block_sparse_4g: 4096 MiB disk, %llu KiB data, %llu MiB "
		"zeroes, %llu KiB on the wire (%.3f%% of the disk)\n",
		(unsigned long long)(rep.disk_data_bytes >> 10),
		(unsigned long long)(rep.disk_zero_bytes >> 20),
		(unsigned long long)(rep.disk_wire_bytes >> 10),
		100.0 * (double)rep.disk_wire_bytes / (double)(4096 * MiB));
	/* 6 MiB of data in 8 MiB; everything else is zero. */
	ck_assert_uint_lt(rep.disk_wire_bytes, 16 * MiB);
	ck_assert_uint_ge(rep.disk_zero_bytes, 4000 * MiB);
	expect_same_file(d.src_img, d.dst_img);
	pair_stop(&p);
}
END_TEST

/* A read-only CD-ROM image is copied once, next to a writable disk. */
START_TEST(block_cdrom)
{
	struct pair p;
	struct blkpair d;
	struct rx_thread rx;
	struct ferry_report rep;
	struct ferry_error err = { 0 };
	struct ferry_migrate_opts o = { 0 };

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 32 * MiB,
						      .data_mib = 16,
						      .cdrom = true });
	ck_assert_msg(blkpair_migrate(&p, &o, &rep, &err, &rx) == 0, "%s", err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	ck_assert_uint_eq(rep.disks, 2);
	expect_same_file(d.iso, d.dst_iso);
	expect_same_file(d.src_img, d.dst_img);
	pair_stop(&p);
}
END_TEST

/* The destination disk is smaller: refused before any byte moves. */
START_TEST(block_precheck_size)
{
	struct pair p;
	struct blkpair d;
	struct rx_thread rx;
	struct ferry_report rep;
	struct ferry_error err = { 0 };
	struct ferry_migrate_opts o = { 0 };
	char copy[160];

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 32 * MiB,
						      .data_mib = 8,
						      .dst_size = 16 * MiB });
	snprintf(copy, sizeof(copy), "%s/before.raw", p.dir);
	blkpair_make_raw(copy, 32 * MiB, 8, 1);
	ck_assert_int_ne(blkpair_migrate(&p, &o, &rep, &err, &rx), 0);
	ck_assert_msg(strstr(err.msg, "vdisk0") && strstr(err.msg, "destination"),
		      "message: %s", err.msg);
	ck_assert(rep.source_running);
	ck_assert_uint_eq(rep.disk_data_bytes, 0);
	expect_source_alive(&p);
	expect_source_clean(p.src);
	expect_same_file(copy, d.src_img);
	pair_stop(&p);
}
END_TEST

struct killer {
	pid_t rx;
	bool killed;
};

static void kill_during_mirror(const struct ferry_progress *p, void *opaque)
{
	struct killer *k = opaque;

	if (!k->killed && p->phase == FERRY_PHASE_DISKS &&
	    p->disk_done_bytes > 8 * MiB) {
		kill(k->rx, SIGKILL);
		k->killed = true;
	}
}

/* The receiver dies while the disk mirrors: the source runs on, intact. */
START_TEST(block_receiver_dies)
{
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct ferry_migration *m;
	struct killer k = { 0 };
	uint16_t port = proc_free_port();
	struct ferry_migrate_opts o = {
		.to_host = "127.0.0.1", .to_port = port, .paused = true,
		.progress = kill_during_mirror, .progress_opaque = &k,
		.progress_interval_ms = 50,
		.max_bandwidth_bytes_per_s = 16 * MiB,	/* several seconds */
		.block = { .enabled = true },
	};
	struct pair p;
	struct blkpair d;
	char copy[160];

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 128 * MiB,
						      .data_mib = 128 });
	snprintf(copy, sizeof(copy), "%s/before.raw", p.dir);
	blkpair_make_raw(copy, 128 * MiB, 128, 1);
	/* The killed receiver cannot clean up: its socket directory goes
	 * into the test's own directory. */
	setenv("TMPDIR", p.dir, 1);
	ck_assert_msg(proc_spawn_receiver(vm_qmp_path(p.dst), port, &k.rx, &err) == 0,
		      "%s", err.msg);
	unsetenv("TMPDIR");
	o.qmp_path = vm_qmp_path(p.src);
	m = ferry_migration_new(&o, &err);
	ck_assert_ptr_nonnull(m);
	ck_assert_int_ne(ferry_migration_run(m, &rep, &err), 0);
	ferry_migration_free(m);
	proc_wait(k.rx);
	ck_assert_msg(k.killed, "the mirror finished before the receiver was "
		      "killed: %s", err.msg);
	ck_assert(rep.source_running);
	expect_source_alive(&p);
	expect_source_clean(p.src);
	expect_same_file(copy, d.src_img);
	pair_stop(&p);
}
END_TEST

/*
 * `ferry migrate --block` killed (SIGKILL) while QEMU mirrors: the source
 * guest runs on its untouched disk, and what the dead ferry left in the
 * source QEMU (its mirror job, its NBD node) is cleared by the next
 * attempt, which migrates the guest without anybody touching QMP: disks
 * byte-identical, RAM the same. (Its socket directory is younger than the
 * minute after which a retry removes one, and goes with the test's.)
 */
START_TEST(block_migrate_killed_then_retry)
{
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;
	struct blkpair d;
	uint16_t port = proc_free_port();
	char to[32], copy[160];
	char *argv[] = { getenv("FERRY_BIN"), "migrate", "--qmp", NULL, "--to",
			 to, "--block", "--bandwidth", "8", "--quiet", NULL };
	struct ferry_migrate_opts o = { 0 };
	pid_t rxp, mig;

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 96 * MiB,
						      .data_mib = 64 });
	snprintf(copy, sizeof(copy), "%s/before.raw", p.dir);
	blkpair_make_raw(copy, 96 * MiB, 64, 1);
	snprintf(to, sizeof(to), "127.0.0.1:%u", port);
	argv[3] = (char *)vm_qmp_path(p.src);
	/* The killed ferry's socket directory goes into the test's own. */
	setenv("TMPDIR", p.dir, 1);
	ck_assert_msg(proc_spawn_receiver(vm_qmp_path(p.dst), port, &rxp, &err) == 0,
		      "%s", err.msg);
	ck_assert_msg(proc_spawn(argv, NULL, &mig, &err) == 0, "%s", err.msg);
	for (int i = 0; i < 1500 && !blkpair_mirror_running(p.src); i++)
		usleep(20 * 1000);
	ck_assert_msg(blkpair_mirror_running(p.src), "the mirror never started");
	usleep(500 * 1000);
	kill(mig, SIGKILL);
	ck_assert_int_eq(proc_wait(mig), 128 + SIGKILL);
	kill(rxp, SIGTERM);
	proc_wait(rxp);
	expect_source_alive(&p);
	expect_same_file(copy, d.src_img);

	/* The retry: ferry clears the leftovers by itself. */
	ck_assert_int_eq(blkpair_migrate(&p, &o, &rep, &err, &rx), 0);
	unsetenv("TMPDIR");
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	expect_same_file(d.src_img, d.dst_img);
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/*
 * --direct with --block and two streams: QEMU's own stream carries the
 * memory on one connection, ferry's disk tunnel the disks on two.
 */
START_TEST(block_direct)
{
	struct pair p;
	struct blkpair d;
	struct rx_thread rx;
	struct ferry_report rep;
	struct ferry_error err = { 0 };
	struct ferry_migrate_opts o = { .direct = true, .streams = 2 };

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 96 * MiB,
						      .data_mib = 32 });
	ck_assert_msg(blkpair_migrate(&p, &o, &rep, &err, &rx) == 0, "%s", err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	ck_assert_str_eq(rep.transport, "direct");
	expect_same_file(d.src_img, d.dst_img);
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/*
 * One --bandwidth for memory and disks where QEMU paces the memory
 * (--direct, hand-off): the disk tunnel takes from the migration's pacer
 * as well, so the mirrors copy at the cap, not at loopback speed. An
 * upper bound only: a slow machine can only make the rate lower. The
 * bucket starts empty, and nothing writes during the memory phase, so
 * nearly all the disk bytes cross while the mirrors copy.
 */
static void block_capped(bool direct, const char *transport)
{
	const uint64_t cap = 24 * MiB;
	struct pair p;
	struct blkpair d;
	struct rx_thread rx;
	struct ferry_report rep;
	struct ferry_error err = { 0 };
	struct ferry_migrate_opts o = { .direct = direct,
					.codec = FERRY_CODEC_NONE,
					.max_bandwidth_bytes_per_s = cap };
	uint64_t rate;

	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 64 * MiB,
						      .data_mib = 32 });
	ck_assert_msg(blkpair_migrate(&p, &o, &rep, &err, &rx) == 0, "%s", err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	ck_assert_str_eq(rep.transport, transport);
	ck_assert_uint_gt(rep.disk_data_bytes, 16 * MiB);
	ck_assert_uint_gt(rep.disk_mirror_ms, 0);
	rate = rep.disk_wire_bytes * 1000 / rep.disk_mirror_ms;
	ck_assert_msg(rate <= cap + cap / 10, "the disks crossed at %llu bytes/s "
		      "with a cap of %llu", (unsigned long long)rate,
		      (unsigned long long)cap);
	expect_same_file(d.src_img, d.dst_img);
	expect_same_ram(&p);
	pair_stop(&p);
}

START_TEST(block_capped_direct)
{
	block_capped(true, "direct");
}
END_TEST

START_TEST(block_capped_handoff)
{
	block_capped(false, "handoff");
}
END_TEST

/*
 * Cold migration with a disk (Nova's `nova migrate`): the running guest
 * is paused first and moves stopped, its disk with it; written before,
 * the image arrives byte for byte, RAM the same, and the journal says
 * what kind of migration it was.
 */
START_TEST(block_cold)
{
	struct pair p;
	struct blkpair d;
	struct rx_thread rx;
	struct ferry_report rep;
	struct ferry_error err = { 0 };
	struct ferry_migrate_opts o = { .cold = true };
	char state[64], *json;
	json_t *all;
	uint64_t beats;

	ck_assert_int_eq(tmpdir_make(state, sizeof(state), "ferry-state"), 0);
	blkpair_start(&p, &d, &(struct blkpair_opts){ .size = 64 * MiB,
						      .data_mib = 32 });
	qemu_io(p.src, "write -P 0x5a 1048576 65536");
	o.state_dir = state;
	beats = vm_heartbeats(p.src);
	ck_assert_msg(blkpair_migrate(&p, &o, &rep, &err, &rx) == 0, "%s", err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	/* Stopped throughout: at most the beats of the moments before it
	 * paused (10 ms each; the migration takes seconds). */
	ck_assert_msg(vm_heartbeats(p.src) <= beats + 25, "the source beat %llu "
		      "times during a cold migration of %llu ms",
		      (unsigned long long)(vm_heartbeats(p.src) - beats),
		      (unsigned long long)rep.total_ms);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_file(d.src_img, d.dst_img);
	expect_same_ram(&p);
	/* Its downtime is the whole run, and no limit was broken. */
	ck_assert_uint_eq(rep.downtime_ms, rep.total_ms);
	ck_assert(!rep.downtime_exceeded);
	ck_assert_int_eq(ferry_list_json(state, &json, &err), 0);
	all = json_loads(json, 0, NULL);
	free(json);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(all, 0),
							   "type")), "cold+disks");
	json_decref(all);
	pair_stop(&p);
	tmpdir_remove(state);
}
END_TEST

/* One case per test: CK_RUN_CASE=name runs one. */
static void add(Suite *s, const char *name, const TTest *t)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}

int main(void)
{
	Suite *s = suite_create("block");
	SRunner *sr;
	int failed;

	add(s, "raw_with_writes", block_raw_with_writes);
	add(s, "direct", block_direct);
	add(s, "capped_direct", block_capped_direct);
	add(s, "capped_handoff", block_capped_handoff);
	add(s, "cold", block_cold);
	add(s, "qcow2_write_blocking", block_qcow2_write_blocking);
	add(s, "sparse_4g", block_sparse_4g);
	add(s, "cdrom", block_cdrom);
	add(s, "precheck_size", block_precheck_size);
	add(s, "receiver_dies", block_receiver_dies);
	add(s, "migrate_killed_then_retry", block_migrate_killed_then_retry);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
