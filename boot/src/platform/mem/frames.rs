//! The physical frame allocator: one bit per 4 KiB frame (set = free), built
//! from the boot memory map. It hands out single frames and physically
//! contiguous runs (DMA buffers, the heap).

use core::fmt;

use spin::Mutex;

use super::{DIRECT_MAP_SIZE, PAGE_SIZE, kernel_image, phys_to_virt};
use crate::pvh::{BootInfo, E820_RAM};

/// Errors from the frame allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free frame (or no free run of the requested length and alignment).
    OutOfMemory,
    /// The frame is outside the memory this allocator manages.
    OutOfRange,
    /// The frame is already free: a double free.
    NotAllocated,
    /// A contiguous request of zero frames or a non-power-of-two alignment.
    BadRequest,
    /// The global allocator has not been initialised.
    Uninitialised,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::OutOfMemory => "out of physical memory",
            FrameError::OutOfRange => "frame outside managed memory",
            FrameError::NotAllocated => "frame is not allocated",
            FrameError::BadRequest => "bad contiguous request",
            FrameError::Uninitialised => "frame allocator not initialised",
        })
    }
}

impl core::error::Error for FrameError {}

/// A bitmap allocator over frames `base .. base + frames * 4096`.
pub struct FrameAllocator<'a> {
    bitmap: &'a mut [u64],
    base: u64,
    frames: usize,
    free: usize,
    /// Word index where the next single-frame search starts.
    hint: usize,
}

impl<'a> FrameAllocator<'a> {
    /// An allocator over `frames` frames from physical address `base`
    /// (page-aligned), all initially allocated. `bitmap` needs one bit each.
    pub fn new(bitmap: &'a mut [u64], base: u64, frames: usize) -> Self {
        assert!(bitmap.len() * 64 >= frames, "bitmap too small");
        assert_eq!(base % PAGE_SIZE, 0, "base must be page-aligned");
        bitmap.fill(0);
        FrameAllocator {
            bitmap,
            base,
            frames,
            free: 0,
            hint: 0,
        }
    }

    /// Marks the whole frames inside `start..end` free.
    pub fn add_free_range(&mut self, start: u64, end: u64) {
        let first = start.div_ceil(PAGE_SIZE).max(self.base / PAGE_SIZE);
        let last = (end / PAGE_SIZE).min(self.base / PAGE_SIZE + self.frames as u64);
        for frame in first..last {
            let index = (frame - self.base / PAGE_SIZE) as usize;
            if !self.is_free(index) {
                self.set(index, true);
                self.free += 1;
            }
        }
    }

    fn is_free(&self, index: usize) -> bool {
        self.bitmap[index / 64] & (1 << (index % 64)) != 0
    }

    fn set(&mut self, index: usize, free: bool) {
        if free {
            self.bitmap[index / 64] |= 1 << (index % 64);
        } else {
            self.bitmap[index / 64] &= !(1 << (index % 64));
        }
    }

    fn address(&self, index: usize) -> u64 {
        self.base + index as u64 * PAGE_SIZE
    }

    fn index(&self, pa: u64) -> Result<usize, FrameError> {
        if pa < self.base || !pa.is_multiple_of(PAGE_SIZE) {
            return Err(FrameError::OutOfRange);
        }
        let index = ((pa - self.base) / PAGE_SIZE) as usize;
        if index >= self.frames {
            Err(FrameError::OutOfRange)
        } else {
            Ok(index)
        }
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// Allocates one frame, returning its physical address.
    pub fn alloc(&mut self) -> Result<u64, FrameError> {
        let words = self.bitmap.len();
        for step in 0..words {
            let w = (self.hint + step) % words;
            let word = self.bitmap[w];
            if word != 0 {
                let index = w * 64 + word.trailing_zeros() as usize;
                if index < self.frames {
                    self.set(index, false);
                    self.free -= 1;
                    self.hint = w;
                    return Ok(self.address(index));
                }
            }
        }
        Err(FrameError::OutOfMemory)
    }

    /// Allocates `count` physically contiguous frames whose first frame is
    /// aligned to `align` frames (a power of two).
    pub fn alloc_contiguous(&mut self, count: usize, align: usize) -> Result<u64, FrameError> {
        if count == 0 || !align.is_power_of_two() {
            return Err(FrameError::BadRequest);
        }
        let base_frame = (self.base / PAGE_SIZE) as usize;
        let mut start = (base_frame.next_multiple_of(align)) - base_frame;
        while start + count <= self.frames {
            match (start..start + count).rev().find(|&i| !self.is_free(i)) {
                None => {
                    for i in start..start + count {
                        self.set(i, false);
                    }
                    self.free -= count;
                    return Ok(self.address(start));
                }
                Some(busy) => start = (base_frame + busy + 1).next_multiple_of(align) - base_frame,
            }
        }
        Err(FrameError::OutOfMemory)
    }

    /// Frees one frame.
    pub fn free(&mut self, pa: u64) -> Result<(), FrameError> {
        let index = self.index(pa)?;
        if self.is_free(index) {
            return Err(FrameError::NotAllocated);
        }
        self.set(index, true);
        self.free += 1;
        Ok(())
    }

    /// Frees `count` contiguous frames from `pa`; nothing is freed if any of
    /// them is not allocated.
    pub fn free_contiguous(&mut self, pa: u64, count: usize) -> Result<(), FrameError> {
        let first = self.index(pa)?;
        if first + count > self.frames {
            return Err(FrameError::OutOfRange);
        }
        if (first..first + count).any(|i| self.is_free(i)) {
            return Err(FrameError::NotAllocated);
        }
        for i in first..first + count {
            self.set(i, true);
        }
        self.free += count;
        Ok(())
    }
}

static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// Usable RAM below the direct map's end, above 1 MiB, outside the kernel.
fn usable_ranges(info: &BootInfo, mut each: impl FnMut(u64, u64)) {
    let image = kernel_image();
    for r in info.regions().iter().filter(|r| r.kind == E820_RAM) {
        let start = r.start.max(1 << 20);
        let end = r.end().min(DIRECT_MAP_SIZE);
        if start >= end {
            continue;
        }
        if image.start < end && start < image.end {
            if start < image.start {
                each(start, image.start);
            }
            if image.end < end {
                each(image.end, end);
            }
        } else {
            each(start, end);
        }
    }
}

/// Builds the global allocator from the boot memory map. Returns the number
/// of free frames.
pub fn init(info: &BootInfo) -> usize {
    let mut top = 0;
    usable_ranges(info, |_, end| top = top.max(end));
    let frames = (top / PAGE_SIZE) as usize;
    let bitmap_bytes = frames.div_ceil(64) * 8;
    let bitmap_size = (bitmap_bytes as u64).next_multiple_of(PAGE_SIZE);
    let mut bitmap_at = None;
    usable_ranges(info, |start, end| {
        let start = start.next_multiple_of(PAGE_SIZE);
        if bitmap_at.is_none() && end.saturating_sub(start) >= bitmap_size {
            bitmap_at = Some(start);
        }
    });
    let bitmap_at = bitmap_at.expect("no room for the frame bitmap");
    // SAFETY: `bitmap_at..+bitmap_size` is usable RAM outside the kernel
    // image, in the direct map, and is excluded from the free ranges below,
    // so this slice is its only user for the rest of the kernel's life.
    let bitmap = unsafe {
        core::slice::from_raw_parts_mut(phys_to_virt(bitmap_at).cast::<u64>(), bitmap_bytes / 8)
    };
    let mut allocator = FrameAllocator::new(bitmap, 0, frames);
    usable_ranges(info, |start, end| {
        let bitmap_end = bitmap_at + bitmap_size;
        if start < bitmap_end && bitmap_at < end {
            allocator.add_free_range(start, bitmap_at);
            allocator.add_free_range(bitmap_end, end);
        } else {
            allocator.add_free_range(start, end);
        }
    });
    let free = allocator.free_frames();
    *FRAMES.lock() = Some(allocator);
    free
}

fn with<R>(
    f: impl FnOnce(&mut FrameAllocator<'static>) -> Result<R, FrameError>,
) -> Result<R, FrameError> {
    f(FRAMES.lock().as_mut().ok_or(FrameError::Uninitialised)?)
}

/// Allocates one frame from the global allocator.
pub fn alloc() -> Result<u64, FrameError> {
    with(|a| a.alloc())
}

/// Allocates one zeroed frame from the global allocator.
pub fn alloc_zeroed() -> Result<u64, FrameError> {
    let pa = alloc()?;
    // SAFETY: the frame was just allocated to us and lies in the direct map.
    unsafe { phys_to_virt(pa).write_bytes(0, PAGE_SIZE as usize) };
    Ok(pa)
}

/// Allocates `count` contiguous frames aligned to `align` frames.
pub fn alloc_contiguous(count: usize, align: usize) -> Result<u64, FrameError> {
    with(|a| a.alloc_contiguous(count, align))
}

/// Frees one frame to the global allocator.
pub fn free(pa: u64) -> Result<(), FrameError> {
    with(|a| a.free(pa))
}

/// Frees `count` contiguous frames to the global allocator.
pub fn free_contiguous(pa: u64, count: usize) -> Result<(), FrameError> {
    with(|a| a.free_contiguous(pa, count))
}

/// Free frames in the global allocator.
pub fn free_frames() -> usize {
    FRAMES.lock().as_ref().map_or(0, |a| a.free_frames())
}

/// Frames for the `x86_64` crate's mapper (`map_to`), from this allocator:
/// each is unused and the caller's until it frees it.
pub struct BootFrames;

// SAFETY: `alloc` hands out each frame once, unused, until it is freed.
unsafe impl x86_64::structures::paging::FrameAllocator<x86_64::structures::paging::Size4KiB>
    for BootFrames
{
    fn allocate_frame(&mut self) -> Option<x86_64::structures::paging::PhysFrame> {
        alloc().ok().map(|pa| {
            x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(pa))
        })
    }
}
