/*
 * The destination QEMU's main channel, connected late (see rx_link.h).
 *
 * Only the tunnel's writer thread writes (in stream order) and only its
 * return reader reads, so the head needs no more order than the lock.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "rx_link.h"

/* How often a waiter looks at its cancel fd. */
#define RX_LINK_TICK_MS 50

struct rx_link {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int fd;			/* QEMU's main channel; -1 until set */
	bool closed;
	uint8_t head[RX_LINK_HEAD_MAX];
	size_t head_len;	/* kept, not yet written to fd */
	struct tun_local local;
};

static int write_all(int fd, const uint8_t *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* With mu held: wait until QEMU's socket is there; its fd, or -errno. */
static int wait_fd_locked(struct rx_link *l)
{
	while (l->fd < 0 && !l->closed)
		pthread_cond_wait(&l->cv, &l->mu);
	return l->closed ? -ECANCELED : l->fd;
}

static int link_write(void *opaque, const void *buf, size_t len)
{
	struct rx_link *l = opaque;
	const uint8_t *p = buf;
	uint8_t head[RX_LINK_HEAD_MAX];
	size_t head_len;
	int fd, rc;

	pthread_mutex_lock(&l->mu);
	if (l->fd < 0 && !l->closed) {
		size_t k = RX_LINK_HEAD_MAX - l->head_len;

		if (k > len)
			k = len;
		memcpy(l->head + l->head_len, p, k);
		l->head_len += k;
		p += k;
		len -= k;
		pthread_cond_broadcast(&l->cv);
		if (!len) {
			pthread_mutex_unlock(&l->mu);
			return 0;	/* all kept: the head is not whole yet */
		}
	}
	fd = wait_fd_locked(l);
	head_len = l->head_len;
	memcpy(head, l->head, head_len);
	l->head_len = 0;
	pthread_mutex_unlock(&l->mu);
	if (fd < 0)
		return fd;
	rc = write_all(fd, head, head_len);
	return rc ? rc : write_all(fd, p, len);
}

static ssize_t link_read(void *opaque, void *buf, size_t len)
{
	struct rx_link *l = opaque;
	ssize_t n;
	int fd;

	pthread_mutex_lock(&l->mu);
	fd = wait_fd_locked(l);
	pthread_mutex_unlock(&l->mu);
	if (fd < 0)
		return fd;
	do {
		n = read(fd, buf, len);
	} while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

static void link_write_end(void *opaque)
{
	struct rx_link *l = opaque;

	pthread_mutex_lock(&l->mu);
	if (l->fd >= 0) {
		/* A stream no longer than its head: the head is all of it. */
		if (l->head_len && write_all(l->fd, l->head, l->head_len) == 0)
			l->head_len = 0;
		shutdown(l->fd, SHUT_WR);
	}
	pthread_mutex_unlock(&l->mu);
}

int rx_link_new(struct rx_link **out)
{
	struct rx_link *l = calloc(1, sizeof(*l));
	pthread_condattr_t ca;

	*out = NULL;
	if (!l)
		return -ENOMEM;
	pthread_mutex_init(&l->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->cv, &ca);
	pthread_condattr_destroy(&ca);
	l->fd = -1;
	l->local = (struct tun_local){
		.read = link_read, .write = link_write,
		.write_end = link_write_end, .opaque = l,
	};
	*out = l;
	return 0;
}

const struct tun_local *rx_link_local(struct rx_link *l)
{
	return &l->local;
}

int rx_link_peek(struct rx_link *l, void *buf, size_t len, int timeout_ms,
		 int cancel_fd)
{
	uint64_t deadline = ferry_now_ms() + (uint64_t)timeout_ms;
	int rc = 0;

	FERRY_ASSERT(len <= RX_LINK_HEAD_MAX);
	pthread_mutex_lock(&l->mu);
	while (l->head_len < len && !l->closed && rc == 0) {
		struct timespec ts = ferry_deadline_after(RX_LINK_TICK_MS);
		struct pollfd p = { .fd = cancel_fd, .events = POLLIN };

		pthread_cond_timedwait(&l->cv, &l->mu, &ts);
		if (cancel_fd >= 0 && poll(&p, 1, 0) > 0)
			rc = -ECANCELED;
		else if (l->head_len < len && ferry_now_ms() >= deadline)
			rc = -ETIMEDOUT;
	}
	if (rc == 0 && l->head_len < len)
		rc = -ECONNRESET;
	if (rc == 0)
		memcpy(buf, l->head, len);
	pthread_mutex_unlock(&l->mu);
	return rc;
}

void rx_link_set(struct rx_link *l, int fd)
{
	pthread_mutex_lock(&l->mu);
	FERRY_ASSERT(l->fd < 0);
	if (l->closed) {
		close(fd);
	} else {
		l->fd = fd;
		pthread_cond_broadcast(&l->cv);
	}
	pthread_mutex_unlock(&l->mu);
}

void rx_link_close(struct rx_link *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->mu);
	l->closed = true;
	if (l->fd >= 0)
		shutdown(l->fd, SHUT_RDWR);
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
}

void rx_link_free(struct rx_link *l)
{
	if (!l)
		return;
	if (l->fd >= 0)
		close(l->fd);
	pthread_cond_destroy(&l->cv);
	pthread_mutex_destroy(&l->mu);
	free(l);
}
