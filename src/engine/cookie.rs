//! Cookies: the handle of one request on one channel.
//!
//! A cookie is a positive `i32` assigned in submission order, wrapping from
//! `i32::MAX` back to 1. Whether a request is done is decided from a snapshot
//! of the channel's last completed and last used cookies, with the rule the
//! 2005 I/OAT patch called `dma_async_is_complete`: a cookie is complete
//! unless it lies in the window `(last_completed, last_used]`, read around the
//! wrap.

use core::fmt;
use core::num::NonZeroI32;

/// A request's handle on its channel: a positive `i32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cookie(NonZeroI32);

impl Cookie {
    /// The first cookie a channel assigns.
    pub const FIRST: Cookie = Cookie(NonZeroI32::new(1).unwrap());

    /// `value` as a cookie, if it is positive.
    #[inline]
    pub const fn new(value: i32) -> Option<Cookie> {
        if value > 0 {
            match NonZeroI32::new(value) {
                Some(v) => Some(Cookie(v)),
                None => None,
            }
        } else {
            None
        }
    }

    /// The value.
    #[inline]
    pub const fn get(self) -> i32 {
        self.0.get()
    }

    /// The cookie `n` places after this one, wrapping from `i32::MAX` to 1
    /// as [`Cookie::next`] does.
    #[inline(always)]
    pub(crate) fn after(self, n: usize) -> Cookie {
        // Short of the wrap, a sum: the divisions below cost a batch some 20
        // instructions each time.
        if let Ok(n) = i32::try_from(n)
            && let Some(cookie) = self.get().checked_add(n).and_then(Cookie::new)
        {
            return cookie;
        }
        let span = i32::MAX as u64;
        let value = (self.get() as u64 - 1 + n as u64 % span) % span + 1;
        Cookie::new(value as i32).unwrap_or(Cookie::FIRST)
    }

    /// The cookie `n` requests before this one, across the wrap (the
    /// inverse of [`Cookie::after`]).
    pub(crate) fn before(self, n: usize) -> Cookie {
        let span = i32::MAX as u64;
        // In 1..2 * span: no overflow, and positive before the reduction.
        let value = self.get() as u64 + span - n as u64 % span;
        Cookie::new(((value - 1) % span + 1) as i32).unwrap_or(Cookie::FIRST)
    }

    /// The cookie assigned after this one: `i32::MAX` wraps back to 1.
    #[inline]
    pub const fn next(self) -> Cookie {
        match Cookie::new(self.get().wrapping_add(1)) {
            Some(c) => c,
            None => Cookie::FIRST,
        }
    }
}

impl fmt::Debug for Cookie {
    #[inline]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cookie({})", self.get())
    }
}

impl fmt::Display for Cookie {
    #[inline]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// The 2005 I/OAT proposal's completion rule: whether `cookie` is complete given the
/// channel's `last_completed` and `last_used` cookies (0 before any).
///
/// The requests in flight are exactly those after `last_completed` up to and
/// including `last_used`; when the counter has wrapped, that window wraps too.
#[inline]
pub const fn is_complete(cookie: Cookie, last_completed: i32, last_used: i32) -> bool {
    let c = cookie.get();
    // Nothing in flight, the usual answer once a request is found done:
    // what the rule below says too, in fewer instructions.
    if last_completed == last_used {
        return true;
    }
    // The newest request, the one a caller usually waits for, is in the
    // window whenever it is not empty.
    if c == last_used {
        return false;
    }
    if last_completed <= last_used {
        c <= last_completed || c > last_used
    } else {
        c <= last_completed && c > last_used
    }
}

/// A channel's `(last_completed, last_used)` at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The most recent cookie known complete (or ended), 0 before any.
    pub last_completed: i32,
    /// The most recent cookie assigned, 0 before any.
    pub last_used: i32,
}

impl Snapshot {
    /// [`is_complete`] against this snapshot.
    #[inline]
    pub const fn is_complete(&self, cookie: Cookie) -> bool {
        is_complete(cookie, self.last_completed, self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: i32) -> Cookie {
        Cookie::new(v).unwrap()
    }

    #[test]
    fn only_positive_values_are_cookies() {
        assert!(Cookie::new(0).is_none());
        assert!(Cookie::new(-5).is_none());
        assert!(Cookie::new(i32::MIN).is_none());
        assert_eq!(Cookie::new(7).map(Cookie::get), Some(7));
    }

    #[test]
    fn after_is_next_repeated_across_the_wrap() {
        for start in [1, 7, i32::MAX - 3, i32::MAX] {
            let mut stepped = c(start);
            for n in 0..10 {
                assert_eq!(c(start).after(n), stepped, "{start} + {n}");
                stepped = stepped.next();
            }
        }
        // A whole lap (i32::MAX cookies) comes back to the start.
        assert_eq!(c(5).after(i32::MAX as usize), c(5));
        assert_eq!(c(5).after(i32::MAX as usize + 2), c(7));
    }

    #[test]
    fn before_undoes_after_across_the_wrap() {
        for start in [1, 2, 63, 64, i32::MAX - 1, i32::MAX] {
            for n in [
                0,
                1,
                2,
                63,
                64,
                127,
                i32::MAX as usize - 1,
                i32::MAX as usize,
            ] {
                assert_eq!(c(start).after(n).before(n), c(start), "{start} + {n}");
            }
        }
        assert_eq!(c(1).before(1), c(i32::MAX));
        assert_eq!(c(3).before(2), c(1));
    }

    #[test]
    fn next_wraps_to_one() {
        assert_eq!(c(1).next(), c(2));
        assert_eq!(c(i32::MAX - 1).next(), c(i32::MAX));
        assert_eq!(c(i32::MAX).next(), Cookie::FIRST);
    }

    #[test]
    fn window_without_wrap() {
        // 3..=7 in flight.
        let s = Snapshot {
            last_completed: 2,
            last_used: 7,
        };
        assert!(s.is_complete(c(1)) && s.is_complete(c(2)));
        for v in 3..=7 {
            assert!(!s.is_complete(c(v)), "{v} is in flight");
        }
        assert!(
            s.is_complete(c(8)),
            "never used: reported complete, as the 2005 I/OAT proposal's rule has it"
        );
    }

    #[test]
    fn window_across_the_wrap() {
        // MAX-1, MAX, 1, 2 in flight.
        let s = Snapshot {
            last_completed: i32::MAX - 2,
            last_used: 2,
        };
        assert!(s.is_complete(c(i32::MAX - 2)));
        assert!(s.is_complete(c(i32::MAX - 3)));
        for v in [i32::MAX - 1, i32::MAX, 1, 2] {
            assert!(!s.is_complete(c(v)), "{v} is in flight");
        }
        assert!(s.is_complete(c(3)));
        // Completion moves past the wrap: only 2 left.
        let s = Snapshot {
            last_completed: 1,
            last_used: 2,
        };
        assert!(s.is_complete(c(i32::MAX)) && s.is_complete(c(1)));
        assert!(!s.is_complete(c(2)));
    }

    #[test]
    fn nothing_in_flight() {
        let s = Snapshot {
            last_completed: 9,
            last_used: 9,
        };
        for v in [1, 9, 10, i32::MAX] {
            assert!(s.is_complete(c(v)));
        }
    }

    proptest::proptest! {
        /// The rule against its definition: a cookie is in flight when it
        /// is one of the `in_flight` cookies that follow `last_completed`
        /// (its distance along the cycle of positive values is 1 to
        /// `in_flight`), whatever the window, across the wrap too.
        #[test]
        fn is_complete_is_the_window_rule(
            // 0 (nothing before), any, or near the wrap.
            completed in proptest::prop_oneof![
                proptest::strategy::Just(0),
                1..=i32::MAX,
                i32::MAX - 3000..=i32::MAX,
            ],
            in_flight in 0..2000i64,
            offset in -3000i64..3000,
            anywhere in 1..=i32::MAX,
            pick in 0..4u8,
        ) {
            let span = i32::MAX as i64;
            // The cookie `n` places after `from`, along 1..=i32::MAX (0,
            // before the first cookie, comes before 1).
            let step = |from: i32, n: i64| ((from as i64 - 1 + n).rem_euclid(span) + 1) as i32;
            let used = if in_flight == 0 { completed } else { step(completed, in_flight) };
            // The window's edges, a cookie near it, or any.
            let cookie = match pick {
                0 => used.max(1),
                1 => completed.max(1),
                2 => step(completed, offset),
                _ => anywhere,
            };
            let distance = (cookie as i64 - completed as i64).rem_euclid(span);
            let in_window = (1..=in_flight).contains(&distance);
            proptest::prop_assert_eq!(is_complete(c(cookie), completed, used), !in_window);
        }
    }
}
