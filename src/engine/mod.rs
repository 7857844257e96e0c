//! The asynchronous copy API: cookies, channels, requests, and the
//! [`Engine`] trait that drivers implement.
//!
//! The names follow the 2005 I/OAT proposal (`memcpy_buf_to_buf`,
//! `issue_pending`, cookies and the `(last_completed, last_used)` snapshot);
//! the shape follows what today's Linux dmaengine learned since: a general
//! `prep` with flags, fill and zero as first-class operations, explicit
//! error kinds, `terminate` and `reset`.
//!
//! A request is *prepared* (written into the engine's ring, invisible to the
//! hardware), then *issued* with [`Channel::issue_pending`], then completes.
//! Completion is observed with [`Channel::status`] or [`Channel::wait`], or
//! through an optional per-request [`Callback`]. Clients that share the
//! channels of several engines go through the [`registry`].

mod channel;
mod cookie;
pub mod copybreak;
mod faults;
mod fixed_ring;
mod op;
pub mod registry;
pub mod shared;
mod transfer;
mod wakers;

use core::fmt;

use bitflags::bitflags;

pub use channel::{ADDRESS_HISTORY, Batch, Channel, FAILURE_HISTORY, TxState, copy_is_valid};
pub use cookie::{Cookie, Snapshot, is_complete};
pub use faults::{FaultHook, FaultSource};
pub use op::Op;
pub use shared::{Completion, SharedChannel, StaticChannel, TransferFuture};
pub use transfer::{Buffers, PrepError, Transfer, TransferError};

use crate::hal::{Hal, HalError};

bitflags! {
    /// Per-request flags (the I/OAT / Linux `DMA_PREP_*` flags).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct PrepFlags: u32 {
        /// Raise the engine's interrupt when this request completes
        /// (`DMA_PREP_INTERRUPT`). Needs [`Capabilities::INTERRUPT`].
        const INTERRUPT = 1 << 0;
        /// Later requests start only after this one has finished
        /// (`DMA_PREP_FENCE`). Every engine in this crate executes its ring
        /// strictly in order, which gives this for every request; the flag
        /// states the dependency for engines that do not.
        const FENCE = 1 << 1;
    }
}

bitflags! {
    /// What an engine can do.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Capabilities: u32 {
        /// Memory-to-memory copy.
        const COPY = 1 << 0;
        /// Fill with a 64-bit pattern, and zero.
        const FILL = 1 << 1;
        /// Completion interrupts ([`PrepFlags::INTERRUPT`]).
        const INTERRUPT = 1 << 2;
        /// Interrupt-only requests ([`Op::Interrupt`]).
        const INTERRUPT_OP = 1 << 3;
    }
}

/// What an engine accepts in one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest transfer one descriptor can do; longer requests are split.
    pub max_len: usize,
    /// The highest DMA address the engine can reach (e.g. `0xffff_ffff`).
    pub dma_mask: u64,
    /// Required alignment of addresses and lengths in bytes (1: none).
    pub align: usize,
}

/// How a request ended badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The engine could not read the source.
    ReadFailed,
    /// The engine could not write the destination.
    WriteFailed,
    /// The engine reported a bus error without saying which side.
    BusFault,
    /// The engine rejected the descriptor (an illegal instruction).
    InvalidDescriptor,
    /// The request was ended before it was known to be complete: the
    /// channel was terminated, or an earlier request on it failed. The
    /// engine no longer touches its memory, but what its destination holds
    /// is undefined: none, some or all of the bytes may have been written
    /// (an engine stopped mid-chain may have finished some of the requests
    /// it then reports aborted).
    Aborted,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::ReadFailed => "read failed",
            ErrorKind::WriteFailed => "write failed",
            ErrorKind::BusFault => "bus fault",
            ErrorKind::InvalidDescriptor => "invalid descriptor",
            ErrorKind::Aborted => "aborted",
        })
    }
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Done: every byte is at the destination.
    Complete,
    /// Prepared or issued, not finished.
    InProgress,
    /// Ended without completing.
    Error(ErrorKind),
}

/// Errors of the copy API. A call that returns one changed nothing (it
/// may have collected completions, as `poll` does), except
/// [`Channel::reset`]'s `Busy` on a running channel, which terminated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaError {
    /// A request of zero bytes.
    ZeroLength,
    /// Source and destination overlap.
    Overlap,
    /// An address in the request is beyond the engine's DMA mask.
    BeyondDmaMask,
    /// An address or length breaks the engine's alignment rule, or a page
    /// address is not page-aligned.
    Misaligned,
    /// A page-relative range runs past the end of the page.
    OutOfPage,
    /// A range runs past the end of its buffer.
    OutOfBounds,
    /// The ring has no room, or every cookie is in flight (`i32::MAX - 1`
    /// requests not yet known to have ended: one more would make the
    /// cookie rule call some of them complete): wait for completions (or
    /// issue what is prepared) and retry.
    RingFull,
    /// The channel has stopped after an error or `terminate`; `reset` it.
    Halted,
    /// The engine cannot do this (see [`Capabilities`]).
    NotSupported,
    /// The operation needs an idle channel.
    Busy,
    /// `wait` gave up before the request finished.
    TimedOut,
    /// The request ended with this error.
    Failed(ErrorKind),
    /// A request among those waited for ended with `kind`: `cookie` is the
    /// one that failed first (the cause; the requests after it on the
    /// channel ended `Aborted`). From [`Channel::wait_all`].
    FailedAt {
        /// The request that failed.
        cookie: Cookie,
        /// How it failed.
        kind: ErrorKind,
    },
    /// DMA memory is exhausted.
    NoMemory,
    /// The transfer belongs to another channel, or the request awaited
    /// through a [`SharedChannel`] is of a channel since replaced behind its
    /// lock (see [`shared`](self::shared#replacing-the-channel-behind-the-lock)):
    /// its channel is the one to ask; its memory may still be in use.
    WrongChannel,
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::ZeroLength => f.write_str("zero-length request"),
            DmaError::Overlap => f.write_str("source and destination overlap"),
            DmaError::BeyondDmaMask => f.write_str("address beyond the engine's DMA mask"),
            DmaError::Misaligned => f.write_str("misaligned address or length"),
            DmaError::OutOfPage => f.write_str("range runs past the end of the page"),
            DmaError::OutOfBounds => f.write_str("range runs past the end of the buffer"),
            DmaError::RingFull => f.write_str("descriptor ring full"),
            DmaError::Halted => f.write_str("channel halted; reset it"),
            DmaError::NotSupported => f.write_str("operation not supported by this engine"),
            DmaError::Busy => f.write_str("channel busy"),
            DmaError::TimedOut => f.write_str("timed out"),
            DmaError::Failed(kind) => write!(f, "request failed: {kind}"),
            DmaError::FailedAt { cookie, kind } => write!(f, "request {cookie} failed: {kind}"),
            DmaError::NoMemory => f.write_str("out of DMA memory"),
            DmaError::WrongChannel => f.write_str("request belongs to another channel"),
        }
    }
}

impl core::error::Error for DmaError {}

/// The HAL's refusals are the engine's errors of the same name, so `?`
/// passes a [`Dma`](crate::hal::Dma) allocation's error on.
impl From<HalError> for DmaError {
    fn from(e: HalError) -> Self {
        match e {
            HalError::ZeroLength => DmaError::ZeroLength,
            HalError::BeyondDmaMask => DmaError::BeyondDmaMask,
            HalError::NotSupported => DmaError::NotSupported,
            HalError::NoMemory => DmaError::NoMemory,
        }
    }
}

/// A completion callback: `func(cookie, status, context)`, run from
/// whichever of `status`, `wait`, `poll` or `handle_interrupt` first sees the
/// request end (or a `prep` that must collect completions first, when every
/// cookie but one is in flight: see [`DmaError::RingFull`]). It runs with the channel borrowed, so it must not call back
/// into it.
#[derive(Clone, Copy, Debug)]
pub struct Callback {
    /// The function.
    pub func: fn(Cookie, Status, usize),
    /// Passed through as the third argument.
    pub context: usize,
}

/// What the engine must do when the last descriptor of a request is done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// Write the request's cookie back now, not only at the end of the batch
    /// (a callback is waiting for it).
    pub writeback: bool,
    /// Raise the completion interrupt.
    pub interrupt: bool,
}

/// A failure the engine attributes to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The request that failed; every request after it is aborted.
    pub cookie: Cookie,
    /// How.
    pub kind: ErrorKind,
}

/// What [`Engine::poll`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every request up to and including this one has completed (`None`:
    /// nothing new since the last poll).
    pub completed: Option<Cookie>,
    /// The engine stopped on this request's failure.
    pub fault: Option<Fault>,
}

/// Why [`Engine::prep`] refused a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineError {
    /// The ring has no room now; completions will make some.
    RingFull,
    /// The engine stopped after a failure or `terminate`; only `reset`
    /// brings it back.
    Halted,
    /// The engine cannot do this operation at all.
    NotSupported,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineError::RingFull => "descriptor ring full",
            EngineError::Halted => "engine halted",
            EngineError::NotSupported => "operation not supported by this engine",
        })
    }
}

impl core::error::Error for EngineError {}

impl From<EngineError> for DmaError {
    fn from(e: EngineError) -> DmaError {
        match e {
            EngineError::RingFull => DmaError::RingFull,
            EngineError::Halted => DmaError::Halted,
            EngineError::NotSupported => DmaError::NotSupported,
        }
    }
}

/// What [`Engine::terminate`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Termination {
    /// Every request up to and including this one has completed (`None`:
    /// nothing new since the last poll).
    pub completed: Option<Cookie>,
    /// The device touches no memory of any request the engine was given,
    /// and will not again: every request after `completed` is abandoned.
    /// `false`: the device may still be working on one of them (it has no
    /// abort, or has not obeyed it yet); the engine takes no new work, and
    /// a later `terminate` says whether it has stopped since. An engine
    /// that answers `false` raises its interrupt once the device has
    /// stopped (edu's transfer in flight interrupts at its end): tasks
    /// awaiting its requests sleep until then, and the channel's
    /// `handle_interrupt` finds the stop over and wakes them.
    pub stopped: bool,
}

/// The driver side of a channel: an engine with a descriptor ring.
///
/// The [`Channel`] validates requests, splits them to [`Limits::max_len`],
/// assigns cookies and tracks their fate; the engine writes descriptors,
/// starts the hardware and reports completions and failures. Requests
/// complete in the order they were prepared.
///
/// The methods that decide what the device will read or write (`prep`,
/// `prep_run`, `rewind`) are `unsafe`: the caller vouches for the
/// addresses. The others only hand over, observe or stop what those
/// prepared, so they are safe to call in any order, also through
/// [`Channel::engine_mut`] (where they confuse the channel's bookkeeping,
/// never memory: a request whose end the channel misses stays in flight,
/// and an owned buffer leaks; `engine_mut` itself is `unsafe` because the
/// reference could move the engine out of its channel).
///
/// Safe code keeps compiling for what leaves memory alone, and stops at
/// the descriptors:
///
/// ```
/// use dmaengine::drivers::cpu::CpuEngine;
/// use dmaengine::engine::{Channel, Engine};
/// use dmaengine::hal::Hal;
/// fn look<H: Hal>(chan: &mut Channel<CpuEngine<H>>) {
///     // SAFETY: the engine stays in its channel.
///     let engine = unsafe { chan.engine_mut() };
///     engine.issue();
///     let _ = engine.poll(true);
/// }
/// ```
///
/// ```compile_fail,E0133
/// use dmaengine::drivers::cpu::CpuEngine;
/// use dmaengine::engine::{Channel, Cookie, Engine, Op};
/// use dmaengine::hal::Hal;
/// fn scribble<H: Hal>(chan: &mut Channel<CpuEngine<H>>) {
///     // SAFETY: the engine stays in its channel.
///     let engine = unsafe { chan.engine_mut() };
///     let op = Op::Copy { dst: 0x1000, src: 0x2000, len: 64 };
///     let _ = engine.prep(Cookie::FIRST, op, None);
///     engine.issue();
/// }
/// ```
///
/// # Safety
/// A channel hands owned buffers back, to be freed, on the strength of
/// what its engine reports, so an implementation must report truthfully:
/// - [`Engine::poll`] reports a request complete (or, with its `fault`,
///   failed, the engine having stopped) only when the device will touch
///   none of the memory of that request and every earlier one again;
/// - [`Engine::terminate`] says `stopped: true` only when the device will
///   touch the memory of none of the requests it was given again;
/// - [`Engine::reset`] succeeds only on a device so stopped, and nothing
///   forgets a request the device may still touch;
/// - the addresses in an [`Op`] are read as DMA addresses of
///   [`Engine::Hal`] (its `phys_to_virt`, its devices' view), and nothing
///   but what was prepared is ever accessed.
pub unsafe trait Engine {
    /// A saved ring position for [`Engine::rewind`].
    type Mark: Copy;

    /// The kernel services whose DMA addresses the engine's descriptors
    /// hold: a [`Channel`] over it takes owned buffers ([`Dma`]) of this
    /// Hal only, so a buffer's address is always read in its own address
    /// space (a type check, where it was none before).
    ///
    /// [`Dma`]: crate::hal::Dma
    type Hal: Hal;

    /// What the engine can do. Fixed for the engine's life: the channel
    /// reads it once, when it is created.
    fn capabilities(&self) -> Capabilities;

    /// What one descriptor may hold. Fixed for the engine's life: the
    /// channel reads it once, when it is created.
    fn limits(&self) -> Limits;

    /// The current end of the prepared descriptors.
    fn mark(&self) -> Self::Mark;

    /// Forgets every descriptor prepared since `mark` (none was issued).
    ///
    /// # Safety
    /// `mark` is this engine's [`Engine::mark`] taken after the last
    /// [`Engine::issue`] and with nothing issued since (an older one may
    /// bring back descriptors whose memory is gone, and the next `issue`
    /// would run them). `unsafe` since this contract was written; it was
    /// safe before.
    unsafe fn rewind(&mut self, mark: Self::Mark);

    /// Writes one descriptor for request `cookie` into the ring, invisible to
    /// the hardware until [`Engine::issue`]. `end` is `Some` on the request's
    /// last descriptor. On error the channel rewinds to its mark, so a
    /// partly written request never reaches the hardware.
    ///
    /// # Safety
    /// `op` must be valid for the engine ([`Limits`], [`Capabilities`];
    /// ranges that do not wrap), its addresses DMA addresses of
    /// [`Engine::Hal`], and every byte it reads or writes memory the caller
    /// owns and does not access in a conflicting way (no reads of the
    /// destination, no writes of either side) until this engine reports
    /// the request ended: complete or failed by [`Engine::poll`], or
    /// abandoned by an [`Engine::terminate`] that says `stopped` (or the
    /// descriptor is forgotten by [`Engine::rewind`] before any
    /// `issue`). `unsafe` since this contract was written: before, a safe
    /// call let the device write anywhere.
    unsafe fn prep(
        &mut self,
        cookie: Cookie,
        op: Op,
        end: Option<Notify>,
    ) -> Result<(), EngineError>;

    /// Writes the request `cookie` whose op fits one descriptor
    /// ([`Limits`]): [`Engine::prep`] with `end` `Some(notify)`, all or
    /// nothing. On error the engine is as it was before the call: nothing
    /// of the request stays where [`Engine::issue`] would hand it to the
    /// hardware. The default takes a mark, prepares, and rewinds to the
    /// mark on error; a driver whose `prep` writes nothing of such a
    /// request before the point where it can no longer fail may skip the
    /// mark (how [`Channel::prep`] prepares a single request).
    ///
    /// # Safety
    /// As for [`Engine::prep`]. An override must leave the engine as it
    /// was whenever it returns an error.
    #[inline(always)]
    unsafe fn prep_one(
        &mut self,
        cookie: Cookie,
        op: Op,
        notify: Notify,
    ) -> Result<(), EngineError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { prep_one_marked(self, cookie, op, notify) }
    }

    /// Writes one descriptor per request for the requests `ops`, whose
    /// cookies run consecutively from `first`; each op fits one descriptor
    /// ([`Limits`]), and `last` is the notification of the last request
    /// (the others ask for none). The default prepares them one by one; a
    /// driver may do it in one pass. On error the channel rewinds to its
    /// mark, as for [`Engine::prep`].
    ///
    /// # Safety
    /// As for [`Engine::prep`], for every op.
    unsafe fn prep_run(
        &mut self,
        first: Cookie,
        ops: &[Op],
        last: Notify,
    ) -> Result<(), EngineError> {
        let mut cookie = first;
        for (i, &op) in ops.iter().enumerate() {
            let notify = if i + 1 == ops.len() {
                last
            } else {
                Notify::default()
            };
            // SAFETY: the caller upholds `prep`'s contract for every op.
            unsafe { self.prep(cookie, op, Some(notify)) }?;
            cookie = cookie.next();
        }
        Ok(())
    }

    /// Checks and writes a batch of copies in one pass, each request one
    /// descriptor, cookies consecutive from `first`, none asking for a
    /// notification: how [`Channel::prep_batch`] prepares its common case
    /// without a pass of its own over the ops to validate them. Returns
    /// whether it wrote them all; `false` leaves the engine as it was (the
    /// channel then validates the ops one by one, says why one is refused,
    /// or prepares them through [`Engine::prep_run`]). An engine writes
    /// them only if every op is an [`Op::Copy`] that [`copy_is_valid`]
    /// accepts against `dma_mask` (the channel's, from [`Limits`]) and fits
    /// one descriptor. The default writes nothing.
    ///
    /// # Safety
    /// As for [`Engine::prep`], for every op: the caller vouches for the
    /// memory of each copy; checking the copies themselves is this
    /// method's.
    unsafe fn prep_copies(&mut self, first: Cookie, ops: &[Op], dma_mask: u64) -> bool {
        let _ = (first, ops, dma_mask);
        false
    }

    /// Hands every prepared descriptor to the hardware. Safe: it runs only
    /// what an `unsafe` `prep` wrote, whose contract covers the time from
    /// the `prep` on.
    fn issue(&mut self);

    /// Collects completions, and with `check_hardware` also asks the device
    /// whether it stopped on an error (which may cost register accesses).
    fn poll(&mut self, check_hardware: bool) -> Progress;

    /// Services the engine's interrupt; returns whether it was raised.
    fn handle_interrupt(&mut self) -> bool;

    /// Asks the hardware to stop for good, without waiting long (it is
    /// called from interrupt handlers): returns the last request known
    /// complete, and whether the device has stopped. Every later request is
    /// abandoned once it has; until then the engine takes no new work, and
    /// the channel asks again (from `poll`, `status`, `terminate`, ...).
    /// Before, it returned only the cookie, and an engine that could not
    /// stop its device said so nowhere.
    fn terminate(&mut self) -> Termination;

    /// Brings a stopped engine back to an empty, working ring.
    fn reset(&mut self) -> Result<(), DmaError>;
}

/// [`Engine::prep_one`] through a mark: prepares, and rewinds to the mark
/// taken first if `prep` fails (the default, and what a driver's override
/// falls back to for the requests it cannot prepare without one).
///
/// # Safety
/// As for [`Engine::prep`].
#[inline(always)]
pub(crate) unsafe fn prep_one_marked<E: Engine + ?Sized>(
    engine: &mut E,
    cookie: Cookie,
    op: Op,
    notify: Notify,
) -> Result<(), EngineError> {
    let mark = engine.mark();
    // SAFETY: the caller's contract, passed on.
    let result = unsafe { engine.prep(cookie, op, Some(notify)) };
    if result.is_err() {
        // SAFETY: the mark was taken in this call, nothing issued since.
        unsafe { engine.rewind(mark) };
    }
    result
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(test)]
mod tests;
