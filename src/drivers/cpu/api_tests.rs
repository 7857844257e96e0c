//! The copy API over the CPU engine: the tests that need bytes really
//! moved (owned transfers, the registry, shared and static channels, a full
//! ring waited out). They live beside the engine that moves the bytes, so
//! that `engine` never imports `drivers`, its tests included.

use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::CpuEngine;
use crate::engine::fake::{CountingDelay, NoDelay, counter, filled};
use crate::engine::*;
use crate::hal::fake::FakeHal;
use crate::hal::{Dma, HalError, PAGE_SIZE};
use crate::sync::NoMasking;

mod channel {
    use super::*;

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
        let src = Dma::<FakeHal>::new(100).unwrap();
        let dst = Dma::<FakeHal>::new(100).unwrap();
        // These two, not the fake's global count: other tests allocate
        // meanwhile, on other threads.
        let (src_at, dst_at) = (src.paddr(), dst.paddr());
        let err = chan
            .copy(dst, 50, src, 0, 51, PrepFlags::empty())
            .unwrap_err();
        assert_eq!(err.error, DmaError::OutOfBounds);
        let err = chan
            .copy(err.dst, 0, err.src.unwrap(), 0, 0, PrepFlags::empty())
            .unwrap_err();
        assert_eq!(err.error, DmaError::ZeroLength);
        drop(err);
        assert!(
            !FakeHal::is_live(src_at) && !FakeHal::is_live(dst_at),
            "buffers handed back and freed"
        );
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

        use crate::drivers::cpu::CpuEngine;
        use crate::engine::fake::{CountingDelay, Scripted};
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
            use crate::slots::RETIRED;
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
                reg.add_channel(it.next().unwrap()).err().map(|e| e.error),
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

        /// A channel over an engine that stays busy (and so cannot stop)
        /// until its flag is cleared, with one owned fill prepared on it.
        fn busy_fill() -> (
            Channel<Scripted>,
            std::sync::Arc<std::sync::atomic::AtomicBool>,
            crate::engine::Transfer<FakeHal>,
        ) {
            let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let mut engine = Scripted::new(1 << 20, 64);
            engine.busy_flag = Some(busy.clone());
            engine.dma_mask = u64::MAX;
            let mut chan = Channel::new(engine);
            let dst = Dma::<FakeHal>::new(64).unwrap();
            let transfer = chan
                .fill_buffer(dst, 0, 64, 7, crate::engine::PrepFlags::empty())
                .map_err(|e| e.error)
                .unwrap();
            (chan, busy, transfer)
        }

        #[test]
        fn a_channel_removed_before_its_engine_stopped_keeps_its_requests_in_flight() {
            use std::sync::atomic::Ordering;

            let (mut chan, busy, transfer) = busy_fill();
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

        /// A channel the registry refuses comes back to the caller, who
        /// lent it for the registry's lifetime: lost, its requests in flight
        /// could never be seen to end, and a `'static` channel was gone.
        #[test]
        fn a_refused_channel_comes_back_with_its_requests() {
            use std::sync::atomic::Ordering;

            let mut chans = cpu_channels(2);
            let reg: Registry<'_, 2, 1> = Registry::new();
            let (first, second) = chans.split_at_mut(1);
            reg.add_channel(&mut first[0]).unwrap();
            let id = second[0].id();
            let refused = reg.add_channel(&mut second[0]).unwrap_err();
            assert_eq!(refused.error, RegistryError::Full);
            assert_eq!(refused.channel.id(), id, "the same channel, back");

            // Halted and still stopping: the reset fails, and the caller
            // polls it to its end.
            let (mut chan, busy, transfer) = busy_fill();
            chan.issue_pending();
            chan.terminate();
            assert!(chan.is_stopping());
            let reg: Registry<'_, 2, 4> = Registry::new();
            let refused = reg.add_channel(&mut chan).unwrap_err();
            assert_eq!(refused.error, RegistryError::ResetFailed);
            assert!(refused.channel.is_stopping());
            busy.store(false, Ordering::Relaxed);
            let cookie = transfer.cookie();
            assert_eq!(
                refused.channel.status(cookie).status,
                Status::Error(crate::engine::ErrorKind::Aborted)
            );
            assert!(matches!(
                transfer.finish(&mut chan),
                Err(crate::engine::TransferError::Failed { .. })
            ));
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
                let cookie = unsafe {
                    chan.prep_copy(to.dma_addr(), from.dma_addr(), 300, PrepFlags::empty())
                }
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
}

mod shared {
    use super::*;

    fn cpu_shared() -> SharedChannel<CpuEngine<FakeHal>, NoMasking> {
        SharedChannel::new(Channel::new(CpuEngine::new()))
    }

    #[test]
    fn an_awaited_transfer_hands_back_its_buffers_with_the_bytes() {
        let shared = cpu_shared();
        let src = filled(PAGE_SIZE, 7);
        let dst = filled(PAGE_SIZE, 0);
        let expected: Vec<u8> = src.as_slice()[10..10 + 3000].to_vec();
        let transfer = shared
            .lock()
            .copy(dst, 100, src, 10, 3000, PrepFlags::empty())
            .unwrap();
        let (_, waker) = counter();
        let mut fut = pin!(shared.transfer(transfer));
        let Poll::Ready(Ok((dst, Some(_src)))) =
            fut.as_mut().poll(&mut Context::from_waker(&waker))
        else {
            panic!("the CPU engine copies at issue");
        };
        assert_eq!(&dst.as_slice()[100..3100], &expected[..]);
        assert_eq!(dst.as_slice()[99], filled(PAGE_SIZE, 0).as_slice()[99]);
        assert_eq!(dst.as_slice()[3100], filled(PAGE_SIZE, 0).as_slice()[3100]);

        let other = cpu_shared();
        let transfer = shared
            .lock()
            .fill_buffer(dst, 0, 64, 0, PrepFlags::empty())
            .unwrap();
        let mut wrong = pin!(other.transfer(transfer));
        assert!(matches!(
            wrong.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(Err(TransferError::WrongChannel(_)))
        ));
    }

    #[test]
    fn four_threads_share_one_channel_and_every_copy_lands() {
        const PER_THREAD: usize = 200;
        let shared = cpu_shared();
        std::thread::scope(|scope| {
            for t in 0..4u8 {
                let shared = &shared;
                scope.spawn(move || {
                    let src = filled(PAGE_SIZE, t);
                    let mut dst = Dma::<FakeHal>::new(PAGE_SIZE).unwrap();
                    for i in 0..PER_THREAD {
                        let len = 1 + (i * 37) % 512;
                        let at = (i * 13) % (PAGE_SIZE - len);
                        let cookie = {
                            let mut channel = shared.lock();
                            // SAFETY: inside buffers this thread owns, read only
                            // after the wait.
                            let c = unsafe {
                                channel.prep_copy(
                                    dst.paddr() + at as u64,
                                    src.paddr() + at as u64,
                                    len,
                                    PrepFlags::empty(),
                                )
                            };
                            c.unwrap()
                        };
                        shared
                            .wait(cookie, &mut NoDelay, Duration::from_secs(5))
                            .unwrap();
                        assert_eq!(
                            &dst.as_mut_slice()[at..at + len],
                            &src.as_slice()[at..at + len]
                        );
                    }
                });
            }
        });
        let snapshot = shared.lock().snapshot();
        assert_eq!(snapshot.last_used, 4 * PER_THREAD as i32, "no cookie lost");
        assert_eq!(snapshot.last_completed, snapshot.last_used);
    }

    #[test]
    fn a_static_channel_is_given_one_channel_and_hands_back_the_others() {
        static SLOT: StaticChannel<CpuEngine<FakeHal>, NoMasking> = StaticChannel::new();
        assert!(SLOT.get().is_none());
        assert!(!SLOT.handle_interrupt());
        let ids: Vec<(u64, Result<u64, u64>)> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let channel = Channel::new(CpuEngine::new());
                        let id = channel.id();
                        (id, SLOT.init(channel).map(|c| c.id()).map_err(|c| c.id()))
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let winners: Vec<_> = ids.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1);
        let (winner, _) = winners[0];
        for (id, result) in &ids {
            // The winner's channel is the one shared; every other comes back.
            assert_eq!(*result, if id == winner { Ok(*id) } else { Err(*id) });
        }
        assert_eq!(SLOT.get().map(SharedChannel::id), Some(*winner));
        // Shared through the static: a copy moves real bytes.
        let mut src = Dma::<FakeHal>::new(PAGE_SIZE).unwrap();
        src.as_mut_slice()[..64].fill(0x5a);
        let dst = Dma::<FakeHal>::new(PAGE_SIZE).unwrap();
        let shared = SLOT.get().unwrap();
        // SAFETY: both buffers are ours and untouched until the copy ended.
        let cookie = unsafe {
            shared
                .lock()
                .prep_copy(dst.paddr(), src.paddr(), 64, PrepFlags::empty())
        }
        .unwrap();
        shared.lock().issue_pending();
        assert_eq!(shared.lock().status(cookie).status, Status::Complete);
        assert!(dst.as_slice()[..64].iter().all(|&b| b == 0x5a));
        assert_eq!(dst.as_slice()[64], 0, "nothing past the copy");
    }
}
