//! Virtual memory areas: a range, flags with Linux's meanings, and the
//! protection its pages get.

use bitflags::bitflags;

use super::pte::{self, CacheMode};

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

/// How the pages of a mapping may be accessed (Linux's `pgprot_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageProt {
    /// Writes allowed.
    pub writable: bool,
    /// Instruction fetches allowed.
    pub executable: bool,
    /// The memory type.
    pub cache: CacheMode,
}

impl PageProt {
    /// Read-only, not executable, write-back.
    pub const READ_ONLY: PageProt = PageProt {
        writable: false,
        executable: false,
        cache: CacheMode::WriteBack,
    };
    /// Read-write, not executable, write-back.
    pub const READ_WRITE: PageProt = PageProt {
        writable: true,
        executable: false,
        cache: CacheMode::WriteBack,
    };

    /// The same protection with another memory type.
    pub const fn with_cache(self, cache: CacheMode) -> PageProt {
        PageProt { cache, ..self }
    }

    /// The bits of a user leaf entry with this protection; `nx` says whether
    /// the execute-disable bit may be used (EFER.NXE).
    pub const fn leaf_bits(self, huge: bool, nx: bool) -> u64 {
        pte::PRESENT
            | pte::USER
            | (if self.writable { pte::WRITABLE } else { 0 })
            | (if !self.executable && nx {
                pte::NO_EXECUTE
            } else {
                0
            })
            | self.cache.pte_bits(huge)
    }
}

/// A virtual memory area of an address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vma {
    /// First address (page-aligned).
    pub start: u64,
    /// One past the last address (page-aligned).
    pub end: u64,
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

    /// Whether `[addr, addr + len)` lies inside the area.
    pub const fn contains_range(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.start && end <= self.end,
            None => false,
        }
    }
}
