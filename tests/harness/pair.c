/* A migration's two VMs and the checks that follow one (see pair.h). */
#include <check.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/stats.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/view.h"

void pair_start(struct pair *p, const struct pair_opts *o)
{
	pair_make_dir(p, o->dir_prefix);
	pair_start_vms(p, o);
}

void pair_make_dir(struct pair *p, const char *prefix)
{
	int rc = tmpdir_make(p->dir, sizeof(p->dir), prefix ? prefix : "ferry-test");

	ck_assert_msg(rc == 0, "scratch directory /tmp/%s.XXXXXX: %s",
		      prefix ? prefix : "ferry-test", strerror(-rc));
}

void pair_start_vms(struct pair *p, const struct pair_opts *o)
{
	struct vm_config sc = { .mem_mib = o->mem_mib, .fill = o->fill,
				.ws_mib = o->ws_mib, .rate_mib_s = o->rate_mib_s,
				.extra_args = o->src_args };
	struct ferry_error err = { 0 };

	ck_assert_msg(!o->dst_args || strlen(o->dst_args) < sizeof(p->dst_args),
		      "destination QEMU args longer than %zu bytes",
		      sizeof(p->dst_args) - 1);
	snprintf(p->dst_args, sizeof(p->dst_args), "%s",
		 o->dst_args ? o->dst_args : "");
	/* The same guest as the source's, so that it can migrate in. */
	p->dst_cfg = sc;
	p->dst_cfg.incoming = true;
	p->dst_cfg.prealloc = true;
	p->dst_cfg.extra_args = NULL;	/* p->dst_args, at each start */
	p->src = NULL;
	p->dst = NULL;
	ck_assert_msg(vm_start(&p->src, &sc, &err) == 0, "source: %s", err.msg);
	if (!o->no_dst)
		pair_new_dst(p);
	ck_assert_msg(vm_wait_ready(p->src, PAIR_READY_TIMEOUT_MS, &err) == 0,
		      "guest not ready: %s", err.msg);
}

void pair_new_dst(struct pair *p)
{
	struct vm_config dc = p->dst_cfg;
	struct ferry_error err = { 0 };

	/* Taken from the pair here, not when it started: a struct pair may
	 * have been copied since. */
	dc.extra_args = p->dst_args[0] ? p->dst_args : NULL;
	vm_stop(p->dst);
	p->dst = NULL;
	ck_assert_msg(vm_start(&p->dst, &dc, &err) == 0, "destination: %s",
		      err.msg);
}

void pair_stop(struct pair *p)
{
	vm_stop(p->src);
	vm_stop(p->dst);
	p->src = NULL;
	p->dst = NULL;
	tmpdir_remove(p->dir);
}

void pair_rx_start(struct pair *p, struct rx_thread *rx,
		   const struct ferry_receiver_opts *ro)
{
	struct ferry_receiver_opts o = { 0 };

	if (ro)
		o = *ro;
	o.listen_host = "127.0.0.1";
	o.qmp_path = vm_qmp_path(p->dst);
	ck_assert_msg(rx_thread_start(rx, &o, NULL, &rx->err) == 0, "receiver: %s",
		      rx->err.msg);
}

int pair_migrate(struct pair *p, struct ferry_migrate_opts *o,
		 const struct ferry_receiver_opts *ro, struct rx_thread *rx,
		 struct ferry_report *rep, struct ferry_error *err)
{
	struct ferry_receiver_opts once = { 0 };
	struct ferry_migration *m;
	int rc;

	if (ro)
		once = *ro;
	once.once = true;
	pair_rx_start(p, rx, &once);
	o->to_host = "127.0.0.1";
	o->to_port = rx->port;
	o->qmp_path = vm_qmp_path(p->src);
	m = ferry_migration_new(o, err);
	ck_assert_msg(m, "%s", err->msg);
	rc = ferry_migration_run(m, rep, err);
	ferry_migration_free(m);
	/* A migration refused before READY does not end a --once receiver. */
	if (rc)
		rx_thread_stop(rx);
	rx_thread_join(rx);
	return rc;
}

void expect_status(struct vm *vm, const char *want)
{
	struct ferry_error err = { 0 };
	char st[32];

	ck_assert_msg(vm_alive(vm), "QEMU exited (expected '%s')", want);
	ck_assert_msg(vm_status_settled(vm, st, sizeof(st), &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(strcmp(st, want) == 0, "VM is '%s', expected '%s'", st, want);
}

void expect_guest_runs(struct vm *vm, const char *who)
{
	struct ferry_error err = { 0 };

	expect_status(vm, "running");
	ck_assert_msg(vm_wait_heartbeats(vm, PAIR_ALIVE_HEARTBEATS,
					 PAIR_ALIVE_TIMEOUT_MS, &err) == 0,
		      "%s guest stopped beating: %s", who, err.msg);
}

void expect_source_alive(struct pair *p)
{
	expect_guest_runs(p->src, "source");
}

void expect_same_vm_ram(struct vm *a, struct vm *b, const char *dir)
{
	struct ferry_error err = { 0 };
	uint64_t diff = 0;
	int eq = stats_same_ram_from(dir, a, b, 0, &diff, &err);

	ck_assert_msg(eq >= 0, "%s", err.msg);
	ck_assert_msg(eq == 1, "guest RAM differs at byte %llu",
		      (unsigned long long)diff);
}

void expect_same_ram(struct pair *p)
{
	expect_same_vm_ram(p->src, p->dst, p->dir);
}

void expect_same_file(const char *a, const char *b)
{
	struct ferry_error err = { 0 };
	uint64_t diff = 0;
	int eq = vm_files_equal(a, b, &diff, &err);

	ck_assert_msg(eq >= 0, "%s", err.msg);
	ck_assert_msg(eq == 1, "%s and %s differ at byte %llu", a, b,
		      (unsigned long long)diff);
}

void expect_listed(const char *dir, const char *side, const char *status)
{
	struct ferry_error err = { 0 };
	char st[32];

	ck_assert_msg(proc_list_status(dir, side, st, sizeof(st), &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(!strcmp(st, status), "ferry list: %s migration is '%s', "
		      "expected '%s'", side, st, status);
}

void expect_guest_intact(struct pair *p)
{
	struct ferry_error err = { 0 };

	expect_status(p->dst, "running");
	ck_assert_msg(guest_intact(p->dir, p->src, p->dst, &err) == 0, "%s",
		      err.msg);
}
