//! A pool of DMA memory the kernel sets aside at boot, for a [`Hal`](super::Hal)
//! whose frame allocator cannot free, or has no zones to honour a
//! device's DMA mask (Linux's `ZONE_DMA`/`ZONE_DMA32` in miniature).
//!
//! The kernel reserves one physically contiguous run of RAM below the
//! lowest mask its devices have (the edu device's default is 28 bits: the
//! first 256 MiB) and hands it to a [`DmaPool`] kept in a `static`; its
//! `Hal` then allocates and frees through the pool:
//!
//! ```
//! use core::ptr::NonNull;
//! use dmaengine::engine::shared::NoMasking;
//! use dmaengine::hal::pool::DmaPool;
//! use dmaengine::hal::{DmaAddr, Hal};
//!
//! /// 1 MiB of DMA memory (256 pages: 4 bitmap words).
//! static POOL: DmaPool<NoMasking, 4> = DmaPool::new();
//!
//! struct PoolHal;
//! // SAFETY: the pool's memory: contiguous, zeroed, mapped at the pointer
//! // it returns, nobody else's until freed.
//! unsafe impl Hal for PoolHal {
//!     fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
//!         POOL.alloc(pages, dma_mask)
//!     }
//!     unsafe fn dma_dealloc(paddr: DmaAddr, _vaddr: NonNull<u8>, pages: usize) {
//!         // SAFETY: the caller's contract: one earlier allocation, unused.
//!         unsafe { POOL.free(paddr, pages) }
//!     }
//!     fn phys_to_virt(paddr: DmaAddr) -> NonNull<u8> {
//!         POOL.phys_to_virt(paddr).expect("an address of the pool")
//!     }
//! }
//! # let layout = std::alloc::Layout::from_size_align(256 * 4096, 4096).unwrap();
//! # // SAFETY: a non-empty layout.
//! # let memory = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).unwrap();
//! // At boot: the run's physical address and where the kernel maps it.
//! // SAFETY: (in a kernel) 256 frames of RAM from there on, given to the
//! // pool alone, mapped write-back at `memory` for good.
//! unsafe { POOL.init(memory.as_ptr() as u64, memory, 256) }.unwrap();
//! let (paddr, _) = PoolHal::dma_alloc(2, u64::MAX).unwrap();
//! // SAFETY: just allocated, unused.
//! unsafe { PoolHal::dma_dealloc(paddr, memory, 2) };
//! assert_eq!(POOL.free_pages(), 256);
//! ```

use core::ptr::NonNull;

use super::{DmaAddr, PAGE_SIZE};
use crate::sync::IrqControl;

const PAGE: u64 = PAGE_SIZE as u64;

/// Why [`DmaPool::init`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The pool was given its memory already.
    AlreadyInitialised,
    /// The run is empty, larger than the pool's bitmap, not page-aligned,
    /// or wraps the address space.
    BadRun,
}

impl core::fmt::Display for PoolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PoolError::AlreadyInitialised => "the pool already has its memory",
            PoolError::BadRun => "the run is empty, too large, misaligned or wrapping",
        })
    }
}

impl core::error::Error for PoolError {}

/// Up to `WORDS * 64` pages of DMA memory, first fit below each
/// request's mask; interrupts are masked through `I` while its lock is
/// held (use [`X86Interrupts`](crate::engine::shared::X86Interrupts) if
/// a handler may drop a `Dma` buffer).
pub struct DmaPool<I: IrqControl, const WORDS: usize> {
    inner: spin::Mutex<Inner<WORDS>>,
    _irq: core::marker::PhantomData<fn() -> I>,
}

struct Inner<const WORDS: usize> {
    /// Physical address of the first page (0 pages: not initialised).
    phys: u64,
    virt: Option<NonNull<u8>>,
    pages: usize,
    /// One bit per page, set while allocated.
    used: [u64; WORDS],
}

// SAFETY: the pointer is to memory the pool owns (its `init` contract) and
// is only used under the lock.
unsafe impl<const WORDS: usize> Send for Inner<WORDS> {}

impl<I: IrqControl, const WORDS: usize> DmaPool<I, WORDS> {
    /// A pool with no memory yet ([`DmaPool::init`] gives it its run).
    pub const fn new() -> Self {
        DmaPool {
            inner: spin::Mutex::new(Inner {
                phys: 0,
                virt: None,
                pages: 0,
                used: [0; WORDS],
            }),
            _irq: core::marker::PhantomData,
        }
    }

    fn locked<T>(&self, f: impl FnOnce(&mut Inner<WORDS>) -> T) -> T {
        let were_on = I::disable();
        let result = f(&mut self.inner.lock());
        I::restore(were_on);
        result
    }

    /// Gives the pool `pages` pages of RAM at physical address `phys`,
    /// which the CPU reaches at `virt`.
    ///
    /// # Safety
    /// The run is RAM that nothing else uses from now on, physically
    /// contiguous, mapped for the CPU write-back (coherent with devices,
    /// as on x86) at `virt` for as long as the pool is used.
    pub unsafe fn init(&self, phys: u64, virt: NonNull<u8>, pages: usize) -> Result<(), PoolError> {
        let fits = pages > 0
            && pages <= WORDS * 64
            && phys.is_multiple_of(PAGE)
            && (pages as u64)
                .checked_mul(PAGE)
                .and_then(|len| phys.checked_add(len - 1))
                .is_some()
            && (virt.as_ptr() as usize).is_multiple_of(PAGE_SIZE);
        if !fits {
            return Err(PoolError::BadRun);
        }
        self.locked(|inner| {
            if inner.pages != 0 {
                return Err(PoolError::AlreadyInitialised);
            }
            *inner = Inner {
                phys,
                virt: Some(virt),
                pages,
                used: [0; WORDS],
            };
            Ok(())
        })
    }

    /// `pages` zeroed pages whose last byte's physical address is at most
    /// `dma_mask`, first fit: their physical address and CPU pointer, or
    /// `None` if no such run is free.
    pub fn alloc(&self, pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        if pages == 0 {
            return None;
        }
        let (phys, virt) = self.locked(|inner| {
            // Page i's last byte is phys + (i + 1) * PAGE - 1 <= mask.
            let below = (dma_mask.checked_sub(inner.phys)?.saturating_add(1) / PAGE)
                .min(inner.pages as u64) as usize;
            let mut run = 0;
            let first = (0..below).find(|&i| {
                run = if inner.used[i / 64] & 1 << (i % 64) != 0 {
                    0
                } else {
                    run + 1
                };
                run == pages
            })? + 1
                - pages;
            for i in first..first + pages {
                inner.used[i / 64] |= 1 << (i % 64);
            }
            let offset = first * PAGE_SIZE;
            // SAFETY: within the run `init` was given (first + pages <=
            // inner.pages).
            let virt = unsafe { inner.virt?.add(offset) };
            Some((inner.phys + offset as u64, virt))
        })?;
        // SAFETY: the pages are now ours alone (marked above), mapped at
        // `virt` (the `init` contract); zeroed outside the lock.
        unsafe { virt.as_ptr().write_bytes(0, pages * PAGE_SIZE) };
        Some((phys, virt))
    }

    /// Frees `pages` pages from `phys`; pages not allocated from the pool
    /// are left alone.
    ///
    /// # Safety
    /// They are one earlier allocation of this pool, which no device or
    /// CPU code uses any more.
    pub unsafe fn free(&self, phys: DmaAddr, pages: usize) {
        self.locked(|inner| {
            let Some(first) = phys
                .checked_sub(inner.phys)
                .map(|off| (off / PAGE) as usize)
                .filter(|&f| f.checked_add(pages).is_some_and(|end| end <= inner.pages))
            else {
                return;
            };
            for i in first..first + pages {
                inner.used[i / 64] &= !(1 << (i % 64));
            }
        });
    }

    /// The CPU pointer to physical address `phys` of the pool, if it is
    /// one.
    pub fn phys_to_virt(&self, phys: DmaAddr) -> Option<NonNull<u8>> {
        self.locked(|inner| {
            let offset = phys.checked_sub(inner.phys)?;
            if offset >= inner.pages as u64 * PAGE {
                return None;
            }
            // SAFETY: inside the run `init` was given.
            Some(unsafe { inner.virt?.add(offset as usize) })
        })
    }

    /// Pages free now.
    pub fn free_pages(&self) -> usize {
        self.locked(|inner| {
            inner.pages
                - inner
                    .used
                    .iter()
                    .map(|w| w.count_ones() as usize)
                    .sum::<usize>()
        })
    }
}

impl<I: IrqControl, const WORDS: usize> Default for DmaPool<I, WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{Layout, alloc, dealloc};

    use proptest::prelude::*;

    use super::*;
    use crate::sync::NoMasking;

    /// Host memory standing in for the reserved run (its address is its
    /// "physical" address); filled with 0xa5 so zeroing shows.
    struct Run(NonNull<u8>, usize);

    impl Run {
        fn new(pages: usize) -> Run {
            let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: a non-empty layout.
            let ptr = NonNull::new(unsafe { alloc(layout) }).unwrap();
            // SAFETY: just allocated, this size.
            unsafe { ptr.as_ptr().write_bytes(0xa5, pages * PAGE_SIZE) };
            Run(ptr, pages)
        }
        fn phys(&self) -> u64 {
            self.0.as_ptr() as u64
        }
    }

    impl Drop for Run {
        fn drop(&mut self) {
            let layout = Layout::from_size_align(self.1 * PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.0.as_ptr(), layout) }
        }
    }

    #[test]
    fn bad_runs_and_a_second_init_are_refused() {
        let run = Run::new(8);
        let pool: DmaPool<NoMasking, 1> = DmaPool::new();
        // SAFETY: refused before the pool keeps anything.
        unsafe {
            assert_eq!(pool.init(run.phys(), run.0, 0), Err(PoolError::BadRun));
            assert_eq!(pool.init(run.phys(), run.0, 65), Err(PoolError::BadRun));
            assert_eq!(pool.init(run.phys() + 1, run.0, 8), Err(PoolError::BadRun));
            assert_eq!(pool.init(!0xfff, run.0, 2), Err(PoolError::BadRun));
        }
        assert_eq!(pool.alloc(1, u64::MAX), None, "no memory yet");
        // SAFETY: the run is this test's, unused by anything else.
        unsafe { pool.init(run.phys(), run.0, 8) }.unwrap();
        // SAFETY: as above (and refused).
        let again = unsafe { pool.init(run.phys(), run.0, 8) };
        assert_eq!(again, Err(PoolError::AlreadyInitialised));
        assert_eq!(pool.free_pages(), 8);
    }

    #[test]
    fn allocations_are_zeroed_below_the_mask_and_come_back() {
        let run = Run::new(16);
        let pool: DmaPool<NoMasking, 1> = DmaPool::new();
        // SAFETY: the run is this test's, unused by anything else.
        unsafe { pool.init(run.phys(), run.0, 16) }.unwrap();
        let (a, va) = pool.alloc(3, u64::MAX).unwrap();
        assert_eq!(a, run.phys());
        // SAFETY: three pages just allocated, mapped at `va`.
        let bytes = unsafe { core::slice::from_raw_parts(va.as_ptr(), 3 * PAGE_SIZE) };
        assert!(bytes.iter().all(|&b| b == 0), "zeroed");
        // SAFETY: the page after it is the pool's, still free.
        let next = unsafe { *va.as_ptr().add(3 * PAGE_SIZE) };
        assert_eq!(next, 0xa5, "and no further");
        // A mask that leaves room for two pages only: the next two fit, a
        // third does not.
        let mask = run.phys() + 5 * PAGE - 1;
        let (b, _) = pool.alloc(2, mask).unwrap();
        assert_eq!(b, run.phys() + 3 * PAGE);
        assert_eq!(pool.alloc(1, mask), None);
        // Below the run altogether: nothing.
        assert_eq!(pool.alloc(1, run.phys() - 1), None);
        // SAFETY: an offset inside the run.
        let third = unsafe { run.0.add(3 * PAGE_SIZE) };
        assert_eq!(pool.phys_to_virt(b), Some(third));
        assert_eq!(pool.phys_to_virt(run.phys() + 16 * PAGE), None);
        // SAFETY: the first allocation, unused.
        unsafe { pool.free(a, 3) };
        assert_eq!(
            pool.alloc(4, u64::MAX).map(|(p, _)| p),
            Some(run.phys() + 5 * PAGE)
        );
        assert_eq!(pool.alloc(3, u64::MAX).map(|(p, _)| p), Some(run.phys()));
        assert_eq!(pool.free_pages(), 16 - 3 - 2 - 4);
    }

    proptest! {
        /// Allocations never overlap and stay inside the run, whatever the
        /// order of allocations and frees; everything freed is free again.
        #[test]
        fn allocations_never_overlap(ops in prop::collection::vec((1usize..9, any::<bool>()), 1..60)) {
            let run = Run::new(64);
            let pool: DmaPool<NoMasking, 1> = DmaPool::new();
            // SAFETY: the run is this test's, unused by anything else.
            unsafe { pool.init(run.phys(), run.0, 64) }.unwrap();
            let mut held: Vec<(u64, usize)> = Vec::new();
            for (pages, free_one) in ops {
                if free_one && !held.is_empty() {
                    let (p, n) = held.remove(pages % held.len());
                    // SAFETY: one earlier allocation, unused.
                    unsafe { pool.free(p, n) };
                } else if let Some((p, _)) = pool.alloc(pages, u64::MAX) {
                    prop_assert!(p >= run.phys() && p + (pages as u64) * PAGE <= run.phys() + 64 * PAGE);
                    for &(q, m) in &held {
                        prop_assert!(p + pages as u64 * PAGE <= q || q + m as u64 * PAGE <= p);
                    }
                    held.push((p, pages));
                }
                let used: usize = held.iter().map(|&(_, n)| n).sum();
                prop_assert_eq!(pool.free_pages(), 64 - used);
            }
            for (p, n) in held {
                // SAFETY: as above.
                unsafe { pool.free(p, n) };
            }
            prop_assert_eq!(pool.free_pages(), 64);
        }
    }
}
