//! Failure records: which cookies each failure or termination ended, so
//! `status` and `wait_all` can say so after the fact.

use super::{Channel, FAILURE_HISTORY};
use crate::engine::fixed_ring::FixedRing;
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

/// The channel's failure records: the last [`FAILURE_HISTORY`] failures
/// and terminations, and how many `wait_all` has reported.
pub(super) struct FailureLog {
    records: FixedRing<Failure, FAILURE_HISTORY>,
    /// Records pushed when `wait_all` last answered or `reset` ran: the
    /// failures `wait_all` has yet to report are those after it.
    reported: usize,
}

impl FailureLog {
    /// No failure yet.
    pub(super) const fn new() -> Self {
        FailureLog {
            records: FixedRing::new(),
            reported: 0,
        }
    }

    /// Records a failure or termination, dropping the oldest record when
    /// [`FAILURE_HISTORY`] are kept.
    pub(super) fn record(&mut self, failure: Failure) {
        self.records.push_evicting(failure);
    }

    /// Where `cookie` stands given the channel's snapshot.
    #[inline(always)]
    pub(super) fn classify(&self, snapshot: Snapshot, cookie: Cookie) -> Status {
        // In the in-flight window: no failure has ended it yet.
        if !snapshot.is_complete(cookie) {
            return Status::InProgress;
        }
        if self.records.is_empty() {
            return Status::Complete;
        }
        self.ended(cookie)
    }

    /// How a cookie outside the in-flight window ended: by the newest
    /// failure that ended it, or complete.
    #[inline(never)]
    fn ended(&self, cookie: Cookie) -> Status {
        self.records
            .newest_first()
            .find_map(|f| f.kind_of(cookie))
            .map_or(Status::Complete, Status::Error)
    }

    /// The oldest failure recorded since the last `wait_all` answer or
    /// `reset` still kept, as `wait_all` reports it: the failed request, or
    /// the first request a termination ended.
    pub(super) fn first_unreported(&self) -> Option<DmaError> {
        let oldest_kept = self.records.pushed().saturating_sub(FAILURE_HISTORY);
        let failure = self.records.get_pushed(self.reported.max(oldest_kept))?;
        Some(match failure.failed {
            Some((cookie, kind)) => DmaError::FailedAt { cookie, kind },
            None => DmaError::FailedAt {
                cookie: Cookie::new(failure.before).map_or(Cookie::FIRST, Cookie::next),
                kind: ErrorKind::Aborted,
            },
        })
    }

    /// Marks every failure recorded so far as reported.
    pub(super) fn mark_reported(&mut self) {
        self.reported = self.records.pushed();
    }
}

impl<E: Engine> Channel<E> {
    #[inline(always)]
    pub(super) fn classify(&self, cookie: Cookie) -> Status {
        self.failures.classify(self.snapshot(), cookie)
    }
}
