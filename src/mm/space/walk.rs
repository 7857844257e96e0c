//! Reaching entries, walking to a leaf or creating the tables on the way,
//! and pruning emptied tables after the flush that must come first.

use core::ops::Range;

use x86_64::VirtAddr;

use super::{AddressSpace, Leaf, NO_SPARE, USER_END, frame};
use crate::mm::MmError;
use crate::mm::pte::{self, ADDR_1G, ADDR_2M, ADDR_4K, Format, HUGE, PAGE_4K};
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{PageCounter, TableAllocator, TableMapper};

/// Page-table frames unlinked and waiting for the TLB flush that must come
/// before they are reused (Linux's `mmu_gather` of tables): a CPU may hold a
/// paging-structure entry pointing into a table until then.
pub(super) struct TableGather {
    frames: [u64; GATHER_TABLES],
    /// Each table's level: the retired leaves in it are given back before
    /// it is freed, and their address mask depends on it.
    levels: [u8; GATHER_TABLES],
    count: usize,
}

/// Tables one gather holds before it flushes and frees them: enough for a
/// 64 MiB zap (32 page tables and the directories above) in one flush.
const GATHER_TABLES: usize = 64;

impl TableGather {
    pub(super) const fn new() -> TableGather {
        TableGather {
            frames: [0; GATHER_TABLES],
            levels: [0; GATHER_TABLES],
            count: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Bytes one entry at `level` covers.
pub(super) fn span(level: u32) -> u64 {
    1 << (12 + 9 * (level - 1))
}

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush, F: Format>
    AddressSpace<C, M, A, T, F>
{
    /// A pointer to entry `index` of the table at physical address `table`.
    pub(super) fn entry_ptr(&self, table: u64, index: usize) -> *mut u64 {
        debug_assert!(index < 512 && table.is_multiple_of(PAGE_4K));
        let base = self.mapper.frame_ptr(frame(table)).cast::<u64>();
        // SAFETY: `table` is a page table of this hierarchy (the root, one
        // the allocator gave us, or a kernel table reached from the root),
        // which `TableMapper`'s contract maps as 4096 bytes; `index < 512`.
        unsafe { base.add(index) }
    }

    pub(super) fn read(&self, table: u64, index: usize) -> u64 {
        // SAFETY: `entry_ptr` is in bounds and aligned; the MMU may read the
        // entry concurrently, so it is accessed with single volatile loads.
        unsafe { self.entry_ptr(table, index).read_volatile() }
    }

    pub(super) fn write(&mut self, table: u64, index: usize, value: u64) {
        self.entries_written += 1;
        // SAFETY: as for `read`; a single volatile store, so the MMU never
        // sees a torn entry.
        unsafe { self.entry_ptr(table, index).write_volatile(value) }
    }

    pub(super) fn zero_table(&self, table: u64) {
        // SAFETY: a table frame just allocated to us and not yet linked, or
        // the root before use; `TableMapper` maps its 4096 bytes.
        unsafe {
            self.mapper
                .frame_ptr(frame(table))
                .write_bytes(0, PAGE_4K as usize)
        }
    }

    /// No entry is live (retired leaves are given back before the table is
    /// freed).
    fn table_is_empty(&self, table: u64) -> bool {
        (0..512).all(|i| !F::is_live(self.read(table, i)))
    }

    /// A zeroed table frame: a spare one if the space keeps any, else one
    /// from the allocator.
    pub(super) fn alloc_table(&mut self) -> Result<u64, MmError> {
        let table = match self.pop_spare() {
            Some(table) => table,
            None => self
                .alloc
                .allocate_table()
                .ok_or(MmError::OutOfMemory)?
                .start_address()
                .as_u64(),
        };
        self.zero_table(table);
        Ok(table)
    }

    /// Takes the newest spare table off the list the spare frames
    /// themselves hold: each one's first word is the next one's address,
    /// [`NO_SPARE`] at the end. Neither has bit 0 set, so a stale walk of a
    /// spare would find no present entry there.
    pub(super) fn pop_spare(&mut self) -> Option<u64> {
        let table = self.spares;
        if table == NO_SPARE {
            return None;
        }
        // SAFETY: a spare is a table frame of this space that nothing links
        // or caches (it was freed after its flush); `TableMapper` maps it.
        self.spares = unsafe {
            self.mapper
                .frame_ptr(frame(table))
                .cast::<u64>()
                .read_volatile()
        };
        self.spare_count -= 1;
        Some(table)
    }

    /// Puts `table` at the head of the spare list.
    ///
    /// # Safety
    /// `table` is a frame of RAM the space alone uses from now on, linked
    /// nowhere and cached by no TLB, not already a spare, and reachable
    /// through the mapper.
    pub(super) unsafe fn push_spare(&mut self, table: u64) {
        // SAFETY: the caller's contract; the mapper maps its 4096 bytes.
        unsafe {
            self.mapper
                .frame_ptr(frame(table))
                .cast::<u64>()
                .write_volatile(self.spares)
        };
        self.spares = table;
        self.spare_count += 1;
    }

    /// Fills `tables` with zeroed table frames, all or none: on failure the
    /// ones taken go back (never linked, so no flush is owed).
    pub(super) fn alloc_tables(&mut self, tables: &mut [u64]) -> Result<(), MmError> {
        for i in 0..tables.len() {
            match self.alloc_table() {
                Ok(table) => tables[i] = table,
                Err(e) => {
                    for &table in &tables[..i] {
                        self.free_table(table);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Gives back a table frame nothing links and no CPU caches any more;
    /// the space keeps it as a spare if the allocator cannot take it.
    pub(super) fn free_table(&mut self, table: u64) {
        // SAFETY: the frame came from this allocator (only tables linked
        // with OWNED, or split tables never linked, are freed; spares are
        // such tables too), and its unlinking was flushed (or it was never
        // linked).
        if !unsafe { self.alloc.take_back(frame(table)) } {
            // SAFETY: as above: ours, unlinked, flushed, and not a spare
            // (spares are linked nowhere, so never freed as tables).
            unsafe { self.push_spare(table) };
        }
    }

    /// The table at `level` (1 = PT, 2 = PD) covering `va`, allocating the
    /// missing tables on the way. A leaf above `level` in the way is `Busy`.
    /// On error, nothing it allocated is left behind.
    pub(super) fn walk_alloc(&mut self, va: u64, level: u32) -> Result<u64, MmError> {
        let mut table = self.root;
        for current in (level + 1..=4).rev() {
            let index = pte::index(va, current);
            let entry = self.read(table, index);
            if F::is_live(entry) {
                if entry & HUGE != 0 {
                    self.prune(va, va + PAGE_4K);
                    return Err(MmError::Busy);
                }
                table = entry & ADDR_4K;
                continue;
            }
            let child = match self.alloc_table() {
                Ok(child) => child,
                Err(e) => {
                    self.prune(va, va + PAGE_4K);
                    return Err(e);
                }
            };
            self.write(table, index, F::table_link(child));
            table = child;
        }
        Ok(table)
    }

    /// Whether a new area may cover `[start, end)`: every entry there is
    /// zero or a link to a table, and each link marked owned is one an
    /// existing area of this space explains. Anything else is the kernel's
    /// (a leaf, a non-present entry it keeps, such as one with bit 11 that
    /// a zap would take for a retired leaf of ours, or a link of its own
    /// that happens to carry the owned bit, which the crate would free
    /// when it empties), and the crate must never touch it. A table the
    /// crate allocated always lies under one of its areas: it is made
    /// inside an area, and unlinked by the zap that empties it.
    pub(super) fn range_is_vacant(&self, start: u64, end: u64) -> bool {
        self.vacant_in(self.root, 4, start, end)
    }

    fn vacant_in(&self, table: u64, level: u32, start: u64, end: u64) -> bool {
        let size = span(level);
        let mut va = start;
        while va < end {
            let entry = self.read(table, pte::index(va, level));
            let entry_start = va & !(size - 1);
            let entry_end = entry_start + size;
            if entry != 0 {
                let link = level > 1 && F::is_live(entry) && entry & HUGE == 0;
                let explained = !F::is_owned(entry)
                    || self.vmas.iter().flatten().any(|v| {
                        v.start.start_address().as_u64() < entry_end && entry_start < v.end()
                    });
                if !link
                    || !explained
                    || !self.vacant_in(entry & ADDR_4K, level - 1, va, end.min(entry_end))
                {
                    return false;
                }
            }
            va = entry_end;
        }
        true
    }

    /// The first leaf mapping anything in `[va, end)`.
    pub(super) fn next_leaf(&self, mut va: u64, end: u64) -> Option<Leaf> {
        'restart: while va < end {
            let mut table = self.root;
            for level in (1..=4).rev() {
                let index = pte::index(va, level);
                let entry = self.read(table, index);
                let size = span(level);
                if !F::is_live(entry) || (level == 4 && self.shared[index]) {
                    va = (va & !(size - 1)).checked_add(size)?;
                    continue 'restart;
                }
                if level == 1 || entry & HUGE != 0 {
                    return Some(Leaf {
                        va: VirtAddr::new_truncate(va & !(size - 1)),
                        entry,
                        level,
                        table,
                        index,
                        special: F::is_special(entry),
                    });
                }
                table = entry & ADDR_4K;
            }
        }
        None
    }

    /// Every leaf mapping something in `range`, in address order.
    pub fn leaves(&self, range: Range<VirtAddr>) -> impl Iterator<Item = Leaf> + '_ {
        self.leaves_between(range.start.as_u64(), range.end.as_u64())
    }

    /// Every leaf in the user half, in address order.
    pub fn user_leaves(&self) -> impl Iterator<Item = Leaf> + '_ {
        self.leaves_between(0, USER_END)
    }

    pub(super) fn leaves_between(&self, start: u64, end: u64) -> impl Iterator<Item = Leaf> + '_ {
        let mut va = start;
        core::iter::from_fn(move || {
            let leaf = self.next_leaf(va, end)?;
            va = leaf.va.as_u64() + leaf.size();
            Some(leaf)
        })
    }

    /// The leaf mapping `va`, if any.
    pub fn translate(&self, va: VirtAddr) -> Option<Leaf> {
        self.translate_u64(va.as_u64())
    }

    pub(super) fn translate_u64(&self, va: u64) -> Option<Leaf> {
        self.next_leaf(va, va.checked_add(1)?)
            .filter(|leaf| leaf.va.as_u64() <= va)
    }

    /// Frees the tables this crate allocated under `[start, end)` that are
    /// empty: unlinks them, flushes, then frees them.
    pub(super) fn prune(&mut self, start: u64, end: u64) {
        let mut gather = TableGather::new();
        self.unlink_empty(&mut gather, start, end);
        if !gather.is_empty() {
            self.tlb.flush_all(self.root());
            self.free_gathered(&mut gather);
        }
    }

    /// Unlinks the emptied owned tables under `[start, end)` into `gather`
    /// (flushing and freeing early when it fills).
    pub(super) fn unlink_empty(&mut self, gather: &mut TableGather, start: u64, end: u64) {
        self.prune_level(gather, self.root, 4, start, end);
    }

    /// Gives gathered table frames back, and the frames of the retired
    /// leaves in them. Only after a flush that followed their unlinking.
    pub(super) fn free_gathered(&mut self, gather: &mut TableGather) {
        for i in 0..gather.count {
            let (table, level) = (gather.frames[i], gather.levels[i] as u32);
            for index in 0..512 {
                let entry = self.read(table, index);
                if F::is_retired(entry) {
                    self.release(table, index, level, entry);
                }
            }
            self.free_table(table);
        }
        gather.count = 0;
    }

    /// Clears retired leaf `entry` (entry `index` of `table`, at `level`)
    /// and gives its frame's count back. Only after a flush that followed
    /// its retiring.
    fn release(&mut self, table: u64, index: usize, level: u32, entry: u64) {
        let mask = match level {
            3 => ADDR_1G,
            2 => ADDR_2M,
            _ => ADDR_4K,
        };
        self.write(table, index, 0);
        // SAFETY: a retired leaf is a counted entry this space wrote (with
        // `try_map`'s count) and retired, and it was flushed since (this
        // function's precondition); clearing it gives its count back once.
        unsafe { self.counter.unmap(frame(entry & mask)) };
    }

    /// Gives back the retired leaves under `[start, end)` that are still
    /// linked (their tables hold live entries too). Only after a flush that
    /// followed their retiring.
    pub(super) fn release_retired(&mut self, start: u64, end: u64) {
        self.release_level(self.root, 4, start, end);
    }

    fn release_level(&mut self, table: u64, level: u32, start: u64, end: u64) {
        let size = span(level);
        let mut va = start;
        while va < end {
            let index = pte::index(va, level);
            let slot_end = (va & !(size - 1)).saturating_add(size);
            let entry = self.read(table, index);
            let shared = level == 4 && self.shared[index];
            if F::is_retired(entry) {
                self.release(table, index, level, entry);
            } else if level > 1 && F::is_live(entry) && entry & HUGE == 0 && !shared {
                self.release_level(entry & ADDR_4K, level - 1, va, end.min(slot_end));
            }
            if index == 511 {
                break;
            }
            va = slot_end;
        }
    }

    /// Returns whether `table` is empty afterwards.
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
            // Every table is searched (the crate's tables may hang under a
            // kernel's); only those the crate allocated are unlinked.
            if level > 1 && F::is_live(entry) && entry & HUGE == 0 && !shared {
                let child = entry & ADDR_4K;
                let emptied = self.prune_level(gather, child, level - 1, va, end.min(slot_end));
                if emptied && F::is_owned(entry) {
                    self.write(table, index, 0);
                    if gather.count == GATHER_TABLES {
                        self.tlb.flush_all(self.root());
                        self.free_gathered(gather);
                    }
                    gather.frames[gather.count] = child;
                    gather.levels[gather.count] = (level - 1) as u8;
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
}
