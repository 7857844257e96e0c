//! Copying an area into a child address space, as `fork` does.

use x86_64::structures::paging::PhysFrame;

use super::walk::Table;
use super::zap::pieces;
use super::{AddressSpace, Leaf, VmaId};
use crate::mm::MmError;
use crate::mm::pte::{self, Format, Pte, X86};
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{PageCounter, TableAllocator, TableMapper};

/// Write faults and `fork` are the CPU's business: for the CPU's format.
impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush> AddressSpace<C, M, A, T, X86> {
    /// Copies area `id` and its mappings into `child` as `fork` does:
    /// entries are copied as they are, counted pages gain a reference and a
    /// map count, special entries gain nothing. In a copy-on-write area
    /// every writable entry, special ones included, is write-protected on
    /// both sides (Linux's `copy_present_pte`), so a write in either space
    /// faults and gets its own copy instead of writing a shared frame.
    /// Where the child already has a table in the slot of a 2 MiB or 1 GiB
    /// entry (a kernel's link that the child's area lies under, under
    /// [`from_root`](Self::from_root)), the entry is copied below that
    /// table as smaller entries mapping the same frames, as
    /// `remap_pfn_range` maps there: the link stays the kernel's.
    /// On error the child is left as it was.
    pub fn fork_range(&mut self, id: VmaId, child: &mut Self) -> Result<VmaId, MmError> {
        let vma = *self.vma(id)?;
        let child_id = child.map_vma(vma.start, vma.pages, vma.flags)?;
        child.vma_mut(child_id)?.pgoff = vma.pgoff;
        let cow_protect = |leaf: &Leaf| vma.flags.is_cow() && leaf.entry.has(pte::WRITABLE);
        let (start, end) = (vma.start.start_address().as_u64(), vma.end());
        let mut va = start;
        while let Some(leaf) = self.next_leaf(va, end) {
            let entry = if cow_protect(&leaf) {
                leaf.entry.without(pte::WRITABLE)
            } else {
                leaf.entry
            };
            if let Err(e) = self.copy_leaf(&leaf, entry, child) {
                // Every copy so far went into an empty slot of the child:
                // unmapping it empties them again and gives back every
                // count taken, and frees only the tables the child made.
                let _ = child.unmap_vma(child_id);
                return Err(e);
            }
            va = leaf.va.as_u64() + leaf.size();
        }
        // Only now that the copy is whole: write-protect the parent's side,
        // with one flush for all of it.
        let mut va = start;
        let mut protected: Option<(u64, u64)> = None;
        while let Some(leaf) = self.next_leaf(va, end) {
            let leaf_end = leaf.va.as_u64() + leaf.size();
            if cow_protect(&leaf) {
                // SAFETY: `next_leaf` just found `leaf`; nothing was freed
                // since.
                let table = unsafe { self.leaf_table(&leaf) };
                self.write(table, leaf.index, leaf.entry.without(pte::WRITABLE));
                protected = Some(
                    protected.map_or((leaf.va.as_u64(), leaf_end), |(from, _)| (from, leaf_end)),
                );
            }
            va = leaf_end;
        }
        if let Some((from, to)) = protected {
            let pages = (to - from) / pte::PAGE_4K;
            self.tlb
                .flush_range(self.root(), x86_64::VirtAddr::new(from), pages);
        }
        Ok(child_id)
    }

    /// Writes `entry`, the copy of `leaf`, into `child`: in the leaf's own
    /// slot if it is empty, or as its pieces below the table already
    /// linked there. Writes only into empty slots, and on error nothing
    /// (but the tables on the way, which the caller's unmap frees).
    fn copy_leaf(&self, leaf: &Leaf, entry: Pte, child: &mut Self) -> Result<(), MmError> {
        let va = leaf.va.as_u64();
        let table = child.walk_alloc(va, leaf.level)?;
        let index = pte::index(va, leaf.level);
        let slot = table.read(index);
        if !slot.is_empty() {
            // A counted page's copy must be one entry holding one count;
            // only special leaves (all large ones, as only a remap makes
            // them) may become many.
            if !leaf.is_special() || !child.takes_pieces(slot, leaf.level) {
                return Err(MmError::Busy);
            }
            // SAFETY: `takes_pieces` found a live link here, read from a
            // table of the child just now.
            let below = unsafe { child.child(slot) };
            child.put_pieces(below, entry, leaf.level);
            return Ok(());
        }
        // A mapped counted page is held, so the counter takes it.
        let taken = leaf.is_special() || {
            let page = PhysFrame::containing_address(leaf.phys());
            // SAFETY: the count is for the child's copy of the entry,
            // written just below; unmapping the child gives it back.
            unsafe { self.counter.try_map(page) }
        };
        if !taken {
            return Err(MmError::NotInsertable);
        }
        child.write(table, index, entry);
        Ok(())
    }

    /// Whether the table that `link` (an entry at `level`) leads to can
    /// take the pieces of a large leaf at `level`: every entry of it is
    /// empty, or links a table that can take a piece's pieces in turn.
    fn takes_pieces(&self, link: Pte, level: u32) -> bool {
        if level < 2 || !X86::is_live(link) || link.is_huge() {
            return false;
        }
        // SAFETY: a live link read from a table of the space.
        let table = unsafe { self.child(link) };
        (0..512).all(|i| {
            let entry = table.read(i);
            entry.is_empty() || self.takes_pieces(entry, level - 1)
        })
    }

    /// Writes the pieces of large leaf `entry` at `level` into `table` (one
    /// level down), each in its slot if empty, else below the table linked
    /// there. Only where [`takes_pieces`](Self::takes_pieces) said so.
    fn put_pieces(&mut self, table: Table, entry: Pte, level: u32) {
        for (i, piece) in pieces(entry, level).enumerate() {
            let slot = table.read(i);
            if slot.is_empty() {
                self.write(table, i, piece);
            } else {
                // SAFETY: `takes_pieces` found a live link here, in a table
                // of the space, and only empty slots were written since.
                let below = unsafe { self.child(slot) };
                self.put_pieces(below, piece, level - 1);
            }
        }
    }
}
