/*
 * Wide stores for the fill. Under TCG every guest instruction costs a few
 * host instructions plus a TLB check per memory access, so the number of
 * guest instructions per byte decides the fill time: SSE moves 16 bytes
 * per store, unrolled 4 times (64 bytes per loop iteration). rep stos is
 * no faster under TCG since it loops once per element.
 *
 * cdecl, 32-bit. Sizes are multiples of 64 bytes; addresses 16-aligned.
 */
	.text

/* void fill_zero(void *dst, uint32_t bytes) */
	.globl fill_zero
	.type fill_zero, @function
fill_zero:
	movl 4(%esp), %edx
	movl 8(%esp), %ecx
	shrl $6, %ecx
	jz 2f
	pxor %xmm0, %xmm0
1:	movdqa %xmm0, (%edx)
	movdqa %xmm0, 16(%edx)
	movdqa %xmm0, 32(%edx)
	movdqa %xmm0, 48(%edx)
	addl $64, %edx
	decl %ecx
	jnz 1b
2:	ret

/*
 * void fill_xor_copy(void *dst, const void *src, uint32_t bytes,
 *                    const uint32_t key[4])
 * dst = src XOR key, the 16-byte key repeated. With a zero key it is a copy.
 */
	.globl fill_xor_copy
	.type fill_xor_copy, @function
fill_xor_copy:
	pushl %esi
	movl 8(%esp), %edx
	movl 12(%esp), %esi
	movl 16(%esp), %ecx
	movl 20(%esp), %eax
	movdqu (%eax), %xmm4
	shrl $6, %ecx
	jz 2f
1:	movdqu (%esi), %xmm0
	movdqu 16(%esi), %xmm1
	movdqu 32(%esi), %xmm2
	movdqu 48(%esi), %xmm3
	pxor %xmm4, %xmm0
	pxor %xmm4, %xmm1
	pxor %xmm4, %xmm2
	pxor %xmm4, %xmm3
	movdqa %xmm0, (%edx)
	movdqa %xmm1, 16(%edx)
	movdqa %xmm2, 32(%edx)
	movdqa %xmm3, 48(%edx)
	addl $64, %esi
	addl $64, %edx
	decl %ecx
	jnz 1b
2:	popl %esi
	ret
