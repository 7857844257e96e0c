//! Hardware interrupts through the I/O APIC and the local APICs: the ISA
//! and PCI INTx lines (by the number drivers read from config offset 0x3C),
//! vectors for MSI, a table of handlers per line, end-of-interrupt, and the
//! two 8259A PICs remapped and masked.
//!
//! A line is an ISA IRQ number. The MADT's interrupt source overrides say
//! which global system interrupt (GSI) of which I/O APIC carries it, and
//! how it signals (QEMU wires the PIT's IRQ 0 to GSI 2); without one, the
//! line is the GSI. SeaBIOS routes each PCI device's INTx to the ISA line
//! it writes into config offset 0x3C, on `pc` and on `q35` (where the same
//! interrupt also reaches GSI 16 + PIRQ, which stays masked:
//! QEMU-FACTS.md, "Machine and interrupts"). A PCI line is level-triggered
//! and may be shared, so its handlers run before the EOI and must clear
//! their device's condition: the EOI re-arms the pin.
//!
//! Every line goes to the boot CPU. MSI vectors go wherever the device's
//! message names (see [`msi_message`]).

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use x86_64::instructions::port::Port;

use crate::acpi::{Madt, SourceOverride};
use crate::apic::{self, MAX_CPUS};
use crate::ioapic::{self, Signal};
use crate::trap::{self, TrapFrame};

/// Master PIC command port (ICW1).
const PIC1_CMD: u16 = 0x20;
/// Master PIC data port (IMR; ICW2-4).
const PIC1_DATA: u16 = 0x21;
/// Slave PIC command port.
const PIC2_CMD: u16 = 0xa0;
/// Slave PIC data port.
const PIC2_DATA: u16 = 0xa1;
/// The PICs' vectors after remapping: 32-47, clear of the exceptions, so a
/// stray 8259 interrupt is recognisable (they are masked).
const PIC_VECTOR: u8 = 32;
/// The slave PIC is cascaded on master line 2.
const CASCADE_LINE: u8 = 2;
/// The vector of line n is `LINE_VECTOR + n`.
const LINE_VECTOR: u8 = 48;
/// ISA lines (0-15).
const LINES: usize = 16;
/// Vectors handed out for MSI: 0x90-0xef (below the APIC timer's 0xf0,
/// above the system call's 0x80).
const MSI_VECTORS: core::ops::Range<u8> = 0x90..0xf0;

/// Handlers per line: PCI INTx lines may be shared between devices.
const HANDLERS_PER_LINE: usize = 4;

/// A line's or an MSI vector's handler; it runs with interrupts off.
pub type Handler = fn();

static HANDLERS: [[AtomicUsize; HANDLERS_PER_LINE]; LINES] =
    [const { [const { AtomicUsize::new(0) }; HANDLERS_PER_LINE] }; LINES];
/// Interrupts delivered, per line.
static COUNTS: [AtomicU64; LINES] = [const { AtomicU64::new(0) }; LINES];
/// Interrupts from a masked 8259 (counted, otherwise ignored).
pub static SPURIOUS: AtomicU64 = AtomicU64::new(0);
/// Per CPU: a handler is running (cleared on its EOI).
static IN_HANDLER: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// The MADT's interrupt source overrides (at most one per ISA line).
static OVERRIDES: spin::Once<[Option<SourceOverride>; LINES]> = spin::Once::new();
/// MSI handlers by vector (a `Handler` as an address; 0: free).
static MSI_HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
/// MSI deliveries, by vector (from the pool's first) and by the CPU that
/// took them.
static MSI_COUNTS: [[AtomicU64; MAX_CPUS]; MSI_VECTORS.end as usize - MSI_VECTORS.start as usize] =
    [const { [const { AtomicU64::new(0) }; MAX_CPUS] };
        MSI_VECTORS.end as usize - MSI_VECTORS.start as usize];

/// Errors from registering an interrupt handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqError {
    /// The line is not 0-15, or no I/O APIC carries it.
    NoSuchLine,
    /// The line already has the maximum number of handlers.
    LineFull,
    /// Every MSI vector is taken.
    NoVector,
    /// The CPU the message would go to is not running.
    NoSuchCpu,
}

impl core::fmt::Display for IrqError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            IrqError::NoSuchLine => "no such interrupt line",
            IrqError::LineFull => "too many handlers on this line",
            IrqError::NoVector => "no MSI vector left",
            IrqError::NoSuchCpu => "no such CPU",
        })
    }
}

impl core::error::Error for IrqError {}

fn outb(port: u16, value: u8) {
    // SAFETY: only the PIC ports above are passed here; writing them has no
    // memory effects.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Remaps the 8259s out of the exceptions' way and masks them, takes the
/// I/O APICs (every pin masked) and enables the boot CPU's local APIC.
pub fn init(madt: &Madt) {
    // ICW1 (cascade, ICW4 needed), ICW2 (vectors), ICW3 (cascade wiring),
    // ICW4 (8086 mode), then every line masked: the I/O APIC carries them.
    outb(PIC1_CMD, 0x11);
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, PIC_VECTOR);
    outb(PIC2_DATA, PIC_VECTOR + 8);
    outb(PIC1_DATA, 1 << CASCADE_LINE);
    outb(PIC2_DATA, CASCADE_LINE);
    outb(PIC1_DATA, 0x01);
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xff);
    outb(PIC2_DATA, 0xff);
    for vector in PIC_VECTOR..PIC_VECTOR + 16 {
        trap::register(vector, on_pic_vector);
    }
    OVERRIDES.call_once(|| {
        let mut table = [None; LINES];
        for o in &madt.overrides {
            if let Some(slot) = table.get_mut(o.source as usize) {
                *slot = Some(*o);
            }
        }
        table
    });
    ioapic::init(&madt.io_apics);
    apic::init(madt.lapic_base);
    for line in 0..LINES as u8 {
        trap::register(LINE_VECTOR + line, on_line_vector);
    }
    for vector in MSI_VECTORS {
        trap::register(vector, on_msi_vector);
    }
}

/// How an ISA or PCI line is wired: its GSI and signal, from the MADT's
/// override if there is one, otherwise the bus's convention (ISA: edge,
/// active high; PCI: level, and active high as QEMU's chipsets present it).
fn wiring(line: u8, pci: bool) -> (u32, Signal) {
    let found = OVERRIDES
        .get()
        .and_then(|table| table.get(line as usize).copied().flatten());
    let mut signal = Signal {
        level: pci,
        active_low: false,
    };
    let Some(o) = found else {
        return (line as u32, signal);
    };
    match o.flags & 0b11 {
        0b01 => signal.active_low = false,
        0b11 => signal.active_low = true,
        _ => {}
    }
    match (o.flags >> 2) & 0b11 {
        0b01 => signal.level = false,
        0b11 => signal.level = true,
        _ => {}
    }
    (o.gsi, signal)
}

/// Masks or unmasks `line` at its I/O APIC.
fn set_masked(line: u8, masked: bool) {
    let (gsi, _) = wiring(line, false);
    ioapic::set_masked(gsi, masked);
}

/// Registers `handler` for the PCI INTx line `line` (config offset 0x3C),
/// routes it level-triggered to the boot CPU and unmasks it. Handlers must
/// clear their device's interrupt condition.
pub fn register(line: u8, handler: Handler) -> Result<(), IrqError> {
    register_as(line, true, handler)
}

/// Registers `handler` for the ISA line `line` (edge-triggered unless the
/// MADT says otherwise) and unmasks it.
pub fn register_isa(line: u8, handler: Handler) -> Result<(), IrqError> {
    register_as(line, false, handler)
}

fn register_as(line: u8, pci: bool, handler: Handler) -> Result<(), IrqError> {
    let slots = HANDLERS.get(line as usize).ok_or(IrqError::NoSuchLine)?;
    let (gsi, signal) = wiring(line, pci);
    if !ioapic::has(gsi) {
        return Err(IrqError::NoSuchLine);
    }
    let address = handler as usize;
    let first = slots.iter().all(|s| s.load(Ordering::Acquire) == 0);
    let free = slots.iter().find(|slot| {
        slot.compare_exchange(0, address, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    });
    if free.is_none() {
        return Err(IrqError::LineFull);
    }
    if first {
        let boot_cpu = apic::apic_id(0).unwrap_or(0);
        ioapic::route(gsi, LINE_VECTOR + line, signal, boot_cpu);
    }
    set_masked(line, false);
    Ok(())
}

/// Removes `handler` from `line`, masking the line if none is left.
pub fn unregister(line: u8, handler: Handler) {
    let Some(slots) = HANDLERS.get(line as usize) else {
        return;
    };
    for slot in slots {
        let _ = slot.compare_exchange(handler as usize, 0, Ordering::AcqRel, Ordering::Acquire);
    }
    if slots.iter().all(|s| s.load(Ordering::Acquire) == 0) {
        set_masked(line, true);
    }
}

/// How many interrupts `line` has delivered since boot.
pub fn count(line: u8) -> u64 {
    COUNTS
        .get(line as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// An MSI message: what the device writes, and where, to interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// The message address: 0xfee00000 with the destination APIC ID in
    /// bits 19-12, physical destination mode (SDM Vol. 3A §10.11.1).
    pub address: u64,
    /// The message data: the vector in bits 7-0, fixed delivery, edge
    /// (SDM §10.11.2).
    pub data: u16,
    /// The vector, for [`free_msi`].
    pub vector: u8,
}

/// Takes a free vector for `handler` and says what a device must write to
/// interrupt CPU `cpu` on it. The handler runs on that CPU, with interrupts
/// off, before the EOI.
pub fn allocate_msi(cpu: usize, handler: Handler) -> Result<MsiMessage, IrqError> {
    let apic_id = apic::apic_id(cpu).ok_or(IrqError::NoSuchCpu)?;
    let vector = MSI_VECTORS
        .clone()
        .find(|&v| {
            MSI_HANDLERS[v as usize]
                .compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .ok_or(IrqError::NoVector)?;
    Ok(MsiMessage {
        address: 0xfee0_0000 | (apic_id as u64) << 12,
        data: vector as u16,
        vector,
    })
}

/// How many times CPU `cpu` has taken MSI vector `vector`.
pub fn msi_count(vector: u8, cpu: usize) -> u64 {
    vector
        .checked_sub(MSI_VECTORS.start)
        .and_then(|i| MSI_COUNTS.get(i as usize)?.get(cpu))
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// Gives back an MSI vector; the device must no longer send it.
pub fn free_msi(vector: u8) {
    if MSI_VECTORS.contains(&vector) {
        MSI_HANDLERS[vector as usize].store(0, Ordering::Release);
    }
}

/// Sends the EOI for a handler that was abandoned by a recovery (a panic or
/// fault inside it), so its line is not left blocked at the I/O APIC.
pub fn abandon_handlers() {
    if IN_HANDLER[apic::cpu()].swap(false, Ordering::AcqRel) {
        apic::eoi();
    }
}

/// Handles `line`.
fn dispatch(line: u8, frame: &mut TrapFrame) {
    COUNTS[line as usize].fetch_add(1, Ordering::Relaxed);
    let in_handler = &IN_HANDLER[apic::cpu()];
    in_handler.store(true, Ordering::Release);
    for slot in &HANDLERS[line as usize] {
        let address = slot.load(Ordering::Acquire);
        if address != 0 {
            // SAFETY: non-zero slots hold a `Handler` stored by `register`.
            let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(address) };
            handler();
        }
    }
    in_handler.store(false, Ordering::Release);
    apic::eoi();
    let hook = AFTER_EOI[line as usize].load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: non-zero slots hold an `AfterEoi` stored by `after_eoi`.
        let hook = unsafe { core::mem::transmute::<usize, AfterEoi>(hook) };
        hook(frame);
    }
}

/// A hook that runs after a line's EOI, with the interrupted state: it may
/// leave the interrupt by another path (the watchdog ends a hung test).
pub type AfterEoi = fn(&mut TrapFrame);

/// Per-line after-EOI hooks (an `AfterEoi` as an address; 0: none).
static AFTER_EOI: [AtomicUsize; LINES] = [const { AtomicUsize::new(0) }; LINES];

/// Sets `line`'s after-EOI hook.
pub fn after_eoi(line: u8, hook: AfterEoi) {
    if let Some(slot) = AFTER_EOI.get(line as usize) {
        slot.store(hook as usize, Ordering::Release);
    }
}

/// The trap layer's handler for the lines' vectors.
fn on_line_vector(frame: &mut TrapFrame, _cr2: u64) -> bool {
    match frame.vector.checked_sub(LINE_VECTOR as u64) {
        Some(line) if line < LINES as u64 => {
            dispatch(line as u8, frame);
            true
        }
        _ => false,
    }
}

/// The trap layer's handler for the MSI vectors.
fn on_msi_vector(frame: &mut TrapFrame, _cr2: u64) -> bool {
    let address = MSI_HANDLERS
        .get(frame.vector as usize)
        .map_or(0, |h| h.load(Ordering::Acquire));
    let cpu = apic::cpu();
    if let Some(i) = (frame.vector as u8).checked_sub(MSI_VECTORS.start) {
        MSI_COUNTS[i as usize][cpu].fetch_add(1, Ordering::Relaxed);
    }
    let in_handler = &IN_HANDLER[cpu];
    in_handler.store(true, Ordering::Release);
    if address != 0 {
        // SAFETY: non-zero slots hold a `Handler` stored by `allocate_msi`.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(address) };
        handler();
    }
    in_handler.store(false, Ordering::Release);
    apic::eoi();
    true
}

/// The trap layer's handler for the 8259s' vectors: with every line masked
/// only a spurious IRQ 7 or 15 can arrive from the 8259s, and it takes no
/// EOI; a device's interrupt message on one of these vectors does.
fn on_pic_vector(frame: &mut TrapFrame, _cr2: u64) -> bool {
    SPURIOUS.fetch_add(1, Ordering::Relaxed);
    apic::eoi_if_in_service(frame.vector as u8);
    true
}
