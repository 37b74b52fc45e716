/*
 * ferry's wire protocol: the hello, control messages and data frames.
 * docs/wire-protocol.md describes the same format for a reader.
 *
 * Everything is big-endian (network order) and fixed-size headers are
 * encoded field by field, never by copying a C struct, so the format does
 * not depend on the compiler's layout.
 *
 * Every decode function validates what the peer sent against the named
 * limits below, once, and returns -EPROTO (or -EBADMSG for a bad magic,
 * -EPROTONOSUPPORT for a version we do not speak, -EMSGSIZE for a length
 * over the limit) with a message; code after it may assume the header valid.
 */
#ifndef FERRY_WIRE_H
#define FERRY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"

#define WIRE_MAGIC 0x4645525259574952ull	/* "FERRYWIR" */
#define WIRE_VERSION 6

/* Size of the hello that opens every TCP connection. */
#define WIRE_HELLO_BYTES 64
#define WIRE_MIG_ID_BYTES 16

/* Connection kinds, announced in the hello. */
enum wire_conn {
	WIRE_CONN_CONTROL = 1,
	WIRE_CONN_DATA = 2,	/* source -> destination frames, stream i of n */
	WIRE_CONN_RETURN = 3,	/* destination -> source: QEMU's return path */
	WIRE_CONN_PROBE = 4,	/* source -> destination: RAW frames then END,
				   to measure the link; answered by PROBED */
	WIRE_CONN_DISK = 5,	/* source -> destination: the disk records'
				   tunnel, stream i of n (--block) */
	WIRE_CONN_DISK_RETURN = 6,	/* destination -> source: the disk
					   tunnel's acknowledgements */
	WIRE_CONN_HOST = 7,	/* source -> receiver, alone: what this host
				   can take (answered by HOST, then closed);
				   the hello's RAM is the guest to place */
	WIRE_CONN_PREEMPT = 8,	/* source -> destination frames: QEMU's
				   post-copy preempt channel (urgent pages),
				   with the memory's data connections when
				   they carry WIRE_OPT_PREEMPT */
	WIRE_CONN_MAX = WIRE_CONN_PREEMPT,
};

/* Option bits in the hello (the source's choices; the receiver follows). */
#define WIRE_OPT_PAUSED (1u << 0)	/* leave the destination paused */
#define WIRE_OPT_DIRECT (1u << 1)	/* QEMU streams directly, no data conn */
#define WIRE_OPT_POSTCOPY (1u << 2)	/* the destination needs postcopy-ram */
#define WIRE_OPT_RESUME (1u << 3)	/* reconnecting a broken post-copy */
#define WIRE_OPT_HANDOFF (1u << 4)	/* the one data connection goes to QEMU
					   itself after the hello: no frames */
#define WIRE_OPT_BLOCK (1u << 5)	/* disks migrate too: DISKS follows the
					   hello on the control connection */
#define WIRE_OPT_VM (1u << 6)	/* the migration names its VM: VM follows
					   the hello on the control connection */
#define WIRE_OPT_PREEMPT (1u << 7)	/* the memory tunnel has a PREEMPT
					   connection for QEMU's post-copy
					   preempt channel (on DATA, RETURN
					   and PREEMPT hellos) */
#define WIRE_OPT_ZSTD (1u << 8)	/* this data (or disk) stream may carry
					   zstd frames: the receiver makes its
					   decoder ready before they come, and
					   refuses them on a stream without */
#define WIRE_OPT_KNOWN (WIRE_OPT_PAUSED | WIRE_OPT_DIRECT | WIRE_OPT_POSTCOPY | \
			WIRE_OPT_RESUME | WIRE_OPT_HANDOFF | WIRE_OPT_BLOCK | \
			WIRE_OPT_VM | WIRE_OPT_PREEMPT | WIRE_OPT_ZSTD)

/* A link probe carries at most this much; the receiver drops the probe
 * connection beyond it. */
#define WIRE_PROBE_MAX_BYTES (64u << 20)
/* PROBED payload: u64 bytes received, u64 ns from first to last byte. */
#define WIRE_PROBED_BYTES 16

/*
 * Guest RAM sizes a receiver accepts: anything outside is a corrupt or
 * hostile hello. 16 TiB is far above any guest QEMU 7.2 runs.
 */
#define WIRE_RAM_MIN_BYTES (1ull << 20)
#define WIRE_RAM_MAX_BYTES (16ull << 40)
#define WIRE_STREAMS_MAX 64

struct wire_hello {
	uint16_t version;
	uint16_t conn;		/* enum wire_conn */
	uint32_t options;	/* WIRE_OPT_* */
	uint8_t mig_id[WIRE_MIG_ID_BYTES];
	uint64_t ram_bytes;
	uint16_t stream_index;	/* data connections: which stream */
	uint16_t stream_count;
	uint32_t frame_max;	/* largest decoded payload the sender uses */
};

/* Bounds on frame_max: a receiver allocates buffers of this size. */
#define WIRE_FRAME_MAX_MIN (4u << 10)

void wire_hello_encode(const struct wire_hello *h, uint8_t out[WIRE_HELLO_BYTES]);
int wire_hello_decode(const uint8_t in[WIRE_HELLO_BYTES], struct wire_hello *h,
		      struct ferry_error *err);

/*
 * Control messages: an 8-byte header (u32 length, u16 type, u16 zero)
 * followed by a payload of at most WIRE_CTRL_PAYLOAD_MAX bytes. Each type
 * has its own payload length range (one table in wire.c, checked by
 * wire_ctrl_decode() before a byte of the payload is read), and its own
 * encode/decode functions below: nothing else packs a payload.
 */
#define WIRE_CTRL_HDR_BYTES 8
#define WIRE_CTRL_PAYLOAD_MAX 4096

enum wire_ctrl {
	WIRE_CTRL_READY = 1,	/* receiver -> source: pre-checks passed,
				   send the data connections; empty */
	WIRE_CTRL_ERROR = 2,	/* either way: payload is the message */
	WIRE_CTRL_FINISH = 3,	/* source -> receiver: source completed;
				   payload: u8 resume */
	WIRE_CTRL_FINISHED = 4,	/* receiver -> source: destination state;
				   payload: u8 ok, then text */
	WIRE_CTRL_CANCEL = 5,	/* source -> receiver: migration abandoned */
	WIRE_CTRL_POSTCOPY = 6,	/* source -> receiver: switched to post-copy;
				   payload: u8 resume the destination now */
	WIRE_CTRL_PROBED = 7,	/* receiver -> source on a probe connection:
				   payload: WIRE_PROBED_BYTES */
	WIRE_CTRL_DISKS = 8,	/* source -> receiver after the hello with
				   WIRE_OPT_BLOCK: the disk manifest (below);
				   answered by READY or ERROR */
	WIRE_CTRL_MEMORY = 9,	/* source -> receiver: every disk mirror is
				   ready; the memory connections follow */
	WIRE_CTRL_VM = 10,	/* source -> receiver after a hello with
				   WIRE_OPT_VM: the VM's name (below) */
	WIRE_CTRL_CONFIG = 11,	/* source -> receiver right after VM: the
				   source QEMU's command line (below) */
	WIRE_CTRL_GUEST = 12,	/* source -> receiver in every fresh control
				   preamble, before DISKS: what the guest
				   is made of (below), for the pre-checks */
	WIRE_CTRL_HOST = 13,	/* receiver -> source on a HOST connection:
				   WIRE_HOST_BYTES (below) */
	WIRE_CTRL_MAX_TYPE = 13,
};

struct wire_ctrl_hdr {
	uint32_t len;
	uint16_t type;
};

void wire_ctrl_encode(const struct wire_ctrl_hdr *h,
		      uint8_t out[WIRE_CTRL_HDR_BYTES]);
int wire_ctrl_decode(const uint8_t in[WIRE_CTRL_HDR_BYTES],
		     struct wire_ctrl_hdr *h, struct ferry_error *err);
const char *wire_ctrl_name(uint16_t type);

/*
 * Payloads. A text payload (ERROR, CANCEL, FINISHED's status) is UTF-8
 * without a NUL; the receive path NUL-terminates it. FINISH and POSTCOPY
 * carry one u8 flag (0 or 1); FINISHED an u8 ok, then the destination
 * guest's status.
 */
#define WIRE_STATUS_MAX 63

/* FINISH and POSTCOPY: one byte; returns the payload length. */
uint32_t wire_flag_encode(bool flag, uint8_t out[1]);
int wire_flag_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		     bool *flag, struct ferry_error *err);
/*
 * HOST: the receiving host's memory (/proc/meminfo's MemTotal and
 * MemAvailable), its overcommit ratio (--ram-allocation-ratio, in
 * thousandths), what it can still take with that ratio (usable: total x
 * ratio - in use - the RAM of the migrations it is receiving), and its
 * migrations in progress against their limit.
 */
#define WIRE_HOST_BYTES 40

struct wire_host {
	uint64_t mem_total, mem_available, usable;
	uint32_t ratio_milli, migrations, max_migrations;
};

void wire_host_encode(const struct wire_host *h, uint8_t out[WIRE_HOST_BYTES]);
int wire_host_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		     struct wire_host *host, struct ferry_error *err);

/* PROBED: bytes received, ns from the first to the last. */
void wire_probed_encode(uint64_t bytes, uint64_t ns,
			uint8_t out[WIRE_PROBED_BYTES]);
int wire_probed_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		       uint64_t *bytes, uint64_t *ns, struct ferry_error *err);
/*
 * FINISHED: u8 ok, the destination's run state (text), and when known,
 * a NUL and how long the destination guest's vCPUs waited for pages in
 * post-copy (QEMU's postcopy-blocktime, ms, u32 big-endian). A receiver
 * that does not know it sends the text alone, as ferry before it did.
 * Returns the payload length.
 */
#define WIRE_BLOCKTIME_UNKNOWN UINT32_MAX
uint32_t wire_finished_encode(bool ok, const char *status, uint32_t blocktime_ms,
			      uint8_t out[1 + WIRE_STATUS_MAX]);
/* @status gets the NUL-terminated text (payload must be NUL-terminated
 * after h->len bytes, as net_ctrl_recv leaves it); @blocktime_ms the
 * blocktime or WIRE_BLOCKTIME_UNKNOWN. */
int wire_finished_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
			 bool *ok, const char **status, uint32_t *blocktime_ms,
			 struct ferry_error *err);

/*
 * GUEST: the machine type, the CPU model and the devices of the source
 * QEMU (QOM type names, and the ids given with -device), which the
 * destination must have too. Text, one item a line, each word 1 to
 * WIRE_GUEST_WORD_MAX bytes of [A-Za-z0-9_.,:-]:
 *   machine TYPE
 *   cpu TYPE
 *   device TYPE [ID]       (at most WIRE_GUEST_DEVICES_MAX lines)
 *   cpuid KEY 0xBITS       (at most WIRE_GUEST_CPUID_MAX lines)
 */
#define WIRE_GUEST_WORD_MAX 64
#define WIRE_GUEST_DEVICES_MAX 128

struct wire_guest_device {
	char type[WIRE_GUEST_WORD_MAX + 1];
	char id[WIRE_GUEST_WORD_MAX + 1];	/* "" for an anonymous one */
};

/* A CPUID feature word the guest sees: "0xLEAF.SUBLEAF.REG" (hex leaf,
 * decimal subleaf, EAX..EDX) and its bits; only words with bits set. */
#define WIRE_GUEST_CPUID_MAX 64

struct wire_guest_cpuid {
	char key[WIRE_GUEST_WORD_MAX + 1];
	uint32_t bits;
};

struct wire_guest {
	char machine[WIRE_GUEST_WORD_MAX + 1];
	char cpu[WIRE_GUEST_WORD_MAX + 1];
	uint32_t ndevices;
	struct wire_guest_device devices[WIRE_GUEST_DEVICES_MAX];
	uint32_t ncpuid;
	struct wire_guest_cpuid cpuid[WIRE_GUEST_CPUID_MAX];
};

bool wire_guest_word_valid(const char *word);
/* The bits of CPUID word @key that @g's CPU has (0 when none). */
uint32_t wire_guest_cpuid_bits(const struct wire_guest *g, const char *key);
/* Returns the payload length, or -E2BIG / -EINVAL. */
int wire_guest_encode(const struct wire_guest *g, uint8_t *out, uint32_t cap,
		      struct ferry_error *err);
int wire_guest_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		      struct wire_guest *g, struct ferry_error *err);

/*
 * VM names (the VM payload, and the name a service finds a destination
 * QEMU by: DIR/NAME.qmp): 1..WIRE_VM_NAME_MAX bytes of [A-Za-z0-9_.-],
 * not starting with '.' or '-', so a name is always one safe path
 * component and one safe QMP or command-line word.
 */
#define WIRE_VM_NAME_MAX 64

bool wire_vm_name_valid(const char *name);
/* Returns the payload length, or -EINVAL for an invalid name. */
int wire_vm_encode(const char *name, uint8_t out[WIRE_VM_NAME_MAX],
		   struct ferry_error *err);
int wire_vm_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		   char name[WIRE_VM_NAME_MAX + 1], struct ferry_error *err);

/*
 * The CONFIG payload: the source QEMU's command line, argv[0] included,
 * each argument NUL-terminated; at most WIRE_CONFIG_ARGS_MAX arguments of
 * printable ASCII, WIRE_CTRL_PAYLOAD_MAX bytes in all. Empty when the
 * source could not read it. A receiver that launches destination QEMUs
 * hands it to its launcher, which decides what of it to use.
 */
#define WIRE_CONFIG_ARGS_MAX 256

/* Returns the payload length, or -E2BIG when it does not fit. */
int wire_config_encode(char *const *argv, uint32_t argc, uint8_t *out,
		       uint32_t cap, struct ferry_error *err);
/* @argv points into @payload (kept by the caller); *@argc 0: none sent. */
int wire_config_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		       const char *argv[WIRE_CONFIG_ARGS_MAX], uint32_t *argc,
		       struct ferry_error *err);

/*
 * Data frames on a data connection: a 24-byte header and a payload.
 *   u32 len       payload bytes on the wire (<= WIRE_FRAME_PAYLOAD_MAX)
 *   u16 type      enum wire_frame
 *   u16 flags     WIRE_CODEC_* in the low bits, other bits must be 0
 *   u32 raw_len   payload bytes once decoded (== len for WIRE_CODEC_RAW)
 *   u32 reserved  zero
 *   u64 seq       per direction, from 0, +1 per frame; with n streams,
 *                 frame seq travels on stream seq % n (END: see below)
 */
#define WIRE_FRAME_HDR_BYTES 24
/*
 * A frame carries at most 1 MiB: large enough that per-frame costs vanish
 * at 10 Gbit/s, small enough to bound the receiver's memory per stream.
 */
#define WIRE_FRAME_PAYLOAD_MAX (1u << 20)

enum wire_frame {
	WIRE_FRAME_DATA = 1,	/* source QEMU -> destination QEMU */
	WIRE_FRAME_RETURN = 2,	/* return path, destination -> source */
	WIRE_FRAME_END = 3,	/* the sender's QEMU closed its side; sent on
				   every stream, seq = number of frames sent */
	WIRE_FRAME_MAX_TYPE = 3,
};

/* How a payload is encoded (frame flags). */
enum wire_codec {
	WIRE_CODEC_RAW = 0,
	WIRE_CODEC_LZ4 = 1,	/* one LZ4 block */
	WIRE_CODEC_ZSTD = 2,	/* the next chunk of the connection's zstd
				   stream (codec.h) */
	WIRE_CODEC_MAX = 2,
};
#define WIRE_FLAGS_CODEC_MASK 0x3u

struct wire_frame_hdr {
	uint32_t len;
	uint16_t type;
	uint16_t flags;
	uint32_t raw_len;
	uint64_t seq;
};

void wire_frame_encode(const struct wire_frame_hdr *h,
		       uint8_t out[WIRE_FRAME_HDR_BYTES]);
/*
 * Validates type, flags and lengths: len and raw_len at most @frame_max,
 * raw_len == len for raw payloads, END frames empty. The caller checks seq.
 */
int wire_frame_decode(const uint8_t in[WIRE_FRAME_HDR_BYTES],
		      uint32_t frame_max, struct wire_frame_hdr *h,
		      struct ferry_error *err);

static inline enum wire_codec wire_frame_codec(const struct wire_frame_hdr *h)
{
	return (enum wire_codec)(h->flags & WIRE_FLAGS_CODEC_MASK);
}

/*
 * The disk manifest (DISKS payload): u16 count, then per disk
 *   u8 id_len, id[id_len] (the device id, [A-Za-z0-9_.-], 1..WIRE_DISK_ID_MAX)
 *   u8 flags (WIRE_DISK_READ_ONLY), u64 size (virtual bytes),
 *   u64 allocated (bytes the source image holds: what may be written).
 */
#define WIRE_DISKS_MAX 16
#define WIRE_DISK_ID_MAX 63
#define WIRE_DISK_READ_ONLY (1u << 0)
/* A disk larger than this is a corrupt manifest (QEMU's limit is 2^63). */
#define WIRE_DISK_SIZE_MAX (1ull << 50)

struct wire_disk {
	char id[WIRE_DISK_ID_MAX + 1];
	uint8_t flags;
	uint64_t size;
	uint64_t allocated;
};

/* Returns the payload length, or -EMSGSIZE when it exceeds @cap. */
int wire_disks_encode(const struct wire_disk *d, uint32_t n, uint8_t *out,
		      uint32_t cap, struct ferry_error *err);
int wire_disks_decode(const uint8_t *in, uint32_t len, struct wire_disk *d,
		      uint32_t *n, struct ferry_error *err);
/* Whether @id is a device id ferry accepts (and can put in QMP names). */
bool wire_disk_id_valid(const char *id);

/*
 * Disk records: the byte stream the disk tunnel carries (the tunnel adds
 * framing, compression and TLS). A 24-byte header, then len payload bytes
 * for DATA and ERROR only:
 *   u32 magic "FDSK"  u8 op  u8 disk  u16 flags  u64 offset  u32 len
 *   u32 reserved (zero)
 * source -> destination: DATA (bytes at offset), ZERO (len zero bytes at
 * offset; flag MAY_TRIM: a hole will do), FLUSH (offset = barrier number:
 * write and sync everything before it, then acknowledge), END (the last
 * record: a stream that stops without it was cut);
 * destination -> source: FLUSHED (offset = barrier number), ERROR (text).
 */
#define WIRE_DISK_MAGIC 0x4644534bu	/* "FDSK" */
#define WIRE_DISK_HDR_BYTES 24
/* Largest DATA payload: a receiver's buffers are this big. */
#define WIRE_DISK_DATA_MAX (1u << 20)
#define WIRE_DISK_ERROR_MAX 1024u
#define WIRE_DISK_MAY_TRIM (1u << 0)

enum wire_disk_op {
	WIRE_DISK_DATA = 1,
	WIRE_DISK_ZERO = 2,
	WIRE_DISK_FLUSH = 3,
	WIRE_DISK_FLUSHED = 4,
	WIRE_DISK_ERROR = 5,
	WIRE_DISK_END = 6,
	WIRE_DISK_MAX_OP = 6,
};

struct wire_disk_rec {
	uint8_t op;
	uint8_t disk;
	uint16_t flags;
	uint64_t offset;
	uint32_t len;
};

void wire_disk_rec_encode(const struct wire_disk_rec *r,
			  uint8_t out[WIRE_DISK_HDR_BYTES]);
/*
 * Validates magic, op, flags, and the length per op (DATA at most
 * WIRE_DISK_DATA_MAX, ERROR at most WIRE_DISK_ERROR_MAX, FLUSH/FLUSHED
 * empty). The disk index and range are the caller's to check against
 * its manifest.
 */
int wire_disk_rec_decode(const uint8_t in[WIRE_DISK_HDR_BYTES],
			 struct wire_disk_rec *r, struct ferry_error *err);

/*
 * A record from the source against its manifest @d (n disks): an op the
 * source may send, a disk the manifest lists, a range inside that disk
 * (no overflow). -EPROTO or -ERANGE with a message.
 */
int wire_disk_rec_check(const struct wire_disk_rec *r, const struct wire_disk *d,
			uint32_t n, struct ferry_error *err);

/* Migration ids as text (UUID layout, 36 chars + NUL). */
void wire_mig_id_format(const uint8_t id[WIRE_MIG_ID_BYTES], char out[37]);
int wire_mig_id_random(uint8_t id[WIRE_MIG_ID_BYTES]);
/* The text form back (lower-case hex, as formatted): 0, or -EINVAL. */
int wire_mig_id_parse(const char *text, uint8_t id[WIRE_MIG_ID_BYTES]);

#endif /* FERRY_WIRE_H */
