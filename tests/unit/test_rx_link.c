/*
 * The destination QEMU's late-connected main channel (engine/rx_link.c):
 * the head is seen before QEMU's socket exists, nothing is lost or
 * reordered once it does, and giving up wakes whoever waits.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/rx_link.h"

#define STREAM_BYTES (300u << 10)

struct writer {
	struct rx_link *l;
	const uint8_t *data;
	size_t len, chunk;
	int rc;
};

/* The tunnel's writer: the stream in chunks, as frames arrive. */
static void *write_main(void *arg)
{
	struct writer *w = arg;
	const struct tun_local *loc = rx_link_local(w->l);

	for (size_t off = 0; off < w->len && w->rc == 0; off += w->chunk) {
		size_t n = w->len - off < w->chunk ? w->len - off : w->chunk;

		w->rc = loc->write(loc->opaque, w->data + off, n);
	}
	return NULL;
}

static uint8_t *stream(void)
{
	uint8_t *d = malloc(STREAM_BYTES);

	ck_assert_ptr_nonnull(d);
	memcpy(d, "QEVM\0\0\0\3", 8);
	for (size_t i = 8; i < STREAM_BYTES; i++)
		d[i] = (uint8_t)(i * 131 + i / 977);
	return d;
}

/* Small first chunks (the head arrives in pieces), then the socket. */
START_TEST(head_then_socket)
{
	uint8_t *d = stream(), *got = malloc(STREAM_BYTES), head[8];
	struct writer w = { .data = d, .len = STREAM_BYTES, .chunk = 3 };
	size_t have = 0;
	pthread_t t;
	int sv[2];

	ck_assert_int_eq(rx_link_new(&w.l), 0);
	pthread_create(&t, NULL, write_main, &w);
	ck_assert_int_eq(rx_link_peek(w.l, head, sizeof(head), 5000, -1), 0);
	ck_assert_int_eq(memcmp(head, d, sizeof(head)), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	rx_link_set(w.l, sv[1]);
	while (have < STREAM_BYTES) {
		ssize_t n = read(sv[0], got + have, STREAM_BYTES - have);

		ck_assert_int_gt(n, 0);
		have += (size_t)n;
	}
	pthread_join(t, NULL);
	ck_assert_int_eq(w.rc, 0);
	ck_assert_int_eq(memcmp(got, d, STREAM_BYTES), 0);
	rx_link_free(w.l);
	close(sv[0]);
	free(d);
	free(got);
}
END_TEST

/* QEMU's return path: a read waits for the socket, then reads it. */
START_TEST(read_waits_for_the_socket)
{
	struct rx_link *l;
	const struct tun_local *loc;
	char buf[8];
	int sv[2];

	ck_assert_int_eq(rx_link_new(&l), 0);
	loc = rx_link_local(l);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(write(sv[0], "ack", 3), 3);
	rx_link_set(l, sv[1]);
	ck_assert_int_eq(loc->read(loc->opaque, buf, sizeof(buf)), 3);
	ck_assert_int_eq(memcmp(buf, "ack", 3), 0);
	rx_link_free(l);
	close(sv[0]);
}
END_TEST

/* Giving up before the socket: the waiting write fails, the head is not
 * whole, and the stream never reached anyone. */
START_TEST(close_wakes_the_writer)
{
	uint8_t *d = stream(), head[8];
	struct writer w = { .data = d, .len = STREAM_BYTES, .chunk = 4096 };
	pthread_t t;

	ck_assert_int_eq(rx_link_new(&w.l), 0);
	pthread_create(&t, NULL, write_main, &w);
	ck_assert_int_eq(rx_link_peek(w.l, head, sizeof(head), 5000, -1), 0);
	rx_link_close(w.l);
	pthread_join(t, NULL);
	ck_assert_int_eq(w.rc, -ECANCELED);
	/* Closed: a read fails at once too. */
	ck_assert_int_lt(rx_link_local(w.l)->read(w.l, head, 1), 0);
	rx_link_free(w.l);
	free(d);
}
END_TEST

START_TEST(peek_times_out_and_is_cancelled)
{
	struct rx_link *l;
	uint8_t head[8];
	int p[2];

	ck_assert_int_eq(rx_link_new(&l), 0);
	ck_assert_int_eq(rx_link_peek(l, head, sizeof(head), 100, -1), -ETIMEDOUT);
	ck_assert_int_eq(pipe(p), 0);
	ck_assert_int_eq(write(p[1], "x", 1), 1);
	ck_assert_int_eq(rx_link_peek(l, head, sizeof(head), 5000, p[0]),
			 -ECANCELED);
	rx_link_close(l);
	ck_assert_int_eq(rx_link_peek(l, head, sizeof(head), 5000, -1),
			 -ECONNRESET);
	rx_link_free(l);
	close(p[0]);
	close(p[1]);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("rx_link");
	TCase *tc = tcase_create("rx_link");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, head_then_socket);
	tcase_add_test(tc, read_waits_for_the_socket);
	tcase_add_test(tc, close_wakes_the_writer);
	tcase_add_test(tc, peek_times_out_and_is_cancelled);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
