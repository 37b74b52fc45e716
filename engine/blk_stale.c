/*
 * What a ferry that died left behind (see blk.h): every migration clears
 * it first, so that a retry after a crash needs nobody to touch QMP.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "blk.h"
#include "mig.h"
#include "common/util.h"

/* How long a cancelled mirror job may take to conclude. */
#define BLK_STALE_CANCEL_MS 10000
#define BLK_STALE_POLL_MS 20

const char *blk_tmpdir(void)
{
	const char *t = getenv("TMPDIR");

	/* Socket paths are short (108 bytes): a long TMPDIR is not used. */
	return t && t[0] == '/' && strlen(t) < 40 ? t : "/tmp";
}

static bool has_prefix(const char *s, const char *prefix)
{
	return s && !strncmp(s, prefix, strlen(prefix));
}

/* ferry's jobs in QEMU: cancel the running, then dismiss all. */
static int clear_jobs(struct qmp *q, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + BLK_STALE_CANCEL_MS;

	for (;;) {
		struct qemu_block_job jobs[QEMU_BLOCK_JOBS_MAX];
		bool waiting = false;
		size_t n;
		int rc;

		rc = qemu_query_block_jobs(q, jobs, QEMU_BLOCK_JOBS_MAX, &n, err);
		if (rc < 0)
			return rc;
		for (size_t i = 0; i < n; i++) {
			const struct qemu_block_job *job = &jobs[i];

			if (!has_prefix(job->id, BLK_JOB_PREFIX) || !job->status[0])
				continue;
			if (!strcmp(job->status, "concluded")) {
				ferry_log(FERRY_LOG_WARN, "clearing mirror job %s, left "
					  "by an earlier ferry", job->id);
				qemu_job_dismiss(q, job->id, NULL);
				continue;
			}
			waiting = true;
			/* Every pass: a job seen first in a state that refused
			 * the cancel (waiting, pending) takes it later. */
			qemu_block_job_cancel(q, job->id, true, NULL);
		}
		if (!waiting)
			return 0;
		if (ferry_now_ms() >= deadline)
			return ferry_error_set(err, -ETIMEDOUT, "a mirror job left by "
					       "an earlier ferry did not stop within "
					       "%d ms of its cancel",
					       BLK_STALE_CANCEL_MS);
		usleep(BLK_STALE_POLL_MS * 1000);
	}
}

/* ferry's NBD nodes in QEMU (their jobs are gone): delete them. */
static int clear_nodes(struct qmp *q, struct ferry_error *err)
{
	struct qemu_node_name nodes[QEMU_NODE_NAMES_MAX];
	size_t n;
	int rc;

	rc = qemu_query_node_names(q, BLK_NODE_PREFIX, nodes,
				   QEMU_NODE_NAMES_MAX, &n, err);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++) {
		const char *name = nodes[i].name;
		struct ferry_error e = { 0 };

		if (qemu_blockdev_del(q, name, &e) < 0)
			ferry_log(FERRY_LOG_WARN, "cannot clear NBD node %s, left by "
				  "an earlier ferry: %s", name, e.msg);
		else
			ferry_log(FERRY_LOG_WARN, "cleared NBD node %s, left by an "
				  "earlier ferry", name);
	}
	return 0;
}

/* Whether something accepts connections on unix socket @path. */
static bool socket_alive(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, rc;

	if (strlen(path) >= sizeof(sa.sun_path))
		return true;	/* not ours to judge */
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return true;
	rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	close(fd);
	return rc == 0;
}

/*
 * A socket directory of a dead ferry: old enough, and no socket in it
 * accepts. It is removed with its sockets (nothing else goes in one).
 */
static void clear_dir(const char *dir)
{
	struct dirent *e;
	struct stat st;
	bool alive = false;
	DIR *d;

	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid() ||
	    time(NULL) - st.st_mtime < BLK_STALE_DIR_MIN_AGE_S)
		return;
	d = opendir(dir);
	if (!d)
		return;
	while (!alive && (e = readdir(d))) {
		char path[512];

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		alive = lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode) ||
			socket_alive(path);
	}
	if (!alive) {
		rewinddir(d);
		while ((e = readdir(d))) {
			char path[512];

			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
			unlink(path);
		}
	}
	closedir(d);
	if (!alive && rmdir(dir) == 0)
		ferry_log(FERRY_LOG_WARN, "removed %s, left by an earlier ferry",
			  dir);
}

static void clear_dirs(void)
{
	const char *tmp = blk_tmpdir();
	struct dirent *e;
	DIR *d = opendir(tmp);

	while (d && (e = readdir(d))) {
		char dir[512];

		if (!has_prefix(e->d_name, BLK_DIR_PREFIX))
			continue;
		snprintf(dir, sizeof(dir), "%s/%s", tmp, e->d_name);
		clear_dir(dir);
	}
	if (d)
		closedir(d);
}

int blk_clear_stale(struct qmp *q, struct ferry_error *err)
{
	int rc = clear_jobs(q, err);

	if (rc == 0)
		rc = clear_nodes(q, err);
	if (rc < 0)
		return ferry_error_prefix(err, "clearing what an earlier ferry left "
					  "in the source QEMU: ");
	clear_dirs();
	return 0;
}
