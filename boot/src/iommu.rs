//! The kernel's side of `dmaengine::iommu`: the VT-d unit found through
//! ACPI's DMAR table, its tables and domains' tables from the frame
//! database, one user at a time.

use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use dmaengine::iommu::{Iommu, SourceId, regs};
use dmaengine::mm::frame::FrameDb;
use dmaengine::mm::traits::OffsetMapper;
use dmaengine::mmio::MmioRegion;

use crate::mem::phys_to_virt;
use crate::mm::{db, mapper};
use crate::{acpi, pci, platform};

/// The unit, with its tables in the frame database.
pub type Unit = Iommu<MmioRegion, OffsetMapper, &'static FrameDb<'static>>;

/// A domain of the unit, its pages counted and its tables kept by the frame
/// database.
pub type Domain<'a> = dmaengine::iommu::Domain<
    'a,
    &'static FrameDb<'static>,
    OffsetMapper,
    &'static FrameDb<'static>,
    MmioRegion,
>;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// The register base of the first DMA-remapping unit, if ACPI lists one
/// (`qemu-run.sh` gives QEMU `-machine q35 -device intel-iommu` unless
/// `IOMMU=off`).
pub fn base() -> Option<u64> {
    let rsdp = platform().boot.rsdp()?;
    acpi::dmar_units(rsdp).first().copied()
}

/// The unit, held by one user at a time (dropping it turns translation off
/// and frees its tables).
pub struct Exclusive(Unit);

impl Deref for Exclusive {
    type Target = Unit;
    fn deref(&self) -> &Unit {
        &self.0
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        TAKEN.store(false, Ordering::Release);
    }
}

/// Takes over the unit.
pub fn take() -> Result<Exclusive, &'static str> {
    let base = base().ok_or("no DMA-remapping unit in the ACPI DMAR table")?;
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err("the IOMMU is in use");
    }
    let window = NonNull::new(phys_to_virt(base)).ok_or("null register window")?;
    // SAFETY: the DRHD's register page, device memory the direct map maps
    // uncached; the kernel never makes references into it.
    let regs = unsafe { MmioRegion::new(window, regs::MMIO_SIZE) };
    // SAFETY: the unit's own register window, programmed by nobody else
    // (TAKEN); queued invalidation is off since reset; tables come from the
    // frame database, which the direct map covers.
    match unsafe { Iommu::new(regs, mapper(), db()) } {
        Ok(unit) => Ok(Exclusive(unit)),
        Err(_) => {
            TAKEN.store(false, Ordering::Release);
            Err("the IOMMU refused to start")
        }
    }
}

/// A PCI function's requester id.
pub fn source_of(device: &pci::Device) -> SourceId {
    SourceId {
        bus: device.address.bus(),
        device: device.address.device(),
        function: device.address.function(),
    }
}
