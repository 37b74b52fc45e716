/*
 * Small helpers the benchmarks share: medians of repeated runs, and the
 * byte-for-byte comparison of two quiescent guests' RAM.
 */
#ifndef FERRY_TESTS_STATS_H
#define FERRY_TESTS_STATS_H

#include <stdint.h>
#include <stdio.h>

#include "vm.h"

/* The median of @n values (sorts @v in place); 0 when n is 0. */
uint64_t stats_median(uint64_t *v, uint32_t n);

/* pmemsave both guests into @dir and compare: 1 equal, 0 different,
 * -errno when a dump failed. The dumps are removed. */
int stats_same_ram(const char *dir, struct vm *a, struct vm *b);
/* The same for a destination that runs on: only the RAM the guest never
 * writes after READY (above its working set; the working set checks
 * itself, see the guest's memory invariant). -ENODATA before READY. */
int stats_same_static_ram(const char *dir, struct vm *a, struct vm *b);

/* "# machine: CPU MODEL" and "# cores: N" to @out: a benchmark's figures
 * hold for the machine they were measured on, so they travel with it. */
void stats_print_machine(FILE *out);

#endif /* FERRY_TESTS_STATS_H */
