/*
 * Steering a running migration from a second process, as an operator's
 * other terminal would: `ferry abort`, `ferry force-complete` and
 * `ferry set-downtime` against a `ferry migrate` child, through its
 * control socket. The guest is verified afterwards: after an abort the
 * source runs on and a new migration of it completes; after a forced
 * completion the destination holds the guest (paused), RAM the same.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/mig.h"
#include "common/util.h"
#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

/* A guest that rewrites its working set faster than the cap drains it:
 * it never converges within the downtime limit on its own. */
static const struct pair_opts guest = { .mem_mib = 128, .fill = "random",
					.ws_mib = 32, .rate_mib_s = 64 };
#define CAP_MIB_S "16"
#define ACTIVE_TIMEOUT_MS 30000

struct run {
	struct pair p;
	struct rx_thread rx;
	char state[64];
	pid_t mig;
};

/* `ferry migrate` of a guest that does not converge, destination paused,
 * with @extra options; returns once the destination loads. */
static void start(struct run *r, const char *const *extra)
{
	struct ferry_error err = { 0 };
	struct mig_info info;
	char to[32];
	char *argv[32] = { getenv("FERRY_BIN"), "migrate", "--qmp", NULL, "--to",
			   to, "--paused", "--compress", "none", "--bandwidth",
			   CAP_MIB_S, "--downtime-ms", "20", "--quiet",
			   "--state-dir", NULL };
	int n = 16;

	ck_assert_int_eq(tmpdir_make(r->state, sizeof(r->state), "ferry-state"), 0);
	pair_start(&r->p, &guest);
	pair_rx_start(&r->p, &r->rx, &(struct ferry_receiver_opts){ .once = true });
	snprintf(to, sizeof(to), "127.0.0.1:%u", r->rx.port);
	argv[3] = (char *)vm_qmp_path(r->p.src);
	argv[15] = r->state;
	for (; extra && *extra; extra++)
		argv[n++] = (char *)*extra;
	argv[n] = NULL;
	ck_assert_msg(proc_spawn(argv, NULL, &r->mig, &err) == 0, "%s", err.msg);
	for (int i = 0; i < ACTIVE_TIMEOUT_MS / 20; i++) {
		if (mig_query(vm_qmp(r->p.dst), &info, NULL) == 0 &&
		    info.state == MIG_S_ACTIVE)
			return;
		usleep(20 * 1000);
	}
	ck_abort_msg("the destination never started loading");
}

static void stop(struct run *r)
{
	pair_stop(&r->p);
	tmpdir_remove(r->state);
}

/* The running migration's id, from ferry list (its first 8 characters,
 * as an operator would type them). */
static void running_id(struct run *r, char *id8)
{
	struct ferry_error err = { 0 };
	char *json;
	json_t *all;

	ck_assert_msg(ferry_list_json(r->state, &json, &err) == 0, "%s", err.msg);
	all = json_loads(json, 0, NULL);
	free(json);
	ck_assert_uint_eq(json_array_size(all), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(all, 0),
							   "status")), "running");
	snprintf(id8, 9, "%s", json_string_value(json_object_get(
			json_array_get(all, 0), "id")));
	json_decref(all);
}

/* `ferry @cmd ID [@arg]` from another process: its exit status; its
 * output in @out. */
static int steer(struct run *r, const char *cmd, const char *id,
		 const char *arg, char *out, size_t len)
{
	char *argv[] = { getenv("FERRY_BIN"), (char *)cmd, (char *)id,
			 "--state-dir", r->state, (char *)arg, NULL };
	struct ferry_error err = { 0 };
	pid_t pid;
	int fd;

	ck_assert_msg(proc_spawn(argv, &fd, &pid, &err) == 0, "%s", err.msg);
	proc_read_all(fd, out, len);
	return proc_wait(pid);
}

/* Abort: the source guest runs on, once; the journal says cancelled; a
 * new migration of it then completes. */
START_TEST(abort_precopy)
{
	struct ferry_migrate_opts o = { .paused = true };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	char id[9], out[1024];
	struct run r;

	start(&r, NULL);
	running_id(&r, id);
	ck_assert_int_eq(steer(&r, "abort", id, NULL, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "aborting"), "%s", out);
	ck_assert_int_eq(proc_wait(r.mig), 1);
	rx_thread_join(&r.rx);
	expect_source_alive(&r.p);
	expect_listed(r.state, "source", "cancelled");
	/* The control socket went with the migration. */
	ck_assert_int_ne(steer(&r, "abort", id, NULL, out, sizeof(out)), 0);

	/* A new migration of the guest, to a new destination. */
	pair_new_dst(&r.p);
	o.converge.postcopy = FERRY_POSTCOPY_AFTER_PASS;
	o.converge.postcopy_after_pass = 1;
	ck_assert_msg(pair_migrate(&r.p, &o, NULL, &r.rx, &rep, &err) == 0, "%s",
		      err.msg);
	expect_status(r.p.dst, "paused");
	expect_same_ram(&r.p);
	stop(&r);
}
END_TEST

/*
 * Force-complete without post-copy: the source guest is paused, the rest
 * is downtime, and the migration completes; with post-copy allowed (but
 * not due), it switches to post-copy, after which an abort is refused.
 * Either way the destination holds the guest, RAM the same.
 */
START_TEST(force_complete)
{
	static const char *const postcopy[] = { "--postcopy", "after-pass=1000",
						NULL };
	char id[9], out[1024];
	struct run r;

	start(&r, _i ? postcopy : NULL);
	running_id(&r, id);
	/* A new limit first: taken, still too short for this guest. */
	ck_assert_int_eq(steer(&r, "set-downtime", id, "30", out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "downtime limit 30 ms"), "%s", out);
	ck_assert_int_eq(steer(&r, "force-complete", id, NULL, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, _i ? "switched to post-copy" :
			     "paused the source guest"), "%s", out);
	if (_i) {
		int rc = steer(&r, "abort", id, NULL, out, sizeof(out));

		/* Refused, unless post-copy already finished. */
		ck_assert_msg(rc == 1 || rc == 0, "abort: %d", rc);
	}
	ck_assert_int_eq(proc_wait(r.mig), 0);
	rx_thread_join(&r.rx);
	ck_assert_msg(r.rx.rc == 0, "receiver: %s", r.rx.err.msg);
	expect_status(r.p.src, "postmigrate");
	expect_status(r.p.dst, "paused");
	expect_same_ram(&r.p);
	expect_listed(r.state, "source", "completed");
	stop(&r);
}
END_TEST

/* Requests a migration must refuse, and strangers. */
START_TEST(refusals)
{
	char id[9], out[1024];
	struct run r;

	start(&r, NULL);
	running_id(&r, id);
	ck_assert_int_eq(steer(&r, "set-downtime", id, "0", out, sizeof(out)), 2);
	ck_assert_int_eq(steer(&r, "abort", "1234", NULL, out, sizeof(out)), 1);
	ck_assert_int_eq(steer(&r, "abort", "00000000", NULL, out, sizeof(out)), 1);
	{
		/* The socket is its owner's alone. */
		char path[256];
		struct stat st;

		snprintf(path, sizeof(path), "%s/control", r.state);
		ck_assert_int_eq(stat(path, &st), 0);
		ck_assert_int_eq(st.st_mode & 0777, 0700);
	}
	ck_assert_int_eq(steer(&r, "abort", id, NULL, out, sizeof(out)), 0);
	ck_assert_int_eq(proc_wait(r.mig), 1);
	rx_thread_join(&r.rx);
	expect_status(r.p.src, "running");
	stop(&r);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("control");
	TCase *tc = tcase_create("control");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, abort_precopy);
	tcase_add_loop_test(tc, force_complete, 0, 2);
	tcase_add_test(tc, refusals);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
