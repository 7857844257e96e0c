//! A copy-break: copies below a size go to the CPU, larger ones to an
//! engine (networking drivers call the same idea `copybreak`).
//!
//! Where the break lies depends on the machine: on 2006 hardware the 2005
//! I/OAT discussion expected the engine to pay off only for copies of
//! several KiB; under QEMU's TCG the emulated engine beats the emulated
//! CPU from a few hundred bytes. So the break point is measured, not
//! assumed: time both paths at a few sizes and hand the timings to
//! [`CopyBreak::from_timings`].

use super::{Channel, Cookie, DmaError, Engine, Op, PrepFlags};
use crate::hal::DmaAddr;

/// One measurement: the time of one copy of `bytes` on each path (any unit,
/// the same for both).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// The copy's size.
    pub bytes: usize,
    /// Time on the CPU channel.
    pub cpu: f64,
    /// Time on the engine's channel (prepare, issue, wait for completion).
    pub engine: f64,
}

impl Timing {
    /// A time that is not a number (NaN) counts as the engine not faster.
    fn engine_is_faster(&self) -> bool {
        self.engine < self.cpu
    }
}

/// Which channel a copy went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// The CPU channel (complete when `copy` returned, for the CPU engine).
    Cpu(Cookie),
    /// The engine's channel: wait on it for this cookie.
    Engine(Cookie),
}

/// Copies shorter than `threshold` bytes go to the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyBreak {
    threshold: usize,
}

impl CopyBreak {
    /// A break at `threshold` bytes (0: everything on the engine;
    /// `usize::MAX`: everything on the CPU).
    pub const fn new(threshold: usize) -> CopyBreak {
        CopyBreak { threshold }
    }

    /// The break point from timings at several sizes: the smallest measured
    /// size from which the engine is faster at that size and every larger
    /// one measured (`usize::MAX` if it never is; 0 if it always is). Every
    /// timing counts, in any order; a size measured more than once is one
    /// the engine is faster at only if every measurement of it says so.
    pub fn from_timings(timings: &[Timing]) -> CopyBreak {
        // Two passes over the timings as given: nothing is copied or sorted,
        // so there is no bound on how many (a fixed-size sorted copy once
        // dropped all but the first 32).
        let slower = timings
            .iter()
            .filter(|t| !t.engine_is_faster())
            .map(|t| t.bytes)
            .max();
        let threshold = match slower {
            None if timings.is_empty() => usize::MAX,
            None => 0,
            // The break lies above the largest size the engine loses at.
            Some(slower) => timings
                .iter()
                .map(|t| t.bytes)
                .filter(|&bytes| bytes > slower)
                .min()
                .unwrap_or(usize::MAX),
        };
        CopyBreak { threshold }
    }

    /// The break point in bytes.
    pub const fn threshold(&self) -> usize {
        self.threshold
    }

    /// Whether a copy of `len` bytes goes to the engine.
    pub const fn uses_engine(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// Prepares a copy on the channel its size picks, and issues it there
    /// (the CPU engine completes it at once).
    ///
    /// # Safety
    /// As for [`Channel::prep`], on whichever channel is picked.
    pub unsafe fn copy<C: Engine, E: Engine>(
        &self,
        cpu: &mut Channel<C>,
        engine: &mut Channel<E>,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
        flags: PrepFlags,
    ) -> Result<Routed, DmaError> {
        let op = Op::Copy { dst, src, len };
        if self.uses_engine(len) {
            // SAFETY: the caller upholds `prep`'s contract.
            let cookie = unsafe { engine.prep(op, flags, None) }?;
            engine.issue_pending();
            Ok(Routed::Engine(cookie))
        } else {
            // SAFETY: as above.
            let cookie = unsafe { cpu.prep(op, flags, None) }?;
            cpu.issue_pending();
            Ok(Routed::Cpu(cookie))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(bytes: usize, cpu: f64, engine: f64) -> Timing {
        Timing { bytes, cpu, engine }
    }

    #[test]
    fn the_break_is_where_the_engine_stays_faster() {
        let timings = [
            t(4096, 10.0, 2.0),
            t(64, 0.2, 1.0),
            t(256, 0.7, 1.0),
            t(1024, 2.5, 1.2),
        ];
        assert_eq!(CopyBreak::from_timings(&timings).threshold(), 1024);
        // A crossing back (noise at one size) moves the break above it.
        let noisy = [
            t(64, 0.2, 1.0),
            t(256, 2.0, 1.0),
            t(1024, 1.0, 1.5),
            t(4096, 9.0, 2.0),
        ];
        assert_eq!(CopyBreak::from_timings(&noisy).threshold(), 4096);
        assert_eq!(
            CopyBreak::from_timings(&[t(64, 2.0, 1.0), t(128, 3.0, 1.0)]).threshold(),
            0,
            "always faster: everything goes to the engine"
        );
        assert_eq!(
            CopyBreak::from_timings(&[t(64, 1.0, 2.0)]).threshold(),
            usize::MAX,
            "never faster"
        );
        assert_eq!(CopyBreak::from_timings(&[]).threshold(), usize::MAX);
        let policy = CopyBreak::new(1024);
        assert!(!policy.uses_engine(1023) && policy.uses_engine(1024));
    }

    /// Every timing counts, however many: the 33rd used to be dropped, so
    /// a slower engine at the largest size measured left the break at 0.
    #[test]
    fn review_every_timing_counts() {
        let mut timings: Vec<Timing> = (1..=32).map(|i| t(i * 64, 2.0, 1.0)).collect();
        timings.push(t(1 << 20, 1.0, 2.0));
        assert_eq!(
            CopyBreak::from_timings(&timings).threshold(),
            usize::MAX,
            "the engine is slower at the largest size measured"
        );
        // And their order does not matter.
        timings.reverse();
        assert_eq!(CopyBreak::from_timings(&timings).threshold(), usize::MAX);
        timings.push(t(1 << 21, 3.0, 1.0));
        assert_eq!(CopyBreak::from_timings(&timings).threshold(), 1 << 21);
    }

    /// A size measured twice is one the engine is faster at only if both
    /// measurements say so: the answer used to hang on the sort's order.
    #[test]
    fn a_size_measured_twice_is_faster_only_if_both_say_so() {
        for timings in [
            [t(64, 1.0, 2.0), t(64, 2.0, 1.0), t(128, 2.0, 1.0)],
            [t(64, 2.0, 1.0), t(64, 1.0, 2.0), t(128, 2.0, 1.0)],
            [t(128, 2.0, 1.0), t(64, 2.0, 1.0), t(64, 1.0, 2.0)],
        ] {
            assert_eq!(CopyBreak::from_timings(&timings).threshold(), 128);
        }
    }
}
