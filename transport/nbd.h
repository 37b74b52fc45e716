/*
 * An NBD server for one client: the part of the protocol (doc/proto.md of
 * the NBD project) that QEMU's NBD client uses as a blockdev-mirror
 * target. Fixed newstyle handshake, NBD_OPT_GO / INFO / EXPORT_NAME /
 * ABORT / LIST, simple replies, and READ, WRITE, WRITE_ZEROES (with
 * NO_HOLE), TRIM, FLUSH and DISC.
 *
 * Every request is checked before it is acted on: known command and
 * flags, offset and length inside the export, length within
 * NBD_PAYLOAD_MAX. A bad request gets an NBD error reply and a log line
 * and changes nothing; a client that breaks the framing (bad magic, a
 * payload too large to skip) is disconnected.
 *
 * The data goes to a backend (struct nbd_backend): ferry's disk transport
 * forwards it to the destination; tests use a file.
 */
#ifndef FERRY_NBD_H
#define FERRY_NBD_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"

#define NBD_MAGIC 0x4e42444d41474943ull		/* "NBDMAGIC" */
#define NBD_OPTS_MAGIC 0x49484156454f5054ull	/* "IHAVEOPT" */
#define NBD_REP_MAGIC 0x0003e889045565a9ull
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u

#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES (1u << 1)

enum nbd_opt {
	NBD_OPT_EXPORT_NAME = 1,
	NBD_OPT_ABORT = 2,
	NBD_OPT_LIST = 3,
	NBD_OPT_INFO = 6,
	NBD_OPT_GO = 7,
};

#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_ERR (1u << 31)
#define NBD_REP_ERR_UNSUP (NBD_REP_ERR | 1u)
#define NBD_REP_ERR_INVALID (NBD_REP_ERR | 3u)
#define NBD_REP_ERR_UNKNOWN (NBD_REP_ERR | 6u)
#define NBD_REP_ERR_TOO_BIG (NBD_REP_ERR | 9u)

#define NBD_INFO_EXPORT 0u
#define NBD_INFO_BLOCK_SIZE 3u

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)

enum nbd_cmd {
	NBD_CMD_READ = 0,
	NBD_CMD_WRITE = 1,
	NBD_CMD_DISC = 2,
	NBD_CMD_FLUSH = 3,
	NBD_CMD_TRIM = 4,
	NBD_CMD_WRITE_ZEROES = 6,
};

#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)

/* NBD error values in replies (not the host's errno numbers). */
#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_ENOMEM 12u
#define NBD_EINVAL 22u
#define NBD_ENOSPC 28u
#define NBD_ENOTSUP 95u

#define NBD_REQUEST_BYTES 28
/* The largest READ or WRITE the server accepts (QEMU's client sends at
 * most 32 MiB); also the block size it advertises as its maximum. */
#define NBD_PAYLOAD_MAX (32u << 20)
/* Option data the server reads; larger options are refused (TOO_BIG). */
#define NBD_OPT_DATA_MAX 4096u
/* Options one client may send before it must pick an export. */
#define NBD_OPTS_MAX 32
/* A client that says nothing for this long is dropped. */
#define NBD_IDLE_TIMEOUT_MS 60000

/*
 * Where the data goes. Each returns 0 or a negative errno; offsets and
 * lengths were checked against the export's size before the call.
 */
struct nbd_backend {
	int (*pread)(void *ctx, void *buf, uint32_t len, uint64_t off);
	int (*pwrite)(void *ctx, const void *buf, uint32_t len, uint64_t off,
		      bool fua);
	/* @may_trim: the client allows a hole (no NO_HOLE flag). */
	int (*zero)(void *ctx, uint32_t len, uint64_t off, bool may_trim);
	int (*trim)(void *ctx, uint32_t len, uint64_t off);
	int (*flush)(void *ctx);
	void *ctx;
};

struct nbd_export {
	const char *name;
	uint64_t size;
	bool read_only;
	struct nbd_backend be;
	/* A client silent for this long is dropped; 0: NBD_IDLE_TIMEOUT_MS. */
	uint32_t idle_timeout_ms;
};

struct nbd_stats {
	uint64_t requests, errors;
	uint64_t bytes_written, bytes_read, bytes_zeroed, bytes_trimmed;
	uint64_t flushes;
};

/*
 * Serve one client on connected socket @fd until it disconnects (0) or
 * breaks the protocol or the connection (negative errno, @err set). The
 * caller owns @fd.
 */
int nbd_serve(int fd, const struct nbd_export *ex, struct nbd_stats *st,
	      struct ferry_error *err);

/* A backend over a file descriptor (a raw image): pread/pwrite, zeroes as
 * fallocate (punch or zero range, written zeroes where unsupported),
 * fdatasync. @fd stays the caller's. */
void nbd_backend_fd(struct nbd_backend *be, int *fd);

#endif /* FERRY_NBD_H */
