/*
 * A minimal receiving-side embedder of libferry: take one migration into
 * the destination QEMU at DST_QMP (started with -incoming defer), then
 * print its report as JSON. Ctrl-C stops it.
 *
 *   cc receive_one.c $(pkg-config --cflags --libs ferry) -o receive_one
 *   ./receive_one DST_QMP HOST PORT
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <ferry.h>

static struct ferry_receiver *rx;

static void on_sigint(int sig)
{
	(void)sig;
	ferry_receiver_stop(rx);	/* async-signal-safe */
}

int main(int argc, char **argv)
{
	struct ferry_receiver_opts o = { 0 };
	struct ferry_error err = { 0 };
	struct ferry_report rep;
	int rc;

	if (argc < 4) {
		fprintf(stderr, "usage: %s DST_QMP HOST PORT\n", argv[0]);
		return 2;
	}
	o.qmp_path = argv[1];
	o.listen_host = argv[2];
	o.listen_port = (uint16_t)atoi(argv[3]);
	o.once = true;
	rx = ferry_receiver_new(&o, &err);
	if (!rx) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	signal(SIGINT, on_sigint);
	/* Listening now: say so, for whoever waits for it. */
	fprintf(stderr, "listening on %s:%u\n", argv[2], ferry_receiver_port(rx));
	rc = ferry_receiver_run(rx, &rep, &err);
	if (rc < 0)
		fprintf(stderr, "receiver: %s\n", err.msg);
	if (rep.status[0])
		ferry_report_write_json(&rep, STDOUT_FILENO);
	ferry_receiver_free(rx);
	return rc == 0 ? 0 : 1;
}
