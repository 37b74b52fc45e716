/*
 * A TCP proxy on loopback for tests: it forwards every connection to a
 * target port and can cut all of them at once (both ends shut), as a
 * network break would, or only the first (a migration's control
 * connection).
 */
#ifndef FERRY_TESTS_PROXY_H
#define FERRY_TESTS_PROXY_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define PROXY_MAX_PAIRS 64

struct proxy {
	uint16_t port;		/* where it listens */
	bool control_only;	/* proxy_cut() cuts only the first connection */
	int cuts;
	/* Private. */
	int lfd;
	uint16_t target;
	pthread_t acceptor;
	pthread_t pumps[PROXY_MAX_PAIRS];
	int fds[PROXY_MAX_PAIRS][2];
	int npairs;
	pthread_mutex_t mu;
	volatile bool stop;
};

/* Listen on a free loopback port, forward to 127.0.0.1:@target. 0 or
 * -errno. */
int proxy_start(struct proxy *p, uint16_t target);
/* Break every connection in flight (or the first, with control_only). */
void proxy_cut(struct proxy *p);
/* Stop and join everything, close every socket. */
void proxy_stop(struct proxy *p);

#endif /* FERRY_TESTS_PROXY_H */
