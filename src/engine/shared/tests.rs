//! Host tests of the shared channel and its futures: wakers woken when the
//! channel sees requests end, slots that cannot go stale, dropped futures,
//! and several threads on one channel moving real bytes.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use super::*;
use crate::engine::fake::{Counter, Scripted, counter};
use crate::engine::{Capabilities, ErrorKind, Fault, Op, PrepFlags};
use crate::hal::fake::FakeHal;
use crate::hal::{Dma, PAGE_SIZE};

fn wakes(c: &Counter) -> usize {
    c.0.load(Ordering::SeqCst)
}

type Shared = SharedChannel<Scripted, NoMasking>;

fn scripted() -> Shared {
    SharedChannel::new(Channel::new(Scripted::new(4096, 256)))
}

/// The engine reports every request up to `cookie` ended and raises its
/// interrupt, which the channel takes.
fn end_through(shared: &Shared, cookie: Cookie) {
    shared.lock().test_engine().complete_upto = Some(cookie);
    shared.lock().test_engine().raised = true;
    assert!(shared.handle_interrupt());
}

/// A device slow to stop has stopped, and says so with its interrupt.
fn device_stops(shared: &Shared) {
    shared.lock().test_engine().busy = false;
    shared.lock().test_engine().raised = true;
    assert!(shared.handle_interrupt());
}

/// Prepares a 64-byte copy between addresses the scripted engine never
/// touches.
fn prep(shared: &Shared, k: u64) -> Cookie {
    let op = Op::Copy {
        dst: 0x10_0000 + 0x100 * k,
        src: 0x20_0000 + 0x100 * k,
        len: 64,
    };
    // SAFETY: the scripted engine touches no memory.
    unsafe { shared.lock().prep(op, PrepFlags::empty(), None) }.unwrap()
}

#[test]
fn a_completion_is_woken_by_the_interrupt_that_ends_it() {
    let shared = scripted();
    let (first, second) = (prep(&shared, 0), prep(&shared, 1));
    let (count, waker) = counter();
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(shared.completion(second));
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(
        shared.lock().engine().issued.len(),
        2,
        "polling issued them"
    );
    assert_eq!(shared.lock().wakers_waiting(), 1);
    // The first ends: not the one awaited, no wake.
    end_through(&shared, first);
    assert_eq!(wakes(&count), 0);
    // Re-polling keeps the one slot.
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(shared.lock().wakers_waiting(), 1);
    end_through(&shared, second);
    assert_eq!(wakes(&count), 1, "woken from the interrupt");
    assert_eq!(shared.lock().wakers_waiting(), 0);
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
}

/// A scripted engine that can prepare interrupt-only requests.
fn interrupting() -> Shared {
    let mut engine = Scripted::new(4096, 256);
    engine.more_caps = Capabilities::INTERRUPT | Capabilities::INTERRUPT_OP;
    SharedChannel::new(Channel::new(engine))
}

#[test]
fn a_future_that_must_wait_arms_one_interrupt_and_one_that_need_not_arms_none() {
    let shared = interrupting();
    let (count, waker) = counter();
    let mut cx = Context::from_waker(&waker);

    // Ended before the first poll: no interrupt request is added.
    let done = prep(&shared, 0);
    shared.lock().issue_pending();
    shared.lock().test_engine().complete_upto = Some(done);
    let mut fut = pin!(shared.completion(done));
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
    assert_eq!(shared.lock().snapshot().last_used, done.get());

    // Still running at the first poll: one `Op::Interrupt` asking for the
    // interrupt is queued after it and issued; polling again adds none.
    let (a, b) = (prep(&shared, 1), prep(&shared, 2));
    let mut fut_a = pin!(shared.completion(a));
    let mut fut_b = pin!(shared.completion(b));
    assert_eq!(fut_b.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(fut_a.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(fut_b.as_mut().poll(&mut cx), Poll::Pending);
    let armed = shared.lock().engine().issued.last().copied();
    let (cookie, op, notify) = armed.expect("an issued request");
    assert_eq!(cookie.get(), b.get() + 1, "right after the awaited one");
    assert_eq!(op, Op::Interrupt);
    assert!(
        notify.is_some_and(|n| n.interrupt),
        "it asks for the interrupt"
    );
    assert_eq!(shared.lock().snapshot().last_used, cookie.get(), "only one");

    // Its interrupt wakes both.
    end_through(&shared, cookie);
    assert_eq!(wakes(&count), 2);
    assert_eq!(fut_a.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
    assert_eq!(fut_b.as_mut().poll(&mut cx), Poll::Ready(Ok(())));

    // A request that asked for the interrupt itself needs no other.
    let op = Op::Copy {
        dst: 0x10_0000,
        src: 0x20_0000,
        len: 64,
    };
    // SAFETY: the scripted engine touches no memory.
    let own = unsafe { shared.lock().prep(op, PrepFlags::INTERRUPT, None) }.unwrap();
    let mut fut = pin!(shared.completion(own));
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(shared.lock().snapshot().last_used, own.get());
}

#[test]
fn an_engine_without_interrupt_requests_is_refused_one() {
    let shared = scripted();
    // SAFETY: an interrupt-only request touches no memory.
    let refused = unsafe { shared.lock().prep(Op::Interrupt, PrepFlags::empty(), None) };
    assert_eq!(refused, Err(DmaError::NotSupported));
    let waiting = prep(&shared, 0);
    assert_eq!(shared.lock().interrupt_after(waiting), Ok(()));
    assert_eq!(
        shared.lock().snapshot().last_used,
        waiting.get(),
        "nothing added"
    );
}

#[test]
fn a_failure_wakes_the_failed_and_the_aborted_with_their_errors() {
    let shared = scripted();
    let cookies: Vec<Cookie> = (0..3).map(|k| prep(&shared, k)).collect();
    let waiting: Vec<_> = cookies.iter().map(|&c| (counter(), c)).collect();
    let mut futs: Vec<_> = waiting
        .iter()
        .map(|(_, c)| Box::pin(shared.completion(*c)))
        .collect();
    for (fut, ((_, waker), _)) in futs.iter_mut().zip(&waiting) {
        assert_eq!(
            fut.as_mut().poll(&mut Context::from_waker(waker)),
            Poll::Pending
        );
    }
    shared.lock().test_engine().complete_upto = Some(cookies[0]);
    shared.lock().test_engine().fault = Some(Fault {
        cookie: cookies[1],
        kind: ErrorKind::WriteFailed,
    });
    shared.lock().poll();
    let mut answers = Vec::new();
    for (fut, ((count, waker), _)) in futs.iter_mut().zip(&waiting) {
        assert_eq!(wakes(count), 1);
        answers.push(fut.as_mut().poll(&mut Context::from_waker(waker)));
    }
    assert_eq!(
        answers,
        [
            Poll::Ready(Ok(())),
            Poll::Ready(Err(DmaError::Failed(ErrorKind::WriteFailed))),
            Poll::Ready(Err(DmaError::Failed(ErrorKind::Aborted))),
        ]
    );
}

#[test]
fn a_dropped_future_frees_its_slot_and_a_stale_one_cannot_clear_another() {
    let shared = scripted();
    let (a, b) = (prep(&shared, 0), prep(&shared, 1));
    let (count_a, waker_a) = counter();
    let (count_b, waker_b) = counter();
    {
        let mut dropped = pin!(shared.completion(b));
        let _ = dropped.as_mut().poll(&mut Context::from_waker(&waker_b));
        assert_eq!(shared.lock().wakers_waiting(), 1);
    }
    assert_eq!(shared.lock().wakers_waiting(), 0, "dropping forgot it");

    // `first` takes slot 0 and is woken (the slot is freed), then `second`
    // reuses slot 0; dropping `first` must leave `second` registered.
    let mut first = Box::pin(shared.completion(a));
    let _ = first.as_mut().poll(&mut Context::from_waker(&waker_a));
    shared.lock().test_engine().complete_upto = Some(a);
    shared.lock().poll();
    assert_eq!(wakes(&count_a), 1);
    let mut second = pin!(shared.completion(b));
    let _ = second.as_mut().poll(&mut Context::from_waker(&waker_b));
    drop(first);
    assert_eq!(
        shared.lock().wakers_waiting(),
        1,
        "the stale name cleared nothing"
    );
    shared.lock().test_engine().complete_upto = Some(b);
    shared.lock().poll();
    assert_eq!(wakes(&count_b), 1);
}

#[test]
fn with_every_slot_taken_a_future_wakes_itself_and_still_ends() {
    let shared = scripted();
    let last = (0..WAKER_SLOTS as u64 + 1)
        .map(|k| prep(&shared, k))
        .last()
        .unwrap();
    let (quiet, waker) = counter();
    let mut holders: Vec<_> = (0..WAKER_SLOTS)
        .map(|_| Box::pin(shared.completion(last)))
        .collect();
    for fut in &mut holders {
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
    }
    assert_eq!(shared.lock().wakers_waiting(), WAKER_SLOTS);
    assert_eq!(wakes(&quiet), 0);
    let (count, own) = counter();
    let mut extra = pin!(shared.completion(last));
    assert!(
        extra
            .as_mut()
            .poll(&mut Context::from_waker(&own))
            .is_pending()
    );
    assert_eq!(wakes(&count), 1, "no slot: asked to be polled again");
    shared.lock().test_engine().complete_upto = Some(last);
    assert_eq!(
        extra.as_mut().poll(&mut Context::from_waker(&own)),
        Poll::Ready(Ok(()))
    );
    assert_eq!(wakes(&quiet), WAKER_SLOTS, "the registered ones were woken");
}

#[test]
fn a_dropped_pending_transfer_leaks_its_buffers_and_into_transfer_keeps_them() {
    let mut engine = Scripted::new(4096, 256);
    engine.dma_mask = u64::MAX;
    let shared = SharedChannel::<_, NoMasking>::new(Channel::new(engine));
    let (_, waker) = counter();
    let dst = Dma::<FakeHal>::new(PAGE_SIZE).unwrap();
    let at = dst.paddr();
    let transfer = shared
        .lock()
        .fill_buffer(dst, 0, 64, 0, PrepFlags::empty())
        .unwrap();
    let cookie = transfer.cookie();
    let mut fut = Box::pin(shared.transfer(transfer));
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    drop(fut);
    assert!(
        FakeHal::is_live(at),
        "not freed while the engine may write it"
    );
    assert_eq!(shared.lock().wakers_waiting(), 0);

    let dst = Dma::<FakeHal>::new(PAGE_SIZE).unwrap();
    let transfer = shared
        .lock()
        .fill_buffer(dst, 0, 64, 0, PrepFlags::empty())
        .unwrap();
    let mut fut = Box::pin(shared.transfer(transfer));
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    let back = Pin::into_inner(fut).into_transfer().expect("still pending");
    assert_ne!(back.cookie(), cookie);
    assert_eq!(shared.lock().wakers_waiting(), 0);
    shared.lock().test_engine().complete_upto = Some(back.cookie());
    let (dst, _) = back.finish(&mut shared.lock()).expect("ended");
    let freed = dst.paddr();
    drop(dst);
    assert!(!FakeHal::is_live(freed));
}

/// A request awaited while its channel waits for a device slow to stop
/// (edu's transfer in flight runs to its end) is not polled in a loop: its
/// task sleeps until the device's interrupt says the stop is over, then
/// reads `Aborted`. It used to wake itself on every poll, spinning its
/// executor for as long as the device took.
#[test]
fn an_await_during_a_slow_stop_sleeps_until_the_device_stops() {
    let mut engine = Scripted::new(4096, 256);
    engine.more_caps = Capabilities::INTERRUPT | Capabilities::INTERRUPT_OP;
    engine.busy = true;
    let shared: Shared = SharedChannel::new(Channel::new(engine));
    let cookie = prep(&shared, 0);
    shared.lock().issue_pending();
    shared.lock().terminate();
    assert!(shared.lock().is_stopping());
    let (count, waker) = counter();
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(shared.completion(cookie));
    for _ in 0..3 {
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
    }
    assert_eq!(wakes(&count), 0, "woken while nothing changed: a spin");
    // The device stops and interrupts.
    device_stops(&shared);
    assert_eq!(wakes(&count), 1, "woken when the stop ended");
    assert_eq!(
        fut.as_mut().poll(&mut cx),
        Poll::Ready(Err(DmaError::Failed(ErrorKind::Aborted)))
    );
}

/// Futures across a `terminate` and a `reset`: one parked before the
/// terminate is woken by it and reads `Aborted`; one made after it reads
/// `Aborted` at once, also after the reset; a request prepared after the
/// reset is awaited and completes as any other, and the stale cookies'
/// waker slots do not keep it from being woken.
#[test]
fn futures_across_terminate_and_reset_end_once_with_the_right_answer() {
    let shared = interrupting();
    let (first, second) = (prep(&shared, 0), prep(&shared, 1));
    let (count, waker) = counter();
    let mut cx = Context::from_waker(&waker);
    let mut parked = pin!(shared.completion(second));
    assert_eq!(parked.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(shared.lock().wakers_waiting(), 1);

    shared.lock().terminate();
    assert_eq!(wakes(&count), 1, "the terminate woke the parked task");
    assert_eq!(shared.lock().wakers_waiting(), 0);
    let aborted = Poll::Ready(Err(DmaError::Failed(ErrorKind::Aborted)));
    assert_eq!(parked.as_mut().poll(&mut cx), aborted);
    assert_eq!(pin!(shared.completion(first)).poll(&mut cx), aborted);

    shared.lock().reset().unwrap();
    assert_eq!(pin!(shared.completion(first)).poll(&mut cx), aborted);
    let third = prep(&shared, 2);
    assert!(third.get() > second.get(), "cookies go on after a reset");
    let mut fresh = pin!(shared.completion(third));
    assert_eq!(fresh.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(shared.lock().wakers_waiting(), 1);
    end_through(&shared, third);
    assert_eq!(wakes(&count), 2, "woken by the interrupt that ended it");
    assert_eq!(fresh.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
    assert_eq!(shared.lock().wakers_waiting(), 0);
}

/// A transfer awaited while its channel stops a device slow to obey keeps
/// its buffers until the device has stopped: the future stays pending (the
/// device may still write the destination), and answers `Aborted` with
/// the buffers only after the device's interrupt says it stopped.
#[test]
fn a_transfer_future_hands_its_buffers_back_only_after_a_slow_stop_ends() {
    let mut engine = Scripted::new(4096, 256);
    engine.dma_mask = u64::MAX;
    engine.more_caps = Capabilities::INTERRUPT | Capabilities::INTERRUPT_OP;
    engine.busy = true;
    let shared: Shared = SharedChannel::new(Channel::new(engine));
    let dst = Dma::<FakeHal>::new(PAGE_SIZE).unwrap();
    let at = dst.paddr();
    let transfer = shared
        .lock()
        .fill_buffer(dst, 0, 64, 0, PrepFlags::empty())
        .unwrap();
    shared.lock().issue_pending();
    shared.lock().terminate();
    assert!(shared.lock().is_stopping());
    let (count, waker) = counter();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(shared.transfer(transfer));
    for _ in 0..3 {
        assert!(
            fut.as_mut().poll(&mut cx).is_pending(),
            "the device may still write it"
        );
    }
    assert_eq!(wakes(&count), 0, "woken while nothing changed: a spin");
    assert!(FakeHal::is_live(at));
    device_stops(&shared);
    assert_eq!(wakes(&count), 1, "woken when the stop ended");
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(TransferError::Failed { kind, dst, src })) => {
            assert_eq!(kind, ErrorKind::Aborted);
            assert_eq!(dst.paddr(), at);
            assert!(src.is_none());
        }
        other => panic!(
            "expected the buffers back with Aborted, got {:?}",
            other.is_ready()
        ),
    }
    assert!(!FakeHal::is_live(at), "freed once handed back and dropped");
}

/// A scripted channel for `shared` to be replaced with.
fn another() -> Channel<Scripted> {
    Channel::new(Scripted::new(4096, 256))
}

/// A future parked on a channel that was then replaced behind the lock
/// (`mem::replace` through the guard) must not clear the waker of a task
/// awaiting the new channel: both channels' first slot names used to be
/// the same, so dropping it left the new task asleep forever.
#[test]
fn review_a_future_of_a_replaced_channel_clears_the_waker_of_another_b() {
    let shared = scripted();
    let (_count1, waker1) = counter();
    let old_cookie = prep(&shared, 0);
    let mut old_fut = Box::pin(shared.completion(old_cookie));
    assert_eq!(
        old_fut.as_mut().poll(&mut Context::from_waker(&waker1)),
        Poll::Pending
    );
    let _old = core::mem::replace(&mut *shared.lock(), another());
    let (count2, waker2) = counter();
    let new_cookie = prep(&shared, 1);
    let mut new_fut = Box::pin(shared.completion(new_cookie));
    assert_eq!(
        new_fut.as_mut().poll(&mut Context::from_waker(&waker2)),
        Poll::Pending
    );
    assert_eq!(shared.lock().wakers_waiting(), 1);
    drop(old_fut);
    assert_eq!(
        shared.lock().wakers_waiting(),
        1,
        "the old channel's future cleared the new task's waker"
    );
    end_through(&shared, new_cookie);
    assert_eq!(wakes(&count2), 1, "the new task is never woken");
}

#[test]
fn review_shared_id_is_the_channels_after_a_replace() {
    let shared = scripted();
    let (_count, waker) = counter();
    let mut fut = Box::pin(shared.completion(prep(&shared, 0)));
    assert_eq!(
        fut.as_mut().poll(&mut Context::from_waker(&waker)),
        Poll::Pending
    );
    let _old = core::mem::replace(&mut *shared.lock(), another());
    assert_eq!(
        shared.id(),
        shared.lock().id(),
        "SharedChannel::id is the channel's id"
    );
}

/// A future made for a cookie of the channel that was replaced answers
/// `WrongChannel`: it used to read the new channel's status for the same
/// number, here a request of the new channel that completed, and answer
/// `Ok` while the old engine might still be writing its memory.
#[test]
fn a_completion_of_a_replaced_channel_answers_wrong_channel_not_the_new_ones_status() {
    let shared = scripted();
    let old_cookie = prep(&shared, 0);
    let (count, waker) = counter();
    let mut cx = Context::from_waker(&waker);
    let mut parked = Box::pin(shared.completion(old_cookie));
    let mut unpolled = Box::pin(shared.completion(old_cookie));
    assert_eq!(parked.as_mut().poll(&mut cx), Poll::Pending);
    let _old = core::mem::replace(&mut *shared.lock(), another());
    let new_cookie = prep(&shared, 1);
    assert_eq!(new_cookie, old_cookie, "the same number on the new channel");
    end_through(&shared, new_cookie);
    assert_eq!(wakes(&count), 0, "the new channel holds no waker of it");
    let wrong = Poll::Ready(Err(DmaError::WrongChannel));
    assert_eq!(parked.as_mut().poll(&mut cx), wrong);
    assert_eq!(unpolled.as_mut().poll(&mut cx), wrong);
    assert_eq!(shared.lock().wakers_waiting(), 0, "it registered nothing");
}

/// The task of a future parked on a channel that was replaced is woken
/// when that channel is dropped (its waker used to be dropped unwoken, and
/// the task slept forever), and the future then answers `WrongChannel`.
#[test]
fn dropping_a_replaced_channel_wakes_the_tasks_it_held() {
    let shared = scripted();
    let cookie = prep(&shared, 0);
    let (count, waker) = counter();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(shared.completion(cookie));
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
    let old = core::mem::replace(&mut *shared.lock(), another());
    assert_eq!(old.wakers_waiting(), 1);
    drop(old);
    assert_eq!(wakes(&count), 1, "the task was let sleep forever");
    assert_eq!(
        fut.as_mut().poll(&mut cx),
        Poll::Ready(Err(DmaError::WrongChannel))
    );
}

/// A transfer future of a channel that was replaced hands its transfer
/// back (the buffers stay out of reach: the old engine may still write
/// them) and, as it answers, clears no waker of the new channel's.
#[test]
fn a_transfer_future_of_a_replaced_channel_keeps_its_buffers_and_clears_no_waker() {
    let mut engine = Scripted::new(4096, 256);
    engine.dma_mask = u64::MAX;
    let shared: Shared = SharedChannel::new(Channel::new(engine));
    let dst = Dma::<FakeHal>::new(PAGE_SIZE).unwrap();
    let at = dst.paddr();
    let transfer = shared
        .lock()
        .fill_buffer(dst, 0, 64, 0, PrepFlags::empty())
        .unwrap();
    let cookie = transfer.cookie();
    let (_, waker) = counter();
    let mut fut = Box::pin(shared.transfer(transfer));
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    let old = core::mem::replace(&mut *shared.lock(), another());
    let (count, new_waker) = counter();
    let new_cookie = prep(&shared, 1);
    let mut new_fut = pin!(shared.completion(new_cookie));
    assert_eq!(
        new_fut.as_mut().poll(&mut Context::from_waker(&new_waker)),
        Poll::Pending
    );
    shared.lock().test_engine().complete_upto = Some(new_cookie);
    let back = match fut.as_mut().poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(Err(TransferError::WrongChannel(back))) => back,
        other => panic!("expected the transfer back, got {:?}", other.is_ready()),
    };
    assert_eq!(back.cookie(), cookie);
    assert!(
        FakeHal::is_live(at),
        "not freed while the old engine may write it"
    );
    assert_eq!(
        shared.lock().wakers_waiting(),
        1,
        "the old channel's slot name cleared the new task's waker"
    );
    shared.lock().poll();
    assert_eq!(wakes(&count), 1);
    // On its own channel it ends as any other.
    let mut old = old;
    old.test_engine().complete_upto = Some(cookie);
    let (dst, _) = back.finish(&mut old).expect("ended on its channel");
    assert_eq!(dst.paddr(), at);
}

/// A delay that replaces the shared channel the first time it is asked to
/// wait, as another CPU could while `SharedChannel::wait` sleeps.
struct ReplaceOnFirstDelay<'a> {
    shared: &'a Shared,
    old: Option<Channel<Scripted>>,
}

impl embedded_hal::delay::DelayNs for ReplaceOnFirstDelay<'_> {
    fn delay_ns(&mut self, _: u32) {
        if self.old.is_none() {
            self.old = Some(core::mem::replace(&mut *self.shared.lock(), another()));
        }
    }
}

/// `SharedChannel::wait` for a cookie of a channel that is replaced while
/// it waits answers `WrongChannel`; it used to read the new channel, where
/// the number is no request at all, and answer `Ok`.
#[test]
fn a_wait_across_a_replace_answers_wrong_channel() {
    let shared = scripted();
    let cookie = prep(&shared, 0);
    let mut delay = ReplaceOnFirstDelay {
        shared: &shared,
        old: None,
    };
    assert_eq!(
        shared.wait(cookie, &mut delay, Duration::from_millis(1)),
        Err(DmaError::WrongChannel)
    );
    assert!(delay.old.is_some(), "replaced while it waited");
}
