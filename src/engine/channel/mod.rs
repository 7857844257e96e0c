//! A channel: one engine's ring seen through cookies.

use core::sync::atomic::AtomicU64;
use core::time::Duration;

use embedded_hal::delay::DelayNs;

use super::fixed_ring::FixedRing;
use super::wakers::WakerSlots;
use super::{
    Callback, Capabilities, Cookie, DmaError, Engine, FaultHook, Limits, Op, Snapshot, Status,
};

mod callbacks;
mod failures;
mod faults;
mod prep;
mod stop;
mod validate;

use crate::slots::take_id;
use failures::FailureLog;
use stop::Stopping;
pub use validate::copy_is_valid;

/// Callbacks a channel holds at once (requests with callbacks in flight).
const MAX_CALLBACKS: usize = 64;
/// Requests whose addresses a channel remembers, so a DMA fault an IOMMU
/// reports later can be pinned on the request that caused it.
pub const ADDRESS_HISTORY: usize = 64;

/// Slots of the footprint array: a request's op is kept in the slot of its
/// cookie modulo this. A power of two twice [`ADDRESS_HISTORY`], so the last
/// `ADDRESS_HISTORY` cookies always have slots of their own, across the
/// cookies' wrap too (from `i32::MAX`, slot 127, to 1, slot 1: a window of
/// 64 cookies around it never meets a residue twice).
const FOOTPRINT_SLOTS: usize = 2 * ADDRESS_HISTORY;
/// Failures (and terminations) whose cookies a channel still answers
/// `Error` for. Older ones fall back to the 2005 I/OAT proposal's snapshot rule, which
/// calls every cookie outside the in-flight window complete.
pub const FAILURE_HISTORY: usize = 32;

static NEXT_CHANNEL_ID: AtomicU64 = AtomicU64::new(1);

/// The cookies [`Channel::prep_batch`] assigned: `first` to `last`, in
/// order, one per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The first request's cookie.
    pub first: Cookie,
    /// The last request's cookie: when it has ended, every one has.
    pub last: Cookie,
    /// How many requests.
    pub len: usize,
}

/// The answer of [`Channel::status`]: the request's status and the
/// channel's snapshot it was decided from (the 2005 I/OAT proposal's `last` and `used`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxState {
    /// Where the request stands.
    pub status: Status,
    /// The channel's `(last_completed, last_used)`.
    pub snapshot: Snapshot,
}

/// A DMA channel over engine `E`.
///
/// Methods take `&mut self`: a kernel that also services the engine's
/// interrupt wraps the channel in a lock taken with interrupts disabled.
/// Nothing on the submit and completion paths allocates.
pub struct Channel<E: Engine> {
    engine: E,
    id: u64,
    /// The engine's capabilities and limits, read once (they are fixed).
    caps: Capabilities,
    limits: Limits,
    last_used: i32,
    last_completed: i32,
    /// How many times the cookies wrapped from `i32::MAX` to 1: with
    /// `last_used`, how many cookies were assigned after a failure was
    /// recorded, so a record is not read for a cookie assigned again a
    /// lap later (see `failures.rs`).
    lap: u32,
    /// Something is prepared and not yet issued.
    prepared: bool,
    halted: bool,
    /// A stop the engine has not confirmed: the requests not complete stay
    /// in flight until it does.
    stopping: Option<Stopping>,
    failures: FailureLog,
    /// Requests with callbacks, in cookie order.
    callbacks: FixedRing<(Cookie, Callback), MAX_CALLBACKS>,
    /// Where the last ADDRESS_HISTORY requests read and wrote: each request
    /// as it was prepared (decoding it is left to the rare fault that needs
    /// it), in the slot of its cookie ([`FOOTPRINT_SLOTS`]). The cookie is
    /// not stored: the slot and `last_used` say it. A slot never written
    /// holds `Op::Interrupt`, which touches no page. Written only while
    /// `attribution` is on. The slot of the next cookie may hold a request
    /// the engine refused (its op is stored before the engine is asked):
    /// no fault is pinned on a cookie not yet used, and the slot is written
    /// again when it is.
    footprints: [Op; FOOTPRINT_SLOTS],
    /// Fault attribution is on: `footprints` are kept
    /// ([`Channel::set_fault_attribution`]).
    attribution: bool,
    /// Tasks awaiting requests (see [`super::shared`]).
    wakers: WakerSlots,
    /// The last request prepared with [`PrepFlags::INTERRUPT`] (0: none).
    interrupt_through: i32,
    /// The lap `interrupt_through` was assigned in.
    interrupt_lap: u32,
    /// The longest piece one descriptor takes: `max_len` rounded down to
    /// the alignment (computed once: the limits are fixed).
    piece_max: usize,
    /// The engine takes copies at any alignment, so a copy is checked by
    /// [`copy_is_valid`] alone (computed once).
    plain_copies: bool,
    /// The IOMMU fault records of the engine's device, if it is behind one.
    faults: Option<FaultHook>,
}

impl<E: Engine> Channel<E> {
    /// A channel over `engine`, whose ring must be empty.
    pub fn new(engine: E) -> Self {
        let limits = engine.limits();
        let align = limits.align.max(1);
        let caps = engine.capabilities();
        Channel {
            caps,
            limits,
            piece_max: (limits.max_len / align * align).max(align),
            plain_copies: caps.contains(Capabilities::COPY) && limits.align <= 1,
            engine,
            id: take_id(&NEXT_CHANNEL_ID),
            last_used: 0,
            last_completed: 0,
            lap: 0,
            interrupt_through: 0,
            interrupt_lap: 0,
            prepared: false,
            halted: false,
            stopping: None,
            failures: FailureLog::new(),
            callbacks: FixedRing::new(),
            footprints: [Op::Interrupt; FOOTPRINT_SLOTS],
            attribution: false,
            wakers: WakerSlots::new(),
            faults: None,
        }
    }

    /// A number unique to this channel among all channels created: a
    /// `u64` that never wraps (a wrapping `u32` let a channel accept
    /// another's transfer after 2^32 channels). Once ids run out (after
    /// 2^64 - 1 channels) it is 0, which accepts no transfer.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The engine, for driver-specific controls (each driver's type docs
    /// say which of its methods are meant for this). The [`Engine`] methods
    /// that point the device at memory (`prep`, `prep_run`, `rewind`) are
    /// `unsafe` in their own right; the safe ones (`issue`, `poll`,
    /// `terminate`, `reset`, ...) change the ring behind the channel's back
    /// and break its bookkeeping: cookies may then be reported wrongly or
    /// never end, and an owned buffer whose request never ends leaks, but
    /// none comes back while the device may touch it.
    ///
    /// `unsafe` since a `&mut E` also lets the engine itself be moved out
    /// (`mem::replace`, `mem::swap`, `mem::take`): the channel credits what
    /// the engine it holds reports to every cookie before it, so another
    /// engine's completion handed an owned buffer back while the engine
    /// that held its request, moved elsewhere, could still run it.
    ///
    /// ```compile_fail,E0133
    /// use dmaengine::drivers::cpu::CpuEngine;
    /// use dmaengine::engine::Channel;
    /// use dmaengine::hal::Hal;
    /// fn swap_out<H: Hal>(chan: &mut Channel<CpuEngine<H>>) -> CpuEngine<H> {
    ///     core::mem::replace(chan.engine_mut(), CpuEngine::new())
    /// }
    /// ```
    ///
    /// # Safety
    /// The engine stays this channel's: it is not moved out, replaced or
    /// swapped through the reference (its limits and capabilities, read
    /// once by [`Channel::new`], stay as they were too).
    pub unsafe fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }

    /// [`Channel::engine_mut`] for the tests that script a fake engine in
    /// place (they never move it out).
    #[cfg(test)]
    pub(crate) fn test_engine(&mut self) -> &mut E {
        &mut self.engine
    }

    /// The `(last_completed, last_used)` snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            last_completed: self.last_completed,
            last_used: self.last_used,
        }
    }

    /// Whether the channel stopped after a failure or `terminate`.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// Whether every request prepared so far has ended.
    pub fn is_idle(&self) -> bool {
        self.last_completed == self.last_used
    }

    /// Makes the next cookie `next`. Only on an idle channel: it is how a
    /// test reaches the wrap at `i32::MAX` without two billion requests.
    /// A test hook: only with the `test-hooks` feature.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_next_cookie(&mut self, next: Cookie) -> Result<(), DmaError> {
        if !self.is_idle() || self.prepared {
            return Err(DmaError::Busy);
        }
        let previous = if next == Cookie::FIRST {
            i32::MAX
        } else {
            next.get() - 1
        };
        // As if the cookies up to `previous` had been assigned.
        if previous < self.last_used {
            self.lap = self.lap.wrapping_add(1);
        }
        self.last_used = previous;
        self.last_completed = previous;
        // The cookies before `next` were never this channel's: slots keyed
        // by them must not pin a fault on them.
        self.footprints = [Op::Interrupt; FOOTPRINT_SLOTS];
        Ok(())
    }

    /// Sets the snapshot as it would stand after requests nobody asked
    /// about: how a test reaches a full in-flight window without 2^31
    /// requests.
    #[cfg(test)]
    pub(crate) fn set_window(&mut self, last_completed: i32, last_used: i32) {
        self.last_completed = last_completed;
        self.last_used = last_used;
    }

    /// The engine's capabilities (read once, when the channel was made).
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// What one descriptor of the engine may hold (read once).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The cookie the next request gets.
    fn next_cookie(&self) -> Cookie {
        // `last_used` is 0 before any request (then the first) or a cookie,
        // whose successor this is: past `i32::MAX` the sum is not positive.
        Cookie::new(self.last_used.wrapping_add(1)).unwrap_or(Cookie::FIRST)
    }

    /// [`Channel::make_room_for_cookies`] for `cookie`, the next single
    /// request's; counts the lap it starts, if it is 1 after `i32::MAX`
    /// (before the request is written, so one that asks for an interrupt
    /// records the new lap: [`Channel::refuse_cookie`] takes it back).
    #[cold]
    #[inline(never)]
    pub(super) fn enter_cookie(&mut self, cookie: Cookie) -> Result<(), DmaError> {
        self.make_room_for_cookies(1)?;
        if cookie == Cookie::FIRST && self.last_used != 0 {
            self.lap = self.lap.wrapping_add(1);
        }
        Ok(())
    }

    /// Takes back what [`Channel::enter_cookie`] counted for `cookie`,
    /// whose request was refused.
    #[cold]
    #[inline(never)]
    pub(super) fn refuse_cookie(&mut self, cookie: Cookie) {
        if cookie == Cookie::FIRST && self.last_used != 0 {
            self.lap = self.lap.wrapping_sub(1);
        }
    }

    /// Makes `last` the last cookie assigned, the requests up to it
    /// prepared (a batch, less than a lap: [`Channel::cookies_free`]),
    /// counting the lap when the cookies wrapped on the way.
    #[inline(always)]
    pub(super) fn use_cookies_through(&mut self, last: Cookie) {
        if last.get() < self.last_used {
            self.lap = self.lap.wrapping_add(1);
        }
        self.last_used = last.get();
    }

    /// How many cookies were assigned after `cookie`, assigned when the
    /// cookies had wrapped `lap` times (a lap or more: every value again).
    pub(super) fn assigned_since(&self, lap: u32, cookie: i32) -> u64 {
        let span = i32::MAX as u64;
        let laps = u64::from(self.lap.wrapping_sub(lap));
        (laps * span + self.last_used as u64).saturating_sub(cookie as u64)
    }

    /// How many more cookies may be assigned before the in-flight window
    /// `(last_completed, last_used]` would wrap onto itself: one more and
    /// the cookie rule would call requests still in flight complete.
    pub(super) fn cookies_free(&self) -> usize {
        let span = i64::from(i32::MAX);
        let (done, used) = (i64::from(self.last_completed), i64::from(self.last_used));
        // At most `i32::MAX - 1` in flight: before the first completion
        // (`done` 0, which counts as `i32::MAX`) too, so that no failure
        // record or stop ever sees a window of every cookie, whose edges
        // would coincide.
        (span - 1 - (used - done).rem_euclid(span)) as usize
    }

    /// Makes room for `n` more cookies when fewer are free
    /// ([`Channel::cookies_free`]): collects completions first (an engine
    /// that completes requests as they are issued, such as the CPU engine,
    /// reports them only when asked, and a caller that trusts that may
    /// never ask), then answers `RingFull` if there is still no room, or
    /// `Halted` if the collection found a failure.
    #[cold]
    #[inline(never)]
    pub(super) fn make_room_for_cookies(&mut self, n: usize) -> Result<(), DmaError> {
        if self.cookies_free() >= n {
            return Ok(());
        }
        self.poll();
        if self.halted {
            return Err(DmaError::Halted);
        }
        if self.cookies_free() < n {
            return Err(DmaError::RingFull);
        }
        Ok(())
    }

    /// Hands everything prepared to the hardware.
    pub fn issue_pending(&mut self) {
        if self.prepared && !self.halted {
            self.engine.issue();
            self.prepared = false;
        }
    }

    /// Collects completions and failures and runs due callbacks.
    pub fn poll(&mut self) {
        let outstanding = !self.is_idle() && !self.halted;
        self.collect(outstanding);
    }

    #[inline(always)]
    fn collect(&mut self, check_hardware: bool) {
        if self.halted {
            if self.stopping.is_some() {
                self.finish_stop();
            }
            return;
        }
        let progress = self.engine.poll(check_hardware);
        if self.faults.is_some() && self.claim_faults(progress.completed) {
            self.run_callbacks();
            return;
        }
        if let Some(done) = progress.completed {
            self.last_completed = done.get();
        }
        if let Some(fault) = progress.fault {
            self.fail(fault);
        }
        self.run_callbacks();
    }

    /// Where request `cookie` stands (the 2005 I/OAT proposal's `dma_async_memcpy_complete`),
    /// with the snapshot it was decided from.
    ///
    /// A request ended by one of the last [`FAILURE_HISTORY`] failures or
    /// terminations is reported with its error; the channel keeps no more
    /// (it allocates nothing), so a request ended by an older one reads as
    /// `Complete`, as the 2005 I/OAT proposal's rule has it. Its fate was reported when it
    /// ended, through `wait`, its callback, or `status` at the time.
    ///
    /// `Error(kind)` means the engine no longer touches the request's
    /// memory; the destination's contents are undefined (see
    /// [`ErrorKind::Aborted`](crate::engine::ErrorKind::Aborted)).
    // Performance note H2 (guide, performance chapter).
    #[inline(always)]
    pub fn status(&mut self, cookie: Cookie) -> TxState {
        if !self.snapshot().is_complete(cookie) {
            self.collect(true);
        }
        TxState {
            status: self.classify(cookie),
            snapshot: self.snapshot(),
        }
    }

    /// Waits for `cookie` to end, polling with `delay`, for at most
    /// `timeout`. Issues pending requests first, so the wait can end.
    pub fn wait(
        &mut self,
        cookie: Cookie,
        delay: &mut impl DelayNs,
        timeout: Duration,
    ) -> Result<(), DmaError> {
        self.issue_pending();
        wait_for_status(delay, timeout, || self.status(cookie).status)
    }

    /// Waits until every request prepared so far has ended (issuing what is
    /// pending first): how a caller that got [`DmaError::RingFull`] waits
    /// for room. If one of them failed, the error names it and its cause
    /// ([`DmaError::FailedAt`]), not the `Aborted` of the requests after it;
    /// requests ended by `terminate` give `FailedAt` with the first of them
    /// and `Aborted`. This holds whether they ended during the wait or
    /// before it (an idle channel is no proof of success): the answer
    /// covers every request since the previous `wait_all` answer (`Ok` or
    /// `FailedAt`, not `TimedOut`) or [`Channel::reset`], whichever was
    /// later, and reports each failure once.
    pub fn wait_all(
        &mut self,
        delay: &mut impl DelayNs,
        timeout: Duration,
    ) -> Result<(), DmaError> {
        if let Some(last) = Cookie::new(self.last_used).filter(|_| !self.is_idle())
            && self.wait(last, delay, timeout) == Err(DmaError::TimedOut)
        {
            return Err(DmaError::TimedOut);
        }
        // Whether the wait ended well or not, the failure records say
        // what failed first.
        let answer = self.failures.first_unreported();
        self.failures.mark_reported();
        answer.map_or(Ok(()), Err)
    }

    /// Services the engine's interrupt: collects completions and failures
    /// and runs callbacks. Returns whether the interrupt was the engine's.
    pub fn handle_interrupt(&mut self) -> bool {
        let ours = self.engine.handle_interrupt();
        if ours {
            self.collect(false);
        }
        ours
    }
}

/// Asks `look` where a request stands until it has ended or `timeout` has
/// passed, waiting with `delay` in between (1 us, doubling up to 1 ms).
pub(crate) fn wait_for_status(
    delay: &mut impl DelayNs,
    timeout: Duration,
    mut look: impl FnMut() -> Status,
) -> Result<(), DmaError> {
    let limit_us = timeout.as_micros().min(u64::MAX as u128) as u64;
    let mut waited_us = 0u64;
    let mut step_us = 1u32;
    loop {
        match look() {
            Status::Complete => return Ok(()),
            Status::Error(kind) => return Err(DmaError::Failed(kind)),
            Status::InProgress if waited_us >= limit_us => return Err(DmaError::TimedOut),
            Status::InProgress => {
                let step = (step_us as u64).min(limit_us - waited_us).max(1) as u32;
                delay.delay_us(step);
                waited_us += step as u64;
                step_us = (step_us * 2).min(1000);
            }
        }
    }
}
