//! Host tests of issue 17's memory-management holes and bugs: counts that
//! must not be resurrected, areas reaching the top of the lower half,
//! copy-on-write never copying a frame onto itself, and kernel entries the
//! crate must leave alone (a fork included).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::MmError;
use super::frame::{FrameDb, FrameKind, PageRef};
use super::pte::PageProt;
use super::pte::{self, CacheMode, PAGE_2M, PAGE_4K};
use super::space::AddressSpace;
use super::space::{Leaf, VmaId, WriteFault};
use super::testing::{
    BASE, COW, FakeAlloc, Memory, SHARED_RW, Space, Tlb, counts, fr, kernel_hierarchy, kernel_leaf,
    mapper, new_space, page_bytes, pg, va,
};
use super::traits::OffsetMapper;
use x86_64::structures::paging::PhysFrame;

/// How long a race test hammers (Miri runs it much slower, so fewer).
fn race_budget() -> (Duration, usize) {
    if cfg!(miri) {
        (Duration::from_secs(5), 200)
    } else {
        (Duration::from_millis(1500), 2_000_000)
    }
}

/// One thread allocates and drops the only frame while another looks it up
/// (issue 17, hole 7): a reference `get` hands out must keep the frame an
/// allocated `Normal` page while held, and the allocator must never hand
/// out a frame someone still holds. Before the fix `get` checked the count,
/// then incremented: it resurrected a frame whose last reference had gone.
#[test]
fn get_racing_the_last_drop_never_resurrects_a_free_frame() {
    let memory = Memory::new(1);
    let db = memory.db();
    let frame = db.frame(0).unwrap();
    let (budget, rounds) = race_budget();
    let stop = AtomicBool::new(false);
    let bad = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(held) = db.get(frame) {
                    let state = db.state(frame).unwrap();
                    if state.kind != FrameKind::Normal || state.refcount == 0 {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(held);
                }
            }
        });
        let start = Instant::now();
        for _ in 0..rounds {
            if start.elapsed() > budget {
                break;
            }
            let Ok(page): Result<PageRef<'_>, _> = db.alloc_page() else {
                continue;
            };
            // Held by this page and at most the other thread's lookup.
            let state = db.state(frame).unwrap();
            if state.kind != FrameKind::Normal || !(1..=2).contains(&state.refcount) {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            drop(page);
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0, "references to a free frame");
    let state = db.state(frame).unwrap();
    assert_eq!(
        (state.kind, state.refcount, state.mapcount),
        (FrameKind::Free, 0, 0)
    );
}

/// The end of the lower half: the top of the user range.
const TOP: u64 = 1 << 47;

/// An area of 4 pages ending exactly at 2^47 (issue 17, bug 3), its first
/// page mapped with `page` (a reference and a map count on it).
fn top_area<'a>(space: &mut Space<'a>, page: &PageRef<'a>) -> VmaId {
    let id = space.map_vma(pg(TOP - 4 * PAGE_4K), 4, COW).unwrap();
    space.insert_page(id, pg(TOP - 4 * PAGE_4K), page).unwrap();
    id
}

#[test]
fn an_area_ending_at_the_top_of_the_lower_half_can_be_unmapped() {
    let memory = Memory::new(32);
    let db = memory.db();
    let mut space = new_space(&db);
    let page = db.alloc_page().unwrap();
    let id = top_area(&mut space, &page);
    assert_eq!(space.vma(id).unwrap().end(), TOP);
    assert_eq!(counts(&db, page.pfn()), (2, 1));
    space.unmap_vma(id).unwrap();
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    assert!(space.translate(va(TOP - 4 * PAGE_4K)).is_none());
    assert_eq!(space.vma(id), Err(MmError::NoSuchVma));
}

#[test]
fn an_area_ending_at_the_top_of_the_lower_half_finds_its_pages() {
    let memory = Memory::new(32);
    let db = memory.db();
    let mut space = new_space(&db);
    let page = db.alloc_page().unwrap();
    let id = top_area(&mut space, &page);
    let found = space.normal_page(id, va(TOP - 4 * PAGE_4K + 8)).unwrap();
    assert_eq!(found.map(|p| p.pfn()), Some(page.pfn()));
    assert!(space.normal_page(id, va(TOP - 1)).unwrap().is_none());
    assert_eq!(
        space
            .normal_page(id, va(TOP - 5 * PAGE_4K))
            .map(|p| p.is_some()),
        Err(MmError::OutOfRange)
    );
}

#[test]
fn an_area_ending_at_the_top_of_the_lower_half_forks() {
    let memory = Memory::new(64);
    let db = memory.db();
    let mut parent = new_space(&db);
    let mut child = new_space(&db);
    let page = db.alloc_page().unwrap();
    let id = top_area(&mut parent, &page);
    let child_id = parent.fork_range(id, &mut child).unwrap();
    assert_eq!(child.vma(child_id).unwrap().end(), TOP);
    assert_eq!(counts(&db, page.pfn()), (3, 2));
    let leaf = child.translate(va(TOP - 4 * PAGE_4K)).unwrap();
    assert_eq!(leaf.phys().as_u64(), page.phys().as_u64());
    drop(child);
    assert_eq!(counts(&db, page.pfn()), (2, 1));
}

#[test]
fn a_space_with_an_area_ending_at_the_top_of_the_lower_half_drops() {
    let memory = Memory::new(32);
    let db = memory.db();
    let free = db.free_frames();
    let page = db.alloc_page().unwrap();
    let mut space = new_space(&db);
    top_area(&mut space, &page);
    drop(space);
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    drop(page);
    assert_eq!(db.free_frames(), free, "every table and page given back");
}

#[test]
fn write_faults_work_once_an_area_ends_at_the_top_of_the_lower_half() {
    let memory = Memory::new(64);
    let db = memory.db();
    let mut space = new_space(&db);
    let page = db.alloc_page().unwrap();
    page_bytes(page.phys().as_u64())[..4].copy_from_slice(b"top!");
    let low = space.map_vma(pg(BASE), 1, COW).unwrap();
    let low_page = db.alloc_page().unwrap();
    space.insert_page(low, pg(BASE), &low_page).unwrap();
    top_area(&mut space, &page);
    // Both pages are still held by this test, so each fault copies.
    assert_eq!(space.handle_write_fault(va(BASE)), Ok(WriteFault::Copied));
    let at = TOP - 4 * PAGE_4K;
    assert_eq!(space.handle_write_fault(va(at)), Ok(WriteFault::Copied));
    let copy = space.translate(va(at)).unwrap().phys().as_u64();
    assert_ne!(copy, page.phys().as_u64());
    assert_eq!(&page_bytes(copy)[..4], b"top!");
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    assert_eq!(
        space.handle_write_fault(va(TOP - PAGE_4K)),
        Err(MmError::NotMapped)
    );
}

/// A copy-on-write area remapping the very frame the next copy page will
/// be (issue 17, hole 6): the fault must not copy that frame onto itself
/// (`copy_nonoverlapping(p, p, 4096)`, which a debug build aborts on) and
/// must leave everything as it was.
#[test]
fn a_cow_fault_never_copies_a_frame_onto_itself() {
    let memory = Memory::new(16);
    let db = memory.db();
    let mut space = new_space(&db);
    // A first area builds the tables the second one will share.
    let first = space.map_vma(pg(BASE), 1, COW).unwrap();
    let device = db.frame(15).unwrap();
    db.set_kind(device, FrameKind::Reserved).unwrap();
    // SAFETY: a reserved frame of host memory this test owns, never freed
    // while mapped.
    unsafe { space.remap_pfn_range(first, pg(BASE), device, 1, PageProt::READ_ONLY) }.unwrap();
    // The allocator hands frames out in order: learn the next one.
    let probe = db.alloc_page().unwrap();
    let first_pfn = db.first_frame().start_address().as_u64() / PAGE_4K;
    let next = db
        .frame(usize::try_from(probe.pfn() - first_pfn).unwrap() + 1)
        .unwrap();
    drop(probe);
    let second = space.map_vma(pg(BASE + PAGE_4K), 1, COW).unwrap();
    // SAFETY: NOT kept: `next` is a free frame of the database, the broken
    // contract whose fault this test checks is refused; host tables are
    // never loaded, and the refused fault reads nothing.
    unsafe { space.remap_pfn_range(second, pg(BASE + PAGE_4K), next, 1, PageProt::READ_ONLY) }
        .unwrap();
    let before = space.translate(va(BASE + PAGE_4K)).unwrap().entry;
    let free = db.free_frames();
    assert_eq!(
        space.handle_write_fault(va(BASE + PAGE_4K)),
        Err(MmError::FreeFrameMapped)
    );
    assert_eq!(space.translate(va(BASE + PAGE_4K)).unwrap().entry, before);
    assert_eq!(db.free_frames(), free, "the copy page went back");
    assert_eq!(db.state(next).unwrap().kind, FrameKind::Free);
}

/// A page table of `kernel_hierarchy`'s: one kernel leaf, one page in.
const KERNEL_PT: u64 = BASE + 6 * (1 << 20);

/// The entry for `addr` in the kernel's table at `level` (host memory).
fn kernel_slot(root: PhysFrame, addr: u64, level: u32) -> *mut u64 {
    let mut table = root.start_address().as_u64();
    for current in (level + 1..=4).rev() {
        // SAFETY: a live page table in host memory.
        let entry = unsafe { (table as *const u64).add(pte::index(addr, current)).read() };
        assert!(
            entry & pte::PRESENT != 0,
            "a table at {addr:#x} level {current}"
        );
        table = entry & pte::ADDR_4K;
    }
    (table as *mut u64).wrapping_add(pte::index(addr, level))
}

/// The entry at `slot`.
///
/// # Safety
/// `slot` is a [`kernel_slot`] of a hierarchy still live in host memory.
unsafe fn peek(slot: *mut u64) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { slot.read() }
}

/// Leaves an empty page table of the kernel's covering `addr` (and the
/// tables above it), as a kernel's `OffsetPageTable` does once it unmaps
/// the last page of a table; returns the kernel's page-directory entry
/// linking it.
fn kernel_empty_table(root: PhysFrame, alloc: &mut FakeAlloc, addr: u64) -> *mut u64 {
    use x86_64::structures::paging::{Mapper, OffsetPageTable, PageTable, PageTableFlags as F};
    // SAFETY: the kernel's root, a host frame reached at offset 0.
    let mut kernel = unsafe {
        OffsetPageTable::new(
            &mut *(root.start_address().as_u64() as *mut PageTable),
            va(0),
        )
    };
    // SAFETY: a test frame never accessed through this mapping.
    unsafe { kernel.map_to(pg(addr), fr(0x7_1000), F::PRESENT, alloc) }
        .unwrap()
        .ignore();
    kernel.unmap(pg(addr)).unwrap().1.ignore();
    kernel_slot(root, addr, 2)
}

/// A kernel hierarchy with entries the crate must not take for its own
/// (issue 17, bug 4): in a page table the kernel uses, a non-present entry
/// with bit 11 and the frame of a page someone holds (as a kernel may keep
/// for itself), and one with bit 9 and another address; and an empty
/// kernel page table whose link carries bit 10. Before the fix an area over
/// the first was unmapped by clearing the marker and dropping a reference
/// on the held page (refcount 1 -> 0, mapcount wrapped), and an area under
/// the bit-10 link had the kernel's table freed into the crate's allocator.
/// Now areas over them are refused, areas beside them work, and every
/// kernel entry and count comes out as it went in.
#[test]
fn kernel_markers_and_bit_10_links_are_left_alone() {
    let memory = Memory::new(32);
    let db = memory.db();
    let mut kernel_alloc = FakeAlloc::new(32);
    let (root, kernel_leaves) = kernel_hierarchy(&mut kernel_alloc);
    // A held page the kernel's marker names.
    let held = db.alloc_page().unwrap();
    let retired_like = held.phys().as_u64() | pte::RETIRED | pte::USER;
    let special_like = 0x1234_5000 | pte::SPECIAL;
    // In the page table of a kernel leaf (at KERNEL_PT + 1 page).
    let marker_at = [KERNEL_PT + 2 * PAGE_4K, KERNEL_PT + 3 * PAGE_4K];
    // SAFETY: kernel page-table slots in host memory, not yet used.
    unsafe {
        kernel_slot(root, marker_at[0], 1).write(retired_like);
        kernel_slot(root, marker_at[1], 1).write(special_like);
    }
    // An empty kernel page table whose link carries bit 10.
    let empty_at = BASE + 20 * PAGE_2M;
    let link = kernel_empty_table(root, &mut kernel_alloc, empty_at);
    // SAFETY: the kernel's own link, in host memory.
    unsafe { link.write(peek(link) | pte::OWNED) };
    // SAFETY: as above.
    let link_before = unsafe { peek(link) };
    let kernel_tables = kernel_alloc.out_counter().get();
    let alloc = FakeAlloc::new(16);
    let out = alloc.out_counter();
    // SAFETY: the kernel's hierarchy lives (in `kernel_alloc`) until the
    // end of the test, after the space; the kernel changes nothing.
    let mut space =
        unsafe { AddressSpace::from_root(root, &db, mapper(), alloc, Tlb::default(), true) };
    assert_eq!(
        space.map_vma(pg(marker_at[0]), 2, SHARED_RW),
        Err(MmError::Overlap)
    );
    assert_eq!(
        space.map_vma(pg(marker_at[1]), 1, SHARED_RW),
        Err(MmError::Overlap)
    );
    assert_eq!(
        space.map_vma(pg(empty_at), 4, SHARED_RW),
        Err(MmError::Overlap),
        "a bit-10 link no area of this space explains is the kernel's"
    );
    // Beside the markers, in the same kernel page table: an ordinary area.
    let beside = space.map_vma(pg(BASE + 4 * PAGE_4K), 4, SHARED_RW).unwrap();
    let page = db.alloc_page().unwrap();
    space
        .insert_page(beside, pg(BASE + 4 * PAGE_4K), &page)
        .unwrap();
    space.unmap_vma(beside).unwrap();
    drop(space);
    // SAFETY: slots of the kernel's hierarchy, still live in host memory.
    let after = unsafe {
        [
            peek(kernel_slot(root, marker_at[0], 1)),
            peek(kernel_slot(root, marker_at[1], 1)),
            peek(link),
        ]
    };
    assert_eq!(after, [retired_like, special_like, link_before]);
    assert_eq!(counts(&db, held.pfn()), (1, 0), "the held page's counts");
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    assert_eq!(out.get(), 0, "the crate's allocator got back what it gave");
    assert_eq!(kernel_alloc.out_counter().get(), kernel_tables);
    for (addr, entry) in kernel_leaves {
        assert_eq!(kernel_leaf(root, addr), entry, "kernel leaf at {addr:#x}");
    }
}

/// What the crate did before the fix, on the same hierarchy: an area over
/// the bit-11 marker, unmapped, cleared it and dropped a reference it never
/// took; an area under the bit-10 link freed the kernel's table into the
/// crate's allocator. Kept as the two halves of the bug, each refused now.
#[test]
fn areas_over_kernel_markers_are_refused_and_change_nothing() {
    let memory = Memory::new(32);
    let db = memory.db();
    let mut kernel_alloc = FakeAlloc::new(32);
    let (root, _) = kernel_hierarchy(&mut kernel_alloc);
    let held = db.alloc_page().unwrap();
    let marker = held.phys().as_u64() | pte::RETIRED;
    let at = KERNEL_PT + 8 * PAGE_4K;
    let slot = kernel_slot(root, at, 1);
    // SAFETY: a kernel page-table slot in host memory, not yet used.
    unsafe { slot.write(marker) };
    // SAFETY: as in the test above.
    let mut space = unsafe {
        AddressSpace::from_root(root, &db, mapper(), FakeAlloc::new(8), Tlb::default(), true)
    };
    if let Ok(id) = space.map_vma(pg(at), 1, SHARED_RW) {
        // Before the fix: the zap takes the marker for a retired leaf.
        space.unmap_vma(id).unwrap();
    }
    drop(space);
    // SAFETY: a slot of the kernel's hierarchy, still live in host memory.
    assert_eq!(unsafe { peek(slot) }, marker);
    assert_eq!(counts(&db, held.pfn()), (1, 0));
}

/// An area's handle stays stale after its area is unmapped, however many
/// areas the slot held since: it must never name a later area (where a
/// driver holding it would insert pages into memory it was never given).
#[test]
fn a_stale_area_handle_never_names_a_later_area() {
    let memory = Memory::new(32);
    let db = memory.db();
    let mut space = new_space(&db);
    let old = space.map_vma(pg(BASE), 1, SHARED_RW).unwrap();
    space.unmap_vma(old).unwrap();
    // Every area since in the same slot, until its generations run out,
    // and one more.
    space.set_vma_generations_to_last();
    let between = space.map_vma(pg(BASE), 1, SHARED_RW).unwrap();
    space.unmap_vma(between).unwrap();
    let Ok(new) = space.map_vma(pg(BASE + 16 * PAGE_4K), 1, SHARED_RW) else {
        return;
    };
    assert_eq!(
        space.vma(old).err(),
        Some(MmError::NoSuchVma),
        "the stale handle names {new:?}'s area"
    );
    assert!(space.unmap_vma(old).is_err());
    assert!(space.vma(new).is_ok());
}

/// Device frames the fork tests remap: 1 GiB-aligned, never read (host
/// page tables are never loaded, and these tests fault on nothing).
const DEVICE: u64 = 0x1_4000_0000;

/// A space whose tables come from a [`FakeAlloc`] (a fork's parent and
/// child share the type).
type FakeAllocSpace<'a> = AddressSpace<&'a FrameDb<'a>, OffsetMapper, FakeAlloc, Tlb>;

/// A space of its own (the parent of a fork into a kernel's hierarchy).
fn fake_alloc_space<'a>(db: &'a FrameDb<'a>) -> FakeAllocSpace<'a> {
    AddressSpace::new(db, mapper(), FakeAlloc::new(8), Tlb::default(), true).unwrap()
}

/// Asserts that `child` maps every page of `[start, start + bytes)` to the
/// frame `parent` maps it to, with the same permissions, special bit and
/// memory type (whatever the size of either side's entries); returns how
/// many leaves of each level the child has there.
fn assert_same_mappings(
    parent: &FakeAllocSpace<'_>,
    child: &FakeAllocSpace<'_>,
    start: u64,
    bytes: u64,
) -> [usize; 4] {
    let bits = |l: &Leaf| {
        let access = pte::PRESENT | pte::WRITABLE | pte::USER | pte::NO_EXECUTE;
        (
            l.entry.bits() & access,
            l.is_special(),
            CacheMode::of_entry(l.entry, l.level > 1),
        )
    };
    // Leaf by leaf of the child (its leaves are never larger than the
    // parent's, and a leaf maps contiguous frames, so its first page
    // stands for all of it): page by page, a 1 GiB range took minutes
    // under Miri.
    let mut levels = [0; 4];
    let mut offset = 0;
    while offset < bytes {
        let at = va(start + offset);
        let (p, c) = (parent.translate(at).unwrap(), child.translate(at).unwrap());
        assert_eq!(c.va, at, "the child's leaf starts where the last ended");
        assert_eq!(c.frame_of(at), p.frame_of(at), "frame at {at:?}");
        assert_eq!(bits(&c), bits(&p), "bits at {at:?}: {c:?} for {p:?}");
        levels[c.level as usize] += 1;
        offset += PAGE_4K << (9 * (c.level as u64 - 1));
    }
    levels
}

/// A kernel's `OffsetPageTable` leaves a link to an empty page table once
/// it unmaps the table's last page, and `map_vma` takes such a link as
/// vacant. Before the fix `fork_range` copied a 2 MiB leaf of the parent
/// over that link in the child: the kernel's table was cut out of its own
/// hierarchy, and unmapping the child then cleared the slot to 0. Now the
/// leaf goes below the kernel's table as 512 4 KiB entries (the PAT bit
/// moved to bit 7, write-protected on both sides in a copy-on-write area),
/// mapping every page to the parent's frame, and the link is the kernel's
/// before, during and after.
#[test]
fn fork_keeps_a_kernels_link_where_the_parent_has_a_2mib_leaf() {
    let memory = Memory::new(32);
    let db = memory.db();
    let mut kernel_alloc = FakeAlloc::new(32);
    let (root, kernel_leaves) = kernel_hierarchy(&mut kernel_alloc);
    let at = BASE + 16 * PAGE_2M;
    let link = kernel_empty_table(root, &mut kernel_alloc, at);
    // SAFETY: the kernel's own link, in host memory.
    let link_before = unsafe { peek(link) };
    let mut parent = fake_alloc_space(&db);
    let id = parent.map_vma(pg(at), PAGE_2M / PAGE_4K, COW).unwrap();
    // SAFETY: host tables are never loaded, nothing reads the frames.
    unsafe {
        let prot = PageProt::READ_WRITE;
        parent.io_remap_pfn_range(
            id,
            pg(at),
            fr(DEVICE >> 12),
            512,
            prot,
            CacheMode::WriteThrough,
        )
    }
    .unwrap();
    assert_eq!(
        parent.translate(va(at)).unwrap().level,
        2,
        "a 2 MiB leaf in the parent"
    );
    let alloc = FakeAlloc::new(8);
    let out = alloc.out_counter();
    // SAFETY: the kernel's hierarchy lives (in `kernel_alloc`) until the
    // end of the test, after the space; the kernel changes nothing.
    let mut child =
        unsafe { AddressSpace::from_root(root, &db, mapper(), alloc, Tlb::default(), true) };

    let cid = parent.fork_range(id, &mut child).unwrap();
    // SAFETY: as above.
    let link_now = unsafe { peek(link) };
    assert_eq!(link_now, link_before, "the kernel's link after the fork");
    let levels = assert_same_mappings(&parent, &child, at, PAGE_2M);
    assert_eq!(
        levels,
        [0, 512, 0, 0],
        "4 KiB entries below the kernel's table"
    );
    assert_eq!(
        parent.translate(va(at)).unwrap().entry.bits() & pte::WRITABLE,
        0
    );
    child.unmap_vma(cid).unwrap();
    // SAFETY: as above.
    let link_now = unsafe { peek(link) };
    assert_eq!(link_now, link_before, "the kernel's link after the unmap");
    assert!(child.leaves(va(at)..va(at + PAGE_2M)).next().is_none());
    drop(child);
    assert_eq!(out.get(), 0, "the crate's allocator got back what it gave");
    for (addr, entry) in kernel_leaves {
        assert_eq!(kernel_leaf(root, addr), entry, "kernel leaf at {addr:#x}");
    }
}

/// The same for a 1 GiB leaf of the parent over a kernel's link to a page
/// directory that links one empty page table: the leaf goes below the
/// kernel's directory as 2 MiB entries, and below its page table as 4 KiB
/// ones, every page mapping the parent's frame; both links stay the
/// kernel's.
#[test]
fn fork_keeps_a_kernels_links_where_the_parent_has_a_1gib_leaf() {
    let memory = Memory::new(32);
    let db = memory.db();
    let mut kernel_alloc = FakeAlloc::new(32);
    let (root, kernel_leaves) = kernel_hierarchy(&mut kernel_alloc);
    let at = 2 * pte::PAGE_1G;
    let pd_link = kernel_empty_table(root, &mut kernel_alloc, at + 5 * PAGE_2M);
    let pdpt_link = kernel_slot(root, at, 3);
    // SAFETY: the kernel's own links, in host memory.
    let links_before = unsafe { [peek(pdpt_link), peek(pd_link)] };
    let mut parent = fake_alloc_space(&db);
    parent.set_1g_pages(true);
    let id = parent
        .map_vma(pg(at), pte::PAGE_1G / PAGE_4K, SHARED_RW)
        .unwrap();
    // SAFETY: host tables are never loaded, nothing reads the frames.
    unsafe {
        let (prot, pages) = (PageProt::READ_WRITE, pte::PAGE_1G / PAGE_4K);
        parent.io_remap_pfn_range(
            id,
            pg(at),
            fr(DEVICE >> 12),
            pages,
            prot,
            CacheMode::WriteProtected,
        )
    }
    .unwrap();
    assert_eq!(
        parent.translate(va(at)).unwrap().level,
        3,
        "a 1 GiB leaf in the parent"
    );
    let alloc = FakeAlloc::new(8);
    let out = alloc.out_counter();
    // SAFETY: as in the test above.
    let mut child =
        unsafe { AddressSpace::from_root(root, &db, mapper(), alloc, Tlb::default(), true) };

    let cid = parent.fork_range(id, &mut child).unwrap();
    // SAFETY: as above.
    let links = unsafe { [peek(pdpt_link), peek(pd_link)] };
    assert_eq!(links, links_before, "the kernel's links after the fork");
    let levels = assert_same_mappings(&parent, &child, at, pte::PAGE_1G);
    assert_eq!(levels, [0, 512, 511, 0]);
    child.unmap_vma(cid).unwrap();
    // SAFETY: as above.
    let links = unsafe { [peek(pdpt_link), peek(pd_link)] };
    assert_eq!(links, links_before, "the kernel's links after the unmap");
    drop(child);
    assert_eq!(out.get(), 0, "the crate's allocator got back what it gave");
    for (addr, entry) in kernel_leaves {
        assert_eq!(kernel_leaf(root, addr), entry, "kernel leaf at {addr:#x}");
    }
}

/// A fork that fails after copying a 2 MiB leaf below a kernel's link (the
/// child's allocator has no table for the next 2 MiB) leaves the child as
/// it was: before the fix the leaf had replaced the link, and the unmap
/// that undoes the copy cleared it to 0.
#[test]
fn a_failed_fork_leaves_a_kernels_link_where_the_parent_has_a_2mib_leaf() {
    let memory = Memory::new(32);
    let db = memory.db();
    let mut kernel_alloc = FakeAlloc::new(32);
    let (root, kernel_leaves) = kernel_hierarchy(&mut kernel_alloc);
    let at = BASE + 16 * PAGE_2M;
    let link = kernel_empty_table(root, &mut kernel_alloc, at);
    // SAFETY: the kernel's own link, in host memory.
    let link_before = unsafe { peek(link) };
    let mut parent = fake_alloc_space(&db);
    let id = parent
        .map_vma(pg(at), 2 * PAGE_2M / PAGE_4K, SHARED_RW)
        .unwrap();
    // A 2 MiB leaf, then one page in the next page directory entry (where
    // the kernel has nothing).
    for (offset, pages) in [(0, 512), (PAGE_2M, 1)] {
        let frame = fr((DEVICE + offset) >> 12);
        // SAFETY: host tables are never loaded, nothing reads the frames.
        unsafe { parent.remap_pfn_range(id, pg(at + offset), frame, pages, PageProt::READ_ONLY) }
            .unwrap();
    }
    let mut alloc = FakeAlloc::new(8);
    alloc.limit = 0;
    let out = alloc.out_counter();
    // SAFETY: as in the tests above.
    let mut child =
        unsafe { AddressSpace::from_root(root, &db, mapper(), alloc, Tlb::default(), true) };

    assert_eq!(parent.fork_range(id, &mut child), Err(MmError::OutOfMemory));
    // SAFETY: as above.
    let link_now = unsafe { peek(link) };
    assert_eq!(
        link_now, link_before,
        "the kernel's link after the failed fork"
    );
    assert!(child.leaves(va(at)..va(at + 2 * PAGE_2M)).next().is_none());
    assert!(
        (0..512).all(|i| kernel_leaf(root, at + i * PAGE_4K) == 0),
        "the kernel's table is empty again"
    );
    assert!(
        child.map_vma(pg(at), 1, SHARED_RW).is_ok(),
        "the child's area is gone"
    );
    drop(child);
    assert_eq!(out.get(), 0);
    for (addr, entry) in kernel_leaves {
        assert_eq!(kernel_leaf(root, addr), entry, "kernel leaf at {addr:#x}");
    }
}
