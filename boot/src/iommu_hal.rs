//! The kernel's glue for `dmaengine::iommu::dma`: DMA addresses that are
//! IOVAs in a device's own domain. [`Kernel`] says what lies under every
//! space (the unit a test took, behind a lock; the frames of [`KernelHal`];
//! the CPU's page tables for shared buffers), and [`Lsi`] and [`Edu`] are
//! the LSI53C895A's and the edu device's spaces, so a driver over
//! `IovaHal<Lsi>` hands the chip only IOVAs of its own domain. While
//! [`attach`]'s guard lives, the unit is the guard's.

use dmaengine::engine::shared::X86Interrupts;
use dmaengine::iommu::dma::{DeviceDma, IommuPlatform, IovaSpace};
use dmaengine::iommu::{DomainId, IommuError};
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

// SAFETY: this static serves the LSI53C895A alone.
unsafe impl DeviceDma for Lsi {
    type Platform = Kernel;
    fn space() -> &'static IovaSpace<Lsi> {
        &LSI_IOVAS
    }
}

/// The edu device's IOVAs: the same window, in a domain of its own.
pub struct Edu;

static EDU_IOVAS: IovaSpace<Edu> = IovaSpace::new(0x8000_0000);

// SAFETY: this static serves the edu device alone.
unsafe impl DeviceDma for Edu {
    type Platform = Kernel;
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
/// detaches them and turns translation off: the kernel's rule is that the
/// devices' channels go first.
pub fn attach(
    lsi: &crate::pci::Device,
    edu: &crate::pci::Device,
) -> Result<Attached, &'static str> {
    *UNIT.lock() = Some(take()?);
    let guard = Attached;
    let why = |e| match e {
        IommuError::OutOfMemory => "no memory for a domain",
        _ => "a device is attached elsewhere",
    };
    let id = |n| DomainId::new(n).expect("a domain id");
    LSI_IOVAS
        .attach(source_of(lsi), id(LSI_DOMAIN), mapper(), db())
        .map_err(why)?;
    EDU_IOVAS
        .attach(source_of(edu), id(EDU_DOMAIN), mapper(), db())
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
        let _ = LSI_IOVAS.detach();
        let _ = EDU_IOVAS.detach();
        // SAFETY: the kernel's rule (see `attach`): the device's channels
        // are dropped before the guard, so nothing is in flight.
        let _ = Kernel::with_unit(|unit| unsafe { unit.disable() });
        // Dropping the unit frees its own tables; the space keeps its
        // domain's for the next attach.
        UNIT.lock().take();
    }
}
