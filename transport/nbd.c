/* An NBD server for one client (see nbd.h). */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "be.h"
#include "common/util.h"
#include "nbd.h"
#include "net.h"

#define NBD_IO_TIMEOUT_MS 10000
/* Zeroes written per pwrite when the file system cannot fallocate. */
#define NBD_ZERO_CHUNK (1u << 20)







struct nbd_conn {
	struct net_conn c;
	const struct nbd_export *ex;
	struct nbd_stats *st;
	uint8_t *buf;		/* NBD_PAYLOAD_MAX */
	bool no_zeroes;
};

static int rd(struct nbd_conn *n, void *buf, size_t len, int timeout_ms,
	      struct ferry_error *err)
{
	return net_read_full(&n->c, buf, len, timeout_ms, "NBD", err);
}

static int wr(struct nbd_conn *n, const void *buf, size_t len,
	      struct ferry_error *err)
{
	return net_write_full(&n->c, buf, len, NBD_IO_TIMEOUT_MS, "NBD", err);
}

static uint16_t tx_flags(const struct nbd_export *ex)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA;

	if (ex->read_only)
		return f | NBD_FLAG_READ_ONLY;
	return f | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
}

static int opt_reply(struct nbd_conn *n, uint32_t opt, uint32_t type,
		     const void *data, uint32_t len, struct ferry_error *err)
{
	uint8_t h[20];
	int rc;

	be_put64(h, NBD_REP_MAGIC);
	be_put32(h + 8, opt);
	be_put32(h + 12, type);
	be_put32(h + 16, len);
	rc = wr(n, h, sizeof(h), err);
	if (rc == 0 && len)
		rc = wr(n, data, len, err);
	return rc;
}

static int opt_error(struct nbd_conn *n, uint32_t opt, uint32_t type,
		     const char *msg, struct ferry_error *err)
{
	ferry_log(FERRY_LOG_WARN, "NBD: option %u refused: %s", opt, msg);
	return opt_reply(n, opt, type, msg, (uint32_t)strlen(msg), err);
}

/*
 * NBD_OPT_INFO and NBD_OPT_GO: u32 name length, name, u16 count, u16
 * requests. Answers INFO(EXPORT), INFO(BLOCK_SIZE), ACK; 1 when the
 * client may start (GO), 0 to keep haggling.
 */
static int opt_go(struct nbd_conn *n, uint32_t opt, const uint8_t *d,
		  uint32_t len, struct ferry_error *err)
{
	const struct nbd_export *ex = n->ex;
	uint32_t name_len, nreq;
	uint8_t info[14];
	int rc;

	if (len < 6)
		return opt_error(n, opt, NBD_REP_ERR_INVALID, "option too short", err);
	name_len = be_get32(d);
	if (name_len > len - 6)
		return opt_error(n, opt, NBD_REP_ERR_INVALID,
				 "export name longer than the option", err);
	nreq = be_get16(d + 4 + name_len);
	if (6 + name_len + 2 * nreq != len)
		return opt_error(n, opt, NBD_REP_ERR_INVALID,
				 "option length does not match its requests", err);
	if (name_len && (strlen(ex->name) != name_len ||
			 memcmp(d + 4, ex->name, name_len) != 0))
		return opt_error(n, opt, NBD_REP_ERR_UNKNOWN, "no such export", err);
	be_put16(info, NBD_INFO_EXPORT);
	be_put64(info + 2, ex->size);
	be_put16(info + 10, tx_flags(ex));
	rc = opt_reply(n, opt, NBD_REP_INFO, info, 12, err);
	if (rc < 0)
		return rc;
	/* Any alignment works; writes of up to NBD_PAYLOAD_MAX at once. */
	be_put16(info, NBD_INFO_BLOCK_SIZE);
	be_put32(info + 2, 1);
	be_put32(info + 6, 4096);
	be_put32(info + 10, NBD_PAYLOAD_MAX);
	rc = opt_reply(n, opt, NBD_REP_INFO, info, 14, err);
	if (rc == 0)
		rc = opt_reply(n, opt, NBD_REP_ACK, NULL, 0, err);
	if (rc < 0)
		return rc;
	return opt == NBD_OPT_GO ? 1 : 0;
}

static int handshake(struct nbd_conn *n, struct ferry_error *err)
{
	uint8_t h[18], cf[4];
	int rc;

	be_put64(h, NBD_MAGIC);
	be_put64(h + 8, NBD_OPTS_MAGIC);
	be_put16(h + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	rc = wr(n, h, sizeof(h), err);
	if (rc == 0)
		rc = rd(n, cf, sizeof(cf), NBD_IO_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	if (be_get32(cf) & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
		return ferry_error_set(err, -EPROTO, "NBD client sent unknown "
				       "flags 0x%x (not an NBD client?)", be_get32(cf));
	if (!(be_get32(cf) & NBD_FLAG_C_FIXED_NEWSTYLE))
		return ferry_error_set(err, -EPROTO, "NBD client does not speak "
				       "fixed newstyle");
	n->no_zeroes = be_get32(cf) & NBD_FLAG_C_NO_ZEROES;

	for (int i = 0; i < NBD_OPTS_MAX; i++) {
		uint8_t oh[16], data[NBD_OPT_DATA_MAX];
		uint32_t opt, len;

		rc = rd(n, oh, sizeof(oh), NBD_IO_TIMEOUT_MS, err);
		if (rc < 0)
			return rc;
		if (be_get64(oh) != NBD_OPTS_MAGIC)
			return ferry_error_set(err, -EPROTO, "NBD option without "
					       "IHAVEOPT magic");
		opt = be_get32(oh + 8);
		len = be_get32(oh + 12);
		if (len > NBD_OPT_DATA_MAX) {
			/* Too big to read: refuse, then hang up. */
			opt_error(n, opt, NBD_REP_ERR_TOO_BIG, "option data over "
				  "4096 bytes", NULL);
			return ferry_error_set(err, -EMSGSIZE, "NBD option %u "
					       "carries %u bytes", opt, len);
		}
		rc = rd(n, data, len, NBD_IO_TIMEOUT_MS, err);
		if (rc < 0)
			return rc;
		switch (opt) {
		case NBD_OPT_ABORT:
			opt_reply(n, opt, NBD_REP_ACK, NULL, 0, NULL);
			return ferry_error_set(err, -ECONNABORTED,
					       "NBD client aborted the handshake");
		case NBD_OPT_EXPORT_NAME: {
			uint8_t r[10 + 124] = { 0 };

			if (len != strlen(n->ex->name) ||
			    memcmp(data, n->ex->name, len) != 0)
				return ferry_error_set(err, -ENOENT, "NBD client "
						       "asked for an unknown export");
			be_put64(r, n->ex->size);
			be_put16(r + 8, tx_flags(n->ex));
			rc = wr(n, r, n->no_zeroes ? 10 : sizeof(r), err);
			return rc < 0 ? rc : 0;
		}
		case NBD_OPT_LIST: {
			uint8_t s[4 + 256];
			uint32_t nl = (uint32_t)strlen(n->ex->name);

			if (nl > 256)
				nl = 256;
			be_put32(s, nl);
			memcpy(s + 4, n->ex->name, nl);
			rc = opt_reply(n, opt, NBD_REP_SERVER, s, 4 + nl, err);
			if (rc == 0)
				rc = opt_reply(n, opt, NBD_REP_ACK, NULL, 0, err);
			break;
		}
		case NBD_OPT_INFO:
		case NBD_OPT_GO:
			rc = opt_go(n, opt, data, len, err);
			if (rc == 1)
				return 0;
			break;
		default:
			/* STARTTLS, structured replies, meta contexts: the
			 * client falls back to what it needs. */
			rc = opt_reply(n, opt, NBD_REP_ERR_UNSUP, NULL, 0, err);
			break;
		}
		if (rc < 0)
			return rc;
	}
	return ferry_error_set(err, -EPROTO, "NBD client sent %d options without "
			       "choosing an export", NBD_OPTS_MAX);
}

static int simple_reply(struct nbd_conn *n, uint64_t cookie, uint32_t error,
			const void *data, uint32_t len, struct ferry_error *err)
{
	uint8_t h[16];
	int rc;

	be_put32(h, NBD_SIMPLE_REPLY_MAGIC);
	be_put32(h + 4, error);
	be_put64(h + 8, cookie);
	rc = wr(n, h, sizeof(h), err);
	if (rc == 0 && len)
		rc = wr(n, data, len, err);
	return rc;
}

static uint32_t nbd_errno(int rc)
{
	switch (-rc) {
	case EPERM: case EROFS: return NBD_EPERM;
	case ENOMEM: return NBD_ENOMEM;
	case EINVAL: return NBD_EINVAL;
	case ENOSPC: case EDQUOT: return NBD_ENOSPC;
	case EOPNOTSUPP: return NBD_ENOTSUP;
	default: return NBD_EIO;
	}
}

/*
 * Why a request may not run, or NULL. Checked before anything is done:
 * the command, its flags, and the range within the export.
 */
static const char *check_request(const struct nbd_export *ex, uint16_t type,
				 uint16_t flags, uint64_t off, uint32_t len,
				 uint32_t *error)
{
	uint16_t allowed = NBD_CMD_FLAG_FUA;

	*error = NBD_EINVAL;
	switch (type) {
	case NBD_CMD_READ:
		allowed = 0;
		break;
	case NBD_CMD_WRITE:
	case NBD_CMD_TRIM:
		break;
	case NBD_CMD_WRITE_ZEROES:
		allowed |= NBD_CMD_FLAG_NO_HOLE;
		break;
	case NBD_CMD_FLUSH:
		allowed = 0;
		if (off || len)
			return "FLUSH with an offset or length";
		break;
	default:
		return "unknown command";
	}
	/* Clients may set FUA on reads and flushes; ignore it there. */
	if (flags & ~(allowed | NBD_CMD_FLAG_FUA))
		return "unknown command flags";
	if (type == NBD_CMD_FLUSH)
		return NULL;
	if (ex->read_only && type != NBD_CMD_READ) {
		*error = NBD_EPERM;
		return "write to a read-only export";
	}
	if ((type == NBD_CMD_READ || type == NBD_CMD_WRITE) && len > NBD_PAYLOAD_MAX)
		return "length over the maximum";
	if (!len)
		return "zero length";
	if (off > ex->size || len > ex->size - off) {
		*error = type == NBD_CMD_READ ? NBD_EINVAL : NBD_ENOSPC;
		return "range beyond the end of the export";
	}
	return NULL;
}

static int transmission(struct nbd_conn *n, struct ferry_error *err)
{
	const struct nbd_export *ex = n->ex;
	const struct nbd_backend *be = &ex->be;

	for (;;) {
		uint8_t h[NBD_REQUEST_BYTES];
		uint16_t flags, type;
		uint64_t cookie, off;
		uint32_t len, error = 0;
		const char *why;
		int rc;

		rc = rd(n, h, sizeof(h), ex->idle_timeout_ms ? (int)ex->idle_timeout_ms :
			NBD_IDLE_TIMEOUT_MS, err);
		if (rc < 0)
			return rc;
		if (be_get32(h) != NBD_REQUEST_MAGIC)
			return ferry_error_set(err, -EPROTO, "NBD request with bad "
					       "magic 0x%08x", be_get32(h));
		flags = be_get16(h + 4);
		type = be_get16(h + 6);
		cookie = be_get64(h + 8);
		off = be_get64(h + 16);
		len = be_get32(h + 24);
		n->st->requests++;
		if (type == NBD_CMD_DISC)
			return 0;
		why = check_request(ex, type, flags, off, len, &error);
		if (type == NBD_CMD_WRITE) {
			/* The payload follows whatever we think of it: read it
			 * to stay in step, unless it is too large to. */
			if (len > NBD_PAYLOAD_MAX)
				return ferry_error_set(err, -EMSGSIZE, "NBD write of "
						       "%u bytes (at most %u)", len,
						       NBD_PAYLOAD_MAX);
			rc = rd(n, n->buf, len, NBD_IO_TIMEOUT_MS, err);
			if (rc < 0)
				return rc;
		}
		if (why) {
			n->st->errors++;
			ferry_log(FERRY_LOG_WARN, "NBD: refused request %u at %llu+%u "
				  "(flags 0x%x): %s", type, (unsigned long long)off,
				  len, flags, why);
			rc = simple_reply(n, cookie, error, NULL, 0, err);
			if (rc < 0)
				return rc;
			continue;
		}
		switch (type) {
		case NBD_CMD_READ:
			rc = be->pread(be->ctx, n->buf, len, off);
			if (rc == 0)
				n->st->bytes_read += len;
			break;
		case NBD_CMD_WRITE:
			rc = be->pwrite(be->ctx, n->buf, len, off,
					flags & NBD_CMD_FLAG_FUA);
			if (rc == 0)
				n->st->bytes_written += len;
			break;
		case NBD_CMD_WRITE_ZEROES:
			rc = be->zero(be->ctx, len, off, !(flags & NBD_CMD_FLAG_NO_HOLE));
			if (rc == 0)
				n->st->bytes_zeroed += len;
			break;
		case NBD_CMD_TRIM:
			rc = be->trim(be->ctx, len, off);
			if (rc == 0)
				n->st->bytes_trimmed += len;
			break;
		case NBD_CMD_FLUSH:
			rc = be->flush(be->ctx);
			if (rc == 0)
				n->st->flushes++;
			break;
		}
		if (rc < 0) {
			n->st->errors++;
			ferry_log(FERRY_LOG_WARN, "NBD: request %u at %llu+%u failed: %s",
				  type, (unsigned long long)off, len, strerror(-rc));
			rc = simple_reply(n, cookie, nbd_errno(rc), NULL, 0, err);
		} else {
			rc = simple_reply(n, cookie, 0, n->buf,
					  type == NBD_CMD_READ ? len : 0, err);
		}
		if (rc < 0)
			return rc;
	}
}

int nbd_serve(int fd, const struct nbd_export *ex, struct nbd_stats *st,
	      struct ferry_error *err)
{
	struct nbd_stats local = { 0 };
	struct nbd_conn n = { .ex = ex, .st = st ? st : &local };
	int rc;

	net_conn_init(&n.c, fd);
	n.buf = malloc(NBD_PAYLOAD_MAX);
	if (!n.buf)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	rc = handshake(&n, err);
	if (rc == 0)
		rc = transmission(&n, err);
	free(n.buf);
	return rc;
}

/* ---- a backend over a file descriptor ---- */

static int fd_pread(void *ctx, void *buf, uint32_t len, uint64_t off)
{
	int fd = *(int *)ctx;

	while (len) {
		ssize_t r = pread(fd, buf, len, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0) {		/* past the end of a short file */
			memset(buf, 0, len);
			return 0;
		}
		buf = (uint8_t *)buf + r;
		len -= (uint32_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

static int fd_pwrite(void *ctx, const void *buf, uint32_t len, uint64_t off,
		     bool fua)
{
	int fd = *(int *)ctx;

	while (len) {
		ssize_t r = pwrite(fd, buf, len, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		buf = (const uint8_t *)buf + r;
		len -= (uint32_t)r;
		off += (uint64_t)r;
	}
	return fua && fdatasync(fd) < 0 ? -errno : 0;
}

static int fd_zero(void *ctx, uint32_t len, uint64_t off, bool may_trim)
{
	int fd = *(int *)ctx;
	static const uint8_t zeroes[NBD_ZERO_CHUNK];

	if (may_trim && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				  (off_t)off, len) == 0)
		return 0;
	if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      len) == 0)
		return 0;
	while (len) {
		uint32_t n = len < NBD_ZERO_CHUNK ? len : NBD_ZERO_CHUNK;
		int rc = fd_pwrite(ctx, zeroes, n, off, false);

		if (rc < 0)
			return rc;
		len -= n;
		off += n;
	}
	return 0;
}

static int fd_trim(void *ctx, uint32_t len, uint64_t off)
{
	int fd = *(int *)ctx;

	/* TRIM is advisory: a file system that cannot punch holes keeps
	 * the data, which is allowed. */
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      len) < 0 && errno != EOPNOTSUPP)
		return -errno;
	return 0;
}

static int fd_flush(void *ctx)
{
	return fdatasync(*(int *)ctx) < 0 ? -errno : 0;
}

void nbd_backend_fd(struct nbd_backend *be, int *fd)
{
	be->pread = fd_pread;
	be->pwrite = fd_pwrite;
	be->zero = fd_zero;
	be->trim = fd_trim;
	be->flush = fd_flush;
	be->ctx = fd;
}
