/*
 * Unit tests of the wire format, the codecs and the io_uring tunnel, with
 * real sockets (TCP on loopback, socketpairs standing in for QEMU), real
 * TLS (a pre-shared key written here, certificates from the test PKI) and
 * no QEMU. The TLS cases check what an operator is told when credentials
 * are missing, unreadable or wrong, on both sides of a handshake.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/harness/pki.h"
#include "transport/net.h"
#include "transport/probe.h"
#include "transport/codec.h"
#include "transport/tls.h"
#include "transport/pace.h"
#include "transport/tunnel.h"
#include "transport/tun_priv.h"
#include "transport/wire.h"

static struct wire_hello good_hello(void)
{
	struct wire_hello h = {
		.version = WIRE_VERSION,
		.conn = WIRE_CONN_CONTROL,
		.options = WIRE_OPT_PAUSED,
		.ram_bytes = 128ull << 20,
		.stream_index = 0,
		.stream_count = 1,
		.frame_max = TUN_FRAME_BYTES,
	};
	memset(h.mig_id, 0xab, sizeof(h.mig_id));
	return h;
}

START_TEST(hello_roundtrip)
{
	struct wire_hello h = good_hello(), d;
	struct ferry_error err = { 0 };
	uint8_t buf[WIRE_HELLO_BYTES];

	wire_hello_encode(&h, buf);
	ck_assert_int_eq(wire_hello_decode(buf, &d, &err), 0);
	ck_assert_int_eq(d.options, WIRE_OPT_PAUSED);
	ck_assert_uint_eq(d.ram_bytes, 128ull << 20);
	ck_assert_int_eq(memcmp(d.mig_id, h.mig_id, sizeof(h.mig_id)), 0);
}
END_TEST

/* Each corruption of a valid hello, the errno it must give and a phrase. */
static const struct {
	int offset;
	uint8_t value;
	int code;
	const char *phrase;
} hello_cases[] = {
	{ 0, 'X', -EBADMSG, "bad hello magic" },
	{ 9, 7, -EPROTONOSUPPORT, "protocol version 7" },
	{ 11, 9, -EPROTO, "unknown connection kind 9" },
	{ 14, 0x80, -EPROTO, "unknown option bits" },
	{ 32, 0xff, -EPROTO, "outside" },		/* RAM far too large */
	{ 43, 0, -EPROTO, "stream 0 of 0" },
	{ 44, 0x7f, -EPROTO, "declares frames of" },
	{ 50, 1, -EPROTO, "reserved" },
};

START_TEST(hello_rejects)
{
	struct wire_hello h = good_hello(), d;
	struct ferry_error err = { 0 };
	uint8_t buf[WIRE_HELLO_BYTES];

	wire_hello_encode(&h, buf);
	buf[hello_cases[_i].offset] = hello_cases[_i].value;
	ck_assert_int_eq(wire_hello_decode(buf, &d, &err), hello_cases[_i].code);
	ck_assert_msg(strstr(err.msg, hello_cases[_i].phrase),
		      "message '%s' lacks '%s'", err.msg, hello_cases[_i].phrase);
}
END_TEST

START_TEST(hello_rejects_empty_id)
{
	struct wire_hello h = good_hello(), d;
	struct ferry_error err = { 0 };
	uint8_t buf[WIRE_HELLO_BYTES];

	memset(h.mig_id, 0, sizeof(h.mig_id));
	wire_hello_encode(&h, buf);
	ck_assert_int_eq(wire_hello_decode(buf, &d, &err), -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "empty migration id"));
}
END_TEST

static uint8_t pattern_rand(size_t i);

START_TEST(frame_checks)
{
	struct wire_frame_hdr h = { .type = WIRE_FRAME_DATA, .len = 100,
				    .raw_len = 100, .seq = 0 }, d;
	struct ferry_error err = { 0 };
	uint8_t buf[WIRE_FRAME_HDR_BYTES];
	const uint32_t max = TUN_FRAME_BYTES;

	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, max, &d, &err), 0);

	h.len = h.raw_len = max + 1;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, max, &d, &err), -EMSGSIZE);

	/* A compressed frame may not claim to decode beyond the limit. */
	h.len = 10;
	h.raw_len = max + 1;
	h.flags = WIRE_CODEC_LZ4;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, max, &d, &err), -EMSGSIZE);

	h.flags = 0x40;
	h.raw_len = 10;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, max, &d, &err), -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "flags 0x40"));

	h.flags = WIRE_CODEC_RAW;
	h.raw_len = 11;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, max, &d, &err), -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "without a codec"));

	h.len = h.raw_len = 10;
	h.type = 77;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, max, &d, &err), -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "unknown type 77"));

	h.type = WIRE_FRAME_END;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, max, &d, &err), -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "END frame"));
}
END_TEST

/* Codecs round-trip, refuse to grow data, and reject lying payloads. */
/* The disk manifest: round trip, and what a receiver refuses. */
START_TEST(disk_manifest_checks)
{
	struct wire_disk in[2] = {
		{ .id = "vdisk0", .size = 4ull << 30, .allocated = 1 << 20 },
		{ .id = "cd0", .flags = WIRE_DISK_READ_ONLY, .size = 6 << 20,
		  .allocated = 6 << 20 },
	}, out[WIRE_DISKS_MAX];
	struct ferry_error err = { 0 };
	uint8_t buf[512];
	uint32_t n = 0;
	int len;

	len = wire_disks_encode(in, 2, buf, sizeof(buf), &err);
	ck_assert_int_gt(len, 0);
	ck_assert_int_eq(wire_disks_decode(buf, (uint32_t)len, out, &n, &err), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(out[1].id, "cd0");
	ck_assert_uint_eq(out[1].flags, WIRE_DISK_READ_ONLY);
	ck_assert_uint_eq(out[0].size, 4ull << 30);
	/* Cut short anywhere: refused, never read beyond. */
	for (int cut = 0; cut < len; cut++)
		if (wire_disks_decode(buf, (uint32_t)cut, out, &n, &err) != -EPROTO)
			ck_abort_msg("a manifest cut at %d was accepted", cut);
	/* Trailing bytes, unknown flags, a bad id, a zero size, a twin. */
	ck_assert_int_eq(wire_disks_decode(buf, (uint32_t)len + 1, out, &n, &err),
			 -EPROTO);
	buf[2 + 1 + 6] = 0x80;
	ck_assert_int_eq(wire_disks_decode(buf, (uint32_t)len, out, &n, &err),
			 -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "unknown flags"));
	buf[2 + 1 + 6] = 0;
	buf[2 + 1] = '/';
	ck_assert_int_eq(wire_disks_decode(buf, (uint32_t)len, out, &n, &err),
			 -EPROTO);
	in[1].size = 0;
	snprintf(in[1].id, sizeof(in[1].id), "vdisk0");
	len = wire_disks_encode(in, 2, buf, sizeof(buf), &err);
	ck_assert_int_eq(wire_disks_decode(buf, (uint32_t)len, out, &n, &err),
			 -EPROTO);
	in[1].size = 1;
	len = wire_disks_encode(in, 2, buf, sizeof(buf), &err);
	ck_assert_int_eq(wire_disks_decode(buf, (uint32_t)len, out, &n, &err),
			 -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "twice"));
	/* An id QMP names cannot carry, and too many disks. */
	snprintf(in[0].id, sizeof(in[0].id), "a b");
	ck_assert_int_eq(wire_disks_encode(in, 1, buf, sizeof(buf), &err), -EINVAL);
	ck_assert_int_eq(wire_disks_encode(in, WIRE_DISKS_MAX + 1, buf,
					   sizeof(buf), &err), -EMSGSIZE);
	buf[0] = 0;
	buf[1] = 0;
	ck_assert_int_eq(wire_disks_decode(buf, 2, out, &n, &err), -EPROTO);
	/* A NUL inside an id would cut it short (found by fuzz_disks). */
	snprintf(in[0].id, sizeof(in[0].id), "vdaXvdb");
	len = wire_disks_encode(in, 1, buf, sizeof(buf), &err);
	ck_assert_int_gt(len, 0);
	buf[2 + 1 + 3] = '\0';
	ck_assert_int_eq(wire_disks_decode(buf, (uint32_t)len, out, &n, &err),
			 -EPROTO);
}
END_TEST

/* Disk records: every field checked before a writer sees it. */
START_TEST(disk_record_checks)
{
	struct wire_disk_rec r = { .op = WIRE_DISK_DATA, .disk = 3,
				   .offset = 1ull << 40, .len = 4096 }, d;
	struct ferry_error err = { 0 };
	uint8_t h[WIRE_DISK_HDR_BYTES];

	wire_disk_rec_encode(&r, h);
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), 0);
	ck_assert_uint_eq(d.disk, 3);
	ck_assert_uint_eq(d.offset, 1ull << 40);
	ck_assert_uint_eq(d.len, 4096);
	h[0] ^= 1;
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EBADMSG);
	r.len = WIRE_DISK_DATA_MAX + 1;		/* oversized data */
	wire_disk_rec_encode(&r, h);
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EMSGSIZE);
	r.len = 0;				/* empty data */
	wire_disk_rec_encode(&r, h);
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EMSGSIZE);
	r = (struct wire_disk_rec){ .op = 9, .len = 0 };	/* unknown op */
	wire_disk_rec_encode(&r, h);
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EPROTO);
	r = (struct wire_disk_rec){ .op = WIRE_DISK_DATA, .len = 1,
				    .flags = WIRE_DISK_MAY_TRIM };
	wire_disk_rec_encode(&r, h);		/* MAY_TRIM is for ZERO */
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EPROTO);
	r = (struct wire_disk_rec){ .op = WIRE_DISK_ZERO, .len = 1u << 31,
				    .flags = WIRE_DISK_MAY_TRIM };
	wire_disk_rec_encode(&r, h);
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), 0);
	r.flags = 0x8;
	wire_disk_rec_encode(&r, h);
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EPROTO);
	r = (struct wire_disk_rec){ .op = WIRE_DISK_FLUSH, .len = 4 };
	wire_disk_rec_encode(&r, h);		/* barriers carry nothing */
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EPROTO);
	r = (struct wire_disk_rec){ .op = WIRE_DISK_ERROR,
				    .len = WIRE_DISK_ERROR_MAX + 1 };
	wire_disk_rec_encode(&r, h);
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EMSGSIZE);
	r = (struct wire_disk_rec){ .op = WIRE_DISK_END };
	wire_disk_rec_encode(&r, h);
	h[21] = 1;				/* reserved */
	ck_assert_int_eq(wire_disk_rec_decode(h, &d, &err), -EPROTO);
}
END_TEST

/* Against the manifest: a disk it lists, a range inside it, the source's ops. */
START_TEST(disk_record_manifest)
{
	const struct wire_disk m[2] = {
		{ .id = "vdisk0", .size = 1 << 20 },
		{ .id = "cd0", .size = 6 << 20 },
	};
	struct ferry_error err = { 0 };
	struct wire_disk_rec r = { .op = WIRE_DISK_DATA, .disk = 0,
				   .offset = (1 << 20) - 4096, .len = 4096 };

	ck_assert_int_eq(wire_disk_rec_check(&r, m, 2, &err), 0);
	r.offset += 1;				/* one byte past the end */
	ck_assert_int_eq(wire_disk_rec_check(&r, m, 2, &err), -ERANGE);
	ck_assert_ptr_nonnull(strstr(err.msg, "vdisk0"));
	r.offset = UINT64_MAX - 100;		/* offset + len wraps */
	ck_assert_int_eq(wire_disk_rec_check(&r, m, 2, &err), -ERANGE);
	r = (struct wire_disk_rec){ .op = WIRE_DISK_ZERO, .disk = 0,
				    .len = (1 << 20) + 1 };
	ck_assert_int_eq(wire_disk_rec_check(&r, m, 2, &err), -ERANGE);
	r.disk = 1;				/* the other disk is larger */
	ck_assert_int_eq(wire_disk_rec_check(&r, m, 2, &err), 0);
	r.disk = 2;				/* not in the manifest */
	ck_assert_int_eq(wire_disk_rec_check(&r, m, 2, &err), -EPROTO);
	r = (struct wire_disk_rec){ .op = WIRE_DISK_FLUSHED, .disk = 0 };
	ck_assert_int_eq(wire_disk_rec_check(&r, m, 2, &err), -EPROTO);
	r = (struct wire_disk_rec){ .op = WIRE_DISK_FLUSH, .offset = 7 };
	ck_assert_int_eq(wire_disk_rec_check(&r, m, 2, &err), 0);
}
END_TEST

START_TEST(codec_checks)
{
	static uint8_t raw[65536], enc[70000], dec[65536];
	struct codec_ctx *c;
	struct ferry_error err = { 0 };
	size_t n;

	ck_assert_int_eq(codec_ctx_new(&c, 0, &err), 0);
	for (size_t i = 0; i < sizeof(raw); i++)
		raw[i] = (uint8_t)("ferry carries guests "[i % 21]);
	for (int codec = WIRE_CODEC_LZ4; codec <= WIRE_CODEC_ZSTD; codec++) {
		/* Each decode below starts a fresh stream, as enc does. */
		codec_ctx_reset(c);
		n = codec_compress(c, codec, raw, sizeof(raw), enc, sizeof(enc));
		ck_assert_uint_gt(n, 0);
		ck_assert_uint_lt(n, sizeof(raw) / 4);
		codec_ctx_reset(c);
		ck_assert_int_eq(codec_decompress(c, codec, enc, n, dec,
						  sizeof(dec), 1, &err), 0);
		ck_assert_int_eq(memcmp(raw, dec, sizeof(raw)), 0);
		/* Declared smaller than it decodes: refused, not overrun. */
		codec_ctx_reset(c);
		ck_assert_int_eq(codec_decompress(c, codec, enc, n, dec, 1000, 7,
						  &err), -EBADMSG);
		ck_assert_ptr_nonnull(strstr(err.msg, "frame 7"));
		/* Declared larger than it decodes. */
		codec_ctx_reset(c);
		ck_assert_int_eq(codec_decompress(c, codec, enc, n, dec,
						  sizeof(dec) - 1, 8, &err), -EBADMSG);
		ck_assert_ptr_nonnull(strstr(err.msg, "frame 8"));
		/* Garbage. */
		codec_ctx_reset(c);
		memset(enc, 0xa5, 64);
		ck_assert_int_eq(codec_decompress(c, codec, enc, 64, dec,
						  sizeof(dec), 9, &err), -EBADMSG);
	}
	/* Random bytes do not shrink: the frame goes raw. */
	for (size_t i = 0; i < sizeof(raw); i++)
		raw[i] = (uint8_t)(pattern_rand(i));
	ck_assert_uint_eq(codec_compress(c, WIRE_CODEC_LZ4, raw, sizeof(raw), enc,
					 sizeof(enc)), 0);
	codec_ctx_free(c);
}
END_TEST

/*
 * zstd frames are chunks of one stream: a chunk repeating what an earlier
 * one carried, further back than one frame, costs almost nothing, and
 * decodes in order; out of order it does not. The decoder refuses a
 * stream whose window is over its own. A chunk of codec_zstd_in_max()
 * random bytes still fits its frame.
 */
START_TEST(codec_zstd_stream)
{
	enum { F = 1u << 20, K = 4 };
	uint32_t in_max = codec_zstd_in_max(F);
	uint8_t *raw = malloc(F), *enc[K], *dec = malloc(F);
	size_t n[K];
	struct codec_ctx *s, *r, *small;
	struct ferry_error err = { 0 };

	ck_assert_uint_le(in_max, F);
	ck_assert_uint_ge(in_max, F - F / 128);
	ck_assert_int_eq(codec_ctx_new(&s, 0, &err), 0);
	ck_assert_int_eq(codec_ctx_new(&r, 0, &err), 0);
	ck_assert_int_eq(codec_ctx_new(&small, 0, &err), 0);
	ck_assert_int_eq(codec_window_log(1), CODEC_WINDOW_LOG_MAX);
	ck_assert_int_eq(codec_window_log(WIRE_STREAMS_MAX), CODEC_WINDOW_LOG_MIN);
	codec_ctx_set_window(s, codec_window_log(1));
	codec_ctx_set_window(r, codec_window_log(1));
	/* Primed, each holds its window before the first frame; the stream
	 * then starts as if nothing had gone through. */
	codec_ctx_prime(s, true, false);
	codec_ctx_prime(r, false, true);
	ck_assert_uint_ge(codec_ctx_memory(s), 1u << CODEC_WINDOW_LOG_MAX);
	ck_assert_uint_ge(codec_ctx_memory(r), 1u << CODEC_WINDOW_LOG_MAX);
	ck_assert_uint_lt(codec_ctx_memory(small), 1u << CODEC_WINDOW_LOG_MIN);
	/* Chunk 0: random; 1 and 2: other random; 3: chunk 0 again, 2 MiB
	 * back, beyond one frame's window. */
	for (int k = 0; k < K; k++) {
		for (uint32_t i = 0; i < in_max; i++)
			raw[i] = (uint8_t)pattern_rand((k % 3) * in_max + i);
		enc[k] = malloc(codec_bound(in_max));
		n[k] = codec_compress(s, WIRE_CODEC_ZSTD, raw, in_max, enc[k],
				      codec_bound(in_max));
		ck_assert_uint_gt(n[k], 0);
		ck_assert_uint_le(n[k], F);
	}
	ck_assert_uint_gt(n[0], in_max);	/* random: it did not shrink */
	ck_assert_uint_lt(n[3], in_max / 100);
	for (int k = 0; k < K; k++) {
		ck_assert_int_eq(codec_decompress(r, WIRE_CODEC_ZSTD, enc[k], n[k],
						  dec, in_max, k, &err), 0);
		for (uint32_t i = 0; i < in_max; i++)
			raw[i] = (uint8_t)pattern_rand((k % 3) * in_max + i);
		ck_assert_int_eq(memcmp(dec, raw, in_max), 0);
	}
	/* The last chunk alone, without what it refers to. */
	codec_ctx_reset(r);
	ck_assert_int_eq(codec_decompress(r, WIRE_CODEC_ZSTD, enc[3], n[3], dec,
					  in_max, 3, &err), -EBADMSG);
	/* A decoder with the smallest window: the stream asks for more. */
	ck_assert_int_eq(codec_decompress(small, WIRE_CODEC_ZSTD, enc[0], n[0],
					  dec, in_max, 0, &err), -EBADMSG);
	ck_assert_ptr_nonnull(strstr(err.msg, "frame 0"));
	for (int k = 0; k < K; k++)
		free(enc[k]);
	free(raw);
	free(dec);
	codec_ctx_free(s);
	codec_ctx_free(r);
	codec_ctx_free(small);
}
END_TEST

/* Bytes in flight from the link rate and the downtime limit: 1/24 of the
 * limit's worth per buffer, within the bounds; the most for an unknown
 * link. */
START_TEST(in_flight_from_the_link)
{
	ck_assert_uint_eq(net_in_flight_bytes(0, 300), NET_IN_FLIGHT_MAX_BYTES);
	ck_assert_uint_eq(net_in_flight_bytes(24u << 20, 500), 512u << 10);
	ck_assert_uint_eq(net_in_flight_bytes(1u << 20, 100), NET_IN_FLIGHT_MIN_BYTES);
	ck_assert_uint_eq(net_in_flight_bytes(10ull << 30, 300),
			  NET_IN_FLIGHT_MAX_BYTES);
}
END_TEST

START_TEST(ctrl_checks)
{
	struct wire_ctrl_hdr h = { .type = WIRE_CTRL_ERROR, .len = 5000 }, d;
	struct ferry_error err = { 0 };
	uint8_t buf[WIRE_CTRL_HDR_BYTES];

	wire_ctrl_encode(&h, buf);
	ck_assert_int_eq(wire_ctrl_decode(buf, &d, &err), -EMSGSIZE);
	h.type = 0;
	h.len = 1;
	wire_ctrl_encode(&h, buf);
	ck_assert_int_eq(wire_ctrl_decode(buf, &d, &err), -EPROTO);
	h.type = WIRE_CTRL_MAX_TYPE + 1;
	wire_ctrl_encode(&h, buf);
	ck_assert_int_eq(wire_ctrl_decode(buf, &d, &err), -EPROTO);
}
END_TEST

/*
 * Each type's payload length is checked at the header, before the payload
 * is read: the one table in wire.c.
 */
START_TEST(ctrl_lengths)
{
	static const struct { uint16_t type; uint32_t len; bool ok; } cases[] = {
		{ WIRE_CTRL_READY, 0, true }, { WIRE_CTRL_READY, 2, false },
		{ WIRE_CTRL_FINISH, 1, true }, { WIRE_CTRL_FINISH, 0, false },
		{ WIRE_CTRL_FINISH, 2, false }, { WIRE_CTRL_POSTCOPY, 4, false },
		{ WIRE_CTRL_FINISHED, 0, false }, { WIRE_CTRL_FINISHED, 64, true },
		{ WIRE_CTRL_FINISHED, 65, false }, { WIRE_CTRL_PROBED, 16, true },
		{ WIRE_CTRL_PROBED, 15, false }, { WIRE_CTRL_MEMORY, 1, false },
		{ WIRE_CTRL_DISKS, 1, false }, { WIRE_CTRL_VM, 0, false },
		{ WIRE_CTRL_VM, 64, true }, { WIRE_CTRL_VM, 65, false },
		{ WIRE_CTRL_ERROR, 4096, true }, { WIRE_CTRL_CANCEL, 0, true },
	};
	struct ferry_error err = { 0 };
	uint8_t buf[WIRE_CTRL_HDR_BYTES];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct wire_ctrl_hdr h = { .type = cases[i].type,
					   .len = cases[i].len }, d;
		int rc;

		wire_ctrl_encode(&h, buf);
		rc = wire_ctrl_decode(buf, &d, &err);
		ck_assert_msg(cases[i].ok ? rc == 0 : rc == -EPROTO,
			      "%s of %u bytes: %d (%s)", wire_ctrl_name(h.type),
			      h.len, rc, err.msg);
	}
}
END_TEST

/* Flags, FINISHED and VM names: what the receive path decodes. */
START_TEST(ctrl_payloads)
{
	struct wire_ctrl_hdr h = { .type = WIRE_CTRL_FINISH, .len = 1 };
	uint8_t p[WIRE_CTRL_PAYLOAD_MAX + 1] = { 2 };
	char name[WIRE_VM_NAME_MAX + 1];
	struct ferry_error err = { 0 };
	const char *status;
	uint32_t n, blocktime;
	bool flag, ok;

	ck_assert_int_eq(wire_flag_decode(&h, p, &flag, &err), -EPROTO);
	p[0] = 1;
	ck_assert_int_eq(wire_flag_decode(&h, p, &flag, &err), 0);
	ck_assert(flag);

	n = wire_finished_encode(true, "running", WIRE_BLOCKTIME_UNKNOWN, p);
	p[n] = '\0';
	h = (struct wire_ctrl_hdr){ .type = WIRE_CTRL_FINISHED, .len = n };
	ck_assert_int_eq(wire_finished_decode(&h, p, &ok, &status, &blocktime,
					      &err), 0);
	ck_assert(ok);
	ck_assert_str_eq(status, "running");
	ck_assert_uint_eq(blocktime, WIRE_BLOCKTIME_UNKNOWN);
	/* With the post-copy blocktime after the text. */
	n = wire_finished_encode(false, "paused", 1234, p);
	ck_assert_uint_le(n, 1 + WIRE_STATUS_MAX);
	p[n] = '\0';
	h.len = n;
	ck_assert_int_eq(wire_finished_decode(&h, p, &ok, &status, &blocktime,
					      &err), 0);
	ck_assert(!ok);
	ck_assert_str_eq(status, "paused");
	ck_assert_uint_eq(blocktime, 1234);
	/* Anything else after the text is refused. */
	h.len = n - 1;
	ck_assert_int_eq(wire_finished_decode(&h, p, &ok, &status, &blocktime,
					      &err), -EPROTO);

	ck_assert(wire_vm_name_valid("web-1.prod_2"));
	ck_assert(!wire_vm_name_valid(""));
	ck_assert(!wire_vm_name_valid("../etc"));
	ck_assert(!wire_vm_name_valid("a/b"));
	ck_assert(!wire_vm_name_valid("-rf"));
	ck_assert(!wire_vm_name_valid(".hidden"));
	ck_assert(!wire_vm_name_valid("sp ace"));
	memset(name, 'a', sizeof(name));
	name[WIRE_VM_NAME_MAX] = '\0';
	ck_assert(wire_vm_name_valid(name));
	ck_assert_int_eq(wire_vm_encode("vm$", p, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "not a valid VM name"), "%s", err.msg);

	/* A NUL inside, or a bad character, from a peer. */
	memcpy(p, "ab\0cd", 5);
	h = (struct wire_ctrl_hdr){ .type = WIRE_CTRL_VM, .len = 5 };
	ck_assert_int_eq(wire_vm_decode(&h, p, name, &err), -EINVAL);
	memcpy(p, "ab/cd", 5);
	ck_assert_int_eq(wire_vm_decode(&h, p, name, &err), -EINVAL);
	memcpy(p, "abxcd", 5);
	ck_assert_int_eq(wire_vm_decode(&h, p, name, &err), 0);
	ck_assert_str_eq(name, "abxcd");
}
END_TEST

/* CONFIG: NUL-terminated printable arguments, bounded in number. */
START_TEST(ctrl_config)
{
	char *const in[] = { "qemu-system-x86_64", "-m", "128", "" };
	const char *argv[WIRE_CONFIG_ARGS_MAX];
	uint8_t p[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct ferry_error err = { 0 };
	struct wire_ctrl_hdr h = { .type = WIRE_CTRL_CONFIG };
	uint32_t argc;
	int n;

	n = wire_config_encode(in, 4, p, sizeof(p) - 1, &err);
	ck_assert_int_eq(n, 19 + 3 + 4 + 1);
	h.len = (uint32_t)n;
	ck_assert_int_eq(wire_config_decode(&h, p, argv, &argc, &err), 0);
	ck_assert_uint_eq(argc, 4);
	ck_assert_str_eq(argv[2], "128");
	ck_assert_str_eq(argv[3], "");
	h.len = 0;
	ck_assert_int_eq(wire_config_decode(&h, p, argv, &argc, &err), 0);
	ck_assert_uint_eq(argc, 0);
	/* Not NUL-terminated; a control byte; too many arguments. */
	h.len = 5;
	ck_assert_int_eq(wire_config_decode(&h, p, argv, &argc, &err), -EPROTO);
	memcpy(p, "a\nb", 4);
	h.len = 4;
	ck_assert_int_eq(wire_config_decode(&h, p, argv, &argc, &err), -EPROTO);
	ck_assert_msg(strstr(err.msg, "0x0a"), "%s", err.msg);
	memset(p, 0, WIRE_CONFIG_ARGS_MAX + 1);
	h.len = WIRE_CONFIG_ARGS_MAX + 1;
	ck_assert_int_eq(wire_config_decode(&h, p, argv, &argc, &err), -E2BIG);
	ck_assert_int_eq(wire_config_encode(in, 4, p, 10, &err), -E2BIG);
	/* The encoder refuses what the decoder would (a tab, a UTF-8 byte):
	 * the source then sends no configuration rather than one that gets
	 * its whole migration refused. */
	{
		char *const bad[] = { "qemu", "-name", "caf\xc3\xa9" };

		ck_assert_int_eq(wire_config_encode(bad, 3, p, sizeof(p) - 1, &err),
				 -EINVAL);
		ck_assert_msg(strstr(err.msg, "argument 2"), "%s", err.msg);
	}
}
END_TEST

/* A connected TCP pair on loopback. */
static void tcp_pair(int fds[2])
{
	struct ferry_error err = { 0 };
	int lfd = net_listen("127.0.0.1", 0, &err);

	ck_assert_int_ge(lfd, 0);
	fds[0] = net_connect("127.0.0.1", net_local_port(lfd), 2000, &err);
	ck_assert_int_ge(fds[0], 0);
	fds[1] = accept(lfd, NULL, NULL);
	ck_assert_int_ge(fds[1], 0);
	close(lfd);
}

/* A fake QEMU end: writes @len pattern bytes, reads until EOF. */
struct fake_qemu {
	int fd;
	size_t write_len;
	uint32_t write_seed;
	size_t read_len;	/* out */
	uint32_t read_seed;	/* pattern expected on read */
	bool read_ok;		/* out */
	bool close_after_read;	/* a destination QEMU closes when done */
};

static uint8_t pattern_rand(size_t i)
{
	uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull;

	x ^= x >> 29;
	x *= 0xbf58476d1ce4e5b9ull;
	return (uint8_t)(x >> 32);
}

/* Seeds from PATTERN_RANDOM on: bytes no codec shrinks. */
#define PATTERN_RANDOM 1000

static uint8_t pattern(uint32_t seed, size_t i)
{
	uint32_t x = seed ^ (uint32_t)(i / 4093) * 2654435761u;

	if (seed >= PATTERN_RANDOM)
		return pattern_rand((size_t)seed * 1000003u + i);

	return (uint8_t)(x >> (i % 24));
}

static void *fake_writer(void *arg)
{
	struct fake_qemu *f = arg;
	uint8_t buf[65536];
	size_t off = 0;

	while (off < f->write_len) {
		size_t n = f->write_len - off < sizeof(buf) ? f->write_len - off : sizeof(buf);
		ssize_t w;

		for (size_t i = 0; i < n; i++)
			buf[i] = pattern(f->write_seed, off + i);
		w = send(f->fd, buf, n, MSG_NOSIGNAL);
		if (w <= 0)
			return NULL;
		off += (size_t)w;
	}
	return NULL;
}

static void *fake_qemu_run(void *arg)
{
	struct fake_qemu *f = arg;
	uint8_t buf[65536];
	pthread_t w;
	ssize_t n;

	f->read_ok = true;
	pthread_create(&w, NULL, fake_writer, f);
	while ((n = recv(f->fd, buf, sizeof(buf), 0)) > 0) {
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != pattern(f->read_seed, f->read_len + (size_t)i))
				f->read_ok = false;
		f->read_len += (size_t)n;
	}
	pthread_join(w, NULL);
	if (f->close_after_read)
		shutdown(f->fd, SHUT_RDWR);
	return NULL;
}

/* A pre-shared key both ends of a TLS test use. */
static char psk_path[64];

/* Written once by main(), before the tests fork. */
static void psk_init(void)
{
	FILE *f;
	int fd;

	snprintf(psk_path, sizeof(psk_path), "/tmp/ferry-psk.XXXXXX");
	fd = mkstemp(psk_path);
	if (fd < 0)
		abort();
	f = fdopen(fd, "w");
	fprintf(f, "unit:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
	fclose(f);
}

static struct tls_ctx *psk_ctx(bool server)
{
	struct ferry_tls_opts o = { .psk_file = psk_path };
	struct ferry_error err = { 0 };
	struct tls_ctx *c;

	ck_assert_msg(tls_ctx_new(&c, &o, server, &err) == 0, "%s", err.msg);
	return c;
}

struct hs_arg {
	struct tls_ctx *ctx;
	struct net_conn *c;
	int rc;
};

static void *hs_main(void *p)
{
	struct hs_arg *a = p;
	struct ferry_error err = { 0 };

	a->rc = net_conn_start_tls(a->c, a->ctx, NULL, 5000, &err);
	return NULL;
}

/* A connected pair of conns (a: source side, b: receiver side). */
static void conn_pair(struct net_conn *a, struct net_conn *b, bool tls)
{
	int fds[2];

	tcp_pair(fds);
	net_conn_init(a, fds[0]);
	net_conn_init(b, fds[1]);
	if (tls) {
		struct tls_ctx *cc = psk_ctx(false), *sc = psk_ctx(true);
		struct hs_arg ca = { cc, a, 0 }, sa = { sc, b, 0 };
		pthread_t t;

		pthread_create(&t, NULL, hs_main, &sa);
		hs_main(&ca);
		pthread_join(t, NULL);
		ck_assert_int_eq(ca.rc, 0);
		ck_assert_int_eq(sa.rc, 0);
		tls_ctx_free(cc);
		tls_ctx_free(sc);
	}
}

static const struct {
	enum ferry_codec codec;
	uint32_t streams;
	bool tls;
	bool splice;	/* FERRY_TUNNEL_SPLICE set */
	bool random;	/* memory no codec shrinks */
} e2e_cases[] = {
	{ FERRY_CODEC_NONE, 1, false, false, false },
	{ FERRY_CODEC_NONE, 1, false, true, false },
	{ FERRY_CODEC_LZ4, 1, false, false, false },
	{ FERRY_CODEC_ZSTD, 3, false, false, false },
	{ FERRY_CODEC_AUTO, 2, false, false, false },
	{ FERRY_CODEC_NONE, 4, true, true, false },
	{ FERRY_CODEC_LZ4, 1, true, false, false },
	{ FERRY_CODEC_ZSTD, 1, false, false, true },
};

/*
 * Two tunnels back to back over loopback, fake QEMUs at both ends: 48 MiB
 * forward, 300000 bytes back, every byte checked in order.
 */
START_TEST(tunnel_end_to_end)
{
	struct net_conn s_streams[4], d_streams[4], s_ret, d_ret;
	struct tun *src = NULL, *dst = NULL;
	struct ferry_error err = { 0 };
	uint32_t n = e2e_cases[_i].streams;
	bool tls = e2e_cases[_i].tls;
	struct fake_qemu fsrc = { 0 }, fdst = { 0 };
	int sq[2], dq[2];
	pthread_t ts, td;
	struct tun_stats st;

	if (e2e_cases[_i].splice)
		setenv("FERRY_TUNNEL_SPLICE", "1", 1);
	else
		unsetenv("FERRY_TUNNEL_SPLICE");
	for (uint32_t k = 0; k < n; k++)
		conn_pair(&s_streams[k], &d_streams[k], tls);
	conn_pair(&s_ret, &d_ret, tls);
	/* QEMU's sockets as ferry makes them (large buffers: an skb's
	 * many small pieces each take a pipe slot when spliced). */
	ck_assert_int_eq(net_local_pair(sq, &err), 0);
	ck_assert_int_eq(net_local_pair(dq, &err), 0);
	{
		struct tun_opts so = { .role = TUN_SOURCE, .local_fd = sq[1],
				       .streams = s_streams, .nstreams = n,
				       .ret = s_ret, .codec = e2e_cases[_i].codec };
		struct tun_opts dopt = { .role = TUN_DEST, .local_fd = dq[1],
					 .streams = d_streams, .nstreams = n,
					 .ret = d_ret,
					 .zstd = e2e_cases[_i].codec == FERRY_CODEC_ZSTD ||
						 e2e_cases[_i].codec == FERRY_CODEC_AUTO };

		ck_assert_msg(tun_start(&src, &so, &err) == 0, "%s", err.msg);
		ck_assert_msg(tun_start(&dst, &dopt, &err) == 0, "%s", err.msg);
	}
	fsrc.fd = sq[0];
	fsrc.write_len = 48u << 20;
	fsrc.write_seed = e2e_cases[_i].random ? PATTERN_RANDOM + 1 : 1;
	fsrc.read_seed = 2;
	fdst.fd = dq[0];
	fdst.write_len = 300000;	/* the return path */
	fdst.write_seed = 2;
	fdst.read_seed = fsrc.write_seed;
	fdst.close_after_read = true;
	pthread_create(&td, NULL, fake_qemu_run, &fdst);
	pthread_create(&ts, NULL, fake_writer, &fsrc);
	pthread_join(ts, NULL);
	shutdown(sq[0], SHUT_WR);
	fsrc.write_len = 0;
	fake_qemu_run(&fsrc);
	pthread_join(td, NULL);

	ck_assert_msg(tun_wait(src, 5000, &err) == 0, "source: %s", err.msg);
	ck_assert_msg(tun_wait(dst, 5000, &err) == 0, "destination: %s", err.msg);
	ck_assert_uint_eq(fdst.read_len, 48u << 20);
	ck_assert(fdst.read_ok);
	ck_assert_uint_eq(fsrc.read_len, 300000);
	ck_assert(fsrc.read_ok);
	tun_stats(src, &st);
	ck_assert_uint_eq(st.local_in_bytes, 48u << 20);
	switch (e2e_cases[_i].codec) {
	case FERRY_CODEC_NONE:
		ck_assert_uint_gt(st.wire_out_bytes, st.local_in_bytes);
		ck_assert_uint_eq(st.frames_codec[WIRE_CODEC_LZ4] +
				  st.frames_codec[WIRE_CODEC_ZSTD], 0);
		/* One plaintext stream with splice on: every byte by splice,
		 * both sides. */
		if (n == 1 && !tls && e2e_cases[_i].splice) {
			struct tun_stats ds;

			ck_assert_uint_eq(st.spliced_bytes, 48u << 20);
			tun_stats(dst, &ds);
			ck_assert_uint_eq(ds.spliced_bytes, 48u << 20);
		}
		break;
	case FERRY_CODEC_LZ4:
		ck_assert_uint_gt(st.frames_codec[WIRE_CODEC_LZ4], 0);
		ck_assert_uint_lt(st.wire_out_bytes, st.local_in_bytes / 2);
		break;
	case FERRY_CODEC_ZSTD:
		ck_assert_uint_gt(st.frames_codec[WIRE_CODEC_ZSTD], 0);
		if (!e2e_cases[_i].random) {
			ck_assert_uint_lt(st.wire_out_bytes, st.local_in_bytes / 2);
			break;
		}
		/* Random: a chunk that did not shrink sends the next 1, 2,
		 * 4, then TUN_SKIP_FRAMES raw untried, then zstd tries
		 * again (48 frames: zstd 0, 2, 5, 10, 19, 28, 37, 46). */
		ck_assert_uint_gt(st.frames_codec[WIRE_CODEC_ZSTD], 1);
		ck_assert_uint_gt(st.frames_codec[WIRE_CODEC_RAW],
				  4 * st.frames_codec[WIRE_CODEC_ZSTD]);
		ck_assert_uint_lt(st.wire_out_bytes, st.local_in_bytes +
				  st.local_in_bytes / 64);
		break;
	case FERRY_CODEC_AUTO:
		break;
	}
	/* Never with TLS, several streams, or splice off. */
	if (tls || n > 1 || !e2e_cases[_i].splice)
		ck_assert_uint_eq(st.spliced_bytes, 0);
	tun_free(src);
	tun_free(dst);
	close(sq[0]);
	close(dq[0]);
	unsetenv("FERRY_TUNNEL_SPLICE");
}
END_TEST

/*
 * Post-copy's preempt channel: a one-way tunnel (no return connection),
 * urgent on a shared pacer, adopted by the memory tunnel, both over
 * loopback with fake QEMUs. The main stream's frames are cut to what
 * hold_bytes allows; every byte of both arrives in order; waiting and
 * counting cover both.
 */
START_TEST(tunnel_preempt_companion)
{
	const size_t main_len = 8u << 20, pre_len = 1u << 20;
	struct net_conn sm, dm, sr, dr, sp, dp;
	struct tun *src = NULL, *dst = NULL, *spre = NULL, *dpre = NULL;
	struct fake_qemu fsrc = { 0 }, fdst = { 0 }, psrc = { 0 }, pdst = { 0 };
	struct ferry_error err = { 0 };
	struct pacer *pacer;
	int sq[2], dq[2], sp2[2], dp2[2];
	pthread_t ts, td, tps, tpd;
	struct tun_stats st;

	ck_assert_int_eq(pacer_new(&pacer, 1ull << 30, NULL), 0);
	conn_pair(&sm, &dm, false);
	conn_pair(&sr, &dr, false);
	conn_pair(&sp, &dp, false);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sq), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, dq), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp2), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, dp2), 0);
	{
		struct tun_opts so = { .role = TUN_SOURCE, .local_fd = sq[1],
				       .streams = &sm, .nstreams = 1, .ret = sr,
				       .hold_bytes = 128u << 10, .pacer = pacer };
		/* The sources' codec is auto: zstd frames may come. */
		struct tun_opts dopt = { .role = TUN_DEST, .local_fd = dq[1],
					 .streams = &dm, .nstreams = 1, .ret = dr,
					 .zstd = true };
		struct tun_opts spo = { .role = TUN_SOURCE, .local_fd = sp2[1],
					.streams = &sp, .nstreams = 1,
					.pacer = pacer, .urgent = true,
					.idle_timeout_ms = TUN_IDLE_NEVER };
		struct tun_opts dpo = { .role = TUN_DEST, .local_fd = dp2[1],
					.streams = &dp, .nstreams = 1,
					.idle_timeout_ms = TUN_IDLE_NEVER,
					.zstd = true };

		net_conn_init(&spo.ret, -1);
		net_conn_init(&dpo.ret, -1);
		ck_assert_msg(tun_start(&src, &so, &err) == 0, "%s", err.msg);
		ck_assert_msg(tun_start(&dst, &dopt, &err) == 0, "%s", err.msg);
		ck_assert_msg(tun_start(&spre, &spo, &err) == 0, "%s", err.msg);
		ck_assert_msg(tun_start(&dpre, &dpo, &err) == 0, "%s", err.msg);
	}
	tun_adopt(src, spre);
	tun_adopt(dst, dpre);
	fsrc = (struct fake_qemu){ .fd = sq[0], .write_len = main_len,
				   .write_seed = 1, .read_seed = 2 };
	fdst = (struct fake_qemu){ .fd = dq[0], .write_len = 1000,
				   .write_seed = 2, .read_seed = 1,
				   .close_after_read = true };
	psrc = (struct fake_qemu){ .fd = sp2[0], .write_len = pre_len,
				   .write_seed = 3 };
	pdst = (struct fake_qemu){ .fd = dp2[0], .read_seed = 3,
				   .close_after_read = true };
	pthread_create(&td, NULL, fake_qemu_run, &fdst);
	pthread_create(&tpd, NULL, fake_qemu_run, &pdst);
	pthread_create(&ts, NULL, fake_writer, &fsrc);
	pthread_create(&tps, NULL, fake_writer, &psrc);
	pthread_join(tps, NULL);
	shutdown(sp2[0], SHUT_WR);	/* QEMU closes its preempt channel */
	pthread_join(ts, NULL);
	shutdown(sq[0], SHUT_WR);
	fsrc.write_len = 0;
	fake_qemu_run(&fsrc);
	pthread_join(td, NULL);
	pthread_join(tpd, NULL);

	ck_assert_msg(tun_wait(src, 5000, &err) == 0, "source: %s", err.msg);
	ck_assert_msg(tun_wait(dst, 5000, &err) == 0, "destination: %s", err.msg);
	ck_assert_uint_eq(fdst.read_len, main_len);
	ck_assert(fdst.read_ok);
	ck_assert_uint_eq(pdst.read_len, pre_len);
	ck_assert(pdst.read_ok);
	ck_assert_uint_eq(fsrc.read_len, 1000);
	tun_stats(src, &st);
	ck_assert_uint_eq(st.local_in_bytes, main_len + pre_len);
	/* 128 KiB frames on the main stream (one buffer: inline), whole
	 * ones on the preempt channel's. */
	ck_assert_uint_ge(st.frames_out, main_len / (128u << 10));
	tun_free(src);		/* frees the companions too */
	tun_free(dst);
	pacer_unref(pacer);
	close(sq[0]);
	close(dq[0]);
	close(sp2[0]);
	close(dp2[0]);
}
END_TEST

/* A preempt channel that breaks ends the memory tunnel, and says so. */
START_TEST(tunnel_preempt_failure_ends_both)
{
	struct net_conn sm, dm, sr, dr, sp, dp;
	struct tun *dst = NULL, *dpre = NULL;
	struct ferry_error err = { 0 };
	int dq[2], dp2[2];
	char c;

	conn_pair(&sm, &dm, false);
	conn_pair(&sr, &dr, false);
	conn_pair(&sp, &dp, false);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, dq), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, dp2), 0);
	{
		struct tun_opts dopt = { .role = TUN_DEST, .local_fd = dq[1],
					 .streams = &dm, .nstreams = 1, .ret = dr };
		struct tun_opts dpo = { .role = TUN_DEST, .local_fd = dp2[1],
					.streams = &dp, .nstreams = 1,
					.idle_timeout_ms = TUN_IDLE_NEVER };

		net_conn_init(&dpo.ret, -1);
		ck_assert_int_eq(tun_start(&dst, &dopt, &err), 0);
		ck_assert_int_eq(tun_start(&dpre, &dpo, &err), 0);
	}
	tun_adopt(dst, dpre);
	ck_assert_int_eq(send(sp.fd, "garbage!", 8, MSG_NOSIGNAL), 8);
	shutdown(sp.fd, SHUT_WR);
	ck_assert_int_lt(tun_wait(dst, 10000, &err), 0);
	ck_assert_msg(strstr(err.msg, "preempt channel"), "%s", err.msg);
	/* QEMU sees its main stream end. */
	ck_assert_int_eq(recv(dq[0], &c, 1, 0), 0);
	tun_free(dst);
	close(dq[0]);
	close(dp2[0]);
	net_conn_close(&sm);
	net_conn_close(&sr);
	net_conn_close(&sp);
}
END_TEST

/*
 * A destination tunnel whose peer misbehaves on the data stream: it must
 * end with the expected error and shut the local socket, so QEMU sees the
 * stream end.
 */
/* @may_pass: bytes the local QEMU may get before its stream ends (what
 * arrived of a raw frame cut short, spliced on as it came). */
/* Whether bad_peer()'s source announced zstd frames (WIRE_OPT_ZSTD). */
static bool peer_zstd = true;

static void bad_peer(const void *bytes, size_t len, bool close_peer,
		     uint32_t idle_ms, int want, const char *phrase,
		     size_t may_pass)
{
	size_t passed = 0;

	struct net_conn s_data, d_data, s_ret, d_ret;
	struct tun *t = NULL;
	struct ferry_error err = { 0 };
	int q[2];
	char c;

	conn_pair(&s_data, &d_data, false);
	conn_pair(&s_ret, &d_ret, false);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, q), 0);
	{
		struct tun_opts o = { .role = TUN_DEST, .local_fd = q[1],
				      .streams = &d_data, .nstreams = 1,
				      .ret = d_ret, .idle_timeout_ms = idle_ms,
				      .zstd = peer_zstd };

		ck_assert_int_eq(tun_start(&t, &o, &err), 0);
	}
	if (len)
		ck_assert_int_eq(send(s_data.fd, bytes, len, MSG_NOSIGNAL),
				 (ssize_t)len);
	if (close_peer)
		shutdown(s_data.fd, SHUT_WR);
	ck_assert_int_eq(tun_wait(t, 10000, &err), want);
	ck_assert_msg(strstr(err.msg, phrase), "message '%s' lacks '%s'",
		      err.msg, phrase);
	/* The local QEMU side sees its stream end, after at most what it
	 * may get (a raw frame cut short: a cut like any other). */
	while (passed <= may_pass && recv(q[0], &c, 1, 0) > 0)
		passed++;
	ck_assert_uint_le(passed, may_pass);
	ck_assert_int_eq(recv(q[0], &c, 1, 0), 0);
	tun_free(t);
	close(q[0]);
	net_conn_close(&s_data);
	net_conn_close(&s_ret);
}

/* A frame header + payload in @buf; returns the length. */
static size_t frame(uint8_t *buf, uint16_t type, uint16_t flags, uint32_t len,
		    uint32_t raw_len, uint64_t seq, const void *payload)
{
	struct wire_frame_hdr h = { .type = type, .flags = flags, .len = len,
				    .raw_len = raw_len, .seq = seq };

	wire_frame_encode(&h, buf);
	if (payload)
		memcpy(buf + WIRE_FRAME_HDR_BYTES, payload, len);
	return WIRE_FRAME_HDR_BYTES + len;
}

/* A frame of @type whose payload is 8 KiB of @fill compressed with @codec
 * (a fresh stream), declaring @raw_len; returns its length. */
static size_t compressed_frame(uint8_t *buf, uint16_t type,
			       enum wire_codec codec, uint8_t fill,
			       uint32_t raw_len)
{
	static uint8_t raw[8192], enc[9000];
	struct ferry_error err = { 0 };
	struct codec_ctx *c;
	size_t n;

	memset(raw, fill, sizeof(raw));
	ck_assert_int_eq(codec_ctx_new(&c, 0, &err), 0);
	n = codec_compress(c, codec, raw, sizeof(raw), enc, sizeof(enc));
	codec_ctx_free(c);
	ck_assert_uint_gt(n, 0);
	return frame(buf, type, codec, (uint32_t)n, raw_len, 0, enc);
}

START_TEST(tunnel_garbage)
{
	const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

	bad_peer(junk, sizeof(junk) - 1, false, 0, -EPROTO, "unknown type", 0);
}
END_TEST

/* A raw frame cut short, copied (0) or spliced (1) to the local end. */
START_TEST(tunnel_truncated)
{
	uint8_t buf[WIRE_FRAME_HDR_BYTES + 10] = { 0 };

	if (_i)
		setenv("FERRY_TUNNEL_SPLICE", "1", 1);
	frame(buf, WIRE_FRAME_DATA, 0, 1000, 1000, 0, NULL);
	bad_peer(buf, sizeof(buf), true, 0, -ECONNRESET, "closed the connection",
		 10);
	unsetenv("FERRY_TUNNEL_SPLICE");
}
END_TEST

START_TEST(tunnel_wrong_direction)
{
	uint8_t buf[64] = { 0 };
	size_t n = frame(buf, WIRE_FRAME_RETURN, 0, 4, 4, 0, "abcd");

	bad_peer(buf, n, false, 0, -EPROTO, "does not belong in this direction",
		 0);
}
END_TEST

START_TEST(tunnel_out_of_sequence)
{
	uint8_t buf[64] = { 0 };
	size_t n = frame(buf, WIRE_FRAME_DATA, 0, 4, 4, 5, "abcd");

	bad_peer(buf, n, false, 0, -EPROTO, "out of sequence", 0);
}
END_TEST

START_TEST(tunnel_oversized)
{
	uint8_t buf[64] = { 0 };
	frame(buf, WIRE_FRAME_DATA, 0, TUN_FRAME_BYTES + 1,
	      TUN_FRAME_BYTES + 1, 0, NULL);
	/* The header alone is refused: nothing is read or allocated after. */
	bad_peer(buf, WIRE_FRAME_HDR_BYTES, false, 0, -EMSGSIZE, "limit", 0);
}
END_TEST

/*
 * Compressed payloads a destination refuses: LZ4 that decodes to more
 * than the frame declares; zstd from a source whose hello did not
 * announce zstd.
 */
static const struct {
	enum wire_codec codec;
	uint8_t fill;
	uint32_t raw_len;	/* declared */
	bool announced;
	int want;
	const char *phrase;
} bad_compressed_cases[] = {
	{ WIRE_CODEC_LZ4, 'x', 100, true, -EBADMSG,
	  "more than the declared 100 bytes" },
	{ WIRE_CODEC_ZSTD, 'z', 8192, false, -EPROTO, "did not announce" },
};

START_TEST(tunnel_bad_compressed)
{
	static uint8_t buf[WIRE_FRAME_HDR_BYTES + 9000];
	size_t n = compressed_frame(buf, WIRE_FRAME_DATA,
				    bad_compressed_cases[_i].codec,
				    bad_compressed_cases[_i].fill,
				    bad_compressed_cases[_i].raw_len);

	peer_zstd = bad_compressed_cases[_i].announced;
	bad_peer(buf, n, false, 0, bad_compressed_cases[_i].want,
		 bad_compressed_cases[_i].phrase, 0);
	peer_zstd = true;
}
END_TEST

START_TEST(tunnel_decompress_garbage)
{
	uint8_t junk[200], buf[300];
	size_t n;

	memset(junk, 0x5a, sizeof(junk));
	n = frame(buf, WIRE_FRAME_DATA, WIRE_CODEC_ZSTD, sizeof(junk), 4096, 0, junk);
	bad_peer(buf, n, false, 0, -EBADMSG, "zstd", 0);
}
END_TEST

START_TEST(tunnel_stall)
{
	uint64_t t0 = ferry_now_ms();

	bad_peer(NULL, 0, false, 300, -ETIMEDOUT, "stalled", 0);
	ck_assert_uint_ge(ferry_now_ms() - t0, 300);
}
END_TEST

/*
 * A slow peer is not a stalled one: a frame that takes several idle
 * timeouts to trickle in (256 KiB at 4 KiB per 20 ms, about 1.3 s,
 * against 400 ms) arrives whole. A recv with MSG_WAITALL says nothing
 * until all of it came; the tunnel must see the bytes that did.
 */
START_TEST(tunnel_slow_not_stalled)
{
	enum { LEN = 256u << 10, STEP = 4096 };
	static uint8_t buf[WIRE_FRAME_HDR_BYTES + LEN];
	struct net_conn s_data, d_data, s_ret, d_ret;
	struct tun *t = NULL;
	struct ferry_error err = { 0 };
	uint64_t t0 = ferry_now_ms();
	size_t n, got = 0;
	uint8_t end[WIRE_FRAME_HDR_BYTES], rd[65536];
	ssize_t r;
	bool same = true;
	int q[2];

	conn_pair(&s_data, &d_data, false);
	conn_pair(&s_ret, &d_ret, false);
	ck_assert_int_eq(net_local_pair(q, &err), 0);
	{
		struct tun_opts o = { .role = TUN_DEST, .local_fd = q[1],
				      .streams = &d_data, .nstreams = 1,
				      .ret = d_ret, .idle_timeout_ms = 400 };

		ck_assert_int_eq(tun_start(&t, &o, &err), 0);
	}
	for (size_t i = 0; i < LEN; i++)
		buf[WIRE_FRAME_HDR_BYTES + i] = pattern(3, i);
	n = frame(buf, WIRE_FRAME_DATA, WIRE_CODEC_RAW, LEN, LEN, 0, NULL);
	for (size_t off = 0; off < n; off += STEP) {
		size_t k = n - off < STEP ? n - off : STEP;

		ck_assert_int_eq(send(s_data.fd, buf + off, k, MSG_NOSIGNAL),
				 (ssize_t)k);
		usleep(20000);
	}
	frame(end, WIRE_FRAME_END, 0, 0, 0, 1, NULL);
	ck_assert_int_eq(send(s_data.fd, end, sizeof(end), MSG_NOSIGNAL),
			 (ssize_t)sizeof(end));
	while ((r = recv(q[0], rd, sizeof(rd), 0)) > 0) {
		for (ssize_t i = 0; i < r; i++)
			same &= rd[i] == pattern(3, got + (size_t)i);
		got += (size_t)r;
	}
	shutdown(q[0], SHUT_WR);	/* the return path ends too */
	ck_assert_msg(tun_wait(t, 10000, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(got, LEN);
	ck_assert(same);
	/* It did take longer than the idle timeout, several times. */
	ck_assert_uint_ge(ferry_now_ms() - t0, 3 * 400);
	tun_free(t);
	close(q[0]);
	net_conn_close(&s_data);
	net_conn_close(&s_ret);
}
END_TEST

/* The return path is never compressed: a source tunnel refuses a
 * compressed RETURN frame (and keeps no decoder for one). */
START_TEST(tunnel_return_raw_only)
{
	static uint8_t buf[WIRE_FRAME_HDR_BYTES + 9000];
	struct net_conn s_data, d_data, s_ret, d_ret;
	struct tun *t = NULL;
	struct ferry_error err = { 0 };
	size_t n = compressed_frame(buf, WIRE_FRAME_RETURN, WIRE_CODEC_LZ4, 'r',
				    8192);
	int q[2];

	conn_pair(&s_data, &d_data, false);
	conn_pair(&s_ret, &d_ret, false);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, q), 0);
	{
		struct tun_opts o = { .role = TUN_SOURCE, .local_fd = q[1],
				      .streams = &s_data, .nstreams = 1,
				      .ret = s_ret, .codec = FERRY_CODEC_LZ4 };

		ck_assert_int_eq(tun_start(&t, &o, &err), 0);
	}
	ck_assert_int_eq(send(d_ret.fd, buf, n, MSG_NOSIGNAL), (ssize_t)n);
	ck_assert_int_eq(tun_wait(t, 10000, &err), -EPROTO);
	ck_assert_msg(strstr(err.msg, "never is"), "%s", err.msg);
	tun_free(t);
	close(q[0]);
	net_conn_close(&d_data);
	net_conn_close(&d_ret);
}
END_TEST

/* The receiving end of the link meter's test: reads @chunk bytes every
 * @pause_us until EOF. */
struct meter_reader {
	int fd;
	size_t chunk;
	useconds_t pause_us;
};

static void *meter_read(void *arg)
{
	struct meter_reader *r = arg;
	static uint8_t buf[1 << 20];

	while (read(r->fd, buf, r->chunk) > 0)
		if (r->pause_us)
			usleep(r->pause_us);
	return NULL;
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Write to @fd for @ms, a 64 KiB write every @gap_us at most, asking the
 * meter after each write as the sender does after each frame, with the
 * time each write waited: the highest rate it reported (0: never one).
 */
static double meter_run(int fd, uint32_t ms, useconds_t gap_us)
{
	static uint8_t buf[64 << 10];
	struct tun_conn c = { .c = { .fd = fd } };
	uint64_t end = ferry_now_ns() + ms * 1000000ull;
	double top = 0;

	while (ferry_now_ns() < end) {
		uint64_t w0 = ferry_now_ns(), c0 = thread_cpu_ns(), wall, cpu;
		double r;

		ck_assert_int_eq(write(fd, buf, sizeof(buf)), sizeof(buf));
		wall = ferry_now_ns() - w0;
		cpu = thread_cpu_ns() - c0;
		c.link_wait_ns += wall > cpu ? wall - cpu : 0;
		r = tun_conn_link_rate(&c, ferry_now_ns());
		if (r > top)
			top = r;
		if (gap_us)
			usleep(gap_us);
	}
	return top;
}

/*
 * The link meter (tun_conn_link_rate()) on real TCP connections, with
 * TCP pacing the sender to 20 MB/s (SO_MAX_PACING_RATE) as the link:
 * - a sender that keeps it fed, to a reader that keeps up: the meter
 *   measures the pace (here 11-13% above it, TCP's pacing letting bursts
 *   through; below by as much as a loaded machine may lag);
 * - a sender slower than the pace (a 64 KiB write every 3.5 ms, 18.7
 *   MB/s) never waits in a write: nothing (on loopback the connection is
 *   also idle between writes; on a path whose round trip is longer than
 *   that gap it would look busy, and only the wait tells);
 * - a reader that lags (64 KiB every 20 ms), so that its window holds
 *   an unpaced sender back, an idle connection, and a socket that is not
 *   TCP: nothing.
 */
START_TEST(link_meter)
{
	const double pace = 20e6;
	struct meter_reader fast = { .chunk = 1 << 20 };
	struct meter_reader slow = { .chunk = 64 << 10, .pause_us = 20000 };
	struct tun_conn idle;
	pthread_t th;
	int fds[2];
	double top;

	for (int fed = 1; fed >= 0; fed--) {
		tcp_pair(fds);
		ck_assert_int_eq(setsockopt(fds[0], SOL_SOCKET,
					    SO_MAX_PACING_RATE,
					    &(unsigned int){ (unsigned int)pace },
					    sizeof(unsigned int)), 0);
		fast.fd = fds[1];
		ck_assert_int_eq(pthread_create(&th, NULL, meter_read, &fast), 0);
		top = meter_run(fds[0], 1000, fed ? 0 : 3500);
		shutdown(fds[0], SHUT_WR);
		pthread_join(th, NULL);
		if (fed)
			ck_assert_msg(top > pace / 4 && top < pace * 1.5,
				      "paced at %.0f MB/s, measured %.1f",
				      pace / 1e6, top / 1e6);
		else
			ck_assert_msg(top == 0, "a sender slower than its link "
				      "measured as a link of %.1f MB/s",
				      top / 1e6);
		close(fds[0]);
		close(fds[1]);
	}

	tcp_pair(fds);
	slow.fd = fds[1];
	ck_assert_int_eq(pthread_create(&th, NULL, meter_read, &slow), 0);
	top = meter_run(fds[0], 400, 0);
	shutdown(fds[0], SHUT_RDWR);
	pthread_join(th, NULL);
	ck_assert_msg(top == 0, "a lagging reader measured as a link of "
		      "%.1f MB/s", top / 1e6);
	close(fds[0]);
	close(fds[1]);

	tcp_pair(fds);
	idle = (struct tun_conn){ .c = { .fd = fds[0] } };
	ck_assert(tun_conn_link_rate(&idle, ferry_now_ns()) == 0);
	usleep(TUN_LINK_WINDOW_MS * 1000 * 3 / 2);
	ck_assert(tun_conn_link_rate(&idle, ferry_now_ns()) == 0);
	close(fds[0]);
	close(fds[1]);

	/* Not TCP: nothing, a window later too, however long it waited. */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
	idle = (struct tun_conn){ .c = { .fd = fds[0] } };
	ck_assert(tun_conn_link_rate(&idle, ferry_now_ns()) == 0);
	ck_assert_uint_gt(idle.link_t0_ns, 0);
	idle.link_wait_ns = 1000000000ull;
	usleep(TUN_LINK_WINDOW_MS * 1000 * 3 / 2);
	ck_assert(tun_conn_link_rate(&idle, ferry_now_ns()) == 0);
	ck_assert_uint_eq(idle.link_wait_ns, 0);
	close(fds[0]);
	close(fds[1]);
}
END_TEST

START_TEST(tunnel_cancel)
{
	struct net_conn s_data, d_data, s_ret, d_ret;
	struct tun *t = NULL;
	struct ferry_error err = { 0 };
	int q[2];

	conn_pair(&s_data, &d_data, false);
	conn_pair(&s_ret, &d_ret, false);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, q), 0);
	{
		struct tun_opts o = { .role = TUN_SOURCE, .local_fd = q[1],
				      .streams = &s_data, .nstreams = 1,
				      .ret = s_ret };

		ck_assert_int_eq(tun_start(&t, &o, &err), 0);
	}
	ck_assert_int_eq(tun_wait(t, 100, &err), -ETIMEDOUT);
	tun_cancel(t);
	ck_assert_int_eq(tun_wait(t, 5000, &err), -ECANCELED);
	tun_free(t);
	close(q[0]);
	net_conn_close(&d_data);
	net_conn_close(&d_ret);
}
END_TEST

/* ---- the link probe ---- */

struct probe_srv {
	int fd;
	int rc;
	struct ferry_error err;
};

static void *probe_srv_main(void *arg)
{
	struct probe_srv *ps = arg;
	struct net_conn c;

	net_conn_init(&c, ps->fd);
	ps->rc = probe_serve(&c, &ps->err);
	return NULL;
}

START_TEST(probe_roundtrip)
{
	struct probe_srv ps = { 0 };
	struct ferry_error err = { 0 };
	struct net_conn c;
	uint64_t rate = 0;
	pthread_t t;
	int fds[2];

	tcp_pair(fds);
	ps.fd = fds[1];
	pthread_create(&t, NULL, probe_srv_main, &ps);
	net_conn_init(&c, fds[0]);
	ck_assert_msg(probe_send(&c, &rate, &err) == 0, "%s", err.msg);
	pthread_join(t, NULL);
	ck_assert_msg(ps.rc == 0, "%s", ps.err.msg);
	ck_assert_uint_gt(rate, 0);
	ck_assert_uint_gt(probe_compressor_rate(), 0);
	close(fds[0]);
	close(fds[1]);
}
END_TEST

/* What a probe may not be: compressed, out of sequence, cut short. */
static void bad_probe(const uint8_t *bytes, size_t len, int want)
{
	struct probe_srv ps = { 0 };
	pthread_t t;
	int fds[2];

	tcp_pair(fds);
	ps.fd = fds[1];
	pthread_create(&t, NULL, probe_srv_main, &ps);
	ck_assert_int_eq(write(fds[0], bytes, len), (ssize_t)len);
	shutdown(fds[0], SHUT_WR);
	pthread_join(t, NULL);
	ck_assert_msg(ps.rc == want, "probe_serve gave %d (%s), expected %d",
		      ps.rc, ps.err.msg, want);
	close(fds[0]);
	close(fds[1]);
}

START_TEST(probe_rejects)
{
	static uint8_t buf[2 * (WIRE_FRAME_HDR_BYTES + 64)];
	static const uint8_t payload[64];
	size_t n;

	/* an LZ4 frame */
	n = frame(buf, WIRE_FRAME_DATA, WIRE_CODEC_LZ4, 64, 64, 0, payload);
	bad_probe(buf, n, -EPROTO);
	/* frame 1 before frame 0 */
	n = frame(buf, WIRE_FRAME_DATA, 0, 64, 64, 1, payload);
	bad_probe(buf, n, -EPROTO);
	/* a return-path frame */
	n = frame(buf, WIRE_FRAME_RETURN, 0, 64, 64, 0, payload);
	bad_probe(buf, n, -EPROTO);
	/* cut in the middle of a payload */
	n = frame(buf, WIRE_FRAME_DATA, 0, 64, 64, 0, payload);
	bad_probe(buf, n - 10, -ECONNRESET);
}
END_TEST

/* ---- TLS: what an operator is told ---- */

/*
 * Made once by main(), before the tests fork: good/ (a CA, server and
 * client), bad certificates beside it, PSK files, and the broken
 * credentials each load test needs.
 */
static char tls_dir[64];

static const char *tls_path(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", tls_dir, name);
	return buf;
}

static void tls_pki_step(int rc, const struct ferry_error *err)
{
	if (rc) {
		fprintf(stderr, "test PKI: %s\n", err->msg);
		abort();
	}
}

static void tls_pki_init(void)
{
	struct ferry_error err = { 0 };
	char good[128], p[160], q[192];
	FILE *f;

	snprintf(tls_dir, sizeof(tls_dir), "/tmp/ferry-tls.XXXXXX");
	if (!mkdtemp(tls_dir))
		abort();
	tls_path("good", good, sizeof(good));
	tls_pki_step(pki_generate(good, NULL, &err), &err);
	tls_pki_step(pki_bad_client(good, tls_path("expired-client", p, sizeof(p)),
				    PKI_CLIENT_EXPIRED, &err), &err);
	tls_pki_step(pki_bad_client(good, tls_path("rogue-client", p, sizeof(p)),
				    PKI_CLIENT_ROGUE, &err), &err);
	tls_pki_step(pki_bad_server(good, tls_path("expired-server", p, sizeof(p)),
				    PKI_CLIENT_EXPIRED, &err), &err);
	tls_pki_step(pki_bad_server(good, tls_path("rogue-server", p, sizeof(p)),
				    PKI_CLIENT_ROGUE, &err), &err);
	/* Two keys for one identity, and an identity the server lacks. */
	tls_pki_step(pki_write_psk(tls_path("a.psk", p, sizeof(p)), "ferry",
				   &err), &err);
	tls_pki_step(pki_write_psk(tls_path("b.psk", p, sizeof(p)), "ferry",
				   &err), &err);
	tls_pki_step(pki_write_psk(tls_path("c.psk", p, sizeof(p)), "other",
				   &err), &err);
	/* No files at all; a CA file that is not PEM; a key that is a
	 * directory; the client's key where the server's should be; a key
	 * nobody but root may read. */
	if (mkdir(tls_path("empty", p, sizeof(p)), 0700) != 0)
		abort();
	tls_pki_step(pki_generate(tls_path("junk-ca", p, sizeof(p)), NULL, &err),
		     &err);
	snprintf(q, sizeof(q), "%s/ca-cert.pem", p);
	f = fopen(q, "w");
	if (!f)
		abort();
	fputs("this is not a certificate\n", f);
	fclose(f);
	tls_pki_step(pki_generate(tls_path("key-dir", p, sizeof(p)), NULL, &err),
		     &err);
	snprintf(q, sizeof(q), "%s/server-key.pem", p);
	if (unlink(q) != 0 || mkdir(q, 0700) != 0)
		abort();
	tls_pki_step(pki_generate(tls_path("key-other", p, sizeof(p)), NULL,
				  &err), &err);
	snprintf(q, sizeof(q), "%s/server-key.pem", p);
	if (rename(strcat(p, "/client-key.pem"), q) != 0)
		abort();
	tls_pki_step(pki_generate(tls_path("key-locked", p, sizeof(p)), NULL,
				  &err), &err);
	/* Traversable, the certificates readable, by the unprivileged user
	 * tls_key_unreadable() becomes when run as root; the key by none. */
	chmod(tls_dir, 0711);
	chmod(p, 0711);
	snprintf(q, sizeof(q), "%s/ca-cert.pem", p);
	chmod(q, 0644);
	snprintf(q, sizeof(q), "%s/server-cert.pem", p);
	chmod(q, 0644);
	snprintf(q, sizeof(q), "%s/server-key.pem", p);
	chmod(q, 0);
}

static int tls_rm(const char *path, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	return remove(path);
}

static void tls_pki_remove(void)
{
	nftw(tls_dir, tls_rm, 16, FTW_DEPTH | FTW_PHYS);
}

static void assert_has(const char *msg, const char *phrase)
{
	ck_assert_msg(strstr(msg, phrase), "message '%s' lacks '%s'", msg,
		      phrase);
}

/* A context that must fail to load: its code and message. */
static int tls_load_fails(const struct ferry_tls_opts *o, bool server,
			  struct ferry_error *err)
{
	struct tls_ctx *c = NULL;
	int rc = tls_ctx_new(&c, o, server, err);

	ck_assert_msg(rc < 0, "loaded credentials that should fail");
	ck_assert_ptr_null(c);
	return rc;
}

/* Missing, a directory, or not PEM: the file, and errno's or OpenSSL's
 * reason (never the name of the library that passed it on). */
START_TEST(tls_load_errors)
{
	struct ferry_tls_opts o = { 0 };
	struct ferry_error err = { 0 };
	char dir[128], path[192];

	o.creds_dir = tls_path("empty", dir, sizeof(dir));
	ck_assert_int_eq(tls_load_fails(&o, true, &err), -ENOENT);
	snprintf(path, sizeof(path), "%s/ca-cert.pem", dir);
	assert_has(err.msg, path);
	assert_has(err.msg, "CA certificate");
	assert_has(err.msg, "file not found");

	o.creds_dir = tls_path("junk-ca", dir, sizeof(dir));
	ck_assert_int_eq(tls_load_fails(&o, false, &err), -EINVAL);
	snprintf(path, sizeof(path), "%s/ca-cert.pem", dir);
	assert_has(err.msg, path);
	assert_has(err.msg, "no certificate or crl found");
	ck_assert_msg(!strstr(err.msg, " lib"), "library, not reason: %s",
		      err.msg);

	o.creds_dir = tls_path("key-dir", dir, sizeof(dir));
	ck_assert_int_eq(tls_load_fails(&o, true, &err), -EISDIR);
	snprintf(path, sizeof(path), "%s/server-key.pem", dir);
	assert_has(err.msg, path);
	assert_has(err.msg, "private key");
	assert_has(err.msg, "is a directory");

	o.creds_dir = tls_path("key-other", dir, sizeof(dir));
	ck_assert_int_eq(tls_load_fails(&o, true, &err), -EINVAL);
	snprintf(path, sizeof(path), "%s/server-key.pem", dir);
	assert_has(err.msg, path);
	assert_has(err.msg, "does not match certificate");
	assert_has(err.msg, "server-cert.pem");

	o.creds_dir = NULL;
	o.psk_file = tls_path("none.psk", path, sizeof(path));
	ck_assert_int_eq(tls_load_fails(&o, true, &err), -ENOENT);
	assert_has(err.msg, path);
	assert_has(err.msg, "PSK file");
	assert_has(err.msg, "file not found");
}
END_TEST

/*
 * A key file its user may not read. Root reads any file whatever its
 * mode, so as root the load runs in a child that has become "nobody"
 * (65534); a root that cannot change user (no CAP_SETUID) skips only
 * this assertion, saying so.
 */
START_TEST(tls_key_unreadable)
{
	struct ferry_tls_opts o = { 0 };
	struct ferry_error err = { 0 };
	char dir[128], key[192];
	int p[2], status, rc;
	pid_t pid;

	o.creds_dir = tls_path("key-locked", dir, sizeof(dir));
	snprintf(key, sizeof(key), "%s/server-key.pem", dir);
	if (geteuid() != 0) {
		ck_assert_int_eq(tls_load_fails(&o, true, &err), -EACCES);
		goto check;
	}
	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct tls_ctx *c = NULL;

		close(p[0]);
		if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) ||
		    setresuid(65534, 65534, 65534))
			_exit(77);
		err.code = tls_ctx_new(&c, &o, true, &err);
		tls_ctx_free(c);
		_exit(write(p[1], &err, sizeof(err)) == sizeof(err) ? 0 : 1);
	}
	close(p[1]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	if (WEXITSTATUS(status) == 77) {
		fprintf(stderr, "tls_key_unreadable: root cannot become nobody "
			"here; the permission-denied message is not checked\n");
		close(p[0]);
		return;
	}
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	rc = (int)read(p[0], &err, sizeof(err));
	close(p[0]);
	ck_assert_int_eq(rc, (int)sizeof(err));
	ck_assert_int_eq(err.code, -EACCES);
check:
	assert_has(err.msg, key);
	assert_has(err.msg, "private key");
	assert_has(err.msg, "permission denied");
}
END_TEST

/* One side's credentials: a directory or a PSK file under tls_dir. */
struct tls_creds {
	const char *dir;
	const char *psk;
};

/* What a side must be told: NULL phrases (ok) for a side that succeeds. */
struct tls_expect {
	const char *has[3];
	const char *lacks;
};

static const struct {
	const char *name;
	struct tls_creds server, client;
	const char *host;	/* what the client checks the server for */
	struct tls_expect server_msg, client_msg;
} tls_cases[] = {
	{ "good certificates", { "good", NULL }, { "good", NULL }, "127.0.0.1",
	  { .has = { NULL } }, { .has = { NULL } } },
	{ "good PSK", { NULL, "a.psk" }, { NULL, "a.psk" }, NULL,
	  { .has = { NULL } }, { .has = { NULL } } },
	/* TLS 1.3: the client has sent its Finished before the server
	 * checks its certificate; it learns the refusal on its first read
	 * (tls_last_error() then, as net.c and tunnel.c report it). */
	{ "expired client", { "good", NULL }, { "expired-client", NULL },
	  "127.0.0.1",
	  { .has = { "the client's certificate", "certificate has expired",
		     "valid until" } },
	  { .has = { "the peer refused our certificate",
		     "certificate expired" } } },
	{ "client of an unknown CA", { "good", NULL }, { "rogue-client", NULL },
	  "127.0.0.1",
	  { .has = { "the client's certificate",
		     "unable to get local issuer certificate",
		     "issued by CN=ferry rogue CA" } },
	  { .has = { "the peer refused our certificate", "unknown CA" } } },
	{ "expired server", { "expired-server", NULL }, { "good", NULL },
	  "127.0.0.1",
	  { .has = { "the client refused our certificate",
		     "expired-server/server-cert.pem",
		     "certificate expired" } },
	  { .has = { "the server's certificate", "certificate has expired",
		     "valid until" } } },
	{ "server of an unknown CA", { "rogue-server", NULL }, { "good", NULL },
	  "127.0.0.1",
	  { .has = { "the client refused our certificate",
		     "rogue-server/server-cert.pem", "unknown CA" } },
	  { .has = { "the server's certificate",
		     "unable to get local issuer certificate",
		     "good/ca-cert.pem" } } },
	{ "server of another name", { "good", NULL }, { "good", NULL },
	  "ferry.invalid",
	  { .has = { "the client refused our certificate",
		     "bad certificate" } },
	  { .has = { "the server's certificate", "hostname mismatch",
		     "does not name ferry.invalid" } } },
	/* PSKs: the receiver names PSK, not signature algorithms (what
	 * OpenSSL says when a PSK server finds no key to use). */
	{ "PSK, another key", { NULL, "a.psk" }, { NULL, "b.psk" }, NULL,
	  { .has = { "PSK mismatch", "key for PSK identity 'ferry' differs",
		     "a.psk" }, .lacks = "signature" },
	  { .has = { "PSK mismatch", "key for PSK identity 'ferry' differs",
		     "b.psk" }, .lacks = "signature" } },
	{ "PSK, unknown identity", { NULL, "a.psk" }, { NULL, "c.psk" }, NULL,
	  { .has = { "PSK mismatch", "PSK identity 'other' is not in",
		     "a.psk" }, .lacks = "signature" },
	  { .has = { "PSK mismatch", "does not know PSK identity 'other'",
		     "c.psk" }, .lacks = "signature" } },
	/* Each side in a different mode; a PSK client does not go on
	 * with a server it could not authenticate. */
	{ "PSK client, certificate server", { "good", NULL }, { NULL, "a.psk" },
	  NULL,
	  { .has = { "the client offered a pre-shared key", "identity 'ferry'",
		     "uses certificates" } },
	  { .has = { "did not take our pre-shared key",
		     "showed a certificate" } } },
	{ "certificate client, PSK server", { NULL, "a.psk" }, { "good", NULL },
	  "127.0.0.1",
	  { .has = { "the client offered no pre-shared key" },
	    .lacks = "signature" },
	  { .has = { "the server refused the handshake",
		     "does it use a pre-shared key?" } } },
};

struct tls_side {
	struct tls_ctx *ctx;
	int fd;
	const char *host;
	bool read_after;	/* a client the server may refuse afterwards */
	int rc;
	struct ferry_error err;
};

static void *tls_side_run(void *p)
{
	struct tls_side *s = p;
	SSL *ssl = NULL;

	s->rc = tls_handshake(s->ctx, s->fd, s->host, 5000, &ssl, &s->err);
	if (!s->rc && s->read_after) {
		struct timeval tv = { .tv_sec = 5 };
		struct tls_sigpipe g;
		char b;

		setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		tls_sigpipe_block(&g);
		if (SSL_read(ssl, &b, 1) <= 0)
			s->rc = ferry_error_set(&s->err, -EPROTO, "%s",
					tls_last_error("no error queued"));
		tls_sigpipe_restore(&g);
	}
	SSL_free(ssl);
	return NULL;
}

static struct tls_ctx *tls_case_ctx(const struct tls_creds *cr, bool server)
{
	struct ferry_tls_opts o = { 0 };
	struct ferry_error err = { 0 };
	char dir[128], psk[128];
	struct tls_ctx *c;

	if (cr->dir)
		o.creds_dir = tls_path(cr->dir, dir, sizeof(dir));
	if (cr->psk)
		o.psk_file = tls_path(cr->psk, psk, sizeof(psk));
	ck_assert_msg(tls_ctx_new(&c, &o, server, &err) == 0, "%s", err.msg);
	return c;
}

static void tls_check_side(const char *name, const char *side,
			   const struct tls_side *s, const struct tls_expect *x)
{
	if (!x->has[0]) {
		ck_assert_msg(s->rc == 0, "%s: the %s failed: %s", name, side,
			      s->err.msg);
		return;
	}
	ck_assert_msg(s->rc < 0, "%s: the %s succeeded", name, side);
	for (int i = 0; i < 3 && x->has[i]; i++)
		ck_assert_msg(strstr(s->err.msg, x->has[i]),
			      "%s: the %s's message '%s' lacks '%s'", name, side,
			      s->err.msg, x->has[i]);
	if (x->lacks)
		ck_assert_msg(!strstr(s->err.msg, x->lacks),
			      "%s: the %s's message '%s' has '%s'", name, side,
			      s->err.msg, x->lacks);
}

/* A real handshake over loopback, and what each side is told. */
START_TEST(tls_handshake_errors)
{
	struct tls_side srv = { 0 }, cli = { 0 };
	int fds[2];
	pthread_t t;

	srv.ctx = tls_case_ctx(&tls_cases[_i].server, true);
	cli.ctx = tls_case_ctx(&tls_cases[_i].client, false);
	cli.host = tls_cases[_i].host;
	cli.read_after = tls_cases[_i].client_msg.has[0] != NULL;
	tcp_pair(fds);
	cli.fd = fds[0];
	srv.fd = fds[1];
	pthread_create(&t, NULL, tls_side_run, &srv);
	tls_side_run(&cli);
	pthread_join(t, NULL);
	close(fds[0]);
	close(fds[1]);
	tls_check_side(tls_cases[_i].name, "receiver", &srv,
		       &tls_cases[_i].server_msg);
	tls_check_side(tls_cases[_i].name, "source", &cli,
		       &tls_cases[_i].client_msg);
	tls_ctx_free(srv.ctx);
	tls_ctx_free(cli.ctx);
}
END_TEST

static Suite *transport_suite(void)
{
	Suite *s = suite_create("transport");
	TCase *wire = tcase_create("wire");
	TCase *tun = tcase_create("tunnel");
	TCase *tls = tcase_create("tls");

	tcase_add_test(wire, hello_roundtrip);
	tcase_add_loop_test(wire, hello_rejects, 0, FERRY_ARRAY_SIZE(hello_cases));
	tcase_add_test(wire, hello_rejects_empty_id);
	tcase_add_test(wire, frame_checks);
	tcase_add_test(wire, ctrl_checks);
	tcase_add_test(wire, in_flight_from_the_link);
	tcase_add_test(wire, ctrl_lengths);
	tcase_add_test(wire, ctrl_payloads);
	tcase_add_test(wire, ctrl_config);
	tcase_add_test(wire, disk_manifest_checks);
	tcase_add_test(wire, disk_record_checks);
	tcase_add_test(wire, disk_record_manifest);
	tcase_add_test(wire, codec_checks);
	tcase_add_test(wire, codec_zstd_stream);
	tcase_set_timeout(tun, 60);
	tcase_add_loop_test(tun, tunnel_end_to_end, 0, FERRY_ARRAY_SIZE(e2e_cases));
	tcase_add_test(tun, tunnel_garbage);
	tcase_add_loop_test(tun, tunnel_truncated, 0, 2);
	tcase_add_test(tun, tunnel_wrong_direction);
	tcase_add_test(tun, tunnel_out_of_sequence);
	tcase_add_test(tun, tunnel_oversized);
	tcase_add_loop_test(tun, tunnel_bad_compressed, 0,
			    FERRY_ARRAY_SIZE(bad_compressed_cases));
	tcase_add_test(tun, tunnel_decompress_garbage);
	tcase_add_test(tun, tunnel_stall);
	tcase_add_test(tun, tunnel_cancel);
	tcase_add_test(tun, tunnel_return_raw_only);
	tcase_add_test(tun, link_meter);
	tcase_add_test(tun, tunnel_slow_not_stalled);
	tcase_add_test(tun, tunnel_preempt_companion);
	tcase_add_test(tun, tunnel_preempt_failure_ends_both);
	tcase_add_test(tun, probe_roundtrip);
	tcase_add_test(tun, probe_rejects);
	tcase_set_timeout(tls, 30);
	tcase_add_test(tls, tls_load_errors);
	tcase_add_test(tls, tls_key_unreadable);
	tcase_add_loop_test(tls, tls_handshake_errors, 0,
			    FERRY_ARRAY_SIZE(tls_cases));
	suite_add_tcase(s, wire);
	suite_add_tcase(s, tun);
	suite_add_tcase(s, tls);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(transport_suite());
	int failed;

	psk_init();
	tls_pki_init();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	unlink(psk_path);
	tls_pki_remove();
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
