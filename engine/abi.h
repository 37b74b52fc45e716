/*
 * The public structs' ABI (docs/libferry.md): what a caller built against
 * an older or newer ferry.h passes, copied into or out of this library's
 * own layout.
 */
#ifndef FERRY_ABI_H
#define FERRY_ABI_H

#include <stddef.h>

#include "ferry.h"

/*
 * The ABI's sized structs (ferry.h): the first @size bytes of a caller's
 * struct into @full (@full_size, this library's): what the caller's lacks
 * is 0; bytes beyond what this library knows must be 0 too (-EINVAL).
 */
int abi_copy_in(void *full, size_t full_size, const void *in, size_t size);
/* This library's report into a caller's of @size: what fits, and zeros
 * past it (a caller's struct from a later header). */
void report_copy_out(struct ferry_report *out, size_t size,
		     const struct ferry_report *full);

/* libferry.so.0's first struct sizes: what a program passes that calls
 * the plain entry points (built before the _sized ones). */
#define ABI0_MIGRATE_OPTS_SIZE 224
#define ABI0_RECEIVER_OPTS_SIZE 120
#define ABI0_REPORT_SIZE 848

#endif /* FERRY_ABI_H */
