/* Helpers every harness links (see fuzz.h). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry.h"
#include "fuzz.h"

/* Files one harness keeps in its directory (a socket, a key file). */
#define FUZZ_TMP_FILES_MAX 8

#define FUZZ_OUT_PATTERN 0xa5

static uint8_t *out_buf;	/* FUZZ_OUT_MAX + FUZZ_OUT_GUARD_BYTES */
static size_t out_len;
static char tmp_dir[PATH_MAX];
static char tmp_files[FUZZ_TMP_FILES_MAX][PATH_MAX];
static int tmp_nfiles;

void fuzz_quiet(void)
{
	ferry_set_log(NULL, NULL, -1);
}

static void tmp_cleanup(void)
{
	for (int i = 0; i < tmp_nfiles; i++)
		unlink(tmp_files[i]);
	rmdir(tmp_dir);
}

const char *fuzz_tmp_path(const char *name)
{
	const char *base = getenv("TMPDIR");
	char *path;

	FUZZ_CHECK(tmp_nfiles < FUZZ_TMP_FILES_MAX);
	if (!tmp_dir[0]) {
		snprintf(tmp_dir, sizeof(tmp_dir), "%s/ferry-fuzz.XXXXXX",
			 base && *base ? base : "/tmp");
		FUZZ_CHECK(mkdtemp(tmp_dir) != NULL);
		atexit(tmp_cleanup);
	}
	path = tmp_files[tmp_nfiles++];
	FUZZ_CHECK((size_t)snprintf(path, PATH_MAX, "%s/%s", tmp_dir, name) <
		   PATH_MAX);
	return path;
}

uint8_t *fuzz_out(size_t len)
{
	FUZZ_CHECK(len <= FUZZ_OUT_MAX);
	if (!out_buf) {
		out_buf = malloc(FUZZ_OUT_MAX + FUZZ_OUT_GUARD_BYTES);
		FUZZ_CHECK(out_buf);
	}
	out_len = len;
	memset(out_buf + len, FUZZ_OUT_PATTERN, FUZZ_OUT_GUARD_BYTES);
	return out_buf;
}

void fuzz_out_check(void)
{
	for (size_t i = 0; i < FUZZ_OUT_GUARD_BYTES; i++)
		FUZZ_CHECK(out_buf[out_len + i] == FUZZ_OUT_PATTERN);
}
