//! Preparation points: what a failed request takes back.

use super::Ring;
use crate::engine::Cookie;
use crate::hal::Hal;

/// A saved preparation point: what requests prepared after it changed.
#[derive(Clone, Copy, Debug)]
pub(in crate::drivers::lsi53c895a) struct RingMark {
    head: u32,
    pushed: u32,
    appended: u32,
    last_cookie: Cookie,
    last_writeback: Option<u32>,
}

impl<H: Hal> Ring<H> {
    /// The preparation point now.
    #[inline(always)]
    pub(in crate::drivers::lsi53c895a) fn mark(&self) -> RingMark {
        RingMark {
            head: self.head,
            pushed: self.pushed,
            appended: self.appended,
            last_cookie: self.last_cookie,
            last_writeback: self.last_writeback,
        }
    }

    /// Forgets what was prepared after `mark`; retires since the mark
    /// stand (they freed words before it). A mark from before the last
    /// append is refused (it would take back requests the chain links): it
    /// panics.
    pub(in crate::drivers::lsi53c895a) fn rewind(&mut self, mark: RingMark) {
        // Nothing linked since the mark (an append since would have
        // linked the write-back and tail the head would go back behind),
        // and the entries ended since it, none of them linked.
        let added = self.pushed.wrapping_sub(mark.pushed);
        assert!(
            mark.appended == self.appended && added <= self.unlinked(),
            "rewind to a mark from before the last append"
        );
        self.pushed = mark.pushed;
        // The words claimed since the mark, wrap waste included, are free
        // again (never a whole lap, as the reserve always stays free).
        self.head = mark.head;
        // The cached limit was computed for a later head (back across a
        // wrap, one in the next lap): computed again, so its argument need
        // not follow the head back.
        self.refresh_limit();
        self.last_cookie = mark.last_cookie;
        self.last_writeback = mark.last_writeback;
    }
}
