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
 * said the source QEMU completed (NULL: none). */
int recover_all(const char *state_dir, const char *source_completed,
		bool *needs_person, struct ferry_error *err);

#endif /* FERRY_RECOVER_H */
