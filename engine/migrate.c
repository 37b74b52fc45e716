/*
 * The source side of a migration: ferry_migration_run().
 *
 * Phases (enum ferry_phase), each entered from the one before it, and every
 * error goes to fail(), which is the only way into FERRY_PHASE_FAILED:
 *
 *   CONNECT     source QMP, then the receiver's control connection; the
 *               receiver prepares the destination and answers READY
 *   SETUP       capabilities and parameters on the source; the tunnel
 *               (data streams + return connection + tunnel) unless --direct; then "migrate"
 *   PRECOPY     follow query-migrate until QEMU says completed
 *   COMPLETING  the tunnel drains, FINISH tells the receiver to resume (or
 *               not) the destination, FINISHED says it did
 *   DONE
 *
 * Failure keeps the guest safe: a started migration is cancelled, the
 * receiver is told, and the source guest is resumed if it was running.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "abi.h"
#include "blk.h"
#include "journal.h"
#include "mig.h"
#include "recover.h"
#include "report.h"
#include "transport/net.h"
#include "transport/pace.h"
#include "transport/probe.h"
#include "control.h"
#include "converge.h"
#include "eta.h"
#include "evacuate.h"
#include "transport/tls.h"
#include "transport/tunnel.h"
#include "transport/wire.h"
#include "common/util.h"

#define MIG_CONFIG_STRS 10
/* How often a resumed post-copy looks at a source QEMU streaming alone. */
#define RESUME_POLL_MS 50
/* How long a broken post-copy waits for the receiver's word before it
 * reconnects: an ERROR (the destination QEMU is gone) usually follows. */
#define MIG_RECOVERY_VERDICT_MS 300
/* Where QEMU paces the memory, memory and disks each keep at least this
 * share of --bandwidth (1/N of it): neither stalls the other. */
#define MIG_CAP_SHARE_MIN_DIV 8

/*
 * The caller's options, copied whole (every string too) and never
 * rewritten: what the caller asked for, for every run and the journal.
 */
struct mig_config {
	struct ferry_migrate_opts o;
	char *strs[MIG_CONFIG_STRS];	/* the copies o's strings point to */
};

/* Decided once from the configuration: the same for every run. */
struct mig_plan {
	uint32_t streams;
	uint32_t progress_ms;
	uint64_t cap;		/* --bandwidth: memory and disks together (0: none) */
	uint64_t wire_cap;	/* ferry paces its transport (0: no cap) */
	uint64_t qemu_cap;	/* QEMU's max-bandwidth (--direct: the cap) */
	char *tls_host;		/* the name the receiver's certificate bears */
};

/* One run of the migration (an attempt, or a resumed post-copy): reset
 * whole at the start of each (run_reset). */
struct mig_run {
	enum ferry_phase phase;
	struct qmp *q;
	int qemu_pid;		/* the source QEMU's, when its socket says */
	struct net_conn ctrl;
	struct tun *tun;
	struct converge conv;
	uint64_t wire_cap, qemu_cap;	/* the plan's, until hand-off moves
					   the cap to QEMU */
	uint64_t disk_share;	/* the disks' part of the cap while QEMU
				   paces memory beside them (cap_split) */
	bool resuming;		/* reconnecting a broken post-copy */
	uint32_t recovery_wait_ms;	/* for the receiver to come back */
	uint32_t recoveries;
	bool migrate_started;
	bool was_running;
	bool source_completed;	/* the source QEMU completed: never cont it */
	uint32_t blocktime_ms;	/* the destination's, from FINISHED */
	uint8_t mig_id[WIRE_MIG_ID_BYTES];
	uint64_t ram_bytes;
	uint64_t t0_ms;
	struct journal *journal;	/* this run's; NULL without state_dir */
	struct ctl ctl;		/* its control socket; fd -1 without */
	bool handoff;		/* QEMU writes to ferry's data connection */
	uint64_t probe_rate;	/* the link probe's answer, bytes/s */
	struct mig_info last;
	uint64_t last_sample_ms, last_sample_bytes, throughput;
	struct blk_src *blk;	/* --block */
	bool disks_switched;	/* mirrors completed at pre-switchover */
	uint64_t disk_done, disk_total;
	/*
	 * Post-copy's preempt channel: QEMU connects to ferry's socket
	 * (unix:) twice, and the tunnels start once it has; until then the
	 * connections to the receiver and the listening socket wait here.
	 */
	bool preempt;
	struct eta eta;		/* the time left, as shown */
	struct preempt_pending {
		int lfd;			/* -1 when none */
		struct net_unix_dir dir;
		struct tun_opts o;		/* the memory tunnel's */
		struct net_conn streams[WIRE_STREAMS_MAX];
		struct net_conn conn;		/* to the receiver's PREEMPT */
	} pend;
};

struct ferry_migration {
	struct mig_config cfg;
	struct mig_plan plan;
	struct tls_ctx *tls;
	struct pacer *pacer;	/* the cap's one bucket; NULL without a cap */
	int cancel_efd;
	struct mig_run run;
};

const char *ferry_phase_name(enum ferry_phase p)
{
	static const char *const names[] = {
		[FERRY_PHASE_INIT] = "init",
		[FERRY_PHASE_CONNECT] = "connect",
		[FERRY_PHASE_SETUP] = "setup",
		[FERRY_PHASE_PRECOPY] = "precopy",
		[FERRY_PHASE_COMPLETING] = "completing",
		[FERRY_PHASE_CANCELLING] = "cancelling",
		[FERRY_PHASE_DONE] = "done",
		[FERRY_PHASE_FAILED] = "failed",
		[FERRY_PHASE_DISKS] = "disks",
	};

	return (unsigned)p < FERRY_ARRAY_SIZE(names) && names[p] ? names[p] : "?";
}

static void run_reset(struct ferry_migration *m);
static int migration_run(struct ferry_migration *m, struct ferry_report *report,
			 struct ferry_error *err);

static void config_free(struct mig_config *c)
{
	for (size_t i = 0; i < FERRY_ARRAY_SIZE(c->strs); i++)
		free(c->strs[i]);
	memset(c, 0, sizeof(*c));
}

/* @o whole into @c, with copies of its strings. */
static int config_copy(struct mig_config *c, const struct ferry_migrate_opts *o)
{
	const char **strs[MIG_CONFIG_STRS] = {
		&c->o.qmp_path, &c->o.to_host, &c->o.tls.creds_dir,
		&c->o.tls.psk_file, &c->o.tls.psk_identity, &c->o.tls.hostname,
		&c->o.converge.events_path, &c->o.block.disks, &c->o.vm_name,
		&c->o.state_dir,
	};

	_Static_assert(FERRY_ARRAY_SIZE(strs) == FERRY_ARRAY_SIZE(c->strs),
		       "one copy per string of the options");
	c->o = *o;
	for (size_t i = 0; i < FERRY_ARRAY_SIZE(strs); i++) {
		if (!*strs[i])
			continue;
		c->strs[i] = strdup(*strs[i]);
		if (!c->strs[i])
			return -ENOMEM;
		*strs[i] = c->strs[i];
	}
	return 0;
}

/*
 * The plan, from the options: ferry paces its own transport with the
 * cap, and QEMU runs unpaced into it; with --direct QEMU's stream is the
 * wire, and QEMU paces it. Every tunnel of the migration takes from one
 * pacer, so the cap holds for memory and disks together.
 */
static int plan_make(struct mig_plan *p, const struct ferry_migrate_opts *o)
{
	uint64_t cap = o->max_bandwidth_bytes_per_s;

	p->streams = o->streams ? o->streams : 1;
	p->progress_ms = o->progress_interval_ms ? o->progress_interval_ms :
			 FERRY_DEFAULT_PROGRESS_MS;
	p->cap = cap;
	p->wire_cap = o->direct ? 0 : cap;
	p->qemu_cap = o->direct && cap ? cap : MIG_BANDWIDTH_UNLIMITED;
	p->tls_host = strdup(o->tls.hostname ? o->tls.hostname : o->to_host);
	return p->tls_host ? 0 : -ENOMEM;
}

struct ferry_migration *(ferry_migration_new)(const struct ferry_migrate_opts *o,
					      struct ferry_error *err)
{
	return ferry_migration_new_sized(o, ABI0_MIGRATE_OPTS_SIZE, err);
}

struct ferry_migration *ferry_migration_new_sized(
	const struct ferry_migrate_opts *in, size_t size, struct ferry_error *err)
{
	struct ferry_migrate_opts full, *o = &full;
	struct ferry_migration *m;

	if (abi_copy_in(&full, sizeof(full), in, size) < 0) {
		ferry_error_set(err, -EINVAL, "this libferry (%s) does not know "
				"an option the program set (built against a "
				"later ferry.h)", FERRY_VERSION_STRING);
		return NULL;
	}

	if (!o->qmp_path || !o->to_host || !o->to_port) {
		ferry_error_set(err, -EINVAL,
			"a migration needs the source QMP socket and the receiver's HOST:PORT");
		return NULL;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		goto err_nomem;
	m->cancel_efd = -1;
	if (config_copy(&m->cfg, o) < 0)
		goto err_free;
	if (o->streams > WIRE_STREAMS_MAX) {
		ferry_error_set(err, -EINVAL, "at most %d streams", WIRE_STREAMS_MAX);
		goto err_out;
	}
	if (o->direct && (o->tls.creds_dir || o->tls.psk_file)) {
		ferry_error_set(err, -EINVAL,
			"--direct streams QEMU to QEMU outside ferry's transport, "
			"so ferry's TLS cannot cover it; drop --direct to migrate "
			"over TLS");
		goto err_out;
	}
	if (!o->tls.creds_dir && !o->tls.psk_file && !o->tls.insecure &&
	    !tls_host_is_loopback(o->to_host)) {
		ferry_error_set(err, -EPERM,
			"refusing to send guest memory in plaintext to %s: give "
			"--tls-creds DIR or --tls-psk FILE, or --insecure if the "
			"network is trusted", o->to_host);
		goto err_out;
	}
	if (o->vm_name && !wire_vm_name_valid(o->vm_name)) {
		uint8_t scratch[WIRE_VM_NAME_MAX];

		wire_vm_encode(o->vm_name, scratch, err);
		ferry_error_prefix(err, "--vm: ");
		goto err_out;
	}
	if (tls_ctx_new(&m->tls, &o->tls, false, err) < 0)
		goto err_out;
	if (plan_make(&m->plan, o) < 0)
		goto err_free;
	if (m->plan.cap && pacer_new(&m->pacer, m->plan.cap, NULL) < 0)
		goto err_free;
	m->cancel_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->cancel_efd < 0)
		goto err_free;
	run_reset(m);
	return m;

err_free:
	ferry_error_set(err, -ENOMEM, "out of memory");
err_out:
	ferry_migration_free(m);
	return NULL;
err_nomem:
	ferry_error_set(err, -ENOMEM, "out of memory");
	return NULL;
}

void ferry_migration_cancel(struct ferry_migration *m)
{
	uint64_t one = 1;

	if (write(m->cancel_efd, &one, sizeof(one)) < 0) {
		/* Overflow only: a cancel is already pending. */
	}
}

void ferry_migration_free(struct ferry_migration *m)
{
	if (!m)
		return;
	if (m->cancel_efd >= 0)
		close(m->cancel_efd);
	tls_ctx_free(m->tls);
	pacer_unref(m->pacer);
	free(m->plan.tls_host);
	config_free(&m->cfg);
	free(m);
}

static bool cancel_requested(struct ferry_migration *m)
{
	struct pollfd p = { .fd = m->cancel_efd, .events = POLLIN };

	return poll(&p, 1, 0) > 0;
}

static void set_phase(struct ferry_migration *m, enum ferry_phase p)
{
	ferry_log(FERRY_LOG_DEBUG, "migration phase %s -> %s",
		  ferry_phase_name(m->run.phase), ferry_phase_name(p));
	m->run.phase = p;
}

/* Read the receiver's answer to our hello: READY, or ERROR with a reason. */
static int await_ready(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr h;
	int rc;

	rc = net_ctrl_recv(&m->run.ctrl, &h, payload, MIG_FINISH_TIMEOUT_MS, err);
	if (rc == -ECONNRESET && !m->tls)
		return ferry_error_prefix(err, "the receiver hung up on our hello "
					  "(does it require TLS?): ");
	if (rc == -EPROTO && m->tls)
		return ferry_error_prefix(err, "the receiver refused our TLS "
					  "credentials: ");
	if (rc < 0)
		return ferry_error_prefix(err, "waiting for the receiver to get ready: ");
	if (h.type == WIRE_CTRL_ERROR)
		return ferry_error_set(err, -EREMOTEIO, "the receiver refused: %s",
				       (char *)payload);
	if (h.type != WIRE_CTRL_READY)
		return ferry_error_set(err, -EPROTO,
			"the receiver answered the hello with %s, expected READY",
			wire_ctrl_name(h.type));
	return 0;
}

/*
 * Whether the destination runs the guest once it has it: unless
 * --paused, and only if the guest was running here (a stopped guest
 * stays stopped, as Nova's cold migration of a stopped instance does).
 */
static bool resume_destination(const struct ferry_migration *m)
{
	return !m->cfg.o.paused && m->run.was_running;
}

/* Connect, TLS, hello: one of the migration's connections. */
static int open_conn(struct ferry_migration *m, struct net_conn *c,
		     enum wire_conn kind, uint16_t index, struct ferry_error *err)
{
	struct wire_hello h = {
		.version = WIRE_VERSION,
		.conn = kind,
		.options = (resume_destination(m) ? 0 : WIRE_OPT_PAUSED) |
			   (m->cfg.o.direct ? WIRE_OPT_DIRECT : 0) |
			   (m->run.conv.postcopy_cap ? WIRE_OPT_POSTCOPY : 0) |
			   (m->run.resuming ? WIRE_OPT_RESUME : 0) |
			   ((m->run.handoff || m->cfg.o.direct) && kind == WIRE_CONN_DATA ?
			    WIRE_OPT_HANDOFF : 0) |
			   (m->run.blk && !m->run.resuming ? WIRE_OPT_BLOCK : 0) |
			   (m->run.preempt && (kind == WIRE_CONN_DATA ||
					       kind == WIRE_CONN_RETURN ||
					       kind == WIRE_CONN_PREEMPT) ?
			    WIRE_OPT_PREEMPT : 0) |
			   (m->cfg.o.vm_name && kind == WIRE_CONN_CONTROL &&
			    !m->run.resuming ? WIRE_OPT_VM : 0) |
			   ((kind == WIRE_CONN_DISK ||
			     (kind == WIRE_CONN_DATA && !m->run.handoff &&
			      !m->cfg.o.direct)) &&
			    (m->cfg.o.codec == FERRY_CODEC_ZSTD ||
			     m->cfg.o.codec == FERRY_CODEC_AUTO) ? WIRE_OPT_ZSTD : 0),
		.ram_bytes = m->run.ram_bytes,
		.stream_index = index,
		/* --direct: the memory is one connection, QEMU's own stream;
		 * the disk tunnel has its streams as always. */
		.stream_count = (uint16_t)(m->cfg.o.direct && kind == WIRE_CONN_DATA ?
					   1 : m->plan.streams),
		.frame_max = TUN_FRAME_BYTES,
	};
	uint8_t buf[WIRE_HELLO_BYTES];
	int rc;

	net_conn_init(c, -1);
	rc = net_connect(m->cfg.o.to_host, m->cfg.o.to_port, NET_CONNECT_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "receiver unreachable: ");
	net_conn_init(c, rc);
	rc = net_conn_start_tls(c, m->tls, m->plan.tls_host, TLS_HANDSHAKE_TIMEOUT_MS,
				err);
	if (rc == 0) {
		memcpy(h.mig_id, m->run.mig_id, sizeof(h.mig_id));
		wire_hello_encode(&h, buf);
		rc = net_write_full(c, buf, sizeof(buf), NET_CONNECT_TIMEOUT_MS,
				    "hello", err);
	}
	if (rc < 0)
		net_conn_close(c);
	return rc;
}

/*
 * CONFIG: the source QEMU's command line, from the process behind its QMP
 * socket, for a receiver that launches the destination QEMU itself. When
 * it cannot be read (another pid namespace) or is too long, CONFIG is
 * empty, and only a receiver with registered QEMUs can take the VM.
 */
static int send_config(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t raw[WIRE_CTRL_PAYLOAD_MAX + 1];
	char *argv[WIRE_CONFIG_ARGS_MAX];
	uint8_t out[WIRE_CTRL_PAYLOAD_MAX];
	struct ferry_error e = { 0 };
	uint32_t argc = 0;
	char path[64];
	ssize_t n = -1;
	int pid = qmp_peer_pid(m->run.q), fd = -1, len = 0;

	if (pid > 0) {
		snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
		fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (fd >= 0) {
		ssize_t r;

		n = 0;
		while ((size_t)n < sizeof(raw) &&
		       (r = read(fd, raw + n, sizeof(raw) - (size_t)n)) > 0)
			n += r;
		close(fd);
	}
	if (n > 0 && (size_t)n <= WIRE_CTRL_PAYLOAD_MAX && raw[n - 1] == '\0') {
		for (ssize_t i = 0; i < n && argc < WIRE_CONFIG_ARGS_MAX;
		     i += (ssize_t)strlen((char *)raw + i) + 1)
			argv[argc++] = (char *)raw + i;
		len = wire_config_encode(argv, argc, out, sizeof(out), &e);
	} else {
		ferry_error_set(&e, -E2BIG, "cannot read the source QEMU's "
				"command line (pid %d) in full", pid);
	}
	if (len < 0 || e.code) {
		ferry_log(FERRY_LOG_WARN, "the receiver gets no QEMU configuration: "
			  "%s", e.msg);
		len = 0;
	}
	return net_ctrl_send(&m->run.ctrl, WIRE_CTRL_CONFIG, out, (uint32_t)len,
			     MIG_QMP_TIMEOUT_MS, err);
}

/* How QEMU's stream reaches the receiver in this run. */
static const char *run_transport(const struct ferry_migration *m)
{
	return m->cfg.o.direct ? "direct" : m->run.handoff ? "handoff" : "tunnel";
}

/* GUEST: what the guest is made of, for the destination's pre-check. */
static int send_guest(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t buf[WIRE_CTRL_PAYLOAD_MAX];
	struct wire_guest *g = malloc(sizeof(*g));
	int rc;

	if (!g)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	rc = qemu_guest_describe(m->run.q, g, err);
	if (rc < 0)
		ferry_error_prefix(err, "describing the source guest: ");
	else
		rc = wire_guest_encode(g, buf, sizeof(buf), err);
	free(g);
	if (rc >= 0)
		rc = net_ctrl_send(&m->run.ctrl, WIRE_CTRL_GUEST, buf, (uint32_t)rc,
				   MIG_QMP_TIMEOUT_MS, err);
	return rc < 0 ? rc : 0;
}

/* The journal of this run, and its first entry: what is being done. */
static int journal_start(struct ferry_migration *m, struct ferry_error *err)
{
	const struct ferry_migrate_opts *o = &m->cfg.o;
	char id[37];
	int rc;

	if (!o->state_dir)
		return 0;
	wire_mig_id_format(m->run.mig_id, id);
	rc = journal_open(&m->run.journal, o->state_dir, id, "source", err);
	if (rc == 0)
		rc = ctl_open(&m->run.ctl, o->state_dir, id, err);
	if (rc < 0)
		return rc;
	return journal_step(m->run.journal, JOURNAL_STARTED, json_pack(
		"{s:s,s:s,s:s,s:s?,s:s,s:i,s:b,s:b,s:b,s:b,s:b,s:b,"
		"s:{s:s?,s:s?,s:s?,s:s?,s:b},s:s,s:i,s:i,s:b,s:I}",
		"id", id, "side", "source", "qmp", o->qmp_path, "vm", o->vm_name,
		"to_host", o->to_host, "to_port", (int)o->to_port,
		"was_running", m->run.was_running, "paused", o->paused,
		"direct", o->direct, "block", o->block.enabled,
		"postcopy", m->run.conv.postcopy_cap, "cold", o->cold,
		/* What a resumed post-copy needs to reach the receiver again
		 * (paths only: the secrets stay in their files). */
		"tls", "creds_dir", o->tls.creds_dir, "psk_file", o->tls.psk_file,
		"psk_identity", o->tls.psk_identity, "hostname", o->tls.hostname,
		"insecure", o->tls.insecure,
		"codec", ferry_codec_name(o->codec), "codec_level", o->codec_level,
		"streams", (int)m->plan.streams, "no_handoff", o->no_handoff,
		"bandwidth", (json_int_t)o->max_bandwidth_bytes_per_s), err);
}

static int phase_connect(struct ferry_migration *m, struct ferry_error *err)
{
	char status[32], id[37];
	struct mig_info info;
	int rc;

	set_phase(m, FERRY_PHASE_CONNECT);
	m->run.q = qmp_connect(m->cfg.o.qmp_path, MIG_QMP_TIMEOUT_MS, err);
	if (!m->run.q)
		return ferry_error_prefix(err, "source QEMU at %s: ", m->cfg.o.qmp_path);
	m->run.qemu_pid = qmp_peer_pid(m->run.q);
	rc = mig_vm_status(m->run.q, status, sizeof(status), err);
	if (rc < 0)
		return rc;
	m->run.was_running = strcmp(status, "running") == 0;
	if (!m->run.was_running && strcmp(status, "paused") != 0)
		return ferry_error_set(err, -EINVAL,
			"the source guest is '%s'; ferry migrates a running or paused guest",
			status);
	/* Cold: it moves stopped (a failure resumes it, as it was). */
	if (m->cfg.o.cold && m->run.was_running) {
		rc = qemu_stop(m->run.q, err);
		if (rc < 0)
			return ferry_error_prefix(err, "pausing the source guest "
						  "for a cold migration: ");
	}
	rc = mig_query(m->run.q, &info, err);
	if (rc < 0)
		return rc;
	if (mig_state_active(info.state))
		return ferry_error_set(err, -EBUSY,
			"the source QEMU already has a migration in state '%s'",
			info.status);
	rc = mig_ram_size(m->run.q, &m->run.ram_bytes, err);
	if (rc < 0)
		return rc;
	rc = wire_mig_id_random(m->run.mig_id);
	if (rc < 0)
		return ferry_error_set(err, rc, "getrandom: %s", strerror(-rc));
	wire_mig_id_format(m->run.mig_id, id);
	rc = conv_init(&m->run.conv, &m->cfg.o, m->run.q, m->run.ram_bytes,
		       m->cfg.o.direct ? (m->run.qemu_cap ==
				      MIG_BANDWIDTH_UNLIMITED ? 0 :
				      m->run.qemu_cap) : m->run.wire_cap,
		       m->run.was_running && !m->cfg.o.cold, id, err);
	if (rc < 0)
		return rc;
	rc = journal_start(m, err);
	if (rc < 0)
		return rc;
	/* Before anything of this attempt: what a ferry that died left. */
	rc = blk_clear_stale(m->run.q, err);
	if (rc < 0)
		return rc;
	if (m->cfg.o.block.enabled) {
		rc = blk_src_new(&m->run.blk, m->run.q, &m->cfg.o.block, err);
		if (rc < 0)
			return rc;
	}
	rc = open_conn(m, &m->run.ctrl, WIRE_CONN_CONTROL, 0, err);
	if (rc < 0)
		return rc;
	if (m->cfg.o.vm_name) {
		uint8_t name[WIRE_VM_NAME_MAX];

		rc = wire_vm_encode(m->cfg.o.vm_name, name, err);
		if (rc >= 0)
			rc = net_ctrl_send(&m->run.ctrl, WIRE_CTRL_VM, name,
					   (uint32_t)rc, MIG_QMP_TIMEOUT_MS, err);
		if (rc >= 0)
			rc = send_config(m, err);
		if (rc < 0)
			return rc;
	}
	rc = send_guest(m, err);
	if (rc < 0)
		return rc;
	if (m->run.blk) {
		struct wire_disk d[WIRE_DISKS_MAX];
		uint8_t buf[WIRE_CTRL_PAYLOAD_MAX];

		blk_src_mark_shared(m->run.blk, id);
		rc = wire_disks_encode(d, blk_src_disks(m->run.blk, d), buf,
				       sizeof(buf), err);
		if (rc >= 0)
			rc = net_ctrl_send(&m->run.ctrl, WIRE_CTRL_DISKS, buf,
					   (uint32_t)rc, MIG_QMP_TIMEOUT_MS, err);
		if (rc < 0) {
			blk_src_unmark_shared(m->run.blk);
			return rc;
		}
	}
	rc = await_ready(m, err);
	/* The receiver has looked for the markers (or failed): done. */
	blk_src_unmark_shared(m->run.blk);
	return rc;
}

/*
 * How much may sit unsent between QEMU and the wire, per buffer: what the
 * link (the --bandwidth cap, or the probe's rate) drains in a share of
 * the downtime limit. Unknown link: the largest, for throughput.
 */
/* The link's rate as far as known before it streams: the cap, or the
 * probe's answer; 0: unknown. */
static uint64_t known_link(const struct ferry_migration *m)
{
	uint64_t link = m->run.probe_rate;
	uint64_t cap = m->run.wire_cap ? m->run.wire_cap :
		       m->run.qemu_cap != MIG_BANDWIDTH_UNLIMITED ? m->run.qemu_cap : 0;

	if (cap && (!link || link > cap))
		link = cap;
	return link;
}

static uint32_t in_flight_bytes(const struct ferry_migration *m)
{
	return net_in_flight_bytes(known_link(m),
				   m->run.conv.limits.downtime_max_ms);
}

/*
 * What QEMU does not count when it decides to switch over: through the
 * tunnel, its socket, ferry's frames and TCP's unsent bytes; with
 * hand-off, TCP's alone. The policy's model and the downtime QEMU is
 * told (converge.c) count it.
 */
static void count_in_flight(struct ferry_migration *m)
{
	uint64_t link = known_link(m);

	m->run.conv.preempt = m->run.preempt;
	m->run.conv.in_flight_bytes = m->cfg.o.direct ? 0 :
		(uint64_t)in_flight_bytes(m) * (m->run.handoff ? 1 : 3);
	m->run.conv.in_flight_ms = link ? (uint32_t)(m->run.conv.in_flight_bytes *
						     1000 / link) : 0;
}

/* Hand-off: the data connection, after its hello, is QEMU's. */
static int open_handoff(struct ferry_migration *m, struct ferry_error *err)
{
	struct net_conn dc;
	int rc;

	rc = open_conn(m, &dc, WIRE_CONN_DATA, 0, err);
	if (rc < 0)
		return ferry_error_prefix(err, "data connection: ");
	net_bound_unsent(dc.fd, in_flight_bytes(m));
	rc = mig_give_fd(m->run.q, dc.fd, err);
	net_conn_close(&dc);	/* QEMU holds its own copy */
	if (rc < 0)
		return ferry_error_prefix(err, "handing the connection to the "
					  "source QEMU: ");
	return 0;
}

/*
 * A tunnel's connections and options (the memory's: DATA and RETURN; the
 * disks': DISK and DISK_RETURN): @streams gets m->plan.streams connections of
 * @kind, o->ret the return connection of @ret_kind. On failure nothing is
 * left open.
 */
static int open_tunnel_conns(struct ferry_migration *m, enum wire_conn kind,
			     enum wire_conn ret_kind, struct net_conn *streams,
			     struct tun_opts *o, struct ferry_error *err)
{
	uint32_t i;
	int rc;

	*o = (struct tun_opts){
		.role = TUN_SOURCE,
		.local_fd = -1,
		.streams = streams,
		.nstreams = m->plan.streams,
		.frame_max = TUN_FRAME_BYTES,
		.codec = m->cfg.o.codec,
		.codec_level = m->cfg.o.codec_level,
		.link_bytes_per_s = known_link(m),
		/* The memory's and the disks' tunnels share it; the disks
		 * take from it also where QEMU paces the memory. */
		.pacer = m->pacer,
	};
	net_conn_init(&o->ret, -1);
	for (i = 0; i < m->plan.streams; i++) {
		rc = open_conn(m, &streams[i], kind, (uint16_t)i, err);
		if (rc < 0) {
			ferry_error_prefix(err, "%s connection %u: ",
					   kind == WIRE_CONN_DISK ? "disk" : "data", i);
			goto fail;
		}
	}
	rc = open_conn(m, &o->ret, ret_kind, 0, err);
	if (rc == 0)
		return 0;
	ferry_error_prefix(err, "%sreturn connection: ",
			   kind == WIRE_CONN_DISK ? "disk " : "");
fail:
	while (i > 0)
		net_conn_close(&streams[--i]);
	return rc;
}

static void close_pending_conns(struct preempt_pending *p)
{
	for (uint32_t i = 0; i < p->o.nstreams; i++)
		net_conn_close(&p->streams[i]);
	net_conn_close(&p->o.ret);
	net_conn_close(&p->conn);
}

/* Whatever preempt_prepare() left waiting: closed. */
static void preempt_drop(struct ferry_migration *m)
{
	struct preempt_pending *p = &m->run.pend;

	if (p->lfd < 0)
		return;
	close(p->lfd);
	p->lfd = -1;
	net_unix_dir_remove(&p->dir);
	close_pending_conns(p);
}

/*
 * The memory tunnel with post-copy's preempt channel: its connections,
 * one more to the receiver for the channel (PREEMPT), and a socket for
 * the source QEMU to connect to (QEMU 7.2 opens the channel only to the
 * address of a socket URI, never on an fd). The tunnels start in
 * preempt_start(), once QEMU has connected.
 */
static int preempt_prepare(struct ferry_migration *m, struct net_conn *streams,
			   const struct tun_opts *o, struct ferry_error *err)
{
	struct preempt_pending *p = &m->run.pend;
	int rc;

	p->o = *o;
	memcpy(p->streams, streams, o->nstreams * sizeof(*streams));
	p->o.streams = p->streams;
	net_conn_init(&p->conn, -1);
	p->dir = (struct net_unix_dir){ 0 };
	rc = open_conn(m, &p->conn, WIRE_CONN_PREEMPT, 0, err);
	if (rc < 0)
		ferry_error_prefix(err, "preempt connection: ");
	if (rc == 0)
		rc = net_unix_dir_make(&p->dir, m->run.qemu_pid, err);
	if (rc == 0)
		rc = net_unix_listen(&p->dir, err);
	if (rc < 0) {
		p->lfd = -1;
		close_pending_conns(p);
		net_unix_dir_remove(&p->dir);
		return rc;
	}
	p->lfd = rc;
	return 0;
}

/* The next connection on the preempt socket, from the source QEMU only
 * (when its pid is known): anything else of its user is refused. */
static int accept_qemu(struct ferry_migration *m, struct ferry_error *err)
{
	for (;;) {
		int fd = net_accept_timeout(m->run.pend.lfd, MIG_QMP_TIMEOUT_MS,
					    m->cancel_efd, err);
		int pid;

		if (fd < 0)
			return fd;
		pid = net_peer_pid(fd);
		if (m->run.qemu_pid <= 0 || pid == m->run.qemu_pid)
			return fd;
		ferry_log(FERRY_LOG_WARN, "refused a connection to the source "
			  "QEMU's migration socket from pid %d, not QEMU's (%d)",
			  pid, m->run.qemu_pid);
		close(fd);
	}
}

/*
 * QEMU was told to migrate to the socket: take its two connections, the
 * main channel first, and start the memory tunnel on the one and the
 * preempt channel's own (one-way, urgent: counted in the pacer, never
 * waiting on the bulk stream's backlog) on the other.
 */
static int preempt_start(struct ferry_migration *m, struct ferry_error *err)
{
	struct preempt_pending *p = &m->run.pend;
	struct tun_opts po = {
		.role = TUN_SOURCE, .streams = &p->conn, .nstreams = 1,
		.frame_max = TUN_FRAME_BYTES, .codec = FERRY_CODEC_NONE,
		.pacer = m->pacer, .urgent = true,
		.idle_timeout_ms = TUN_IDLE_NEVER,	/* quiet until post-copy */
	};
	struct tun *pre;
	int fd, rc;

	fd = accept_qemu(m, err);
	if (fd < 0) {
		preempt_drop(m);
		return ferry_error_prefix(err, "the source QEMU's main channel: ");
	}
	p->o.local_fd = fd;
	fd = accept_qemu(m, err);
	close(p->lfd);
	p->lfd = -1;
	net_unix_dir_remove(&p->dir);
	if (fd < 0) {
		close(p->o.local_fd);
		close_pending_conns(p);
		return ferry_error_prefix(err, "the source QEMU's preempt channel: ");
	}
	po.local_fd = fd;
	net_conn_init(&po.ret, -1);
	rc = tun_start(&m->run.tun, &p->o, err);	/* takes its conns */
	if (rc < 0) {
		close(fd);
		net_conn_close(&p->conn);
		return rc;
	}
	rc = tun_start(&pre, &po, err);
	if (rc < 0)
		return ferry_error_prefix(err, "preempt channel: ");
	tun_adopt(m->run.tun, pre);
	return 0;
}

/*
 * Have the source QEMU stream (@resume: resume a paused post-copy) into
 * what open_tunnel() made ready: the fd it was given, or, with the
 * preempt channel, ferry's socket.
 */
static int qemu_stream(struct ferry_migration *m, bool resume,
		       struct ferry_error *err)
{
	char uri[sizeof(m->run.pend.dir.path) + 8];
	int rc;

	if (m->run.pend.lfd < 0)
		snprintf(uri, sizeof(uri), "fd:%s", MIG_FDNAME);
	else
		snprintf(uri, sizeof(uri), "unix:%s", m->run.pend.dir.path);
	rc = qemu_migrate(m->run.q, uri, resume, err);
	if (rc < 0) {
		/* Close QEMU's copy, so the receiver's end sees the end. */
		mig_drop_fd(m->run.q);
		preempt_drop(m);
		return rc;
	}
	return m->run.pend.lfd < 0 ? 0 : preempt_start(m, err);
}

static int open_tunnel(struct ferry_migration *m, struct ferry_error *err)
{
	struct net_conn streams[WIRE_STREAMS_MAX];
	struct tun_opts o;
	uint32_t in_flight;
	int rc;

	/* --direct is QEMU's own stream on a connection ferry opened. */
	if (m->run.handoff || m->cfg.o.direct)
		return open_handoff(m, err);
	rc = open_tunnel_conns(m, WIRE_CONN_DATA, WIRE_CONN_RETURN, streams, &o,
			       err);
	if (rc < 0)
		return rc;
	in_flight = in_flight_bytes(m);
	o.hold_bytes = in_flight;
	for (uint32_t i = 0; i < o.nstreams; i++)
		net_bound_unsent(streams[i].fd, in_flight);
	if (m->run.preempt)
		return preempt_prepare(m, streams, &o, err);
	rc = mig_hand_socket(m->run.q, in_flight, &o.local_fd, err);
	if (rc < 0) {
		ferry_error_prefix(err, "handing the tunnel to the source QEMU: ");
		for (uint32_t i = 0; i < o.nstreams; i++)
			net_conn_close(&streams[i]);
		net_conn_close(&o.ret);
		return rc;
	}
	return tun_start(&m->run.tun, &o, err);
}

/* The link probe on a PROBE connection of its own: m->run.probe_rate. */
static int probe_link(struct ferry_migration *m, struct ferry_error *e)
{
	struct net_conn pc;
	int rc;

	rc = open_conn(m, &pc, WIRE_CONN_PROBE, 0, e);
	if (rc == 0)
		rc = probe_send(&pc, &m->run.probe_rate, e);
	net_conn_close(&pc);
	return rc;
}

/*
 * No cap and no codec to choose: the link is still measured (a probe
 * costs at most 40 ms), since the bytes ferry lets queue between QEMU and
 * the wire are sized from it. A failed probe leaves the link unknown
 * (the largest buffers).
 */
static void probe_for_sizing(struct ferry_migration *m)
{
	struct ferry_error e = { 0 };

	if (probe_link(m, &e) < 0)
		conv_event(&m->run.conv, "link", NULL, "link probe failed (%s): "
			   "buffers sized for a fast link", e.msg);
	else
		conv_event(&m->run.conv, "link", json_pack("{s:I}",
				"link_bytes_per_s", (json_int_t)m->run.probe_rate),
			   "link %.0f MiB/s: buffers hold what it drains in "
			   "an eighth of the downtime limit",
			   (double)m->run.probe_rate / (1 << 20));
}

/*
 * Tunnel or hand-off. Hand-off gives the one data connection to QEMU after
 * its hello, so ferry copies nothing, at the price of what the tunnel adds:
 * compression, TLS, streams, frame checks. With --compress none over one
 * plaintext stream the tunnel would add nothing but copies. With auto,
 * ferry measures the link first: a link faster than the fastest
 * compressor on this machine cannot gain from compression either.
 */
static void choose_transport(struct ferry_migration *m)
{
	bool can_handoff = !m->tls && m->plan.streams <= 1 && !m->cfg.o.no_handoff;
	struct ferry_error e = { 0 };
	uint64_t comp, link;

	if (m->cfg.o.direct)
		return;
	if (m->cfg.o.codec == FERRY_CODEC_NONE && can_handoff) {
		m->run.handoff = true;
		conv_event(&m->run.conv, "transport", json_pack("{s:s}", "transport",
							     "handoff"),
			   "hand-off: no codec, one plaintext stream; QEMU "
			   "writes to ferry's connection itself");
	} else if (m->cfg.o.codec == FERRY_CODEC_AUTO && m->run.wire_cap &&
		   m->run.wire_cap < probe_compressor_rate()) {
		/* The cap alone says compression may pay: no need to probe. */
		conv_event(&m->run.conv, "transport", NULL, "tunnel: the wire is "
			   "capped at %.0f MiB/s", (double)m->run.wire_cap / (1 << 20));
	} else if (m->cfg.o.codec == FERRY_CODEC_AUTO) {
		/* The probe also gives auto its first link estimate. */
		if (probe_link(m, &e) < 0)
			conv_event(&m->run.conv, "transport", NULL, "link probe failed "
				   "(%s): tunnel", e.msg);
		comp = probe_compressor_rate();
		link = m->run.probe_rate;
		if (m->run.wire_cap && (!link || link > m->run.wire_cap))
			link = m->run.wire_cap;
		m->run.handoff = can_handoff && link && comp && link >= comp;
		conv_event(&m->run.conv, "transport",
			   json_pack("{s:s,s:I,s:I}", "transport",
				     m->run.handoff ? "handoff" : "tunnel",
				     "link_bytes_per_s", (json_int_t)link,
				     "compressor_bytes_per_s", (json_int_t)comp),
			   "link %.0f MiB/s, LZ4 here %.0f MiB/s: %s",
			   (double)link / (1 << 20), (double)comp / (1 << 20),
			   m->run.handoff ? "hand-off, compression cannot pay" :
			   link && link < comp ? "tunnel, compression may pay" :
			   "tunnel");
	}
	if (m->cfg.o.codec != FERRY_CODEC_AUTO && !m->run.wire_cap)
		probe_for_sizing(m);
	if (m->run.handoff) {
		/* QEMU paces the wire now. */
		m->run.qemu_cap = m->run.wire_cap ? m->run.wire_cap :
						 MIG_BANDWIDTH_UNLIMITED;
		m->run.wire_cap = 0;
	}
}


static void report_progress(struct ferry_migration *m);
static int read_ctrl_news(struct ferry_migration *m, struct ferry_error *err);
static int control_request(struct ferry_migration *m, struct ferry_error *err);

/* The disk tunnel: n streams and a return connection, like the RAM's. */
static int open_disk_tunnel(struct ferry_migration *m, struct ferry_error *err)
{
	struct net_conn streams[WIRE_STREAMS_MAX];
	struct tun_opts o;
	int rc;

	rc = open_tunnel_conns(m, WIRE_CONN_DISK, WIRE_CONN_DISK_RETURN, streams,
			       &o, err);
	return rc < 0 ? rc : blk_src_start(m->run.blk, &o, err);
}

/*
 * --block: the mirrors copy every disk while the guest runs; RAM starts
 * when all are ready (and read-only disks copied), bounded by the disks'
 * size at a slow link's pace.
 */
static int phase_disks(struct ferry_migration *m, struct ferry_error *err)
{
	struct ferry_report sizes = { 0 };
	uint64_t limit_ms, deadline;
	int rc;

	set_phase(m, FERRY_PHASE_DISKS);
	rc = open_disk_tunnel(m, err);
	if (rc < 0)
		return rc;
	blk_src_report(m->run.blk, &sizes);
	limit_ms = (sizes.disk_size_bytes >> 30) * BLK_READY_TIMEOUT_MS_PER_GIB;
	if (limit_ms < BLK_READY_TIMEOUT_MIN_MS)
		limit_ms = BLK_READY_TIMEOUT_MIN_MS;
	deadline = ferry_now_ms() + limit_ms;
	for (;;) {
		struct pollfd fds[3] = {
			{ .fd = m->cancel_efd, .events = POLLIN },
			{ .fd = m->run.ctrl.fd, .events = POLLIN },
			{ .fd = m->run.ctl.fd, .events = POLLIN },
		};

		poll(fds, 3, (int)m->plan.progress_ms);
		if (fds[0].revents)
			return ferry_error_set(err, -ECANCELED,
					       "migration cancelled by request");
		if (fds[2].revents && control_request(m, err) < 0)
			return err->code;
		if (fds[1].revents || net_conn_pending(&m->run.ctrl))
			return read_ctrl_news(m, err);
		rc = blk_src_poll(m->run.blk, &m->run.disk_done, &m->run.disk_total, err);
		if (rc < 0)
			return rc;
		report_progress(m);
		if (rc == 1)
			break;
		if (ferry_now_ms() > deadline)
			return ferry_error_set(err, -ETIMEDOUT, "the disk mirrors "
				"were not ready after %llu s (%llu of %llu MiB)",
				(unsigned long long)(limit_ms / 1000),
				(unsigned long long)(m->run.disk_done >> 20),
				(unsigned long long)(m->run.disk_total >> 20));
	}
	conv_event(&m->run.conv, "disks_ready", json_pack("{s:I}", "bytes",
						     (json_int_t)m->run.disk_total),
		   "every disk mirror is ready (%llu MiB); migrating memory",
		   (unsigned long long)(m->run.disk_total >> 20));
	return net_ctrl_send(&m->run.ctrl, WIRE_CTRL_MEMORY, NULL, 0,
			     MIG_QMP_TIMEOUT_MS, err);
}

/* QEMU paces the memory stream itself (max-bandwidth), not ferry. */
static bool qemu_paces(const struct ferry_migration *m)
{
	return m->run.handoff || m->cfg.o.direct;
}

/*
 * One --bandwidth budget for memory and disks: the migration's pacer.
 * Where ferry paces the memory (its tunnel), both tunnels take from the
 * pacer at the whole cap, first come, first served. Where QEMU paces it
 * (hand-off, --direct), only the disks take from the pacer and QEMU's
 * max-bandwidth is what they leave: while the mirrors copy, before memory
 * starts, the disks have the whole cap; when memory starts (here), they
 * keep what the guest's writes were measured to cost them, a quarter more
 * for bursts, and QEMU gets the rest, each at least 1/MIG_CAP_SHARE_MIN_DIV
 * of the cap; at the switchover both get it whole again (cap_unsplit).
 */
static int cap_split(struct ferry_migration *m, struct ferry_error *err)
{
	uint64_t cap = m->plan.cap, floor = cap / MIG_CAP_SHARE_MIN_DIV;
	uint64_t need = blk_src_write_rate(m->run.blk);
	uint64_t disks = need + need / 4;
	int rc;

	if (!m->pacer || !m->run.blk || !qemu_paces(m))
		return 0;
	disks = disks < floor ? floor : disks > cap - floor ? cap - floor : disks;
	rc = mig_set_bandwidth(m->run.q, cap - disks, err);
	if (rc < 0)
		return ferry_error_prefix(err, "giving the source QEMU its part "
					  "of --bandwidth: ");
	pacer_set_rate(m->pacer, disks);
	m->run.disk_share = disks;
	m->run.qemu_cap = cap - disks;
	m->run.conv.link_cap = cap - disks;
	conv_event(&m->run.conv, "bandwidth_split",
		   json_pack("{s:I,s:I,s:I}", "disks_bytes_per_s", (json_int_t)disks,
			     "memory_bytes_per_s", (json_int_t)(cap - disks),
			     "disk_writes_bytes_per_s", (json_int_t)need),
		   "--bandwidth split: disks %.1f MiB/s (the guest's writes cost "
		   "them %.1f MiB/s), memory %.1f MiB/s", (double)disks / (1 << 20),
		   (double)need / (1 << 20), (double)(cap - disks) / (1 << 20));
	return 0;
}

/*
 * At the switchover the guest is stopped and QEMU waits in pre-switchover
 * until the disks are done: the disks complete alone, then QEMU sends
 * alone, so each may have the whole cap and their sum still keeps it.
 */
static int cap_unsplit(struct ferry_migration *m, struct ferry_error *err)
{
	int rc;

	if (!m->run.disk_share)
		return 0;
	rc = mig_set_bandwidth(m->run.q, m->plan.cap, err);
	if (rc < 0)
		return ferry_error_prefix(err, "giving the source QEMU the whole "
					  "--bandwidth: ");
	pacer_set_rate(m->pacer, m->plan.cap);
	m->run.disk_share = 0;
	m->run.qemu_cap = m->plan.cap;
	m->run.conv.link_cap = m->plan.cap;
	return 0;
}

/*
 * Post-copy's faults jump the queue: QEMU sends the pages the destination
 * waits for on a channel of their own (postcopy-preempt), which ferry
 * carries beside the bulk stream. Through ferry's tunnel only: hand-off
 * and --direct give QEMU one connection.
 */
static bool use_preempt(struct ferry_migration *m)
{
	bool on = m->run.conv.postcopy_cap && !m->run.handoff &&
		  !m->cfg.o.direct && !m->cfg.o.no_postcopy_preempt;

	if (on && mig_capability(m->run.q, "postcopy-preempt") < 0) {
		conv_event(&m->run.conv, "preempt", NULL, "the source QEMU has "
			   "no postcopy-preempt: post-copy's page requests "
			   "wait behind the bulk stream");
		return false;
	}
	if (on)
		conv_event(&m->run.conv, "preempt", NULL, "post-copy's page "
			   "requests get a channel of their own");
	return on;
}

static int phase_setup(struct ferry_migration *m, struct ferry_error *err)
{
	const struct ferry_converge_opts *co = &m->cfg.o.converge;
	struct mig_params p = {
		.max_bandwidth_bytes_per_s = m->run.qemu_cap,
		.downtime_ms = m->run.conv.downtime_now,
		.postcopy = m->run.conv.postcopy_cap,
		.auto_converge = m->run.conv.auto_converge_cap,
		.throttle_initial_pct = co->throttle_initial_pct,
		.throttle_increment_pct = co->throttle_increment_pct,
		.throttle_max_pct = co->throttle_max_pct,
		.throttle_tailslow = co->throttle_tailslow,
	};
	int rc;

	set_phase(m, FERRY_PHASE_SETUP);
	choose_transport(m);
	m->run.preempt = use_preempt(m);
	p.preempt = m->run.preempt;
	count_in_flight(m);
	p.downtime_ms = conv_qemu_downtime(&m->run.conv, m->run.conv.downtime_now);
	p.max_bandwidth_bytes_per_s = m->run.qemu_cap;
	p.pause_before_switchover = m->run.blk != NULL;
	rc = mig_setup_qemu(m->run.q, &p, err);
	if (rc < 0)
		return ferry_error_prefix(err, "configuring the source QEMU: ");
	if (m->run.blk) {
		rc = phase_disks(m, err);
		if (rc < 0)
			return rc;
		set_phase(m, FERRY_PHASE_SETUP);
	}
	rc = cap_split(m, err);
	if (rc < 0)
		return rc;
	rc = open_tunnel(m, err);
	if (rc < 0)
		return rc;
	rc = journal_step(m->run.journal, JOURNAL_STREAMING,
			  json_pack("{s:s}", "transport", run_transport(m)), err);
	if (rc < 0) {
		mig_drop_fd(m->run.q);
		preempt_drop(m);
		return rc;
	}
	rc = qemu_stream(m, false, err);
	if (rc < 0)
		return ferry_error_prefix(err, "source QEMU refused to migrate: ");
	m->run.migrate_started = true;
	return 0;
}

static uint64_t stream_bytes(struct ferry_migration *m)
{
	struct tun_stats st;

	if (!m->run.tun)
		return m->run.last.ram_transferred;
	tun_stats(m->run.tun, &st);
	return st.local_in_bytes;
}

static uint64_t wire_bytes(struct ferry_migration *m)
{
	struct tun_stats st;

	if (!m->run.tun)
		return m->run.last.ram_transferred;
	tun_stats(m->run.tun, &st);
	return st.wire_out_bytes + st.wire_in_bytes;
}

static void report_progress(struct ferry_migration *m)
{
	uint64_t now = ferry_now_ms(), bytes = wire_bytes(m);
	struct ferry_progress p = {
		.phase = m->run.phase,
		.elapsed_ms = now - m->run.t0_ms,
		.pass = m->run.last.dirty_sync_count,
		.ram_total_bytes = m->run.ram_bytes,
		.ram_transferred_bytes = m->run.last.ram_transferred,
		.ram_remaining_bytes = m->run.last.ram_remaining,
		.stream_bytes = stream_bytes(m),
		.wire_bytes = bytes,
		.dirty_pages_rate = m->run.last.dirty_pages_rate,
		.postcopy = m->run.conv.postcopy_active,
		.disk_total_bytes = m->run.disk_total,
		.disk_done_bytes = m->run.disk_done,
	};

	eta_update(&m->run.eta, p.elapsed_ms,
		   m->run.conv.postcopy_active ? 0 : m->run.conv.eta_ms);
	if (!m->run.conv.postcopy_active)
		p.eta_ms = eta_shown_ms(&m->run.eta, p.elapsed_ms, &p.eta_error_ms);

	wire_mig_id_format(m->run.mig_id, p.migration_id);

	if (m->run.last_sample_ms && now > m->run.last_sample_ms)
		m->run.throughput = (bytes - m->run.last_sample_bytes) * 1000 /
				(now - m->run.last_sample_ms);
	m->run.last_sample_ms = now;
	m->run.last_sample_bytes = bytes;
	p.throughput_bytes_per_s = m->run.throughput;
	if (m->cfg.o.progress)
		m->cfg.o.progress(&p, m->cfg.o.progress_opaque);
}

/* A control message during precopy can only be bad news. */
static int read_ctrl_news(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr h;
	int rc;

	rc = net_ctrl_recv(&m->run.ctrl, &h, payload, MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "control connection to the receiver: ");
	if (h.type == WIRE_CTRL_ERROR)
		return ferry_error_set(err, -EREMOTEIO, "the receiver reports: %s",
				       (char *)payload);
	return ferry_error_set(err, -EPROTO,
		"unexpected %s from the receiver during precopy",
		wire_ctrl_name(h.type));
}

static void note_postcopy(struct ferry_migration *m)
{
	m->run.conv.postcopy_active = true;
	m->run.conv.postcopy_t0_ms = ferry_now_ms();
}

/*
 * Switch to post-copy: QEMU stops the source guest, sends the device
 * state, and the destination runs, pulling the pages it lacks through the
 * return path (through ferry's tunnel, or QEMU's own socket with --direct).
 */
static int start_postcopy(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t resume[1];
	int rc;

	rc = journal_step(m->run.journal, JOURNAL_POSTCOPY, NULL, err);
	if (rc < 0)
		return rc;
	rc = qemu_migrate_start_postcopy(m->run.q, err);
	if (rc < 0)
		return ferry_error_prefix(err, "switching to post-copy: ");
	note_postcopy(m);
	conv_event(&m->run.conv, "postcopy", json_pack("{s:I,s:I}", "pass",
						  (json_int_t)m->run.last.dirty_sync_count,
						  "remaining_bytes",
						  (json_int_t)m->run.last.ram_remaining),
		   "switching to post-copy after pass %llu with %llu MiB left",
		   (unsigned long long)m->run.last.dirty_sync_count,
		   (unsigned long long)(m->run.last.ram_remaining >> 20));
	/* The receiver resumes the destination now, unless --paused. */
	return net_ctrl_send(&m->run.ctrl, WIRE_CTRL_POSTCOPY, resume,
			     wire_flag_encode(resume_destination(m), resume),
			     MIG_QMP_TIMEOUT_MS, err);
}

/*
 * QEMU paused before the switchover (the guest is stopped, precopy or
 * post-copy): complete the mirrors, have the destination sync them, and
 * only then let QEMU send the device state.
 */
static int disks_switchover(struct ferry_migration *m, struct ferry_error *err)
{
	int rc;

	if (m->run.disks_switched)
		return 0;
	rc = cap_unsplit(m, err);
	if (rc == 0)
		rc = blk_src_switchover(m->run.blk, err);
	if (rc < 0) {
		/* QEMU waits in pre-switchover: even when post-copy was asked
		 * for, the destination has nothing yet and the source guest
		 * may run on. */
		m->run.conv.postcopy_active = false;
		return rc;
	}
	m->run.disks_switched = true;
	blk_src_poll(m->run.blk, &m->run.disk_done, &m->run.disk_total, NULL);
	rc = journal_step(m->run.journal, JOURNAL_SWITCHOVER, NULL, err);
	if (rc < 0)
		return rc;
	rc = qemu_migrate_continue(m->run.q, "pre-switchover", err);
	if (rc < 0)
		return ferry_error_prefix(err, "migrate-continue: ");
	return 0;
}

/*
 * The stream broke here (the source QEMU's migration failed, or the
 * tunnel): often only the symptom of the destination failing, which the
 * receiver says in an ERROR. Wait for that, bounded, and report the
 * destination's failure when there is one; else @err as it is.
 */
static int peer_verdict(struct ferry_migration *m, int wait_ms,
			struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct pollfd p = { .fd = m->run.ctrl.fd, .events = POLLIN };
	char own[FERRY_ERROR_MSG_MAX];
	struct wire_ctrl_hdr h;

	snprintf(own, sizeof(own), "%s", err->msg);
	if (m->run.ctrl.fd >= 0 && (net_conn_pending(&m->run.ctrl) ||
				poll(&p, 1, wait_ms) > 0) &&
	    net_ctrl_recv(&m->run.ctrl, &h, payload, MIG_PEER_VERDICT_MS, NULL) == 0 &&
	    h.type == WIRE_CTRL_ERROR)
		return ferry_error_set(err, -EREMOTEIO, "the destination failed: "
				       "%s (%s)", (char *)payload, own);
	return err->code;
}

static int blame(struct ferry_migration *m, struct ferry_error *err)
{
	return peer_verdict(m, MIG_PEER_VERDICT_MS, err);
}

/*
 * query-migrate into m->run.last. A failed or cancelled migration has no RAM
 * statistics: the last ones seen are kept, so the report of a failure
 * says how far it got.
 */
static int query_keep_counters(struct ferry_migration *m,
			       struct ferry_error *err)
{
	struct mig_info now;
	int rc = mig_query(m->run.q, &now, err);

	if (rc < 0)
		return rc;
	if (!now.ram_total && m->run.last.ram_total) {
		now.total_time_ms = now.total_time_ms ? now.total_time_ms :
				    m->run.last.total_time_ms;
		now.ram_total = m->run.last.ram_total;
		now.ram_transferred = m->run.last.ram_transferred;
		now.ram_remaining = m->run.last.ram_remaining;
		now.dirty_sync_count = m->run.last.dirty_sync_count;
	}
	m->run.last = now;
	return 0;
}

/*
 * A request on the control socket (ferry abort, force-complete,
 * set-downtime from another terminal): answered here; -ECANCELED (with
 * @err) when the migration is to stop.
 */
static int control_request(struct ferry_migration *m, struct ferry_error *err)
{
	struct ferry_error e = { 0 };
	struct ctl_request req;
	int rc;

	if (ctl_take(&m->run.ctl, &req) <= 0)
		return 0;
	switch (req.cmd) {
	case CTL_ABORT:
		if (m->run.conv.postcopy_active) {
			ctl_answer(&req, false, "post-copy is running: the guest's "
				   "memory is split between the hosts, so it runs "
				   "to completion");
			return 0;
		}
		conv_event(&m->run.conv, "abort", NULL, "aborted by request "
			   "(control socket)");
		ctl_answer(&req, true, "aborting; the source guest runs on");
		return ferry_error_set(err, -ECANCELED, "migration aborted by "
				       "request (ferry abort)");
	case CTL_FORCE_COMPLETE:
		if (m->run.conv.postcopy_active) {
			ctl_answer(&req, true, "already in post-copy");
			return 0;
		}
		if (m->run.conv.postcopy_cap && m->run.migrate_started &&
		    !m->run.blk) {
			rc = start_postcopy(m, err);
			if (rc < 0) {
				/* The switch itself failed: that is the
				 * migration's failure, not the request's. */
				ctl_answer(&req, false, "%s", err->msg);
				return rc;
			}
			ctl_answer(&req, true, "switched to post-copy");
			return 0;
		}
		/* As Nova does: the rest is downtime. A failure later
		 * resumes the guest (fail_safe). */
		rc = qemu_stop(m->run.q, &e);
		if (rc < 0) {
			/* Refused; the migration goes on as it was. */
			ctl_answer(&req, false, "pausing the source guest: %s",
				   e.msg);
			return 0;
		}
		conv_event(&m->run.conv, "force_complete", NULL, "forced to "
			   "complete: the source guest is paused, the rest is "
			   "downtime");
		ctl_answer(&req, true, "paused the source guest: the rest of the "
			   "migration is downtime");
		return 0;
	case CTL_SET_DOWNTIME:
		rc = conv_set_downtime_limit(&m->run.conv, m->run.q, req.downtime_ms,
					     &e);
		if (rc < 0) {
			ctl_answer(&req, false, "%s", e.msg);
			return 0;
		}
		ctl_answer(&req, true, "downtime limit %u ms", req.downtime_ms);
		return 0;
	}
	ctl_answer(&req, false, "unknown request");
	return 0;
}

/* One turn of the precopy loop: 1 when QEMU completed, 0 to go on. */
static int precopy_step(struct ferry_migration *m, struct ferry_error *err)
{
	struct pollfd fds[5] = {
		{ .fd = m->cancel_efd, .events = POLLIN },
		{ .fd = m->run.ctrl.fd, .events = POLLIN },
		/* A tunnel that ended cleanly has nothing more to say. */
		{ .fd = m->run.tun && !tun_finished(m->run.tun) ?
			tun_done_fd(m->run.tun) : -1, .events = POLLIN },
		/* QEMU's MIGRATION events: completion is seen at once. */
		{ .fd = qmp_fd(m->run.q), .events = POLLIN },
		{ .fd = m->run.ctl.fd, .events = POLLIN },
	};
	int rc;

	if (net_conn_pending(&m->run.ctrl))
		fds[1].revents = POLLIN;
	else
		poll(fds, 5, (int)m->plan.progress_ms);
	if (fds[3].revents && qmp_pump(m->run.q, err) < 0)
		return ferry_error_prefix(err, "source QEMU: ");
	if (fds[4].revents && control_request(m, err) < 0)
		return err->code;
	if (fds[0].revents && m->run.conv.postcopy_active) {
		uint64_t n;

		/* The destination runs the guest already and the source holds
		 * pages it has not sent: stopping now would lose the guest. */
		if (read(m->cancel_efd, &n, sizeof(n)) < 0) {
			/* nothing pending after all */
		}
		conv_event(&m->run.conv, "cancel_refused", NULL,
			   "not cancelling a post-copy migration: the guest's memory "
			   "is split between the hosts; carrying on until it completes");
	} else if (fds[0].revents) {
		return ferry_error_set(err, -ECANCELED, "migration cancelled by request");
	}
	rc = query_keep_counters(m, err);
	if (rc < 0)
		return ferry_error_prefix(err, "source QEMU: ");
	if (m->run.last.state == MIG_S_COMPLETED)
		return 1;
	if (!mig_state_active(m->run.last.state)) {
		ferry_error_set(err, -EIO, "source QEMU migration %s%s%s",
				m->run.last.status, m->run.last.error_desc[0] ? ": " : "",
				m->run.last.error_desc);
		return blame(m, err);
	}
	if (m->run.conv.postcopy_active && m->run.last.state == MIG_S_POSTCOPY_PAUSED)
		return ferry_error_set(err, -EAGAIN, "the source QEMU paused post-copy");
	if (m->run.blk && m->run.last.state == MIG_S_PRE_SWITCHOVER)
		return disks_switchover(m, err);
	if (m->run.blk && !m->run.disks_switched && blk_src_tick(m->run.blk, err) < 0)
		return -EIO;
	if (fds[1].revents) {
		rc = read_ctrl_news(m, err);
		if (m->run.conv.postcopy_active && rc != -EREMOTEIO)
			return ferry_error_recode(err, -EAGAIN);
		return rc;
	}
	if (m->run.tun && !tun_finished(m->run.tun)) {
		rc = tun_wait(m->run.tun, 0, err);
		if (rc == -ETIMEDOUT)
			rc = 0;
		if (rc < 0 && m->run.conv.postcopy_active && !m->cfg.o.direct) {
			ferry_error_prefix(err, "tunnel broke: ");
			return ferry_error_recode(err, -EAGAIN);
		}
		if (rc < 0) {
			ferry_error_prefix(err, "tunnel to the receiver broke: ");
			return blame(m, err);
		}
	}
	if (m->run.last.state == MIG_S_POSTCOPY_ACTIVE && !m->run.conv.postcopy_active)
		note_postcopy(m);
	{
		bool go = false;

		rc = conv_step(&m->run.conv, m->run.q, &m->run.last, &go, err);
		if (rc < 0)
			return rc;
		if (go && !m->run.conv.postcopy_active) {
			rc = start_postcopy(m, err);
			if (rc < 0)
				return rc;
		}
	}
	report_progress(m);
	return 0;
}

/* Wait (bounded) for the source QEMU to reach @want. */
static int wait_qemu_status(struct ferry_migration *m, const char *want,
			    int timeout_ms, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + (uint64_t)timeout_ms;

	while (ferry_now_ms() < deadline) {
		int rc = mig_query(m->run.q, &m->run.last, err);

		if (rc < 0)
			return rc;
		if (!strcmp(m->run.last.status, want))
			return 0;
		if (!mig_state_active(m->run.last.state))
			return ferry_error_set(err, -EIO, "source QEMU migration is "
					       "'%s'", m->run.last.status);
		usleep(50 * 1000);
	}
	return ferry_error_set(err, -ETIMEDOUT, "source QEMU never reached '%s'",
			       want);
}

/*
 * Post-copy broke (the connection, the tunnel, or QEMU's own stream): both
 * QEMUs stop in postcopy-paused with the guest's state split between them.
 * Reconnect with backoff for a bounded time: a new control connection
 * (RESUME), the receiver has the destination migrate-recover on a new
 * tunnel, and the source QEMU resumes the migration on it.
 */
static int recover_postcopy(struct ferry_migration *m, const char *why,
			    struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + m->run.recovery_wait_ms;
	uint32_t backoff = MIG_RECOVERY_BACKOFF_MIN_MS, attempt = 0;
	char reason[FERRY_ERROR_MSG_MAX];
	int rc;

	snprintf(reason, sizeof(reason), "%s", why);
	conv_event(&m->run.conv, "recovery", NULL,
		   "post-copy interrupted (%s); reconnecting for up to %d s",
		   reason, m->run.recovery_wait_ms / 1000);
	if (m->run.tun)
		tun_cancel(m->run.tun);
	tun_free(m->run.tun);
	m->run.tun = NULL;
	/* Nothing to resume without the source QEMU: fail_safe says so to
	 * the receiver at once. */
	if (mig_query(m->run.q, &m->run.last, err) < 0)
		return ferry_error_prefix(err, "source QEMU: ");
	/* The destination's failure may be why: then nothing can resume. */
	if (peer_verdict(m, MIG_RECOVERY_VERDICT_MS, err) == -EREMOTEIO)
		return -EREMOTEIO;
	net_conn_close(&m->run.ctrl);
	/* Only ferry's side broke (the control connection, say): QEMU's own
	 * stream still runs. Pause it, so that both ends resume together on
	 * the new connections. */
	if (mig_query(m->run.q, &m->run.last, NULL) == 0 &&
	    m->run.last.state == MIG_S_POSTCOPY_ACTIVE)
		qemu_migrate_pause(m->run.q, NULL);
	rc = wait_qemu_status(m, "postcopy-paused", MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "post-copy recovery: ");
	m->run.resuming = true;
	while (ferry_now_ms() < deadline) {
		struct ferry_error e = { 0 };

		attempt++;
		rc = open_conn(m, &m->run.ctrl, WIRE_CONN_CONTROL, 0, &e);
		if (rc == 0)
			rc = await_ready(m, &e);
		if (rc == 0)
			rc = open_tunnel(m, &e);
		if (rc == 0)
			rc = qemu_stream(m, true, &e);
		if (rc == 0) {
			m->run.resuming = false;
			m->run.recoveries++;
			conv_event(&m->run.conv, "recovered",
				   json_pack("{s:i}", "attempt", (int)attempt),
				   "post-copy resumed on a new connection (attempt %u)",
				   attempt);
			return 0;
		}
		conv_event(&m->run.conv, "recovery_attempt",
			   json_pack("{s:i}", "attempt", (int)attempt),
			   "attempt %u failed: %s; next in %u ms", attempt, e.msg,
			   backoff);
		tun_free(m->run.tun);
		m->run.tun = NULL;
		net_conn_close(&m->run.ctrl);
		usleep(backoff * 1000);
		if (backoff < MIG_RECOVERY_BACKOFF_MAX_MS)
			backoff *= 2;
	}
	m->run.resuming = false;
	return ferry_error_set(err, -EHOSTUNREACH,
		"post-copy recovery failed within %d s (%s); the guest's state is "
		"split between the source and the destination, both paused in "
		"postcopy-paused", m->run.recovery_wait_ms / 1000, reason);
}

static int phase_precopy(struct ferry_migration *m, struct ferry_error *err)
{
	int rc;

	set_phase(m, FERRY_PHASE_PRECOPY);
	while ((rc = precopy_step(m, err)) == 0 || rc == -EAGAIN) {
		if (rc == -EAGAIN) {
			rc = recover_postcopy(m, err->msg, err);
			if (rc < 0)
				return rc;
			continue;
		}
		/* qmp events are not used yet; keep the queue from filling. */
		struct qmp_event ev;

		while (qmp_wait_event(m->run.q, NULL, &ev, 0, NULL) == 0)
			qmp_event_clear(&ev);
	}
	return rc < 0 ? rc : 0;
}

static int phase_completing(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	uint8_t resume[1];
	struct wire_ctrl_hdr h;
	const char *status;
	bool ok;
	int rc;

	set_phase(m, FERRY_PHASE_COMPLETING);
	/* The source QEMU completed: from here the destination may hold the
	 * only runnable copy, and the source must never run again unless
	 * the receiver says the destination did not take over. */
	m->run.source_completed = true;
	report_progress(m);
	if (m->run.tun) {
		rc = tun_wait(m->run.tun, MIG_FINISH_TIMEOUT_MS, err);
		if (rc < 0)
			return ferry_error_prefix(err, "tunnel after completion: ");
	}
	/* The source QEMU completed: the destination holds the guest now. */
	rc = journal_step(m->run.journal, JOURNAL_SWITCHOVER,
			  json_pack("{s:b}", "resume", resume_destination(m)), err);
	if (rc < 0)
		return rc;
	rc = net_ctrl_send(&m->run.ctrl, WIRE_CTRL_FINISH, resume,
			   wire_flag_encode(resume_destination(m), resume),
			   MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	rc = net_ctrl_recv(&m->run.ctrl, &h, payload, MIG_FINISH_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "waiting for the destination to finish: ");
	/* A definite answer: the destination knows whether it runs. */
	if (h.type == WIRE_CTRL_ERROR) {
		/* It does not: the source may run its guest again. */
		m->run.source_completed = false;
		return ferry_error_set(err, -EREMOTEIO,
			"the destination did not take over: %s", (char *)payload);
	}
	if (h.type != WIRE_CTRL_FINISHED)
		return ferry_error_set(err, -EPROTO, "expected FINISHED, got %s",
				       wire_ctrl_name(h.type));
	rc = wire_finished_decode(&h, payload, &ok, &status, &m->run.blocktime_ms,
				  err);
	if (rc < 0)
		return rc;
	if (!ok) {
		m->run.source_completed = false;
		return ferry_error_set(err, -EREMOTEIO,
			"the destination did not take over: %s", status);
	}
	return 0;
}

/* Wait (bounded) for QEMU to leave the active states after a cancel. */
static void cancel_qemu_migration(struct ferry_migration *m)
{
	uint64_t deadline = ferry_now_ms() + MIG_CANCEL_TIMEOUT_MS;
	struct mig_info info;

	qemu_migrate_cancel(m->run.q, NULL);
	while (ferry_now_ms() < deadline) {
		if (mig_query(m->run.q, &info, NULL) < 0 ||
		    !mig_state_active(info.state))
			return;
		usleep(50 * 1000);
	}
	ferry_log(FERRY_LOG_WARN, "source QEMU still in migration state '%s' %d ms after migrate_cancel",
		  info.status, MIG_CANCEL_TIMEOUT_MS);
}

/*
 * Whether the source QEMU is gone (not merely slow to answer): its QMP
 * connection fails and its process has exited (or, when its pid is not
 * known, its socket refuses a new connection).
 */
static bool source_qemu_gone(struct ferry_migration *m)
{
	struct ferry_error e = { 0 };
	struct qmp *q;

	if (m->run.q && mig_query(m->run.q, &m->run.last, NULL) == 0)
		return false;
	if (m->run.qemu_pid > 0) {
		/*
		 * A killed process closes its sockets before it becomes a
		 * zombie: QMP can be dead a moment before /proc says so.
		 * Bounded: a QEMU that only stopped answering stays.
		 */
		uint64_t until = ferry_now_ms() + MIG_QEMU_EXIT_WAIT_MS;

		while (!qemu_process_gone(m->run.qemu_pid)) {
			if (ferry_now_ms() >= until)
				return false;
			usleep(10 * 1000);
		}
		return true;
	}
	q = qmp_connect(m->cfg.o.qmp_path, MIG_PEER_VERDICT_MS, &e);
	qmp_close(q);
	return !q && (e.code == -ENOENT || e.code == -ECONNREFUSED);
}

/*
 * The failure path: whatever happened, the guest must keep running on the
 * source. Cancel QEMU's migration, tell the receiver, stop the tunnel, and
 * resume the source guest if it was running and is not any more (QEMU
 * stops it at switchover, so a failure after that leaves it paused).
 * Returns whether the source guest is confirmed running (or paused as it
 * was before).
 */
static bool fail_safe(struct ferry_migration *m, struct ferry_error *err)
{
	char status[32] = "";
	const char *why = err->msg;

	set_phase(m, FERRY_PHASE_CANCELLING);
	/* Before the disks switched over, QEMU waits in pre-switchover at the
	 * latest: no device state went out, post-copy or not. */
	if (m->run.blk && !m->run.disks_switched)
		m->run.conv.postcopy_active = false;
	if (m->run.conv.postcopy_active && m->run.q &&
	    mig_query(m->run.q, &m->run.last, NULL) == 0 &&
	    (m->run.last.state == MIG_S_FAILED ||
	     m->run.last.state == MIG_S_CANCELLED)) {
		/* QEMU failed the switchover itself: the destination never got
		 * the device state, so the source still holds the whole guest
		 * and may run it again. */
		m->run.conv.postcopy_active = false;
	}
	if (m->run.conv.postcopy_active && source_qemu_gone(m)) {
		/*
		 * The source QEMU is gone: nothing can resume. Say so to a
		 * receiver still there, so that it does not wait for a source
		 * that cannot come back.
		 */
		ferry_error_prefix(err, "the source QEMU is gone during post-copy: "
				   "the guest's pages that had not reached the "
				   "destination are lost with it: ");
		if (m->run.ctrl.fd >= 0)
			net_ctrl_send(&m->run.ctrl, WIRE_CTRL_CANCEL, err->msg,
				      (uint32_t)strnlen(err->msg, sizeof(err->msg)),
				      MIG_PEER_VERDICT_MS, NULL);
		ferry_log(FERRY_LOG_ERROR, "%s", err->msg);
		return false;
	}
	if (m->run.conv.postcopy_active && err->code == -EREMOTEIO) {
		ferry_error_prefix(err, "post-copy failed on the destination, "
				   "which held the guest's state since the "
				   "switchover: the source QEMU cannot run it "
				   "again and stays stopped: ");
		ferry_log(FERRY_LOG_ERROR, "%s", err->msg);
		return false;
	}
	if (m->run.conv.postcopy_active) {
		/*
		 * Post-copy broke: the destination ran the guest and holds the
		 * newest state of the pages it touched, the source holds the
		 * rest. Resuming the source would run a stale guest; QEMU keeps
		 * both sides in postcopy-paused for a recovery.
		 */
		ferry_error_prefix(err, "post-copy failed; the guest's state is "
				   "split between the source and the destination "
				   "(both paused, waiting for recovery): ");
		ferry_log(FERRY_LOG_ERROR, "%s", err->msg);
		return false;
	}
	if (m->run.ctrl.fd >= 0)
		net_ctrl_send(&m->run.ctrl, WIRE_CTRL_CANCEL, why,
			      (uint32_t)strnlen(why, sizeof(err->msg)), 1000, NULL);
	if (m->run.tun)
		tun_cancel(m->run.tun);
	if (!m->run.q)
		return false;
	if (m->run.migrate_started)
		cancel_qemu_migration(m);
	/* The mirrors stop; the source disks were only ever read. */
	blk_src_abort(m->run.blk);
	if (mig_vm_status(m->run.q, status, sizeof(status), NULL) < 0)
		return false;
	/* QEMU completed on its own (hand-off, or before ferry noticed): the
	 * device state went out, and the destination may run the guest. */
	if (!m->run.source_completed && mig_query(m->run.q, &m->run.last, NULL) == 0 &&
	    m->run.last.state == MIG_S_COMPLETED)
		m->run.source_completed = true;
	if (m->run.source_completed) {
		/*
		 * The source QEMU completed and the receiver never said the
		 * destination did not take over: the destination may hold or
		 * run the only copy. Resuming the source too could run two
		 * copies of one guest, so the source stays as it is.
		 */
		ferry_log(FERRY_LOG_ERROR,
			  "the destination may be running the guest; source left '%s' for the operator",
			  status);
		return false;
	}
	if (m->run.was_running && strcmp(status, "running") != 0) {
		ferry_log(FERRY_LOG_WARN, "source guest is '%s' after the failure; resuming it",
			  status);
		if (qemu_cont(m->run.q, NULL) < 0 ||
		    mig_vm_status(m->run.q, status, sizeof(status), NULL) < 0)
			return false;
	}
	return strcmp(status, m->run.was_running ? "running" : "paused") == 0;
}

static void fill_report(struct ferry_migration *m, struct ferry_report *r)
{
	memset(r, 0, sizeof(*r));
	r->direct = m->cfg.o.direct;
	wire_mig_id_format(m->run.mig_id, r->migration_id);
	r->end_unix_ms = ferry_unix_ms();
	snprintf(r->source, sizeof(r->source), "%s", m->cfg.o.qmp_path);
	snprintf(r->destination, sizeof(r->destination), "%s:%u",
		 m->cfg.o.to_host, m->cfg.o.to_port);
	r->total_ms = ferry_now_ms() - m->run.t0_ms;
	r->qemu_total_ms = m->run.last.total_time_ms;
	r->downtime_ms = m->run.last.downtime_ms;
	/* Cold: the guest was stopped for the whole run, whatever QEMU's
	 * counter says (it starts at QEMU's own stop, after ferry's). */
	if (m->cfg.o.cold && m->run.was_running)
		r->downtime_ms = r->total_ms;
	r->downtime_limit_ms = m->run.conv.limits.downtime_max_ms;
	eta_accuracy(&m->run.eta, r->total_ms, r->eta_off_ms);
	r->has_postcopy_blocktime = m->run.blocktime_ms != WIRE_BLOCKTIME_UNKNOWN;
	if (r->has_postcopy_blocktime)
		r->postcopy_blocktime_ms = m->run.blocktime_ms;
	r->setup_ms = m->run.last.setup_time_ms;
	r->ram_size_bytes = m->run.ram_bytes;
	r->ram_bytes = stream_bytes(m);
	r->wire_bytes = wire_bytes(m);
	r->passes = m->run.last.dirty_sync_count;
	if (m->run.last.total_time_ms)
		r->throughput_bytes_per_s = r->wire_bytes * 1000 / m->run.last.total_time_ms;
	snprintf(r->codec, sizeof(r->codec), "%s", m->cfg.o.direct || m->run.handoff ?
		 "none" : ferry_codec_name(m->cfg.o.codec));
	snprintf(r->transport, sizeof(r->transport), "%s", run_transport(m));
	r->probe_bytes_per_s = m->run.probe_rate;
	r->streams = m->cfg.o.direct ? 0 : m->plan.streams;
	snprintf(r->tls, sizeof(r->tls), "%s", tls_ctx_mode(m->tls));
	snprintf(r->policy, sizeof(r->policy), "%s",
		 m->run.conv.policy ? m->run.conv.policy->name : "");
	r->postcopy = m->run.conv.postcopy_active;
	if (m->run.conv.postcopy_active)
		r->postcopy_ms = ferry_now_ms() - m->run.conv.postcopy_t0_ms;
	r->throttle_pct_max = m->run.conv.throttle_max;
	r->downtime_steps = m->run.conv.downtime_changes;
	r->recoveries = m->run.recoveries;
	r->predicted_total_ms = m->run.conv.predicted_total_ms;
	blk_src_report(m->run.blk, r);
	if (m->run.tun) {
		struct tun_stats st;

		tun_stats(m->run.tun, &st);
		r->frames_raw = st.frames_codec[WIRE_CODEC_RAW];
		r->frames_lz4 = st.frames_codec[WIRE_CODEC_LZ4];
		r->frames_zstd = st.frames_codec[WIRE_CODEC_ZSTD];
		report_tunnel_cpu(r, &st);
	}
}

static void teardown(struct ferry_migration *m)
{
	ctl_close(&m->run.ctl);
	blk_src_free(m->run.blk);
	m->run.blk = NULL;
	tun_free(m->run.tun);
	m->run.tun = NULL;
	net_conn_close(&m->run.ctrl);
	conv_fini(&m->run.conv);
	qmp_close(m->run.q);
	m->run.q = NULL;
}

/* A run starts from nothing but the configuration and the plan. */
static void run_reset(struct ferry_migration *m)
{
	memset(&m->run, 0, sizeof(m->run));
	net_conn_init(&m->run.ctrl, -1);
	m->run.ctl.fd = -1;
	m->run.wire_cap = m->plan.wire_cap;
	m->run.qemu_cap = m->plan.qemu_cap;
	if (m->pacer)
		pacer_set_rate(m->pacer, m->plan.cap);
	m->run.phase = FERRY_PHASE_INIT;
	m->run.t0_ms = ferry_now_ms();
	m->run.recovery_wait_ms = MIG_RECOVERY_TIMEOUT_MS;
	m->run.blocktime_ms = WIRE_BLOCKTIME_UNKNOWN;
	m->run.pend.lfd = -1;
	eta_init(&m->run.eta);
}

/* The end of a run, completed (@rc 0) or not: the report, the source
 * guest kept running on a failure where it may, the journal's verdict. */
static int run_end(struct ferry_migration *m, int rc, struct ferry_report *report,
		   struct ferry_error *err)
{
	fill_report(m, report);
	if (rc < 0) {
		/* A run that did not end has no length to judge it by. */
		for (int k = 0; k < ETA_CHECKPOINTS; k++)
			report->eta_off_ms[k] = FERRY_ETA_UNKNOWN;
	}
	if (rc == 0) {
		set_phase(m, FERRY_PHASE_DONE);
		report->completed = true;
		snprintf(report->status, sizeof(report->status), "completed");
		/* A cold migration stops the guest on purpose. */
		report->downtime_exceeded = !m->cfg.o.cold &&
					    report->downtime_ms >
					    report->downtime_limit_ms;
		if (report->downtime_exceeded)
			conv_event(&m->run.conv, "downtime_exceeded",
				   json_pack("{s:I,s:i}", "downtime_ms",
					     (json_int_t)report->downtime_ms,
					     "limit_ms",
					     (int)report->downtime_limit_ms),
				   "QEMU's downtime, %llu ms, went over the "
				   "limit of %u ms",
				   (unsigned long long)report->downtime_ms,
				   report->downtime_limit_ms);
	} else {
		report->source_running = fail_safe(m, err);
		report->source_untouched = !m->run.q;
		set_phase(m, FERRY_PHASE_FAILED);
		snprintf(report->status, sizeof(report->status), "%s",
			 rc == -ECANCELED ? "cancelled" : "failed");
		snprintf(report->error, sizeof(report->error), "%s", err->msg);
	}
	/* Every migration's events end with one of these. */
	conv_event(&m->run.conv, report->status, json_pack("{s:b,s:b,s:s?}",
		   "source_running", report->completed ? false :
		   report->source_running, "source_untouched",
		   report->source_untouched, "error", rc == 0 ? NULL : err->msg),
		   "the migration %s", report->status);
	journal_step(m->run.journal, rc == 0 ? JOURNAL_COMPLETED :
		     report->source_running || report->source_untouched ?
		     JOURNAL_FAILED : JOURNAL_UNRESOLVED,
		     rc == 0 ? json_pack("{s:o*}", "report", report_json(report)) :
		     json_pack("{s:b,s:s,s:o*}", "source_running",
			       report->source_running, "error", err->msg,
			       "report", report_json(report)), NULL);
	journal_close(m->run.journal);
	m->run.journal = NULL;
	teardown(m);
	return rc;
}

int (ferry_migration_run)(struct ferry_migration *m, struct ferry_report *report,
			  struct ferry_error *err)
{
	return ferry_migration_run_sized(m, report, ABI0_REPORT_SIZE, err);
}

int ferry_migration_run_sized(struct ferry_migration *m,
			      struct ferry_report *report, size_t size,
			      struct ferry_error *err)
{
	struct ferry_report full;
	int rc;

	memset(&full, 0, sizeof(full));
	rc = migration_run(m, &full, err);
	report_copy_out(report, size, &full);
	return rc;
}

static int migration_run(struct ferry_migration *m, struct ferry_report *report,
			 struct ferry_error *err)
{
	struct ferry_error local = { 0 };
	int rc;

	if (!err)
		err = &local;
	run_reset(m);
	rc = phase_connect(m, err);
	if (rc == 0 && cancel_requested(m))
		rc = ferry_error_set(err, -ECANCELED, "migration cancelled by request");
	if (rc == 0)
		rc = phase_setup(m, err);
	if (rc == 0)
		rc = phase_precopy(m, err);
	if (rc == 0) {
		/* Final numbers (downtime, total-time) once completed. */
		mig_query(m->run.q, &m->run.last, NULL);
		rc = phase_completing(m, err);
	}
	return run_end(m, rc, report, err);
}

/*
 * The source QEMU of a resumed post-copy: in post-copy still, paused
 * (ferry's stream broke with ferry) or streaming on its own (hand-off,
 * --direct: then it is left to finish, bounded). 1 when it completed
 * without ferry: nothing is left to resume.
 */
static int resume_connect(struct ferry_migration *m, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + m->run.recovery_wait_ms;
	char id[37];
	int rc;

	set_phase(m, FERRY_PHASE_CONNECT);
	m->run.q = qmp_connect(m->cfg.o.qmp_path, MIG_QMP_TIMEOUT_MS, err);
	if (!m->run.q)
		return ferry_error_prefix(err, "source QEMU at %s: ",
					  m->cfg.o.qmp_path);
	m->run.qemu_pid = qmp_peer_pid(m->run.q);
	rc = mig_ram_size(m->run.q, &m->run.ram_bytes, err);
	while (rc == 0) {
		rc = mig_query(m->run.q, &m->run.last, err);
		if (rc < 0 || m->run.last.state == MIG_S_COMPLETED ||
		    m->run.last.state == MIG_S_POSTCOPY_PAUSED)
			break;
		if (m->run.last.state != MIG_S_POSTCOPY_ACTIVE)
			return ferry_error_set(err, -EINVAL, "the source QEMU's "
					       "migration is '%s', not in post-copy",
					       m->run.last.status);
		if (ferry_now_ms() > deadline)
			return ferry_error_set(err, -ETIMEDOUT, "the source QEMU "
					       "is still streaming post-copy on "
					       "its own after %u s",
					       m->run.recovery_wait_ms / 1000);
		usleep(RESUME_POLL_MS * 1000);
	}
	if (rc < 0)
		return rc;
	wire_mig_id_format(m->run.mig_id, id);
	rc = conv_init(&m->run.conv, &m->cfg.o, m->run.q, m->run.ram_bytes,
		       m->run.wire_cap, false, id, err);
	/* Post-copy began before: the source guest never runs again, and a
	 * failure from here leaves both sides paused (fail_safe). */
	m->run.conv.postcopy_cap = true;
	note_postcopy(m);
	m->run.migrate_started = true;
	m->run.source_completed = m->run.last.state == MIG_S_COMPLETED;
	if (rc < 0)
		return rc;
	return m->run.source_completed ? 1 : 0;
}

int mig_resume_postcopy(struct ferry_migration *m, const struct mig_resume *rs,
			struct ferry_report *report, struct ferry_error *err)
{
	int rc;

	run_reset(m);
	m->run.journal = rs->journal;
	if (rs->wait_ms)
		m->run.recovery_wait_ms = rs->wait_ms;
	/* The source QEMU is in post-copy now: how the guest was when the
	 * migration began comes from the journal. */
	m->run.was_running = rs->was_running;
	m->run.handoff = !strcmp(rs->transport, "handoff");
	if (wire_mig_id_parse(rs->id, m->run.mig_id) < 0) {
		rc = ferry_error_set(err, -EINVAL, "'%s' is not a migration id",
				     rs->id);
		return run_end(m, rc, report, err);
	}
	rc = resume_connect(m, err);
	/* QEMU opens the preempt channel again only if it had one. */
	if (rc == 0)
		m->run.preempt = mig_capability(m->run.q, "postcopy-preempt") == 1;
	if (rc == 0)
		rc = journal_step(m->run.journal, JOURNAL_POSTCOPY,
				  json_pack("{s:b}", "recover", true), err);
	if (rc == 0)
		rc = recover_postcopy(m, "ferry recover resumes it", err);
	if (rc == 0)
		rc = phase_precopy(m, err);
	if (rc == 0) {
		mig_query(m->run.q, &m->run.last, NULL);
		rc = phase_completing(m, err);
	}
	/* Completed without ferry: the destination has all it needs. */
	if (rc == 1)
		rc = 0;
	return run_end(m, rc, report, err);
}

int mig_host_info(struct ferry_migration *m, uint64_t ram_bytes,
		  struct wire_host *h, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr hdr;
	struct net_conn c;
	int rc;

	run_reset(m);
	m->run.ram_bytes = ram_bytes;
	rc = wire_mig_id_random(m->run.mig_id);
	if (rc < 0)
		return ferry_error_set(err, rc, "getrandom: %s", strerror(-rc));
	rc = open_conn(m, &c, WIRE_CONN_HOST, 0, err);
	if (rc < 0)
		return rc;
	rc = net_ctrl_recv(&c, &hdr, payload, MIG_QMP_TIMEOUT_MS, err);
	if (rc == 0 && hdr.type == WIRE_CTRL_ERROR)
		rc = ferry_error_set(err, -EREMOTEIO, "the receiver refused: %s",
				     (char *)payload);
	else if (rc == 0)
		rc = wire_host_decode(&hdr, payload, h, err);
	net_conn_close(&c);
	return rc;
}
