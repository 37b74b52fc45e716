/*
 * The names QEMU gives x86 CPUID feature bits (the property names that
 * -cpu MODEL,+NAME takes), for the words a guest's compatibility turns
 * on. Facts from the architecture manuals, spelt as QEMU spells them.
 */
#include <stdio.h>
#include <string.h>

#include "engine/cpu_names.h"

struct cpu_word {
	const char *key;	/* "0xLEAF.SUBLEAF.REG" */
	const char *names[32];
};

static const struct cpu_word words[] = {
	{ "0x1.0.EDX", {
		"fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce",
		"cx8", "apic", NULL, "sep", "mtrr", "pge", "mca", "cmov",
		"pat", "pse36", "pn", "clflush", NULL, "ds", "acpi", "mmx",
		"fxsr", "sse", "sse2", "ss", "ht", "tm", "ia64", "pbe" } },
	{ "0x1.0.ECX", {
		"pni", "pclmulqdq", "dtes64", "monitor", "ds-cpl", "vmx", "smx",
		"est", "tm2", "ssse3", "cid", NULL, "fma", "cx16", "xtpr",
		"pdcm", NULL, "pcid", "dca", "sse4.1", "sse4.2", "x2apic",
		"movbe", "popcnt", "tsc-deadline", "aes", "xsave", NULL, "avx",
		"f16c", "rdrand", "hypervisor" } },
	{ "0x6.0.EAX", { [2] = "arat" } },
	{ "0x7.0.EBX", {
		"fsgsbase", "tsc-adjust", "sgx", "bmi1", "hle", "avx2", NULL,
		"smep", "bmi2", "erms", "invpcid", "rtm", NULL, NULL, "mpx",
		NULL, "avx512f", "avx512dq", "rdseed", "adx", "smap",
		"avx512ifma", "pcommit", "clflushopt", "clwb", "intel-pt",
		"avx512pf", "avx512er", "avx512cd", "sha-ni", "avx512bw",
		"avx512vl" } },
	{ "0x7.0.ECX", {
		NULL, "avx512vbmi", "umip", "pku", NULL, "waitpkg",
		"avx512vbmi2", "shstk", "gfni", "vaes", "vpclmulqdq",
		"avx512vnni", "avx512bitalg", NULL, "avx512-vpopcntdq", NULL,
		"la57", NULL, NULL, NULL, NULL, NULL, "rdpid", NULL,
		"bus-lock-detect", "cldemote", NULL, "movdiri", "movdir64b",
		NULL, "sgxlc", "pks" } },
	{ "0x7.0.EDX", {
		NULL, NULL, "avx512-4vnniw", "avx512-4fmaps", "fsrm", NULL,
		NULL, NULL, "avx512-vp2intersect", NULL, "md-clear", NULL,
		NULL, NULL, "serialize", NULL, "tsx-ldtrk", NULL, NULL,
		"arch-lbr", "ibt", NULL, "amx-bf16", "avx512-fp16", "amx-tile",
		"amx-int8", "spec-ctrl", "stibp", NULL, "arch-capabilities",
		"core-capability", "ssbd" } },
	{ "0x7.1.EAX", { [4] = "avx-vnni", [5] = "avx512-bf16" } },
	{ "0xd.1.EAX", { "xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd" } },
	{ "0x40000001.0.EAX", {
		"kvmclock", "kvm-nopiodelay", "kvm-mmu", "kvmclock",
		"kvm-asyncpf", "kvm-steal-time", "kvm-pv-eoi", "kvm-pv-unhalt",
		NULL, "kvm-pv-tlb-flush", NULL, "kvm-pv-ipi",
		"kvm-poll-control", "kvm-pv-sched-yield", "kvm-asyncpf-int",
		"kvm-msi-ext-dest-id", [24] = "kvmclock-stable-bit" } },
	/* AMD repeats most of leaf 1's EDX here, under the same names. */
	{ "0x80000001.0.EDX", {
		"fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce",
		"cx8", "apic", NULL, "syscall", "mtrr", "pge", "mca", "cmov",
		"pat", "pse36", NULL, NULL, "nx", NULL, "mmxext", "mmx",
		"fxsr", "fxsr-opt", "pdpe1gb", "rdtscp", NULL, "lm", "3dnowext",
		"3dnow" } },
	{ "0x80000001.0.ECX", {
		"lahf-lm", "cmp-legacy", "svm", "extapic", "cr8legacy", "abm",
		"sse4a", "misalignsse", "3dnowprefetch", "osvw", "ibs", "xop",
		"skinit", "wdt", NULL, "lwp", "fma4", "tce", NULL,
		"nodeid-msr", NULL, "tbm", "topoext", "perfctr-core",
		"perfctr-nb" } },
	{ "0x80000007.0.EDX", { [8] = "invtsc" } },
	{ "0x80000008.0.EBX", {
		"clzero", NULL, "xsaveerptr", [9] = "wbnoinvd", [12] = "ibpb",
		[14] = "ibrs", [15] = "amd-stibp", [24] = "amd-ssbd",
		[25] = "virt-ssbd", [26] = "amd-no-ssb" } },
	{ "0x8000000a.0.EDX", {
		"npt", "lbrv", "svm-lock", "nrip-save", "tsc-scale",
		"vmcb-clean", "flushbyasid", "decodeassists", NULL, NULL,
		"pause-filter", NULL, "pfthreshold", "avic", NULL,
		"v-vmsave-vmload", "vgif", [28] = "svme-addr-chk" } },
};

const char *cpu_feature_name(const char *key, unsigned bit)
{
	if (bit >= 32)
		return NULL;
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (!strcmp(words[i].key, key))
			return words[i].names[bit];
	return NULL;
}

bool cpu_feature_bit(const char *name, const char **key, unsigned *bit)
{
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		for (unsigned b = 0; b < 32; b++) {
			if (words[i].names[b] && !strcmp(words[i].names[b], name)) {
				*key = words[i].key;
				*bit = b;
				return true;
			}
		}
	}
	return false;
}

/* Whether @name is already one of @list's comma-separated items. */
static bool listed(const char *list, const char *name)
{
	size_t n = strlen(name);

	for (const char *p = list; (p = strstr(p, name)); p += n)
		if ((p == list || p[-1] == ' ') && (p[n] == ',' || !p[n]))
			return true;
	return false;
}

unsigned cpu_feature_list(const char *key, uint32_t bits, char *out,
			  size_t len)
{
	unsigned added = 0;
	size_t n = strlen(out);

	for (unsigned bit = 0; bit < 32 && n + 1 < len; bit++) {
		const char *name = cpu_feature_name(key, bit);

		if (!(bits & (1u << bit)) || (name && listed(out, name)))
			continue;
		if (name)
			snprintf(out + n, len - n, "%s%s", n ? ", " : "", name);
		else
			snprintf(out + n, len - n, "%s%s bit %u", n ? ", " : "",
				 key, bit);
		n += strlen(out + n);
		added++;
	}
	return added;
}
