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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "wire.h"

/* TLS 1.3 suites, fastest first on CPUs with AES-NI. */
#define TLS_CIPHERSUITES \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
/* The PSK's suite: its hash must be SHA-256. */
static const unsigned char tls13_aes128gcm_sha256[] = { 0x13, 0x01 };
/* Paths of credential files, as in the messages that name them. */
#define TLS_PATH_MAX 1024

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
	/* What the operator gave, for messages: the PSK file, or the CA
	 * and our own certificate. */
	char psk_file[TLS_PATH_MAX];
	char ca_file[TLS_PATH_MAX];
	char cert_file[TLS_PATH_MAX];
};

/* Room for a certificate's subject or issuer, or a date, in a message. */
#define TLS_NAME_TEXT_MAX 128

/*
 * What one handshake's callbacks saw, for explain(): OpenSSL's error
 * queue says that a handshake failed, not which identity the client
 * offered or which certificate did not verify. It lives on handshake()'s
 * stack and is reachable from the SSL only while handshake() runs.
 */
struct hs_note {
	bool psk_offered;	/* server: the client offered a PSK identity */
	bool psk_known;		/* ... and it is one of ours */
	char identity[TLS_PSK_IDENTITY_MAX + 4];	/* printable, maybe cut */
	bool cert_failed;	/* verify_cb saw a certificate fail */
	int cert_depth;		/* 0: the peer's own certificate */
	char cert_subject[TLS_NAME_TEXT_MAX];
	char cert_issuer[TLS_NAME_TEXT_MAX];
	char cert_not_before[TLS_NAME_TEXT_MAX];
	char cert_not_after[TLS_NAME_TEXT_MAX];
};

static int ctx_index = -1;
/* Per session (server): the PSK the client proved it holds. */
static int ssl_index = -1;
/* Per session, during the handshake only: its struct hs_note. */
static int note_index = -1;
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

static void index_init(void)
{
	ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	note_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* The TLS alert a peer sent, when @e is OpenSSL's error for one; or -1. */
static int received_alert(unsigned long e)
{
	int r = ERR_GET_REASON(e);

	if (!e || ERR_SYSTEM_ERROR(e) || ERR_GET_LIB(e) != ERR_LIB_SSL ||
	    r < SSL_AD_REASON_OFFSET || r > SSL_AD_REASON_OFFSET + 255)
		return -1;
	return r - SSL_AD_REASON_OFFSET;
}

/* Alerts that say the peer refused the certificate we showed it. */
static bool alert_refuses_cert(int alert)
{
	switch (alert) {
	case SSL_AD_BAD_CERTIFICATE:
	case SSL_AD_UNSUPPORTED_CERTIFICATE:
	case SSL_AD_CERTIFICATE_REVOKED:
	case SSL_AD_CERTIFICATE_EXPIRED:
	case SSL_AD_CERTIFICATE_UNKNOWN:
	case SSL_AD_UNKNOWN_CA:
	case TLS13_AD_CERTIFICATE_REQUIRED:
		return true;
	default:
		return false;
	}
}

/*
 * Empty this thread's OpenSSL error queue and return the entry that says
 * why, with its reason in @buf (OpenSSL's reason string, never the
 * library's name): the first entry is the cause and later ones the layers
 * that passed it on ("No such file or directory", then "no such file",
 * then "system lib"), so the first that is not one of OpenSSL's generic
 * "<library> lib" reasons wins. 0 when the queue was empty.
 */
static unsigned long drain_errors(char *buf, size_t len)
{
	unsigned long e, pick = 0;

	snprintf(buf, len, "OpenSSL gave no reason");
	while ((e = ERR_get_error()) != 0) {
		if (!pick || (ERR_COMMON_ERROR(pick) && !ERR_COMMON_ERROR(e)))
			pick = e;
	}
	if (pick) {
		const char *r = ERR_reason_error_string(pick);

		if (r)
			snprintf(buf, len, "%s", r);
		else
			snprintf(buf, len, "OpenSSL error 0x%lx", pick);
	}
	return pick;
}

const char *tls_last_error(const char *fallback)
{
	static __thread char buf[256];
	char why[200];
	unsigned long e = drain_errors(why, sizeof(why));
	int alert = received_alert(e);

	if (!e)
		return fallback;
	if (alert >= 0)
		snprintf(buf, sizeof(buf), "the peer %s: %s",
			 alert_refuses_cert(alert) ?
			 "refused our certificate" : "sent an alert",
			 SSL_alert_desc_string_long(alert));
	else
		snprintf(buf, sizeof(buf), "%s", why);
	return buf;
}

/* errno in the words an operator looks for. */
static const char *errno_words(int e)
{
	switch (e) {
	case ENOENT:
		return "file not found";
	case EACCES:
		return "permission denied";
	case EISDIR:
		return "it is a directory, not a file";
	default:
		return strerror(e);
	}
}

/*
 * Open @path for reading as OpenSSL would, so that a file that is missing,
 * unreadable or a directory is reported with errno's reason (OpenSSL's
 * queue would end in "system lib"). Returns the descriptor or -errno.
 */
static int open_credential(const char *what, const char *path,
			   struct ferry_error *err)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int rc;

	if (fd < 0) {
		rc = -errno;
		goto err;
	}
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		goto err_close;
	}
	if (S_ISDIR(st.st_mode)) {
		rc = -EISDIR;
		goto err_close;
	}
	return fd;
err_close:
	close(fd);
err:
	return ferry_error_set(err, rc, "TLS: cannot load %s %s: %s", what,
			       path, errno_words(-rc));
}

/* A credential file OpenSSL will read by name: checked by us first. */
static int check_credential(const char *what, const char *path,
			    struct ferry_error *err)
{
	int fd = open_credential(what, path, err);

	if (fd < 0)
		return fd;
	close(fd);
	return 0;
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
	int fd = open_credential("PSK file", path, err);
	unsigned lineno = 0;
	FILE *f;
	int rc = 0;

	if (fd < 0)
		return fd;
	f = fdopen(fd, "r");
	if (!f) {
		rc = -errno;
		close(fd);
		return ferry_error_set(err, rc, "TLS: cannot load PSK file %s: %s",
				       path, errno_words(-rc));
	}
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

static struct hs_note *note_of(SSL *s)
{
	return s && note_index >= 0 ? SSL_get_ex_data(s, note_index) : NULL;
}

/* A peer's PSK identity, printable whatever bytes it sent. */
static void note_identity(struct hs_note *n, const unsigned char *id,
			  size_t idlen)
{
	size_t k = idlen < TLS_PSK_IDENTITY_MAX ? idlen : TLS_PSK_IDENTITY_MAX;

	for (size_t i = 0; i < k; i++)
		n->identity[i] = isprint(id[i]) ? (char)id[i] : '?';
	snprintf(n->identity + k, sizeof(n->identity) - k, "%s",
		 idlen > k ? "..." : "");
}

/*
 * The server's half of TLS 1.3 external PSKs, set in both modes so that
 * the note says which identity a client offered: a certificate server
 * finds none (the client is told by the failure), a PSK server looks it
 * up. An unknown identity leaves *sess NULL and the handshake fails.
 */
static int psk_find_cb(SSL *s, const unsigned char *id, size_t idlen,
		       SSL_SESSION **sess)
{
	struct tls_ctx *c = ctx_of(s);
	struct hs_note *n = note_of(s);

	*sess = NULL;
	if (n && !n->psk_known) {
		n->psk_offered = true;
		note_identity(n, id, idlen);
	}
	if (!c->psk_mode)
		return 1;
	for (size_t i = 0; i < c->npsks; i++) {
		if (strlen(c->psks[i].identity) == idlen &&
		    !memcmp(c->psks[i].identity, id, idlen)) {
			if (n)
				n->psk_known = true;
			SSL_set_ex_data(s, ssl_index, &c->psks[i]);
			*sess = psk_session(s, &c->psks[i]);
			return *sess ? 1 : 0;
		}
	}
	return 1;	/* unknown identity: the handshake fails */
}

static void name_text(const X509_NAME *name, char *buf, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n;

	buf[0] = '\0';
	if (!b)
		return;
	if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0 &&
	    (n = BIO_read(b, buf, (int)len - 1)) > 0)
		buf[n] = '\0';
	BIO_free(b);
}

static void time_text(const ASN1_TIME *t, char *buf, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n;

	buf[0] = '\0';
	if (!b)
		return;
	if (ASN1_TIME_print(b, t) == 1 &&
	    (n = BIO_read(b, buf, (int)len - 1)) > 0)
		buf[n] = '\0';
	BIO_free(b);
}

/*
 * Record the first certificate that fails verification (OpenSSL keeps
 * only the error code): its names and dates go into the message. The
 * verdict is OpenSSL's own, @ok returned unchanged.
 */
static int verify_cb(int ok, X509_STORE_CTX *x)
{
	SSL *s = X509_STORE_CTX_get_ex_data(x,
				SSL_get_ex_data_X509_STORE_CTX_idx());
	struct hs_note *n = note_of(s);
	X509 *cert = X509_STORE_CTX_get_current_cert(x);

	if (ok || !n || n->cert_failed || !cert)
		return ok;
	n->cert_failed = true;
	n->cert_depth = X509_STORE_CTX_get_error_depth(x);
	name_text(X509_get_subject_name(cert), n->cert_subject,
		  sizeof(n->cert_subject));
	name_text(X509_get_issuer_name(cert), n->cert_issuer,
		  sizeof(n->cert_issuer));
	time_text(X509_get0_notBefore(cert), n->cert_not_before,
		  sizeof(n->cert_not_before));
	time_text(X509_get0_notAfter(cert), n->cert_not_after,
		  sizeof(n->cert_not_after));
	return ok;
}

/*
 * Each file is opened by us first (errno's reason: missing, unreadable, a
 * directory), then by OpenSSL (its reason: not PEM, not a certificate, a
 * key that does not fit).
 */
static int load_x509(struct tls_ctx *c, const char *dir,
		     struct ferry_error *err)
{
	const char *who = c->server ? "server" : "client";
	char key[TLS_PATH_MAX], why[200];
	int rc;

	if ((size_t)snprintf(c->ca_file, sizeof(c->ca_file), "%s/ca-cert.pem",
			     dir) >= sizeof(c->ca_file) ||
	    (size_t)snprintf(c->cert_file, sizeof(c->cert_file),
			     "%s/%s-cert.pem", dir, who) >= sizeof(c->cert_file) ||
	    (size_t)snprintf(key, sizeof(key), "%s/%s-key.pem", dir,
			     who) >= sizeof(key))
		return ferry_error_set(err, -ENAMETOOLONG,
			"TLS: the credentials directory's name is too long: %s",
			dir);
	rc = check_credential("CA certificate", c->ca_file, err);
	if (rc)
		return rc;
	if (SSL_CTX_load_verify_locations(c->ssl, c->ca_file, NULL) != 1) {
		drain_errors(why, sizeof(why));
		return ferry_error_set(err, -EINVAL,
			"TLS: cannot load CA certificate %s: %s", c->ca_file, why);
	}
	rc = check_credential("certificate", c->cert_file, err);
	if (rc)
		return rc;
	if (SSL_CTX_use_certificate_chain_file(c->ssl, c->cert_file) != 1) {
		drain_errors(why, sizeof(why));
		return ferry_error_set(err, -EINVAL,
			"TLS: cannot load certificate %s: %s", c->cert_file, why);
	}
	rc = check_credential("private key", key, err);
	if (rc)
		return rc;
	if (SSL_CTX_use_PrivateKey_file(c->ssl, key, SSL_FILETYPE_PEM) != 1) {
		unsigned long e = drain_errors(why, sizeof(why));

		/* OpenSSL checks the key against the certificate as it
		 * loads it. */
		if (ERR_GET_LIB(e) == ERR_LIB_X509 &&
		    (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
		     ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH))
			return ferry_error_set(err, -EINVAL,
				"TLS: private key %s does not match certificate "
				"%s: %s", key, c->cert_file, why);
		return ferry_error_set(err, -EINVAL,
			"TLS: cannot load private key %s: %s", key, why);
	}
	if (SSL_CTX_check_private_key(c->ssl) != 1) {
		drain_errors(why, sizeof(why));
		return ferry_error_set(err, -EINVAL,
			"TLS: private key %s does not match certificate %s: %s",
			key, c->cert_file, why);
	}
	SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER |
			   (c->server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
			   verify_cb);
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
	if (ctx_index < 0 || ssl_index < 0 || note_index < 0)
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
	ERR_clear_error();	/* what the loads leave is theirs alone */
	if (server)
		SSL_CTX_set_psk_find_session_callback(c->ssl, psk_find_cb);
	if (c->psk_mode) {
		snprintf(c->psk_file, sizeof(c->psk_file), "%s", o->psk_file);
		rc = load_psk_file(c, o->psk_file, server ? NULL : o->psk_identity,
				   err);
		if (!server) {
			SSL_CTX_set_psk_use_session_callback(c->ssl, psk_use_cb);
			/* With an empty trust store: a server that does not
			 * take our key and shows a certificate instead fails
			 * verification, rather than going unauthenticated. */
			SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER, verify_cb);
		}
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

/* Why verification failed, in the operator's terms, after OpenSSL's words. */
static const char *verify_hint(const struct tls_ctx *c, const struct hs_note *n,
			       long v, const char *host, char *buf, size_t len)
{
	switch (v) {
	case X509_V_ERR_CERT_HAS_EXPIRED:
		snprintf(buf, len, " (valid until %s)", n->cert_not_after);
		break;
	case X509_V_ERR_CERT_NOT_YET_VALID:
		snprintf(buf, len, " (valid from %s: are both clocks right?)",
			 n->cert_not_before);
		break;
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_CERT_SIGNATURE_FAILURE:
		snprintf(buf, len, " (issued by %s, not by the CA in %s)",
			 n->cert_issuer, c->ca_file);
		break;
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		snprintf(buf, len, " (it does not name %s)", host ? host : "?");
		break;
	default:
		buf[0] = '\0';
	}
	return buf;
}

/* The peer's certificate did not verify (SSL_get_verify_result() @v). */
static int explain_cert(struct tls_ctx *c, const struct hs_note *n, long v,
			const char *host, struct ferry_error *err)
{
	const char *side = c->server ? "client" : "server";
	char hint[TLS_PATH_MAX + TLS_NAME_TEXT_MAX];

	if (c->psk_mode)	/* a client's: see tls_ctx_new() */
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: the server did not take our "
			"pre-shared key (identity '%s' from %s) and showed a "
			"certificate instead (does it use certificates?)",
			c->psks[0].identity, c->psk_file);
	if (!n->cert_failed)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: the %s's certificate is not "
			"valid: %s", side, X509_verify_cert_error_string(v));
	return ferry_error_set(err, -EACCES,
		"TLS handshake failed: %s %s's %s (%s) is not valid: %s%s",
		n->cert_depth ? "a CA certificate in the" : "the", side,
		n->cert_depth ? "chain" : "certificate", n->cert_subject,
		X509_verify_cert_error_string(v),
		verify_hint(c, n, v, host, hint, sizeof(hint)));
}

/*
 * A PSK handshake that failed. The server knows which identity the client
 * offered and whether it is in its file; the client knows only the alert
 * the server sent (OpenSSL's server sends handshake_failure when it has no
 * key for the identity, illegal_parameter or decrypt_error when the key
 * differs).
 */
static int explain_psk(struct tls_ctx *c, const struct hs_note *n,
		       unsigned long e, const char *why, struct ferry_error *err)
{
	int alert = received_alert(e);

	if (c->server && !n->psk_offered)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: the client offered no pre-shared "
			"key (does it use certificates?)");
	if (c->server && !n->psk_known)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: PSK mismatch: the client's PSK "
			"identity '%s' is not in %s", n->identity, c->psk_file);
	if (c->server && ERR_GET_LIB(e) == ERR_LIB_SSL &&
	    ERR_GET_REASON(e) == SSL_R_BINDER_DOES_NOT_VERIFY)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: PSK mismatch: the client's key for "
			"PSK identity '%s' differs from the one in %s",
			n->identity, c->psk_file);
	if (c->server)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed with PSK identity '%s': %s",
			n->identity, why);
	if (alert == SSL_AD_ILLEGAL_PARAMETER || alert == SSL_AD_DECRYPT_ERROR)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: PSK mismatch: the server's key for "
			"PSK identity '%s' differs from the one in %s",
			c->psks[0].identity, c->psk_file);
	if (alert == SSL_AD_HANDSHAKE_FAILURE)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: PSK mismatch: the server does not "
			"know PSK identity '%s' (from %s)", c->psks[0].identity,
			c->psk_file);
	return ferry_error_set(err, -EACCES,
		"TLS handshake failed: the server refused PSK identity '%s' "
		"(from %s): %s (is it in the server's file, with the same key?)",
		c->psks[0].identity, c->psk_file, why);
}

/* A certificate handshake that OpenSSL's queue explains (@e, @why). */
static int explain_x509(struct tls_ctx *c, const struct hs_note *n,
			unsigned long e, const char *why,
			struct ferry_error *err)
{
	const char *side = c->server ? "client" : "server";
	int alert = received_alert(e);

	if (c->server && n->psk_offered)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: the client offered a pre-shared "
			"key (identity '%s'), but this side uses certificates",
			n->identity);
	if (c->server && ERR_GET_LIB(e) == ERR_LIB_SSL &&
	    ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: the client sent no certificate");
	if (alert >= 0 && alert_refuses_cert(alert))
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: the %s refused our certificate "
			"%s: %s", side, c->cert_file,
			SSL_alert_desc_string_long(alert));
	/* What a PSK server sends a client that offers no key. */
	if (!c->server && alert == SSL_AD_HANDSHAKE_FAILURE)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: the server refused the handshake: "
			"%s (does it use a pre-shared key?)",
			SSL_alert_desc_string_long(alert));
	if (alert >= 0)
		return ferry_error_set(err, -EACCES,
			"TLS handshake failed: the %s refused the handshake: %s",
			side, SSL_alert_desc_string_long(alert));
	return ferry_error_set(err, -EACCES, "TLS handshake failed: %s", why);
}

/* Why a handshake failed, in words an operator acts on. */
static int explain(struct tls_ctx *c, SSL *s, const struct hs_note *n,
		   const char *host, int ssl_err, struct ferry_error *err)
{
	long v = SSL_get_verify_result(s);
	char why[200];
	unsigned long e = drain_errors(why, sizeof(why));

	if (v != X509_V_OK)
		return explain_cert(c, n, v, host, err);
	if (e && c->psk_mode)
		return explain_psk(c, n, e, why, err);
	if (e)
		return explain_x509(c, n, e, why, err);
	if (ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_ZERO_RETURN)
		return ferry_error_set(err, -ECONNRESET,
			"TLS handshake failed: the %s closed the connection%s",
			c->server ? "client" : "server", c->server ? "" :
			" (does it have TLS on, and accept our credentials?)");
	return ferry_error_set(err, -EACCES, "TLS handshake failed (error %d)",
			       ssl_err);
}

static int handshake(struct tls_ctx *c, int fd, const char *host, int timeout_ms,
		  SSL **out, struct ferry_error *err)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	int flags = fcntl(fd, F_GETFL);
	struct hs_note note = { 0 };
	SSL *s;
	int rc;

	*out = NULL;
	ERR_clear_error();
	s = SSL_new(c->ssl);
	if (!s)
		return ferry_error_set(err, -ENOMEM, "TLS: %s",
				       tls_last_error("cannot create a session"));
	if (!SSL_set_fd(s, fd) || !SSL_set_ex_data(s, note_index, &note)) {
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
		rc = explain(c, s, &note, host, e, err);
		break;
	}
	/* Belt and braces for tls_ctx_new()'s empty trust store: a PSK
	 * client whose key was not used has not authenticated the server. */
	if (!rc && c->psk_mode && !c->server && !SSL_session_reused(s))
		rc = ferry_error_set(err, -EACCES,
			"TLS handshake failed: the server did not take our "
			"pre-shared key (identity '%s' from %s)",
			c->psks[0].identity, c->psk_file);
	SSL_set_ex_data(s, note_index, NULL);	/* @note's scope ends */
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
