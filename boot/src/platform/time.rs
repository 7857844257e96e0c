//! Time: the PIT as the periodic timer and the reference clock, and the TSC,
//! calibrated against it, as the monotonic clock behind [`Delay`].

use core::sync::atomic::{AtomicU64, Ordering};

use embedded_hal::delay::DelayNs;
use x86_64::instructions::port::Port;

/// The PIT's input clock in Hz (Intel 8254 on the PC: 14.31818 MHz / 12).
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 0 divisor for the periodic tick: 1193 gives 1000.15 Hz.
const TICK_DIVISOR: u16 = 1193;
/// Channel 0 data port.
const PIT_CH0: u16 = 0x40;
/// Channel 2 data port (gated by port 0x61 bit 0).
const PIT_CH2: u16 = 0x42;
/// Mode/command register.
const PIT_CMD: u16 = 0x43;
/// System control port B: bit 0 gates channel 2, bit 1 drives the speaker,
/// bit 5 reads channel 2's output.
const PORT_B: u16 = 0x61;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);

fn outb(port: u16, value: u8) {
    // SAFETY: only the PIT and port B are passed here; no memory effects.
    unsafe { Port::<u8>::new(port).write(value) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`.
    unsafe { Port::<u8>::new(port).read() }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures TSC cycles over `pit_counts` periods of the PIT's 1.193182 MHz
/// clock, using channel 2 in mode 0 with interrupts irrelevant (polled).
pub fn tsc_cycles_over_pit(pit_counts: u16) -> u64 {
    let b = inb(PORT_B);
    outb(PORT_B, (b & !0x02) & !0x01);
    // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
    outb(PIT_CMD, 0b1011_0000);
    outb(PIT_CH2, pit_counts as u8);
    outb(PIT_CH2, (pit_counts >> 8) as u8);
    let start = rdtsc();
    outb(PORT_B, (b & !0x02) | 0x01);
    // Bounded: no TSC runs so slowly that 2^40 cycles is not minutes past
    // the longest window (55 ms); a PIT that never counts down is fatal.
    while inb(PORT_B) & 0x20 == 0 {
        assert!(
            rdtsc() - start < 1 << 40,
            "PIT channel 2 never reached terminal count"
        );
        core::hint::spin_loop();
    }
    let end = rdtsc();
    outb(PORT_B, b);
    end - start
}

/// Calibrates the TSC against the PIT (the best of three 50 ms windows) and
/// starts the 1 kHz tick on channel 0 (whose interrupt the caller wires to
/// [`tick`]). Returns the TSC frequency in Hz.
pub fn init() -> u64 {
    const WINDOW: u16 = 59_659; // 50 ms of PIT clock
    let cycles = (0..3)
        .map(|_| tsc_cycles_over_pit(WINDOW))
        .min()
        .unwrap_or(1);
    let hz = cycles * PIT_HZ / WINDOW as u64;
    TSC_HZ.store(hz, Ordering::Release);
    // Channel 0, lobyte/hibyte, mode 2 (rate generator), binary.
    outb(PIT_CMD, 0b0011_0100);
    outb(PIT_CH0, TICK_DIVISOR as u8);
    outb(PIT_CH0, (TICK_DIVISOR >> 8) as u8);
    hz
}

/// The calibrated TSC frequency in Hz.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Acquire)
}

/// The tick frequency of channel 0 in mHz (1000.15 Hz is 1_000_152).
pub fn tick_millihz() -> u64 {
    PIT_HZ * 1000 / TICK_DIVISOR as u64
}

/// IRQ 0's handler: the boot code registers it on the PIT's line.
pub fn tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Timer interrupts since the tick started.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Converts TSC cycles to nanoseconds.
pub fn cycles_to_ns(cycles: u64) -> u64 {
    let hz = tsc_hz().max(1);
    (cycles as u128 * 1_000_000_000 / hz as u128) as u64
}

/// Nanoseconds since the TSC started counting (monotonic).
pub fn now_ns() -> u64 {
    cycles_to_ns(rdtsc())
}

/// Busy-waits on the calibrated TSC: the kernel's `DelayNs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delay;

impl DelayNs for Delay {
    fn delay_ns(&mut self, ns: u32) {
        let cycles = (ns as u128 * tsc_hz() as u128 / 1_000_000_000) as u64;
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < cycles {
            core::hint::spin_loop();
        }
    }
}
