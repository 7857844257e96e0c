//! Host tests of the channel: a scripted engine for the bookkeeping
//! (splitting, cookies, failures, termination, callbacks) and the CPU engine
//! over host memory for real bytes.

use std::cell::RefCell;
use std::time::Duration;

use embedded_hal::delay::DelayNs;
use proptest::strategy::Strategy;

use super::fake::{Scripted, edge_copy, hostile_u64};
use super::*;
use crate::drivers::cpu::CpuEngine;
use crate::hal::fake::FakeHal;
use crate::hal::{Dma, HalError, PAGE_SIZE};

/// A delay that only counts how long it was asked to wait.
#[derive(Default)]
struct CountingDelay {
    waited_ns: u64,
}

impl DelayNs for CountingDelay {
    fn delay_ns(&mut self, ns: u32) {
        self.waited_ns += ns as u64;
    }
}

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
fn cpu_engine_copies_fills_and_zeroes_real_bytes() {
    let mut chan: Channel<CpuEngine<FakeHal>> = Channel::new(CpuEngine::new());
    let mut src = Dma::<FakeHal>::new(3 * PAGE_SIZE).unwrap();
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let mut dst = Dma::<FakeHal>::new(3 * PAGE_SIZE).unwrap();
    dst.as_mut_slice().fill(0xee);
    let t = chan.copy(dst, 5, src, 1, 8000, PrepFlags::empty()).unwrap();
    assert_eq!(
        t.status(&mut chan),
        Ok(Status::InProgress),
        "nothing runs before issue_pending"
    );
    chan.issue_pending();
    let (dst, src) = t.finish(&mut chan).unwrap();
    let src = src.unwrap();
    assert_eq!(&dst.as_slice()[5..8005], &src.as_slice()[1..8001]);
    assert!(
        dst.as_slice()[..5]
            .iter()
            .chain(&dst.as_slice()[8005..])
            .all(|&b| b == 0xee),
        "guard bytes"
    );

    let t = chan
        .fill_buffer(dst, 3, 21, 0x1122_3344_5566_7788, PrepFlags::empty())
        .unwrap();
    let mut delay = CountingDelay::default();
    let (mut dst, _) = t
        .wait(&mut chan, &mut delay, Duration::from_millis(1))
        .unwrap();
    let expect: Vec<u8> = (0..21)
        .map(|i| 0x1122_3344_5566_7788u64.to_le_bytes()[i % 8])
        .collect();
    assert_eq!(&dst.as_slice()[3..24], &expect[..]);
    assert_eq!(
        dst.as_slice()[2],
        0xee,
        "the byte before the fill is untouched"
    );

    let paddr = dst.paddr();
    // SAFETY: `dst` is ours and not otherwise used until the request ends.
    let c = unsafe { chan.zero(paddr + 1, 4095, PrepFlags::empty()) }.unwrap();
    chan.wait(c, &mut delay, Duration::from_millis(1)).unwrap();
    assert!(dst.as_slice()[1..4096].iter().all(|&b| b == 0));
    assert_ne!(dst.as_slice()[4096], 0);
    dst.as_mut_slice()[0] = 1;
}

#[test]
fn owned_transfers_return_their_buffers_on_errors() {
    let mut chan: Channel<CpuEngine<FakeHal>> = Channel::new(CpuEngine::new());
    let live = FakeHal::live_pages();
    let src = Dma::<FakeHal>::new(100).unwrap();
    let dst = Dma::<FakeHal>::new(100).unwrap();
    let err = chan
        .copy(dst, 50, src, 0, 51, PrepFlags::empty())
        .unwrap_err();
    assert_eq!(err.error, DmaError::OutOfBounds);
    let err = chan
        .copy(err.dst, 0, err.src.unwrap(), 0, 0, PrepFlags::empty())
        .unwrap_err();
    assert_eq!(err.error, DmaError::ZeroLength);
    drop(err);
    assert_eq!(FakeHal::live_pages(), live, "buffers handed back and freed");
    let mut other: Channel<CpuEngine<FakeHal>> = Channel::new(CpuEngine::new());
    let t = chan
        .fill_buffer(
            Dma::<FakeHal>::new(64).unwrap(),
            0,
            64,
            7,
            PrepFlags::empty(),
        )
        .unwrap();
    let t = match t.finish(&mut other) {
        Err(TransferError::WrongChannel(t)) => t,
        other => panic!("expected WrongChannel, got {other:?}"),
    };
    let t = match t.finish(&mut chan) {
        Err(TransferError::Pending(t)) => t,
        other => panic!("expected Pending, got {other:?}"),
    };
    chan.issue_pending();
    assert!(t.finish(&mut chan).is_ok());
}

mod registry {
    use std::cell::RefCell;
    use std::time::Duration;

    use super::CountingDelay;
    use crate::drivers::cpu::CpuEngine;
    use crate::engine::registry::{
        ChannelHandle, ClientId, DmaChannel, Event, EventCallback, Registry, RegistryError,
    };
    use crate::engine::{Channel, Status};
    use crate::hal::Dma;
    use crate::hal::fake::FakeHal;

    thread_local! {
        static EVENTS: RefCell<Vec<(usize, Event)>> = const { RefCell::new(Vec::new()) };
    }

    fn record(client: ClientId, event: Event, context: usize) {
        let _ = client;
        EVENTS.with(|e| e.borrow_mut().push((context, event)));
    }

    fn take_events() -> Vec<(usize, Event)> {
        EVENTS.with(|e| std::mem::take(&mut *e.borrow_mut()))
    }

    /// `n` CPU-engine channels over the fake HAL.
    fn cpu_channels(n: usize) -> Vec<Channel<CpuEngine<FakeHal>>> {
        (0..n).map(|_| Channel::new(CpuEngine::new())).collect()
    }

    fn cb(context: usize) -> EventCallback {
        EventCallback {
            func: record,
            context,
        }
    }

    /// A slot's generation never wraps: a slot used up is left empty, so a
    /// handle of its last use stays refused.
    #[test]
    fn a_slot_whose_generations_ran_out_is_never_used_again() {
        use super::super::registry::RETIRED;
        let mut chans = cpu_channels(2);
        let mut it = chans.iter_mut();
        let reg: Registry<'_, 2, 2> = Registry::new();
        reg.set_generations(RETIRED - 1);
        let a = reg.register_client(cb(1)).unwrap();
        reg.request_channels(a, 1).unwrap();
        let h = reg.add_channel(it.next().unwrap()).unwrap();
        let taken = reg.remove_channel(h).unwrap();
        // Slot 0 is used up: the channel comes back in slot 1.
        let again = reg.add_channel(taken).unwrap();
        assert_ne!(again, h);
        assert_eq!(reg.channel(a, h).err(), Some(RegistryError::Unknown));
        assert!(reg.channel(a, again).is_ok());
        assert_eq!(
            reg.add_channel(it.next().unwrap()).err(),
            Some(RegistryError::Full),
            "one slot left, in use"
        );
        reg.unregister_client(a).unwrap();
        let b = reg.register_client(cb(2)).unwrap();
        let c = reg.register_client(cb(3));
        assert_eq!(
            c.err(),
            Some(RegistryError::Full),
            "client slot 0 is used up"
        );
        assert_ne!(a, b);
        assert_eq!(reg.request_channels(a, 1), Err(RegistryError::Unknown));
        take_events();
    }

    #[test]
    fn channels_go_to_clients_as_they_appear_and_come_back() {
        let mut chans = cpu_channels(3);
        let mut it = chans.iter_mut();
        let reg: Registry<'_, 4, 4> = Registry::new();
        let a = reg.register_client(cb(1)).unwrap();
        let b = reg.register_client(cb(2)).unwrap();
        reg.request_channels(a, 2).unwrap();
        assert!(take_events().is_empty(), "no channel exists yet");
        let h0 = reg.add_channel(it.next().unwrap()).unwrap();
        reg.request_channels(b, 1).unwrap();
        let h1 = reg.add_channel(it.next().unwrap()).unwrap();
        let h2 = reg.add_channel(it.next().unwrap()).unwrap();
        assert_eq!(
            take_events(),
            [
                (1, Event::ChannelAdded(h0)),
                (1, Event::ChannelAdded(h1)),
                (2, Event::ChannelAdded(h2))
            ],
            "client a first (registered first), up to what it asked"
        );
        assert_eq!((reg.channels_of(a), reg.channels_of(b)), (2, 1));
        assert_eq!(reg.channel(b, h0).err(), Some(RegistryError::NotOwner));
        // Asking for fewer gives one back (b already holds all it asked for).
        reg.request_channels(a, 1).unwrap();
        assert_eq!(take_events(), [(1, Event::ChannelRemoved(h1))]);
        reg.request_channels(b, 2).unwrap();
        assert_eq!(take_events(), [(2, Event::ChannelAdded(h1))]);
        // An engine goes away: its client is told, nobody has a spare.
        let gone = reg.remove_channel(h0).unwrap();
        assert_eq!(take_events(), [(1, Event::ChannelRemoved(h0))]);
        assert_eq!(reg.channels_of(a), 0);
        // It comes back: a still wants one.
        let h0 = reg.add_channel(gone).unwrap();
        assert_eq!(take_events(), [(1, Event::ChannelAdded(h0))]);
        // Unregistering b frees two channels for a, which wants only one.
        reg.unregister_client(b).unwrap();
        assert_eq!(
            take_events(),
            [
                (2, Event::ChannelRemoved(h2)),
                (2, Event::ChannelRemoved(h1))
            ]
        );
        assert_eq!(reg.channel(b, h1).err(), Some(RegistryError::Unknown));
        assert_eq!(reg.request_channels(b, 1), Err(RegistryError::Unknown));
    }

    #[test]
    fn a_channel_per_cpu_engines_first_fallbacks_for_the_rest() {
        let mut fallbacks = cpu_channels(4);
        let mut engines = cpu_channels(4);
        let mut engines = engines.iter_mut();
        let reg: Registry<'_, 4, 8> = Registry::new();
        let p = reg.register_client(cb(1)).unwrap();
        reg.request_per_cpu(p, 4).unwrap();
        assert_eq!(reg.channel_for_cpu(p, 0), Err(RegistryError::NoChannel));
        let fb: Vec<ChannelHandle> = fallbacks
            .iter_mut()
            .map(|c| reg.add_fallback_channel(c).unwrap())
            .collect();
        take_events();
        let per_cpu = |reg: &Registry<'_, 4, 8>| -> Vec<ChannelHandle> {
            (0..4)
                .map(|cpu| reg.channel_for_cpu(p, cpu).unwrap())
                .collect()
        };
        assert_eq!(per_cpu(&reg), fb, "no engine yet: a fallback per CPU");

        // An engine appears: it replaces a fallback, and CPU 0 uses it.
        let e0 = reg.add_channel(engines.next().unwrap()).unwrap();
        assert_eq!(
            take_events(),
            [
                (1, Event::ChannelAdded(e0)),
                (1, Event::ChannelRemoved(fb[3]))
            ]
        );
        assert_eq!(per_cpu(&reg), [e0, fb[0], fb[1], fb[2]]);
        let more: Vec<ChannelHandle> = engines.map(|c| reg.add_channel(c).unwrap()).collect();
        let all_engines = [e0, more[0], more[1], more[2]];
        assert_eq!(per_cpu(&reg), all_engines, "four engines, four CPUs");
        take_events();

        // A late client gets a free fallback; an engine going away is
        // replaced by one too.
        let q = reg.register_client(cb(2)).unwrap();
        reg.request_channels(q, 1).unwrap();
        assert_eq!(take_events(), [(2, Event::ChannelAdded(fb[0]))]);
        let gone = reg.remove_channel(more[0]).unwrap();
        assert_eq!(
            take_events(),
            [
                (1, Event::ChannelRemoved(more[0])),
                (1, Event::ChannelAdded(fb[1]))
            ]
        );
        assert_eq!(per_cpu(&reg), [e0, more[1], more[2], fb[1]]);
        // It comes back (a new handle) and swaps out the fallback again.
        let back = reg.add_channel(gone).unwrap();
        assert_eq!(per_cpu(&reg), [e0, back, more[1], more[2]]);
        assert_eq!(reg.channels_of(p), 4);

        // The channel a CPU is given really copies.
        let mut src = Dma::<FakeHal>::new(256).unwrap();
        src.as_mut_slice().fill(0x3c);
        let mut dst = Dma::<FakeHal>::new(256).unwrap();
        let h = reg.channel_for_cpu(p, 3).unwrap();
        let mut chan = reg.channel(p, h).unwrap();
        // SAFETY: both buffers live until the wait below, untouched.
        let c = unsafe { chan.memcpy_buf_to_buf(dst.paddr(), src.paddr(), 256) }.unwrap();
        chan.wait(c, &mut CountingDelay::default(), Duration::from_secs(1))
            .unwrap();
        assert!(dst.as_mut_slice().iter().all(|&b| b == 0x3c));
        drop(chan);

        // Fewer CPUs than channels held round-robin; a stale id is refused.
        reg.request_per_cpu(p, 2).unwrap();
        assert_eq!(
            (reg.channel_for_cpu(p, 2), reg.channel_for_cpu(p, 0)),
            (Ok(e0), Ok(e0))
        );
        reg.unregister_client(p).unwrap();
        assert_eq!(reg.channel_for_cpu(p, 0), Err(RegistryError::Unknown));
    }

    /// `n` copies of 256 bytes through `client`'s channel `h`, each
    /// checked, until the handle is refused; returns how many were made.
    fn copy_until_refused(
        reg: &Registry<'_, 2, 4>,
        client: ClientId,
        h: ChannelHandle,
        n: usize,
    ) -> usize {
        let mut src = Dma::<FakeHal>::new(256).unwrap();
        let mut dst = Dma::<FakeHal>::new(256).unwrap();
        for i in 0..n {
            src.as_mut_slice().fill(i as u8);
            let mut chan = match reg.channel(client, h) {
                Ok(chan) => chan,
                Err(e) => {
                    assert_eq!(e, RegistryError::Unknown);
                    return i;
                }
            };
            // SAFETY: both buffers live until the wait below, untouched.
            let c = unsafe { chan.memcpy_buf_to_buf(dst.paddr(), src.paddr(), 256) }.unwrap();
            chan.wait(c, &mut CountingDelay::default(), Duration::from_secs(1))
                .unwrap();
            drop(chan);
            assert!(dst.as_mut_slice().iter().all(|&b| b == i as u8), "copy {i}");
        }
        n
    }

    #[test]
    fn cpus_copy_through_their_own_channels_of_one_shared_registry_at_once() {
        fn sync<T: Sync>() {}
        sync::<Registry<'static>>();
        let mut chans = cpu_channels(4);
        let reg: Registry<'_, 2, 4> = Registry::new();
        let p = reg.register_client(cb(9)).unwrap();
        reg.request_per_cpu(p, 4).unwrap();
        for chan in chans.iter_mut() {
            reg.add_channel(chan).unwrap();
        }
        take_events();
        let handles: Vec<ChannelHandle> = (0..4)
            .map(|cpu| reg.channel_for_cpu(p, cpu).unwrap())
            .collect();
        let mut distinct = handles.clone();
        distinct.sort_by_key(|h| format!("{h:?}"));
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "one channel per CPU");
        let made: Vec<usize> = std::thread::scope(|scope| {
            let threads: Vec<_> = handles
                .iter()
                .map(|&h| {
                    let reg = &reg;
                    scope.spawn(move || copy_until_refused(reg, p, h, 300))
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(made, [300; 4]);
    }

    #[test]
    fn a_channel_removed_while_a_cpu_uses_it_is_refused_never_swapped() {
        let mut chans = cpu_channels(2);
        let (first, second) = chans.split_at_mut(1);
        let reg: Registry<'_, 2, 4> = Registry::new();
        let p = reg.register_client(cb(10)).unwrap();
        reg.request_channels(p, 1).unwrap();
        let h = reg.add_channel(&mut first[0]).unwrap();
        let made = std::thread::scope(|scope| {
            let user = scope.spawn(|| copy_until_refused(&reg, p, h, 1_000_000));
            std::thread::sleep(std::time::Duration::from_millis(20));
            let back = reg.remove_channel(h).unwrap();
            assert!(!back.is_halted(), "handed back reset");
            // The same slot now holds another channel: the old handle
            // must not reach it.
            let h2 = reg.add_channel(&mut second[0]).unwrap();
            assert_ne!(h, h2);
            user.join().unwrap()
        });
        assert!(
            (1..1_000_000).contains(&made),
            "the CPU copied before the removal and was refused after it: {made}"
        );
        assert_eq!(reg.channel(p, h).err(), Some(RegistryError::Unknown));
    }

    #[test]
    fn a_channel_removed_before_its_engine_stopped_keeps_its_requests_in_flight() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let busy = Arc::new(AtomicBool::new(true));
        let mut engine = super::Scripted::new(1 << 20, 64);
        engine.busy_flag = Some(busy.clone());
        engine.dma_mask = u64::MAX;
        let mut chan = Channel::new(engine);
        let dst = Dma::<FakeHal>::new(64).unwrap();
        let transfer = chan
            .fill_buffer(dst, 0, 64, 7, crate::engine::PrepFlags::empty())
            .map_err(|e| e.error)
            .unwrap();
        let cookie = transfer.cookie();
        chan.issue_pending();
        let reg: Registry<'_, 2, 4> = Registry::new();
        let p = reg.register_client(cb(30)).unwrap();
        reg.request_channels(p, 1).unwrap();
        let h = reg.add_channel(&mut chan).unwrap();
        let back = reg.remove_channel(h).unwrap();
        assert!(back.is_stopping() && back.is_halted());
        assert_eq!(back.status(cookie).status, Status::InProgress);
        busy.store(false, Ordering::Relaxed);
        assert_eq!(
            back.status(cookie).status,
            Status::Error(crate::engine::ErrorKind::Aborted)
        );
        assert!(!back.is_stopping());
        assert!(matches!(
            transfer.finish(&mut chan),
            Err(crate::engine::TransferError::Failed { .. })
        ));
        take_events();
    }

    #[test]
    fn stale_and_foreign_handles_are_refused() {
        let mut chans = cpu_channels(2);
        let mut it = chans.iter_mut();
        let reg: Registry<'_, 2, 2> = Registry::new();
        let old = reg.register_client(cb(1)).unwrap();
        reg.unregister_client(old).unwrap();
        // The next client takes the same slot; the old id must not reach it.
        let new = reg.register_client(cb(2)).unwrap();
        reg.request_channels(new, 1).unwrap();
        let h = reg.add_channel(it.next().unwrap()).unwrap();
        take_events();
        assert_eq!(reg.channel(old, h).err(), Some(RegistryError::Unknown));
        assert_eq!(reg.request_channels(old, 2), Err(RegistryError::Unknown));
        assert_eq!(reg.unregister_client(old), Err(RegistryError::Unknown));
        assert_eq!(reg.channels_of(old), 0);
        assert_eq!(reg.channels_of(new), 1);
        // Another registry's ids and handles.
        let other: Registry<'_, 2, 2> = Registry::new();
        let stranger = other.register_client(cb(3)).unwrap();
        other.request_channels(stranger, 1).unwrap();
        let their = other.add_channel(it.next().unwrap()).unwrap();
        take_events();
        assert_eq!(reg.channel(stranger, h).err(), Some(RegistryError::Foreign));
        assert_eq!(reg.channel(new, their).err(), Some(RegistryError::Foreign));
        assert_eq!(
            reg.remove_channel(their).err(),
            Some(RegistryError::Foreign)
        );
        // A removed channel's handle is stale, even after it comes back.
        let chan = reg.remove_channel(h).unwrap();
        assert_eq!(take_events(), [(2, Event::ChannelRemoved(h))]);
        assert!(
            !chan.is_halted(),
            "taken back reset, ready for its next user"
        );
        let h2 = reg.add_channel(chan).unwrap();
        assert_ne!(h, h2);
        assert_eq!(take_events(), [(2, Event::ChannelAdded(h2))]);
        assert_eq!(reg.channel(new, h).err(), Some(RegistryError::Unknown));
        assert!(reg.channel(new, h2).is_ok());
    }

    #[test]
    fn a_halted_channel_is_reset_when_added() {
        let mut chan: Channel<CpuEngine<FakeHal>> = Channel::new(CpuEngine::new());
        chan.terminate();
        assert!(chan.is_halted());
        let reg: Registry<'_> = Registry::new();
        let client = reg.register_client(cb(4)).unwrap();
        reg.request_channels(client, 1).unwrap();
        let h = reg.add_channel(&mut chan).unwrap();
        take_events();
        assert!(!reg.channel(client, h).unwrap().is_halted());
    }

    #[test]
    fn a_client_copies_through_its_channel() {
        let mut chan: Channel<CpuEngine<FakeHal>> = Channel::new(CpuEngine::new());
        let reg: Registry<'_> = Registry::new();
        let client = reg.register_client(cb(7)).unwrap();
        reg.request_channels(client, 1).unwrap();
        let handle: ChannelHandle = reg.add_channel(&mut chan).unwrap();
        take_events();
        let mut src = Dma::<FakeHal>::new(256).unwrap();
        src.as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        let dst = Dma::<FakeHal>::new(256).unwrap();
        let mut guard = reg.channel(client, handle).unwrap();
        let ch: &mut dyn DmaChannel = &mut *guard;
        // SAFETY: both buffers are ours and not touched until `wait` returns.
        let cookie = unsafe { ch.memcpy_buf_to_buf(dst.paddr(), src.paddr(), 256) }.unwrap();
        ch.wait(
            cookie,
            &mut CountingDelay::default(),
            Duration::from_millis(1),
        )
        .unwrap();
        assert_eq!(ch.status(cookie).status, Status::Complete);
        assert_eq!(dst.as_slice(), src.as_slice());
    }
}

#[test]
fn wait_all_is_how_a_full_ring_is_waited_out() {
    let mut chan: Channel<CpuEngine<FakeHal, 4>> = Channel::new(CpuEngine::new());
    let src = Dma::<FakeHal>::new(4096).unwrap();
    let dst = Dma::<FakeHal>::new(4096).unwrap();
    let mut delay = CountingDelay::default();
    assert_eq!(
        chan.wait_all(&mut delay, Duration::from_millis(1)),
        Ok(()),
        "nothing to wait for"
    );
    for i in 0..4 {
        // SAFETY: inside our buffers, read after `wait_all`.
        unsafe { chan.prep_copy(dst.paddr() + 64 * i, src.paddr(), 64, PrepFlags::empty()) }
            .unwrap();
    }
    // SAFETY: refused, so nothing runs.
    let full = unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 64, PrepFlags::empty()) };
    assert_eq!(full, Err(DmaError::RingFull));
    chan.wait_all(&mut delay, Duration::from_millis(1)).unwrap();
    assert!(chan.is_idle());
    // SAFETY: as above.
    let again = unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 64, PrepFlags::empty()) };
    assert!(again.is_ok(), "room again");
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

#[test]
fn buffers_the_caller_owns_are_shared_for_a_copy_and_unshared_after() {
    use crate::hal::fake::FakeHal32;
    use crate::hal::{Direction, SharedBuffer};
    let src: Vec<u8> = (0..300).map(|i| (i * 7) as u8).collect();
    let mut dst = vec![0u8; 300];
    let mut chan: Channel<CpuEngine<FakeHal>> = Channel::new(CpuEngine::new());
    SharedBuffer::<FakeHal>::to_device(&src, |from| {
        SharedBuffer::<FakeHal>::from_device(&mut dst, Direction::FromDevice, |to| {
            let shares = FakeHal::shares();
            assert!(shares.contains(&(from.dma_addr(), 300, Direction::ToDevice)));
            assert!(shares.contains(&(to.dma_addr(), 300, Direction::FromDevice)));
            // SAFETY: both buffers are shared (borrowed) until the wait ends.
            let cookie =
                unsafe { chan.prep_copy(to.dma_addr(), from.dma_addr(), 300, PrepFlags::empty()) }
                    .unwrap();
            chan.wait(
                cookie,
                &mut CountingDelay::default(),
                Duration::from_millis(1),
            )
            .unwrap();
        })
        .unwrap();
    })
    .unwrap();
    assert!(
        !FakeHal::shares().iter().any(|&(_, len, _)| len == 300),
        "unshared when the closures returned"
    );
    assert_eq!(dst, src);
    assert_eq!(
        SharedBuffer::<FakeHal>::to_device(&[], |_| ()),
        Err(HalError::ZeroLength)
    );
    assert_eq!(
        SharedBuffer::<FakeHal32>::to_device(&src, |_| ()),
        Err(HalError::NotSupported),
        "a Hal that cannot share says so"
    );
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
