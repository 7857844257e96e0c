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
//! interrupt, and so does a request of no instructions (an interrupt-only
//! request that asks for nothing), so every request claims ring words
//! against the reserve `issue` needs. The shadow array sits beside the ring: the words of the
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

// Public with the `testing` feature, as `dmaengine::testing::*`.
mod emit;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fake;
pub mod regs;
mod ring;
pub mod script;
mod stopped;
#[cfg(test)]
mod tests;

use core::sync::atomic::{Ordering, fence};

use regs::{Dmode, Dstat, Istat, Istat1};
use ring::{ISSUE_RESERVE, Ring, RingMark};

use crate::engine::{
    Capabilities, Cookie, DmaError, Engine, EngineError, Fault, Limits, Notify, Op, Progress,
    Termination, prep_one_marked,
};
use crate::hal::{DmaAddr, Hal};
use crate::mmio::{MmioRegion, PortReg8, PortRegion, Registers};

/// A saved preparation point (see [`Engine::mark`]).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    ring: RingMark,
    inject: bool,
}

/// The LSI53C895A SCRIPTS processor as a copy [`Engine`], reached through
/// registers `R` (its MMIO window, BAR1, [`regs::MMIO_SIZE`] bytes; a fake
/// chip in host tests).
///
/// Through [`Channel::engine`](crate::engine::Channel::engine) (or
/// [`Channel::engine_mut`](crate::engine::Channel::engine_mut), `unsafe`,
/// for those that take `&mut self`) these are meant to be called:
/// [`Lsi53c895a::is_running`],
/// [`Lsi53c895a::dma_block`], [`Lsi53c895a::regs`] under its contract,
/// `register_accesses` and `register_reads` with the `access-counts`
/// feature, and `set_manual_start` and `inject_illegal_instruction` with
/// the `test-hooks` feature.
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
    /// ISTAT in the chip's I/O BAR, when the kernel gave it: the doorbell.
    doorbell: Option<PortReg8>,
    ring: Ring<H>,
    halted: bool,
    fault: Option<Fault>,
    manual_start: bool,
    inject: bool,
}

impl<H: Hal, R: Registers> Lsi53c895a<H, R> {
    /// Takes over the chip behind `regs` (BAR1, at least
    /// [`regs::MMIO_SIZE`] bytes, with memory decoding and bus mastering
    /// enabled in the PCI command register): soft-resets it (firmware such
    /// as SeaBIOS uses it to boot), sets up an empty ring in DMA memory
    /// below 4 GiB (about 200 KiB, from [`Hal::dma_alloc`]) and starts the
    /// resident loop, which parks at once.
    ///
    /// # Safety
    /// `regs` must be the register window of an LSI53C895A (or a fake one)
    /// that nothing else drives while the engine lives: the engine starts
    /// its SCRIPTS processor, which moves memory, and another device's
    /// registers written at these offsets could start anything. `unsafe`
    /// since issue 18 (a window's own constructor vouches only that it is
    /// some device's registers).
    ///
    /// ```compile_fail,E0133
    /// use dmaengine::drivers::lsi53c895a::Lsi53c895a;
    /// use dmaengine::hal::Hal;
    /// use dmaengine::mmio::MmioRegion;
    /// fn take<H: Hal>(bar1: MmioRegion) {
    ///     let _ = Lsi53c895a::<H>::new(bar1);
    /// }
    /// ```
    pub unsafe fn new(regs: R) -> Result<Self, DmaError> {
        let mut engine = Lsi53c895a {
            regs,
            doorbell: None,
            ring: Ring::new()?,
            halted: false,
            fault: None,
            manual_start: false,
            inject: false,
        };
        engine.reset()?;
        Ok(engine)
    }

    /// The DMA memory the chip itself reads and writes (the ring, the
    /// shadow words, the completion word and the zero buffer): its DMA
    /// address and length. Behind an IOMMU, the chip's domain must map it
    /// at that same address, read-write.
    pub fn dma_block(&self) -> (DmaAddr, usize) {
        self.ring.dma_block()
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
    /// With the `access-counts` feature, `register_accesses` is the safe way
    /// to count accesses.
    ///
    /// ```
    /// use dmaengine::drivers::lsi53c895a::Lsi53c895a;
    /// use dmaengine::hal::Hal;
    /// # #[cfg(feature = "access-counts")]
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
    /// ```no_run
    /// use dmaengine::drivers::lsi53c895a::{Lsi53c895a, regs};
    /// use dmaengine::hal::Hal;
    /// use dmaengine::mmio::{MmioRegion, PortRegion};
    /// # fn f<H: Hal>(bar1: MmioRegion, bar0_port: u16) -> Result<(), dmaengine::engine::DmaError> {
    /// // SAFETY: BAR1 of the chip, driven by nothing else.
    /// let mut engine = unsafe { Lsi53c895a::<H>::new(bar1) }?;
    /// // SAFETY: BAR0 of the same chip (the port its I/O BAR holds), I/O
    /// // decoding on; nothing else pokes these ports.
    /// unsafe { engine.set_doorbell(PortRegion::new(bar0_port, regs::IO_SIZE)) };
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When the window does not reach ISTAT (its BAR is
    /// [`regs::IO_SIZE`] ports).
    ///
    /// # Safety
    /// `ports` must be the I/O BAR of the same chip as the register window
    /// the engine was made with: the engine writes ISTAT there, which on
    /// another device could start anything.
    pub unsafe fn set_doorbell(&mut self, ports: PortRegion) {
        let len = ports.len();
        let doorbell = PortReg8::new(ports, regs::ISTAT);
        assert!(
            doorbell.is_some(),
            "doorbell window of {len} ports does not reach ISTAT"
        );
        self.doorbell = doorbell;
    }

    /// Register accesses so far, through the MMIO window and the doorbell's
    /// ports ([`Registers::accesses`]): how benchmarks count them. With the
    /// `access-counts` feature.
    #[cfg(any(test, feature = "access-counts"))]
    pub fn register_accesses(&self) -> u64 {
        self.regs.accesses() + self.doorbell.as_ref().map_or(0, |d| d.region().accesses())
    }

    /// The reads among [`Lsi53c895a::register_accesses`].
    #[cfg(any(test, feature = "access-counts"))]
    pub fn register_reads(&self) -> u64 {
        self.regs.reads() + self.doorbell.as_ref().map_or(0, |d| d.region().reads())
    }

    /// Whether SCRIPTS are running (ISTAT1.SRUN): parked in the resident
    /// loop's WAIT, and paused between QEMU's slices, included. `false`
    /// after an error, `terminate` and in manual start mode.
    pub fn is_running(&self) -> bool {
        Istat1::from_bits_retain(self.regs.read(regs::ISTAT1)).contains(Istat1::SRUN)
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
            .write(regs::DMODE, if on { Dmode::MAN.bits() } else { 0 });
    }

    /// Fault injection: the next prepared request starts with an illegal
    /// instruction, so the chip stops on it with DSTAT.IID. A test hook:
    /// only with the `test-hooks` feature.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn inject_illegal_instruction(&mut self) {
        self.inject = true;
    }

    /// [`Engine::prep_one`] for a copy that asks for no notification: one
    /// Memory Move and the request's end, neither of which can fail once
    /// the engine is running, an entry is free and the words are claimed
    /// (so no mark). Takes the copy apart: an `Op` that reached an
    /// out-of-line call here would be stored to the stack on every request
    /// (4 instructions), whichever path ran.
    ///
    /// # Safety
    /// As for [`Engine::prep_one`], for the copy.
    #[inline(always)]
    unsafe fn prep_plain_copy(
        &mut self,
        cookie: Cookie,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
    ) -> Result<(), EngineError> {
        if self.halted || self.inject {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.prep_copy_refused(cookie, dst, src, len) };
        }
        // The channel checked both sides against the 32-bit DMA mask and
        // the length against MAX_MOVE, so these casts are exact.
        self.push_move(len as u32, src as u32, dst as u32, ISSUE_RESERVE)?;
        self.ring.end_request(cookie, None);
        Ok(())
    }

    /// [`Self::prep_plain_copy`] on a halted engine, with no entry free, or
    /// with an illegal instruction to inject first: through `prep` and a
    /// mark.
    ///
    /// # Safety
    /// As for [`Self::prep_plain_copy`].
    #[cold]
    #[inline(never)]
    unsafe fn prep_copy_refused(
        &mut self,
        cookie: Cookie,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
    ) -> Result<(), EngineError> {
        let op = Op::Copy { dst, src, len };
        // SAFETY: the caller's contract, passed on.
        unsafe { prep_one_marked(self, cookie, op, Notify::default()) }
    }

    /// The first half of `issue`: the prepared requests linked behind the
    /// live tail ([`Ring::append`]). The processor may take the link as
    /// soon as it is written (when it is busy before the tail); the
    /// doorbell covers every other state.
    #[inline(always)]
    fn link(&mut self) -> bool {
        !self.halted && self.ring.append()
    }

    /// The second half of `issue`: one write of ISTAT.SIGP, through the
    /// I/O BAR when the engine has it.
    #[inline(always)]
    fn ring_doorbell(&mut self) {
        // The JUMP must be in memory before the chip can wake: the stores
        // before are volatile, and so are MMIO writes; the port write is an
        // `asm!` that may touch memory, which the compiler does not move
        // stores across either; x86 keeps stores in order.
        match &self.doorbell {
            Some(doorbell) => doorbell.write(Istat::SIGP.bits()),
            None => self.regs.write(regs::ISTAT, Istat::SIGP.bits()),
        }
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
            ring: self.ring.mark(),
            inject: self.inject,
        }
    }

    unsafe fn rewind(&mut self, mark: Mark) {
        self.ring.rewind(mark.ring);
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
        match op {
            // The channel checked every address against the 32-bit DMA mask
            // and every length against MAX_MOVE, so these casts are exact.
            Op::Copy { dst, src, len } if !self.inject => {
                self.push_move(len as u32, src as u32, dst as u32, ISSUE_RESERVE)?
            }
            _ => self.emit_op(op)?,
        }
        if let Some(notify) = end {
            // A request of no instructions (an interrupt-only request that
            // asks for nothing) gets its own write-back: its words are
            // claimed against the reserve `issue` needs, as every other
            // request's are, so `issue` always finds room to link it.
            let own = notify.writeback || notify.interrupt || matches!(op, Op::Interrupt);
            let writeback = if own {
                Some(self.emit_notify(cookie, notify)?)
            } else {
                None
            };
            self.ring.end_request(cookie, writeback);
        }
        Ok(())
    }

    #[inline(always)]
    unsafe fn prep_one(
        &mut self,
        cookie: Cookie,
        op: Op,
        notify: Notify,
    ) -> Result<(), EngineError> {
        if let Op::Copy { dst, src, len } = op
            && notify == Notify::default()
        {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.prep_plain_copy(cookie, dst, src, len) };
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { prep_one_marked(self, cookie, op, notify) }
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
        // end ([`Ring::push_copies`]). From the first request that is not a
        // plain copy on, and for the last request's notification, the
        // general path takes over.
        let (run, rest) = if last == Notify::default() {
            (ops, &[][..])
        } else {
            ops.split_at(ops.len().saturating_sub(1))
        };
        let done = if self.inject {
            0
        } else {
            self.ring
                .push_copies(first, run, self.limits().dma_mask, false)
        };
        let mut cookie = first.after(done as usize);
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

    #[inline(always)]
    unsafe fn prep_copies(&mut self, first: Cookie, ops: &[Op], dma_mask: u64) -> bool {
        // The chip's addresses are 32 bits whatever mask the caller passed.
        let mask = dma_mask.min(self.limits().dma_mask);
        !self.halted
            && !self.inject
            && self.ring.push_copies(first, ops, mask, true) as usize == ops.len()
    }

    // Inlined into the channel's `issue_pending` (performance note H2).
    #[inline(always)]
    fn issue(&mut self) {
        if self.link() {
            self.ring_doorbell();
        }
    }

    #[inline(always)]
    fn poll(&mut self, check_hardware: bool) -> Progress {
        let mut completed = self.ring.retire();
        if check_hardware && self.ring.issued() > 0 && !self.halted {
            completed = self.poll_hardware(completed);
        }
        Progress {
            completed,
            fault: self.fault.take(),
        }
    }

    fn handle_interrupt(&mut self) -> bool {
        let istat = Istat::from_bits_retain(self.regs.read(regs::ISTAT));
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
                .write(regs::ISTAT, (Istat::INTF | Istat::SIGP).bits());
        }
        let dstat = Dstat::from_bits_retain(self.regs.read_clearing(regs::DSTAT));
        self.regs.read_clearing(regs::SIST0);
        self.regs.read_clearing(regs::SIST1);
        self.note_errors(dstat);
        istat.contains(Istat::INTF) || dstat.intersects(Dstat::ERRORS)
    }

    fn terminate(&mut self) -> Termination {
        self.stop();
        let done = self.ring.retire();
        self.halted = true;
        self.ring.forget_requests();
        self.fault = None;
        // Abort and soft reset stop the processor at once.
        Termination {
            completed: done,
            stopped: true,
        }
    }

    fn reset(&mut self) -> Result<(), DmaError> {
        self.stop();
        self.regs.write(regs::DIEN, Dstat::ERRORS.bits());
        self.regs.write(
            regs::DMODE,
            if self.manual_start {
                Dmode::MAN.bits()
            } else {
                0
            },
        );
        let start = self.ring.reset();
        self.halted = false;
        self.fault = None;
        self.inject = false;
        // The loop starts, clears the doorbell the soft reset already
        // cleared, and parks (in manual start mode it does not start).
        fence(Ordering::Release);
        self.regs.write(regs::DSP, start);
        Ok(())
    }
}

impl<H: Hal, R: Registers> Drop for Lsi53c895a<H, R> {
    fn drop(&mut self) {
        // Stopped for good (abort + soft reset) before the ring, dropped
        // after this, frees the block the chip used.
        self.stop();
    }
}
