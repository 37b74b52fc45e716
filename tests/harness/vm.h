/*
 * VM harness: starts QEMU running the test guest (tests/guest), watches its
 * serial console and talks to it over QMP, for the integration tests, the
 * benchmarks and the demo.
 *
 * Each VM gets a private temp dir /tmp/ferry-vm.XXXXXX holding its two QMP
 * sockets (one for ferry, vm_qmp_path(); one for the harness itself, since
 * a QEMU QMP socket serves one client at a time) and QEMU's stderr log.
 *
 * Nothing is left behind, however the program ends:
 *   - vm_stop() kills QEMU, reaps it and removes the temp dir;
 *   - an atexit handler and SIGINT/SIGTERM/SIGHUP/SIGQUIT handlers (installed
 *     only where the program left the default action) kill every live QEMU
 *     and remove its dir, then the signal is re-raised;
 *   - QEMU runs with PR_SET_PDEATHSIG = SIGKILL, so it dies with the thread
 *     that started it, even when the program is killed with SIGKILL;
 *   - a small janitor process, forked at the first vm_start(), removes the
 *     temp dirs of VMs still registered when the program dies of anything
 *     (SIGKILL from a libcheck timeout, abort()).
 * Because of PR_SET_PDEATHSIG, call vm_start() from a thread that lives as
 * long as the VM (the main thread, typically): QEMU dies when that thread
 * exits.
 *
 * Environment: FERRY_QEMU (qemu-system-x86_64), FERRY_ACCEL (tcg),
 * FERRY_GUEST (build/guest.elf), FERRY_VM_ECHO=1 copies the guest's serial
 * lines other than heartbeats to stderr.
 *
 * Functions that can fail return 0 or a negative errno and fill @err.
 * One struct vm is used by one thread at a time, except vm_kill(),
 * vm_alive() and the heartbeat readers, which any thread may call.
 */
#ifndef FERRY_TESTS_VM_H
#define FERRY_TESTS_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry.h"
#include "qmp/qmp.h"

/* Guest RAM limits: the guest needs room for its data pools, and the pc
 * machine keeps RAM contiguous from 0 (as vm_pmemsave() assumes) below 3 GiB. */
#define VM_MEM_MIB_MIN 16u
#define VM_MEM_MIB_MAX 3072u
/* Live VMs per process (also the janitor's table size). */
#define VM_LIVE_MAX 16
/* Heartbeats kept per VM: 11 minutes at the default 10 ms. */
#define VM_HB_RING 65536u
/* Longest serial line kept; the rest of a longer line is dropped. */
#define VM_LINE_MAX 256u
/* The guest's page size (its working set is counted in pages). */
#define VM_GUEST_PAGE 4096u
/* How long vm_start() waits for QEMU to open its QMP sockets. */
#define VM_START_TIMEOUT_MS 15000
/* Waits of QMP commands the harness sends. */
#define VM_QMP_TIMEOUT_MS 10000
#define VM_PMEMSAVE_TIMEOUT_MS 120000

struct vm_config {
	uint32_t mem_mib;	/* default 128 */
	const char *fill;	/* "zero","random","text","mix"; default "random" */
	uint32_t ws_mib;	/* working set; default 0 */
	uint32_t rate_mib_s;	/* dirty rate; default 0 */
	uint32_t hb_ms;		/* heartbeat; default 10 */
	bool incoming;		/* destination: -S -incoming defer */
	bool prealloc;		/* -mem-prealloc (use it for destinations) */
	const char *accel;	/* NULL: $FERRY_ACCEL or "tcg" */
	const char *guest_path;	/* NULL: $FERRY_GUEST or "build/guest.elf" */
	const char *extra_args;	/* optional extra qemu args, space separated */
	uint32_t seed;		/* guest PRNG seed; default 1 */
	const char *netns;	/* run QEMU in /var/run/netns/NAME (benchmarks) */
};

struct vm;

/*
 * Start QEMU with the test guest and return once its QMP sockets exist.
 * A source and a destination started from the same config (plus incoming
 * and prealloc) have identical devices and -kernel/-append, as migration
 * requires. Returns 0, -EINVAL for a bad config, -ECHILD when QEMU exits
 * during start-up (err->msg has its stderr), -ETIMEDOUT, or another -errno.
 */
int vm_start(struct vm **out, const struct vm_config *cfg, struct ferry_error *err);

/* Kill QEMU (SIGKILL: the guest has no disk to flush), reap it, stop the
 * serial reader and remove the temp dir. NULL is allowed. */
void vm_stop(struct vm *vm);

/* SIGKILL QEMU now, from any thread (to simulate a crash), and reap it: on
 * return QEMU is gone. vm_stop() still has to be called. */
void vm_kill(struct vm *vm);

/* QEMU still running (not exited, not killed). Any thread. */
bool vm_alive(struct vm *vm);

pid_t vm_pid(const struct vm *vm);

/* The QEMU binary vm_start() runs: $FERRY_QEMU, else qemu-system-x86_64
 * from $PATH (benchmarks report its version). */
const char *vm_qemu_binary(void);

/* The temp dir, e.g. for a test that checks vm_stop() removed it. */
const char *vm_dir(const struct vm *vm);

/* QMP unix socket path for ferry (nobody else connects to it). */
const char *vm_qmp_path(const struct vm *vm);

/* The harness's own QMP connection, connected on first use; NULL when the
 * connection fails (vm_qmp_connect() says why). */
struct qmp *vm_qmp(struct vm *vm);
int vm_qmp_connect(struct vm *vm, struct ferry_error *err);

/*
 * Wait for the guest's READY line (RAM filled, dirtying started).
 * -EIO when the guest printed ERR, -ECHILD when QEMU exited, -ETIMEDOUT.
 */
int vm_wait_ready(struct vm *vm, int timeout_ms, struct ferry_error *err);

/* The guest's fill time from its READY line, ms (0 before READY). */
uint32_t vm_fill_ms(struct vm *vm);

/* query-status "status": "running", "paused", "inmigrate", "postmigrate"... */
int vm_status(struct vm *vm, char *buf, size_t len, struct ferry_error *err);
/*
 * The same once QEMU's run state has settled: right after a migration
 * completed, QEMU still says "finish-migrate" for a moment before
 * "postmigrate"; this waits that out (at most VM_SETTLE_MS).
 */
#define VM_SETTLE_MS 2000
int vm_status_settled(struct vm *vm, char *buf, size_t len,
		      struct ferry_error *err);

/* pmemsave of guest-physical 0 .. mem_mib MiB into @path (written by QEMU,
 * so relative to the same working directory). Checks the file's size. */
int vm_pmemsave(struct vm *vm, const char *path, struct ferry_error *err);

/* HB lines seen so far. Any thread. */
uint64_t vm_heartbeats(struct vm *vm);

/* Wait until @n_more heartbeats beyond those seen now have arrived: proof
 * that the guest runs. -ECHILD when QEMU exited, -ETIMEDOUT. */
int vm_wait_heartbeats(struct vm *vm, uint64_t n_more, int timeout_ms,
		       struct ferry_error *err);

/* CLOCK_MONOTONIC time of the last HB line, us (0 if none). */
uint64_t vm_last_heartbeat_us(struct vm *vm);

/*
 * Byte compare two files. Returns 1 when equal, 0 when they differ (then
 * *@first_diff is the first differing offset, or the shorter length when
 * only the sizes differ), -errno on error.
 */
int vm_files_equal(const char *a, const char *b, uint64_t *first_diff,
		   struct ferry_error *err);
/* The same from byte @from of each on. */
int vm_files_equal_from(const char *a, const char *b, uint64_t from,
			uint64_t *first_diff, struct ferry_error *err);

/*
 * Guest-visible pause across a migration: the largest gap between
 * consecutive heartbeats at or after @since_us (CLOCK_MONOTONIC, us) in the
 * union of both VMs' heartbeats, in ms rounded up (or us). Either VM may be
 * NULL. Returns UINT64_MAX when fewer than two heartbeats are known, so
 * that "gap < limit" cannot pass without data. Only the last VM_HB_RING
 * heartbeats of each VM are kept. A gap after the last heartbeat (a guest
 * that stopped for good) is not counted: check the destination beats.
 */
uint64_t vm_max_heartbeat_gap_ms(struct vm *src, struct vm *dst, uint64_t since_us);
uint64_t vm_max_heartbeat_gap_us(struct vm *src, struct vm *dst, uint64_t since_us);

/* CLOCK_MONOTONIC now, us: the clock of the heartbeat timestamps. */
uint64_t vm_now_us(void);

/* One heartbeat: when it arrived (CLOCK_MONOTONIC, us) and the guest's
 * work counter in it (working-set pages dirtied since READY). */
struct vm_beat {
	uint64_t t_us;
	uint64_t work;
};

/*
 * The heartbeats of one guest across a migration, @src's and @dst's merged
 * in time order, from @since_us on, into @out (at most @max, the earliest
 * kept). Either VM may be NULL. Returns how many were written.
 */
size_t vm_beats(struct vm *src, struct vm *dst, uint64_t since_us,
		struct vm_beat *out, size_t max);

/*
 * Where the guest's RAM stops changing after READY: the byte offset past
 * its working set (the fill above it is never written again). 0 before the
 * guest said where its fill starts.
 */
uint64_t vm_static_ram_from(struct vm *vm);

#endif /* FERRY_TESTS_VM_H */
