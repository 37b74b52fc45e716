/* The migration journal (see journal.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "journal.h"
#include "common/util.h"

/* A shared probe of ferry list is waited out: 20 x 10 ms. */
#define JOURNAL_LOCK_TRIES 20
#define JOURNAL_LOCK_WAIT_MS 10

struct journal {
	int fd;
	char side[16];
	char path[PATH_MAX];
};

static int mkdir_private(const char *dir, struct ferry_error *err)
{
	struct stat st;

	if (mkdir(dir, 0700) == 0)
		return 0;
	if (errno != EEXIST)
		return ferry_error_set(err, -errno, "cannot create %s: %s", dir,
				       strerror(errno));
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return ferry_error_set(err, -ENOTDIR, "%s is not a directory", dir);
	return 0;
}

/* A torn last line (a crash mid-write) goes, so the next is whole. */
static int trim_torn(int fd)
{
	off_t size = lseek(fd, 0, SEEK_END), at = size;
	char c;

	while (at > 0) {
		if (pread(fd, &c, 1, at - 1) != 1)
			return -EIO;
		if (c == '\n')
			break;
		at--;
	}
	if (at != size && ftruncate(fd, at) < 0)
		return -errno;
	return 0;
}

/* A new file's name reaches the disk with its directory. */
static int sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

int journal_open(struct journal **out, const char *state_dir, const char *id,
		 const char *side, struct ferry_error *err)
{
	char dir[PATH_MAX];
	struct journal *j;
	int rc;

	*out = NULL;
	if ((size_t)snprintf(dir, sizeof(dir), "%s/%s", state_dir, JOURNAL_DIR) >=
	    sizeof(dir))
		return ferry_error_set(err, -ENAMETOOLONG, "state directory path "
				       "too long: %s", state_dir);
	rc = mkdir_private(state_dir, err);
	if (rc == 0)
		rc = mkdir_private(dir, err);
	if (rc < 0)
		return ferry_error_prefix(err, "journal: ");
	j = calloc(1, sizeof(*j));
	if (!j)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	snprintf(j->path, sizeof(j->path), "%s/%s.%s.jsonl", dir, id, side);
	snprintf(j->side, sizeof(j->side), "%s", side);
	j->fd = open(j->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (j->fd < 0) {
		rc = ferry_error_set(err, -errno, "journal: cannot open %s: %s",
				     j->path, strerror(errno));
		free(j);
		return rc;
	}
	/* The owner holds it: ferry recover leaves a live one alone. A
	 * reader's shared probe (ferry list) lasts a moment: wait that. */
	for (int i = 0; i < JOURNAL_LOCK_TRIES &&
	     flock(j->fd, LOCK_EX | LOCK_NB) < 0; i++)
		usleep(JOURNAL_LOCK_WAIT_MS * 1000);
	if (flock(j->fd, LOCK_EX | LOCK_NB) < 0) {
		rc = ferry_error_set(err, -EBUSY, "journal %s is in use by a live "
				     "ferry", j->path);
		goto err_close;
	}
	rc = trim_torn(j->fd);
	if (rc == 0)
		rc = sync_dir(dir);
	if (rc < 0) {
		ferry_error_set(err, rc, "journal %s: %s", j->path, strerror(-rc));
		goto err_close;
	}
	*out = j;
	return 0;

err_close:
	close(j->fd);
	free(j);
	return rc;
}

/*
 * The kill matrix's fault points (tests; docs/journal.md): with
 * FERRY_FAULT=SIDE:STATE:kill this process dies (SIGKILL) right after it
 * recorded STATE on SIDE, as a crash there would; with
 * FERRY_FAULT=SIDE:STATE:stall=MS it waits there MS ms (at most a
 * minute), for a test to kill another process at that step.
 */
static void fault_point(const struct journal *j, const char *state)
{
	const char *f = getenv("FERRY_FAULT");
	size_t side = strlen(j->side), st = strlen(state);
	unsigned long ms;

	if (!f || strncmp(f, j->side, side) || f[side] != ':' ||
	    strncmp(f + side + 1, state, st) || f[side + 1 + st] != ':')
		return;
	f += side + st + 2;
	if (!strcmp(f, "kill")) {
		ferry_log(FERRY_LOG_WARN, "FERRY_FAULT: killed after '%s'", state);
		raise(SIGKILL);
	}
	if (!strncmp(f, "stall=", 6)) {
		ms = strtoul(f + 6, NULL, 10);
		ferry_log(FERRY_LOG_WARN, "FERRY_FAULT: stalling %lu ms after '%s'",
			  ms, state);
		usleep((useconds_t)(ms < 60000 ? ms : 60000) * 1000);
	}
}

int journal_step(struct journal *j, const char *state, json_t *fields,
		 struct ferry_error *err)
{
	struct timespec ts;
	json_t *o = fields ? fields : json_object();
	char *text;
	size_t len;
	ssize_t n;
	int rc = 0;

	if (!j) {
		json_decref(o);
		return 0;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	json_object_set_new(o, "v", json_integer(JOURNAL_VERSION));
	json_object_set_new(o, "t_ms", json_integer((json_int_t)ts.tv_sec * 1000 +
						   ts.tv_nsec / 1000000));
	json_object_set_new(o, "state", json_string(state));
	text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	if (!text)
		return ferry_error_set(err, -ENOMEM, "journal: out of memory");
	len = strlen(text);
	text[len] = '\n';	/* over the NUL: json_dumps gave len + 1 bytes */
	/* One write of one line with O_APPEND: a crash leaves it whole or
	 * torn at the end, never interleaved; a short one is taken back. */
	n = write(j->fd, text, len + 1);
	if (n != (ssize_t)(len + 1)) {
		rc = ferry_error_set(err, n < 0 ? -errno : -EIO, "journal %s: "
				     "cannot record '%s': %s", j->path, state,
				     n < 0 ? strerror(errno) : "short write");
		trim_torn(j->fd);
	} else if (fdatasync(j->fd) < 0)
		rc = ferry_error_set(err, -errno, "journal %s: cannot sync '%s': %s",
				     j->path, state, strerror(errno));
	free(text);
	if (rc == 0)
		fault_point(j, state);
	return rc;
}

void journal_close(struct journal *j)
{
	if (!j)
		return;
	close(j->fd);
	free(j);
}

bool journal_terminal(const char *state)
{
	return state && (!strcmp(state, JOURNAL_COMPLETED) ||
			 !strcmp(state, JOURNAL_FAILED) ||
			 !strcmp(state, JOURNAL_RECOVERED));
}

int journal_read(const char *path, json_t **lines, struct ferry_error *err)
{
	char *buf = NULL, *line, *save = NULL;
	struct stat st;
	ssize_t n = 0;
	int fd, rc = 0;

	*lines = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ferry_error_set(err, -errno, "cannot read %s: %s", path,
				       strerror(errno));
	if (fstat(fd, &st) < 0 || st.st_size > JOURNAL_FILE_MAX) {
		rc = ferry_error_set(err, -EFBIG, "%s is not a ferry journal "
				     "(over %u bytes)", path, JOURNAL_FILE_MAX);
		goto out_close;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		rc = ferry_error_set(err, -ENOMEM, "out of memory");
		goto out_close;
	}
	while (n < st.st_size) {
		ssize_t r = read(fd, buf + n, (size_t)(st.st_size - n));

		if (r <= 0)
			break;
		n += r;
	}
	buf[n] = '\0';
	/* Only whole lines: a torn last one was never synced as a step. */
	if (n && buf[n - 1] != '\n') {
		char *nl = strrchr(buf, '\n');

		*(nl ? nl + 1 : buf) = '\0';
	}
	*lines = json_array();
	for (line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		json_t *o = json_loads(line, 0, NULL);

		if (!json_is_object(o) ||
		    json_integer_value(json_object_get(o, "v")) != JOURNAL_VERSION ||
		    !json_is_string(json_object_get(o, "state"))) {
			json_decref(o);
			json_decref(*lines);
			*lines = NULL;
			rc = ferry_error_set(err, -EINVAL, "%s: a line that is not "
					     "a ferry journal entry of version %d",
					     path, JOURNAL_VERSION);
			break;
		}
		json_array_append_new(*lines, o);
	}
	free(buf);
out_close:
	close(fd);
	return rc;
}
