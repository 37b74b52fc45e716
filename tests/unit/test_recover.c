/*
 * ferry_recover()'s edge, without QEMU: nothing recorded is nothing to
 * do; a file that is not a journal is a failure said to the callback
 * (and the others are still looked at); a journal a live ferry holds is
 * left alone; a migration whose QEMU does not answer is left for a
 * person, and looked at again next time.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/journal.h"
#include "ferry.h"
#include "tests/harness/tmpdir.h"

static char dir[64];

static void setup(void)
{
	ck_assert_int_eq(tmpdir_make(dir, sizeof(dir), "ferry-recover"), 0);
}

static void teardown(void)
{
	tmpdir_remove(dir);
}

/* What the callback heard: the last call's, copied. */
struct heard {
	int calls;
	char id[80], side[16], outcome[FERRY_ERROR_MSG_MAX];
	int error;
	bool needs_person;
};

static void hear(const struct ferry_recovery *r, void *opaque)
{
	struct heard *h = opaque;

	ck_assert_uint_ge(r->size, sizeof(*r));
	h->calls++;
	snprintf(h->id, sizeof(h->id), "%s", r->id ? r->id : "(null)");
	snprintf(h->side, sizeof(h->side), "%s", r->side ? r->side : "(null)");
	snprintf(h->outcome, sizeof(h->outcome), "%s", r->outcome);
	h->error = r->error;
	h->needs_person = r->needs_person;
}

static int recover(struct heard *h, struct ferry_error *err)
{
	struct ferry_recover_opts o = { .state_dir = dir, .each = hear,
					.opaque = h };

	memset(h, 0, sizeof(*h));
	*err = (struct ferry_error){ 0 };
	return ferry_recover(&o, err);
}

/* A source's journal of migration @id that got as far as streaming. */
static void journal_of(const char *id, struct journal **j)
{
	struct ferry_error err = { 0 };

	ck_assert_int_eq(journal_open(j, dir, id, "source", &err), 0);
	ck_assert_int_eq(journal_step(*j, JOURNAL_STARTED, json_pack(
		"{s:s,s:s,s:s,s:b}", "id", id, "side", "source", "qmp",
		"/dev/null/ferry-test.qmp", "was_running", 1), &err), 0);
	ck_assert_int_eq(journal_step(*j, JOURNAL_STREAMING, NULL, &err), 0);
}

START_TEST(nothing_recorded)
{
	struct ferry_recover_opts o = { 0 };
	struct ferry_error err;
	struct heard h;

	ck_assert_int_eq(recover(&h, &err), 0);
	ck_assert_int_eq(h.calls, 0);
	/* No state directory at all: an option missing. */
	ck_assert_int_eq(ferry_recover(&o, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "needs the state directory"));
}
END_TEST

START_TEST(not_a_journal)
{
	char path[128];
	struct ferry_error err;
	struct heard h;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, JOURNAL_DIR);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/%s/x.source.jsonl", dir, JOURNAL_DIR);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs("not json\n", f);
	fclose(f);
	ck_assert_int_eq(recover(&h, &err), -EINVAL);
	ck_assert_int_eq(h.calls, 1);
	ck_assert_int_eq(h.error, -EINVAL);
	ck_assert_str_eq(h.id, "(null)");
	ck_assert_str_eq(h.outcome, err.msg);
	ck_assert_ptr_nonnull(strstr(h.outcome, "x.source.jsonl"));
}
END_TEST

START_TEST(held_then_unanswered)
{
	struct ferry_error err;
	struct journal *j;
	struct heard h;

	journal_of("m1", &j);
	/* Its ferry lives (holds the journal): left alone. */
	ck_assert_int_eq(recover(&h, &err), 0);
	ck_assert_int_eq(h.calls, 1);
	ck_assert_str_eq(h.id, "m1");
	ck_assert_str_eq(h.side, "source");
	ck_assert_ptr_nonnull(strstr(h.outcome, "in progress"));
	ck_assert(!h.needs_person);
	/* It died; its QMP socket is there but does not answer (ENOTDIR
	 * here: not "gone", which qmp_connect waits out): a person decides. */
	journal_close(j);
	ck_assert_msg(recover(&h, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(h.calls, 1);
	ck_assert_int_eq(h.error, 0);
	ck_assert(h.needs_person);
	ck_assert_msg(strstr(h.outcome, "does not answer"), "%s", h.outcome);
	/* Not marked recovered: the next run looks at it again. */
	ck_assert_int_eq(recover(&h, &err), 0);
	ck_assert_int_eq(h.calls, 1);
	ck_assert(h.needs_person);
}
END_TEST

/* An option of a later header, set: refused, not half understood. */
START_TEST(later_options)
{
	struct {
		struct ferry_recover_opts o;
		char later[8];
	} big;
	struct ferry_error err = { 0 };

	memset(&big, 0, sizeof(big));
	big.o.state_dir = dir;
	big.later[0] = 1;
	ck_assert_int_eq(ferry_recover_sized(&big.o, sizeof(big), &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "does not know an option"));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("recover");
	TCase *tc = tcase_create("edge");
	SRunner *sr;
	int failed;

	ferry_set_log(NULL, NULL, FERRY_LOG_ERROR);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, nothing_recorded);
	tcase_add_test(tc, not_a_journal);
	tcase_add_test(tc, held_then_unanswered);
	tcase_add_test(tc, later_options);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
