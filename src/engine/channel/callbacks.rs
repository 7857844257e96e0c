//! Completion callbacks and the wakers of awaited requests, run as
//! requests end.

use core::task::Waker;

use super::Channel;
use crate::engine::wakers::SlotName;
use crate::engine::{Cookie, Engine, Status};

impl<E: Engine> Channel<E> {
    #[inline(always)]
    pub(super) fn run_callbacks(&mut self) {
        if !self.callbacks.is_empty() || self.wakers.used() > 0 {
            self.run_callbacks_and_wake();
        }
    }

    /// [`Channel::run_callbacks`] when there is something to run or wake.
    #[inline(never)]
    pub(super) fn run_callbacks_and_wake(&mut self) {
        while let Some((cookie, callback)) = self.callbacks.front() {
            let status = self.classify(cookie);
            if status == Status::InProgress {
                break;
            }
            self.callbacks.pop_front();
            (callback.func)(cookie, status, callback.context);
        }
        let (now, failures, wakers) = (self.now(), &self.failures, &mut self.wakers);
        if wakers.used() > 0 {
            wakers.wake_ended(|cookie| failures.classify(now, cookie));
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
