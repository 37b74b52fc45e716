/*
 * The tunnel's insides, shared by its two files and nothing else:
 * tunnel.c, the frame pump (reader, send and receive workers, writer,
 * set-up), and tun_io.c, the ring and socket I/O with the TLS layer and
 * the local end. The public side is tunnel.h.
 */
#ifndef FERRY_TUN_PRIV_H
#define FERRY_TUN_PRIV_H

#include <liburing.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "codec.h"
#include "common/util.h"
#include "tunnel.h"

/* Room before each payload for the frame header (and alignment). */
#define TUN_HDR_ROOM 64
/* Payloads start on a cache line: buffers are carved on page
 * boundaries, and the header room keeps this alignment. */
#define TUN_PAYLOAD_ALIGN 64
#define TUN_RING_DEPTH 8
/* TLS ciphertext staging per connection: one frame and its records. */
#define TUN_STAGE_BYTES (TUN_FRAME_BYTES + (64u << 10))
/* A TLS read this large goes straight into OpenSSL's buffer. */
#define TUN_TLS_DIRECT_READ (64u << 10)
#define TUN_MAX_THREADS (2 * WIRE_STREAMS_MAX + 4)
/* Bound on waiting for a cancelled operation to complete. */
#define TUN_CANCEL_WAIT_MS 2000

/* The frame header is written into the room in front of the payload
 * (send_frame), so it must fit there, and the payload stay aligned. */
_Static_assert(TUN_HDR_ROOM >= WIRE_FRAME_HDR_BYTES,
	       "a frame header fits in front of its payload");
_Static_assert(TUN_HDR_ROOM % TUN_PAYLOAD_ALIGN == 0,
	       "the header room keeps the payload aligned");

struct tun;
struct tun_dir;

struct tun_buf {
	uint8_t *mem;		/* TUN_HDR_ROOM of room, then the payload */
	uint32_t cap;
	uint32_t len;
	uint64_t seq;
	struct tun_buf *next;
	struct tun_conn *owner;	/* receiver: the pool it goes back to */
	struct tun_buf *all_next;	/* every buffer, for tun_free() */
};

/* One thread's ring. */
struct tun_io {
	struct io_uring ring;
	struct tun *t;
	uint64_t tag;
	bool ready;
	bool fixed;		/* the arena is registered */
};

struct tun_conn {
	struct tun *t;
	struct tun_dir *d;
	struct net_conn c;
	uint32_t index;
	struct tun_io *io;	/* the ring of the thread driving it */
	/* TLS staging (ciphertext) */
	uint8_t *stage;
	size_t stage_len, stage_off;
	uint64_t tls_io_ns;	/* CPU time in socket I/O inside SSL calls */
	int io_err;
	/* sending: frames queued for this connection, in seq order */
	struct tun_buf *q_head, *q_tail;
	bool q_end;
	struct tun_buf *out;	/* compressed output */
	struct codec_auto autop;
	int last_pick;		/* auto's previous choice, for the debug log */
	uint32_t skip;		/* frames to send raw untried (TUN_SKIP_FRAMES) */
	uint32_t backoff;	/* the last skip set; 0 after a frame that shrank */
	/* The link meter (tun_conn_link_rate()): TCP_INFO's counters at the
	 * start of its window, when that was (0: not started), and the time
	 * the sender waited in writes to the connection since. */
	uint64_t link_t0_ns, link_acked, link_busy_us, link_rwnd_us;
	uint64_t link_sndbuf_us, link_wait_ns;
	/* receiving */
	struct tun_buf *free;
	struct tun_buf *scratch;	/* compressed payload as received */
	uint64_t next_seq;
	struct codec_ctx *codec;
};

struct tun_dir {
	struct tun *t;
	const char *name;	/* "data" or "return" */
	bool sending;		/* this process sends in this direction */
	uint16_t frame_type;
	struct tun_conn *conns;
	uint32_t nconns;
	uint32_t frame_max;	/* the most a frame decodes to */
	uint32_t frame_build;	/* sender: what it reads into a frame */
	enum ferry_codec codec;
	int codec_level;
	bool inline_io;		/* one connection: no hand-off */
	bool raw_only;		/* never compressed (a return path) */
	/* zstd frames may go (sending) or come (receiving, announced); they
	 * wait for zstd_ready: the primer thread made the buffers. */
	bool zstd;
	bool zstd_ready;	/* under t->mu; read atomically */
	/* Raw frames between the local QEMU's socket and the one plaintext
	 * connection go through this pipe by splice, not through ferry's
	 * memory (dir_splice_setup(): FERRY_TUNNEL_SPLICE). */
	bool splice;
	int pipe[2];
	uint32_t pipe_cap;
	/* sender */
	struct tun_buf *free;
	uint64_t next_seq;
	uint32_t conns_done;
	/* receiver */
	struct tun_buf **slots;
	uint32_t nslots;
	uint64_t write_seq;
	uint64_t end_seq;
	bool end_known;
	uint32_t conns_ended;
	bool done;
};

struct tun {
	int local_fd;
	struct tun_local local;
	bool has_local;
	struct tun_conn *all_conns;	/* nstreams + 1: forward, then return */
	uint32_t nall;
	struct tun_dir fwd, ret;
	uint32_t idle_ms;

	uint8_t *arena;
	size_t arena_bytes, arena_used;
	struct tun_buf *all_bufs;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool failed, finished, stopping;
	bool closing;		/* tun_free() runs: the primer stops */
	bool failed_local;	/* the first failure was the local QEMU side */
	struct ferry_error error;
	int done_fd;
	pthread_t threads[TUN_MAX_THREADS];
	uint32_t nthreads;

	uint64_t last_progress_ms;	/* atomic */
	struct tun_stats st;		/* atomic fields */
	struct pacer *pacer;		/* a reference, or NULL: not paced */
	bool urgent;			/* charge the pacer, never wait */
	uint64_t link_bytes_per_s;	/* for auto (tun_opts); 0: unknown */
	/* A companion tunnel (post-copy's preempt channel) that lives and
	 * dies with this one; set once by tun_adopt(), read atomically. */
	struct tun *companion;		/* owned */
	struct tun *parent;		/* the one that owns this */
};

static inline uint8_t *tun_payload(const struct tun_buf *b)
{
	return b->mem + TUN_HDR_ROOM;
}

static inline void tun_add(uint64_t *p, uint64_t v)
{
	__atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/* This thread's CPU time: what a stage costs, whatever else runs. */
static inline uint64_t tun_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Charge the CPU time since @t0 (tun_cpu_ns()) to stage @s. */
static inline void tun_charge(struct tun *t, enum tun_stage s, uint64_t t0)
{
	tun_add(&t->st.stage_cpu_ns[s], tun_cpu_ns() - t0);
}

/* Something moved: the idle clock starts again. */
static inline void tun_progress(struct tun *t)
{
	__atomic_store_n(&t->last_progress_ms, ferry_now_ms(), __ATOMIC_RELAXED);
}

static inline bool tun_stopping(struct tun *t)
{
	return __atomic_load_n(&t->stopping, __ATOMIC_RELAXED);
}

/* ---- tunnel.c ---- */

/* The first failure wins; everything stops. Returns @code. */
int tun_fail(struct tun *t, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- tun_io.c: rings ---- */

/* A ring for the calling thread, with the arena registered when the
 * locked-memory limit allows. 0 or -errno. */
int tun_io_init(struct tun_io *io, struct tun *t);
void tun_io_fini(struct tun_io *io);
/*
 * One read of up to @len bytes; returns the byte count (0 at end of
 * stream), -ECANCELED when the tunnel stops, -ETIMEDOUT when nothing moved
 * anywhere in the tunnel for the idle timeout, or -errno.
 */
ssize_t tun_io_read(struct tun_io *io, int fd, void *buf, size_t len);
/* All of @len on the stream socket @fd (every fd a tunnel moves bytes on
 * is one), or an error (-ECONNRESET when the peer closed). */
int tun_io_full(struct tun_io *io, bool wr, int fd, void *buf, size_t len);
/* The same; @more: more follows at once (MSG_MORE: a frame header is
 * not sent alone ahead of its payload). */
int tun_io_full_more(struct tun_io *io, bool wr, int fd, void *buf, size_t len,
		     bool more);
/*
 * Without copying through user memory (splice), errors as tun_io_read();
 * @sock has a send timeout of TUN_TICK_MS. In: up to @len bytes from the
 * socket @sock into the pipe @pipe_w, the count moved, 0 at the end of
 * @sock's stream. Out: all of @len from the pipe @pipe_r into @sock, 0.
 */
ssize_t tun_io_splice_in(struct tun_io *io, int sock, int pipe_w, size_t len);
int tun_io_splice_out(struct tun_io *io, int pipe_r, int sock, size_t len);

/* ---- tun_io.c: connections, plaintext or TLS ---- */

/* Once per process, before any tun_conn_tls_attach(): 0 or -ENOMEM. */
int tun_tls_init(void);
/* Put @c's SSL object on a BIO over its thread's ring, staging through
 * c->stage (TUN_STAGE_BYTES, carved by the caller). 0 or -ENOMEM. */
int tun_conn_tls_attach(struct tun_conn *c, struct ferry_error *err);
/* All of @len to the peer; a TLS failure fails the tunnel. 0 or -errno. */
int tun_conn_write(struct tun_conn *c, const void *buf, size_t len);
/* All of @len from the peer; a TLS failure fails the tunnel. 0 or -errno. */
int tun_conn_read(struct tun_conn *c, void *buf, size_t len);
/* Fail the tunnel for an I/O error on @c (nothing when it was stopped). */
void tun_conn_failed(struct tun_conn *c, int rc, const char *doing);
/*
 * The link meter: once per TUN_LINK_WINDOW_MS of @c, the rate at which
 * its TCP connection got bytes acknowledged over that window, bytes/s,
 * when the link was what set the pace: the sender was backlogged (it
 * waited in writes to the connection, c->link_wait_ns, at least
 * TUN_LINK_WAIT_PCT of the window: the socket's buffer was full, so
 * compressing or reading QEMU's stream was not what held it back), the
 * connection was sending (TCP_INFO's busy time at least TUN_LINK_BUSY_PCT
 * of it), and neither the receiver's window nor the socket's own buffer
 * limited it (at most TUN_LINK_LIMITED_PCT each: raw would meet a slow
 * peer as much, and the buffer grows). 0 otherwise: no window ended, the
 * window says nothing of the link, or the socket is not TCP.
 *
 * The busy time alone is not enough: it runs while anything is unacked,
 * so on a path whose round trip is longer than the gap between frames a
 * sender that cannot keep up looks busy at its own rate. The kernel's
 * delivery rate is not used: its samples span a round trip, and a token
 * bucket's burst makes them overshoot (2.5x the rate, measured on a
 * 1 Gbit/s tbf link). The kernel counts busy and limited time in jiffies
 * (4 ms at HZ=250): a window is 25 of them.
 */
double tun_conn_link_rate(struct tun_conn *c, uint64_t now_ns);

#define TUN_LINK_WINDOW_MS 100
#define TUN_LINK_WAIT_PCT 25
#define TUN_LINK_BUSY_PCT 90
#define TUN_LINK_LIMITED_PCT 10

/* ---- tun_io.c: the local end (QEMU's socket, or struct tun_local) ---- */

ssize_t tun_local_read(struct tun_io *io, void *buf, size_t len);
int tun_local_write(struct tun_io *io, const void *buf, size_t len);
/* The peer's stream ended: so does the local QEMU's input. */
void tun_local_write_end(struct tun *t);
/* Fail the tunnel for an error on the local side, and say it was local. */
void tun_local_failed(struct tun *t, int rc, const char *doing);

#endif /* FERRY_TUN_PRIV_H */
