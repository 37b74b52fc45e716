# The test guest (tests/guest): a 32-bit Multiboot ELF that QEMU boots with
# -kernel. Included by the top Makefile, which sets GUEST := $(B)/guest.elf.
# Built with its own flags: never the host's CFLAGS, nor the sanitizers.
# -mgeneral-regs-only keeps gcc's code off the SSE registers, which only the
# hand-written fill loops (fill.S) use; no libgcc, so no 64-bit division in C.

GUEST_CC     ?= gcc
GUEST_CFLAGS := -m32 -march=i686 -O2 -g -std=gnu11 -ffreestanding -nostdlib \
                -fno-pic -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables \
                -mgeneral-regs-only -Wall -Wextra -Werror -Wshadow \
                -Wstrict-prototypes -Wmissing-prototypes -Itests/guest
GUEST_LDFLAGS := -m32 -nostdlib -static -no-pie -Wl,--build-id=none \
                 -Wl,-z,max-page-size=0x1000 -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
                 -Wl,-T,tests/guest/guest.ld
GUEST_SRCS   := tests/guest/boot.S tests/guest/fill.S tests/guest/guest.c \
                tests/guest/pattern.c
GUEST_OBJS   := $(patsubst tests/guest/%,$(B)/tests/guest/%.o,$(GUEST_SRCS))

$(B)/tests/guest/%.S.o: tests/guest/%.S
	@mkdir -p $(dir $@)
	$(GUEST_CC) $(GUEST_CFLAGS) -c $< -o $@

$(B)/tests/guest/%.c.o: tests/guest/%.c tests/guest/pattern.h
	@mkdir -p $(dir $@)
	$(GUEST_CC) $(GUEST_CFLAGS) -c $< -o $@

$(GUEST): $(GUEST_OBJS) tests/guest/guest.ld
	$(GUEST_CC) $(GUEST_LDFLAGS) -o $@ $(GUEST_OBJS)
