//! Fault attribution: an IOMMU fault pinned on the request that touched the page.

use super::*;

#[test]
fn an_iommu_fault_is_pinned_on_the_request_that_touched_the_page() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_fault_attribution(true);
    let a = copy(&mut chan, 0x10_0000, 0x20_0000, 64).unwrap();
    let b = copy(&mut chan, 0x11_0000, 0x21_0000, 0x1800).unwrap();
    let c = copy(&mut chan, 0x12_0000, 0x22_0000, 64).unwrap();
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(c);
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
    chan.set_fault_attribution(true);
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
    chan.test_engine().complete_upto = Some(b.last);
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

#[test]
fn a_fault_on_the_last_page_of_the_address_space_is_pinned() {
    let mut engine = Scripted::new(1 << 20, 64);
    engine.dma_mask = u64::MAX;
    let mut chan = Channel::new(engine);
    chan.set_fault_attribution(true);
    // SAFETY: the scripted engine never touches memory.
    let last_byte = unsafe { chan.fill(u64::MAX, 1, 0xab, PrepFlags::empty()) }.unwrap();
    let ending_there = copy(&mut chan, u64::MAX - 0xf, 0x10_0000, 16).unwrap();
    // Both in flight wrote the page: the older is pinned, the newer
    // aborted.
    assert_eq!(chan.fail_at(u64::MAX, true), Some(last_byte));
    assert_eq!(
        chan.status(ending_there).status,
        Status::Error(ErrorKind::Aborted)
    );
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
fn without_attribution_no_fault_is_pinned_and_turning_it_on_forgets_the_old_requests() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    assert!(!chan.fault_attribution(), "off by default");
    let unseen = copy(&mut chan, 0x10_0000, 0x20_0000, 64).unwrap();
    assert_eq!(chan.fail_at(0x10_0000, true), None);
    assert!(!chan.is_halted(), "a fault nobody can pin changes nothing");
    chan.set_fault_attribution(true);
    let seen = copy(&mut chan, 0x11_0000, 0x21_0000, 64).unwrap();
    assert_eq!(chan.culprit(0x10_0000, true), None, "prepared while off");
    assert_eq!(
        chan.culprit(0x11_0000, true),
        Some((seen, ErrorKind::WriteFailed))
    );
    // Off again, then a request whose cookie is remembered from before.
    chan.set_fault_attribution(false);
    assert_eq!(chan.culprit(0x11_0000, true), None);
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(seen);
    assert_eq!(chan.status(seen).status, Status::Complete);
    chan.set_next_cookie(seen).unwrap();
    let reused = copy(&mut chan, 0x12_0000, 0x22_0000, 64).unwrap();
    assert_eq!(reused, seen, "the cookie was used again");
    chan.set_fault_attribution(true);
    // The slot of `seen` held 0x11_0000's copy: on again, it is forgotten.
    assert_eq!(chan.culprit(0x11_0000, true), None);
    assert_eq!(chan.culprit(0x12_0000, true), None, "prepared while off");
    assert_ne!(unseen, seen);
}

#[test]
fn a_request_the_engine_refuses_is_never_pinned() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_fault_attribution(true);
    let done = copy(&mut chan, 0x10_0000, 0x20_0000, 64).unwrap();
    chan.test_engine().refuse = Some(EngineError::RingFull);
    assert_eq!(
        copy(&mut chan, 0x11_0000, 0x21_0000, 64),
        Err(DmaError::RingFull)
    );
    assert_eq!(chan.snapshot().last_used, done.get(), "no cookie taken");
    // Its op may sit in the slot of the cookie it would have had, which
    // is not one of the remembered requests'.
    assert_eq!(chan.fail_at(0x11_0000, true), None);
    assert!(!chan.is_halted());
    chan.test_engine().refuse = None;
    let next = copy(&mut chan, 0x12_0000, 0x22_0000, 64).unwrap();
    assert_eq!(next, done.next(), "the refused request's cookie, used now");
    assert_eq!(chan.culprit(0x11_0000, true), None);
    assert_eq!(chan.fail_at(0x12_0000, true), Some(next));
}

#[test]
fn a_batch_across_the_cookie_wrap_is_remembered_in_its_cookies_slots() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_fault_attribution(true);
    chan.set_next_cookie(cookie(i32::MAX - 1)).unwrap();
    // Cookies i32::MAX - 1 (slot 126), i32::MAX (slot 127), then 1 (slot
    // 1, not 0) and 2.
    let page = |i: u64| (0x100 + i) << 12;
    let ops: Vec<Op> = (0..4u64)
        .map(|i| Op::Copy {
            dst: page(i),
            src: 0x80_0000,
            len: 64,
        })
        .collect();
    let b = batch(&mut chan, &ops).unwrap();
    assert_eq!(b.last, cookie(2), "the cookies wrapped");
    for (i, c) in [i32::MAX - 1, i32::MAX, 1, 2].into_iter().enumerate() {
        assert_eq!(
            chan.culprit(page(i as u64), true),
            Some((cookie(c), ErrorKind::WriteFailed)),
            "request {i}"
        );
    }
}

/// A source with no faults: the hook is only installed.
struct NoFaults;

impl FaultSource for NoFaults {
    fn take_fault_of(&self, _: crate::iommu::SourceId) -> Option<crate::iommu::DmaFault> {
        None
    }
}

#[test]
fn a_hook_keeps_attribution_on_while_it_is_installed() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let source = NoFaults;
    // SAFETY: the source outlives the hook (removed below) and is used by
    // nobody else.
    unsafe {
        chan.set_fault_hook(Some(FaultHook::new(
            &source,
            crate::iommu::SourceId::new(0, 3, 0),
        )))
    };
    assert!(chan.fault_attribution(), "a hook turns it on");
    chan.set_fault_attribution(false);
    assert!(chan.fault_attribution(), "and keeps it on");
    let c = copy(&mut chan, 0x10_0000, 0x20_0000, 64).unwrap();
    assert_eq!(
        chan.culprit(0x10_0000, true),
        Some((c, ErrorKind::WriteFailed))
    );
    // SAFETY: removing a hook.
    unsafe { chan.set_fault_hook(None) };
    assert!(chan.fault_attribution(), "removing the hook leaves it");
    chan.set_fault_attribution(false);
    assert!(!chan.fault_attribution());
}

/// A source that hands out the faults it was given, oldest first.
struct Faults(RefCell<std::collections::VecDeque<crate::iommu::DmaFault>>);

impl FaultSource for Faults {
    fn take_fault_of(&self, _: crate::iommu::SourceId) -> Option<crate::iommu::DmaFault> {
        self.0.borrow_mut().pop_front()
    }
}

/// Two requests in flight write a page the unit refuses: the fault is
/// pinned on the older (the engine runs in order, so it faulted first),
/// and neither reads `Complete`. Pinned on the newer, the older read
/// `Complete`.
#[test]
fn a_fault_is_pinned_on_the_oldest_request_in_flight_that_touched_the_page() {
    let device = crate::iommu::SourceId::new(0, 3, 0);
    let page = 0x40_0000u64;
    let fault = crate::iommu::DmaFault {
        source: device,
        address: page,
        write: true,
        reason: 5,
    };
    let source = Faults(RefCell::new([fault, fault].into()));
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    // SAFETY: the source outlives the hook (removed below) and is used by
    // nobody else.
    unsafe { chan.set_fault_hook(Some(FaultHook::new(&source, device))) };
    let first = copy(&mut chan, page, 0x20_0000, 64).unwrap();
    for k in 0..3u64 {
        copy(&mut chan, 0x50_0000 + k * 0x1000, 0x21_0000, 64).unwrap();
    }
    let last = copy(&mut chan, page + 0x800, 0x22_0000, 64).unwrap();
    chan.issue_pending();
    // The device went on (a refused write is dropped) and did them all.
    chan.test_engine().complete_upto = Some(last);
    assert_eq!(
        chan.status(first).status,
        Status::Error(ErrorKind::WriteFailed)
    );
    assert_eq!(chan.status(last).status, Status::Error(ErrorKind::Aborted));
    // SAFETY: removing a hook.
    unsafe { chan.set_fault_hook(None) };
}

/// A fault pinned on a request the engine had not reached: the engine
/// stops where it was, and the requests between never ran, so they end
/// `Aborted`, not `Complete`.
#[test]
fn requests_the_engine_never_reached_do_not_read_complete() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_fault_attribution(true);
    let page = 0x40_0000u64;
    let done = copy(&mut chan, 0x60_0000, 0x20_0000, 64).unwrap();
    let skipped: Vec<_> = (0..3u64)
        .map(|k| copy(&mut chan, 0x50_0000 + k * 0x1000, 0x21_0000, 64).unwrap())
        .collect();
    let toucher = copy(&mut chan, page, 0x22_0000, 64).unwrap();
    chan.issue_pending();
    // The engine did the first request only when it stopped.
    chan.test_engine().complete_upto = Some(done);
    assert_eq!(chan.fail_at(page, true), Some(toucher));
    assert_eq!(chan.engine().terminated, 1, "the engine was stopped");
    assert_eq!(chan.status(done).status, Status::Complete);
    for c in skipped {
        assert_eq!(
            chan.status(c).status,
            Status::Error(ErrorKind::Aborted),
            "{c:?}"
        );
    }
    assert_eq!(
        chan.status(toucher).status,
        Status::Error(ErrorKind::WriteFailed)
    );
}

/// The engine reported every request done in the poll that found a fault
/// on a page only the last touched: the ones before it ran, and read
/// `Complete` (the stop records the failure from what that poll
/// reported, not from the completions the channel had applied before).
#[test]
fn requests_the_engine_finished_before_the_cause_read_complete() {
    let device = crate::iommu::SourceId::new(0, 3, 0);
    let page = 0x40_0000u64;
    let fault = crate::iommu::DmaFault {
        source: device,
        address: page,
        write: true,
        reason: 5,
    };
    let source = Faults(RefCell::new([fault].into()));
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    // SAFETY: the source outlives the hook (removed below) and is used by
    // nobody else.
    unsafe { chan.set_fault_hook(Some(FaultHook::new(&source, device))) };
    let before: Vec<_> = (0..4u64)
        .map(|k| copy(&mut chan, 0x50_0000 + k * 0x1000, 0x21_0000, 64).unwrap())
        .collect();
    let cause = copy(&mut chan, page, 0x22_0000, 64).unwrap();
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(cause);
    assert_eq!(
        chan.status(cause).status,
        Status::Error(ErrorKind::WriteFailed)
    );
    for c in before {
        assert_eq!(chan.status(c).status, Status::Complete, "{c:?}");
    }
    // SAFETY: removing a hook.
    unsafe { chan.set_fault_hook(None) };
}

/// A fault pinned while the device takes time to stop: what the first
/// `terminate` reported done is kept until the device has stopped (the
/// next reports only what is new), so those requests read `Complete`.
#[test]
fn what_a_slow_stop_reported_done_stays_complete() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_fault_attribution(true);
    let page = 0x40_0000u64;
    let done: Vec<_> = (0..3u64)
        .map(|k| copy(&mut chan, 0x50_0000 + k * 0x1000, 0x21_0000, 64).unwrap())
        .collect();
    let toucher = copy(&mut chan, page, 0x22_0000, 64).unwrap();
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(done[2]);
    chan.test_engine().busy = true;
    assert_eq!(chan.fail_at(page, true), Some(toucher));
    assert!(chan.is_stopping());
    chan.test_engine().busy = false;
    chan.poll();
    assert!(!chan.is_stopping());
    assert_eq!(
        chan.status(toucher).status,
        Status::Error(ErrorKind::WriteFailed)
    );
    for c in done {
        assert_eq!(chan.status(c).status, Status::Complete, "{c:?}");
    }
}
