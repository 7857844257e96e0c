//! Reaching entries, walking to a leaf or creating the tables on the way,
//! and pruning emptied tables after the flush that must come first.

use core::ops::Range;

use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

use super::{AddressSpace, KERNEL_START, Leaf, NO_SPARE, USER_END};
use crate::mm::MmError;
use crate::mm::pte::{self, Format, PAGE_4K, Pte};
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{PageCounter, TableAllocator, TableMapper};

/// Page-table frames unlinked and waiting for the TLB flush that must come
/// before they are reused (Linux's `mmu_gather` of tables): a CPU may hold a
/// paging-structure entry pointing into a table until then.
pub(super) struct TableGather {
    frames: [PhysFrame; GATHER_TABLES],
    /// Each table's level: the retired leaves in it are given back before
    /// it is freed, and their address mask depends on it.
    levels: [u8; GATHER_TABLES],
    count: usize,
}

/// Tables one gather holds before it flushes and frees them: enough for a
/// 64 MiB zap (32 page tables and the directories above) in one flush.
const GATHER_TABLES: usize = 64;

impl TableGather {
    pub(super) fn new() -> TableGather {
        TableGather {
            frames: [PhysFrame::containing_address(PhysAddr::zero()); GATHER_TABLES],
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

/// A page table of the space's hierarchy, as the CPU reaches it: 512
/// entries, each read and written with one volatile access (the MMU or
/// IOMMU walks them concurrently, and must never see a torn entry). Making
/// one is the only unsafe step: [`AddressSpace::table`].
#[derive(Clone, Copy)]
pub(super) struct Table {
    frame: PhysFrame,
    entries: *mut Pte,
}

impl Table {
    /// Its frame.
    pub(super) fn frame(self) -> PhysFrame {
        self.frame
    }

    /// Entry `index`.
    #[inline]
    pub(super) fn read(self, index: usize) -> Pte {
        assert!(index < 512, "a table has 512 entries");
        // SAFETY: `AddressSpace::table`'s contract: 512 entries valid for
        // reads and writes while the table is the space's; `index < 512`.
        unsafe { self.entries.add(index).read_volatile() }
    }

    /// Entries `first .. first + len` of the table, checked once: the
    /// accesses of a loop over them then need no check of their own.
    #[inline]
    pub(super) fn run(self, first: usize, len: usize) -> TableRun {
        assert!(
            first.checked_add(len).is_some_and(|end| end <= 512),
            "a table has 512 entries"
        );
        TableRun {
            // SAFETY: `first <= 512`, inside the table's 512 entries.
            entries: unsafe { self.entries.add(first) },
            len,
        }
    }

    /// Empties every entry of a table nothing links yet (not counted as
    /// entries written).
    pub(super) fn clear(self) {
        for index in 0..512 {
            self.store(index, Pte::EMPTY);
        }
    }

    /// Stores `value` in entry `index` (see [`AddressSpace::write`], which
    /// counts it).
    #[inline]
    fn store(self, index: usize, value: Pte) {
        assert!(index < 512, "a table has 512 entries");
        // SAFETY: as for `read`.
        unsafe { self.entries.add(index).write_volatile(value) }
    }
}

/// Consecutive entries of one [`Table`] ([`Table::run`]): what a batch of
/// inserts writes, its bounds checked when it was made.
#[derive(Clone, Copy)]
pub(super) struct TableRun {
    entries: *mut Pte,
    len: usize,
}

impl TableRun {
    /// Its entry `k`; panics unless `k` is below the run's length.
    #[inline]
    pub(super) fn slot(self, k: usize) -> Slot {
        assert!(k < self.len, "past the run");
        // SAFETY: `Table::run` checked that the run lies in the table;
        // `k < len`.
        Slot(unsafe { self.entries.add(k) })
    }

    /// Its entries, in order.
    #[inline]
    pub(super) fn slots(self) -> impl Iterator<Item = Slot> {
        // SAFETY: `Table::run` checked that the run lies in the table;
        // `k < len`.
        (0..self.len).map(move |k| Slot(unsafe { self.entries.add(k) }))
    }
}

/// One entry of a [`TableRun`], made only by [`TableRun::slots`]: inside
/// its table, so its accesses need no check.
#[derive(Clone, Copy)]
pub(super) struct Slot(*mut Pte);

impl Slot {
    /// The entry.
    #[inline]
    pub(super) fn read(self) -> Pte {
        // SAFETY: a slot of a checked run, in a table whose entries are
        // valid for volatile reads and writes (`Table::read`).
        unsafe { self.0.read_volatile() }
    }

    /// Stores `value`. Not counted: the caller adds the entries it wrote to
    /// `entries_written` once.
    #[inline]
    pub(super) fn store(self, value: Pte) {
        // SAFETY: as for `read`.
        unsafe { self.0.write_volatile(value) }
    }
}

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush, F: Format>
    AddressSpace<C, M, A, T, F>
{
    /// The table at `frame`, as the mapper reaches it.
    ///
    /// # Safety
    /// `frame` is a page table of this space's hierarchy (its root, a
    /// table linked under it, the kernel's or its own), or a frame the
    /// space just took for one and has not linked yet; and the `Table` is
    /// used only while that stays so. `TableMapper`'s contract then maps
    /// its 4096 bytes.
    pub(super) unsafe fn table(&self, frame: PhysFrame) -> Table {
        Table {
            frame,
            entries: self.mapper.frame_ptr(frame).cast(),
        }
    }

    /// The root table.
    pub(super) fn root_table(&self) -> Table {
        // SAFETY: the root is this space's for its whole life (`new_in`
        // allocated it, or `from_root`'s contract keeps it live).
        unsafe { self.table(self.root) }
    }

    /// The table a live link found in a table of this space points to.
    ///
    /// # Safety
    /// `link` is a live, non-leaf entry just read from a table of this
    /// space: every such link points to a table of its hierarchy (the
    /// crate's own, or the kernel's under `from_root`'s contract).
    pub(super) unsafe fn child(&self, link: Pte) -> Table {
        // SAFETY: the caller's contract.
        unsafe { self.table(link.table()) }
    }

    /// The table holding `leaf`.
    ///
    /// # Safety
    /// A walk of this space found `leaf`, and no table was freed since.
    pub(super) unsafe fn leaf_table(&self, leaf: &Leaf) -> Table {
        // SAFETY: the caller's contract: the walk read `leaf` from that
        // table, which is still the space's.
        unsafe { self.table(leaf.table) }
    }

    /// Writes entry `index` of `table`, counting it.
    pub(super) fn write(&mut self, table: Table, index: usize, value: Pte) {
        self.entries_written += 1;
        table.store(index, value);
    }

    /// No entry is live (retired leaves are given back before the table is
    /// freed).
    fn table_is_empty(table: Table) -> bool {
        (0..512).all(|i| !F::is_live(table.read(i)))
    }

    /// A zeroed table frame: a spare one if the space keeps any, else one
    /// from the allocator.
    pub(super) fn alloc_table(&mut self) -> Result<Table, MmError> {
        let frame = match self.pop_spare() {
            Some(frame) => frame,
            None => self.alloc.allocate_table().ok_or(MmError::OutOfMemory)?,
        };
        // SAFETY: a frame just taken for a table (the allocator's contract,
        // or a spare of this space), not linked yet.
        let table = unsafe { self.table(frame) };
        table.clear();
        Ok(table)
    }

    /// Takes the newest spare table off the list the spare frames
    /// themselves hold: each one's first word is the next one's address,
    /// [`NO_SPARE`] at the end. Neither has bit 0 set, so a stale walk of a
    /// spare would find no present entry there.
    pub(super) fn pop_spare(&mut self) -> Option<PhysFrame> {
        let frame = self.spares?;
        // SAFETY: a spare is a table frame of this space that nothing links
        // or caches (it was freed after its flush); `TableMapper` maps it.
        let next = unsafe { self.mapper.frame_ptr(frame).cast::<u64>().read_volatile() };
        self.spares = (next != NO_SPARE).then(|| super::frame(next));
        self.spare_count -= 1;
        Some(frame)
    }

    /// Puts `table` at the head of the spare list.
    ///
    /// # Safety
    /// `table` is a frame of RAM the space alone uses from now on, linked
    /// nowhere and cached by no TLB, not already a spare, and reachable
    /// through the mapper.
    pub(super) unsafe fn push_spare(&mut self, table: PhysFrame) {
        let next = self
            .spares
            .map_or(NO_SPARE, |frame| frame.start_address().as_u64());
        // SAFETY: the caller's contract; the mapper maps its 4096 bytes.
        unsafe {
            self.mapper
                .frame_ptr(table)
                .cast::<u64>()
                .write_volatile(next)
        };
        self.spares = Some(table);
        self.spare_count += 1;
    }

    /// Fills `tables` with zeroed table frames, all or none: on failure the
    /// ones taken go back (never linked, so no flush is owed).
    pub(super) fn alloc_tables(&mut self, tables: &mut [Option<Table>]) -> Result<(), MmError> {
        for i in 0..tables.len() {
            match self.alloc_table() {
                Ok(table) => tables[i] = Some(table),
                Err(e) => {
                    for table in tables[..i].iter_mut().filter_map(Option::take) {
                        self.free_table(table.frame());
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Gives back a table frame nothing links and no CPU caches any more;
    /// the space keeps it as a spare if the allocator cannot take it.
    pub(super) fn free_table(&mut self, table: PhysFrame) {
        // SAFETY: the frame came from this allocator (only tables linked
        // with OWNED, or split tables never linked, are freed; spares are
        // such tables too), and its unlinking was flushed (or it was never
        // linked).
        if !unsafe { self.alloc.take_back(table) } {
            // SAFETY: as above: ours, unlinked, flushed, and not a spare
            // (spares are linked nowhere, so never freed as tables).
            unsafe { self.push_spare(table) };
        }
    }

    /// The table at `level` (1 = PT, 2 = PD) covering `va`, allocating the
    /// missing tables on the way. A leaf above `level` in the way is `Busy`.
    /// On error, nothing it allocated is left behind.
    pub(super) fn walk_alloc(&mut self, va: u64, level: u32) -> Result<Table, MmError> {
        let mut table = self.root_table();
        for current in (level + 1..=4).rev() {
            let index = pte::index(va, current);
            let entry = table.read(index);
            if F::is_live(entry) {
                if entry.is_huge() {
                    self.prune(va, va + PAGE_4K);
                    return Err(MmError::Busy);
                }
                // SAFETY: a live link just read from a table of the space.
                table = unsafe { self.child(entry) };
                continue;
            }
            let child = match self.alloc_table() {
                Ok(child) => child,
                Err(e) => {
                    self.prune(va, va + PAGE_4K);
                    return Err(e);
                }
            };
            self.write(table, index, F::table_link(child.frame()));
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
        self.vacant_in(self.root_table(), 4, start, end)
    }

    fn vacant_in(&self, table: Table, level: u32, start: u64, end: u64) -> bool {
        let size = span(level);
        let mut va = start;
        while va < end {
            let entry = table.read(pte::index(va, level));
            let entry_start = va & !(size - 1);
            let entry_end = entry_start + size;
            if !entry.is_empty() {
                let link = level > 1 && F::is_live(entry) && !entry.is_huge();
                let explained = !F::is_owned(entry)
                    || self.vmas.iter().any(|(_, v)| {
                        v.start.start_address().as_u64() < entry_end && entry_start < v.end()
                    });
                if !link || !explained {
                    return false;
                }
                // SAFETY: a live link just read from a table of the space.
                let child = unsafe { self.child(entry) };
                if !self.vacant_in(child, level - 1, va, end.min(entry_end)) {
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
            // The indexes of a non-canonical address wrap onto the entries
            // of the lower half.
            if (USER_END..KERNEL_START).contains(&va) {
                va = KERNEL_START;
                continue;
            }
            let mut table = self.root_table();
            for level in (1..=4).rev() {
                let index = pte::index(va, level);
                let entry = table.read(index);
                let size = span(level);
                if !F::is_live(entry) || (level == 4 && self.shared[index]) {
                    va = (va & !(size - 1)).checked_add(size)?;
                    continue 'restart;
                }
                if level == 1 || entry.is_huge() {
                    return Some(Leaf {
                        va: VirtAddr::new_truncate(va & !(size - 1)),
                        entry,
                        level,
                        table: table.frame(),
                        index,
                        special: F::is_special(entry),
                    });
                }
                // SAFETY: a live link just read from a table of the space.
                table = unsafe { self.child(entry) };
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
            // A leaf may end at the top of the address space: nothing is
            // past it, and `u64::MAX` ends the walk.
            va = leaf.va.as_u64().saturating_add(leaf.size());
            Some(leaf)
        })
    }

    /// The leaf mapping `va`, if any.
    pub fn translate(&self, va: VirtAddr) -> Option<Leaf> {
        self.translate_u64(va.as_u64())
    }

    pub(super) fn translate_u64(&self, va: u64) -> Option<Leaf> {
        // By its page, whose start plus one never overflows (`va + 1` does
        // at the last byte): a leaf holding the page holds `va`.
        let page = va & !(PAGE_4K - 1);
        self.next_leaf(page, page + 1)
            .filter(|leaf| leaf.va.as_u64() <= page)
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
        self.prune_level(gather, self.root_table(), 4, start, end);
    }

    /// Gives gathered table frames back, and the frames of the retired
    /// leaves in them. Only after a flush that followed their unlinking.
    pub(super) fn free_gathered(&mut self, gather: &mut TableGather) {
        for i in 0..gather.count {
            let (frame, level) = (gather.frames[i], gather.levels[i] as u32);
            // SAFETY: a table of the space unlinked (and flushed) but not
            // yet freed: it stays the space's until `free_table` below.
            let table = unsafe { self.table(frame) };
            for index in 0..512 {
                let entry = table.read(index);
                if F::is_retired(entry) {
                    self.release(table, index, level, entry);
                }
            }
            self.free_table(frame);
        }
        gather.count = 0;
    }

    /// Clears retired leaf `entry` (entry `index` of `table`, at `level`)
    /// and gives its frame's count back. Only after a flush that followed
    /// its retiring.
    fn release(&mut self, table: Table, index: usize, level: u32, entry: Pte) {
        self.write(table, index, Pte::EMPTY);
        let frame = PhysFrame::containing_address(entry.phys(level));
        // SAFETY: a retired leaf is a counted entry this space wrote (with
        // `try_map`'s count) and retired, and it was flushed since (this
        // function's precondition); clearing it gives its count back once.
        unsafe { self.counter.unmap(frame) };
    }

    /// Gives back the retired leaves under `[start, end)` that are still
    /// linked (their tables hold live entries too). Only after a flush that
    /// followed their retiring.
    pub(super) fn release_retired(&mut self, start: u64, end: u64) {
        self.release_level(self.root_table(), 4, start, end);
    }

    fn release_level(&mut self, table: Table, level: u32, start: u64, end: u64) {
        let size = span(level);
        let mut va = start;
        while va < end {
            let index = pte::index(va, level);
            let slot_end = (va & !(size - 1)).saturating_add(size);
            let entry = table.read(index);
            let shared = level == 4 && self.shared[index];
            if F::is_retired(entry) {
                self.release(table, index, level, entry);
            } else if level > 1 && F::is_live(entry) && !entry.is_huge() && !shared {
                // SAFETY: a live link just read from a table of the space.
                let child = unsafe { self.child(entry) };
                self.release_level(child, level - 1, va, end.min(slot_end));
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
        table: Table,
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
            let entry = table.read(index);
            let shared = level == 4 && self.shared[index];
            // Every table is searched (the crate's tables may hang under a
            // kernel's); only those the crate allocated are unlinked.
            if level > 1 && F::is_live(entry) && !entry.is_huge() && !shared {
                // SAFETY: a live link just read from a table of the space.
                let child = unsafe { self.child(entry) };
                let emptied = self.prune_level(gather, child, level - 1, va, end.min(slot_end));
                if emptied && F::is_owned(entry) {
                    self.write(table, index, Pte::EMPTY);
                    if gather.count == GATHER_TABLES {
                        self.tlb.flush_all(self.root());
                        self.free_gathered(gather);
                    }
                    gather.frames[gather.count] = child.frame();
                    gather.levels[gather.count] = (level - 1) as u8;
                    gather.count += 1;
                }
            }
            if index == 511 {
                break;
            }
            va = slot_end;
        }
        level < 4 && Self::table_is_empty(table)
    }
}
