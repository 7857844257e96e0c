//! Removing mappings (`zap_vma_ptes`) and splitting 2 MiB entries.

use x86_64::structures::paging::Page;

use super::walk::TableGather;
use super::{AddressSpace, Leaf, VmaId, frame};
use crate::mm::MmError;
use crate::mm::pte::{self, ADDR_2M, HUGE, PAGE_2M, PAGE_4K};
use crate::mm::tlb::{FULL_FLUSH_THRESHOLD, TlbFlush};
use crate::mm::traits::{PageCounter, TableAllocator, TableMapper};

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush> AddressSpace<C, M, A, T> {
    /// Unmaps `pages` pages from `at` in area `id` (Linux's
    /// `zap_vma_ptes`): clears the entries, frees page tables left empty,
    /// flushes the TLB, and only then gives back the reference and map
    /// count of every counted page and the emptied tables. A 2 MiB entry
    /// covered only in part is split first (which needs a page table: the
    /// only way this fails, with nothing changed).
    pub fn zap_range(&mut self, id: VmaId, at: Page, pages: u64) -> Result<(), MmError> {
        let vma = *self.vma(id)?;
        let (start, end) = Self::range_in(&vma, at, pages)?;
        self.zap(start, end)
    }

    pub(super) fn zap(&mut self, start: u64, end: u64) -> Result<(), MmError> {
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
                self.tlb.flush_all(self.root());
                unflushed = false;
                for &page in &pending {
                    self.counter.unmap(frame(page));
                }
                count = 0;
            }
            self.write(leaf.table, leaf.index, 0);
            pages += (leaf.size() / PAGE_4K) as usize;
            if pages <= FULL_FLUSH_THRESHOLD {
                self.tlb.flush_page(self.root(), leaf.va);
            } else {
                unflushed = true;
            }
            if !leaf.is_special() {
                pending[count] = leaf.phys().as_u64();
                count += 1;
            }
            va = leaf.va.as_u64() + leaf.size();
        }
        // Unlink the emptied tables before the last flush, so one flush
        // covers both the leaves and the paging-structure entries; pages and
        // tables are given back only after it.
        let mut gather = TableGather::new();
        self.unlink_empty(&mut gather, start, end);
        if unflushed || !gather.is_empty() {
            self.tlb.flush_all(self.root());
        }
        for &page in &pending[..count] {
            self.counter.unmap(frame(page));
        }
        self.free_gathered(&mut gather);
        Ok(())
    }

    /// Splits the 2 MiB entries that `[start, end)` covers only in part into
    /// 512 4 KiB entries mapping the same frames. Allocates every table first,
    /// so it either splits all or changes nothing.
    fn split_boundaries(&mut self, start: u64, end: u64) -> Result<(), MmError> {
        let partial = |leaf: Option<Leaf>| {
            leaf.filter(|l| {
                let va = l.va.as_u64();
                l.level == 2 && (va < start || va + PAGE_2M > end)
            })
        };
        let first = partial(self.translate_u64(start));
        let last =
            partial(self.translate_u64(end - 1)).filter(|l| Some(l.va) != first.map(|f| f.va));
        let mut tables = [0u64; 2];
        for (i, _) in first.iter().chain(last.iter()).enumerate() {
            match self.alloc_table() {
                Ok(table) => tables[i] = table,
                Err(e) => {
                    for &table in &tables[..i] {
                        // Never linked, so no flush is owed.
                        self.free_table(table);
                    }
                    return Err(e);
                }
            }
        }
        for (leaf, table) in first.iter().chain(last.iter()).zip(tables) {
            self.split_leaf(leaf, table);
        }
        Ok(())
    }

    /// Replaces 2 MiB `leaf` by the fresh, zeroed table `table` holding
    /// 512 4 KiB entries that map the same frames with the same bits.
    pub(super) fn split_leaf(&mut self, leaf: &Leaf, table: u64) {
        let base = leaf.entry & ADDR_2M;
        let mut flags = leaf.entry & !ADDR_2M & !HUGE & !pte::PAT_2M;
        if leaf.entry & pte::PAT_2M != 0 {
            flags |= pte::PAT_4K;
        }
        for i in 0..512 {
            self.write(table, i, (base + i as u64 * PAGE_4K) | flags);
        }
        self.write(leaf.table, leaf.index, pte::table_link(table));
        self.tlb.flush_page(self.root(), leaf.va);
    }
}
