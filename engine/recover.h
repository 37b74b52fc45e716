/*
 * ferry recover (see recover.c): every unfinished migration recorded in
 * @state_dir's journal, brought to one running copy of its guest where
 * this side can decide that alone. A line per migration on stdout says
 * what was found and done. *@needs_person is set when one cannot be
 * decided (post-copy split between the hosts, or a destination that
 * holds a whole copy while nobody has said the source stopped for good).
 * 0, or the first error.
 */
#ifndef FERRY_RECOVER_H
#define FERRY_RECOVER_H

#include <stdbool.h>

#include "ferry.h"

/* @source_completed: the id of a migration whose source host's recover
 * said the source QEMU completed (NULL: none). @wait_ms: how long a
 * resumed post-copy waits for its receiver (0: MIG_RECOVERY_TIMEOUT_MS). */
int recover_all(const char *state_dir, const char *source_completed,
		uint32_t wait_ms, bool *needs_person, struct ferry_error *err);

struct journal;

/*
 * migrate.c, for recover on the source host: resume the post-copy of
 * migration @id, whose ferry died, on new connections to the receiver
 * (which takes it back: a live receiver still waiting for it, or one
 * started later on the same state directory), and run it to completion.
 * @m was made from the options the journal recorded.
 */
struct mig_resume {
	const char *id;
	const char *transport;		/* "tunnel", "handoff", "direct" */
	struct journal *journal;	/* the migration's, taken (closed) */
	uint32_t wait_ms;		/* for the receiver; 0: the default */
};

int mig_resume_postcopy(struct ferry_migration *m, const struct mig_resume *rs,
			struct ferry_report *report, struct ferry_error *err);

#endif /* FERRY_RECOVER_H */
