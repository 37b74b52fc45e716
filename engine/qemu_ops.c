/* The QMP operations of a migration (see mig.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cpu_names.h"
#include "mig.h"
#include "transport/net.h"
#include "transport/wire.h"
#include "common/util.h"

static uint64_t get_u64(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return json_is_integer(v) && json_integer_value(v) > 0 ?
	       (uint64_t)json_integer_value(v) : 0;
}

static void copy_str(char *dst, size_t len, json_t *v)
{
	const char *s = json_is_string(v) ? json_string_value(v) : "";

	snprintf(dst, len, "%s", s);
}

/* incoming tcp migration: "socket-address": [{"type":"inet","port":"N"}] */
static uint64_t incoming_port(json_t *ret)
{
	json_t *addrs = json_object_get(ret, "socket-address");
	json_t *a = json_is_array(addrs) ? json_array_get(addrs, 0) : NULL;
	json_t *port = a ? json_object_get(a, "port") : NULL;

	if (json_is_string(port))
		return strtoull(json_string_value(port), NULL, 10);
	return 0;
}

int mig_query(struct qmp *q, struct mig_info *info, struct ferry_error *err)
{
	json_t *ret = NULL, *ram;
	int rc;

	memset(info, 0, sizeof(*info));
	rc = qmp_execute(q, "query-migrate", NULL, &ret, MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	if (!json_is_object(ret)) {
		json_decref(ret);
		return ferry_error_set(err, -EPROTO, "query-migrate returned no object");
	}
	/* Before any migration, QEMU returns {} without a status. */
	copy_str(info->status, sizeof(info->status), json_object_get(ret, "status"));
	if (!info->status[0])
		snprintf(info->status, sizeof(info->status), "none");
	info->state = mig_state_parse(info->status);
	info->total_time_ms = get_u64(ret, "total-time");
	info->downtime_ms = get_u64(ret, "downtime");
	info->setup_time_ms = get_u64(ret, "setup-time");
	ram = json_object_get(ret, "ram");
	if (json_is_object(ram)) {
		info->ram_total = get_u64(ram, "total");
		info->ram_transferred = get_u64(ram, "transferred");
		info->ram_remaining = get_u64(ram, "remaining");
		info->dirty_sync_count = get_u64(ram, "dirty-sync-count");
		info->dirty_pages_rate = get_u64(ram, "dirty-pages-rate");
		info->page_size = get_u64(ram, "page-size");
		info->postcopy_requests = get_u64(ram, "postcopy-requests");
		{
			json_t *mbps = json_object_get(ram, "mbps");

			info->mbps = json_is_number(mbps) ?
				json_number_value(mbps) : 0;
		}
	}
	if (!info->page_size)
		info->page_size = 4096;
	info->throttle_pct = (uint32_t)get_u64(ret, "cpu-throttle-percentage");
	/* Destination, post-copy, once completed (capability postcopy-blocktime). */
	info->postcopy_blocktime_ms = json_is_integer(json_object_get(ret,
						"postcopy-blocktime")) ?
		(uint32_t)get_u64(ret, "postcopy-blocktime") : MIG_BLOCKTIME_UNKNOWN;
	info->incoming_port = incoming_port(ret);
	copy_str(info->error_desc, sizeof(info->error_desc),
		 json_object_get(ret, "error-desc"));
	json_decref(ret);
	return 0;
}

static const char *const mig_state_names[] = {
	[MIG_S_NONE] = "none", [MIG_S_SETUP] = "setup",
	[MIG_S_CANCELLING] = "cancelling", [MIG_S_CANCELLED] = "cancelled",
	[MIG_S_ACTIVE] = "active", [MIG_S_POSTCOPY_ACTIVE] = "postcopy-active",
	[MIG_S_POSTCOPY_PAUSED] = "postcopy-paused",
	[MIG_S_POSTCOPY_RECOVER] = "postcopy-recover",
	[MIG_S_COMPLETED] = "completed", [MIG_S_FAILED] = "failed",
	[MIG_S_COLO] = "colo", [MIG_S_PRE_SWITCHOVER] = "pre-switchover",
	[MIG_S_DEVICE] = "device", [MIG_S_WAIT_UNPLUG] = "wait-unplug",
};

enum mig_state mig_state_parse(const char *status)
{
	for (size_t i = 0; i < FERRY_ARRAY_SIZE(mig_state_names); i++)
		if (mig_state_names[i] && !strcmp(status, mig_state_names[i]))
			return (enum mig_state)i;
	return MIG_S_UNKNOWN;
}

bool mig_state_active(enum mig_state s)
{
	switch (s) {
	case MIG_S_SETUP: case MIG_S_ACTIVE: case MIG_S_PRE_SWITCHOVER:
	case MIG_S_DEVICE: case MIG_S_WAIT_UNPLUG: case MIG_S_POSTCOPY_ACTIVE:
	case MIG_S_POSTCOPY_PAUSED: case MIG_S_POSTCOPY_RECOVER:
	case MIG_S_CANCELLING:
		return true;
	default:
		return false;
	}
}

bool mig_status_active(const char *s)
{
	return mig_state_active(mig_state_parse(s));
}

int mig_ram_size(struct qmp *q, uint64_t *bytes, struct ferry_error *err)
{
	json_t *ret = NULL;
	int rc;

	rc = qmp_execute(q, "query-memory-size-summary", NULL, &ret,
			 MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	*bytes = get_u64(ret, "base-memory") + get_u64(ret, "plugged-memory");
	json_decref(ret);
	if (*bytes == 0)
		return ferry_error_set(err, -EPROTO,
			"query-memory-size-summary reported no guest memory");
	return 0;
}

/* QEMU's pace, in pre-copy and in post-copy alike (QEMU's 0 there:
 * unlimited). */
static json_t *bandwidth_params(uint64_t bytes_per_s)
{
	return json_pack("{s:I,s:I}", "max-bandwidth", (json_int_t)bytes_per_s,
			 "max-postcopy-bandwidth",
			 (json_int_t)(bytes_per_s == MIG_BANDWIDTH_UNLIMITED ? 0 :
				      bytes_per_s));
}

int mig_setup_qemu(struct qmp *q, const struct mig_params *p,
		   struct ferry_error *err)
{
	json_t *caps, *a;
	int rc;

	/*
	 * events: progress without polling; return-path: the destination
	 * tells the source when it failed to load, so the source can keep
	 * the guest running instead of completing blindly; postcopy-blocktime:
	 * the destination counts how long its vCPUs waited for pages.
	 */
	caps = json_pack("{s:[{s:s,s:b},{s:s,s:b},{s:s,s:b},{s:s,s:b},{s:s,s:b},"
			 "{s:s,s:b}]}",
			 "capabilities",
			 "capability", "events", "state", 1,
			 "capability", "return-path", "state", 1,
			 "capability", "postcopy-ram", "state", p->postcopy,
			 "capability", "postcopy-blocktime", "state", p->blocktime,
			 "capability", "auto-converge", "state", p->auto_converge,
			 "capability", "pause-before-switchover", "state",
			 p->pause_before_switchover);
	rc = qmp_execute(q, "migrate-set-capabilities", caps, NULL,
			 MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	/* Named only where it is wanted or on (left by an earlier run): a
	 * QEMU before 7.0 does not know it, and refuses a list that names it. */
	if (p->preempt || mig_capability(q, "postcopy-preempt") == 1) {
		rc = mig_set_capability(q, "postcopy-preempt", p->preempt, err);
		if (rc < 0)
			return rc;
	}
	a = bandwidth_params(p->max_bandwidth_bytes_per_s);
	json_object_set_new(a, "downtime-limit", json_integer(p->downtime_ms));
	rc = qmp_execute(q, "migrate-set-parameters", a, NULL,
			 MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0 || !p->auto_converge)
		return rc;
	a = json_pack("{s:b}", "cpu-throttle-tailslow", p->throttle_tailslow);
	if (p->throttle_initial_pct)
		json_object_set_new(a, "cpu-throttle-initial",
				    json_integer(p->throttle_initial_pct));
	if (p->throttle_increment_pct)
		json_object_set_new(a, "cpu-throttle-increment",
				    json_integer(p->throttle_increment_pct));
	if (p->throttle_max_pct)
		json_object_set_new(a, "max-cpu-throttle",
				    json_integer(p->throttle_max_pct));
	return qmp_execute(q, "migrate-set-parameters", a, NULL,
			   MIG_QMP_TIMEOUT_MS, err);
}

int mig_set_bandwidth(struct qmp *q, uint64_t bytes_per_s,
		      struct ferry_error *err)
{
	return qmp_execute(q, "migrate-set-parameters",
			   bandwidth_params(bytes_per_s), NULL,
			   MIG_QMP_TIMEOUT_MS, err);
}

void mig_drop_fd(struct qmp *q)
{
	qmp_execute(q, "closefd", json_pack("{s:s}", "fdname", MIG_FDNAME),
		    NULL, MIG_QMP_TIMEOUT_MS, NULL);
}

int mig_give_fd(struct qmp *q, int fd, struct ferry_error *err)
{
	/* QEMU's fd: migration does its own blocking mode; start blocking. */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	/* A TCP connection QEMU owns (hand-off) has no ferry watching it:
	 * let the kernel declare a silent peer dead in seconds, not after
	 * minutes of retransmits. */
	net_keepalive(fd);
	/* A stale fd of a previous attempt would make getfd fail. */
	qmp_execute(q, "closefd", json_pack("{s:s}", "fdname", MIG_FDNAME),
		    NULL, MIG_QMP_TIMEOUT_MS, NULL);
	return qmp_getfd(q, fd, MIG_FDNAME, MIG_QMP_TIMEOUT_MS, err);
}

int mig_hand_socket(struct qmp *q, uint32_t buf_bytes, int *ferry_end,
		    struct ferry_error *err)
{
	int sv[2];
	int rc;

	rc = net_local_pair_sized(sv, buf_bytes, err);
	if (rc < 0)
		return rc;
	rc = mig_give_fd(q, sv[0], err);
	close(sv[0]);
	if (rc < 0) {
		close(sv[1]);
		return rc;
	}
	*ferry_end = sv[1];
	return 0;
}

int mig_vm_status(struct qmp *q, char *buf, size_t len, struct ferry_error *err)
{
	return qmp_query_status_string(q, "query-status", buf, len,
				       MIG_QMP_TIMEOUT_MS, err);
}

int mig_set_downtime(struct qmp *q, uint32_t ms, struct ferry_error *err)
{
	return qmp_execute(q, "migrate-set-parameters",
			   json_pack("{s:I}", "downtime-limit", (json_int_t)ms),
			   NULL, MIG_QMP_TIMEOUT_MS, err);
}

int mig_dirty_rate_start(struct qmp *q, uint32_t seconds, struct ferry_error *err)
{
	return qmp_execute(q, "calc-dirty-rate",
			   json_pack("{s:I}", "calc-time", (json_int_t)seconds),
			   NULL, MIG_QMP_TIMEOUT_MS, err);
}

int mig_dirty_rate_poll(struct qmp *q, uint64_t *bytes_per_s,
			struct ferry_error *err)
{
	json_t *ret = NULL;
	const char *st;
	int rc;

	rc = qmp_execute(q, "query-dirty-rate", NULL, &ret, MIG_QMP_TIMEOUT_MS,
			 err);
	if (rc < 0)
		return rc;
	st = json_string_value(json_object_get(ret, "status"));
	rc = 0;
	if (st && !strcmp(st, "measured")) {
		/* "dirty-rate" is in MiB/s */
		*bytes_per_s = get_u64(ret, "dirty-rate") << 20;
		rc = 1;
	}
	json_decref(ret);
	return rc;
}

/* ---- QEMU commands as C functions (see mig.h) ---------------------------- */

static int run(struct qmp *q, const char *cmd, json_t *args,
	       struct ferry_error *err)
{
	return qmp_execute(q, cmd, args, NULL, MIG_QMP_TIMEOUT_MS, err);
}

/*
 * @cmd's reply, an array of at most @max entries: more is -E2BIG, before
 * the caller copies any. A reply that is not an array has no entries.
 */
static int query_array(struct qmp *q, const char *cmd, size_t max,
		       json_t **ret, struct ferry_error *err)
{
	int rc = qmp_execute(q, cmd, NULL, ret, MIG_QMP_TIMEOUT_MS, err);

	if (rc < 0)
		return rc;
	if (json_array_size(*ret) > max) {
		rc = ferry_error_set(err, -E2BIG, "%s returned %zu entries, "
				     "more than the %zu ferry reads", cmd,
				     json_array_size(*ret), max);
		json_decref(*ret);
		*ret = NULL;
	}
	return rc;
}

int qemu_stop(struct qmp *q, struct ferry_error *err)
{
	return run(q, "stop", NULL, err);
}

int qemu_query_block_jobs(struct qmp *q, struct qemu_block_job *jobs,
			  size_t max, size_t *n, struct ferry_error *err)
{
	json_t *ret = NULL, *job;
	size_t i;
	int rc;

	*n = 0;
	rc = query_array(q, "query-block-jobs", max, &ret, err);
	if (rc < 0)
		return rc;
	json_array_foreach(ret, i, job) {
		struct qemu_block_job *j = &jobs[i];
		json_t *e = json_object_get(job, "error");

		copy_str(j->id, sizeof(j->id), json_object_get(job, "device"));
		copy_str(j->status, sizeof(j->status),
			 json_object_get(job, "status"));
		j->offset = get_u64(job, "offset");
		j->len = get_u64(job, "len");
		j->ready = json_is_true(json_object_get(job, "ready"));
		j->failed = json_is_string(e);
		copy_str(j->error, sizeof(j->error), e);
	}
	*n = json_array_size(ret);
	json_decref(ret);
	return 0;
}

int qemu_block_job_cancel(struct qmp *q, const char *id, bool force,
			  struct ferry_error *err)
{
	return run(q, "block-job-cancel",
		   force ? json_pack("{s:s,s:b}", "device", id, "force", 1) :
			   json_pack("{s:s}", "device", id), err);
}

int qemu_job_dismiss(struct qmp *q, const char *id, struct ferry_error *err)
{
	return run(q, "job-dismiss", json_pack("{s:s}", "id", id), err);
}

int qemu_query_node_names(struct qmp *q, const char *prefix,
			  struct qemu_node_name *names, size_t max, size_t *n,
			  struct ferry_error *err)
{
	json_t *ret = NULL, *node;
	size_t i;
	int rc;

	*n = 0;
	rc = qmp_execute(q, "query-named-block-nodes",
			 json_pack("{s:b}", "flat", 1), &ret, MIG_QMP_TIMEOUT_MS,
			 err);
	if (rc < 0)
		return rc;
	json_array_foreach(ret, i, node) {
		json_t *name = json_object_get(node, "node-name");

		if (!json_is_string(name) ||
		    strncmp(json_string_value(name), prefix, strlen(prefix)))
			continue;
		if (*n == max) {
			rc = ferry_error_set(err, -E2BIG, "query-named-block-nodes: "
					     "more than %zu nodes named %s...",
					     max, prefix);
			break;
		}
		copy_str(names[(*n)++].name, sizeof(names->name), name);
	}
	json_decref(ret);
	return rc;
}

int qemu_query_block(struct qmp *q, json_t **ret, struct ferry_error *err)
{
	return qmp_execute(q, "query-block", NULL, ret, MIG_QMP_TIMEOUT_MS, err);
}

int qemu_blockdev_add_nbd(struct qmp *q, const char *node, const char *sock,
			  const char *export, struct ferry_error *err)
{
	return run(q, "blockdev-add",
		   json_pack("{s:s,s:s,s:{s:s,s:s},s:s}", "driver", "nbd",
			     "node-name", node, "server", "type", "unix",
			     "path", sock, "export", export), err);
}

int qemu_blockdev_del(struct qmp *q, const char *node, struct ferry_error *err)
{
	return run(q, "blockdev-del", json_pack("{s:s}", "node-name", node), err);
}

int qemu_blockdev_mirror(struct qmp *q, const struct qemu_mirror *m,
			 struct ferry_error *err)
{
	return run(q, "blockdev-mirror",
		   json_pack("{s:s,s:s,s:s,s:s,s:s,s:b}", "job-id", m->job,
			     "device", m->device, "target", m->target,
			     "sync", "full", "copy-mode",
			     m->write_blocking ? "write-blocking" : "background",
			     "auto-dismiss", 0), err);
}

int qemu_nbd_server_start_unix(struct qmp *q, const char *sock,
			       struct ferry_error *err)
{
	return run(q, "nbd-server-start",
		   json_pack("{s:{s:s,s:{s:s}}}", "addr", "type", "unix",
			     "data", "path", sock), err);
}

int qemu_nbd_server_stop(struct qmp *q, struct ferry_error *err)
{
	return run(q, "nbd-server-stop", NULL, err);
}

int qemu_late_block_activate(struct qmp *q, struct ferry_error *err)
{
	return run(q, "migrate-set-capabilities",
		   json_pack("{s:[{s:s,s:b}]}", "capabilities", "capability",
			     "late-block-activate", "state", 1), err);
}

int qemu_block_export_add_nbd(struct qmp *q, const char *id, const char *node,
			      const char *name, bool writable,
			      struct ferry_error *err)
{
	return run(q, "block-export-add",
		   json_pack("{s:s,s:s,s:s,s:b,s:s}", "type", "nbd", "id", id,
			     "node-name", node, "writable", writable,
			     "name", name), err);
}

int qemu_block_export_del(struct qmp *q, const char *id, bool hard,
			  struct ferry_error *err)
{
	return run(q, "block-export-del",
		   hard ? json_pack("{s:s,s:s}", "id", id, "mode", "hard") :
			  json_pack("{s:s}", "id", id), err);
}

int qemu_query_block_exports(struct qmp *q, struct qemu_block_export *ex,
			     size_t max, size_t *n, struct ferry_error *err)
{
	json_t *ret = NULL, *it;
	size_t i;
	int rc;

	*n = 0;
	rc = query_array(q, "query-block-exports", max, &ret, err);
	if (rc < 0)
		return rc;
	json_array_foreach(ret, i, it) {
		copy_str(ex[i].id, sizeof(ex[i].id), json_object_get(it, "id"));
		copy_str(ex[i].node_name, sizeof(ex[i].node_name),
			 json_object_get(it, "node-name"));
	}
	*n = json_array_size(ret);
	json_decref(ret);
	return 0;
}

/* ---- the migration's own commands ---- */

int qemu_cont(struct qmp *q, struct ferry_error *err)
{
	return run(q, "cont", NULL, err);
}

int mig_set_capability(struct qmp *q, const char *name, bool on,
		       struct ferry_error *err)
{
	return run(q, "migrate-set-capabilities",
		   json_pack("{s:[{s:s,s:b}]}", "capabilities", "capability",
			     name, "state", on), err);
}

int mig_capability(struct qmp *q, const char *name)
{
	json_t *ret = NULL, *c;
	int state = -1;
	size_t i;

	if (qmp_execute(q, "query-migrate-capabilities", NULL, &ret,
			MIG_QMP_TIMEOUT_MS, NULL) < 0)
		return -1;
	json_array_foreach(ret, i, c) {
		const char *n = json_string_value(json_object_get(c, "capability"));

		if (n && !strcmp(n, name))
			state = json_is_true(json_object_get(c, "state"));
	}
	json_decref(ret);
	return state;
}

int qemu_migrate(struct qmp *q, const char *uri, bool resume,
		 struct ferry_error *err)
{
	return run(q, "migrate", resume ?
		   json_pack("{s:s,s:b}", "uri", uri, "resume", 1) :
		   json_pack("{s:s}", "uri", uri), err);
}

int qemu_migrate_incoming(struct qmp *q, const char *uri, bool recover,
			  struct ferry_error *err)
{
	return run(q, recover ? "migrate-recover" : "migrate-incoming",
		   json_pack("{s:s}", "uri", uri), err);
}

int qemu_migrate_start_postcopy(struct qmp *q, struct ferry_error *err)
{
	return run(q, "migrate-start-postcopy", NULL, err);
}

int qemu_migrate_continue(struct qmp *q, const char *state,
			  struct ferry_error *err)
{
	return run(q, "migrate-continue", json_pack("{s:s}", "state", state), err);
}

int qemu_migrate_pause(struct qmp *q, struct ferry_error *err)
{
	return run(q, "migrate-pause", NULL, err);
}

int qemu_migrate_cancel(struct qmp *q, struct ferry_error *err)
{
	return run(q, "migrate_cancel", NULL, err);
}

bool qemu_process_gone(int pid)
{
	char path[64], buf[256], *paren;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	/* "PID (COMM) S ...": COMM may hold anything, the state follows
	 * its last ')'. */
	paren = strrchr(buf, ')');
	return paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

/* ---- what the guest is made of (the GUEST pre-check) ---- */

/* qom-get @path's "type" into @out (a word, else ""). */
static int qom_type(struct qmp *q, const char *path, char *out, size_t len,
		    struct ferry_error *err)
{
	json_t *ret = NULL;
	int rc;

	rc = qmp_execute(q, "qom-get", json_pack("{s:s,s:s}", "path", path,
						 "property", "type"),
			 &ret, MIG_QMP_TIMEOUT_MS, err);
	if (rc == 0)
		copy_str(out, len, ret);
	json_decref(ret);
	return rc;
}

/* The devices under QOM container @path ("child<TYPE>" children), named
 * by their ids when @named. */
static int qom_devices(struct qmp *q, const char *path, bool named,
		       struct wire_guest *g, struct ferry_error *err)
{
	json_t *ret = NULL, *p;
	size_t i;
	int rc;

	rc = qmp_execute(q, "qom-list", json_pack("{s:s}", "path", path), &ret,
			 MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	json_array_foreach(ret, i, p) {
		const char *type = json_string_value(json_object_get(p, "type"));
		const char *name = json_string_value(json_object_get(p, "name"));
		struct wire_guest_device *d;
		size_t n;

		if (!type || !name || strncmp(type, "child<", 6))
			continue;
		n = strlen(type + 6);
		if (!n || type[6 + n - 1] != '>')
			continue;
		if (n - 1 > WIRE_GUEST_WORD_MAX ||
		    (named && strlen(name) > WIRE_GUEST_WORD_MAX)) {
			rc = ferry_error_set(err, -ENAMETOOLONG, "device '%.80s' "
					     "(%.80s): over %u characters, which "
					     "the pre-check does not compare",
					     name, type + 6, WIRE_GUEST_WORD_MAX);
			break;
		}
		if (g->ndevices == WIRE_GUEST_DEVICES_MAX) {
			rc = ferry_error_set(err, -E2BIG, "the QEMU has more than "
					     "%u devices", WIRE_GUEST_DEVICES_MAX);
			break;
		}
		d = &g->devices[g->ndevices++];
		snprintf(d->type, sizeof(d->type), "%.*s", (int)(n - 1), type + 6);
		snprintf(d->id, sizeof(d->id), "%s", named ? name : "");
	}
	json_decref(ret);
	return rc;
}

static int cpuid_cmp(const void *a, const void *b)
{
	return strcmp(((const struct wire_guest_cpuid *)a)->key,
		      ((const struct wire_guest_cpuid *)b)->key);
}

/*
 * The CPUID feature words the guest sees (x86's "feature-words" of the
 * first CPU), those with bits set, sorted. A QEMU whose CPU has none
 * (another architecture) gives none.
 */
static int cpu_feature_words(struct qmp *q, const char *cpu_path,
			     struct wire_guest *g, struct ferry_error *err)
{
	json_t *ret = NULL, *w;
	size_t i;
	int rc;

	rc = qmp_execute(q, "qom-get", json_pack("{s:s,s:s}", "path", cpu_path,
						 "property", "feature-words"),
			 &ret, MIG_QMP_TIMEOUT_MS, NULL);
	if (rc < 0)
		return 0;
	json_array_foreach(ret, i, w) {
		json_int_t bits = json_integer_value(json_object_get(w, "features"));
		const char *reg = json_string_value(json_object_get(w,
							"cpuid-register"));
		struct wire_guest_cpuid *c;

		if (!bits || !reg)
			continue;
		if (g->ncpuid == WIRE_GUEST_CPUID_MAX) {
			rc = ferry_error_set(err, -E2BIG, "the CPU has more than %u "
					     "CPUID feature words", WIRE_GUEST_CPUID_MAX);
			break;
		}
		c = &g->cpuid[g->ncpuid++];
		snprintf(c->key, sizeof(c->key), "0x%llx.%lld.%s",
			 (unsigned long long)json_integer_value(json_object_get(w,
							"cpuid-input-eax")),
			 (long long)json_integer_value(json_object_get(w,
							"cpuid-input-ecx")), reg);
		c->bits = (uint32_t)bits;
	}
	json_decref(ret);
	qsort(g->cpuid, g->ncpuid, sizeof(g->cpuid[0]), cpuid_cmp);
	return rc;
}

/* Models looked at for a suggestion: bounded QMP work on a refusal. */
#define CPU_MODELS_TRIED_MAX 64

/*
 * How many named CPUID features model @name has on @q, or -1 when one
 * of them is missing from @g (the source's guest) or @q cannot expand it.
 * The "static" expansion: every feature as a boolean (the "full" one
 * carries integers above INT64_MAX, which a strict JSON reader refuses).
 */
static int model_fit(struct qmp *q, const char *name, const struct wire_guest *g)
{
	json_t *ret = NULL, *v;
	const char *prop, *key;
	unsigned bit;
	int n = 0;

	if (qmp_execute(q, "query-cpu-model-expansion",
			json_pack("{s:s,s:{s:s}}", "type", "static", "model",
				  "name", name),
			&ret, MIG_QMP_TIMEOUT_MS, NULL) < 0)
		return -1;
	json_object_foreach(json_object_get(json_object_get(ret, "model"),
					    "props"), prop, v) {
		if (!json_is_true(v) || !cpu_feature_bit(prop, &key, &bit))
			continue;
		if (!(wire_guest_cpuid_bits(g, key) & (1u << bit))) {
			n = -1;
			break;
		}
		n++;
	}
	json_decref(ret);
	return n;
}

/* A model name worth suggesting: not host/max/base (not portable), and
 * the plain name rather than its "-vN" versions. */
static bool model_nameable(const char *name)
{
	const char *v = strrchr(name, '-');

	if (!strcmp(name, "host") || !strcmp(name, "max") || !strcmp(name, "base"))
		return false;
	return !(v && v[1] == 'v' && v[2] >= '0' && v[2] <= '9');
}

/* Whether QOM type @type ("qemu64-x86_64-cpu") is model @name's. */
static bool model_type(const char *name, const char *type)
{
	size_t n = strlen(name);

	return !strncmp(type, name, n) && type[n] == '-' &&
	       !strcmp(type + n + 1 + strcspn(type + n + 1, "-"), "-cpu");
}

int qemu_cpu_common_model(struct qmp *q, const struct wire_guest *g,
			  const char *here_type, char *out, size_t len,
			  struct ferry_error *err)
{
	json_t *defs = NULL, *d;
	int best = 0, tried = 0, rc;
	size_t i;

	out[0] = '\0';
	rc = qmp_execute(q, "query-cpu-definitions", NULL, &defs,
			 MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	json_array_foreach(defs, i, d) {
		const char *name = json_string_value(json_object_get(d, "name"));
		int fit;

		if (!name || !model_nameable(name) ||
		    json_array_size(json_object_get(d, "unavailable-features")))
			continue;
		/* The source's own model, which this host runs: the guests
		 * differ only in the +/- features each command line adds. */
		if (model_type(name, g->cpu)) {
			snprintf(out, len, "%s", name);
			break;
		}
		/* This QEMU's own model carries its -cpu +/- features in its
		 * expansion (they are the type's global properties): not
		 * the model as another host would start it. */
		if (model_type(name, here_type) || tried++ == CPU_MODELS_TRIED_MAX)
			continue;
		fit = model_fit(q, name, g);
		if (fit > best) {
			best = fit;
			snprintf(out, len, "%s", name);
		}
	}
	json_decref(defs);
	return 0;
}

static int device_cmp(const void *a, const void *b)
{
	const struct wire_guest_device *x = a, *y = b;
	int c = strcmp(x->type, y->type);

	return c ? c : strcmp(x->id, y->id);
}

int qemu_guest_describe(struct qmp *q, struct wire_guest *g,
			struct ferry_error *err)
{
	json_t *cpus = NULL;
	const char *cpu_path;
	int rc;

	memset(g, 0, sizeof(*g));
	rc = qom_type(q, "/machine", g->machine, sizeof(g->machine), err);
	if (rc == 0)
		rc = qmp_execute(q, "query-cpus-fast", NULL, &cpus,
				 MIG_QMP_TIMEOUT_MS, err);
	if (rc < 0)
		return rc;
	cpu_path = json_string_value(json_object_get(json_array_get(cpus, 0),
						     "qom-path"));
	rc = cpu_path ? qom_type(q, cpu_path, g->cpu, sizeof(g->cpu), err) :
	     ferry_error_set(err, -EPROTO, "query-cpus-fast names no CPU");
	if (rc == 0)
		rc = cpu_feature_words(q, cpu_path, g, err);
	json_decref(cpus);
	if (rc == 0)
		rc = qom_devices(q, "/machine/peripheral", true, g, err);
	if (rc == 0)
		rc = qom_devices(q, "/machine/peripheral-anon", false, g, err);
	if (rc == 0)
		qsort(g->devices, g->ndevices, sizeof(g->devices[0]), device_cmp);
	return rc;
}
