//! A channel several CPUs and an interrupt handler use at once, and
//! requests awaited with `async`/`.await`.
//!
//! [`SharedChannel`] is a [`Channel`] behind a spin lock (`spin`'s) that
//! is taken with the local CPU's interrupts off, so the engine's interrupt
//! handler, which takes it too, can never find it held by the code it
//! interrupted. It is a test-and-set lock, not a ticket lock: on virtual
//! CPUs a ticket lock hands the lock to a waiter whose vCPU may not be
//! running, and everyone waits for it (measured here: four vCPUs on two
//! host cores submitted 5.7 thousand requests a second through a ticket
//! lock, 4.6 million through this one). It is `Sync` when the
//! engine is `Send`: share a reference, or keep it in a `static` through
//! [`StaticChannel`] (built empty at compile time, given its channel at
//! boot).
//!
//! # What may run in an interrupt handler
//!
//! [`SharedChannel::handle_interrupt`], and short work through
//! [`SharedChannel::lock`] (`prep`, `issue_pending`, `status`, `poll`,
//! `terminate`): nothing in them waits or allocates. Not
//! [`SharedChannel::wait`] (it waits for the hardware) nor a
//! [`Channel::wait`] under the lock (it would wait with the lock held and
//! interrupts off).
//!
//! # Awaiting
//!
//! [`SharedChannel::completion`] awaits a cookie; [`SharedChannel::transfer`]
//! awaits a [`Transfer`] and hands its buffers back. The task's waker sits in
//! one of the channel's [`WAKER_SLOTS`] slots (no allocation) and is woken
//! from [`SharedChannel::handle_interrupt`] (or any call that sees the
//! request end: `status`, `poll`, ...), so the kernel's handler for the
//! engine's interrupt must call `handle_interrupt`. Something must raise
//! that interrupt: a future that has to wait calls
//! [`Channel::interrupt_after`], which, on an engine with
//! [`Capabilities::INTERRUPT_OP`](super::Capabilities), queues one
//! interrupt-only request behind the awaited one unless a request from it on
//! already asked for an interrupt. A request that has ended by the first
//! poll costs no interrupt at all. On an engine without it, prepare the
//! awaited request with [`PrepFlags::INTERRUPT`](super::PrepFlags) (the edu
//! driver interrupts at the end of every transfer anyway).
//!
//! Wakers are woken with the channel locked: a waker must not lock the
//! channel itself (an executor's waker only marks its task ready, so this
//! holds for every executor we know of).
//!
//! ## Dropping a future before its request ended
//!
//! The request goes on: engines stop only whole rings, and stopping a
//! shared channel would abort the other users' requests too. A dropped
//! [`Completion`] forgets its waker; the memory is the caller's under the
//! contract of the `unsafe` prep that made the cookie. A dropped
//! [`TransferFuture`] drops its [`Transfer`], which *leaks* its buffers:
//! they are never freed while the device may still write them. To stop
//! waiting without losing the buffers, [`TransferFuture::into_transfer`]
//! gives the transfer back, to finish later. `mem::forget` on either future
//! leaves its waker registered until the request ends, then it is woken and
//! dropped: harmless.
//!
//! ## Replacing the channel behind the lock
//!
//! The guard lends the channel mutably, so it can be swapped for another
//! (`mem::replace(&mut *shared.lock(), Channel::new(..))`). A cookie is a
//! number on the channel that prepared it, and the new channel uses the
//! same numbers, so the futures made before the replacement never ask the
//! new channel about their requests: a [`Completion`] answers
//! [`DmaError::WrongChannel`] and a [`TransferFuture`]
//! [`TransferError::WrongChannel`] with its transfer, whose buffers stay
//! out of reach (the old engine may still write them): finish it on the
//! old channel. A task parked on the old channel is woken when the old
//! channel sees its request end or is dropped. A cookie taken before the
//! replacement and awaited through a future made after it is not told
//! apart: await it first, or use a [`Transfer`], which knows its channel.

use core::future::Future;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll};
use core::time::Duration;

use embedded_hal::delay::DelayNs;

use super::wakers::SlotName;
use super::{
    Buffers, Channel, Cookie, DmaError, Engine, ErrorKind, Status, Transfer, TransferError,
};
use crate::sync::{Masked, SpinMutex};

// Defined with the lock they mask around; named here, where the channels
// that take them are, as they always were.
#[cfg(target_arch = "x86_64")]
pub use crate::sync::X86Interrupts;
pub use crate::sync::{IrqControl, NoMasking};

pub use super::wakers::WAKER_SLOTS;

/// A channel behind a lock taken with interrupts off (see the [module
/// docs](self)).
pub struct SharedChannel<E: Engine, I: IrqControl> {
    channel: SpinMutex<Channel<E>>,
    /// The id of the channel behind the lock, readable without it: written
    /// (under the lock) by every guard whose channel was replaced.
    id: AtomicU64,
    _irq: PhantomData<fn() -> I>,
}

/// The locked channel; interrupts stay off on this CPU until it is dropped.
///
/// Not `Send` (a type check, since it was found to be `Send`): it restores
/// the interrupt flag of the CPU that locked it, so it must be dropped on
/// that CPU, and a task holding it across an `.await` could resume on
/// another. Through it, as through [`Channel::engine_mut`] (itself
/// `unsafe`), no safe call reaches raw DMA: the engine's `prep` is
/// `unsafe`. The channel itself may be replaced through it: see the
/// [module docs](self#replacing-the-channel-behind-the-lock).
///
/// ```
/// # use core::ptr::NonNull;
/// # use dmaengine::drivers::cpu::CpuEngine;
/// # use dmaengine::engine::shared::{NoMasking, SharedChannel};
/// # use dmaengine::hal::{DmaAddr, Hal};
/// # struct NoMemory;
/// # // SAFETY: hands out no memory at all.
/// # unsafe impl Hal for NoMemory {
/// #     fn dma_alloc(_: usize, _: u64) -> Option<(DmaAddr, NonNull<u8>)> { None }
/// #     unsafe fn dma_dealloc(_: DmaAddr, _: NonNull<u8>, _: usize) {}
/// #     fn phys_to_virt(_: DmaAddr) -> NonNull<u8> { NonNull::dangling() }
/// # }
/// fn is_send<T: Send>(_: &T) {}
/// fn use_it(shared: &SharedChannel<CpuEngine<NoMemory>, NoMasking>) {
///     is_send(shared); // the channel is shared across CPUs...
/// }
/// ```
///
/// ```compile_fail,E0277
/// # use core::ptr::NonNull;
/// # use dmaengine::drivers::cpu::CpuEngine;
/// # use dmaengine::engine::shared::{NoMasking, SharedChannel};
/// # use dmaengine::hal::{DmaAddr, Hal};
/// # struct NoMemory;
/// # // SAFETY: hands out no memory at all.
/// # unsafe impl Hal for NoMemory {
/// #     fn dma_alloc(_: usize, _: u64) -> Option<(DmaAddr, NonNull<u8>)> { None }
/// #     unsafe fn dma_dealloc(_: DmaAddr, _: NonNull<u8>, _: usize) {}
/// #     fn phys_to_virt(_: DmaAddr) -> NonNull<u8> { NonNull::dangling() }
/// # }
/// fn is_send<T: Send>(_: &T) {}
/// fn use_it(shared: &SharedChannel<CpuEngine<NoMemory>, NoMasking>) {
///     is_send(&shared.lock()); // ...its guard never leaves the CPU
/// }
/// ```
pub struct SharedGuard<'a, E: Engine, I: IrqControl> {
    guard: Masked<'a, Channel<E>, I>,
    /// [`SharedChannel::id`]'s copy, brought up to date when the guard is
    /// dropped.
    id: &'a AtomicU64,
    /// Not `Send`: see above.
    _this_cpu: PhantomData<*const ()>,
}

impl<E: Engine, I: IrqControl> Drop for SharedGuard<'_, E, I> {
    #[inline]
    fn drop(&mut self) {
        // Still under the lock (the fields drop after this): whoever locks
        // next, and whoever got a cookie or a guard from them, reads the
        // new channel's id. Stored only when it changed, so the line is not
        // written on every unlock.
        let id = self.guard.id();
        if self.id.load(Ordering::Relaxed) != id {
            self.id.store(id, Ordering::Relaxed);
        }
    }
}

impl<E: Engine, I: IrqControl> Deref for SharedGuard<'_, E, I> {
    type Target = Channel<E>;

    #[inline]
    fn deref(&self) -> &Channel<E> {
        &self.guard
    }
}

impl<E: Engine, I: IrqControl> DerefMut for SharedGuard<'_, E, I> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Channel<E> {
        &mut self.guard
    }
}

impl<E: Engine, I: IrqControl> SharedChannel<E, I> {
    /// Shares `channel`.
    pub fn new(channel: Channel<E>) -> Self {
        SharedChannel {
            id: AtomicU64::new(channel.id()),
            channel: SpinMutex::new(channel),
            _irq: PhantomData,
        }
    }

    /// The channel back.
    pub fn into_inner(self) -> Channel<E> {
        self.channel.into_inner()
    }

    /// The [`Channel::id`] of the channel behind the lock, without taking
    /// it: after a replacement, the new channel's once the guard that
    /// replaced it is dropped.
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    /// Locks the channel, turning this CPU's interrupts off until the
    /// guard is dropped. Keep the guard briefly: other CPUs spin on it.
    #[inline]
    pub fn lock(&self) -> SharedGuard<'_, E, I> {
        SharedGuard {
            guard: Masked::lock(&self.channel),
            id: &self.id,
            _this_cpu: PhantomData,
        }
    }

    /// Services the engine's interrupt (from its handler): collects what
    /// ended, runs callbacks and wakes the tasks awaiting. Returns whether
    /// the interrupt was the engine's.
    pub fn handle_interrupt(&self) -> bool {
        self.lock().handle_interrupt()
    }

    /// Waits for `cookie` as [`Channel::wait`] does, but takes the lock
    /// only to look, never while it sleeps: other CPUs submit meanwhile.
    /// [`DmaError::WrongChannel`] if the channel is replaced meanwhile (see
    /// the [module docs](self#replacing-the-channel-behind-the-lock)).
    pub fn wait(
        &self,
        cookie: Cookie,
        delay: &mut impl DelayNs,
        timeout: Duration,
    ) -> Result<(), DmaError> {
        let made_for = self.id();
        let mut replaced = false;
        let answer = super::channel::wait_for_status(delay, timeout, || {
            self.lock().issue_pending();
            // Between the two locks this CPU takes what the issue raised
            // (the engine's interrupt, an IOMMU's fault event aimed here),
            // so the status below already knows of it.
            let mut channel = self.lock();
            if channel.id() != made_for {
                replaced = true;
                // Any ended status stops the wait; the answer is replaced
                // below.
                return Status::Error(ErrorKind::Aborted);
            }
            channel.status(cookie).status
        });
        if replaced {
            return Err(DmaError::WrongChannel);
        }
        answer
    }

    /// A future that ends when `cookie` does: `Ok` if it completed, else
    /// `Failed(kind)`. Pending requests are issued when it is first polled.
    /// The cookie is taken to be of the channel [`SharedChannel::id`]
    /// names now; if that is replaced, the future answers
    /// [`DmaError::WrongChannel`] (see the
    /// [module docs](self#replacing-the-channel-behind-the-lock)). That
    /// id is read without the lock and follows a replacement when the
    /// guard that made it is dropped: a completion made while that guard
    /// is still held is of the channel it replaced, and may answer for a
    /// request of that channel with the same cookie. Make completions
    /// after dropping the guard that replaced the channel.
    pub fn completion(&self, cookie: Cookie) -> Completion<'_, E, I> {
        Completion {
            channel: self,
            made_for: self.id(),
            cookie,
            slot: None,
        }
    }

    /// A future that ends when `transfer` does, with its buffers, as
    /// [`Transfer::finish`] answers (so [`TransferError::WrongChannel`],
    /// buffers kept, if the transfer is not of the channel behind the lock
    /// when polled). The transfer's buffers are of the engine's Hal (a type
    /// check since this took any Hal).
    pub fn transfer(&self, transfer: Transfer<E::Hal>) -> TransferFuture<'_, E, I> {
        TransferFuture {
            channel: self,
            transfer: Some(transfer),
            slot: None,
        }
    }

    /// Registers the task's waker for `cookie` if it has not ended, and
    /// makes sure an interrupt follows its end
    /// ([`Channel::interrupt_after`]). The caller holds the lock, so no
    /// interrupt can end it in between.
    // Out of line: a request that ended by the first poll (the common case
    // for short copies) never parks (performance note H3, in the guide).
    #[inline(never)]
    fn park(
        channel: &mut Channel<E>,
        cookie: Cookie,
        cx: &mut Context<'_>,
        slot: &mut Option<SlotName>,
    ) {
        *slot = channel.register_waker(cookie, cx.waker(), *slot);
        // A stop waiting for a device slow to obey ends with the device's
        // interrupt (`Termination::stopped`), which wakes the task: no
        // interrupt request is needed (none can be made on a halted
        // channel), and polling meanwhile would only spin.
        if slot.is_some() && channel.is_stopping() {
            return;
        }
        // Every slot taken, or no room for the interrupt request: be polled
        // again rather than never.
        if slot.is_none() || channel.interrupt_after(cookie).is_err() {
            cx.waker().wake_by_ref();
        }
    }

    /// Forgets the future's waker. A name given by a channel since
    /// replaced names nothing in the new one: removing it there is a no-op.
    fn unpark(&self, slot: &mut Option<SlotName>) {
        if let Some(name) = slot.take() {
            self.lock().remove_waker(name);
        }
    }
}

/// A [`SharedChannel`] for a `static`: empty when the kernel is built
/// (`const fn new`), given its channel once when the device is found. The
/// engine's interrupt handler calls [`StaticChannel::handle_interrupt`],
/// which answers `false` until then.
///
/// ```
/// # use core::ptr::NonNull;
/// use dmaengine::drivers::cpu::CpuEngine;
/// use dmaengine::engine::Channel;
/// use dmaengine::engine::shared::{NoMasking, StaticChannel};
/// # use dmaengine::hal::{DmaAddr, Hal};
/// # struct NoMemory;
/// # // SAFETY: hands out no memory at all.
/// # unsafe impl Hal for NoMemory {
/// #     fn dma_alloc(_: usize, _: u64) -> Option<(DmaAddr, NonNull<u8>)> { None }
/// #     unsafe fn dma_dealloc(_: DmaAddr, _: NonNull<u8>, _: usize) {}
/// #     fn phys_to_virt(_: DmaAddr) -> NonNull<u8> { NonNull::dangling() }
/// # }
///
/// static DMA: StaticChannel<CpuEngine<NoMemory>, NoMasking> = StaticChannel::new();
///
/// assert!(!DMA.handle_interrupt(), "nothing there yet");
/// let shared = DMA.init(Channel::new(CpuEngine::new())).ok().unwrap();
/// assert!(shared.lock().is_idle());
/// // Only once: a second channel is handed back.
/// assert!(DMA.init(Channel::new(CpuEngine::new())).is_err());
/// ```
pub struct StaticChannel<E: Engine, I: IrqControl> {
    once: spin::Once<SharedChannel<E, I>>,
}

impl<E: Engine, I: IrqControl> StaticChannel<E, I> {
    /// An empty slot.
    pub const fn new() -> Self {
        StaticChannel {
            once: spin::Once::new(),
        }
    }

    /// Shares `channel` from now on; if a channel is already there (or
    /// being put there by another CPU), `channel` comes back untouched.
    // The refused channel is handed back whole (it owns a ring the kernel
    // may reuse); this runs once per device, at boot.
    #[allow(clippy::result_large_err)]
    pub fn init(&self, channel: Channel<E>) -> Result<&SharedChannel<E, I>, Channel<E>> {
        let mut channel = Some(channel);
        let shared = self
            .once
            .call_once(|| SharedChannel::new(channel.take().expect("taken only here, once")));
        match channel {
            None => Ok(shared),
            Some(channel) => Err(channel),
        }
    }

    /// The shared channel, once [`StaticChannel::init`] gave it one.
    pub fn get(&self) -> Option<&SharedChannel<E, I>> {
        self.once.get()
    }

    /// [`SharedChannel::handle_interrupt`] if there is a channel; `false`
    /// (not this engine's interrupt) before.
    pub fn handle_interrupt(&self) -> bool {
        self.get().is_some_and(SharedChannel::handle_interrupt)
    }
}

impl<E: Engine, I: IrqControl> Default for StaticChannel<E, I> {
    fn default() -> Self {
        Self::new()
    }
}

/// The future of [`SharedChannel::completion`].
#[must_use = "futures do nothing unless awaited"]
pub struct Completion<'a, E: Engine, I: IrqControl> {
    channel: &'a SharedChannel<E, I>,
    /// The id of the channel the cookie is of.
    made_for: u64,
    cookie: Cookie,
    slot: Option<SlotName>,
}

impl<E: Engine, I: IrqControl> Future for Completion<'_, E, I> {
    type Output = Result<(), DmaError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut channel = this.channel.lock();
        if channel.id() != this.made_for {
            // Its request is the old channel's, which holds its waker (if
            // any) until the request ends or the channel is dropped; the
            // new one reuses the numbers and must not be asked about it.
            this.slot = None;
            return Poll::Ready(Err(DmaError::WrongChannel));
        }
        channel.issue_pending();
        let answer = match channel.status(this.cookie).status {
            Status::Complete => Ok(()),
            Status::Error(kind) => Err(DmaError::Failed(kind)),
            Status::InProgress => {
                SharedChannel::<E, I>::park(&mut channel, this.cookie, cx, &mut this.slot);
                return Poll::Pending;
            }
        };
        if let Some(name) = this.slot.take() {
            channel.remove_waker(name);
        }
        Poll::Ready(answer)
    }
}

impl<E: Engine, I: IrqControl> Drop for Completion<'_, E, I> {
    fn drop(&mut self) {
        self.channel.unpark(&mut self.slot);
    }
}

/// The future of [`SharedChannel::transfer`].
#[must_use = "futures do nothing unless awaited; dropping one leaks its buffers"]
pub struct TransferFuture<'a, E: Engine, I: IrqControl> {
    channel: &'a SharedChannel<E, I>,
    /// `None` once it has answered.
    transfer: Option<Transfer<E::Hal>>,
    slot: Option<SlotName>,
}

impl<E: Engine, I: IrqControl> TransferFuture<'_, E, I> {
    /// Stops waiting and gives the transfer back (`None` if the future has
    /// already answered).
    pub fn into_transfer(mut self) -> Option<Transfer<E::Hal>> {
        self.channel.unpark(&mut self.slot);
        self.transfer.take()
    }
}

// Nothing in it is pinned: the transfer moves freely.
impl<E: Engine, I: IrqControl> Unpin for TransferFuture<'_, E, I> {}

impl<E: Engine, I: IrqControl> Future for TransferFuture<'_, E, I> {
    type Output = Result<Buffers<E::Hal>, TransferError<E::Hal>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(transfer) = this.transfer.take() else {
            panic!("TransferFuture polled after it answered");
        };
        let mut channel = this.channel.lock();
        channel.issue_pending();
        match transfer.finish(&mut channel) {
            Err(TransferError::Pending(transfer)) => {
                let cookie = transfer.cookie();
                this.transfer = Some(transfer);
                SharedChannel::<E, I>::park(&mut channel, cookie, cx, &mut this.slot);
                Poll::Pending
            }
            answer => {
                // After a replacement (`WrongChannel`) the name is the old
                // channel's and names nothing in this one.
                if let Some(name) = this.slot.take() {
                    channel.remove_waker(name);
                }
                Poll::Ready(answer)
            }
        }
    }
}

impl<E: Engine, I: IrqControl> Drop for TransferFuture<'_, E, I> {
    fn drop(&mut self) {
        self.channel.unpark(&mut self.slot);
        // A transfer still here has not ended: dropping it leaks its
        // buffers (see the module docs).
    }
}

#[cfg(test)]
mod tests;
