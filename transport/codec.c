/* LZ4 and zstd frame codecs, and the auto policy (see codec.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <zstd.h>

#include "codec.h"

struct codec_ctx {
	ZSTD_CCtx *zc;
	ZSTD_DCtx *zd;
	void *lz4_state;
	int zstd_level;
};

int codec_ctx_new(struct codec_ctx **out, int zstd_level,
		  struct ferry_error *err)
{
	struct codec_ctx *c = calloc(1, sizeof(*c));

	*out = NULL;
	if (!c)
		return ferry_error_set(err, -ENOMEM, "out of memory for a codec");
	c->zstd_level = zstd_level ? zstd_level : CODEC_ZSTD_LEVEL_DEFAULT;
	c->zc = ZSTD_createCCtx();
	c->zd = ZSTD_createDCtx();
	c->lz4_state = malloc((size_t)LZ4_sizeofState());
	if (!c->zc || !c->zd || !c->lz4_state) {
		codec_ctx_free(c);
		return ferry_error_set(err, -ENOMEM, "out of memory for a codec");
	}
	ZSTD_CCtx_setParameter(c->zc, ZSTD_c_compressionLevel, c->zstd_level);
	ZSTD_CCtx_setParameter(c->zc, ZSTD_c_checksumFlag, 0);
	ZSTD_CCtx_setParameter(c->zc, ZSTD_c_contentSizeFlag, 1);
	*out = c;
	return 0;
}

void codec_ctx_free(struct codec_ctx *c)
{
	if (!c)
		return;
	ZSTD_freeCCtx(c->zc);
	ZSTD_freeDCtx(c->zd);
	free(c->lz4_state);
	free(c);
}

size_t codec_bound(size_t raw)
{
	size_t a = (size_t)LZ4_compressBound((int)raw);
	size_t b = ZSTD_compressBound(raw);

	return a > b ? a : b;
}

size_t codec_compress(struct codec_ctx *c, enum wire_codec codec,
		      const void *src, size_t len, void *dst, size_t cap)
{
	size_t n = 0;

	switch (codec) {
	case WIRE_CODEC_LZ4: {
		int r = LZ4_compress_fast_extState(c->lz4_state, src, dst,
						   (int)len, (int)cap, 1);
		n = r > 0 ? (size_t)r : 0;
		break;
	}
	case WIRE_CODEC_ZSTD:
		n = ZSTD_compress2(c->zc, dst, cap, src, len);
		if (ZSTD_isError(n))
			n = 0;
		break;
	case WIRE_CODEC_RAW:
		return 0;
	}
	return n < len ? n : 0;
}

int codec_decompress(struct codec_ctx *c, enum wire_codec codec,
		     const void *src, size_t len, void *dst, size_t raw_len,
		     uint64_t seq, struct ferry_error *err)
{
	unsigned long long s = (unsigned long long)seq;

	switch (codec) {
	case WIRE_CODEC_LZ4: {
		int r = LZ4_decompress_safe(src, dst, (int)len, (int)raw_len);

		if (r < 0)
			return ferry_error_set(err, -EBADMSG,
				"frame %llu: LZ4 payload is corrupt or decodes to "
				"more than the declared %zu bytes", s, raw_len);
		if ((size_t)r != raw_len)
			return ferry_error_set(err, -EBADMSG,
				"frame %llu: LZ4 payload decodes to %d bytes, "
				"declared %zu", s, r, raw_len);
		return 0;
	}
	case WIRE_CODEC_ZSTD: {
		unsigned long long want = ZSTD_getFrameContentSize(src, len);
		size_t r;

		if (want == ZSTD_CONTENTSIZE_ERROR)
			return ferry_error_set(err, -EBADMSG,
				"frame %llu: not a zstd frame", s);
		if (want != ZSTD_CONTENTSIZE_UNKNOWN && want != raw_len)
			return ferry_error_set(err, -EBADMSG,
				"frame %llu: zstd payload declares %llu bytes, "
				"frame header %zu", s, want, raw_len);
		r = ZSTD_decompressDCtx(c->zd, dst, raw_len, src, len);
		if (ZSTD_isError(r))
			return ferry_error_set(err, -EBADMSG,
				"frame %llu: zstd payload does not decode into "
				"the declared %zu bytes: %s", s, raw_len,
				ZSTD_getErrorName(r));
		if (r != raw_len)
			return ferry_error_set(err, -EBADMSG,
				"frame %llu: zstd payload decodes to %zu bytes, "
				"declared %zu", s, r, raw_len);
		return 0;
	}
	case WIRE_CODEC_RAW:
		if (len != raw_len)
			return ferry_error_set(err, -EBADMSG,
				"frame %llu: raw length mismatch", s);
		memcpy(dst, src, len);
		return 0;
	}
	return ferry_error_set(err, -EBADMSG, "frame %llu: unknown codec", s);
}

const char *codec_wire_name(enum wire_codec codec)
{
	switch (codec) {
	case WIRE_CODEC_RAW: return "raw";
	case WIRE_CODEC_LZ4: return "lz4";
	case WIRE_CODEC_ZSTD: return "zstd";
	}
	return "?";
}

const char *ferry_codec_name(enum ferry_codec codec)
{
	switch (codec) {
	case FERRY_CODEC_AUTO: return "auto";
	case FERRY_CODEC_NONE: return "none";
	case FERRY_CODEC_LZ4: return "lz4";
	case FERRY_CODEC_ZSTD: return "zstd";
	}
	return "?";
}

int ferry_codec_parse(const char *spec, enum ferry_codec *codec, int *level,
		      struct ferry_error *err)
{
	const char *colon = strchr(spec, ':');
	size_t n = colon ? (size_t)(colon - spec) : strlen(spec);

	*level = 0;
	if (n == 4 && !strncmp(spec, "none", 4))
		*codec = FERRY_CODEC_NONE;
	else if (n == 3 && !strncmp(spec, "lz4", 3))
		*codec = FERRY_CODEC_LZ4;
	else if (n == 4 && !strncmp(spec, "zstd", 4))
		*codec = FERRY_CODEC_ZSTD;
	else if (n == 4 && !strncmp(spec, "auto", 4))
		*codec = FERRY_CODEC_AUTO;
	else
		return ferry_error_set(err, -EINVAL,
			"unknown codec '%s' (none, lz4, zstd[:LEVEL], auto)", spec);
	if (colon) {
		char *end;
		long v;

		if (*codec != FERRY_CODEC_ZSTD && *codec != FERRY_CODEC_AUTO)
			return ferry_error_set(err, -EINVAL,
				"codec '%s' takes no level", spec);
		errno = 0;
		v = strtol(colon + 1, &end, 10);
		if (errno || end == colon + 1 || *end || v == 0 ||
		    v < CODEC_ZSTD_LEVEL_MIN || v > CODEC_ZSTD_LEVEL_MAX)
			return ferry_error_set(err, -EINVAL,
				"zstd level in '%s' must be a non-zero integer in "
				"[%d, %d]", spec, CODEC_ZSTD_LEVEL_MIN,
				CODEC_ZSTD_LEVEL_MAX);
		*level = (int)v;
	}
	return 0;
}

void codec_auto_init(struct codec_auto *a, uint64_t cap_bytes_per_s)
{
	memset(a, 0, sizeof(*a));
	a->cap_ns_per_byte = cap_bytes_per_s ? 1e9 / (double)cap_bytes_per_s : 0;
}

void codec_auto_hint_link(struct codec_auto *a, uint64_t bytes_per_s)
{
	if (!bytes_per_s)
		return;
	a->link_ns_per_byte = 1e9 / (double)bytes_per_s;
	a->link_valid = true;
	a->link_probed = true;
}

static double ewma(double old, double sample, bool valid)
{
	return valid ? old + CODEC_EWMA_ALPHA * (sample - old) : sample;
}

static double link_cost(const struct codec_auto *a)
{
	double l = a->link_valid ? a->link_ns_per_byte : 0;

	return l > a->cap_ns_per_byte ? l : a->cap_ns_per_byte;
}

double codec_auto_cost(const struct codec_auto *a, enum wire_codec codec)
{
	const struct codec_est *e = &a->est[codec];

	if (codec == WIRE_CODEC_RAW)
		return link_cost(a);
	if (!e->valid)
		return -1;
	/* Compression of the next frame overlaps the kernel sending the
	 * last one (a write returns once the frame is in the socket buffer),
	 * so the slower stage sets the pace. */
	{
		double wire = e->ratio * link_cost(a);

		return e->cpu_ns_per_byte > wire ? e->cpu_ns_per_byte : wire;
	}
}

enum wire_codec codec_auto_pick(struct codec_auto *a, enum wire_codec *probe)
{
	enum wire_codec best = WIRE_CODEC_RAW;
	double best_cost = codec_auto_cost(a, WIRE_CODEC_RAW) * CODEC_AUTO_MARGIN;
	uint64_t f = a->frames++;

	*probe = WIRE_CODEC_RAW;
	/* Measure each codec once at the start, then now and then. */
	for (int c = WIRE_CODEC_LZ4; c <= WIRE_CODEC_ZSTD; c++) {
		double cost = codec_auto_cost(a, (enum wire_codec)c);

		if (cost >= 0 && cost < best_cost) {
			best = (enum wire_codec)c;
			best_cost = cost;
		}
	}
	for (int c = WIRE_CODEC_LZ4; c <= WIRE_CODEC_ZSTD; c++) {
		/* lz4 probes on frame 0, 16, 32...; zstd on 8, 40, 72... */
		uint64_t period = c == WIRE_CODEC_LZ4 ? CODEC_PROBE_EVERY :
							2 * CODEC_PROBE_EVERY;
		uint64_t phase = c == WIRE_CODEC_LZ4 ? 0 : CODEC_PROBE_EVERY / 2;

		/*
		 * A codec whose CPU time alone costs more than sending raw
		 * cannot win whatever its ratio: on a fast link, re-measure
		 * it only rarely, so auto costs next to nothing there.
		 */
		if (a->est[c].valid && a->est[c].cpu_ns_per_byte >=
		    codec_auto_cost(a, WIRE_CODEC_RAW) * CODEC_AUTO_MARGIN)
			period *= CODEC_PROBE_HOPELESS_FACTOR;
		if (c != (int)best && (!a->est[c].valid || f % period == phase)) {
			*probe = (enum wire_codec)c;
			break;
		}
	}
	return best;
}

void codec_auto_note_compress(struct codec_auto *a, enum wire_codec codec,
			      size_t in, size_t out, uint64_t ns)
{
	struct codec_est *e = &a->est[codec];
	double ratio, cpu;

	/* A few bytes (QEMU's stream header, a last partial read) say nothing
	 * about a compressor but fixed costs, and would poison its estimate. */
	if (codec == WIRE_CODEC_RAW || in < CODEC_AUTO_MIN_SAMPLE_BYTES)
		return;
	ratio = out ? (double)out / (double)in : 1.0;
	cpu = (double)ns / (double)in;
	e->ratio = ewma(e->ratio, ratio, e->valid);
	e->cpu_ns_per_byte = ewma(e->cpu_ns_per_byte, cpu, e->valid);
	e->valid = true;
}

void codec_auto_note_link(struct codec_auto *a, uint64_t bytes_per_s,
			  bool app_limited)
{
	double ns;

	if (!bytes_per_s)
		return;
	ns = 1e9 / (double)bytes_per_s;
	if (!a->link_valid) {
		a->link_ns_per_byte = ns;
		a->link_valid = true;
		return;
	}
	if (!app_limited) {
		a->link_ns_per_byte = ewma(a->link_ns_per_byte, ns, true);
		a->fast_streak = 0;
		return;
	}
	/*
	 * An app-limited sample is a lower bound on the rate, and a noisy
	 * one (ACK bursts): only a run of them, all well above the estimate,
	 * says the link got faster than we thought; a much longer run once a
	 * probe measured the link (codec_auto_hint_link).
	 */
	if (ns * CODEC_LINK_FAST_FACTOR < a->link_ns_per_byte) {
		if (++a->fast_streak >= CODEC_LINK_FAST_STREAK *
		    (a->link_probed ? CODEC_LINK_PROBED_STREAK_FACTOR : 1)) {
			a->link_ns_per_byte = ns;
			a->fast_streak = 0;
		}
	} else {
		a->fast_streak = 0;
	}
}
