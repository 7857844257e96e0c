//! The engine's DMA block: its layout, its allocation, and the one
//! bounds-checked way into it.

use core::marker::PhantomData;
use core::ptr::NonNull;

use volatile::VolatilePtr;

use super::{Linked, MAX_ENTRIES, RING_WORDS, Ring, ZERO_BYTES};
use crate::engine::DmaError;
use crate::hal::{DmaAddr, Hal, PAGE_SIZE};

/// Byte offsets in the block.
pub(super) const RING_OFF: usize = 0;
pub(super) const SHADOW_OFF: usize = RING_OFF + RING_WORDS as usize * 4;
pub(super) const STATUS_OFF: usize = SHADOW_OFF + RING_WORDS as usize * 4;
pub(super) const ZERO_OFF: usize = STATUS_OFF + PAGE_SIZE;
pub(super) const ENTRY_OFF: usize = ZERO_OFF + ZERO_BYTES as usize;
/// Bytes of one entry: its cookie, then the ring word after its last
/// instruction.
pub(super) const ENTRY_BYTES: usize = 8;
pub(super) const BLOCK_BYTES: usize = ENTRY_OFF + MAX_ENTRIES as usize * ENTRY_BYTES;
pub(super) const BLOCK_PAGES: usize = BLOCK_BYTES.div_ceil(PAGE_SIZE);

impl<H: Hal> Ring<H> {
    /// Allocates the block below 4 GiB (SCRIPTS addresses are 32 bits
    /// wide) and lays out an empty ring whose tail is at word 0.
    pub(in crate::drivers::lsi53c895a) fn new() -> Result<Self, DmaError> {
        let (dma, block) = H::dma_alloc(BLOCK_PAGES, u32::MAX as u64).ok_or(DmaError::NoMemory)?;
        let ring = Ring {
            block,
            dma,
            head: 0,
            tail: 0,
            free_from: 0,
            limit: 0,
            pushed: 0,
            appended: 0,
            last_cookie: crate::engine::Cookie::FIRST,
            last_writeback: None,
            linked: Linked::NONE,
            last_seen: 0,
            retired: 0,
            _hal: PhantomData,
        };
        // A `Hal` that broke its contract must not make the chip write
        // somewhere else: dropping `ring` on this path frees the block.
        if dma + BLOCK_BYTES as u64 - 1 > u32::MAX as u64 {
            return Err(DmaError::BeyondDmaMask);
        }
        Ok(ring)
    }

    /// The block's DMA address and length.
    pub(in crate::drivers::lsi53c895a) fn dma_block(&self) -> (DmaAddr, usize) {
        (self.dma, BLOCK_PAGES * PAGE_SIZE)
    }

    /// The one way into the block: the `T` at byte `offset`. The check is
    /// always on: an offset past the block or misaligned is a bug here,
    /// and panics before any access.
    #[inline(always)]
    pub(super) fn cell<T: Copy>(&self, offset: usize) -> VolatilePtr<'_, T> {
        // SAFETY: the ring's own block, borrowed with `self`.
        unsafe { Self::cell_of(&self.block, offset) }
    }

    /// [`Ring::cell`] from a copy of the block's address: stores through
    /// cells made the compiler load `self.block` again after each (it
    /// cannot tell that they leave it alone); a copy in a local is loaded
    /// once.
    ///
    /// # Safety
    /// `block` is a ring's block address, and that ring stays borrowed as
    /// long as `block` is (the block lives as long as its ring).
    #[inline(always)]
    pub(super) unsafe fn cell_of<T: Copy>(
        block: &NonNull<u8>,
        offset: usize,
    ) -> VolatilePtr<'_, T> {
        if !(offset.is_multiple_of(align_of::<T>())
            && offset
                .checked_add(size_of::<T>())
                .is_some_and(|end| end <= BLOCK_BYTES))
        {
            outside_block(offset);
        }
        // SAFETY: the offset is inside the block (checked above), which is
        // one live allocation from `dma_alloc` for as long as its ring, and
        // so as `block` (the caller's contract), only ever reached through
        // raw pointers (the chip and this type).
        unsafe { VolatilePtr::new(block.add(offset).cast::<T>()) }
    }

    /// The DMA address of ring word `word`.
    #[inline(always)]
    pub(in crate::drivers::lsi53c895a) fn addr(&self, word: u32) -> u32 {
        (self.dma + RING_OFF as u64) as u32 + word * 4
    }

    /// The DMA address of shadow word `word`.
    #[inline(always)]
    pub(super) fn shadow_addr(&self, word: u32) -> u32 {
        (self.dma + SHADOW_OFF as u64) as u32 + word * 4
    }

    /// The DMA address of the completion word.
    #[inline(always)]
    pub(super) fn completion_addr(&self) -> u32 {
        (self.dma + STATUS_OFF as u64) as u32
    }

    /// The DMA address of the zero buffer.
    #[inline(always)]
    pub(in crate::drivers::lsi53c895a) fn zero_addr(&self) -> u32 {
        (self.dma + ZERO_OFF as u64) as u32
    }
}

/// The panic of [`Ring::cell`], out of line (performance note H3, in the
/// guide's performance chapter).
#[cold]
#[inline(never)]
fn outside_block(offset: usize) -> ! {
    panic!("ring block offset {offset:#x} outside or misaligned")
}

impl<H: Hal> Drop for Ring<H> {
    fn drop(&mut self) {
        // SAFETY: the engine that owned the ring stopped the chip before
        // dropping it (its own `Drop` runs first), so the device no longer
        // uses the block; these are the values `dma_alloc` returned.
        unsafe { H::dma_dealloc(self.dma, self.block, BLOCK_PAGES) }
    }
}
