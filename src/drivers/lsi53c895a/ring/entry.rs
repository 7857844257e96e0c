//! The request entries: which requests the ring's words belong to, one
//! entry per request or per run of plain copies.

use super::block::{ENTRY_BYTES, ENTRY_OFF};
use super::script::MOVE_WORDS;
use super::{MAX_ENTRIES, RING_WORDS, Ring};
use crate::hal::Hal;

/// An entry: requests `last - count + 1 ..= last`, whose instructions
/// end before ring word `end`. An entry of several requests is a run of
/// plain copies ([`Ring::push_copies`]): one Memory Move each, the last
/// `count * MOVE_WORDS` words before `end`, in order. Stored as two words:
/// `last`, then `end | count << 16` (both below 2^16: `end` is a ring word,
/// and a run fits in the ring).
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub(super) last: i32,
    pub(super) end: u32,
    pub(super) count: u32,
}

const _: () = assert!(RING_WORDS < 1 << 16);

impl Entry {
    /// Its first request's cookie (a run never crosses the cookies' wrap).
    pub(super) fn first(self) -> i32 {
        self.last - (self.count as i32 - 1)
    }

    /// The cookie of the request whose instructions include ring word
    /// `word`, one of this entry's. Words before a run's moves (an
    /// INTFLY the request before it left after its write-back) are its
    /// first request's, as they are any request's.
    pub(super) fn owner_of(self, word: u32) -> i32 {
        let moves_from = self.end.saturating_sub(self.count * MOVE_WORDS);
        if self.count > 1 && (moves_from..self.end).contains(&word) {
            self.last - ((self.end - 1 - word) / MOVE_WORDS) as i32
        } else {
            self.first()
        }
    }
}

impl<H: Hal> Ring<H> {
    /// The entry at `index` (taken modulo the array's length).
    #[inline(always)]
    pub(super) fn entry(&self, index: u32) -> Entry {
        let at = ENTRY_OFF + (index & (MAX_ENTRIES - 1)) as usize * ENTRY_BYTES;
        let packed = self.cell::<u32>(at + 4).read();
        Entry {
            last: self.cell::<i32>(at).read(),
            end: packed & 0xffff,
            count: packed >> 16,
        }
    }

    /// Writes the entry at `index` (taken modulo the array's length).
    #[inline(always)]
    pub(super) fn write_entry(&mut self, index: u32, entry: Entry) {
        let at = ENTRY_OFF + (index & (MAX_ENTRIES - 1)) as usize * ENTRY_BYTES;
        self.cell::<i32>(at).write(entry.last);
        self.cell::<u32>(at + 4)
            .write(entry.end | (entry.count << 16));
    }
}
