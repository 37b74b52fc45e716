/*
 * ferry's test guest: a bare-metal Multiboot kernel that fills its RAM
 * with data of a chosen character, then dirties a working set at a given
 * rate while printing heartbeats on COM1, so that a migration can be
 * measured (bytes on the wire, passes, downtime seen by the guest) and
 * verified (RAM compared byte for byte).
 *
 * Parameters come from the Multiboot command line (QEMU -append):
 *   fill=zero|random|text|mix   what RAM above the image holds (random)
 *   ws=MiB                      working set, at the start of the filled area (0)
 *   rate=MiB/s                  how fast the working set is dirtied; 0: idle (0)
 *   hb=ms                       heartbeat period (10)
 *   seed=N                      PRNG seed, the same seed gives the same RAM (1)
 *   stat=1                      also print "STAT pages=<n>" once a second
 *
 * Serial output, one line each:
 *   BOOT ferry-guest            first thing, before anything can fail
 *   INFO ...                    what was found and chosen (free form)
 *   READY fill_ms=<n> mem_mib=<n>   RAM is filled, dirtying starts
 *   HB <seq> <pages>            every hb ms, seq from 1; pages: working-set
 *                               pages dirtied so far (the guest's work)
 *   ERR <what>                  a fatal error; the guest halts
 *
 * How the data is made (the cost of TCG decides: every guest instruction is
 * translated, so the fill must move many bytes per instruction):
 *   zero    SSE stores of zeros, 64 bytes per loop iteration.
 *   random  a pool of RANDOM_POOL_BYTES from xorshift32, made once; each 4 KiB
 *           page is a slice of the pool at a random offset XORed with a random
 *           16-byte key of its own. Every page is different and no byte
 *           sequence repeats (the key changes per page), so lz4 and zstd find
 *           nothing, whatever their window (zstd --long included), while the
 *           fill runs at the speed of a copy.
 *   text    English-like words and phrases (pattern.c) in a TEXT_POOL_BYTES
 *           pool; each page is a slice at a random offset. lz4 sees ~3.6x.
 *           The pool is larger than lz4's 64 KiB window but not than zstd's
 *           larger windows, so zstd on a whole dump finds repeats that a
 *           per-page compressor would not.
 *   mix     per page, from a hash of its number: 25% zero, 40% text, 35%
 *           random, a rough picture of a real guest's memory.
 *
 * The memory invariant: the word a pass writes into a page is a function of
 * the page and the pass (dirty_value()), and the next pass reads it back
 * before writing its own. A page that arrived stale or damaged after a
 * migration (post-copy included, where nobody can compare RAM) makes the
 * guest print "ERR memory invariant ..." and halt.
 *
 * Time: the TSC, calibrated against PIT channel 2 at boot, so that rates
 * and periods are in real time. PIT channel 0 interrupts at TICK_HZ only to
 * wake the CPU from hlt: an idle guest does not spin, which leaves the
 * host's two cores to QEMU's migration thread and to ferry.
 */
#include <stdint.h>

#include "pattern.h"

#define SERIAL_PORT 0x3f8
#define CMDLINE_MAX 512
#define REGIONS_MAX 32
#define PAGE_SIZE 4096u

/* Largest values accepted on the command line. */
#define WS_MIB_MAX 4096u
#define RATE_MIB_S_MAX 100000u
#define HB_MS_MAX 600000u

/*
 * The pools are carved from the top of RAM, not from .bss, so that the
 * memory they take holds data of the profile's own kind (an unused zeroed
 * pool in .bss made a random dump 4% compressible). The extra PAGE_SIZE
 * lets a slice start anywhere in the pool.
 */
#define RANDOM_POOL_BYTES (1u << 20)
#define TEXT_POOL_BYTES (4u << 20)

/* PIT input clock, Hz, and the two calibration windows, ms (< 54 each, the
 * PIT's 16-bit limit). */
#define PIT_HZ 1193182u
#define CAL_SHORT_MS 10u
#define CAL_LONG_MS 50u
#define CAL_TRIES 5u
/* Polls of port 0x61 before calibration gives up (~seconds under TCG). */
#define CAL_POLLS_MAX 100000000u
#define TICK_HZ 1000u

/* Pages dirtied in one go before heartbeats are checked again. */
#define DIRTY_BATCH_MAX 4096u
/* Pages dirtied between two TLB flushes (see flush_tlb()). */
#define DIRTY_FLUSH_PAGES 64u
/* A guest that cannot keep up drops work older than this, in ms. */
#define DIRTY_BACKLOG_MS 50u
#define STAT_PERIOD_MS 1000u

/* Percent of pages of each class in the mix profile. */
#define MIX_ZERO_PCT 25u
#define MIX_TEXT_PCT 40u

enum fill_kind { FILL_ZERO, FILL_RANDOM, FILL_TEXT, FILL_MIX };
enum page_class { PAGE_ZERO, PAGE_TEXT, PAGE_RANDOM };

struct region {
	uint32_t base, end;	/* page aligned, end exclusive */
};

struct params {
	enum fill_kind fill;
	uint32_t ws_mib, rate_mib_s, hb_ms, seed, stat;
};

/* Multiboot v1 information, only the fields used here. */
struct mb_info {
	uint32_t flags;
	uint32_t mem_lower, mem_upper;
	uint32_t boot_device;
	uint32_t cmdline;
	uint32_t mods_count, mods_addr;
	uint32_t syms[4];
	uint32_t mmap_length, mmap_addr;
} __attribute__((packed));

struct mb_mmap {
	uint32_t size;	/* of the rest of the entry */
	uint64_t addr, len;
	uint32_t type;
} __attribute__((packed));

#define MB_INFO_MEM (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)
#define MB_INFO_MMAP (1u << 6)
#define MB_MMAP_RAM 1

struct idt_entry {
	uint16_t off_lo, sel;
	uint8_t zero, type;
	uint16_t off_hi;
} __attribute__((packed));

extern char _end[];
extern void timer_isr(void);
extern void exc_isr(void);
extern void spurious_isr(void);
void fill_zero(void *dst, uint32_t bytes);
void fill_xor_copy(void *dst, const void *src, uint32_t bytes,
		   const uint32_t key[4]);
void guest_main(uint32_t mbi_addr);
void guest_fault(void);
void *memset(void *s, int c, uint32_t n);
void *memcpy(void *d, const void *s, uint32_t n);

volatile uint32_t timer_ticks;

static struct params par = { FILL_RANDOM, 0, 0, 10, 1, 0 };
static char cmdline[CMDLINE_MAX];
static struct region regions[REGIONS_MAX];
static uint32_t n_regions;
static uint32_t ram_total_mib;
static uint32_t tsc_per_ms;
static struct idt_entry idt[48];
static uint8_t *random_pool, *text_pool;

/* gcc may emit calls to these even in freestanding code. */
void *memset(void *s, int c, uint32_t n)
{
	uint8_t *p = s;

	while (n--)
		*p++ = (uint8_t)c;
	return s;
}

void *memcpy(void *d, const void *s, uint32_t n)
{
	uint8_t *dp = d;
	const uint8_t *sp = s;

	while (n--)
		*dp++ = *sp++;
	return d;
}

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint64_t rdtsc(void)
{
	uint64_t v;

	__asm__ volatile("rdtsc" : "=A"(v));
	return v;
}

/* 64 by 32 bit division without libgcc's __udivdi3: two divl steps. */
static uint64_t udiv64(uint64_t n, uint32_t d)
{
	uint32_t hi = (uint32_t)(n >> 32), lo = (uint32_t)n;
	uint32_t q_hi = hi / d, r = hi % d, q_lo;

	__asm__("divl %4" : "=a"(q_lo), "=d"(r) : "a"(lo), "d"(r), "rm"(d));
	return ((uint64_t)q_hi << 32) | q_lo;
}

static void serial_init(void)
{
	outb(SERIAL_PORT + 1, 0x00);	/* no interrupts */
	outb(SERIAL_PORT + 3, 0x80);	/* DLAB */
	outb(SERIAL_PORT + 0, 0x01);	/* 115200 baud */
	outb(SERIAL_PORT + 1, 0x00);
	outb(SERIAL_PORT + 3, 0x03);	/* 8N1 */
	outb(SERIAL_PORT + 2, 0xc7);	/* FIFO on */
}

static void putc_serial(char c)
{
	/* QEMU's UART is always ready; a real one would need the wait. */
	while (!(inb(SERIAL_PORT + 5) & 0x20))
		;
	outb(SERIAL_PORT, (uint8_t)c);
}

static void puts_serial(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

static void put_u32(uint32_t v)
{
	char buf[11];
	int i = 10;

	buf[i] = '\0';
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts_serial(&buf[i]);
}

static void put_kv(const char *key, uint32_t v)
{
	puts_serial(key);
	put_u32(v);
}

static __attribute__((noreturn)) void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

static __attribute__((noreturn)) void fatal(const char *what, const char *arg)
{
	puts_serial("ERR ");
	puts_serial(what);
	if (arg) {
		puts_serial(": ");
		puts_serial(arg);
	}
	putc_serial('\n');
	halt_forever();
}

/* Called by exc_isr for any CPU exception: a bug in this guest. */
void guest_fault(void)
{
	fatal("cpu exception", 0);
}

static int str_eq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

/* Decimal u32; returns 0 on success, -1 on garbage or overflow. */
static int parse_u32(const char *s, uint32_t max, uint32_t *out)
{
	uint32_t v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		if (v > (max - (uint32_t)(*s - '0')) / 10)
			return -1;
		v = v * 10 + (uint32_t)(*s - '0');
	}
	*out = v;
	return 0;
}

static void parse_fill(const char *v)
{
	if (str_eq(v, "zero"))
		par.fill = FILL_ZERO;
	else if (str_eq(v, "random"))
		par.fill = FILL_RANDOM;
	else if (str_eq(v, "text"))
		par.fill = FILL_TEXT;
	else if (str_eq(v, "mix"))
		par.fill = FILL_MIX;
	else
		fatal("unknown fill (zero, random, text, mix)", v);
}

static void parse_param(char *tok)
{
	static const struct {
		const char *key;
		uint32_t *val, max;
	} nums[] = {
		{ "ws", &par.ws_mib, WS_MIB_MAX },
		{ "rate", &par.rate_mib_s, RATE_MIB_S_MAX },
		{ "hb", &par.hb_ms, HB_MS_MAX },
		{ "seed", &par.seed, 0xffffffffu },
		{ "stat", &par.stat, 1 },
	};
	char *eq = tok;

	while (*eq && *eq != '=')
		eq++;
	/* QEMU puts the kernel's path first; words without '=' are ignored. */
	if (!*eq || tok[0] == '/')
		return;
	*eq = '\0';
	if (str_eq(tok, "fill")) {
		parse_fill(eq + 1);
		return;
	}
	for (uint32_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		if (!str_eq(tok, nums[i].key))
			continue;
		if (parse_u32(eq + 1, nums[i].max, nums[i].val) < 0)
			fatal("bad number for", tok);
		return;
	}
	fatal("unknown parameter", tok);
}

/* The command line lives above the image, in memory the fill overwrites:
 * copy it first. */
static void parse_cmdline(const struct mb_info *mbi)
{
	const char *src;
	uint32_t n = 0;
	char *p;

	if (!(mbi->flags & MB_INFO_CMDLINE))
		return;
	src = (const char *)mbi->cmdline;
	while (src[n] && n < CMDLINE_MAX - 1) {
		cmdline[n] = src[n];
		n++;
	}
	if (src[n])
		fatal("command line too long", 0);
	cmdline[n] = '\0';
	p = cmdline;
	while (*p) {
		char *tok;

		while (*p == ' ')
			p++;
		tok = p;
		while (*p && *p != ' ')
			p++;
		if (*p)
			*p++ = '\0';
		if (*tok)
			parse_param(tok);
	}
	if (par.hb_ms == 0)
		fatal("hb must be at least 1 ms", 0);
}

static void add_region(uint64_t base, uint64_t len, uint32_t floor)
{
	uint64_t end = base + len, top = 0xfffff000u;

	ram_total_mib += (uint32_t)(len >> 20);
	if (base < floor)
		base = floor;
	if (end > top)
		end = top;
	base = (base + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
	end &= ~(uint64_t)(PAGE_SIZE - 1);
	if (end <= base)
		return;
	if (n_regions == REGIONS_MAX)
		fatal("too many memory regions", 0);
	regions[n_regions].base = (uint32_t)base;
	regions[n_regions].end = (uint32_t)end;
	n_regions++;
}

/* RAM above our image, from the Multiboot memory map (or mem_upper). */
static void find_ram(const struct mb_info *mbi)
{
	uint32_t floor = ((uint32_t)_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);

	if (mbi->flags & MB_INFO_MMAP) {
		uint32_t p = mbi->mmap_addr, end = p + mbi->mmap_length;

		while (p < end) {
			const struct mb_mmap *e = (const struct mb_mmap *)p;

			if (e->type == MB_MMAP_RAM)
				add_region(e->addr, e->len, floor);
			p += e->size + sizeof(e->size);
		}
	} else if (mbi->flags & MB_INFO_MEM) {
		add_region(0x100000u, (uint64_t)mbi->mem_upper << 10, floor);
	} else {
		fatal("no memory information from the loader", 0);
	}
	if (n_regions == 0)
		fatal("no RAM above the image", 0);
}

/* TSC ticks during @ms of PIT channel 2 (one-shot, gate on port 0x61). */
static uint64_t tsc_ticks_in(uint32_t ms)
{
	uint32_t count = PIT_HZ / 1000 * ms, polls = 0;
	uint64_t t0;
	uint8_t v = inb(0x61);

	outb(0x61, (uint8_t)((v & ~0x02) | 0x01));	/* gate on, speaker off */
	outb(0x43, 0xb0);			/* ch 2, lo/hi, mode 0 */
	outb(0x42, (uint8_t)count);
	outb(0x42, (uint8_t)(count >> 8));
	t0 = rdtsc();
	while (!(inb(0x61) & 0x20)) {
		if (++polls == CAL_POLLS_MAX)
			fatal("PIT channel 2 never fired; cannot calibrate the TSC", 0);
	}
	return rdtsc() - t0;
}

/*
 * Under TCG each port read takes tens of microseconds, so one window
 * overshoots by a fixed latency (0.4% of 20 ms, measured as a dirty rate
 * 0.4% low). The difference of a long and a short window cancels it.
 */
static void calibrate_tsc(void)
{
	uint64_t short_ticks = 0, long_ticks = 0;

	/* A busy host can keep the vCPU from seeing the short window end for
	 * longer than the long one lasts ("TSC does not advance" in a CI run
	 * with both cores busy): measure both again, a few times. */
	for (unsigned int i = 0; i < CAL_TRIES && long_ticks <= short_ticks; i++) {
		short_ticks = tsc_ticks_in(CAL_SHORT_MS);
		long_ticks = tsc_ticks_in(CAL_LONG_MS);
	}
	if (long_ticks <= short_ticks)
		fatal("TSC does not advance", 0);
	tsc_per_ms = (uint32_t)udiv64(long_ticks - short_ticks,
				      CAL_LONG_MS - CAL_SHORT_MS);
}

static void set_gate(int vec, void (*fn)(void))
{
	uint32_t a = (uint32_t)fn;

	idt[vec].off_lo = (uint16_t)a;
	idt[vec].sel = 0x08;
	idt[vec].zero = 0;
	idt[vec].type = 0x8e;	/* present, ring 0, 32-bit interrupt gate */
	idt[vec].off_hi = (uint16_t)(a >> 16);
}

/* PIC remapped to vectors 0x20-0x2f with only IRQ0 unmasked; PIT channel 0
 * at TICK_HZ. Interrupts stay off except inside idle(). */
static void timer_init(void)
{
	struct {
		uint16_t limit;
		uint32_t base;
	} __attribute__((packed)) desc = { sizeof(idt) - 1, (uint32_t)idt };
	uint32_t div = PIT_HZ / TICK_HZ;
	int i;

	for (i = 0; i < 32; i++)
		set_gate(i, exc_isr);
	for (i = 32; i < 48; i++)
		set_gate(i, spurious_isr);
	set_gate(32, timer_isr);
	__asm__ volatile("lidt %0" : : "m"(desc));

	outb(0x20, 0x11);
	outb(0xa0, 0x11);
	outb(0x21, 0x20);
	outb(0xa1, 0x28);
	outb(0x21, 0x04);
	outb(0xa1, 0x02);
	outb(0x21, 0x01);
	outb(0xa1, 0x01);
	outb(0x21, 0xfe);
	outb(0xa1, 0xff);

	outb(0x43, 0x34);	/* ch 0, lo/hi, mode 2 (rate generator) */
	outb(0x40, (uint8_t)div);
	outb(0x40, (uint8_t)(div >> 8));
}

/* Sleep until the next interrupt; sti's one-instruction shadow makes
 * "sti; hlt" atomic, so a tick cannot slip in between. */
static inline void idle(void)
{
	__asm__ volatile("sti; hlt; cli" ::: "memory");
}

/*
 * QEMU 7.2's TCG loses guest writes during a migration: its dirty-bitmap
 * sync (the fast path of cpu_physical_memory_sync_dirty_bitmap) clears the
 * migration dirty bits without resetting the softmmu TLB, so a page that
 * stays in the TLB across a sync (our stack, our variables) is written
 * without being marked dirty again, and the destination gets a stale copy.
 * Later QEMU resets the TLB there. Flushing our TLB (toggling CR0.WP makes
 * TCG flush it) before every burst of work and before sleeping means every
 * write goes through a fresh TLB entry, which TCG tracks. What remains is
 * a sync landing inside a burst (tens of microseconds per millisecond) just
 * before the final stop: 16 of 16 QEMU-to-QEMU migrations of a guest dirtying
 * 32 MiB/s gave identical RAM (0 of 3 without the flushes).
 */
static inline void flush_tlb(void)
{
	uint32_t cr0;

	__asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
	__asm__ volatile("mov %0, %%cr0" : : "r"(cr0 ^ 0x10000u) : "memory");
	__asm__ volatile("mov %0, %%cr0" : : "r"(cr0) : "memory");
}

static enum page_class mix_class(uint32_t addr)
{
	uint32_t h = pattern_hash((addr / PAGE_SIZE) ^ rng_seed(par.seed)) % 100;

	if (h < MIX_ZERO_PCT)
		return PAGE_ZERO;
	if (h < MIX_ZERO_PCT + MIX_TEXT_PCT)
		return PAGE_TEXT;
	return PAGE_RANDOM;
}

static enum page_class page_class(uint32_t addr)
{
	switch (par.fill) {
	case FILL_ZERO:
		return PAGE_ZERO;
	case FILL_TEXT:
		return PAGE_TEXT;
	case FILL_RANDOM:
		return PAGE_RANDOM;
	default:
		return mix_class(addr);
	}
}

static void fill_page(uint32_t addr, enum page_class cls, uint32_t *rng)
{
	static const uint32_t no_key[4];
	uint32_t key[4], off;

	switch (cls) {
	case PAGE_ZERO:
		fill_zero((void *)addr, PAGE_SIZE);
		break;
	case PAGE_TEXT:
		off = rng_next(rng) % TEXT_POOL_BYTES & ~63u;
		fill_xor_copy((void *)addr, text_pool + off, PAGE_SIZE, no_key);
		break;
	case PAGE_RANDOM:
		off = rng_next(rng) % RANDOM_POOL_BYTES & ~63u;
		key[0] = rng_next(rng);
		key[1] = rng_next(rng);
		key[2] = rng_next(rng);
		key[3] = rng_next(rng);
		fill_xor_copy((void *)addr, random_pool + off, PAGE_SIZE, key);
		break;
	}
}

static void fill_ram(uint32_t *rng)
{
	for (uint32_t r = 0; r < n_regions; r++) {
		if (par.fill == FILL_ZERO) {
			fill_zero((void *)regions[r].base,
				  regions[r].end - regions[r].base);
			continue;
		}
		for (uint32_t a = regions[r].base; a < regions[r].end; a += PAGE_SIZE)
			fill_page(a, page_class(a), rng);
	}
}

/* Take @bytes from the top of the last region, which the fill then skips. */
static uint8_t *carve(uint32_t bytes)
{
	struct region *r = &regions[n_regions - 1];

	if (r->end - r->base < bytes + PAGE_SIZE)
		fatal("not enough RAM for the data pools", 0);
	r->end -= bytes;
	return (uint8_t *)r->end;
}

static void make_pools(uint32_t *rng)
{
	if (par.fill == FILL_RANDOM || par.fill == FILL_MIX) {
		random_pool = carve(RANDOM_POOL_BYTES + PAGE_SIZE);
		pattern_random(random_pool, RANDOM_POOL_BYTES + PAGE_SIZE, rng);
	}
	if (par.fill == FILL_TEXT || par.fill == FILL_MIX) {
		text_pool = carve(TEXT_POOL_BYTES + PAGE_SIZE);
		pattern_text(text_pool, TEXT_POOL_BYTES + PAGE_SIZE, rng);
	}
}

/* The working set: its first ws_pages pages, walked in order, wrapping. */
struct dirtier {
	uint32_t ws_pages, idx, region, addr, pass;
	uint64_t pages;		/* dirtied so far */
};

static void dirtier_init(struct dirtier *d)
{
	uint32_t filled = 0;

	for (uint32_t r = 0; r < n_regions; r++)
		filled += (regions[r].end - regions[r].base) / PAGE_SIZE;
	d->ws_pages = par.ws_mib * (1048576u / PAGE_SIZE);
	if (d->ws_pages > filled) {
		puts_serial("INFO ws clamped to the filled area\n");
		d->ws_pages = filled;
	}
	d->idx = 0;
	d->region = 0;
	d->addr = regions[0].base;
	d->pass = 0;
	d->pages = 0;
}

/* The word pass @pass writes into the page at @addr, of the page's
 * character: a function of both, so a later pass can check it. */
static uint32_t dirty_value(uint32_t addr, uint32_t pass)
{
	uint32_t r = pattern_hash(addr ^ pattern_hash(pass ^ 0x9e3779b9u)) | 1;

	switch (page_class(addr)) {
	case PAGE_TEXT:
		return pattern_text_word(&r);
	case PAGE_RANDOM:
		return rng_next(&r);
	default:
		return 0;
	}
}

static uint32_t page_word(uint32_t pass)
{
	return pass * 4 % PAGE_SIZE;
}

/* Check the previous pass's word of the next page, then write this pass's
 * word: the page keeps its character. */
static void dirty_one(struct dirtier *d)
{
	volatile uint32_t *w;

	if (d->pass > 0) {
		uint32_t want = dirty_value(d->addr, d->pass - 1);

		w = (volatile uint32_t *)(d->addr + page_word(d->pass - 1));
		if (*w != want) {
			puts_serial("ERR memory invariant: page ");
			put_u32(d->addr);
			put_kv(" pass ", d->pass - 1);
			put_kv(" holds ", *w);
			put_kv(" not ", want);
			putc_serial('\n');
			halt_forever();
		}
	}
	w = (volatile uint32_t *)(d->addr + page_word(d->pass));
	*w = dirty_value(d->addr, d->pass);
	d->pages++;
	if (++d->idx == d->ws_pages) {
		d->idx = 0;
		d->region = 0;
		d->addr = regions[0].base;
		d->pass++;
		return;
	}
	d->addr += PAGE_SIZE;
	if (d->addr >= regions[d->region].end)
		d->addr = regions[++d->region].base;
}

static void heartbeat(uint32_t seq, uint64_t pages)
{
	puts_serial("HB ");
	put_u32(seq);
	putc_serial(' ');
	put_u32((uint32_t)pages);
	putc_serial('\n');
}

/*
 * The steady state: dirty pages at the requested rate, in batches of
 * whatever is due, print heartbeats on time, and sleep in between.
 */
static __attribute__((noreturn)) void run(struct dirtier *d)
{
	uint64_t hb_ticks = (uint64_t)tsc_per_ms * par.hb_ms;
	uint64_t stat_ticks = (uint64_t)tsc_per_ms * STAT_PERIOD_MS;
	uint64_t backlog_ticks = (uint64_t)tsc_per_ms * DIRTY_BACKLOG_MS;
	uint64_t page_ticks = 0, now = rdtsc();
	uint64_t next_hb = now + hb_ticks, next_page = now, next_stat = now + stat_ticks;
	uint32_t seq = 0;
	int dirtying = par.rate_mib_s > 0 && d->ws_pages > 0;

	if (dirtying)
		page_ticks = udiv64((uint64_t)tsc_per_ms * 1000,
				    par.rate_mib_s * (1048576u / PAGE_SIZE));
	if (page_ticks == 0)
		page_ticks = 1;
	for (;;) {
		uint32_t batch = 0;

		flush_tlb();
		now = rdtsc();
		if (now >= next_hb) {
			heartbeat(++seq, d->pages);
			next_hb += hb_ticks;
			if (next_hb <= now)	/* fell behind: keep the period */
				next_hb = now + hb_ticks;
		}
		if (par.stat && now >= next_stat) {
			puts_serial("STAT pages=");
			put_u32((uint32_t)d->pages);
			putc_serial('\n');
			next_stat += stat_ticks;
		}
		if (dirtying) {
			if (now > next_page + backlog_ticks)
				next_page = now - backlog_ticks;
			while (next_page <= now && batch < DIRTY_BATCH_MAX) {
				if (batch % DIRTY_FLUSH_PAGES == 0)
					flush_tlb();
				dirty_one(d);
				next_page += page_ticks;
				batch++;
			}
		}
		if (batch < DIRTY_BATCH_MAX && rdtsc() < next_hb) {
			flush_tlb();
			idle();
		}
	}
}

void guest_main(uint32_t mbi_addr)
{
	const struct mb_info *mbi = (const struct mb_info *)mbi_addr;
	struct dirtier d;
	uint32_t rng, fill_ms;
	uint64_t t0;

	serial_init();
	puts_serial("BOOT ferry-guest\n");
	parse_cmdline(mbi);
	find_ram(mbi);
	calibrate_tsc();
	timer_init();

	rng = rng_seed(par.seed);
	t0 = rdtsc();
	make_pools(&rng);
	fill_ram(&rng);
	fill_ms = (uint32_t)udiv64(rdtsc() - t0, tsc_per_ms);
	dirtier_init(&d);

	put_kv("INFO regions=", n_regions);
	put_kv(" fill_base=", regions[0].base);
	put_kv(" ws_pages=", d.ws_pages);
	put_kv(" tsc_khz=", tsc_per_ms);
	putc_serial('\n');
	put_kv("READY fill_ms=", fill_ms);
	put_kv(" mem_mib=", ram_total_mib);
	putc_serial('\n');
	run(&d);
}
