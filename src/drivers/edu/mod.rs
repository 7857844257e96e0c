//! QEMU's `edu` teaching device (`-device edu`, PCI 1234:11e8) as a copy
//! engine.
//!
//! The device moves one block at a time between RAM and its own 4 KiB
//! buffer, and each transfer completes 100 ms (virtual time) after it
//! starts, raising its interrupt. A copy of RAM to RAM is therefore two
//! transfers, into the buffer and out of it, and at most 4095 bytes
//! (QEMU 7.2's limit); the channel splits longer requests. The engine keeps
//! a queue of transfers and starts the next one when the device reports the
//! last one done, from [`Engine::handle_interrupt`] or [`Engine::poll`]: it
//! is slow on purpose, and the engine that shows the API is really
//! asynchronous and interrupt-driven.
//!
//! The device has no abort: `terminate` forgets the queued transfers, starts
//! no more, and lets the one in flight run to its end (100 ms of virtual
//! time after it started); it does not wait for it (it may run in an
//! interrupt handler: the wait used to spin there, interrupts off, for up
//! to [`IDLE_POLLS`] reads), and says the engine stopped only when the
//! device is idle ([`Termination::stopped`]). Until then the engine takes
//! no new work (`Halted`), its `reset` answers `TimedOut` (a channel's, `Busy`), and the channel
//! keeps the requests in flight, their memory in the device's hands; a
//! later `terminate` (the channel's `poll`, `status`, `terminate`, ...)
//! that finds the device idle finishes the stop. A device that never
//! finishes its transfer (wedged) keeps them in flight for good: their
//! buffers leak rather than come back while it may still write them.

// Public with the `testing` feature, as `dmaengine::testing::*`.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fake;
pub mod regs;
#[cfg(test)]
mod tests;

use core::marker::PhantomData;

use crate::engine::{
    Capabilities, Cookie, DmaError, Engine, EngineError, Limits, Notify, Op, Progress, Termination,
};
use crate::hal::{DmaAddr, Hal};
use crate::mmio::{MmioRegion, Registers};

/// Reads of the command register a wait for the device to go idle makes
/// before it gives up (in [`EduEngine::new`] and when the engine is
/// dropped; `terminate` does not wait): a transfer ends 100 ms of virtual
/// time after it starts, and a read costs about 60 ns under TCG, so this
/// is seconds.
pub const IDLE_POLLS: u32 = 50_000_000;

/// One device transfer.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    /// RAM address.
    ram: DmaAddr,
    len: u32,
    /// Device buffer to RAM (else RAM to device buffer).
    to_ram: bool,
    /// The request this transfer completes, if it is the request's last.
    completes: Option<Cookie>,
}

/// The edu device as a copy [`Engine`] with room for `N` transfers, reached
/// through registers `R` (its BAR0, [`regs::MMIO_SIZE`] bytes; a fake
/// device in host tests).
///
/// Through [`Channel::engine`](crate::engine::Channel::engine) only
/// `register_accesses` (with the `access-counts` feature) is meant to be
/// called (and [`EduEngine::regs`] under its contract).
///
/// What QEMU does that the driver depends on: a transfer completes 100 ms
/// of virtual time after it starts; QEMU 7.2 aborts the whole emulator on a
/// transfer of 4096 bytes (an off-by-one), so pieces are at most 4095; the
/// device masks DMA addresses with its `dma_mask` property (28 bits unless
/// set, e.g. `-device edu,dma_mask=0xffffffff`), silently, so the mask
/// given to [`EduEngine::new`] must be the device's.
pub struct EduEngine<H: Hal, R: Registers = MmioRegion, const N: usize = 64> {
    regs: R,
    /// Reads a wait for idle makes before it gives up ([`IDLE_POLLS`]).
    idle_polls: u32,
    dma_mask: u64,
    queue: [Option<Transfer>; N],
    head: usize,
    /// Transfers queued, and how many of them (from the head) are issued.
    len: usize,
    issued: usize,
    /// The head transfer is running on the device.
    running: bool,
    /// A `terminate` waits for the transfer in flight to end: nothing new
    /// starts, and the engine has not stopped until the device is idle.
    stopping: bool,
    completed: Option<Cookie>,
    _hal: PhantomData<H>,
}

impl<H: Hal, R: Registers, const N: usize> EduEngine<H, R, N> {
    /// Takes over the edu device behind `regs` (BAR0, memory decoding and
    /// bus mastering on), whose `dma_mask` property is `dma_mask`
    /// ([`regs::DEFAULT_DMA_MASK`] unless QEMU was told otherwise).
    /// `TimedOut` if a transfer someone else started never ends.
    ///
    /// # Safety
    /// `regs` must be the BAR0 of an edu device (or a fake one) that nothing
    /// else drives while the engine lives, and `dma_mask` at most the
    /// device's own: the device drops address bits above it silently, so a
    /// larger mask would let a buffer's copy land at another address.
    /// `unsafe` since issue 18 (the mask was a promise of a safe call).
    ///
    /// ```compile_fail,E0133
    /// use dmaengine::drivers::edu::EduEngine;
    /// use dmaengine::hal::Hal;
    /// use dmaengine::mmio::MmioRegion;
    /// fn take<H: Hal>(bar0: MmioRegion) {
    ///     let _ = EduEngine::<H>::new(bar0, u64::MAX);
    /// }
    /// ```
    pub unsafe fn new(regs: R, dma_mask: u64) -> Result<Self, DmaError> {
        let mut engine = EduEngine {
            regs,
            idle_polls: IDLE_POLLS,
            dma_mask,
            queue: [None; N],
            head: 0,
            len: 0,
            issued: 0,
            running: false,
            stopping: false,
            completed: None,
            _hal: PhantomData,
        };
        if !engine.wait_idle() {
            return Err(DmaError::TimedOut);
        }
        engine.regs.write(regs::INTR_ACK, regs::INTR_DMA);
        Ok(engine)
    }

    /// The register window.
    ///
    /// # Safety
    /// Nothing written through it may start a transfer or change the
    /// registers of one (`DMA_SRC`, `DMA_DST`, `DMA_COUNT`, `DMA_CMD`) or
    /// acknowledge the device's interrupt: the engine owns them, and a
    /// write there points the device at memory nobody vouched for (the
    /// window's `write32` is safe). Reading is always fine; a fake
    /// device's own controls too. `unsafe` since this contract was
    /// written: it was safe before. With the `access-counts` feature,
    /// `register_accesses` is the safe way to count accesses.
    ///
    /// ```
    /// use dmaengine::drivers::edu::EduEngine;
    /// use dmaengine::hal::Hal;
    /// # #[cfg(feature = "access-counts")]
    /// fn count<H: Hal>(engine: &EduEngine<H>) -> u64 {
    ///     engine.register_accesses()
    /// }
    /// ```
    ///
    /// ```compile_fail,E0133
    /// use dmaengine::drivers::edu::EduEngine;
    /// use dmaengine::hal::Hal;
    /// fn poke<H: Hal>(engine: &EduEngine<H>) {
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

    /// Register accesses so far, as the window counts them
    /// ([`Registers::accesses`]; with the `access-counts` feature).
    #[cfg(any(test, feature = "access-counts"))]
    pub fn register_accesses(&self) -> u64 {
        self.regs.accesses()
    }

    fn busy(&self) -> bool {
        self.regs.read(regs::DMA_CMD) & regs::DMA_CMD_START != 0
    }

    /// Spins until the device has no transfer in flight, for at most
    /// [`IDLE_POLLS`] reads; returns whether it went idle.
    fn wait_idle(&mut self) -> bool {
        for _ in 0..self.idle_polls {
            if !self.busy() {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }

    fn push(&mut self, transfer: Transfer) {
        self.queue[(self.head + self.len) % N] = Some(transfer);
        self.len += 1;
    }

    fn start_next(&mut self) {
        if self.running || self.issued == 0 || self.stopping {
            return;
        }
        let Some(t) = self.queue[self.head] else {
            return;
        };
        let (src, dst, direction) = if t.to_ram {
            (regs::BUFFER, t.ram, regs::DMA_CMD_TO_RAM)
        } else {
            (t.ram, regs::BUFFER, 0)
        };
        self.regs.write(regs::DMA_SRC, src);
        self.regs.write(regs::DMA_DST, dst);
        self.regs.write(regs::DMA_COUNT, t.len.into());
        self.regs.write(
            regs::DMA_CMD,
            regs::DMA_CMD_START | regs::DMA_CMD_IRQ | direction,
        );
        self.running = true;
    }

    /// Retires the running transfer if the device has finished it; returns
    /// whether it had.
    fn retire(&mut self) -> bool {
        if !self.running || self.busy() {
            return false;
        }
        self.regs.write(regs::INTR_ACK, regs::INTR_DMA);
        if let Some(cookie) = self.queue[self.head].take().and_then(|t| t.completes) {
            self.completed = Some(cookie);
        }
        self.head = (self.head + 1) % N;
        self.len -= 1;
        self.issued -= 1;
        self.running = false;
        true
    }

    /// Retires the running transfer if it is done and starts the next.
    fn advance(&mut self) -> bool {
        let retired = self.retire();
        if retired {
            self.start_next();
        }
        retired
    }
}

// SAFETY: a request is reported complete when the device has finished its
// last transfer (the transfers run one at a time, in order); `terminate`
// says `stopped` only with the device idle and nothing more to start, and
// `reset` only succeeds then; the device reads and writes the addresses of
// `H` it was given (the kernel gives its DMA mask to `new`).
unsafe impl<H: Hal, R: Registers, const N: usize> Engine for EduEngine<H, R, N> {
    type Mark = usize;
    type Hal = H;

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPY | Capabilities::INTERRUPT
    }

    fn limits(&self) -> Limits {
        Limits {
            max_len: regs::BUFFER_SIZE - 1,
            dma_mask: self.dma_mask,
            align: 1,
        }
    }

    fn mark(&self) -> usize {
        self.len
    }

    unsafe fn rewind(&mut self, mark: usize) {
        while self.len > mark.max(self.issued) {
            self.len -= 1;
            self.queue[(self.head + self.len) % N] = None;
        }
    }

    unsafe fn prep(
        &mut self,
        cookie: Cookie,
        op: Op,
        end: Option<Notify>,
    ) -> Result<(), EngineError> {
        let Op::Copy { dst, src, len } = op else {
            return Err(EngineError::NotSupported);
        };
        if self.stopping {
            return Err(EngineError::Halted);
        }
        if self.len + 2 > N {
            return Err(EngineError::RingFull);
        }
        // The channel split the request to `max_len`, so `len` fits.
        let len = len as u32;
        self.push(Transfer {
            ram: src,
            len,
            to_ram: false,
            completes: None,
        });
        self.push(Transfer {
            ram: dst,
            len,
            to_ram: true,
            completes: end.map(|_| cookie),
        });
        Ok(())
    }

    fn issue(&mut self) {
        self.issued = self.len;
        self.start_next();
    }

    fn poll(&mut self, _check_hardware: bool) -> Progress {
        while self.advance() {}
        Progress {
            completed: self.completed.take(),
            fault: None,
        }
    }

    fn handle_interrupt(&mut self) -> bool {
        let status = self.regs.read(regs::INTR_STATUS);
        if status & regs::INTR_DMA == 0 {
            return false;
        }
        if !self.advance() {
            // Not from a transfer we are waiting for: clear it all the same,
            // or the level-triggered line stays asserted.
            self.regs.write(regs::INTR_ACK, regs::INTR_DMA);
        }
        true
    }

    fn terminate(&mut self) -> Termination {
        // No abort on this device: the transfer in flight runs to its end
        // (one register read each call; see the module docs).
        self.retire();
        if self.running {
            // Keep only the running transfer (the head), to retire it once
            // the device is done; start nothing else.
            while self.len > 1 {
                self.len -= 1;
                self.queue[(self.head + self.len) % N] = None;
            }
            self.issued = self.len;
            self.stopping = true;
            return Termination {
                completed: self.completed.take(),
                stopped: false,
            };
        }
        self.stopping = false;
        self.queue = [None; N];
        self.len = 0;
        self.issued = 0;
        self.regs.write(regs::INTR_ACK, regs::INTR_DMA);
        Termination {
            completed: self.completed.take(),
            stopped: true,
        }
    }

    fn reset(&mut self) -> Result<(), DmaError> {
        if !self.terminate().stopped {
            // Still busy: the transfer in flight keeps its place.
            return Err(DmaError::TimedOut);
        }
        self.head = 0;
        Ok(())
    }
}

impl<H: Hal, R: Registers, const N: usize> Drop for EduEngine<H, R, N> {
    fn drop(&mut self) {
        if self.wait_idle() {
            self.regs.write(regs::INTR_ACK, regs::INTR_DMA);
        }
    }
}
