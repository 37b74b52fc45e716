/*
 * Frame codecs (LZ4 blocks, zstd frames) and the auto policy that picks one
 * per frame from measurements.
 *
 * The policy's model, per stream: sending one raw byte costs
 *     cost(codec) = max(cpu(codec), ratio(codec) * link)
 * in ns (compressing a frame overlaps the kernel sending the previous one),
 * where cpu is the compressor's measured wall time per input byte,
 * ratio its measured output/input on recent frames, and link the measured
 * time per wire byte (the slower of the link and the --bandwidth cap).
 * "raw" costs link. The cheapest wins, with a margin that keeps raw on a
 * fast link where compression gains little, so auto is never slower than
 * none. Estimates decay (EWMA), and codecs not in use are re-measured on
 * every CODEC_PROBE_EVERY-th frame (the probe's output is sent when smaller,
 * so a probe costs only its CPU time); a codec whose CPU time alone exceeds
 * the cost of sending raw is re-measured 16 times less often.
 */
#ifndef FERRY_CODEC_H
#define FERRY_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"
#include "wire.h"

#define CODEC_ZSTD_LEVEL_DEFAULT 1
#define CODEC_ZSTD_LEVEL_AUTO 3		/* zstd's level under --compress auto */
#define CODEC_ZSTD_LEVEL_MIN (-7)
#define CODEC_ZSTD_LEVEL_MAX 19
/* Probe an unused codec once every this many frames. */
#define CODEC_PROBE_EVERY 16
/* ... and a codec that cannot win on this link this many times less often. */
#define CODEC_PROBE_HOPELESS_FACTOR 16
/* A codec must beat raw by this factor (cost < raw * margin) to be used. */
#define CODEC_AUTO_MARGIN 0.85
/* Frames smaller than this teach the auto policy nothing. */
#define CODEC_AUTO_MIN_SAMPLE_BYTES (64u << 10)
/* After a link probe, app-limited samples must be this many times longer
 * a run to raise the estimate (a shaper's bursts look like a fast link). */
#define CODEC_LINK_PROBED_STREAK_FACTOR 8
/* App-limited link samples this much faster, this many in a row, replace
 * the estimate (one alone is noise). */
#define CODEC_LINK_FAST_FACTOR 2.0
#define CODEC_LINK_FAST_STREAK 8
/* EWMA weight of a new sample. */
#define CODEC_EWMA_ALPHA 0.25

struct codec_ctx;

/* A compressor + decompressor pair for one thread. */
int codec_ctx_new(struct codec_ctx **out, int zstd_level,
		  struct ferry_error *err);
void codec_ctx_free(struct codec_ctx *c);

/* Worst-case output size for @raw input bytes, for any codec. */
size_t codec_bound(size_t raw);

/*
 * Compress @len bytes into @dst (capacity @cap >= codec_bound(len)).
 * Returns the compressed size, or 0 when the output would not be smaller
 * than the input (the caller sends the frame raw).
 */
size_t codec_compress(struct codec_ctx *c, enum wire_codec codec,
		      const void *src, size_t len, void *dst, size_t cap);

/*
 * Decode exactly @raw_len bytes into @dst from @len bytes at @src. A
 * payload that fails to decode or decodes to a different size than
 * declared is an error (-EBADMSG) naming @seq.
 */
int codec_decompress(struct codec_ctx *c, enum wire_codec codec,
		     const void *src, size_t len, void *dst, size_t raw_len,
		     uint64_t seq, struct ferry_error *err);

const char *codec_wire_name(enum wire_codec codec);

/* The auto policy's state; one per sending stream, no locking. */
struct codec_est {
	double cpu_ns_per_byte;	/* compressor CPU time per input byte */
	double ratio;		/* output / input */
	bool valid;
};

struct codec_auto {
	struct codec_est est[WIRE_CODEC_MAX + 1];
	double link_ns_per_byte;	/* measured */
	double cap_ns_per_byte;		/* from --bandwidth, 0 when uncapped */
	uint64_t frames;
	uint32_t fast_streak;	/* app-limited samples well above the estimate */
	bool link_valid;
	bool link_probed;	/* the estimate started from the link probe */
};

void codec_auto_init(struct codec_auto *a, uint64_t cap_bytes_per_s);

/*
 * The codec to use for the next frame, and (when *probe != RAW) a codec to
 * try on it for measurement.
 */
enum wire_codec codec_auto_pick(struct codec_auto *a, enum wire_codec *probe);

void codec_auto_note_compress(struct codec_auto *a, enum wire_codec codec,
			      size_t in, size_t out, uint64_t ns);
/*
 * A link measurement in bytes/s. @app_limited: the sender did not keep the
 * link busy, so the real rate is at least this (TCP_INFO's flag).
 */
void codec_auto_note_link(struct codec_auto *a, uint64_t bytes_per_s,
			  bool app_limited);

/*
 * Start from a measured link rate (the link probe's), so that the first
 * TCP_INFO samples, often app-limited bursts, do not set the estimate.
 * From then on app-limited samples raise it only after a long run: a
 * sender held back by its compressor sees bursts through a shaper (tbf lets
 * a burst pass at line rate) that look like a faster link; samples of a
 * busy sender still move the estimate either way.
 */
void codec_auto_hint_link(struct codec_auto *a, uint64_t bytes_per_s);

/* Cost per raw byte of @codec under the current estimates (ns). */
double codec_auto_cost(const struct codec_auto *a, enum wire_codec codec);

#endif /* FERRY_CODEC_H */
