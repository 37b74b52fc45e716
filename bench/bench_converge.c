/*
 * Convergence benchmark: for a set of guest dirty rates against one link
 * rate, total time and downtime of
 *   nova        Nova's policy: downtime steps, abort on the completion timeout
 *   qemu-ac     QEMU's auto-converge alone
 *   postcopy-1  post-copy after the first pass
 *   predict     ferry's predictive policy (post-copy and auto-converge allowed)
 * Each run: fresh VMs, ferry's tunnel capped at the link rate (--bandwidth),
 * destination left paused, RAM compared byte for byte when it completed.
 *
 * usage: bench_converge [-m MEM_MIB] [-w WS_MIB] [-l LINK_MIB_S]
 *                       [-d RATE,RATE,...] [-t TIMEOUT_S] [-n REPEATS] [-o FILE]
 *        bench_converge -s FILE...   the table of earlier results (medians)
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "ferry.h"
#include "ferry_policy.h"
#include "tests/harness/rx.h"
#include "tests/harness/stats.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

#define BC_MAX_RATES 16
#define BC_MAX_REPEATS 10
#define BC_READY_TIMEOUT_MS 120000
#define BC_DOWNTIME_MS 500

enum pol { P_NOVA, P_QEMU_AC, P_POSTCOPY1, P_PREDICT, P_COUNT };
static const char *const pol_names[] = { "nova", "qemu-ac", "postcopy-1", "predict" };

struct result {
	bool completed, verified;
	uint64_t total_ms, downtime_ms, predicted_ms;
	bool postcopy;
	uint32_t throttle;
};

static int one(enum pol pol, uint32_t mem, uint32_t ws, uint32_t rate,
	       uint32_t link, uint32_t timeout_s, const char *dir,
	       struct result *res, struct ferry_error *err)
{
	struct vm_config sc = { .mem_mib = mem, .fill = "random", .ws_mib = ws,
				.rate_mib_s = rate };
	struct vm_config dc = sc;
	struct vm *src = NULL, *dst = NULL;
	struct ferry_receiver_opts ro = { .listen_host = "127.0.0.1", .once = true };
	struct ferry_migrate_opts o = {
		.to_host = "127.0.0.1", .paused = true, .codec = FERRY_CODEC_NONE,
		.no_handoff = true,	/* ferry's tunnel paces the link */
		.max_bandwidth_bytes_per_s = (uint64_t)link << 20,
		.downtime_ms = BC_DOWNTIME_MS, .timeout_s = timeout_s,
	};
	struct ferry_report rep;
	struct rx_thread rx;
	struct ferry_migration *m;
	int rc;

	memset(res, 0, sizeof(*res));
	switch (pol) {
	case P_NOVA:
		o.converge.policy = ferry_policy_builtin("nova");
		/* Nova's schedule, compressed in time like the timeout. */
		o.converge.downtime_steps = 10;
		o.converge.downtime_step_delay_s_per_gib = 4 * 1024 / mem;
		o.converge.timeout_action = FERRY_TIMEOUT_ABORT;
		break;
	case P_QEMU_AC:
		o.converge.policy = ferry_policy_builtin("qemu");
		o.converge.auto_converge = true;
		break;
	case P_POSTCOPY1:
		o.converge.postcopy = FERRY_POSTCOPY_AFTER_PASS;
		o.converge.postcopy_after_pass = 1;
		break;
	case P_PREDICT:
		o.converge.postcopy = FERRY_POSTCOPY_AUTO;
		o.converge.auto_converge = true;
		break;
	default:
		return -EINVAL;
	}
	dc.incoming = dc.prealloc = true;
	rc = vm_start(&src, &sc, err);
	if (!rc)
		rc = vm_start(&dst, &dc, err);
	if (!rc)
		rc = vm_wait_ready(src, BC_READY_TIMEOUT_MS, err);
	if (rc)
		goto out;
	ro.qmp_path = vm_qmp_path(dst);
	rc = rx_thread_start(&rx, &ro, NULL, err);
	if (rc < 0)
		goto out;
	o.qmp_path = vm_qmp_path(src);
	o.to_port = rx.port;
	m = ferry_migration_new(&o, err);
	rc = m ? ferry_migration_run(m, &rep, err) : -EINVAL;
	ferry_migration_free(m);
	if (rc)
		rx_thread_stop(&rx);
	rx_thread_join(&rx);
	res->completed = rc == 0;
	res->total_ms = rep.total_ms;
	res->downtime_ms = rep.downtime_ms;
	res->predicted_ms = rep.predicted_total_ms;
	res->postcopy = rep.postcopy;
	res->throttle = rep.throttle_pct_max;
	if (res->completed)
		res->verified = stats_same_ram(dir, src, dst) == 1;
	rc = 0;
out:
	vm_stop(src);
	vm_stop(dst);
	return rc;
}

/* ---- the table: medians over every run in the JSON lines files ---- */

#define BC_MAX_RUNS 4096

struct run {
	int pol;
	uint32_t rate, link, mem, ws;
	struct result x;
};

static int load_runs(const char *path, struct run *runs, uint32_t *n)
{
	char line[1024];
	FILE *f = fopen(path, "r");

	if (!f) {
		perror(path);
		return -1;
	}
	while (fgets(line, sizeof(line), f) && *n < BC_MAX_RUNS) {
		json_t *o = json_loads(line, 0, NULL);
		const char *pol = o ? json_string_value(json_object_get(o, "policy")) : NULL;
		struct run *r = &runs[*n];

		if (!pol) {
			json_decref(o);
			continue;
		}
		memset(r, 0, sizeof(*r));
		r->pol = -1;
		for (int p = 0; p < P_COUNT; p++)
			if (!strcmp(pol, pol_names[p]))
				r->pol = p;
		r->rate = (uint32_t)json_integer_value(json_object_get(o, "dirty_mib_s"));
		r->link = (uint32_t)json_integer_value(json_object_get(o, "link_mib_s"));
		r->mem = (uint32_t)json_integer_value(json_object_get(o, "mem_mib"));
		r->ws = (uint32_t)json_integer_value(json_object_get(o, "ws_mib"));
		r->x.completed = json_is_true(json_object_get(o, "completed"));
		r->x.verified = json_is_true(json_object_get(o, "ram_verified"));
		r->x.postcopy = json_is_true(json_object_get(o, "postcopy"));
		r->x.total_ms = (uint64_t)json_integer_value(json_object_get(o, "total_ms"));
		r->x.downtime_ms = (uint64_t)json_integer_value(json_object_get(o, "downtime_ms"));
		r->x.predicted_ms = (uint64_t)json_integer_value(
			json_object_get(o, "predicted_total_ms"));
		json_decref(o);
		if (r->pol >= 0)
			(*n)++;
	}
	fclose(f);
	return 0;
}

static void summarize(const char *const *paths, int npaths)
{
	static struct run runs[BC_MAX_RUNS];
	uint32_t n = 0, rates[BC_MAX_RATES], nrates = 0;

	for (int i = 0; i < npaths; i++)
		if (load_runs(paths[i], runs, &n))
			return;
	if (!n)
		return;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t k = 0;

		while (k < nrates && rates[k] != runs[i].rate)
			k++;
		if (k == nrates && nrates < BC_MAX_RATES)
			rates[nrates++] = runs[i].rate;
	}
	printf("\n%u MiB guest, working set %u MiB, link %u MiB/s, downtime limit "
	       "%u ms; median total time and downtime of the runs that completed "
	       "with RAM verified (completed/runs)\n\n", runs[0].mem, runs[0].ws,
	       runs[0].link, BC_DOWNTIME_MS);
	printf("| dirty MiB/s |");
	for (int p = 0; p < P_COUNT; p++)
		printf(" %s |", pol_names[p]);
	printf(" predict: predicted |\n| ---: |");
	for (int p = 0; p <= P_COUNT; p++)
		printf(" --- |");
	printf("\n");
	for (uint32_t i = 0; i < nrates; i++) {
		uint64_t pred[BC_MAX_RUNS / 8];
		uint32_t npred = 0;

		printf("| %u |", rates[i]);
		for (int p = 0; p < P_COUNT; p++) {
			uint64_t tot[BC_MAX_RUNS / 8], down[BC_MAX_RUNS / 8];
			uint32_t ok = 0, all = 0, pc = 0;

			for (uint32_t k = 0; k < n; k++) {
				const struct run *r = &runs[k];

				if (r->rate != rates[i] || r->pol != p ||
				    all >= BC_MAX_RUNS / 8)
					continue;
				all++;
				if (p == P_PREDICT && r->x.predicted_ms)
					pred[npred++] = r->x.predicted_ms;
				if (!r->x.completed || !r->x.verified)
					continue;
				tot[ok] = r->x.total_ms;
				down[ok++] = r->x.downtime_ms;
				pc += r->x.postcopy;
			}
			if (!ok) {
				printf(all ? " aborted (0/%u) |" : " - |", all);
				continue;
			}
			printf(" %.1f s, %llu ms (%u/%u", (double)stats_median(tot, ok) / 1000,
			       (unsigned long long)stats_median(down, ok), ok, all);
			if (pc == ok)
				printf(", post-copy) |");
			else if (pc)
				printf(", %u in post-copy) |", pc);
			else
				printf(") |");
		}
		if (npred)
			printf(" %.1f s |\n", (double)stats_median(pred, npred) / 1000);
		else
			printf(" - |\n");
	}
}

int main(int argc, char **argv)
{
	uint32_t rates[BC_MAX_RATES] = { 4, 8, 16, 32, 64 }, nrates = 5;
	uint32_t mem = 256, ws = 64, link = 32, timeout_s = 40, repeats = 1;
	static struct result r[BC_MAX_RATES][P_COUNT][BC_MAX_REPEATS];
	struct ferry_error err = { 0 };
	const char *out_path = NULL;
	bool summary_only = false;
	char path[256], dir[64];
	FILE *out;
	int opt;

	while ((opt = getopt(argc, argv, "m:w:l:d:t:n:o:s")) != -1) {
		switch (opt) {
		case 'm': mem = (uint32_t)atoi(optarg); break;
		case 'w': ws = (uint32_t)atoi(optarg); break;
		case 'l': link = (uint32_t)atoi(optarg); break;
		case 't': timeout_s = (uint32_t)atoi(optarg); break;
		case 'n': repeats = (uint32_t)atoi(optarg); break;
		case 'o': out_path = optarg; break;
		case 's': summary_only = true; break;
		case 'd':
			nrates = 0;
			for (char *tok = strtok(optarg, ","); tok && nrates < BC_MAX_RATES;
			     tok = strtok(NULL, ","))
				rates[nrates++] = (uint32_t)atoi(tok);
			break;
		default:
			fprintf(stderr, "usage: %s [-m MEM] [-w WS] [-l LINK_MIB_S] "
				"[-d RATES] [-t TIMEOUT_S] [-n REPEATS] [-o FILE]\n",
				argv[0]);
			return 2;
		}
	}
	if (summary_only) {
		summarize((const char *const *)argv + optind, argc - optind);
		return 0;
	}
	if (!repeats || repeats > BC_MAX_REPEATS || !nrates)
		return 2;
	if (!out_path) {
		mkdir("bench/results", 0755);
		snprintf(path, sizeof(path), "bench/results/converge-%ld.jsonl",
			 (long)time(NULL));
		out_path = path;
	}
	out = fopen(out_path, "w");
	if (!out || tmpdir_make(dir, sizeof(dir), "ferry-bench")) {
		perror(out_path);
		return 1;
	}
	ferry_set_log(NULL, NULL, FERRY_LOG_WARN);
	for (uint32_t k = 0; k < repeats; k++) {
		for (uint32_t i = 0; i < nrates; i++) {
			for (int pp = 0; pp < P_COUNT; pp++) {
				int p = (pp + (int)(i + k)) % P_COUNT;
				struct result *x = &r[i][p][k];

				int rc = one((enum pol)p, mem, ws, rates[i], link,
					     timeout_s, dir, x, &err);

				/* A guest that failed to boot (a busy host) gets
				 * one more chance; the migration is not retried. */
				if (rc) {
					fprintf(stderr, "%s at %u MiB/s: %s; once more\n",
						pol_names[p], rates[i], err.msg);
					rc = one((enum pol)p, mem, ws, rates[i], link,
						 timeout_s, dir, x, &err);
				}
				if (rc) {
					fprintf(stderr, "%s at %u MiB/s: %s\n",
						pol_names[p], rates[i], err.msg);
					return 1;
				}
				fprintf(out, "{\"policy\":\"%s\",\"dirty_mib_s\":%u,"
					"\"link_mib_s\":%u,\"mem_mib\":%u,\"ws_mib\":%u,"
					"\"completed\":%s,\"ram_verified\":%s,\"total_ms\":%llu,"
					"\"downtime_ms\":%llu,\"predicted_total_ms\":%llu,"
					"\"postcopy\":%s,\"throttle_pct_max\":%u}\n",
					pol_names[p], rates[i], link, mem, ws,
					x->completed ? "true" : "false",
					x->verified ? "true" : "false",
					(unsigned long long)x->total_ms,
					(unsigned long long)x->downtime_ms,
					(unsigned long long)x->predicted_ms,
					x->postcopy ? "true" : "false", x->throttle);
				fflush(out);
				printf("%-10s dirty %3u MiB/s: %s %6llu ms, downtime %4llu ms%s%s\n",
				       pol_names[p], rates[i],
				       x->completed ? "completed" : "ABORTED  ",
				       (unsigned long long)x->total_ms,
				       (unsigned long long)x->downtime_ms,
				       x->postcopy ? ", post-copy" : "",
				       x->completed && !x->verified ? ", RAM DIFFERS" : "");
				fflush(stdout);
			}
		}
	}
	fclose(out);
	summarize(&out_path, 1);
	printf("\nresults: %s\n", out_path);
	tmpdir_remove(dir);
	return 0;
}
