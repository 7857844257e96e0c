//! Copying an area into a child address space, as `fork` does.

use x86_64::structures::paging::PhysFrame;

use super::{AddressSpace, Leaf, VmaId};
use crate::mm::MmError;
use crate::mm::pte::{self, X86};
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
            let leaf_va = leaf.va.as_u64();
            let copied = child.walk_alloc(leaf_va, leaf.level).and_then(|table| {
                // A mapped counted page is held, so the counter takes it.
                let taken = leaf.is_special() || {
                    let page = PhysFrame::containing_address(leaf.phys());
                    // SAFETY: the count is for the child's copy of the
                    // entry, written just below; unmapping the child gives
                    // it back.
                    unsafe { self.counter.try_map(page) }
                };
                if !taken {
                    return Err(MmError::NotInsertable);
                }
                Ok(table)
            });
            let table = match copied {
                Ok(table) => table,
                Err(e) => {
                    // Unmapping the child's copy gives back every count taken.
                    let _ = child.unmap_vma(child_id);
                    return Err(e);
                }
            };
            child.write(table, pte::index(leaf_va, leaf.level), entry);
            va = leaf_va + leaf.size();
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
}
