//! x86_64 page-table entries and cache modes: every entry the crate writes
//! is built here.
//!
//! Source: Intel SDM Vol. 3A, 4.5 "4-Level Paging" (Tables 4-15 to 4-20 for
//! the entry formats) and 12.12 "Page Attribute Table"; the PAT layout is
//! the one Linux programs (`arch/x86/mm/pat/memtype.c`). The bits that
//! `x86_64::structures::paging::PageTableFlags` names have the same values
//! there (`PRESENT`, `WRITABLE`, `USER_ACCESSIBLE`, `WRITE_THROUGH`,
//! `NO_CACHE`, `HUGE_PAGE`, `BIT_9`, `BIT_10`, `NO_EXECUTE`).

use core::fmt;

use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

/// Bit 0: present.
pub const PRESENT: u64 = 1 << 0;
/// Bit 1: writable.
pub const WRITABLE: u64 = 1 << 1;
/// Bit 2: user-mode accesses allowed.
pub const USER: u64 = 1 << 2;
/// Bit 3: page-level write-through (PWT), PAT index bit 0.
pub const PWT: u64 = 1 << 3;
/// Bit 4: page-level cache disable (PCD), PAT index bit 1.
pub const PCD: u64 = 1 << 4;
/// Bit 5: accessed (set by the MMU).
pub const ACCESSED: u64 = 1 << 5;
/// Bit 6: dirty (set by the MMU in leaf entries).
pub const DIRTY: u64 = 1 << 6;
/// Bit 7 in a PDE/PDPTE: page size (a 2 MiB / 1 GiB leaf; 1 GiB leaves
/// need CPUID.80000001H:EDX.Page1GB, bit 26).
pub const HUGE: u64 = 1 << 7;
/// Bit 7 in a 4 KiB PTE: PAT index bit 2.
pub const PAT_4K: u64 = 1 << 7;
/// Bit 12 in a 2 MiB PDE or a 1 GiB PDPTE: PAT index bit 2 (bit 7 is the
/// page size there).
pub const PAT_2M: u64 = 1 << 12;
/// Bit 9, ignored by the MMU: a *special* entry, with no frame-database
/// entry behind it (Linux's `_PAGE_SPECIAL`, set by `remap_pfn_range`).
pub const SPECIAL: u64 = 1 << 9;
/// Bit 10 of a table link (ignored by the MMU in non-leaf entries): the
/// table was allocated by this crate, which may free it when it empties.
/// Tables without it (a kernel's own) are never freed or changed.
pub const OWNED: u64 = 1 << 10;
/// Bit 63: execute disable (needs EFER.NXE).
pub const NO_EXECUTE: u64 = 1 << 63;
/// Bits 12-51 of a 4 KiB entry or a table pointer: the physical address.
pub const ADDR_4K: u64 = 0x000f_ffff_ffff_f000;
/// Bits 21-51 of a 2 MiB leaf: the physical address (bit 12 is PAT).
pub const ADDR_2M: u64 = 0x000f_ffff_ffe0_0000;
/// Bits 30-51 of a 1 GiB leaf: the physical address (bit 12 is PAT).
pub const ADDR_1G: u64 = 0x000f_ffff_c000_0000;

/// Size of a 4 KiB page: the crate's one page size,
/// [`hal::PAGE_SIZE`](crate::hal::PAGE_SIZE), as the `u64` that address
/// arithmetic wants.
pub const PAGE_4K: u64 = crate::hal::PAGE_SIZE as u64;
/// Size of a 2 MiB page.
pub const PAGE_2M: u64 = 2 << 20;
/// Size of a 1 GiB page.
pub const PAGE_1G: u64 = 1 << 30;

/// The PAT MSR (IA32_PAT, 0x277) value Linux programs: entries 0-7 are WB,
/// WC, UC-, UC, WB, WP, UC-, WT (memory types 6, 1, 7, 0, 6, 5, 7, 4).
pub const LINUX_PAT: u64 = 0x0407_0506_0007_0106;

/// A memory type for a mapping, selected through the PAT.
///
/// The PWT/PCD/PAT bits only mean these types once the kernel has loaded
/// [`LINUX_PAT`] into the IA32_PAT MSR (0x277) on every CPU, before any
/// mapping with a mode other than `WriteBack` or `Uncached` is used: with
/// the reset PAT (WB, WT, UC-, UC repeated), `WriteCombining` silently
/// becomes write-through and `WriteThrough` uncached. Writing the MSR is
/// the kernel's job (`x86_64::registers::model_specific::Msr::new(0x277)`),
/// followed by a full TLB and cache flush (SDM 12.12.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheMode {
    /// Write-back: ordinary memory.
    WriteBack,
    /// Write-combining: frame buffers.
    WriteCombining,
    /// UC-: uncached, but an MTRR may still make it write-combining.
    UncachedMinus,
    /// UC: strictly uncached: device registers.
    Uncached,
    /// Write-through.
    WriteThrough,
    /// Write-protected.
    WriteProtected,
}

impl CacheMode {
    /// The PAT index of this mode in [`LINUX_PAT`].
    pub const fn pat_index(self) -> u64 {
        match self {
            CacheMode::WriteBack => 0,
            CacheMode::WriteCombining => 1,
            CacheMode::UncachedMinus => 2,
            CacheMode::Uncached => 3,
            CacheMode::WriteProtected => 5,
            CacheMode::WriteThrough => 7,
        }
    }

    /// The PWT/PCD/PAT bits selecting this mode in a leaf entry: `huge`
    /// for a 2 MiB entry, whose PAT bit is bit 12 instead of bit 7.
    pub const fn pte_bits(self, huge: bool) -> u64 {
        let index = self.pat_index();
        let pat = if huge { PAT_2M } else { PAT_4K };
        (if index & 1 != 0 { PWT } else { 0 })
            | (if index & 2 != 0 { PCD } else { 0 })
            | (if index & 4 != 0 { pat } else { 0 })
    }

    /// The mode a leaf entry selects, under [`LINUX_PAT`].
    pub const fn of_entry(entry: Pte, huge: bool) -> CacheMode {
        let pat = if huge { PAT_2M } else { PAT_4K };
        let index = (if entry.has(PWT) { 1 } else { 0 })
            | (if entry.has(PCD) { 2 } else { 0 })
            | (if entry.has(pat) { 4 } else { 0 });
        match index {
            0 | 4 => CacheMode::WriteBack,
            1 => CacheMode::WriteCombining,
            2 | 6 => CacheMode::UncachedMinus,
            3 => CacheMode::Uncached,
            5 => CacheMode::WriteProtected,
            _ => CacheMode::WriteThrough,
        }
    }
}

/// One 8-byte page-table entry, as the MMU (or an IOMMU) reads it: what
/// the walker reads, builds and writes, in place of a bare `u64`. Its
/// meaning depends on the [`Format`] and the level; the bit constants of
/// this module name the bits.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Pte(u64);

impl Pte {
    /// The zero entry: nothing mapped, nothing linked, nothing kept.
    pub const EMPTY: Pte = Pte(0);

    /// The entry with these bits.
    #[inline]
    pub const fn from_bits(bits: u64) -> Pte {
        Pte(bits)
    }

    /// Its bits.
    #[inline]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every bit is clear.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every bit of `flags` is set.
    #[inline]
    pub const fn has(self, flags: u64) -> bool {
        self.0 & flags == flags
    }

    /// The entry with `flags` set too.
    #[inline]
    pub const fn with(self, flags: u64) -> Pte {
        Pte(self.0 | flags)
    }

    /// The entry with `flags` cleared.
    #[inline]
    pub const fn without(self, flags: u64) -> Pte {
        Pte(self.0 & !flags)
    }

    /// Whether bit 7 is set: in a live entry at level 2 or 3, a 2 MiB or
    /// 1 GiB leaf rather than a link (both formats).
    #[inline]
    pub const fn is_huge(self) -> bool {
        self.has(HUGE)
    }

    /// The table a link points to (bits 12-51).
    #[inline]
    pub fn table(self) -> PhysFrame {
        PhysFrame::containing_address(PhysAddr::new_truncate(self.0 & ADDR_4K))
    }

    /// The frame address of a leaf at `level`: bits 12-51 at level 1,
    /// 21-51 at level 2 and 30-51 at level 3 (bit 12 of a large leaf is
    /// PAT).
    #[inline]
    pub fn phys(self, level: u32) -> PhysAddr {
        let mask = match level {
            3 => ADDR_1G,
            2 => ADDR_2M,
            _ => ADDR_4K,
        };
        PhysAddr::new_truncate(self.0 & mask)
    }

    /// Every bit but the frame address of a leaf at `level`.
    #[inline]
    pub const fn flags(self, level: u32) -> u64 {
        let mask = match level {
            3 => ADDR_1G,
            2 => ADDR_2M,
            _ => ADDR_4K,
        };
        self.0 & !mask
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#x})", self.0)
    }
}

/// What a leaf entry says besides its frame's address: everything a
/// [`Format`] needs to build one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeafDesc {
    /// How the mapping may be accessed.
    pub prot: PageProt,
    /// A 2 MiB or 1 GiB leaf (page-size bit set, PAT in bit 12), not a
    /// 4 KiB one.
    pub huge: bool,
    /// A raw frame with nothing counted behind it (Linux's special PTE),
    /// not a counted page.
    pub special: bool,
    /// The execute-disable bit may be used (EFER.NXE is on; without it the
    /// bit is reserved and must stay clear).
    pub nx: bool,
}

impl LeafDesc {
    /// A 4 KiB leaf of a counted page.
    pub const fn page(prot: PageProt, nx: bool) -> LeafDesc {
        LeafDesc {
            prot,
            huge: false,
            special: false,
            nx,
        }
    }

    /// A 4 KiB special leaf: a raw frame.
    pub const fn raw(prot: PageProt, nx: bool) -> LeafDesc {
        LeafDesc {
            special: true,
            ..LeafDesc::page(prot, nx)
        }
    }

    /// The same leaf at 2 MiB or 1 GiB.
    pub const fn huge(self) -> LeafDesc {
        LeafDesc { huge: true, ..self }
    }
}

/// The format of a page-table hierarchy's entries: the CPU's ([`X86`]), or
/// an IOMMU's second-level tables ([`SecondLevel`], Intel VT-d). Both are
/// 4-level radix trees of 512 8-byte entries with the address in bits
/// 12-51 and the page-size bit 7 at levels 2 and 3; what differs is how an
/// entry says it is there, and where software may keep its own bits. One
/// walker serves both.
pub trait Format {
    /// Whether `entry` maps something or links a table.
    fn is_live(entry: Pte) -> bool;
    /// A link to `table`, which this crate allocated.
    fn table_link(table: PhysFrame) -> Pte;
    /// Whether a link's table was allocated by this crate.
    fn is_owned(link: Pte) -> bool;
    /// A leaf mapping the frame at `phys` (aligned to the leaf's size) as
    /// `desc` says.
    fn leaf(phys: PhysAddr, desc: LeafDesc) -> Pte;
    /// Whether a leaf is special.
    fn is_special(leaf: Pte) -> bool;
    /// `leaf` retired by a zap: not live any more (the MMU or IOMMU
    /// ignores it), but still holding the frame's address, so the page
    /// tables themselves list the frames to give back after the one TLB
    /// flush of the zap. The default clears bits 0 and 1 (X86's present
    /// and writable, VT-d's read and write) and sets [`RETIRED`]; a format
    /// whose liveness lives elsewhere overrides it.
    fn retire(leaf: Pte) -> Pte {
        leaf.without(0b11).with(RETIRED)
    }
    /// Whether `entry` is a leaf [`Format::retire`] made.
    fn is_retired(entry: Pte) -> bool {
        !Self::is_live(entry) && entry.has(RETIRED)
    }
}

/// Bit 11 of a retired (not live) entry, which hardware ignores in both
/// formats: a zap is giving its frame back.
pub const RETIRED: u64 = 1 << 11;

/// The CPU's 4-level paging entries (SDM 4.5).
#[derive(Clone, Copy, Debug)]
pub enum X86 {}

impl Format for X86 {
    #[inline]
    fn is_live(entry: Pte) -> bool {
        entry.has(PRESENT)
    }
    /// Present, writable and user-accessible (the leaves decide), marked
    /// [`OWNED`].
    #[inline]
    fn table_link(table: PhysFrame) -> Pte {
        Pte(table.start_address().as_u64() | PRESENT | WRITABLE | USER | OWNED)
    }
    #[inline]
    fn is_owned(link: Pte) -> bool {
        link.has(OWNED)
    }
    /// A user leaf; the cache mode's PAT bit is bit 12 in a huge one.
    #[inline]
    fn leaf(phys: PhysAddr, desc: LeafDesc) -> Pte {
        let prot = desc.prot;
        Pte(phys.as_u64()
            | PRESENT
            | USER
            | (if prot.writable { WRITABLE } else { 0 })
            | (if !prot.executable && desc.nx {
                NO_EXECUTE
            } else {
                0
            })
            | (if desc.huge { HUGE } else { 0 })
            | (if desc.special { SPECIAL } else { 0 })
            | prot.cache.pte_bits(desc.huge))
    }
    #[inline]
    fn is_special(leaf: Pte) -> bool {
        leaf.has(SPECIAL)
    }
}

/// Bit 0 of a VT-d second-level entry: reads allowed (VT-d spec 9.8,
/// "Second-Level Paging Entries"). An entry with neither R nor W is not
/// present: there is no present bit.
pub const SL_READ: u64 = 1 << 0;
/// Bit 1 of a second-level entry: writes allowed (VT-d spec 9.8).
pub const SL_WRITE: u64 = 1 << 1;
/// Bit 52 of a second-level link, ignored by the IOMMU (bits 52-61 are
/// available to software, VT-d spec 9.8): the crate allocated the table.
pub const SL_OWNED: u64 = 1 << 52;
/// Bit 53 of a second-level leaf, ignored by the IOMMU: a special leaf.
pub const SL_SPECIAL: u64 = 1 << 53;

/// Intel VT-d second-level (DMA remapping) entries (VT-d spec 9.8): read
/// and write permission bits instead of a present bit, no user, cache or
/// execute bits (bit 11, SNP, stays clear: QEMU's legacy mode faults on it).
#[derive(Clone, Copy, Debug)]
pub enum SecondLevel {}

impl Format for SecondLevel {
    #[inline]
    fn is_live(entry: Pte) -> bool {
        entry.bits() & (SL_READ | SL_WRITE) != 0
    }
    #[inline]
    fn table_link(table: PhysFrame) -> Pte {
        Pte(table.start_address().as_u64() | SL_READ | SL_WRITE | SL_OWNED)
    }
    #[inline]
    fn is_owned(link: Pte) -> bool {
        link.has(SL_OWNED)
    }
    /// Read always, write as `prot` says; no cache or execute bits.
    #[inline]
    fn leaf(phys: PhysAddr, desc: LeafDesc) -> Pte {
        Pte(phys.as_u64()
            | SL_READ
            | (if desc.prot.writable { SL_WRITE } else { 0 })
            | (if desc.huge { HUGE } else { 0 })
            | (if desc.special { SL_SPECIAL } else { 0 }))
    }
    #[inline]
    fn is_special(leaf: Pte) -> bool {
        leaf.has(SL_SPECIAL)
    }
}

/// The index of `va` in the table at `level` (4 = PML4 ... 1 = PT).
#[inline]
pub const fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_pat_layout() {
        let types: [u8; 8] = LINUX_PAT.to_le_bytes();
        // WB=6 WC=1 UC-=7 UC=0 WB=6 WP=5 UC-=7 WT=4 (SDM Table 12-10).
        assert_eq!(types, [6, 1, 7, 0, 6, 5, 7, 4]);
    }

    #[test]
    fn cache_mode_bits_round_trip_at_both_sizes() {
        use CacheMode::*;
        for mode in [
            WriteBack,
            WriteCombining,
            UncachedMinus,
            Uncached,
            WriteThrough,
            WriteProtected,
        ] {
            for huge in [false, true] {
                let bits = mode.pte_bits(huge);
                assert_eq!(
                    CacheMode::of_entry(Pte::from_bits(bits), huge),
                    mode,
                    "{mode:?} huge={huge}"
                );
                let memtype = LINUX_PAT.to_le_bytes()[mode.pat_index() as usize];
                assert_eq!(
                    memtype,
                    [6, 1, 7, 0, 4, 5][[
                        WriteBack,
                        WriteCombining,
                        UncachedMinus,
                        Uncached,
                        WriteThrough,
                        WriteProtected
                    ]
                    .iter()
                    .position(|&m| m == mode)
                    .unwrap()]
                );
            }
        }
        assert_eq!(Uncached.pte_bits(false), PCD | PWT);
        assert_eq!(WriteCombining.pte_bits(true), PWT);
        assert_eq!(
            WriteThrough.pte_bits(false),
            PAT_4K | PCD | PWT,
            "bit 7 in a 4 KiB PTE"
        );
        assert_eq!(
            WriteThrough.pte_bits(true),
            PAT_2M | PCD | PWT,
            "bit 12 in a 2 MiB PDE"
        );
    }

    #[test]
    fn leaves_are_built_from_their_description() {
        let phys = PhysAddr::new(0x20_0000);
        let wt = PageProt::READ_WRITE.with_cache(CacheMode::WriteThrough);
        let page = X86::leaf(phys, LeafDesc::page(wt, true));
        assert_eq!(
            page.bits(),
            0x20_0000 | PRESENT | USER | WRITABLE | NO_EXECUTE | PAT_4K | PCD | PWT
        );
        let huge = X86::leaf(phys, LeafDesc::raw(wt, false).huge());
        assert_eq!(
            huge.bits(),
            0x20_0000 | PRESENT | USER | WRITABLE | HUGE | SPECIAL | PAT_2M | PCD | PWT,
            "PAT in bit 12, no NX without EFER.NXE"
        );
        assert!(huge.is_huge() && X86::is_special(huge) && !X86::is_special(page));
        assert_eq!((huge.phys(2), huge.flags(2) & PAT_2M), (phys, PAT_2M));
        let sl = SecondLevel::leaf(phys, LeafDesc::raw(PageProt::READ_ONLY, true).huge());
        assert_eq!(sl.bits(), 0x20_0000 | SL_READ | HUGE | SL_SPECIAL);
        let retired = X86::retire(page);
        assert!(!X86::is_live(retired) && X86::is_retired(retired));
        assert_eq!(retired.phys(1), phys);
    }

    #[test]
    fn indexes() {
        let va = 0x0000_7f12_3456_7000u64;
        assert_eq!(index(va, 4), 0xfe);
        assert_eq!(index(va, 3), 0x48);
        assert_eq!(index(va, 2), 0x1a2);
        assert_eq!(index(va, 1), 0x167);
    }
}
