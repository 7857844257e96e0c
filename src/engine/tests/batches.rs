//! Batches: whole or not at all, consecutive cookies across the wrap.

use super::*;

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
    chan.test_engine().complete_upto = Some(batch.last);
    assert_eq!(chan.status(batch.first).status, Status::Complete);
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
