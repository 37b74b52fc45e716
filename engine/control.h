/*
 * A running migration's control socket (docs/control.md): another
 * terminal or program of the same user aborts it, forces it to complete,
 * or changes its downtime limit. One Unix socket per migration, in
 * STATE_DIR/control/ID.sock (0600, its directory 0700); a peer of another
 * user (SO_PEERCRED) is refused, root excepted. One request line, one
 * answer line:
 *   abort | force-complete | set-downtime MS
 *   ok TEXT | refused TEXT
 */
#ifndef FERRY_CONTROL_H
#define FERRY_CONTROL_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"

#define CTL_DIR "control"
/* A request line, newline included. */
#define CTL_LINE_MAX 64
/* How long a connected client may take to send its line: the migration's
 * own loop answers it. */
#define CTL_READ_MS 200
#define CTL_DOWNTIME_MAX_MS 600000

enum ctl_cmd {
	CTL_ABORT,
	CTL_FORCE_COMPLETE,
	CTL_SET_DOWNTIME,
};

struct ctl_request {
	enum ctl_cmd cmd;
	uint32_t downtime_ms;	/* CTL_SET_DOWNTIME */
	int fd;			/* the client: ctl_answer() closes it */
};

struct ctl {
	int fd;			/* listening; -1: none */
	char path[PATH_MAX];
};

/* Listen on STATE_DIR/control/@id.sock. */
int ctl_open(struct ctl *c, const char *state_dir, const char *id,
	     struct ferry_error *err);
/* Stop listening and remove the socket. NULL-safe, idempotent. */
void ctl_close(struct ctl *c);

/*
 * A pending client's request (poll said c->fd is readable): 1 with @req
 * to act on and answer, 0 when there was nothing to act on (a stranger,
 * a bad line: answered and closed here).
 */
int ctl_take(struct ctl *c, struct ctl_request *req);
void ctl_answer(struct ctl_request *req, bool ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif /* FERRY_CONTROL_H */
