//! Fork and the write fault: entries copied, only pages counted, copy-on-write.

use super::*;

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
fn write_faults_copy_on_write() {
    use crate::mm::space::WriteFault;
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
    use crate::mm::space::WriteFault;
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
