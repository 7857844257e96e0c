//! The cookies' laps: after `i32::MAX` requests the cookie values come
//! round again, and nothing a lap old may be read as this lap's.

use std::task::{Context, Poll};

use super::*;
use crate::engine::fake::counter;
use crate::engine::shared::{NoMasking, SharedChannel};

thread_local! {
    static TOLD: RefCell<Vec<(i32, Status)>> = const { RefCell::new(Vec::new()) };
}

fn tell(cookie: Cookie, status: Status, _: usize) {
    TOLD.with(|t| t.borrow_mut().push((cookie.get(), status)));
}

/// The in-flight window never wraps onto itself. A channel nobody polls
/// (the CPU engine's requests are done when `issue_pending` returns, so a
/// caller may never ask) could otherwise run a lap of cookies past its
/// last known completion, and the cookie rule would call a request that
/// never ran complete, and hand an owned transfer's buffers back. At the
/// window's edge the channel polls, and refuses (changing nothing) if
/// nothing has ended.
#[test]
fn the_in_flight_window_never_covers_every_cookie() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 256));
    // Cookie 10 last known complete, 8 the last assigned: every cookie
    // but 9 and 10 in flight.
    chan.set_window(10, 8);
    assert_eq!(copy(&mut chan, 0x1000, 0x2000, 64), Ok(cookie(9)));
    let op = Op::Copy {
        dst: 0x1000,
        src: 0x2000,
        len: 64,
    };
    assert_eq!(copy(&mut chan, 0x1000, 0x2000, 64), Err(DmaError::RingFull));
    assert_eq!(batch(&mut chan, &[op]), Err(DmaError::RingFull));
    assert_eq!(
        chan.snapshot(),
        Snapshot {
            last_completed: 10,
            last_used: 9
        }
    );
    assert_eq!(chan.engine().prepared.len(), 1, "only cookie 9 was written");
    for c in [9, 11, i32::MAX, 1, 8] {
        assert_eq!(chan.status(cookie(c)).status, Status::InProgress, "{c}");
    }
    // The engine has ended them: the poll the next request makes finds it.
    chan.test_engine().complete_upto = Some(cookie(9));
    assert_eq!(copy(&mut chan, 0x1000, 0x2000, 64), Ok(cookie(10)));
    assert_eq!(batch(&mut chan, &[op; 3]).map(|b| b.last), Ok(cookie(13)));
}

/// Before the first completion too, at most `i32::MAX - 1` requests are in
/// flight (0 counts as `i32::MAX`): with every cookie in flight the
/// window's edges would coincide, and a failure record or a stop could not
/// tell "none ran" from "all ran".
#[test]
fn before_any_completion_the_window_keeps_a_cookie_free() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 256));
    chan.set_window(0, i32::MAX - 2);
    assert_eq!(
        copy(&mut chan, 0x1000, 0x2000, 64),
        Ok(cookie(i32::MAX - 1))
    );
    assert_eq!(copy(&mut chan, 0x1000, 0x2000, 64), Err(DmaError::RingFull));
    let op = Op::Copy {
        dst: 0x1000,
        src: 0x2000,
        len: 64,
    };
    assert_eq!(batch(&mut chan, &[op]), Err(DmaError::RingFull));
    assert_eq!(chan.status(cookie(1)).status, Status::InProgress);
    chan.test_engine().complete_upto = Some(cookie(i32::MAX - 1));
    assert_eq!(copy(&mut chan, 0x1000, 0x2000, 64), Ok(cookie(i32::MAX)));
    assert_eq!(copy(&mut chan, 0x1000, 0x2000, 64), Ok(cookie(1)));
}

/// With all but one cookie in flight and none complete, a failure of
/// cookie 1 ends every later request `Aborted`, and a fault pinned on the
/// newest leaves none of those the engine never reached `Complete`.
#[test]
fn a_failure_with_the_window_full_ends_every_request_after_it() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_window(0, i32::MAX - 3);
    let a = copy(&mut chan, 0x1000, 0x2000, 64).unwrap();
    let b = copy(&mut chan, 0x1000, 0x2000, 64).unwrap();
    assert_eq!((a, b), (cookie(i32::MAX - 2), cookie(i32::MAX - 1)));
    chan.issue_pending();
    chan.test_engine().fault = Some(Fault {
        cookie: cookie(1),
        kind: ErrorKind::ReadFailed,
    });
    chan.poll();
    assert_eq!(
        chan.status(cookie(1)).status,
        Status::Error(ErrorKind::ReadFailed)
    );
    for c in [cookie(2), a, b] {
        assert_eq!(
            chan.status(c).status,
            Status::Error(ErrorKind::Aborted),
            "{c:?}"
        );
    }
    // A fault pinned on the newest, nothing ever completed.
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_fault_attribution(true);
    chan.set_window(0, i32::MAX - 5);
    let skipped: Vec<_> = (0..3u64)
        .map(|k| copy(&mut chan, 0x50_0000 + k * 0x1000, 0x21_0000, 64).unwrap())
        .collect();
    let toucher = copy(&mut chan, 0x40_0000, 0x22_0000, 64).unwrap();
    assert_eq!(toucher, cookie(i32::MAX - 1));
    chan.issue_pending();
    assert_eq!(chan.fail_at(0x40_0000, true), Some(toucher));
    for c in skipped.into_iter().chain([cookie(1), cookie(7)]) {
        assert_eq!(
            chan.status(c).status,
            Status::Error(ErrorKind::Aborted),
            "{c:?}"
        );
    }
}

/// A request that asked for an interrupt a lap ago covers nothing in this
/// one: `interrupt_after` still arms an interrupt for an awaited request,
/// or its task would never be woken.
#[test]
fn an_interrupt_a_lap_old_covers_no_request() {
    let mut engine = Scripted::new(1 << 20, 256);
    engine.more_caps = Capabilities::INTERRUPT | Capabilities::INTERRUPT_OP;
    let mut chan = Channel::new(engine);
    chan.set_next_cookie(cookie(10)).unwrap();
    // SAFETY: the scripted engine never touches memory.
    let irq = unsafe { chan.prep_copy(0x10_0000, 0x20_0000, 64, PrepFlags::INTERRUPT) }.unwrap();
    assert_eq!(irq, cookie(10));
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(irq);
    assert_eq!(chan.status(irq).status, Status::Complete);
    // About 2^31 requests later, none asking for an interrupt.
    chan.set_next_cookie(cookie(i32::MAX - 1)).unwrap();
    for k in 0..22u64 {
        copy(
            &mut chan,
            0x100_0000 + k * 0x1000,
            0x200_0000 + k * 0x1000,
            64,
        )
        .unwrap();
    }
    assert_eq!(chan.snapshot().last_used, 20, "MAX - 1, MAX, 1..=20");
    let shared: SharedChannel<Scripted, NoMasking> = SharedChannel::new(chan);
    let awaited = cookie(5);
    let (count, waker) = counter();
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(shared.completion(awaited));
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    let guard = shared.lock();
    let armed = guard
        .engine()
        .issued
        .iter()
        .skip_while(|(c, _, _)| *c != awaited)
        .any(|(_, _, n)| n.is_some_and(|n| n.interrupt));
    assert!(armed, "no interrupt follows the awaited request");
}

/// A failure recorded a lap ago names cookies that have since been
/// assigned again: those requests completed, and read `Complete`, in
/// `status` and in their callbacks; those not assigned again still read
/// the failure.
#[test]
fn a_failure_a_lap_old_marks_no_request_of_this_lap() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 256));
    for k in 0..5u64 {
        copy(
            &mut chan,
            0x10_0000 + k * 0x1000,
            0x20_0000 + k * 0x1000,
            64,
        )
        .unwrap();
    }
    chan.issue_pending();
    chan.test_engine().fault = Some(Fault {
        cookie: cookie(3),
        kind: ErrorKind::ReadFailed,
    });
    chan.poll();
    assert_eq!(
        chan.status(cookie(3)).status,
        Status::Error(ErrorKind::ReadFailed)
    );
    chan.reset().unwrap();
    // About 2^31 good requests later: cookies `i32::MAX`, then 1 to 3.
    chan.set_next_cookie(cookie(i32::MAX)).unwrap();
    let mut cookies = Vec::new();
    for k in 0..4u64 {
        let op = Op::Copy {
            dst: 0x30_0000 + k * 0x1000,
            src: 0x40_0000 + k * 0x1000,
            len: 64,
        };
        let cb = Callback {
            func: tell,
            context: 0,
        };
        // SAFETY: the scripted engine never touches memory.
        cookies.push(unsafe { chan.prep(op, PrepFlags::empty(), Some(cb)) }.unwrap());
    }
    assert_eq!(cookies[3], cookie(3));
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(cookie(3));
    chan.poll();
    let told = TOLD.with(|t| t.borrow().clone());
    assert!(
        told.iter().all(|(_, s)| *s == Status::Complete),
        "callbacks told: {told:?}"
    );
    assert_eq!(chan.status(cookie(3)).status, Status::Complete);
    // Cookies 4 and 5, not assigned again, are still the old lap's.
    assert_eq!(
        chan.status(cookie(4)).status,
        Status::Error(ErrorKind::Aborted)
    );
}
