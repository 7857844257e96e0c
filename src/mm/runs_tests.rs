//! A frame database over a memory map with holes ([`FrameDb::with_runs`]):
//! only the runs' frames are counted and handed out, and an address space
//! builds its tables and maps its pages from them.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::MmError;
use super::frame::{FrameDb, FrameKind, FrameRun, PageInfo};
use super::space::AddressSpace;
use super::testing::{BASE, Memory, SHARED_RW, Tlb, fr, mapper, pg, va};

fn infos(n: usize) -> Vec<PageInfo> {
    (0..n).map(|_| PageInfo::default()).collect()
}

fn runs_of(runs: &[(u64, usize)]) -> Vec<FrameRun> {
    runs.iter()
        .map(|&(pfn, n)| FrameRun::new(fr(pfn), n))
        .collect()
}

#[test]
fn runs_that_overlap_are_unsorted_empty_or_miscounted_are_refused() {
    let pages = infos(4);
    let last = (1u64 << 40) - 1;
    let bad: [&[(u64, usize)]; 6] = [
        &[(10, 2), (11, 2)],
        &[(20, 2), (10, 2)],
        &[(10, 0), (12, 4)],
        &[(10, 3)],
        &[],
        &[(last - 1, 4)],
    ];
    for runs in bad {
        let mut runs = runs_of(runs);
        // SAFETY: refused before any frame is counted; no space uses it.
        let db = unsafe { FrameDb::with_runs(&pages, &mut runs) };
        assert_eq!(db.err(), Some(MmError::InvalidRuns), "{runs:?}");
    }
    // A run that ends just below the last frame is taken.
    let mut runs = runs_of(&[(last - 4, 4)]);
    // SAFETY: as above.
    assert!(unsafe { FrameDb::with_runs(&pages, &mut runs) }.is_ok());
}

/// `mem`'s frames as runs: `(skip, take)` pairs, each skipping a hole of
/// `skip` frames then counting `take`.
fn layout(mem: &Memory, pieces: &[(usize, usize)]) -> Vec<FrameRun> {
    let mut pfn = mem.first_pfn();
    let mut runs = Vec::new();
    for &(skip, take) in pieces {
        pfn += skip as u64;
        runs.push(FrameRun::new(fr(pfn), take));
        pfn += take as u64;
    }
    runs
}

proptest! {
    /// Every frame handed out lies in a run, none twice, all of them
    /// before the database says it is out; the holes are never counted.
    #[test]
    fn frames_come_from_the_runs_only(
        pieces in prop::collection::vec((0usize..4, 1usize..6), 1..6),
    ) {
        let total: usize = pieces.iter().map(|&(s, t)| s + t).sum();
        let mem = Memory::new(total);
        let mut runs = layout(&mem, &pieces);
        let counted: BTreeSet<u64> = runs
            .iter()
            .flat_map(|r| {
                let first = r.first().start_address().as_u64() >> 12;
                first..first + r.frames() as u64
            })
            .collect();
        let pages = infos(counted.len());
        // SAFETY: the runs are frames of `mem`, used only by this database.
        let db = unsafe { FrameDb::with_runs(&pages, &mut runs) }.unwrap();
        for pfn in mem.first_pfn()..mem.first_pfn() + total as u64 {
            prop_assert_eq!(db.state(fr(pfn)).is_some(), counted.contains(&pfn));
        }
        let indexed: BTreeSet<u64> = (0..db.len())
            .map(|i| db.frame(i).unwrap().start_address().as_u64() >> 12)
            .collect();
        prop_assert_eq!(&indexed, &counted);
        let mut given = Vec::new();
        while let Ok(page) = db.alloc_page() {
            given.push(page);
        }
        let got: BTreeSet<u64> = given.iter().map(|p| p.pfn()).collect();
        prop_assert_eq!(got.len(), given.len());
        prop_assert_eq!(&got, &counted);
        prop_assert_eq!(db.free_frames(), 0);
        drop(given);
        prop_assert_eq!(db.free_frames(), counted.len());
    }
}

#[test]
fn a_space_builds_its_tables_and_maps_its_pages_across_the_holes() {
    let mem = Memory::new(16);
    // Three runs of two frames, holes of 3, 1 and 2 frames.
    let mut runs = layout(&mem, &[(3, 2), (1, 2), (2, 2)]);
    let holes: Vec<u64> = [0, 1, 2, 5, 8, 9]
        .iter()
        .map(|i| mem.first_pfn() + i)
        .collect();
    let pages = infos(6);
    // SAFETY: the runs are frames of `mem`, used only by this database.
    let db = unsafe { FrameDb::with_runs(&pages, &mut runs) }.unwrap();
    let page = db.alloc_page().unwrap();
    let mut space = AddressSpace::new(&db, mapper(), &db, Tlb::default(), true).unwrap();
    let id = space.map_vma(pg(BASE), 1, SHARED_RW).unwrap();
    space.insert_page(id, pg(BASE), &page).unwrap();
    // The root and three tables: the page and all four tables are the
    // six frames of the runs, none a hole.
    let leaf = space.translate(va(BASE)).unwrap();
    assert_eq!(leaf.phys(), page.phys());
    let tables = (0..db.len())
        .filter(|&i| db.state(db.frame(i).unwrap()).unwrap().kind == FrameKind::PageTable)
        .count();
    assert_eq!(tables, 4);
    assert_eq!(db.free_frames(), 1);
    assert!(!holes.contains(&page.pfn()));
    assert!(!holes.contains(&(space.root().start_address().as_u64() >> 12)));
    // A hole is no page of the database.
    assert!(holes.iter().all(|&pfn| db.state(fr(pfn)).is_none()));
    assert!(db.get(fr(holes[3])).is_none());
    drop(space);
    assert_eq!(
        db.free_frames(),
        5,
        "the tables went back; the page is held"
    );
}

/// The last frame below 2^52 bytes ends exactly at 2^52 and runs past
/// nothing: `FrameDb::new` panics only for frames running past 2^52 and
/// `with_runs` takes runs below it, yet both refused this one (they built
/// an address from the exclusive end, and 2^52 is none).
#[test]
fn the_last_frame_below_2_pow_52_is_a_valid_database() {
    let last = fr((1 << 40) - 1);
    let pages = infos(1);
    let mut runs = [FrameRun::new(last, 1)];
    // SAFETY: never touched: only the constructors' checks run, and no
    // space uses the database.
    let by_runs = unsafe { FrameDb::with_runs(&pages, &mut runs) }.map(|db| db.len());
    // SAFETY: as above.
    let by_new = std::panic::catch_unwind(|| unsafe { FrameDb::new(&pages, last) }.len());
    assert_eq!(
        (by_runs, by_new.ok()),
        (Ok(1), Some(1)),
        "(with_runs, new) refused the last frame below 2^52 bytes"
    );
}

/// One frame more than fits below 2^52 bytes is still refused: the last
/// frame and the one past it, or two frames before and three; and a run
/// whose count would overflow the end's arithmetic is refused without a
/// panic.
#[test]
fn frames_running_past_2_pow_52_are_refused() {
    let last = (1 << 40) - 1;
    for (first, frames) in [(last, 2), (last - 1, 3)] {
        let pages = infos(frames);
        let mut runs = [FrameRun::new(fr(first), frames)];
        // SAFETY: refused before any frame is counted; no space uses it.
        let db = unsafe { FrameDb::with_runs(&pages, &mut runs) };
        assert_eq!(
            db.err(),
            Some(MmError::InvalidRuns),
            "{first:#x} + {frames}"
        );
        // SAFETY: as above; it panics before the database exists.
        let made = std::panic::catch_unwind(|| unsafe { FrameDb::new(&pages, fr(first)) }.len());
        assert!(made.is_err(), "new: {first:#x} + {frames} frames");
    }
    let pages = infos(2);
    let mut runs = [FrameRun::new(fr(last), usize::MAX)];
    // SAFETY: as above.
    let db = unsafe { FrameDb::with_runs(&pages, &mut runs) };
    assert_eq!(db.err(), Some(MmError::InvalidRuns));
}
