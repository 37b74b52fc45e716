/*
 * ferry's NBD server (nbd_serve) against a client that sends the fuzz
 * input: the handshake's flags and options, then requests with their
 * payloads, then EOF. The first input byte picks the export: bit 0 makes
 * it read-only. The rest is the client's byte stream; the server's
 * replies are read and dropped by the peer thread.
 *
 * The backend is a 1 MiB buffer that checks the server's promise to it
 * (nbd.h): every offset and length was checked against the export before
 * the call, so a range past the end aborts, as would a write reaching a
 * read-only export.
 *
 * nbd_serve() allocates its NBD_PAYLOAD_MAX (32 MiB) buffer per
 * connection. Under ASan each allocation that large maps, poisons and
 * unmaps 4 MiB of shadow memory: some 25 ms of page faults on these
 * machines, which held this harness to 40 inputs a second. So the link
 * wraps malloc and free (fuzz.mk) and that one allocation reuses one
 * buffer: still an ASan heap chunk of exactly that size, so a write past
 * its end is caught.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <sanitizer/asan_interface.h>

#include "fuzz.h"
#include "peer.h"
#include "transport/nbd.h"

#define FUZZ_EXPORT_BYTES (1u << 20)
/* The server drops a silent client after this; the peer's EOF comes
 * first, so it only bounds a server that stopped reading. */
#define FUZZ_NBD_IDLE_MS 5000

static uint8_t *disk;
static void *payload_buf;
static bool payload_busy;

void *__real_malloc(size_t size);
void __real_free(void *p);
void *__wrap_malloc(size_t size);
void __wrap_free(void *p);

/* Only this thread asks for NBD_PAYLOAD_MAX bytes: no lock needed. */
void *__wrap_malloc(size_t size)
{
	if (size != NBD_PAYLOAD_MAX || payload_busy)
		return __real_malloc(size);
	if (!payload_buf)
		payload_buf = __real_malloc(size);
	else
		ASAN_UNPOISON_MEMORY_REGION(payload_buf, size);
	payload_busy = payload_buf != NULL;
	return payload_buf;
}

void __wrap_free(void *p)
{
	if (p && p == payload_buf) {
		payload_busy = false;
		ASAN_POISON_MEMORY_REGION(p, NBD_PAYLOAD_MAX);
		return;
	}
	__real_free(p);
}
static bool read_only;

static void check_range(uint32_t len, uint64_t off)
{
	FUZZ_CHECK(len >= 1 && len <= NBD_PAYLOAD_MAX);
	FUZZ_CHECK(off <= FUZZ_EXPORT_BYTES && len <= FUZZ_EXPORT_BYTES - off);
}

static int mem_pread(void *ctx, void *buf, uint32_t len, uint64_t off)
{
	check_range(len, off);
	memcpy(buf, disk + off, len);
	return 0;
}

static int mem_pwrite(void *ctx, const void *buf, uint32_t len, uint64_t off,
		      bool fua)
{
	FUZZ_CHECK(!read_only);
	check_range(len, off);
	memcpy(disk + off, buf, len);
	return 0;
}

static int mem_zero(void *ctx, uint32_t len, uint64_t off, bool may_trim)
{
	FUZZ_CHECK(!read_only);
	check_range(len, off);
	memset(disk + off, 0, len);
	/* Fail some, so error replies are covered too. */
	return off & 1 ? -ENOSPC : 0;
}

static int mem_trim(void *ctx, uint32_t len, uint64_t off)
{
	FUZZ_CHECK(!read_only);
	check_range(len, off);
	return 0;
}

static int mem_flush(void *ctx)
{
	return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_quiet();
	disk = calloc(1, FUZZ_EXPORT_BYTES);
	FUZZ_CHECK(disk);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nbd_export ex = {
		.name = "disk0",
		.size = FUZZ_EXPORT_BYTES,
		.be = {
			.pread = mem_pread,
			.pwrite = mem_pwrite,
			.zero = mem_zero,
			.trim = mem_trim,
			.flush = mem_flush,
		},
		.idle_timeout_ms = FUZZ_NBD_IDLE_MS,
	};
	struct ferry_error err = { 0 };
	struct nbd_stats st = { 0 };
	struct fuzz_peer peer;
	int fd, rc;

	if (size < 1)
		return 0;
	read_only = data[0] & 1;
	ex.read_only = read_only;
	fd = fuzz_peer_pair(&peer, data + 1, size - 1);
	rc = nbd_serve(fd, &ex, &st, &err);
	FUZZ_CHECK_ERR(rc, err);
	FUZZ_CHECK(st.errors <= st.requests);
	close(fd);
	fuzz_peer_join(&peer);
	return 0;
}
