//! Fault records (spec 7.3, 11.4.9, 11.4.14): the DMA a unit refused, read
//! and cleared from its fault recording registers, handed to whoever asks
//! (or kept for the device's own channel), and the fault event that
//! announces them.

use super::regs::{self, Fectl, Frcd, Fsts};
use super::{Iommu, SourceId};
use crate::mm::traits::{TableAllocator, TableMapper};
use crate::mmio::Registers;

/// Faults of other devices [`Iommu::take_fault_of`] read from the
/// registers while looking for one device's, kept for their owners.
pub const UNCLAIMED_FAULTS: usize = 16;

/// Faults read from the registers and not yet taken, oldest first.
pub(super) struct Unclaimed {
    pub(super) faults: [Option<DmaFault>; UNCLAIMED_FAULTS],
    pub(super) len: usize,
}

impl Unclaimed {
    /// Removes and returns the oldest fault `wanted` accepts.
    fn take(&mut self, wanted: impl Fn(&DmaFault) -> bool) -> Option<DmaFault> {
        let at = self.faults[..self.len]
            .iter()
            .position(|f| f.as_ref().is_some_and(&wanted))?;
        let fault = self.faults[at].take();
        self.faults[at..self.len].rotate_left(1);
        self.len -= 1;
        fault
    }
}

/// A DMA access the unit refused, as its fault recording register held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// The device that made the access.
    pub source: SourceId,
    /// The page of the address it used (an IOVA), 4 KiB-aligned.
    pub address: u64,
    /// Whether it was a write (else a read).
    pub write: bool,
    /// The VT-d fault reason (5: write not allowed, 6: read not allowed,
    /// 2: no context entry, ...).
    pub reason: u8,
}

impl<R: Registers, M: TableMapper, A: TableAllocator> Iommu<R, M, A> {
    /// Sends a fault event, the MSI message `address`/`data` (on x86,
    /// 0xfee00000 with the target's APIC ID in bits 19:12, and the vector),
    /// each time a fault is recorded while none is pending (spec 7.3.1,
    /// 11.4.9.2-5). The handler reads the faults with
    /// [`Iommu::take_fault`] until it answers `None`: only then does the
    /// next fault raise an event again.
    ///
    /// `unsafe` since issue 17 (it was safe): the unit writes `data` to
    /// `address` as a DMA write that no domain checks.
    ///
    /// # Safety
    /// `address` must be one the platform takes as an interrupt message,
    /// never as memory (on x86, within 0xfee00000..=0xfeefffff), and
    /// `data` a fixed or lowest-priority message to a vector (32 or above)
    /// whose handler tolerates being run at any time.
    ///
    /// ```compile_fail,E0133
    /// # use dmaengine::iommu::Iommu;
    /// # use dmaengine::mm::traits::{TableAllocator, TableMapper};
    /// # use dmaengine::mmio::Registers;
    /// fn aim<R: Registers, M: TableMapper, A: TableAllocator>(unit: &Iommu<R, M, A>) {
    ///     // Safe code can no longer have the unit write 4 bytes anywhere.
    ///     unit.enable_fault_interrupts(0x1000, 0x5a5a_5a5a);
    /// }
    /// ```
    pub unsafe fn enable_fault_interrupts(&self, address: u64, data: u32) {
        self.regs.write32(regs::FEDATA, data);
        self.regs.write32(regs::FEADDR, address as u32 & !0b11);
        self.regs.write32(regs::FEUADDR, (address >> 32) as u32);
        self.regs.write32(regs::FECTL, 0);
    }

    /// Masks fault events again (faults are still recorded, for
    /// [`Iommu::take_fault`]).
    pub fn disable_fault_interrupts(&self) {
        self.regs.write32(regs::FECTL, Fectl::IM.bits());
    }

    /// The oldest recorded fault, or `None`: first those
    /// [`Iommu::take_fault_of`] kept for other devices, then the registers'
    /// (cleared as they are read).
    pub fn take_fault(&self) -> Option<DmaFault> {
        self.unclaimed
            .borrow_mut()
            .take(|_| true)
            .or_else(|| self.read_fault())
    }

    /// The oldest recorded fault of `device`, or `None`. Faults of other
    /// devices read from the registers on the way are kept (up to
    /// [`UNCLAIMED_FAULTS`]) for [`Iommu::take_fault_of`] with their
    /// device, or [`Iommu::take_fault`]. While that many wait for owners
    /// that do not ask, it reads no more registers (it answers `None`) and
    /// the unit, its records full, drops new faults (FSTS.PFO): a kernel
    /// that also services faults nobody claims drains them with
    /// `take_fault`.
    pub fn take_fault_of(&self, device: SourceId) -> Option<DmaFault> {
        let mut unclaimed = self.unclaimed.borrow_mut();
        if let Some(fault) = unclaimed.take(|f| f.source == device) {
            return Some(fault);
        }
        while unclaimed.len < UNCLAIMED_FAULTS {
            let fault = self.read_fault()?;
            if fault.source == device {
                return Some(fault);
            }
            let at = unclaimed.len;
            unclaimed.faults[at] = Some(fault);
            unclaimed.len = at + 1;
        }
        None
    }

    /// The first fault in the recording registers, cleared, or `None`.
    fn read_fault(&self) -> Option<DmaFault> {
        if !Fsts::from_bits_retain(self.regs.read32(regs::FSTS)).contains(Fsts::PPF) {
            return None;
        }
        for i in 0..self.nfr {
            let at = self.frcd + 16 * i;
            let high = self.regs.read64(at + 8);
            if !Frcd::from_bits_retain(high).contains(Frcd::F) {
                continue;
            }
            let low = self.regs.read64(at);
            // Writing F back (1) clears the record.
            self.regs.write64(at + 8, Frcd::F.bits());
            self.regs.write32(regs::FSTS, Fsts::PFO.bits());
            return Some(DmaFault {
                source: SourceId::from_raw(regs::frcd_source(high)),
                address: low & !0xfff,
                write: !Frcd::from_bits_retain(high).contains(Frcd::T),
                reason: regs::frcd_reason(high),
            });
        }
        None
    }
}

impl<R: Registers, M: TableMapper, A: TableAllocator> crate::engine::FaultSource
    for Iommu<R, M, A>
{
    fn take_fault_of(&self, device: SourceId) -> Option<DmaFault> {
        Iommu::take_fault_of(self, device)
    }
}
