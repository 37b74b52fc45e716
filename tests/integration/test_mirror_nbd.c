/*
 * The first half of block migration, with real QEMU: a running VM's disk
 * mirrored by QEMU's blockdev-mirror into ferry's NBD server (on a private
 * unix socket), while QEMU itself writes to the disk (HMP qemu-io) before
 * and after the mirror is ready. Then the guest is stopped, the job ends
 * in sync (block-job-cancel of a ready mirror), and the image behind the
 * NBD server must equal the source image byte for byte.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "qmp/qmp.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"
#include "transport/nbd.h"

#define MiB (1u << 20)
#define DISK_BYTES (32 * MiB)
#define JOB_TIMEOUT_MS 60000
#define QMP_MS 10000

struct server {
	int lfd, file;
	struct nbd_export ex;
	struct nbd_stats st;
	struct ferry_error err;
	int rc;
};

static void *server_main(void *arg)
{
	struct server *s = arg;
	int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);

	s->rc = fd < 0 ? -errno : nbd_serve(fd, &s->ex, &s->st, &s->err);
	if (fd >= 0)
		close(fd);
	return NULL;
}

/* QEMU writes to its own disk, as a guest would. */
static void qemu_io(struct qmp *q, const char *cmd)
{
	struct ferry_error err = { 0 };
	char line[256];
	json_t *ret = NULL;
	const char *out;

	snprintf(line, sizeof(line), "qemu-io disk0 \"%s\"", cmd);
	ck_assert_msg(qmp_execute(q, "human-monitor-command",
				  json_pack("{s:s}", "command-line", line), &ret,
				  QMP_MS, &err) == 0, "%s", err.msg);
	out = json_string_value(ret);
	/* qemu-io prints its result on QEMU's stdout; what comes back
	 * through the monitor is an error, or nothing. */
	ck_assert_msg(out && (!*out || strstr(out, "wrote")), "qemu-io %s: %s", cmd,
		      out ? out : "(nothing)");
	json_decref(ret);
}

/* Has job "m0" reached @field == true (ready), or gone (@gone)? */
static bool job_state(struct qmp *q, bool *gone)
{
	struct ferry_error err = { 0 };
	json_t *ret = NULL;
	bool ready = false;

	ck_assert_msg(qmp_execute(q, "query-block-jobs", NULL, &ret, QMP_MS,
				  &err) == 0, "%s", err.msg);
	*gone = json_array_size(ret) == 0;
	if (!*gone)
		ready = json_is_true(json_object_get(json_array_get(ret, 0), "ready"));
	json_decref(ret);
	return ready;
}

START_TEST(mirror_into_ferry_nbd)
{
	struct server s = { 0 };
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct ferry_error err = { 0 };
	char dir[64], sock[128], src[128], dst[128], extra[512];
	struct vm_config c = { .mem_mib = 64, .fill = "zero" };
	uint8_t *buf = malloc(DISK_BYTES);
	struct vm *vm = NULL;
	uint64_t deadline, diff = 0;
	struct qmp *q;
	bool gone = false;
	pthread_t t;
	int fd;

	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-mirror"), 0);
	snprintf(sock, sizeof(sock), "%s/nbd.sock", dir);
	snprintf(src, sizeof(src), "%s/src.raw", dir);
	snprintf(dst, sizeof(dst), "%s/dst.raw", dir);
	/* The source disk: a pattern with a hole in the middle. */
	fd = open(src, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	for (uint32_t i = 0; i < DISK_BYTES; i++)
		buf[i] = (i >= 8 * MiB && i < 16 * MiB) ? 0 : (uint8_t)(i * 13 + (i >> 16));
	ck_assert_int_eq(pwrite(fd, buf, DISK_BYTES, 0), DISK_BYTES);
	close(fd);
	free(buf);
	/* The target: an empty file of the same size. */
	s.file = open(dst, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(s.file, 0);
	ck_assert_int_eq(ftruncate(s.file, DISK_BYTES), 0);
	s.ex.name = "disk0";
	s.ex.size = DISK_BYTES;
	nbd_backend_fd(&s.ex.be, &s.file);
	s.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
	ck_assert_int_eq(bind(s.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(s.lfd, 1), 0);
	pthread_create(&t, NULL, server_main, &s);

	snprintf(extra, sizeof(extra),
		 "-drive if=none,id=disk0,format=raw,file=%s "
		 "-device virtio-blk-pci,drive=disk0,id=vdisk0", src);
	c.extra_args = extra;
	ck_assert_msg(vm_start(&vm, &c, &err) == 0, "%s", err.msg);
	ck_assert_msg(vm_wait_ready(vm, 60000, &err) == 0, "%s", err.msg);
	q = vm_qmp(vm);

	ck_assert_msg(qmp_execute(q, "blockdev-add",
		json_pack("{s:s,s:s,s:{s:s,s:s},s:s}", "driver", "nbd",
			  "node-name", "ferry-target", "server", "type", "unix",
			  "path", sock, "export", "disk0"),
		NULL, QMP_MS, &err) == 0, "blockdev-add: %s", err.msg);
	ck_assert_msg(qmp_execute(q, "blockdev-mirror",
		json_pack("{s:s,s:s,s:s,s:s}", "job-id", "m0", "device", "disk0",
			  "target", "ferry-target", "sync", "full"),
		NULL, QMP_MS, &err) == 0, "blockdev-mirror: %s", err.msg);
	qemu_io(q, "write -P 0x5a 1M 1M");		/* during the copy */
	qemu_io(q, "write -z 20M 2M");
	deadline = ferry_now_ms() + JOB_TIMEOUT_MS;
	while (!job_state(q, &gone) && !gone && ferry_now_ms() < deadline)
		usleep(50 * 1000);
	ck_assert_msg(!gone, "the mirror job ended before it was ready");
	ck_assert_msg(ferry_now_ms() < deadline, "the mirror never got ready");
	qemu_io(q, "write -P 0xc3 9M 64k");	/* after ready: mirrored live */
	ck_assert_int_eq(qmp_execute(q, "stop", NULL, NULL, QMP_MS, &err), 0);
	/* A ready mirror that is cancelled stops in sync, without pivoting. */
	ck_assert_msg(qmp_execute(q, "block-job-cancel",
				  json_pack("{s:s}", "device", "m0"), NULL, QMP_MS,
				  &err) == 0, "%s", err.msg);
	while (job_state(q, &gone), !gone && ferry_now_ms() < deadline)
		usleep(50 * 1000);
	ck_assert_msg(gone, "the mirror job did not end");
	ck_assert_msg(qmp_execute(q, "blockdev-del",
				  json_pack("{s:s}", "node-name", "ferry-target"),
				  NULL, QMP_MS, &err) == 0, "%s", err.msg);
	pthread_join(t, NULL);
	close(s.lfd);
	ck_assert_msg(s.rc == 0, "NBD server: %s", s.err.msg);
	ck_assert_uint_eq(s.st.errors, 0);
	ck_assert_uint_gt(s.st.bytes_written, 0);
	/* Compare with the source image as QEMU left it (flushed). */
	ck_assert_int_eq(qmp_execute(q, "human-monitor-command",
				     json_pack("{s:s}", "command-line",
					       "qemu-io disk0 \"flush\""),
				     NULL, QMP_MS, &err), 0);
	ck_assert_int_eq(vm_files_equal(src, dst, &diff, &err), 1);
	vm_stop(vm);
	close(s.file);
	tmpdir_remove(dir);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("mirror_nbd");
	TCase *tc = tcase_create("mirror_nbd");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, mirror_into_ferry_nbd);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
