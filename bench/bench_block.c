/*
 * Block migration benchmark: a guest with a 4 GiB local disk moves with its
 * disk, through ferry (--block) and the libvirt way, side by side in one
 * run, on loopback or over the emulated link.
 *
 * Modes (-M, comma-separated):
 *   libvirt      what libvirt does for `virsh migrate --copy-storage-all`
 *                (Nova's --block-migrate): the destination QEMU serves its
 *                disk over NBD on TCP (nbd-server-start, block-export-add),
 *                the source QEMU mirrors into it (blockdev-add nbd,
 *                blockdev-mirror), RAM migrates over QEMU's own TCP once
 *                the mirror is ready; at pre-switchover the mirror is
 *                completed, then the switchover goes on
 *   ferry        ferry migrate --block, auto codec
 *   ferry-none   ferry migrate --block, no codec
 *   ferry-cold   ferry migrate --block --cold, auto codec: the guest is
 *                paused first and moves stopped (Nova's `nova migrate`),
 *                no dirty tracking; its downtime is the whole run
 * Both orderings are the same (RAM after ready, mirrors completed at
 * pre-switchover); the difference is the path of the disk's bytes.
 *
 * The disk (-s GIB, 4 by default) is a raw image with a realistic mix per
 * MiB: 40% never written (holes), 35% text-like (compressible), 25%
 * random. It is made once; every run gets fresh VMs and an empty
 * destination image, and the destination image is compared with the
 * source byte for byte afterwards. Modes alternate within each repeat.
 *
 * usage: bench_block [-s GIB] [-n REPEATS] [-M modes] [-N loopback|link]
 *                    [-R MBIT] [-o BASENAME]
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/mig.h"
#include "common/util.h"
#include "ferry.h"
#include "tests/harness/link.h"
#include "tests/harness/proc.h"
#include "tests/harness/rx.h"
#include "tests/harness/stats.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

#define MiB (1ull << 20)
#define BENCH_MAX_REPEATS 20
#define BENCH_MAX_MODES 4
#define BENCH_READY_TIMEOUT_MS 120000
#define BENCH_TIMEOUT_MS 900000
#define BENCH_POLL_MS 20
#define BENCH_MEM_MIB 128

struct bench {
	uint32_t disk_gib, repeats, link_mbit;
	bool link;
	const char *dst_host;
	char dir[64], src_img[128], dst_img[128];
};

struct run {
	uint64_t total_ms, wire_bytes, downtime_ms;
	bool ok;
};

static struct bench *g_bench;

static void cleanup(void)
{
	link_down();
	if (g_bench && g_bench->dir[0])
		tmpdir_remove(g_bench->dir);
}

static void on_signal(int sig)
{
	(void)sig;
	exit(130);	/* atexit: namespace, scratch directory */
}

/* ---- the disk ---- */

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fill_text(uint8_t *p, size_t n, uint64_t *s)
{
	static const char *const words[] = {
		"migration ", "guest ", "memory ", "the ", "disk ", "block ",
		"ferry ", "of ", "QEMU ", "page ", "dirty ", "\n", "and ",
		"network ", "to ", "host ",
	};
	size_t at = 0;

	while (at < n) {
		const char *w = words[xorshift(s) % 16];
		size_t l = strlen(w);

		memcpy(p + at, w, at + l <= n ? l : n - at);
		at += l;
	}
}

static int make_disk(const char *path, uint64_t bytes)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	uint8_t *buf = malloc(MiB);
	uint64_t s = 0x9e3779b97f4a7c15ull;
	int rc = 0;

	if (fd < 0 || !buf || ftruncate(fd, (off_t)bytes) < 0) {
		rc = -errno;
		goto out;
	}
	for (uint64_t m = 0; m < bytes / MiB; m++) {
		uint64_t kind = xorshift(&s) % 100;

		if (kind < 40)
			continue;	/* a hole */
		if (kind < 75)
			fill_text(buf, MiB, &s);
		else
			for (size_t i = 0; i < MiB; i += 8) {
				uint64_t v = xorshift(&s);

				memcpy(buf + i, &v, 8);
			}
		if (pwrite(fd, buf, MiB, (off_t)(m * MiB)) != (ssize_t)MiB) {
			rc = -EIO;
			goto out;
		}
	}
	fsync(fd);
out:
	free(buf);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---- the libvirt way ---- */

static int qcmd(struct vm *vm, const char *cmd, json_t *args, json_t **ret,
		struct ferry_error *err)
{
	int rc = qmp_execute(vm_qmp(vm), cmd, args, ret, 30000, err);

	return rc < 0 ? ferry_error_prefix(err, "%s: ", cmd) : 0;
}

static int query_status(struct vm *vm, char *st, size_t len,
			struct ferry_error *err)
{
	json_t *ret = NULL;
	int rc = qcmd(vm, "query-migrate", NULL, &ret, err);

	if (rc == 0)
		snprintf(st, len, "%s", json_string_value(json_object_get(ret,
							      "status")) ?: "none");
	json_decref(ret);
	return rc;
}

static int mirror_ready(struct vm *src, bool *ready, bool *gone,
			struct ferry_error *err)
{
	json_t *ret = NULL;
	int rc = qcmd(src, "query-block-jobs", NULL, &ret, err);

	if (rc == 0) {
		*gone = json_array_size(ret) == 0;
		*ready = !*gone && json_is_true(json_object_get(
				json_array_get(ret, 0), "ready"));
	}
	json_decref(ret);
	return rc;
}

static int run_libvirt(struct bench *b, struct vm *src, struct vm *dst,
		       struct run *res, struct ferry_error *err)
{
	uint16_t nbd_port = proc_free_port(), mig_port = proc_free_port();
	char port[8], uri[64], st[32] = "";
	uint64_t t0 = ferry_now_ms(), deadline = t0 + BENCH_TIMEOUT_MS;
	bool ready = false, gone = false, completed = false;
	json_t *caps;
	int rc;

	snprintf(port, sizeof(port), "%u", nbd_port);
	caps = json_pack("{s:[{s:s,s:b}]}", "capabilities", "capability",
			 "pause-before-switchover", "state", 1);
	rc = qcmd(src, "migrate-set-capabilities", caps, NULL, err);
	if (rc == 0)
		rc = qcmd(src, "migrate-set-parameters",
			  json_pack("{s:I}", "max-bandwidth",
				    (json_int_t)MIG_BANDWIDTH_UNLIMITED), NULL, err);
	if (rc == 0)
		rc = qcmd(dst, "nbd-server-start",
			  json_pack("{s:{s:s,s:{s:s,s:s}}}", "addr", "type", "inet",
				    "data", "host", b->dst_host, "port", port),
			  NULL, err);
	if (rc == 0)
		rc = qcmd(dst, "block-export-add",
			  json_pack("{s:s,s:s,s:s,s:b,s:s}", "type", "nbd", "id",
				    "e0", "node-name", "disk0", "writable", 1,
				    "name", "vdisk0"), NULL, err);
	if (rc == 0)
		rc = qcmd(src, "blockdev-add",
			  json_pack("{s:s,s:s,s:{s:s,s:s,s:s},s:s}", "driver", "nbd",
				    "node-name", "tgt", "server", "type", "inet",
				    "host", b->dst_host, "port", port, "export",
				    "vdisk0"), NULL, err);
	if (rc == 0)
		rc = qcmd(src, "blockdev-mirror",
			  json_pack("{s:s,s:s,s:s,s:s}", "job-id", "m0", "device",
				    "disk0", "target", "tgt", "sync", "full"),
			  NULL, err);
	while (rc == 0 && !ready && !gone && ferry_now_ms() < deadline) {
		usleep(BENCH_POLL_MS * 1000);
		rc = mirror_ready(src, &ready, &gone, err);
	}
	if (rc == 0 && !ready)
		rc = ferry_error_set(err, -EIO, "the mirror never got ready");
	snprintf(uri, sizeof(uri), "tcp:%s:%u", b->dst_host, mig_port);
	if (rc == 0)
		rc = qcmd(dst, "migrate-incoming", json_pack("{s:s}", "uri", uri),
			  NULL, err);
	if (rc == 0)
		rc = qcmd(src, "migrate", json_pack("{s:s}", "uri", uri), NULL, err);
	while (rc == 0 && !completed && ferry_now_ms() < deadline) {
		usleep(BENCH_POLL_MS * 1000);
		rc = query_status(src, st, sizeof(st), err);
		if (rc == 0 && !strcmp(st, "pre-switchover")) {
			rc = qcmd(src, "block-job-cancel",
				  json_pack("{s:s}", "device", "m0"), NULL, err);
			gone = false;
			while (rc == 0 && !gone)
				rc = mirror_ready(src, &ready, &gone, err);
			if (rc == 0)
				rc = qcmd(src, "migrate-continue",
					  json_pack("{s:s}", "state",
						    "pre-switchover"), NULL, err);
		}
		if (rc == 0 && !mig_status_active(st) && strcmp(st, "pre-switchover"))
			completed = true;
	}
	/* The destination has loaded the guest. */
	while (rc == 0 && completed && ferry_now_ms() < deadline) {
		rc = query_status(dst, st, sizeof(st), err);
		if (rc < 0 || !mig_status_active(st))
			break;
		usleep(BENCH_POLL_MS * 1000);
	}
	if (rc == 0 && strcmp(st, "completed"))
		rc = ferry_error_set(err, -EIO, "migration ended '%s'", st);
	res->total_ms = ferry_now_ms() - t0;
	return rc;
}

/* ---- ferry ---- */

static int run_ferry(struct bench *b, enum ferry_codec codec, bool cold,
		     struct vm *src, struct vm *dst, struct run *res,
		     struct ferry_error *err)
{
	struct ferry_receiver_opts ro = {
		.listen_host = b->dst_host, .qmp_path = vm_qmp_path(dst),
		.once = true,
		.tls = { .insecure = true },	/* the emulated link is ours */
	};
	struct rx_thread rx;
	struct ferry_migrate_opts mo = {
		.qmp_path = vm_qmp_path(src), .to_host = b->dst_host,
		.paused = true, .codec = codec, .cold = cold,
		.block = { .enabled = true },
	};
	struct ferry_migration *mig;
	struct ferry_report rep;
	int rc;

	mo.tls.insecure = true;
	rc = rx_thread_start(&rx, &ro, b->link ? LINK_NETNS : NULL, err);
	if (rc < 0)
		return rc;
	mo.to_port = rx.port;
	mig = ferry_migration_new(&mo, err);
	rc = mig ? ferry_migration_run(mig, &rep, err) : -EINVAL;
	ferry_migration_free(mig);
	if (rc)
		rx_thread_stop(&rx);
	rx_thread_join(&rx);
	if (rc == 0 && rx.rc) {
		*err = rx.err;
		rc = rx.rc;
	}
	if (rc)
		return rc;
	res->total_ms = rep.total_ms;
	res->downtime_ms = rep.downtime_ms;
	res->wire_bytes = rep.wire_bytes + rep.disk_wire_bytes;
	return 0;
}

/* ---- runs ---- */

static int one_run(struct bench *b, const char *mode, struct run *res,
		   struct ferry_error *err)
{
	struct vm_config sc = { .mem_mib = BENCH_MEM_MIB, .fill = "mix" };
	struct vm_config dc = sc;
	struct vm *src = NULL, *dst = NULL;
	char sargs[512], dargs[512];
	uint64_t diff = 0, l0;
	int fd, rc;

	memset(res, 0, sizeof(*res));
	fd = open(b->dst_img, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)b->disk_gib << 30) < 0)
		return ferry_error_set(err, -errno, "%s: %s", b->dst_img,
				       strerror(errno));
	close(fd);
	/* -blockdev with node names: both ways address the disk alike. */
	snprintf(sargs, sizeof(sargs), "-blockdev driver=file,filename=%s,"
		 "node-name=file0 -blockdev driver=raw,file=file0,node-name=disk0 "
		 "-device virtio-blk-pci,drive=disk0,id=vdisk0", b->src_img);
	snprintf(dargs, sizeof(dargs), "-blockdev driver=file,filename=%s,"
		 "node-name=file0 -blockdev driver=raw,file=file0,node-name=disk0 "
		 "-device virtio-blk-pci,drive=disk0,id=vdisk0", b->dst_img);
	sc.extra_args = sargs;
	dc.extra_args = dargs;
	dc.incoming = dc.prealloc = true;
	if (b->link)
		dc.netns = LINK_NETNS;
	rc = vm_start(&src, &sc, err);
	if (rc == 0)
		rc = vm_start(&dst, &dc, err);
	if (rc == 0)
		rc = vm_wait_ready(src, BENCH_READY_TIMEOUT_MS, err);
	if (rc == 0 && (vm_qmp_connect(src, err) || vm_qmp_connect(dst, err)))
		rc = -EIO;
	if (rc < 0)
		goto out;
	l0 = link_bytes();
	if (!strcmp(mode, "libvirt"))
		rc = run_libvirt(b, src, dst, res, err);
	else
		rc = run_ferry(b, strcmp(mode, "ferry-none") ? FERRY_CODEC_AUTO :
			       FERRY_CODEC_NONE, !strcmp(mode, "ferry-cold"), src,
			       dst, res, err);
	if (b->link && rc == 0)
		res->wire_bytes = link_bytes() - l0;
	if (rc < 0)
		goto out;
	rc = vm_files_equal(b->src_img, b->dst_img, &diff, err);
	if (rc == 0)
		rc = ferry_error_set(err, -EIO, "%s: the destination disk differs "
				     "at byte %llu", mode, (unsigned long long)diff);
	res->ok = rc == 1;
	rc = rc == 1 ? 0 : rc;
out:
	vm_stop(src);
	vm_stop(dst);
	return rc;
}

int main(int argc, char **argv)
{
	static struct bench b = { .disk_gib = 4, .repeats = 3, .link_mbit = 1000,
				  .dst_host = "127.0.0.1" };
	const char *modes_arg = "libvirt,ferry", *out_base = NULL;
	char *modes[BENCH_MAX_MODES], modes_buf[128];
	uint64_t totals[BENCH_MAX_MODES][BENCH_MAX_REPEATS];
	uint64_t wires[BENCH_MAX_MODES][BENCH_MAX_REPEATS];
	uint64_t downs[BENCH_MAX_MODES][BENCH_MAX_REPEATS];
	uint32_t nm = 0, got[BENCH_MAX_MODES] = { 0 };
	FILE *jl = NULL;
	int opt;

	while ((opt = getopt(argc, argv, "s:n:M:N:R:o:")) != -1) {
		switch (opt) {
		case 's': b.disk_gib = (uint32_t)atoi(optarg); break;
		case 'n': b.repeats = (uint32_t)atoi(optarg); break;
		case 'M': modes_arg = optarg; break;
		case 'N': b.link = !strcmp(optarg, "link"); break;
		case 'R': b.link_mbit = (uint32_t)atoi(optarg); break;
		case 'o': out_base = optarg; break;
		default:
			fprintf(stderr, "usage: bench_block [-s GIB] [-n REPEATS] "
				"[-M libvirt,ferry,ferry-none,ferry-cold] [-N loopback|link] "
				"[-R MBIT] [-o BASENAME]\n");
			return 2;
		}
	}
	if (!b.disk_gib || !b.repeats || b.repeats > BENCH_MAX_REPEATS)
		return 2;
	snprintf(modes_buf, sizeof(modes_buf), "%s", modes_arg);
	for (char *t = strtok(modes_buf, ","); t && nm < BENCH_MAX_MODES;
	     t = strtok(NULL, ",")) {
		if (strcmp(t, "libvirt") && strcmp(t, "ferry") &&
		    strcmp(t, "ferry-none") && strcmp(t, "ferry-cold")) {
			fprintf(stderr, "bench_block: unknown mode '%s' (libvirt, "
				"ferry, ferry-none, ferry-cold)\n", t);
			return 2;
		}
		modes[nm++] = t;
	}
	ferry_set_log(NULL, NULL, 1);
	g_bench = &b;
	atexit(cleanup);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	if (tmpdir_make(b.dir, sizeof(b.dir), "ferry-bench-block") < 0)
		return 1;
	snprintf(b.src_img, sizeof(b.src_img), "%s/src.raw", b.dir);
	snprintf(b.dst_img, sizeof(b.dst_img), "%s/dst.raw", b.dir);
	fprintf(stderr, "making a %u GiB disk (40%% holes, 35%% text, 25%% "
		"random)...\n", b.disk_gib);
	if (make_disk(b.src_img, (uint64_t)b.disk_gib << 30) < 0)
		return 1;
	if (b.link) {
		if (link_up(b.link_mbit) < 0)
			return 1;
		b.dst_host = LINK_DST_ADDR;
	}
	if (out_base) {
		char p[256];

		snprintf(p, sizeof(p), "%s.jsonl", out_base);
		jl = fopen(p, "w");
		if (jl)
			stats_write_machine_line(jl);
	}
	for (uint32_t r = 0; r < b.repeats; r++) {
		for (uint32_t k = 0; k < nm; k++) {
			/* The first mode rotates each round. */
			uint32_t i = (k + r) % nm;
			struct ferry_error err = { 0 };
			struct run res;
			int rc = one_run(&b, modes[i], &res, &err);

			fprintf(stderr, "round %u %-10s %s %7llu ms  %6llu MiB on "
				"the wire%s%s\n", r, modes[i], rc ? "FAILED" : "ok",
				(unsigned long long)res.total_ms,
				(unsigned long long)(res.wire_bytes >> 20),
				rc ? ": " : "", rc ? err.msg : "");
			if (jl)
				fprintf(jl, "{\"mode\":\"%s\",\"net\":\"%s\",\"disk_gib\":%u,"
					"\"round\":%u,\"ok\":%s,\"total_ms\":%llu,"
					"\"wire_bytes\":%llu,\"downtime_ms\":%llu}\n",
					modes[i], b.link ? "link" : "loopback",
					b.disk_gib, r, rc ? "false" : "true",
					(unsigned long long)res.total_ms,
					(unsigned long long)res.wire_bytes,
					(unsigned long long)res.downtime_ms);
			if (rc == 0) {
				totals[i][got[i]] = res.total_ms;
				downs[i][got[i]] = res.downtime_ms;
				wires[i][got[i]++] = res.wire_bytes;
			}
		}
	}
	if (jl)
		fclose(jl);
	printf("\n%u GiB disk, %s, %u rounds (medians)\n", b.disk_gib,
	       b.link ? "link" : "loopback", b.repeats);
	stats_print_machine(stdout);
	if (b.link)
		printf("link: veth + tbf at %u Mbit/s\n", b.link_mbit);
	printf("%-12s %4s %10s %12s %12s %8s\n", "mode", "ok", "total ms",
	       "downtime ms", "wire MiB", "vs 1st");
	{
		uint64_t base = got[0] ? stats_median(totals[0], got[0]) : 0;

		for (uint32_t i = 0; i < nm; i++) {
			uint64_t t = stats_median(totals[i], got[i]);

			printf("%-12s %4u %10llu %12llu %12llu %8.2f\n", modes[i],
			       got[i], (unsigned long long)t,
			       (unsigned long long)stats_median(downs[i], got[i]),
			       (unsigned long long)(stats_median(wires[i], got[i]) >> 20),
			       base ? (double)t / (double)base : 0.0);
		}
	}
	return 0;
}
