//! Inserting pages and raw frames: `insert_page`, `insert_pages`, `insert_pfn` and the rules of the areas they go in.

use super::*;

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
