//! TLB maintenance, supplied by the kernel: every removal or downgrade of a
//! mapping is flushed before the frames behind it can be reused; additions
//! need no flush (x86 does not cache not-present entries).

/// Above this many pages, one full flush replaces page-by-page `invlpg`.
pub const FULL_FLUSH_THRESHOLD: usize = 32;

/// Flushes translations of one address space.
pub trait TlbFlush {
    /// Invalidates the translation of the page containing `va` (`invlpg`),
    /// if the address space is active.
    fn flush_page(&mut self, va: u64);
    /// Invalidates every non-global translation (a CR3 reload), if the
    /// address space is active.
    fn flush_all(&mut self);
}
