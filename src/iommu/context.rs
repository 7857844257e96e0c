//! The root and context tables (spec 3.4, 9.1, 9.3): one root entry per
//! bus, one context entry per device and function, naming the domain id
//! and second-level tables its DMA is translated through; attaching and
//! detaching devices.

use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

use super::queue::Invalidation;
use super::regs::{self, ContextEntry, RootEntry};
use super::{DomainId, Iommu, IommuError, SourceId};
use crate::mm::traits::{TableAllocator, TableMapper};
use crate::mmio::Registers;

/// The root and context tables, behind a `RefCell` so domains (which
/// borrow the unit for their IOTLB flushes) and attach calls can coexist.
pub(super) struct Tables<A> {
    pub(super) alloc: A,
    /// Physical address of each bus's context table, 0 if none.
    pub(super) context: [u64; 256],
}

impl<R: Registers, M: TableMapper, A: TableAllocator> Iommu<R, M, A> {
    /// Attaches `device` to the domain `domain` whose second-level tables
    /// are rooted at `tables` (an [`AddressSpace`](crate::mm::space::AddressSpace) in [`SecondLevel`](crate::mm::pte::SecondLevel)
    /// format's root): its DMA is translated through them from now on.
    ///
    /// # Safety
    /// `tables` must stay a live second-level hierarchy, reachable by the
    /// unit, until the device is detached (and the domain's IOTLB entries
    /// flushed by its [`IotlbFlush`](super::IotlbFlush)); if [`Iommu::detach`] fails, they
    /// must be kept (leaked). `domain` must be the id whose
    /// [`IotlbFlush`](super::IotlbFlush) unmaps from `tables` (the id the [`Domain`](super::Domain) was made
    /// with): the unit caches the device's translations under `domain`,
    /// and an unmap that flushed another id would let it reach a page
    /// already given back. (Two domains under one id are refused with
    /// [`IommuError::DomainIdInUse`]: each device could reach the other's
    /// pages through the cache.) If `attach` answers `TimedOut` or
    /// `QueueError`, the entry was written and may be in use: keep the
    /// tables as for a failed [`Iommu::detach`], and detach before
    /// freeing them. The device must have no DMA in flight aimed at
    /// addresses meant for another domain (or for no translation): from
    /// here on, they are translated through `tables`.
    pub unsafe fn attach(
        &self,
        device: SourceId,
        domain: DomainId,
        tables: PhysFrame,
    ) -> Result<(), IommuError> {
        let entry = self.free_entry(device, domain)?;
        if self.id_used_elsewhere(domain, tables.start_address().as_u64()) {
            return Err(IommuError::DomainIdInUse);
        }
        let hi = regs::CONTEXT_AW_4LEVEL | regs::context_domain(domain.get());
        // SAFETY: as above; the high half first, the present bit last, so
        // the unit never sees half an entry.
        unsafe {
            entry.add(1).write_volatile(hi);
            entry.write_volatile(tables.start_address().as_u64() | ContextEntry::P.bits());
        }
        self.invalidate(Invalidation::Context)?;
        self.invalidate(Invalidation::Domain(domain))
    }

    /// Detaches `device`: its DMA faults again (until attached elsewhere).
    ///
    /// Safe with requests in flight (audited for issue 17): once the
    /// context entry is gone and the caches invalidated, each access of
    /// theirs is refused (a write dropped, a read returning zeros, both
    /// recorded as faults), so none reaches memory; their channels report
    /// them failed when they check the unit's faults (see
    /// [`crate::engine::FaultHook`]); a channel without a fault hook hears
    /// nothing, and its engine (the LSI53C895A's SCRIPTS) runs on, its
    /// requests in progress, until the channel's `terminate`. What is unsafe is what may come
    /// next: attaching the device elsewhere ([`Iommu::attach`]) or turning
    /// translation off ([`Iommu::disable`]) while they are in flight.
    ///
    /// On an error the invalidation did not finish: the unit may still
    /// translate the device through the old domain's tables, which must
    /// then be kept (see [`Iommu::attach`]).
    pub fn detach(&self, device: SourceId) -> Result<(), IommuError> {
        let context = self.tables.borrow().context[device.bus as usize];
        if context == 0 {
            return Ok(());
        }
        let entry = self.entry(context, device.devfn());
        // SAFETY: a context entry in a table this unit owns; present bit
        // first, so the unit never sees half an entry.
        unsafe {
            entry.write_volatile(0);
            entry.add(1).write_volatile(0);
        }
        self.invalidate(Invalidation::Context)?;
        self.invalidate(Invalidation::Global)
    }

    /// The context table of `bus`, made (and linked in the root table) on
    /// first use.
    fn context_table(&self, bus: u8) -> Result<u64, IommuError> {
        let mut tables = self.tables.borrow_mut();
        if tables.context[bus as usize] == 0 {
            let table = tables
                .alloc
                .allocate_table()
                .ok_or(IommuError::OutOfMemory)?
                .start_address()
                .as_u64();
            self.zero(table);
            let root_entry = self.entry(self.root, bus as usize);
            // SAFETY: the root entry of `bus` in our root table.
            unsafe { root_entry.write_volatile(table | RootEntry::P.bits()) };
            tables.context[bus as usize] = table;
        }
        Ok(tables.context[bus as usize])
    }

    /// Whether [`Iommu::attach`] of `device` to a domain not yet built
    /// under id `domain` would be refused, checked before the domain's
    /// tables are taken from an allocator (that may not free): the id fits
    /// the unit, no device uses it, `device` is attached to nothing, and
    /// its bus's context table exists (made now if not). What `attach`
    /// itself may still answer then is an invalidation's failure.
    pub fn check_attach(&self, device: SourceId, domain: DomainId) -> Result<(), IommuError> {
        self.free_entry(device, domain)?;
        if self.id_used_elsewhere(domain, u64::MAX) {
            return Err(IommuError::DomainIdInUse);
        }
        Ok(())
    }

    /// The context entry of `device`, if it is free and `domain` fits the
    /// unit.
    fn free_entry(&self, device: SourceId, domain: DomainId) -> Result<*mut u64, IommuError> {
        if u32::from(domain.get()) >= self.domains {
            return Err(IommuError::BadDomainId);
        }
        let context = self.context_table(device.bus)?;
        let entry = self.entry(context, device.devfn());
        // SAFETY: a context entry (16 bytes) in a table this unit owns.
        let lo = unsafe { entry.read_volatile() };
        if ContextEntry::from_bits_retain(lo).contains(ContextEntry::P) {
            return Err(IommuError::Attached);
        }
        Ok(entry)
    }

    /// Whether a present context entry names `domain` with tables other
    /// than `tables` (a scan of the context tables in use: at attach time
    /// only).
    fn id_used_elsewhere(&self, domain: DomainId, tables: u64) -> bool {
        let context = self.tables.borrow().context;
        context.iter().filter(|&&t| t != 0).any(|&table| {
            (0..256).any(|devfn| {
                let entry = self.entry(table, devfn);
                // SAFETY: a context entry (16 bytes) in a table this unit
                // owns.
                let (lo, hi) = unsafe { (entry.read_volatile(), entry.add(1).read_volatile()) };
                ContextEntry::from_bits_retain(lo).contains(ContextEntry::P)
                    && hi & regs::context_domain(u16::MAX) == regs::context_domain(domain.get())
                    && lo & !0xfff != tables
            })
        })
    }

    /// A pointer to the low half of 16-byte entry `index` of the table at
    /// `table` (a root or context table).
    fn entry(&self, table: u64, index: usize) -> *mut u64 {
        let frame = PhysFrame::containing_address(PhysAddr::new_truncate(table));
        let base = self.mapper.frame_ptr(frame).cast::<u64>();
        // SAFETY: a table frame of ours, mapped as 4096 bytes by the mapper's
        // contract; `index < 256`, 16 bytes each.
        unsafe { base.add(2 * (index & 0xff)) }
    }

    pub(super) fn zero(&self, table: u64) {
        let frame = PhysFrame::containing_address(PhysAddr::new_truncate(table));
        // SAFETY: a frame just allocated to us; the mapper maps 4096 bytes.
        unsafe { self.mapper.frame_ptr(frame).write_bytes(0, 4096) }
    }
}
