/*
 * TLS 1.3 for ferry's connections, with OpenSSL 3: x509 certificates in
 * QEMU's and libvirt's directory layout, or a pre-shared key from a file in
 * QEMU's keys.psk format ("identity:hexkey" per line). Both peers are
 * authenticated in either mode. The source is the TLS client, the receiver
 * the server.
 */
#ifndef FERRY_TLS_H
#define FERRY_TLS_H

#include <signal.h>
#include <stdbool.h>

#include <openssl/ssl.h>

#include "ferry.h"

/* Pre-shared keys: 128 to 512 bits, identities up to 128 bytes. */
#define TLS_PSK_MIN_BYTES 16
#define TLS_PSK_MAX_BYTES 64
#define TLS_PSK_IDENTITY_MAX 128
#define TLS_PSK_FILE_MAX_KEYS 64
/* Bound on a handshake (also what a silent peer costs a receiver). */
#define TLS_HANDSHAKE_TIMEOUT_MS 10000

struct tls_ctx;

/* NULL in *out (and 0) when @o asks for no TLS. */
int tls_ctx_new(struct tls_ctx **out, const struct ferry_tls_opts *o,
		bool server, struct ferry_error *err);
void tls_ctx_free(struct tls_ctx *c);

/* "x509" or "psk" ("none" for NULL). */
const char *tls_ctx_mode(const struct tls_ctx *c);

/*
 * Run the handshake on connected socket @fd within timeout_ms. A client
 * checks the server certificate against @host (an IP address or a DNS
 * name; x509 mode). On success *out is the SSL object, for @fd. On failure
 * the message says why in the operator's terms (no certificate, expired,
 * signed by an unknown CA, wrong key, a plaintext peer...).
 */
int tls_handshake(struct tls_ctx *c, int fd, const char *host, int timeout_ms,
		  SSL **out, struct ferry_error *err);

/*
 * Why the last OpenSSL call on this thread failed, or @fallback when it
 * left no error: OpenSSL's reason for the first error it queued (the
 * cause, not the library name of a layer that passed it on), or, for an
 * alert the peer sent, what the peer refused. Empties the thread's queue.
 */
const char *tls_last_error(const char *fallback);

/*
 * OpenSSL's socket BIO writes with write(2), which raises SIGPIPE when
 * the peer has closed (as does any write to a pipe or socket without
 * MSG_NOSIGNAL). A library must not kill its host program for a closed
 * connection, nor change its signal handlers: around such calls SIGPIPE
 * is blocked on the calling thread, and one they raised is consumed (as
 * libpq does).
 */
struct tls_sigpipe {
	sigset_t old;
	bool was_pending;
};

void tls_sigpipe_block(struct tls_sigpipe *g);
void tls_sigpipe_restore(struct tls_sigpipe *g);

/*
 * Who the peer of an established session is, as text: "psk:IDENTITY", or
 * "x509:" and the SHA-256 of its certificate. -EACCES when it has none.
 */
int tls_peer_identity(SSL *s, char *buf, size_t len);

/* Whether @host is a loopback address or name ("localhost", 127/8, ::1). */
bool tls_host_is_loopback(const char *host);

#endif /* FERRY_TLS_H */
