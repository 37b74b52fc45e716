/* A small pipelined NBD client (see nbd_client.h). */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "be.h"
#include "common/util.h"
#include "nbd_client.h"
#include "net.h"

/* A unix socket whose backlog is full refuses at once (EAGAIN): retry
 * this often until the handshake's deadline. */
#define NBD_CLIENT_CONNECT_RETRY_MS 10
/* Characters of a server's error message kept for ours. */
#define NBD_CLIENT_SERVER_MSG_MAX 200
#define NBD_OPT_HDR_BYTES 16
#define NBD_OPT_REPLY_HDR_BYTES 20
#define NBD_GREETING_BYTES 18
#define NBD_INFO_EXPORT_BYTES 12
#define NBD_INFO_BLOCK_SIZE_BYTES 14

enum nbd_client_state {
	NBD_CLIENT_HANDSHAKE,		/* inside nbd_client_connect() */
	NBD_CLIENT_TRANSMISSION,	/* requests may be sent */
	NBD_CLIENT_FAILED,		/* the stream is out of step, or gone */
};

struct nbd_client {
	struct net_conn conn;
	enum nbd_client_state state;
	struct ferry_error failure;	/* the first error, once FAILED */
	uint64_t size;
	uint16_t flags;
	uint32_t len_max;		/* longest request: NBD_PAYLOAD_MAX or
					 * the server's smaller maximum */
	uint32_t ninflight;
	uint64_t inflight[NBD_CLIENT_INFLIGHT_MAX];	/* cookies */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

/* The handshake: one deadline for all of it. */
struct handshake {
	struct nbd_client *c;
	const char *name;
	uint64_t deadline_ms;
	int timeout_ms;
};







static int ms_left(uint64_t deadline_ms)
{
	uint64_t now = ferry_now_ms();

	return now >= deadline_ms ? 0 : (int)(deadline_ms - now);
}

/* ---- the handshake ---- */

static int hs_io(struct handshake *hs, bool wr, void *buf, size_t len,
		 const char *what, struct ferry_error *err)
{
	struct nbd_client *c = hs->c;
	int rc;

	if (wr)
		rc = net_write_full(&c->conn, buf, len, ms_left(hs->deadline_ms),
				    what, err);
	else
		rc = net_read_full(&c->conn, buf, len, ms_left(hs->deadline_ms),
				   what, err);
	if (rc == -ETIMEDOUT)
		return ferry_error_set(err, rc, "NBD server at %s: handshake not "
				       "done within %d ms (%s %s)", c->path,
				       hs->timeout_ms, wr ? "sending" :
				       "waiting for", what);
	if (rc < 0)
		ferry_error_prefix(err, "NBD server at %s: ", c->path);
	return rc;
}

static int unix_connect(struct handshake *hs, struct ferry_error *err)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	const char *path = hs->c->path;
	int fd, rc;

	memcpy(a.sun_path, path, sizeof(a.sun_path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return ferry_error_set(err, -errno, "socket: %s", strerror(errno));
	/* A unix socket connects at once or not at all, so there is nothing
	 * to poll for: only a full backlog is worth another try. */
	while (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		rc = -errno;
		if (rc != -EAGAIN || ms_left(hs->deadline_ms) == 0)
			goto err_close;
		usleep(NBD_CLIENT_CONNECT_RETRY_MS * 1000);
	}
	return fd;

err_close:
	close(fd);
	return ferry_error_set(err, rc, "connecting to NBD server at %s: %s",
			       path, strerror(-rc));
}

/* The server's greeting, and our flags in answer. */
static int greeting(struct handshake *hs, struct ferry_error *err)
{
	const char *path = hs->c->path;
	uint8_t g[NBD_GREETING_BYTES], cf[4];
	uint32_t flags = NBD_FLAG_C_FIXED_NEWSTYLE;
	uint16_t sf;
	int rc;

	rc = hs_io(hs, false, g, sizeof(g), "NBD greeting", err);
	if (rc < 0)
		return rc;
	if (be_get64(g) != NBD_MAGIC)
		return ferry_error_set(err, -EPROTO, "%s is not an NBD server "
				       "(greeting begins 0x%016llx, not NBDMAGIC)",
				       path, (unsigned long long)be_get64(g));
	if (be_get64(g + 8) == NBD_OLDSTYLE_MAGIC)
		return ferry_error_set(err, -EPROTONOSUPPORT, "NBD server at %s "
				       "speaks only the oldstyle handshake", path);
	if (be_get64(g + 8) != NBD_OPTS_MAGIC)
		return ferry_error_set(err, -EPROTO, "NBD server at %s sent "
				       "magic 0x%016llx, not IHAVEOPT", path,
				       (unsigned long long)be_get64(g + 8));
	sf = be_get16(g + 16);
	/* Without fixed newstyle a server may hang up on an option it does
	 * not know instead of answering it. */
	if (!(sf & NBD_FLAG_FIXED_NEWSTYLE))
		return ferry_error_set(err, -EPROTONOSUPPORT, "NBD server at %s "
				       "does not speak fixed newstyle (flags "
				       "0x%04x)", path, sf);
	/* A server that did not offer NO_ZEROES may refuse the flag; with
	 * NBD_OPT_GO there are no zeroes to skip anyway. */
	if (sf & NBD_FLAG_NO_ZEROES)
		flags |= NBD_FLAG_C_NO_ZEROES;
	be_put32(cf, flags);
	return hs_io(hs, true, cf, sizeof(cf), "NBD client flags", err);
}

/* NBD_OPT_GO for hs->name, with no info requests: the server sends
 * NBD_INFO_EXPORT regardless, and we make no promise about alignment. */
static int send_go(struct handshake *hs, struct ferry_error *err)
{
	uint8_t o[NBD_OPT_HDR_BYTES + 4 + NBD_CLIENT_NAME_MAX + 2];
	uint32_t nl = (uint32_t)strlen(hs->name);

	FERRY_ASSERT(nl <= NBD_CLIENT_NAME_MAX);	/* nbd_client_connect */
	be_put64(o, NBD_OPTS_MAGIC);
	be_put32(o + 8, NBD_OPT_GO);
	be_put32(o + 12, 4 + nl + 2);
	be_put32(o + 16, nl);
	memcpy(o + 20, hs->name, nl);
	be_put16(o + 20 + nl, 0);
	return hs_io(hs, true, o, NBD_OPT_HDR_BYTES + 4 + nl + 2,
		     "NBD_OPT_GO", err);
}

/*
 * One option reply to NBD_OPT_GO: its type, and its data in @data
 * (NBD_CLIENT_REP_DATA_MAX + 1 bytes, NUL-terminated after *@len).
 */
static int go_reply(struct handshake *hs, uint32_t *type, uint8_t *data,
		    uint32_t *len, struct ferry_error *err)
{
	const char *path = hs->c->path;
	uint8_t h[NBD_OPT_REPLY_HDR_BYTES];
	int rc;

	rc = hs_io(hs, false, h, sizeof(h), "NBD option reply", err);
	if (rc < 0)
		return rc;
	if (be_get64(h) != NBD_REP_MAGIC)
		return ferry_error_set(err, -EPROTO, "NBD server at %s: option "
				       "reply with bad magic 0x%016llx", path,
				       (unsigned long long)be_get64(h));
	if (be_get32(h + 8) != NBD_OPT_GO)
		return ferry_error_set(err, -EPROTO, "NBD server at %s answered "
				       "option %u to NBD_OPT_GO", path,
				       be_get32(h + 8));
	*type = be_get32(h + 12);
	*len = be_get32(h + 16);
	if (*len > NBD_CLIENT_REP_DATA_MAX)
		return ferry_error_set(err, -EMSGSIZE, "NBD server at %s: option "
				       "reply 0x%x carries %u bytes (at most %u)",
				       path, *type, *len, NBD_CLIENT_REP_DATA_MAX);
	rc = hs_io(hs, false, data, *len, "NBD option reply data", err);
	if (rc < 0)
		return rc;
	data[*len] = '\0';
	return 0;
}

/* An NBD_REP_INFO: the export's size and flags, the maximum block size;
 * other info types are skipped. */
static int go_info(struct handshake *hs, const uint8_t *d, uint32_t len,
		   bool *have_export, struct ferry_error *err)
{
	struct nbd_client *c = hs->c;
	uint16_t info;
	uint32_t max;

	if (len < 2)
		return ferry_error_set(err, -EPROTO, "NBD server at %s: info "
				       "reply of %u bytes", c->path, len);
	info = be_get16(d);
	switch (info) {
	case NBD_INFO_EXPORT:
		if (len != NBD_INFO_EXPORT_BYTES)
			return ferry_error_set(err, -EPROTO, "NBD server at %s: "
					       "NBD_INFO_EXPORT of %u bytes, not %u",
					       c->path, len, NBD_INFO_EXPORT_BYTES);
		c->size = be_get64(d + 2);
		c->flags = be_get16(d + 10);
		/* Offsets travel as off_t on both ends (QEMU: int64_t). */
		if (c->size > INT64_MAX)
			return ferry_error_set(err, -EPROTO, "NBD server at %s: "
					       "export size %llu is too large",
					       c->path, (unsigned long long)c->size);
		*have_export = true;
		return 0;
	case NBD_INFO_BLOCK_SIZE:
		if (len != NBD_INFO_BLOCK_SIZE_BYTES)
			return ferry_error_set(err, -EPROTO, "NBD server at %s: "
					       "NBD_INFO_BLOCK_SIZE of %u bytes, not %u",
					       c->path, len, NBD_INFO_BLOCK_SIZE_BYTES);
		max = be_get32(d + 10);
		if (max && max < c->len_max)
			c->len_max = max;
		return 0;
	default:
		return 0;
	}
}

static const char *rep_err_name(uint32_t type, int *code)
{
	switch (type) {
	case NBD_REP_ERR_UNSUP:
		*code = -ENOTSUP;
		return "NBD_OPT_GO not supported";
	case NBD_REP_ERR_POLICY:
		*code = -EACCES;
		return "refused by policy";
	case NBD_REP_ERR_INVALID:
		*code = -EINVAL;
		return "invalid request";
	case NBD_REP_ERR_PLATFORM:
		*code = -ENOTSUP;
		return "not supported on this platform";
	case NBD_REP_ERR_TLS_REQD:
		*code = -EACCES;
		return "TLS required";
	case NBD_REP_ERR_UNKNOWN:
		*code = -ENOENT;
		return "unknown export";
	case NBD_REP_ERR_SHUTDOWN:
		*code = -ESHUTDOWN;
		return "server shutting down";
	case NBD_REP_ERR_BLOCK_SIZE_REQD:
		*code = -EINVAL;
		return "block size negotiation required";
	case NBD_REP_ERR_TOO_BIG:
		*code = -EMSGSIZE;
		return "request too big";
	default:
		*code = -EPROTO;
		return "unknown error";
	}
}

/* An NBD_REP_ERR_*: the server's reason, its message made printable. */
static int go_error(struct handshake *hs, uint32_t type, const uint8_t *d,
		    uint32_t len, struct ferry_error *err)
{
	char msg[NBD_CLIENT_SERVER_MSG_MAX + 1];
	uint32_t n = len < NBD_CLIENT_SERVER_MSG_MAX ? len :
		     NBD_CLIENT_SERVER_MSG_MAX;
	const char *why;
	int code;

	for (uint32_t i = 0; i < n; i++)
		msg[i] = d[i] >= 0x20 && d[i] < 0x7f ? (char)d[i] : '?';
	msg[n] = '\0';
	why = rep_err_name(type, &code);
	return ferry_error_set(err, code, "NBD server at %s refused export "
			       "'%.64s': %s (0x%x)%s%s", hs->c->path, hs->name,
			       why, type, n ? ": " : "", msg);
}

/*
 * After a refusal the stream is still in step: say goodbye with
 * NBD_OPT_ABORT, as the protocol asks, so the server does not log a
 * client that vanished mid-negotiation (QEMU does). The server may or
 * may not answer; the spec lets us close without reading it.
 */
static void send_abort(struct handshake *hs)
{
	struct ferry_error ignored = { 0 };
	uint8_t o[NBD_OPT_HDR_BYTES];

	be_put64(o, NBD_OPTS_MAGIC);
	be_put32(o + 8, NBD_OPT_ABORT);
	be_put32(o + 12, 0);
	net_write_full(&hs->c->conn, o, sizeof(o), NBD_CLIENT_DISC_TIMEOUT_MS,
		       "NBD_OPT_ABORT", &ignored);
}

/* NBD_OPT_GO and its replies, up to the ACK that starts transmission. */
static int negotiate(struct handshake *hs, struct ferry_error *err)
{
	uint8_t data[NBD_CLIENT_REP_DATA_MAX + 1];
	const char *path = hs->c->path;
	bool have_export = false;
	uint32_t type = 0, len = 0;	/* (set by go_reply; gcc cannot tell) */
	int rc;

	rc = send_go(hs, err);
	if (rc < 0)
		return rc;
	for (int i = 0; i < NBD_CLIENT_GO_REPLIES_MAX; i++) {
		rc = go_reply(hs, &type, data, &len, err);
		if (rc < 0)
			return rc;
		if (type & NBD_REP_ERR) {
			rc = go_error(hs, type, data, len, err);
			send_abort(hs);
			return rc;
		}
		switch (type) {
		case NBD_REP_INFO:
			rc = go_info(hs, data, len, &have_export, err);
			if (rc < 0)
				return rc;
			break;
		case NBD_REP_ACK:
			if (len)
				return ferry_error_set(err, -EPROTO, "NBD server at "
						       "%s: ACK with %u bytes of data",
						       path, len);
			if (!have_export)
				return ferry_error_set(err, -EPROTO, "NBD server at "
						       "%s acknowledged NBD_OPT_GO "
						       "without NBD_INFO_EXPORT", path);
			return 0;
		default:
			return ferry_error_set(err, -EPROTO, "NBD server at %s: "
					       "unexpected reply 0x%x to NBD_OPT_GO",
					       path, type);
		}
	}
	return ferry_error_set(err, -EPROTO, "NBD server at %s sent %d replies "
			       "to NBD_OPT_GO without an ACK", path,
			       NBD_CLIENT_GO_REPLIES_MAX);
}

int nbd_client_connect(struct nbd_client **out, const char *path,
		       const char *export_name, int timeout_ms,
		       struct ferry_error *err)
{
	struct handshake hs = {
		.name = export_name,
		.deadline_ms = ferry_now_ms() +
			       (timeout_ms > 0 ? (uint64_t)timeout_ms : 0),
		.timeout_ms = timeout_ms,
	};
	struct ferry_error local = { 0 };
	struct nbd_client *c;
	int fd, rc;

	*out = NULL;
	if (!err)
		err = &local;
	if (strlen(path) >= sizeof(c->path))
		return ferry_error_set(err, -ENAMETOOLONG, "NBD socket path %s "
				       "is longer than %zu bytes", path,
				       sizeof(c->path) - 1);
	if (strlen(export_name) > NBD_CLIENT_NAME_MAX)
		return ferry_error_set(err, -ENAMETOOLONG, "NBD export name of "
				       "%zu bytes (at most %u)",
				       strlen(export_name), NBD_CLIENT_NAME_MAX);
	c = calloc(1, sizeof(*c));
	if (!c)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	strcpy(c->path, path);
	c->len_max = NBD_PAYLOAD_MAX;
	net_conn_init(&c->conn, -1);
	hs.c = c;
	fd = unix_connect(&hs, err);
	if (fd < 0) {
		rc = fd;
		goto err_free;
	}
	net_conn_init(&c->conn, fd);
	rc = greeting(&hs, err);
	if (rc == 0)
		rc = negotiate(&hs, err);
	if (rc < 0)
		goto err_close;
	c->state = NBD_CLIENT_TRANSMISSION;
	*out = c;
	return 0;

err_close:
	net_conn_close(&c->conn);
err_free:
	free(c);
	return rc;
}

uint64_t nbd_client_size(const struct nbd_client *c)
{
	return c->size;
}

uint16_t nbd_client_flags(const struct nbd_client *c)
{
	return c->flags;
}

uint32_t nbd_client_inflight(const struct nbd_client *c)
{
	return c->ninflight;
}

/* ---- transmission ---- */

/* The one transition to FAILED: keep the first error for later calls. */
static int client_fail(struct nbd_client *c, const struct ferry_error *err)
{
	if (c->state != NBD_CLIENT_FAILED) {
		c->state = NBD_CLIENT_FAILED;
		c->failure = *err;
	}
	return err->code;
}

static int check_usable(const struct nbd_client *c, struct ferry_error *err)
{
	/* Only nbd_client_connect() hands out a client, in TRANSMISSION. */
	FERRY_ASSERT(c->state != NBD_CLIENT_HANDSHAKE);
	if (c->state == NBD_CLIENT_FAILED)
		return ferry_error_set(err, c->failure.code, "NBD connection "
				       "failed earlier: %s", c->failure.msg);
	return 0;
}

static bool flag(const struct nbd_client *c, uint16_t f)
{
	return (c->flags & NBD_FLAG_HAS_FLAGS) && (c->flags & f);
}

static int find_cookie(const struct nbd_client *c, uint64_t cookie)
{
	for (uint32_t i = 0; i < c->ninflight; i++)
		if (c->inflight[i] == cookie)
			return (int)i;
	return -1;
}

static const char *cmd_name(uint16_t type)
{
	switch (type) {
	case NBD_CMD_WRITE: return "WRITE";
	case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
	case NBD_CMD_FLUSH: return "FLUSH";
	case NBD_CMD_DISC: return "DISC";
	default: return "request";
	}
}

/*
 * Why a request may not be sent, as a negative errno, or 0. Everything
 * the caller chose is checked here, before a byte goes out, so a refused
 * request leaves the connection as it was.
 */
static int check_request(const struct nbd_client *c, uint64_t cookie,
			 uint16_t type, uint64_t off, uint32_t len,
			 struct ferry_error *err)
{
	const char *name = cmd_name(type);
	int rc;

	rc = check_usable(c, err);
	if (rc < 0)
		return rc;
	if (c->ninflight == NBD_CLIENT_INFLIGHT_MAX)
		return ferry_error_set(err, -EBUSY, "NBD %s: %d requests already "
				       "in flight", name, NBD_CLIENT_INFLIGHT_MAX);
	if (find_cookie(c, cookie) >= 0)
		return ferry_error_set(err, -EEXIST, "NBD %s: cookie %llu is "
				       "already in flight", name,
				       (unsigned long long)cookie);
	if (type == NBD_CMD_FLUSH)
		return flag(c, NBD_FLAG_SEND_FLUSH) ? 0 :
		       ferry_error_set(err, -ENOTSUP, "NBD server at %s does not "
				       "support FLUSH", c->path);
	if (type == NBD_CMD_WRITE_ZEROES && !flag(c, NBD_FLAG_SEND_WRITE_ZEROES))
		return ferry_error_set(err, -ENOTSUP, "NBD server at %s does not "
				       "support WRITE_ZEROES", c->path);
	if (flag(c, NBD_FLAG_READ_ONLY))
		return ferry_error_set(err, -EROFS, "NBD %s: the export at %s is "
				       "read-only", name, c->path);
	if (len == 0 || len > c->len_max)
		return ferry_error_set(err, -EINVAL, "NBD %s of %u bytes (1 to %u)",
				       name, len, c->len_max);
	if (off > c->size || len > c->size - off)
		return ferry_error_set(err, -EINVAL, "NBD %s at %llu+%u is past "
				       "the end of the export (%llu bytes)", name,
				       (unsigned long long)off, len,
				       (unsigned long long)c->size);
	return 0;
}

/*
 * Send a request header and its payload (@payload_len bytes, 0 for none)
 * within @timeout_ms. A request sent in part leaves the stream out of
 * step: any failure here fails the connection.
 */
static int send_request(struct nbd_client *c, uint64_t cookie, uint16_t type,
			uint16_t flags, uint64_t off, uint32_t len,
			const void *payload, uint32_t payload_len,
			int timeout_ms, struct ferry_error *err)
{
	uint64_t deadline_ms = ferry_now_ms() + (uint64_t)timeout_ms;
	uint8_t h[NBD_REQUEST_BYTES];
	int rc;

	be_put32(h, NBD_REQUEST_MAGIC);
	be_put16(h + 4, flags);
	be_put16(h + 6, type);
	be_put64(h + 8, cookie);
	be_put64(h + 16, off);
	be_put32(h + 24, len);
	rc = net_write_full(&c->conn, h, sizeof(h), ms_left(deadline_ms),
			    "NBD request", err);
	if (rc == 0 && payload_len)
		rc = net_write_full(&c->conn, payload, payload_len,
				    ms_left(deadline_ms), "NBD write payload", err);
	if (rc < 0) {
		ferry_error_prefix(err, "NBD %s to %s: ", cmd_name(type), c->path);
		return client_fail(c, err);
	}
	return 0;
}

static int submit(struct nbd_client *c, uint64_t cookie, uint16_t type,
		  uint16_t flags, uint64_t off, uint32_t len, const void *payload,
		  struct ferry_error *err)
{
	struct ferry_error local = { 0 };
	int rc;

	if (!err)
		err = &local;
	rc = check_request(c, cookie, type, off, len, err);
	if (rc == 0)
		rc = send_request(c, cookie, type, flags, off, len, payload,
				  payload ? len : 0, NBD_CLIENT_IO_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	c->inflight[c->ninflight++] = cookie;
	return 0;
}

int nbd_client_write(struct nbd_client *c, uint64_t cookie, const void *buf,
		     uint32_t len, uint64_t off, struct ferry_error *err)
{
	FERRY_ASSERT(buf || !len);
	return submit(c, cookie, NBD_CMD_WRITE, 0, off, len, len ? buf : NULL,
		      err);
}

int nbd_client_zero(struct nbd_client *c, uint64_t cookie, uint32_t len,
		    uint64_t off, bool may_trim, struct ferry_error *err)
{
	return submit(c, cookie, NBD_CMD_WRITE_ZEROES,
		      may_trim ? 0 : NBD_CMD_FLAG_NO_HOLE, off, len, NULL, err);
}

int nbd_client_flush(struct nbd_client *c, uint64_t cookie,
		     struct ferry_error *err)
{
	return submit(c, cookie, NBD_CMD_FLUSH, 0, 0, 0, NULL, err);
}

/* Wait until @fd is readable (or closed) or @deadline_ms passes. */
static int wait_readable(int fd, uint64_t deadline_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	for (;;) {
		int rc = poll(&p, 1, ms_left(deadline_ms));

		if (rc > 0)
			return 0;
		if (rc == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

/* Check a simple reply's header and take its cookie out of flight. */
static int parse_reply(struct nbd_client *c, const uint8_t *h, uint64_t *cookie,
		       uint32_t *nbd_errno, struct ferry_error *err)
{
	uint32_t magic = be_get32(h);
	int i;

	if (magic == NBD_STRUCTURED_REPLY_MAGIC)
		return ferry_error_set(err, -EPROTO, "NBD server at %s sent a "
				       "structured reply, which was not "
				       "negotiated", c->path);
	if (magic != NBD_SIMPLE_REPLY_MAGIC)
		return ferry_error_set(err, -EPROTO, "NBD server at %s sent a "
				       "reply with bad magic 0x%08x", c->path,
				       magic);
	*cookie = be_get64(h + 8);
	i = find_cookie(c, *cookie);
	if (i < 0)
		return ferry_error_set(err, -EPROTO, "NBD server at %s replied "
				       "to cookie %llu, which is not in flight",
				       c->path, (unsigned long long)*cookie);
	c->inflight[i] = c->inflight[--c->ninflight];
	*nbd_errno = be_get32(h + 4);
	return 0;
}

/*
 * @timeout_ms bounds the wait for a reply to begin: a timeout then leaves
 * the stream in step. Once its first byte is here, the rest of the 16
 * must follow within NBD_CLIENT_IO_TIMEOUT_MS, or the connection fails.
 */
int nbd_client_reply(struct nbd_client *c, uint64_t *cookie,
		     uint32_t *nbd_errno, int timeout_ms,
		     struct ferry_error *err)
{
	struct ferry_error local = { 0 };
	uint8_t h[NBD_REPLY_BYTES];
	int rc;

	if (!err)
		err = &local;
	rc = check_usable(c, err);
	if (rc < 0)
		return rc;
	if (c->ninflight == 0)
		return ferry_error_set(err, -EINVAL, "NBD reply awaited with no "
				       "request in flight");
	rc = wait_readable(c->conn.fd, ferry_now_ms() +
			   (timeout_ms > 0 ? (uint64_t)timeout_ms : 0));
	if (rc == -ETIMEDOUT)
		return ferry_error_set(err, rc, "no NBD reply from %s within %d ms "
				       "(%u requests in flight)", c->path,
				       timeout_ms, c->ninflight);
	if (rc < 0) {
		ferry_error_set(err, rc, "poll: %s", strerror(-rc));
		return client_fail(c, err);
	}
	rc = net_read_full(&c->conn, h, sizeof(h), NBD_CLIENT_IO_TIMEOUT_MS,
			   "NBD reply", err);
	if (rc < 0) {
		ferry_error_prefix(err, "NBD server at %s: ", c->path);
		return client_fail(c, err);
	}
	rc = parse_reply(c, h, cookie, nbd_errno, err);
	if (rc < 0)
		return client_fail(c, err);
	return 0;
}

void nbd_client_close(struct nbd_client *c)
{
	struct ferry_error ignored = { 0 };

	if (!c)
		return;
	/* After DISC the server finishes what is in flight and hangs up;
	 * nothing is gained by waiting for it. */
	if (c->state == NBD_CLIENT_TRANSMISSION)
		send_request(c, 0, NBD_CMD_DISC, 0, 0, 0, NULL, 0,
			     NBD_CLIENT_DISC_TIMEOUT_MS, &ignored);
	net_conn_close(&c->conn);
	free(c);
}
