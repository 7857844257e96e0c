//! The instruction ring: the engine's DMA block, its layout, its counters,
//! and every store the CPU makes into it.
//!
//! The block holds, in order: the ring of SCRIPTS words; the *shadow*
//! array, one word per ring word, where the instruction at ring word `w`
//! keeps data of its own from shadow word `w` on (a write-back's cookie, a
//! fill's pattern), so that data lives and dies with the instruction; the
//! completion word, which every write-back overwrites with the chip's DSP;
//! a zero buffer that zeroing copies read; and the request entries (one
//! per request, or one per run of plain copies: see [`Entry`]).
//!
//! A safe type over a tiny unsafe core, as Hubris' DMA rings are: every
//! access to the block goes through [`Ring::cell`], whose bounds check is
//! always on. What the type keeps true: instructions are only written into
//! words claimed and not yet linked (the chip cannot reach them until
//! [`Ring::append`] links them behind the live tail, and the link is the
//! last store); a word is claimed again only after the completion word
//! says the chip has passed it ([`Ring::retire`]), or after the chip was
//! stopped ([`Ring::reset`], whose caller stops it first).

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{Ordering, fence};

use super::regs;
use super::script::{self, MOVE_WORDS, STORE_WORDS, TC_WORDS};
use crate::engine::{Cookie, EngineError, Op};
use crate::hal::{DmaAddr, Hal};

/// Words in the instruction ring (64 KiB: about 5400 Memory Moves).
pub(super) const RING_WORDS: u32 = 16 * 1024;
/// Size of the zero buffer that zeroing copies read.
pub(super) const ZERO_BYTES: u32 = 64 * 1024;
/// Requests tracked at once. Every request's instructions end with a
/// Memory Move or a write-back Store, each at least [`STORE_WORDS`] long,
/// and stay in words in use until the request is retired; the words in use
/// never fill the ring ([`Ring::used`]), so fewer than
/// `RING_WORDS / STORE_WORDS` requests are ever tracked, and the entries
/// cannot run out: the paths that end a request do not check (a debug
/// assertion does, in the host tests).
pub(super) const MAX_ENTRIES: u32 = RING_WORDS / STORE_WORDS;
const _: () = assert!(STORE_WORDS <= MOVE_WORDS);
// The entry counters wrap at 2^32, which an index modulo MAX_ENTRIES
// follows only if MAX_ENTRIES divides it; the words in use are a distance
// modulo RING_WORDS, taken with a mask.
const _: () = assert!(MAX_ENTRIES.is_power_of_two() && RING_WORDS.is_power_of_two());
/// Words in a tail: the doorbell's clear, then the WAIT RESELECT.
pub(super) const TAIL_WORDS: u32 = 2 * TC_WORDS;
/// Ring words kept free so [`Ring::append`] always finds room for a
/// write-back Store and a tail, each possibly preceded by a wrap JUMP and
/// the words the wrap leaves unused (fewer than the claim plus a JUMP).
pub(super) const ISSUE_RESERVE: u32 =
    (STORE_WORDS + TC_WORDS) + STORE_WORDS + (TAIL_WORDS + TC_WORDS) + TAIL_WORDS;
mod block;
mod entry;
mod mark;
mod retire;
#[cfg(test)]
mod tests;

use block::{RING_OFF, SHADOW_OFF, STATUS_OFF};
use entry::Entry;
pub(super) use mark::RingMark;

/// The last linked batch, as [`Ring::append`] left it: the value its
/// final write-back leaves in the completion word, the ring word its last
/// request's instructions end before (its entry's `end`), and that
/// request's cookie. Retiring the whole batch, the usual case, needs no
/// entry read. Meaningful only while a request is linked and not retired
/// (`issued() > 0`): each append sets it first, so no `Option`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Linked {
    value: u32,
    end: u32,
    last: Cookie,
}

impl Linked {
    /// Before the first append: a value no write-back leaves (they leave
    /// the address after a ring word).
    const NONE: Linked = Linked {
        value: 0,
        end: 0,
        last: Cookie::FIRST,
    };
}

/// The ring and the rest of the engine's DMA block.
pub(super) struct Ring<H: Hal> {
    block: NonNull<u8>,
    dma: DmaAddr,
    /// Next free ring word.
    head: u32,
    /// Ring word of the live tail.
    tail: u32,
    /// Oldest ring word still in use: the words in use run from here up
    /// to `head`, wrap waste included ([`Ring::used`]).
    free_from: u32,
    /// A claim from `head` that ends at or before this word needs no
    /// other check ([`Ring::reserve`]): computed by [`Ring::refresh_limit`]
    /// from the words in use then, and never more than the exact bound
    /// since (retiring only frees words; the head moves back or wraps only
    /// where the limit is computed again).
    limit: u32,
    /// The entry counters, each wrapping: entries in the queue are
    /// `pushed - retired`, the linked ones `appended - retired`, and the
    /// oldest is at index `retired` (taken modulo the array's length,
    /// which divides 2^32). Retiring a batch is then one store.
    ///
    /// Entries ended since creation.
    pushed: u32,
    /// Entries linked since creation.
    appended: u32,
    /// Entries retired since creation.
    retired: u32,
    /// The last prepared request (meaningful only while a request is
    /// unlinked, `pushed != appended`: each one ending sets it, so no
    /// `Option`), and the completion word's value once its own write-back
    /// has run, if its instructions end with one.
    last_cookie: Cookie,
    last_writeback: Option<u32>,
    /// What the completion word says once the last linked batch has
    /// ended, and what retiring it then frees: see [`Linked`].
    linked: Linked,
    /// The completion word's value when last retired from.
    last_seen: u32,
    _hal: PhantomData<H>,
}

// SAFETY: the ring owns its DMA block; nothing in it is tied to the
// creating thread.
unsafe impl<H: Hal> Send for Ring<H> {}

impl<H: Hal> Ring<H> {
    /// Stores an instruction's words at ring word `word`, the last first:
    /// its bounds check implies the others', which the compiler drops.
    /// (Unlinked words: the chip sees none of them until the link.)
    #[inline(always)]
    fn write_words<const N: usize>(&mut self, word: u32, words: [u32; N]) {
        let block = self.block;
        // SAFETY: the ring's block; `self` stays borrowed meanwhile.
        unsafe { Self::write_words_in(&block, word, words) }
    }

    /// [`Ring::write_words`] through a copy of the block's address, which a
    /// loop keeps in a register (see [`Ring::cell_of`]).
    ///
    /// # Safety
    /// As for [`Ring::cell_of`].
    #[inline(always)]
    unsafe fn write_words_in<const N: usize>(block: &NonNull<u8>, word: u32, words: [u32; N]) {
        for i in (0..N).rev() {
            // SAFETY: the caller's contract.
            unsafe { Self::cell_of::<u32>(block, RING_OFF + (word as usize + i) * 4) }
                .write(words[i]);
        }
    }

    /// Whether the instruction at DMA address `addr` is in words in use
    /// (from the oldest not retired up to the head): where the chip may be.
    #[cfg(test)]
    pub(super) fn in_use(&self, addr: u32) -> bool {
        let word = addr.wrapping_sub(self.addr(0)) / 4;
        word < RING_WORDS && (word + RING_WORDS - self.free_from) % RING_WORDS < self.used()
    }

    /// Requests prepared and not yet linked.
    pub(super) fn unlinked(&self) -> u32 {
        self.pushed.wrapping_sub(self.appended)
    }

    /// The DMA address of the live tail (where a parked chip waits).
    #[cfg(test)]
    pub(super) fn tail_addr(&self) -> u32 {
        self.addr(self.tail)
    }

    /// Requests linked into the chain and not yet retired.
    #[inline(always)]
    pub(super) fn issued(&self) -> u32 {
        self.appended.wrapping_sub(self.retired)
    }

    /// Requests ended and not yet retired, linked or not.
    #[inline(always)]
    fn entries(&self) -> u32 {
        self.pushed.wrapping_sub(self.retired)
    }

    /// Words in use, from `free_from` up to `head` around the ring. Once
    /// the ring is reset, never 0 (the live tail is always in use: only a
    /// rewind, to a mark after the last append, moves the head back) nor
    /// the whole ring (every claim leaves a word free: [`Ring::reserve`]),
    /// so the distance is unambiguous.
    #[inline(always)]
    fn used(&self) -> u32 {
        self.head.wrapping_sub(self.free_from) & (RING_WORDS - 1)
    }

    /// Claims `n` contiguous ring words, leaving `keep` words free and
    /// always one (so the words in use never fill the ring, which
    /// [`Ring::used`] could not tell from none), and returns the first.
    /// Wraps to word 0 with a JUMP when the end is near. Usually one
    /// comparison with the cached [`Ring::limit`](Ring); the exact checks
    /// run when it says no.
    // Performance note H1 (guide, performance chapter).
    #[inline(always)]
    fn reserve(&mut self, n: u32, keep: u32) -> Result<u32, EngineError> {
        let at = self.head;
        if keep <= ISSUE_RESERVE && at + n <= self.limit {
            // What the limit stands for, checked in every host test.
            debug_assert!(at + n + TC_WORDS <= RING_WORDS && self.used() + n + keep < RING_WORDS);
            self.head = at + n;
            return Ok(at);
        }
        self.reserve_exactly(n, keep)
    }

    /// [`Self::reserve`] with every check, when the cached limit says no:
    /// then the limit is computed again.
    #[inline(never)]
    fn reserve_exactly(&mut self, n: u32, keep: u32) -> Result<u32, EngineError> {
        let claimed = if self.head + n + TC_WORDS > RING_WORDS {
            self.reserve_wrapping(n, keep)
        } else if self.used() + n + keep >= RING_WORDS {
            Err(EngineError::RingFull)
        } else {
            let at = self.head;
            self.head = at + n;
            Ok(at)
        };
        self.refresh_limit();
        claimed
    }

    /// Computes [`Ring::limit`](Ring) from the ring as it is: the last
    /// word a claim from the head may end at and still leave a JUMP's room
    /// before the ring's end, [`ISSUE_RESERVE`] words and one more free.
    /// `base` is the oldest word in use, counted in the lap after the
    /// head's (the head is below it, by the free words).
    pub(super) fn refresh_limit(&mut self) {
        let base = self.head + RING_WORDS - self.used();
        self.limit = (base - 1)
            .saturating_sub(ISSUE_RESERVE)
            .min(RING_WORDS - TC_WORDS);
    }

    /// [`Self::reserve`] when the words do not fit before the ring's end.
    #[inline(never)]
    fn reserve_wrapping(&mut self, n: u32, keep: u32) -> Result<u32, EngineError> {
        let waste = RING_WORDS - self.head;
        if self.used() + waste + n + keep >= RING_WORDS {
            return Err(EngineError::RingFull);
        }
        let start = self.addr(0);
        self.write_words(self.head, script::jump(start));
        self.head = n;
        Ok(0)
    }

    /// Appends one instruction, leaving `keep` words free: claims its
    /// words, stores `shadow` into its shadow words, then the words `make`
    /// builds from the DMA address of its first shadow word.
    #[inline(always)]
    pub(super) fn push<const N: usize>(
        &mut self,
        keep: u32,
        shadow: &[u32],
        make: impl FnOnce(u32) -> [u32; N],
    ) -> Result<(), EngineError> {
        assert!(
            shadow.len() <= N,
            "an instruction owns only its own shadow words"
        );
        let at = self.reserve(N as u32, keep)?;
        for (i, &w) in shadow.iter().enumerate() {
            self.cell::<u32>(SHADOW_OFF + (at as usize + i) * 4)
                .write(w);
        }
        let words = make(self.shadow_addr(at));
        self.write_words(at, words);
        Ok(())
    }

    /// Appends a write-back for `cookie`, leaving `keep` words free: a
    /// Store of the chip's DSP into the completion word, its cookie in its
    /// shadow. Returns the value it leaves in the completion word (the
    /// address after the Store: the chip has fetched both of its words).
    #[inline(always)]
    pub(super) fn push_writeback(&mut self, cookie: Cookie, keep: u32) -> Result<u32, EngineError> {
        let at = self.reserve(STORE_WORDS, keep)?;
        Ok(self.write_writeback(at, cookie))
    }

    /// Writes a write-back for `cookie` into the claimed words from `at`
    /// (see [`Ring::push_writeback`]); returns the value it leaves.
    #[inline(always)]
    fn write_writeback(&mut self, at: u32, cookie: Cookie) -> u32 {
        // In locals, so the stores below leave them in registers.
        let (block, completion, next) = (
            self.block,
            self.completion_addr(),
            self.addr(at + STORE_WORDS),
        );
        // SAFETY: the ring's block; `self` stays borrowed meanwhile.
        unsafe {
            Self::cell_of::<u32>(&block, SHADOW_OFF + at as usize * 4).write(cookie.get() as u32);
            Self::write_words_in(&block, at, script::store(regs::DSP, 4, completion));
        }
        next
    }

    /// Ends a request: everything pushed since the last one is `cookie`'s;
    /// `writeback` is the completion value of its own write-back, if it has
    /// one. Its words end there: an instruction pushed after its write-back
    /// (an INTFLY) belongs to the next request, because when the completion
    /// word says the write-back ran, the chip may not have run it yet.
    #[inline(always)]
    pub(super) fn end_request(&mut self, cookie: Cookie, writeback: Option<u32>) {
        let end = writeback.map_or(self.head, |value| (value - self.addr(0)) / 4);
        let entry = Entry {
            last: cookie.get(),
            end,
            count: 1,
        };
        debug_assert!(self.entries() < MAX_ENTRIES, "the entries ran out");
        self.write_entry(self.pushed, entry);
        self.pushed = self.pushed.wrapping_add(1);
        self.last_cookie = cookie;
        self.last_writeback = writeback;
    }

    /// Appends the leading copies of `ops` that are valid (within `mask`,
    /// not wrapping, not overlapping: [`copy_is_valid`](crate::engine::copy_is_valid); at most
    /// [`MAX_MOVE`](script::MAX_MOVE) bytes) as one Memory Move each, request
    /// by request from cookie `first`, in one pass: room for all of them
    /// (before the ring's end, with [`ISSUE_RESERVE`] and a word more left) is checked once,
    /// and they share one entry. Stops at the first op that is not such a
    /// copy; returns how many it appended (0 when they do not fit in one
    /// stretch: the caller takes the general path). With `all_or_none`,
    /// appends nothing unless every op is one: the words written for those
    /// before are left unclaimed, where the chip cannot reach them.
    #[inline(always)]
    pub(super) fn push_copies(
        &mut self,
        first: Cookie,
        ops: &[Op],
        mask: u64,
        all_or_none: bool,
    ) -> u32 {
        let n = ops.len() as u32;
        let words = n * MOVE_WORDS;
        if mask < script::MAX_MOVE as u64 {
            return 0;
        }
        // Room before the ring's end, with the reserve and a word more
        // free: the cached limit, or the limit computed again.
        if self.head + words > self.limit {
            self.refresh_limit();
            if self.head + words > self.limit {
                return 0;
            }
        }
        // Short of the cookies' wrap, a request's cookie is the one before
        // plus 1 (a run across the wrap takes the general path).
        if i32::try_from(n)
            .ok()
            .and_then(|n| first.get().checked_add(n))
            .is_none()
        {
            return 0;
        }
        let at = self.head;
        let word = self.write_moves(at, ops, mask);
        let done = (word - at) / MOVE_WORDS;
        if done == 0 || (all_or_none && done < n) {
            return 0;
        }
        // `done * MOVE_WORDS` fit in the ring, so `done` fits an entry's
        // 16-bit count, and `word` its 16-bit end.
        let last = first.get() + done as i32 - 1;
        let entry = Entry {
            last,
            end: word,
            count: done,
        };
        debug_assert!(self.entries() < MAX_ENTRIES, "the entries ran out");
        self.write_entry(self.pushed, entry);
        self.pushed = self.pushed.wrapping_add(1);
        self.head = word;
        // `last` is at least `first`, short of the wrap (checked above).
        self.last_cookie = Cookie::new(last).unwrap_or(first);
        self.last_writeback = None;
        done
    }

    /// The loop of [`Ring::push_copies`]: writes one Memory Move per op
    /// from ring word `at` on, up to the first op that is not a valid
    /// plain copy ([`is_one_move`]: `mask` is at least
    /// [`MAX_MOVE`](script::MAX_MOVE)); returns the ring word after the
    /// last move written.
    /// Out of line, so the loop has the registers to itself (inlined into
    /// `prep_batch` it spilled and reloaded 8 values per copy).
    #[inline(never)]
    fn write_moves(&mut self, at: u32, ops: &[Op], mask: u64) -> u32 {
        // The caller's room check covers every word, stated here once.
        assert!(at as usize + ops.len() * MOVE_WORDS as usize <= RING_WORDS as usize);
        // In a local, so the stores below leave it in a register.
        let block = self.block;
        let mut word = at;
        for op in ops {
            let Op::Copy { dst, src, len } = *op else {
                break;
            };
            if !is_one_move(dst, src, len, mask) {
                break;
            }
            // Checked just now: within the 32-bit mask (the engine's), at
            // most MAX_MOVE long: the casts are exact.
            let words = script::memory_move(len as u32, src as u32, dst as u32);
            // SAFETY: the ring's block; `self` stays borrowed meanwhile.
            unsafe { Self::write_words_in(&block, word, words) };
            word += MOVE_WORDS;
        }
        word
    }

    /// Links every request ended since the last append behind the live
    /// tail: a write-back for the last of them (unless it has its own),
    /// a new tail, then the old tail turned into a JUMP to them (operand
    /// first, opcode last, so a fetch sees either the old instruction or
    /// the complete JUMP). Returns whether anything was linked. The chip
    /// may take the JUMP as soon as it is stored.
    #[inline(always)]
    pub(super) fn append(&mut self) -> bool {
        self.append_observed(|_| {})
    }

    /// [`Ring::append`], calling `between` after each store the chip might
    /// see mid-way (the new tail, the JUMP's operand): how a test lets a
    /// chip run there. The empty closure of `append` compiles to nothing.
    #[inline(always)]
    fn append_observed(&mut self, mut between: impl FnMut(&Self)) -> bool {
        if self.pushed == self.appended {
            return false;
        }
        let last = self.last_cookie;
        // Where the last request's words end, as its entry has it: before
        // its own write-back, or here (nothing is claimed after a request
        // ends but the next request's words).
        let end = match self.last_writeback {
            Some(value) => (value - self.addr(0)) / 4,
            None => self.head,
        };
        debug_assert_eq!(end, self.entry(self.pushed.wrapping_sub(1)).end);
        // ISSUE_RESERVE guarantees the room for these: a write-back and a
        // tail claimed together take at most one wrap's waste.
        // Each claim is written with one store sequence (one bounds check).
        let (done, new_tail) = match self.last_writeback {
            Some(value) => match self.reserve(TAIL_WORDS, 0) {
                Ok(tail) => {
                    self.write_tail(tail);
                    (value, tail)
                }
                Err(_) => return false,
            },
            None => match self.reserve(STORE_WORDS + TAIL_WORDS, 0) {
                Ok(at) => (self.write_writeback_and_tail(at, last), at + STORE_WORDS),
                Err(_) => return false,
            },
        };
        between(self);
        // In locals, so the stores below leave them in registers.
        let (block, old_tail) = (self.block, self.tail);
        let start = self.addr(old_tail + TAIL_WORDS);
        // Everything the JUMP leads to must be in memory before the JUMP,
        // and its operand before its opcode (the clear ignores its second
        // word, so the operand can land first).
        fence(Ordering::Release);
        // SAFETY: the ring's block; `self` stays borrowed meanwhile.
        unsafe { Self::write_words_in(&block, old_tail + 1, [start]) };
        between(self);
        fence(Ordering::Release);
        // SAFETY: as above.
        unsafe { Self::write_words_in(&block, old_tail, [script::JUMP]) };
        self.tail = new_tail;
        self.appended = self.pushed;
        // `last_writeback` is left as it is: it is read only while a
        // request is unlinked, and the next one sets it when it ends.
        self.linked = Linked {
            value: done,
            end,
            last,
        };
        true
    }

    /// A tail at `word`: the doorbell's clear, then a WAIT RESELECT whose
    /// alternate address is the tail itself.
    #[inline(always)]
    fn write_tail(&mut self, word: u32) {
        let words = tail_words(self.addr(word));
        self.write_words(word, words);
    }

    /// A write-back for `cookie` at claimed word `at` (see
    /// [`Ring::push_writeback`]) and a tail right after it, stored as one
    /// sequence; returns the value the write-back leaves.
    #[inline(always)]
    fn write_writeback_and_tail(&mut self, at: u32, cookie: Cookie) -> u32 {
        const WORDS: usize = (STORE_WORDS + TAIL_WORDS) as usize;
        // In locals, so the stores below leave them in registers.
        let (block, tail) = (self.block, self.addr(at + STORE_WORDS));
        let [s0, s1] = script::store(regs::DSP, 4, self.completion_addr());
        let [c0, c1, w0, w1] = tail_words(tail);
        // SAFETY: the ring's block; `self` stays borrowed meanwhile.
        unsafe {
            Self::cell_of::<u32>(&block, SHADOW_OFF + at as usize * 4).write(cookie.get() as u32);
            Self::write_words_in::<WORDS>(&block, at, [s0, s1, c0, c1, w0, w1]);
        }
        tail
    }

    /// Forgets every request; the words stay claimed until [`Ring::reset`]
    /// (the chip has stopped, or is stopping, where they are).
    pub(super) fn forget_requests(&mut self) {
        self.pushed = self.retired;
        self.appended = self.retired;
        self.last_writeback = None;
    }

    /// Empties the ring and writes its first tail at word 0; returns the
    /// tail's DMA address, where the loop starts. The caller has stopped
    /// the chip, so nothing reads the block meanwhile.
    pub(super) fn reset(&mut self) -> u32 {
        self.cell::<u32>(STATUS_OFF).write(0);
        self.write_tail(0);
        self.head = TAIL_WORDS;
        self.tail = 0;
        self.free_from = 0;
        self.refresh_limit();
        self.forget_requests();
        self.linked = Linked::NONE;
        self.last_seen = 0;
        self.addr(0)
    }
}

/// The words of a tail whose first word has DMA address `me`: the
/// doorbell's clear, then a WAIT RESELECT back to the clear.
#[inline(always)]
const fn tail_words(me: u32) -> [u32; TAIL_WORDS as usize] {
    let [c0, c1] = script::clear_sigp();
    let [w0, w1] = script::wait_reselect(me);
    [c0, c1, w0, w1]
}

/// Whether the channel accepts a copy of `len` bytes from `src` to `dst`
/// ([`copy_is_valid`](crate::engine::copy_is_valid) against `mask`) that one Memory Move holds (at most
/// [`MAX_MOVE`](script::MAX_MOVE) bytes), for a `mask` of at least
/// `MAX_MOVE`: then a length of 1 to `MAX_MOVE` keeps `mask - (len - 1)`
/// from wrapping, which `copy_is_valid` checks on its own, so this takes
/// one comparison fewer per copy of a batch. A test checks that both agree.
#[inline(always)]
fn is_one_move(dst: DmaAddr, src: DmaAddr, len: usize, mask: u64) -> bool {
    let span = len.wrapping_sub(1) as u64;
    (span < script::MAX_MOVE as u64)
        & (dst.max(src) <= mask.wrapping_sub(span))
        & (dst.abs_diff(src) > span)
}
