/*
 * Data generators of the test guest, kept free of anything x86 so that the
 * same code can be compiled on the host to check compression ratios.
 */
#ifndef FERRY_GUEST_PATTERN_H
#define FERRY_GUEST_PATTERN_H

#include <stdint.h>

/* xorshift32: fast under TCG (three shifts, three xors), period 2^32 - 1. */
static inline uint32_t rng_next(uint32_t *s)
{
	uint32_t x = *s;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	*s = x;
	return x;
}

/* A seed of 0 would stay 0 forever; any other value is fine. */
static inline uint32_t rng_seed(uint32_t seed)
{
	return seed ? seed * 2654435761u : 0x9e3779b9u;
}

/* Stateless mixing of a page number, so the mix profile's class of a page
 * can be recomputed by the dirtying loop without a table. */
static inline uint32_t pattern_hash(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	x *= 0x846ca68bu;
	x ^= x >> 16;
	return x;
}

/* @len is a multiple of 4. */
void pattern_random(void *buf, uint32_t len, uint32_t *rng);
/* English-like words separated by spaces and punctuation; any @len. */
void pattern_text(void *buf, uint32_t len, uint32_t *rng);
/* A 4-byte piece of text, for the dirtying loop of text pages. */
uint32_t pattern_text_word(uint32_t *rng);

#endif
