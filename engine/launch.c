/*
 * Launched destination QEMUs: running the launcher for the service, and
 * undoing a launch (see launch.h for the contract).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "launch.h"
#include "transport/tls.h"
#include "common/util.h"

static void close_pair(int p[2])
{
	if (p[0] >= 0)
		close(p[0]);
	if (p[1] >= 0)
		close(p[1]);
	p[0] = p[1] = -1;
}

/* "ID=SIZE,..." for FERRY_LAUNCH_DISKS. */
static void disks_env(const struct launch_req *r, char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (uint32_t i = 0; i < r->ndisks && o < len; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%s=%llu", i ? "," : "",
				      r->disks[i].id,
				      (unsigned long long)r->disks[i].size);
}

static void child_exec(const struct launch_req *r, int in_fd, int out_fd,
		       int err_fd)
{
	char disks[WIRE_DISKS_MAX * (WIRE_DISK_ID_MAX + 24)];
	char script[PATH_MAX + 32];

	dup2(in_fd, 0);
	dup2(out_fd, 1);
	dup2(err_fd, 2);
	disks_env(r, disks, sizeof(disks));
	setenv("FERRY_LAUNCH_STATE_DIR", r->state_dir, 1);
	setenv("FERRY_LAUNCH_ALLOW_DIRS", r->allow_dirs ? r->allow_dirs : "", 1);
	setenv("FERRY_LAUNCH_BLOCK", r->block ? "1" : "0", 1);
	setenv("FERRY_LAUNCH_DISKS", disks, 1);
	/* CMD is the operator's, a shell word list; the peer's data only
	 * ever reaches it on stdin and as the validated NAME. */
	snprintf(script, sizeof(script), "exec %s \"$@\"", r->cmd);
	execl("/bin/sh", "sh", "-c", script, "ferry-launch", r->vm, r->qmp_path,
	      (char *)NULL);
	_exit(127);
}

/* The source's arguments on the launcher's stdin, NUL-terminated each. */
static int feed_config(int fd, const struct launch_req *r)
{
	for (uint32_t i = 0; i < r->argc; i++) {
		const char *p = r->argv[i];
		size_t n = strlen(p) + 1;

		while (n) {
			ssize_t w = write(fd, p, n);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				return -errno;
			p += w;
			n -= (size_t)w;
		}
	}
	return 0;
}

/* Read stdout and stderr until both end or @deadline_ms. */
static int collect(int out_fd, int err_fd, char *out, size_t *out_len,
		   char *errs, size_t *err_len, uint64_t deadline_ms)
{
	struct pollfd p[2] = { { .fd = out_fd, .events = POLLIN },
			       { .fd = err_fd, .events = POLLIN } };
	char *bufs[2] = { out, errs };
	size_t *lens[2] = { out_len, err_len };

	while (p[0].fd >= 0 || p[1].fd >= 0) {
		uint64_t now = ferry_now_ms();

		if (now >= deadline_ms)
			return -ETIMEDOUT;
		if (poll(p, 2, (int)(deadline_ms - now)) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (int i = 0; i < 2; i++) {
			char scratch[512];
			size_t room = LAUNCH_OUTPUT_MAX - 1 - *lens[i];
			ssize_t n;

			if (p[i].fd < 0 || !p[i].revents)
				continue;
			n = room ? read(p[i].fd, bufs[i] + *lens[i], room) :
				   read(p[i].fd, scratch, sizeof(scratch));
			if (n <= 0) {
				p[i].fd = -1;
				continue;
			}
			if (room)
				*lens[i] += (size_t)n;
			bufs[i][*lens[i]] = '\0';
		}
	}
	return 0;
}

/* "pid N" and "created PATH" lines; anything else is ignored. */
static int parse_output(char *out, struct launch_result *res,
			struct ferry_error *err)
{
	char *save = NULL;

	res->pid = 0;
	res->ncreated = 0;
	for (char *line = strtok_r(out, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "pid ", 4)) {
			char *end;
			long pid = strtol(line + 4, &end, 10);

			if (*end || pid <= 1 || pid > INT32_MAX)
				return ferry_error_set(err, -EPROTO, "the launcher "
						       "printed a bad pid: %.40s",
						       line);
			res->pid = (int)pid;
		} else if (!strncmp(line, "created /", 9) &&
			   res->ncreated < LAUNCH_CREATED_MAX &&
			   strlen(line + 8) < PATH_MAX && !strstr(line, "/../")) {
			snprintf(res->created[res->ncreated++], PATH_MAX, "%s",
				 line + 8);
		}
	}
	if (!res->pid)
		return ferry_error_set(err, -EPROTO, "the launcher did not say "
				       "which QEMU it started (no 'pid N' line)");
	return 0;
}

int launch_run(const struct launch_req *r, struct launch_result *out,
	       struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + LAUNCH_TIMEOUT_MS;
	char *stdout_buf, *stderr_buf;
	size_t out_len = 0, err_len = 0;
	int in_p[2] = { -1, -1 }, out_p[2] = { -1, -1 }, err_p[2] = { -1, -1 };
	int status = 0, rc;
	pid_t child;

	memset(out, 0, sizeof(*out));
	stdout_buf = calloc(1, LAUNCH_OUTPUT_MAX);
	stderr_buf = calloc(1, LAUNCH_OUTPUT_MAX);
	if (!stdout_buf || !stderr_buf) {
		rc = ferry_error_set(err, -ENOMEM, "out of memory");
		goto err_free;
	}
	if (pipe2(in_p, O_CLOEXEC) < 0 || pipe2(out_p, O_CLOEXEC) < 0 ||
	    pipe2(err_p, O_CLOEXEC) < 0) {
		rc = ferry_error_set(err, -errno, "pipe: %s", strerror(errno));
		goto err_pipes;
	}
	child = fork();
	if (child < 0) {
		rc = ferry_error_set(err, -errno, "fork: %s", strerror(errno));
		goto err_pipes;
	}
	if (child == 0)
		child_exec(r, in_p[0], out_p[1], err_p[1]);
	close(in_p[0]);
	close(out_p[1]);
	close(err_p[1]);
	in_p[0] = out_p[1] = err_p[1] = -1;
	/* A launcher that exits without reading gives EPIPE, not SIGPIPE. */
	{
		struct tls_sigpipe g;

		tls_sigpipe_block(&g);
		feed_config(in_p[1], r);
		close(in_p[1]);
		in_p[1] = -1;
		tls_sigpipe_restore(&g);
	}
	rc = collect(out_p[0], err_p[0], stdout_buf, &out_len, stderr_buf,
		     &err_len, deadline);
	if (rc == -ETIMEDOUT)
		kill(child, SIGKILL);
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	if (rc == -ETIMEDOUT) {
		rc = ferry_error_set(err, rc, "the launcher did not finish within "
				     "%d s", LAUNCH_TIMEOUT_MS / 1000);
	} else if (rc < 0) {
		ferry_error_set(err, rc, "reading the launcher's output: %s",
				strerror(-rc));
	} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		/* Its last line is the reason. */
		while (err_len && (stderr_buf[err_len - 1] == '\n'))
			stderr_buf[--err_len] = '\0';
		rc = ferry_error_set(err, -ECHILD, "the launcher failed (%s %d): %s",
				     WIFEXITED(status) ? "exit" : "signal",
				     WIFEXITED(status) ? WEXITSTATUS(status) :
				     WTERMSIG(status),
				     err_len ? stderr_buf : "(no message)");
	} else {
		rc = parse_output(stdout_buf, out, err);
	}
	/* A launcher that failed after it started QEMU said so first. */
	if (rc < 0 && rc != -ECHILD && out->pid)
		launch_undo(out, r->qmp_path);
err_pipes:
	close_pair(in_p);
	close_pair(out_p);
	close_pair(err_p);
err_free:
	free(stdout_buf);
	free(stderr_buf);
	return rc;
}

void launch_undo(const struct launch_result *res, const char *qmp_path)
{
	int pidfd = res->pid > 0 ? (int)syscall(SYS_pidfd_open, res->pid, 0) : -1;

	if (pidfd >= 0) {
		struct pollfd p = { .fd = pidfd, .events = POLLIN };

		syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
		if (poll(&p, 1, LAUNCH_KILL_TIMEOUT_MS) <= 0)
			ferry_log(FERRY_LOG_WARN, "launched QEMU %d did not exit "
				  "within %d ms of SIGKILL", res->pid,
				  LAUNCH_KILL_TIMEOUT_MS);
		close(pidfd);
	}
	for (uint32_t i = 0; i < res->ncreated; i++)
		if (unlink(res->created[i]) < 0 && errno != ENOENT)
			ferry_log(FERRY_LOG_WARN, "cannot remove %s: %s",
				  res->created[i], strerror(errno));
	if (qmp_path)
		unlink(qmp_path);
}
