//! Host tests of the rules a hostile caller or a careful auditor checks:
//! page-table frames freed only after the flush that follows their
//! unlinking, copy-on-write over 2 MiB and forked special entries, counted
//! frames refused as raw PFNs, stale and foreign area ids, frame exhaustion
//! at every position, and arbitrary numbers at every entry point.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeSet;

use proptest::prelude::*;

use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::MmError;
use super::frame::{FrameDb, FrameKind, PageRef};
use super::pte::PageProt;
use super::pte::{self, PAGE_2M, PAGE_4K};
use super::space::{AddressSpace, PartialInsert, VmaId, WriteFault};
use super::testing::{
    BASE, COW, Memory, SHARED_RW, Space, Tlb, bytes_to_pages, counts, fr, mapper, new_space,
    npages, page_bytes, pg, table_frames, va,
};
use super::tlb::TlbFlush;
use super::traits::{OffsetMapper, PageCounter, TableAllocator, TableMapper};
use super::vma::VmFlags;

/// The page-table frames reachable from `root` (host memory, mapped 1:1).
fn reachable_tables(root: u64) -> BTreeSet<u64> {
    fn walk(table: u64, level: u32, out: &mut BTreeSet<u64>) {
        for i in 0..512 {
            // SAFETY: `table` is a live page-table frame in host memory.
            let entry = unsafe { (table as *const u64).add(i).read_volatile() };
            if entry & pte::PRESENT == 0 || entry & pte::HUGE != 0 {
                continue;
            }
            let child = entry & pte::ADDR_4K;
            out.insert(child);
            if level > 2 {
                walk(child, level - 1, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, 4, &mut out);
    out
}

fn table_set(db: &FrameDb<'_>) -> BTreeSet<u64> {
    (0..db.len())
        .map(|i| db.frame(i).unwrap())
        .filter(|&f| db.state(f).unwrap().kind == FrameKind::PageTable)
        .map(|f| f.start_address().as_u64())
        .collect()
}

/// Records, at every flush, the table frames that are unlinked (not
/// reachable from the root) but not yet freed: the frames that flush makes
/// safe to free. A page flush counts: `invlpg` drops every
/// paging-structure-cache entry, whatever its address (SDM 4.10.4.1).
struct OrderTlb<'a> {
    db: &'a FrameDb<'a>,
    safe_after_flush: Vec<BTreeSet<u64>>,
}

// SAFETY: host page tables are never loaded; this only records.
unsafe impl TlbFlush for OrderTlb<'_> {
    fn flush_page(&mut self, root: PhysFrame, _va: VirtAddr) {
        self.flush_all(root);
    }
    fn flush_all(&mut self, root: PhysFrame) {
        let root = root.start_address().as_u64();
        let reachable = reachable_tables(root);
        let unlinked = table_set(self.db)
            .into_iter()
            .filter(|t| *t != root && !reachable.contains(t))
            .collect();
        self.safe_after_flush.push(unlinked);
    }
}

type OrderSpace<'a> = AddressSpace<&'a FrameDb<'a>, OffsetMapper, &'a FrameDb<'a>, OrderTlb<'a>>;

fn order_space<'a>(db: &'a FrameDb<'a>) -> OrderSpace<'a> {
    let tlb = OrderTlb {
        db,
        safe_after_flush: Vec::new(),
    };
    OrderSpace::new(db, mapper(), db, tlb, true).unwrap()
}

/// Runs `op` and checks that every table frame it freed was, at some full
/// flush during it, already unlinked and not yet freed.
fn assert_tables_freed_after_flush<'a>(
    space: &mut OrderSpace<'a>,
    db: &FrameDb<'_>,
    what: &str,
    op: impl FnOnce(&mut OrderSpace<'a>),
) {
    let before = table_set(db);
    // SAFETY: the test's recorder, reset; it stays this space's.
    unsafe { space.tlb_mut() }.safe_after_flush.clear();
    op(space);
    let after = table_set(db);
    let freed: Vec<u64> = before.difference(&after).copied().collect();
    assert!(!freed.is_empty(), "{what}: the scenario must free tables");
    let log = &space.tlb().safe_after_flush;
    for frame in freed {
        assert!(
            log.iter().any(|safe| safe.contains(&frame)),
            "{what}: table {frame:#x} freed without a flush between its unlinking and its freeing"
        );
    }
}

#[test]
fn page_table_frames_are_freed_only_after_a_flush_that_follows_their_unlinking() {
    let mem = Memory::new(128);
    let db = mem.db();
    let mut space = order_space(&db);
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + 64 * PAGE_2M), SHARED_RW)
        .unwrap();
    let page = db.alloc_page().unwrap();
    // A zap that empties two page tables, their directory and its parent.
    space.insert_page(v, pg(BASE), &page).unwrap();
    space.insert_page(v, pg(BASE + PAGE_2M), &page).unwrap();
    assert_tables_freed_after_flush(&mut space, &db, "zap", |s| {
        s.zap_range(v, pg(BASE), npages(BASE, BASE + 2 * PAGE_2M))
            .unwrap()
    });
    // More emptied tables than one gather holds.
    for i in 0..40 {
        space.insert_page(v, pg(BASE + i * PAGE_2M), &page).unwrap();
    }
    assert_tables_freed_after_flush(&mut space, &db, "a zap of 40 tables", |s| {
        s.zap_range(v, pg(BASE), npages(BASE, BASE + 40 * PAGE_2M))
            .unwrap()
    });
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    // A failed remap (busy part-way) undoes what it wrote and prunes.
    space.insert_page(v, pg(BASE + 3 * PAGE_2M), &page).unwrap();
    assert_tables_freed_after_flush(&mut space, &db, "remap undo", |s| {
        assert_eq!(
            // SAFETY: host tables are never loaded, and this test faults only
            // on frames it owns and keeps (or on none): nothing reads the others.
            unsafe {
                s.remap_pfn_range(
                    v,
                    pg(BASE),
                    fr(0x100),
                    bytes_to_pages(3 * PAGE_2M + PAGE_4K),
                    PageProt::READ_ONLY,
                )
            },
            Err(MmError::WrongVmaKind)
        );
        s.zap_range(
            v,
            pg(BASE + 3 * PAGE_2M),
            npages(BASE + 3 * PAGE_2M, BASE + 3 * PAGE_2M + PAGE_4K),
        )
        .unwrap();
    });
    drop(space);
    drop(page);
    // Frame exhaustion inside `walk_alloc`: the tables it made are freed.
    let mem = Memory::new(4);
    let db = mem.db();
    let mut space = order_space(&db);
    let page = db.alloc_page().unwrap();
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_4K), SHARED_RW)
        .unwrap();
    let mut tables_made = 0;
    // SAFETY: the test's recorder, reset; it stays this space's.
    unsafe { space.tlb_mut() }.safe_after_flush.clear();
    let before = db.free_frames();
    assert_eq!(
        space.insert_page(v, pg(BASE), &page),
        Err(MmError::OutOfMemory)
    );
    assert_eq!(db.free_frames(), before);
    for safe in &space.tlb().safe_after_flush {
        tables_made = tables_made.max(safe.len());
    }
    assert_eq!(
        tables_made, 2,
        "the PDPT and PD were unlinked, flushed, then freed"
    );
}

#[test]
fn stale_and_foreign_area_ids_are_refused() {
    let mem = Memory::new(32);
    let db = mem.db();
    let mut space = new_space(&db);
    let mut other = new_space(&db);
    let page = db.alloc_page().unwrap();
    let old = space
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_4K), SHARED_RW)
        .unwrap();
    space.unmap_vma(old).unwrap();
    // A new area takes the same slot; the old id must not reach it.
    let new = space
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_4K), SHARED_RW)
        .unwrap();
    assert_ne!(old, new);
    assert_eq!(
        space.insert_page(old, pg(BASE), &page),
        Err(MmError::NoSuchVma)
    );
    assert_eq!(
        space.zap_range(old, pg(BASE), npages(BASE, BASE + PAGE_4K)),
        Err(MmError::NoSuchVma)
    );
    assert_eq!(space.unmap_vma(old), Err(MmError::NoSuchVma));
    let theirs = other
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_4K), SHARED_RW)
        .unwrap();
    assert_eq!(
        space.insert_page(theirs, pg(BASE), &page),
        Err(MmError::ForeignVma)
    );
    assert_eq!(space.vma(theirs).err(), Some(MmError::ForeignVma));
    assert_eq!(
        space.insert_pages(theirs, pg(BASE), std::slice::from_ref(&page)),
        Err(PartialInsert {
            inserted: 0,
            error: MmError::ForeignVma
        })
    );
    assert!(space.translate(va(BASE)).is_none() && other.translate(va(BASE)).is_none());
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    space.insert_page(new, pg(BASE), &page).unwrap();
}

/// Host memory that stands for 2 MiB-aligned device frames (not in any
/// frame database).
struct HugeFrames {
    base: *mut u8,
    layout: Layout,
}

impl HugeFrames {
    fn new(count: usize) -> HugeFrames {
        Self::aligned(count * PAGE_2M as usize, PAGE_2M as usize)
    }

    /// `size` bytes aligned to `align` (zero pages are only made real where
    /// touched, so even 1 GiB costs little).
    fn aligned(size: usize, align: usize) -> HugeFrames {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        HugeFrames { base, layout }
    }
    fn pfn(&self) -> u64 {
        self.base as u64 >> 12
    }
}

impl Drop for HugeFrames {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, self.layout) }
    }
}

fn fingerprint<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush>(
    space: &AddressSpace<C, M, A, T>,
    db: &FrameDb<'_>,
) -> (Vec<(u64, u64)>, usize, usize) {
    (
        space
            .user_leaves()
            .map(|l| (l.va.as_u64(), l.entry.bits()))
            .collect(),
        table_frames(db),
        db.free_frames(),
    )
}

#[test]
fn a_write_fault_on_a_2mib_copy_on_write_entry_splits_it_and_copies_one_page() {
    let frames = HugeFrames::new(1);
    page_bytes((frames.pfn() + 5) << 12).fill(0x5a);
    let mem = Memory::new(16);
    let db = mem.db();
    let mut space = new_space(&db);
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_2M), COW)
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            v,
            pg(BASE),
            fr(frames.pfn()),
            bytes_to_pages(PAGE_2M),
            PageProt::READ_ONLY,
        )
    }
    .unwrap();
    assert_eq!(space.translate(va(BASE)).unwrap().level, 2);
    let at = BASE + 5 * PAGE_4K + 123;
    // Out of memory for the copy, then for the split: nothing changes.
    let held: Vec<PageRef<'_>> = std::iter::from_fn(|| db.alloc_page().ok()).collect();
    let before = fingerprint(&space, &db);
    assert_eq!(space.handle_write_fault(va(at)), Err(MmError::OutOfMemory));
    assert_eq!(fingerprint(&space, &db), before);
    let mut held = held;
    drop(held.pop());
    let before = fingerprint(&space, &db);
    assert_eq!(
        space.handle_write_fault(va(at)),
        Err(MmError::OutOfMemory),
        "one frame: the copy, but no table for the split"
    );
    assert_eq!(fingerprint(&space, &db), before);
    drop(held);
    assert_eq!(space.handle_write_fault(va(at)), Ok(WriteFault::Copied));
    let leaf = space.translate(va(at)).unwrap();
    assert_eq!(leaf.level, 1);
    assert!(!leaf.is_special() && leaf.entry.bits() & pte::WRITABLE != 0);
    assert_ne!(leaf.phys().as_u64() >> 12, frames.pfn() + 5);
    assert!(page_bytes(leaf.phys().as_u64()).iter().all(|&b| b == 0x5a));
    // The other 511 pages still map the device frames, read-only, special.
    let rest: Vec<_> = space
        .leaves(va(BASE)..va(BASE + PAGE_2M))
        .filter(|l| l.va.as_u64() != BASE + 5 * PAGE_4K)
        .collect();
    assert_eq!(rest.len(), 511);
    assert!(rest.iter().all(|l| l.level == 1
        && l.is_special()
        && l.entry.bits() & pte::WRITABLE == 0
        && l.phys().as_u64() == (frames.pfn() << 12) + (l.va.as_u64() - BASE)));
    assert!(
        page_bytes((frames.pfn() + 5) << 12)
            .iter()
            .all(|&b| b == 0x5a)
    );
    drop(space);
    assert_eq!(table_frames(&db), 0);
    assert_eq!(db.free_frames(), db.len());
}

#[test]
fn fork_write_protects_writable_special_entries_of_copy_on_write_areas() {
    let frames = HugeFrames::new(2);
    let mem = Memory::new(32);
    let db = mem.db();
    let mut parent = new_space(&db);
    let mut child = new_space(&db);
    // A private area remapped read-write: 4 KiB and 2 MiB special entries.
    let small = parent
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_4K), COW)
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        parent.remap_pfn_range(
            small,
            pg(BASE),
            fr(frames.pfn()),
            bytes_to_pages(PAGE_4K),
            PageProt::READ_WRITE,
        )
    }
    .unwrap();
    let huge = parent
        .map_vma(
            pg(BASE + PAGE_2M),
            npages(BASE + PAGE_2M, BASE + 2 * PAGE_2M),
            COW,
        )
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        parent.remap_pfn_range(
            huge,
            pg(BASE + PAGE_2M),
            fr(frames.pfn() + 512),
            bytes_to_pages(PAGE_2M),
            PageProt::READ_WRITE,
        )
    }
    .unwrap();
    assert!(parent.translate(va(BASE)).unwrap().entry.bits() & pte::WRITABLE != 0);
    let small_child = parent.fork_range(small, &mut child).unwrap();
    let huge_child = parent.fork_range(huge, &mut child).unwrap();
    for space in [&parent, &child] {
        for addr in [BASE, BASE + PAGE_2M] {
            assert_eq!(
                space.translate(va(addr)).unwrap().entry.bits() & pte::WRITABLE,
                0,
                "{addr:#x} read-only on both sides"
            );
        }
    }
    assert!(
        parent.tlb().pages.contains(&BASE),
        "the downgrade was flushed"
    );
    // A write on either side gets a private copy; the device frames stay.
    page_bytes(frames.pfn() << 12)[0] = 0x11;
    assert_eq!(child.handle_write_fault(va(BASE)), Ok(WriteFault::Copied));
    page_bytes(child.translate(va(BASE)).unwrap().phys().as_u64())[0] = 0x22;
    assert_eq!(page_bytes(frames.pfn() << 12)[0], 0x11);
    assert_eq!(
        child.handle_write_fault(va(BASE + PAGE_2M + 7 * PAGE_4K)),
        Ok(WriteFault::Copied)
    );
    assert!(parent.translate(va(BASE + PAGE_2M)).unwrap().level == 2);
    assert_eq!(parent.handle_write_fault(va(BASE)), Ok(WriteFault::Copied));
    assert_ne!(
        parent.translate(va(BASE)).unwrap().phys().as_u64(),
        child.translate(va(BASE)).unwrap().phys().as_u64()
    );
    let _ = (small_child, huge_child);
    drop((parent, child));
    assert_eq!(db.free_frames(), db.len(), "every copy and table came back");
}

/// Runs `op` on a fresh setup with only `free` frames left in the pool,
/// for every `free` from 0 until it succeeds; each failure must leave the
/// state exactly as `expect_after_error` says.
fn sweep_exhaustion(
    name: &str,
    frames: usize,
    setup: impl for<'a> Fn(&'a FrameDb<'a>, &mut Space<'a>) -> VmaId,
    op: impl for<'a> Fn(&mut Space<'a>, VmaId, &mut Space<'a>) -> Result<(), MmError>,
) {
    for free in 0.. {
        let mem = Memory::new(frames);
        let db = mem.db();
        let mut space = new_space(&db);
        let mut other = new_space(&db);
        let id = setup(&db, &mut space);
        let mut held: Vec<PageRef<'_>> = std::iter::from_fn(|| db.alloc_page().ok()).collect();
        held.truncate(held.len().saturating_sub(free));
        let before = (fingerprint(&space, &db), fingerprint(&other, &db));
        match op(&mut space, id, &mut other) {
            Ok(()) => {
                assert!(free > 0, "{name}: cannot succeed with no frame");
                return;
            }
            Err(e) => {
                assert_eq!(e, MmError::OutOfMemory, "{name} with {free} free frames");
                assert_eq!(
                    (fingerprint(&space, &db), fingerprint(&other, &db)),
                    before,
                    "{name}: failed with {free} free frames and changed something"
                );
            }
        }
        assert!(free < 16, "{name}: never succeeded");
    }
}

#[test]
fn running_out_of_frames_at_any_point_changes_nothing() {
    let frames = HugeFrames::new(2);
    let device = frames.pfn();
    // A 2 MiB (plus 4 KiB) remap: directory, table, at every position.
    sweep_exhaustion(
        "remap",
        64,
        |_, space| {
            space
                .map_vma(pg(BASE), npages(BASE, BASE + PAGE_2M + PAGE_4K), SHARED_RW)
                .unwrap()
        },
        |space, id, _| {
            // SAFETY: host tables are never loaded, and this test faults only
            // on frames it owns and keeps (or on none): nothing reads the others.
            unsafe {
                space.remap_pfn_range(
                    id,
                    pg(BASE),
                    fr(device),
                    bytes_to_pages(PAGE_2M + PAGE_4K),
                    PageProt::READ_ONLY,
                )
            }
        },
    );
    // A zap that must split a 2 MiB entry at each end.
    sweep_exhaustion(
        "zap with splits",
        64,
        |_, space| {
            let v = space
                .map_vma(pg(BASE), npages(BASE, BASE + 2 * PAGE_2M), SHARED_RW)
                .unwrap();
            // SAFETY: host tables are never loaded, and this test faults only
            // on frames it owns and keeps (or on none): nothing reads the others.
            unsafe {
                space.remap_pfn_range(
                    v,
                    pg(BASE),
                    fr(device),
                    bytes_to_pages(2 * PAGE_2M),
                    PageProt::READ_ONLY,
                )
            }
            .unwrap();
            v
        },
        |space, id, _| {
            space.zap_range(
                id,
                pg(BASE + PAGE_4K),
                npages(BASE + PAGE_4K, BASE + PAGE_2M + PAGE_4K),
            )
        },
    );
    // fork of an area with pages in two page tables.
    sweep_exhaustion(
        "fork",
        64,
        |db, space| {
            let v = space
                .map_vma(pg(BASE), npages(BASE, BASE + 2 * PAGE_2M), COW)
                .unwrap();
            let a = db.alloc_page().unwrap();
            space.insert_page(v, pg(BASE), &a).unwrap();
            space.insert_page(v, pg(BASE + PAGE_2M), &a).unwrap();
            v
        },
        |space, id, child| space.fork_range(id, child).map(|_| ()),
    );
}

#[test]
fn insert_pages_out_of_frames_keeps_exactly_what_it_reports() {
    for free in 0..6 {
        let mem = Memory::new(64);
        let db = mem.db();
        let mut space = new_space(&db);
        let v = space
            .map_vma(pg(BASE), npages(BASE, BASE + 4 * PAGE_2M), SHARED_RW)
            .unwrap();
        // Three pages: one at the end of one table, two in the next.
        let pages: Vec<PageRef<'_>> = (0..3).map(|_| db.alloc_page().unwrap()).collect();
        let mut held: Vec<PageRef<'_>> = std::iter::from_fn(|| db.alloc_page().ok()).collect();
        held.truncate(held.len().saturating_sub(free));
        let at = BASE + PAGE_2M - PAGE_4K;
        let result = space.insert_pages(v, pg(at), &pages);
        let inserted = match result {
            Ok(()) => 3,
            Err(PartialInsert {
                inserted,
                error: MmError::OutOfMemory,
            }) => inserted,
            Err(other) => panic!("unexpected {other:?}"),
        };
        let mapped: Vec<_> = space
            .user_leaves()
            .map(|l| (l.va.as_u64(), l.phys().as_u64()))
            .collect();
        let expected: Vec<_> = (0..inserted)
            .map(|i| (at + i as u64 * PAGE_4K, pages[i].phys().as_u64()))
            .collect();
        assert_eq!(mapped, expected, "{free} free frames");
        for (i, page) in pages.iter().enumerate() {
            let maps = u32::from(i < inserted);
            assert_eq!(counts(&db, page.pfn()), (1 + maps, maps));
        }
        drop(held);
        if inserted == 3 {
            assert!(free >= 3, "root's PDPT, PD and two PTs need frames");
            return;
        }
    }
    panic!("insert_pages never succeeded");
}

/// Numbers a hostile caller picks: small, huge, near every boundary.
fn hostile() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..0x10_0000,
        (BASE - 0x2000..BASE + 0x40_2000),
        (1u64 << 47) - 0x2000..(1u64 << 47) + 0x2000,
        (1u64 << 52) - 0x10..(1u64 << 52) + 0x10,
        u64::MAX - 0x2000..=u64::MAX,
        any::<u64>(),
    ]
}

/// Any number as an address: canonical (the type allows no other), in
/// either half.
fn any_addr(a: u64) -> VirtAddr {
    VirtAddr::new_truncate(a)
}

/// Any number as a page: the page containing it.
fn any_page(a: u64) -> Page {
    Page::containing_address(any_addr(a))
}

/// Any number as a frame: the frame containing it (52 bits kept).
fn any_frame(p: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new_truncate(p))
}

/// A call with hostile numbers: addresses become pages, frames and
/// addresses as the types allow; counts stay raw.
#[derive(Clone, Debug)]
enum Call {
    MapVma(u64, u64),
    InsertPage(u64),
    InsertPages(u64, usize),
    Remap(u64, u64, u64),
    InsertPfn(u64, u64),
    Zap(u64, u64),
    NormalPage(u64),
    Leaves(u64, u64),
    WriteFault(u64),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (hostile(), hostile()).prop_map(|(a, n)| Call::MapVma(a, n)),
        hostile().prop_map(Call::InsertPage),
        (hostile(), 0usize..4).prop_map(|(a, n)| Call::InsertPages(a, n)),
        (hostile(), hostile(), hostile()).prop_map(|(a, p, s)| Call::Remap(a, p, s)),
        (hostile(), hostile()).prop_map(|(a, p)| Call::InsertPfn(a, p)),
        (hostile(), hostile()).prop_map(|(a, n)| Call::Zap(a, n)),
        hostile().prop_map(Call::NormalPage),
        (hostile(), hostile()).prop_map(|(a, b)| Call::Leaves(a, b)),
        hostile().prop_map(Call::WriteFault),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { ProptestConfig::default().cases } else { 400 }, ..ProptestConfig::default() })]

    /// Whatever the numbers: no panic (overflow checks on), and a call that
    /// returns an error leaves entries, tables, free frames, counts and area
    /// flags as they were.
    #[test]
    fn hostile_numbers_are_errors_that_change_nothing(calls in prop::collection::vec(call(), 1..30)) {
        let mem = Memory::new(48);
        let db = mem.db();
        let mut space = new_space(&db);
        let ids = [
            space.map_vma(pg(BASE), npages(BASE, BASE + 4 * PAGE_4K), SHARED_RW).unwrap(),
            space.map_vma(pg(BASE + PAGE_2M), npages(BASE + PAGE_2M, BASE + 3 * PAGE_2M), COW).unwrap(),
        ];
        let pages: Vec<PageRef<'_>> = (0..3).map(|_| db.alloc_page().unwrap()).collect();
        let state = |space: &Space<'_>| {
            let flags: Vec<Option<VmFlags>> = ids.iter().map(|&id| space.vma(id).ok().map(|v| v.flags)).collect();
            let page_counts: Vec<_> = pages.iter().map(|p| counts(&db, p.pfn())).collect();
            (fingerprint(space, &db), flags, page_counts)
        };
        for (i, call) in calls.into_iter().enumerate() {
            let id = ids[i % 2];
            let before = state(&space);
            let failed = match call {
                Call::MapVma(a, n) => space.map_vma(any_page(a), n, SHARED_RW).is_err(),
                Call::InsertPage(a) => space.insert_page(id, any_page(a), &pages[i % 3]).is_err(),
                Call::InsertPages(a, n) => match space.insert_pages(id, any_page(a), &pages[..n]) {
                    Ok(()) => false,
                    // Pages inserted before the error stay: not "nothing".
                    Err(p) => p.inserted == 0,
                },
                // SAFETY: hostile frames go into the shared area only, where
                // a write fault is `Protection` and copies nothing, and host
                // tables are never loaded: nothing reads those frames.
                Call::Remap(a, p, n) => unsafe { space.remap_pfn_range(ids[0], any_page(a), any_frame(p), n, PageProt::READ_WRITE) }.is_err(),
                // SAFETY: as for `Remap`.
                Call::InsertPfn(a, p) => unsafe { space.insert_pfn(ids[0], any_page(a), any_frame(p)) }.is_err(),
                Call::Zap(a, n) => space.zap_range(id, any_page(a), n).is_err(),
                Call::NormalPage(a) => { let _ = space.normal_page(id, any_addr(a)); let _ = space.translate(any_addr(a)); true }
                // Each leaf once, in order, inside the range, and the walk
                // ends: at most every leaf the space has.
                Call::Leaves(a, b) => {
                    let (from, to) = (any_addr(a), any_addr(b));
                    let all = space.user_leaves().count();
                    let seen: Vec<u64> = space.leaves(from..to).take(all + 1).map(|l| l.va.as_u64()).collect();
                    prop_assert!(seen.len() <= all && seen.windows(2).all(|w| w[0] < w[1]), "{:x?}", seen);
                    true
                }
                Call::WriteFault(a) => space.handle_write_fault(any_addr(a)).is_err(),
            };
            if failed {
                prop_assert_eq!(state(&space), before);
            }
        }
        drop(space);
        prop_assert_eq!(table_frames(&db), 0);
        for page in &pages {
            prop_assert_eq!(counts(&db, page.pfn()), (1, 0));
        }
    }
}

#[test]
fn kind_of_a_frame_the_database_does_not_cover_is_not_counted() {
    // Guards the CountedFrame rule's edge: frames outside the database are
    // raw PFNs and are taken in a MIXEDMAP area.
    let mem = Memory::new(16);
    let db = mem.db();
    let mut space = new_space(&db);
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + 2 * PAGE_4K), SHARED_RW)
        .unwrap();
    let page = db.alloc_page().unwrap();
    space.insert_page(v, pg(BASE), &page).unwrap();
    let outside = (db.first_frame().start_address().as_u64() >> 12) + db.len() as u64 + 10;
    assert!(db.state(fr(outside)).is_none());
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    assert!(unsafe { space.insert_pfn(v, pg(BASE + PAGE_4K), fr(outside)) }.is_ok());
    assert!(space.vma(v).unwrap().flags.contains(VmFlags::MIXEDMAP));
}

const GIB: u64 = 1 << 30;

#[test]
fn one_gib_entries_are_made_only_when_allowed_and_split_down_on_a_partial_zap() {
    use super::pte::CacheMode;
    let mem = Memory::new(64);
    let db = mem.db();
    let device = GIB >> 12; // a 1 GiB-aligned frame number
    let wt = PageProt::READ_WRITE.with_cache(CacheMode::WriteThrough);
    // Not allowed (the default): 512 2 MiB entries.
    let mut space = new_space(&db);
    let v = space.map_vma(pg(BASE), GIB / PAGE_4K, SHARED_RW).unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe { space.remap_pfn_range(v, pg(BASE), fr(device), GIB / PAGE_4K, wt) }.unwrap();
    assert_eq!(space.user_leaves().count(), 512);
    drop(space);
    // Allowed: one entry (and the PDPT linking it).
    let mut space = new_space(&db);
    space.set_1g_pages(true);
    let v = space.map_vma(pg(BASE), GIB / PAGE_4K, SHARED_RW).unwrap();
    let before = space.entries_written();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe { space.remap_pfn_range(v, pg(BASE), fr(device), GIB / PAGE_4K, wt) }.unwrap();
    assert_eq!(
        space.entries_written() - before,
        2,
        "a PDPT link and one leaf"
    );
    let leaf = space.translate(va(BASE + 12345)).unwrap();
    assert_eq!((leaf.level, leaf.phys().as_u64()), (3, GIB));
    assert_eq!(
        CacheMode::of_entry(leaf.entry, true),
        CacheMode::WriteThrough
    );
    assert_eq!(
        leaf.phys_of(va(BASE + 12345)).unwrap().as_u64(),
        GIB + 12345
    );
    // A zap of two pages in the middle of the first 2 MiB: 1 GiB -> 2 MiB
    // -> 4 KiB, every other page still where it was, PAT bits moved.
    space.zap_range(v, pg(BASE + 3 * PAGE_4K), 2).unwrap();
    let leaves: Vec<_> = space.user_leaves().collect();
    assert_eq!(leaves.iter().filter(|l| l.level == 2).count(), 511);
    assert_eq!(leaves.iter().filter(|l| l.level == 1).count(), 510);
    for l in &leaves {
        assert_eq!(l.phys().as_u64(), GIB + (l.va.as_u64() - BASE), "{l:?}");
        assert_eq!(
            CacheMode::of_entry(l.entry, l.level > 1),
            CacheMode::WriteThrough
        );
        assert!(l.is_special() && l.entry.bits() & pte::WRITABLE != 0);
    }
    assert!(space.translate(va(BASE + 3 * PAGE_4K)).is_none());
    assert!(space.translate(va(BASE + 4 * PAGE_4K)).is_none());
    // A zap that ends inside the last 2 MiB of the gigabyte.
    space
        .zap_range(v, pg(BASE + GIB - PAGE_2M), (PAGE_2M / PAGE_4K) - 1)
        .unwrap();
    assert_eq!(
        space
            .translate(va(BASE + GIB - PAGE_4K))
            .map(|l| (l.level, l.phys().as_u64())),
        Some((1, 2 * GIB - PAGE_4K))
    );
    drop(space);
    assert_eq!(table_frames(&db), 0);
}

#[test]
fn a_1gib_split_runs_out_of_frames_at_any_point_and_changes_nothing() {
    sweep_exhaustion(
        "zap splitting 1 GiB",
        64,
        |_, space| {
            space.set_1g_pages(true);
            let v = space.map_vma(pg(BASE), GIB / PAGE_4K, SHARED_RW).unwrap();
            // SAFETY: host tables are never loaded, and this test faults only
            // on frames it owns and keeps (or on none): nothing reads the others.
            unsafe {
                space.remap_pfn_range(
                    v,
                    pg(BASE),
                    fr(GIB >> 12),
                    GIB / PAGE_4K,
                    PageProt::READ_ONLY,
                )
            }
            .unwrap();
            v
        },
        |space, id, _| space.zap_range(id, pg(BASE + PAGE_4K), 2),
    );
}

#[test]
fn copy_on_write_and_fork_of_a_1gib_entry() {
    let frames = HugeFrames::aligned(GIB as usize, GIB as usize);
    let mem = Memory::new(64);
    let db = mem.db();
    let mut parent = new_space(&db);
    let mut child = new_space(&db);
    parent.set_1g_pages(true);
    let v = parent.map_vma(pg(BASE), GIB / PAGE_4K, COW).unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        parent.remap_pfn_range(
            v,
            pg(BASE),
            fr(frames.pfn()),
            GIB / PAGE_4K,
            PageProt::READ_WRITE,
        )
    }
    .unwrap();
    assert_eq!(parent.translate(va(BASE)).unwrap().level, 3);
    let at = BASE + 300 * PAGE_2M + 7 * PAGE_4K;
    page_bytes(frames.base as u64 + (at - BASE)).fill(0x3c);
    parent.fork_range(v, &mut child).unwrap();
    for space in [&parent, &child] {
        let leaf = space.translate(va(BASE)).unwrap();
        assert_eq!(
            (leaf.level, leaf.entry.bits() & pte::WRITABLE),
            (3, 0),
            "write-protected"
        );
    }
    assert_eq!(child.handle_write_fault(va(at + 5)), Ok(WriteFault::Copied));
    let leaf = child.translate(va(at)).unwrap();
    assert!(leaf.level == 1 && !leaf.is_special() && leaf.entry.bits() & pte::WRITABLE != 0);
    assert!(page_bytes(leaf.phys().as_u64()).iter().all(|&b| b == 0x3c));
    assert_eq!(
        child
            .translate(va(at + PAGE_4K))
            .map(|l| (l.level, l.is_special())),
        Some((1, true)),
        "its neighbours still map the frames"
    );
    assert_eq!(child.translate(va(BASE)).map(|l| l.level), Some(2));
    assert_eq!(
        parent.translate(va(at)).unwrap().level,
        3,
        "the parent keeps its entry"
    );
    drop((parent, child));
    assert_eq!(table_frames(&db), 0);
    assert_eq!(db.free_frames(), db.len());
}

#[test]
fn one_walker_builds_vt_d_second_level_tables_too() {
    use super::pte::{SL_OWNED, SL_READ, SL_SPECIAL, SL_WRITE, SecondLevel};
    type Domain<'a> =
        AddressSpace<&'a FrameDb<'a>, OffsetMapper, &'a FrameDb<'a>, Tlb, SecondLevel>;
    let mem = Memory::new(64);
    let db = mem.db();
    let mut domain = Domain::new_in(&db, mapper(), &db, Tlb::default(), false).unwrap();
    let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
    let v = domain.map_vma(pg(BASE), 2 * PAGE_2M / PAGE_4K, rw).unwrap();
    let pages: Vec<PageRef<'_>> = (0..3).map(|_| db.alloc_page().unwrap()).collect();
    domain.insert_pages(v, pg(BASE), &pages).unwrap();
    let io = domain
        .map_vma(pg(BASE + 2 * PAGE_2M), PAGE_2M / PAGE_4K, rw)
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        domain.remap_pfn_range(
            io,
            pg(BASE + 2 * PAGE_2M),
            fr(0x40_0000 >> 12),
            PAGE_2M / PAGE_4K,
            PageProt::READ_ONLY,
        )
    }
    .unwrap();
    // Leaves: R (and W where writable), no x86 present/user bits, the
    // special bit in software-available bit 53, never SNP (bit 11).
    let leaves: Vec<_> = domain.user_leaves().collect();
    assert_eq!(leaves.len(), 4);
    for (i, l) in leaves[..3].iter().enumerate() {
        assert_eq!(
            l.entry.bits(),
            pages[i].phys().as_u64() | SL_READ | SL_WRITE
        );
        assert!(!l.is_special());
    }
    let big = leaves[3];
    assert_eq!(big.level, 2);
    assert_eq!(
        big.entry.bits(),
        0x40_0000 | SL_READ | pte::HUGE | SL_SPECIAL
    );
    assert!(big.is_special());
    assert!(
        leaves
            .iter()
            .all(|l| l.entry.bits() & (1 << 11) == 0 && l.entry.bits() & pte::USER == 0)
    );
    // Links: R|W and the crate's ownership bit in software bit 52.
    let root = domain.root().start_address().as_u64();
    // SAFETY: a live table of the domain, in host memory.
    let link = unsafe { (root as *const u64).add(pte::index(BASE, 4)).read() };
    assert_eq!(
        link & (SL_READ | SL_WRITE | SL_OWNED),
        SL_READ | SL_WRITE | SL_OWNED
    );
    assert_eq!(counts(&db, pages[0].pfn()), (2, 1), "a mapped page is held");
    // Unmapping prunes the tables it emptied and gives the pages back.
    domain.zap_range(v, pg(BASE), 3).unwrap();
    domain
        .zap_range(io, pg(BASE + 2 * PAGE_2M), PAGE_2M / PAGE_4K)
        .unwrap();
    assert_eq!(domain.user_leaves().count(), 0);
    assert_eq!(table_frames(&db), 1, "only the root");
    assert_eq!(counts(&db, pages[0].pfn()), (1, 0));
}
