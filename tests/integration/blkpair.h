/*
 * A source VM with a disk (and a destination waiting for it), for the
 * block migration tests, and the checks that follow one: disks byte for
 * byte, RAM, no trace of ferry left in the source QEMU. Each test file
 * includes it once.
 */
#ifndef FERRY_TESTS_BLKPAIR_H
#define FERRY_TESTS_BLKPAIR_H

#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry.h"
#include "qmp/qmp.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

#define MiB (1ull << 20)
#define TEST_MEM_MIB 64
#define READY_TIMEOUT_MS 60000
#define QMP_MS 10000

struct bpair {
	struct vm *src, *dst;
	char dir[64];
	char src_img[128], dst_img[128], iso[128], dst_iso[128];
	/* The destination's make, for bpair_new_dst(). */
	char dargs[1024], dst_fmt[8];
	uint64_t dst_size;
};

/* A raw image of @size with data in the first @data_mib MiB (a pattern
 * with a hole in the middle), the rest a hole. */
static __attribute__((unused)) void make_raw(const char *path, uint64_t size, uint32_t data_mib,
		     uint32_t seed)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	uint8_t *buf = malloc(MiB);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
	for (uint32_t m = 0; m < data_mib; m++) {
		if (m % 4 == 2)
			continue;	/* holes among the data */
		for (uint32_t i = 0; i < MiB; i += 4) {
			uint32_t v = (m * 2654435761u) ^ (i * 40503u) ^ seed;

			memcpy(buf + i, &v, 4);
		}
		ck_assert_int_eq(pwrite(fd, buf, MiB, (off_t)m * MiB), (ssize_t)MiB);
	}
	free(buf);
	close(fd);
}

static __attribute__((unused)) void run_cmd(const char *cmd)
{
	int rc = system(cmd);

	ck_assert_msg(rc == 0, "'%s' exited with %d", cmd, rc);
}

/*
 * Source and destination VMs with disk "vdisk0" (raw on the source;
 * @dst_fmt on the destination) of @size, and with @cdrom an ISO as IDE
 * CD-ROM "cd0" on both sides (the destination's blank, same size).
 */
static __attribute__((unused)) void bpair_start(struct bpair *p, uint64_t size, uint32_t data_mib,
			const char *dst_fmt, bool cdrom, uint64_t dst_size)
{
	struct vm_config sc = { .mem_mib = TEST_MEM_MIB, .fill = "mix" };
	struct vm_config dc = sc;
	struct ferry_error err = { 0 };
	char sargs[1024], cmd[512], cd[2][300] = { "", "" };
	char *dargs = p->dargs;

	ck_assert_int_eq(tmpdir_make(p->dir, sizeof(p->dir), "ferry-block"), 0);
	snprintf(p->src_img, sizeof(p->src_img), "%s/src.raw", p->dir);
	snprintf(p->dst_img, sizeof(p->dst_img), "%s/dst.%s", p->dir, dst_fmt);
	make_raw(p->src_img, size, data_mib, 1);
	if (!strcmp(dst_fmt, "raw")) {
		make_raw(p->dst_img, dst_size, 0, 0);
	} else {
		snprintf(cmd, sizeof(cmd), "qemu-img create -q -f %s %s %llu",
			 dst_fmt, p->dst_img, (unsigned long long)dst_size);
		run_cmd(cmd);
	}
	if (cdrom) {
		snprintf(p->iso, sizeof(p->iso), "%s/config.iso", p->dir);
		snprintf(p->dst_iso, sizeof(p->dst_iso), "%s/dst-config.iso", p->dir);
		make_raw(p->iso, 6 * MiB, 6, 7);
		make_raw(p->dst_iso, 6 * MiB, 0, 0);
		snprintf(cd[0], sizeof(cd[0]), " -drive if=none,id=cdrive,format=raw,"
			 "media=cdrom,readonly=on,file=%s -device ide-cd,drive=cdrive,"
			 "id=cd0", p->iso);
		snprintf(cd[1], sizeof(cd[1]), " -drive if=none,id=cdrive,format=raw,"
			 "media=cdrom,readonly=on,file=%s -device ide-cd,drive=cdrive,"
			 "id=cd0", p->dst_iso);
	}
	snprintf(sargs, sizeof(sargs), "-drive if=none,id=drive0,format=raw,"
		 "file=%s -device virtio-blk-pci,drive=drive0,id=vdisk0%s",
		 p->src_img, cd[0]);
	snprintf(p->dst_fmt, sizeof(p->dst_fmt), "%s", dst_fmt);
	p->dst_size = dst_size;
	snprintf(dargs, sizeof(p->dargs), "-drive if=none,id=drive0,format=%s,"
		 "file=%s -device virtio-blk-pci,drive=drive0,id=vdisk0%s",
		 dst_fmt, p->dst_img, cd[1]);
	sc.extra_args = sargs;
	dc.extra_args = dargs;
	dc.incoming = true;
	dc.prealloc = true;
	ck_assert_msg(vm_start(&p->src, &sc, &err) == 0, "source: %s", err.msg);
	ck_assert_msg(vm_start(&p->dst, &dc, &err) == 0, "destination: %s", err.msg);
	ck_assert_msg(vm_wait_ready(p->src, READY_TIMEOUT_MS, &err) == 0,
		      "guest not ready: %s", err.msg);
}

/* A new destination QEMU, with a new (blank raw) image, for a retry. */
static __attribute__((unused)) void bpair_new_dst(struct bpair *p)
{
	struct vm_config dc = { .mem_mib = TEST_MEM_MIB, .fill = "mix",
				.incoming = true, .prealloc = true,
				.extra_args = p->dargs };
	struct ferry_error err = { 0 };

	ck_assert_str_eq(p->dst_fmt, "raw");
	vm_stop(p->dst);
	make_raw(p->dst_img, p->dst_size, 0, 0);
	ck_assert_msg(vm_start(&p->dst, &dc, &err) == 0, "destination: %s", err.msg);
}

static __attribute__((unused)) void bpair_stop(struct bpair *p)
{
	vm_stop(p->src);
	vm_stop(p->dst);
	tmpdir_remove(p->dir);
}

static __attribute__((unused)) void expect_status(struct vm *vm, const char *want)
{
	struct ferry_error err = { 0 };
	char st[32];

	ck_assert_msg(vm_status_settled(vm, st, sizeof(st), &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(!strcmp(st, want), "VM is '%s', expected '%s'", st, want);
}

static __attribute__((unused)) void expect_same_ram(struct bpair *p)
{
	struct ferry_error err = { 0 };
	char a[128], b[128];
	uint64_t diff = 0;

	snprintf(a, sizeof(a), "%s/src.ram", p->dir);
	snprintf(b, sizeof(b), "%s/dst.ram", p->dir);
	ck_assert_msg(vm_pmemsave(p->src, a, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_pmemsave(p->dst, b, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_files_equal(a, b, &diff, &err) == 1,
		      "guest RAM differs at byte %llu", (unsigned long long)diff);
	unlink(a);
	unlink(b);
}

static __attribute__((unused)) void expect_same_file(const char *a, const char *b)
{
	struct ferry_error err = { 0 };
	uint64_t diff = 0;
	int eq = vm_files_equal(a, b, &diff, &err);

	ck_assert_msg(eq >= 0, "%s", err.msg);
	ck_assert_msg(eq == 1, "%s and %s differ at byte %llu", a, b,
		      (unsigned long long)diff);
}

/* No trace of ferry on the source QEMU: no job, no NBD node. */
static __attribute__((unused)) void expect_source_clean(struct vm *vm)
{
	struct ferry_error err = { 0 };
	json_t *ret = NULL, *n;
	size_t i;

	ck_assert_int_eq(qmp_execute(vm_qmp(vm), "query-block-jobs", NULL, &ret,
				     QMP_MS, &err), 0);
	ck_assert_uint_eq(json_array_size(ret), 0);
	json_decref(ret);
	ck_assert_int_eq(qmp_execute(vm_qmp(vm), "query-named-block-nodes",
				     json_pack("{s:b}", "flat", 1), &ret, QMP_MS,
				     &err), 0);
	json_array_foreach(ret, i, n) {
		const char *name = json_string_value(json_object_get(n, "node-name"));

		ck_assert_msg(!name || strncmp(name, "ferry-", 6),
			      "node %s left on the source", name);
	}
	json_decref(ret);
}

static __attribute__((unused)) void expect_source_alive(struct bpair *p)
{
	struct ferry_error err = { 0 };

	expect_status(p->src, "running");
	ck_assert_msg(vm_wait_heartbeats(p->src, 5, 10000, &err) == 0,
		      "source guest stopped beating: %s", err.msg);
}

/* Whether the source QEMU has ferry's mirror job for vdisk0. */
static __attribute__((unused)) bool mirror_running(struct vm *vm)
{
	json_t *ret = NULL, *job;
	bool found = false;
	size_t i;

	if (qmp_execute(vm_qmp(vm), "query-block-jobs", NULL, &ret, QMP_MS,
			NULL) < 0)
		return false;
	json_array_foreach(ret, i, job)
		found |= !strcmp(json_string_value(json_object_get(job, "device")) ?:
				 "", "ferry-mirror-vdisk0");
	json_decref(ret);
	return found;
}

/* Migrate with the library; returns ferry_migration_run()'s result. */
static __attribute__((unused)) int migrate(struct bpair *p, struct ferry_migrate_opts *o,
		   struct ferry_report *rep, struct ferry_error *err,
		   struct rx_thread *rx)
{
	struct ferry_receiver_opts ro = { .listen_host = "127.0.0.1",
					  .qmp_path = vm_qmp_path(p->dst),
					  .once = true };
	struct ferry_migration *m;
	int rc;

	ck_assert_msg(rx_thread_start(rx, &ro, NULL, err) == 0, "receiver: %s",
		      err->msg);
	o->qmp_path = vm_qmp_path(p->src);
	o->to_host = "127.0.0.1";
	o->to_port = rx->port;
	o->paused = true;
	o->progress_interval_ms = o->progress_interval_ms ?
				  o->progress_interval_ms : 100;
	o->block.enabled = true;
	m = ferry_migration_new(o, err);
	ck_assert_msg(m, "%s", err->msg);
	rc = ferry_migration_run(m, rep, err);
	ferry_migration_free(m);
	/* A migration refused before READY does not end a --once receiver. */
	if (rc)
		rx_thread_stop(rx);
	rx_thread_join(rx);
	return rc;
}

#endif /* FERRY_TESTS_BLKPAIR_H */
