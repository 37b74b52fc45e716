/* The far end of a harness's connection (see peer.h). */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "fuzz.h"
#include "peer.h"

/* A peer waiting to accept wakes this often to see whether it still has
 * to: the code under test may fail before it connects. */
#define FUZZ_PEER_TICK_MS 50
/* What the peer reads and drops per call. */
#define FUZZ_PEER_SINK_BYTES (64u << 10)

static int ms_left(uint64_t deadline_ms)
{
	uint64_t now = ferry_now_ms();

	return now >= deadline_ms ? 0 : (int)(deadline_ms - now);
}

/*
 * The one connection, or -1 when the code under test never made it. Once
 * fuzz_peer_join() has asked us to stop, a last look without waiting
 * still takes a connection made before: it is in the backlog by then,
 * and one left there would be the next iteration's.
 */
static int accept_one(struct fuzz_peer *p, uint64_t deadline_ms)
{
	struct pollfd pf = { .fd = p->listen_fd, .events = POLLIN };

	for (;;) {
		bool last = atomic_load(&p->stop) || ms_left(deadline_ms) == 0;
		int rc = poll(&pf, 1, last ? 0 : FUZZ_PEER_TICK_MS);

		if (rc > 0)
			return accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if ((rc < 0 && errno != EINTR) || last)
			return -1;
	}
}

/*
 * Send the input, then EOF; drop what comes back; return when the other
 * end has closed. A send that fails (the other end gave up and closed)
 * ends the sending only: reading on shows the close.
 */
static void pump(struct fuzz_peer *p, uint64_t deadline_ms)
{
	static uint8_t sink[FUZZ_PEER_SINK_BYTES];	/* the thread's only */
	bool sending = p->len > 0;
	size_t off = 0;

	if (!sending)
		shutdown(p->fd, SHUT_WR);
	for (;;) {
		struct pollfd pf = {
			.fd = p->fd,
			.events = POLLIN | (sending ? POLLOUT : 0),
		};
		int rc = poll(&pf, 1, ms_left(deadline_ms));
		ssize_t n;

		if (rc < 0 && errno == EINTR)
			continue;
		if (rc <= 0)
			break;
		if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
			n = recv(p->fd, sink, sizeof(sink), MSG_DONTWAIT);
			if (n == 0)
				return;
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				return;
		}
		if (sending && (pf.revents & POLLOUT)) {
			n = send(p->fd, p->data + off, p->len - off,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0)
				off += (size_t)n;
			else if (n < 0 && errno != EAGAIN && errno != EINTR)
				off = p->len;
			if (off == p->len) {
				shutdown(p->fd, SHUT_WR);
				sending = false;
			}
		}
	}
	/* Out of time: end any wait on the other side with an EOF. */
	shutdown(p->fd, SHUT_RDWR);
}

/* The peer thread and the one peer it is given at a time. */
static pthread_mutex_t peer_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t peer_cond = PTHREAD_COND_INITIALIZER;
static struct fuzz_peer *peer_next;
static bool peer_thread_started;

static void serve(struct fuzz_peer *p)
{
	uint64_t deadline_ms = ferry_now_ms() + FUZZ_PEER_TIMEOUT_MS;

	if (p->listen_fd >= 0)
		p->fd = accept_one(p, deadline_ms);
	if (p->fd >= 0)
		pump(p, deadline_ms);
}

static void *peer_main(void *arg)
{
	for (;;) {
		struct fuzz_peer *p;

		pthread_mutex_lock(&peer_lock);
		while (!peer_next)
			pthread_cond_wait(&peer_cond, &peer_lock);
		p = peer_next;
		peer_next = NULL;
		pthread_mutex_unlock(&peer_lock);
		serve(p);
		pthread_mutex_lock(&peer_lock);
		p->done = true;
		pthread_cond_broadcast(&peer_cond);
		pthread_mutex_unlock(&peer_lock);
	}
	return NULL;
}

static void start(struct fuzz_peer *p, int fd, int lfd, const uint8_t *data,
		  size_t len)
{
	pthread_t t;

	p->fd = fd;
	p->listen_fd = lfd;
	p->data = data;
	p->len = len;
	p->done = false;
	atomic_init(&p->stop, false);
	pthread_mutex_lock(&peer_lock);
	if (!peer_thread_started) {
		FUZZ_CHECK(pthread_create(&t, NULL, peer_main, NULL) == 0);
		pthread_detach(t);
		peer_thread_started = true;
	}
	/* One peer at a time: the last one was joined. */
	FUZZ_CHECK(peer_next == NULL);
	peer_next = p;
	pthread_cond_broadcast(&peer_cond);
	pthread_mutex_unlock(&peer_lock);
}

int fuzz_peer_pair(struct fuzz_peer *p, const uint8_t *data, size_t len)
{
	int sv[2];

	FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	start(p, sv[0], -1, data, len);
	return sv[1];
}

void fuzz_peer_accept(struct fuzz_peer *p, int lfd, const uint8_t *data,
		      size_t len)
{
	start(p, -1, lfd, data, len);
}

void fuzz_peer_join(struct fuzz_peer *p)
{
	atomic_store(&p->stop, true);
	pthread_mutex_lock(&peer_lock);
	while (!p->done)
		pthread_cond_wait(&peer_cond, &peer_lock);
	pthread_mutex_unlock(&peer_lock);
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
}
