//! Stopping: failures, `terminate` and `reset`, and the wait for an
//! engine whose device stops later than it is asked to.

use super::Channel;
use super::failures::Failure;
use crate::engine::{Cookie, DmaError, Engine, ErrorKind, Fault};

/// A stop asked of the engine and not yet confirmed (see
/// [`Channel::terminate`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Stopping {
    /// The request whose failure caused it, and how (none for a
    /// termination).
    pub(super) failed: Option<(Cookie, ErrorKind)>,
    /// The newest request the engine reported complete in the poll that
    /// found the failure, which the channel had not applied yet.
    pub(super) done: Option<Cookie>,
}

impl<E: Engine> Channel<E> {
    pub(super) fn fail(&mut self, fault: Fault) {
        let before = if fault.cookie == Cookie::FIRST {
            i32::MAX
        } else {
            fault.cookie.get() - 1
        };
        self.failures.record(Failure {
            failed: Some((fault.cookie, fault.kind)),
            before,
            last: self.last_used,
            lap: self.lap,
        });
        self.end_all();
    }

    /// Ends every outstanding request: those not yet recorded are now
    /// covered by the last failure record.
    pub(super) fn end_all(&mut self) {
        self.last_completed = self.last_used;
        self.halted = true;
        self.prepared = false;
    }

    /// Stops the channel: every request not known complete ends `Aborted`
    /// once the engine has stopped. The channel stays halted until
    /// [`Channel::reset`].
    ///
    /// An engine whose device has not stopped yet (edu, whose transfer in
    /// flight runs to its end; see [`Termination`](crate::engine::Termination))
    /// leaves its requests in flight: they read `InProgress`, an owned
    /// buffer's [`Transfer`](crate::engine::Transfer) cannot be finished, until a
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
        self.stop(None, None);
    }

    /// Asks the engine to stop and halts the channel; once the engine has
    /// stopped, ends every request not complete: the one `failed` names
    /// with its error and the rest `Aborted` (all `Aborted` for a
    /// termination).
    /// `done` is what the engine reported complete in the poll that found
    /// the failure, if the channel has not applied it.
    pub(super) fn stop(&mut self, failed: Option<(Cookie, ErrorKind)>, done: Option<Cookie>) {
        self.halted = true;
        self.prepared = false;
        // A failure found while a termination waits for the engine names
        // the cause; a first failure stays the cause.
        match self.stopping {
            Some(Stopping {
                failed: Some(_), ..
            }) => {}
            _ => self.stopping = Some(Stopping { failed, done }),
        }
        self.finish_stop();
    }

    /// Asks the engine again whether it has stopped, if a stop waits for
    /// it; if so, ends the requests as [`Channel::stop`] says.
    #[cold]
    #[inline(never)]
    pub(super) fn finish_stop(&mut self) {
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
        // Where the engine really got to: a cause pinned from a fault may
        // lie past it, and the requests between never ran.
        let engine_done = end
            .completed
            .or(stop.done)
            .map_or(self.last_completed, Cookie::get);
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
            // in flight, and its memory with it. What it reported done is
            // kept for the failure record (the next `terminate` reports only
            // what is new).
            if stop.failed.is_some() && end.completed.is_some() {
                stop.done = end.completed;
                self.stopping = Some(stop);
            }
            return;
        }
        self.stopping = None;
        match stop.failed {
            Some((cookie, kind)) => {
                let before_cause = if cookie == Cookie::FIRST {
                    i32::MAX
                } else {
                    cookie.get() - 1
                };
                // The earlier of the two, counted back from the newest
                // request (0, before any completion, is `i32::MAX` back).
                let back = |c: i32| {
                    (i64::from(self.last_used) - i64::from(c)).rem_euclid(i64::from(i32::MAX))
                };
                let before = if back(engine_done) > back(before_cause) {
                    engine_done
                } else {
                    before_cause
                };
                self.failures.record(Failure {
                    failed: Some((cookie, kind)),
                    before,
                    last: self.last_used,
                    lap: self.lap,
                });
            }
            None if !self.is_idle() => self.failures.record(Failure {
                failed: None,
                before: self.last_completed,
                last: self.last_used,
                lap: self.lap,
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
    /// not halted). Cookies keep counting from where they were. `Busy`
    /// while the engine has not stopped (see [`Channel::terminate`]): the
    /// channel is then halted and stopping (a running one was terminated,
    /// and its requests end `Aborted` once the engine stops); poll and
    /// call again.
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
        self.failures.mark_reported();
        Ok(())
    }
}
