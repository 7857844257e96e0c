//! [`Hal`]s over host memory, for host tests (public with the `testing`
//! feature): [`FakeHal`], whose DMA addresses are the host virtual
//! addresses of page-aligned heap allocations, so a CPU engine (or a fake
//! device) can copy through them, and which counts what is allocated and
//! shared; and [`FakeHal32`], whose DMA addresses are 32-bit, in an arena
//! mapped at [`ARENA_BASE`], for drivers that cannot reach above 4 GiB
//! (the LSI53C895A's).
//!
//! Not modelled: physical memory (addresses are host addresses, or offsets
//! from [`ARENA_BASE`]), caches and coherence (host memory is coherent), an
//! IOMMU between device and memory (`share` hands out the buffer's own
//! address), and zones: [`FakeHal`] refuses a mask its heap allocation
//! happens to exceed (a 32-bit one, mostly, on a 64-bit host), and
//! [`FakeHal32`] any mask short of its arena's end. [`FakeHal32`] shares
//! nothing (the default refusal), and its arena of 32 MiB is one for the
//! whole process, never freed. Both are process-global: tests running in
//! parallel share their counts, so a test checks its own addresses
//! ([`FakeHal::is_live`]) rather than totals.
//!
//! # Example
//!
//! A buffer comes from the fake, is live while owned, and goes back when
//! dropped:
//!
//! ```
//! use dmaengine::hal::Dma;
//! use dmaengine::hal::fake::FakeHal;
//!
//! let buf = Dma::<FakeHal>::new(5000)?;
//! let paddr = buf.paddr();
//! assert!(FakeHal::is_live(paddr));
//! assert_eq!(paddr % 4096, 0, "page-aligned");
//! drop(buf);
//! assert!(!FakeHal::is_live(paddr));
//! # Ok::<(), dmaengine::engine::DmaError>(())
//! ```
//!
//! The fake devices in [`testing`](crate::testing) use these for their
//! memory; their examples show a [`Channel`](crate::engine::Channel) over
//! each.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Mutex;

use super::HalError;
use super::{Direction, DmaAddr, Hal, PAGE_SIZE};

/// Outstanding allocations, to check that everything is freed.
static LIVE: Mutex<Option<HashMap<DmaAddr, usize>>> = Mutex::new(None);

/// A [`Hal`] over the host heap: zeroed, page-aligned allocations whose
/// DMA address is their host address, checked on free (freeing what it
/// did not allocate panics), and `share` that hands out a buffer's own
/// address and records it until `unshare`.
pub struct FakeHal;

impl FakeHal {
    /// Pages currently allocated through the fake HAL.
    pub fn live_pages() -> usize {
        LIVE.lock()
            .unwrap()
            .as_ref()
            .map_or(0, |m| m.values().sum())
    }

    /// Whether the allocation at `paddr` is still allocated.
    pub fn is_live(paddr: DmaAddr) -> bool {
        LIVE.lock()
            .unwrap()
            .as_ref()
            .is_some_and(|m| m.contains_key(&paddr))
    }
}

fn layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap()
}

// SAFETY: allocations are zeroed, page-aligned host memory (contiguous by
// construction), identified by their own address, and freed exactly once.
unsafe impl Hal for FakeHal {
    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        // Anyone may call this safe function: no pages (a zero-size
        // allocation is undefined) and sizes past `isize::MAX` (which would
        // wrap to fewer bytes than asked) are refused.
        if pages == 0 || pages > isize::MAX as usize / PAGE_SIZE {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout(pages)) })?;
        if ptr.as_ptr() as u64 + (pages * PAGE_SIZE) as u64 - 1 > dma_mask {
            // SAFETY: allocated just above with this layout.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout(pages)) };
            return None;
        }
        LIVE.lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(ptr.as_ptr() as u64, pages);
        Some((ptr.as_ptr() as DmaAddr, ptr))
    }

    unsafe fn dma_dealloc(paddr: DmaAddr, vaddr: NonNull<u8>, pages: usize) {
        let known = LIVE.lock().unwrap().as_mut().and_then(|m| m.remove(&paddr));
        assert_eq!(
            known,
            Some(pages),
            "freeing {paddr:#x} that was not allocated with {pages} pages"
        );
        // SAFETY: the caller passes back one allocation made above.
        unsafe { dealloc(vaddr.as_ptr(), layout(pages)) }
    }

    fn phys_to_virt(paddr: DmaAddr) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("null DMA address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: Direction) -> Result<DmaAddr, HalError> {
        let dma = buffer.cast::<u8>().as_ptr() as DmaAddr;
        SHARES.lock().unwrap().push((dma, buffer.len(), direction));
        Ok(dma)
    }

    unsafe fn unshare(dma: DmaAddr, buffer: NonNull<[u8]>, direction: Direction) {
        let mut shares = SHARES.lock().unwrap();
        let at = shares
            .iter()
            .position(|&s| s == (dma, buffer.len(), direction));
        let at = at.unwrap_or_else(|| panic!("unsharing {dma:#x}, which was not shared"));
        shares.swap_remove(at);
    }
}

/// Buffers [`FakeHal`] has shared and not yet unshared: (DMA address,
/// length, direction).
static SHARES: Mutex<Vec<(DmaAddr, usize, Direction)>> = Mutex::new(Vec::new());

impl FakeHal {
    /// The buffers shared now, as (DMA address, length, direction).
    pub fn shares() -> Vec<(DmaAddr, usize, Direction)> {
        SHARES.lock().unwrap().clone()
    }
}

/// Where [`FakeHal32`]'s physical addresses start.
pub const ARENA_BASE: DmaAddr = 0x1000_0000;
/// Pages in its arena (32 MiB).
const ARENA_PAGES: usize = 8192;

struct Arena {
    base: usize,
    used: Vec<bool>,
}

static ARENA: Mutex<Option<Arena>> = Mutex::new(None);

fn with_arena<R>(f: impl FnOnce(&mut Arena) -> R) -> R {
    let mut guard = ARENA.lock().unwrap_or_else(|e| e.into_inner());
    let arena = guard.get_or_insert_with(|| {
        // SAFETY: a non-empty layout; the arena lives for the whole test run.
        let base = unsafe { alloc_zeroed(layout(ARENA_PAGES)) };
        assert!(!base.is_null(), "no memory for the fake arena");
        Arena {
            base: base as usize,
            used: vec![false; ARENA_PAGES],
        }
    });
    f(arena)
}

/// A [`Hal`] with 32-bit physical addresses: a host arena mapped at
/// [`ARENA_BASE`], for drivers (like the LSI53C895A's) that cannot reach
/// memory above 4 GiB, and for fake devices that read and write it.
pub struct FakeHal32;

// SAFETY: allocations are zeroed, page-aligned, contiguous runs of the
// arena, handed out once and freed once.
unsafe impl Hal for FakeHal32 {
    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        // The whole arena lies below 4 GiB.
        if dma_mask < ARENA_BASE + (ARENA_PAGES * PAGE_SIZE) as u64 - 1 {
            return None;
        }
        with_arena(|arena| {
            let start = (0..=ARENA_PAGES.checked_sub(pages)?)
                .find(|&s| arena.used[s..s + pages].iter().all(|u| !u))?;
            arena.used[start..start + pages].fill(true);
            let ptr = (arena.base + start * PAGE_SIZE) as *mut u8;
            // SAFETY: inside the arena; the run was free, so nobody uses it.
            unsafe { ptr.write_bytes(0, pages * PAGE_SIZE) };
            Some((ARENA_BASE + (start * PAGE_SIZE) as u64, NonNull::new(ptr)?))
        })
    }

    unsafe fn dma_dealloc(paddr: DmaAddr, _vaddr: NonNull<u8>, pages: usize) {
        with_arena(|arena| {
            let start = ((paddr - ARENA_BASE) as usize) / PAGE_SIZE;
            assert!(
                arena.used[start..start + pages].iter().all(|&u| u),
                "double free at {paddr:#x}"
            );
            arena.used[start..start + pages].fill(false);
        })
    }

    fn phys_to_virt(paddr: DmaAddr) -> NonNull<u8> {
        let offset = paddr
            .checked_sub(ARENA_BASE)
            .filter(|&o| o < (ARENA_PAGES * PAGE_SIZE) as u64);
        let offset = offset.unwrap_or_else(|| panic!("{paddr:#x} is outside the fake arena"));
        with_arena(|arena| {
            NonNull::new((arena.base + offset as usize) as *mut u8).expect("arena is not null")
        })
    }
}

/// Issue 17, bug 6: `Hal::share`'s default answered `NotSupported` for an
/// empty buffer, where its doc promises `ZeroLength` (the check a caller
/// relies on whatever the kernel's Hal supports).
#[test]
fn the_default_share_refuses_an_empty_buffer_as_zero_length() {
    let empty: &[u8] = &[];
    // SAFETY: nothing is shared (both calls refuse).
    let shared = unsafe { FakeHal32::share(NonNull::from(empty), Direction::ToDevice) };
    assert_eq!(shared, Err(HalError::ZeroLength));
    let byte = [0u8; 1];
    // SAFETY: as above.
    let shared = unsafe { FakeHal32::share(NonNull::from(&byte[..]), Direction::ToDevice) };
    assert_eq!(shared, Err(HalError::NotSupported));
}
