/*
 * ferry's CLI as child processes of a test: spawned with PDEATHSIG (a
 * test that dies takes them along), stdout captured or discarded, exit
 * status decoded. And free loopback ports for them to listen on.
 */
#ifndef FERRY_PROC_H
#define FERRY_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry.h"

/* Start @argv (argv[0] a path). With @stdout_fd, the child's stdout is
 * the write end of a pipe whose read end lands there; without, it is
 * /dev/null. 0 or -errno with @err set. */
int proc_spawn(char *const argv[], int *stdout_fd, pid_t *pid,
	       struct ferry_error *err);

/* Read @fd to its end into @out (NUL-terminated, truncated to fit) and
 * close it; the number of bytes kept. */
size_t proc_read_all(int fd, char *out, size_t outlen);

/* Wait for @pid: its exit code, or 128 + the signal that killed it. */
int proc_wait(pid_t pid);

/* A loopback TCP port that nothing listens on right now. */
uint16_t proc_free_port(void);

/* Wait until something accepts connections on 127.0.0.1:@port. */
int proc_wait_port(uint16_t port, int timeout_ms, struct ferry_error *err);

/* `ferry receive --listen 127.0.0.1:PORT --qmp QMP --once`, from
 * $FERRY_BIN, listening when this returns. */
int proc_spawn_receiver(const char *qmp_path, uint16_t port, pid_t *pid,
			struct ferry_error *err);

/* `ferry recover --state-dir @dir [@opt @val]`: its exit status (or
 * -errno with @err set), its stdout in @out. */
int proc_recover(const char *dir, const char *opt, const char *val, char *out,
		 size_t len, struct ferry_error *err);

/* `ferry list --state-dir @dir --json` for the journal's one migration
 * of @side ("source", "destination"): its "status" into @status. */
int proc_list_status(const char *dir, const char *side, char *status,
		     size_t len, struct ferry_error *err);

/* Whether the journal in @dir of a migration's @side has a line with
 * @text (e.g. "\"state\":\"switchover\""). */
bool proc_journal_has(const char *dir, const char *side, const char *text);

#endif /* FERRY_PROC_H */
