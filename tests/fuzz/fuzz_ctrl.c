/*
 * Control messages as either side receives them: the input is what the
 * peer sends on the control connection after the hello, read message by
 * message with net_ctrl_recv() (header through wire_ctrl_decode, then
 * the payload into a buffer of WIRE_CTRL_PAYLOAD_MAX + 1 bytes, then a
 * NUL) until the stream ends or breaks, as the engine's loops do. Each
 * payload then goes to its type's decoder, as the engine hands it on:
 * FINISH and POSTCOPY flags, PROBED, FINISHED, the disk manifest, the
 * VM name, CONFIG.
 *
 * Each accepted header encodes back to the bytes it came from, its
 * payload is the bytes after it, NUL-terminated; the payload buffer is
 * exactly the size the engine uses, so a length the decoder let through
 * that overruns it is caught.
 */
#include <string.h>

#include "fuzz.h"
#include "peer.h"
#include "transport/net.h"
#include "transport/wire.h"

/* Messages read per input: the engine's loops read a handful. */
#define FUZZ_CTRL_MSGS_MAX 64
/* Far longer than any read here takes: the peer sends EOF after the input. */
#define FUZZ_CTRL_TIMEOUT_MS 5000

static uint8_t *payload;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	payload = malloc(WIRE_CTRL_PAYLOAD_MAX + 1);
	FUZZ_CHECK(payload);
	return 0;
}

/* Checks of each decoder's own output are in its own harness. */
static void decode_payload(const struct wire_ctrl_hdr *h, const uint8_t *p)
{
	struct ferry_error err = { 0 };
	int rc = 0;

	switch (h->type) {
	case WIRE_CTRL_FINISH:
	case WIRE_CTRL_POSTCOPY: {
		bool flag;

		rc = wire_flag_decode(h, p, &flag, &err);
		break;
	}
	case WIRE_CTRL_PROBED: {
		uint8_t out[WIRE_PROBED_BYTES];
		uint64_t bytes, ns;

		rc = wire_probed_decode(h, p, &bytes, &ns, &err);
		if (rc == 0) {
			wire_probed_encode(bytes, ns, out);
			FUZZ_CHECK(memcmp(out, p, sizeof(out)) == 0);
		}
		break;
	}
	case WIRE_CTRL_FINISHED: {
		const char *status;
		uint32_t blocktime;
		bool ok;

		rc = wire_finished_decode(h, p, &ok, &status, &blocktime, &err);
		if (rc == 0) {
			size_t n = strlen(status);

			FUZZ_CHECK(n < h->len);
			FUZZ_CHECK(h->len == 1 + n || h->len == 1 + n + 5);
			FUZZ_CHECK(h->len == 1 + n + 5 ||
				   blocktime == WIRE_BLOCKTIME_UNKNOWN);
		}
		break;
	}
	case WIRE_CTRL_DISKS: {
		struct wire_disk *d = malloc(WIRE_DISKS_MAX * sizeof(*d));
		uint32_t n;

		FUZZ_CHECK(d);
		rc = wire_disks_decode(p, h->len, d, &n, &err);
		free(d);
		break;
	}
	case WIRE_CTRL_VM: {
		char *name = malloc(WIRE_VM_NAME_MAX + 1);

		FUZZ_CHECK(name);
		rc = wire_vm_decode(h, p, name, &err);
		free(name);
		break;
	}
	case WIRE_CTRL_HOST: {
		uint8_t out[WIRE_HOST_BYTES];
		struct wire_host host;

		rc = wire_host_decode(h, p, &host, &err);
		if (rc == 0) {
			FUZZ_CHECK(host.mem_available <= host.mem_total);
			wire_host_encode(&host, out);
			FUZZ_CHECK(memcmp(out, p, sizeof(out)) == 0);
		}
		break;
	}
	case WIRE_CTRL_GUEST: {
		struct wire_guest *g = malloc(sizeof(*g));

		FUZZ_CHECK(g);
		rc = wire_guest_decode(h, p, g, &err);
		free(g);
		break;
	}
	case WIRE_CTRL_CONFIG: {
		const char **argv = malloc(WIRE_CONFIG_ARGS_MAX * sizeof(*argv));
		uint32_t argc;

		FUZZ_CHECK(argv);
		rc = wire_config_decode(h, p, argv, &argc, &err);
		free(argv);
		break;
	}
	}
	FUZZ_CHECK_ERR(rc, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_peer peer;
	struct net_conn c;
	size_t at = 0;

	net_conn_init(&c, fuzz_peer_pair(&peer, data, size));
	for (int i = 0; i < FUZZ_CTRL_MSGS_MAX; i++) {
		struct ferry_error err = { 0 };
		uint8_t raw[WIRE_CTRL_HDR_BYTES];
		struct wire_ctrl_hdr h;
		int rc;

		rc = net_ctrl_recv(&c, &h, payload, FUZZ_CTRL_TIMEOUT_MS, &err);
		FUZZ_CHECK_ERR(rc, err);
		if (rc < 0)
			break;
		FUZZ_CHECK(h.len <= WIRE_CTRL_PAYLOAD_MAX);
		FUZZ_CHECK(at + WIRE_CTRL_HDR_BYTES + h.len <= size);
		wire_ctrl_encode(&h, raw);
		FUZZ_CHECK(memcmp(raw, data + at, sizeof(raw)) == 0);
		at += WIRE_CTRL_HDR_BYTES;
		FUZZ_CHECK(memcmp(payload, data + at, h.len) == 0);
		FUZZ_CHECK(payload[h.len] == '\0');
		at += h.len;
		decode_payload(&h, payload);
	}
	net_conn_close(&c);
	fuzz_peer_join(&peer);
	return 0;
}
