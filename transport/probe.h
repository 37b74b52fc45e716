/*
 * The link probe: before a migration whose codec is "auto", the source
 * sends a few MiB of raw frames on a PROBE connection and the receiver
 * answers with how fast they arrived. When the link is faster than any
 * compressor on this machine, compression cannot pay and ferry hands the
 * data connection to QEMU itself (docs/wire-protocol.md, "Hand-off").
 */
#ifndef FERRY_PROBE_H
#define FERRY_PROBE_H

#include <stdint.h>

#include "net.h"

/* What the source sends: this much, or for this long, whichever is first. */
#define PROBE_BYTES (8u << 20)
#define PROBE_MAX_MS 40
#define PROBE_FRAME_BYTES (256u << 10)
#define PROBE_SNDBUF_BYTES (256 << 10)
/* The receiver's answer must come within this. */
#define PROBE_TIMEOUT_MS 5000
/* Less than this arrived: too little to measure a rate. */
#define PROBE_MIN_BYTES (1u << 20)

/*
 * Source side, on a fresh PROBE connection (after its hello). *rate gets
 * bytes/s as the receiver measured it, 0 when too little arrived.
 */
int probe_send(struct net_conn *c, uint64_t *rate, struct ferry_error *err);

/*
 * Receiver side: read the probe's frames (each validated, the total
 * bounded by WIRE_PROBE_MAX_BYTES) up to END and answer PROBED.
 */
int probe_serve(struct net_conn *c, struct ferry_error *err);

/*
 * How fast this machine's fastest compressor (LZ4) compresses data that
 * compresses, bytes/s, measured once on a synthetic sample. A link faster
 * than this gains nothing from compression.
 */
uint64_t probe_compressor_rate(void);

#endif /* FERRY_PROBE_H */
