/*
 * The tunnel's I/O (see tun_priv.h): each thread's own small ring with one
 * operation in flight, the connections to the peer (plaintext through the
 * ring, or TLS), and the local end.
 *
 * Plaintext of a known length moves in one send or recv with MSG_WAITALL;
 * raw frames between a QEMU socket and a plaintext connection can skip
 * user memory by splice (tun_io_splice_in/out), the ring polling for
 * readiness.
 *
 * TLS: after the handshake, each SSL object gets a BIO of ours that reads
 * and writes through the thread's ring via a staging buffer in the arena,
 * so the ciphertext also moves in large fixed-buffer operations. An SSL
 * object is only ever used by one thread.
 */
#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/utsname.h>
#include <linux/tcp.h>
#include <netinet/in.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls.h"
#include "tun_priv.h"

/* ---- rings ---- */

int tun_io_init(struct tun_io *io, struct tun *t)
{
	struct iovec iov = { .iov_base = t->arena, .iov_len = t->arena_bytes };
	int rc;

	memset(io, 0, sizeof(*io));
	io->t = t;
	rc = io_uring_queue_init(TUN_RING_DEPTH, &io->ring, 0);
	if (rc < 0)
		return rc;
	io->ready = true;
	/* Fixed buffers need locked memory; without them plain ops work. */
	io->fixed = io_uring_register_buffers(&io->ring, &iov, 1) == 0;
	return 0;
}

void tun_io_fini(struct tun_io *io)
{
	if (io->ready)
		io_uring_queue_exit(&io->ring);
	io->ready = false;
}

/*
 * Cancel the op tagged @tag and wait for its completion, bounded: its
 * result (a send or recv with MSG_WAITALL that was cut short gives what
 * it moved; one that had moved nothing, -ECANCELED; one that finished
 * first, what it did), or -ETIMEDOUT when none came in TUN_CANCEL_WAIT_MS.
 */
static int io_cancel(struct tun_io *io, uint64_t tag)
{
	uint64_t deadline = ferry_now_ms() + TUN_CANCEL_WAIT_MS;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);

	if (sqe) {
		io_uring_prep_cancel64(sqe, tag, 0);
		sqe->user_data = 0;
		io_uring_submit(&io->ring);
	}
	while (ferry_now_ms() < deadline) {
		struct __kernel_timespec ts = { .tv_nsec = TUN_TICK_MS * 1000000ll };
		struct io_uring_cqe *cqe;
		uint64_t ud;
		int res;

		if (io_uring_wait_cqe_timeout(&io->ring, &cqe, &ts) < 0)
			continue;
		ud = cqe->user_data;
		res = cqe->res;
		io_uring_cqe_seen(&io->ring, cqe);
		if (ud == tag)
			return res;
	}
	return -ETIMEDOUT;
}

/*
 * Whether a cancelled send or recv with MSG_WAITALL gives back what it
 * moved: Linux 6.0 on (io_sendrecv_fail()); before, it can say -ECANCELED
 * after moving bytes, and asking would lose them.
 */
static bool cancel_keeps_partial;
static pthread_once_t partial_once = PTHREAD_ONCE_INIT;

static void partial_check(void)
{
	struct utsname u;
	unsigned major = 0;

	if (uname(&u) == 0 && sscanf(u.release, "%u", &major) == 1)
		cancel_keeps_partial = major >= 6;
}

/*
 * Submit @op (prepared by the caller in a struct of its own) and wait for
 * it: its result, or -ECANCELED when the tunnel stops, -ETIMEDOUT when
 * nothing moved anywhere in the tunnel for the idle timeout. The wait
 * looks at the stop flag and the idle clock every TUN_TICK_MS; an op that
 * ends in -EINTR or -EAGAIN is submitted again. @moves: a positive result
 * is bytes moved, which restarts the idle clock (a poll's is readiness,
 * which does not).
 *
 * A send or recv with MSG_WAITALL says nothing until all of it moved: on
 * a slow link a large one can take longer than the idle timeout while
 * bytes flow all along. So once the idle clock passes half the timeout,
 * such an op is cancelled at each tick to learn what it moved (where the
 * kernel says: cancel_keeps_partial): that much is returned (progress;
 * the caller submits the rest), and an op that had moved nothing is
 * submitted again until the timeout.
 */
static ssize_t io_run(struct tun_io *io, const struct io_uring_sqe *op,
		      bool moves)
{
	struct tun *t = io->t;
	bool ask;

	pthread_once(&partial_once, partial_check);
	/* Only a send or recv with MSG_WAITALL hides what it moved: any
	 * other op completes on its first bytes. */
	ask = cancel_keeps_partial && (op->msg_flags & MSG_WAITALL) &&
	      (op->opcode == IORING_OP_SEND || op->opcode == IORING_OP_RECV);

	for (;;) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
		uint64_t tag = ++io->tag;
		int rc, res;

		if (!sqe)
			return -EBUSY;
		*sqe = *op;
		sqe->user_data = tag;
		rc = io_uring_submit(&io->ring);
		if (rc < 0)
			return rc;
		for (;;) {
			struct __kernel_timespec ts = {
				.tv_nsec = TUN_TICK_MS * 1000000ll
			};
			struct io_uring_cqe *cqe;
			uint64_t ud, idle;

			rc = io_uring_wait_cqe_timeout(&io->ring, &cqe, &ts);
			if (rc == 0) {
				ud = cqe->user_data;
				res = cqe->res;
				io_uring_cqe_seen(&io->ring, cqe);
				if (ud == tag)
					break;
				continue;	/* a stale cancel */
			}
			if (rc != -ETIME && rc != -EINTR)
				return rc;
			if (tun_stopping(t)) {
				io_cancel(io, tag);
				return -ECANCELED;
			}
			idle = ferry_now_ms() -
			       __atomic_load_n(&t->last_progress_ms,
					       __ATOMIC_RELAXED);
			if (idle > t->idle_ms || (ask && idle > t->idle_ms / 2)) {
				res = io_cancel(io, tag);
				if (res == -ETIMEDOUT ||
				    (res == -ECANCELED && idle > t->idle_ms))
					return -ETIMEDOUT;
				if (res == -ECANCELED)
					res = -EAGAIN;	/* nothing yet: again */
				break;
			}
		}
		if (res == -EINTR || res == -EAGAIN)
			continue;
		if (res > 0 && moves)
			tun_progress(t);
		return res;
	}
}

/* See tun_priv.h. */
ssize_t tun_io_read(struct tun_io *io, int fd, void *buf, size_t len)
{
	struct tun *t = io->t;
	struct io_uring_sqe op = { 0 };
	uint8_t *p = buf;

	if (io->fixed && p >= t->arena && p + len <= t->arena + t->arena_bytes)
		io_uring_prep_read_fixed(&op, fd, buf, (unsigned)len, 0, 0);
	else
		io_uring_prep_read(&op, fd, buf, (unsigned)len, 0);
	return io_run(io, &op, true);
}

int tun_io_full(struct tun_io *io, bool wr, int fd, void *buf, size_t len)
{
	return tun_io_full_more(io, wr, fd, buf, len, false);
}

/*
 * See tun_priv.h. One send or recv with MSG_WAITALL: the kernel goes on
 * until all of it moved, one completion where read and write take one per
 * socket buffer's worth; fewer come back only at the end of the stream.
 */
int tun_io_full_more(struct tun_io *io, bool wr, int fd, void *buf, size_t len,
		     bool more)
{
	uint8_t *p = buf;

	while (len) {
		struct io_uring_sqe op = { 0 };
		ssize_t n;

		if (wr)
			io_uring_prep_send(&op, fd, p, len, MSG_WAITALL |
					   MSG_NOSIGNAL | (more ? MSG_MORE : 0));
		else
			io_uring_prep_recv(&op, fd, p, len, MSG_WAITALL);
		n = io_run(io, &op, true);
		if (n < 0)
			return (int)n;
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Wait on the ring until @fd is ready for @events (or the tunnel stops,
 * or the idle clock runs out): 0 or -errno as tun_io_read(). */
static int io_poll(struct tun_io *io, int fd, unsigned events)
{
	struct io_uring_sqe op = { 0 };
	ssize_t n;

	io_uring_prep_poll_add(&op, fd, events);
	n = io_run(io, &op, false);
	return n < 0 ? (int)n : 0;
}

/*
 * Up to @len bytes from @in to @out by splice once @wait_fd is ready for
 * @events. The splice itself is a system call of this thread: io_uring's
 * splice always runs in a worker thread, and a hand-off to one per splice
 * cost more than the copy it saves. The ring does the waiting: the socket
 * end is polled first, so the splice finds it ready; one into a socket
 * whose buffer then fills waits at most the socket's send timeout
 * (TUN_TICK_MS, set by the tunnel) before it returns what it moved.
 */
static ssize_t io_splice(struct tun_io *io, int in, int out, size_t len,
			 int wait_fd, unsigned events)
{
	unsigned flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

	for (;;) {
		int rc = io_poll(io, wait_fd, events);
		ssize_t n;

		if (rc < 0)
			return rc;
		n = splice(in, NULL, out, NULL, len, flags);
		if (n > 0) {
			tun_progress(io->t);
			return n;
		}
		if (n == 0)
			return 0;
		if (errno != EINTR && errno != EAGAIN)
			return -errno;
		if (tun_stopping(io->t))
			return -ECANCELED;
	}
}

ssize_t tun_io_splice_in(struct tun_io *io, int sock, int pipe_w, size_t len)
{
	return io_splice(io, sock, pipe_w, len, sock, POLLIN);
}

int tun_io_splice_out(struct tun_io *io, int pipe_r, int sock, size_t len)
{
	while (len) {
		ssize_t n = io_splice(io, pipe_r, sock, len, sock, POLLOUT);

		if (n < 0)
			return (int)n;
		if (n == 0)
			return -EPIPE;	/* the pipe held less than said */
		len -= (size_t)n;
	}
	return 0;
}

/* ---- TLS over the ring ---- */

static BIO_METHOD *bio_meth;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int stage_flush(struct tun_conn *c)
{
	uint64_t t0;
	int rc;

	if (!c->stage_len)
		return 0;
	t0 = tun_cpu_ns();
	rc = tun_io_full(c->io, true, c->c.fd, c->stage, c->stage_len);
	c->tls_io_ns += tun_cpu_ns() - t0;
	if (rc) {
		c->io_err = rc;
		return rc;
	}
	tun_add(&c->t->st.wire_out_bytes, c->stage_len);
	c->stage_len = 0;
	return 0;
}

static int bio_write(BIO *b, const char *data, int len)
{
	struct tun_conn *c = BIO_get_data(b);

	if (len <= 0)
		return 0;
	if (c->stage_len + (size_t)len > TUN_STAGE_BYTES && stage_flush(c))
		return -1;
	if ((size_t)len > TUN_STAGE_BYTES) {
		uint64_t t0 = tun_cpu_ns();
		int rc = tun_io_full(c->io, true, c->c.fd, (void *)data, (size_t)len);

		c->tls_io_ns += tun_cpu_ns() - t0;
		if (rc) {
			c->io_err = rc;
			return -1;
		}
		tun_add(&c->t->st.wire_out_bytes, (uint64_t)len);
		return len;
	}
	memcpy(c->stage + c->stage_len, data, (size_t)len);
	c->stage_len += (size_t)len;
	return len;
}

static int bio_read(BIO *b, char *out, int len)
{
	struct tun_conn *c = BIO_get_data(b);
	size_t n;

	if (len <= 0)
		return 0;
	/* With read-ahead OpenSSL asks for its whole buffer: read into it. */
	if (c->stage_off == c->stage_len && (size_t)len >= TUN_TLS_DIRECT_READ) {
		uint64_t t0 = tun_cpu_ns();
		ssize_t got = tun_io_read(c->io, c->c.fd, out, (size_t)len);

		c->tls_io_ns += tun_cpu_ns() - t0;
		if (got <= 0) {
			c->io_err = got == 0 ? -ECONNRESET : (int)got;
			return got == 0 ? 0 : -1;
		}
		tun_add(&c->t->st.wire_in_bytes, (uint64_t)got);
		return (int)got;
	}
	if (c->stage_off == c->stage_len) {
		uint64_t t0 = tun_cpu_ns();
		ssize_t got = tun_io_read(c->io, c->c.fd, c->stage,
				      TUN_STAGE_BYTES);

		c->tls_io_ns += tun_cpu_ns() - t0;
		if (got <= 0) {
			c->io_err = got == 0 ? -ECONNRESET : (int)got;
			return got == 0 ? 0 : -1;
		}
		tun_add(&c->t->st.wire_in_bytes, (uint64_t)got);
		c->stage_off = 0;
		c->stage_len = (size_t)got;
	}
	n = c->stage_len - c->stage_off;
	if (n > (size_t)len)
		n = (size_t)len;
	memcpy(out, c->stage + c->stage_off, n);
	c->stage_off += n;
	if (c->stage_off == c->stage_len)
		c->stage_off = c->stage_len = 0;
	return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct tun_conn *c = BIO_get_data(b);

	(void)num;
	(void)ptr;
	if (cmd == BIO_CTRL_FLUSH)
		return c && stage_flush(c) == 0 ? 1 : 0;
	return 0;
}

static void bio_meth_init(void)
{
	bio_meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				"ferry-uring");
	if (bio_meth) {
		BIO_meth_set_write(bio_meth, bio_write);
		BIO_meth_set_read(bio_meth, bio_read);
		BIO_meth_set_ctrl(bio_meth, bio_ctrl);
	}
}

int tun_tls_init(void)
{
	pthread_once(&bio_once, bio_meth_init);
	return bio_meth ? 0 : -ENOMEM;
}

int tun_conn_tls_attach(struct tun_conn *c, struct ferry_error *err)
{
	BIO *bio = BIO_new(bio_meth);

	if (!bio)
		return ferry_error_set(err, -ENOMEM, "TLS: no BIO");
	BIO_set_data(bio, c);
	BIO_set_init(bio, 1);
	SSL_set_bio(c->c.ssl, bio, bio);
	/* Read many records per operation, straight into OpenSSL's buffer. */
	SSL_set_default_read_buffer_len(c->c.ssl, TUN_STAGE_BYTES);
	SSL_set_read_ahead(c->c.ssl, 1);
	return 0;
}

/* Why a TLS read or write failed. */
static const char *ssl_why(struct tun_conn *c, char *buf, size_t len)
{
	if (c->io_err == -ECONNRESET)
		return "the peer closed the connection";
	if (c->io_err)
		snprintf(buf, len, "%s", strerror(-c->io_err));
	else
		snprintf(buf, len, "TLS error: %s", tls_last_error("bad record"));
	return buf;
}

/* ---- connection I/O: plaintext through the ring, or TLS ---- */

/* Charge an SSL call's CPU time since @t0: its socket I/O to @io_stage,
 * the rest (the cipher) to @tls_stage. */
static void charge_tls(struct tun_conn *c, uint64_t t0, uint64_t io0,
		       enum tun_stage tls_stage, enum tun_stage io_stage)
{
	uint64_t all = tun_cpu_ns() - t0, io = c->tls_io_ns - io0;

	tun_add(&c->t->st.stage_cpu_ns[io_stage], io);
	tun_add(&c->t->st.stage_cpu_ns[tls_stage], all > io ? all - io : 0);
}

int tun_conn_write(struct tun_conn *c, const void *buf, size_t len)
{
	uint64_t t0 = tun_cpu_ns(), io0 = c->tls_io_ns;
	char why[256];
	int ok;

	if (!c->c.ssl) {
		int rc = tun_io_full(c->io, true, c->c.fd, (void *)buf, len);

		tun_charge(c->t, TUN_STAGE_SEND, t0);
		if (rc == 0)
			tun_add(&c->t->st.wire_out_bytes, len);
		return rc;
	}
	c->io_err = 0;
	ok = SSL_write(c->c.ssl, buf, (int)len) == (int)len && !stage_flush(c);
	charge_tls(c, t0, io0, TUN_STAGE_ENCRYPT, TUN_STAGE_SEND);
	if (!ok) {
		int rc = c->io_err ? c->io_err : -EPROTO;

		if (rc != -ECANCELED && rc != -ETIMEDOUT)
			tun_fail(c->t, rc, "%s stream %u: sending: %s", c->d->name,
				 c->index, ssl_why(c, why, sizeof(why)));
		return rc;
	}
	return 0;
}

int tun_conn_read(struct tun_conn *c, void *buf, size_t len)
{
	uint64_t t0 = tun_cpu_ns(), io0 = c->tls_io_ns;
	uint8_t *p = buf;
	char why[256];

	if (!c->c.ssl) {
		int rc = tun_io_full(c->io, false, c->c.fd, p, len);

		tun_charge(c->t, TUN_STAGE_RECEIVE, t0);
		if (rc == 0)
			tun_add(&c->t->st.wire_in_bytes, len);
		return rc;
	}
	while (len) {
		int n;

		c->io_err = 0;
		n = SSL_read(c->c.ssl, p, (int)(len > INT32_MAX ? INT32_MAX : len));
		if (n <= 0) {
			int rc = c->io_err ? c->io_err : -EPROTO;

			charge_tls(c, t0, io0, TUN_STAGE_DECRYPT, TUN_STAGE_RECEIVE);
			if (rc != -ECANCELED && rc != -ETIMEDOUT &&
			    rc != -ECONNRESET)
				tun_fail(c->t, rc, "%s stream %u: receiving: %s",
					 c->d->name, c->index,
					 ssl_why(c, why, sizeof(why)));
			return rc;
		}
		p += n;
		len -= (size_t)n;
	}
	charge_tls(c, t0, io0, TUN_STAGE_DECRYPT, TUN_STAGE_RECEIVE);
	return 0;
}

/* See tun_priv.h. */
double tun_conn_link_rate(struct tun_conn *c, uint64_t now_ns)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	uint64_t wall_us, wait_us, busy_us, rwnd_us, sndbuf_us, acked;
	bool first = !c->link_t0_ns;

	if (!first && now_ns - c->link_t0_ns < TUN_LINK_WINDOW_MS * 1000000ull)
		return 0;
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(c->c.fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    len < offsetof(struct tcp_info, tcpi_sndbuf_limited) +
		  sizeof(ti.tcpi_sndbuf_limited)) {
		c->link_t0_ns = now_ns;	/* not TCP, or a kernel before 4.10 */
		c->link_wait_ns = 0;
		return 0;
	}
	wall_us = (now_ns - c->link_t0_ns) / 1000;
	wait_us = c->link_wait_ns / 1000;
	acked = ti.tcpi_bytes_acked - c->link_acked;
	busy_us = ti.tcpi_busy_time - c->link_busy_us;
	rwnd_us = ti.tcpi_rwnd_limited - c->link_rwnd_us;
	sndbuf_us = ti.tcpi_sndbuf_limited - c->link_sndbuf_us;
	c->link_t0_ns = now_ns;
	c->link_wait_ns = 0;
	c->link_acked = ti.tcpi_bytes_acked;
	c->link_busy_us = ti.tcpi_busy_time;
	c->link_rwnd_us = ti.tcpi_rwnd_limited;
	c->link_sndbuf_us = ti.tcpi_sndbuf_limited;
	if (first || wait_us * 100 < wall_us * TUN_LINK_WAIT_PCT ||
	    busy_us * 100 < wall_us * TUN_LINK_BUSY_PCT ||
	    rwnd_us * 100 > wall_us * TUN_LINK_LIMITED_PCT ||
	    sndbuf_us * 100 > wall_us * TUN_LINK_LIMITED_PCT)
		return 0;
	return (double)acked * 1e6 / (double)wall_us;
}

/* See tun_priv.h: a no-op if already stopping. */
void tun_conn_failed(struct tun_conn *c, int rc, const char *doing)
{
	struct tun *t = c->t;

	if (rc == -ECANCELED)
		return;
	if (rc == -ETIMEDOUT)
		tun_fail(t, rc, "%s stream %u: no data moved for %u ms while %s: "
			 "the peer stalled", c->d->name, c->index, t->idle_ms,
			 doing);
	else if (rc == -ECONNRESET)
		tun_fail(t, rc, "%s stream %u: the peer closed the connection "
			 "while %s", c->d->name, c->index, doing);
	else
		tun_fail(t, rc, "%s stream %u: %s: %s", c->d->name, c->index,
			 doing, strerror(-rc));
}

/* ---- the local end ---- */

ssize_t tun_local_read(struct tun_io *io, void *buf, size_t len)
{
	struct tun *t = io->t;
	uint64_t t0 = tun_cpu_ns();
	ssize_t n;

	if (t->has_local) {
		n = t->local.read(t->local.opaque, buf, len);
		if (n > 0)
			tun_progress(t);
	} else {
		n = tun_io_read(io, t->local_fd, buf, len);
	}
	if (n > 0)
		tun_add(&t->st.local_in_bytes, (uint64_t)n);
	tun_charge(t, TUN_STAGE_READ, t0);
	return n;
}

int tun_local_write(struct tun_io *io, const void *buf, size_t len)
{
	struct tun *t = io->t;
	uint64_t t0 = tun_cpu_ns();
	int rc;

	if (t->has_local) {
		rc = t->local.write(t->local.opaque, buf, len);
		if (rc == 0)
			tun_progress(t);
	} else {
		rc = tun_io_full(io, true, t->local_fd, (void *)buf, len);
	}
	if (rc == 0)
		tun_add(&t->st.local_out_bytes, len);
	tun_charge(t, TUN_STAGE_WRITE, t0);
	return rc;
}

void tun_local_write_end(struct tun *t)
{
	if (t->has_local) {
		if (t->local.write_end)
			t->local.write_end(t->local.opaque);
	} else {
		shutdown(t->local_fd, SHUT_WR);
	}
}

void tun_local_failed(struct tun *t, int rc, const char *doing)
{
	if (rc == -ECANCELED)
		return;
	/* The local side fails first: say so (tun_failed_locally). */
	pthread_mutex_lock(&t->mu);
	if (!t->failed && !t->finished)
		t->failed_local = true;
	pthread_mutex_unlock(&t->mu);
	if (rc == -ETIMEDOUT)
		tun_fail(t, rc, "no data moved for %u ms while %s the local "
			 "QEMU: the peer stalled", t->idle_ms, doing);
	else
		tun_fail(t, rc, "%s the local QEMU: %s", doing,
			 rc == -ECONNRESET ? "it closed the connection" :
			 strerror(-rc));
}

