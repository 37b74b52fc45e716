/*
 * The receiving service: ferry_receiver_new/run/stop/free (see rx.h for
 * the shape, docs/receiving-service.md for the user's view).
 *
 * Three kinds of threads:
 *   - the acceptor (ferry_receiver_run's caller): accepts, gives every
 *     connection a handshake slot (evicting the oldest when they run out),
 *     joins migrations that ended;
 *   - one handshake thread per connection: TLS, hello, VM name, each
 *     bounded by the connection's own deadline, then routing;
 *   - one thread per migration (receiver.c).
 * One lock (svc->mu) guards the slots, the migration registry and the
 * burnt list; nothing blocks on a peer while holding it.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <signal.h>
#include <unistd.h>

#include "abi.h"
#include "journal.h"
#include "mig.h"
#include "rx.h"
#include "transport/tls.h"
#include "common/util.h"

/* How long a refusal may take to reach a peer that does not read. */
#define RX_REFUSE_SEND_MS 1000
/* After an eviction, how long to wait for its slot between looks. */
#define RX_EVICT_WAIT_MS 50
/* Out of descriptors: back off this long before accepting again. */
#define RX_EMFILE_BACKOFF_MS 10
/* Stopping: how often to look for migrations that ended. */
#define RX_REAP_POLL_MS 100

struct rx_slot {
	int fd;			/* -1: free */
	uint64_t t0_ms;
	enum rx_conn_state state;	/* its handshake's */
	bool evicted;		/* shut down to make room */
};

/* What ferry_receiver_run() returns: a migration that counted. */
struct rx_outcome {
	bool counted;
	int rc;
	struct ferry_error err;
	struct ferry_report report;
};

struct rx_burnt {
	char qmp_path[PATH_MAX];
	dev_t dev;
	ino_t ino;
	struct timespec ctime;
	char id[37];		/* the migration that burnt it */
};

struct ferry_receiver {
	struct ferry_receiver_opts o;
	char *listen_host, *qmp_path, *qmp_dir, *launch_cmd, *state_dir;
	char *allow_dirs;
	int listen_fd;
	int stop_efd;		/* readable: stop (stays readable) */
	int reap_efd;		/* readable: a migration ended */
	uint16_t port;
	struct tls_ctx *tls;

	pthread_mutex_t mu;
	pthread_cond_t cv;	/* a slot freed, a handshake ended */
	struct rx_slot *slots;	/* 2 * o.max_handshakes (see rx.h) */
	uint32_t handshakes;	/* handshake threads alive */
	struct rx_mig *migs[FERRY_MAX_MIGRATIONS_LIMIT];
	struct rx_burnt burnt[RX_BURNT_MAX];
	uint32_t nburnt;
	bool stopping;
};

/* What a handshake thread gets. */
struct rx_handshake {
	struct ferry_receiver *svc;
	uint32_t slot;
	struct rx_conn conn;
	enum rx_conn_state state;
	uint64_t deadline_ms;
};

const struct ferry_receiver_opts *rx_opts(const struct ferry_receiver *svc)
{
	return &svc->o;
}

struct tls_ctx *rx_tls(const struct ferry_receiver *svc)
{
	return svc->tls;
}

int rx_stop_fd(const struct ferry_receiver *svc)
{
	return svc->stop_efd;
}

static void efd_signal(int efd)
{
	uint64_t one = 1;

	if (write(efd, &one, sizeof(one)) < 0) {
		/* Only on overflow, when a wake-up is pending anyway. */
	}
}

static void efd_drain(int efd)
{
	uint64_t v;

	if (read(efd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nothing pending. */
	}
}

static int opts_check(const struct ferry_receiver_opts *o,
		      struct ferry_error *err)
{
	if (!o->listen_host)
		return ferry_error_set(err, -EINVAL,
			"a receiver needs an address to listen on");
	if (!!o->qmp_path + !!o->qmp_dir + !!o->launch_cmd != 1)
		return ferry_error_set(err, -EINVAL,
			"a receiver needs one of: the destination QMP socket "
			"(--qmp), a directory of registered ones (--qmp-dir), or "
			"a command that launches them (--launch)");
	if (o->launch_cmd && (!o->state_dir || o->state_dir[0] != '/'))
		return ferry_error_set(err, -EINVAL,
			"--launch needs an absolute --state-dir for the launched "
			"QEMUs' sockets");
	if (o->max_handshakes > FERRY_MAX_HANDSHAKES_LIMIT)
		return ferry_error_set(err, -EINVAL,
			"max_handshakes %u is over the limit of %u",
			o->max_handshakes, FERRY_MAX_HANDSHAKES_LIMIT);
	if (o->max_migrations > FERRY_MAX_MIGRATIONS_LIMIT)
		return ferry_error_set(err, -EINVAL,
			"--max-migrations %u is over the limit of %u",
			o->max_migrations, FERRY_MAX_MIGRATIONS_LIMIT);
	if (o->ram_allocation_ratio < 0 || o->ram_allocation_ratio > 100 ||
	    o->ram_allocation_ratio != o->ram_allocation_ratio)
		return ferry_error_set(err, -EINVAL, "--ram-allocation-ratio must "
				       "be over 0 and at most 100");
	if (!o->tls.creds_dir && !o->tls.psk_file && !o->tls.insecure &&
	    !tls_host_is_loopback(o->listen_host))
		return ferry_error_set(err, -EPERM,
			"refusing to receive guest memory in plaintext on %s: give "
			"--tls-creds DIR or --tls-psk FILE, or --insecure if the "
			"network is trusted", o->listen_host);
	return 0;
}

/* What ferry_receiver_new() allocates before it listens, and @r. */
static void svc_release(struct ferry_receiver *r)
{
	tls_ctx_free(r->tls);
	if (r->stop_efd >= 0)
		close(r->stop_efd);
	if (r->reap_efd >= 0)
		close(r->reap_efd);
	free(r->slots);
	free(r->listen_host);
	free(r->qmp_path);
	free(r->qmp_dir);
	free(r->launch_cmd);
	free(r->state_dir);
	free(r->allow_dirs);
	free(r);
}

struct ferry_receiver *(ferry_receiver_new)(const struct ferry_receiver_opts *o,
					    struct ferry_error *err)
{
	return ferry_receiver_new_sized(o, ABI0_RECEIVER_OPTS_SIZE, err);
}

struct ferry_receiver *ferry_receiver_new_sized(
	const struct ferry_receiver_opts *in, size_t size, struct ferry_error *err)
{
	struct ferry_receiver_opts full, *o = &full;
	struct ferry_receiver *r;
	int fd;

	if (abi_copy_in(&full, sizeof(full), in, size) < 0) {
		ferry_error_set(err, -EINVAL, "this libferry (%s) does not know "
				"an option the program set (built against a "
				"later ferry.h)", FERRY_VERSION_STRING);
		return NULL;
	}

	if (opts_check(o, err) < 0)
		return NULL;
	r = calloc(1, sizeof(*r));
	if (!r) {
		ferry_error_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	r->o = *o;
	memset(&r->o.tls, 0, sizeof(r->o.tls));
	r->listen_fd = -1;
	r->stop_efd = r->reap_efd = -1;
	r->listen_host = strdup(o->listen_host);
	r->qmp_path = o->qmp_path ? strdup(o->qmp_path) : NULL;
	r->qmp_dir = o->qmp_dir ? strdup(o->qmp_dir) : NULL;
	r->launch_cmd = o->launch_cmd ? strdup(o->launch_cmd) : NULL;
	r->state_dir = o->state_dir ? strdup(o->state_dir) : NULL;
	r->allow_dirs = o->allow_dirs ? strdup(o->allow_dirs) : NULL;
	if (!r->o.hello_timeout_ms)
		r->o.hello_timeout_ms = FERRY_DEFAULT_HELLO_TIMEOUT_MS;
	if (!r->o.max_migrations)
		r->o.max_migrations = FERRY_DEFAULT_MAX_MIGRATIONS;
	if (!r->o.max_handshakes)
		r->o.max_handshakes = FERRY_DEFAULT_MAX_HANDSHAKES;
	r->slots = calloc(2 * (size_t)r->o.max_handshakes, sizeof(*r->slots));
	r->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	r->reap_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!r->listen_host || (o->qmp_path && !r->qmp_path) ||
	    (o->qmp_dir && !r->qmp_dir) || (o->launch_cmd && !r->launch_cmd) ||
	    (o->state_dir && !r->state_dir) || (o->allow_dirs && !r->allow_dirs) ||
	    !r->slots || r->stop_efd < 0 ||
	    r->reap_efd < 0) {
		ferry_error_set(err, -ENOMEM, "out of memory");
		goto err_free;
	}
	for (uint32_t i = 0; i < 2 * r->o.max_handshakes; i++)
		r->slots[i].fd = -1;
	r->o.listen_host = r->listen_host;
	r->o.qmp_path = r->qmp_path;
	r->o.qmp_dir = r->qmp_dir;
	r->o.launch_cmd = r->launch_cmd;
	r->o.state_dir = r->state_dir;
	r->o.allow_dirs = r->allow_dirs;
	if (r->state_dir && mkdir(r->state_dir, 0700) < 0 && errno != EEXIST) {
		ferry_error_set(err, -errno, "cannot create the state directory "
				"%s: %s", r->state_dir, strerror(errno));
		goto err_free;
	}
	pthread_mutex_init(&r->mu, NULL);
	{
		pthread_condattr_t ca;

		/* Waits are on the monotonic clock, like every deadline. */
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&r->cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	if (tls_ctx_new(&r->tls, &o->tls, true, err) < 0)
		goto err_lock;
	fd = net_listen(o->listen_host, o->listen_port, err);
	if (fd < 0)
		goto err_lock;
	r->listen_fd = fd;
	r->port = net_local_port(fd);
	return r;

err_lock:
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
err_free:
	svc_release(r);
	return NULL;
}

uint16_t ferry_receiver_port(const struct ferry_receiver *r)
{
	return r->port;
}

void ferry_receiver_stop(struct ferry_receiver *r)
{
	efd_signal(r->stop_efd);
}

void ferry_receiver_free(struct ferry_receiver *r)
{
	if (!r)
		return;
	close(r->listen_fd);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	svc_release(r);
}

/* ---- the migration inbox ---- */

int rx_inbox_take(struct rx_mig *m, uint64_t deadline_ms, int watch_fd,
		  struct rx_conn *out)
{
	struct ferry_receiver *svc = m->svc;

	for (;;) {
		struct pollfd fds[3] = {
			{ .fd = m->wake_efd, .events = POLLIN },
			{ .fd = svc->stop_efd, .events = POLLIN },
			{ .fd = watch_fd, .events = POLLIN },
		};
		uint64_t now = ferry_now_ms();
		bool got = false;

		pthread_mutex_lock(&svc->mu);
		if (m->inbox_n) {
			*out = m->inbox[0];
			memmove(m->inbox, m->inbox + 1,
				--m->inbox_n * sizeof(m->inbox[0]));
			got = true;
		}
		pthread_mutex_unlock(&svc->mu);
		if (got)
			return 0;
		if (now >= deadline_ms)
			return -ETIMEDOUT;
		if (poll(fds, 3, (int)(deadline_ms - now)) < 0 && errno != EINTR)
			return -errno;
		if (fds[1].revents)
			return -ECANCELED;
		if (fds[2].revents)
			return -EPIPE;
		if (fds[0].revents)
			efd_drain(m->wake_efd);
	}
}

/* A flag of @m that the routing reads, under the service lock. */
static void mig_flag(struct rx_mig *m, bool *flag, bool on)
{
	pthread_mutex_lock(&m->svc->mu);
	*flag = on;
	pthread_mutex_unlock(&m->svc->mu);
}

void rx_mig_want_resume(struct rx_mig *m, bool on)
{
	mig_flag(m, &m->want_resume, on);
}

void rx_mig_want_conns(struct rx_mig *m, bool on)
{
	mig_flag(m, &m->want_conns, on);
}

void rx_thread_init(void)
{
	sigset_t s;

	sigemptyset(&s);
	sigaddset(&s, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
}

void rx_conn_free_preamble(struct rx_conn *c)
{
	free(c->config);
	free(c->guest);
	free(c->disks);
	c->config = NULL;
	c->guest = NULL;
	c->disks = NULL;
	c->config_len = c->ndisks = 0;
}

void rx_mig_counted(struct rx_mig *m)
{
	mig_flag(m, &m->counted, true);
}

/* "for VM 'x' " when the target has a name, for messages. */
static const char *target_label(const struct rx_target *t, char *buf,
				size_t len)
{
	if (!t->vm[0])
		return "";
	snprintf(buf, len, "for VM '%s' ", t->vm);
	return buf;
}

void rx_target_burnt(struct rx_mig *m, const char *why)
{
	struct ferry_receiver *svc = m->svc;
	char label[WIRE_VM_NAME_MAX + 16];
	struct rx_burnt *b;

	pthread_mutex_lock(&svc->mu);
	/* The oldest entry goes when the list is full: by then that QEMU
	 * is long gone or re-registered. */
	if (svc->nburnt == RX_BURNT_MAX) {
		memmove(svc->burnt, svc->burnt + 1,
			(RX_BURNT_MAX - 1) * sizeof(svc->burnt[0]));
		svc->nburnt--;
	}
	b = &svc->burnt[svc->nburnt++];
	snprintf(b->qmp_path, sizeof(b->qmp_path), "%s", m->target.qmp_path);
	b->dev = m->target.dev;
	b->ino = m->target.ino;
	b->ctime = m->target.ctime;
	memcpy(b->id, m->id, sizeof(b->id));
	pthread_mutex_unlock(&svc->mu);
	ferry_log(FERRY_LOG_WARN, "destination QEMU %sat %s is burnt by failed "
		  "migration %s (%s); it is not offered again until a new QEMU "
		  "is registered there", target_label(&m->target, label,
						      sizeof(label)),
		  m->target.qmp_path, m->id, why);
}

/* ---- routing ---- */

static struct rx_mig *find_mig(struct ferry_receiver *svc,
			       const uint8_t id[WIRE_MIG_ID_BYTES])
{
	for (uint32_t i = 0; i < FERRY_MAX_MIGRATIONS_LIMIT; i++) {
		struct rx_mig *m = svc->migs[i];

		if (m && !m->ended &&
		    !memcmp(m->ctrl.hello.mig_id, id, WIRE_MIG_ID_BYTES))
			return m;
	}
	return NULL;
}

static uint32_t active_migs(struct ferry_receiver *svc)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < FERRY_MAX_MIGRATIONS_LIMIT; i++)
		n += svc->migs[i] && !svc->migs[i]->ended;
	return n;
}

/*
 * Where the destination QEMU of a migration for @vm is: the one QMP socket
 * of a one-VM receiver, or DIR/NAME.qmp of a registered one. Checked to
 * be a socket now; whether a QEMU answers is for the migration to find.
 */
static int resolve_target(struct ferry_receiver *svc, const char *vm,
			  struct rx_target *t, struct ferry_error *err)
{
	/* Launched QEMUs' sockets are in the state directory. */
	const char *dir = svc->launch_cmd ? svc->state_dir : svc->qmp_dir;
	struct stat st;

	memset(t, 0, sizeof(*t));
	snprintf(t->vm, sizeof(t->vm), "%s", vm);
	if (svc->qmp_path) {
		snprintf(t->qmp_path, sizeof(t->qmp_path), "%s", svc->qmp_path);
	} else if (!vm[0]) {
		return ferry_error_set(err, -EINVAL, "this service %s: name the "
				       "VM (ferry migrate --vm NAME)",
				       svc->launch_cmd ? "launches each VM's QEMU" :
				       "serves many VMs");
	} else if ((size_t)snprintf(t->qmp_path, sizeof(t->qmp_path), "%s/%s.qmp",
				    dir, vm) >= sizeof(t->qmp_path)) {
		return ferry_error_set(err, -ENAMETOOLONG,
				       "the QMP path for VM '%s' is too long", vm);
	}
	/* Made by the launch; nothing to look at yet. */
	t->launched = svc->launch_cmd != NULL;
	if (t->launched)
		return 0;
	if (stat(t->qmp_path, &st) < 0)
		return ferry_error_set(err, -ENOENT, "no destination QEMU is "
			"registered for VM '%s' (%s: %s)", vm[0] ? vm : "(unnamed)",
			t->qmp_path, strerror(errno));
	if (!S_ISSOCK(st.st_mode))
		return ferry_error_set(err, -ENOTSOCK, "%s is not a QMP socket",
				       t->qmp_path);
	t->dev = st.st_dev;
	t->ino = st.st_ino;
	t->ctime = st.st_ctim;
	return 0;
}

/* Under svc->mu: why a new migration for @t cannot start now, or 0. */
static int admit(struct ferry_receiver *svc, const struct rx_conn *c,
		 const struct rx_target *t, struct ferry_error *err)
{
	char label[WIRE_VM_NAME_MAX + 16];
	uint32_t n = active_migs(svc);

	if (n >= svc->o.max_migrations)
		return ferry_error_set(err, -EBUSY, "busy: %u migrations in "
				       "progress (the limit of this receiver)", n);
	if (find_mig(svc, c->hello.mig_id))
		return ferry_error_set(err, -EEXIST, "a migration with this id "
				       "is already in progress");
	for (uint32_t i = 0; i < FERRY_MAX_MIGRATIONS_LIMIT; i++) {
		struct rx_mig *m = svc->migs[i];

		/* The same socket under two names is the same QEMU. */
		if (m && !m->ended && (!strcmp(m->target.qmp_path, t->qmp_path) ||
		    (!t->launched && !m->target.launched && t->ino &&
		     m->target.dev == t->dev && m->target.ino == t->ino)))
			return ferry_error_set(err, -EBUSY, "busy: the destination "
				"QEMU %sis already receiving migration %s",
				target_label(t, label, sizeof(label)), m->id);
	}
	for (uint32_t i = 0; i < svc->nburnt && !t->launched; i++) {
		const struct rx_burnt *b = &svc->burnt[i];

		if (!strcmp(b->qmp_path, t->qmp_path) && b->dev == t->dev &&
		    b->ino == t->ino && b->ctime.tv_sec == t->ctime.tv_sec &&
		    b->ctime.tv_nsec == t->ctime.tv_nsec)
			return ferry_error_set(err, -ESTALE, "the destination QEMU "
				"%sat %s was burnt by failed migration %s; start "
				"and register a new one",
				target_label(t, label, sizeof(label)),
				t->qmp_path, b->id);
	}
	return 0;
}

static int slot_free_index(struct ferry_receiver *svc)
{
	for (uint32_t i = 0; i < FERRY_MAX_MIGRATIONS_LIMIT; i++)
		if (!svc->migs[i])
			return (int)i;
	return -1;
}

/* A refusal the peer can read, then the connection closes. */
static void refuse(struct rx_conn *c, const struct ferry_error *why)
{
	ferry_log(FERRY_LOG_WARN, "refused migration from %s%s%s: %s", c->peer,
		  c->vm[0] ? " for VM " : "", c->vm, why->msg);
	net_ctrl_send(&c->c, WIRE_CTRL_ERROR, why->msg,
		      (uint32_t)strnlen(why->msg, sizeof(why->msg)),
		      RX_REFUSE_SEND_MS, NULL);
	net_conn_close(&c->c);
	rx_conn_free_preamble(c);
}

/*
 * A RESUME control connection for a migration that does not run here:
 * a post-copy whose receiver died, or gave up waiting, and that ferry
 * recover on the source host resumes. The journal of this host says
 * which destination QEMU it was and whose it was: taken back when the
 * journal is not finished and the TLS identity is the one it recorded.
 * The migration's thread checks the QEMU itself (in post-copy, the same
 * RAM size) before anything is done to it.
 */
static int adopt_target(struct ferry_receiver *svc, const struct rx_conn *c,
			struct rx_target *t, struct ferry_error *err)
{
	char id[37], path[PATH_MAX];
	const char *qmp, *vm, *identity, *last;
	json_t *lines, *first;
	int rc;

	if (!svc->state_dir)
		return ferry_error_set(err, -ENOENT, "no migration with its id is "
				       "in progress here (and this receiver "
				       "keeps no journal)");
	wire_mig_id_format(c->hello.mig_id, id);
	snprintf(path, sizeof(path), "%s/%s/%s.destination.jsonl", svc->state_dir,
		 JOURNAL_DIR, id);
	rc = journal_read(path, &lines, err);
	if (rc < 0)
		return ferry_error_set(err, -ENOENT, "no migration with its id is "
				       "in progress here or in this host's "
				       "journal");
	first = json_array_get(lines, 0);
	qmp = json_string_value(json_object_get(first, "qmp"));
	vm = json_string_value(json_object_get(first, "vm"));
	identity = json_string_value(json_object_get(first, "identity"));
	last = json_string_value(json_object_get(json_array_get(lines,
			json_array_size(lines) - 1), "state"));
	memset(t, 0, sizeof(*t));
	if (!qmp || !identity || !last)
		rc = ferry_error_set(err, -EINVAL, "its journal does not say "
				     "which QEMU it was, or whose");
	else if (journal_terminal(last))
		rc = ferry_error_set(err, -EALREADY, "its journal says it ended "
				     "('%s')", last);
	else if (strcmp(identity, c->identity) != 0)
		rc = ferry_error_set(err, -EACCES, "its TLS identity differs "
				     "from the one its journal recorded");
	else if (snprintf(t->qmp_path, sizeof(t->qmp_path), "%s", qmp) >=
		 (int)sizeof(t->qmp_path))
		rc = ferry_error_set(err, -ENAMETOOLONG, "its QMP path is too long");
	else
		snprintf(t->vm, sizeof(t->vm), "%s", vm ? vm : "");
	json_decref(lines);
	return rc;
}

/*
 * A verified control connection: start its migration on a thread of its
 * own, or refuse it (busy, unknown VM, burnt QEMU, --direct on TLS).
 * Nothing here touches QMP.
 */
static void start_migration(struct ferry_receiver *svc, struct rx_conn *c)
{
	struct ferry_error err = { 0 };
	struct rx_target t;
	struct rx_mig *m;
	int idx, rc;

	if (svc->tls && (c->hello.options & WIRE_OPT_DIRECT)) {
		ferry_error_set(&err, -EPERM, "--direct is refused by this TLS "
			"receiver: QEMU's own stream would cross the network "
			"without ferry's TLS; migrate without --direct");
		refuse(c, &err);
		return;
	}
	rc = c->hello.options & WIRE_OPT_RESUME ?
	     adopt_target(svc, c, &t, &err) : resolve_target(svc, c->vm, &t, &err);
	if (rc < 0) {
		refuse(c, &err);
		return;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		ferry_error_set(&err, -ENOMEM, "out of memory");
		refuse(c, &err);
		return;
	}
	m->svc = svc;
	m->ctrl = *c;
	m->target = t;
	m->adopted = c->hello.options & WIRE_OPT_RESUME;
	wire_mig_id_format(c->hello.mig_id, m->id);
	m->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_mutex_lock(&svc->mu);
	rc = svc->stopping ? ferry_error_set(&err, -ECANCELED,
					     "the receiver is stopping") :
	     admit(svc, c, &t, &err);
	idx = slot_free_index(svc);
	if (rc == 0 && (idx < 0 || m->wake_efd < 0))
		rc = ferry_error_set(&err, -EBUSY, "busy: no room for another "
				     "migration");
	if (rc == 0) {
		rc = -pthread_create(&m->thread, NULL, rx_mig_main, m);
		if (rc < 0)
			ferry_error_set(&err, rc, "cannot start a thread: %s",
					strerror(-rc));
	}
	if (rc == 0)
		svc->migs[idx] = m;
	pthread_mutex_unlock(&svc->mu);
	if (rc == 0)
		return;
	refuse(c, &err);
	if (m->wake_efd >= 0)
		close(m->wake_efd);
	free(m);
}

/* Any other verified connection joins the migration it names. */
static void route_conn(struct ferry_receiver *svc, struct rx_conn *c)
{
	const char *why = NULL;
	struct rx_mig *m;
	char id[37];

	pthread_mutex_lock(&svc->mu);
	m = find_mig(svc, c->hello.mig_id);
	if (!m && c->hello.conn == WIRE_CONN_CONTROL) {
		/* A RESUME: perhaps a post-copy of this host's journal. */
		pthread_mutex_unlock(&svc->mu);
		start_migration(svc, c);
		return;
	}
	if (!m)
		why = "no migration with its id is in progress here";
	else if (strcmp(m->ctrl.identity, c->identity) != 0)
		why = "its TLS identity differs from its migration's";
	else if (c->hello.conn == WIRE_CONN_CONTROL && !m->want_resume)
		why = "a second control connection";
	else if (c->hello.conn != WIRE_CONN_CONTROL && !m->want_conns)
		why = "its migration does not take connections now";
	else if (m->inbox_n == RX_INBOX_MAX)
		why = "its migration has too many connections waiting";
	if (!why) {
		m->inbox[m->inbox_n++] = *c;
		efd_signal(m->wake_efd);
	}
	pthread_mutex_unlock(&svc->mu);
	if (!why)
		return;
	wire_mig_id_format(c->hello.mig_id, id);
	ferry_log(FERRY_LOG_WARN, "rejected connection from %s for migration "
		  "%s: %s", c->peer, id, why);
	net_conn_close(&c->c);
}

/* MemTotal and MemAvailable, bytes; 0 when unknown. */
static void meminfo(uint64_t *total, uint64_t *available)
{
	char line[128];
	FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long kib;

	*total = *available = 0;
	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
			*total = kib << 10;
		else if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
			*available = kib << 10;
	}
	if (f)
		fclose(f);
}

int64_t rx_host(struct ferry_receiver *svc, struct wire_host *h)
{
	double ratio = svc->o.ram_allocation_ratio > 0 ?
		       svc->o.ram_allocation_ratio : 1.0;
	uint64_t reserved = 0;
	int64_t usable;

	memset(h, 0, sizeof(*h));
	meminfo(&h->mem_total, &h->mem_available);
	pthread_mutex_lock(&svc->mu);
	for (uint32_t i = 0; i < FERRY_MAX_MIGRATIONS_LIMIT; i++) {
		struct rx_mig *m = svc->migs[i];

		if (m && !m->ended) {
			reserved += m->ctrl.hello.ram_bytes;
			h->migrations++;
		}
	}
	pthread_mutex_unlock(&svc->mu);
	h->max_migrations = svc->o.max_migrations;
	h->ratio_milli = (uint32_t)(ratio * 1000 + 0.5);
	usable = (int64_t)((double)h->mem_total * ratio) -
		 (int64_t)(h->mem_total - h->mem_available) - (int64_t)reserved;
	h->usable = usable > 0 ? (uint64_t)usable : 0;
	return usable;
}

/*
 * A HOST connection: what this host can take, for a source choosing
 * among destinations. Nothing else is read or done.
 */
static void answer_host(struct ferry_receiver *svc, struct rx_conn *c)
{
	uint8_t buf[WIRE_HOST_BYTES];
	struct wire_host h;

	rx_host(svc, &h);
	wire_host_encode(&h, buf);
	net_ctrl_send(&c->c, WIRE_CTRL_HOST, buf, sizeof(buf), RX_REFUSE_SEND_MS,
		      NULL);
	net_conn_close(&c->c);
}

/* ---- one connection's handshake ---- */

static const char *conn_state_name(enum rx_conn_state s)
{
	static const char *const names[] = {
		"tls", "hello", "vm", "config", "guest", "disks", "routed",
		"failed",
	};

	return names[s];
}

static int remaining_ms(const struct rx_handshake *h)
{
	uint64_t now = ferry_now_ms();

	return now >= h->deadline_ms ? 0 : (int)(h->deadline_ms - now);
}

/* The next control message of the preamble, which must be @type. */
static int preamble_msg(struct rx_handshake *h, uint16_t type,
			struct wire_ctrl_hdr *ch, uint8_t *buf,
			struct ferry_error *err)
{
	int rc = net_ctrl_recv(&h->conn.c, ch, buf, remaining_ms(h), err);

	if (rc == 0 && ch->type != type)
		rc = ferry_error_set(err, -EPROTO, "expected %s in the preamble, "
				     "got %s", wire_ctrl_name(type),
				     wire_ctrl_name(ch->type));
	return rc;
}

/* Where the preamble of a control hello goes after @done. */
static enum rx_conn_state preamble_next(const struct rx_conn *c,
					enum rx_conn_state done)
{
	bool fresh_control = c->hello.conn == WIRE_CONN_CONTROL &&
			     !(c->hello.options & WIRE_OPT_RESUME);

	if (!fresh_control)
		return RX_CONN_ROUTED;
	if (done == RX_CONN_HELLO && (c->hello.options & WIRE_OPT_VM))
		return RX_CONN_VM;
	if (done == RX_CONN_VM)
		return RX_CONN_CONFIG;
	if (done == RX_CONN_HELLO || done == RX_CONN_CONFIG)
		return RX_CONN_GUEST;
	if (done == RX_CONN_GUEST && (c->hello.options & WIRE_OPT_BLOCK))
		return RX_CONN_DISKS;
	return RX_CONN_ROUTED;
}

/*
 * One step of the handshake: the transition function of enum
 * rx_conn_state. The whole preamble of a control connection (hello, VM,
 * CONFIG, GUEST, DISKS) is read and checked here, under the connection's own
 * deadline, so a migration starts only with everything it needs before
 * READY. Every error leads to RX_CONN_FAILED with @err set.
 */
static enum rx_conn_state conn_step(struct rx_handshake *h,
				    struct ferry_error *err)
{
	struct ferry_receiver *svc = h->svc;
	struct rx_conn *c = &h->conn;
	uint8_t buf[WIRE_CTRL_PAYLOAD_MAX + 1];
	const char *argv[WIRE_CONFIG_ARGS_MAX];
	struct wire_ctrl_hdr ch;
	uint32_t argc;

	switch (h->state) {
	case RX_CONN_TLS:
		if (!svc->tls)
			return RX_CONN_HELLO;
		if (net_conn_start_tls(&c->c, svc->tls, NULL, remaining_ms(h),
				       err) < 0)
			return RX_CONN_FAILED;
		if (tls_peer_identity(c->c.ssl, c->identity,
				      sizeof(c->identity)) < 0) {
			ferry_error_set(err, -EACCES, "the TLS peer has no identity");
			return RX_CONN_FAILED;
		}
		return RX_CONN_HELLO;
	case RX_CONN_HELLO:
		if (net_read_full(&c->c, buf, WIRE_HELLO_BYTES, remaining_ms(h),
				  "hello", err) < 0 ||
		    wire_hello_decode(buf, &c->hello, err) < 0)
			return RX_CONN_FAILED;
		return preamble_next(c, RX_CONN_HELLO);
	case RX_CONN_VM:
		if (preamble_msg(h, WIRE_CTRL_VM, &ch, buf, err) < 0 ||
		    wire_vm_decode(&ch, buf, c->vm, err) < 0)
			return RX_CONN_FAILED;
		return preamble_next(c, RX_CONN_VM);
	case RX_CONN_CONFIG:
		/* Checked here, at the edge; kept as bytes. */
		if (preamble_msg(h, WIRE_CTRL_CONFIG, &ch, buf, err) < 0 ||
		    wire_config_decode(&ch, buf, argv, &argc, err) < 0)
			return RX_CONN_FAILED;
		c->config = malloc(ch.len + 1);
		if (!c->config) {
			ferry_error_set(err, -ENOMEM, "out of memory");
			return RX_CONN_FAILED;
		}
		memcpy(c->config, buf, ch.len + 1);
		c->config_len = ch.len;
		return preamble_next(c, RX_CONN_CONFIG);
	case RX_CONN_GUEST:
		c->guest = malloc(sizeof(*c->guest));
		if (!c->guest) {
			ferry_error_set(err, -ENOMEM, "out of memory");
			return RX_CONN_FAILED;
		}
		if (preamble_msg(h, WIRE_CTRL_GUEST, &ch, buf, err) < 0 ||
		    wire_guest_decode(&ch, buf, c->guest, err) < 0)
			return RX_CONN_FAILED;
		return preamble_next(c, RX_CONN_GUEST);
	case RX_CONN_DISKS:
		c->disks = calloc(WIRE_DISKS_MAX, sizeof(*c->disks));
		if (!c->disks) {
			ferry_error_set(err, -ENOMEM, "out of memory");
			return RX_CONN_FAILED;
		}
		if (preamble_msg(h, WIRE_CTRL_DISKS, &ch, buf, err) < 0 ||
		    wire_disks_decode(buf, ch.len, c->disks, &c->ndisks, err) < 0)
			return RX_CONN_FAILED;
		return preamble_next(c, RX_CONN_DISKS);
	case RX_CONN_ROUTED:
	case RX_CONN_FAILED:
		break;
	}
	FERRY_ASSERT(!"conn_step past a final state");
	return RX_CONN_FAILED;
}

/*
 * The handshake is over: its slot is free (and no longer evictable), and
 * whether it was evicted meanwhile (then the connection is dead).
 */
static bool slot_clear(struct ferry_receiver *svc, uint32_t slot)
{
	bool evicted;

	pthread_mutex_lock(&svc->mu);
	svc->slots[slot].fd = -1;
	evicted = svc->slots[slot].evicted;
	pthread_cond_broadcast(&svc->cv);
	pthread_mutex_unlock(&svc->mu);
	return evicted;
}

/* The handshake thread is done with the service (shut_down waits). */
static void handshake_done(struct ferry_receiver *svc)
{
	pthread_mutex_lock(&svc->mu);
	svc->handshakes--;
	pthread_cond_broadcast(&svc->cv);
	pthread_mutex_unlock(&svc->mu);
}

static void *handshake_main(void *arg)
{
	struct rx_handshake *h = arg;
	struct ferry_receiver *svc = h->svc;
	struct ferry_error err = { 0 };
	struct rx_conn *c = &h->conn;

	rx_thread_init();
	while (h->state != RX_CONN_ROUTED && h->state != RX_CONN_FAILED) {
		enum rx_conn_state next = conn_step(h, &err);

		ferry_log(FERRY_LOG_DEBUG, "connection from %s: %s -> %s",
			  c->peer, conn_state_name(h->state),
			  conn_state_name(next));
		h->state = next;
		/* A handshake that is through is never evicted. */
		pthread_mutex_lock(&svc->mu);
		svc->slots[h->slot].state = next;
		pthread_mutex_unlock(&svc->mu);
	}
	/* The slot goes first: from here the connection is a migration's,
	 * or closed, and eviction must not shut it down. One evicted at the
	 * last moment is dead, whatever its state. */
	if (slot_clear(svc, h->slot)) {
		ferry_log(FERRY_LOG_WARN, "closed connection from %s during its "
			  "handshake (%s) to make room: %u handshakes in "
			  "progress, the oldest goes", c->peer,
			  conn_state_name(h->state), svc->o.max_handshakes);
		h->state = RX_CONN_FAILED;
		err.code = 0;
	} else if (h->state == RX_CONN_FAILED) {
		ferry_log(FERRY_LOG_WARN, "rejected connection from %s: %s",
			  c->peer, err.msg);
	}
	if (h->state == RX_CONN_FAILED) {
		net_conn_close(&c->c);
		rx_conn_free_preamble(c);
	} else if (c->hello.conn == WIRE_CONN_HOST) {
		answer_host(svc, c);
	} else if (c->hello.conn == WIRE_CONN_CONTROL &&
		   !(c->hello.options & WIRE_OPT_RESUME)) {
		start_migration(svc, c);
	} else {
		route_conn(svc, c);
	}
	handshake_done(svc);
	free(h);
	return NULL;
}

/*
 * Under svc->mu: a free handshake slot. When max_handshakes are in
 * progress, the oldest of them (not younger than RX_SLOT_MIN_AGE_MS, its
 * handshake not through) is shut down to make room, so a flood of idle
 * connections costs a real one the eviction of an idle one, not a wait;
 * the evicted connection keeps its slot until its thread lets go, in the
 * second half of the slots. Only when nothing can go is there a wait,
 * bounded.
 */
static int slot_get(struct ferry_receiver *svc)
{
	uint64_t deadline = ferry_now_ms() + RX_SLOT_WAIT_MS;

	for (;;) {
		uint32_t active = 0, oldest = UINT32_MAX, free_slot = UINT32_MAX;
		uint64_t now = ferry_now_ms();
		struct timespec ts;

		for (uint32_t i = 0; i < 2 * svc->o.max_handshakes; i++) {
			const struct rx_slot *sl = &svc->slots[i];

			if (sl->fd < 0) {
				if (free_slot == UINT32_MAX)
					free_slot = i;
				continue;
			}
			if (sl->evicted)
				continue;
			active++;
			if (sl->state < RX_CONN_ROUTED &&
			    now - sl->t0_ms >= RX_SLOT_MIN_AGE_MS &&
			    (oldest == UINT32_MAX ||
			     sl->t0_ms < svc->slots[oldest].t0_ms))
				oldest = i;
		}
		if (active >= svc->o.max_handshakes && oldest != UINT32_MAX) {
			/* Its thread sees EOF and gives the slot back. */
			shutdown(svc->slots[oldest].fd, SHUT_RDWR);
			svc->slots[oldest].evicted = true;
			active--;
		}
		if (active < svc->o.max_handshakes && free_slot != UINT32_MAX)
			return (int)free_slot;
		if (now >= deadline)
			return -EBUSY;
		ts = ferry_deadline_after(RX_EVICT_WAIT_MS);
		pthread_cond_timedwait(&svc->cv, &svc->mu, &ts);
	}
}

static void start_handshake(struct ferry_receiver *svc, int fd)
{
	struct rx_handshake *h;
	pthread_attr_t attr;
	pthread_t t;
	char peer[64];
	int slot, rc;

	net_peer_name(fd, peer, sizeof(peer));
	h = calloc(1, sizeof(*h));
	if (!h) {
		ferry_log(FERRY_LOG_WARN, "rejected connection from %s: out of "
			  "memory", peer);
		goto err_close;
	}
	pthread_mutex_lock(&svc->mu);
	slot = slot_get(svc);
	if (slot >= 0) {
		svc->slots[slot].fd = fd;
		svc->slots[slot].t0_ms = ferry_now_ms();
		svc->slots[slot].state = RX_CONN_TLS;
		svc->slots[slot].evicted = false;
		svc->handshakes++;
	}
	pthread_mutex_unlock(&svc->mu);
	if (slot < 0) {
		ferry_log(FERRY_LOG_WARN, "rejected connection from %s: %u "
			  "handshakes in progress", peer, svc->o.max_handshakes);
		goto err_free;
	}
	h->svc = svc;
	h->slot = (uint32_t)slot;
	h->state = RX_CONN_TLS;
	h->deadline_ms = ferry_now_ms() + svc->o.hello_timeout_ms;
	net_conn_init(&h->conn.c, fd);
	snprintf(h->conn.peer, sizeof(h->conn.peer), "%s", peer);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&t, &attr, handshake_main, h);
	pthread_attr_destroy(&attr);
	if (rc == 0)
		return;
	ferry_log(FERRY_LOG_WARN, "rejected connection from %s: cannot start "
		  "a thread: %s", peer, strerror(rc));
	slot_clear(svc, (uint32_t)slot);
	handshake_done(svc);
err_free:
	free(h);
err_close:
	close(fd);
}

/* ---- the acceptor ---- */

/*
 * Join every migration that ended. A migration that counted (answered
 * READY) is recorded in @out, unless @out already holds one and
 * @keep_first is set (--once returns the first).
 */
static void reap(struct ferry_receiver *svc, bool keep_first,
		 struct rx_outcome *out)
{
	for (uint32_t i = 0; i < FERRY_MAX_MIGRATIONS_LIMIT; i++) {
		struct rx_mig *m;

		pthread_mutex_lock(&svc->mu);
		m = svc->migs[i];
		if (m && !m->ended)
			m = NULL;
		if (m)
			svc->migs[i] = NULL;
		pthread_mutex_unlock(&svc->mu);
		if (!m)
			continue;
		pthread_join(m->thread, NULL);
		if (m->counted && !(keep_first && out->counted)) {
			out->counted = true;
			out->rc = m->rc;
			out->err = m->err;
			out->report = m->report;
		}
		/* Connections that arrived too late for it. */
		for (uint32_t k = 0; k < m->inbox_n; k++) {
			net_conn_close(&m->inbox[k].c);
			rx_conn_free_preamble(&m->inbox[k]);
		}
		close(m->wake_efd);
		rx_conn_free_preamble(&m->ctrl);
		free(m);
	}
}

static bool migs_left(struct ferry_receiver *svc)
{
	bool left = false;

	pthread_mutex_lock(&svc->mu);
	for (uint32_t i = 0; i < FERRY_MAX_MIGRATIONS_LIMIT; i++)
		left |= svc->migs[i] != NULL;
	pthread_mutex_unlock(&svc->mu);
	return left;
}

/*
 * Stop everything: handshakes see their sockets shut, migrations the
 * stop eventfd. Returns once every thread is gone; what they end with
 * is recorded as reap() does.
 */
static void shut_down(struct ferry_receiver *svc, bool keep_first,
		      struct rx_outcome *out)
{
	efd_signal(svc->stop_efd);
	pthread_mutex_lock(&svc->mu);
	svc->stopping = true;
	for (uint32_t i = 0; i < 2 * svc->o.max_handshakes; i++)
		if (svc->slots[i].fd >= 0)
			shutdown(svc->slots[i].fd, SHUT_RDWR);
	while (svc->handshakes)
		pthread_cond_wait(&svc->cv, &svc->mu);
	pthread_mutex_unlock(&svc->mu);
	for (;;) {
		reap(svc, keep_first, out);
		if (!migs_left(svc))
			break;
		poll(&(struct pollfd){ .fd = svc->reap_efd, .events = POLLIN },
		     1, RX_REAP_POLL_MS);
		efd_drain(svc->reap_efd);
	}
	/* A later run starts afresh. */
	efd_drain(svc->stop_efd);
	pthread_mutex_lock(&svc->mu);
	svc->stopping = false;
	pthread_mutex_unlock(&svc->mu);
}

void rx_mig_ended(struct rx_mig *m)
{
	pthread_mutex_lock(&m->svc->mu);
	m->ended = true;
	pthread_mutex_unlock(&m->svc->mu);
	efd_signal(m->svc->reap_efd);
}

int (ferry_receiver_run)(struct ferry_receiver *r, struct ferry_report *report,
			 struct ferry_error *err)
{
	return ferry_receiver_run_sized(r, report, ABI0_REPORT_SIZE, err);
}

static int receiver_run(struct ferry_receiver *r, struct ferry_report *report,
			struct ferry_error *err);

int ferry_receiver_run_sized(struct ferry_receiver *r, struct ferry_report *report,
			     size_t size, struct ferry_error *err)
{
	struct ferry_report full;
	int rc;

	memset(&full, 0, sizeof(full));
	rc = receiver_run(r, &full, err);
	if (report)
		report_copy_out(report, size, &full);
	return rc;
}

static int receiver_run(struct ferry_receiver *r, struct ferry_report *report,
			struct ferry_error *err)
{
	struct rx_outcome *out = calloc(1, sizeof(*out));
	int rc = 0;

	if (!out)
		return ferry_error_set(err, -ENOMEM, "out of memory");
	if (report)
		memset(report, 0, sizeof(*report));
	if (r->qmp_path)
		ferry_log(FERRY_LOG_INFO, "listening on %s:%u for QEMU at %s",
			  r->o.listen_host, r->port, r->qmp_path);
	else if (r->launch_cmd)
		ferry_log(FERRY_LOG_INFO, "listening on %s:%u; launching each "
			  "destination QEMU with '%s' (up to %u migrations at "
			  "once)", r->o.listen_host, r->port, r->launch_cmd,
			  r->o.max_migrations);
	else
		ferry_log(FERRY_LOG_INFO, "listening on %s:%u for the QEMUs "
			  "registered in %s (up to %u migrations at once)",
			  r->o.listen_host, r->port, r->qmp_dir,
			  r->o.max_migrations);
	for (;;) {
		struct pollfd fds[3] = {
			{ .fd = r->listen_fd, .events = POLLIN },
			{ .fd = r->stop_efd, .events = POLLIN },
			{ .fd = r->reap_efd, .events = POLLIN },
		};
		int fd;

		if (poll(fds, 3, -1) < 0 && errno != EINTR) {
			rc = ferry_error_set(err, -errno, "poll: %s", strerror(errno));
			break;
		}
		if (fds[1].revents)
			break;
		if (fds[2].revents) {
			efd_drain(r->reap_efd);
			reap(r, r->o.once, out);
			if (r->o.once && out->counted)
				break;
		}
		if (!fds[0].revents)
			continue;
		fd = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
			/* The handshakes in progress give theirs back soon. */
			usleep(RX_EMFILE_BACKOFF_MS * 1000);
			continue;
		}
		if (fd < 0 && (errno == EINTR || errno == ECONNABORTED ||
			       errno == EAGAIN))
			continue;
		if (fd < 0) {
			rc = ferry_error_set(err, -errno, "accept: %s",
					     strerror(errno));
			break;
		}
		start_handshake(r, fd);
	}
	/* --once returns the first migration that counted; the others were
	 * stopped and are not the result. */
	shut_down(r, true, out);
	if (report && out->counted)
		*report = out->report;
	if (rc == 0 && r->o.once && out->counted && out->rc < 0) {
		rc = out->rc;
		if (err)
			*err = out->err;
	}
	free(out);
	return rc;
}
