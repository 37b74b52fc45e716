/*
 * The emulated link of the benchmarks: the root namespace (LINK_SRC_ADDR)
 * and network namespace LINK_NETNS (LINK_DST_ADDR) joined by a veth pair
 * rate-limited by tbf, set up and torn down by scripts/bench-netns.sh.
 */
#ifndef FERRY_TESTS_LINK_H
#define FERRY_TESTS_LINK_H

#include <stdint.h>

#define LINK_NETNS "ferrybench"
#define LINK_SRC_ADDR "10.77.0.1"
#define LINK_DST_ADDR "10.77.0.2"

/* Up at @mbit Mbit/s; link_down() runs at exit too. 0 or -1. */
int link_up(uint32_t mbit);
/* Tear it down (idempotent). */
void link_down(void);
/* Bytes both ways on the host end of the link. */
uint64_t link_bytes(void);
/* Enter /var/run/netns/@name (the calling thread only). 0 or -errno. */
int netns_enter(const char *name);

#endif /* FERRY_TESTS_LINK_H */
