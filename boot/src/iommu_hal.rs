//! A `Hal` whose DMA addresses are IOVAs: while [`attach`]'s guard lives,
//! one device sits behind a kernel domain of the VT-d unit, and everything
//! a driver over [`IommuHal`] hands the device (its own DMA memory from
//! `dma_alloc`, buffers shared with `share`) is mapped into that domain at
//! IOVAs this module hands out. The device then reaches those pages and
//! nothing else; `unshare` and `dma_dealloc` unmap (with the IOTLB
//! invalidation) before the memory goes back.
//!
//! IOVAs come from a bump allocator over a 256 MiB window below 4 GiB (the
//! LSI53C895A's reach) and are not reused while the guard lives: simple,
//! and a stale IOVA can never reach a later buffer.

use core::ptr::NonNull;

use dmaengine::engine::DmaError;
use dmaengine::hal::{Direction, DmaAddr, Hal};
use dmaengine::iommu::{self, DomainId, SourceId};
use dmaengine::mm::space::VmaId;
use dmaengine::mm::vma::{PageProt, VmFlags};
use spin::Mutex;

use crate::iommu::{Domain, Exclusive, source_of, take};
use crate::mem::{PAGE_SIZE, frames, paging, phys_to_virt};
use crate::mm::{db, fr, mapper, pg, va};

/// The IOVA window the domain maps.
const WINDOW: u64 = 0x8000_0000;
const WINDOW_SIZE: u64 = 256 << 20;
/// The kernel domain's id.
const DOMAIN: u16 = 7;

/// The domain, its window's area and the next free IOVA.
struct State {
    domain: Domain<'static>,
    area: VmaId,
    next: u64,
}

// SAFETY: the domain's tables are reached through the direct map and its
// unit's registers through MMIO; nothing in it is tied to a thread, and
// the mutex below serialises every use.
unsafe impl Send for State {}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// The DMA layer over the kernel domain (see the module docs).
pub struct IommuHal;

/// `device` behind the kernel domain, translation on, until dropped.
pub struct Attached {
    unit: *mut Exclusive,
    source: SourceId,
}

/// Puts `device` behind the kernel domain and turns translation on; the
/// unit is this guard's until it is dropped. Dropping it turns translation
/// off: the kernel's rule is that the device's channels go first.
pub fn attach(device: &crate::pci::Device) -> Result<Attached, &'static str> {
    let unit = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(take()?));
    // SAFETY: leaked just now; freed by `Attached::drop`, after the domain
    // that borrows it is gone.
    let shared: &'static Exclusive = unsafe { &*unit };
    let id = DomainId::new(DOMAIN).expect("a domain id");
    let made = iommu::domain(shared, id, db(), mapper(), db()).and_then(|mut domain| {
        let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
        let pages = WINDOW_SIZE / PAGE_SIZE;
        let area = domain.map_vma(pg(WINDOW), pages, rw)?;
        Ok((domain, area))
    });
    let Ok((domain, area)) = made else {
        // SAFETY: no domain borrows the unit.
        drop(unsafe { alloc::boxed::Box::from_raw(unit) });
        return Err("no memory for the kernel domain");
    };
    let source = source_of(device);
    // SAFETY: the domain lives in STATE until `Attached::drop` detaches
    // the device first.
    let attached = unsafe { shared.attach(source, id, domain.root()) };
    *STATE.lock() = Some(State {
        domain,
        area,
        next: WINDOW,
    });
    let guard = Attached { unit, source };
    attached.map_err(|_| "the device is attached elsewhere")?;
    shared
        .enable()
        .map_err(|_| "the unit would not translate")?;
    Ok(guard)
}

impl Attached {
    /// The unit (for its fault records).
    pub fn unit(&self) -> &Exclusive {
        // SAFETY: the box `attach` leaked, freed only in `drop`.
        unsafe { &*self.unit }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: the kernel's rule (see `attach`): the device's channels
        // are dropped before the guard, so nothing is in flight.
        let _ = unsafe { self.unit().disable() };
        let _ = self.unit().detach(self.source);
        // The domain goes before the unit it borrows.
        STATE.lock().take();
        // SAFETY: the box `attach` leaked; the domain that borrowed it is
        // gone and nothing else refers to it.
        drop(unsafe { alloc::boxed::Box::from_raw(self.unit) });
    }
}

/// Takes `pages` fresh IOVAs (never handed out before); returns the first.
fn reserve(pages: u64) -> Option<u64> {
    let mut state = STATE.lock();
    let state = state.as_mut()?;
    let iova = state.next;
    let end = iova.checked_add(pages.checked_mul(PAGE_SIZE)?)?;
    if end > WINDOW + WINDOW_SIZE {
        return None;
    }
    state.next = end;
    Some(iova)
}

/// Maps `pages` frames from `first` (physical, page-aligned) at `iova`
/// (reserved), read-only if `read_only`.
fn map_at(iova: u64, first: u64, pages: u64, read_only: bool) -> bool {
    let prot = if read_only {
        PageProt::READ_ONLY
    } else {
        PageProt::READ_WRITE
    };
    STATE.lock().as_mut().is_some_and(|state| {
        // SAFETY: the Hal maps only frames it was given to share (the `share` contract keeps them
        // valid until unshared, and unsharing unmaps them first), for the device only: the domain
        // is never loaded into a CPU and has no copy-on-write area.
        unsafe {
            state
                .domain
                .remap_pfn_range(state.area, pg(iova), fr(first / PAGE_SIZE), pages, prot)
        }
        .is_ok()
    })
}

/// Unmaps `pages` pages from `iova` (the IOTLB forgets them before this
/// returns).
fn unmap(iova: u64, pages: u64) {
    if let Some(state) = STATE.lock().as_mut() {
        let _ = state.domain.zap_range(state.area, pg(iova), pages);
    }
}

// SAFETY: `dma_alloc` returns zeroed, contiguous frames from the allocator,
// mapped for the CPU by the direct map and for the device at the IOVA
// returned (nothing else uses them until `dma_dealloc`, which unmaps them
// from the device before freeing); `share` maps exactly the buffer's pages,
// read-only when the device only reads, and `unshare` removes them.
unsafe impl Hal for IommuHal {
    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        let pa = frames::alloc_contiguous(pages, 1).ok()?;
        let vaddr = phys_to_virt(pa);
        // SAFETY: the frames were just allocated to us and are mapped.
        unsafe { vaddr.write_bytes(0, pages * PAGE_SIZE as usize) };
        let iova = reserve(pages as u64)
            .filter(|&iova| iova + pages as u64 * PAGE_SIZE - 1 <= dma_mask)
            .filter(|&iova| map_at(iova, pa, pages as u64, false));
        match iova {
            Some(iova) => Some((iova, NonNull::new(vaddr)?)),
            None => {
                let _ = frames::free_contiguous(pa, pages);
                None
            }
        }
    }

    unsafe fn dma_dealloc(iova: DmaAddr, vaddr: NonNull<u8>, pages: usize) {
        unmap(iova, pages as u64);
        let pa = vaddr.as_ptr() as u64 - crate::mem::PHYS_OFFSET;
        let _ = frames::free_contiguous(pa, pages);
    }

    fn phys_to_virt(iova: DmaAddr) -> NonNull<u8> {
        let pa = STATE
            .lock()
            .as_ref()
            .and_then(|state| state.domain.translate(va(iova))?.phys_of(va(iova)))
            .expect("an IOVA this HAL mapped");
        NonNull::new(phys_to_virt(pa.as_u64())).expect("the direct map has no null address")
    }

    /// Maps the buffer's pages, wherever they are, at consecutive IOVAs.
    unsafe fn share(buffer: NonNull<[u8]>, direction: Direction) -> Result<DmaAddr, DmaError> {
        let start = buffer.cast::<u8>().as_ptr() as u64;
        let last = (buffer.len() as u64)
            .checked_sub(1)
            .ok_or(DmaError::ZeroLength)
            .and_then(|n| start.checked_add(n).ok_or(DmaError::BeyondDmaMask))?;
        let (first_page, last_page) = (start & !(PAGE_SIZE - 1), last & !(PAGE_SIZE - 1));
        let pages = (last_page - first_page) / PAGE_SIZE + 1;
        let read_only = direction == Direction::ToDevice;
        let base = reserve(pages).ok_or(DmaError::NoMemory)?;
        for i in 0..pages {
            let mapped = paging::translate(first_page + i * PAGE_SIZE)
                .ok_or(DmaError::NotSupported)
                .and_then(|pa| {
                    map_at(base + i * PAGE_SIZE, pa & !(PAGE_SIZE - 1), 1, read_only)
                        .then_some(())
                        .ok_or(DmaError::NoMemory)
                });
            if let Err(e) = mapped {
                // All or nothing: the pages mapped so far come out again.
                if i > 0 {
                    unmap(base, i);
                }
                return Err(e);
            }
        }
        Ok(base + (start - first_page))
    }

    unsafe fn unshare(iova: DmaAddr, buffer: NonNull<[u8]>, _direction: Direction) {
        // The values of a successful `share`: non-empty, not wrapping.
        let start = buffer.cast::<u8>().as_ptr() as u64;
        let last = start + buffer.len() as u64 - 1;
        let pages = ((last & !(PAGE_SIZE - 1)) - (start & !(PAGE_SIZE - 1))) / PAGE_SIZE + 1;
        unmap(iova & !(PAGE_SIZE - 1), pages);
    }
}
