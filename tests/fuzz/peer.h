/*
 * The far end of a connection, for harnesses whose parser reads a socket
 * (the NBD server and client, QMP, control messages): a thread writes the
 * fuzz input into the socket and then shuts its sending side down, so the
 * code under test reads exactly those bytes and then EOF, never waits
 * for more. Meanwhile the thread reads and drops whatever that code
 * sends, so neither side can block the other, however much either
 * writes.
 */
#ifndef FERRY_FUZZ_PEER_H
#define FERRY_FUZZ_PEER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The longest a peer waits for the code under test to read, write or
 * hang up. Far beyond any iteration (libFuzzer's -timeout, 20 s in
 * fuzz-run, is shorter and reports the input); past it the peer shuts the
 * socket down both ways, which ends any wait on the other side.
 */
#define FUZZ_PEER_TIMEOUT_MS 30000

struct fuzz_peer {
	int fd;			/* the peer's end; -1 until accepted */
	int listen_fd;		/* accept the connection here first, or -1 */
	const uint8_t *data;	/* what the peer sends, then EOF */
	size_t len;
	atomic_bool stop;	/* fuzz_peer_join() is waiting */
	bool done;		/* the thread is through with this peer */
};

/*
 * A connected socket pair with the peer on one end. Returns the other end
 * for the code under test, which the caller closes (or hands to code
 * that does) before fuzz_peer_join(). Aborts when out of descriptors.
 */
int fuzz_peer_pair(struct fuzz_peer *p, const uint8_t *data, size_t len);

/* The peer accepts one connection on listening socket @lfd and serves it. */
void fuzz_peer_accept(struct fuzz_peer *p, int lfd, const uint8_t *data,
		      size_t len);

/*
 * Wait for the peer to finish: it does once the code under test has
 * closed its end (or never connected). Everything the peer opened is
 * closed.
 */
void fuzz_peer_join(struct fuzz_peer *p);

#endif /* FERRY_FUZZ_PEER_H */
