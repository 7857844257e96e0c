//! Write faults on copy-on-write areas (`do_wp_page`), and finding the
//! counted page behind an entry (`vm_normal_page`).

use x86_64::VirtAddr;
use x86_64::structures::paging::PhysFrame;

use super::{AddressSpace, VmaId};
use crate::mm::MmError;
use crate::mm::pte::{self, PAGE_4K, Pte, SPECIAL, X86};
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{CountedPage, PageCounter, TableAllocator, TableMapper};
use crate::mm::vma::VmFlags;

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

/// Write faults and `fork` are the CPU's business: for the CPU's format.
impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush> AddressSpace<C, M, A, T, X86> {
    /// The counted page mapped at `addr` in area `id` (Linux's
    /// `vm_normal_page`): `None` for special entries (raw PFNs, with nothing
    /// counted) and for nothing mapped.
    pub fn normal_page(&self, id: VmaId, addr: VirtAddr) -> Result<Option<C::Page>, MmError> {
        let vma = self.vma(id)?;
        if !vma.contains(addr) {
            return Err(MmError::OutOfRange);
        }
        Ok(self
            .translate(addr)
            .filter(|leaf| !leaf.is_special())
            .and_then(|leaf| leaf.frame_of(addr))
            .and_then(|page| self.counter.get(page)))
    }

    /// Handles a write fault at `addr` on a present, read-only entry of a
    /// copy-on-write area (Linux's `do_wp_page`): the faulting address gets a
    /// private, writable copy of the page, or the page itself when this
    /// mapping is its only holder. A special entry (a raw PFN) is copied into
    /// a new counted page; a 2 MiB or 1 GiB special entry is first split down
    /// to 4 KiB entries (as Linux's `wp_huge_pmd` falls back to the PTE
    /// path) and only the faulting page is copied. Errors: nothing mapped (`NotMapped`),
    /// outside any area (`OutOfRange`), an area that may not be written
    /// (`Protection`), or no memory for the copy or the split (nothing
    /// changed).
    ///
    /// Where this differs from Linux, on purpose:
    /// - A counted page that `insert_page` put into a private area is reused
    ///   in place when this mapping holds its only reference and map count
    ///   (the driver has dropped its reference, so no one else can see the
    ///   page); Linux copies any page it did not allocate as anonymous
    ///   memory. While the driver holds its reference, the page is copied.
    /// - A read-only entry in a shared writable area is `Protection`: the
    ///   driver chose read-only for it (there is no `pfn_mkwrite` hook),
    ///   where Linux would make it writable.
    pub fn handle_write_fault(&mut self, addr: VirtAddr) -> Result<WriteFault, MmError> {
        let vma = self.vma_at(addr).ok_or(MmError::OutOfRange)?;
        if !vma.flags.contains(VmFlags::WRITE) {
            return Err(MmError::Protection);
        }
        let mut leaf = self.translate(addr).ok_or(MmError::NotMapped)?;
        if leaf.entry.has(pte::WRITABLE) {
            return Ok(WriteFault::Spurious);
        }
        if !vma.flags.is_cow() {
            return Err(MmError::Protection);
        }
        // The 4 KiB frame behind `addr`, whatever the leaf's size.
        let source = leaf.frame_of(addr).ok_or(MmError::NotMapped)?;
        let mut copy = None;
        if leaf.level >= 2 {
            // The copy's page, its count and every table first: if one
            // cannot be had, giving back what was taken leaves everything
            // as it was.
            let (page, page_frame) = self.counted_copy(source)?;
            let mut tables = [None; 2];
            let levels = (leaf.level - 1) as usize;
            if let Err(e) = self.alloc_tables(&mut tables[..levels]) {
                // SAFETY: the count `counted_copy` took, for an entry now
                // never written.
                unsafe { self.counter.unmap(page_frame) };
                return Err(e);
            }
            // 1 GiB to 2 MiB, then 2 MiB to 4 KiB.
            for table in tables.into_iter().flatten() {
                self.split_leaf(&leaf, table);
                leaf = self.translate(addr).ok_or(MmError::NotMapped)?;
            }
            copy = Some((page, page_frame));
        }
        let old = PhysFrame::containing_address(leaf.phys());
        let counted = !leaf.is_special();
        // SAFETY: the walk just above found `leaf`; nothing was freed since.
        let table = unsafe { self.leaf_table(&leaf) };
        if counted && copy.is_none() && self.counter.only_mapping(old) {
            self.write(table, leaf.index, leaf.entry.with(pte::WRITABLE));
            self.tlb.flush_page(self.root(), leaf.va);
            return Ok(WriteFault::Reused);
        }
        let (_copy, copy_frame) = match copy {
            Some(copy) => copy,
            None => self.counted_copy(source)?,
        };
        // SAFETY: the source is the frame the entry maps (a counted page, or
        // a raw frame a driver remapped, which `remap_pfn_range`'s contract
        // keeps valid while mapped), the destination a page just allocated
        // to us; `TableMapper` maps both as 4096 bytes, and `counted_copy`
        // checked they are distinct frames.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.mapper.frame_ptr(old),
                self.mapper.frame_ptr(copy_frame),
                PAGE_4K as usize,
            );
        }
        // The copy is ordinary memory: write-back, whatever the original was.
        // Its entry holds the count `counted_copy` took; the page's own
        // reference goes when `_copy` drops below.
        let cache = pte::PWT | pte::PCD | pte::PAT_4K;
        let flags = leaf.entry.flags(1) & !SPECIAL & !cache;
        let entry = Pte::from_bits(copy_frame.start_address().as_u64() | flags).with(pte::WRITABLE);
        self.write(table, leaf.index, entry);
        self.tlb.flush_page(self.root(), leaf.va);
        if counted {
            // SAFETY: the entry that mapped `old` (a counted page, so
            // written with `try_map`'s count) now maps the copy and was
            // flushed just above.
            unsafe { self.counter.unmap(old) };
        }
        Ok(WriteFault::Copied)
    }

    /// A fresh page for a copy of `source`, and its frame, with the map
    /// count of the entry that will map it taken, before anything changes:
    /// a counter may refuse that count, and the split a large entry needs
    /// must not be left behind when it does. The frame is asked for once,
    /// so the frame counted is the frame copied into and mapped.
    fn counted_copy(&self, source: PhysFrame) -> Result<(C::Page, PhysFrame), MmError> {
        let page = self.counter.alloc_page().ok_or(MmError::OutOfMemory)?;
        let frame = page.frame();
        // A fresh page is free memory, so only a raw frame that was freed
        // while mapped can be it; copying it onto itself would be UB.
        if frame == source {
            return Err(MmError::FreeFrameMapped);
        }
        // SAFETY: the count is for the entry the fault writes; the caller
        // gives it back at once if it does not write it, and a later zap
        // or fault gives it back otherwise.
        if !unsafe { self.counter.try_map(frame) } {
            return Err(MmError::NotInsertable);
        }
        Ok((page, frame))
    }
}
