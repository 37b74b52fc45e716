/*
 * Transport benchmark: ferry's tunnel alone (no QEMU) against plain TCP,
 * side by side on loopback in one run.
 *
 * "plain-tcp" is one thread send()ing a buffer over one loopback TCP
 * connection and another recv()ing it: the ceiling of the machine. Each
 * ferry mode moves the same number of bytes from memory on the source side
 * (a pre-generated buffer of the chosen content) through a source tunnel
 * and a destination tunnel to memory on the destination side, with the
 * chosen codec, TLS and number of streams. Modes alternate within each
 * repeat; the summary gives the median MB/s of each and its ratio to
 * plain TCP. Delivered bytes are checked (count, and a checksum with -V).
 *
 * usage: bench_transport [-s MIB_PER_RUN] [-n REPEATS] [-p random|text|mix]
 *                        [-M mode,mode,...] [-V] [-o results.jsonl]
 * modes: plain-tcp none lz4 zstd auto tls tls-auto streams2 streams4
 *        tls-streams2 sock-none sock-splice
 *
 * The sock- modes put sockets at the tunnel's ends, as QEMU's are: a
 * thread send()s the data into one (the source QEMU), another recv()s it
 * from the other (the destination QEMU); sock-splice sets
 * FERRY_TUNNEL_SPLICE: raw frames go by splice, not through ferry's memory.
 *
 * The machine comes first (stats_print_machine(); the results file's
 * first line is the same as JSON). The tables: speed against plain TCP,
 * the tunnel's CPU by stage, and for the TLS modes the encrypt and
 * decrypt stages against OpenSSL's own AES-128-GCM on this machine.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "ferry.h"
#include "tests/harness/pki.h"
#include "tests/harness/stats.h"
#include "transport/net.h"
#include "transport/tls.h"
#include "transport/tunnel.h"

#define BT_MAX_REPEATS 50
#define BT_MAX_MODES 16
#define BT_POOL_BYTES (64u << 20)	/* source content, cycled */
#define BT_CHUNK (1u << 20)

struct mode {
	const char *name;
	bool plain;		/* plain TCP baseline */
	enum ferry_codec codec;
	uint32_t streams;
	bool tls;
	/* The tunnel's local ends are sockets, as QEMU's are: a thread
	 * send()s the data into one, another recv()s it from the other;
	 * @splice: with FERRY_TUNNEL_SPLICE (raw frames by splice). */
	bool sock, splice;
};

static const struct mode all_modes[] = {
	{ "plain-tcp", true, 0, 1, false, false, false },
	{ "none", false, FERRY_CODEC_NONE, 1, false, false, false },
	{ "lz4", false, FERRY_CODEC_LZ4, 1, false, false, false },
	{ "zstd", false, FERRY_CODEC_ZSTD, 1, false, false, false },
	{ "auto", false, FERRY_CODEC_AUTO, 1, false, false, false },
	{ "tls", false, FERRY_CODEC_NONE, 1, true, false, false },
	{ "tls-auto", false, FERRY_CODEC_AUTO, 1, true, false, false },
	{ "streams2", false, FERRY_CODEC_NONE, 2, false, false, false },
	{ "streams4", false, FERRY_CODEC_NONE, 4, false, false, false },
	{ "tls-streams2", false, FERRY_CODEC_NONE, 2, true, false, false },
	{ "sock-none", false, FERRY_CODEC_NONE, 1, false, true, false },
	{ "sock-splice", false, FERRY_CODEC_NONE, 1, false, true, true },
};

static uint8_t *pool;
static uint64_t run_bytes;
static bool verify;
static char pki_dir[64];
static struct tls_ctx *tls_client, *tls_server;

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t cpu_us(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* The test guest's profiles, in spirit: random, text, or a mix of both
 * with some zero pages (QEMU skips zero pages, so few of them). */
static void fill_pool(const char *profile)
{
	static const char words[] = "the quick migration of guest memory "
				    "through ferry carries pages over ";
	uint64_t s = 0x9e3779b97f4a7c15ull;

	for (size_t page = 0; page < BT_POOL_BYTES / 4096; page++) {
		uint8_t *p = pool + page * 4096;
		int kind = !strcmp(profile, "random") ? 0 :
			   !strcmp(profile, "text") ? 1 :
			   (int)(xs(&s) % 10 < 4 ? 0 : xs(&s) % 10 < 9 ? 1 : 2);

		for (size_t i = 0; i < 4096; i += 8) {
			uint64_t v = xs(&s);

			if (kind == 0) {
				memcpy(p + i, &v, 8);
			} else if (kind == 1) {
				for (int k = 0; k < 8; k++)
					p[i + k] = (uint8_t)words[(v >> (k * 6)) %
						   (sizeof(words) - 1) % 23 +
						   (page % 16)];
			} else {
				memset(p + i, v % 64 ? 0 : (int)(v >> 8), 8);
			}
		}
	}
}

static uint64_t fold(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* ---- memory endpoints for the tunnel ---- */

struct mem_src {
	uint64_t off;
};

static ssize_t src_read(void *opaque, void *buf, size_t len)
{
	struct mem_src *m = opaque;
	size_t at = m->off % BT_POOL_BYTES;

	if (m->off >= run_bytes)
		return 0;
	if (len > run_bytes - m->off)
		len = run_bytes - m->off;
	if (len > BT_POOL_BYTES - at)
		len = BT_POOL_BYTES - at;
	memcpy(buf, pool + at, len);
	m->off += len;
	return (ssize_t)len;
}

static int src_write(void *opaque, const void *buf, size_t len)
{
	(void)opaque;
	(void)buf;
	(void)len;
	return -EPROTO;	/* nothing comes back on the return path here */
}

struct mem_sink {
	uint64_t got, hash;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool ended;
};

static ssize_t sink_read(void *opaque, void *buf, size_t len)
{
	struct mem_sink *m = opaque;

	/* The destination's return path: send nothing until the data ended. */
	pthread_mutex_lock(&m->mu);
	while (!m->ended)
		pthread_cond_wait(&m->cv, &m->mu);
	pthread_mutex_unlock(&m->mu);
	(void)buf;
	(void)len;
	return 0;
}

static int sink_write(void *opaque, const void *buf, size_t len)
{
	struct mem_sink *m = opaque;

	if (verify)
		m->hash = fold(m->hash, buf, len);
	m->got += len;
	return 0;
}

static void sink_end(void *opaque)
{
	struct mem_sink *m = opaque;

	pthread_mutex_lock(&m->mu);
	m->ended = true;
	pthread_cond_broadcast(&m->cv);
	pthread_mutex_unlock(&m->mu);
}

static void src_end(void *opaque)
{
	(void)opaque;
}

static uint64_t expected_hash(void)
{
	uint64_t h = 0, off = 0;

	while (off < run_bytes) {
		size_t at = off % BT_POOL_BYTES, n = BT_POOL_BYTES - at;

		if (n > run_bytes - off)
			n = (size_t)(run_bytes - off);
		h = fold(h, pool + at, n);
		off += n;
	}
	return h;
}

/* ---- socket endpoints (the sock- modes): what QEMU does ---- */

struct sock_end {
	int fd;
	uint64_t done, hash;
};

static void *sock_producer(void *p)
{
	struct sock_end *e = p;

	while (e->done < run_bytes) {
		size_t at = e->done % BT_POOL_BYTES, n = BT_CHUNK;
		ssize_t w;

		if (n > run_bytes - e->done)
			n = (size_t)(run_bytes - e->done);
		if (n > BT_POOL_BYTES - at)
			n = BT_POOL_BYTES - at;
		w = send(e->fd, pool + at, n, MSG_NOSIGNAL);
		if (w <= 0)
			break;
		e->done += (uint64_t)w;
	}
	shutdown(e->fd, SHUT_WR);
	return NULL;
}

static void *sock_consumer(void *p)
{
	struct sock_end *e = p;
	uint8_t *buf = malloc(BT_CHUNK);
	ssize_t n;

	while (buf && (n = recv(e->fd, buf, BT_CHUNK, 0)) > 0) {
		if (verify)
			e->hash = fold(e->hash, buf, (size_t)n);
		e->done += (uint64_t)n;
	}
	free(buf);
	/* The destination QEMU closes when its stream ended. */
	shutdown(e->fd, SHUT_RDWR);
	return NULL;
}

/* ---- connections ---- */

static int tcp_pair(int fds[2])
{
	struct ferry_error err = { 0 };
	int lfd = net_listen("127.0.0.1", 0, &err);

	if (lfd < 0)
		return -1;
	fds[0] = net_connect("127.0.0.1", net_local_port(lfd), 2000, &err);
	fds[1] = accept(lfd, NULL, NULL);
	close(lfd);
	return fds[0] >= 0 && fds[1] >= 0 ? 0 : -1;
}

struct hs {
	struct net_conn *c;
	struct tls_ctx *ctx;
	int rc;
	struct ferry_error err;
};

static void *hs_main(void *p)
{
	struct hs *h = p;

	h->rc = net_conn_start_tls(h->c, h->ctx, "127.0.0.1", 5000, &h->err);
	return NULL;
}

static int conn_pair(struct net_conn *a, struct net_conn *b, bool tls)
{
	int fds[2];

	if (tcp_pair(fds))
		return -1;
	net_conn_init(a, fds[0]);
	net_conn_init(b, fds[1]);
	if (tls) {
		struct hs ha = { a, tls_client, 0, { 0 } }, hb = { b, tls_server, 0, { 0 } };
		pthread_t t;

		pthread_create(&t, NULL, hs_main, &hb);
		hs_main(&ha);
		pthread_join(t, NULL);
		if (ha.rc || hb.rc) {
			fprintf(stderr, "TLS: %s %s\n", ha.err.msg, hb.err.msg);
			return -1;
		}
	}
	return 0;
}

/* ---- runs ---- */

struct result {
	double mb_s;
	double cpu_s;
	uint64_t wire;
	double stage_s[TUN_STAGES];	/* both tunnels' CPU by stage */
	bool ok;
};

struct plain_rx {
	int fd;
	uint64_t got;
};

static void *plain_rx_main(void *p)
{
	struct plain_rx *r = p;
	static uint8_t buf[BT_CHUNK];
	ssize_t n;

	while ((n = recv(r->fd, buf, sizeof(buf), 0)) > 0)
		r->got += (uint64_t)n;
	return NULL;
}

static int run_plain(struct result *res)
{
	struct plain_rx rx = { 0 };
	uint64_t t0, c0, off = 0;
	pthread_t t;
	int fds[2];

	if (tcp_pair(fds))
		return -1;
	rx.fd = fds[1];
	c0 = cpu_us();
	t0 = now_us();
	pthread_create(&t, NULL, plain_rx_main, &rx);
	while (off < run_bytes) {
		size_t at = off % BT_POOL_BYTES, n = BT_CHUNK;
		ssize_t w;

		if (n > run_bytes - off)
			n = (size_t)(run_bytes - off);
		w = send(fds[0], pool + at, n, MSG_NOSIGNAL);
		if (w <= 0)
			break;
		off += (uint64_t)w;
	}
	shutdown(fds[0], SHUT_WR);
	pthread_join(t, NULL);
	res->mb_s = (double)rx.got / (double)(now_us() - t0);
	res->cpu_s = (double)(cpu_us() - c0) / 1e6;
	res->wire = rx.got;
	res->ok = rx.got == run_bytes;
	close(fds[0]);
	close(fds[1]);
	return 0;
}

static int run_tunnel(const struct mode *m, struct result *res)
{
	struct net_conn ss[4], ds[4], sr, dr;
	struct mem_src msrc = { 0 };
	struct mem_sink msink = { .mu = PTHREAD_MUTEX_INITIALIZER,
				  .cv = PTHREAD_COND_INITIALIZER };
	struct tun_local lsrc = { src_read, src_write, src_end, &msrc };
	struct tun_local ldst = { sink_read, sink_write, sink_end, &msink };
	struct tun *src = NULL, *dst = NULL;
	struct ferry_error err = { 0 };
	struct tun_stats st;
	struct sock_end prod = { .fd = -1 }, cons = { .fd = -1 };
	pthread_t tprod, tcons;
	int sq[2] = { -1, -1 }, dq[2] = { -1, -1 };
	uint64_t t0, c0, got = 0;
	int rc;

	if (m->sock) {
		struct ferry_error e = { 0 };

		if (net_local_pair(sq, &e) || net_local_pair(dq, &e)) {
			fprintf(stderr, "socketpair: %s\n", e.msg);
			if (sq[0] >= 0) {
				close(sq[0]);
				close(sq[1]);
			}
			return -1;
		}
		prod.fd = sq[0];
		cons.fd = dq[0];
	}
	if (m->splice)
		setenv("FERRY_TUNNEL_SPLICE", "1", 1);
	else
		unsetenv("FERRY_TUNNEL_SPLICE");
	for (uint32_t i = 0; i < m->streams; i++)
		if (conn_pair(&ss[i], &ds[i], m->tls))
			return -1;
	if (conn_pair(&sr, &dr, m->tls))
		return -1;
	{
		struct tun_opts so = { .role = TUN_SOURCE, .local_fd = sq[1],
				       .local = m->sock ? NULL : &lsrc, .streams = ss,
				       .nstreams = m->streams, .ret = sr,
				       .codec = m->codec };
		struct tun_opts dopt = { .role = TUN_DEST, .local_fd = dq[1],
					 .local = m->sock ? NULL : &ldst, .streams = ds,
					 .nstreams = m->streams, .ret = dr,
					 .zstd = m->codec == FERRY_CODEC_ZSTD ||
						 m->codec == FERRY_CODEC_AUTO };

		c0 = cpu_us();
		t0 = now_us();
		if (tun_start(&dst, &dopt, &err) || tun_start(&src, &so, &err)) {
			fprintf(stderr, "tunnel: %s\n", err.msg);
			tun_free(dst);
			return -1;
		}
		if (m->sock) {
			pthread_create(&tcons, NULL, sock_consumer, &cons);
			pthread_create(&tprod, NULL, sock_producer, &prod);
		}
	}
	if (m->sock) {
		pthread_join(tcons, NULL);
		got = cons.done;
	}
	rc = tun_wait(dst, 600000, &err);
	if (!m->sock)
		got = msink.got;
	res->mb_s = (double)got / (double)(now_us() - t0);
	if (rc == 0)
		rc = tun_wait(src, 10000, &err);
	res->cpu_s = (double)(cpu_us() - c0) / 1e6;
	tun_stats(src, &st);
	res->wire = st.wire_out_bytes;
	for (int i = 0; i < TUN_STAGES; i++)
		res->stage_s[i] = (double)st.stage_cpu_ns[i] / 1e9;
	tun_stats(dst, &st);
	for (int i = 0; i < TUN_STAGES; i++)
		res->stage_s[i] += (double)st.stage_cpu_ns[i] / 1e9;
	res->ok = rc == 0 && got == run_bytes &&
		  (!verify || (m->sock ? cons.hash : msink.hash) == expected_hash());
	if (rc)
		fprintf(stderr, "%s: %s\n", m->name, err.msg);
	tun_free(src);
	tun_free(dst);
	if (m->sock) {
		pthread_join(tprod, NULL);
		close(sq[0]);
		close(dq[0]);
	}
	return 0;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, uint32_t n)
{
	qsort(v, n, sizeof(*v), cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The median over @n runs of their CPU seconds in @stage per GiB that
 * went through TLS (the wire bytes: a codec shrinks what is encrypted). */
static double tls_s_per_gib(struct result *runs, uint32_t n, enum tun_stage stage)
{
	double v[BT_MAX_REPEATS];

	for (uint32_t r = 0; r < n; r++)
		v[r] = runs[r].wire ? runs[r].stage_s[stage] * (double)(1u << 30) /
				      (double)runs[r].wire : 0;
	return median(v, n);
}

/*
 * TLS against the hardware's limit: the tunnel's encrypt and decrypt
 * stages next to what OpenSSL's AES-128-GCM costs on one core of this
 * machine (stats_machine()), per GiB. The ratio is the distance to the
 * limit: what the tunnel spends around the cipher (record framing,
 * copies, syscalls charged to the stage) on top of the cipher itself.
 */
static void print_tls_cost(const struct mode **modes, uint32_t nmodes,
			   struct result res[][BT_MAX_REPEATS], uint32_t repeats)
{
	double mb_s = stats_machine()->aes_gcm_mb_s;
	double limit = mb_s > 0 ? (double)(1u << 30) / (mb_s * 1e6) : 0;
	bool header = false;

	for (uint32_t k = 0; k < nmodes; k++) {
		double enc, dec;

		if (!modes[k]->tls)
			continue;
		if (!header) {
			printf("\n| mode | encrypt CPU s per GiB | decrypt CPU s per GiB | "
			       "OpenSSL AES-128-GCM s per GiB | encrypt / OpenSSL | "
			       "decrypt / OpenSSL |\n");
			printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
			header = true;
		}
		enc = tls_s_per_gib(res[k], repeats, TUN_STAGE_ENCRYPT);
		dec = tls_s_per_gib(res[k], repeats, TUN_STAGE_DECRYPT);
		if (limit > 0)
			printf("| %s | %.3f | %.3f | %.3f | %.1f | %.1f |\n",
			       modes[k]->name, enc, dec, limit, enc / limit,
			       dec / limit);
		else
			printf("| %s | %.3f | %.3f | n/a | n/a | n/a |\n",
			       modes[k]->name, enc, dec);
	}
}

/* TLS contexts from certificates made for the run; the files are gone
 * again before this returns (the contexts hold what they need), so no
 * exit leaves them behind. */
static int setup_tls(void)
{
	struct ferry_error err = { 0 };
	struct ferry_tls_opts o = { 0 };
	char cmd[128];
	int rc = 0;

	snprintf(pki_dir, sizeof(pki_dir), "/tmp/ferry-bench-pki.XXXXXX");
	if (!mkdtemp(pki_dir)) {
		perror("mkdtemp");
		return -1;
	}
	o.creds_dir = pki_dir;
	if (pki_generate(pki_dir, NULL, &err)) {
		fprintf(stderr, "pki: %s\n", err.msg);
		rc = -1;
	} else if (tls_ctx_new(&tls_client, &o, false, &err) ||
		   tls_ctx_new(&tls_server, &o, true, &err)) {
		fprintf(stderr, "tls: %s\n", err.msg);
		rc = -1;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", pki_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", pki_dir);
	return rc;
}

int main(int argc, char **argv)
{
	static struct result res[BT_MAX_MODES][BT_MAX_REPEATS];
	const struct mode *modes[BT_MAX_MODES];
	uint32_t nmodes = 0, repeats = 5, mib = 2048;
	const char *profile = "random", *mlist = NULL, *out_path = NULL;
	char path[256];
	FILE *out;
	int opt;
	double base = 0;

	while ((opt = getopt(argc, argv, "s:n:p:M:Vo:")) != -1) {
		switch (opt) {
		case 's': mib = (uint32_t)atoi(optarg); break;
		case 'n': repeats = (uint32_t)atoi(optarg); break;
		case 'p': profile = optarg; break;
		case 'M': mlist = optarg; break;
		case 'V': verify = true; break;
		case 'o': out_path = optarg; break;
		default:
			fprintf(stderr, "usage: %s [-s MIB] [-n REPEATS] "
				"[-p random|text|mix] [-M modes] [-V] [-o file]\n",
				argv[0]);
			return 2;
		}
	}
	if (!repeats || repeats > BT_MAX_REPEATS || !mib)
		return 2;
	run_bytes = (uint64_t)mib << 20;
	if (mlist) {
		char *copy = strdup(mlist);

		for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
			size_t i;

			for (i = 0; i < FERRY_ARRAY_SIZE(all_modes); i++)
				if (!strcmp(tok, all_modes[i].name))
					break;
			if (i == FERRY_ARRAY_SIZE(all_modes) || nmodes == BT_MAX_MODES) {
				fprintf(stderr, "unknown mode %s\n", tok);
				return 2;
			}
			modes[nmodes++] = &all_modes[i];
		}
	} else {
		for (size_t i = 0; i < FERRY_ARRAY_SIZE(all_modes); i++)
			modes[nmodes++] = &all_modes[i];
	}
	pool = aligned_alloc(4096, BT_POOL_BYTES);
	if (!pool)
		return 1;
	fill_pool(profile);
	if (setup_tls())
		return 1;
	if (!out_path) {
		mkdir("bench/results", 0755);
		snprintf(path, sizeof(path), "bench/results/transport-%s-%ld.jsonl",
			 profile, (long)time(NULL));
		out_path = path;
	}
	out = fopen(out_path, "w");
	if (!out) {
		perror(out_path);
		return 1;
	}
	fprintf(stderr, "transport benchmark: %u MiB per run, %s content, "
		"%u repeats, results in %s\n", mib, profile, repeats, out_path);
	stats_print_machine(stdout);
	stats_write_machine_line(out);
	/* One warm-up of each mode, thrown away. */
	for (uint32_t r = 0; r <= repeats; r++) {
		for (uint32_t k = 0; k < nmodes; k++) {
			struct result x = { 0 };
			int rc = modes[k]->plain ? run_plain(&x) : run_tunnel(modes[k], &x);

			if (rc || !x.ok) {
				fprintf(stderr, "%s failed\n", modes[k]->name);
				return 1;
			}
			if (r == 0)
				continue;
			res[k][r - 1] = x;
			fprintf(out, "{\"mode\":\"%s\",\"profile\":\"%s\",\"bytes\":%llu,"
				"\"mb_s\":%.1f,\"cpu_s\":%.3f,\"wire_bytes\":%llu,"
				"\"repeat\":%u}\n", modes[k]->name, profile,
				(unsigned long long)run_bytes, x.mb_s, x.cpu_s,
				(unsigned long long)x.wire, r);
			fflush(out);
			fprintf(stderr, "  %-13s %8.1f MB/s  cpu %.2f s  wire %5.1f%%\n",
				modes[k]->name, x.mb_s, x.cpu_s,
				100.0 * (double)x.wire / (double)run_bytes);
		}
	}
	fclose(out);
	printf("\n| mode | median MB/s | ratio to plain TCP | CPU s per GiB | wire / data |\n");
	printf("| --- | ---: | ---: | ---: | ---: |\n");
	for (uint32_t k = 0; k < nmodes; k++) {
		double v[BT_MAX_REPEATS], c[BT_MAX_REPEATS], w[BT_MAX_REPEATS], mv;

		for (uint32_t r = 0; r < repeats; r++) {
			v[r] = res[k][r].mb_s;
			c[r] = res[k][r].cpu_s;
			w[r] = (double)res[k][r].wire / (double)run_bytes;
		}
		mv = median(v, repeats);
		if (modes[k]->plain)
			base = mv;
		printf("| %s | %.0f | %s%.2f | %.2f | %.3f |\n", modes[k]->name, mv,
		       base ? "" : "n/a ", base ? mv / base : 0,
		       median(c, repeats) * 1024.0 / (double)mib, median(w, repeats));
	}
	/* Where the tunnel's CPU goes: the stages of both sides, CPU seconds
	 * per GiB of data, medians. */
	printf("\n| mode |");
	for (int i = 0; i < TUN_STAGES; i++)
		printf(" %s |", tun_stage_name((enum tun_stage)i));
	printf("\n| --- |");
	for (int i = 0; i < TUN_STAGES; i++)
		printf(" ---: |");
	printf("\n");
	for (uint32_t k = 0; k < nmodes; k++) {
		if (modes[k]->plain)
			continue;
		printf("| %s |", modes[k]->name);
		for (int i = 0; i < TUN_STAGES; i++) {
			double v[BT_MAX_REPEATS];

			for (uint32_t r = 0; r < repeats; r++)
				v[r] = res[k][r].stage_s[i];
			printf(" %.2f |", median(v, repeats) * 1024.0 / (double)mib);
		}
		printf("\n");
	}
	print_tls_cost(modes, nmodes, res, repeats);
	tls_ctx_free(tls_client);
	tls_ctx_free(tls_server);
	free(pool);
	return 0;
}
