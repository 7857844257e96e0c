//! Tests of `dmaengine::mm` under the real MMU: address spaces loaded into
//! CR3, accesses through inserted and remapped pages, faults after zaps.

use alloc::vec::Vec;

use dmaengine::drivers::edu;
use dmaengine::mm::MmError;
use dmaengine::mm::frame::{FrameKind, PageRef};
use dmaengine::mm::pte::{self, CacheMode, LINUX_PAT, PAGE_2M, PAGE_4K};
use dmaengine::mm::space::{Inserted, PartialInsert};
use dmaengine::mm::vma::{PageProt, VmFlags};

use crate::harness::Test;
use crate::mem::{frames, phys_to_virt};
use crate::mm::{Space, bytes_to_pages, db, fr, new_space, npages, pg, va, with_loaded};
use crate::recover::{Caught, catch};
use crate::{devices, platform};

pub const TESTS: &[Test] = &[
    Test::new("mm.pat_has_the_linux_layout", pat_has_the_linux_layout),
    Test::new(
        "mm.insert_pages_read_and_write_through_the_mmu",
        insert_pages_through_the_mmu,
    ),
    Test::new("mm.io_remap_edu_bar_uncached", io_remap_edu_bar),
    Test::new(
        "mm.remap_1GiB_uses_2MiB_then_1GiB_entries",
        remap_1gib_uses_huge_entries,
    ),
    Test::new("mm.zapped_page_faults", zapped_page_faults),
    Test::new(
        "mm.remapped_address_never_returns_a_stale_frame",
        no_stale_tlb_entry,
    ),
    Test::new(
        "mm.bad_requests_change_nothing",
        bad_requests_change_nothing,
    ),
    Test::new("mm.fork_range_child_sees_the_same_pages", fork_range_child),
];

/// Areas live in PML4 slots 1 and 2: slot 0 is the kernel image.
pub(super) const AREA: u64 = 1 << 39;
const AREA_2: u64 = 2 << 39;
pub(super) const SHARED_RW: VmFlags = VmFlags::READ
    .union(VmFlags::WRITE)
    .union(VmFlags::SHARED)
    .union(VmFlags::MAYWRITE);
const COW: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::MAYWRITE);

pub(super) fn space() -> Space {
    new_space(platform().nx).unwrap_or_else(|e| panic!("address space: {e}"))
}

/// Reads the `u64` at `va` in whatever is loaded.
pub(super) fn read(va: u64) -> u64 {
    // SAFETY: callers pass addresses their loaded space maps; a fault is
    // caught by the harness (or by an explicit `catch`).
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

fn write(va: u64, value: u64) {
    // SAFETY: as for `read`, for a writable mapping.
    unsafe { core::ptr::write_volatile(va as *mut u64, value) }
}

/// Fills a page we own through the direct map.
pub(super) fn fill(page: &PageRef<'_>, value: u64) {
    let words = phys_to_virt(page.phys().as_u64()).cast::<u64>();
    for i in 0..512 {
        // SAFETY: the page is ours and mapped by the direct map.
        unsafe { words.add(i).write_volatile(value ^ i as u64) };
    }
}

fn word(pa: u64, i: usize) -> u64 {
    // SAFETY: `pa` is a page we own, in the direct map; `i < 512`.
    unsafe { phys_to_virt(pa).cast::<u64>().add(i).read_volatile() }
}

fn pat_has_the_linux_layout() {
    // SAFETY: reading IA32_PAT has no side effects.
    let pat = unsafe { x86_64::registers::model_specific::Msr::new(0x277).read() };
    assert_eq!(pat, LINUX_PAT);
}

fn insert_pages_through_the_mmu() {
    let db = db();
    let mut space = space();
    let v = space
        .map_vma(pg(AREA), npages(AREA, AREA + 16 * PAGE_4K), SHARED_RW)
        .unwrap();
    let pages: Vec<PageRef<'_>> = (0..16).map(|_| db.alloc_page().expect("page")).collect();
    for (i, p) in pages.iter().enumerate() {
        fill(p, 0x1111_0000_0000 * (i as u64 + 1));
    }
    space
        .insert_pages(v, pg(AREA), &pages)
        .expect("insert_pages");
    for p in &pages {
        let s = db.state(fr(p.pfn())).unwrap();
        assert_eq!((s.refcount, s.mapcount), (2, 1));
    }
    with_loaded(&mut space, |_| {
        for i in 0..16u64 {
            for w in [0, 1, 511] {
                assert_eq!(
                    read(AREA + i * PAGE_4K + w * 8),
                    (0x1111_0000_0000 * (i + 1)) ^ w,
                    "page {i} word {w}"
                );
            }
            write(AREA + i * PAGE_4K + 8 * 7, 0xfeed_0000 + i);
        }
    });
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(
            word(p.phys().as_u64(), 7),
            0xfeed_0000 + i as u64,
            "the write reached frame {:#x}",
            p.pfn()
        );
    }
    drop(space);
    for p in &pages {
        let s = db.state(fr(p.pfn())).unwrap();
        assert_eq!(
            (s.refcount, s.mapcount),
            (1, 0),
            "teardown gave everything back"
        );
    }
}

fn io_remap_edu_bar() {
    let dev = devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID).expect("edu");
    let (bar, len) = dev.mem_bar(0).expect("BAR0");
    let mut space = space();
    let v = space
        .map_vma(pg(AREA), npages(AREA, AREA + len), SHARED_RW)
        .unwrap();
    // SAFETY: edu's BAR 0: device memory, which the kernel never hands out as RAM.
    unsafe {
        space.io_remap_pfn_range(
            v,
            pg(AREA),
            fr(bar / PAGE_4K),
            bytes_to_pages(len),
            PageProt::READ_WRITE,
            CacheMode::Uncached,
        )
    }
    .expect("io_remap");
    let leaf = space
        .translate(va(AREA + edu::regs::ID.offset() as u64))
        .expect("mapped");
    assert!(leaf.is_special());
    assert_eq!(
        CacheMode::of_entry(leaf.entry, leaf.level == 2),
        CacheMode::Uncached
    );
    assert_eq!(
        leaf.entry.bits() & (pte::PCD | pte::PWT),
        pte::PCD | pte::PWT
    );
    let flags = space.vma(v).unwrap().flags;
    assert!(
        flags.contains(VmFlags::PFNMAP | VmFlags::IO | VmFlags::DONTEXPAND | VmFlags::DONTDUMP)
    );
    let (id, live) = with_loaded(&mut space, |_| {
        // SAFETY: the edu BAR is mapped uncached at AREA; 4-byte accesses.
        unsafe {
            let id = core::ptr::read_volatile((AREA + edu::regs::ID.offset() as u64) as *const u32);
            core::ptr::write_volatile(
                (AREA + edu::regs::LIVENESS.offset() as u64) as *mut u32,
                0x1357_9bdf,
            );
            (
                id,
                core::ptr::read_volatile(
                    (AREA + edu::regs::LIVENESS.offset() as u64) as *const u32,
                ),
            )
        }
    });
    assert_eq!(
        id,
        edu::regs::ID_VALUE,
        "the ID register through the new mapping"
    );
    assert_eq!(live, !0x1357_9bdf);
}

fn remap_1gib_uses_huge_entries() {
    const GIB: u64 = 1 << 30;
    let mut space = space();
    // 2 MiB entries first; the 1 GiB one below.
    space.set_1g_pages(false);
    let frame = frames::alloc_zeroed().expect("frame");
    let base = frame & !(GIB - 1);
    let v = space
        .map_vma(pg(AREA_2), npages(AREA_2, AREA_2 + GIB), SHARED_RW)
        .unwrap();
    let before = space.entries_written();
    // SAFETY: the GiB of RAM holding `frame`; the space is loaded only inside `with_loaded`, which
    // touches `frame` (held until the end) and reads the kernel image, and no write fault copies
    // from it (a shared area).
    unsafe {
        space.remap_pfn_range(
            v,
            pg(AREA_2),
            fr(base / PAGE_4K),
            bytes_to_pages(GIB),
            PageProt::READ_WRITE,
        )
    }
    .expect("remap 1 GiB");
    let written = space.entries_written() - before;
    let leaves: Vec<_> = space.leaves(va(AREA_2)..va(AREA_2 + GIB)).collect();
    assert_eq!(leaves.len(), 512, "512 leaves");
    assert!(
        leaves.iter().all(|l| l.level == 2 && l.is_special()),
        "all of them 2 MiB entries"
    );
    assert!(
        leaves
            .iter()
            .all(|l| l.phys().as_u64() == base + (l.va.as_u64() - AREA_2))
    );
    assert_eq!(written, 512 + 2, "512 PDEs, a PD and a PDPT linked");
    // Through the MMU: our frame, written through the mapping and read back
    // through the direct map, and the kernel image read both ways.
    let via = AREA_2 + (frame - base);
    let image = core::ptr::addr_of!(LINUX_PAT_COPY) as u64;
    let image_va = (image >= base && image < base + GIB).then(|| AREA_2 + (image - base));
    let (seen, image_seen) = with_loaded(&mut space, |_| {
        write(via + 64, 0xc0ff_ee00_d00d_f00d);
        (read(via + 64), image_va.map(read))
    });
    assert_eq!(seen, 0xc0ff_ee00_d00d_f00d);
    assert_eq!(
        word(frame, 8),
        0xc0ff_ee00_d00d_f00d,
        "the write hit the right frame"
    );
    if let Some(v) = image_seen {
        assert_eq!(v, LINUX_PAT_COPY);
    }
    // With 1 GiB pages: one entry, the same frames through it.
    assert!(platform().pages_1g, "qemu-run.sh gives the CPU 1 GiB pages");
    let mut space = crate::mm::new_space(platform().nx).expect("a space");
    let v = space
        .map_vma(pg(AREA_2), npages(AREA_2, AREA_2 + GIB), SHARED_RW)
        .unwrap();
    let before = space.entries_written();
    // SAFETY: as above: the same GiB, the same accesses.
    unsafe {
        space.remap_pfn_range(
            v,
            pg(AREA_2),
            fr(base / PAGE_4K),
            GIB / PAGE_4K,
            PageProt::READ_WRITE,
        )
    }
    .expect("remap 1 GiB");
    assert_eq!(space.entries_written() - before, 2, "one leaf and its PDPT");
    let leaves: Vec<_> = space.leaves(va(AREA_2)..va(AREA_2 + GIB)).collect();
    assert_eq!(leaves.len(), 1);
    assert_eq!((leaves[0].level, leaves[0].phys().as_u64()), (3, base));
    let seen = with_loaded(&mut space, |_| {
        write(via + 72, 0x1_6b_1e);
        read(via + 72)
    });
    assert_eq!(seen, 0x1_6b_1e);
    assert_eq!(word(frame, 9), 0x1_6b_1e, "the write hit the right frame");
    frames::free(frame).expect("free");
}

static LINUX_PAT_COPY: u64 = LINUX_PAT;

fn zapped_page_faults() {
    let db = db();
    let mut space = space();
    let v = space
        .map_vma(pg(AREA), npages(AREA, AREA + PAGE_4K), SHARED_RW)
        .unwrap();
    let page = db.alloc_page().unwrap();
    fill(&page, 0x5a5a);
    space.insert_page(v, pg(AREA), &page).unwrap();
    let outcome = with_loaded(&mut space, |space| {
        assert_eq!(read(AREA + 8), 0x5a5a ^ 1);
        space
            .zap_range(v, pg(AREA), npages(AREA, AREA + PAGE_4K))
            .expect("zap");
        // Keep only the fault: `Caught` is large.
        catch(|| read(AREA + 8)).map_err(|caught| match caught {
            Caught::Exception(f) => Some(f),
            _ => None,
        })
    });
    match outcome {
        Err(Some(f)) => {
            assert_eq!((f.vector, f.cr2), (14, AREA + 8));
            assert_eq!(f.error_code & 1, 0, "not present");
        }
        other => panic!("expected a page fault after the zap, got {other:?}"),
    }
    let s = db.state(fr(page.pfn())).unwrap();
    assert_eq!((s.refcount, s.mapcount), (1, 0));
}

fn no_stale_tlb_entry() {
    let db = db();
    let mut space = space();
    let v = space
        .map_vma(pg(AREA), npages(AREA, AREA + PAGE_4K), SHARED_RW)
        .unwrap();
    let (a, b) = (db.alloc_page().unwrap(), db.alloc_page().unwrap());
    fill(&a, 0xaaaa_0000);
    fill(&b, 0xbbbb_0000);
    space.insert_page(v, pg(AREA), &a).unwrap();
    let (first, second) = with_loaded(&mut space, |space| {
        let first = read(AREA);
        space
            .zap_range(v, pg(AREA), npages(AREA, AREA + PAGE_4K))
            .expect("zap");
        space.insert_page(v, pg(AREA), &b).expect("insert b");
        (first, read(AREA))
    });
    assert_eq!(first, 0xaaaa_0000);
    assert_eq!(second, 0xbbbb_0000, "the TLB returned the old frame");
}

/// Everything a failed call must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    leaves: Vec<(u64, u64)>,
    counts: Vec<(u32, u32)>,
    flags: Vec<VmFlags>,
    free: usize,
}

fn fingerprint(
    space: &Space,
    pages: &[PageRef<'_>],
    vmas: &[dmaengine::mm::space::VmaId],
) -> Fingerprint {
    let db = db();
    Fingerprint {
        leaves: space
            .user_leaves()
            .map(|l| (l.va.as_u64(), l.entry.bits()))
            .collect(),
        counts: pages
            .iter()
            .map(|p| {
                db.state(fr(p.pfn()))
                    .map(|s| (s.refcount, s.mapcount))
                    .unwrap()
            })
            .collect(),
        flags: vmas.iter().map(|&v| space.vma(v).unwrap().flags).collect(),
        free: db.free_frames(),
    }
}

fn bad_requests_change_nothing() {
    let db = db();
    let mut space = space();
    let plain = space
        .map_vma(pg(AREA), npages(AREA, AREA + 16 * PAGE_4K), SHARED_RW)
        .unwrap();
    let cow = space
        .map_vma(
            pg(AREA + PAGE_2M),
            npages(AREA + PAGE_2M, AREA + PAGE_2M + 4 * PAGE_4K),
            COW,
        )
        .unwrap();
    let io = space
        .map_vma(
            pg(AREA + 2 * PAGE_2M),
            npages(AREA + 2 * PAGE_2M, AREA + 2 * PAGE_2M + 4 * PAGE_4K),
            SHARED_RW,
        )
        .unwrap();
    let pages: Vec<PageRef<'_>> = (0..4).map(|_| db.alloc_page().unwrap()).collect();
    space
        .insert_page(plain, pg(AREA + 2 * PAGE_4K), &pages[0])
        .unwrap();
    // SAFETY: the local APIC's MMIO page: device memory; nothing accesses it through this space.
    unsafe {
        space.remap_pfn_range(
            io,
            pg(AREA + 2 * PAGE_2M + PAGE_4K),
            fr(0xfee00),
            bytes_to_pages(PAGE_4K),
            PageProt::READ_ONLY,
        )
    }
    .unwrap();
    let vmas = [plain, cow, io];
    let before = fingerprint(&space, &pages, &vmas);
    let same = |space: &Space, what: &str| {
        assert_eq!(
            fingerprint(space, &pages, &vmas),
            before,
            "{what} changed something"
        )
    };

    assert_eq!(
        space
            .insert_page(plain, pg(AREA + 16 * PAGE_4K), &pages[1])
            .err(),
        Some(MmError::OutOfRange)
    );
    assert_eq!(
        space.zap_range(plain, pg(AREA), u64::MAX),
        Err(MmError::OutOfRange),
        "a page count whose byte size wraps"
    );
    same(&space, "wrapping zap");
    assert_eq!(
        space.insert_page(plain, pg(AREA + 16 * PAGE_4K), &pages[1]),
        Err(MmError::OutOfRange)
    );
    same(&space, "insert past the end");
    assert_eq!(
        space.insert_page(plain, pg(AREA + 2 * PAGE_4K), &pages[1]),
        Err(MmError::Busy)
    );
    same(&space, "insert over a page");
    assert_eq!(
        space.insert_page(io, pg(AREA + 2 * PAGE_2M), &pages[1]),
        Err(MmError::WrongVmaKind)
    );
    same(&space, "insert into PFNMAP");
    assert_eq!(
        space.insert_pages(plain, pg(AREA + 14 * PAGE_4K), &pages),
        Err(PartialInsert {
            inserted: 0,
            error: MmError::OutOfRange
        })
    );
    same(&space, "insert_pages past the end");
    assert_eq!(
        // SAFETY: refused (partial copy-on-write remap): nothing is mapped.
        unsafe {
            space.remap_pfn_range(
                cow,
                pg(AREA + PAGE_2M),
                fr(0x100),
                bytes_to_pages(PAGE_4K),
                PageProt::READ_ONLY,
            )
        },
        Err(MmError::PartialCowRemap)
    );
    same(&space, "partial copy-on-write remap");
    assert_eq!(
        // SAFETY: refused (busy): the entries written are undone before it returns, and the space
        // is never loaded.
        unsafe {
            space.remap_pfn_range(
                io,
                pg(AREA + 2 * PAGE_2M),
                fr(0x100),
                bytes_to_pages(4 * PAGE_4K),
                PageProt::READ_ONLY,
            )
        },
        Err(MmError::Busy)
    );
    same(&space, "remap over a mapping (undone midway)");
    assert_eq!(
        // SAFETY: refused (a MIXEDMAP area): nothing is mapped.
        unsafe {
            space.remap_pfn_range(
                plain,
                pg(AREA),
                fr(0x100),
                bytes_to_pages(PAGE_4K),
                PageProt::READ_ONLY,
            )
        },
        Err(MmError::WrongVmaKind)
    );
    same(&space, "remap into MIXEDMAP");
    assert_eq!(
        // SAFETY: refused (zero pages): nothing is mapped.
        unsafe {
            space.remap_pfn_range(
                io,
                pg(AREA + 2 * PAGE_2M),
                fr(0x100),
                bytes_to_pages(0),
                PageProt::READ_ONLY,
            )
        },
        Err(MmError::Misaligned)
    );
    same(&space, "zero-size remap");
    assert_eq!(
        // SAFETY: refused (a plain area): nothing is mapped.
        unsafe { space.insert_pfn(cow, pg(AREA + PAGE_2M), fr(0x100)) },
        Err(MmError::WrongVmaKind)
    );
    same(&space, "insert_pfn into a plain area");
    assert_eq!(
        // SAFETY: the entry is there already (`AlreadyMapped`): nothing new is mapped.
        unsafe { space.insert_pfn(io, pg(AREA + 2 * PAGE_2M + PAGE_4K), fr(0x100)) },
        Ok(Inserted::AlreadyMapped)
    );
    same(&space, "insert_pfn over an entry");
    assert_eq!(
        space.zap_range(plain, pg(AREA), npages(AREA, AREA + 17 * PAGE_4K)),
        Err(MmError::OutOfRange)
    );
    same(&space, "zap past the end");
    assert_eq!(
        space.map_vma(
            pg(AREA + PAGE_4K),
            npages(AREA + PAGE_4K, AREA + 3 * PAGE_4K),
            SHARED_RW
        ),
        Err(MmError::Overlap)
    );
    assert_eq!(
        space.map_vma(pg(0x1000), npages(0x1000, 0x2000), SHARED_RW),
        Err(MmError::Overlap),
        "the kernel's slot"
    );
    same(&space, "overlapping areas");
    // Frames that are not allocated pages cannot even be referenced.
    let root = space.root().start_address().as_u64() / PAGE_4K;
    assert_eq!(
        db.state(fr(root)).map(|s| s.kind),
        Some(FrameKind::PageTable)
    );
    assert!(
        db.get(fr(root)).is_none(),
        "a page-table frame is not a page"
    );
    let free = ((db.first_frame().start_address().as_u64() >> 12)
        ..(db.first_frame().start_address().as_u64() >> 12) + db.len() as u64)
        .find(|&p| db.state(fr(p)).unwrap().kind == FrameKind::Free)
        .unwrap();
    assert!(db.get(fr(free)).is_none(), "a free frame is not a page");
    db.set_kind(fr(free), FrameKind::Reserved).unwrap();
    assert!(
        db.get(fr(free)).is_none() && !db.insertable(fr(free)),
        "a reserved frame is not a page"
    );
    // SAFETY: the frame was free before the test reserved it; nothing
    // maps or uses it.
    unsafe { db.release(fr(free)) }.unwrap();
    assert!(
        db.get(fr(crate::mem::kernel_image().start / PAGE_4K))
            .is_none(),
        "the kernel is outside the database"
    );
}

fn fork_range_child() {
    let db = db();
    let mut parent = space();
    let mut child = space();
    let v = parent
        .map_vma(pg(AREA), npages(AREA, AREA + 4 * PAGE_4K), SHARED_RW)
        .unwrap();
    let pages: Vec<PageRef<'_>> = (0..4).map(|_| db.alloc_page().unwrap()).collect();
    for (i, p) in pages.iter().enumerate() {
        fill(p, 0x600d_0000 + i as u64);
    }
    parent.insert_pages(v, pg(AREA), &pages).unwrap();
    let dev = devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID).expect("edu");
    let (bar, _) = dev.mem_bar(0).expect("BAR0");
    let io = parent
        .map_vma(pg(AREA_2), npages(AREA_2, AREA_2 + PAGE_4K), SHARED_RW)
        .unwrap();
    // SAFETY: edu's BAR 0: device memory, which the kernel never hands out as RAM.
    unsafe {
        parent.io_remap_pfn_range(
            io,
            pg(AREA_2),
            fr(bar / PAGE_4K),
            bytes_to_pages(PAGE_4K),
            PageProt::READ_ONLY,
            CacheMode::Uncached,
        )
    }
    .unwrap();
    parent.fork_range(v, &mut child).expect("fork pages");
    parent.fork_range(io, &mut child).expect("fork the BAR");
    for p in &pages {
        let s = db.state(fr(p.pfn())).unwrap();
        assert_eq!(
            (s.refcount, s.mapcount),
            (3, 2),
            "one more reference and map count per page"
        );
    }
    let (words, id) = with_loaded(&mut child, |_| {
        // SAFETY: the BAR is mapped uncached at AREA_2 in the child.
        let id = unsafe { core::ptr::read_volatile(AREA_2 as *const u32) };
        (
            (0..4u64)
                .map(|i| read(AREA + i * PAGE_4K))
                .collect::<Vec<_>>(),
            id,
        )
    });
    assert_eq!(words, [0x600d_0000, 0x600d_0001, 0x600d_0002, 0x600d_0003]);
    assert_eq!(id, edu::regs::ID_VALUE);
    drop(child);
    for p in &pages {
        let s = db.state(fr(p.pfn())).unwrap();
        assert_eq!((s.refcount, s.mapcount), (2, 1));
    }
}
