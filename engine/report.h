/* The final report as JSON (report.c). */
#ifndef FERRY_REPORT_H
#define FERRY_REPORT_H

#include <jansson.h>

#include "ferry.h"

/* Every field of @r (the schema of ferry migrate --json); NULL: out of
 * memory. */
json_t *report_json(const struct ferry_report *r);

struct tun_stats;
/* The tunnel's CPU time by stage into @r (tunnel_cpu_us). */
void report_tunnel_cpu(struct ferry_report *r, const struct tun_stats *st);

#endif /* FERRY_REPORT_H */
