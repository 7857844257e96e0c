//! The safe layer: owned DMA buffers moved into a transfer and handed back
//! when it has ended.
//!
//! A [`Transfer`] owns its buffers while the engine may touch them, so no
//! `&` or `&mut` to them can exist meanwhile. Dropping an unfinished
//! transfer (or `mem::forget`ting it) leaks its buffers rather than freeing
//! memory a device may still write: leaking is safe, a use after free is not.

use core::fmt;
use core::mem::ManuallyDrop;
use core::time::Duration;

use embedded_hal::delay::DelayNs;

use super::{Channel, Cookie, DmaError, Engine, ErrorKind, Op, PrepFlags, Status};
use crate::hal::{Dma, DmaAddr, Hal};

/// A finished transfer's buffers: the destination, and the source of a copy.
pub type Buffers<H> = (Dma<H>, Option<Dma<H>>);

/// A request in flight over owned buffers.
#[must_use = "dropping an unfinished transfer leaks its buffers"]
pub struct Transfer<H: Hal> {
    channel: u64,
    cookie: Cookie,
    dst: ManuallyDrop<Dma<H>>,
    src: ManuallyDrop<Option<Dma<H>>>,
}

impl<H: Hal> fmt::Debug for Transfer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transfer")
            .field("channel", &self.channel)
            .field("cookie", &self.cookie)
            .finish()
    }
}

/// A request that could not be prepared: why, and the buffers back.
pub struct PrepError<H: Hal> {
    /// Why (nothing was prepared).
    pub error: DmaError,
    /// The destination buffer.
    pub dst: Dma<H>,
    /// The source buffer, for a copy.
    pub src: Option<Dma<H>>,
}

/// A transfer that did not hand its buffers back as asked.
pub enum TransferError<H: Hal> {
    /// Still running (or `wait` timed out): here it is again.
    Pending(Transfer<H>),
    /// It ended with an error; the engine no longer touches the buffers.
    Failed {
        /// How it ended.
        kind: ErrorKind,
        /// The destination buffer (its contents are undefined).
        dst: Dma<H>,
        /// The source buffer, for a copy.
        src: Option<Dma<H>>,
    },
    /// It was asked about on a channel it does not belong to.
    WrongChannel(Transfer<H>),
}

fn window(buffer_len: usize, offset: usize, len: usize) -> Result<(), DmaError> {
    if len == 0 {
        return Err(DmaError::ZeroLength);
    }
    match offset.checked_add(len) {
        Some(end) if end <= buffer_len => Ok(()),
        _ => Err(DmaError::OutOfBounds),
    }
}

impl<H: Hal> fmt::Display for PrepError<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request not prepared: {}", self.error)
    }
}

impl<H: Hal> core::error::Error for PrepError<H> {}

/// For `?`: the buffers are dropped (freed), which is safe, since nothing
/// was prepared.
impl<H: Hal> From<PrepError<H>> for DmaError {
    fn from(e: PrepError<H>) -> DmaError {
        e.error
    }
}

impl<H: Hal> fmt::Display for TransferError<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::Pending(_) => f.write_str("transfer still in progress"),
            TransferError::Failed { kind, .. } => write!(f, "transfer failed: {kind}"),
            TransferError::WrongChannel(_) => f.write_str("transfer belongs to another channel"),
        }
    }
}

impl<H: Hal> core::error::Error for TransferError<H> {}

/// For `?`: a pending transfer (or one asked about on the wrong channel) is
/// dropped, which leaks its buffers, since the device may still write them
/// (`TimedOut` / `WrongChannel`); a failed one's buffers are freed
/// (`Failed(kind)`).
impl<H: Hal> From<TransferError<H>> for DmaError {
    fn from(e: TransferError<H>) -> DmaError {
        match e {
            TransferError::Pending(_) => DmaError::TimedOut,
            TransferError::Failed { kind, .. } => DmaError::Failed(kind),
            TransferError::WrongChannel(_) => DmaError::WrongChannel,
        }
    }
}

impl<H: Hal> fmt::Debug for PrepError<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrepError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<H: Hal> fmt::Debug for TransferError<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::Pending(t) => f.debug_tuple("Pending").field(t).finish(),
            TransferError::Failed { kind, .. } => f
                .debug_struct("Failed")
                .field("kind", kind)
                .finish_non_exhaustive(),
            TransferError::WrongChannel(t) => f.debug_tuple("WrongChannel").field(t).finish(),
        }
    }
}

impl<H: Hal> Transfer<H> {
    /// The request's cookie on its channel.
    pub fn cookie(&self) -> Cookie {
        self.cookie
    }

    /// Where the request stands.
    pub fn status<E: Engine<Hal = H>>(&self, channel: &mut Channel<E>) -> Result<Status, DmaError> {
        // Id 0 is no channel's: a channel made after the ids ran out.
        if self.channel == 0 || channel.id() != self.channel {
            return Err(DmaError::WrongChannel);
        }
        Ok(channel.status(self.cookie).status)
    }

    fn release(self) -> Buffers<H> {
        let Transfer { dst, src, .. } = self;
        (ManuallyDrop::into_inner(dst), ManuallyDrop::into_inner(src))
    }

    /// The buffers back if the request has ended: `Ok` when it completed.
    pub fn finish<E: Engine<Hal = H>>(
        self,
        channel: &mut Channel<E>,
    ) -> Result<Buffers<H>, TransferError<H>> {
        match self.status(channel) {
            Err(_) => Err(TransferError::WrongChannel(self)),
            Ok(Status::InProgress) => Err(TransferError::Pending(self)),
            Ok(Status::Complete) => Ok(self.release()),
            Ok(Status::Error(kind)) => {
                let (dst, src) = self.release();
                Err(TransferError::Failed { kind, dst, src })
            }
        }
    }

    /// Waits up to `timeout` for the request to end, then as [`Transfer::finish`].
    pub fn wait<E: Engine<Hal = H>>(
        self,
        channel: &mut Channel<E>,
        delay: &mut impl DelayNs,
        timeout: Duration,
    ) -> Result<Buffers<H>, TransferError<H>> {
        if channel.id() == self.channel {
            // Timeouts and failures are reported by `finish` below.
            let _ = channel.wait(self.cookie, delay, timeout);
        }
        self.finish(channel)
    }
}

impl<E: Engine> Channel<E> {
    fn owned(
        &mut self,
        op: Op,
        flags: PrepFlags,
        dst: Dma<E::Hal>,
        src: Option<Dma<E::Hal>>,
    ) -> Result<Transfer<E::Hal>, PrepError<E::Hal>> {
        // SAFETY: both buffers are of the engine's Hal, so their addresses
        // are in its address space; they are owned by the transfer built below until
        // the channel reports the request ended; the transfer never frees
        // them before that (it leaks them if dropped early), and no reference
        // to their memory exists meanwhile.
        match unsafe { self.prep(op, flags, None) } {
            Ok(cookie) => Ok(Transfer {
                channel: self.id(),
                cookie,
                dst: ManuallyDrop::new(dst),
                src: ManuallyDrop::new(src),
            }),
            Err(error) => Err(PrepError { error, dst, src }),
        }
    }

    /// Prepares a copy of `len` bytes from `src[src_offset..]` to
    /// `dst[dst_offset..]`, taking both buffers until it ends.
    ///
    /// The buffers must be of the engine's Hal ([`Engine::Hal`]), whose
    /// address space the engine reads their addresses in: a type check
    /// since this was found to take a `Dma` of any Hal, which let a device
    /// write past a buffer given in the wrong address space.
    ///
    /// ```compile_fail,E0308
    /// # use core::ptr::NonNull;
    /// # use dmaengine::drivers::cpu::CpuEngine;
    /// # use dmaengine::engine::{Channel, PrepFlags};
    /// # use dmaengine::hal::{Dma, DmaAddr, Hal};
    /// # struct Physical;
    /// # struct Iova;
    /// # // SAFETY: hands out no memory at all.
    /// # unsafe impl Hal for Physical {
    /// #     fn dma_alloc(_: usize, _: u64) -> Option<(DmaAddr, NonNull<u8>)> { None }
    /// #     unsafe fn dma_dealloc(_: DmaAddr, _: NonNull<u8>, _: usize) {}
    /// #     fn phys_to_virt(_: DmaAddr) -> NonNull<u8> { NonNull::dangling() }
    /// # }
    /// # // SAFETY: as above.
    /// # unsafe impl Hal for Iova {
    /// #     fn dma_alloc(_: usize, _: u64) -> Option<(DmaAddr, NonNull<u8>)> { None }
    /// #     unsafe fn dma_dealloc(_: DmaAddr, _: NonNull<u8>, _: usize) {}
    /// #     fn phys_to_virt(_: DmaAddr) -> NonNull<u8> { NonNull::dangling() }
    /// # }
    /// fn copy_into(chan: &mut Channel<CpuEngine<Physical>>, dst: Dma<Iova>, src: Dma<Iova>) {
    ///     // A buffer of another Hal: refused by the compiler.
    ///     let _ = chan.copy(dst, 0, src, 0, 64, PrepFlags::empty());
    /// }
    /// ```
    pub fn copy(
        &mut self,
        dst: Dma<E::Hal>,
        dst_offset: usize,
        src: Dma<E::Hal>,
        src_offset: usize,
        len: usize,
        flags: PrepFlags,
    ) -> Result<Transfer<E::Hal>, PrepError<E::Hal>> {
        if let Err(error) =
            window(dst.len(), dst_offset, len).and(window(src.len(), src_offset, len))
        {
            return Err(PrepError {
                error,
                dst,
                src: Some(src),
            });
        }
        let op = Op::Copy {
            dst: dst.paddr() + dst_offset as DmaAddr,
            src: src.paddr() + src_offset as DmaAddr,
            len,
        };
        self.owned(op, flags, dst, Some(src))
    }

    /// Prepares filling `dst[offset..offset + len]` with `pattern`, taking
    /// the buffer until it ends. The buffer must be of the engine's Hal
    /// (a type check, as for [`Channel::copy`]).
    pub fn fill_buffer(
        &mut self,
        dst: Dma<E::Hal>,
        offset: usize,
        len: usize,
        pattern: u64,
        flags: PrepFlags,
    ) -> Result<Transfer<E::Hal>, PrepError<E::Hal>> {
        if let Err(error) = window(dst.len(), offset, len) {
            return Err(PrepError {
                error,
                dst,
                src: None,
            });
        }
        let op = Op::Fill {
            dst: dst.paddr() + offset as DmaAddr,
            len,
            pattern,
        };
        self.owned(op, flags, dst, None)
    }
}
