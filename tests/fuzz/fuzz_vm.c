/*
 * The VM message (wire_vm_decode): the name a source gives its VM, by
 * which the receiving service finds the destination QEMU (DIR/NAME.qmp),
 * read from a peer that is authenticated but not yet trusted with
 * anything. The input is the payload; the header says VM and its length,
 * and the payload is NUL-terminated after it, as net_ctrl_recv() leaves
 * it.
 *
 * The name must be one safe path component and QMP word, so the check is
 * against the rule written independently here (wire.h): 1 to
 * WIRE_VM_NAME_MAX bytes of [A-Za-z0-9_.-], not starting with '.' or '-'.
 * A payload is accepted exactly when it follows the rule, and an accepted
 * name is the payload's bytes, encodes back to them, and is one that
 * wire_vm_name_valid() accepts.
 */
#include <string.h>

#include "fuzz.h"
#include "transport/wire.h"

static bool name_char(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

static bool follows_rule(const uint8_t *p, size_t len)
{
	if (len < 1 || len > WIRE_VM_NAME_MAX || p[0] == '.' || p[0] == '-')
		return false;
	for (size_t i = 0; i < len; i++)
		if (!name_char(p[i]))
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire_ctrl_hdr h = { .len = (uint32_t)size, .type = WIRE_CTRL_VM };
	struct ferry_error err = { 0 };
	uint8_t *payload, out[WIRE_VM_NAME_MAX];
	char *name;
	int rc;

	if (size > WIRE_CTRL_PAYLOAD_MAX)
		return 0;
	payload = malloc(size + 1);
	name = malloc(WIRE_VM_NAME_MAX + 1);
	FUZZ_CHECK(payload && name);
	memcpy(payload, data, size);
	payload[size] = '\0';
	rc = wire_vm_decode(&h, payload, name, &err);
	FUZZ_CHECK_ERR(rc, err);
	FUZZ_CHECK((rc == 0) == follows_rule(data, size));
	if (rc == 0) {
		FUZZ_CHECK(strlen(name) == size);
		FUZZ_CHECK(memcmp(name, data, size) == 0);
		FUZZ_CHECK(wire_vm_name_valid(name));
		FUZZ_CHECK(wire_vm_encode(name, out, NULL) == (int)size);
		FUZZ_CHECK(memcmp(out, data, size) == 0);
	}
	free(name);
	free(payload);
	return 0;
}
