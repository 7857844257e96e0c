//! Mapping raw frame ranges (`remap_pfn_range`, `io_remap_pfn_range`).

use x86_64::PhysAddr;
use x86_64::structures::paging::{Page, PhysFrame};

use super::{AddressSpace, VmaId};
use crate::mm::MmError;
use crate::mm::pte::PageProt;
use crate::mm::pte::{self, CacheMode, Format, LeafDesc, PAGE_1G, PAGE_2M, PAGE_4K, Pte};
use crate::mm::tlb::{FULL_FLUSH_THRESHOLD, TlbFlush};
use crate::mm::traits::{PageCounter, TableAllocator, TableMapper};
use crate::mm::vma::VmFlags;

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush, F: Format>
    AddressSpace<C, M, A, T, F>
{
    /// Maps `pages` frames from `frame` at `at` (Linux's
    /// `remap_pfn_range`): special entries with nothing counted behind them,
    /// 2 MiB entries (and 1 GiB ones, once [`set_1g_pages`](Self::set_1g_pages)
    /// allows them) where virtual and physical alignment allow. The area
    /// becomes `PFNMAP | IO | DONTEXPAND | DONTDUMP`; a copy-on-write area
    /// must be covered whole and records `pgoff` = the first frame number.
    /// On error nothing stays mapped.
    ///
    /// `unsafe` since issue 17 (it took any frame safely: a freed `Vec`'s
    /// frame, remapped and faulted on, was read after its free):
    ///
    /// ```compile_fail,E0133
    /// # use dmaengine::mm::space::{AddressSpace, VmaId};
    /// # use dmaengine::mm::traits::{PageCounter, TableAllocator, TableMapper};
    /// # use dmaengine::mm::tlb::TlbFlush;
    /// # use dmaengine::mm::vma::PageProt;
    /// # use x86_64::structures::paging::{Page, PhysFrame};
    /// fn map_any_frame<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush>(
    ///     space: &mut AddressSpace<C, M, A, T>,
    ///     id: VmaId,
    ///     at: Page,
    ///     frame: PhysFrame,
    /// ) {
    ///     let _ = space.remap_pfn_range(id, at, frame, 1, PageProt::READ_ONLY);
    /// }
    /// ```
    ///
    /// # Safety
    /// Nothing is counted behind the entries, so the caller vouches for
    /// the frames `frame .. frame + pages`: for as long as any entry maps
    /// one of them (in this space or a child `fork_range` copied them to,
    /// until a zap or `unmap_vma` has cleared and flushed it), each is
    /// either device memory, or RAM the caller owns that is not freed or
    /// reused as RAM by the kernel meanwhile, and in particular not a frame
    /// the [`PageCounter`] may hand out (its free frames). The CPU reaches
    /// them through the mapped entries, and a copy-on-write fault reads
    /// them through the [`TableMapper`]; a device behind an IOMMU domain
    /// built with this space reaches them too.
    pub unsafe fn remap_pfn_range(
        &mut self,
        id: VmaId,
        at: Page,
        frame: PhysFrame,
        pages: u64,
        prot: PageProt,
    ) -> Result<(), MmError> {
        let vma = *self.vma(id)?;
        if vma.flags.contains(VmFlags::MIXEDMAP) {
            return Err(MmError::WrongVmaKind);
        }
        let (addr, end) = Self::range_in(&vma, at, pages)?;
        let phys = frame.start_address().as_u64();
        if phys.checked_add(end - addr).is_none_or(|e| e > 1 << 52) {
            return Err(MmError::OutOfRange);
        }
        if vma.flags.is_cow() && (at != vma.start || pages != vma.pages) {
            return Err(MmError::PartialCowRemap);
        }
        let mut va = addr;
        if let Err(e) = self.remap_entries(&mut va, end, phys.wrapping_sub(addr), prot) {
            self.clear_special(addr, va);
            self.prune(addr, end);
            return Err(e);
        }
        let vma = self.vma_mut(id)?;
        vma.flags |= VmFlags::PFNMAP | VmFlags::IO | VmFlags::DONTEXPAND | VmFlags::DONTDUMP;
        if vma.flags.is_cow() {
            vma.pgoff = phys / PAGE_4K;
        }
        Ok(())
    }

    /// `remap_pfn_range` of device memory with memory type `cache` (Linux's
    /// `io_remap_pfn_range` with a `pgprot_*` cache attribute). Modes other
    /// than write-back and uncached need the kernel to have loaded
    /// [`pte::LINUX_PAT`] into IA32_PAT on every CPU (see [`CacheMode`]).
    /// `unsafe` since issue 17, as `remap_pfn_range`:
    ///
    /// ```compile_fail,E0133
    /// # use dmaengine::mm::space::{AddressSpace, VmaId};
    /// # use dmaengine::mm::traits::{PageCounter, TableAllocator, TableMapper};
    /// # use dmaengine::mm::tlb::TlbFlush;
    /// # use dmaengine::mm::pte::CacheMode;
    /// # use dmaengine::mm::vma::PageProt;
    /// # use x86_64::structures::paging::{Page, PhysFrame};
    /// fn map_any_frame<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush>(
    ///     space: &mut AddressSpace<C, M, A, T>,
    ///     id: VmaId,
    ///     at: Page,
    ///     frame: PhysFrame,
    /// ) {
    ///     let prot = PageProt::READ_ONLY;
    ///     let _ = space.io_remap_pfn_range(id, at, frame, 1, prot, CacheMode::Uncached);
    /// }
    /// ```
    ///
    /// # Safety
    /// As [`remap_pfn_range`](Self::remap_pfn_range)'s.
    pub unsafe fn io_remap_pfn_range(
        &mut self,
        id: VmaId,
        at: Page,
        frame: PhysFrame,
        pages: u64,
        prot: PageProt,
        cache: CacheMode,
    ) -> Result<(), MmError> {
        // SAFETY: this function's contract is `remap_pfn_range`'s.
        unsafe { self.remap_pfn_range(id, at, frame, pages, prot.with_cache(cache)) }
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
            let giant_fits = self.pages_1g
                && va.is_multiple_of(PAGE_1G)
                && pa.is_multiple_of(PAGE_1G)
                && end - *va >= PAGE_1G;
            if giant_fits && self.large_leaf(*va, pa, 3, prot)? {
                *va += PAGE_1G;
                continue;
            }
            let huge_fits =
                va.is_multiple_of(PAGE_2M) && pa.is_multiple_of(PAGE_2M) && end - *va >= PAGE_2M;
            if huge_fits && self.large_leaf(*va, pa, 2, prot)? {
                *va += PAGE_2M;
                continue;
            }
            let pt = self.walk_alloc(*va, 1)?;
            let table_end = (*va & !(PAGE_2M - 1)) + PAGE_2M;
            while *va < end.min(table_end) {
                let index = pte::index(*va, 1);
                if !pt.read(index).is_empty() {
                    return Err(MmError::Busy);
                }
                let pa = PhysAddr::new_truncate(va.wrapping_add(delta));
                self.write(pt, index, F::leaf(pa, LeafDesc::raw(prot, self.nx)));
                *va += PAGE_4K;
            }
        }
        Ok(())
    }

    /// Writes a special leaf at `level` (2: 2 MiB, 3: 1 GiB) mapping `va` to
    /// `pa` if its slot is empty; `Ok(false)` if a table is already there
    /// (the caller falls through to smaller entries, which find anything
    /// mapped in it), `Busy` if a large leaf is.
    fn large_leaf(
        &mut self,
        va: u64,
        pa: u64,
        level: u32,
        prot: PageProt,
    ) -> Result<bool, MmError> {
        let table = self.walk_alloc(va, level)?;
        let index = pte::index(va, level);
        let entry = table.read(index);
        if entry.is_empty() {
            let leaf = LeafDesc::raw(prot, self.nx).huge();
            self.write(table, index, F::leaf(PhysAddr::new_truncate(pa), leaf));
            return Ok(true);
        }
        if entry.is_huge() {
            return Err(MmError::Busy);
        }
        Ok(false)
    }

    /// Clears the special entries in `[start, end)` that a failed remap
    /// wrote (they hold no references), with the TLB flushes that needs.
    fn clear_special(&mut self, start: u64, end: u64) {
        let mut pages = 0usize;
        let mut va = start;
        while let Some(leaf) = self.next_leaf(va, end) {
            // SAFETY: `next_leaf` just found `leaf`; nothing was freed since.
            let table = unsafe { self.leaf_table(&leaf) };
            self.write(table, leaf.index, Pte::EMPTY);
            pages += (leaf.size() / PAGE_4K) as usize;
            if pages <= FULL_FLUSH_THRESHOLD {
                self.tlb.flush_page(self.root(), leaf.va);
            }
            va = leaf.va.as_u64() + leaf.size();
        }
        if pages > FULL_FLUSH_THRESHOLD {
            self.tlb.flush_all(self.root());
        }
    }
}
