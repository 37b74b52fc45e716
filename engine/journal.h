/*
 * The migration journal: each side records every migration it takes part
 * in, so that whatever dies, `ferry recover` can tell which copy of the
 * guest is whole (docs/journal.md has the format).
 *
 * One append-only file per migration and side:
 *   STATE_DIR/migrations/ID.source.jsonl, ID.destination.jsonl
 * One JSON object per line, the step that is about to be taken (or the
 * outcome), written and synced (fdatasync) before the step: a line that is
 * there may not have happened yet, a step that happened is always there.
 * A torn last line (a crash mid-write) is ignored by the reader.
 */
#ifndef FERRY_JOURNAL_H
#define FERRY_JOURNAL_H

#include <jansson.h>
#include <stdbool.h>

#include "ferry.h"

#define JOURNAL_VERSION 1
#define JOURNAL_DIR "migrations"
/* A journal file larger than this is not read (it is not ours). */
#define JOURNAL_FILE_MAX (1u << 20)

/* The states a journal records (the "state" field). */
#define JOURNAL_STARTED "started"	/* both: the migration begins */
#define JOURNAL_STREAMING "streaming"	/* source: QEMU migrates from here */
#define JOURNAL_INCOMING "incoming"	/* destination: QEMU takes a stream */
#define JOURNAL_POSTCOPY "postcopy"	/* source: switching to post-copy */
#define JOURNAL_SWITCHOVER "switchover"	/* source: FINISH to the receiver */
#define JOURNAL_RESUMING "resuming"	/* destination: cont the guest */
#define JOURNAL_COMPLETED "completed"	/* terminal */
#define JOURNAL_FAILED "failed"		/* terminal: the source guest runs */
#define JOURNAL_UNRESOLVED "unresolved"	/* not terminal: ferry stopped, and
					   which copy is whole is for
					   ferry recover to find out */
#define JOURNAL_RECOVERED "recovered"	/* terminal: ferry recover decided */

struct journal;

/*
 * Create (0700) STATE_DIR and its migrations/ directory if needed and
 * open the journal of migration @id on @side ("source", "destination"),
 * locked (flock) for as long as it is open: -EBUSY when a live ferry
 * holds it. A torn last line is cut off first.
 */
int journal_open(struct journal **out, const char *state_dir, const char *id,
		 const char *side, struct ferry_error *err);

/*
 * Append {"v":1,"t_ms":<unix ms>,"state":@state, ...@fields} and sync.
 * @fields (may be NULL) is consumed. A journal that cannot be written
 * fails the step: ferry does not act unrecorded.
 */
int journal_step(struct journal *j, const char *state, json_t *fields,
		 struct ferry_error *err);

/* NULL is fine. */
void journal_close(struct journal *j);

/* Whether @state ends a migration. */
bool journal_terminal(const char *state);

/*
 * Read a journal file: every complete line, in order, as a JSON array of
 * objects (a torn last line is dropped). -EINVAL for a file that is not
 * a ferry journal of a version this reads.
 */
int journal_read(const char *path, json_t **lines, struct ferry_error *err);

#endif /* FERRY_JOURNAL_H */
