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

/// Devices a unit remembers individually for [`DmaFault::is_lost`]
/// reports: those owed one (a fault of theirs went elsewhere) and, once
/// faults have been lost, those already told.
pub const OWED_DEVICES: usize = 32;

/// Faults read from the registers and not yet taken, oldest first, and
/// which devices are owed a report of lost faults.
pub(super) struct Unclaimed {
    pub(super) faults: [Option<DmaFault>; UNCLAIMED_FAULTS],
    pub(super) len: usize,
    /// Times faults were lost whose owner nobody knows (FSTS.PFO, or no
    /// room to remember who was owed): every device that has not been told
    /// since is owed a report. 64 bits, so it never wraps: back at 0,
    /// every device absent from `told` would read as told.
    pub(super) lost: u64,
    /// Devices with the `lost` they were last told of; a device not here
    /// was told of 0. A device is owed a report while its count differs
    /// from `lost`.
    pub(super) told: [Option<(SourceId, u64)>; OWED_DEVICES],
    /// Slots of `told` in use: while none is and nothing was lost, no
    /// device is owed, and a poll that finds no fault looks no further.
    pub(super) named: usize,
}

impl Unclaimed {
    /// Nothing kept, nothing lost.
    pub(super) const fn new() -> Unclaimed {
        Unclaimed {
            faults: [None; UNCLAIMED_FAULTS],
            len: 0,
            lost: 0,
            told: [None; OWED_DEVICES],
            named: 0,
        }
    }

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

    /// Keeps `fault` for its owner. With no room, the oldest kept fault
    /// makes way, and its owner is owed a report instead.
    fn keep(&mut self, fault: DmaFault) {
        if self.len == UNCLAIMED_FAULTS
            && let Some(oldest) = self.take(|_| true)
        {
            self.owe(oldest.source);
        }
        self.faults[self.len] = Some(fault);
        self.len += 1;
    }

    fn slot(&self, device: SourceId) -> Option<usize> {
        self.told
            .iter()
            .position(|t| t.is_some_and(|(d, _)| d == device))
    }

    fn owed(&self, device: SourceId) -> bool {
        if self.lost == 0 && self.named == 0 {
            return false;
        }
        let told = self
            .slot(device)
            .and_then(|at| self.told[at])
            .map_or(0, |t| t.1);
        told != self.lost
    }

    /// A slot whose device, dropped, stays owed or not as it is: an
    /// empty one, else one that reads as absence does (absent devices are
    /// owed exactly when `lost` is not 0).
    fn free_slot(&self) -> Option<usize> {
        let absent_alike = |t: &Option<(SourceId, u64)>| match *t {
            None => true,
            Some((_, told)) => (told != self.lost) == (self.lost != 0),
        };
        self.told.iter().position(absent_alike)
    }

    /// Names `entry` in slot `at`.
    fn set(&mut self, at: usize, entry: (SourceId, u64)) {
        if self.told[at].is_none() {
            self.named += 1;
        }
        self.told[at] = Some(entry);
    }

    /// Makes `device`'s next [`Iommu::take_fault_of`] report lost faults.
    fn owe(&mut self, device: SourceId) {
        let owed = self.lost.wrapping_sub(1);
        if let Some(at) = self.slot(device) {
            self.set(at, (device, owed));
        } else if self.lost == 0 {
            match self.free_slot() {
                Some(at) => self.set(at, (device, owed)),
                // No room to name it: every device is owed one instead.
                None => self.lost = 1,
            }
        }
        // Absent while `lost` is not 0: already owed.
    }

    /// Records that `device` has been told of every loss so far.
    fn tell(&mut self, device: SourceId) {
        if let Some(at) = self.slot(device) {
            if self.lost == 0 {
                // Told of 0 reads as absence: the slot is free again.
                self.told[at] = None;
                self.named -= 1;
            } else {
                self.set(at, (device, self.lost));
            }
            return;
        }
        // `lost` is not 0 (`device` was owed, and absent). A free slot
        // costs nobody anything; failing that, a device told already
        // gives way and is told once more (a spurious report, never a
        // missed one).
        let at = self.free_slot().unwrap_or(0);
        self.set(at, (device, self.lost));
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

impl DmaFault {
    /// The address of a report that faults were lost
    /// ([`DmaFault::is_lost`]): the last page of the 64-bit space, past
    /// every IOVA a unit translates (at most 57 bits), so a channel pins
    /// it on no request's page and fails its first outstanding request.
    pub const LOST_ADDRESS: u64 = !0xfff;

    /// A report, made for `device`, that some of its faults may have
    /// been lost.
    pub(super) const fn lost(device: SourceId) -> DmaFault {
        DmaFault {
            source: device,
            address: DmaFault::LOST_ADDRESS,
            write: true,
            reason: 0,
        }
    }

    /// Whether this is no recorded fault but a report that faults of the
    /// device may have been lost ([`Iommu::take_fault_of`]): its address
    /// is [`DmaFault::LOST_ADDRESS`] and its reason 0 (a reason VT-d does
    /// not use).
    pub fn is_lost(&self) -> bool {
        self.address == DmaFault::LOST_ADDRESS && self.reason == 0
    }
}

impl<R: Registers, M: TableMapper, A: TableAllocator> Iommu<R, M, A> {
    /// Sends a fault event, the MSI message `address`/`data` (on x86,
    /// 0xfee00000 with the target's APIC ID in bits 19:12, and the vector),
    /// each time a fault is recorded while none is pending (spec 7.3.1,
    /// 11.4.9.2-5). The handler reads the faults with
    /// [`Iommu::take_fault`] until it answers `None` (only then does the
    /// next fault raise an event again), then wakes the channels with a
    /// fault hook on the unit: each is owed a report of every fault of its
    /// device the handler took ([`Iommu::take_fault_of`]).
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

    /// A recorded fault, or `None`: first those [`Iommu::take_fault_of`]
    /// kept for other devices, oldest first, then the registers' (cleared
    /// as they are read), from the record FSTS.FRI names. That is the
    /// oldest only until the unit's round robin wraps past a record read
    /// and cleared before it: FRI moves only when the unit sets PPF, so
    /// the order is not guaranteed (a channel's hook pins the earliest
    /// request among all the faults it drains, whatever their order). A fault taken here is its device's
    /// still: the device's next [`Iommu::take_fault_of`] reports a lost
    /// fault ([`DmaFault::is_lost`]), so a channel whose hook waited for it
    /// calls no request complete that it may have hit.
    pub fn take_fault(&self) -> Option<DmaFault> {
        let mut unclaimed = self.unclaimed.borrow_mut();
        let fault = unclaimed
            .take(|_| true)
            .or_else(|| self.read_fault(&mut unclaimed))?;
        unclaimed.owe(fault.source);
        Some(fault)
    }

    /// A recorded fault of `device`, or `None` (in the order of
    /// [`Iommu::take_fault`]). Faults of other
    /// devices read from the registers on the way are kept (up to
    /// [`UNCLAIMED_FAULTS`]) for [`Iommu::take_fault_of`] with their
    /// device, or [`Iommu::take_fault`]; when that many wait, the oldest
    /// makes way and its device is owed a report instead, as for a fault
    /// `take_fault` took.
    ///
    /// Faults the unit could not record (FSTS.PFO: all its records held
    /// faults nobody had read) belong to no known device, so from then on
    /// every device's next call reports them, once, after its recorded
    /// faults: a fault with [`DmaFault::is_lost`], whose address no request
    /// touches, which a channel's hook pins on its first outstanding
    /// request (`BusFault`). This favours soundness over availability: a
    /// device that faults faster than its faults are read overflows the
    /// records, and every other device's next call then reports a lost
    /// fault too (each time it happens), failing a request of each
    /// channel with a hook; read faults promptly (an interrupt handler).
    /// The unit remembers [`OWED_DEVICES`] devices by name; with more
    /// calling this after a loss, some are told more than once, on every
    /// call while the table stays full (spurious reports, never a missed
    /// one).
    pub fn take_fault_of(&self, device: SourceId) -> Option<DmaFault> {
        let mut unclaimed = self.unclaimed.borrow_mut();
        if let Some(fault) = unclaimed.take(|f| f.source == device) {
            return Some(fault);
        }
        while let Some(fault) = self.read_fault(&mut unclaimed) {
            if fault.source == device {
                return Some(fault);
            }
            unclaimed.keep(fault);
        }
        if unclaimed.owed(device) {
            unclaimed.tell(device);
            return Some(DmaFault::lost(device));
        }
        None
    }

    /// Clears what the registers hold from before the driver (firmware's
    /// faults, and PFO): while PFO is set the unit records nothing new.
    pub(super) fn clear_faults(&self) {
        for i in 0..self.nfr {
            let at = self.frcd + 16 * i;
            if Frcd::from_bits_retain(self.regs.read64(at + 8)).contains(Frcd::F) {
                self.regs.write64(at + 8, Frcd::F.bits());
            }
        }
        self.regs.write32(regs::FSTS, Fsts::PFO.bits());
    }

    /// A fault in the recording registers (see [`Iommu::take_fault`] on
    /// the order), cleared, or `None`; an
    /// overflow (PFO) it sees is counted in `unclaimed` and cleared.
    fn read_fault(&self, unclaimed: &mut Unclaimed) -> Option<DmaFault> {
        let fsts = Fsts::from_bits_retain(self.regs.read32(regs::FSTS));
        if fsts.contains(Fsts::PFO) {
            // Cleared before it is counted: a fault lost after the clear
            // sets it again, for the next read.
            self.regs.write32(regs::FSTS, Fsts::PFO.bits());
            unclaimed.lost += 1;
        }
        if !fsts.contains(Fsts::PPF) {
            return None;
        }
        // The unit fills the records round robin from FRI: from there, the
        // first pending one is the oldest until the round robin wraps past
        // a record cleared before it (FRI moves only when PPF is set).
        let fri = regs::fsts_fri(fsts.bits());
        for i in (0..self.nfr).map(|k| (fri + k) % self.nfr) {
            let at = self.frcd + 16 * i;
            let high = self.regs.read64(at + 8);
            if !Frcd::from_bits_retain(high).contains(Frcd::F) {
                continue;
            }
            let low = self.regs.read64(at);
            // Writing F back (1) clears the record.
            self.regs.write64(at + 8, Frcd::F.bits());
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
