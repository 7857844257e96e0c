//! Host tests of the edu engine against the fake device: copies split into
//! device transfers, refusals with the right error, and a device that never
//! goes idle.

use super::EduEngine;
use super::fake::FakeEdu;
use crate::engine::{
    Channel, Cookie, DmaError, Engine, EngineError, ErrorKind, Op, PrepFlags, Status, TransferError,
};
use crate::hal::Dma;
use crate::hal::fake::FakeHal;

type Edu = EduEngine<FakeHal, FakeEdu>;

fn channel(latency: u32) -> Channel<Edu> {
    // SAFETY: a fake device, which moves only the test's own memory and
    // drops no address bit.
    Channel::new(unsafe { EduEngine::new(FakeEdu::new(latency), u64::MAX) }.expect("idle device"))
}

fn pattern(len: usize) -> Dma<FakeHal> {
    let mut buf = Dma::<FakeHal>::new(len).unwrap();
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    buf
}

#[test]
fn copies_go_through_the_device_buffer_in_pieces() {
    let mut chan = channel(3);
    let src = pattern(9000);
    let dst = Dma::<FakeHal>::new(9000).unwrap();
    // SAFETY: buffers we own, read after the request ended.
    let cookie =
        unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 9000, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    let mut polls = 0;
    while chan.status(cookie).status == Status::InProgress {
        polls += 1;
        assert!(polls < 10_000, "never completed");
    }
    assert_eq!(chan.status(cookie).status, Status::Complete);
    assert_eq!(dst.as_slice(), src.as_slice());
    assert_eq!(
        chan.engine().device().transfers(),
        6,
        "three pieces of at most 4095 bytes, two transfers each"
    );
}

#[test]
fn what_the_device_cannot_do_is_not_supported_not_ring_full() {
    let mut chan = channel(1);
    let buf = Dma::<FakeHal>::new(64).unwrap();
    let fill = Op::Fill {
        dst: buf.paddr(),
        len: 64,
        pattern: 1,
    };
    assert_eq!(
        // SAFETY: refused, nothing runs.
        unsafe { chan.test_engine().prep(Cookie::FIRST, fill, None) },
        Err(EngineError::NotSupported)
    );
    // SAFETY: refused, nothing runs.
    let zero = unsafe { chan.zero(buf.paddr(), 64, PrepFlags::empty()) };
    assert_eq!(zero, Err(DmaError::NotSupported));
}

#[test]
fn a_stuck_device_keeps_the_buffers_until_it_has_stopped() {
    let mut chan = channel(3);
    let src = pattern(100);
    let dst = Dma::<FakeHal>::new(100).unwrap();
    let transfer = chan
        .copy(dst, 0, src, 0, 100, PrepFlags::empty())
        .map_err(|e| e.error)
        .unwrap();
    chan.issue_pending();
    // Into the device's buffer, then out: stuck on the write to RAM.
    while chan.engine().device().transfers() < 2 {
        chan.poll();
    }
    chan.engine().device().stuck.set(true);
    let before = chan.engine().register_accesses();
    chan.terminate();
    let accesses = chan.engine().register_accesses() - before;
    assert!(
        accesses <= 2,
        "terminate asks, never spins ({accesses} accesses)"
    );
    assert!(chan.is_halted() && chan.is_stopping());
    // SAFETY: refused (the engine takes no new work), nothing runs.
    let refused = unsafe {
        chan.test_engine().prep(
            Cookie::FIRST,
            Op::Copy {
                dst: 0x1000,
                src: 0x2000,
                len: 8,
            },
            None,
        )
    };
    assert_eq!(refused, Err(EngineError::Halted), "no new work meanwhile");
    let mut transfer = transfer;
    for _ in 0..100 {
        chan.poll();
        chan.terminate();
        assert_eq!(transfer.status(&mut chan), Ok(Status::InProgress));
        transfer = match transfer.finish(&mut chan) {
            Err(TransferError::Pending(t)) => t,
            _ => panic!("buffers handed back while the device may write them"),
        };
    }
    assert_eq!(chan.reset(), Err(DmaError::Busy), "not stopped: no reset");
    // The device finishes its transfer; the channel sees it stop.
    chan.engine().device().stuck.set(false);
    let (dst, src) = loop {
        chan.poll();
        match transfer.finish(&mut chan) {
            Err(TransferError::Pending(t)) => transfer = t,
            Ok(buffers) => break buffers,
            Err(_) => panic!("the last transfer ended: the copy completed"),
        }
    };
    assert!(!chan.is_stopping());
    let src = src.unwrap();
    assert_eq!(dst.as_slice(), src.as_slice(), "every byte landed");
    assert_eq!(chan.reset(), Ok(()));
    // SAFETY: buffers we own, read after the request ended.
    let again = unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 100, PrepFlags::empty()) };
    chan.issue_pending();
    while chan.status(again.unwrap()).status == Status::InProgress {}
}

#[test]
fn a_stuck_transfer_into_the_device_aborts_its_request_when_it_ends() {
    let mut chan = channel(1);
    let src = pattern(100);
    let dst = Dma::<FakeHal>::new(100).unwrap();
    chan.engine().device().stuck.set(true);
    let transfer = chan
        .copy(dst, 0, src, 0, 100, PrepFlags::empty())
        .map_err(|e| e.error)
        .unwrap();
    chan.issue_pending();
    chan.terminate();
    let transfer = match transfer.finish(&mut chan) {
        Err(TransferError::Pending(t)) => t,
        _ => panic!("buffers handed back while the device may read them"),
    };
    chan.engine().device().stuck.set(false);
    chan.poll();
    match transfer.finish(&mut chan) {
        Err(TransferError::Failed { kind, .. }) => assert_eq!(kind, ErrorKind::Aborted),
        _ => panic!("the write to RAM never started: aborted"),
    }
    assert_eq!(chan.engine().device().transfers(), 1);
}
