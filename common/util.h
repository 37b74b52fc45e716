/*
 * What every layer of libferry needs (qmp/, transport/ and engine/ all
 * build on it, and it on nothing of theirs): a monotonic clock, the error
 * helpers and logging of ferry.h, and assertions that stay on in release
 * builds.
 */
#ifndef FERRY_COMMON_UTIL_H
#define FERRY_COMMON_UTIL_H

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

static inline uint64_t ferry_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t ferry_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The CLOCK_MONOTONIC time @ms from now, for pthread_cond_timedwait on a
 * condition variable set to that clock. */
static inline struct timespec ferry_deadline_after(uint32_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
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

#endif /* FERRY_COMMON_UTIL_H */
