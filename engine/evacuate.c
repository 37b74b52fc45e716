/* ferry evacuate: every VM of this host to other hosts (evacuate.h,
 * ferry_evacuate() in ferry.h). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "evacuate.h"
#include "mig.h"
#include "rx.h"
#include "transport/wire.h"
#include "common/util.h"

/* A destination's host name, as the CLI's HOST:PORT takes it. */
#define EVAC_HOST_MAX 256

_Static_assert(sizeof(struct ferry_evacuate_opts) >= ABI0_EVACUATE_OPTS_SIZE &&
	       sizeof(struct ferry_evacuate_result) >= ABI0_EVACUATE_RESULT_SIZE,
	       "a public struct shrank");
/* A result is written in the caller's size: what precedes the report
 * never moves, and the report, which grows, is last. */
_Static_assert(offsetof(struct ferry_evacuate_result, report) == 880 &&
	       offsetof(struct ferry_evacuate_result, report) +
	       sizeof(struct ferry_report) == sizeof(struct ferry_evacuate_result),
	       "the report is a result's last field, at a fixed offset");

/* One of o->to: a receiver's HOST:PORT. */
struct evac_dest {
	char host[EVAC_HOST_MAX];
	uint16_t port;
};

/*
 * One ferry_evacuate(): its options, copied and checked once (evac_init),
 * its guests' results, and, for ferry_evacuate_cancel(), the migrations
 * it runs now.
 */
struct evac {
	struct ferry_migrate_opts base;
	const char *qmp_dir, *only, *qmp_path;
	struct evac_dest dests[FERRY_EVACUATE_DESTS_MAX];
	uint32_t ndests;
	uint32_t parallel;
	struct ferry_evacuate_result *res;	/* this library's size */
	uint32_t n;
	pthread_mutex_t mu;
	uint32_t next;		/* the next VM to take, under mu */
	/* Under runs_mu. A worker runs one migration at a time, so there
	 * is a slot for each. */
	struct ferry_migration *active[FERRY_EVACUATE_PARALLEL_MAX];
	bool stopping;
	struct evac *next_run;
};

/* The evacuations running now, for ferry_evacuate_cancel(). */
static pthread_mutex_t runs_mu = PTHREAD_MUTEX_INITIALIZER;
static struct evac *runs;

void ferry_evacuate_cancel(void)
{
	pthread_mutex_lock(&runs_mu);
	for (struct evac *e = runs; e; e = e->next_run) {
		e->stopping = true;
		for (size_t i = 0; i < FERRY_ARRAY_SIZE(e->active); i++)
			if (e->active[i])
				ferry_migration_cancel(e->active[i]);
	}
	pthread_mutex_unlock(&runs_mu);
}

/* @e running (@on) or done: in runs, for ferry_evacuate_cancel(). */
static void set_running(struct evac *e, bool on)
{
	struct evac **p;

	pthread_mutex_lock(&runs_mu);
	if (on) {
		e->next_run = runs;
		runs = e;
	} else {
		for (p = &runs; *p && *p != e; p = &(*p)->next_run)
			;
		if (*p)
			*p = e->next_run;
	}
	pthread_mutex_unlock(&runs_mu);
}

/* Register @m as running (@on), or not; false when @e is stopping. */
static bool set_active(struct evac *e, struct ferry_migration *m, bool on)
{
	bool ok, registered = !on;

	pthread_mutex_lock(&runs_mu);
	for (size_t i = 0; i < FERRY_ARRAY_SIZE(e->active); i++) {
		if (on && !e->active[i] && !e->stopping) {
			e->active[i] = m;
			registered = true;
			break;
		}
		if (!on && e->active[i] == m)
			e->active[i] = NULL;
	}
	ok = !e->stopping;
	/* A slot per worker (evac_init bounds parallel). */
	FERRY_ASSERT(registered || !ok);
	pthread_mutex_unlock(&runs_mu);
	return ok;
}

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
	return strcmp(((const struct ferry_evacuate_result *)a)->vm,
		      ((const struct ferry_evacuate_result *)b)->vm);
}

/* The VMs of the registry directory: NAME.qmp, NAME a valid VM name. */
static int find_vms(struct evac *e, struct ferry_error *err)
{
	struct dirent *d;
	DIR *dir = opendir(e->qmp_dir);

	if (!dir)
		return ferry_error_set(err, -errno, "cannot read %s: %s",
				       e->qmp_dir, strerror(errno));
	e->res = calloc(FERRY_EVACUATE_VMS_MAX, sizeof(*e->res));
	if (!e->res) {
		closedir(dir);
		return ferry_error_set(err, -ENOMEM, "out of memory");
	}
	while ((d = readdir(dir)) && e->n < FERRY_EVACUATE_VMS_MAX) {
		size_t len = strlen(d->d_name);
		char name[WIRE_VM_NAME_MAX + 1];

		if (len < 5 || len - 4 > WIRE_VM_NAME_MAX ||
		    strcmp(d->d_name + len - 4, ".qmp"))
			continue;
		snprintf(name, sizeof(name), "%.*s", (int)(len - 4), d->d_name);
		if (!wire_vm_name_valid(name) || !wanted(e->only, name))
			continue;
		snprintf(e->res[e->n++].vm, sizeof(e->res[0].vm), "%s", name);
	}
	if (d && e->n == FERRY_EVACUATE_VMS_MAX) {
		closedir(dir);
		return ferry_error_set(err, -E2BIG, "more than %d VMs in %s: "
				       "evacuate them a part at a time (--vms)",
				       FERRY_EVACUATE_VMS_MAX, e->qmp_dir);
	}
	closedir(dir);
	if (!e->n)
		return ferry_error_set(err, -ENOENT, "no VM to evacuate in %s%s%s",
				       e->qmp_dir, e->only ? " named " : "",
				       e->only ? e->only : "");
	/* Every VM asked for by name is there. */
	for (const char *p = e->only; p && *p;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		bool found = false;

		for (uint32_t i = 0; i < e->n && !found; i++)
			found = strlen(e->res[i].vm) == len &&
				!strncmp(e->res[i].vm, p, len);
		if (!found)
			return ferry_error_set(err, -ENOENT, "no VM '%.*s' in %s",
					       (int)len, p, e->qmp_dir);
		p = comma ? comma + 1 : p + len;
	}
	qsort(e->res, e->n, sizeof(*e->res), by_name);
	return 0;
}

/* The migration options for @r to destination @d (@events: room for
 * this VM's own events file, when there is one). */
static void vm_opts(const struct evac *e, const struct ferry_evacuate_result *r,
		    const char *qmp, uint32_t d, struct ferry_migrate_opts *o,
		    char events[PATH_MAX])
{
	*o = e->base;
	/* Each VM writes its own: parallel ones would mix in one. */
	if (o->converge.events_path && r->vm[0]) {
		snprintf(events, PATH_MAX, "%s.%s", o->converge.events_path, r->vm);
		o->converge.events_path = events;
	}
	o->qmp_path = qmp;
	o->vm_name = r->vm[0] ? r->vm : e->base.vm_name;
	o->to_host = e->dests[d].host;
	o->to_port = e->dests[d].port;
	o->progress = NULL;
}

/*
 * One guest (its QMP socket @qmp; r->vm its name, or "" for the one of
 * qmp_path) to the best of the destinations: those that can take its
 * RAM, most usable memory first; the first that takes it (pre-checks
 * passed) gets it. A refusal before anything moved tries the next; any
 * other failure ends there. The outcome in @r.
 */
static void place(struct evac *e, const char *qmp,
		  struct ferry_evacuate_result *r)
{
	struct candidate cand[FERRY_EVACUATE_DESTS_MAX];
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
	for (uint32_t d = 0; d < e->ndests; d++) {
		struct ferry_migration *m;
		size_t n = strlen(why);

		vm_opts(e, r, qmp, d, &o, events);
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
		const struct evac_dest *d = &e->dests[cand[i].dest];
		struct ferry_migration *m;
		size_t n = strlen(why);
		int rc;

		vm_opts(e, r, qmp, cand[i].dest, &o, events);
		snprintf(r->destination, sizeof(r->destination), "%s:%u", d->host,
			 d->port);
		ferry_log(FERRY_LOG_INFO, "%s to %s (%llu MiB usable there)",
			  o.vm_name ? o.vm_name : "the guest", r->destination,
			  (unsigned long long)(cand[i].host.usable >> 20));
		m = ferry_migration_new(&o, &err);
		if (m && !set_active(e, m, true)) {
			ferry_migration_free(m);
			snprintf(r->error, sizeof(r->error), "the evacuation was "
				 "stopped before it moved");
			return;
		}
		rc = m ? ferry_migration_run(m, &r->report, &err) : err.code;
		if (m)
			set_active(e, m, false);
		ferry_migration_free(m);
		if (rc == 0) {
			snprintf(r->status, sizeof(r->status), "completed");
			r->error[0] = '\0';
			return;
		}
		snprintf(why + n, sizeof(why) - n, "%s%s: %s", n ? "; " : "",
			 r->destination, err.msg);
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
		char qmp[PATH_MAX];
		uint32_t i;

		pthread_mutex_lock(&e->mu);
		i = e->next < e->n ? e->next++ : e->n;
		pthread_mutex_unlock(&e->mu);
		if (i == e->n)
			return NULL;
		if (e->qmp_path)
			snprintf(qmp, sizeof(qmp), "%s", e->qmp_path);
		else
			snprintf(qmp, sizeof(qmp), "%s/%s.qmp", e->qmp_dir,
				 e->res[i].vm);
		place(e, qmp, &e->res[i]);
	}
}

/* One HOST:PORT (or [IPv6]:PORT) of o->to, @len bytes at @s, into @d. */
static int parse_dest(const char *s, size_t len, struct evac_dest *d,
		      struct ferry_error *err)
{
	char item[EVAC_HOST_MAX + 8], *colon, *host = item, *end;
	unsigned long port;
	size_t hl;

	if (len >= sizeof(item))
		return ferry_error_set(err, -EINVAL, "destination '%.32s...' is "
				       "too long", s);
	memcpy(item, s, len);
	item[len] = '\0';
	colon = strrchr(item, ':');
	if (!colon)
		return ferry_error_set(err, -EINVAL, "destination '%s' lacks the "
				       "port (HOST:PORT, or [IPv6]:PORT)", item);
	hl = (size_t)(colon - item);
	if (item[0] == '[' && hl >= 2 && colon[-1] == ']') {
		host++;
		hl -= 2;
	} else if (memchr(item, ':', hl)) {
		return ferry_error_set(err, -EINVAL, "destination '%s': write an "
				       "IPv6 address in brackets, [ADDRESS]:PORT",
				       item);
	}
	if (!hl)
		return ferry_error_set(err, -EINVAL, "destination '%s' lacks the "
				       "host", item);
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || !port || port > 65535)
		return ferry_error_set(err, -EINVAL, "destination '%s': the port "
				       "must be a number from 1 to 65535", item);
	memcpy(d->host, host, hl);
	d->host[hl] = '\0';
	d->port = (uint16_t)port;
	return 0;
}

/* o->to, HOST:PORT[,HOST:PORT...], into e->dests. */
static int parse_to(struct evac *e, const char *to, struct ferry_error *err)
{
	for (const char *p = to; p && *p;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		int rc;

		if (e->ndests == FERRY_EVACUATE_DESTS_MAX)
			return ferry_error_set(err, -EINVAL, "at most %d "
					       "destinations", FERRY_EVACUATE_DESTS_MAX);
		rc = parse_dest(p, len, &e->dests[e->ndests], err);
		if (rc < 0)
			return rc;
		e->ndests++;
		p = comma ? comma + 1 : p + len;
	}
	if (!e->ndests)
		return ferry_error_set(err, -EINVAL, "evacuate needs 1 to %d "
				       "destinations, HOST:PORT[,HOST:PORT...]",
				       FERRY_EVACUATE_DESTS_MAX);
	return 0;
}

/* The caller's options, of @size and @migrate_size, into @e: checked
 * here, once. */
static int evac_init(struct evac *e, const struct ferry_evacuate_opts *in,
		     size_t size, size_t migrate_size, struct ferry_error *err)
{
	struct ferry_evacuate_opts o;

	if (abi_copy_in(&o, sizeof(o), in, size) < 0 ||
	    (o.migrate && abi_copy_in(&e->base, sizeof(e->base), o.migrate,
				      migrate_size) < 0))
		return ferry_error_set(err, -EINVAL, "this libferry (%s) does not "
				       "know an option the program set (built "
				       "against a later ferry.h)",
				       FERRY_VERSION_STRING);
	if (!o.qmp_dir == !o.qmp_path)
		return ferry_error_set(err, -EINVAL, "evacuate needs the guests' "
				       "directory or one guest's QMP socket, not "
				       "%s", o.qmp_dir ? "both" : "neither");
	if (o.only && !o.qmp_dir)
		return ferry_error_set(err, -EINVAL, "naming the guests to "
				       "evacuate needs their directory");
	e->parallel = o.parallel ? o.parallel : FERRY_EVACUATE_PARALLEL_DEFAULT;
	if (e->parallel > FERRY_EVACUATE_PARALLEL_MAX)
		return ferry_error_set(err, -EINVAL, "at most %d migrations at "
				       "once", FERRY_EVACUATE_PARALLEL_MAX);
	e->qmp_dir = o.qmp_dir;
	e->only = o.only;
	e->qmp_path = o.qmp_path;
	return parse_to(e, o.to, err);
}

/* The guests: qmp_dir's, or qmp_path's one. */
static int find_guests(struct evac *e, struct ferry_error *err)
{
	if (e->qmp_dir)
		return find_vms(e, err);
	e->res = calloc(1, sizeof(*e->res));
	if (!e->res)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	e->n = 1;
	return 0;
}

/* The results, in the caller's @size (a result's report grows). */
static int copy_out(const struct evac *e, struct ferry_evacuate_result **out,
		    size_t size, struct ferry_error *err)
{
	const size_t head = offsetof(struct ferry_evacuate_result, report);
	char *all = calloc(e->n, size);

	if (!all)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < e->n; i++) {
		struct ferry_evacuate_result *r =
			(struct ferry_evacuate_result *)(all + i * size);

		memcpy(r, &e->res[i], head);
		report_copy_out(&r->report, size - head, &e->res[i].report);
	}
	*out = (struct ferry_evacuate_result *)all;
	return 0;
}

int ferry_evacuate_sized(const struct ferry_evacuate_opts *o, size_t size,
			 size_t migrate_size,
			 struct ferry_evacuate_result **results,
			 size_t result_size, uint32_t *n,
			 struct ferry_error *err)
{
	pthread_t t[FERRY_EVACUATE_PARALLEL_MAX];
	uint32_t started = 0;
	struct evac *e;
	int rc;

	*results = NULL;
	*n = 0;
	if (result_size < ABI0_EVACUATE_RESULT_SIZE)
		return ferry_error_set(err, -EINVAL, "a result of %zu bytes is "
				       "shorter than any ferry.h's", result_size);
	e = calloc(1, sizeof(*e));
	if (!e)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	rc = evac_init(e, o, size, migrate_size, err);
	if (rc == 0)
		rc = find_guests(e, err);
	if (rc < 0)
		goto out_free;
	pthread_mutex_init(&e->mu, NULL);
	set_running(e, true);
	for (; started < e->parallel && started < e->n; started++)
		if (pthread_create(&t[started], NULL, worker, e) != 0)
			break;
	if (!started)
		worker(e);
	for (uint32_t i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	set_running(e, false);
	pthread_mutex_destroy(&e->mu);
	rc = copy_out(e, results, result_size, err);
	if (rc == 0)
		*n = e->n;
out_free:
	free(e->res);
	free(e);
	return rc;
}
