/*
 * The relay: the full-duplex tunnel between a local QEMU's migration socket
 * and one ferry data connection, driven by io_uring on its own thread.
 *
 *   source role: local bytes go out as DATA frames, RETURN frames come in
 *   dest role:   local bytes go out as RETURN frames, DATA frames come in
 *
 * When the local QEMU closes its side, an END frame tells the peer, which
 * then shuts down the write side of its own QEMU socket. The relay ends
 * when both directions have ended, or at the first error; either way it
 * closes both sockets, so each QEMU sees the stream end (a QEMU whose
 * migration stream breaks fails the migration, and a source guest keeps
 * running).
 */
#ifndef FERRY_RELAY_H
#define FERRY_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"

/* Buffers per direction: enough to keep a receive and a send in flight. */
#define XPORT_BUFS_PER_DIR 8
/* Payload of the frames we send; QEMU writes in 32-256 KiB bursts. */
#define XPORT_FRAME_BYTES (256u << 10)
/* No byte moved in either direction for this long: the peer stalled. */
#define XPORT_IDLE_TIMEOUT_MS 30000
/* How often the relay wakes to check its idle clock. */
#define XPORT_TICK_MS 250
/* Bound on draining in-flight operations when the relay stops. */
#define XPORT_DRAIN_TIMEOUT_MS 2000

enum xport_role {
	XPORT_ROLE_SOURCE = 1,
	XPORT_ROLE_DEST = 2,
};

struct xport_relay_opts {
	uint32_t idle_timeout_ms;	/* 0: XPORT_IDLE_TIMEOUT_MS */
};

struct xport_stats {
	uint64_t local_in_bytes;	/* read from the local QEMU */
	uint64_t local_out_bytes;	/* written to the local QEMU */
	uint64_t wire_out_bytes;	/* sent on the data connection */
	uint64_t wire_in_bytes;		/* received on the data connection */
	uint64_t frames_out;
	uint64_t frames_in;
};

struct xport_relay;

/*
 * Start relaying between @local_fd and @net_fd. The relay owns both file
 * descriptors from this call on, also on failure. Returns 0 or -errno.
 */
int xport_relay_start(struct xport_relay **out, int local_fd, int net_fd,
		      enum xport_role role, const struct xport_relay_opts *opts,
		      struct ferry_error *err);

/* An eventfd that becomes readable when the relay has ended. */
int xport_relay_done_fd(const struct xport_relay *r);

bool xport_relay_finished(const struct xport_relay *r);

/* Copy of the counters; safe while the relay runs. */
void xport_relay_stats(const struct xport_relay *r, struct xport_stats *s);

/* Stop the relay now (closes both sockets). Thread-safe. */
void xport_relay_cancel(struct xport_relay *r);

/*
 * Wait up to timeout_ms for the relay to end; returns its result: 0 when
 * both directions ended cleanly, -ETIMEDOUT if it is still running, or the
 * error that ended it (with @err filled).
 */
int xport_relay_wait(struct xport_relay *r, int timeout_ms,
		     struct ferry_error *err);

/* Cancel if still running, join the thread, free. NULL is allowed. */
void xport_relay_free(struct xport_relay *r);

#endif /* FERRY_RELAY_H */
