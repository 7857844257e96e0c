//! Retiring: what the completion word says the chip has passed, and which
//! request a ring word belongs to.

use super::block::{SHADOW_OFF, STATUS_OFF};
use super::entry::Entry;
use super::script::STORE_WORDS;
use super::{RING_WORDS, Ring};
use crate::engine::Cookie;
use crate::hal::Hal;

impl<H: Hal> Ring<H> {
    fn read_completion(&self) -> u32 {
        self.cell::<u32>(STATUS_OFF).read()
    }

    /// The cookie of the write-back that left `written` in the completion
    /// word (`None` for a value no write-back leaves, such as the zero of a
    /// reset).
    #[inline(always)]
    fn written_back(&self, written: u32) -> Option<u32> {
        let offset = written.wrapping_sub(self.addr(0));
        let word = (offset / 4).checked_sub(STORE_WORDS)?;
        if !offset.is_multiple_of(4) || word >= RING_WORDS {
            return None;
        }
        Some(self.cell::<u32>(SHADOW_OFF + word as usize * 4).read())
    }

    /// Retires the linked requests the completion word says are done;
    /// returns the newest of them. Their words become free.
    #[inline(always)]
    pub(in crate::drivers::lsi53c895a) fn retire(&mut self) -> Option<Cookie> {
        let completion = self.read_completion();
        if completion == self.last_seen {
            return None;
        }
        self.last_seen = completion;
        if self.appended == self.retired {
            return None;
        }
        // Usually the whole linked batch is done, which the value its final
        // write-back leaves says without a look at the shadow words or the
        // entries.
        let linked = self.linked;
        if linked.value == completion {
            self.free_through(self.appended, linked.end);
            return Some(linked.last);
        }
        let written = self.written_back(completion)?;
        let done = (0..self.issued())
            .find(|&k| self.entry(self.retired.wrapping_add(k)).last as u32 == written)?;
        let through = self.retired.wrapping_add(done);
        let Entry {
            last: cookie, end, ..
        } = self.entry(through);
        self.free_through(through.wrapping_add(1), end);
        Cookie::new(cookie)
    }

    /// Retires the entries before `retired` (a value of the counter, at
    /// most `appended`), whose words end before ring word `end`.
    #[inline(always)]
    fn free_through(&mut self, retired: u32, end: u32) {
        self.free_from = end;
        self.retired = retired;
    }

    /// The linked request whose instructions include the one at DMA
    /// address `addr`, if any.
    pub(in crate::drivers::lsi53c895a) fn owner_of(&self, addr: u32) -> Option<Cookie> {
        let word = addr.wrapping_sub(self.addr(0)) / 4;
        if word >= RING_WORDS {
            return None;
        }
        let mut start = self.free_from;
        for k in 0..self.issued() {
            let entry = self.entry(self.retired.wrapping_add(k));
            let end = entry.end;
            let inside = if start <= end {
                (start..end).contains(&word)
            } else {
                word >= start || word < end
            };
            if inside {
                return Cookie::new(entry.owner_of(word));
            }
            start = end;
        }
        None
    }

    /// The oldest request not retired.
    pub(in crate::drivers::lsi53c895a) fn oldest(&self) -> Option<Cookie> {
        (self.entries() > 0)
            .then(|| Cookie::new(self.entry(self.retired).first()))
            .flatten()
    }
}
