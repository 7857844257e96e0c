//! Registers of QEMU's `edu` device, BAR0 (1 MiB MMIO; 4- and 8-byte
//! accesses only). Source: QEMU `docs/specs/edu.rst` and `hw/misc/edu.c`.

use crate::mmio::{ReadOnly, ReadWrite, Reg, WriteOnly};

/// Size of BAR0, the register window (1 MiB; 4- and 8-byte accesses only).
pub const MMIO_SIZE: usize = 1 << 20;
/// PCI vendor ID (QEMU).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x11e8;

/// 0x00 RO: identification, `0xRRrr00ed` (major, minor version, 0x00, 0xed).
pub const ID: Reg<u32, ReadOnly> = Reg::at(0x00);
/// The identification value of the QEMU 7.2 device (version 1.0).
pub const ID_VALUE: u32 = 0x0100_00ed;
/// 0x04 RW: liveness check; reads back the bitwise inverse of the last write.
pub const LIVENESS: Reg<u32, ReadWrite> = Reg::at(0x04);
/// 0x08 RW: factorial; writing n starts computing n!, read the result when
/// [`STATUS_COMPUTING`] clears.
pub const FACTORIAL: Reg<u32, ReadWrite> = Reg::at(0x08);
/// 0x20 RW: status, see [`STATUS_COMPUTING`] and [`STATUS_IRQ_FACTORIAL`].
pub const STATUS: Reg<u32, ReadWrite> = Reg::at(0x20);
/// Status bit 0 (RO): a factorial is being computed.
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status bit 7 (RW): raise an interrupt when the factorial is done.
pub const STATUS_IRQ_FACTORIAL: u32 = 0x80;
/// 0x24 RO: interrupt status, the OR of raised interrupt causes.
pub const INTR_STATUS: Reg<u32, ReadOnly> = Reg::at(0x24);
/// 0x60 WO: raise the interrupt causes written.
pub const INTR_RAISE: Reg<u32, WriteOnly> = Reg::at(0x60);
/// 0x64 WO: acknowledge (clear) the interrupt causes written.
pub const INTR_ACK: Reg<u32, WriteOnly> = Reg::at(0x64);
/// Interrupt cause set when a factorial finishes.
pub const INTR_FACTORIAL: u32 = 0x0000_0001;
/// Interrupt cause set when a DMA transfer finishes.
pub const INTR_DMA: u32 = 0x0000_0100;
/// 0x80 RW: DMA source address (64-bit).
pub const DMA_SRC: Reg<u64, ReadWrite> = Reg::at(0x80);
/// 0x88 RW: DMA destination address (64-bit).
pub const DMA_DST: Reg<u64, ReadWrite> = Reg::at(0x88);
/// 0x90 RW: DMA transfer count in bytes (64-bit).
pub const DMA_COUNT: Reg<u64, ReadWrite> = Reg::at(0x90);
/// 0x98 RW: DMA command, see the `DMA_CMD_*` bits.
pub const DMA_CMD: Reg<u64, ReadWrite> = Reg::at(0x98);
/// DMA command bit 0: start the transfer (clears when it completes).
pub const DMA_CMD_START: u64 = 0x01;
/// DMA command bit 1: direction device buffer -> RAM (clear: RAM -> device).
pub const DMA_CMD_TO_RAM: u64 = 0x02;
/// DMA command bit 2: raise [`INTR_DMA`] when the transfer completes.
pub const DMA_CMD_IRQ: u64 = 0x04;
/// Device address of the edu's internal DMA buffer (`DMA_START` in QEMU's
/// `hw/misc/edu.c`).
pub const BUFFER: u64 = 0x40000;
/// Size of that buffer. QEMU 7.2 aborts on a transfer of the whole 4096
/// bytes (an off-by-one in its range check): 4095 is the
/// longest safe transfer.
pub const BUFFER_SIZE: usize = 4096;
/// The DMA mask the device applies unless its `dma_mask` property says
/// otherwise (28 bits; addresses above it are silently truncated).
pub const DEFAULT_DMA_MASK: u64 = (1 << 28) - 1;
