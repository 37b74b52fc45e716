/*
 * The receiving service against peers that misbehave, and against load:
 * real QEMU, real sockets, real TLS.
 *
 * Each test does something a broken or hostile peer would (a hello that
 * matches and then closes, an absurd frame after a full handshake,
 * --direct on a TLS service, silent and slow connections, a flood of idle
 * ones, a bad hello to --once, a second migration to a busy service), then
 * checks that the destination QEMUs that should be alive are alive and
 * untouched (still waiting with -incoming defer), and that a real
 * migration afterwards completes with the guest's RAM compared byte for
 * byte. Timing is never asserted: where a test shows that a slow peer did
 * not hold a migration up, it shows it by order (the migration finished
 * while the slow peer's connection was still open).
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/mig.h"
#include "common/util.h"
#include "ferry.h"
#include "qmp/qmp.h"
#include "tests/harness/pair.h"
#include "tests/harness/pki.h"
#include "tests/harness/proc.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"
#include "transport/net.h"
#include "transport/tls.h"
#include "transport/wire.h"

#define TEST_MEM_MIB 64
/* The service's per-connection deadline in these tests. */
#define HELLO_MS 4000

/* Most tests' guests: idle, of mixed content. */
static const struct pair_opts mixed = { .mem_mib = TEST_MEM_MIB, .fill = "mix" };

/* What every test's guest is made of (they are all alike): the GUEST a
 * raw peer sends, as a real source would. */
static struct wire_guest g_guest;

/* Note what @p's source guest is made of in g_guest, for raw peers. */
static void note_guest(struct pair *p)
{
	struct ferry_error err = { 0 };

	ck_assert_msg(qemu_guest_describe(vm_qmp(p->src), &g_guest, &err) == 0,
		      "%s", err.msg);
}

/* A raw source's GUEST message, after its hello (and VM, CONFIG). */
static void raw_guest(struct net_conn *c)
{
	struct ferry_error err = { 0 };
	uint8_t buf[WIRE_CTRL_PAYLOAD_MAX];
	int n;

	ck_assert_msg(g_guest.machine[0], "no note_guest() before a raw peer");
	n = wire_guest_encode(&g_guest, buf, sizeof(buf), &err);
	ck_assert_msg(n >= 0, "%s", err.msg);
	/* A service that already hung up says why on the next read. */
	net_ctrl_send(c, WIRE_CTRL_GUEST, buf, (uint32_t)n, 2000, &err);
}

static void service_start(struct rx_thread *r, struct ferry_receiver_opts *o)
{
	o->listen_host = "127.0.0.1";
	if (!o->hello_timeout_ms)
		o->hello_timeout_ms = HELLO_MS;
	ck_assert_msg(rx_thread_start(r, o, NULL, &r->err) == 0, "receiver: %s",
		      r->err.msg);
}

static void service_stop(struct rx_thread *r)
{
	rx_thread_stop(r);
	rx_thread_join(r);
}

/* A migration of @p->src to the service on @port (paused destination). */
static int migrate(struct pair *p, uint16_t port, const char *vm_name,
		   struct ferry_migrate_opts *o, struct ferry_report *rep,
		   struct ferry_error *err)
{
	struct ferry_migration *m;
	int rc;

	o->to_host = "127.0.0.1";
	o->to_port = port;
	o->qmp_path = vm_qmp_path(p->src);
	o->paused = true;
	o->vm_name = vm_name;
	m = ferry_migration_new(o, err);
	ck_assert_msg(m, "%s", err->msg);
	rc = ferry_migration_run(m, rep, err);
	ferry_migration_free(m);
	return rc;
}

/* A real migration that must complete, RAM verified. */
static void migrate_verified(struct pair *p, uint16_t port, const char *vm_name)
{
	struct ferry_migrate_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	int rc = -1;

	/* The service may still be ending the misbehaving peer's migration
	 * of this QEMU ("busy"): try again, bounded. */
	for (int i = 0; i < 50; i++) {
		memset(&o, 0, sizeof(o));
		rc = migrate(p, port, vm_name, &o, &rep, &err);
		if (rc == 0 || !strstr(err.msg, "busy"))
			break;
		usleep(200 * 1000);
	}
	ck_assert_msg(rc == 0, "real migration after the misbehaving peer: %s",
		      err.msg);
	ck_assert(rep.completed);
	expect_status(p->src, "postmigrate");
	expect_status(p->dst, "paused");
	expect_same_ram(p);
}

/* ---- a raw peer: ferry's wire format by hand ---- */

struct raw {
	struct net_conn c;
	struct tls_ctx *tls;
};

static uint64_t vm_ram_bytes(void)
{
	return (uint64_t)TEST_MEM_MIB << 20;
}

static void raw_open(struct raw *r, uint16_t port, const struct ferry_tls_opts *tls,
		     const uint8_t id[WIRE_MIG_ID_BYTES], enum wire_conn kind,
		     uint32_t options, uint64_t ram)
{
	struct ferry_error err = { 0 };
	struct wire_hello h = {
		.version = WIRE_VERSION, .conn = kind, .options = options,
		.ram_bytes = ram, .stream_index = 0, .stream_count = 1,
		.frame_max = 1u << 20,
	};
	uint8_t buf[WIRE_HELLO_BYTES];
	int fd;

	r->tls = NULL;
	if (tls)
		ck_assert_msg(tls_ctx_new(&r->tls, tls, false, &err) == 0, "%s",
			      err.msg);
	fd = net_connect("127.0.0.1", port, 2000, &err);
	ck_assert_msg(fd >= 0, "%s", err.msg);
	net_conn_init(&r->c, fd);
	ck_assert_msg(net_conn_start_tls(&r->c, r->tls, "127.0.0.1", 5000, &err) == 0,
		      "%s", err.msg);
	memcpy(h.mig_id, id, WIRE_MIG_ID_BYTES);
	wire_hello_encode(&h, buf);
	ck_assert_msg(net_write_full(&r->c, buf, sizeof(buf), 2000, "hello",
				     &err) == 0, "%s", err.msg);
	/* A fresh control connection's preamble (with VM, the test sends
	 * VM and CONFIG, then GUEST itself). */
	if (kind == WIRE_CONN_CONTROL &&
	    !(options & (WIRE_OPT_RESUME | WIRE_OPT_VM)))
		raw_guest(&r->c);
}

static void raw_close(struct raw *r)
{
	net_conn_close(&r->c);
	tls_ctx_free(r->tls);
	r->tls = NULL;
}

/* The next control message; its payload as text in @text. */
static uint16_t raw_ctrl(struct raw *r, char *text, size_t len)
{
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct ferry_error err = { 0 };
	struct wire_ctrl_hdr h;

	ck_assert_msg(net_ctrl_recv(&r->c, &h, payload, 20000, &err) == 0,
		      "%s", err.msg);
	snprintf(text, len, "%s", (char *)payload);
	return h.type;
}

static void random_id(uint8_t id[WIRE_MIG_ID_BYTES])
{
	ck_assert_int_eq(wire_mig_id_random(id), 0);
}

/*
 * A plaintext control hello of migration @id, answered READY. While the
 * service still ends the previous peer's migration of the same QEMU it
 * answers "busy": try again, bounded (no fixed sleep to race).
 */
static void control_ready(struct raw *c, uint16_t port,
			  const uint8_t id[WIRE_MIG_ID_BYTES])
{
	char text[512];

	for (int i = 0; i < 100; i++) {
		uint16_t type;

		raw_open(c, port, NULL, id, WIRE_CONN_CONTROL, 0, vm_ram_bytes());
		type = raw_ctrl(c, text, sizeof(text));
		if (type == WIRE_CTRL_READY)
			return;
		ck_assert_msg(type == WIRE_CTRL_ERROR && strstr(text, "busy"),
			      "%s", text);
		raw_close(c);
		usleep(100 * 1000);
	}
	ck_abort_msg("the service stayed busy");
}

/* Lets the service finish with a refused peer before QEMU is looked at,
 * or the next peer comes. */
static void settle(void)
{
	usleep(1000 * 1000);
}

/* ---- tests ---- */

/*
 * A hello whose RAM size matches, then nothing: plaintext control hellos
 * (plain and --direct) that close, one that closes after READY, and one
 * that sends every connection's hello and closes. The destination QEMU is
 * never put into migrate-incoming, and the real migration that follows
 * finds it as it was.
 */
START_TEST(matching_hello_then_close)
{
	struct ferry_receiver_opts ro = { 0 };
	struct rx_thread rx;
	struct pair p;
	uint8_t id[WIRE_MIG_ID_BYTES];
	struct raw c, d, ret;
	char text[256];

	pair_start(&p, &mixed);
	note_guest(&p);
	ro.qmp_path = vm_qmp_path(p.dst);
	service_start(&rx, &ro);

	random_id(id);
	raw_open(&c, rx.port, NULL, id, WIRE_CONN_CONTROL, WIRE_OPT_DIRECT,
		 vm_ram_bytes());
	raw_close(&c);
	settle();
	expect_status(p.dst, "inmigrate");

	random_id(id);
	control_ready(&c, rx.port, id);
	raw_close(&c);
	settle();
	expect_status(p.dst, "inmigrate");

	random_id(id);
	control_ready(&c, rx.port, id);
	raw_open(&d, rx.port, NULL, id, WIRE_CONN_DATA, 0, vm_ram_bytes());
	raw_open(&ret, rx.port, NULL, id, WIRE_CONN_RETURN, 0, vm_ram_bytes());
	raw_close(&d);
	raw_close(&ret);
	/* The service gives up on the stream that never starts. */
	ck_assert_int_eq(raw_ctrl(&c, text, sizeof(text)), WIRE_CTRL_ERROR);
	ck_assert_msg(strstr(text, "was not started"), "%s", text);
	raw_close(&c);
	settle();
	expect_status(p.dst, "inmigrate");

	/* A preempt channel for a migration without post-copy: every
	 * connection that announces it is refused, nothing reaches QEMU. */
	random_id(id);
	control_ready(&c, rx.port, id);
	raw_open(&d, rx.port, NULL, id, WIRE_CONN_DATA, WIRE_OPT_PREEMPT,
		 vm_ram_bytes());
	raw_open(&ret, rx.port, NULL, id, WIRE_CONN_PREEMPT, WIRE_OPT_PREEMPT,
		 vm_ram_bytes());
	ck_assert_int_eq(raw_ctrl(&c, text, sizeof(text)), WIRE_CTRL_ERROR);
	ck_assert_msg(strstr(text, "0 of 1 data streams"), "%s", text);
	raw_close(&d);
	raw_close(&ret);
	raw_close(&c);
	settle();
	expect_status(p.dst, "inmigrate");

	migrate_verified(&p, rx.port, NULL);
	/* Failed migrations are not the result of a service that is not
	 * --once: it stops cleanly. */
	service_stop(&rx);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	pair_stop(&p);
}
END_TEST

/*
 * A full handshake (control, READY, data, return), then a frame header
 * declaring 0xfffffff0 bytes; and one whose first frame is valid but not
 * a QEMU stream. Each fails its own migration; QEMU never took a byte.
 */
START_TEST(bad_stream_after_handshake)
{
	static const uint8_t not_qemu[16] = "GET / HTTP/1.0\r\n";
	struct ferry_receiver_opts ro = { 0 };
	struct ferry_error err = { 0 };
	struct rx_thread rx;
	struct pair p;

	pair_start(&p, &mixed);
	note_guest(&p);
	ro.qmp_path = vm_qmp_path(p.dst);
	service_start(&rx, &ro);
	for (int round = 0; round < 2; round++) {
		uint8_t id[WIRE_MIG_ID_BYTES], hdr[WIRE_FRAME_HDR_BYTES];
		struct wire_frame_hdr fh = { .type = WIRE_FRAME_DATA, .seq = 0 };
		struct raw c, d, ret;
		char text[256];

		random_id(id);
		control_ready(&c, rx.port, id);
		raw_open(&d, rx.port, NULL, id, WIRE_CONN_DATA, 0, vm_ram_bytes());
		raw_open(&ret, rx.port, NULL, id, WIRE_CONN_RETURN, 0, vm_ram_bytes());
		fh.len = fh.raw_len = round == 0 ? 0xfffffff0u : sizeof(not_qemu);
		wire_frame_encode(&fh, hdr);
		ck_assert(net_write_full(&d.c, hdr, sizeof(hdr), 2000, "frame",
					 &err) == 0);
		if (round == 1)
			ck_assert(net_write_full(&d.c, not_qemu, sizeof(not_qemu),
						 2000, "frame", &err) == 0);
		ck_assert_int_eq(raw_ctrl(&c, text, sizeof(text)), WIRE_CTRL_ERROR);
		ck_assert_msg(strstr(text, round == 0 ? "declares" :
				     "not a QEMU migration stream"), "%s", text);
		ck_assert_msg(strstr(text, "was not started"), "%s", text);
		raw_close(&d);
		raw_close(&ret);
		raw_close(&c);
		settle();
		expect_status(p.dst, "inmigrate");
	}
	migrate_verified(&p, rx.port, NULL);
	service_stop(&rx);
	pair_stop(&p);
}
END_TEST

static char pki_dir[64];

static void setup_pki(void)
{
	ck_assert_int_eq(tmpdir_make(pki_dir, sizeof(pki_dir), "ferry-pki"), 0);
}

static void teardown_pki(void)
{
	tmpdir_remove(pki_dir);
}

/* Whether process @pid has a listening TCP socket (from /proc). */
static bool pid_listens(pid_t pid)
{
	char path[64], line[512], link[64];
	bool listens = false;
	FILE *f;

	for (int v6 = 0; v6 < 2 && !listens; v6++) {
		f = fopen(v6 ? "/proc/net/tcp6" : "/proc/net/tcp", "r");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f) && !listens) {
			unsigned long inode;
			unsigned st;

			/* sl local rem st ... uid timeout inode */
			if (sscanf(line, "%*s %*s %*s %x %*s %*s %*s %*s %*s %lu",
				   &st, &inode) != 2 || st != 0x0a)
				continue;
			snprintf(link, sizeof(link), "socket:[%lu]", inode);
			for (int fd = 0; fd < 256 && !listens; fd++) {
				char target[64];
				ssize_t n;

				snprintf(path, sizeof(path), "/proc/%d/fd/%d",
					 (int)pid, fd);
				n = readlink(path, target, sizeof(target) - 1);
				if (n <= 0)
					continue;
				target[n] = '\0';
				listens = !strcmp(target, link);
			}
		}
		fclose(f);
	}
	return listens;
}

/*
 * --direct to a TLS service: an authenticated peer's DIRECT hello is
 * refused by the service itself with a clear error, no QEMU listens on
 * anything, and a TLS migration then completes.
 */
START_TEST(direct_on_tls_refused)
{
	struct ferry_receiver_opts ro = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_tls_opts tls = { 0 };
	struct ferry_migrate_opts o = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;
	uint8_t id[WIRE_MIG_ID_BYTES];
	char dir[128], text[512];
	struct raw c;

	snprintf(dir, sizeof(dir), "%s/pki", pki_dir);
	ck_assert_msg(pki_generate(dir, NULL, &err) == 0, "%s", err.msg);
	tls.creds_dir = dir;
	pair_start(&p, &mixed);
	note_guest(&p);
	ro.qmp_path = vm_qmp_path(p.dst);
	ro.tls = tls;
	service_start(&rx, &ro);

	random_id(id);
	raw_open(&c, rx.port, &tls, id, WIRE_CONN_CONTROL, WIRE_OPT_DIRECT,
		 vm_ram_bytes());
	ck_assert_int_eq(raw_ctrl(&c, text, sizeof(text)), WIRE_CTRL_ERROR);
	ck_assert_msg(strstr(text, "--direct is refused by this TLS receiver"),
		      "%s", text);
	raw_close(&c);
	settle();
	expect_status(p.dst, "inmigrate");
	ck_assert_msg(!pid_listens(vm_pid(p.dst)),
		      "the destination QEMU listens on a TCP port");

	o.tls = tls;
	ck_assert_msg(migrate(&p, rx.port, NULL, &o, &rep, &err) == 0, "%s",
		      err.msg);
	ck_assert_str_eq(rep.tls, "x509");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	service_stop(&rx);
	pair_stop(&p);
}
END_TEST

/*
 * A TLS handshake stalled after its ClientHello, evicted by the next
 * connection (one handshake slot): OpenSSL's alert on the shut socket
 * must not kill the program that embeds the service with SIGPIPE. The
 * service then serves a real TLS migration.
 */
START_TEST(tls_eviction_keeps_host_alive)
{
	struct ferry_receiver_opts ro = { .max_handshakes = 1 };
	struct ferry_error err = { 0 };
	struct ferry_tls_opts tls = { 0 };
	struct ferry_migrate_opts o = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;
	char dir[128], ca[160];
	SSL_CTX *ctx;
	SSL *s;
	int fd, fd2;

	snprintf(dir, sizeof(dir), "%s/pki", pki_dir);
	ck_assert_msg(pki_generate(dir, NULL, &err) == 0, "%s", err.msg);
	snprintf(ca, sizeof(ca), "%s/ca-cert.pem", dir);
	tls.creds_dir = dir;
	pair_start(&p, &mixed);
	ro.qmp_path = vm_qmp_path(p.dst);
	ro.tls = tls;
	service_start(&rx, &ro);

	ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_load_verify_locations(ctx, ca, NULL);
	fd = net_connect("127.0.0.1", rx.port, 2000, &err);
	ck_assert_int_ge(fd, 0);
	s = SSL_new(ctx);
	SSL_set_fd(s, fd);
	SSL_set_connect_state(s);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	/* The ClientHello goes out; a fast service may even answer it
	 * before this returns (a client without a certificate then fails
	 * later): either way the service gets a handshake that stalls. */
	(void)SSL_do_handshake(s);
	settle();
	fd2 = net_connect("127.0.0.1", rx.port, 2000, &err);
	ck_assert_int_ge(fd2, 0);
	settle();
	close(fd2);
	SSL_free(s);
	SSL_CTX_free(ctx);
	close(fd);

	o.tls = tls;
	ck_assert_msg(migrate(&p, rx.port, NULL, &o, &rep, &err) == 0, "%s",
		      err.msg);
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	service_stop(&rx);
	pair_stop(&p);
}
END_TEST

/* ---- peers that hold connections open ---- */

struct nuisance {
	uint16_t port;
	uint32_t n;		/* connections to open */
	uint32_t interval_ms;	/* between them */
	bool slowloris;		/* dribble a hello, a byte per 500 ms */
	int fds[256];
	uint32_t opened;
	volatile bool stop;
	pthread_t t;
};

static void *nuisance_main(void *arg)
{
	struct nuisance *z = arg;
	uint8_t hello[WIRE_HELLO_BYTES];
	struct wire_hello h = { .version = WIRE_VERSION, .conn = WIRE_CONN_DATA,
				.ram_bytes = 1u << 30, .stream_count = 1,
				.frame_max = 1u << 20 };
	uint32_t sent = 0;

	memset(h.mig_id, 0x5a, sizeof(h.mig_id));
	wire_hello_encode(&h, hello);
	while (!z->stop) {
		if (z->opened < z->n) {
			struct ferry_error err = { 0 };
			int fd = net_connect("127.0.0.1", z->port, 2000, &err);

			if (fd >= 0)
				z->fds[z->opened++] = fd;
		}
		if (z->slowloris && z->opened && sent < sizeof(hello) - 1) {
			for (uint32_t i = 0; i < z->opened; i++)
				send(z->fds[i], hello + sent, 1, MSG_NOSIGNAL);
			sent++;
			usleep(500 * 1000);
		} else {
			usleep(z->interval_ms * 1000);
		}
	}
	return NULL;
}

static void nuisance_start(struct nuisance *z)
{
	ck_assert_int_eq(pthread_create(&z->t, NULL, nuisance_main, z), 0);
}

/* How many of the nuisance's connections the service still holds open. */
static uint32_t nuisance_stop(struct nuisance *z)
{
	uint32_t open_n = 0;

	z->stop = true;
	pthread_join(z->t, NULL);
	for (uint32_t i = 0; i < z->opened; i++) {
		uint8_t b;
		ssize_t n = recv(z->fds[i], &b, 1, MSG_DONTWAIT);

		open_n += n < 0 && errno == EAGAIN;
		close(z->fds[i]);
	}
	return open_n;
}

/*
 * Silent connections opened all through a real migration (between its
 * READY and its data connections among them), a slowloris dribbling a
 * hello, and 200 idle connections opened before a migration: each costs
 * only its own connection. The migration completes while they are still
 * open, which shows it did not wait for their deadlines.
 */
START_TEST(silent_slow_and_idle_connections)
{
	struct ferry_receiver_opts ro = { .hello_timeout_ms = 60000 };
	struct nuisance silent = { .n = 40, .interval_ms = 25 };
	struct nuisance slow = { .n = 3, .slowloris = true };
	struct nuisance flood = { .n = 200, .interval_ms = 1 };
	struct rx_thread rx;
	struct pair p;

	pair_start(&p, &mixed);
	ro.qmp_path = vm_qmp_path(p.dst);
	service_start(&rx, &ro);
	silent.port = slow.port = flood.port = rx.port;
	nuisance_start(&silent);
	nuisance_start(&slow);
	migrate_verified(&p, rx.port, NULL);
	ck_assert_uint_gt(nuisance_stop(&silent), 0);
	ck_assert_uint_gt(nuisance_stop(&slow), 0);
	pair_stop(&p);

	/* 200 idle connections, more than the handshake slots. */
	pair_start(&p, &mixed);
	service_stop(&rx);
	ro.qmp_path = vm_qmp_path(p.dst);
	service_start(&rx, &ro);
	flood.port = rx.port;
	nuisance_start(&flood);
	while (flood.opened < flood.n)
		usleep(10 * 1000);
	migrate_verified(&p, rx.port, NULL);
	/* Those not evicted for the migration's connections are still open. */
	ck_assert_uint_gt(nuisance_stop(&flood), 0);
	service_stop(&rx);
	pair_stop(&p);
}
END_TEST

/*
 * --once: a refused hello (wrong RAM size) does not end the receiver;
 * the real migration that follows is served, and then it returns.
 */
START_TEST(once_survives_bad_hello)
{
	struct ferry_receiver_opts ro = { .once = true };
	struct rx_thread rx;
	struct pair p;
	uint8_t id[WIRE_MIG_ID_BYTES];
	char text[512];
	struct raw c;

	pair_start(&p, &mixed);
	note_guest(&p);
	ro.qmp_path = vm_qmp_path(p.dst);
	service_start(&rx, &ro);
	random_id(id);
	raw_open(&c, rx.port, NULL, id, WIRE_CONN_CONTROL, 0, vm_ram_bytes() * 2);
	ck_assert_int_eq(raw_ctrl(&c, text, sizeof(text)), WIRE_CTRL_ERROR);
	ck_assert_msg(strstr(text, "guest RAM differs"), "%s", text);
	raw_close(&c);
	migrate_verified(&p, rx.port, NULL);
	rx_thread_join(&rx);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	ck_assert(rx.rep.completed);
	pair_stop(&p);
}
END_TEST

/* ---- many VMs ---- */

struct mig_thread {
	struct pair *p;
	uint16_t port;
	const char *vm;
	struct ferry_migrate_opts o;
	struct ferry_report rep;
	struct ferry_error err;
	int rc;
	volatile bool precopy;	/* seen in precopy */
	pthread_t t;
};

static void mig_progress(const struct ferry_progress *pr, void *opaque)
{
	struct mig_thread *mt = opaque;

	if (pr->phase == FERRY_PHASE_PRECOPY)
		mt->precopy = true;
}

/* Until @mt's migration streams memory. */
static void wait_precopy(struct mig_thread *mt)
{
	for (int i = 0; i < 600 && !mt->precopy; i++)
		usleep(50 * 1000);
	ck_assert_msg(mt->precopy, "the migration did not reach precopy");
}

static void *mig_main(void *arg)
{
	struct mig_thread *mt = arg;
	struct ferry_migration *m;

	mt->o.to_host = "127.0.0.1";
	mt->o.to_port = mt->port;
	mt->o.qmp_path = vm_qmp_path(mt->p->src);
	mt->o.paused = true;
	mt->o.vm_name = mt->vm;
	mt->o.progress = mig_progress;
	mt->o.progress_opaque = mt;
	mt->o.progress_interval_ms = 50;
	m = ferry_migration_new(&mt->o, &mt->err);
	mt->rc = m ? ferry_migration_run(m, &mt->rep, &mt->err) : -EINVAL;
	ferry_migration_free(m);
	return NULL;
}

/* Register @dst as VM @name in @dir (a symlink to its QMP socket). */
static void register_vm(const char *dir, const char *name, struct vm *dst)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s.qmp", dir, name);
	unlink(path);
	ck_assert_int_eq(symlink(vm_qmp_path(dst), path), 0);
}

/*
 * Two VMs migrate to one service at the same time, each to the QEMU
 * registered under its name; a third migration while the service is at
 * --max-migrations is refused at once with "busy"; a migration to a VM
 * that is already receiving one is refused with "busy" too; an unknown
 * VM gets a clear error.
 */
START_TEST(two_vms_and_busy)
{
	static const struct pair_opts dirtying = { .mem_mib = TEST_MEM_MIB,
		.fill = "random", .ws_mib = 4, .rate_mib_s = 32 };
	struct ferry_receiver_opts ro = { .max_migrations = 2 };
	struct mig_thread a = { .vm = "vm-a" }, b = { .vm = "vm-b" };
	struct ferry_migrate_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair pa, pb, pc;
	char dir[64];
	int rc;

	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-qmpdir"), 0);
	/* Incompressible, dirtying guests on a capped wire: the
	 * migrations overlap for seconds. */
	pair_start(&pa, &dirtying);
	pair_start(&pb, &dirtying);
	pair_start(&pc, &mixed);
	register_vm(dir, "vm-a", pa.dst);
	register_vm(dir, "vm-b", pb.dst);
	register_vm(dir, "vm-c", pc.dst);
	ro.qmp_dir = dir;
	service_start(&rx, &ro);

	o.max_bandwidth_bytes_per_s = 24u << 20;
	a.o = b.o = o;
	a.p = &pa;
	b.p = &pb;
	a.port = b.port = rx.port;
	ck_assert_int_eq(pthread_create(&a.t, NULL, mig_main, &a), 0);
	ck_assert_int_eq(pthread_create(&b.t, NULL, mig_main, &b), 0);
	wait_precopy(&a);
	wait_precopy(&b);

	/* A third VM while two migrate: over the limit. */
	rc = migrate(&pc, rx.port, "vm-c", &(struct ferry_migrate_opts){ 0 },
		     &rep, &err);
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(strstr(err.msg, "busy: 2 migrations in progress"), "%s",
		      err.msg);
	expect_status(pc.src, "running");
	expect_status(pc.dst, "inmigrate");

	pthread_join(a.t, NULL);
	pthread_join(b.t, NULL);
	ck_assert_msg(a.rc == 0, "vm-a: %s", a.err.msg);
	ck_assert_msg(b.rc == 0, "vm-b: %s", b.err.msg);
	expect_same_ram(&pa);
	expect_same_ram(&pb);

	/* An unknown VM, and an unnamed migration to a many-VM service. */
	rc = migrate(&pc, rx.port, "vm-x", &(struct ferry_migrate_opts){ 0 },
		     &rep, &err);
	ck_assert_msg(rc < 0 && strstr(err.msg, "no destination QEMU is "
				       "registered for VM 'vm-x'"), "%s", err.msg);
	rc = migrate(&pc, rx.port, NULL, &(struct ferry_migrate_opts){ 0 },
		     &rep, &err);
	ck_assert_msg(rc < 0 && strstr(err.msg, "name the VM"), "%s", err.msg);
	/* The registered one is untouched by all that. */
	migrate_verified(&pc, rx.port, "vm-c");
	service_stop(&rx);
	pair_stop(&pa);
	pair_stop(&pb);
	pair_stop(&pc);
	tmpdir_remove(dir);
}
END_TEST

/*
 * The CLI, as on two hosts: ferry serve --qmp-dir and ferry migrate --vm
 * --json as separate processes; the report says completed, the RAM is
 * the same, and serve stops cleanly on SIGTERM.
 */
START_TEST(cli_serve_and_migrate_vm)
{
	const char *bin = getenv("FERRY_BIN");
	char dir[64], listen[64], to[64], out[8192];
	struct pair p;
	uint16_t port = proc_free_port();
	struct ferry_error err = { 0 };
	pid_t serve, mig;
	int out_fd;

	ck_assert_ptr_nonnull(bin);
	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-qmpdir"), 0);
	pair_start(&p, &mixed);
	register_vm(dir, "cli-vm", p.dst);
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
	snprintf(to, sizeof(to), "127.0.0.1:%u", port);
	{
		char *argv[] = { (char *)bin, "serve", "--listen", listen,
				 "--qmp-dir", dir, "--max-migrations", "2", NULL };

		ck_assert_msg(proc_spawn(argv, NULL, &serve, &err) == 0, "%s",
			      err.msg);
	}
	ck_assert_msg(proc_wait_port(port, 10000, &err) == 0, "%s", err.msg);
	{
		char *argv[] = { (char *)bin, "migrate", "--qmp",
				 (char *)vm_qmp_path(p.src), "--to", to, "--vm",
				 "cli-vm", "--paused", "--json", NULL };

		ck_assert_msg(proc_spawn(argv, &out_fd, &mig, &err) == 0, "%s",
			      err.msg);
	}
	proc_read_all(out_fd, out, sizeof(out));
	ck_assert_int_eq(proc_wait(mig), 0);
	ck_assert_msg(strstr(out, "\"status\":\"completed\""), "%s", out);
	kill(serve, SIGTERM);
	ck_assert_int_eq(proc_wait(serve), 0);
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
	tmpdir_remove(dir);
}
END_TEST

/* A second migration to the one VM of a "receive" service: busy. */
START_TEST(second_migration_to_busy_vm)
{
	struct ferry_receiver_opts ro = { 0 };
	struct mig_thread a = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair pa, pb;
	int rc;

	pair_start(&pa, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					     .fill = "random", .ws_mib = 2,
					     .rate_mib_s = 32 });
	pair_start(&pb, &mixed);
	ro.qmp_path = vm_qmp_path(pa.dst);
	service_start(&rx, &ro);
	a.o.max_bandwidth_bytes_per_s = 24u << 20;
	a.p = &pa;
	a.port = rx.port;
	ck_assert_int_eq(pthread_create(&a.t, NULL, mig_main, &a), 0);
	wait_precopy(&a);
	rc = migrate(&pb, rx.port, NULL, &(struct ferry_migrate_opts){ 0 },
		     &rep, &err);
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(strstr(err.msg, "busy: the destination QEMU is already "
			     "receiving migration"), "%s", err.msg);
	expect_status(pb.src, "running");
	pthread_join(a.t, NULL);
	ck_assert_msg(a.rc == 0, "%s", a.err.msg);
	expect_same_ram(&pa);
	service_stop(&rx);
	pair_stop(&pa);
	pair_stop(&pb);
}
END_TEST

/*
 * A registered QEMU that a failed migration burnt (a hand-off stream with
 * QEMU's header and then garbage: the QEMU takes it and fails) is refused
 * by name until a new QEMU is registered at its path; then a migration to
 * the new one completes.
 */
START_TEST(burnt_qemu_until_registered_anew)
{
	static const uint8_t bad[24] = { 'Q', 'E', 'V', 'M', 0, 0, 0, 3,
					 0xee, 0xee, 0xee, 0xee, 0xee, 0xee };
	struct ferry_receiver_opts ro = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;
	uint8_t id[WIRE_MIG_ID_BYTES];
	char dir[64], text[512];
	struct raw c, d;
	int rc;

	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-qmpdir"), 0);
	pair_start(&p, &mixed);
	note_guest(&p);
	register_vm(dir, "guest1", p.dst);
	ro.qmp_dir = dir;
	service_start(&rx, &ro);

	random_id(id);
	raw_open(&c, rx.port, NULL, id, WIRE_CONN_CONTROL, WIRE_OPT_VM,
		 vm_ram_bytes());
	{
		uint8_t name[WIRE_VM_NAME_MAX];
		int n = wire_vm_encode("guest1", name, &err);

		ck_assert(net_ctrl_send(&c.c, WIRE_CTRL_VM, name, (uint32_t)n,
					2000, &err) == 0);
		/* No configuration: registered QEMUs need none. */
		ck_assert(net_ctrl_send(&c.c, WIRE_CTRL_CONFIG, NULL, 0, 2000,
					&err) == 0);
		raw_guest(&c.c);
	}
	ck_assert_int_eq(raw_ctrl(&c, text, sizeof(text)), WIRE_CTRL_READY);
	raw_open(&d, rx.port, NULL, id, WIRE_CONN_DATA, WIRE_OPT_HANDOFF,
		 vm_ram_bytes());
	ck_assert(net_write_full(&d.c, bad, sizeof(bad), 2000, "junk", &err) == 0);
	ck_assert_int_eq(raw_ctrl(&c, text, sizeof(text)), WIRE_CTRL_ERROR);
	raw_close(&d);
	raw_close(&c);
	settle();

	rc = migrate(&p, rx.port, "guest1", &(struct ferry_migrate_opts){ 0 },
		     &rep, &err);
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(strstr(err.msg, "for VM 'guest1'") &&
		      strstr(err.msg, "was burnt by failed migration"), "%s",
		      err.msg);
	expect_status(p.src, "running");

	/* A new destination QEMU, registered anew under the same name. */
	pair_new_dst(&p);
	register_vm(dir, "guest1", p.dst);
	/* A symlink re-made to a new socket is a new registration. */
	migrate_verified(&p, rx.port, "guest1");
	service_stop(&rx);
	pair_stop(&p);
	tmpdir_remove(dir);
}
END_TEST

/* ---- launched destinations ---- */

static char launch_dir[64];

static void setup_launch(void)
{
	ck_assert_int_eq(tmpdir_make(launch_dir, sizeof(launch_dir),
				     "ferry-launch"), 0);
}

/* Kill every QEMU a launch left (by its pid file), then the dir. */
static void teardown_launch(void)
{
	DIR *d = opendir(launch_dir);
	struct dirent *e;

	while (d && (e = readdir(d))) {
		char path[512];
		FILE *f;
		int pid = 0;

		if (!strstr(e->d_name, ".pid"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", launch_dir, e->d_name);
		f = fopen(path, "r");
		if (f && fscanf(f, "%d", &pid) == 1 && pid > 1)
			kill(pid, SIGKILL);
		if (f)
			fclose(f);
	}
	if (d)
		closedir(d);
	tmpdir_remove(launch_dir);
}

static bool file_exists(const char *dir, const char *name)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

/* Whether a process runs with @needle in its command line. */
static bool process_with_arg(const char *needle)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	bool found = false;

	while (d && !found && (e = readdir(d))) {
		char path[300], buf[4096];
		FILE *f;
		size_t n;

		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		for (size_t i = 0; i < n; i++)
			if (!buf[i])
				buf[i] = ' ';
		buf[n] = '\0';
		found = strstr(buf, needle) != NULL;
	}
	if (d)
		closedir(d);
	return found;
}

static struct ferry_migration *cancel_me;

static void cancel_in_precopy(const struct ferry_progress *pr, void *opaque)
{
	if (pr->phase == FERRY_PHASE_PRECOPY && cancel_me)
		ferry_migration_cancel(cancel_me);
}

/*
 * ferry serve --launch with the shipped launcher: a source whose command
 * line names a file outside the allowed directories is refused before
 * anything starts; then, with the guest's directory allowed, a guest
 * migrates into a destination QEMU that nobody started by hand, and its
 * RAM equals the source's.
 */
START_TEST(launch_destination)
{
	const char *bin = getenv("FERRY_BIN"), *guest = getenv("FERRY_GUEST");
	struct ferry_receiver_opts ro = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;
	char cmd[600], allow[512], qmp_path[256], a[128], b[128], st[32];
	struct qmp *q;
	int rc;

	ck_assert_msg(bin && guest && guest[0] == '/',
		      "FERRY_BIN and an absolute FERRY_GUEST are needed");
	snprintf(cmd, sizeof(cmd), "%s launch-qemu", bin);
	snprintf(allow, sizeof(allow), "%s", guest);
	*strrchr(allow, '/') = '\0';
	/* The destination is the one the service launches. */
	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "mix", .no_dst = true,
					    .dir_prefix = "ferry-svc" });

	/* The guest's kernel is outside what this service allows. */
	ro.launch_cmd = cmd;
	ro.state_dir = launch_dir;
	ro.allow_dirs = launch_dir;
	service_start(&rx, &ro);
	rc = migrate(&p, rx.port, "refused1", &(struct ferry_migrate_opts){ 0 },
		     &rep, &err);
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(strstr(err.msg, "outside the directories this service "
			     "allows"), "%s", err.msg);
	ck_assert(!file_exists(launch_dir, "refused1.pid"));
	ck_assert(!file_exists(launch_dir, "refused1.qmp"));
	expect_status(p.src, "running");
	service_stop(&rx);

	/* Memory: with a ratio this low no host has room for the guest; it
	 * is refused before a QEMU starts. */
	ro.allow_dirs = allow;
	ro.ram_allocation_ratio = 0.001;
	service_start(&rx, &ro);
	rc = migrate(&p, rx.port, "nomem1", &(struct ferry_migrate_opts){ 0 },
		     &rep, &err);
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(strstr(err.msg, "pre-check: this host cannot take a 64 MiB "
			     "guest"), "%s", err.msg);
	ck_assert(!file_exists(launch_dir, "nomem1.pid"));
	ck_assert(!process_with_arg("nomem1.qmp"));
	expect_status(p.src, "running");
	service_stop(&rx);

	/* Overcommitted (1.5): room, as Nova's ram_allocation_ratio gives. */
	ro.ram_allocation_ratio = 1.5;
	service_start(&rx, &ro);

	/* A migration cancelled in precopy: its launched QEMU goes, with
	 * its files. */
	{
		struct ferry_migrate_opts o = {
			.to_host = "127.0.0.1", .to_port = rx.port,
			.qmp_path = vm_qmp_path(p.src), .vm_name = "launched2",
			.max_bandwidth_bytes_per_s = 8u << 20,
			.progress = cancel_in_precopy, .progress_interval_ms = 50,
		};

		cancel_me = ferry_migration_new(&o, &err);
		ck_assert_msg(cancel_me, "%s", err.msg);
		ck_assert_int_eq(ferry_migration_run(cancel_me, &rep, &err),
				 -ECANCELED);
		ferry_migration_free(cancel_me);
		cancel_me = NULL;
		expect_status(p.src, "running");
		/* The service cleans up when it sees the CANCEL: bounded. */
		for (int i = 0; i < 300 && (process_with_arg("launched2.qmp") ||
					    file_exists(launch_dir, "launched2.qmp"));
		     i++)
			usleep(50 * 1000);
		ck_assert(!file_exists(launch_dir, "launched2.qmp"));
		ck_assert(!file_exists(launch_dir, "launched2.pid"));
		ck_assert(!process_with_arg("launched2.qmp"));
	}
	rc = migrate(&p, rx.port, "launched1", &(struct ferry_migrate_opts){ 0 },
		     &rep, &err);
	ck_assert_msg(rc == 0, "%s", err.msg);
	service_stop(&rx);
	expect_status(p.src, "postmigrate");

	/* The launched QEMU, through its one QMP socket, now free. */
	snprintf(qmp_path, sizeof(qmp_path), "%s/launched1.qmp", launch_dir);
	q = qmp_connect(qmp_path, 5000, &err);
	ck_assert_msg(q, "%s", err.msg);
	ck_assert(qmp_query_status_string(q, "query-status", st, sizeof(st),
					  5000, &err) == 0);
	ck_assert_str_eq(st, "paused");
	ck_assert(!process_with_arg("launched2.qmp"));
	snprintf(a, sizeof(a), "%s/src.ram", p.dir);
	snprintf(b, sizeof(b), "%s/dst.ram", p.dir);
	ck_assert_msg(vm_pmemsave(p.src, a, &err) == 0, "%s", err.msg);
	ck_assert_msg(qmp_execute(q, "pmemsave",
				  json_pack("{s:I,s:I,s:s}", "val", (json_int_t)0,
					    "size", (json_int_t)TEST_MEM_MIB << 20,
					    "filename", b),
				  NULL, 60000, &err) == 0, "%s", err.msg);
	qmp_close(q);
	expect_same_file(a, b);
	pair_stop(&p);
}
END_TEST

/*
 * The launcher alone, for a block migration: a disk image the destination
 * lacks is created empty with the format the command line gives and the
 * manifest's size, and QEMU starts on it; an option outside the allowlist
 * is refused and nothing is created.
 */
START_TEST(launcher_creates_missing_image)
{
	const char *bin = getenv("FERRY_BIN"), *guest = getenv("FERRY_GUEST");
	static const char *const good[] = {
		"qemu-system-x86_64", "-machine", "pc", "-accel", "tcg",
		"-m", "32", "-nodefaults", "-display", "none", "-kernel", NULL,
		"-drive", NULL, "-device", "virtio-blk-pci,drive=drive0,id=vdisk0",
		"-qmp", "unix:/nonexistent/src.qmp,server=on,wait=off",
	};
	char cfg[256], out[256], img[256], drive[400], sh[2048], line[256];
	char allow[512];
	const char *argv[FERRY_ARRAY_SIZE(good)];
	struct stat st;
	FILE *f;
	int pid = 0;

	ck_assert(bin && guest && guest[0] == '/');
	snprintf(allow, sizeof(allow), "%s", guest);
	*strrchr(allow, '/') = '\0';
	snprintf(img, sizeof(img), "%s/disk0.qcow2", launch_dir);
	snprintf(drive, sizeof(drive), "if=none,id=drive0,format=qcow2,file=%s",
		 img);
	memcpy(argv, good, sizeof(good));
	argv[11] = guest;
	argv[13] = drive;
	snprintf(cfg, sizeof(cfg), "%s/cfg", launch_dir);
	snprintf(out, sizeof(out), "%s/out", launch_dir);
	f = fopen(cfg, "w");
	for (size_t i = 0; i < FERRY_ARRAY_SIZE(argv); i++)
		fwrite(argv[i], 1, strlen(argv[i]) + 1, f);
	fclose(f);
	snprintf(sh, sizeof(sh), "FERRY_LAUNCH_STATE_DIR=%s "
		 "FERRY_LAUNCH_ALLOW_DIRS=%s:%s FERRY_LAUNCH_BLOCK=1 "
		 "FERRY_LAUNCH_DISKS=vdisk0=16777216 %s launch-qemu vm1 %s/vm1.qmp "
		 "< %s > %s", launch_dir, allow, launch_dir, bin, launch_dir, cfg,
		 out);
	ck_assert_int_eq(system(sh), 0);
	f = fopen(out, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		sscanf(line, "pid %d", &pid);
	fclose(f);
	ck_assert_int_gt(pid, 1);
	ck_assert_int_eq(stat(img, &st), 0);
	snprintf(sh, sizeof(sh), "qemu-img info --output=json -U %s | "
		 "grep -q '\"virtual-size\": 16777216'", img);
	ck_assert_msg(system(sh) == 0, "the created image is not 16 MiB qcow2");
	ck_assert(process_with_arg("vm1.qmp"));
	kill(pid, SIGKILL);

	/* Refused, nothing made: an option off the allowlist, a host device,
	 * a path hidden in a dotted key, a port opened on the host, a host
	 * file as a ROM. */
	{
		static const struct { const char *opt, *arg, *why; } bad[] = {
			{ "-vnc", ":0", "option -vnc is not allowed" },
			{ "-device", "vfio-pci,host=0000:00:01.0", "host devices" },
			{ "-drive", "if=none,file.filename=/etc/shadow",
			  "/etc/shadow, outside the directories" },
			{ "-netdev", "user,id=n0,hostfwd=tcp::2222-:22",
			  "'hostfwd' is not allowed" },
			{ "-device", "e1000,romfile=/etc/shadow",
			  "/etc/shadow, outside the directories" },
			{ "-global", "isa-fdc.driveA=/dev/sda",
			  "a path where the launcher cannot check it" },
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			f = fopen(cfg, "w");
			fwrite("q", 1, 2, f);
			fwrite(bad[i].opt, 1, strlen(bad[i].opt) + 1, f);
			fwrite(bad[i].arg, 1, strlen(bad[i].arg) + 1, f);
			fclose(f);
			snprintf(sh, sizeof(sh), "FERRY_LAUNCH_STATE_DIR=%s "
				 "FERRY_LAUNCH_ALLOW_DIRS=%s %s launch-qemu vm2 "
				 "%s/vm2.qmp < %s > %s 2>&1", launch_dir, launch_dir,
				 bin, launch_dir, cfg, out);
			ck_assert_int_ne(system(sh), 0);
			f = fopen(out, "r");
			ck_assert(fgets(line, sizeof(line), f));
			fclose(f);
			ck_assert_msg(strstr(line, bad[i].why), "%s %s: %s",
				      bad[i].opt, bad[i].arg, line);
			ck_assert(!file_exists(launch_dir, "vm2.pid"));
		}
	}
}
END_TEST

static Suite *service_suite(void)
{
	Suite *s = suite_create("service");
	TCase *peers = tcase_create("peers");
	TCase *tls = tcase_create("tls");
	TCase *many = tcase_create("many");
	TCase *launch = tcase_create("launch");

	tcase_set_timeout(peers, 240);
	tcase_set_timeout(tls, 120);
	tcase_set_timeout(many, 240);
	tcase_add_test(peers, matching_hello_then_close);
	tcase_add_test(peers, bad_stream_after_handshake);
	tcase_add_test(peers, silent_slow_and_idle_connections);
	tcase_add_test(peers, once_survives_bad_hello);
	tcase_add_checked_fixture(tls, setup_pki, teardown_pki);
	tcase_add_test(tls, direct_on_tls_refused);
	tcase_add_test(tls, tls_eviction_keeps_host_alive);
	tcase_add_test(many, two_vms_and_busy);
	tcase_add_test(many, second_migration_to_busy_vm);
	tcase_add_test(many, cli_serve_and_migrate_vm);
	tcase_add_test(many, burnt_qemu_until_registered_anew);
	suite_add_tcase(s, peers);
	suite_add_tcase(s, tls);
	tcase_set_timeout(launch, 180);
	tcase_add_checked_fixture(launch, setup_launch, teardown_launch);
	tcase_add_test(launch, launch_destination);
	tcase_add_test(launch, launcher_creates_missing_image);
	suite_add_tcase(s, many);
	suite_add_tcase(s, launch);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(service_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
