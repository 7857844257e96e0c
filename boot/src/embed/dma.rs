//! The kernel's side of `dmaengine`: DMA memory from the frame allocator,
//! and channels over the devices found on the PCI bus.

use alloc::sync::Arc;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use dmaengine::drivers::cpu::CpuEngine;
use dmaengine::drivers::edu::{self, EduEngine};
use dmaengine::drivers::lsi53c895a::{self, Lsi53c895a};
use dmaengine::engine::shared::X86Interrupts;
use dmaengine::engine::{Channel, DmaError, SharedChannel};
use dmaengine::hal::{DmaAddr, Hal};
use x86_64::instructions::interrupts::without_interrupts;

use crate::mem::{PAGE_SIZE, frames, phys_to_virt};
use crate::{devices, irq};

/// DMA memory is physical memory reached through the direct map; there is
/// no IOMMU, so a DMA address is a physical address.
pub struct KernelHal;

// SAFETY: frames come from the allocator (contiguous, page-aligned, owned
// until freed), are zeroed here, and the direct map gives the CPU a
// coherent (write-back, snooped) view of them.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        let pa = frames::alloc_contiguous(pages, 1).ok()?;
        if pa + (pages as u64 * PAGE_SIZE) - 1 > dma_mask {
            // The allocator has no zones; the machine's RAM (2 GiB) is below
            // every mask the drivers use, so this is not expected to happen.
            let _ = frames::free_contiguous(pa, pages);
            return None;
        }
        let va = phys_to_virt(pa);
        // SAFETY: the frames were just allocated to us and are mapped.
        unsafe { va.write_bytes(0, pages * dmaengine::hal::PAGE_SIZE) };
        Some((pa, NonNull::new(va)?))
    }

    unsafe fn dma_dealloc(paddr: DmaAddr, _vaddr: NonNull<u8>, pages: usize) {
        // The caller frees exactly one earlier allocation; an error here
        // would be a double free, which the allocator refuses.
        let _ = frames::free_contiguous(paddr, pages);
    }

    fn phys_to_virt(paddr: DmaAddr) -> NonNull<u8> {
        NonNull::new(phys_to_virt(paddr)).expect("the direct map has no null address")
    }

    /// The buffer's physical address, found by walking the CPU's page
    /// tables page by page; refused (`NotSupported`) unless the pages are
    /// physically contiguous (the heap's, the kernel image's and the direct
    /// map's are; a buffer straddling two unrelated frames is not). A
    /// channel still checks the address against its DMA mask. With no
    /// IOMMU, nothing to undo: `unshare` stays the default.
    unsafe fn share(
        buffer: NonNull<[u8]>,
        _direction: dmaengine::hal::Direction,
    ) -> Result<DmaAddr, DmaError> {
        let start = buffer.cast::<u8>().as_ptr() as u64;
        let len = buffer.len() as u64;
        let last = len
            .checked_sub(1)
            .ok_or(DmaError::ZeroLength)
            .and_then(|n| start.checked_add(n).ok_or(DmaError::BeyondDmaMask))?;
        let first_pa = crate::mem::paging::translate(start).ok_or(DmaError::NotSupported)?;
        let mut page = start & !(PAGE_SIZE - 1);
        while page < last & !(PAGE_SIZE - 1) {
            page += PAGE_SIZE;
            let expected = first_pa + (page - start);
            if crate::mem::paging::translate(page) != Some(expected) {
                return Err(DmaError::NotSupported);
            }
        }
        Ok(first_pa)
    }
}

/// A channel (a [`Channel`] or a [`SharedChannel`]) that owns its device:
/// at most one exists per device at a time, since two engines would fight
/// over the chip's registers. Dropping it stops the engine (its `Drop`) and
/// frees the device for the next.
pub struct Exclusive<C> {
    channel: C,
    taken: &'static AtomicBool,
}

impl<C> Exclusive<C> {
    fn take(
        taken: &'static AtomicBool,
        make: impl FnOnce() -> Result<C, DmaError>,
    ) -> Result<Self, DmaError> {
        if taken.swap(true, Ordering::AcqRel) {
            return Err(DmaError::Busy);
        }
        match make() {
            Ok(channel) => Ok(Exclusive { channel, taken }),
            Err(e) => {
                taken.store(false, Ordering::Release);
                Err(e)
            }
        }
    }
}

impl<C> Deref for Exclusive<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.channel
    }
}

impl<C> DerefMut for Exclusive<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.channel
    }
}

impl<C> Drop for Exclusive<C> {
    fn drop(&mut self) {
        self.taken.store(false, Ordering::Release);
    }
}

static LSI_TAKEN: AtomicBool = AtomicBool::new(false);
static LSI2_TAKEN: AtomicBool = AtomicBool::new(false);
static EDU_TAKEN: AtomicBool = AtomicBool::new(false);

/// A channel over the LSI53C895A's SCRIPTS processor.
pub type LsiChannel = Exclusive<Channel<Lsi53c895a<KernelHal>>>;
/// The LSI53C895A's channel shared with its interrupt handler.
pub type SharedLsi = Exclusive<SharedChannel<Lsi53c895a<KernelHal>, X86Interrupts>>;
/// A channel over the CPU engine.
pub type CpuChannel = Channel<CpuEngine<KernelHal>>;

/// The LSI53C895A's PCI function.
pub fn lsi_device() -> Option<&'static crate::pci::Device> {
    devices::find(lsi53c895a::regs::VENDOR_ID, lsi53c895a::regs::DEVICE_ID)
}

/// Takes over the LSI53C895A as a copy channel (`Busy` while another
/// channel holds it).
pub fn lsi_channel() -> Result<LsiChannel, DmaError> {
    Exclusive::take(&LSI_TAKEN, make_lsi)
}

/// As [`lsi_channel`], shared.
pub fn shared_lsi_channel() -> Result<SharedLsi, DmaError> {
    Exclusive::take(&LSI_TAKEN, || make_lsi().map(SharedChannel::new))
}

/// The second LSI53C895A, if the machine has one (`qemu-run.sh` gives it
/// two).
pub fn second_lsi_device() -> Option<&'static crate::pci::Device> {
    devices::find_nth(lsi53c895a::regs::VENDOR_ID, lsi53c895a::regs::DEVICE_ID, 1)
}

/// Takes over the second LSI53C895A as a copy channel.
pub fn second_lsi_channel() -> Result<LsiChannel, DmaError> {
    Exclusive::take(&LSI2_TAKEN, || make_lsi_on(second_lsi_device()))
}

fn make_lsi() -> Result<Channel<Lsi53c895a<KernelHal>>, DmaError> {
    make_lsi_on(lsi_device())
}

fn make_lsi_on<H: Hal>(
    device: Option<&'static crate::pci::Device>,
) -> Result<Channel<Lsi53c895a<H>>, DmaError> {
    let device = device.ok_or(DmaError::NotSupported)?;
    let regs =
        devices::map_bar(device, lsi53c895a::regs::MMIO_BAR).ok_or(DmaError::NotSupported)?;
    // SAFETY: BAR1 of the LSI53C895A found on the bus, reserved for this
    // one channel by the caller's `Exclusive`.
    let mut engine = unsafe { Lsi53c895a::new(regs) }?;
    // The doorbell through the I/O BAR when firmware assigned one: an
    // `out` costs QEMU less than an MMIO write.
    if let Some(ports) =
        devices::map_io_bar(device, lsi53c895a::regs::IO_BAR, lsi53c895a::regs::IO_SIZE)
    {
        // SAFETY: BAR0 of the same chip whose BAR1 the engine drives.
        unsafe { engine.set_doorbell(ports) };
    }
    Ok(Channel::new(engine))
}

/// As [`lsi_channel`], over the DMA layer `H` (the IOMMU's, say).
pub fn lsi_channel_over<H: Hal>() -> Result<Exclusive<Channel<Lsi53c895a<H>>>, DmaError> {
    Exclusive::take(&LSI_TAKEN, || make_lsi_on(lsi_device()))
}

/// A channel over QEMU's edu device.
pub type EduChannel = Exclusive<Channel<EduEngine<KernelHal>>>;
/// The edu device's channel shared with its interrupt handler.
pub type SharedEdu = Exclusive<SharedChannel<EduEngine<KernelHal>, X86Interrupts>>;

/// The DMA mask `qemu-run.sh` gives the edu device (`dma_mask=0xffffffff`).
pub const EDU_DMA_MASK: u64 = 0xffff_ffff;

/// The edu device's PCI function.
pub fn edu_device() -> Option<&'static crate::pci::Device> {
    devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID)
}

/// Takes over the edu device as a copy channel (`Busy` while another
/// channel holds it).
pub fn edu_channel() -> Result<EduChannel, DmaError> {
    Exclusive::take(&EDU_TAKEN, make_edu)
}

/// As [`edu_channel`], shared.
pub fn shared_edu_channel() -> Result<SharedEdu, DmaError> {
    Exclusive::take(&EDU_TAKEN, || make_edu().map(SharedChannel::new))
}

/// As [`edu_channel`], over the DMA layer `H` (the IOMMU's, say).
pub fn edu_channel_over<H: Hal>() -> Result<Exclusive<Channel<EduEngine<H>>>, DmaError> {
    Exclusive::take(&EDU_TAKEN, make_edu)
}

fn make_edu<H: Hal>() -> Result<Channel<EduEngine<H>>, DmaError> {
    let regs = edu_device()
        .and_then(|dev| devices::map_bar(dev, 0))
        .ok_or(DmaError::NotSupported)?;
    // SAFETY: BAR0 of the edu device found on the bus, reserved for this
    // one channel; qemu-run.sh gives it `dma_mask=0xffffffff`, which
    // EDU_DMA_MASK is.
    Ok(Channel::new(unsafe { EduEngine::new(regs, EDU_DMA_MASK) }?))
}

/// A CPU copy channel.
pub fn cpu_channel() -> CpuChannel {
    Channel::new(CpuEngine::new())
}

/// The copy-break measured on this machine on first use: copies below it go
/// to the CPU engine, the rest to the LSI53C895A. `None` without the chip.
pub fn copy_break() -> Option<dmaengine::engine::copybreak::CopyBreak> {
    static MEASURED: spin::Once<Option<dmaengine::engine::copybreak::CopyBreak>> =
        spin::Once::new();
    *MEASURED.call_once(|| measure_copy_break().ok())
}

/// Times one copy of each size on both paths (the median of several, each
/// prepared, issued and waited for) and finds the break.
fn measure_copy_break() -> Result<dmaengine::engine::copybreak::CopyBreak, DmaError> {
    use dmaengine::engine::PrepFlags;
    use dmaengine::engine::copybreak::{CopyBreak, Timing};
    use dmaengine::hal::Dma;

    const SIZES: [usize; 9] = [32, 64, 128, 256, 512, 1024, 2048, 4096, 16384];
    const RUNS: usize = 7;
    let mut lsi = lsi_channel()?;
    let mut cpu = cpu_channel();
    let src = Dma::<KernelHal>::new_below(16384, lsi.limits().dma_mask)?;
    let dst = Dma::<KernelHal>::new_below(16384, lsi.limits().dma_mask)?;
    let mut time_copy = |len: usize, on_engine: bool| -> Result<u64, DmaError> {
        let start = crate::time::rdtsc();
        // SAFETY: both buffers are ours and untouched until the wait ends.
        let cookie = unsafe {
            if on_engine {
                lsi.prep_copy(dst.paddr(), src.paddr(), len, PrepFlags::empty())
            } else {
                cpu.prep_copy(dst.paddr(), src.paddr(), len, PrepFlags::empty())
            }
        }?;
        let timeout = core::time::Duration::from_secs(1);
        if on_engine {
            lsi.wait(cookie, &mut crate::time::Delay, timeout)?;
        } else {
            cpu.wait(cookie, &mut crate::time::Delay, timeout)?;
        }
        Ok(crate::time::rdtsc() - start)
    };
    // QEMU sets up its view of fresh memory on the first DMA: not counted.
    time_copy(16384, true)?;
    let mut timings = [Timing {
        bytes: 0,
        cpu: 0.0,
        engine: 0.0,
    }; SIZES.len()];
    for (timing, &len) in timings.iter_mut().zip(&SIZES) {
        let mut cpu_runs = [0u64; RUNS];
        let mut engine_runs = [0u64; RUNS];
        for r in 0..RUNS {
            cpu_runs[r] = time_copy(len, false)?;
            engine_runs[r] = time_copy(len, true)?;
        }
        cpu_runs.sort_unstable();
        engine_runs.sort_unstable();
        *timing = Timing {
            bytes: len,
            cpu: cpu_runs[RUNS / 2] as f64,
            engine: engine_runs[RUNS / 2] as f64,
        };
    }
    Ok(CopyBreak::from_timings(&timings))
}

/// The shared channels the interrupt handlers service while a test or a
/// benchmark uses them.
static LSI_SLOT: spin::Mutex<Option<Arc<SharedLsi>>> = spin::Mutex::new(None);
static LSI2_SLOT: spin::Mutex<Option<Arc<SharedLsi>>> = spin::Mutex::new(None);
static EDU_SLOT: spin::Mutex<Option<Arc<SharedEdu>>> = spin::Mutex::new(None);

/// Where an interrupt handler finds the shared channel it services.
type Slot<E> = spin::Mutex<Option<Arc<Exclusive<SharedChannel<E, X86Interrupts>>>>>;

/// Runs the interrupt handler of the channel in `slot`, if one is there.
fn service<E: dmaengine::engine::Engine>(slot: &Slot<E>) {
    if let Some(channel) = slot.lock().as_ref() {
        channel.handle_interrupt();
    }
}

fn lsi_irq() {
    service(&LSI_SLOT);
}

fn lsi2_irq() {
    service(&LSI2_SLOT);
}

fn edu_irq() {
    service(&EDU_SLOT);
}

/// Puts `channel` in `slot` and registers `handler` on the PCI line of
/// `device`.
fn serve<C>(
    channel: C,
    slot: &spin::Mutex<Option<Arc<C>>>,
    device: Option<&'static crate::pci::Device>,
    handler: irq::Handler,
) -> (Arc<C>, u8) {
    let channel = Arc::new(channel);
    let line = device.expect("a serviced device exists").irq_line;
    without_interrupts(|| *slot.lock() = Some(channel.clone()));
    irq::register(line, handler).expect("register the interrupt handler");
    (channel, line)
}

/// Pins a DMA fault on the serviced channel of the device that made it
/// ([`Channel::fail_at`]): a sink for [`crate::iommu::route_faults`].
pub fn fail_serviced(fault: dmaengine::iommu::DmaFault) {
    fn fail<E: dmaengine::engine::Engine>(
        slot: &Slot<E>,
        device: Option<&'static crate::pci::Device>,
        fault: dmaengine::iommu::DmaFault,
    ) {
        if device.is_some_and(|d| crate::iommu::source_of(d) == fault.source)
            && let Some(channel) = slot.lock().as_ref()
        {
            channel.lock().fail_at(fault.address, fault.write);
        }
    }
    fail(&LSI_SLOT, lsi_device(), fault);
    fail(&LSI2_SLOT, second_lsi_device(), fault);
    fail(&EDU_SLOT, edu_device(), fault);
}

/// The shared LSI channel, serviced by its interrupt handler until
/// [`release_lsi`].
pub fn serviced_lsi() -> (Arc<SharedLsi>, u8) {
    let channel = shared_lsi_channel().expect("LSI53C895A channel");
    serve(channel, &LSI_SLOT, lsi_device(), lsi_irq)
}

/// The shared LSI channel being serviced, if any (for jobs on other CPUs).
pub fn serviced_lsi_channel() -> Option<Arc<SharedLsi>> {
    without_interrupts(|| LSI_SLOT.lock().clone())
}

/// Stops servicing the shared LSI channel.
pub fn release_lsi(line: u8) {
    irq::unregister(line, lsi_irq);
    without_interrupts(|| LSI_SLOT.lock().take());
}

/// The second LSI53C895A's channel, shared and serviced by its interrupt
/// handler until [`release_second_lsi`]; `None` without a second chip.
pub fn serviced_second_lsi() -> Option<(Arc<SharedLsi>, u8)> {
    let channel = Exclusive::take(&LSI2_TAKEN, || {
        make_lsi_on(second_lsi_device()).map(SharedChannel::new)
    })
    .ok()?;
    Some(serve(channel, &LSI2_SLOT, second_lsi_device(), lsi2_irq))
}

/// Stops servicing the second LSI channel.
pub fn release_second_lsi(line: u8) {
    irq::unregister(line, lsi2_irq);
    without_interrupts(|| LSI2_SLOT.lock().take());
}

/// The shared edu channel, serviced by its interrupt handler until
/// [`release_edu`].
pub fn serviced_edu() -> (Arc<SharedEdu>, u8) {
    let channel = shared_edu_channel().expect("edu channel");
    serve(channel, &EDU_SLOT, edu_device(), edu_irq)
}

/// Stops servicing the shared edu channel.
pub fn release_edu(line: u8) {
    irq::unregister(line, edu_irq);
    without_interrupts(|| EDU_SLOT.lock().take());
}

/// The shared edu channel, serviced through MSI on CPU `cpu` (whose
/// interrupts must be on for its completions to arrive) until
/// [`release_edu_msi`].
pub fn serviced_edu_msi(cpu: usize) -> Result<(Arc<SharedEdu>, irq::MsiMessage), irq::IrqError> {
    let device = edu_device().ok_or(irq::IrqError::NoSuchLine)?;
    let channel = Arc::new(shared_edu_channel().map_err(|_| irq::IrqError::NoSuchLine)?);
    let message = irq::allocate_msi(cpu, edu_irq)?;
    without_interrupts(|| *EDU_SLOT.lock() = Some(channel.clone()));
    if !device.enable_msi(message.address, message.data) {
        without_interrupts(|| EDU_SLOT.lock().take());
        irq::free_msi(message.vector);
        return Err(irq::IrqError::NoSuchLine);
    }
    Ok((channel, message))
}

/// Stops servicing the edu channel through MSI: the device is back on its
/// INTx pin.
pub fn release_edu_msi(message: irq::MsiMessage) {
    if let Some(device) = edu_device() {
        device.disable_msi();
    }
    irq::free_msi(message.vector);
    without_interrupts(|| EDU_SLOT.lock().take());
}
