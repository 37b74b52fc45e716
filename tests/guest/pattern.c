/* Data generators of the test guest; see pattern.h. */
#include "pattern.h"

void pattern_random(void *buf, uint32_t len, uint32_t *rng)
{
	uint32_t *w = buf;

	for (uint32_t i = 0; i < len / 4; i++)
		w[i] = rng_next(rng);
}

/*
 * Text is built from a small dictionary of words and of short phrases, like
 * log lines or prose that repeats itself. Words alone give lz4 only about
 * 2.4x (its matches need 4 bytes and cost 3); mixing in phrases of 3-6
 * words brings lz4 to the 3-4x of typical text-like memory. The mix was
 * tuned against the lz4 and zstd command-line tools on a guest dump: lz4
 * about 3.6x (one phrase in 5 units gives 4.4x, one in 10 gives 3.4x).
 */
static const char *const words[] = {
	"the", "of", "and", "to", "in", "is", "that", "for",
	"it", "as", "was", "with", "be", "by", "on", "not",
	"memory", "page", "guest", "host", "migration", "dirty", "network",
	"socket", "buffer", "kernel", "device", "thread", "process", "stream",
	"transfer", "bandwidth", "latency", "compress", "window", "block",
	"virtual", "machine", "source", "destination", "running", "paused",
	"complete", "status", "error", "timeout", "connect", "listen",
	"receive", "send", "queue", "frame", "header", "payload", "length",
	"version", "capability", "parameter", "register", "interrupt",
	"timer", "clock", "serial", "console",
};

static const char *const phrases[] = {
	"the guest keeps running while its memory is copied",
	"a dirty page is sent again in the next pass",
	"the destination waits for the stream to complete",
	"connection to the receiver timed out after",
	"bandwidth limit reached, throttling the source",
	"the kernel maps the page into the process",
	"copied from the source to the destination host",
	"interrupt delivered to the virtual machine",
	"status of the migration is now active",
	"the buffer is full and the queue is waiting",
	"serial console output of the running guest",
	"frame header with version and payload length",
	"compression window of sixty four kilobytes",
	"timer expired and the clock was adjusted",
	"error while reading from the network socket",
	"the thread sleeps until the device is ready",
};

#define N_WORDS (sizeof(words) / sizeof(words[0]))
#define N_PHRASES (sizeof(phrases) / sizeof(phrases[0]))
/* One unit in PHRASE_ONE_IN is a phrase, the others single words. */
#define PHRASE_ONE_IN 8

static const char *pick_unit(uint32_t *rng)
{
	uint32_t r = rng_next(rng);

	if (r % PHRASE_ONE_IN == 0)
		return phrases[(r >> 8) % N_PHRASES];
	return words[(r >> 8) % N_WORDS];
}

void pattern_text(void *buf, uint32_t len, uint32_t *rng)
{
	char *p = buf, *end = p + len;
	uint32_t in_sentence = 0;

	while (p < end) {
		const char *w = pick_unit(rng);

		while (*w && p < end)
			*p++ = *w++;
		if (p >= end)
			break;
		in_sentence++;
		if (in_sentence > 6 && (rng_next(rng) & 7) == 0) {
			*p++ = '.';
			in_sentence = 0;
			if (p < end)
				*p++ = (rng_next(rng) & 3) ? ' ' : '\n';
		} else {
			*p++ = ' ';
		}
	}
}

uint32_t pattern_text_word(uint32_t *rng)
{
	const char *w = words[rng_next(rng) % N_WORDS];
	uint32_t v = 0x20202020u;	/* short words are padded with spaces */

	for (int i = 0; i < 4 && w[i]; i++)
		v = (v & ~(0xffu << (8 * i))) | (uint32_t)(unsigned char)w[i] << (8 * i);
	return v;
}
