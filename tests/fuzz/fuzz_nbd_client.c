/*
 * ferry's NBD client (nbd_client_connect and nbd_client_reply) against a
 * server that sends the fuzz input: the greeting, the replies to
 * NBD_OPT_GO, then simple replies, then EOF. The client connects to a
 * unix socket, as it does to the destination QEMU's export; the peer
 * thread accepts, sends the input and drops what the client writes.
 *
 * The first input byte is the client's plan, so the fuzzer can reach the
 * request paths too: bits 0-2 the number of writes (each of 512 bytes
 * more than the last, at 4 KiB steps), bit 3 a WRITE_ZEROES (bit 4: a
 * hole will do), bit 5 a FLUSH, bit 6 one more write after the replies
 * (after a failure it must be refused, not sent). The rest is the
 * server's byte stream. Cookies are 1, 2, ... in the order sent.
 *
 * Checks: every call keeps the error convention; the export's size is
 * what the client may use (at most INT64_MAX); requests in flight never
 * exceed the window and drop to zero as replies come.
 */
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fuzz.h"
#include "peer.h"
#include "transport/nbd_client.h"

#define FUZZ_NBDC_WRITE_STEP 512u
#define FUZZ_NBDC_WRITES_MAX 7
/* Far longer than any wait here: the peer sends EOF after the input. */
#define FUZZ_NBDC_TIMEOUT_MS 5000

static const char *sock_path;
static int listen_fd = -1;
static uint8_t wbuf[FUZZ_NBDC_WRITES_MAX * FUZZ_NBDC_WRITE_STEP];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };

	fuzz_quiet();
	sock_path = fuzz_tmp_path("nbd.sock");
	FUZZ_CHECK(strlen(sock_path) < sizeof(a.sun_path));
	strcpy(a.sun_path, sock_path);
	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	FUZZ_CHECK(listen_fd >= 0);
	FUZZ_CHECK(bind(listen_fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	FUZZ_CHECK(listen(listen_fd, 1) == 0);
	memset(wbuf, 0xa5, sizeof(wbuf));
	return 0;
}

/* Send the planned requests; returns the next cookie. */
static uint64_t send_requests(struct nbd_client *c, uint8_t plan)
{
	struct ferry_error err = { 0 };
	uint64_t cookie = 1;
	int rc;

	for (uint32_t i = 0; i < (plan & 7u); i++) {
		err = (struct ferry_error){ 0 };
		rc = nbd_client_write(c, cookie++, wbuf,
				      (i + 1) * FUZZ_NBDC_WRITE_STEP,
				      (uint64_t)i * 4096, &err);
		FUZZ_CHECK_ERR(rc, err);
	}
	if (plan & (1u << 3)) {
		err = (struct ferry_error){ 0 };
		rc = nbd_client_zero(c, cookie++, 65536, 65536, plan & (1u << 4),
				     &err);
		FUZZ_CHECK_ERR(rc, err);
	}
	if (plan & (1u << 5)) {
		err = (struct ferry_error){ 0 };
		rc = nbd_client_flush(c, cookie++, &err);
		FUZZ_CHECK_ERR(rc, err);
	}
	FUZZ_CHECK(nbd_client_inflight(c) <= NBD_CLIENT_INFLIGHT_MAX);
	return cookie;
}

/* Collect replies until none is in flight or the stream fails. */
static void collect_replies(struct nbd_client *c)
{
	while (nbd_client_inflight(c) > 0) {
		struct ferry_error err = { 0 };
		uint32_t before = nbd_client_inflight(c), nbd_errno;
		uint64_t cookie;
		int rc;

		rc = nbd_client_reply(c, &cookie, &nbd_errno,
				      FUZZ_NBDC_TIMEOUT_MS, &err);
		FUZZ_CHECK_ERR(rc, err);
		if (rc < 0)
			break;
		FUZZ_CHECK(nbd_client_inflight(c) == before - 1);
	}
}

static void run_client(uint8_t plan)
{
	struct ferry_error err = { 0 };
	struct nbd_client *c;
	uint64_t cookie;
	int rc;

	rc = nbd_client_connect(&c, sock_path, "disk0", FUZZ_NBDC_TIMEOUT_MS,
				&err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc < 0) {
		FUZZ_CHECK(c == NULL);
		return;
	}
	FUZZ_CHECK(nbd_client_size(c) <= INT64_MAX);
	cookie = send_requests(c, plan);
	collect_replies(c);
	if (plan & (1u << 6)) {
		err = (struct ferry_error){ 0 };
		rc = nbd_client_write(c, cookie, wbuf, FUZZ_NBDC_WRITE_STEP, 0,
				      &err);
		FUZZ_CHECK_ERR(rc, err);
	}
	nbd_client_close(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_peer peer;

	if (size < 1)
		return 0;
	fuzz_peer_accept(&peer, listen_fd, data + 1, size - 1);
	run_client(data[0]);
	fuzz_peer_join(&peer);
	return 0;
}
