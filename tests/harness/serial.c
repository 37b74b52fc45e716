/*
 * The guest's serial console: one thread per VM reads QEMU's stdout (where
 * COM1 goes), splits it into lines and stamps each with CLOCK_MONOTONIC as
 * it arrives, so heartbeat gaps measure real time on the host. Memory is
 * bounded: one line buffer, the last line, the first ERR line and a ring of
 * the last VM_HB_RING heartbeat times.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/harness/vm_priv.h"

uint64_t vm_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void copy_line(char *dst, const char *src)
{
	snprintf(dst, VM_LINE_MAX, "%s", src);
}

/* The number after "@key=" in @line, or 0. */
static uint32_t line_value(const char *line, const char *key)
{
	const char *f = strstr(line, key);

	return f ? (uint32_t)strtoul(f + strlen(key), NULL, 10) : 0;
}

/* "HB <seq> <pages>": the guest's work counter; 32 bits in the guest,
 * widened here across wraps. */
static uint64_t beat_work(const struct vm_serial *s, const char *line)
{
	char *end;
	uint32_t pages;
	uint64_t prev;

	strtoul(line + 3, &end, 10);
	pages = (uint32_t)strtoul(end, NULL, 10);
	if (s->hb_count == 0)
		return pages;
	prev = s->hb_ring[(s->hb_count - 1) % VM_HB_RING].work;
	return prev + (uint32_t)(pages - (uint32_t)prev);
}

/* One complete line, NUL-terminated, stamped @now_us. Reader thread. */
static void serial_line(struct vm_serial *s, const char *line, uint64_t now_us)
{
	bool hb = starts_with(line, "HB ");

	if (s->echo && !hb)
		fprintf(stderr, "[guest %d] %s\n", (int)s->pid, line);
	pthread_mutex_lock(&s->lock);
	if (hb) {
		struct vm_beat *b = &s->hb_ring[s->hb_count % VM_HB_RING];

		b->work = beat_work(s, line);
		b->t_us = now_us;
		s->hb_count++;
		s->last_hb_us = now_us;
	} else {
		if (starts_with(line, "READY")) {
			s->fill_ms = line_value(line, "fill_ms=");
			s->ready = true;
		} else if (starts_with(line, "INFO regions=")) {
			s->fill_base = line_value(line, "fill_base=");
			s->ws_pages = line_value(line, "ws_pages=");
		} else if (starts_with(line, "ERR") && !s->has_err) {
			copy_line(s->err_line, line);
			s->has_err = true;
		}
		copy_line(s->last_line, line);
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/* Split @n bytes into lines; a line longer than VM_LINE_MAX - 1 keeps its
 * start and drops the rest. */
static void serial_bytes(struct vm_serial *s, const char *buf, size_t n)
{
	uint64_t now_us = vm_now_us();

	for (size_t i = 0; i < n; i++) {
		char c = buf[i];

		if (c == '\n') {
			s->line[s->line_len] = '\0';
			serial_line(s, s->line, now_us);
			s->line_len = 0;
			s->line_truncated = false;
		} else if (c != '\r' && s->line_len < VM_LINE_MAX - 1) {
			s->line[s->line_len++] = c;
		} else if (c != '\r') {
			s->line_truncated = true;
		}
	}
}

static void serial_set_eof(struct vm_serial *s)
{
	pthread_mutex_lock(&s->lock);
	s->eof = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/* Runs until QEMU closes its stdout (it exited) or vm_serial_fini() wakes
 * it; the wait has no timeout because nobody waits on it but fini. */
/*
 * A heartbeat is stamped when this thread reads it: on two cores shared
 * with both QEMUs and ferry, a reader that waits for a turn would stamp a
 * late batch and report a gap the guest never had. As root it runs
 * first (SCHED_FIFO; it only ever reads and stamps); otherwise as it is.
 */
#define SERIAL_READER_PRIO 10

static void serial_reader_first(void)
{
	struct sched_param sp = { .sched_priority = SERIAL_READER_PRIO };

	pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
}

static void *serial_main(void *arg)
{
	struct vm_serial *s = arg;
	char buf[4096];

	serial_reader_first();
	for (;;) {
		struct pollfd pfd[2] = {
			{ .fd = s->fd, .events = POLLIN },
			{ .fd = s->wake[0], .events = POLLIN },
		};
		ssize_t n;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[1].revents)
			break;
		if (!pfd[0].revents)
			continue;
		n = read(s->fd, buf, sizeof(buf));
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			break;
		serial_bytes(s, buf, (size_t)n);
	}
	serial_set_eof(s);
	return NULL;
}

int vm_serial_init(struct vm_serial *s, pid_t pid, struct ferry_error *err)
{
	pthread_condattr_t ca;
	const char *echo = getenv("FERRY_VM_ECHO");
	int rc;

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->wake[0] = s->wake[1] = -1;
	s->pid = pid;
	s->echo = echo && *echo && strcmp(echo, "0") != 0;
	s->hb_ring = calloc(VM_HB_RING, sizeof(*s->hb_ring));
	if (!s->hb_ring)
		return ferry_error_set(err, -ENOMEM, "no memory for the heartbeat ring");
	if (pipe2(s->wake, O_CLOEXEC) < 0) {
		rc = ferry_error_set(err, -errno, "pipe for the serial reader: %s",
				     strerror(errno));
		goto err_free_ring;
	}
	/* Waits use absolute CLOCK_MONOTONIC deadlines, immune to clock steps. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&s->lock, NULL);
	return 0;

err_free_ring:
	free(s->hb_ring);
	s->hb_ring = NULL;
	return rc;
}

int vm_serial_start(struct vm_serial *s, int fd, struct ferry_error *err)
{
	int rc;

	s->fd = fd;
	rc = pthread_create(&s->thread, NULL, serial_main, s);
	if (rc != 0)
		return ferry_error_set(err, -rc, "cannot start the serial reader: %s",
				       strerror(rc));
	s->started = true;
	return 0;
}

void vm_serial_fini(struct vm_serial *s)
{
	if (!s->hb_ring)
		return;		/* init failed: nothing else was set up */
	if (s->started) {
		char c = 0;

		if (write(s->wake[1], &c, 1) < 0) {
			/* The pipe is ours and empty: cannot fail. */
		}
		pthread_join(s->thread, NULL);
	}
	if (s->fd >= 0)
		close(s->fd);
	close(s->wake[0]);
	close(s->wake[1]);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s->hb_ring);
	s->hb_ring = NULL;
}

/* Absolute CLOCK_MONOTONIC deadline @timeout_ms from now. */
static struct timespec deadline_after(int timeout_ms)
{
	return ferry_deadline_after(timeout_ms > 0 ? (uint32_t)timeout_ms : 0);
}

int vm_wait_ready(struct vm *vm, int timeout_ms, struct ferry_error *err)
{
	struct vm_serial *s = &vm->serial;
	struct timespec dl = deadline_after(timeout_ms);
	int rc = 0;

	pthread_mutex_lock(&s->lock);
	while (!s->ready && !s->has_err && !s->eof && rc == 0)
		rc = pthread_cond_timedwait(&s->cond, &s->lock, &dl);
	if (s->has_err)
		rc = ferry_error_set(err, -EIO, "guest failed before READY: %s",
				     s->err_line);
	else if (s->ready)
		rc = 0;
	else if (s->eof)
		rc = ferry_error_set(err, -ECHILD,
				     "QEMU exited before the guest was READY (see %s)",
				     vm->log_path);
	else
		rc = ferry_error_set(err, -ETIMEDOUT,
				     "guest not READY after %d ms (last serial line: '%s')",
				     timeout_ms, s->last_line);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

uint32_t vm_fill_ms(struct vm *vm)
{
	uint32_t v;

	pthread_mutex_lock(&vm->serial.lock);
	v = vm->serial.fill_ms;
	pthread_mutex_unlock(&vm->serial.lock);
	return v;
}

uint64_t vm_heartbeats(struct vm *vm)
{
	uint64_t v;

	pthread_mutex_lock(&vm->serial.lock);
	v = vm->serial.hb_count;
	pthread_mutex_unlock(&vm->serial.lock);
	return v;
}

uint64_t vm_last_heartbeat_us(struct vm *vm)
{
	uint64_t v;

	pthread_mutex_lock(&vm->serial.lock);
	v = vm->serial.last_hb_us;
	pthread_mutex_unlock(&vm->serial.lock);
	return v;
}

int vm_wait_heartbeats(struct vm *vm, uint64_t n_more, int timeout_ms,
		       struct ferry_error *err)
{
	struct vm_serial *s = &vm->serial;
	struct timespec dl = deadline_after(timeout_ms);
	uint64_t start, target;
	int rc = 0;

	pthread_mutex_lock(&s->lock);
	start = s->hb_count;
	target = start + n_more;
	while (s->hb_count < target && !s->eof && rc == 0)
		rc = pthread_cond_timedwait(&s->cond, &s->lock, &dl);
	if (s->hb_count >= target)
		rc = 0;
	else if (s->eof)
		rc = ferry_error_set(err, -ECHILD,
				     "QEMU exited after %llu of %llu heartbeats",
				     (unsigned long long)(s->hb_count - start),
				     (unsigned long long)n_more);
	else
		rc = ferry_error_set(err, -ETIMEDOUT,
				     "%llu of %llu heartbeats in %d ms (last serial line: '%s')",
				     (unsigned long long)(s->hb_count - start),
				     (unsigned long long)n_more, timeout_ms, s->last_line);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

static void lock_two(struct vm_serial **a, struct vm_serial **b)
{
	if (*a == *b)
		*b = NULL;
	if (!*a) {
		*a = *b;
		*b = NULL;
	}
	if (!*a)
		return;
	/* Two locks: always in address order, so two callers cannot deadlock. */
	if (*b && *b < *a) {
		struct vm_serial *t = *a;

		*a = *b;
		*b = t;
	}
	pthread_mutex_lock(&(*a)->lock);
	if (*b)
		pthread_mutex_lock(&(*b)->lock);
}

static void unlock_two(struct vm_serial *a, struct vm_serial *b)
{
	if (b)
		pthread_mutex_unlock(&b->lock);
	if (a)
		pthread_mutex_unlock(&a->lock);
}

/* Cursor over one VM's retained heartbeats at or after a time. */
struct hb_cursor {
	const struct vm_serial *s;
	uint64_t i, end;
};

static void hb_cursor_init(struct hb_cursor *c, const struct vm_serial *s,
			   uint64_t since_us)
{
	c->s = s;
	c->end = s ? s->hb_count : 0;
	c->i = c->end > VM_HB_RING ? c->end - VM_HB_RING : 0;
	while (c->i < c->end && s->hb_ring[c->i % VM_HB_RING].t_us < since_us)
		c->i++;
}

static bool hb_cursor_peek(const struct hb_cursor *c, uint64_t *t)
{
	if (c->i >= c->end)
		return false;
	*t = c->s->hb_ring[c->i % VM_HB_RING].t_us;
	return true;
}

/* Both VMs' beats (one guest across a migration) in time order. */
struct hb_merge {
	struct hb_cursor a, b;
};

static void hb_merge_init(struct hb_merge *m, const struct vm_serial *a,
			  const struct vm_serial *b, uint64_t since_us)
{
	hb_cursor_init(&m->a, a, since_us);
	hb_cursor_init(&m->b, b, since_us);
}

/* The next beat of either, the earlier first; false past the last. */
static bool hb_merge_next(struct hb_merge *m, struct vm_beat *out)
{
	uint64_t ta, tb;
	bool ha = hb_cursor_peek(&m->a, &ta), hb = hb_cursor_peek(&m->b, &tb);
	struct hb_cursor *c;

	if (!ha && !hb)
		return false;
	c = ha && (!hb || ta <= tb) ? &m->a : &m->b;
	*out = c->s->hb_ring[c->i++ % VM_HB_RING];
	return true;
}

/* The largest step between consecutive beats of the two. */
static uint64_t max_gap_locked(const struct vm_serial *a, const struct vm_serial *b,
			       uint64_t since_us)
{
	struct hb_merge m;
	struct vm_beat beat;
	uint64_t prev = 0, gap = 0, n = 0;

	hb_merge_init(&m, a, b, since_us);
	while (hb_merge_next(&m, &beat)) {
		if (n++ > 0 && beat.t_us - prev > gap)
			gap = beat.t_us - prev;
		prev = beat.t_us;
	}
	return n < 2 ? UINT64_MAX : gap;
}

uint64_t vm_max_heartbeat_gap_us(struct vm *src, struct vm *dst, uint64_t since_us)
{
	struct vm_serial *a = src ? &src->serial : NULL;
	struct vm_serial *b = dst ? &dst->serial : NULL;
	uint64_t gap;

	lock_two(&a, &b);
	if (!a)
		return UINT64_MAX;
	gap = max_gap_locked(a, b, since_us);
	unlock_two(a, b);
	return gap;
}

uint64_t vm_max_heartbeat_gap_ms(struct vm *src, struct vm *dst, uint64_t since_us)
{
	uint64_t us = vm_max_heartbeat_gap_us(src, dst, since_us);

	return us == UINT64_MAX ? UINT64_MAX : (us + 999) / 1000;
}

size_t vm_beats(struct vm *src, struct vm *dst, uint64_t since_us,
		struct vm_beat *out, size_t max)
{
	struct vm_serial *a = src ? &src->serial : NULL;
	struct vm_serial *b = dst ? &dst->serial : NULL;
	struct hb_merge m;
	size_t n = 0;

	lock_two(&a, &b);
	if (!a)
		return 0;
	hb_merge_init(&m, a, b, since_us);
	while (n < max && hb_merge_next(&m, &out[n]))
		n++;
	unlock_two(a, b);
	return n;
}

uint64_t vm_static_ram_from(struct vm *vm)
{
	uint64_t v;

	pthread_mutex_lock(&vm->serial.lock);
	v = vm->serial.fill_base ? vm->serial.fill_base +
	    (uint64_t)vm->serial.ws_pages * VM_GUEST_PAGE : 0;
	pthread_mutex_unlock(&vm->serial.lock);
	return v;
}
