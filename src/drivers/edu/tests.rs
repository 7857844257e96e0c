//! Host tests of the edu engine against the fake device: copies split into
//! device transfers, refusals with the right error, and a device that never
//! goes idle.

use super::EduEngine;
use super::fake::FakeEdu;
use crate::engine::{Channel, Cookie, DmaError, Engine, EngineError, Op, PrepFlags, Status};
use crate::hal::Dma;
use crate::hal::fake::FakeHal;
use crate::mmio::Registers;

type Edu = EduEngine<FakeHal, FakeEdu>;

fn channel(latency: u32) -> Channel<Edu> {
    Channel::new(EduEngine::new(FakeEdu::new(latency), u64::MAX).expect("idle device"))
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
    // SAFETY: the fake device's transfer count, not a register.
    let transfers = unsafe { chan.engine().regs() }.transfers();
    assert_eq!(
        transfers, 6,
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
    // SAFETY: the buffer outlives the channel; a fill is refused, so
    // nothing runs.
    let refused = unsafe { chan.engine_mut().prep(Cookie::FIRST, fill, None) };
    assert_eq!(refused, Err(EngineError::NotSupported));
    // SAFETY: refused, nothing runs.
    let zero = unsafe { chan.zero(buf.paddr(), 64, PrepFlags::empty()) };
    assert_eq!(zero, Err(DmaError::NotSupported));
}

#[test]
fn a_device_that_never_goes_idle_is_waited_for_a_bounded_time() {
    let mut engine: Edu = EduEngine::new(FakeEdu::new(1), u64::MAX).unwrap();
    engine.idle_polls = 1000;
    let mut chan = Channel::new(engine);
    let src = pattern(100);
    let dst = Dma::<FakeHal>::new(100).unwrap();
    // SAFETY: the buffers outlive the channel; the fake device writes them
    // only when a transfer finishes, which the test controls.
    let cookie =
        unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 100, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    // SAFETY: the fake device's test controls and access count: nothing
    // is written to the device, no status read.
    let fake = unsafe { chan.engine().regs() };
    fake.stuck.set(true);
    let before = fake.accesses();
    chan.terminate();
    // SAFETY: as above.
    let reads = unsafe { chan.engine().regs() }.accesses() - before;
    assert!(
        (1000..1100).contains(&reads),
        "terminate gave up after its bound ({reads} accesses)"
    );
    assert_eq!(
        chan.status(cookie).status,
        Status::Error(crate::engine::ErrorKind::Aborted)
    );
    let copy = Op::Copy {
        dst: dst.paddr(),
        src: src.paddr(),
        len: 8,
    };
    // SAFETY: the buffers outlive the channel; the halted engine refuses
    // the request, so nothing runs.
    let refused = unsafe { chan.engine_mut().prep(Cookie::FIRST, copy, None) };
    assert_eq!(
        refused,
        Err(EngineError::Halted),
        "a wedged device takes no new work"
    );
    assert_eq!(chan.reset(), Err(DmaError::TimedOut));
    // The device comes back: a reset sees it idle and the channel works.
    // SAFETY: the fake device's test control, not a register.
    unsafe { chan.engine().regs() }.stuck.set(false);
    assert_eq!(chan.reset(), Ok(()));
    // SAFETY: as above.
    let again =
        unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 100, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    while chan.status(again).status == Status::InProgress {}
    assert_eq!(dst.as_slice(), src.as_slice());
}
