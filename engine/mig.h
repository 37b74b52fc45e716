/*
 * Engine internals shared by the source side (migrate.c), the receiving
 * side (receiver.c) and the CLI: the QEMU operations a migration needs,
 * expressed over QMP.
 */
#ifndef FERRY_MIG_H
#define FERRY_MIG_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"
#include "qmp/qmp.h"

/* Bound on one QMP command during a migration. */
#define MIG_QMP_TIMEOUT_MS 10000
/* The fd name under which ferry hands QEMU its end of the tunnel. */
#define MIG_FDNAME "ferry-mig"
/*
 * "Unlimited" bandwidth: QEMU 7.2 defaults to 128 MiB/s, so ferry always
 * sets a value. 1 TiB/s is beyond any link and within QEMU's range.
 */
#define MIG_BANDWIDTH_UNLIMITED (1ull << 40)
/* After the source completes: bound on the destination finishing. */
#define MIG_FINISH_TIMEOUT_MS 60000
/* A QEMU whose QMP socket died: how long its process may take to show
 * as exited in /proc (it closes its files first). */
#define MIG_QEMU_EXIT_WAIT_MS 1000
/* Post-copy recovery: how long ferry keeps reconnecting, and its backoff. */
#define MIG_RECOVERY_TIMEOUT_MS FERRY_DEFAULT_RECOVERY_WAIT_MS
#define MIG_RECOVERY_BACKOFF_MIN_MS 250
#define MIG_RECOVERY_BACKOFF_MAX_MS 4000
/* After the source QEMU's migration failed: how long the receiver has to
 * say whether the destination failed first. */
#define MIG_PEER_VERDICT_MS 3000
/* Bound on QEMU acknowledging migrate_cancel. */
#define MIG_CANCEL_TIMEOUT_MS 10000

/*
 * QEMU's MigrationStatus (qapi/migration.json, 7.2), parsed once where
 * query-migrate is read (mig_query); the code decides on this, the text
 * is kept for messages.
 */
enum mig_state {
	MIG_S_NONE, MIG_S_SETUP, MIG_S_CANCELLING, MIG_S_CANCELLED,
	MIG_S_ACTIVE, MIG_S_POSTCOPY_ACTIVE, MIG_S_POSTCOPY_PAUSED,
	MIG_S_POSTCOPY_RECOVER, MIG_S_COMPLETED, MIG_S_FAILED, MIG_S_COLO,
	MIG_S_PRE_SWITCHOVER, MIG_S_DEVICE, MIG_S_WAIT_UNPLUG,
	MIG_S_UNKNOWN,		/* a status this ferry does not know */
};

enum mig_state mig_state_parse(const char *status);
/* Still going: setup, active, the switchover, post-copy, cancelling. */
bool mig_state_active(enum mig_state s);

static inline bool mig_state_postcopy(enum mig_state s)
{
	return s == MIG_S_POSTCOPY_ACTIVE || s == MIG_S_POSTCOPY_PAUSED ||
	       s == MIG_S_POSTCOPY_RECOVER;
}

/* What query-migrate says, the fields ferry uses. */
struct mig_info {
	char status[32];	/* QEMU's text, for messages */
	enum mig_state state;	/* what the code decides on */
	uint64_t total_time_ms;
	uint64_t downtime_ms;
	uint64_t setup_time_ms;
	uint64_t ram_total;
	uint64_t ram_transferred;
	uint64_t ram_remaining;
	uint64_t dirty_sync_count;
	uint64_t dirty_pages_rate;
	uint64_t page_size;
	uint64_t postcopy_requests;
	double mbps;		/* QEMU's measured throughput, Mbit/s */
	uint32_t throttle_pct;	/* cpu-throttle-percentage */
	uint64_t incoming_port;	/* destination, tcp incoming: bound port */
	uint32_t postcopy_blocktime_ms;	/* or MIG_BLOCKTIME_UNKNOWN */
	char error_desc[256];
};

#define MIG_BLOCKTIME_UNKNOWN UINT32_MAX
int mig_query(struct qmp *q, struct mig_info *info, struct ferry_error *err);

/* Status strings of query-migrate that mean "still going". */
bool mig_status_active(const char *status);

/* Guest RAM (query-memory-size-summary base-memory + plugged-memory). */
int mig_ram_size(struct qmp *q, uint64_t *bytes, struct ferry_error *err);

/*
 * Capabilities and parameters ferry relies on, set explicitly on both
 * sides so that no QEMU default is inherited by accident.
 */
struct mig_params {
	uint64_t max_bandwidth_bytes_per_s;
	uint32_t downtime_ms;
	bool postcopy;		/* capability postcopy-ram (both sides) */
	bool blocktime;		/* postcopy-blocktime (destination, post-copy) */
	bool preempt;		/* postcopy-preempt: urgent pages on a channel
				   of their own (both sides; socket URIs) */
	bool auto_converge;	/* source only, with the throttle below */
	uint32_t throttle_initial_pct, throttle_increment_pct, throttle_max_pct;
	bool throttle_tailslow;
	/* --block: QEMU stops before the switchover (pre-switchover) until
	 * ferry has drained the disk mirrors (source only). */
	bool pause_before_switchover;
};

int mig_setup_qemu(struct qmp *q, const struct mig_params *p,
		   struct ferry_error *err);

int mig_set_downtime(struct qmp *q, uint32_t ms, struct ferry_error *err);
int mig_set_capability(struct qmp *q, const char *name, bool on,
		       struct ferry_error *err);
/* Migration capability @name: 1 on, 0 off, -1 unknown to this QEMU (or
 * it could not say). */
int mig_capability(struct qmp *q, const char *name);
/*
 * QEMU's max-bandwidth (and max-postcopy-bandwidth) from now on, also
 * for a migration that runs (MIG_BANDWIDTH_UNLIMITED: none).
 */
int mig_set_bandwidth(struct qmp *q, uint64_t bytes_per_s,
		      struct ferry_error *err);

/*
 * QEMU's calc-dirty-rate (page sampling) over @seconds: start it, then
 * poll; the poll returns 1 with the guest's dirty rate in B/s once
 * measured, 0 while measuring. It runs alongside a migration.
 */
int mig_dirty_rate_start(struct qmp *q, uint32_t seconds, struct ferry_error *err);
int mig_dirty_rate_poll(struct qmp *q, uint64_t *bytes_per_s,
			struct ferry_error *err);

/*
 * Give QEMU a copy of @fd as MIG_FDNAME (the caller keeps its own). A TCP
 * socket gets keepalives and a user timeout first, since ferry no longer
 * watches it. mig_drop_fd() closes QEMU's copy when it was not used.
 */
int mig_give_fd(struct qmp *q, int fd, struct ferry_error *err);
void mig_drop_fd(struct qmp *q);

/* Create the tunnel socketpair and hand one end to QEMU as MIG_FDNAME. */
int mig_hand_socket(struct qmp *q, uint32_t buf_bytes, int *ferry_end,
		    struct ferry_error *err);

/* query-status "status", e.g. "running", "inmigrate", "postmigrate". */
int mig_vm_status(struct qmp *q, char *buf, size_t len, struct ferry_error *err);

/*
 * ---- QEMU commands as C functions (qemu_ops.c) --------------------------
 *
 * The arguments are C values and the JSON is built and read in
 * qemu_ops.c, so that the engine's other files hold no command names or
 * argument shapes. Each waits MIG_QMP_TIMEOUT_MS and returns 0 or -errno
 * with @err filled (the QMP client's message, which names the command);
 * @err may be NULL where the caller ignores the failure.
 */

/* stop: pause the guest's vCPUs. */
int qemu_stop(struct qmp *q, struct ferry_error *err);

/*
 * Bounds on what the query functions copy out: far more than QEMU holds
 * during a migration (ferry's own at most WIRE_DISKS_MAX of each). More
 * is refused with -E2BIG.
 */
#define QEMU_BLOCK_JOBS_MAX 64
#define QEMU_BLOCK_EXPORTS_MAX 64
#define QEMU_NODE_NAMES_MAX 64
/* Names longer than a buffer are cut; ferry's own are far shorter. */
#define QEMU_ID_MAX 128

/* One entry of query-block-jobs, the fields ferry uses. A field QEMU
 * left out reads as "" or 0. */
struct qemu_block_job {
	char id[QEMU_ID_MAX];		/* "device": the job id */
	char status[32];		/* e.g. "running", "ready", "concluded" */
	uint64_t offset, len;		/* progress, bytes */
	bool ready;
	bool failed;			/* QEMU reported an "error" */
	char error[FERRY_ERROR_MSG_MAX];	/* its text */
};

/* query-block-jobs: the jobs in QEMU's order into @jobs (at most @max). */
int qemu_query_block_jobs(struct qmp *q, struct qemu_block_job *jobs,
			  size_t max, size_t *n, struct ferry_error *err);

/* block-job-cancel of job @id. @force: stop at once; without it a ready
 * mirror ends with its target in sync (and does not pivot). */
int qemu_block_job_cancel(struct qmp *q, const char *id, bool force,
			  struct ferry_error *err);

/* job-dismiss: remove concluded job @id. */
int qemu_job_dismiss(struct qmp *q, const char *id, struct ferry_error *err);

/*
 * query-named-block-nodes (flat): the node names that start with @prefix,
 * at most @max of them into @names.
 */
struct qemu_node_name {
	char name[QEMU_ID_MAX];
};

int qemu_query_node_names(struct qmp *q, const char *prefix,
			  struct qemu_node_name *names, size_t max, size_t *n,
			  struct ferry_error *err);

/*
 * query-block: QEMU's reply (an array, a new reference the caller
 * releases), read field by field by blk_query.c.
 */
int qemu_query_block(struct qmp *q, json_t **ret, struct ferry_error *err);

/*
 * blockdev-add of an NBD client node @node on the unix socket @sock,
 * opening export @export.
 */
int qemu_blockdev_add_nbd(struct qmp *q, const char *node, const char *sock,
			  const char *export, struct ferry_error *err);

/* blockdev-del of node @node. */
int qemu_blockdev_del(struct qmp *q, const char *node, struct ferry_error *err);

/*
 * blockdev-mirror: a full copy of @device into node @target as job @job,
 * auto-dismiss off (a failed job stays in query-block-jobs with its error
 * until dismissed). @write_blocking: a guest write completes once the
 * target has it too (copy-mode write-blocking, else background).
 */
struct qemu_mirror {
	const char *job, *device, *target;
	bool write_blocking;
};

int qemu_blockdev_mirror(struct qmp *q, const struct qemu_mirror *m,
			 struct ferry_error *err);

/* nbd-server-start on the unix socket @sock; nbd-server-stop. */
int qemu_nbd_server_start_unix(struct qmp *q, const char *sock,
			       struct ferry_error *err);
int qemu_nbd_server_stop(struct qmp *q, struct ferry_error *err);

/*
 * Migration capability late-block-activate (destination): QEMU does not
 * activate the disks when the migration ends, only when the guest is
 * resumed (cont).
 */
int qemu_late_block_activate(struct qmp *q, struct ferry_error *err);

/* block-export-add: NBD export @id of node @node under the name @name. */
int qemu_block_export_add_nbd(struct qmp *q, const char *id, const char *node,
			      const char *name, bool writable,
			      struct ferry_error *err);

/* block-export-del of export @id; @hard closes its connections at once. */
int qemu_block_export_del(struct qmp *q, const char *id, bool hard,
			  struct ferry_error *err);

/* One entry of query-block-exports. */
struct qemu_block_export {
	char id[QEMU_ID_MAX];
	char node_name[QEMU_ID_MAX];
};

/* query-block-exports into @ex (at most @max). */
int qemu_query_block_exports(struct qmp *q, struct qemu_block_export *ex,
			     size_t max, size_t *n, struct ferry_error *err);

/* The migration's own commands. */
/* cont: run the guest (during an incoming migration: once loaded). */
int qemu_cont(struct qmp *q, struct ferry_error *err);
/* migrate to @uri; @resume: a paused post-copy, on a new channel. */
int qemu_migrate(struct qmp *q, const char *uri, bool resume,
		 struct ferry_error *err);
/* migrate-incoming from @uri, or (@recover) migrate-recover: a paused
 * post-copy's new channel. */
int qemu_migrate_incoming(struct qmp *q, const char *uri, bool recover,
			  struct ferry_error *err);
int qemu_migrate_start_postcopy(struct qmp *q, struct ferry_error *err);
/* migrate-continue from the paused @state ("pre-switchover"). */
int qemu_migrate_continue(struct qmp *q, const char *state,
			  struct ferry_error *err);
/* migrate-pause: post-copy's stream stops, for a recovery. */
int qemu_migrate_pause(struct qmp *q, struct ferry_error *err);
int qemu_migrate_cancel(struct qmp *q, struct ferry_error *err);

/* What the guest of @q is made of: machine type, CPU model, the devices
 * added with -device (sorted), for the GUEST pre-check. */
struct wire_guest;
int qemu_guest_describe(struct qmp *q, struct wire_guest *g,
			struct ferry_error *err);

/*
 * A CPU model both hosts run, for the pre-check's advice: the source
 * guest's own model (@g->cpu) when @q (the destination) runs it as it is;
 * else, of the models @q runs, the one with the most features whose
 * every feature the source's guest has (so the source host runs it too),
 * leaving out @here_type, @q's own CPU type. @out gets its name, or ""
 * when none fits.
 */
int qemu_cpu_common_model(struct qmp *q, const struct wire_guest *g,
			  const char *here_type, char *out, size_t len,
			  struct ferry_error *err);

/* Whether process @pid (a QEMU, from its QMP socket's peer) has exited:
 * gone, or a zombie its parent has not reaped yet. */
bool qemu_process_gone(int pid);

#endif /* FERRY_MIG_H */
