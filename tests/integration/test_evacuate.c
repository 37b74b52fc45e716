/*
 * Draining a host: three guests on this "host" (their QMP sockets in one
 * registry directory, as the receiving service keeps them) evacuated with
 * `ferry evacuate --parallel 2` to two receiving services (two ports on
 * loopback), one guest made to fail the pre-check (a device no
 * destination has). The other two arrive, RAM verified against their
 * sources; the failing one runs on where it was; the summary and the exit
 * status say one did not move; `ferry list` shows all three.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/rx.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

#define NVMS 3
#define NSVC 2
#define MEM_MIB 64

static const char *const names[NVMS] = { "alpha", "bravo", "charlie" };

struct host {
	char dir[64];		/* NAME.qmp links */
	struct vm *vm[NVMS];
};

static void link_qmp(const char *dir, const char *name, struct vm *vm)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/%s.qmp", dir, name);
	ck_assert_int_eq(symlink(vm_qmp_path(vm), path), 0);
}

static void host_start(struct host *h, bool incoming)
{
	struct ferry_error err = { 0 };

	ck_assert_int_eq(tmpdir_make(h->dir, sizeof(h->dir), "ferry-host"), 0);
	for (int i = 0; i < NVMS; i++) {
		/* charlie has a device no destination has. */
		struct vm_config c = { .mem_mib = MEM_MIB, .fill = "mix",
			.incoming = incoming, .prealloc = incoming, .seed = 7 + i,
			.extra_args = i == 2 && !incoming ?
				      "-device virtio-rng-pci,id=rng0" : NULL };

		ck_assert_msg(vm_start(&h->vm[i], &c, &err) == 0, "%s", err.msg);
		link_qmp(h->dir, names[i], h->vm[i]);
	}
	for (int i = 0; i < NVMS && !incoming; i++)
		ck_assert_msg(vm_wait_ready(h->vm[i], PAIR_READY_TIMEOUT_MS, &err) == 0,
			      "%s", err.msg);
}

static void host_stop(struct host *h)
{
	for (int i = 0; i < NVMS; i++)
		vm_stop(h->vm[i]);
	tmpdir_remove(h->dir);
}

START_TEST(evacuate_three)
{
	struct host src, dst[NSVC];
	struct rx_thread rx[NSVC];
	struct ferry_error err = { 0 };
	char to[64], state[64], out[16384], scratch[64];
	json_t *sum, *e;
	size_t i;
	int fd, rc;
	pid_t pid;

	ck_assert_int_eq(tmpdir_make(state, sizeof(state), "ferry-state"), 0);
	ck_assert_int_eq(tmpdir_make(scratch, sizeof(scratch), "ferry-test"), 0);
	host_start(&src, false);
	for (int s = 0; s < NSVC; s++) {
		struct ferry_receiver_opts o = { .listen_host = "127.0.0.1",
						 .qmp_dir = NULL,
						 .ram_allocation_ratio = 1.5 };

		host_start(&dst[s], true);
		o.qmp_dir = dst[s].dir;
		ck_assert_msg(rx_thread_start(&rx[s], &o, NULL, &rx[s].err) == 0,
			      "%s", rx[s].err.msg);
	}
	snprintf(to, sizeof(to), "127.0.0.1:%u,127.0.0.1:%u", rx[0].port,
		 rx[1].port);
	{
		char *argv[] = { getenv("FERRY_BIN"), "evacuate", "--qmp-dir",
				 src.dir, "--to", to, "--parallel", "2", "--paused",
				 "--compress", "none", "--json", "--state-dir",
				 state, NULL };

		ck_assert_msg(proc_spawn(argv, &fd, &pid, &err) == 0, "%s", err.msg);
		proc_read_all(fd, out, sizeof(out));
		rc = proc_wait(pid);
	}
	/* One did not move, and runs where it was. */
	ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
	sum = json_loads(out, 0, NULL);
	ck_assert_msg(json_array_size(sum) == NVMS, "%s", out);
	json_array_foreach(sum, i, e) {
		const char *status = json_string_value(json_object_get(e, "status"));
		const char *dest = json_string_value(json_object_get(e, "destination"));
		const char *error = json_string_value(json_object_get(e, "error"));

		ck_assert_str_eq(json_string_value(json_object_get(e, "vm")),
				 names[i]);
		if (i == 2) {
			ck_assert_str_eq(status, "failed");
			ck_assert_msg(error && strstr(error, "devices only on the "
					     "source: virtio-rng-pci (rng0)"),
				      "%s", error ? error : "(none)");
			expect_guest_runs(src.vm[i], names[i]);
			continue;
		}
		ck_assert_msg(!strcmp(status, "completed"), "%s: %s", names[i],
			      error ? error : "");
		{
			/* Verify it on the destination it went to. */
			int s = strstr(dest, ":") && (uint16_t)atoi(strchr(dest, ':') + 1) ==
				rx[1].port;

			expect_status(src.vm[i], "postmigrate");
			expect_status(dst[s].vm[i], "paused");
			expect_same_vm_ram(src.vm[i], dst[s].vm[i], scratch);
		}
	}
	json_decref(sum);
	/* ferry list knows all three. */
	{
		char *json;
		json_t *all;
		bool seen[NVMS] = { false };

		ck_assert_msg(ferry_list_json(state, &json, &err) == 0, "%s", err.msg);
		all = json_loads(json, 0, NULL);
		free(json);
		json_array_foreach(all, i, e) {
			const char *vm = json_string_value(json_object_get(e, "vm"));
			const char *st = json_string_value(json_object_get(e, "status"));

			for (int v = 0; v < NVMS; v++) {
				if (!vm || strcmp(vm, names[v]))
					continue;
				seen[v] = true;
				ck_assert_str_eq(st, v == 2 ? "failed" : "completed");
			}
		}
		json_decref(all);
		for (int v = 0; v < NVMS; v++)
			ck_assert_msg(seen[v], "ferry list lacks %s", names[v]);
	}
	for (int s = 0; s < NSVC; s++) {
		rx_thread_stop(&rx[s]);
		rx_thread_join(&rx[s]);
		host_stop(&dst[s]);
	}
	host_stop(&src);
	tmpdir_remove(state);
	tmpdir_remove(scratch);
}
END_TEST

/*
 * ferry migrate --to A,B: the first destination with room has no QEMU
 * for the VM and refuses before anything moves; the VM goes to the next.
 */
START_TEST(migrate_chooses)
{
	struct ferry_error err = { 0 };
	struct rx_thread rx[NSVC];
	char dirs[NSVC][64], to[64], state[64], out[8192], port[16];
	struct pair p;
	int fd, rc;
	pid_t pid;

	ck_assert_int_eq(tmpdir_make(state, sizeof(state), "ferry-state"), 0);
	pair_start(&p, &(struct pair_opts){ .mem_mib = MEM_MIB, .fill = "mix" });
	for (int s = 0; s < NSVC; s++) {
		struct ferry_receiver_opts o = { .listen_host = "127.0.0.1" };

		ck_assert_int_eq(tmpdir_make(dirs[s], sizeof(dirs[s]), "ferry-host"), 0);
		if (s == 1)
			link_qmp(dirs[s], "delta", p.dst);
		o.qmp_dir = dirs[s];
		ck_assert_msg(rx_thread_start(&rx[s], &o, NULL, &rx[s].err) == 0,
			      "%s", rx[s].err.msg);
	}
	snprintf(to, sizeof(to), "127.0.0.1:%u,127.0.0.1:%u", rx[0].port,
		 rx[1].port);
	{
		char *argv[] = { getenv("FERRY_BIN"), "migrate", "--qmp",
				 (char *)vm_qmp_path(p.src), "--vm", "delta",
				 "--to", to, "--paused", "--compress", "none",
				 "--state-dir", state, NULL };

		ck_assert_msg(proc_spawn(argv, &fd, &pid, &err) == 0, "%s", err.msg);
		proc_read_all(fd, out, sizeof(out));
		rc = proc_wait(pid);
	}
	ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
	snprintf(port, sizeof(port), ":%u", rx[1].port);
	ck_assert_msg(strstr(out, "destination: 127.0.0.1") && strstr(out, port),
		      "%s", out);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	for (int s = 0; s < NSVC; s++) {
		rx_thread_stop(&rx[s]);
		rx_thread_join(&rx[s]);
		tmpdir_remove(dirs[s]);
	}
	pair_stop(&p);
	tmpdir_remove(state);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("evacuate");
	TCase *tc = tcase_create("evacuate");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, evacuate_three);
	tcase_add_test(tc, migrate_chooses);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
