//! Windows of device registers: memory-mapped ([`MmioRegion`]) or in x86
//! I/O space ([`PortRegion`]).
//!
//! Device memory is never reached through Rust references: every access is a
//! volatile read or write through a raw pointer (`volatile` 0.6), so the
//! compiler neither merges, reorders nor invents accesses. With the
//! `access-counts` feature each region also counts its accesses (one atomic
//! add each), which is how benchmarks and tests report MMIO per operation
//! as a number that does not depend on machine noise; without it, as in
//! production, nothing is counted and nothing is paid.
//!
//! Under emulation an access costs far more than the instruction: QEMU 8.2
//! and later let only the last instruction of a translated block touch a
//! device and translate the block again around any other access (an
//! LSI53C895A register read took about 90 ns under QEMU 7.2's TCG and
//! 250-290 ns under 10.0's on the machine the guide's numbers come from;
//! a one-element `rep lodsd` ends its block and took 100-180 ns). These
//! accessors are plain volatile loads and stores; the LSI53C895A driver
//! makes one per issued batch, a write, through a [`PortRegion`] when it
//! has the chip's I/O BAR (an `out` ends its block by itself).

use core::ptr::NonNull;
#[cfg(any(test, feature = "access-counts"))]
use core::sync::atomic::{AtomicU64, Ordering};

use core::arch::asm;
use volatile::VolatilePtr;

mod reg;

pub use reg::{Access, ReadClears, ReadOnly, ReadWrite, Readable, Reg, Width, Writable, WriteOnly};

/// What a register window counts with the `access-counts` feature: reads
/// and writes apart, one atomic add per access.
#[cfg(any(test, feature = "access-counts"))]
#[derive(Debug)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
}

#[cfg(any(test, feature = "access-counts"))]
impl Counts {
    const fn new() -> Self {
        Counts {
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    #[inline]
    fn count(&self, read: bool) {
        if read { &self.reads } else { &self.writes }.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    #[inline]
    fn accesses(&self) -> u64 {
        self.reads() + self.writes.load(Ordering::Relaxed)
    }
}

/// Without the `access-counts` feature: nothing counted, no cost.
#[cfg(not(any(test, feature = "access-counts")))]
#[derive(Debug)]
struct Counts;

#[cfg(not(any(test, feature = "access-counts")))]
impl Counts {
    const fn new() -> Self {
        Counts
    }

    #[inline(always)]
    fn count(&self, _read: bool) {}
}

/// A mapped range of device registers.
///
/// Invariant: `base .. base + len` is mapped device memory, valid for
/// volatile accesses of the sizes used, for as long as this value exists.
#[derive(Debug)]
pub struct MmioRegion {
    base: NonNull<u8>,
    len: usize,
    counts: Counts,
}

// SAFETY: the region is a pair of plain addresses plus atomic counters;
// device registers are safe to access from any CPU (the driver above decides
// the order).
unsafe impl Send for MmioRegion {}
// SAFETY: as above; every access is a single volatile load or store.
unsafe impl Sync for MmioRegion {}

impl MmioRegion {
    /// Wraps `len` bytes of device registers at `base`.
    ///
    /// # Safety
    /// `base .. base + len` must be mapped (uncached, for real devices) device
    /// memory, valid for volatile accesses for the life of the returned
    /// value, and never accessed through Rust references.
    pub const unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        MmioRegion {
            base,
            len,
            counts: Counts::new(),
        }
    }

    /// The window's first byte (its virtual address, for a kernel that
    /// unmaps it or places data by it; never to be dereferenced as a Rust
    /// reference).
    #[inline]
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The length of the window in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Volatile accesses made through this region since creation (with
    /// the `access-counts` feature).
    #[cfg(any(test, feature = "access-counts"))]
    #[inline]
    pub fn accesses(&self) -> u64 {
        self.counts.accesses()
    }

    /// The reads among [`MmioRegion::accesses`] (with the `access-counts`
    /// feature).
    #[cfg(any(test, feature = "access-counts"))]
    #[inline]
    pub fn reads(&self) -> u64 {
        self.counts.reads()
    }

    /// A volatile pointer to the `T` at `offset`, counted as a read or a
    /// write (with the `access-counts` feature: one atomic add).
    ///
    /// Register offsets are constants of the driver, so an offset outside the
    /// window or misaligned for `T` is a bug in the caller: it panics.
    #[inline]
    fn register<T: Copy>(&self, offset: usize, read: bool) -> VolatilePtr<'_, T> {
        assert!(
            offset.is_multiple_of(align_of::<T>())
                && offset
                    .checked_add(size_of::<T>())
                    .is_some_and(|end| end <= self.len),
            "register offset {offset:#x} outside or misaligned in a {:#x}-byte window",
            self.len
        );
        self.counts.count(read);
        // SAFETY: the offset is inside the window and aligned (checked above),
        // and the window is valid device memory by the type's invariant.
        unsafe { VolatilePtr::new(self.base.add(offset).cast::<T>()) }
    }

    /// Reads the 8-bit register at `offset`.
    #[inline]
    pub fn read8(&self, offset: usize) -> u8 {
        self.register::<u8>(offset, true).read()
    }

    /// Writes the 8-bit register at `offset`.
    #[inline]
    pub fn write8(&self, offset: usize, value: u8) {
        self.register::<u8>(offset, false).write(value)
    }

    /// Reads the 32-bit register at `offset`.
    #[inline]
    pub fn read32(&self, offset: usize) -> u32 {
        self.register::<u32>(offset, true).read()
    }

    /// Writes the 32-bit register at `offset`.
    #[inline]
    pub fn write32(&self, offset: usize, value: u32) {
        self.register::<u32>(offset, false).write(value)
    }

    /// Reads the 64-bit register at `offset`.
    #[inline]
    pub fn read64(&self, offset: usize) -> u64 {
        self.register::<u64>(offset, true).read()
    }

    /// Writes the 64-bit register at `offset`.
    #[inline]
    pub fn write64(&self, offset: usize, value: u64) {
        self.register::<u64>(offset, false).write(value)
    }
}

/// Register access as a driver needs it: [`MmioRegion`] for real devices,
/// a fake device in host tests.
///
/// Drivers use the typed accesses ([`Registers::read`], [`Registers::write`],
/// [`Registers::read_clearing`]) with their [`Reg`] constants; the
/// untyped ones below are what an implementation provides.
pub trait Registers {
    /// Reads `reg`, a register whose read changes nothing.
    #[inline(always)]
    fn read<T: Width, A: Readable>(&self, reg: Reg<T, A>) -> T
    where
        Self: Sized,
    {
        T::read_at(self, reg.offset())
    }
    /// Reads `reg`, a register whose read changes the device (it clears
    /// what it reports): through `&mut`, as the read is a change.
    #[inline(always)]
    fn read_clearing<T: Width>(&mut self, reg: Reg<T, ReadClears>) -> T
    where
        Self: Sized,
    {
        T::read_at(self, reg.offset())
    }
    /// Writes `value` to `reg`.
    #[inline(always)]
    fn write<T: Width, A: Writable>(&self, reg: Reg<T, A>, value: T)
    where
        Self: Sized,
    {
        T::write_at(self, reg.offset(), value)
    }
    /// Reads the 8-bit register at `offset`.
    fn read8(&self, offset: usize) -> u8;
    /// Writes the 8-bit register at `offset`.
    fn write8(&self, offset: usize, value: u8);
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Reads the 64-bit register at `offset`.
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 64-bit register at `offset`.
    fn write64(&self, offset: usize, value: u64);
    /// Accesses made so far, for implementations that count them (how
    /// benchmarks count MMIO): 0 otherwise. [`MmioRegion`] counts with the
    /// `access-counts` feature.
    fn accesses(&self) -> u64 {
        0
    }
    /// The reads among [`Registers::accesses`] (0 where not counted).
    fn reads(&self) -> u64 {
        0
    }
}

impl Registers for MmioRegion {
    #[inline]
    fn read8(&self, offset: usize) -> u8 {
        MmioRegion::read8(self, offset)
    }
    #[inline]
    fn write8(&self, offset: usize, value: u8) {
        MmioRegion::write8(self, offset, value)
    }
    #[inline]
    fn read32(&self, offset: usize) -> u32 {
        MmioRegion::read32(self, offset)
    }
    #[inline]
    fn write32(&self, offset: usize, value: u32) {
        MmioRegion::write32(self, offset, value)
    }
    #[inline]
    fn read64(&self, offset: usize) -> u64 {
        MmioRegion::read64(self, offset)
    }
    #[inline]
    fn write64(&self, offset: usize, value: u64) {
        MmioRegion::write64(self, offset, value)
    }
    #[cfg(any(test, feature = "access-counts"))]
    #[inline]
    fn accesses(&self) -> u64 {
        MmioRegion::accesses(self)
    }
    #[cfg(any(test, feature = "access-counts"))]
    #[inline]
    fn reads(&self) -> u64 {
        MmioRegion::reads(self)
    }
}

/// A range of x86 I/O ports holding a device's registers (an I/O BAR).
///
/// Under emulation an `out` is the cheapest way to poke a device: it ends
/// its translated block by itself, so QEMU 8.2 and later never translate
/// the block again around it, as they do for an MMIO store in mid-block
/// (QEMU-FACTS.md). The LSI53C895A driver rings its doorbell through one
/// when the kernel hands it its BAR0.
///
/// Invariant: ports `base .. base + len` are the registers of one device,
/// which only the owner of this value pokes.
#[derive(Debug)]
pub struct PortRegion {
    base: u16,
    len: u16,
    counts: Counts,
}

impl PortRegion {
    /// Wraps the `len` ports at `base`.
    ///
    /// # Safety
    /// The ports must be the registers of one device (a PCI I/O BAR with
    /// I/O decoding enabled), which nothing else pokes while this value
    /// lives: writing a device's registers can make it move memory, so the
    /// driver given this window must be the one that owns the device.
    pub const unsafe fn new(base: u16, len: u16) -> Self {
        PortRegion {
            base,
            len,
            counts: Counts::new(),
        }
    }

    /// The first port.
    #[inline]
    pub fn base(&self) -> u16 {
        self.base
    }

    /// The number of ports.
    #[inline]
    pub fn len(&self) -> u16 {
        self.len
    }

    /// Whether the window is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Port accesses made through this window since creation (with the
    /// `access-counts` feature).
    #[cfg(any(test, feature = "access-counts"))]
    #[inline]
    pub fn accesses(&self) -> u64 {
        self.counts.accesses()
    }

    /// The reads among [`PortRegion::accesses`] (with the `access-counts`
    /// feature).
    #[cfg(any(test, feature = "access-counts"))]
    #[inline]
    pub fn reads(&self) -> u64 {
        self.counts.reads()
    }

    /// The port at `offset`, for an access of `size` bytes, counted as a
    /// read or a write.
    ///
    /// As for [`MmioRegion`], an offset outside the window or misaligned is
    /// a bug in the driver: it panics before any port is touched.
    #[inline]
    fn port(&self, offset: usize, size: usize, read: bool) -> u16 {
        assert!(
            offset.is_multiple_of(size)
                && offset
                    .checked_add(size)
                    .is_some_and(|end| end <= usize::from(self.len)),
            "port offset {offset:#x} outside or misaligned in a {:#x}-port window",
            self.len
        );
        self.counts.count(read);
        // `offset < len`, so the cast is exact; a window running past port
        // 0xffff would reach port 0 onwards, another device's: refused.
        self.base
            .checked_add(offset as u16)
            .expect("port window past port 0xffff")
    }

    // The `in`/`out` below are written here rather than taken from the
    // `x86_64` crate, whose port accessors tell the compiler they touch no
    // memory (`nomem`): a store the device is about to read (a descriptor
    // before its doorbell) could then be moved after the `out`. Without
    // `nomem` the compiler keeps every memory access on its side, as it
    // does around a volatile MMIO access; the CPU keeps them ordered, as
    // `in` and `out` wait for earlier stores.

    /// Reads the 8-bit register at `offset`.
    #[inline]
    pub fn read8(&self, offset: usize) -> u8 {
        let port = self.port(offset, 1, true);
        let value: u8;
        // SAFETY: the port is inside the device's window (checked), which
        // the type's invariant gives to its owner; `in` touches no memory of
        // the program's.
        unsafe {
            asm!("in al, dx", out("al") value, in("dx") port, options(nostack, preserves_flags))
        };
        value
    }

    /// Writes the 8-bit register at `offset`.
    #[inline]
    pub fn write8(&self, offset: usize, value: u8) {
        let port = self.port(offset, 1, false);
        // SAFETY: as for `read8`.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags))
        };
    }

    /// Reads the 32-bit register at `offset`.
    #[inline]
    pub fn read32(&self, offset: usize) -> u32 {
        let port = self.port(offset, 4, true);
        let value: u32;
        // SAFETY: as for `read8`.
        unsafe {
            asm!("in eax, dx", out("eax") value, in("dx") port, options(nostack, preserves_flags))
        };
        value
    }

    /// Writes the 32-bit register at `offset`.
    #[inline]
    pub fn write32(&self, offset: usize, value: u32) {
        let port = self.port(offset, 4, false);
        // SAFETY: as for `read8`.
        unsafe {
            asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
        };
    }
}

/// I/O space has no 64-bit accesses: a 64-bit register is two 32-bit ones,
/// low half first.
/// One 8-bit register of a [`PortRegion`], its port checked once: each
/// write is then a bare `out` (a doorbell rung per issued batch pays no
/// bounds check). It owns the window it was taken from, so the window's
/// invariant holds as long as it does.
#[derive(Debug)]
pub struct PortReg8 {
    region: PortRegion,
    port: u16,
}

impl PortReg8 {
    /// Register `reg` of `region`, or `None` where it lies outside the
    /// window (or past port 0xffff).
    pub fn new<A: Writable>(region: PortRegion, reg: Reg<u8, A>) -> Option<Self> {
        let offset = u16::try_from(reg.offset())
            .ok()
            .filter(|&o| o < region.len)?;
        let port = region.base.checked_add(offset)?;
        Some(PortReg8 { region, port })
    }

    /// The window it belongs to.
    pub fn region(&self) -> &PortRegion {
        &self.region
    }

    /// Writes `value` to the register.
    #[inline(always)]
    pub fn write(&self, value: u8) {
        self.region.counts.count(false);
        // SAFETY: the port is inside the device's window (checked when this
        // was made), which the window's invariant gives to its owner; `out`
        // touches no memory of the program's.
        unsafe {
            asm!("out dx, al", in("dx") self.port, in("al") value, options(nostack, preserves_flags))
        };
    }
}

impl Registers for PortRegion {
    #[inline]
    fn read8(&self, offset: usize) -> u8 {
        PortRegion::read8(self, offset)
    }
    #[inline]
    fn write8(&self, offset: usize, value: u8) {
        PortRegion::write8(self, offset, value)
    }
    #[inline]
    fn read32(&self, offset: usize) -> u32 {
        PortRegion::read32(self, offset)
    }
    #[inline]
    fn write32(&self, offset: usize, value: u32) {
        PortRegion::write32(self, offset, value)
    }
    #[inline]
    fn read64(&self, offset: usize) -> u64 {
        let low = PortRegion::read32(self, offset);
        let high = PortRegion::read32(self, offset.checked_add(4).expect("port offset"));
        u64::from(low) | u64::from(high) << 32
    }
    #[inline]
    fn write64(&self, offset: usize, value: u64) {
        PortRegion::write32(self, offset, value as u32);
        PortRegion::write32(
            self,
            offset.checked_add(4).expect("port offset"),
            (value >> 32) as u32,
        );
    }
    #[cfg(any(test, feature = "access-counts"))]
    #[inline]
    fn accesses(&self) -> u64 {
        PortRegion::accesses(self)
    }
    #[cfg(any(test, feature = "access-counts"))]
    #[inline]
    fn reads(&self) -> u64 {
        PortRegion::reads(self)
    }
}

#[cfg(test)]
mod tests;
