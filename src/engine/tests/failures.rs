//! Failures and stops: a fault ends its request and aborts the rest, terminate, timeouts, what `wait_all` reports, an engine slow to stop.

use super::*;

#[test]
fn a_fault_fails_one_request_and_aborts_the_rest_until_reset() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let c: Vec<Cookie> = (0..5)
        .map(|i| copy(&mut chan, 0x100000 * (i + 1), 0x10000, 64).unwrap())
        .collect();
    chan.issue_pending();
    let late = copy(&mut chan, 0x900000, 0x10000, 64).unwrap();
    chan.test_engine().complete_upto = Some(c[0]);
    chan.test_engine().fault = Some(Fault {
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
    chan.test_engine().complete_upto = Some(next);
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
    chan.test_engine().complete_upto = Some(c[1]);
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
fn wait_all_names_the_request_that_failed_and_why() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let cookies: Vec<_> = (0..4)
        .map(|i| copy(&mut chan, 0x10_0000 + i * 0x1000, 0x20_0000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(cookies[0]);
    chan.test_engine().fault = Some(Fault {
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
    chan.test_engine().complete_upto = Some(more[0]);
    chan.poll();
    chan.terminate();
    assert!(chan.is_idle(), "terminated: nothing left to wait for");
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let more: Vec<_> = (0..3)
        .map(|i| copy(&mut chan, 0x10_0000 + i * 0x1000, 0x20_0000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(more[0]);
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

#[test]
fn wait_all_reports_a_termination_and_a_failure_of_an_idle_channel() {
    let mut delay = CountingDelay::default();
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.set_fault_attribution(true);
    let c: Vec<_> = (0..3)
        .map(|i| copy(&mut chan, 0x10_0000 + i * 0x1000, 0x20_0000, 64).unwrap())
        .collect();
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(c[0]);
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
    chan.test_engine().fault = Some(Fault {
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
    chan.test_engine().complete_upto = Some(f);
    assert_eq!(chan.wait_all(&mut delay, Duration::from_millis(1)), Ok(()));
    assert_eq!(chan.status(e).status, Status::Error(ErrorKind::WriteFailed));
}

#[test]
fn a_fault_whose_engine_has_not_stopped_keeps_the_buffers_in_flight() {
    let mut engine = Scripted::new(1 << 20, 64);
    engine.dma_mask = u64::MAX;
    let mut chan = Channel::new(engine);
    chan.set_fault_attribution(true);
    let src = Dma::<FakeHal>::new(64).unwrap();
    let dst = Dma::<FakeHal>::new(64).unwrap();
    let page = dst.paddr();
    let transfer = chan
        .copy(dst, 0, src, 0, 64, PrepFlags::empty())
        .map_err(|e| e.error)
        .unwrap();
    let cookie = transfer.cookie();
    chan.issue_pending();
    chan.test_engine().busy = true;
    chan.test_engine().complete_upto = Some(cookie);
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
    chan.test_engine().busy = false;
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
