/*
 * ferry recover: after a crash, bring each unfinished migration of this
 * host to exactly one running copy of its guest, from the journal (what
 * ferry was doing, docs/journal.md) and the QEMU's own state (what
 * happened). Each side decides what it can alone:
 *
 *   source, QEMU's migration completed: the destination holds the whole
 *       guest; the source stays stopped (recover the destination);
 *   source, migration still streaming without ferry, before the
 *       switchover: cancelled; the source guest runs (as it was);
 *   source, migration failed or cancelled: the source guest runs (as it
 *       was), and what ferry left in QEMU is cleared;
 *   destination, incoming migration completed: it holds a whole copy,
 *       but a source QEMU whose return path broke at the very end fails
 *       and runs its guest again: resumed (unless the migration asked to
 *       leave it paused) only when the source host's recover said its QEMU
 *       completed (--source-completed ID); else it stays paused;
 *   destination, anything else: it does not hold the guest; nothing to do;
 *   either side in post-copy: the guest's memory is split between the
 *       hosts; both stay paused, nothing is guessed, and the message says
 *       so (resuming it needs both ferry processes: not built yet).
 * A migration recovered is marked so in its journal (state "recovered").
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "blk.h"
#include "journal.h"
#include "mig.h"
#include "recover.h"
#include "transport/wire.h"
#include "util.h"

/* How long a cancelled migration may take to leave the active states. */
#define RECOVER_CANCEL_MS 10000
#define RECOVER_POLL_MS 50

struct recovery {
	const char *id, *side, *qmp, *last, *source_completed;
	bool was_running, paused;
	char outcome[FERRY_ERROR_MSG_MAX];
	bool needs_person;
};

static int vm_cont(struct qmp *q, struct ferry_error *err)
{
	return qmp_execute(q, "cont", NULL, NULL, MIG_QMP_TIMEOUT_MS, err);
}

static void wait_inactive(struct qmp *q, struct mig_info *info)
{
	uint64_t deadline = ferry_now_ms() + RECOVER_CANCEL_MS;

	while (ferry_now_ms() < deadline && mig_query(q, info, NULL) == 0 &&
	       mig_state_active(info->state))
		usleep(RECOVER_POLL_MS * 1000);
}

/* Post-copy (by QEMU or the journal): nothing can be decided alone. */
static bool split_in_postcopy(struct recovery *r, const struct mig_info *info)
{
	if (!mig_state_postcopy(info->state) && strcmp(r->last, JOURNAL_POSTCOPY))
		return false;
	r->needs_person = true;
	snprintf(r->outcome, sizeof(r->outcome), "post-copy was running (QEMU: "
		 "'%s'): the guest's memory is split between the hosts; both "
		 "stay paused, nothing is guessed", info->status);
	return true;
}

static int recover_source(struct recovery *r, struct qmp *q,
			  struct mig_info *info, struct ferry_error *err)
{
	char status[32];
	bool past_switchover = !strcmp(r->last, JOURNAL_SWITCHOVER);

	if (info->state == MIG_S_COMPLETED) {
		snprintf(r->outcome, sizeof(r->outcome), "the source QEMU completed "
			 "its migration: the destination holds the whole guest; "
			 "the source stays stopped. On the destination host run: "
			 "ferry recover --source-completed %s", r->id);
		return 0;
	}
	if (split_in_postcopy(r, info))
		return 0;
	if (mig_state_active(info->state) && past_switchover) {
		r->needs_person = true;
		snprintf(r->outcome, sizeof(r->outcome), "the switchover had "
			 "started and QEMU is still '%s': run ferry recover again "
			 "once it has finished", info->status);
		return 0;
	}
	if (mig_state_active(info->state)) {
		/* Streaming without ferry before the switchover: the source
		 * still holds the whole guest; stop the stream there. */
		qmp_execute(q, "migrate_cancel", NULL, NULL, MIG_QMP_TIMEOUT_MS, NULL);
		wait_inactive(q, info);
		if (mig_state_active(info->state))
			return ferry_error_set(err, -ETIMEDOUT, "the source QEMU's "
					       "migration is still '%s' after "
					       "migrate_cancel", info->status);
		/* It completed before the cancel took: as above. */
		if (info->state == MIG_S_COMPLETED)
			return recover_source(r, q, info, err);
	}
	if (blk_clear_stale(q, err) < 0)
		return -EIO;
	if (mig_vm_status(q, status, sizeof(status), err) < 0)
		return -EIO;
	if (r->was_running && strcmp(status, "running") != 0 && vm_cont(q, err) < 0)
		return ferry_error_prefix(err, "resuming the source guest: ");
	snprintf(r->outcome, sizeof(r->outcome), "the switchover never happened "
		 "(QEMU: '%s'): the source guest %s", info->status,
		 r->was_running ? "runs" : "stays paused, as it was");
	return 0;
}

static int recover_destination(struct recovery *r, struct qmp *q,
			       struct mig_info *info, struct ferry_error *err)
{
	char status[32];

	if (split_in_postcopy(r, info))
		return 0;
	if (mig_state_active(info->state)) {
		r->needs_person = true;
		snprintf(r->outcome, sizeof(r->outcome), "the destination QEMU is "
			 "still loading ('%s'): run ferry recover again once it "
			 "has finished", info->status);
		return 0;
	}
	if (info->state != MIG_S_COMPLETED) {
		snprintf(r->outcome, sizeof(r->outcome), "the destination QEMU's "
			 "migration is '%s': it does not hold the guest (the "
			 "source does)", info->status[0] ? info->status : "none");
		return 0;
	}
	if (!r->source_completed || strcmp(r->source_completed, r->id) != 0) {
		r->needs_person = true;
		snprintf(r->outcome, sizeof(r->outcome), "the destination QEMU "
			 "completed: it holds a whole copy, paused. Only the source "
			 "host can tell whether the source stopped for good: run "
			 "ferry recover there; if it says the source completed, run "
			 "ferry recover --source-completed %s here", r->id);
		return 0;
	}
	if (mig_vm_status(q, status, sizeof(status), err) < 0)
		return -EIO;
	if (!r->paused && strcmp(status, "running") != 0 && vm_cont(q, err) < 0)
		return ferry_error_prefix(err, "resuming the destination guest: ");
	snprintf(r->outcome, sizeof(r->outcome), "the destination QEMU completed: "
		 "it holds the whole guest, which %s", r->paused ?
		 "stays paused, as the migration asked" : "runs");
	return 0;
}

/* One journal file; *@needs_person set when it needs one. */
static int recover_file(const char *state_dir, const char *name,
			const char *source_completed, bool *needs_person,
			struct ferry_error *err)
{
	char path[PATH_MAX];
	struct recovery r = { .source_completed = source_completed };
	struct mig_info info = { 0 };
	struct journal *j = NULL;
	json_t *lines, *first;
	struct qmp *q;
	int rc;

	snprintf(path, sizeof(path), "%s/%s/%s", state_dir, JOURNAL_DIR, name);
	rc = journal_read(path, &lines, err);
	if (rc < 0)
		return rc;
	first = json_array_get(lines, 0);
	r.last = json_string_value(json_object_get(
			json_array_get(lines, json_array_size(lines) - 1), "state"));
	if (!first || journal_terminal(r.last))
		goto out_lines;
	r.id = json_string_value(json_object_get(first, "id"));
	r.side = json_string_value(json_object_get(first, "side"));
	r.qmp = json_string_value(json_object_get(first, "qmp"));
	r.was_running = json_is_true(json_object_get(first, "was_running"));
	r.paused = json_is_true(json_object_get(first, "paused"));
	/* The id names a file: one safe path component, like a VM name. */
	if (!r.id || !r.side || !r.qmp || !wire_vm_name_valid(r.id)) {
		rc = ferry_error_set(err, -EINVAL, "%s: no id, side or QMP socket "
				     "in its first entry", path);
		goto out_lines;
	}
	/* Its owner holds the journal while it lives: leave it be. */
	rc = journal_open(&j, state_dir, r.id, r.side, err);
	if (rc == -EBUSY) {
		printf("migration %s (%s): in progress (a live ferry holds its "
		       "journal)\n", r.id, r.side);
		rc = 0;
	}
	if (!j)
		goto out_lines;
	q = qmp_connect(r.qmp, MIG_QMP_TIMEOUT_MS, err);
	if (!q && err->code != -ENOENT && err->code != -ECONNREFUSED) {
		/* Connected, no greeting: another client holds QEMU's one
		 * QMP connection. It is not gone. */
		r.needs_person = true;
		snprintf(r.outcome, sizeof(r.outcome), "its QEMU (%s) does not "
			 "answer (%s): run ferry recover again when nothing else "
			 "holds its QMP socket", r.qmp, err->msg);
		rc = 0;
	} else if (!q) {
		snprintf(r.outcome, sizeof(r.outcome), "its QEMU (%s) is gone: %s",
			 r.qmp, !strcmp(r.side, "source") ?
			 "the guest lives on only if the destination took over" :
			 "the destination does not hold the guest");
		rc = 0;
	} else {
		rc = mig_query(q, &info, err);
		if (rc == 0)
			rc = !strcmp(r.side, "source") ?
			     recover_source(&r, q, &info, err) :
			     recover_destination(&r, q, &info, err);
		qmp_close(q);
	}
	if (rc == 0) {
		printf("migration %s (%s): %s\n", r.id, r.side, r.outcome);
		fflush(stdout);
		ferry_log(FERRY_LOG_INFO, "recover: migration %s (%s): %s", r.id,
			  r.side, r.outcome);
		*needs_person |= r.needs_person;
		/* Done with it, unless a person must decide. */
		if (!r.needs_person)
			rc = journal_step(j, JOURNAL_RECOVERED,
					  json_pack("{s:s}", "outcome", r.outcome),
					  err);
	}
	journal_close(j);
out_lines:
	json_decref(lines);
	return rc;
}

int recover_all(const char *state_dir, const char *source_completed,
		bool *needs_person, struct ferry_error *err)
{
	char dir[PATH_MAX];
	struct dirent *e;
	int rc = 0, n = 0;
	DIR *d;

	*needs_person = false;
	snprintf(dir, sizeof(dir), "%s/%s", state_dir, JOURNAL_DIR);
	d = opendir(dir);
	if (!d) {
		if (errno == ENOENT) {
			printf("no migrations recorded in %s\n", state_dir);
			return 0;
		}
		return ferry_error_set(err, -errno, "cannot read %s: %s", dir,
				       strerror(errno));
	}
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		struct ferry_error one = { 0 };

		if (len < 7 || strcmp(e->d_name + len - 6, ".jsonl"))
			continue;
		n++;
		if (recover_file(state_dir, e->d_name, source_completed,
				 needs_person, &one) < 0) {
			fprintf(stderr, "ferry recover: %s\n", one.msg);
			if (!rc) {
				rc = one.code ? one.code : -EIO;
				*err = one;
			}
		}
	}
	closedir(d);
	if (!n)
		printf("no migrations recorded in %s\n", state_dir);
	return rc;
}
