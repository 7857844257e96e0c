//! From QEMU's `-kernel` PVH entry (32-bit protected mode, paging off) to
//! 64-bit Rust.
//!
//! The boot page tables map the first 1 GiB of physical memory at address 0
//! (where the kernel is linked) and the first 4 GiB at [`PHYS_OFFSET`], the
//! direct map through which the kernel reaches all physical memory. Both use
//! 2 MiB pages; `mem::paging` refines them once the memory map is known.
//!
//! [`PHYS_OFFSET`]: crate::mem::PHYS_OFFSET

use core::arch::global_asm;

// The PVH ELF note (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`, type 18). QEMU reads the
// descriptor of a 64-bit ELF as 8 bytes, so the entry is a quad
// (QEMU-FACTS.md, "Booting a 64-bit ELF").
global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_entry32
    .balign 4
    "#
);

global_asm!(
    r#"
    .section .bootdata, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pdpt_high: .skip 4096
boot_pd_low:    .skip 4096
boot_pd_high:   .skip 4 * 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 256 * 1024
    .global boot_stack_top
boot_stack_top:

    .section .rodata
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global pvh_entry32
pvh_entry32:
    cli
    cld
    mov %ebx, %esi
    mov $boot_stack_top, %esp

    /* PML4[0] -> low PDPT -> one PD: identity map of the first 1 GiB. */
    mov $boot_pdpt_low + 3, %eax
    mov %eax, boot_pml4
    mov $boot_pd_low + 3, %eax
    mov %eax, boot_pdpt_low
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd_low(,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne 1b

    /* PML4[256] -> high PDPT -> four PDs: the first 4 GiB at PHYS_OFFSET. */
    mov $boot_pdpt_high + 3, %eax
    mov %eax, boot_pml4 + 256 * 8
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $12, %eax
    add $boot_pd_high + 3, %eax
    mov %eax, boot_pdpt_high(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 2b
    xor %ecx, %ecx
3:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd_high(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 3b

    /* CR4.PAE, CR3, EFER.LME, then CR0.PG|WP|PE: long mode. */
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_entry

    .code64
long_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs

    /* Zero .bss before any Rust runs; the PVH start info pointer is in esi. */
    mov $__bss_start, %rdi
    mov $__bss_end, %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb

    mov %esi, %edi
    mov $boot_stack_top, %rsp
    xor %ebp, %ebp
    call kernel_main
4:  hlt
    jmp 4b
    "#,
    options(att_syntax)
);
