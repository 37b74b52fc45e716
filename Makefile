# ferry: plain GNU Make.
#
#   make            libferry.a and build/ferry
#   make check      every test (unit, then integration with real QEMU)
#   make demo       two local VMs, one live-migrated through ferry
#   make bench      the benchmarks (not part of check)
#   make check SANITIZE=1   the same under ASan and UBSan (in build-san/)
#   make check-long the kill matrix (tests/integration/test_crash*) again and
#                   again (LONG_ROUNDS, default 5): the races of a crash
#
# Missing Debian packages are installed by scripts/deps.sh (check, demo).

CC      ?= cc
PKGS    := jansson liburing liblz4 libzstd openssl
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
           -Wstrict-prototypes -Wmissing-prototypes -Wno-format-truncation \
           -fno-strict-aliasing \
           -D_GNU_SOURCE -Iinclude -I. -pthread -MMD -MP
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null || \
             echo -ljansson -luring -llz4 -lzstd -lssl -lcrypto) -pthread
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lm -lrt)

ifeq ($(SANITIZE),1)
B       := build-san
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
else
B       := build
endif

CLI_SRCS  := engine/cli.c engine/cli_config.c
LIB_SRCS  := $(wildcard qmp/*.c transport/*.c) $(filter-out $(CLI_SRCS),$(wildcard engine/*.c))
LIB_OBJS  := $(LIB_SRCS:%.c=$(B)/%.o)
HARN_SRCS := $(filter-out tests/harness/demo.c,$(wildcard tests/harness/*.c))
HARN_OBJS := $(HARN_SRCS:%.c=$(B)/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:%.c=$(B)/%)
INTEG_SRCS := $(wildcard tests/integration/test_*.c)
INTEG_BINS := $(INTEG_SRCS:%.c=$(B)/%)
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRCS:%.c=$(B)/%)

GUEST   := $(B)/guest.elf

.PHONY: all deps check check-long unit integration demo bench headers clean install
all: $(B)/libferry.a $(B)/ferry

deps:
	@sh scripts/deps.sh

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/libferry.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(B)/ferry: $(CLI_SRCS:%.c=$(B)/%.o) $(B)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/libharness.a: $(HARN_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(B)/tests/unit/%: $(B)/tests/unit/%.o $(B)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CHECK_LIBS)

$(B)/tests/integration/%: $(B)/tests/integration/%.o $(B)/libharness.a $(B)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CHECK_LIBS)

$(B)/bench/%: $(B)/bench/%.o $(B)/libharness.a $(B)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/ferry-demo: $(B)/tests/harness/demo.o $(B)/libharness.a $(B)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

-include tests/guest/guest.mk

# The public header must stand on its own in strict C11.
headers:
	@for h in include/*.h; do \
		echo '#include "'$$h'"' | $(CC) -std=c11 -pedantic -Wall -Wextra -Werror \
			-I. -x c -fsyntax-only - || exit 1; \
	done
	@echo "headers: ok"

unit: all headers $(UNIT_BINS)
	@sh scripts/run-tests.sh unit $(UNIT_BINS)

integration: all $(GUEST) $(INTEG_BINS)
	@FERRY_BIN=$(abspath $(B)/ferry) FERRY_GUEST=$(abspath $(GUEST)) \
		sh scripts/run-tests.sh integration $(INTEG_BINS)

check: deps
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

# Every cell of the kill matrix runs in check; a crash lands between
# different instructions each time, so the long run repeats them.
LONG_ROUNDS ?= 5
CRASH_BINS := $(filter $(B)/tests/integration/test_crash%,$(INTEG_BINS))
check-long: deps
	@$(MAKE) --no-print-directory all $(GUEST) $(CRASH_BINS)
	@for i in $$(seq $(LONG_ROUNDS)); do \
		echo "== check-long: round $$i of $(LONG_ROUNDS)"; \
		FERRY_BIN=$(abspath $(B)/ferry) FERRY_GUEST=$(abspath $(GUEST)) \
			sh scripts/run-tests.sh integration $(CRASH_BINS) || exit 1; \
	done

demo: deps
	@$(MAKE) --no-print-directory all $(GUEST) $(B)/ferry-demo
	@FERRY_BIN=$(abspath $(B)/ferry) FERRY_GUEST=$(abspath $(GUEST)) $(B)/ferry-demo

bench: deps
	@$(MAKE) --no-print-directory all $(GUEST) $(BENCH_BINS)
	@echo "benchmarks built in $(B)/bench; see bench/README.md"

# The binary, and the receiving service's systemd unit and example
# configuration (PREFIX, DESTDIR as usual; the library's own install is
# not there yet).
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/ferry
	install -m 0755 $(B)/ferry $(DESTDIR)$(BINDIR)/ferry
	sed 's|@BINDIR@|$(BINDIR)|' packaging/ferry-serve.service > \
		$(DESTDIR)$(UNITDIR)/ferry-serve.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ferry-serve.service
	test -e $(DESTDIR)$(SYSCONFDIR)/ferry/serve.conf || \
		install -m 0644 packaging/serve.conf $(DESTDIR)$(SYSCONFDIR)/ferry/serve.conf

clean:
	rm -rf build build-san

include fuzz.mk

-include $(shell find $(B) -name '*.d' 2>/dev/null)
