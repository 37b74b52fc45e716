/*
 * The frame decompressors (codec_decompress) on their own, with a
 * compact input so that the fuzzer spends its time inside LZ4 and zstd
 * payloads rather than on frame headers (fuzz_frame covers those):
 *   u8  codec: bit 0 clear LZ4, set zstd
 *   u24 raw_len, big-endian, modulo WIRE_FRAME_PAYLOAD_MAX + 1
 *   the payload
 * The output goes to a guarded buffer of raw_len bytes (fuzz_out), so a
 * decoder told the wrong size, or writing past the size it was told, is
 * caught. Then the round trip: the payload, compressed with the same
 * codec and decompressed, must come back byte for byte.
 *
 * Coverage guides the fuzzer through codec.c only: the libraries are
 * Debian's, not instrumented. What this harness tests is ferry's use of
 * them, which is where ferry's bugs would be: the sizes it passes, its
 * checks of what they return.
 */
#include <string.h>

#include "fuzz.h"
#include "transport/codec.h"
#include "transport/wire.h"

#define FUZZ_CODEC_PREFIX 4

static struct codec_ctx *codec;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct ferry_error err = { 0 };

	FUZZ_CHECK(codec_ctx_new(&codec, 0, &err) == 0);
	/* A receiver's largest zstd window, as one stream's tunnel has. */
	codec_ctx_set_window(codec, CODEC_WINDOW_LOG_MAX);
	return 0;
}

static void decode(enum wire_codec c, const uint8_t *p, size_t len,
		   size_t raw_len)
{
	struct ferry_error err = { 0 };
	uint8_t *dst = fuzz_out(raw_len);
	int rc;

	rc = codec_decompress(codec, c, p, len, dst, raw_len, 1, &err);
	FUZZ_CHECK_ERR(rc, err);
	fuzz_out_check();
}

static void round_trip(enum wire_codec c, const uint8_t *p, size_t len)
{
	struct ferry_error err = { 0 };
	size_t cap = codec_bound(len), n;
	uint8_t *z = malloc(cap), *back;

	FUZZ_CHECK(z);
	codec_ctx_reset(codec);	/* a fresh stream each way */
	n = codec_compress(codec, c, p, len, z, cap);
	/* LZ4 0: not smaller, the sender would send the frame raw; a zstd
	 * chunk is sent whatever its size. */
	FUZZ_CHECK(c == WIRE_CODEC_ZSTD ? (n > 0) == (len > 0) : n < len || n == 0);
	if (n) {
		back = fuzz_out(len);
		FUZZ_CHECK(codec_decompress(codec, c, z, n, back, len, 2, &err) == 0);
		fuzz_out_check();
		FUZZ_CHECK(memcmp(back, p, len) == 0);
	}
	free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum wire_codec c;
	size_t raw_len;

	if (size < FUZZ_CODEC_PREFIX)
		return 0;
	c = data[0] & 1 ? WIRE_CODEC_ZSTD : WIRE_CODEC_LZ4;
	raw_len = ((size_t)data[1] << 16 | (size_t)data[2] << 8 | data[3]) %
		  (WIRE_FRAME_PAYLOAD_MAX + 1);
	data += FUZZ_CODEC_PREFIX;
	size -= FUZZ_CODEC_PREFIX;
	/* libFuzzer's buffer is exactly @size bytes: no copy needed. The
	 * payload is the first chunk of a zstd stream. */
	codec_ctx_reset(codec);
	decode(c, data, size, raw_len);
	round_trip(c, data, size);
	return 0;
}
