//! Completion callbacks and the wakers of awaited requests, run as
//! requests end.

use core::task::Waker;

use super::failures::classify_in;
use super::{Channel, MAX_CALLBACKS};
use crate::engine::wakers::SlotName;
use crate::engine::{Cookie, Engine, Status};

impl<E: Engine> Channel<E> {
    #[inline(always)]
    pub(super) fn run_callbacks(&mut self) {
        if self.callback_len > 0 || self.wakers.used() > 0 {
            self.run_callbacks_and_wake();
        }
    }

    /// [`Channel::run_callbacks`] when there is something to run or wake.
    #[inline(never)]
    pub(super) fn run_callbacks_and_wake(&mut self) {
        while self.callback_len > 0 {
            let Some((cookie, callback)) = self.callbacks[self.callback_head] else {
                break;
            };
            let status = self.classify(cookie);
            if status == Status::InProgress {
                break;
            }
            self.callbacks[self.callback_head] = None;
            self.callback_head = (self.callback_head + 1) % MAX_CALLBACKS;
            self.callback_len -= 1;
            (callback.func)(cookie, status, callback.context);
        }
        let (snapshot, wakers) = (self.snapshot(), &mut self.wakers);
        if wakers.used() > 0 {
            let failures = (&self.failures, self.next_failure, self.failures_recorded);
            wakers.wake_ended(|cookie| classify_in(snapshot, failures, cookie));
        }
    }

    /// Registers `waker` to be woken when `cookie` ends (in the slot `held`
    /// from an earlier poll if it is still this cookie's). `None` when
    /// every slot is taken.
    pub(crate) fn register_waker(
        &mut self,
        cookie: Cookie,
        waker: &Waker,
        held: Option<SlotName>,
    ) -> Option<SlotName> {
        self.wakers.register(cookie, waker, held)
    }

    /// Forgets a waker registered by a future dropped before its request
    /// ended.
    pub(crate) fn remove_waker(&mut self, slot: SlotName) {
        self.wakers.remove(slot);
    }

    /// How many wakers wait for requests to end.
    pub fn wakers_waiting(&self) -> usize {
        self.wakers.used()
    }
}
