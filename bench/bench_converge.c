/*
 * Convergence benchmark: for a set of guest dirty rates against one link
 * rate, total time and downtime of
 *   nova        Nova's policy: downtime steps, abort on the completion timeout
 *   qemu-ac     QEMU's auto-converge alone
 *   postcopy-1  post-copy after the first pass
 *   predict     ferry's predictive policy (post-copy and auto-converge allowed)
 * Each run: fresh VMs, the link capped with --bandwidth (ferry's tunnel
 * paces it, or QEMU with -T handoff / direct), the destination resumed.
 * Besides QEMU's downtime, what the guest felt, from its heartbeats as they
 * arrive on the host (tests/harness/view.h): the longest time it made no
 * progress (blackout), the time until it ran at half its rate again, and
 * the work it lost against running undisturbed. Verified when it
 * completed: the destination guest runs on with its memory invariant
 * intact, and the RAM it does not write equals the source's byte for byte.
 *
 * usage: bench_converge [-m MEM_MIB] [-w WS_MIB] [-l LINK_MIB_S]
 *                       [-d RATE,RATE,...] [-D DOWNTIME_MS] [-p POLICY,...]
 *                       [-T tunnel|handoff|direct] [-t TIMEOUT_S]
 *                       [-n REPEATS] [-o FILE] [-B TRACE_DIR]
 *        bench_converge -s FILE...   the table of earlier results (medians)
 */
#include <errno.h>
#include <stddef.h>
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
#include "tests/harness/view.h"
#include "tests/harness/vm.h"

#define BC_MAX_RATES 16
#define BC_MAX_REPEATS 10
#define BC_READY_TIMEOUT_MS 120000
#define BC_DOWNTIME_MS 500

enum transport { T_TUNNEL, T_HANDOFF, T_DIRECT, T_COUNT };
static const char *const transport_names[] = { "tunnel", "handoff", "direct" };

/* What every run of this invocation shares. */
struct setup {
	uint32_t mem, ws, link, timeout_s, downtime_ms;
	enum transport transport;
	bool pol_on[4];
};

enum pol { P_NOVA, P_QEMU_AC, P_POSTCOPY1, P_PREDICT, P_COUNT };
static const char *const pol_names[] = { "nova", "qemu-ac", "postcopy-1", "predict" };

struct result {
	bool completed, verified, viewed;
	uint64_t total_ms, downtime_ms, predicted_ms;
	uint64_t blackout_ms, half_rate_ms, lost_ms;	/* the guest's view */
	bool postcopy;
	uint32_t throttle;
};

/* -B: where each run's heartbeats go (ms from the start, work). */
static const char *su_trace_dir;

/* The guest's view of the run, and then (dumping RAM stalls the guest)
 * the check that it arrived whole. */
static void judge(struct vm *src, struct vm *dst, const char *dir,
		  uint64_t base, uint64_t from, struct result *res)
{
	struct ferry_error err = { 0 };
	struct guest_view v;
	uint64_t to;

	if (res->completed)
		usleep(VIEW_SETTLE_MS * 1000);
	to = vm_now_us();
	if (su_trace_dir) {
		char path[512];

		snprintf(path, sizeof(path), "%s/run-%llu.beats", su_trace_dir,
			 (unsigned long long)from);
		guest_view_trace(src, dst, base, from, path);
		printf("guest's heartbeats: %s\n", path);
	}
	if (!guest_view_of(src, res->completed ? dst : NULL, base, from, to, &v)) {
		res->viewed = true;
		guest_view_ms(&v, &res->blackout_ms, &res->half_rate_ms,
			      &res->lost_ms);
	}
	if (!res->completed)
		return;
	res->verified = guest_intact(dir, src, dst, &err) == 0;
	if (!res->verified)
		fprintf(stderr, "%s\n", err.msg);
}

static int one(const struct setup *su, enum pol pol, uint32_t rate,
	       const char *dir, struct result *res, struct ferry_error *err)
{
	struct vm_config sc = { .mem_mib = su->mem, .fill = "random",
				.ws_mib = su->ws, .rate_mib_s = rate };
	struct vm_config dc = sc;
	struct vm *src = NULL, *dst = NULL;
	struct ferry_receiver_opts ro = { .listen_host = "127.0.0.1", .once = true };
	struct ferry_migrate_opts o = {
		.to_host = "127.0.0.1", .codec = FERRY_CODEC_NONE,
		.no_handoff = su->transport == T_TUNNEL,
		.direct = su->transport == T_DIRECT,
		.max_bandwidth_bytes_per_s = (uint64_t)su->link << 20,
		.downtime_ms = su->downtime_ms, .timeout_s = su->timeout_s,
	};
	uint32_t mem = su->mem;
	struct ferry_report rep;
	struct rx_thread rx;
	struct ferry_migration *m;
	uint64_t base, from;
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
	/* The guest's undisturbed rate, before anything happens. */
	base = vm_now_us();
	usleep((VIEW_BASE_MIN_MS + 500) * 1000);
	from = vm_now_us();
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
	judge(src, dst, dir, base, from, res);
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
	uint32_t rate, link, mem, ws, limit;
	char transport[16];
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
		r->x.viewed = json_is_integer(json_object_get(o, "blackout_ms"));
		r->x.blackout_ms = (uint64_t)json_integer_value(json_object_get(o, "blackout_ms"));
		r->x.half_rate_ms = json_is_integer(json_object_get(o, "half_rate_ms")) ?
			(uint64_t)json_integer_value(json_object_get(o, "half_rate_ms")) :
			UINT64_MAX;
		r->x.lost_ms = (uint64_t)json_integer_value(json_object_get(o, "work_lost_ms"));
		r->limit = (uint32_t)json_integer_value(json_object_get(o, "downtime_limit_ms"));
		if (!r->limit)
			r->limit = BC_DOWNTIME_MS;	/* before the option */
		snprintf(r->transport, sizeof(r->transport), "%s",
			 json_is_string(json_object_get(o, "transport")) ?
			 json_string_value(json_object_get(o, "transport")) : "tunnel");
		json_decref(o);
		if (r->pol >= 0)
			(*n)++;
	}
	fclose(f);
	return 0;
}

/* A median of one field over the runs that completed and verified;
 * "-" for none. UINT64_MAX values (never recovered) sort last. */
static void cell(const struct run *const *rs, uint32_t n, size_t off)
{
	uint64_t v[BC_MAX_RUNS / 8], med;
	uint32_t k = 0;

	for (uint32_t i = 0; i < n; i++)
		if (rs[i]->x.viewed || off == offsetof(struct result, total_ms) ||
		    off == offsetof(struct result, downtime_ms))
			v[k++] = *(const uint64_t *)((const char *)&rs[i]->x + off);
	if (!k) {
		printf(" - |");
		return;
	}
	med = stats_median(v, k);
	if (med == UINT64_MAX)
		printf(" never |");
	else if (off == offsetof(struct result, total_ms))
		printf(" %.1f |", (double)med / 1000);
	else
		printf(" %llu |", (unsigned long long)med);
}

/* One row per dirty rate and policy, medians of the verified runs. */
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
	printf("\n%u MiB guest, working set %u MiB, link %u MiB/s (%s), downtime "
	       "limit %u ms; medians of the runs that completed with the guest "
	       "verified. Blackout: the longest time the guest made no progress, "
	       "from its heartbeats; half rate: from the blackout's start until it "
	       "did half its undisturbed work rate again; lost: work lost against "
	       "running undisturbed, in time.\n\n", runs[0].mem, runs[0].ws,
	       runs[0].link, runs[0].transport, runs[0].limit);
	printf("| dirty MiB/s | policy | total s | QEMU downtime ms | blackout ms "
	       "| half rate ms | work lost ms | completed | post-copy | predicted s |\n"
	       "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
	for (uint32_t i = 0; i < nrates; i++) {
		for (int p = 0; p < P_COUNT; p++) {
			const struct run *ok[BC_MAX_RUNS / 8];
			uint64_t pred[BC_MAX_RUNS / 8];
			uint32_t nok = 0, all = 0, pc = 0, npred = 0;

			for (uint32_t k = 0; k < n; k++) {
				const struct run *r = &runs[k];

				if (r->rate != rates[i] || r->pol != p ||
				    all >= BC_MAX_RUNS / 8)
					continue;
				all++;
				if (r->x.predicted_ms)
					pred[npred++] = r->x.predicted_ms;
				if (!r->x.completed || !r->x.verified)
					continue;
				ok[nok++] = r;
				pc += r->x.postcopy;
			}
			if (!all)
				continue;
			printf("| %u | %s |", rates[i], pol_names[p]);
			cell(ok, nok, offsetof(struct result, total_ms));
			cell(ok, nok, offsetof(struct result, downtime_ms));
			cell(ok, nok, offsetof(struct result, blackout_ms));
			cell(ok, nok, offsetof(struct result, half_rate_ms));
			cell(ok, nok, offsetof(struct result, lost_ms));
			printf(" %u/%u | %u/%u |", nok, all, pc, nok);
			if (npred)
				printf(" %.1f |\n", (double)stats_median(pred, npred) / 1000);
			else
				printf(" - |\n");
		}
	}
}

/* Parse "a,b,c" of names into @on; false on an unknown name. */
static bool parse_policies(char *arg, bool *on)
{
	memset(on, 0, P_COUNT * sizeof(*on));
	for (char *tok = strtok(arg, ","); tok; tok = strtok(NULL, ",")) {
		int p = 0;

		while (p < P_COUNT && strcmp(tok, pol_names[p]))
			p++;
		if (p == P_COUNT)
			return false;
		on[p] = true;
	}
	return true;
}

static void print_run(FILE *out, const struct setup *su, int p, uint32_t rate,
		      const struct result *x)
{
	fprintf(out, "{\"policy\":\"%s\",\"dirty_mib_s\":%u,"
		"\"link_mib_s\":%u,\"mem_mib\":%u,\"ws_mib\":%u,"
		"\"transport\":\"%s\",\"downtime_limit_ms\":%u,"
		"\"completed\":%s,\"ram_verified\":%s,\"total_ms\":%llu,"
		"\"downtime_ms\":%llu,\"predicted_total_ms\":%llu,"
		"\"postcopy\":%s,\"throttle_pct_max\":%u",
		pol_names[p], rate, su->link, su->mem, su->ws,
		transport_names[su->transport], su->downtime_ms,
		x->completed ? "true" : "false", x->verified ? "true" : "false",
		(unsigned long long)x->total_ms,
		(unsigned long long)x->downtime_ms,
		(unsigned long long)x->predicted_ms,
		x->postcopy ? "true" : "false", x->throttle);
	if (x->viewed) {
		fprintf(out, ",\"blackout_ms\":%llu,\"work_lost_ms\":%llu",
			(unsigned long long)x->blackout_ms,
			(unsigned long long)x->lost_ms);
		if (x->half_rate_ms != UINT64_MAX)
			fprintf(out, ",\"half_rate_ms\":%llu",
				(unsigned long long)x->half_rate_ms);
	}
	fprintf(out, "}\n");
	fflush(out);
}

int main(int argc, char **argv)
{
	uint32_t rates[BC_MAX_RATES] = { 4, 8, 16, 32, 64 }, nrates = 5;
	struct setup su = { .mem = 256, .ws = 64, .link = 32, .timeout_s = 40,
			    .downtime_ms = BC_DOWNTIME_MS,
			    .pol_on = { true, true, true, true } };
	static struct result r[BC_MAX_RATES][P_COUNT][BC_MAX_REPEATS];
	struct ferry_error err = { 0 };
	const char *out_path = NULL;
	bool summary_only = false;
	uint32_t repeats = 1;
	char path[256], dir[64];
	FILE *out;
	int opt;

	while ((opt = getopt(argc, argv, "m:w:l:d:D:p:T:t:n:o:B:s")) != -1) {
		switch (opt) {
		case 'm': su.mem = (uint32_t)atoi(optarg); break;
		case 'w': su.ws = (uint32_t)atoi(optarg); break;
		case 'l': su.link = (uint32_t)atoi(optarg); break;
		case 'D': su.downtime_ms = (uint32_t)atoi(optarg); break;
		case 't': su.timeout_s = (uint32_t)atoi(optarg); break;
		case 'n': repeats = (uint32_t)atoi(optarg); break;
		case 'o': out_path = optarg; break;
		case 'B': su_trace_dir = optarg; break;
		case 's': summary_only = true; break;
		case 'p':
			if (!parse_policies(optarg, su.pol_on))
				goto usage;
			break;
		case 'T':
			su.transport = T_COUNT;
			for (int t = 0; t < T_COUNT; t++)
				if (!strcmp(optarg, transport_names[t]))
					su.transport = (enum transport)t;
			if (su.transport == T_COUNT)
				goto usage;
			break;
		case 'd':
			nrates = 0;
			for (char *tok = strtok(optarg, ","); tok && nrates < BC_MAX_RATES;
			     tok = strtok(NULL, ","))
				rates[nrates++] = (uint32_t)atoi(tok);
			break;
		default:
			goto usage;
		}
	}
	if (summary_only) {
		summarize((const char *const *)argv + optind, argc - optind);
		return 0;
	}
	if (!repeats || repeats > BC_MAX_REPEATS || !nrates || !su.downtime_ms)
		goto usage;
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
	stats_print_machine(stdout);
	ferry_set_log(NULL, NULL, FERRY_LOG_WARN);
	for (uint32_t k = 0; k < repeats; k++) {
		for (uint32_t i = 0; i < nrates; i++) {
			for (int pp = 0; pp < P_COUNT; pp++) {
				int p = (pp + (int)(i + k)) % P_COUNT;
				struct result *x = &r[i][p][k];
				int rc;

				if (!su.pol_on[p])
					continue;
				rc = one(&su, (enum pol)p, rates[i], dir, x, &err);
				/* A guest that failed to boot (a busy host) gets
				 * one more chance; the migration is not retried. */
				if (rc) {
					fprintf(stderr, "%s at %u MiB/s: %s; once more\n",
						pol_names[p], rates[i], err.msg);
					rc = one(&su, (enum pol)p, rates[i], dir, x, &err);
				}
				if (rc) {
					fprintf(stderr, "%s at %u MiB/s: %s\n",
						pol_names[p], rates[i], err.msg);
					return 1;
				}
				print_run(out, &su, p, rates[i], x);
				printf("%-10s dirty %3u MiB/s: %s %6llu ms, downtime %4llu ms, "
				       "blackout %4llu ms, lost %5llu ms%s%s\n",
				       pol_names[p], rates[i],
				       x->completed ? "completed" : "ABORTED  ",
				       (unsigned long long)x->total_ms,
				       (unsigned long long)x->downtime_ms,
				       (unsigned long long)x->blackout_ms,
				       (unsigned long long)x->lost_ms,
				       x->postcopy ? ", post-copy" : "",
				       x->completed && !x->verified ? ", NOT VERIFIED" : "");
				fflush(stdout);
			}
		}
	}
	fclose(out);
	summarize(&out_path, 1);
	printf("\nresults: %s\n", out_path);
	tmpdir_remove(dir);
	return 0;
usage:
	fprintf(stderr, "usage: %s [-m MEM] [-w WS] [-l LINK_MIB_S] [-d RATES] "
		"[-D DOWNTIME_MS] [-p POLICY,...] [-T tunnel|handoff|direct] "
		"[-t TIMEOUT_S] [-n REPEATS] [-o FILE] [-B TRACE_DIR]\n"
		"       %s -s FILE...\n",
		argv[0], argv[0]);
	return 2;
}
