/*
 * Small helpers the benchmarks share: medians of repeated runs, the
 * byte-for-byte comparison of two quiescent guests' RAM, and the machine
 * the figures come from.
 */
#ifndef FERRY_TESTS_STATS_H
#define FERRY_TESTS_STATS_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "vm.h"

/* The median of @n values (sorts @v in place); 0 when n is 0. */
uint64_t stats_median(uint64_t *v, uint32_t n);

/* pmemsave both guests into @dir and compare: 1 equal, 0 different,
 * -errno when a dump failed. The dumps are removed. */
int stats_same_ram(const char *dir, struct vm *a, struct vm *b);
/* The same from byte @from of the dumps on; *@first_diff (may be NULL)
 * the first byte that differs, @err why a dump failed. */
int stats_same_ram_from(const char *dir, struct vm *a, struct vm *b,
			uint64_t from, uint64_t *first_diff,
			struct ferry_error *err);

/*
 * The machine a benchmark's figures were measured on, which travel with
 * them: what it is (CPU, cores, kernel, QEMU, ferry's commit, the date)
 * and how fast its one core runs what the tunnel runs, measured here by
 * the first call (about 1.5 s of CPU, on one thread): ferry's own
 * codec_compress() in tunnel-sized frames over a mixed buffer (a third
 * each of zero, text-like and random 4 KiB pages), and AES-128-GCM
 * through OpenSSL's EVP in 16 KiB records (a TLS record; what `openssl
 * speed -evp aes-128-gcm` measures at that size). Speeds are input MB
 * (10^6 bytes) per CPU second of the measuring thread, so that a busy
 * machine slows them less than it would wall-clock rates; 0 when a
 * measurement could not run. Strings the probe could not learn are "".
 */
#define STATS_MACHINE_CODECS 3	/* lz4, zstd at its default and auto levels */
#define STATS_MACHINE_STR 128

struct stats_codec_speed {
	char name[16];		/* "lz4", "zstd1", "zstd3" */
	double mb_s;		/* compressed, per CPU second */
	double ratio;		/* input / output (a frame that does not
				 * shrink counts raw, as the tunnel sends it) */
};

struct stats_machine {
	char cpu[STATS_MACHINE_STR];	/* /proc/cpuinfo's model name */
	long cores;			/* online */
	char kernel[STATS_MACHINE_STR];	/* uname -r */
	char qemu[STATS_MACHINE_STR];	/* first line of --version */
	char ferry_version[32];		/* FERRY_VERSION_STRING */
	char ferry_commit[48];		/* short hash, "-dirty" if modified */
	char date[32];			/* of the probe, UTC, ISO 8601 */
	struct stats_codec_speed codec[STATS_MACHINE_CODECS];
	double aes_gcm_mb_s;		/* AES-128-GCM encryption */
};

/* The machine, probed once per process (later calls return the same). */
const struct stats_machine *stats_machine(void);

/* The machine as "# key: value" lines to @out. */
void stats_print_machine(FILE *out);

/* The machine as a new JSON object (the caller owns the reference), with
 * the keys cpu, cores, kernel, qemu, ferry_version, ferry_commit, date,
 * <codec>_mb_s and <codec>_ratio for each codec, aes_128_gcm_mb_s. */
json_t *stats_machine_json(void);

/* {"machine":{...}} and a newline to @out: the first line of a
 * benchmark's JSON-lines results. 0, or -EIO. */
int stats_write_machine_line(FILE *out);

#endif /* FERRY_TESTS_STATS_H */
