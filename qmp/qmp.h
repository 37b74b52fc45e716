/*
 * QMP client: talks to one QEMU over its QMP unix socket.
 *
 * Built on jansson. One struct qmp per connection, used by one thread.
 * Every call that waits takes a timeout in milliseconds; nothing waits on
 * the peer without one. Everything the peer sends is validated where it is
 * read: a line longer than QMP_LINE_MAX_BYTES, malformed JSON, a reply whose
 * id we did not send, or a connection closed mid-reply is an error with a
 * message, never a crash.
 *
 * Return convention: 0 on success, a negative errno on failure with @err
 * filled:
 *   -ETIMEDOUT   the wait ran out
 *   -ECONNRESET  the peer closed the connection
 *   -EMSGSIZE    a line exceeded QMP_LINE_MAX_BYTES
 *   -EPROTO      the peer sent something that is not valid QMP
 *   -EREMOTEIO   QEMU answered the command with an error; the class and
 *                description are in qmp_last_error() and in err->msg
 *   -ENOBUFS     too many queued events (the oldest are dropped, counted)
 *   other        from the system (connect, sendmsg, ...)
 */
#ifndef FERRY_QMP_H
#define FERRY_QMP_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

#include "ferry.h"

/* Longest line accepted from QEMU. query-qmp-schema is ~200 KiB in 7.2. */
#define QMP_LINE_MAX_BYTES (4u << 20)
/* Events kept while nobody waits for them; older ones are dropped. */
#define QMP_EVENT_QUEUE_MAX 1024
/* Longest QMP event name kept. */
#define QMP_EVENT_NAME_MAX 64
#define QMP_ERROR_CLASS_MAX 64
#define QMP_ERROR_DESC_MAX 384
/* Default wait for a command reply or the greeting. */
#define QMP_DEFAULT_TIMEOUT_MS 10000

struct qmp;

/* The error QEMU returned for the last failed command. */
struct qmp_error {
	char cls[QMP_ERROR_CLASS_MAX];	/* e.g. "GenericError" */
	char desc[QMP_ERROR_DESC_MAX];	/* QEMU's description, verbatim */
};

/* One asynchronous event. */
struct qmp_event {
	char name[QMP_EVENT_NAME_MAX];
	json_t *data;		/* owned; may be NULL when QEMU sent none */
	int64_t seconds;	/* QEMU's timestamp */
	int64_t microseconds;
};

/*
 * Connect to the QMP unix socket at @path, read the greeting and negotiate
 * capabilities (qmp_capabilities). Returns NULL with @err filled.
 */
struct qmp *qmp_connect(const char *path, int timeout_ms,
			struct ferry_error *err);

/*
 * The same on a connected stream socket (a socketpair in the unit tests).
 * Takes ownership of @fd, also on failure.
 */
struct qmp *qmp_open_fd(int fd, int timeout_ms, struct ferry_error *err);

/* Close the connection and free queued events. NULL is allowed. */
void qmp_close(struct qmp *q);

/* The pid of the process at the other end (SO_PEERCRED), or -errno. */
int qmp_peer_pid(const struct qmp *q);

/* The socket, for poll(): readable means events (or EOF) may be waiting. */
int qmp_fd(const struct qmp *q);

/*
 * Run @cmd with @args (a JSON object, or NULL), wait for the reply that
 * carries this request's id, and store its "return" value in *@ret (a new
 * reference; @ret may be NULL). Steals the reference to @args, also on
 * failure, so json_pack() can be written inline. Events that arrive before
 * the reply are queued.
 */
int qmp_execute(struct qmp *q, const char *cmd, json_t *args, json_t **ret,
		int timeout_ms, struct ferry_error *err);

/*
 * As qmp_execute(), and pass @fd to QEMU with SCM_RIGHTS in the same
 * message (for "getfd" and "add-fd"). @fd stays owned by the caller.
 */
int qmp_execute_fd(struct qmp *q, const char *cmd, json_t *args, int fd,
		   json_t **ret, int timeout_ms, struct ferry_error *err);

/* getfd: hand @fd to QEMU under @fdname (then usable as "fd:@fdname"). */
int qmp_getfd(struct qmp *q, int fd, const char *fdname, int timeout_ms,
	      struct ferry_error *err);

/*
 * add-fd: add @fd to fd set @fdset_id (negative: let QEMU choose). On
 * success *@fdset_out (if not NULL) gets the set's id.
 */
int qmp_add_fd(struct qmp *q, int fd, int fdset_id, int64_t *fdset_out,
	       int timeout_ms, struct ferry_error *err);

/*
 * Wait until an event named @name (any event if @name is NULL) is queued
 * and move it into *@ev (caller frees with qmp_event_clear()). Queued
 * events are searched first; other events stay queued in order.
 * timeout_ms 0 means "only what is already readable, without blocking".
 */
int qmp_wait_event(struct qmp *q, const char *name, struct qmp_event *ev,
		   int timeout_ms, struct ferry_error *err);

/*
 * Read whatever is readable now without blocking and queue the events.
 * Returns the number of queued events (>= 0) or a negative errno (EOF is
 * -ECONNRESET).
 */
int qmp_pump(struct qmp *q, struct ferry_error *err);

/* Number of events dropped because the queue was full. */
uint64_t qmp_events_dropped(const struct qmp *q);

void qmp_event_clear(struct qmp_event *ev);

/* The class and description of the last error reply. */
const struct qmp_error *qmp_last_error(const struct qmp *q);

/*
 * Convenience: the string value of "status" in @cmd's reply object, e.g.
 * query-status -> "running", query-migrate -> "active". Copies at most
 * @len - 1 bytes. Returns -EPROTO when the reply has no such string.
 */
int qmp_query_status_string(struct qmp *q, const char *cmd, char *buf,
			    size_t len, int timeout_ms, struct ferry_error *err);

#endif /* FERRY_QMP_H */
