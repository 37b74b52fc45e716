/*
 * The GUEST message (wire_guest_decode): the source's machine type, CPU
 * model and devices, which the receiving service compares with its own
 * QEMU's before anything is done to it, read from a peer that is
 * authenticated but not yet trusted with anything. The input is the
 * payload; the header says GUEST and its length, and the payload is
 * NUL-terminated after it, as net_ctrl_recv() leaves it.
 *
 * An accepted payload gives words that follow the rule (wire.h), at most
 * WIRE_GUEST_DEVICES_MAX devices, and encodes to a payload that decodes
 * to the same description.
 */
#include <string.h>

#include "fuzz.h"
#include "transport/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire_ctrl_hdr h = { .len = (uint32_t)size, .type = WIRE_CTRL_GUEST };
	struct ferry_error err = { 0 };
	struct wire_guest *g, *again;
	uint8_t *payload, out[WIRE_CTRL_PAYLOAD_MAX + 1];
	int rc, len;

	if (size > WIRE_CTRL_PAYLOAD_MAX)
		return 0;
	payload = malloc(size + 1);
	g = malloc(sizeof(*g));
	again = malloc(sizeof(*again));
	FUZZ_CHECK(payload && g && again);
	memcpy(payload, data, size);
	payload[size] = '\0';
	rc = wire_guest_decode(&h, payload, g, &err);
	FUZZ_CHECK_ERR(rc, err);
	if (rc == 0) {
		FUZZ_CHECK(wire_guest_word_valid(g->machine));
		FUZZ_CHECK(wire_guest_word_valid(g->cpu));
		FUZZ_CHECK(g->ndevices <= WIRE_GUEST_DEVICES_MAX);
		for (uint32_t i = 0; i < g->ndevices; i++) {
			FUZZ_CHECK(wire_guest_word_valid(g->devices[i].type));
			FUZZ_CHECK(!g->devices[i].id[0] ||
				   wire_guest_word_valid(g->devices[i].id));
		}
		len = wire_guest_encode(g, out, WIRE_CTRL_PAYLOAD_MAX, &err);
		FUZZ_CHECK(len >= 0);
		out[len] = '\0';
		h.len = (uint32_t)len;
		FUZZ_CHECK(wire_guest_decode(&h, out, again, &err) == 0);
		FUZZ_CHECK(!strcmp(g->machine, again->machine));
		FUZZ_CHECK(!strcmp(g->cpu, again->cpu));
		FUZZ_CHECK(g->ndevices == again->ndevices);
		FUZZ_CHECK(!memcmp(g->devices, again->devices,
				   g->ndevices * sizeof(g->devices[0])));
		FUZZ_CHECK(g->ncpuid == again->ncpuid);
		for (uint32_t i = 0; i < g->ncpuid; i++) {
			FUZZ_CHECK(!strcmp(g->cpuid[i].key, again->cpuid[i].key));
			FUZZ_CHECK(g->cpuid[i].bits == again->cpuid[i].bits);
		}
	}
	free(again);
	free(g);
	free(payload);
	return 0;
}
