/*
 * The receiving side: ferry_receiver_run().
 *
 * The receiver listens, reads a hello from each connection, and serves one
 * migration at a time for the destination QEMU it was pointed at. What a
 * connection sends before it is accepted as a migration (garbage, a wrong
 * version, a stall) is logged and the connection closed: nothing is kept
 * and nothing reaches QEMU.
 *
 * One migration, in order (enum rx_state):
 *   RX_PREPARE    check the destination QEMU (waiting for an incoming
 *                 migration, same RAM size), set its capabilities and
 *                 parameters, start migrate-incoming on ferry's socket (or
 *                 on a TCP port for --direct), answer READY
 *   RX_TUNNEL     accept the data streams and the return connection, and
 *                 start the tunnel
 *   RX_STREAMING  until the source says FINISH (or CANCEL, or it breaks)
 *   RX_FINISH     wait for the destination to complete, resume it unless
 *                 told to leave it paused, answer FINISHED
 *   RX_DONE / RX_FAILED
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "blk.h"
#include "mig.h"
#include "transport/net.h"
#include "transport/probe.h"
#include "transport/tls.h"
#include "transport/tunnel.h"
#include "transport/wire.h"
#include "util.h"

/* How often the streaming loop looks at the destination QEMU. */
#define RX_POLL_MS 250
/* Link probes one migration may send before its data connections. */
#define RX_PROBES_MAX 4
/* After FINISH: the destination completes within moments of the source. */
#define RX_FINISH_POLL_MS 2

struct ferry_receiver {
	struct ferry_receiver_opts o;
	char *listen_host, *qmp_path;
	int listen_fd;
	int stop_efd;
	uint16_t port;
	struct tls_ctx *tls;
};

enum rx_state {
	RX_PREPARE,
	RX_TUNNEL,
	RX_STREAMING,
	RX_FINISH,
	RX_DONE,
	RX_FAILED,
};

static const char *rx_state_name(enum rx_state s)
{
	static const char *const names[] = {
		"prepare", "tunnel", "streaming", "finish", "done", "failed",
	};

	return names[s];
}

struct incoming {
	struct ferry_receiver *r;
	enum rx_state state;
	struct net_conn ctrl;
	char peer[64];
	char id[37];
	struct wire_hello hello;
	struct qmp *q;
	struct tun *tun;
	int qemu_end;		/* tunnel socket until the tunnel owns it */
	uint64_t t0_ms;
	bool resume;
	bool postcopy;
	uint16_t direct_port;	/* where the destination QEMU listens */
	bool handoff;		/* the data connection went to QEMU */
	struct blk_dst *blk;	/* --block */
};

struct ferry_receiver *ferry_receiver_new(const struct ferry_receiver_opts *o,
					  struct ferry_error *err)
{
	struct ferry_receiver *r;
	int fd;

	if (!o->listen_host || !o->qmp_path) {
		ferry_error_set(err, -EINVAL,
			"a receiver needs an address to listen on and the destination QMP socket");
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		ferry_error_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	r->o = *o;
	memset(&r->o.tls, 0, sizeof(r->o.tls));
	r->listen_fd = -1;
	r->listen_host = strdup(o->listen_host);
	r->qmp_path = strdup(o->qmp_path);
	r->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!r->listen_host || !r->qmp_path || r->stop_efd < 0) {
		ferry_error_set(err, -ENOMEM, "out of memory");
		goto err_free;
	}
	r->o.listen_host = r->listen_host;
	r->o.qmp_path = r->qmp_path;
	if (!r->o.hello_timeout_ms)
		r->o.hello_timeout_ms = FERRY_DEFAULT_HELLO_TIMEOUT_MS;
	if (!o->tls.creds_dir && !o->tls.psk_file && !o->tls.insecure &&
	    !tls_host_is_loopback(o->listen_host)) {
		ferry_error_set(err, -EPERM,
			"refusing to receive guest memory in plaintext on %s: give "
			"--tls-creds DIR or --tls-psk FILE, or --insecure if the "
			"network is trusted", o->listen_host);
		goto err_free;
	}
	if (tls_ctx_new(&r->tls, &o->tls, true, err) < 0)
		goto err_free;
	fd = net_listen(o->listen_host, o->listen_port, err);
	if (fd < 0)
		goto err_free;
	r->listen_fd = fd;
	r->port = net_local_port(fd);
	return r;

err_free:
	tls_ctx_free(r->tls);
	if (r->stop_efd >= 0)
		close(r->stop_efd);
	free(r->listen_host);
	free(r->qmp_path);
	free(r);
	return NULL;
}

uint16_t ferry_receiver_port(const struct ferry_receiver *r)
{
	return r->port;
}

void ferry_receiver_stop(struct ferry_receiver *r)
{
	uint64_t one = 1;

	if (write(r->stop_efd, &one, sizeof(one)) < 0) {
		/* Overflow only: a stop is already pending. */
	}
}

void ferry_receiver_free(struct ferry_receiver *r)
{
	if (!r)
		return;
	tls_ctx_free(r->tls);
	close(r->listen_fd);
	close(r->stop_efd);
	free(r->listen_host);
	free(r->qmp_path);
	free(r);
}

static void rx_set_state(struct incoming *in, enum rx_state s)
{
	ferry_log(FERRY_LOG_DEBUG, "migration %s: %s -> %s", in->id,
		  rx_state_name(in->state), rx_state_name(s));
	in->state = s;
}

/* Accept one connection, or return -ETIMEDOUT / -ECANCELED (stop). */
static int accept_bounded(struct ferry_receiver *r, int timeout_ms)
{
	struct pollfd fds[2] = {
		{ .fd = r->listen_fd, .events = POLLIN },
		{ .fd = r->stop_efd, .events = POLLIN },
	};
	int rc = poll(fds, 2, timeout_ms);

	if (rc == 0)
		return -ETIMEDOUT;
	if (rc < 0)
		return errno == EINTR ? -EINTR : -errno;
	if (fds[1].revents)
		return -ECANCELED;
	rc = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	return rc < 0 ? -errno : rc;
}

/*
 * TLS (when configured) and the hello of a new connection. On failure the
 * connection is closed and a log line says who was refused and why.
 */
static int open_conn(struct ferry_receiver *r, int fd, struct net_conn *c,
		     struct wire_hello *h, char *peer, size_t peer_len)
{
	uint8_t buf[WIRE_HELLO_BYTES];
	struct ferry_error herr = { 0 };
	int rc;

	net_conn_init(c, fd);
	net_peer_name(fd, peer, peer_len);
	rc = net_conn_start_tls(c, r->tls, NULL, (int)r->o.hello_timeout_ms,
				&herr);
	if (rc == 0)
		rc = net_read_full(c, buf, sizeof(buf),
				   (int)r->o.hello_timeout_ms, "hello", &herr);
	if (rc == 0)
		rc = wire_hello_decode(buf, h, &herr);
	if (rc < 0) {
		ferry_log(FERRY_LOG_WARN, "rejected connection from %s: %s", peer,
			  herr.msg);
		net_conn_close(c);
	}
	return rc;
}

static int send_error(struct incoming *in, const struct ferry_error *why)
{
	return net_ctrl_send(&in->ctrl, WIRE_CTRL_ERROR, why->msg,
			     (uint32_t)strnlen(why->msg, sizeof(why->msg)),
			     MIG_QMP_TIMEOUT_MS, NULL);
}

static int check_destination(struct incoming *in, struct ferry_error *err)
{
	char status[32];
	uint64_t ram;
	int rc;

	rc = mig_vm_status(in->q, status, sizeof(status), err);
	if (rc < 0)
		return rc;
	if (strcmp(status, "inmigrate") != 0)
		return ferry_error_set(err, -EBUSY,
			"destination QEMU is '%s', not waiting for an incoming migration "
			"(start it with -incoming defer)", status);
	rc = mig_ram_size(in->q, &ram, err);
	if (rc < 0)
		return rc;
	if (ram != in->hello.ram_bytes)
		return ferry_error_set(err, -EINVAL,
			"guest RAM differs: source %llu bytes, destination %llu bytes",
			(unsigned long long)in->hello.ram_bytes,
			(unsigned long long)ram);
	return 0;
}

/*
 * --direct: QEMU listens itself (@cmd is migrate-incoming, or
 * migrate-recover to resume a broken post-copy); READY carries the port
 * it bound. QEMU lists its newest listening address first.
 */
static int start_direct(struct incoming *in, const char *cmd,
			uint8_t port_be[2], struct ferry_error *err)
{
	const char *host = in->r->o.listen_host;
	struct mig_info info;
	char uri[300];
	int rc;

	snprintf(uri, sizeof(uri), strchr(host, ':') ? "tcp:[%s]:0" : "tcp:%s:0", host);
	rc = qmp_execute(in->q, cmd, json_pack("{s:s}", "uri", uri),
			 NULL, MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	rc = mig_query(in->q, &info, err);
	if (rc < 0)
		return rc;
	if (info.incoming_port == 0 || info.incoming_port > 65535 ||
	    info.incoming_port == in->direct_port)
		return ferry_error_set(err, -EPROTO,
			"destination QEMU did not report a new port it listens on");
	in->direct_port = (uint16_t)info.incoming_port;
	port_be[0] = (uint8_t)(info.incoming_port >> 8);
	port_be[1] = (uint8_t)info.incoming_port;
	return 0;
}

/* --block: the manifest, then every pre-check before a byte is sent. */
static int rx_prepare_disks(struct incoming *in, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_disk d[WIRE_DISKS_MAX];
	struct wire_ctrl_hdr h;
	uint32_t n;
	int rc;

	rc = net_ctrl_recv(&in->ctrl, &h, payload, (int)in->r->o.hello_timeout_ms,
			   err);
	if (rc < 0)
		return ferry_error_prefix(err, "waiting for the disk manifest: ");
	if (h.type != WIRE_CTRL_DISKS)
		return ferry_error_set(err, -EPROTO, "expected DISKS after a "
				       "block migration's hello, got %s",
				       wire_ctrl_name(h.type));
	rc = wire_disks_decode(payload, h.len, d, &n, err);
	if (rc < 0)
		return rc;
	rc = blk_dst_prepare(&in->blk, in->q, d, n, err);
	if (rc < 0)
		return ferry_error_prefix(err, "block migration pre-check: ");
	return 0;
}

static int rx_prepare(struct incoming *in, struct ferry_error *err)
{
	struct mig_params p = {
		.max_bandwidth_bytes_per_s = MIG_BANDWIDTH_UNLIMITED,
		.downtime_ms = FERRY_DEFAULT_DOWNTIME_MS,
		.postcopy = in->hello.options & WIRE_OPT_POSTCOPY,
	};
	bool direct = in->hello.options & WIRE_OPT_DIRECT;
	uint8_t port_be[2];
	int rc;

	in->q = qmp_connect(in->r->o.qmp_path, MIG_QMP_TIMEOUT_MS, err);
	if (!in->q)
		return ferry_error_prefix(err, "destination QEMU at %s: ",
					  in->r->o.qmp_path);
	rc = check_destination(in, err);
	if (rc < 0)
		return rc;
	rc = mig_setup_qemu(in->q, &p, err);
	if (rc < 0)
		return ferry_error_prefix(err, "configuring the destination QEMU: ");
	if (in->hello.options & WIRE_OPT_BLOCK) {
		rc = rx_prepare_disks(in, err);
		if (rc < 0)
			return rc;
	}
	if (direct) {
		rc = start_direct(in, "migrate-incoming", port_be, err);
		if (rc < 0)
			return ferry_error_prefix(err, "destination QEMU refused migrate-incoming: ");
		return net_ctrl_send(&in->ctrl, WIRE_CTRL_READY, port_be, 2,
				     MIG_QMP_TIMEOUT_MS, err);
	}
	/* The destination QEMU gets its socket once the data connections
	 * are here (rx_accept_data): the tunnel's, or the connection itself. */
	return net_ctrl_send(&in->ctrl, WIRE_CTRL_READY, NULL, 0,
			     MIG_QMP_TIMEOUT_MS, err);
}

/* Give the destination QEMU @fd and have it take the stream from it
 * (@cmd: migrate-incoming, or migrate-recover to resume post-copy). */
static int rx_start_qemu(struct incoming *in, int fd, const char *cmd,
			 struct ferry_error *err)
{
	int rc = mig_give_fd(in->q, fd, err);

	if (rc == 0)
		rc = qmp_execute(in->q, cmd, json_pack("{s:s}", "uri", "fd:" MIG_FDNAME),
				 NULL, MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "destination QEMU refused %s: ", cmd);
	return 0;
}

/* The connections one tunnel needs: n streams of one kind and a return. */
struct rx_conns {
	enum wire_conn data_kind, ret_kind;
	uint32_t n, got;
	struct net_conn streams[WIRE_STREAMS_MAX];
	struct net_conn ret;
	bool have_ret;
	bool handoff;		/* the one data stream goes to QEMU */
};

static void rx_conns_close(struct rx_conns *c)
{
	for (uint32_t i = 0; i < c->n; i++)
		net_conn_close(&c->streams[i]);
	net_conn_close(&c->ret);
}

/* Why connection @h cannot join @c, or NULL. */
static const char *rx_conn_refusal(const struct incoming *in,
				   const struct rx_conns *c,
				   const struct wire_hello *h, uint32_t probes)
{
	if (memcmp(h->mig_id, in->hello.mig_id, WIRE_MIG_ID_BYTES) != 0)
		return "it belongs to another migration";
	if (h->conn == WIRE_CONN_CONTROL)
		return "a second control connection";
	if (h->conn == WIRE_CONN_PROBE)
		return probes >= RX_PROBES_MAX ? "too many link probes" : NULL;
	if (h->conn != c->data_kind && h->conn != c->ret_kind)
		return "a connection of another kind was expected now";
	if (h->stream_count != c->n || h->frame_max != in->hello.frame_max)
		return "its stream count or frame size differs from the "
		       "control connection's";
	if (h->conn == c->data_kind && c->streams[h->stream_index].fd >= 0)
		return "a second connection for the same stream";
	if (h->conn == c->ret_kind && c->have_ret)
		return "a second return connection";
	if ((h->options & WIRE_OPT_HANDOFF) &&
	    (h->conn != WIRE_CONN_DATA || c->n != 1 || c->have_ret ||
	     in->r->tls))
		return "hand-off is for the one data connection of a plaintext "
		       "migration";
	return NULL;
}

/*
 * Accept the streams and the return connection of one tunnel of this
 * migration (@c says which kinds), serving link probes on the way, or the
 * one data connection that goes to QEMU itself (hand-off). Other
 * connections that arrive meanwhile are refused with a log line; the
 * wait is bounded.
 */
static int rx_accept_conns(struct incoming *in, struct rx_conns *c,
			   struct ferry_error *err)
{
	struct ferry_receiver *r = in->r;
	uint64_t deadline = ferry_now_ms() + r->o.hello_timeout_ms;
	uint32_t probes = 0;

	c->n = in->hello.stream_count;
	c->got = 0;
	c->have_ret = c->handoff = false;
	for (uint32_t i = 0; i < c->n; i++)
		net_conn_init(&c->streams[i], -1);
	net_conn_init(&c->ret, -1);
	while (!(c->handoff ? c->got == 1 : c->got == c->n && c->have_ret) &&
	       ferry_now_ms() < deadline) {
		struct net_conn conn;
		struct wire_hello h;
		const char *why;
		char peer[64];
		uint64_t now = ferry_now_ms();
		int fd = accept_bounded(r, now < deadline ? (int)(deadline - now) : 0);

		if (fd == -EINTR)
			continue;
		if (fd == -ECANCELED) {
			rx_conns_close(c);
			return ferry_error_set(err, -ECANCELED, "the receiver is stopping");
		}
		if (fd < 0)
			break;
		if (open_conn(r, fd, &conn, &h, peer, sizeof(peer)) < 0)
			continue;
		why = rx_conn_refusal(in, c, &h, probes);
		if (why) {
			ferry_log(FERRY_LOG_WARN,
				  "rejected connection from %s during migration %s: %s",
				  peer, in->id, why);
			net_conn_close(&conn);
			continue;
		}
		if (h.conn == WIRE_CONN_PROBE) {
			struct ferry_error e = { 0 };

			probes++;
			if (probe_serve(&conn, &e) < 0)
				ferry_log(FERRY_LOG_WARN, "link probe from %s: %s",
					  peer, e.msg);
			net_conn_close(&conn);
		} else if (h.conn == c->ret_kind) {
			c->ret = conn;
			c->have_ret = true;
		} else {
			c->streams[h.stream_index] = conn;
			c->handoff = h.options & WIRE_OPT_HANDOFF;
			c->got++;
		}
	}
	if (c->handoff ? c->got == 1 : c->got == c->n && c->have_ret)
		return 0;
	rx_conns_close(c);
	return ferry_error_set(err, -ETIMEDOUT,
		"%u of %u %s streams and %s return connection of migration %s "
		"arrived within %u ms", c->got, c->n,
		c->data_kind == WIRE_CONN_DISK ? "disk" : "data",
		c->have_ret ? "the" : "no", in->id, r->o.hello_timeout_ms);
}

/*
 * The memory tunnel (or hand-off), then the destination QEMU starts on it
 * (@cmd: migrate-incoming or migrate-recover).
 */
static int rx_accept_data(struct incoming *in, const char *cmd,
			  struct ferry_error *err)
{
	struct rx_conns c = { .data_kind = WIRE_CONN_DATA,
			      .ret_kind = WIRE_CONN_RETURN };
	struct tun_opts o = {
		.role = TUN_DEST,
		.frame_max = in->hello.frame_max,
		.codec = FERRY_CODEC_NONE,
	};
	int rc;

	rx_set_state(in, RX_TUNNEL);
	rc = rx_accept_conns(in, &c, err);
	if (rc < 0)
		return rc;
	in->handoff = c.handoff;
	if (in->handoff) {
		rc = rx_start_qemu(in, c.streams[0].fd, cmd, err);
		net_conn_close(&c.streams[0]);	/* QEMU holds its own copy */
		return rc;
	}
	rc = mig_hand_socket(in->q, &in->qemu_end, err);
	if (rc == 0)
		rc = qmp_execute(in->q, cmd, json_pack("{s:s}", "uri", "fd:" MIG_FDNAME),
				 NULL, MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0) {
		rx_conns_close(&c);
		return ferry_error_prefix(err, "starting the destination QEMU "
					  "(%s): ", cmd);
	}
	o.streams = c.streams;
	o.nstreams = c.n;
	o.ret = c.ret;
	o.local_fd = in->qemu_end;
	in->qemu_end = -1;	/* the tunnel owns it now */
	return tun_start(&in->tun, &o, err);
}

/*
 * --block: the disk tunnel and the writer, then the disks stream until
 * the source says MEMORY (every mirror ready).
 */
static int rx_disks(struct incoming *in, struct ferry_error *err)
{
	struct rx_conns c = { .data_kind = WIRE_CONN_DISK,
			      .ret_kind = WIRE_CONN_DISK_RETURN };
	struct tun_opts o = {
		.frame_max = in->hello.frame_max,
		.codec = FERRY_CODEC_NONE,
	};
	int rc;

	rx_set_state(in, RX_TUNNEL);
	rc = rx_accept_conns(in, &c, err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk tunnel: ");
	o.streams = c.streams;
	o.nstreams = c.n;
	o.ret = c.ret;
	rc = blk_dst_start(in->blk, &o, err);
	if (rc < 0)
		return rc;
	for (;;) {
		uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
		struct pollfd fds[3] = {
			{ .fd = in->ctrl.fd, .events = POLLIN },
			{ .fd = in->r->stop_efd, .events = POLLIN },
			{ .fd = blk_dst_done_fd(in->blk), .events = POLLIN },
		};
		struct wire_ctrl_hdr h;

		if (!net_conn_pending(&in->ctrl))
			poll(fds, 3, RX_POLL_MS);
		else
			fds[0].revents = POLLIN;
		if (fds[1].revents)
			return ferry_error_set(err, -ECANCELED, "the receiver is stopping");
		rc = blk_dst_status(in->blk, err);
		if (rc < 0)
			return rc;
		if (rc == 1)
			return ferry_error_set(err, -EPROTO, "the disk stream "
					       "ended before the memory started");
		if (!fds[0].revents)
			continue;
		rc = net_ctrl_recv(&in->ctrl, &h, payload, MIG_QMP_TIMEOUT_MS, err);
		if (rc < 0)
			return ferry_error_prefix(err, "control connection from the "
						  "source: ");
		if (h.type == WIRE_CTRL_MEMORY)
			return 0;
		if (h.type == WIRE_CTRL_CANCEL)
			return ferry_error_set(err, -ECANCELED, "the source "
					       "cancelled: %s", (char *)payload);
		return ferry_error_set(err, -EPROTO, "unexpected %s from the "
				       "source while the disks mirror",
				       wire_ctrl_name(h.type));
	}
}

/* FINISH arrived: the source completed. Bring the destination up. */
static int rx_finish(struct incoming *in, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + MIG_FINISH_TIMEOUT_MS;
	struct mig_info info = { 0 };
	char status[32], text[64];
	int rc;

	rx_set_state(in, RX_FINISH);
	while (ferry_now_ms() < deadline) {
		rc = mig_query(in->q, &info, err);
		if (rc < 0)
			return ferry_error_prefix(err, "destination QEMU: ");
		if (!mig_status_active(info.status))
			break;
		usleep(RX_FINISH_POLL_MS * 1000);
	}
	if (strcmp(info.status, "completed") != 0)
		return ferry_error_set(err, -EIO,
			"destination QEMU migration is '%s'%s%s", info.status,
			info.error_desc[0] ? ": " : "", info.error_desc);
	if (in->tun) {
		rc = tun_wait(in->tun, MIG_FINISH_TIMEOUT_MS, err);
		if (rc < 0)
			return ferry_error_prefix(err, "tunnel: ");
	}
	/* The source switched over only after the disks were synced here. */
	if (in->blk && (rc = blk_dst_status(in->blk, err)) != 1)
		return rc < 0 ? ferry_error_prefix(err, "block migration: ") :
			ferry_error_set(err, -EIO, "the destination QEMU completed "
					"before its disks were synced");
	if (in->resume) {
		rc = qmp_execute(in->q, "cont", NULL, NULL, MIG_QMP_TIMEOUT_MS, err);
		if (rc < 0)
			return ferry_error_prefix(err, "resuming the destination guest: ");
	}
	rc = mig_vm_status(in->q, status, sizeof(status), err);
	if (rc < 0)
		return rc;
	text[0] = 1;
	snprintf(text + 1, sizeof(text) - 1, "%s", status);
	ferry_log(FERRY_LOG_INFO, "migration %s completed; destination guest %s",
		  in->id, status);
	return net_ctrl_send(&in->ctrl, WIRE_CTRL_FINISHED, text,
			     (uint32_t)(1 + strlen(status)), MIG_QMP_TIMEOUT_MS, err);
}

/* A control message from the source while streaming. */
static int rx_control(struct incoming *in, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr h;
	int rc;

	rc = net_ctrl_recv(&in->ctrl, &h, payload, MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "control connection from the source: ");
	if (h.type == WIRE_CTRL_CANCEL)
		return ferry_error_set(err, -ECANCELED, "the source cancelled: %s",
				       (char *)payload);
	if (h.type == WIRE_CTRL_POSTCOPY && h.len == 1 && payload[0] <= 1) {
		ferry_log(FERRY_LOG_INFO, "migration %s switched to post-copy%s",
			  in->id, payload[0] ? "; resuming the destination" : "");
		in->postcopy = true;
		/* During an incoming migration, cont means "run once loaded". */
		if (payload[0] && qmp_execute(in->q, "cont", NULL, NULL,
					      MIG_QMP_TIMEOUT_MS, err) < 0)
			return ferry_error_prefix(err, "resuming the destination: ");
		return 0;
	}
	if (h.type != WIRE_CTRL_FINISH || h.len != 1 || payload[0] > 1)
		return ferry_error_set(err, -EPROTO,
			"unexpected %s (%u bytes) from the source while streaming",
			wire_ctrl_name(h.type), h.len);
	in->resume = payload[0] == 1;
	return 1;
}

/*
 * Whether the destination is in post-copy: told so by the source, or seen
 * in QEMU's state (the POSTCOPY message may be lost with the connection).
 */
static bool rx_in_postcopy(struct incoming *in)
{
	struct mig_info info;

	if (!in->postcopy && mig_query(in->q, &info, NULL) == 0 &&
	    !strncmp(info.status, "postcopy-", 9))
		in->postcopy = true;
	return in->postcopy;
}

/* Stream until FINISH (1), or fail. */
static int rx_stream(struct incoming *in, struct ferry_error *err)
{
	rx_set_state(in, RX_STREAMING);
	for (;;) {
		struct pollfd fds[4] = {
			{ .fd = in->ctrl.fd, .events = POLLIN },
			{ .fd = in->r->stop_efd, .events = POLLIN },
			/* A tunnel that ended cleanly has nothing more to say. */
			{ .fd = in->tun && !tun_finished(in->tun) ?
				tun_done_fd(in->tun) : -1,
			  .events = POLLIN },
			/* The disk writer ends at the switchover. */
			{ .fd = blk_dst_done_fd(in->blk), .events = POLLIN },
		};
		struct mig_info info;
		struct qmp_event ev;
		int rc;

		if (net_conn_pending(&in->ctrl))
			fds[0].revents = POLLIN;
		else
			poll(fds, 4, RX_POLL_MS);
		if (in->blk && blk_dst_status(in->blk, err) < 0)
			return ferry_error_prefix(err, "block migration: ");
		if (fds[0].revents) {
			rc = rx_control(in, err);
			/* In post-copy a lost source is waited for, not dropped. */
			if (rc < 0 && rx_in_postcopy(in) && rc != -ECANCELED &&
			    rc != -EPROTO)
				return ferry_error_recode(err, -EAGAIN);
			if (rc != 0)
				return rc;
			continue;
		}
		if (fds[1].revents)
			return ferry_error_set(err, -ECANCELED, "the receiver is stopping");
		if (in->tun && !tun_finished(in->tun)) {
			rc = tun_wait(in->tun, 0, err);
			if (rc < 0 && rc != -ETIMEDOUT && rx_in_postcopy(in)) {
				ferry_error_prefix(err, "tunnel: ");
				return ferry_error_recode(err, -EAGAIN);
			}
			if (rc < 0 && rc != -ETIMEDOUT)
				return ferry_error_prefix(err, "tunnel: ");
		}
		rc = mig_query(in->q, &info, err);
		if (rc < 0)
			return ferry_error_prefix(err, "destination QEMU is gone: ");
		if (strcmp(info.status, "failed") == 0)
			return ferry_error_set(err, -EIO,
				"destination QEMU failed the migration%s%s",
				info.error_desc[0] ? ": " : "", info.error_desc);
		/* With --direct, QEMU's own connection broke. */
		if (strcmp(info.status, "postcopy-paused") == 0)
			return ferry_error_set(err, -EAGAIN, "the destination QEMU "
					       "paused post-copy");
		while (qmp_wait_event(in->q, NULL, &ev, 0, NULL) == 0)
			qmp_event_clear(&ev);
	}
}

/*
 * Post-copy broke: the destination QEMU runs (or holds) part of the guest
 * and stops in postcopy-paused. Wait, bounded, for the source to come
 * back with a RESUME control connection for this migration, have the
 * destination migrate-recover on a fresh socket, and accept a new tunnel.
 */
static int rx_recover(struct incoming *in, const char *why,
		      struct ferry_error *err)
{
	struct ferry_receiver *r = in->r;
	uint64_t deadline = ferry_now_ms() + MIG_RECOVERY_TIMEOUT_MS;
	bool direct = in->hello.options & WIRE_OPT_DIRECT;
	struct mig_info info;
	int rc;

	ferry_log(FERRY_LOG_WARN, "migration %s: post-copy interrupted (%s); "
		  "waiting up to %d s for the source to reconnect", in->id, why,
		  MIG_RECOVERY_TIMEOUT_MS / 1000);
	if (in->tun)
		tun_cancel(in->tun);
	tun_free(in->tun);
	in->tun = NULL;
	net_conn_close(&in->ctrl);
	while (ferry_now_ms() < deadline) {
		struct net_conn c;
		struct wire_hello h;
		char peer[64];
		int fd = accept_bounded(r, (int)(deadline - ferry_now_ms()));

		if (fd == -EINTR)
			continue;
		if (fd == -ECANCELED)
			return ferry_error_set(err, -ECANCELED, "the receiver is stopping");
		if (fd < 0)
			break;
		if (open_conn(r, fd, &c, &h, peer, sizeof(peer)) < 0)
			continue;
		if (h.conn != WIRE_CONN_CONTROL || !(h.options & WIRE_OPT_RESUME) ||
		    memcmp(h.mig_id, in->hello.mig_id, WIRE_MIG_ID_BYTES) != 0) {
			ferry_log(FERRY_LOG_WARN, "rejected connection from %s while "
				  "migration %s waits to resume post-copy", peer,
				  in->id);
			net_conn_close(&c);
			continue;
		}
		in->ctrl = c;
		/* QEMU notices the broken stream on its own time. */
		for (uint64_t until = ferry_now_ms() + MIG_QMP_TIMEOUT_MS;;) {
			rc = mig_query(in->q, &info, err);
			if (rc < 0 || !strcmp(info.status, "postcopy-paused"))
				break;
			if (ferry_now_ms() > until) {
				rc = ferry_error_set(err, -EIO, "destination QEMU is "
						     "'%s', not postcopy-paused",
						     info.status);
				break;
			}
			usleep(20 * 1000);
		}
		if (rc == 0 && direct) {
			uint8_t port_be[2];

			/* QEMU listens anew; the source QEMU reconnects to it. */
			rc = start_direct(in, "migrate-recover", port_be, err);
			if (rc == 0)
				rc = net_ctrl_send(&in->ctrl, WIRE_CTRL_READY, port_be,
						   2, MIG_QMP_TIMEOUT_MS, err);
		} else if (rc == 0) {
			rc = net_ctrl_send(&in->ctrl, WIRE_CTRL_READY, NULL, 0,
					   MIG_QMP_TIMEOUT_MS, err);
			if (rc == 0)
				rc = rx_accept_data(in, "migrate-recover", err);
		}
		if (rc == 0) {
			ferry_log(FERRY_LOG_INFO, "migration %s: post-copy resumed "
				  "from %s", in->id, peer);
			return 0;
		}
		send_error(in, err);
		return rc;
	}
	return ferry_error_set(err, -ETIMEDOUT, "post-copy recovery: the source "
		"did not reconnect within %d s; the guest's state is split between "
		"the hosts", MIG_RECOVERY_TIMEOUT_MS / 1000);
}

static void fill_rx_report(struct incoming *in, struct ferry_report *rep,
			   int rc, const struct ferry_error *err)
{
	struct tun_stats st = { 0 };

	memset(rep, 0, sizeof(*rep));
	if (in->tun)
		tun_stats(in->tun, &st);
	rep->streams = in->hello.stream_count;
	snprintf(rep->tls, sizeof(rep->tls), "%s", tls_ctx_mode(in->r->tls));
	rep->direct = in->hello.options & WIRE_OPT_DIRECT;
	snprintf(rep->transport, sizeof(rep->transport), "%s", rep->direct ?
		 "direct" : in->handoff ? "handoff" : "tunnel");
	rep->completed = rc == 0;
	snprintf(rep->status, sizeof(rep->status), "%s",
		 rc == 0 ? "completed" : rc == -ECANCELED ? "cancelled" : "failed");
	memcpy(rep->migration_id, in->id, sizeof(rep->migration_id));
	rep->total_ms = ferry_now_ms() - in->t0_ms;
	rep->ram_size_bytes = in->hello.ram_bytes;
	rep->ram_bytes = st.local_out_bytes;
	rep->wire_bytes = st.wire_in_bytes + st.wire_out_bytes;
	blk_dst_report(in->blk, rep);
	if (rc < 0)
		snprintf(rep->error, sizeof(rep->error), "%s", err->msg);
}

static int run_incoming(struct incoming *in, struct ferry_report *rep,
			struct ferry_error *err)
{
	int rc;

	ferry_log(FERRY_LOG_INFO, "migration %s from %s: %llu MiB guest, %s%s",
		  in->id, in->peer,
		  (unsigned long long)(in->hello.ram_bytes >> 20),
		  in->hello.options & WIRE_OPT_DIRECT ? "direct" : "through ferry",
		  in->hello.options & WIRE_OPT_PAUSED ? ", destination stays paused" : "");
	rc = rx_prepare(in, err);
	if (rc == 0 && in->blk)
		rc = rx_disks(in, err);
	if (rc == 0 && !(in->hello.options & WIRE_OPT_DIRECT))
		rc = rx_accept_data(in, "migrate-incoming", err);
	if (rc >= 0)
		rc = rx_stream(in, err);
	while (rc == -EAGAIN) {
		char why[FERRY_ERROR_MSG_MAX];

		snprintf(why, sizeof(why), "%s", err->msg);
		rc = rx_recover(in, why, err);
		if (rc == 0)
			rc = rx_stream(in, err);
	}
	if (rc == 1)
		rc = rx_finish(in, err);
	if (rc < 0) {
		rx_set_state(in, RX_FAILED);
		ferry_log(FERRY_LOG_ERROR, "migration %s failed: %s", in->id, err->msg);
		if (in->tun)
			tun_cancel(in->tun);
		if (rc != -ECANCELED)
			send_error(in, err);
	} else {
		rc = 0;
		rx_set_state(in, RX_DONE);
	}
	fill_rx_report(in, rep, rc, err);
	blk_dst_free(in->blk);
	in->blk = NULL;
	tun_free(in->tun);
	if (in->qemu_end >= 0)
		close(in->qemu_end);
	qmp_close(in->q);
	return rc;
}

/*
 * One accepted connection: 0 when it was not a migration (refused and
 * logged), 1 when a migration was served (its result in *@mig_rc).
 */
static int serve_connection(struct ferry_receiver *r, int fd,
			    struct ferry_report *rep, int *mig_rc,
			    struct ferry_error *err)
{
	struct incoming in = { .r = r, .state = RX_PREPARE, .qemu_end = -1 };

	in.t0_ms = ferry_now_ms();
	if (open_conn(r, fd, &in.ctrl, &in.hello, in.peer, sizeof(in.peer)) < 0)
		return 0;
	if (in.hello.conn != WIRE_CONN_CONTROL) {
		ferry_log(FERRY_LOG_WARN,
			  "rejected connection from %s: a data connection with no migration waiting for it",
			  in.peer);
		net_conn_close(&in.ctrl);
		return 0;
	}
	wire_mig_id_format(in.hello.mig_id, in.id);
	*mig_rc = run_incoming(&in, rep, err);
	net_conn_close(&in.ctrl);
	return 1;
}

int ferry_receiver_run(struct ferry_receiver *r, struct ferry_report *report,
		       struct ferry_error *err)
{
	struct ferry_report scratch;
	struct ferry_error local = { 0 };

	if (!report)
		report = &scratch;
	if (!err)
		err = &local;
	memset(report, 0, sizeof(*report));
	ferry_log(FERRY_LOG_INFO, "listening on %s:%u for QEMU at %s",
		  r->o.listen_host, r->port, r->o.qmp_path);
	for (;;) {
		int fd = accept_bounded(r, -1);
		int served, mig_rc = 0;

		if (fd == -ECANCELED)
			return 0;
		if (fd == -EINTR || fd == -ECONNABORTED)
			continue;
		if (fd < 0)
			return ferry_error_set(err, fd, "accept: %s", strerror(-fd));
		served = serve_connection(r, fd, report, &mig_rc, err);
		if (served && r->o.once)
			return mig_rc;
	}
}
