/*
 * One incoming migration, on a thread of its own (rx_mig_main); the
 * service (service.c) has verified its control connection's hello, found
 * its destination QEMU, and routes the migration's other connections to
 * its inbox.
 *
 * In order (enum rx_state, one transition function, one failed state):
 *   RX_PREPARE    check the destination QEMU (waiting for an incoming
 *                 migration, same RAM size), set its capabilities and
 *                 parameters, run the disk pre-checks (--block), answer
 *                 READY. Nothing here starts an incoming migration.
 *   RX_DISKS      --block: the disk tunnel streams until MEMORY
 *   RX_TUNNEL     take the data streams and the return connection from
 *                 the inbox (or the one hand-off connection, which with
 *                 --direct is QEMU's own stream), validated and matched
 *                 to this migration; only then migrate-incoming
 *   RX_STREAMING  until the source says FINISH (or CANCEL, or it breaks)
 *   RX_RECOVER    post-copy broke: wait for the source's RESUME
 *   RX_ADOPT      a RESUME for a post-copy of this host's journal whose
 *                 receiver is gone: take the destination QEMU back
 *   RX_FINISH     wait for the destination to complete, resume it unless
 *                 told to leave it paused, answer FINISHED
 *   RX_DONE / RX_FAILED
 * The destination QEMU never listens on a port of its own: with --direct
 * too, it gets a connection that ferry accepted and checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "blk.h"
#include "cpu_names.h"
#include "journal.h"
#include "launch.h"
#include "mig.h"
#include "report.h"
#include "rx.h"
#include "rx_link.h"
#include "transport/be.h"
#include "transport/net.h"
#include "transport/probe.h"
#include "transport/tls.h"
#include "transport/tunnel.h"
#include "transport/wire.h"
#include "common/util.h"

/* How often the streaming loop looks at the destination QEMU. */
#define RX_POLL_MS 250
/* Link probes one migration may send before its data connections. */
#define RX_PROBES_MAX 4
/*
 * The source's ferry is gone outside post-copy: how long the destination
 * QEMU may keep loading a stream that needs no ferry (hand-off, --direct)
 * before the service gives up on it. A dead peer ends such a stream much
 * sooner (TCP keepalives, NET_TCP_USER_TIMEOUT_MS).
 */
#define RX_SOURCE_LOST_WAIT_MS (10 * 60 * 1000)
/* How long a broken post-copy waits for the source's word (its QEMU may
 * be gone) before it waits for the source to come back. */
#define RX_PEER_VERDICT_MS 1000
/* How often a resume looks for the destination QEMU to pause post-copy. */
#define RX_PAUSED_POLL_MS 20
/* After FINISH: the destination completes within moments of the source. */
#define RX_FINISH_POLL_MS 2

enum rx_state {
	RX_PREPARE,
	RX_DISKS,
	RX_TUNNEL,
	RX_STREAMING,
	RX_RECOVER,
	RX_ADOPT,
	RX_FINISH,
	RX_DONE,
	RX_FAILED,
};

static const char *rx_state_name(enum rx_state s)
{
	static const char *const names[] = {
		"prepare", "disks", "tunnel", "streaming", "recover", "adopt",
		"finish",
		"done", "failed",
	};

	return names[s];
}

struct incoming {
	struct rx_mig *m;
	const struct ferry_receiver_opts *o;
	enum rx_state state;
	struct net_conn ctrl;
	char peer[64];
	char id[37];
	struct wire_hello hello;
	struct qmp *q;
	struct tun *tun;
	/* With post-copy's preempt channel: the tunnel's late-connected
	 * local end, and the directory of the socket QEMU listens on. */
	struct rx_link *link;
	struct net_unix_dir qdir;
	uint64_t t0_ms;
	bool resume;
	bool postcopy;		/* told so, or seen in QEMU's state */
	bool postcopy_seen;	/* seen in QEMU's state, and journaled */
	bool handoff;		/* the data connection went to QEMU */
	bool qemu_started;	/* migrate-incoming/-recover ran: from here a
				   failure burns the destination QEMU */
	struct blk_dst *blk;	/* --block */
	struct launch_result launch;	/* a launched destination QEMU */
	struct journal *journal;	/* NULL without a state directory */
	bool launched;
	bool switched;		/* the source completed: the destination
				   holds the guest now */
	bool resume_tried;	/* cont was sent: the guest may run here, so
				   "did not take over" is no longer ours to say */
	bool whole_copy;	/* the destination completed without the
				   source's word: it is left for recover */
};

static void rx_set_state(struct incoming *in, enum rx_state s)
{
	ferry_log(FERRY_LOG_DEBUG, "migration %s: %s -> %s", in->id,
		  rx_state_name(in->state), rx_state_name(s));
	in->state = s;
}

/* Stop the memory tunnel; QEMU sees its stream end. */
static void rx_tun_stop(struct incoming *in)
{
	if (in->tun)
		tun_cancel(in->tun);
	rx_link_close(in->link);	/* its threads may wait on the link */
}

static void rx_tun_free(struct incoming *in)
{
	rx_tun_stop(in);
	tun_free(in->tun);
	in->tun = NULL;
	rx_link_free(in->link);
	in->link = NULL;
	net_unix_dir_remove(&in->qdir);
}

static int send_error(struct incoming *in, const struct ferry_error *why)
{
	/* Closed when post-copy recovery gave up waiting for the source. */
	if (in->ctrl.fd < 0)
		return -ENOTCONN;
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

/* Append ", TYPE (ID)" for @d to @out. */
static void add_device(char *out, size_t len, const struct wire_guest_device *d)
{
	size_t n = strlen(out);

	snprintf(out + n, len - n, "%s%s%s%s%s", n ? ", " : "", d->type,
		 d->id[0] ? " (" : "", d->id, d->id[0] ? ")" : "");
}

/*
 * "; CPU features differ: only on the source: avx2, ...; only here: ..."
 * by QEMU's names (the words -cpu takes) into @out; the length written,
 * 0 when the guests see the same features.
 */
static size_t cpuid_differences(const struct wire_guest *src,
				const struct wire_guest *dst, char *out,
				size_t len)
{
	const struct wire_guest *sides[2] = { src, dst };
	char only_src[512] = "", only_dst[512] = "";
	int n;

	for (int s = 0; s < 2; s++) {
		for (uint32_t i = 0; i < sides[s]->ncpuid; i++) {
			const char *key = sides[s]->cpuid[i].key;
			uint32_t a = wire_guest_cpuid_bits(src, key);
			uint32_t b = wire_guest_cpuid_bits(dst, key);

			/* Each word once: from the source's list, or the
			 * destination's when the source has none of it. */
			if (a == b || (s == 1 && a))
				continue;
			cpu_feature_list(key, a & ~b, only_src, sizeof(only_src));
			cpu_feature_list(key, b & ~a, only_dst, sizeof(only_dst));
		}
	}
	if (!only_src[0] && !only_dst[0])
		return 0;
	n = snprintf(out, len, "; CPU features differ under the same model: "
		     "only on the source: %s; only here: %s",
		     only_src[0] ? only_src : "none",
		     only_dst[0] ? only_dst : "none");
	return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len - 1;
}

/*
 * "; start both QEMUs with -cpu MODEL, a model both hosts run" (the
 * Nova operator's cpu_model advice, computed): the length written.
 */
static size_t cpu_advice(struct incoming *in, const struct wire_guest *src,
			 const struct wire_guest *dst, char *out, size_t len)
{
	char model[WIRE_GUEST_WORD_MAX + 1];
	int n;

	if (qemu_cpu_common_model(in->q, src, dst->cpu, model, sizeof(model),
				  NULL) < 0 ||
	    !model[0])
		n = snprintf(out, len, "; start both QEMUs with the same named "
			     "-cpu model, not host or max");
	else
		n = snprintf(out, len, "; start both QEMUs with -cpu %s, a "
			     "model both hosts run", model);
	return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len - 1;
}

/*
 * The pre-check of what the guest is made of (the source's GUEST): the
 * destination QEMU must be the same machine, with the same CPU model and
 * the same devices. Else QEMU fails only while it loads the stream (a
 * device the destination lacks), or the guest finds its hardware changed
 * under it (one the destination has in addition, another CPU). Every
 * difference is named; nothing is changed on either QEMU.
 */
static int check_guest(struct incoming *in, struct ferry_error *err)
{
	const struct wire_guest *src = in->m->ctrl.guest;
	char only_src[1024] = "", only_dst[1024] = "", msg[FERRY_ERROR_MSG_MAX];
	struct wire_guest *dst;
	uint32_t i = 0, j = 0;
	size_t n = 0;
	int rc;

	if (!src)
		return 0;
	dst = malloc(sizeof(*dst));
	if (!dst)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	rc = qemu_guest_describe(in->q, dst, err);
	if (rc < 0) {
		free(dst);
		return ferry_error_prefix(err, "describing the destination guest: ");
	}
	while (i < src->ndevices || j < dst->ndevices) {
		int c = i == src->ndevices ? 1 : j == dst->ndevices ? -1 :
			strcmp(src->devices[i].type, dst->devices[j].type) ?:
			strcmp(src->devices[i].id, dst->devices[j].id);

		if (c < 0)
			add_device(only_src, sizeof(only_src), &src->devices[i++]);
		else if (c > 0)
			add_device(only_dst, sizeof(only_dst), &dst->devices[j++]);
		else
			i++, j++;
	}
	msg[0] = '\0';
	if (strcmp(src->machine, dst->machine))
		n += (size_t)snprintf(msg + n, sizeof(msg) - n, "; machine type "
				      "'%s' on the source, '%s' here",
				      src->machine, dst->machine);
	if (n < sizeof(msg)) {
		size_t before = n;

		/* Another model differs in features anyway: one line. */
		if (strcmp(src->cpu, dst->cpu))
			n += (size_t)snprintf(msg + n, sizeof(msg) - n, "; CPU "
					      "model '%s' on the source, '%s' here",
					      src->cpu, dst->cpu);
		else
			n += cpuid_differences(src, dst, msg + n, sizeof(msg) - n);
		if (n > before && n < sizeof(msg))
			n += cpu_advice(in, src, dst, msg + n, sizeof(msg) - n);
	}
	if (n < sizeof(msg) && only_src[0])
		n += (size_t)snprintf(msg + n, sizeof(msg) - n, "; devices only "
				      "on the source: %s", only_src);
	if (n < sizeof(msg) && only_dst[0])
		snprintf(msg + n, sizeof(msg) - n, "; devices only here: %s",
			 only_dst);
	free(dst);
	if (!msg[0])
		return 0;
	return ferry_error_set(err, -EINVAL, "pre-check: the destination QEMU "
			       "differs from the source (%s)", msg + 2);
}

/* Bytes of memory process @pid holds resident (VmRSS), 0 when unknown. */
static uint64_t resident_bytes(int pid)
{
	char path[64], line[128];
	unsigned long long kib = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = pid > 0 ? fopen(path, "re") : NULL;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %llu kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kib << 10;
}

/*
 * The host's memory pre-check: the guest's RAM fits in what this host
 * has (MemTotal times the overcommit ratio, less what is in use and what
 * the migrations arriving will take, this one's included), where
 * @resident is what its destination QEMU already holds (in use already:
 * a registered QEMU, preallocated or not; 0 before a launch).
 */
static int check_memory(struct incoming *in, uint64_t resident,
			struct ferry_error *err)
{
	struct wire_host host;
	int64_t left = rx_host(in->m->svc, &host) +
		       (int64_t)(resident < in->hello.ram_bytes ? resident :
				 in->hello.ram_bytes);

	if (left >= 0)
		return 0;
	return ferry_error_set(err, -ENOMEM, "pre-check: this host cannot take "
		"a %llu MiB guest: %llu MiB short (MemTotal %llu MiB x ratio %g, "
		"%llu MiB in use, %llu MiB of it by the destination QEMU, %u "
		"migrations arriving)",
		(unsigned long long)(in->hello.ram_bytes >> 20),
		(unsigned long long)(-left >> 20),
		(unsigned long long)(host.mem_total >> 20),
		host.ratio_milli / 1000.0,
		(unsigned long long)((host.mem_total - host.mem_available) >> 20),
		(unsigned long long)(resident >> 20), host.migrations);
}

/*
 * --launch: the destination QEMU is started for this migration from the
 * source's command line (CONFIG, checked at the edge by the service).
 */
static int rx_launch(struct incoming *in, struct ferry_error *err)
{
	const struct rx_conn *c = &in->m->ctrl;
	const char *argv[WIRE_CONFIG_ARGS_MAX];
	struct wire_ctrl_hdr h = { .type = WIRE_CTRL_CONFIG, .len = c->config_len };
	struct launch_req r = {
		.cmd = in->o->launch_cmd,
		.vm = in->m->target.vm,
		.qmp_path = in->m->target.qmp_path,
		.state_dir = in->o->state_dir,
		.allow_dirs = in->o->allow_dirs,
		.argv = argv,
		.disks = in->m->ctrl.disks,
		.ndisks = in->m->ctrl.ndisks,
		.block = in->hello.options & WIRE_OPT_BLOCK,
	};
	int rc;

	if (!c->config || !c->config_len)
		return ferry_error_set(err, -EINVAL, "this service launches the "
				       "destination QEMU from the source's "
				       "configuration, and the source sent none");
	rc = wire_config_decode(&h, c->config, argv, &r.argc, err);
	if (rc < 0)
		return rc;
	rc = check_memory(in, 0, err);
	if (rc < 0)
		return rc;
	unlink(r.qmp_path);	/* a stale socket of an earlier QEMU */
	rc = launch_run(&r, &in->launch, err);
	if (rc < 0)
		return ferry_error_prefix(err, "launching the destination QEMU "
					  "for VM '%s': ", r.vm);
	in->launched = true;
	ferry_log(FERRY_LOG_INFO, "migration %s: launched destination QEMU "
		  "(pid %d) for VM '%s'", in->id, in->launch.pid, r.vm);
	return 0;
}

static int rx_prepare(struct incoming *in, struct ferry_error *err)
{
	struct mig_params p = {
		.max_bandwidth_bytes_per_s = MIG_BANDWIDTH_UNLIMITED,
		.downtime_ms = FERRY_DEFAULT_DOWNTIME_MS,
		.postcopy = in->hello.options & WIRE_OPT_POSTCOPY,
		.blocktime = in->hello.options & WIRE_OPT_POSTCOPY,
	};
	int rc;

	in->q = qmp_connect(in->m->target.qmp_path, MIG_QMP_TIMEOUT_MS, err);
	if (!in->q)
		return ferry_error_prefix(err, "destination QEMU at %s: ",
					  in->m->target.qmp_path);
	rc = check_destination(in, err);
	if (rc == 0)
		rc = check_guest(in, err);
	/* A launched QEMU was checked before it started. */
	if (rc == 0 && !in->launched)
		rc = check_memory(in, resident_bytes(qmp_peer_pid(in->q)), err);
	if (rc < 0)
		return rc;
	rc = mig_setup_qemu(in->q, &p, err);
	if (rc < 0)
		return ferry_error_prefix(err, "configuring the destination QEMU: ");
	if (in->hello.options & WIRE_OPT_BLOCK) {
		/* The manifest was read and checked with the hello. */
		FERRY_ASSERT(in->m->ctrl.disks);
		rc = blk_dst_prepare(&in->blk, in->q, in->id, in->m->ctrl.disks,
				     in->m->ctrl.ndisks, err);
		if (rc < 0)
			return ferry_error_prefix(err, "block migration pre-check: ");
	}
	/* The destination QEMU gets its socket once the data connections
	 * are here (rx_accept_data): the tunnel's, or the connection itself. */
	rx_mig_want_conns(in->m, true);
	rc = net_ctrl_send(&in->ctrl, WIRE_CTRL_READY, NULL, 0,
			   MIG_QMP_TIMEOUT_MS, err);
	if (rc == 0)
		rx_mig_counted(in->m);
	return rc;
}

/* Give the destination QEMU @fd and have it take the stream from it
 * (migrate-incoming, or @recover: migrate-recover to resume post-copy). */
static int rx_start_qemu(struct incoming *in, int fd, bool recover,
			 struct ferry_error *err)
{
	int rc = mig_give_fd(in->q, fd, err);

	if (rc == 0 && !recover)
		rc = journal_step(in->journal, JOURNAL_INCOMING, NULL, err);
	if (rc == 0) {
		in->qemu_started = true;
		rc = qemu_migrate_incoming(in->q, "fd:" MIG_FDNAME, recover, err);
	}
	if (rc < 0)
		return ferry_error_prefix(err, "destination QEMU refused %s: ",
					  recover ? "migrate-recover" :
					  "migrate-incoming");
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
	/* Post-copy's preempt channel: the hellos of the memory tunnel say
	 * whether it has one (WIRE_OPT_PREEMPT). */
	bool want_preempt, have_preempt;
	struct net_conn preempt;
	bool zstd;		/* the data streams announce zstd frames */
};

static void rx_conns_close(struct rx_conns *c)
{
	for (uint32_t i = 0; i < c->n; i++)
		net_conn_close(&c->streams[i]);
	net_conn_close(&c->ret);
	net_conn_close(&c->preempt);
}

/* Every connection a tunnel needs is there. */
static bool rx_conns_whole(const struct rx_conns *c)
{
	if (c->handoff)
		return c->got == 1;
	return c->got == c->n && c->have_ret &&
	       (!c->want_preempt || c->have_preempt);
}

/* Why connection @h cannot join @c, or NULL. */
static const char *rx_conn_refusal(const struct incoming *in,
				   const struct rx_conns *c,
				   const struct wire_hello *h, uint32_t probes)
{
	/* --direct: the memory is QEMU's own stream on one connection; the
	 * disk tunnel is ferry's as always. */
	bool direct = (in->hello.options & WIRE_OPT_DIRECT) &&
		      c->data_kind == WIRE_CONN_DATA;

	/* The service routed it here by id and TLS identity. */
	FERRY_ASSERT(!memcmp(h->mig_id, in->hello.mig_id, WIRE_MIG_ID_BYTES));
	if (h->conn == WIRE_CONN_CONTROL)
		return "a second control connection";
	if ((h->options ^ in->hello.options) & WIRE_OPT_DIRECT)
		return "its direct option differs from the control connection's";
	if (direct && (h->conn != WIRE_CONN_DATA || !(h->options & WIRE_OPT_HANDOFF)))
		return "a direct migration has one data connection for QEMU";
	if (h->conn == WIRE_CONN_PROBE)
		return probes >= RX_PROBES_MAX ? "too many link probes" : NULL;
	if (c->got + c->have_ret + c->have_preempt > 0 &&
	    !(h->options & WIRE_OPT_PREEMPT) != !c->want_preempt)
		return "its preempt option differs from the other connections'";
	if ((h->options & WIRE_OPT_PREEMPT) &&
	    !(in->hello.options & WIRE_OPT_POSTCOPY))
		return "a preempt channel without post-copy";
	if (h->conn == WIRE_CONN_PREEMPT &&
	    (c->data_kind != WIRE_CONN_DATA || !(h->options & WIRE_OPT_PREEMPT)))
		return "a preempt connection belongs to a memory tunnel that "
		       "announces it";
	if (h->conn == WIRE_CONN_PREEMPT && c->have_preempt)
		return "a second preempt connection";
	if ((h->options & WIRE_OPT_PREEMPT) && (h->options & WIRE_OPT_HANDOFF))
		return "hand-off has no preempt channel";
	if (h->conn != c->data_kind && h->conn != c->ret_kind &&
	    h->conn != WIRE_CONN_PREEMPT)
		return "a connection of another kind was expected now";
	if (h->stream_count != c->n || h->frame_max != in->hello.frame_max)
		return "its stream count or frame size differs from the "
		       "control connection's";
	if (h->conn == c->data_kind && c->streams[h->stream_index].fd >= 0)
		return "a second connection for the same stream";
	if ((h->options & WIRE_OPT_ZSTD) &&
	    (h->conn != c->data_kind || (h->options & WIRE_OPT_HANDOFF)))
		return "zstd frames are for the data streams of a tunnel";
	if (h->conn == c->data_kind && c->got > 0 &&
	    !(h->options & WIRE_OPT_ZSTD) != !c->zstd)
		return "its zstd option differs from the other data streams'";
	if (h->conn == c->ret_kind && c->have_ret)
		return "a second return connection";
	if ((h->options & WIRE_OPT_HANDOFF) &&
	    (h->conn != WIRE_CONN_DATA || c->n != 1 || c->have_ret ||
	     rx_tls(in->m->svc)))
		return "hand-off is for the one data connection of a plaintext "
		       "migration";
	return NULL;
}

/*
 * The control connection spoke while the source should be opening its
 * connections: a CANCEL, or it left. Either way this migration is over.
 */
static int rx_ctrl_news(struct incoming *in, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr h;
	int rc;

	rc = net_ctrl_recv(&in->ctrl, &h, payload, MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "control connection from the "
					  "source, before its data connections: ");
	if (h.type == WIRE_CTRL_CANCEL)
		return ferry_error_set(err, -ECANCELED, "the source cancelled: %s",
				       (char *)payload);
	return ferry_error_set(err, -EPROTO, "unexpected %s from the source "
			       "before its data connections",
			       wire_ctrl_name(h.type));
}

/*
 * Take the streams and the return connection of one tunnel of this
 * migration (@c says which kinds) from the inbox, serving link probes on
 * the way, or the one data connection that goes to QEMU itself (hand-off,
 * and --direct). A connection that does not fit is refused with a log
 * line; the wait is bounded, and nothing has touched QEMU if it fails.
 */
static int rx_accept_conns(struct incoming *in, struct rx_conns *c,
			   struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + in->o->hello_timeout_ms;
	uint32_t probes = 0;

	/* --direct's memory is one connection, whatever --streams says. */
	c->n = (in->hello.options & WIRE_OPT_DIRECT) &&
	       c->data_kind == WIRE_CONN_DATA ? 1 : in->hello.stream_count;
	c->got = 0;
	c->have_ret = c->handoff = false;
	c->want_preempt = c->have_preempt = false;
	c->zstd = false;
	for (uint32_t i = 0; i < c->n; i++)
		net_conn_init(&c->streams[i], -1);
	net_conn_init(&c->ret, -1);
	net_conn_init(&c->preempt, -1);
	while (!rx_conns_whole(c)) {
		struct rx_conn conn;
		const char *why;
		int rc = rx_inbox_take(in->m, deadline, in->ctrl.fd, &conn);

		if (rc == -ECANCELED) {
			rx_conns_close(c);
			return ferry_error_set(err, -ECANCELED, "the receiver is stopping");
		}
		if (rc == -EPIPE) {
			rx_conns_close(c);
			return rx_ctrl_news(in, err);
		}
		if (rc < 0)
			break;
		why = rx_conn_refusal(in, c, &conn.hello, probes);
		if (why) {
			ferry_log(FERRY_LOG_WARN,
				  "rejected connection from %s during migration %s: %s",
				  conn.peer, in->id, why);
			net_conn_close(&conn.c);
			continue;
		}
		if (conn.hello.conn == WIRE_CONN_PROBE) {
			struct ferry_error e = { 0 };

			probes++;
			if (probe_serve(&conn.c, &e) < 0)
				ferry_log(FERRY_LOG_WARN, "link probe from %s: %s",
					  conn.peer, e.msg);
			net_conn_close(&conn.c);
			continue;
		}
		c->want_preempt = conn.hello.options & WIRE_OPT_PREEMPT;
		if (conn.hello.conn == WIRE_CONN_PREEMPT) {
			c->preempt = conn.c;
			c->have_preempt = true;
		} else if (conn.hello.conn == c->ret_kind) {
			c->ret = conn.c;
			c->have_ret = true;
		} else {
			c->streams[conn.hello.stream_index] = conn.c;
			c->handoff = conn.hello.options & WIRE_OPT_HANDOFF;
			c->zstd = conn.hello.options & WIRE_OPT_ZSTD;
			c->got++;
		}
	}
	if (rx_conns_whole(c))
		return 0;
	rx_conns_close(c);
	return ferry_error_set(err, -ETIMEDOUT,
		"%u of %u %s streams, %s return connection%s of migration %s "
		"arrived within %u ms; the destination QEMU was not started",
		c->got, c->n, c->data_kind == WIRE_CONN_DISK ? "disk" : "data",
		c->have_ret ? "the" : "no", !c->want_preempt ? "" :
		c->have_preempt ? " and the preempt connection" :
		" and no preempt connection", in->id, in->o->hello_timeout_ms);
}

/*
 * What every migration stream QEMU 7.2 sends starts with (savevm.c:
 * QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION). A resumed post-copy stream
 * does not: it starts with commands for the paused destination.
 */
#define RX_QEMU_MAGIC 0x5145564du	/* "QEVM" */
#define RX_QEMU_VERSION 3u
#define RX_GATE_SLICE_MS 100

/*
 * Before the destination QEMU takes a stream it cannot give back (QEMU
 * 7.2 exits when an incoming migration fails): wait, bounded, until the
 * stream on @fd (the socket QEMU will get), or in in->link, begins with
 * QEMU's header. A peer that completes the handshake and then sends
 * nothing, a bad frame (the tunnel ends, @fd sees EOF) or something else
 * costs its own migration only; the QEMU was never touched.
 */
static int rx_gate_stream(struct incoming *in, int fd, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + in->o->hello_timeout_ms;
	uint8_t head[8];
	uint32_t magic, version;
	int rc;

	/* In slices, to notice a tunnel that failed (a bad frame) at once. */
	do {
		rc = in->link ?
		     rx_link_peek(in->link, head, sizeof(head), RX_GATE_SLICE_MS,
				  rx_stop_fd(in->m->svc)) :
		     net_peek(fd, head, sizeof(head), RX_GATE_SLICE_MS,
			      rx_stop_fd(in->m->svc));
	} while (rc == -ETIMEDOUT && ferry_now_ms() < deadline &&
		 !(in->tun && tun_wait(in->tun, 0, NULL) != -ETIMEDOUT));
	if (rc == -ECANCELED)
		return ferry_error_set(err, rc, "the receiver is stopping");
	if (rc < 0 && in->tun && tun_wait(in->tun, 0, err) < 0)
		return ferry_error_prefix(err, "the stream from the source broke "
					  "before it started (the destination "
					  "QEMU was not started): tunnel: ");
	if (rc < 0)
		return ferry_error_set(err, rc, "the stream from the source did not "
				       "start within %u ms (%s); the destination "
				       "QEMU was not started",
				       in->o->hello_timeout_ms, strerror(-rc));
	magic = be_get32(head);
	version = be_get32(head + 4);
	if (magic != RX_QEMU_MAGIC || version != RX_QEMU_VERSION)
		return ferry_error_set(err, -EPROTO, "the stream from the source "
				       "is not a QEMU migration stream (starts "
				       "0x%08x 0x%08x); the destination QEMU was "
				       "not started", magic, version);
	return 0;
}

/*
 * Post-copy's preempt channel: the destination QEMU listens on a socket of
 * its own (migrate-incoming or -recover unix:) and ferry connects twice,
 * the main channel first: QEMU 7.2 tells the two apart by their order
 * alone. The memory tunnel writes through in->link once the main channel
 * is there; @pc, the preempt connection from the source, becomes a
 * one-way tunnel of its own that lives and dies with the memory tunnel.
 */
static int rx_start_qemu_preempt(struct incoming *in, struct net_conn *pc,
				 bool recover, struct ferry_error *err)
{
	struct tun_opts o = {
		.role = TUN_DEST, .local_fd = -1, .streams = pc, .nstreams = 1,
		.frame_max = in->hello.frame_max, .codec = FERRY_CODEC_NONE,
		.idle_timeout_ms = TUN_IDLE_NEVER,	/* quiet until post-copy */
	};
	char uri[sizeof(in->qdir.path) + 8];
	struct tun *pre;
	int fd, rc;

	net_conn_init(&o.ret, -1);
	rc = net_unix_dir_make(&in->qdir, qmp_peer_pid(in->q), err);
	if (rc == 0 && !recover)
		rc = mig_set_capability(in->q, "postcopy-preempt", true, err);
	if (rc == 0 && !recover)
		rc = journal_step(in->journal, JOURNAL_INCOMING, NULL, err);
	if (rc == 0) {
		in->qemu_started = true;
		snprintf(uri, sizeof(uri), "unix:%s", in->qdir.path);
		rc = qemu_migrate_incoming(in->q, uri, recover, err);
		if (rc < 0)
			ferry_error_prefix(err, "destination QEMU refused %s: ",
					   recover ? "migrate-recover" :
					   "migrate-incoming");
	}
	/* Main first, then preempt: both queue on QEMU's listening socket
	 * and it takes them in that order. The socket must be the QEMU's. */
	fd = rc < 0 ? rc : net_unix_connect(in->qdir.path, err);
	if (fd >= 0 && qmp_peer_pid(in->q) > 0 &&
	    net_peer_pid(fd) != qmp_peer_pid(in->q)) {
		close(fd);
		fd = ferry_error_set(err, -EPERM, "the socket at %s is not the "
				     "destination QEMU's (pid %d)", in->qdir.path,
				     qmp_peer_pid(in->q));
	}
	if (fd >= 0)
		rx_link_set(in->link, fd);
	o.local_fd = fd < 0 ? fd : net_unix_connect(in->qdir.path, err);
	net_unix_dir_remove(&in->qdir);	/* QEMU keeps its listening socket */
	if (o.local_fd < 0) {
		net_conn_close(pc);
		return o.local_fd;
	}
	rc = tun_start(&pre, &o, err);	/* takes @pc and the socket */
	if (rc < 0)
		return ferry_error_prefix(err, "preempt channel: ");
	tun_adopt(in->tun, pre);
	return 0;
}

/*
 * The memory tunnel (or hand-off), then the destination QEMU starts on it
 * (migrate-incoming, or @recover: migrate-recover); migrate-incoming only
 * once the stream has begun with QEMU's header.
 */
static int rx_accept_data(struct incoming *in, bool recover,
			  struct ferry_error *err)
{
	struct rx_conns c = { .data_kind = WIRE_CONN_DATA,
			      .ret_kind = WIRE_CONN_RETURN };
	struct tun_opts o = {
		.role = TUN_DEST,
		.frame_max = in->hello.frame_max,
		.codec = FERRY_CODEC_NONE,
	};
	bool fresh = !recover;
	int sv[2], rc;

	rc = rx_accept_conns(in, &c, err);
	if (rc < 0)
		return rc;
	in->handoff = c.handoff;
	if (in->handoff) {
		rc = fresh ? rx_gate_stream(in, c.streams[0].fd, err) : 0;
		if (rc == 0)
			rc = rx_start_qemu(in, c.streams[0].fd, recover, err);
		net_conn_close(&c.streams[0]);	/* QEMU holds its own copy */
		return rc;
	}
	/* The tunnel's local end: a socketpair whose other end QEMU gets,
	 * or, with the preempt channel, QEMU's socket once it listens. */
	sv[0] = -1;
	rc = c.want_preempt ? rx_link_new(&in->link) : net_local_pair(sv, err);
	if (rc < 0) {
		rx_conns_close(&c);
		return c.want_preempt ? ferry_error_set(err, rc, "out of memory") : rc;
	}
	o.streams = c.streams;
	o.nstreams = c.n;
	o.ret = c.ret;
	o.zstd = c.zstd;
	o.local_fd = c.want_preempt ? -1 : sv[1];	/* the tunnel's, always */
	o.local = c.want_preempt ? rx_link_local(in->link) : NULL;
	rc = tun_start(&in->tun, &o, err);
	if (rc == 0 && fresh)
		rc = rx_gate_stream(in, sv[0], err);
	if (c.want_preempt) {
		if (rc == 0)
			return rx_start_qemu_preempt(in, &c.preempt, recover, err);
		net_conn_close(&c.preempt);
		return rc;
	}
	if (rc == 0)
		rc = rx_start_qemu(in, sv[0], recover, err);
	close(sv[0]);		/* QEMU holds its own copy */
	return rc;
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

	rc = rx_accept_conns(in, &c, err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk tunnel: ");
	o.streams = c.streams;
	o.nstreams = c.n;
	o.ret = c.ret;
	o.zstd = c.zstd;
	rc = blk_dst_start(in->blk, &o, err);
	if (rc < 0)
		return rc;
	for (;;) {
		uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
		struct pollfd fds[3] = {
			{ .fd = in->ctrl.fd, .events = POLLIN },
			{ .fd = rx_stop_fd(in->m->svc), .events = POLLIN },
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

/* Run the guest here: journaled first; from then on the source must not
 * be told the destination did not take over. */
static int rx_cont(struct incoming *in, struct ferry_error *err)
{
	int rc = journal_step(in->journal, JOURNAL_RESUMING, NULL, err);

	in->resume_tried = rc == 0;
	if (rc == 0)
		rc = qemu_cont(in->q, err);
	return rc < 0 ? ferry_error_prefix(err, "resuming the destination "
					   "guest: ") : 0;
}

/* FINISH arrived: the source completed. Bring the destination up. */
static int rx_finish(struct incoming *in, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + MIG_FINISH_TIMEOUT_MS;
	struct mig_info info = { 0 };
	uint8_t text[1 + WIRE_STATUS_MAX];
	char status[32];
	int rc;

	in->switched = true;
	while (ferry_now_ms() < deadline) {
		rc = mig_query(in->q, &info, err);
		if (rc < 0)
			return ferry_error_prefix(err, "destination QEMU: ");
		if (!mig_state_active(info.state))
			break;
		usleep(RX_FINISH_POLL_MS * 1000);
	}
	if (info.state != MIG_S_COMPLETED)
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
	if (in->resume && rx_cont(in, err) < 0)
		return err->code;
	rc = mig_vm_status(in->q, status, sizeof(status), err);
	if (rc < 0)
		return rc;
	ferry_log(FERRY_LOG_INFO, "migration %s completed; destination guest %s",
		  in->id, status);
	/* MIG_BLOCKTIME_UNKNOWN is WIRE_BLOCKTIME_UNKNOWN: passed as it is. */
	return net_ctrl_send(&in->ctrl, WIRE_CTRL_FINISHED, text,
			     wire_finished_encode(true, status,
						  info.postcopy_blocktime_ms, text),
			     MIG_QMP_TIMEOUT_MS, err);
}

/* A control message from the source while streaming. */
static int rx_control(struct incoming *in, struct ferry_error *err)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr h;
	bool flag;
	int rc;

	rc = net_ctrl_recv(&in->ctrl, &h, payload, MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "control connection from the source: ");
	if (h.type == WIRE_CTRL_CANCEL)
		return ferry_error_set(err, -ECANCELED, "the source cancelled: %s",
				       (char *)payload);
	if (h.type != WIRE_CTRL_POSTCOPY && h.type != WIRE_CTRL_FINISH)
		return ferry_error_set(err, -EPROTO,
			"unexpected %s (%u bytes) from the source while streaming",
			wire_ctrl_name(h.type), h.len);
	rc = wire_flag_decode(&h, payload, &flag, err);
	if (rc < 0)
		return rc;
	if (h.type == WIRE_CTRL_POSTCOPY) {
		ferry_log(FERRY_LOG_INFO, "migration %s switched to post-copy%s",
			  in->id, flag ? "; resuming the destination" : "");
		in->postcopy = true;
		rc = journal_step(in->journal, JOURNAL_POSTCOPY,
				  json_pack("{s:b}", "resume", flag), err);
		if (rc < 0)
			return rc;
		/* During an incoming migration, cont means "run once loaded". */
		if (flag && qemu_cont(in->q, err) < 0)
			return ferry_error_prefix(err, "resuming the destination: ");
		return 0;
	}
	in->resume = flag;
	return 1;
}

/*
 * The destination QEMU itself runs post-copy (@info): from here it holds
 * state the source no longer has, and the source can never run the guest
 * again. Journaled once ("seen"): what ferry recover trusts, where the
 * source's POSTCOPY message was only a request QEMU may not have acted on.
 */
static void rx_postcopy_seen(struct incoming *in, const struct mig_info *info)
{
	if (!mig_state_postcopy(info->state))
		return;
	in->postcopy = true;
	if (in->postcopy_seen)
		return;
	in->postcopy_seen = true;
	journal_step(in->journal, JOURNAL_POSTCOPY,
		     json_pack("{s:b,s:s}", "seen", true, "qemu", info->status),
		     NULL);
}

/*
 * Whether the destination is in post-copy: told so by the source, or seen
 * in QEMU's state (the POSTCOPY message may be lost with the connection).
 */
static bool rx_in_postcopy(struct incoming *in)
{
	struct mig_info info;

	if (!in->postcopy && mig_query(in->q, &info, NULL) == 0)
		rx_postcopy_seen(in, &info);
	return in->postcopy;
}

/* The last line of a launched QEMU's log (its stderr), or "". */
static void launch_log_tail(const struct incoming *in, char *out, size_t len)
{
	char path[PATH_MAX], buf[1024];
	ssize_t n;
	int fd;

	out[0] = '\0';
	if (!in->launched)
		return;
	snprintf(path, sizeof(path), "%s/%s.log", in->o->state_dir,
		 in->m->target.vm);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	{
		/* Its end is enough: the last line is the reason. */
		off_t size = lseek(fd, 0, SEEK_END);
		off_t at = size > (off_t)sizeof(buf) - 1 ?
			   size - (off_t)sizeof(buf) + 1 : 0;

		n = pread(fd, buf, sizeof(buf) - 1, at);
	}
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	while (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	snprintf(out, len, "%s", strrchr(buf, '\n') ? strrchr(buf, '\n') + 1 : buf);
}

/*
 * The destination QEMU failed the migration (@info, when it still
 * answers) or exited (QEMU 7.2 exits when an incoming migration fails):
 * say so, and why when it can be known (its error, or the last line a
 * launched QEMU printed), so that the source reports the destination's
 * failure rather than its own broken stream.
 */
static int rx_dest_failed(struct incoming *in, const struct mig_info *info,
			  struct ferry_error *err)
{
	char tail[512];

	if (info)
		return ferry_error_set(err, -EIO, "the destination QEMU failed the "
				       "migration%s%s", info->error_desc[0] ?
				       ": " : "", info->error_desc);
	launch_log_tail(in, tail, sizeof(tail));
	return ferry_error_set(err, -EIO, "the destination QEMU exited while it "
			       "loaded the migration stream%s%s", tail[0] ?
			       ": " : " (it was killed, or rejected the source's "
			       "state: a device or setting the destination lacks "
			       "is the usual cause; QEMU's own message is on its "
			       "stderr)", tail);
}

/*
 * The source's ferry is gone (its control connection or the tunnel broke)
 * outside post-copy. Its QEMU may finish on its own: with hand-off and
 * --direct, QEMU's stream does not need ferry. Wait, bounded, for the
 * destination QEMU to leave the active states (and for a CANCEL, or the
 * service stopping). Completed means the destination holds a whole copy
 * of the guest, but not that the source has stopped for good: a source
 * QEMU whose return path broke after the end of its stream fails and
 * runs its guest again. So the destination stays paused, is not killed,
 * and the migration ends unresolved: `ferry recover` on the source host
 * says whether the source completed, and `ferry recover
 * --source-completed ID` here resumes the guest then. Post-copy seen
 * meanwhile goes to recovery. Anything else: failed, the source runs on.
 */
static int rx_source_lost(struct incoming *in, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + RX_SOURCE_LOST_WAIT_MS;
	char why[FERRY_ERROR_MSG_MAX];
	struct mig_info info = { 0 };
	bool ctrl_alive = in->ctrl.fd >= 0;
	int trc = in->tun ? tun_wait(in->tun, 0, NULL) : -ETIMEDOUT;
	/* The tunnel failed on the source's side first: whatever QEMU does
	 * next (it exits at the end of its stream) follows from that. */
	bool peer_first = trc < 0 && trc != -ETIMEDOUT &&
			  !tun_failed_locally(in->tun);

	snprintf(why, sizeof(why), "%s", err->msg);
	/* A destination QEMU that failed (or exited) broke the stream
	 * itself: the tunnel saw its side end first, or QEMU says so. */
	if (!peer_first && mig_query(in->q, &info, NULL) < 0)
		return rx_dest_failed(in, NULL, err);
	if (!peer_first && info.state != MIG_S_COMPLETED &&
	    (info.state == MIG_S_FAILED ||
	     (in->tun && tun_failed_locally(in->tun)))) {
		/* It closes its end a moment before it fails or exits. */
		usleep(RX_POLL_MS * 1000);
		return rx_dest_failed(in, mig_query(in->q, &info, NULL) == 0 &&
				      info.state == MIG_S_FAILED ? &info :
				      NULL, err);
	}
	ferry_log(FERRY_LOG_WARN, "migration %s: the source's side broke off (%s); "
		  "waiting for the destination QEMU to finish or fail on its own",
		  in->id, why);
	/* Through the tunnel no more of the stream can come: QEMU sees its
	 * end now, and completes only if it had it all. */
	if (in->tun && !tun_finished(in->tun))
		rx_tun_stop(in);
	do {
		struct pollfd fds[2] = {
			{ .fd = ctrl_alive ? in->ctrl.fd : -1, .events = POLLIN },
			{ .fd = rx_stop_fd(in->m->svc), .events = POLLIN },
		};
		int rc;

		if (mig_query(in->q, &info, NULL) < 0)
			return ferry_error_set(err, -ECONNRESET, "the source's side "
				"broke off (%s); the destination QEMU exited with "
				"its stream (as QEMU 7.2 does), so the source guest "
				"runs on", why);
		if (mig_state_postcopy(info.state)) {
			in->postcopy = true;
			return ferry_error_set(err, -EAGAIN, "%s", why);
		}
		if (!mig_state_active(info.state))
			break;
		poll(fds, 2, RX_POLL_MS);
		if (fds[1].revents)
			return ferry_error_set(err, -ECANCELED, "the receiver is "
					       "stopping");
		/* A source ferry that is still there may cancel, or finish
		 * (FINISH says its QEMU completed). */
		if (!fds[0].revents)
			continue;
		rc = rx_control(in, err);
		if (rc == 1 || rc == -ECANCELED)
			return rc;
		ctrl_alive = rc == 0;
	} while (ferry_now_ms() < deadline);
	if (info.state != MIG_S_COMPLETED)
		return ferry_error_set(err, -ECONNRESET, "the source's ferry is gone "
				       "(%s); the destination QEMU's migration is "
				       "'%s'%s%s, so the source guest runs on", why,
				       info.status, info.error_desc[0] ? ": " : "",
				       info.error_desc);
	in->whole_copy = true;
	return ferry_error_set(err, -EINPROGRESS, "the source's ferry is gone "
		"(%s) and the destination QEMU completed: it holds a whole copy "
		"of the guest and stays paused, since only the source host can "
		"tell whether the source stopped for good. Run ferry recover on "
		"the source host; if it says the source completed, run ferry "
		"recover --source-completed %s on this host", why, in->id);
}

/*
 * Post-copy broke on ferry's side (@err says how): -EAGAIN to wait for
 * the source, unless the destination QEMU is gone with it: then the
 * guest is, and the source hears it at once (its ERROR) instead of
 * reconnecting to nothing.
 */
static int rx_postcopy_broke(struct incoming *in, struct ferry_error *err)
{
	struct pollfd p = { .fd = in->ctrl.fd, .events = POLLIN };
	struct mig_info info;

	if (mig_query(in->q, &info, NULL) < 0)
		return ferry_error_set(err, -EIO, "the destination QEMU is gone "
				       "during post-copy: it held the running "
				       "guest, which is lost with it");
	/* A source whose QEMU is gone says so (CANCEL) on a control
	 * connection that still works: then nobody is coming back. */
	if (in->ctrl.fd >= 0 && (net_conn_pending(&in->ctrl) ||
				 poll(&p, 1, RX_PEER_VERDICT_MS) > 0)) {
		struct ferry_error e = { 0 };

		if (rx_control(in, &e) == -ECANCELED) {
			*err = e;
			return err->code;
		}
	}
	return ferry_error_recode(err, -EAGAIN);
}

/* Stream until FINISH (1), or fail. */
static int rx_stream(struct incoming *in, struct ferry_error *err)
{
	for (;;) {
		struct pollfd fds[4] = {
			{ .fd = in->ctrl.fd, .events = POLLIN },
			{ .fd = rx_stop_fd(in->m->svc), .events = POLLIN },
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
			/* In post-copy a lost source is waited for, not dropped
			 * (unless this side's QEMU is gone too). */
			if (rc < 0 && rx_in_postcopy(in) && rc != -ECANCELED &&
			    rc != -EPROTO)
				return rx_postcopy_broke(in, err);
			if (rc < 0 && rc != -ECANCELED && rc != -EPROTO)
				return rx_source_lost(in, err);
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
				return rx_postcopy_broke(in, err);
			}
			if (rc < 0 && rc != -ETIMEDOUT) {
				ferry_error_prefix(err, "tunnel: ");
				return rx_source_lost(in, err);
			}
		}
		if (mig_query(in->q, &info, NULL) < 0)
			return rx_dest_failed(in, NULL, err);
		if (info.state == MIG_S_FAILED)
			return rx_dest_failed(in, &info, err);
		rx_postcopy_seen(in, &info);
		/* With --direct, QEMU's own connection broke. */
		if (info.state == MIG_S_POSTCOPY_PAUSED)
			return ferry_error_set(err, -EAGAIN, "the destination QEMU "
					       "paused post-copy");
		while (qmp_wait_event(in->q, NULL, &ev, 0, NULL) == 0)
			qmp_event_clear(&ev);
	}
}

/*
 * The source came back with a RESUME control connection (in->ctrl): once
 * the destination QEMU is in postcopy-paused, answer READY, have it
 * migrate-recover on a fresh socket, and take the new connections.
 */
static int rx_resume(struct incoming *in, struct ferry_error *err)
{
	uint64_t until = ferry_now_ms() + MIG_QMP_TIMEOUT_MS;
	struct mig_info info;
	int rc;

	/* QEMU notices the broken stream on its own time. */
	for (;;) {
		rc = mig_query(in->q, &info, err);
		if (rc < 0 || info.state == MIG_S_POSTCOPY_PAUSED)
			break;
		if (ferry_now_ms() > until) {
			rc = ferry_error_set(err, -EIO, "destination QEMU is '%s', "
					     "not postcopy-paused", info.status);
			break;
		}
		usleep(RX_PAUSED_POLL_MS * 1000);
	}
	rx_mig_want_conns(in->m, true);
	if (rc == 0)
		rc = net_ctrl_send(&in->ctrl, WIRE_CTRL_READY, NULL, 0,
				   MIG_QMP_TIMEOUT_MS, err);
	if (rc == 0)
		rc = rx_accept_data(in, true, err);
	rx_mig_want_conns(in->m, false);
	if (rc == 0)
		ferry_log(FERRY_LOG_INFO, "migration %s: post-copy resumed from %s",
			  in->id, in->peer);
	/* A failure's ERROR goes out once, from run_incoming(). */
	return rc;
}

/*
 * Post-copy broke: the destination QEMU runs (or holds) part of the guest
 * and stops in postcopy-paused. Wait, bounded, for the source to come
 * back with a RESUME control connection for this migration (the service
 * routes it here by id and TLS identity), and resume on it. QEMU's own
 * stream (hand-off, --direct) may not have broken with ferry: when it
 * completes meanwhile, the destination holds the whole guest (1).
 */
static int rx_recover(struct incoming *in, const char *why,
		      struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + MIG_RECOVERY_TIMEOUT_MS;
	struct mig_info info;
	int rc;

	ferry_log(FERRY_LOG_WARN, "migration %s: post-copy interrupted (%s); "
		  "waiting up to %d s for the source to reconnect", in->id, why,
		  MIG_RECOVERY_TIMEOUT_MS / 1000);
	rx_tun_free(in);
	net_conn_close(&in->ctrl);
	rx_mig_want_resume(in->m, true);
	for (;;) {
		struct rx_conn c;
		uint64_t next = ferry_now_ms() + RX_POLL_MS;

		if (mig_query(in->q, &info, NULL) == 0 &&
		    info.state == MIG_S_COMPLETED) {
			rx_mig_want_resume(in->m, false);
			ferry_log(FERRY_LOG_INFO, "migration %s: post-copy completed "
				  "without the source's ferry: the destination "
				  "holds the whole guest", in->id);
			/* Unless paused: POSTCOPY, which would have resumed
			 * it, may have been lost with the source's ferry. */
			if (!(in->hello.options & WIRE_OPT_PAUSED) &&
			    rx_cont(in, err) < 0)
				return err->code;
			return 1;
		}
		rc = rx_inbox_take(in->m, next < deadline ? next : deadline, -1,
				   &c);
		if (rc == -ECANCELED) {
			rx_mig_want_resume(in->m, false);
			return ferry_error_set(err, -ECANCELED, "the receiver is stopping");
		}
		if (rc == -ETIMEDOUT && ferry_now_ms() < deadline)
			continue;
		if (rc < 0)
			break;
		if (c.hello.conn != WIRE_CONN_CONTROL ||
		    !(c.hello.options & WIRE_OPT_RESUME)) {
			ferry_log(FERRY_LOG_WARN, "rejected connection from %s while "
				  "migration %s waits to resume post-copy", c.peer,
				  in->id);
			net_conn_close(&c.c);
			continue;
		}
		rx_mig_want_resume(in->m, false);
		in->ctrl = c.c;
		snprintf(in->peer, sizeof(in->peer), "%s", c.peer);
		return rx_resume(in, err);
	}
	rx_mig_want_resume(in->m, false);
	return ferry_error_set(err, -ETIMEDOUT, "post-copy recovery: the source "
		"did not reconnect within %d s; the guest's state is split between "
		"the hosts (a receiver on this host with the same state directory "
		"takes it back when ferry recover on the source host resumes it)",
		MIG_RECOVERY_TIMEOUT_MS / 1000);
}

/*
 * A post-copy of this host's journal, whose receiver died or gave up,
 * resumed by the source (the service checked the journal and the TLS
 * identity): the destination QEMU must be that migration's, in post-copy
 * and of the source's RAM size, before it is touched.
 */
static int rx_adopt(struct incoming *in, struct ferry_error *err)
{
	struct mig_info info;
	uint64_t ram;
	int rc;

	in->q = qmp_connect(in->m->target.qmp_path, MIG_QMP_TIMEOUT_MS, err);
	if (!in->q)
		return ferry_error_prefix(err, "destination QEMU at %s: ",
					  in->m->target.qmp_path);
	rc = mig_query(in->q, &info, err);
	if (rc == 0 && !mig_state_postcopy(info.state))
		rc = ferry_error_set(err, -EINVAL, "the destination QEMU's "
				     "migration is '%s', not in post-copy: "
				     "nothing to resume", info.status);
	if (rc == 0)
		rc = mig_ram_size(in->q, &ram, err);
	if (rc == 0 && ram != in->hello.ram_bytes)
		rc = ferry_error_set(err, -EINVAL, "guest RAM differs: source %llu "
				     "bytes, destination %llu bytes",
				     (unsigned long long)in->hello.ram_bytes,
				     (unsigned long long)ram);
	if (rc < 0)
		return rc;
	rx_postcopy_seen(in, &info);
	in->qemu_started = true;
	ferry_log(FERRY_LOG_INFO, "migration %s: taking back its post-copy "
		  "from the journal (destination QEMU '%s')", in->id, info.status);
	rc = rx_resume(in, err);
	if (rc == 0)
		rx_mig_counted(in->m);
	return rc;
}

static void fill_rx_report(struct incoming *in, struct ferry_report *rep,
			   int rc, const struct ferry_error *err)
{
	struct tun_stats st = { 0 };

	memset(rep, 0, sizeof(*rep));
	if (in->tun)
		tun_stats(in->tun, &st);
	rep->end_unix_ms = ferry_unix_ms();
	report_tunnel_cpu(rep, &st);
	snprintf(rep->source, sizeof(rep->source), "%s", in->peer);
	snprintf(rep->destination, sizeof(rep->destination), "%s",
		 in->m->target.qmp_path);
	rep->streams = in->hello.stream_count;
	snprintf(rep->tls, sizeof(rep->tls), "%s", tls_ctx_mode(rx_tls(in->m->svc)));
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

/*
 * One step of a migration: the transition function of enum rx_state.
 * Each state's work runs here and says where to go; every error leads to
 * RX_FAILED with @err set.
 */
static enum rx_state rx_step(struct incoming *in, struct ferry_error *err)
{
	char why[FERRY_ERROR_MSG_MAX];
	int rc;

	switch (in->state) {
	case RX_PREPARE:
		rc = in->m->target.launched ? rx_launch(in, err) : 0;
		if (rc == 0)
			rc = rx_prepare(in, err);
		if (rc < 0)
			return RX_FAILED;
		return in->blk ? RX_DISKS : RX_TUNNEL;
	case RX_DISKS:
		return rx_disks(in, err) < 0 ? RX_FAILED : RX_TUNNEL;
	case RX_TUNNEL:
		rc = rx_accept_data(in, false, err);
		rx_mig_want_conns(in->m, false);
		return rc < 0 ? RX_FAILED : RX_STREAMING;
	case RX_STREAMING:
		rc = rx_stream(in, err);
		if (rc == 1)
			return RX_FINISH;
		/* In post-copy a lost source is waited for. */
		return rc == -EAGAIN ? RX_RECOVER : RX_FAILED;
	case RX_RECOVER:
		snprintf(why, sizeof(why), "%s", err->msg);
		rc = rx_recover(in, why, err);
		return rc < 0 ? RX_FAILED : rc == 1 ? RX_DONE : RX_STREAMING;
	case RX_ADOPT:
		return rx_adopt(in, err) < 0 ? RX_FAILED : RX_STREAMING;
	case RX_FINISH:
		return rx_finish(in, err) < 0 ? RX_FAILED : RX_DONE;
	case RX_DONE:
	case RX_FAILED:
		break;
	}
	FERRY_ASSERT(!"rx_step past a final state");
	return RX_FAILED;
}

/*
 * After RX_FAILED: a QEMU that took the stream of a migration that failed
 * before the destination took over cannot take another. One the service
 * launched goes, with what the launch made; a registered one is
 * remembered as burnt. After post-copy started, the destination holds
 * the only copy of part of the guest: it is never killed.
 */
static void rx_failed_qemu(struct incoming *in, const struct ferry_error *err)
{
	struct mig_info info;

	/* QEMU's own word first: a destination that completed or runs
	 * post-copy holds the guest (or part of it), whatever ferry saw. */
	if (in->launched && in->q && mig_query(in->q, &info, NULL) == 0 &&
	    (info.state == MIG_S_COMPLETED ||
	     mig_state_postcopy(info.state)))
		in->whole_copy = true;
	if (in->whole_copy) {
		ferry_log(FERRY_LOG_WARN, "migration %s: the destination QEMU holds "
			  "the guest; it stays, paused, for ferry recover", in->id);
		return;
	}
	if (in->launched && !in->postcopy && !in->switched) {
		ferry_log(FERRY_LOG_WARN, "migration %s failed: killing the "
			  "destination QEMU it launched (pid %d)", in->id,
			  in->launch.pid);
		launch_undo(&in->launch, in->m->target.qmp_path);
	} else if (in->qemu_started && !in->launched && !in->postcopy) {
		rx_target_burnt(in->m, err->msg);
	}
}

static int run_incoming(struct incoming *in, struct ferry_report *rep,
			struct ferry_error *err)
{
	int rc;

	ferry_log(FERRY_LOG_INFO, "migration %s from %s%s%s: %llu MiB guest, %s%s",
		  in->id, in->peer, in->m->target.vm[0] ? " for VM " : "",
		  in->m->target.vm,
		  (unsigned long long)(in->hello.ram_bytes >> 20),
		  in->hello.options & WIRE_OPT_DIRECT ? "direct" : "through ferry",
		  in->hello.options & WIRE_OPT_PAUSED ? ", destination stays paused" : "");
	if (in->o->state_dir &&
	    (journal_open(&in->journal, in->o->state_dir, in->id, "destination",
			  err) < 0 ||
	     journal_step(in->journal, in->m->adopted ? JOURNAL_POSTCOPY :
			  JOURNAL_STARTED, in->m->adopted ?
			  json_pack("{s:b,s:s}", "adopted", true, "peer", in->peer) :
			  json_pack("{s:s,s:s,s:s,s:s?,s:s,s:s,s:b,s:b,s:b}", "id", in->id,
				    "side", "destination",
				    "qmp", in->m->target.qmp_path,
				    "vm", in->m->target.vm[0] ? in->m->target.vm :
				    NULL, "peer", in->peer,
				    "identity", in->m->ctrl.identity,
				    "paused", in->hello.options & WIRE_OPT_PAUSED,
				    "launched", in->m->target.launched,
				    "block", in->hello.options & WIRE_OPT_BLOCK),
			  err) < 0)) {
		if (err->code == -EBUSY)
			ferry_error_prefix(err, "its journal is held (ferry recover "
					   "at work?): ");
		rx_set_state(in, RX_FAILED);
	}
	while (in->state != RX_DONE && in->state != RX_FAILED)
		rx_set_state(in, rx_step(in, err));
	rx_mig_want_conns(in->m, false);
	rc = in->state == RX_DONE ? 0 : err->code ? err->code : -EIO;
	if (rc < 0) {
		ferry_log(FERRY_LOG_ERROR, "migration %s failed: %s", in->id, err->msg);
		rx_tun_stop(in);
		/* ERROR tells the source the destination did not take over,
		 * and the source then runs its guest again: never once this
		 * side may have resumed it (the source then stays stopped,
		 * for ferry recover). */
		if (rc != -ECANCELED && !in->resume_tried)
			send_error(in, err);
	}
	fill_rx_report(in, rep, rc, err);
	blk_dst_free(in->blk);
	in->blk = NULL;
	rx_tun_free(in);
	if (rc < 0)
		rx_failed_qemu(in, err);
	qmp_close(in->q);
	in->q = NULL;
	/* A destination that holds the guest, or that was told to run it,
	 * is not finished with: ferry recover decides. */
	journal_step(in->journal, rc == 0 ? JOURNAL_COMPLETED :
		     in->whole_copy || in->switched || in->postcopy ||
		     in->m->adopted ? JOURNAL_UNRESOLVED : JOURNAL_FAILED,
		     rc == 0 ? json_pack("{s:o*}", "report", report_json(rep)) :
		     json_pack("{s:s,s:b,s:o*}", "error", err->msg,
			       "destination_started", in->qemu_started,
			       "report", report_json(rep)), NULL);
	journal_close(in->journal);
	in->journal = NULL;
	return rc;
}

void *rx_mig_main(void *arg)
{
	struct rx_mig *m = arg;
	struct incoming in;

	rx_thread_init();
	in = (struct incoming){
		.m = m,
		.o = rx_opts(m->svc),
		.state = m->adopted ? RX_ADOPT : RX_PREPARE,
		.ctrl = m->ctrl.c,
		.hello = m->ctrl.hello,
	};

	in.t0_ms = ferry_now_ms();
	snprintf(in.peer, sizeof(in.peer), "%s", m->ctrl.peer);
	memcpy(in.id, m->id, sizeof(in.id));
	m->rc = run_incoming(&in, &m->report, &m->err);
	net_conn_close(&in.ctrl);
	rx_mig_ended(m);
	return NULL;
}
