//! Test doubles of the engine layer: a scripted engine whose hardware is
//! the test, and the proptest strategies of hostile copies. The channel,
//! shared-channel and registry tests import them from here, never from
//! one another.

use super::*;
use crate::hal::fake::FakeHal;

/// An engine whose hardware is the test: it records descriptors, and
/// completes or fails them when told to.
#[derive(Default)]
pub(crate) struct Scripted {
    pub(crate) max_len: usize,
    pub(crate) capacity: usize,
    pub(crate) dma_mask: u64,
    /// Set by the test: every `prep` is refused with this.
    pub(crate) refuse: Option<EngineError>,
    pub(crate) prepared: Vec<(Cookie, Op, Option<Notify>)>,
    pub(crate) issued: Vec<(Cookie, Op, Option<Notify>)>,
    pub(crate) issues: usize,
    /// Set by the test: the next poll reports these.
    pub(crate) complete_upto: Option<Cookie>,
    pub(crate) fault: Option<Fault>,
    /// Set by the test: the next `handle_interrupt` says it was ours.
    pub(crate) raised: bool,
    pub(crate) terminated: usize,
    pub(crate) resets: usize,
    /// Set by the test: `terminate` says the device has not stopped.
    pub(crate) busy: bool,
    /// As `busy`, for a test that no longer reaches the engine.
    pub(crate) busy_flag: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Set by the test: capabilities beyond copy and fill.
    pub(crate) more_caps: Capabilities,
}

impl Scripted {
    pub(crate) fn new(max_len: usize, capacity: usize) -> Self {
        Scripted {
            max_len,
            capacity,
            dma_mask: 0xffff_ffff,
            ..Default::default()
        }
    }
}

// SAFETY: it never touches memory: whatever it reports, no device reads or
// writes what it was given.
unsafe impl Engine for Scripted {
    type Mark = usize;
    type Hal = FakeHal;

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPY | Capabilities::FILL | self.more_caps
    }

    fn limits(&self) -> Limits {
        Limits {
            max_len: self.max_len,
            dma_mask: self.dma_mask,
            align: 1,
        }
    }

    fn mark(&self) -> usize {
        self.prepared.len()
    }

    unsafe fn rewind(&mut self, mark: usize) {
        self.prepared.truncate(mark);
    }

    unsafe fn prep(
        &mut self,
        cookie: Cookie,
        op: Op,
        end: Option<Notify>,
    ) -> Result<(), EngineError> {
        if let Some(e) = self.refuse {
            return Err(e);
        }
        if self.prepared.len() + self.issued.len() >= self.capacity {
            return Err(EngineError::RingFull);
        }
        self.prepared.push((cookie, op, end));
        Ok(())
    }

    fn issue(&mut self) {
        self.issues += 1;
        self.issued.append(&mut self.prepared);
    }

    fn poll(&mut self, _check_hardware: bool) -> Progress {
        Progress {
            completed: self.complete_upto.take(),
            fault: self.fault.take(),
        }
    }

    fn handle_interrupt(&mut self) -> bool {
        core::mem::take(&mut self.raised)
    }

    fn terminate(&mut self) -> Termination {
        self.terminated += 1;
        self.prepared.clear();
        let busy = self.busy
            || self
                .busy_flag
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed));
        if !busy {
            self.issued.clear();
        }
        Termination {
            completed: self.complete_upto.take(),
            stopped: !busy,
        }
    }

    fn reset(&mut self) -> Result<(), DmaError> {
        self.resets += 1;
        Ok(())
    }
}

/// Addresses and lengths a hostile caller picks: small, huge, near every
/// boundary that a sum can cross.
pub(crate) fn hostile_u64() -> impl proptest::strategy::Strategy<Value = u64> {
    use proptest::prelude::*;
    prop_oneof![
        0u64..0x10_0000,
        0xffff_f000u64..0x1_0000_1000,
        u64::MAX - 0x1000..=u64::MAX,
        any::<u64>(),
    ]
}

/// A copy at the edges the checks decide on, with its mask: `(dst, src,
/// len, mask)`. The mask is 32 or 64 bits wide; the sides are hostile
/// numbers, or close together (within 80 bytes) with, often, a length at
/// the edge of overlapping (their distance, one less or one more); and
/// sometimes one side's last byte is the mask's, or one past it.
pub(crate) fn edge_copy() -> impl proptest::strategy::Strategy<Value = (u64, u64, usize, u64)> {
    use proptest::prelude::*;
    let sides = (hostile_u64(), hostile_u64(), -80i64..80, any::<bool>());
    let shape = (hostile_u64(), 0u64..6, any::<bool>(), 0u8..4);
    (sides, shape).prop_map(|((d, s, delta, close), (l, edge, wide, at_the_top))| {
        let mask = if wide { u64::MAX } else { 0xffff_ffff };
        let l = if close && edge < 3 {
            (delta.unsigned_abs() + edge).saturating_sub(1)
        } else {
            l
        };
        let top = |by: u64| mask.wrapping_sub(l).wrapping_add(by);
        let (d, s) = match at_the_top {
            1 => (top(1), s),
            2 => (d, top(1)),
            3 => (top(2), s),
            _ => (d, s),
        };
        let src = if close {
            d.wrapping_add_signed(delta)
        } else {
            s
        };
        (d, src, usize::try_from(l).unwrap_or(usize::MAX), mask)
    })
}

/// A delay that only counts how long it was asked to wait.
#[derive(Default)]
pub(crate) struct CountingDelay {
    pub(crate) waited_ns: u64,
}

impl embedded_hal::delay::DelayNs for CountingDelay {
    fn delay_ns(&mut self, ns: u32) {
        self.waited_ns += ns as u64;
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) std::sync::atomic::AtomicUsize);

impl std::task::Wake for Counter {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A counting waker and a handle on its count.
pub(crate) fn counter() -> (std::sync::Arc<Counter>, std::task::Waker) {
    let c = std::sync::Arc::new(Counter::default());
    (c.clone(), std::task::Waker::from(c))
}

/// A fake-HAL buffer of `len` bytes, each a function of its index and `seed`.
pub(crate) fn filled(len: usize, seed: u8) -> crate::hal::Dma<crate::hal::fake::FakeHal> {
    let mut buf = crate::hal::Dma::<crate::hal::fake::FakeHal>::new(len).unwrap();
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    buf
}

/// A delay that only yields the thread: waits that need another thread to
/// make progress.
pub(crate) struct NoDelay;

impl embedded_hal::delay::DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {
        std::thread::yield_now();
    }
}
