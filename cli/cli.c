/*
 * The ferry command: a thin layer over libferry, through its public API
 * only (include/ferry.h, ferry_policy.h), as any embedder would use it.
 *
 *   ferry migrate --qmp SRC_QMP --to HOST:PORT [options]
 *   ferry receive --listen HOST:PORT --qmp DST_QMP [--once] [--json]
 *   ferry serve --listen HOST:PORT --qmp-dir DIR [--max-migrations N]
 *   ferry serve --listen HOST:PORT --launch CMD --state-dir DIR --allow-dir DIR
 *   ferry launch-qemu NAME QMP_PATH   (the launcher ferry ships)
 *   ferry recover [--state-dir DIR]
 *
 * Exit status: 0 when the migration completed (or the receiver stopped
 * cleanly), 1 when it failed and the source guest runs (or was never
 * reached: nothing of it changed), 2 for a usage
 * error, 3 when it failed and the source guest is not confirmed running
 * (the destination may hold it: run ferry recover on both hosts).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <jansson.h>

#include "cli_config.h"
#include "ferry.h"
#include "ferry_policy.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Unix time, ms: what the JSON progress lines' timestamps say. */
static uint64_t unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct ferry_migration *g_mig;
static struct ferry_receiver *g_rx;

static void on_signal(int sig)
{
	(void)sig;
	if (g_mig)
		ferry_migration_cancel(g_mig);
	if (g_rx)
		ferry_receiver_stop(g_rx);
}

static void install_signals(void)
{
	struct sigaction sa = { .sa_handler = on_signal };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferry migrate --qmp SRC_QMP --to HOST:PORT[,HOST:PORT...] [options]\n"
		"       ferry receive --listen HOST:PORT --qmp DST_QMP [--once] [--json]\n"
		"       ferry serve --listen HOST:PORT --qmp-dir DIR [--max-migrations N]\n"
		"       ferry serve --listen HOST:PORT --launch CMD --state-dir DIR\n"
		"                   [--allow-dir DIR]...\n"
		"       ferry serve --config FILE [options]   (the file's keys are\n"
		"                   the long options; ferry-serve.conf(5))\n"
		"       ferry recover [--state-dir DIR] [--source-completed ID] [--wait SEC]\n"
		"       ferry list [--status S] [--vm NAME] [--since T] [--json]\n"
		"       ferry abort ID | force-complete ID | set-downtime ID MS\n"
		"       ferry evacuate --qmp-dir DIR --to HOST:PORT[,HOST:PORT...]\n"
		"                   [--parallel N] [--vms A,B] [migrate options]\n"
		"       ferry version\n"
		"\n"
		"migrate options:\n"
		"  --vm NAME           the VM's name, which a receiving service finds\n"
		"                      its destination QEMU by (DIR/NAME.qmp)\n"
		"  --paused            leave the destination guest paused\n"
		"  --cold, --offline   cold migration: pause the guest first, move it\n"
		"                      stopped (with --block, its disks too)\n"
		"  --direct            QEMU streams straight to the destination QEMU\n"
		"                      (ferry only orchestrates; the baseline)\n"
		"  --bandwidth MIB_S   cap the rate on the wire (default: unlimited)\n"
		"  --compress C        none|lz4|zstd[:LEVEL]|auto (default auto)\n"
		"  --streams N         spread the data over N TCP connections (1)\n"
		"  --block             migrate the guest's disks too (no shared storage)\n"
		"  --disks ID,...      only these disks (device ids); others are shared\n"
		"  --block-mode M      background (default) or write-blocking\n"
		"  --no-handoff        keep every byte in ferry's frames, even when\n"
		"                      QEMU could write to the connection itself\n"
		"  --tls-hostname NAME name the receiver's certificate must carry\n"
		"                      (default: the --to host)\n"
		"  --downtime-ms N     longest pause accepted at switchover (default %d)\n"
		"  --timeout-s N       what happens after N s: see --timeout-action\n"
		"  --timeout-action A  abort (default; the source runs on), postcopy,\n"
		"                      or pause (stop the source so it completes)\n"
		"  --policy P          predict (default), nova, or qemu\n"
		"  --postcopy M        never (default), auto, or after-pass=N\n"
		"  --no-postcopy-preempt  post-copy's page requests share the bulk\n"
		"                      stream (for an older receiver that refuses it)\n"
		"  --auto-converge     let QEMU throttle the guest's CPUs\n"
		"  --throttle-initial P, --throttle-increment P, --throttle-max P,\n"
		"  --throttle-tailslow QEMU's throttle parameters\n"
		"  --downtime-steps N  nova policy: steps up to --downtime-ms (10)\n"
		"  --downtime-delay S  nova policy: seconds per GiB between steps (75)\n"
		"  --events FILE       every decision as a JSON line\n"
		"  --json              print the final report as one JSON object\n"
		"  --quiet             no progress line\n"
		"  --progress P        line (at a terminal), json (one object a line\n"
		"                      on stderr, when it is not a terminal), or none\n"
		"\n"
		"serve (and receive) options:\n"
		"  --qmp-dir DIR       serve many VMs: the destination QEMU for VM NAME\n"
		"                      listens on DIR/NAME.qmp (serve)\n"
		"  --launch CMD        start each destination QEMU with CMD (e.g.\n"
		"                      'ferry launch-qemu') from the source's command line\n"
		"  --state-dir DIR     launched QEMUs' sockets and logs (serve --launch)\n"
		"  --allow-dir DIR     a directory the paths of a launched QEMU may name\n"
		"                      (repeat for more)\n"
		"  --max-migrations N  migrations at once (default %d); more are refused\n"
		"                      with 'busy' at once\n"
		"  --once              return after one migration (receive)\n"
		"  --ram-allocation-ratio R  memory overcommit: take guests up to\n"
		"                      MemTotal x R, less what is in use (default 1.0)\n"
		"  --parallel N        (evacuate) migrations at once (default 2)\n"
		"  --vms A,B           (evacuate) only these VMs of --qmp-dir\n"
		"  --status S          (list) running, completed, failed, cancelled,\n"
		"                      needs-recover or recovered\n"
		"  --since T           (list) started since T: 30m, 12h, 7d, or a UTC\n"
		"                      date YYYY-MM-DD[THH:MM[:SS]]\n"
		"  --wait SEC          (recover) how long a resumed post-copy waits\n"
		"                      for its receiver (default %d)\n"
		"\n"
		"  --log-level L       (all commands) error, warn, info (default) or\n"
		"                      debug\n"
		"  --state-dir DIR     (all commands) the migration journal, for\n"
		"                      ferry recover (default $FERRY_STATE_DIR or\n"
		"                      /var/lib/ferry)\n"
		"\n"
		"exit status: 0 done; 1 failed, the source guest runs (or was never\n"
		"reached); 2 usage; 3 failed, the guest's state needs ferry recover\n"
		"(see the message)\n"
		"\n"
		"TLS (both commands; the source is the client):\n"
		"  --tls-creds DIR     x509: ca-cert.pem, server-cert.pem, server-key.pem,\n"
		"                      client-cert.pem, client-key.pem (QEMU's layout)\n"
		"  --tls-psk FILE      pre-shared keys, lines of identity:hexkey\n"
		"  --tls-psk-identity ID  which key of FILE to use (migrate)\n"
		"  --insecure          allow plaintext on a non-loopback address\n",
		FERRY_DEFAULT_DOWNTIME_MS, FERRY_DEFAULT_MAX_MIGRATIONS,
		FERRY_DEFAULT_RECOVERY_WAIT_MS / 1000);
}

/* Parse "HOST:PORT" or "[V6]:PORT"; @host gets a copy of the host part. */
/* Why @s (the value of --@opt) is not HOST:PORT, on stderr. */
static void hostport_error(const char *cmd, const char *opt, const char *s)
{
	const char *colon = strrchr(s, ':');

	if (!colon)
		fprintf(stderr, "ferry %s: --%s '%s' lacks the port (HOST:PORT, "
			"or [IPv6]:PORT)\n", cmd, opt, s);
	else if (strchr(s, ':') != colon && s[0] != '[')
		fprintf(stderr, "ferry %s: --%s '%s': write an IPv6 address in "
			"brackets, [ADDRESS]:PORT\n", cmd, opt, s);
	else if (colon == s || (s[0] == '[' && colon == s + 2))
		fprintf(stderr, "ferry %s: --%s '%s' lacks the host\n", cmd, opt, s);
	else
		fprintf(stderr, "ferry %s: --%s '%s': the port must be a number "
			"from 0 to 65535\n", cmd, opt, s);
}

static int parse_hostport(const char *s, char *host, size_t len, uint16_t *port)
{
	const char *colon = strrchr(s, ':');
	char *end;
	unsigned long p;
	size_t hl;

	if (!colon || colon == s)
		return -EINVAL;
	hl = (size_t)(colon - s);
	if (s[0] == '[' && colon[-1] == ']') {
		s++;
		hl -= 2;
	}
	if (hl >= len)
		return -EINVAL;
	memcpy(host, s, hl);
	host[hl] = '\0';
	errno = 0;
	p = strtoul(colon + 1, &end, 10);
	if (errno || *end || p > 65535 || end == colon + 1)
		return -EINVAL;
	*port = (uint16_t)p;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || end == s || v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static void print_progress_json(const struct ferry_progress *p, void *opaque)
{
	json_t *o = json_pack("{s:i,s:s,s:I,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,"
			      "s:b,s:I,s:I,s:I,s:I}",
		"schema", FERRY_JSON_SCHEMA, "migration_id", p->migration_id,
		"timestamp", (json_int_t)unix_ms(),
		"phase", ferry_phase_name(p->phase),
		"elapsed_ms", (json_int_t)p->elapsed_ms,
		"pass", (json_int_t)p->pass,
		"ram_total_bytes", (json_int_t)p->ram_total_bytes,
		"ram_transferred_bytes", (json_int_t)p->ram_transferred_bytes,
		"ram_remaining_bytes", (json_int_t)p->ram_remaining_bytes,
		"stream_bytes", (json_int_t)p->stream_bytes,
		"wire_bytes", (json_int_t)p->wire_bytes,
		"throughput_bytes_per_s", (json_int_t)p->throughput_bytes_per_s,
		"postcopy", p->postcopy, "eta_ms", (json_int_t)p->eta_ms,
		"eta_error_ms", (json_int_t)p->eta_error_ms,
		"disk_total_bytes", (json_int_t)p->disk_total_bytes,
		"disk_done_bytes", (json_int_t)p->disk_done_bytes);
	char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

	(void)opaque;
	if (line)
		fprintf(stderr, "%s\n", line);
	free(line);
	json_decref(o);
}

/*
 * The terminal's progress line and the log share stderr: a log line first
 * erases the progress line it would be glued to (the next sample draws it
 * again below), and both write under one lock, from whichever thread.
 */
static pthread_mutex_t term_lock = PTHREAD_MUTEX_INITIALIZER;
static bool progress_drawn;	/* the cursor is at the end of a progress line */

static void end_progress_line(void)
{
	pthread_mutex_lock(&term_lock);
	if (progress_drawn)
		fputc('\n', stderr);
	progress_drawn = false;
	pthread_mutex_unlock(&term_lock);
}

static void cli_log(int level, const char *msg, void *opaque)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };
	struct timespec ts;
	struct tm tm;

	(void)opaque;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	pthread_mutex_lock(&term_lock);
	if (progress_drawn)
		fputs("\r\033[K", stderr);
	progress_drawn = false;
	fprintf(stderr, "%02d:%02d:%02d.%03ld ferry[%s]: %s\n", tm.tm_hour,
		tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
		names[level < 0 ? 0 : level > 3 ? 3 : level], msg);
	pthread_mutex_unlock(&term_lock);
}

static void print_progress(const struct ferry_progress *p, void *opaque)
{
	char line[160], eta[32] = "";

	(void)opaque;
	if (p->phase == FERRY_PHASE_DISKS) {
		snprintf(line, sizeof(line), "%-10s %5.1fs  disks %6llu of %6llu "
			 "MiB mirrored", ferry_phase_name(p->phase),
			 (double)p->elapsed_ms / 1000.0,
			 (unsigned long long)(p->disk_done_bytes >> 20),
			 (unsigned long long)(p->disk_total_bytes >> 20));
	} else {
		if (p->eta_ms)
			snprintf(eta, sizeof(eta), "~%.0fs left (+-%.0fs)",
				 (double)p->eta_ms / 1000.0,
				 (double)p->eta_error_ms / 1000.0);
		snprintf(line, sizeof(line), "%-10s %5.1fs  pass %-3llu  sent %6llu "
			 "MiB  remaining %6llu MiB  %7.1f MiB/s  %s%s",
			 ferry_phase_name(p->phase), (double)p->elapsed_ms / 1000.0,
			 (unsigned long long)p->pass,
			 (unsigned long long)(p->wire_bytes >> 20),
			 (unsigned long long)(p->ram_remaining_bytes >> 20),
			 (double)p->throughput_bytes_per_s / (1 << 20),
			 p->postcopy ? "post-copy  " : "", eta);
	}
	pthread_mutex_lock(&term_lock);
	fprintf(stderr, "\r\033[K%s", line);
	fflush(stderr);
	progress_drawn = true;
	pthread_mutex_unlock(&term_lock);
}

static void print_summary(const struct ferry_report *r)
{
	if (!r->completed) {
		/* The error itself went to stderr, once. */
		printf("migration %s; source guest: %s\n", r->status,
		       r->source_running ? "running, checked" :
		       r->source_untouched ? "untouched (ferry never reached "
		       "its QEMU)" :
		       "not confirmed running (ferry recover on both hosts)");
		return;
	}
	printf("migration %s (%s, codec %s, %u stream%s, TLS %s) in %llu ms: "
	       "downtime %llu ms, setup %llu ms, "
	       "%llu passes, %llu MiB stream, %llu MiB on the wire, %.1f MiB/s\n",
	       r->status, r->transport[0] ? r->transport : "tunnel", r->codec, r->streams,
	       r->streams == 1 ? "" : "s", r->tls,
	       (unsigned long long)r->total_ms, (unsigned long long)r->downtime_ms,
	       (unsigned long long)r->setup_ms, (unsigned long long)r->passes,
	       (unsigned long long)(r->ram_bytes >> 20),
	       (unsigned long long)(r->wire_bytes >> 20),
	       (double)r->throughput_bytes_per_s / (1 << 20));
	if (r->eta_off_ms[1] != FERRY_ETA_UNKNOWN) {
		static const char *const at[] = { "25%", "50%", "75%" };

		printf("time-left estimate, predicted total less actual:");
		for (int k = 0; k < 3; k++) {
			if (r->eta_off_ms[k] == FERRY_ETA_UNKNOWN)
				printf(" at %s none", at[k]);
			else
				printf(" at %s %+.1f s", at[k],
				       (double)r->eta_off_ms[k] / 1000.0);
		}
		printf("\n");
	}
	if (r->has_postcopy_blocktime)
		printf("post-copy: the destination guest's vCPUs waited %u ms "
		       "for pages in all (QEMU's postcopy-blocktime), besides "
		       "the %llu ms of downtime\n", r->postcopy_blocktime_ms,
		       (unsigned long long)r->downtime_ms);
	if (r->disks)
		printf("disks: %u, %llu MiB: %llu MiB data, %llu MiB zeroes, %llu "
		       "MiB on the wire; mirrors ready after %llu ms, synced at "
		       "the switchover in %llu ms\n", r->disks,
		       (unsigned long long)(r->disk_size_bytes >> 20),
		       (unsigned long long)(r->disk_data_bytes >> 20),
		       (unsigned long long)(r->disk_zero_bytes >> 20),
		       (unsigned long long)(r->disk_wire_bytes >> 20),
		       (unsigned long long)r->disk_mirror_ms,
		       (unsigned long long)r->disk_switchover_ms);
}

enum { OPT_QMP = 1, OPT_TO, OPT_PAUSED, OPT_JSON, OPT_DIRECT, OPT_BW,
       OPT_DOWNTIME, OPT_TIMEOUT, OPT_QUIET, OPT_LISTEN, OPT_ONCE, OPT_HELP,
       OPT_COMPRESS, OPT_STREAMS, OPT_NO_HANDOFF, OPT_TLS_CREDS, OPT_TLS_PSK, OPT_TLS_PSK_ID,
       OPT_TLS_HOST, OPT_INSECURE, OPT_TIMEOUT_ACTION, OPT_POLICY,
       OPT_POSTCOPY, OPT_AUTO_CONVERGE, OPT_THR_INIT, OPT_THR_INC, OPT_THR_MAX,
       OPT_THR_TAILSLOW, OPT_DT_STEPS, OPT_DT_DELAY, OPT_EVENTS, OPT_BLOCK,
       OPT_DISKS, OPT_BLOCK_MODE, OPT_VM, OPT_QMP_DIR, OPT_MAX_MIGRATIONS,
       OPT_LAUNCH, OPT_STATE_DIR, OPT_ALLOW_DIR, OPT_SOURCE_COMPLETED, OPT_WAIT, OPT_STATUS,
       OPT_SINCE, OPT_RAM_RATIO, OPT_PARALLEL, OPT_VMS, OPT_COLD,
       OPT_LOG_LEVEL, OPT_PROGRESS, OPT_NO_PREEMPT, OPT_MAX };

/* Which commands take an option (the rest refuse it, by name). */
enum {
	C_MIGRATE = 1 << 0, C_RECEIVE = 1 << 1, C_SERVE = 1 << 2,
	C_RECOVER = 1 << 3, C_LIST = 1 << 4, C_EVACUATE = 1 << 5,
	C_STEER = 1 << 6,
	C_ALL = 0x7f,
	C_MOVE = C_MIGRATE | C_EVACUATE,	/* a migration's options */
	C_RX = C_RECEIVE | C_SERVE,
};

static const unsigned opt_cmds[OPT_MAX] = {
	[OPT_QMP] = C_MIGRATE | C_RECEIVE, [OPT_TO] = C_MOVE,
	[OPT_PAUSED] = C_MOVE, [OPT_JSON] = C_MOVE | C_RX | C_LIST,
	[OPT_DIRECT] = C_MOVE, [OPT_BW] = C_MOVE, [OPT_DOWNTIME] = C_MOVE,
	[OPT_TIMEOUT] = C_MOVE, [OPT_QUIET] = C_MOVE | C_RX,
	[OPT_LISTEN] = C_RX, [OPT_ONCE] = C_RX, [OPT_HELP] = C_ALL,
	[OPT_COMPRESS] = C_MOVE, [OPT_STREAMS] = C_MOVE,
	[OPT_NO_HANDOFF] = C_MOVE, [OPT_TLS_CREDS] = C_MOVE | C_RX,
	[OPT_TLS_PSK] = C_MOVE | C_RX, [OPT_TLS_PSK_ID] = C_MOVE,
	[OPT_TLS_HOST] = C_MOVE, [OPT_INSECURE] = C_MOVE | C_RX,
	[OPT_TIMEOUT_ACTION] = C_MOVE, [OPT_POLICY] = C_MOVE,
	[OPT_POSTCOPY] = C_MOVE, [OPT_AUTO_CONVERGE] = C_MOVE,
	[OPT_THR_INIT] = C_MOVE, [OPT_THR_INC] = C_MOVE, [OPT_THR_MAX] = C_MOVE,
	[OPT_THR_TAILSLOW] = C_MOVE, [OPT_DT_STEPS] = C_MOVE,
	[OPT_DT_DELAY] = C_MOVE, [OPT_EVENTS] = C_MOVE, [OPT_BLOCK] = C_MOVE,
	[OPT_DISKS] = C_MOVE, [OPT_BLOCK_MODE] = C_MOVE,
	[OPT_VM] = C_MIGRATE | C_LIST, [OPT_QMP_DIR] = C_SERVE | C_EVACUATE,
	[OPT_MAX_MIGRATIONS] = C_RX, [OPT_LAUNCH] = C_SERVE,
	[OPT_STATE_DIR] = C_ALL, [OPT_ALLOW_DIR] = C_SERVE,
	[OPT_SOURCE_COMPLETED] = C_RECOVER, [OPT_WAIT] = C_RECOVER,
	[OPT_STATUS] = C_LIST, [OPT_SINCE] = C_LIST, [OPT_RAM_RATIO] = C_RX,
	[OPT_PARALLEL] = C_EVACUATE, [OPT_VMS] = C_EVACUATE,
	[OPT_COLD] = C_MOVE, [OPT_LOG_LEVEL] = C_ALL,
	[OPT_PROGRESS] = C_MIGRATE, [OPT_NO_PREEMPT] = C_MOVE,
};

/* The values a choice option takes, for its error message. */
static const char *choices(int opt)
{
	switch (opt) {
	case OPT_BLOCK_MODE: return "background, write-blocking";
	case OPT_TIMEOUT_ACTION: return "abort, postcopy, pause";
	case OPT_POLICY: return "predict, nova, qemu";
	case OPT_POSTCOPY: return "never, auto, after-pass=N";
	case OPT_LOG_LEVEL: return "error, warn, info, debug";
	case OPT_PROGRESS: return "line, json, none";
	default: return NULL;
	}
}

static const struct option long_opts[] = {
	{ "qmp", required_argument, NULL, OPT_QMP },
	{ "to", required_argument, NULL, OPT_TO },
	{ "paused", no_argument, NULL, OPT_PAUSED },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "direct", no_argument, NULL, OPT_DIRECT },
	{ "bandwidth", required_argument, NULL, OPT_BW },
	{ "downtime-ms", required_argument, NULL, OPT_DOWNTIME },
	{ "timeout-s", required_argument, NULL, OPT_TIMEOUT },
	{ "quiet", no_argument, NULL, OPT_QUIET },
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "once", no_argument, NULL, OPT_ONCE },
	{ "help", no_argument, NULL, OPT_HELP },
	{ "compress", required_argument, NULL, OPT_COMPRESS },
	{ "streams", required_argument, NULL, OPT_STREAMS },
	{ "no-handoff", no_argument, NULL, OPT_NO_HANDOFF },
	{ "tls-creds", required_argument, NULL, OPT_TLS_CREDS },
	{ "tls-psk", required_argument, NULL, OPT_TLS_PSK },
	{ "tls-psk-identity", required_argument, NULL, OPT_TLS_PSK_ID },
	{ "tls-hostname", required_argument, NULL, OPT_TLS_HOST },
	{ "insecure", no_argument, NULL, OPT_INSECURE },
	{ "timeout-action", required_argument, NULL, OPT_TIMEOUT_ACTION },
	{ "policy", required_argument, NULL, OPT_POLICY },
	{ "postcopy", required_argument, NULL, OPT_POSTCOPY },
	{ "no-postcopy-preempt", no_argument, NULL, OPT_NO_PREEMPT },
	{ "auto-converge", no_argument, NULL, OPT_AUTO_CONVERGE },
	{ "throttle-initial", required_argument, NULL, OPT_THR_INIT },
	{ "throttle-increment", required_argument, NULL, OPT_THR_INC },
	{ "throttle-max", required_argument, NULL, OPT_THR_MAX },
	{ "throttle-tailslow", no_argument, NULL, OPT_THR_TAILSLOW },
	{ "downtime-steps", required_argument, NULL, OPT_DT_STEPS },
	{ "downtime-delay", required_argument, NULL, OPT_DT_DELAY },
	{ "events", required_argument, NULL, OPT_EVENTS },
	{ "block", no_argument, NULL, OPT_BLOCK },
	{ "disks", required_argument, NULL, OPT_DISKS },
	{ "block-mode", required_argument, NULL, OPT_BLOCK_MODE },
	{ "vm", required_argument, NULL, OPT_VM },
	{ "qmp-dir", required_argument, NULL, OPT_QMP_DIR },
	{ "max-migrations", required_argument, NULL, OPT_MAX_MIGRATIONS },
	{ "launch", required_argument, NULL, OPT_LAUNCH },
	{ "state-dir", required_argument, NULL, OPT_STATE_DIR },
	{ "allow-dir", required_argument, NULL, OPT_ALLOW_DIR },
	{ "source-completed", required_argument, NULL, OPT_SOURCE_COMPLETED },
	{ "wait", required_argument, NULL, OPT_WAIT },
	{ "status", required_argument, NULL, OPT_STATUS },
	{ "since", required_argument, NULL, OPT_SINCE },
	{ "ram-allocation-ratio", required_argument, NULL, OPT_RAM_RATIO },
	{ "parallel", required_argument, NULL, OPT_PARALLEL },
	{ "vms", required_argument, NULL, OPT_VMS },
	{ "cold", no_argument, NULL, OPT_COLD },
	{ "offline", no_argument, NULL, OPT_COLD },	/* Nova's word */
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "progress", required_argument, NULL, OPT_PROGRESS },
	{ 0 },
};

struct cli {
	const char *qmp, *to, *listen, *vm, *qmp_dir, *launch, *state_dir;
	const char *source_completed;
	const char *status, *since;	/* list */
	char **args;			/* the words after the options */
	int nargs;
	char allow_dirs[4096];
	bool paused, json, direct, quiet, once, no_handoff, cold, no_preempt;
	bool seen[OPT_MAX];		/* the options given */
	uint32_t bw_mib_s, downtime_ms, timeout_s, streams, max_migrations;
	uint32_t wait_s, parallel;
	double ram_ratio;
	const char *vms;
	const char *progress;		/* line, json, none; NULL: by stderr */
	enum ferry_codec codec;
	int codec_level;
	struct ferry_tls_opts tls;
	struct ferry_converge_opts conv;
	struct ferry_block_opts block;
};

/* One command's --help: its synopsis and only the options it takes. */
static const struct {
	const char *cmd, *synopsis;
	unsigned bit;
} cmd_help[] = {
	{ "migrate", "ferry migrate --qmp SRC_QMP --to HOST:PORT[,HOST:PORT...] "
	  "[options]", C_MIGRATE },
	{ "receive", "ferry receive --listen HOST:PORT --qmp DST_QMP [--once] "
	  "[options]", C_RECEIVE },
	{ "serve", "ferry serve --listen HOST:PORT (--qmp-dir DIR | --launch CMD "
	  "--state-dir DIR) [options]\n       ferry serve --config FILE [options]",
	  C_SERVE },
	{ "recover", "ferry recover [--source-completed ID] [--wait SEC] "
	  "[--state-dir DIR]", C_RECOVER },
	{ "list", "ferry list [--status S] [--vm NAME] [--since T] [--json]",
	  C_LIST },
	{ "evacuate", "ferry evacuate --qmp-dir DIR --to HOST:PORT[,HOST:PORT...] "
	  "[--parallel N] [--vms A,B] [options]", C_EVACUATE },
	{ "abort", "ferry abort ID [--state-dir DIR]", C_STEER },
	{ "force-complete", "ferry force-complete ID [--state-dir DIR]", C_STEER },
	{ "set-downtime", "ferry set-downtime ID MS [--state-dir DIR]", C_STEER },
};

static const struct {
	int opt;
	const char *arg, *what;
} opt_help[] = {
	{ OPT_QMP, "PATH", "the source QEMU's QMP socket (receive: the destination's)" },
	{ OPT_TO, "HOST:PORT,...", "the receiver(s); with several, the one with "
	  "the most usable memory that takes it" },
	{ OPT_VM, "NAME", "the VM's name (list: only its migrations)" },
	{ OPT_PAUSED, NULL, "leave the destination guest paused" },
	{ OPT_COLD, NULL, "pause the guest first and move it stopped" },
	{ OPT_DIRECT, NULL, "QEMU streams straight to the destination QEMU" },
	{ OPT_BW, "MIB_S", "cap the rate on the wire" },
	{ OPT_COMPRESS, "C", "none, lz4, zstd[:LEVEL] or auto (default)" },
	{ OPT_STREAMS, "N", "spread the data over N connections (1)" },
	{ OPT_NO_HANDOFF, NULL, "keep every byte in ferry's frames" },
	{ OPT_BLOCK, NULL, "migrate the guest's disks too" },
	{ OPT_DISKS, "ID,...", "only these disks; the others are shared" },
	{ OPT_BLOCK_MODE, "M", "background (default) or write-blocking" },
	{ OPT_DOWNTIME, "N", "longest pause at the switchover, ms (300)" },
	{ OPT_TIMEOUT, "N", "after N s, do what --timeout-action says" },
	{ OPT_TIMEOUT_ACTION, "A", "abort (default), postcopy or pause" },
	{ OPT_POLICY, "P", "predict (default), nova or qemu" },
	{ OPT_POSTCOPY, "M", "never (default), auto or after-pass=N" },
	{ OPT_AUTO_CONVERGE, NULL, "let QEMU throttle the guest's CPUs" },
	{ OPT_THR_INIT, "P", "QEMU's initial throttle, percent" },
	{ OPT_THR_INC, "P", "QEMU's throttle increment, percent" },
	{ OPT_THR_MAX, "P", "QEMU's largest throttle, percent" },
	{ OPT_THR_TAILSLOW, NULL, "QEMU's tail-slow throttling" },
	{ OPT_DT_STEPS, "N", "nova policy: steps up to --downtime-ms (10)" },
	{ OPT_DT_DELAY, "S", "nova policy: seconds per GiB between steps (75)" },
	{ OPT_EVENTS, "FILE", "every decision as a JSON line" },
	{ OPT_PROGRESS, "P", "line (terminal), json (otherwise) or none" },
	{ OPT_PARALLEL, "N", "migrations at once (2)" },
	{ OPT_VMS, "A,B", "only these VMs of --qmp-dir" },
	{ OPT_LISTEN, "HOST:PORT", "where sources connect" },
	{ OPT_ONCE, NULL, "return after one migration" },
	{ OPT_QMP_DIR, "DIR", "the VMs' QMP sockets, DIR/NAME.qmp" },
	{ OPT_LAUNCH, "CMD", "launch each destination QEMU with CMD" },
	{ OPT_ALLOW_DIR, "DIR", "where a launched QEMU's paths may point (repeat)" },
	{ OPT_MAX_MIGRATIONS, "N", "migrations at once (4)" },
	{ OPT_RAM_RATIO, "R", "memory overcommit (1.0)" },
	{ OPT_TLS_CREDS, "DIR", "x509 credentials (QEMU's layout)" },
	{ OPT_TLS_PSK, "FILE", "pre-shared keys, identity:hexkey lines" },
	{ OPT_TLS_PSK_ID, "ID", "which key of the PSK file" },
	{ OPT_TLS_HOST, "NAME", "the name the receiver's certificate carries" },
	{ OPT_INSECURE, NULL, "allow plaintext off loopback" },
	{ OPT_SOURCE_COMPLETED, "ID", "the source host said its QEMU completed" },
	{ OPT_WAIT, "SEC", "how long a resumed post-copy waits (60)" },
	{ OPT_STATUS, "S", "running, completed, failed, cancelled, "
	  "needs-recover or recovered" },
	{ OPT_SINCE, "T", "30m, 12h, 7d or YYYY-MM-DD[THH:MM[:SS]]" },
	{ OPT_JSON, NULL, "JSON output" },
	{ OPT_QUIET, NULL, "no progress" },
	{ OPT_STATE_DIR, "DIR", "the journal (default $FERRY_STATE_DIR or "
	  "/var/lib/ferry)" },
	{ OPT_LOG_LEVEL, "L", "error, warn, info (default) or debug" },
};

static const char *opt_name(int opt)
{
	for (const struct option *o = long_opts; o->name; o++)
		if (o->val == opt)
			return o->name;
	return "?";
}

static void usage_cmd(FILE *f, const char *cmd)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cmd_help); i++)
		if (!strcmp(cmd_help[i].cmd, cmd))
			break;
	if (i == ARRAY_SIZE(cmd_help)) {
		usage(f);
		return;
	}
	fprintf(f, "usage: %s\n\noptions:\n", cmd_help[i].synopsis);
	for (size_t j = 0; j < ARRAY_SIZE(opt_help); j++) {
		char left[48];

		if (!(opt_cmds[opt_help[j].opt] & cmd_help[i].bit))
			continue;
		snprintf(left, sizeof(left), "--%s%s%s", opt_name(opt_help[j].opt),
			 opt_help[j].arg ? " " : "", opt_help[j].arg ? opt_help[j].arg : "");
		fprintf(f, "  %-26s %s\n", left, opt_help[j].what);
	}
	if (cmd_help[i].bit & C_RX)
		fprintf(f, "  %-26s %s\n", "--config FILE",
			"settings from a file (ferry-serve.conf(5))");
	fprintf(f, "\nexit status: 0 done; 1 failed, the source guest runs "
		"(or was never reached); 2 usage; 3 the guest's state needs ferry recover.\nman ferry "
		"for the whole story.\n");
}

/* Edit distance of two short words (for "did you mean"). */
static size_t distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];

	if (la >= 63 || lb >= 63)
		return 64;
	for (size_t j = 0; j <= lb; j++)
		prev[j] = j;
	for (size_t i = 1; i <= la; i++) {
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
			size_t del = prev[j] + 1, ins = cur[j - 1] + 1;

			cur[j] = sub < del ? (sub < ins ? sub : ins) :
				 (del < ins ? del : ins);
		}
		memcpy(prev, cur, (lb + 1) * sizeof(prev[0]));
	}
	return prev[lb];
}

/* One line for an option getopt did not take: unknown (with the nearest
 * one, when one is near), or lacking its value. */
static void bad_option(const char *cmd, const char *word)
{
	char name[64];
	const char *best = NULL;
	size_t best_d = 3;

	snprintf(name, sizeof(name), "%s", word + (word[0] == '-') +
		 (word[0] == '-' && word[1] == '-'));
	if (strchr(name, '='))
		*strchr(name, '=') = '\0';
	for (const struct option *o = long_opts; o->name; o++) {
		size_t d = distance(name, o->name);

		if (d == 0) {
			fprintf(stderr, "ferry %s: --%s needs a value\n", cmd, o->name);
			return;
		}
		if (d < best_d) {
			best_d = d;
			best = o->name;
		}
	}
	fprintf(stderr, "ferry %s: unknown option '%s'%s%s%s (ferry %s --help)\n",
		cmd, word, best ? "; did you mean --" : "", best ? best : "",
		best ? "?" : "", cmd);
}

static int parse_args(int argc, char **argv, struct cli *c)
{
	const char *cmd = argv[0];
	int opt, li = -1;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "h", long_opts, &li)) != -1) {
		if (opt > 0 && opt < OPT_MAX)
			c->seen[opt] = true;
		switch (opt) {
		case OPT_QMP: c->qmp = optarg; break;
		case OPT_VM: c->vm = optarg; break;
		case OPT_QMP_DIR: c->qmp_dir = optarg; break;
		case OPT_LAUNCH: c->launch = optarg; break;
		case OPT_STATE_DIR: c->state_dir = optarg; break;
		case OPT_SOURCE_COMPLETED: c->source_completed = optarg; break;
		case OPT_STATUS: c->status = optarg; break;
		case OPT_VMS: c->vms = optarg; break;
		case OPT_COLD: c->cold = true; break;
		case OPT_PROGRESS:
			if (strcmp(optarg, "line") && strcmp(optarg, "json") &&
			    strcmp(optarg, "none"))
				goto bad_choice;
			c->progress = optarg;
			break;
		case OPT_PARALLEL:
			if (parse_u32(optarg, &c->parallel) < 0 || !c->parallel ||
			    c->parallel > FERRY_EVACUATE_PARALLEL_MAX)
				goto bad_number;
			break;
		case OPT_RAM_RATIO: {
			char *end;

			c->ram_ratio = strtod(optarg, &end);
			if (end == optarg || *end || !(c->ram_ratio > 0) ||
			    c->ram_ratio > 100)
				goto bad_number;
			break;
		}
		case OPT_SINCE: c->since = optarg; break;
		case OPT_ALLOW_DIR: {
			size_t n = strlen(c->allow_dirs);

			if (optarg[0] != '/' || strchr(optarg, ':') ||
			    n + strlen(optarg) + 2 > sizeof(c->allow_dirs)) {
				fprintf(stderr, "ferry: --allow-dir %s: an absolute "
					"path without ':' is needed\n", optarg);
				return -EINVAL;
			}
			snprintf(c->allow_dirs + n, sizeof(c->allow_dirs) - n,
				 "%s%s", n ? ":" : "", optarg);
			break;
		}
		case OPT_WAIT:
			if (parse_u32(optarg, &c->wait_s) < 0 || !c->wait_s ||
			    c->wait_s > 24 * 3600)
				goto bad_number;
			break;
		case OPT_MAX_MIGRATIONS:
			if (parse_u32(optarg, &c->max_migrations) < 0 ||
			    !c->max_migrations)
				goto bad_number;
			break;
		case OPT_TO: c->to = optarg; break;
		case OPT_LISTEN: c->listen = optarg; break;
		case OPT_PAUSED: c->paused = true; break;
		case OPT_JSON: c->json = true; break;
		case OPT_DIRECT: c->direct = true; break;
		case OPT_QUIET: c->quiet = true; break;
		case OPT_ONCE: c->once = true; break;
		case OPT_TLS_CREDS: c->tls.creds_dir = optarg; break;
		case OPT_TLS_PSK: c->tls.psk_file = optarg; break;
		case OPT_TLS_PSK_ID: c->tls.psk_identity = optarg; break;
		case OPT_TLS_HOST: c->tls.hostname = optarg; break;
		case OPT_INSECURE: c->tls.insecure = true; break;
		case OPT_NO_HANDOFF: c->no_handoff = true; break;
		case OPT_NO_PREEMPT: c->no_preempt = true; break;
		case OPT_BLOCK: c->block.enabled = true; break;
		case OPT_DISKS: c->block.enabled = true; c->block.disks = optarg; break;
		case OPT_BLOCK_MODE:
			c->block.enabled = true;
			if (!strcmp(optarg, "background"))
				c->block.mode = FERRY_BLOCK_BACKGROUND;
			else if (!strcmp(optarg, "write-blocking"))
				c->block.mode = FERRY_BLOCK_WRITE_BLOCKING;
			else
				goto bad_choice;
			break;
		case OPT_COMPRESS: {
			struct ferry_error e = { 0 };

			if (ferry_codec_parse(optarg, &c->codec, &c->codec_level,
					      &e) < 0) {
				fprintf(stderr, "ferry: --compress: %s\n", e.msg);
				return -EINVAL;
			}
			break;
		}
		case OPT_TIMEOUT_ACTION:
			if (!strcmp(optarg, "abort"))
				c->conv.timeout_action = FERRY_TIMEOUT_ABORT;
			else if (!strcmp(optarg, "postcopy"))
				c->conv.timeout_action = FERRY_TIMEOUT_POSTCOPY;
			else if (!strcmp(optarg, "pause"))
				c->conv.timeout_action = FERRY_TIMEOUT_PAUSE;
			else
				goto bad_choice;
			break;
		case OPT_POLICY:
			c->conv.policy = ferry_policy_builtin(optarg);
			if (!c->conv.policy)
				goto bad_choice;
			break;
		case OPT_POSTCOPY:
			if (!strcmp(optarg, "never")) {
				c->conv.postcopy = FERRY_POSTCOPY_NEVER;
			} else if (!strcmp(optarg, "auto")) {
				c->conv.postcopy = FERRY_POSTCOPY_AUTO;
			} else if (!strncmp(optarg, "after-pass=", 11) &&
				   parse_u32(optarg + 11, &c->conv.postcopy_after_pass) == 0) {
				c->conv.postcopy = FERRY_POSTCOPY_AFTER_PASS;
			} else {
				goto bad_choice;
			}
			break;
		case OPT_AUTO_CONVERGE: c->conv.auto_converge = true; break;
		case OPT_THR_TAILSLOW: c->conv.throttle_tailslow = true; break;
		case OPT_THR_INIT:
		case OPT_THR_INC:
		case OPT_THR_MAX: {
			uint32_t v;

			if (parse_u32(optarg, &v) < 0 || v < 1 || v > 99)
				goto bad_number;
			if (opt == OPT_THR_INIT)
				c->conv.throttle_initial_pct = v;
			else if (opt == OPT_THR_INC)
				c->conv.throttle_increment_pct = v;
			else
				c->conv.throttle_max_pct = v;
			break;
		}
		case OPT_DT_STEPS:
			if (parse_u32(optarg, &c->conv.downtime_steps) < 0 ||
			    !c->conv.downtime_steps)
				goto bad_number;
			break;
		case OPT_DT_DELAY:
			if (parse_u32(optarg, &c->conv.downtime_step_delay_s_per_gib) < 0 ||
			    !c->conv.downtime_step_delay_s_per_gib)
				goto bad_number;
			break;
		case OPT_EVENTS: c->conv.events_path = optarg; break;
		case OPT_STREAMS:
			if (parse_u32(optarg, &c->streams) < 0 || !c->streams)
				goto bad_number;
			break;
		case OPT_BW:
			if (parse_u32(optarg, &c->bw_mib_s) < 0 || !c->bw_mib_s)
				goto bad_number;
			break;
		case OPT_DOWNTIME:
			if (parse_u32(optarg, &c->downtime_ms) < 0 || !c->downtime_ms)
				goto bad_number;
			break;
		case OPT_TIMEOUT:
			if (parse_u32(optarg, &c->timeout_s) < 0)
				goto bad_number;
			break;
		case 'h':
		case OPT_HELP:
			usage_cmd(stdout, cmd);
			exit(0);
		case OPT_LOG_LEVEL: {
			static const char *const levels[] = { "error", "warn",
							      "info", "debug" };
			int l = -1;

			for (int i = 0; i < 4; i++)
				if (!strcmp(optarg, levels[i]))
					l = i;
			if (l < 0)
				goto bad_choice;
			ferry_set_log(cli_log, NULL, l);
			break;
		}
		default:
			bad_option(cmd, argv[optind - 1]);
			return -EINVAL;
		}
		li = -1;
	}
	c->args = argv + optind;
	c->nargs = argc - optind;
	return 0;

bad_number:
	fprintf(stderr, "ferry %s: --%s: '%s' is not a valid number here (see "
		"ferry %s --help for its range)\n", cmd,
		li >= 0 ? long_opts[li].name : "?", optarg, cmd);
	return -EINVAL;
bad_choice:
	fprintf(stderr, "ferry %s: --%s: '%s' is not one of: %s\n", cmd,
		li >= 0 ? long_opts[li].name : "?", optarg,
		li >= 0 && choices(long_opts[li].val) ? choices(long_opts[li].val) :
		"(see --help)");
	return -EINVAL;
}

/* The options given that @cmd does not take: each named, one line. */
static int check_cmd_options(const struct cli *c, const char *cmd)
{
	static const struct { const char *name; unsigned bit; } cmds[] = {
		{ "migrate", C_MIGRATE }, { "receive", C_RECEIVE },
		{ "serve", C_SERVE }, { "recover", C_RECOVER }, { "list", C_LIST },
		{ "evacuate", C_EVACUATE }, { "abort", C_STEER },
		{ "force-complete", C_STEER }, { "set-downtime", C_STEER },
	};
	unsigned bit = 0;
	int bad = 0;

	for (size_t i = 0; i < ARRAY_SIZE(cmds); i++)
		if (!strcmp(cmds[i].name, cmd))
			bit = cmds[i].bit;
	if (!bit)
		return 0;	/* an unknown command is said elsewhere */
	for (const struct option *o = long_opts; o->name; o++) {
		if (!c->seen[o->val] || (opt_cmds[o->val] & bit))
			continue;
		fprintf(stderr, "ferry %s: --%s is not an option of %s (see ferry "
			"%s --help)\n", cmd, o->name, cmd, cmd);
		bad = 1;
	}
	return bad ? -EINVAL : 0;
}

/* --state-dir, else $FERRY_STATE_DIR, else the system's. */
static const char *state_dir(const struct cli *c)
{
	const char *env = getenv("FERRY_STATE_DIR");

	if (c->state_dir)
		return c->state_dir;
	return env && env[0] ? env : FERRY_DEFAULT_STATE_DIR;
}

/* The options of `ferry migrate` (and of each of evacuate's). */
static void migrate_opts(const struct cli *c, struct ferry_migrate_opts *o)
{
	o->paused = c->paused;
	o->direct = c->direct;
	o->max_bandwidth_bytes_per_s = (uint64_t)c->bw_mib_s << 20;
	o->downtime_ms = c->downtime_ms;
	o->timeout_s = c->timeout_s;
	o->codec = c->codec;
	o->codec_level = c->codec_level;
	o->streams = c->streams;
	o->no_handoff = c->no_handoff;
	o->no_postcopy_preempt = c->no_preempt;
	o->tls = c->tls;
	o->converge = c->conv;
	o->block = c->block;
	o->vm_name = c->vm;
	o->state_dir = state_dir(c);
	o->cold = c->cold;
}

/*
 * SIGINT and SIGTERM while evacuate's migrations run: a thread of its own
 * takes them (blocked everywhere else, the workers included) and cancels
 * every migration, as one migrate's own handler would: the guests that
 * did not move run where they were. ferry_evacuate_cancel() takes a
 * lock, so it is called here and not from a handler.
 */
static void *cancel_on_signal(void *arg)
{
	sigset_t *set = arg;
	int sig;

	while (sigwait(set, &sig) == 0)
		ferry_evacuate_cancel();
	return NULL;
}

static void evacuate_signals(void)
{
	static sigset_t set;
	pthread_t t;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (pthread_create(&t, NULL, cancel_on_signal, &set) == 0)
		pthread_detach(t);
}

/* The exit status of an evacuated guest's @status. */
static int evacuate_exit(const char *status)
{
	return !strcmp(status, "completed") ? 0 :
	       !strcmp(status, "not-running") ? 3 : 1;
}

/* ferry migrate --to A,B: the destination is chosen as evacuate does. */
static int migrate_choosing(const struct cli *c)
{
	struct ferry_migrate_opts mo = { 0 };
	struct ferry_evacuate_opts o = { .to = c->to, .qmp_path = c->qmp,
					 .migrate = &mo };
	struct ferry_error err = { 0 };
	struct ferry_evacuate_result *r;
	uint32_t n;
	int rc;

	migrate_opts(c, &mo);
	evacuate_signals();
	rc = ferry_evacuate(&o, &r, &n, &err);
	if (rc < 0) {
		fprintf(stderr, "ferry migrate: %s\n", err.msg);
		return rc == -EINVAL ? 2 : 1;
	}
	if (r->error[0])
		fprintf(stderr, "ferry migrate: %s\n", r->error);
	if (c->json)
		ferry_report_write_json(&r->report, STDOUT_FILENO);
	else if (r->report.migration_id[0])
		print_summary(&r->report);
	if (r->destination[0] && !c->json)
		printf("destination: %s\n", r->destination);
	rc = evacuate_exit(r->status);
	free(r);
	return rc;
}

static int cmd_migrate(const struct cli *c)
{
	struct ferry_migrate_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	char host[256];
	int rc;

	if (c->qmp && c->to && strchr(c->to, ','))
		return migrate_choosing(c);
	if (!c->qmp || !c->to) {
		fprintf(stderr, "ferry migrate: needs --qmp SRC_QMP and --to HOST:PORT"
			" (%s is missing)\n", !c->qmp ? "--qmp" : "--to");
		return 2;
	}
	if (parse_hostport(c->to, host, sizeof(host), &o.to_port) < 0) {
		hostport_error("migrate", "to", c->to);
		return 2;
	}
	migrate_opts(c, &o);
	o.qmp_path = c->qmp;
	o.to_host = host;
	/* A line for a person at a terminal, JSON for a program reading
	 * stderr (docs/schema/progress.schema.json). */
	{
		const char *how = c->quiet ? "none" : c->progress ? c->progress :
				  isatty(STDERR_FILENO) ? "line" : "json";

		o.progress = !strcmp(how, "line") ? print_progress :
			     !strcmp(how, "json") ? print_progress_json : NULL;
	}
	g_mig = ferry_migration_new(&o, &err);
	if (!g_mig) {
		fprintf(stderr, "ferry migrate: %s\n", err.msg);
		return 1;
	}
	install_signals();
	rc = ferry_migration_run(g_mig, &rep, &err);
	end_progress_line();
	if (rc == 0 && rep.downtime_exceeded)
		ferry_log(FERRY_LOG_WARN, "QEMU's downtime, %llu ms, went over the "
			  "limit of %u ms", (unsigned long long)rep.downtime_ms,
			  rep.downtime_limit_ms);
	if (rc < 0)
		fprintf(stderr, "ferry migrate: %s\n", err.msg);
	if (c->json)
		ferry_report_write_json(&rep, STDOUT_FILENO);
	else
		print_summary(&rep);
	ferry_migration_free(g_mig);
	g_mig = NULL;
	return rc == 0 ? 0 : rep.source_running || rep.source_untouched ? 1 : 3;
}

/* What ferry recover found, over its migrations. */
struct recover_tally {
	uint32_t migrations;
	bool needs_person;
};

/* One migration recovered (or not): a line on stdout, or the error on
 * stderr. */
static void print_recovery(const struct ferry_recovery *r, void *opaque)
{
	struct recover_tally *t = opaque;

	t->migrations++;
	if (r->error) {
		fprintf(stderr, "ferry recover: %s\n", r->outcome);
		return;
	}
	t->needs_person |= r->needs_person;
	printf("migration %s (%s): %s\n", r->id, r->side, r->outcome);
	fflush(stdout);
}

/* Exit status: 0 each migration has one running guest; 3 one needs a
 * person (the line says what to do); 1 one could not be looked at. */
static int cmd_recover(const struct cli *c)
{
	struct recover_tally t = { 0 };
	struct ferry_recover_opts o = {
		.state_dir = state_dir(c), .source_completed = c->source_completed,
		.wait_ms = c->wait_s * 1000, .each = print_recovery, .opaque = &t,
	};
	struct ferry_error err = { 0 };
	int rc = ferry_recover(&o, &err);

	if (rc < 0 && !t.migrations)	/* the journal itself */
		fprintf(stderr, "ferry recover: %s\n", err.msg);
	else if (!t.migrations)
		printf("no unfinished migrations recorded in %s\n", o.state_dir);
	if (rc < 0)
		return 1;
	return t.needs_person ? 3 : 0;
}

/* --since: a duration back from now (30m, 12h, 7d) or a UTC date;
 * Unix ms, or -1. */
static int64_t parse_since(const char *t)
{
	struct tm tm = { 0 };
	char *end;
	unsigned long long v = strtoull(t, &end, 10);
	int64_t now = (int64_t)time(NULL);
	const char *rest;

	if (end != t && end[0] && !end[1] && strchr("smhd", end[0])) {
		int64_t unit = end[0] == 's' ? 1 : end[0] == 'm' ? 60 :
			       end[0] == 'h' ? 3600 : 86400;

		return (now - (int64_t)v * unit) * 1000;
	}
	rest = strptime(t, "%Y-%m-%d", &tm);
	if (rest && rest[0] == 'T')
		rest = strptime(rest + 1, strchr(rest + 1, ':') &&
				strchr(strchr(rest + 1, ':') + 1, ':') ?
				"%H:%M:%S" : "%H:%M", &tm);
	if (!rest || rest[0])
		return -1;
	return (int64_t)timegm(&tm) * 1000;
}

/* Unix ms as "YYYY-MM-DD HH:MM:SS" UTC. */
static const char *utc_time(int64_t ms, char *buf, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	if (!ms || !gmtime_r(&t, &tm))
		return "-";
	strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
	return buf;
}

static bool list_keep(const struct cli *c, json_t *e, int64_t since)
{
	const char *vm = json_string_value(json_object_get(e, "vm"));

	if (c->status && strcmp(c->status, json_string_value(
			json_object_get(e, "status")) ?: ""))
		return false;
	if (c->vm && (!vm || strcmp(c->vm, vm)))
		return false;
	return since < 0 || json_integer_value(json_object_get(e,
							"started_ms")) >= since;
}

/* ferry list: the journal's migrations, as a table or (--json) JSON. */
static int cmd_list(const struct cli *c)
{
	static const char *const statuses[] = { "running", "completed", "failed",
		"cancelled", "needs-recover", "recovered" };
	struct ferry_error err = { 0 };
	int64_t since = c->since ? parse_since(c->since) : -1;
	json_t *all, *kept, *e;
	char *text;
	size_t i;
	bool known = !c->status;

	for (i = 0; c->status && i < ARRAY_SIZE(statuses); i++)
		known |= !strcmp(c->status, statuses[i]);
	if (!known || (c->since && since < 0)) {
		fprintf(stderr, "ferry list: %s '%s' is not valid (see --help)\n",
			!known ? "--status" : "--since", !known ? c->status : c->since);
		return 2;
	}
	if (ferry_list_json(state_dir(c), &text, &err) < 0) {
		fprintf(stderr, "ferry list: %s\n", err.msg);
		return 1;
	}
	all = json_loads(text, 0, NULL);
	free(text);
	kept = json_array();
	json_array_foreach(all, i, e)
		if (list_keep(c, e, since))
			json_array_append(kept, e);
	json_decref(all);
	if (c->json) {
		text = json_dumps(kept, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("%s\n", text ? text : "[]");
		free(text);
		json_decref(kept);
		return 0;
	}
	printf("%-36s  %-4s  %-16s  %-24s  %-10s  %-13s  %-19s  %8s  %8s  %9s  %s\n",
	       "ID", "SIDE", "VM", "PEER", "TYPE", "STATUS", "STARTED (UTC)",
	       "TOTAL_S", "DOWN_MS", "WIRE_MIB", "ERROR");
	json_array_foreach(kept, i, e) {
		const char *side = json_string_value(json_object_get(e, "side"));
		json_t *down = json_object_get(e, "downtime_ms");
		json_t *wire = json_object_get(e, "wire_bytes");
		char t0[32], d[16] = "-", w[16] = "-";

		if (json_is_integer(down))
			snprintf(d, sizeof(d), "%lld",
				 (long long)json_integer_value(down));
		if (json_is_integer(wire))
			snprintf(w, sizeof(w), "%.1f",
				 (double)json_integer_value(wire) / (1 << 20));
		printf("%-36s  %-4s  %-16s  %s%-22s  %-10s  %-13s  %-19s  %8.1f  %8s  %9s  %s\n",
		       json_string_value(json_object_get(e, "id")),
		       side && !strcmp(side, "source") ? "src" : "dst",
		       json_string_value(json_object_get(e, "vm")) ?: "-",
		       side && !strcmp(side, "source") ? "->" : "<-",
		       json_string_value(json_object_get(e, "peer")),
		       json_string_value(json_object_get(e, "type")),
		       json_string_value(json_object_get(e, "status")),
		       utc_time(json_integer_value(json_object_get(e, "started_ms")),
				t0, sizeof(t0)),
		       (double)json_integer_value(json_object_get(e, "total_ms")) /
		       1000, d, w,
		       json_string_value(json_object_get(e, "error")) ?: "");
	}
	if (!json_array_size(kept))
		printf("(no migrations%s)\n", c->status || c->vm || c->since ?
		       " match" : " recorded");
	json_decref(kept);
	return 0;
}

/* ferry abort|force-complete ID, ferry set-downtime ID MS: through the
 * migration's control socket on this host. */
static int cmd_steer(const struct cli *c, const char *cmd)
{
	char answer[FERRY_ERROR_MSG_MAX];
	struct ferry_error err = { 0 };
	bool downtime = !strcmp(cmd, "set-downtime");
	uint32_t ms = 0;
	int rc;

	if (c->nargs != (downtime ? 2 : 1) ||
	    (downtime && (parse_u32(c->args[1], &ms) < 0 || !ms))) {
		fprintf(stderr, "usage: ferry %s ID%s [--state-dir DIR]\n", cmd,
			downtime ? " MS" : "");
		return 2;
	}
	rc = !strcmp(cmd, "abort") ?
	     ferry_abort(state_dir(c), c->args[0], answer, &err) :
	     downtime ?
	     ferry_set_downtime(state_dir(c), c->args[0], ms, answer, &err) :
	     ferry_force_complete(state_dir(c), c->args[0], answer, &err);
	if (rc < 0) {
		fprintf(stderr, "ferry %s: %s\n", cmd, err.msg);
		return 1;
	}
	printf("%s\n", answer);
	return 0;
}

/*
 * ferry evacuate --qmp-dir DIR --to H:P[,H:P...]: every VM of DIR off this
 * host, --parallel at a time; a summary table (or --json) at the end.
 * Exit status: 0 every VM moved; 1 some did not and run where they were;
 * 3 one is not confirmed running (ferry recover).
 */
static int cmd_evacuate(const struct cli *c)
{
	struct ferry_migrate_opts mo = { 0 };
	struct ferry_evacuate_opts o = { .to = c->to, .qmp_dir = c->qmp_dir,
					 .only = c->vms, .parallel = c->parallel,
					 .migrate = &mo };
	struct ferry_error err = { 0 };
	struct ferry_evacuate_result *res;
	uint32_t n, moved = 0;
	json_t *arr = c->json ? json_array() : NULL;
	int status = 0, rc;

	if (!c->qmp_dir || !c->to) {
		fprintf(stderr, "usage: ferry evacuate --qmp-dir DIR --to "
			"HOST:PORT[,HOST:PORT...] [--parallel N] [--vms A,B] "
			"[migrate options]\n");
		return 2;
	}
	migrate_opts(c, &mo);
	evacuate_signals();
	rc = ferry_evacuate(&o, &res, &n, &err);
	if (rc < 0) {
		fprintf(stderr, "ferry evacuate: %s\n", err.msg);
		json_decref(arr);
		return rc == -EINVAL ? 2 : 1;
	}
	if (!c->json)
		printf("%-20s  %-24s  %-11s  %8s  %8s  %s\n", "VM", "DESTINATION",
		       "STATUS", "TOTAL_S", "DOWN_MS", "ERROR");
	for (uint32_t i = 0; i < n; i++) {
		const struct ferry_evacuate_result *r = &res[i];
		int exit = evacuate_exit(r->status);

		moved += exit == 0;
		if (exit && status != 3)
			status = exit;
		if (arr)
			json_array_append_new(arr, json_pack(
				"{s:s,s:s,s:s,s:s,s:I,s:I,s:s?}", "vm", r->vm,
				"destination", r->destination, "status", r->status,
				"migration_id", r->report.migration_id,
				"total_ms", (json_int_t)r->report.total_ms,
				"downtime_ms", (json_int_t)r->report.downtime_ms,
				"error", r->error[0] ? r->error : NULL));
		else
			printf("%-20s  %-24s  %-11s  %8.1f  %8llu  %s\n", r->vm,
			       r->destination[0] ? r->destination : "-", r->status,
			       (double)r->report.total_ms / 1000,
			       (unsigned long long)r->report.downtime_ms, r->error);
	}
	if (arr) {
		char *text = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER);

		printf("%s\n", text ? text : "[]");
		free(text);
		json_decref(arr);
	} else {
		printf("%u of %u VMs moved\n", moved, n);
	}
	free(res);
	return status;
}

/* systemd's readiness (Type=notify): READY=1 to $NOTIFY_SOCKET, once the
 * service listens. Nothing without one. */
static void notify_ready(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	size_t len = path ? strlen(path) : 0;
	int fd;

	if (!len || (path[0] != '/' && path[0] != '@') ||
	    len >= sizeof(sun.sun_path))
		return;
	memcpy(sun.sun_path, path, len);
	if (sun.sun_path[0] == '@')
		sun.sun_path[0] = '\0';	/* the abstract namespace */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, "READY=1", 7, MSG_NOSIGNAL, (struct sockaddr *)&sun,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
		ferry_log(FERRY_LOG_WARN, "NOTIFY_SOCKET %s: %s", path,
			  strerror(errno));
	close(fd);
}

/*
 * "receive" is the one-VM case of "serve": one destination QEMU (--qmp);
 * "serve" finds each VM's QEMU in --qmp-dir. Both are the same service.
 */
static int cmd_receive(const struct cli *c, const char *cmd)
{
	bool serve = !strcmp(cmd, "serve");
	struct ferry_receiver_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	char host[256];
	int rc;

	if (c->listen &&
	    parse_hostport(c->listen, host, sizeof(host), &o.listen_port) < 0) {
		hostport_error(cmd, "listen", c->listen);
		return 2;
	}
	if (!c->listen ||
	    (serve ? !!c->qmp_dir + !!c->launch != 1 || c->qmp :
		     !c->qmp || c->qmp_dir || c->launch)) {
		fprintf(stderr, serve ?
			"ferry serve: needs --listen HOST:PORT and --qmp-dir DIR or "
			"--launch CMD --state-dir DIR\n" :
			"ferry receive: needs --listen HOST:PORT and --qmp DST_QMP\n");
		return 2;
	}
	o.launch_cmd = c->launch;
	o.state_dir = state_dir(c);
	o.allow_dirs = c->allow_dirs[0] ? c->allow_dirs : NULL;
	o.listen_host = host;
	o.qmp_path = c->qmp;
	o.qmp_dir = c->qmp_dir;
	o.max_migrations = c->max_migrations;
	o.ram_allocation_ratio = c->ram_ratio;
	o.once = c->once;
	o.tls = c->tls;
	g_rx = ferry_receiver_new(&o, &err);
	if (!g_rx) {
		fprintf(stderr, "ferry %s: %s\n", cmd, err.msg);
		return 1;
	}
	install_signals();
	notify_ready();
	rc = ferry_receiver_run(g_rx, &rep, &err);
	if (rc < 0)
		fprintf(stderr, "ferry %s: %s\n", cmd, err.msg);
	if (c->json && rep.status[0])
		ferry_report_write_json(&rep, STDOUT_FILENO);
	ferry_receiver_free(g_rx);
	g_rx = NULL;
	return rc < 0 ? 1 : 0;
}

/*
 * --config FILE (serve, receive): the file's settings go in front of the
 * command line's (which win), as one new argv. The words stay allocated
 * for the life of the process.
 */
static int with_config(int *argc, char ***argv)
{
	const char *path = NULL;
	char **cfg, **nv;
	int ncfg, n = 0, at = -1;

	for (int i = 2; i < *argc; i++) {
		if (!strcmp((*argv)[i], "--config") && i + 1 < *argc) {
			path = (*argv)[i + 1];
			at = i;
			break;
		}
	}
	if (!path)
		return 0;
	if (strcmp((*argv)[1], "serve") && strcmp((*argv)[1], "receive")) {
		fprintf(stderr, "ferry: --config is for serve and receive\n");
		return -EINVAL;
	}
	if (config_load(path, &cfg, &ncfg) < 0)
		return -EINVAL;
	nv = calloc((size_t)(*argc + ncfg + 1), sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	nv[n++] = (*argv)[0];
	nv[n++] = (*argv)[1];
	for (int i = 0; i < ncfg; i++)
		nv[n++] = cfg[i];
	for (int i = 2; i < *argc; i++)
		if (i != at && i != at + 1)
			nv[n++] = (*argv)[i];
	free(cfg);	/* the words live on in nv */
	*argc = n;
	*argv = nv;
	return 0;
}

int main(int argc, char **argv)
{
	struct cli c = { 0 };
	const char *cmd;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	cmd = argv[1];
	ferry_set_log(cli_log, NULL, FERRY_LOG_INFO);
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
		printf("ferry %s\n", FERRY_VERSION_STRING);
		return 0;
	}
	if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 ||
	    strcmp(cmd, "-h") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(cmd, "launch-qemu") == 0)
		return ferry_launch_qemu_main(argc - 1, argv + 1);
	/* Every long option, one a line: what the man page is checked
	 * against (make check-man). */
	if (strcmp(cmd, "--list-options") == 0) {
		for (const struct option *o = long_opts; o->name; o++)
			printf("%s\n", o->name);
		return 0;
	}
	if (strcmp(cmd, "--list-config-keys") == 0) {
		config_keys_print();
		return 0;
	}
	if (with_config(&argc, &argv) < 0)
		return 2;
	if (parse_args(argc - 1, argv + 1, &c) < 0 ||
	    check_cmd_options(&c, cmd) < 0)
		return 2;
	if (strcmp(cmd, "migrate") == 0)
		return cmd_migrate(&c);
	if (strcmp(cmd, "receive") == 0 || strcmp(cmd, "serve") == 0)
		return cmd_receive(&c, cmd);
	if (strcmp(cmd, "recover") == 0)
		return cmd_recover(&c);
	if (strcmp(cmd, "list") == 0)
		return cmd_list(&c);
	if (strcmp(cmd, "evacuate") == 0)
		return cmd_evacuate(&c);
	if (!strcmp(cmd, "abort") || !strcmp(cmd, "force-complete") ||
	    !strcmp(cmd, "set-downtime"))
		return cmd_steer(&c, cmd);
	fprintf(stderr, "ferry: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
