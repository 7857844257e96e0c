//! Zapping: huge entries split, tables freed, one flush whatever the size.

use super::*;

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
