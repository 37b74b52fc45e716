/*
 * The disk manifest (wire_disks_decode): the DISKS payload a receiver
 * gets from the source before it checks and opens the destination's
 * disks. The input is the payload, of at most WIRE_CTRL_PAYLOAD_MAX bytes
 * as a control message carries it.
 *
 * An accepted manifest lists 1 to WIRE_DISKS_MAX disks with valid,
 * distinct ids and sizes in range, and encodes back to the same bytes.
 */
#include <string.h>

#include "fuzz.h"
#include "transport/wire.h"

static void check_manifest(const uint8_t *in, uint32_t len,
			   const struct wire_disk *d, uint32_t n)
{
	struct ferry_error err = { 0 };
	uint8_t *out = malloc(len);
	int rc;

	FUZZ_CHECK(n >= 1 && n <= WIRE_DISKS_MAX);
	for (uint32_t i = 0; i < n; i++) {
		FUZZ_CHECK(wire_disk_id_valid(d[i].id));
		FUZZ_CHECK(d[i].size >= 1 && d[i].size <= WIRE_DISK_SIZE_MAX);
		for (uint32_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(d[i].id, d[j].id) != 0);
	}
	FUZZ_CHECK(out);
	rc = wire_disks_encode(d, n, out, len, &err);
	FUZZ_CHECK(rc == (int)len);
	FUZZ_CHECK(memcmp(out, in, len) == 0);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ferry_error err = { 0 };
	struct wire_disk *d;
	uint32_t n = 0;
	int rc;

	if (size > WIRE_CTRL_PAYLOAD_MAX)
		return 0;
	/* Room for exactly the most disks a manifest may list. */
	d = malloc(WIRE_DISKS_MAX * sizeof(*d));
	FUZZ_CHECK(d);
	rc = wire_disks_decode(data, (uint32_t)size, d, &n, &err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc == 0)
		check_manifest(data, (uint32_t)size, d, n);
	free(d);
	return 0;
}
