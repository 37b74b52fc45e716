/*
 * The estimate of the time left (see eta.h).
 */
#include <stdlib.h>
#include <string.h>

#include "eta.h"

void eta_init(struct eta *e)
{
	memset(e, 0, sizeof(*e));
	e->stride = 1;
}

/* What the shown estimate says now, counting down since it was shown. */
static uint64_t counted_down(const struct eta *e, uint64_t elapsed_ms)
{
	uint64_t gone = elapsed_ms > e->at_ms ? elapsed_ms - e->at_ms : 0;

	return e->shown_ms > gone ? e->shown_ms - gone : 0;
}

static void remember(struct eta *e, uint64_t elapsed_ms)
{
	if (e->seen++ % e->stride)
		return;
	if (e->n == ETA_HISTORY) {
		/* Full: keep every other one, and from now on half as many. */
		for (uint32_t i = 0; i < ETA_HISTORY / 2; i++)
			e->hist[i] = e->hist[2 * i];
		e->n = ETA_HISTORY / 2;
		e->stride *= 2;
	}
	e->hist[e->n].at_ms = elapsed_ms;
	e->hist[e->n].total_ms = elapsed_ms + e->shown_ms;
	e->n++;
}

void eta_update(struct eta *e, uint64_t elapsed_ms, uint64_t raw_ms)
{
	uint64_t expect, floor, moved, decayed;

	if (!raw_ms)
		return;
	if (!e->have) {
		e->have = true;
		e->shown_ms = raw_ms;
		e->err_ms = raw_ms / 4 > ETA_ERR_MIN_MS ? raw_ms / 4 : ETA_ERR_MIN_MS;
		e->at_ms = elapsed_ms;
		remember(e, elapsed_ms);
		return;
	}
	expect = counted_down(e, elapsed_ms);
	/* Never down by more than the error stated so far. */
	floor = expect > e->err_ms ? expect - e->err_ms : 0;
	moved = raw_ms > expect ? raw_ms - expect : expect - raw_ms;
	decayed = (uint64_t)((double)e->err_ms * ETA_ERR_DECAY);
	e->shown_ms = raw_ms > floor ? raw_ms : floor;
	e->err_ms = moved > decayed ? moved : decayed;
	if (e->err_ms < ETA_ERR_MIN_MS)
		e->err_ms = ETA_ERR_MIN_MS;
	e->at_ms = elapsed_ms;
	remember(e, elapsed_ms);
}

uint64_t eta_shown_ms(const struct eta *e, uint64_t elapsed_ms,
		      uint64_t *err_ms)
{
	if (!e->have)
		return 0;
	if (err_ms)
		*err_ms = e->err_ms;
	return counted_down(e, elapsed_ms);
}

void eta_accuracy(const struct eta *e, uint64_t total_ms,
		  int64_t off_ms[ETA_CHECKPOINTS])
{
	for (int k = 0; k < ETA_CHECKPOINTS; k++) {
		uint64_t at = total_ms * (uint64_t)(k + 1) / (ETA_CHECKPOINTS + 1);
		uint64_t best = total_ms / 8 + 1;

		off_ms[k] = INT64_MIN;
		for (uint32_t i = 0; i < e->n; i++) {
			uint64_t d = e->hist[i].at_ms > at ? e->hist[i].at_ms - at :
				     at - e->hist[i].at_ms;

			if (d < best) {
				best = d;
				off_ms[k] = (int64_t)e->hist[i].total_ms -
					    (int64_t)total_ms;
			}
		}
	}
}
