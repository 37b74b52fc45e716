/* The link probe (see probe.h). */
#include <errno.h>
#include <lz4.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "common/util.h"
#include "probe.h"
#include "wire.h"

/* Runs of the calibration sample; the fastest counts. */
#define PROBE_CALIB_BYTES (1u << 20)
#define PROBE_CALIB_RUNS 3

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}


int probe_send(struct net_conn *c, uint64_t *rate, struct ferry_error *err)
{
	uint8_t hdr[WIRE_FRAME_HDR_BYTES];
	uint8_t payload[WIRE_CTRL_PAYLOAD_MAX + 1];
	struct wire_ctrl_hdr ch;
	uint64_t t0 = ferry_now_ms(), sent = 0, seq = 0, bytes, ns;
	uint8_t *buf;
	int rc = 0;

	*rate = 0;
	/* What is still queued after PROBE_MAX_MS drains in little time even
	 * on a slow link. */
	setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &(int){ PROBE_SNDBUF_BYTES },
		   sizeof(int));
	buf = calloc(1, PROBE_FRAME_BYTES);	/* what it holds does not matter */
	if (!buf)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	while (sent < PROBE_BYTES && ferry_now_ms() - t0 < PROBE_MAX_MS) {
		struct wire_frame_hdr h = { .len = PROBE_FRAME_BYTES,
					    .type = WIRE_FRAME_DATA,
					    .raw_len = PROBE_FRAME_BYTES,
					    .seq = seq++ };

		wire_frame_encode(&h, hdr);
		rc = net_write_full(c, hdr, sizeof(hdr), PROBE_TIMEOUT_MS,
				    "probe frame", err);
		if (rc == 0)
			rc = net_write_full(c, buf, PROBE_FRAME_BYTES,
					    PROBE_TIMEOUT_MS, "probe frame", err);
		if (rc < 0)
			goto out;
		sent += PROBE_FRAME_BYTES;
	}
	{
		struct wire_frame_hdr end = { .type = WIRE_FRAME_END, .seq = seq };

		wire_frame_encode(&end, hdr);
		rc = net_write_full(c, hdr, sizeof(hdr), PROBE_TIMEOUT_MS,
				    "probe end", err);
	}
	if (rc == 0)
		rc = net_ctrl_recv(c, &ch, payload, PROBE_TIMEOUT_MS, err);
	if (rc < 0)
		goto out;
	rc = wire_probed_decode(&ch, payload, &bytes, &ns, err);
	if (rc < 0)
		goto out;
	if (bytes > sent)
		rc = ferry_error_set(err, -EPROTO, "the receiver claims %llu probe "
				     "bytes of %llu sent", (unsigned long long)bytes,
				     (unsigned long long)sent);
	else if (bytes >= PROBE_MIN_BYTES && ns)
		*rate = (uint64_t)((double)bytes * 1e9 / (double)ns);
out:
	free(buf);
	return rc;
}

int probe_serve(struct net_conn *c, struct ferry_error *err)
{
	uint8_t hdr[WIRE_FRAME_HDR_BYTES], answer[WIRE_PROBED_BYTES];
	uint64_t deadline = ferry_now_ms() + PROBE_TIMEOUT_MS;
	uint64_t seq = 0, bytes = 0, t_first = 0, t_last = 0;
	uint8_t *sink;
	int rc = 0;

	sink = malloc(WIRE_FRAME_PAYLOAD_MAX);
	if (!sink)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	for (;;) {
		struct wire_frame_hdr h;
		uint64_t now = ferry_now_ms();

		if (now >= deadline) {
			rc = ferry_error_set(err, -ETIMEDOUT, "probe took over %u ms",
					     PROBE_TIMEOUT_MS);
			break;
		}
		rc = net_read_full(c, hdr, sizeof(hdr), (int)(deadline - now),
				   "probe frame", err);
		if (rc < 0)
			break;
		if (!t_first)
			t_first = now_ns();
		rc = wire_frame_decode(hdr, WIRE_FRAME_PAYLOAD_MAX, &h, err);
		if (rc < 0)
			break;
		if (h.seq != seq++ || h.type == WIRE_FRAME_RETURN ||
		    wire_frame_codec(&h) != WIRE_CODEC_RAW) {
			rc = ferry_error_set(err, -EPROTO, "probe frame %llu: not a "
					     "raw data frame in sequence",
					     (unsigned long long)h.seq);
			break;
		}
		if (h.type == WIRE_FRAME_END)
			break;
		if (bytes + h.len > WIRE_PROBE_MAX_BYTES) {
			rc = ferry_error_set(err, -EMSGSIZE, "probe over %u bytes",
					     WIRE_PROBE_MAX_BYTES);
			break;
		}
		rc = net_read_full(c, sink, h.len, (int)(deadline - ferry_now_ms()),
				   "probe frame", err);
		if (rc < 0)
			break;
		bytes += h.len;
		t_last = now_ns();
	}
	free(sink);
	if (rc < 0)
		return rc;
	wire_probed_encode(bytes, t_last > t_first ? t_last - t_first : 0, answer);
	return net_ctrl_send(c, WIRE_CTRL_PROBED, answer, sizeof(answer),
			     PROBE_TIMEOUT_MS, err);
}

static uint64_t calibrated;
static pthread_once_t calib_once = PTHREAD_ONCE_INIT;

/*
 * A sample that compresses about as well as a guest's mixed memory:
 * words of a small vocabulary in random order (LZ4 gets it to ~40%).
 */
static void calibrate(void)
{
	static const char *const words[] = {
		"the ", "page ", "guest ", "memory ", "kernel ", "0x7f3a ",
		"struct ", "return ", "buffer ", "\n", "    ", "error ",
		"node ", "value ", "int ", "id=", "ok ", "migration ",
	};
	size_t n = sizeof(words) / sizeof(words[0]);
	char *src = malloc(PROBE_CALIB_BYTES);
	int cap = LZ4_compressBound(PROBE_CALIB_BYTES);
	char *dst = malloc((size_t)cap);
	uint64_t x = 0x9e3779b97f4a7c15ull, best = UINT64_MAX;
	size_t off = 0;

	if (!src || !dst)
		goto out;
	while (off < PROBE_CALIB_BYTES) {
		const char *w;
		size_t len;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w = words[x % n];
		len = strlen(w);
		if (len > PROBE_CALIB_BYTES - off)
			len = PROBE_CALIB_BYTES - off;
		memcpy(src + off, w, len);
		off += len;
	}
	for (int i = 0; i < PROBE_CALIB_RUNS; i++) {
		uint64_t t = now_ns();

		if (LZ4_compress_default(src, dst, PROBE_CALIB_BYTES, cap) <= 0)
			goto out;
		t = now_ns() - t;
		if (t < best)
			best = t;
	}
	if (best && best != UINT64_MAX)
		calibrated = (uint64_t)((double)PROBE_CALIB_BYTES * 1e9 / (double)best);
out:
	free(src);
	free(dst);
}

uint64_t probe_compressor_rate(void)
{
	pthread_once(&calib_once, calibrate);
	return calibrated;
}
