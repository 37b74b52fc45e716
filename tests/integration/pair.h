/*
 * The pair of VMs moved into the test harness (tests/harness/pair.h,
 * compiled into libharness.a). This header only forwards to it, for the
 * tests that still include it here; include tests/harness/pair.h instead,
 * and delete this file once nothing includes it.
 */
#ifndef FERRY_TESTS_INTEGRATION_PAIR_H
#define FERRY_TESTS_INTEGRATION_PAIR_H

#include "tests/harness/pair.h"

#endif /* FERRY_TESTS_INTEGRATION_PAIR_H */
