/*
 * ferry's NBD server against a scripted, sometimes malformed, client over
 * a socketpair, with a real file behind it: garbage before the handshake,
 * an unknown export, an option too large, requests out of range, too
 * long, of unknown type or flags, a bad request magic. Each gets an error
 * (or the connection closed) and leaves the file as it was; then the good
 * path: write, read back, write zeroes, trim, flush, disconnect.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/be.h"
#include "common/util.h"
#include "transport/nbd.h"

#define EXPORT_BYTES (4u << 20)

struct server {
	int sv[2];
	int file;
	struct nbd_export ex;
	struct nbd_stats st;
	struct ferry_error err;
	int rc;
	pthread_t t;
};

static void *server_main(void *arg)
{
	struct server *s = arg;

	s->rc = nbd_serve(s->sv[1], &s->ex, &s->st, &s->err);
	close(s->sv[1]);
	return NULL;
}

static uint8_t pat(uint64_t i)
{
	return (uint8_t)(i * 131 + (i >> 9));
}

static void start(struct server *s)
{
	char path[] = "/tmp/ferry-nbd-test.XXXXXX";
	uint8_t *buf = malloc(EXPORT_BYTES);

	memset(s, 0, sizeof(*s));
	/* The file lives as long as its descriptor: nothing to clean up. */
	s->file = mkostemp(path, O_CLOEXEC);
	ck_assert_int_ge(s->file, 0);
	unlink(path);
	for (uint32_t i = 0; i < EXPORT_BYTES; i++)
		buf[i] = pat(i);
	ck_assert_int_eq(pwrite(s->file, buf, EXPORT_BYTES, 0), EXPORT_BYTES);
	free(buf);
	s->ex.name = "disk0";
	s->ex.size = EXPORT_BYTES;
	nbd_backend_fd(&s->ex.be, &s->file);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s->sv), 0);
	pthread_create(&s->t, NULL, server_main, s);
}

/* Wait for the server; its result. The file must still hold the pattern
 * outside [@chg_off, @chg_off + @chg_len). */
static int finish(struct server *s, uint64_t chg_off, uint64_t chg_len)
{
	uint8_t *buf = malloc(EXPORT_BYTES);
	uint64_t bad = UINT64_MAX;

	close(s->sv[0]);
	pthread_join(s->t, NULL);
	ck_assert_int_eq(pread(s->file, buf, EXPORT_BYTES, 0), EXPORT_BYTES);
	for (uint32_t i = 0; i < EXPORT_BYTES; i++)
		if ((i < chg_off || i >= chg_off + chg_len) && buf[i] != pat(i)) {
			bad = i;
			break;
		}
	free(buf);
	/* (one assertion: libcheck records each one it passes) */
	ck_assert_msg(bad == UINT64_MAX, "byte %llu changed",
		      (unsigned long long)bad);
	close(s->file);
	return s->rc;
}




static void send_all(int fd, const void *p, size_t n)
{
	ck_assert_int_eq(write(fd, p, n), (ssize_t)n);
}

static void recv_all(int fd, void *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, (uint8_t *)p + got, n - got);

		ck_assert_int_gt(r, 0);
		got += (size_t)r;
	}
}

static void send_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
	uint8_t h[16];

	be_put64(h, NBD_OPTS_MAGIC);
	be_put32(h + 8, opt);
	be_put32(h + 12, len);
	send_all(fd, h, sizeof(h));
	if (len)
		send_all(fd, data, len);
}

/* One option reply; its type (its data skipped). */
static uint32_t recv_opt_reply(int fd)
{
	uint8_t h[20], skip[4096];
	uint32_t len;

	recv_all(fd, h, sizeof(h));
	len = be_get32(h + 16);
	ck_assert_uint_le(len, sizeof(skip));
	recv_all(fd, skip, len);
	return be_get32(h + 12);
}

/* The server's greeting, our flags. */
static void hello(int fd)
{
	uint8_t g[18], f[4];

	recv_all(fd, g, sizeof(g));
	be_put32(f, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	send_all(fd, f, sizeof(f));
}

/* NBD_OPT_GO for @name; the final reply type. */
static uint32_t go(int fd, const char *name)
{
	uint8_t d[64];
	uint32_t nl = (uint32_t)strlen(name), t;

	be_put32(d, nl);
	memcpy(d + 4, name, nl);
	d[4 + nl] = 0;
	d[5 + nl] = 0;		/* no info requests */
	send_opt(fd, NBD_OPT_GO, d, 6 + nl);
	while ((t = recv_opt_reply(fd)) == NBD_REP_INFO)
		;
	return t;
}

static void connect_ok(struct server *s)
{
	hello(s->sv[0]);
	ck_assert_uint_eq(go(s->sv[0], "disk0"), NBD_REP_ACK);
}

static void request(int fd, uint16_t type, uint16_t flags, uint64_t off,
		    uint32_t len)
{
	uint8_t h[NBD_REQUEST_BYTES];

	be_put32(h, NBD_REQUEST_MAGIC);
	h[4] = (uint8_t)(flags >> 8);
	h[5] = (uint8_t)flags;
	h[6] = (uint8_t)(type >> 8);
	h[7] = (uint8_t)type;
	be_put64(h + 8, 0x1234000000000000ull | type);
	be_put64(h + 16, off);
	be_put32(h + 24, len);
	send_all(fd, h, sizeof(h));
}

/* A simple reply's error. */
static uint32_t reply(int fd)
{
	uint8_t h[16];

	recv_all(fd, h, sizeof(h));
	ck_assert_uint_eq(be_get32(h), NBD_SIMPLE_REPLY_MAGIC);
	return be_get32(h + 4);
}

START_TEST(garbage_before_handshake)
{
	struct server s;
	uint8_t g[18];

	start(&s);
	recv_all(s.sv[0], g, sizeof(g));
	send_all(s.sv[0], "GET / HTTP/1.1\r\n", 16);
	ck_assert_int_eq(finish(&s, 0, 0), -EPROTO);
	ck_assert_msg(strstr(s.err.msg, "unknown flags"), "%s", s.err.msg);
}
END_TEST

START_TEST(unknown_export_then_abort)
{
	struct server s;

	start(&s);
	hello(s.sv[0]);
	ck_assert_uint_eq(go(s.sv[0], "disk9"), NBD_REP_ERR_UNKNOWN);
	send_opt(s.sv[0], NBD_OPT_ABORT, NULL, 0);
	ck_assert_uint_eq(recv_opt_reply(s.sv[0]), NBD_REP_ACK);
	ck_assert_int_eq(finish(&s, 0, 0), -ECONNABORTED);
}
END_TEST

START_TEST(option_too_big)
{
	struct server s;
	uint8_t h[16];

	start(&s);
	hello(s.sv[0]);
	be_put64(h, NBD_OPTS_MAGIC);
	be_put32(h + 8, NBD_OPT_GO);
	be_put32(h + 12, 1u << 30);
	send_all(s.sv[0], h, sizeof(h));
	ck_assert_uint_eq(recv_opt_reply(s.sv[0]), NBD_REP_ERR_TOO_BIG);
	ck_assert_int_eq(finish(&s, 0, 0), -EMSGSIZE);
}
END_TEST

/* Each refused request, then one good read to show the stream is in step. */
START_TEST(bad_requests_change_nothing)
{
	static uint8_t junk[8192];
	struct server s;
	uint8_t back[16];

	memset(junk, 0xee, sizeof(junk));
	start(&s);
	connect_ok(&s);
	/* a write running past the end */
	request(s.sv[0], NBD_CMD_WRITE, 0, EXPORT_BYTES - 100, 4096);
	send_all(s.sv[0], junk, 4096);
	ck_assert_uint_eq(reply(s.sv[0]), NBD_ENOSPC);
	/* a write starting past the end, offset near 2^64 */
	request(s.sv[0], NBD_CMD_WRITE, 0, ~0ull - 10, 512);
	send_all(s.sv[0], junk, 512);
	ck_assert_uint_eq(reply(s.sv[0]), NBD_ENOSPC);
	/* zeroes and trim out of range */
	request(s.sv[0], NBD_CMD_WRITE_ZEROES, 0, EXPORT_BYTES, 1);
	ck_assert_uint_eq(reply(s.sv[0]), NBD_ENOSPC);
	request(s.sv[0], NBD_CMD_TRIM, 0, 1, EXPORT_BYTES);
	ck_assert_uint_eq(reply(s.sv[0]), NBD_ENOSPC);
	/* a read longer than the maximum */
	request(s.sv[0], NBD_CMD_READ, 0, 0, NBD_PAYLOAD_MAX + 1);
	ck_assert_uint_eq(reply(s.sv[0]), NBD_EINVAL);
	/* an unknown command, and unknown flags on a write */
	request(s.sv[0], 42, 0, 0, 512);
	ck_assert_uint_eq(reply(s.sv[0]), NBD_EINVAL);
	request(s.sv[0], NBD_CMD_WRITE, 1u << 7, 0, 8192);
	send_all(s.sv[0], junk, 8192);
	ck_assert_uint_eq(reply(s.sv[0]), NBD_EINVAL);
	/* NO_HOLE means nothing to a write */
	request(s.sv[0], NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 16);
	send_all(s.sv[0], junk, 16);
	ck_assert_uint_eq(reply(s.sv[0]), NBD_EINVAL);
	/* still in step */
	request(s.sv[0], NBD_CMD_READ, 0, 1000, 16);
	ck_assert_uint_eq(reply(s.sv[0]), 0);
	recv_all(s.sv[0], back, sizeof(back));
	for (int i = 0; i < 16; i++)
		ck_assert_uint_eq(back[i], pat(1000 + (uint64_t)i));
	request(s.sv[0], NBD_CMD_DISC, 0, 0, 0);
	ck_assert_int_eq(finish(&s, 0, 0), 0);
	ck_assert_uint_eq(s.st.errors, 8);
	ck_assert_uint_eq(s.st.bytes_written, 0);
}
END_TEST

START_TEST(bad_request_magic)
{
	struct server s;
	uint8_t h[NBD_REQUEST_BYTES] = { 0xde, 0xad };

	start(&s);
	connect_ok(&s);
	send_all(s.sv[0], h, sizeof(h));
	ck_assert_int_eq(finish(&s, 0, 0), -EPROTO);
}
END_TEST

/* An oversized write cannot be skipped: the server hangs up. */
START_TEST(oversized_write_disconnects)
{
	struct server s;

	start(&s);
	connect_ok(&s);
	request(s.sv[0], NBD_CMD_WRITE, 0, 0, NBD_PAYLOAD_MAX + 4096);
	ck_assert_int_eq(finish(&s, 0, 0), -EMSGSIZE);
}
END_TEST

START_TEST(good_path)
{
	static uint8_t data[65536], back[65536];
	struct server s;
	uint8_t z[4096];

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(0xa5 ^ i);
	start(&s);
	connect_ok(&s);
	request(s.sv[0], NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 1 << 20, sizeof(data));
	send_all(s.sv[0], data, sizeof(data));
	ck_assert_uint_eq(reply(s.sv[0]), 0);
	request(s.sv[0], NBD_CMD_READ, 0, 1 << 20, sizeof(back));
	ck_assert_uint_eq(reply(s.sv[0]), 0);
	recv_all(s.sv[0], back, sizeof(back));
	ck_assert_int_eq(memcmp(data, back, sizeof(data)), 0);
	/* zeroes with and without NO_HOLE, a trim, a flush */
	request(s.sv[0], NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE, 1 << 20, 4096);
	ck_assert_uint_eq(reply(s.sv[0]), 0);
	request(s.sv[0], NBD_CMD_WRITE_ZEROES, 0, (1 << 20) + 4096, 4096);
	ck_assert_uint_eq(reply(s.sv[0]), 0);
	request(s.sv[0], NBD_CMD_READ, 0, 1 << 20, sizeof(z));
	ck_assert_uint_eq(reply(s.sv[0]), 0);
	recv_all(s.sv[0], z, sizeof(z));
	ck_assert_msg(z[0] == 0 && !memcmp(z, z + 1, sizeof(z) - 1),
		      "zeroed range reads back non-zero");
	request(s.sv[0], NBD_CMD_TRIM, 0, (2 << 20), 65536);
	ck_assert_uint_eq(reply(s.sv[0]), 0);
	request(s.sv[0], NBD_CMD_FLUSH, 0, 0, 0);
	ck_assert_uint_eq(reply(s.sv[0]), 0);
	request(s.sv[0], NBD_CMD_DISC, 0, 0, 0);
	/* the trimmed range may read back as anything: excluded, with the
	 * written one */
	ck_assert_int_eq(finish(&s, 1 << 20, (1 << 20) + 65536), 0);
	ck_assert_uint_eq(s.st.bytes_written, sizeof(data));
	ck_assert_uint_eq(s.st.bytes_zeroed, 8192);
	ck_assert_uint_eq(s.st.flushes, 1);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("nbd");
	TCase *tc = tcase_create("nbd");
	SRunner *sr;
	int failed;

	ferry_set_log(NULL, NULL, FERRY_LOG_ERROR);
	tcase_add_test(tc, garbage_before_handshake);
	tcase_add_test(tc, unknown_export_then_abort);
	tcase_add_test(tc, option_too_big);
	tcase_add_test(tc, bad_requests_change_nothing);
	tcase_add_test(tc, bad_request_magic);
	tcase_add_test(tc, oversized_write_disconnects);
	tcase_add_test(tc, good_path);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
