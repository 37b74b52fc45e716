/*
 * A disk record as the destination's disk tunnel reads it: the 24-byte
 * header (wire_disk_rec_decode), then the check against the manifest the
 * source sent (wire_disk_rec_check), as blk_dest.c does before it writes
 * a byte. The input is the header, then a manifest (the DISKS payload);
 * when that does not decode, a fixed manifest of two disks stands in.
 *
 * A record that passes both is one the destination may apply: an op the
 * source sends, a length within its op's limit, and for DATA and ZERO a
 * range inside the named disk, without overflow. An accepted header
 * encodes back to the same bytes.
 */
#include <string.h>

#include "common/util.h"
#include "fuzz.h"
#include "transport/wire.h"

static const struct wire_disk fixed[] = {
	{ .id = "vda", .size = 1ull << 30, .allocated = 1ull << 20 },
	{ .id = "cd0", .flags = WIRE_DISK_READ_ONLY, .size = 4096 },
};

static void check_applicable(const struct wire_disk_rec *r,
			     const struct wire_disk *d, uint32_t n)
{
	switch (r->op) {
	case WIRE_DISK_DATA:
		FUZZ_CHECK(r->len >= 1 && r->len <= WIRE_DISK_DATA_MAX);
		/* fall through */
	case WIRE_DISK_ZERO:
		FUZZ_CHECK(r->len >= 1);
		FUZZ_CHECK(r->disk < n);
		FUZZ_CHECK(r->len <= d[r->disk].size);
		FUZZ_CHECK(r->offset <= d[r->disk].size - r->len);
		break;
	case WIRE_DISK_FLUSH:
	case WIRE_DISK_END:
		FUZZ_CHECK(r->len == 0);
		break;
	default:
		/* FLUSHED and ERROR only travel back to the source. */
		FUZZ_CHECK(!"an op the source never sends passed the check");
	}
	if (r->op != WIRE_DISK_ZERO)
		FUZZ_CHECK(r->flags == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ferry_error err = { 0 };
	uint8_t hdr[WIRE_DISK_HDR_BYTES], out[WIRE_DISK_HDR_BYTES];
	const struct wire_disk *d = fixed;
	uint32_t n = FERRY_ARRAY_SIZE(fixed);
	struct wire_disk *m;
	struct wire_disk_rec r;
	int rc;

	if (size < WIRE_DISK_HDR_BYTES ||
	    size > WIRE_DISK_HDR_BYTES + WIRE_CTRL_PAYLOAD_MAX)
		return 0;
	m = malloc(WIRE_DISKS_MAX * sizeof(*m));
	FUZZ_CHECK(m);
	if (wire_disks_decode(data + WIRE_DISK_HDR_BYTES,
			      (uint32_t)(size - WIRE_DISK_HDR_BYTES), m, &n,
			      NULL) == 0)
		d = m;
	else
		n = FERRY_ARRAY_SIZE(fixed);
	memcpy(hdr, data, sizeof(hdr));
	rc = wire_disk_rec_decode(hdr, &r, &err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc == 0) {
		wire_disk_rec_encode(&r, out);
		FUZZ_CHECK(memcmp(out, hdr, sizeof(out)) == 0);
		rc = wire_disk_rec_check(&r, d, n, &err);
		FUZZ_CHECK_ERR(rc, err);
		if (rc == 0)
			check_applicable(&r, d, n);
	}
	free(m);
	return 0;
}
