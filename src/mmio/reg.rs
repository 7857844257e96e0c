//! Registers as typed values: each one's offset, width and access in its
//! type, so a driver cannot read a 32-bit register with an 8-bit access,
//! write a read-only one, or read a register whose read changes the device
//! (a clear-on-read status) without `&mut` on its window.

use core::fmt;
use core::marker::PhantomData;

use super::Registers;

mod sealed {
    pub trait Sealed {}
}

/// How a register may be accessed (a marker type: [`ReadWrite`],
/// [`ReadOnly`], [`WriteOnly`], [`ReadClears`]).
pub trait Access: sealed::Sealed {}
/// An access that may read without changing the device: through `&self`.
pub trait Readable: Access {}
/// An access that may write.
pub trait Writable: Access {}

/// Read and written; a read changes nothing.
#[derive(Debug)]
pub enum ReadWrite {}
/// Only read; a read changes nothing.
#[derive(Debug)]
pub enum ReadOnly {}
/// Only written.
#[derive(Debug)]
pub enum WriteOnly {}
/// Read, and the read changes the device (a clear-on-read status such as
/// the LSI53C895A's DSTAT, or CTEST2, whose read clears ISTAT.SIGP): only
/// through [`Registers::read_clearing`], which takes the window by `&mut`.
///
/// ```
/// use dmaengine::drivers::lsi53c895a::regs::{self, Dstat};
/// use dmaengine::mmio::{MmioRegion, Registers};
/// fn acknowledge(window: &mut MmioRegion) -> Dstat {
///     Dstat::from_bits_retain(window.read_clearing(regs::DSTAT))
/// }
/// ```
///
/// A shared window cannot read it, neither as a plain read nor as a
/// clearing one:
///
/// ```compile_fail,E0277
/// use dmaengine::drivers::lsi53c895a::regs;
/// use dmaengine::mmio::{MmioRegion, Registers};
/// fn peek(window: &MmioRegion) -> u8 {
///     window.read(regs::DSTAT)
/// }
/// ```
///
/// ```compile_fail,E0596
/// use dmaengine::drivers::lsi53c895a::regs;
/// use dmaengine::mmio::{MmioRegion, Registers};
/// fn peek(window: &MmioRegion) -> u8 {
///     window.read_clearing(regs::DSTAT)
/// }
/// ```
#[derive(Debug)]
pub enum ReadClears {}

impl sealed::Sealed for ReadWrite {}
impl sealed::Sealed for ReadOnly {}
impl sealed::Sealed for WriteOnly {}
impl sealed::Sealed for ReadClears {}
impl Access for ReadWrite {}
impl Access for ReadOnly {}
impl Access for WriteOnly {}
impl Access for ReadClears {}
impl Readable for ReadWrite {}
impl Readable for ReadOnly {}
impl Writable for ReadWrite {}
impl Writable for WriteOnly {}

/// A register's width: the integer one access moves (`u8`, `u32`, `u64`).
pub trait Width: Copy + sealed::Sealed {
    /// One access of this width at `offset` in `regs`.
    fn read_at<R: Registers + ?Sized>(regs: &R, offset: usize) -> Self;
    /// One write of this width at `offset` in `regs`.
    fn write_at<R: Registers + ?Sized>(regs: &R, offset: usize, value: Self);
}

impl sealed::Sealed for u8 {}
impl sealed::Sealed for u32 {}
impl sealed::Sealed for u64 {}

impl Width for u8 {
    #[inline(always)]
    fn read_at<R: Registers + ?Sized>(regs: &R, offset: usize) -> Self {
        regs.read8(offset)
    }
    #[inline(always)]
    fn write_at<R: Registers + ?Sized>(regs: &R, offset: usize, value: Self) {
        regs.write8(offset, value)
    }
}

impl Width for u32 {
    #[inline(always)]
    fn read_at<R: Registers + ?Sized>(regs: &R, offset: usize) -> Self {
        regs.read32(offset)
    }
    #[inline(always)]
    fn write_at<R: Registers + ?Sized>(regs: &R, offset: usize, value: Self) {
        regs.write32(offset, value)
    }
}

impl Width for u64 {
    #[inline(always)]
    fn read_at<R: Registers + ?Sized>(regs: &R, offset: usize) -> Self {
        regs.read64(offset)
    }
    #[inline(always)]
    fn write_at<R: Registers + ?Sized>(regs: &R, offset: usize, value: Self) {
        regs.write64(offset, value)
    }
}

/// A device register: its byte offset in the device's window, its width
/// `T` and its access `A`. Drivers name theirs as constants
/// (`drivers::lsi53c895a::regs`, `drivers::edu::regs`) and reach them
/// through [`Registers::read`], [`Registers::write`] and
/// [`Registers::read_clearing`].
pub struct Reg<T, A> {
    offset: usize,
    _kind: PhantomData<fn() -> (T, A)>,
}

impl<T, A> Reg<T, A> {
    /// The register at byte `offset`.
    pub const fn at(offset: usize) -> Self {
        Reg {
            offset,
            _kind: PhantomData,
        }
    }

    /// Its byte offset in the window.
    pub const fn offset(self) -> usize {
        self.offset
    }
}

impl<T, A> Clone for Reg<T, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, A> Copy for Reg<T, A> {}

impl<T, A> PartialEq for Reg<T, A> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}

impl<T, A> Eq for Reg<T, A> {}

impl<T, A> fmt::Debug for Reg<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Reg<{}, {}>({:#x})",
            core::any::type_name::<T>(),
            core::any::type_name::<A>()
                .rsplit("::")
                .next()
                .unwrap_or(""),
            self.offset
        )
    }
}
