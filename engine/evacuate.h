/*
 * ferry evacuate (evacuate.c; ferry_evacuate() in ferry.h): move the VMs
 * of this host (the QEMUs registered in a directory, DIR/NAME.qmp, as the
 * receiving service knows them) to other hosts, a few at a time. Each VM
 * goes to the destination with the most usable memory (its HOST answer:
 * MemTotal x its overcommit ratio, less what is in use and arriving) that
 * takes it, passing every pre-check; a VM that no destination takes
 * stays, running, where it was, and does not stop the others.
 */
#ifndef FERRY_EVACUATE_H
#define FERRY_EVACUATE_H

#include <stdint.h>

#include "ferry.h"

/* The first sizes of ferry_evacuate()'s structs (libferry 0.1.0): no
 * caller's result is shorter. */
#define ABI0_EVACUATE_OPTS_SIZE 48
#define ABI0_EVACUATE_RESULT_SIZE 2304

/* migrate.c: what the receiver of @m (its to_host, to_port, TLS) says
 * it can take, for a guest of @ram_bytes (a HOST connection). */
struct wire_host;
int mig_host_info(struct ferry_migration *m, uint64_t ram_bytes,
		  struct wire_host *h, struct ferry_error *err);

#endif /* FERRY_EVACUATE_H */
