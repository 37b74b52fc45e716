/* Self-removing scratch directories (see tmpdir.h). */
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tmpdir.h"
#include "vm_priv.h"

#define TMPDIR_MAX 64
#define TMPDIR_PATH_MAX 128

static char dirs[TMPDIR_MAX][TMPDIR_PATH_MAX];
static pid_t owner[TMPDIR_MAX];	/* a forked child leaves them alone */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int registered;

static int rm_one(const char *path, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void remove_tree(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void remove_all(void)
{
	for (int i = 0; i < TMPDIR_MAX; i++)
		if (dirs[i][0] && owner[i] == getpid())
			remove_tree(dirs[i]);
}

int tmpdir_make(char *dir, size_t len, const char *prefix)
{
	int slot = -1;

	if (snprintf(dir, len, "/tmp/%s.XXXXXX", prefix) >= (int)len ||
	    len > TMPDIR_PATH_MAX)
		return -ENAMETOOLONG;
	if (!mkdtemp(dir))
		return -errno;
	/* The janitor removes it if we die without atexit (a failed test). */
	vm_reg_tree(dir, NULL);
	pthread_mutex_lock(&lock);
	if (!registered) {
		atexit(remove_all);
		registered = 1;
	}
	for (int i = 0; i < TMPDIR_MAX && slot < 0; i++)
		if (!dirs[i][0])
			slot = i;
	if (slot >= 0) {
		snprintf(dirs[slot], sizeof(dirs[slot]), "%s", dir);
		owner[slot] = getpid();
	}
	pthread_mutex_unlock(&lock);
	return 0;
}

void tmpdir_remove(const char *dir)
{
	remove_tree(dir);
	vm_unreg_tree(dir);
	pthread_mutex_lock(&lock);
	for (int i = 0; i < TMPDIR_MAX; i++)
		if (!strcmp(dirs[i], dir))
			dirs[i][0] = '\0';
	pthread_mutex_unlock(&lock);
}
