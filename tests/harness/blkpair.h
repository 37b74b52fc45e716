/*
 * The disks of a pair (pair.h) for the block migration tests: a raw
 * source image "vdisk0" with data and holes, a blank destination image,
 * optionally an ISO as CD-ROM "cd0" on both sides; the VMs that use them;
 * and the checks that follow a block migration (no trace of ferry left
 * in the source QEMU). Disks are compared with expect_same_file().
 *
 * As pair.h: libcheck assertions, for test programs.
 */
#ifndef FERRY_TESTS_BLKPAIR_H
#define FERRY_TESTS_BLKPAIR_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/rx.h"
#include "tests/harness/vm.h"

#define MiB (1ull << 20)
/* The guests of block tests: small, their disks are what moves. */
#define BLKPAIR_MEM_MIB 64

struct blkpair_opts {
	uint64_t size;		/* the source disk */
	uint32_t data_mib;	/* its first MiB with data (some left holes) */
	const char *dst_fmt;	/* the destination image's format (NULL: raw) */
	uint64_t dst_size;	/* the destination disk (0: size) */
	bool cdrom;		/* an ISO as IDE CD-ROM "cd0" too (the
				 * destination's blank, of the same size) */
};

/* Where the images are (all in the pair's p->dir). */
struct blkpair {
	char src_img[128], dst_img[128], iso[128], dst_iso[128];
	/* Private: the destination image's make, for blkpair_new_dst(). */
	char dst_fmt[8];
	uint64_t dst_size;
};

/* Make the images as @o says in a new p->dir ("ferry-block"), then start
 * the pair's VMs on them (BLKPAIR_MEM_MIB, "mix") and wait for READY. */
void blkpair_start(struct pair *p, struct blkpair *d,
		   const struct blkpair_opts *o);

/* A new destination QEMU on a new blank (raw only) image, for a retry. */
void blkpair_new_dst(struct pair *p, struct blkpair *d);

/* pair_migrate() with --block and the destination left paused
 * (progress every 100 ms unless @o says otherwise). */
int blkpair_migrate(struct pair *p, struct ferry_migrate_opts *o,
		    struct ferry_report *rep, struct ferry_error *err,
		    struct rx_thread *rx);

/* A raw image at @path of @size: its first @data_mib MiB a pattern from
 * @seed (every fourth MiB from the third a hole), the rest a hole. */
void blkpair_make_raw(const char *path, uint64_t size, uint32_t data_mib,
		      uint32_t seed);

/* The shell command @cmd exits 0. */
void expect_command_ok(const char *cmd);

/* No trace of ferry in @vm's QEMU: no block job, no "ferry-" node. */
void expect_source_clean(struct vm *vm);

/* Whether @vm's QEMU has ferry's mirror job for vdisk0 (false when QMP
 * does not answer). */
bool blkpair_mirror_running(struct vm *vm);

#endif /* FERRY_TESTS_BLKPAIR_H */
