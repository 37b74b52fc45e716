/*
 * ferry's QMP client against a QEMU that sends the fuzz input: the
 * greeting, the reply to qmp_capabilities, then replies and events in any
 * order, then EOF. The client runs what the engine runs: the
 * capabilities negotiation (qmp_open_fd), a status query, add-fd's reply
 * parsing, a command with a return value, then waits for an event by
 * name, pumps, and drains the event queue. Request ids are 1, 2, ... in
 * that order, so a well-formed input answers {"return": {}, "id": 1}
 * first.
 *
 * Checks: the error convention on every call, the event queue's bound,
 * and what a caller relies on in an event (a NUL-terminated name).
 */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "peer.h"
#include "qmp/qmp.h"

/* Far longer than any wait here: the peer sends EOF after the input. */
#define FUZZ_QMP_TIMEOUT_MS 5000
/* Events taken off the queue per input, at most. */
#define FUZZ_QMP_EVENTS_MAX 64

static void check_event(const struct qmp_event *ev)
{
	FUZZ_CHECK(memchr(ev->name, '\0', sizeof(ev->name)) != NULL);
}

static void run_commands(struct qmp *q)
{
	struct ferry_error err = { 0 };
	char status[32];
	json_t *ret = NULL;
	int64_t fdset = -1;
	int rc;

	rc = qmp_query_status_string(q, "query-status", status, sizeof(status),
				     FUZZ_QMP_TIMEOUT_MS, &err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc == 0)
		FUZZ_CHECK(memchr(status, '\0', sizeof(status)) != NULL);
	err = (struct ferry_error){ 0 };
	/* No descriptor to pass: only the reply's parsing matters here. */
	rc = qmp_add_fd(q, -1, -1, &fdset, FUZZ_QMP_TIMEOUT_MS, &err);
	FUZZ_CHECK_ERR(rc, err);
	err = (struct ferry_error){ 0 };
	rc = qmp_execute(q, "query-migrate", NULL, &ret, FUZZ_QMP_TIMEOUT_MS,
			 &err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc == -EREMOTEIO) {
		const struct qmp_error *e = qmp_last_error(q);

		FUZZ_CHECK(memchr(e->cls, '\0', sizeof(e->cls)) != NULL);
		FUZZ_CHECK(memchr(e->desc, '\0', sizeof(e->desc)) != NULL);
	}
	json_decref(ret);
}

static void run_events(struct qmp *q)
{
	struct ferry_error err = { 0 };
	struct qmp_event ev = { 0 };
	int rc;

	rc = qmp_wait_event(q, "MIGRATION", &ev, FUZZ_QMP_TIMEOUT_MS, &err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc == 0) {
		FUZZ_CHECK(strcmp(ev.name, "MIGRATION") == 0);
		qmp_event_clear(&ev);
	}
	err = (struct ferry_error){ 0 };
	rc = qmp_pump(q, &err);
	FUZZ_CHECK(rc >= 0 || (err.code == rc && err.msg[0]));
	FUZZ_CHECK(rc <= QMP_EVENT_QUEUE_MAX);
	for (int i = 0; i < FUZZ_QMP_EVENTS_MAX; i++) {
		err = (struct ferry_error){ 0 };
		/* 0: only what is already here, as the engine polls. */
		rc = qmp_wait_event(q, NULL, &ev, 0, &err);
		FUZZ_CHECK_ERR(rc, err);
		if (rc < 0)
			break;
		check_event(&ev);
		qmp_event_clear(&ev);
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_quiet();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ferry_error err = { 0 };
	struct fuzz_peer peer;
	struct qmp *q;

	/* qmp_open_fd owns the descriptor from here, also on failure. */
	q = qmp_open_fd(fuzz_peer_pair(&peer, data, size), FUZZ_QMP_TIMEOUT_MS,
			&err);
	if (q) {
		run_commands(q);
		run_events(q);
		qmp_close(q);
	} else {
		FUZZ_CHECK(err.code < 0 && err.msg[0]);
	}
	fuzz_peer_join(&peer);
	return 0;
}
