//! The wakers of tasks awaiting requests: one slot per awaited request, in
//! the channel, so awaiting allocates nothing.
//!
//! A slot is named by a key of a generational slot map ([`crate::slots`])
//! and the identity of the slots it is in: a future holding the name of a
//! slot that was woken and given to another future can never clear the
//! other's waker, however many awaits later, nor can a future holding a
//! name from another channel's slots (its channel was replaced behind a
//! [`SharedChannel`](super::SharedChannel)'s lock): every channel's keys
//! start at the same generation, so a key alone would name a slot there too.

use core::sync::atomic::AtomicU64;
use core::task::Waker;

use super::{Cookie, Status};
use crate::slots::{Key, SlotMap, take_id};

/// Requests a channel can hold wakers for at once. A future that finds
/// every slot taken wakes itself at once instead (its executor polls it
/// again): it still completes, by polling.
pub const WAKER_SLOTS: usize = 64;

/// The identities of waker slots: their own counter, not the channel's id,
/// so the slots need nothing from the channel they are in.
static NEXT_SLOTS_ID: AtomicU64 = AtomicU64::new(1);

/// The name of one registered waker: a key of one channel's slot map and
/// that map's identity, so it goes stale when its waker is woken or
/// removed, stays stale, and names nothing in any other channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotName {
    slots: u64,
    key: Key,
}

pub(crate) struct WakerSlots {
    /// Never 0 while ids last (2^64 - 1 sets of slots); once they have run
    /// out, every new set is 0 and its names are refused by every set
    /// ([`WakerSlots::owns`]): its wakers then leave only when woken.
    id: u64,
    slots: SlotMap<(Cookie, Waker), WAKER_SLOTS>,
}

impl WakerSlots {
    pub(crate) fn new() -> Self {
        WakerSlots {
            id: take_id(&NEXT_SLOTS_ID),
            slots: SlotMap::new(),
        }
    }

    /// Slots holding a waker: zero keeps the completion path free of the
    /// scan when nobody awaits.
    #[inline(always)]
    pub(crate) fn used(&self) -> usize {
        self.slots.len()
    }

    /// Whether `name` was given by these slots.
    fn owns(&self, name: SlotName) -> bool {
        self.id != 0 && name.slots == self.id
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
            && self.owns(name)
            && let Some((held_cookie, held_waker)) = self.slots.get_mut(name.key)
            && *held_cookie == cookie
        {
            if !held_waker.will_wake(waker) {
                held_waker.clone_from(waker);
            }
            return Some(name);
        }
        let key = self.slots.insert((cookie, waker.clone())).ok()?;
        Some(SlotName {
            slots: self.id,
            key,
        })
    }

    /// Empties slot `name` if it is still the one registered (a future
    /// dropped before its request ended).
    pub(crate) fn remove(&mut self, name: SlotName) {
        if self.owns(name) {
            self.slots.remove(name.key);
        }
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

/// The channel is gone (replaced behind a shared channel's lock and
/// dropped): its requests will never be seen to end here, so the tasks
/// awaiting them are woken now rather than left asleep for ever; their
/// futures find another channel, or none, and say so.
impl Drop for WakerSlots {
    fn drop(&mut self) {
        self.slots.drain_where(|_| true, |(_, waker)| waker.wake());
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

    /// Slot names of two channels' slots are never the same: one channel's
    /// name, used on another (its channel was replaced behind a lock and a
    /// future of it dropped), clears nothing there and is not taken for one
    /// of its own. Both first names used to be slot 0, generation 0.
    #[test]
    fn a_name_from_other_slots_clears_nothing_there() {
        let waker = Waker::noop();
        let cookie = Cookie::new(1).unwrap();
        let mut a = WakerSlots::new();
        let mut b = WakerSlots::new();
        let from_a = a.register(cookie, waker, None).unwrap();
        b.register(cookie, waker, None).unwrap();
        b.remove(from_a);
        assert_eq!(b.used(), 1, "a's name cleared b's waker");
        assert_ne!(b.register(cookie, waker, Some(from_a)), Some(from_a));
    }

    /// Slots dropped with wakers in them (their channel dropped) wake those
    /// tasks, which would otherwise wait forever for a channel that is gone.
    #[test]
    fn dropped_slots_wake_the_tasks_they_held() {
        let (count, waker) = crate::engine::fake::counter();
        let mut slots = WakerSlots::new();
        slots
            .register(Cookie::new(1).unwrap(), &waker, None)
            .unwrap();
        drop(slots);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
