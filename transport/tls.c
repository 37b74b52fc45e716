/* TLS contexts and handshakes (see tls.h). */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "wire.h"

/* TLS 1.3 suites, fastest first on CPUs with AES-NI. */
#define TLS_CIPHERSUITES \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
/* The PSK's suite: its hash must be SHA-256. */
static const unsigned char tls13_aes128gcm_sha256[] = { 0x13, 0x01 };

struct tls_psk {
	char identity[TLS_PSK_IDENTITY_MAX + 1];
	unsigned char key[TLS_PSK_MAX_BYTES];
	size_t key_len;
};

struct tls_ctx {
	SSL_CTX *ssl;
	bool server;
	bool psk_mode;
	struct tls_psk *psks;	/* server: all keys; client: the one to use */
	size_t npsks;
};

static int ctx_index = -1;
/* Per session (server): the PSK the client proved it holds. */
static int ssl_index = -1;
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

static void index_init(void)
{
	ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

const char *tls_last_error(const char *fallback)
{
	static __thread char buf[256];
	unsigned long e = ERR_peek_last_error();

	if (!e)
		return fallback;
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	/* "error:0A000086:SSL routines::certificate verify failed" -> tail */
	{
		char *p = strrchr(buf, ':');

		return p && p[1] ? p + 1 : buf;
	}
}

const char *tls_ctx_mode(const struct tls_ctx *c)
{
	if (!c)
		return "none";
	return c->psk_mode ? "psk" : "x509";
}

bool tls_host_is_loopback(const char *host)
{
	struct in6_addr a6;
	struct in_addr a4;

	if (!host || !strcmp(host, "localhost"))
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Parse QEMU's keys.psk: "identity:hexkey" lines; blank lines ignored. */
static int load_psk_file(struct tls_ctx *c, const char *path,
			 const char *want, struct ferry_error *err)
{
	char line[TLS_PSK_IDENTITY_MAX + 2 * TLS_PSK_MAX_BYTES + 8];
	FILE *f = fopen(path, "r");
	unsigned lineno = 0;
	int rc = 0;

	if (!f)
		return ferry_error_set(err, -errno, "cannot open PSK file %s: %s",
				       path, strerror(errno));
	c->psks = calloc(TLS_PSK_FILE_MAX_KEYS, sizeof(*c->psks));
	if (!c->psks) {
		fclose(f);
		return ferry_error_set(err, -ENOMEM, "out of memory");
	}
	while (fgets(line, sizeof(line), f)) {
		size_t n = strcspn(line, "\r\n");
		char *colon, *hex;
		struct tls_psk *p;
		size_t hexlen;

		lineno++;
		if (line[n] == '\0' && !feof(f)) {
			rc = ferry_error_set(err, -EINVAL,
				"PSK file %s line %u is too long", path, lineno);
			break;
		}
		line[n] = '\0';
		if (!n)
			continue;
		colon = strchr(line, ':');
		if (!colon || colon == line ||
		    (size_t)(colon - line) > TLS_PSK_IDENTITY_MAX) {
			rc = ferry_error_set(err, -EINVAL,
				"PSK file %s line %u: expected identity:hexkey "
				"(identity of 1 to %d bytes)", path, lineno,
				TLS_PSK_IDENTITY_MAX);
			break;
		}
		*colon = '\0';
		hex = colon + 1;
		hexlen = strlen(hex);
		if (hexlen % 2 || hexlen / 2 < TLS_PSK_MIN_BYTES ||
		    hexlen / 2 > TLS_PSK_MAX_BYTES) {
			rc = ferry_error_set(err, -EINVAL,
				"PSK file %s line %u: the key must be %d to %d "
				"bytes of hex", path, lineno, TLS_PSK_MIN_BYTES,
				TLS_PSK_MAX_BYTES);
			break;
		}
		if (want && strcmp(want, line))
			continue;
		if (c->npsks == TLS_PSK_FILE_MAX_KEYS) {
			rc = ferry_error_set(err, -EINVAL,
				"PSK file %s has more than %d keys", path,
				TLS_PSK_FILE_MAX_KEYS);
			break;
		}
		p = &c->psks[c->npsks];
		snprintf(p->identity, sizeof(p->identity), "%s", line);
		p->key_len = hexlen / 2;
		for (size_t i = 0; i < p->key_len; i++) {
			int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);

			if (hi < 0 || lo < 0) {
				rc = ferry_error_set(err, -EINVAL,
					"PSK file %s line %u: key is not hex",
					path, lineno);
				goto out;
			}
			p->key[i] = (unsigned char)(hi << 4 | lo);
		}
		c->npsks++;
		if (!c->server)
			break;	/* a client uses one key */
	}
out:
	fclose(f);
	if (!rc && !c->npsks)
		rc = ferry_error_set(err, -EINVAL, "PSK file %s has no key%s%s",
				     path, want ? " for identity " : "",
				     want ? want : "");
	return rc;
}

static SSL_SESSION *psk_session(SSL *s, const struct tls_psk *p)
{
	const SSL_CIPHER *cipher = SSL_CIPHER_find(s, tls13_aes128gcm_sha256);
	SSL_SESSION *sess;

	if (!cipher)
		return NULL;
	sess = SSL_SESSION_new();
	if (!sess)
		return NULL;
	if (!SSL_SESSION_set1_master_key(sess, p->key, p->key_len) ||
	    !SSL_SESSION_set_cipher(sess, cipher) ||
	    !SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION)) {
		SSL_SESSION_free(sess);
		return NULL;
	}
	return sess;
}

static struct tls_ctx *ctx_of(SSL *s)
{
	return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(s), ctx_index);
}

static int psk_use_cb(SSL *s, const EVP_MD *md, const unsigned char **id,
		      size_t *idlen, SSL_SESSION **sess)
{
	struct tls_ctx *c = ctx_of(s);
	SSL_SESSION *ss = psk_session(s, &c->psks[0]);

	*sess = NULL;
	*id = NULL;
	*idlen = 0;
	if (!ss)
		return 0;
	if (md && SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(ss)) != md) {
		SSL_SESSION_free(ss);
		return 1;	/* not usable in this handshake */
	}
	*sess = ss;
	*id = (const unsigned char *)c->psks[0].identity;
	*idlen = strlen(c->psks[0].identity);
	return 1;
}

static int psk_find_cb(SSL *s, const unsigned char *id, size_t idlen,
		       SSL_SESSION **sess)
{
	struct tls_ctx *c = ctx_of(s);

	*sess = NULL;
	for (size_t i = 0; i < c->npsks; i++) {
		if (strlen(c->psks[i].identity) == idlen &&
		    !memcmp(c->psks[i].identity, id, idlen)) {
			SSL_set_ex_data(s, ssl_index, &c->psks[i]);
			*sess = psk_session(s, &c->psks[i]);
			return *sess ? 1 : 0;
		}
	}
	return 1;	/* unknown identity: the handshake fails */
}

static int load_x509(struct tls_ctx *c, const char *dir,
		     struct ferry_error *err)
{
	const char *who = c->server ? "server" : "client";
	char cert[1024], key[1024], ca[1024];

	snprintf(ca, sizeof(ca), "%s/ca-cert.pem", dir);
	snprintf(cert, sizeof(cert), "%s/%s-cert.pem", dir, who);
	snprintf(key, sizeof(key), "%s/%s-key.pem", dir, who);
	if (SSL_CTX_load_verify_locations(c->ssl, ca, NULL) != 1)
		return ferry_error_set(err, -EINVAL, "TLS: cannot load CA %s: %s",
				       ca, tls_last_error("unreadable"));
	if (SSL_CTX_use_certificate_chain_file(c->ssl, cert) != 1)
		return ferry_error_set(err, -EINVAL,
			"TLS: cannot load certificate %s: %s", cert,
			tls_last_error("unreadable"));
	if (SSL_CTX_use_PrivateKey_file(c->ssl, key, SSL_FILETYPE_PEM) != 1)
		return ferry_error_set(err, -EINVAL, "TLS: cannot load key %s: %s",
				       key, tls_last_error("unreadable"));
	if (SSL_CTX_check_private_key(c->ssl) != 1)
		return ferry_error_set(err, -EINVAL,
			"TLS: key %s does not match certificate %s", key, cert);
	SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER |
			   (c->server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
	return 0;
}

int tls_ctx_new(struct tls_ctx **out, const struct ferry_tls_opts *o,
		bool server, struct ferry_error *err)
{
	struct tls_ctx *c;
	int rc;

	*out = NULL;
	if (!o || (!o->creds_dir && !o->psk_file))
		return 0;
	if (o->creds_dir && o->psk_file)
		return ferry_error_set(err, -EINVAL,
			"TLS: choose certificates or a pre-shared key, not both");
	pthread_once(&index_once, index_init);
	if (ctx_index < 0 || ssl_index < 0)
		return ferry_error_set(err, -ENOMEM, "TLS: no ex_data index");
	c = calloc(1, sizeof(*c));
	if (!c)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	c->server = server;
	c->psk_mode = o->psk_file != NULL;
	c->ssl = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!c->ssl) {
		free(c);
		return ferry_error_set(err, -ENOMEM, "TLS: %s",
				       tls_last_error("cannot create a context"));
	}
	SSL_CTX_set_ex_data(c->ssl, ctx_index, c);
	SSL_CTX_set_min_proto_version(c->ssl, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(c->ssl, TLS1_3_VERSION);
	SSL_CTX_set_ciphersuites(c->ssl, TLS_CIPHERSUITES);
	SSL_CTX_set_num_tickets(c->ssl, 0);	/* no post-handshake messages */
	SSL_CTX_set_session_cache_mode(c->ssl, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(c->ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (c->psk_mode) {
		rc = load_psk_file(c, o->psk_file, server ? NULL : o->psk_identity,
				   err);
		if (server)
			SSL_CTX_set_psk_find_session_callback(c->ssl, psk_find_cb);
		else
			SSL_CTX_set_psk_use_session_callback(c->ssl, psk_use_cb);
	} else {
		rc = load_x509(c, o->creds_dir, err);
	}
	if (rc) {
		tls_ctx_free(c);
		return rc;
	}
	*out = c;
	return 0;
}

void tls_ctx_free(struct tls_ctx *c)
{
	if (!c)
		return;
	SSL_CTX_free(c->ssl);
	if (c->psks)
		OPENSSL_cleanse(c->psks, TLS_PSK_FILE_MAX_KEYS * sizeof(*c->psks));
	free(c->psks);
	free(c);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, uint64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	uint64_t now = now_ms();
	int rc;

	if (now >= deadline)
		return -ETIMEDOUT;
	rc = poll(&p, 1, (int)(deadline - now));
	if (rc < 0)
		return errno == EINTR ? 0 : -errno;
	return rc == 0 ? -ETIMEDOUT : 0;
}

/* A ferry hello where a ClientHello should be: say so plainly. */
static bool peer_sent_plaintext_hello(int fd)
{
	uint8_t buf[8];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
	uint64_t magic = 0;

	if (n != (ssize_t)sizeof(buf))
		return false;
	for (int i = 0; i < 8; i++)
		magic = magic << 8 | buf[i];
	return magic == WIRE_MAGIC;
}

/* Why a handshake failed, in words an operator acts on. */
static void explain(struct tls_ctx *c, SSL *s, int fd, int ssl_err,
		    struct ferry_error *err)
{
	long v = SSL_get_verify_result(s);
	const char *why = tls_last_error(NULL);
	const char *side = c->server ? "client" : "server";

	if (v != X509_V_OK) {
		ferry_error_set(err, -EACCES,
			"TLS handshake failed: the %s certificate is not valid: %s",
			side, X509_verify_cert_error_string(v));
	} else if (why) {
		ferry_error_set(err, -EACCES, "TLS handshake failed: %s%s", why,
			c->psk_mode ? " (do both sides use the same PSK identity "
				      "and key?)" : "");
	} else if (ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_ZERO_RETURN) {
		ferry_error_set(err, -ECONNRESET,
			"TLS handshake failed: the %s closed the connection%s",
			side, c->server ? "" :
			" (does it have TLS on, and accept our credentials?)");
	} else {
		ferry_error_set(err, -EACCES, "TLS handshake failed (error %d)",
				ssl_err);
	}
}

static int handshake(struct tls_ctx *c, int fd, const char *host, int timeout_ms,
		  SSL **out, struct ferry_error *err)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	int flags = fcntl(fd, F_GETFL);
	SSL *s;
	int rc;

	*out = NULL;
	ERR_clear_error();
	s = SSL_new(c->ssl);
	if (!s)
		return ferry_error_set(err, -ENOMEM, "TLS: %s",
				       tls_last_error("cannot create a session"));
	if (!SSL_set_fd(s, fd)) {
		SSL_free(s);
		return ferry_error_set(err, -ENOMEM, "TLS: cannot attach socket");
	}
	if (c->server) {
		SSL_set_accept_state(s);
	} else {
		SSL_set_connect_state(s);
		if (!c->psk_mode && host) {
			struct in6_addr a;
			int ok;

			if (inet_pton(AF_INET, host, &a) == 1 ||
			    inet_pton(AF_INET6, host, &a) == 1)
				ok = X509_VERIFY_PARAM_set1_ip_asc(
					SSL_get0_param(s), host);
			else
				ok = SSL_set1_host(s, host) &&
				     SSL_set_tlsext_host_name(s, host);
			if (!ok) {
				SSL_free(s);
				return ferry_error_set(err, -EINVAL,
					"TLS: cannot check the server name %s", host);
			}
		}
	}
	fcntl(fd, F_SETFL, flags | O_NONBLOCK);
	if (c->server && wait_fd(fd, POLLIN, deadline) == 0 &&
	    peer_sent_plaintext_hello(fd)) {
		fcntl(fd, F_SETFL, flags);
		SSL_free(s);
		return ferry_error_set(err, -EPROTO,
			"TLS handshake failed: the client speaks plaintext ferry "
			"on a TLS port (start it with the same TLS options)");
	}
	for (;;) {
		int r = SSL_do_handshake(s);
		int e;

		if (r == 1) {
			rc = 0;
			break;
		}
		e = SSL_get_error(s, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			rc = wait_fd(fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
				     deadline);
			if (rc == -ETIMEDOUT) {
				ferry_error_set(err, rc,
					"TLS handshake timed out after %d ms: "
					"the peer is silent", timeout_ms);
				break;
			}
			if (rc) {
				ferry_error_set(err, rc, "TLS handshake: poll: %s",
						strerror(-rc));
				break;
			}
			continue;
		}
		explain(c, s, fd, e, err);
		rc = err ? err->code : -EACCES;
		if (!rc)
			rc = -EACCES;
		break;
	}
	fcntl(fd, F_SETFL, flags);
	if (rc) {
		SSL_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

int tls_peer_identity(SSL *s, char *buf, size_t len)
{
	/* TLS 1.3 external PSKs are found by psk_find_cb, which records
	 * the match (SSL_get_psk_identity() knows only TLS 1.2's). */
	const struct tls_psk *psk = ssl_index < 0 ? NULL :
				    SSL_get_ex_data(s, ssl_index);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	X509 *cert;
	size_t o;

	if (psk) {
		snprintf(buf, len, "psk:%s", psk->identity);
		return 0;
	}
	cert = SSL_get1_peer_certificate(s);
	if (!cert)
		return -EACCES;
	if (X509_digest(cert, EVP_sha256(), md, &mdlen) != 1) {
		X509_free(cert);
		return -EACCES;
	}
	X509_free(cert);
	o = (size_t)snprintf(buf, len, "x509:");
	for (unsigned int i = 0; i < mdlen && o + 3 <= len; i++, o += 2)
		snprintf(buf + o, len - o, "%02x", md[i]);
	return 0;
}

void tls_sigpipe_block(struct tls_sigpipe *g)
{
	sigset_t pipe_set, pending;

	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &g->old);
	sigpending(&pending);
	g->was_pending = sigismember(&pending, SIGPIPE);
}

void tls_sigpipe_restore(struct tls_sigpipe *g)
{
	struct timespec zero = { 0 };
	sigset_t pipe_set, pending;

	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigpending(&pending);
	if (!g->was_pending && sigismember(&pending, SIGPIPE))
		sigtimedwait(&pipe_set, NULL, &zero);
	pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* The handshake writes too: a ClientHello, an alert after the peer left. */
int tls_handshake(struct tls_ctx *c, int fd, const char *host, int timeout_ms,
		  SSL **out, struct ferry_error *err)
{
	struct tls_sigpipe g;
	int rc;

	tls_sigpipe_block(&g);
	rc = handshake(c, fd, host, timeout_ms, out, err);
	tls_sigpipe_restore(&g);
	return rc;
}
