/*
 * TCP plumbing for ferry's connections: listen, connect with a deadline,
 * and bounded blocking exchanges for the hello and the control channel.
 * The bulk data path does not use these: it is transport/tunnel.c, on
 * io_uring.
 */
#ifndef FERRY_NET_H
#define FERRY_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"
#include "tls.h"
#include "wire.h"

/* Listen backlog: the acceptor takes connections as they come and gives
 * each a handshake thread, so this only absorbs bursts. */
#define NET_LISTEN_BACKLOG 256
/* Default bound on connecting to a receiver. */
#define NET_CONNECT_TIMEOUT_MS 5000

/* Buffers of a local socketpair between QEMU and ferry: both write and
 * read in big bursts. */
#define NET_LOCAL_BUF_BYTES (4 << 20)
/* A TCP connection that only QEMU watches (hand-off) dies after about
 * IDLE + INTVL * COUNT s of a silent peer, or when sent data stays
 * unacknowledged for USER_TIMEOUT. */
#define NET_KEEPALIVE_IDLE_S 5
#define NET_KEEPALIVE_INTVL_S 2
#define NET_KEEPALIVE_COUNT 3
#define NET_TCP_USER_TIMEOUT_MS 20000

/*
 * Bytes in flight that QEMU's downtime estimate does not see (queued in a
 * socketpair to ferry, or unsent in a TCP socket) drain only after the
 * guest has stopped. Each such buffer is held to what the link drains in
 * a small share of the downtime limit, between these bounds.
 */
#define NET_IN_FLIGHT_MIN_BYTES (64u << 10)
#define NET_IN_FLIGHT_MAX_BYTES NET_LOCAL_BUF_BYTES
/* The share of the downtime limit each buffer may hold: 1/24, so that
 * the three in a row through ferry's tunnel (QEMU's socket, ferry's
 * frames, TCP's unsent bytes) hold 1/8 together. */
#define NET_IN_FLIGHT_SHARE 24

/* What a link of @rate_bytes_per_s drains in @downtime_ms /
 * NET_IN_FLIGHT_SHARE, within the bounds; the maximum when the rate is
 * unknown (0). */
uint32_t net_in_flight_bytes(uint64_t rate_bytes_per_s, uint32_t downtime_ms);

/* A local stream socketpair with NET_LOCAL_BUF_BYTES buffers. */
int net_local_pair(int sv[2], struct ferry_error *err);
/* The same with @bytes buffers (as root, past the sysctl limits). */
int net_local_pair_sized(int sv[2], uint32_t bytes, struct ferry_error *err);
/* At most @bytes unsent in TCP socket @fd (TCP_NOTSENT_LOWAT): a writer
 * blocks beyond it, so its measured rate is the link's. The maximum
 * (an unknown link) leaves the kernel's autotuning alone. */
void net_bound_unsent(int fd, uint32_t bytes);
/* Keepalives and a user timeout on a TCP socket (a no-op elsewhere). */
void net_keepalive(int fd);
/*
 * Wait until @len bytes can be read from @fd and copy them without
 * consuming them (MSG_PEEK): 0, -ECONNRESET when the peer closes first,
 * -ETIMEDOUT, or -ECANCELED when @cancel_fd (may be -1) becomes readable.
 */
int net_peek(int fd, void *buf, size_t len, int timeout_ms, int cancel_fd);

/* Returns a listening socket (>= 0) or -errno. */
int net_listen(const char *host, uint16_t port, struct ferry_error *err);

/*
 * A unix socket path in a private directory of its own, for a QEMU on
 * this host to reach ferry or ferry to reach it (post-copy's preempt
 * channel needs a socket URI on both QEMUs). The directory belongs to
 * @owner_pid's user (the QEMU), so a QEMU that is not root may make or
 * reach the socket in it; nobody else may.
 */
struct net_unix_dir {
	char dir[96];
	char path[128];
	int uid, gid;		/* the QEMU's user, when not ours; else -1 */
};
int net_unix_dir_make(struct net_unix_dir *u, int owner_pid,
		      struct ferry_error *err);
/* Removes the socket (if any) and the directory; idempotent. */
void net_unix_dir_remove(struct net_unix_dir *u);
/* A socket listening at @u->path, which only the QEMU's user (or ours)
 * may connect to: >= 0, or -errno. */
int net_unix_listen(const struct net_unix_dir *u, struct ferry_error *err);
/* The pid of the process at the other end of unix socket @fd, 0 if not
 * known. */
int net_peer_pid(int fd);
/* A connected socket to @path: >= 0, or -errno. */
int net_unix_connect(const char *path, struct ferry_error *err);
/* The next connection on @lfd within @timeout_ms: >= 0, -ETIMEDOUT, or
 * -ECANCELED when @cancel_fd (may be -1) becomes readable. */
int net_accept_timeout(int lfd, int timeout_ms, int cancel_fd,
		       struct ferry_error *err);
/* The local port of a bound socket, 0 on error. */
uint16_t net_local_port(int fd);
/* Returns a connected socket (>= 0) or -errno; bounded by timeout_ms. */
int net_connect(const char *host, uint16_t port, int timeout_ms,
		struct ferry_error *err);
/* The peer's address as "host:port" text, for log lines. */
void net_peer_name(int fd, char *buf, size_t len);

/*
 * A connection: a TCP socket, with TLS once net_conn_start_tls() ran. The
 * functions below bound every exchange by a timeout.
 */
struct net_conn {
	int fd;
	SSL *ssl;	/* NULL for plaintext */
};

void net_conn_init(struct net_conn *c, int fd);
/* TLS handshake when @tls is non-NULL (a no-op otherwise). */
int net_conn_start_tls(struct net_conn *c, struct tls_ctx *tls,
		       const char *host, int timeout_ms, struct ferry_error *err);
/* Frees the TLS session and closes the socket; idempotent. */
void net_conn_close(struct net_conn *c);
/* Decrypted bytes already buffered (poll() would not show them). */
bool net_conn_pending(const struct net_conn *c);

/*
 * Read or write exactly @len bytes, or fail: -ETIMEDOUT when the whole
 * exchange takes longer than timeout_ms, -ECONNRESET when the peer closes.
 * @what names the exchange in the message ("hello", "control message").
 */
int net_read_full(struct net_conn *c, void *buf, size_t len, int timeout_ms,
		  const char *what, struct ferry_error *err);
int net_write_full(struct net_conn *c, const void *buf, size_t len,
		   int timeout_ms, const char *what, struct ferry_error *err);

/* One control message each way; payload may be NULL when len is 0. */
int net_ctrl_send(struct net_conn *c, uint16_t type, const void *payload,
		  uint32_t len, int timeout_ms, struct ferry_error *err);
/*
 * Receive one control message; @payload must hold WIRE_CTRL_PAYLOAD_MAX + 1
 * bytes and is NUL-terminated after the payload so text can be printed.
 */
int net_ctrl_recv(struct net_conn *c, struct wire_ctrl_hdr *hdr,
		  uint8_t *payload, int timeout_ms, struct ferry_error *err);

#endif /* FERRY_NET_H */
