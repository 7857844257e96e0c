//! How a kernel confines a device with the IOMMU, from the bytes of ACPI's
//! DMAR table to a channel whose device reaches only what its own domain
//! maps. It builds on the DMA example's `Hal` and channel (the DMA glue)
//! and the mm example's frame allocator, here as one that cannot free
//! (`NoFree`: the unit and the domain keep their tables); the glue is what
//! lies between the markers.

use core::time::Duration;

use dmaengine::drivers::lsi53c895a::{Lsi53c895a, regs};
use dmaengine::engine::shared::X86Interrupts;
use dmaengine::engine::{Channel, ErrorKind, PrepFlags, Status};
use dmaengine::hal::{Dma, DmaAddr};
use dmaengine::iommu::dma::{DeviceDma, IommuPlatform, IovaHal, StaticUnit};
use dmaengine::iommu::regs::MMIO_SIZE;
use dmaengine::iommu::{Dmar, DomainId, Iommu, SourceId};
use dmaengine::mm::traits::{NoFree, OffsetMapper};
use dmaengine::mmio::MmioRegion;
use x86_64::VirtAddr;

use super::dma::{Frames, lsi_channel};
use super::mm::KernelFrames;
use crate::mem::{PHYS_OFFSET, device_window};
use crate::time::Delay;
use crate::{Platform, acpi, pci, println};

// glue: begin
dmaengine::iova_platform!(
    /// The kernel under the IOVA layer: `Frames` is physical memory.
    unsafe Kernel: StaticUnit<MmioRegion, OffsetMapper, NoFree<KernelFrames>, X86Interrupts>, Frames
);
dmaengine::iova_device!(Lsi: Kernel, 0x8000_0000);

/// The LSI53C895A in a domain of its own, under the unit the DMAR names.
fn confined_lsi(dmar: &[u8], bus: &[pci::Device]) -> Option<Channel<Lsi53c895a<IovaHal<Lsi>>>> {
    let at = pci::find(bus, regs::VENDOR_ID, regs::DEVICE_ID)?.address;
    let lsi = SourceId::new(at.bus(), at.device(), at.function());
    let unit = Dmar::parse(dmar).ok()?.unit_for(0, lsi, |_, _, _| None)?;
    let window = device_window(unit.register_base, MMIO_SIZE as u64)?;
    // SAFETY: the direct map maps all RAM at PHYS_OFFSET, for good.
    let mapper = unsafe { OffsetMapper::new(VirtAddr::new(PHYS_OFFSET)) };
    let tables = NoFree(KernelFrames);
    // SAFETY: the unit's registers, mapped uncached (`device_window`);
    // nothing but this `Iommu` programs the unit.
    let unit = unsafe { Iommu::new(MmioRegion::new(window, MMIO_SIZE), mapper, tables) };
    Kernel::unit().install(unit.ok()?).ok()?;
    // SAFETY: `lsi` is the chip whose channel below uses `IovaHal<Lsi>`.
    unsafe { Lsi::space().attach(lsi, DomainId::new(1)?, mapper, tables) }.ok()?;
    Kernel::unit().with(Iommu::enable)?.ok()?;
    let mut chan = lsi_channel(bus)?;
    Lsi::space().report_faults_to(&mut chan).ok()?;
    Some(chan)
}
// glue: end

/// Runs the IOMMU example; a failed check panics.
pub fn run(platform: &Platform) {
    let rsdp = platform.boot.rsdp().expect("the RSDP");
    let dmar = acpi::dmar(rsdp).expect("a DMAR table (qemu-run.sh adds intel-iommu)");
    let mut chan = confined_lsi(dmar, &platform.pci).expect("the LSI53C895A, confined");
    let mut src = Dma::<IovaHal<Lsi>>::new(4096).expect("DMA memory");
    src.as_mut_slice().fill(0x1f);
    let dst = Dma::<IovaHal<Lsi>>::new(4096).expect("DMA memory");
    let transfer = chan
        .copy(dst, 8, src, 0, 1000, PrepFlags::empty())
        .map_err(|e| e.error)
        .expect("prep");
    chan.issue_pending();
    let (dst, _) = transfer
        .wait(&mut chan, &mut Delay, Duration::from_millis(500))
        .expect("the copy ends");
    assert!(dst.as_slice()[8..1008].iter().all(|&b| b == 0x1f), "copied");
    assert!(dst.as_slice()[..8].iter().all(|&b| b == 0), "guard before");
    assert!(
        dst.as_slice()[1008..].iter().all(|&b| b == 0),
        "guard after"
    );
    println!("iommu: 1000 bytes copied between IOVAs of the LSI's own domain");
    // The chip told to write a page by its physical address: the unit
    // refuses, the page keeps its bytes, the request fails on its own.
    let mut page = Dma::<Frames>::new(4096).expect("a page");
    page.as_mut_slice().fill(0x77);
    let physical: DmaAddr = page.paddr();
    // SAFETY: the destination is an address the domain does not map (the
    // write must go nowhere); the source is the chip's own buffer.
    let stray =
        unsafe { chan.prep_copy(physical, dst.paddr(), 64, PrepFlags::empty()) }.expect("prep");
    let _ = chan.wait(stray, &mut Delay, Duration::from_millis(500));
    assert_eq!(
        chan.status(stray).status,
        Status::Error(ErrorKind::WriteFailed)
    );
    assert!(
        page.as_slice().iter().all(|&b| b == 0x77),
        "the page unchanged"
    );
    println!("iommu: a write aimed at a physical page was refused and failed its request");
}
