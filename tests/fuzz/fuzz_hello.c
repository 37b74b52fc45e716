/*
 * The hello that opens every connection to a receiver (wire_hello_decode):
 * 64 bytes from whoever connected, before anything is known about them.
 * A hello the decoder accepts must be one ferry could have sent: encoded
 * again, it gives back the same 64 bytes.
 */
#include <string.h>

#include "fuzz.h"
#include "transport/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ferry_error err = { 0 };
	uint8_t out[WIRE_HELLO_BYTES];
	struct wire_hello h;
	uint8_t *in;
	int rc;

	if (size < WIRE_HELLO_BYTES)
		return 0;
	/* Exactly the bytes the receiver reads, so ASan sees a read past. */
	in = malloc(WIRE_HELLO_BYTES);
	FUZZ_CHECK(in);
	memcpy(in, data, WIRE_HELLO_BYTES);
	rc = wire_hello_decode(in, &h, &err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc == 0) {
		FUZZ_CHECK(h.stream_index < h.stream_count);
		wire_hello_encode(&h, out);
		FUZZ_CHECK(memcmp(in, out, WIRE_HELLO_BYTES) == 0);
	}
	free(in);
	return 0;
}
