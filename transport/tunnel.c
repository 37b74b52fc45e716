/*
 * The tunnel (see tunnel.h).
 *
 * Threads, each with its own small ring and one operation in flight:
 *   sender:   a reader (local -> pool buffers), and one worker per
 *             connection (compress, pace, encrypt, write); with one
 *             connection the reader does it all itself;
 *   receiver: one worker per connection (read, check, decode), and a
 *             writer restoring seq order (local <- buffers); with one
 *             connection the worker writes itself.
 * Hand-offs go through one mutex and condition variable: at 256 KiB a
 * frame, that is a few thousand hand-offs a second at full speed.
 *
 * Frame seq goes on connection seq % n, so each connection's frames are
 * seq = i, i + n, i + 2n, ...: a receiver checks exactly that, and the
 * writer's slot array (n * TUN_BUFS_PER_CONN) cannot collide, since a
 * connection holds at most TUN_BUFS_PER_CONN frames the writer has not
 * taken.
 *
 * This file is the frame pump and its set-up; the rings, the connections
 * to the peer (TLS included) and the local end are tun_io.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "common/util.h"
#include "pace.h"
#include "tun_priv.h"

const char *tun_stage_name(enum tun_stage s)
{
	static const char *const names[TUN_STAGES] = {
		"read", "compress", "encrypt", "send", "receive", "decrypt",
		"decompress", "write",
	};

	return s < TUN_STAGES ? names[s] : "?";
}

static void signal_done(struct tun *t)
{
	uint64_t one = 1;

	if (write(t->done_fd, &one, sizeof(one)) < 0) {
		/* an eventfd write only fails on overflow: already signalled */
	}
}

static void shutdown_all(struct tun *t)
{
	for (uint32_t i = 0; i < t->nall; i++)
		if (t->all_conns[i].c.fd >= 0)
			shutdown(t->all_conns[i].c.fd, SHUT_RDWR);
	if (t->local_fd >= 0)
		shutdown(t->local_fd, SHUT_RDWR);
}

/* See tun_priv.h. */
int tun_fail(struct tun *t, int code, const char *fmt, ...)
{
	va_list ap;
	bool first;

	pthread_mutex_lock(&t->mu);
	first = !t->failed && !t->finished;
	if (first) {
		t->failed = true;
		t->error.code = code;
		va_start(ap, fmt);
		vsnprintf(t->error.msg, sizeof(t->error.msg), fmt, ap);
		va_end(ap);
	}
	t->stopping = true;
	pthread_cond_broadcast(&t->cv);
	pthread_mutex_unlock(&t->mu);
	if (first) {
		struct tun *up = __atomic_load_n(&t->parent, __ATOMIC_ACQUIRE);
		struct tun *down = __atomic_load_n(&t->companion, __ATOMIC_ACQUIRE);

		ferry_log(2, "tunnel: %s", t->error.msg);
		shutdown_all(t);
		signal_done(t);
		/* One ends the other; the second call finds it failed. */
		if (up)
			tun_fail(up, code, "post-copy preempt channel: %s",
				 t->error.msg);
		if (down)
			tun_fail(down, -ECANCELED, "the main stream ended");
	}
	return code;
}

/* With t->mu held: a direction finished; the tunnel when both did. */
static void dir_done_locked(struct tun_dir *d)
{
	struct tun *t = d->t;

	d->done = true;
	if (t->fwd.done && t->ret.done && !t->failed && !t->finished) {
		t->finished = true;
		signal_done(t);
	}
	pthread_cond_broadcast(&t->cv);
}

/* ---- pacing (pace.c) ---- */

/* The pacer's tick is what lets a waiting sender notice a cancel in time. */
_Static_assert(PACE_TICK_MS <= TUN_TICK_MS,
	       "a sender waiting on its pacer looks at the stop flag every tick");
_Static_assert(PACE_BURST_MIN_BYTES >= TUN_FRAME_BYTES,
	       "a whole frame may go after a quiet moment");

static bool pace_stop(void *arg)
{
	return tun_stopping(arg);
}

/*
 * Take a frame's @bytes from the tunnel's pacer (the migration's, shared
 * with its other tunnels), waiting while it is in debt. Waiting on our
 * own cap is not a stall: the idle clock starts again after it.
 */
static int pace_frame(struct tun *t, uint64_t bytes)
{
	int rc;

	if (!t->pacer)
		return 0;
	if (t->urgent) {
		pacer_charge(t->pacer, bytes);
		return 0;
	}
	rc = pacer_take(t->pacer, bytes, pace_stop, t);
	if (rc == 0)
		tun_progress(t);
	return rc;
}

/* ---- sending ---- */

/* Compress @b with @codec into c->out; 0 when it did not shrink. */
static size_t try_codec(struct tun_conn *c, struct tun_buf *b,
			enum wire_codec codec)
{
	uint64_t t0 = tun_cpu_ns();
	size_t n = codec_compress(c->codec, codec, tun_payload(b), b->len,
				  tun_payload(c->out), c->out->cap);

	tun_charge(c->t, TUN_STAGE_COMPRESS, t0);
	return n;
}

/* auto's choice for the next frame of @c, said in the log when it
 * changes, with the scores it chose by. */
static enum wire_codec auto_pick(struct tun_conn *c)
{
	const struct codec_auto *a = &c->autop;
	enum wire_codec want = codec_auto_pick(&c->autop, ferry_now_ns());

	if ((int)want != c->last_pick) {
		/* A new codec tries the next frame itself. */
		c->skip = c->backoff = 0;
		ferry_log(FERRY_LOG_DEBUG, "auto: %s from epoch %llu (MB/s busy: "
			  "raw %.0f, lz4 %.0f, zstd %.0f; link: probe %.0f, "
			  "seen %.0f)", codec_wire_name(want),
			  (unsigned long long)a->epochs,
			  a->score[WIRE_CODEC_RAW] / 1e6,
			  a->score[WIRE_CODEC_LZ4] / 1e6,
			  a->score[WIRE_CODEC_ZSTD] / 1e6, a->link / 1e6,
			  a->link_seen / 1e6);
		c->last_pick = (int)want;
	}
	return want;
}

static enum wire_codec fixed_codec(enum ferry_codec c)
{
	switch (c) {
	case FERRY_CODEC_LZ4: return WIRE_CODEC_LZ4;
	case FERRY_CODEC_ZSTD: return WIRE_CODEC_ZSTD;
	default: return WIRE_CODEC_RAW;
	}
}

/*
 * A frame of auto's went, its write started at @wall0 (ferry_now_ns())
 * and @cpu0 (tun_cpu_ns()): what it delivered; how long the write waited,
 * its wall time less this thread's CPU time in it (copying, encrypting),
 * for the link meter's backlog; and the link as the connection measures
 * it now (tun_conn_link_rate()). Only auto's frames pay for the clocks.
 */
static void auto_sent(struct tun_conn *c, uint64_t raw_bytes,
		      uint64_t wire_bytes, uint64_t wall0, uint64_t cpu0)
{
	uint64_t now = ferry_now_ns(), cpu = tun_cpu_ns() - cpu0;

	if (now - wall0 > cpu)
		c->link_wait_ns += now - wall0 - cpu;
	codec_auto_note_sent(&c->autop, raw_bytes, wire_bytes, now);
	codec_auto_note_link(&c->autop, tun_conn_link_rate(c, now));
}

/* The codec for @c's next frame, chosen before it is read: auto's pick,
 * or the fixed one. */
static enum wire_codec next_frame_codec(struct tun_conn *c)
{
	return c->d->codec == FERRY_CODEC_AUTO ? auto_pick(c) :
						 fixed_codec(c->d->codec);
}

/*
 * The primer: makes the zstd buffers of every connection of @d (see
 * codec_ctx_prime()) while the first frames go, so that no frame and no
 * epoch of auto's pays for them, then lets zstd frames through.
 */
static void *primer_main(void *arg)
{
	struct tun_dir *d = arg;
	struct tun *t = d->t;

	for (uint32_t i = 0; i < d->nconns && !tun_stopping(t) &&
			     !__atomic_load_n(&t->closing, __ATOMIC_RELAXED); i++)
		codec_ctx_prime(d->conns[i].codec, d->sending, !d->sending);
	pthread_mutex_lock(&t->mu);
	__atomic_store_n(&d->zstd_ready, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&t->cv);
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

/* Wait for the primer of @d: 0, or -ECANCELED when the tunnel stops. */
static int zstd_wait(struct tun_dir *d)
{
	struct tun *t = d->t;
	bool ready;

	if (__atomic_load_n(&d->zstd_ready, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&t->mu);
	while (!d->zstd_ready && !t->stopping)
		pthread_cond_wait(&t->cv, &t->mu);
	ready = d->zstd_ready;
	pthread_mutex_unlock(&t->mu);
	return ready ? 0 : -ECANCELED;
}

/* Frame @b as @want (raw where it does not shrink) and send it. */
static int send_frame(struct tun_conn *c, struct tun_buf *b, uint16_t type,
		      enum wire_codec want)
{
	struct wire_frame_hdr h = { .type = type, .seq = b->seq };
	enum wire_codec codec = WIRE_CODEC_RAW;
	bool is_auto = c->d->codec == FERRY_CODEC_AUTO && type != WIRE_FRAME_END;
	uint8_t *p = tun_payload(b);
	uint32_t len = b->len;
	uint64_t w0 = 0, cpu0 = 0;
	int rc;

	if (type != WIRE_FRAME_END && want != WIRE_CODEC_RAW && c->skip) {
		c->skip--;
		want = WIRE_CODEC_RAW;
	}
	if (type != WIRE_FRAME_END && want != WIRE_CODEC_RAW) {
		size_t n;

		if (want == WIRE_CODEC_ZSTD && zstd_wait(c->d))
			return -ECANCELED;
		n = try_codec(c, b, want);
		if (!n || n > b->len - b->len / TUN_SHRINK_MIN_DIV) {
			c->backoff = !c->backoff ? 1 :
				     c->backoff * 2 < TUN_SKIP_FRAMES ?
				     c->backoff * 2 : TUN_SKIP_FRAMES;
			c->skip = c->backoff;
		} else {
			c->backoff = 0;
		}

		/* A zstd chunk goes whatever its size: it is in the stream. */
		if (want == WIRE_CODEC_ZSTD && (!n || n > c->d->frame_max)) {
			tun_fail(c->t, -EIO, "%s stream %u: zstd failed on frame "
				 "%llu", c->d->name, c->index,
				 (unsigned long long)b->seq);
			return -EIO;
		}
		if (n) {
			codec = want;
			p = tun_payload(c->out);
			len = (uint32_t)n;
		}
	}
	h.len = len;
	h.raw_len = b->len;
	h.flags = (uint16_t)codec;
	wire_frame_encode(&h, p - WIRE_FRAME_HDR_BYTES);
	if (type != WIRE_FRAME_END) {
		rc = pace_frame(c->t, len + WIRE_FRAME_HDR_BYTES);
		if (rc)
			return rc;
	}
	if (is_auto) {
		cpu0 = tun_cpu_ns();
		w0 = ferry_now_ns();
	}
	rc = tun_conn_write(c, p - WIRE_FRAME_HDR_BYTES, len + WIRE_FRAME_HDR_BYTES);
	if (rc) {
		tun_conn_failed(c, rc, "sending");
		return rc;
	}
	tun_add(&c->t->st.frames_out, 1);
	if (type != WIRE_FRAME_END)
		tun_add(&c->t->st.frames_codec[codec], 1);
	if (is_auto)
		auto_sent(c, b->len, len, w0, cpu0);
	return 0;
}

static int send_end(struct tun_conn *c, uint64_t end_seq)
{
	struct wire_frame_hdr h = { .type = WIRE_FRAME_END, .seq = end_seq };
	uint8_t raw[WIRE_FRAME_HDR_BYTES];
	int rc;

	wire_frame_encode(&h, raw);
	rc = tun_conn_write(c, raw, sizeof(raw));
	if (rc)
		tun_conn_failed(c, rc, "sending END");
	else
		tun_add(&c->t->st.frames_out, 1);
	return rc;
}

static void *send_worker(void *arg)
{
	struct tun_conn *c = arg;
	struct tun *t = c->t;
	struct tun_dir *d = c->d;
	struct tun_io io;
	int rc;

	rc = tun_io_init(&io, t);
	if (rc) {
		tun_fail(t, rc, "io_uring setup: %s", strerror(-rc));
		return NULL;
	}
	c->io = &io;
	for (;;) {
		struct tun_buf *b;

		pthread_mutex_lock(&t->mu);
		while (!c->q_head && !c->q_end && !t->stopping)
			pthread_cond_wait(&t->cv, &t->mu);
		if (t->stopping) {
			pthread_mutex_unlock(&t->mu);
			break;
		}
		b = c->q_head;
		if (!b) {	/* end of stream, everything sent */
			uint64_t end = d->next_seq;

			pthread_mutex_unlock(&t->mu);
			if (send_end(c, end) == 0) {
				pthread_mutex_lock(&t->mu);
				if (++d->conns_done == d->nconns)
					dir_done_locked(d);
				pthread_mutex_unlock(&t->mu);
			}
			break;
		}
		c->q_head = b->next;
		if (!c->q_head)
			c->q_tail = NULL;
		pthread_mutex_unlock(&t->mu);

		rc = send_frame(c, b, d->frame_type, next_frame_codec(c));

		pthread_mutex_lock(&t->mu);
		b->next = d->free;
		d->free = b;
		pthread_cond_broadcast(&t->cv);
		pthread_mutex_unlock(&t->mu);
		if (rc)
			break;
	}
	c->io = NULL;
	tun_io_fini(&io);
	return NULL;
}

/*
 * One raw frame from the local QEMU's socket to @c through d->pipe
 * (d->splice): QEMU's bytes never enter ferry's memory. 1: a frame went;
 * 0: the local QEMU ended its stream; -errno: the tunnel failed.
 */
static int splice_frame(struct tun_conn *c, struct tun_io *io)
{
	struct tun_dir *d = c->d;
	struct tun *t = c->t;
	struct wire_frame_hdr h = { .type = d->frame_type,
				    .flags = WIRE_CODEC_RAW };
	uint8_t hdr[WIRE_FRAME_HDR_BYTES];
	uint32_t want = d->frame_build < d->pipe_cap ? d->frame_build :
						       d->pipe_cap;
	uint64_t t0 = tun_cpu_ns(), w0 = 0;
	ssize_t n = tun_io_splice_in(io, t->local_fd, d->pipe[1], want);
	int rc;

	tun_charge(t, TUN_STAGE_READ, t0);
	if (n < 0) {
		tun_local_failed(t, (int)n, "reading from");
		return (int)n;
	}
	if (n == 0)
		return 0;
	tun_add(&t->st.local_in_bytes, (uint64_t)n);
	h.seq = d->next_seq++;
	h.len = h.raw_len = (uint32_t)n;
	wire_frame_encode(&h, hdr);
	rc = pace_frame(t, (uint64_t)n + WIRE_FRAME_HDR_BYTES);
	if (rc)
		return rc;
	t0 = tun_cpu_ns();
	if (d->codec == FERRY_CODEC_AUTO)
		w0 = ferry_now_ns();
	rc = tun_io_full_more(io, true, c->c.fd, hdr, sizeof(hdr), true);
	if (rc == 0)
		rc = tun_io_splice_out(io, d->pipe[0], c->c.fd, (size_t)n);
	tun_charge(t, TUN_STAGE_SEND, t0);
	if (rc) {
		tun_conn_failed(c, rc, "sending");
		return rc;
	}
	tun_add(&t->st.wire_out_bytes, (uint64_t)n + WIRE_FRAME_HDR_BYTES);
	tun_add(&t->st.spliced_bytes, (uint64_t)n);
	tun_add(&t->st.frames_out, 1);
	tun_add(&t->st.frames_codec[WIRE_CODEC_RAW], 1);
	if (d->codec == FERRY_CODEC_AUTO)
		auto_sent(c, (uint64_t)n, (uint64_t)n, w0, t0);
	return 1;
}

/*
 * One connection: the reader frames, compresses and sends itself, with
 * its one buffer; raw frames go by splice where they can (d->splice).
 */
static void send_inline(struct tun_dir *d, struct tun_io *io)
{
	struct tun *t = d->t;
	struct tun_conn *c = &d->conns[0];
	struct tun_buf *b = d->free;	/* the one buffer, this thread's */

	for (;;) {
		enum wire_codec want;
		ssize_t n;
		int rc;

		if (tun_stopping(t))
			return;
		want = next_frame_codec(c);
		if (want == WIRE_CODEC_RAW && d->splice) {
			rc = splice_frame(c, io);
			if (rc > 0)
				continue;
			if (rc < 0)
				return;
			n = 0;		/* the end */
		} else {
			n = tun_local_read(io, tun_payload(b), d->frame_build);
			if (n < 0) {
				tun_local_failed(t, (int)n, "reading from");
				return;
			}
		}
		if (n == 0) {
			/* The local QEMU closed its side: END. */
			if (send_end(c, d->next_seq) == 0) {
				pthread_mutex_lock(&t->mu);
				dir_done_locked(d);
				pthread_mutex_unlock(&t->mu);
			}
			return;
		}
		b->len = (uint32_t)n;
		b->seq = d->next_seq++;
		if (send_frame(c, b, d->frame_type, want))
			return;
	}
}

static void *reader_main(void *arg)
{
	struct tun_dir *d = arg;
	struct tun *t = d->t;
	struct tun_io io;
	int rc;

	rc = tun_io_init(&io, t);
	if (rc) {
		tun_fail(t, rc, "io_uring setup: %s", strerror(-rc));
		return NULL;
	}
	if (d->inline_io) {
		d->conns[0].io = &io;
		send_inline(d, &io);
		d->conns[0].io = NULL;
		tun_io_fini(&io);
		return NULL;
	}
	for (;;) {
		struct tun_buf *b;
		struct tun_conn *c;
		ssize_t n;

		pthread_mutex_lock(&t->mu);
		while (!d->free && !t->stopping)
			pthread_cond_wait(&t->cv, &t->mu);
		b = t->stopping ? NULL : d->free;
		if (b)
			d->free = b->next;
		pthread_mutex_unlock(&t->mu);
		if (!b)
			break;

		n = tun_local_read(&io, tun_payload(b), d->frame_build);
		if (n <= 0) {
			pthread_mutex_lock(&t->mu);
			b->next = d->free;
			d->free = b;
			pthread_mutex_unlock(&t->mu);
			if (n < 0) {
				tun_local_failed(t, (int)n, "reading from");
				break;
			}
			/* The local QEMU closed its side: END on every stream. */
			pthread_mutex_lock(&t->mu);
			for (uint32_t i = 0; i < d->nconns; i++)
				d->conns[i].q_end = true;
			pthread_cond_broadcast(&t->cv);
			pthread_mutex_unlock(&t->mu);
			break;
		}
		b->len = (uint32_t)n;
		b->next = NULL;
		pthread_mutex_lock(&t->mu);
		b->seq = d->next_seq++;
		c = &d->conns[b->seq % d->nconns];
		if (c->q_tail)
			c->q_tail->next = b;
		else
			c->q_head = b;
		c->q_tail = b;
		pthread_cond_broadcast(&t->cv);
		pthread_mutex_unlock(&t->mu);
	}
	tun_io_fini(&io);
	return NULL;
}

/* ---- receiving ---- */

static int recv_end(struct tun_conn *c, uint64_t end)
{
	struct tun_dir *d = c->d;
	struct tun *t = c->t;

	/* The stream must have carried every frame before @end. */
	if (c->next_seq < end || c->next_seq >= end + d->nconns)
		return tun_fail(t, -EPROTO,
			"%s stream %u: END at %llu, but the stream is at frame %llu: "
			"frames are missing", d->name, c->index,
			(unsigned long long)end, (unsigned long long)c->next_seq);
	pthread_mutex_lock(&t->mu);
	if (d->end_known && d->end_seq != end) {
		pthread_mutex_unlock(&t->mu);
		return tun_fail(t, -EPROTO,
			"%s streams disagree on the end: %llu and %llu", d->name,
			(unsigned long long)d->end_seq, (unsigned long long)end);
	}
	d->end_known = true;
	d->end_seq = end;
	d->conns_ended++;
	pthread_cond_broadcast(&t->cv);
	pthread_mutex_unlock(&t->mu);
	return 0;
}

/*
 * A raw frame's @len bytes from @c to the local QEMU's socket through
 * d->pipe (d->splice), as much at a time as the pipe takes: a pipe's
 * slots hold one piece of an skb each, so a whole frame need not fit, and
 * waiting for one would stall. QEMU may so get part of a frame before a
 * failure ends its stream: frames are arbitrary cuts of QEMU's stream,
 * and a stream cut inside one is cut like any other. 0, or -errno: the
 * tunnel failed.
 */
static int splice_to_local(struct tun_conn *c, struct tun_io *io, uint32_t len)
{
	struct tun_dir *d = c->d;
	struct tun *t = c->t;

	while (len) {
		uint64_t t0 = tun_cpu_ns();
		ssize_t n = tun_io_splice_in(io, c->c.fd, d->pipe[1],
					     len < d->pipe_cap ? len : d->pipe_cap);
		int rc;

		tun_charge(t, TUN_STAGE_RECEIVE, t0);
		if (n <= 0) {
			rc = n ? (int)n : -ECONNRESET;
			tun_conn_failed(c, rc, "receiving a frame");
			return rc;
		}
		tun_add(&t->st.wire_in_bytes, (uint64_t)n);
		t0 = tun_cpu_ns();
		rc = tun_io_splice_out(io, d->pipe[0], t->local_fd, (size_t)n);
		tun_charge(t, TUN_STAGE_WRITE, t0);
		if (rc) {
			tun_local_failed(t, rc, "writing to");
			return rc;
		}
		tun_add(&t->st.local_out_bytes, (uint64_t)n);
		tun_add(&t->st.spliced_bytes, (uint64_t)n);
		len -= (uint32_t)n;
	}
	return 0;
}

static void *recv_worker(void *arg)
{
	struct tun_conn *c = arg;
	struct tun *t = c->t;
	struct tun_dir *d = c->d;
	struct tun_io io;
	int rc;

	rc = tun_io_init(&io, t);
	if (rc) {
		tun_fail(t, rc, "io_uring setup: %s", strerror(-rc));
		return NULL;
	}
	c->io = &io;
	for (;;) {
		uint8_t raw[WIRE_FRAME_HDR_BYTES];
		struct wire_frame_hdr h;
		struct ferry_error e = { 0 };
		struct tun_buf *b;

		rc = tun_conn_read(c, raw, sizeof(raw));
		if (rc) {
			tun_conn_failed(c, rc, "waiting for a frame");
			break;
		}
		if (wire_frame_decode(raw, d->frame_max, &h, &e)) {
			tun_fail(t, e.code, "%s stream %u: %s", d->name, c->index,
				 e.msg);
			break;
		}
		if (h.type == WIRE_FRAME_END) {
			if (recv_end(c, h.seq))
				break;
			if (d->inline_io) {
				tun_local_write_end(t);
				pthread_mutex_lock(&t->mu);
				dir_done_locked(d);
				pthread_mutex_unlock(&t->mu);
			}
			break;
		}
		if (h.type != d->frame_type) {
			tun_fail(t, -EPROTO, "%s stream %u: frame %llu has type %u, "
				 "which does not belong in this direction", d->name,
				 c->index, (unsigned long long)h.seq, h.type);
			break;
		}
		if (h.seq != c->next_seq) {
			tun_fail(t, -EPROTO, "%s stream %u: frame out of sequence: "
				 "got %llu, expected %llu", d->name, c->index,
				 (unsigned long long)h.seq,
				 (unsigned long long)c->next_seq);
			break;
		}
		c->next_seq += d->nconns;
		if (d->raw_only && wire_frame_codec(&h) != WIRE_CODEC_RAW) {
			tun_fail(t, -EPROTO, "%s stream %u: frame %llu is "
				 "compressed; this direction never is", d->name,
				 c->index, (unsigned long long)h.seq);
			break;
		}
		if (wire_frame_codec(&h) == WIRE_CODEC_ZSTD && !d->zstd) {
			tun_fail(t, -EPROTO, "%s stream %u: frame %llu is zstd, "
				 "which the source's hello did not announce",
				 d->name, c->index, (unsigned long long)h.seq);
			break;
		}
		if (wire_frame_codec(&h) == WIRE_CODEC_ZSTD && zstd_wait(d))
			break;

		if (d->splice && wire_frame_codec(&h) == WIRE_CODEC_RAW) {
			if (splice_to_local(c, &io, h.len))
				break;
			tun_add(&t->st.frames_in, 1);
			continue;
		}

		pthread_mutex_lock(&t->mu);
		while (!c->free && !t->stopping)
			pthread_cond_wait(&t->cv, &t->mu);
		b = t->stopping ? NULL : c->free;
		if (b)
			c->free = b->next;
		pthread_mutex_unlock(&t->mu);
		if (!b)
			break;

		if (wire_frame_codec(&h) == WIRE_CODEC_RAW) {
			rc = tun_conn_read(c, tun_payload(b), h.len);
		} else {
			rc = tun_conn_read(c, tun_payload(c->scratch), h.len);
			if (rc == 0) {
				uint64_t t0 = tun_cpu_ns();

				if (codec_decompress(c->codec, wire_frame_codec(&h),
						     tun_payload(c->scratch), h.len,
						     tun_payload(b), h.raw_len, h.seq,
						     &e)) {
					tun_fail(t, e.code, "%s stream %u: %s",
						 d->name, c->index, e.msg);
					rc = e.code;
				}
				tun_charge(t, TUN_STAGE_DECOMPRESS, t0);
			}
		}
		if (rc) {
			tun_conn_failed(c, rc, "receiving a frame");
			break;
		}
		tun_add(&t->st.frames_in, 1);
		b->len = h.raw_len;
		b->seq = h.seq;
		b->next = NULL;
		if (d->inline_io) {
			rc = tun_local_write(&io, tun_payload(b), b->len);
			pthread_mutex_lock(&t->mu);
			b->next = c->free;
			c->free = b;
			pthread_mutex_unlock(&t->mu);
			if (rc) {
				tun_local_failed(t, rc, "writing to");
				break;
			}
			continue;
		}
		pthread_mutex_lock(&t->mu);
		d->slots[b->seq % d->nslots] = b;
		pthread_cond_broadcast(&t->cv);
		pthread_mutex_unlock(&t->mu);
	}
	c->io = NULL;
	tun_io_fini(&io);
	return NULL;
}

static void *writer_main(void *arg)
{
	struct tun_dir *d = arg;
	struct tun *t = d->t;
	struct tun_io io;
	int rc;

	rc = tun_io_init(&io, t);
	if (rc) {
		tun_fail(t, rc, "io_uring setup: %s", strerror(-rc));
		return NULL;
	}
	for (;;) {
		struct tun_buf *b = NULL;
		struct tun_conn *owner;

		pthread_mutex_lock(&t->mu);
		while (!t->stopping) {
			b = d->slots[d->write_seq % d->nslots];
			if (b && b->seq == d->write_seq)
				break;
			b = NULL;
			if (d->end_known && d->conns_ended == d->nconns &&
			    d->write_seq == d->end_seq)
				break;
			pthread_cond_wait(&t->cv, &t->mu);
		}
		if (b)
			d->slots[d->write_seq % d->nslots] = NULL;
		pthread_mutex_unlock(&t->mu);
		if (!b) {
			if (!tun_stopping(t)) {
				tun_local_write_end(t);
				pthread_mutex_lock(&t->mu);
				dir_done_locked(d);
				pthread_mutex_unlock(&t->mu);
			}
			break;
		}
		rc = tun_local_write(&io, tun_payload(b), b->len);
		owner = b->owner;
		pthread_mutex_lock(&t->mu);
		b->next = owner->free;
		owner->free = b;
		d->write_seq++;
		pthread_cond_broadcast(&t->cv);
		pthread_mutex_unlock(&t->mu);
		if (rc) {
			tun_local_failed(t, rc, "writing to");
			break;
		}
	}
	tun_io_fini(&io);
	return NULL;
}

/* ---- set-up ---- */

/*
 * Everything carved from the arena (buffers, TLS staging) is a multiple
 * of TUN_BUF_ALIGN, so every buffer starts on a page of the page-aligned
 * arena and its payload, TUN_HDR_ROOM further, on TUN_PAYLOAD_ALIGN.
 */
#define TUN_BUF_ALIGN 4096
_Static_assert(TUN_BUF_ALIGN % TUN_PAYLOAD_ALIGN == 0,
	       "a buffer's start keeps its payload aligned");
_Static_assert(TUN_STAGE_BYTES % TUN_BUF_ALIGN == 0,
	       "TLS staging keeps the buffers after it aligned");

static size_t buf_bytes(uint32_t cap)
{
	return ((size_t)TUN_HDR_ROOM + cap + TUN_BUF_ALIGN - 1) &
	       ~(size_t)(TUN_BUF_ALIGN - 1);
}

static struct tun_buf *carve(struct tun *t, uint32_t cap)
{
	struct tun_buf *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	FERRY_ASSERT(t->arena_used + buf_bytes(cap) <= t->arena_bytes);
	b->mem = t->arena + t->arena_used;
	b->cap = cap;
	b->all_next = t->all_bufs;
	t->all_bufs = b;
	t->arena_used += buf_bytes(cap);
	return b;
}

/* Arena bytes a direction needs. */
static size_t dir_arena(const struct tun_dir *d)
{
	size_t n = 0, frame = buf_bytes(d->frame_max);

	if (d->nconns == 0)
		return 0;	/* a one-way tunnel's return */
	for (uint32_t i = 0; i < d->nconns; i++) {
		if (d->conns[i].c.ssl)
			n += TUN_STAGE_BYTES;
		if (d->sending) {
			if (d->codec != FERRY_CODEC_NONE)
				n += 2 * buf_bytes((uint32_t)codec_bound(d->frame_max));
		} else {
			n += frame;	/* scratch */
			n += (d->inline_io ? 1 : TUN_BUFS_PER_CONN) * frame;
		}
	}
	if (d->sending)
		n += (d->inline_io ? 1 : d->nconns * TUN_BUFS_PER_CONN + 1) * frame;
	return n;
}

static int dir_setup(struct tun *t, struct tun_dir *d, struct ferry_error *err)
{
	if (d->nconns == 0)
		return 0;	/* a one-way tunnel's return */
	for (uint32_t i = 0; i < d->nconns; i++) {
		struct tun_conn *c = &d->conns[i];

		c->t = t;
		c->d = d;
		c->index = i;
		c->next_seq = i;
		if (c->c.ssl) {
			int rc;

			c->stage = t->arena + t->arena_used;
			t->arena_used += TUN_STAGE_BYTES;
			rc = tun_conn_tls_attach(c, err);
			if (rc)
				return rc;
		}
		/* The ring does the waiting; sockets block. */
		fcntl(c->c.fd, F_SETFL, fcntl(c->c.fd, F_GETFL) & ~O_NONBLOCK);
		if (d->sending && d->codec != FERRY_CODEC_NONE) {
			uint32_t cap = (uint32_t)codec_bound(d->frame_max);

			if (!(c->out = carve(t, cap)))
				return ferry_error_set(err, -ENOMEM, "out of memory");
			codec_auto_init(&c->autop);
			codec_auto_set_link(&c->autop, (double)t->link_bytes_per_s /
						       d->nconns);
		}
		if (!d->sending) {
			uint32_t nb = d->inline_io ? 1 : TUN_BUFS_PER_CONN;

			if (!(c->scratch = carve(t, d->frame_max)))
				return ferry_error_set(err, -ENOMEM, "out of memory");
			for (uint32_t k = 0; k < nb; k++) {
				struct tun_buf *b = carve(t, d->frame_max);

				if (!b)
					return ferry_error_set(err, -ENOMEM,
							       "out of memory");
				b->owner = c;
				b->next = c->free;
				c->free = b;
			}
		}
		if (d->sending ? d->codec != FERRY_CODEC_NONE : !d->raw_only) {
			int rc = codec_ctx_new(&c->codec, d->codec_level, err);

			if (rc)
				return rc;
			codec_ctx_set_window(c->codec, codec_window_log(d->nconns));
		}
	}
	if (d->sending) {
		uint32_t nb = d->inline_io ? 1 : d->nconns * TUN_BUFS_PER_CONN + 1;

		for (uint32_t k = 0; k < nb; k++) {
			struct tun_buf *b = carve(t, d->frame_max);

			if (!b)
				return ferry_error_set(err, -ENOMEM, "out of memory");
			b->next = d->free;
			d->free = b;
		}
	} else if (!d->inline_io) {
		d->nslots = d->nconns * TUN_BUFS_PER_CONN;
		d->slots = calloc(d->nslots, sizeof(*d->slots));
		if (!d->slots)
			return ferry_error_set(err, -ENOMEM, "out of memory");
	}
	return 0;
}

/*
 * Raw frames of the forward direction with one plaintext connection and
 * a local QEMU socket can skip ferry's memory: splice moves them from
 * one socket through a pipe to the other, referencing the kernel's pages
 * where it can. It is off unless FERRY_TUNNEL_SPLICE is set: on the
 * machines ferry is measured on (loopback and veth, a paravirtualized
 * guest) a splice saved no time against the copy (more system calls per
 * frame, smaller frames from a pipe's page-sized slots), so the copy stays
 * the default where the kernel's copy is cheap. Anything that does not
 * allow it (no pipe, a pipe that cannot grow) copies, as every other
 * frame does.
 */
static void dir_splice_setup(struct tun *t, struct tun_dir *d)
{
	int cap;

	d->pipe[0] = d->pipe[1] = -1;
	if (d != &t->fwd || !d->inline_io || t->local_fd < 0 ||
	    d->conns[0].c.ssl || !getenv("FERRY_TUNNEL_SPLICE"))
		return;
	if (d->sending && d->codec != FERRY_CODEC_NONE &&
	    d->codec != FERRY_CODEC_AUTO)
		return;		/* every frame is compressed, or skipped */
	if (pipe2(d->pipe, O_CLOEXEC) < 0) {
		d->pipe[0] = d->pipe[1] = -1;
		return;
	}
	fcntl(d->pipe[1], F_SETPIPE_SZ, (int)d->frame_max);
	cap = fcntl(d->pipe[1], F_GETPIPE_SZ);
	if (cap < (int)TUN_FRAME_MIN_BYTES) {
		close(d->pipe[0]);
		close(d->pipe[1]);
		d->pipe[0] = d->pipe[1] = -1;
		return;
	}
	d->pipe_cap = (uint32_t)cap;
	d->splice = true;
	/* A splice into a socket waits at most a tick for room, so that
	 * its thread still sees a stop or a stalled peer in time (the ring
	 * ops do not use the timeout). */
	setsockopt(d->sending ? d->conns[0].c.fd : t->local_fd, SOL_SOCKET,
		   SO_SNDTIMEO, &(struct timeval){ .tv_usec = TUN_TICK_MS * 1000 },
		   sizeof(struct timeval));
}

static int spawn(struct tun *t, void *(*fn)(void *), void *arg,
		 struct ferry_error *err)
{
	int rc;

	sigset_t pipe, old;

	FERRY_ASSERT(t->nthreads < TUN_MAX_THREADS);
	/*
	 * A write to a socket the peer closed raises SIGPIPE in the writing
	 * task: our threads and their io_uring workers, which inherit the
	 * mask. Blocked there, it cannot kill the program that embeds us;
	 * the write fails with EPIPE instead.
	 */
	sigemptyset(&pipe);
	sigaddset(&pipe, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe, &old);
	rc = pthread_create(&t->threads[t->nthreads], NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return ferry_error_set(err, -rc, "cannot start a tunnel thread: %s",
				       strerror(rc));
	t->nthreads++;
	return 0;
}

static int dir_start(struct tun *t, struct tun_dir *d, struct ferry_error *err)
{
	int rc = 0;

	if (d->nconns == 0)
		return 0;	/* a one-way tunnel's return */
	if (d->sending) {
		rc = spawn(t, reader_main, d, err);
		for (uint32_t i = 0; !rc && !d->inline_io && i < d->nconns; i++)
			rc = spawn(t, send_worker, &d->conns[i], err);
	} else {
		for (uint32_t i = 0; !rc && i < d->nconns; i++)
			rc = spawn(t, recv_worker, &d->conns[i], err);
		if (!rc && !d->inline_io)
			rc = spawn(t, writer_main, d, err);
	}
	return rc;
}

static void close_opts(const struct tun_opts *o)
{
	struct net_conn ret = o->ret;

	for (uint32_t i = 0; i < o->nstreams; i++)
		net_conn_close(&o->streams[i]);
	net_conn_close(&ret);
	if (o->local_fd >= 0)
		close(o->local_fd);
}

/*
 * What the sender of @d reads into one frame: @hold bytes over all its
 * buffers, so that ferry itself queues about @hold (0: whole frames).
 */
static uint32_t frame_build(const struct tun_dir *d, uint32_t hold)
{
	uint32_t nbufs = d->inline_io ? 1 : d->nconns * TUN_BUFS_PER_CONN + 1;
	uint32_t n = hold / nbufs;
	/* A zstd chunk is sent whatever its size: it must fit a frame. */
	uint32_t max = d->codec == FERRY_CODEC_ZSTD || d->codec == FERRY_CODEC_AUTO ?
		       codec_zstd_in_max(d->frame_max) : d->frame_max;

	if (!hold)
		return max;
	if (n < TUN_FRAME_MIN_BYTES)
		n = TUN_FRAME_MIN_BYTES;
	return n < max ? n : max;
}

int tun_start(struct tun **out, const struct tun_opts *o,
	      struct ferry_error *err)
{
	struct tun *t;
	bool src = o->role == TUN_SOURCE;
	uint32_t frame = o->frame_max ? o->frame_max : TUN_FRAME_BYTES;
	size_t arena;
	int rc;

	*out = NULL;
	if (o->nstreams < 1 || o->nstreams > WIRE_STREAMS_MAX ||
	    frame < WIRE_FRAME_MAX_MIN || frame > WIRE_FRAME_PAYLOAD_MAX ||
	    (o->local_fd < 0) == !o->local) {
		close_opts(o);
		return ferry_error_set(err, -EINVAL, "tunnel: bad options");
	}
	t = calloc(1, sizeof(*t));
	if (!t || tun_tls_init()) {
		free(t);
		close_opts(o);
		return ferry_error_set(err, -ENOMEM, "out of memory");
	}
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	t->local_fd = o->local_fd;
	if (o->local) {
		t->local = *o->local;
		t->has_local = true;
	}
	t->idle_ms = o->idle_timeout_ms ? o->idle_timeout_ms : TUN_IDLE_TIMEOUT_MS;
	t->done_fd = -1;
	t->nall = o->nstreams + 1;
	t->all_conns = calloc(t->nall, sizeof(*t->all_conns));
	if (!t->all_conns) {
		close_opts(o);
		free(t);
		return ferry_error_set(err, -ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; i < o->nstreams; i++)
		t->all_conns[i].c = o->streams[i];
	t->all_conns[o->nstreams].c = o->ret;
	/* Only the forward direction is paced: the source sends it. */
	t->pacer = src ? pacer_ref(o->pacer) : NULL;
	t->urgent = o->urgent;
	t->link_bytes_per_s = src ? o->link_bytes_per_s : 0;

	t->fwd = (struct tun_dir){
		.t = t, .name = "data", .sending = src,
		.frame_type = WIRE_FRAME_DATA, .conns = t->all_conns,
		.nconns = o->nstreams, .frame_max = frame,
		.codec = src ? o->codec : FERRY_CODEC_NONE,
		.zstd = src ? o->codec == FERRY_CODEC_ZSTD ||
			      o->codec == FERRY_CODEC_AUTO : o->zstd,
		/* auto's zstd is --compress zstd's (level 3 lost to level 1
		 * under auto on the 1 Gbit/s link, text and mixed memory
		 * alike, 2026-11-30: what it gains in ratio it loses in CPU). */
		.codec_level = o->codec_level,
	};
	/* One connection: the reader compresses and sends itself; a worker
	 * thread would only add hand-offs on a busy machine. */
	t->fwd.inline_io = o->nstreams == 1;
	t->fwd.frame_build = src ? frame_build(&t->fwd, o->hold_bytes) : frame;
	/* One-way: the return direction has no connection and is over. */
	t->ret = (struct tun_dir){
		.t = t, .name = "return", .sending = !src,
		.frame_type = WIRE_FRAME_RETURN, .conns = &t->all_conns[o->nstreams],
		.nconns = o->ret.fd >= 0 ? 1 : 0, .frame_max = frame,
		.frame_build = frame, .codec = FERRY_CODEC_NONE,
		.inline_io = true, .raw_only = true, .done = o->ret.fd < 0,
	};

	arena = dir_arena(&t->fwd) + dir_arena(&t->ret);
	t->arena_bytes = arena;
	t->arena = mmap(NULL, arena, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t->arena == MAP_FAILED) {
		t->arena = NULL;
		rc = ferry_error_set(err, -ENOMEM, "tunnel: cannot map %zu bytes",
				     arena);
		goto fail;
	}
	t->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (t->done_fd < 0) {
		rc = ferry_error_set(err, -errno, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if (t->local_fd >= 0)
		fcntl(t->local_fd, F_SETFL,
		      fcntl(t->local_fd, F_GETFL) & ~O_NONBLOCK);
	rc = dir_setup(t, &t->fwd, err);
	if (!rc)
		rc = dir_setup(t, &t->ret, err);
	if (rc)
		goto fail;
	dir_splice_setup(t, &t->fwd);
	tun_progress(t);
	rc = dir_start(t, &t->fwd, err);
	if (!rc)
		rc = dir_start(t, &t->ret, err);
	if (!rc && t->fwd.zstd && t->fwd.nconns)
		rc = spawn(t, primer_main, &t->fwd, err);
	if (rc)
		goto fail;
	*out = t;
	return 0;
fail:
	tun_free(t);
	return rc;
}

int tun_done_fd(const struct tun *t)
{
	return t->done_fd;
}

bool tun_failed_locally(const struct tun *t)
{
	bool f;

	pthread_mutex_lock((pthread_mutex_t *)&t->mu);
	f = t->failed && t->failed_local;
	pthread_mutex_unlock((pthread_mutex_t *)&t->mu);
	return f;
}

bool tun_finished(const struct tun *t)
{
	bool f;

	pthread_mutex_lock((pthread_mutex_t *)&t->mu);
	f = t->finished;
	pthread_mutex_unlock((pthread_mutex_t *)&t->mu);
	return f;
}

/*
 * The counters are read word by word, each with an atomic load, so struct
 * tun_stats must be its uint64_t counters and nothing else: the scalars
 * (local_in_bytes to spliced_bytes), then the two arrays, without padding. A
 * counter added to it is added to this count too.
 */
#define TUN_STATS_SCALARS 7
_Static_assert(offsetof(struct tun_stats, frames_codec) ==
	       TUN_STATS_SCALARS * sizeof(uint64_t),
	       "struct tun_stats begins with its scalar uint64_t counters");
_Static_assert(sizeof(struct tun_stats) % sizeof(uint64_t) == 0 &&
	       sizeof(struct tun_stats) == (TUN_STATS_SCALARS +
					    WIRE_CODEC_MAX + 1 + TUN_STAGES) *
					   sizeof(uint64_t),
	       "struct tun_stats is an array of uint64_t counters");

void tun_stats(const struct tun *t, struct tun_stats *s)
{
	const struct tun *c = __atomic_load_n(&t->companion, __ATOMIC_ACQUIRE);
	const uint64_t *src = (const uint64_t *)&t->st;
	const uint64_t *csrc = c ? (const uint64_t *)&c->st : NULL;
	uint64_t *dst = (uint64_t *)s;

	for (size_t i = 0; i < sizeof(*s) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED) +
			 (csrc ? __atomic_load_n(&csrc[i], __ATOMIC_RELAXED) : 0);
}

void tun_adopt(struct tun *t, struct tun *companion)
{
	bool t_over, c_failed;

	FERRY_ASSERT(!t->companion && !companion->parent);
	__atomic_store_n(&companion->parent, t, __ATOMIC_RELEASE);
	__atomic_store_n(&t->companion, companion, __ATOMIC_RELEASE);
	/* Either may have failed before they were joined. */
	pthread_mutex_lock(&companion->mu);
	c_failed = companion->failed;
	pthread_mutex_unlock(&companion->mu);
	pthread_mutex_lock(&t->mu);
	t_over = t->failed || t->stopping;
	pthread_mutex_unlock(&t->mu);
	if (c_failed)
		tun_fail(t, companion->error.code, "post-copy preempt channel: %s",
			 companion->error.msg);
	else if (t_over)
		tun_fail(companion, -ECANCELED, "the main stream ended");
}

void tun_cancel(struct tun *t)
{
	if (t)
		tun_fail(t, -ECANCELED, "the tunnel was cancelled");
}

static int tun_wait_one(struct tun *t, int timeout_ms, struct ferry_error *err);

int tun_wait(struct tun *t, int timeout_ms, struct ferry_error *err)
{
	int rc = tun_wait_one(t, timeout_ms, err);

	/* The companion ends when its QEMU channel closes, about as the
	 * main stream does. */
	if (rc == 0 && t->companion)
		rc = tun_wait_one(t->companion, timeout_ms, err);
	return rc;
}

static int tun_wait_one(struct tun *t, int timeout_ms, struct ferry_error *err)
{
	struct pollfd p = { .fd = t->done_fd, .events = POLLIN };
	int rc;

	pthread_mutex_lock(&t->mu);
	if (!t->finished && !t->failed) {
		pthread_mutex_unlock(&t->mu);
		if (poll(&p, 1, timeout_ms) == 0)
			return -ETIMEDOUT;
		pthread_mutex_lock(&t->mu);
	}
	if (t->failed) {
		rc = t->error.code ? t->error.code : -EIO;
		if (err) {
			err->code = rc;
			memcpy(err->msg, t->error.msg, sizeof(err->msg));
		}
	} else {
		rc = t->finished ? 0 : -ETIMEDOUT;
	}
	pthread_mutex_unlock(&t->mu);
	return rc;
}

void tun_free(struct tun *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->mu);
	if (!t->finished)
		t->stopping = true;
	__atomic_store_n(&t->closing, true, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&t->cv);
	pthread_mutex_unlock(&t->mu);
	if (t->stopping)
		shutdown_all(t);
	for (uint32_t i = 0; i < t->nthreads; i++)
		pthread_join(t->threads[i], NULL);
	/* Now that no thread of this one can report to it: the companion,
	 * whose threads may still report here until they are joined. */
	tun_free(t->companion);
	t->companion = NULL;
	for (uint32_t i = 0; i < t->nall; i++) {
		codec_ctx_free(t->all_conns[i].codec);
		net_conn_close(&t->all_conns[i].c);
	}
	while (t->all_bufs) {
		struct tun_buf *b = t->all_bufs;

		t->all_bufs = b->all_next;
		free(b);
	}
	free(t->fwd.slots);
	free(t->ret.slots);
	if (t->fwd.splice) {
		close(t->fwd.pipe[0]);
		close(t->fwd.pipe[1]);
	}
	free(t->all_conns);
	if (t->local_fd >= 0)
		close(t->local_fd);
	if (t->arena)
		munmap(t->arena, t->arena_bytes);
	if (t->done_fd >= 0)
		close(t->done_fd);
	pacer_unref(t->pacer);
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mu);
	free(t);
}
