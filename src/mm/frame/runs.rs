//! Which frame each entry of a [`FrameDb`](super::FrameDb) counts: one run
//! of consecutive frames, or a memory map's usable runs with holes between.

use x86_64::structures::paging::PhysFrame;

use super::{PageInfo, frame_of, pfn_of};
use crate::mm::MmError;

/// The frames of a database, in the order of its entries.
#[derive(Clone, Copy)]
pub(super) enum Runs<'a> {
    /// Entry `i` counts frame `base + i`.
    One { base: u64 },
    /// Sorted, disjoint runs; entry `run.index + k` counts frame
    /// `run.first + k`.
    Many(&'a [FrameRun]),
}

impl Runs<'_> {
    /// The entry counting frame `pfn`, if one does (it may be past the
    /// entries of a single run: the caller bounds it).
    #[inline]
    pub(super) fn index_of(&self, pfn: u64) -> Option<usize> {
        match *self {
            Runs::One { base } => usize::try_from(pfn.checked_sub(base)?).ok(),
            Runs::Many(runs) => {
                let run = runs[..runs.partition_point(|r| r.first <= pfn)].last()?;
                let offset = pfn - run.first;
                (offset < run.frames).then(|| run.index + offset as usize)
            }
        }
    }

    /// The entry of `pages` (the database's) counting frame `pfn`, if one
    /// does.
    #[inline]
    pub(super) fn entry<'p>(&self, pages: &'p [PageInfo], pfn: u64) -> Option<&'p PageInfo> {
        pages.get(self.index_of(pfn)?)
    }

    /// The frame number entry `index` counts (`index` below the entries).
    #[inline]
    pub(super) fn pfn_at(&self, index: usize) -> u64 {
        match *self {
            Runs::One { base } => base + index as u64,
            Runs::Many(runs) => {
                let run = runs[runs.partition_point(|r| r.index <= index) - 1];
                run.first + (index - run.index) as u64
            }
        }
    }
}

/// One past the last frame number below 2^52 bytes.
const PFN_END: u64 = 1 << (52 - 12);

/// Whether `frames` frames from frame number `first` on all lie below 2^52
/// bytes. Compared as numbers, not as an address of their end: the end of
/// the last frame, 2^52, is no valid `PhysAddr`, yet nothing runs past it.
#[inline]
pub(super) fn frames_fit(first: u64, frames: u64) -> bool {
    PFN_END
        .checked_sub(first)
        .is_some_and(|room| frames <= room)
}

/// Consecutive frames of RAM, one usable entry of a memory map, for
/// [`FrameDb::with_runs`](super::FrameDb::with_runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRun {
    /// Its first frame's number.
    first: u64,
    frames: u64,
    /// The database entry of its first frame (set by `with_runs`).
    index: usize,
}

impl FrameRun {
    /// `frames` frames from `first` on.
    pub fn new(first: PhysFrame, frames: usize) -> FrameRun {
        FrameRun {
            first: pfn_of(first),
            frames: frames as u64,
            index: 0,
        }
    }

    /// Its first frame.
    pub fn first(&self) -> PhysFrame {
        frame_of(self.first).expect("a frame number from a `PhysFrame`")
    }

    /// How many frames it has.
    pub fn frames(&self) -> usize {
        self.frames as usize
    }
}

/// Checks that `runs` are sorted, disjoint, none empty, below 2^52 bytes
/// and `entries` frames in all, then gives each the index of its first
/// entry; refused runs are left untouched.
pub(super) fn index(runs: &mut [FrameRun], entries: usize) -> Result<(), MmError> {
    let mut total = 0usize;
    let mut end = 0u64;
    for run in runs.iter() {
        if run.frames == 0 || run.first < end || !frames_fit(run.first, run.frames) {
            return Err(MmError::InvalidRuns);
        }
        // No overflow: `frames_fit` keeps the sum at most 2^40.
        end = run.first + run.frames;
        total = total
            .checked_add(run.frames as usize)
            .ok_or(MmError::InvalidRuns)?;
    }
    if runs.is_empty() || total != entries {
        return Err(MmError::InvalidRuns);
    }
    let mut index = 0;
    for run in runs.iter_mut() {
        run.index = index;
        index += run.frames as usize;
    }
    Ok(())
}
