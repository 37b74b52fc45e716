/*
 * The QMP client against a scripted fake QEMU over a socketpair.
 *
 * The fake peer runs in a thread and plays a script: each step either
 * sends raw bytes, or reads one line from the client (and checks it names
 * the expected command), or closes. Replies echo the id the client sent,
 * because the client must match replies by id.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "qmp/qmp.h"

#define GREETING "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n"

enum step_kind { SEND, EXPECT, REPLY, CLOSE, PAUSE_MS, RECV_FD };

struct step {
	enum step_kind kind;
	const char *text;	/* SEND: bytes; EXPECT/REPLY: command name or
				   reply body with %ID% for the id */
	int ms;
};

struct peer {
	int fd;
	const struct step *script;
	char last_id[32];
	int got_fd;		/* RECV_FD: the fd received */
	pthread_t t;
};

static void peer_send(struct peer *p, const char *s)
{
	size_t len = strlen(s);

	if (send(p->fd, s, len, MSG_NOSIGNAL) != (ssize_t)len) {
		/* The client may have gone away: that is its test's business. */
	}
}

/* Read one line; remember its id. With fd passing, take the fd too. */
static void peer_read(struct peer *p, const char *cmd, bool want_fd)
{
	char line[4096];
	size_t n = 0;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;

	while (n < sizeof(line) - 1) {
		struct iovec iov = { .iov_base = line + n, .iov_len = 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = u.buf,
				     .msg_controllen = sizeof(u.buf) };
		struct cmsghdr *c;

		if (recvmsg(p->fd, &mh, 0) != 1)
			break;
		c = CMSG_FIRSTHDR(&mh);
		if (want_fd && c && c->cmsg_type == SCM_RIGHTS)
			memcpy(&p->got_fd, CMSG_DATA(c), sizeof(int));
		if (line[n++] == '\n')
			break;
	}
	line[n] = '\0';
	{
		json_t *v = json_loads(line, 0, NULL);
		json_t *id = json_object_get(v, "id");

		if (cmd && strcmp(json_string_value(json_object_get(v, "execute")), cmd) != 0)
			fprintf(stderr, "fake peer: expected %s, got %s", cmd, line);
		snprintf(p->last_id, sizeof(p->last_id), "%lld",
			 (long long)json_integer_value(id));
		json_decref(v);
	}
}

static void peer_reply(struct peer *p, const char *body)
{
	char out[8192];
	const char *at = strstr(body, "%ID%");

	if (at)
		snprintf(out, sizeof(out), "%.*s%s%s", (int)(at - body), body,
			 p->last_id, at + 4);
	else
		snprintf(out, sizeof(out), "%s", body);
	peer_send(p, out);
}

static void *peer_main(void *arg)
{
	struct peer *p = arg;

	for (const struct step *s = p->script;; s++) {
		switch (s->kind) {
		case SEND: peer_send(p, s->text); break;
		case EXPECT: peer_read(p, s->text, false); break;
		case RECV_FD: peer_read(p, s->text, true); break;
		case REPLY: peer_reply(p, s->text); break;
		case PAUSE_MS: usleep((useconds_t)s->ms * 1000); break;
		case CLOSE:
			shutdown(p->fd, SHUT_RDWR);
			return NULL;
		}
	}
}

/* Start a fake peer with @script; returns the client's end. */
static int peer_start(struct peer *p, const struct step *script)
{
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	memset(p, 0, sizeof(*p));
	p->fd = sv[1];
	p->script = script;
	p->got_fd = -1;
	pthread_create(&p->t, NULL, peer_main, p);
	return sv[0];
}

static void peer_join(struct peer *p)
{
	pthread_join(p->t, NULL);
	close(p->fd);
}

#define HANDSHAKE \
	{ SEND, GREETING, 0 }, { EXPECT, "qmp_capabilities", 0 }, \
	{ REPLY, "{\"return\": {}, \"id\": %ID%}\n", 0 }

static struct qmp *open_scripted(struct peer *p, const struct step *script)
{
	struct ferry_error err = { 0 };
	struct qmp *q = qmp_open_fd(peer_start(p, script), 2000, &err);

	ck_assert_msg(q, "open: %s", err.msg);
	return q;
}

START_TEST(execute_returns_value)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ EXPECT, "query-status", 0 },
		{ REPLY, "{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": %ID%}\r\n", 0 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = open_scripted(&p, script);
	char st[32];

	ck_assert_int_eq(qmp_query_status_string(q, "query-status", st, sizeof(st), 2000, &err), 0);
	ck_assert_str_eq(st, "running");
	qmp_close(q);
	peer_join(&p);
}
END_TEST

START_TEST(error_reply_is_structured)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ EXPECT, "migrate-incoming", 0 },
		{ REPLY, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"'-incoming' was not specified on the command line\"}, \"id\": %ID%}\n", 0 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = open_scripted(&p, script);

	ck_assert_int_eq(qmp_execute(q, "migrate-incoming",
				     json_pack("{s:s}", "uri", "fd:x"), NULL, 2000, &err),
			 -EREMOTEIO);
	ck_assert_str_eq(qmp_last_error(q)->cls, "GenericError");
	ck_assert_str_eq(qmp_last_error(q)->desc,
			 "'-incoming' was not specified on the command line");
	ck_assert_str_eq(err.msg, "QMP migrate-incoming failed: GenericError: "
			 "'-incoming' was not specified on the command line");
	qmp_close(q);
	peer_join(&p);
}
END_TEST

START_TEST(events_are_queued_in_order)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ EXPECT, "stop", 0 },
		{ SEND, "{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n", 0 },
		{ SEND, "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"setup\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 3}}\n", 0 },
		{ SEND, "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"active\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 4}}\n", 0 },
		{ REPLY, "{\"return\": {}, \"id\": %ID%}\n", 0 },
		{ PAUSE_MS, NULL, 100 },
		{ SEND, "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 2, \"microseconds\": 0}}\n", 0 },
		{ PAUSE_MS, NULL, 500 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct qmp_event ev;
	struct peer p;
	struct qmp *q = open_scripted(&p, script);

	ck_assert_int_eq(qmp_execute(q, "stop", NULL, NULL, 2000, &err), 0);
	/* By name, skipping STOP; the MIGRATION events come in order. */
	ck_assert_int_eq(qmp_wait_event(q, "MIGRATION", &ev, 0, &err), 0);
	ck_assert_str_eq(json_string_value(json_object_get(ev.data, "status")), "setup");
	qmp_event_clear(&ev);
	ck_assert_int_eq(qmp_wait_event(q, "MIGRATION", &ev, 0, &err), 0);
	ck_assert_str_eq(json_string_value(json_object_get(ev.data, "status")), "active");
	qmp_event_clear(&ev);
	ck_assert_int_eq(qmp_wait_event(q, NULL, &ev, 0, &err), 0);
	ck_assert_str_eq(ev.name, "STOP");
	ck_assert_int_eq(ev.microseconds, 2);
	qmp_event_clear(&ev);
	/* RESUME arrives later: the wait blocks for it. */
	ck_assert_int_eq(qmp_wait_event(q, "RESUME", &ev, 2000, &err), 0);
	qmp_event_clear(&ev);
	qmp_close(q);
	peer_join(&p);
}
END_TEST

START_TEST(wait_event_times_out)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ PAUSE_MS, NULL, 800 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct qmp_event ev;
	struct peer p;
	struct qmp *q = open_scripted(&p, script);
	uint64_t t0 = ferry_now_ms();

	ck_assert_int_eq(qmp_wait_event(q, "SHUTDOWN", &ev, 200, &err), -ETIMEDOUT);
	ck_assert_uint_ge(ferry_now_ms() - t0, 190);
	ck_assert_uint_lt(ferry_now_ms() - t0, 700);
	ck_assert_ptr_nonnull(strstr(err.msg, "SHUTDOWN"));
	qmp_close(q);
	peer_join(&p);
}
END_TEST

START_TEST(execute_times_out)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ EXPECT, "query-migrate", 0 },
		{ PAUSE_MS, NULL, 800 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = open_scripted(&p, script);

	ck_assert_int_eq(qmp_execute(q, "query-migrate", NULL, NULL, 200, &err), -ETIMEDOUT);
	ck_assert_str_eq(err.msg, "QMP query-migrate: no reply within 200 ms");
	qmp_close(q);
	peer_join(&p);
}
END_TEST

START_TEST(malformed_json)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ EXPECT, "query-status", 0 },
		{ SEND, "{\"return\": {\"status\": \n", 0 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = open_scripted(&p, script);

	ck_assert_int_eq(qmp_execute(q, "query-status", NULL, NULL, 2000, &err), -EPROTO);
	ck_assert_msg(strstr(err.msg, "malformed JSON"), "%s", err.msg);
	ck_assert_msg(strstr(err.msg, "{\"return\": {\"status\":"), "%s", err.msg);
	qmp_close(q);
	peer_join(&p);
}
END_TEST

/* A line that never ends: refused at the limit, without a huge buffer. */
static void *flood(void *arg)
{
	int fd = *(int *)arg;
	static char chunk[65536];

	memset(chunk, 'x', sizeof(chunk));
	send(fd, GREETING, strlen(GREETING), MSG_NOSIGNAL);
	{
		char buf[4096];
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		char reply[128];
		int id = 0;
		char *at = n > 0 ? strstr(buf, "\"id\":") : NULL;

		if (at)
			id = atoi(at + 5);
		snprintf(reply, sizeof(reply), "{\"return\": {}, \"id\": %d}\n", id);
		send(fd, reply, strlen(reply), MSG_NOSIGNAL);
		recv(fd, buf, sizeof(buf), 0);
	}
	send(fd, "{\"return\": \"", 12, MSG_NOSIGNAL);
	for (unsigned sent = 0; sent < QMP_LINE_MAX_BYTES + (1u << 20); sent += sizeof(chunk))
		if (send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL) < 0)
			break;
	return NULL;
}

START_TEST(line_too_long)
{
	struct ferry_error err = { 0 };
	struct qmp *q;
	pthread_t t;
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pthread_create(&t, NULL, flood, &sv[1]);
	q = qmp_open_fd(sv[0], 2000, &err);
	ck_assert_msg(q, "%s", err.msg);
	ck_assert_int_eq(qmp_execute(q, "query-qmp-schema", NULL, NULL, 10000, &err),
			 -EMSGSIZE);
	ck_assert_msg(strstr(err.msg, "longer than"), "%s", err.msg);
	qmp_close(q);
	pthread_join(t, NULL);
	close(sv[1]);
}
END_TEST

START_TEST(unknown_reply_id)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ EXPECT, "query-status", 0 },
		{ SEND, "{\"return\": {}, \"id\": 999999}\n", 0 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = open_scripted(&p, script);

	ck_assert_int_eq(qmp_execute(q, "query-status", NULL, NULL, 2000, &err), -EPROTO);
	ck_assert_str_eq(err.msg, "QMP reply with an unknown id while waiting for query-status");
	qmp_close(q);
	peer_join(&p);
}
END_TEST

START_TEST(close_mid_reply)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ EXPECT, "query-migrate", 0 },
		{ SEND, "{\"return\": {\"status\": \"act", 0 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = open_scripted(&p, script);

	ck_assert_int_eq(qmp_execute(q, "query-migrate", NULL, NULL, 2000, &err), -ECONNRESET);
	ck_assert_str_eq(err.msg,
		"QMP peer closed the connection while waiting for the reply to query-migrate");
	qmp_close(q);
	peer_join(&p);
}
END_TEST

START_TEST(bad_greeting)
{
	static const struct step script[] = {
		{ SEND, "{\"hello\": \"I am not QEMU\"}\n", 0 },
		{ PAUSE_MS, NULL, 100 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = qmp_open_fd(peer_start(&p, script), 2000, &err);

	ck_assert_ptr_null(q);
	ck_assert_int_eq(err.code, -EPROTO);
	ck_assert_str_eq(err.msg, "peer is not QMP: its greeting has no QMP object");
	peer_join(&p);
}
END_TEST

START_TEST(silent_peer_greeting_timeout)
{
	static const struct step script[] = {
		{ PAUSE_MS, NULL, 600 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = qmp_open_fd(peer_start(&p, script), 150, &err);

	ck_assert_ptr_null(q);
	ck_assert_int_eq(err.code, -ETIMEDOUT);
	ck_assert_str_eq(err.msg, "no QMP greeting within 150 ms");
	peer_join(&p);
}
END_TEST

START_TEST(fd_passing)
{
	static const struct step script[] = {
		HANDSHAKE,
		{ RECV_FD, "getfd", 0 },
		{ REPLY, "{\"return\": {}, \"id\": %ID%}\n", 0 },
		{ RECV_FD, "add-fd", 0 },
		{ REPLY, "{\"return\": {\"fdset-id\": 7, \"fd\": 12}, \"id\": %ID%}\n", 0 },
		{ CLOSE, NULL, 0 },
	};
	struct ferry_error err = { 0 };
	struct peer p;
	struct qmp *q = open_scripted(&p, script);
	int64_t set = -1;
	int sv[2];
	char c = 0;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(qmp_getfd(q, sv[0], "ferry-mig", 2000, &err), 0);
	/* The peer got a working descriptor for the same socket. */
	ck_assert_int_ge(p.got_fd, 0);
	ck_assert_int_eq(write(p.got_fd, "Z", 1), 1);
	ck_assert_int_eq(read(sv[1], &c, 1), 1);
	ck_assert_int_eq(c, 'Z');
	close(p.got_fd);
	ck_assert_int_eq(qmp_add_fd(q, sv[0], -1, &set, 2000, &err), 0);
	ck_assert_int_eq(set, 7);
	close(p.got_fd);
	qmp_close(q);
	peer_join(&p);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(event_overflow_drops_oldest)
{
	struct ferry_error err = { 0 };
	struct qmp_event ev;
	struct qmp *q;
	int sv[2];
	char line[128];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	/* Greeting and the capabilities reply (id 1) written up front. */
	send(sv[1], GREETING, strlen(GREETING), 0);
	send(sv[1], "{\"return\": {}, \"id\": 1}\n", 24, 0);
	q = qmp_open_fd(sv[0], 2000, &err);
	ck_assert_msg(q, "%s", err.msg);
	for (int i = 0; i < QMP_EVENT_QUEUE_MAX + 10; i++) {
		int n = snprintf(line, sizeof(line),
				 "{\"event\": \"E\", \"data\": {\"n\": %d}}\n", i);

		ck_assert_int_eq(send(sv[1], line, (size_t)n, 0), n);
		if (i % 64 == 63)
			qmp_pump(q, &err);
	}
	ck_assert_int_ge(qmp_pump(q, &err), 0);
	ck_assert_uint_eq(qmp_events_dropped(q), 10);
	ck_assert_int_eq(qmp_wait_event(q, "E", &ev, 0, &err), 0);
	ck_assert_int_eq(json_integer_value(json_object_get(ev.data, "n")), 10);
	qmp_event_clear(&ev);
	qmp_close(q);
	close(sv[1]);
}
END_TEST

static Suite *qmp_suite(void)
{
	Suite *s = suite_create("qmp");
	TCase *tc = tcase_create("fake-peer");

	tcase_set_timeout(tc, 20);
	tcase_add_test(tc, execute_returns_value);
	tcase_add_test(tc, error_reply_is_structured);
	tcase_add_test(tc, events_are_queued_in_order);
	tcase_add_test(tc, wait_event_times_out);
	tcase_add_test(tc, execute_times_out);
	tcase_add_test(tc, malformed_json);
	tcase_add_test(tc, line_too_long);
	tcase_add_test(tc, unknown_reply_id);
	tcase_add_test(tc, close_mid_reply);
	tcase_add_test(tc, bad_greeting);
	tcase_add_test(tc, silent_peer_greeting_timeout);
	tcase_add_test(tc, fd_passing);
	tcase_add_test(tc, event_overflow_drops_oldest);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(qmp_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
