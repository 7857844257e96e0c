//! Physical memory: the direct map, the frame allocator, the heap and the
//! boot page tables.

pub mod frames;
pub mod heap;
pub mod paging;

/// Where all physical memory is mapped (PML4 slot 256, set up by the entry
/// code for the first 4 GiB).
pub const PHYS_OFFSET: u64 = 0xffff_8000_0000_0000;
/// How much physical address space the direct map covers.
pub const DIRECT_MAP_SIZE: u64 = 4 << 30;
/// Size of a base page: the library's.
pub const PAGE_SIZE: u64 = dmaengine::mm::pte::PAGE_4K;

/// The direct-map address of physical address `pa`.
pub fn phys_to_virt(pa: u64) -> *mut u8 {
    debug_assert!(pa < DIRECT_MAP_SIZE, "{pa:#x} is beyond the direct map");
    (PHYS_OFFSET + pa) as *mut u8
}

/// The direct-map address of the `len` bytes of device memory at `pa`, if
/// the direct map maps all of them uncached: none of the 2 MiB pages they
/// lie in holds RAM (`paging::init` made exactly those uncached). A range
/// that wraps, starts at 0, is empty or reaches past the direct map is
/// refused too, whoever asked for it (a BAR, an ACPI table's register base).
pub fn device_window(pa: u64, len: u64) -> Option<core::ptr::NonNull<u8>> {
    let end = pa.checked_add(len)?;
    if pa == 0 || len == 0 || end > DIRECT_MAP_SIZE || !paging::uncached(pa, end) {
        return None;
    }
    core::ptr::NonNull::new(phys_to_virt(pa))
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical range the kernel image (with its boot stack and tables) uses.
pub fn kernel_image() -> core::ops::Range<u64> {
    (&raw const __kernel_start) as u64..(&raw const __kernel_end) as u64
}
