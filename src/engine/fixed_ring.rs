//! A fixed-size ring of `Copy` values in an array (nothing allocates): the
//! one shape behind a channel's failure records (the newest kept, the
//! oldest overwritten) and its callback queue (first in, first out, full
//! is full).

/// Up to `N` values, oldest first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FixedRing<T: Copy, const N: usize> {
    slots: [Option<T>; N],
    /// Slot of the oldest value.
    head: usize,
    len: usize,
    /// Values pushed since creation (saturating): the number of the next.
    pushed: usize,
}

impl<T: Copy, const N: usize> FixedRing<T, N> {
    /// An empty ring.
    pub(crate) const fn new() -> Self {
        FixedRing {
            slots: [None; N],
            head: 0,
            len: 0,
            pushed: 0,
        }
    }

    /// Whether it holds nothing.
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it holds `N` values.
    #[inline(always)]
    pub(crate) fn is_full(&self) -> bool {
        self.len == N
    }

    /// The slot `k` places after the oldest value's.
    #[inline(always)]
    fn slot(&self, k: usize) -> usize {
        (self.head + k) % N
    }

    /// Appends `value`; gives it back when the ring is full.
    #[inline(always)]
    pub(crate) fn push(&mut self, value: T) -> Result<(), T> {
        if self.is_full() {
            return Err(value);
        }
        let at = self.slot(self.len);
        self.slots[at] = Some(value);
        self.len += 1;
        self.pushed = self.pushed.saturating_add(1);
        Ok(())
    }

    /// Appends `value`, dropping the oldest value when the ring is full.
    pub(crate) fn push_evicting(&mut self, value: T) {
        if self.is_full() {
            self.pop_front();
        }
        // Room was made just now.
        let _room = self.push(value);
    }

    /// The oldest value.
    #[inline(always)]
    pub(crate) fn front(&self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        self.slots[self.head]
    }

    /// Takes the oldest value out.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let value = self.slots[self.head].take();
        self.head = self.slot(1);
        self.len -= 1;
        value
    }

    /// The values, newest first.
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len).rev().filter_map(|k| self.slots[self.slot(k)])
    }

    /// How many values were ever pushed (saturating at `usize::MAX`).
    pub(crate) fn pushed(&self) -> usize {
        self.pushed
    }

    /// Value number `n` (pushes counted from 0), if the ring still holds it.
    pub(crate) fn get_pushed(&self, n: usize) -> Option<T> {
        let oldest = self.pushed - self.len;
        let k = n.checked_sub(oldest).filter(|&k| k < self.len)?;
        self.slots[self.slot(k)]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::FixedRing;

    /// What a ring of 4 does, step by step: a push (refused when full), a
    /// push that evicts, or a pop.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Push(u8),
        Evict(u8),
        Pop,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any::<u8>().prop_map(Step::Push),
            any::<u8>().prop_map(Step::Evict),
            Just(Step::Pop),
        ]
    }

    proptest! {
        /// Against a `Vec` model: the same values in the same order after
        /// every step, each push refused exactly when full, and every value
        /// still held found by its push number.
        #[test]
        fn a_fixed_ring_behaves_as_a_bounded_queue(steps in prop::collection::vec(step(), 0..64)) {
            let mut ring = FixedRing::<u8, 4>::new();
            let mut model: Vec<(usize, u8)> = Vec::new();
            let mut pushed = 0;
            for s in steps {
                match s {
                    Step::Push(v) => {
                        let full = model.len() == 4;
                        prop_assert_eq!(ring.push(v), if full { Err(v) } else { Ok(()) });
                        if !full {
                            model.push((pushed, v));
                            pushed += 1;
                        }
                    }
                    Step::Evict(v) => {
                        ring.push_evicting(v);
                        if model.len() == 4 {
                            model.remove(0);
                        }
                        model.push((pushed, v));
                        pushed += 1;
                    }
                    Step::Pop => {
                        let expected = (!model.is_empty()).then(|| model.remove(0).1);
                        prop_assert_eq!(ring.pop_front(), expected);
                    }
                }
                prop_assert_eq!(ring.front(), model.first().map(|&(_, v)| v));
                prop_assert_eq!(ring.is_full(), model.len() == 4);
                prop_assert_eq!(ring.is_empty(), model.is_empty());
                prop_assert_eq!(ring.pushed(), pushed);
                let newest: Vec<u8> = ring.newest_first().collect();
                let expected: Vec<u8> = model.iter().rev().map(|&(_, v)| v).collect();
                prop_assert_eq!(newest, expected);
                for n in 0..pushed + 2 {
                    let held = model.iter().find(|&&(k, _)| k == n).map(|&(_, v)| v);
                    prop_assert_eq!(ring.get_pushed(n), held);
                }
            }
        }
    }
}
