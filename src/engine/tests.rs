//! Host tests of the channel: a scripted engine for the bookkeeping
//! (splitting, cookies, failures, termination, callbacks) and the CPU engine
//! over host memory for real bytes.

use std::cell::RefCell;
use std::time::Duration;

use proptest::strategy::Strategy;

use super::fake::{CountingDelay, Scripted, edge_copy, hostile_u64};
use super::*;
use crate::hal::Dma;
use crate::hal::fake::FakeHal;

fn copy(chan: &mut Channel<Scripted>, dst: u64, src: u64, len: usize) -> Result<Cookie, DmaError> {
    // SAFETY: the scripted engine never touches memory.
    unsafe { chan.prep_copy(dst, src, len, PrepFlags::empty()) }
}

fn cookie(v: i32) -> Cookie {
    Cookie::new(v).unwrap()
}

#[test]
fn cookies_are_assigned_in_order_and_complete_in_order() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let a = copy(&mut chan, 0x10000, 0x20000, 64).unwrap();
    let b = copy(&mut chan, 0x30000, 0x40000, 64).unwrap();
    assert_eq!((a.get(), b.get()), (1, 2));
    assert_eq!(
        chan.status(a).status,
        Status::InProgress,
        "prepared, not issued"
    );
    chan.issue_pending();
    chan.issue_pending();
    assert_eq!(
        chan.engine().issues,
        1,
        "a second issue with nothing prepared does nothing"
    );
    chan.engine_mut().complete_upto = Some(a);
    let state = chan.status(b);
    assert_eq!(state.status, Status::InProgress);
    assert_eq!(
        state.snapshot,
        Snapshot {
            last_completed: 1,
            last_used: 2
        }
    );
    assert_eq!(chan.status(a).status, Status::Complete);
    chan.engine_mut().complete_upto = Some(b);
    assert_eq!(chan.status(b).status, Status::Complete);
    assert!(chan.is_idle());
}

#[test]
fn long_requests_are_split_and_the_last_piece_carries_the_notification() {
    let mut chan = Channel::new(Scripted::new(1000, 64));
    // SAFETY: the scripted engine never touches memory.
    let c = unsafe {
        chan.prep(
            Op::Copy {
                dst: 0x100000,
                src: 0x200000,
                len: 2500,
            },
            PrepFlags::INTERRUPT,
            None,
        )
    };
    assert_eq!(
        c,
        Err(DmaError::NotSupported),
        "the scripted engine has no interrupt"
    );
    let c = copy(&mut chan, 0x100000, 0x200000, 2500).unwrap();
    let pieces: Vec<_> = chan
        .engine()
        .prepared
        .iter()
        .map(|&(k, op, end)| (k, op, end.is_some()))
        .collect();
    assert_eq!(
        pieces,
        vec![
            (
                c,
                Op::Copy {
                    dst: 0x100000,
                    src: 0x200000,
                    len: 1000
                },
                false
            ),
            (
                c,
                Op::Copy {
                    dst: 0x100000 + 1000,
                    src: 0x200000 + 1000,
                    len: 1000
                },
                false
            ),
            (
                c,
                Op::Copy {
                    dst: 0x100000 + 2000,
                    src: 0x200000 + 2000,
                    len: 500
                },
                true
            ),
        ]
    );
}

#[test]
fn split_fills_keep_the_pattern_phase() {
    let mut chan = Channel::new(Scripted::new(1003, 64));
    // SAFETY: the scripted engine never touches memory.
    unsafe { chan.fill(0x10000, 2500, 0x0807_0605_0403_0201, PrepFlags::empty()) }.unwrap();
    let patterns: Vec<u64> = chan
        .engine()
        .prepared
        .iter()
        .map(|(_, op, _)| match op {
            Op::Fill { pattern, .. } => *pattern,
            other => panic!("{other:?}"),
        })
        .collect();
    // Piece two starts at byte 1003 (1003 % 8 = 3): its first byte is 0x04.
    assert_eq!(patterns[1].to_le_bytes()[0], 0x04);
    assert_eq!(patterns[2].to_le_bytes()[0], (2006 % 8) as u8 + 1);
}

#[test]
fn bad_requests_are_errors_and_change_nothing() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 4));
    let before = chan.snapshot();
    assert_eq!(
        copy(&mut chan, 0x1000, 0x2000, 0),
        Err(DmaError::ZeroLength)
    );
    assert_eq!(
        copy(&mut chan, 0x1000, 0x1800, 0x1000),
        Err(DmaError::Overlap)
    );
    assert_eq!(
        copy(&mut chan, 0x1800, 0x1000, 0x1000),
        Err(DmaError::Overlap)
    );
    assert_eq!(
        copy(&mut chan, 0x1_0000_0000, 0x1000, 16),
        Err(DmaError::BeyondDmaMask)
    );
    assert_eq!(
        copy(&mut chan, 0xffff_fff0, 0x1000, 17),
        Err(DmaError::BeyondDmaMask),
        "the last byte counts"
    );
    assert_eq!(
        copy(&mut chan, 0x1000, u64::MAX - 3, 16),
        Err(DmaError::BeyondDmaMask),
        "no overflow"
    );
    // SAFETY: the scripted engine never touches memory.
    unsafe {
        assert_eq!(
            chan.memcpy_buf_to_page(0x1001, 0, 0x8000, 16),
            Err(DmaError::Misaligned)
        );
        assert_eq!(
            chan.memcpy_buf_to_page(0x1000, 4000, 0x8000, 97),
            Err(DmaError::OutOfPage)
        );
        assert_eq!(
            chan.memcpy_page_to_page(0x1000, 0, 0x2000, 4095, 2),
            Err(DmaError::OutOfPage)
        );
    }
    assert_eq!(chan.snapshot(), before);
    assert!(chan.engine().prepared.is_empty());
    // Ring full: a request that does not fit whole leaves nothing behind.
    let mut chan = Channel::new(Scripted::new(100, 4));
    copy(&mut chan, 0x10000, 0x20000, 200).unwrap();
    let before = chan.snapshot();
    assert_eq!(
        copy(&mut chan, 0x10000, 0x20000, 300),
        Err(DmaError::RingFull)
    );
    assert_eq!(
        chan.engine().prepared.len(),
        2,
        "the partial request was rewound"
    );
    assert_eq!(chan.snapshot(), before, "no cookie consumed");
    assert_eq!(
        copy(&mut chan, 0x10000, 0x20000, 200).map(Cookie::get),
        Ok(2)
    );
}

#[test]
fn a_fault_fails_one_request_and_aborts_the_rest_until_reset() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let c: Vec<Cookie> = (0..5)
        .map(|i| copy(&mut chan, 0x100000 * (i + 1), 0x10000, 64).unwrap())
        .collect();
    chan.issue_pending();
    let late = copy(&mut chan, 0x900000, 0x10000, 64).unwrap();
    chan.engine_mut().complete_upto = Some(c[0]);
    chan.engine_mut().fault = Some(Fault {
        cookie: c[2],
        kind: ErrorKind::InvalidDescriptor,
    });
    chan.poll();
    assert_eq!(chan.status(c[0]).status, Status::Complete);
    assert_eq!(
        chan.status(c[1]).status,
        Status::Complete,
        "ran before the failing one"
    );
    assert_eq!(
        chan.status(c[2]).status,
        Status::Error(ErrorKind::InvalidDescriptor)
    );
    for &k in &[c[3], c[4], late] {
        assert_eq!(
            chan.status(k).status,
            Status::Error(ErrorKind::Aborted),
            "{k:?}"
        );
    }
    assert!(chan.is_halted() && chan.is_idle());
    assert_eq!(
        copy(&mut chan, 0x100000, 0x10000, 64),
        Err(DmaError::Halted)
    );
    let mut delay = CountingDelay::default();
    assert_eq!(
        chan.wait(c[2], &mut delay, Duration::from_millis(1)),
        Err(DmaError::Failed(ErrorKind::InvalidDescriptor))
    );
    chan.reset().unwrap();
    let next = copy(&mut chan, 0x100000, 0x10000, 64).unwrap();
    assert_eq!(next, late.next(), "cookies keep counting");
    assert_eq!(
        chan.status(c[3]).status,
        Status::Error(ErrorKind::Aborted),
        "old fates are remembered"
    );
    chan.engine_mut().complete_upto = Some(next);
    assert_eq!(
        chan.wait(next, &mut delay, Duration::from_millis(1)),
        Ok(())
    );
}

#[test]
fn terminate_aborts_everything_not_written_back() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let c: Vec<Cookie> = (0..4)
        .map(|i| copy(&mut chan, 0x100000 * (i + 1), 0x10000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(c[1]);
    chan.terminate();
    let fates: Vec<Status> = c.iter().map(|&k| chan.status(k).status).collect();
    assert_eq!(
        fates,
        [
            Status::Complete,
            Status::Complete,
            Status::Error(ErrorKind::Aborted),
            Status::Error(ErrorKind::Aborted)
        ]
    );
    assert!(chan.is_halted());
    chan.reset().unwrap();
    assert_eq!((chan.engine().terminated, chan.engine().resets), (1, 1));
    assert!(!chan.is_halted());
}

#[test]
fn wait_times_out_after_the_time_asked() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let c = copy(&mut chan, 0x100000, 0x10000, 64).unwrap();
    let mut delay = CountingDelay::default();
    assert_eq!(
        chan.wait(c, &mut delay, Duration::from_millis(5)),
        Err(DmaError::TimedOut)
    );
    assert_eq!(chan.engine().issues, 1, "wait issues what is pending");
    assert!(
        (5_000_000..5_000_000 + 1_000_000).contains(&delay.waited_ns),
        "waited {} ns",
        delay.waited_ns
    );
    assert_eq!(
        chan.status(c).status,
        Status::InProgress,
        "a timeout ends nothing"
    );
}

#[test]
fn cookies_wrap_from_max_to_one() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_next_cookie(cookie(i32::MAX - 1)).unwrap();
    let c: Vec<Cookie> = (0..4)
        .map(|i| copy(&mut chan, 0x100000 * (i + 1), 0x10000, 64).unwrap())
        .collect();
    assert_eq!(
        c.iter().map(|k| k.get()).collect::<Vec<_>>(),
        [i32::MAX - 1, i32::MAX, 1, 2]
    );
    assert_eq!(chan.set_next_cookie(cookie(7)), Err(DmaError::Busy));
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(c[1]);
    chan.poll();
    assert_eq!(chan.status(c[1]).status, Status::Complete);
    assert_eq!(chan.status(c[2]).status, Status::InProgress);
    assert_eq!(
        chan.snapshot(),
        Snapshot {
            last_completed: i32::MAX,
            last_used: 2
        }
    );
    chan.engine_mut().complete_upto = Some(c[3]);
    assert!(c.iter().all(|&k| chan.status(k).status == Status::Complete));
}

thread_local! {
    static SEEN: RefCell<Vec<(i32, Status, usize)>> = const { RefCell::new(Vec::new()) };
}

fn record(cookie: Cookie, status: Status, context: usize) {
    SEEN.with(|s| s.borrow_mut().push((cookie.get(), status, context)));
}

#[test]
fn callbacks_run_once_in_order_with_the_final_status() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let mut cookies = Vec::new();
    for i in 0..3 {
        let op = Op::Copy {
            dst: 0x100000 * (i + 1),
            src: 0x10000,
            len: 8,
        };
        // SAFETY: the scripted engine never touches memory.
        let c = unsafe {
            chan.prep(
                op,
                PrepFlags::empty(),
                Some(Callback {
                    func: record,
                    context: i as usize,
                }),
            )
        };
        cookies.push(c.unwrap());
    }
    assert!(
        chan.engine()
            .prepared
            .iter()
            .all(|(_, _, end)| end.unwrap().writeback),
        "callbacks need a write-back"
    );
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(cookies[0]);
    chan.poll();
    chan.poll();
    chan.terminate();
    let seen = SEEN.with(|s| s.borrow().clone());
    assert_eq!(
        seen,
        [
            (1, Status::Complete, 0),
            (2, Status::Error(ErrorKind::Aborted), 1),
            (3, Status::Error(ErrorKind::Aborted), 2)
        ]
    );
}

#[test]
fn engine_refusals_keep_their_meaning() {
    for (refusal, error) in [
        (EngineError::RingFull, DmaError::RingFull),
        (EngineError::Halted, DmaError::Halted),
        (EngineError::NotSupported, DmaError::NotSupported),
    ] {
        let mut chan = Channel::new(Scripted::new(1 << 20, 64));
        chan.engine_mut().refuse = Some(refusal);
        assert_eq!(copy(&mut chan, 0x1000, 0x2000, 16), Err(error));
        assert_eq!(chan.snapshot().last_used, 0, "no cookie consumed");
    }
}

#[test]
fn sums_near_the_top_of_the_address_space_are_checked() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.engine_mut().dma_mask = u64::MAX;
    // A new channel reads the limits once: build it with the mask set.
    let mut chan = Channel::new(core::mem::take(chan.engine_mut()));
    let top = u64::MAX;
    assert!(
        copy(&mut chan, 0x1000, top - 15, 16).is_ok(),
        "ends at the last byte"
    );
    assert_eq!(
        copy(&mut chan, 0x1000, top - 7, 16),
        Err(DmaError::BeyondDmaMask),
        "wraps"
    );
    assert_eq!(
        copy(&mut chan, top - 15, top - 31, 17),
        Err(DmaError::BeyondDmaMask)
    );
    assert_eq!(
        copy(&mut chan, top - 15, top - 20, 16),
        Err(DmaError::Overlap),
        "overlap at the very top"
    );
    assert!(copy(&mut chan, top - 15, top - 31, 16).is_ok());
    assert_eq!(
        copy(&mut chan, 2, 1, usize::MAX),
        Err(DmaError::BeyondDmaMask)
    );
    // SAFETY: the scripted engine never touches memory.
    unsafe {
        assert_eq!(
            chan.zero(top, 2, PrepFlags::empty()),
            Err(DmaError::BeyondDmaMask)
        );
        assert_eq!(
            chan.memcpy_buf_to_page(top & !0xfff, usize::MAX, 0, 2),
            Err(DmaError::OutOfPage)
        );
    }
}

fn batch(chan: &mut Channel<Scripted>, ops: &[Op]) -> Result<Batch, DmaError> {
    // SAFETY: the scripted engine never touches memory.
    unsafe { chan.prep_batch(ops, PrepFlags::empty()) }
}

#[test]
fn a_batch_enters_the_ring_whole_or_not_at_all() {
    let mut chan = Channel::new(Scripted::new(100, 5));
    let ops = |n: usize, len: usize| -> Vec<Op> {
        (0..n as u64)
            .map(|i| Op::Copy {
                dst: 0x10_0000 + i * 0x1000,
                src: 0x20_0000 + i * 0x1000,
                len,
            })
            .collect()
    };
    // Six descriptors for a ring of five: refused, nothing left behind.
    assert_eq!(batch(&mut chan, &ops(3, 200)), Err(DmaError::RingFull));
    assert!(chan.engine().prepared.is_empty());
    assert_eq!(chan.snapshot().last_used, 0);
    // A bad request anywhere refuses the batch before the ring changes.
    let mut bad = ops(3, 50);
    bad[2] = Op::Copy {
        dst: 0x1000,
        src: 0x1010,
        len: 32,
    };
    assert_eq!(batch(&mut chan, &bad), Err(DmaError::Overlap));
    assert!(chan.engine().prepared.is_empty());
    assert_eq!(batch(&mut chan, &[]), Err(DmaError::ZeroLength));
    // One that fits: consecutive cookies, one notification per request.
    let batch = batch(&mut chan, &ops(3, 50)).unwrap();
    assert_eq!(
        (batch.first, batch.last, batch.len),
        (cookie(1), cookie(3), 3)
    );
    let cookies: Vec<_> = chan.engine().prepared.iter().map(|p| p.0).collect();
    assert_eq!(cookies, vec![cookie(1), cookie(2), cookie(3)]);
    assert!(chan.engine().prepared.iter().all(|p| p.2.is_some()));
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(batch.last);
    assert_eq!(chan.status(batch.first).status, Status::Complete);
}

#[test]
fn wait_all_names_the_request_that_failed_and_why() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let cookies: Vec<_> = (0..4)
        .map(|i| copy(&mut chan, 0x10_0000 + i * 0x1000, 0x20_0000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(cookies[0]);
    chan.engine_mut().fault = Some(Fault {
        cookie: cookies[1],
        kind: ErrorKind::InvalidDescriptor,
    });
    let mut delay = CountingDelay::default();
    assert_eq!(
        chan.wait_all(&mut delay, Duration::from_millis(1)),
        Err(DmaError::FailedAt {
            cookie: cookies[1],
            kind: ErrorKind::InvalidDescriptor
        })
    );
    assert_eq!(
        chan.status(cookies[3]).status,
        Status::Error(ErrorKind::Aborted)
    );
    // After a reset, a termination names the first request it ended.
    chan.reset().unwrap();
    let more: Vec<_> = (0..3)
        .map(|i| copy(&mut chan, 0x10_0000 + i * 0x1000, 0x20_0000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(more[0]);
    chan.poll();
    chan.terminate();
    assert!(chan.is_idle(), "terminated: nothing left to wait for");
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let more: Vec<_> = (0..3)
        .map(|i| copy(&mut chan, 0x10_0000 + i * 0x1000, 0x20_0000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(more[0]);
    chan.poll();
    // The timeout path: nothing more completes.
    assert_eq!(
        chan.wait_all(&mut delay, Duration::from_micros(10)),
        Err(DmaError::TimedOut)
    );
    chan.terminate();
    assert_eq!(
        chan.status(more[1]).status,
        Status::Error(ErrorKind::Aborted)
    );
    assert_eq!(chan.status(more[0]).status, Status::Complete);
}

/// Whether `[addr, addr + len)` is a range the engine may be given, in
/// arithmetic that cannot overflow.
fn fits(addr: u64, len: u64, mask: u64) -> bool {
    len > 0 && addr as u128 + len as u128 - 1 <= mask as u128
}

#[derive(Clone, Debug)]
enum Call {
    Copy(u64, u64, u64),
    Fill(u64, u64, u64),
    Zero(u64, u64),
    BufToPage(u64, u64, u64, u64),
    PageToPage(u64, u64, u64, u64, u64),
    Batch(Vec<(u64, u64, u64)>),
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(if cfg!(miri) { proptest::prelude::ProptestConfig::default().cases } else { 2000 }))]

    /// `prep_batch` checks copies in its own loop (`copy_is_valid`, falling back to `check_op` for what it refuses): a batch of
    /// one copy is refused with the error `prep` gives the same copy, on a
    /// 32-bit and a 64-bit mask, with sides far apart or close together.
    #[test]
    fn a_batched_copy_is_refused_as_a_single_one_is((d, src, len, mask) in edge_copy()) {
        let channel = || {
            let mut engine = Scripted::new(1 << 16, 40);
            engine.dma_mask = mask;
            Channel::new(engine)
        };
        let op = Op::Copy { dst: d, src, len };
        // SAFETY: the scripted engine never touches memory.
        let single = unsafe { channel().prep(op, PrepFlags::empty(), None) }.map(|_| ());
        proptest::prop_assert_eq!(batch(&mut channel(), &[op]).map(|_| ()), single);
    }

    /// Whatever the numbers, a call returns (never panics, overflow checks
    /// on); a refused call changes nothing; an accepted one is a request
    /// whose every byte is within the mask and whose sides do not overlap.
    #[test]
    fn hostile_numbers_are_errors_that_change_nothing(
        calls in proptest::collection::vec(
            proptest::prop_oneof![
                (hostile_u64(), hostile_u64(), hostile_u64()).prop_map(|(d, s, l)| Call::Copy(d, s, l)),
                // Sides close together, where an overlap check is tested.
                (hostile_u64(), -80i64..80, 0u64..100)
                    .prop_map(|(d, delta, l)| Call::Copy(d, d.wrapping_add_signed(delta), l)),
                (hostile_u64(), hostile_u64(), proptest::prelude::any::<u64>()).prop_map(|(d, l, p)| Call::Fill(d, l, p)),
                (hostile_u64(), hostile_u64()).prop_map(|(d, l)| Call::Zero(d, l)),
                (hostile_u64(), hostile_u64(), hostile_u64(), hostile_u64()).prop_map(|(p, o, s, l)| Call::BufToPage(p, o, s, l)),
                (hostile_u64(), hostile_u64(), hostile_u64(), hostile_u64(), hostile_u64()).prop_map(|(a, b, c, d, e)| Call::PageToPage(a, b, c, d, e)),
                proptest::collection::vec((hostile_u64(), hostile_u64(), hostile_u64()), 0..4).prop_map(Call::Batch),
            ],
            1..24,
        ),
        wide in proptest::prelude::any::<bool>(),
    ) {
        use proptest::prelude::*;
        let mut engine = Scripted::new(1 << 16, 40);
        engine.dma_mask = if wide { u64::MAX } else { 0xffff_ffff };
        let mask = engine.dma_mask;
        let mut chan = Channel::new(engine);
        let copy_ok = |d: u64, s: u64, l: u64| {
            fits(d, l, mask) && fits(s, l, mask)
                && (d as u128 + l as u128 <= s as u128 || s as u128 + l as u128 <= d as u128)
        };
        for call in calls {
            let before = (chan.snapshot(), chan.engine().prepared.clone());
            let usz = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
            // SAFETY: the scripted engine never touches memory.
            let (result, valid) = unsafe {
                match call {
                    Call::Copy(d, s, l) => (chan.prep_copy(d, s, usz(l), PrepFlags::empty()).map(|_| ()), copy_ok(d, s, l)),
                    Call::Fill(d, l, p) => (chan.fill(d, usz(l), p, PrepFlags::empty()).map(|_| ()), fits(d, l, mask)),
                    Call::Zero(d, l) => (chan.zero(d, usz(l), PrepFlags::empty()).map(|_| ()), fits(d, l, mask)),
                    Call::BufToPage(p, o, s, l) => {
                        let in_page = p % 4096 == 0 && o as u128 + l as u128 <= 4096;
                        (chan.memcpy_buf_to_page(p, usz(o), s, usz(l)).map(|_| ()),
                            in_page && copy_ok(p + o, s, l))
                    }
                    Call::PageToPage(dp, doff, sp, soff, l) => {
                        let in_pages = dp % 4096 == 0 && sp % 4096 == 0
                            && doff as u128 + l as u128 <= 4096 && soff as u128 + l as u128 <= 4096;
                        (chan.memcpy_page_to_page(dp, usz(doff), sp, usz(soff), usz(l)).map(|_| ()),
                            in_pages && copy_ok(dp + doff, sp + soff, l))
                    }
                    Call::Batch(ops) => {
                        let valid = !ops.is_empty() && ops.iter().all(|&(d, s, l)| copy_ok(d, s, l));
                        let ops: Vec<Op> = ops.iter().map(|&(dst, src, len)| Op::Copy { dst, src, len: usz(len) }).collect();
                        (chan.prep_batch(&ops, PrepFlags::empty()).map(|_| ()), valid)
                    }
                }
            };
            match result {
                Ok(()) => prop_assert!(valid, "accepted an invalid request"),
                Err(DmaError::RingFull) => {
                    prop_assert_eq!((chan.snapshot(), chan.engine().prepared.clone()), before);
                    chan.issue_pending();
                    chan.terminate();
                    chan.reset().unwrap();
                }
                Err(_) => {
                    prop_assert!(!valid, "refused a valid request");
                    prop_assert_eq!((chan.snapshot(), chan.engine().prepared.clone()), before);
                }
            }
        }
    }
}

#[test]
fn a_batch_across_the_cookie_wrap_gets_consecutive_cookies() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_next_cookie(cookie(i32::MAX - 1)).unwrap();
    let ops: Vec<Op> = (0..4u64)
        .map(|i| Op::Copy {
            dst: 0x10_0000 + i * 0x1000,
            src: 0x20_0000 + i * 0x1000,
            len: 64,
        })
        .collect();
    let b = batch(&mut chan, &ops).unwrap();
    assert_eq!((b.first, b.last), (cookie(i32::MAX - 1), cookie(2)));
    let cookies: Vec<i32> = chan.engine().prepared.iter().map(|p| p.0.get()).collect();
    assert_eq!(cookies, [i32::MAX - 1, i32::MAX, 1, 2]);
}

#[test]
fn an_iommu_fault_is_pinned_on_the_request_that_touched_the_page() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let a = copy(&mut chan, 0x10_0000, 0x20_0000, 64).unwrap();
    let b = copy(&mut chan, 0x11_0000, 0x21_0000, 0x1800).unwrap();
    let c = copy(&mut chan, 0x12_0000, 0x22_0000, 64).unwrap();
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(c);
    assert_eq!(chan.status(c).status, Status::Complete);
    // A page nobody wrote: nothing happens.
    assert_eq!(chan.fail_at(0x30_0000, true), None);
    assert!(!chan.is_halted());
    // A write into b's second page (b spans two pages).
    assert_eq!(chan.fail_at(0x11_1000, true), Some(b));
    assert_eq!(chan.engine().terminated, 1, "the engine was stopped");
    assert!(chan.is_halted());
    assert_eq!(chan.status(a).status, Status::Complete);
    assert_eq!(chan.status(b).status, Status::Error(ErrorKind::WriteFailed));
    assert_eq!(chan.status(c).status, Status::Error(ErrorKind::Aborted));
    chan.reset().unwrap();
    // A read fault is pinned on a request that read the page.
    let d = copy(&mut chan, 0x13_0000, 0x23_0000, 64).unwrap();
    assert_eq!(
        chan.fail_at(0x13_0000, false),
        None,
        "d wrote that page, never read it"
    );
    assert_eq!(chan.fail_at(0x23_0000, false), Some(d));
    assert_eq!(chan.status(d).status, Status::Error(ErrorKind::ReadFailed));
}

#[test]
fn faults_are_pinned_on_the_last_address_history_requests_across_the_cookie_wrap() {
    use super::ADDRESS_HISTORY;
    let mut chan = Channel::new(Scripted::new(1 << 20, 4096));
    chan.set_next_cookie(cookie(i32::MAX - 9)).unwrap();
    // Request i writes page 0x100 + i; the cookies wrap after the tenth.
    let page = |i: u64| (0x100 + i) << 12;
    let n = ADDRESS_HISTORY as u64 + 8;
    let mut cookies = Vec::new();
    for i in 0..n {
        cookies.push(copy(&mut chan, page(i), 0x80_0000, 64).unwrap());
        if i % 16 == 15 {
            chan.issue_pending();
        }
    }
    assert_eq!(cookies[10], cookie(1), "the cookies wrapped");
    // The oldest eight are forgotten, the 64 after them each found.
    for i in 0..8 {
        assert_eq!(chan.culprit(page(i), true), None, "request {i}");
    }
    for i in 8..n {
        assert_eq!(
            chan.culprit(page(i), true),
            Some((cookies[i as usize], ErrorKind::WriteFailed)),
            "request {i}"
        );
    }
    // Batches remember the same way, split at the end of the slots.
    let ops: Vec<Op> = (0..40u64)
        .map(|i| Op::Copy {
            dst: page(0x200 + i),
            src: 0x80_0000,
            len: 64,
        })
        .collect();
    let b = batch(&mut chan, &ops).unwrap();
    assert_eq!(
        chan.culprit(page(0x200), true),
        Some((b.first, ErrorKind::WriteFailed))
    );
    assert_eq!(
        chan.culprit(page(0x227), true),
        Some((b.last, ErrorKind::WriteFailed))
    );
    // Cookies set anew: what the old ones touched is not pinned on new ones.
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(b.last);
    assert_eq!(chan.status(b.last).status, Status::Complete);
    chan.set_next_cookie(cookie(5000)).unwrap();
    assert_eq!(chan.culprit(page(0x227), true), None);
    let fresh = copy(&mut chan, page(0x300), 0x80_0000, 64).unwrap();
    assert_eq!(
        chan.culprit(page(0x300), true),
        Some((fresh, ErrorKind::WriteFailed))
    );
    assert_eq!(chan.culprit(page(0x226), true), None);
}

/// Issue 17, hole 8: a `SharedBuffer` unshared only when dropped, so
/// `mem::forget` ended the borrow with the buffer still shared (with an
/// IOMMU Hal, its pages stayed mapped for devices after being freed). The
/// handle now lives in the sharing call's frame and the closure only
/// borrows it (the `compile_fail` example on `SharedBuffer` shows it cannot
/// escape): returning from the closure, or unwinding out of it, unshares.
#[test]
fn a_shared_buffer_is_unshared_whatever_its_closure_does() {
    use crate::hal::{Direction, SharedBuffer};
    let shared_len = |len| FakeHal::shares().iter().any(|&(_, l, _)| l == len);
    let mut buffer = vec![0u8; 301];
    let dma = SharedBuffer::<FakeHal>::from_device(&mut buffer, Direction::Both, |shared| {
        assert!(shared_len(301));
        shared.dma_addr()
    })
    .unwrap();
    assert!(!shared_len(301), "unshared as {dma:#x}'s closure returned");
    let buffer = vec![0u8; 302];
    let unwound = std::panic::catch_unwind(|| {
        SharedBuffer::<FakeHal>::to_device(&buffer, |_| panic!("the closure fails"))
    });
    assert!(unwound.is_err());
    assert!(!shared_len(302), "unshared as the closure unwound");
}

#[test]
fn wait_all_reports_a_termination_and_a_failure_of_an_idle_channel() {
    let mut delay = CountingDelay::default();
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let c: Vec<_> = (0..3)
        .map(|i| copy(&mut chan, 0x10_0000 + i * 0x1000, 0x20_0000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(c[0]);
    chan.poll();
    chan.terminate();
    assert!(chan.is_idle());
    assert_eq!(
        chan.wait_all(&mut delay, Duration::from_millis(1)),
        Err(DmaError::FailedAt {
            cookie: c[1],
            kind: ErrorKind::Aborted
        }),
        "the termination ended c[1] and c[2]"
    );
    // Answered once: the next wait_all covers what comes after it.
    assert_eq!(chan.wait_all(&mut delay, Duration::from_millis(1)), Ok(()));
    chan.reset().unwrap();
    let d: Vec<_> = (0..3)
        .map(|i| copy(&mut chan, 0x10_0000 + i * 0x1000, 0x20_0000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.engine_mut().fault = Some(Fault {
        cookie: d[0],
        kind: ErrorKind::ReadFailed,
    });
    // The failure is seen before wait_all is called: the channel is idle.
    assert_eq!(chan.status(d[2]).status, Status::Error(ErrorKind::Aborted));
    assert!(chan.is_idle());
    assert_eq!(
        chan.wait_all(&mut delay, Duration::from_millis(1)),
        Err(DmaError::FailedAt {
            cookie: d[0],
            kind: ErrorKind::ReadFailed
        })
    );
    // A reset acknowledges a failure wait_all never reported.
    chan.reset().unwrap();
    let e = copy(&mut chan, 0x10_0000, 0x20_0000, 64).unwrap();
    chan.fail_at(0x10_0000, true);
    chan.reset().unwrap();
    let f = copy(&mut chan, 0x10_0000, 0x20_0000, 64).unwrap();
    chan.issue_pending();
    chan.engine_mut().complete_upto = Some(f);
    assert_eq!(chan.wait_all(&mut delay, Duration::from_millis(1)), Ok(()));
    assert_eq!(chan.status(e).status, Status::Error(ErrorKind::WriteFailed));
}

#[test]
fn a_fault_on_the_last_page_of_the_address_space_is_pinned() {
    let mut engine = Scripted::new(1 << 20, 64);
    engine.dma_mask = u64::MAX;
    let mut chan = Channel::new(engine);
    // SAFETY: the scripted engine never touches memory.
    let last_byte = unsafe { chan.fill(u64::MAX, 1, 0xab, PrepFlags::empty()) }.unwrap();
    let ending_there = copy(&mut chan, u64::MAX - 0xf, 0x10_0000, 16).unwrap();
    assert_eq!(chan.fail_at(u64::MAX, true), Some(ending_there));
    chan.reset().unwrap();
    // SAFETY: as above.
    let again = unsafe { chan.fill(u64::MAX, 1, 0xab, PrepFlags::empty()) }.unwrap();
    assert_ne!(again, last_byte);
    assert_eq!(chan.fail_at(!0xfff, true), Some(again));
    assert_eq!(
        chan.status(again).status,
        Status::Error(ErrorKind::WriteFailed)
    );
}

#[test]
fn a_fault_whose_engine_has_not_stopped_keeps_the_buffers_in_flight() {
    let mut engine = Scripted::new(1 << 20, 64);
    engine.dma_mask = u64::MAX;
    let mut chan = Channel::new(engine);
    let src = Dma::<FakeHal>::new(64).unwrap();
    let dst = Dma::<FakeHal>::new(64).unwrap();
    let page = dst.paddr();
    let transfer = chan
        .copy(dst, 0, src, 0, 64, PrepFlags::empty())
        .map_err(|e| e.error)
        .unwrap();
    let cookie = transfer.cookie();
    chan.issue_pending();
    chan.engine_mut().busy = true;
    chan.engine_mut().complete_upto = Some(cookie);
    assert_eq!(chan.fail_at(page, true), Some(cookie));
    assert!(chan.is_halted() && chan.is_stopping());
    // Its completion (taken by the stop) does not make it `Complete`.
    assert_eq!(chan.status(cookie).status, Status::InProgress);
    let mut delay = CountingDelay::default();
    assert_eq!(
        chan.wait_all(&mut delay, Duration::from_micros(10)),
        Err(DmaError::TimedOut)
    );
    let transfer = match transfer.finish(&mut chan) {
        Err(TransferError::Pending(t)) => t,
        _ => panic!("buffers handed back while the engine runs"),
    };
    assert_eq!(chan.reset(), Err(DmaError::Busy));
    chan.engine_mut().busy = false;
    chan.poll();
    assert!(!chan.is_stopping());
    match transfer.finish(&mut chan) {
        Err(TransferError::Failed { kind, .. }) => assert_eq!(kind, ErrorKind::WriteFailed),
        _ => panic!("the fault is reported once the engine stopped"),
    }
    assert_eq!(
        chan.wait_all(&mut delay, Duration::from_micros(10)),
        Err(DmaError::FailedAt {
            cookie,
            kind: ErrorKind::WriteFailed
        })
    );
    assert_eq!(chan.reset(), Ok(()));
}
