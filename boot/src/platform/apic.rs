//! The local APIC of each CPU (xAPIC mode, memory-mapped at the address
//! the MADT gives): enabling it, end of interrupt, inter-processor
//! interrupts, the CPU numbers the kernel uses, and the APIC timer as each
//! CPU's own periodic tick.
//!
//! The registers are the same page at the same physical address on every
//! CPU; each CPU reaches its own APIC through it. QEMU's TCG has no x2APIC
//! (QEMU-FACTS.md), so this is xAPIC only. IA32_APIC_BASE (MSR 0x1B) keeps
//! its reset value: the global enable (bit 11) set, the base at 0xfee00000.
//!
//! Sources: Intel SDM Vol. 3A §10.4.1 and Table 10-1 (the register map),
//! §10.5.1 (the LVT), §10.5.4 (the timer), §10.6.1 (the interrupt command
//! register), §10.8.5 (EOI), §10.9 (the spurious-interrupt vector register).

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::mem::{PAGE_SIZE, device_window};
use crate::{time, trap};

/// CPUs this kernel drives at most.
pub const MAX_CPUS: usize = 8;

/// Local APIC ID register: the ID in bits 31-24.
const ID: usize = 0x20;
/// Task-priority register: 0 lets every vector through.
const TPR: usize = 0x80;
/// End-of-interrupt register: write 0 when a fixed interrupt is handled.
const EOI: usize = 0xb0;
/// The in-service register: 256 bits, 32 in each of eight registers 16
/// bytes apart.
const ISR: usize = 0x100;
/// Spurious-interrupt vector register: the vector in bits 7-0, the APIC
/// software enable in bit 8.
const SVR: usize = 0xf0;
/// SVR bit 8: the APIC is software-enabled (it is not after reset).
const SVR_ENABLE: u32 = 1 << 8;
/// Interrupt command register, low half: vector, delivery mode, status.
const ICR_LOW: usize = 0x300;
/// Interrupt command register, high half: the destination in bits 31-24.
const ICR_HIGH: usize = 0x310;
/// LVT timer register: vector, mask (bit 16), mode (bits 18-17).
const LVT_TIMER: usize = 0x320;
/// LVT LINT0 register: the 8259's virtual-wire input on the boot CPU.
const LVT_LINT0: usize = 0x350;
/// LVT error register.
const LVT_ERROR: usize = 0x370;
/// Timer initial-count register: writing it starts a count-down.
const TIMER_INITIAL: usize = 0x380;
/// Timer current-count register.
const TIMER_CURRENT: usize = 0x390;
/// Timer divide-configuration register.
const TIMER_DIVIDE: usize = 0x3e0;
/// Divide configuration 0b0011: the timer counts the bus clock / 16.
const DIVIDE_BY_16: u32 = 0b0011;
/// An LVT entry's mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode 01 (bits 18-17): periodic, reloading the initial count.
const TIMER_PERIODIC: u32 = 0b01 << 17;

/// ICR delivery status: the IPI has not been accepted yet.
const ICR_PENDING: u32 = 1 << 12;
/// ICR level: assert (must be set for everything but INIT de-assert).
pub const ICR_ASSERT: u32 = 1 << 14;
/// ICR delivery mode (bits 10-8) fixed: the vector in bits 7-0.
pub const ICR_FIXED: u32 = 0b000 << 8;
/// ICR delivery mode NMI: wakes `hlt` even with IF=0.
pub const ICR_NMI: u32 = 0b100 << 8;
/// ICR delivery mode INIT: resets the target to wait for a SIPI.
pub const ICR_INIT: u32 = 0b101 << 8;
/// ICR delivery mode Start-up (SIPI): the target starts in real mode at
/// CS:IP = vector * 0x100 : 0 (SDM §10.6.1, §8.4.4).
pub const ICR_STARTUP: u32 = 0b110 << 8;

/// The vector of the per-CPU timer.
pub const TIMER_VECTOR: u8 = 0xf0;
/// The vector of a wake-up IPI: it only ends a `hlt` on its target.
pub const WAKE_VECTOR: u8 = 0xf1;
/// The spurious-interrupt vector (low nibble all ones, as the P6 family
/// required; such an interrupt takes no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// The per-CPU timer's rate: slow enough to cost nothing under TCG.
pub const TIMER_HZ: u64 = 100;

/// The local APIC registers' virtual address (0 before [`init`]).
static BASE: AtomicU64 = AtomicU64::new(0);
/// The APIC ID of each CPU number, plus one (0: no such CPU).
static IDS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
/// Timer counts (bus clock / 16) per timer period, from [`calibrate_timer`].
static TIMER_COUNT: AtomicU32 = AtomicU32::new(0);
/// Timer interrupts taken, per CPU.
static TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Spurious APIC interrupts taken (on any CPU).
static SPURIOUS: AtomicU64 = AtomicU64::new(0);

fn read(offset: usize) -> u32 {
    let base = BASE.load(Ordering::Acquire) as *const u32;
    // SAFETY: `init` stored the direct-map address of the local APIC's
    // 4 KiB register page (uncached there: not RAM); every offset passed is
    // a register of Table 10-1, 16-byte aligned.
    unsafe { base.byte_add(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    let base = BASE.load(Ordering::Acquire) as *mut u32;
    // SAFETY: as in `read`.
    unsafe { base.byte_add(offset).write_volatile(value) }
}

/// Finds the local APIC at `base` (physical), numbers the boot CPU 0 and
/// enables its APIC, with LINT0 (the 8259's virtual wire) masked.
///
/// A base the direct map does not map as device memory is fatal: the
/// kernel cannot take interrupts without it.
pub fn init(base: u64) {
    let Some(window) = device_window(base, PAGE_SIZE) else {
        panic!("the MADT's local APIC base {base:#x} is not device memory");
    };
    BASE.store(window.as_ptr() as u64, Ordering::Release);
    IDS[0].store(id() as usize + 1, Ordering::Release);
    trap::register(SPURIOUS_VECTOR, on_spurious);
    trap::register(TIMER_VECTOR, on_timer);
    trap::register(WAKE_VECTOR, on_wake);
    write(LVT_LINT0, LVT_MASKED);
    enable();
}

/// Software-enables this CPU's APIC: every priority accepted, errors not
/// signalled, spurious interrupts on [`SPURIOUS_VECTOR`].
pub fn enable() {
    write(TPR, 0);
    write(LVT_ERROR, LVT_MASKED);
    write(SVR, SVR_ENABLE | SPURIOUS_VECTOR as u32);
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Records that CPU number `cpu` has APIC ID `apic_id`.
pub fn set_cpu(cpu: usize, apic_id: u32) {
    IDS[cpu].store(apic_id as usize + 1, Ordering::Release);
}

/// The APIC ID of CPU number `cpu`, if it has been numbered.
pub fn apic_id(cpu: usize) -> Option<u32> {
    match IDS.get(cpu)?.load(Ordering::Acquire) {
        0 => None,
        id => Some(id as u32 - 1),
    }
}

/// The number of the CPU running this (0 before [`init`], or on a CPU
/// not numbered yet).
pub fn cpu() -> usize {
    if BASE.load(Ordering::Acquire) == 0 {
        return 0;
    }
    let own = id() as usize + 1;
    IDS.iter()
        .position(|slot| slot.load(Ordering::Acquire) == own)
        .unwrap_or(0)
}

/// Signals the end of the interrupt being handled on this CPU. An I/O APIC
/// line that is level-triggered is re-armed by it, so its device must have
/// dropped the line first.
pub fn eoi() {
    write(EOI, 0);
}

/// Whether `vector` is in service on this CPU's local APIC: delivered by
/// it and not yet ended by an EOI.
pub fn in_service(vector: u8) -> bool {
    read(ISR + 0x10 * (vector as usize / 32)) & (1 << (vector % 32)) != 0
}

/// The EOI for a handler whose vector may or may not have come through the
/// local APIC's in-service register. A spurious interrupt, or an 8259
/// interrupt taken as ExtINT, sets no in-service bit and must take no EOI
/// (an EOI would end whatever else is in service); the same vector sent as
/// a fixed interrupt message (a device's memory write to 0xfee0_0000 with
/// interrupt remapping off) sets one, and without its EOI every vector of
/// its priority class and below stays blocked on this CPU. Handlers run
/// with interrupts off, so an in-service `vector` is the highest in
/// service, the one an EOI ends.
pub fn eoi_if_in_service(vector: u8) {
    if in_service(vector) {
        eoi();
    }
}

/// Sends the IPI `command` (delivery mode, level, vector) to APIC ID
/// `apic_id` and waits up to 10 ms for the local APIC to accept it.
pub fn send_ipi(apic_id: u32, command: u32) {
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, command);
    let start = time::now_ns();
    while read(ICR_LOW) & ICR_PENDING != 0 && time::now_ns() - start < 10_000_000 {
        core::hint::spin_loop();
    }
}

/// Ends a `hlt` on CPU `cpu` if its interrupts are on (otherwise the IPI
/// waits, pending, until they are): for a waker on another CPU.
pub fn wake(cpu: usize) {
    if let Some(id) = apic_id(cpu) {
        send_ipi(id, ICR_FIXED | ICR_ASSERT | WAKE_VECTOR as u32);
    }
}

/// Measures the APIC timer's rate against the calibrated TSC (once, on the
/// boot CPU; every CPU's timer runs on the same bus clock).
pub fn calibrate_timer() {
    const WINDOW_NS: u64 = 10_000_000;
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(LVT_TIMER, LVT_MASKED);
    write(TIMER_INITIAL, u32::MAX);
    let start = time::now_ns();
    while time::now_ns() - start < WINDOW_NS {
        core::hint::spin_loop();
    }
    let elapsed = u32::MAX - read(TIMER_CURRENT);
    write(TIMER_INITIAL, 0);
    let per_period = elapsed as u64 * 1_000_000_000 / (WINDOW_NS * TIMER_HZ);
    TIMER_COUNT.store(
        per_period.clamp(1, u32::MAX as u64) as u32,
        Ordering::Release,
    );
}

/// Starts this CPU's periodic timer at [`TIMER_HZ`]. It interrupts only
/// while the CPU has interrupts enabled; one tick stays pending otherwise.
pub fn start_timer() {
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(LVT_TIMER, TIMER_PERIODIC | TIMER_VECTOR as u32);
    write(TIMER_INITIAL, TIMER_COUNT.load(Ordering::Acquire));
}

/// Timer interrupts CPU `cpu` has taken.
pub fn ticks(cpu: usize) -> u64 {
    TICKS.get(cpu).map_or(0, |t| t.load(Ordering::Relaxed))
}

/// Spurious APIC interrupts taken since boot.
pub fn spurious() -> u64 {
    SPURIOUS.load(Ordering::Relaxed)
}

fn on_timer(_frame: &mut trap::TrapFrame, _cr2: u64) -> bool {
    TICKS[cpu()].fetch_add(1, Ordering::Relaxed);
    eoi();
    true
}

fn on_wake(_frame: &mut trap::TrapFrame, _cr2: u64) -> bool {
    eoi();
    true
}

fn on_spurious(frame: &mut trap::TrapFrame, _cr2: u64) -> bool {
    SPURIOUS.fetch_add(1, Ordering::Relaxed);
    eoi_if_in_service(frame.vector as u8);
    true
}
