//! The kernel's glue for `dmaengine::iommu::dma`: DMA addresses that are
//! IOVAs in a device's own domain. [`Kernel`] says what lies under every
//! space (the unit a test took, in a `StaticUnit`; the frames of
//! [`KernelHal`]; the CPU's page tables for shared buffers), and [`Lsi`]
//! and [`Edu`] are the LSI53C895A's and the edu device's spaces, so a
//! driver over `IovaHal<Lsi>` hands the chip only IOVAs of its own domain.
//! While [`attach`]'s guard lives, the unit is the guard's.

use dmaengine::engine::shared::X86Interrupts;
use dmaengine::iommu::dma::{DeviceDma, IommuPlatform, StaticUnit};
use dmaengine::iommu::{DomainId, IommuError};
use dmaengine::mm::frame::FrameDb;
use dmaengine::mm::traits::OffsetMapper;
use dmaengine::mmio::MmioRegion;

use crate::dma::KernelHal;
use crate::iommu::{released, source_of, take_unit};
use crate::mem::paging;
use crate::mm::{db, mapper};

/// The unit's lock, as the IOVA layer takes it.
pub type Unit = StaticUnit<MmioRegion, OffsetMapper, &'static FrameDb<'static>, X86Interrupts>;

/// The unit while an [`Attached`] guard lives.
static UNIT: Unit = StaticUnit::new();

/// The kernel under the IOVA spaces.
pub struct Kernel;

// SAFETY: `KernelHal` hands out memory by physical address;
// `paging::translate` walks the live page tables, whose kernel mappings
// never move a page.
unsafe impl IommuPlatform for Kernel {
    type Unit = Unit;
    type Memory = KernelHal;

    fn unit() -> &'static Unit {
        &UNIT
    }

    fn virt_to_phys(va: *const u8) -> Option<u64> {
        paging::translate(va as u64)
    }
}

dmaengine::iova_device!(
    /// The LSI53C895A's IOVAs: 64 MiB from 2 GiB, within its 32-bit reach.
    pub Lsi: Kernel, 0x8000_0000
);
dmaengine::iova_device!(
    /// The edu device's IOVAs: the same window, in a domain of its own.
    pub Edu: Kernel, 0x8000_0000
);

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
/// `lsi` and `edu` are those devices (the spaces give each what its
/// driver maps), and every channel over `IovaHal<Lsi>` or `IovaHal<Edu>`
/// is dropped (its requests ended) before the guard: translation off
/// turns the IOVAs still in flight into physical addresses.
pub unsafe fn attach(
    lsi: &crate::pci::Device,
    edu: &crate::pci::Device,
) -> Result<Attached, &'static str> {
    // `take_unit` refuses while the installed unit is out (TAKEN), so a
    // second unit cannot meet the first here; if it did, it is leaked, not
    // dropped (dropping it would turn the installed one's translation off).
    if let Err(second) = UNIT.install(take_unit()?) {
        core::mem::forget(second);
        return Err("the spaces are attached already");
    }
    let guard = Attached;
    let why = |e| match e {
        IommuError::OutOfMemory => "no memory for a domain",
        _ => "a device is attached elsewhere",
    };
    let id = |n| DomainId::new(n).expect("a domain id");
    // SAFETY: the caller's contract: these are the spaces' devices.
    unsafe {
        Lsi::space()
            .attach(source_of(lsi), id(LSI_DOMAIN), mapper(), db())
            .map_err(why)?;
        Edu::space()
            .attach(source_of(edu), id(EDU_DOMAIN), mapper(), db())
            .map_err(why)?;
    }
    Kernel::with_unit(|unit| unit.enable()).map_err(|_| "the unit would not translate")?;
    Ok(guard)
}

impl Attached {
    /// Runs `f` with the unit (for its fault records).
    pub fn with_unit<T>(&self, f: impl FnOnce(&dmaengine::iommu::dma::UnitOf<Kernel>) -> T) -> T {
        Kernel::with_unit(f)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if Lsi::space().detach().is_err() || Edu::space().detach().is_err() {
            // A device may still translate through its domain: the unit
            // stays, translating, rather than let its IOVAs through.
            return;
        }
        // SAFETY: `attach`'s contract: the devices' channels are gone, and
        // both devices are detached.
        let _ = Kernel::with_unit(|unit| unsafe { unit.disable() });
        // SAFETY: both spaces are detached, and no space is used until the
        // next `attach` installs a unit. Dropping it frees its own tables;
        // the spaces keep their domains' for the next attach.
        drop(unsafe { UNIT.take() });
        released();
    }
}
