/*
 * libferry: live migration of QEMU virtual machines without libvirt.
 *
 * The public API is small on purpose. A program that embeds ferry runs one
 * side of a migration:
 *
 *   - the source side, next to the source QEMU: ferry_migration_new(),
 *     ferry_migration_run(), ferry_migration_cancel(), ferry_migration_free();
 *   - the receiving side, next to the destination QEMU: ferry_receiver_new(),
 *     ferry_receiver_run(), ferry_receiver_stop(), ferry_receiver_free().
 *
 * Every function that can fail returns 0 (or a pointer) on success and a
 * negative errno (or NULL) on failure, and fills the caller's struct
 * ferry_error with a message that says what failed and with which input.
 *
 * This header compiles on its own with -std=c11 -pedantic.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_VERSION_STRING "0.1.0"
/* The version of the JSON that ferry writes: report, events, progress
 * (docs/schema/). Fields are only added within a version. */
#define FERRY_JSON_SCHEMA 1

/*
 * The version of the library a program runs with (FERRY_VERSION_STRING is
 * the one it was compiled against). libferry.so.0 keeps its ABI within
 * 0.x: functions are only added; docs/libferry.md has the rules.
 */
const char *ferry_version(void);

/* Longest error message kept; longer messages are truncated, never lost. */
#define FERRY_ERROR_MSG_MAX 512

struct ferry_error {
	int code;			/* negative errno, 0 when no error */
	char msg[FERRY_ERROR_MSG_MAX];	/* human-readable, NUL-terminated */
};

/*
 * Record an error and return @code (a negative errno), so that a caller can
 * write `return ferry_error_set(err, -EIO, "...", ...)`. @err may be NULL.
 */
int ferry_error_set(struct ferry_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Prepend context to an error already recorded ("connecting to receiver: " +
 * old message). Returns err->code. @err may be NULL.
 */
int ferry_error_prefix(struct ferry_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Phases of a migration as the source side sees them. */
enum ferry_phase {
	FERRY_PHASE_INIT = 0,
	FERRY_PHASE_CONNECT,	/* QMP and receiver connections */
	FERRY_PHASE_SETUP,	/* capabilities and parameters on both sides */
	FERRY_PHASE_PRECOPY,	/* QEMU is streaming RAM while the guest runs */
	FERRY_PHASE_COMPLETING,	/* source done, waiting for the destination */
	FERRY_PHASE_CANCELLING,
	FERRY_PHASE_DONE,
	FERRY_PHASE_FAILED,
	FERRY_PHASE_DISKS,	/* --block: QEMU mirrors the disks, before RAM */
};

const char *ferry_phase_name(enum ferry_phase phase);

/* One progress sample, delivered to the progress callback. */
struct ferry_progress {
	enum ferry_phase phase;
	uint64_t elapsed_ms;
	uint64_t pass;			/* QEMU dirty-sync count */
	uint64_t ram_total_bytes;	/* guest RAM size */
	uint64_t ram_transferred_bytes;	/* QEMU's count of RAM sent */
	uint64_t ram_remaining_bytes;
	uint64_t stream_bytes;		/* bytes of QEMU's migration stream */
	uint64_t wire_bytes;		/* bytes of the migration on the network */
	uint64_t throughput_bytes_per_s;	/* over the last sample period */
	uint64_t dirty_pages_rate;	/* pages/s, as QEMU reports it */
	bool postcopy;			/* switched to post-copy */
	uint64_t eta_ms;		/* the policy's estimate of the time
					 * left; 0: none yet */
	uint64_t disk_total_bytes;	/* --block: what the mirrors copy */
	uint64_t disk_done_bytes;	/* ... and have copied so far */
	char migration_id[37];		/* UUID text */
	/* How far off eta_ms may be, as it stands now: eta_ms never drops by
	 * more than the error of the sample before (it may rise). */
	uint64_t eta_error_ms;
};

typedef void (*ferry_progress_fn)(const struct ferry_progress *p, void *opaque);

/*
 * Compression of the migration stream on ferry's transport. AUTO (the
 * default) picks per frame from what it measures: link throughput,
 * compressor throughput and the ratio of recent data.
 */
enum ferry_codec {
	FERRY_CODEC_AUTO = 0,
	FERRY_CODEC_NONE = 1,
	FERRY_CODEC_LZ4 = 2,
	FERRY_CODEC_ZSTD = 3,
};

/* "none", "lz4", "zstd", "auto" */
const char *ferry_codec_name(enum ferry_codec codec);

/*
 * Parse "none|lz4|zstd[:LEVEL]|auto". @level gets the zstd level (0 when
 * none given: the default, 1). Returns 0 or -EINVAL with @err set.
 */
int ferry_codec_parse(const char *spec, enum ferry_codec *codec, int *level,
		      struct ferry_error *err);

/*
 * TLS on ferry's connections (TLS 1.3, both peers authenticated).
 *   x509: creds_dir holds QEMU's and libvirt's layout: ca-cert.pem, and
 *         server-cert.pem + server-key.pem (receiver) or client-cert.pem +
 *         client-key.pem (source).
 *   PSK:  psk_file holds lines "identity:hexkey" (QEMU's keys.psk format).
 * Neither set means plaintext, which ferry refuses on a non-loopback
 * address unless insecure is set.
 */
struct ferry_tls_opts {
	const char *creds_dir;
	const char *psk_file;
	const char *psk_identity;	/* which line of psk_file; NULL: first */
	const char *hostname;		/* source: name the server cert must
					   carry; NULL: the --to host */
	bool insecure;			/* allow plaintext off loopback */
};

/* When to switch to post-copy (the destination runs, pulls what is left). */
enum ferry_postcopy_mode {
	FERRY_POSTCOPY_NEVER = 0,
	FERRY_POSTCOPY_AUTO = 1,	/* when the policy says so */
	FERRY_POSTCOPY_AFTER_PASS = 2,	/* after pass N (postcopy_after_pass) */
};

/* What happens when the migration runs past timeout_s. */
enum ferry_timeout_action {
	FERRY_TIMEOUT_ABORT = 0,	/* cancel; the source runs on */
	FERRY_TIMEOUT_POSTCOPY = 1,	/* switch to post-copy (abort if off) */
	FERRY_TIMEOUT_PAUSE = 2,	/* pause the source: the rest is downtime */
};

struct ferry_policy;

/*
 * How the migration converges (include/ferry_policy.h). downtime_ms in
 * ferry_migrate_opts is the longest pause the user accepts; the policy
 * decides how to get there.
 */
struct ferry_converge_opts {
	const struct ferry_policy *policy;	/* NULL: "predict" */
	uint32_t downtime_steps;		/* 0: 10 (Nova's default) */
	uint32_t downtime_step_delay_s_per_gib;	/* 0: 75 (Nova's default) */
	bool auto_converge;			/* QEMU's CPU throttle */
	uint32_t throttle_initial_pct;		/* 0: QEMU's default (20) */
	uint32_t throttle_increment_pct;	/* 0: QEMU's default (10) */
	uint32_t throttle_max_pct;		/* 0: QEMU's default (99) */
	bool throttle_tailslow;
	enum ferry_postcopy_mode postcopy;
	uint32_t postcopy_after_pass;
	enum ferry_timeout_action timeout_action;
	const char *events_path;	/* JSON lines of every decision */
};

/* How QEMU's mirror keeps up with a guest that writes during the copy. */
enum ferry_block_mode {
	/* Guest writes mark blocks dirty; the mirror copies them again. */
	FERRY_BLOCK_BACKGROUND = 0,
	/* QEMU's write-blocking copy mode: a guest write completes only once
	 * the mirror target (ferry, which queues it for the destination in
	 * order) has it too, so the guest cannot outrun the copy. */
	FERRY_BLOCK_WRITE_BLOCKING = 1,
};

/*
 * Block migration (Nova's --block-migrate): the guest's local disks move
 * with it through ferry's transport. The destination QEMU must have the
 * same disks (same device ids, same sizes), backed by images that ferry
 * overwrites.
 */
struct ferry_block_opts {
	bool enabled;
	/* Comma-separated device ids (qdev id, or the drive id); NULL: every
	 * disk with a medium. Disks not named stay where they are (shared
	 * storage, volumes). */
	const char *disks;
	enum ferry_block_mode mode;
};

/* Options of the source side. Zero means "the default" for numbers. */
struct ferry_migrate_opts {
	const char *qmp_path;		/* source QEMU's QMP unix socket */
	const char *to_host;		/* receiver's address */
	uint16_t to_port;
	bool paused;			/* leave the destination paused */
	bool direct;			/* QEMU streams straight to QEMU */
	uint64_t max_bandwidth_bytes_per_s;	/* 0: unlimited */
	uint32_t downtime_ms;		/* 0: FERRY_DEFAULT_DOWNTIME_MS */
	uint32_t progress_interval_ms;	/* 0: FERRY_DEFAULT_PROGRESS_MS */
	uint32_t timeout_s;		/* whole migration; 0: no limit */
	ferry_progress_fn progress;	/* may be NULL */
	void *progress_opaque;
	/* Transport (ignored with direct, except TLS, which direct refuses). */
	enum ferry_codec codec;		/* 0: auto */
	int codec_level;		/* zstd level; 0: default */
	uint32_t streams;		/* data connections; 0: 1 */
	/* Never hand the data connection to QEMU (see docs/wire-protocol.md,
	 * "Hand-off"): every byte through ferry's frames. */
	bool no_handoff;
	struct ferry_tls_opts tls;
	struct ferry_converge_opts converge;
	struct ferry_block_opts block;
	/* The VM's name, for a receiving service that serves many VMs
	 * (1..64 characters of A-Z a-z 0-9 _ . -); NULL: unnamed, which only
	 * a receiver for one destination QEMU (qmp_path) accepts. */
	const char *vm_name;
	/* Where the migration journal goes (docs/journal.md), for `ferry
	 * recover`; NULL: no journal. The CLI's default is /var/lib/ferry. */
	const char *state_dir;
	/* Cold migration (Nova's `nova migrate`): the source guest is paused
	 * first, and moves stopped, in one pass (with its disks: --block);
	 * the destination runs it afterwards unless paused is set. A failure
	 * resumes it on the source as it was. */
	bool cold;
	/* Post-copy through ferry's tunnel carries the pages the destination
	 * waits for on a channel of their own (QEMU's postcopy-preempt), so
	 * they do not queue behind the bulk stream. Set this for an older
	 * receiver that refuses the channel ("unknown option bits 0x80"). */
	bool no_postcopy_preempt;
};

#define FERRY_DEFAULT_DOWNTIME_MS 300
/* The CLI's journal directory when none is given. */
#define FERRY_DEFAULT_STATE_DIR "/var/lib/ferry"
#define FERRY_DEFAULT_PROGRESS_MS 250

/* What happened, filled by ferry_migration_run() whether or not it failed. */
struct ferry_report {
	bool completed;
	bool direct;
	char status[32];		/* "completed", "failed", "cancelled" */
	char migration_id[37];		/* UUID text */
	uint64_t total_ms;		/* ferry's wall time, connect to finish */
	uint64_t qemu_total_ms;		/* QEMU's own total-time */
	uint64_t downtime_ms;		/* QEMU's measured downtime (cold: the whole run) */
	uint64_t setup_ms;		/* QEMU's setup-time */
	uint64_t ram_size_bytes;	/* guest RAM */
	uint64_t ram_bytes;		/* bytes of QEMU's migration stream */
	uint64_t wire_bytes;		/* bytes of the migration on the network */
	uint64_t passes;		/* dirty-sync passes */
	uint64_t throughput_bytes_per_s;	/* average over precopy */
	char codec[16];			/* the codec option ("auto", ...) */
	/* "tunnel" (ferry's frames), "handoff" (QEMU writes to ferry's
	 * connection), "direct" (QEMU's own connection) */
	char transport[12];
	uint64_t probe_bytes_per_s;	/* the link probe's rate; 0: none */
	uint64_t frames_raw;		/* frames sent uncompressed */
	uint64_t frames_lz4;
	uint64_t frames_zstd;
	uint32_t streams;
	char tls[8];			/* "none", "x509", "psk" */
	char policy[16];
	bool postcopy;			/* switched to post-copy */
	uint64_t postcopy_ms;		/* time spent in post-copy */
	uint32_t throttle_pct_max;	/* highest CPU throttle QEMU applied */
	uint32_t downtime_steps;	/* downtime changes made */
	uint32_t recoveries;		/* post-copy recoveries */
	uint64_t predicted_total_ms;	/* first prediction of the total */
	/* --block */
	uint32_t disks;			/* disks migrated */
	uint64_t disk_size_bytes;	/* their virtual sizes, summed */
	uint64_t disk_data_bytes;	/* data the mirrors wrote */
	uint64_t disk_zero_bytes;	/* zeroes sent as ZERO records */
	uint64_t disk_wire_bytes;	/* the disk tunnel on the network */
	uint64_t disk_mirror_ms;	/* until every mirror was ready */
	uint64_t disk_switchover_ms;	/* drain + flush barrier, guest paused */
	bool source_running;		/* after a failure: did the guest survive */
	char error[FERRY_ERROR_MSG_MAX];	/* empty when completed */
	/* The two ends: the source QEMU's QMP socket (source side) or the
	 * source's address (receiving side); the receiver's HOST:PORT, or
	 * the destination QEMU's QMP socket. */
	char source[280];
	char destination[280];
	uint64_t end_unix_ms;		/* when it ended, Unix time */
	/* After a failure: ferry never reached the source QEMU, so nothing
	 * of the guest was changed (and nothing was checked either). Zero
	 * from a library older than this field. */
	bool source_untouched;
	/* Where this side's tunnel spent CPU time, microseconds, by stage:
	 * FERRY_TUNNEL_STAGES entries, named by ferry_tunnel_stage_name()
	 * (read, compress, encrypt, send, receive, decrypt, decompress,
	 * write). All 0 when QEMU's stream did not go through the tunnel
	 * (hand-off, --direct). */
	uint64_t tunnel_cpu_us[8];
	/* The downtime limit in force at the end (--downtime-ms, or as
	 * ferry set-downtime left it), and whether QEMU's measured downtime
	 * went over it (completed migrations; source side). */
	uint32_t downtime_limit_ms;
	bool downtime_exceeded;
	/* Post-copy: how long the destination guest's vCPUs waited for
	 * pages, in all (QEMU's postcopy-blocktime, read from the
	 * destination when it completed): the stall the guest felt beyond
	 * the downtime. Known only when has_postcopy_blocktime. */
	bool has_postcopy_blocktime;
	uint32_t postcopy_blocktime_ms;
	/* How far off the time-left estimate was (completed migrations):
	 * the total it predicted at 25%, 50% and 75% of the run, less the
	 * real total, ms; FERRY_ETA_UNKNOWN where it had none then. */
	int64_t eta_off_ms[3];
};

#define FERRY_ETA_UNKNOWN INT64_MIN

#define FERRY_TUNNEL_STAGES 8

/* "read", "compress", ... for stage @i of tunnel_cpu_us; NULL past the
 * last. */
const char *ferry_tunnel_stage_name(int i);

struct ferry_migration;

/* Copy the options; strings are copied too. Returns NULL with @err set. */
struct ferry_migration *(ferry_migration_new)(const struct ferry_migrate_opts *o,
					      struct ferry_error *err);

/*
 * Run the migration to its end. Returns 0 when the migration completed and
 * the destination took over, -errno otherwise. @report is always filled.
 * On failure the source guest is left running (report->source_running says
 * whether that could be confirmed).
 */
int (ferry_migration_run)(struct ferry_migration *m, struct ferry_report *report,
			  struct ferry_error *err);

/*
 * Ask a running migration to stop. Async-signal-safe and thread-safe: it
 * only writes to an eventfd. The run returns -ECANCELED.
 */
void ferry_migration_cancel(struct ferry_migration *m);

void ferry_migration_free(struct ferry_migration *m);

/* Write the report as one JSON object (one line, newline-terminated). */
int (ferry_report_write_json)(const struct ferry_report *r, int fd);

/*
 * ABI: the option and report structs grow at their end, release after
 * release. The calls above are macros that pass the size of the caller's
 * struct to these entry points, so a program keeps working with a later
 * libferry.so.0: the library reads the options the caller's struct has
 * (the rest are 0, the defaults) and writes only the report fields it
 * has room for. A struct larger than the library knows, with a later
 * field set, is refused (-EINVAL) rather than half understood.
 */
struct ferry_receiver;
struct ferry_receiver_opts;
struct ferry_migration *ferry_migration_new_sized(
	const struct ferry_migrate_opts *o, size_t size, struct ferry_error *err);
int ferry_migration_run_sized(struct ferry_migration *m,
			      struct ferry_report *report, size_t size,
			      struct ferry_error *err);
struct ferry_receiver *ferry_receiver_new_sized(
	const struct ferry_receiver_opts *o, size_t size, struct ferry_error *err);
int ferry_receiver_run_sized(struct ferry_receiver *r, struct ferry_report *report,
			     size_t size, struct ferry_error *err);
int ferry_report_write_json_sized(const struct ferry_report *r, size_t size,
				  int fd);

#define ferry_migration_new(o, err) \
	ferry_migration_new_sized((o), sizeof(*(o)), (err))
#define ferry_migration_run(m, report, err) \
	ferry_migration_run_sized((m), (report), sizeof(*(report)), (err))
#define ferry_receiver_new(o, err) \
	ferry_receiver_new_sized((o), sizeof(*(o)), (err))
#define ferry_receiver_run(r, report, err) \
	ferry_receiver_run_sized((r), (report), sizeof(*(report)), (err))
#define ferry_report_write_json(r, fd) \
	ferry_report_write_json_sized((r), sizeof(*(r)), (fd))

/*
 * The migrations this host sent or received, running and past, from the
 * journal in @state_dir (docs/journal.md): *@json gets a JSON array, the
 * oldest first, each entry in the schema of docs/list.md (`ferry list
 * --json`); free() it. 0, or -errno with @err set.
 */
int ferry_list_json(const char *state_dir, char **json, struct ferry_error *err);

/*
 * Steer a running migration of this host from another program (of the
 * same user): through its control socket in @state_dir (docs/control.md).
 * @id is its id, or a unique prefix of at least 8 characters. 0 when the
 * migration took the request (@answer says what it does), -EPERM when it
 * refused (the reason in @err, e.g. an abort during post-copy), another
 * -errno when it could not be reached.
 *   abort: as a cancel: the source guest runs on; refused in post-copy.
 *   force_complete: switch to post-copy if the migration may, else pause
 *       the source guest so that the rest is downtime (as Nova does).
 *   set_downtime: the downtime limit, ms, from now on.
 */
int ferry_abort(const char *state_dir, const char *id,
		char answer[FERRY_ERROR_MSG_MAX], struct ferry_error *err);
int ferry_force_complete(const char *state_dir, const char *id,
			 char answer[FERRY_ERROR_MSG_MAX], struct ferry_error *err);
int ferry_set_downtime(const char *state_dir, const char *id, uint32_t ms,
		       char answer[FERRY_ERROR_MSG_MAX], struct ferry_error *err);

/*
 * Options of the receiving side: a service that serves migrations of many
 * VMs at once (docs/receiving-service.md). It finds the destination QEMU
 * of a migration in one of three ways:
 *   qmp_path:   one destination QEMU, whatever the VM's name (the classic
 *               "ferry receive --qmp");
 *   qmp_dir:    registered QEMUs, DIR/NAME.qmp for the VM named NAME;
 *   launch_cmd: launched for each migration, and killed if it fails.
 */
struct ferry_receiver_opts {
	const char *listen_host;	/* address to listen on */
	uint16_t listen_port;		/* 0: pick one (see ferry_receiver_port) */
	const char *qmp_path;		/* destination QEMU's QMP unix socket */
	bool once;			/* return after one migration that got
					   past its pre-checks */
	uint32_t hello_timeout_ms;	/* 0: FERRY_DEFAULT_HELLO_TIMEOUT_MS */
	struct ferry_tls_opts tls;	/* hostname is unused here */
	const char *qmp_dir;		/* registered QEMUs: DIR/NAME.qmp */
	uint32_t max_migrations;	/* at once; 0: FERRY_DEFAULT_MAX_MIGRATIONS */
	uint32_t max_handshakes;	/* connections before their hello is
					   read; 0: FERRY_DEFAULT_MAX_HANDSHAKES */
	/* launched: run this command (a shell word list, e.g. "ferry
	 * launch-qemu") to start the destination QEMU of each migration from
	 * the source's command line; its QMP socket goes in state_dir.
	 * See docs/receiving-service.md for the contract. */
	const char *launch_cmd;
	const char *state_dir;		/* 0700; created if missing */
	const char *allow_dirs;		/* colon-separated: where the paths of
					   a launched QEMU may point */
	/* Memory overcommit (Nova's ram_allocation_ratio): this host takes
	 * guests up to MemTotal x ratio, less what is in use; 0: 1.0. It is
	 * what the host reports to sources choosing a destination (ferry
	 * evacuate), and a launched destination QEMU is refused beyond it. */
	double ram_allocation_ratio;
};

#define FERRY_DEFAULT_HELLO_TIMEOUT_MS 10000
#define FERRY_DEFAULT_MAX_MIGRATIONS 4
#define FERRY_MAX_MIGRATIONS_LIMIT 64
#define FERRY_DEFAULT_MAX_HANDSHAKES 64
#define FERRY_MAX_HANDSHAKES_LIMIT 4096

struct ferry_receiver;

/* Bind and listen now, so the port is known before run. */
struct ferry_receiver *(ferry_receiver_new)(const struct ferry_receiver_opts *o,
					    struct ferry_error *err);

/* The port actually bound (useful with listen_port 0). */
uint16_t ferry_receiver_port(const struct ferry_receiver *r);

/*
 * Serve migrations until stopped, or, when opts.once is set, until one
 * migration that passed its pre-checks (the receiver answered READY) has
 * ended. Migrations run concurrently, each on a thread of its own, up to
 * max_migrations; a bad connection (garbage, wrong version, stall, a
 * refused hello) is logged and closed, and the receiver goes on serving.
 * Returns 0, or, when opts.once is set, the error of that one migration
 * if it failed; @report gets its report (without once: that of the last
 * migration that answered READY).
 */
int (ferry_receiver_run)(struct ferry_receiver *r, struct ferry_report *report,
			 struct ferry_error *err);

/* Async-signal-safe and thread-safe: makes ferry_receiver_run() return. */
void ferry_receiver_stop(struct ferry_receiver *r);

void ferry_receiver_free(struct ferry_receiver *r);

/*
 * After a crash (of ferry, of a host): ferry recover. Each unfinished
 * migration in the journal of @state_dir (docs/journal.md) is brought to
 * exactly one running copy of its guest, where this side can decide that
 * alone, and marked recovered; one it cannot decide (post-copy split
 * between the hosts, or a destination holding a whole copy while nobody
 * has said the source stopped for good) is left for a person.
 */
#define FERRY_DEFAULT_RECOVERY_WAIT_MS 60000

/*
 * One unfinished migration, as ferry_recover() found and left it: what
 * its callback gets, valid during the call only. The library's struct,
 * which grows at its end: @size is how much of it this library has, and a
 * field past it (from a later header) is not there.
 */
struct ferry_recovery {
	size_t size;
	const char *id;		/* the migration's; NULL when its journal
				   could not be read */
	const char *side;	/* "source" or "destination"; NULL as id */
	const char *outcome;	/* one sentence: what was found and done
				   ("in progress" when a live ferry holds
				   it), or with error, what failed */
	int error;		/* 0, or the -errno of its failure */
	bool needs_person;	/* undecided: outcome says what to do */
};

typedef void (*ferry_recovery_fn)(const struct ferry_recovery *r, void *opaque);

struct ferry_recover_opts {
	const char *state_dir;		/* the journal's directory */
	/* The id of a migration whose source host's recover said the source
	 * QEMU completed: its destination's guest may run (NULL: none). */
	const char *source_completed;
	uint32_t wait_ms;		/* how long a resumed post-copy waits
					   for its receiver; 0:
					   FERRY_DEFAULT_RECOVERY_WAIT_MS */
	ferry_recovery_fn each;		/* once per unfinished migration, on
					   the calling thread; may be NULL */
	void *opaque;
};

/*
 * Recover every unfinished migration of o->state_dir, one after the
 * other, on the calling thread: it blocks while a resumed post-copy runs
 * to its end. 0 when each was dealt with (o->each says how, and which
 * need a person), or the -errno of the first that failed, with @err set;
 * the others are still tried, and each failure goes to o->each too.
 * ABI: a macro over the sized entry point, as ferry_migration_new().
 */
int ferry_recover_sized(const struct ferry_recover_opts *o, size_t size,
			struct ferry_error *err);
#define ferry_recover(o, err) ferry_recover_sized((o), sizeof(*(o)), (err))

/*
 * ferry evacuate (docs/evacuate.md): the guests of this host to other
 * hosts, a few at a time. Each goes, by a migration of its own, to the
 * destination with the most usable memory (the receiver's answer:
 * MemTotal x its ram_allocation_ratio, less what is in use and arriving)
 * that has room for it; one that refuses before anything moved passes it
 * to the next. A guest that no destination takes stays where it was,
 * running, and does not stop the others.
 */
#define FERRY_EVACUATE_DESTS_MAX 16
#define FERRY_EVACUATE_VMS_MAX 256
#define FERRY_EVACUATE_PARALLEL_DEFAULT 2	/* KubeVirt's per-node default */
#define FERRY_EVACUATE_PARALLEL_MAX 16

/* Which guests, where to, and how. Exactly one of qmp_dir and qmp_path. */
struct ferry_evacuate_opts {
	/* The receivers: HOST:PORT[,HOST:PORT...] ([IPv6]:PORT), 1 to
	 * FERRY_EVACUATE_DESTS_MAX of them. */
	const char *to;
	/* Every guest of this directory, DIR/NAME.qmp (a receiving
	 * service's qmp_dir), or only those named in @only (comma-separated;
	 * NULL: all). */
	const char *qmp_dir;
	const char *only;
	/* Or one guest, by its QMP socket (its name, if it has one, is
	 * migrate->vm_name): ferry migrate --to A,B. */
	const char *qmp_path;
	uint32_t parallel;	/* migrations at once; 0:
				   FERRY_EVACUATE_PARALLEL_DEFAULT */
	/* Every guest's migration, copied as ferry_migration_new() copies
	 * it, except qmp_path, to_host, to_port, vm_name and progress, set
	 * per guest; a qmp_dir guest's events go to events_path.NAME. NULL:
	 * the defaults (and no journal). */
	const struct ferry_migrate_opts *migrate;
};

/*
 * One guest's outcome. Its fields are fixed; the report at its end grows
 * as struct ferry_report does, and the library writes the results in the
 * caller's size (as ferry_migration_run() writes a report).
 */
struct ferry_evacuate_result {
	char vm[65];			/* its name; "" for qmp_path's guest */
	char destination[280];		/* HOST:PORT it went to, or last
					   tried; "" when none was */
	/* "completed"; "failed": it runs where it was; "not-running": it
	 * is not confirmed running (ferry recover on both hosts). */
	char status[16];
	char error[FERRY_ERROR_MSG_MAX];	/* why not; "" when completed */
	struct ferry_report report;	/* of its (last) migration */
};

/*
 * Evacuate: blocks until every guest is done, o->parallel at a time, each
 * on a thread of its own. *@results gets one result per guest, in name
 * order (free() it), *@n their count. 0 when the evacuation ran (each
 * result says how its guest fared), or -errno with @err set when it could
 * not start (an option, no guest found, no memory); then *@results is
 * NULL. ABI: a macro over the sized entry point, which also gets the
 * sizes of the caller's migrate options and of its results.
 */
int ferry_evacuate_sized(const struct ferry_evacuate_opts *o, size_t size,
			 size_t migrate_size,
			 struct ferry_evacuate_result **results,
			 size_t result_size, uint32_t *n,
			 struct ferry_error *err);
#define ferry_evacuate(o, results, n, err) \
	ferry_evacuate_sized((o), sizeof(*(o)), sizeof(*(o)->migrate), \
			     (results), sizeof(**(results)), (n), (err))

/*
 * Cancel every ferry_evacuate() running in this process: their running
 * migrations are cancelled (a guest not yet moved runs where it was) and
 * they start no more; each returns as usual. One started later is not
 * affected. Thread-safe, but not async-signal-safe (it takes a lock): for
 * a signal, call it on a thread that waits for it (sigwait()), as ferry
 * does.
 */
void ferry_evacuate_cancel(void);

/*
 * The launcher ferry ships (ferry launch-qemu), as a program's main: a
 * launch_cmd for ferry_receiver_opts that starts the destination QEMU
 * from the source's command line, which it does not trust
 * (docs/receiving-service.md has the contract and what it allows).
 * @argv: the command's name, then NAME and QMP_PATH as the service passes
 * them; it reads the source's command line on stdin and the FERRY_LAUNCH_*
 * environment, and writes "pid N" and "created PATH" lines on stdout and
 * the reason of a refusal on stderr. Returns the process's exit status: 0
 * once QEMU listens on QMP_PATH, 1 refused or failed (nothing left
 * running), 2 a usage error. Once per process, from its main thread: it
 * forks QEMU and keeps its state in static storage.
 */
int ferry_launch_qemu_main(int argc, char **argv);

/* The levels of the library's log. */
enum ferry_log_level {
	FERRY_LOG_ERROR = 0,
	FERRY_LOG_WARN = 1,
	FERRY_LOG_INFO = 2,
	FERRY_LOG_DEBUG = 3,
};

/*
 * Where log lines go (default: stderr, with a timestamp). A NULL function
 * restores the default. Lines above @max_level (an enum ferry_log_level)
 * are dropped. @fn is called under the log's lock, from the thread that
 * logs: it must not call ferry_log().
 */
typedef void (*ferry_log_fn)(int level, const char *msg, void *opaque);
void ferry_set_log(ferry_log_fn fn, void *opaque, int max_level);

/*
 * One line through the library's log, at @level (an enum
 * ferry_log_level): a program's messages beside ferry's, filtered and
 * sent alike. Thread-safe; a line is cut at 1023 bytes.
 */
void ferry_log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif

#endif /* FERRY_H */
