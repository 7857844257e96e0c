//! The grant: a ring-3 driver given the second LSI53C895A behind a VT-d
//! domain of its own (`grant_lsi`), the pages it maps for the chip
//! (`iommu_map`), and the faults the unit records for it. The domain
//! confines the chip's memory DMA only: its I/O-space moves and its
//! interrupt messages (interrupt remapping is off) pass the unit untouched,
//! so the process is trusted with I/O ports and interrupts (see the parent
//! module).

use super::*;

/// IOVAs a process may map for its chip: 16 MiB at 1 GiB (below 4 GiB, as
/// SCRIPTS addresses are 32 bits).
pub const GRANT_IOVA: u64 = 0x4000_0000;
pub const GRANT_IOVA_SIZE: u64 = 16 << 20;
/// Where `grant_lsi` maps the chip's registers.
pub const GRANT_REGS: u64 = DEVICE + (1 << 20);
/// The domain id of a process's chip.
const GRANT_DOMAIN: u16 = 6;

/// A chip given to a process: the kernel holds its channel (so nothing
/// else takes the chip, and dropping it stops the chip), the unit (leaked
/// for the grant's life, as a domain borrows it) and the domain.
pub(super) struct Grant {
    chip: LsiChannel,
    unit: *mut crate::iommu::Exclusive,
    domain: core::mem::ManuallyDrop<crate::iommu::Domain<'static>>,
    area: VmaId,
    source: iommu::SourceId,
}

impl Grant {
    fn unit(&self) -> &crate::iommu::Exclusive {
        // SAFETY: `unit` is the box `grant_lsi` leaked, freed only in `drop`.
        unsafe { &*self.unit }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        // The chip first: it may still be running the process's script,
        // and must not reach a page after the domain lets it go.
        self.chip.terminate();
        let _ = self.unit().detach(self.source);
        // SAFETY: dropped once, here; the chip is stopped and detached.
        unsafe { core::mem::ManuallyDrop::drop(&mut self.domain) };
        // SAFETY: the box `grant_lsi` leaked; the domain that borrowed it
        // is gone, and nothing else refers to it. Dropping the unit turns
        // translation off and frees its tables.
        drop(unsafe { alloc::boxed::Box::from_raw(self.unit) });
    }
}

impl Process {
    /// Gives the process the second LSI53C895A: its register page mapped
    /// uncached, the chip attached to a domain of its own with nothing in
    /// it yet, translation on.
    pub(super) fn grant_lsi(&mut self) -> i64 {
        if self.grant.is_some() {
            return EBUSY;
        }
        let Some(device) = crate::dma::LSI2.device() else {
            return ENODEV;
        };
        let Some((bar, size)) = device.mem_bar(lsi53c895a::regs::MMIO_BAR) else {
            return ENODEV;
        };
        // The page must hold this BAR alone: mapping it must not hand the
        // process another device's registers.
        let page = bar & !(PAGE_4K - 1);
        let shared = self.platform.pci.iter().any(|d| {
            (0..6).any(|slot| {
                d.mem_bar(slot).is_some_and(|(at, len)| {
                    (at, len) != (bar, size) && at < page + PAGE_4K && page < at + len
                })
            })
        });
        if bar != page || size > PAGE_4K || shared {
            return ENODEV;
        }
        let Ok(mut chip) = crate::dma::LSI2.channel() else {
            return EBUSY;
        };
        // The channel only reserves the chip: its resident loop is stopped
        // (abort and soft reset), or a DSP write from ring 3 would only move
        // the parked loop's resume point instead of starting its script.
        chip.terminate();
        let Ok(unit) = crate::iommu::take() else {
            return EBUSY;
        };
        let unit = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(unit));
        // SAFETY: leaked just now; freed by `Grant::drop` (or below), after
        // every domain borrowing it is gone.
        let shared_unit: &'static crate::iommu::Exclusive = unsafe { &*unit };
        let id = DomainId::new(GRANT_DOMAIN).expect("a domain id");
        let made = iommu::domain(shared_unit, id, db(), mapper(), db()).and_then(|mut domain| {
            let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
            let area = domain.map_vma(
                pg(GRANT_IOVA),
                npages(GRANT_IOVA, GRANT_IOVA + GRANT_IOVA_SIZE),
                rw,
            )?;
            Ok((domain, area))
        });
        let Ok((domain, area)) = made else {
            // SAFETY: no domain was made, so nothing borrows the unit.
            drop(unsafe { alloc::boxed::Box::from_raw(unit) });
            return ENOMEM;
        };
        let source = crate::iommu::source_of(device);
        let grant = Grant {
            chip,
            unit,
            domain: core::mem::ManuallyDrop::new(domain),
            area,
            source,
        };
        // SAFETY: the domain outlives the attachment: `Grant::drop` detaches
        // before it drops the domain.
        let attached = unsafe { grant.unit().attach(source, id, grant.domain.root()) };
        if attached.is_err() || grant.unit().enable().is_err() {
            return EIO;
        }
        // SAFETY: the chip's BAR: device memory, which the kernel never hands out as RAM.
        let regs = unsafe {
            self.space.io_remap_pfn_range(
                self.grant_regs,
                pg(GRANT_REGS),
                fr(bar / PAGE_4K),
                1,
                PageProt::READ_WRITE,
                CacheMode::Uncached,
            )
        };
        if regs.is_err() {
            return ENOMEM;
        }
        self.grant = Some(grant);
        GRANT_REGS as i64
    }

    /// Maps the caller's `count` heap pages from `va` for its chip at
    /// `iova`, each page counted (kept alive) until the process ends.
    pub(super) fn iommu_map(&mut self, va: u64, count: u64, iova: u64) -> i64 {
        let Some(grant) = self.grant.as_mut() else {
            return ENODEV;
        };
        let (Some(len), true) = (count.checked_mul(PAGE_4K), count > 0) else {
            return EINVAL;
        };
        let fits = iova
            .checked_add(len)
            .is_some_and(|end| iova >= GRANT_IOVA && end <= GRANT_IOVA + GRANT_IOVA_SIZE);
        if !fits || !iova.is_multiple_of(PAGE_4K) || !va.is_multiple_of(PAGE_4K) {
            return EINVAL;
        }
        if va < HEAP || va.checked_add(len).is_none_or(|end| end > self.heap_next) {
            return EFAULT;
        }
        let mut pages = Vec::new();
        for i in 0..count {
            let at = crate::mm::va(va + i * PAGE_4K);
            let Some(page) = self
                .space
                .translate(at)
                .and_then(|leaf| leaf.frame_of(at))
                .and_then(|frame| db().get(frame))
            else {
                return EFAULT;
            };
            pages.push(page);
        }
        match grant.domain.insert_pages(grant.area, pg(iova), &pages) {
            // The device is attached already: a unit with Caching Mode (or
            // a write buffer) must hear of the new pages before the
            // process tells its device of them; if it will not, they come
            // out again (all or nothing).
            Ok(()) => match grant.domain.tlb().mapped(crate::mm::va(iova), count) {
                Ok(()) => 0,
                Err(_) => {
                    let _ = grant.domain.zap_range(grant.area, pg(iova), count);
                    EIO
                }
            },
            Err(partial) => {
                // All or nothing: the pages the call did map come out again.
                if partial.inserted > 0 {
                    let _ = grant
                        .domain
                        .zap_range(grant.area, pg(iova), partial.inserted as u64);
                }
                if partial.error == MmError::Busy {
                    EBUSY
                } else {
                    ENOMEM
                }
            }
        }
    }

    /// Reads every fault the unit recorded (the unit is the process's);
    /// returns how many, whether kept or only counted.
    pub(super) fn collect_faults(&mut self) -> usize {
        let Some(grant) = self.grant.as_ref() else {
            return 0;
        };
        let mut read = 0;
        while let Some(fault) = grant.unit().take_fault() {
            read += 1;
            if self.dma_faults.len() < MAX_KEPT_FAULTS {
                self.dma_faults.push(fault);
            } else {
                self.dma_faults_dropped += 1;
            }
        }
        read
    }
}
