/*
 * What every libFuzzer harness in tests/fuzz shares: the entry points
 * libFuzzer calls (declared here so -Wmissing-prototypes stays on), and
 * the one assertion harnesses use for their own checks.
 *
 * A harness feeds the bytes libFuzzer gives it to one parser of bytes that
 * come from a peer or a file, exactly as ferry does, and checks what the
 * parser promises on top of what ASan and UBSan see (a decoded header
 * encodes back to the same bytes, an accepted record lies inside its
 * disk). Each iteration must leave nothing behind: no descriptor, thread
 * or allocation outlives it, since libFuzzer runs millions of them in one
 * process.
 */
#ifndef FERRY_FUZZ_H
#define FERRY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/*
 * A broken promise of the parser: abort, so libFuzzer saves the input as
 * a crash. On in every build, like FERRY_ASSERT.
 */
#define FUZZ_CHECK(cond)                                                     \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "fuzz: %s:%d: check failed: %s\n",   \
				__FILE__, __LINE__, #cond);                  \
			abort();                                             \
		}                                                            \
	} while (0)

/*
 * ferry's error convention: 0, or a negative errno that is also in
 * @err with a message saying what failed.
 */
#define FUZZ_CHECK_ERR(rc, err)                                              \
	FUZZ_CHECK((rc) == 0 || ((rc) < 0 && (err).code == (rc) && (err).msg[0]))

/* Silence ferry's log: a refused request logs a warning, and millions of
 * them would slow the run down and bury a crash report. */
void fuzz_quiet(void);

/*
 * The path of @name in a private directory under $TMPDIR (or /tmp), for
 * a harness's sockets and files; the file and the directory are removed
 * at exit. A run that crashes skips that, so scripts/fuzz-run.sh points
 * TMPDIR into a directory of its own and removes it. Aborts when the
 * directory cannot be made: a harness that cannot set up tests nothing.
 */
const char *fuzz_tmp_path(const char *name);

/*
 * An output buffer of @len bytes (at most FUZZ_OUT_MAX) for a decoder,
 * followed by FUZZ_OUT_GUARD_BYTES of a known pattern. LZ4 and zstd are
 * Debian's libraries, built without ASan: a write past @len from inside
 * them is caught only by fuzz_out_check() finding the guard changed.
 * One buffer, reused: a fresh allocation of up to 1 MiB per input costs
 * more under ASan than the decoding.
 */
#define FUZZ_OUT_MAX (1u << 20)
#define FUZZ_OUT_GUARD_BYTES 4096u
uint8_t *fuzz_out(size_t len);
void fuzz_out_check(void);

#endif /* FERRY_FUZZ_H */
