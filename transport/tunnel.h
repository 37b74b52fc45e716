/*
 * The tunnel: carries a QEMU migration stream between two ferry processes
 * over N data connections (the forward direction, source -> destination)
 * and one return connection (QEMU's return path, destination -> source),
 * with optional compression and TLS, on io_uring.
 *
 * Each direction is a sender and a receiver:
 *
 *   sender    a reader takes bytes from the local QEMU into pool buffers
 *             and numbers them (seq); frame seq goes to connection
 *             seq % N, whose worker thread compresses it (or not), paces it
 *             (--bandwidth: the migration's pacer, pace.h), encrypts it
 *             (TLS) and writes it;
 *   receiver  one worker per connection reads and checks frames (length
 *             against frame_max before anything else, sequence, codec),
 *             decodes them, and a writer hands them to the local QEMU in
 *             seq order.
 *
 * With one connection the reader compresses and sends itself, and the
 * receiving worker writes itself: no hand-off at all.
 *
 * When the local QEMU closes its side, every connection carries an END
 * frame; the peer then shuts the write side of its own QEMU socket. The
 * tunnel ends when both directions ended, or at the first error; it then
 * shuts every socket down so both QEMUs see the stream end (a QEMU whose
 * migration stream breaks fails the migration; the source guest runs on).
 *
 * Buffers are allocated once, in one arena registered with each thread's
 * ring (fixed buffers), so the hot path neither allocates nor pins pages.
 */
#ifndef FERRY_TUNNEL_H
#define FERRY_TUNNEL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry.h"
#include "net.h"
#include "pace.h"
#include "wire.h"

/* Payload of the frames a sender builds; QEMU writes in bursts this big. */
#define TUN_FRAME_BYTES (1024u << 10)
/* Buffers per connection and direction: enough to overlap the stages. */
#define TUN_BUFS_PER_CONN 4
/* No byte moved in either direction for this long: the peer stalled. */
#define TUN_IDLE_TIMEOUT_MS 30000
/* A tunnel that may stay quiet all along (the preempt channel). */
#define TUN_IDLE_NEVER UINT32_MAX
/* The smallest frame a sender builds to keep its queue short. */
#define TUN_FRAME_MIN_BYTES (64u << 10)
/* A frame that its codec shrank by less than 1/TUN_SHRINK_MIN_DIV says the
 * memory here may not compress: the next frames go raw without a try (zstd
 * with long distance matching spends twice raw's whole cost on random
 * memory), 1, then 2, 4, up to TUN_SKIP_FRAMES after each such frame in a
 * row, back to 1 after a frame that shrinks; then the codec tries again.
 * Raw frames are outside the zstd stream: what they carry is no history
 * for later frames. */
#define TUN_SHRINK_MIN_DIV 64
#define TUN_SKIP_FRAMES 8
/* How often a waiting thread looks at the stop flag and the idle clock. */
#define TUN_TICK_MS 250

enum tun_role {
	TUN_SOURCE = 1,	/* local QEMU is the migration source */
	TUN_DEST = 2,
};

/*
 * The local end, when it is not a QEMU socket (benchmarks and tests move
 * memory through the tunnel). All calls come from tunnel threads; read and
 * write block. read returns > 0 bytes, 0 at the end of the stream, or
 * -errno; write returns 0 or -errno.
 */
struct tun_local {
	ssize_t (*read)(void *opaque, void *buf, size_t len);
	int (*write)(void *opaque, const void *buf, size_t len);
	void (*write_end)(void *opaque);	/* the peer's stream ended */
	void *opaque;
};

struct tun_opts {
	enum tun_role role;
	int local_fd;			/* QEMU's socket; -1 with @local */
	const struct tun_local *local;	/* instead of local_fd, or NULL */
	/* Connections, already past the hello (and the TLS handshake). The
	 * tunnel owns them from tun_start() on, also when it fails. */
	struct net_conn *streams;	/* nstreams forward connections */
	uint32_t nstreams;
	/* The return connection; fd -1: a one-way tunnel (post-copy's
	 * preempt channel, on which the destination never writes). */
	struct net_conn ret;
	/* The forward direction's frame size: the most the receiver accepts
	 * (from the hello). 0: TUN_FRAME_BYTES. */
	uint32_t frame_max;
	/* The most a sender holds in its frames, in all: each frame it
	 * builds holds this much divided by its buffers, within
	 * [TUN_FRAME_MIN_BYTES, frame_max], so that the bytes ferry queues
	 * drain in a small share of the downtime. 0: frame_max frames. */
	uint32_t hold_bytes;
	enum ferry_codec codec;		/* the sender of the forward direction */
	int codec_level;
	/* TUN_DEST: the source announced zstd frames (WIRE_OPT_ZSTD): the
	 * decoders are made ready as the tunnel starts; without, a zstd
	 * frame ends the tunnel. A source's codec left 0 is auto, which
	 * may send zstd: its destination needs this set. */
	bool zstd;
	/* The link's rate as ferry knows it (the probe's measure, or the
	 * cap), bytes/s; 0: unknown. auto does not try raw where it cannot
	 * win (codec_auto_set_link()). */
	uint64_t link_bytes_per_s;
	/* Paces the forward direction's frames on the wire (--bandwidth),
	 * shared with the migration's other tunnels; the tunnel takes its
	 * own reference. NULL: not paced. */
	struct pacer *pacer;
	/* A priority stream: its frames are counted in the pacer but never
	 * wait on it (the bulk stream's backlog must not hold them up). */
	bool urgent;
	uint32_t idle_timeout_ms;	/* 0: TUN_IDLE_TIMEOUT_MS; TUN_IDLE_NEVER */
};

/*
 * Where the tunnel's CPU goes, per byte: the thread CPU time of each stage
 * (a sending side reads, compresses, encrypts, sends; a receiving side
 * receives, decrypts, decompresses, writes), so a slow tunnel says which
 * stage to cut. Encryption is SSL_write's time less its socket I/O, and
 * decryption SSL_read's less its socket I/O.
 */
enum tun_stage {
	TUN_STAGE_READ,		/* from the local QEMU */
	TUN_STAGE_COMPRESS,
	TUN_STAGE_ENCRYPT,
	TUN_STAGE_SEND,		/* to the network */
	TUN_STAGE_RECEIVE,	/* from the network */
	TUN_STAGE_DECRYPT,
	TUN_STAGE_DECOMPRESS,
	TUN_STAGE_WRITE,	/* to the local QEMU */
	TUN_STAGES
};

const char *tun_stage_name(enum tun_stage s);

/* Every field a uint64_t counter: tun_stats() copies them as an array. */
struct tun_stats {
	uint64_t local_in_bytes;	/* read from the local QEMU */
	uint64_t local_out_bytes;	/* written to the local QEMU */
	uint64_t wire_out_bytes;	/* sent on the connections (after TLS) */
	uint64_t wire_in_bytes;
	uint64_t frames_out;
	uint64_t frames_in;
	uint64_t spliced_bytes;		/* of local_in/out: moved by splice */
	uint64_t frames_codec[WIRE_CODEC_MAX + 1];	/* sent, per codec */
	uint64_t stage_cpu_ns[TUN_STAGES];		/* thread CPU time */
};

struct tun;

int tun_start(struct tun **out, const struct tun_opts *o,
	      struct ferry_error *err);

/* An eventfd that becomes readable when the tunnel has ended. */
int tun_done_fd(const struct tun *t);
bool tun_finished(const struct tun *t);
/* It failed, and first on the local QEMU's side (not a peer's). */
bool tun_failed_locally(const struct tun *t);

/* Copy of the counters; safe while the tunnel runs. */
void tun_stats(const struct tun *t, struct tun_stats *s);

/* Stop now (shuts every socket down). Thread-safe. */
void tun_cancel(struct tun *t);

/*
 * Wait up to timeout_ms for the end; returns 0 when both directions ended
 * cleanly, -ETIMEDOUT while running, or the error that ended it.
 */
int tun_wait(struct tun *t, int timeout_ms, struct ferry_error *err);

/* Cancel if running, join the threads, close everything (a companion's
 * too). NULL is fine. */
void tun_free(struct tun *t);

/*
 * @t owns @companion from now on (post-copy's preempt channel beside the
 * main stream): a failure of either ends both, with the companion's error
 * named as such; tun_wait() waits for both, tun_stats() counts both, and
 * tun_free(@t) frees both. Call once, from the thread that owns @t.
 */
void tun_adopt(struct tun *t, struct tun *companion);

#endif /* FERRY_TUNNEL_H */
