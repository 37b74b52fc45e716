/*
 * The guest's view of a migration (see view.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness/stats.h"
#include "tests/harness/view.h"

/* Work at beat @i: the guest's counter, or the beat's index when idle. */
static double work_at(const struct vm_beat *b, size_t i, bool by_beats)
{
	return by_beats ? (double)i : (double)b[i].work;
}

/* Work at time @t, interpolated between the beats around it. */
static double work_at_time(const struct vm_beat *b, size_t n, uint64_t t,
			   bool by_beats)
{
	size_t i = 0;

	while (i + 1 < n && b[i + 1].t_us <= t)
		i++;
	if (i + 1 >= n || b[i].t_us >= t)
		return work_at(b, i, by_beats);
	return work_at(b, i, by_beats) +
	       (work_at(b, i + 1, by_beats) - work_at(b, i, by_beats)) *
	       (double)(t - b[i].t_us) / (double)(b[i + 1].t_us - b[i].t_us);
}

/* The undisturbed rate: over every beat before @from_us. */
static int base_rate(const struct vm_beat *b, size_t n, uint64_t from_us,
		     struct guest_view *v)
{
	size_t last = 0;
	double span;

	while (last + 1 < n && b[last + 1].t_us < from_us)
		last++;
	if (n == 0 || b[0].t_us >= from_us ||
	    b[last].t_us - b[0].t_us < VIEW_BASE_MIN_MS * 1000ull)
		return -ENODATA;
	span = (double)(b[last].t_us - b[0].t_us) / 1e6;
	v->by_beats = b[last].work == b[0].work;
	v->base_rate = (work_at(b, last, v->by_beats) -
			work_at(b, 0, v->by_beats)) / span;
	return 0;
}

/* The longest gap between beats that ends inside the window; *@end gets
 * the index of the beat that ends it. */
static void blackout(const struct vm_beat *b, size_t n, uint64_t from_us,
		     uint64_t to_us, struct guest_view *v, size_t *end)
{
	v->blackout_us = 0;
	*end = 0;
	for (size_t i = 1; i < n; i++) {
		uint64_t gap = b[i].t_us - b[i - 1].t_us;

		if (b[i].t_us <= from_us || b[i].t_us > to_us)
			continue;
		if (gap > v->blackout_us) {
			v->blackout_us = gap;
			v->blackout_at_us = b[i - 1].t_us;
			*end = i;
		}
	}
}

/* From the blackout's end: the first beat from which the guest keeps half
 * its rate for VIEW_RATE_MS. */
static void half_rate(const struct vm_beat *b, size_t n, size_t from,
		      uint64_t to_us, struct guest_view *v)
{
	size_t j = from;

	v->half_rate_us = UINT64_MAX;
	for (size_t i = from; i < n && b[i].t_us <= to_us; i++) {
		double done, want;

		if (j < i)
			j = i;
		while (j < n && b[j].t_us - b[i].t_us < VIEW_RATE_MS * 1000ull)
			j++;
		if (j >= n)
			return;
		done = work_at(b, j, v->by_beats) - work_at(b, i, v->by_beats);
		want = v->base_rate / 2 * (double)(b[j].t_us - b[i].t_us) / 1e6;
		if (done >= want) {
			v->half_rate_us = b[i].t_us - v->blackout_at_us;
			return;
		}
	}
}

int guest_view(const struct vm_beat *b, size_t n, uint64_t from_us,
	       uint64_t to_us, struct guest_view *v)
{
	double want, done;
	size_t end;

	memset(v, 0, sizeof(*v));
	if (n < 2 || to_us > b[n - 1].t_us + VIEW_TAIL_MS * 1000ull)
		return -ENODATA;	/* the guest stopped beating */
	if (to_us > b[n - 1].t_us)
		to_us = b[n - 1].t_us;
	if (base_rate(b, n, from_us, v) < 0 || v->base_rate <= 0 ||
	    to_us <= from_us)
		return -ENODATA;
	blackout(b, n, from_us, to_us, v, &end);
	if (end == 0)
		return -ENODATA;
	half_rate(b, n, end, to_us, v);
	want = v->base_rate * (double)(to_us - from_us) / 1e6;
	done = work_at_time(b, n, to_us, v->by_beats) -
	       work_at_time(b, n, from_us, v->by_beats);
	v->lost_us = done >= want ? 0 :
		     (uint64_t)((want - done) / v->base_rate * 1e6);
	return 0;
}

int guest_view_of(struct vm *src, struct vm *dst, uint64_t base_us,
		  uint64_t from_us, uint64_t to_us, struct guest_view *v)
{
	struct vm_beat *b = calloc(VIEW_BEATS_MAX, sizeof(*b));
	size_t n;
	int rc;

	if (!b)
		return -ENOMEM;
	n = vm_beats(src, dst, base_us, b, VIEW_BEATS_MAX);
	rc = guest_view(b, n, from_us, to_us, v);
	free(b);
	return rc;
}

int guest_view_trace(struct vm *src, struct vm *dst, uint64_t base_us,
		     uint64_t from_us, const char *path)
{
	struct vm_beat *b = calloc(VIEW_BEATS_MAX, sizeof(*b));
	FILE *f = fopen(path, "w");
	size_t n;
	int rc = 0;

	if (!b || !f) {
		rc = !b ? -ENOMEM : -errno;
		goto out;
	}
	n = vm_beats(src, dst, base_us, b, VIEW_BEATS_MAX);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%.1f %llu\n",
			((double)b[i].t_us - (double)from_us) / 1000,
			(unsigned long long)b[i].work);
	if (fflush(f) != 0)
		rc = -errno;
out:
	if (f)
		fclose(f);
	free(b);
	return rc;
}

static uint64_t ms_up(uint64_t us)
{
	return (us + 999) / 1000;
}

void guest_view_ms(const struct guest_view *v, uint64_t *blackout_ms,
		   uint64_t *half_rate_ms, uint64_t *lost_ms)
{
	*blackout_ms = ms_up(v->blackout_us);
	*half_rate_ms = v->half_rate_us == UINT64_MAX ? UINT64_MAX :
			ms_up(v->half_rate_us);
	*lost_ms = ms_up(v->lost_us);
}

int guest_intact(const char *dir, struct vm *src, struct vm *dst,
		 struct ferry_error *err)
{
	uint64_t diff = 0;
	uint64_t from = vm_static_ram_from(src);
	int rc;

	rc = vm_wait_heartbeats(dst, VIEW_ALIVE_BEATS, VIEW_ALIVE_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "destination guest: ");
	if (!from)
		return ferry_error_set(err, -ENODATA, "the source guest never "
				       "said where its working set ends");
	rc = stats_same_ram_from(dir, src, dst, from, &diff, err);
	if (rc < 0)
		return ferry_error_prefix(err, "comparing the guests' RAM: ");
	if (rc != 1)
		return ferry_error_set(err, -EIO, "the destination's RAM above "
				       "the working set differs from the "
				       "source's at byte %llu",
				       (unsigned long long)diff);
	return 0;
}
