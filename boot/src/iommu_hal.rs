//! The kernel's glue for `dmaengine::iommu::dma`: DMA addresses that are
//! IOVAs in a device's own domain. [`Kernel`] says what lies under every
//! space (the unit a test took, behind a lock; the frames of [`KernelHal`];
//! the CPU's page tables for shared buffers), and [`Lsi`] and [`Edu`] are
//! the LSI53C895A's and the edu device's spaces, so a driver over
//! `IovaHal<Lsi>` hands the chip only IOVAs of its own domain. While
//! [`attach`]'s guard lives, the unit is the guard's.

use dmaengine::engine::shared::X86Interrupts;
use dmaengine::iommu::dma::{DeviceDma, IommuPlatform, IovaSpace};
use dmaengine::iommu::{DomainId, IommuError, SourceId};
use dmaengine::mm::frame::FrameDb;
use dmaengine::mm::traits::OffsetMapper;
use dmaengine::mmio::MmioRegion;
use spin::Mutex;

use crate::dma::KernelHal;
use crate::iommu::{Exclusive, Unit, source_of, take};
use crate::mem::paging;
use crate::mm::{db, mapper};

/// The unit while an [`Attached`] guard lives.
static UNIT: Mutex<Option<Exclusive>> = Mutex::new(None);

/// The kernel under the IOVA spaces.
pub struct Kernel;

// SAFETY: `with_unit` locks the one unit a guard installed, interrupts
// off; a guard detaches its space before it takes the unit back, so every
// space sees one unit while attached. `KernelHal` is DMA memory by
// physical address; `paging::translate` walks the live page tables, whose
// kernel mappings never move a page.
unsafe impl IommuPlatform for Kernel {
    type Regs = MmioRegion;
    type Mapper = OffsetMapper;
    type Alloc = &'static FrameDb<'static>;
    type Memory = KernelHal;
    type Irq = X86Interrupts;

    fn with_unit<T>(f: impl FnOnce(&Unit) -> T) -> T {
        x86_64::instructions::interrupts::without_interrupts(|| {
            f(UNIT
                .lock()
                .as_ref()
                .expect("a unit while a space is in use"))
        })
    }

    fn virt_to_phys(va: *const u8) -> Option<u64> {
        paging::translate(va as u64)
    }
}

/// The LSI53C895A's IOVAs: 64 MiB from 2 GiB, within its 32-bit reach.
pub struct Lsi;

static LSI_IOVAS: IovaSpace<Lsi> = IovaSpace::new(0x8000_0000);

/// The LSI53C895A's requester id, set by the first [`attach`].
static LSI_SOURCE: spin::Once<SourceId> = spin::Once::new();

// SAFETY: the LSI53C895A's requester id as found on the bus (set once),
// and a static that serves it alone.
unsafe impl DeviceDma for Lsi {
    type Platform = Kernel;
    fn source() -> SourceId {
        *LSI_SOURCE.get().expect("set before the first attach")
    }
    fn space() -> &'static IovaSpace<Lsi> {
        &LSI_IOVAS
    }
}

/// The edu device's IOVAs: the same window, in a domain of its own.
pub struct Edu;

static EDU_IOVAS: IovaSpace<Edu> = IovaSpace::new(0x8000_0000);

/// The edu device's requester id, set by the first [`attach`].
static EDU_SOURCE: spin::Once<SourceId> = spin::Once::new();

// SAFETY: the edu device's requester id as found on the bus (set once),
// and a static that serves it alone.
unsafe impl DeviceDma for Edu {
    type Platform = Kernel;
    fn source() -> SourceId {
        *EDU_SOURCE.get().expect("set before the first attach")
    }
    fn space() -> &'static IovaSpace<Edu> {
        &EDU_IOVAS
    }
}

/// The domain ids of the two spaces.
const LSI_DOMAIN: u16 = 7;
const EDU_DOMAIN: u16 = 8;

/// The LSI53C895A and the edu device each in its own domain, translation
/// on, until dropped.
pub struct Attached;

/// Takes the unit, attaches the LSI53C895A (`lsi`) and the edu device
/// (`edu`) to their spaces and turns translation on. Dropping the guard
/// detaches them and turns translation off; a detach that fails keeps
/// the unit as it is, translating, for good.
///
/// # Safety
/// Every channel over `IovaHal<Lsi>` or `IovaHal<Edu>` is dropped (its
/// requests ended) before the guard: translation off turns the IOVAs
/// still in flight into physical addresses.
pub unsafe fn attach(
    lsi: &crate::pci::Device,
    edu: &crate::pci::Device,
) -> Result<Attached, &'static str> {
    {
        let mut unit = UNIT.lock();
        if unit.is_some() {
            return Err("the spaces are attached already");
        }
        *unit = Some(take()?);
    }
    let guard = Attached;
    let lsi = *LSI_SOURCE.call_once(|| source_of(lsi));
    let edu = *EDU_SOURCE.call_once(|| source_of(edu));
    if (lsi, edu) != (Lsi::source(), Edu::source()) {
        return Err("other devices than the first attach's");
    }
    let why = |e| match e {
        IommuError::OutOfMemory => "no memory for a domain",
        _ => "a device is attached elsewhere",
    };
    let id = |n| DomainId::new(n).expect("a domain id");
    LSI_IOVAS
        .attach(id(LSI_DOMAIN), mapper(), db())
        .map_err(why)?;
    EDU_IOVAS
        .attach(id(EDU_DOMAIN), mapper(), db())
        .map_err(why)?;
    Kernel::with_unit(|unit| unit.enable()).map_err(|_| "the unit would not translate")?;
    Ok(guard)
}

impl Attached {
    /// Runs `f` with the unit (for its fault records).
    pub fn with_unit<T>(&self, f: impl FnOnce(&Unit) -> T) -> T {
        Kernel::with_unit(f)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if LSI_IOVAS.detach().is_err() || EDU_IOVAS.detach().is_err() {
            // A device may still translate through its domain: the unit
            // stays, translating, rather than let its IOVAs through.
            return;
        }
        // SAFETY: `attach`'s contract: the devices' channels are gone, and
        // both devices are detached.
        let _ = Kernel::with_unit(|unit| unsafe { unit.disable() });
        // Dropping the unit frees its own tables; the spaces keep their
        // domains' for the next attach.
        UNIT.lock().take();
    }
}
