/* The test TCP proxy (see proxy.h). */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy.h"
#include "transport/net.h"


struct pump_arg {
	struct proxy *p;
	int idx;
};

static void *pump_main(void *arg)
{
	struct pump_arg *a = arg;
	struct proxy *p = a->p;
	int f[2] = { p->fds[a->idx][0], p->fds[a->idx][1] };
	char buf[65536];

	free(a);
	for (;;) {
		struct pollfd pf[2] = { { .fd = f[0], .events = POLLIN },
					{ .fd = f[1], .events = POLLIN } };

		if (poll(pf, 2, 200) < 0)
			break;
		if (p->stop)
			break;
		for (int i = 0; i < 2; i++) {
			ssize_t n, off = 0;

			if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			n = recv(f[i], buf, sizeof(buf), 0);
			if (n <= 0)
				goto out;
			while (off < n) {
				ssize_t w = send(f[!i], buf + off, (size_t)(n - off),
						 MSG_NOSIGNAL);

				if (w <= 0)
					goto out;
				off += w;
			}
		}
	}
out:
	shutdown(f[0], SHUT_RDWR);
	shutdown(f[1], SHUT_RDWR);
	return NULL;
}

static void *acceptor_main(void *arg)
{
	struct proxy *p = arg;
	struct ferry_error err = { 0 };

	while (!p->stop) {
		struct pollfd pf = { .fd = p->lfd, .events = POLLIN };
		struct pump_arg *a;
		int c, u;

		if (poll(&pf, 1, 100) <= 0)
			continue;
		c = accept(p->lfd, NULL, NULL);
		if (c < 0)
			continue;
		u = net_connect("127.0.0.1", p->target, 2000, &err);
		pthread_mutex_lock(&p->mu);
		if (u < 0 || p->npairs == PROXY_MAX_PAIRS) {
			pthread_mutex_unlock(&p->mu);
			close(c);
			if (u >= 0)
				close(u);
			continue;
		}
		p->fds[p->npairs][0] = c;
		p->fds[p->npairs][1] = u;
		a = malloc(sizeof(*a));
		a->p = p;
		a->idx = p->npairs;
		pthread_create(&p->pumps[p->npairs], NULL, pump_main, a);
		p->npairs++;
		pthread_mutex_unlock(&p->mu);
	}
	return NULL;
}

int proxy_start(struct proxy *p, uint16_t target)
{
	struct ferry_error err = { 0 };
	int rc;

	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->mu, NULL);
	p->target = target;
	p->lfd = net_listen("127.0.0.1", 0, &err);
	if (p->lfd < 0)
		return p->lfd;
	p->port = net_local_port(p->lfd);
	rc = -pthread_create(&p->acceptor, NULL, acceptor_main, p);
	if (rc < 0)
		close(p->lfd);
	return rc;
}

/* Break every connection in flight (RST-like: both ends shut), or only the
 * control connection, the first one a migration opens. */
void proxy_cut(struct proxy *p)
{
	pthread_mutex_lock(&p->mu);
	for (int i = 0; i < (p->control_only ? 1 : p->npairs); i++) {
		shutdown(p->fds[i][0], SHUT_RDWR);
		shutdown(p->fds[i][1], SHUT_RDWR);
	}
	p->cuts++;
	pthread_mutex_unlock(&p->mu);
}

void proxy_stop(struct proxy *p)
{
	p->stop = true;
	pthread_join(p->acceptor, NULL);
	for (int i = 0; i < p->npairs; i++) {
		pthread_join(p->pumps[i], NULL);
		close(p->fds[i][0]);
		close(p->fds[i][1]);
	}
	close(p->lfd);
}

