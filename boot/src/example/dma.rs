//! How a kernel with PCI configuration access (here `pci_types` over the
//! legacy ports), a frame allocator and a delay adopts the DMA half: it
//! gives the crate DMA memory (a `Hal` over its frames and its direct
//! map), finds the LSI53C895A and maps its registers, and from then on
//! copies through a `Channel`. The glue is what lies between the markers.

use core::ptr::NonNull;
use core::time::Duration;

use dmaengine::drivers::lsi53c895a::{Lsi53c895a, regs};
use dmaengine::engine::{Channel, DmaError, PrepFlags};
use dmaengine::hal::{Dma, DmaAddr, Hal, PAGE_SIZE};
use dmaengine::mmio::{MmioRegion, PortRegion};

use crate::mem::{device_window, frames, phys_to_virt};
use crate::time::Delay;
use crate::{Platform, pci, println};

// glue: begin
/// DMA memory: the kernel's frames, reached through its direct map.
pub(super) struct Frames;

// SAFETY: contiguous frames from the kernel's allocator, zeroed here and
// reached through the direct map (write-back, coherent on x86); each one
// is freed once, by the crate, when it no longer uses it.
unsafe impl Hal for Frames {
    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        let pa = frames::alloc_contiguous(pages, 1).ok()?;
        if pa + (pages * PAGE_SIZE) as u64 - 1 > dma_mask {
            let _ = frames::free_contiguous(pa, pages);
            return None;
        }
        // SAFETY: frames just allocated to us, mapped by the direct map.
        unsafe { phys_to_virt(pa).write_bytes(0, pages * PAGE_SIZE) };
        Some((pa, NonNull::new(phys_to_virt(pa))?))
    }
    unsafe fn dma_dealloc(pa: DmaAddr, _va: NonNull<u8>, pages: usize) {
        let _ = frames::free_contiguous(pa, pages);
    }
    fn phys_to_virt(pa: DmaAddr) -> NonNull<u8> {
        NonNull::new(phys_to_virt(pa)).expect("the direct map has no null address")
    }
}

/// The LSI53C895A's copy channel over DMA layer `H`, if the chip is on
/// the bus.
pub(super) fn lsi_channel<H: Hal>(devices: &[pci::Device]) -> Option<Channel<Lsi53c895a<H>>> {
    let chip = pci::find(devices, regs::VENDOR_ID, regs::DEVICE_ID)?;
    chip.enable(true, true, true);
    let (bar, len) = chip.mem_bar(regs::MMIO_BAR)?;
    // SAFETY: the chip's register BAR, mapped uncached by the direct map
    // for good (`device_window`); nothing else drives the chip.
    let window = unsafe { MmioRegion::new(device_window(bar, len)?, len as usize) };
    // SAFETY: as above: the window is this chip's, driven by this engine.
    let mut engine = unsafe { Lsi53c895a::new(window) }.ok()?;
    if let Some(port) = chip.io_bar(regs::IO_BAR) {
        // SAFETY: the same chip's I/O BAR, poked by nobody else.
        unsafe { engine.set_doorbell(PortRegion::new(port, regs::IO_SIZE)) };
    }
    Some(Channel::new(engine))
}
// glue: end

/// Runs the DMA half's example; a failed check panics.
pub fn run(platform: &Platform) {
    let mut chan =
        lsi_channel::<Frames>(&platform.pci).expect("the LSI53C895A (qemu-run.sh adds one)");
    let mut src = Dma::<Frames>::new(2 * PAGE_SIZE).expect("DMA memory");
    for (i, byte) in src.as_mut_slice().iter_mut().enumerate() {
        *byte = (i * 13 + 5) as u8;
    }
    let mut dst = Dma::<Frames>::new(2 * PAGE_SIZE).expect("DMA memory");
    dst.as_mut_slice().fill(0xee);
    // 5000 bytes from offset 3 to offset 100: across a page on both sides.
    let transfer = chan
        .copy(dst, 100, src, 3, 5000, PrepFlags::empty())
        .map_err(|e| e.error)
        .expect("prep");
    chan.issue_pending();
    let (dst, src) = transfer
        .wait(&mut chan, &mut Delay, Duration::from_millis(500))
        .expect("the copy ends");
    let src = src.expect("a copy gives its source back");
    assert_eq!(dst.as_slice()[100..5100], src.as_slice()[3..5003], "copied");
    assert!(
        dst.as_slice()[..100].iter().all(|&b| b == 0xee),
        "guard before"
    );
    assert!(
        dst.as_slice()[5100..].iter().all(|&b| b == 0xee),
        "guard after"
    );
    println!("dma: 5000 bytes copied by the LSI53C895A, guards untouched");
    // Bad input is an error and changes nothing.
    let refused = chan.copy(dst, 8000, src, 0, 1000, PrepFlags::empty());
    let Err(error) = refused else {
        panic!("a copy past the end of its destination was accepted");
    };
    assert_eq!(error.error, DmaError::OutOfBounds);
    assert!(chan.is_idle(), "nothing was queued");
    println!(
        "dma: a copy past its buffer is refused with {:?}",
        error.error
    );
}
