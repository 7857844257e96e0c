//! The machine the kernel runs on: entry, boot information, descriptor
//! tables, traps, interrupt controllers, timers, the other CPUs, PCI, ACPI,
//! the serial console, physical memory, fault recovery (`recover::catch`)
//! and the seeded randomness. Nothing here knows about DMA.

pub mod acpi;
pub mod apic;
pub mod entry;
pub mod exit;
pub mod gdt;
pub mod ioapic;
pub mod irq;
pub mod mem;
pub mod pci;
pub mod pvh;
pub mod recover;
pub mod rng;
pub mod serial;
pub mod smp;
pub mod time;
pub mod trap;
