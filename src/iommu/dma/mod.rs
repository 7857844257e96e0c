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

mod hal;
mod space;

use core::marker::PhantomData;

use super::Iommu;
use crate::hal::{Hal, PAGE_SIZE};
use crate::mm::traits::{TableAllocator, TableMapper};
use crate::mmio::Registers;
use crate::sync::IrqControl;

pub use hal::IovaHal;
pub use space::{IovaSpace, UnitFlush};

/// Pages of IOVA space each device has (64 MiB).
pub const WINDOW_PAGES: usize = WORDS * 64;
/// Buffers each device can have shared ([`Hal::share`]) at once; one more
/// is refused (`NoMemory`) until one is unshared. The space remembers
/// where each lies for the CPU, so [`IovaHal`]'s `phys_to_virt` answers
/// for it without asking the `Memory` Hal about frames it never handed
/// out.
pub const SHARED_BUFFERS: usize = 64;
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
