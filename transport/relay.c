/*
 * The io_uring relay (see relay.h).
 *
 * One thread, one ring, two directions. Each direction keeps at most one
 * receive and one send in flight on each socket: a stream socket must see
 * its sends in order, and a short send must be completed before the next
 * one starts. Buffers come from per-direction pools allocated at start, so
 * the hot path never allocates; with eight buffers a direction can read
 * ahead of the network by up to seven frames.
 */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/util.h"
#include "relay.h"
#include "wire.h"

/* Ring entries: at most five operations are ever in flight. */
#define RELAY_RING_DEPTH 16

/* What a completion belongs to; one of each can be in flight. */
enum relay_op {
	OP_LOCAL_RECV = 1,
	OP_NET_SEND,
	OP_NET_RECV,
	OP_LOCAL_SEND,
	OP_CANCEL,
};

/* A FIFO of buffer indexes. */
struct idxq {
	int idx[XPORT_BUFS_PER_DIR];
	int head, len;
};

/* Local QEMU -> network: frames built in place, header before payload. */
struct dir_out {
	uint8_t *mem[XPORT_BUFS_PER_DIR];
	uint32_t len[XPORT_BUFS_PER_DIR];	/* whole frame, header included */
	int free[XPORT_BUFS_PER_DIR];
	int nfree;
	struct idxq ready;	/* frames waiting to be sent, in order */
	int recv_idx;
	uint32_t send_off;	/* progress of the head of ready */
	bool recv_busy, send_busy;
	bool eof;		/* the local QEMU closed its side */
	bool end_queued, done;
	int end_idx;
	uint16_t type;		/* DATA or RETURN */
	uint64_t seq;
};

/* Network -> local QEMU: header, then payload into a pool buffer. */
struct dir_in {
	uint8_t hdr[WIRE_FRAME_HDR_BYTES];
	uint32_t hdr_got;
	struct wire_frame_hdr cur;
	bool in_payload;
	int cur_idx;		/* -1 while waiting for a free buffer */
	uint32_t pay_got;
	uint8_t *mem[XPORT_BUFS_PER_DIR];
	uint32_t len[XPORT_BUFS_PER_DIR];
	int free[XPORT_BUFS_PER_DIR];
	int nfree;
	struct idxq ready;	/* payloads waiting to be written locally */
	uint32_t send_off;
	bool recv_busy, send_busy;
	bool end_seen, done;
	uint16_t type;		/* the frame type we accept */
	uint64_t expect_seq;
};

struct xport_relay {
	int local_fd, net_fd;
	int cancel_efd, done_efd;
	enum xport_role role;
	uint32_t idle_timeout_ms;
	struct io_uring ring;
	pthread_t thread;
	bool thread_started;
	struct dir_out out;
	struct dir_in in;
	int inflight;		/* data operations submitted, not completed */
	uint64_t last_progress_ms;
	bool failed;
	struct ferry_error err;
	int result;
	int finished;		/* set with __atomic once the thread is done */
	struct xport_stats stats;	/* updated with __atomic */
};

static void stat_add(uint64_t *c, uint64_t n)
{
	__atomic_add_fetch(c, n, __ATOMIC_RELAXED);
}

static void idxq_push(struct idxq *q, int idx)
{
	FERRY_ASSERT(q->len < XPORT_BUFS_PER_DIR);
	q->idx[(q->head + q->len) % XPORT_BUFS_PER_DIR] = idx;
	q->len++;
}

static int idxq_pop(struct idxq *q)
{
	int idx;

	FERRY_ASSERT(q->len > 0);
	idx = q->idx[q->head];
	q->head = (q->head + 1) % XPORT_BUFS_PER_DIR;
	q->len--;
	return idx;
}

/* Record the first error only: later ones are consequences of it. */
static void relay_fail(struct xport_relay *r, int code, const char *what,
		       const char *detail)
{
	if (r->failed)
		return;
	r->failed = true;
	r->result = ferry_error_set(&r->err, code, "%s%s%s", what,
				    detail ? ": " : "", detail ? detail : "");
}

static struct io_uring_sqe *get_sqe(struct xport_relay *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);

	/* The ring is deeper than the operations we ever have in flight. */
	FERRY_ASSERT(sqe);
	return sqe;
}

static void submit_local_recv(struct xport_relay *r)
{
	struct dir_out *o = &r->out;
	struct io_uring_sqe *sqe;

	if (o->recv_busy || o->eof || o->nfree == 0 || r->failed)
		return;
	o->recv_idx = o->free[--o->nfree];
	sqe = get_sqe(r);
	io_uring_prep_recv(sqe, r->local_fd, o->mem[o->recv_idx] + WIRE_FRAME_HDR_BYTES,
			   XPORT_FRAME_BYTES, 0);
	io_uring_sqe_set_data64(sqe, OP_LOCAL_RECV);
	o->recv_busy = true;
	r->inflight++;
}

static void queue_end_frame(struct xport_relay *r)
{
	struct dir_out *o = &r->out;
	struct wire_frame_hdr h = { .type = WIRE_FRAME_END };

	if (!o->eof || o->end_queued || o->nfree == 0)
		return;
	o->end_idx = o->free[--o->nfree];
	h.seq = o->seq++;
	wire_frame_encode(&h, o->mem[o->end_idx]);
	o->len[o->end_idx] = WIRE_FRAME_HDR_BYTES;
	idxq_push(&o->ready, o->end_idx);
	o->end_queued = true;
}

static void submit_net_send(struct xport_relay *r)
{
	struct dir_out *o = &r->out;
	struct io_uring_sqe *sqe;
	int idx;

	if (o->send_busy || o->ready.len == 0 || r->failed)
		return;
	idx = o->ready.idx[o->ready.head];
	sqe = get_sqe(r);
	io_uring_prep_send(sqe, r->net_fd, o->mem[idx] + o->send_off,
			   o->len[idx] - o->send_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, OP_NET_SEND);
	o->send_busy = true;
	r->inflight++;
}

static void submit_net_recv(struct xport_relay *r)
{
	struct dir_in *in = &r->in;
	struct io_uring_sqe *sqe;
	void *dst;
	uint32_t want;

	if (in->recv_busy || in->end_seen || r->failed)
		return;
	if (!in->in_payload) {
		dst = in->hdr + in->hdr_got;
		want = WIRE_FRAME_HDR_BYTES - in->hdr_got;
	} else {
		if (in->cur_idx < 0) {
			if (in->nfree == 0)
				return;	/* wait for the local side to drain */
			in->cur_idx = in->free[--in->nfree];
		}
		dst = in->mem[in->cur_idx] + in->pay_got;
		want = in->cur.len - in->pay_got;
	}
	sqe = get_sqe(r);
	io_uring_prep_recv(sqe, r->net_fd, dst, want, MSG_WAITALL);
	io_uring_sqe_set_data64(sqe, OP_NET_RECV);
	in->recv_busy = true;
	r->inflight++;
}

static void submit_local_send(struct xport_relay *r)
{
	struct dir_in *in = &r->in;
	struct io_uring_sqe *sqe;
	int idx;

	if (in->send_busy || in->ready.len == 0 || r->failed)
		return;
	idx = in->ready.idx[in->ready.head];
	sqe = get_sqe(r);
	io_uring_prep_send(sqe, r->local_fd, in->mem[idx] + in->send_off,
			   in->len[idx] - in->send_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, OP_LOCAL_SEND);
	in->send_busy = true;
	r->inflight++;
}

static void on_local_recv(struct xport_relay *r, int res)
{
	struct dir_out *o = &r->out;
	struct wire_frame_hdr h = { .type = o->type };
	int idx = o->recv_idx;

	o->recv_busy = false;
	if (res == -EINTR || res == -EAGAIN) {
		o->free[o->nfree++] = idx;
		return;
	}
	if (res == 0 || res == -ECONNRESET) {
		o->free[o->nfree++] = idx;
		o->eof = true;
		return;
	}
	if (res < 0) {
		o->free[o->nfree++] = idx;
		relay_fail(r, res, "reading the local QEMU's migration stream",
			   strerror(-res));
		return;
	}
	h.len = h.raw_len = (uint32_t)res;
	h.seq = o->seq++;
	wire_frame_encode(&h, o->mem[idx]);
	o->len[idx] = WIRE_FRAME_HDR_BYTES + (uint32_t)res;
	idxq_push(&o->ready, idx);
	stat_add(&r->stats.local_in_bytes, (uint64_t)res);
}

static void on_net_send(struct xport_relay *r, int res)
{
	struct dir_out *o = &r->out;
	int idx = o->ready.idx[o->ready.head];

	o->send_busy = false;
	if (res == -EINTR || res == -EAGAIN)
		return;
	if (res < 0) {
		relay_fail(r, res, "sending to the peer", strerror(-res));
		return;
	}
	o->send_off += (uint32_t)res;
	stat_add(&r->stats.wire_out_bytes, (uint64_t)res);
	if (o->send_off < o->len[idx])
		return;	/* short send: the rest goes next */
	idxq_pop(&o->ready);
	o->send_off = 0;
	o->free[o->nfree++] = idx;
	stat_add(&r->stats.frames_out, 1);
	if (o->end_queued && idx == o->end_idx)
		o->done = true;
}

/* A whole frame header arrived: validate it and plan the payload. */
static void on_frame_header(struct xport_relay *r)
{
	struct dir_in *in = &r->in;
	int rc;

	in->hdr_got = 0;
	rc = wire_frame_decode(in->hdr, &in->expect_seq, &in->cur, &r->err);
	if (rc < 0) {
		r->failed = true;
		r->result = ferry_error_prefix(&r->err, "bad frame from the peer: ");
		return;
	}
	stat_add(&r->stats.frames_in, 1);
	if (in->cur.type == WIRE_FRAME_END) {
		in->end_seen = true;
		return;
	}
	if (in->cur.type != in->type) {
		relay_fail(r, -EPROTO, "peer sent a frame for the wrong direction",
			   NULL);
		return;
	}
	if (in->cur.len == 0)
		return;
	in->in_payload = true;
	in->cur_idx = -1;
	in->pay_got = 0;
}

static void on_net_recv(struct xport_relay *r, int res)
{
	struct dir_in *in = &r->in;

	in->recv_busy = false;
	if (res == -EINTR || res == -EAGAIN)
		return;
	if (res == 0) {
		relay_fail(r, -ECONNRESET,
			   "the peer closed the data connection before the end of the stream",
			   NULL);
		return;
	}
	if (res < 0) {
		relay_fail(r, res, "receiving from the peer", strerror(-res));
		return;
	}
	stat_add(&r->stats.wire_in_bytes, (uint64_t)res);
	if (!in->in_payload) {
		in->hdr_got += (uint32_t)res;
		if (in->hdr_got == WIRE_FRAME_HDR_BYTES)
			on_frame_header(r);
		return;
	}
	in->pay_got += (uint32_t)res;
	if (in->pay_got < in->cur.len)
		return;
	in->len[in->cur_idx] = in->cur.len;
	idxq_push(&in->ready, in->cur_idx);
	in->in_payload = false;
	in->cur_idx = -1;
}

static void on_local_send(struct xport_relay *r, int res)
{
	struct dir_in *in = &r->in;
	int idx = in->ready.idx[in->ready.head];

	in->send_busy = false;
	if (res == -EINTR || res == -EAGAIN)
		return;
	if (res < 0) {
		relay_fail(r, res,
			   "the local QEMU stopped reading its migration stream",
			   strerror(-res));
		return;
	}
	in->send_off += (uint32_t)res;
	stat_add(&r->stats.local_out_bytes, (uint64_t)res);
	if (in->send_off < in->len[idx])
		return;
	idxq_pop(&in->ready);
	in->send_off = 0;
	in->free[in->nfree++] = idx;
}

static void on_cqe(struct xport_relay *r, struct io_uring_cqe *cqe)
{
	uint64_t op = io_uring_cqe_get_data64(cqe);
	int res = cqe->res;

	if (op != OP_CANCEL)
		r->inflight--;
	if (res > 0)
		r->last_progress_ms = ferry_now_ms();
	switch (op) {
	case OP_LOCAL_RECV: on_local_recv(r, res); break;
	case OP_NET_SEND: on_net_send(r, res); break;
	case OP_NET_RECV: on_net_recv(r, res); break;
	case OP_LOCAL_SEND: on_local_send(r, res); break;
	case OP_CANCEL:
		relay_fail(r, -ECANCELED, "relay cancelled", NULL);
		break;
	default:
		FERRY_ASSERT(!"unknown relay completion");
	}
}

/* The incoming direction ends once END arrived and all was written. */
static void check_in_done(struct xport_relay *r)
{
	struct dir_in *in = &r->in;

	if (in->done || !in->end_seen || in->ready.len || in->send_busy)
		return;
	in->done = true;
	/* The local QEMU may have closed already; that is fine. */
	shutdown(r->local_fd, SHUT_WR);
}

static void submit_all(struct xport_relay *r)
{
	submit_local_recv(r);
	queue_end_frame(r);
	submit_net_send(r);
	submit_net_recv(r);
	submit_local_send(r);
}

static int reap(struct xport_relay *r, unsigned wait_ms)
{
	struct __kernel_timespec ts = {
		.tv_sec = wait_ms / 1000,
		.tv_nsec = (long long)(wait_ms % 1000) * 1000000,
	};
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	int rc;

	rc = io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, &ts, NULL);
	if (rc < 0 && rc != -ETIME && rc != -EINTR)
		return rc;
	io_uring_for_each_cqe(&r->ring, head, cqe) {
		on_cqe(r, cqe);
		n++;
	}
	io_uring_cq_advance(&r->ring, n);
	return 0;
}

/*
 * After an error, in-flight operations still point into our buffers: wake
 * them by shutting the sockets down and wait for their completions, so the
 * buffers can be freed safely. Bounded; on timeout the caller leaks the
 * buffers rather than free memory the kernel may still write.
 */
static void drain(struct xport_relay *r)
{
	uint64_t deadline = ferry_now_ms() + XPORT_DRAIN_TIMEOUT_MS;

	shutdown(r->net_fd, SHUT_RDWR);
	shutdown(r->local_fd, SHUT_RDWR);
	while (r->inflight > 0 && ferry_now_ms() < deadline)
		if (reap(r, 100) < 0)
			break;
}

static void run_loop(struct xport_relay *r)
{
	r->last_progress_ms = ferry_now_ms();
	while (!r->failed) {
		int rc;

		submit_all(r);
		check_in_done(r);
		if (r->in.done && r->out.done)
			break;
		rc = reap(r, XPORT_TICK_MS);
		if (rc < 0) {
			relay_fail(r, rc, "io_uring wait", strerror(-rc));
			break;
		}
		if (ferry_now_ms() - r->last_progress_ms > r->idle_timeout_ms) {
			char detail[96];

			snprintf(detail, sizeof(detail),
				 "no data moved for %u ms", r->idle_timeout_ms);
			relay_fail(r, -ETIMEDOUT, "the data connection stalled",
				   detail);
		}
	}
}

static void *relay_thread(void *arg)
{
	struct xport_relay *r = arg;
	uint64_t one = 1;

	run_loop(r);
	drain(r);
	close(r->local_fd);
	close(r->net_fd);
	r->local_fd = r->net_fd = -1;
	__atomic_store_n(&r->finished, 1, __ATOMIC_RELEASE);
	if (write(r->done_efd, &one, sizeof(one)) < 0) {
		/* An eventfd write only fails on overflow; nothing to do. */
	}
	return NULL;
}

static int alloc_buffers(struct xport_relay *r)
{
	for (int i = 0; i < XPORT_BUFS_PER_DIR; i++) {
		r->out.mem[i] = malloc(WIRE_FRAME_HDR_BYTES + XPORT_FRAME_BYTES);
		r->in.mem[i] = malloc(WIRE_FRAME_PAYLOAD_MAX);
		if (!r->out.mem[i] || !r->in.mem[i])
			return -ENOMEM;
		r->out.free[r->out.nfree++] = i;
		r->in.free[r->in.nfree++] = i;
	}
	return 0;
}

static void free_buffers(struct xport_relay *r)
{
	for (int i = 0; i < XPORT_BUFS_PER_DIR; i++) {
		free(r->out.mem[i]);
		free(r->in.mem[i]);
	}
}

static int arm_cancel(struct xport_relay *r)
{
	struct io_uring_sqe *sqe = get_sqe(r);

	io_uring_prep_poll_add(sqe, r->cancel_efd, POLLIN);
	io_uring_sqe_set_data64(sqe, OP_CANCEL);
	return io_uring_submit(&r->ring);
}

int xport_relay_start(struct xport_relay **out, int local_fd, int net_fd,
		      enum xport_role role, const struct xport_relay_opts *opts,
		      struct ferry_error *err)
{
	struct xport_relay *r;
	int rc;

	r = calloc(1, sizeof(*r));
	if (!r) {
		rc = ferry_error_set(err, -ENOMEM, "relay: out of memory");
		goto err_close_fds;
	}
	r->local_fd = local_fd;
	r->net_fd = net_fd;
	r->role = role;
	r->idle_timeout_ms = opts && opts->idle_timeout_ms ?
			     opts->idle_timeout_ms : XPORT_IDLE_TIMEOUT_MS;
	r->out.type = role == XPORT_ROLE_SOURCE ? WIRE_FRAME_DATA : WIRE_FRAME_RETURN;
	r->in.type = role == XPORT_ROLE_SOURCE ? WIRE_FRAME_RETURN : WIRE_FRAME_DATA;
	r->in.cur_idx = -1;
	r->cancel_efd = eventfd(0, EFD_CLOEXEC);
	r->done_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->cancel_efd < 0 || r->done_efd < 0) {
		rc = ferry_error_set(err, -errno, "relay: eventfd: %s", strerror(errno));
		goto err_free;
	}
	if (alloc_buffers(r) < 0) {
		rc = ferry_error_set(err, -ENOMEM, "relay: out of memory for buffers");
		goto err_free;
	}
	rc = io_uring_queue_init(RELAY_RING_DEPTH, &r->ring, 0);
	if (rc < 0) {
		ferry_error_set(err, rc, "relay: io_uring_queue_init: %s", strerror(-rc));
		goto err_free;
	}
	rc = arm_cancel(r);
	if (rc < 0) {
		ferry_error_set(err, rc, "relay: io_uring_submit: %s", strerror(-rc));
		goto err_ring;
	}
	rc = -pthread_create(&r->thread, NULL, relay_thread, r);
	if (rc < 0) {
		ferry_error_set(err, rc, "relay: pthread_create: %s", strerror(-rc));
		goto err_ring;
	}
	r->thread_started = true;
	*out = r;
	return 0;

err_ring:
	io_uring_queue_exit(&r->ring);
err_free:
	free_buffers(r);
	if (r->cancel_efd >= 0)
		close(r->cancel_efd);
	if (r->done_efd >= 0)
		close(r->done_efd);
	free(r);
err_close_fds:
	close(local_fd);
	close(net_fd);
	return rc;
}

int xport_relay_done_fd(const struct xport_relay *r)
{
	return r->done_efd;
}

bool xport_relay_finished(const struct xport_relay *r)
{
	return __atomic_load_n(&r->finished, __ATOMIC_ACQUIRE);
}

void xport_relay_stats(const struct xport_relay *r, struct xport_stats *s)
{
	s->local_in_bytes = __atomic_load_n(&r->stats.local_in_bytes, __ATOMIC_RELAXED);
	s->local_out_bytes = __atomic_load_n(&r->stats.local_out_bytes, __ATOMIC_RELAXED);
	s->wire_out_bytes = __atomic_load_n(&r->stats.wire_out_bytes, __ATOMIC_RELAXED);
	s->wire_in_bytes = __atomic_load_n(&r->stats.wire_in_bytes, __ATOMIC_RELAXED);
	s->frames_out = __atomic_load_n(&r->stats.frames_out, __ATOMIC_RELAXED);
	s->frames_in = __atomic_load_n(&r->stats.frames_in, __ATOMIC_RELAXED);
}

void xport_relay_cancel(struct xport_relay *r)
{
	uint64_t one = 1;

	if (write(r->cancel_efd, &one, sizeof(one)) < 0) {
		/* Overflow only: a cancel is already pending. */
	}
}

int xport_relay_wait(struct xport_relay *r, int timeout_ms,
		     struct ferry_error *err)
{
	struct pollfd p = { .fd = r->done_efd, .events = POLLIN };
	uint64_t deadline = ferry_now_ms() + (uint64_t)timeout_ms;

	while (!xport_relay_finished(r)) {
		uint64_t now = ferry_now_ms();

		if (now >= deadline)
			return ferry_error_set(err, -ETIMEDOUT,
				"the relay did not finish within %d ms", timeout_ms);
		poll(&p, 1, (int)(deadline - now));
	}
	if (r->result < 0 && err)
		*err = r->err;
	return r->result;
}

void xport_relay_free(struct xport_relay *r)
{
	if (!r)
		return;
	if (r->thread_started) {
		xport_relay_cancel(r);
		pthread_join(r->thread, NULL);
	}
	io_uring_queue_exit(&r->ring);
	/* drain() bounded its wait; only free what the kernel let go of. */
	if (r->inflight == 0)
		free_buffers(r);
	close(r->cancel_efd);
	close(r->done_efd);
	free(r);
}
