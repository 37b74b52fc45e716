/*
 * Migration benchmark: ferry against QEMU's own migration, side by side in
 * one run, on loopback or over an emulated link.
 *
 * Modes (-M, comma-separated):
 *   qemu-plain         QEMU to QEMU over TCP (what libvirt does by default)
 *   qemu-tls           the same with QEMU's TLS (tls-creds-x509)
 *   qemu-multifd       multifd, 2 channels
 *   qemu-multifd-zstd  multifd, 2 channels, zstd
 *   ferry-none|lz4|zstd|auto   ferry with that codec, 1 stream (none, and
 *                      auto on a link faster than LZ4, hand the connection
 *                      to QEMU)
 *   ferry-none-tunnel, ferry-auto-tunnel   the same, never handing off
 *   ferry-none-splice  ferry-none-tunnel with its raw frames spliced
 *                      (FERRY_TUNNEL_SPLICE), not copied through ferry
 *   ferry-tls          ferry, TLS 1.3 x509, auto codec
 *   ferry-psk          ferry, TLS 1.3 PSK, auto codec
 *   ferry-streams2|4   ferry, auto codec, 2 or 4 streams
 *   ferry-direct       ferry orchestrating a plain QEMU-to-QEMU stream
 * The QEMU modes are driven here over QMP, exactly as an operator would;
 * the ferry modes use libferry (receiver on a thread).
 *
 * Network (-N): "loopback", or "link": the destination QEMU and the
 * receiver live in a network namespace behind a veth pair rate-limited by
 * tbf (-R MBIT, 1000 by default), set up by scripts/bench-netns.sh and
 * always torn down.
 *
 * Every run gets fresh VMs (destination preallocated), the guest RAM of
 * both sides is compared byte for byte afterwards (destination left
 * paused), modes alternate within each repeat, and one warm-up round is
 * thrown away. Results: one JSON line per run (total, downtime, wire
 * bytes, CPU of both QEMUs and of ferry) and a CSV of progress samples,
 * in bench/results/; the summary table on stdout; bench/plot.sh draws
 * the plots.
 *
 * -G resumes the destination instead (ferry with paused=false; QEMU's own
 * modes with "cont" once it has loaded, as libvirt does) and measures what
 * the guest felt, from its heartbeats (tests/harness/view.h): the longest
 * time without progress (blackout), the time until it ran at half its
 * undisturbed rate again, and the work it lost. A running guest's RAM
 * cannot be compared whole, so such a run is verified by the guest's own
 * memory invariant (it beats on only while that holds) and by the RAM
 * above its working set, byte for byte. -B DIR (with -G) also writes each
 * run's heartbeats there, to plot.
 *
 * -H N runs N CPU hogs (busy loops) throughout, for the machine a
 * migration really gets: cores shared with other work. A run that fails
 * (a guest that does not boot, say) is retried once and logged.
 *
 * usage: bench_migrate [-m MEM_MIB] [-n REPEATS] [-p random|text|mix]
 *                      [-w WS_MIB] [-r RATE_MIB_S] [-M modes] [-N net]
 *                      [-R MBIT] [-H HOGS] [-G] [-B TRACE_DIR]
 *                      [-o BASENAME]
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/mig.h"
#include "common/util.h"
#include "ferry.h"
#include "tests/harness/link.h"
#include "tests/harness/pki.h"
#include "tests/harness/rx.h"
#include "tests/harness/stats.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/view.h"
#include "tests/harness/vm.h"

#define BENCH_MAX_REPEATS 20
#define BENCH_MAX_MODES 16
#define BENCH_READY_TIMEOUT_MS 300000
#define BENCH_POLL_MS 50
#define BENCH_QEMU_POLL_MS 10	/* QEMU modes: end-of-migration detection */
#define BENCH_MIGRATE_TIMEOUT_MS 600000
#define BENCH_MAX_SAMPLES 20000
/* -G: the guest's undisturbed rate is measured over this long before the
 * migration starts (the view needs VIEW_BASE_MIN_MS; the rest is margin
 * for a late first heartbeat on a busy host). */
#define BENCH_BASE_MS (VIEW_BASE_MIN_MS + 500)

enum kind { K_QEMU, K_FERRY };

struct mode {
	const char *name;
	enum kind kind;
	bool tls, psk, multifd, direct;
	const char *multifd_comp;
	enum ferry_codec codec;
	uint32_t streams;
	int level;
	bool no_handoff;	/* keep ferry's frames even when it could hand off */
	bool splice;		/* FERRY_TUNNEL_SPLICE: raw frames by splice,
				 * not through ferry's memory (to measure it) */
};

static const struct mode all_modes[] = {
	{ "qemu-plain", K_QEMU, false, false, false, false, NULL, 0, 0, 0, false, false },
	{ "qemu-tls", K_QEMU, true, false, false, false, NULL, 0, 0, 0, false, false },
	{ "qemu-multifd", K_QEMU, false, false, true, false, "none", 0, 0, 0, false, false },
	{ "qemu-multifd-zstd", K_QEMU, false, false, true, false, "zstd", 0, 0, 0, false, false },
	{ "ferry-none", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_NONE, 1, 0, false, false },
	{ "ferry-lz4", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_LZ4, 1, 0, false, false },
	{ "ferry-zstd", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_ZSTD, 1, 0, false, false },
	{ "ferry-auto", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_AUTO, 1, 0, false, false },
	{ "ferry-tls", K_FERRY, true, false, false, false, NULL, FERRY_CODEC_AUTO, 1, 0, false, false },
	{ "ferry-psk", K_FERRY, false, true, false, false, NULL, FERRY_CODEC_AUTO, 1, 0, false, false },
	{ "ferry-streams2", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_AUTO, 2, 0, false, false },
	{ "ferry-streams4", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_AUTO, 4, 0, false, false },
	{ "ferry-direct", K_FERRY, false, false, false, true, NULL, 0, 1, 0, false, false },
	{ "ferry-zstd3", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_ZSTD, 1, 3, false, false },
	{ "ferry-zstd3-s2", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_ZSTD, 2, 3, false, false },
	{ "ferry-auto3-s2", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_AUTO, 2, 3, false, false },
	{ "ferry-none-tunnel", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_NONE, 1, 0, true, false },
	{ "ferry-auto-tunnel", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_AUTO, 1, 0, true, false },
	{ "ferry-none-splice", K_FERRY, false, false, false, false, NULL, FERRY_CODEC_NONE, 1, 0, true, true },
};

static const char *const default_modes =
	"qemu-plain,qemu-tls,qemu-multifd,qemu-multifd-zstd,ferry-none,"
	"ferry-lz4,ferry-zstd,ferry-auto,ferry-tls,ferry-streams2";

struct sample {
	uint32_t t_ms;
	uint64_t remaining, transferred, wire;
};

struct run {
	uint64_t total_ms, downtime_ms, wire_bytes, qemu_cpu_ms, ferry_cpu_ms;
	bool ok;
	char transport[12];	/* ferry's choice: tunnel, handoff, direct */
	/* -G: the guest's view, when its heartbeats allowed one (viewed);
	 * half_rate_ms is UINT64_MAX when it never got back to half rate. */
	bool viewed;
	uint64_t blackout_ms, half_rate_ms, lost_ms;
};

struct bench {
	uint32_t mem_mib, repeats, ws_mib, rate, link_mbit;
	const char *fill;
	bool link;
	bool resume;		/* -G: destination resumed, the guest's view */
	const char *trace_dir;	/* -B: each run's heartbeats, or NULL */
	const char *dst_host;
	char dir[64], pki[160], psk[160];
	FILE *out, *csv;
	struct sample *samples;
	uint32_t nsamples;
	uint64_t t0_ms;
};

#define BENCH_MAX_HOGS 8
static pid_t hogs[BENCH_MAX_HOGS];
static uint32_t nhogs;

static void stop_hogs(void)
{
	for (uint32_t i = 0; i < nhogs; i++) {
		kill(hogs[i], SIGKILL);
		waitpid(hogs[i], NULL, 0);
	}
	nhogs = 0;
}

/* @n busy loops, each its own process, gone with this one. */
static int start_hogs(uint32_t n)
{
	for (; nhogs < n && nhogs < BENCH_MAX_HOGS; nhogs++) {
		pid_t pid = fork();

		if (pid < 0)
			return -errno;
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			for (volatile uint64_t x = 0;; x++)
				;
		}
		hogs[nhogs] = pid;
	}
	atexit(stop_hogs);
	return 0;
}

static void on_signal(int sig)
{
	(void)sig;
	exit(130);	/* atexit: namespace, VMs, scratch directory */
}

/* ---- measurements ---- */

static uint64_t proc_cpu_ms(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return 0;
	}
	fclose(f);
	p = strrchr(buf, ')');
	/* after ") ": state ppid ... field 14 utime, 15 stime */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
			 &ut, &st) != 2)
		return 0;
	return (ut + st) * 1000 / (unsigned long long)sysconf(_SC_CLK_TCK);
}

static uint64_t self_cpu_ms(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

static void add_sample(struct bench *b, uint64_t remaining,
		       uint64_t transferred, uint64_t wire)
{
	if (b->nsamples == BENCH_MAX_SAMPLES)
		return;
	b->samples[b->nsamples++] = (struct sample){
		.t_ms = (uint32_t)(ferry_now_ms() - b->t0_ms),
		.remaining = remaining, .transferred = transferred, .wire = wire,
	};
}

static void on_progress(const struct ferry_progress *p, void *opaque)
{
	add_sample(opaque, p->ram_remaining_bytes, p->ram_transferred_bytes,
		   p->wire_bytes);
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

/* ---- QEMU's own migration, over QMP ---- */

static int qcmd(struct qmp *q, const char *cmd, json_t *args,
		struct ferry_error *err)
{
	return qmp_execute(q, cmd, args, NULL, MIG_QMP_TIMEOUT_MS, err);
}

static int qemu_side_setup(struct bench *b, const struct mode *m, struct qmp *q,
			   bool server, struct ferry_error *err)
{
	struct mig_params p = { .max_bandwidth_bytes_per_s = MIG_BANDWIDTH_UNLIMITED,
				.downtime_ms = FERRY_DEFAULT_DOWNTIME_MS };
	int rc = mig_setup_qemu(q, &p, err);

	if (rc == 0 && m->multifd) {
		rc = qcmd(q, "migrate-set-capabilities", json_pack(
			"{s:[{s:s,s:b}]}", "capabilities", "capability", "multifd",
			"state", 1), err);
		if (rc == 0)
			rc = qcmd(q, "migrate-set-parameters", json_pack(
				"{s:i,s:s}", "multifd-channels", 2,
				"multifd-compression", m->multifd_comp), err);
	}
	if (rc == 0 && m->tls) {
		rc = qcmd(q, "object-add", json_pack(
			"{s:s,s:s,s:s,s:s,s:b}", "qom-type", "tls-creds-x509",
			"id", "tls0", "dir", b->pki, "endpoint",
			server ? "server" : "client", "verify-peer", 1), err);
		if (rc == 0)
			rc = qcmd(q, "migrate-set-parameters", server ?
				  json_pack("{s:s}", "tls-creds", "tls0") :
				  json_pack("{s:s,s:s}", "tls-creds", "tls0",
					    "tls-hostname", b->dst_host), err);
	}
	return rc;
}

static int run_qemu_mode(struct bench *b, const struct mode *m, struct vm *src,
			 struct vm *dst, struct run *res, struct ferry_error *err)
{
	struct qmp *qs = vm_qmp(src), *qd = vm_qmp(dst);
	struct mig_info info;
	char uri[128];
	uint64_t deadline;
	int rc;

	if (!qs || !qd)
		return ferry_error_set(err, -EIO, "harness QMP connection missing");
	b->t0_ms = ferry_now_ms();	/* set-up counts, as it does for ferry */
	rc = qemu_side_setup(b, m, qd, true, err);
	if (rc == 0)
		rc = qemu_side_setup(b, m, qs, false, err);
	if (rc)
		return rc;
	snprintf(uri, sizeof(uri), "tcp:%s:0", b->dst_host);
	rc = qcmd(qd, "migrate-incoming", json_pack("{s:s}", "uri", uri), err);
	if (rc == 0)
		rc = mig_query(qd, &info, err);
	if (rc)
		return rc;
	snprintf(uri, sizeof(uri), "tcp:%s:%llu", b->dst_host,
		 (unsigned long long)info.incoming_port);
	rc = qcmd(qs, "migrate", json_pack("{s:s}", "uri", uri), err);
	if (rc)
		return rc;
	deadline = b->t0_ms + BENCH_MIGRATE_TIMEOUT_MS;
	for (;;) {
		rc = mig_query(qs, &info, err);
		if (rc)
			return rc;
		add_sample(b, info.ram_remaining, info.ram_transferred,
			   info.ram_transferred);
		if (!mig_status_active(info.status))
			break;
		if (ferry_now_ms() > deadline)
			return ferry_error_set(err, -ETIMEDOUT, "migration too slow");
		usleep(BENCH_QEMU_POLL_MS * 1000);
	}
	if (strcmp(info.status, "completed"))
		return ferry_error_set(err, -EIO, "QEMU migration %s: %s",
				       info.status, info.error_desc);
	/* Wait until the destination finished loading. */
	for (int i = 0; i < 2000; i++) {
		struct mig_info di;

		if (mig_query(qd, &di, err) < 0)
			return -EIO;
		if (!mig_status_active(di.status))
			break;
		usleep(2000);
	}
	/* -G: run it, as libvirt does once QEMU's migration completed. The
	 * total includes this, as ferry's includes the FINISH that tells its
	 * receiver to resume the destination. */
	if (b->resume) {
		rc = qcmd(qd, "cont", NULL, err);
		if (rc)
			return rc;
	}
	/* Wall time from set-up to a loaded (or resumed) destination, like
	 * ferry's. */
	res->total_ms = ferry_now_ms() - b->t0_ms;
	res->downtime_ms = info.downtime_ms;
	res->wire_bytes = info.ram_transferred;
	return 0;
}

/* ---- ferry ---- */

static int run_ferry_mode(struct bench *b, const struct mode *m, struct vm *src,
			  struct vm *dst, struct run *res, struct ferry_error *err)
{
	struct ferry_receiver_opts ro = {
		.listen_host = b->dst_host, .qmp_path = vm_qmp_path(dst),
		.once = true,
		.tls = { .creds_dir = m->tls ? b->pki : NULL,
			 .psk_file = m->psk ? b->psk : NULL,
			 .insecure = true },	/* the emulated link is ours */
	};
	struct rx_thread rx;
	struct ferry_migrate_opts mo = {
		.qmp_path = vm_qmp_path(src), .to_host = b->dst_host,
		.paused = !b->resume, .direct = m->direct, .codec = m->codec,
		.streams = m->streams, .codec_level = m->level,
		.no_handoff = m->no_handoff,
		.progress = on_progress,
		.progress_opaque = b, .progress_interval_ms = BENCH_POLL_MS,
	};
	struct ferry_migration *mig;
	struct ferry_report rep;
	int rc;

	if (m->splice)
		setenv("FERRY_TUNNEL_SPLICE", "1", 1);
	else
		unsetenv("FERRY_TUNNEL_SPLICE");
	if (m->tls)
		mo.tls.creds_dir = b->pki;
	if (m->psk)
		mo.tls.psk_file = b->psk;
	mo.tls.insecure = true;
	rc = rx_thread_start(&rx, &ro, b->link ? LINK_NETNS : NULL, err);
	if (rc < 0)
		return rc;
	mo.to_port = rx.port;
	mig = ferry_migration_new(&mo, err);
	b->t0_ms = ferry_now_ms();
	rc = mig ? ferry_migration_run(mig, &rep, err) : -EINVAL;
	ferry_migration_free(mig);
	if (rc)
		rx_thread_stop(&rx);
	rx_thread_join(&rx);
	if (rc == 0 && rx.rc)
		*err = rx.err;
	if (rc == 0)
		rc = rx.rc;
	if (rc)
		return rc;
	res->total_ms = rep.total_ms;
	res->downtime_ms = rep.downtime_ms;
	res->wire_bytes = rep.wire_bytes;
	snprintf(res->transport, sizeof(res->transport), "%s", rep.transport);
	return 0;
}

static bool m_is_qemu(const struct mode *m)
{
	return m->kind == K_QEMU;
}

/* -G: the guest's view of the window [@from_us, now] into @res, its
 * undisturbed rate from the beats since @base_us; and its heartbeats to
 * -B's directory. A view the beats do not allow leaves res->viewed false. */
static void view_run(struct bench *b, const struct mode *m, struct vm *src,
		     struct vm *dst, uint64_t base_us, uint64_t from_us,
		     struct run *res)
{
	uint64_t to_us = vm_now_us();
	struct guest_view v;

	if (b->trace_dir) {
		char path[512];

		snprintf(path, sizeof(path), "%s/%s-%llu.beats", b->trace_dir,
			 m->name, (unsigned long long)from_us);
		if (guest_view_trace(src, dst, base_us, from_us, path) == 0)
			printf("guest's heartbeats: %s\n", path);
	}
	if (guest_view_of(src, dst, base_us, from_us, to_us, &v))
		return;
	res->viewed = true;
	guest_view_ms(&v, &res->blackout_ms, &res->half_rate_ms, &res->lost_ms);
}

/*
 * -G: after a migration to a resumed destination, first the guest's view
 * (dumping RAM with pmemsave stalls the guest, so nothing may do that
 * before), then the proof that it arrived whole: the destination beats on,
 * which the guest does only while its memory invariant holds, and the RAM
 * it never writes after READY equals the source's byte for byte.
 * Returns 0, or -errno with @err saying which check failed.
 */
static int judge_resumed(struct bench *b, const struct mode *m,
			 struct vm *src, struct vm *dst, uint64_t base_us,
			 uint64_t from_us, struct run *res,
			 struct ferry_error *err)
{
	usleep(VIEW_SETTLE_MS * 1000);
	view_run(b, m, src, dst, base_us, from_us, res);
	return guest_intact(b->dir, src, dst, err);
}

static int one_run(struct bench *b, const struct mode *m, struct run *res,
		   struct ferry_error *err)
{
	struct vm_config sc = { .mem_mib = b->mem_mib, .fill = b->fill,
				.ws_mib = b->ws_mib, .rate_mib_s = b->rate };
	struct vm_config dc = sc;
	struct vm *src = NULL, *dst = NULL;
	uint64_t c_src, c_dst, c_self, l0, base_us = 0, from_us = 0;
	int rc;

	memset(res, 0, sizeof(*res));
	dc.incoming = dc.prealloc = true;
	if (b->link)
		dc.netns = LINK_NETNS;
	b->nsamples = 0;
	rc = vm_start(&src, &sc, err);
	if (rc == 0)
		rc = vm_start(&dst, &dc, err);
	if (rc == 0)
		rc = vm_wait_ready(src, BENCH_READY_TIMEOUT_MS, err);
	if (rc == 0 && (vm_qmp_connect(src, err) || vm_qmp_connect(dst, err)))
		rc = -EIO;
	if (rc < 0)
		goto out;
	if (b->resume) {
		/* The guest's undisturbed rate, before anything happens. */
		base_us = vm_now_us();
		usleep(BENCH_BASE_MS * 1000);
		from_us = vm_now_us();
	}
	c_src = proc_cpu_ms(vm_pid(src));
	c_dst = proc_cpu_ms(vm_pid(dst));
	c_self = self_cpu_ms();
	l0 = link_bytes();
	rc = m->kind == K_QEMU ? run_qemu_mode(b, m, src, dst, res, err) :
				 run_ferry_mode(b, m, src, dst, res, err);
	res->qemu_cpu_ms = proc_cpu_ms(vm_pid(src)) - c_src +
			   proc_cpu_ms(vm_pid(dst)) - c_dst;
	res->ferry_cpu_ms = m->kind == K_FERRY ? self_cpu_ms() - c_self : 0;
	/* On the link, count what crossed it (QEMU's own counter does not
	 * see multifd's compression). */
	if (b->link && rc == 0)
		res->wire_bytes = link_bytes() - l0;
	if (rc < 0)
		goto out;
	rc = b->resume ? judge_resumed(b, m, src, dst, base_us, from_us, res, err) :
			 verify_ram(b, src, dst, err);
	res->ok = rc == 0;
out:
	vm_stop(src);
	vm_stop(dst);
	return rc;
}

/* ---- summary ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t median_of(struct run *runs, uint32_t n, size_t field)
{
	uint64_t v[BENCH_MAX_REPEATS];

	for (uint32_t i = 0; i < n; i++)
		v[i] = *(uint64_t *)((char *)&runs[i] + field);
	qsort(v, n, sizeof(*v), cmp_u64);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* -G: the median of one view field over the runs with a view into @buf,
 * "-" for none. */
static void view_median(const struct run *runs, uint32_t n, size_t field,
			char *buf, size_t len)
{
	uint64_t v[BENCH_MAX_REPEATS];
	uint32_t k = 0;

	for (uint32_t i = 0; i < n; i++)
		if (runs[i].viewed)
			v[k++] = *(const uint64_t *)((const char *)&runs[i] + field);
	if (k)
		snprintf(buf, len, "%llu", (unsigned long long)stats_median(v, k));
	else
		snprintf(buf, len, "-");
}

static int find_mode(const struct mode **modes, uint32_t n, const char *name)
{
	for (uint32_t i = 0; i < n; i++)
		if (!strcmp(modes[i]->name, name))
			return (int)i;
	return -1;
}

static void summarize(struct bench *b, const struct mode **modes, uint32_t nm,
		      struct run runs[][BENCH_MAX_REPEATS], const char *base)
{
	uint64_t tot[BENCH_MAX_MODES];
	int plain = find_mode(modes, nm, "qemu-plain");
	int qtls = find_mode(modes, nm, "qemu-tls");
	int mzstd = find_mode(modes, nm, "qemu-multifd-zstd");
	char path[300];
	FILE *tsv;

	snprintf(path, sizeof(path), "%s.summary.tsv", base);
	tsv = fopen(path, "w");
	printf("\n%u MiB guest, fill=%s, dirtying %u MiB at %u MiB/s, %s, "
	       "%u runs per mode (medians)\n\n", b->mem_mib, b->fill, b->ws_mib,
	       b->rate, b->link ? "1 Gbit/s-class emulated link" : "loopback",
	       b->repeats);
	if (b->link)
		printf("link: veth + tbf at %u Mbit/s\n\n", b->link_mbit);
	if (b->resume)
		printf("destination resumed; blackout: the longest time the guest "
		       "made no progress, work lost: against running undisturbed, "
		       "in time (from its heartbeats)\n\n");
	printf("| mode | total ms | downtime ms |%s wire MiB | QEMU CPU s | ferry CPU s | vs qemu-plain | vs qemu-tls | vs multifd-zstd |\n",
	       b->resume ? " blackout ms | work lost ms |" : "");
	printf("| --- | ---: | ---: |%s ---: | ---: | ---: | ---: | ---: | ---: |\n",
	       b->resume ? " ---: | ---: |" : "");
	for (uint32_t k = 0; k < nm; k++)
		tot[k] = median_of(runs[k], b->repeats, offsetof(struct run, total_ms));
	for (uint32_t k = 0; k < nm; k++) {
		char r1[16] = "", r2[16] = "", r3[16] = "", view[64] = "";

		if (plain >= 0)
			snprintf(r1, sizeof(r1), "%.2f", (double)tot[k] / (double)tot[plain]);
		if (qtls >= 0)
			snprintf(r2, sizeof(r2), "%.2f", (double)tot[k] / (double)tot[qtls]);
		if (mzstd >= 0)
			snprintf(r3, sizeof(r3), "%.2f", (double)tot[k] / (double)tot[mzstd]);
		if (b->resume) {
			char bo[24], lost[24];

			view_median(runs[k], b->repeats,
				    offsetof(struct run, blackout_ms), bo, sizeof(bo));
			view_median(runs[k], b->repeats,
				    offsetof(struct run, lost_ms), lost, sizeof(lost));
			snprintf(view, sizeof(view), " %s | %s |", bo, lost);
		}
		printf("| %s | %llu | %llu |%s %.0f | %.2f | %.2f | %s | %s | %s |\n",
		       modes[k]->name, (unsigned long long)tot[k],
		       (unsigned long long)median_of(runs[k], b->repeats,
						     offsetof(struct run, downtime_ms)),
		       view,
		       (double)median_of(runs[k], b->repeats,
					 offsetof(struct run, wire_bytes)) / (1 << 20),
		       (double)median_of(runs[k], b->repeats,
					 offsetof(struct run, qemu_cpu_ms)) / 1000.0,
		       (double)median_of(runs[k], b->repeats,
					 offsetof(struct run, ferry_cpu_ms)) / 1000.0,
		       r1, r2, r3);
		if (tsv)
			fprintf(tsv, "%s\t%llu\n", modes[k]->name,
				(unsigned long long)tot[k]);
	}
	if (tsv)
		fclose(tsv);
}

/* One run's line on the terminal. */
static void print_run(const struct bench *b, const struct mode *m,
		      uint32_t r, const struct run *x)
{
	char view[64] = "";

	if (x->viewed)
		snprintf(view, sizeof(view), ", blackout %4llu ms, lost %5llu ms",
			 (unsigned long long)x->blackout_ms,
			 (unsigned long long)x->lost_ms);
	else if (b->resume)
		snprintf(view, sizeof(view), ", no view");
	printf("%-18s %s %u: %6llu ms, downtime %4llu ms%s, wire %5.0f MiB, "
	       "%s verified\n", m->name, r ? "run" : "warm-up", r,
	       (unsigned long long)x->total_ms,
	       (unsigned long long)x->downtime_ms, view,
	       (double)x->wire_bytes / (1 << 20), b->resume ? "guest" : "RAM");
	fflush(stdout);
}

/* One run's JSON line; the guest's view only where it was measured. */
static void write_run(struct bench *b, const struct mode *m, uint32_t r,
		      const struct run *x)
{
	fprintf(b->out,
		"{\"mode\":\"%s\",\"run\":%u,\"net\":\"%s\",\"link_mbit\":%u,"
		"\"mem_mib\":%u,\"fill\":\"%s\",\"ws_mib\":%u,\"rate_mib_s\":%u,"
		"\"total_ms\":%llu,\"downtime_ms\":%llu,\"wire_bytes\":%llu,"
		"\"qemu_cpu_ms\":%llu,\"ferry_cpu_ms\":%llu,\"ram_verified\":%s,"
		"\"transport\":\"%s\"",
		m->name, r, b->link ? "link" : "loopback",
		b->link ? b->link_mbit : 0, b->mem_mib, b->fill, b->ws_mib,
		b->rate, (unsigned long long)x->total_ms,
		(unsigned long long)x->downtime_ms,
		(unsigned long long)x->wire_bytes,
		(unsigned long long)x->qemu_cpu_ms,
		(unsigned long long)x->ferry_cpu_ms,
		x->ok ? "true" : "false",
		m_is_qemu(m) ? "qemu" : x->transport);
	if (b->resume)
		fprintf(b->out, ",\"dst_resumed\":true");
	if (x->viewed) {
		fprintf(b->out, ",\"blackout_ms\":%llu,\"work_lost_ms\":%llu",
			(unsigned long long)x->blackout_ms,
			(unsigned long long)x->lost_ms);
		if (x->half_rate_ms != UINT64_MAX)
			fprintf(b->out, ",\"half_rate_ms\":%llu",
				(unsigned long long)x->half_rate_ms);
	}
	fprintf(b->out, "}\n");
	fflush(b->out);
}

int main(int argc, char **argv)
{
	static struct run runs[BENCH_MAX_MODES][BENCH_MAX_REPEATS];
	struct bench b = { .mem_mib = 1024, .repeats = 3, .fill = "mix",
			   .link_mbit = 1000, .dst_host = "127.0.0.1" };
	const struct mode *modes[BENCH_MAX_MODES];
	const char *mlist = default_modes, *net = "loopback", *base_opt = NULL;
	struct ferry_error err = { 0 };
	char base[256], path[300], *copy;
	uint32_t nm = 0, hog_count = 0;
	int opt;

	while ((opt = getopt(argc, argv, "m:n:p:f:w:r:M:N:R:H:GB:o:")) != -1) {
		switch (opt) {
		case 'm': b.mem_mib = (uint32_t)atoi(optarg); break;
		case 'n': b.repeats = (uint32_t)atoi(optarg); break;
		case 'p':
		case 'f': b.fill = optarg; break;
		case 'w': b.ws_mib = (uint32_t)atoi(optarg); break;
		case 'r': b.rate = (uint32_t)atoi(optarg); break;
		case 'M': mlist = optarg; break;
		case 'N': net = optarg; break;
		case 'R': b.link_mbit = (uint32_t)atoi(optarg); break;
		case 'H': hog_count = (uint32_t)atoi(optarg); break;
		case 'G': b.resume = true; break;
		case 'B': b.trace_dir = optarg; break;
		case 'o': base_opt = optarg; break;
		default:
			fprintf(stderr, "usage: %s [-m MEM_MIB] [-n REPEATS] "
				"[-p random|text|mix] [-w WS_MIB] [-r RATE] "
				"[-M modes] [-N loopback|link] [-R MBIT] [-H HOGS] "
				"[-G] [-B TRACE_DIR] [-o BASE]\n"
				"  -G  resume the destination and measure the "
				"guest's view (blackout, work lost)\n"
				"  -B  with -G, write each run's heartbeats into "
				"TRACE_DIR\n",
				argv[0]);
			return 2;
		}
	}
	if (b.repeats < 1 || b.repeats > BENCH_MAX_REPEATS) {
		fprintf(stderr, "repeats must be 1..%d\n", BENCH_MAX_REPEATS);
		return 2;
	}
	if (b.trace_dir && !b.resume) {
		fprintf(stderr, "-B needs -G (heartbeats of a resumed guest)\n");
		return 2;
	}
	copy = strdup(mlist);
	for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
		size_t i;

		for (i = 0; i < FERRY_ARRAY_SIZE(all_modes); i++)
			if (!strcmp(tok, all_modes[i].name))
				break;
		if (i == FERRY_ARRAY_SIZE(all_modes) || nm == BENCH_MAX_MODES) {
			fprintf(stderr, "unknown mode '%s'\n", tok);
			return 2;
		}
		modes[nm++] = &all_modes[i];
	}
	b.link = !strcmp(net, "link");
	if (!b.link && strcmp(net, "loopback")) {
		fprintf(stderr, "network must be loopback or link\n");
		return 2;
	}
	b.samples = calloc(BENCH_MAX_SAMPLES, sizeof(*b.samples));
	if (!b.samples || tmpdir_make(b.dir, sizeof(b.dir), "ferry-bench")) {
		perror("bench");
		return 1;
	}
	if (b.link) {
		signal(SIGINT, on_signal);
		signal(SIGTERM, on_signal);
		if (link_up(b.link_mbit)) {
			fprintf(stderr, "cannot set up the emulated link\n");
			return 1;
		}
		b.dst_host = LINK_DST_ADDR;
	}
	{
		const char *ips[] = { LINK_DST_ADDR, NULL };
		struct pki_opts po = { .server_ips = ips };

		snprintf(b.pki, sizeof(b.pki), "%s/pki", b.dir);
		snprintf(b.psk, sizeof(b.psk), "%s/keys.psk", b.dir);
		if (pki_generate(b.pki, &po, &err) ||
		    pki_write_psk(b.psk, "ferry-bench", &err)) {
			fprintf(stderr, "%s\n", err.msg);
			return 1;
		}
	}
	if (base_opt) {
		snprintf(base, sizeof(base), "%s", base_opt);
	} else {
		mkdir("bench/results", 0755);
		snprintf(base, sizeof(base), "bench/results/migrate-%s-%s-%ld",
			 b.link ? "link" : "loopback", b.fill, (long)time(NULL));
	}
	snprintf(path, sizeof(path), "%s.jsonl", base);
	b.out = fopen(path, "w");
	snprintf(path, sizeof(path), "%s.samples.csv", base);
	b.csv = fopen(path, "w");
	if (!b.out || !b.csv) {
		perror(base);
		return 1;
	}
	fprintf(b.csv, "mode,run,t_ms,remaining_bytes,transferred_bytes,wire_bytes\n");
	/* Before the CPU hogs start: the machine's speeds, not what they
	 * leave of it. */
	stats_print_machine(stdout);
	stats_write_machine_line(b.out);
	if (b.link)
		printf("# %u MiB guest, %s memory, link (veth + tbf) at %u "
		       "Mbit/s, %u CPU hog%s\n", b.mem_mib, b.fill, b.link_mbit,
		       hog_count, hog_count == 1 ? "" : "s");
	else
		printf("# %u MiB guest, %s memory, loopback, %u CPU hog%s\n",
		       b.mem_mib, b.fill, hog_count, hog_count == 1 ? "" : "s");
	if (hog_count > BENCH_MAX_HOGS || start_hogs(hog_count) < 0) {
		fprintf(stderr, "cannot start %u CPU hogs\n", hog_count);
		return 1;
	}
	ferry_set_log(NULL, NULL, getenv("FERRY_BENCH_LOG") ?
		      atoi(getenv("FERRY_BENCH_LOG")) : FERRY_LOG_WARN);
	/* Round 0 is the warm-up (page cache, first-touch costs). */
	for (uint32_t r = 0; r <= b.repeats; r++) {
		for (uint32_t k = 0; k < nm; k++) {
			/* Rotate which mode goes first in each round. */
			uint32_t md = (k + r) % nm;
			struct run x;

			if (one_run(&b, modes[md], &x, &err) < 0) {
				/* A guest that failed to boot, say: once more. */
				fprintf(stderr, "%s (round %u) failed, retrying "
					"once: %s\n", modes[md]->name, r, err.msg);
				if (one_run(&b, modes[md], &x, &err) < 0) {
					fprintf(stderr, "%s (round %u) failed again: "
						"%s\n", modes[md]->name, r, err.msg);
					return 1;
				}
			}
			print_run(&b, modes[md], r, &x);
			if (!r)
				continue;
			runs[md][r - 1] = x;
			write_run(&b, modes[md], r, &x);
			for (uint32_t i = 0; i < b.nsamples; i++)
				fprintf(b.csv, "%s,%u,%u,%llu,%llu,%llu\n",
					modes[md]->name, r, b.samples[i].t_ms,
					(unsigned long long)b.samples[i].remaining,
					(unsigned long long)b.samples[i].transferred,
					(unsigned long long)b.samples[i].wire);
			fflush(b.csv);
		}
	}
	fclose(b.out);
	fclose(b.csv);
	summarize(&b, modes, nm, runs, base);
	printf("\nresults: %s.jsonl, %s.samples.csv; plots: bench/plot.sh %s\n",
	       base, base, base);
	free(copy);
	free(b.samples);
	tmpdir_remove(b.dir);
	return 0;
}
