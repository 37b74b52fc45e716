/*
 * The launcher ferry ships: ferry launch-qemu NAME QMP_PATH (launch.h has
 * the contract with the service).
 *
 * It re-creates the source QEMU's command line for the destination from
 * what the source sent, which it does not trust: the QEMU binary is its
 * own, never the source's argv[0]; every option must be on an allowlist;
 * the source's monitors, incoming, daemonize and pid file options are
 * dropped; every file path an option names must lie in one of the
 * directories the service allows; and it adds -S, -incoming defer and its
 * own QMP socket. Anything it refuses is refused before anything starts.
 * For a block migration, a disk image that does not exist is created
 * empty, with the format the command line gives and the virtual size of
 * the source's disk (from the manifest), as Nova does.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "launch.h"
#include "common/util.h"

#define LAUNCHER_ARGS_MAX (WIRE_CONFIG_ARGS_MAX + 16)
#define LAUNCHER_ALLOW_MAX 16
/* How long QEMU may take to open its QMP socket. */
#define LAUNCHER_QMP_WAIT_MS 15000

enum opt_kind {
	OPT_KEEP0,	/* no argument, kept */
	OPT_DROP0,	/* no argument, dropped */
	OPT_KEEP1,	/* one argument, kept (its file keys checked) */
	OPT_DROP1,	/* one argument, dropped */
	OPT_PATH1,	/* one argument that is a path */
	OPT_DRIVE,	/* -drive: file= checked, created for --block */
	OPT_CHARDEV,	/* -chardev: local backends only */
	OPT_SERIAL,	/* -serial / -parallel: chardev:ID, none, null */
	OPT_NETDEV,	/* -netdev: user only */
	OPT_OBJECT,	/* -object: an allowlist of types */
};

static const struct { const char *name; enum opt_kind kind; } opts[] = {
	{ "nodefaults", OPT_KEEP0 }, { "no-user-config", OPT_KEEP0 },
	{ "enable-kvm", OPT_KEEP0 }, { "no-reboot", OPT_KEEP0 },
	{ "no-shutdown", OPT_KEEP0 }, { "mem-prealloc", OPT_KEEP0 },
	{ "nographic", OPT_KEEP0 },
	{ "S", OPT_DROP0 }, { "daemonize", OPT_DROP0 },
	{ "machine", OPT_KEEP1 }, { "M", OPT_KEEP1 }, { "accel", OPT_KEEP1 },
	{ "cpu", OPT_KEEP1 }, { "m", OPT_KEEP1 }, { "smp", OPT_KEEP1 },
	{ "name", OPT_KEEP1 }, { "uuid", OPT_KEEP1 }, { "append", OPT_KEEP1 },
	{ "display", OPT_KEEP1 }, { "vga", OPT_KEEP1 }, { "rtc", OPT_KEEP1 },
	{ "boot", OPT_KEEP1 }, { "global", OPT_KEEP1 }, { "device", OPT_KEEP1 },
	{ "msg", OPT_KEEP1 }, { "overcommit", OPT_KEEP1 }, { "numa", OPT_KEEP1 },
	{ "k", OPT_KEEP1 },
	{ "kernel", OPT_PATH1 }, { "initrd", OPT_PATH1 }, { "bios", OPT_PATH1 },
	{ "dtb", OPT_PATH1 },
	{ "qmp", OPT_DROP1 }, { "qmp-pretty", OPT_DROP1 },
	{ "monitor", OPT_DROP1 }, { "mon", OPT_DROP1 },
	{ "incoming", OPT_DROP1 }, { "pidfile", OPT_DROP1 }, { "D", OPT_DROP1 },
	{ "drive", OPT_DRIVE }, { "chardev", OPT_CHARDEV },
	{ "serial", OPT_SERIAL }, { "parallel", OPT_SERIAL },
	{ "netdev", OPT_NETDEV }, { "object", OPT_OBJECT },
};

/* Keys whose value is a file path, in any option's key=value list. */
static const char *const path_keys[] = {
	"file", "filename", "path", "logfile", "mem-path", "script",
	"downscript", "dir", "romfile", "smb", "tftp", "bootfile", "x509-dir",
};

/* Keys that open the destination host to the guest or the network,
 * whatever their value. */
static const char *const denied_keys[] = {
	"hostfwd", "guestfwd", "host", "sysfsdev", "vhostfd", "fd", "fds",
};

/* Devices that take host hardware or shared host memory. */
static const char *const denied_devices[] = {
	"vfio", "vhost", "ivshmem", "usb-host", "pci-assign", "xen",
};

static const char *const object_types[] = {
	"memory-backend-ram", "memory-backend-file", "memory-backend-memfd",
	"iothread", "rng-random", "rng-builtin",
};

struct launcher {
	const char *vm, *qmp_path, *state_dir;
	char allow[LAUNCHER_ALLOW_MAX][PATH_MAX];
	uint32_t nallow;
	bool block;
	const char *disks;		/* "ID=SIZE,..." */
	const char *in[WIRE_CONFIG_ARGS_MAX];
	uint32_t nin;
	char *out[LAUNCHER_ARGS_MAX + 1];
	uint32_t nout;
	char created[LAUNCH_CREATED_MAX][PATH_MAX];
	uint32_t ncreated;
};

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;

	fputs("ferry launch-qemu: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return -EINVAL;
}

static int out_add(struct launcher *l, const char *arg)
{
	if (l->nout == LAUNCHER_ARGS_MAX)
		return fail("the command line has too many arguments");
	l->out[l->nout] = strdup(arg);
	if (!l->out[l->nout])
		return fail("out of memory");
	l->out[++l->nout] = NULL;
	return 0;
}

/*
 * Whether @path lies in an allowed directory: its directory, resolved
 * (symlinks, ..), must be one of them or below one. The file itself need
 * not exist (an image --block creates).
 */
static bool path_allowed(const struct launcher *l, const char *path)
{
	char dir[PATH_MAX], real[PATH_MAX];
	const char *slash;

	if (path[0] != '/')
		return false;
	slash = strrchr(path, '/');
	snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	if (!realpath(dir[0] ? dir : "/", real))
		return false;
	for (uint32_t i = 0; i < l->nallow; i++) {
		size_t n = strlen(l->allow[i]);

		if (!strncmp(real, l->allow[i], n) &&
		    (real[n] == '\0' || real[n] == '/' || n == 1))
			return true;
	}
	return false;
}

/* The value of @key in a QEMU key=value,... list, copied into @buf. */
static bool kv_get(const char *list, const char *key, char *buf, size_t len)
{
	size_t klen = strlen(key);
	const char *p = list;

	while (p && *p) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);

		if (n > klen && !strncmp(p, key, klen) && p[klen] == '=') {
			snprintf(buf, len, "%.*s", (int)(n - klen - 1), p + klen + 1);
			return true;
		}
		p = end ? end + 1 : NULL;
	}
	return false;
}

/* The first element of a list ("stdio" in "stdio,id=x"), or its type=. */
static void kv_first(const char *list, char *buf, size_t len)
{
	const char *end = strchr(list, ',');

	snprintf(buf, len, "%.*s", (int)(end ? end - list : (long)strlen(list)),
		 list);
	if (strchr(buf, '=') && !kv_get(list, "type", buf, len))
		kv_get(list, "qom-type", buf, len);
}

static int check_paths(const struct launcher *l, const char *opt,
		       const char *list)
{
	const char *p = list;

	/* QEMU's ",," escape would hide a key from this parser. */
	if (strstr(list, ",,"))
		return fail("-%s %s: escaped commas are not supported", opt, list);
	/* Every key=value: a path key (or a dotted one ending in one, as
	 * file.filename) must name an allowed place; a denied key goes; a
	 * '/' anywhere else is a path the launcher cannot check. */
	while (p && *p) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', n);
		char key[64], v[PATH_MAX];
		const char *leaf;
		bool is_path = false;

		if (eq && (size_t)(eq - p) < sizeof(key)) {
			snprintf(key, sizeof(key), "%.*s", (int)(eq - p), p);
			snprintf(v, sizeof(v), "%.*s", (int)(n - (size_t)(eq - p) - 1),
				 eq + 1);
			leaf = strrchr(key, '.') ? strrchr(key, '.') + 1 : key;
			for (size_t i = 0; i < FERRY_ARRAY_SIZE(denied_keys); i++)
				if (!strcmp(leaf, denied_keys[i]))
					return fail("-%s %s: '%s' is not allowed by the "
						    "launcher", opt, list, key);
			for (size_t i = 0; i < FERRY_ARRAY_SIZE(path_keys); i++)
				is_path |= !strcmp(leaf, path_keys[i]);
			if (is_path && !path_allowed(l, v))
				return fail("-%s names %s, outside the directories "
					    "this service allows", opt, v);
		}
		if (!is_path && memchr(p, '/', n))
			return fail("-%s %s: a path where the launcher cannot "
				    "check it", opt, list);
		p = end ? end + 1 : NULL;
	}
	return 0;
}

/* The manifest's size for the disk @id, 0 when not listed. */
static uint64_t disk_size(const struct launcher *l, const char *id)
{
	size_t n = strlen(id);
	const char *p = l->disks;

	while (p && *p && n) {
		if (!strncmp(p, id, n) && p[n] == '=')
			return strtoull(p + n + 1, NULL, 10);
		p = strchr(p, ',');
		p = p ? p + 1 : NULL;
	}
	return 0;
}

/* The device id of the -device that uses drive @drive_id, if any. */
static bool device_of_drive(const struct launcher *l, const char *drive_id,
			    char *buf, size_t len)
{
	char v[128];

	for (uint32_t i = 1; i + 1 < l->nin; i++) {
		const char *o = l->in[i];

		o += o[0] == '-' && o[1] == '-';
		if (strcmp(o, "-device") != 0)
			continue;
		if (kv_get(l->in[i + 1], "drive", v, sizeof(v)) &&
		    !strcmp(v, drive_id) && kv_get(l->in[i + 1], "id", buf, len))
			return true;
	}
	return false;
}

/* --block: an image the destination lacks is made empty, same size. */
static int create_image(struct launcher *l, const char *drive)
{
	char file[PATH_MAX], fmt[32] = "raw", id[128], dev[128], size[32];
	struct stat st;
	uint64_t bytes = 0;
	pid_t pid;
	int status;

	if (!kv_get(drive, "file", file, sizeof(file)) || stat(file, &st) == 0)
		return 0;
	if (!l->block)
		return fail("disk image %s does not exist (and this is not a "
			    "block migration)", file);
	kv_get(drive, "format", fmt, sizeof(fmt));
	if (kv_get(drive, "id", id, sizeof(id))) {
		if (device_of_drive(l, id, dev, sizeof(dev)))
			bytes = disk_size(l, dev);
		if (!bytes)
			bytes = disk_size(l, id);
	}
	if (!bytes)
		return fail("disk image %s does not exist and the migration does "
			    "not say how big its disk is", file);
	if (strspn(fmt, "abcdefghijklmnopqrstuvwxyz0123456789") != strlen(fmt))
		return fail("disk image format '%s' is not valid", fmt);
	if (l->ncreated == LAUNCH_CREATED_MAX)
		return fail("too many images to create");
	snprintf(size, sizeof(size), "%llu", (unsigned long long)bytes);
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		dup2(null, 1);
		execlp("qemu-img", "qemu-img", "create", "-q", "-f", fmt, file,
		       size, (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0)
		return fail("qemu-img create -f %s %s %s failed", fmt, file, size);
	snprintf(l->created[l->ncreated++], PATH_MAX, "%s", file);
	return 0;
}

static int find_opt(const char *name)
{
	for (size_t i = 0; i < FERRY_ARRAY_SIZE(opts); i++)
		if (!strcmp(opts[i].name, name))
			return (int)i;
	return -1;
}

/* One option of the source's command line: the transition of the walk. */
static int take_opt(struct launcher *l, enum opt_kind kind, const char *opt,
		    const char *arg)
{
	const char *name = opt + 1;
	char first[64];
	int rc = 0;

	switch (kind) {
	case OPT_KEEP0:
		return out_add(l, opt);
	case OPT_DROP0:
	case OPT_DROP1:
		return 0;
	case OPT_PATH1:
		if (!path_allowed(l, arg))
			return fail("-%s %s is outside the directories this "
				    "service allows", name, arg);
		break;
	case OPT_KEEP1:
		/* The kernel's command line is the guest's business. */
		if (!strcmp(name, "append"))
			break;
		if (!strcmp(name, "device")) {
			kv_first(arg, first, sizeof(first));
			for (size_t i = 0; i < FERRY_ARRAY_SIZE(denied_devices); i++)
				if (!strncmp(first, denied_devices[i],
					     strlen(denied_devices[i])))
					return fail("-device %s: host devices and "
						    "shared host memory are not "
						    "allowed by the launcher", first);
		}
		rc = check_paths(l, name, arg);
		break;
	case OPT_DRIVE:
		rc = check_paths(l, name, arg);
		if (rc == 0)
			rc = create_image(l, arg);
		break;
	case OPT_CHARDEV:
		kv_first(arg, first, sizeof(first));
		if (strcmp(first, "stdio") && strcmp(first, "null") &&
		    strcmp(first, "file") && strcmp(first, "pipe") &&
		    !(!strcmp(first, "socket") && kv_get(arg, "path", first,
							  sizeof(first))))
			return fail("-chardev %s: only local backends (stdio, "
				    "null, file, pipe, unix socket) are allowed", arg);
		rc = check_paths(l, name, arg);
		break;
	case OPT_SERIAL:
		if (strncmp(arg, "chardev:", 8) && strcmp(arg, "none") &&
		    strcmp(arg, "null"))
			return fail("-%s %s: only chardev:ID, none or null", name,
				    arg);
		break;
	case OPT_NETDEV:
		kv_first(arg, first, sizeof(first));
		if (strcmp(first, "user"))
			return fail("-netdev %s: only user networking can be "
				    "re-created here", arg);
		rc = check_paths(l, name, arg);
		break;
	case OPT_OBJECT:
		kv_first(arg, first, sizeof(first));
		rc = -1;
		for (size_t i = 0; i < FERRY_ARRAY_SIZE(object_types); i++)
			if (!strcmp(first, object_types[i]))
				rc = 0;
		if (rc)
			return fail("-object %s: type '%s' is not allowed", arg,
				    first);
		rc = check_paths(l, name, arg);
		break;
	}
	if (rc == 0)
		rc = out_add(l, opt);
	return rc ? rc : out_add(l, arg);
}

static int rewrite(struct launcher *l)
{
	const char *qemu = getenv("FERRY_QEMU");
	char qmp[PATH_MAX + 32];
	int rc;

	rc = out_add(l, qemu && qemu[0] ? qemu : "qemu-system-x86_64");
	for (uint32_t i = 1; rc == 0 && i < l->nin; i++) {
		/* -opt and --opt: @opt is the one-dash form. */
		const char *opt = l->in[i] + (l->in[i][0] == '-' &&
					       l->in[i][1] == '-');
		int k;

		if (opt[0] != '-')
			return fail("unexpected argument '%s'", opt);
		k = find_opt(opt + 1);
		if (k < 0)
			return fail("option %s is not allowed by the launcher", opt);
		if (opts[k].kind == OPT_KEEP0 || opts[k].kind == OPT_DROP0) {
			rc = take_opt(l, opts[k].kind, opt, NULL);
			continue;
		}
		if (i + 1 >= l->nin)
			return fail("option %s lacks its argument", opt);
		rc = take_opt(l, opts[k].kind, opt, l->in[++i]);
	}
	snprintf(qmp, sizeof(qmp), "unix:%s,server=on,wait=off", l->qmp_path);
	if (rc == 0)
		rc = out_add(l, "-S");
	if (rc == 0)
		rc = out_add(l, "-incoming");
	if (rc == 0)
		rc = out_add(l, "defer");
	if (rc == 0)
		rc = out_add(l, "-qmp");
	if (rc == 0)
		rc = out_add(l, qmp);
	return rc;
}

/* Start QEMU in a session of its own, output into NAME.log. */
static int spawn(struct launcher *l, char *log, char *pidfile)
{
	uint64_t deadline = ferry_now_ms() + LAUNCHER_QMP_WAIT_MS;
	struct stat st;
	int status;
	FILE *f;
	pid_t pid;

	pid = fork();
	if (pid < 0)
		return fail("fork: %s", strerror(errno));
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		setsid();
		dup2(null, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		execvp(l->out[0], l->out);
		_exit(127);
	}
	f = fopen(pidfile, "w");
	if (f) {
		fprintf(f, "%d\n", (int)pid);
		fclose(f);
	}
	printf("pid %d\n", (int)pid);
	fflush(stdout);
	while (ferry_now_ms() < deadline) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return fail("QEMU exited during start-up; see %s", log);
		if (stat(l->qmp_path, &st) == 0 && S_ISSOCK(st.st_mode))
			return 0;
		usleep(20 * 1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return fail("QEMU did not open %s within %d ms", l->qmp_path,
		    LAUNCHER_QMP_WAIT_MS);
}

static int read_config(struct launcher *l)
{
	static char buf[WIRE_CTRL_PAYLOAD_MAX + 1];
	size_t len = 0;
	ssize_t n;

	while (len < sizeof(buf) && (n = read(0, buf + len, sizeof(buf) - len)) > 0)
		len += (size_t)n;
	if (len == 0)
		return fail("no QEMU command line on stdin (the source sent none)");
	if (len == sizeof(buf) || buf[len - 1] != '\0')
		return fail("the QEMU command line on stdin is malformed");
	for (size_t i = 0; i < len; i += strlen(buf + i) + 1) {
		if (l->nin == WIRE_CONFIG_ARGS_MAX)
			return fail("the QEMU command line has too many arguments");
		l->in[l->nin++] = buf + i;
	}
	return 0;
}

static int read_allow(struct launcher *l)
{
	const char *env = getenv("FERRY_LAUNCH_ALLOW_DIRS");
	char dirs[LAUNCHER_ALLOW_MAX * PATH_MAX / 4], *save = NULL;

	snprintf(dirs, sizeof(dirs), "%s", env ? env : "");
	for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		if (l->nallow == LAUNCHER_ALLOW_MAX)
			return fail("too many allowed directories");
		if (!realpath(d, l->allow[l->nallow]))
			return fail("allowed directory %s: %s", d, strerror(errno));
		l->nallow++;
	}
	return 0;
}

int ferry_launch_qemu_main(int argc, char **argv)
{
	static struct launcher l;
	char log[PATH_MAX], pidfile[PATH_MAX];
	int rc;

	if (argc != 3 || !wire_vm_name_valid(argv[1]) || argv[2][0] != '/') {
		fail("usage: ferry launch-qemu NAME /QMP/PATH (run by ferry serve "
		     "--launch; the source's command line on stdin)");
		return 2;
	}
	l.vm = argv[1];
	l.qmp_path = argv[2];
	l.state_dir = getenv("FERRY_LAUNCH_STATE_DIR");
	l.block = getenv("FERRY_LAUNCH_BLOCK") &&
		  !strcmp(getenv("FERRY_LAUNCH_BLOCK"), "1");
	l.disks = getenv("FERRY_LAUNCH_DISKS");
	if (!l.state_dir || l.state_dir[0] != '/') {
		fail("FERRY_LAUNCH_STATE_DIR is not set");
		return 2;
	}
	snprintf(log, sizeof(log), "%s/%s.log", l.state_dir, l.vm);
	snprintf(pidfile, sizeof(pidfile), "%s/%s.pid", l.state_dir, l.vm);
	rc = read_allow(&l);
	if (rc == 0)
		rc = read_config(&l);
	if (rc == 0)
		rc = rewrite(&l);
	if (rc < 0) {
		/* Nothing started: what was made for it goes too. */
		for (uint32_t i = 0; i < l.ncreated; i++)
			unlink(l.created[i]);
		return 1;
	}
	for (uint32_t i = 0; i < l.ncreated; i++)
		printf("created %s\n", l.created[i]);
	printf("created %s\ncreated %s\n", log, pidfile);
	fflush(stdout);
	return spawn(&l, log, pidfile) < 0 ? 1 : 0;
}
