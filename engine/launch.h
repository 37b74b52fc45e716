/*
 * Launched destination QEMUs (ferry serve --launch CMD).
 *
 * The service runs CMD for a migration of VM NAME with the source QEMU's
 * command line (from the migration's CONFIG message) and asks it to start
 * a destination QEMU with -S -incoming defer and its QMP socket at a path
 * the service chooses. The QEMU belongs to the migration: when the
 * migration fails before the destination took over, the service kills it
 * and removes what the launcher created.
 *
 * The contract with CMD (docs/receiving-service.md):
 *   argv:   CMD NAME QMP_PATH
 *   stdin:  the source QEMU's arguments, argv[0] first, each NUL-terminated
 *   env:    FERRY_LAUNCH_STATE_DIR   where the launcher may put its files
 *           FERRY_LAUNCH_ALLOW_DIRS  colon-separated directories a path in
 *                                    the command line may name
 *           FERRY_LAUNCH_BLOCK       "1" for a block migration
 *           FERRY_LAUNCH_DISKS       "ID=SIZE,...": the disks the source
 *                                    migrates, virtual sizes in bytes
 *   stdout: "pid N" (required), "created PATH" for each file it made
 *   exit:   0 once QEMU listens on QMP_PATH; otherwise non-zero, with the
 *           reason on stderr, and nothing left running
 * CMD runs with a bound (LAUNCH_TIMEOUT_MS) and is killed past it.
 *
 * ferry_launch_qemu_main() (ferry.h, launcher.c) is the launcher ferry
 * ships (ferry launch-qemu).
 */
#ifndef FERRY_LAUNCH_H
#define FERRY_LAUNCH_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"
#include "transport/wire.h"

#define LAUNCH_TIMEOUT_MS 30000
/* Files one launch may create (images, the log, the pid file). */
#define LAUNCH_CREATED_MAX 20
/* How much of the launcher's output is kept. */
#define LAUNCH_OUTPUT_MAX 4096
/* How long a killed QEMU may take to exit. */
#define LAUNCH_KILL_TIMEOUT_MS 5000

struct launch_req {
	const char *cmd;
	const char *vm;
	const char *qmp_path;
	const char *state_dir;
	const char *allow_dirs;		/* colon-separated; may be NULL */
	const char *const *argv;	/* the source QEMU's command line */
	uint32_t argc;
	const struct wire_disk *disks;	/* block migration's manifest */
	uint32_t ndisks;
	bool block;
};

struct launch_result {
	int pid;
	char created[LAUNCH_CREATED_MAX][PATH_MAX];
	uint32_t ncreated;
};

/* Run the launcher; 0 with @out filled, or -errno with its reason. */
int launch_run(const struct launch_req *r, struct launch_result *out,
	       struct ferry_error *err);

/* Kill the launched QEMU (bounded wait for its end) and remove what the
 * launch created and @qmp_path. */
void launch_undo(const struct launch_result *res, const char *qmp_path);

#endif /* FERRY_LAUNCH_H */
