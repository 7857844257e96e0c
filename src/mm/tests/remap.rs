//! `remap_pfn_range`: special and huge entries, copy-on-write areas remapped whole.

use super::*;

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
