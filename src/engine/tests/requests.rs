//! Requests: cookies in order and across the wrap, long requests split, fills keeping their phase, shared buffers unshared.

use super::*;

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
    chan.test_engine().complete_upto = Some(a);
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
    chan.test_engine().complete_upto = Some(b);
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
    chan.test_engine().complete_upto = Some(c[1]);
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
    chan.test_engine().complete_upto = Some(c[3]);
    assert!(c.iter().all(|&k| chan.status(k).status == Status::Complete));
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
