/*
 * Output as a contract: one migration through the command line, and what
 * it writes validated against the documented schemas (docs/schema/, with
 * Debian's python3-jsonschema): the source's and the receiver's reports,
 * every event (ending with the terminal one), every progress sample. The
 * migration itself is verified as always (RAM the same).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry.h"
#include "tests/harness/pair.h"
#include "tests/harness/proc.h"
#include "tests/harness/tmpdir.h"
#include "tests/harness/vm.h"

static void validate(const char *schema, const char *file, const char *how)
{
	char cmd[512];

	snprintf(cmd, sizeof(cmd), "python3 scripts/validate-json.py "
		 "docs/schema/%s %s %s >&2", schema, file, how);
	ck_assert_msg(system(cmd) == 0, "%s does not follow %s", file, schema);
}

/* The last line of @path. */
static void last_line(const char *path, char *out, size_t len)
{
	FILE *f = fopen(path, "r");
	char line[4096];

	ck_assert_ptr_nonnull(f);
	out[0] = '\0';
	while (fgets(line, sizeof(line), f))
		snprintf(out, len, "%s", line);
	fclose(f);
}

START_TEST(cli_output_follows_the_schemas)
{
	struct ferry_error err = { 0 };
	char dir[64], cmd[2048], f_rep[128], f_rx[128], f_ev[128], f_pr[128];
	char line[4096];
	uint16_t port = proc_free_port();
	struct pair p;
	pid_t rx, mig;

	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-contract"), 0);
	snprintf(f_rep, sizeof(f_rep), "%s/report.json", dir);
	snprintf(f_rx, sizeof(f_rx), "%s/receiver.json", dir);
	snprintf(f_ev, sizeof(f_ev), "%s/events.jsonl", dir);
	snprintf(f_pr, sizeof(f_pr), "%s/progress.jsonl", dir);
	pair_start(&p, &(struct pair_opts){ .mem_mib = 64, .fill = "mix",
					    .ws_mib = 8, .rate_mib_s = 16 });
	snprintf(cmd, sizeof(cmd), "exec %s receive --listen 127.0.0.1:%u "
		 "--qmp %s --once --json > %s", getenv("FERRY_BIN"), port,
		 vm_qmp_path(p.dst), f_rx);
	{
		char *argv[] = { "/bin/sh", "-c", cmd, NULL };

		ck_assert_msg(proc_spawn(argv, NULL, &rx, &err) == 0, "%s", err.msg);
	}
	ck_assert_msg(proc_wait_port(port, 5000, &err) == 0, "%s", err.msg);
	snprintf(cmd, sizeof(cmd), "exec %s migrate --qmp %s --to 127.0.0.1:%u "
		 "--paused --json --events %s --progress json > %s 2> %s",
		 getenv("FERRY_BIN"), vm_qmp_path(p.src), port, f_ev, f_rep, f_pr);
	{
		char *argv[] = { "/bin/sh", "-c", cmd, NULL };

		ck_assert_msg(proc_spawn(argv, NULL, &mig, &err) == 0, "%s", err.msg);
	}
	ck_assert_int_eq(proc_wait(mig), 0);
	ck_assert_int_eq(proc_wait(rx), 0);
	expect_status(p.dst, "paused");
	expect_same_ram(&p);

	validate("report.schema.json", f_rep, "");
	validate("report.schema.json", f_rx, "");
	validate("event.schema.json", f_ev, "--lines --min 2");
	validate("progress.schema.json", f_pr, "--lines --min 1");
	last_line(f_ev, line, sizeof(line));
	ck_assert_msg(strstr(line, "\"event\":\"completed\""), "the events do not "
		      "end with the terminal one: %s", line);
	pair_stop(&p);
	tmpdir_remove(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("contract");
	TCase *tc = tcase_create("schemas");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, cli_output_follows_the_schemas);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
