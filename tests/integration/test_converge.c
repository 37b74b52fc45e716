/*
 * Convergence with real QEMU: a guest that dirties memory faster than the
 * (capped) link carries it.
 *
 *   - without help it does not converge: --timeout-s with abort ends it
 *     and the source guest keeps running;
 *   - --auto-converge completes it (QEMU throttles the guest's CPUs);
 *   - --postcopy auto completes it (the predictive policy switches);
 *   - post-copy through ferry's tunnel with the destination left paused:
 *     both quiescent afterwards, RAM compared byte for byte;
 *   - post-copy with the destination resumed: page requests flow back
 *     through the tunnel while the destination guest runs (its heartbeat);
 *   - post-copy with --direct;
 *   - post-copy recovery: a proxy between the two ferry processes cuts
 *     every connection during post-copy (through the tunnel, and with
 *     hand-off), or only ferry's control connection; ferry reconnects and
 *     resumes, and the destination guest runs on;
 *   - with --direct, QEMU's own connection broken during post-copy
 *     (migrate-pause on the source): ferry has both QEMUs resume on a new
 *     one;
 *   - SIGINT and SIGTERM to `ferry migrate` during post-copy are refused
 *     with a reason, and the migration finishes.
 * The events file records every decision.
 */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/mig.h"
#include "common/util.h"
#include "ferry.h"
#include "ferry_policy.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/proxy.h"
#include "tests/harness/rx.h"
#include "tests/harness/view.h"
#include "tests/harness/vm.h"
#include "transport/net.h"

/* The guest dirties 48 MiB/s over 48 MiB; the wire carries 24 MiB/s. */
static const struct pair_opts guest = { .mem_mib = 128, .fill = "random",
					.ws_mib = 48, .rate_mib_s = 48 };
#define CAP_BYTES_S (24ull << 20)

/* Migrate with @o at the cap (uncompressed through the tunnel), events
 * in @p's dir; returns the run's result, report in @rep. */
static int migrate(struct pair *p, struct ferry_migrate_opts *o,
		   struct ferry_report *rep, struct ferry_error *err)
{
	struct rx_thread rx;
	char events[128];

	snprintf(events, sizeof(events), "%s/events.jsonl", p->dir);
	o->converge.events_path = events;
	o->max_bandwidth_bytes_per_s = CAP_BYTES_S;
	if (!o->direct)
		o->codec = FERRY_CODEC_NONE;
	return pair_migrate(p, o, NULL, &rx, rep, err);
}

/* How many lines of @p's events file name @event. */
static int count_events(struct pair *p, const char *event)
{
	char path[128], line[8192];
	int n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/events.jsonl", p->dir);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		json_error_t jerr;
		json_t *o = json_loads(line, 0, &jerr);

		ck_assert_msg(o, "events line is not JSON: %s", line);
		/* QMP's shape (docs/schema/event.schema.json). */
		ck_assert(json_is_integer(json_object_get(json_object_get(o,
							"data"), "t_ms")));
		if (!strcmp(json_string_value(json_object_get(o, "event")), event))
			n++;
		json_decref(o);
	}
	fclose(f);
	return n;
}

START_TEST(no_help_times_out_and_aborts)
{
	struct pair p;
	struct ferry_migrate_opts o = { .paused = true, .timeout_s = 8,
		.converge.timeout_action = FERRY_TIMEOUT_ABORT };
	struct ferry_error err = { 0 };
	struct ferry_report rep;

	pair_start(&p, &guest);
	ck_assert_int_eq(migrate(&p, &o, &rep, &err), -ETIMEDOUT);
	ck_assert_msg(strstr(err.msg, "did not complete within 8 s"), "%s", err.msg);
	ck_assert(rep.source_running);
	ck_assert(!rep.postcopy);
	expect_source_alive(&p);
	ck_assert_int_eq(count_events(&p, "timeout"), 1);
	pair_stop(&p);
}
END_TEST

START_TEST(auto_converge_completes)
{
	struct pair p;
	struct ferry_migrate_opts o = { .paused = true, .timeout_s = 120,
		.converge = { .auto_converge = true, .throttle_initial_pct = 60,
			      .throttle_increment_pct = 20,
			      .policy = ferry_policy_builtin("qemu") } };
	struct ferry_error err = { 0 };
	struct ferry_report rep;

	pair_start(&p, &guest);
	ck_assert_msg(migrate(&p, &o, &rep, &err) == 0, "%s", err.msg);
	ck_assert_uint_ge(rep.throttle_pct_max, 60);
	ck_assert(!rep.postcopy);
	ck_assert(!rep.has_postcopy_blocktime);
	ck_assert_int_ge(count_events(&p, "throttle"), 1);
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/* The predictive policy switches to post-copy; destination left paused,
 * so both sides are quiescent at the end and RAM must match. */
START_TEST(postcopy_auto_tunnel_paused)
{
	struct pair p;
	struct ferry_migrate_opts o = { .paused = true, .timeout_s = 120,
		.no_handoff = true, .converge.postcopy = FERRY_POSTCOPY_AUTO };
	struct ferry_error err = { 0 };
	struct ferry_report rep;

	pair_start(&p, &guest);
	ck_assert_msg(migrate(&p, &o, &rep, &err) == 0, "%s", err.msg);
	ck_assert(rep.postcopy);
	ck_assert_str_eq(rep.policy, "predict");
	ck_assert_uint_gt(rep.predicted_total_ms, 0);
	ck_assert_int_eq(count_events(&p, "postcopy"), 1);
	ck_assert_int_ge(count_events(&p, "dirty_rate"), 1);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/*
 * Post-copy with the destination running: it faults pages in through
 * QEMU's return path, which ferry's tunnel carries back. The guest's own
 * memory invariant holds through it, and its view of the migration is
 * measured from its heartbeats (no limit on it here: bench/ measures).
 */
START_TEST(postcopy_tunnel_running_destination)
{
	struct pair p;
	struct ferry_migrate_opts o = { .timeout_s = 120, .no_handoff = true,
		.converge = { .postcopy = FERRY_POSTCOPY_AFTER_PASS,
			      .postcopy_after_pass = 1 } };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct guest_view v;
	uint64_t base, from, to;

	pair_start(&p, &guest);
	base = vm_now_us();
	usleep((VIEW_BASE_MIN_MS + 100) * 1000);
	from = vm_now_us();
	ck_assert_msg(migrate(&p, &o, &rep, &err) == 0, "%s", err.msg);
	ck_assert(rep.postcopy);
	/* The destination counted its vCPUs' wait for pages. */
	ck_assert(rep.has_postcopy_blocktime);
	ck_assert_msg(vm_wait_heartbeats(p.dst, 20, 20000, &err) == 0,
		      "destination guest does not beat: %s", err.msg);
	to = vm_now_us();
	ck_assert_int_eq(guest_view_of(p.src, p.dst, base, from, to, &v), 0);
	ck_assert(!v.by_beats);
	ck_assert_uint_gt(v.blackout_us, 0);
	ck_assert_uint_ge(v.blackout_at_us, from);
	ck_assert_uint_le(v.lost_us, to - from);
	expect_guest_intact(&p);	/* dumping RAM stalls it: after the view */
	pair_stop(&p);
}
END_TEST

START_TEST(postcopy_direct_paused)
{
	struct pair p;
	struct ferry_migrate_opts o = { .paused = true, .direct = true,
		.timeout_s = 120,
		.converge = { .postcopy = FERRY_POSTCOPY_AFTER_PASS,
			      .postcopy_after_pass = 1 } };
	struct ferry_error err = { 0 };
	struct ferry_report rep;

	pair_start(&p, &guest);
	ck_assert_msg(migrate(&p, &o, &rep, &err) == 0, "%s", err.msg);
	ck_assert(rep.postcopy);
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/*
 * Cut once the destination itself runs post-copy (it holds pages the
 * source no longer has: the case where a lost connection would lose the
 * guest). Before that, a broken stream fails QEMU's switchover and the
 * destination QEMU exits: nothing to recover there.
 */
struct cutter {
	struct proxy px;
	uint64_t postcopy_seen_ms;
	struct vm *dst;
};

static void cut_in_postcopy(const struct ferry_progress *pr, void *opaque)
{
	struct cutter *c = opaque;

	if (pr->postcopy && !c->postcopy_seen_ms)
		c->postcopy_seen_ms = ferry_now_ms();
	if (c->postcopy_seen_ms && !c->px.cuts &&
	    ferry_now_ms() - c->postcopy_seen_ms >= 500) {
		struct mig_info di;

		/* Only once the destination itself runs post-copy. */
		if (mig_query(vm_qmp(c->dst), &di, NULL) == 0 &&
		    !strcmp(di.status, "postcopy-active"))
			proxy_cut(&c->px);
	}
}

START_TEST(postcopy_recovers_after_cut)
{
	struct pair p;
	struct cutter cut = { 0 };
	struct ferry_receiver_opts ro = { .once = true };
	struct ferry_migrate_opts o = { .timeout_s = 120,
		.codec = FERRY_CODEC_NONE, .max_bandwidth_bytes_per_s = CAP_BYTES_S / 2,
		.no_handoff = _i == 0,	/* the tunnel, then hand-off (twice) */
		.progress = cut_in_postcopy, .progress_interval_ms = 100,
		.converge = { .postcopy = FERRY_POSTCOPY_AFTER_PASS,
			      .postcopy_after_pass = 1 } };
	struct rx_thread rx = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	struct ferry_migration *m;
	char events[128];

	pair_start(&p, &guest);
	pair_rx_start(&p, &rx, &ro);
	ck_assert_int_eq(proxy_start(&cut.px, rx.port), 0);
	cut.dst = p.dst;
	/* The third time only ferry's control connection breaks, while
	 * QEMU's handed-off stream goes on: ferry pauses it to resume both. */
	cut.px.control_only = _i == 2;
	ck_assert_int_eq(vm_qmp_connect(p.dst, &err), 0);
	snprintf(events, sizeof(events), "%s/events.jsonl", p.dir);
	o.to_host = "127.0.0.1";
	o.to_port = cut.px.port;
	o.qmp_path = vm_qmp_path(p.src);
	o.progress_opaque = &cut;
	o.converge.events_path = events;
	m = ferry_migration_new(&o, &err);
	ck_assert_msg(m, "%s", err.msg);
	if (ferry_migration_run(m, &rep, &err) != 0) {
		char cmd[256];

		snprintf(cmd, sizeof(cmd), "tail -30 %s/qemu.log >&2", vm_dir(p.dst));
		if (system(cmd) != 0) {
			/* no log */
		}
		ck_abort_msg("%s", err.msg);
	}
	ferry_migration_free(m);
	rx_thread_join(&rx);
	ck_assert_msg(rx.rc == 0, "receiver: %s", rx.err.msg);
	proxy_stop(&cut.px);
	ck_assert_int_eq(cut.px.cuts, 1);
	ck_assert_str_eq(rep.transport, _i == 0 ? "tunnel" : "handoff");
	ck_assert(rep.postcopy);
	ck_assert_uint_ge(rep.recoveries, 1);
	ck_assert_int_ge(count_events(&p, "recovered"), 1);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "running");
	ck_assert_msg(vm_wait_heartbeats(p.dst, 20, 20000, &err) == 0,
		      "destination guest does not beat after recovery: %s", err.msg);
	pair_stop(&p);
}
END_TEST

/* Does @p's events file have a line for @event yet? */
static bool has_event(struct pair *p, const char *event)
{
	char path[128], line[8192], want[64];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "%s/events.jsonl", p->dir);
	snprintf(want, sizeof(want), "\"event\":\"%s\"", event);
	f = fopen(path, "r");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, want) != NULL;
	fclose(f);
	return found;
}

/* ---- --direct: QEMU's own connection breaks during post-copy ---- */

struct pauser {
	struct vm *src, *dst;
	uint64_t postcopy_seen_ms;
	int pauses;
};

/* migrate-pause on the source QEMU shuts its migration socket down, as a
 * network break would; only once the destination runs post-copy. */
static void pause_in_postcopy(const struct ferry_progress *pr, void *opaque)
{
	struct pauser *ps = opaque;
	struct mig_info di;

	if (pr->postcopy && !ps->postcopy_seen_ms)
		ps->postcopy_seen_ms = ferry_now_ms();
	if (!ps->postcopy_seen_ms || ps->pauses ||
	    ferry_now_ms() - ps->postcopy_seen_ms < 300)
		return;
	if (mig_query(vm_qmp(ps->dst), &di, NULL) == 0 &&
	    !strcmp(di.status, "postcopy-active") &&
	    qmp_execute(vm_qmp(ps->src), "migrate-pause", NULL, NULL, 5000,
			NULL) == 0)
		ps->pauses++;
}

START_TEST(postcopy_direct_recovers)
{
	struct pair p;
	struct pauser ps = { 0 };
	struct ferry_migrate_opts o = { .paused = true, .direct = true,
		.timeout_s = 120, .progress = pause_in_postcopy,
		.progress_interval_ms = 100, .progress_opaque = &ps,
		.converge = { .postcopy = FERRY_POSTCOPY_AFTER_PASS,
			      .postcopy_after_pass = 1 } };
	struct ferry_error err = { 0 };
	struct ferry_report rep;

	pair_start(&p, &guest);
	ps.src = p.src;
	ps.dst = p.dst;
	ck_assert_int_eq(vm_qmp_connect(p.src, &err), 0);
	ck_assert_int_eq(vm_qmp_connect(p.dst, &err), 0);
	ck_assert_msg(migrate(&p, &o, &rep, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ps.pauses, 1);
	ck_assert(rep.postcopy);
	ck_assert_uint_ge(rep.recoveries, 1);
	ck_assert_int_ge(count_events(&p, "recovered"), 1);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

/*
 * SIGINT, then SIGTERM, to `ferry migrate` during post-copy: it refuses to
 * abandon the guest (whose memory is split between the hosts), says so,
 * and finishes the migration; the RAM is equal afterwards.
 */
START_TEST(signals_in_postcopy_refused)
{
	struct pair p;
	struct ferry_error err = { 0 };
	uint16_t port = proc_free_port();
	char to[32], events[128], out[8192];
	char *argv[] = { getenv("FERRY_BIN"), "migrate", "--qmp", NULL, "--to", to,
			 "--bandwidth", "24", "--compress", "none", "--postcopy",
			 "after-pass=1", "--paused", "--events", events, "--json",
			 NULL };
	uint64_t deadline;
	json_t *rep;
	pid_t rx, mig;
	int fd;

	pair_start(&p, &guest);
	ck_assert_msg(proc_spawn_receiver(vm_qmp_path(p.dst), port, &rx, &err) == 0,
		      "ferry receive: %s", err.msg);
	snprintf(to, sizeof(to), "127.0.0.1:%u", port);
	snprintf(events, sizeof(events), "%s/events.jsonl", p.dir);
	argv[3] = (char *)vm_qmp_path(p.src);
	ck_assert_msg(proc_spawn(argv, &fd, &mig, &err) == 0, "%s", err.msg);
	deadline = ferry_now_ms() + 60000;
	while (!has_event(&p, "postcopy") && ferry_now_ms() < deadline)
		usleep(20 * 1000);
	ck_assert_msg(has_event(&p, "postcopy"), "never switched to post-copy");
	kill(mig, SIGINT);
	usleep(200 * 1000);
	kill(mig, SIGTERM);
	proc_read_all(fd, out, sizeof(out));
	ck_assert_int_eq(proc_wait(mig), 0);
	rep = json_loads(out, 0, NULL);
	ck_assert_msg(rep, "no JSON report: '%s'", out);
	ck_assert_str_eq(json_string_value(json_object_get(rep, "status")),
			 "completed");
	ck_assert(json_is_true(json_object_get(rep, "postcopy")));
	json_decref(rep);
	ck_assert_int_ge(count_events(&p, "cancel_refused"), 1);
	ck_assert_int_eq(proc_wait(rx), 0);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	pair_stop(&p);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("converge");
	TCase *tc = tcase_create("converge");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, no_help_times_out_and_aborts);
	tcase_add_test(tc, auto_converge_completes);
	tcase_add_test(tc, postcopy_auto_tunnel_paused);
	tcase_add_test(tc, postcopy_tunnel_running_destination);
	tcase_add_test(tc, postcopy_direct_paused);
	tcase_add_loop_test(tc, postcopy_recovers_after_cut, 0, 3);
	tcase_add_test(tc, postcopy_direct_recovers);
	tcase_add_test(tc, signals_in_postcopy_refused);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
