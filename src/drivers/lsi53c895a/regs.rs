//! Operating registers of the LSI53C895A, as seen through BAR1 (MMIO, 0x400
//! bytes). Source: LSI53C895A PCI to Ultra2 SCSI Controller Technical Manual
//! (TM), chapter 5 "Registers" (offsets are the same in I/O and memory
//! space); QEMU `hw/scsi/lsi53c895a.c` for what the emulation implements
//! (QEMU 7.2's emulation, measured).

use bitflags::bitflags;

use crate::mmio::{ReadClears, ReadOnly, ReadWrite, Reg};

/// PCI vendor ID (LSI Logic / Symbios).
pub const VENDOR_ID: u16 = 0x1000;
/// PCI device ID of the 53C895A.
pub const DEVICE_ID: u16 = 0x0012;
/// BAR holding the memory-mapped operating registers.
pub const MMIO_BAR: usize = 1;
/// Bytes of the BAR1 register window the driver uses (the BAR is 0x400).
pub const MMIO_SIZE: usize = 0x400;
/// BAR holding the same operating registers in I/O space (0x100 ports):
/// the cheaper doorbell under emulation (QEMU-FACTS.md).
pub const IO_BAR: usize = 0;
/// Ports in the BAR0 window.
pub const IO_SIZE: u16 = 0x100;

/// 0x0C DSTAT: DMA status (TM 5, register 0x0C). Reading clears the bits
/// (unless ISTAT.INTF is set) and is part of acknowledging an interrupt.
pub const DSTAT: Reg<u8, ReadClears> = Reg::at(0x0c);
/// 0x14 ISTAT: interrupt status (TM 5, register 0x14), see [`Istat`].
pub const ISTAT: Reg<u8, ReadWrite> = Reg::at(0x14);
/// 0x15 ISTAT1: interrupt status one (TM 5, register 0x15), see [`Istat1`].
pub const ISTAT1: Reg<u8, ReadOnly> = Reg::at(0x15);
/// 0x1A CTEST2: chip test two (TM 5, register 0x1A). Reading it clears
/// ISTAT.SIGP, so only a script reads it (QEMU `lsi_reg_readb`); the host
/// never does, or it would lose a doorbell.
pub const CTEST2: Reg<u8, ReadClears> = Reg::at(0x1a);
/// 0x2C DSP: DMA SCRIPTS pointer (TM 5, register 0x2C-0x2F). Writing its
/// last byte starts SCRIPTS at that address unless DMODE.MAN is set.
pub const DSP: Reg<u32, ReadWrite> = Reg::at(0x2c);
/// 0x30 DSPS: DMA SCRIPTS pointer save; the second dword of the last
/// instruction fetched (an INT's value).
pub const DSPS: Reg<u32, ReadWrite> = Reg::at(0x30);
/// 0x34 SCRATCHA: 32-bit scratch register A, free for software use.
pub const SCRATCHA: Reg<u32, ReadWrite> = Reg::at(0x34);
/// 0x38 DMODE: DMA mode (TM 5, register 0x38), see [`Dmode`].
pub const DMODE: Reg<u8, ReadWrite> = Reg::at(0x38);
/// 0x39 DIEN: DMA interrupt enable, same bits as DSTAT ([`Dstat`]).
pub const DIEN: Reg<u8, ReadWrite> = Reg::at(0x39);
/// 0x3B DCNTL: DMA control (TM 5, register 0x3B), see [`Dcntl`].
pub const DCNTL: Reg<u8, ReadWrite> = Reg::at(0x3b);
/// 0x42 SIST0: SCSI interrupt status zero; clear on read.
pub const SIST0: Reg<u8, ReadClears> = Reg::at(0x42);
/// 0x43 SIST1: SCSI interrupt status one; clear on read.
pub const SIST1: Reg<u8, ReadClears> = Reg::at(0x43);

bitflags! {
    /// ISTAT bits (TM 5, register 0x14).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Istat: u8 {
        /// Abort the current operation; SCRIPTS stop with DSTAT.ABRT.
        const ABRT = 0x80;
        /// Software reset of the chip (write 1, then 0).
        const SRST = 0x40;
        /// Signal process (wakes a WAIT RESELECT).
        const SIGP = 0x20;
        /// Semaphore, free for software.
        const SEM = 0x10;
        /// Connected to the SCSI bus.
        const CON = 0x08;
        /// Interrupt on the fly: set by INTFLY; write 1 to clear.
        const INTF = 0x04;
        /// A SCSI interrupt is pending (SIST0/SIST1).
        const SIP = 0x02;
        /// A DMA interrupt is pending (DSTAT).
        const DIP = 0x01;
    }
}

bitflags! {
    /// ISTAT1 bits (TM 5, register 0x15).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Istat1: u8 {
        /// Flushing the DMA FIFO.
        const FLSH = 0x04;
        /// SCRIPTS running. In QEMU it stays set while a long script is
        /// paused between its 100-instruction slices (QEMU 7.2).
        const SRUN = 0x02;
        /// SYNC_IRQD: interrupt line disabled.
        const SI = 0x01;
    }
}

bitflags! {
    /// DSTAT and DIEN bits (TM 5, registers 0x0C and 0x39).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Dstat: u8 {
        /// DMA FIFO empty (always read as set in QEMU).
        const DFE = 0x80;
        /// Master data parity error.
        const MDPE = 0x40;
        /// Bus fault: a PCI master cycle ended in error.
        const BF = 0x20;
        /// Aborted through ISTAT.ABRT.
        const ABRT = 0x10;
        /// Single-step interrupt.
        const SSI = 0x08;
        /// SCRIPTS interrupt instruction received (INT).
        const SIR = 0x04;
        /// Illegal instruction detected.
        const IID = 0x01;
    }
}

impl Dstat {
    /// The bits that mean the script stopped on an error.
    pub const ERRORS: Dstat = Dstat::MDPE
        .union(Dstat::BF)
        .union(Dstat::ABRT)
        .union(Dstat::IID);
}

bitflags! {
    /// DMODE bits used here (TM 5, register 0x38).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Dmode: u8 {
        /// Manual start: writing DSP does not start SCRIPTS; DCNTL.STD does.
        const MAN = 0x01;
    }
}

bitflags! {
    /// DCNTL bits used here (TM 5, register 0x3B).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Dcntl: u8 {
        /// Start DMA operation (in manual start mode).
        const STD = 0x04;
    }
}
