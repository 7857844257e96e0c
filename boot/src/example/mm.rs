//! How a kernel that already manages its memory with the `x86_64` crate
//! adopts the mm half.
//!
//! The kernel here keeps its own `OffsetPageTable` over the live page
//! tables (made anew for each use, never held across a call of the
//! crate's space) and its own frame allocator (the `x86_64` traits over
//! the boot allocator), and maps its own pages with them. Its mappings
//! and the crate's areas lie in different PML4 slots, so no page table
//! holds entries of both. It uses `dmaengine` only
//! to insert counted pages, remap a physical range and zap it, in the same
//! hierarchy. The lines between `glue: begin` and `glue: end` are all it
//! needs to do so (README.md gives their count, checked by a host test).

use dmaengine::mm::MmError;
use dmaengine::mm::frame::{FrameDb, FrameRun, PageInfo};
use dmaengine::mm::space::AddressSpace;
use dmaengine::mm::tlb::TlbFlush;
use dmaengine::mm::traits::OffsetMapper;
use dmaengine::mm::vma::{PageProt, VmFlags};
use x86_64::instructions::tlb;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags,
    PhysFrame, Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::mem::{PHYS_OFFSET, frames, phys_to_virt};
use crate::recover::{Caught, catch};
use crate::{Platform, println};

/// The kernel's own frame allocator, in the `x86_64` crate's terms.
#[derive(Clone, Copy)]
pub(super) struct KernelFrames;

// SAFETY: the boot allocator hands each frame out once until it is freed.
unsafe impl FrameAllocator<Size4KiB> for KernelFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let pa = frames::alloc_contiguous(1, 1).ok()?;
        Some(PhysFrame::containing_address(PhysAddr::new(pa)))
    }
}

impl FrameDeallocator<Size4KiB> for KernelFrames {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        let _ = frames::free(frame.start_address().as_u64());
    }
}

/// Frames in the example's page database.
const DB_FRAMES: usize = 1024;
/// The kernel's own mapping (PML4 slot 320).
const KERNEL_PAGE: u64 = 0xffff_a000_0000_0000;
/// Where the crate's area goes (PML4 slot 2).
const AREA: u64 = 2 << 39;

// glue: begin
static PAGES: [PageInfo; DB_FRAMES] = [const { PageInfo::new() }; DB_FRAMES];

/// Flushes on this CPU: the crate's space is the live hierarchy itself.
struct Flush;

// SAFETY: one CPU, and the space is always the loaded one.
unsafe impl TlbFlush for Flush {
    fn flush_page(&mut self, _root: PhysFrame, va: VirtAddr) {
        tlb::flush(va);
    }
    fn flush_all(&mut self, _root: PhysFrame) {
        tlb::flush_all();
    }
}

type Space = AddressSpace<&'static FrameDb<'static>, OffsetMapper, KernelFrames, Flush>;

fn adopt(runs: &'static mut [FrameRun], nx: bool) -> Space {
    static DB: spin::Once<FrameDb<'static>> = spin::Once::new();
    // SAFETY: the runs' frames were taken from the allocator for the
    // database alone; the direct map covers them and every table.
    let db = DB.call_once(|| unsafe { FrameDb::with_runs(&PAGES, runs) }.expect("a memory map"));
    // SAFETY: the direct map covers all RAM at PHYS_OFFSET, for good.
    let mapper = unsafe { OffsetMapper::new(VirtAddr::new(PHYS_OFFSET)) };
    // SAFETY: the live hierarchy outlives the space; the kernel leaves the
    // space's areas alone.
    unsafe { AddressSpace::from_root(Cr3::read().0, db, mapper, KernelFrames, Flush, nx) }
}
// glue: end

/// The kernel's own view of its page tables, as it had before, made anew
/// for each use: an `OffsetPageTable` holds a `&mut` to the PML4, which
/// must not stay live across a call of the crate's space, which writes
/// the same table through raw pointers (`TableMapper`'s contract).
fn kernel_tables() -> OffsetPageTable<'static> {
    let root = Cr3::read().0.start_address().as_u64();
    // SAFETY: the live PML4, reached through the direct map; each caller
    // drops the view before the space is used again, so no other reference
    // to the table is live meanwhile.
    unsafe {
        OffsetPageTable::new(
            &mut *phys_to_virt(root).cast::<PageTable>(),
            VirtAddr::new(PHYS_OFFSET),
        )
    }
}

/// Runs the mm half's example; a failed check panics.
pub fn run(platform: &Platform) {
    let own = KernelFrames.allocate_frame().expect("a frame");
    let own_page = Page::<Size4KiB>::containing_address(VirtAddr::new(KERNEL_PAGE));
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    // SAFETY: a fresh frame mapped at an address nothing else uses.
    unsafe { kernel_tables().map_to(own_page, own, flags, &mut KernelFrames) }
        .expect("the kernel maps its own page")
        .flush();
    // SAFETY: just mapped, writable.
    unsafe { (KERNEL_PAGE as *mut u64).write_volatile(0x6b65_726e_656c) };
    println!("the kernel mapped its own page at {KERNEL_PAGE:#x} with OffsetPageTable");

    // The database counts two runs of RAM, as a memory map with holes
    // gives them (the frames between them, if any, are not counted).
    let mut runs = [0, 1].map(|_| {
        let pa = frames::alloc_contiguous(DB_FRAMES / 2, 1).expect("frames for the database");
        FrameRun::new(
            PhysFrame::containing_address(PhysAddr::new(pa)),
            DB_FRAMES / 2,
        )
    });
    runs.sort_by_key(FrameRun::first);
    let runs = alloc::boxed::Box::leak(alloc::boxed::Box::new(runs));
    let mut space = adopt(runs, platform.nx);
    let area_page = |n: u64| Page::<Size4KiB>::containing_address(VirtAddr::new(AREA + n * 4096));
    let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED | VmFlags::MAYWRITE;
    let area = space
        .map_vma(area_page(0), 16, rw)
        .expect("an area for pages");
    let io = space
        .map_vma(area_page(1024), 512, rw)
        .expect("an area for a remapped range");
    assert_eq!(
        space.map_vma(own_page, 1, rw),
        Err(MmError::OutOfRange),
        "the kernel half is never the crate's"
    );

    // insert_pages: counted pages, written through the new mappings and
    // read back through the direct map.
    let db = *space.counter();
    let pages: alloc::vec::Vec<_> = (0..16).map(|_| db.alloc_page().expect("a page")).collect();
    space
        .insert_pages(area, area_page(0), &pages)
        .expect("insert_pages");
    for (i, page) in pages.iter().enumerate() {
        let at = (AREA + i as u64 * 4096) as *mut u64;
        // SAFETY: just mapped, writable, ours.
        unsafe { at.write_volatile(0x1000 + i as u64) };
        // SAFETY: the page's frame in the direct map.
        let back = unsafe {
            phys_to_virt(page.phys().as_u64())
                .cast::<u64>()
                .read_volatile()
        };
        assert_eq!(back, 0x1000 + i as u64, "page {i} through the MMU");
    }
    let seen = kernel_tables().translate_addr(VirtAddr::new(AREA));
    assert_eq!(
        seen,
        Some(pages[0].phys()),
        "the kernel's mapper sees the crate's entry"
    );
    println!("insert_pages: 16 pages written through their new mappings");

    // remap_pfn_range: 2 MiB of the kernel's memory, one 2 MiB entry.
    let buffer = frames::alloc_contiguous(512, 512).expect("2 MiB, aligned");
    // SAFETY: just allocated to us; the direct map covers it.
    unsafe {
        phys_to_virt(buffer)
            .cast::<u64>()
            .add(3)
            .write_volatile(0x0072_656d_6170)
    };
    let remap_at = area_page(1024);
    let frame = PhysFrame::containing_address(PhysAddr::new(buffer));
    // SAFETY: `buffer` was just allocated to us, and it is freed only at the
    // end, after `zap_range` and the space's drop unmapped it; the area is
    // not copy-on-write.
    unsafe { space.remap_pfn_range(io, remap_at, frame, 512, PageProt::READ_ONLY) }
        .expect("remap_pfn_range");
    let leaf = space.translate(remap_at.start_address()).expect("mapped");
    assert_eq!(leaf.level, 2, "one 2 MiB entry");
    let mapped = remap_at.start_address().as_u64() as *const u64;
    // SAFETY: just mapped, readable.
    assert_eq!(unsafe { mapped.add(3).read_volatile() }, 0x0072_656d_6170);
    assert!(
        kernel_tables()
            .translate_page(Page::<Size2MiB>::containing_address(
                remap_at.start_address()
            ))
            .is_ok(),
        "the kernel's mapper sees the 2 MiB entry"
    );
    println!("remap_pfn_range: 2 MiB as one entry, read through it");

    // zap_range: the next access faults; the kernel's own page is intact.
    space.zap_range(area, area_page(0), 16).expect("zap_range");
    space.zap_range(io, remap_at, 512).expect("zap_range");
    for at in [AREA, remap_at.start_address().as_u64()] {
        let fault = catch(|| {
            // SAFETY: the read must fault: nothing is mapped there any more.
            unsafe { (at as *const u64).read_volatile() }
        });
        match fault {
            Err(Caught::Exception(f)) => assert_eq!((f.vector, f.cr2), (14, at)),
            other => panic!("a read at {at:#x} after zap_range did not fault: {other:?}"),
        }
    }
    // SAFETY: the kernel's own mapping, untouched.
    let own_value = unsafe { (KERNEL_PAGE as *const u64).read_volatile() };
    assert_eq!(own_value, 0x6b65_726e_656c);
    for page in &pages {
        let state = db.state(page.frame()).expect("a database frame");
        assert_eq!(
            (state.refcount, state.mapcount),
            (1, 0),
            "counts given back"
        );
    }
    println!("zap_range: the area faults again; the kernel's own page reads as before");
    drop(space);
    assert!(
        kernel_tables()
            .translate_addr(VirtAddr::new(KERNEL_PAGE))
            .is_some(),
        "dropping the space left the kernel's mappings"
    );
    let _ = frames::free_contiguous(buffer, 512);
}
