/*
 * Unit tests of the wire format and the io_uring relay, with real sockets
 * (TCP on loopback, socketpairs standing in for QEMU) and no QEMU.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/util.h"
#include "transport/net.h"
#include "transport/relay.h"
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
	{ 15, 0x80, -EPROTO, "unknown option bits" },
	{ 32, 0xff, -EPROTO, "outside" },		/* RAM far too large */
	{ 43, 0, -EPROTO, "stream 0 of 0" },
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

START_TEST(frame_checks)
{
	struct wire_frame_hdr h = { .type = WIRE_FRAME_DATA, .len = 100,
				    .raw_len = 100, .seq = 0 }, d;
	struct ferry_error err = { 0 };
	uint8_t buf[WIRE_FRAME_HDR_BYTES];
	uint64_t seq = 0;

	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, &seq, &d, &err), 0);
	ck_assert_uint_eq(seq, 1);

	/* Replaying the same frame is out of sequence. */
	ck_assert_int_eq(wire_frame_decode(buf, &seq, &d, &err), -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "out of sequence"));

	h.seq = 1;
	h.len = h.raw_len = WIRE_FRAME_PAYLOAD_MAX + 1;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, &seq, &d, &err), -EMSGSIZE);

	h.len = h.raw_len = 10;
	h.type = 77;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, &seq, &d, &err), -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "unknown type 77"));

	h.type = WIRE_FRAME_END;
	wire_frame_encode(&h, buf);
	ck_assert_int_eq(wire_frame_decode(buf, &seq, &d, &err), -EPROTO);
	ck_assert_ptr_nonnull(strstr(err.msg, "END frame"));
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

static uint8_t pattern(uint32_t seed, size_t i)
{
	uint32_t x = seed ^ (uint32_t)(i / 4093) * 2654435761u;

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

START_TEST(relay_end_to_end)
{
	struct xport_relay *src = NULL, *dst = NULL;
	struct ferry_error err = { 0 };
	int net[2], sq[2], dq[2];
	struct fake_qemu fsrc = { 0 }, fdst = { 0 };
	pthread_t ts, td;
	struct xport_stats st;

	tcp_pair(net);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sq), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, dq), 0);
	ck_assert_int_eq(xport_relay_start(&src, sq[1], net[0], XPORT_ROLE_SOURCE,
					   NULL, &err), 0);
	ck_assert_int_eq(xport_relay_start(&dst, dq[1], net[1], XPORT_ROLE_DEST,
					   NULL, &err), 0);
	/* Source QEMU: sends 48 MiB, then closes its write side. */
	fsrc.fd = sq[0];
	fsrc.write_len = 48u << 20;
	fsrc.write_seed = 1;
	fsrc.read_seed = 2;
	fdst.fd = dq[0];
	fdst.write_len = 300000;	/* the return path */
	fdst.write_seed = 2;
	fdst.read_seed = 1;
	fdst.close_after_read = true;
	pthread_create(&td, NULL, fake_qemu_run, &fdst);
	pthread_create(&ts, NULL, fake_writer, &fsrc);
	pthread_join(ts, NULL);
	shutdown(sq[0], SHUT_WR);
	fsrc.write_len = 0;
	fake_qemu_run(&fsrc);
	pthread_join(td, NULL);

	ck_assert_int_eq(xport_relay_wait(src, 5000, &err), 0);
	ck_assert_int_eq(xport_relay_wait(dst, 5000, &err), 0);
	ck_assert_uint_eq(fdst.read_len, 48u << 20);
	ck_assert(fdst.read_ok);
	ck_assert_uint_eq(fsrc.read_len, 300000);
	ck_assert(fsrc.read_ok);
	xport_relay_stats(src, &st);
	ck_assert_uint_eq(st.local_in_bytes, 48u << 20);
	ck_assert_uint_gt(st.wire_out_bytes, st.local_in_bytes);
	xport_relay_free(src);
	xport_relay_free(dst);
	close(sq[0]);
	close(dq[0]);
}
END_TEST

/*
 * A destination relay whose peer misbehaves: the relay must end with the
 * expected error and close the local socket, so QEMU sees the stream end.
 */
static void bad_peer(const void *bytes, size_t len, bool close_peer,
		     uint32_t idle_ms, int want, const char *phrase)
{
	struct xport_relay_opts opts = { .idle_timeout_ms = idle_ms };
	struct xport_relay *r = NULL;
	struct ferry_error err = { 0 };
	int net[2], q[2];
	char c;

	tcp_pair(net);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, q), 0);
	ck_assert_int_eq(xport_relay_start(&r, q[1], net[1], XPORT_ROLE_DEST,
					   &opts, &err), 0);
	if (len)
		ck_assert_int_eq(send(net[0], bytes, len, MSG_NOSIGNAL), (ssize_t)len);
	if (close_peer)
		shutdown(net[0], SHUT_WR);
	ck_assert_int_eq(xport_relay_wait(r, 10000, &err), want);
	ck_assert_msg(strstr(err.msg, phrase), "message '%s' lacks '%s'",
		      err.msg, phrase);
	/* The local QEMU side sees EOF: nothing half-delivered stays open. */
	ck_assert_int_eq(recv(q[0], &c, 1, 0), 0);
	xport_relay_free(r);
	close(q[0]);
	close(net[0]);
}

START_TEST(relay_garbage)
{
	const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

	bad_peer(junk, sizeof(junk) - 1, false, 0, -EPROTO, "bad frame from the peer: frame 5219517436174301197 has unknown type 12064");
}
END_TEST

START_TEST(relay_truncated)
{
	struct wire_frame_hdr h = { .type = WIRE_FRAME_DATA, .len = 1000,
				    .raw_len = 1000 };
	uint8_t buf[WIRE_FRAME_HDR_BYTES + 10] = { 0 };

	wire_frame_encode(&h, buf);
	bad_peer(buf, sizeof(buf), true, 0, -ECONNRESET, "before the end of the stream");
}
END_TEST

START_TEST(relay_wrong_direction)
{
	struct wire_frame_hdr h = { .type = WIRE_FRAME_RETURN, .len = 4,
				    .raw_len = 4 };
	uint8_t buf[WIRE_FRAME_HDR_BYTES + 4] = { 0 };

	wire_frame_encode(&h, buf);
	bad_peer(buf, sizeof(buf), false, 0, -EPROTO, "wrong direction");
}
END_TEST

START_TEST(relay_stall)
{
	uint64_t t0 = ferry_now_ms();

	bad_peer(NULL, 0, false, 300, -ETIMEDOUT, "stalled");
	ck_assert_uint_ge(ferry_now_ms() - t0, 300);
}
END_TEST

START_TEST(relay_cancel)
{
	struct xport_relay *r = NULL;
	struct ferry_error err = { 0 };
	int net[2], q[2];

	tcp_pair(net);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, q), 0);
	ck_assert_int_eq(xport_relay_start(&r, q[1], net[0], XPORT_ROLE_SOURCE,
					   NULL, &err), 0);
	ck_assert_int_eq(xport_relay_wait(r, 100, &err), -ETIMEDOUT);
	xport_relay_cancel(r);
	ck_assert_int_eq(xport_relay_wait(r, 5000, &err), -ECANCELED);
	xport_relay_free(r);
	close(q[0]);
	close(net[1]);
}
END_TEST

static Suite *transport_suite(void)
{
	Suite *s = suite_create("transport");
	TCase *wire = tcase_create("wire");
	TCase *relay = tcase_create("relay");

	tcase_add_test(wire, hello_roundtrip);
	tcase_add_loop_test(wire, hello_rejects, 0, FERRY_ARRAY_SIZE(hello_cases));
	tcase_add_test(wire, hello_rejects_empty_id);
	tcase_add_test(wire, frame_checks);
	tcase_add_test(wire, ctrl_checks);
	tcase_set_timeout(relay, 30);
	tcase_add_test(relay, relay_end_to_end);
	tcase_add_test(relay, relay_garbage);
	tcase_add_test(relay, relay_truncated);
	tcase_add_test(relay, relay_wrong_direction);
	tcase_add_test(relay, relay_stall);
	tcase_add_test(relay, relay_cancel);
	suite_add_tcase(s, wire);
	suite_add_tcase(s, relay);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(transport_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
