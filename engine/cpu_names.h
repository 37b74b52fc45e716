/*
 * x86 CPU features by name, for the GUEST pre-check's messages: the
 * features a guest sees travel as CPUID words and bits (exact, and what
 * QEMU reports), and a person wants "avx2", the word -cpu takes.
 */
#ifndef FERRY_CPU_NAMES_H
#define FERRY_CPU_NAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The QEMU name of bit @bit (0..31) of CPUID word @key ("0xLEAF.SUB.REG",
 * as in struct wire_guest_cpuid), or NULL when the table has none (an
 * unnamed or reserved bit, a word ferry does not name).
 */
const char *cpu_feature_name(const char *key, unsigned bit);

/* The word (@key) and @bit of the feature QEMU calls @name; false when
 * the table has no such name (a property that is not a CPUID bit). */
bool cpu_feature_bit(const char *name, const char **key, unsigned *bit);

/*
 * Append ", NAME" for each bit set in @bits of word @key to @out (@len
 * bytes, NUL-terminated), or ", KEY bit N" for a bit without a name;
 * a name already in @out is not repeated (AMD's 0x80000001 EDX repeats
 * leaf 1's). Returns the number of features appended.
 */
unsigned cpu_feature_list(const char *key, uint32_t bits, char *out,
			  size_t len);

#endif /* FERRY_CPU_NAMES_H */
