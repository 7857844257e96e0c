//! What the kernel plugs into an address space: how page-table frames are
//! reached ([`TableMapper`]), where they come from ([`TableAllocator`]:
//! the `x86_64` crate's [`FrameAllocator`], with or without a
//! [`FrameDeallocator`]), and how mapped pages are
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
/// through which the frame is accessed with write-back caching; and no
/// Rust reference to the frame's memory may be live across a call of the
/// address space and used after it. A kernel that also keeps the `x86_64`
/// crate's `OffsetPageTable` over the same hierarchy (which holds a
/// `&mut` to the PML4) makes it anew for each use, from the raw pointer,
/// and drops it before it calls the space again; raw pointers, and
/// references that end before the call, are fine.
pub unsafe trait TableMapper {
    /// The CPU pointer to the first byte of `frame`.
    fn frame_ptr(&self, frame: PhysFrame) -> *mut u8;
}

/// The [`PageCounter`] of a kernel that only remaps frames it manages
/// itself (device memory, frames of its own) and keeps no page database:
/// it counts nothing, so `remap_pfn_range`, `io_remap_pfn_range` and
/// `insert_pfn` take any frame, while `insert_page` cannot be called (its
/// page type, [`NoPage`], has no value) and copy-on-write faults, which
/// need a fresh page, fail with [`MmError::OutOfMemory`](super::MmError::OutOfMemory).
///
/// ```
/// use dmaengine::mm::space::AddressSpace;
/// use dmaengine::mm::traits::{NoFree, NoPages, OffsetMapper};
/// # use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size4KiB};
/// # use dmaengine::mm::tlb::TlbFlush;
/// # struct Tables;
/// # // SAFETY: never called in this example.
/// # unsafe impl FrameAllocator<Size4KiB> for Tables {
/// #     fn allocate_frame(&mut self) -> Option<PhysFrame> { None }
/// # }
/// # struct Tlb;
/// # // SAFETY: nothing is ever mapped in this example.
/// # unsafe impl TlbFlush for Tlb {
/// #     fn flush_page(&mut self, _: PhysFrame, _: x86_64::VirtAddr) {}
/// #     fn flush_all(&mut self, _: PhysFrame) {}
/// # }
/// type RemapOnly = AddressSpace<NoPages, OffsetMapper, NoFree<Tables>, Tlb>;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoPages;

/// The page of [`NoPages`]: there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPage {}

impl CountedPage for NoPage {
    fn frame(&self) -> PhysFrame {
        match *self {}
    }
}

// SAFETY: it counts no frame: `try_map` never says yes, so nothing is
// ever mapped as a counted page, and `unmap` has no count to give back.
unsafe impl PageCounter for NoPages {
    type Page = NoPage;

    unsafe fn try_map(&self, _frame: PhysFrame) -> bool {
        false
    }

    unsafe fn unmap(&self, _frame: PhysFrame) {}

    fn covers(&self, _frame: PhysFrame) -> bool {
        false
    }

    fn only_mapping(&self, _frame: PhysFrame) -> bool {
        false
    }

    fn get(&self, _frame: PhysFrame) -> Option<NoPage> {
        None
    }

    fn alloc_page(&self) -> Option<NoPage> {
        None
    }
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

/// Where an address space's (and an IOMMU's) page-table frames come from,
/// and where the ones it no longer needs go.
///
/// Any `x86_64` allocator that also implements [`FrameDeallocator`] is
/// one, taken by value (a kernel that shares one allocator among many
/// spaces hands each a handle: a zero-sized type whose methods lock the
/// kernel's allocator). An allocator that cannot free, such as one that
/// walks the boot memory map once, is one wrapped in [`NoFree`]: the space
/// then keeps the tables it empties and reuses them for its next ones
/// ([`AddressSpace::spare_tables`](super::space::AddressSpace::spare_tables)
/// says how many it holds, [`AddressSpace::release_tables`](super::space::AddressSpace::release_tables)
/// hands them all to the kernel). An empty `deallocate_frame` instead
/// would leak every table the space frees.
///
/// ```
/// use dmaengine::mm::traits::{NoFree, TableAllocator};
/// use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size4KiB};
/// use x86_64::PhysAddr;
///
/// /// The boot memory map's frames, handed out once each (blog_os style).
/// struct BootFrames { next: u64, end: u64 }
/// // SAFETY: each frame of the (here imaginary) free range is returned once.
/// unsafe impl FrameAllocator<Size4KiB> for BootFrames {
///     fn allocate_frame(&mut self) -> Option<PhysFrame> {
///         (self.next < self.end).then(|| {
///             self.next += 4096;
///             PhysFrame::containing_address(PhysAddr::new(self.next - 4096))
///         })
///     }
/// }
///
/// fn tables(boot: BootFrames) -> impl TableAllocator {
///     NoFree(boot)
/// }
/// # let _ = tables(BootFrames { next: 0x10_0000, end: 0x20_0000 });
/// ```
///
/// # Safety
/// `allocate_table` returns only frames of RAM nobody else uses, each once
/// until it is given back; `take_back` that returns `true` owns the frame
/// from then on.
pub unsafe trait TableAllocator {
    /// A frame for a page table, or `None` when there is none left.
    fn allocate_table(&mut self) -> Option<PhysFrame>;

    /// Offers back a table frame: `true` if the allocator took it, `false`
    /// if it cannot free (the caller keeps the frame).
    ///
    /// # Safety
    /// `frame` came from this allocator's `allocate_table` and nothing
    /// uses it any more: no table links it, no TLB or IOTLB caches it.
    unsafe fn take_back(&mut self, frame: PhysFrame) -> bool;
}

// SAFETY: `FrameAllocator`'s contract is `allocate_table`'s;
// `deallocate_frame` takes ownership of the frame.
unsafe impl<A: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>> TableAllocator for A {
    #[inline]
    fn allocate_table(&mut self) -> Option<PhysFrame> {
        self.allocate_frame()
    }

    #[inline]
    unsafe fn take_back(&mut self, frame: PhysFrame) -> bool {
        // SAFETY: the caller's contract: the frame is this allocator's and
        // unused.
        unsafe { self.deallocate_frame(frame) };
        true
    }
}

/// An allocator that cannot free, as a [`TableAllocator`]: frames given
/// back stay with whoever gave them (see the trait's docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoFree<A>(pub A);

// SAFETY: `FrameAllocator`'s contract is `allocate_table`'s; nothing is
// ever taken back.
unsafe impl<A: FrameAllocator<Size4KiB>> TableAllocator for NoFree<A> {
    #[inline]
    fn allocate_table(&mut self) -> Option<PhysFrame> {
        self.0.allocate_frame()
    }

    #[inline]
    unsafe fn take_back(&mut self, _frame: PhysFrame) -> bool {
        false
    }
}

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
/// - `covers` is `true` for every frame `try_map` could accept;
/// - `try_map_pages`, if overridden, counts each page as `try_map` would,
///   the first `n` it returns and no other, and writes to `frames` the
///   frame it counted for each of them;
/// - [`CountedPage::frame`] of a page `get` or `alloc_page` handed out
///   is the same frame on every call (the frame `try_map` then counts);
/// - `only_mapping` is `true` only when the one entry being faulted on
///   holds the page's only reference and map count: a write fault then
///   makes that page writable in place, so a page another space, a fork
///   child or a driver still holds would take user space's writes.
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

    /// Counts the pages of `pages` in order as [`try_map`] does, stopping
    /// at the first it refuses or when `frames` is full, and writes each
    /// counted page's frame (the one it counted, read once) to `frames`
    /// at the page's index; returns how many it counted. `insert_pages`
    /// calls it for up to 64 pages at a time, then writes the entries from
    /// `frames`. The default calls `try_map` for each; a counter whose
    /// lookup has state to set up once (a table base, a run of memory) may
    /// do it in one pass.
    ///
    /// # Safety
    /// As [`try_map`]'s, for each page counted: the caller writes one
    /// entry mapping `frames[i]` for each of the first `n` pages (`n`
    /// returned), and gives each count back with one [`unmap`].
    ///
    /// [`try_map`]: PageCounter::try_map
    /// [`unmap`]: PageCounter::unmap
    unsafe fn try_map_pages(&self, pages: &[Self::Page], frames: &mut [PhysFrame]) -> usize {
        for (i, (page, slot)) in pages.iter().zip(frames.iter_mut()).enumerate() {
            let frame = page.frame();
            // SAFETY: the caller's contract, page by page.
            if !unsafe { self.try_map(frame) } {
                return i;
            }
            *slot = frame;
        }
        pages.len().min(frames.len())
    }

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
