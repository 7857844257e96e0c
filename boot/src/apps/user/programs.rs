//! The ring-3 programs: position-independent code the kernel copies into a
//! process, each between a pair of labels.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .rodata.user_programs, "a"
    .global user_story_start
    .global user_story_end
user_story_start:
    lea rdi, [rip + 90f]
    lea rsi, [rip + 91f]
    sub rsi, rdi
    mov eax, 1
    int 0x80
    mov edi, 2
    mov eax, 2
    int 0x80
    test rax, rax
    js 80f
    mov r12, rax
    xor ecx, ecx
    movabs rdx, 0x9e3779b97f4a7c15
2:
    mov rax, rcx
    imul rax, rdx
    mov [r12 + rcx*8], rax
    inc rcx
    cmp rcx, 512
    jb 2b
    lea rdi, [r12 + 4196]
    lea rsi, [r12 + 8]
    mov edx, 3000
    mov eax, 3
    int 0x80
    test rax, rax
    jnz 81f
    lea rsi, [r12 + 8]
    lea rdi, [r12 + 4196]
    mov ecx, 3000
    repe cmpsb
    jne 82f
    cmp byte ptr [r12 + 4195], 0
    jne 82f
    cmp byte ptr [r12 + 7196], 0
    jne 82f
    movabs rdi, 0xffff800000100000
    mov rsi, r12
    mov edx, 16
    mov eax, 3
    int 0x80
    cmp rax, -14
    jne 83f
    mov eax, 4
    int 0x80
    test rax, rax
    js 84f
    mov eax, dword ptr [rax]
    cmp eax, 0x010000ed
    jne 85f
    lea rdi, [rip + 92f]
    lea rsi, [rip + 93f]
    sub rsi, rdi
    mov eax, 1
    int 0x80
    xor edi, edi
    xor eax, eax
    int 0x80
80:
    mov edi, 20
    jmp 99f
81:
    mov edi, 21
    jmp 99f
82:
    mov edi, 22
    jmp 99f
83:
    mov edi, 23
    jmp 99f
84:
    mov edi, 24
    jmp 99f
85:
    mov edi, 25
99:
    xor eax, eax
    int 0x80
90:
    .ascii "ring 3: mapping two pages, asking the LSI53C895A to copy between them\n"
91:
92:
    .ascii "ring 3: copy verified; edu ID read through my own mapping\n"
93:
user_story_end:

    .global user_fault_start
    .global user_fault_end
user_fault_start:
    movabs rax, 0x10000000000
    mov rax, [rax]
    xor edi, edi
    xor eax, eax
    int 0x80
user_fault_end:

    .global user_cli_start
    .global user_cli_end
user_cli_start:
    cli
    xor edi, edi
    xor eax, eax
    int 0x80
user_cli_end:

    .global user_unmap_start
    .global user_unmap_end
user_unmap_start:
    mov edi, 1
    mov eax, 2
    int 0x80
    test rax, rax
    js 3f
    mov r12, rax
    mov qword ptr [r12], 0x1234
    cmp qword ptr [r12], 0x1234
    jne 3f
    mov rdi, r12
    mov esi, 1
    mov eax, 5
    int 0x80
    test rax, rax
    jnz 3f
    mov rax, [r12]
    xor edi, edi
    xor eax, eax
    int 0x80
3:
    mov edi, 30
    xor eax, eax
    int 0x80
user_unmap_end:

    .global user_cow_start
    .global user_cow_end
user_cow_start:
    movabs r12, 0x8000c00000
    mov rax, qword ptr [r12]
    cmp rax, 0x11112222
    jne 4f
    mov qword ptr [r12], 0x33334444
    cmp qword ptr [r12], 0x33334444
    jne 5f
    xor edi, edi
    xor eax, eax
    int 0x80
4:
    mov edi, 40
    xor eax, eax
    int 0x80
5:
    mov edi, 41
    xor eax, eax
    int 0x80
user_cow_end:

    .global user_script_start
    .global user_script_end
user_script_start:
    movabs r12, 0x8000e00000
    movabs r13, 0x8000f00000
1:
    mov rax, [r12]
    cmp rax, -1
    je 2f
    mov rdi, [r12 + 8]
    mov rsi, [r12 + 16]
    mov rdx, [r12 + 24]
    int 0x80
    mov [r13], rax
    add r12, 32
    add r13, 8
    jmp 1b
2:
    xor edi, edi
    xor eax, eax
    int 0x80
user_script_end:

    .global user_spin_start
    .global user_spin_end
user_spin_start:
    jmp user_spin_start
user_spin_end:

/* A user-space driver of the LSI53C895A: three heap pages (script,
   source, destination) mapped for the chip at IOVA 0x40000000, a SCRIPTS
   Memory Move of `len` bytes from the source to IOVA `dst` then an INT,
   run `reps` times (each started through DSP, ISTAT polled, DSTAT read).
   `check` 1: the bytes must have landed; 0: the kernel must report a DMA
   fault; 2: exit with the TSC cycles the runs took; 3: the kernel must
   report a DMA fault after every run; 4: the source's first dword is
   `word`, and the run only has to end. Exits 0 (or the
   cycles), or 61-67 naming the step that failed.
   The chip's registers and instructions, as the library's driver names
   them (drivers/lsi53c895a/regs.rs, script.rs; QEMU-FACTS.md): DSP at
   0x2c starts SCRIPTS at the address written; ISTAT at 0x14, bit 0 (DIP),
   says the processor stopped on a DMA interrupt; DSTAT at 0x0c, read to
   clear it, has bit 2 (SIR) for an INT instruction; a Memory Move is
   0xc0000000 | count, then source, then destination; INT is 0x98080000
   and a value. */
.macro user_driver name, dst, len, reps, check, word=0
    .global user_\name\()_start
    .global user_\name\()_end
user_\name\()_start:
    mov edi, 3
    mov eax, 2
    int 0x80
    test rax, rax
    js 61f
    mov r12, rax
    mov eax, 6
    int 0x80
    test rax, rax
    js 62f
    mov r13, rax
    mov rdi, r12
    mov esi, 3
    mov edx, 0x40000000
    mov eax, 7
    int 0x80
    test rax, rax
    jnz 63f
    xor ecx, ecx
1:
    lea eax, [rcx*8 + 1]
    sub eax, ecx
    mov byte ptr [r12 + rcx + 4096], al
    inc ecx
    cmp ecx, 4096
    jb 1b
.if \check == 4
    mov dword ptr [r12 + 4096], \word
.endif
    mov dword ptr [r12], 0xc0000000 + \len
    mov dword ptr [r12 + 4], 0x40001000
    mov dword ptr [r12 + 8], \dst
    mov dword ptr [r12 + 12], 0x98080000
    mov dword ptr [r12 + 16], 0
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r14, rax
    mov r15d, \reps
5:
    mov dword ptr [r13 + 0x2c], 0x40000000
    mov ecx, 100000000
2:
    test byte ptr [r13 + 0x14], 1
    jnz 3f
    dec ecx
    jnz 2b
    jmp 64f
3:
    mov al, byte ptr [r13 + 0x0c]
    test al, 4
    jz 65f
.if \check == 3
    mov eax, 8
    int 0x80
    cmp rax, 1
    jl 67f
.endif
    dec r15d
    jnz 5b
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r14
    mov r14, rax
.if \check == 2
    mov rdi, r14
    xor eax, eax
    int 0x80
.elseif \check >= 3
    nop
.elseif \check == 1
    lea rsi, [r12 + 4096]
    lea rdi, [r12 + 8192]
    mov ecx, \len
    repe cmpsb
    jne 66f
.else
    mov eax, 8
    int 0x80
    cmp rax, 1
    jl 67f
.endif
    xor edi, edi
    xor eax, eax
    int 0x80
61:
    mov edi, 61
    jmp 69f
62:
    mov edi, 62
    jmp 69f
63:
    mov edi, 63
    jmp 69f
64:
    mov edi, 64
    jmp 69f
65:
    mov edi, 65
    jmp 69f
66:
    mov edi, 66
    jmp 69f
67:
    mov edi, 67
69:
    xor eax, eax
    int 0x80
user_\name\()_end:
.endm

    user_driver lsi_driver, 0x40002000, 256, 1, 1
    user_driver rogue_driver, 0x100000, 256, 1, 0
    user_driver bench_driver, 0x40002000, 64, 20000, 2
    user_driver rogue_driver_100, 0x100000, 256, 100, 3
    user_driver msi_driver_ff, 0xfee00000, 4, 1, 4, 0xff
    user_driver msi_driver_27, 0xfee00000, 4, 1, 4, 0x27

/* Writes a page of 0xff (invalid UTF-8: 12 KiB as stored) until a write
   is refused or 2000 were taken; exits with the count taken if the
   refusal was -28, 9000 if none was refused, 9001 for another error,
   9002 without a page. */
    .global user_endless_writer_start
    .global user_endless_writer_end
user_endless_writer_start:
    mov edi, 1
    mov eax, 2
    int 0x80
    test rax, rax
    js 3f
    mov r12, rax
    mov rdi, r12
    mov al, 0xff
    mov ecx, 4096
    rep stosb
    xor r13d, r13d
1:
    mov rdi, r12
    mov esi, 4096
    mov eax, 1
    int 0x80
    test rax, rax
    js 2f
    inc r13d
    cmp r13d, 2000
    jb 1b
    mov edi, 9000
    xor eax, eax
    int 0x80
2:
    mov edi, 9001
    cmp rax, -28
    cmove edi, r13d
    xor eax, eax
    int 0x80
3:
    mov edi, 9002
    xor eax, eax
    int 0x80
user_endless_writer_end:

/* Maps edu's registers and programs its DMA engine as a driver would:
   4095 bytes (QEMU's edu stops QEMU for 4096) from the physical address in
   the program's second-last quadword into edu's buffer (command 1), then
   from the buffer to the physical address in its last quadword (command
   3), polling the command register; exits 0 (71: no device). */
    .global user_edu_dma_start
    .global user_edu_dma_end
user_edu_dma_start:
    mov eax, 4
    int 0x80
    test rax, rax
    js 71f
    mov r13, rax
    mov rax, [rip + 90f]
    mov [r13 + 0x80], rax
    mov qword ptr [r13 + 0x88], 0x40000
    mov qword ptr [r13 + 0x90], 4095
    mov qword ptr [r13 + 0x98], 1
1:
    mov rax, qword ptr [r13 + 0x98]
    test al, 1
    jnz 1b
    mov qword ptr [r13 + 0x80], 0x40000
    mov rax, [rip + 91f]
    mov [r13 + 0x88], rax
    mov qword ptr [r13 + 0x90], 4095
    mov qword ptr [r13 + 0x98], 3
2:
    mov rax, qword ptr [r13 + 0x98]
    test al, 1
    jnz 2b
    xor edi, edi
    xor eax, eax
    int 0x80
71:
    mov edi, 71
    xor eax, eax
    int 0x80
    .balign 8
90: .quad 0
91: .quad 0
user_edu_dma_end:
"#
);

unsafe extern "C" {
    static user_story_start: u8;
    static user_story_end: u8;
    static user_fault_start: u8;
    static user_fault_end: u8;
    static user_cli_start: u8;
    static user_cli_end: u8;
    static user_unmap_start: u8;
    static user_unmap_end: u8;
    static user_cow_start: u8;
    static user_cow_end: u8;
    static user_script_start: u8;
    static user_script_end: u8;
    static user_spin_start: u8;
    static user_spin_end: u8;
    static user_lsi_driver_start: u8;
    static user_lsi_driver_end: u8;
    static user_rogue_driver_start: u8;
    static user_rogue_driver_end: u8;
    static user_bench_driver_start: u8;
    static user_bench_driver_end: u8;
    static user_rogue_driver_100_start: u8;
    static user_rogue_driver_100_end: u8;
    static user_msi_driver_ff_start: u8;
    static user_msi_driver_ff_end: u8;
    static user_msi_driver_27_start: u8;
    static user_msi_driver_27_end: u8;
    static user_endless_writer_start: u8;
    static user_endless_writer_end: u8;
    static user_edu_dma_start: u8;
    static user_edu_dma_end: u8;
}

/// As [`rogue_driver`], run 100 times, reading `dma_faults` after each
/// run; exits 0 if every read reported a fault (67 at the first that did
/// not).
pub fn rogue_driver_100() -> &'static [u8] {
    bytes(
        &raw const user_rogue_driver_100_start,
        &raw const user_rogue_driver_100_end,
    )
}

/// As [`lsi_driver`], but the chip's Memory Move writes the dword 0xff to
/// 0xfee00000: with interrupt remapping off, an interrupt message (fixed,
/// vector 0xff, the spurious vector, to APIC ID 0); exits 0 once the chip
/// stopped on its INT.
pub fn msi_driver_ff() -> &'static [u8] {
    bytes(
        &raw const user_msi_driver_ff_start,
        &raw const user_msi_driver_ff_end,
    )
}

/// The same with vector 0x27, the first 8259's IRQ 7 (its spurious line).
pub fn msi_driver_27() -> &'static [u8] {
    bytes(
        &raw const user_msi_driver_27_start,
        &raw const user_msi_driver_27_end,
    )
}

/// Writes 4096 bytes of 0xff (12 KiB of U+FFFD as stored) until a write is
/// refused; exits with the writes taken when the refusal was -28 (9000:
/// 2000 taken and none refused; 9001: another error; 9002: no page).
pub fn endless_writer() -> &'static [u8] {
    bytes(
        &raw const user_endless_writer_start,
        &raw const user_endless_writer_end,
    )
}

/// Maps edu's registers (`map_device`) and programs edu's DMA: 4095 bytes
/// from the physical address in the program's second-last quadword into
/// edu's buffer, then from the buffer to the physical address in its last
/// quadword (the caller patches both); exits 0 (71: no device).
pub fn edu_dma() -> &'static [u8] {
    bytes(&raw const user_edu_dma_start, &raw const user_edu_dma_end)
}

fn bytes(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: the pairs of labels above delimit read-only bytes of the
    // kernel image, `end` after `start`.
    unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) }
}

/// Maps two pages, has the LSI53C895A copy between them, checks the copy,
/// checks that a kernel address is refused, reads the edu ID through its own
/// device mapping; exits 0 when all held (20-25 name the step that did not).
pub fn story() -> &'static [u8] {
    bytes(&raw const user_story_start, &raw const user_story_end)
}

/// Reads an address nothing maps.
pub fn faulting() -> &'static [u8] {
    bytes(&raw const user_fault_start, &raw const user_fault_end)
}

/// Executes `cli`, a privileged instruction.
pub fn privileged() -> &'static [u8] {
    bytes(&raw const user_cli_start, &raw const user_cli_end)
}

/// Maps a page, writes it, unmaps it, reads it again: that read must fault
/// (exit 0 would mean the TLB still held the page; 30 names a failed step).
pub fn unmapping() -> &'static [u8] {
    bytes(&raw const user_unmap_start, &raw const user_unmap_end)
}

/// Reads its copy-on-write data page, writes it (the write faults and the
/// kernel gives it a private copy), reads its write back; exits 0 (40 and 41
/// name the check that failed).
pub fn copy_on_write() -> &'static [u8] {
    bytes(&raw const user_cow_start, &raw const user_cow_end)
}

/// Makes the calls of the script page at SCRIPT, writes each result to
/// RESULTS, exits 0.
pub(super) fn script_runner() -> &'static [u8] {
    bytes(&raw const user_script_start, &raw const user_script_end)
}

/// Never ends.
pub fn spinning() -> &'static [u8] {
    bytes(&raw const user_spin_start, &raw const user_spin_end)
}

/// A user-space driver: takes the second LSI53C895A (`grant_lsi`), maps
/// three of its pages for it (`iommu_map`), writes a SCRIPTS Memory Move of
/// 256 bytes between two of them, starts the chip through DSP, polls ISTAT
/// and checks the bytes; exits 0 (61-66 name the failed step). Heap page 1
/// holds the source (byte i = 7i + 1), page 2 the destination.
pub fn lsi_driver() -> &'static [u8] {
    bytes(
        &raw const user_lsi_driver_start,
        &raw const user_lsi_driver_end,
    )
}

/// As [`lsi_driver`], but the move's destination is 0x100000, the
/// kernel's own first page by its physical address, which the process
/// never mapped for the chip; exits 0 once `dma_faults` reports the fault
/// (67 if it does not).
pub fn rogue_driver() -> &'static [u8] {
    bytes(
        &raw const user_rogue_driver_start,
        &raw const user_rogue_driver_end,
    )
}

/// Copies handled by [`bench_driver`].
pub const BENCH_DRIVER_COPIES: u64 = 20_000;

/// As [`lsi_driver`], with a 64-byte move run [`BENCH_DRIVER_COPIES`]
/// times, one after the other; exits with the TSC cycles they took (61-67
/// name a failed step).
pub fn bench_driver() -> &'static [u8] {
    bytes(
        &raw const user_bench_driver_start,
        &raw const user_bench_driver_end,
    )
}
