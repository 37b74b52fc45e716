/*
 * Small internal helpers shared by every module of libferry: a monotonic
 * clock, logging, and assertions that stay on in release builds.
 */
#ifndef FERRY_UTIL_H
#define FERRY_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ferry.h"

static inline uint64_t ferry_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Unix time, ms: what JSON timestamps say. */
static inline uint64_t ferry_unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline uint64_t ferry_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Keep @err's message, now with the code @code (a failure turned into
 * "recover": -EAGAIN); returns @code. */
static inline int ferry_error_recode(struct ferry_error *err, int code)
{
	err->code = code;
	return code;
}

/*
 * Programmer errors only (a broken invariant inside ferry), never operating
 * errors: those are returned. Stays on with NDEBUG.
 */
#define FERRY_ASSERT(cond)                                                   \
	do {                                                                 \
		if (__builtin_expect(!(cond), 0)) {                          \
			fprintf(stderr, "ferry: %s:%d: assertion failed: %s\n", \
				__FILE__, __LINE__, #cond);                  \
			abort();                                             \
		}                                                            \
	} while (0)

#define FERRY_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

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

#endif /* FERRY_UTIL_H */
