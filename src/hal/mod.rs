//! What the host kernel provides to the crate: DMA memory and the mapping
//! between the addresses devices use and the addresses the CPU uses.
//!
//! Modelled on the `virtio-drivers` crate's `Hal`: associated functions, so a
//! driver is generic over the kernel without holding a reference to it, and a
//! fake implementation over host memory can sit next to the real one.

use core::marker::PhantomData;
use core::ptr::NonNull;

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod pool;

/// Why the kernel's [`Hal`] (or a [`Dma`] or [`SharedBuffer`] over it)
/// refused memory. The HAL sits below the engine, so it has its own
/// errors; the engine turns each into the `DmaError` of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalError {
    /// A buffer or allocation of zero bytes.
    ZeroLength,
    /// The buffer's addresses wrap, or lie beyond what devices can reach.
    BeyondDmaMask,
    /// The Hal cannot share this buffer (only [`Dma`] buffers can be used,
    /// or its pages are not physically contiguous).
    NotSupported,
    /// DMA memory (or address space for it) is exhausted.
    NoMemory,
}

impl core::fmt::Display for HalError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            HalError::ZeroLength => "zero-length buffer",
            HalError::BeyondDmaMask => "buffer beyond the devices' reach",
            HalError::NotSupported => "buffer cannot be shared with devices",
            HalError::NoMemory => "out of DMA memory",
        })
    }
}

impl core::error::Error for HalError {}

/// An address as a DMA-capable device sees it (a physical address when no
/// IOMMU translates device accesses).
pub type DmaAddr = u64;

/// The size of a page of DMA memory.
pub const PAGE_SIZE: usize = 4096;

/// The kernel services the drivers need.
///
/// # Safety
/// Implementations must return memory that is physically contiguous, zeroed,
/// page-aligned, mapped for the CPU at the returned pointer, reachable by
/// devices at the returned DMA address, coherent between the two (as on
/// x86), and not used by anything else until `dma_dealloc`.
/// `phys_to_virt` of a DMA address they handed out (by `dma_alloc` or
/// `share`) must point at the same bytes the device reaches there, to the
/// end of that page, and on across the following pages of the allocation
/// or share unless [`Hal::CPU_CONTIGUOUS`] is `false` (the CPU engine
/// copies through it).
pub unsafe trait Hal {
    /// Allocates `pages` contiguous zeroed pages of DMA memory whose every
    /// byte has a DMA address at most `dma_mask` (a device's reach: the
    /// LSI53C895A's descriptors need `0xffff_ffff`, the edu device's
    /// default is 28 bits; a zone like Linux's `GFP_DMA32`): their DMA
    /// address and CPU pointer, or `None` if no such memory is left. A
    /// kernel whose allocator has no zones, or cannot free, serves this
    /// from a [`pool::DmaPool`] it fills at boot; behind an IOMMU
    /// ([`crate::iommu::dma`]) the mask applies to IOVAs, and any RAM will
    /// do.
    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)>;

    /// Frees memory from [`Hal::dma_alloc`].
    ///
    /// # Safety
    /// `paddr`, `vaddr` and `pages` must be exactly those of one earlier
    /// allocation, which no device or CPU code uses any more.
    unsafe fn dma_dealloc(paddr: DmaAddr, vaddr: NonNull<u8>, pages: usize);

    /// The CPU pointer through which the kernel reaches DMA address `paddr`
    /// and the rest of its page (the CPU engine copies through it), and
    /// the bytes after that page too when [`Hal::CPU_CONTIGUOUS`] says so.
    fn phys_to_virt(paddr: DmaAddr) -> NonNull<u8>;

    /// Whether the bytes at consecutive DMA addresses of one allocation or
    /// share lie at consecutive CPU addresses from the pointer
    /// [`Hal::phys_to_virt`] gives, across pages: true (the default) for
    /// DMA addresses that are physical addresses of physically contiguous
    /// memory in a linear map; false for a Hal that maps pages from
    /// wherever they are at consecutive DMA addresses (an IOMMU's IOVAs
    /// for a shared buffer), through which the CPU engine then reaches each
    /// page on its own rather than run on from the first page's frame into
    /// the next frame, another owner's.
    const CPU_CONTIGUOUS: bool = true;

    /// Makes `buffer`, memory the caller owns that did not come from
    /// [`Hal::dma_alloc`] (a stack array, a heap `Vec`), reachable by
    /// devices for `direction`, and returns the DMA address of its first
    /// byte; the device sees the whole buffer at consecutive addresses
    /// from there (as `virtio-drivers`' `Hal::share`). Without an IOMMU
    /// that is its physical address, if its pages are physically
    /// contiguous; with one, map the pages into the device's domain
    /// (read-only for [`Direction::ToDevice`]) wherever they are. The
    /// default refuses (`NotSupported`): only [`Dma`] buffers can be used.
    /// An empty buffer is `ZeroLength`. Call it through [`SharedBuffer`].
    ///
    /// # Safety
    /// `buffer` must stay valid, and not be accessed by the CPU in a way
    /// that conflicts with `direction`, until the matching
    /// [`Hal::unshare`].
    unsafe fn share(buffer: NonNull<[u8]>, direction: Direction) -> Result<DmaAddr, HalError> {
        let _ = direction;
        if buffer.is_empty() {
            return Err(HalError::ZeroLength);
        }
        Err(HalError::NotSupported)
    }

    /// Ends a [`Hal::share`]: afterwards no device can reach the buffer (an
    /// IOMMU mapping is removed and its IOTLB entries invalidated), and for
    /// [`Direction::FromDevice`] and [`Direction::Both`] the CPU sees what
    /// the device wrote (copied back, if `share` used a bounce buffer). The
    /// default does nothing, as sharing by physical address needs nothing
    /// undone.
    ///
    /// # Safety
    /// `dma`, `buffer` and `direction` must be those of one earlier
    /// successful `share`, and no device request may still use the buffer.
    unsafe fn unshare(dma: DmaAddr, buffer: NonNull<[u8]>, direction: Direction) {
        let _ = (dma, buffer, direction);
    }
}

/// Which way the bytes of a shared buffer go (`virtio-drivers`'
/// `BufferDirection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device only reads it (a copy's source).
    ToDevice,
    /// The device only writes it (a copy's destination).
    FromDevice,
    /// Both.
    Both,
}

/// A buffer the caller owns, shared with devices for the length of one
/// closure: [`Hal::share`] before it runs, [`Hal::unshare`] after it
/// returns (or unwinds). Its [`SharedBuffer::dma_addr`] goes into requests
/// like a [`Dma`]'s; the requests' `unsafe` contract still asks that they
/// end before the closure returns.
///
/// The closure gets the handle by reference, and the handle lives in the
/// sharing call's own frame: no `mem::forget` or leak in the caller's code
/// can keep a buffer shared after its borrow has ended (when the handle
/// was an owned value, forgetting it left the pages reachable by devices,
/// through an IOMMU mapping, after they were freed).
///
/// ```no_run
/// use core::time::Duration;
/// use dmaengine::engine::{Channel, DmaError, Engine, PrepFlags};
/// use dmaengine::hal::{Direction, Hal, SharedBuffer};
///
/// fn copy<H: Hal, E: Engine>(
///     chan: &mut Channel<E>,
///     from: &[u8],
///     into: &mut [u8],
///     delay: &mut impl embedded_hal::delay::DelayNs,
/// ) -> Result<(), DmaError> {
///     let len = from.len().min(into.len());
///     SharedBuffer::<H>::to_device(from, |src| {
///         SharedBuffer::<H>::from_device(into, Direction::FromDevice, |dst| {
///             // SAFETY: both buffers stay shared (borrowed, untouched) until
///             // the copy has ended or the engine has been stopped, below.
///             let cookie = unsafe {
///                 chan.prep_copy(dst.dma_addr(), src.dma_addr(), len, PrepFlags::empty())
///             }?;
///             let waited = chan.wait(cookie, delay, Duration::from_millis(100));
///             if waited.is_err() {
///                 // Not ended: stop the engine before the buffers are unshared.
///                 chan.terminate();
///             }
///             waited
///         })?
///     })?
/// } // unshared as each closure returns: `into` holds the bytes
/// ```
///
/// The handle cannot leave its closure:
///
/// ```compile_fail
/// # use dmaengine::hal::{DmaAddr, Hal, SharedBuffer};
/// fn escape<H: Hal>(buffer: &[u8]) {
///     let kept = SharedBuffer::<H>::to_device(buffer, |shared| shared);
/// }
/// ```
pub struct SharedBuffer<'a, H: Hal> {
    dma: DmaAddr,
    buffer: NonNull<[u8]>,
    direction: Direction,
    _borrow: PhantomData<(&'a mut [u8], H)>,
}

impl<H: Hal> SharedBuffer<'_, H> {
    /// Shares `buffer` for the device to read while `f` runs, and returns
    /// what `f` returns; `Err` (and `f` not run) if the Hal cannot share it.
    pub fn to_device<R>(
        buffer: &[u8],
        f: impl FnOnce(&SharedBuffer<'_, H>) -> R,
    ) -> Result<R, HalError> {
        SharedBuffer::<H>::scoped(NonNull::from(buffer), Direction::ToDevice, f)
    }

    /// Shares `buffer` for the device to write (or read and write, with
    /// [`Direction::Both`]) while `f` runs, as [`SharedBuffer::to_device`].
    pub fn from_device<R>(
        buffer: &mut [u8],
        direction: Direction,
        f: impl FnOnce(&SharedBuffer<'_, H>) -> R,
    ) -> Result<R, HalError> {
        SharedBuffer::<H>::scoped(NonNull::from(buffer), direction, f)
    }

    /// Shares `buffer` (borrowed by the caller for the whole call), runs
    /// `f`, unshares when the handle, a local of this frame, is dropped.
    fn scoped<R>(
        buffer: NonNull<[u8]>,
        direction: Direction,
        f: impl FnOnce(&SharedBuffer<'_, H>) -> R,
    ) -> Result<R, HalError> {
        if buffer.is_empty() {
            return Err(HalError::ZeroLength);
        }
        // SAFETY: the caller's borrow of the buffer lasts for this whole
        // call, and `shared` below is dropped (unshared) before it returns
        // or as it unwinds: `f` only borrows it. Meanwhile the CPU cannot
        // reach a `from_device` buffer (borrowed mutably) and only reads a
        // `to_device` one.
        let dma = unsafe { H::share(buffer, direction) }?;
        let shared = SharedBuffer {
            dma,
            buffer,
            direction,
            _borrow: PhantomData,
        };
        Ok(f(&shared))
    }

    /// The DMA address of the buffer's first byte.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Always false: an empty buffer is refused.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl<H: Hal> Drop for SharedBuffer<'_, H> {
    fn drop(&mut self) {
        // SAFETY: the values of the successful `share` that made this; the
        // requests that used it have ended (the contract of the `unsafe`
        // prep that used its address).
        unsafe { H::unshare(self.dma, self.buffer, self.direction) }
    }
}

/// An owned, physically contiguous DMA buffer, freed on drop (like
/// `virtio-drivers`' `Dma<H>`).
///
/// While a `Dma` is owned by the caller no device uses it, so it may be read
/// and written through slices. Handing it to a transfer moves it away; it
/// comes back when the transfer has ended.
pub struct Dma<H: Hal> {
    paddr: DmaAddr,
    vaddr: NonNull<u8>,
    len: usize,
    pages: usize,
    _hal: PhantomData<H>,
}

// SAFETY: a `Dma` owns its memory exclusively; moving it between threads
// moves that ownership.
unsafe impl<H: Hal> Send for Dma<H> {}
// SAFETY: shared access only allows reads through `&[u8]`.
unsafe impl<H: Hal> Sync for Dma<H> {}

impl<H: Hal> Dma<H> {
    /// Allocates `len` bytes (rounded up to whole pages), zeroed, anywhere
    /// devices can reach.
    pub fn new(len: usize) -> Result<Self, HalError> {
        Self::new_below(len, u64::MAX)
    }

    /// Allocates `len` bytes (rounded up to whole pages), zeroed, with
    /// every DMA address at most `dma_mask` (a channel's
    /// [`Limits::dma_mask`](crate::engine::Limits::dma_mask)).
    pub fn new_below(len: usize, dma_mask: u64) -> Result<Self, HalError> {
        if len == 0 {
            return Err(HalError::ZeroLength);
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let (paddr, vaddr) = H::dma_alloc(pages, dma_mask).ok_or(HalError::NoMemory)?;
        Ok(Dma {
            paddr,
            vaddr,
            len,
            pages,
            _hal: PhantomData,
        })
    }

    /// The buffer's DMA address.
    pub fn paddr(&self) -> DmaAddr {
        self.paddr
    }

    /// The buffer's length in bytes, as asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a `Dma` holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The CPU pointer to the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.vaddr.as_ptr()
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the memory is ours, mapped and initialised (zeroed at
        // allocation); no device writes it while we own it.
        unsafe { core::slice::from_raw_parts(self.vaddr.as_ptr(), self.len) }
    }

    /// The contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`, and `&mut self` makes this unique.
        unsafe { core::slice::from_raw_parts_mut(self.vaddr.as_ptr(), self.len) }
    }
}

impl<H: Hal> core::fmt::Debug for Dma<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Dma")
            .field("paddr", &format_args!("{:#x}", self.paddr))
            .field("len", &self.len)
            .finish()
    }
}

impl<H: Hal> Drop for Dma<H> {
    fn drop(&mut self) {
        // SAFETY: these are the values `dma_alloc` returned; we own the
        // memory and no transfer holds it (a transfer owns the `Dma` itself).
        unsafe { H::dma_dealloc(self.paddr, self.vaddr, self.pages) }
    }
}
