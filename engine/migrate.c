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

#include "blk.h"
#include "journal.h"
#include "mig.h"
#include "transport/net.h"
#include "transport/probe.h"
#include "converge.h"
#include "transport/tls.h"
#include "transport/tunnel.h"
#include "transport/wire.h"
#include "util.h"

struct ferry_migration {
	struct ferry_migrate_opts o;
	char *qmp_path, *to_host, *tls_host, *disks;
	int cancel_efd;
	struct tls_ctx *tls;
	uint64_t wire_cap;	/* --bandwidth on ferry's transport */
	uint64_t user_wire_cap, user_qemu_cap;	/* as set up, for each run */

	/* Per run. */
	enum ferry_phase phase;
	struct qmp *q;
	struct net_conn ctrl;
	struct tun *tun;
	struct converge conv;
	bool resuming;		/* reconnecting a broken post-copy */
	uint32_t recoveries;
	bool migrate_started;
	bool was_running;
	bool source_completed;	/* the source QEMU completed: never cont it */
	uint8_t mig_id[WIRE_MIG_ID_BYTES];
	uint64_t ram_bytes;
	uint64_t t0_ms;
	char *vm_name;		/* owned copy of o.vm_name */
	char *state_dir;	/* owned copy of o.state_dir */
	struct journal *journal;	/* this run's; NULL without state_dir */
	bool handoff;		/* QEMU writes to ferry's data connection */
	uint64_t probe_rate;	/* the link probe's answer, bytes/s */
	struct mig_info last;
	uint64_t last_sample_ms, last_sample_bytes, throughput;
	struct blk_src *blk;	/* --block */
	bool disks_switched;	/* mirrors completed at pre-switchover */
	uint64_t disk_done, disk_total;
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

struct ferry_migration *ferry_migration_new(const struct ferry_migrate_opts *o,
					    struct ferry_error *err)
{
	struct ferry_migration *m;

	if (!o->qmp_path || !o->to_host || !o->to_port) {
		ferry_error_set(err, -EINVAL,
			"a migration needs the source QMP socket and the receiver's HOST:PORT");
		return NULL;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		goto err_nomem;
	m->o = *o;
	m->cancel_efd = -1;
	m->qmp_path = strdup(o->qmp_path);
	m->to_host = strdup(o->to_host);
	if (!m->qmp_path || !m->to_host)
		goto err_free;
	memset(&m->o.tls, 0, sizeof(m->o.tls));
	if (!o->streams)
		m->o.streams = 1;
	if (m->o.streams > WIRE_STREAMS_MAX) {
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
	if (tls_ctx_new(&m->tls, &o->tls, false, err) < 0)
		goto err_out;
	m->tls_host = strdup(o->tls.hostname ? o->tls.hostname : o->to_host);
	if (!m->tls_host)
		goto err_free;
	if (o->vm_name) {
		if (!wire_vm_name_valid(o->vm_name)) {
			uint8_t scratch[WIRE_VM_NAME_MAX];

			wire_vm_encode(o->vm_name, scratch, err);
			ferry_error_prefix(err, "--vm: ");
			goto err_out;
		}
		m->vm_name = strdup(o->vm_name);
		if (!m->vm_name)
			goto err_free;
		m->o.vm_name = m->vm_name;
	}
	if (o->state_dir) {
		m->state_dir = strdup(o->state_dir);
		if (!m->state_dir)
			goto err_free;
		m->o.state_dir = m->state_dir;
	}
	if (o->block.disks) {
		m->disks = strdup(o->block.disks);
		if (!m->disks)
			goto err_free;
		m->o.block.disks = m->disks;
	}
	m->wire_cap = o->direct ? 0 : o->max_bandwidth_bytes_per_s;
	if (!o->direct)
		m->o.max_bandwidth_bytes_per_s = 0;	/* ferry paces the wire */
	m->o.qmp_path = m->qmp_path;
	m->o.to_host = m->to_host;
	if (!m->o.downtime_ms)
		m->o.downtime_ms = FERRY_DEFAULT_DOWNTIME_MS;
	if (!m->o.progress_interval_ms)
		m->o.progress_interval_ms = FERRY_DEFAULT_PROGRESS_MS;
	if (!m->o.max_bandwidth_bytes_per_s)
		m->o.max_bandwidth_bytes_per_s = MIG_BANDWIDTH_UNLIMITED;
	m->user_wire_cap = m->wire_cap;
	m->user_qemu_cap = m->o.max_bandwidth_bytes_per_s;
	m->cancel_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->cancel_efd < 0)
		goto err_free;
	net_conn_init(&m->ctrl, -1);
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
	free(m->tls_host);
	free(m->disks);
	free(m->vm_name);
	free(m->state_dir);
	free(m->qmp_path);
	free(m->to_host);
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
		  ferry_phase_name(m->phase), ferry_phase_name(p));
	m->phase = p;
}

/* Read the receiver's answer to our hello: READY, or ERROR with a reason. */
static int await_ready(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr h;
	int rc;

	rc = net_ctrl_recv(&m->ctrl, &h, payload, MIG_FINISH_TIMEOUT_MS, err);
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

/* Connect, TLS, hello: one of the migration's connections. */
static int open_conn(struct ferry_migration *m, struct net_conn *c,
		     enum wire_conn kind, uint16_t index, struct ferry_error *err)
{
	struct wire_hello h = {
		.version = WIRE_VERSION,
		.conn = kind,
		.options = (m->o.paused ? WIRE_OPT_PAUSED : 0) |
			   (m->o.direct ? WIRE_OPT_DIRECT : 0) |
			   (m->conv.postcopy_cap ? WIRE_OPT_POSTCOPY : 0) |
			   (m->resuming ? WIRE_OPT_RESUME : 0) |
			   ((m->handoff || m->o.direct) && kind == WIRE_CONN_DATA ?
			    WIRE_OPT_HANDOFF : 0) |
			   (m->blk && !m->resuming ? WIRE_OPT_BLOCK : 0) |
			   (m->o.vm_name && kind == WIRE_CONN_CONTROL &&
			    !m->resuming ? WIRE_OPT_VM : 0),
		.ram_bytes = m->ram_bytes,
		.stream_index = index,
		/* --direct: the memory is one connection, QEMU's own stream;
		 * the disk tunnel has its streams as always. */
		.stream_count = (uint16_t)(m->o.direct && kind == WIRE_CONN_DATA ?
					   1 : m->o.streams),
		.frame_max = TUN_FRAME_BYTES,
	};
	uint8_t buf[WIRE_HELLO_BYTES];
	int rc;

	net_conn_init(c, -1);
	rc = net_connect(m->o.to_host, m->o.to_port, NET_CONNECT_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "receiver unreachable: ");
	net_conn_init(c, rc);
	rc = net_conn_start_tls(c, m->tls, m->tls_host, TLS_HANDSHAKE_TIMEOUT_MS,
				err);
	if (rc == 0) {
		memcpy(h.mig_id, m->mig_id, sizeof(h.mig_id));
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
	int pid = qmp_peer_pid(m->q), fd = -1, len = 0;

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
	return net_ctrl_send(&m->ctrl, WIRE_CTRL_CONFIG, out, (uint32_t)len,
			     MIG_QMP_TIMEOUT_MS, err);
}

/* The journal of this run, and its first entry: what is being done. */
static int journal_start(struct ferry_migration *m, struct ferry_error *err)
{
	char id[37];
	int rc;

	if (!m->o.state_dir)
		return 0;
	wire_mig_id_format(m->mig_id, id);
	rc = journal_open(&m->journal, m->o.state_dir, id, "source", err);
	if (rc < 0)
		return rc;
	return journal_step(m->journal, JOURNAL_STARTED,
		json_pack("{s:s,s:s,s:s,s:s?,s:i,s:b,s:b,s:b,s:b,s:b}",
			  "id", id, "side", "source", "qmp", m->o.qmp_path,
			  "vm", m->o.vm_name, "to_port", (int)m->o.to_port,
			  "was_running", m->was_running, "paused", m->o.paused,
			  "direct", m->o.direct, "block", m->o.block.enabled,
			  "postcopy", m->conv.postcopy_cap),
		err);
}

static int phase_connect(struct ferry_migration *m, struct ferry_error *err)
{
	char status[32];
	struct mig_info info;
	int rc;

	set_phase(m, FERRY_PHASE_CONNECT);
	m->q = qmp_connect(m->o.qmp_path, MIG_QMP_TIMEOUT_MS, err);
	if (!m->q)
		return ferry_error_prefix(err, "source QEMU at %s: ", m->o.qmp_path);
	rc = mig_vm_status(m->q, status, sizeof(status), err);
	if (rc < 0)
		return rc;
	m->was_running = strcmp(status, "running") == 0;
	if (!m->was_running && strcmp(status, "paused") != 0)
		return ferry_error_set(err, -EINVAL,
			"the source guest is '%s'; ferry migrates a running or paused guest",
			status);
	rc = mig_query(m->q, &info, err);
	if (rc < 0)
		return rc;
	if (mig_state_active(info.state))
		return ferry_error_set(err, -EBUSY,
			"the source QEMU already has a migration in state '%s'",
			info.status);
	rc = mig_ram_size(m->q, &m->ram_bytes, err);
	if (rc < 0)
		return rc;
	rc = wire_mig_id_random(m->mig_id);
	if (rc < 0)
		return ferry_error_set(err, rc, "getrandom: %s", strerror(-rc));
	rc = conv_init(&m->conv, &m->o, m->q, m->ram_bytes,
		       m->o.direct ? (m->o.max_bandwidth_bytes_per_s ==
				      MIG_BANDWIDTH_UNLIMITED ? 0 :
				      m->o.max_bandwidth_bytes_per_s) : m->wire_cap,
		       m->was_running, err);
	if (rc < 0)
		return rc;
	rc = journal_start(m, err);
	if (rc < 0)
		return rc;
	/* Before anything of this attempt: what a ferry that died left. */
	rc = blk_clear_stale(m->q, err);
	if (rc < 0)
		return rc;
	if (m->o.block.enabled) {
		rc = blk_src_new(&m->blk, m->q, &m->o.block, err);
		if (rc < 0)
			return rc;
	}
	rc = open_conn(m, &m->ctrl, WIRE_CONN_CONTROL, 0, err);
	if (rc < 0)
		return rc;
	if (m->o.vm_name) {
		uint8_t name[WIRE_VM_NAME_MAX];

		rc = wire_vm_encode(m->o.vm_name, name, err);
		if (rc >= 0)
			rc = net_ctrl_send(&m->ctrl, WIRE_CTRL_VM, name,
					   (uint32_t)rc, MIG_QMP_TIMEOUT_MS, err);
		if (rc >= 0)
			rc = send_config(m, err);
		if (rc < 0)
			return rc;
	}
	if (m->blk) {
		struct wire_disk d[WIRE_DISKS_MAX];
		uint8_t buf[WIRE_CTRL_PAYLOAD_MAX];

		rc = wire_disks_encode(d, blk_src_disks(m->blk, d), buf,
				       sizeof(buf), err);
		if (rc >= 0)
			rc = net_ctrl_send(&m->ctrl, WIRE_CTRL_DISKS, buf,
					   (uint32_t)rc, MIG_QMP_TIMEOUT_MS, err);
		if (rc < 0)
			return rc;
	}
	return await_ready(m, err);
}

/* Hand-off: the data connection, after its hello, is QEMU's. */
static int open_handoff(struct ferry_migration *m, struct ferry_error *err)
{
	struct net_conn dc;
	int rc;

	rc = open_conn(m, &dc, WIRE_CONN_DATA, 0, err);
	if (rc < 0)
		return ferry_error_prefix(err, "data connection: ");
	rc = mig_give_fd(m->q, dc.fd, err);
	net_conn_close(&dc);	/* QEMU holds its own copy */
	if (rc < 0)
		return ferry_error_prefix(err, "handing the connection to the "
					  "source QEMU: ");
	return 0;
}

/*
 * A tunnel's connections and options (the memory's: DATA and RETURN; the
 * disks': DISK and DISK_RETURN): @streams gets m->o.streams connections of
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
		.nstreams = m->o.streams,
		.frame_max = TUN_FRAME_BYTES,
		.codec = m->o.codec,
		.codec_level = m->o.codec_level,
		.bandwidth_bytes_per_s = m->wire_cap,
		.link_hint_bytes_per_s = m->probe_rate,
	};
	net_conn_init(&o->ret, -1);
	for (i = 0; i < m->o.streams; i++) {
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

static int open_tunnel(struct ferry_migration *m, struct ferry_error *err)
{
	struct net_conn streams[WIRE_STREAMS_MAX];
	struct tun_opts o;
	int rc;

	/* --direct is QEMU's own stream on a connection ferry opened. */
	if (m->handoff || m->o.direct)
		return open_handoff(m, err);
	rc = open_tunnel_conns(m, WIRE_CONN_DATA, WIRE_CONN_RETURN, streams, &o,
			       err);
	if (rc < 0)
		return rc;
	rc = mig_hand_socket(m->q, &o.local_fd, err);
	if (rc < 0) {
		ferry_error_prefix(err, "handing the tunnel to the source QEMU: ");
		for (uint32_t i = 0; i < o.nstreams; i++)
			net_conn_close(&streams[i]);
		net_conn_close(&o.ret);
		return rc;
	}
	return tun_start(&m->tun, &o, err);
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
	bool can_handoff = !m->tls && m->o.streams <= 1 && !m->o.no_handoff;
	struct ferry_error e = { 0 };
	uint64_t comp, link;
	struct net_conn pc;
	int rc;

	if (m->o.direct)
		return;
	if (m->o.codec == FERRY_CODEC_NONE && can_handoff) {
		m->handoff = true;
		conv_event(&m->conv, "transport", json_pack("{s:s}", "transport",
							     "handoff"),
			   "hand-off: no codec, one plaintext stream; QEMU "
			   "writes to ferry's connection itself");
	} else if (m->o.codec == FERRY_CODEC_AUTO && m->wire_cap &&
		   m->wire_cap < probe_compressor_rate()) {
		/* The cap alone says compression may pay: no need to probe. */
		conv_event(&m->conv, "transport", NULL, "tunnel: the wire is "
			   "capped at %.0f MiB/s", (double)m->wire_cap / (1 << 20));
	} else if (m->o.codec == FERRY_CODEC_AUTO) {
		/* The probe also gives auto its first link estimate. */
		rc = open_conn(m, &pc, WIRE_CONN_PROBE, 0, &e);
		if (rc == 0)
			rc = probe_send(&pc, &m->probe_rate, &e);
		net_conn_close(&pc);
		if (rc < 0)
			conv_event(&m->conv, "transport", NULL, "link probe failed "
				   "(%s): tunnel", e.msg);
		comp = probe_compressor_rate();
		link = m->probe_rate;
		if (m->wire_cap && (!link || link > m->wire_cap))
			link = m->wire_cap;
		m->handoff = can_handoff && link && comp && link >= comp;
		conv_event(&m->conv, "transport",
			   json_pack("{s:s,s:I,s:I}", "transport",
				     m->handoff ? "handoff" : "tunnel",
				     "link_bytes_per_s", (json_int_t)link,
				     "compressor_bytes_per_s", (json_int_t)comp),
			   "link %.0f MiB/s, LZ4 here %.0f MiB/s: %s",
			   (double)link / (1 << 20), (double)comp / (1 << 20),
			   m->handoff ? "hand-off, compression cannot pay" :
			   link && link < comp ? "tunnel, compression may pay" :
			   "tunnel");
	}
	if (m->handoff) {
		/* QEMU paces the wire now. */
		m->o.max_bandwidth_bytes_per_s = m->wire_cap ? m->wire_cap :
						 MIG_BANDWIDTH_UNLIMITED;
		m->wire_cap = 0;
	}
}


static void report_progress(struct ferry_migration *m);
static int read_ctrl_news(struct ferry_migration *m, struct ferry_error *err);

/* The disk tunnel: n streams and a return connection, like the RAM's. */
static int open_disk_tunnel(struct ferry_migration *m, struct ferry_error *err)
{
	struct net_conn streams[WIRE_STREAMS_MAX];
	struct tun_opts o;
	int rc;

	rc = open_tunnel_conns(m, WIRE_CONN_DISK, WIRE_CONN_DISK_RETURN, streams,
			       &o, err);
	return rc < 0 ? rc : blk_src_start(m->blk, &o, err);
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
	blk_src_report(m->blk, &sizes);
	limit_ms = (sizes.disk_size_bytes >> 30) * BLK_READY_TIMEOUT_MS_PER_GIB;
	if (limit_ms < BLK_READY_TIMEOUT_MIN_MS)
		limit_ms = BLK_READY_TIMEOUT_MIN_MS;
	deadline = ferry_now_ms() + limit_ms;
	for (;;) {
		struct pollfd fds[2] = {
			{ .fd = m->cancel_efd, .events = POLLIN },
			{ .fd = m->ctrl.fd, .events = POLLIN },
		};

		poll(fds, 2, (int)m->o.progress_interval_ms);
		if (fds[0].revents)
			return ferry_error_set(err, -ECANCELED,
					       "migration cancelled by request");
		if (fds[1].revents || net_conn_pending(&m->ctrl))
			return read_ctrl_news(m, err);
		rc = blk_src_poll(m->blk, &m->disk_done, &m->disk_total, err);
		if (rc < 0)
			return rc;
		report_progress(m);
		if (rc == 1)
			break;
		if (ferry_now_ms() > deadline)
			return ferry_error_set(err, -ETIMEDOUT, "the disk mirrors "
				"were not ready after %llu s (%llu of %llu MiB)",
				(unsigned long long)(limit_ms / 1000),
				(unsigned long long)(m->disk_done >> 20),
				(unsigned long long)(m->disk_total >> 20));
	}
	conv_event(&m->conv, "disks_ready", json_pack("{s:I}", "bytes",
						     (json_int_t)m->disk_total),
		   "every disk mirror is ready (%llu MiB); migrating memory",
		   (unsigned long long)(m->disk_total >> 20));
	return net_ctrl_send(&m->ctrl, WIRE_CTRL_MEMORY, NULL, 0,
			     MIG_QMP_TIMEOUT_MS, err);
}

static int phase_setup(struct ferry_migration *m, struct ferry_error *err)
{
	const struct ferry_converge_opts *co = &m->o.converge;
	struct mig_params p = {
		.max_bandwidth_bytes_per_s = m->o.max_bandwidth_bytes_per_s,
		.downtime_ms = m->conv.downtime_now,
		.postcopy = m->conv.postcopy_cap,
		.auto_converge = m->conv.auto_converge_cap,
		.throttle_initial_pct = co->throttle_initial_pct,
		.throttle_increment_pct = co->throttle_increment_pct,
		.throttle_max_pct = co->throttle_max_pct,
		.throttle_tailslow = co->throttle_tailslow,
	};
	char uri[300];
	int rc;

	set_phase(m, FERRY_PHASE_SETUP);
	choose_transport(m);
	p.max_bandwidth_bytes_per_s = m->o.max_bandwidth_bytes_per_s;
	p.pause_before_switchover = m->blk != NULL;
	rc = mig_setup_qemu(m->q, &p, err);
	if (rc < 0)
		return ferry_error_prefix(err, "configuring the source QEMU: ");
	if (m->blk) {
		rc = phase_disks(m, err);
		if (rc < 0)
			return rc;
		set_phase(m, FERRY_PHASE_SETUP);
	}
	rc = open_tunnel(m, err);
	if (rc < 0)
		return rc;
	snprintf(uri, sizeof(uri), "fd:%s", MIG_FDNAME);
	rc = journal_step(m->journal, JOURNAL_STREAMING, NULL, err);
	if (rc < 0) {
		mig_drop_fd(m->q);
		return rc;
	}
	rc = qmp_execute(m->q, "migrate", json_pack("{s:s}", "uri", uri), NULL,
			 MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0) {
		/* Close QEMU's copy, so the receiver's end sees the end. */
		mig_drop_fd(m->q);
		return ferry_error_prefix(err, "source QEMU refused to migrate: ");
	}
	m->migrate_started = true;
	return 0;
}

static uint64_t stream_bytes(struct ferry_migration *m)
{
	struct tun_stats st;

	if (!m->tun)
		return m->last.ram_transferred;
	tun_stats(m->tun, &st);
	return st.local_in_bytes;
}

static uint64_t wire_bytes(struct ferry_migration *m)
{
	struct tun_stats st;

	if (!m->tun)
		return m->last.ram_transferred;
	tun_stats(m->tun, &st);
	return st.wire_out_bytes + st.wire_in_bytes;
}

static void report_progress(struct ferry_migration *m)
{
	uint64_t now = ferry_now_ms(), bytes = wire_bytes(m);
	struct ferry_progress p = {
		.phase = m->phase,
		.elapsed_ms = now - m->t0_ms,
		.pass = m->last.dirty_sync_count,
		.ram_total_bytes = m->ram_bytes,
		.ram_transferred_bytes = m->last.ram_transferred,
		.ram_remaining_bytes = m->last.ram_remaining,
		.stream_bytes = stream_bytes(m),
		.wire_bytes = bytes,
		.dirty_pages_rate = m->last.dirty_pages_rate,
		.postcopy = m->conv.postcopy_active,
		.eta_ms = m->conv.postcopy_active ? 0 : m->conv.eta_ms,
		.disk_total_bytes = m->disk_total,
		.disk_done_bytes = m->disk_done,
	};

	if (m->last_sample_ms && now > m->last_sample_ms)
		m->throughput = (bytes - m->last_sample_bytes) * 1000 /
				(now - m->last_sample_ms);
	m->last_sample_ms = now;
	m->last_sample_bytes = bytes;
	p.throughput_bytes_per_s = m->throughput;
	if (m->o.progress)
		m->o.progress(&p, m->o.progress_opaque);
}

/* A control message during precopy can only be bad news. */
static int read_ctrl_news(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr h;
	int rc;

	rc = net_ctrl_recv(&m->ctrl, &h, payload, MIG_QMP_TIMEOUT_MS, err);
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
	m->conv.postcopy_active = true;
	m->conv.postcopy_t0_ms = ferry_now_ms();
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

	rc = journal_step(m->journal, JOURNAL_POSTCOPY, NULL, err);
	if (rc < 0)
		return rc;
	rc = qmp_execute(m->q, "migrate-start-postcopy", NULL, NULL,
			 MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "switching to post-copy: ");
	note_postcopy(m);
	conv_event(&m->conv, "postcopy", json_pack("{s:I,s:I}", "pass",
						  (json_int_t)m->last.dirty_sync_count,
						  "remaining_bytes",
						  (json_int_t)m->last.ram_remaining),
		   "switching to post-copy after pass %llu with %llu MiB left",
		   (unsigned long long)m->last.dirty_sync_count,
		   (unsigned long long)(m->last.ram_remaining >> 20));
	/* The receiver resumes the destination now, unless --paused. */
	return net_ctrl_send(&m->ctrl, WIRE_CTRL_POSTCOPY, resume,
			     wire_flag_encode(!m->o.paused, resume),
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

	if (m->disks_switched)
		return 0;
	rc = blk_src_switchover(m->blk, err);
	if (rc < 0) {
		/* QEMU waits in pre-switchover: even when post-copy was asked
		 * for, the destination has nothing yet and the source guest
		 * may run on. */
		m->conv.postcopy_active = false;
		return rc;
	}
	m->disks_switched = true;
	blk_src_poll(m->blk, &m->disk_done, &m->disk_total, NULL);
	rc = journal_step(m->journal, JOURNAL_SWITCHOVER, NULL, err);
	if (rc < 0)
		return rc;
	rc = qmp_execute(m->q, "migrate-continue",
			 json_pack("{s:s}", "state", "pre-switchover"), NULL,
			 MIG_QMP_TIMEOUT_MS, err);
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
static int blame(struct ferry_migration *m, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct pollfd p = { .fd = m->ctrl.fd, .events = POLLIN };
	char own[FERRY_ERROR_MSG_MAX];
	struct wire_ctrl_hdr h;

	snprintf(own, sizeof(own), "%s", err->msg);
	if (m->ctrl.fd >= 0 && (net_conn_pending(&m->ctrl) ||
				poll(&p, 1, MIG_PEER_VERDICT_MS) > 0) &&
	    net_ctrl_recv(&m->ctrl, &h, payload, MIG_PEER_VERDICT_MS, NULL) == 0 &&
	    h.type == WIRE_CTRL_ERROR)
		return ferry_error_set(err, -EREMOTEIO, "the destination failed: "
				       "%s (%s)", (char *)payload, own);
	return err->code;
}

/*
 * query-migrate into m->last. A failed or cancelled migration has no RAM
 * statistics: the last ones seen are kept, so the report of a failure
 * says how far it got.
 */
static int query_keep_counters(struct ferry_migration *m,
			       struct ferry_error *err)
{
	struct mig_info now;
	int rc = mig_query(m->q, &now, err);

	if (rc < 0)
		return rc;
	if (!now.ram_total && m->last.ram_total) {
		now.total_time_ms = now.total_time_ms ? now.total_time_ms :
				    m->last.total_time_ms;
		now.ram_total = m->last.ram_total;
		now.ram_transferred = m->last.ram_transferred;
		now.ram_remaining = m->last.ram_remaining;
		now.dirty_sync_count = m->last.dirty_sync_count;
	}
	m->last = now;
	return 0;
}

/* One turn of the precopy loop: 1 when QEMU completed, 0 to go on. */
static int precopy_step(struct ferry_migration *m, struct ferry_error *err)
{
	struct pollfd fds[4] = {
		{ .fd = m->cancel_efd, .events = POLLIN },
		{ .fd = m->ctrl.fd, .events = POLLIN },
		/* A tunnel that ended cleanly has nothing more to say. */
		{ .fd = m->tun && !tun_finished(m->tun) ?
			tun_done_fd(m->tun) : -1, .events = POLLIN },
		/* QEMU's MIGRATION events: completion is seen at once. */
		{ .fd = qmp_fd(m->q), .events = POLLIN },
	};
	int rc;

	if (net_conn_pending(&m->ctrl))
		fds[1].revents = POLLIN;
	else
		poll(fds, 4, (int)m->o.progress_interval_ms);
	if (fds[3].revents && qmp_pump(m->q, err) < 0)
		return ferry_error_prefix(err, "source QEMU: ");
	if (fds[0].revents && m->conv.postcopy_active) {
		uint64_t n;

		/* The destination runs the guest already and the source holds
		 * pages it has not sent: stopping now would lose the guest. */
		if (read(m->cancel_efd, &n, sizeof(n)) < 0) {
			/* nothing pending after all */
		}
		conv_event(&m->conv, "cancel_refused", NULL,
			   "not cancelling a post-copy migration: the guest's memory "
			   "is split between the hosts; carrying on until it completes");
	} else if (fds[0].revents) {
		return ferry_error_set(err, -ECANCELED, "migration cancelled by request");
	}
	rc = query_keep_counters(m, err);
	if (rc < 0)
		return ferry_error_prefix(err, "source QEMU: ");
	if (m->last.state == MIG_S_COMPLETED)
		return 1;
	if (!mig_state_active(m->last.state)) {
		ferry_error_set(err, -EIO, "source QEMU migration %s%s%s",
				m->last.status, m->last.error_desc[0] ? ": " : "",
				m->last.error_desc);
		return blame(m, err);
	}
	if (m->conv.postcopy_active && m->last.state == MIG_S_POSTCOPY_PAUSED)
		return ferry_error_set(err, -EAGAIN, "the source QEMU paused post-copy");
	if (m->blk && m->last.state == MIG_S_PRE_SWITCHOVER)
		return disks_switchover(m, err);
	if (m->blk && !m->disks_switched && blk_src_tick(m->blk, err) < 0)
		return -EIO;
	if (fds[1].revents) {
		rc = read_ctrl_news(m, err);
		if (m->conv.postcopy_active && rc != -EREMOTEIO)
			return ferry_error_recode(err, -EAGAIN);
		return rc;
	}
	if (m->tun && !tun_finished(m->tun)) {
		rc = tun_wait(m->tun, 0, err);
		if (rc == -ETIMEDOUT)
			rc = 0;
		if (rc < 0 && m->conv.postcopy_active && !m->o.direct) {
			ferry_error_prefix(err, "tunnel broke: ");
			return ferry_error_recode(err, -EAGAIN);
		}
		if (rc < 0) {
			ferry_error_prefix(err, "tunnel to the receiver broke: ");
			return blame(m, err);
		}
	}
	if (m->last.state == MIG_S_POSTCOPY_ACTIVE && !m->conv.postcopy_active)
		note_postcopy(m);
	{
		bool go = false;

		rc = conv_step(&m->conv, m->q, &m->last, &go, err);
		if (rc < 0)
			return rc;
		if (go && !m->conv.postcopy_active) {
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
		int rc = mig_query(m->q, &m->last, err);

		if (rc < 0)
			return rc;
		if (!strcmp(m->last.status, want))
			return 0;
		if (!mig_state_active(m->last.state))
			return ferry_error_set(err, -EIO, "source QEMU migration is "
					       "'%s'", m->last.status);
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
	uint64_t deadline = ferry_now_ms() + MIG_RECOVERY_TIMEOUT_MS;
	uint32_t backoff = MIG_RECOVERY_BACKOFF_MIN_MS, attempt = 0;
	char reason[FERRY_ERROR_MSG_MAX];
	int rc;

	snprintf(reason, sizeof(reason), "%s", why);
	conv_event(&m->conv, "recovery", NULL,
		   "post-copy interrupted (%s); reconnecting for up to %d s",
		   reason, MIG_RECOVERY_TIMEOUT_MS / 1000);
	if (m->tun)
		tun_cancel(m->tun);
	tun_free(m->tun);
	m->tun = NULL;
	net_conn_close(&m->ctrl);
	/* Only ferry's side broke (the control connection, say): QEMU's own
	 * stream still runs. Pause it, so that both ends resume together on
	 * the new connections. */
	if (mig_query(m->q, &m->last, NULL) == 0 &&
	    m->last.state == MIG_S_POSTCOPY_ACTIVE)
		qmp_execute(m->q, "migrate-pause", NULL, NULL, MIG_QMP_TIMEOUT_MS,
			    NULL);
	rc = wait_qemu_status(m, "postcopy-paused", MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "post-copy recovery: ");
	m->resuming = true;
	while (ferry_now_ms() < deadline) {
		struct ferry_error e = { 0 };

		attempt++;
		rc = open_conn(m, &m->ctrl, WIRE_CONN_CONTROL, 0, &e);
		if (rc == 0)
			rc = await_ready(m, &e);
		if (rc == 0)
			rc = open_tunnel(m, &e);
		if (rc == 0) {
			rc = qmp_execute(m->q, "migrate",
					 json_pack("{s:s,s:b}", "uri", "fd:" MIG_FDNAME,
						   "resume", 1),
					 NULL, MIG_QMP_TIMEOUT_MS, &e);
			if (rc < 0)
				mig_drop_fd(m->q);
		}
		if (rc == 0) {
			m->resuming = false;
			m->recoveries++;
			conv_event(&m->conv, "recovered",
				   json_pack("{s:i}", "attempt", (int)attempt),
				   "post-copy resumed on a new connection (attempt %u)",
				   attempt);
			return 0;
		}
		conv_event(&m->conv, "recovery_attempt",
			   json_pack("{s:i}", "attempt", (int)attempt),
			   "attempt %u failed: %s; next in %u ms", attempt, e.msg,
			   backoff);
		tun_free(m->tun);
		m->tun = NULL;
		net_conn_close(&m->ctrl);
		usleep(backoff * 1000);
		if (backoff < MIG_RECOVERY_BACKOFF_MAX_MS)
			backoff *= 2;
	}
	m->resuming = false;
	return ferry_error_set(err, -EHOSTUNREACH,
		"post-copy recovery failed within %d s (%s); the guest's state is "
		"split between the source and the destination, both paused in "
		"postcopy-paused", MIG_RECOVERY_TIMEOUT_MS / 1000, reason);
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

		while (qmp_wait_event(m->q, NULL, &ev, 0, NULL) == 0)
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
	m->source_completed = true;
	report_progress(m);
	if (m->tun) {
		rc = tun_wait(m->tun, MIG_FINISH_TIMEOUT_MS, err);
		if (rc < 0)
			return ferry_error_prefix(err, "tunnel after completion: ");
	}
	/* The source QEMU completed: the destination holds the guest now. */
	rc = journal_step(m->journal, JOURNAL_SWITCHOVER,
			  json_pack("{s:b}", "resume", !m->o.paused), err);
	if (rc < 0)
		return rc;
	rc = net_ctrl_send(&m->ctrl, WIRE_CTRL_FINISH, resume,
			   wire_flag_encode(!m->o.paused, resume),
			   MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	rc = net_ctrl_recv(&m->ctrl, &h, payload, MIG_FINISH_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "waiting for the destination to finish: ");
	/* A definite answer: the destination knows whether it runs. */
	if (h.type == WIRE_CTRL_ERROR) {
		/* It does not: the source may run its guest again. */
		m->source_completed = false;
		return ferry_error_set(err, -EREMOTEIO,
			"the destination did not take over: %s", (char *)payload);
	}
	if (h.type != WIRE_CTRL_FINISHED)
		return ferry_error_set(err, -EPROTO, "expected FINISHED, got %s",
				       wire_ctrl_name(h.type));
	rc = wire_finished_decode(&h, payload, &ok, &status, err);
	if (rc < 0)
		return rc;
	if (!ok) {
		m->source_completed = false;
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

	qmp_execute(m->q, "migrate_cancel", NULL, NULL, MIG_QMP_TIMEOUT_MS, NULL);
	while (ferry_now_ms() < deadline) {
		if (mig_query(m->q, &info, NULL) < 0 ||
		    !mig_state_active(info.state))
			return;
		usleep(50 * 1000);
	}
	ferry_log(FERRY_LOG_WARN, "source QEMU still in migration state '%s' %d ms after migrate_cancel",
		  info.status, MIG_CANCEL_TIMEOUT_MS);
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
	if (m->blk && !m->disks_switched)
		m->conv.postcopy_active = false;
	if (m->conv.postcopy_active && m->q &&
	    mig_query(m->q, &m->last, NULL) == 0 &&
	    (m->last.state == MIG_S_FAILED ||
	     m->last.state == MIG_S_CANCELLED)) {
		/* QEMU failed the switchover itself: the destination never got
		 * the device state, so the source still holds the whole guest
		 * and may run it again. */
		m->conv.postcopy_active = false;
	}
	if (m->conv.postcopy_active) {
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
	if (m->ctrl.fd >= 0)
		net_ctrl_send(&m->ctrl, WIRE_CTRL_CANCEL, why,
			      (uint32_t)strnlen(why, sizeof(err->msg)), 1000, NULL);
	if (m->tun)
		tun_cancel(m->tun);
	if (!m->q)
		return false;
	if (m->migrate_started)
		cancel_qemu_migration(m);
	/* The mirrors stop; the source disks were only ever read. */
	blk_src_abort(m->blk);
	if (mig_vm_status(m->q, status, sizeof(status), NULL) < 0)
		return false;
	/* QEMU completed on its own (hand-off, or before ferry noticed): the
	 * device state went out, and the destination may run the guest. */
	if (!m->source_completed && mig_query(m->q, &m->last, NULL) == 0 &&
	    m->last.state == MIG_S_COMPLETED)
		m->source_completed = true;
	if (m->source_completed) {
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
	if (m->was_running && strcmp(status, "running") != 0) {
		ferry_log(FERRY_LOG_WARN, "source guest is '%s' after the failure; resuming it",
			  status);
		if (qmp_execute(m->q, "cont", NULL, NULL, MIG_QMP_TIMEOUT_MS, NULL) < 0 ||
		    mig_vm_status(m->q, status, sizeof(status), NULL) < 0)
			return false;
	}
	return strcmp(status, m->was_running ? "running" : "paused") == 0;
}

static void fill_report(struct ferry_migration *m, struct ferry_report *r)
{
	memset(r, 0, sizeof(*r));
	r->direct = m->o.direct;
	wire_mig_id_format(m->mig_id, r->migration_id);
	r->total_ms = ferry_now_ms() - m->t0_ms;
	r->qemu_total_ms = m->last.total_time_ms;
	r->downtime_ms = m->last.downtime_ms;
	r->setup_ms = m->last.setup_time_ms;
	r->ram_size_bytes = m->ram_bytes;
	r->ram_bytes = stream_bytes(m);
	r->wire_bytes = wire_bytes(m);
	r->passes = m->last.dirty_sync_count;
	if (m->last.total_time_ms)
		r->throughput_bytes_per_s = r->wire_bytes * 1000 / m->last.total_time_ms;
	snprintf(r->codec, sizeof(r->codec), "%s", m->o.direct || m->handoff ?
		 "none" : ferry_codec_name(m->o.codec));
	snprintf(r->transport, sizeof(r->transport), "%s", m->o.direct ? "direct" :
		 m->handoff ? "handoff" : "tunnel");
	r->probe_bytes_per_s = m->probe_rate;
	r->streams = m->o.direct ? 0 : m->o.streams;
	snprintf(r->tls, sizeof(r->tls), "%s", tls_ctx_mode(m->tls));
	snprintf(r->policy, sizeof(r->policy), "%s",
		 m->conv.policy ? m->conv.policy->name : "");
	r->postcopy = m->conv.postcopy_active;
	if (m->conv.postcopy_active)
		r->postcopy_ms = ferry_now_ms() - m->conv.postcopy_t0_ms;
	r->throttle_pct_max = m->conv.throttle_max;
	r->downtime_steps = m->conv.downtime_changes;
	r->recoveries = m->recoveries;
	r->predicted_total_ms = m->conv.predicted_total_ms;
	blk_src_report(m->blk, r);
	if (m->tun) {
		struct tun_stats st;

		tun_stats(m->tun, &st);
		r->frames_raw = st.frames_codec[WIRE_CODEC_RAW];
		r->frames_lz4 = st.frames_codec[WIRE_CODEC_LZ4];
		r->frames_zstd = st.frames_codec[WIRE_CODEC_ZSTD];
	}
}

static void teardown(struct ferry_migration *m)
{
	blk_src_free(m->blk);
	m->blk = NULL;
	tun_free(m->tun);
	m->tun = NULL;
	net_conn_close(&m->ctrl);
	conv_fini(&m->conv);
	qmp_close(m->q);
	m->q = NULL;
}

int ferry_migration_run(struct ferry_migration *m, struct ferry_report *report,
			struct ferry_error *err)
{
	struct ferry_error local = { 0 };
	int rc;

	if (!err)
		err = &local;
	memset(&m->last, 0, sizeof(m->last));
	m->migrate_started = false;
	m->source_completed = false;
	m->recoveries = 0;
	m->handoff = false;
	m->probe_rate = 0;
	m->disks_switched = false;
	m->disk_done = m->disk_total = 0;
	m->wire_cap = m->user_wire_cap;
	m->o.max_bandwidth_bytes_per_s = m->user_qemu_cap;
	m->phase = FERRY_PHASE_INIT;
	m->t0_ms = ferry_now_ms();
	m->last_sample_ms = 0;

	rc = phase_connect(m, err);
	if (rc == 0 && cancel_requested(m))
		rc = ferry_error_set(err, -ECANCELED, "migration cancelled by request");
	if (rc == 0)
		rc = phase_setup(m, err);
	if (rc == 0)
		rc = phase_precopy(m, err);
	if (rc == 0) {
		/* Final numbers (downtime, total-time) once completed. */
		mig_query(m->q, &m->last, NULL);
		rc = phase_completing(m, err);
	}
	fill_report(m, report);
	if (rc == 0) {
		set_phase(m, FERRY_PHASE_DONE);
		report->completed = true;
		snprintf(report->status, sizeof(report->status), "completed");
	} else {
		report->source_running = fail_safe(m, err);
		set_phase(m, FERRY_PHASE_FAILED);
		snprintf(report->status, sizeof(report->status), "%s",
			 rc == -ECANCELED ? "cancelled" : "failed");
		snprintf(report->error, sizeof(report->error), "%s", err->msg);
	}
	journal_step(m->journal, rc == 0 ? JOURNAL_COMPLETED :
		     report->source_running ? JOURNAL_FAILED : JOURNAL_UNRESOLVED,
		     rc == 0 ? NULL : json_pack("{s:b,s:s}", "source_running",
						report->source_running, "error",
						err->msg), NULL);
	journal_close(m->journal);
	m->journal = NULL;
	teardown(m);
	return rc;
}
