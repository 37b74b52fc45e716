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
           -fno-strict-aliasing -fPIC \
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

CLI_SRCS  := $(wildcard cli/*.c)
CLI_OBJS  := $(CLI_SRCS:%.c=$(B)/%.o)
LIB_SRCS  := $(wildcard common/*.c qmp/*.c transport/*.c engine/*.c)
LIB_OBJS  := $(LIB_SRCS:%.c=$(B)/%.o)
HARN_SRCS := $(filter-out tests/harness/demo.c,$(wildcard tests/harness/*.c))
HARN_OBJS := $(HARN_SRCS:%.c=$(B)/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:%.c=$(B)/%)
# test_examples runs under check-install, with the installed examples.
INTEG_SRCS := $(filter-out tests/integration/test_examples.c,$(wildcard tests/integration/test_*.c))
INTEG_BINS := $(INTEG_SRCS:%.c=$(B)/%)
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRCS:%.c=$(B)/%)

GUEST   := $(B)/guest.elf

# The library, three ways: libferry.so.0 (only the public API exported:
# libferry.map) and libferry.a (one object whose only globals are the
# public API's) for embedders; libferry-internal.a, every symbol, for the
# command-line tool, the tests and the benchmarks built here.
SOVERSION := 0
VERSION   := $(shell sed -n 's/^\#define FERRY_VERSION_STRING "\(.*\)"/\1/p' include/ferry.h)
LIB_INT   := $(B)/libferry-internal.a

.PHONY: all deps check check-long check-install check-abi check-man check-cli-api check-layers abi-baseline unit integration demo bench headers clean install
all: $(B)/libferry.a $(B)/libferry.so $(B)/ferry

deps:
	@sh scripts/deps.sh

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(LIB_INT): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

# One relocatable object of the whole library, every global but ferry_*
# made local, so that a program linking libferry.a statically meets no
# qmp_, net_, wire_... of ours.
$(B)/libferry.a: $(LIB_OBJS)
	@rm -f $@ $(B)/libferry-all.o
	$(LD) -r -o $(B)/libferry-all.o $^
	objcopy --wildcard --keep-global-symbol='ferry_*' $(B)/libferry-all.o
	ar rcs $@ $(B)/libferry-all.o

$(B)/libferry.so.$(SOVERSION): $(LIB_OBJS) libferry.map
	$(CC) $(LDFLAGS) -shared -Wl,-soname,libferry.so.$(SOVERSION) \
		-Wl,--version-script=libferry.map -Wl,--no-undefined \
		-o $@ $(LIB_OBJS) $(LDLIBS)

$(B)/libferry.so: $(B)/libferry.so.$(SOVERSION)
	ln -sf libferry.so.$(SOVERSION) $@

# The command-line tool is built as an embedder's program is: include/
# its only header path (no -I.), libferry.a (whose only globals are
# ferry_*) its library, so that anything but the public API fails to
# build (check-cli-api checks the include lines).
$(CLI_OBJS): CFLAGS := $(filter-out -I.,$(CFLAGS))
$(B)/ferry: $(CLI_OBJS) $(B)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/libharness.a: $(HARN_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(B)/tests/unit/%: $(B)/tests/unit/%.o $(B)/libharness.a $(LIB_INT)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CHECK_LIBS)

$(B)/tests/integration/%: $(B)/tests/integration/%.o $(B)/libharness.a $(LIB_INT)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CHECK_LIBS)

$(B)/bench/%: $(B)/bench/%.o $(B)/libharness.a $(LIB_INT)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/ferry-demo: $(B)/tests/harness/demo.o $(B)/libharness.a $(LIB_INT)
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
	@$(MAKE) --no-print-directory check-abi
	@$(MAKE) --no-print-directory check-man
	@$(MAKE) --no-print-directory check-cli-api
	@$(MAKE) --no-print-directory check-layers
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory check-install

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

# Everything an operator and an embedder need: the binary, libferry.so.0
# (with its symlinks) and libferry.a, the headers, ferry.pc, the examples,
# the receiving service's systemd unit and example configuration. PREFIX
# and DESTDIR as usual.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
LIBDIR  ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DOCDIR  ?= $(PREFIX)/share/doc/ferry
MANDIR  ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig \
		$(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(DOCDIR)/examples \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/ferry \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 \
		$(DESTDIR)$(MANDIR)/man5
	install -m 0755 $(B)/ferry $(DESTDIR)$(BINDIR)/ferry
	install -m 0644 man/ferry.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/libferry.3 $(DESTDIR)$(MANDIR)/man3/
	install -m 0644 man/ferry-serve.conf.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 $(B)/libferry.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/
	ln -sf libferry.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libferry.so
	install -m 0644 $(B)/libferry.a $(DESTDIR)$(LIBDIR)/
	install -m 0644 include/ferry.h include/ferry_policy.h $(DESTDIR)$(INCLUDEDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
		packaging/ferry.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/ferry.pc
	install -m 0644 examples/*.c $(DESTDIR)$(DOCDIR)/examples/
	sed 's|@BINDIR@|$(BINDIR)|' packaging/ferry-serve.service > \
		$(DESTDIR)$(UNITDIR)/ferry-serve.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ferry-serve.service
	test -e $(DESTDIR)$(SYSCONFDIR)/ferry/serve.conf || \
		install -m 0644 packaging/serve.conf $(DESTDIR)$(SYSCONFDIR)/ferry/serve.conf

# The exported ABI against the stored baseline (abigail-tools): a function
# added passes; any change to what exists (a symbol gone, a type's layout)
# fails until it is announced by storing a new baseline with it (make
# abi-baseline, in the same commit, with the soname bumped if it breaks).
# The opaque structs' insides are not the ABI (abi/suppressions.ini).
ABI_BASE := abi/libferry.so.$(SOVERSION).abi
check-abi: $(B)/libferry.so.$(SOVERSION)
	@abidiff --no-added-syms --suppressions abi/suppressions.ini $(ABI_BASE) $< \
		>$(B)/abidiff.txt; rc=$$?; \
	if [ $$rc -ne 0 ]; then \
		cat $(B)/abidiff.txt; echo "abi: libferry's ABI changed (abidiff $$rc):" \
			"announce it with make abi-baseline, or undo it"; \
		echo "abi: 0 passed, 1 failed"; exit 1; \
	fi; \
	echo "abi: 1 passed, 0 failed"

abi-baseline: $(B)/libferry.so.$(SOVERSION)
	abidw --no-show-locs --no-corpus-path $< > $(ABI_BASE)

# The man pages render cleanly and document every option of the real
# tables (part of check).
check-man: $(B)/ferry
	@sh scripts/check-man.sh $(B)/ferry

# The command-line tool includes only the public headers and its own
# (part of check).
check-cli-api:
	@sh scripts/check-cli-api.sh

# common/ < qmp/, transport/ < engine/: no folder includes from one above
# it (part of check).
check-layers:
	@sh scripts/check-layers.sh

# The embedder's view (part of check): install into a scratch DESTDIR,
# build the examples against it with pkg-config alone, and migrate a real
# guest with them (test_examples).
check-install: all $(GUEST) $(B)/tests/integration/test_examples
	@FERRY_BIN=$(abspath $(B)/ferry) FERRY_GUEST=$(abspath $(GUEST)) \
		sh scripts/check-install.sh $(B)

# The Debian packages ferry, libferry0 and libferry-dev (debian/), built
# by scripts/check-deb.sh from a clean clone of HEAD under /tmp, never in
# this tree, then checked by lintian; it prints where the .deb files are
# (DEB_OUT=DIR to choose; default a new /tmp/ferry-deb.XXXXXX). Not part
# of check.
.PHONY: deb
deb:
	@sh scripts/check-deb.sh $(DEB_OUT)

clean:
	rm -rf build build-san

include fuzz.mk

-include $(shell find $(B) -name '*.d' 2>/dev/null)
