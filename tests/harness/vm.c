/*
 * QEMU's life as the tests see it: start with the test guest, QMP, stop.
 * See vm.h for the contract and vm_priv.h for how the files divide it.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/harness/vm_priv.h"

#define VM_DEFAULT_MEM_MIB 128u
#define VM_DEFAULT_HB_MS 10u
#define VM_DEFAULT_FILL "random"
#define VM_DEFAULT_GUEST "build/guest.elf"
#define VM_DEFAULT_QEMU "qemu-system-x86_64"

/* QEMU's command line: bounded, built in one arena. */
#define VM_ARGV_MAX 64
#define VM_ARGBUF_BYTES 4096
/* Poll period while waiting for QEMU to start or to die. */
#define VM_POLL_MS 5
/* How much of QEMU's stderr an error message quotes. */
#define VM_LOG_TAIL_BYTES 300
#define VM_CMP_CHUNK_BYTES (1u << 20)

struct argv_builder {
	char *argv[VM_ARGV_MAX + 1];
	int argc;
	char buf[VM_ARGBUF_BYTES];
	size_t used;
};

/* Append one formatted argument; -E2BIG when the arena or argv is full. */
static int __attribute__((format(printf, 2, 3)))
argv_add(struct argv_builder *b, const char *fmt, ...)
{
	size_t room = sizeof(b->buf) - b->used;
	va_list ap;
	int n;

	if (b->argc == VM_ARGV_MAX)
		return -E2BIG;
	va_start(ap, fmt);
	n = vsnprintf(b->buf + b->used, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= room)
		return -E2BIG;
	b->argv[b->argc++] = b->buf + b->used;
	b->argv[b->argc] = NULL;
	b->used += (size_t)n + 1;
	return 0;
}

/* Append @s split on spaces. */
static int argv_add_split(struct argv_builder *b, const char *s)
{
	while (s && *s) {
		size_t n;
		int rc;

		while (*s == ' ')
			s++;
		n = strcspn(s, " ");
		if (n == 0)
			break;
		rc = argv_add(b, "%.*s", (int)n, s);
		if (rc < 0)
			return rc;
		s += n;
	}
	return 0;
}

static const char *env_or(const char *name, const char *dflt)
{
	const char *v = getenv(name);

	return v && *v ? v : dflt;
}

const char *vm_qemu_binary(void)
{
	return env_or("FERRY_QEMU", VM_DEFAULT_QEMU);
}

static bool fill_known(const char *fill)
{
	static const char *const fills[] = { "zero", "random", "text", "mix" };

	for (size_t i = 0; i < sizeof(fills) / sizeof(fills[0]); i++) {
		if (strcmp(fill, fills[i]) == 0)
			return true;
	}
	return false;
}

/* The config with defaults applied, validated once here. */
static int config_resolve(const struct vm_config *in, struct vm_config *c,
			  struct ferry_error *err)
{
	*c = *in;
	if (!c->mem_mib)
		c->mem_mib = VM_DEFAULT_MEM_MIB;
	if (!c->fill)
		c->fill = VM_DEFAULT_FILL;
	if (!c->hb_ms)
		c->hb_ms = VM_DEFAULT_HB_MS;
	if (!c->seed)
		c->seed = 1;
	if (!c->accel)
		c->accel = env_or("FERRY_ACCEL", "tcg");
	if (!c->guest_path)
		c->guest_path = env_or("FERRY_GUEST", VM_DEFAULT_GUEST);
	if (c->mem_mib < VM_MEM_MIB_MIN || c->mem_mib > VM_MEM_MIB_MAX)
		return ferry_error_set(err, -EINVAL, "mem_mib %u outside %u..%u",
				       c->mem_mib, VM_MEM_MIB_MIN, VM_MEM_MIB_MAX);
	if (!fill_known(c->fill))
		return ferry_error_set(err, -EINVAL,
				       "unknown fill '%s' (zero, random, text, mix)", c->fill);
	if (c->ws_mib > c->mem_mib)
		return ferry_error_set(err, -EINVAL, "working set %u MiB > RAM %u MiB",
				       c->ws_mib, c->mem_mib);
	if (access(c->guest_path, R_OK) < 0)
		return ferry_error_set(err, -errno, "guest image %s: %s (make %s?)",
				       c->guest_path, strerror(errno), VM_DEFAULT_GUEST);
	return 0;
}

/*
 * The command line. Everything that reaches the guest or its devices is a
 * function of the config alone, so that a source and a destination built
 * from the same config can migrate; only paths and -S/-incoming differ.
 */
static int build_argv(struct argv_builder *b, const struct vm_config *c,
		      const struct vm *vm)
{
	int rc = 0;

	rc |= argv_add(b, "%s", vm_qemu_binary());
	rc |= argv_add(b, "-machine") | argv_add(b, "pc");
	rc |= argv_add(b, "-accel") | argv_add(b, "%s", c->accel);
	rc |= argv_add(b, "-cpu") | argv_add(b, "qemu64");
	rc |= argv_add(b, "-m") | argv_add(b, "%u", c->mem_mib);
	rc |= argv_add(b, "-nodefaults") | argv_add(b, "-no-user-config");
	rc |= argv_add(b, "-display") | argv_add(b, "none");
	rc |= argv_add(b, "-kernel") | argv_add(b, "%s", c->guest_path);
	rc |= argv_add(b, "-append");
	rc |= argv_add(b, "fill=%s ws=%u rate=%u hb=%u seed=%u", c->fill, c->ws_mib,
		       c->rate_mib_s, c->hb_ms, c->seed);
	/* COM1 on QEMU's stdout, a pipe read by the serial thread. */
	rc |= argv_add(b, "-chardev") | argv_add(b, "stdio,id=ser0,signal=off");
	rc |= argv_add(b, "-serial") | argv_add(b, "chardev:ser0");
	/* The harness socket comes last: once it exists, ferry's is listening. */
	rc |= argv_add(b, "-qmp") | argv_add(b, "unix:%s,server=on,wait=off", vm->qmp_path);
	rc |= argv_add(b, "-qmp") | argv_add(b, "unix:%s,server=on,wait=off",
					      vm->harness_path);
	if (c->incoming) {
		rc |= argv_add(b, "-S");
		rc |= argv_add(b, "-incoming") | argv_add(b, "defer");
	}
	if (c->prealloc)
		rc |= argv_add(b, "-mem-prealloc");
	rc |= argv_add_split(b, c->extra_args);
	return rc ? -E2BIG : 0;
}

/* The last line of QEMU's stderr, for error messages. */
static void log_tail(const struct vm *vm, char *out, size_t len)
{
	char buf[VM_LOG_TAIL_BYTES + 1];
	ssize_t n = 0;
	off_t size;
	int fd = open(vm->log_path, O_RDONLY | O_CLOEXEC);
	char *p;

	out[0] = '\0';
	if (fd < 0)
		return;
	size = lseek(fd, 0, SEEK_END);
	if (size > 0) {
		off_t from = size > VM_LOG_TAIL_BYTES ? size - VM_LOG_TAIL_BYTES : 0;

		n = pread(fd, buf, (size_t)(size - from), from);
	}
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	p = strrchr(buf, '\n');
	snprintf(out, len, "%s", p ? p + 1 : buf);
}

/* The child side of fork(): only async-signal-safe calls until exec. */
static void __attribute__((noreturn))
exec_qemu(char *const argv[], pid_t parent, int out_fd, int log_fd, int null_fd,
	  int netns_fd)
{
	sigset_t none;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)	/* the parent died before prctl */
		_exit(127);
	if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) < 0)
		_exit(127);
	if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 ||
	    dup2(log_fd, STDERR_FILENO) < 0)
		_exit(127);
	/* No other VM's pipe may stay open in this QEMU: its reader would
	 * never see EOF. */
	close_range(3, ~0u, 0);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execvp(argv[0], argv);
	{
		static const char msg[] = "vm harness: cannot execute QEMU\n";

		if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) {
			/* Nothing left to report with. */
		}
	}
	_exit(127);
}

/* Reap QEMU if it exited; with @block, wait for it. Returns true when
 * reaped (now or before). */
static bool vm_reap(struct vm *vm, bool block)
{
	bool reaped;

	pthread_mutex_lock(&vm->lock);
	if (!vm->reaped && vm->pid > 0) {
		int st;
		pid_t r;

		do {
			r = waitpid(vm->pid, &st, block ? 0 : WNOHANG);
		} while (r < 0 && errno == EINTR);
		if (r == vm->pid || (r < 0 && errno == ECHILD)) {
			vm->reaped = true;
			if (vm->slot >= 0)
				vm_reg_clear_pid(vm->slot);
		}
	}
	reaped = vm->reaped;
	pthread_mutex_unlock(&vm->lock);
	return reaped;
}

/* QEMU is up when it has created the harness socket, its last. */
static int wait_started(struct vm *vm, struct ferry_error *err)
{
	int waited_ms = 0;
	char tail[VM_LOG_TAIL_BYTES];
	struct stat st;

	while (stat(vm->harness_path, &st) < 0) {
		if (vm_reap(vm, false)) {
			log_tail(vm, tail, sizeof(tail));
			return ferry_error_set(err, -ECHILD,
					       "QEMU exited during start-up: %s", tail);
		}
		if (waited_ms >= VM_START_TIMEOUT_MS)
			return ferry_error_set(err, -ETIMEDOUT,
					       "QEMU did not create %s in %d ms",
					       vm->harness_path, VM_START_TIMEOUT_MS);
		usleep(VM_POLL_MS * 1000);
		waited_ms += VM_POLL_MS;
	}
	return 0;
}

static int set_paths(struct vm *vm, struct ferry_error *err)
{
	snprintf(vm->dir, sizeof(vm->dir), "/tmp/ferry-vm.XXXXXX");
	if (!mkdtemp(vm->dir))
		return ferry_error_set(err, -errno, "mkdtemp %s: %s", vm->dir,
				       strerror(errno));
	snprintf(vm->qmp_path, sizeof(vm->qmp_path), "%s/%s", vm->dir, VM_QMP_SOCK);
	snprintf(vm->harness_path, sizeof(vm->harness_path), "%s/%s", vm->dir,
		 VM_HARNESS_SOCK);
	snprintf(vm->log_path, sizeof(vm->log_path), "%s/%s", vm->dir, VM_QEMU_LOG);
	return 0;
}

/* fork + exec QEMU with its stdout into a new pipe; *@serial_fd gets the
 * read end. */
static int spawn_qemu(struct vm *vm, struct argv_builder *b, int *serial_fd,
		      const char *netns, struct ferry_error *err)
{
	int pfd[2], log_fd, null_fd, rc = 0, netns_fd = -1;
	pid_t parent = getpid(), pid;
	char nspath[128];

	if (netns) {
		snprintf(nspath, sizeof(nspath), "/var/run/netns/%s", netns);
		netns_fd = open(nspath, O_RDONLY | O_CLOEXEC);
		if (netns_fd < 0)
			return ferry_error_set(err, -errno, "network namespace %s: %s",
					       netns, strerror(errno));
	}

	if (pipe2(pfd, O_CLOEXEC) < 0) {
		if (netns_fd >= 0)
			close(netns_fd);
		return ferry_error_set(err, -errno, "serial pipe: %s", strerror(errno));
	}
	log_fd = open(vm->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (log_fd < 0) {
		rc = ferry_error_set(err, -errno, "%s: %s", vm->log_path, strerror(errno));
		goto err_close_pipe;
	}
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null_fd < 0) {
		rc = ferry_error_set(err, -errno, "/dev/null: %s", strerror(errno));
		goto err_close_log;
	}
	pid = fork();
	if (pid < 0) {
		rc = ferry_error_set(err, -errno, "fork: %s", strerror(errno));
		goto err_close_null;
	}
	if (pid == 0)
		exec_qemu(b->argv, parent, pfd[1], log_fd, null_fd, netns_fd);
	vm->pid = pid;
	vm_reg_set_pid(vm->slot, pid);
	*serial_fd = pfd[0];
	pfd[0] = -1;
err_close_null:
	close(null_fd);
err_close_log:
	close(log_fd);
err_close_pipe:
	if (pfd[0] >= 0)
		close(pfd[0]);
	close(pfd[1]);
	if (netns_fd >= 0)
		close(netns_fd);
	return rc;
}

int vm_start(struct vm **out, const struct vm_config *cfg, struct ferry_error *err)
{
	struct argv_builder *b = NULL;
	struct vm_config c;
	struct vm *vm;
	int rc, serial_fd = -1;

	*out = NULL;
	rc = config_resolve(cfg, &c, err);
	if (rc < 0)
		return rc;
	vm = calloc(1, sizeof(*vm));
	b = calloc(1, sizeof(*b));
	if (!vm || !b) {
		rc = ferry_error_set(err, -ENOMEM, "no memory for a VM");
		goto err_free;
	}
	pthread_mutex_init(&vm->lock, NULL);
	vm->slot = -1;
	vm->mem_mib = c.mem_mib;
	rc = set_paths(vm, err);
	if (rc < 0)
		goto err_free;
	rc = vm_reg_add(vm->dir, err);
	if (rc < 0)
		goto err_remove_dir;
	vm->slot = rc;
	rc = build_argv(b, &c, vm);
	if (rc < 0) {
		rc = ferry_error_set(err, rc, "QEMU command line too long (extra_args?)");
		goto err_unregister;
	}
	rc = vm_serial_init(&vm->serial, 0, err);
	if (rc < 0)
		goto err_unregister;
	rc = spawn_qemu(vm, b, &serial_fd, cfg->netns, err);
	if (rc < 0)
		goto err_serial;
	vm->serial.pid = vm->pid;
	/* From here the serial fd is the reader's, closed by vm_serial_fini(). */
	rc = vm_serial_start(&vm->serial, serial_fd, err);
	if (rc < 0)
		goto err_kill;
	rc = wait_started(vm, err);
	if (rc < 0)
		goto err_kill;
	free(b);
	*out = vm;
	return 0;

err_kill:
	vm_kill(vm);
	vm_reap(vm, true);
err_serial:
	vm_serial_fini(&vm->serial);
err_unregister:
	vm_reg_del(vm->slot);
err_remove_dir:
	vm_remove_dir(vm->dir);
err_free:
	free(b);
	free(vm);
	return rc;
}

void vm_kill(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->reaped && vm->pid > 0)
		kill(vm->pid, SIGKILL);
	pthread_mutex_unlock(&vm->lock);
	/*
	 * Reap before returning: SIGKILL ends QEMU promptly, and callers
	 * (a test checking vm_alive() right after) must not race its exit.
	 */
	vm_reap(vm, true);
}

bool vm_alive(struct vm *vm)
{
	return !vm_reap(vm, false);
}

void vm_stop(struct vm *vm)
{
	if (!vm)
		return;
	qmp_close(vm->qmp);
	vm->qmp = NULL;
	vm_kill(vm);
	vm_reap(vm, true);
	vm_serial_fini(&vm->serial);
	vm_remove_dir(vm->dir);
	vm_reg_del(vm->slot);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}

pid_t vm_pid(const struct vm *vm)
{
	return vm->pid;
}

const char *vm_dir(const struct vm *vm)
{
	return vm->dir;
}

const char *vm_qmp_path(const struct vm *vm)
{
	return vm->qmp_path;
}

int vm_qmp_connect(struct vm *vm, struct ferry_error *err)
{
	if (vm->qmp)
		return 0;
	vm->qmp = qmp_connect(vm->harness_path, VM_QMP_TIMEOUT_MS, err);
	if (!vm->qmp)
		return ferry_error_prefix(err, "harness QMP %s: ", vm->harness_path);
	return 0;
}

struct qmp *vm_qmp(struct vm *vm)
{
	struct ferry_error err = { 0 };

	if (vm_qmp_connect(vm, &err) < 0) {
		fprintf(stderr, "vm harness: %s\n", err.msg);
		return NULL;
	}
	return vm->qmp;
}

int vm_status(struct vm *vm, char *buf, size_t len, struct ferry_error *err)
{
	int rc = vm_qmp_connect(vm, err);

	if (rc < 0)
		return rc;
	return qmp_query_status_string(vm->qmp, "query-status", buf, len,
				       VM_QMP_TIMEOUT_MS, err);
}

int vm_status_settled(struct vm *vm, char *buf, size_t len,
		      struct ferry_error *err)
{
	int rc;

	for (int i = 0; i < VM_SETTLE_MS / 20; i++) {
		rc = vm_status(vm, buf, len, err);
		if (rc < 0 || strcmp(buf, "finish-migrate"))
			return rc;
		usleep(20 * 1000);
	}
	return 0;
}

int vm_pmemsave(struct vm *vm, const char *path, struct ferry_error *err)
{
	uint64_t size = (uint64_t)vm->mem_mib << 20;
	struct stat st;
	json_t *args;
	int rc;

	rc = vm_qmp_connect(vm, err);
	if (rc < 0)
		return rc;
	args = json_pack("{s:I, s:I, s:s}", "val", (json_int_t)0, "size",
			 (json_int_t)size, "filename", path);
	if (!args)
		return ferry_error_set(err, -ENOMEM, "pmemsave arguments");
	rc = qmp_execute(vm->qmp, "pmemsave", args, NULL, VM_PMEMSAVE_TIMEOUT_MS, err);
	if (rc < 0)
		return ferry_error_prefix(err, "pmemsave to %s: ", path);
	if (stat(path, &st) < 0)
		return ferry_error_set(err, -errno, "pmemsave wrote no %s: %s", path,
				       strerror(errno));
	if ((uint64_t)st.st_size != size)
		return ferry_error_set(err, -EIO, "pmemsave wrote %lld bytes to %s, not %llu",
				       (long long)st.st_size, path, (unsigned long long)size);
	return 0;
}

/* Read up to @len bytes, short only at end of file. */
static ssize_t read_full(int fd, char *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

static int open_ro(const char *path, struct ferry_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return ferry_error_set(err, -errno, "%s: %s", path, strerror(errno));
	return fd;
}

int vm_files_equal(const char *a, const char *b, uint64_t *first_diff,
		   struct ferry_error *err)
{
	return vm_files_equal_from(a, b, 0, first_diff, err);
}

int vm_files_equal_from(const char *a, const char *b, uint64_t from,
			uint64_t *first_diff, struct ferry_error *err)
{
	char *ba = NULL, *bb = NULL;
	uint64_t off = from;
	int fa, fb, rc;

	fa = open_ro(a, err);
	if (fa < 0)
		return fa;
	fb = open_ro(b, err);
	if (fb < 0) {
		rc = fb;
		goto err_close_a;
	}
	if (lseek(fa, (off_t)from, SEEK_SET) < 0 ||
	    lseek(fb, (off_t)from, SEEK_SET) < 0) {
		rc = ferry_error_set(err, -errno, "seeking to %llu: %s",
				     (unsigned long long)from, strerror(errno));
		goto out;
	}
	ba = malloc(VM_CMP_CHUNK_BYTES);
	bb = malloc(VM_CMP_CHUNK_BYTES);
	if (!ba || !bb) {
		rc = ferry_error_set(err, -ENOMEM, "no memory to compare files");
		goto out;
	}
	for (;;) {
		ssize_t na = read_full(fa, ba, VM_CMP_CHUNK_BYTES);
		ssize_t nb = read_full(fb, bb, VM_CMP_CHUNK_BYTES);
		size_t n;

		if (na < 0 || nb < 0) {
			rc = ferry_error_set(err, na < 0 ? (int)na : (int)nb, "reading %s: %s",
					     na < 0 ? a : b, strerror(-(int)(na < 0 ? na : nb)));
			goto out;
		}
		n = (size_t)(na < nb ? na : nb);
		if (memcmp(ba, bb, n) != 0) {
			size_t i = 0;

			while (ba[i] == bb[i])
				i++;
			if (first_diff)
				*first_diff = off + i;
			rc = 0;
			goto out;
		}
		if (na != nb) {
			if (first_diff)
				*first_diff = off + n;
			rc = 0;
			goto out;
		}
		if (na == 0) {
			rc = 1;
			goto out;
		}
		off += n;
	}
out:
	free(ba);
	free(bb);
	close(fb);
err_close_a:
	close(fa);
	return rc;
}
