/* A ferry receiver on its own thread (see rx.h). */
#include <errno.h>
#include <string.h>

#include "link.h"
#include "rx.h"

static void *rx_main(void *arg)
{
	struct rx_thread *r = arg;
	int rc = r->netns ? netns_enter(r->netns) : 0;

	if (rc < 0)
		ferry_error_set(&r->err, rc, "entering network namespace %s: %s",
				r->netns, strerror(-rc));
	else
		r->rx = ferry_receiver_new(&r->o, &r->err);
	pthread_mutex_lock(&r->mu);
	r->bound = true;
	r->port = r->rx ? ferry_receiver_port(r->rx) : 0;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
	if (r->rx)
		r->rc = ferry_receiver_run(r->rx, &r->rep, &r->err);
	return NULL;
}

int rx_thread_start(struct rx_thread *r, const struct ferry_receiver_opts *o,
		    const char *netns, struct ferry_error *err)
{
	int rc;

	memset(r, 0, sizeof(*r));
	r->o = *o;
	r->netns = netns;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	rc = -pthread_create(&r->t, NULL, rx_main, r);
	if (rc < 0)
		return ferry_error_set(err, rc, "pthread_create: %s", strerror(-rc));
	pthread_mutex_lock(&r->mu);
	while (!r->bound)
		pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
	if (r->rx)
		return 0;
	pthread_join(r->t, NULL);
	*err = r->err;
	return err->code ? err->code : -EIO;
}

void rx_thread_stop(struct rx_thread *r)
{
	ferry_receiver_stop(r->rx);
}

int rx_thread_join(struct rx_thread *r)
{
	pthread_join(r->t, NULL);
	ferry_receiver_free(r->rx);
	r->rx = NULL;
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	return r->rc;
}
