/*
 * A small NBD client for one export on a unix socket: what ferry's
 * destination side needs to write a migrated disk into an export that
 * QEMU serves (nbd-server-start + block-export-add).
 *
 * Fixed newstyle handshake, NBD_OPT_GO only, simple replies only (no
 * structured replies, so no NBD_CMD_READ: a simple reply to a read
 * cannot be told apart from the next reply without knowing its length,
 * and the destination never reads). WRITE, WRITE_ZEROES and FLUSH are
 * pipelined: each call sends one request and returns; replies are
 * collected with nbd_client_reply(), matched by the caller's cookie,
 * in whatever order the server sends them (QEMU's may reorder).
 *
 * Everything from the server is checked where it enters: the greeting,
 * each option reply (magic, option, type, length bounded by
 * NBD_CLIENT_REP_DATA_MAX), the export's info, and each reply's magic
 * and cookie. Any framing error marks the connection failed; every
 * later call returns that first error. Requests are checked against the
 * export before a byte is sent.
 *
 * One thread at a time per client; not async-signal-safe.
 */
#ifndef FERRY_NBD_CLIENT_H
#define FERRY_NBD_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"
#include "nbd.h"

/* What transport/nbd.h does not define, as doc/proto.md names it. */
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu
#define NBD_OLDSTYLE_MAGIC 0x0000420281861253ull
#define NBD_REP_ERR_POLICY (NBD_REP_ERR | 2u)
#define NBD_REP_ERR_PLATFORM (NBD_REP_ERR | 4u)
#define NBD_REP_ERR_TLS_REQD (NBD_REP_ERR | 5u)
#define NBD_REP_ERR_SHUTDOWN (NBD_REP_ERR | 7u)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_ERR | 8u)
#define NBD_REPLY_BYTES 16

/*
 * Requests in flight at once. Each simple reply is 16 bytes, so the
 * replies to a full window (1 KiB) always fit in the socket buffer: the
 * server can never block writing replies while this client blocks
 * writing requests, however late the caller collects them.
 */
#define NBD_CLIENT_INFLIGHT_MAX 64
/* The protocol caps strings (export names, error messages) at 4096
 * bytes. */
#define NBD_CLIENT_NAME_MAX 4096u
/* Option reply data read: a string plus an info reply's 2-byte type and
 * its 4-byte length fields; a larger reply is refused (-EMSGSIZE). */
#define NBD_CLIENT_REP_DATA_MAX (NBD_CLIENT_NAME_MAX + 8u)
/* Option replies to one NBD_OPT_GO: QEMU sends 2 to 4 infos and the
 * ACK; a server that goes on past this is broken. */
#define NBD_CLIENT_GO_REPLIES_MAX 16
/*
 * Sending one request, payload included, must finish within this. The
 * server may stop reading while its own queue is full (QEMU works on 16
 * requests at a time) and its disk is slow, so this is generous.
 */
#define NBD_CLIENT_IO_TIMEOUT_MS 30000
/* NBD_CMD_DISC on close is a courtesy: never wait long for it. */
#define NBD_CLIENT_DISC_TIMEOUT_MS 1000

struct nbd_client;

/*
 * Connect to the unix socket @path and negotiate export @export_name:
 * fixed newstyle (client flags FIXED_NEWSTYLE, and NO_ZEROES when the
 * server offers it), then NBD_OPT_GO. NBD_REP_INFO replies are read,
 * NBD_INFO_EXPORT is required, NBD_INFO_BLOCK_SIZE lowers the largest
 * request when the server's maximum is below NBD_PAYLOAD_MAX, other info
 * types are ignored. @timeout_ms bounds the whole handshake, connect
 * included. Returns 0 with *@out, or a negative errno with @err set:
 * -ENOENT for an unknown export (or a missing socket), -EPROTO for a peer
 * that does not speak the protocol, -ETIMEDOUT, and others for the
 * server's NBD_REP_ERR_* replies; the message says which.
 */
int nbd_client_connect(struct nbd_client **out, const char *path,
		       const char *export_name, int timeout_ms,
		       struct ferry_error *err);

/* The export's size in bytes and its transmission flags (NBD_FLAG_*). */
uint64_t nbd_client_size(const struct nbd_client *c);
uint16_t nbd_client_flags(const struct nbd_client *c);

/*
 * Send one request and return without waiting for its reply, which
 * nbd_client_reply() delivers with @cookie. Before anything is sent:
 * -EINVAL for an empty range, a length over NBD_PAYLOAD_MAX (or the
 * server's smaller maximum), or a range past the end of the export;
 * -EEXIST when @cookie is already in flight; -EBUSY with
 * NBD_CLIENT_INFLIGHT_MAX requests in flight; -EROFS for a write to a
 * read-only export; -ENOTSUP when the server lacks the command. Once
 * sending started, a failure (-ETIMEDOUT after NBD_CLIENT_IO_TIMEOUT_MS,
 * -ECONNRESET, ...) fails the connection.
 *
 * nbd_client_zero() writes zeroes with NBD_CMD_WRITE_ZEROES, with the
 * flag NO_HOLE unless @may_trim lets the server punch a hole.
 */
int nbd_client_write(struct nbd_client *c, uint64_t cookie, const void *buf,
		     uint32_t len, uint64_t off, struct ferry_error *err);
int nbd_client_zero(struct nbd_client *c, uint64_t cookie, uint32_t len,
		    uint64_t off, bool may_trim, struct ferry_error *err);
/* As in the protocol, a flush covers the writes whose replies arrived
 * before it was sent, not those still in flight. */
int nbd_client_flush(struct nbd_client *c, uint64_t cookie,
		     struct ferry_error *err);

/*
 * Read one reply, waiting up to @timeout_ms for it to begin (its 16
 * bytes then get NBD_CLIENT_IO_TIMEOUT_MS). Replies come in the server's
 * order, not the requests' (QEMU's server reorders). Returns 0 with
 * *@cookie and *@nbd_errno (0 for success, else the NBD error value, e.g.
 * NBD_ENOSPC; the request is no longer in flight either way).
 * -ETIMEDOUT when no reply began within @timeout_ms leaves the
 * connection usable; -EINVAL with nothing in flight. A broken
 * connection, a bad magic, a structured reply or a cookie not in flight
 * fail the connection (-ECONNRESET, -EPROTO, ...).
 */
int nbd_client_reply(struct nbd_client *c, uint64_t *cookie,
		     uint32_t *nbd_errno, int timeout_ms,
		     struct ferry_error *err);

/* Requests sent whose reply has not been read. */
uint32_t nbd_client_inflight(const struct nbd_client *c);

/* Send NBD_CMD_DISC unless the connection failed, and close. @c may be
 * NULL. Replies still in flight are dropped. */
void nbd_client_close(struct nbd_client *c);

#endif /* FERRY_NBD_CLIENT_H */
