//! Failure records: which cookies each failure or termination ended, so
//! `status` and `wait_all` can say so after the fact.

use super::{Channel, FAILURE_HISTORY};
use crate::engine::{Cookie, DmaError, Engine, ErrorKind, Snapshot, Status};

/// One failure or termination: the cookies it ended.
#[derive(Clone, Copy, Debug)]
pub(super) struct Failure {
    /// The request that failed, and how (none for a termination).
    pub(super) failed: Option<(Cookie, ErrorKind)>,
    /// The requests it ended are those in `(before, last]`.
    pub(super) before: i32,
    pub(super) last: i32,
}

impl Failure {
    fn kind_of(&self, cookie: Cookie) -> Option<ErrorKind> {
        if let Some((failed, kind)) = self.failed
            && failed == cookie
        {
            return Some(kind);
        }
        let ended = !crate::engine::is_complete(cookie, self.before, self.last);
        ended.then_some(ErrorKind::Aborted)
    }
}

impl<E: Engine> Channel<E> {
    pub(super) fn record(&mut self, failure: Failure) {
        self.failures[self.next_failure] = Some(failure);
        self.next_failure = (self.next_failure + 1) % FAILURE_HISTORY;
        self.failures_recorded = self.failures_recorded.saturating_add(1);
    }

    #[inline(always)]
    pub(super) fn classify(&self, cookie: Cookie) -> Status {
        classify_in(
            self.snapshot(),
            (&self.failures, self.next_failure, self.failures_recorded),
            cookie,
        )
    }

    /// The oldest failure recorded since the last `wait_all` answer or
    /// `reset`, as `wait_all` reports it: the failed request, or the first
    /// request a termination ended.
    pub(super) fn first_unreported_failure(&self) -> Option<DmaError> {
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
}

/// A channel's failure records: the ring, its next slot and how many were
/// recorded.
type Failures<'a> = (&'a [Option<Failure>; FAILURE_HISTORY], usize, usize);

/// Where `cookie` stands given a channel's snapshot and failure records.
#[inline(always)]
pub(super) fn classify_in(snapshot: Snapshot, failures: Failures<'_>, cookie: Cookie) -> Status {
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
pub(super) fn failed_in(
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
