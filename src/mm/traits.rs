//! What the kernel plugs into an address space: how page-table frames are
//! reached ([`TableMapper`]), where they come from (the `x86_64` crate's
//! [`FrameAllocator`] and [`FrameDeallocator`]), and how mapped pages are
//! counted ([`PageCounter`], Linux's `struct page` counts; the crate's own
//! [`FrameDb`](super::frame::FrameDb) is one implementation).
//!
//! The traits that let the crate write memory it was only told about are
//! `unsafe` to implement (as `x86_64`'s `FrameAllocator` is), and the
//! constructors of their implementations here are `unsafe` too: the safe
//! API of [`AddressSpace`](super::space::AddressSpace) then cannot corrupt
//! memory.

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

/// How the CPU reaches a physical frame: page tables (to read and write
/// entries), and the frames a copy-on-write fault copies from and into.
///
/// # Safety
/// For every frame an address space passes (a page table of its hierarchy,
/// a table frame its allocator gave it, a page its [`PageCounter`] gave
/// it, or a frame mapped by one of its leaf entries), `frame_ptr` must
/// return a pointer valid for reads and writes of 4096 bytes, 4096-aligned,
/// through which the frame is accessed with write-back caching, and which
/// nothing else uses as a Rust reference while the address space does.
pub unsafe trait TableMapper {
    /// The CPU pointer to the first byte of `frame`.
    fn frame_ptr(&self, frame: PhysFrame) -> *mut u8;
}

/// Physical memory mapped at a fixed virtual offset (the "direct map" of
/// most kernels; `x86_64`'s `OffsetPageTable` assumes the same).
#[derive(Clone, Copy, Debug)]
pub struct OffsetMapper {
    offset: VirtAddr,
}

impl OffsetMapper {
    /// Frames are reached at `physical_memory_offset + physical address`.
    ///
    /// # Safety
    /// The whole of physical memory that address spaces using this mapper
    /// will touch (their page tables and the frames they map and copy) must
    /// be mapped read-write, write-back, at that offset, for as long as the
    /// mapper is used.
    pub const unsafe fn new(physical_memory_offset: VirtAddr) -> OffsetMapper {
        OffsetMapper {
            offset: physical_memory_offset,
        }
    }

    /// The offset.
    pub fn offset(&self) -> VirtAddr {
        self.offset
    }
}

// SAFETY: `OffsetMapper::new`'s contract makes every frame reachable at
// its offset.
unsafe impl TableMapper for OffsetMapper {
    #[inline]
    fn frame_ptr(&self, frame: PhysFrame) -> *mut u8 {
        (self.offset + frame.start_address().as_u64()).as_mut_ptr()
    }
}

/// Where an address space's page-table frames come from and go back to:
/// any `x86_64` frame allocator that can also take frames back.
pub trait TableAllocator: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB> {}

impl<A: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>> TableAllocator for A {}

/// A counted reference to a page, as a [`PageCounter`] hands them out.
pub trait CountedPage {
    /// The page's frame.
    fn frame(&self) -> PhysFrame;

    /// The page's physical address.
    fn phys(&self) -> PhysAddr {
        self.frame().start_address()
    }
}

/// Reference and map counts of the pages an address space maps (Linux's
/// `struct page` counting): a mapped page holds one reference and one map
/// count per entry that maps it.
///
/// The two methods that change a page's counts without a [`CountedPage`]
/// to show for it, `try_map` and `unmap`, are `unsafe` to call (since
/// issue 17; they were safe, and `unmap` on a page an address space still
/// mapped freed it under user space): only the address space that maps the
/// page calls them, in pairs. Taking and giving back references through
/// `get`, `alloc_page`, cloning and dropping stays safe. A kernel still
/// implements the trait for its own page database:
///
/// ```compile_fail,E0133
/// use dmaengine::mm::frame::FrameDb;
/// use dmaengine::mm::traits::PageCounter;
/// use x86_64::structures::paging::PhysFrame;
///
/// // A page some address space maps: giving back its count from outside
/// // the space would free it while user space still maps it.
/// fn free_a_mapped_page(db: &FrameDb<'_>, frame: PhysFrame) {
///     PageCounter::unmap(&db, frame);
/// }
/// ```
///
/// ```compile_fail,E0133
/// use dmaengine::mm::frame::FrameDb;
/// use dmaengine::mm::traits::PageCounter;
/// use x86_64::structures::paging::PhysFrame;
///
/// // A count with no entry behind it: the space's later `unmap` of a
/// // real entry would then be matched against the wrong one.
/// fn count_a_mapping_nobody_made(db: &FrameDb<'_>, frame: PhysFrame) -> bool {
///     PageCounter::try_map(&db, frame)
/// }
/// ```
///
/// # Safety
/// - `try_map` returns `true` only for a frame of RAM that was allocated
///   as a page and is held (someone has a reference), and then keeps it
///   allocated (never reused) until a matching `unmap`;
/// - `alloc_page` returns a frame nobody else uses, holding one reference;
/// - `covers` is `true` for every frame `try_map` could accept.
pub unsafe trait PageCounter {
    /// A counted reference to one page (dropping it gives the reference
    /// back).
    type Page: CountedPage;

    /// Takes one reference and one map count on `frame` if it is a held,
    /// insertable page; returns whether it did.
    ///
    /// # Safety
    /// The caller is the address space about to write a leaf entry mapping
    /// `frame` (or copying one, as `fork` does): a `true` is that entry's
    /// count, which the caller gives back with exactly one [`unmap`] of
    /// the same frame, when the entry is gone or at once if it never
    /// writes it.
    ///
    /// [`unmap`]: PageCounter::unmap
    unsafe fn try_map(&self, frame: PhysFrame) -> bool;

    /// Gives back one reference and one map count; the page is freed with
    /// its last reference.
    ///
    /// # Safety
    /// The caller is the address space whose earlier [`try_map`] of
    /// `frame` returned `true`, it gives back that count once, and the
    /// entry that count was for no longer maps the frame: cleared (or never
    /// written) and, if it was ever live, flushed from every TLB. Otherwise
    /// the page may be freed and reused while user space still reaches it.
    ///
    /// [`try_map`]: PageCounter::try_map
    unsafe fn unmap(&self, frame: PhysFrame);

    /// Whether this counter manages `frame` at all (Linux's `pfn_valid`):
    /// such a frame is never mapped as a raw PFN into a `MIXEDMAP` area.
    fn covers(&self, frame: PhysFrame) -> bool;

    /// Whether the mapping being faulted on holds the page's only reference
    /// and only map count (so a write may reuse it in place).
    fn only_mapping(&self, frame: PhysFrame) -> bool;

    /// A new reference to the mapped page `frame` (`vm_normal_page`).
    fn get(&self, frame: PhysFrame) -> Option<Self::Page>;

    /// A fresh page holding one reference, for a copy-on-write copy.
    fn alloc_page(&self) -> Option<Self::Page>;
}
