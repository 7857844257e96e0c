//! A device's IOVA space: its domain, the window of IOVAs it hands out
//! (first fit, reused only after their unmapping was flushed), and its
//! attachment to the unit.

use core::marker::PhantomData;

use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::{
    DeviceDma, IommuPlatform, Lk, PAGE, Pf, SHARED_BUFFERS, UnitLock, WINDOW_PAGES, WORDS,
};
use crate::engine::{Channel, Engine, FaultHook, FaultSource};
use crate::hal::HalError;
use crate::iommu::{DmaFault, DomainId, IommuError, SourceId};
use crate::mm::pte::{PageProt, SecondLevel};
use crate::mm::space::{AddressSpace, USER_END, VmaId};
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::NoPages;
use crate::mm::vma::VmFlags;
use crate::sync::IrqControl;

/// A device's domain: second-level tables of raw frames (nothing counted),
/// flushed through the unit.
type DeviceDomain<D> = AddressSpace<
    NoPages,
    <Lk<D> as UnitLock>::Mapper,
    <Lk<D> as UnitLock>::Alloc,
    UnitFlush<Pf<D>>,
    SecondLevel,
>;

/// The IOTLB flush of domain `id`, through [`IommuPlatform::with_unit`].
pub struct UnitFlush<U: IommuPlatform> {
    id: DomainId,
    _unit: PhantomData<fn() -> U>,
}

// SAFETY: each call returns after the unit's own flusher for `id` has
// (see `IotlbFlush`); the domain using it is made with the same id.
unsafe impl<U: IommuPlatform> TlbFlush for UnitFlush<U> {
    fn flush_page(&mut self, root: PhysFrame, va: VirtAddr) {
        U::with_unit(|unit| unit.flusher(self.id).flush_page(root, va));
    }

    fn flush_all(&mut self, root: PhysFrame) {
        U::with_unit(|unit| unit.flusher(self.id).flush_all(root));
    }
}

/// A device's IOVA space: its domain and which IOVAs are in use. Kept in a
/// `static` (see the [module docs](super)).
pub struct IovaSpace<D: DeviceDma> {
    base: u64,
    state: spin::Mutex<Option<State<D>>>,
}

struct State<D: DeviceDma> {
    domain: DeviceDomain<D>,
    area: VmaId,
    /// The device its first attach named.
    device: SourceId,
    /// The device's context entry may be in force (a failed invalidation
    /// leaves that unknown, so it counts as attached).
    attached: bool,
    /// One bit per window page, set while it is mapped or reserved.
    used: [u64; WORDS],
    /// The buffers shared now: where the CPU reaches them, for
    /// `phys_to_virt` (the `Memory` Hal answers only for its own frames).
    shares: [Share; SHARED_BUFFERS],
}

/// A shared buffer's run of window pages and the CPU address of its first
/// page; `pages == 0` is a free slot.
#[derive(Clone, Copy)]
struct Share {
    first: usize,
    pages: usize,
    va: u64,
}

impl Share {
    const FREE: Share = Share {
        first: 0,
        pages: 0,
        va: 0,
    };
}

/// Where the CPU reaches an IOVA's byte.
pub(super) enum Cpu {
    /// At this address: a byte of a shared buffer.
    Shared(u64),
    /// At this physical address: the `Memory` Hal's own.
    Phys(u64),
}

impl<D: DeviceDma> IovaSpace<D> {
    /// An empty space whose window starts at IOVA `base`; it works once
    /// [`attach`](IovaSpace::attach)ed.
    pub const fn new(base: u64) -> Self {
        IovaSpace {
            base,
            state: spin::Mutex::new(None),
        }
    }

    /// Runs `f` on the state, under the lock, interrupts masked by the
    /// platform's `Irq`.
    fn locked<T>(&self, f: impl FnOnce(&mut Option<State<D>>) -> T) -> T {
        let were_on = <Lk<D> as UnitLock>::Irq::disable();
        let result = f(&mut self.state.lock());
        <Lk<D> as UnitLock>::Irq::restore(were_on);
        result
    }

    /// Builds the device's domain (id `id`, tables from `alloc` reached
    /// through `mapper`) over the window and attaches `device` (its PCI
    /// requester id) to it; a device detached since is attached again to
    /// the same domain (`mapper` and `alloc` are then dropped, and `device`
    /// and `id` must be the first attach's, else `Attached` or
    /// `DomainIdInUse`). Its DMA is translated once the
    /// unit's translation is on ([`Iommu::enable`](crate::iommu::Iommu::enable)).
    ///
    /// A window (the space's base and [`WINDOW_PAGES`] pages) that is not
    /// page-aligned or ends past 2^47 (a domain maps what a process's lower
    /// half would) or past the unit's guest address width
    /// ([`Iommu::address_width`](crate::iommu::Iommu::address_width)) is
    /// refused with `BadWindow`. The unit is asked first
    /// whether it would take the device and the id
    /// ([`Iommu::check_attach`](crate::iommu::Iommu::check_attach)), all under its lock, so a refusal takes
    /// no table from `alloc`. The domain's tables are never freed once
    /// built: they stay for a later attach, so the unit can never walk a
    /// freed table; an attach whose invalidation failed (`TimedOut`,
    /// `QueueError`) may have left the device attached, and the space says
    /// so ([`IovaSpace::device`]) until a [`detach`](IovaSpace::detach)
    /// succeeds. A space is meant to live in a `static` (hence
    /// `&'static self`); one that is dropped leaks its domain rather than
    /// free what the unit may walk.
    ///
    /// # Safety
    /// `device` is the requester id of the device whose drivers use
    /// `IovaHal<D>`, and no other space is attached to it: the device
    /// reaches what this space maps, so another device's id would give
    /// that device this one's memory.
    pub unsafe fn attach(
        &'static self,
        device: SourceId,
        id: DomainId,
        mapper: <Lk<D> as UnitLock>::Mapper,
        alloc: <Lk<D> as UnitLock>::Alloc,
    ) -> Result<(), IommuError> {
        // A domain maps what a process's lower half would (`map_vma` stops
        // at `USER_END`): checked here, before a table is taken.
        let window_end = self.base.checked_add(WINDOW_PAGES as u64 * PAGE);
        let Some(end) = window_end.filter(|&end| end <= USER_END) else {
            return Err(IommuError::BadWindow);
        };
        if !self.base.is_multiple_of(PAGE) {
            return Err(IommuError::BadWindow);
        }
        // IOVAs past the unit's guest address width are refused by the
        // unit for every access: checked with the unit, before a table is
        // taken.
        let fits = |unit: &super::UnitOf<Pf<D>>| {
            // A width of 64 bits (CAP.MGAW 63) limits nothing.
            if 1u64
                .checked_shl(unit.address_width())
                .is_some_and(|limit| end > limit)
            {
                Err(IommuError::BadWindow)
            } else {
                Ok(())
            }
        };
        self.locked(|state| {
            let Some(state) = state else {
                // Before a unit is installed: refused, not a panic with the
                // space's lock held and interrupts masked.
                let unit = <Pf<D> as IommuPlatform>::unit();
                return unit
                    .try_with_unit(|unit| {
                        fits(unit)?;
                        unit.check_attach(device, id)?;
                        let flush = UnitFlush {
                            id,
                            _unit: PhantomData,
                        };
                        let mut domain =
                            DeviceDomain::<D>::new_in(NoPages, mapper, alloc, flush, false)
                                .map_err(|_| IommuError::OutOfMemory)?;
                        let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
                        let area = domain
                            .map_vma(page(self.base), WINDOW_PAGES as u64, rw)
                            .map_err(|_| IommuError::BadWindow)?;
                        let root = domain.root();
                        // SAFETY: the tables are this domain's, kept in the
                        // static from here on (whatever `attach` answers) and
                        // never freed; `id` is the one its flusher
                        // invalidates; the unit refuses an id in use with
                        // other tables.
                        let attached = unsafe { unit.attach(device, id, root) };
                        *state = Some(State {
                            domain,
                            area,
                            device,
                            // Written but maybe not in force: detach again.
                            attached: attached.is_ok() || written(attached),
                            used: [0; WORDS],
                            shares: [Share::FREE; SHARED_BUFFERS],
                        });
                        attached
                    })
                    .unwrap_or(Err(IommuError::NoUnit));
            };
            if state.attached || state.device != device {
                return Err(IommuError::Attached);
            }
            // One space, one id: the flusher is bound to the id the domain
            // was made with.
            if state.domain.tlb().id != id {
                return Err(IommuError::DomainIdInUse);
            }
            let root = state.domain.root();
            let attached = <Pf<D> as IommuPlatform>::unit()
                .try_with_unit(|unit| {
                    fits(unit)?;
                    // SAFETY: as above, for the domain kept since the
                    // first attach.
                    unsafe { unit.attach(device, id, root) }
                })
                .unwrap_or(Err(IommuError::NoUnit));
            state.attached = attached.is_ok() || written(attached);
            attached
        })
    }

    /// Detaches the device: its DMA faults from now on (see
    /// [`Iommu::detach`](crate::iommu::Iommu::detach)). Memory allocated or shared through the space
    /// stays valid; freeing it still unmaps it.
    pub fn detach(&self) -> Result<(), IommuError> {
        self.locked(|state| {
            let Some(state) = state.as_mut().filter(|s| s.attached) else {
                return Ok(());
            };
            Pf::<D>::with_unit(|unit| unit.detach(state.device))?;
            state.attached = false;
            Ok(())
        })
    }

    /// The device attached, if it is.
    pub fn device(&self) -> Option<SourceId> {
        self.locked(|state| state.as_ref().filter(|s| s.attached).map(|s| s.device))
    }

    /// IOVA pages mapped (or reserved) now.
    pub fn pages_in_use(&self) -> usize {
        self.locked(|state| {
            state
                .as_ref()
                .map_or(0, |s| s.used.iter().map(|w| w.count_ones() as usize).sum())
        })
    }

    /// Gives `channel` this device's faults: each time it reports
    /// progress, the DMA the unit refused for the device fails the request
    /// that made it ([`Channel::set_fault_hook`]). `Err` if no device is
    /// attached.
    pub fn report_faults_to<E: Engine<Hal = super::IovaHal<D>>>(
        &self,
        channel: &mut Channel<E>,
    ) -> Result<(), IommuError> {
        let device = self.device().ok_or(IommuError::NotAttached)?;
        let hook = FaultHook::new(&UnitFaults::<Pf<D>>(PhantomData), device);
        // SAFETY: the source is a zero-sized value whose every call goes
        // through `IommuPlatform::with_unit`, which serialises all uses of the
        // unit from any thread; it needs nothing to stay alive.
        unsafe { channel.set_fault_hook(Some(hook)) };
        Ok(())
    }

    /// Reserves `pages` free IOVA pages whose last byte is at most `mask`
    /// and maps them with `map(iova of page i, i)`; all or nothing. With
    /// `shared`, the CPU address of the first page of a buffer being
    /// shared, it is remembered for [`IovaSpace::cpu_of`] (at most
    /// [`SHARED_BUFFERS`] at once: `NoMemory` beyond).
    pub(super) fn map(
        &self,
        pages: usize,
        mask: u64,
        mut frame_of: impl FnMut(usize) -> Option<u64>,
        prot: PageProt,
        shared: Option<u64>,
    ) -> Result<u64, HalError> {
        if pages == 0 {
            return Err(HalError::ZeroLength);
        }
        self.locked(|state| {
            let state = state.as_mut().ok_or(HalError::NotSupported)?;
            // Checked before anything is mapped: all or nothing.
            let slot = match shared {
                Some(_) => Some(
                    state
                        .shares
                        .iter()
                        .position(|s| s.pages == 0)
                        .ok_or(HalError::NoMemory)?,
                ),
                None => None,
            };
            // Page i's last byte is base + (i + 1) * PAGE - 1 <= mask.
            let limit = (mask.saturating_sub(self.base).saturating_add(1) / PAGE)
                .min(WINDOW_PAGES as u64) as usize;
            let first = state.find(pages, limit).ok_or(HalError::NoMemory)?;
            let iova = self.base + first as u64 * PAGE;
            for i in 0..pages {
                let mapped = frame_of(i).ok_or(HalError::NotSupported).and_then(|phys| {
                    let frame = PhysFrame::containing_address(
                        PhysAddr::try_new(phys).map_err(|_| HalError::BeyondDmaMask)?,
                    );
                    let at = page(iova + i as u64 * PAGE);
                    // SAFETY: the frames are DMA memory the `Memory` Hal
                    // gave, or a buffer `share`'s caller keeps valid; both
                    // are unmapped (and flushed) before they go back. The
                    // domain is never loaded into a CPU and has no
                    // copy-on-write area.
                    unsafe { state.domain.remap_pfn_range(state.area, at, frame, 1, prot) }
                        .map_err(|_| HalError::NoMemory)
                });
                if let Err(e) = mapped {
                    // All or nothing: what was mapped comes out again.
                    if i > 0
                        && state
                            .domain
                            .zap_range(state.area, page(iova), i as u64)
                            .is_ok()
                    {
                        for j in first..first + i {
                            state.mark(j, false);
                        }
                    }
                    return Err(e);
                }
                state.mark(first + i, true);
            }
            // A unit that cached the pages as not present, or has not
            // seen the new entries, must before the device is told of
            // them; one that will not is given nothing.
            let id = state.domain.tlb().id;
            let published = <Pf<D> as IommuPlatform>::unit()
                .try_with_unit(|unit| unit.flusher(id).mapped(VirtAddr::new(iova), pages as u64))
                .unwrap_or(Err(IommuError::NoUnit));
            if published.is_err() {
                if state
                    .domain
                    .zap_range(state.area, page(iova), pages as u64)
                    .is_ok()
                {
                    for j in first..first + pages {
                        state.mark(j, false);
                    }
                }
                return Err(HalError::NotSupported);
            }
            if let (Some(at), Some(va)) = (slot, shared) {
                state.shares[at] = Share { first, pages, va };
            }
            Ok(iova)
        })
    }

    /// Unmaps `pages` pages from `iova` (the IOTLB forgets them before
    /// this returns) and frees their IOVAs; returns the physical address
    /// the first one mapped.
    pub(super) fn unmap(&self, iova: u64, pages: usize) -> Option<u64> {
        self.locked(|state| {
            let state = state.as_mut()?;
            let first = usize::try_from(iova.checked_sub(self.base)? / PAGE).ok()?;
            if first.checked_add(pages)? > WINDOW_PAGES {
                return None;
            }
            let phys = state
                .domain
                .translate(VirtAddr::try_new(iova).ok()?)
                .and_then(|leaf| leaf.phys_of(VirtAddr::new(iova)))
                .map(PhysAddr::as_u64);
            state
                .domain
                .zap_range(state.area, page(iova & !(PAGE - 1)), pages as u64)
                .ok()?;
            for i in first..first + pages {
                state.mark(i, false);
            }
            for share in &mut state.shares {
                if share.first < first + pages && first < share.first + share.pages {
                    *share = Share::FREE;
                }
            }
            phys
        })
    }

    /// Where the CPU reaches the byte IOVA `iova` maps: in a shared buffer
    /// at the address its sharer gave, else the frame's physical address
    /// (DMA memory of the `Memory` Hal).
    pub(super) fn cpu_of(&self, iova: u64) -> Option<Cpu> {
        self.locked(|state| {
            let state = state.as_ref()?;
            let index = usize::try_from(iova.checked_sub(self.base)? / PAGE).ok()?;
            let shared = state
                .shares
                .iter()
                .find(|s| s.first <= index && index < s.first + s.pages);
            if let Some(share) = shared {
                let offset = iova - (self.base + share.first as u64 * PAGE);
                return Some(Cpu::Shared(share.va + offset));
            }
            let va = VirtAddr::try_new(iova).ok()?;
            Some(Cpu::Phys(state.domain.translate(va)?.phys_of(va)?.as_u64()))
        })
    }
}

impl<D: DeviceDma> State<D> {
    /// The first run of `pages` free window pages below page `limit`.
    fn find(&self, pages: usize, limit: usize) -> Option<usize> {
        let mut run = 0;
        for i in 0..limit {
            if self.used[i / 64] & 1 << (i % 64) != 0 {
                run = 0;
                continue;
            }
            run += 1;
            if run == pages {
                return Some(i + 1 - pages);
            }
        }
        None
    }

    fn mark(&mut self, index: usize, used: bool) {
        let bit = 1 << (index % 64);
        if used {
            self.used[index / 64] |= bit;
        } else {
            self.used[index / 64] &= !bit;
        }
    }
}

/// A unit's faults through [`IommuPlatform::with_unit`]: a [`FaultSource`] with
/// nothing to keep alive.
struct UnitFaults<U>(PhantomData<fn() -> U>);

impl<U: IommuPlatform> FaultSource for UnitFaults<U> {
    fn take_fault_of(&self, device: SourceId) -> Option<DmaFault> {
        U::with_unit(|unit| unit.take_fault_of(device))
    }
}

/// Whether a failed attach had already written the context entry: an
/// invalidation that did not finish.
fn written(attached: Result<(), IommuError>) -> bool {
    matches!(attached, Err(IommuError::TimedOut | IommuError::QueueError))
}

impl<D: DeviceDma> Drop for IovaSpace<D> {
    fn drop(&mut self) {
        // The unit may still walk the domain (a space outside a static,
        // dropped while attached): its tables are leaked, never freed.
        if let Some(state) = self.state.get_mut().take() {
            core::mem::forget(state);
        }
    }
}

fn page(iova: u64) -> Page {
    Page::containing_address(VirtAddr::new_truncate(iova))
}
