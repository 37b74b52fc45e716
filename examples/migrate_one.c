/*
 * A minimal source-side embedder of libferry: migrate one QEMU guest to a
 * ferry receiver, with a progress line, Ctrl-C to cancel (the guest runs
 * on), and the final report as JSON.
 *
 *   cc migrate_one.c $(pkg-config --cflags --libs ferry) -o migrate_one
 *   ./migrate_one SRC_QMP HOST PORT [paused]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <ferry.h>

static struct ferry_migration *mig;

static void on_sigint(int sig)
{
	(void)sig;
	ferry_migration_cancel(mig);	/* async-signal-safe */
}

static void progress(const struct ferry_progress *p, void *opaque)
{
	(void)opaque;
	fprintf(stderr, "\r%-10s pass %llu, %llu of %llu MiB sent",
		ferry_phase_name(p->phase), (unsigned long long)p->pass,
		(unsigned long long)(p->ram_transferred_bytes >> 20),
		(unsigned long long)(p->ram_total_bytes >> 20));
}

int main(int argc, char **argv)
{
	struct ferry_migrate_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	int rc;

	if (argc < 4) {
		fprintf(stderr, "usage: %s SRC_QMP HOST PORT [paused]\n", argv[0]);
		return 2;
	}
	fprintf(stderr, "libferry %s\n", ferry_version());
	o.qmp_path = argv[1];
	o.to_host = argv[2];
	o.to_port = (uint16_t)atoi(argv[3]);
	o.paused = argc > 4;
	o.progress = progress;
	mig = ferry_migration_new(&o, &err);
	if (!mig) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	signal(SIGINT, on_sigint);
	rc = ferry_migration_run(mig, &rep, &err);
	fputc('\n', stderr);
	if (rc < 0)
		fprintf(stderr, "migration failed: %s\n", err.msg);
	ferry_report_write_json(&rep, STDOUT_FILENO);
	ferry_migration_free(mig);
	return rc == 0 ? 0 : rep.source_running ? 1 : 3;
}
