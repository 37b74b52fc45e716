/*
 * A ferry receiver on a thread of its own, for tests and benchmarks that
 * run the receiving side in the same process as the source. With a
 * network namespace, the thread enters it before it binds, so the
 * receiver listens behind the emulated link.
 */
#ifndef FERRY_TESTS_RX_H
#define FERRY_TESTS_RX_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"

struct rx_thread {
	struct ferry_receiver *rx;
	uint16_t port;			/* where it listens */
	struct ferry_report rep;	/* after rx_thread_join() */
	struct ferry_error err;
	int rc;				/* ferry_receiver_run()'s result */
	/* Private. */
	struct ferry_receiver_opts o;
	const char *netns;
	pthread_t t;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool bound;
};

/*
 * Bind (in /var/run/netns/@netns when non-NULL) and run ferry_receiver_run()
 * on a new thread; returns once the receiver listens. 0, or -errno with
 * @err set (then nothing runs).
 */
int rx_thread_start(struct rx_thread *r, const struct ferry_receiver_opts *o,
		    const char *netns, struct ferry_error *err);

/* Make the receiver return (ferry_receiver_stop()); join must follow. */
void rx_thread_stop(struct rx_thread *r);

/* Wait for ferry_receiver_run() to return, free the receiver; r->rc. */
int rx_thread_join(struct rx_thread *r);

#endif /* FERRY_TESTS_RX_H */
