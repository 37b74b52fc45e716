/*
 * Migration benchmark: ferry's tunnel against QEMU's own migration
 * (--direct), side by side in one run.
 *
 * The machines are noisy, so the modes alternate (direct, tunnel, direct,
 * ...), each run gets fresh VMs with the destination preallocated, one
 * warm-up pair is thrown away, and the summary gives medians and the ratio
 * of medians. Every run's guest RAM is compared byte for byte (a benchmark
 * of a migration that lost data would be worthless).
 *
 * usage: bench_migrate [-m MEM_MIB] [-n REPEATS] [-f FILL] [-w WS_MIB]
 *                      [-r RATE_MIB_S] [-o results.jsonl]
 * Results: one JSON object per run on the output file (default
 * bench/results/migrate-<time>.jsonl), a summary table on stdout.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/util.h"
#include "ferry.h"
#include "tests/harness/vm.h"

#define BENCH_MAX_REPEATS 50
#define BENCH_READY_TIMEOUT_MS 300000

enum mode { MODE_DIRECT, MODE_TUNNEL, MODE_COUNT };
static const char *const mode_names[] = { "qemu-direct", "ferry-tunnel" };

struct run {
	uint64_t total_ms, downtime_ms, wire_bytes, cpu_ms;
	bool ok;
};

struct bench {
	uint32_t mem_mib, repeats, ws_mib, rate;
	const char *fill;
	FILE *out;
	char dir[64];
};

struct rx_arg {
	struct ferry_receiver *rx;
	struct ferry_error err;
	int rc;
};

static void *rx_main(void *p)
{
	struct rx_arg *a = p;

	a->rc = ferry_receiver_run(a->rx, NULL, &a->err);
	return NULL;
}

static uint64_t cpu_ms_self(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

static int verify_ram(struct bench *b, struct vm *src, struct vm *dst,
		      struct ferry_error *err)
{
	char a[128], c[128];
	uint64_t diff;
	int eq;

	snprintf(a, sizeof(a), "%s/src.ram", b->dir);
	snprintf(c, sizeof(c), "%s/dst.ram", b->dir);
	if (vm_pmemsave(src, a, err) < 0 || vm_pmemsave(dst, c, err) < 0)
		return -EIO;
	eq = vm_files_equal(a, c, &diff, err);
	unlink(a);
	unlink(c);
	if (eq != 1)
		return ferry_error_set(err, -EIO, "guest RAM differs at byte %llu",
				       (unsigned long long)diff);
	return 0;
}

static int one_run(struct bench *b, enum mode mode, struct run *res,
		   struct ferry_error *err)
{
	struct vm_config sc = { .mem_mib = b->mem_mib, .fill = b->fill,
				.ws_mib = b->ws_mib, .rate_mib_s = b->rate };
	struct vm_config dc = sc;
	struct vm *src = NULL, *dst = NULL;
	struct ferry_migration *m = NULL;
	struct ferry_report rep;
	struct rx_arg rx = { 0 };
	pthread_t t;
	uint64_t cpu0;
	int rc;

	dc.incoming = dc.prealloc = true;
	rc = vm_start(&src, &sc, err);
	if (rc == 0)
		rc = vm_start(&dst, &dc, err);
	if (rc == 0)
		rc = vm_wait_ready(src, BENCH_READY_TIMEOUT_MS, err);
	if (rc < 0)
		goto out;
	{
		struct ferry_receiver_opts ro = { .listen_host = "127.0.0.1",
						  .qmp_path = vm_qmp_path(dst),
						  .once = true };
		struct ferry_migrate_opts mo = { .qmp_path = vm_qmp_path(src),
						 .to_host = "127.0.0.1",
						 .paused = true,
						 .direct = mode == MODE_DIRECT };

		rx.rx = ferry_receiver_new(&ro, err);
		if (!rx.rx) {
			rc = -EIO;
			goto out;
		}
		mo.to_port = ferry_receiver_port(rx.rx);
		pthread_create(&t, NULL, rx_main, &rx);
		m = ferry_migration_new(&mo, err);
		cpu0 = cpu_ms_self();
		rc = m ? ferry_migration_run(m, &rep, err) : -ENOMEM;
		res->cpu_ms = cpu_ms_self() - cpu0;
		pthread_join(t, NULL);
		ferry_receiver_free(rx.rx);
		ferry_migration_free(m);
	}
	if (rc < 0)
		goto out;
	res->total_ms = rep.total_ms;
	res->downtime_ms = rep.downtime_ms;
	res->wire_bytes = rep.wire_bytes;
	rc = verify_ram(b, src, dst, err);
	res->ok = rc == 0;
out:
	vm_stop(src);
	vm_stop(dst);
	return rc;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, uint32_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void summarize(struct run runs[MODE_COUNT][BENCH_MAX_REPEATS], uint32_t n,
		      const struct bench *b)
{
	uint64_t med_total[MODE_COUNT], med_down[MODE_COUNT], v[BENCH_MAX_REPEATS];

	printf("\n%u MiB guest, fill=%s, ws=%u MiB at %u MiB/s, loopback, %u runs per mode\n",
	       b->mem_mib, b->fill, b->ws_mib, b->rate, n);
	printf("| mode | median total ms | median downtime ms | ratio to qemu-direct |\n");
	printf("| --- | --- | --- | --- |\n");
	for (int md = 0; md < MODE_COUNT; md++) {
		for (uint32_t i = 0; i < n; i++)
			v[i] = runs[md][i].total_ms;
		med_total[md] = median(v, n);
		for (uint32_t i = 0; i < n; i++)
			v[i] = runs[md][i].downtime_ms;
		med_down[md] = median(v, n);
	}
	for (int md = 0; md < MODE_COUNT; md++)
		printf("| %s | %llu | %llu | %.2f |\n", mode_names[md],
		       (unsigned long long)med_total[md],
		       (unsigned long long)med_down[md],
		       (double)med_total[md] / (double)med_total[MODE_DIRECT]);
}

int main(int argc, char **argv)
{
	static struct run runs[MODE_COUNT][BENCH_MAX_REPEATS];
	struct bench b = { .mem_mib = 1024, .repeats = 5, .fill = "random" };
	struct ferry_error err = { 0 };
	const char *out_path = NULL;
	char path[256];
	int opt;

	while ((opt = getopt(argc, argv, "m:n:f:w:r:o:")) != -1) {
		switch (opt) {
		case 'm': b.mem_mib = (uint32_t)atoi(optarg); break;
		case 'n': b.repeats = (uint32_t)atoi(optarg); break;
		case 'f': b.fill = optarg; break;
		case 'w': b.ws_mib = (uint32_t)atoi(optarg); break;
		case 'r': b.rate = (uint32_t)atoi(optarg); break;
		case 'o': out_path = optarg; break;
		default:
			fprintf(stderr, "usage: %s [-m MEM_MIB] [-n REPEATS] [-f FILL] "
				"[-w WS_MIB] [-r RATE] [-o OUT.jsonl]\n", argv[0]);
			return 2;
		}
	}
	if (b.repeats < 1 || b.repeats > BENCH_MAX_REPEATS) {
		fprintf(stderr, "repeats must be 1..%d\n", BENCH_MAX_REPEATS);
		return 2;
	}
	if (!out_path) {
		mkdir("bench/results", 0755);
		snprintf(path, sizeof(path), "bench/results/migrate-%ld.jsonl",
			 (long)time(NULL));
		out_path = path;
	}
	b.out = fopen(out_path, "w");
	snprintf(b.dir, sizeof(b.dir), "/tmp/ferry-bench.XXXXXX");
	if (!b.out || !mkdtemp(b.dir)) {
		perror("bench");
		return 1;
	}
	ferry_set_log(NULL, NULL, FERRY_LOG_WARN);
	/* Warm-up: page cache, QEMU binary, first-touch costs. */
	for (int md = 0; md < MODE_COUNT; md++) {
		struct run warm = { 0 };

		if (one_run(&b, (enum mode)md, &warm, &err) < 0) {
			fprintf(stderr, "warm-up %s failed: %s\n", mode_names[md], err.msg);
			return 1;
		}
	}
	for (uint32_t i = 0; i < b.repeats; i++) {
		for (int k = 0; k < MODE_COUNT; k++) {
			/* Alternate which mode goes first in each round. */
			int md = (int)((i + (uint32_t)k) % MODE_COUNT);
			struct run *r = &runs[md][i];

			if (one_run(&b, (enum mode)md, r, &err) < 0) {
				fprintf(stderr, "%s run %u failed: %s\n",
					mode_names[md], i, err.msg);
				return 1;
			}
			fprintf(b.out,
				"{\"mode\":\"%s\",\"run\":%u,\"mem_mib\":%u,\"fill\":\"%s\","
				"\"total_ms\":%llu,\"downtime_ms\":%llu,\"wire_bytes\":%llu,"
				"\"ferry_cpu_ms\":%llu,\"ram_verified\":%s}\n",
				mode_names[md], i, b.mem_mib, b.fill,
				(unsigned long long)r->total_ms,
				(unsigned long long)r->downtime_ms,
				(unsigned long long)r->wire_bytes,
				(unsigned long long)r->cpu_ms, r->ok ? "true" : "false");
			fflush(b.out);
			printf("%-13s run %u: %llu ms (downtime %llu ms)\n", mode_names[md], i,
			       (unsigned long long)r->total_ms,
			       (unsigned long long)r->downtime_ms);
			fflush(stdout);
		}
	}
	summarize(runs, b.repeats, &b);
	printf("results: %s\n", out_path);
	fclose(b.out);
	rmdir(b.dir);
	return 0;
}
