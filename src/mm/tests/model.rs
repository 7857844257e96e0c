//! "A failed call changes nothing", checked by a proptest model of the address space, in a space of its own and in a kernel's own hierarchy.

use super::*;

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
