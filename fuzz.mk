# libFuzzer harnesses for every parser of bytes from a peer or a file
# (tests/fuzz/fuzz_*.c), included by the top Makefile.
#
#   make fuzz                      build them in build-fuzz/ (clang, ASan, UBSan)
#   make fuzz-run [FUZZ_SECONDS=N] run each for N seconds (default 5) on a
#                                  copy of its seed corpus; fails on a crash
#   make fuzz-corpus               rewrite the seed corpora (tests/fuzz/corpus)
#                                  after a format change, then commit them
#   make fuzz-clean                remove build-fuzz/
#
# clang and its fuzzer runtime are installed on demand (scripts/deps.sh
# fuzz), so `make check` never pulls them. Only the library sources the
# harnesses need are built here: a parser's file and what it calls, not
# the engine or the CLI.

FUZZ_B       := build-fuzz
FUZZ_CC      ?= clang-14
FUZZ_SECONDS ?= 5
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer
# The project's warnings, less -Wno-format-truncation (gcc's; clang has no
# such warning and refuses to silence it).
FUZZ_CFLAGS  := -O1 -g -std=gnu11 -Wall -Wextra -Werror -Wshadow \
                -Wno-unused-parameter -Wstrict-prototypes -Wmissing-prototypes \
                -fno-strict-aliasing -D_GNU_SOURCE -Iinclude -I. -pthread \
                -MMD -MP $(FUZZ_SAN)
FUZZ_LIB_SRCS := transport/wire.c transport/codec.c transport/net.c \
                 transport/tls.c transport/nbd.c transport/nbd_client.c \
                 qmp/qmp.c common/error.c
FUZZ_COMMON  := tests/fuzz/common.c tests/fuzz/peer.c
FUZZ_SRCS    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES   := $(FUZZ_SRCS:tests/fuzz/fuzz_%.c=%)
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_B)/fuzz_%)
FUZZ_OBJS    := $(FUZZ_LIB_SRCS:%.c=$(FUZZ_B)/%.o) \
                $(FUZZ_COMMON:%.c=$(FUZZ_B)/%.o)

.PHONY: fuzz fuzz-build fuzz-run fuzz-corpus fuzz-clean fuzz-deps
# Keep the objects, which make would delete as intermediates of the
# pattern rules, so a rebuild compiles only what changed.
.SECONDARY: $(FUZZ_OBJS) $(FUZZ_SRCS:%.c=$(FUZZ_B)/%.o)

fuzz-deps:
	@sh scripts/deps.sh fuzz

fuzz: fuzz-deps
	@$(MAKE) --no-print-directory fuzz-build

fuzz-build: $(FUZZ_BINS)

# Coverage instrumentation everywhere; libFuzzer's main only in the
# harnesses' link.
$(FUZZ_B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_B)/fuzz_%: $(FUZZ_B)/tests/fuzz/fuzz_%.o $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $(FUZZ_LDFLAGS) -o $@ $^ $(LDLIBS)

# nbd_serve()'s 32 MiB buffer is reused across inputs (fuzz_nbd_server.c).
$(FUZZ_B)/fuzz_nbd_server: FUZZ_LDFLAGS := -Wl,--wrap=malloc -Wl,--wrap=free

fuzz-run: fuzz
	@sh scripts/fuzz-run.sh $(FUZZ_B) $(FUZZ_SECONDS) $(FUZZ_NAMES)

# The seed generator is an ordinary program: the project's compiler and
# flags, ferry's own encoders.
FUZZ_GEN_SRCS := tests/fuzz/gen_corpus.c transport/wire.c transport/codec.c \
                 common/error.c

$(FUZZ_B)/gen_corpus: $(FUZZ_GEN_SRCS)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -o $@ $(FUZZ_GEN_SRCS) $(LDLIBS)

fuzz-corpus: $(FUZZ_B)/gen_corpus
	$(FUZZ_B)/gen_corpus tests/fuzz/corpus

fuzz-clean:
	rm -rf $(FUZZ_B)

-include $(shell find $(FUZZ_B) -name '*.d' 2>/dev/null)
