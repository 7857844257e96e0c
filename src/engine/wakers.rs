//! The wakers of tasks awaiting requests: one slot per awaited request, in
//! the channel, so awaiting allocates nothing.
//!
//! A slot is named by its index and a generation that changes whenever the
//! slot is emptied, so a future holding the name of a slot that was woken
//! and given to another future can never clear the other's waker.

use core::task::Waker;

use super::{Cookie, Status};

/// Requests a channel can hold wakers for at once. A future that finds
/// every slot taken wakes itself at once instead (its executor polls it
/// again): it still completes, by polling.
pub const WAKER_SLOTS: usize = 64;

/// The name of one registered waker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotName {
    index: usize,
    generation: u32,
}

struct Slot {
    generation: u32,
    waiting: Option<(Cookie, Waker)>,
}

pub(crate) struct WakerSlots {
    slots: [Slot; WAKER_SLOTS],
    /// Slots holding a waker: zero keeps the completion path free of the
    /// scan when nobody awaits.
    used: usize,
}

impl WakerSlots {
    pub(crate) const fn new() -> Self {
        WakerSlots {
            slots: [const {
                Slot {
                    generation: 0,
                    waiting: None,
                }
            }; WAKER_SLOTS],
            used: 0,
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used
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
            && let Some(slot) = self.slots.get_mut(name.index)
            && slot.generation == name.generation
            && let Some((held_cookie, held_waker)) = &mut slot.waiting
            && *held_cookie == cookie
        {
            if !held_waker.will_wake(waker) {
                held_waker.clone_from(waker);
            }
            return Some(name);
        }
        let index = self.slots.iter().position(|s| s.waiting.is_none())?;
        let slot = &mut self.slots[index];
        slot.waiting = Some((cookie, waker.clone()));
        self.used += 1;
        Some(SlotName {
            index,
            generation: slot.generation,
        })
    }

    /// Empties slot `name` if it is still the one registered (a future
    /// dropped before its request ended).
    pub(crate) fn remove(&mut self, name: SlotName) {
        if let Some(slot) = self.slots.get_mut(name.index)
            && slot.generation == name.generation
            && slot.waiting.is_some()
        {
            Self::empty(slot);
            self.used -= 1;
        }
    }

    fn empty(slot: &mut Slot) -> Option<(Cookie, Waker)> {
        slot.generation = slot.generation.wrapping_add(1);
        slot.waiting.take()
    }

    /// Wakes (and frees the slot of) every request `status_of` says has
    /// ended.
    pub(crate) fn wake_ended(&mut self, status_of: impl Fn(Cookie) -> Status) {
        if self.used == 0 {
            return;
        }
        for slot in &mut self.slots {
            let ended =
                matches!(&slot.waiting, Some((c, _)) if status_of(*c) != Status::InProgress);
            if ended && let Some((_, waker)) = Self::empty(slot) {
                self.used -= 1;
                waker.wake();
            }
        }
    }
}
