/*
 * Nothing left behind: the registry of live VMs and the three ways it is
 * emptied when a program does not call vm_stop() itself.
 *
 *   exit() and SIGINT/SIGTERM/SIGHUP/SIGQUIT: kill every registered QEMU and
 *   remove its dir, from an atexit handler or a signal handler (then the
 *   signal is re-raised with its default action, so the exit status still
 *   says what happened). Only async-signal-safe calls on that path.
 *
 *   Anything else (SIGKILL from a test runner's timeout, abort(), libcheck's
 *   _exit() after a failed test): QEMU dies of its PR_SET_PDEATHSIG, and the
 *   janitor, a child forked at the first registration that only waits for
 *   its socket to close, removes the dirs still registered.
 *
 * The state belongs to the process that registered; a forked child that
 * registers VMs of its own starts afresh (its own janitor), and a forked
 * child's exit() never touches its parent's VMs.
 */
#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/harness/vm_priv.h"

struct reg_slot {
	volatile sig_atomic_t used;
	volatile pid_t pid;	/* 0: none, or already being reaped */
	char dir[VM_DIR_MAX];
};

/*
 * How long the first registration waits for the janitor to say it has left
 * its parent's process group: a fork and two system calls, so only a
 * machine that is thrashing comes near it.
 */
#define JANITOR_READY_TIMEOUT_MS 5000

/* The janitor's one message to its parent, once it is out of reach. */
#define JANITOR_READY 'R'

/* One message to the janitor; a SOCK_SEQPACKET keeps it whole. */
struct janitor_msg {
	char op;		/* '+' add, '-' forget */
	char dir[VM_DIR_MAX];
};

static const int cleanup_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct reg_slot slots[VM_LIVE_MAX];
static volatile pid_t owner_pid;
static int janitor_fd = -1;
static bool atexit_done;

void vm_remove_dir(const char *dir)
{
	static const char *const names[] = { VM_QMP_SOCK, VM_HARNESS_SOCK,
					     VM_QEMU_LOG };
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dfd >= 0) {
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			unlinkat(dfd, names[i], 0);
		close(dfd);
	}
	rmdir(dir);
}

/* Kill and remove everything registered by this process. Async-signal-safe. */
static void emergency_cleanup(void)
{
	int i;

	if (owner_pid != getpid())
		return;
	for (i = 0; i < VM_LIVE_MAX; i++) {
		if (slots[i].used && slots[i].pid > 0)
			kill(slots[i].pid, SIGKILL);
	}
	for (i = 0; i < VM_LIVE_MAX; i++) {
		if (slots[i].used)
			vm_remove_dir(slots[i].dir);
	}
}

static void on_exit_cleanup(void)
{
	emergency_cleanup();
}

/* Installed with SA_RESETHAND: the signal, blocked while this runs, is
 * delivered again with its default action when the handler returns. */
static void on_signal(int sig)
{
	int saved = errno;

	emergency_cleanup();
	raise(sig);
	errno = saved;
}

static void install_handlers(void)
{
	for (size_t i = 0; i < sizeof(cleanup_signals) / sizeof(cleanup_signals[0]); i++) {
		struct sigaction old, sa;

		/* The program's own handler, or an ignored signal, is left alone. */
		if (sigaction(cleanup_signals[i], NULL, &old) < 0 ||
		    old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO))
			continue;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_signal;
		sa.sa_flags = SA_RESETHAND;
		sigemptyset(&sa.sa_mask);
		sigaction(cleanup_signals[i], &sa, NULL);
	}
}

/* The janitor: forked from a threaded process, so only async-signal-safe
 * calls, fixed memory. Leaves its parent's process group and ignores the
 * signals a terminal sends, so that a Ctrl-C that kills the program leaves
 * it running long enough to clean up; and says so (JANITOR_READY) before
 * it does anything else, see janitor_start(). */
static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void __attribute__((noreturn)) janitor_main(int fd)
{
	char dirs[VM_LIVE_MAX][VM_DIR_MAX];
	bool tree[VM_LIVE_MAX] = { false };
	struct janitor_msg m;
	int i;

	memset(dirs, 0, sizeof(dirs));
	setsid();
	for (size_t k = 0; k < sizeof(cleanup_signals) / sizeof(cleanup_signals[0]); k++)
		signal(cleanup_signals[k], SIG_IGN);
	if (fd > 0)
		close_range(0, (unsigned)fd - 1, 0);
	close_range((unsigned)fd + 1, ~0u, 0);
	if (send(fd, &(char){ JANITOR_READY }, 1, MSG_NOSIGNAL) != 1)
		_exit(1);
	for (;;) {
		ssize_t n = recv(fd, &m, sizeof(m), 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (n != sizeof(m))
			continue;
		m.dir[VM_DIR_MAX - 1] = '\0';
		for (i = 0; i < VM_LIVE_MAX; i++) {
			if ((m.op == '+' || m.op == '*') && dirs[i][0] == '\0') {
				memcpy(dirs[i], m.dir, VM_DIR_MAX);
				tree[i] = m.op == '*';
				break;
			}
			if (m.op == '-' && strcmp(dirs[i], m.dir) == 0) {
				dirs[i][0] = '\0';
				break;
			}
		}
	}
	for (i = 0; i < VM_LIVE_MAX; i++) {
		if (dirs[i][0] && tree[i])
			nftw(dirs[i], rm_entry, 16, FTW_DEPTH | FTW_PHYS);
		else if (dirs[i][0])
			vm_remove_dir(dirs[i]);
	}
	_exit(0);
}

/*
 * Wait for the janitor's JANITOR_READY: until then it is still in our
 * process group, and libcheck, once a forked test has exited, SIGKILLs that
 * group (killpg() of the test's pid), janitor and all. A test that fails
 * in the first milliseconds (a missing guest image) used to exit before
 * the janitor had run at all, and its scratch dir stayed in /tmp.
 * Returns 0, or -errno when the janitor is dead or silent.
 */
static int janitor_wait_ready(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char c;
	ssize_t n;
	int rc;

	do
		rc = poll(&pfd, 1, JANITOR_READY_TIMEOUT_MS);
	while (rc < 0 && errno == EINTR);
	if (rc < 0)
		return -errno;
	if (rc == 0)
		return -ETIMEDOUT;
	do
		n = recv(fd, &c, 1, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return n == 1 && c == JANITOR_READY ? 0 : -EPIPE;
}

static int janitor_start(struct ferry_error *err)
{
	int sv[2], rc;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return ferry_error_set(err, -errno, "janitor socketpair: %s",
				       strerror(errno));
	pid = fork();
	if (pid < 0) {
		rc = -errno;
		ferry_error_set(err, rc, "cannot fork the janitor: %s",
				strerror(-rc));
		goto err_close_sockets;
	}
	if (pid == 0)
		janitor_main(sv[1]);
	close(sv[1]);
	sv[1] = -1;
	rc = janitor_wait_ready(sv[0]);
	if (rc < 0) {
		ferry_error_set(err, rc, "janitor %d not ready: %s", (int)pid,
				strerror(-rc));
		goto err_kill_janitor;
	}
	janitor_fd = sv[0];
	return 0;

err_kill_janitor:
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
err_close_sockets:
	close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	return rc;
}

static void janitor_send(char op, const char *dir)
{
	struct janitor_msg m = { .op = op };

	if (janitor_fd < 0)
		return;
	memcpy(m.dir, dir, strnlen(dir, VM_DIR_MAX - 1));
	/* A dead janitor only costs its service; never SIGPIPE for it. */
	if (send(janitor_fd, &m, sizeof(m), MSG_NOSIGNAL) < 0) {
		/* Nothing better to do: the other cleanups still run. */
	}
}

/* First registration in this process (or in a forked child of one). */
static int reg_setup_locked(struct ferry_error *err)
{
	int rc;

	if (owner_pid == getpid())
		return 0;
	/* Slots and janitor copied from a parent are the parent's. */
	memset(slots, 0, sizeof(slots));
	if (janitor_fd >= 0)
		close(janitor_fd);
	janitor_fd = -1;
	rc = janitor_start(err);
	if (rc < 0)
		return rc;
	owner_pid = getpid();
	if (!atexit_done) {
		atexit(on_exit_cleanup);
		install_handlers();
		atexit_done = true;
	}
	return 0;
}

int vm_reg_add(const char *dir, struct ferry_error *err)
{
	int rc, slot = -1;

	if (strlen(dir) >= VM_DIR_MAX)
		return ferry_error_set(err, -ENAMETOOLONG, "temp dir name too long: %s", dir);
	pthread_mutex_lock(&reg_lock);
	rc = reg_setup_locked(err);
	if (rc < 0)
		goto out_unlock;
	for (int i = 0; i < VM_LIVE_MAX; i++) {
		if (!slots[i].used) {
			slot = i;
			break;
		}
	}
	if (slot < 0) {
		rc = ferry_error_set(err, -ENOSPC, "more than %d live VMs", VM_LIVE_MAX);
		goto out_unlock;
	}
	memcpy(slots[slot].dir, dir, strlen(dir) + 1);
	slots[slot].pid = 0;
	slots[slot].used = 1;
	janitor_send('+', dir);
	rc = slot;
out_unlock:
	pthread_mutex_unlock(&reg_lock);
	return rc;
}

void vm_reg_set_pid(int slot, pid_t pid)
{
	pthread_mutex_lock(&reg_lock);
	slots[slot].pid = pid;
	pthread_mutex_unlock(&reg_lock);
}

void vm_reg_clear_pid(int slot)
{
	pthread_mutex_lock(&reg_lock);
	slots[slot].pid = 0;
	pthread_mutex_unlock(&reg_lock);
}

void vm_reg_del(int slot)
{
	pthread_mutex_lock(&reg_lock);
	janitor_send('-', slots[slot].dir);
	slots[slot].used = 0;
	slots[slot].pid = 0;
	pthread_mutex_unlock(&reg_lock);
}

/*
 * A scratch directory the janitor removes, with everything in it, if this
 * process dies without removing it itself (libcheck ends a failed test
 * with _exit(), which skips atexit handlers).
 */
int vm_reg_tree(const char *dir, struct ferry_error *err)
{
	int rc;

	if (strlen(dir) >= VM_DIR_MAX)
		return ferry_error_set(err, -ENAMETOOLONG, "temp dir name too long: %s", dir);
	pthread_mutex_lock(&reg_lock);
	rc = reg_setup_locked(err);
	if (rc == 0)
		janitor_send('*', dir);
	pthread_mutex_unlock(&reg_lock);
	return rc;
}

void vm_unreg_tree(const char *dir)
{
	pthread_mutex_lock(&reg_lock);
	if (owner_pid == getpid())
		janitor_send('-', dir);
	pthread_mutex_unlock(&reg_lock);
}
