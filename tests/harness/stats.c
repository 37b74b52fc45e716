/* Benchmark helpers (see stats.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common/util.h"
#include "stats.h"
#include "transport/codec.h"
#include "transport/tunnel.h"

extern char **environ;

/*
 * The machine probe's limits. The mixed buffer is big enough that the
 * compressors' speed is not a cache's; each measurement also stops after
 * STATS_PROBE_MAX_NS of CPU, so that the probe stays under about 2 s
 * even on a slow machine (its 4 measurements and zstd's 2 warm-ups, plus
 * filling the buffer).
 */
#define STATS_PROBE_BYTES (64u << 20)
#define STATS_PROBE_MAX_NS (300 * 1000000ull)
#define STATS_PROBE_PAGE 4096u
#define STATS_AES_RECORD (16u << 10)	/* a full TLS record */
#define STATS_AES_BYTES (1024u << 20)
/* A command the probe runs (git, QEMU --version) gets this long. */
#define STATS_CMD_TIMEOUT_MS 5000

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

uint64_t stats_median(uint64_t *v, uint32_t n)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_u64);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int stats_same_ram_from(const char *dir, struct vm *a, struct vm *b,
			uint64_t from, uint64_t *first_diff,
			struct ferry_error *err)
{
	char pa[256], pb[256];
	int eq;

	snprintf(pa, sizeof(pa), "%s/a.ram", dir);
	snprintf(pb, sizeof(pb), "%s/b.ram", dir);
	eq = vm_pmemsave(a, pa, err);
	if (eq == 0)
		eq = vm_pmemsave(b, pb, err);
	if (eq == 0)
		eq = vm_files_equal_from(pa, pb, from, first_diff, err);
	unlink(pa);
	unlink(pb);
	return eq;
}

int stats_same_ram(const char *dir, struct vm *a, struct vm *b)
{
	struct ferry_error err = { 0 };

	return stats_same_ram_from(dir, a, b, 0, NULL, &err);
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Cut @s at its first newline. */
static void chomp(char *s)
{
	s[strcspn(s, "\r\n")] = '\0';
}

/*
 * Run @argv (looked up in $PATH, stderr discarded) and keep the first line
 * of its stdout in @out. 0, or -1 when it could not run, failed, printed
 * nothing or took longer than STATS_CMD_TIMEOUT_MS (then it is killed).
 */
static int first_line_of(char *const argv[], char *out, size_t len)
{
	uint64_t deadline_ms = ferry_now_ms() + STATS_CMD_TIMEOUT_MS;
	posix_spawn_file_actions_t fa;
	size_t got = 0;
	int fds[2], status = 0, rc = -1;
	pid_t pid;

	out[0] = '\0';
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -1;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
	posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null",
					 O_WRONLY, 0);
	if (posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ))
		goto out_close;
	close(fds[1]);
	fds[1] = -1;
	for (;;) {
		struct pollfd p = { .fd = fds[0], .events = POLLIN };
		int64_t left_ms = (int64_t)(deadline_ms - ferry_now_ms());
		char sink[512];
		ssize_t n;

		if (left_ms <= 0 || poll(&p, 1, (int)left_ms) <= 0) {
			kill(pid, SIGKILL);
			break;
		}
		n = got + 1 < len ? read(fds[0], out + got, len - 1 - got) :
				    read(fds[0], sink, sizeof(sink));
		if (n <= 0)
			break;
		if (got + 1 < len)
			got += (size_t)n;
	}
	out[got] = '\0';
	chomp(out);
	if (waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	    !WEXITSTATUS(status) && out[0])
		rc = 0;
out_close:
	posix_spawn_file_actions_destroy(&fa);
	close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	return rc;
}

static void probe_cpu(struct stats_machine *m)
{
	char line[256];
	FILE *f = fopen("/proc/cpuinfo", "re");

	while (f && fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
			snprintf(m->cpu, sizeof(m->cpu), "%s", strchr(line, ':') + 2);
			chomp(m->cpu);
			break;
		}
	}
	if (f)
		fclose(f);
	m->cores = sysconf(_SC_NPROCESSORS_ONLN);
}

/*
 * ferry's commit: that of the repository the running binary was built in
 * (it lives in build/, inside the work tree), so that it is right from
 * any working directory, with "-dirty" when tracked files were modified.
 */
static void probe_commit(struct stats_machine *m)
{
	char exe[PATH_MAX], dirty[8];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;

	if (n <= 0)
		return;
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	if (!slash)
		return;
	*slash = '\0';
	{
		char *rev[] = { "git", "-C", exe, "rev-parse", "--short", "HEAD", NULL };
		char *st[] = { "git", "-C", exe, "status", "--porcelain",
			       "--untracked-files=no", NULL };

		if (first_line_of(rev, m->ferry_commit, sizeof(m->ferry_commit) - 6))
			return;
		/* status prints nothing (which first_line_of calls a failure)
		 * for a clean tree. */
		if (!first_line_of(st, dirty, sizeof(dirty)))
			strcat(m->ferry_commit, "-dirty");
	}
}

static void probe_system(struct stats_machine *m)
{
	char *qemu[] = { (char *)vm_qemu_binary(), "--version", NULL };
	struct utsname u;
	time_t now = time(NULL);
	struct tm tm;

	probe_cpu(m);
	if (uname(&u) == 0)
		snprintf(m->kernel, sizeof(m->kernel), "%s", u.release);
	first_line_of(qemu, m->qemu, sizeof(m->qemu));
	snprintf(m->ferry_version, sizeof(m->ferry_version), "%s",
		 FERRY_VERSION_STRING);
	probe_commit(m);
	if (gmtime_r(&now, &tm))
		strftime(m->date, sizeof(m->date), "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* A page of words from a small vocabulary: compresses like text does
 * (a few times over with lz4), not like runs of one byte. */
static void fill_text_page(uint8_t *p, uint64_t *seed)
{
	static const char *const words[] = {
		"the", "guest", "memory", "page", "migration", "of", "and",
		"dirty", "bitmap", "to", "vcpu", "kernel", "a", "in", "socket",
		"buffer", "frame", "is", "for", "stream", "qemu", "device",
		"with", "ram", "block", "queue", "on", "write", "read", "state",
		"host", "link",
	};
	size_t at = 0;

	while (at < STATS_PROBE_PAGE) {
		const char *w = words[xorshift(seed) % FERRY_ARRAY_SIZE(words)];
		size_t n = strlen(w);

		if (n > STATS_PROBE_PAGE - at)
			n = STATS_PROBE_PAGE - at;
		memcpy(p + at, w, n);
		at += n;
		if (at < STATS_PROBE_PAGE)
			p[at++] = xorshift(seed) % 11 ? ' ' : '\n';
	}
}

/* Zero, text-like and random pages in turn: a third of each. */
static void fill_mixed(uint8_t *buf)
{
	uint64_t seed = 0x9e3779b97f4a7c15ull;

	for (size_t page = 0; page < STATS_PROBE_BYTES / STATS_PROBE_PAGE; page++) {
		uint8_t *p = buf + page * STATS_PROBE_PAGE;

		if (page % 3 == 0) {
			memset(p, 0, STATS_PROBE_PAGE);
		} else if (page % 3 == 1) {
			fill_text_page(p, &seed);
		} else {
			for (size_t i = 0; i < STATS_PROBE_PAGE; i += 8) {
				uint64_t v = xorshift(&seed);

				memcpy(p + i, &v, 8);
			}
		}
	}
}

/* Compress @buf in frames as the tunnel's sender of one stream does
 * (zstd: one stream, its window, frames that fit after the worst case),
 * into @sp; @out holds codec_bound(TUN_FRAME_BYTES). */
static void measure_codec(struct stats_codec_speed *sp, enum wire_codec codec,
			  int level, const uint8_t *buf, uint8_t *out)
{
	size_t cap = codec_bound(TUN_FRAME_BYTES);
	uint32_t frame = codec == WIRE_CODEC_ZSTD ?
			 codec_zstd_in_max(TUN_FRAME_BYTES) : TUN_FRAME_BYTES;
	uint64_t in = 0, wire = 0, t0;
	struct codec_ctx *c;

	if (codec_ctx_new(&c, level, NULL))
		return;
	codec_ctx_set_window(c, codec_window_log(1));
	/*
	 * Two windows' worth compressed and the stream reset, untimed
	 * (within STATS_PROBE_MAX_NS): the first frame makes its buffers,
	 * as a tunnel's primer does, and the rest warm them. The first pass
	 * over a fresh context's window runs at a third of the speed of the
	 * next ones on this project's machines (240 against 690-750 MB/s for
	 * zstd-1 on this content, with its buffers already faulted in; a
	 * reset keeps the speed), and the machine line's zstd-1, measured
	 * first, came out slower than zstd-3 (210 against 340 MB/s). With one
	 * window's worth first it read 290-315, with two 420-500: what a
	 * tunnel's stream runs at once its first window went.
	 */
	if (codec == WIRE_CODEC_ZSTD) {
		size_t warm = (size_t)2 << codec_window_log(1);
		uint64_t w0 = thread_cpu_ns();

		for (size_t at = 0; at + frame <= warm &&
		     at + frame <= STATS_PROBE_BYTES &&
		     thread_cpu_ns() - w0 < STATS_PROBE_MAX_NS; at += frame)
			codec_compress(c, codec, buf + at, frame, out, cap);
		codec_ctx_reset(c);
	}
	t0 = thread_cpu_ns();
	while (in + frame <= STATS_PROBE_BYTES &&
	       thread_cpu_ns() - t0 < STATS_PROBE_MAX_NS) {
		size_t n = codec_compress(c, codec, buf + in, frame, out, cap);

		wire += n ? n : frame;
		in += frame;
	}
	sp->mb_s = (double)in * 1e3 / (double)(thread_cpu_ns() - t0);
	sp->ratio = (double)in / (double)wire;
	codec_ctx_free(c);
}

/*
 * Encrypt @buf in STATS_AES_RECORD records with AES-128-GCM, each with its
 * own nonce and tag, as TLS does. MB per CPU second, or 0.
 */
static double measure_aes_gcm(const uint8_t *buf, uint8_t *out)
{
	static const uint8_t key[16] = { 0x66, 0x65, 0x72, 0x72, 0x79 };
	uint8_t iv[12] = { 0 }, tag[16];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	uint64_t done = 0, t0, ns;
	double mb_s = 0;
	int n;

	if (!ctx || !EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), NULL, key, iv))
		goto out;
	t0 = thread_cpu_ns();
	while (done < STATS_AES_BYTES &&
	       thread_cpu_ns() - t0 < STATS_PROBE_MAX_NS) {
		const uint8_t *rec = buf + done % STATS_PROBE_BYTES;

		memcpy(iv, &done, sizeof(done));
		if (!EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) ||
		    !EVP_EncryptUpdate(ctx, out, &n, rec, STATS_AES_RECORD) ||
		    !EVP_EncryptFinal_ex(ctx, out + n, &n) ||
		    !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, sizeof(tag), tag))
			goto out;
		done += STATS_AES_RECORD;
	}
	ns = thread_cpu_ns() - t0;
	mb_s = ns ? (double)done * 1e3 / (double)ns : 0;
out:
	EVP_CIPHER_CTX_free(ctx);
	return mb_s;
}

static void probe_speeds(struct stats_machine *m)
{
	static const struct {
		const char *name;
		enum wire_codec codec;
		int level;
	} codecs[STATS_MACHINE_CODECS] = {
		{ "lz4", WIRE_CODEC_LZ4, 0 },
		{ "zstd", WIRE_CODEC_ZSTD, CODEC_ZSTD_LEVEL_DEFAULT },
		{ "zstd", WIRE_CODEC_ZSTD, 3 },	/* its ratio for comparison */
	};
	uint8_t *buf = malloc(STATS_PROBE_BYTES);
	uint8_t *out = malloc(codec_bound(TUN_FRAME_BYTES));

	if (!buf || !out)
		goto out;
	fill_mixed(buf);
	/* First touch of the output buffer is not the compressors' cost. */
	memset(out, 0, codec_bound(TUN_FRAME_BYTES));
	for (int i = 0; i < STATS_MACHINE_CODECS; i++) {
		struct stats_codec_speed *sp = &m->codec[i];

		if (codecs[i].level)
			snprintf(sp->name, sizeof(sp->name), "%s%d",
				 codecs[i].name, codecs[i].level);
		else
			snprintf(sp->name, sizeof(sp->name), "%s", codecs[i].name);
		measure_codec(sp, codecs[i].codec, codecs[i].level, buf, out);
	}
	m->aes_gcm_mb_s = measure_aes_gcm(buf, out);
out:
	free(buf);
	free(out);
}

static struct stats_machine machine;
static pthread_once_t machine_once = PTHREAD_ONCE_INIT;

static void probe_machine(void)
{
	probe_system(&machine);
	probe_speeds(&machine);
}

const struct stats_machine *stats_machine(void)
{
	pthread_once(&machine_once, probe_machine);
	return &machine;
}

void stats_print_machine(FILE *out)
{
	const struct stats_machine *m = stats_machine();

	fprintf(out, "# machine: %s\n", m->cpu);
	fprintf(out, "# cores: %ld\n", m->cores);
	fprintf(out, "# kernel: %s\n", m->kernel);
	fprintf(out, "# qemu: %s\n", m->qemu);
	fprintf(out, "# ferry: %s%s%s\n", m->ferry_version,
		m->ferry_commit[0] ? " " : "", m->ferry_commit);
	fprintf(out, "# date: %s\n", m->date);
	for (int i = 0; i < STATS_MACHINE_CODECS; i++)
		fprintf(out, "# %s: %.0f MB/s, ratio %.2f (one core, mixed "
			"memory, %u KiB frames)\n", m->codec[i].name,
			m->codec[i].mb_s, m->codec[i].ratio, TUN_FRAME_BYTES >> 10);
	fprintf(out, "# aes-128-gcm: %.0f MB/s (one core, OpenSSL EVP, %u KiB "
		"records)\n", m->aes_gcm_mb_s, STATS_AES_RECORD >> 10);
}

json_t *stats_machine_json(void)
{
	const struct stats_machine *m = stats_machine();
	json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:I}",
			      "cpu", m->cpu, "cores", (json_int_t)m->cores,
			      "kernel", m->kernel, "qemu", m->qemu,
			      "ferry_version", m->ferry_version,
			      "ferry_commit", m->ferry_commit, "date", m->date,
			      "aes_128_gcm_mb_s", (json_int_t)(m->aes_gcm_mb_s + 0.5));

	/* Whole MB/s: the run-to-run noise is larger than 1 MB/s. */
	for (int i = 0; o && i < STATS_MACHINE_CODECS; i++) {
		char key[32];

		snprintf(key, sizeof(key), "%s_mb_s", m->codec[i].name);
		json_object_set_new(o, key,
				    json_integer((json_int_t)(m->codec[i].mb_s + 0.5)));
		snprintf(key, sizeof(key), "%s_ratio", m->codec[i].name);
		json_object_set_new(o, key, json_real(m->codec[i].ratio));
	}
	return o;
}

int stats_write_machine_line(FILE *out)
{
	json_t *line = json_pack("{s:o}", "machine", stats_machine_json());
	int rc = -EIO;

	/* Four significant digits: a ratio of 2.038, not 2.0385596546996338. */
	if (line && json_dumpf(line, out, JSON_COMPACT | JSON_REAL_PRECISION(4)) == 0 &&
	    fputc('\n', out) != EOF)
		rc = 0;
	json_decref(line);
	return rc;
}
