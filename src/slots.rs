//! A fixed-size generational slot map: the one scheme behind the handles
//! the crate gives out that name a slot (an awaited request's waker slot,
//! an address space's area, a registry's clients and channels).
//!
//! A [`Key`] names one use of one slot: its index and the slot's
//! generation when the value went in. Removing the value moves the
//! generation on, so the key goes stale and stays stale: generations are
//! 64 bits and never wrap; a slot whose generation reaches the last value
//! is retired (never filled again) rather than wrapped back to one a stale
//! key still holds. Nothing allocates.

use core::sync::atomic::{AtomicU64, Ordering};

/// The next identity from `counter`, which never wraps: a channel, an
/// address space or a registry is told apart from every other by its id
/// (a transfer, an area id or a client id carries it), so an id is never
/// handed out twice. Once the ids run out (2^64 - 1 of them: never, in
/// practice) every new one is 0, which the owners of ids refuse.
pub(crate) fn take_id(counter: &AtomicU64) -> u64 {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1))
        .unwrap_or(0)
}

/// A slot's generation once used up: the slot is never filled again.
pub(crate) const RETIRED: u64 = u64::MAX;

/// One use of one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    index: usize,
    generation: u64,
}

impl Key {
    /// The slot's index (where a caller keeps data beside the map).
    pub(crate) fn index(self) -> usize {
        self.index
    }
}

struct Slot<T> {
    generation: u64,
    value: Option<T>,
}

/// Up to `N` values, each named by a [`Key`] that goes stale when it is
/// removed.
pub(crate) struct SlotMap<T, const N: usize> {
    slots: [Slot<T>; N],
    len: usize,
}

impl<T, const N: usize> SlotMap<T, N> {
    /// An empty map.
    pub(crate) const fn new() -> Self {
        SlotMap {
            slots: [const {
                Slot {
                    generation: 0,
                    value: None,
                }
            }; N],
            len: 0,
        }
    }

    /// Values held.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether [`SlotMap::insert`] would find a slot.
    pub(crate) fn has_room(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.value.is_none() && s.generation != RETIRED)
    }

    /// Puts `value` in the first free slot that is not retired; gives it
    /// back when there is none.
    pub(crate) fn insert(&mut self, value: T) -> Result<Key, T> {
        let Some(index) = self
            .slots
            .iter()
            .position(|s| s.value.is_none() && s.generation != RETIRED)
        else {
            return Err(value);
        };
        let slot = &mut self.slots[index];
        slot.value = Some(value);
        self.len += 1;
        Ok(Key {
            index,
            generation: slot.generation,
        })
    }

    /// The value `key` names, if it is still there.
    pub(crate) fn get(&self, key: Key) -> Option<&T> {
        self.slots
            .get(key.index)
            .filter(|s| s.generation == key.generation)?
            .value
            .as_ref()
    }

    /// [`SlotMap::get`], mutably.
    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.slots
            .get_mut(key.index)
            .filter(|s| s.generation == key.generation)?
            .value
            .as_mut()
    }

    /// The value in slot `index`, whichever use of the slot it is.
    pub(crate) fn get_index(&self, index: usize) -> Option<&T> {
        self.slots.get(index)?.value.as_ref()
    }

    /// [`SlotMap::get_index`], mutably.
    pub(crate) fn get_index_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slots.get_mut(index)?.value.as_mut()
    }

    /// Takes out the value `key` names, if it is still there; the key (and
    /// every copy of it) is stale from now on.
    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        self.get(key)?;
        self.take_at(key.index)
    }

    /// Takes out the value in slot `index`, moving its generation on.
    fn take_at(&mut self, index: usize) -> Option<T> {
        let slot = self.slots.get_mut(index)?;
        let value = slot.value.take()?;
        slot.generation = slot.generation.saturating_add(1);
        self.len -= 1;
        Some(value)
    }

    /// The key of the value in slot `index`, if there is one.
    pub(crate) fn key_at(&self, index: usize) -> Option<Key> {
        let slot = self.slots.get(index)?;
        slot.value.as_ref().map(|_| Key {
            index,
            generation: slot.generation,
        })
    }

    /// The values held, with their keys, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(index, s)| {
            let key = Key {
                index,
                generation: s.generation,
            };
            s.value.as_ref().map(|v| (key, v))
        })
    }

    /// Takes out every value `take` picks, in slot order, handing each to
    /// `each`.
    pub(crate) fn drain_where(
        &mut self,
        mut take: impl FnMut(&T) -> bool,
        mut each: impl FnMut(T),
    ) {
        if self.len == 0 {
            return;
        }
        for index in 0..N {
            if self.slots[index].value.as_ref().is_some_and(&mut take)
                && let Some(value) = self.take_at(index)
            {
                each(value);
            }
        }
    }

    /// Sets every slot's generation: how a test reaches the last ones.
    #[cfg(test)]
    pub(crate) fn set_generations(&mut self, generation: u64) {
        for slot in &mut self.slots {
            slot.generation = generation;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Key, RETIRED, SlotMap, take_id};
    use core::sync::atomic::AtomicU64;

    #[test]
    fn ids_stop_at_the_last_one_instead_of_wrapping() {
        let counter = AtomicU64::new(u64::from(u32::MAX));
        assert_eq!(take_id(&counter), u64::from(u32::MAX));
        assert_eq!(take_id(&counter), 1 << 32, "past 32 bits, not back to 0");
        let counter = AtomicU64::new(u64::MAX - 1);
        assert_eq!(take_id(&counter), u64::MAX - 1);
        assert_eq!(take_id(&counter), 0, "out of ids: 0, which is refused");
        assert_eq!(take_id(&counter), 0, "never back to 1");
    }

    #[derive(Clone, Debug)]
    enum Step {
        Insert(u8),
        /// Remove through the key of the n-th insert ever made (stale or
        /// not).
        Remove(usize),
        DrainOdd,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any::<u8>().prop_map(Step::Insert),
            any::<usize>().prop_map(Step::Remove),
            Just(Step::DrainOdd),
        ]
    }

    proptest! {
        /// Against a model: a key finds its value until that value is
        /// removed, and never again after, whatever was inserted since.
        #[test]
        fn a_key_names_one_use_of_one_slot(steps in prop::collection::vec(step(), 0..80)) {
            let mut map = SlotMap::<u8, 3>::new();
            // Every key ever handed out, and whether its value is still in.
            let mut keys: Vec<(Key, u8, bool)> = Vec::new();
            for s in steps {
                match s {
                    Step::Insert(v) => {
                        let live = keys.iter().filter(|k| k.2).count();
                        match map.insert(v) {
                            Ok(key) => keys.push((key, v, true)),
                            Err(back) => {
                                prop_assert_eq!(back, v);
                                prop_assert_eq!(live, 3, "refused with room");
                            }
                        }
                    }
                    Step::Remove(n) if !keys.is_empty() => {
                        let n = n % keys.len();
                        let (key, v, live) = keys[n];
                        prop_assert_eq!(map.remove(key), live.then_some(v));
                        keys[n].2 = false;
                    }
                    Step::Remove(_) => {}
                    Step::DrainOdd => {
                        let mut drained = Vec::new();
                        map.drain_where(|v| v % 2 == 1, |v| drained.push(v));
                        let mut expected = Vec::new();
                        for k in keys.iter_mut().filter(|k| k.2 && k.1 % 2 == 1) {
                            k.2 = false;
                            expected.push(k.1);
                        }
                        drained.sort();
                        expected.sort();
                        prop_assert_eq!(drained, expected);
                    }
                }
                for &(key, v, live) in &keys {
                    prop_assert_eq!(map.get(key).copied(), live.then_some(v));
                    prop_assert_eq!(map.key_at(key.index()) == Some(key), live);
                    prop_assert_eq!(map.get_index(key.index()).is_some(), map.key_at(key.index()).is_some());
                }
                prop_assert_eq!(map.len(), keys.iter().filter(|k| k.2).count());
                prop_assert_eq!(map.iter().count(), map.len());
                prop_assert_eq!(map.has_room(), map.len() < 3);
            }
        }
    }

    /// A slot whose generations ran out is retired: never filled again, so
    /// a key of its last use can never name a new value.
    #[test]
    fn a_slot_whose_generations_ran_out_is_retired() {
        let mut map = SlotMap::<u8, 1>::new();
        map.set_generations(RETIRED - 1);
        let last = map.insert(1).unwrap();
        assert_eq!(map.remove(last), Some(1));
        assert_eq!(map.insert(2), Err(2), "retired, not wrapped to 0");
        assert_eq!(map.get(last), None);
    }
}
