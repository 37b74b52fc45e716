/*
 * The receiving service under a nuisance: how much longer does a real
 * migration take while other peers hold connections open?
 *   quiet      nothing else connects
 *   flood      N idle TCP connections (default 200, over the 64 handshake
 *              slots) opened before the migration and kept open
 *   slowloris  N connections that dribble a hello, a byte per 500 ms
 * Each run: fresh VMs, a receiver with its default limits (10 s hello
 * timeout), modes alternating, RAM compared byte for byte; medians.
 * The machine (CPU model) is printed with the results.
 *
 * usage: bench_service [-m MEM_MIB] [-n REPEATS] [-c CONNS]
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "ferry.h"
#include "tests/harness/rx.h"
#include "tests/harness/stats.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"
#include "transport/net.h"
#include "transport/wire.h"

#define BS_REPEATS_MAX 20
#define BS_CONNS_MAX 1000
#define BS_READY_TIMEOUT_MS 120000

enum mode { M_QUIET, M_FLOOD, M_SLOW, M_COUNT };
static const char *const mode_names[] = { "quiet", "flood", "slowloris" };

struct nuisance {
	uint16_t port;
	uint32_t n;
	bool slow;
	int fds[BS_CONNS_MAX];
	uint32_t opened;
	volatile bool opening_done;	/* all opened, or a connect failed */
	volatile bool stop;
	pthread_t t;
};

static void *nuisance_main(void *arg)
{
	struct nuisance *z = arg;
	struct wire_hello h = { .version = WIRE_VERSION, .conn = WIRE_CONN_DATA,
				.ram_bytes = 1u << 30, .stream_count = 1,
				.frame_max = 1u << 20 };
	uint8_t hello[WIRE_HELLO_BYTES];
	uint32_t sent = 0;

	memset(h.mig_id, 0x5a, sizeof(h.mig_id));
	wire_hello_encode(&h, hello);
	while (z->opened < z->n) {
		struct ferry_error err = { 0 };
		int fd = net_connect("127.0.0.1", z->port, 2000, &err);

		if (fd < 0)
			break;
		z->fds[z->opened++] = fd;
	}
	z->opening_done = true;
	while (!z->stop && z->slow && sent < sizeof(hello) - 1) {
		for (uint32_t i = 0; i < z->opened; i++)
			send(z->fds[i], hello + sent, 1, MSG_NOSIGNAL);
		sent++;
		usleep(500 * 1000);
	}
	return NULL;
}

static void nuisance_stop(struct nuisance *z)
{
	z->stop = true;
	pthread_join(z->t, NULL);
	for (uint32_t i = 0; i < z->opened; i++)
		close(z->fds[i]);
}

/* One migration in @mode; its wall time (ferry's total) in *@ms. */
static int one(enum mode mode, uint32_t mem, uint32_t conns, const char *dir,
	       uint64_t *ms, uint32_t *opened, struct ferry_error *err)
{
	struct vm_config sc = { .mem_mib = mem, .fill = "random" };
	struct vm_config dc = sc;
	struct vm *src = NULL, *dst = NULL;
	struct ferry_receiver_opts ro = { .listen_host = "127.0.0.1", .once = true };
	struct ferry_migrate_opts o = { .to_host = "127.0.0.1", .paused = true };
	static struct nuisance z;
	struct ferry_migration *m = NULL;
	struct ferry_report rep;
	struct rx_thread rx;
	int rc;

	dc.incoming = dc.prealloc = true;
	rc = vm_start(&src, &sc, err);
	if (rc == 0)
		rc = vm_start(&dst, &dc, err);
	if (rc == 0)
		rc = vm_wait_ready(src, BS_READY_TIMEOUT_MS, err);
	if (rc < 0)
		goto out;
	ro.qmp_path = vm_qmp_path(dst);
	rc = rx_thread_start(&rx, &ro, NULL, err);
	if (rc < 0)
		goto out;
	memset(&z, 0, sizeof(z));
	z.port = rx.port;
	z.n = mode == M_QUIET ? 0 : conns;
	z.slow = mode == M_SLOW;
	pthread_create(&z.t, NULL, nuisance_main, &z);
	while (!z.opening_done)
		usleep(5 * 1000);
	*opened = z.opened;
	/* Let the service see them all before the migration starts. */
	usleep(200 * 1000);
	o.qmp_path = vm_qmp_path(src);
	o.to_port = rx.port;
	m = ferry_migration_new(&o, err);
	rc = m ? ferry_migration_run(m, &rep, err) : -EINVAL;
	ferry_migration_free(m);
	nuisance_stop(&z);
	if (rc < 0)
		rx_thread_stop(&rx);
	rx_thread_join(&rx);
	*ms = rep.total_ms;
	if (rc == 0 && stats_same_ram(dir, src, dst) != 1)
		rc = ferry_error_set(err, -EIO, "guest RAM differs");
out:
	vm_stop(src);
	vm_stop(dst);
	return rc;
}

int main(int argc, char **argv)
{
	static uint64_t ms[M_COUNT][BS_REPEATS_MAX];
	uint32_t opened = 0;
	uint32_t mem = 256, repeats = 3, conns = 200;
	struct ferry_error err = { 0 };
	uint64_t base;
	char dir[64];
	int opt;

	while ((opt = getopt(argc, argv, "m:n:c:")) != -1) {
		switch (opt) {
		case 'm': mem = (uint32_t)atoi(optarg); break;
		case 'n': repeats = (uint32_t)atoi(optarg); break;
		case 'c': conns = (uint32_t)atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-m MEM_MIB] [-n REPEATS] "
				"[-c CONNS]\n", argv[0]);
			return 2;
		}
	}
	if (!repeats || repeats > BS_REPEATS_MAX || conns > BS_CONNS_MAX)
		return 2;
	ferry_set_log(NULL, NULL, 0);
	if (tmpdir_make(dir, sizeof(dir), "ferry-bench-svc") < 0)
		return 1;
	stats_print_machine(stdout);
	printf("# %u MiB guest, %u connections, %u runs per mode, alternating\n",
	       mem, conns, repeats);
	for (uint32_t r = 0; r < repeats; r++) {
		for (int md = 0; md < M_COUNT; md++) {
			if (one((enum mode)md, mem, conns, dir, &ms[md][r], &opened,
				&err) < 0) {
				fprintf(stderr, "%s run %u: %s\n", mode_names[md], r,
					err.msg);
				tmpdir_remove(dir);
				return 1;
			}
			printf("%-10s run %u: %llu ms (RAM verified; %u connections "
			       "open)\n", mode_names[md], r,
			       (unsigned long long)ms[md][r], opened);
			fflush(stdout);
		}
	}
	tmpdir_remove(dir);
	printf("\n| mode | median ms | vs quiet |\n| --- | ---: | ---: |\n");
	base = stats_median(ms[M_QUIET], repeats);
	for (int md = 0; md < M_COUNT; md++) {
		uint64_t v = stats_median(ms[md], repeats);

		printf("| %s | %llu | %+lld ms |\n", mode_names[md],
		       (unsigned long long)v, (long long)v - (long long)base);
	}
	return 0;
}
