//! Fault attribution: where the last requests read and wrote, so a DMA
//! fault an IOMMU records is pinned on the request that caused it.

use super::{ADDRESS_HISTORY, Channel, FOOTPRINT_SLOTS};
use crate::engine::{Cookie, Engine, ErrorKind, FaultHook, Op};
use crate::hal::{DmaAddr, PAGE_SIZE};

impl<E: Engine> Channel<E> {
    /// Makes the channel ask `hook` for its device's IOMMU faults each time
    /// the engine reports progress, after reading it and before calling
    /// any request complete: a request whose DMA the unit refused then
    /// ends `Error(WriteFailed)` (or `ReadFailed`) as with
    /// [`Channel::fail_at`], never `Complete`, although the engine, which
    /// never learns of the refusal, reports it done. A fault of the device
    /// that no remembered request explains ends every outstanding request
    /// (`Error(BusFault)` for the first), as does a report that faults of
    /// the device were lost ([`DmaFault::is_lost`]: an IOMMU unit makes
    /// one when its records overflowed, or when another caller took the
    /// device's fault). `None` removes the hook. Make the hook for the
    /// engine's own device: another's faults would be pinned on this
    /// channel's requests, and its own left unread.
    ///
    /// [`DmaFault::is_lost`]: crate::iommu::DmaFault::is_lost
    ///
    /// The check relies on the unit recording a refused access before the
    /// device's later writes (its completion) are seen, as QEMU's model
    /// does (it records the fault within the access). Where recording
    /// trails the device's writes, a fault read after the completion is
    /// still pinned on its request by the next check, but the request may
    /// have read `Complete` in between.
    ///
    /// A hook turns fault attribution on, and keeps it on while installed
    /// ([`Channel::set_fault_attribution`]); removing it leaves attribution
    /// as it is.
    ///
    /// # Safety
    /// While the hook is installed (until it is replaced or the channel
    /// dropped), the source it was made from must stay alive, and its
    /// `take_fault_of` must be callable from whatever thread runs the
    /// channel's methods: an [`Iommu`](crate::iommu::Iommu), which is not
    /// `Sync`, must not be used elsewhere meanwhile (the same lock as the
    /// channel's, or one CPU).
    pub unsafe fn set_fault_hook(&mut self, hook: Option<FaultHook>) {
        if hook.is_some() {
            self.set_fault_attribution(true);
        }
        self.faults = hook;
    }

    /// Turns fault attribution on or off: whether the channel remembers
    /// where its last [`ADDRESS_HISTORY`] requests read and wrote, so that
    /// [`Channel::fail_at`] can pin an IOMMU fault on one. Off by default:
    /// a channel whose device no IOMMU translates gets no fault to pin, and
    /// remembering costs every request a copy of its op (measured on the
    /// LSI53C895A: about 5 guest instructions for one request, 7.5 per copy
    /// in a batch of 16). A kernel that puts the device behind an IOMMU
    /// turns it on before it prepares the requests a fault may hit: only
    /// requests prepared while it is on are remembered, and turning it on
    /// forgets any remembered before it was last turned off. With it off,
    /// [`Channel::fail_at`] pins nothing: a fault the kernel reads then
    /// leaves the requests as the engine reports them.
    ///
    /// [`Channel::set_fault_hook`] turns it on, and while a hook is
    /// installed it stays on (`false` is ignored): the hook's faults would
    /// otherwise all be charged to the first outstanding request.
    pub fn set_fault_attribution(&mut self, on: bool) {
        let on = on || self.faults.is_some();
        if on && !self.attribution {
            // Slots left from before it was turned off name requests whose
            // cookies newer ones have taken: none may be pinned.
            self.footprints = [Op::Interrupt; FOOTPRINT_SLOTS];
        }
        self.attribution = on;
    }

    /// Whether fault attribution is on ([`Channel::set_fault_attribution`]).
    pub fn fault_attribution(&self) -> bool {
        self.attribution
    }

    /// Takes the device's IOMMU faults and pins each on its request;
    /// returns whether that halted the channel. `done` is what the engine
    /// reported complete in the same poll (not yet applied: the requests
    /// it covers may be the cause).
    #[inline(never)]
    pub(super) fn claim_faults(&mut self, done: Option<Cookie>) -> bool {
        if let Some(cause) = self.claim_fault_causes() {
            self.stop(Some(cause), done);
        }
        self.halted
    }

    /// Drains the device's IOMMU faults; returns the earliest cause among
    /// them: for each, the request that touched its page, or, when no
    /// remembered request did (an older request, the engine's own memory,
    /// or a fault the unit could not record) and requests are outstanding,
    /// the first of them with `BusFault`, since none of them can be called
    /// complete. The earliest, not the first drained: every request from
    /// the cause on ends with an error, and the faults may come out in any
    /// order (a unit's records are not read oldest first once its
    /// round robin has wrapped, and a lost fault is reported after the
    /// recorded ones).
    pub(super) fn claim_fault_causes(&mut self) -> Option<(Cookie, ErrorKind)> {
        let hook = self.faults?;
        let mut cause: Option<(Cookie, ErrorKind)> = None;
        // Requests counted back from the newest: the earliest is the
        // farthest back (0, before any completion, is `i32::MAX` back).
        let back = |c: Cookie| {
            (i64::from(self.last_used) - i64::from(c.get())).rem_euclid(i64::from(i32::MAX))
        };
        // SAFETY: `set_fault_hook`'s contract: its source is alive and
        // used by nobody else while the channel runs.
        while let Some(fault) = unsafe { hook.take() } {
            let this = self.culprit(fault.address, fault.write).or_else(|| {
                (!self.is_idle()).then(|| {
                    let first =
                        Cookie::new(self.last_completed).map_or(Cookie::FIRST, Cookie::next);
                    (first, ErrorKind::BusFault)
                })
            });
            if let Some(this) = this
                && cause.is_none_or(|c| back(this.0) > back(c.0))
            {
                cause = Some(this);
            }
        }
        cause
    }

    /// Remembers the requests `ops`, whose cookies run from `first`, in the
    /// slots of their cookies, when fault attribution is on: the newest
    /// [`ADDRESS_HISTORY`] of them, in at most two contiguous copies.
    #[inline(always)]
    pub(super) fn remember(&mut self, first: Cookie, ops: &[Op]) {
        if self.attribution {
            self.remember_newest(first, ops);
        }
    }

    /// [`Channel::remember`] when attribution is on.
    #[inline(never)]
    fn remember_newest(&mut self, first: Cookie, ops: &[Op]) {
        // Only the newest ADDRESS_HISTORY are kept: older ones would be
        // overwritten within this call.
        let skip = ops.len().saturating_sub(ADDRESS_HISTORY);
        let (first, ops) = (first.after(skip), &ops[skip..]);
        let start = first.get() as usize % FOOTPRINT_SLOTS;
        let (before_end, after_wrap) = ops.split_at(ops.len().min(FOOTPRINT_SLOTS - start));
        self.footprints[start..start + before_end.len()].copy_from_slice(before_end);
        // Usually nothing wraps: a call to copy nothing still costs a call.
        if !after_wrap.is_empty() {
            // The slots wrap at a cookie that is a multiple of the slots'
            // count (the next slot is 0), or where the cookies wrap, from
            // `i32::MAX` (slot 127) to 1 (slot 1): from the slot of the
            // first cookie after the wrap, either way.
            let at = first.after(before_end.len()).get() as usize % FOOTPRINT_SLOTS;
            self.footprints[at..at + after_wrap.len()].copy_from_slice(after_wrap);
        }
    }

    /// Pins a DMA fault an IOMMU recorded (the faulting page's address, and
    /// whether the access was a write) on the oldest request in flight that
    /// wrote (or read) that page, or, if none in flight did, the newest of
    /// the last [`ADDRESS_HISTORY`] requests that did: it ends
    /// `Error(WriteFailed)` (or `ReadFailed`) even if the engine, which
    /// never saw the fault (a faulting write is dropped, a faulting read
    /// returns zeros), reported it complete; the channel stops and halts as
    /// for any failure, and every request after it ends `Aborted` (their
    /// destinations are undefined). Returns the request, or `None` if no
    /// remembered request touched the page (nothing changes then). A
    /// channel given a fault hook ([`Channel::set_fault_hook`]) calls it
    /// itself before it reports completions. Only requests prepared while
    /// fault attribution was on ([`Channel::set_fault_attribution`], off by
    /// default) are remembered: with it off, this returns `None`.
    pub fn fail_at(&mut self, page: DmaAddr, write: bool) -> Option<Cookie> {
        let (cookie, kind) = self.culprit(page, write)?;
        // Stop the engine first: nothing runs after the faulting request.
        self.stop(Some((cookie, kind)), None);
        Some(cookie)
    }

    /// The request a fault on the page of `page` is pinned on (see
    /// [`Channel::fail_at`]), and the error it gives it.
    pub(in crate::engine) fn culprit(
        &self,
        page: DmaAddr,
        write: bool,
    ) -> Option<(Cookie, ErrorKind)> {
        if !self.attribution {
            return None;
        }
        let page = page & !(PAGE_SIZE as u64 - 1);
        let page_last = page | (PAGE_SIZE as u64 - 1);
        // Compared by last bytes: an end one past the last byte does not
        // exist for a range that reaches u64::MAX. Requests were validated
        // (not empty, `start + len - 1` does not wrap), so the sum is exact.
        let touches = |start: DmaAddr, len: usize| {
            let last = start.saturating_add((len as u64).saturating_sub(1));
            start <= page_last && page <= last
        };
        let touched = |c: &Cookie| match self.footprints[c.get() as usize % FOOTPRINT_SLOTS] {
            Op::Copy { dst, src, len } => touches(if write { dst } else { src }, len),
            Op::Fill { dst, len, .. } | Op::Zero { dst, len } => write && touches(dst, len),
            Op::Interrupt => false,
        };
        // The last ADDRESS_HISTORY cookies, newest first: before the first
        // wrap those below 1 name slots never written.
        let newest = Cookie::new(self.last_used)?;
        let remembered = (0..ADDRESS_HISTORY).map(|back| newest.before(back));
        // The oldest request in flight that touched the page: the engine
        // runs its requests in order, so it is the first that could have
        // faulted there (every later one ends with an error anyway, and an
        // earlier one that touched the page must not read `Complete`).
        // Only when none in flight did, the newest that did: a fault
        // reported after its request was found complete.
        let snapshot = self.snapshot();
        let culprit = remembered
            .clone()
            .take_while(|c| !snapshot.is_complete(*c))
            .filter(touched)
            .last()
            .or_else(|| remembered.clone().find(touched))?;
        let kind = if write {
            ErrorKind::WriteFailed
        } else {
            ErrorKind::ReadFailed
        };
        Some((culprit, kind))
    }
}
