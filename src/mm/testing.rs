//! Fixtures of the mm host tests (page tables in host memory, reached with
//! an offset of 0: "physical" addresses are host addresses): the frame
//! database's memory, a recording TLB, a kernel's own hierarchy. Every test
//! module imports them from here, never from another test module.

use std::alloc::{Layout, alloc_zeroed, dealloc};

use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::frame::{FrameDb, FrameKind, PageInfo};
use super::pte::{self, PAGE_2M, PAGE_4K};
use super::space::AddressSpace;
use super::tlb::TlbFlush;
use super::traits::OffsetMapper;
use super::vma::VmFlags;
use crate::hal::PAGE_SIZE;

/// Records every flush.
#[derive(Default, Debug)]
pub(crate) struct Tlb {
    pub(crate) pages: Vec<u64>,
    pub(crate) full: usize,
}

// SAFETY: host page tables are never loaded by any CPU, so there is
// nothing to flush; the test only records what was asked.
unsafe impl TlbFlush for Tlb {
    fn flush_page(&mut self, _root: PhysFrame, va: VirtAddr) {
        self.pages.push(va.as_u64());
    }
    fn flush_all(&mut self, _root: PhysFrame) {
        self.full += 1;
    }
}

/// The page at `addr` (page-aligned).
pub(crate) fn pg(addr: u64) -> Page {
    Page::from_start_address(VirtAddr::new(addr)).expect("a page-aligned address")
}

pub(crate) fn va(addr: u64) -> VirtAddr {
    VirtAddr::new(addr)
}

/// The frame with number `pfn`.
pub(crate) fn fr(pfn: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(pfn << 12))
}

/// Pages in `[start, end)`.
pub(crate) fn npages(start: u64, end: u64) -> u64 {
    (end - start) / PAGE_4K
}

pub(crate) fn bytes_to_pages(bytes: u64) -> u64 {
    bytes / PAGE_4K
}

/// Host memory is reached at offset 0.
pub(crate) fn mapper() -> OffsetMapper {
    // SAFETY: test frames are host memory, mapped 1:1.
    unsafe { OffsetMapper::new(VirtAddr::zero()) }
}

/// A space whose tables and pages come from `db`.
pub(crate) fn new_space<'a>(db: &'a FrameDb<'a>) -> Space<'a> {
    Space::new(db, mapper(), db, Tlb::default(), true).unwrap()
}

/// Host memory standing in for the physical frames a database manages.
pub(crate) struct Memory {
    base: *mut u8,
    frames: usize,
    infos: Vec<PageInfo>,
}

impl Memory {
    pub(crate) fn new(frames: usize) -> Memory {
        let layout = Layout::from_size_align(frames * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        Memory {
            base,
            frames,
            infos: (0..frames).map(|_| PageInfo::default()).collect(),
        }
    }

    /// The number of its first frame.
    pub(crate) fn first_pfn(&self) -> u64 {
        self.base as u64 >> 12
    }

    pub(crate) fn db(&self) -> FrameDb<'_> {
        // SAFETY: the frames are this host allocation, used only by the
        // database while it lives.
        unsafe { FrameDb::new(&self.infos, fr(self.base as u64 >> 12)) }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe {
            dealloc(
                self.base,
                Layout::from_size_align(self.frames * PAGE_SIZE, PAGE_SIZE).unwrap(),
            )
        }
    }
}

pub(crate) type Space<'a> = AddressSpace<&'a FrameDb<'a>, OffsetMapper, &'a FrameDb<'a>, Tlb>;

pub(crate) const SHARED_RW: VmFlags = VmFlags::READ
    .union(VmFlags::WRITE)
    .union(VmFlags::SHARED)
    .union(VmFlags::MAYWRITE);
pub(crate) const COW: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::MAYWRITE);
/// A 2 MiB-aligned area start, away from address 0.
pub(crate) const BASE: u64 = 0x4000_0000;

pub(crate) fn counts(db: &FrameDb<'_>, pfn: u64) -> (u32, u32) {
    let s = db.state(fr(pfn)).unwrap();
    (s.refcount, s.mapcount)
}

pub(crate) fn table_frames(db: &FrameDb<'_>) -> usize {
    (0..db.len())
        .filter(|&i| db.state(db.frame(i).unwrap()).unwrap().kind == FrameKind::PageTable)
        .count()
}
pub(crate) fn page_bytes(pa: u64) -> &'static mut [u8] {
    // SAFETY: test frames are host memory the fake HAL maps 1:1; callers
    // only use pages they own.
    unsafe { core::slice::from_raw_parts_mut(pa as *mut u8, PAGE_SIZE) }
}

/// A kernel's frame allocator for table frames: frames of its own host
/// memory, counted while out.
pub(crate) struct FakeAlloc {
    _mem: Memory,
    free: Vec<PhysFrame>,
    out: std::rc::Rc<std::cell::Cell<usize>>,
    /// The allocator fails (returns `None`) once this many frames are out.
    pub(crate) limit: usize,
}

impl FakeAlloc {
    pub(crate) fn new(frames: usize) -> FakeAlloc {
        let mem = Memory::new(frames);
        let first = mem.base as u64;
        FakeAlloc {
            free: (0..frames as u64)
                .rev()
                .map(|i| fr((first >> 12) + i))
                .collect(),
            _mem: mem,
            out: Default::default(),
            limit: usize::MAX,
        }
    }

    /// A counter of the frames out, that stays readable while the
    /// allocator is inside an address space.
    pub(crate) fn out_counter(&self) -> std::rc::Rc<std::cell::Cell<usize>> {
        self.out.clone()
    }
}

// SAFETY: each frame of the allocator's own host memory is handed out once
// until it comes back.
unsafe impl x86_64::structures::paging::FrameAllocator<x86_64::structures::paging::Size4KiB>
    for FakeAlloc
{
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        if self.out.get() >= self.limit {
            return None;
        }
        let frame = self.free.pop()?;
        self.out.set(self.out.get() + 1);
        Some(frame)
    }
}

impl x86_64::structures::paging::FrameDeallocator<x86_64::structures::paging::Size4KiB>
    for FakeAlloc
{
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        assert!(!self.free.contains(&frame), "{frame:?} freed twice");
        self.out.set(self.out.get() - 1);
        self.free.push(frame);
    }
}

/// A kernel's hierarchy, built with the `x86_64` crate's own mapper: a few
/// kernel pages next to (and in the same tables as) the model's areas, and
/// a 2 MiB kernel page in their gigabyte. Returns its root and the kernel's
/// leaves (address, entry).
pub(crate) fn kernel_hierarchy(alloc: &mut FakeAlloc) -> (PhysFrame, Vec<(u64, u64)>) {
    use x86_64::structures::paging::{
        FrameAllocator, Mapper, OffsetPageTable, PageTable, PageTableFlags as F, Size2MiB,
    };
    let root = alloc.allocate_frame().unwrap();
    let table = root.start_address().as_u64() as *mut PageTable;
    // SAFETY: a fresh frame of host memory, reached at offset 0.
    let mut kernel = unsafe {
        table.write(PageTable::new());
        OffsetPageTable::new(&mut *table, VirtAddr::zero())
    };
    let flags = F::PRESENT | F::WRITABLE;
    // Below area 0 in its page table, between areas 1 and 2 in their page
    // directory, and far off in another slot.
    for (i, addr) in [BASE - 8 * PAGE_4K, BASE + 6 * (1 << 20) + PAGE_4K, 1 << 40]
        .into_iter()
        .enumerate()
    {
        // SAFETY: test frames never accessed through these mappings.
        unsafe { kernel.map_to(pg(addr), fr(0x7_0000 + i as u64), flags, alloc) }
            .unwrap()
            .ignore();
    }
    let huge = Page::<Size2MiB>::from_start_address(va(BASE + 12 * PAGE_2M)).unwrap();
    let huge_frame = x86_64::structures::paging::PhysFrame::<Size2MiB>::from_start_address(
        PhysAddr::new(0x8000_0000),
    )
    .unwrap();
    // SAFETY: as above.
    unsafe { kernel.map_to(huge, huge_frame, flags, alloc) }
        .unwrap()
        .ignore();
    let leaves = [
        BASE - 8 * PAGE_4K,
        BASE + 6 * (1 << 20) + PAGE_4K,
        1 << 40,
        BASE + 12 * PAGE_2M,
    ]
    .into_iter()
    .map(|addr| {
        let leaf = kernel_leaf(root, addr);
        (addr, leaf)
    })
    .collect();
    (root, leaves)
}

/// The raw leaf entry mapping `addr` under `root` (host memory).
pub(crate) fn kernel_leaf(root: PhysFrame, addr: u64) -> u64 {
    let mut table = root.start_address().as_u64();
    for level in (1..=4).rev() {
        // SAFETY: a live page table in host memory.
        let entry = unsafe { (table as *const u64).add(pte::index(addr, level)).read() };
        if level == 1 || entry & pte::HUGE != 0 {
            return entry;
        }
        table = entry & pte::ADDR_4K;
    }
    unreachable!()
}
