//! Domains: a domain id, and second-level tables built by the same walker
//! as the CPU's page tables ([`AddressSpace`] in [`SecondLevel`] format)
//! with an IOTLB flush of the unit in place of the CPU's TLB flush.

use core::cell::RefCell;

use x86_64::VirtAddr;
use x86_64::structures::paging::PhysFrame;

use super::queue::{Invalidation, Publish, Queue, flush_write_buffer, invalidate};
use super::{Iommu, IommuError};
use crate::mm::pte::SecondLevel;
use crate::mm::space::AddressSpace;
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{PageCounter, TableAllocator, TableMapper};
use crate::mmio::Registers;

/// A domain's id (VT-d domain ids are 16 bits; 0 is kept unused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DomainId(u16);

impl DomainId {
    /// Domain `id`, if it is not 0.
    pub const fn new(id: u16) -> Option<DomainId> {
        if id == 0 { None } else { Some(DomainId(id)) }
    }

    /// The id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// A domain's IOTLB flush: what a second-level [`AddressSpace`] calls where
/// the CPU's would flush its TLB.
pub struct IotlbFlush<'a, R: Registers> {
    pub(super) regs: &'a R,
    pub(super) iotlb: usize,
    pub(super) domain: DomainId,
    pub(super) psi: bool,
    pub(super) publish: Publish,
    pub(super) queue: &'a RefCell<Option<Queue>>,
}

impl<R: Registers> IotlbFlush<'_, R> {
    /// The domain it flushes.
    pub fn domain(&self) -> DomainId {
        self.domain
    }

    /// Makes the `pages` pages from `start`, just mapped in the domain
    /// where nothing was, usable by its devices: on a unit with Caching
    /// Mode (CAP.CM) an IOTLB invalidation of them (it may have cached
    /// them as not present, spec 6.1), else on one with CAP.RWBF a
    /// write-buffer flush (spec 6.8), else nothing. Call it after
    /// `insert_pages` or `remap_pfn_range` on a [`Domain`], before a
    /// device is told of the pages (the IOVA layer,
    /// [`IovaHal`](super::dma::IovaHal), does). Unmaps need nothing more: their
    /// invalidation is the domain's own.
    ///
    /// On an error the unit may still refuse the pages (its accesses
    /// fault; no memory is at stake).
    pub fn mapped(&self, start: VirtAddr, pages: u64) -> Result<(), IommuError> {
        if self.publish.caching_mode {
            let one_by_one = self.psi && pages <= crate::mm::tlb::FULL_FLUSH_THRESHOLD as u64;
            if !one_by_one {
                return self.invalidate(Invalidation::Domain(self.domain));
            }
            // A page-selective invalidation drops the paging-structure
            // caches of the page too (no IH), so a table that was missing
            // when the device looked is seen as well.
            for i in 0..pages {
                let page = start.as_u64().wrapping_add(i * 4096);
                self.invalidate(Invalidation::Page(self.domain, page))?;
            }
            return Ok(());
        }
        if self.publish.write_buffer {
            return flush_write_buffer(self.regs);
        }
        Ok(())
    }

    fn invalidate(&self, request: Invalidation) -> Result<(), IommuError> {
        invalidate(self.regs, self.iotlb, self.queue, request)
    }

    fn domain_selective(&self) {
        let done = invalidate(
            self.regs,
            self.iotlb,
            self.queue,
            Invalidation::Domain(self.domain),
        );
        // The caller frees memory the unit may still translate to as soon
        // as this returns: a unit that never finishes is fatal.
        assert!(
            done.is_ok(),
            "the IOMMU did not finish an IOTLB invalidation"
        );
    }
}

// SAFETY: both calls return only after the unit reports the invalidation
// done (IVT clear, or the status write of the wait descriptor queued after
// it), with reads and writes drained; a page-selective one
// covers the page, a domain-selective one the whole domain (and the
// paging-structure caches, which the unit invalidates with the IOTLB).
unsafe impl<R: Registers> TlbFlush for IotlbFlush<'_, R> {
    fn flush_page(&mut self, _root: PhysFrame, va: VirtAddr) {
        if !self.psi {
            self.domain_selective();
            return;
        }
        let page = Invalidation::Page(self.domain, va.as_u64());
        if invalidate(self.regs, self.iotlb, self.queue, page).is_err() {
            self.domain_selective();
        }
    }

    fn flush_all(&mut self, _root: PhysFrame) {
        self.domain_selective();
    }
}

/// A DMA domain: second-level tables built by the same walker as the CPU's
/// page tables, flushed through the unit's IOTLB.
pub type Domain<'a, C, M, A, R> = AddressSpace<C, M, A, IotlbFlush<'a, R>, SecondLevel>;

/// Makes a domain with id `id` on `iommu`: pages counted by `counter`,
/// tables from `alloc` reached through `mapper` (the unit reads them
/// directly, so they must be ordinary RAM).
pub fn domain<'a, C: PageCounter, M: TableMapper, A: TableAllocator, R: Registers, M2, A2>(
    iommu: &'a Iommu<R, M2, A2>,
    id: DomainId,
    counter: C,
    mapper: M,
    alloc: A,
) -> Result<Domain<'a, C, M, A, R>, crate::mm::MmError>
where
    M2: TableMapper,
    A2: TableAllocator,
{
    AddressSpace::new_in(counter, mapper, alloc, iommu.flusher(id), false)
}
