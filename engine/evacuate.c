/* ferry evacuate: every VM of this host to other hosts (evacuate.h). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evacuate.h"
#include "mig.h"
#include "rx.h"
#include "transport/wire.h"
#include "util.h"

/* The migrations running now, for evac_cancel_all() (the CLI's signal
 * thread); once stopping, none starts. */
static pthread_mutex_t active_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ferry_migration *active[EVAC_PARALLEL_MAX + 1];
static bool stopping;

void evac_cancel_all(void)
{
	pthread_mutex_lock(&active_mu);
	stopping = true;
	for (size_t i = 0; i < FERRY_ARRAY_SIZE(active); i++)
		if (active[i])
			ferry_migration_cancel(active[i]);
	pthread_mutex_unlock(&active_mu);
}

/* Register @m as running (@on), or not; false when stopping. */
static bool set_active(struct ferry_migration *m, bool on)
{
	bool ok = true;

	pthread_mutex_lock(&active_mu);
	for (size_t i = 0; i < FERRY_ARRAY_SIZE(active); i++) {
		if (on && !active[i] && !stopping) {
			active[i] = m;
			break;
		}
		if (!on && active[i] == m)
			active[i] = NULL;
	}
	ok = !stopping;
	pthread_mutex_unlock(&active_mu);
	return ok;
}

struct evac {
	const struct evac_opts *o;
	struct evac_result *res;
	uint32_t n;
	pthread_mutex_t mu;
	uint32_t next;		/* the next VM to take, under mu */
};

/* A destination's answer, for the ranking. */
struct candidate {
	uint32_t dest;
	struct wire_host host;
};

static int by_usable(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;

	return x->host.usable > y->host.usable ? -1 :
	       x->host.usable < y->host.usable;
}

/* Whether @name is in the comma-separated @only (NULL: everything). */
static bool wanted(const char *only, const char *name)
{
	size_t n = strlen(name);

	for (const char *p = only; p && *p;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);

		if (len == n && !strncmp(p, name, n))
			return true;
		p = comma ? comma + 1 : p + len;
	}
	return !only;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct evac_result *)a)->vm,
		      ((const struct evac_result *)b)->vm);
}

/* The VMs of the registry directory: NAME.qmp, NAME a valid VM name. */
static int find_vms(struct evac *e, struct ferry_error *err)
{
	struct dirent *d;
	DIR *dir = opendir(e->o->qmp_dir);

	if (!dir)
		return ferry_error_set(err, -errno, "cannot read %s: %s",
				       e->o->qmp_dir, strerror(errno));
	e->res = calloc(EVAC_VMS_MAX, sizeof(*e->res));
	if (!e->res) {
		closedir(dir);
		return ferry_error_set(err, -ENOMEM, "out of memory");
	}
	while ((d = readdir(dir)) && e->n < EVAC_VMS_MAX) {
		size_t len = strlen(d->d_name);
		char name[WIRE_VM_NAME_MAX + 1];

		if (len < 5 || len - 4 > WIRE_VM_NAME_MAX ||
		    strcmp(d->d_name + len - 4, ".qmp"))
			continue;
		snprintf(name, sizeof(name), "%.*s", (int)(len - 4), d->d_name);
		if (!wire_vm_name_valid(name) || !wanted(e->o->only, name))
			continue;
		snprintf(e->res[e->n++].vm, sizeof(e->res[0].vm), "%s", name);
	}
	if (d && e->n == EVAC_VMS_MAX) {
		closedir(dir);
		return ferry_error_set(err, -E2BIG, "more than %d VMs in %s: "
				       "evacuate them a part at a time (--vms)",
				       EVAC_VMS_MAX, e->o->qmp_dir);
	}
	closedir(dir);
	if (!e->n)
		return ferry_error_set(err, -ENOENT, "no VM to evacuate in %s%s%s",
				       e->o->qmp_dir, e->o->only ? " named " : "",
				       e->o->only ? e->o->only : "");
	/* Every VM asked for by name is there. */
	for (const char *p = e->o->only; p && *p;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		bool found = false;

		for (uint32_t i = 0; i < e->n && !found; i++)
			found = strlen(e->res[i].vm) == len &&
				!strncmp(e->res[i].vm, p, len);
		if (!found)
			return ferry_error_set(err, -ENOENT, "no VM '%.*s' in %s",
					       (int)len, p, e->o->qmp_dir);
		p = comma ? comma + 1 : p + len;
	}
	qsort(e->res, e->n, sizeof(*e->res), by_name);
	return 0;
}

/* The migration options for @r to destination @d (@events: room for
 * this VM's own events file, when there is one). */
static void vm_opts(const struct evac_opts *eo, const struct evac_result *r,
		    const char *qmp, uint32_t d, struct ferry_migrate_opts *o,
		    char events[PATH_MAX])
{
	*o = eo->base;
	/* Each VM writes its own: parallel ones would mix in one. */
	if (o->converge.events_path && r->vm[0]) {
		snprintf(events, PATH_MAX, "%s.%s", o->converge.events_path, r->vm);
		o->converge.events_path = events;
	}
	o->qmp_path = qmp;
	o->vm_name = r->vm[0] ? r->vm : eo->base.vm_name;
	o->to_host = eo->dests[d].host;
	o->to_port = eo->dests[d].port;
	o->progress = NULL;
}

/*
 * One VM: the destinations that can take its RAM, most usable memory
 * first; the first that takes it (pre-checks passed) gets it. A refusal
 * before anything moved tries the next; any other failure ends there.
 */
static void evacuate_one(struct evac *e, struct evac_result *r)
{
	char qmp[PATH_MAX];

	snprintf(qmp, sizeof(qmp), "%s/%s.qmp", e->o->qmp_dir, r->vm);
	evac_place(e->o, qmp, r);
}

void evac_place(const struct evac_opts *eo, const char *qmp,
		struct evac_result *r)
{
	struct candidate cand[EVAC_DESTS_MAX];
	char why[FERRY_ERROR_MSG_MAX] = "", events[PATH_MAX];
	struct ferry_error err = { 0 };
	struct ferry_migrate_opts o;
	uint32_t ncand = 0;
	uint64_t ram = 0;
	struct qmp *q;

	snprintf(r->status, sizeof(r->status), "failed");
	r->report.source_running = true;
	q = qmp_connect(qmp, MIG_QMP_TIMEOUT_MS, &err);
	if (!q || mig_ram_size(q, &ram, &err) < 0) {
		qmp_close(q);
		snprintf(r->error, sizeof(r->error), "its QEMU (%s): %s", qmp,
			 err.msg);
		return;
	}
	qmp_close(q);
	for (uint32_t d = 0; d < eo->ndests; d++) {
		struct ferry_migration *m;
		size_t n = strlen(why);

		vm_opts(eo, r, qmp, d, &o, events);
		m = ferry_migration_new(&o, &err);
		if (m && mig_host_info(m, ram, &cand[ncand].host, &err) == 0 &&
		    cand[ncand].host.usable >= ram) {
			cand[ncand++].dest = d;
		} else {
			snprintf(why + n, sizeof(why) - n, "%s%s:%u: %s", n ? "; " : "",
				 o.to_host, o.to_port, m && !err.msg[0] ?
				 "not enough memory" : err.msg);
		}
		ferry_migration_free(m);
		err = (struct ferry_error){ 0 };
	}
	qsort(cand, ncand, sizeof(cand[0]), by_usable);
	for (uint32_t i = 0; i < ncand; i++) {
		const struct evac_dest *d = &eo->dests[cand[i].dest];
		struct ferry_migration *m;
		size_t n = strlen(why);
		int rc;

		vm_opts(eo, r, qmp, cand[i].dest, &o, events);
		snprintf(r->dest, sizeof(r->dest), "%s:%u", d->host, d->port);
		ferry_log(FERRY_LOG_INFO, "%s to %s (%llu MiB usable there)",
			  o.vm_name ? o.vm_name : "the guest", r->dest,
			  (unsigned long long)(cand[i].host.usable >> 20));
		m = ferry_migration_new(&o, &err);
		if (m && !set_active(m, true)) {
			ferry_migration_free(m);
			snprintf(r->error, sizeof(r->error), "the evacuation was "
				 "stopped before it moved");
			return;
		}
		rc = m ? ferry_migration_run(m, &r->report, &err) : err.code;
		if (m)
			set_active(m, false);
		ferry_migration_free(m);
		if (rc == 0) {
			snprintf(r->status, sizeof(r->status), "completed");
			r->error[0] = '\0';
			return;
		}
		snprintf(why + n, sizeof(why) - n, "%s%s: %s", n ? "; " : "",
			 r->dest, err.msg);
		/* Refused before anything moved: the next may take it. */
		if (!(m && rc == -EREMOTEIO && r->report.source_running &&
		      !r->report.wire_bytes))
			break;
		err = (struct ferry_error){ 0 };
	}
	if (!r->report.source_running)
		snprintf(r->status, sizeof(r->status), "not-running");
	snprintf(r->error, sizeof(r->error), "%s", ncand ? why :
		 why[0] ? why : "no destination can take it");
}

static void *worker(void *arg)
{
	struct evac *e = arg;

	rx_thread_init();
	for (;;) {
		uint32_t i;

		pthread_mutex_lock(&e->mu);
		i = e->next < e->n ? e->next++ : e->n;
		pthread_mutex_unlock(&e->mu);
		if (i == e->n)
			return NULL;
		evacuate_one(e, &e->res[i]);
	}
}

int evac_run(const struct evac_opts *o, struct evac_result **out, uint32_t *n,
	     struct ferry_error *err)
{
	uint32_t parallel = o->parallel ? o->parallel : EVAC_PARALLEL_DEFAULT;
	struct evac e = { .o = o };
	pthread_t t[EVAC_PARALLEL_MAX];
	uint32_t started = 0;
	int rc;

	*out = NULL;
	*n = 0;
	if (!o->ndests || o->ndests > EVAC_DESTS_MAX)
		return ferry_error_set(err, -EINVAL, "evacuate needs 1 to %d "
				       "destinations", EVAC_DESTS_MAX);
	if (parallel > EVAC_PARALLEL_MAX)
		return ferry_error_set(err, -EINVAL, "at most %d migrations at "
				       "once", EVAC_PARALLEL_MAX);
	rc = find_vms(&e, err);
	if (rc < 0) {
		free(e.res);
		return rc;
	}
	pthread_mutex_init(&e.mu, NULL);
	for (; started < parallel && started < e.n; started++)
		if (pthread_create(&t[started], NULL, worker, &e) != 0)
			break;
	if (!started)
		worker(&e);
	for (uint32_t i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	pthread_mutex_destroy(&e.mu);
	*out = e.res;
	*n = e.n;
	return 0;
}
