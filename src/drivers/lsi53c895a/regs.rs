//! Operating registers of the LSI53C895A, as seen through BAR1 (MMIO,
//! 0x400 bytes). Source: LSI53C895A Technical Manual, chapter 5 (register
//! offsets are the same in I/O and memory space); QEMU `hw/scsi/lsi53c895a.c`
//! for what the emulation implements (QEMU-FACTS.md).

/// PCI vendor ID (LSI Logic / Symbios).
pub const VENDOR_ID: u16 = 0x1000;
/// PCI device ID of the 53C895A.
pub const DEVICE_ID: u16 = 0x0012;
/// BAR holding the memory-mapped operating registers.
pub const MMIO_BAR: usize = 1;

/// 0x14 ISTAT: interrupt status (ABRT, SRST, SIGP, SEM, CON, INTF, SIP, DIP).
pub const ISTAT: usize = 0x14;
/// 0x34 SCRATCHA: 32-bit scratch register A, free for software use.
pub const SCRATCHA: usize = 0x34;
