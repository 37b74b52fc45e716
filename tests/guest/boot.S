/*
 * Entry of the test guest: the Multiboot (v1) header, a flat GDT of our
 * own (the Multiboot spec says the loader's GDT may be gone), SSE enabled
 * for the wide stores of the fill, a stack, then guest_main(mbi).
 */
#define MB_MAGIC	0x1BADB002
#define MB_FLAGS	0x00000003	/* page-align modules, want memory info */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .text
	.globl _start
	.type _start, @function
_start:
	cli
	lgdt gdt_desc
	ljmp $0x08, $1f
1:	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %fs
	movw %ax, %gs
	movw %ax, %ss
	movl $stack_top, %esp

	/* SSE: CR0.EM off, CR0.MP on; CR4.OSFXSR and OSXMMEXCPT on. */
	movl %cr0, %eax
	andl $~0x4, %eax
	orl $0x2, %eax
	movl %eax, %cr0
	movl %cr4, %eax
	orl $0x600, %eax
	movl %eax, %cr4

	pushl %ebx		/* Multiboot info (physical address) */
	call guest_main
2:	cli
	hlt
	jmp 2b

/* IRQ0 (PIT channel 0): count the tick and acknowledge it at the PIC. */
	.globl timer_isr
	.type timer_isr, @function
timer_isr:
	pushl %eax
	incl timer_ticks
	movb $0x20, %al
	outb %al, $0x20
	popl %eax
	iret

/* Any CPU exception is a bug in the guest: report it and halt. */
	.globl exc_isr
	.type exc_isr, @function
exc_isr:
	call guest_fault

/* Masked IRQs and the PIC's spurious IRQ7: nothing to do, no EOI. */
	.globl spurious_isr
	.type spurious_isr, @function
spurious_isr:
	iret

	.section .rodata
	.align 8
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff	/* 0x08: code, flat 4 GiB, 32-bit */
	.quad 0x00cf92000000ffff	/* 0x10: data, flat 4 GiB */
gdt_desc:
	.word gdt_desc - gdt - 1
	.long gdt

	.section .bss
	.align 16
stack:
	.space 16384
stack_top:
