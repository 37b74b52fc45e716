/*
 * Scratch directories for tests and benchmarks that disappear when the
 * process exits: exit() runs an atexit handler, and when a failed assertion
 * ends a forked libcheck test with _exit(), which skips it, the janitor
 * (reaper.c) removes them.
 */
#ifndef FERRY_TMPDIR_H
#define FERRY_TMPDIR_H

#include <stddef.h>

/* Create /tmp/PREFIX.XXXXXX (0700) into @dir; 0 or -errno. */
int tmpdir_make(char *dir, size_t len, const char *prefix);

/* Remove @dir and everything in it now (and forget it). */
void tmpdir_remove(const char *dir);

#endif /* FERRY_TMPDIR_H */
