//! The atomics and the lock of the crate's concurrent cores, swapped for
//! loom's in the crate's own tests under `--cfg loom`, so its models (the
//! `loom_tests` modules) see every access and try every interleaving.
//! Every other build, including this crate built as a dependency of a
//! kernel that runs its own loom tests, uses `core`'s atomics and `spin`'s
//! lock unchanged.

#[cfg(not(all(test, loom)))]
pub(crate) use core::sync::atomic;
#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic;

#[cfg(not(all(test, loom)))]
pub(crate) use spin::mutex::{SpinMutex, SpinMutexGuard};

#[cfg(all(test, loom))]
pub(crate) use self::model::{SpinMutex, SpinMutexGuard};

/// `spin`'s lock spins on atomics loom cannot see, so a model thread
/// waiting for it would never let the holder run. What the models check is
/// the crate's protocol around the lock (interrupts masked before it is
/// taken and restored after it is released, the registry's lock order,
/// waker registration under it), not `spin`'s own test-and-set, so the
/// lock is loom's mutex, which also reports a deadlock when every thread
/// waits.
#[cfg(all(test, loom))]
mod model {
    pub(crate) type SpinMutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    pub(crate) struct SpinMutex<T>(loom::sync::Mutex<T>);

    impl<T> SpinMutex<T> {
        pub(crate) fn new(value: T) -> Self {
            SpinMutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> SpinMutexGuard<'_, T> {
            // loom's lock reports no poisoning (it panics instead).
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub(crate) fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(|e| e.into_inner())
        }
    }
}
