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

/* Listen backlog: a receiver serves one migration at a time. */
#define NET_LISTEN_BACKLOG 16
/* Default bound on connecting to a receiver. */
#define NET_CONNECT_TIMEOUT_MS 5000

/* Returns a listening socket (>= 0) or -errno. */
int net_listen(const char *host, uint16_t port, struct ferry_error *err);
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
