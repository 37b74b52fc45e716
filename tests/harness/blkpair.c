/* The disks of a pair for block migration tests (see blkpair.h). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qmp/qmp.h"
#include "tests/harness/blkpair.h"

/* The CD-ROM image: a few MiB, all data. */
#define BLKPAIR_ISO_MIB 6

void blkpair_make_raw(const char *path, uint64_t size, uint32_t data_mib,
		      uint32_t seed)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	uint8_t *buf = malloc(MiB);

	ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
	for (uint32_t m = 0; m < data_mib; m++) {
		if (m % 4 == 2)
			continue;	/* holes among the data */
		for (uint32_t i = 0; i < MiB; i += 4) {
			uint32_t v = (m * 2654435761u) ^ (i * 40503u) ^ seed;

			memcpy(buf + i, &v, 4);
		}
		ck_assert_int_eq(pwrite(fd, buf, MiB, (off_t)m * MiB), (ssize_t)MiB);
	}
	free(buf);
	close(fd);
}

void expect_command_ok(const char *cmd)
{
	int rc = system(cmd);

	ck_assert_msg(rc == 0, "'%s' exited with %d", cmd, rc);
}

/* The blank destination image d->dst_img: raw, or qemu-img's @fmt. */
static void make_blank_dst(const struct blkpair *d)
{
	char cmd[512];

	if (!strcmp(d->dst_fmt, "raw")) {
		blkpair_make_raw(d->dst_img, d->dst_size, 0, 0);
		return;
	}
	snprintf(cmd, sizeof(cmd), "qemu-img create -q -f %s %s %llu",
		 d->dst_fmt, d->dst_img, (unsigned long long)d->dst_size);
	expect_command_ok(cmd);
}

/* QEMU args for disk vdisk0 on @img (format @fmt) and, with @iso, the
 * CD-ROM cd0 on it. */
static void disk_args(char *out, size_t len, const char *fmt, const char *img,
		      const char *iso)
{
	char cd[300] = "";

	if (iso)
		snprintf(cd, sizeof(cd), " -drive if=none,id=cdrive,format=raw,"
			 "media=cdrom,readonly=on,file=%s -device ide-cd,"
			 "drive=cdrive,id=cd0", iso);
	snprintf(out, len, "-drive if=none,id=drive0,format=%s,file=%s "
		 "-device virtio-blk-pci,drive=drive0,id=vdisk0%s", fmt, img, cd);
}

void blkpair_start(struct pair *p, struct blkpair *d,
		   const struct blkpair_opts *o)
{
	const char *fmt = o->dst_fmt ? o->dst_fmt : "raw";
	char sargs[PAIR_ARGS_MAX], dargs[PAIR_ARGS_MAX];
	struct pair_opts po = { .mem_mib = BLKPAIR_MEM_MIB, .fill = "mix",
				.src_args = sargs, .dst_args = dargs };

	ck_assert_msg(strlen(fmt) < sizeof(d->dst_fmt), "image format '%s'", fmt);
	memset(d, 0, sizeof(*d));
	pair_make_dir(p, "ferry-block");
	snprintf(d->src_img, sizeof(d->src_img), "%s/src.raw", p->dir);
	snprintf(d->dst_img, sizeof(d->dst_img), "%s/dst.%s", p->dir, fmt);
	snprintf(d->dst_fmt, sizeof(d->dst_fmt), "%s", fmt);
	d->dst_size = o->dst_size ? o->dst_size : o->size;
	blkpair_make_raw(d->src_img, o->size, o->data_mib, 1);
	make_blank_dst(d);
	if (o->cdrom) {
		snprintf(d->iso, sizeof(d->iso), "%s/config.iso", p->dir);
		snprintf(d->dst_iso, sizeof(d->dst_iso), "%s/dst-config.iso", p->dir);
		blkpair_make_raw(d->iso, BLKPAIR_ISO_MIB * MiB, BLKPAIR_ISO_MIB, 7);
		blkpair_make_raw(d->dst_iso, BLKPAIR_ISO_MIB * MiB, 0, 0);
	}
	disk_args(sargs, sizeof(sargs), "raw", d->src_img,
		  o->cdrom ? d->iso : NULL);
	disk_args(dargs, sizeof(dargs), fmt, d->dst_img,
		  o->cdrom ? d->dst_iso : NULL);
	pair_start_vms(p, &po);
}

void blkpair_new_dst(struct pair *p, struct blkpair *d)
{
	ck_assert_str_eq(d->dst_fmt, "raw");
	/* The old QEMU lets go of the image before it is made anew. */
	vm_stop(p->dst);
	p->dst = NULL;
	make_blank_dst(d);
	pair_new_dst(p);
}

int blkpair_migrate(struct pair *p, struct ferry_migrate_opts *o,
		    struct ferry_report *rep, struct ferry_error *err,
		    struct rx_thread *rx)
{
	o->paused = true;
	o->progress_interval_ms = o->progress_interval_ms ?
				  o->progress_interval_ms : 100;
	o->block.enabled = true;
	return pair_migrate(p, o, NULL, rx, rep, err);
}

void expect_source_clean(struct vm *vm)
{
	struct ferry_error err = { 0 };
	json_t *ret = NULL, *n;
	size_t i;

	ck_assert_msg(qmp_execute(vm_qmp(vm), "query-block-jobs", NULL, &ret,
				  VM_QMP_TIMEOUT_MS, &err) == 0, "%s", err.msg);
	ck_assert_msg(json_array_size(ret) == 0, "%zu block jobs left on the "
		      "source", json_array_size(ret));
	json_decref(ret);
	ck_assert_msg(qmp_execute(vm_qmp(vm), "query-named-block-nodes",
				  json_pack("{s:b}", "flat", 1), &ret,
				  VM_QMP_TIMEOUT_MS, &err) == 0, "%s", err.msg);
	json_array_foreach(ret, i, n) {
		const char *name = json_string_value(json_object_get(n, "node-name"));

		ck_assert_msg(!name || strncmp(name, "ferry-", 6),
			      "node %s left on the source", name);
	}
	json_decref(ret);
}

bool blkpair_mirror_running(struct vm *vm)
{
	json_t *ret = NULL, *job;
	bool found = false;
	size_t i;

	if (qmp_execute(vm_qmp(vm), "query-block-jobs", NULL, &ret,
			VM_QMP_TIMEOUT_MS, NULL) < 0)
		return false;
	json_array_foreach(ret, i, job)
		found |= !strcmp(json_string_value(json_object_get(job, "device")) ?:
				 "", "ferry-mirror-vdisk0");
	json_decref(ret);
	return found;
}
