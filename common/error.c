/* struct ferry_error helpers and the log sink. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ferry.h"
#include "common/util.h"

int ferry_error_set(struct ferry_error *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return code;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return code;
}

int ferry_error_prefix(struct ferry_error *err, const char *fmt, ...)
{
	char prefix[FERRY_ERROR_MSG_MAX];
	char old[FERRY_ERROR_MSG_MAX];
	va_list ap;

	if (!err)
		return -EIO;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof(old));
	snprintf(err->msg, sizeof(err->msg), "%s%s", prefix, old);
	return err->code;
}

static ferry_log_fn log_fn;
static void *log_opaque;
static int log_max_level = FERRY_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void ferry_set_log(ferry_log_fn fn, void *opaque, int max_level)
{
	pthread_mutex_lock(&log_lock);
	log_fn = fn;
	log_opaque = opaque;
	log_max_level = max_level;
	pthread_mutex_unlock(&log_lock);
}

static void log_default(int level, const char *msg)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	fprintf(stderr, "%02d:%02d:%02d.%03ld ferry[%s]: %s\n", tm.tm_hour,
		tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
		names[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}

void ferry_log(int level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (level > log_max_level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&log_lock);
	if (log_fn)
		log_fn(level, msg, log_opaque);
	else
		log_default(level, msg);
	pthread_mutex_unlock(&log_lock);
}
