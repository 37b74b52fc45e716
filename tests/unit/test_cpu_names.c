/*
 * CPU feature names for the pre-check's messages: CPUID bits by QEMU's
 * names, a bit without a name by its word and number, AMD's repeated
 * leaf-1 bits once, names back to their bits, and a full list cut at the
 * buffer's end rather than past it.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu_names.h"

START_TEST(names_by_bit)
{
	ck_assert_str_eq(cpu_feature_name("0x1.0.ECX", 23), "popcnt");
	ck_assert_str_eq(cpu_feature_name("0x7.0.EBX", 5), "avx2");
	ck_assert_str_eq(cpu_feature_name("0x80000001.0.EDX", 29), "lm");
	ck_assert_ptr_null(cpu_feature_name("0x1.0.EDX", 10));	/* reserved */
	ck_assert_ptr_null(cpu_feature_name("0x1.0.EDX", 32));
	ck_assert_ptr_null(cpu_feature_name("0x99.0.EAX", 0));
}
END_TEST

START_TEST(list)
{
	char out[256] = "";

	ck_assert_uint_eq(cpu_feature_list("0x1.0.ECX", (1u << 20) | (1u << 23),
					   out, sizeof(out)), 2);
	ck_assert_uint_eq(cpu_feature_list("0x1.0.EDX", 1u << 10, out,
					   sizeof(out)), 1);
	/* fpu in AMD's word once listed from leaf 1 is not repeated. */
	ck_assert_uint_eq(cpu_feature_list("0x1.0.EDX", 1, out, sizeof(out)), 1);
	ck_assert_uint_eq(cpu_feature_list("0x80000001.0.EDX", 1, out,
					   sizeof(out)), 0);
	ck_assert_str_eq(out, "sse4.2, popcnt, 0x1.0.EDX bit 10, fpu");
}
END_TEST

START_TEST(list_is_bounded)
{
	char out[16] = "";

	cpu_feature_list("0x1.0.EDX", 0xffffffffu, out, sizeof(out));
	ck_assert_uint_lt(strlen(out), sizeof(out));
	ck_assert(!strncmp(out, "fpu, vme, de", 12));
}
END_TEST

START_TEST(bits_by_name)
{
	const char *key;
	unsigned bit;

	ck_assert(cpu_feature_bit("sse4.2", &key, &bit));
	ck_assert_str_eq(key, "0x1.0.ECX");
	ck_assert_uint_eq(bit, 20);
	ck_assert(cpu_feature_bit("fpu", &key, &bit));
	ck_assert_str_eq(key, "0x1.0.EDX");
	ck_assert(!cpu_feature_bit("family", &key, &bit));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cpu_names");
	TCase *tc = tcase_create("cpu_names");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, names_by_bit);
	tcase_add_test(tc, list);
	tcase_add_test(tc, list_is_bounded);
	tcase_add_test(tc, bits_by_name);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
