/*
 * Test PKI with OpenSSL 3: EC P-256 keys, a CA, a server certificate whose
 * subjectAltName covers the loopback addresses (and any the caller adds), a
 * client certificate, and the bad variants tests need.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "pki.h"

#define PKI_DAY_S (24L * 3600)
#define PKI_VALID_DAYS 30
#define PKI_SAN_MAX 1024

static int fail(struct ferry_error *err, const char *what)
{
	unsigned long e = ERR_get_error();

	ferry_error_set(err, -EIO, "pki: %s: %s", what,
			e ? ERR_reason_error_string(e) : "failed");
	ERR_clear_error();
	return -EIO;
}

static EVP_PKEY *new_key(void)
{
	return EVP_EC_gen("P-256");
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (!ext)
		return -1;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : -1;
}

/*
 * A certificate for @key named @cn, signed by @ca_key (self-signed when
 * @ca is NULL). @not_before_s / @not_after_s are offsets from now.
 */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *ca,
		       EVP_PKEY *ca_key, bool is_ca, const char *san,
		       long not_before_s, long not_after_s)
{
	X509 *c = X509_new();
	X509_NAME *name;
	unsigned char serial[8];
	BIGNUM *bn = NULL;
	int bad = 0;

	if (!c)
		return NULL;
	X509_set_version(c, 2);
	RAND_bytes(serial, sizeof(serial));
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	bad |= !bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(c));
	BN_free(bn);
	bad |= !X509_gmtime_adj(X509_getm_notBefore(c), not_before_s);
	bad |= !X509_gmtime_adj(X509_getm_notAfter(c), not_after_s);
	bad |= !X509_set_pubkey(c, key);
	name = X509_get_subject_name(c);
	bad |= !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
					   (const unsigned char *)"ferry tests",
					   -1, -1, 0);
	bad |= !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
					   (const unsigned char *)cn, -1, -1, 0);
	bad |= !X509_set_issuer_name(c, ca ? X509_get_subject_name(ca) : name);
	if (is_ca) {
		bad |= add_ext(c, ca ? ca : c, NID_basic_constraints,
			       "critical,CA:TRUE") != 0;
		bad |= add_ext(c, ca ? ca : c, NID_key_usage,
			       "critical,keyCertSign,cRLSign") != 0;
	} else {
		bad |= add_ext(c, ca, NID_basic_constraints, "CA:FALSE") != 0;
		bad |= add_ext(c, ca, NID_key_usage,
			       "critical,digitalSignature,keyAgreement") != 0;
		bad |= add_ext(c, ca, NID_ext_key_usage,
			       "serverAuth,clientAuth") != 0;
	}
	if (san)
		bad |= add_ext(c, ca ? ca : c, NID_subject_alt_name, san) != 0;
	bad |= !X509_sign(c, ca_key, EVP_sha256());
	if (bad) {
		X509_free(c);
		return NULL;
	}
	return c;
}

static int write_pem(const char *dir, const char *file, X509 *cert,
		     EVP_PKEY *key, struct ferry_error *err)
{
	char path[512];
	FILE *f;
	int ok;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	f = fopen(path, "w");
	if (!f) {
		ferry_error_set(err, -errno, "pki: cannot write %s: %s", path,
				strerror(errno));
		return -errno;
	}
	if (key)
		fchmod(fileno(f), 0600);
	ok = cert ? PEM_write_X509(f, cert) :
		    PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
	if (fclose(f) != 0 || !ok)
		return fail(err, path);
	return 0;
}

/* A key pair and certificate written as PREFIX-cert.pem / PREFIX-key.pem. */
static int leaf(const char *dir, const char *prefix, const char *cn,
		const char *san, X509 *ca, EVP_PKEY *ca_key, long nb, long na,
		struct ferry_error *err)
{
	char file[64];
	EVP_PKEY *key = new_key();
	X509 *cert = NULL;
	int rc = -EIO;

	if (!key)
		return fail(err, "key generation");
	cert = make_cert(key, cn, ca, ca_key, false, san, nb, na);
	if (!cert) {
		rc = fail(err, "certificate");
		goto out;
	}
	snprintf(file, sizeof(file), "%s-cert.pem", prefix);
	rc = write_pem(dir, file, cert, NULL, err);
	if (rc == 0) {
		snprintf(file, sizeof(file), "%s-key.pem", prefix);
		rc = write_pem(dir, file, NULL, key, err);
	}
out:
	X509_free(cert);
	EVP_PKEY_free(key);
	return rc;
}

int pki_generate(const char *dir, const struct pki_opts *o,
		 struct ferry_error *err)
{
	static const struct pki_opts none;
	char san[PKI_SAN_MAX];
	EVP_PKEY *ca_key = NULL;
	X509 *ca = NULL;
	long valid = PKI_VALID_DAYS * PKI_DAY_S;
	int rc = -EIO;

	if (!o)
		o = &none;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		ferry_error_set(err, -errno, "pki: mkdir %s: %s", dir,
				strerror(errno));
		return -errno;
	}
	snprintf(san, sizeof(san), "DNS:localhost,IP:127.0.0.1,IP:::1");
	for (const char *const *ip = o->server_ips; ip && *ip; ip++) {
		size_t n = strlen(san);

		if (n + strlen(*ip) + 5 >= sizeof(san)) {
			ferry_error_set(err, -EINVAL, "pki: too many server IPs");
			return -EINVAL;
		}
		snprintf(san + n, sizeof(san) - n, ",IP:%s", *ip);
	}

	ca_key = new_key();
	if (!ca_key || !(ca = make_cert(ca_key, "ferry test CA", NULL, ca_key,
					true, NULL, -PKI_DAY_S, valid))) {
		rc = fail(err, "CA");
		goto out;
	}
	rc = write_pem(dir, "ca-cert.pem", ca, NULL, err);
	if (!rc)
		rc = write_pem(dir, "ca-key.pem", NULL, ca_key, err);
	if (!rc)
		rc = leaf(dir, "server", "localhost", san, ca, ca_key, -PKI_DAY_S,
			  valid, err);
	if (!rc)
		rc = leaf(dir, "client", "ferry-client", NULL, ca, ca_key,
			  -PKI_DAY_S, valid, err);
out:
	X509_free(ca);
	EVP_PKEY_free(ca_key);
	return rc;
}

static void *read_pem(const char *dir, const char *file, bool key)
{
	char path[512];
	FILE *f;
	void *v;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	f = fopen(path, "r");
	if (!f)
		return NULL;
	v = key ? (void *)PEM_read_PrivateKey(f, NULL, NULL, NULL) :
		  (void *)PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	return v;
}

/*
 * @out_dir with @good_dir's CA certificate and a bad PREFIX-cert.pem /
 * PREFIX-key.pem for @cn (and @san): expired, or signed by a rogue CA.
 */
static int bad_leaf(const char *good_dir, const char *out_dir,
		    const char *prefix, const char *cn, const char *san,
		    enum pki_bad bad, struct ferry_error *err)
{
	X509 *ca = read_pem(good_dir, "ca-cert.pem", false);
	EVP_PKEY *ca_key = read_pem(good_dir, "ca-key.pem", true);
	EVP_PKEY *rogue_key = NULL;
	X509 *rogue = NULL;
	long valid = PKI_VALID_DAYS * PKI_DAY_S;
	int rc;

	if (!ca || !ca_key) {
		rc = fail(err, "reading the good CA");
		goto out;
	}
	if (mkdir(out_dir, 0700) != 0 && errno != EEXIST) {
		rc = ferry_error_set(err, -errno, "pki: mkdir %s: %s", out_dir,
				     strerror(errno));
		goto out;
	}
	rc = write_pem(out_dir, "ca-cert.pem", ca, NULL, err);
	if (rc)
		goto out;
	if (bad == PKI_CLIENT_EXPIRED) {
		rc = leaf(out_dir, prefix, cn, san, ca, ca_key,
			  -10 * PKI_DAY_S, -PKI_DAY_S, err);
	} else {
		rogue_key = new_key();
		if (!rogue_key ||
		    !(rogue = make_cert(rogue_key, "ferry rogue CA", NULL,
					rogue_key, true, NULL, -PKI_DAY_S, valid))) {
			rc = fail(err, "rogue CA");
			goto out;
		}
		rc = leaf(out_dir, prefix, cn, san, rogue, rogue_key,
			  -PKI_DAY_S, valid, err);
	}
out:
	X509_free(ca);
	X509_free(rogue);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(rogue_key);
	return rc;
}

int pki_bad_client(const char *good_dir, const char *out_dir, enum pki_bad bad,
		   struct ferry_error *err)
{
	return bad_leaf(good_dir, out_dir, "client", "ferry-client", NULL, bad,
			err);
}

int pki_bad_server(const char *good_dir, const char *out_dir, enum pki_bad bad,
		   struct ferry_error *err)
{
	return bad_leaf(good_dir, out_dir, "server", "localhost",
			"DNS:localhost,IP:127.0.0.1,IP:::1", bad, err);
}

int pki_write_psk(const char *path, const char *identity,
		  struct ferry_error *err)
{
	unsigned char key[32];
	FILE *f;

	if (RAND_bytes(key, sizeof(key)) != 1)
		return fail(err, "random key");
	f = fopen(path, "w");
	if (!f) {
		ferry_error_set(err, -errno, "pki: cannot write %s: %s", path,
				strerror(errno));
		return -errno;
	}
	fchmod(fileno(f), 0600);
	fprintf(f, "%s:", identity);
	for (size_t i = 0; i < sizeof(key); i++)
		fprintf(f, "%02x", key[i]);
	fprintf(f, "\n");
	if (fclose(f) != 0) {
		ferry_error_set(err, -EIO, "pki: cannot write %s", path);
		return -EIO;
	}
	return 0;
}
