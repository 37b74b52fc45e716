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
/* Post-copy recovery: how long ferry keeps reconnecting, and its backoff. */
#define MIG_RECOVERY_TIMEOUT_MS 60000
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
	char error_desc[256];
};

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
int mig_hand_socket(struct qmp *q, int *ferry_end, struct ferry_error *err);

/* query-status "status", e.g. "running", "inmigrate", "postmigrate". */
int mig_vm_status(struct qmp *q, char *buf, size_t len, struct ferry_error *err);

#endif /* FERRY_MIG_H */
