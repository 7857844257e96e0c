//! A window of memory-mapped device registers.
//!
//! Device memory is never reached through Rust references: every access is a
//! volatile read or write through a raw pointer (`volatile` 0.6), so the
//! compiler neither merges, reorders nor invents accesses. Each region counts
//! its accesses, which is how benchmarks report MMIO per operation as a
//! number that does not depend on machine noise.
//!
//! Under emulation an access costs far more than the instruction: QEMU 8.2
//! and later let only the last instruction of a translated block touch a
//! device and translate the block again around any other access (an
//! LSI53C895A register read took about 90 ns under QEMU 7.2's TCG and
//! 250-290 ns under 10.0's on the machine the README's numbers come from;
//! a one-element `rep lodsd` ends its block and took 100-180 ns). These
//! accessors are plain volatile loads and stores; the LSI53C895A driver
//! makes at most two per issued batch.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use volatile::VolatilePtr;

/// A mapped range of device registers.
///
/// Invariant: `base .. base + len` is mapped device memory, valid for
/// volatile accesses of the sizes used, for as long as this value exists.
#[derive(Debug)]
pub struct MmioRegion {
    base: NonNull<u8>,
    len: usize,
    accesses: AtomicU64,
}

// SAFETY: the region is a pair of plain addresses plus an atomic counter;
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
            accesses: AtomicU64::new(0),
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

    /// Volatile accesses made through this region since creation.
    #[inline]
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    /// A volatile pointer to the `T` at `offset`.
    ///
    /// Register offsets are constants of the driver, so an offset outside the
    /// window or misaligned for `T` is a bug in the caller: it panics.
    #[inline]
    fn register<T: Copy>(&self, offset: usize) -> VolatilePtr<'_, T> {
        assert!(
            offset.is_multiple_of(align_of::<T>())
                && offset
                    .checked_add(size_of::<T>())
                    .is_some_and(|end| end <= self.len),
            "register offset {offset:#x} outside or misaligned in a {:#x}-byte window",
            self.len
        );
        self.accesses.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the offset is inside the window and aligned (checked above),
        // and the window is valid device memory by the type's invariant.
        unsafe { VolatilePtr::new(self.base.add(offset).cast::<T>()) }
    }

    /// Reads the 8-bit register at `offset`.
    #[inline]
    pub fn read8(&self, offset: usize) -> u8 {
        self.register::<u8>(offset).read()
    }

    /// Writes the 8-bit register at `offset`.
    #[inline]
    pub fn write8(&self, offset: usize, value: u8) {
        self.register::<u8>(offset).write(value)
    }

    /// Reads the 32-bit register at `offset`.
    #[inline]
    pub fn read32(&self, offset: usize) -> u32 {
        self.register::<u32>(offset).read()
    }

    /// Writes the 32-bit register at `offset`.
    #[inline]
    pub fn write32(&self, offset: usize, value: u32) {
        self.register::<u32>(offset).write(value)
    }

    /// Reads the 64-bit register at `offset`.
    #[inline]
    pub fn read64(&self, offset: usize) -> u64 {
        self.register::<u64>(offset).read()
    }

    /// Writes the 64-bit register at `offset`.
    #[inline]
    pub fn write64(&self, offset: usize, value: u64) {
        self.register::<u64>(offset).write(value)
    }
}

/// Register access as a driver needs it: [`MmioRegion`] for real devices,
/// a fake device in host tests.
pub trait Registers {
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
    /// Accesses made so far (how benchmarks count MMIO).
    fn accesses(&self) -> u64;
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
    #[inline]
    fn accesses(&self) -> u64 {
        MmioRegion::accesses(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_reach_memory_and_are_counted() {
        let mut backing = [0u64; 4];
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives `regs` and is only touched through it.
        let regs = unsafe { MmioRegion::new(base, 32) };
        regs.write32(4, 0xdead_beef);
        regs.write8(0, 0x5a);
        regs.write64(8, 0x0123_4567_89ab_cdef);
        assert_eq!(regs.read32(4), 0xdead_beef);
        assert_eq!(regs.read8(0), 0x5a);
        assert_eq!(regs.read64(8), 0x0123_4567_89ab_cdef);
        assert_eq!(regs.accesses(), 6);
        assert_eq!(backing[0], 0xdead_beef_0000_005a);
    }

    #[test]
    #[should_panic(expected = "outside or misaligned")]
    fn offset_past_the_window_panics() {
        let mut backing = [0u32; 2];
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives `regs` and is only touched through it.
        let regs = unsafe { MmioRegion::new(base, 8) };
        regs.read32(8);
    }

    /// Issue 17, hole 9: `offset + size_of::<T>()` wrapped for an offset
    /// near `usize::MAX`, so with overflow checks off (release) the check
    /// passed and the pointer left the window; with them on, the panic was
    /// an overflow, not the bounds check.
    #[test]
    #[should_panic(expected = "outside or misaligned")]
    fn an_offset_whose_end_wraps_panics_at_the_bounds_check() {
        let mut backing = [0u32; 2];
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives `regs` and is only touched through it.
        let regs = unsafe { MmioRegion::new(base, 8) };
        regs.read32(usize::MAX - 3);
    }
}
