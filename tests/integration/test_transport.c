/*
 * Every transport mode migrates a real guest with its RAM verified byte for
 * byte: each codec, several streams, TLS with certificates, TLS with a
 * pre-shared key, and a bandwidth cap. Then the TLS refusals: a plaintext
 * client, a client certificate signed by another CA, an expired one, and a
 * client with no certificate at all are each refused with a log line,
 * while the receiver goes on serving and the source guest keeps running.
 *
 * The guests dirty memory during the migration (several passes) and the
 * destination is left paused, so both are quiescent when compared.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/util.h"
#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/pki.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"
#include "transport/net.h"

/* Every test's guest: text to compress, dirtying during the migration. */
static const struct pair_opts guest = { .mem_mib = 128, .fill = "mix",
					.ws_mib = 16, .rate_mib_s = 32 };

/* ---- log capture: the receiver's refusals are log lines ---- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[16384];
static size_t log_len;

static void capture_log(int level, const char *msg, void *opaque)
{
	size_t n = strlen(msg);

	(void)opaque;
	fprintf(stderr, "[%d] %s\n", level, msg);
	pthread_mutex_lock(&log_mu);
	if (log_len + n + 2 < sizeof(log_buf)) {
		memcpy(log_buf + log_len, msg, n);
		log_len += n;
		log_buf[log_len++] = '\n';
		log_buf[log_len] = '\0';
	}
	pthread_mutex_unlock(&log_mu);
}

static void log_reset(void)
{
	pthread_mutex_lock(&log_mu);
	log_len = 0;
	log_buf[0] = '\0';
	pthread_mutex_unlock(&log_mu);
}

/* Wait (bounded) until the log holds a line with both @a and @b. */
static bool log_has(const char *a, const char *b)
{
	for (int i = 0; i < 100; i++) {
		bool found = false;

		pthread_mutex_lock(&log_mu);
		for (char *line = log_buf; line && *line && !found;) {
			char *nl = strchr(line, '\n');

			if (nl)
				*nl = '\0';
			found = strstr(line, a) && strstr(line, b);
			if (nl)
				*nl = '\n';
			line = nl ? nl + 1 : NULL;
		}
		pthread_mutex_unlock(&log_mu);
		if (found)
			return true;
		usleep(20 * 1000);
	}
	return false;
}

/* ---- receiver thread ---- */

/* The receiver's options: @tls (or plaintext), a short hello deadline. */
static struct ferry_receiver_opts rx_opts(const struct ferry_tls_opts *tls)
{
	struct ferry_receiver_opts o = { .hello_timeout_ms = 5000 };

	if (tls)
		o.tls = *tls;
	return o;
}

static void rx_finish(struct rx_thread *r)
{
	rx_thread_stop(r);
	rx_thread_join(r);
}

static char pki_dir[64];

static const char *test_pki(const struct pki_opts *po, const char *name)
{
	static char dir[128];
	struct ferry_error err = { 0 };

	snprintf(dir, sizeof(dir), "%s/%s", pki_dir, name);
	ck_assert_msg(pki_generate(dir, po, &err) == 0, "%s", err.msg);
	return dir;
}

static void setup_pki(void)
{
	ck_assert_int_eq(tmpdir_make(pki_dir, sizeof(pki_dir), "ferry-pki"), 0);
}

static void teardown_pki(void)
{
	tmpdir_remove(pki_dir);
}

/* Migrate @p with @o (to_host/qmp/port filled in), RAM verified. */
static void migrate_verified(struct pair *p, struct ferry_migrate_opts *o,
			     const struct ferry_tls_opts *rx_tls,
			     struct ferry_report *rep)
{
	struct ferry_receiver_opts ro = rx_opts(rx_tls);
	struct ferry_error err = { 0 };
	struct rx_thread rx;

	o->paused = true;
	ck_assert_msg(pair_migrate(p, o, &ro, &rx, rep, &err) == 0, "%s", err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	ck_assert(rep->completed);
	ck_assert_uint_ge(rep->passes, 1);
	ck_assert_str_eq(rx.rep.transport, rep->transport);
	/* Through the tunnel both ends count the same stream. */
	if (!strcmp(rep->transport, "tunnel"))
		ck_assert_uint_eq(rx.rep.ram_bytes, rep->ram_bytes);
	expect_status(p->src, "postmigrate");
	expect_status(p->dst, "paused");
	expect_same_ram(p);
}

static void migrate_codec(enum ferry_codec codec, int level, uint32_t streams,
			  bool no_handoff, struct ferry_report *rep)
{
	struct pair p;
	struct ferry_migrate_opts o = { .codec = codec, .codec_level = level,
					.streams = streams,
					.no_handoff = no_handoff };

	pair_start(&p, &guest);
	migrate_verified(&p, &o, NULL, rep);
	pair_stop(&p);
	ck_assert_uint_eq(rep->streams, streams ? streams : 1);
}

START_TEST(codec_none)
{
	struct ferry_report rep;

	migrate_codec(FERRY_CODEC_NONE, 0, 1, true, &rep);
	ck_assert_str_eq(rep.codec, "none");
	ck_assert_str_eq(rep.transport, "tunnel");
	ck_assert_uint_gt(rep.frames_raw, 0);
	ck_assert_uint_eq(rep.frames_lz4 + rep.frames_zstd, 0);
	ck_assert_uint_gt(rep.wire_bytes, rep.ram_bytes);
}
END_TEST

START_TEST(codec_lz4)
{
	struct ferry_report rep;

	migrate_codec(FERRY_CODEC_LZ4, 0, 1, false, &rep);
	ck_assert_str_eq(rep.transport, "tunnel");
	ck_assert_uint_gt(rep.frames_lz4, 0);
	ck_assert_uint_eq(rep.frames_zstd, 0);
	/* The mix guest has text: lz4 must shrink the stream. */
	ck_assert_uint_lt(rep.wire_bytes, rep.ram_bytes);
}
END_TEST

START_TEST(codec_zstd_level)
{
	struct ferry_report rep;

	migrate_codec(FERRY_CODEC_ZSTD, 3, 1, false, &rep);
	ck_assert_uint_gt(rep.frames_zstd, 0);
	ck_assert_uint_eq(rep.frames_lz4, 0);
	ck_assert_uint_lt(rep.wire_bytes, rep.ram_bytes);
}
END_TEST

START_TEST(codec_auto)
{
	struct ferry_report rep;

	migrate_codec(FERRY_CODEC_AUTO, 0, 1, true, &rep);
	ck_assert_str_eq(rep.codec, "auto");
	ck_assert_str_eq(rep.transport, "tunnel");
	ck_assert_uint_gt(rep.frames_raw + rep.frames_lz4 + rep.frames_zstd, 0);
}
END_TEST

/* --compress none over one plaintext stream: the data connection goes to
 * QEMU after its hello; no frames, the RAM still equal. */
START_TEST(handoff_none)
{
	struct ferry_report rep;

	migrate_codec(FERRY_CODEC_NONE, 0, 1, false, &rep);
	ck_assert_str_eq(rep.transport, "handoff");
	ck_assert_str_eq(rep.codec, "none");
	ck_assert_uint_eq(rep.frames_raw + rep.frames_lz4 + rep.frames_zstd, 0);
	ck_assert_uint_gt(rep.wire_bytes, 0);
}
END_TEST

/* auto measures the link first; whichever way it decides, the decision is
 * reported and the RAM arrives intact. */
START_TEST(auto_probes_the_link)
{
	struct ferry_report rep;

	migrate_codec(FERRY_CODEC_AUTO, 0, 1, false, &rep);
	ck_assert_uint_gt(rep.probe_bytes_per_s, 0);
	if (!strcmp(rep.transport, "tunnel"))
		ck_assert_uint_gt(rep.frames_raw + rep.frames_lz4 + rep.frames_zstd, 0);
	else
		ck_assert_str_eq(rep.transport, "handoff");
}
END_TEST

START_TEST(four_streams_lz4)
{
	struct ferry_report rep;

	migrate_codec(FERRY_CODEC_LZ4, 0, 4, false, &rep);
	ck_assert_uint_gt(rep.frames_lz4, 0);
}
END_TEST

/* --bandwidth: ferry's token bucket in the tunnel, QEMU's max-bandwidth
 * with hand-off. */
static void bandwidth_capped(bool no_handoff, const char *transport)
{
	struct ferry_report rep;
	struct pair p;
	const uint64_t cap = 40ull << 20;
	struct ferry_migrate_opts o = { .codec = FERRY_CODEC_NONE,
					.max_bandwidth_bytes_per_s = cap,
					.no_handoff = no_handoff };
	uint64_t rate;

	pair_start(&p, &guest);
	migrate_verified(&p, &o, NULL, &rep);
	pair_stop(&p);
	ck_assert_str_eq(rep.transport, transport);
	/* An upper bound only: a slow machine can only make it lower. The
	 * bucket starts empty, so even the first burst is paced. */
	rate = rep.wire_bytes * 1000 / rep.total_ms;
	ck_assert_msg(rate <= cap + cap / 10,
		      "%llu bytes/s on the wire with a cap of %llu",
		      (unsigned long long)rate, (unsigned long long)cap);
}

START_TEST(bandwidth_cap)
{
	bandwidth_capped(true, "tunnel");
}
END_TEST

START_TEST(bandwidth_cap_handoff)
{
	bandwidth_capped(false, "handoff");
}
END_TEST

START_TEST(tls_x509_two_streams)
{
	struct ferry_report rep;
	struct pair p;
	const char *dir = test_pki(NULL, "good");
	struct ferry_tls_opts tls = { .creds_dir = dir };
	struct ferry_migrate_opts o = { .streams = 2, .tls = tls };

	pair_start(&p, &guest);
	migrate_verified(&p, &o, &tls, &rep);
	pair_stop(&p);
	ck_assert_str_eq(rep.tls, "x509");
}
END_TEST

START_TEST(tls_psk)
{
	struct ferry_report rep;
	struct pair p;
	struct ferry_error err = { 0 };
	char psk[128];
	struct ferry_tls_opts tls = { .psk_file = psk };
	struct ferry_migrate_opts o = { .codec = FERRY_CODEC_LZ4 };

	snprintf(psk, sizeof(psk), "%s/keys.psk", pki_dir);
	ck_assert_msg(pki_write_psk(psk, "ferry-test", &err) == 0, "%s", err.msg);
	o.tls = tls;
	pair_start(&p, &guest);
	migrate_verified(&p, &o, &tls, &rep);
	pair_stop(&p);
	ck_assert_str_eq(rep.tls, "psk");
}
END_TEST

/*
 * Post-copy through TLS: the preempt channel is a TLS connection like the
 * others; the destination guest runs on through it with its memory
 * invariant intact, and the destination counted its wait for pages.
 */
START_TEST(tls_postcopy_preempt)
{
	const struct pair_opts dirty = { .mem_mib = 128, .fill = "random",
					 .ws_mib = 32, .rate_mib_s = 32 };
	const char *dir = test_pki(NULL, "good");
	struct ferry_tls_opts tls = { .creds_dir = dir };
	struct ferry_receiver_opts ro = rx_opts(&tls);
	struct ferry_migrate_opts o = {
		.tls = tls, .codec = FERRY_CODEC_NONE,
		.max_bandwidth_bytes_per_s = 32ull << 20,
		.converge = { .postcopy = FERRY_POSTCOPY_AFTER_PASS,
			      .postcopy_after_pass = 1 },
	};
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;
	char events[128], line[1024];
	bool preempt = false;
	FILE *f;

	pair_start(&p, &dirty);
	snprintf(events, sizeof(events), "%s/events.jsonl", p.dir);
	o.converge.events_path = events;
	ck_assert_msg(pair_migrate(&p, &o, &ro, &rx, &rep, &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	ck_assert(rep.postcopy);
	ck_assert_str_eq(rep.tls, "x509");
	ck_assert(rep.has_postcopy_blocktime);
	f = fopen(events, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		preempt |= strstr(line, "\"preempt\"") &&
			   strstr(line, "channel of their own");
	fclose(f);
	ck_assert_msg(preempt, "no preempt channel in %s", events);
	expect_guest_intact(&p);
	pair_stop(&p);
}
END_TEST

/* A migration attempt that must be refused at the handshake. */
static void expect_refused(struct pair *p, struct rx_thread *rx,
			   const struct ferry_tls_opts *tls, const char *log_a,
			   const char *log_b)
{
	struct ferry_migrate_opts o = {
		.to_host = "127.0.0.1",
		.qmp_path = vm_qmp_path(p->src),
		.to_port = rx->port,
		.paused = true,
	};
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct ferry_migration *m;

	if (tls)
		o.tls = *tls;
	m = ferry_migration_new(&o, &err);
	ck_assert_msg(m, "%s", err.msg);
	ck_assert_int_lt(ferry_migration_run(m, &rep, &err), 0);
	ferry_migration_free(m);
	fprintf(stderr, "client saw: %s\n", err.msg);
	ck_assert_msg(err.msg[0], "no error message");
	ck_assert(rep.source_running);
	ck_assert_msg(log_has(log_a, log_b),
		      "no receiver log line with '%s' and '%s':\n%s", log_a,
		      log_b, log_buf);
	expect_status(p->src, "running");
}

/* A TLS client with the right CA but no certificate of its own. */
static void raw_client_without_cert(uint16_t port, const char *ca)
{
	struct ferry_error err = { 0 };
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	int fd = net_connect("127.0.0.1", port, 2000, &err);
	SSL *s;
	char buf[64];

	ck_assert_int_ge(fd, 0);
	ck_assert_ptr_nonnull(ctx);
	SSL_CTX_load_verify_locations(ctx, ca, NULL);
	s = SSL_new(ctx);
	SSL_set_fd(s, fd);
	/* TLS 1.3: the refusal arrives after our Finished, on first read. */
	if (SSL_connect(s) == 1) {
		memset(buf, 0, sizeof(buf));
		SSL_write(s, buf, sizeof(buf));
		ck_assert_int_le(SSL_read(s, buf, sizeof(buf)), 0);
	}
	SSL_free(s);
	SSL_CTX_free(ctx);
	close(fd);
}

START_TEST(tls_refusals)
{
	struct pair p;
	struct rx_thread rx;
	struct ferry_report rep;
	char good[128], rogue[160], expired[160], ca[192];
	struct ferry_tls_opts tls = { 0 };
	struct ferry_tls_opts bad = { 0 };
	struct ferry_receiver_opts ro;
	struct ferry_migrate_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_migration *m;

	snprintf(good, sizeof(good), "%s", test_pki(NULL, "good"));
	snprintf(rogue, sizeof(rogue), "%s/rogue", pki_dir);
	snprintf(expired, sizeof(expired), "%s/expired", pki_dir);
	ck_assert_msg(pki_bad_client(good, rogue, PKI_CLIENT_ROGUE, &err) == 0,
		      "%s", err.msg);
	ck_assert_msg(pki_bad_client(good, expired, PKI_CLIENT_EXPIRED, &err) == 0,
		      "%s", err.msg);
	snprintf(ca, sizeof(ca), "%s/ca-cert.pem", good);
	tls.creds_dir = good;
	o.tls = tls;

	pair_start(&p, &guest);
	log_reset();
	ferry_set_log(capture_log, NULL, 3);
	ro = rx_opts(&tls);
	pair_rx_start(&p, &rx, &ro);

	expect_refused(&p, &rx, NULL, "rejected connection",
		       "plaintext ferry on a TLS port");
	bad.creds_dir = rogue;
	expect_refused(&p, &rx, &bad, "rejected connection",
		       "unable to get local issuer certificate");
	bad.creds_dir = expired;
	expect_refused(&p, &rx, &bad, "rejected connection",
		       "certificate has expired");
	raw_client_without_cert(rx.port, ca);
	ck_assert_msg(log_has("rejected connection", "certificate"),
		      "no log line for a client without a certificate:\n%s",
		      log_buf);

	/* The receiver is still serving: a good migration goes through. */
	o.to_host = "127.0.0.1";
	o.qmp_path = vm_qmp_path(p.src);
	o.to_port = rx.port;
	o.paused = true;
	m = ferry_migration_new(&o, &err);
	ck_assert_msg(m, "%s", err.msg);
	ck_assert_msg(ferry_migration_run(m, &rep, &err) == 0, "%s", err.msg);
	ferry_migration_free(m);
	rx_finish(&rx);
	ferry_set_log(NULL, NULL, 2);
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/* Plaintext to a non-loopback address is refused unless --insecure. */
START_TEST(plaintext_off_loopback_refused)
{
	struct ferry_migrate_opts o = { .qmp_path = "/nonexistent",
					.to_host = "192.0.2.1", .to_port = 1 };
	struct ferry_receiver_opts ro = { .listen_host = "0.0.0.0",
					  .qmp_path = "/nonexistent" };
	struct ferry_error err = { 0 };
	struct ferry_migration *m;
	struct ferry_receiver *r;

	ck_assert_ptr_null(ferry_migration_new(&o, &err));
	ck_assert_ptr_nonnull(strstr(err.msg, "--insecure"));
	o.tls.insecure = true;
	m = ferry_migration_new(&o, &err);
	ck_assert_ptr_nonnull(m);
	ferry_migration_free(m);
	memset(&err, 0, sizeof(err));
	ck_assert_ptr_null(ferry_receiver_new(&ro, &err));
	ck_assert_ptr_nonnull(strstr(err.msg, "plaintext"));
	ro.tls.insecure = true;
	r = ferry_receiver_new(&ro, &err);
	ck_assert_msg(r, "%s", err.msg);
	ferry_receiver_free(r);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("transport");
	TCase *codecs = tcase_create("codecs");
	TCase *tls = tcase_create("tls");

	tcase_set_timeout(codecs, 180);
	tcase_add_test(codecs, codec_none);
	tcase_add_test(codecs, codec_lz4);
	tcase_add_test(codecs, codec_zstd_level);
	tcase_add_test(codecs, codec_auto);
	tcase_add_test(codecs, handoff_none);
	tcase_add_test(codecs, auto_probes_the_link);
	tcase_add_test(codecs, four_streams_lz4);
	tcase_add_test(codecs, bandwidth_cap);
	tcase_add_test(codecs, bandwidth_cap_handoff);
	suite_add_tcase(s, codecs);

	tcase_set_timeout(tls, 180);
	tcase_add_checked_fixture(tls, setup_pki, teardown_pki);
	tcase_add_test(tls, tls_x509_two_streams);
	tcase_add_test(tls, tls_psk);
	tcase_add_test(tls, tls_postcopy_preempt);
	tcase_add_test(tls, tls_refusals);
	tcase_add_test(tls, plaintext_off_loopback_refused);
	suite_add_tcase(s, tls);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
