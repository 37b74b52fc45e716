/*
 * QMP client (see qmp.h).
 *
 * A buffered line reader over a stream socket: QEMU sends one JSON object
 * per line. Replies are matched by the id we put in each request; events
 * that arrive meanwhile go to a bounded FIFO. Every wait polls against a
 * deadline on the monotonic clock.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "qmp.h"

/* First read buffer; it grows by doubling up to QMP_LINE_MAX_BYTES. */
#define QMP_BUF_INITIAL (64u << 10)
/* Bound on waiting for QEMU to create its QMP socket. */
#define QMP_CONNECT_RETRY_MS 20

struct qmp {
	int fd;
	char *buf;
	size_t cap, len;	/* bytes buffered, not yet consumed */
	bool eof;
	uint64_t next_id;
	struct qmp_event events[QMP_EVENT_QUEUE_MAX];
	unsigned ev_head, ev_len;
	uint64_t dropped;
	struct qmp_error last;
};

static uint64_t deadline_of(int timeout_ms)
{
	return ferry_now_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
}

static int remaining_ms(uint64_t deadline)
{
	uint64_t now = ferry_now_ms();

	return now >= deadline ? 0 : (int)(deadline - now);
}

/* Read what the socket has; wait until @deadline for at least a byte. */
static int fill(struct qmp *q, uint64_t deadline, struct ferry_error *err)
{
	struct pollfd p = { .fd = q->fd, .events = POLLIN };
	ssize_t n;
	int rc;

	if (q->eof)
		return ferry_error_set(err, -ECONNRESET,
				       "QMP peer closed the connection");
	if (q->len == q->cap) {
		size_t ncap = q->cap * 2;
		char *nb;

		if (q->cap >= QMP_LINE_MAX_BYTES)
			return ferry_error_set(err, -EMSGSIZE,
				"QMP line longer than %u bytes", QMP_LINE_MAX_BYTES);
		if (ncap > QMP_LINE_MAX_BYTES)
			ncap = QMP_LINE_MAX_BYTES;
		nb = realloc(q->buf, ncap);
		if (!nb)
			return ferry_error_set(err, -ENOMEM, "QMP: out of memory");
		q->buf = nb;
		q->cap = ncap;
	}
	for (;;) {
		rc = poll(&p, 1, remaining_ms(deadline));
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return ferry_error_set(err, -errno, "QMP poll: %s", strerror(errno));
		if (rc == 0)
			return -ETIMEDOUT;
		break;
	}
	n = recv(q->fd, q->buf + q->len, q->cap - q->len, MSG_DONTWAIT);
	if (n == 0) {
		q->eof = true;
		return ferry_error_set(err, -ECONNRESET,
			"QMP peer closed the connection%s",
			q->len ? " in the middle of a message" : "");
	}
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return ferry_error_set(err, -errno, "QMP read: %s", strerror(errno));
	}
	q->len += (size_t)n;
	return 0;
}

/*
 * Take one complete line out of the buffer and parse it. Returns 1 with
 * *@out set, 0 when no complete line is buffered, or -errno.
 */
static int take_line(struct qmp *q, json_t **out, struct ferry_error *err)
{
	char *nl = memchr(q->buf, '\n', q->len);
	json_error_t jerr;
	size_t linelen;
	json_t *v;

	if (!nl) {
		if (q->len >= QMP_LINE_MAX_BYTES)
			return ferry_error_set(err, -EMSGSIZE,
				"QMP line longer than %u bytes", QMP_LINE_MAX_BYTES);
		return 0;
	}
	linelen = (size_t)(nl - q->buf);
	v = json_loadb(q->buf, linelen, 0, &jerr);
	if (!v || !json_is_object(v)) {
		int shown = linelen > 60 ? 60 : (int)linelen;

		ferry_error_set(err, -EPROTO, "QMP peer sent %s: %s ('%.*s')",
				v ? "a JSON value that is not an object" : "malformed JSON",
				v ? "" : jerr.text, shown, q->buf);
		json_decref(v);
		q->len -= linelen + 1;
		memmove(q->buf, nl + 1, q->len);
		return -EPROTO;
	}
	q->len -= linelen + 1;
	memmove(q->buf, nl + 1, q->len);
	*out = v;
	return 1;
}

/* Read one message, waiting until @deadline. */
static int read_msg(struct qmp *q, json_t **out, uint64_t deadline,
		    struct ferry_error *err)
{
	for (;;) {
		int rc = take_line(q, out, err);

		if (rc != 0)
			return rc < 0 ? rc : 0;
		rc = fill(q, deadline, err);
		if (rc < 0)
			return rc;
	}
}

static void queue_event(struct qmp *q, json_t *msg)
{
	json_t *ts = json_object_get(msg, "timestamp");
	struct qmp_event *ev;

	if (q->ev_len == QMP_EVENT_QUEUE_MAX) {
		qmp_event_clear(&q->events[q->ev_head]);
		q->ev_head = (q->ev_head + 1) % QMP_EVENT_QUEUE_MAX;
		q->ev_len--;
		q->dropped++;
	}
	ev = &q->events[(q->ev_head + q->ev_len) % QMP_EVENT_QUEUE_MAX];
	snprintf(ev->name, sizeof(ev->name), "%s",
		 json_string_value(json_object_get(msg, "event")));
	ev->data = json_incref(json_object_get(msg, "data"));
	ev->seconds = json_integer_value(json_object_get(ts, "seconds"));
	ev->microseconds = json_integer_value(json_object_get(ts, "microseconds"));
	q->ev_len++;
}

static bool is_event(json_t *msg)
{
	return json_is_string(json_object_get(msg, "event"));
}

static int send_all(struct qmp *q, const char *data, size_t len, int fd,
		    struct ferry_error *err)
{
	size_t off = 0;

	while (off < len) {
		struct iovec iov = { .iov_base = (char *)data + off, .iov_len = len - off };
		union {
			char buf[CMSG_SPACE(sizeof(int))];
			struct cmsghdr align;
		} u;
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;

		/* QEMU takes the fd with the first bytes of the command. */
		if (fd >= 0 && off == 0) {
			struct cmsghdr *c;

			memset(&u, 0, sizeof(u));
			mh.msg_control = u.buf;
			mh.msg_controllen = sizeof(u.buf);
			c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &fd, sizeof(int));
		}
		n = sendmsg(q->fd, &mh, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ferry_error_set(err, -errno, "QMP write: %s", strerror(errno));
		}
		off += (size_t)n;
	}
	return 0;
}

static int reply_error(struct qmp *q, const char *cmd, json_t *e,
		       struct ferry_error *err)
{
	snprintf(q->last.cls, sizeof(q->last.cls), "%s",
		 json_is_string(json_object_get(e, "class")) ?
		 json_string_value(json_object_get(e, "class")) : "?");
	snprintf(q->last.desc, sizeof(q->last.desc), "%s",
		 json_is_string(json_object_get(e, "desc")) ?
		 json_string_value(json_object_get(e, "desc")) : "(no description)");
	return ferry_error_set(err, -EREMOTEIO, "QMP %s failed: %s: %s", cmd,
			       q->last.cls, q->last.desc);
}

static int execute(struct qmp *q, const char *cmd, json_t *args, int fd,
		   json_t **ret, int timeout_ms, struct ferry_error *err)
{
	uint64_t deadline = deadline_of(timeout_ms);
	uint64_t id = ++q->next_id;
	json_t *req, *msg = NULL;
	char *text;
	int rc;

	req = json_pack("{s:s,s:I}", "execute", cmd, "id", (json_int_t)id);
	if (!req) {
		json_decref(args);
		return ferry_error_set(err, -ENOMEM, "QMP: cannot build %s", cmd);
	}
	if (args)
		json_object_set_new(req, "arguments", args);
	text = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!text)
		return ferry_error_set(err, -ENOMEM, "QMP: cannot encode %s", cmd);
	{
		size_t len = strlen(text);

		text[len] = '\n';	/* the NUL becomes the line end */
		rc = send_all(q, text, len + 1, fd, err);
	}
	free(text);
	if (rc < 0)
		return rc;
	for (;;) {
		json_t *rid, *e;

		rc = read_msg(q, &msg, deadline, err);
		if (rc == -ETIMEDOUT)
			return ferry_error_set(err, rc,
				"QMP %s: no reply within %d ms", cmd, timeout_ms);
		if (rc == -ECONNRESET)
			return ferry_error_set(err, rc,
				"QMP peer closed the connection while waiting for the reply to %s",
				cmd);
		if (rc < 0)
			return rc;
		if (is_event(msg)) {
			queue_event(q, msg);
			json_decref(msg);
			continue;
		}
		rid = json_object_get(msg, "id");
		if (!json_is_integer(rid) || (uint64_t)json_integer_value(rid) != id) {
			json_decref(msg);
			return ferry_error_set(err, -EPROTO,
				"QMP reply with an unknown id while waiting for %s", cmd);
		}
		e = json_object_get(msg, "error");
		if (e) {
			rc = reply_error(q, cmd, e, err);
			json_decref(msg);
			return rc;
		}
		if (!json_object_get(msg, "return")) {
			json_decref(msg);
			return ferry_error_set(err, -EPROTO,
				"QMP reply to %s has neither return nor error", cmd);
		}
		if (ret)
			*ret = json_incref(json_object_get(msg, "return"));
		json_decref(msg);
		return 0;
	}
}

int qmp_execute(struct qmp *q, const char *cmd, json_t *args, json_t **ret,
		int timeout_ms, struct ferry_error *err)
{
	return execute(q, cmd, args, -1, ret, timeout_ms, err);
}

int qmp_execute_fd(struct qmp *q, const char *cmd, json_t *args, int fd,
		   json_t **ret, int timeout_ms, struct ferry_error *err)
{
	return execute(q, cmd, args, fd, ret, timeout_ms, err);
}

int qmp_getfd(struct qmp *q, int fd, const char *fdname, int timeout_ms,
	      struct ferry_error *err)
{
	return execute(q, "getfd", json_pack("{s:s}", "fdname", fdname), fd,
		       NULL, timeout_ms, err);
}

int qmp_add_fd(struct qmp *q, int fd, int fdset_id, int64_t *fdset_out,
	       int timeout_ms, struct ferry_error *err)
{
	json_t *args = fdset_id >= 0 ? json_pack("{s:i}", "fdset-id", fdset_id)
				     : json_object();
	json_t *ret = NULL;
	int rc;

	rc = execute(q, "add-fd", args, fd, &ret, timeout_ms, err);
	if (rc < 0)
		return rc;
	if (!json_is_integer(json_object_get(ret, "fdset-id"))) {
		json_decref(ret);
		return ferry_error_set(err, -EPROTO, "add-fd reply has no fdset-id");
	}
	if (fdset_out)
		*fdset_out = json_integer_value(json_object_get(ret, "fdset-id"));
	json_decref(ret);
	return 0;
}

static int greet(struct qmp *q, int timeout_ms, struct ferry_error *err)
{
	json_t *msg = NULL;
	int rc;

	rc = read_msg(q, &msg, deadline_of(timeout_ms), err);
	if (rc == -ETIMEDOUT)
		return ferry_error_set(err, rc, "no QMP greeting within %d ms", timeout_ms);
	if (rc < 0)
		return rc;
	if (!json_is_object(json_object_get(msg, "QMP"))) {
		json_decref(msg);
		return ferry_error_set(err, -EPROTO,
				       "peer is not QMP: its greeting has no QMP object");
	}
	json_decref(msg);
	return qmp_execute(q, "qmp_capabilities", NULL, NULL, timeout_ms, err);
}

struct qmp *qmp_open_fd(int fd, int timeout_ms, struct ferry_error *err)
{
	struct qmp *q = calloc(1, sizeof(*q));

	if (!q)
		goto err_close;
	q->buf = malloc(QMP_BUF_INITIAL);
	if (!q->buf)
		goto err_free;
	q->cap = QMP_BUF_INITIAL;
	q->fd = fd;
	if (greet(q, timeout_ms, err) < 0) {
		qmp_close(q);
		return NULL;
	}
	return q;

err_free:
	free(q);
err_close:
	close(fd);
	ferry_error_set(err, -ENOMEM, "QMP: out of memory");
	return NULL;
}

struct qmp *qmp_connect(const char *path, int timeout_ms, struct ferry_error *err)
{
	uint64_t deadline = deadline_of(timeout_ms);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		ferry_error_set(err, -ENAMETOOLONG, "QMP socket path too long: %s", path);
		return NULL;
	}
	strcpy(sa.sun_path, path);
	for (;;) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			ferry_error_set(err, -errno, "socket: %s", strerror(errno));
			return NULL;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		close(fd);
		/* QEMU may still be creating the socket; retry until the deadline. */
		if ((errno != ENOENT && errno != ECONNREFUSED) || ferry_now_ms() >= deadline) {
			ferry_error_set(err, -errno, "cannot connect to QMP socket %s: %s",
					path, strerror(errno));
			return NULL;
		}
		usleep(QMP_CONNECT_RETRY_MS * 1000);
	}
	return qmp_open_fd(fd, remaining_ms(deadline), err);
}

void qmp_close(struct qmp *q)
{
	if (!q)
		return;
	while (q->ev_len) {
		qmp_event_clear(&q->events[q->ev_head]);
		q->ev_head = (q->ev_head + 1) % QMP_EVENT_QUEUE_MAX;
		q->ev_len--;
	}
	close(q->fd);
	free(q->buf);
	free(q);
}

int qmp_fd(const struct qmp *q)
{
	return q->fd;
}

/*
 * Queue the events among the complete lines already buffered. Outside a
 * command, a non-event message has nobody waiting for it: it is dropped.
 */
static int queue_buffered(struct qmp *q, struct ferry_error *err)
{
	json_t *msg = NULL;
	int rc;

	while ((rc = take_line(q, &msg, err)) == 1) {
		if (is_event(msg))
			queue_event(q, msg);
		json_decref(msg);
	}
	return rc;
}

/* Queue every complete message already buffered or readable now. */
int qmp_pump(struct qmp *q, struct ferry_error *err)
{
	for (;;) {
		int rc = queue_buffered(q, err);

		if (rc < 0)
			return rc;
		rc = fill(q, ferry_now_ms(), err);
		if (rc == -ETIMEDOUT)
			return (int)q->ev_len;
		if (rc < 0)
			return rc;
	}
}

static bool take_queued(struct qmp *q, const char *name, struct qmp_event *ev)
{
	for (unsigned i = 0; i < q->ev_len; i++) {
		unsigned at = (q->ev_head + i) % QMP_EVENT_QUEUE_MAX;

		if (name && strcmp(q->events[at].name, name) != 0)
			continue;
		*ev = q->events[at];
		/* Close the gap, keeping the others in order. */
		for (unsigned j = i; j + 1 < q->ev_len; j++)
			q->events[(q->ev_head + j) % QMP_EVENT_QUEUE_MAX] =
				q->events[(q->ev_head + j + 1) % QMP_EVENT_QUEUE_MAX];
		q->ev_len--;
		return true;
	}
	return false;
}

int qmp_wait_event(struct qmp *q, const char *name, struct qmp_event *ev,
		   int timeout_ms, struct ferry_error *err)
{
	uint64_t deadline = deadline_of(timeout_ms);

	for (;;) {
		int rc = queue_buffered(q, err);

		if (take_queued(q, name, ev))
			return 0;
		if (rc < 0)
			return rc;
		rc = fill(q, deadline, err);
		if (rc == -ETIMEDOUT)
			return ferry_error_set(err, rc, "no QMP event %s within %d ms",
					       name ? name : "(any)", timeout_ms);
		if (rc < 0)
			return rc;
	}
}

uint64_t qmp_events_dropped(const struct qmp *q)
{
	return q->dropped;
}

void qmp_event_clear(struct qmp_event *ev)
{
	json_decref(ev->data);
	ev->data = NULL;
}

const struct qmp_error *qmp_last_error(const struct qmp *q)
{
	return &q->last;
}

int qmp_query_status_string(struct qmp *q, const char *cmd, char *buf,
			    size_t len, int timeout_ms, struct ferry_error *err)
{
	json_t *ret = NULL, *s;
	int rc;

	rc = qmp_execute(q, cmd, NULL, &ret, timeout_ms, err);
	if (rc < 0)
		return rc;
	s = json_object_get(ret, "status");
	if (!json_is_string(s)) {
		json_decref(ret);
		return ferry_error_set(err, -EPROTO, "%s reply has no status string", cmd);
	}
	snprintf(buf, len, "%s", json_string_value(s));
	json_decref(ret);
	return 0;
}

int qmp_peer_pid(const struct qmp *q)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(q->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	return cred.pid > 0 ? cred.pid : -ESRCH;
}
