//! Application processors: found in the MADT, started with INIT-SIPI-SIPI
//! through the boot CPU's local APIC, and given jobs.
//!
//! An AP runs a trampoline copied below 1 MiB (real mode, then protected
//! mode, then long mode with the boot CPU's CR3, CR4, CR0 and EFER), then
//! [`ap_main`] on its own stack: it loads the kernel's GDT (no TSS) and
//! IDT and its PAT, and waits for jobs with interrupts off, halted. A job
//! is a plain `fn(cpu)`; the boot CPU posts it and wakes the AP with an NMI
//! (the one interrupt that ends `hlt` with interrupts off), repeating the
//! NMI until the AP takes the job, so a wake that lands just before the
//! `hlt` is not lost. Jobs run with interrupts off and must not panic: the
//! recovery layer tracks the boot CPU's tests only.
//!
//! Sources: Intel SDM Vol. 3A §8.4.4 (the INIT-SIPI-SIPI sequence and its
//! delays), §10.4.1 and Table 10-1 (the xAPIC registers), §10.6.1 (the
//! interrupt command register); ACPI 6.5 §5.2.12 (the MADT).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use embedded_hal::delay::DelayNs;

use crate::apic::{self, ICR_ASSERT, ICR_INIT, ICR_NMI, ICR_STARTUP};
use crate::mem::{PAGE_SIZE, phys_to_virt};
use crate::{acpi, gdt, println, recover, time, trap};

pub use crate::apic::MAX_CPUS;
/// Where the trampoline is copied: page 8, below 1 MiB as a SIPI needs
/// (the start address is the vector times 4 KiB), unused by the frame
/// allocator (which starts at 1 MiB) and by the boot info (copied at boot).
const TRAMPOLINE: u64 = 0x8000;
/// The SIPI vector: the trampoline's page number.
const SIPI_VECTOR: u32 = (TRAMPOLINE >> 12) as u32;
/// Each AP's stack.
const AP_STACK_PAGES: usize = 16;

/// The NMI vector.
const NMI_VECTOR: u8 = 2;

core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline
ap_trampoline:
    .code16
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl (ap_gdt_ptr - ap_trampoline + 0x8000)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(ap_pm32 - ap_trampoline + 0x8000)
    .code32
ap_pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov (ap_cr4 - ap_trampoline + 0x8000), %eax
    mov %eax, %cr4
    mov (ap_cr3 - ap_trampoline + 0x8000), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx          // IA32_EFER
    mov (ap_efer - ap_trampoline + 0x8000), %eax
    xor %edx, %edx
    wrmsr
    mov (ap_cr0 - ap_trampoline + 0x8000), %eax
    mov %eax, %cr0
    ljmpl $0x18, $(ap_lm64 - ap_trampoline + 0x8000)
    .code64
ap_lm64:
    mov (ap_stack - ap_trampoline + 0x8000), %rsp
    mov (ap_arg - ap_trampoline + 0x8000), %rdi
    mov (ap_entry - ap_trampoline + 0x8000), %rax
    call *%rax
    ud2
    .balign 8
    // Null; 0x08 32-bit code (flat, G, D); 0x10 data (flat, G, B);
    // 0x18 64-bit code (L): SDM Vol. 3A §3.4.5.
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
ap_gdt_end:
ap_gdt_ptr:
    .word ap_gdt_end - ap_gdt - 1
    .long ap_gdt - ap_trampoline + 0x8000
    .balign 8
    .global ap_cr3
ap_cr3: .quad 0
    .global ap_cr4
ap_cr4: .quad 0
    .global ap_cr0
ap_cr0: .quad 0
    .global ap_efer
ap_efer: .quad 0
    .global ap_stack
ap_stack: .quad 0
    .global ap_arg
ap_arg: .quad 0
    .global ap_entry
ap_entry: .quad 0
    .global ap_trampoline_end
ap_trampoline_end:
    .text
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
    static ap_cr3: u8;
    static ap_cr4: u8;
    static ap_cr0: u8;
    static ap_efer: u8;
    static ap_stack: u8;
    static ap_arg: u8;
    static ap_entry: u8;
}

/// CPUs running (the boot CPU included).
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// Each AP's posted job (a `fn(usize)` as an address; 0: none).
static JOBS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
/// Set by an AP when its job has returned.
static DONE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Set by an AP once it runs Rust.
static STARTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// How many CPUs run.
pub fn cpus() -> usize {
    ONLINE.load(Ordering::Acquire)
}

fn offset_of(symbol: &u8) -> u64 {
    let start = &raw const ap_trampoline as u64;
    symbol as *const u8 as u64 - start
}

fn set_field(symbol: &u8, value: u64) {
    let at = phys_to_virt(TRAMPOLINE + offset_of(symbol)).cast::<u64>();
    // SAFETY: the field lies inside the trampoline page copied below 1 MiB,
    // which only this module uses; the AP reads it after the IPI.
    unsafe { at.write_volatile(value) }
}

/// The root (CR3) each AP has loaded: 0 for the kernel's own tables.
static LOADED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Each AP's pending shootdown: the first page's address with bit 0 set
/// (and the page count in `SHOOT_PAGES`), or `FLUSH_ALL`; 0 once done.
static SHOOT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static SHOOT_PAGES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
const FLUSH_ALL: u64 = u64::MAX;
/// Shootdown rounds (calls that interrupted at least one other CPU).
static ROUNDS: AtomicU64 = AtomicU64::new(0);

/// The NMI: sent to wake an AP for a job, or to shoot down translations.
fn nmi_handler(_frame: &mut trap::TrapFrame, _cr2: u64) -> bool {
    let cpu = apic::cpu();
    match SHOOT[cpu].load(Ordering::Acquire) {
        0 => {}
        FLUSH_ALL => x86_64::instructions::tlb::flush_all(),
        first => {
            let pages = SHOOT_PAGES[cpu].load(Ordering::Acquire);
            for i in 0..pages {
                x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(
                    (first & !1) + i * PAGE_SIZE,
                ));
            }
        }
    }
    SHOOT[cpu].store(0, Ordering::Release);
    true
}

/// Loads page tables `root` on this AP (0: back to `kernel_root`), so that
/// shootdowns for `root` reach it.
///
/// # Safety
/// As for [`crate::mem::paging::load`]; only from a job on AP `cpu`.
pub unsafe fn load_root(cpu: usize, root: u64, kernel_root: u64) {
    // Recorded first: a shootdown from now on reaches this CPU, and one
    // before found the old tables (whose load below drops everything).
    LOADED[cpu].store(root, Ordering::Release);
    // SAFETY: per the caller's contract.
    unsafe { crate::mem::paging::load(if root == 0 { kernel_root } else { root }) };
}

/// Flushes `pages` pages from `start` (every translation if `None`) of the
/// space `root` on every AP that has it loaded, with one NMI each, and
/// waits until they have: one round for the whole call.
pub fn shootdown(root: u64, range: Option<(x86_64::VirtAddr, u64)>) {
    let (request, count) = match range {
        Some((start, pages)) if pages <= dmaengine::mm::tlb::FULL_FLUSH_THRESHOLD as u64 => {
            (start.as_u64() | 1, pages)
        }
        _ => (FLUSH_ALL, 0),
    };
    let mut sent = false;
    for cpu in 1..cpus() {
        if LOADED[cpu].load(Ordering::Acquire) == root {
            SHOOT_PAGES[cpu].store(count, Ordering::Release);
            SHOOT[cpu].store(request, Ordering::Release);
            wake(cpu);
            sent = true;
        }
    }
    if !sent {
        return;
    }
    ROUNDS.fetch_add(1, Ordering::Relaxed);
    for pending in SHOOT.iter().take(cpus()).skip(1) {
        while pending.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
    }
}

/// Shootdown rounds since boot.
pub fn shootdown_rounds() -> u64 {
    ROUNDS.load(Ordering::Relaxed)
}

/// Finds the processors and starts every AP; returns how many CPUs run.
pub fn init(madt: &acpi::Madt) -> usize {
    trap::register(NMI_VECTOR, nmi_handler);
    let own = apic::id();
    let (start, end) = (&raw const ap_trampoline, &raw const ap_trampoline_end);
    let len = end as usize - start as usize;
    // SAFETY: page 8 is identity- and direct-mapped RAM nothing else uses
    // (see TRAMPOLINE); the source is the trampoline's bytes.
    unsafe { core::ptr::copy_nonoverlapping(start, phys_to_virt(TRAMPOLINE), len) };
    // The AP enters long mode with the boot CPU's settings. EFER.LMA is the
    // CPU's own report, not a setting.
    use x86_64::registers::control::{Cr0, Cr3, Cr4};
    use x86_64::registers::model_specific::{Efer, EferFlags};
    let (cr0, cr4) = (Cr0::read_raw(), Cr4::read_raw());
    let cr3 = Cr3::read_raw().0.start_address().as_u64();
    let efer = Efer::read_raw() & !EferFlags::LONG_MODE_ACTIVE.bits();
    // The kernel's own tables (init runs at boot, with them loaded).
    // SAFETY: the fields are symbols of the trampoline.
    unsafe {
        set_field(&ap_cr0, cr0);
        set_field(&ap_cr3, cr3);
        set_field(&ap_cr4, cr4);
        set_field(&ap_efer, efer);
        set_field(&ap_entry, ap_main as *const () as u64);
    }
    let others: Vec<u8> = madt
        .apic_ids
        .iter()
        .copied()
        .filter(|&id| id as u32 != own)
        .take(MAX_CPUS - 1)
        .collect();
    recover::on_ap_failure(ap_failed);
    for id in others {
        let cpu = cpus();
        let Ok(top) = crate::mem::paging::map_guarded_stack(cpu, AP_STACK_PAGES as u64) else {
            break;
        };
        apic::set_cpu(cpu, id as u32);
        STACK_TOPS[cpu].store(top, Ordering::Release);
        if !start_ap(cpu) {
            println!("smp: CPU with APIC ID {id} did not start");
            break;
        }
        ONLINE.store(cpu + 1, Ordering::Release);
    }
    cpus()
}

/// Each AP's stack top (its stack is reused when it is restarted).
static STACK_TOPS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// What ended an AP's job instead of its return; set when it parked.
static FAILURES: [spin::Mutex<Option<recover::ApFailure>>; MAX_CPUS] =
    [const { spin::Mutex::new(None) }; MAX_CPUS];
/// Set by an AP that parked after a failure, until it is restarted.
static PARKED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Starts AP `cpu` (numbered, its stack top recorded) through the
/// trampoline with INIT, 10 ms, then SIPI twice, 200 us apart (SDM
/// §8.4.4.1); waits up to 1 s for it to run Rust.
fn start_ap(cpu: usize) -> bool {
    let Some(id) = apic::apic_id(cpu) else {
        return false;
    };
    STARTED[cpu].store(false, Ordering::Release);
    // SAFETY: the fields are symbols of the trampoline; no other AP is
    // being started (the boot CPU starts them one at a time).
    unsafe {
        set_field(&ap_stack, STACK_TOPS[cpu].load(Ordering::Acquire));
        set_field(&ap_arg, cpu as u64);
    }
    apic::send_ipi(id, ICR_INIT | ICR_ASSERT);
    time::Delay.delay_ms(10);
    for _ in 0..2 {
        apic::send_ipi(id, ICR_STARTUP | ICR_ASSERT | SIPI_VECTOR);
        time::Delay.delay_us(200);
        if STARTED[cpu].load(Ordering::Acquire) {
            break;
        }
    }
    let start = time::now_ns();
    while !STARTED[cpu].load(Ordering::Acquire) && time::now_ns() - start < 1_000_000_000 {
        core::hint::spin_loop();
    }
    STARTED[cpu].load(Ordering::Acquire)
}

/// An AP's fault or panic (the recovery layer's `catch` is the boot
/// CPU's): recorded, reported, and the CPU parked with interrupts off
/// until [`restart`]. The job never reports done, so [`wait_for`] says it
/// did not end.
fn ap_failed(failure: recover::ApFailure) -> ! {
    let cpu = apic::cpu();
    *FAILURES[cpu].lock() = Some(failure);
    println!("smp: CPU {cpu} stopped: {failure}");
    // Parked only now, holding no lock: a restart resets this CPU wherever
    // it is, and a lock it held then (the console's) would stay held. A
    // shootdown aimed here is still answered by the NMI handler; what this
    // CPU had loaded is dropped when it is restarted.
    PARKED[cpu].store(true, Ordering::Release);
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// What ended AP `cpu`'s last job instead of its return, if anything
/// (cleared by [`restart`]).
pub fn failure(cpu: usize) -> Option<recover::ApFailure> {
    *FAILURES.get(cpu)?.lock()
}

/// Starts AP `cpu` again after a failure parked it: INIT resets it, and it
/// comes back through the trampoline on its own stack, ready for jobs.
/// Returns whether it is running again.
pub fn restart(cpu: usize) -> bool {
    if cpu == 0 || cpu >= cpus() || !PARKED[cpu].load(Ordering::Acquire) {
        return false;
    }
    JOBS[cpu].store(0, Ordering::Release);
    LOADED[cpu].store(0, Ordering::Release);
    SHOOT[cpu].store(0, Ordering::Release);
    let running = start_ap(cpu);
    if running {
        *FAILURES[cpu].lock() = None;
        PARKED[cpu].store(false, Ordering::Release);
    }
    running
}

/// An AP's life after the trampoline.
extern "C" fn ap_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    gdt::load_on_ap();
    trap::load_on_ap();
    crate::mem::paging::program_pat();
    apic::enable();
    apic::start_timer();
    STARTED[cpu].store(true, Ordering::Release);
    loop {
        x86_64::instructions::interrupts::disable();
        let job = JOBS[cpu].swap(0, Ordering::AcqRel);
        if job == 0 {
            x86_64::instructions::hlt();
            continue;
        }
        // SAFETY: non-zero values are `fn(usize)` posted by `run_on_all`.
        let job = unsafe { core::mem::transmute::<usize, fn(usize)>(job) };
        job(cpu);
        DONE[cpu].store(true, Ordering::Release);
    }
}

/// Sends AP `cpu` an NMI: it wakes from `hlt`, takes a posted job or
/// shootdown, or goes on with a job that halts while it waits for
/// something the caller has just done.
pub fn wake(cpu: usize) {
    if let Some(id) = apic::apic_id(cpu) {
        apic::send_ipi(id, ICR_NMI | ICR_ASSERT);
    }
}

/// Posts `job` to AP `cpu` and wakes it; [`wait_for`] waits for its end.
pub fn start_on(cpu: usize, job: fn(usize)) {
    DONE[cpu].store(false, Ordering::Release);
    JOBS[cpu].store(job as usize, Ordering::Release);
    wake(cpu);
}

/// Waits up to `timeout_ns` for the job posted to AP `cpu` to end, waking
/// it again every millisecond until it takes the job.
pub fn wait_for(cpu: usize, timeout_ns: u64) -> bool {
    let start = time::now_ns();
    let mut last_nudge = start;
    while !DONE[cpu].load(Ordering::Acquire) {
        if PARKED[cpu].load(Ordering::Acquire) {
            return false;
        }
        let now = time::now_ns();
        if now - start > timeout_ns {
            return false;
        }
        if now - last_nudge > 1_000_000 && JOBS[cpu].load(Ordering::Acquire) != 0 {
            last_nudge = now;
            wake(cpu);
        }
        core::hint::spin_loop();
    }
    true
}

/// Runs `job(cpu)` on every CPU at once (the boot CPU runs `job(0)`
/// itself), and waits up to `timeout_ns` for the APs. Returns how many APs
/// did not end in time (none: `Ok`).
pub fn run_on_all(job: fn(usize), timeout_ns: u64) -> Result<(), usize> {
    let n = cpus();
    for cpu in 1..n {
        start_on(cpu, job);
    }
    job(0);
    let start = time::now_ns();
    let late = (1..n)
        .filter(|&cpu| {
            let left = timeout_ns.saturating_sub(time::now_ns() - start);
            !wait_for(cpu, left)
        })
        .count();
    if late == 0 { Ok(()) } else { Err(late) }
}
