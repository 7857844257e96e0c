//! Hardware interrupts through the two cascaded 8259A PICs of the `pc`
//! machine: remapping, masking, end-of-interrupt, spurious IRQs and a table
//! of handlers that drivers register for their PCI interrupt line.
//!
//! On `pc`, a PCI device's INTx arrives on the ISA line SeaBIOS wrote into
//! config offset 0x3C, and SeaBIOS programs those lines level-triggered in
//! the ELCR (QEMU-FACTS.md, "Machine and interrupts"). A level interrupt
//! must be cleared at the device before the EOI, which is why handlers run
//! before it.

use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;
use x86_64::instructions::port::Port;

use crate::trap::{self, TrapFrame};

/// Master PIC command port (OCW2/OCW3; ICW1).
const PIC1_CMD: u16 = 0x20;
/// Master PIC data port (IMR; ICW2-4).
const PIC1_DATA: u16 = 0x21;
/// Slave PIC command port.
const PIC2_CMD: u16 = 0xa0;
/// Slave PIC data port.
const PIC2_DATA: u16 = 0xa1;
/// First vector of the master PIC's IRQs after remapping (0-31 are exceptions).
pub const PIC1_VECTOR: u8 = 32;
/// OCW2 non-specific end of interrupt.
const EOI: u8 = 0x20;
/// OCW3: the next read of the command port returns the in-service register.
const READ_ISR: u8 = 0x0b;
/// The slave PIC is cascaded on master line 2.
const CASCADE_LINE: u8 = 2;

/// Handlers per line: PCI INTx lines may be shared between devices.
const HANDLERS_PER_LINE: usize = 4;

type Handler = fn();

static HANDLERS: [[AtomicUsize; HANDLERS_PER_LINE]; 16] =
    [const { [const { AtomicUsize::new(0) }; HANDLERS_PER_LINE] }; 16];

/// Interrupts delivered, per line.
static COUNTS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
/// Spurious IRQ 7 / IRQ 15 deliveries (counted, otherwise ignored).
pub static SPURIOUS: AtomicU64 = AtomicU64::new(0);
/// The line being handled plus one, or 0 outside a handler.
static IN_HANDLER: AtomicU8 = AtomicU8::new(0);
/// Serialises read-modify-write of the mask registers.
static MASK_LOCK: Mutex<()> = Mutex::new(());

/// Errors from registering an interrupt handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqError {
    /// The line is not 0-15.
    NoSuchLine,
    /// The line already has the maximum number of handlers.
    LineFull,
}

impl core::fmt::Display for IrqError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            IrqError::NoSuchLine => "no such interrupt line",
            IrqError::LineFull => "too many handlers on this line",
        })
    }
}

impl core::error::Error for IrqError {}

fn outb(port: u16, value: u8) {
    // SAFETY: only the PIC ports above are passed here; writing them has no
    // memory effects.
    unsafe { Port::<u8>::new(port).write(value) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`; reading the PIC ports has no side effects
    // beyond the PIC's own state.
    unsafe { Port::<u8>::new(port).read() }
}

/// Remaps the PICs to vectors 32-47 and masks every line but the cascade.
pub fn init() {
    // ICW1: edge mode default, cascade, ICW4 needed. The ELCR set by SeaBIOS
    // still makes the PCI lines level-triggered.
    outb(PIC1_CMD, 0x11);
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, PIC1_VECTOR);
    outb(PIC2_DATA, PIC1_VECTOR + 8);
    outb(PIC1_DATA, 1 << CASCADE_LINE);
    outb(PIC2_DATA, CASCADE_LINE);
    outb(PIC1_DATA, 0x01);
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, !(1 << CASCADE_LINE));
    outb(PIC2_DATA, 0xff);
    for vector in PIC1_VECTOR..PIC1_VECTOR + 16 {
        trap::register(vector, on_vector);
    }
}

/// Sets or clears `line`'s bit in its PIC's interrupt mask register.
fn set_masked(line: u8, masked: bool) {
    let _guard = MASK_LOCK.lock();
    let (port, bit) = if line < 8 {
        (PIC1_DATA, line)
    } else {
        (PIC2_DATA, line - 8)
    };
    let imr = inb(port);
    outb(
        port,
        if masked {
            imr | (1 << bit)
        } else {
            imr & !(1 << bit)
        },
    );
}

/// Unmasks `line` at the PIC.
pub fn unmask(line: u8) {
    set_masked(line, false);
}

/// Masks `line` at the PIC.
pub fn mask(line: u8) {
    set_masked(line, true);
}

/// Registers `handler` for `line` and unmasks the line. Handlers run with
/// interrupts disabled and must clear their device's interrupt condition.
pub fn register(line: u8, handler: Handler) -> Result<(), IrqError> {
    let slots = HANDLERS.get(line as usize).ok_or(IrqError::NoSuchLine)?;
    let address = handler as usize;
    let free = slots.iter().find(|slot| {
        slot.compare_exchange(0, address, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    });
    if free.is_none() {
        return Err(IrqError::LineFull);
    }
    unmask(line);
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
    if line != 0 && line != CASCADE_LINE && slots.iter().all(|s| s.load(Ordering::Acquire) == 0) {
        mask(line);
    }
}

/// How many interrupts `line` has delivered since boot.
pub fn count(line: u8) -> u64 {
    COUNTS
        .get(line as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

fn in_service(cmd_port: u16) -> u8 {
    outb(cmd_port, READ_ISR);
    inb(cmd_port)
}

fn end_of_interrupt(line: u8) {
    if line >= 8 {
        outb(PIC2_CMD, EOI);
    }
    outb(PIC1_CMD, EOI);
}

/// Sends the EOI for a handler that was abandoned by a recovery (a panic or
/// fault inside it), so its line is not left blocked at the PIC.
pub fn abandon_handlers() {
    let line = IN_HANDLER.swap(0, Ordering::AcqRel);
    if line != 0 {
        end_of_interrupt(line - 1);
    }
}

/// Handles IRQ `line`.
fn dispatch(line: u8, frame: &mut TrapFrame) {
    // A spurious IRQ 7/15 is one whose in-service bit is clear: no EOI for
    // it, except to the master for the slave's (8259A datasheet, "Spurious
    // interrupts").
    if line == 7 && in_service(PIC1_CMD) & 0x80 == 0 {
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if line == 15 && in_service(PIC2_CMD) & 0x80 == 0 {
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
        outb(PIC1_CMD, EOI);
        return;
    }
    COUNTS[line as usize].fetch_add(1, Ordering::Relaxed);
    IN_HANDLER.store(line + 1, Ordering::Release);
    for slot in &HANDLERS[line as usize] {
        let address = slot.load(Ordering::Acquire);
        if address != 0 {
            // SAFETY: non-zero slots hold a `Handler` stored by `register`.
            let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(address) };
            handler();
        }
    }
    IN_HANDLER.store(0, Ordering::Release);
    end_of_interrupt(line);
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
static AFTER_EOI: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

/// Sets `line`'s after-EOI hook.
pub fn after_eoi(line: u8, hook: AfterEoi) {
    if let Some(slot) = AFTER_EOI.get(line as usize) {
        slot.store(hook as usize, Ordering::Release);
    }
}

/// The trap layer's handler for the PIC's vectors.
fn on_vector(frame: &mut TrapFrame, _cr2: u64) -> bool {
    match frame.vector.checked_sub(PIC1_VECTOR as u64) {
        Some(line) if line < 16 => {
            dispatch(line as u8, frame);
            true
        }
        _ => false,
    }
}
