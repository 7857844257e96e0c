//! Areas: no overlap with each other or the kernel, and out of memory changing nothing.

use super::*;

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
