//! TLB maintenance, supplied by the kernel: every removal or downgrade of a
//! mapping, and every unlinking of a page table, is flushed before the
//! frames behind it can be reused; additions need no flush (x86 does not
//! cache not-present entries).

use x86_64::VirtAddr;

use super::pte::PAGE_4K;
use x86_64::structures::paging::PhysFrame;

/// Above this many pages, one full flush replaces page-by-page `invlpg`.
pub const FULL_FLUSH_THRESHOLD: usize = 32;

/// Flushes translations of one address space, named by its root table.
///
/// The crate does not track where a space is loaded: the flusher does. A
/// kernel without PCIDs can compare `root` with CR3 and do nothing when the
/// space is not loaded (loading CR3 drops every non-global translation);
/// with PCIDs, or with the space loaded on several CPUs, it must reach
/// every CPU that may hold the space's translations.
///
/// # Safety
/// When a call returns, no CPU may still use a translation of the space
/// rooted at `root` that the call covers (for `flush_all`, any of its
/// translations), nor a paging-structure-cache entry of it: the crate frees
/// frames and page tables on that promise. `invlpg` invalidates the
/// paging-structure caches as well as the page's translation (SDM 4.10.4.1).
pub unsafe trait TlbFlush {
    /// Invalidates the translation of the page containing `va` (`invlpg`).
    fn flush_page(&mut self, root: PhysFrame, va: VirtAddr);
    /// Invalidates every non-global translation of the space (a CR3
    /// reload).
    fn flush_all(&mut self, root: PhysFrame);

    /// Invalidates the translations of the `pages` 4 KiB pages from
    /// `start`, and the paging-structure caches: the crate calls it once for all the
    /// entries a call cleared or downgraded (a zap, fork's write-protect), so
    /// a kernel that must interrupt other CPUs does it once per call, not
    /// once per page (a zap that empties more than 64 page tables, or
    /// splits a large entry at its ends, flushes more). The default does `flush_page` for each page up to
    /// [`FULL_FLUSH_THRESHOLD`] pages, else `flush_all`.
    fn flush_range(&mut self, root: PhysFrame, start: VirtAddr, pages: u64) {
        if pages == 0 || pages > FULL_FLUSH_THRESHOLD as u64 {
            self.flush_all(root);
        } else {
            for i in 0..pages {
                self.flush_page(root, start + i * PAGE_4K);
            }
        }
    }
}
