//! [`IovaHal`]: the [`Hal`] a driver of a device behind the IOMMU is built
//! over, whose DMA addresses are IOVAs of the device's own space.

use core::marker::PhantomData;
use core::ptr::NonNull;

use super::space::Cpu;
use super::{DeviceDma, IommuPlatform, PAGE, Pf};
use crate::hal::{Direction, DmaAddr, Hal, HalError, PAGE_SIZE};
use crate::mm::pte::PageProt;

/// The [`Hal`] of device `D`: DMA addresses are IOVAs of its domain (see
/// the [module docs](super)).
pub struct IovaHal<D: DeviceDma>(PhantomData<fn() -> D>);

// SAFETY: `dma_alloc` returns the `Memory` Hal's memory (contiguous,
// zeroed, mapped for the CPU), mapped for the device at consecutive IOVAs
// before it is returned and unmapped (IOTLB flushed) before it goes back;
// `share` maps exactly the pages the buffer lies on (read-only when the
// device only reads) and `unshare` removes them; requests name only
// addresses inside the buffers, so the rest of a partial page is reached
// only by a device that disobeys its descriptors. `phys_to_virt` answers
// for a shared buffer from the CPU address `share` was given (its frames
// are anywhere, so for one page: `CPU_CONTIGUOUS`), and for allocated
// memory from `Memory`'s own answer for the frames it handed out.
unsafe impl<D: DeviceDma> Hal for IovaHal<D> {
    /// A shared buffer's pages are at consecutive IOVAs but their frames
    /// (and so their CPU addresses in the kernel's map of frames) are
    /// wherever they were.
    const CPU_CONTIGUOUS: bool = false;

    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        // Anywhere in physical memory: the device sees the IOVAs only.
        let (phys, ptr) = <Pf<D> as IommuPlatform>::Memory::dma_alloc(pages, u64::MAX)?;
        let frame = |i: usize| Some(phys + (i * PAGE_SIZE) as u64);
        match D::space().map(pages, dma_mask, frame, PageProt::READ_WRITE, None) {
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

    /// A shared buffer's byte is reached where its sharer had it (the
    /// `Memory` Hal never handed out those frames, so it need not know
    /// them); allocated memory is reached through `Memory`.
    ///
    /// # Panics
    /// If `iova` is not mapped in the device's domain: no request of the
    /// device's channels may name one (their `prep` contract).
    fn phys_to_virt(iova: DmaAddr) -> NonNull<u8> {
        match D::space().cpu_of(iova) {
            Some(Cpu::Shared(va)) => {
                NonNull::new(va as *mut u8).expect("a shared buffer is not at address 0")
            }
            Some(Cpu::Phys(phys)) => <Pf<D> as IommuPlatform>::Memory::phys_to_virt(phys),
            None => panic!("an IOVA this device's space mapped"),
        }
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
        let iova = D::space().map(pages as usize, u64::MAX, frame, prot, Some(first_page))?;
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
