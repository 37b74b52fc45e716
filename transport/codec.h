/*
 * Frame codecs (LZ4 blocks, zstd frames) and the auto policy that picks one
 * from what it measures end to end.
 *
 * auto runs in epochs, one codec each, and scores an epoch by the raw
 * bytes of QEMU's stream it delivered per second: whatever is slowest end
 * to end (the link, the --bandwidth cap, the receiver's decompression,
 * its QEMU, a compressor taking CPU from the guests and from QEMU's own
 * migration thread on shared cores) is in the score, as it is in the
 * migration's time, and when QEMU itself is what is slow every codec
 * scores alike and raw, which takes no CPU, is kept. First each codec gets
 * an epoch (lz4, zstd, raw: on a link slow enough for the tunnel to be
 * used, raw is the likeliest to lose); then the best is kept, and each other codec is
 * tried again for one epoch now and then: every CODEC_EXPLORE_EVERY epochs
 * when it scored close to the best, up to CODEC_EXPLORE_MAX_EVERY when it
 * scored far below (its epochs are the price of noticing a change). A codec
 * must beat raw by CODEC_AUTO_MARGIN to be kept: raw takes no CPU from the
 * guests. The first CODEC_EPOCH_WARM_MS of an epoch after a switch are not
 * scored: the socket still drains what the last codec queued.
 *
 * A codec on trial (its first epoch, or an exploration) whose scored
 * frames deliver less than 1/CODEC_TRIAL_LOSE of another codec's score
 * ends its epoch after CODEC_TRIAL_MIN_MS of them, scored as far as it
 * ran: that far behind it cannot be the best, and the rest of its epoch
 * would only cost time (raw on text memory over a 1 Gbit/s link delivers
 * a quarter of lz4's rate: its whole first epoch cost about 0.15 s of a
 * 2.5 s migration). The verdict waits out the warm-up as a score does:
 * what the last codec queued can make the new one look slower as well as
 * faster (a stream compressed 3x ahead of raw drains at a third of raw's
 * rate when the receiving QEMU is what is slow).
 *
 * Raw's first trial needs no frame at all where the link's rate is known:
 * raw cannot deliver faster than the link, so when lz4 or zstd already
 * delivers enough more than that, raw is scored at the link's rate and
 * explored later like any codec far behind. Enough is CODEC_TRIAL_LOSE
 * times the probe's rate or the cap (codec_auto_set_link()); once the
 * stream's own connection measured the link while a codec kept it busy
 * (codec_auto_note_link()), CODEC_LINK_SEEN_MARGIN times the larger of
 * that measure and the probe's.
 */
#ifndef FERRY_CODEC_H
#define FERRY_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"
#include "wire.h"

#define CODEC_ZSTD_LEVEL_DEFAULT 1
#define CODEC_ZSTD_LEVEL_MIN (-7)
#define CODEC_ZSTD_LEVEL_MAX 19
/* Epochs: the first of each codec, the later ones, and the unscored
 * start of an epoch after a switch. */
#define CODEC_EPOCH_FIRST_MS 200
#define CODEC_EPOCH_MS 500
#define CODEC_EPOCH_WARM_MS 50
/* A trial below 1/CODEC_TRIAL_LOSE of the best score so far ends once it
 * was scored this long: a 2x gap is far beyond the noise of 25 ms of
 * whole frames. A stall of QEMU's as long can still lose a codec its
 * trial, as it can shift a whole epoch's score; it is tried again, as
 * any codec far behind is. */
#define CODEC_TRIAL_MIN_MS 25
#define CODEC_TRIAL_LOSE 2.0
/* The wire seen this much faster than the link's known rate: the rate
 * was measured low, and settles nothing. */
#define CODEC_LINK_SLACK 1.1
/* A link rate measured on the stream's own connection while it streams
 * (codec_auto_note_link()) settles raw's trial once another codec
 * delivers this much more: the margin of a measure, not of a guess. */
#define CODEC_LINK_SEEN_MARGIN 1.25
/* An epoch is scored once it moved this much (else it runs on, up to
 * CODEC_EPOCH_MAX_MS, and then ends unscored: too little to say). */
#define CODEC_EPOCH_MIN_BYTES (2u << 20)
#define CODEC_EPOCH_MAX_MS 5000
/* Another codec is tried every this many epochs, times (best / its score)
 * squared, at most CODEC_EXPLORE_MAX_EVERY. */
#define CODEC_EXPLORE_EVERY 8
#define CODEC_EXPLORE_MAX_EVERY 64
/* A codec is kept over raw only when it scores this much better. */
#define CODEC_AUTO_MARGIN 1.05
/* EWMA weight of a new epoch's score. */
#define CODEC_EWMA_ALPHA 0.5

/*
 * zstd frames on a connection are chunks of one zstd stream, flushed at
 * each frame, so each can refer back to what the connection carried
 * before, as far as the window reaches: CODEC_WINDOW_BUDGET over a
 * direction's streams (each stream its own window, both sides), between
 * one frame's worth and CODEC_WINDOW_LOG_MAX. The decompressor refuses a
 * stream that asks for more than its window.
 */
#define CODEC_WINDOW_BUDGET (64u << 20)
#define CODEC_WINDOW_LOG_MIN 20
#define CODEC_WINDOW_LOG_MAX 25

struct codec_ctx;

/* A compressor + decompressor pair for one connection's streams, one
 * thread at a time; its zstd window starts at CODEC_WINDOW_LOG_MIN. */
int codec_ctx_new(struct codec_ctx **out, int zstd_level,
		  struct ferry_error *err);
void codec_ctx_free(struct codec_ctx *c);
/* Its zstd window, 2^@window_log bytes: before the first zstd frame. */
void codec_ctx_set_window(struct codec_ctx *c, int window_log);
/* Make its zstd buffers for its window now, for compressing and/or
 * decompressing, not in the first frames; both streams then start over. */
void codec_ctx_prime(struct codec_ctx *c, bool compress, bool decompress);
/* The bytes its zstd contexts hold. */
size_t codec_ctx_memory(const struct codec_ctx *c);
/* Both zstd streams start over (after an error, or for another input). */
void codec_ctx_reset(struct codec_ctx *c);
/* The window of each of @streams connections of one direction. */
int codec_window_log(uint32_t streams);
/* The most raw bytes a zstd chunk may hold when its output must fit in
 * @frame_max, whatever the bytes. */
uint32_t codec_zstd_in_max(uint32_t frame_max);

/* Worst-case output size for @raw input bytes, for any codec. */
size_t codec_bound(size_t raw);

/*
 * Compress @len bytes into @dst (capacity @cap >= codec_bound(len)).
 * LZ4: the compressed size, or 0 when the output would not be smaller
 * than the input (the caller sends the frame raw). zstd: the stream's next
 * chunk, which must be sent whatever its size (the decoder's history must
 * see every byte), or 0 on an error, after which the stream is unusable.
 * Nothing to compress (@len 0): 0, the stream untouched.
 */
size_t codec_compress(struct codec_ctx *c, enum wire_codec codec,
		      const void *src, size_t len, void *dst, size_t cap);

/*
 * Decode exactly @raw_len bytes into @dst from @len bytes at @src (zstd:
 * the stream's next chunk). A payload that fails to decode or decodes to
 * a different size than declared is an error (-EBADMSG) naming @seq.
 */
int codec_decompress(struct codec_ctx *c, enum wire_codec codec,
		     const void *src, size_t len, void *dst, size_t raw_len,
		     uint64_t seq, struct ferry_error *err);

const char *codec_wire_name(enum wire_codec codec);

/* The auto policy's state; one per sending stream, no locking. */
struct codec_auto {
	/* raw bytes per busy second, per codec; 0 until scored */
	double score[WIRE_CODEC_MAX + 1];
	enum wire_codec cur;		/* this epoch's codec */
	enum wire_codec best;		/* the one kept between explorations */
	uint64_t epoch_t0_ns;		/* this epoch's start (0: none yet) */
	uint64_t scored_t0_ns;		/* its warm-up's end */
	uint64_t window_t0_ns, last_ns;	/* the first and last frame scored */
	uint64_t bytes;			/* in the scored window */
	uint64_t wire;			/* what they took on the wire */
	double wire_top;		/* the most wire bytes/s seen, scored */
	double link;			/* the link's bytes/s as known; 0: not */
	double link_seen;		/* the most measured while streaming */
	bool raw_from_link;		/* raw's score is the link's, not its own */
	uint64_t epochs;		/* epochs ended */
	uint64_t explored_at[WIRE_CODEC_MAX + 1];	/* epoch of last try */
	uint32_t tried;			/* codecs that had an epoch, bit each */
};

void codec_auto_init(struct codec_auto *a);

/*
 * What the link carries, bytes/s (the probe's measure or the cap, this
 * stream's share; 0: unknown). Raw cannot deliver QEMU's stream faster
 * than the link carries it: when another codec already delivers
 * CODEC_TRIAL_LOSE times that, raw's first trial is settled without
 * sending a frame, scored at the link's rate, unless the wire was seen
 * carrying more than CODEC_LINK_SLACK times the link's rate (the measure
 * was low). Raw is still explored later, like any codec far behind.
 */
void codec_auto_set_link(struct codec_auto *a, double bytes_per_s);

/*
 * What the link carries as measured on this stream's own connection while
 * it streams, bytes/s: the tunnel's link meter, over windows in which a
 * codec kept the link busy and neither the sender, the receiver nor the
 * socket's buffer held it back; 0: no measure. The most such measure
 * counts. Once there is one, raw's trial is settled when another codec
 * delivers CODEC_LINK_SEEN_MARGIN times the larger of it and the probe's
 * rate (the margin of a measure on this very stream in its steady state,
 * where a probe is a few milliseconds of a fresh connection, and can be
 * low by far on a long path). While raw's score is the link's, it follows
 * the measure up (a window that overshoots can so make raw look better
 * than it is until raw's own epoch, which replaces it, is scored).
 */
void codec_auto_note_link(struct codec_auto *a, double bytes_per_s);

/* The codec for the next frame, at @now_ns (monotonic): this epoch's;
 * an epoch that is over is scored and the next one chosen. */
enum wire_codec codec_auto_pick(struct codec_auto *a, uint64_t now_ns);

/* @raw_bytes of QEMU's stream were sent as @wire_bytes, done at @now_ns. */
void codec_auto_note_sent(struct codec_auto *a, uint64_t raw_bytes,
			  uint64_t wire_bytes, uint64_t now_ns);

#endif /* FERRY_CODEC_H */
