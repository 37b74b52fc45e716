/*
 * The CONFIG message (wire_config_decode): the source QEMU's command
 * line, which a receiving service that launches destination QEMUs hands
 * to its launcher. The input is the payload; the header says CONFIG and
 * its length, and the payload is NUL-terminated after it, as
 * net_ctrl_recv() leaves it.
 *
 * Checked against the format written independently here (wire.h): empty,
 * or arguments of printable ASCII each ended by a NUL, at most
 * WIRE_CONFIG_ARGS_MAX of them. A payload is accepted exactly when it
 * follows that; then the arguments are the payload cut at its NULs, in
 * order, and encode back to the same bytes.
 */
#include <string.h>

#include "fuzz.h"
#include "transport/wire.h"

static bool follows_format(const uint8_t *p, size_t len)
{
	uint32_t args = 0;

	if (len && p[len - 1] != '\0')
		return false;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\0')
			args++;
		else if (p[i] < 0x20 || p[i] > 0x7e)
			return false;
	}
	return args <= WIRE_CONFIG_ARGS_MAX;
}

static void check_args(const uint8_t *p, size_t len, const char **argv,
		       uint32_t argc)
{
	struct ferry_error err = { 0 };
	const char *at = (const char *)p;
	uint8_t *out = malloc(len ? len : 1);

	FUZZ_CHECK(out);
	FUZZ_CHECK(argc <= WIRE_CONFIG_ARGS_MAX);
	for (uint32_t i = 0; i < argc; i++) {
		FUZZ_CHECK(argv[i] == at);
		at += strlen(at) + 1;
	}
	FUZZ_CHECK(at == (const char *)p + len);
	FUZZ_CHECK(wire_config_encode((char *const *)argv, argc, out,
				      (uint32_t)len, &err) == (int)len);
	FUZZ_CHECK(memcmp(out, p, len) == 0);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire_ctrl_hdr h = { .len = (uint32_t)size,
				   .type = WIRE_CTRL_CONFIG };
	struct ferry_error err = { 0 };
	const char **argv;
	uint8_t *payload;
	uint32_t argc = 0;
	int rc;

	if (size > WIRE_CTRL_PAYLOAD_MAX)
		return 0;
	payload = malloc(size + 1);
	argv = malloc(WIRE_CONFIG_ARGS_MAX * sizeof(*argv));
	FUZZ_CHECK(payload && argv);
	memcpy(payload, data, size);
	payload[size] = '\0';
	rc = wire_config_decode(&h, payload, argv, &argc, &err);
	FUZZ_CHECK_ERR(rc, err);
	FUZZ_CHECK((rc == 0) == follows_format(data, size));
	if (rc == 0)
		check_args(payload, size, argv, argc);
	free(argv);
	free(payload);
	return 0;
}
