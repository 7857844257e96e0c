//! An address space: a PML4, its areas, and the mapping operations.
//!
//! Invariants, kept by every operation:
//! - no page-table page below the root is empty (an operation that empties
//!   or fails to fill one frees it again), so "undo" is "clear what this call
//!   wrote, then prune";
//! - every present non-special leaf maps a `Normal` frame and holds one
//!   reference and one map count on it; special leaves hold nothing;
//! - 2 MiB leaves are only made by `remap_pfn_range` and are special.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU32, Ordering};

use super::frame::FrameDb;
use super::pte::{self, ADDR_2M, ADDR_4K, HUGE, PAGE_2M, PAGE_4K, PRESENT, SPECIAL};
use super::tlb::{FULL_FLUSH_THRESHOLD, TlbFlush};
use super::vma::{PageProt, VmFlags, Vma};
use super::{MmError, frame::PageRef};
use crate::hal::Hal;

/// Areas an address space holds.
pub const MAX_VMAS: usize = 64;
/// The end of the lower (user) half of the canonical address space.
pub const USER_END: u64 = 1 << 47;

/// An area's handle: one `map_vma` of one address space. Once the area is
/// unmapped the handle is stale ([`MmError::NoSuchVma`]) even if a new area
/// takes its slot, and another address space refuses it
/// ([`MmError::ForeignVma`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmaId {
    index: usize,
    generation: u32,
    space: u32,
}

/// Address-space identities, so a `VmaId` of one is refused by another.
static NEXT_SPACE_ID: AtomicU32 = AtomicU32::new(1);

/// Page-table frames unlinked and waiting for the TLB flush that must come
/// before they are reused (Linux's `mmu_gather` of tables): a CPU may hold a
/// paging-structure entry pointing into a table until then.
struct TableGather {
    frames: [u64; GATHER_TABLES],
    count: usize,
}

/// Tables one gather holds before it flushes and frees them.
const GATHER_TABLES: usize = 16;

/// One leaf entry found by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The first virtual address it maps.
    pub va: u64,
    /// The raw entry.
    pub entry: u64,
    /// 1 for a 4 KiB page, 2 for a 2 MiB page.
    pub level: u32,
    table: u64,
    index: usize,
}

impl Leaf {
    /// Bytes it maps.
    pub fn size(&self) -> u64 {
        if self.level == 2 { PAGE_2M } else { PAGE_4K }
    }

    /// The physical address of the frame it maps (of its first byte: for a
    /// 2 MiB leaf the 2 MiB frame's base, not the address of `va` inside
    /// it; see [`Leaf::phys_of`]).
    pub fn phys(&self) -> u64 {
        if self.level == 2 {
            self.entry & ADDR_2M
        } else {
            self.entry & ADDR_4K
        }
    }

    /// The physical address `va` maps to, if this leaf covers `va`.
    pub fn phys_of(&self, va: u64) -> Option<u64> {
        let offset = va.checked_sub(self.va).filter(|&o| o < self.size())?;
        Some(self.phys() + offset)
    }

    /// Whether it is special (no frame-database entry behind it).
    pub fn is_special(&self) -> bool {
        self.entry & SPECIAL != 0
    }
}

/// What `insert_pfn` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// A new entry was written.
    New,
    /// Something was already mapped there and was left as it is.
    AlreadyMapped,
}

/// What [`AddressSpace::handle_write_fault`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// The page was copied: the faulting address now maps a private copy.
    Copied,
    /// The page was the mapping's alone and was made writable in place.
    Reused,
    /// The entry is already writable (another CPU or an earlier fault won):
    /// retrying the access will succeed.
    Spurious,
}

/// `insert_pages` stopped: how many pages went in before the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialInsert {
    /// Pages inserted (from the first), which stay mapped and counted.
    pub inserted: usize,
    /// Why it stopped.
    pub error: MmError,
}

impl core::fmt::Display for PartialInsert {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} after inserting {} pages", self.error, self.inserted)
    }
}

impl core::error::Error for PartialInsert {}

/// A 4-level address space over frames from a [`FrameDb`].
///
/// Dropping it unmaps every area (giving back every count) and frees its
/// page tables, the root included: it must not be loaded in CR3 by then.
pub struct AddressSpace<'a, H: Hal, T: TlbFlush> {
    db: &'a FrameDb<'a>,
    root: u64,
    id: u32,
    vmas: [Option<Vma>; MAX_VMAS],
    /// Bumped when a slot's area is unmapped, so its old ids go stale.
    vma_generations: [u32; MAX_VMAS],
    /// PML4 slots shared with the kernel, never touched by this space.
    shared: [bool; 512],
    tlb: T,
    nx: bool,
    entries_written: u64,
    _hal: PhantomData<H>,
}

impl TableGather {
    const fn new() -> TableGather {
        TableGather {
            frames: [0; GATHER_TABLES],
            count: 0,
        }
    }
}

fn span(level: u32) -> u64 {
    1 << (12 + 9 * (level - 1))
}

impl<'a, H: Hal, T: TlbFlush> AddressSpace<'a, H, T> {
    /// An empty address space with its root table from `db`. `nx` says
    /// whether the execute-disable bit may be used (EFER.NXE is on).
    pub fn new(db: &'a FrameDb<'a>, tlb: T, nx: bool) -> Result<Self, MmError> {
        let root = db.alloc_table()? << 12;
        let space = AddressSpace {
            db,
            root,
            id: NEXT_SPACE_ID.fetch_add(1, Ordering::Relaxed),
            vmas: [None; MAX_VMAS],
            vma_generations: [0; MAX_VMAS],
            shared: [false; 512],
            tlb,
            nx,
            entries_written: 0,
            _hal: PhantomData,
        };
        space.zero_table(root);
        Ok(space)
    }

    /// The physical address of the PML4 (what CR3 loads).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The TLB flusher.
    pub fn tlb_mut(&mut self) -> &mut T {
        &mut self.tlb
    }

    /// Page-table entries written since creation (leaves and table links).
    pub fn entries_written(&self) -> u64 {
        self.entries_written
    }

    /// Copies PML4 entries `slots` from the table at `kernel_root` (the
    /// kernel's own mappings), so the kernel keeps running when this space
    /// is loaded. Those slots are never modified or freed by this space.
    ///
    /// # Safety
    /// `kernel_root` must be the physical address of a live PML4 whose
    /// entries in `slots` stay valid for the life of this address space.
    pub unsafe fn share_kernel_slots(
        &mut self,
        kernel_root: u64,
        slots: impl IntoIterator<Item = usize>,
    ) {
        for slot in slots.into_iter().filter(|&s| s < 512) {
            let entry = self.read(kernel_root, slot);
            self.write(self.root, slot, entry);
            self.shared[slot] = true;
        }
    }

    fn entry_ptr(&self, table: u64, index: usize) -> *mut u64 {
        debug_assert!(index < 512 && table.is_multiple_of(PAGE_4K));
        // SAFETY: `table` is a page-table frame (the root, one we allocated,
        // or a kernel table shared by `share_kernel_slots`), which the HAL
        // maps; `index < 512` keeps the pointer inside it.
        unsafe { H::phys_to_virt(table).as_ptr().cast::<u64>().add(index) }
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        // SAFETY: `entry_ptr` is in bounds and aligned; the MMU may read the
        // entry concurrently, so it is accessed with single volatile loads.
        unsafe { self.entry_ptr(table, index).read_volatile() }
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        self.entries_written += 1;
        // SAFETY: as for `read`; a single volatile store, so the MMU never
        // sees a torn entry.
        unsafe { self.entry_ptr(table, index).write_volatile(value) }
    }

    fn zero_table(&self, table: u64) {
        // SAFETY: a freshly allocated page-table frame, mapped by the HAL
        // and not yet linked anywhere.
        unsafe {
            H::phys_to_virt(table)
                .as_ptr()
                .write_bytes(0, PAGE_4K as usize)
        }
    }

    fn table_is_empty(&self, table: u64) -> bool {
        (0..512).all(|i| self.read(table, i) == 0)
    }

    // ---- areas ----

    /// Creates an area `[start, end)` with `flags` (what `mmap` does before
    /// a driver's `mmap` hook fills it).
    pub fn map_vma(&mut self, start: u64, end: u64, flags: VmFlags) -> Result<VmaId, MmError> {
        if !start.is_multiple_of(PAGE_4K) || !end.is_multiple_of(PAGE_4K) || start >= end {
            return Err(MmError::Misaligned);
        }
        if end > USER_END {
            return Err(MmError::OutOfRange);
        }
        let overlaps_kernel =
            (pte::index(start, 4)..=pte::index(end - 1, 4)).any(|s| self.shared[s]);
        let overlaps_vma = self
            .vmas
            .iter()
            .flatten()
            .any(|v| v.start < end && start < v.end);
        if overlaps_kernel || overlaps_vma {
            return Err(MmError::Overlap);
        }
        let slot = self
            .vmas
            .iter()
            .position(Option::is_none)
            .ok_or(MmError::TooManyVmas)?;
        self.vmas[slot] = Some(Vma {
            start,
            end,
            flags,
            pgoff: 0,
        });
        Ok(self.vma_id(slot))
    }

    fn vma_id(&self, index: usize) -> VmaId {
        VmaId {
            index,
            generation: self.vma_generations[index],
            space: self.id,
        }
    }

    /// The slot of the live area `id` names.
    fn vma_index(&self, id: VmaId) -> Result<usize, MmError> {
        if id.space != self.id {
            return Err(MmError::ForeignVma);
        }
        let live = self.vmas.get(id.index).is_some_and(Option::is_some)
            && self.vma_generations[id.index] == id.generation;
        live.then_some(id.index).ok_or(MmError::NoSuchVma)
    }

    /// The area `id`.
    pub fn vma(&self, id: VmaId) -> Result<&Vma, MmError> {
        let index = self.vma_index(id)?;
        self.vmas[index].as_ref().ok_or(MmError::NoSuchVma)
    }

    fn vma_mut(&mut self, id: VmaId) -> Result<&mut Vma, MmError> {
        let index = self.vma_index(id)?;
        self.vmas[index].as_mut().ok_or(MmError::NoSuchVma)
    }

    /// Removes area `id` and everything mapped in it; `id` is stale after.
    pub fn unmap_vma(&mut self, id: VmaId) -> Result<(), MmError> {
        let vma = *self.vma(id)?;
        self.zap(vma.start, vma.end)?;
        self.vmas[id.index] = None;
        self.vma_generations[id.index] = self.vma_generations[id.index].wrapping_add(1);
        Ok(())
    }

    fn check_page(&self, vma: &Vma, addr: u64, len: u64) -> Result<(), MmError> {
        if !addr.is_multiple_of(PAGE_4K) || !len.is_multiple_of(PAGE_4K) || len == 0 {
            return Err(MmError::Misaligned);
        }
        if !vma.contains_range(addr, len) {
            return Err(MmError::OutOfRange);
        }
        Ok(())
    }

    // ---- walking ----

    /// The table at `level` (1 = PT, 2 = PD) covering `va`, allocating the
    /// missing tables on the way. A leaf above `level` in the way is `Busy`.
    /// On error, nothing it allocated is left behind.
    fn walk_alloc(&mut self, va: u64, level: u32) -> Result<u64, MmError> {
        let mut table = self.root;
        for current in (level + 1..=4).rev() {
            let index = pte::index(va, current);
            let entry = self.read(table, index);
            if entry & PRESENT != 0 {
                if entry & HUGE != 0 {
                    self.prune(va, va + PAGE_4K);
                    return Err(MmError::Busy);
                }
                table = entry & ADDR_4K;
                continue;
            }
            let child = match self.db.alloc_table() {
                Ok(pfn) => pfn << 12,
                Err(e) => {
                    self.prune(va, va + PAGE_4K);
                    return Err(e);
                }
            };
            self.zero_table(child);
            // Tables are user-accessible and writable; the leaves decide.
            self.write(table, index, child | PRESENT | pte::WRITABLE | pte::USER);
            table = child;
        }
        Ok(table)
    }

    /// The first leaf mapping anything in `[va, end)`.
    pub fn next_leaf(&self, mut va: u64, end: u64) -> Option<Leaf> {
        'restart: while va < end {
            let mut table = self.root;
            for level in (1..=4).rev() {
                let index = pte::index(va, level);
                let entry = self.read(table, index);
                let size = span(level);
                if entry & PRESENT == 0 || (level == 4 && self.shared[index]) {
                    va = (va & !(size - 1)).checked_add(size)?;
                    continue 'restart;
                }
                if level == 1 || entry & HUGE != 0 {
                    return Some(Leaf {
                        va: va & !(size - 1),
                        entry,
                        level,
                        table,
                        index,
                    });
                }
                table = entry & ADDR_4K;
            }
        }
        None
    }

    /// Every leaf in `[start, end)`, in address order.
    pub fn leaves(&self, start: u64, end: u64) -> impl Iterator<Item = Leaf> + '_ {
        let mut va = start;
        core::iter::from_fn(move || {
            let leaf = self.next_leaf(va, end)?;
            va = leaf.va + leaf.size();
            Some(leaf)
        })
    }

    /// The leaf mapping `va`, if any.
    pub fn translate(&self, va: u64) -> Option<Leaf> {
        self.next_leaf(va, va.checked_add(1)?)
            .filter(|leaf| leaf.va <= va)
    }

    /// Frees the page tables under `[start, end)` that are empty: unlinks
    /// them, flushes, then frees them.
    fn prune(&mut self, start: u64, end: u64) {
        let mut gather = TableGather::new();
        self.prune_level(&mut gather, self.root, 4, start, end);
        if gather.count > 0 {
            self.tlb.flush_all();
            self.free_gathered(&mut gather);
        }
    }

    /// Gives gathered table frames back. Only after a flush that followed
    /// their unlinking.
    fn free_gathered(&mut self, gather: &mut TableGather) {
        for &frame in &gather.frames[..gather.count] {
            self.db.free_table(frame >> 12);
        }
        gather.count = 0;
    }

    /// Unlinks the empty tables under `table` into `gather` (flushing and
    /// freeing when it fills); returns whether `table` is empty afterwards.
    fn prune_level(
        &mut self,
        gather: &mut TableGather,
        table: u64,
        level: u32,
        start: u64,
        end: u64,
    ) -> bool {
        let size = span(level);
        let mut va = start;
        while va < end {
            let index = pte::index(va, level);
            let slot_start = va & !(size - 1);
            let slot_end = slot_start.saturating_add(size);
            let entry = self.read(table, index);
            let shared = level == 4 && self.shared[index];
            if level > 1 && entry & PRESENT != 0 && entry & HUGE == 0 && !shared {
                let child = entry & ADDR_4K;
                if self.prune_level(gather, child, level - 1, va, end.min(slot_end)) {
                    self.write(table, index, 0);
                    if gather.count == GATHER_TABLES {
                        self.tlb.flush_all();
                        self.free_gathered(gather);
                    }
                    gather.frames[gather.count] = child;
                    gather.count += 1;
                }
            }
            if index == 511 {
                break;
            }
            va = slot_end;
        }
        level < 4 && self.table_is_empty(table)
    }

    // ---- insertion ----

    /// Inserts `page` at `addr` in area `id` (Linux's `vm_insert_page`).
    ///
    /// The area must not be `PFNMAP`; it becomes `MIXEDMAP`. The page must be
    /// an allocated `Normal` page; it gains a reference and a map count. An
    /// existing entry is `Busy`. The entry gets the area's protection.
    pub fn insert_page(&mut self, id: VmaId, addr: u64, page: &PageRef<'_>) -> Result<(), MmError> {
        let vma = *self.vma(id)?;
        if vma.flags.contains(VmFlags::PFNMAP) {
            return Err(MmError::WrongVmaKind);
        }
        self.check_page(&vma, addr, PAGE_4K)?;
        if !self.db.insertable(page.pfn()) {
            return Err(MmError::NotInsertable);
        }
        let pt = self.walk_alloc(addr, 1)?;
        let index = pte::index(addr, 1);
        if self.read(pt, index) != 0 {
            self.prune(addr, addr + PAGE_4K);
            return Err(MmError::Busy);
        }
        self.write(
            pt,
            index,
            page.phys() | vma.page_prot().leaf_bits(false, self.nx),
        );
        self.db.map(page.pfn());
        self.vma_mut(id)?.flags |= VmFlags::MIXEDMAP;
        Ok(())
    }

    /// Inserts `pages` at consecutive addresses from `addr` (Linux 5.8's
    /// `vm_insert_pages`), walking the upper levels once per page table.
    ///
    /// On error, the first [`PartialInsert::inserted`] pages are mapped and
    /// counted as by `insert_page`, and nothing else changed.
    pub fn insert_pages(
        &mut self,
        id: VmaId,
        addr: u64,
        pages: &[PageRef<'_>],
    ) -> Result<(), PartialInsert> {
        let fail = |inserted, error| PartialInsert { inserted, error };
        let vma = *self.vma(id).map_err(|e| fail(0, e))?;
        if vma.flags.contains(VmFlags::PFNMAP) {
            return Err(fail(0, MmError::WrongVmaKind));
        }
        let len = (pages.len() as u64)
            .checked_mul(PAGE_4K)
            .ok_or(fail(0, MmError::OutOfRange))?;
        if pages.is_empty() {
            return Ok(());
        }
        self.check_page(&vma, addr, len).map_err(|e| fail(0, e))?;
        let prot = vma.page_prot().leaf_bits(false, self.nx);
        let mut done = 0;
        let result = loop {
            if done == pages.len() {
                break Ok(());
            }
            let va = addr + done as u64 * PAGE_4K;
            let pt = match self.walk_alloc(va, 1) {
                Ok(pt) => pt,
                Err(e) => break Err(fail(done, e)),
            };
            let batch_end = pages.len().min(done + 512 - pte::index(va, 1));
            let (first, batch_start) = (pte::index(va, 1), done);
            let entries = self.entry_ptr(pt, 0);
            let mut error = None;
            for (i, page) in pages.iter().enumerate().take(batch_end).skip(done) {
                // SAFETY: `entries` is the page table `pt` (as `entry_ptr`
                // promises) and the batch stays inside it: `first + i - batch_start`
                // is below 512 by the choice of `batch_end`.
                let slot = unsafe { entries.add(first + i - batch_start) };
                // SAFETY: as above; a single volatile load of the entry.
                if unsafe { slot.read_volatile() } != 0 {
                    error = Some(fail(i, MmError::Busy));
                    break;
                }
                if !self.db.try_map(page.pfn()) {
                    error = Some(fail(i, MmError::NotInsertable));
                    break;
                }
                // SAFETY: as above; a single volatile store, never torn.
                unsafe { slot.write_volatile(page.phys() | prot) };
                self.entries_written += 1;
                done = i + 1;
            }
            if let Some(error) = error {
                self.prune(va, va + PAGE_4K);
                break Err(error);
            }
        };
        if done > 0 {
            self.vma_mut(id).map_err(|e| fail(done, e))?.flags |= VmFlags::MIXEDMAP;
        }
        result
    }

    /// Maps the physical range from frame `pfn`, `size` bytes, at `addr`
    /// (Linux's `remap_pfn_range`): special entries with no frame-database
    /// entries behind them, 2 MiB entries where virtual and physical
    /// alignment allow. The area becomes `PFNMAP | IO | DONTEXPAND |
    /// DONTDUMP`; a copy-on-write area must be covered whole and records
    /// `pgoff = pfn`. On error nothing stays mapped.
    pub fn remap_pfn_range(
        &mut self,
        id: VmaId,
        addr: u64,
        pfn: u64,
        size: u64,
        prot: PageProt,
    ) -> Result<(), MmError> {
        let vma = *self.vma(id)?;
        if vma.flags.contains(VmFlags::MIXEDMAP) {
            return Err(MmError::WrongVmaKind);
        }
        self.check_page(&vma, addr, size)?;
        let phys = pfn
            .checked_mul(PAGE_4K)
            .filter(|p| p.checked_add(size).is_some_and(|e| e <= 1 << 52));
        let phys = phys.ok_or(MmError::OutOfRange)?;
        if vma.flags.is_cow() && (addr != vma.start || addr + size != vma.end) {
            return Err(MmError::PartialCowRemap);
        }
        let end = addr + size;
        let mut va = addr;
        if let Err(e) = self.remap_entries(&mut va, end, phys.wrapping_sub(addr), prot) {
            self.clear_special(addr, va);
            self.prune(addr, end);
            return Err(e);
        }
        let vma = self.vma_mut(id)?;
        vma.flags |= VmFlags::PFNMAP | VmFlags::IO | VmFlags::DONTEXPAND | VmFlags::DONTDUMP;
        if vma.flags.is_cow() {
            vma.pgoff = pfn;
        }
        Ok(())
    }

    /// `remap_pfn_range` of device memory with memory type `cache` (Linux's
    /// `io_remap_pfn_range` with a `pgprot_*` cache attribute).
    pub fn io_remap_pfn_range(
        &mut self,
        id: VmaId,
        addr: u64,
        pfn: u64,
        size: u64,
        prot: PageProt,
        cache: pte::CacheMode,
    ) -> Result<(), MmError> {
        self.remap_pfn_range(id, addr, pfn, size, prot.with_cache(cache))
    }

    /// Writes special entries for `[*va, end)`, mapping `va` to
    /// `va + delta`; advances `*va` past what it wrote.
    fn remap_entries(
        &mut self,
        va: &mut u64,
        end: u64,
        delta: u64,
        prot: PageProt,
    ) -> Result<(), MmError> {
        while *va < end {
            let pa = va.wrapping_add(delta);
            let huge_fits =
                va.is_multiple_of(PAGE_2M) && pa.is_multiple_of(PAGE_2M) && end - *va >= PAGE_2M;
            if huge_fits {
                let pd = self.walk_alloc(*va, 2)?;
                let index = pte::index(*va, 2);
                let entry = self.read(pd, index);
                if entry == 0 {
                    self.write(
                        pd,
                        index,
                        pa | HUGE | SPECIAL | prot.leaf_bits(true, self.nx),
                    );
                    *va += PAGE_2M;
                    continue;
                }
                if entry & HUGE != 0 {
                    return Err(MmError::Busy);
                }
                // A page table is already there: fall through to 4 KiB
                // entries, which find anything mapped in it.
            }
            let pt = self.walk_alloc(*va, 1)?;
            let table_end = (*va & !(PAGE_2M - 1)) + PAGE_2M;
            while *va < end.min(table_end) {
                let index = pte::index(*va, 1);
                if self.read(pt, index) != 0 {
                    return Err(MmError::Busy);
                }
                let pa = va.wrapping_add(delta);
                self.write(pt, index, pa | SPECIAL | prot.leaf_bits(false, self.nx));
                *va += PAGE_4K;
            }
        }
        Ok(())
    }

    /// Clears the special entries in `[start, end)` that a failed remap
    /// wrote (they hold no references), with the TLB flushes that needs.
    fn clear_special(&mut self, start: u64, end: u64) {
        let mut pages = 0usize;
        let mut va = start;
        while let Some(leaf) = self.next_leaf(va, end) {
            self.write(leaf.table, leaf.index, 0);
            pages += (leaf.size() / PAGE_4K) as usize;
            if pages <= FULL_FLUSH_THRESHOLD {
                self.tlb.flush_page(leaf.va);
            }
            va = leaf.va + leaf.size();
        }
        if pages > FULL_FLUSH_THRESHOLD {
            self.tlb.flush_all();
        }
    }

    /// Maps frame `pfn` at `addr` with a special entry (Linux's
    /// `vmf_insert_pfn`): the area must be `PFNMAP` or `MIXEDMAP` (not both,
    /// and a `PFNMAP` one not copy-on-write). An existing entry is left as it
    /// is. In a `MIXEDMAP` area a frame the database counts is refused
    /// (`CountedFrame`: insert it with `insert_page`); in a `PFNMAP` area
    /// any frame is taken, as by `remap_pfn_range`, and keeping it alive is
    /// the driver's business.
    pub fn insert_pfn(&mut self, id: VmaId, addr: u64, pfn: u64) -> Result<Inserted, MmError> {
        let vma = *self.vma(id)?;
        let pfnmap = vma.flags.contains(VmFlags::PFNMAP);
        let mixed = vma.flags.contains(VmFlags::MIXEDMAP);
        if pfnmap == mixed || (pfnmap && vma.flags.is_cow()) {
            return Err(MmError::WrongVmaKind);
        }
        self.check_page(&vma, addr, PAGE_4K)?;
        let phys = pfn
            .checked_mul(PAGE_4K)
            .filter(|&p| p < 1 << 52)
            .ok_or(MmError::OutOfRange)?;
        // Linux refuses a `pfn_valid` frame here: its entry would hold no
        // reference, so the page could be freed while still mapped.
        if mixed && self.db.state(pfn).is_some() {
            return Err(MmError::CountedFrame);
        }
        if self.translate(addr).is_some() {
            return Ok(Inserted::AlreadyMapped);
        }
        let pt = self.walk_alloc(addr, 1)?;
        self.write(
            pt,
            pte::index(addr, 1),
            phys | SPECIAL | vma.page_prot().leaf_bits(false, self.nx),
        );
        Ok(Inserted::New)
    }

    // ---- lookup ----

    /// The counted page mapped at `addr` in area `id` (Linux's
    /// `vm_normal_page`): `None` for special entries (raw PFNs, with no
    /// frame-database entry to count) and for nothing mapped.
    pub fn normal_page(&self, id: VmaId, addr: u64) -> Result<Option<PageRef<'a>>, MmError> {
        let vma = self.vma(id)?;
        if !vma.contains_range(addr, 1) {
            return Err(MmError::OutOfRange);
        }
        Ok(self
            .translate(addr)
            .filter(|leaf| !leaf.is_special())
            .and_then(|leaf| self.db.get(leaf.phys() >> 12)))
    }

    // ---- faults ----

    /// Handles a write fault at `addr` on a present, read-only entry of a
    /// copy-on-write area (Linux's `do_wp_page`): the faulting address gets a
    /// private, writable copy of the page, or the page itself when this
    /// mapping is its only holder. A special entry (a raw PFN) is copied into
    /// a new counted page; a 2 MiB special entry is first split into 4 KiB
    /// entries (as Linux's `wp_huge_pmd` falls back to the PTE path) and only
    /// the faulting page is copied. Errors: nothing mapped (`NotMapped`),
    /// outside any area (`OutOfRange`), an area that may not be written
    /// (`Protection`), or no memory for the copy or the split (nothing
    /// changed).
    ///
    /// Where this differs from Linux, on purpose:
    /// - A counted page that `insert_page` put into a private area is reused
    ///   in place when this mapping holds its only reference and map count
    ///   (the driver has dropped its `PageRef`, so no one else can see the
    ///   page); Linux copies any page it did not allocate as anonymous
    ///   memory. While the driver holds its reference, the page is copied.
    /// - A read-only entry in a shared writable area is `Protection`: the
    ///   driver chose read-only for it (there is no `pfn_mkwrite` hook),
    ///   where Linux would make it writable.
    pub fn handle_write_fault(&mut self, addr: u64) -> Result<WriteFault, MmError> {
        let vma = *self
            .vmas
            .iter()
            .flatten()
            .find(|v| (v.start..v.end).contains(&addr))
            .ok_or(MmError::OutOfRange)?;
        if !vma.flags.contains(VmFlags::WRITE) {
            return Err(MmError::Protection);
        }
        let mut leaf = self.translate(addr).ok_or(MmError::NotMapped)?;
        if leaf.entry & pte::WRITABLE != 0 {
            return Ok(WriteFault::Spurious);
        }
        if !vma.flags.is_cow() {
            return Err(MmError::Protection);
        }
        let mut copy = None;
        if leaf.level == 2 {
            // The copy's page first: if the split then fails, dropping it
            // leaves everything as it was.
            let page = self.db.alloc_page()?;
            let table = self.db.alloc_table()? << 12;
            self.split_leaf(&leaf, table);
            copy = Some(page);
            leaf = self.translate(addr).ok_or(MmError::NotMapped)?;
        }
        let old_pfn = leaf.phys() >> 12;
        let counted = !leaf.is_special();
        let only_holder = counted
            && self
                .db
                .state(old_pfn)
                .is_some_and(|s| s.refcount == 1 && s.mapcount == 1);
        if only_holder {
            self.write(leaf.table, leaf.index, leaf.entry | pte::WRITABLE);
            self.tlb.flush_page(leaf.va);
            return Ok(WriteFault::Reused);
        }
        let copy = match copy {
            Some(page) => page,
            None => self.db.alloc_page()?,
        };
        // SAFETY: the source is the frame the entry maps (RAM the HAL maps:
        // a counted page, or a raw frame a driver remapped), the destination
        // a page just allocated to us; both are 4 KiB and distinct.
        unsafe {
            core::ptr::copy_nonoverlapping(
                H::phys_to_virt(leaf.phys()).as_ptr(),
                H::phys_to_virt(copy.phys()).as_ptr(),
                PAGE_4K as usize,
            );
        }
        // The copy is ordinary memory: write-back, whatever the original was.
        let cache = pte::PWT | pte::PCD | pte::PAT_4K;
        let flags = (leaf.entry & !ADDR_4K & !SPECIAL & !cache) | pte::WRITABLE;
        self.write(leaf.table, leaf.index, copy.phys() | flags);
        self.db.map(copy.pfn());
        self.tlb.flush_page(leaf.va);
        if counted {
            self.db.unmap(old_pfn);
        }
        Ok(WriteFault::Copied)
    }

    // ---- removal ----

    /// Unmaps `[start, end)` of area `id` (Linux's `zap_vma_ptes`): clears
    /// the entries, gives back the reference and map count of every counted
    /// page, frees page tables left empty, flushes the TLB. A 2 MiB entry
    /// covered only in part is split first (which needs a page table: the
    /// only way this fails, with nothing changed).
    pub fn zap_range(&mut self, id: VmaId, start: u64, end: u64) -> Result<(), MmError> {
        let vma = *self.vma(id)?;
        if end < start {
            return Err(MmError::OutOfRange);
        }
        self.check_page(&vma, start, end - start)?;
        self.zap(start, end)
    }

    fn zap(&mut self, start: u64, end: u64) -> Result<(), MmError> {
        self.split_boundaries(start, end)?;
        // Frames are given back only after their entries are flushed:
        // collect them, flush, then drop the counts.
        const BATCH: usize = 64;
        let mut pending = [0u64; BATCH];
        let mut count = 0;
        let mut pages = 0usize;
        // Entries cleared without an `invlpg` since the last full flush.
        let mut unflushed = false;
        let mut va = start;
        while let Some(leaf) = self.next_leaf(va, end) {
            if !leaf.is_special() && count == BATCH {
                self.tlb.flush_all();
                unflushed = false;
                for &pfn in &pending {
                    self.db.unmap(pfn);
                }
                count = 0;
            }
            self.write(leaf.table, leaf.index, 0);
            pages += (leaf.size() / PAGE_4K) as usize;
            if pages <= FULL_FLUSH_THRESHOLD {
                self.tlb.flush_page(leaf.va);
            } else {
                unflushed = true;
            }
            if !leaf.is_special() {
                pending[count] = leaf.phys() >> 12;
                count += 1;
            }
            va = leaf.va + leaf.size();
        }
        // Unlink the emptied tables before the last flush, so one flush
        // covers both the leaves and the paging-structure entries; pages and
        // tables are given back only after it.
        let mut gather = TableGather::new();
        self.prune_level(&mut gather, self.root, 4, start, end);
        if unflushed || gather.count > 0 {
            self.tlb.flush_all();
        }
        for &pfn in &pending[..count] {
            self.db.unmap(pfn);
        }
        self.free_gathered(&mut gather);
        Ok(())
    }

    /// Splits the 2 MiB entries that `[start, end)` covers only in part into
    /// 512 4 KiB entries mapping the same frames. Allocates every table first,
    /// so it either splits all or changes nothing.
    fn split_boundaries(&mut self, start: u64, end: u64) -> Result<(), MmError> {
        let partial = |leaf: Option<Leaf>| {
            leaf.filter(|l| l.level == 2 && (l.va < start || l.va + PAGE_2M > end))
        };
        let first = partial(self.translate(start));
        let last = partial(self.translate(end - 1)).filter(|l| Some(l.va) != first.map(|f| f.va));
        let mut tables = [0u64; 2];
        for (i, _) in first.iter().chain(last.iter()).enumerate() {
            match self.db.alloc_table() {
                Ok(pfn) => tables[i] = pfn << 12,
                Err(e) => {
                    tables[..i]
                        .iter()
                        .for_each(|&t| self.db.free_table(t >> 12));
                    return Err(e);
                }
            }
        }
        for (leaf, table) in first.iter().chain(last.iter()).zip(tables) {
            self.split_leaf(leaf, table);
        }
        Ok(())
    }

    /// Replaces 2 MiB `leaf` by the fresh table frame `table` holding 512
    /// 4 KiB entries that map the same frames with the same bits.
    fn split_leaf(&mut self, leaf: &Leaf, table: u64) {
        self.zero_table(table);
        let base = leaf.entry & ADDR_2M;
        let mut flags = leaf.entry & !ADDR_2M & !HUGE & !pte::PAT_2M;
        if leaf.entry & pte::PAT_2M != 0 {
            flags |= pte::PAT_4K;
        }
        for i in 0..512 {
            self.write(table, i, (base + i as u64 * PAGE_4K) | flags);
        }
        self.write(
            leaf.table,
            leaf.index,
            table | PRESENT | pte::WRITABLE | pte::USER,
        );
        self.tlb.flush_page(leaf.va);
    }

    // ---- fork ----

    /// Copies area `id` and its mappings into `child` as `fork` does:
    /// entries are copied as they are, counted pages gain a reference and a
    /// map count, special entries gain nothing. In a copy-on-write area
    /// every writable entry, special ones included, is write-protected on
    /// both sides (Linux's `copy_present_pte`), so a write in either space
    /// faults and gets its own copy instead of writing a shared frame.
    pub fn fork_range(
        &mut self,
        id: VmaId,
        child: &mut AddressSpace<'a, H, T>,
    ) -> Result<VmaId, MmError> {
        let vma = *self.vma(id)?;
        let child_id = child.map_vma(vma.start, vma.end, vma.flags)?;
        if let Some(slot) = child.vmas[child_id.index].as_mut() {
            slot.pgoff = vma.pgoff;
        }
        let cow_protect = |leaf: &Leaf| vma.flags.is_cow() && leaf.entry & pte::WRITABLE != 0;
        let mut va = vma.start;
        while let Some(leaf) = self.next_leaf(va, vma.end) {
            let entry = if cow_protect(&leaf) {
                leaf.entry & !pte::WRITABLE
            } else {
                leaf.entry
            };
            let table = match child.walk_alloc(leaf.va, leaf.level) {
                Ok(table) => table,
                Err(e) => {
                    // Unmapping the child's copy gives back every count taken.
                    let _ = child.unmap_vma(child_id);
                    return Err(e);
                }
            };
            child.write(table, pte::index(leaf.va, leaf.level), entry);
            if !leaf.is_special() {
                self.db.map(leaf.phys() >> 12);
            }
            va = leaf.va + leaf.size();
        }
        // Only now that the copy is whole: write-protect the parent's side.
        let mut va = vma.start;
        while let Some(leaf) = self.next_leaf(va, vma.end) {
            if cow_protect(&leaf) {
                self.write(leaf.table, leaf.index, leaf.entry & !pte::WRITABLE);
                self.tlb.flush_page(leaf.va);
            }
            va = leaf.va + leaf.size();
        }
        Ok(child_id)
    }
}

impl<H: Hal, T: TlbFlush> Drop for AddressSpace<'_, H, T> {
    fn drop(&mut self) {
        for slot in 0..MAX_VMAS {
            if self.vmas[slot].is_some() {
                // Whole areas never split a 2 MiB entry, so this cannot fail.
                let _ = self.unmap_vma(self.vma_id(slot));
            }
        }
        self.db.free_table(self.root >> 12);
    }
}
