/*
 * make demo: two local VMs, one live-migrated through ferry, with a report.
 *
 * It runs the two ferry processes a user would run on two hosts
 * (`ferry receive` and `ferry migrate`), while the guest keeps dirtying
 * memory. The destination is left paused so that the guest's RAM can be
 * compared byte for byte with the source's; then the destination guest is
 * resumed and its heartbeat shows it running where it landed.
 *
 * Environment: FERRY_BIN, FERRY_GUEST (set by make), FERRY_ACCEL (tcg),
 * DEMO_MEM_MIB (256), DEMO_FILL (mix), DEMO_WS_MIB (32), DEMO_RATE (32).
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "ferry.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"
#include "transport/net.h"

#define DEMO_READY_TIMEOUT_MS 120000
#define DEMO_PORT_WAIT_MS 5000

static uint32_t env_u32(const char *name, uint32_t dflt)
{
	const char *v = getenv(name);

	return v && *v ? (uint32_t)strtoul(v, NULL, 10) : dflt;
}

static const char *env_str(const char *name, const char *dflt)
{
	const char *v = getenv(name);

	return v && *v ? v : dflt;
}

/* Start a child with stdout into @out_fd (-1: inherit). */
static pid_t spawn(char *const argv[], int out_fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (out_fd >= 0)
			dup2(out_fd, STDOUT_FILENO);
		execv(argv[0], argv);
		fprintf(stderr, "demo: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

static int wait_exit(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, 0) < 0)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/*
 * The receiver says when it listens, as systemd's Type=notify hears it
 * (READY=1 on $NOTIFY_SOCKET): no probe connection, which the receiver
 * would log as a peer that left during its hello.
 */
static int notify_open(const char *dir, char *path, size_t len)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	snprintf(path, len, "%s/notify", dir);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	return fd;
}

static int wait_ready(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char buf[64];
	ssize_t n;

	if (poll(&p, 1, DEMO_PORT_WAIT_MS) != 1)
		return -ETIMEDOUT;
	n = recv(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return -EIO;
	buf[n] = '\0';
	return strstr(buf, "READY=1") ? 0 : -EPROTO;
}

static int pick_port(void)
{
	int fd = net_listen("127.0.0.1", 0, NULL);
	int port;

	if (fd < 0)
		return fd;
	port = net_local_port(fd);
	close(fd);
	return port;
}

/* Read everything a child prints on stdout. */
static void slurp(int fd, char *buf, size_t len)
{
	size_t got = 0;
	ssize_t n;

	while (got + 1 < len && (n = read(fd, buf + got, len - 1 - got)) > 0)
		got += (size_t)n;
	buf[got] = '\0';
}

static int run_demo(struct vm *src, struct vm *dst, const char *dir)
{
	char *bin = getenv("FERRY_BIN"), listen[32], report[8192];
	char src_ram[256], dst_ram[256], notify[128];
	struct ferry_error err = { 0 };
	uint64_t diff = 0;
	int pipefd[2], port, rc_rx, rc_mig, eq, nfd, rc;
	pid_t rx, mig;

	if (!bin) {
		fprintf(stderr, "demo: FERRY_BIN is not set (run it with make demo)\n");
		return 1;
	}
	port = pick_port();
	if (port <= 0)
		return 1;
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
	{
		char *argv[] = { bin, "receive", "--listen", listen, "--qmp",
				 (char *)vm_qmp_path(dst), "--once", NULL };

		printf("\n$ ferry receive --listen %s --qmp %s --once   (destination host)\n",
		       listen, vm_qmp_path(dst));
		fflush(stdout);
		nfd = notify_open(dir, notify, sizeof(notify));
		if (nfd < 0) {
			fprintf(stderr, "demo: notify socket: %s\n", strerror(-nfd));
			return 1;
		}
		setenv("NOTIFY_SOCKET", notify, 1);
		rx = spawn(argv, -1);
		unsetenv("NOTIFY_SOCKET");
	}
	rc = wait_ready(nfd);
	close(nfd);
	unlink(notify);
	if (rc < 0) {
		fprintf(stderr, "demo: the receiver did not start listening\n");
		kill(rx, SIGKILL);
		wait_exit(rx);
		return 1;
	}
	if (pipe(pipefd) < 0)
		return 1;
	{
		char *argv[] = { bin, "migrate", "--qmp", (char *)vm_qmp_path(src),
				 "--to", listen, "--paused", "--json", NULL };

		printf("$ ferry migrate --qmp %s --to %s --paused --json   (source host)\n",
		       vm_qmp_path(src), listen);
		fflush(stdout);
		mig = spawn(argv, pipefd[1]);
	}
	close(pipefd[1]);
	slurp(pipefd[0], report, sizeof(report));
	close(pipefd[0]);
	rc_mig = wait_exit(mig);
	rc_rx = wait_exit(rx);
	printf("\nreport: %s", report);
	if (rc_mig != 0 || rc_rx != 0) {
		fprintf(stderr, "demo: migration failed (migrate exit %d, receive exit %d)\n",
			rc_mig, rc_rx);
		return 1;
	}

	snprintf(src_ram, sizeof(src_ram), "%s/source.ram", dir);
	snprintf(dst_ram, sizeof(dst_ram), "%s/destination.ram", dir);
	if (vm_pmemsave(src, src_ram, &err) < 0 || vm_pmemsave(dst, dst_ram, &err) < 0) {
		fprintf(stderr, "demo: pmemsave: %s\n", err.msg);
		return 1;
	}
	eq = vm_files_equal(src_ram, dst_ram, &diff, &err);
	unlink(src_ram);
	unlink(dst_ram);
	if (eq != 1) {
		fprintf(stderr, "demo: guest RAM differs at byte %llu %s\n",
			(unsigned long long)diff, err.msg);
		return 1;
	}
	printf("verified: source and destination guest RAM identical, byte for byte\n");

	if (qmp_execute(vm_qmp(dst), "cont", NULL, NULL, 10000, &err) < 0 ||
	    vm_wait_heartbeats(dst, 20, 10000, &err) < 0) {
		fprintf(stderr, "demo: destination guest does not run: %s\n", err.msg);
		return 1;
	}
	printf("destination guest resumed: %llu heartbeats seen from it\n",
	       (unsigned long long)vm_heartbeats(dst));
	return 0;
}

int main(void)
{
	struct vm_config sc = {
		.mem_mib = env_u32("DEMO_MEM_MIB", 256),
		.fill = env_str("DEMO_FILL", "mix"),
		.ws_mib = env_u32("DEMO_WS_MIB", 32),
		.rate_mib_s = env_u32("DEMO_RATE", 32),
	};
	struct vm_config dc = sc;
	struct ferry_error err = { 0 };
	struct vm *src = NULL, *dst = NULL;
	char dir[] = "/tmp/ferry-demo.XXXXXX";
	char state[64] = "";
	int rc = 1;

	dc.incoming = true;
	dc.prealloc = true;
	if (!mkdtemp(dir)) {
		perror("demo: mkdtemp");
		return 1;
	}
	/* The journals of this demo's migration go with it. */
	if (!getenv("FERRY_STATE_DIR") &&
	    tmpdir_make(state, sizeof(state), "ferry-demo-state") == 0)
		setenv("FERRY_STATE_DIR", state, 1);
	printf("ferry demo: a %u MiB guest (%s memory, dirtying %u MiB at %u MiB/s), %s\n",
	       sc.mem_mib, sc.fill, sc.ws_mib, sc.rate_mib_s,
	       env_str("FERRY_ACCEL", "tcg"));
	if (vm_start(&src, &sc, &err) < 0 || vm_start(&dst, &dc, &err) < 0) {
		fprintf(stderr, "demo: starting QEMU: %s\n", err.msg);
		goto out;
	}
	if (vm_wait_ready(src, DEMO_READY_TIMEOUT_MS, &err) < 0) {
		fprintf(stderr, "demo: guest not ready: %s\n", err.msg);
		goto out;
	}
	printf("source guest ready and dirtying memory; destination waiting (-incoming defer)\n");
	rc = run_demo(src, dst, dir);
out:
	vm_stop(src);
	vm_stop(dst);
	rmdir(dir);
	if (state[0])
		tmpdir_remove(state);
	printf(rc == 0 ? "demo: ok\n" : "demo: FAILED\n");
	return rc;
}
