//! A [`Hal`] over host memory, for host tests: DMA addresses are the host
//! virtual addresses of page-aligned heap allocations, so a CPU engine can
//! copy through them.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Mutex;

use super::{DmaAddr, Hal, PAGE_SIZE};

/// Outstanding allocations, to check that everything is freed.
static LIVE: Mutex<Option<HashMap<DmaAddr, usize>>> = Mutex::new(None);

/// The fake HAL.
pub struct FakeHal;

impl FakeHal {
    /// Pages currently allocated through the fake HAL.
    pub fn live_pages() -> usize {
        LIVE.lock()
            .unwrap()
            .as_ref()
            .map_or(0, |m| m.values().sum())
    }
}

fn layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap()
}

// SAFETY: allocations are zeroed, page-aligned host memory (contiguous by
// construction), identified by their own address, and freed exactly once.
unsafe impl Hal for FakeHal {
    fn dma_alloc(pages: usize) -> Option<(DmaAddr, NonNull<u8>)> {
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout(pages)) })?;
        LIVE.lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(ptr.as_ptr() as u64, pages);
        Some((ptr.as_ptr() as DmaAddr, ptr))
    }

    unsafe fn dma_dealloc(paddr: DmaAddr, vaddr: NonNull<u8>, pages: usize) {
        let known = LIVE.lock().unwrap().as_mut().and_then(|m| m.remove(&paddr));
        assert_eq!(
            known,
            Some(pages),
            "freeing {paddr:#x} that was not allocated with {pages} pages"
        );
        // SAFETY: the caller passes back one allocation made above.
        unsafe { dealloc(vaddr.as_ptr(), layout(pages)) }
    }

    fn phys_to_virt(paddr: DmaAddr) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("null DMA address")
    }
}
