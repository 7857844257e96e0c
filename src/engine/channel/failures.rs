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
    /// The channel's lap when it was recorded (`last` was then the last
    /// cookie assigned).
    pub(super) lap: u32,
}

/// Where the channel's cookies stand: the snapshot, and how many times
/// they have wrapped.
#[derive(Clone, Copy, Debug)]
pub(super) struct Now {
    pub(super) snapshot: Snapshot,
    pub(super) lap: u32,
}

impl Failure {
    fn kind_of(&self, cookie: Cookie, now: Now) -> Option<ErrorKind> {
        // A cookie assigned again since the record is not the one it
        // names: after a lap or more every cookie was, and within a lap
        // those after `last` up to the newest.
        let span = i32::MAX as u64;
        let since = (u64::from(now.lap.wrapping_sub(self.lap)) * span
            + now.snapshot.last_used as u64)
            .saturating_sub(self.last as u64);
        if since >= span || !crate::engine::is_complete(cookie, self.last, now.snapshot.last_used) {
            return None;
        }
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
    pub(super) fn classify(&self, now: Now, cookie: Cookie) -> Status {
        // In the in-flight window: no failure has ended it yet.
        if !now.snapshot.is_complete(cookie) {
            return Status::InProgress;
        }
        if self.records.is_empty() {
            return Status::Complete;
        }
        self.ended(now, cookie)
    }

    /// Whether no failure is recorded.
    #[inline(always)]
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How a cookie outside the in-flight window ended: by the newest
    /// failure that ended it, or complete.
    #[inline(never)]
    pub(super) fn ended(&self, now: Now, cookie: Cookie) -> Status {
        self.records
            .newest_first()
            .find_map(|f| f.kind_of(cookie, now))
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
        // As `FailureLog::classify`, reading the lap only when a failure
        // is recorded.
        if !self.snapshot().is_complete(cookie) {
            return Status::InProgress;
        }
        if self.failures.is_empty() {
            return Status::Complete;
        }
        self.failures.ended(self.now(), cookie)
    }

    /// The snapshot and the lap, as the failure records read them.
    #[inline(always)]
    pub(super) fn now(&self) -> Now {
        Now {
            snapshot: self.snapshot(),
            lap: self.lap,
        }
    }
}
