/*
 * The pre-shared key file (QEMU's keys.psk format, "identity:hexkey"
 * lines), read by tls_ctx_new() for --tls-psk. The operator gives the
 * path, but the file may be anything: another tool's output, a truncated
 * copy, binary garbage. The first input byte picks the side: bit 0 the
 * receiver (every key is loaded), else the source, with bit 1 asking for
 * the identity "ferry" (else the first key). The rest is the file.
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "transport/tls.h"

static const char *psk_path;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	psk_path = fuzz_tmp_path("keys.psk");
	return 0;
}

static void write_file(const uint8_t *data, size_t size)
{
	int fd = open(psk_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	FUZZ_CHECK(fd >= 0);
	FUZZ_CHECK(write(fd, data, size) == (ssize_t)size);
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ferry_tls_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct tls_ctx *c = NULL;
	bool server;
	int rc;

	if (size < 1)
		return 0;
	server = data[0] & 1;
	o.psk_file = psk_path;
	o.psk_identity = !server && (data[0] & 2) ? "ferry" : NULL;
	write_file(data + 1, size - 1);
	rc = tls_ctx_new(&c, &o, server, &err);
	FUZZ_CHECK_ERR(rc, err);
	FUZZ_CHECK((rc == 0) == (c != NULL));
	if (c)
		FUZZ_CHECK(strcmp(tls_ctx_mode(c), "psk") == 0);
	tls_ctx_free(c);
	return 0;
}
