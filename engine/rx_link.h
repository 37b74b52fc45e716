/*
 * The destination QEMU's main migration channel when it also takes
 * post-copy's preempt channel.
 *
 * QEMU 7.2 takes a second channel only on a socket it listens on itself
 * (migrate-incoming unix:), and ferry connects to it; but QEMU must not
 * start before the stream from the source has shown QEMU's header (it
 * exits when an incoming migration fails). So the memory tunnel starts
 * with an rx_link as its local end: the tunnel's first write keeps the
 * stream's head here and waits; the receiver looks at the head
 * (rx_link_peek), starts QEMU, connects, and gives the socket
 * (rx_link_set), or gives up (rx_link_close) and the waiting write fails.
 */
#ifndef FERRY_RX_LINK_H
#define FERRY_RX_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "transport/tunnel.h"

/* The most of the stream's head a link keeps before QEMU's socket. */
#define RX_LINK_HEAD_MAX 16

struct rx_link;

int rx_link_new(struct rx_link **out);
/* The tunnel's local end: valid as long as the link. */
const struct tun_local *rx_link_local(struct rx_link *l);
/*
 * Like net_peek(): wait until @len (at most RX_LINK_HEAD_MAX) bytes of the
 * stream arrived and copy them: 0, -ETIMEDOUT, -ECONNRESET when the link
 * was closed, or -ECANCELED when @cancel_fd (may be -1) becomes readable.
 */
int rx_link_peek(struct rx_link *l, void *buf, size_t len, int timeout_ms,
		 int cancel_fd);
/* QEMU's socket, connected: the link owns it and the tunnel goes on. */
void rx_link_set(struct rx_link *l, int fd);
/* Give up: the tunnel's waiting and later calls fail; the socket (if
 * any) is shut down, so a read blocked on it returns. */
void rx_link_close(struct rx_link *l);
/* After the tunnel that used it was freed. NULL is fine. */
void rx_link_free(struct rx_link *l);

#endif /* FERRY_RX_LINK_H */
