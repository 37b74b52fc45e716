/*
 * The estimate of the time left, as the user sees it: the policy's raw
 * estimate, steadied so that it never drops by more than its own stated
 * error from one sample to the next (it may rise: bad news is shown at
 * once), and, at the end, how far off it was at 25%, 50% and 75% of the
 * run.
 *
 * The stated error starts at a quarter of the first estimate (at least
 * ETA_ERR_MIN_MS) and follows how far the raw estimate moved from what the
 * last one predicted, decaying by ETA_ERR_DECAY per sample when it stays
 * put.
 */
#ifndef FERRY_ETA_H
#define FERRY_ETA_H

#include <stdbool.h>
#include <stdint.h>

#define ETA_ERR_MIN_MS 500
#define ETA_ERR_DECAY 0.9
/* Estimates kept for the accuracy report; past it, every other one goes. */
#define ETA_HISTORY 1024
/* Where the accuracy is reported: 25%, 50%, 75% of the run. */
#define ETA_CHECKPOINTS 3

struct eta {
	bool have;
	uint64_t shown_ms, at_ms, err_ms;
	uint32_t n, stride;	/* history: every stride-th sample kept */
	uint64_t seen;		/* samples since the start */
	struct {
		uint64_t at_ms;		/* elapsed when estimated */
		uint64_t total_ms;	/* elapsed + the estimate shown */
	} hist[ETA_HISTORY];
};

void eta_init(struct eta *e);
/* A sample at @elapsed_ms with the policy's estimate @raw_ms (0: none). */
void eta_update(struct eta *e, uint64_t elapsed_ms, uint64_t raw_ms);
/* The estimate to show at @elapsed_ms and its error; 0: none. */
uint64_t eta_shown_ms(const struct eta *e, uint64_t elapsed_ms,
		      uint64_t *err_ms);
/*
 * For a run that took @total_ms: predicted total less actual, ms, of the
 * estimate shown nearest each of 25%, 50% and 75% of it (within an eighth
 * of the run); INT64_MIN where there was none.
 */
void eta_accuracy(const struct eta *e, uint64_t total_ms,
		  int64_t off_ms[ETA_CHECKPOINTS]);

#endif /* FERRY_ETA_H */
