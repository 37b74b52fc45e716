/* Child processes of the tests (see proc.h). */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "proc.h"
#include "tmpdir.h"
#include "transport/net.h"

#define PROC_PORT_POLL_MS 25

/*
 * The children's journal directory (FERRY_STATE_DIR), unless the test
 * set one: a scratch directory of this process, removed with it, so that
 * no test writes the system's /var/lib/ferry.
 */
static const char *state_dir(void)
{
	static char dir[64];
	static pid_t made_by;

	if (getenv("FERRY_STATE_DIR"))
		return NULL;
	if (made_by != getpid()) {
		if (tmpdir_make(dir, sizeof(dir), "ferry-state") < 0)
			return NULL;
		made_by = getpid();
	}
	return dir;
}

int proc_spawn(char *const argv[], int *stdout_fd, pid_t *pid,
	       struct ferry_error *err)
{
	const char *sd = state_dir();
	int pipefd[2] = { -1, -1 };
	pid_t p;

	if (!argv[0])
		return ferry_error_set(err, -EINVAL, "no program to run "
				       "(is FERRY_BIN set?)");
	if (stdout_fd && pipe2(pipefd, O_CLOEXEC) < 0)
		return ferry_error_set(err, -errno, "pipe: %s", strerror(errno));
	p = fork();
	if (p < 0) {
		int e = errno;

		if (stdout_fd) {
			close(pipefd[0]);
			close(pipefd[1]);
		}
		return ferry_error_set(err, -e, "fork: %s", strerror(e));
	}
	if (p == 0) {
		int out = stdout_fd ? pipefd[1] : open("/dev/null", O_WRONLY);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (out >= 0)
			dup2(out, STDOUT_FILENO);
		if (sd)
			setenv("FERRY_STATE_DIR", sd, 1);
		execv(argv[0], argv);
		_exit(127);
	}
	if (stdout_fd) {
		close(pipefd[1]);
		*stdout_fd = pipefd[0];
	}
	*pid = p;
	return 0;
}

size_t proc_read_all(int fd, char *out, size_t outlen)
{
	size_t got = 0;
	char sink[4096];
	ssize_t n;

	for (;;) {
		if (got + 1 < outlen)
			n = read(fd, out + got, outlen - 1 - got);
		else
			n = read(fd, sink, sizeof(sink));	/* drain */
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (got + 1 < outlen)
			got += (size_t)n;
	}
	if (outlen)
		out[got] = '\0';
	close(fd);
	return got;
}

int proc_wait(pid_t pid)
{
	int status;

	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

uint16_t proc_free_port(void)
{
	struct ferry_error err = { 0 };
	int fd = net_listen("127.0.0.1", 0, &err);
	uint16_t port;

	if (fd < 0)
		return 0;
	port = net_local_port(fd);
	close(fd);
	return port;
}

int proc_wait_port(uint16_t port, int timeout_ms, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + (uint64_t)timeout_ms;

	while (ferry_now_ms() < deadline) {
		int fd = net_connect("127.0.0.1", port, 200, err);

		if (fd >= 0) {
			/* A bare connect is refused by the receiver; fine. */
			close(fd);
			return 0;
		}
		usleep(PROC_PORT_POLL_MS * 1000);
	}
	return ferry_error_set(err, -ETIMEDOUT, "nothing listens on port %u",
			       port);
}

int proc_spawn_receiver(const char *qmp_path, uint16_t port, pid_t *pid,
			struct ferry_error *err)
{
	char listen[32];
	char *argv[] = { getenv("FERRY_BIN"), "receive", "--listen", listen,
			 "--qmp", (char *)qmp_path, "--once", NULL };
	int rc;

	snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
	rc = proc_spawn(argv, NULL, pid, err);
	if (rc < 0)
		return rc;
	rc = proc_wait_port(port, 5000, err);
	if (rc < 0) {
		kill(*pid, SIGKILL);
		proc_wait(*pid);
	}
	return rc;
}

int proc_list_status(const char *dir, const char *side, char *status,
		     size_t len, struct ferry_error *err)
{
	char *argv[] = { getenv("FERRY_BIN"), "list", "--state-dir", (char *)dir,
			 "--json", NULL };
	char out[65536];
	json_t *all, *e, *found = NULL;
	size_t i, n = 0;
	pid_t pid;
	int fd, rc;

	rc = proc_spawn(argv, &fd, &pid, err);
	if (rc < 0)
		return rc;
	proc_read_all(fd, out, sizeof(out));
	rc = proc_wait(pid);
	if (rc != 0)
		return ferry_error_set(err, -EIO, "ferry list exited with %d", rc);
	all = json_loads(out, 0, NULL);
	json_array_foreach(all, i, e)
		if (!strcmp(json_string_value(json_object_get(e, "side")) ?: "",
			    side)) {
			found = e;
			n++;
		}
	if (n == 1)
		snprintf(status, len, "%s",
			 json_string_value(json_object_get(found, "status")) ?: "");
	json_decref(all);
	return n == 1 ? 0 : ferry_error_set(err, -ENOENT, "ferry list shows %zu "
					    "%s migrations in %s: %s", n, side,
					    dir, out);
}

bool proc_journal_has(const char *dir, const char *side, const char *text)
{
	char path[PATH_MAX], suffix[32], line[4096];
	bool found = false;
	struct dirent *e;
	DIR *d;

	snprintf(path, sizeof(path), "%s/migrations", dir);
	snprintf(suffix, sizeof(suffix), ".%s.jsonl", side);
	d = opendir(path);
	while (d && !found && (e = readdir(d))) {
		FILE *f;

		if (!strstr(e->d_name, suffix))
			continue;
		snprintf(path, sizeof(path), "%s/migrations/%s", dir, e->d_name);
		f = fopen(path, "r");
		while (f && !found && fgets(line, sizeof(line), f))
			found = strstr(line, text) != NULL;
		if (f)
			fclose(f);
	}
	if (d)
		closedir(d);
	return found;
}

int proc_recover(const char *dir, const char *opt, const char *val, char *out,
		 size_t len, struct ferry_error *err)
{
	char *argv[] = { getenv("FERRY_BIN"), "recover", "--state-dir", (char *)dir,
			 (char *)opt, (char *)val, NULL };
	pid_t pid;
	int fd, rc;

	rc = proc_spawn(argv, &fd, &pid, err);
	if (rc < 0)
		return rc;
	proc_read_all(fd, out, len);
	return proc_wait(pid);
}
