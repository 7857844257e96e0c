//! The kernel heap: a `linked_list_allocator` over physically contiguous
//! frames, reached through the direct map.

use linked_list_allocator::LockedHeap;

use super::{PAGE_SIZE, frames, phys_to_virt};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Size of the kernel heap.
pub const HEAP_SIZE: usize = 16 << 20;

/// Gives the heap its memory. Call once, after `frames::init`.
pub fn init() -> Result<(), frames::FrameError> {
    let pa = frames::alloc_contiguous(HEAP_SIZE / PAGE_SIZE as usize, 1)?;
    // SAFETY: the frames were just allocated for the heap alone, are mapped
    // by the direct map, and are never freed.
    unsafe { HEAP.lock().init(phys_to_virt(pa), HEAP_SIZE) };
    Ok(())
}

/// Bytes of heap in use.
pub fn used() -> usize {
    HEAP.lock().used()
}
