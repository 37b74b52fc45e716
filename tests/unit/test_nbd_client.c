/*
 * ferry's NBD client against three kinds of server on a private unix
 * socket:
 *   - ferry's own NBD server (nbd_serve() in a thread, a temp file
 *     behind it): the handshake, pipelined writes, zeroes with and
 *     without NO_HOLE, a flush, a full window, requests refused before
 *     they are sent, an error reply; the file checked byte for byte;
 *   - scripted servers that break the protocol in one way each (garbage
 *     greeting, silence, bad option replies, bad reply magic, unknown
 *     cookie, structured reply, hang-up): each gives its error, no crash;
 *   - QEMU's NBD server (qemu-nbd, and qemu-storage-daemon's
 *     --nbd-server + --export, the code behind block-export-add) when
 *     installed: writes, zeroes and a flush, then the image compared.
 *
 * Every socket lives in a mkdtemp directory that the server side removes
 * as soon as it has accepted, and QEMU children die with the test
 * (PR_SET_PDEATHSIG), so a failing assertion leaves nothing behind.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "transport/be.h"
#include "common/util.h"
#include "transport/nbd_client.h"

#define MiB (1u << 20)
#define EXPORT_BYTES (4 * MiB)
/* The first bytes of every export hold a pattern; the rest is a hole. */
#define PATTERN_BYTES (4 * MiB)
#define TIMEOUT_MS 5000
/* How long QEMU may take to start listening. */
#define QEMU_START_MS 10000

static uint8_t pat(uint64_t i)
{
	return (uint8_t)(i * 131 + (i >> 9));
}

/* ---- a listening socket in a private directory ---- */

struct sock_dir {
	char dir[64];
	char path[128];
	int lfd;
};

static void sock_dir_make(struct sock_dir *d)
{
	snprintf(d->dir, sizeof(d->dir), "/tmp/ferry-nbdc.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(d->dir));
	snprintf(d->path, sizeof(d->path), "%s/nbd.sock", d->dir);
}

static void sock_dir_remove(struct sock_dir *d)
{
	unlink(d->path);
	rmdir(d->dir);
}

static void sock_listen(struct sock_dir *d)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };

	sock_dir_make(d);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", d->path);
	d->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(d->lfd, 0);
	ck_assert_int_eq(bind(d->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(d->lfd, 1), 0);
}

/* One connection, or -1 after TIMEOUT_MS. The listener, the socket and
 * its directory are gone afterwards. (Server threads: no ck_assert.) */
static int accept_one(struct sock_dir *d)
{
	struct pollfd p = { .fd = d->lfd, .events = POLLIN };
	int fd = -1;

	if (poll(&p, 1, TIMEOUT_MS) == 1)
		fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC);
	close(d->lfd);
	sock_dir_remove(d);
	return fd;
}

/* ---- ferry's NBD server over a temp file ---- */

struct server {
	struct sock_dir d;
	int file;
	uint64_t size;
	struct nbd_export ex;
	struct nbd_backend file_be;
	uint64_t fail_from;	/* writes at or past this offset: -ENOSPC */
	int zeroes;		/* zero calls seen, and their may_trim */
	bool zero_may_trim[8];
	uint8_t *model;		/* what the file must hold at the end */
	struct nbd_stats st;
	struct ferry_error err;
	int rc;
	pthread_t t;
};

static int rec_pread(void *ctx, void *buf, uint32_t len, uint64_t off)
{
	struct server *s = ctx;

	return s->file_be.pread(s->file_be.ctx, buf, len, off);
}

static int rec_pwrite(void *ctx, const void *buf, uint32_t len, uint64_t off,
		      bool fua)
{
	struct server *s = ctx;

	if (off >= s->fail_from)
		return -ENOSPC;
	return s->file_be.pwrite(s->file_be.ctx, buf, len, off, fua);
}

static int rec_zero(void *ctx, uint32_t len, uint64_t off, bool may_trim)
{
	struct server *s = ctx;

	if (s->zeroes < (int)FERRY_ARRAY_SIZE(s->zero_may_trim))
		s->zero_may_trim[s->zeroes] = may_trim;
	s->zeroes++;
	return s->file_be.zero(s->file_be.ctx, len, off, may_trim);
}

static int rec_trim(void *ctx, uint32_t len, uint64_t off)
{
	struct server *s = ctx;

	return s->file_be.trim(s->file_be.ctx, len, off);
}

static int rec_flush(void *ctx)
{
	struct server *s = ctx;

	return s->file_be.flush(s->file_be.ctx);
}

static void *server_main(void *arg)
{
	struct server *s = arg;
	int fd = accept_one(&s->d);

	s->rc = fd < 0 ? -ETIMEDOUT : nbd_serve(fd, &s->ex, &s->st, &s->err);
	if (fd >= 0)
		close(fd);
	return NULL;
}

/* Give @fd @size bytes (the pattern, then a hole) and *@model a copy. */
static void fill_disk(int fd, uint64_t size, uint8_t **model)
{
	uint64_t n = size < PATTERN_BYTES ? size : PATTERN_BYTES;

	*model = calloc(1, size);
	ck_assert_ptr_nonnull(*model);
	for (uint64_t i = 0; i < n; i++)
		(*model)[i] = pat(i);
	ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
	ck_assert_int_eq(pwrite(fd, *model, n, 0), (ssize_t)n);
}

static void prepare(struct server *s, uint64_t size, bool read_only)
{
	char path[] = "/tmp/ferry-nbdc-disk.XXXXXX";

	memset(s, 0, sizeof(*s));
	s->size = size;
	s->fail_from = UINT64_MAX;
	/* The file lives as long as its descriptor: nothing to clean up. */
	s->file = mkostemp(path, O_CLOEXEC);
	ck_assert_int_ge(s->file, 0);
	unlink(path);
	fill_disk(s->file, size, &s->model);
	nbd_backend_fd(&s->file_be, &s->file);
	s->ex = (struct nbd_export){
		.name = "disk0",
		.size = size,
		.read_only = read_only,
		.be = { rec_pread, rec_pwrite, rec_zero, rec_trim, rec_flush, s },
	};
}

static void run(struct server *s)
{
	sock_listen(&s->d);
	ck_assert_int_eq(pthread_create(&s->t, NULL, server_main, s), 0);
}

static void start(struct server *s, uint64_t size, bool read_only)
{
	prepare(s, size, read_only);
	run(s);
}

/* The first byte where @fd differs from @want, UINT64_MAX if none. */
static uint64_t first_diff(int fd, const uint8_t *want, uint64_t size)
{
	uint8_t *buf = malloc(size);
	uint64_t bad = UINT64_MAX;

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(pread(fd, buf, size, 0), (ssize_t)size);
	for (uint64_t i = 0; i < size; i++)
		if (buf[i] != want[i]) {
			bad = i;
			break;
		}
	free(buf);
	return bad;
}

/* Wait for the server; its result. The file must equal the model. */
static int finish(struct server *s)
{
	uint64_t bad;

	pthread_join(s->t, NULL);
	bad = first_diff(s->file, s->model, s->size);
	/* (one assertion: libcheck records each one it passes) */
	ck_assert_msg(bad == UINT64_MAX, "file byte %llu is not what was "
		      "written", (unsigned long long)bad);
	close(s->file);
	free(s->model);
	return s->rc;
}

static struct nbd_client *connect_ok(const char *path)
{
	struct ferry_error err = { 0 };
	struct nbd_client *c = NULL;
	int rc = nbd_client_connect(&c, path, "disk0", TIMEOUT_MS, &err);

	ck_assert_msg(rc == 0, "connect: %s", err.msg);
	ck_assert_ptr_nonnull(c);
	return c;
}

/* ---- replies ---- */

#define COOKIES_MAX 256

struct replies {
	uint32_t ok;		/* each cookie once, no error */
	uint32_t failed;	/* NBD errors */
	uint32_t bad;		/* a cookie out of range or seen twice */
	uint32_t last_errno;
	bool reordered;		/* a cookie came back before a lower one */
	uint8_t seen[COOKIES_MAX];
	int rc;
	struct ferry_error err;
};

/* Collect @n replies (cookies below COOKIES_MAX), stopping at an error. */
static void collect(struct nbd_client *c, uint32_t n, struct replies *r)
{
	uint64_t prev = 0;

	memset(r, 0, sizeof(*r));
	for (uint32_t i = 0; i < n; i++) {
		uint64_t cookie;
		uint32_t e;

		r->rc = nbd_client_reply(c, &cookie, &e, TIMEOUT_MS, &r->err);
		if (r->rc < 0)
			return;
		if (i && cookie < prev)
			r->reordered = true;
		prev = cookie;
		if (cookie >= COOKIES_MAX || r->seen[cookie]++) {
			r->bad++;
		} else if (e) {
			r->failed++;
			r->last_errno = e;
		} else {
			r->ok++;
		}
	}
}

static void assert_all_ok(const struct replies *r, uint32_t n)
{
	ck_assert_msg(r->rc == 0, "reply: %s", r->err.msg);
	ck_assert_msg(r->ok == n, "%u of %u replies good (%u NBD errors, last "
		      "%u; %u bad cookies)", r->ok, n, r->failed, r->last_errno,
		      r->bad);
}

/* Some data for writes: differs from the pattern everywhere. */
static void fill(uint8_t *buf, uint32_t len, uint32_t seed)
{
	for (uint32_t i = 0; i < len; i++)
		buf[i] = (uint8_t)~pat(i + seed * 7919u);
}

/* ---- against ferry's server ---- */

START_TEST(handshake_gets_size_and_flags)
{
	struct server s;
	struct nbd_client *c;
	uint16_t f;

	start(&s, EXPORT_BYTES, false);
	c = connect_ok(s.d.path);
	f = nbd_client_flags(c);
	ck_assert_uint_eq(nbd_client_size(c), EXPORT_BYTES);
	ck_assert_uint_eq(f & (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
			       NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_READ_ONLY),
			  NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
			  NBD_FLAG_SEND_WRITE_ZEROES);
	ck_assert_uint_eq(nbd_client_inflight(c), 0);
	nbd_client_close(c);
	/* 0 only after NBD_CMD_DISC (EOF alone gives -ECONNRESET) */
	ck_assert_int_eq(finish(&s), 0);
	ck_assert_uint_eq(s.st.requests, 1);
}
END_TEST


/* 16 writes of odd sizes at odd offsets in flight at once, then a flush;
 * every reply comes back once; the file equals what was written. */
START_TEST(pipelined_writes_then_flush)
{
	enum { N = 16, STRIDE = 256 << 10, LEN_MAX = 70000 };
	static uint8_t buf[N][LEN_MAX];
	struct ferry_error err = { 0 };
	struct server s;
	struct nbd_client *c;
	struct replies r;
	uint64_t written = 0;
	int fails = 0;

	start(&s, EXPORT_BYTES, false);
	c = connect_ok(s.d.path);
	for (uint32_t i = 0; i < N; i++) {
		uint32_t len = 4096 * (i + 1) + 3 * i;
		uint64_t off = (uint64_t)i * STRIDE + 100 + i;

		fill(buf[i], len, i);
		memcpy(s.model + off, buf[i], len);
		written += len;
		if (nbd_client_write(c, i, buf[i], len, off, &err) < 0)
			fails++;
	}
	ck_assert_msg(fails == 0, "write: %s", err.msg);
	ck_assert_uint_eq(nbd_client_inflight(c), N);
	ck_assert_int_eq(nbd_client_flush(c, N, &err), 0);
	ck_assert_uint_eq(nbd_client_inflight(c), N + 1);
	collect(c, N + 1, &r);
	assert_all_ok(&r, N + 1);
	ck_assert_uint_eq(nbd_client_inflight(c), 0);
	nbd_client_close(c);
	ck_assert_int_eq(finish(&s), 0);
	ck_assert_uint_eq(s.st.bytes_written, written);
	ck_assert_uint_eq(s.st.flushes, 1);
}
END_TEST

START_TEST(zeroes_with_and_without_hole)
{
	struct ferry_error err = { 0 };
	struct server s;
	struct nbd_client *c;
	struct replies r;

	start(&s, EXPORT_BYTES, false);
	c = connect_ok(s.d.path);
	ck_assert_int_eq(nbd_client_zero(c, 1, 65536, MiB, false, &err), 0);
	ck_assert_int_eq(nbd_client_zero(c, 2, 65536 + 7, 2 * MiB + 3, true,
					 &err), 0);
	memset(s.model + MiB, 0, 65536);
	memset(s.model + 2 * MiB + 3, 0, 65536 + 7);
	collect(c, 2, &r);
	assert_all_ok(&r, 2);
	nbd_client_close(c);
	ck_assert_int_eq(finish(&s), 0);
	ck_assert_int_eq(s.zeroes, 2);
	ck_assert_msg(!s.zero_may_trim[0], "NO_HOLE not sent");
	ck_assert_msg(s.zero_may_trim[1], "NO_HOLE sent with may_trim");
	ck_assert_uint_eq(s.st.bytes_zeroed, 2 * 65536 + 7);
}
END_TEST

/* Each refused with -EINVAL and nothing sent: the server sees only the
 * good write after them, and DISC. */
START_TEST(bad_requests_refused_before_sending)
{
	static uint8_t b[4096];
	struct ferry_error err = { 0 };
	struct server s;
	struct nbd_client *c;
	struct replies r;

	fill(b, sizeof(b), 1);
	start(&s, EXPORT_BYTES, false);
	c = connect_ok(s.d.path);
	ck_assert_int_eq(nbd_client_write(c, 1, b, 4096, EXPORT_BYTES - 100,
					  &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "past the end"), "%s", err.msg);
	ck_assert_int_eq(nbd_client_write(c, 2, b, 512, ~0ull - 10, &err),
			 -EINVAL);
	ck_assert_int_eq(nbd_client_write(c, 3, b, 0, 0, &err), -EINVAL);
	/* (refused on its length: the buffer is never read) */
	ck_assert_int_eq(nbd_client_write(c, 4, b, NBD_PAYLOAD_MAX + 1, 0, &err),
			 -EINVAL);
	ck_assert_int_eq(nbd_client_zero(c, 5, 1, EXPORT_BYTES, false, &err),
			 -EINVAL);
	ck_assert_int_eq(nbd_client_zero(c, 6, 0, 0, true, &err), -EINVAL);
	ck_assert_uint_eq(nbd_client_inflight(c), 0);
	/* still in step */
	ck_assert_int_eq(nbd_client_write(c, 7, b, 16, 0, &err), 0);
	memcpy(s.model, b, 16);
	collect(c, 1, &r);
	assert_all_ok(&r, 1);
	ck_assert_uint_eq(r.seen[7], 1);
	nbd_client_close(c);
	ck_assert_int_eq(finish(&s), 0);
	ck_assert_uint_eq(s.st.requests, 2);
	ck_assert_uint_eq(s.st.errors, 0);
}
END_TEST

START_TEST(window_is_bounded)
{
	static uint8_t b[512];
	struct ferry_error err = { 0 };
	struct server s;
	struct nbd_client *c;
	struct replies r;
	uint64_t cookie;
	uint32_t e;
	int fails = 0;

	fill(b, sizeof(b), 2);
	start(&s, EXPORT_BYTES, false);
	c = connect_ok(s.d.path);
	for (uint32_t i = 0; i < NBD_CLIENT_INFLIGHT_MAX; i++) {
		memcpy(s.model + i * 512, b, 512);
		if (nbd_client_write(c, i, b, 512, i * 512, &err) < 0)
			fails++;
	}
	ck_assert_msg(fails == 0, "write: %s", err.msg);
	ck_assert_uint_eq(nbd_client_inflight(c), NBD_CLIENT_INFLIGHT_MAX);
	ck_assert_int_eq(nbd_client_write(c, 999, b, 512, 0, &err), -EBUSY);
	ck_assert_int_eq(nbd_client_flush(c, 999, &err), -EBUSY);
	ck_assert_int_eq(nbd_client_reply(c, &cookie, &e, TIMEOUT_MS, &err), 0);
	ck_assert_uint_eq(e, 0);
	ck_assert_uint_lt(cookie, NBD_CLIENT_INFLIGHT_MAX);
	ck_assert_uint_eq(nbd_client_inflight(c), NBD_CLIENT_INFLIGHT_MAX - 1);
	/* a cookie still in flight cannot be reused; the one back can */
	ck_assert_int_eq(nbd_client_write(c, cookie ? 0 : 1, b, 512, 0, &err),
			 -EEXIST);
	ck_assert_int_eq(nbd_client_write(c, cookie, b, 512, 0, &err), 0);
	collect(c, NBD_CLIENT_INFLIGHT_MAX, &r);
	assert_all_ok(&r, NBD_CLIENT_INFLIGHT_MAX);
	ck_assert_int_eq(nbd_client_reply(c, &cookie, &e, TIMEOUT_MS, &err),
			 -EINVAL);
	nbd_client_close(c);
	ck_assert_int_eq(finish(&s), 0);
}
END_TEST

/* A request the server fails comes back with its NBD error; the
 * connection goes on. */
START_TEST(error_reply_keeps_connection)
{
	static uint8_t b[4096];
	struct ferry_error err = { 0 };
	struct server s;
	struct nbd_client *c;
	struct replies r;

	fill(b, sizeof(b), 3);
	prepare(&s, EXPORT_BYTES, false);
	s.fail_from = 3 * MiB;
	run(&s);
	c = connect_ok(s.d.path);
	ck_assert_int_eq(nbd_client_write(c, 1, b, sizeof(b), 3 * MiB, &err), 0);
	ck_assert_int_eq(nbd_client_write(c, 2, b, sizeof(b), 0, &err), 0);
	memcpy(s.model, b, sizeof(b));
	collect(c, 2, &r);
	ck_assert_msg(r.rc == 0, "reply: %s", r.err.msg);
	ck_assert_uint_eq(r.ok, 1);
	ck_assert_uint_eq(r.failed, 1);
	ck_assert_uint_eq(r.last_errno, NBD_ENOSPC);
	nbd_client_close(c);
	ck_assert_int_eq(finish(&s), 0);
}
END_TEST

START_TEST(read_only_export)
{
	static uint8_t b[512];
	struct ferry_error err = { 0 };
	struct server s;
	struct nbd_client *c;
	uint64_t cookie;
	uint32_t e;

	start(&s, EXPORT_BYTES, true);
	c = connect_ok(s.d.path);
	ck_assert_uint_ne(nbd_client_flags(c) & NBD_FLAG_READ_ONLY, 0);
	ck_assert_int_eq(nbd_client_zero(c, 1, 512, 0, false, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "WRITE_ZEROES"), "%s", err.msg);
	ck_assert_int_eq(nbd_client_write(c, 2, b, 512, 0, &err), -EROFS);
	ck_assert_int_eq(nbd_client_flush(c, 3, &err), 0);
	ck_assert_int_eq(nbd_client_reply(c, &cookie, &e, TIMEOUT_MS, &err), 0);
	ck_assert_uint_eq(cookie, 3);
	ck_assert_uint_eq(e, 0);
	nbd_client_close(c);
	ck_assert_int_eq(finish(&s), 0);
	ck_assert_uint_eq(s.st.requests, 2);
}
END_TEST

/* One write of NBD_PAYLOAD_MAX, unaligned; one byte more is refused. */
START_TEST(largest_write)
{
	const uint64_t size = NBD_PAYLOAD_MAX + 16 * MiB;
	struct ferry_error err = { 0 };
	uint8_t *b = malloc(NBD_PAYLOAD_MAX + 1);
	struct server s;
	struct nbd_client *c;
	struct replies r;

	ck_assert_ptr_nonnull(b);
	fill(b, NBD_PAYLOAD_MAX + 1, 4);
	start(&s, size, false);
	c = connect_ok(s.d.path);
	ck_assert_int_eq(nbd_client_write(c, 1, b, NBD_PAYLOAD_MAX + 1, 0, &err),
			 -EINVAL);
	ck_assert_int_eq(nbd_client_write(c, 2, b, NBD_PAYLOAD_MAX, 8 * MiB + 1,
					  &err), 0);
	memcpy(s.model + 8 * MiB + 1, b, NBD_PAYLOAD_MAX);
	collect(c, 1, &r);
	assert_all_ok(&r, 1);
	nbd_client_close(c);
	ck_assert_int_eq(finish(&s), 0);
	free(b);
}
END_TEST

START_TEST(unknown_export)
{
	struct ferry_error err = { 0 };
	/* (not NULL, to see the failure clear it) */
	struct nbd_client *c = (struct nbd_client *)&err;
	struct server s;

	start(&s, EXPORT_BYTES, false);
	ck_assert_int_eq(nbd_client_connect(&c, s.d.path, "disk9", TIMEOUT_MS,
					    &err), -ENOENT);
	ck_assert_ptr_null(c);
	ck_assert_msg(strstr(err.msg, "'disk9'") &&
		      strstr(err.msg, "unknown export") &&
		      strstr(err.msg, "no such export"), "%s", err.msg);
	/* the client said goodbye with NBD_OPT_ABORT */
	ck_assert_int_eq(finish(&s), -ECONNABORTED);
}
END_TEST

START_TEST(connect_refusals)
{
	struct ferry_error err = { 0 };
	struct nbd_client *c;
	struct sock_dir d;
	char name[NBD_CLIENT_NAME_MAX + 2], path[200];

	sock_dir_make(&d);
	sock_dir_remove(&d);
	ck_assert_int_eq(nbd_client_connect(&c, d.path, "disk0", TIMEOUT_MS,
					    &err), -ENOENT);
	ck_assert_msg(strstr(err.msg, d.path), "%s", err.msg);
	memset(path, 'p', sizeof(path) - 1);
	path[sizeof(path) - 1] = '\0';
	ck_assert_int_eq(nbd_client_connect(&c, path, "disk0", TIMEOUT_MS, &err),
			 -ENAMETOOLONG);
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	ck_assert_int_eq(nbd_client_connect(&c, "/nonexistent", name, TIMEOUT_MS,
					    &err), -ENAMETOOLONG);
	nbd_client_close(NULL);
}
END_TEST

/* ---- scripted servers, each wrong in one way ---- */

enum script {
	SCRIPT_GARBAGE,		/* an HTTP answer for a greeting */
	SCRIPT_OLDSTYLE,	/* the oldstyle greeting */
	SCRIPT_SILENT,		/* accepts, says nothing */
	SCRIPT_ACK_ONLY,	/* ACK to GO without NBD_INFO_EXPORT */
	SCRIPT_SHORT_INFO,	/* NBD_INFO_EXPORT of 10 bytes */
	SCRIPT_HUGE_REPLY,	/* an option reply of 1 GiB */
	SCRIPT_POLICY,		/* NBD_REP_ERR_POLICY, unprintable message */
	/* the rest complete the handshake, then read one request */
	SCRIPT_BAD_MAGIC,	/* a reply with a bad magic */
	SCRIPT_UNKNOWN_COOKIE,	/* a reply to another cookie */
	SCRIPT_STRUCTURED,	/* a structured reply */
	SCRIPT_HANG_UP,		/* closes instead of replying */
	SCRIPT_NO_REPLY,	/* never replies */
	SCRIPT_SMALL_BLOCKS,	/* a 64 KiB maximum block, an unknown info */
};

struct script_server {
	struct sock_dir d;
	enum script script;
	uint32_t client_flags, opt;
	pthread_t t;
};






/* (server threads: no ck_assert; a short exchange fails the client) */
static bool xwrite(int fd, const void *p, size_t n)
{
	return send(fd, p, n, MSG_NOSIGNAL) == (ssize_t)n;
}

static bool xread(int fd, void *p, size_t n)
{
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	size_t got = 0;

	while (got < n) {
		ssize_t r;

		if (poll(&pf, 1, TIMEOUT_MS) != 1)
			return false;
		r = read(fd, (uint8_t *)p + got, n - got);
		if (r <= 0)
			return false;
		got += (size_t)r;
	}
	return true;
}

/* Until the client hangs up (or TIMEOUT_MS of silence). */
static void wait_eof(int fd)
{
	uint8_t b[4096];

	while (xread(fd, b, 1))
		;
}

static bool opt_reply(int fd, uint32_t opt, uint32_t type, const void *d,
		      uint32_t len, uint32_t claimed_len)
{
	uint8_t h[20];

	be_put64(h, NBD_REP_MAGIC);
	be_put32(h + 8, opt);
	be_put32(h + 12, type);
	be_put32(h + 16, claimed_len);
	return xwrite(fd, h, sizeof(h)) && (!len || xwrite(fd, d, len));
}

/* Greeting, flags, one option; then the script's answer to it. True
 * when the handshake completed. */
static bool script_handshake(struct script_server *s, int fd)
{
	uint8_t g[18], cf[4], oh[16], od[4096 + 16], info[12], bs[14];
	uint32_t len;

	be_put64(g, NBD_MAGIC);
	be_put64(g + 8, NBD_OPTS_MAGIC);
	be_put16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	if (!xwrite(fd, g, sizeof(g)) || !xread(fd, cf, sizeof(cf)) ||
	    !xread(fd, oh, sizeof(oh)))
		return false;
	s->client_flags = be_get32(cf);
	s->opt = be_get32(oh + 8);
	len = be_get32(oh + 12);
	if (len > sizeof(od) || !xread(fd, od, len))
		return false;
	be_put16(info, NBD_INFO_EXPORT);
	be_put64(info + 2, EXPORT_BYTES);
	be_put16(info + 10, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
			 NBD_FLAG_SEND_WRITE_ZEROES);
	switch (s->script) {
	case SCRIPT_ACK_ONLY:
		opt_reply(fd, s->opt, NBD_REP_ACK, NULL, 0, 0);
		return false;
	case SCRIPT_SHORT_INFO:
		opt_reply(fd, s->opt, NBD_REP_INFO, info, 10, 10);
		return false;
	case SCRIPT_HUGE_REPLY:
		opt_reply(fd, s->opt, NBD_REP_INFO, info, 12, 1u << 30);
		return false;
	case SCRIPT_POLICY:
		opt_reply(fd, s->opt, NBD_REP_ERR_POLICY, "go away\n\x01", 9, 9);
		return false;
	case SCRIPT_SMALL_BLOCKS:
		be_put16(bs, NBD_INFO_BLOCK_SIZE);
		be_put32(bs + 2, 1);
		be_put32(bs + 6, 4096);
		be_put32(bs + 10, 65536);
		/* an info type from the future, to be skipped */
		be_put16(od, 0x7777);
		return opt_reply(fd, s->opt, NBD_REP_INFO, bs, 14, 14) &&
		       opt_reply(fd, s->opt, NBD_REP_INFO, od, 40, 40) &&
		       opt_reply(fd, s->opt, NBD_REP_INFO, info, 12, 12) &&
		       opt_reply(fd, s->opt, NBD_REP_ACK, NULL, 0, 0);
	default:
		return opt_reply(fd, s->opt, NBD_REP_INFO, info, 12, 12) &&
		       opt_reply(fd, s->opt, NBD_REP_ACK, NULL, 0, 0);
	}
}

/* Read one request (and a write's payload); answer it the script's way. */
static void script_transmission(struct script_server *s, int fd)
{
	uint8_t h[NBD_REQUEST_BYTES], r[20], payload[4096];
	uint32_t left;
	uint64_t cookie;

	if (!xread(fd, h, sizeof(h)))
		return;
	left = h[7] == NBD_CMD_WRITE ? be_get32(h + 24) : 0;
	while (left) {
		uint32_t n = left < sizeof(payload) ? left : sizeof(payload);

		if (!xread(fd, payload, n))
			return;
		left -= n;
	}
	cookie = be_get64(h + 8);
	be_put32(r, NBD_SIMPLE_REPLY_MAGIC);
	be_put32(r + 4, 0);
	be_put64(r + 8, cookie);
	switch (s->script) {
	case SCRIPT_BAD_MAGIC:
		be_put32(r, 0xdeadbeef);
		xwrite(fd, r, NBD_REPLY_BYTES);
		break;
	case SCRIPT_UNKNOWN_COOKIE:
		be_put64(r + 8, cookie + 1);
		xwrite(fd, r, NBD_REPLY_BYTES);
		break;
	case SCRIPT_STRUCTURED:
		/* magic, flags DONE, type NONE, cookie, length 0 */
		be_put32(r, NBD_STRUCTURED_REPLY_MAGIC);
		be_put16(r + 4, 1);
		be_put16(r + 6, 0);
		be_put64(r + 8, cookie);
		be_put32(r + 16, 0);
		xwrite(fd, r, 20);
		break;
	case SCRIPT_HANG_UP:
		shutdown(fd, SHUT_RDWR);
		break;
	case SCRIPT_SMALL_BLOCKS:
		xwrite(fd, r, NBD_REPLY_BYTES);
		break;
	default:
		break;
	}
}

static void *script_main(void *arg)
{
	static const char http[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
	struct script_server *s = arg;
	int fd = accept_one(&s->d);
	uint8_t old[152] = { 0 };

	if (fd < 0)
		return NULL;
	switch (s->script) {
	case SCRIPT_GARBAGE:
		xwrite(fd, http, sizeof(http) - 1);
		break;
	case SCRIPT_OLDSTYLE:
		be_put64(old, NBD_MAGIC);
		be_put64(old + 8, NBD_OLDSTYLE_MAGIC);
		be_put64(old + 16, EXPORT_BYTES);
		xwrite(fd, old, sizeof(old));
		break;
	case SCRIPT_SILENT:
		break;
	default:
		if (script_handshake(s, fd) && s->script >= SCRIPT_BAD_MAGIC)
			script_transmission(s, fd);
		break;
	}
	if (s->script != SCRIPT_HANG_UP)
		wait_eof(fd);
	close(fd);
	return NULL;
}

static void script_start(struct script_server *s, enum script script)
{
	memset(s, 0, sizeof(*s));
	s->script = script;
	sock_listen(&s->d);
	ck_assert_int_eq(pthread_create(&s->t, NULL, script_main, s), 0);
}

static void script_finish(struct script_server *s)
{
	pthread_join(s->t, NULL);
}

static const struct {
	enum script script;
	int code;
	const char *phrase;
} handshake_cases[] = {
	{ SCRIPT_GARBAGE, -EPROTO, "is not an NBD server" },
	{ SCRIPT_OLDSTYLE, -EPROTONOSUPPORT, "oldstyle" },
	{ SCRIPT_ACK_ONLY, -EPROTO, "without NBD_INFO_EXPORT" },
	{ SCRIPT_SHORT_INFO, -EPROTO, "NBD_INFO_EXPORT of 10 bytes" },
	{ SCRIPT_HUGE_REPLY, -EMSGSIZE, "carries 1073741824 bytes" },
	{ SCRIPT_POLICY, -EACCES, "refused by policy (0x80000002): go away??" },
};

START_TEST(bad_handshake)
{
	struct ferry_error err = { 0 };
	/* (not NULL, to see the failure clear it) */
	struct nbd_client *c = (struct nbd_client *)&err;
	struct script_server s;
	int rc;

	script_start(&s, handshake_cases[_i].script);
	rc = nbd_client_connect(&c, s.d.path, "disk0", TIMEOUT_MS, &err);
	script_finish(&s);
	ck_assert_msg(rc == handshake_cases[_i].code, "got %d: %s", rc, err.msg);
	ck_assert_msg(strstr(err.msg, handshake_cases[_i].phrase), "%s", err.msg);
	ck_assert_ptr_null(c);
}
END_TEST

START_TEST(handshake_timeout)
{
	struct ferry_error err = { 0 };
	struct script_server s;
	struct nbd_client *c;
	uint64_t t0;
	int rc;

	script_start(&s, SCRIPT_SILENT);
	t0 = ferry_now_ms();
	rc = nbd_client_connect(&c, s.d.path, "disk0", 300, &err);
	t0 = ferry_now_ms() - t0;
	script_finish(&s);
	ck_assert_msg(rc == -ETIMEDOUT, "got %d: %s", rc, err.msg);
	ck_assert_msg(strstr(err.msg, "within 300 ms"), "%s", err.msg);
	ck_assert_uint_ge(t0, 290);
	ck_assert_uint_lt(t0, 3000);
}
END_TEST

static const struct {
	enum script script;
	int code;
	const char *phrase;
} reply_cases[] = {
	{ SCRIPT_BAD_MAGIC, -EPROTO, "bad magic 0xdeadbeef" },
	{ SCRIPT_UNKNOWN_COOKIE, -EPROTO, "cookie 8, which is not in flight" },
	{ SCRIPT_STRUCTURED, -EPROTO, "structured reply" },
	{ SCRIPT_HANG_UP, -ECONNRESET, "closed the connection" },
};

/* The bad reply fails the connection: later calls give the same error. */
START_TEST(bad_reply)
{
	static uint8_t b[512];
	struct ferry_error err = { 0 };
	struct script_server s;
	struct nbd_client *c;
	uint64_t cookie;
	uint32_t e;
	int rc;

	script_start(&s, reply_cases[_i].script);
	c = connect_ok(s.d.path);
	ck_assert_int_eq(nbd_client_write(c, 7, b, sizeof(b), 0, &err), 0);
	rc = nbd_client_reply(c, &cookie, &e, TIMEOUT_MS, &err);
	ck_assert_msg(rc == reply_cases[_i].code, "got %d: %s", rc, err.msg);
	ck_assert_msg(strstr(err.msg, reply_cases[_i].phrase), "%s", err.msg);
	ck_assert_int_eq(nbd_client_write(c, 8, b, sizeof(b), 0, &err), rc);
	ck_assert_msg(strstr(err.msg, "failed earlier") &&
		      strstr(err.msg, reply_cases[_i].phrase), "%s", err.msg);
	ck_assert_int_eq(nbd_client_reply(c, &cookie, &e, TIMEOUT_MS, &err), rc);
	nbd_client_close(c);
	script_finish(&s);
	ck_assert_uint_eq(s.client_flags,
			  NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	ck_assert_uint_eq(s.opt, NBD_OPT_GO);
}
END_TEST

/* A reply that does not come times out and leaves the connection up. */
START_TEST(reply_timeout_keeps_connection)
{
	static uint8_t b[512];
	struct ferry_error err = { 0 };
	struct script_server s;
	struct nbd_client *c;
	uint64_t cookie;
	uint32_t e;

	script_start(&s, SCRIPT_NO_REPLY);
	c = connect_ok(s.d.path);
	ck_assert_int_eq(nbd_client_write(c, 7, b, sizeof(b), 0, &err), 0);
	ck_assert_int_eq(nbd_client_reply(c, &cookie, &e, 100, &err), -ETIMEDOUT);
	ck_assert_msg(strstr(err.msg, "within 100 ms"), "%s", err.msg);
	ck_assert_uint_eq(nbd_client_inflight(c), 1);
	ck_assert_int_eq(nbd_client_flush(c, 8, &err), 0);
	ck_assert_uint_eq(nbd_client_inflight(c), 2);
	nbd_client_close(c);
	script_finish(&s);
}
END_TEST

/* The server's maximum block size, when below NBD_PAYLOAD_MAX, bounds
 * requests; an unknown info type is skipped. */
START_TEST(server_block_size_honoured)
{
	static uint8_t b[65537];
	struct ferry_error err = { 0 };
	struct script_server s;
	struct nbd_client *c;
	uint64_t cookie;
	uint32_t e;

	script_start(&s, SCRIPT_SMALL_BLOCKS);
	c = connect_ok(s.d.path);
	ck_assert_uint_eq(nbd_client_size(c), EXPORT_BYTES);
	ck_assert_int_eq(nbd_client_write(c, 1, b, 65537, 0, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "1 to 65536"), "%s", err.msg);
	ck_assert_int_eq(nbd_client_zero(c, 2, 65537, 0, true, &err), -EINVAL);
	ck_assert_int_eq(nbd_client_write(c, 3, b, 65536, 0, &err), 0);
	ck_assert_int_eq(nbd_client_reply(c, &cookie, &e, TIMEOUT_MS, &err), 0);
	ck_assert_uint_eq(cookie, 3);
	ck_assert_uint_eq(e, 0);
	nbd_client_close(c);
	script_finish(&s);
}
END_TEST

/* ---- QEMU's NBD server ---- */

#define QEMU_DISK_BYTES (8 * MiB)

/* Run @argv with output to @log_fd; the child dies with this process
 * (even when an assertion ends the test). */
static pid_t spawn(char *const argv[], int log_fd)
{
	pid_t parent = getpid();
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		dup2(null, 0);
		dup2(log_fd, 1);
		dup2(log_fd, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

static void stop(pid_t pid)
{
	kill(pid, SIGTERM);
	for (int i = 0; i < 500; i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/* Connect once QEMU listens (or it exited, or QEMU_START_MS passed). */
static int qemu_connect(struct nbd_client **c, const char *path, pid_t pid,
			struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + QEMU_START_MS;

	for (;;) {
		int rc = -ENOENT;

		if (access(path, F_OK) == 0)
			rc = nbd_client_connect(c, path, "disk0", TIMEOUT_MS, err);
		/* (the socket may exist a moment before it listens) */
		if (rc != -ENOENT && rc != -ECONNREFUSED)
			return rc;
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return ferry_error_set(err, -ECHILD, "QEMU exited");
		if (ferry_now_ms() > deadline)
			return ferry_error_set(err, -ETIMEDOUT, "QEMU did not "
					       "listen on %s", path);
		usleep(20000);
	}
}

enum qemu_kind { QEMU_NBD, QEMU_STORAGE_DAEMON };

/*
 * Pipelined writes at odd offsets, zeroes with and without a hole, then
 * (after their replies: a flush covers only completed writes) a flush;
 * the image compared with the model. An unknown export is refused.
 */
static void qemu_roundtrip(enum qemu_kind kind)
{
	enum { N = 16, STRIDE = 384 << 10, LEN_MAX = 70000 };
	static uint8_t buf[N][LEN_MAX];
	const char *bin = kind == QEMU_NBD ? "/usr/bin/qemu-nbd" :
			  "/usr/bin/qemu-storage-daemon";
	struct ferry_error err = { 0 }, err2 = { 0 };
	char img[160], sock_opt[200], file_opt[220], log[4096] = "";
	struct nbd_client *c = NULL, *c2 = NULL;
	struct sock_dir d;
	struct replies r;
	uint8_t *model;
	int file, log_fd, rc, rc2, fails = 0;
	uint64_t bad;
	pid_t pid;

	if (access(bin, X_OK) != 0) {
		fprintf(stderr, "test_nbd_client: %s not installed, QEMU test "
			"skipped\n", bin);
		return;
	}
	sock_dir_make(&d);
	snprintf(img, sizeof(img), "%s/disk.raw", d.dir);
	snprintf(sock_opt, sizeof(sock_opt), kind == QEMU_NBD ? "--socket=%s" :
		 "addr.type=unix,addr.path=%s", d.path);
	snprintf(file_opt, sizeof(file_opt),
		 "driver=file,node-name=file0,filename=%s", img);
	file = open(img, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(file, 0);
	fill_disk(file, QEMU_DISK_BYTES, &model);
	snprintf(log, sizeof(log), "%s/qemu.log", d.dir);
	log_fd = open(log, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(log_fd, 0);
	unlink(log);
	{
		char *nbd_argv[] = { (char *)bin, sock_opt, "--format=raw",
				     "--persistent", "--shared=4",
				     "--export-name=disk0", img, NULL };
		char *qsd_argv[] = { (char *)bin, "--blockdev", file_opt,
				     "--nbd-server", sock_opt, "--export",
				     "type=nbd,id=exp0,node-name=file0,name=disk0,"
				     "writable=on", NULL };

		pid = spawn(kind == QEMU_NBD ? nbd_argv : qsd_argv, log_fd);
	}
	rc = qemu_connect(&c, d.path, pid, &err);
	rc2 = rc ? 0 : nbd_client_connect(&c2, d.path, "nosuch", TIMEOUT_MS, &err2);
	/* QEMU has the image open: nothing on disk is needed any more */
	unlink(img);
	sock_dir_remove(&d);
	if (rc < 0) {
		memset(log, 0, sizeof(log));
		if (pread(log_fd, log, sizeof(log) - 1, 0) < 0)
			log[0] = '\0';
		stop(pid);
	}
	ck_assert_msg(rc == 0, "%s: %s; its output: %s", bin, err.msg, log);
	ck_assert_msg(rc2 == -ENOENT, "unknown export: %d: %s", rc2, err2.msg);
	ck_assert_msg(strstr(err2.msg, "nosuch"), "%s", err2.msg);
	ck_assert_uint_eq(nbd_client_size(c), QEMU_DISK_BYTES);
	ck_assert_uint_eq(nbd_client_flags(c) & (NBD_FLAG_HAS_FLAGS |
		NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_WRITE_ZEROES |
		NBD_FLAG_READ_ONLY), NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
		NBD_FLAG_SEND_WRITE_ZEROES);

	for (uint32_t i = 0; i < N; i++) {
		uint32_t len = 4096 * (i + 1) + 5 * i;
		uint64_t off = (uint64_t)i * STRIDE + 333 * i;

		fill(buf[i], len, i + 100);
		memcpy(model + off, buf[i], len);
		if (nbd_client_write(c, i, buf[i], len, off, &err) < 0)
			fails++;
	}
	ck_assert_msg(fails == 0, "write: %s", err.msg);
	/* a hole in the pattern, and zeroes past it (the file's tail) */
	ck_assert_int_eq(nbd_client_zero(c, N, 65536 + 1, 7 * MiB - 1, false,
					 &err), 0);
	ck_assert_int_eq(nbd_client_zero(c, N + 1, 3 * 65536, 3 * MiB + 4096,
					 true, &err), 0);
	memset(model + 7 * MiB - 1, 0, 65536 + 1);
	memset(model + 3 * MiB + 4096, 0, 3 * 65536);
	collect(c, N + 2, &r);
	assert_all_ok(&r, N + 2);
	ck_assert_int_eq(nbd_client_flush(c, N + 2, &err), 0);
	collect(c, 1, &r);
	assert_all_ok(&r, 1);
	nbd_client_close(c);
	bad = first_diff(file, model, QEMU_DISK_BYTES);
	stop(pid);
	ck_assert_msg(bad == UINT64_MAX, "image byte %llu is not what was "
		      "written", (unsigned long long)bad);
	/* QEMU complains of clients that vanish without NBD_OPT_ABORT or
	 * NBD_CMD_DISC ("option negotiation failed: ..."): none here */
	memset(log, 0, sizeof(log));
	ck_assert_int_ge(pread(log_fd, log, sizeof(log) - 1, 0), 0);
	ck_assert_msg(!strstr(log, "failed"), "%s said: %s", bin, log);
	close(file);
	close(log_fd);
	free(model);
}

START_TEST(qemu_nbd_roundtrip)
{
	qemu_roundtrip(QEMU_NBD);
}
END_TEST

START_TEST(qemu_storage_daemon_roundtrip)
{
	qemu_roundtrip(QEMU_STORAGE_DAEMON);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("nbd_client");
	TCase *tc = tcase_create("ferry_server");
	TCase *ts = tcase_create("scripted_server");
	TCase *tq = tcase_create("qemu");
	SRunner *sr;
	int failed;

	ferry_set_log(NULL, NULL, FERRY_LOG_ERROR);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, handshake_gets_size_and_flags);
	tcase_add_test(tc, pipelined_writes_then_flush);
	tcase_add_test(tc, zeroes_with_and_without_hole);
	tcase_add_test(tc, bad_requests_refused_before_sending);
	tcase_add_test(tc, window_is_bounded);
	tcase_add_test(tc, error_reply_keeps_connection);
	tcase_add_test(tc, read_only_export);
	tcase_add_test(tc, largest_write);
	tcase_add_test(tc, unknown_export);
	tcase_add_test(tc, connect_refusals);
	suite_add_tcase(su, tc);
	tcase_set_timeout(ts, 30);
	tcase_add_loop_test(ts, bad_handshake, 0,
			    (int)FERRY_ARRAY_SIZE(handshake_cases));
	tcase_add_test(ts, handshake_timeout);
	tcase_add_loop_test(ts, bad_reply, 0, (int)FERRY_ARRAY_SIZE(reply_cases));
	tcase_add_test(ts, reply_timeout_keeps_connection);
	tcase_add_test(ts, server_block_size_honoured);
	suite_add_tcase(su, ts);
	tcase_set_timeout(tq, 60);
	tcase_add_test(tq, qemu_nbd_roundtrip);
	tcase_add_test(tq, qemu_storage_daemon_roundtrip);
	suite_add_tcase(su, tq);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
