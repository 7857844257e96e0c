//! Invalidation (spec 6.5): the invalidation queue, a one-page ring of
//! descriptors each batch of which ends in a wait descriptor whose status
//! write the driver polls, or, on units without one, the context command
//! and IOTLB registers; and the write-buffer flush of units with CAP.RWBF.

use core::cell::RefCell;
use core::sync::atomic::{Ordering, fence};

use super::regs::{self, Ccmd, Fsts, Gcmd, Gsts, Iotlb};
use super::{DomainId, IommuError, WAIT_POLLS};
use crate::mmio::Registers;

/// The invalidation queue (spec 6.5.2): one page of 256 descriptors, and a
/// status word the unit writes when it reaches a wait descriptor.
pub(super) struct Queue {
    /// The ring's physical address and CPU pointer.
    pub(super) ring: u64,
    pub(super) ring_ptr: *mut u64,
    /// The status word's physical address and CPU pointer.
    pub(super) status: u64,
    pub(super) status_ptr: *mut u32,
    /// The next descriptor slot.
    pub(super) tail: u32,
    /// The status data of the last wait descriptor.
    pub(super) seq: u32,
}

// SAFETY: the two pointers reach frames the queue owns (allocated for it,
// freed only with it); nothing about them is tied to the thread that made
// them.
unsafe impl Send for Queue {}

/// One invalidation request, for the registers or the queue.
#[derive(Clone, Copy)]
pub(super) enum Invalidation {
    /// Every context-cache entry.
    Context,
    /// Every IOTLB entry.
    Global,
    /// The IOTLB entries (and paging-structure caches) of a domain.
    Domain(DomainId),
    /// One page of a domain.
    Page(DomainId, u64),
}

impl Queue {
    /// Writes the descriptors of `request` and a wait descriptor, hands
    /// them to the unit and waits for the status write.
    pub(super) fn submit<R: Registers>(
        &mut self,
        regs: &R,
        request: Invalidation,
    ) -> Result<(), IommuError> {
        let desc = match request {
            Invalidation::Context => [regs::DESC_CONTEXT_GLOBAL, 0],
            Invalidation::Global => [regs::DESC_IOTLB | regs::DESC_IOTLB_GLOBAL, 0],
            Invalidation::Domain(id) => [
                regs::DESC_IOTLB | regs::DESC_IOTLB_DOMAIN | (id.get() as u64) << 16,
                0,
            ],
            Invalidation::Page(id, page) => [
                regs::DESC_IOTLB | regs::DESC_IOTLB_PAGE | (id.get() as u64) << 16,
                page & !0xfff,
            ],
        };
        self.seq = self.seq.wrapping_add(1);
        let wait = [regs::DESC_WAIT | (self.seq as u64) << 32, self.status];
        for d in [desc, wait] {
            // SAFETY: `ring_ptr` maps the queue's page (256 descriptors of
            // two quadwords) and `tail` is below 256; the unit reads only
            // the slots between its head and the tail we publish below,
            // which it has finished (every submit waits for them).
            unsafe {
                let slot = self.ring_ptr.add(2 * self.tail as usize);
                slot.write_volatile(d[0]);
                slot.add(1).write_volatile(d[1]);
            }
            self.tail = (self.tail + 1) % regs::QUEUE_DESCRIPTORS;
        }
        // The descriptors are in memory before the unit is told of them.
        fence(Ordering::Release);
        regs.write64(regs::IQT, (self.tail as u64) << 4);
        for _ in 0..WAIT_POLLS {
            // SAFETY: `status_ptr` maps the status word, which only the unit
            // writes (by the wait descriptor) and we read.
            if unsafe { self.status_ptr.read_volatile() } == self.seq {
                return Ok(());
            }
            if Fsts::from_bits_retain(regs.read32(regs::FSTS)).contains(Fsts::IQE) {
                return Err(IommuError::QueueError);
            }
        }
        Err(IommuError::TimedOut)
    }
}

/// Runs `request` through the queue if there is one, else through the
/// registers.
pub(super) fn invalidate<R: Registers>(
    regs: &R,
    iotlb: usize,
    queue: &RefCell<Option<Queue>>,
    request: Invalidation,
) -> Result<(), IommuError> {
    if let Some(queue) = queue.borrow_mut().as_mut() {
        return queue.submit(regs, request);
    }
    match request {
        Invalidation::Context => {
            regs.write64(regs::CCMD, (Ccmd::ICC | Ccmd::GLOBAL).bits());
            for _ in 0..WAIT_POLLS {
                if !Ccmd::from_bits_retain(regs.read64(regs::CCMD)).contains(Ccmd::ICC) {
                    return Ok(());
                }
            }
            Err(IommuError::TimedOut)
        }
        Invalidation::Global => iotlb_command(regs, iotlb, Iotlb::GLOBAL, 0),
        Invalidation::Domain(id) => iotlb_command(regs, iotlb, Iotlb::DOMAIN, id.get()),
        Invalidation::Page(id, page) => {
            regs.write64(iotlb + regs::IVA_REG, page & !0xfff);
            iotlb_command(regs, iotlb, Iotlb::PAGE, id.get())
        }
    }
}

/// Writes GCMD: the persistent state bits of GSTS, minus `clear`, plus the
/// command `set`.
pub(super) fn command<R: Registers>(regs: &R, set: Gcmd, clear: Gsts) {
    // GSTS reports each persistent command's state at its GCMD bit (11.4.5).
    let status = Gcmd::from_bits_retain(regs.read32(regs::GSTS)) - Gcmd::ONE_SHOT;
    let clear = Gcmd::from_bits_retain(clear.bits());
    regs.write32(regs::GCMD, ((status - clear) | set).bits());
}

/// Flushes the unit's write buffer (GCMD.WBF) and waits for GSTS.WBFS to
/// clear: what a unit with CAP.RWBF needs before it sees table writes that
/// no invalidation followed (spec 6.8).
pub(super) fn flush_write_buffer<R: Registers>(regs: &R) -> Result<(), IommuError> {
    command(regs, Gcmd::WBF, Gsts::empty());
    for _ in 0..WAIT_POLLS {
        if !Gsts::from_bits_retain(regs.read32(regs::GSTS)).contains(Gsts::WBFS) {
            return Ok(());
        }
    }
    Err(IommuError::TimedOut)
}

/// What a unit needs after entries of its tables went from not present to
/// present (CAP bits read once by [`Iommu::new`]).
#[derive(Clone, Copy)]
pub(super) struct Publish {
    /// CAP.CM: it may have cached the entries as not present, so they
    /// need an IOTLB invalidation.
    pub(super) caching_mode: bool,
    /// CAP.RWBF: it may not see the writes until its write buffer is
    /// flushed.
    pub(super) write_buffer: bool,
}

/// Issues an IOTLB invalidation of granularity `kind` for domain `domain`
/// (bits 47:32, unused by a global one) and waits for it.
fn iotlb_command<R: Registers>(
    regs: &R,
    iotlb: usize,
    kind: Iotlb,
    domain: u16,
) -> Result<(), IommuError> {
    let command = Iotlb::IVT | Iotlb::DR | Iotlb::DW | kind;
    regs.write64(
        iotlb + regs::IOTLB_REG,
        command.bits() | u64::from(domain) << 32,
    );
    for _ in 0..WAIT_POLLS {
        if !Iotlb::from_bits_retain(regs.read64(iotlb + regs::IOTLB_REG)).contains(Iotlb::IVT) {
            return Ok(());
        }
    }
    Err(IommuError::TimedOut)
}
