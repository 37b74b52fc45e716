/*
 * Test PKI: a CA and server/client certificates in the directory layout
 * QEMU, libvirt and ferry read (ca-cert.pem, server-cert.pem,
 * server-key.pem, client-cert.pem, client-key.pem), generated with
 * OpenSSL's API so tests can also make the bad ones: an expired client
 * certificate, or one signed by a different CA.
 */
#ifndef FERRY_PKI_H
#define FERRY_PKI_H

#include <stdbool.h>

#include "ferry.h"

struct pki_opts {
	/* Extra IP addresses for the server certificate's subjectAltName
	 * (127.0.0.1, ::1 and DNS:localhost are always there). NULL-ended. */
	const char *const *server_ips;
};

/*
 * Create @dir (0700) if needed and write the five files into it, plus
 * ca-key.pem (for pki_bad_client()).
 */
int pki_generate(const char *dir, const struct pki_opts *o,
		 struct ferry_error *err);

enum pki_bad {
	PKI_CLIENT_EXPIRED,	/* signed by the right CA, validity ended */
	PKI_CLIENT_ROGUE,	/* signed by an unrelated CA */
};

/*
 * A client-side credentials dir @out_dir: @good_dir's CA certificate (so
 * the client trusts the real server) and a bad client certificate.
 */
int pki_bad_client(const char *good_dir, const char *out_dir, enum pki_bad bad,
		   struct ferry_error *err);

/*
 * The same for the receiving side: @good_dir's CA certificate and a bad
 * server certificate (expired, or signed by an unrelated CA; @bad as for
 * a client) naming the loopback addresses, so that only @bad is wrong.
 */
int pki_bad_server(const char *good_dir, const char *out_dir, enum pki_bad bad,
		   struct ferry_error *err);

/* Write a QEMU-style PSK file (one line "identity:64 hex digits"). */
int pki_write_psk(const char *path, const char *identity,
		  struct ferry_error *err);

#endif /* FERRY_PKI_H */
