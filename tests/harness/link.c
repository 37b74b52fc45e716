/* The benchmarks' emulated link (see link.h). */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "link.h"

static volatile sig_atomic_t link_is_up;

static int link_script(const char *action, uint32_t mbit)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "scripts/bench-netns.sh %s %s %u", action,
		 LINK_NETNS, mbit);
	return system(cmd) == 0 ? 0 : -1;
}

void link_down(void)
{
	if (link_is_up) {
		link_is_up = 0;
		link_script("down", 0);
	}
}

int link_up(uint32_t mbit)
{
	static bool registered;

	if (!registered && atexit(link_down) == 0)
		registered = true;
	if (link_script("up", mbit) < 0)
		return -1;
	link_is_up = 1;
	return 0;
}

uint64_t link_bytes(void)
{
	static const char *const f[] = {
		"/sys/class/net/" LINK_NETNS "-h/statistics/tx_bytes",
		"/sys/class/net/" LINK_NETNS "-h/statistics/rx_bytes",
	};
	unsigned long long v, sum = 0;

	for (int i = 0; i < 2; i++) {
		FILE *fp = fopen(f[i], "r");

		if (fp && fscanf(fp, "%llu", &v) == 1)
			sum += v;
		if (fp)
			fclose(fp);
	}
	return sum;
}

int netns_enter(const char *name)
{
	char path[128];
	int fd, rc;

	snprintf(path, sizeof(path), "/var/run/netns/%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	rc = setns(fd, CLONE_NEWNET) < 0 ? -errno : 0;
	close(fd);
	return rc;
}
