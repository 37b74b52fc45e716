/*
 * Block migration, source side (see blk.h).
 *
 * Threads: one NBD server per disk (QEMU's mirror is its one client),
 * which turns requests into disk records on the record socket; one
 * acknowledgement reader for what the destination sends back (FLUSHED,
 * ERROR); the disk tunnel's own threads. The engine thread drives the
 * mirror jobs over QMP.
 *
 * A write is acknowledged to QEMU once its record is queued on the
 * record socket, in order. QEMU's mirror flushes its target before it
 * reports ready, and ferry's own barrier follows the last write at the
 * switchover: both wait for the destination's FLUSHED, so "ready" and
 * "switched over" both mean synced on the destination.
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "blk.h"
#include "mig.h"
#include "transport/nbd.h"
#include "transport/net.h"
#include "common/util.h"

/* The NBD client (QEMU) connects during blockdev-add, right away. */
#define BLK_ACCEPT_TIMEOUT_MS 30000
/* Bound on force-cancelled mirror jobs going away. */
#define BLK_CANCEL_TIMEOUT_MS 10000

struct src_disk {
	struct blk_src *b;
	uint8_t index;
	struct blk_disk_info info;
	char sock[128], job[96], target[96];
	char marker[1024 + 128];	/* the shared-storage marker, "" if none */
	int lfd, cfd;			/* listening socket, QEMU's connection */
	pthread_t thread;
	bool thread_started;
	struct nbd_export ex;
	struct nbd_stats st;
	struct ferry_error err;
	int rc;
	bool node_added, job_started, cancel_sent, ready, done;
	uint64_t offset, len;		/* the job's progress */
	uint64_t len_copying;		/* len when it began copying, or 0 */
};

struct blk_src {
	struct qmp *q;
	enum ferry_block_mode mode;
	char dir[64];
	struct src_disk d[WIRE_DISKS_MAX];
	uint32_t n;
	int fd;				/* our end of the record socket */
	int stop_efd;
	struct tun *tun;
	pthread_mutex_t wlock;		/* one record at a time on fd */
	pthread_mutex_t lock;		/* what follows */
	pthread_cond_t cond;
	uint64_t barrier_sent, barrier_acked;
	bool failed, eof, ended;
	bool stopping;			/* ferry closes QEMU's connections */
	char why[WIRE_DISK_ERROR_MAX + 64];
	uint64_t data_bytes, zero_bytes;
	pthread_t acker;
	bool acker_started;
	uint64_t t0_ms, mirror_ms, switchover_ms;
	uint64_t copying_ms;		/* when the first mirror began copying */
	uint64_t last_keepalive_ms, keepalive_bytes;
};

static void src_fail(struct blk_src *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void src_fail(struct blk_src *b, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&b->lock);
	if (!b->failed) {
		va_start(ap, fmt);
		vsnprintf(b->why, sizeof(b->why), fmt, ap);
		va_end(ap);
		b->failed = true;
	}
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
}

/*
 * Queue one record (and its payload) on the record socket. A FLUSH gets
 * its barrier number here, under the lock that orders the records, so
 * barriers travel in the order of their numbers.
 */
static int emit(struct blk_src *b, struct wire_disk_rec *r, const void *payload)
{
	struct net_conn rec = { .fd = b->fd };
	uint8_t hdr[WIRE_DISK_HDR_BYTES];
	int rc;

	pthread_mutex_lock(&b->wlock);
	if (r->op == WIRE_DISK_FLUSH)
		r->offset = ++b->barrier_sent;
	wire_disk_rec_encode(r, hdr);
	rc = net_write_full(&rec, hdr, sizeof(hdr), BLK_SEND_TIMEOUT_MS,
			    "disk record", NULL);
	if (rc == 0 && r->op == WIRE_DISK_DATA)
		rc = net_write_full(&rec, payload, r->len, BLK_SEND_TIMEOUT_MS,
				    "disk data", NULL);
	if (rc == 0 && r->op == WIRE_DISK_DATA)
		b->data_bytes += r->len;
	else if (rc == 0 && r->op == WIRE_DISK_ZERO)
		b->zero_bytes += r->len;
	pthread_mutex_unlock(&b->wlock);
	if (rc < 0)
		src_fail(b, "the disk tunnel is gone (%s)", strerror(-rc));
	return rc;
}

static bool src_failed(struct blk_src *b)
{
	bool f;

	pthread_mutex_lock(&b->lock);
	f = b->failed;
	pthread_mutex_unlock(&b->lock);
	return f;
}

static bool is_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/*
 * QEMU's write: runs of all-zero BLK_ZERO_CHUNK_BYTES chunks become ZERO
 * records (a header on the wire, fallocate on the destination), the rest
 * DATA records of at most WIRE_DISK_DATA_MAX.
 */
static int src_pwrite(void *ctx, const void *buf, uint32_t len, uint64_t off,
		      bool fua)
{
	struct src_disk *d = ctx;
	const uint8_t *p = buf;
	int rc;
	int next = -1;	/* the class of the chunk at p, once scanned */
	uint32_t s;

	if (src_failed(d->b))
		return -EIO;
	/* Each chunk is scanned once: the one that ends a run starts the next. */
	while (len) {
		struct wire_disk_rec r = { .disk = d->index, .offset = off };
		uint32_t run = len < BLK_ZERO_CHUNK_BYTES ? len : BLK_ZERO_CHUNK_BYTES;
		bool zero = next >= 0 ? next : is_zero(p, run);

		for (next = -1; run < len; run += s) {
			s = len - run < BLK_ZERO_CHUNK_BYTES ? len - run :
							      BLK_ZERO_CHUNK_BYTES;
			if (!zero && run + s > WIRE_DISK_DATA_MAX)
				break;
			next = is_zero(p + run, s);
			if (next != zero)
				break;
			next = -1;
		}
		r.op = zero ? WIRE_DISK_ZERO : WIRE_DISK_DATA;
		r.len = run;
		rc = emit(d->b, &r, p);
		if (rc < 0)
			return -EIO;
		p += run;
		off += run;
		len -= run;
	}
	return fua ? d->ex.be.flush(d) : 0;
}

static int src_zero(void *ctx, uint32_t len, uint64_t off, bool may_trim)
{
	struct src_disk *d = ctx;
	struct wire_disk_rec r = {
		.op = WIRE_DISK_ZERO, .disk = d->index, .offset = off, .len = len,
		.flags = may_trim ? WIRE_DISK_MAY_TRIM : 0,
	};

	if (src_failed(d->b))
		return -EIO;
	return emit(d->b, &r, NULL) < 0 ? -EIO : 0;
}

/* A trimmed range reads back as zeroes on the destination. */
static int src_trim(void *ctx, uint32_t len, uint64_t off)
{
	return src_zero(ctx, len, off, true);
}

static int src_pread(void *ctx, void *buf, uint32_t len, uint64_t off)
{
	struct src_disk *d = ctx;

	ferry_log(FERRY_LOG_WARN, "disk %s: the mirror target read %u bytes at "
		  "%llu; ferry's target is write-only", d->info.w.id, len,
		  (unsigned long long)off);
	return -EIO;
}

/* Send a barrier and wait until the destination has synced up to it. */
static int src_barrier(struct blk_src *b, struct ferry_error *err)
{
	struct wire_disk_rec r = { .op = WIRE_DISK_FLUSH };
	struct timespec ts;
	int rc = 0;

	/* The destination acknowledges barriers in order: >= is enough. */
	if (emit(b, &r, NULL) < 0)
		goto out;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += BLK_FLUSH_TIMEOUT_MS / 1000;
	pthread_mutex_lock(&b->lock);
	while (b->barrier_acked < r.offset && !b->failed && !b->eof &&
	       pthread_cond_timedwait(&b->cond, &b->lock, &ts) != ETIMEDOUT)
		;
	if (b->barrier_acked < r.offset && !b->failed)
		rc = ferry_error_set(err, -ETIMEDOUT, "the destination did not "
			"acknowledge disk flush %llu within %d s",
			(unsigned long long)r.offset, BLK_FLUSH_TIMEOUT_MS / 1000);
	pthread_mutex_unlock(&b->lock);
	if (rc < 0)
		return rc;
out:
	return blk_src_check(b, err);
}

static int src_flush(void *ctx)
{
	struct src_disk *d = ctx;
	struct ferry_error e = { 0 };

	return src_barrier(d->b, &e) < 0 ? -EIO : 0;
}

/* What the destination says: FLUSHED or ERROR, then the end. */
static void *acker_main(void *arg)
{
	struct blk_src *b = arg;

	for (;;) {
		uint8_t hdr[WIRE_DISK_HDR_BYTES];
		char text[WIRE_DISK_ERROR_MAX + 1];
		struct net_conn rec = { .fd = b->fd };
		struct ferry_error e = { 0 };
		struct wire_disk_rec r;
		bool ended;
		int rc;

		/* The disk tunnel closes the socket when it ends or fails. */
		rc = net_read_full(&rec, hdr, sizeof(hdr), BLK_IDLE_TIMEOUT_MS,
				   "a disk acknowledgement", &e);
		if (rc == -ECONNRESET) {
			pthread_mutex_lock(&b->lock);
			b->eof = true;
			ended = b->ended;
			pthread_cond_broadcast(&b->cond);
			pthread_mutex_unlock(&b->lock);
			if (!ended)
				src_fail(b, "the destination ended the disk "
					 "stream early");
			return NULL;
		}
		if (rc == 0)
			rc = wire_disk_rec_decode(hdr, &r, &e);
		if (rc == 0 && r.op != WIRE_DISK_FLUSHED && r.op != WIRE_DISK_ERROR)
			rc = ferry_error_set(&e, -EPROTO, "disk record op %u on "
					     "the return path", r.op);
		if (rc == 0 && r.op == WIRE_DISK_ERROR) {
			rc = net_read_full(&rec, text, r.len, BLK_SEND_TIMEOUT_MS,
					   "a disk error", NULL);
			text[rc == 0 ? r.len : 0] = 0;
			src_fail(b, "the destination reports: %s", text);
			return NULL;
		}
		if (rc < 0) {
			src_fail(b, "disk acknowledgements: %s", e.msg);
			return NULL;
		}
		pthread_mutex_lock(&b->wlock);
		rc = r.offset > b->barrier_sent ? -EPROTO : 0;
		pthread_mutex_unlock(&b->wlock);
		if (rc < 0) {
			src_fail(b, "the destination acknowledged disk flush %llu, "
				 "which was never sent", (unsigned long long)r.offset);
			return NULL;
		}
		pthread_mutex_lock(&b->lock);
		if (r.offset > b->barrier_acked)
			b->barrier_acked = r.offset;
		pthread_cond_broadcast(&b->cond);
		pthread_mutex_unlock(&b->lock);
	}
}

static void *serve_main(void *arg)
{
	struct src_disk *d = arg;
	struct pollfd p[2] = {
		{ .fd = d->lfd, .events = POLLIN },
		{ .fd = d->b->stop_efd, .events = POLLIN },
	};
	int fd;

	if (poll(p, 2, BLK_ACCEPT_TIMEOUT_MS) <= 0 || !p[0].revents) {
		d->rc = ferry_error_set(&d->err, -ETIMEDOUT, "QEMU never "
					"connected to ferry's NBD server");
		return NULL;
	}
	fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		d->rc = ferry_error_set(&d->err, -errno, "accept: %s",
					strerror(errno));
		return NULL;
	}
	pthread_mutex_lock(&d->b->lock);
	d->cfd = fd;
	pthread_mutex_unlock(&d->b->lock);
	d->rc = nbd_serve(fd, &d->ex, &d->st, &d->err);
	if (d->rc < 0) {
		bool stopping;

		pthread_mutex_lock(&d->b->lock);
		stopping = d->b->stopping;
		pthread_mutex_unlock(&d->b->lock);
		/* Unless ferry hung up itself, QEMU's mirror lost its target. */
		if (!stopping)
			src_fail(d->b, "disk %s: NBD server: %s", d->info.w.id,
				 d->err.msg);
		shutdown(fd, SHUT_RDWR);
	}
	return NULL;
}

int blk_src_new(struct blk_src **out, struct qmp *q,
		const struct ferry_block_opts *o, struct ferry_error *err)
{
	struct blk_disk_info info[WIRE_DISKS_MAX];
	struct blk_src *b;
	uint32_t n;
	int rc;

	rc = blk_query_disks(q, o->disks, info, &n, err);
	if (rc < 0)
		return ferry_error_prefix(err, "finding the disks to migrate: ");
	if (n == 0)
		return ferry_error_set(err, -ENOENT, "--block: the source QEMU has "
				       "no disk with a medium to migrate");
	b = calloc(1, sizeof(*b));
	if (!b)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	b->q = q;
	b->mode = o->mode;
	b->n = n;
	b->fd = -1;
	b->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_mutex_init(&b->wlock, NULL);
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->cond, NULL);
	for (uint32_t i = 0; i < n; i++) {
		struct src_disk *d = &b->d[i];

		d->b = b;
		d->index = (uint8_t)i;
		d->info = info[i];
		d->lfd = d->cfd = -1;
		/* From @info, not d->info: the names live in the same struct. */
		snprintf(d->job, sizeof(d->job), BLK_JOB_PREFIX "%s", info[i].w.id);
		snprintf(d->target, sizeof(d->target), BLK_NODE_PREFIX "%s",
			 info[i].w.id);
	}
	*out = b;
	if (b->stop_efd < 0)
		return ferry_error_set(err, -errno, "eventfd: %s", strerror(errno));
	return 0;
}

uint32_t blk_src_disks(const struct blk_src *b, struct wire_disk *d)
{
	for (uint32_t i = 0; i < b->n; i++)
		d[i] = b->d[i].info.w;
	return b->n;
}

static int listen_unix(const char *path, struct ferry_error *err)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(a.sun_path))
		return ferry_error_set(err, -ENAMETOOLONG, "socket path %s", path);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ferry_error_set(err, -errno, "socket: %s", strerror(errno));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1) < 0) {
		int e = -errno;

		close(fd);
		return ferry_error_set(err, e, "listening on %s: %s", path,
				       strerror(-e));
	}
	return fd;
}

/* ferry's NBD server for disk @d, then QEMU's NBD node and mirror job. */
static int start_mirror(struct src_disk *d, struct ferry_error *err)
{
	struct blk_src *b = d->b;
	int rc;

	snprintf(d->sock, sizeof(d->sock), "%s/%u.sock", b->dir, d->index);
	rc = listen_unix(d->sock, err);
	if (rc < 0)
		return rc;
	d->lfd = rc;
	d->ex.name = d->info.w.id;
	d->ex.size = d->info.w.size;
	d->ex.be = (struct nbd_backend){
		.pread = src_pread, .pwrite = src_pwrite, .zero = src_zero,
		.trim = src_trim, .flush = src_flush, .ctx = d,
	};
	d->ex.idle_timeout_ms = BLK_IDLE_TIMEOUT_MS;
	rc = -pthread_create(&d->thread, NULL, serve_main, d);
	if (rc < 0)
		return ferry_error_set(err, rc, "pthread_create: %s", strerror(-rc));
	d->thread_started = true;
	rc = qemu_blockdev_add_nbd(b->q, d->target, d->sock, d->info.w.id, err);
	if (rc < 0)
		return ferry_error_prefix(err, "adding ferry's NBD target: ");
	d->node_added = true;
	/*
	 * auto-dismiss off: a failed job stays in query-block-jobs with its
	 * error until ferry has read it.
	 */
	rc = qemu_blockdev_mirror(b->q, &(struct qemu_mirror){
		.job = d->job, .device = d->info.node, .target = d->target,
		.write_blocking = b->mode == FERRY_BLOCK_WRITE_BLOCKING &&
				  !d->info.read_only,
	}, err);
	if (rc < 0)
		return ferry_error_prefix(err, "blockdev-mirror: ");
	d->job_started = true;
	return 0;
}

int blk_src_start(struct blk_src *b, struct tun_opts *to,
		  struct ferry_error *err)
{
	int sv[2], rc;

	b->t0_ms = ferry_now_ms();
	rc = net_local_pair(sv, err);
	if (rc < 0)
		goto err_close_conns;
	b->fd = sv[0];
	to->role = TUN_SOURCE;
	to->local_fd = sv[1];
	rc = tun_start(&b->tun, to, err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk tunnel: ");
	rc = -pthread_create(&b->acker, NULL, acker_main, b);
	if (rc < 0)
		return ferry_error_set(err, rc, "pthread_create: %s", strerror(-rc));
	b->acker_started = true;
	snprintf(b->dir, sizeof(b->dir), "%s/" BLK_DIR_PREFIX "XXXXXX",
		 blk_tmpdir());
	if (!mkdtemp(b->dir)) {	/* mode 0700: only ferry and root */
		rc = ferry_error_set(err, -errno, "mkdtemp: %s", strerror(errno));
		b->dir[0] = 0;
		return rc;
	}
	for (uint32_t i = 0; i < b->n; i++) {
		rc = start_mirror(&b->d[i], err);
		if (rc < 0)
			return ferry_error_prefix(err, "disk %s: ", b->d[i].info.w.id);
		ferry_log(FERRY_LOG_INFO, "disk %s: mirroring %llu MiB (%s%s) "
			  "through ferry", b->d[i].info.w.id,
			  (unsigned long long)(b->d[i].info.w.size >> 20),
			  b->d[i].info.format,
			  b->d[i].info.read_only ? ", read-only: copied once" : "");
	}
	return 0;
err_close_conns:
	for (uint32_t i = 0; i < to->nstreams; i++)
		net_conn_close(&to->streams[i]);
	net_conn_close(&to->ret);
	return rc;
}

int blk_src_check(struct blk_src *b, struct ferry_error *err)
{
	int rc = 0;

	pthread_mutex_lock(&b->lock);
	if (b->failed)
		rc = ferry_error_set(err, -EIO, "disk migration: %s", b->why);
	pthread_mutex_unlock(&b->lock);
	return rc;
}

static struct src_disk *find_job(struct blk_src *b, const char *id)
{
	for (uint32_t i = 0; i < b->n; i++)
		if (id && !strcmp(b->d[i].job, id))
			return &b->d[i];
	return NULL;
}

/* A job concluded: read its error, dismiss it, drop its NBD node. */
static int conclude(struct src_disk *d, const struct qemu_block_job *job,
		    struct ferry_error *err)
{
	struct ferry_error why = { 0 };

	qemu_job_dismiss(d->b->q, d->job, NULL);
	d->job_started = false;
	d->done = true;
	if (d->node_added && qemu_blockdev_del(d->b->q, d->target, NULL) == 0)
		d->node_added = false;
	if (!job->failed)
		return 0;
	blk_src_check(d->b, &why);
	return ferry_error_set(err, -EIO, "disk %s: the mirror failed: %s%s%s",
			       d->info.w.id, job->error, why.msg[0] ? "; " : "",
			       why.msg);
}

/*
 * Where the guest's writes are counted from: the job's length once it
 * has begun copying (QEMU sets it from the dirty bitmap before the first
 * copy, so it holds the whole first copy by then).
 */
static void note_copying(struct src_disk *d)
{
	if (d->len_copying || !d->offset || !d->len)
		return;
	d->len_copying = d->len;
	if (!d->b->copying_ms)
		d->b->copying_ms = ferry_now_ms();
}

uint64_t blk_src_write_rate(const struct blk_src *b)
{
	uint64_t grown = 0, ms;

	if (!b || !b->copying_ms)
		return 0;
	ms = ferry_now_ms() - b->copying_ms;
	for (uint32_t i = 0; i < b->n; i++)
		if (b->d[i].len_copying && b->d[i].len > b->d[i].len_copying)
			grown += b->d[i].len - b->d[i].len_copying;
	return ms ? grown * 1000 / ms : 0;
}

/* One pass over query-block-jobs for our jobs. */
static int poll_jobs(struct blk_src *b, struct ferry_error *err)
{
	bool seen[WIRE_DISKS_MAX] = { false };
	struct qemu_block_job jobs[QEMU_BLOCK_JOBS_MAX];
	size_t n;
	int rc;

	rc = qemu_query_block_jobs(b->q, jobs, QEMU_BLOCK_JOBS_MAX, &n, err);
	if (rc < 0)
		return ferry_error_prefix(err, "source QEMU: ");
	for (size_t i = 0; i < n; i++) {
		const struct qemu_block_job *job = &jobs[i];
		struct src_disk *d = find_job(b, job->id);

		if (!d || !d->job_started)
			continue;
		seen[d->index] = true;
		d->offset = job->offset;
		d->len = job->len;
		d->ready = job->ready;
		note_copying(d);
		if (!strcmp(job->status, "concluded")) {
			rc = conclude(d, job, err);
			if (rc < 0)
				break;
		}
	}
	/* auto-dismiss is off: only ferry removes its jobs. */
	for (uint32_t k = 0; rc == 0 && k < b->n; k++)
		if (b->d[k].job_started && !seen[k])
			rc = ferry_error_set(err, -EIO, "disk %s: mirror job %s "
					     "vanished", b->d[k].info.w.id,
					     b->d[k].job);
	return rc;
}

int blk_src_poll(struct blk_src *b, uint64_t *done, uint64_t *total,
		 struct ferry_error *err)
{
	bool all = true;
	int rc;

	rc = blk_src_check(b, err);
	if (rc == 0)
		rc = poll_jobs(b, err);
	if (rc < 0)
		return rc;
	*done = *total = 0;
	for (uint32_t i = 0; i < b->n; i++) {
		struct src_disk *d = &b->d[i];

		*total += d->done ? d->info.w.size : d->len;
		*done += d->done ? d->info.w.size : d->offset;
		if (d->done)
			continue;
		if (!d->job_started)
			return ferry_error_set(err, -EIO, "disk %s: no mirror job",
					       d->info.w.id);
		/* A read-only disk never changes: once copied, its job ends. */
		if (d->ready && d->info.read_only && !d->cancel_sent) {
			rc = qemu_block_job_cancel(b->q, d->job, false, err);
			if (rc < 0)
				return ferry_error_prefix(err, "disk %s: ",
							  d->info.w.id);
			d->cancel_sent = true;
		}
		all &= d->ready && !d->info.read_only;
	}
	if (all && !b->mirror_ms)
		b->mirror_ms = ferry_now_ms() - b->t0_ms;
	return all;
}

int blk_src_tick(struct blk_src *b, struct ferry_error *err)
{
	uint64_t done, total, now = ferry_now_ms();
	int rc;

	if (now - b->last_keepalive_ms >= BLK_KEEPALIVE_MS &&
	    b->data_bytes + b->zero_bytes == b->keepalive_bytes) {
		struct wire_disk_rec r = { .op = WIRE_DISK_FLUSH };

		/* A barrier nobody waits for: its FLUSHED comes back too. */
		emit(b, &r, NULL);
	}
	if (now - b->last_keepalive_ms >= BLK_KEEPALIVE_MS) {
		/* Only a disk that stayed idle for a whole period gets one. */
		b->last_keepalive_ms = now;
		b->keepalive_bytes = b->data_bytes + b->zero_bytes;
	}
	rc = blk_src_poll(b, &done, &total, err);
	return rc < 0 ? rc : 0;
}

static void join_server(struct src_disk *d)
{
	if (!d->thread_started)
		return;
	pthread_join(d->thread, NULL);
	d->thread_started = false;
}

int blk_src_switchover(struct blk_src *b, struct ferry_error *err)
{
	uint64_t t0 = ferry_now_ms(), deadline = t0 + BLK_COMPLETE_TIMEOUT_MS;
	bool pending = true;
	int rc;

	/* A cancelled ready mirror completes in sync and does not pivot. */
	for (uint32_t i = 0; i < b->n; i++) {
		struct src_disk *d = &b->d[i];

		if (!d->job_started || d->cancel_sent)
			continue;
		rc = qemu_block_job_cancel(b->q, d->job, false, err);
		if (rc < 0)
			return ferry_error_prefix(err, "completing the mirror of "
						  "disk %s: ", d->info.w.id);
		d->cancel_sent = true;
	}
	while (pending && ferry_now_ms() < deadline) {
		rc = poll_jobs(b, err);
		if (rc < 0)
			return rc;
		pending = false;
		for (uint32_t i = 0; i < b->n; i++)
			pending |= !b->d[i].done;
		if (pending)
			usleep(5 * 1000);
	}
	if (pending)
		return ferry_error_set(err, -ETIMEDOUT, "the disk mirrors did not "
			"complete within %d s", BLK_COMPLETE_TIMEOUT_MS / 1000);
	/* QEMU has let go of its NBD nodes; the connections go too. */
	pthread_mutex_lock(&b->lock);
	b->stopping = true;
	for (uint32_t i = 0; i < b->n; i++)
		if (b->d[i].cfd >= 0)
			shutdown(b->d[i].cfd, SHUT_RDWR);
	pthread_mutex_unlock(&b->lock);
	for (uint32_t i = 0; i < b->n; i++)
		join_server(&b->d[i]);
	rc = src_barrier(b, err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk flush barrier: ");
	/*
	 * The end of the record stream. The destination syncs, removes its
	 * exports from QEMU and only then ends its direction, so the tunnel's
	 * end means the destination disks are QEMU's alone again.
	 */
	pthread_mutex_lock(&b->lock);
	b->ended = true;
	pthread_mutex_unlock(&b->lock);
	rc = emit(b, &(struct wire_disk_rec){ .op = WIRE_DISK_END }, NULL);
	if (rc < 0)
		return blk_src_check(b, err);
	shutdown(b->fd, SHUT_WR);
	rc = tun_wait(b->tun, BLK_FLUSH_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "disk tunnel at its end: ");
	pthread_join(b->acker, NULL);
	b->acker_started = false;
	rc = blk_src_check(b, err);
	if (rc < 0)
		return rc;
	b->switchover_ms = ferry_now_ms() - t0;
	ferry_log(FERRY_LOG_INFO, "disks in sync on the destination: mirrors "
		  "completed and flushed in %llu ms",
		  (unsigned long long)b->switchover_ms);
	return 0;
}

/*
 * Stop the NBD servers: QEMU's connections are shut down, then closed,
 * and nothing listens for a new one.
 *
 * Closed, not only shut down: a shutdown unix socket keeps what QEMU
 * wrote into it and ferry never read, and that data stays charged to
 * QEMU's end. A QEMU blocked sending a request (ferry's server stopped
 * reading while a record waited on a dead tunnel) then never sees its
 * socket writable again, only POLLHUP, which its write handler ignores:
 * its main loop spins, the request never fails, and a cancelled mirror
 * waits for it forever. Closing frees the data: the write fails with
 * EPIPE and every request in flight with it. Without a listener, QEMU's
 * attempt to reconnect fails at once instead of waiting in the backlog.
 */
static void stop_servers(struct blk_src *b)
{
	uint64_t one = 1;

	if (b->stop_efd >= 0 && write(b->stop_efd, &one, sizeof(one)) < 0) {
		/* the counter is already non-zero */
	}
	pthread_mutex_lock(&b->lock);
	b->stopping = true;
	for (uint32_t i = 0; i < b->n; i++)
		if (b->d[i].cfd >= 0)
			shutdown(b->d[i].cfd, SHUT_RDWR);
	pthread_mutex_unlock(&b->lock);
	for (uint32_t i = 0; i < b->n; i++) {
		struct src_disk *d = &b->d[i];

		join_server(d);
		/* No server thread is left to use them. */
		if (d->lfd >= 0)
			close(d->lfd);
		d->lfd = -1;
		if (d->sock[0])
			unlink(d->sock);
		d->sock[0] = '\0';
		pthread_mutex_lock(&b->lock);
		if (d->cfd >= 0)
			close(d->cfd);
		d->cfd = -1;
		pthread_mutex_unlock(&b->lock);
	}
}

/*
 * One look at the cancelled mirrors: a job that concluded is dismissed,
 * one that is gone is forgotten. @pending: whether any is left.
 */
static int abort_step(struct blk_src *b, bool *pending)
{
	struct qemu_block_job jobs[QEMU_BLOCK_JOBS_MAX];
	size_t n;
	int rc = qemu_query_block_jobs(b->q, jobs, QEMU_BLOCK_JOBS_MAX, &n, NULL);

	if (rc < 0)
		return rc;
	*pending = false;
	for (uint32_t k = 0; k < b->n; k++) {
		struct src_disk *d = &b->d[k];
		size_t i = 0;

		if (!d->job_started)
			continue;
		while (i < n && strcmp(jobs[i].id, d->job))
			i++;
		if (i == n) {			/* gone */
			d->job_started = false;
		} else if (!strcmp(jobs[i].status, "concluded")) {
			qemu_job_dismiss(b->q, d->job, NULL);
			d->job_started = false;
		} else {
			*pending = true;
		}
	}
	return 0;
}

void blk_src_abort(struct blk_src *b)
{
	uint64_t deadline;
	bool pending = false;

	if (!b)
		return;
	src_fail(b, "the migration was abandoned");
	/* Forced: the mirror stops at once, the source disk untouched. */
	for (uint32_t i = 0; i < b->n; i++) {
		struct src_disk *d = &b->d[i];

		if (!d->job_started)
			continue;
		qemu_block_job_cancel(b->q, d->job, true, NULL);
		pending = true;
	}
	/* QEMU's NBD client may be waiting on ferry: unblock it first (a
	 * server thread may be sending to the record socket). */
	if (b->tun)
		tun_cancel(b->tun);
	if (b->fd >= 0)
		shutdown(b->fd, SHUT_RDWR);
	stop_servers(b);
	deadline = ferry_now_ms() + BLK_CANCEL_TIMEOUT_MS;
	while (pending && ferry_now_ms() < deadline) {
		/* A slow answer (a loaded host) is asked again; only a QEMU
		 * that is gone ends the wait. */
		if (abort_step(b, &pending) == -ECONNRESET)
			break;
		if (pending)
			usleep(20 * 1000);
	}
	for (uint32_t i = 0; i < b->n; i++) {
		struct src_disk *d = &b->d[i];

		if (d->job_started)
			ferry_log(FERRY_LOG_WARN, "disk %s: mirror job %s still "
				  "there after cancel", d->info.w.id, d->job);
		if (d->node_added && qemu_blockdev_del(b->q, d->target, NULL) == 0)
			d->node_added = false;
	}
}

void blk_src_report(const struct blk_src *b, struct ferry_report *r)
{
	struct tun_stats st = { 0 };

	if (!b)
		return;
	if (b->tun)
		tun_stats(b->tun, &st);
	r->disks = b->n;
	for (uint32_t i = 0; i < b->n; i++)
		r->disk_size_bytes += b->d[i].info.w.size;
	r->disk_data_bytes = b->data_bytes;
	r->disk_zero_bytes = b->zero_bytes;
	r->disk_wire_bytes = st.wire_out_bytes + st.wire_in_bytes;
	r->disk_mirror_ms = b->mirror_ms;
	r->disk_switchover_ms = b->switchover_ms;
}

void blk_src_mark_shared(struct blk_src *b, const char *mig_id)
{
	for (uint32_t i = 0; i < b->n; i++) {
		struct src_disk *d = &b->d[i];
		const char *base = strrchr(d->info.filename, '/');
		char path[sizeof(d->marker)];
		struct stat st;
		int fd, rc;

		d->marker[0] = '\0';
		if (stat(d->info.filename, &st) < 0 || !S_ISREG(st.st_mode))
			continue;	/* a device, the network */
		rc = blk_shared_marker(path, sizeof(path), &d->info, mig_id);
		fd = rc < 0 ? -1 : open(path, O_WRONLY | O_CREAT | O_EXCL |
					O_CLOEXEC, 0644);
		if (fd < 0) {
			ferry_log(FERRY_LOG_INFO, "disk %s: no shared-storage marker "
				  "beside %s (%s): whether the destination "
				  "reaches this image cannot be checked",
				  d->info.w.id, d->info.filename,
				  strerror(rc < 0 ? -rc : errno));
			continue;
		}
		memcpy(d->marker, path, sizeof(path));
		if (write(fd, base + 1, strlen(base + 1)) != (ssize_t)strlen(base + 1)) {
			unlink(d->marker);
			d->marker[0] = '\0';
		}
		close(fd);
	}
}

void blk_src_unmark_shared(struct blk_src *b)
{
	for (uint32_t i = 0; b && i < b->n; i++) {
		if (b->d[i].marker[0])
			unlink(b->d[i].marker);
		b->d[i].marker[0] = '\0';
	}
}

void blk_src_free(struct blk_src *b)
{
	if (!b)
		return;
	blk_src_unmark_shared(b);
	/* Unblock every thread first: senders, barrier waiters, the acker. */
	src_fail(b, "the migration ended");
	if (b->tun)
		tun_cancel(b->tun);
	if (b->fd >= 0)
		shutdown(b->fd, SHUT_RDWR);
	stop_servers(b);
	if (b->acker_started)
		pthread_join(b->acker, NULL);
	tun_free(b->tun);
	for (uint32_t i = 0; i < b->n; i++) {
		if (b->d[i].lfd >= 0)
			close(b->d[i].lfd);
		if (b->d[i].cfd >= 0)
			close(b->d[i].cfd);
		if (b->d[i].sock[0])
			unlink(b->d[i].sock);
	}
	if (b->dir[0])
		rmdir(b->dir);
	if (b->fd >= 0)
		close(b->fd);
	if (b->stop_efd >= 0)
		close(b->stop_efd);
	pthread_cond_destroy(&b->cond);
	pthread_mutex_destroy(&b->lock);
	pthread_mutex_destroy(&b->wlock);
	free(b);
}
