//! Virtual memory areas: a range, flags with Linux's meanings, and the
//! protection its pages get.

use bitflags::bitflags;

use x86_64::VirtAddr;
use x86_64::structures::paging::Page;

use super::pte::{CacheMode, PAGE_4K};
// Defined with the entry bits it becomes; the areas' public name for it.
pub use super::pte::PageProt;

bitflags! {
    /// VMA flags (Linux's `VM_*`, with the same meanings).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct VmFlags: u32 {
        /// Readable.
        const READ = 1 << 0;
        /// Writable.
        const WRITE = 1 << 1;
        /// Executable.
        const EXEC = 1 << 2;
        /// Shared: writes reach the object, no copy-on-write.
        const SHARED = 1 << 3;
        /// May be made writable (a private one with this is copy-on-write).
        const MAYWRITE = 1 << 4;
        /// Raw PFN mappings: no frame-database entries behind the PTEs, never
        /// reference-counted (`VM_PFNMAP`, set by `remap_pfn_range`).
        const PFNMAP = 1 << 5;
        /// A mix of counted pages and raw PFNs (`VM_MIXEDMAP`, set by
        /// `insert_page`).
        const MIXEDMAP = 1 << 6;
        /// Device memory (`VM_IO`).
        const IO = 1 << 7;
        /// Must not grow (`VM_DONTEXPAND`).
        const DONTEXPAND = 1 << 8;
        /// Left out of core dumps (`VM_DONTDUMP`).
        const DONTDUMP = 1 << 9;
    }
}

impl VmFlags {
    /// A private mapping that may be written: writes would copy the page
    /// (Linux's `is_cow_mapping`).
    pub const fn is_cow(self) -> bool {
        self.intersection(VmFlags::SHARED.union(VmFlags::MAYWRITE))
            .bits()
            == VmFlags::MAYWRITE.bits()
    }
}

/// A virtual memory area of an address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vma {
    /// Its first page.
    pub start: Page,
    /// How many pages it spans.
    pub pages: u64,
    /// Its flags.
    pub flags: VmFlags,
    /// Offset into the mapped object in pages; `remap_pfn_range` of a
    /// copy-on-write mapping records the PFN here, as Linux does.
    pub pgoff: u64,
}

impl Vma {
    /// The protection its pages get (Linux's `vm_page_prot`): writable only
    /// when shared (a private writable mapping is copy-on-write, so its
    /// pages start read-only), executable only with `EXEC`.
    pub const fn page_prot(&self) -> PageProt {
        PageProt {
            writable: self.flags.contains(VmFlags::WRITE) && self.flags.contains(VmFlags::SHARED),
            executable: self.flags.contains(VmFlags::EXEC),
            cache: CacheMode::WriteBack,
        }
    }

    /// One past its last byte, as a number: an area may reach the top of
    /// the lower half, and its end, 2^47, is not a canonical address (so no
    /// `VirtAddr`: the type changed from `VirtAddr` in issue 17, whose
    /// constructor panicked there). An area built by hand past the end of
    /// the address space saturates at `u64::MAX`.
    pub fn end(&self) -> u64 {
        self.pages
            .checked_mul(PAGE_4K)
            .and_then(|len| self.start.start_address().as_u64().checked_add(len))
            .unwrap_or(u64::MAX)
    }

    /// Whether `count` pages from `first` lie inside the area. Counted in
    /// pages from its start, so no area, however built, overflows.
    pub fn contains_pages(&self, first: Page, count: u64) -> bool {
        self.pages_from_start(first.start_address())
            .and_then(|skip| skip.checked_add(count))
            .is_some_and(|last| last <= self.pages)
    }

    /// Whether `addr` lies inside the area.
    pub fn contains(&self, addr: VirtAddr) -> bool {
        self.pages_from_start(addr)
            .is_some_and(|page| page < self.pages)
    }

    /// Whole pages from the area's start to `addr`, if `addr` is not below it.
    fn pages_from_start(&self, addr: VirtAddr) -> Option<u64> {
        addr.as_u64()
            .checked_sub(self.start.start_address().as_u64())
            .map(|offset| offset / PAGE_4K)
    }
}
