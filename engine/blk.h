/*
 * Block migration (--block): the guest's disks move through ferry.
 *
 * Source (blk_source.c): ferry finds the disks over QMP, serves each on a
 * private NBD unix socket, and has the source QEMU mirror into it
 * (blockdev-add of an NBD node, blockdev-mirror). What QEMU writes becomes
 * disk records (transport/wire.h) on the disk tunnel: DATA, or ZERO for
 * zeroes, which cost a header. A FLUSH record is a barrier the destination
 * acknowledges once everything before it is written and synced.
 *
 * Destination (blk_dest.c): ferry checks the destination disks before any
 * byte is sent, then applies the records: raw images directly with
 * io_uring, other formats through an NBD export of the destination QEMU.
 *
 * Order: RAM starts when every mirror is ready; at the switchover QEMU
 * stops in pre-switchover, ferry completes the mirrors, sends a barrier,
 * and lets QEMU go on only once the destination has synced it all.
 */
#ifndef FERRY_BLK_H
#define FERRY_BLK_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"
#include "qmp/qmp.h"
#include "transport/tunnel.h"
#include "transport/wire.h"

/* Bound on the mirrors getting ready, per GiB of disk (at 8 MiB/s). */
#define BLK_READY_TIMEOUT_MS_PER_GIB 128000
#define BLK_READY_TIMEOUT_MIN_MS 60000
/* Bound on a flush barrier's round trip, and on a mirror completing. */
#define BLK_FLUSH_TIMEOUT_MS 60000
#define BLK_COMPLETE_TIMEOUT_MS 60000
/*
 * A ready mirror is silent while the guest does not write: ferry's NBD
 * server waits for it this long, and so do the readers of the record
 * socket. Neither wait is what ends a migration: ferry stops its servers
 * itself, and the disk tunnel closes the record socket when it ends or
 * fails. The source sends a barrier every BLK_KEEPALIVE_MS so that the
 * disk tunnel never looks stalled (TUN_IDLE_TIMEOUT_MS).
 */
#define BLK_IDLE_TIMEOUT_MS (6 * 3600 * 1000)
/* Bound on one write to the record socket (the tunnel stalled). */
#define BLK_SEND_TIMEOUT_MS 60000
#define BLK_KEEPALIVE_MS 5000
/* Zero detection granularity: runs of zero bytes this long become ZERO. */
#define BLK_ZERO_CHUNK_BYTES (64u << 10)
/* Destination: requests in flight, each with a WIRE_DISK_DATA_MAX buffer. */
#define BLK_DST_QUEUE_DEPTH 16
/* O_DIRECT needs this alignment of offset, length and buffer. */
#define BLK_DIRECT_ALIGN 4096u

/* How a device is named: its qdev id, or the drive id without one. */
struct blk_disk_info {
	struct wire_disk w;
	char node[128];		/* node or BlockBackend QEMU mirrors from */
	char node_name[128];	/* the top node's name */
	char format[32];	/* "raw", "qcow2", ... */
	char filename[1024];	/* the image file, when it is one */
	bool read_only;
};

/*
 * query-block: the disks with a medium, and the ones named in @only
 * (comma-separated ids; NULL: all). Fails when a named id is missing.
 */
int blk_query_disks(struct qmp *q, const char *only, struct blk_disk_info *d,
		    uint32_t *n, struct ferry_error *err);

/*
 * The names ferry gives what it creates in QEMU and on disk: mirror jobs
 * and NBD nodes in the source QEMU (plus the device id), and the private
 * directories of its NBD sockets (under $TMPDIR or /tmp).
 */
#define BLK_JOB_PREFIX "ferry-mirror-"
#define BLK_NODE_PREFIX "ferry-target-"
#define BLK_DIR_PREFIX "ferry-nbd-"
/* A socket directory younger than this may be an attempt starting now. */
#define BLK_STALE_DIR_MIN_AGE_S 60

/* The directory for NBD socket dirs ($TMPDIR when short enough). */
const char *blk_tmpdir(void);

/*
 * What an earlier ferry that died left in this QEMU and on this host:
 * its mirror jobs (cancelled, dismissed), its NBD nodes (deleted), and
 * socket directories nobody listens in any more (removed). Each is said
 * in the log. 0, or -errno when QEMU refuses.
 */
int blk_clear_stale(struct qmp *q, struct ferry_error *err);

/*
 * Shared storage: a disk whose destination image is the source's own
 * image (both hosts reach one file: NFS, a cluster file system, or one
 * host) must not be copied onto itself while the source guest writes it.
 * Nova's test, made per disk: the source puts a marker file beside each
 * image, DIR/.ferry-shared.MIGID.DISKID, holding the image's file name;
 * a destination that finds, beside its own image, the marker of this
 * migration naming that very file reaches the source's image. The source
 * removes its markers once the receiver has answered.
 */
#define BLK_SHARED_MARKER ".ferry-shared."

/* The marker's path for disk @i of migration @mig_id into @out: 0, or
 * -EINVAL when the image is no absolute file path, -ENAMETOOLONG. */
int blk_shared_marker(char *out, size_t len, const struct blk_disk_info *i,
		      const char *mig_id);

/* Source side. */
struct blk_src;

/*
 * Put the shared-storage marker beside each disk's image file (disks on
 * a device or the network have none). A directory ferry cannot write
 * gets no marker: that disk's check cannot be made (said in the log).
 */
void blk_src_mark_shared(struct blk_src *b, const char *mig_id);
/* Remove the markers blk_src_mark_shared made (blk_src_free does too). */
void blk_src_unmark_shared(struct blk_src *b);

int blk_src_new(struct blk_src **out, struct qmp *q,
		const struct ferry_block_opts *o, struct ferry_error *err);
/* The manifest for the receiver. */
uint32_t blk_src_disks(const struct blk_src *b, struct wire_disk *d);
/*
 * Start the disk tunnel (@to: the connections, codec and pacing; the
 * tunnel owns them from here on, also when this fails), the NBD servers
 * and the mirror jobs.
 */
int blk_src_start(struct blk_src *b, struct tun_opts *to,
		  struct ferry_error *err);
/*
 * One look at the mirrors: 1 when all are ready (read-only disks then
 * copied and their jobs ended), 0 while copying, -errno when a job failed.
 * @done and @total: bytes of the copy.
 */
int blk_src_poll(struct blk_src *b, uint64_t *done, uint64_t *total,
		 struct ferry_error *err);
/*
 * What the guest's writes cost the mirrors, bytes/s, since they began
 * copying: the growth of the jobs' lengths (QEMU's len, copied plus still
 * dirty, grows when the guest writes what was copied already, and by
 * every write in write-blocking mode). 0 before any job copied.
 */
uint64_t blk_src_write_rate(const struct blk_src *b);
/* During the memory migration: keep the disk tunnel alive, and notice a
 * mirror that failed (-errno). */
int blk_src_tick(struct blk_src *b, struct ferry_error *err);
/*
 * At pre-switchover (the guest stopped): complete every mirror in sync,
 * barrier, end the disk tunnel cleanly.
 */
int blk_src_switchover(struct blk_src *b, struct ferry_error *err);
/* Failure: cancel the mirrors and stop; the source disks stay as they are. */
void blk_src_abort(struct blk_src *b);
/* An error the destination or the disk tunnel reported, 0 if none. */
int blk_src_check(struct blk_src *b, struct ferry_error *err);
void blk_src_report(const struct blk_src *b, struct ferry_report *r);
void blk_src_free(struct blk_src *b);

/* Destination side. */
struct blk_dst;

/*
 * The pre-checks: each disk of the manifest exists on the destination
 * QEMU with the same size, is not the source's own image (shared storage:
 * the marker of migration @mig_id), no job or export uses it, and its
 * file system has room. Then the targets are opened (raw files; NBD
 * exports for other formats). Nothing is written yet.
 */
int blk_dst_prepare(struct blk_dst **out, struct qmp *q, const char *mig_id,
		    const struct wire_disk *d, uint32_t n,
		    struct ferry_error *err);
/* Start the disk tunnel on @to (owned from here on) and the writer. */
int blk_dst_start(struct blk_dst *b, struct tun_opts *to,
		  struct ferry_error *err);
/* An eventfd readable when the writer has ended (cleanly or not). */
int blk_dst_done_fd(const struct blk_dst *b);
/*
 * 0 while running, 1 when the writer ended cleanly (the source ended the
 * stream, all synced), -errno when it failed.
 */
int blk_dst_status(struct blk_dst *b, struct ferry_error *err);
void blk_dst_report(const struct blk_dst *b, struct ferry_report *r);
/* Stop, close the targets, remove ferry's exports from QEMU. */
void blk_dst_free(struct blk_dst *b);

#endif /* FERRY_BLK_H */
