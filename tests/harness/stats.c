/* Benchmark helpers (see stats.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stats.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

uint64_t stats_median(uint64_t *v, uint32_t n)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_u64);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Dump both guests' RAM and compare it from byte @from on. */
static int same_ram_from(const char *dir, struct vm *a, struct vm *b,
			 uint64_t from)
{
	struct ferry_error err = { 0 };
	char pa[256], pb[256];
	uint64_t diff;
	int eq;

	snprintf(pa, sizeof(pa), "%s/a.ram", dir);
	snprintf(pb, sizeof(pb), "%s/b.ram", dir);
	if (vm_pmemsave(a, pa, &err) || vm_pmemsave(b, pb, &err)) {
		unlink(pa);
		unlink(pb);
		return err.code ? err.code : -1;
	}
	eq = vm_files_equal_from(pa, pb, from, &diff, &err);
	unlink(pa);
	unlink(pb);
	return eq;
}

int stats_same_ram(const char *dir, struct vm *a, struct vm *b)
{
	return same_ram_from(dir, a, b, 0);
}

int stats_same_static_ram(const char *dir, struct vm *a, struct vm *b)
{
	uint64_t from = vm_static_ram_from(a);

	return from ? same_ram_from(dir, a, b, from) : -ENODATA;
}

void stats_print_machine(FILE *out)
{
	char line[256];
	FILE *f = fopen("/proc/cpuinfo", "re");

	while (f && fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
			fprintf(out, "# machine: %s", strchr(line, ':') + 2);
			break;
		}
	}
	if (f)
		fclose(f);
	fprintf(out, "# cores: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
}
