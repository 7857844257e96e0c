//! Page-table insertion for remapped frames, with the rules Linux settled on
//! since the 2005 "driver page remapping" work: `insert_page` and
//! `insert_pages` for counted pages (`VM_MIXEDMAP`), `remap_pfn_range` and
//! `io_remap_pfn_range` for raw frame ranges (`VM_PFNMAP`, special PTEs),
//! `insert_pfn`, `zap_range`, `normal_page` and `fork_range`, on x86_64
//! 4-level page tables.
//!
//! - [`traits`]: what a kernel plugs in: how page tables are reached
//!   ([`traits::TableMapper`]), where table frames come from (the `x86_64`
//!   crate's `FrameAllocator`/`FrameDeallocator`), how pages are counted
//!   ([`traits::PageCounter`]).
//! - [`frame`]: the frame database (`struct page`: reference and map
//!   counts, kinds) and counted [`frame::PageRef`]s: one `PageCounter`
//!   (and frame allocator) for kernels without their own.
//! - [`vma`]: areas, their flags and page protection.
//! - [`pte`]: entry bits, PAT cache modes; every entry is built there.
//! - [`space`]: the address space and every operation on it.
//! - [`tlb`]: the flushing the kernel supplies.
//!
//! Addresses, pages and frames at the boundary are the `x86_64` crate's
//! `VirtAddr`, `PhysAddr`, `Page` and `PhysFrame`; sizes are page counts.
//!
//! # Soundness
//! Every way for the crate to write memory it was only told about goes
//! through an `unsafe` promise by the kernel: the `unsafe` traits
//! [`traits::TableMapper`], [`traits::PageCounter`], [`tlb::TlbFlush`] and
//! `x86_64`'s `FrameAllocator`, and the `unsafe` constructors
//! [`frame::FrameDb::new`], [`traits::OffsetMapper::new`],
//! [`space::AddressSpace::from_root`] and
//! [`space::AddressSpace::share_kernel_slots`]. Given those, the safe API
//! cannot corrupt memory: whatever the arguments, it writes only page
//! tables of its own areas and frees only frames whose last mapping is gone
//! and flushed.
//!
//! Every operation either succeeds or returns an error having changed
//! nothing: no entry, no count, no page-table page. (`insert_pages` is the
//! one exception Linux also makes: it reports how many pages went in, and
//! those stay, fully counted.)

pub mod frame;
pub mod pte;
pub mod space;
pub mod tlb;
pub mod traits;
pub mod vma;

use core::fmt;

/// Errors of the mapping operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmError {
    /// The address or range is not (wholly) inside the area, not in the
    /// user half, or overflows.
    OutOfRange,
    /// An address or size is not page-aligned, or a size is zero.
    Misaligned,
    /// Something is already mapped there.
    Busy,
    /// The area's kind forbids this (e.g. `insert_page` into `PFNMAP`).
    WrongVmaKind,
    /// A copy-on-write area must be remapped whole.
    PartialCowRemap,
    /// The frame may not be inserted: not an allocated order-0 page
    /// (free, reserved, kernel or page-table frames are refused).
    NotInsertable,
    /// No frame for a page table.
    OutOfMemory,
    /// No such area in this address space: never created, or unmapped
    /// since (a stale id).
    NoSuchVma,
    /// The area id belongs to another address space.
    ForeignVma,
    /// The frame is one the frame database counts: a `MIXEDMAP` area takes
    /// it only as a counted page (`insert_page`), never as a raw PFN whose
    /// entry would hold no reference.
    CountedFrame,
    /// The new area overlaps another, the kernel's half, or an entry of
    /// the kernel's (a mapping, a non-present marker, or a link carrying
    /// the crate's owned bit).
    Overlap,
    /// The address space has no room for another area.
    TooManyVmas,
    /// Nothing is mapped at the address.
    NotMapped,
    /// The area does not allow the access (a write to a read-only area).
    Protection,
    /// A copy-on-write fault found that the raw frame it would copy is the
    /// free page it was just given for the copy: the frame was remapped
    /// and then freed, which `remap_pfn_range`'s contract forbids. Refused
    /// rather than copied onto itself; nothing changed.
    FreeFrameMapped,
    /// The runs given to [`FrameDb::with_runs`](frame::FrameDb::with_runs)
    /// overlap, are out of order, empty, past 2^52 bytes, or do not add up
    /// to the entries given.
    InvalidRuns,
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MmError::OutOfRange => "address range outside the area",
            MmError::Misaligned => "address or size not page-aligned",
            MmError::Busy => "already mapped",
            MmError::WrongVmaKind => "operation not allowed on this kind of area",
            MmError::PartialCowRemap => "a copy-on-write area must be remapped whole",
            MmError::NotInsertable => "frame is not an insertable page",
            MmError::OutOfMemory => "out of memory for page tables",
            MmError::NoSuchVma => "no such area (or a stale id)",
            MmError::ForeignVma => "area id of another address space",
            MmError::CountedFrame => "a counted frame must be inserted as a page",
            MmError::Overlap => "area overlaps another",
            MmError::TooManyVmas => "too many areas",
            MmError::NotMapped => "nothing mapped there",
            MmError::Protection => "access not allowed by the area",
            MmError::FreeFrameMapped => "a raw entry maps a frame the allocator holds as free",
            MmError::InvalidRuns => "memory runs overlap, are unsorted, empty, or miscounted",
        })
    }
}

impl core::error::Error for MmError {}

#[cfg(test)]
mod hardening_tests;
#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(test)]
mod nofree_tests;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod runs_tests;
#[cfg(test)]
mod soundness_tests;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
