//! The wakers of tasks awaiting requests: one slot per awaited request, in
//! the channel, so awaiting allocates nothing.
//!
//! A slot is named by a key of a generational slot map ([`crate::slots`]):
//! a future holding the name of a slot that was woken and given to another
//! future can never clear the other's waker, however many awaits later.

use core::task::Waker;

use super::{Cookie, Status};
use crate::slots::{Key, SlotMap};

/// Requests a channel can hold wakers for at once. A future that finds
/// every slot taken wakes itself at once instead (its executor polls it
/// again): it still completes, by polling.
pub const WAKER_SLOTS: usize = 64;

/// The name of one registered waker: a key of the channel's slot map, so it
/// goes stale when its waker is woken or removed, and stays stale.
pub(crate) type SlotName = Key;

pub(crate) struct WakerSlots {
    slots: SlotMap<(Cookie, Waker), WAKER_SLOTS>,
}

impl WakerSlots {
    pub(crate) const fn new() -> Self {
        WakerSlots {
            slots: SlotMap::new(),
        }
    }

    /// Slots holding a waker: zero keeps the completion path free of the
    /// scan when nobody awaits.
    #[inline(always)]
    pub(crate) fn used(&self) -> usize {
        self.slots.len()
    }

    /// Registers `waker` for `cookie`, in the slot `held` if it still holds
    /// this cookie (a re-poll), else in a free one. `None` when every slot
    /// is taken.
    pub(crate) fn register(
        &mut self,
        cookie: Cookie,
        waker: &Waker,
        held: Option<SlotName>,
    ) -> Option<SlotName> {
        if let Some(name) = held
            && let Some((held_cookie, held_waker)) = self.slots.get_mut(name)
            && *held_cookie == cookie
        {
            if !held_waker.will_wake(waker) {
                held_waker.clone_from(waker);
            }
            return Some(name);
        }
        self.slots.insert((cookie, waker.clone())).ok()
    }

    /// Empties slot `name` if it is still the one registered (a future
    /// dropped before its request ended).
    pub(crate) fn remove(&mut self, name: SlotName) {
        self.slots.remove(name);
    }

    /// Wakes (and frees the slot of) every request `status_of` says has
    /// ended.
    pub(crate) fn wake_ended(&mut self, status_of: impl Fn(Cookie) -> Status) {
        self.slots.drain_where(
            |&(cookie, _)| status_of(cookie) != Status::InProgress,
            |(_, waker)| waker.wake(),
        );
    }
}

#[cfg(test)]
impl WakerSlots {
    /// Moves every slot to its last generation before running out: how a
    /// test reaches the end of the generations without that many awaits.
    pub(crate) fn set_generations_to_last(&mut self) {
        self.slots.set_generations(crate::slots::RETIRED - 1);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::WakerSlots;
    use crate::engine::Cookie;

    /// A future dropped long ago must never clear the waker of another
    /// request that later took its slot, however many awaits came in
    /// between: its slot name stays stale.
    #[test]
    fn a_stale_slot_name_never_clears_a_later_waker() {
        let mut slots = WakerSlots::new();
        let waker = Waker::noop();
        let cookie = |v| Cookie::new(v).unwrap();
        let old = slots.register(cookie(1), waker, None).unwrap();
        slots.remove(old);
        // Every await since, until the slot's generations run out, and one
        // more.
        slots.set_generations_to_last();
        if let Some(name) = slots.register(cookie(2), waker, None) {
            slots.remove(name);
        }
        let Some(_new) = slots.register(cookie(9), waker, None) else {
            return;
        };
        slots.remove(old);
        assert_eq!(slots.used(), 1, "the stale name cleared another's waker");
    }
}
