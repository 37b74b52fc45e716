/* Encoding and validation of ferry's wire format (see wire.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "wire.h"

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)(v >> 32));
	put32(p + 4, (uint32_t)v);
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return ((uint32_t)get16(p) << 16) | get16(p + 2);
}

static uint64_t get64(const uint8_t *p)
{
	return ((uint64_t)get32(p) << 32) | get32(p + 4);
}

/*
 * Hello layout (64 bytes):
 *   0 u64 magic   8 u16 version   10 u16 conn   12 u32 options
 *   16 mig_id[16] 32 u64 ram_bytes 40 u16 stream_index 42 u16 stream_count
 *   44 u32 frame_max   48..63 zero (reserved; rejected when non-zero)
 */
void wire_hello_encode(const struct wire_hello *h, uint8_t out[WIRE_HELLO_BYTES])
{
	memset(out, 0, WIRE_HELLO_BYTES);
	put64(out, WIRE_MAGIC);
	put16(out + 8, h->version);
	put16(out + 10, h->conn);
	put32(out + 12, h->options);
	memcpy(out + 16, h->mig_id, WIRE_MIG_ID_BYTES);
	put64(out + 32, h->ram_bytes);
	put16(out + 40, h->stream_index);
	put16(out + 42, h->stream_count);
	put32(out + 44, h->frame_max);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

int wire_hello_decode(const uint8_t in[WIRE_HELLO_BYTES], struct wire_hello *h,
		      struct ferry_error *err)
{
	uint64_t magic = get64(in);

	if (magic != WIRE_MAGIC)
		return ferry_error_set(err, -EBADMSG,
			"not a ferry peer: bad hello magic 0x%016llx",
			(unsigned long long)magic);
	h->version = get16(in + 8);
	if (h->version != WIRE_VERSION)
		return ferry_error_set(err, -EPROTONOSUPPORT,
			"peer speaks ferry protocol version %u, this is version %u",
			h->version, WIRE_VERSION);
	h->conn = get16(in + 10);
	if (h->conn < WIRE_CONN_CONTROL || h->conn > WIRE_CONN_PROBE)
		return ferry_error_set(err, -EPROTO,
			"hello names unknown connection kind %u", h->conn);
	h->options = get32(in + 12);
	if (h->options & ~WIRE_OPT_KNOWN)
		return ferry_error_set(err, -EPROTO,
			"hello has unknown option bits 0x%x",
			h->options & ~WIRE_OPT_KNOWN);
	memcpy(h->mig_id, in + 16, WIRE_MIG_ID_BYTES);
	if (all_zero(h->mig_id, WIRE_MIG_ID_BYTES))
		return ferry_error_set(err, -EPROTO, "hello has an empty migration id");
	h->ram_bytes = get64(in + 32);
	if (h->ram_bytes < WIRE_RAM_MIN_BYTES || h->ram_bytes > WIRE_RAM_MAX_BYTES)
		return ferry_error_set(err, -EPROTO,
			"hello declares guest RAM of %llu bytes, outside [%llu, %llu]",
			(unsigned long long)h->ram_bytes,
			(unsigned long long)WIRE_RAM_MIN_BYTES,
			(unsigned long long)WIRE_RAM_MAX_BYTES);
	h->stream_index = get16(in + 40);
	h->stream_count = get16(in + 42);
	if (h->stream_count < 1 || h->stream_count > WIRE_STREAMS_MAX ||
	    h->stream_index >= h->stream_count)
		return ferry_error_set(err, -EPROTO,
			"hello has stream %u of %u (at most %u streams)",
			h->stream_index, h->stream_count, WIRE_STREAMS_MAX);
	h->frame_max = get32(in + 44);
	if (h->frame_max < WIRE_FRAME_MAX_MIN ||
	    h->frame_max > WIRE_FRAME_PAYLOAD_MAX)
		return ferry_error_set(err, -EPROTO,
			"hello declares frames of %u bytes, outside [%u, %u]",
			h->frame_max, WIRE_FRAME_MAX_MIN, WIRE_FRAME_PAYLOAD_MAX);
	if (!all_zero(in + 48, WIRE_HELLO_BYTES - 48))
		return ferry_error_set(err, -EPROTO,
			"hello has non-zero reserved bytes");
	return 0;
}

void wire_ctrl_encode(const struct wire_ctrl_hdr *h,
		      uint8_t out[WIRE_CTRL_HDR_BYTES])
{
	put32(out, h->len);
	put16(out + 4, h->type);
	put16(out + 6, 0);
}

int wire_ctrl_decode(const uint8_t in[WIRE_CTRL_HDR_BYTES],
		     struct wire_ctrl_hdr *h, struct ferry_error *err)
{
	h->len = get32(in);
	h->type = get16(in + 4);
	if (h->type < 1 || h->type > WIRE_CTRL_MAX_TYPE)
		return ferry_error_set(err, -EPROTO,
			"unknown control message type %u", h->type);
	if (h->len > WIRE_CTRL_PAYLOAD_MAX)
		return ferry_error_set(err, -EMSGSIZE,
			"control message %s of %u bytes exceeds the limit of %u",
			wire_ctrl_name(h->type), h->len, WIRE_CTRL_PAYLOAD_MAX);
	if (get16(in + 6) != 0)
		return ferry_error_set(err, -EPROTO,
			"control message has non-zero reserved field");
	return 0;
}

const char *wire_ctrl_name(uint16_t type)
{
	switch (type) {
	case WIRE_CTRL_READY: return "READY";
	case WIRE_CTRL_ERROR: return "ERROR";
	case WIRE_CTRL_FINISH: return "FINISH";
	case WIRE_CTRL_FINISHED: return "FINISHED";
	case WIRE_CTRL_CANCEL: return "CANCEL";
	case WIRE_CTRL_POSTCOPY: return "POSTCOPY";
	case WIRE_CTRL_PROBED: return "PROBED";
	default: return "?";
	}
}

void wire_frame_encode(const struct wire_frame_hdr *h,
		       uint8_t out[WIRE_FRAME_HDR_BYTES])
{
	put32(out, h->len);
	put16(out + 4, h->type);
	put16(out + 6, h->flags);
	put32(out + 8, h->raw_len);
	put32(out + 12, 0);
	put64(out + 16, h->seq);
}

int wire_frame_decode(const uint8_t in[WIRE_FRAME_HDR_BYTES],
		      uint32_t frame_max, struct wire_frame_hdr *h,
		      struct ferry_error *err)
{
	unsigned long long seq;

	h->len = get32(in);
	h->type = get16(in + 4);
	h->flags = get16(in + 6);
	h->raw_len = get32(in + 8);
	h->seq = get64(in + 16);
	seq = (unsigned long long)h->seq;
	if (h->type < 1 || h->type > WIRE_FRAME_MAX_TYPE)
		return ferry_error_set(err, -EPROTO,
			"frame %llu has unknown type %u", seq, h->type);
	if (h->len > frame_max || h->raw_len > frame_max)
		return ferry_error_set(err, -EMSGSIZE,
			"frame %llu declares %u bytes (%u decoded), limit %u",
			seq, h->len, h->raw_len, frame_max);
	if ((h->flags & ~WIRE_FLAGS_CODEC_MASK) ||
	    (h->flags & WIRE_FLAGS_CODEC_MASK) > WIRE_CODEC_MAX ||
	    get32(in + 12) != 0)
		return ferry_error_set(err, -EPROTO,
			"frame %llu has flags 0x%x unknown to protocol version %u",
			seq, h->flags, WIRE_VERSION);
	if (wire_frame_codec(h) == WIRE_CODEC_RAW && h->raw_len != h->len)
		return ferry_error_set(err, -EPROTO,
			"frame %llu: raw length %u differs from length %u without a codec",
			seq, h->raw_len, h->len);
	if (wire_frame_codec(h) != WIRE_CODEC_RAW && (!h->len || !h->raw_len))
		return ferry_error_set(err, -EPROTO,
			"compressed frame %llu is empty", seq);
	if (h->type == WIRE_FRAME_END && (h->len != 0 || h->flags != 0))
		return ferry_error_set(err, -EPROTO,
			"END frame %llu carries %u bytes", seq, h->len);
	return 0;
}

void wire_mig_id_format(const uint8_t id[WIRE_MIG_ID_BYTES], char out[37])
{
	snprintf(out, 37,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7], id[8],
		 id[9], id[10], id[11], id[12], id[13], id[14], id[15]);
}

int wire_mig_id_random(uint8_t id[WIRE_MIG_ID_BYTES])
{
	ssize_t n = getrandom(id, WIRE_MIG_ID_BYTES, 0);

	if (n != WIRE_MIG_ID_BYTES)
		return n < 0 ? -errno : -EIO;
	id[6] = (uint8_t)((id[6] & 0x0f) | 0x40);	/* UUID version 4 */
	id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
	return 0;
}
