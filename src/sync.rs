//! The atomics and the lock of the crate's concurrent cores, swapped for
//! loom's in the crate's own tests under `--cfg loom`, so its models (the
//! `loom_tests` modules) see every access and try every interleaving.
//! Every other build, including this crate built as a dependency of a
//! kernel that runs its own loom tests, uses `core`'s atomics and `spin`'s
//! lock unchanged.
//!
//! Also the masking of interrupts around a lock ([`IrqControl`],
//! [`Masked`]): the engine's channels and registry and the HAL's DMA pool
//! all take it, and the HAL sits below the engine, so it lives here, under
//! both (the public names stay `engine::shared::{IrqControl, ...}`).

#[cfg(not(all(test, loom)))]
pub(crate) use core::sync::atomic;
#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic;

#[cfg(not(all(test, loom)))]
pub(crate) use spin::mutex::{SpinMutex, SpinMutexGuard};

#[cfg(all(test, loom))]
pub(crate) use self::model::{SpinMutex, SpinMutexGuard};

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};

/// Masking the local CPU's interrupts around a lock that an interrupt
/// handler also takes.
pub trait IrqControl {
    /// Turns interrupts off on this CPU; returns whether they were on.
    fn disable() -> bool;
    /// Turns them back on if they were on before the matching `disable`.
    fn restore(were_on: bool);
}

/// x86_64's `RFLAGS.IF`, with `cli` and `sti`: only in ring 0 (elsewhere
/// they fault with #GP).
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub enum X86Interrupts {}

#[cfg(target_arch = "x86_64")]
impl IrqControl for X86Interrupts {
    #[inline]
    fn disable() -> bool {
        let were_on = x86_64::instructions::interrupts::are_enabled();
        if were_on {
            x86_64::instructions::interrupts::disable();
        }
        were_on
    }

    #[inline]
    fn restore(were_on: bool) {
        if were_on {
            x86_64::instructions::interrupts::enable();
        }
    }
}

/// No masking: for a channel that no interrupt handler touches (one that
/// is only polled), and for threads in host tests.
#[derive(Debug)]
pub enum NoMasking {}

impl IrqControl for NoMasking {
    #[inline]
    fn disable() -> bool {
        false
    }

    #[inline]
    fn restore(_were_on: bool) {}
}

/// A lock held with this CPU's interrupts masked by `I` until dropped:
/// the one guard of every lock an interrupt handler may also take (the
/// shared channel's, the registry's, the DMA pool's), so the order
/// "mask, lock ... unlock, unmask" is written once.
pub(crate) struct Masked<'g, T, I: IrqControl> {
    guard: ManuallyDrop<SpinMutexGuard<'g, T>>,
    were_on: bool,
    _irq: PhantomData<fn() -> I>,
}

impl<'g, T, I: IrqControl> Masked<'g, T, I> {
    /// Masks interrupts, then locks `mutex`: an interrupt taken while
    /// spinning could otherwise find the lock held by the code it
    /// interrupted.
    #[inline]
    pub(crate) fn lock(mutex: &'g SpinMutex<T>) -> Self {
        let were_on = I::disable();
        Masked {
            guard: ManuallyDrop::new(mutex.lock()),
            were_on,
            _irq: PhantomData,
        }
    }
}

impl<T, I: IrqControl> Deref for Masked<'_, T, I> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, I: IrqControl> DerefMut for Masked<'_, T, I> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T, I: IrqControl> Drop for Masked<'_, T, I> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard is dropped once, here, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        // Only now: an interrupt taken here finds the lock free.
        I::restore(self.were_on);
    }
}

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
