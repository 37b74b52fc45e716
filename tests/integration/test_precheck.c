/*
 * The pre-check of what the guest is made of, before a byte of it moves:
 * a destination QEMU with another machine type, another CPU model, a
 * device the source lacks, or lacking one the source has, is refused with
 * the difference named, and nothing is changed on either QEMU: the source
 * guest runs on without a migration, the destination still waits for one
 * (and is not burnt: it is offered again).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mig.h"
#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/rx.h"
#include "tests/harness/vm.h"

static const struct {
	const char *src_args, *dst_args, *want;
	double ram_ratio;	/* the service's overcommit ratio; 0: 1.0 */
} cases[] = {
	{ "-device virtio-rng-pci,id=rng0", NULL,
	  "devices only on the source: virtio-rng-pci (rng0)", 0 },
	{ NULL, "-device virtio-rng-pci",
	  "devices only here: virtio-rng-pci", 0 },
	{ NULL, "-machine q35",
	  "machine type 'pc-i440fx-7.2-machine' on the source, "
	  "'pc-q35-7.2-machine' here", 0 },
	{ NULL, "-cpu max",
	  "CPU model 'qemu64-x86_64-cpu' on the source, 'max-x86_64-cpu' here; "
	  "start both QEMUs with -cpu qemu64, a model both hosts run", 0 },
	{ NULL, "-cpu qemu64,+popcnt",
	  "CPU features differ under the same model: only on the source: "
	  "none; only here: popcnt; start both QEMUs with -cpu qemu64, a model "
	  "both hosts run", 0 },
	{ "-cpu qemu64,+popcnt,+sse4.2", "-cpu qemu64,+ssse3",
	  "CPU features differ under the same model: only on the source: "
	  "sse4.2, popcnt; only here: ssse3; start both QEMUs with -cpu qemu64", 0 },
	/* A source model that is no model elsewhere: the advice is found
	 * among the models this QEMU runs, by the source guest's features. */
	{ "-cpu max", NULL,
	  "CPU model 'max-x86_64-cpu' on the source, 'qemu64-x86_64-cpu' here; "
	  "start both QEMUs with -cpu ", 0 },
	/* Memory: a registered destination QEMU (preallocated: what it
	 * holds is in use already) on a host with next to no room. */
	{ NULL, NULL, "pre-check: this host cannot take a 64 MiB guest", 0.001 },
};

/* QEMU's migration status on @vm. */
static void expect_migration(struct vm *vm, const char *want)
{
	struct mig_info info;

	ck_assert_int_eq(mig_query(vm_qmp(vm), &info, NULL), 0);
	ck_assert_str_eq(info.status, want);
}

/* A pair made as case @i says, and a receiver of its destination. */
static void start_case(struct pair *p, struct rx_thread *rx,
		       const struct pair_opts *po, double ram_ratio)
{
	struct ferry_receiver_opts ro = { .ram_allocation_ratio = ram_ratio };

	pair_start(p, po);
	pair_rx_start(p, rx, &ro);
}

/* One migration attempt that the receiver refuses; its message. */
static void expect_refused(struct pair *p, struct rx_thread *rx,
			   struct ferry_migrate_opts *o, const char *want)
{
	struct ferry_error err = { 0 };
	struct ferry_migration *m;
	struct ferry_report rep;

	o->to_host = "127.0.0.1";
	o->to_port = rx->port;
	o->qmp_path = vm_qmp_path(p->src);
	m = ferry_migration_new(o, &err);
	ck_assert_msg(m, "%s", err.msg);
	ck_assert_int_lt(ferry_migration_run(m, &rep, &err), 0);
	ferry_migration_free(m);
	ck_assert_msg(strstr(err.msg, want), "'%s' not in: %s", want, err.msg);
	ck_assert(rep.source_running);
	ck_assert_uint_eq(rep.wire_bytes, 0);
}

START_TEST(refused)
{
	struct pair_opts po = { .mem_mib = 64, .fill = "mix",
				.src_args = cases[_i].src_args,
				.dst_args = cases[_i].dst_args };
	struct ferry_migrate_opts o = { .codec = FERRY_CODEC_NONE };
	struct rx_thread rx;
	struct pair p;

	start_case(&p, &rx, &po, cases[_i].ram_ratio);
	/* Twice: a refused destination is not burnt, and says it again. */
	for (int attempt = 0; attempt < 2; attempt++)
		expect_refused(&p, &rx, &o, cases[_i].want);
	rx_thread_stop(&rx);
	rx_thread_join(&rx);
	/* Nothing changed on either side. */
	expect_source_alive(&p);
	expect_migration(p.src, "none");
	expect_status(p.dst, "inmigrate");
	expect_migration(p.dst, "none");
	pair_stop(&p);
}
END_TEST

/* Whether @dir holds a shared-storage marker (a file ferry left). */
static bool marker_left(const char *dir)
{
	char cmd[256], out[8] = "";
	FILE *f;

	snprintf(cmd, sizeof(cmd), "ls -A %s | grep -c '^\\.ferry-shared\\.'", dir);
	f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(fgets(out, sizeof(out), f));
	pclose(f);
	return atoi(out) != 0;
}

/*
 * Shared storage: both QEMUs open one image (as on NFS). --block would
 * copy the disk onto itself while the source guest writes it: refused,
 * naming the disk, the image untouched, no marker left, both QEMUs as
 * they were. The same guest then migrates without --block (its disk is
 * already there), RAM verified.
 */
START_TEST(shared_disk)
{
	char img[128], copy[128], args[384], cmd[512];
	struct pair_opts po = { .mem_mib = 64, .fill = "mix", .src_args = args,
				.dst_args = args };
	struct ferry_migrate_opts o = { .codec = FERRY_CODEC_NONE,
					.block = { .enabled = true } };
	struct ferry_error err = { 0 };
	struct ferry_migration *m;
	struct ferry_report rep;
	struct rx_thread rx;
	struct pair p;

	pair_make_dir(&p, NULL);
	snprintf(img, sizeof(img), "%s/disk.raw", p.dir);
	snprintf(copy, sizeof(copy), "%s/disk.orig", p.dir);
	snprintf(cmd, sizeof(cmd), "head -c 8M /dev/urandom > %s && cp %s %s",
		 img, img, copy);
	ck_assert_int_eq(system(cmd), 0);
	snprintf(args, sizeof(args), "-drive file=%s,format=raw,if=none,"
		 "id=drive0 -device virtio-blk-pci,drive=drive0,id=vdisk0", img);
	pair_start_vms(&p, &po);
	pair_rx_start(&p, &rx, NULL);

	expect_refused(&p, &rx, &o, "disk vdisk0: the destination's image ");
	expect_refused(&p, &rx, &o, "is the source's own image (shared storage");
	ck_assert(!marker_left(p.dir));
	expect_status(p.src, "running");
	expect_status(p.dst, "inmigrate");
	expect_same_file(img, copy);

	/* Its disk is already there: memory alone moves. */
	o.block.enabled = false;
	o.paused = true;
	m = ferry_migration_new(&o, &err);
	ck_assert_msg(ferry_migration_run(m, &rep, &err) == 0, "%s", err.msg);
	ferry_migration_free(m);
	rx_thread_stop(&rx);
	rx_thread_join(&rx);
	expect_status(p.src, "postmigrate");
	expect_status(p.dst, "paused");
	expect_same_ram(&p);
	expect_same_file(img, copy);
	pair_stop(&p);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("precheck");
	TCase *tc = tcase_create("guest");
	TCase *td = tcase_create("disk");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, refused, 0, sizeof(cases) / sizeof(cases[0]));
	suite_add_tcase(s, tc);
	tcase_set_timeout(td, 120);
	tcase_add_test(td, shared_disk);
	suite_add_tcase(s, td);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
