//! Interrupt and exception entry: the IDT, the assembly stubs and the
//! dispatcher.
//!
//! Every vector from 0 to 255 has a stub that pushes an error code (the CPU's,
//! or 0 for vectors without one; Intel SDM Vol. 3A, Table 6-1) and the vector,
//! saves the general registers and calls [`trap_dispatch`] with a pointer to
//! the resulting [`TrapFrame`]. Stable Rust has no `x86-interrupt` ABI, so the
//! stubs are `global_asm!`.
//!
//! This is the lowest layer of the kernel's trap handling: it imports none
//! of the layers above. They register here instead: the interrupt layer
//! (`irq`, `apic`) takes the interrupt vectors, the process layer (`user`) the system
//! call and its copy-on-write page faults, and the recovery layer
//! (`recover`) everything left unhandled (see [`register`] and
//! [`set_fallback`]).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;

use crate::gdt;

/// Every vector has a stub: 0-31 are exceptions, 32-255 interrupts.
pub const STUB_COUNT: usize = 256;
/// The double-fault vector, which runs on its own stack (TSS IST1).
const DOUBLE_FAULT: u8 = 8;
/// The page-fault vector; CR2 holds the faulting address.
pub const PAGE_FAULT: u8 = 14;

/// The state saved on entry to a trap, lowest address first.
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector number pushed by the stub.
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
    .section .text
    .balign 16
trap_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    cld
    call trap_dispatch
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq
    .balign 16
trap_stub_0: push $0; push $0; jmp trap_common
    .balign 16
trap_stub_1: push $0; push $1; jmp trap_common
    .balign 16
trap_stub_2: push $0; push $2; jmp trap_common
    .balign 16
trap_stub_3: push $0; push $3; jmp trap_common
    .balign 16
trap_stub_4: push $0; push $4; jmp trap_common
    .balign 16
trap_stub_5: push $0; push $5; jmp trap_common
    .balign 16
trap_stub_6: push $0; push $6; jmp trap_common
    .balign 16
trap_stub_7: push $0; push $7; jmp trap_common
    .balign 16
trap_stub_8: push $8; jmp trap_common
    .balign 16
trap_stub_9: push $0; push $9; jmp trap_common
    .balign 16
trap_stub_10: push $10; jmp trap_common
    .balign 16
trap_stub_11: push $11; jmp trap_common
    .balign 16
trap_stub_12: push $12; jmp trap_common
    .balign 16
trap_stub_13: push $13; jmp trap_common
    .balign 16
trap_stub_14: push $14; jmp trap_common
    .balign 16
trap_stub_15: push $0; push $15; jmp trap_common
    .balign 16
trap_stub_16: push $0; push $16; jmp trap_common
    .balign 16
trap_stub_17: push $17; jmp trap_common
    .balign 16
trap_stub_18: push $0; push $18; jmp trap_common
    .balign 16
trap_stub_19: push $0; push $19; jmp trap_common
    .balign 16
trap_stub_20: push $0; push $20; jmp trap_common
    .balign 16
trap_stub_21: push $21; jmp trap_common
    .balign 16
trap_stub_22: push $0; push $22; jmp trap_common
    .balign 16
trap_stub_23: push $0; push $23; jmp trap_common
    .balign 16
trap_stub_24: push $0; push $24; jmp trap_common
    .balign 16
trap_stub_25: push $0; push $25; jmp trap_common
    .balign 16
trap_stub_26: push $0; push $26; jmp trap_common
    .balign 16
trap_stub_27: push $0; push $27; jmp trap_common
    .balign 16
trap_stub_28: push $0; push $28; jmp trap_common
    .balign 16
trap_stub_29: push $29; jmp trap_common
    .balign 16
trap_stub_30: push $30; jmp trap_common
    .balign 16
trap_stub_31: push $0; push $31; jmp trap_common
    // Vectors 32-255 (interrupts: no error code), 16 bytes apart from
    // trap_stub_irq; the table below points into them.
    .balign 16
trap_stub_irq:
    .set vector, 32
    .rept 224
    .balign 16
    push $0
    push $vector
    jmp trap_common
    .set vector, vector + 1
    .endr
    .balign 16
    .global trap_stub_syscall
trap_stub_syscall: push $0; push $128; jmp trap_common

    .section .rodata
    .balign 8
    .global trap_stub_table
trap_stub_table:
    .quad trap_stub_0
    .quad trap_stub_1
    .quad trap_stub_2
    .quad trap_stub_3
    .quad trap_stub_4
    .quad trap_stub_5
    .quad trap_stub_6
    .quad trap_stub_7
    .quad trap_stub_8
    .quad trap_stub_9
    .quad trap_stub_10
    .quad trap_stub_11
    .quad trap_stub_12
    .quad trap_stub_13
    .quad trap_stub_14
    .quad trap_stub_15
    .quad trap_stub_16
    .quad trap_stub_17
    .quad trap_stub_18
    .quad trap_stub_19
    .quad trap_stub_20
    .quad trap_stub_21
    .quad trap_stub_22
    .quad trap_stub_23
    .quad trap_stub_24
    .quad trap_stub_25
    .quad trap_stub_26
    .quad trap_stub_27
    .quad trap_stub_28
    .quad trap_stub_29
    .quad trap_stub_30
    .quad trap_stub_31
    .set vector, 0
    .rept 224
    .quad trap_stub_irq + vector * 16
    .set vector, vector + 1
    .endr
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    /// Addresses of the 256 entry stubs, in vector order.
    static trap_stub_table: [u64; STUB_COUNT];
    /// The entry stub of the system-call vector.
    fn trap_stub_syscall();
}

/// The system-call vector (`int 0x80`), the one gate ring 3 may use.
pub const SYSCALL_VECTOR: u8 = 0x80;

/// One 16-byte IDT gate descriptor (Intel SDM Vol. 3A, 6.14.1).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    /// Bits 0-2: interrupt stack table index (0 = none).
    ist: u8,
    /// Present (0x80), DPL (bits 5-6), type 0xE = 64-bit interrupt gate.
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt(handler: u64, selector: u16, ist: u8) -> Gate {
        Gate::with_dpl(handler, selector, ist, 0)
    }

    /// A gate that code at privilege `dpl` may reach with `int`.
    fn with_dpl(handler: u64, selector: u16, ist: u8, dpl: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector,
            ist,
            attributes: 0x8e | (dpl & 3) << 5,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

/// Builds and loads the IDT. Call after [`gdt::init`].
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = Idt([Gate::MISSING; 256]);
        // SAFETY: the table is defined above in this module's assembly and is
        // immutable read-only data.
        let stubs = unsafe { &trap_stub_table };
        for (vector, &stub) in stubs.iter().enumerate() {
            let ist = if vector == DOUBLE_FAULT as usize {
                gdt::DOUBLE_FAULT_IST + 1
            } else {
                0
            };
            idt.0[vector] = Gate::interrupt(stub, gdt::KERNEL_CODE.0, ist);
        }
        let syscall = trap_stub_syscall as *const () as u64;
        idt.0[SYSCALL_VECTOR as usize] = Gate::with_dpl(syscall, gdt::KERNEL_CODE.0, 0, 3);
        idt
    });
    load(idt);
}

/// Loads the IDT built by [`init`] on an application processor.
pub fn load_on_ap() {
    load(IDT.get().expect("trap::init ran on the boot CPU"));
}

fn load(idt: &'static Idt) {
    let pointer = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT lives in a static for the rest of the kernel's life and
    // every present gate points at a stub that saves state and calls
    // `trap_dispatch`.
    unsafe { lidt(&pointer) };
}

/// Exceptions seen, for the report and the tests.
pub static EXCEPTIONS: AtomicU64 = AtomicU64::new(0);

/// Names of the architectural exceptions (Intel SDM Vol. 3A, Table 6-1).
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved 15",
        "#MF x87 error",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD error",
        "#VE virtualization",
        "#CP control protection",
        "reserved 22",
        "reserved 23",
        "reserved 24",
        "reserved 25",
        "reserved 26",
        "reserved 27",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved 31",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("interrupt")
}

/// A handler for one vector: gets the saved state and, for a page fault,
/// CR2 (read before anything could fault again; 0 otherwise). Returns
/// whether it handled the trap; if not, the fallback gets it.
pub type Handler = fn(&mut TrapFrame, u64) -> bool;

/// What the layer that registered it does with a trap no handler took.
pub type Fallback = fn(&mut TrapFrame, u64);

/// Per-vector handlers (a `Handler` as an address; 0: none).
static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
/// The fallback (a `Fallback` as an address; 0: none).
static FALLBACK: AtomicUsize = AtomicUsize::new(0);

/// Registers `handler` for `vector`; `false` if the vector has one.
pub fn register(vector: u8, handler: Handler) -> bool {
    HANDLERS[vector as usize]
        .compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// Sets what happens to traps no handler took (exceptions, mostly).
pub fn set_fallback(fallback: Fallback) {
    FALLBACK.store(fallback as usize, Ordering::Release);
}

/// The one Rust entry point for every vector, called by `trap_common`.
#[unsafe(no_mangle)]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as usize;
    if vector < 32 {
        EXCEPTIONS.fetch_add(1, Ordering::Relaxed);
    }
    let cr2 = if vector == PAGE_FAULT as usize {
        Cr2::read_raw()
    } else {
        0
    };
    let address = HANDLERS
        .get(vector)
        .map_or(0, |h| h.load(Ordering::Acquire));
    if address != 0 {
        // SAFETY: non-zero slots hold a `Handler` stored by `register`.
        let handler = unsafe { core::mem::transmute::<usize, Handler>(address) };
        if handler(frame, cr2) {
            return;
        }
    }
    match FALLBACK.load(Ordering::Acquire) {
        0 => panic!(
            "unhandled trap: vector {vector} ({}) at {:#x}",
            exception_name(frame.vector),
            frame.rip
        ),
        address => {
            // SAFETY: a non-zero value is a `Fallback` stored by
            // `set_fallback`.
            let fallback = unsafe { core::mem::transmute::<usize, Fallback>(address) };
            fallback(frame, cr2);
        }
    }
}
