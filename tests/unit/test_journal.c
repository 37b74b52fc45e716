/*
 * The migration journal: what is written is read back in order, synced
 * lines only; a torn last line (a crash mid-write) is dropped; a file of
 * another version or not a journal is refused; files and directories are
 * private.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/journal.h"
#include "tests/harness/tmpdir.h"

static char dir[64];

static void setup(void)
{
	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-journal"), 0);
}

static void teardown(void)
{
	tmpdir_remove(dir);
}

static void path_of(char *out, size_t len, const char *id, const char *side)
{
	snprintf(out, len, "%s/state/%s/%s.%s.jsonl", dir, JOURNAL_DIR, id, side);
}

START_TEST(write_then_read)
{
	struct ferry_error err = { 0 };
	struct journal *j;
	char state[128], path[256];
	struct stat st;
	json_t *lines;

	snprintf(state, sizeof(state), "%s/state", dir);
	ck_assert_int_eq(journal_open(&j, state, "m1", "source", &err), 0);
	ck_assert_int_eq(journal_step(j, JOURNAL_STARTED,
				      json_pack("{s:s}", "qmp", "/q"), &err), 0);
	ck_assert_int_eq(journal_step(j, JOURNAL_STREAMING, NULL, &err), 0);
	journal_close(j);
	/* Reopened, it appends. */
	ck_assert_int_eq(journal_open(&j, state, "m1", "source", &err), 0);
	ck_assert_int_eq(journal_step(j, JOURNAL_COMPLETED, NULL, &err), 0);
	journal_close(j);

	path_of(path, sizeof(path), "m1", "source");
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	ck_assert_int_eq(stat(state, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0700);
	ck_assert_int_eq(journal_read(path, &lines, &err), 0);
	ck_assert_uint_eq(json_array_size(lines), 3);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 0),
							   "qmp")), "/q");
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 2),
							   "state")), "completed");
	ck_assert(journal_terminal("completed"));
	ck_assert(!journal_terminal("streaming"));
	json_decref(lines);
}
END_TEST

/* A crash mid-write leaves a torn last line: it never happened. */
START_TEST(torn_last_line)
{
	static const char text[] =
		"{\"v\":1,\"state\":\"started\",\"t_ms\":1}\n"
		"{\"v\":1,\"state\":\"streaming\",\"t_ms\":2}\n"
		"{\"v\":1,\"state\":\"swi";
	struct ferry_error err = { 0 };
	char path[256];
	json_t *lines;
	FILE *f;

	snprintf(path, sizeof(path), "%s/torn.jsonl", dir);
	f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	ck_assert_int_eq(journal_read(path, &lines, &err), 0);
	ck_assert_uint_eq(json_array_size(lines), 2);
	json_decref(lines);
}
END_TEST

/* Appending after a torn line cuts it first: the journal stays readable;
 * and one holder at a time. */
START_TEST(append_after_torn_line)
{
	struct ferry_error err = { 0 };
	struct journal *j, *j2;
	char state[128], path[256];
	json_t *lines;
	FILE *f;

	snprintf(state, sizeof(state), "%s/state", dir);
	ck_assert_int_eq(journal_open(&j, state, "m2", "destination", &err), 0);
	ck_assert_int_eq(journal_step(j, JOURNAL_STARTED, NULL, &err), 0);
	ck_assert_int_eq(journal_open(&j2, state, "m2", "destination", &err),
			 -EBUSY);
	journal_close(j);
	path_of(path, sizeof(path), "m2", "destination");
	f = fopen(path, "a");
	fputs("{\"v\":1,\"sta", f);
	fclose(f);
	ck_assert_int_eq(journal_open(&j, state, "m2", "destination", &err), 0);
	ck_assert_int_eq(journal_step(j, JOURNAL_RECOVERED, NULL, &err), 0);
	journal_close(j);
	ck_assert_int_eq(journal_read(path, &lines, &err), 0);
	ck_assert_uint_eq(json_array_size(lines), 2);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 1),
							   "state")), "recovered");
	json_decref(lines);
}
END_TEST

START_TEST(not_a_journal)
{
	struct ferry_error err = { 0 };
	char path[256];
	json_t *lines;
	FILE *f;

	snprintf(path, sizeof(path), "%s/v2.jsonl", dir);
	f = fopen(path, "w");
	fputs("{\"v\":2,\"state\":\"started\",\"t_ms\":1}\n", f);
	fclose(f);
	ck_assert_int_eq(journal_read(path, &lines, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "version 1"), "%s", err.msg);
	f = fopen(path, "w");
	fputs("hello\n", f);
	fclose(f);
	ck_assert_int_eq(journal_read(path, &lines, &err), -EINVAL);
	ck_assert_int_eq(journal_read("/nonexistent/x.jsonl", &lines, &err),
			 -ENOENT);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("journal");
	TCase *tc = tcase_create("journal");
	SRunner *sr;
	int failed;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, write_then_read);
	tcase_add_test(tc, torn_last_line);
	tcase_add_test(tc, append_after_torn_line);
	tcase_add_test(tc, not_a_journal);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
