//! Host tests of the mapping rules: page tables in host memory (reached
//! with an offset of 0: "physical" addresses are host addresses), checked
//! entry by entry and count by count.

use std::collections::BTreeMap;

use proptest::prelude::*;

use x86_64::structures::paging::Page;

use super::MmError;
use super::frame::{FrameDb, FrameKind, PageRef};
use super::pte::PageProt;
use super::pte::{self, CacheMode, PAGE_2M, PAGE_4K};
use super::space::{AddressSpace, Inserted, PartialInsert, VmaId};
use super::testing::*;
use super::traits::{OffsetMapper, TableAllocator};
use super::vma::VmFlags;

#[test]
fn insert_page_rules() {
    let mem = Memory::new(64);
    let db = mem.db();
    let mut space = new_space(&db);
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + 16 * PAGE_4K), SHARED_RW)
        .unwrap();
    let page = db.alloc_page().unwrap();
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    assert!(
        Page::<x86_64::structures::paging::Size4KiB>::from_start_address(va(BASE + 1)).is_err(),
        "a misaligned page cannot even be named"
    );
    assert_eq!(
        space.insert_page(v, pg(BASE + 16 * PAGE_4K), &page),
        Err(MmError::OutOfRange)
    );
    assert_eq!(
        space.insert_page(v, pg(BASE - PAGE_4K), &page),
        Err(MmError::OutOfRange)
    );
    space.insert_page(v, pg(BASE + PAGE_4K), &page).unwrap();
    assert_eq!(
        counts(&db, page.pfn()),
        (2, 1),
        "a reference and a map count"
    );
    assert!(space.vma(v).unwrap().flags.contains(VmFlags::MIXEDMAP));
    let leaf = space.translate(va(BASE + PAGE_4K + 5)).unwrap();
    assert_eq!(leaf.phys().as_u64(), page.phys().as_u64());
    assert_eq!(
        leaf.entry.bits() & (pte::PRESENT | pte::USER | pte::WRITABLE | pte::NO_EXECUTE),
        pte::PRESENT | pte::USER | pte::WRITABLE | pte::NO_EXECUTE
    );
    assert!(!leaf.is_special());
    let other = db.alloc_page().unwrap();
    assert_eq!(
        space.insert_page(v, pg(BASE + PAGE_4K), &other),
        Err(MmError::Busy)
    );
    assert_eq!(
        counts(&db, other.pfn()),
        (1, 0),
        "a refused insert takes nothing"
    );
    // The same page may be mapped twice.
    space.insert_page(v, pg(BASE + 2 * PAGE_4K), &page).unwrap();
    assert_eq!(counts(&db, page.pfn()), (3, 2));
    assert_eq!(
        space
            .normal_page(v, va(BASE + 2 * PAGE_4K))
            .unwrap()
            .map(|p| p.pfn()),
        Some(page.pfn())
    );
    assert_eq!(
        space
            .normal_page(v, va(BASE + 3 * PAGE_4K))
            .unwrap()
            .map(|p| p.pfn()),
        None
    );
    // Frames that are not allocated pages are refused.
    let free_pfn = (0..64)
        .map(|i| (db.first_frame().start_address().as_u64() >> 12) + i)
        .find(|&p| db.state(fr(p)).unwrap().kind == FrameKind::Free)
        .unwrap();
    let root_pfn = space.root().start_address().as_u64() >> 12;
    for pfn in [free_pfn, root_pfn] {
        assert!(!db.insertable(fr(pfn)));
    }
    db.set_kind(fr(free_pfn), FrameKind::Reserved).unwrap();
    assert!(!db.insertable(fr(free_pfn)));
    // Private writable (copy-on-write) areas map pages read-only.
    let cow = space
        .map_vma(
            pg(BASE + PAGE_2M),
            npages(BASE + PAGE_2M, BASE + PAGE_2M + PAGE_4K),
            COW,
        )
        .unwrap();
    space.insert_page(cow, pg(BASE + PAGE_2M), &other).unwrap();
    assert_eq!(
        space.translate(va(BASE + PAGE_2M)).unwrap().entry.bits() & pte::WRITABLE,
        0
    );
    // A PFNMAP area refuses pages.
    let io = space
        .map_vma(
            pg(BASE + 2 * PAGE_2M),
            npages(BASE + 2 * PAGE_2M, BASE + 2 * PAGE_2M + PAGE_4K),
            SHARED_RW,
        )
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            io,
            pg(BASE + 2 * PAGE_2M),
            fr(0x1234),
            bytes_to_pages(PAGE_4K),
            PageProt::READ_WRITE,
        )
    }
    .unwrap();
    assert_eq!(
        space.insert_page(io, pg(BASE + 2 * PAGE_2M), &other),
        Err(MmError::WrongVmaKind)
    );
    drop(space);
    assert_eq!(
        counts(&db, page.pfn()),
        (1, 0),
        "tearing the space down gave everything back"
    );
    assert_eq!(counts(&db, other.pfn()), (1, 0));
    assert_eq!(table_frames(&db), 0, "every page table freed");
}

#[test]
fn insert_pages_reports_how_many_went_in() {
    let mem = Memory::new(128);
    let db = mem.db();
    let mut space = new_space(&db);
    // Across a page-table boundary: 4 pages before it, 6 after.
    let start = BASE + PAGE_2M - 4 * PAGE_4K;
    let v = space
        .map_vma(pg(start), npages(start, start + 16 * PAGE_4K), SHARED_RW)
        .unwrap();
    let pages: Vec<PageRef<'_>> = (0..10).map(|_| db.alloc_page().unwrap()).collect();
    let blocker = db.alloc_page().unwrap();
    space
        .insert_page(v, pg(start + 7 * PAGE_4K), &blocker)
        .unwrap();
    let written = space.entries_written();
    assert_eq!(
        space.insert_pages(v, pg(start), &pages),
        Err(PartialInsert {
            inserted: 7,
            error: MmError::Busy
        })
    );
    for (i, p) in pages.iter().enumerate() {
        let want = if i < 7 { (2, 1) } else { (1, 0) };
        assert_eq!(counts(&db, p.pfn()), want, "page {i}");
    }
    assert_eq!(
        space.entries_written() - written,
        7 + 1,
        "7 PTEs and one new PT link"
    );
    space
        .zap_range(v, pg(start), npages(start, start + 7 * PAGE_4K))
        .unwrap();
    assert!(pages.iter().all(|p| counts(&db, p.pfn()) == (1, 0)));
    // Out of range as a whole: nothing goes in.
    assert_eq!(
        space.insert_pages(v, pg(start + 8 * PAGE_4K), &pages),
        Err(PartialInsert {
            inserted: 0,
            error: MmError::OutOfRange
        })
    );
    assert!(
        space
            .leaves(va(start)..va(start + 16 * PAGE_4K))
            .all(|l| l.va.as_u64() == start + 7 * PAGE_4K)
    );
    // The good case: 10 pages, one walk per page table.
    space
        .zap_range(v, pg(start), npages(start, start + 16 * PAGE_4K))
        .unwrap();
    let before = space.entries_written();
    space.insert_pages(v, pg(start), &pages).unwrap();
    assert_eq!(
        space.entries_written() - before,
        10 + 2 + 2,
        "10 PTEs, 2 PTs linked, the PD and PDPT re-linked"
    );
    assert!(pages.iter().all(|p| counts(&db, p.pfn()) == (2, 1)));
}

#[test]
fn remap_pfn_range_uses_special_and_huge_entries() {
    let mem = Memory::new(64);
    let db = mem.db();
    let mut space = new_space(&db);
    let size = 2 * PAGE_2M + 3 * PAGE_4K;
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + size), SHARED_RW)
        .unwrap();
    let pfn = 0x8_0000; // 2 GiB: 2 MiB-aligned
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            v,
            pg(BASE),
            fr(pfn),
            bytes_to_pages(size),
            PageProt::READ_WRITE,
        )
    }
    .unwrap();
    let leaves: Vec<_> = space.leaves(va(BASE)..va(BASE + size)).collect();
    assert_eq!(leaves.iter().filter(|l| l.level == 2).count(), 2);
    assert_eq!(leaves.iter().filter(|l| l.level == 1).count(), 3);
    assert!(
        leaves
            .iter()
            .all(|l| l.is_special() && l.phys().as_u64() == (pfn << 12) + (l.va.as_u64() - BASE))
    );
    let flags = space.vma(v).unwrap().flags;
    assert!(
        flags.contains(VmFlags::PFNMAP | VmFlags::IO | VmFlags::DONTEXPAND | VmFlags::DONTDUMP)
    );
    assert_eq!(
        space.normal_page(v, va(BASE)).unwrap().map(|p| p.pfn()),
        None,
        "special: no page behind it"
    );
    // Physically misaligned: 4 KiB entries only.
    let w = space
        .map_vma(
            pg(BASE + 4 * PAGE_2M),
            npages(BASE + 4 * PAGE_2M, BASE + 6 * PAGE_2M),
            SHARED_RW,
        )
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            w,
            pg(BASE + 4 * PAGE_2M),
            fr(pfn + 1),
            bytes_to_pages(2 * PAGE_2M),
            PageProt::READ_ONLY,
        )
    }
    .unwrap();
    assert!(
        space
            .leaves(va(BASE + 4 * PAGE_2M)..va(BASE + 6 * PAGE_2M))
            .all(|l| l.level == 1)
    );
    assert_eq!(
        space
            .leaves(va(BASE + 4 * PAGE_2M)..va(BASE + 6 * PAGE_2M))
            .count(),
        1024
    );
    // Cache modes through the PAT bits, at both sizes.
    let x = space
        .map_vma(
            pg(BASE + 8 * PAGE_2M),
            npages(BASE + 8 * PAGE_2M, BASE + 9 * PAGE_2M + PAGE_4K),
            SHARED_RW,
        )
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.io_remap_pfn_range(
            x,
            pg(BASE + 8 * PAGE_2M),
            fr(pfn),
            bytes_to_pages(PAGE_2M + PAGE_4K),
            PageProt::READ_WRITE,
            CacheMode::WriteThrough,
        )
    }
    .unwrap();
    let huge = space.translate(va(BASE + 8 * PAGE_2M)).unwrap();
    let small = space.translate(va(BASE + 9 * PAGE_2M)).unwrap();
    assert_eq!(
        huge.entry.bits() & (pte::PAT_2M | pte::PCD | pte::PWT),
        pte::PAT_2M | pte::PCD | pte::PWT
    );
    assert_eq!(
        small.entry.bits() & (pte::PAT_4K | pte::PCD | pte::PWT),
        pte::PAT_4K | pte::PCD | pte::PWT
    );
    assert_eq!(
        CacheMode::of_entry(huge.entry, true),
        CacheMode::WriteThrough
    );
    assert_eq!(
        CacheMode::of_entry(small.entry, false),
        CacheMode::WriteThrough
    );
    // Remapping over something already there is Busy and leaves nothing.
    let y = space
        .map_vma(
            pg(BASE + 10 * PAGE_2M),
            npages(BASE + 10 * PAGE_2M, BASE + 10 * PAGE_2M + 8 * PAGE_4K),
            SHARED_RW,
        )
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            y,
            pg(BASE + 10 * PAGE_2M + 5 * PAGE_4K),
            fr(0x99),
            bytes_to_pages(PAGE_4K),
            PageProt::READ_ONLY,
        )
    }
    .unwrap();
    let before: Vec<_> = space
        .leaves(va(BASE + 10 * PAGE_2M)..va(BASE + 11 * PAGE_2M))
        .collect();
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe {
            space.remap_pfn_range(
                y,
                pg(BASE + 10 * PAGE_2M),
                fr(0x100),
                bytes_to_pages(8 * PAGE_4K),
                PageProt::READ_ONLY,
            )
        },
        Err(MmError::Busy)
    );
    let after: Vec<_> = space
        .leaves(va(BASE + 10 * PAGE_2M)..va(BASE + 11 * PAGE_2M))
        .collect();
    assert_eq!(before, after, "the partial remap was undone");
}

#[test]
fn copy_on_write_areas_are_remapped_whole() {
    let mem = Memory::new(32);
    let db = mem.db();
    let mut space = new_space(&db);
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + 4 * PAGE_4K), COW)
        .unwrap();
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe {
            space.remap_pfn_range(
                v,
                pg(BASE),
                fr(0x500),
                bytes_to_pages(2 * PAGE_4K),
                PageProt::READ_ONLY,
            )
        },
        Err(MmError::PartialCowRemap)
    );
    assert_eq!(space.vma(v).unwrap().flags, COW, "nothing changed");
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            v,
            pg(BASE),
            fr(0x500),
            bytes_to_pages(4 * PAGE_4K),
            PageProt::READ_ONLY,
        )
    }
    .unwrap();
    assert_eq!(space.vma(v).unwrap().pgoff, 0x500, "pgoff records the pfn");
    // A shared area may be remapped in part (the 2005 remapping work's "incomplete" VMAs).
    let s = space
        .map_vma(
            pg(BASE + PAGE_2M),
            npages(BASE + PAGE_2M, BASE + PAGE_2M + 4 * PAGE_4K),
            SHARED_RW,
        )
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            s,
            pg(BASE + PAGE_2M + PAGE_4K),
            fr(0x600),
            bytes_to_pages(PAGE_4K),
            PageProt::READ_ONLY,
        )
    }
    .unwrap();
    assert_eq!(space.vma(s).unwrap().pgoff, 0);
}

#[test]
fn insert_pfn_rules() {
    let mem = Memory::new(32);
    let db = mem.db();
    let mut space = new_space(&db);
    let plain = space
        .map_vma(pg(BASE), npages(BASE, BASE + 4 * PAGE_4K), SHARED_RW)
        .unwrap();
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe { space.insert_pfn(plain, pg(BASE), fr(0x77)) },
        Err(MmError::WrongVmaKind),
        "needs PFNMAP or MIXEDMAP"
    );
    let page = db.alloc_page().unwrap();
    space.insert_page(plain, pg(BASE), &page).unwrap();
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe { space.insert_pfn(plain, pg(BASE + PAGE_4K), fr(0x77)) },
        Ok(Inserted::New),
        "MIXEDMAP now"
    );
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe { space.insert_pfn(plain, pg(BASE), fr(0x88)) },
        Ok(Inserted::AlreadyMapped)
    );
    assert_eq!(
        space.translate(va(BASE)).unwrap().phys().as_u64(),
        page.phys().as_u64(),
        "the existing entry is left as it is"
    );
    let leaf = space.translate(va(BASE + PAGE_4K)).unwrap();
    assert!(leaf.is_special() && leaf.phys().as_u64() == 0x77 << 12);
    // A counted page's frame as a raw pfn would hold no reference: if the
    // driver then dropped its page, user space would map a freed frame.
    // Refused (Linux refuses a `pfn_valid` frame in a MIXEDMAP area).
    let tables = table_frames(&db);
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe { space.insert_pfn(plain, pg(BASE + 2 * PAGE_4K), fr(page.pfn())) },
        Err(MmError::CountedFrame)
    );
    let free = db.alloc_page().unwrap();
    let free_pfn = free.pfn();
    drop(free);
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe { space.insert_pfn(plain, pg(BASE + 2 * PAGE_4K), fr(free_pfn)) },
        Err(MmError::CountedFrame),
        "a free frame of the database too"
    );
    assert_eq!(counts(&db, page.pfn()), (2, 1));
    assert!(space.translate(va(BASE + 2 * PAGE_4K)).is_none());
    assert_eq!(table_frames(&db), tables);
    let cow = space
        .map_vma(
            pg(BASE + PAGE_2M),
            npages(BASE + PAGE_2M, BASE + PAGE_2M + PAGE_4K),
            COW,
        )
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            cow,
            pg(BASE + PAGE_2M),
            fr(0x10),
            bytes_to_pages(PAGE_4K),
            PageProt::READ_ONLY,
        )
    }
    .unwrap();
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe { space.insert_pfn(cow, pg(BASE + PAGE_2M), fr(0x11)) },
        Err(MmError::WrongVmaKind),
        "PFNMAP and copy-on-write"
    );
}

#[test]
fn zap_splits_huge_entries_and_frees_tables() {
    let mem = Memory::new(64);
    let db = mem.db();
    let mut space = new_space(&db);
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + 2 * PAGE_2M), SHARED_RW)
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.remap_pfn_range(
            v,
            pg(BASE),
            fr(0x4_0000),
            bytes_to_pages(2 * PAGE_2M),
            PageProt::READ_WRITE.with_cache(CacheMode::WriteThrough),
        )
    }
    .unwrap();
    let tables = table_frames(&db);
    // SAFETY: the test's recorder, reset; it stays this space's.
    unsafe { space.tlb_mut() }.pages.clear();
    space
        .zap_range(
            v,
            pg(BASE + 3 * PAGE_4K),
            npages(BASE + 3 * PAGE_4K, BASE + 5 * PAGE_4K),
        )
        .unwrap();
    assert_eq!(
        table_frames(&db),
        tables + 1,
        "one 2 MiB entry split into a page table"
    );
    let leaves: Vec<_> = space.leaves(va(BASE)..va(BASE + PAGE_2M)).collect();
    assert_eq!(leaves.len(), 510);
    assert!(leaves.iter().all(|l| l.level == 1
        && l.is_special()
        && l.phys().as_u64() == (0x4_0000 << 12) + (l.va.as_u64() - BASE)));
    assert!(
        leaves
            .iter()
            .all(|l| CacheMode::of_entry(l.entry, false) == CacheMode::WriteThrough),
        "PAT bit moved from 12 to 7"
    );
    assert!(
        space.translate(va(BASE + 3 * PAGE_4K)).is_none()
            && space.translate(va(BASE + 4 * PAGE_4K)).is_none()
    );
    assert!(space.tlb().pages.contains(&(BASE + 3 * PAGE_4K)));
    space
        .zap_range(v, pg(BASE), npages(BASE, BASE + 2 * PAGE_2M))
        .unwrap();
    assert_eq!(table_frames(&db), 1, "only the root is left");
    assert!(
        space.tlb().full > 0,
        "1024 pages: one full flush, not 1024 invlpg"
    );
}

#[test]
fn fork_copies_entries_and_counts_only_pages() {
    let mem = Memory::new(64);
    let db = mem.db();
    let mut parent = new_space(&db);
    let mut child = new_space(&db);
    let mixed = parent
        .map_vma(pg(BASE), npages(BASE, BASE + 4 * PAGE_4K), COW)
        .unwrap();
    let page = db.alloc_page().unwrap();
    parent.insert_page(mixed, pg(BASE), &page).unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe { parent.insert_pfn(mixed, pg(BASE + PAGE_4K), fr(0x42)) }.unwrap();
    let io = parent
        .map_vma(
            pg(BASE + PAGE_2M),
            npages(BASE + PAGE_2M, BASE + 2 * PAGE_2M),
            SHARED_RW,
        )
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        parent.remap_pfn_range(
            io,
            pg(BASE + PAGE_2M),
            fr(0x20_0000 >> 12),
            bytes_to_pages(PAGE_2M),
            PageProt::READ_WRITE,
        )
    }
    .unwrap();
    let shared = parent
        .map_vma(
            pg(BASE + 4 * PAGE_2M),
            npages(BASE + 4 * PAGE_2M, BASE + 4 * PAGE_2M + PAGE_4K),
            SHARED_RW,
        )
        .unwrap();
    let writable = db.alloc_page().unwrap();
    parent
        .insert_page(shared, pg(BASE + 4 * PAGE_2M), &writable)
        .unwrap();
    for id in [mixed, io, shared] {
        parent.fork_range(id, &mut child).unwrap();
    }
    let p: Vec<_> = parent
        .leaves(va(0)..va(1 << 40))
        .map(|l| (l.va.as_u64(), l.entry))
        .collect();
    let c: Vec<_> = child
        .leaves(va(0)..va(1 << 40))
        .map(|l| (l.va.as_u64(), l.entry))
        .collect();
    assert_eq!(p, c, "identical entries");
    assert_eq!(
        counts(&db, page.pfn()),
        (3, 2),
        "the page: one more reference and map count"
    );
    assert_eq!(counts(&db, writable.pfn()), (3, 2));
    assert!(
        child
            .translate(va(BASE + PAGE_2M))
            .is_some_and(|l| l.level == 2 && l.is_special())
    );
    assert!(
        parent
            .translate(va(BASE + 4 * PAGE_2M))
            .is_some_and(|l| l.entry.bits() & pte::WRITABLE != 0),
        "shared stays writable"
    );
    drop(child);
    assert_eq!(counts(&db, page.pfn()), (2, 1));
}

#[test]
fn out_of_memory_changes_nothing() {
    // Root + exactly two more frames: not enough for PDPT + PD + PT.
    let mem = Memory::new(4);
    let db = mem.db();
    let mut space = new_space(&db);
    let page = db.alloc_page().unwrap();
    let v = space
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_4K), SHARED_RW)
        .unwrap();
    assert_eq!(db.free_frames(), 2);
    assert_eq!(
        space.insert_page(v, pg(BASE), &page),
        Err(MmError::OutOfMemory)
    );
    assert_eq!(
        db.free_frames(),
        2,
        "the tables it managed to allocate were freed"
    );
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    assert!(!space.vma(v).unwrap().flags.contains(VmFlags::MIXEDMAP));
    assert_eq!(
        // SAFETY: host tables are never loaded, and this test faults only
        // on frames it owns and keeps (or on none): nothing reads the others.
        unsafe {
            space.remap_pfn_range(
                v,
                pg(BASE),
                fr(5),
                bytes_to_pages(PAGE_4K),
                PageProt::READ_ONLY,
            )
        },
        Err(MmError::OutOfMemory)
    );
    assert_eq!(space.vma(v).unwrap().flags, SHARED_RW);
    assert_eq!(db.free_frames(), 2);
}

#[test]
fn areas_may_not_overlap_each_other_or_the_kernel() {
    let mem = Memory::new(8);
    let db = mem.db();
    let kernel = new_space(&db);
    let mut space = new_space(&db);
    // SAFETY: `kernel` outlives `space` in this test.
    unsafe { space.share_kernel_slots(kernel.root(), [0, 256]) }.unwrap();
    assert_eq!(
        space.map_vma(pg(0x1000), npages(0x1000, 0x2000), SHARED_RW),
        Err(MmError::Overlap),
        "slot 0 is the kernel's"
    );
    let v = space
        .map_vma(pg(1 << 39), npages(1 << 39, (1 << 39) + 0x4000), SHARED_RW)
        .unwrap();
    assert_eq!(
        space.map_vma(
            pg((1 << 39) + 0x3000),
            npages((1 << 39) + 0x3000, (1 << 39) + 0x5000),
            SHARED_RW
        ),
        Err(MmError::Overlap)
    );
    assert_eq!(
        space.map_vma(pg(0x1000), 0, SHARED_RW),
        Err(MmError::Misaligned),
        "no pages"
    );
    assert_eq!(
        space.map_vma(pg(USER - 0x1000), 2, SHARED_RW),
        Err(MmError::OutOfRange),
        "past the user half"
    );
    assert_eq!(
        space.map_vma(pg(0xffff_8000_0000_0000), 1, SHARED_RW),
        Err(MmError::OutOfRange),
        "the kernel half"
    );
    assert_eq!(
        space.map_vma(pg(1 << 40), u64::MAX, SHARED_RW),
        Err(MmError::OutOfRange),
        "a page count whose byte size wraps"
    );
    assert!(space.vma(v).is_ok());
    drop(space);
    drop(kernel);
}
const USER: u64 = super::space::USER_END;

// ---- the model ----

/// What the model says is at a 4 KiB page: a physical frame and whether it
/// is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapped {
    pfn: u64,
    counted: bool,
}

#[derive(Clone, Debug)]
enum Op {
    InsertPage {
        area: usize,
        page: usize,
        frame: usize,
    },
    InsertPages {
        area: usize,
        page: usize,
        frames: Vec<usize>,
    },
    Remap {
        area: usize,
        page: usize,
        pages: usize,
        pfn: u64,
    },
    InsertPfn {
        area: usize,
        page: usize,
        pfn: u64,
    },
    Zap {
        area: usize,
        page: usize,
        pages: usize,
    },
}

/// Areas: (start, pages, flags). The second starts 2 MiB-aligned and spans
/// two page tables, so huge entries and splits happen.
const AREAS: [(u64, u64, VmFlags); 3] = [
    (BASE - 4 * PAGE_4K, 12, SHARED_RW),
    (BASE + PAGE_2M, 1024, SHARED_RW),
    (BASE + 4 * PAGE_2M, 6, COW),
];

fn op() -> impl Strategy<Value = Op> {
    let area = 0..AREAS.len();
    prop_oneof![
        (area.clone(), 0..1030usize, 0..6usize).prop_map(|(area, page, frame)| Op::InsertPage {
            area,
            page,
            frame
        }),
        (
            area.clone(),
            0..1030usize,
            prop::collection::vec(0..6usize, 0..20)
        )
            .prop_map(|(area, page, frames)| Op::InsertPages { area, page, frames }),
        (
            area.clone(),
            0..1030usize,
            1..1100usize,
            prop_oneof![Just(0x10_0000u64), Just(0x10_0200), 0x1000..0x2000u64]
        )
            .prop_map(|(area, page, pages, pfn)| Op::Remap {
                area,
                page,
                pages,
                pfn
            }),
        (area.clone(), 0..1030usize, 0x3000..0x3010u64)
            .prop_map(|(area, page, pfn)| Op::InsertPfn { area, page, pfn }),
        (area, 0..1030usize, 1..1100usize).prop_map(|(area, page, pages)| Op::Zap {
            area,
            page,
            pages
        }),
    ]
}

struct Model {
    pages: BTreeMap<u64, Mapped>,
    flags: [VmFlags; 3],
}

impl Model {
    fn busy(&self, start: u64, pages: usize) -> bool {
        (0..pages as u64).any(|i| self.pages.contains_key(&(start + i * PAGE_4K)))
    }
}

/// What the model test runs in: a space of its own (its root and every
/// table from the frame database), or a kernel's hierarchy with the
/// kernel's own mappings in it and table frames from the kernel's allocator.
struct World<'w> {
    /// The kernel's leaves the crate must never touch: (address, entry).
    kernel: &'w [(u64, u64)],
    /// Table frames the space's allocator has out.
    tables_out: &'w dyn Fn() -> usize,
    /// Whether the root is the space's own (one more frame out).
    owns_root: bool,
}

/// Counts the tables linked as the crate's (`OWNED`) under `table`, and
/// fails if one of them is empty.
fn owned_tables(table: u64, level: u32) -> Result<usize, TestCaseError> {
    let mut owned = 0;
    for i in 0..512 {
        // SAFETY: a live page table in host memory.
        let entry = unsafe { (table as *const u64).add(i).read_volatile() };
        if level == 1 || entry & pte::PRESENT == 0 || entry & pte::HUGE != 0 {
            continue;
        }
        let child = entry & pte::ADDR_4K;
        if entry & pte::OWNED != 0 {
            owned += 1;
            // SAFETY: as above.
            let empty =
                (0..512).all(|j| unsafe { (child as *const u64).add(j).read_volatile() } == 0);
            prop_assert!(!empty, "an empty table of the crate's survived");
        }
        owned += owned_tables(child, level - 1)?;
    }
    Ok(owned)
}

fn check<A: TableAllocator>(
    space: &ModelSpace<'_, A>,
    db: &FrameDb<'_>,
    model: &Model,
    pool: &[PageRef<'_>],
    bad: &[u64],
    ids: &[VmaId],
    world: &World<'_>,
) -> Result<(), TestCaseError> {
    // The tables, page by page, agree with the model.
    let mut seen = BTreeMap::new();
    let kernel: std::collections::BTreeSet<u64> = world.kernel.iter().map(|k| k.0).collect();
    for leaf in space
        .user_leaves()
        .filter(|l| !kernel.contains(&l.va.as_u64()))
    {
        for i in 0..leaf.size() / PAGE_4K {
            let va = leaf.va.as_u64() + i * PAGE_4K;
            seen.insert(
                va,
                Mapped {
                    pfn: (leaf.phys().as_u64() >> 12) + i,
                    counted: !leaf.is_special(),
                },
            );
        }
    }
    prop_assert_eq!(&seen, &model.pages);
    // Counts: our own reference, plus one reference and one map count per
    // counted mapping.
    for page in pool {
        let maps = model
            .pages
            .values()
            .filter(|m| m.counted && m.pfn == page.pfn())
            .count() as u32;
        prop_assert_eq!(
            counts(db, page.pfn()),
            (1 + maps, maps),
            "frame {:#x}",
            page.pfn()
        );
    }
    for &pfn in bad {
        let state = db.state(fr(pfn)).unwrap();
        prop_assert_eq!(state.mapcount, 0);
    }
    // No empty table of the crate's survives, and none leaked.
    let owned = owned_tables(space.root().start_address().as_u64(), 4)?;
    prop_assert_eq!(
        (world.tables_out)(),
        owned + usize::from(world.owns_root),
        "page-table frames out"
    );
    // The kernel's own mappings are exactly as they were.
    for &(addr, entry) in world.kernel {
        prop_assert_eq!(
            space.translate(va(addr)).map(|l| l.entry.bits()),
            Some(entry),
            "kernel page {:#x}",
            addr
        );
    }
    for (i, area) in AREAS.iter().enumerate() {
        prop_assert_eq!(
            space.vma(ids[i]).unwrap().flags,
            model.flags[i],
            "flags of area {}",
            i
        );
        let _ = area;
    }
    Ok(())
}

/// Runs `ops` on `space` and the model side by side, checking everything
/// after every step.
///
/// Frames 0-3 are `pool`, pages the test holds; 4 and 5 are `bad`, frames
/// of the database that are not pages (a reserved frame, a table or kernel
/// frame).
fn run_model<'a, A: TableAllocator>(
    db: &'a FrameDb<'a>,
    space: &mut ModelSpace<'a, A>,
    ops: Vec<Op>,
    world: &World<'_>,
    pool: &[PageRef<'a>],
    bad: [u64; 2],
) -> Result<(), TestCaseError> {
    let ids: Vec<VmaId> = AREAS
        .iter()
        .map(|&(s, n, f)| space.map_vma(pg(s), npages(s, s + n * PAGE_4K), f).unwrap())
        .collect();
    let frame_pfn = |f: usize| if f < 4 { pool[f].pfn() } else { bad[f - 4] };
    let mut model = Model {
        pages: BTreeMap::new(),
        flags: AREAS.map(|a| a.2),
    };
    for op in ops {
        let before = model.pages.clone();
        let flushes = (space.tlb().pages.len(), space.tlb().full);
        match op {
            Op::InsertPage { area, page, frame } => {
                let (start, n, _) = AREAS[area];
                let va = start + page as u64 * PAGE_4K;
                let pfn = frame_pfn(frame);
                if frame >= 4 {
                    // No reference to a frame that is not an allocated
                    // page can even be made; the database refuses it.
                    prop_assert!(!db.insertable(fr(pfn)));
                    prop_assert!(db.get(fr(pfn)).is_none());
                    check(space, db, &model, pool, &bad, &ids, world)?;
                    continue;
                }
                let result = space.insert_page(ids[area], pg(va), &pool[frame]);
                let expected = if model.flags[area].contains(VmFlags::PFNMAP) {
                    Err(MmError::WrongVmaKind)
                } else if page as u64 >= n {
                    Err(MmError::OutOfRange)
                } else if model.busy(va, 1) {
                    Err(MmError::Busy)
                } else {
                    Ok(())
                };
                prop_assert_eq!(result, expected);
                if result.is_ok() {
                    model.pages.insert(va, Mapped { pfn, counted: true });
                    model.flags[area] |= VmFlags::MIXEDMAP;
                }
            }
            Op::InsertPages { area, page, frames } => {
                let (start, n, _) = AREAS[area];
                let va = start + page as u64 * PAGE_4K;
                let refs: Vec<PageRef<'_>> = frames
                    .iter()
                    .filter(|&&f| f < 4)
                    .map(|&f| pool[f].clone())
                    .collect();
                let result = space.insert_pages(ids[area], pg(va), &refs);
                let expected = if model.flags[area].contains(VmFlags::PFNMAP) {
                    Err(PartialInsert {
                        inserted: 0,
                        error: MmError::WrongVmaKind,
                    })
                } else if refs.is_empty() {
                    Ok(())
                } else if page as u64 + refs.len() as u64 > n {
                    Err(PartialInsert {
                        inserted: 0,
                        error: MmError::OutOfRange,
                    })
                } else {
                    match (0..refs.len()).find(|&i| model.busy(va + i as u64 * PAGE_4K, 1)) {
                        Some(i) => Err(PartialInsert {
                            inserted: i,
                            error: MmError::Busy,
                        }),
                        None => Ok(()),
                    }
                };
                prop_assert_eq!(result, expected);
                let inserted = match result {
                    Ok(()) => refs.len(),
                    Err(p) => p.inserted,
                };
                for (i, r) in refs.iter().enumerate().take(inserted) {
                    model.pages.insert(
                        va + i as u64 * PAGE_4K,
                        Mapped {
                            pfn: r.pfn(),
                            counted: true,
                        },
                    );
                }
                if inserted > 0 {
                    model.flags[area] |= VmFlags::MIXEDMAP;
                }
            }
            Op::Remap {
                area,
                page,
                pages,
                pfn,
            } => {
                let (start, n, flags) = AREAS[area];
                let va = start + page as u64 * PAGE_4K;
                // SAFETY: host tables are never loaded, and this test faults only
                // on frames it owns and keeps (or on none): nothing reads the others.
                let result = unsafe {
                    space.remap_pfn_range(
                        ids[area],
                        pg(va),
                        fr(pfn),
                        bytes_to_pages(pages as u64 * PAGE_4K),
                        PageProt::READ_WRITE,
                    )
                };
                let expected = if model.flags[area].contains(VmFlags::MIXEDMAP) {
                    Err(MmError::WrongVmaKind)
                } else if (page + pages) as u64 > n {
                    Err(MmError::OutOfRange)
                } else if flags.is_cow() && (page != 0 || pages as u64 != n) {
                    Err(MmError::PartialCowRemap)
                } else if model.busy(va, pages) {
                    Err(MmError::Busy)
                } else {
                    Ok(())
                };
                if result == Err(MmError::OutOfMemory) {
                    prop_assert!(
                        expected.is_ok(),
                        "out of memory only where it would have worked"
                    );
                } else {
                    prop_assert_eq!(result, expected);
                }
                if result.is_ok() {
                    for i in 0..pages as u64 {
                        model.pages.insert(
                            va + i * PAGE_4K,
                            Mapped {
                                pfn: pfn + i,
                                counted: false,
                            },
                        );
                    }
                    model.flags[area] |=
                        VmFlags::PFNMAP | VmFlags::IO | VmFlags::DONTEXPAND | VmFlags::DONTDUMP;
                }
            }
            Op::InsertPfn { area, page, pfn } => {
                let (start, n, flags) = AREAS[area];
                let va = start + page as u64 * PAGE_4K;
                // SAFETY: host tables are never loaded, and this test faults only
                // on frames it owns and keeps (or on none): nothing reads the others.
                let result = unsafe { space.insert_pfn(ids[area], pg(va), fr(pfn)) };
                let f = model.flags[area];
                let expected = if f.contains(VmFlags::PFNMAP) == f.contains(VmFlags::MIXEDMAP)
                    || (f.contains(VmFlags::PFNMAP) && flags.is_cow())
                {
                    Err(MmError::WrongVmaKind)
                } else if page as u64 >= n {
                    Err(MmError::OutOfRange)
                } else if model.busy(va, 1) {
                    Ok(Inserted::AlreadyMapped)
                } else {
                    Ok(Inserted::New)
                };
                if result == Err(MmError::OutOfMemory) {
                    prop_assert_eq!(expected, Ok(Inserted::New));
                } else {
                    prop_assert_eq!(result, expected);
                }
                if result == Ok(Inserted::New) {
                    model.pages.insert(
                        va,
                        Mapped {
                            pfn,
                            counted: false,
                        },
                    );
                }
            }
            Op::Zap { area, page, pages } => {
                let (start, n, _) = AREAS[area];
                let va = start + page as u64 * PAGE_4K;
                let result =
                    space.zap_range(ids[area], pg(va), npages(va, va + pages as u64 * PAGE_4K));
                let expected = if (page + pages) as u64 > n {
                    Err(MmError::OutOfRange)
                } else {
                    Ok(())
                };
                if result == Err(MmError::OutOfMemory) {
                    prop_assert!(expected.is_ok());
                } else {
                    prop_assert_eq!(result, expected);
                }
                if result.is_ok() {
                    let removed: Vec<u64> = model
                        .pages
                        .range(va..va + pages as u64 * PAGE_4K)
                        .map(|(&k, _)| k)
                        .collect();
                    for k in &removed {
                        model.pages.remove(k);
                    }
                    // Every page whose entry went away was flushed.
                    let tlb = space.tlb();
                    let full = tlb.full > flushes.1;
                    for k in removed {
                        let flushed = tlb.pages[flushes.0..].iter().any(|&p| {
                            p >> 12 == k >> 12 || (p >> 21 == k >> 21 && p & (PAGE_2M - 1) == 0)
                        });
                        prop_assert!(full || flushed, "{:#x} unmapped without a flush", k);
                    }
                }
            }
        }
        let _ = before;
        check(space, db, &model, pool, &bad, &ids, world)?;
    }
    Ok(())
}

type ModelSpace<'a, A> = AddressSpace<&'a FrameDb<'a>, OffsetMapper, A, Tlb>;

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { ProptestConfig::default().cases } else { 96 }, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_agree_with_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let mem = Memory::new(160);
        let db = mem.db();
        let mut space = new_space(&db);
        let pool: Vec<PageRef<'_>> = (0..4).map(|_| db.alloc_page().unwrap()).collect();
        let reserved = pool[3].pfn() + 1;
        db.set_kind(fr(reserved), FrameKind::Reserved).unwrap();
        let bad = [reserved, space.root().start_address().as_u64() >> 12];
        let tables_out = || table_frames(&db);
        let world = World { kernel: &[], tables_out: &tables_out, owns_root: true };
        run_model(&db, &mut space, ops, &world, &pool, bad)?;
        drop(space);
        prop_assert_eq!(table_frames(&db), 0);
        for page in &pool {
            prop_assert_eq!(counts(&db, page.pfn()), (1, 0));
        }
    }
}

#[test]
fn write_faults_copy_on_write() {
    use super::space::WriteFault;
    let mem = Memory::new(64);
    let db = mem.db();
    let mut space = new_space(&db);
    let cow = space
        .map_vma(pg(BASE), npages(BASE, BASE + 4 * PAGE_4K), COW)
        .unwrap();
    let page = db.alloc_page().unwrap();
    page_bytes(page.phys().as_u64()).fill(0x11);
    space.insert_page(cow, pg(BASE), &page).unwrap();
    // The driver still holds the page: the write gets a private copy.
    assert_eq!(
        space.handle_write_fault(va(BASE + 5)),
        Ok(WriteFault::Copied)
    );
    let leaf = space.translate(va(BASE)).unwrap();
    assert_ne!(leaf.phys().as_u64(), page.phys().as_u64());
    assert!(leaf.entry.bits() & pte::WRITABLE != 0 && !leaf.is_special());
    assert_eq!(
        page_bytes(leaf.phys().as_u64())[100],
        0x11,
        "the copy has the contents"
    );
    page_bytes(leaf.phys().as_u64())[100] = 0x22;
    assert_eq!(
        page_bytes(page.phys().as_u64())[100],
        0x11,
        "the original is untouched"
    );
    assert_eq!(
        counts(&db, page.pfn()),
        (1, 0),
        "the original lost the mapping"
    );
    assert_eq!(
        counts(&db, leaf.phys().as_u64() >> 12),
        (1, 1),
        "the copy is held by the mapping alone"
    );
    assert!(space.tlb().pages.contains(&BASE));
    assert_eq!(space.handle_write_fault(va(BASE)), Ok(WriteFault::Spurious));
    // A page only the mapping holds is made writable in place.
    let own = db.alloc_page().unwrap();
    space.insert_page(cow, pg(BASE + PAGE_4K), &own).unwrap();
    let own_pfn = own.pfn();
    drop(own);
    assert_eq!(
        space.handle_write_fault(va(BASE + PAGE_4K)),
        Ok(WriteFault::Reused)
    );
    assert_eq!(
        space.translate(va(BASE + PAGE_4K)).unwrap().phys().as_u64() >> 12,
        own_pfn
    );
    // Errors change nothing.
    assert_eq!(
        space.handle_write_fault(va(BASE + 2 * PAGE_4K)),
        Err(MmError::NotMapped)
    );
    assert_eq!(
        space.handle_write_fault(va(BASE + 64 * PAGE_4K)),
        Err(MmError::OutOfRange)
    );
    let ro = space
        .map_vma(
            pg(BASE + PAGE_2M),
            npages(BASE + PAGE_2M, BASE + PAGE_2M + PAGE_4K),
            VmFlags::READ,
        )
        .unwrap();
    space.insert_page(ro, pg(BASE + PAGE_2M), &page).unwrap();
    let before = space.translate(va(BASE + PAGE_2M));
    assert_eq!(
        space.handle_write_fault(va(BASE + PAGE_2M)),
        Err(MmError::Protection)
    );
    assert_eq!(space.translate(va(BASE + PAGE_2M)), before);
    drop(space);
    assert_eq!(table_frames(&db), 0);
    assert_eq!(counts(&db, page.pfn()), (1, 0));
    assert_eq!(
        db.free_frames(),
        64 - 1,
        "only the test's page is still allocated"
    );
}

#[test]
fn write_faults_copy_remapped_frames_and_forked_pages() {
    use super::space::WriteFault;
    let mem = Memory::new(64);
    let db = mem.db();
    // A copy-on-write PFNMAP area over a frame we own (so it can be read).
    let frame = db.alloc_page().unwrap();
    page_bytes(frame.phys().as_u64()).fill(0x33);
    let mut space = new_space(&db);
    let io = space
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_4K), COW)
        .unwrap();
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe {
        space.io_remap_pfn_range(
            io,
            pg(BASE),
            fr(frame.pfn()),
            bytes_to_pages(PAGE_4K),
            PageProt::READ_ONLY,
            CacheMode::Uncached,
        )
    }
    .unwrap();
    assert_eq!(space.handle_write_fault(va(BASE)), Ok(WriteFault::Copied));
    let leaf = space.translate(va(BASE)).unwrap();
    assert!(!leaf.is_special(), "the copy is a counted page");
    assert_eq!(CacheMode::of_entry(leaf.entry, false), CacheMode::WriteBack);
    assert_eq!(page_bytes(leaf.phys().as_u64())[7], 0x33);
    assert_eq!(
        space.normal_page(io, va(BASE)).unwrap().map(|p| p.pfn()),
        Some(leaf.phys().as_u64() >> 12)
    );
    assert_eq!(
        counts(&db, frame.pfn()),
        (1, 0),
        "a raw frame is never counted"
    );
    // fork: both sides read-only; a write on either side gets its own copy.
    let mut parent = new_space(&db);
    let mut child = new_space(&db);
    let v = parent
        .map_vma(pg(BASE), npages(BASE, BASE + PAGE_4K), COW)
        .unwrap();
    let shared = db.alloc_page().unwrap();
    parent.insert_page(v, pg(BASE), &shared).unwrap();
    parent.handle_write_fault(va(BASE)).unwrap();
    let parent_page = parent.translate(va(BASE)).unwrap().phys().as_u64();
    page_bytes(parent_page)[0] = 0x44;
    parent.fork_range(v, &mut child).unwrap();
    assert_eq!(
        parent.translate(va(BASE)).unwrap().entry.bits() & pte::WRITABLE,
        0,
        "write-protected by fork"
    );
    assert_eq!(child.handle_write_fault(va(BASE)), Ok(WriteFault::Copied));
    let child_page = child.translate(va(BASE)).unwrap().phys().as_u64();
    assert_ne!(child_page, parent_page);
    assert_eq!(page_bytes(child_page)[0], 0x44);
    assert_eq!(
        parent.handle_write_fault(va(BASE)),
        Ok(WriteFault::Reused),
        "the parent is the page's only holder again"
    );
    drop((space, parent, child));
    assert_eq!(table_frames(&db), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { ProptestConfig::default().cases } else { 64 }, ..ProptestConfig::default() })]

    /// The same model run inside a kernel's hierarchy: the kernel built it
    /// with `x86_64`'s `OffsetPageTable` and keeps its own mappings there;
    /// table frames come from the kernel's allocator. After every step the
    /// kernel's entries are as they were, and no table the kernel made is
    /// ever freed.
    #[test]
    fn random_operations_in_a_kernels_own_hierarchy(ops in prop::collection::vec(op(), 1..40)) {
        let mem = Memory::new(160);
        let db = mem.db();
        let mut kernel_alloc = FakeAlloc::new(32);
        let (root, kernel) = kernel_hierarchy(&mut kernel_alloc);
        let kernel_tables = kernel_alloc.out_counter().get();
        let alloc = FakeAlloc::new(64);
        let out = alloc.out_counter();
        // SAFETY: the kernel's hierarchy lives (in `kernel_alloc`) until the
        // end of the test, after the space; the kernel changes nothing.
        let mut space = unsafe { AddressSpace::from_root(root, &db, mapper(), alloc, Tlb::default(), true) };
        // Nothing may be created over the kernel's pages.
        prop_assert_eq!(space.map_vma(pg(BASE - 8 * PAGE_4K), 1, SHARED_RW), Err(MmError::Overlap));
        prop_assert_eq!(space.map_vma(pg(BASE + 12 * PAGE_2M + PAGE_4K), 1, SHARED_RW), Err(MmError::Overlap));
        let pool: Vec<PageRef<'_>> = (0..4).map(|_| db.alloc_page().unwrap()).collect();
        let reserved = pool[3].pfn() + 1;
        db.set_kind(fr(reserved), FrameKind::Reserved).unwrap();
        db.set_kind(fr(reserved + 1), FrameKind::Kernel).unwrap();
        let tables_out = || out.get();
        let world = World { kernel: &kernel, tables_out: &tables_out, owns_root: false };
        run_model(&db, &mut space, ops, &world, &pool, [reserved, reserved + 1])?;
        drop(space);
        prop_assert_eq!(out.get(), 0, "every table of the crate's came back");
        prop_assert_eq!(kernel_alloc.out_counter().get(), kernel_tables);
        for &(addr, entry) in &kernel {
            prop_assert_eq!(kernel_leaf(root, addr), entry);
        }
        for page in &pool {
            prop_assert_eq!(counts(&db, page.pfn()), (1, 0));
        }
    }
}

/// A zap flushes once, however many frames it gives back (the old code
/// flushed once per 64), and gives every count back after that flush: the
/// retired leaves keep the frames' addresses until then.
#[test]
fn a_zap_of_any_size_flushes_once() {
    let mem = Memory::new(64);
    let db = mem.db();
    let mut space = new_space(&db);
    let pages = 1000u64;
    let v = space.map_vma(pg(BASE), pages, SHARED_RW).unwrap();
    let tables_before = table_frames(&db);
    let page = db.alloc_page().unwrap();
    for i in 0..pages {
        space.insert_page(v, pg(BASE + i * PAGE_4K), &page).unwrap();
    }
    assert_eq!(counts(&db, page.pfn()), (1 + pages as u32, pages as u32));
    // SAFETY: the test's recorder, reset; it stays this space's.
    *unsafe { space.tlb_mut() } = Tlb::default();
    space.zap_range(v, pg(BASE), pages).unwrap();
    let tlb = space.tlb();
    assert_eq!((tlb.full, tlb.pages.len()), (1, 0), "one full flush");
    assert_eq!(counts(&db, page.pfn()), (1, 0), "every count back");
    assert_eq!(table_frames(&db), tables_before, "every table back");
    assert_eq!(
        space.leaves(va(BASE)..va(BASE + pages * PAGE_4K)).count(),
        0
    );

    // A few pages: one range flush, a page at a time, covering the span.
    for i in [0, 2, 4] {
        space.insert_page(v, pg(BASE + i * PAGE_4K), &page).unwrap();
    }
    // SAFETY: the test's recorder, reset; it stays this space's.
    *unsafe { space.tlb_mut() } = Tlb::default();
    space.zap_range(v, pg(BASE), 5).unwrap();
    let tlb = space.tlb();
    assert_eq!(tlb.full, 0);
    assert_eq!(
        tlb.pages,
        (0..5).map(|i| BASE + i * PAGE_4K).collect::<Vec<_>>()
    );
    assert_eq!(counts(&db, page.pfn()), (1, 0));
}
