//! The LSI53C895A SCSI controller's SCRIPTS processor (`-device lsi53c895a`,
//! PCI 1000:0012), used as a memory-to-memory copy engine.
//!
//! # The ring
//! Requests become SCRIPTS instructions in a ring of 32-bit words in DMA
//! memory: one Memory Move per copy (zeroing copies from a zero buffer;
//! fills write 8 pattern bytes, then double them). Each issued batch ends
//! with one *write-back*, a Store of the chip's own DSP into a completion
//! word in memory (as I/OAT writes CHANSTS), followed by a *tail* where the
//! processor parks (see below). DSP then holds the address of the instruction after
//! the Store (the chip has fetched both of its words), so the completion
//! word names the last write-back executed. The value a batch's final
//! write-back leaves is known when it is issued, so the usual completion
//! costs one read of the completion word; an earlier write-back's cookie
//! waits in the *shadow* word of its Store. Requests that ask for a callback
//! or an interrupt get their own write-back, plus an INTFLY for an
//! interrupt. The shadow array sits beside the ring: the words of the
//! instruction at ring word `w` own shadow words `w..`, so they live and die
//! with the instruction (a fill's Memory Move copies its pattern from
//! there). A Store costs the chip two fetches and one write, where a Memory
//! Move of the cookie would cost three fetches, a read and a write (and,
//! under QEMU 10, the zeroing of a 4 KiB bounce buffer): a single 4 KiB
//! copy runs at 0.82-0.84 of a bare Memory Move's pace there, against
//! 0.72-0.77 with a Memory Move as the write-back (measured side by side).
//!
//! # A resident loop and a doorbell
//! The processor never stops between batches. Each tail is two
//! instructions: `MOVE CTEST2 | 0 TO SFBR`, whose read of CTEST2 clears
//! ISTAT.SIGP (the doorbell), then `WAIT RESELECT` whose alternate address
//! is the tail itself. With no doorbell pending the WAIT parks the
//! processor (SRUN stays set, no timer runs); a host write of SIGP wakes it
//! at the alternate address. Appending a batch writes it after the tail,
//! then turns the tail's first instruction into a JUMP to it (operand
//! first, opcode last, so a fetch sees either the old instruction or the
//! complete JUMP), then rings the doorbell: one register write, no read.
//! Whatever the processor was doing, it runs the batch exactly once:
//! - parked in the tail's WAIT: the doorbell wakes it at the tail, now the
//!   JUMP;
//! - paused by QEMU between the tail's clear and its WAIT (QEMU runs a
//!   slice of instructions, 100 on 7.2 and 500 on 10.0, then resumes from
//!   a timer): the doorbell stays latched, so the WAIT takes the alternate
//!   address at once, which is the JUMP;
//! - busy before the tail: it reaches the JUMP by itself; the latched
//!   doorbell is cleared by the new batch's own tail, or wakes it there
//!   once for nothing (it parks again);
//! - stopped on an error: nothing runs; [`Engine::poll`] reports the error,
//!   which a parked processor (still "running") never causes.
//!
//! SIGP is latched: a host write of ISTAT keeps its low four bits and
//! replaces the top four, so acknowledging an interrupt writes INTF with
//! SIGP, never INTF alone, which would drop a pending doorbell; only a
//! read of CTEST2 clears it, which the driver never makes. `terminate`,
//! `reset` and dropping the engine abort and soft-reset the processor
//! (an abort alone leaves a parked WAIT able to wake), and `reset` starts
//! a new loop with one DSP write.
//!
//! The doorbell is an `outb` when the kernel hands the engine the chip's
//! I/O BAR ([`Lsi53c895a::set_doorbell`]), an MMIO write of ISTAT
//! otherwise: under QEMU 10 an MMIO store in mid-block makes QEMU translate
//! the block again, and an `out` ends its block by itself.

#[cfg(test)]
pub(crate) mod fake;
pub mod regs;
pub mod script;
#[cfg(test)]
mod tests;

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{Ordering, fence};

use regs::{Dmode, Dstat, Istat, Istat1};
use script::{MOVE_WORDS, STORE_WORDS, TC_WORDS};

use crate::engine::{
    Capabilities, Cookie, DmaError, Engine, EngineError, ErrorKind, Fault, Limits, Notify, Op,
    Progress, Termination,
};
use crate::hal::{DmaAddr, Hal, PAGE_SIZE};
use crate::mmio::{MmioRegion, PortRegion, Registers};

/// Words in the instruction ring (64 KiB: about 5400 Memory Moves).
const RING_WORDS: u32 = 16 * 1024;
/// Size of the zero buffer that zeroing copies from.
const ZERO_BYTES: u32 = 64 * 1024;
/// Requests tracked at once: every request takes at least one Memory Move,
/// so the ring never holds more than `RING_WORDS / MOVE_WORDS + 1`; rounded
/// up to a power of two so an index wraps with a mask, not a division.
const MAX_ENTRIES: u32 = (RING_WORDS / MOVE_WORDS + 1).next_power_of_two();
/// Words in a tail: the doorbell's clear, then the WAIT RESELECT.
const TAIL_WORDS: u32 = 2 * TC_WORDS;
/// Ring words kept free so `issue` always finds room for a write-back Store
/// and a tail, each possibly preceded by a wrap JUMP and the words the
/// wrap leaves unused (fewer than the claim plus a JUMP).
const ISSUE_RESERVE: u32 =
    (STORE_WORDS + TC_WORDS) + STORE_WORDS + (TAIL_WORDS + TC_WORDS) + TAIL_WORDS;

/// Byte offsets in the engine's DMA block.
const RING_OFF: usize = 0;
const SHADOW_OFF: usize = RING_OFF + RING_WORDS as usize * 4;
const STATUS_OFF: usize = SHADOW_OFF + RING_WORDS as usize * 4;
const ZERO_OFF: usize = STATUS_OFF + PAGE_SIZE;
const ENTRY_OFF: usize = ZERO_OFF + ZERO_BYTES as usize;
const BLOCK_BYTES: usize = ENTRY_OFF + MAX_ENTRIES as usize * size_of::<Entry>();

/// One request in the ring: its cookie and the ring word after its last
/// instruction. Its instructions start where the previous entry ended.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Entry {
    cookie: i32,
    end: u32,
}

/// A saved preparation point (see [`Engine::mark`]).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    head: u32,
    used: u32,
    entries: u32,
    last_cookie: Option<Cookie>,
    last_writeback: Option<u32>,
    inject: bool,
}

/// The LSI53C895A SCRIPTS processor as a copy [`Engine`], reached through
/// registers `R` (its MMIO window, BAR1, [`regs::MMIO_SIZE`] bytes; a fake
/// chip in host tests).
///
/// Through [`Channel::engine_mut`](crate::engine::Channel::engine_mut)
/// these are meant to be called: [`Lsi53c895a::is_running`],
/// [`Lsi53c895a::register_accesses`], [`Lsi53c895a::dma_block`] (and
/// [`Lsi53c895a::regs`] under its contract), and with the `test-hooks` feature
/// `set_manual_start` and `inject_illegal_instruction`.
///
/// What QEMU's emulation (7.2 and 10.0) does that the driver depends on:
/// it runs at most a slice of SCRIPTS instructions (100 on 7.2, 500 on
/// 10.0) inside the register write that started or woke them and the rest
/// from a timer, a slice every 500 us of virtual time, with ISTAT1.SRUN
/// set meanwhile (so long chains complete asynchronously); WAIT RESELECT
/// parks with SRUN set, and a write of ISTAT.SIGP wakes it at the WAIT's
/// alternate address, or makes the next WAIT take it at once; SIGP stays
/// set until a read of CTEST2; ISTAT.ABRT stops the processor but leaves
/// that timer armed and a parked WAIT wakeable, so the driver follows it
/// with a soft reset; every instruction overwrites DSPS, so completion is
/// written back to memory by the chain itself; reads of unassigned
/// physical memory return zeros and set no error bit.
pub struct Lsi53c895a<H: Hal, R: Registers = MmioRegion> {
    regs: R,
    /// The chip's I/O BAR, when the kernel gave it: the doorbell.
    doorbell: Option<PortRegion>,
    block: NonNull<u8>,
    block_dma: DmaAddr,
    block_pages: usize,
    /// Next free ring word.
    head: u32,
    /// Ring word of the live tail.
    tail: u32,
    /// Words in use from `free_from` up to `head`, wrap waste included.
    used: u32,
    /// Oldest ring word still in use.
    free_from: u32,
    /// Index of the oldest entry, entries in the queue, and how many of
    /// them (from the oldest) are issued.
    first_entry: u32,
    entries: u32,
    issued: u32,
    /// The last prepared request, and the completion word's value once its
    /// own write-back has run, if its instructions end with one.
    last_cookie: Option<Cookie>,
    last_writeback: Option<u32>,
    /// The completion word's value once the last issued batch has ended.
    expected: Option<u32>,
    /// The completion word's value when last processed.
    last_seen: u32,
    halted: bool,
    fault: Option<Fault>,
    manual_start: bool,
    inject: bool,
    _hal: PhantomData<H>,
}

// SAFETY: the engine owns its DMA block and register window; nothing in it
// is tied to the creating thread.
unsafe impl<H: Hal, R: Registers + Send> Send for Lsi53c895a<H, R> {}

impl<H: Hal, R: Registers> Lsi53c895a<H, R> {
    /// Takes over the chip behind `regs` (BAR1, at least
    /// [`regs::MMIO_SIZE`] bytes, with memory decoding and bus mastering
    /// enabled in the PCI command register): soft-resets it (firmware such
    /// as SeaBIOS uses it to boot) and sets up an empty ring in DMA memory
    /// below 4 GiB (about 200 KiB, from [`Hal::dma_alloc`]).
    pub fn new(regs: R) -> Result<Self, DmaError> {
        let block_pages = BLOCK_BYTES.div_ceil(PAGE_SIZE);
        // SCRIPTS addresses are 32 bits wide: the ring, its shadow words and
        // the completion word must lie below 4 GiB.
        let (block_dma, block) =
            H::dma_alloc(block_pages, u32::MAX as u64).ok_or(DmaError::NoMemory)?;
        let mut engine = Lsi53c895a {
            regs,
            doorbell: None,
            block,
            block_dma,
            block_pages,
            head: 0,
            tail: 0,
            used: 0,
            free_from: 0,
            first_entry: 0,
            entries: 0,
            issued: 0,
            last_cookie: None,
            last_writeback: None,
            expected: None,
            last_seen: 0,
            halted: false,
            fault: None,
            manual_start: false,
            inject: false,
            _hal: PhantomData,
        };
        // A `Hal` that broke its contract must not make the chip write
        // somewhere else: dropping `engine` on this path frees the block.
        if block_dma + BLOCK_BYTES as u64 - 1 > u32::MAX as u64 {
            return Err(DmaError::BeyondDmaMask);
        }
        engine.reset()?;
        Ok(engine)
    }

    /// The DMA memory the chip itself reads and writes (the ring, the
    /// shadow words, the completion word and the zero buffer): its DMA
    /// address and length. Behind an IOMMU, the chip's domain must map it
    /// at that same address, read-write.
    pub fn dma_block(&self) -> (DmaAddr, usize) {
        (self.block_dma, self.block_pages * PAGE_SIZE)
    }

    /// The register window.
    ///
    /// # Safety
    /// Nothing written through it may start or redirect the SCRIPTS
    /// processor (`DSP`, `DSPS`, `DMODE`, the `TEMP`/`DSA` and scratch
    /// registers its instructions use, ...) or clear its interrupt status:
    /// the engine owns them, and a write there makes the chip fetch
    /// instructions, and move memory, nobody vouched for (the window's
    /// `write8`/`write32` are safe). Reading registers without side
    /// effects is fine, and so are a fake chip's own controls. `unsafe`
    /// since this contract was written: it was safe before.
    /// [`Lsi53c895a::register_accesses`] is the safe way to count accesses.
    ///
    /// ```
    /// use dmaengine::drivers::lsi53c895a::Lsi53c895a;
    /// use dmaengine::hal::Hal;
    /// fn count<H: Hal>(engine: &Lsi53c895a<H>) -> u64 {
    ///     engine.register_accesses()
    /// }
    /// ```
    ///
    /// ```compile_fail,E0133
    /// use dmaengine::drivers::lsi53c895a::Lsi53c895a;
    /// use dmaengine::hal::Hal;
    /// fn poke<H: Hal>(engine: &Lsi53c895a<H>) {
    ///     engine.regs().write32(0x10, 0x1000);
    /// }
    /// ```
    pub unsafe fn regs(&self) -> &R {
        &self.regs
    }

    /// The fake device behind the engine, for host tests to drive (what
    /// [`Self::regs`] gives, without its contract: a fake moves only the
    /// test's own memory).
    #[cfg(test)]
    pub(crate) fn device(&self) -> &R {
        &self.regs
    }

    /// Rings the doorbell through the chip's I/O BAR (BAR0,
    /// [`regs::IO_SIZE`] ports; [`regs::IO_BAR`]) instead of its MMIO
    /// window: one `outb` per issued batch. Under QEMU 10 that is about
    /// half the cost of the MMIO write (QEMU-FACTS.md). I/O decoding must
    /// be on in the PCI command register.
    ///
    /// # Safety
    /// `ports` must be the I/O BAR of the same chip as the register window
    /// the engine was made with: the engine writes ISTAT there, which on
    /// another device could start anything.
    pub unsafe fn set_doorbell(&mut self, ports: PortRegion) {
        self.doorbell = Some(ports);
    }

    /// Register accesses so far, through the MMIO window and the doorbell's
    /// ports ([`Registers::accesses`]): how benchmarks count them.
    pub fn register_accesses(&self) -> u64 {
        self.regs.accesses() + self.doorbell.as_ref().map_or(0, PortRegion::accesses)
    }

    /// Whether SCRIPTS are running (ISTAT1.SRUN): parked in the resident
    /// loop's WAIT, and paused between QEMU's slices, included. `false`
    /// after an error, `terminate` and in manual start mode.
    pub fn is_running(&self) -> bool {
        Istat1::from_bits_retain(self.regs.read8(regs::ISTAT1)).contains(Istat1::SRUN)
    }

    /// Turned on, stops the processor (abort and soft reset: requests
    /// issued and not yet done stay in progress until the channel is
    /// terminated) and sets DMODE.MAN, so the DSP write with which `reset`
    /// starts the resident loop starts nothing; turned off, clears it, and
    /// the next `reset` starts the loop. A way to test timeouts and
    /// stalls; `reset` keeps the setting. A test hook: only with the
    /// `test-hooks` feature.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_manual_start(&mut self, on: bool) {
        self.manual_start = on;
        if on {
            self.stop();
        }
        self.regs
            .write8(regs::DMODE, if on { Dmode::MAN.bits() } else { 0 });
    }

    /// Fault injection: the next prepared request starts with an illegal
    /// instruction, so the chip stops on it with DSTAT.IID. A test hook:
    /// only with the `test-hooks` feature.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn inject_illegal_instruction(&mut self) {
        self.inject = true;
    }

    fn ring_addr(&self, word: u32) -> u32 {
        (self.block_dma + RING_OFF as u64) as u32 + word * 4
    }

    fn shadow_addr(&self, word: u32) -> u32 {
        (self.block_dma + SHADOW_OFF as u64) as u32 + word * 4
    }

    fn completion_addr(&self) -> u32 {
        (self.block_dma + STATUS_OFF as u64) as u32
    }

    fn zero_addr(&self) -> u32 {
        (self.block_dma + ZERO_OFF as u64) as u32
    }

    /// A pointer to the `u32` at byte `offset` of the block.
    fn word_ptr(&self, offset: usize) -> *mut u32 {
        debug_assert!(offset + 4 <= ENTRY_OFF && offset.is_multiple_of(4));
        // SAFETY: `offset` is inside the block (all callers derive it from a
        // ring word below RING_WORDS), which is one allocation.
        unsafe { self.block.as_ptr().add(offset).cast() }
    }

    fn write_ring(&mut self, word: u32, words: &[u32]) {
        for (i, &w) in words.iter().enumerate() {
            let ptr = self.word_ptr(RING_OFF + (word as usize + i) * 4);
            // SAFETY: ring words are in our DMA block; the device only reads
            // them, and volatile keeps each store a single, ordered access.
            unsafe { ptr.write_volatile(w) }
        }
    }

    fn write_shadow(&mut self, word: u32, value: u32) {
        let ptr = self.word_ptr(SHADOW_OFF + word as usize * 4);
        // SAFETY: as for `write_ring`; this shadow word belongs to an
        // instruction not yet linked into the running chain.
        unsafe { ptr.write_volatile(value) }
    }

    fn read_completion(&self) -> u32 {
        // SAFETY: the completion word is in our DMA block; the device writes
        // it, so it is only ever read with a volatile load.
        unsafe { self.word_ptr(STATUS_OFF).read_volatile() }
    }

    fn entry_ptr(&self, index: u32) -> *mut Entry {
        let index = (index & (MAX_ENTRIES - 1)) as usize;
        // SAFETY: the entry array occupies MAX_ENTRIES entries at ENTRY_OFF
        // in the block, and `index < MAX_ENTRIES`.
        unsafe {
            self.block
                .as_ptr()
                .add(ENTRY_OFF)
                .cast::<Entry>()
                .add(index)
        }
    }

    fn entry(&self, index: u32) -> Entry {
        // SAFETY: `entry_ptr` is in bounds and aligned; the array is only
        // touched by this engine (never by the device) and zeroed at
        // allocation, a valid `Entry`.
        unsafe { self.entry_ptr(index).read() }
    }

    fn push_entry(&mut self, entry: Entry) {
        self.set_entry(self.first_entry + self.entries, entry);
        self.entries += 1;
    }

    /// Writes the entry at `index` (taken modulo the array's length).
    fn set_entry(&mut self, index: u32, entry: Entry) {
        let ptr = self.entry_ptr(index);
        // SAFETY: as for `entry`.
        unsafe { ptr.write(entry) };
    }

    /// Claims `n` contiguous ring words, leaving `keep` words free, and
    /// returns the first. Wraps to word 0 with a JUMP when the end is near.
    // The per-request path is inlined: under an emulator each return is an
    // indirect jump looked up at run time.
    #[inline(always)]
    fn reserve(&mut self, n: u32, keep: u32) -> Result<u32, EngineError> {
        if self.head + n + TC_WORDS > RING_WORDS {
            return self.reserve_wrapping(n, keep);
        }
        if self.used + n + keep > RING_WORDS {
            return Err(EngineError::RingFull);
        }
        let at = self.head;
        self.used += n;
        self.head = at + n;
        Ok(at)
    }

    /// [`Self::reserve`] when the words do not fit before the ring's end.
    #[inline(never)]
    fn reserve_wrapping(&mut self, n: u32, keep: u32) -> Result<u32, EngineError> {
        let waste = RING_WORDS - self.head;
        if self.used + waste + n + keep > RING_WORDS {
            return Err(EngineError::RingFull);
        }
        let start = self.ring_addr(0);
        self.write_ring(self.head, &script::jump(start));
        self.used += waste + n;
        self.head = n;
        Ok(0)
    }

    #[inline(always)]
    fn emit_move(&mut self, count: u32, src: u32, dst: u32, keep: u32) -> Result<(), EngineError> {
        let at = self.reserve(MOVE_WORDS, keep)?;
        self.write_ring(at, &script::memory_move(count, src, dst));
        Ok(())
    }

    /// Writes a write-back for `cookie`; returns the value it leaves in the
    /// completion word.
    #[inline(always)]
    fn emit_writeback(&mut self, cookie: Cookie, keep: u32) -> Result<u32, EngineError> {
        let at = self.reserve(STORE_WORDS, keep)?;
        self.write_shadow(at, cookie.get() as u32);
        let completion = self.completion_addr();
        self.write_ring(at, &script::store(regs::DSP, 4, completion));
        Ok(self.ring_addr(at + STORE_WORDS))
    }

    /// The cookie of the write-back that left `written` in the completion
    /// word (`None` for a value no write-back leaves, such as the zero of a
    /// reset).
    #[inline(always)]
    fn written_back(&self, written: u32) -> Option<u32> {
        let offset = written.wrapping_sub(self.ring_addr(0));
        let word = (offset / 4).checked_sub(STORE_WORDS)?;
        if !offset.is_multiple_of(4) || word >= RING_WORDS {
            return None;
        }
        let ptr = self.word_ptr(SHADOW_OFF + word as usize * 4);
        // SAFETY: `word < RING_WORDS`, so the shadow word is in the block;
        // only the CPU writes shadow words, and only those of instructions
        // not linked into the chain.
        Some(unsafe { ptr.read_volatile() })
    }

    /// Pops the issued entries the completion word says are done; returns
    /// the newest of them.
    #[inline(always)]
    fn collect(&mut self) -> Option<Cookie> {
        let completion = self.read_completion();
        if completion == self.last_seen {
            return None;
        }
        self.last_seen = completion;
        let last = self.issued.checked_sub(1)?;
        // Usually the whole issued run is done, which the value its final
        // write-back leaves says without a look at the shadow words.
        let done = if self.expected == Some(completion) {
            last
        } else {
            let written = self.written_back(completion)?;
            (0..self.issued).find(|&k| self.entry(self.first_entry + k).cookie as u32 == written)?
        };
        let entry = self.entry(self.first_entry + done);
        self.used -= (entry.end + RING_WORDS - self.free_from) % RING_WORDS;
        self.free_from = entry.end;
        self.first_entry = (self.first_entry + done + 1) & (MAX_ENTRIES - 1);
        self.entries -= done + 1;
        self.issued -= done + 1;
        Cookie::new(entry.cookie)
    }

    /// The instructions of a request other than a plain copy (and of every
    /// request after fault injection was asked for).
    #[inline(never)]
    fn emit_op(&mut self, op: Op) -> Result<(), EngineError> {
        let keep = ISSUE_RESERVE;
        if self.inject {
            self.inject = false;
            let at = self.reserve(TC_WORDS, keep)?;
            self.write_ring(at, &script::illegal());
        }
        // The channel checked every address against the 32-bit DMA mask and
        // every length against MAX_MOVE, so these casts are exact.
        match op {
            // Only the notification below: a write-back, and an INTFLY if
            // asked, reached after every earlier move.
            Op::Interrupt => {}
            Op::Copy { dst, src, len } => {
                self.emit_move(len as u32, src as u32, dst as u32, keep)?
            }
            Op::Zero { dst, len } => {
                let zeros = self.zero_addr();
                let mut done = 0;
                while done < len as u32 {
                    let n = (len as u32 - done).min(ZERO_BYTES);
                    self.emit_move(n, zeros, dst as u32 + done, keep)?;
                    done += n;
                }
            }
            Op::Fill { dst, len, pattern } => {
                let (dst, len) = (dst as u32, len as u32);
                let at = self.reserve(MOVE_WORDS, keep)?;
                self.write_shadow(at, pattern as u32);
                self.write_shadow(at + 1, (pattern >> 32) as u32);
                let src = self.shadow_addr(at);
                self.write_ring(at, &script::memory_move(len.min(8), src, dst));
                // Double what is there: each move copies the bytes already
                // filled, which end on a multiple of 8, so the phase holds.
                let mut done = len.min(8);
                while done < len {
                    let n = done.min(len - done);
                    self.emit_move(n, dst, dst + done, keep)?;
                    done += n;
                }
            }
        }
        Ok(())
    }

    /// A request's own write-back, and its INTFLY if it asked for an
    /// interrupt; returns the value the write-back leaves.
    #[inline(never)]
    fn emit_notify(&mut self, cookie: Cookie, notify: Notify) -> Result<u32, EngineError> {
        let value = self.emit_writeback(cookie, ISSUE_RESERVE)?;
        if notify.interrupt {
            let at = self.reserve(TC_WORDS, ISSUE_RESERVE)?;
            self.write_ring(at, &script::intfly(cookie.get() as u32));
        }
        Ok(value)
    }

    /// The issued request whose instructions include ring word `word`.
    fn owner_of(&self, word: u32) -> Option<Cookie> {
        let mut start = self.free_from;
        for k in 0..self.issued {
            let entry = self.entry(self.first_entry + k);
            let inside = if start <= entry.end {
                (start..entry.end).contains(&word)
            } else {
                word >= start || word < entry.end
            };
            if inside {
                return Cookie::new(entry.cookie);
            }
            start = entry.end;
        }
        None
    }

    /// Records the failure behind error bits read from DSTAT.
    fn note_errors(&mut self, dstat: Dstat) {
        let errors = dstat & Dstat::ERRORS;
        if errors.is_empty() || self.halted || self.issued == 0 {
            return;
        }
        // DSP has moved past the instruction that failed: 8 bytes for the
        // two-dword instructions that raise IID.
        let failed_at = self.regs.read32(regs::DSP).wrapping_sub(8);
        let word = failed_at.wrapping_sub(self.ring_addr(0)) / 4;
        let oldest = Cookie::new(self.entry(self.first_entry).cookie);
        let cookie = (word < RING_WORDS)
            .then(|| self.owner_of(word))
            .flatten()
            .or(oldest);
        let kind = if errors.contains(Dstat::IID) {
            ErrorKind::InvalidDescriptor
        } else if errors.contains(Dstat::ABRT) {
            ErrorKind::Aborted
        } else {
            ErrorKind::BusFault
        };
        if let Some(cookie) = cookie {
            self.fault = Some(Fault { cookie, kind });
        }
        self.halted = true;
    }

    /// [`Engine::poll`] with work outstanding after the completion word
    /// was read: whether the chip stopped, and why.
    #[inline(never)]
    fn poll_hardware(&mut self, mut completed: Option<Cookie>) -> Progress {
        if !self.is_running() {
            // Stopped with work outstanding: failed (the resident loop
            // never stops by itself), or stopped by manual start mode.
            completed = self.collect().or(completed);
            if self.issued > 0 {
                let dstat = Dstat::from_bits_retain(self.regs.read8(regs::DSTAT));
                self.note_errors(dstat);
            }
        }
        Progress {
            completed,
            fault: self.fault.take(),
        }
    }

    /// The first half of `issue`: ends the prepared requests with a
    /// write-back and a new tail, and links them behind the live tail.
    /// Returns whether there was anything to link. The processor may take
    /// the link as soon as it is written (when it is busy before the tail);
    /// the doorbell covers every other state.
    #[inline(always)]
    fn link(&mut self) -> bool {
        let Some(last) = self
            .last_cookie
            .filter(|_| self.entries > self.issued && !self.halted)
        else {
            return false;
        };
        // ISSUE_RESERVE guarantees the room for both of these.
        let done = match self.last_writeback {
            Some(value) => value,
            None => match self.emit_writeback(last, 0) {
                Ok(value) => value,
                Err(_) => return false,
            },
        };
        let Ok(new_tail) = self.reserve(TAIL_WORDS, 0) else {
            return false;
        };
        let tail_addr = self.ring_addr(new_tail);
        self.write_ring(new_tail, &script::clear_sigp());
        self.write_ring(new_tail + TC_WORDS, &script::wait_reselect(tail_addr));
        let old_tail = self.tail;
        let start = self.ring_addr(old_tail + TAIL_WORDS);
        // Everything the JUMP leads to must be in memory before the JUMP,
        // and its operand before its opcode (the clear ignores its second
        // word, so the operand can land first).
        fence(Ordering::Release);
        self.write_ring(old_tail + 1, &[start]);
        fence(Ordering::Release);
        self.write_ring(old_tail, &[script::JUMP]);
        self.tail = new_tail;
        self.issued = self.entries;
        self.last_writeback = Some(done);
        self.expected = Some(done);
        true
    }

    /// The second half of `issue`: one write of ISTAT.SIGP, through the
    /// I/O BAR when the engine has it.
    #[inline(always)]
    fn ring_doorbell(&mut self) {
        // The JUMP must be in memory before the chip can wake: the stores
        // above are volatile, and so are MMIO writes; the port write is an
        // `asm!` that may touch memory, which the compiler does not move
        // stores across either; x86 keeps stores in order.
        match &self.doorbell {
            Some(ports) => ports.write8(regs::ISTAT, Istat::SIGP.bits()),
            None => self.regs.write8(regs::ISTAT, Istat::SIGP.bits()),
        }
    }

    fn stop(&self) {
        // ABRT alone leaves QEMU's resume timer armed; the soft reset that
        // follows stops the processor for good (QEMU 7.2's behaviour).
        self.regs.write8(regs::ISTAT, Istat::ABRT.bits());
        self.regs.write8(regs::ISTAT, Istat::SRST.bits());
        self.regs.write8(regs::ISTAT, 0);
        // The abort raised the interrupt line (DSTAT.ABRT, which DIEN
        // enables) and the soft reset cleared the status without lowering
        // it: QEMU recomputes the line only when status changes hands, so
        // ISTAT now reads 0 while the line stays up, and `handle_interrupt`
        // would disown it forever. Clearing as for an interrupt (INTF, then
        // DSTAT, then SIST0/SIST1; QEMU-FACTS.md) lowers it.
        self.regs.write8(regs::ISTAT, Istat::INTF.bits());
        self.regs.read8(regs::DSTAT);
        self.regs.read8(regs::SIST0);
        self.regs.read8(regs::SIST1);
    }
}

// SAFETY: a request is reported complete when the chain's write-back after
// it has run (the processor runs the ring in order), and a fault when the
// processor has stopped on it; `terminate` and `reset` abort and soft-reset
// the processor, which stops it for good (a parked WAIT included), before
// forgetting anything; prepared requests are linked into the chain only by
// `issue`; the chip is given DMA addresses of `H` within its 32-bit reach.
unsafe impl<H: Hal, R: Registers> Engine for Lsi53c895a<H, R> {
    type Mark = Mark;
    type Hal = H;

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPY
            | Capabilities::FILL
            | Capabilities::INTERRUPT
            | Capabilities::INTERRUPT_OP
    }

    fn limits(&self) -> Limits {
        Limits {
            max_len: script::MAX_MOVE as usize,
            dma_mask: u32::MAX as u64,
            align: 1,
        }
    }

    fn mark(&self) -> Mark {
        Mark {
            head: self.head,
            used: self.used,
            entries: self.entries,
            last_cookie: self.last_cookie,
            last_writeback: self.last_writeback,
            inject: self.inject,
        }
    }

    unsafe fn rewind(&mut self, mark: Mark) {
        self.head = mark.head;
        self.used = mark.used;
        self.entries = mark.entries;
        self.last_cookie = mark.last_cookie;
        self.last_writeback = mark.last_writeback;
        self.inject = mark.inject;
    }

    #[inline(always)]
    unsafe fn prep(
        &mut self,
        cookie: Cookie,
        op: Op,
        end: Option<Notify>,
    ) -> Result<(), EngineError> {
        if self.halted {
            return Err(EngineError::Halted);
        }
        if end.is_some() && self.entries == MAX_ENTRIES {
            return Err(EngineError::RingFull);
        }
        match op {
            // The channel checked every address against the 32-bit DMA mask
            // and every length against MAX_MOVE, so these casts are exact.
            Op::Copy { dst, src, len } if !self.inject => {
                self.emit_move(len as u32, src as u32, dst as u32, ISSUE_RESERVE)?
            }
            _ => self.emit_op(op)?,
        }
        if let Some(notify) = end {
            let writeback = if notify.writeback || notify.interrupt {
                Some(self.emit_notify(cookie, notify)?)
            } else {
                None
            };
            self.push_entry(Entry {
                cookie: cookie.get(),
                end: self.head,
            });
            self.last_cookie = Some(cookie);
            self.last_writeback = writeback;
        }
        Ok(())
    }

    unsafe fn prep_run(
        &mut self,
        first: Cookie,
        ops: &[Op],
        last: Notify,
    ) -> Result<(), EngineError> {
        if self.halted {
            return Err(EngineError::Halted);
        }
        // One pass for a run of plain copies that fits before the ring's
        // end: room for all of them is checked once, their words and entries
        // are written, and the claim is recorded after the loop. From the
        // first request that is not a plain copy on, and for the last
        // request's notification, the general path takes over.
        let (run, rest) = if last == Notify::default() {
            (ops, &[][..])
        } else {
            ops.split_at(ops.len().saturating_sub(1))
        };
        let n = run.len() as u32;
        let words = n * MOVE_WORDS;
        let fast = !self.inject
            && self.entries + n <= MAX_ENTRIES
            && self.head + words + TC_WORDS <= RING_WORDS
            && self.used + words + ISSUE_RESERVE <= RING_WORDS;
        let mut cookie = first;
        let mut done = 0;
        if fast {
            let at = self.head;
            let entry = self.first_entry + self.entries;
            let mut last_in_run = first;
            for op in run {
                let Op::Copy { dst, src, len } = *op else {
                    break;
                };
                let word = at + done * MOVE_WORDS;
                // The channel checked every address against the 32-bit DMA
                // mask and every length against MAX_MOVE: the casts are exact.
                self.write_ring(
                    word,
                    &script::memory_move(len as u32, src as u32, dst as u32),
                );
                self.set_entry(
                    entry + done,
                    Entry {
                        cookie: cookie.get(),
                        end: word + MOVE_WORDS,
                    },
                );
                last_in_run = cookie;
                cookie = cookie.next();
                done += 1;
            }
            if done > 0 {
                self.entries += done;
                self.head = at + done * MOVE_WORDS;
                self.used += done * MOVE_WORDS;
                self.last_cookie = Some(last_in_run);
                self.last_writeback = None;
            }
        }
        for &op in &run[done as usize..] {
            // SAFETY: the caller's contract covers every op.
            unsafe { self.prep(cookie, op, Some(Notify::default())) }?;
            cookie = cookie.next();
        }
        for &op in rest {
            // SAFETY: as above.
            unsafe { self.prep(cookie, op, Some(last)) }?;
        }
        Ok(())
    }

    fn issue(&mut self) {
        if self.link() {
            self.ring_doorbell();
        }
    }

    #[inline(always)]
    fn poll(&mut self, check_hardware: bool) -> Progress {
        let completed = self.collect();
        if check_hardware && self.issued > 0 && !self.halted {
            return self.poll_hardware(completed);
        }
        Progress {
            completed,
            fault: self.fault.take(),
        }
    }

    fn handle_interrupt(&mut self) -> bool {
        let istat = Istat::from_bits_retain(self.regs.read8(regs::ISTAT));
        if !istat.intersects(Istat::INTF | Istat::DIP | Istat::SIP) {
            return false;
        }
        // The clearing order QEMU needs before the EOI, or the level
        // interrupt fires again:
        // INTF first, then DSTAT, then SIST0/SIST1. SIGP goes with INTF: a
        // write replaces ISTAT's top bits, and without it a doorbell rung
        // since the processor last parked would be lost (with it, a
        // processor parked with none pending wakes once and parks again).
        if istat.contains(Istat::INTF) {
            self.regs
                .write8(regs::ISTAT, (Istat::INTF | Istat::SIGP).bits());
        }
        let dstat = Dstat::from_bits_retain(self.regs.read8(regs::DSTAT));
        self.regs.read8(regs::SIST0);
        self.regs.read8(regs::SIST1);
        self.note_errors(dstat);
        istat.contains(Istat::INTF) || dstat.intersects(Dstat::ERRORS)
    }

    fn terminate(&mut self) -> Termination {
        self.stop();
        let done = self.collect();
        self.halted = true;
        self.entries = 0;
        self.issued = 0;
        self.fault = None;
        // Abort and soft reset stop the processor at once.
        Termination {
            completed: done,
            stopped: true,
        }
    }

    fn reset(&mut self) -> Result<(), DmaError> {
        self.stop();
        self.regs.write8(regs::DIEN, Dstat::ERRORS.bits());
        self.regs.write8(
            regs::DMODE,
            if self.manual_start {
                Dmode::MAN.bits()
            } else {
                0
            },
        );
        // SAFETY: the chip is stopped, so nothing reads the ring, shadow or
        // completion word while they are cleared; all three are in the block.
        unsafe { self.block.as_ptr().write_bytes(0, ZERO_OFF) };
        self.write_ring(0, &script::clear_sigp());
        self.write_ring(TC_WORDS, &script::wait_reselect(self.ring_addr(0)));
        self.head = TAIL_WORDS;
        self.tail = 0;
        self.used = TAIL_WORDS;
        self.free_from = 0;
        self.first_entry = 0;
        self.entries = 0;
        self.issued = 0;
        self.last_cookie = None;
        self.last_writeback = None;
        self.expected = None;
        self.last_seen = 0;
        self.halted = false;
        self.fault = None;
        self.inject = false;
        // The loop starts, clears the doorbell the soft reset already
        // cleared, and parks (in manual start mode it does not start).
        fence(Ordering::Release);
        self.regs.write32(regs::DSP, self.ring_addr(0));
        Ok(())
    }
}

impl<H: Hal, R: Registers> Drop for Lsi53c895a<H, R> {
    fn drop(&mut self) {
        self.stop();
        // SAFETY: the chip is stopped for good (abort + soft reset), so the
        // block is no longer used by the device; these are the values
        // `dma_alloc` returned.
        unsafe { H::dma_dealloc(self.block_dma, self.block, self.block_pages) }
    }
}
