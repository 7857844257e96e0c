//! Bad input: every refusal says why and changes nothing (a model of the channel under hostile calls, sums near the top of the address space).

use super::*;

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
fn engine_refusals_keep_their_meaning() {
    for (refusal, error) in [
        (EngineError::RingFull, DmaError::RingFull),
        (EngineError::Halted, DmaError::Halted),
        (EngineError::NotSupported, DmaError::NotSupported),
    ] {
        let mut chan = Channel::new(Scripted::new(1 << 20, 64));
        chan.test_engine().refuse = Some(refusal);
        assert_eq!(copy(&mut chan, 0x1000, 0x2000, 16), Err(error));
        assert_eq!(chan.snapshot().last_used, 0, "no cookie consumed");
    }
}

#[test]
fn sums_near_the_top_of_the_address_space_are_checked() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    chan.test_engine().dma_mask = u64::MAX;
    // A new channel reads the limits once: build it with the mask set.
    let mut chan = Channel::new(core::mem::take(chan.test_engine()));
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
