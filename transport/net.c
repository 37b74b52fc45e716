/* TCP plumbing (see net.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/err.h>


#include "common/util.h"
#include "net.h"

static int resolve(const char *host, uint16_t port, bool passive,
		   struct addrinfo **out, struct ferry_error *err)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = passive ? AI_PASSIVE : 0,
	};
	char portstr[8];
	int rc;

	snprintf(portstr, sizeof(portstr), "%u", port);
	rc = getaddrinfo(host, portstr, &hints, out);
	if (rc != 0)
		return ferry_error_set(err, -EHOSTUNREACH,
			"cannot resolve %s: %s", host, gai_strerror(rc));
	return 0;
}

int net_listen(const char *host, uint16_t port, struct ferry_error *err)
{
	struct addrinfo *ai;
	int one = 1;
	int fd, rc;

	rc = resolve(host, port, true, &ai, err);
	if (rc < 0)
		return rc;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = ferry_error_set(err, -errno, "socket: %s", strerror(errno));
		goto err_free;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		rc = ferry_error_set(err, -errno, "cannot bind %s:%u: %s",
				     host, port, strerror(errno));
		goto err_close;
	}
	if (listen(fd, NET_LISTEN_BACKLOG) < 0) {
		rc = ferry_error_set(err, -errno, "listen on %s:%u: %s",
				     host, port, strerror(errno));
		goto err_close;
	}
	freeaddrinfo(ai);
	return fd;

err_close:
	close(fd);
err_free:
	freeaddrinfo(ai);
	return rc;
}

int net_unix_dir_make(struct net_unix_dir *u, int owner_pid,
		      struct ferry_error *err)
{
	const char *tmp = getenv("TMPDIR");
	char proc[32];
	struct stat st;

	if (!tmp || !*tmp || strlen(tmp) > sizeof(u->dir) - 20)
		tmp = "/tmp";
	snprintf(u->dir, sizeof(u->dir), "%s/ferry-qemu.XXXXXX", tmp);
	u->path[0] = '\0';
	if (!mkdtemp(u->dir)) {
		int rc = -errno;

		u->dir[0] = '\0';
		return ferry_error_set(err, rc, "cannot make a directory for "
				       "QEMU's socket in %s: %s", tmp, strerror(-rc));
	}
	snprintf(u->path, sizeof(u->path), "%s/mig.sock", u->dir);
	snprintf(proc, sizeof(proc), "/proc/%d", owner_pid);
	u->uid = u->gid = -1;
	/* A QEMU of another user: the directory is its. */
	if (owner_pid > 0 && stat(proc, &st) == 0 && st.st_uid != geteuid()) {
		u->uid = (int)st.st_uid;
		u->gid = (int)st.st_gid;
		if (chown(u->dir, st.st_uid, st.st_gid) < 0) {
			int rc = -errno;

			net_unix_dir_remove(u);
			return ferry_error_set(err, rc, "cannot give QEMU (pid %d) "
					       "the directory for its socket: %s",
					       owner_pid, strerror(-rc));
		}
	}
	return 0;
}

void net_unix_dir_remove(struct net_unix_dir *u)
{
	if (u->path[0])
		unlink(u->path);
	if (u->dir[0])
		rmdir(u->dir);
	u->path[0] = u->dir[0] = '\0';
}

static int unix_addr(const char *path, struct sockaddr_un *sa,
		     struct ferry_error *err)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path))
		return ferry_error_set(err, -ENAMETOOLONG, "socket path too "
				       "long: %s", path);
	memcpy(sa->sun_path, path, strlen(path));
	return 0;
}

int net_unix_listen(const struct net_unix_dir *u, struct ferry_error *err)
{
	struct sockaddr_un sa;
	int fd, rc;

	rc = unix_addr(u->path, &sa, err);
	if (rc < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ferry_error_set(err, -errno, "socket: %s", strerror(errno));
	/* Connecting takes write permission on the socket: its user only,
	 * and that is the QEMU's when it runs as another. */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(u->path, 0600) < 0 ||
	    (u->uid >= 0 && chown(u->path, (uid_t)u->uid, (gid_t)u->gid) < 0) ||
	    listen(fd, NET_LISTEN_BACKLOG) < 0) {
		rc = ferry_error_set(err, -errno, "cannot listen on %s: %s",
				     u->path, strerror(errno));
		close(fd);
		return rc;
	}
	return fd;
}

int net_peer_pid(int fd)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return 0;
	return (int)cr.pid;
}

int net_unix_connect(const char *path, struct ferry_error *err)
{
	struct sockaddr_un sa;
	int fd, rc;

	rc = unix_addr(path, &sa, err);
	if (rc < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ferry_error_set(err, -errno, "socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		rc = ferry_error_set(err, -errno, "cannot connect to %s: %s",
				     path, strerror(errno));
		close(fd);
		return rc;
	}
	return fd;
}

int net_accept_timeout(int lfd, int timeout_ms, int cancel_fd,
		       struct ferry_error *err)
{
	struct pollfd p[2] = {
		{ .fd = lfd, .events = POLLIN },
		{ .fd = cancel_fd, .events = POLLIN },
	};
	int n, fd;

	do {
		n = poll(p, 2, timeout_ms);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return ferry_error_set(err, -errno, "poll: %s", strerror(errno));
	if (p[1].revents)
		return ferry_error_set(err, -ECANCELED, "cancelled");
	if (n == 0)
		return ferry_error_set(err, -ETIMEDOUT, "no connection within "
				       "%d ms", timeout_ms);
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return ferry_error_set(err, -errno, "accept: %s", strerror(errno));
	return fd;
}

uint16_t net_local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return 0;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return 0;
}

void net_peer_name(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	uint16_t port = 0;

	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *s = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &s->sin_addr, host, sizeof(host));
			port = ntohs(s->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof(host));
			port = ntohs(s->sin6_port);
		}
	}
	snprintf(buf, len, "%s:%u", host, port);
}

/* Wait for @events on @fd until @deadline_ms (monotonic). */
static int wait_fd(int fd, short events, uint64_t deadline_ms)
{
	struct pollfd p = { .fd = fd, .events = events };

	for (;;) {
		uint64_t now = ferry_now_ms();
		int rc;

		if (now >= deadline_ms)
			return -ETIMEDOUT;
		rc = poll(&p, 1, (int)(deadline_ms - now));
		if (rc > 0)
			return 0;
		if (rc < 0 && errno != EINTR)
			return -errno;
	}
}

static int connect_one(const struct addrinfo *a, uint64_t deadline_ms)
{
	socklen_t sl = sizeof(int);
	int one = 1, soerr = 0;
	int fd, rc, flags;

	fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) {
		rc = -errno;
		goto err_close;
	}
	rc = wait_fd(fd, POLLOUT, deadline_ms);
	if (rc < 0)
		goto err_close;
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
	if (soerr) {
		rc = -soerr;
		goto err_close;
	}
	flags = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;

err_close:
	close(fd);
	return rc;
}

int net_connect(const char *host, uint16_t port, int timeout_ms,
		struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + (uint64_t)timeout_ms;
	struct addrinfo *ai, *a;
	int rc, fd = -EHOSTUNREACH;

	rc = resolve(host, port, false, &ai, err);
	if (rc < 0)
		return rc;
	for (a = ai; a; a = a->ai_next) {
		fd = connect_one(a, deadline);
		if (fd >= 0)
			break;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		return ferry_error_set(err, fd, "cannot connect to %s:%u: %s",
				       host, port, strerror(-fd));
	return fd;
}

uint32_t net_in_flight_bytes(uint64_t rate_bytes_per_s, uint32_t downtime_ms)
{
	uint64_t b = rate_bytes_per_s * downtime_ms / 1000 / NET_IN_FLIGHT_SHARE;

	if (!rate_bytes_per_s || b > NET_IN_FLIGHT_MAX_BYTES)
		return NET_IN_FLIGHT_MAX_BYTES;
	return b < NET_IN_FLIGHT_MIN_BYTES ? NET_IN_FLIGHT_MIN_BYTES : (uint32_t)b;
}

void net_bound_unsent(int fd, uint32_t bytes)
{
	int v = (int)bytes;

	if (bytes >= NET_IN_FLIGHT_MAX_BYTES)
		return;		/* an unknown link: the kernel's autotuning */
	setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, sizeof(v));
}

int net_local_pair(int sv[2], struct ferry_error *err)
{
	return net_local_pair_sized(sv, NET_LOCAL_BUF_BYTES, err);
}

int net_local_pair_sized(int sv[2], uint32_t bytes, struct ferry_error *err)
{
	int sz = (int)bytes;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return ferry_error_set(err, -errno, "socketpair: %s", strerror(errno));
	for (int i = 0; i < 2; i++) {
		/* As root, past the rmem/wmem sysctl limits. */
		if (setsockopt(sv[i], SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)))
			setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
		if (setsockopt(sv[i], SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)))
			setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	}
	return 0;
}

void net_keepalive(int fd)
{
	int on = 1, idle = NET_KEEPALIVE_IDLE_S, intvl = NET_KEEPALIVE_INTVL_S;
	int cnt = NET_KEEPALIVE_COUNT, user_timeout = NET_TCP_USER_TIMEOUT_MS;

	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) < 0)
		return;
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout,
		   sizeof(user_timeout));
}

int net_peek(int fd, void *buf, size_t len, int timeout_ms, int cancel_fd)
{
	uint64_t deadline = ferry_now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		struct pollfd p[2] = {
			{ .fd = fd, .events = POLLIN },
			{ .fd = cancel_fd, .events = POLLIN },
		};
		uint64_t now = ferry_now_ms();
		ssize_t n = recv(fd, buf, len, MSG_PEEK | MSG_DONTWAIT);

		if (n == (ssize_t)len)
			return 0;
		if (n == 0)
			return -ECONNRESET;
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		if (now >= deadline)
			return -ETIMEDOUT;
		/* Fewer bytes than wanted: poll says "readable" at once, so
		 * wait a little between looks rather than spin. */
		if (n > 0)
			usleep(1000);
		else if (poll(p, 2, (int)(deadline - now)) < 0 && errno != EINTR)
			return -errno;
		if (p[1].revents)
			return -ECANCELED;
	}
}

void net_conn_init(struct net_conn *c, int fd)
{
	c->fd = fd;
	c->ssl = NULL;
}

int net_conn_start_tls(struct net_conn *c, struct tls_ctx *tls,
		       const char *host, int timeout_ms, struct ferry_error *err)
{
	int rc;

	if (!tls)
		return 0;
	rc = tls_handshake(tls, c->fd, host, timeout_ms, &c->ssl, err);
	if (rc)
		return rc;
	/* The control exchanges below poll, then read what is there. */
	fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
	return 0;
}

void net_conn_close(struct net_conn *c)
{
	if (c->ssl)
		SSL_free(c->ssl);
	if (c->fd >= 0)
		close(c->fd);
	c->ssl = NULL;
	c->fd = -1;
}

bool net_conn_pending(const struct net_conn *c)
{
	return c->ssl && SSL_pending(c->ssl) > 0;
}

/*
 * One read or write step: > 0 bytes moved, 0 for "poll for @*events and
 * retry", -ECONNRESET at EOF, or another -errno.
 */
static __thread char tls_why[128];

/* SSL_write() without SIGPIPE (see tls_sigpipe_block). */
static int ssl_write_nosigpipe(SSL *ssl, const void *buf, int len)
{
	struct tls_sigpipe g;
	int r;

	tls_sigpipe_block(&g);
	r = SSL_write(ssl, buf, len);
	tls_sigpipe_restore(&g);
	return r;
}

static ssize_t conn_io(struct net_conn *c, bool wr, void *buf, size_t len,
		       short *events)
{
	ssize_t n;

	if (c->ssl) {
		int r = wr ? ssl_write_nosigpipe(c->ssl, buf, (int)len) :
			     SSL_read(c->ssl, buf, (int)len);
		int e;

		if (r > 0)
			return r;
		e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			*events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
			return 0;
		}
		if (e == SSL_ERROR_ZERO_RETURN)
			return -ECONNRESET;
		if (e == SSL_ERROR_SYSCALL && !ERR_peek_error())
			return errno && r < 0 ? -errno : -ECONNRESET;
		snprintf(tls_why, sizeof(tls_why), "%s",
			 tls_last_error("bad record"));
		return -EPROTO;
	}
	*events = wr ? POLLOUT : POLLIN;
	n = wr ? send(c->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) :
		 recv(c->fd, buf, len, MSG_DONTWAIT);
	if (n > 0)
		return n;
	if (n == 0)
		return -ECONNRESET;
	return errno == EINTR || errno == EAGAIN ? 0 : -errno;
}

static int conn_full(struct net_conn *c, bool wr, void *buf, size_t len,
		     int timeout_ms, const char *what, struct ferry_error *err)
{
	uint64_t deadline = ferry_now_ms() + (uint64_t)timeout_ms;
	uint8_t *p = buf;
	size_t done = 0;
	short events = wr ? POLLOUT : POLLIN;

	while (done < len) {
		ssize_t n;
		int rc;

		if (!(!wr && net_conn_pending(c))) {
			rc = wait_fd(c->fd, events, deadline);
			if (rc == -ETIMEDOUT)
				return ferry_error_set(err, rc,
					"timed out after %d ms %s %s (%zu of %zu bytes)",
					timeout_ms, wr ? "sending" : "waiting for",
					what, done, len);
			if (rc < 0)
				return ferry_error_set(err, rc, "poll: %s",
						       strerror(-rc));
		}
		n = conn_io(c, wr, p + done, len - done, &events);
		if (n == -ECONNRESET)
			return ferry_error_set(err, -ECONNRESET,
				"peer closed the connection during %s (%zu of %zu bytes)",
				what, done, len);
		if (n == -EPROTO)
			return ferry_error_set(err, -EPROTO, "TLS error during %s: %s",
					       what, tls_why);
		if (n < 0)
			return ferry_error_set(err, (int)n, "%s %s: %s",
					       wr ? "sending" : "reading", what,
					       strerror((int)-n));
		done += (size_t)n;
	}
	return 0;
}

int net_read_full(struct net_conn *c, void *buf, size_t len, int timeout_ms,
		  const char *what, struct ferry_error *err)
{
	return conn_full(c, false, buf, len, timeout_ms, what, err);
}

int net_write_full(struct net_conn *c, const void *buf, size_t len,
		   int timeout_ms, const char *what, struct ferry_error *err)
{
	return conn_full(c, true, (void *)buf, len, timeout_ms, what, err);
}

int net_ctrl_send(struct net_conn *c, uint16_t type, const void *payload,
		  uint32_t len, int timeout_ms, struct ferry_error *err)
{
	uint8_t msg[WIRE_CTRL_HDR_BYTES + WIRE_CTRL_PAYLOAD_MAX];
	struct wire_ctrl_hdr h = { .len = len, .type = type };

	FERRY_ASSERT(len <= WIRE_CTRL_PAYLOAD_MAX);
	wire_ctrl_encode(&h, msg);
	if (len)
		memcpy(msg + WIRE_CTRL_HDR_BYTES, payload, len);
	return net_write_full(c, msg, WIRE_CTRL_HDR_BYTES + len, timeout_ms,
			      wire_ctrl_name(type), err);
}

int net_ctrl_recv(struct net_conn *c, struct wire_ctrl_hdr *hdr,
		  uint8_t *payload, int timeout_ms, struct ferry_error *err)
{
	uint8_t raw[WIRE_CTRL_HDR_BYTES];
	int rc;

	rc = net_read_full(c, raw, sizeof(raw), timeout_ms,
			   "control message", err);
	if (rc < 0)
		return rc;
	rc = wire_ctrl_decode(raw, hdr, err);
	if (rc < 0)
		return rc;
	rc = net_read_full(c, payload, hdr->len, timeout_ms,
			   wire_ctrl_name(hdr->type), err);
	if (rc < 0)
		return rc;
	payload[hdr->len] = '\0';
	return 0;
}
