/*
 * A migration's two VMs, for the integration tests: a source running the
 * test guest and a destination waiting with -S -incoming defer
 * (preallocated), a scratch directory for RAM dumps, and the checks that
 * follow a migration (run state, guest RAM byte for byte, the journal's
 * view).
 *
 * Every function here asserts with libcheck (ck_assert*): it is for test
 * programs linked with libcheck, called from a test case. A failed
 * assertion ends the test case; the VMs and the scratch directory then go
 * with the process (vm.h, tmpdir.h). The messages say what was expected
 * and what was seen.
 */
#ifndef FERRY_TESTS_PAIR_H
#define FERRY_TESTS_PAIR_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"
#include "tests/harness/rx.h"
#include "tests/harness/vm.h"

/* How long the source guest may take to fill its RAM and say READY. */
#define PAIR_READY_TIMEOUT_MS 60000
/* Longest extra QEMU command line of one side. */
#define PAIR_ARGS_MAX 1024
/* A guest that runs: this many fresh heartbeats within the wait below. */
#define PAIR_ALIVE_HEARTBEATS 5
#define PAIR_ALIVE_TIMEOUT_MS 10000

/* What a pair is made of; zero values take vm_config's defaults. */
struct pair_opts {
	uint32_t mem_mib;	/* guest RAM (0: 128) */
	const char *fill;	/* the guest's fill pattern (NULL: "random") */
	uint32_t ws_mib;	/* working set the guest keeps dirtying */
	uint32_t rate_mib_s;	/* at this rate */
	const char *src_args;	/* extra QEMU args of the source, or NULL */
	const char *dst_args;	/* of the destination, or NULL */
	bool no_dst;		/* a source alone (its destination comes
				 * from elsewhere: p->dst stays NULL) */
	const char *dir_prefix;	/* scratch dir /tmp/PREFIX.XXXXXX
				 * (NULL: "ferry-test") */
};

struct pair {
	struct vm *src, *dst;
	char dir[64];		/* scratch: RAM dumps, a test's files */
	/* Private: how the destination was made, for pair_new_dst(). */
	struct vm_config dst_cfg;
	char dst_args[PAIR_ARGS_MAX];
};

/* pair_make_dir(), then pair_start_vms(): the usual start of a test. */
void pair_start(struct pair *p, const struct pair_opts *o);

/* Create p->dir (/tmp/@prefix.XXXXXX, NULL: "ferry-test"), for a caller
 * that puts files there before the VMs start (disk images). */
void pair_make_dir(struct pair *p, const char *prefix);

/* Start the source (and, unless o->no_dst, the destination) as @o says,
 * and wait for the source guest's READY. p->dir must exist. */
void pair_start_vms(struct pair *p, const struct pair_opts *o);

/* Replace the destination QEMU (stopped, if any) with a new one made as
 * the first was: for a retry after a failed or refused migration. */
void pair_new_dst(struct pair *p);

/* Stop both QEMUs and remove p->dir with everything in it. */
void pair_stop(struct pair *p);

/* A receiver of p->dst on a thread of this process, listening on
 * loopback when this returns: @ro's options (NULL: all defaults) with the
 * listen address and p->dst's QMP socket filled in. */
void pair_rx_start(struct pair *p, struct rx_thread *rx,
		   const struct ferry_receiver_opts *ro);

/*
 * Migrate p->src to p->dst through a --once receiver started with
 * pair_rx_start(@ro) and libferry's source with @o (its to_host, to_port
 * and qmp_path are filled in here). Returns ferry_migration_run()'s
 * result, @err and @rep as it left them; the receiver has ended (stopped
 * when the run failed) and @rx holds its rc, report and error.
 */
int pair_migrate(struct pair *p, struct ferry_migrate_opts *o,
		 const struct ferry_receiver_opts *ro, struct rx_thread *rx,
		 struct ferry_report *rep, struct ferry_error *err);

/* @vm's QEMU is alive and, once settled, in run state @want. */
void expect_status(struct vm *vm, const char *want);

/* @vm runs its guest: run state "running" and PAIR_ALIVE_HEARTBEATS fresh
 * heartbeats within PAIR_ALIVE_TIMEOUT_MS; @who ("source") names it. */
void expect_guest_runs(struct vm *vm, const char *who);

/* The source guest keeps running (after a failed or refused migration). */
void expect_source_alive(struct pair *p);

/* Both guests quiescent: their RAM is equal byte for byte (dumps in
 * @dir, removed when equal). */
void expect_same_vm_ram(struct vm *a, struct vm *b, const char *dir);

/* The same for p->src and p->dst, dumps in p->dir. */
void expect_same_ram(struct pair *p);
/*
 * For a destination that runs on after the migration: its guest beats
 * (so its memory invariant held: a stale working-set page makes it print
 * ERR and halt), and the RAM it never writes after READY equals the
 * source's, byte for byte.
 */
void expect_guest_intact(struct pair *p);

/* Files @a and @b are equal byte for byte. */
void expect_same_file(const char *a, const char *b);

/* `ferry list` shows the journal's (in @dir) one migration of @side
 * ("source", "destination") with status @status. */
void expect_listed(const char *dir, const char *side, const char *status);

#endif /* FERRY_TESTS_PAIR_H */
