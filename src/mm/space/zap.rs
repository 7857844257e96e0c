//! Removing mappings (`zap_vma_ptes`) and splitting 2 MiB entries.

use x86_64::VirtAddr;
use x86_64::structures::paging::Page;

use super::walk::{Table, TableGather};
use super::{AddressSpace, Leaf, VmaId};
use crate::mm::MmError;
use crate::mm::pte::{self, Format, PAGE_2M, PAGE_4K, Pte};
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{PageCounter, TableAllocator, TableMapper};

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush, F: Format>
    AddressSpace<C, M, A, T, F>
{
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
        // Frames are given back only after their entries are flushed, and
        // with one flush for the whole call (one round of IPIs for a kernel
        // with several CPUs): counted leaves are retired in place (not live,
        // frame address kept), so the tables themselves list the frames
        // until then; special leaves hold nothing and are cleared.
        let mut retired: Option<(u64, u64)> = None;
        let mut va = start;
        while let Some(leaf) = self.next_leaf(va, end) {
            let value = if leaf.is_special() {
                Pte::EMPTY
            } else {
                F::retire(leaf.entry)
            };
            // SAFETY: `next_leaf` just found `leaf`; nothing was freed since.
            let table = unsafe { self.leaf_table(&leaf) };
            self.write(table, leaf.index, value);
            let leaf_end = leaf.va.as_u64() + leaf.size();
            retired =
                Some(retired.map_or((leaf.va.as_u64(), leaf_end), |(from, _)| (from, leaf_end)));
            va = leaf_end;
        }
        // Unlink the tables left with nothing live before the flush, so it
        // covers both the leaves and the paging-structure entries (a range
        // flush drops the paging-structure caches too); pages and tables are
        // given back only after it.
        let mut gather = TableGather::new();
        self.unlink_empty(&mut gather, start, end);
        match retired {
            Some((from, to)) => {
                self.tlb
                    .flush_range(self.root(), VirtAddr::new(from), (to - from) / PAGE_4K);
            }
            None if !gather.is_empty() => self.tlb.flush_all(self.root()),
            None => {}
        }
        self.release_retired(start, end);
        self.free_gathered(&mut gather);
        Ok(())
    }

    /// Splits the large entries that `[start, end)` covers only in part: a
    /// 1 GiB entry into 512 2 MiB ones, then a 2 MiB entry into 512 4 KiB
    /// ones, mapping the same frames. Allocates every table first, so it
    /// either splits all or changes nothing.
    fn split_boundaries(&mut self, start: u64, end: u64) -> Result<(), MmError> {
        // The large leaves at the two edges, and whether [start, end) covers
        // them only in part.
        let partial = |leaf: &Leaf| {
            let va = leaf.va.as_u64();
            leaf.level >= 2 && (va < start || va + leaf.size() > end)
        };
        let mut edges = [self.translate_u64(start), self.translate_u64(end - 1)];
        if edges[0].map(|l| l.va) == edges[1].map(|l| l.va) {
            edges[1] = None;
        }
        // Tables needed: one per partial 1 GiB leaf, and one per edge whose
        // 2 MiB region is covered in part and is (or will be) a 2 MiB leaf.
        let mut needed = 0;
        let mut huge_edges = [false; 2];
        for (i, point) in [start, end - 1].into_iter().enumerate() {
            let Some(leaf) = self.translate_u64(point) else {
                continue;
            };
            let region = point & !(PAGE_2M - 1);
            let region_partial = region < start || region + PAGE_2M > end;
            if leaf.level >= 2 && region_partial {
                let same_region = i == 1 && huge_edges[0] && region == start & !(PAGE_2M - 1);
                if !same_region {
                    huge_edges[i] = true;
                    needed += 1;
                }
            }
        }
        let giants = edges
            .iter()
            .flatten()
            .filter(|l| l.level == 3 && partial(l))
            .count();
        needed += giants;
        let mut tables = [None; 4];
        self.alloc_tables(&mut tables[..needed])?;
        let mut next = tables.into_iter().flatten();
        for leaf in edges
            .iter()
            .flatten()
            .filter(|l| l.level == 3 && partial(l))
        {
            self.split_leaf(leaf, next.next().expect("counted above"));
        }
        for (i, point) in [start, end - 1].into_iter().enumerate() {
            if !huge_edges[i] {
                continue;
            }
            let leaf = self.translate_u64(point).filter(|l| l.level == 2);
            let table = next.next().expect("counted above");
            match leaf {
                Some(leaf) => self.split_leaf(&leaf, table),
                None => self.free_table(table.frame()),
            }
        }
        Ok(())
    }

    /// Replaces large `leaf` by the fresh, zeroed table `table` holding its
    /// [`pieces`]: the same frames with the same bits, one level down.
    pub(super) fn split_leaf(&mut self, leaf: &Leaf, table: Table) {
        for (i, piece) in pieces(leaf.entry, leaf.level).enumerate() {
            self.write(table, i, piece);
        }
        // SAFETY: the caller's walk found `leaf`; nothing was freed since.
        let parent = unsafe { self.leaf_table(leaf) };
        self.write(parent, leaf.index, F::table_link(table.frame()));
        self.tlb.flush_page(self.root(), leaf.va);
    }
}

/// The 512 entries one level down that map what large leaf `entry` at
/// `level` (2 or 3) maps, with the same bits: 2 MiB leaves for a 1 GiB one,
/// 4 KiB leaves for a 2 MiB one (whose PAT bit moves from bit 12 to bit 7,
/// where a 4 KiB entry keeps it).
pub(super) fn pieces(entry: Pte, level: u32) -> impl Iterator<Item = Pte> {
    // The flags keep bit 12 (PAT of a large leaf) and bit 63 (NX).
    let base = entry.phys(level).as_u64();
    let step = if level == 3 { PAGE_2M } else { PAGE_4K };
    let mut flags = entry.flags(level);
    if level == 2 {
        flags &= !(pte::HUGE | pte::PAT_2M);
        if entry.has(pte::PAT_2M) {
            flags |= pte::PAT_4K;
        }
    }
    (0..512).map(move |i| Pte::from_bits((base + i * step) | flags))
}
