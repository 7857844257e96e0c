//! A channel: one engine's ring seen through cookies.

use core::sync::atomic::{AtomicU64, Ordering};
use core::task::Waker;
use core::time::Duration;

use embedded_hal::delay::DelayNs;

use super::wakers::{SlotName, WakerSlots};
use super::{
    Callback, Capabilities, Cookie, DmaError, Engine, EngineError, ErrorKind, Fault, FaultHook,
    Limits, Notify, Op, PrepFlags, Snapshot, Status,
};
use crate::hal::{DmaAddr, PAGE_SIZE};

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

/// The next id from `counter`, which never wraps: a [`Transfer`] is
/// matched to its channel by id, so an id must never be handed out twice.
/// Once the ids run out (2^64 - 1 channels: never, in practice) every
/// channel gets 0, which no transfer is accepted by (its buffers leak).
///
/// [`Transfer`]: super::Transfer
fn take_id(counter: &AtomicU64) -> u64 {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1))
        .unwrap_or(0)
}

/// One failure or termination: the cookies it ended.
#[derive(Clone, Copy, Debug)]
struct Failure {
    /// The request that failed, and how (none for a termination).
    failed: Option<(Cookie, ErrorKind)>,
    /// The requests it ended are those in `(before, last]`.
    before: i32,
    last: i32,
}

impl Failure {
    fn kind_of(&self, cookie: Cookie) -> Option<ErrorKind> {
        if let Some((failed, kind)) = self.failed
            && failed == cookie
        {
            return Some(kind);
        }
        let ended = !super::is_complete(cookie, self.before, self.last);
        ended.then_some(ErrorKind::Aborted)
    }
}

/// A stop asked of the engine and not yet confirmed (see
/// [`Channel::terminate`]).
#[derive(Clone, Copy, Debug)]
struct Stopping {
    /// The request whose failure caused it, and how (none for a
    /// termination).
    failed: Option<(Cookie, ErrorKind)>,
}

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
    /// Something is prepared and not yet issued.
    prepared: bool,
    halted: bool,
    /// A stop the engine has not confirmed: the requests not complete stay
    /// in flight until it does.
    stopping: Option<Stopping>,
    failures: [Option<Failure>; FAILURE_HISTORY],
    next_failure: usize,
    /// Failures recorded since creation (only the last FAILURE_HISTORY kept).
    failures_recorded: usize,
    /// `failures_recorded` when `wait_all` last answered or `reset` ran:
    /// the failures `wait_all` has yet to report are those after it.
    failures_reported: usize,
    callbacks: [Option<(Cookie, Callback)>; MAX_CALLBACKS],
    /// Where the last ADDRESS_HISTORY requests read and wrote: each request
    /// as it was prepared (decoding it is left to the rare fault that needs
    /// it), in the slot of its cookie ([`FOOTPRINT_SLOTS`]). The cookie is
    /// not stored: the slot and `last_used` say it. A slot never written
    /// holds `Op::Interrupt`, which touches no page.
    footprints: [Op; FOOTPRINT_SLOTS],
    callback_head: usize,
    callback_len: usize,
    /// Tasks awaiting requests (see [`super::shared`]).
    wakers: WakerSlots,
    /// The last request prepared with [`PrepFlags::INTERRUPT`] (0: none).
    interrupt_through: i32,
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
            interrupt_through: 0,
            prepared: false,
            halted: false,
            stopping: None,
            failures: [None; FAILURE_HISTORY],
            next_failure: 0,
            failures_recorded: 0,
            failures_reported: 0,
            callbacks: [None; MAX_CALLBACKS],
            callback_head: 0,
            callback_len: 0,
            footprints: [Op::Interrupt; FOOTPRINT_SLOTS],
            wakers: WakerSlots::new(),
            faults: None,
        }
    }

    /// Makes the channel ask `hook` for its device's IOMMU faults each time
    /// the engine reports progress, after reading it and before calling
    /// any request complete: a request whose DMA the unit refused then
    /// ends `Error(WriteFailed)` (or `ReadFailed`) as with
    /// [`Channel::fail_at`], never `Complete`, although the engine, which
    /// never learns of the refusal, reports it done. A fault of the device
    /// that no remembered request explains ends every outstanding request
    /// (`Error(BusFault)` for the first). `None` removes the hook. Make the
    /// hook for the engine's own device: another's faults would be pinned
    /// on this channel's requests, and its own left unread.
    ///
    /// The check relies on the unit recording a refused access before the
    /// device's later writes (its completion) are seen, as QEMU's model
    /// does (it records the fault within the access). Where recording
    /// trails the device's writes, a fault read after the completion is
    /// still pinned on its request by the next check, but the request may
    /// have read `Complete` in between.
    ///
    /// # Safety
    /// While the hook is installed (until it is replaced or the channel
    /// dropped), the source it was made from must stay alive, and its
    /// `take_fault_of` must be callable from whatever thread runs the
    /// channel's methods: an [`Iommu`](crate::iommu::Iommu), which is not
    /// `Sync`, must not be used elsewhere meanwhile (the same lock as the
    /// channel's, or one CPU).
    pub unsafe fn set_fault_hook(&mut self, hook: Option<FaultHook>) {
        self.faults = hook;
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
    /// `unsafe`, so this gives no safe path to raw DMA; the safe ones
    /// (`issue`, `poll`, `terminate`, `reset`, ...) change the ring behind
    /// the channel's back and break its bookkeeping: cookies may then be
    /// reported wrongly or never end, and an owned buffer whose request
    /// never ends leaks, but none comes back while the device may touch it.
    pub fn engine_mut(&mut self) -> &mut E {
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
        self.last_used = previous;
        self.last_completed = previous;
        // The cookies before `next` were never this channel's: slots keyed
        // by them must not pin a fault on them.
        self.footprints = [Op::Interrupt; FOOTPRINT_SLOTS];
        Ok(())
    }

    /// The engine's capabilities (read once, when the channel was made).
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// What one descriptor of the engine may hold (read once).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks `op` and `flags` against the engine without changing
    /// anything. Every sum is checked: addresses and lengths come from
    /// callers.
    // Inlined, like the rest of the per-request path: under an emulator
    // each return is an indirect jump looked up at run time, a large part
    // of a small request's cost.
    #[inline(always)]
    fn validate(&self, op: &Op, flags: PrepFlags) -> Result<(), DmaError> {
        self.check_flags(flags)?;
        self.check_op(op).map(|_| ())
    }

    /// What [`Channel::validate`] checks once per call: the channel is
    /// running and the engine has what `flags` ask for.
    #[inline(always)]
    fn check_flags(&self, flags: PrepFlags) -> Result<(), DmaError> {
        if self.halted {
            return Err(DmaError::Halted);
        }
        if flags.contains(PrepFlags::INTERRUPT) && !self.caps.contains(Capabilities::INTERRUPT) {
            return Err(DmaError::NotSupported);
        }
        Ok(())
    }

    /// What [`Channel::validate`] checks per request; returns its length
    /// (0 for an interrupt-only request).
    #[inline(always)]
    fn check_op(&self, op: &Op) -> Result<usize, DmaError> {
        // The common case without `check_op`'s chain of early exits; what
        // it does not accept goes through `check_op`, which says why.
        if let Op::Copy { dst, src, len } = *op
            && self.plain_copies
            && copy_is_valid(dst, src, len, self.limits.dma_mask)
        {
            return Ok(len);
        }
        check_op(op, self.caps, self.limits)
    }

    /// The cookie the next request gets.
    fn next_cookie(&self) -> Cookie {
        // `last_used` is 0 before any request (then the first) or a cookie,
        // whose successor this is: past `i32::MAX` the sum is not positive.
        Cookie::new(self.last_used.wrapping_add(1)).unwrap_or(Cookie::FIRST)
    }

    /// Writes the descriptors of validated request `op` as `cookie`. On
    /// error the caller rewinds the engine to its mark.
    ///
    /// # Safety
    /// `op` passed [`Channel::validate`], and the caller upholds
    /// [`Channel::prep`]'s contract for it.
    #[inline(always)]
    unsafe fn emit(&mut self, cookie: Cookie, op: Op, notify: Notify) -> Result<(), DmaError> {
        let len = match op {
            Op::Copy { len, .. } | Op::Fill { len, .. } | Op::Zero { len, .. } => len,
            Op::Interrupt => 0,
        };
        // The common case: one descriptor, the request as it is.
        if len <= self.piece_max {
            // SAFETY: validated and fitting one descriptor; the caller
            // upholds `prep`'s contract, whose end is this engine's.
            return Ok(unsafe { self.engine.prep(cookie, op, Some(notify)) }?);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.emit_pieces(cookie, op, notify) }
    }

    /// [`Channel::emit`] for a request longer than one descriptor takes.
    ///
    /// # Safety
    /// As for [`Channel::emit`].
    #[inline(never)]
    unsafe fn emit_pieces(
        &mut self,
        cookie: Cookie,
        op: Op,
        notify: Notify,
    ) -> Result<(), DmaError> {
        let piece_max = self.piece_max;
        let (dst, len) = match op {
            Op::Copy { dst, len, .. } | Op::Fill { dst, len, .. } | Op::Zero { dst, len } => {
                (dst, len)
            }
            // SAFETY: an interrupt-only request touches no memory.
            Op::Interrupt => return Ok(unsafe { self.engine.prep(cookie, op, Some(notify)) }?),
        };
        let mut done = 0;
        while done < len {
            let n = (len - done).min(piece_max);
            // `validate` checked that `dst + len - 1` (and `src + len - 1`)
            // do not wrap, so these sums are exact.
            let at = done as u64;
            let piece = match op {
                Op::Copy { src, .. } => Op::Copy {
                    dst: dst + at,
                    src: src + at,
                    len: n,
                },
                // Keep the pattern's phase across pieces.
                Op::Fill { pattern, .. } => Op::Fill {
                    dst: dst + at,
                    len: n,
                    pattern: pattern.rotate_right(8 * (done % 8) as u32),
                },
                Op::Zero { .. } => Op::Zero {
                    dst: dst + at,
                    len: n,
                },
                Op::Interrupt => Op::Interrupt,
            };
            done += n;
            let end = (done == len).then_some(notify);
            // SAFETY: each piece lies inside the validated request, whose
            // memory the caller vouches for.
            unsafe { self.engine.prep(cookie, piece, end) }?;
        }
        Ok(())
    }

    /// Prepares `op`, split into descriptors the engine accepts. Nothing is
    /// prepared if it fails.
    ///
    /// # Safety
    /// Every byte the request reads or writes must stay valid DMA memory,
    /// not accessed by the CPU in a conflicting way (no reads of the
    /// destination, no writes of either side), until the request has ended
    /// (complete or error) as reported by this channel.
    pub unsafe fn prep(
        &mut self,
        op: Op,
        flags: PrepFlags,
        callback: Option<Callback>,
    ) -> Result<Cookie, DmaError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.prep_inlined(op, flags, callback) }
    }

    /// [`Channel::prep`], inlined into [`Channel::prep_copy`]: through a
    /// call, a copy's request went through the stack, and the call saved
    /// six registers and restored them (some 30 instructions of about 180).
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    #[inline(always)]
    unsafe fn prep_inlined(
        &mut self,
        op: Op,
        flags: PrepFlags,
        callback: Option<Callback>,
    ) -> Result<Cookie, DmaError> {
        self.validate(&op, flags)?;
        if callback.is_some() && self.callback_len == MAX_CALLBACKS {
            return Err(DmaError::RingFull);
        }
        let cookie = self.next_cookie();
        let notify = Notify {
            writeback: callback.is_some(),
            interrupt: flags.contains(PrepFlags::INTERRUPT),
        };
        let mark = self.engine.mark();
        // SAFETY: validated above; the caller upholds this function's
        // contract, which is `emit`'s.
        if let Err(e) = unsafe { self.emit(cookie, op, notify) } {
            // SAFETY: the mark was taken just now, nothing issued since.
            unsafe { self.engine.rewind(mark) };
            return Err(e);
        }
        self.last_used = cookie.get();
        self.prepared = true;
        if notify.interrupt {
            self.interrupt_through = cookie.get();
        }
        self.footprints[cookie.get() as usize % FOOTPRINT_SLOTS] = op;
        if let Some(callback) = callback {
            let slot = (self.callback_head + self.callback_len) % MAX_CALLBACKS;
            self.callbacks[slot] = Some((cookie, callback));
            self.callback_len += 1;
        }
        Ok(cookie)
    }

    /// Prepares every request of `ops`, in order, each with its own cookie
    /// (consecutive, returned as the first and the last), all or nothing:
    /// every request is validated before any descriptor is written, and if
    /// the engine refuses one (its ring is full), those written before it
    /// are taken back. A scatter-gather copy is a batch of copies; waiting
    /// for the last cookie waits for them all. `flags` apply to the last
    /// request only (one interrupt for the batch).
    ///
    /// # Safety
    /// As for [`Channel::prep`], for every request.
    pub unsafe fn prep_batch(&mut self, ops: &[Op], flags: PrepFlags) -> Result<Batch, DmaError> {
        if ops.is_empty() {
            return Err(DmaError::ZeroLength);
        }
        self.check_flags(flags)?;
        let first = self.next_cookie();
        // The common case: copies, no notification, checked by the engine
        // as it writes them.
        let checked_and_written = self.plain_copies
            && !flags.contains(PrepFlags::INTERRUPT)
            // SAFETY: the caller upholds `prep`'s contract for every op;
            // checking the ops themselves is `prep_copies`' own.
            && unsafe { self.engine.prep_copies(first, ops, self.limits.dma_mask) };
        if checked_and_written {
            let last = first.after(ops.len() - 1);
            self.last_used = last.get();
            self.prepared = true;
            let skip = ops.len().saturating_sub(ADDRESS_HISTORY);
            self.remember(first.after(skip), &ops[skip..]);
            return Ok(Batch {
                first,
                last,
                len: ops.len(),
            });
        }
        // Validated in one pass before the ring changes.
        let one_descriptor_each = check_batch(ops, self.caps, self.limits, self.piece_max)?;
        let last = Notify {
            writeback: false,
            interrupt: flags.contains(PrepFlags::INTERRUPT),
        };
        let mark = self.engine.mark();
        let mut cookie = first;
        let written = if one_descriptor_each {
            // The common case, in one pass through the driver.
            cookie = first.after(ops.len() - 1);
            // The error's conversion is out of line: inlined, it became a
            // table jump taken on success too, which an emulator looks up
            // at run time.
            // SAFETY: every op was validated and fits one descriptor; the
            // caller upholds `prep`'s contract for each.
            unsafe { self.engine.prep_run(first, ops, last) }.map_err(engine_error)
        } else {
            let mut result = Ok(());
            for (i, &op) in ops.iter().enumerate() {
                let notify = if i + 1 == ops.len() {
                    last
                } else {
                    Notify::default()
                };
                // SAFETY: validated above; the caller's contract.
                result = unsafe { self.emit(cookie, op, notify) };
                if result.is_err() || i + 1 == ops.len() {
                    break;
                }
                cookie = cookie.next();
            }
            result
        };
        if let Err(e) = written {
            // SAFETY: the mark was taken above, nothing issued since.
            unsafe { self.engine.rewind(mark) };
            return Err(e);
        }
        self.last_used = cookie.get();
        self.prepared = true;
        if last.interrupt {
            self.interrupt_through = cookie.get();
        }
        // Only the newest ADDRESS_HISTORY are kept: older ones would be
        // overwritten within this loop.
        let skip = ops.len().saturating_sub(ADDRESS_HISTORY);
        self.remember(first.after(skip), &ops[skip..]);
        Ok(Batch {
            first,
            last: cookie,
            len: ops.len(),
        })
    }

    /// Makes sure the engine interrupts once `cookie` has ended: unless it
    /// has ended, or a request from it on asked for an interrupt, prepares
    /// an [`Op::Interrupt`] that does (the ring runs in order, so it ends
    /// after `cookie`) and issues it. An engine without
    /// [`Capabilities::INTERRUPT_OP`] is left alone: its requests must ask
    /// for the interrupt themselves. The futures of a
    /// [`SharedChannel`](super::SharedChannel) call this when they have to
    /// wait, so on such an engine a request awaited needs no
    /// [`PrepFlags::INTERRUPT`], and one that has ended by the first poll
    /// costs no interrupt at all.
    pub fn interrupt_after(&mut self, cookie: Cookie) -> Result<(), DmaError> {
        let covered = self.interrupt_through != 0
            && super::is_complete(cookie, self.interrupt_through, self.last_used);
        if !self.caps.contains(Capabilities::INTERRUPT_OP)
            || covered
            || super::is_complete(cookie, self.last_completed, self.last_used)
        {
            return Ok(());
        }
        // SAFETY: an interrupt-only request reads and writes no memory.
        unsafe { self.prep(Op::Interrupt, PrepFlags::INTERRUPT, None) }?;
        self.issue_pending();
        Ok(())
    }

    /// Prepares a copy of `len` bytes from `src` to `dst` (DMA addresses).
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    pub unsafe fn prep_copy(
        &mut self,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
        flags: PrepFlags,
    ) -> Result<Cookie, DmaError> {
        // SAFETY: the caller upholds `prep`'s contract.
        unsafe { self.prep_inlined(Op::Copy { dst, src, len }, flags, None) }
    }

    /// The 2005 I/OAT proposal's `dma_async_memcpy_buf_to_buf`: copy between two buffers.
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    pub unsafe fn memcpy_buf_to_buf(
        &mut self,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
    ) -> Result<Cookie, DmaError> {
        // SAFETY: the caller upholds `prep`'s contract.
        unsafe { self.prep_copy(dst, src, len, PrepFlags::empty()) }
    }

    /// The 2005 I/OAT proposal's `dma_async_memcpy_buf_to_pg`: copy a buffer into the page
    /// at `page` (page-aligned), from `offset`, within that page.
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    pub unsafe fn memcpy_buf_to_page(
        &mut self,
        page: DmaAddr,
        offset: usize,
        src: DmaAddr,
        len: usize,
    ) -> Result<Cookie, DmaError> {
        let dst = page_range(page, offset, len)?;
        // SAFETY: the caller upholds `prep`'s contract.
        unsafe { self.prep_copy(dst, src, len, PrepFlags::empty()) }
    }

    /// The 2005 I/OAT proposal's `dma_async_memcpy_pg_to_pg`: copy within two pages.
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    pub unsafe fn memcpy_page_to_page(
        &mut self,
        dst_page: DmaAddr,
        dst_offset: usize,
        src_page: DmaAddr,
        src_offset: usize,
        len: usize,
    ) -> Result<Cookie, DmaError> {
        let dst = page_range(dst_page, dst_offset, len)?;
        let src = page_range(src_page, src_offset, len)?;
        // SAFETY: the caller upholds `prep`'s contract.
        unsafe { self.prep_copy(dst, src, len, PrepFlags::empty()) }
    }

    /// Prepares filling `len` bytes at `dst` with `pattern` repeated (byte
    /// `i` is byte `i % 8` of `pattern.to_le_bytes()`).
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    pub unsafe fn fill(
        &mut self,
        dst: DmaAddr,
        len: usize,
        pattern: u64,
        flags: PrepFlags,
    ) -> Result<Cookie, DmaError> {
        // SAFETY: the caller upholds `prep`'s contract.
        unsafe { self.prep(Op::Fill { dst, len, pattern }, flags, None) }
    }

    /// Prepares zeroing `len` bytes at `dst`.
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    pub unsafe fn zero(
        &mut self,
        dst: DmaAddr,
        len: usize,
        flags: PrepFlags,
    ) -> Result<Cookie, DmaError> {
        // SAFETY: the caller upholds `prep`'s contract.
        unsafe { self.prep(Op::Zero { dst, len }, flags, None) }
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
        if self.faults.is_some() && self.claim_faults() {
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

    /// Takes the device's IOMMU faults and pins each on its request;
    /// returns whether that halted the channel.
    #[inline(never)]
    fn claim_faults(&mut self) -> bool {
        if let Some(cause) = self.claim_fault_causes() {
            self.stop(Some(cause));
        }
        self.halted
    }

    /// Drains the device's IOMMU faults; returns the first one's cause: the
    /// request that touched its page, or, when no remembered request did
    /// (an older request, or the engine's own memory) and requests are
    /// outstanding, the first of them with `BusFault`, since none of them
    /// can be called complete.
    fn claim_fault_causes(&mut self) -> Option<(Cookie, ErrorKind)> {
        let hook = self.faults?;
        let mut cause = None;
        // SAFETY: `set_fault_hook`'s contract: its source is alive and
        // used by nobody else while the channel runs.
        while let Some(fault) = unsafe { hook.take() } {
            if cause.is_some() {
                continue;
            }
            cause = self.culprit(fault.address, fault.write).or_else(|| {
                (!self.is_idle()).then(|| {
                    let first =
                        Cookie::new(self.last_completed).map_or(Cookie::FIRST, Cookie::next);
                    (first, ErrorKind::BusFault)
                })
            });
        }
        cause
    }

    fn record(&mut self, failure: Failure) {
        self.failures[self.next_failure] = Some(failure);
        self.next_failure = (self.next_failure + 1) % FAILURE_HISTORY;
        self.failures_recorded = self.failures_recorded.saturating_add(1);
    }

    fn fail(&mut self, fault: Fault) {
        let before = if fault.cookie == Cookie::FIRST {
            i32::MAX
        } else {
            fault.cookie.get() - 1
        };
        self.record(Failure {
            failed: Some((fault.cookie, fault.kind)),
            before,
            last: self.last_used,
        });
        self.end_all();
    }

    /// Ends every outstanding request: those not yet recorded are now
    /// covered by the last failure record.
    fn end_all(&mut self) {
        self.last_completed = self.last_used;
        self.halted = true;
        self.prepared = false;
    }

    #[inline(always)]
    fn classify(&self, cookie: Cookie) -> Status {
        classify_in(
            self.snapshot(),
            (&self.failures, self.next_failure, self.failures_recorded),
            cookie,
        )
    }

    #[inline(always)]
    fn run_callbacks(&mut self) {
        if self.callback_len > 0 || self.wakers.used() > 0 {
            self.run_callbacks_and_wake();
        }
    }

    /// [`Channel::run_callbacks`] when there is something to run or wake.
    #[inline(never)]
    fn run_callbacks_and_wake(&mut self) {
        while self.callback_len > 0 {
            let Some((cookie, callback)) = self.callbacks[self.callback_head] else {
                break;
            };
            let status = self.classify(cookie);
            if status == Status::InProgress {
                break;
            }
            self.callbacks[self.callback_head] = None;
            self.callback_head = (self.callback_head + 1) % MAX_CALLBACKS;
            self.callback_len -= 1;
            (callback.func)(cookie, status, callback.context);
        }
        let (snapshot, wakers) = (self.snapshot(), &mut self.wakers);
        if wakers.used() > 0 {
            let failures = (&self.failures, self.next_failure, self.failures_recorded);
            wakers.wake_ended(|cookie| classify_in(snapshot, failures, cookie));
        }
    }

    /// Registers `waker` to be woken when `cookie` ends (in the slot `held`
    /// from an earlier poll if it is still this cookie's). `None` when
    /// every slot is taken.
    pub(crate) fn register_waker(
        &mut self,
        cookie: Cookie,
        waker: &Waker,
        held: Option<SlotName>,
    ) -> Option<SlotName> {
        self.wakers.register(cookie, waker, held)
    }

    /// Forgets a waker registered by a future dropped before its request
    /// ended.
    pub(crate) fn remove_waker(&mut self, slot: SlotName) {
        self.wakers.remove(slot);
    }

    /// How many wakers wait for requests to end.
    pub fn wakers_waiting(&self) -> usize {
        self.wakers.used()
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
    /// [`ErrorKind::Aborted`]).
    // Inlined: through a call, the answer went through the stack and the
    // call saved and restored six registers.
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
        let answer = self.first_unreported_failure();
        self.failures_reported = self.failures_recorded;
        answer.map_or(Ok(()), Err)
    }

    /// The oldest failure recorded since the last `wait_all` answer or
    /// `reset`, as `wait_all` reports it: the failed request, or the first
    /// request a termination ended.
    fn first_unreported_failure(&self) -> Option<DmaError> {
        let unreported = self.failures_recorded.checked_sub(self.failures_reported)?;
        if unreported == 0 {
            return None;
        }
        // Record `n` (counting from 0) sits in slot `n % FAILURE_HISTORY`;
        // only the newest FAILURE_HISTORY are kept.
        let oldest_kept = self.failures_recorded.saturating_sub(FAILURE_HISTORY);
        let n = self.failures_reported.max(oldest_kept);
        let failure = self.failures[n % FAILURE_HISTORY]?;
        Some(match failure.failed {
            Some((cookie, kind)) => DmaError::FailedAt { cookie, kind },
            None => DmaError::FailedAt {
                cookie: Cookie::new(failure.before).map_or(Cookie::FIRST, Cookie::next),
                kind: ErrorKind::Aborted,
            },
        })
    }

    /// Remembers the requests `ops`, whose cookies run from `first` (at most
    /// [`ADDRESS_HISTORY`] of them: the caller passes the newest), in the
    /// slots of their cookies: at most two contiguous copies.
    #[inline(always)]
    fn remember(&mut self, first: Cookie, ops: &[Op]) {
        let start = first.get() as usize % FOOTPRINT_SLOTS;
        let (before_end, after_wrap) = ops.split_at(ops.len().min(FOOTPRINT_SLOTS - start));
        self.footprints[start..start + before_end.len()].copy_from_slice(before_end);
        self.footprints[..after_wrap.len()].copy_from_slice(after_wrap);
    }

    /// Pins a DMA fault an IOMMU recorded (the faulting page's address, and
    /// whether the access was a write) on the newest of the last
    /// [`ADDRESS_HISTORY`] requests that wrote (or read) that page: it ends
    /// `Error(WriteFailed)` (or `ReadFailed`) even if the engine, which
    /// never saw the fault (a faulting write is dropped, a faulting read
    /// returns zeros), reported it complete; the channel stops and halts as
    /// for any failure, and every request after it ends `Aborted` (their
    /// destinations are undefined). Returns the request, or `None` if no
    /// remembered request touched the page (nothing changes then). A
    /// channel given a fault hook ([`Channel::set_fault_hook`]) calls it
    /// itself before it reports completions.
    pub fn fail_at(&mut self, page: DmaAddr, write: bool) -> Option<Cookie> {
        let (cookie, kind) = self.culprit(page, write)?;
        // Stop the engine first: nothing runs after the faulting request.
        self.stop(Some((cookie, kind)));
        Some(cookie)
    }

    /// The newest remembered request that wrote (or read) the page of
    /// `page`, and the error a fault there gives it.
    pub(super) fn culprit(&self, page: DmaAddr, write: bool) -> Option<(Cookie, ErrorKind)> {
        let page = page & !(PAGE_SIZE as u64 - 1);
        let page_last = page | (PAGE_SIZE as u64 - 1);
        // Compared by last bytes: an end one past the last byte does not
        // exist for a range that reaches u64::MAX. Requests were validated
        // (not empty, `start + len - 1` does not wrap), so the sum is exact.
        let touches = |start: DmaAddr, len: usize| {
            let last = start.saturating_add((len as u64).saturating_sub(1));
            start <= page_last && page <= last
        };
        // The last ADDRESS_HISTORY cookies, newest first: before the first
        // wrap those below 1 name slots never written.
        let newest = Cookie::new(self.last_used)?;
        let culprit = (0..ADDRESS_HISTORY)
            .map(|back| newest.before(back))
            .find(
                |c| match self.footprints[c.get() as usize % FOOTPRINT_SLOTS] {
                    Op::Copy { dst, src, len } => touches(if write { dst } else { src }, len),
                    Op::Fill { dst, len, .. } | Op::Zero { dst, len } => write && touches(dst, len),
                    Op::Interrupt => false,
                },
            )?;
        let kind = if write {
            ErrorKind::WriteFailed
        } else {
            ErrorKind::ReadFailed
        };
        Some((culprit, kind))
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

    /// Stops the channel: every request not known complete ends `Aborted`
    /// once the engine has stopped. The channel stays halted until
    /// [`Channel::reset`].
    ///
    /// An engine whose device has not stopped yet (edu, whose transfer in
    /// flight runs to its end; see [`Termination`](super::Termination))
    /// leaves its requests in flight: they read `InProgress`, an owned
    /// buffer's [`Transfer`](super::Transfer) cannot be finished, until a
    /// later `poll`, `status`, `wait`, `handle_interrupt` or `terminate`
    /// finds the engine stopped and ends them. Before, they ended at once
    /// and their buffers came back while the device could still write them.
    pub fn terminate(&mut self) {
        if !self.halted {
            self.collect(false);
        }
        if self.halted && self.is_idle() && self.stopping.is_none() {
            self.engine.terminate();
            return;
        }
        self.stop(None);
    }

    /// Asks the engine to stop and halts the channel; once the engine has
    /// stopped, ends every request not complete: the one `failed` names
    /// with its error and the rest `Aborted` (all `Aborted` for a
    /// termination).
    fn stop(&mut self, failed: Option<(Cookie, ErrorKind)>) {
        self.halted = true;
        self.prepared = false;
        // A failure found while a termination waits for the engine names
        // the cause; a first failure stays the cause.
        match self.stopping {
            Some(Stopping { failed: Some(_) }) => {}
            _ => self.stopping = Some(Stopping { failed }),
        }
        self.finish_stop();
    }

    /// Asks the engine again whether it has stopped, if a stop waits for
    /// it; if so, ends the requests as [`Channel::stop`] says.
    #[cold]
    #[inline(never)]
    fn finish_stop(&mut self) {
        let Some(mut stop) = self.stopping else {
            return;
        };
        let end = self.engine.terminate();
        // What the engine last completed may include DMA the IOMMU refused:
        // such a request is the cause, and never reads `Complete`.
        if stop.failed.is_none() && self.faults.is_some() {
            stop.failed = self.claim_fault_causes();
            self.stopping = Some(stop);
        }
        match stop.failed {
            // Not past a failed request: it must never read `Complete`.
            Some(_) => {}
            None => {
                if let Some(done) = end.completed {
                    self.last_completed = done.get();
                }
            }
        }
        if !end.stopped {
            // Still in the device's hands: every request not complete stays
            // in flight, and its memory with it.
            return;
        }
        self.stopping = None;
        match stop.failed {
            Some((cookie, kind)) => {
                let before = if cookie == Cookie::FIRST {
                    i32::MAX
                } else {
                    cookie.get() - 1
                };
                self.record(Failure {
                    failed: Some((cookie, kind)),
                    before,
                    last: self.last_used,
                });
            }
            None if !self.is_idle() => self.record(Failure {
                failed: None,
                before: self.last_completed,
                last: self.last_used,
            }),
            None => {}
        }
        self.end_all();
        self.run_callbacks();
    }

    /// Whether a stop (`terminate`, `fail_at`) waits for the engine's
    /// device to stop: until it has, the requests not complete stay in
    /// flight (see [`Channel::terminate`]).
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Makes a halted channel usable again (terminating it first if it was
    /// not halted). Cookies keep counting from where they were. `Busy`,
    /// changing nothing, while the engine has not stopped (see
    /// [`Channel::terminate`]; poll and retry).
    pub fn reset(&mut self) -> Result<(), DmaError> {
        if !self.halted {
            self.terminate();
        } else {
            self.finish_stop();
        }
        if self.stopping.is_some() {
            return Err(DmaError::Busy);
        }
        self.engine.reset()?;
        self.halted = false;
        self.failures_reported = self.failures_recorded;
        Ok(())
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

/// A channel's failure records: the ring, its next slot and how many were
/// recorded.
type Failures<'a> = (&'a [Option<Failure>; FAILURE_HISTORY], usize, usize);

/// Where `cookie` stands given a channel's snapshot and failure records.
#[inline(always)]
fn classify_in(snapshot: Snapshot, failures: Failures<'_>, cookie: Cookie) -> Status {
    // In the in-flight window: no failure has ended it yet.
    if !snapshot.is_complete(cookie) {
        return Status::InProgress;
    }
    let (records, next, recorded) = failures;
    if recorded == 0 {
        return Status::Complete;
    }
    failed_in(records, next, recorded, cookie)
}

/// How a cookie outside the in-flight window ended, by the failure records
/// (a channel's [`Failures`], passed apart: as one tuple, every status call
/// stored it to the stack first).
#[inline(never)]
fn failed_in(
    records: &[Option<Failure>; FAILURE_HISTORY],
    next: usize,
    recorded: usize,
    cookie: Cookie,
) -> Status {
    // Newest failure first: a cookie ended by one is reported by it.
    for i in 1..=recorded.min(FAILURE_HISTORY) {
        let slot = (next + FAILURE_HISTORY - i) % FAILURE_HISTORY;
        if let Some(kind) = records[slot].and_then(|f| f.kind_of(cookie)) {
            return Status::Error(kind);
        }
    }
    Status::Complete
}

/// What [`Channel::validate`] checks per request, against an engine's
/// capabilities and limits; returns its length (0 for an interrupt-only
/// request).
#[inline(always)]
fn check_op(op: &Op, caps: Capabilities, limits: Limits) -> Result<usize, DmaError> {
    let (dst, src, len, needs) = match *op {
        Op::Copy { dst, src, len } => (dst, Some(src), len, Capabilities::COPY),
        Op::Fill { dst, len, .. } | Op::Zero { dst, len } => (dst, None, len, Capabilities::FILL),
        Op::Interrupt if caps.contains(Capabilities::INTERRUPT_OP) => return Ok(0),
        Op::Interrupt => return Err(DmaError::NotSupported),
    };
    if !caps.contains(needs) {
        return Err(DmaError::NotSupported);
    }
    if len == 0 {
        return Err(DmaError::ZeroLength);
    }
    // The last byte of each side; `None` if the range wraps past 2^64
    // or leaves the engine's mask.
    let span = u64::try_from(len - 1).map_err(|_| DmaError::BeyondDmaMask)?;
    let last_of = |addr: DmaAddr| addr.checked_add(span).filter(|&l| l <= limits.dma_mask);
    let dst_last = last_of(dst).ok_or(DmaError::BeyondDmaMask)?;
    let src = match src {
        Some(src) => Some((src, last_of(src).ok_or(DmaError::BeyondDmaMask)?)),
        None => None,
    };
    // Most engines take any byte alignment: no division for them.
    if limits.align > 1 {
        let align = limits.align as u64;
        let aligned = |v: u64| v.is_multiple_of(align);
        if !aligned(dst) || !aligned(len as u64) || !src.is_none_or(|(s, _)| aligned(s)) {
            return Err(DmaError::Misaligned);
        }
    }
    if let Some((src, src_last)) = src
        && dst <= src_last
        && src <= dst_last
    {
        return Err(DmaError::Overlap);
    }
    Ok(len)
}

/// Checks every request of a batch (see [`check_op`]); returns whether each
/// takes one descriptor of at most `piece_max` bytes. Not generic, and not
/// inlined into [`Channel::prep_batch`]: compiled inside each engine's
/// `prep_batch`, this loop's registers spilled differently from one engine
/// type to another (a change to the LSI driver's `Mark` alone added 13
/// instructions per request, 25 ns under TCG).
#[inline(never)]
fn check_batch(
    ops: &[Op],
    caps: Capabilities,
    limits: Limits,
    piece_max: usize,
) -> Result<bool, DmaError> {
    // The common case first, in a loop of its own: a batch of copies the
    // engine takes as they are. Sharing the loop with `check_op`'s
    // fallback cost every copy some 10 instructions of that fallback's
    // set-up.
    if caps.contains(Capabilities::COPY) && limits.align <= 1 {
        let mut longest = 0;
        let all_valid = ops.iter().all(|op| match *op {
            Op::Copy { dst, src, len } => {
                longest = longest.max(len);
                copy_is_valid(dst, src, len, limits.dma_mask)
            }
            _ => false,
        });
        if all_valid {
            return Ok(longest <= piece_max);
        }
    }
    // Anything else, request by request through `check_op`, which also
    // says why one is refused.
    let mut one_descriptor_each = true;
    for op in ops {
        one_descriptor_each &= check_op(op, caps, limits)? <= piece_max;
    }
    Ok(one_descriptor_each)
}

/// Whether a channel accepts a copy of `len` bytes from `src` to `dst` on an
/// engine that takes copies at any alignment and addresses up to `mask`
/// (length limits aside), computed without an early exit (under an
/// emulator each branch ends a translated block): both sides' last bytes (`side + len - 1`) are
/// within `mask` without wrapping, and the sides are more than `len - 1`
/// bytes apart, so they do not overlap. An empty copy's `len - 1` wraps to
/// the largest value, which no distance exceeds.
///
/// Public for engines whose [`Engine::prep_copies`] checks copies as it
/// writes them: the channel's own check, so both accept the same copies.
#[inline(always)]
pub fn copy_is_valid(dst: DmaAddr, src: DmaAddr, len: usize, mask: u64) -> bool {
    let Ok(span) = u64::try_from(len.wrapping_sub(1)) else {
        return false;
    };
    // With `span <= mask`, `mask - span` cannot wrap, and the higher side's
    // last byte is within the mask exactly when it is at most `mask - span`.
    (span <= mask) & (dst.max(src) <= mask.wrapping_sub(span)) & (dst.abs_diff(src) > span)
}

/// An engine's refusal as the channel reports it (see `prep_batch`).
#[cold]
#[inline(never)]
fn engine_error(e: EngineError) -> DmaError {
    e.into()
}

fn page_range(page: DmaAddr, offset: usize, len: usize) -> Result<DmaAddr, DmaError> {
    if !page.is_multiple_of(PAGE_SIZE as u64) {
        return Err(DmaError::Misaligned);
    }
    if offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
        return Err(DmaError::OutOfPage);
    }
    Ok(page + offset as u64)
}

#[cfg(test)]
mod id_tests {
    use core::sync::atomic::AtomicU64;

    use super::take_id;

    #[test]
    fn channel_ids_stop_at_the_last_one_instead_of_wrapping() {
        let counter = AtomicU64::new(u64::MAX - 1);
        assert_eq!(take_id(&counter), u64::MAX - 1);
        assert_eq!(take_id(&counter), 0, "out of ids: no channel's");
        assert_eq!(take_id(&counter), 0, "never back to 1");
    }
}

#[cfg(test)]
mod check_tests {
    use proptest::prelude::*;

    use super::super::fake::edge_copy;
    use super::{Capabilities, Limits, Op, check_op, copy_is_valid};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 64 } else { 4000 }))]

        /// Both `prep` and `prep_batch` take a copy on `copy_is_valid`'s
        /// word and ask `check_op` only about what it refuses: it must
        /// accept exactly the copies `check_op` accepts, on a 32-bit and a
        /// 64-bit mask, sides close together or apart, lengths at the edge
        /// of overlapping and of the mask.
        #[test]
        fn copy_is_valid_accepts_exactly_what_check_op_accepts((d, src, len, mask) in edge_copy()) {
            let limits = Limits { max_len: usize::MAX, dma_mask: mask, align: 1 };
            let checked = check_op(&Op::Copy { dst: d, src, len }, Capabilities::COPY, limits);
            prop_assert_eq!(copy_is_valid(d, src, len, mask), checked.is_ok());
        }
    }
}
