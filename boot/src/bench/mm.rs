//! Page-table benchmarks: inserting 64 MiB one page at a time, in batches of
//! 512, and with the `x86_64` crate's `OffsetPageTable::map_to` (the mapper
//! most Rust hobby kernels use); remapping 1 GiB with 4 KiB and 2 MiB
//! entries. The three mappers alternate in rounds; each value is a median.

use alloc::format;
use alloc::vec::Vec;

use dmaengine::mm::frame::PageRef;
use dmaengine::mm::pte::PAGE_4K;
use dmaengine::mm::vma::{PageProt, VmFlags};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use super::report;
use crate::mem::{PHYS_OFFSET, frames, phys_to_virt};
use crate::mm::{Space, bytes_to_pages, db, fr, new_space, npages, pg, va};
use crate::{platform, println, time};

const AREA: u64 = 1 << 39;
const PAGES: usize = (64 << 20) / 4096;
const ROUNDS: usize = 5;
const SHARED_RW: VmFlags = VmFlags::READ
    .union(VmFlags::WRITE)
    .union(VmFlags::SHARED)
    .union(VmFlags::MAYWRITE);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values[values.len() / 2]
}

fn space() -> Option<Space> {
    new_space(platform().nx).ok()
}

/// Nanoseconds per page for `insert` over a fresh space (teardown untimed).
fn time_inserts(
    pages: &[PageRef<'static>],
    insert: impl Fn(&mut Space, dmaengine::mm::space::VmaId, &[PageRef<'static>]),
) -> Option<f64> {
    let mut space = space()?;
    let v = space
        .map_vma(
            pg(AREA),
            npages(AREA, AREA + PAGES as u64 * PAGE_4K),
            SHARED_RW,
        )
        .ok()?;
    let start = time::rdtsc();
    insert(&mut space, v, pages);
    let ns = time::cycles_to_ns(time::rdtsc() - start);
    let mapped = space
        .leaves(va(AREA)..va(AREA + PAGES as u64 * PAGE_4K))
        .count();
    assert_eq!(mapped, PAGES, "the benchmark must map every page");
    Some(ns as f64 / PAGES as f64)
}

/// Frees every table below `table` (level 4 = PML4), then `table` itself.
fn free_tables(table: u64, level: u32) {
    // SAFETY: a table built by `map_to` in `time_map_to`, not loaded, reached
    // through the direct map; nothing else uses it.
    let entries = unsafe { &*phys_to_virt(table).cast::<PageTable>() };
    if level > 1 {
        for entry in entries.iter().filter(|e| !e.is_unused()) {
            free_tables(entry.addr().as_u64(), level - 1);
        }
    }
    let _ = frames::free(table);
}

/// Nanoseconds per page for `OffsetPageTable::map_to` of the same pages.
fn time_map_to(pages: &[PageRef<'static>]) -> Option<f64> {
    let root = frames::alloc_zeroed().ok()?;
    // SAFETY: `root` is a zeroed frame we own, reached through the direct map
    // at PHYS_OFFSET, which maps all physical memory the tables will use.
    let mut mapper = unsafe {
        OffsetPageTable::new(
            &mut *phys_to_virt(root).cast::<PageTable>(),
            VirtAddr::new(PHYS_OFFSET),
        )
    };
    let flags = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::USER_ACCESSIBLE
        | PageTableFlags::NO_EXECUTE;
    let start = time::rdtsc();
    for (i, page) in pages.iter().enumerate() {
        let va = Page::<Size4KiB>::containing_address(VirtAddr::new(AREA + i as u64 * PAGE_4K));
        let frame = PhysFrame::containing_address(PhysAddr::new(page.phys().as_u64()));
        // SAFETY: the tables are not loaded anywhere (hence `ignore`), and
        // the frames are pages we hold.
        unsafe { mapper.map_to(va, frame, flags, &mut frames::BootFrames) }
            .expect("map_to")
            .ignore();
    }
    let ns = time::cycles_to_ns(time::rdtsc() - start);
    free_tables(root, 4);
    Some(ns as f64 / PAGES as f64)
}

/// The floor under `insert_pages`: per page, the stores it cannot avoid (one
/// entry written in the same page tables, one atomic count update in a
/// `struct page`-sized slot), with nothing checked. Nanoseconds per page.
fn time_floor(pages: &[PageRef<'static>]) -> Option<f64> {
    use core::sync::atomic::{AtomicU64, Ordering};
    // The tables `insert_pages` builds, built by it, then found by a walk.
    let mut space = space()?;
    let v = space.map_vma(pg(AREA), PAGES as u64, SHARED_RW).ok()?;
    for (i, chunk) in pages.chunks(512).enumerate() {
        space
            .insert_pages(v, pg(AREA + (i * 512) as u64 * PAGE_4K), chunk)
            .ok()?;
    }
    let tables: Vec<*mut u64> = (0..PAGES / 512)
        .map(|t| {
            let leaf = space.translate(va(AREA + (t * 512) as u64 * PAGE_4K))?;
            let mut table = space.root().start_address().as_u64();
            for level in [4u64, 3, 2] {
                let index = (leaf.va.as_u64() >> (12 + 9 * (level - 1))) & 0x1ff;
                // SAFETY: a live table of the space, in the direct map.
                let entry = unsafe { phys_to_virt(table).cast::<u64>().add(index as usize).read() };
                table = entry & 0x000f_ffff_ffff_f000;
            }
            Some(phys_to_virt(table).cast::<u64>())
        })
        .collect::<Option<_>>()?;
    let first_pfn = pages.iter().map(PageRef::pfn).min()?;
    let span = pages.iter().map(PageRef::pfn).max()? - first_pfn + 1;
    // Slots the size of the database's entries (a counts word and a kind).
    let counts: Vec<[AtomicU64; 2]> = (0..span).map(|_| Default::default()).collect();
    let bits = 0x8000_0000_0000_0007; // present, writable, user, no-execute
    let start = time::rdtsc();
    for (t, table) in tables.iter().enumerate() {
        for (i, page) in pages[t * 512..(t + 1) * 512].iter().enumerate() {
            let pfn = page.pfn();
            counts[(pfn - first_pfn) as usize][0].fetch_add(1 | 1 << 32, Ordering::AcqRel);
            // SAFETY: entry `i` of a live page table of this space, which
            // already maps this very page: the store changes nothing.
            unsafe { table.add(i).write_volatile((pfn << 12) | bits) };
        }
    }
    let ns = time::cycles_to_ns(time::rdtsc() - start);
    Some(ns as f64 / PAGES as f64)
}

/// Microseconds and entries written for a 1 GiB remap from `pfn`, with or
/// without 1 GiB entries.
fn time_remap(pfn: u64, pages_1g: bool) -> Option<(f64, u64)> {
    let mut space = space()?;
    space.set_1g_pages(pages_1g);
    let v = space
        .map_vma(pg(AREA), npages(AREA, AREA + (1 << 30)), SHARED_RW)
        .ok()?;
    let before = space.entries_written();
    let start = time::rdtsc();
    // SAFETY: a GiB of RAM from `pfn`, in a space that is never loaded and has no copy-on-write
    // area: nothing reads or writes through these entries.
    unsafe {
        space.remap_pfn_range(
            v,
            pg(AREA),
            fr(pfn),
            bytes_to_pages(1 << 30),
            PageProt::READ_WRITE,
        )
    }
    .ok()?;
    let us = time::cycles_to_ns(time::rdtsc() - start) as f64 / 1000.0;
    Some((us, space.entries_written() - before))
}

pub fn run() {
    let db = db();
    let Ok(pages) = (0..PAGES)
        .map(|_| db.alloc_page())
        .collect::<Result<Vec<_>, _>>()
    else {
        println!("mm benchmarks skipped: not enough pages in the frame database");
        return;
    };
    let (mut one, mut batched, mut map_to, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let by_one = time_inserts(&pages, |space, v, pages| {
            for (i, page) in pages.iter().enumerate() {
                space
                    .insert_page(v, pg(AREA + i as u64 * PAGE_4K), page)
                    .expect("insert_page");
            }
        });
        let by_batch = time_inserts(&pages, |space, v, pages| {
            for (i, chunk) in pages.chunks(512).enumerate() {
                space
                    .insert_pages(v, pg(AREA + (i * 512) as u64 * PAGE_4K), chunk)
                    .expect("insert_pages");
            }
        });
        let runs = (by_one, by_batch, time_map_to(&pages), time_floor(&pages));
        let (Some(a), Some(b), Some(c), Some(d)) = runs else {
            println!("mm benchmarks skipped: no memory for page tables");
            return;
        };
        one.push(a);
        batched.push(b);
        map_to.push(c);
        floor.push(d);
    }
    let (one, batched, map_to, floor) =
        (median(one), median(batched), median(map_to), median(floor));
    report("mm.insert_page.ns_per_page", one, "ns");
    report("mm.insert_pages.ns_per_page", batched, "ns");
    report("mm.x86_64_map_to.ns_per_page", map_to, "ns");
    report("mm.insert_pages_vs_insert_page.ratio", batched / one, "x");
    report("mm.insert_pages_vs_map_to.ratio", batched / map_to, "x");
    report("mm.floor.ns_per_page", floor, "ns");
    report("mm.insert_pages_vs_floor.ratio", batched / floor, "x");
    shootdown(&pages);
    drop(pages);

    // 1 GiB of physical memory from 0: 1 GiB-aligned, so one 1 GiB entry
    // (or 512 2 MiB ones without them); one page further, only 4 KiB
    // entries fit. Interleaved, the median of three.
    let (mut t4k, mut t2m, mut t1g) = (Vec::new(), Vec::new(), Vec::new());
    let (mut e4k, mut e2m, mut e1g) = (0, 0, 0);
    for _ in 0..3 {
        let runs = (
            time_remap(1, false),
            time_remap(0, false),
            time_remap(0, platform().pages_1g),
        );
        let (Some((a, n4)), Some((b, n2)), Some((c, n1))) = runs else {
            println!("remap benchmark skipped: no memory for page tables");
            return;
        };
        t4k.push(a);
        t2m.push(b);
        t1g.push(c);
        (e4k, e2m, e1g) = (n4, n2, n1);
    }
    let (t4k, t2m, t1g) = (median(t4k), median(t2m), median(t1g));
    report("mm.remap_1GiB.4k.us", t4k, "us");
    report("mm.remap_1GiB.2m.us", t2m, "us");
    report("mm.remap_1GiB.1g.us", t1g, "us");
    report("mm.remap_1GiB.4k.entries", e4k as f64, "count");
    report("mm.remap_1GiB.2m.entries", e2m as f64, "count");
    report("mm.remap_1GiB.1g.entries", e1g as f64, "count");
    report(
        "mm.remap_1GiB.entries_4k_over_2m.ratio",
        e4k as f64 / e2m as f64,
        "x",
    );
    report("mm.remap_1GiB.time_4k_over_2m.ratio", t4k / t2m, "x");
    report("mm.remap_1GiB.time_4k_over_1g.ratio", t4k / t1g, "x");
}

/// The space the holding CPUs load, and whether they may let it go.
static HELD_ROOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static HOLDING: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
static RELEASE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// A job that keeps `HELD_ROOT` loaded on its CPU until `RELEASE`.
fn hold(cpu: usize) {
    use core::sync::atomic::Ordering::{AcqRel, Acquire};
    let kernel = crate::mm::kernel_root();
    // SAFETY: the space outlives the job (the benchmark waits for it) and
    // shares the kernel's mappings; the job goes back to the kernel's tables.
    unsafe { crate::smp::load_root(cpu, HELD_ROOT.load(Acquire), kernel) };
    HOLDING.fetch_add(1, AcqRel);
    let start = time::now_ns();
    // Halted between shootdowns (each NMI wakes it), so four vCPUs on two
    // host cores do not slow the zapping CPU by spinning.
    while !RELEASE.load(Acquire) && time::now_ns() - start < 30_000_000_000 {
        x86_64::instructions::hlt();
    }
    // SAFETY: as above.
    unsafe { crate::smp::load_root(cpu, 0, kernel) };
}

/// Zapping one page and 64 MiB of a space loaded on the boot CPU only, then
/// also on every AP: microseconds and shootdown rounds per zap.
fn shootdown(pages: &[PageRef<'static>]) {
    use core::sync::atomic::Ordering::{Acquire, Release};
    let cpus = crate::smp::cpus();
    let holder_counts: &[usize] = if cpus > 1 { &[0, cpus - 1] } else { &[0] };
    for &holders in holder_counts {
        let Some(mut space) = space() else {
            return;
        };
        let Ok(v) = space.map_vma(
            pg(AREA),
            npages(AREA, AREA + PAGES as u64 * PAGE_4K),
            SHARED_RW,
        ) else {
            return;
        };
        for (i, chunk) in pages.chunks(512).enumerate() {
            space
                .insert_pages(v, pg(AREA + (i * 512) as u64 * PAGE_4K), chunk)
                .expect("insert_pages");
        }
        HELD_ROOT.store(space.root().start_address().as_u64(), Release);
        HOLDING.store(0, Release);
        RELEASE.store(false, Release);
        for cpu in 1..=holders {
            crate::smp::start_on(cpu, hold);
        }
        let start = time::now_ns();
        while HOLDING.load(Acquire) < holders && time::now_ns() - start < 5_000_000_000 {
            core::hint::spin_loop();
        }
        let rounds = crate::smp::shootdown_rounds();
        space.zap_range(v, pg(AREA), 1).expect("zap");
        let one_page = crate::smp::shootdown_rounds() - rounds;
        let rounds = crate::smp::shootdown_rounds();
        let begin = time::rdtsc();
        space.zap_range(v, pg(AREA), PAGES as u64).expect("zap");
        let us = time::cycles_to_ns(time::rdtsc() - begin) as f64 / 1e3;
        let whole = crate::smp::shootdown_rounds() - rounds;
        RELEASE.store(true, Release);
        // Woken again until it ends: a wake that lands just before its
        // `hlt` would otherwise leave it halted.
        let finished = (1..=holders).all(|cpu| {
            (0..10_000).any(|_| {
                crate::smp::wake(cpu);
                crate::smp::wait_for(cpu, 1_000_000)
            })
        });
        if !finished {
            println!("shootdown benchmark: a CPU did not let the space go");
            return;
        }
        let label = format!("{}cpu", holders + 1);
        report(&format!("mm.zap_64MiB.{label}.us"), us, "us");
        if holders > 0 {
            report("mm.shootdown.ipis_per_zap.1page", one_page as f64, "rounds");
            report("mm.shootdown.ipis_per_zap.64MiB", whole as f64, "rounds");
        }
    }
}
