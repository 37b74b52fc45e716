/*
 * Writes the seed corpora of the harnesses (tests/fuzz/corpus/NAME/):
 * small inputs that are valid, or one step from valid, in each harness's
 * input format (described at the top of each fuzz_NAME.c). ferry's own
 * formats are built with its encoders, so a seed is what a peer of this
 * version sends; NBD and QMP bytes are laid out by hand, as QEMU sends
 * them. A seed that a parser accepts leads the fuzzer past its first
 * checks at once; the near-valid ones start it at each check.
 *
 *   make fuzz-corpus    (runs build-fuzz/gen_corpus tests/fuzz/corpus)
 *
 * The seeds are committed: rerun this after a format change and commit
 * what changed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qmp/qmp.h"
#include "transport/be.h"
#include "transport/codec.h"
#include "transport/nbd.h"
#include "transport/nbd_client.h"
#include "transport/tls.h"
#include "transport/wire.h"

/* Larger than any seed: seeds stay small so the fuzzer mutates fast. */
#define SEED_MAX (64u << 10)

struct seed {
	uint8_t b[SEED_MAX];
	size_t n;
};

static const char *root;
static int written;

static void die(const char *what)
{
	fprintf(stderr, "gen_corpus: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void room(struct seed *s, size_t n)
{
	if (s->n + n > SEED_MAX) {
		fprintf(stderr, "gen_corpus: seed over %u bytes\n", SEED_MAX);
		exit(1);
	}
}

static void put(struct seed *s, const void *p, size_t n)
{
	room(s, n);
	memcpy(s->b + s->n, p, n);
	s->n += n;
}

static void put8(struct seed *s, uint8_t v)
{
	put(s, &v, 1);
}

static void put16(struct seed *s, uint16_t v)
{
	room(s, 2);
	be_put16(s->b + s->n, v);
	s->n += 2;
}

static void put32(struct seed *s, uint32_t v)
{
	room(s, 4);
	be_put32(s->b + s->n, v);
	s->n += 4;
}

static void put64(struct seed *s, uint64_t v)
{
	room(s, 8);
	be_put64(s->b + s->n, v);
	s->n += 8;
}

static void puts_(struct seed *s, const char *str)
{
	put(s, str, strlen(str));
}

static void save(const char *harness, const char *name, const struct seed *s)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, harness);
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		die(path);
	snprintf(path, sizeof(path), "%s/%s/%s", root, harness, name);
	f = fopen(path, "wb");
	if (!f || fwrite(s->b, 1, s->n, f) != s->n || fclose(f) != 0)
		die(path);
	written++;
}

/* Text that compresses, as guest memory often does. */
static void text(uint8_t *p, size_t n)
{
	static const char words[] = "ferry carries the guest across the wire ";

	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)words[i % (sizeof(words) - 1)];
}

/* ---- the hello ---- */

static void hello(const char *name, const struct wire_hello *h, size_t poke)
{
	struct seed s = { .n = WIRE_HELLO_BYTES };

	wire_hello_encode(h, s.b);
	if (poke < WIRE_HELLO_BYTES)
		s.b[poke] ^= 1;
	save("hello", name, &s);
}

static void gen_hello(void)
{
	struct wire_hello h = {
		.version = WIRE_VERSION, .conn = WIRE_CONN_CONTROL,
		.mig_id = { 0x12, 0x34, 0x56, 0x78, 1, 2, 0x40, 3, 0x80, 4 },
		.ram_bytes = 1ull << 30, .stream_count = 1,
		.frame_max = WIRE_FRAME_PAYLOAD_MAX,
	};

	hello("control", &h, SIZE_MAX);
	h.options = WIRE_OPT_PAUSED | WIRE_OPT_POSTCOPY | WIRE_OPT_BLOCK;
	hello("control-options", &h, SIZE_MAX);
	h.conn = WIRE_CONN_DATA;
	h.options = 0;
	h.stream_index = 1;
	h.stream_count = 2;
	h.frame_max = WIRE_FRAME_MAX_MIN;
	hello("data-stream-2-of-2", &h, SIZE_MAX);
	h.conn = WIRE_CONN_DISK;
	hello("disk-stream", &h, SIZE_MAX);
	h.conn = WIRE_CONN_PROBE;
	h.stream_index = 0;
	h.stream_count = 1;
	hello("probe", &h, SIZE_MAX);
	/* One bit from valid: the version, a reserved byte, the stream. */
	hello("bad-version", &h, 9);
	hello("reserved-set", &h, 60);
	h.stream_index = 1;
	h.stream_count = 1;
	hello("stream-out-of-range", &h, SIZE_MAX);
}

/* ---- control messages ---- */

static void ctrl(struct seed *s, uint16_t type, const void *p, uint32_t len)
{
	struct wire_ctrl_hdr h = { .len = len, .type = type };

	room(s, WIRE_CTRL_HDR_BYTES);
	wire_ctrl_encode(&h, s->b + s->n);
	s->n += WIRE_CTRL_HDR_BYTES;
	put(s, p, len);
}

/* A QEMU command line as the CONFIG message carries it. */
#define QEMU_ARGS "qemu-system-x86_64\0" "-name\0" "web1\0" "-machine\0" \
	"q35\0" "-m\0" "128\0" "-qmp\0" \
	"unix:/run/web1.qmp,server=on,wait=off\0" "-S"

static int manifest(uint8_t *out, uint32_t cap)
{
	const struct wire_disk d[] = {
		{ .id = "vda", .size = 4ull << 30, .allocated = 1ull << 30 },
		{ .id = "vdb", .size = 1ull << 20, .allocated = 1ull << 20 },
		{ .id = "cdrom0", .flags = WIRE_DISK_READ_ONLY, .size = 4096,
		  .allocated = 4096 },
	};

	return wire_disks_encode(d, 3, out, cap, NULL);
}

static void gen_ctrl(void)
{
	static const char why[] = "destination QEMU refused migrate-incoming";
	uint8_t buf[WIRE_CTRL_PAYLOAD_MAX], probed[WIRE_PROBED_BYTES] = { 0 };
	uint8_t one = 1, finished[] = { 1, 'r', 'u', 'n', 'n', 'i', 'n', 'g' };
	struct seed s = { 0 };
	int n = manifest(buf, sizeof(buf));

	if (n < 0)
		exit(1);
	ctrl(&s, WIRE_CTRL_READY, NULL, 0);
	save("ctrl", "ready", &s);
	s.n = 0;
	ctrl(&s, WIRE_CTRL_ERROR, why, sizeof(why) - 1);
	save("ctrl", "error", &s);
	s.n = 0;
	ctrl(&s, WIRE_CTRL_FINISHED, finished, sizeof(finished));
	save("ctrl", "finished", &s);
	s.n = 0;
	be_put64(probed, 64u << 20);
	be_put64(probed + 8, 50000000);
	ctrl(&s, WIRE_CTRL_PROBED, probed, sizeof(probed));
	save("ctrl", "probed", &s);
	/* What a receiver reads on the control connection, in order. */
	s.n = 0;
	ctrl(&s, WIRE_CTRL_DISKS, buf, (uint32_t)n);
	ctrl(&s, WIRE_CTRL_MEMORY, NULL, 0);
	ctrl(&s, WIRE_CTRL_POSTCOPY, &one, 1);
	ctrl(&s, WIRE_CTRL_FINISH, &one, 1);
	ctrl(&s, WIRE_CTRL_CANCEL, why, sizeof(why) - 1);
	save("ctrl", "receiver-session", &s);
	/* What the receiving service reads after a hello naming its VM. */
	s.n = 0;
	ctrl(&s, WIRE_CTRL_VM, "web1", 4);
	ctrl(&s, WIRE_CTRL_CONFIG, QEMU_ARGS, sizeof(QEMU_ARGS));
	ctrl(&s, WIRE_CTRL_GUEST, "machine m\ncpu c\ndevice d i\n", 27);
	save("ctrl", "vm-config", &s);
	{
		/* What a source reads on a HOST connection. */
		struct wire_host host = { .mem_total = 24ull << 30,
					  .mem_available = 20ull << 30,
					  .usable = 30ull << 30,
					  .ratio_milli = 1500, .migrations = 1,
					  .max_migrations = 4 };
		uint8_t hb[WIRE_HOST_BYTES];

		wire_host_encode(&host, hb);
		s.n = 0;
		ctrl(&s, WIRE_CTRL_HOST, hb, sizeof(hb));
		save("ctrl", "host", &s);
	}
	/* The largest payload, then one byte more than the limit. */
	s.n = 0;
	memset(buf, 'x', sizeof(buf));
	ctrl(&s, WIRE_CTRL_ERROR, buf, WIRE_CTRL_PAYLOAD_MAX);
	save("ctrl", "error-longest", &s);
	be_put32(s.b, WIRE_CTRL_PAYLOAD_MAX + 1);
	save("ctrl", "error-too-long", &s);
	/* A header cut short, and a payload cut short. */
	s.n = 0;
	ctrl(&s, WIRE_CTRL_FINISH, &one, 1);
	s.n = 5;
	save("ctrl", "header-cut", &s);
	s.n = 0;
	ctrl(&s, WIRE_CTRL_ERROR, why, sizeof(why) - 1);
	s.n -= 10;
	save("ctrl", "payload-cut", &s);
}

/* ---- the VM name and the source's configuration (payloads) ---- */

static void payload(const char *harness, const char *name, const void *p,
		    size_t len)
{
	struct seed s = { 0 };

	put(&s, p, len);
	save(harness, name, &s);
}

static void gen_vm(void)
{
	static const char longest[] = "a123456789b123456789c123456789"
		"d123456789e123456789f1234567890123";

	payload("vm", "web1", "web1", 4);
	payload("vm", "all-characters", "Guest_01.prod-a", 15);
	payload("vm", "longest", longest, WIRE_VM_NAME_MAX);
	payload("vm", "too-long", longest, WIRE_VM_NAME_MAX + 1);
	payload("vm", "dot-first", "..", 2);
	payload("vm", "dash-first", "-rf", 3);
	payload("vm", "slash", "a/b", 3);
	payload("vm", "nul-inside", "web\0a", 5);
	payload("vm", "empty", "", 0);
}

static void gen_guest(void)
{
	static const char pc[] = "machine pc-i440fx-7.2-machine\n"
		"cpu qemu64-x86_64-cpu\n"
		"device virtio-blk-pci vdisk0\n"
		"device virtio-rng-pci\n"
		"cpuid 1.0.ECX 0x80a02001\n"
		"cpuid 7.0.EBX 0x0219c07ab\n";
	static const char min[] = "machine m\ncpu c\n";

	payload("guest", "pc", pc, sizeof(pc) - 1);
	payload("guest", "minimal", min, sizeof(min) - 1);
	payload("guest", "no-cpu", "machine m\n", 10);
	payload("guest", "no-newline", "machine m\ncpu c", 15);
	payload("guest", "bad-word", "machine m/x\ncpu c\n", 18);
	payload("guest", "three-words", "machine m\ncpu c\ndevice a b c\n", 29);
	payload("guest", "cpuid-not-hex", "machine m\ncpu c\ncpuid 1.0.EAX 12\n",
		33);
	payload("guest", "empty", "", 0);
}

static void gen_config(void)
{
	struct seed s = { 0 };

	payload("config", "qemu", QEMU_ARGS, sizeof(QEMU_ARGS));
	payload("config", "empty", "", 0);
	payload("config", "no-final-nul", QEMU_ARGS, sizeof(QEMU_ARGS) - 1);
	payload("config", "empty-argument", "qemu\0\0-S\0", 9);
	payload("config", "not-printable", "qemu\0-name\0g\tst\0", 16);
	/* One argument more than a CONFIG may carry (256). */
	for (int i = 0; i <= 256; i++)
		put(&s, "-S", 3);
	save("config", "too-many-arguments", &s);
}

/* ---- data frames and codecs ---- */

static void frame(struct seed *s, uint16_t type, enum wire_codec c,
		  const void *p, uint32_t len, uint32_t raw_len, uint64_t seq)
{
	struct wire_frame_hdr h = {
		.len = len, .type = type, .flags = (uint16_t)c,
		.raw_len = raw_len, .seq = seq,
	};

	room(s, WIRE_FRAME_HDR_BYTES);
	wire_frame_encode(&h, s->b + s->n);
	s->n += WIRE_FRAME_HDR_BYTES;
	put(s, p, len);
}

static void gen_frame_codec(struct codec_ctx *cc)
{
	static uint8_t raw[8192], z[16384];
	struct seed s = { 0 };
	size_t zn;

	text(raw, sizeof(raw));
	frame(&s, WIRE_FRAME_DATA, WIRE_CODEC_RAW, raw, 200, 200, 0);
	save("frame", "data-raw", &s);
	s.n = 0;
	frame(&s, WIRE_FRAME_RETURN, WIRE_CODEC_RAW, raw, 16, 16, 7);
	save("frame", "return-raw", &s);
	s.n = 0;
	frame(&s, WIRE_FRAME_END, WIRE_CODEC_RAW, NULL, 0, 0, 1234);
	save("frame", "end", &s);
	s.n = 0;
	frame(&s, WIRE_FRAME_DATA, WIRE_CODEC_RAW, raw, 100, 101, 3);
	save("frame", "raw-length-mismatch", &s);
	s.n = 0;
	frame(&s, WIRE_FRAME_DATA, WIRE_CODEC_RAW, raw, 100, 100, 3);
	s.n -= 1;
	save("frame", "payload-cut", &s);

	for (int c = WIRE_CODEC_LZ4; c <= WIRE_CODEC_ZSTD; c++) {
		const char *cn = codec_wire_name((enum wire_codec)c);
		char name[64];

		codec_ctx_reset(cc);	/* each payload a stream's first chunk */
		zn = codec_compress(cc, (enum wire_codec)c, raw, sizeof(raw), z,
				    sizeof(z));
		if (!zn)
			exit(1);
		s.n = 0;
		frame(&s, WIRE_FRAME_DATA, (enum wire_codec)c, z, (uint32_t)zn,
		      sizeof(raw), 42);
		snprintf(name, sizeof(name), "data-%s", cn);
		save("frame", name, &s);
		/* The same payload declaring one byte less than it holds. */
		be_put32(s.b + 8, sizeof(raw) - 1);
		snprintf(name, sizeof(name), "data-%s-raw-len-short", cn);
		save("frame", name, &s);

		/* fuzz_codec: u8 codec, u24 raw_len, payload. */
		s.n = 0;
		put8(&s, c == WIRE_CODEC_ZSTD);
		put8(&s, 0);
		put16(&s, sizeof(raw));
		put(&s, z, zn);
		snprintf(name, sizeof(name), "%s-text", cn);
		save("codec", name, &s);
		s.b[3]++;
		snprintf(name, sizeof(name), "%s-raw-len-long", cn);
		save("codec", name, &s);
		s.b[3] -= 2;
		snprintf(name, sizeof(name), "%s-raw-len-short", cn);
		save("codec", name, &s);
		s.b[3]++;
		s.n -= 3;
		snprintf(name, sizeof(name), "%s-cut", cn);
		save("codec", name, &s);
	}
}

/* ---- the disk manifest and disk records ---- */

static void gen_disks(void)
{
	struct wire_disk d[WIRE_DISKS_MAX];
	struct seed s = { 0 };
	int n;

	n = manifest(s.b, SEED_MAX);
	if (n < 0)
		exit(1);
	s.n = (size_t)n;
	save("disks", "three", &s);
	s.b[s.n++] = 0;
	save("disks", "trailing-byte", &s);
	s.n -= 2;
	save("disks", "cut", &s);
	for (int i = 0; i < WIRE_DISKS_MAX; i++) {
		d[i] = (struct wire_disk){ .size = (uint64_t)(i + 1) << 30 };
		snprintf(d[i].id, sizeof(d[i].id), "virtio-disk%d", i);
	}
	n = wire_disks_encode(d, WIRE_DISKS_MAX, s.b, SEED_MAX, NULL);
	if (n < 0)
		exit(1);
	s.n = (size_t)n;
	save("disks", "sixteen", &s);
	/* Two disks of the same name. */
	snprintf(d[1].id, sizeof(d[1].id), "%s", d[0].id);
	s.n = (size_t)wire_disks_encode(d, 2, s.b, SEED_MAX, NULL);
	save("disks", "duplicate-id", &s);
}

static void rec(const char *name, const struct wire_disk_rec *r)
{
	struct seed s = { .n = WIRE_DISK_HDR_BYTES };
	int n;

	wire_disk_rec_encode(r, s.b);
	n = manifest(s.b + s.n, SEED_MAX - WIRE_DISK_HDR_BYTES);
	if (n < 0)
		exit(1);
	s.n += (size_t)n;
	save("disk_rec", name, &s);
}

static void gen_disk_rec(void)
{
	rec("data", &(struct wire_disk_rec){ .op = WIRE_DISK_DATA, .disk = 0,
		.offset = 1ull << 20, .len = 65536 });
	rec("data-last-bytes", &(struct wire_disk_rec){ .op = WIRE_DISK_DATA,
		.disk = 1, .offset = (1ull << 20) - 512, .len = 512 });
	rec("data-past-end", &(struct wire_disk_rec){ .op = WIRE_DISK_DATA,
		.disk = 1, .offset = (1ull << 20) - 511, .len = 512 });
	rec("zero-may-trim", &(struct wire_disk_rec){ .op = WIRE_DISK_ZERO,
		.disk = 0, .flags = WIRE_DISK_MAY_TRIM, .offset = 0,
		.len = 4u << 20 });
	rec("zero-no-such-disk", &(struct wire_disk_rec){ .op = WIRE_DISK_ZERO,
		.disk = 3, .len = 4096 });
	rec("flush", &(struct wire_disk_rec){ .op = WIRE_DISK_FLUSH,
		.offset = 17 });
	rec("flushed", &(struct wire_disk_rec){ .op = WIRE_DISK_FLUSHED,
		.offset = 17 });
	rec("error", &(struct wire_disk_rec){ .op = WIRE_DISK_ERROR, .len = 40 });
	rec("end", &(struct wire_disk_rec){ .op = WIRE_DISK_END });
}

/* ---- NBD: what a client sends ferry's server ---- */

static void nbd_opt(struct seed *s, uint32_t opt, const void *p, uint32_t len)
{
	put64(s, NBD_OPTS_MAGIC);
	put32(s, opt);
	put32(s, len);
	put(s, p, len);
}

static void nbd_go(struct seed *s, uint32_t opt, const char *name)
{
	uint8_t d[64];
	uint32_t nl = (uint32_t)strlen(name);

	be_put32(d, nl);
	memcpy(d + 4, name, nl);
	be_put16(d + 4 + nl, 1);		/* one info request */
	be_put16(d + 6 + nl, NBD_INFO_BLOCK_SIZE);
	nbd_opt(s, opt, d, 8 + nl);
}

static void nbd_req(struct seed *s, uint16_t type, uint16_t flags,
		    uint64_t cookie, uint64_t off, uint32_t len)
{
	put32(s, NBD_REQUEST_MAGIC);
	put16(s, flags);
	put16(s, type);
	put64(s, cookie);
	put64(s, off);
	put32(s, len);
	if (type == NBD_CMD_WRITE) {
		room(s, len);
		text(s->b + s->n, len);
		s->n += len;
	}
}

/* Plan byte (bit 0: read-only export), the client's flags. */
static void nbd_client_start(struct seed *s, uint8_t plan)
{
	s->n = 0;
	put8(s, plan);
	put32(s, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
}

static void gen_nbd_server(void)
{
	struct seed s;

	/* What QEMU's blockdev-mirror sends. */
	nbd_client_start(&s, 0);
	nbd_go(&s, NBD_OPT_GO, "disk0");
	nbd_req(&s, NBD_CMD_WRITE, 0, 1, 0, 4096);
	nbd_req(&s, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 2, 65536, 512);
	nbd_req(&s, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE, 3, 8192, 8192);
	nbd_req(&s, NBD_CMD_WRITE_ZEROES, 0, 4, 16385, 100);
	nbd_req(&s, NBD_CMD_TRIM, 0, 5, 32768, 4096);
	nbd_req(&s, NBD_CMD_READ, 0, 6, 0, 512);
	nbd_req(&s, NBD_CMD_FLUSH, 0, 7, 0, 0);
	nbd_req(&s, NBD_CMD_DISC, 0, 8, 0, 0);
	save("nbd_server", "mirror-session", &s);
	/* Options first: unknown, LIST, INFO, then the old EXPORT_NAME. */
	nbd_client_start(&s, 0);
	nbd_opt(&s, 8 /* STRUCTURED_REPLY */, NULL, 0);
	nbd_opt(&s, NBD_OPT_LIST, NULL, 0);
	nbd_go(&s, NBD_OPT_INFO, "disk0");
	nbd_opt(&s, NBD_OPT_EXPORT_NAME, "disk0", 5);
	nbd_req(&s, NBD_CMD_READ, 0, 1, (1u << 20) - 512, 512);
	save("nbd_server", "options-then-export-name", &s);
	nbd_client_start(&s, 0);
	nbd_go(&s, NBD_OPT_GO, "nosuchdisk");
	nbd_opt(&s, NBD_OPT_ABORT, NULL, 0);
	save("nbd_server", "unknown-export-abort", &s);
	/* Requests the server must refuse, one each, then a bad magic. */
	nbd_client_start(&s, 0);
	nbd_go(&s, NBD_OPT_GO, "");
	nbd_req(&s, NBD_CMD_WRITE, 0, 1, (1u << 20) - 100, 200);
	nbd_req(&s, NBD_CMD_READ, 0, 2, 0, NBD_PAYLOAD_MAX + 1);
	nbd_req(&s, NBD_CMD_FLUSH, 0, 3, 1, 0);
	nbd_req(&s, NBD_CMD_TRIM, 0x80, 4, 0, 4096);
	nbd_req(&s, 9, 0, 5, 0, 4096);
	nbd_req(&s, NBD_CMD_WRITE_ZEROES, 0, 6, 0, 0);
	put32(&s, 0xdeadbeef);
	save("nbd_server", "refused-requests", &s);
	/* A read-only export refuses writes. */
	nbd_client_start(&s, 1);
	nbd_go(&s, NBD_OPT_GO, "disk0");
	nbd_req(&s, NBD_CMD_WRITE, 0, 1, 0, 512);
	nbd_req(&s, NBD_CMD_READ, 0, 2, 0, 512);
	save("nbd_server", "read-only", &s);
}

/* ---- NBD: what a server sends ferry's client ---- */

static void nbd_rep(struct seed *s, uint32_t type, const void *p, uint32_t len)
{
	put64(s, NBD_REP_MAGIC);
	put32(s, NBD_OPT_GO);
	put32(s, type);
	put32(s, len);
	put(s, p, len);
}

/* Plan byte, greeting, NBD_INFO_EXPORT of @size, block sizes, ACK. */
static void nbd_server_start(struct seed *s, uint8_t plan, uint64_t size)
{
	uint8_t info[14];
	uint16_t flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
			 NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
			 NBD_FLAG_SEND_WRITE_ZEROES;

	s->n = 0;
	put8(s, plan);
	put64(s, NBD_MAGIC);
	put64(s, NBD_OPTS_MAGIC);
	put16(s, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	be_put16(info, NBD_INFO_EXPORT);
	be_put64(info + 2, size);
	be_put16(info + 10, flags);
	nbd_rep(s, NBD_REP_INFO, info, 12);
	be_put16(info, NBD_INFO_BLOCK_SIZE);
	be_put32(info + 2, 1);
	be_put32(info + 6, 4096);
	be_put32(info + 10, 32u << 20);
	nbd_rep(s, NBD_REP_INFO, info, 14);
	nbd_rep(s, NBD_REP_ACK, NULL, 0);
}

static void nbd_reply(struct seed *s, uint32_t error, uint64_t cookie)
{
	put32(s, NBD_SIMPLE_REPLY_MAGIC);
	put32(s, error);
	put64(s, cookie);
}

static void gen_nbd_client(void)
{
	static const char why[] = "export 'disk0' not present";
	struct seed s;

	/* 3 writes, zeroes, a flush: replies out of order, one error. */
	nbd_server_start(&s, 3 | 1u << 3 | 1u << 5, 64u << 20);
	nbd_reply(&s, 0, 2);
	nbd_reply(&s, 0, 1);
	nbd_reply(&s, 0, 4);
	nbd_reply(&s, NBD_ENOSPC, 3);
	nbd_reply(&s, 0, 5);
	save("nbd_client", "writes-zero-flush", &s);
	/* One write, its reply, then one more write after it. */
	nbd_server_start(&s, 1 | 1u << 6, 1u << 20);
	nbd_reply(&s, 0, 1);
	save("nbd_client", "write-then-write", &s);
	/* A reply to a cookie never sent; a structured reply. */
	nbd_server_start(&s, 1, 1u << 20);
	nbd_reply(&s, 0, 77);
	save("nbd_client", "unknown-cookie", &s);
	nbd_server_start(&s, 1, 1u << 20);
	put32(&s, NBD_STRUCTURED_REPLY_MAGIC);
	put16(&s, 0);
	put16(&s, 0);
	put64(&s, 1);
	put32(&s, 0);
	save("nbd_client", "structured-reply", &s);
	/* An export too small for the planned writes. */
	nbd_server_start(&s, 7, 4096);
	nbd_reply(&s, 0, 1);
	save("nbd_client", "small-export", &s);
	/* The server refuses the export, with a message. */
	s.n = 0;
	put8(&s, 1);
	put64(&s, NBD_MAGIC);
	put64(&s, NBD_OPTS_MAGIC);
	put16(&s, NBD_FLAG_FIXED_NEWSTYLE);
	nbd_rep(&s, NBD_REP_ERR_UNKNOWN, why, sizeof(why) - 1);
	save("nbd_client", "unknown-export", &s);
	/* An oldstyle server. */
	s.n = 0;
	put8(&s, 1);
	put64(&s, NBD_MAGIC);
	put64(&s, NBD_OLDSTYLE_MAGIC);
	put64(&s, 1u << 20);
	save("nbd_client", "oldstyle", &s);
}

/* ---- QMP: what QEMU sends ---- */

#define QMP_GREETING "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, " \
	"\"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7\"}, " \
	"\"capabilities\": [\"oob\"]}}\r\n"
#define QMP_CAPS_OK "{\"return\": {}, \"id\": 1}\r\n"

static void qmp_seed(const char *name, const char *text_)
{
	struct seed s = { 0 };

	puts_(&s, text_);
	save("qmp", name, &s);
}

static void gen_qmp(void)
{
	struct seed s = { 0 };

	qmp_seed("session", QMP_GREETING QMP_CAPS_OK
		"{\"return\": {\"status\": \"running\", \"singlestep\": false, "
		"\"running\": true}, \"id\": 2}\r\n"
		"{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 1}, "
		"\"event\": \"MIGRATION\", \"data\": {\"status\": \"setup\"}}\r\n"
		"{\"return\": {\"fdset-id\": 1, \"fd\": 24}, \"id\": 3}\r\n"
		"{\"return\": {\"status\": \"active\", \"ram\": {\"total\": "
		"1074069504, \"remaining\": 1000, \"transferred\": 73000, "
		"\"dirty-pages-rate\": 120, \"mbps\": 941.5}, "
		"\"expected-downtime\": 300}, \"id\": 4}\r\n"
		"{\"timestamp\": {\"seconds\": 1700000001, \"microseconds\": 2}, "
		"\"event\": \"MIGRATION_PASS\", \"data\": {\"pass\": 2}}\r\n"
		"{\"timestamp\": {\"seconds\": 1700000002, \"microseconds\": 3}, "
		"\"event\": \"STOP\"}\r\n");
	qmp_seed("errors", QMP_GREETING QMP_CAPS_OK
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such "
		"command\"}, \"id\": 2}\n"
		"{\"error\": {\"class\": \"CommandNotFound\"}, \"id\": 3}\n"
		"{\"error\": \"not an object\", \"id\": 4}\n");
	qmp_seed("events-first", QMP_GREETING
		"{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, "
		"\"microseconds\": 0}}\n" QMP_CAPS_OK
		"{\"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}\n"
		"{\"return\": {\"status\": \"paused\"}, \"id\": 2}\n");
	qmp_seed("bad-lines", QMP_GREETING QMP_CAPS_OK
		"[1, 2, 3]\n"
		"{\"return\": {\"status\": \n"
		"{\"return\": {}, \"id\": 999}\n"
		"{\"id\": 3}\n");
	qmp_seed("not-qmp", "{\"greeting\": \"hello\"}\n");
	qmp_seed("cut", QMP_GREETING QMP_CAPS_OK "{\"return\": {\"status\": \"ru");
	/* Enough events to fill the queue (QMP_EVENT_QUEUE_MAX) and more. */
	puts_(&s, QMP_GREETING QMP_CAPS_OK);
	for (int i = 0; i < QMP_EVENT_QUEUE_MAX + 8; i++)
		puts_(&s, "{\"event\":\"E\"}\n");
	save("qmp", "event-flood", &s);
}

/* ---- the PSK key file: a side byte, then the file ---- */

static void psk_seed(const char *name, uint8_t side, const char *file)
{
	struct seed s = { 0 };

	put8(&s, side);
	puts_(&s, file);
	save("psk", name, &s);
}

static void gen_psk(void)
{
	struct seed s = { 0 };

	psk_seed("server-one-key", 1,
		 "ferry:000102030405060708090a0b0c0d0e0f\n");
	psk_seed("server-keys-crlf-blank", 1,
		 "\r\nsrc1:00112233445566778899AABBCCDDEEFF0011223344556677\r\n"
		 "\nferry:000102030405060708090a0b0c0d0e0f101112131415161718"
		 "191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"
		 "38393a3b3c3d3e3f\n");
	psk_seed("client-identity", 2,
		 "other:ffffffffffffffffffffffffffffffff\n"
		 "ferry:000102030405060708090a0b0c0d0e0f");
	psk_seed("client-no-such-identity", 2,
		 "other:ffffffffffffffffffffffffffffffff\n");
	psk_seed("key-not-hex", 0, "ferry:0001020304050607080g0a0b0c0d0e0f\n");
	psk_seed("key-too-short", 0, "ferry:0001020304050607\n");
	psk_seed("no-colon", 1, "just some text\n");
	psk_seed("empty-identity", 1, ":000102030405060708090a0b0c0d0e0f\n");
	/* A line longer than the reader's buffer. */
	put8(&s, 1);
	puts_(&s, "ferry:");
	for (int i = 0; i < 2 * TLS_PSK_MAX_BYTES + 64; i++)
		put8(&s, 'a');
	put8(&s, '\n');
	save("psk", "line-too-long", &s);
	/* More keys than the server keeps. */
	s.n = 0;
	put8(&s, 1);
	for (int i = 0; i <= TLS_PSK_FILE_MAX_KEYS; i++) {
		char line[64];

		snprintf(line, sizeof(line),
			 "id%d:000102030405060708090a0b0c0d0e0f\n", i);
		puts_(&s, line);
	}
	save("psk", "too-many-keys", &s);
}

int main(int argc, char **argv)
{
	struct codec_ctx *cc;

	if (argc != 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
		return 2;
	}
	root = argv[1];
	if (mkdir(root, 0755) < 0 && errno != EEXIST)
		die(root);
	if (codec_ctx_new(&cc, 0, NULL) < 0)
		die("codec");
	gen_hello();
	gen_ctrl();
	gen_frame_codec(cc);
	gen_vm();
	gen_config();
	gen_guest();
	gen_disks();
	gen_disk_rec();
	gen_nbd_server();
	gen_nbd_client();
	gen_qmp();
	gen_psk();
	codec_ctx_free(cc);
	printf("gen_corpus: %d seeds in %s\n", written, root);
	return 0;
}
