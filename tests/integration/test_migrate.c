/*
 * Live migration of real QEMU guests through ferry, verified byte for byte.
 *
 * Every test starts a source VM running the test guest and a destination
 * VM waiting with -S -incoming defer, migrates, and checks the data: with
 * --paused, both guests are quiescent afterwards (source post-migrate,
 * destination paused), so their RAM must be identical. Failure tests check
 * that the source guest still runs (its heartbeat goes on) and that the
 * message says what happened.
 *
 * Some tests use libferry directly (the API a program embeds), others run
 * the ferry binary ($FERRY_BIN) as two processes, as on two hosts.
 */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "ferry.h"
#include "qmp/qmp.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/rx.h"
#include "tests/harness/vm.h"
#include "transport/net.h"

/* The guest size for these tests: big enough for several passes. */
#define TEST_MEM_MIB 128

/* The receivers of these tests serve one migration. */
static const struct ferry_receiver_opts once = { .once = true };

static void count_progress(const struct ferry_progress *p, void *opaque)
{
	(*(int *)opaque)++;
	ck_assert_uint_le(p->ram_remaining_bytes, p->ram_total_bytes + (1u << 20));
}

/* The library API, paused destination, RAM compared. */
START_TEST(api_migrate_paused)
{
	struct pair p;
	struct rx_thread rx;
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	int progress_calls = 0;
	struct ferry_migrate_opts o = {
		.paused = true,
		.progress = count_progress,
		.progress_opaque = &progress_calls,
		.codec = FERRY_CODEC_NONE,
		.no_handoff = true,	/* every byte through ferry's frames */
		.progress_interval_ms = 50,
	};

	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "mix" });
	ck_assert_msg(pair_migrate(&p, &o, NULL, &rx, &rep, &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);

	ck_assert(rep.completed);
	ck_assert_str_eq(rep.status, "completed");
	ck_assert_uint_eq(rep.ram_size_bytes, (uint64_t)TEST_MEM_MIB << 20);
	ck_assert_uint_gt(rep.ram_bytes, 0);
	ck_assert_str_eq(rep.transport, "tunnel");
	ck_assert_uint_gt(rep.wire_bytes, rep.ram_bytes);	/* framing, codec none */
	ck_assert_uint_ge(rep.passes, 1);
	/* The default limit, and exceeded only when QEMU's figure is over. */
	ck_assert_uint_eq(rep.downtime_limit_ms, FERRY_DEFAULT_DOWNTIME_MS);
	ck_assert(rep.downtime_exceeded ==
		  (rep.downtime_ms > rep.downtime_limit_ms));
	ck_assert_int_gt(progress_calls, 0);
	ck_assert_uint_eq(rx.rep.ram_bytes, rep.ram_bytes);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

static pid_t spawn_receiver(struct vm *dst, uint16_t port)
{
	struct ferry_error err = { 0 };
	pid_t pid;

	ck_assert_msg(proc_spawn_receiver(vm_qmp_path(dst), port, &pid, &err) == 0,
		      "ferry receive: %s", err.msg);
	return pid;
}

/* Run @argv to its end; its exit code, stdout in @out. */
static int run_child(char *const argv[], char *out, size_t outlen)
{
	struct ferry_error err = { 0 };
	pid_t pid;
	int fd;

	ck_assert_msg(proc_spawn(argv, &fd, &pid, &err) == 0, "%s", err.msg);
	proc_read_all(fd, out, outlen);
	return proc_wait(pid);
}

/* ferry migrate as a process; returns its exit code, JSON in @rep. */
static int cli_migrate(struct vm *src, uint16_t port, const char *extra,
		       json_t **rep)
{
	char to[32], out[8192];
	char *argv[12] = { getenv("FERRY_BIN"), "migrate", "--qmp",
			   (char *)vm_qmp_path(src), "--to", to, "--json" };
	int argc = 7, rc;
	char extra_copy[128];
	json_error_t jerr;

	snprintf(to, sizeof(to), "127.0.0.1:%u", port);
	snprintf(extra_copy, sizeof(extra_copy), "%s", extra ? extra : "");
	for (char *tok = strtok(extra_copy, " "); tok && argc < 11;
	     tok = strtok(NULL, " "))
		argv[argc++] = tok;
	argv[argc] = NULL;
	rc = run_child(argv, out, sizeof(out));
	*rep = json_loads(out, 0, &jerr);
	ck_assert_msg(*rep, "ferry migrate printed no JSON report: '%s'", out);
	return rc;
}

static const char *jstr(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	return json_is_string(v) ? json_string_value(v) : "";
}

static json_int_t jint(json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

/* Two processes, a guest that keeps dirtying memory. */
static void cli_migrate_dirtying(const char *extra)
{
	struct pair p;
	uint16_t port = proc_free_port();
	json_t *rep;
	pid_t rx;
	int rc;

	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "random", .ws_mib = 32,
					    .rate_mib_s = 64 });
	rx = spawn_receiver(p.dst, port);
	rc = cli_migrate(p.src, port, extra, &rep);
	ck_assert_msg(rc == 0, "ferry migrate failed (%d): %s", rc, jstr(rep, "error"));
	ck_assert_int_eq(proc_wait(rx), 0);
	ck_assert_str_eq(jstr(rep, "status"), "completed");
	ck_assert_int_gt(jint(rep, "total_ms"), 0);
	ck_assert_int_ge(jint(rep, "passes"), 1);
	ck_assert_int_gt(jint(rep, "ram_bytes"), (json_int_t)TEST_MEM_MIB << 19);
	ck_assert(json_is_null(json_object_get(rep, "error")));
	ck_assert_ptr_nonnull(json_object_get(rep, "downtime_ms"));
	ck_assert_ptr_nonnull(json_object_get(rep, "setup_ms"));
	ck_assert_ptr_nonnull(json_object_get(rep, "wire_bytes"));
	json_decref(rep);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}

START_TEST(cli_migrate_dirtying_tunnel)
{
	cli_migrate_dirtying("--paused");
}
END_TEST

START_TEST(cli_migrate_dirtying_direct)
{
	cli_migrate_dirtying("--paused --direct");
}
END_TEST

/* Without --paused the destination runs the guest: its heartbeat goes on,
 * its memory invariant holds, and the RAM it does not write is the source's. */
START_TEST(cli_migrate_resumes_destination)
{
	struct pair p;
	uint16_t port = proc_free_port();
	json_t *rep;
	pid_t rx;

	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "text", .ws_mib = 16,
					    .rate_mib_s = 16 });
	rx = spawn_receiver(p.dst, port);
	ck_assert_int_eq(cli_migrate(p.src, port, NULL, &rep), 0);
	ck_assert_int_eq(proc_wait(rx), 0);
	json_decref(rep);
	expect_guest_intact(&p);
	pair_stop(&p);
}
END_TEST

/*
 * A guest that was stopped stays stopped where it arrives (Nova's cold
 * migration of a stopped instance), cold or live, without --paused: the
 * destination QEMU is left paused, RAM the same.
 */
START_TEST(stopped_guest_stays_stopped)
{
	struct ferry_migrate_opts o = { .cold = _i == 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;

	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "mix" });
	ck_assert_msg(vm_qmp_connect(p.src, &err) == 0, "%s", err.msg);
	ck_assert_msg(qmp_execute(vm_qmp(p.src), "stop", NULL, NULL, 5000,
				  &err) == 0, "%s", err.msg);
	expect_status(p.src, "paused");
	ck_assert_msg(pair_migrate(&p, &o, NULL, &rx, &rep, &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/*
 * A downtime limit QEMU cannot keep (1 ms: the device state alone
 * usually takes longer): the migration completes, and the report says the
 * limit was exceeded, with the limit. QEMU's counter has millisecond
 * steps, and now and then it measures a switchover within 1 ms: then
 * nothing may be reported, and the test tries again with fresh VMs, up to
 * DOWNTIME_TRIES times, for a run where QEMU went over.
 */
#define DOWNTIME_TRIES 3

START_TEST(downtime_exceeded_said)
{
	struct ferry_migrate_opts o = { .paused = true, .downtime_ms = 1 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;

	for (int i = 0;; i++) {
		pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
						    .fill = "mix" });
		ck_assert_msg(pair_migrate(&p, &o, NULL, &rx, &rep, &err) == 0,
			      "%s", err.msg);
		ck_assert_uint_eq(rep.downtime_limit_ms, 1);
		if (rep.downtime_ms > 1 || i == DOWNTIME_TRIES - 1)
			break;
		ck_assert(!rep.downtime_exceeded);
		expect_same_ram(&p);
		pair_stop(&p);
	}
	ck_assert_msg(rep.downtime_ms > 1, "QEMU measured %llu ms in %d runs",
		      (unsigned long long)rep.downtime_ms, DOWNTIME_TRIES);
	ck_assert(rep.downtime_exceeded);
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/* The receiver dies mid-migration: the source guest keeps running. */
START_TEST(dropped_connection_keeps_source)
{
	struct pair p;
	uint16_t port = proc_free_port();
	pid_t rx, mig;
	char to[32];
	char *argv[] = { getenv("FERRY_BIN"), "migrate", "--qmp", NULL, "--to",
			 to, "--bandwidth", "16", "--quiet", NULL };
	struct ferry_error err = { 0 };
	int rc;

	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "random" });
	rx = spawn_receiver(p.dst, port);
	snprintf(to, sizeof(to), "127.0.0.1:%u", port);
	argv[3] = (char *)vm_qmp_path(p.src);
	ck_assert_msg(proc_spawn(argv, NULL, &mig, &err) == 0, "%s", err.msg);
	/* 128 MiB at 16 MiB/s takes ~8 s: cut it after ~2 s. */
	sleep(2);
	kill(rx, SIGKILL);
	proc_wait(rx);
	rc = proc_wait(mig);
	ck_assert_int_eq(rc, 1);
	expect_source_alive(&p);
	pair_stop(&p);
}
END_TEST

/* SIGINT during precopy cancels cleanly: source runs, report says so. */
START_TEST(sigint_cancels_precopy)
{
	struct pair p;
	uint16_t port = proc_free_port();
	char to[32], out[4096];
	char *argv[] = { getenv("FERRY_BIN"), "migrate", "--qmp", NULL, "--to",
			 to, "--bandwidth", "16", "--json", NULL };
	struct ferry_error err = { 0 };
	json_t *rep;
	pid_t rx, mig;
	int fd, rc;

	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "random" });
	rx = spawn_receiver(p.dst, port);
	snprintf(to, sizeof(to), "127.0.0.1:%u", port);
	argv[3] = (char *)vm_qmp_path(p.src);
	ck_assert_msg(proc_spawn(argv, &fd, &mig, &err) == 0, "%s", err.msg);
	sleep(2);
	kill(mig, SIGINT);
	proc_read_all(fd, out, sizeof(out));
	rc = proc_wait(mig);
	ck_assert_int_eq(rc, 1);
	rep = json_loads(out, 0, NULL);
	ck_assert_msg(rep, "no JSON report: '%s'", out);
	ck_assert_str_eq(jstr(rep, "status"), "cancelled");
	ck_assert(json_is_true(json_object_get(rep, "source_running")));
	ck_assert_msg(strstr(jstr(rep, "error"), "cancelled"), "%s", jstr(rep, "error"));
	json_decref(rep);
	/* The receiver hears of the cancel and ends its one migration. */
	ck_assert_int_eq(proc_wait(rx), 1);
	expect_source_alive(&p);
	pair_stop(&p);
}
END_TEST

/* The library reports the reason and that the guest is safe. */
START_TEST(unreachable_receiver)
{
	struct pair p;
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct ferry_migrate_opts o = { .to_host = "127.0.0.1" };
	struct ferry_migration *m;

	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "zero" });
	o.qmp_path = vm_qmp_path(p.src);
	o.to_port = proc_free_port();
	m = ferry_migration_new(&o, &err);
	ck_assert_int_lt(ferry_migration_run(m, &rep, &err), 0);
	ferry_migration_free(m);
	ck_assert_msg(strstr(err.msg, "receiver unreachable"), "%s", err.msg);
	ck_assert_str_eq(rep.status, "failed");
	ck_assert(rep.source_running);
	expect_source_alive(&p);
	pair_stop(&p);
}
END_TEST

static void *kill_later(void *vm)
{
	sleep(2);
	vm_kill(vm);
	return NULL;
}

/* The destination QEMU dies mid-migration. */
START_TEST(destination_dies)
{
	struct pair p;
	struct rx_thread rx;
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct ferry_migrate_opts o = {
		.to_host = "127.0.0.1",
		.max_bandwidth_bytes_per_s = 16u << 20,
	};
	struct ferry_migration *m;
	pthread_t killer;

	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "random" });
	pair_rx_start(&p, &rx, &once);
	o.qmp_path = vm_qmp_path(p.src);
	o.to_port = rx.port;
	m = ferry_migration_new(&o, &err);
	/* Kill the destination QEMU from another thread, 2 s in. */
	pthread_create(&killer, NULL, kill_later, p.dst);
	ck_assert_int_lt(ferry_migration_run(m, &rep, &err), 0);
	pthread_join(killer, NULL);
	ferry_migration_free(m);
	rx_thread_stop(&rx);
	rx_thread_join(&rx);
	ck_assert_str_eq(rep.status, "failed");
	ck_assert(rep.source_running);
	ck_assert_msg(err.msg[0], "no message");
	expect_source_alive(&p);
	pair_stop(&p);
}
END_TEST

struct log_capture {
	pthread_mutex_t lock;
	char text[8192];
};

static void capture_log(int level, const char *msg, void *opaque)
{
	struct log_capture *c = opaque;
	size_t len;

	(void)level;
	pthread_mutex_lock(&c->lock);
	len = strlen(c->text);
	snprintf(c->text + len, sizeof(c->text) - len, "%s\n", msg);
	pthread_mutex_unlock(&c->lock);
}

/*
 * Garbage instead of a hello: the receiver closes that connection with a
 * log line, keeps no state, and still serves a real migration afterwards.
 */
START_TEST(receiver_rejects_garbage)
{
	static struct log_capture cap = { .lock = PTHREAD_MUTEX_INITIALIZER };
	static const char junk[64] = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n";
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct ferry_migrate_opts o = { .to_host = "127.0.0.1", .paused = true };
	struct ferry_migration *m;
	struct rx_thread rx;
	struct pair p;
	char c;
	int fd;

	ferry_set_log(capture_log, &cap, 3);
	pair_start(&p, &(struct pair_opts){ .mem_mib = TEST_MEM_MIB,
					    .fill = "zero" });
	pair_rx_start(&p, &rx, &once);
	fd = net_connect("127.0.0.1", rx.port, 2000, &err);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(send(fd, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
	/* The receiver closes the connection: EOF, not a hang. */
	ck_assert_int_eq(recv(fd, &c, 1, 0), 0);
	close(fd);
	pthread_mutex_lock(&cap.lock);
	ck_assert_msg(strstr(cap.text, "rejected connection from 127.0.0.1"),
		      "log: %s", cap.text);
	ck_assert_msg(strstr(cap.text, "bad hello magic"), "log: %s", cap.text);
	pthread_mutex_unlock(&cap.lock);

	o.qmp_path = vm_qmp_path(p.src);
	o.to_port = rx.port;
	m = ferry_migration_new(&o, &err);
	ck_assert_msg(ferry_migration_run(m, &rep, &err) == 0, "%s", err.msg);
	ferry_migration_free(m);
	rx_thread_join(&rx);
	expect_same_ram(&p);
	pair_stop(&p);
	ferry_set_log(NULL, NULL, 2);
}
END_TEST

static Suite *migrate_suite(void)
{
	Suite *s = suite_create("migrate");
	TCase *ok = tcase_create("migrate");
	TCase *bad = tcase_create("failures");

	tcase_set_timeout(ok, 180);
	tcase_set_timeout(bad, 180);
	tcase_add_test(ok, api_migrate_paused);
	tcase_add_test(ok, cli_migrate_dirtying_tunnel);
	tcase_add_test(ok, cli_migrate_dirtying_direct);
	tcase_add_test(ok, cli_migrate_resumes_destination);
	tcase_add_loop_test(ok, stopped_guest_stays_stopped, 0, 2);
	tcase_add_test(ok, downtime_exceeded_said);
	tcase_add_test(bad, dropped_connection_keeps_source);
	tcase_add_test(bad, sigint_cancels_precopy);
	tcase_add_test(bad, unreachable_receiver);
	tcase_add_test(bad, destination_dies);
	tcase_add_test(bad, receiver_rejects_garbage);
	suite_add_tcase(s, ok);
	suite_add_tcase(s, bad);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(migrate_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
