//! Inserting counted pages (`vm_insert_page`, `vm_insert_pages`) and raw
//! frames (`vmf_insert_pfn`).

use x86_64::structures::paging::{Page, PhysFrame};

use x86_64::PhysAddr;

use super::walk::Table;
use super::{AddressSpace, VmaId};
use crate::mm::MmError;
use crate::mm::pte::{self, Format, LeafDesc, PAGE_4K, Pte};
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{CountedPage, PageCounter, TableAllocator, TableMapper};
use crate::mm::vma::VmFlags;

/// Pages `insert_pages` counts at a time before it writes their entries.
const COUNT_CHUNK: usize = 64;

/// What `insert_pfn` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// A new entry was written.
    New,
    /// Something was already mapped there and was left as it is.
    AlreadyMapped,
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

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush, F: Format>
    AddressSpace<C, M, A, T, F>
{
    /// The one per-entry path of `insert_page` and `insert_pages` (Linux's
    /// `insert_page_into_pte_locked`): an occupied entry is `Busy`, a frame
    /// the counter will not count is `NotInsertable`, else the page gains a
    /// reference and a map count and entry `index` of `table` is written.
    /// `leaf` is the area's leaf without its address, built once per call.
    #[inline]
    fn insert_into_pte(
        &mut self,
        table: Table,
        index: usize,
        page: PhysFrame,
        leaf: Pte,
    ) -> Result<(), MmError> {
        if !table.read(index).is_empty() {
            return Err(MmError::Busy);
        }
        // SAFETY: the count is for the entry written just below; the zap
        // that clears it gives it back.
        if !unsafe { self.counter.try_map(page) } {
            return Err(MmError::NotInsertable);
        }
        self.write(table, index, leaf.with(page.start_address().as_u64()));
        Ok(())
    }

    /// Inserts `page` at `at` in area `id` (Linux's `vm_insert_page`).
    ///
    /// The area must not be `PFNMAP`; it becomes `MIXEDMAP`. The page must be
    /// one the counter counts and someone holds; it gains a reference and a
    /// map count. An existing entry is `Busy`. The entry gets the area's
    /// protection.
    pub fn insert_page(&mut self, id: VmaId, at: Page, page: &C::Page) -> Result<(), MmError> {
        let vma = *self.vma(id)?;
        if vma.flags.contains(VmFlags::PFNMAP) {
            return Err(MmError::WrongVmaKind);
        }
        let (va, _) = Self::range_in(&vma, at, 1)?;
        let pt = self.walk_alloc(va, 1)?;
        let leaf = F::leaf(PhysAddr::zero(), LeafDesc::page(vma.page_prot(), self.nx));
        if let Err(e) = self.insert_into_pte(pt, pte::index(va, 1), page.frame(), leaf) {
            self.prune(va, va + PAGE_4K);
            return Err(e);
        }
        self.vma_mut(id)?.flags |= VmFlags::MIXEDMAP;
        Ok(())
    }

    /// Inserts `pages` at consecutive pages from `at` (Linux 5.8's
    /// `vm_insert_pages`), walking the upper levels once per page table.
    ///
    /// On error, the first [`PartialInsert::inserted`] pages are mapped and
    /// counted as by `insert_page`, and nothing else changed.
    pub fn insert_pages(
        &mut self,
        id: VmaId,
        at: Page,
        pages: &[C::Page],
    ) -> Result<(), PartialInsert> {
        let fail = |inserted, error| PartialInsert { inserted, error };
        let vma = *self.vma(id).map_err(|e| fail(0, e))?;
        if vma.flags.contains(VmFlags::PFNMAP) {
            return Err(fail(0, MmError::WrongVmaKind));
        }
        if pages.is_empty() {
            return Ok(());
        }
        let (addr, _) = Self::range_in(&vma, at, pages.len() as u64).map_err(|e| fail(0, e))?;
        let leaf = F::leaf(PhysAddr::zero(), LeafDesc::page(vma.page_prot(), self.nx));
        // The frames a count hands the stores.
        let mut frames = [PhysFrame::containing_address(PhysAddr::zero()); COUNT_CHUNK];
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
            // The batch stays inside page table `pt`: `first + k` is below
            // 512 by the choice of `batch_end`.
            let first = pte::index(va, 1);
            let batch_end = pages.len().min(done + 512 - first);
            let batch = &pages[done..batch_end];
            // Passes over the batch, each a tight loop (one pass doing
            // everything kept the counter's fields and the error in memory,
            // a fifth dearer per page): the entries free up to the first
            // taken one; then, up to 64 pages at a time, the pages the
            // counter counts, each page's frame read once, and the stores
            // of those frames. Nothing else writes this space's tables
            // meanwhile (`&mut self`), and the MMU writes only live
            // entries, so the entries found free stay free.
            let free = pt
                .run(first, batch.len())
                .slots()
                .take_while(|slot| slot.read().is_empty())
                .count();
            let free_run = pt.run(first, free);
            let mut written = 0;
            while written < free {
                let chunk = &batch[written..free.min(written + COUNT_CHUNK)];
                // SAFETY: each page counted gets its entry just below,
                // mapping the frame it was counted with; the zap that
                // clears the entry gives the count back.
                let counted = unsafe { self.counter.try_map_pages(chunk, &mut frames) };
                let counted = counted.min(chunk.len());
                for (k, frame) in frames[..counted].iter().enumerate() {
                    free_run
                        .slot(written + k)
                        .store(leaf.with(frame.start_address().as_u64()));
                }
                written += counted;
                if counted < chunk.len() {
                    break;
                }
            }
            let error = if written < free {
                Some(fail(done + written, MmError::NotInsertable))
            } else if free < batch.len() {
                Some(fail(done + written, MmError::Busy))
            } else {
                None
            };
            self.entries_written += written as u64;
            match error {
                Some(error) => {
                    let failed_at = addr + error.inserted as u64 * PAGE_4K;
                    self.prune(failed_at, failed_at + PAGE_4K);
                    done = error.inserted;
                    break Err(error);
                }
                None => done = batch_end,
            }
        };
        if done > 0 {
            self.vma_mut(id).map_err(|e| fail(done, e))?.flags |= VmFlags::MIXEDMAP;
        }
        result
    }

    /// Maps `frame` at `at` with a special entry (Linux's `vmf_insert_pfn`):
    /// the area must be `PFNMAP` or `MIXEDMAP` (not both, and a `PFNMAP` one
    /// not copy-on-write). An existing entry is left as it is. In a
    /// `MIXEDMAP` area a frame the counter counts is refused
    /// (`CountedFrame`: insert it with `insert_page`); in a `PFNMAP` area any
    /// frame is taken, as by `remap_pfn_range`.
    ///
    /// `unsafe` since issue 17 (it took any frame safely):
    ///
    /// ```compile_fail,E0133
    /// # use dmaengine::mm::space::{AddressSpace, VmaId};
    /// # use dmaengine::mm::traits::{PageCounter, TableAllocator, TableMapper};
    /// # use dmaengine::mm::tlb::TlbFlush;
    /// # use x86_64::structures::paging::{Page, PhysFrame};
    /// fn map_any_frame<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush>(
    ///     space: &mut AddressSpace<C, M, A, T>,
    ///     id: VmaId,
    ///     at: Page,
    ///     frame: PhysFrame,
    /// ) {
    ///     let _ = space.insert_pfn(id, at, frame);
    /// }
    /// ```
    ///
    /// # Safety
    /// As [`remap_pfn_range`](Self::remap_pfn_range)'s, for `frame`: it
    /// stays device memory, or RAM the caller owns and the kernel does not
    /// free or reuse, while any entry maps it.
    pub unsafe fn insert_pfn(
        &mut self,
        id: VmaId,
        at: Page,
        frame: PhysFrame,
    ) -> Result<Inserted, MmError> {
        let vma = *self.vma(id)?;
        let pfnmap = vma.flags.contains(VmFlags::PFNMAP);
        let mixed = vma.flags.contains(VmFlags::MIXEDMAP);
        if pfnmap == mixed || (pfnmap && vma.flags.is_cow()) {
            return Err(MmError::WrongVmaKind);
        }
        let (va, _) = Self::range_in(&vma, at, 1)?;
        // Linux refuses a `pfn_valid` frame here: its entry would hold no
        // reference, so the page could be freed while still mapped.
        if mixed && self.counter.covers(frame) {
            return Err(MmError::CountedFrame);
        }
        if self.translate_u64(va).is_some() {
            return Ok(Inserted::AlreadyMapped);
        }
        let pt = self.walk_alloc(va, 1)?;
        // Not live but not empty: not ours to overwrite (`map_vma` keeps
        // such entries out of areas, so this is a second line).
        if !pt.read(pte::index(va, 1)).is_empty() {
            return Err(MmError::Busy);
        }
        let entry = F::leaf(
            frame.start_address(),
            LeafDesc::raw(vma.page_prot(), self.nx),
        );
        self.write(pt, pte::index(va, 1), entry);
        Ok(Inserted::New)
    }
}
