/*
 * The model behind the "predict" policy (docs/convergence.md), exposed
 * for its unit tests. Bytes, bytes per second and seconds.
 */
#ifndef FERRY_ENGINE_POLICY_H
#define FERRY_ENGINE_POLICY_H

#include <stdbool.h>

/* Precopy from now until it converges, or INFINITY if it never does. */
double ferry_predict_precopy_s(double remaining, double pass_elapsed,
			       double total, double dirty, double link,
			       double downtime_s);

/* Post-copy, switched now, until the last page is on the destination. */
double ferry_predict_postcopy_s(double remaining, double pass_elapsed,
				double total, double dirty, double link);

/* The guest's longest stall after a post-copy switchover: the faults it
 * takes in a row, each behind @in_flight bytes unless @preempt. */
double ferry_predict_postcopy_stall_s(double link, double in_flight,
				      bool preempt);

#endif /* FERRY_ENGINE_POLICY_H */
