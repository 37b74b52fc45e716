/*
 * ferry recover (recover.c; ferry_recover() in ferry.h): every unfinished
 * migration recorded in a state directory's journal, brought to one
 * running copy of its guest where this side can decide that alone.
 */
#ifndef FERRY_RECOVER_H
#define FERRY_RECOVER_H

#include <stdbool.h>

#include "ferry.h"

/* The first size of struct ferry_recover_opts (libferry 0.1.0). */
#define ABI0_RECOVER_OPTS_SIZE 40

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
	bool was_running;		/* the guest ran when it began */
};

int mig_resume_postcopy(struct ferry_migration *m, const struct mig_resume *rs,
			struct ferry_report *report, struct ferry_error *err);

#endif /* FERRY_RECOVER_H */
