//! The frame database: per 4 KiB frame a reference count, a map count and a
//! kind, the analogue of Linux's `struct page` array, and the allocator of
//! the frames it manages.
//!
//! A [`PageRef`] is one counted reference: cloning it takes another,
//! dropping it gives one back, and the frame returns to the free pool when
//! the last reference goes. Mapping a page into an address space takes a
//! reference *and* a map count; unmapping gives both back.

use core::fmt;

use x86_64::PhysAddr;
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};

use super::MmError;
use super::pte::PAGE_4K;
use super::traits::{CountedPage, PageCounter};
use crate::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

mod runs;

pub use runs::FrameRun;
use runs::{Runs, frames_fit};

/// The frame with number `pfn` (`None` past 52 bits of address).
#[inline]
fn frame_of(pfn: u64) -> Option<PhysFrame> {
    let addr = PhysAddr::try_new(pfn.checked_mul(PAGE_4K)?).ok()?;
    Some(PhysFrame::containing_address(addr))
}

#[inline]
fn pfn_of(frame: PhysFrame) -> u64 {
    frame.start_address().as_u64() / PAGE_4K
}

/// What a frame is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// In the free pool.
    Free = 0,
    /// An order-0 page allocated to be mapped: the only kind that may be
    /// inserted into an address space.
    Normal = 1,
    /// A page-table page.
    PageTable = 2,
    /// Used by the kernel itself (never mapped into user space this way).
    Kernel = 3,
    /// Firmware or device memory, or otherwise off limits.
    Reserved = 4,
}

impl FrameKind {
    fn from_u8(v: u8) -> FrameKind {
        match v {
            0 => FrameKind::Free,
            1 => FrameKind::Normal,
            2 => FrameKind::PageTable,
            3 => FrameKind::Kernel,
            _ => FrameKind::Reserved,
        }
    }
}

/// One reference, in [`PageInfo::counts`].
const REF: u64 = 1;
/// One mapping, in [`PageInfo::counts`].
const MAP: u64 = 1 << 32;

/// The database entry of one frame.
#[derive(Debug, Default)]
pub struct PageInfo {
    /// The reference count (low 32 bits) and the map count (high 32 bits):
    /// one word, so mapping a page is one atomic add.
    counts: AtomicU64,
    kind: AtomicU8,
}

impl PageInfo {
    /// A free frame's entry, for building the database's storage; a kernel
    /// without a heap keeps it in a static:
    ///
    /// ```
    /// use dmaengine::mm::frame::PageInfo;
    /// static PAGES: [PageInfo; 4096] = [const { PageInfo::new() }; 4096];
    /// ```
    #[cfg(not(all(test, loom)))]
    pub const fn new() -> PageInfo {
        PageInfo {
            counts: AtomicU64::new(0),
            kind: AtomicU8::new(0),
        }
    }

    /// A free frame's entry (loom's atomics cannot be made in a `const`).
    #[cfg(all(test, loom))]
    pub fn new() -> PageInfo {
        PageInfo {
            counts: AtomicU64::new(0),
            kind: AtomicU8::new(0),
        }
    }

    /// Adds `counts` (a reference, and maybe a mapping) unless the frame
    /// has no reference, as `Arc::upgrade` does: a check followed by a
    /// separate add would let the last reference go in between and then
    /// resurrect a free frame (or, once `take_free` stores the next owner's
    /// count, corrupt that owner's). Only a `Normal` page in use has a
    /// non-zero count, so a frame this succeeds on is one. Refuses, rather
    /// than wrap into the other half of the word, a count at its maximum.
    #[inline]
    fn add_if_referenced(&self, counts: u64) -> bool {
        let mut current = self.counts.load(Ordering::Acquire);
        loop {
            let refs = current as u32;
            let maps = (current >> 32) as u32;
            if refs == 0 || refs == u32::MAX || (counts & MAP != 0 && maps == u32::MAX) {
                return false;
            }
            match self.counts.compare_exchange_weak(
                current,
                current + counts,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// Records one more mapping of its page if it is an insertable page
    /// (`Normal` and held); returns whether it was.
    #[inline]
    fn try_map(&self) -> bool {
        // The kind is only a fast refusal; what decides is the count. An
        // add followed by an undo (as before issue 17) let `take_free`'s
        // store land in between, and the undo then took a reference and a
        // mapping off the next owner's page.
        self.kind.load(Ordering::Acquire) == FrameKind::Normal as u8
            && self.add_if_referenced(REF + MAP)
    }
}

/// The frames a database counts, with their entries: one run of
/// consecutive frames ([`FrameDb::new`]), or several, as a memory map with
/// holes gives them ([`FrameDb::with_runs`]).
pub struct FrameDb<'a> {
    pages: &'a [PageInfo],
    runs: Runs<'a>,
    /// Where the next free-frame search starts.
    hint: AtomicUsize,
}

impl fmt::Debug for FrameDb<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("FrameDb");
        match self.runs {
            Runs::One { base } => d.field("base_pfn", &base),
            Runs::Many(runs) => d.field("runs", &runs.len()),
        };
        d.field("frames", &self.pages.len()).finish()
    }
}

/// A snapshot of one frame's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameState {
    /// Its kind.
    pub kind: FrameKind,
    /// References held.
    pub refcount: u32,
    /// Page-table entries mapping it.
    pub mapcount: u32,
}

impl<'a> FrameDb<'a> {
    /// A database of the frames from `first` on, one entry each in `pages`,
    /// every one free and owned by the database from now on.
    ///
    /// # Safety
    /// Those frames must be RAM that nothing else uses (the database hands
    /// them out as pages and page tables, which the crate writes through a
    /// [`TableMapper`](super::traits::TableMapper)), for as long as the
    /// database lives; and no other database may use the entries of
    /// `pages` meanwhile (making one resets them: pages and tables still
    /// out would be handed out again).
    ///
    /// # Panics
    /// If the frames run past 2^52 bytes of physical address space.
    pub unsafe fn new(pages: &'a [PageInfo], first: PhysFrame) -> Self {
        let base = pfn_of(first);
        assert!(
            frames_fit(base, pages.len() as u64),
            "frames past 2^52 bytes of physical address space"
        );
        // SAFETY: the caller's contract.
        unsafe { Self::over(pages, Runs::One { base }) }
    }

    /// A database of the frames of `runs` (a memory map's usable entries,
    /// holes between them), one entry each in `pages`, in the order of the
    /// runs: every one free and owned by the database from now on. The
    /// runs must be sorted by address, disjoint, none empty, below 2^52
    /// bytes, and have as many frames in all as `pages` has entries, or
    /// the answer is [`MmError::InvalidRuns`] and nothing is touched. The
    /// database writes into each run where its entries start.
    ///
    /// ```
    /// use dmaengine::mm::frame::{FrameDb, FrameRun, PageInfo};
    /// use x86_64::structures::paging::PhysFrame;
    /// use x86_64::PhysAddr;
    ///
    /// let frame = |addr| PhysFrame::containing_address(PhysAddr::new(addr));
    /// // Four frames at 1 MiB, two at 4 GiB: a hole between, as a PC's
    /// // memory map has below 4 GiB (shortened).
    /// let mut runs = [
    ///     FrameRun::new(frame(0x10_0000), 4),
    ///     FrameRun::new(frame(0x1_0000_0000), 2),
    /// ];
    /// let pages: [PageInfo; 6] = Default::default();
    /// // SAFETY: (in a kernel) those frames are RAM nothing else uses.
    /// let db = unsafe { FrameDb::with_runs(&pages, &mut runs) }.unwrap();
    /// assert_eq!(db.len(), 6);
    /// assert!(db.state(frame(0x1_0000_1000)).is_some());
    /// assert!(db.state(frame(0x8000_0000)).is_none(), "a hole");
    /// ```
    ///
    /// # Safety
    /// As for [`FrameDb::new`], for the frames of every run.
    pub unsafe fn with_runs(
        pages: &'a [PageInfo],
        runs: &'a mut [FrameRun],
    ) -> Result<Self, MmError> {
        runs::index(runs, pages.len())?;
        // SAFETY: the caller's contract.
        Ok(unsafe { Self::over(pages, Runs::Many(runs)) })
    }

    /// # Safety
    /// As for [`FrameDb::new`].
    unsafe fn over(pages: &'a [PageInfo], runs: Runs<'a>) -> Self {
        for page in pages {
            page.counts.store(0, Ordering::Relaxed);
            page.kind.store(FrameKind::Free as u8, Ordering::Relaxed);
        }
        FrameDb {
            pages,
            runs,
            hint: AtomicUsize::new(0),
        }
    }

    /// The entry of frame `pfn`, if the database counts it.
    #[inline]
    fn info(&self, pfn: u64) -> Option<&PageInfo> {
        self.runs.entry(self.pages, pfn)
    }

    /// The frame number entry `index` counts (`index < len`).
    #[inline]
    fn pfn_at(&self, index: usize) -> u64 {
        self.runs.pfn_at(index)
    }

    /// The first frame the database covers.
    pub fn first_frame(&self) -> PhysFrame {
        self.frame(0)
            .or_else(|| match self.runs {
                Runs::One { base } => frame_of(base),
                Runs::Many(_) => None,
            })
            .expect("checked when the database was made")
    }

    /// The `index`th frame it covers, if it covers that many.
    pub fn frame(&self, index: usize) -> Option<PhysFrame> {
        (index < self.pages.len())
            .then(|| frame_of(self.pfn_at(index)))
            .flatten()
    }

    /// How many frames it covers.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether it covers no frame.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The entry of `frame`, if the database covers it.
    pub fn state(&self, frame: PhysFrame) -> Option<FrameState> {
        self.info(pfn_of(frame)).map(|info| {
            let counts = info.counts.load(Ordering::Acquire);
            FrameState {
                kind: FrameKind::from_u8(info.kind.load(Ordering::Acquire)),
                refcount: counts as u32,
                mapcount: (counts >> 32) as u32,
            }
        })
    }

    /// Free frames.
    pub fn free_frames(&self) -> usize {
        self.pages
            .iter()
            .filter(|p| p.kind.load(Ordering::Relaxed) == FrameKind::Free as u8)
            .count()
    }

    /// Takes a free frame out of the pool as `kind`, with one reference.
    fn take_free(&self, kind: FrameKind) -> Result<u64, MmError> {
        let len = self.pages.len();
        let start = self.hint.load(Ordering::Relaxed);
        for step in 0..len {
            let i = (start + step) % len;
            let claimed = self.pages[i]
                .kind
                .compare_exchange(
                    FrameKind::Free as u8,
                    kind as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
            if claimed {
                // Only a page carries a count: a table's stays 0, so the
                // lookups (which never add to a zero count) cannot take a
                // reference to it.
                let counts = if kind == FrameKind::Normal { REF } else { 0 };
                self.pages[i].counts.store(counts, Ordering::Release);
                self.hint.store(i + 1, Ordering::Relaxed);
                return Ok(self.pfn_at(i));
            }
        }
        Err(MmError::OutOfMemory)
    }

    /// Allocates an order-0 page for mapping, holding one reference.
    pub fn alloc_page(&self) -> Result<PageRef<'_>, MmError> {
        Ok(PageRef {
            db: self,
            pfn: self.take_free(FrameKind::Normal)?,
        })
    }

    /// Frees a page-table frame the database allocated.
    fn free_table(&self, pfn: u64) {
        if let Some(info) = self.info(pfn) {
            debug_assert_eq!(
                info.kind.load(Ordering::Acquire),
                FrameKind::PageTable as u8
            );
            info.counts.store(0, Ordering::Release);
            info.kind.store(FrameKind::Free as u8, Ordering::Release);
        }
    }

    /// Marks a free frame as `Reserved` or `Kernel` (taking it out of the
    /// pool), or relabels such a frame. Frames in use are refused, and so
    /// is `Free` as the new kind: a frame out of the pool may be remapped
    /// or used by the kernel, so only [`FrameDb::release`], whose caller
    /// vouches that nothing uses it, puts it back.
    pub fn set_kind(&self, frame: PhysFrame, kind: FrameKind) -> Result<(), MmError> {
        if !matches!(kind, FrameKind::Reserved | FrameKind::Kernel) {
            return Err(MmError::NotInsertable);
        }
        self.relabel(frame, kind)
    }

    /// Puts a `Reserved` or `Kernel` frame back in the pool (a `Free` one
    /// stays free); other kinds are refused.
    ///
    /// # Safety
    /// Nothing uses the frame any more: no entry of an address space maps
    /// it (or one that did was zapped and flushed), no device reaches it,
    /// the kernel holds no pointer into it. The pool hands it out next as
    /// a page or a page table.
    pub unsafe fn release(&self, frame: PhysFrame) -> Result<(), MmError> {
        self.relabel(frame, FrameKind::Free)
    }

    /// Changes the kind of a frame out of use (free, reserved or kernel)
    /// to `kind`, one of those three.
    fn relabel(&self, frame: PhysFrame, kind: FrameKind) -> Result<(), MmError> {
        let info = self.info(pfn_of(frame)).ok_or(MmError::NotInsertable)?;
        let mut current = info.kind.load(Ordering::Acquire);
        loop {
            let out_of_use = matches!(
                FrameKind::from_u8(current),
                FrameKind::Free | FrameKind::Reserved | FrameKind::Kernel
            );
            if !out_of_use {
                return Err(MmError::NotInsertable);
            }
            // A check and a separate store would let the allocator claim
            // the frame in between, and the store then relabel a page in
            // use.
            match info.kind.compare_exchange_weak(
                current,
                kind as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => current = now,
            }
        }
    }

    /// A new reference to the page `frame` if it is a `Normal` page in use
    /// (how the page behind a PTE is found again: `vm_normal_page`).
    pub fn get(&self, frame: PhysFrame) -> Option<PageRef<'_>> {
        let pfn = pfn_of(frame);
        let info = self.info(pfn)?;
        if info.kind.load(Ordering::Acquire) != FrameKind::Normal as u8 {
            return None;
        }
        // Not `then_some`: a `PageRef` built eagerly and dropped on refusal
        // would give back a reference it never took.
        info.add_if_referenced(REF)
            .then(|| PageRef { db: self, pfn })
    }

    /// Records one more mapping of `frame` if it is an insertable page (see
    /// [`FrameDb::insertable`]); returns whether it was.
    #[inline]
    fn try_map(&self, frame: PhysFrame) -> bool {
        self.info(pfn_of(frame)).is_some_and(PageInfo::try_map)
    }

    /// [`FrameDb::try_map`] for each page in order, stopping at the first
    /// refused or when `frames` is full, writing each counted page's frame
    /// to `frames`; how many were counted. The database's fields are
    /// copied into locals first: read through `self`, they were read again
    /// after each atomic add.
    fn try_map_pages(&self, pages: &[PageRef<'_>], frames: &mut [PhysFrame]) -> usize {
        let (entries, runs) = (self.pages, self.runs);
        for (i, (page, slot)) in pages.iter().zip(frames.iter_mut()).enumerate() {
            let frame = page.frame();
            if !runs
                .entry(entries, pfn_of(frame))
                .is_some_and(PageInfo::try_map)
            {
                return i;
            }
            *slot = frame;
        }
        pages.len().min(frames.len())
    }

    /// Records one mapping fewer, freeing the page with its last reference.
    #[inline]
    fn unmap(&self, frame: PhysFrame) {
        if let Some(info) = self.info(pfn_of(frame)) {
            self.put(info, REF + MAP);
        }
    }

    /// Drops `counts` (a reference, and maybe a mapping); the frame goes
    /// back to the pool with its last reference.
    #[inline]
    fn put(&self, info: &PageInfo, counts: u64) {
        if info.counts.fetch_sub(counts, Ordering::AcqRel) as u32 == 1 {
            info.kind.store(FrameKind::Free as u8, Ordering::Release);
        }
    }

    /// Whether `frame` may be inserted with `insert_page`: a `Normal` page
    /// someone holds.
    pub fn insertable(&self, frame: PhysFrame) -> bool {
        self.state(frame)
            .is_some_and(|s| s.kind == FrameKind::Normal && s.refcount > 0)
    }
}

// SAFETY: `FrameDb::new`'s contract gives the database RAM nobody else
// uses; a frame counts as mapped only while it is a held `Normal` page,
// and is freed only with its last reference; `only_mapping` reads the
// page's own counts: one reference, one mapping.
unsafe impl<'a> PageCounter for &'a FrameDb<'a> {
    type Page = PageRef<'a>;

    #[inline]
    unsafe fn try_map(&self, frame: PhysFrame) -> bool {
        FrameDb::try_map(self, frame)
    }

    #[inline]
    unsafe fn try_map_pages(&self, pages: &[PageRef<'a>], frames: &mut [PhysFrame]) -> usize {
        FrameDb::try_map_pages(self, pages, frames)
    }

    #[inline]
    unsafe fn unmap(&self, frame: PhysFrame) {
        FrameDb::unmap(self, frame)
    }

    fn covers(&self, frame: PhysFrame) -> bool {
        self.info(pfn_of(frame)).is_some()
    }

    fn only_mapping(&self, frame: PhysFrame) -> bool {
        self.state(frame)
            .is_some_and(|s| s.kind == FrameKind::Normal && s.refcount == 1 && s.mapcount == 1)
    }

    fn get(&self, frame: PhysFrame) -> Option<PageRef<'a>> {
        FrameDb::get(self, frame)
    }

    fn alloc_page(&self) -> Option<PageRef<'a>> {
        FrameDb::alloc_page(self).ok()
    }
}

// SAFETY: a frame is handed out once (claimed from `Free` atomically) and
// is RAM nobody else uses (`FrameDb::new`'s contract).
unsafe impl FrameAllocator<Size4KiB> for &FrameDb<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        frame_of(self.take_free(FrameKind::PageTable).ok()?)
    }
}

impl FrameDeallocator<Size4KiB> for &FrameDb<'_> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        self.free_table(pfn_of(frame));
    }
}

/// One counted reference to a `Normal` page.
pub struct PageRef<'a> {
    db: &'a FrameDb<'a>,
    pfn: u64,
}

impl PageRef<'_> {
    /// The page's frame number.
    pub fn pfn(&self) -> u64 {
        self.pfn
    }

    /// The page's frame.
    #[inline]
    pub fn frame(&self) -> PhysFrame {
        // The database checked at creation that its frames lie below 2^52.
        PhysFrame::containing_address(PhysAddr::new_truncate(self.pfn * PAGE_4K))
    }

    /// The page's physical address.
    pub fn phys(&self) -> PhysAddr {
        self.frame().start_address()
    }
}

impl CountedPage for PageRef<'_> {
    #[inline]
    fn frame(&self) -> PhysFrame {
        PageRef::frame(self)
    }
}

impl fmt::Debug for PageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageRef({:#x})", self.pfn)
    }
}

impl Clone for PageRef<'_> {
    fn clone(&self) -> Self {
        if let Some(info) = self.db.info(self.pfn) {
            // Held, so only a count at its maximum refuses: wrapping it
            // would free the page under its holders.
            assert!(info.add_if_referenced(REF), "page reference count overflow");
        }
        PageRef {
            db: self.db,
            pfn: self.pfn,
        }
    }
}

impl Drop for PageRef<'_> {
    fn drop(&mut self) {
        if let Some(info) = self.db.info(self.pfn) {
            self.db.put(info, REF);
        }
    }
}
