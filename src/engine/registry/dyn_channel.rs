//! [`DmaChannel`]: the object-safe face of a [`Channel`], so a registry
//! holds channels of any engine.

use core::time::Duration;

use embedded_hal::delay::DelayNs;

use crate::engine::{
    Capabilities, Channel, Cookie, DmaError, Engine, Limits, Op, PrepFlags, TxState,
};
use crate::hal::DmaAddr;

/// The operations of a channel that do not depend on its engine's type.
pub trait DmaChannel {
    /// The channel's unique number.
    fn id(&self) -> u64;
    /// What its engine can do.
    fn capabilities(&self) -> Capabilities;
    /// What one descriptor may hold.
    fn limits(&self) -> Limits;
    /// See [`Channel::prep`].
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    unsafe fn prep(&mut self, op: Op, flags: PrepFlags) -> Result<Cookie, DmaError>;
    /// See [`Channel::issue_pending`].
    fn issue_pending(&mut self);
    /// See [`Channel::status`].
    fn status(&mut self, cookie: Cookie) -> TxState;
    /// See [`Channel::wait`].
    fn wait(
        &mut self,
        cookie: Cookie,
        delay: &mut dyn DelayNs,
        timeout: Duration,
    ) -> Result<(), DmaError>;
    /// See [`Channel::terminate`].
    fn terminate(&mut self);
    /// See [`Channel::reset`].
    fn reset(&mut self) -> Result<(), DmaError>;
    /// See [`Channel::is_halted`].
    fn is_halted(&self) -> bool;
    /// See [`Channel::is_stopping`].
    fn is_stopping(&self) -> bool;

    /// The 2005 I/OAT proposal's `dma_async_memcpy_buf_to_buf` on any channel.
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    unsafe fn memcpy_buf_to_buf(
        &mut self,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
    ) -> Result<Cookie, DmaError> {
        // SAFETY: the caller upholds `Channel::prep`'s contract.
        unsafe { self.prep(Op::Copy { dst, src, len }, PrepFlags::empty()) }
    }
}

impl<E: Engine> DmaChannel for Channel<E> {
    fn id(&self) -> u64 {
        Channel::id(self)
    }
    fn capabilities(&self) -> Capabilities {
        self.engine().capabilities()
    }
    fn limits(&self) -> Limits {
        self.engine().limits()
    }
    unsafe fn prep(&mut self, op: Op, flags: PrepFlags) -> Result<Cookie, DmaError> {
        // SAFETY: the caller upholds `Channel::prep`'s contract.
        unsafe { Channel::prep(self, op, flags, None) }
    }
    fn issue_pending(&mut self) {
        Channel::issue_pending(self)
    }
    fn status(&mut self, cookie: Cookie) -> TxState {
        Channel::status(self, cookie)
    }
    fn wait(
        &mut self,
        cookie: Cookie,
        mut delay: &mut dyn DelayNs,
        timeout: Duration,
    ) -> Result<(), DmaError> {
        Channel::wait(self, cookie, &mut delay, timeout)
    }
    fn terminate(&mut self) {
        Channel::terminate(self)
    }
    fn reset(&mut self) -> Result<(), DmaError> {
        Channel::reset(self)
    }
    fn is_halted(&self) -> bool {
        Channel::is_halted(self)
    }
    fn is_stopping(&self) -> bool {
        Channel::is_stopping(self)
    }
}
