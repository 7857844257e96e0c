//! The I/O APICs: each turns its pins (global system interrupts, GSIs,
//! from its base up) into messages to a local APIC, one redirection entry
//! per pin.
//!
//! The registers are reached indirectly: the register's index is written
//! to IOREGSEL (offset 0) and its value read or written through IOWIN
//! (offset 0x10). Sources: Intel 82093AA I/O APIC datasheet §3.1 (IOREGSEL,
//! IOWIN), §3.2.2 (IOAPICVER), §3.2.4 (the redirection table); ACPI 6.5
//! §5.2.12.3 and §5.2.12.5 (where the pins are and what ISA IRQs map to).

use alloc::vec::Vec;

use spin::Mutex;

use crate::acpi::IoApicEntry;
use crate::mem::{PAGE_SIZE, device_window};

/// IOREGSEL: the index of the register IOWIN reaches.
const IOREGSEL: usize = 0x00;
/// IOWIN: the selected register's value.
const IOWIN: usize = 0x10;
/// IOAPICVER: the highest redirection entry's index in bits 23-16.
const IOAPICVER: u32 = 0x01;
/// The first redirection entry's low half; entry n is at 0x10 + 2n (low)
/// and 0x11 + 2n (high, the destination APIC ID in bits 31-24).
const REDIRECTION: u32 = 0x10;
/// Redirection bit 13: the pin is active low.
const ACTIVE_LOW: u32 = 1 << 13;
/// Redirection bit 15: the pin is level-triggered (remote IRR then holds
/// it until the EOI).
const LEVEL: u32 = 1 << 15;
/// Redirection bit 16: the pin is masked.
const MASKED: u32 = 1 << 16;

/// How a pin signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    /// Level-triggered (PCI INTx) rather than edge (ISA).
    pub level: bool,
    /// Asserted low rather than high.
    pub active_low: bool,
}

struct Unit {
    /// IOREGSEL's virtual address (direct map, uncached: not RAM).
    base: usize,
    gsi_base: u32,
    pins: u32,
}

impl Unit {
    fn read(&self, register: u32) -> u32 {
        // SAFETY: `base` is the direct-map address of an I/O APIC's
        // register window the MADT listed; IOREGSEL and IOWIN are its two
        // 32-bit registers. The lock in `UNITS` keeps the select-then-access
        // pair whole.
        unsafe {
            ((self.base + IOREGSEL) as *mut u32).write_volatile(register);
            ((self.base + IOWIN) as *const u32).read_volatile()
        }
    }

    fn write(&self, register: u32, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            ((self.base + IOREGSEL) as *mut u32).write_volatile(register);
            ((self.base + IOWIN) as *mut u32).write_volatile(value);
        }
    }
}

static UNITS: Mutex<Vec<Unit>> = Mutex::new(Vec::new());

/// Takes the I/O APICs the MADT lists and masks every pin.
pub fn init(entries: &[IoApicEntry]) {
    let mut units = UNITS.lock();
    for entry in entries {
        // A unit the direct map does not map as device memory is left out:
        // its pins stay unrouted.
        let Some(window) = device_window(entry.address, PAGE_SIZE) else {
            continue;
        };
        let unit = Unit {
            base: window.as_ptr() as usize,
            gsi_base: entry.gsi_base,
            pins: 0,
        };
        let pins = ((unit.read(IOAPICVER) >> 16) & 0xff) + 1;
        let unit = Unit { pins, ..unit };
        for pin in 0..pins {
            unit.write(REDIRECTION + 2 * pin, MASKED);
        }
        units.push(unit);
    }
}

/// Runs `f` with the I/O APIC and pin that carry `gsi`.
/// Interrupts are off meanwhile, so a handler on this CPU never waits for
/// the lock its own CPU holds.
fn with_pin<R>(gsi: u32, f: impl FnOnce(&Unit, u32) -> R) -> Option<R> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let units = UNITS.lock();
        let unit = units
            .iter()
            .find(|u| gsi >= u.gsi_base && gsi - u.gsi_base < u.pins)?;
        Some(f(unit, gsi - unit.gsi_base))
    })
}

/// Whether an I/O APIC carries `gsi`.
pub fn has(gsi: u32) -> bool {
    with_pin(gsi, |_, _| ()).is_some()
}

/// Sends `gsi` as `vector` (fixed delivery) to the CPU with APIC ID
/// `apic_id`, signalled as `signal`, masked until [`set_masked`].
pub fn route(gsi: u32, vector: u8, signal: Signal, apic_id: u32) -> bool {
    with_pin(gsi, |unit, pin| {
        let mut low = MASKED | vector as u32;
        if signal.level {
            low |= LEVEL;
        }
        if signal.active_low {
            low |= ACTIVE_LOW;
        }
        // Masked while the destination changes, so no message goes to a
        // half-written entry.
        unit.write(REDIRECTION + 2 * pin, low);
        unit.write(REDIRECTION + 2 * pin + 1, apic_id << 24);
    })
    .is_some()
}

/// Masks or unmasks `gsi`.
pub fn set_masked(gsi: u32, masked: bool) {
    with_pin(gsi, |unit, pin| {
        let low = unit.read(REDIRECTION + 2 * pin);
        let low = if masked { low | MASKED } else { low & !MASKED };
        unit.write(REDIRECTION + 2 * pin, low);
    });
}
