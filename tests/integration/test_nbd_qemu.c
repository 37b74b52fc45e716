/*
 * ferry's NBD server with QEMU's own NBD client (qemu-io from Debian's
 * qemu-utils) on a private unix socket: writes, zero writes, a discard, a
 * flush and pattern-checked reads through the real client, then the
 * backing file checked byte for byte.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/harness/proc.h"
#include "tests/harness/tmpdir.h"
#include "transport/nbd.h"

#define MiB (1u << 20)
#define DISK_BYTES (8 * MiB)

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

static uint8_t pat(uint64_t i)
{
	return (uint8_t)(i * 7 + (i >> 12));
}

/* The byte qemu-io's script below leaves at @i. */
static uint8_t expected(uint64_t i)
{
	if (i < MiB)
		return 0xab;
	if (i < 2 * MiB)
		return 0;
	if (i >= 3 * MiB && i < 3 * MiB + 65536)
		return 0xcd;
	return pat(i);
}

START_TEST(qemu_io_through_ferry_nbd)
{
	struct server s = { 0 };
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct ferry_error err = { 0 };
	char dir[64], sock[128], path[128], uri[200], out[8192];
	char *argv[] = { "/usr/bin/qemu-io", "-f", "raw",
			 "-c", "write -P 0xab 0 1M",
			 "-c", "write -z 1M 1M",
			 "-c", "write -P 0xcd 3M 64k",
			 "-c", "discard 6M 64k",
			 "-c", "flush",
			 "-c", "read -P 0xab 0 1M",
			 "-c", "read -P 0 1M 1M",
			 "-c", "read -P 0xcd 3M 64k",
			 uri, NULL };
	uint8_t *buf = malloc(DISK_BYTES);
	uint64_t bad = UINT64_MAX;
	pthread_t t;
	pid_t pid;
	int fd, rc;

	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-nbd"), 0);
	snprintf(sock, sizeof(sock), "%s/nbd.sock", dir);
	snprintf(path, sizeof(path), "%s/disk.raw", dir);
	snprintf(uri, sizeof(uri), "nbd+unix:///disk0?socket=%s", sock);
	s.file = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(s.file, 0);
	for (uint32_t i = 0; i < DISK_BYTES; i++)
		buf[i] = pat(i);
	ck_assert_int_eq(pwrite(s.file, buf, DISK_BYTES, 0), DISK_BYTES);
	s.ex.name = "disk0";
	s.ex.size = DISK_BYTES;
	nbd_backend_fd(&s.ex.be, &s.file);
	s.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
	ck_assert_int_eq(bind(s.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(s.lfd, 1), 0);
	pthread_create(&t, NULL, server_main, &s);

	ck_assert_msg(proc_spawn(argv, &fd, &pid, &err) == 0, "%s", err.msg);
	proc_read_all(fd, out, sizeof(out));
	rc = proc_wait(pid);
	pthread_join(t, NULL);
	close(s.lfd);
	ck_assert_msg(rc == 0, "qemu-io exited %d: %s", rc, out);
	ck_assert_msg(!strstr(out, "failed") && !strstr(out, "error"),
		      "qemu-io: %s", out);
	ck_assert_msg(s.rc == 0, "server: %s", s.err.msg);
	ck_assert_uint_eq(s.st.errors, 0);
	ck_assert_uint_ge(s.st.bytes_written, MiB + 65536);
	ck_assert_uint_ge(s.st.flushes, 1);

	ck_assert_int_eq(pread(s.file, buf, DISK_BYTES, 0), DISK_BYTES);
	for (uint32_t i = 0; i < DISK_BYTES; i++) {
		/* the discarded range may read back as anything */
		if (i >= 6 * MiB && i < 6 * MiB + 65536)
			continue;
		if (buf[i] != expected(i)) {
			bad = i;
			break;
		}
	}
	ck_assert_msg(bad == UINT64_MAX, "disk byte %llu is 0x%02x, expected 0x%02x",
		      (unsigned long long)bad, buf[bad], expected(bad));
	free(buf);
	close(s.file);
	tmpdir_remove(dir);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("nbd_qemu");
	TCase *tc = tcase_create("nbd_qemu");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, qemu_io_through_ferry_nbd);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
