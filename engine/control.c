/* A running migration's control socket (control.h, docs/control.md). */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"
#include "journal.h"
#include "transport/wire.h"
#include "common/util.h"

/* How long a client waits for the migration's answer: one turn of its
 * loop, and a QMP command. */
#define CTL_ANSWER_MS 15000

static int ctl_path(char *out, size_t len, const char *state_dir,
		    const char *id, struct ferry_error *err)
{
	struct sockaddr_un sun;

	if (!wire_vm_name_valid(id))
		return ferry_error_set(err, -EINVAL, "'%s' is not a migration id",
				       id);
	if ((size_t)snprintf(out, len, "%s/%s/%s.sock", state_dir, CTL_DIR, id) >=
	    (len < sizeof(sun.sun_path) ? len : sizeof(sun.sun_path)))
		return ferry_error_set(err, -ENAMETOOLONG, "the control socket "
				       "path under %s is too long for a Unix "
				       "socket", state_dir);
	return 0;
}

int ctl_open(struct ctl *c, const char *state_dir, const char *id,
	     struct ferry_error *err)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char dir[PATH_MAX];
	int rc;

	c->fd = -1;
	rc = ctl_path(c->path, sizeof(c->path), state_dir, id, err);
	if (rc < 0)
		return rc;
	snprintf(dir, sizeof(dir), "%s/%s", state_dir, CTL_DIR);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return ferry_error_set(err, -errno, "cannot create %s: %s", dir,
				       strerror(errno));
	/* This user's alone: nobody else may put or swap a socket there. */
	{
		struct stat st;

		if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) ||
		    st.st_uid != geteuid() || (st.st_mode & 077))
			return ferry_error_set(err, -EPERM, "%s is not a directory "
					       "of this user's alone (0700): "
					       "the control socket does not go "
					       "there", dir);
	}
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (c->fd < 0)
		return ferry_error_set(err, -errno, "socket: %s", strerror(errno));
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", c->path);
	unlink(c->path);	/* a dead ferry's, of the same id: never live */
	if (bind(c->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
	    chmod(c->path, 0600) < 0 || listen(c->fd, 4) < 0) {
		rc = ferry_error_set(err, -errno, "control socket %s: %s", c->path,
				     strerror(errno));
		ctl_close(c);
		return rc;
	}
	return 0;
}

void ctl_close(struct ctl *c)
{
	if (!c || c->fd < 0)
		return;
	close(c->fd);
	unlink(c->path);
	c->fd = -1;
}

void ctl_answer(struct ctl_request *req, bool ok, const char *fmt, ...)
{
	char line[FERRY_ERROR_MSG_MAX + 16];
	va_list ap;
	int n;

	n = snprintf(line, sizeof(line), "%s ", ok ? "ok" : "refused");
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	/* A client that does not read loses its answer, nothing more. */
	if (send(req->fd, line, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		/* nothing to do */
	}
	close(req->fd);
	req->fd = -1;
}

/* The request line (without its newline), read within CTL_READ_MS: 0,
 * or -1 for none, a longer one, or one with a NUL. */
static int read_line(int fd, char *line, size_t len)
{
	uint64_t deadline = ferry_now_ms() + CTL_READ_MS;
	size_t got = 0;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		uint64_t now = ferry_now_ms();
		char *nl;
		ssize_t n;

		if (got == len - 1 || now >= deadline ||
		    poll(&p, 1, (int)(deadline - now)) <= 0)
			return -1;
		n = recv(fd, line + got, len - 1 - got, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
		nl = memchr(line, '\n', got);
		if (!nl)
			continue;
		*nl = '\0';
		return strlen(line) == (size_t)(nl - line) ? 0 : -1;
	}
}

int ctl_take(struct ctl *c, struct ctl_request *req)
{
	char line[CTL_LINE_MAX + 1];
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	unsigned long ms;
	char *end;

	req->fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
	if (req->fd < 0)
		return 0;
	if (getsockopt(req->fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 ||
	    (cred.uid != geteuid() && cred.uid != 0)) {
		ctl_answer(req, false, "this migration belongs to another user");
		return 0;
	}
	if (read_line(req->fd, line, sizeof(line)) < 0) {
		ctl_answer(req, false, "expected one line: abort, force-complete "
			   "or set-downtime MS");
		return 0;
	}
	if (!strcmp(line, "abort")) {
		req->cmd = CTL_ABORT;
		return 1;
	}
	if (!strcmp(line, "force-complete")) {
		req->cmd = CTL_FORCE_COMPLETE;
		return 1;
	}
	if (!strncmp(line, "set-downtime ", 13)) {
		errno = 0;
		ms = strtoul(line + 13, &end, 10);
		if (!errno && end != line + 13 && !*end && ms >= 1 &&
		    ms <= CTL_DOWNTIME_MAX_MS) {
			req->cmd = CTL_SET_DOWNTIME;
			req->downtime_ms = (uint32_t)ms;
			return 1;
		}
		ctl_answer(req, false, "set-downtime needs milliseconds, 1 to %d",
			   CTL_DOWNTIME_MAX_MS);
		return 0;
	}
	ctl_answer(req, false, "unknown request '%.32s': abort, force-complete "
		   "or set-downtime MS", line);
	return 0;
}

/* ---- the client: ferry abort / force-complete / set-downtime ---- */

/* Whether DIR/@name is a socket somebody listens on (a killed ferry's
 * stays behind, refusing). */
static bool socket_alive(const char *dir, const char *name)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool alive;

	if (fd < 0)
		return true;	/* cannot tell: let the request say */
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s", dir, name);
	alive = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 ||
		errno != ECONNREFUSED;
	close(fd);
	return alive;
}

/*
 * @id, or the one running migration of this host whose id starts with it
 * (at least 8 characters), into @full.
 */
static int resolve_id(const char *state_dir, const char *id, char full[37],
		      struct ferry_error *err)
{
	char path[PATH_MAX];
	size_t len = strlen(id), n = 0;

	if (len == 36) {
		snprintf(full, 37, "%s", id);
		return 0;
	}
	if (len < 8 || len > 36)
		return ferry_error_set(err, -EINVAL, "'%s': give the migration's "
				       "id, or at least its first 8 characters "
				       "(ferry list)", id);
	snprintf(path, sizeof(path), "%s/%s", state_dir, CTL_DIR);
	{
		struct dirent *e;
		DIR *d = opendir(path);

		while (d && (e = readdir(d))) {
			if (strlen(e->d_name) != 36 + 5 ||
			    strncmp(e->d_name, id, len) ||
			    strcmp(e->d_name + 36, ".sock") ||
			    !socket_alive(path, e->d_name))
				continue;
			snprintf(full, 37, "%.36s", e->d_name);
			n++;
		}
		if (d)
			closedir(d);
	}
	if (n == 1)
		return 0;
	if (n > 1)
		return ferry_error_set(err, -EINVAL, "'%s' names %zu running "
				       "migrations: give more of the id", id, n);
	return ferry_error_set(err, -ENOENT, "no running migration of this host "
			       "has an id starting with '%s' (ferry list shows "
			       "them; a migration is steered from its source "
			       "host)", id);
}

/* One request to migration @id's control socket, its answer in @answer:
 * 0 ok, -EPERM refused (the reason in @err too). */
static int ctl_call(const char *state_dir, const char *id, const char *line,
		    char *answer, size_t alen, struct ferry_error *err)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char full[37], path[PATH_MAX], buf[FERRY_ERROR_MSG_MAX + 16];
	uint64_t deadline;
	size_t got = 0;
	char *nl = NULL;
	int fd, rc;

	if (answer && alen)
		answer[0] = '\0';
	rc = resolve_id(state_dir, id, full, err);
	if (rc == 0)
		rc = ctl_path(path, sizeof(path), state_dir, full, err);
	if (rc < 0)
		return rc;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ferry_error_set(err, -errno, "socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		rc = ferry_error_set(err, errno == ENOENT || errno == ECONNREFUSED ?
				     -ENOENT : -errno, "migration %s is not "
				     "running on this host (%s)", full,
				     strerror(errno));
		close(fd);
		return rc;
	}
	if (send(fd, line, strlen(line), MSG_NOSIGNAL) < 0) {
		rc = ferry_error_set(err, -errno, "migration %s: %s", full,
				     strerror(errno));
		close(fd);
		return rc;
	}
	deadline = ferry_now_ms() + CTL_ANSWER_MS;
	while (!nl && got < sizeof(buf) - 1) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		uint64_t now = ferry_now_ms();
		ssize_t n;

		if (now >= deadline || poll(&p, 1, (int)(deadline - now)) <= 0)
			break;
		n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
		if (n <= 0)
			break;
		got += (size_t)n;
		buf[got] = '\0';
		nl = strchr(buf, '\n');
	}
	close(fd);
	if (!nl)
		return ferry_error_set(err, -ETIMEDOUT, "migration %s did not "
				       "answer", full);
	*nl = '\0';
	if (answer)
		snprintf(answer, alen, "%s", strchr(buf, ' ') ? strchr(buf, ' ') + 1 :
			 "");
	if (!strncmp(buf, "ok ", 3))
		return 0;
	return ferry_error_set(err, -EPERM, "migration %s refused: %s", full,
			       strchr(buf, ' ') ? strchr(buf, ' ') + 1 : buf);
}

int ferry_abort(const char *state_dir, const char *id,
		char answer[FERRY_ERROR_MSG_MAX], struct ferry_error *err)
{
	return ctl_call(state_dir, id, "abort\n", answer, FERRY_ERROR_MSG_MAX, err);
}

int ferry_force_complete(const char *state_dir, const char *id,
			 char answer[FERRY_ERROR_MSG_MAX], struct ferry_error *err)
{
	return ctl_call(state_dir, id, "force-complete\n", answer,
			FERRY_ERROR_MSG_MAX, err);
}

int ferry_set_downtime(const char *state_dir, const char *id, uint32_t ms,
		       char answer[FERRY_ERROR_MSG_MAX], struct ferry_error *err)
{
	char line[32];

	snprintf(line, sizeof(line), "set-downtime %u\n", ms);
	return ctl_call(state_dir, id, line, answer, FERRY_ERROR_MSG_MAX, err);
}
