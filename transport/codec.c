/* LZ4 and zstd frame codecs, and the auto policy (see codec.h). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <lz4.h>
/* ZSTD_customMem and ZSTD_create[CD]Ctx_advanced: zstd's buffers from
 * codec_alloc() (exported by the shared libzstd since 1.3). */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include "codec.h"

/* A zstd frame header's largest size (zstd.h's ZSTD_FRAMEHEADERSIZE_MAX,
 * which it only gives static linkers). */
#define ZSTD_HEADER_MAX 18

struct codec_ctx {
	ZSTD_CCtx *zc;
	ZSTD_DCtx *zd;
	void *lz4_state;
	int zstd_level;
	int window_log;		/* codec_ctx_set_window() */
};

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
/* From this size on, a zstd buffer is mapped in huge pages, all present. */
#define CODEC_BIG_ALLOC (1u << 20)
#define CODEC_HUGE_PAGE (2u << 20)
/* Before every buffer: where its mapping starts (NULL: malloc'd) and its
 * length; the size keeps the buffer as aligned as malloc's. */
struct codec_alloc_hdr {
	void *map;
	size_t len;
	uint8_t pad[48];
};

/*
 * zstd's allocator. A zstd window (up to 32 MiB each way) is written
 * from its first byte to its last within the first frames, and fresh
 * memory is faulted in a page at a time: on a virtualized host that cost
 * about 5 ms per MiB, in the first half-second of a migration, which is
 * when auto scores zstd against the others (it lost every first trial on
 * the 1 Gbit/s link). Large buffers are mapped in transparent huge pages
 * and faulted in with one call; where the kernel offers neither, they
 * are faulted in as before.
 */
static void *codec_alloc(void *opaque, size_t size)
{
	struct codec_alloc_hdr *h;
	uint8_t *map;
	uintptr_t at;
	size_t len;

	(void)opaque;
	if (size < CODEC_BIG_ALLOC) {
		h = malloc(sizeof(*h) + size);
		if (!h)
			return NULL;
		h->map = NULL;
		return h + 1;
	}
	len = size + sizeof(*h) + CODEC_HUGE_PAGE;
	map = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED)
		return NULL;
	at = ((uintptr_t)map + sizeof(*h) + CODEC_HUGE_PAGE - 1) &
	     ~(uintptr_t)(CODEC_HUGE_PAGE - 1);
	madvise((void *)at, size, MADV_HUGEPAGE);
	madvise((void *)at, size, MADV_POPULATE_WRITE);
	h = (struct codec_alloc_hdr *)at - 1;
	h->map = map;
	h->len = len;
	return h + 1;
}

static void codec_free(void *opaque, void *p)
{
	struct codec_alloc_hdr *h = p ? (struct codec_alloc_hdr *)p - 1 : NULL;

	(void)opaque;
	if (!h)
		return;
	if (h->map)
		munmap(h->map, h->len);
	else
		free(h);
}

static const ZSTD_customMem codec_mem = { codec_alloc, codec_free, NULL };

int codec_ctx_new(struct codec_ctx **out, int zstd_level,
		  struct ferry_error *err)
{
	struct codec_ctx *c = calloc(1, sizeof(*c));

	*out = NULL;
	if (!c)
		return ferry_error_set(err, -ENOMEM, "out of memory for a codec");
	c->zstd_level = zstd_level ? zstd_level : CODEC_ZSTD_LEVEL_DEFAULT;
	c->zc = ZSTD_createCCtx_advanced(codec_mem);
	c->zd = ZSTD_createDCtx_advanced(codec_mem);
	c->lz4_state = malloc((size_t)LZ4_sizeofState());
	if (!c->zc || !c->zd || !c->lz4_state) {
		codec_ctx_free(c);
		return ferry_error_set(err, -ENOMEM, "out of memory for a codec");
	}
	ZSTD_CCtx_setParameter(c->zc, ZSTD_c_compressionLevel, c->zstd_level);
	ZSTD_CCtx_setParameter(c->zc, ZSTD_c_checksumFlag, 0);
	codec_ctx_set_window(c, CODEC_WINDOW_LOG_MIN);
	*out = c;
	return 0;
}

/*
 * The zstd stream's window, both ways: what the compressor may refer back
 * to, and the most the decompressor accepts (a frame asking for more is
 * refused, so a peer cannot make it allocate beyond it). Above one frame's
 * worth, the compressor also looks for long matches (zstd's long distance
 * matching): a page that repeats one sent megabytes earlier is found at
 * about the cost of level 1's own search.
 */
void codec_ctx_set_window(struct codec_ctx *c, int window_log)
{
	c->window_log = window_log;
	ZSTD_CCtx_setParameter(c->zc, ZSTD_c_windowLog, window_log);
	ZSTD_CCtx_setParameter(c->zc, ZSTD_c_enableLongDistanceMatching,
			       window_log > CODEC_WINDOW_LOG_MIN);
	ZSTD_DCtx_setParameter(c->zd, ZSTD_d_windowLogMax, window_log);
}

/*
 * Make the zstd buffers now, for @compress and/or @decompress, so that
 * the first frames do not pay for them: the compressor compresses a byte
 * into nothing it keeps; the decompressor decodes a stream of one raw
 * byte whose header asks for the window (RFC 8878: magic, a descriptor
 * with no content size, the window as exponent 10 below, one last raw
 * block of one byte). Both then start over, their buffers kept.
 */
void codec_ctx_prime(struct codec_ctx *c, bool compress, bool decompress)
{
	if (compress) {
		uint8_t in = 0, out[64];
		ZSTD_inBuffer i = { &in, 1, 0 };
		ZSTD_outBuffer o = { out, sizeof(out), 0 };

		ZSTD_compressStream2(c->zc, &o, &i, ZSTD_e_flush);
	}
	if (decompress) {
		const uint8_t frame[] = {
			0x28, 0xb5, 0x2f, 0xfd,		/* magic */
			0x00,				/* no size, no checksum */
			(uint8_t)((c->window_log - 10) << 3),	/* window */
			0x09, 0x00, 0x00,		/* last, raw, 1 byte */
			0x00,
		};
		uint8_t out;
		ZSTD_inBuffer i = { frame, sizeof(frame), 0 };
		ZSTD_outBuffer o = { &out, 1, 0 };

		ZSTD_decompressStream(c->zd, &o, &i);
	}
	codec_ctx_reset(c);
}

size_t codec_ctx_memory(const struct codec_ctx *c)
{
	return ZSTD_sizeof_CCtx(c->zc) + ZSTD_sizeof_DCtx(c->zd);
}

void codec_ctx_reset(struct codec_ctx *c)
{
	ZSTD_CCtx_reset(c->zc, ZSTD_reset_session_only);
	ZSTD_DCtx_reset(c->zd, ZSTD_reset_session_only);
}

int codec_window_log(uint32_t streams)
{
	uint64_t per = CODEC_WINDOW_BUDGET / (streams ? streams : 1);
	int log = CODEC_WINDOW_LOG_MIN;

	while (log < CODEC_WINDOW_LOG_MAX && (2ull << log) <= per)
		log++;
	return log;
}

uint32_t codec_zstd_in_max(uint32_t frame_max)
{
	uint32_t n = (uint32_t)((uint64_t)(frame_max - ZSTD_HEADER_MAX) *
				256 / 257);

	while (n && ZSTD_compressBound(n) + ZSTD_HEADER_MAX > frame_max)
		n -= n < 64 ? n : 64;
	return n;
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

	if (!len)
		return 0;	/* nothing to compress: a raw empty frame */
	switch (codec) {
	case WIRE_CODEC_LZ4: {
		int r = LZ4_compress_fast_extState(c->lz4_state, src, dst,
						   (int)len, (int)cap, 1);
		n = r > 0 ? (size_t)r : 0;
		break;
	}
	case WIRE_CODEC_ZSTD: {
		/* The next chunk of this stream, flushed: all of it, whatever
		 * its size (the decoder's history must see every byte). */
		ZSTD_inBuffer in = { src, len, 0 };
		ZSTD_outBuffer out = { dst, cap, 0 };
		size_t r = ZSTD_compressStream2(c->zc, &out, &in, ZSTD_e_flush);

		return ZSTD_isError(r) || r || in.pos != len ? 0 : out.pos;
	}
	case WIRE_CODEC_RAW:
		return 0;
	}
	return n < len ? n : 0;
}

/* The next chunk of this stream's zstd stream into exactly @raw_len bytes
 * (see codec_decompress()). */
static int zstd_chunk(struct codec_ctx *c, const void *src, size_t len,
		      void *dst, size_t raw_len, unsigned long long s,
		      struct ferry_error *err)
{
	ZSTD_inBuffer in = { src, len, 0 };
	ZSTD_outBuffer out = { dst, raw_len, 0 };
	uint8_t more;

	for (;;) {
		size_t in0 = in.pos, out0 = out.pos;
		size_t r = ZSTD_decompressStream(c->zd, &out, &in);

		if (ZSTD_isError(r))
			return ferry_error_set(err, -EBADMSG,
				"frame %llu: zstd payload does not decode into "
				"the declared %zu bytes: %s", s, raw_len,
				ZSTD_getErrorName(r));
		if ((in.pos == len && out.pos == raw_len) ||
		    (in.pos == in0 && out.pos == out0))
			break;
	}
	if (out.pos < raw_len)
		return ferry_error_set(err, -EBADMSG,
			"frame %llu: zstd payload decodes to %zu bytes, "
			"declared %zu", s, out.pos, raw_len);
	/* Input left over, or output still held back: more than said. */
	out = (ZSTD_outBuffer){ &more, 1, 0 };
	if (in.pos < len || ZSTD_isError(ZSTD_decompressStream(c->zd, &out, &in)) ||
	    out.pos)
		return ferry_error_set(err, -EBADMSG,
			"frame %llu: zstd payload decodes to more than the "
			"declared %zu bytes", s, raw_len);
	return 0;
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
	case WIRE_CODEC_ZSTD:
		return zstd_chunk(c, src, len, dst, raw_len, s, err);
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

void codec_auto_init(struct codec_auto *a)
{
	memset(a, 0, sizeof(*a));
	a->cur = a->best = WIRE_CODEC_RAW;
}

void codec_auto_set_link(struct codec_auto *a, double bytes_per_s)
{
	a->link = bytes_per_s > 0 ? bytes_per_s : 0;
}

void codec_auto_note_link(struct codec_auto *a, double bytes_per_s)
{
	if (!(bytes_per_s > a->link_seen))
		return;
	a->link_seen = bytes_per_s;
	if (a->raw_from_link && bytes_per_s > a->score[WIRE_CODEC_RAW])
		a->score[WIRE_CODEC_RAW] = bytes_per_s;
}

/* The link's rate as best known, and the margin another codec needs over
 * it to settle raw: the measure taken while streaming where there is one
 * (the larger of it and the probe's), else the probe's or the cap. */
static double known_link(const struct codec_auto *a, double *margin)
{
	if (a->link_seen > 0) {
		*margin = CODEC_LINK_SEEN_MARGIN;
		return a->link_seen > a->link ? a->link_seen : a->link;
	}
	*margin = CODEC_TRIAL_LOSE;
	return a->link;
}

/* Raw bytes per second over the scored window; 0 when it moved less than
 * CODEC_EPOCH_MIN_BYTES (too little to say anything). */
static double window_rate(const struct codec_auto *a)
{
	uint64_t wall = a->window_t0_ns ? a->last_ns - a->window_t0_ns : 0;

	if (a->bytes < CODEC_EPOCH_MIN_BYTES || !wall)
		return 0;
	return (double)a->bytes * 1e9 / (double)wall;
}

/* Score the epoch that ends: its codec's EWMA takes the epoch's rate. */
static void score_epoch(struct codec_auto *a)
{
	double sample = window_rate(a), wire_rate;

	a->epochs++;
	if (sample <= 0)
		return;
	/* sample > 0: the window has a length */
	wire_rate = (double)a->wire * 1e9 / (double)(a->last_ns - a->window_t0_ns);
	if (wire_rate > a->wire_top)
		a->wire_top = wire_rate;
	/* raw's first epoch of its own replaces the link's rate it was
	 * given: that was a bound, not a measure. */
	if (a->cur == WIRE_CODEC_RAW && a->raw_from_link) {
		a->raw_from_link = false;
		a->score[WIRE_CODEC_RAW] = sample;
		return;
	}
	a->score[a->cur] = a->score[a->cur] > 0 ?
		a->score[a->cur] + CODEC_EWMA_ALPHA * (sample - a->score[a->cur]) :
		sample;
}

/* The codec kept between explorations: the best score, raw unless another
 * beats it by the margin. */
static enum wire_codec best_codec(const struct codec_auto *a)
{
	enum wire_codec best = WIRE_CODEC_RAW;
	double best_score = a->score[WIRE_CODEC_RAW] * CODEC_AUTO_MARGIN;

	for (int c = WIRE_CODEC_LZ4; c <= WIRE_CODEC_ZSTD; c++) {
		if (a->score[c] > best_score) {
			best = (enum wire_codec)c;
			best_score = a->score[c];
		}
	}
	return best;
}

/*
 * Raw's first trial, settled without a frame when the link is known and
 * another codec delivers its margin times what it carries (see
 * codec_auto_set_link() and codec_auto_note_link()): true when so, raw
 * scored at the link's rate. Only while the wire never carried more than
 * the link was said to (CODEC_LINK_SLACK): a wire seen faster proves the
 * measure low, and raw then gets its trial.
 */
static bool raw_settled(struct codec_auto *a)
{
	double top = 0, margin, link = known_link(a, &margin);

	if (!link || a->wire_top > link * CODEC_LINK_SLACK)
		return false;
	for (int c = WIRE_CODEC_LZ4; c <= WIRE_CODEC_ZSTD; c++)
		if (a->score[c] > top)
			top = a->score[c];
	if (top <= margin * link)
		return false;
	a->tried |= 1u << WIRE_CODEC_RAW;
	a->score[WIRE_CODEC_RAW] = link;
	a->raw_from_link = true;
	a->explored_at[WIRE_CODEC_RAW] = a->epochs;
	return true;
}

/* The next epoch's codec: one never tried yet, else one due for another
 * try (less often the further it scored below the best), else the best. */
static enum wire_codec next_codec(struct codec_auto *a)
{
	double top;

	static const enum wire_codec first[] = {
		WIRE_CODEC_LZ4, WIRE_CODEC_ZSTD, WIRE_CODEC_RAW,
	};

	for (size_t i = 0; i < sizeof(first) / sizeof(first[0]); i++)
		if (!(a->tried & (1u << first[i])) &&
		    !(first[i] == WIRE_CODEC_RAW && raw_settled(a)))
			return first[i];
	a->best = best_codec(a);
	top = a->score[a->best];
	for (int c = WIRE_CODEC_RAW; c <= WIRE_CODEC_ZSTD; c++) {
		double behind = a->score[c] > 0 ? top / a->score[c] : 1.0;
		double every = CODEC_EXPLORE_EVERY * behind * behind;

		if (c == (int)a->best)
			continue;
		if (every > CODEC_EXPLORE_MAX_EVERY)
			every = CODEC_EXPLORE_MAX_EVERY;
		if ((double)(a->epochs - a->explored_at[c]) >= every)
			return (enum wire_codec)c;
	}
	return a->best;
}

static void start_epoch(struct codec_auto *a, enum wire_codec c, uint64_t now_ns)
{
	bool warm = a->epoch_t0_ns && c != a->cur;

	a->cur = c;
	a->tried |= 1u << c;
	a->explored_at[c] = a->epochs;
	a->epoch_t0_ns = now_ns;
	a->scored_t0_ns = now_ns + (warm ? CODEC_EPOCH_WARM_MS * 1000000ull : 0);
	a->window_t0_ns = a->last_ns = 0;
	a->bytes = a->wire = 0;
}

/*
 * Whether this epoch's codec is on trial and has already lost: its scored
 * frames, CODEC_TRIAL_MIN_MS of them at least, delivered less than
 * 1/CODEC_TRIAL_LOSE of another codec's score (see codec.h). The codec
 * kept between explorations is not on trial: its epochs run their
 * length, so that one dip does not throw it out.
 */
static bool trial_lost(const struct codec_auto *a)
{
	double rate = window_rate(a), top = 0;

	if (a->cur == a->best && a->score[a->cur] > 0)
		return false;
	if (rate <= 0 || a->last_ns - a->window_t0_ns <
			 CODEC_TRIAL_MIN_MS * 1000000ull)
		return false;
	for (int c = WIRE_CODEC_RAW; c <= WIRE_CODEC_ZSTD; c++)
		if (c != (int)a->cur && a->score[c] > top)
			top = a->score[c];
	return rate * CODEC_TRIAL_LOSE < top;
}

enum wire_codec codec_auto_pick(struct codec_auto *a, uint64_t now_ns)
{
	uint64_t len_ms = a->score[a->cur] > 0 ? CODEC_EPOCH_MS :
						 CODEC_EPOCH_FIRST_MS;
	uint64_t elapsed_ms;

	if (!a->epoch_t0_ns) {
		start_epoch(a, next_codec(a), now_ns ? now_ns : 1);
		return a->cur;
	}
	elapsed_ms = (now_ns - a->epoch_t0_ns) / 1000000ull;
	if ((elapsed_ms >= len_ms && a->bytes >= CODEC_EPOCH_MIN_BYTES) ||
	    elapsed_ms >= CODEC_EPOCH_MAX_MS || trial_lost(a)) {
		score_epoch(a);
		start_epoch(a, next_codec(a), now_ns);
	}
	return a->cur;
}

/* The scored window runs from the end of the first frame sent after the
 * warm-up to the end of the last: whole frames, whatever their pace. */
void codec_auto_note_sent(struct codec_auto *a, uint64_t raw_bytes,
			  uint64_t wire_bytes, uint64_t now_ns)
{
	if (now_ns < a->scored_t0_ns)
		return;
	if (!a->window_t0_ns) {
		a->window_t0_ns = now_ns;
		return;
	}
	a->bytes += raw_bytes;
	a->wire += wire_bytes;
	a->last_ns = now_ns;
}
