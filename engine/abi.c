/* Copying the public structs across ABI versions (see abi.h). */
#include <errno.h>
#include <string.h>

#include "abi.h"

/* The structs only grow: a program of ABI 0 passes no more than these. */
_Static_assert(sizeof(struct ferry_migrate_opts) >= ABI0_MIGRATE_OPTS_SIZE &&
	       sizeof(struct ferry_receiver_opts) >= ABI0_RECEIVER_OPTS_SIZE &&
	       sizeof(struct ferry_report) >= ABI0_REPORT_SIZE,
	       "a public struct shrank");

int abi_copy_in(void *full, size_t full_size, const void *in, size_t size)
{
	const unsigned char *extra = (const unsigned char *)in + full_size;

	memset(full, 0, full_size);
	memcpy(full, in, size < full_size ? size : full_size);
	for (size_t i = full_size; i < size; i++)
		if (extra[i - full_size])
			return -EINVAL;
	return 0;
}

void report_copy_out(struct ferry_report *out, size_t size,
		     const struct ferry_report *full)
{
	memcpy(out, full, size < sizeof(*full) ? size : sizeof(*full));
	if (size > sizeof(*full))
		memset((char *)out + sizeof(*full), 0, size - sizeof(*full));
}
