//! Preparing requests: one, a batch, and the 2005 proposal's named
//! copies, fills and zeroings.

use super::validate::{check_batch, engine_error, page_range};
use super::{Batch, Channel, FOOTPRINT_SLOTS};
use crate::engine::{Callback, Capabilities, Cookie, DmaError, Engine, Notify, Op, PrepFlags};
use crate::hal::DmaAddr;

impl<E: Engine> Channel<E> {
    /// Writes the descriptors of validated request `op` as `cookie`. On
    /// error the caller rewinds the engine to its mark.
    ///
    /// # Safety
    /// `op` passed [`Channel::validate`], and the caller upholds
    /// [`Channel::prep`]'s contract for it.
    #[inline(always)]
    pub(super) unsafe fn emit(
        &mut self,
        cookie: Cookie,
        op: Op,
        notify: Notify,
    ) -> Result<(), DmaError> {
        // The common case: one descriptor, the request as it is.
        if op.len() <= self.piece_max {
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
    pub(super) unsafe fn emit_pieces(
        &mut self,
        cookie: Cookie,
        op: Op,
        notify: Notify,
    ) -> Result<(), DmaError> {
        let piece_max = self.piece_max;
        let len = op.len();
        if let Op::Interrupt = op {
            // SAFETY: an interrupt-only request touches no memory.
            return Ok(unsafe { self.engine.prep(cookie, op, Some(notify)) }?);
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(piece_max);
            let piece = op.piece(done, n);
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

    /// [`Channel::prep`], inlined into [`Channel::prep_copy`] (performance
    /// note H2, in the guide's performance chapter).
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    #[inline(always)]
    pub(super) unsafe fn prep_inlined(
        &mut self,
        op: Op,
        flags: PrepFlags,
        callback: Option<Callback>,
    ) -> Result<Cookie, DmaError> {
        self.validate(&op, flags)?;
        if callback.is_some() && self.callbacks.is_full() {
            return Err(DmaError::RingFull);
        }
        let cookie = self.next_cookie();
        // Once a lap, and at the window's edge, the exact check: the
        // in-flight window must not wrap onto itself, and a lap is counted.
        // (Cookies 1 and `i32::MAX`: a lap starts, or, before any
        // completion, the window would hold every cookie.)
        if cookie.get() == self.last_completed || cookie.get().wrapping_add(1) <= 2 {
            self.enter_cookie(cookie)?;
        }
        let notify = Notify {
            writeback: callback.is_some(),
            interrupt: flags.contains(PrepFlags::INTERRUPT),
        };
        // Remembered before the engine is called, so the op need not be
        // kept for after it: if the engine refuses it, the slot is that of
        // a cookie not yet used, which no fault is pinned on (`culprit`
        // looks at the cookies up to `last_used` only, and none of the
        // newest ADDRESS_HISTORY shares its slot), and it is written again
        // when the cookie is used.
        if self.attribution {
            self.footprints[cookie.get() as usize % FOOTPRINT_SLOTS] = op;
        }
        // The common case, one descriptor: the engine's `prep_one` leaves
        // nothing behind when it fails (and may need no mark for that).
        let written = if op.len() <= self.piece_max {
            // SAFETY: validated and fitting one descriptor; the caller
            // upholds `prep`'s contract, whose end is this engine's.
            unsafe { self.engine.prep_one(cookie, op, notify) }.map_err(DmaError::from)
        } else {
            let mark = self.engine.mark();
            // SAFETY: validated above; the caller upholds this function's
            // contract, which is `emit_pieces`'.
            let written = unsafe { self.emit_pieces(cookie, op, notify) };
            if written.is_err() {
                // SAFETY: the mark was taken just now, nothing issued since.
                unsafe { self.engine.rewind(mark) };
            }
            written
        };
        if let Err(e) = written {
            self.refuse_cookie(cookie);
            return Err(e);
        }
        self.last_used = cookie.get();
        self.prepared = true;
        if notify.interrupt {
            (self.interrupt_through, self.interrupt_lap) = (cookie.get(), self.lap);
        }
        if let Some(callback) = callback
            && self.callbacks.push((cookie, callback)).is_err()
        {
            unreachable!("a full callback queue refused the request before it was written");
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
        // The exact check when the cookies reach `i32::MAX` or the window's
        // edge (`last_completed` among them): room is made, a lap counted.
        let n = ops.len();
        let wraps = n > (i32::MAX - first.get()) as usize;
        let at_edge = (self.last_completed.wrapping_sub(first.get()) as u32 as usize) < n;
        if wraps || at_edge || first == Cookie::FIRST {
            self.make_room_for_cookies(n)?;
        }
        // The common case: copies, no notification, checked by the engine
        // as it writes them.
        let checked_and_written = self.plain_copies
            && !flags.contains(PrepFlags::INTERRUPT)
            // SAFETY: the caller upholds `prep`'s contract for every op;
            // checking the ops themselves is `prep_copies`' own.
            && unsafe { self.engine.prep_copies(first, ops, self.limits.dma_mask) };
        if checked_and_written {
            let last = first.after(ops.len() - 1);
            self.use_cookies_through(last);
            self.prepared = true;
            self.remember(first, ops);
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
            // The error's conversion is out of line (performance note H3).
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
        self.use_cookies_through(cookie);
        self.prepared = true;
        if last.interrupt {
            (self.interrupt_through, self.interrupt_lap) = (cookie.get(), self.lap);
        }
        self.remember(first, ops);
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
    /// [`SharedChannel`](crate::engine::SharedChannel) call this when they have to
    /// wait, so on such an engine a request awaited needs no
    /// [`PrepFlags::INTERRUPT`], and one that has ended by the first poll
    /// costs no interrupt at all.
    pub fn interrupt_after(&mut self, cookie: Cookie) -> Result<(), DmaError> {
        // Covered by a request that asked for an interrupt only while
        // that request is in flight: one of the last `in_flight` assigned
        // (one that has ended interrupted already, and its cookie's value
        // may since name another request).
        let span = i64::from(i32::MAX);
        let in_flight = match self.last_completed {
            0 => i64::from(self.last_used),
            done => (i64::from(self.last_used) - i64::from(done)).rem_euclid(span),
        };
        let covered = self.interrupt_through != 0
            && self.assigned_since(self.interrupt_lap, self.interrupt_through) < in_flight as u64
            && crate::engine::is_complete(cookie, self.interrupt_through, self.last_used);
        if !self.caps.contains(Capabilities::INTERRUPT_OP)
            || covered
            || crate::engine::is_complete(cookie, self.last_completed, self.last_used)
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
}
