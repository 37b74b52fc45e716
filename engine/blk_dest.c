/*
 * Block migration, destination side (see blk.h).
 *
 * The writer thread reads disk records from the record socket (the disk
 * tunnel's local end), checks each against the manifest, and applies it
 * with up to BLK_DST_QUEUE_DEPTH requests in flight:
 *
 *   raw image file   io_uring writes (O_DIRECT when offset, length and
 *                    buffer are aligned and the file system allows it) and
 *                    fallocate (punch hole, or zero range) for ZERO;
 *   other formats    an NBD export of the destination QEMU (block-export-
 *                    add on a private unix socket), pipelined.
 *
 * Requests in flight never overlap: a record whose range overlaps one in
 * flight waits for it, so a block the mirror rewrote ends with the newer
 * data. FLUSH drains everything, syncs every disk and answers FLUSHED.
 *
 * The engine thread owns QMP: when the writer has ended it removes the
 * exports, and only then closes the return direction, so the source's
 * switchover waits until QEMU no longer holds ferry's exports.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "blk.h"
#include "mig.h"
#include "transport/nbd_client.h"
#include "transport/net.h"
#include "common/util.h"

#define BLK_NBD_CONNECT_TIMEOUT_MS 10000
#define BLK_NBD_REPLY_TIMEOUT_MS 60000

enum slot_op { SLOT_FREE = 0, SLOT_WRITE, SLOT_ZERO };

struct slot {
	enum slot_op op;
	uint8_t disk;
	bool may_trim;
	uint64_t off;
	uint32_t len, done;	/* bytes, and bytes already written */
	uint8_t *buf;		/* WIRE_DISK_DATA_MAX, BLK_DIRECT_ALIGN-aligned */
};

struct dst_disk {
	struct blk_disk_info info;
	int fd, dfd;		/* raw file: buffered, O_DIRECT (or -1) */
	struct nbd_client *nbd;	/* other formats */
	char export_id[96];
	bool exported;
	uint32_t inflight;
};

struct blk_dst {
	struct qmp *q;
	struct wire_disk manifest[WIRE_DISKS_MAX];	/* the source's */
	struct dst_disk d[WIRE_DISKS_MAX];		/* the same disks here */
	uint32_t n;
	char dir[64];
	bool nbd_server;
	struct tun *tun;
	int fd;			/* our end of the record socket */
	struct io_uring ring;
	bool ring_ok;
	uint32_t ring_inflight;
	struct slot slots[BLK_DST_QUEUE_DEPTH];
	uint8_t *arena;
	pthread_t writer;
	bool writer_started;
	int done_efd;
	/* Set by the writer before done_efd fires. */
	int wrc;		/* 0: END reached, all synced */
	struct ferry_error werr;
	bool joined;		/* the writer ended and was joined */
	int status;		/* blk_dst_status() once joined */
	bool released;		/* exports removed, return direction closed */
	uint64_t data_bytes, zero_bytes, flushes;
	/*
	 * O_DIRECT only for whole pages: a buffered write next to a direct one
	 * in the same page could write back stale bytes over it.
	 */
	uint32_t direct_align;
};

/* A record back to the source: FLUSHED, or ERROR with its text. */
static int send_back(struct blk_dst *b, const struct wire_disk_rec *r,
		     const void *payload, struct ferry_error *err)
{
	struct net_conn rec = { .fd = b->fd };
	uint8_t hdr[WIRE_DISK_HDR_BYTES];
	int rc;

	wire_disk_rec_encode(r, hdr);
	rc = net_write_full(&rec, hdr, sizeof(hdr), BLK_SEND_TIMEOUT_MS,
			    "a disk acknowledgement", err);
	if (rc == 0 && r->len)
		rc = net_write_full(&rec, payload, r->len, BLK_SEND_TIMEOUT_MS,
				    "a disk error", err);
	return rc;
}

/* Best effort: the source learns why before the stream ends. */
static void send_error(struct blk_dst *b, const char *msg)
{
	struct wire_disk_rec e = {
		.op = WIRE_DISK_ERROR,
		.len = (uint32_t)strnlen(msg, FERRY_ERROR_MSG_MAX),
	};

	send_back(b, &e, msg, NULL);
}

/* ---- the pre-checks ---------------------------------------------------- */

static int check_in_use(struct qmp *q, const struct dst_disk *d,
			struct ferry_error *err)
{
	struct qemu_block_job jobs[QEMU_BLOCK_JOBS_MAX];
	struct qemu_block_export ex[QEMU_BLOCK_EXPORTS_MAX];
	size_t n;
	int rc;

	rc = qemu_query_block_jobs(q, jobs, QEMU_BLOCK_JOBS_MAX, &n, err);
	if (rc < 0)
		return rc;
	if (n)
		return ferry_error_set(err, -EBUSY, "disk %s: the destination QEMU "
			"runs block job '%s'; its disks must not be in use",
			d->info.w.id, jobs[0].id);
	rc = qemu_query_block_exports(q, ex, QEMU_BLOCK_EXPORTS_MAX, &n, err);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(ex[i].node_name, d->info.node_name))
			rc = ferry_error_set(err, -EBUSY, "disk %s: already exported "
				"by the destination QEMU as '%s'", d->info.w.id,
				ex[i].id);
	return rc;
}

/*
 * Whether the destination's image of @d is the source's own (the marker
 * of migration @mig_id beside it names it): then it is refused, never
 * written. A marker that is not there, or names another file, is an
 * image of this host's own.
 */
static int check_shared(const struct dst_disk *d, const char *mig_id,
			struct ferry_error *err)
{
	const char *f = d->info.filename, *base = strrchr(f, '/');
	char path[sizeof(d->info.filename) + 128], name[256];
	ssize_t n = -1;
	int fd;

	if (blk_shared_marker(path, sizeof(path), &d->info, mig_id) < 0)
		return 0;	/* no file image: nothing a source can share */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd >= 0) {
		n = read(fd, name, sizeof(name) - 1);
		close(fd);
	}
	if (n <= 0)
		return 0;
	name[n] = '\0';
	if (strcmp(name, base + 1))
		return 0;
	return ferry_error_set(err, -EEXIST, "disk %s: the destination's image "
		"%s is the source's own image (shared storage: this host sees the "
		"marker the source put beside it); it is not copied onto itself: "
		"leave it out with --disks naming only the local disks, or "
		"migrate without --block if every disk is shared", d->info.w.id, f);
}

/* The file system must hold what the source image holds beyond what the
 * destination image already has. */
static int check_space(const struct dst_disk *d, const struct wire_disk *w,
		       struct ferry_error *err)
{
	struct statvfs vfs;
	struct stat st;
	uint64_t have, need, avail;

	if (!d->info.filename[0] || stat(d->info.filename, &st) < 0 ||
	    !S_ISREG(st.st_mode))
		return 0;	/* a device or a network image: nothing to check */
	if (statvfs(d->info.filename, &vfs) < 0)
		return ferry_error_set(err, -errno, "statvfs %s: %s",
				       d->info.filename, strerror(errno));
	have = (uint64_t)st.st_blocks * 512;
	need = w->allocated > have ? w->allocated - have : 0;
	avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	if (need > avail)
		return ferry_error_set(err, -ENOSPC, "disk %s: the source image "
			"holds %llu MiB, %s has %llu MiB and its file system %llu "
			"MiB free", w->id, (unsigned long long)(w->allocated >> 20),
			d->info.filename, (unsigned long long)(have >> 20),
			(unsigned long long)(avail >> 20));
	return 0;
}

static bool is_raw_file(const struct blk_disk_info *i)
{
	struct stat st;

	return !strcmp(i->format, "raw") && i->filename[0] == '/' &&
	       stat(i->filename, &st) == 0 &&
	       (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode));
}

static int open_raw(struct dst_disk *d, struct ferry_error *err)
{
	d->fd = open(d->info.filename, O_RDWR | O_CLOEXEC);
	if (d->fd < 0)
		return ferry_error_set(err, -errno, "disk %s: opening %s: %s",
				       d->info.w.id, d->info.filename,
				       strerror(errno));
	/* tmpfs and some others refuse O_DIRECT: then buffered only. */
	d->dfd = open(d->info.filename, O_RDWR | O_CLOEXEC | O_DIRECT);
	return 0;
}

/* Have the destination QEMU export the disk's node, and connect to it. */
static int open_export(struct blk_dst *b, struct dst_disk *d,
		       struct ferry_error *err)
{
	char sock[128];
	int rc;

	snprintf(sock, sizeof(sock), "%s/nbd.sock", b->dir);
	if (!b->nbd_server) {
		rc = qemu_nbd_server_start_unix(b->q, sock, err);
		if (rc < 0)
			return ferry_error_prefix(err, "nbd-server-start: ");
		b->nbd_server = true;
		/* The exports hold the images: QEMU must not activate them
		 * for the guest before ferry removed the exports. */
		rc = qemu_late_block_activate(b->q, err);
		if (rc < 0)
			return rc;
	}
	snprintf(d->export_id, sizeof(d->export_id), "ferry-export-%s",
		 d->info.w.id);
	rc = qemu_block_export_add_nbd(b->q, d->export_id, d->info.node_name,
				       d->info.w.id, true, err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk %s: block-export-add: ",
					  d->info.w.id);
	d->exported = true;
	rc = nbd_client_connect(&d->nbd, sock, d->info.w.id,
				BLK_NBD_CONNECT_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk %s: the destination QEMU's "
					  "export: ", d->info.w.id);
	if (nbd_client_size(d->nbd) != d->info.w.size)
		return ferry_error_set(err, -EIO, "disk %s: QEMU exports %llu "
			"bytes, expected %llu", d->info.w.id,
			(unsigned long long)nbd_client_size(d->nbd),
			(unsigned long long)d->info.w.size);
	return 0;
}

static struct blk_dst *dst_alloc(struct qmp *q)
{
	struct blk_dst *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->q = q;
	b->fd = -1;
	b->done_efd = -1;
	b->direct_align = BLK_DIRECT_ALIGN;
	if (sysconf(_SC_PAGESIZE) > (long)BLK_DIRECT_ALIGN)
		b->direct_align = (uint32_t)sysconf(_SC_PAGESIZE);
	for (uint32_t i = 0; i < WIRE_DISKS_MAX; i++)
		b->d[i].fd = b->d[i].dfd = -1;
	return b;
}

int blk_dst_prepare(struct blk_dst **out, struct qmp *q, const char *mig_id,
		    const struct wire_disk *w, uint32_t n,
		    struct ferry_error *err)
{
	struct blk_disk_info have[WIRE_DISKS_MAX];
	struct blk_dst *b;
	uint32_t nh;
	int rc;

	*out = b = dst_alloc(q);
	if (!b)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	{
		char ids[WIRE_DISKS_MAX * (WIRE_DISK_ID_MAX + 1) + 1] = "";

		/* Only the manifest's disks: others are not ferry's business. */
		for (uint32_t i = 0; i < n; i++) {
			strcat(ids, w[i].id);
			strcat(ids, ",");
		}
		rc = blk_query_disks(q, ids, have, &nh, err);
	}
	if (rc < 0)
		return ferry_error_prefix(err, "destination disks: ");
	b->n = n;
	for (uint32_t i = 0; i < n; i++) {
		struct dst_disk *d = &b->d[i];
		uint32_t k = 0;

		while (k < nh && strcmp(have[k].w.id, w[i].id))
			k++;
		if (k == nh)
			return ferry_error_set(err, -ENOENT, "disk %s: the "
				"destination QEMU has no disk with that id and a "
				"medium (query-block)", w[i].id);
		d->info = have[k];
		b->manifest[i] = w[i];
		if (have[k].w.size != w[i].size)
			return ferry_error_set(err, -EINVAL, "disk %s: %llu bytes on "
				"the source, %llu on the destination", w[i].id,
				(unsigned long long)w[i].size,
				(unsigned long long)have[k].w.size);
		rc = check_shared(d, mig_id, err);
		if (rc == 0)
			rc = check_in_use(q, d, err);
		if (rc == 0)
			rc = check_space(d, &w[i], err);
		if (rc < 0)
			return rc;
	}
	snprintf(b->dir, sizeof(b->dir), "%s/" BLK_DIR_PREFIX "XXXXXX",
		 blk_tmpdir());
	if (!mkdtemp(b->dir)) {
		b->dir[0] = 0;
		return ferry_error_set(err, -errno, "mkdtemp: %s", strerror(errno));
	}
	for (uint32_t i = 0; i < n; i++) {
		struct dst_disk *d = &b->d[i];

		rc = is_raw_file(&d->info) ? open_raw(d, err) : open_export(b, d, err);
		if (rc < 0)
			return rc;
		ferry_log(FERRY_LOG_INFO, "disk %s: %llu MiB into %s (%s)",
			  d->info.w.id, (unsigned long long)(d->info.w.size >> 20),
			  d->nbd ? "QEMU's NBD export" : d->info.filename,
			  d->nbd ? d->info.format : d->dfd >= 0 ? "raw, O_DIRECT" :
			  "raw");
	}
	return 0;
}

/* ---- the writer --------------------------------------------------------- */

static bool overlaps(const struct slot *s, uint8_t disk, uint64_t off,
		     uint32_t len)
{
	return s->op != SLOT_FREE && s->disk == disk && off < s->off + s->len &&
	       s->off < off + len;
}

static void prep_raw(struct blk_dst *b, struct slot *s, uint32_t idx)
{
	struct dst_disk *d = &b->d[s->disk];
	struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
	uint32_t left = s->len - s->done;
	uint64_t off = s->off + s->done;

	/* One sqe per slot in flight, and the ring has as many entries. */
	FERRY_ASSERT(sqe);
	if (s->op == SLOT_WRITE) {
		bool direct = d->dfd >= 0 && !(off % b->direct_align) &&
			      !(left % b->direct_align) &&
			      !(s->done % b->direct_align);

		io_uring_prep_write(sqe, direct ? d->dfd : d->fd, s->buf + s->done,
				    left, off);
	} else {
		io_uring_prep_fallocate(sqe, d->fd, s->may_trim ?
					FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE :
					FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
					(off_t)off, (off_t)left);
	}
	io_uring_sqe_set_data64(sqe, idx);
}

static int submit(struct blk_dst *b, uint32_t idx, struct ferry_error *err)
{
	struct slot *s = &b->slots[idx];
	struct dst_disk *d = &b->d[s->disk];
	int rc;

	if (d->nbd) {
		rc = s->op == SLOT_WRITE ?
			nbd_client_write(d->nbd, idx, s->buf, s->len, s->off, err) :
			nbd_client_zero(d->nbd, idx, s->len, s->off, s->may_trim, err);
		if (rc < 0)
			return ferry_error_prefix(err, "disk %s: ", d->info.w.id);
	} else {
		prep_raw(b, s, idx);
		rc = io_uring_submit(&b->ring);
		if (rc < 0)
			return ferry_error_set(err, rc, "io_uring_submit: %s",
					       strerror(-rc));
		b->ring_inflight++;
	}
	d->inflight++;
	return 0;
}

/* Zeroes the slow way, where fallocate cannot (some file systems). */
static int zero_by_writing(struct blk_dst *b, struct slot *s)
{
	struct dst_disk *d = &b->d[s->disk];

	memset(s->buf, 0, WIRE_DISK_DATA_MAX);
	while (s->done < s->len) {
		uint32_t n = s->len - s->done < WIRE_DISK_DATA_MAX ?
			     s->len - s->done : WIRE_DISK_DATA_MAX;
		ssize_t k = pwrite(d->fd, s->buf, n, (off_t)(s->off + s->done));

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		s->done += (uint32_t)k;
	}
	return 0;
}

static void release_slot(struct blk_dst *b, struct slot *s)
{
	b->d[s->disk].inflight--;
	s->op = SLOT_FREE;
}

/* An io_uring completion: done, resubmitted (short, EAGAIN), or failed. */
static int complete_raw(struct blk_dst *b, struct ferry_error *err)
{
	struct io_uring_cqe *cqe;
	struct slot *s;
	uint32_t idx;
	int rc, res;

	rc = io_uring_wait_cqe(&b->ring, &cqe);
	if (rc < 0)
		return ferry_error_set(err, rc, "io_uring_wait_cqe: %s",
				       strerror(-rc));
	idx = (uint32_t)io_uring_cqe_get_data64(cqe);
	res = cqe->res;
	io_uring_cqe_seen(&b->ring, cqe);
	FERRY_ASSERT(idx < BLK_DST_QUEUE_DEPTH);	/* set in prep_raw */
	s = &b->slots[idx];
	b->ring_inflight--;
	b->d[s->disk].inflight--;
	if (res == -EAGAIN || res == -EINTR)
		return submit(b, idx, err);
	if (s->op == SLOT_ZERO && (res == -EOPNOTSUPP || res == -EINVAL)) {
		res = zero_by_writing(b, s);
		if (res == 0) {
			s->op = SLOT_FREE;
			return 0;
		}
	}
	if (res < 0 || (s->op == SLOT_WRITE && res == 0))
		return ferry_error_set(err, res < 0 ? res : -EIO, "disk %s: %s of "
			"%u bytes at %llu: %s", b->d[s->disk].info.w.id,
			s->op == SLOT_WRITE ? "write" : "fallocate", s->len,
			(unsigned long long)s->off, strerror(res < 0 ? -res : EIO));
	if (s->op == SLOT_WRITE && s->done + (uint32_t)res < s->len) {
		s->done += (uint32_t)res;	/* short write: the rest */
		return submit(b, idx, err);
	}
	s->op = SLOT_FREE;
	return 0;
}

static int complete_nbd(struct blk_dst *b, struct dst_disk *d,
			struct ferry_error *err)
{
	uint64_t cookie;
	uint32_t nerr;
	int rc;

	rc = nbd_client_reply(d->nbd, &cookie, &nerr, BLK_NBD_REPLY_TIMEOUT_MS,
			      err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk %s: QEMU's export: ",
					  d->info.w.id);
	if (cookie >= BLK_DST_QUEUE_DEPTH)
		return ferry_error_set(err, -EPROTO, "disk %s: reply for request "
				       "%llu", d->info.w.id,
				       (unsigned long long)cookie);
	if (nerr)
		return ferry_error_set(err, -EIO, "disk %s: QEMU's export failed "
			"a request at %llu with NBD error %u", d->info.w.id,
			(unsigned long long)b->slots[cookie].off, nerr);
	release_slot(b, &b->slots[cookie]);
	return 0;
}

/* Wait for one request in flight to finish. */
static int complete_one(struct blk_dst *b, struct ferry_error *err)
{
	if (b->ring_inflight)
		return complete_raw(b, err);
	for (uint32_t i = 0; i < b->n; i++)
		if (b->d[i].nbd && b->d[i].inflight)
			return complete_nbd(b, &b->d[i], err);
	FERRY_ASSERT(!"complete_one with nothing in flight");
	return -EINVAL;
}

static uint32_t inflight(const struct blk_dst *b)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < b->n; i++)
		n += b->d[i].inflight;
	return n;
}

/* A free slot whose range overlaps nothing in flight. */
static int get_slot(struct blk_dst *b, uint8_t disk, uint64_t off,
		    uint32_t len, uint32_t *idx, struct ferry_error *err)
{
	for (;;) {
		bool clash = false;
		int free_idx = -1, rc;

		for (uint32_t i = 0; i < BLK_DST_QUEUE_DEPTH; i++) {
			clash |= overlaps(&b->slots[i], disk, off, len);
			if (b->slots[i].op == SLOT_FREE && free_idx < 0)
				free_idx = (int)i;
		}
		if (!clash && free_idx >= 0) {
			*idx = (uint32_t)free_idx;
			return 0;
		}
		rc = complete_one(b, err);
		if (rc < 0)
			return rc;
	}
}

static int drain(struct blk_dst *b, struct ferry_error *err)
{
	while (inflight(b)) {
		int rc = complete_one(b, err);

		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Everything written reaches stable storage. */
static int sync_all(struct blk_dst *b, struct ferry_error *err)
{
	int rc = drain(b, err);

	for (uint32_t i = 0; rc == 0 && i < b->n; i++) {
		struct dst_disk *d = &b->d[i];
		uint64_t cookie;
		uint32_t nerr = 0;

		if (!d->nbd) {
			if (fdatasync(d->fd) < 0)
				rc = ferry_error_set(err, -errno, "disk %s: "
						     "fdatasync: %s", d->info.w.id,
						     strerror(errno));
			continue;
		}
		/* Nothing in flight after drain(): the reply is the flush's. */
		rc = nbd_client_flush(d->nbd, 0, err);
		if (rc == 0)
			rc = nbd_client_reply(d->nbd, &cookie, &nerr,
					      BLK_NBD_REPLY_TIMEOUT_MS, err);
		if (rc == 0 && nerr)
			rc = ferry_error_set(err, -EIO, "disk %s: QEMU's export "
					     "failed a flush with NBD error %u",
					     d->info.w.id, nerr);
		if (rc < 0)
			ferry_error_prefix(err, "disk %s: ", d->info.w.id);
	}
	return rc;
}

static int apply(struct blk_dst *b, const struct wire_disk_rec *r,
		 struct ferry_error *err)
{
	struct slot *s;
	uint32_t idx;
	int rc;

	if (r->op == WIRE_DISK_FLUSH) {
		struct wire_disk_rec ack = { .op = WIRE_DISK_FLUSHED,
					     .offset = r->offset };

		rc = sync_all(b, err);
		if (rc < 0)
			return rc;
		b->flushes++;
		return send_back(b, &ack, NULL, err);
	}
	/* An NBD export zeroes at most NBD_PAYLOAD_MAX per request. */
	if (r->op == WIRE_DISK_ZERO && b->d[r->disk].nbd && r->len > NBD_PAYLOAD_MAX) {
		struct wire_disk_rec part = *r;

		for (uint64_t done = 0; done < r->len; done += part.len) {
			part.offset = r->offset + done;
			part.len = r->len - done < NBD_PAYLOAD_MAX ?
				   (uint32_t)(r->len - done) : NBD_PAYLOAD_MAX;
			rc = apply(b, &part, err);
			if (rc < 0)
				return rc;
		}
		return 0;
	}
	rc = get_slot(b, r->disk, r->offset, r->len, &idx, err);
	if (rc < 0)
		return rc;
	s = &b->slots[idx];
	*s = (struct slot){ .op = r->op == WIRE_DISK_DATA ? SLOT_WRITE : SLOT_ZERO,
			    .disk = r->disk, .off = r->offset, .len = r->len,
			    .may_trim = r->flags & WIRE_DISK_MAY_TRIM,
			    .buf = s->buf };
	if (r->op == WIRE_DISK_DATA) {
		rc = net_read_full(&(struct net_conn){ .fd = b->fd }, s->buf,
				   r->len, BLK_SEND_TIMEOUT_MS, "disk data", err);
		if (rc < 0) {
			s->op = SLOT_FREE;
			return rc;
		}
		b->data_bytes += r->len;
	} else {
		b->zero_bytes += r->len;
	}
	rc = submit(b, idx, err);
	if (rc < 0)
		s->op = SLOT_FREE;
	return rc;
}

static void *writer_main(void *arg)
{
	struct blk_dst *b = arg;
	struct ferry_error *err = &b->werr;
	bool ended = false;
	uint64_t one = 1;
	int rc;

	for (;;) {
		uint8_t hdr[WIRE_DISK_HDR_BYTES];
		struct wire_disk_rec r;

		/* The disk tunnel closes the socket when it ends or fails. */
		rc = net_read_full(&(struct net_conn){ .fd = b->fd }, hdr,
				   sizeof(hdr), BLK_IDLE_TIMEOUT_MS, "a disk record",
				   err);
		if (rc < 0) {
			ferry_error_prefix(err, "the disk stream broke off before "
					   "its end: ");
			break;
		}
		rc = wire_disk_rec_decode(hdr, &r, err);
		if (rc == 0)
			rc = wire_disk_rec_check(&r, b->manifest, b->n, err);
		if (rc == 0 && r.op == WIRE_DISK_END) {
			ended = true;
			break;
		}
		if (rc == 0)
			rc = apply(b, &r, err);
		if (rc < 0)
			break;
	}
	if (ended)
		rc = sync_all(b, err);
	else
		drain(b, &(struct ferry_error){ 0 });
	if (rc < 0) {
		ferry_log(FERRY_LOG_ERROR, "disk writer: %s", err->msg);
		send_error(b, err->msg);
	}
	b->wrc = rc;
	if (write(b->done_efd, &one, sizeof(one)) < 0) {
		/* cannot happen: the counter is far from its maximum */
	}
	return NULL;
}

int blk_dst_start(struct blk_dst *b, struct tun_opts *to,
		  struct ferry_error *err)
{
	int sv[2], rc;

	rc = net_local_pair(sv, err);
	if (rc < 0) {
		for (uint32_t i = 0; i < to->nstreams; i++)
			net_conn_close(&to->streams[i]);
		net_conn_close(&to->ret);
		return rc;
	}
	b->fd = sv[0];
	to->role = TUN_DEST;
	to->local_fd = sv[1];
	rc = tun_start(&b->tun, to, err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk tunnel: ");
	b->done_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->done_efd < 0)
		return ferry_error_set(err, -errno, "eventfd: %s", strerror(errno));
	rc = posix_memalign((void **)&b->arena, BLK_DIRECT_ALIGN,
			    (size_t)BLK_DST_QUEUE_DEPTH * WIRE_DISK_DATA_MAX);
	if (rc)
		return ferry_error_set(err, -rc, "no memory for disk buffers");
	for (uint32_t i = 0; i < BLK_DST_QUEUE_DEPTH; i++)
		b->slots[i].buf = b->arena + (size_t)i * WIRE_DISK_DATA_MAX;
	rc = io_uring_queue_init(BLK_DST_QUEUE_DEPTH, &b->ring, 0);
	if (rc < 0)
		return ferry_error_set(err, rc, "io_uring_queue_init: %s",
				       strerror(-rc));
	b->ring_ok = true;
	rc = -pthread_create(&b->writer, NULL, writer_main, b);
	if (rc < 0)
		return ferry_error_set(err, rc, "pthread_create: %s", strerror(-rc));
	b->writer_started = true;
	return 0;
}

int blk_dst_done_fd(const struct blk_dst *b)
{
	return b && b->writer_started && !b->joined ? b->done_efd : -1;
}

/* Remove ferry's exports from QEMU, then end the return direction. */
static int release(struct blk_dst *b, struct ferry_error *err)
{
	int rc = 0;

	for (uint32_t i = 0; i < b->n; i++) {
		struct dst_disk *d = &b->d[i];

		nbd_client_close(d->nbd);
		d->nbd = NULL;
		/* hard: ferry's own connection may not be gone yet in QEMU;
		 * everything was flushed already. */
		if (d->exported && rc == 0) {
			rc = qemu_block_export_del(b->q, d->export_id, true, err);
			d->exported = rc < 0;
		}
	}
	/* The server goes in any case: it closes whatever export is left. */
	if (b->nbd_server &&
	    qemu_nbd_server_stop(b->q, rc < 0 ? NULL : err) == 0)
		b->nbd_server = false;
	b->released = rc == 0;
	/* Tell the source, which still waits in pre-switchover. */
	if (rc < 0 && b->fd >= 0)
		send_error(b, err->msg);
	if (b->fd >= 0)
		shutdown(b->fd, SHUT_WR);
	return rc;
}

int blk_dst_status(struct blk_dst *b, struct ferry_error *err)
{
	uint64_t v;

	if (!b || !b->writer_started)
		return 0;
	if (!b->joined) {
		if (read(b->done_efd, &v, sizeof(v)) != sizeof(v))
			return 0;
		pthread_join(b->writer, NULL);
		b->joined = true;
		b->status = 1;
		if (b->wrc < 0)
			b->status = b->wrc;
		else if (release(b, &b->werr) < 0)
			b->status = b->werr.code;
		if (b->status == 1)
			ferry_log(FERRY_LOG_INFO, "disks written and synced: %llu "
				  "MiB data, %llu MiB zeroes, %llu flushes",
				  (unsigned long long)(b->data_bytes >> 20),
				  (unsigned long long)(b->zero_bytes >> 20),
				  (unsigned long long)b->flushes);
	}
	if (b->status < 0)
		return ferry_error_set(err, b->status, "disk writer: %s",
				       b->werr.msg);
	return b->status;
}

void blk_dst_report(const struct blk_dst *b, struct ferry_report *r)
{
	struct tun_stats st = { 0 };

	if (!b)
		return;
	if (b->tun)
		tun_stats(b->tun, &st);
	r->disks = b->n;
	for (uint32_t i = 0; i < b->n; i++)
		r->disk_size_bytes += b->manifest[i].size;
	r->disk_data_bytes = b->data_bytes;
	r->disk_zero_bytes = b->zero_bytes;
	r->disk_wire_bytes = st.wire_in_bytes + st.wire_out_bytes;
}

void blk_dst_free(struct blk_dst *b)
{
	if (!b)
		return;
	if (b->tun)
		tun_cancel(b->tun);
	if (b->fd >= 0)
		shutdown(b->fd, SHUT_RDWR);
	if (b->writer_started && !b->joined)
		pthread_join(b->writer, NULL);
	tun_free(b->tun);
	if (!b->released)
		release(b, &(struct ferry_error){ 0 });
	for (uint32_t i = 0; i < b->n; i++) {
		nbd_client_close(b->d[i].nbd);
		if (b->d[i].fd >= 0)
			close(b->d[i].fd);
		if (b->d[i].dfd >= 0)
			close(b->d[i].dfd);
	}
	if (b->ring_ok)
		io_uring_queue_exit(&b->ring);
	free(b->arena);
	if (b->dir[0]) {
		char sock[128];

		snprintf(sock, sizeof(sock), "%s/nbd.sock", b->dir);
		unlink(sock);
		rmdir(b->dir);
	}
	if (b->fd >= 0)
		close(b->fd);
	if (b->done_efd >= 0)
		close(b->done_efd);
	free(b);
}
