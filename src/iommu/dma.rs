//! DMA through the IOMMU, one domain per device: [`IovaHal<D>`] is a
//! [`Hal`] whose DMA addresses are IOVAs in device `D`'s own domain, so a
//! driver over it (any of the crate's three) hands its device IOVAs, and
//! the device reaches the pages mapped for it and nothing else: whole
//! pages, so a buffer shared with [`Hal::share`] that does not fill its
//! first and last pages shares the rest of them too (as Linux's
//! `dma_map_single` without bounce buffers does); share page-aligned
//! buffers, or use [`Dma`](crate::hal::Dma) buffers, where that matters.
//!
//! Linux's `dma_map_*` take the device as an argument; the crate's [`Hal`]
//! is a set of associated functions (as `virtio-drivers`' is), so the
//! device is a type instead: the kernel says once what lies under every
//! space ([`IommuPlatform`]: its unit in a [`StaticUnit`], its physical
//! DMA memory), declares one type per device with [`iova_device!`](crate::iova_device)
//! (which gives it a `static` [`IovaSpace`] of its own), and builds the
//! driver over `IovaHal<ThatType>`. Nothing else changes for the driver.
//!
//! ```
//! use dmaengine::engine::shared::X86Interrupts;
//! use dmaengine::iommu::dma::{IommuPlatform, IovaHal, StaticUnit};
//! use dmaengine::mm::traits::{NoFree, OffsetMapper};
//! use dmaengine::mmio::MmioRegion;
//! # use core::ptr::NonNull;
//! # use dmaengine::hal::{DmaAddr, Hal};
//! # use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size4KiB};
//! # struct BootFrames;
//! # // SAFETY: hands out nothing in this example.
//! # unsafe impl FrameAllocator<Size4KiB> for BootFrames {
//! #     fn allocate_frame(&mut self) -> Option<PhysFrame> { None }
//! # }
//! # /// The kernel's Hal without an IOMMU.
//! # struct PhysHal;
//! # // SAFETY: hands out no memory in this example.
//! # unsafe impl Hal for PhysHal {
//! #     fn dma_alloc(_: usize, _: u64) -> Option<(DmaAddr, NonNull<u8>)> { None }
//! #     unsafe fn dma_dealloc(_: DmaAddr, _: NonNull<u8>, _: usize) {}
//! #     fn phys_to_virt(_: DmaAddr) -> NonNull<u8> { NonNull::dangling() }
//! # }
//! type Unit = StaticUnit<MmioRegion, OffsetMapper, NoFree<BootFrames>, X86Interrupts>;
//! /// Installed at boot, once the DMAR table named the unit.
//! static UNIT: Unit = StaticUnit::new();
//!
//! /// The kernel, as the IOVA layer sees it.
//! struct Kernel;
//! // SAFETY: `PhysHal` hands out memory by physical address.
//! unsafe impl IommuPlatform for Kernel {
//!     type Unit = Unit;
//!     type Memory = PhysHal;
//!     fn unit() -> &'static Unit {
//!         &UNIT
//!     }
//! }
//!
//! // The LSI53C895A, with its IOVAs from 2 GiB in a domain of its own.
//! dmaengine::iova_device!(Lsi: Kernel, 0x8000_0000);
//! // Its driver: `Lsi53c895a<IovaHal<Lsi>>`.
//! type LsiHal = IovaHal<Lsi>;
//! ```
//!
//! At boot the kernel installs the unit ([`StaticUnit::install`]),
//! [`attach`](IovaSpace::attach)es each device to its space (its PCI
//! requester id, a domain id of its own, a mapper and an allocator for
//! the domain's tables) and turns translation on ([`Iommu::enable`]);
//! each channel over the device learns of the DMA the unit refused with
//! one call, [`IovaSpace::report_faults_to`].
//!
//! IOVAs come from a window of [`WINDOW_PAGES`] pages from the base the
//! space was made with (below 4 GiB for a device such as the
//! LSI53C895A, whose descriptors hold 32-bit addresses), first fit, and
//! are reused only after their unmapping was flushed from the IOTLB.
//!
//! Locks: the space's own lock (interrupts masked through the unit's
//! `Irq`) is taken first, then the unit's ([`StaticUnit::with`]) for an
//! IOTLB flush; a channel with its fault hook takes its own lock, then the
//! unit's. So the kernel must never lock a channel or call into a space
//! from inside [`StaticUnit::with`].

use core::marker::PhantomData;
use core::ptr::NonNull;

use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::{DmaFault, DomainId, Iommu, IommuError, SourceId};
use crate::engine::{Channel, Engine, FaultHook, FaultSource};
use crate::hal::{Direction, DmaAddr, Hal, HalError, PAGE_SIZE};
use crate::mm::pte::PageProt;
use crate::mm::pte::SecondLevel;
use crate::mm::space::{AddressSpace, VmaId};
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{NoPages, TableAllocator, TableMapper};
use crate::mm::vma::VmFlags;
use crate::mmio::Registers;
use crate::sync::IrqControl;

/// Pages of IOVA space each device has (64 MiB).
pub const WINDOW_PAGES: usize = WORDS * 64;
/// Words of the IOVA bitmap.
const WORDS: usize = 256;
const PAGE: u64 = PAGE_SIZE as u64;

/// The kernel's VT-d unit in a `static`, behind a lock taken with
/// interrupts masked through `I`: built empty at compile time, given the
/// unit once at boot ([`StaticUnit::install`]). Every use of the unit by
/// the IOVA layer goes through it, from any CPU.
pub struct StaticUnit<R: Registers, M: TableMapper, A: TableAllocator, I: IrqControl> {
    unit: spin::Mutex<Option<Iommu<R, M, A>>>,
    _irq: PhantomData<fn() -> I>,
}

impl<R: Registers, M: TableMapper, A: TableAllocator, I: IrqControl> StaticUnit<R, M, A, I> {
    /// No unit yet.
    pub const fn new() -> Self {
        StaticUnit {
            unit: spin::Mutex::new(None),
            _irq: PhantomData,
        }
    }

    /// Puts `unit` in; if one is there already, `unit` comes back.
    // The refused unit is handed back whole (its tables are its own).
    #[allow(clippy::result_large_err)]
    pub fn install(&self, unit: Iommu<R, M, A>) -> Result<(), Iommu<R, M, A>> {
        self.with_lock(|slot| match slot {
            Some(_) => Err(unit),
            None => {
                *slot = Some(unit);
                Ok(())
            }
        })
    }

    /// Runs `f` with the unit under the lock, interrupts masked; `None`
    /// (and `f` not run) if no unit was installed.
    pub fn with<T>(&self, f: impl FnOnce(&Iommu<R, M, A>) -> T) -> Option<T> {
        self.with_lock(|slot| slot.as_ref().map(f))
    }

    /// Takes the unit out (dropping it turns translation off and frees its
    /// tables).
    ///
    /// # Safety
    /// No [`IovaSpace`] over this unit is attached (each one's `detach`
    /// succeeded, or it was never attached), and none is used until a
    /// unit is installed again: a space attached through one unit must
    /// never meet another.
    pub unsafe fn take(&self) -> Option<Iommu<R, M, A>> {
        self.with_lock(Option::take)
    }

    fn with_lock<T>(&self, f: impl FnOnce(&mut Option<Iommu<R, M, A>>) -> T) -> T {
        let were_on = I::disable();
        let result = f(&mut self.unit.lock());
        I::restore(were_on);
        result
    }
}

impl<R: Registers, M: TableMapper, A: TableAllocator, I: IrqControl> Default
    for StaticUnit<R, M, A, I>
{
    fn default() -> Self {
        Self::new()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A lock around the unit: [`StaticUnit`] (sealed, so the layer's locking
/// is always the crate's own).
pub trait UnitLock: sealed::Sealed + Sync + 'static {
    /// The unit's register window.
    type Regs: Registers;
    /// How the unit's and the domains' tables are reached.
    type Mapper: TableMapper + Send;
    /// Where the unit's and the domains' tables come from.
    type Alloc: TableAllocator + Send;
    /// Interrupt masking around the unit's lock and each space's.
    type Irq: IrqControl;

    /// Runs `f` with the unit, serialised with every other use.
    ///
    /// # Panics
    /// If no unit is installed: a space is attached only through an
    /// installed unit, which stays until every space is detached.
    fn with_unit<T>(&self, f: impl FnOnce(&Iommu<Self::Regs, Self::Mapper, Self::Alloc>) -> T)
    -> T;

    /// [`UnitLock::with_unit`], or `None` if no unit is installed.
    fn try_with_unit<T>(
        &self,
        f: impl FnOnce(&Iommu<Self::Regs, Self::Mapper, Self::Alloc>) -> T,
    ) -> Option<T>;
}

impl<R, M, A, I> sealed::Sealed for StaticUnit<R, M, A, I>
where
    R: Registers,
    M: TableMapper,
    A: TableAllocator,
    I: IrqControl,
{
}

impl<R, M, A, I> UnitLock for StaticUnit<R, M, A, I>
where
    R: Registers + Send + 'static,
    M: TableMapper + Send + 'static,
    A: TableAllocator + Send + 'static,
    I: IrqControl + 'static,
{
    type Regs = R;
    type Mapper = M;
    type Alloc = A;
    type Irq = I;

    fn with_unit<T>(&self, f: impl FnOnce(&Iommu<R, M, A>) -> T) -> T {
        self.with(f).expect("the IOMMU unit is installed")
    }

    fn try_with_unit<T>(&self, f: impl FnOnce(&Iommu<R, M, A>) -> T) -> Option<T> {
        self.with(f)
    }
}

/// What the kernel provides under every device's IOVA space: its VT-d
/// unit (in a [`StaticUnit`]), the physical memory it hands devices, and
/// how a CPU address becomes a physical one.
///
/// # Safety
/// `unit` returns the same static every time. `Memory`'s DMA addresses are
/// the physical addresses of the memory it returns (it is the kernel's Hal
/// without an IOMMU: they are mapped as frames). `virt_to_phys`, if
/// implemented, returns the physical address of the byte at `va` in the
/// kernel's address space, on a page that stays there (not moved or
/// swapped) while any buffer on it is shared.
pub unsafe trait IommuPlatform: 'static {
    /// The unit's lock: a [`StaticUnit`].
    type Unit: UnitLock;
    /// The physical memory under the IOVAs: the kernel's `Hal` as it would
    /// be without an IOMMU (its DMA addresses are physical addresses).
    type Memory: Hal;

    /// The unit.
    fn unit() -> &'static Self::Unit;

    /// The physical address of the byte at `va`, for [`Hal::share`] of
    /// memory that did not come from `dma_alloc`. The default refuses
    /// such sharing.
    fn virt_to_phys(va: *const u8) -> Option<u64> {
        let _ = va;
        None
    }

    /// Runs `f` with the unit ([`UnitLock::with_unit`]).
    fn with_unit<T>(f: impl FnOnce(&UnitOf<Self>) -> T) -> T {
        Self::unit().with_unit(f)
    }
}

/// The unit under platform `P`.
pub type UnitOf<P> = Iommu<
    <<P as IommuPlatform>::Unit as UnitLock>::Regs,
    <<P as IommuPlatform>::Unit as UnitLock>::Mapper,
    <<P as IommuPlatform>::Unit as UnitLock>::Alloc,
>;

/// One device behind the IOMMU: where its IOVA space lives. The
/// [`iova_device!`](crate::iova_device) macro writes the type, its space
/// and this impl in one line.
///
/// # Safety
/// `space` returns the same static every time, used for this device
/// alone.
pub unsafe trait DeviceDma: Sized + 'static {
    /// The kernel's platform.
    type Platform: IommuPlatform;

    /// The device's IOVA space.
    fn space() -> &'static IovaSpace<Self>;
}

/// Declares a device type for [`IovaHal`]: `iova_device!(pub Lsi: Kernel,
/// 0x8000_0000);` is a unit struct `Lsi` whose IOVA space, a static of its
/// own, lies under platform `Kernel` with its window from IOVA
/// `0x8000_0000`. The space is reached as `Lsi::space()`
/// ([`DeviceDma::space`]).
#[macro_export]
macro_rules! iova_device {
    ($(#[$meta:meta])* $vis:vis $name:ident: $platform:ty, $base:expr) => {
        $(#[$meta])*
        $vis struct $name;

        // SAFETY: the static is this type's own, declared here and named
        // nowhere else.
        unsafe impl $crate::iommu::dma::DeviceDma for $name {
            type Platform = $platform;

            fn space() -> &'static $crate::iommu::dma::IovaSpace<$name> {
                static SPACE: $crate::iommu::dma::IovaSpace<$name> =
                    $crate::iommu::dma::IovaSpace::new($base);
                &SPACE
            }
        }
    };
}

/// Declares a platform for the IOVA layer with its unit in a static of its
/// own: `iova_platform!(unsafe pub Kernel: StaticUnit<..>, PhysHal);` is
/// a unit struct `Kernel` implementing [`IommuPlatform`] with
/// `Unit = StaticUnit<..>` (reached as `Kernel::unit()`, to install the
/// unit) and `Memory = PhysHal`, and no `virt_to_phys` (write the impl by
/// hand to share buffers that are not DMA memory). The `unsafe` is the
/// kernel's word that `PhysHal` hands out memory by physical address.
#[macro_export]
macro_rules! iova_platform {
    ($(#[$meta:meta])* unsafe $vis:vis $name:ident: $unit:ty, $memory:ty) => {
        $(#[$meta])*
        $vis struct $name;

        // SAFETY: the caller's `unsafe`: `$memory`'s DMA addresses are
        // physical addresses; the unit is a static of this type's own.
        unsafe impl $crate::iommu::dma::IommuPlatform for $name {
            type Unit = $unit;
            type Memory = $memory;

            fn unit() -> &'static $unit {
                static UNIT: $unit = <$unit>::new();
                &UNIT
            }
        }
    };
}

/// The platform of device `D`.
type Pf<D> = <D as DeviceDma>::Platform;
/// The unit lock of device `D`'s platform.
type Lk<D> = <Pf<D> as IommuPlatform>::Unit;

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
/// `static` (see the [module docs](self)).
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
    /// unit's translation is on ([`Iommu::enable`]).
    ///
    /// The unit is asked first whether it would take the device and the id
    /// ([`Iommu::check_attach`]), all under its lock, so a refusal takes
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
        let window_end = self.base.checked_add(WINDOW_PAGES as u64 * PAGE);
        if !self.base.is_multiple_of(PAGE) || window_end.is_none_or(|end| end > 1 << 48) {
            return Err(IommuError::BadWindow);
        }
        self.locked(|state| {
            let Some(state) = state else {
                // Before a unit is installed: refused, not a panic with the
                // space's lock held and interrupts masked.
                let unit = <Pf<D> as IommuPlatform>::unit();
                return unit
                    .try_with_unit(|unit| {
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
            // SAFETY: as above, for the domain kept since the first attach.
            let attached = <Pf<D> as IommuPlatform>::unit()
                .try_with_unit(|unit| unsafe { unit.attach(device, id, root) })
                .unwrap_or(Err(IommuError::NoUnit));
            state.attached = attached.is_ok() || written(attached);
            attached
        })
    }

    /// Detaches the device: its DMA faults from now on (see
    /// [`Iommu::detach`]). Memory allocated or shared through the space
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
    pub fn report_faults_to<E: Engine<Hal = IovaHal<D>>>(
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
    /// and maps them with `map(iova of page i, i)`; all or nothing.
    fn map(
        &self,
        pages: usize,
        mask: u64,
        mut frame_of: impl FnMut(usize) -> Option<u64>,
        prot: PageProt,
    ) -> Result<u64, HalError> {
        if pages == 0 {
            return Err(HalError::ZeroLength);
        }
        self.locked(|state| {
            let state = state.as_mut().ok_or(HalError::NotSupported)?;
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
            Ok(iova)
        })
    }

    /// Unmaps `pages` pages from `iova` (the IOTLB forgets them before
    /// this returns) and frees their IOVAs; returns the physical address
    /// the first one mapped.
    fn unmap(&self, iova: u64, pages: usize) -> Option<u64> {
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
            phys
        })
    }

    /// The physical address IOVA `iova` maps.
    fn phys_of(&self, iova: u64) -> Option<u64> {
        self.locked(|state| {
            let va = VirtAddr::try_new(iova).ok()?;
            Some(state.as_ref()?.domain.translate(va)?.phys_of(va)?.as_u64())
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

/// The [`Hal`] of device `D`: DMA addresses are IOVAs of its domain (see
/// the [module docs](self)).
pub struct IovaHal<D: DeviceDma>(PhantomData<fn() -> D>);

// SAFETY: `dma_alloc` returns the `Memory` Hal's memory (contiguous,
// zeroed, mapped for the CPU), mapped for the device at consecutive IOVAs
// before it is returned and unmapped (IOTLB flushed) before it goes back;
// `share` maps exactly the pages the buffer lies on (read-only when the
// device only reads) and `unshare` removes them; requests name only
// addresses inside the buffers, so the rest of a partial page is reached
// only by a device that disobeys its descriptors.
unsafe impl<D: DeviceDma> Hal for IovaHal<D> {
    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        // Anywhere in physical memory: the device sees the IOVAs only.
        let (phys, ptr) = <Pf<D> as IommuPlatform>::Memory::dma_alloc(pages, u64::MAX)?;
        let frame = |i: usize| Some(phys + (i * PAGE_SIZE) as u64);
        match D::space().map(pages, dma_mask, frame, PageProt::READ_WRITE) {
            Ok(iova) => Some((iova, ptr)),
            Err(_) => {
                // SAFETY: just allocated, never handed to a device.
                unsafe { <Pf<D> as IommuPlatform>::Memory::dma_dealloc(phys, ptr, pages) };
                None
            }
        }
    }

    unsafe fn dma_dealloc(iova: DmaAddr, vaddr: NonNull<u8>, pages: usize) {
        if let Some(phys) = D::space().unmap(iova, pages) {
            // SAFETY: the caller's contract: this allocation, unused; the
            // device can no longer reach it (unmapped, flushed).
            unsafe { <Pf<D> as IommuPlatform>::Memory::dma_dealloc(phys, vaddr, pages) };
        }
    }

    /// # Panics
    /// If `iova` is not mapped in the device's domain: no request of the
    /// device's channels may name one (their `prep` contract).
    fn phys_to_virt(iova: DmaAddr) -> NonNull<u8> {
        let phys = D::space()
            .phys_of(iova)
            .expect("an IOVA this device's space mapped");
        <Pf<D> as IommuPlatform>::Memory::phys_to_virt(phys)
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: Direction) -> Result<DmaAddr, HalError> {
        let start = buffer.cast::<u8>().as_ptr() as u64;
        let last = (buffer.len() as u64)
            .checked_sub(1)
            .ok_or(HalError::ZeroLength)
            .and_then(|n| start.checked_add(n).ok_or(HalError::BeyondDmaMask))?;
        let first_page = start & !(PAGE - 1);
        let pages = ((last & !(PAGE - 1)) - first_page) / PAGE + 1;
        let prot = if direction == Direction::ToDevice {
            PageProt::READ_ONLY
        } else {
            PageProt::READ_WRITE
        };
        let frame = |i: usize| {
            let va = first_page + i as u64 * PAGE;
            Pf::<D>::virt_to_phys(va as *const u8).map(|pa| pa & !(PAGE - 1))
        };
        let iova = D::space().map(pages as usize, u64::MAX, frame, prot)?;
        Ok(iova + (start - first_page))
    }

    unsafe fn unshare(iova: DmaAddr, buffer: NonNull<[u8]>, _direction: Direction) {
        // The values of a successful `share`: non-empty, not wrapping.
        let start = buffer.cast::<u8>().as_ptr() as u64;
        let last = start + buffer.len() as u64 - 1;
        let pages = ((last & !(PAGE - 1)) - (start & !(PAGE - 1))) / PAGE + 1;
        D::space().unmap(iova & !(PAGE - 1), pages as usize);
    }
}
