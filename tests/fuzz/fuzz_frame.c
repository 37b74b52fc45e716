/*
 * A data frame as a tunnel receives it: the 24-byte header
 * (wire_frame_decode), then its payload decoded into a buffer of the
 * declared raw length (codec_decompress), as tunnel.c does. The input is
 * the header followed by the payload bytes.
 *
 * Checks beyond the sanitizers: a header accepted under the smallest
 * frame limit is accepted under the largest; an accepted header encodes
 * back to the same bytes; a raw payload decodes to itself. The payload
 * is copied to a buffer of exactly its length, so a read past it is
 * caught, and decoded into a guarded buffer of raw_len bytes (fuzz_out),
 * so is a write past that.
 */
#include <string.h>

#include "fuzz.h"
#include "transport/codec.h"
#include "transport/wire.h"

static struct codec_ctx *codec;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct ferry_error err = { 0 };

	FUZZ_CHECK(codec_ctx_new(&codec, 0, &err) == 0);
	codec_ctx_set_window(codec, CODEC_WINDOW_LOG_MAX);
	return 0;
}

static void decode_payload(const struct wire_frame_hdr *h, const uint8_t *p)
{
	struct ferry_error err = { 0 };
	uint8_t *src, *dst = fuzz_out(h->raw_len);
	int rc;

	src = malloc(h->len ? h->len : 1);
	FUZZ_CHECK(src);
	memcpy(src, p, h->len);
	codec_ctx_reset(codec);	/* the first chunk of a zstd stream */
	rc = codec_decompress(codec, wire_frame_codec(h), src, h->len, dst,
			      h->raw_len, h->seq, &err);
	FUZZ_CHECK_ERR(rc, err);
	fuzz_out_check();
	if (rc == 0 && wire_frame_codec(h) == WIRE_CODEC_RAW)
		FUZZ_CHECK(memcmp(src, dst, h->len) == 0);
	free(src);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ferry_error err = { 0 };
	uint8_t hdr[WIRE_FRAME_HDR_BYTES];
	struct wire_frame_hdr h;
	int rc;

	if (size < WIRE_FRAME_HDR_BYTES)
		return 0;
	memcpy(hdr, data, sizeof(hdr));
	rc = wire_frame_decode(hdr, WIRE_FRAME_MAX_MIN, &h, &err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc == 0) {
		rc = wire_frame_decode(hdr, WIRE_FRAME_PAYLOAD_MAX, &h, &err);
		FUZZ_CHECK(rc == 0);
	} else {
		rc = wire_frame_decode(hdr, WIRE_FRAME_PAYLOAD_MAX, &h, &err);
		FUZZ_CHECK_ERR(rc, err);
	}
	if (rc < 0)
		return 0;
	{
		uint8_t out[WIRE_FRAME_HDR_BYTES];

		wire_frame_encode(&h, out);
		FUZZ_CHECK(memcmp(out, hdr, sizeof(out)) == 0);
	}
	FUZZ_CHECK(h.len <= WIRE_FRAME_PAYLOAD_MAX &&
		   h.raw_len <= WIRE_FRAME_PAYLOAD_MAX);
	if (h.type == WIRE_FRAME_END)
		FUZZ_CHECK(h.len == 0);
	if (h.len <= size - WIRE_FRAME_HDR_BYTES)
		decode_payload(&h, data + WIRE_FRAME_HDR_BYTES);
	return 0;
}
