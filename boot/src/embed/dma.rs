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
use dmaengine::engine::{Channel, DmaError, Engine, SharedChannel};
use dmaengine::hal::{DmaAddr, Hal, HalError};
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
    ) -> Result<DmaAddr, HalError> {
        let start = buffer.cast::<u8>().as_ptr() as u64;
        let len = buffer.len() as u64;
        let last = len
            .checked_sub(1)
            .ok_or(HalError::ZeroLength)
            .and_then(|n| start.checked_add(n).ok_or(HalError::BeyondDmaMask))?;
        let first_pa = crate::mem::paging::translate(start).ok_or(HalError::NotSupported)?;
        let mut page = start & !(PAGE_SIZE - 1);
        while page < last & !(PAGE_SIZE - 1) {
            page += PAGE_SIZE;
            let expected = first_pa + (page - start);
            if crate::mem::paging::translate(page) != Some(expected) {
                return Err(HalError::NotSupported);
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

/// A channel over the LSI53C895A's SCRIPTS processor.
pub type LsiChannel = Exclusive<Channel<Lsi53c895a<KernelHal>>>;
/// The LSI53C895A's channel shared with its interrupt handler.
pub type SharedLsi = Shared<Lsi53c895a<KernelHal>>;
/// A channel over QEMU's edu device.
pub type EduChannel = Exclusive<Channel<EduEngine<KernelHal>>>;
/// A channel over the CPU engine.
pub type CpuChannel = Channel<CpuEngine<KernelHal>>;
/// A device's channel shared with its interrupt handler.
pub type Shared<E> = Exclusive<SharedChannel<E, X86Interrupts>>;

/// One DMA device the kernel drives, as a row of the device table: how to
/// find it on the bus and start its engine, whether a channel holds it, and
/// the shared channel its interrupt handler services. Every device goes
/// through the same take / share / service / release path below.
pub struct DmaDevice<E: Engine> {
    find: fn() -> Option<&'static crate::pci::Device>,
    /// Starts the engine over the device's BARs; the caller holds `taken`.
    open: fn(&'static crate::pci::Device) -> Result<E, DmaError>,
    taken: AtomicBool,
    serviced: spin::Mutex<Option<Arc<Shared<E>>>>,
    /// The interrupt handler: `service` on this row (a plain `fn`, as the
    /// interrupt layer takes).
    interrupt: irq::Handler,
}

/// The device table: the two LSI53C895As `qemu-run.sh` gives the machine
/// (the second is optional) and the edu device.
pub static LSI: DmaDevice<Lsi53c895a<KernelHal>> = DmaDevice::new(
    || devices::find(lsi53c895a::regs::VENDOR_ID, lsi53c895a::regs::DEVICE_ID),
    open_lsi,
    || LSI.service(),
);
/// The second LSI53C895A, if the machine has one.
pub static LSI2: DmaDevice<Lsi53c895a<KernelHal>> = DmaDevice::new(
    || devices::find_nth(lsi53c895a::regs::VENDOR_ID, lsi53c895a::regs::DEVICE_ID, 1),
    open_lsi,
    || LSI2.service(),
);
/// QEMU's edu device.
pub static EDU: DmaDevice<EduEngine<KernelHal>> = DmaDevice::new(
    || devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID),
    open_edu,
    || EDU.service(),
);

impl<E: Engine> DmaDevice<E> {
    const fn new(
        find: fn() -> Option<&'static crate::pci::Device>,
        open: fn(&'static crate::pci::Device) -> Result<E, DmaError>,
        interrupt: irq::Handler,
    ) -> Self {
        DmaDevice {
            find,
            open,
            taken: AtomicBool::new(false),
            serviced: spin::Mutex::new(None),
            interrupt,
        }
    }

    /// The device's PCI function, enabled for DMA.
    pub fn device(&self) -> Option<&'static crate::pci::Device> {
        (self.find)()
    }

    fn engine(&self) -> Result<E, DmaError> {
        (self.open)(self.device().ok_or(DmaError::NotSupported)?)
    }

    /// Takes over the device as a copy channel (`Busy` while another
    /// channel holds it).
    pub fn channel(&'static self) -> Result<Exclusive<Channel<E>>, DmaError> {
        Exclusive::take(&self.taken, || self.engine().map(Channel::new))
    }

    /// Takes over the device with no engine on it, for code that programs
    /// it by hand (`Busy` while a channel holds it); no channel can take it
    /// until the guard is dropped.
    pub fn by_hand(&'static self) -> Result<Exclusive<&'static crate::pci::Device>, DmaError> {
        Exclusive::take(&self.taken, || self.device().ok_or(DmaError::NotSupported))
    }

    /// As [`Self::channel`], shared with an interrupt handler.
    pub fn shared(&'static self) -> Result<Shared<E>, DmaError> {
        Exclusive::take(&self.taken, || {
            self.engine().map(|e| SharedChannel::new(Channel::new(e)))
        })
    }

    /// The shared channel, serviced by its interrupt handler on the
    /// device's PCI line until [`Self::release`].
    pub fn serviced(&'static self) -> Result<(Arc<Shared<E>>, u8), DmaError> {
        let channel = Arc::new(self.shared()?);
        let line = self.device().ok_or(DmaError::NotSupported)?.irq_line;
        without_interrupts(|| *self.serviced.lock() = Some(channel.clone()));
        irq::register(line, self.interrupt).expect("register the interrupt handler");
        Ok((channel, line))
    }

    /// The shared channel being serviced, if any (for jobs on other CPUs).
    pub fn serviced_channel(&self) -> Option<Arc<Shared<E>>> {
        without_interrupts(|| self.serviced.lock().clone())
    }

    /// Stops servicing the shared channel on `line`.
    pub fn release(&self, line: u8) {
        irq::unregister(line, self.interrupt);
        without_interrupts(|| self.serviced.lock().take());
    }

    /// The shared channel, serviced through MSI on CPU `cpu` (whose
    /// interrupts must be on for its completions to arrive) until
    /// [`Self::release_msi`].
    pub fn serviced_msi(
        &'static self,
        cpu: usize,
    ) -> Result<(Arc<Shared<E>>, irq::MsiMessage), irq::IrqError> {
        let device = self.device().ok_or(irq::IrqError::NoSuchLine)?;
        let channel = Arc::new(self.shared().map_err(|_| irq::IrqError::NoSuchLine)?);
        let message = irq::allocate_msi(cpu, self.interrupt)?;
        without_interrupts(|| *self.serviced.lock() = Some(channel.clone()));
        if !device.enable_msi(message.address, message.data) {
            without_interrupts(|| self.serviced.lock().take());
            irq::free_msi(message.vector);
            return Err(irq::IrqError::NoSuchLine);
        }
        Ok((channel, message))
    }

    /// Stops servicing the channel through MSI: the device is back on its
    /// INTx pin.
    pub fn release_msi(&self, message: irq::MsiMessage) {
        if let Some(device) = self.device() {
            device.disable_msi();
        }
        irq::free_msi(message.vector);
        without_interrupts(|| self.serviced.lock().take());
    }

    /// Runs the interrupt handler of the serviced channel, if one is there.
    fn service(&self) {
        if let Some(channel) = self.serviced.lock().as_ref() {
            channel.handle_interrupt();
        }
    }

    /// Pins `fault` on the serviced channel if this device made it.
    fn fail(&self, fault: dmaengine::iommu::DmaFault) {
        if self
            .device()
            .is_some_and(|d| crate::iommu::source_of(d) == fault.source)
            && let Some(channel) = self.serviced.lock().as_ref()
        {
            channel.lock().fail_at(fault.address, fault.write);
        }
    }
}

/// Pins a DMA fault on the serviced channel of the device that made it
/// ([`Channel::fail_at`], which needs the channel's fault attribution on):
/// a sink for [`crate::iommu::route_faults`].
pub fn fail_serviced(fault: dmaengine::iommu::DmaFault) {
    LSI.fail(fault);
    LSI2.fail(fault);
    EDU.fail(fault);
}

/// Starts the LSI53C895A's engine over DMA layer `H`; the caller holds the
/// device.
fn open_lsi<H: Hal>(device: &'static crate::pci::Device) -> Result<Lsi53c895a<H>, DmaError> {
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
    Ok(engine)
}

/// The DMA mask `qemu-run.sh` gives the edu device (`dma_mask=0xffffffff`).
pub const EDU_DMA_MASK: u64 = 0xffff_ffff;

/// Starts the edu device's engine over DMA layer `H`; the caller holds the
/// device.
fn open_edu<H: Hal>(device: &'static crate::pci::Device) -> Result<EduEngine<H>, DmaError> {
    let regs = devices::map_bar(device, 0).ok_or(DmaError::NotSupported)?;
    // SAFETY: BAR0 of the edu device found on the bus, reserved for this
    // one channel; qemu-run.sh gives it `dma_mask=0xffffffff`, which
    // EDU_DMA_MASK is.
    unsafe { EduEngine::new(regs, EDU_DMA_MASK) }
}

/// The LSI53C895A as a channel over the DMA layer `H` (the IOMMU's, say).
pub fn lsi_channel_over<H: Hal>() -> Result<Exclusive<Channel<Lsi53c895a<H>>>, DmaError> {
    Exclusive::take(&LSI.taken, || {
        open_lsi(LSI.device().ok_or(DmaError::NotSupported)?).map(Channel::new)
    })
}

/// The edu device as a channel over the DMA layer `H` (the IOMMU's, say).
pub fn edu_channel_over<H: Hal>() -> Result<Exclusive<Channel<EduEngine<H>>>, DmaError> {
    Exclusive::take(&EDU.taken, || {
        open_edu(EDU.device().ok_or(DmaError::NotSupported)?).map(Channel::new)
    })
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
    let mut lsi = LSI.channel()?;
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
