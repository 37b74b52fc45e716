/*
 * ferry evacuate (evacuate.c): move every VM of this host (the QEMUs
 * registered in a directory, DIR/NAME.qmp, as the receiving service
 * knows them) to other hosts, a few at a time. Each VM goes to the
 * destination with the most usable memory (its HOST answer: MemTotal x
 * its overcommit ratio, less what is in use and arriving) that takes it,
 * passing every pre-check; a VM that no destination takes stays, running,
 * where it was, and does not stop the others.
 */
#ifndef FERRY_EVACUATE_H
#define FERRY_EVACUATE_H

#include <stdint.h>

#include "ferry.h"

#define EVAC_DESTS_MAX 16
#define EVAC_VMS_MAX 256
#define EVAC_PARALLEL_DEFAULT 2	/* KubeVirt's per-node default */
#define EVAC_PARALLEL_MAX 16

struct evac_dest {
	char host[256];
	uint16_t port;
};

struct evac_result {
	char vm[65];
	char dest[280];		/* HOST:PORT it went to (or last tried) */
	char status[16];	/* "completed", "failed", "not-running" */
	struct ferry_report report;
	char error[FERRY_ERROR_MSG_MAX];
};

struct evac_opts {
	/* Every VM's migration: to_host, to_port, qmp_path and vm_name are
	 * set per VM; the rest (TLS, --block, state directory...) as given. */
	struct ferry_migrate_opts base;
	const char *qmp_dir;
	const char *only;	/* comma-separated VM names; NULL: all */
	const struct evac_dest *dests;
	uint32_t ndests;
	uint32_t parallel;	/* 0: EVAC_PARALLEL_DEFAULT */
};

/*
 * Evacuate; *@out gets one result per VM (free() it), in name order.
 * 0 when the evacuation ran (look at each result), -errno when it could
 * not start (no VM found, a bad option).
 */
int evac_run(const struct evac_opts *o, struct evac_result **out, uint32_t *n,
	     struct ferry_error *err);

/*
 * One guest (its QMP socket @qmp; r->vm its name, or "" for the one of
 * o->base) to the best of o->dests, as evacuate places each VM: the
 * destinations with room for it, most usable memory first, the next on
 * a refusal before anything moved. The outcome in @r.
 */
void evac_place(const struct evac_opts *o, const char *qmp,
		struct evac_result *r);

/* Cancel every migration evacuate runs, and start no more (a signal's
 * thread; the VMs that did not move run where they were). */
void evac_cancel_all(void);

/* migrate.c: what the receiver of @m (its to_host, to_port, TLS) says
 * it can take, for a guest of @ram_bytes (a HOST connection). */
struct wire_host;
int mig_host_info(struct ferry_migration *m, uint64_t ram_bytes,
		  struct wire_host *h, struct ferry_error *err);

#endif /* FERRY_EVACUATE_H */
