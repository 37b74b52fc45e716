/*
 * The migrations this host sent or received, running and past, as the
 * journal has them (docs/journal.md): one entry per migration and side,
 * in the schema of docs/list.md. Read-only: a journal is never changed,
 * and one that is not ferry's is skipped with a warning.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "journal.h"
#include "common/util.h"

/* Whether a live ferry holds the journal at @path (its owner's flock). */
static bool journal_held(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	bool held;

	if (fd < 0)
		return false;
	held = flock(fd, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK;
	close(fd);
	return held;
}

static const char *str_of(json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static json_int_t int_of(json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

/*
 * What a person asks first: is it running, did it work, does it need
 * ferry recover. The journal's last state, and whether its ferry lives.
 */
static const char *list_status(const char *last, json_t *end, bool held)
{
	const char *status = str_of(json_object_get(end, "report"), "status");

	if (!strcmp(last, JOURNAL_COMPLETED))
		return "completed";
	if (!strcmp(last, JOURNAL_FAILED))
		return status && !strcmp(status, "cancelled") ? "cancelled" :
		       "failed";
	if (!strcmp(last, JOURNAL_RECOVERED))
		return "recovered";
	if (held)
		return "running";
	/* Unresolved, or its ferry died mid-step. */
	return "needs-recover";
}

/* live, live+disks, cold, cold+disks: as its start recorded. */
static const char *list_type(json_t *first)
{
	bool disks = json_is_true(json_object_get(first, "block"));

	if (json_is_true(json_object_get(first, "cold")))
		return disks ? "cold+disks" : "cold";
	return disks ? "live+disks" : "live";
}

/* The entry of one journal, or NULL when the file is not one. */
static json_t *list_entry(const char *path, struct ferry_error *err)
{
	json_t *lines, *first, *end, *rep, *e;
	const char *side, *last;
	bool held, source;
	json_int_t t0, t1;
	char peer[300];

	if (journal_read(path, &lines, err) < 0)
		return NULL;
	first = json_array_get(lines, 0);
	end = json_array_get(lines, json_array_size(lines) - 1);
	side = str_of(first, "side");
	last = str_of(end, "state");
	if (!first || !side || !last || !str_of(first, "id")) {
		ferry_error_set(err, -EINVAL, "%s: not a ferry journal", path);
		json_decref(lines);
		return NULL;
	}
	source = !strcmp(side, "source");
	held = !journal_terminal(last) && journal_held(path);
	rep = json_object_get(end, "report");
	t0 = int_of(first, "t_ms");
	t1 = int_of(end, "t_ms");
	if (source)
		snprintf(peer, sizeof(peer), "%s:%lld", str_of(first, "to_host") ?: "?",
			 (long long)int_of(first, "to_port"));
	else
		snprintf(peer, sizeof(peer), "%s", str_of(first, "peer") ?: "?");
	e = json_pack("{s:s,s:s,s:s?,s:s,s:s,s:s,s:s,s:I,s:I,s:I}",
		      "id", str_of(first, "id"), "side", side,
		      "vm", str_of(first, "vm"), "peer", peer,
		      "type", list_type(first),
		      "status", list_status(last, end, held), "state", last,
		      "started_ms", t0, "updated_ms", t1,
		      "total_ms", rep ? int_of(rep, "total_ms") : t1 - t0);
	if (e && rep) {
		json_object_set(e, "downtime_ms", json_object_get(rep, "downtime_ms"));
		json_object_set_new(e, "wire_bytes", json_integer(
			int_of(rep, "wire_bytes") +
			int_of(json_object_get(rep, "disks"), "wire_bytes")));
		json_object_set(e, "postcopy", json_object_get(rep, "postcopy"));
	}
	if (e) {
		/* The guest-visible blackout is measured from outside (bench/):
		 * ferry itself does not know it. */
		json_object_set_new(e, "guest_blackout_ms", json_null());
		json_object_set_new(e, "error", json_incref(json_object_get(end,
							"error")) ?: json_null());
	}
	json_decref(lines);
	if (!e)
		ferry_error_set(err, -ENOMEM, "out of memory");
	return e;
}

static int by_start(const void *a, const void *b)
{
	json_int_t x = int_of(*(json_t *const *)a, "started_ms");
	json_int_t y = int_of(*(json_t *const *)b, "started_ms");

	return x < y ? -1 : x > y;
}

int ferry_list_json(const char *state_dir, char **out, struct ferry_error *err)
{
	char dir[PATH_MAX], path[PATH_MAX];
	json_t **entries = NULL, *all;
	size_t n = 0, cap = 0;
	struct dirent *d;
	int rc = 0;
	DIR *dp;

	*out = NULL;
	snprintf(dir, sizeof(dir), "%s/%s", state_dir, JOURNAL_DIR);
	dp = opendir(dir);
	if (!dp && errno != ENOENT)
		return ferry_error_set(err, -errno, "cannot read %s: %s", dir,
				       strerror(errno));
	while (dp && (d = readdir(dp))) {
		size_t len = strlen(d->d_name);
		struct ferry_error e = { 0 };
		json_t *entry;

		if (len < 7 || strcmp(d->d_name + len - 6, ".jsonl"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		entry = list_entry(path, &e);
		if (!entry) {
			ferry_log(FERRY_LOG_WARN, "list: %s", e.msg);
			continue;
		}
		if (n == cap) {
			json_t **more = realloc(entries, (cap ? cap * 2 : 64) *
						sizeof(*entries));

			if (!more) {
				json_decref(entry);
				rc = ferry_error_set(err, -ENOMEM, "out of memory");
				break;
			}
			entries = more;
			cap = cap ? cap * 2 : 64;
		}
		entries[n++] = entry;
	}
	if (dp)
		closedir(dp);
	if (n)
		qsort(entries, n, sizeof(*entries), by_start);
	all = rc == 0 ? json_array() : NULL;
	for (size_t i = 0; i < n; i++) {
		if (all)
			json_array_append(all, entries[i]);
		json_decref(entries[i]);
	}
	free(entries);
	if (rc < 0)
		return rc;
	*out = all ? json_dumps(all, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(all);
	return *out ? 0 : ferry_error_set(err, -ENOMEM, "out of memory");
}
