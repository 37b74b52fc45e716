/*
 * A source VM running the test guest and a destination VM waiting with
 * -S -incoming defer (preallocated), and the checks that follow a
 * migration: run state, and guest RAM compared byte for byte once both
 * guests are quiescent. For the integration tests (libcheck assertions);
 * each test file includes it once.
 */
#ifndef FERRY_TESTS_PAIR_H
#define FERRY_TESTS_PAIR_H

#include <check.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tests/harness/proc.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

#define PAIR_READY_TIMEOUT_MS 60000

struct pair {
	struct vm *src, *dst;
	char dir[64];		/* scratch: RAM dumps */
};

/* Start both VMs (@mem_mib, @fill, dirtying @ws_mib at @rate_mib_s) and
 * wait for the source guest's READY. */
static __attribute__((unused)) void pair_start_mem(struct pair *p, uint32_t mem_mib, const char *fill,
			   uint32_t ws_mib, uint32_t rate_mib_s)
{
	struct vm_config sc = { .mem_mib = mem_mib, .fill = fill,
				.ws_mib = ws_mib, .rate_mib_s = rate_mib_s };
	struct vm_config dc = sc;
	struct ferry_error err = { 0 };

	dc.incoming = true;
	dc.prealloc = true;
	ck_assert_int_eq(tmpdir_make(p->dir, sizeof(p->dir), "ferry-test"), 0);
	ck_assert_msg(vm_start(&p->src, &sc, &err) == 0, "source: %s", err.msg);
	ck_assert_msg(vm_start(&p->dst, &dc, &err) == 0, "destination: %s", err.msg);
	ck_assert_msg(vm_wait_ready(p->src, PAIR_READY_TIMEOUT_MS, &err) == 0,
		      "guest not ready: %s", err.msg);
}

static __attribute__((unused)) void pair_stop(struct pair *p)
{
	vm_stop(p->src);
	vm_stop(p->dst);
	tmpdir_remove(p->dir);
}

/* @vm's QEMU is alive and in run state @want. */
static __attribute__((unused)) void expect_status(struct vm *vm, const char *want)
{
	struct ferry_error err = { 0 };
	char st[32];

	ck_assert_msg(vm_alive(vm), "QEMU exited (expected '%s')", want);
	ck_assert_msg(vm_status_settled(vm, st, sizeof(st), &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(strcmp(st, want) == 0, "VM is '%s', expected '%s'", st, want);
}

/* Both guests quiescent: their RAM must be equal, byte for byte. */
static __attribute__((unused)) void expect_same_ram(struct pair *p)
{
	struct ferry_error err = { 0 };
	char a[128], b[128];
	uint64_t diff = 0;
	int eq;

	snprintf(a, sizeof(a), "%s/src.ram", p->dir);
	snprintf(b, sizeof(b), "%s/dst.ram", p->dir);
	ck_assert_msg(vm_pmemsave(p->src, a, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_pmemsave(p->dst, b, &err) == 0, "%s", err.msg);
	eq = vm_files_equal(a, b, &diff, &err);
	ck_assert_msg(eq >= 0, "%s", err.msg);
	ck_assert_msg(eq == 1, "guest RAM differs at byte %llu",
		      (unsigned long long)diff);
	unlink(a);
	unlink(b);
}

/* `ferry list` shows the journal's one migration of @side as @status. */
static __attribute__((unused)) void
expect_listed(const char *dir, const char *side, const char *status)
{
	struct ferry_error err = { 0 };
	char st[32];

	ck_assert_msg(proc_list_status(dir, side, st, sizeof(st), &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(!strcmp(st, status), "ferry list: %s migration is '%s', "
		      "expected '%s'", side, st, status);
}

#endif /* FERRY_TESTS_PAIR_H */
