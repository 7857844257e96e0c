//! `dmaengine`: asynchronous memory-copy engines and page-table insertion for
//! remapped frames, for `no_std` x86_64 kernels.
//!
//! - [`engine`]: the asynchronous copy API: channels, cookies, `issue_pending`,
//!   status and bounded waits, fill and zero, and the [`engine::Engine`] trait.
//! - [`drivers`]: the LSI53C895A SCRIPTS engine, the CPU engine, QEMU's edu.
//! - [`hal`]: what the host kernel provides (DMA memory), and owned buffers.
//! - [`mm`]: page-table insertion: `insert_page`, `remap_pfn_range` and the
//!   rules around them, on x86_64 4-level page tables.
//! - [`iommu`]: an Intel VT-d unit between the engines and memory: DMA
//!   domains built by the same page-table walker, faults reported, the DMAR table read.
//! - [`mmio`]: register windows accessed through volatile pointers.
//!
//! The crate builds for `x86_64-unknown-none` and for the host, where its
//! unit tests run with plain `cargo test`. The library never allocates.
//!
//! # Soundness
//! No safe call, in any order and with any value, makes a device or the
//! CPU touch memory the caller does not own. Where only the kernel can
//! vouch for that, the item is `unsafe` and its `# Safety` section says
//! what the kernel promises; this is the whole list.
//!
//! **What the kernel implements** (`unsafe` traits):
//! - [`hal::Hal`]: DMA memory that is contiguous, zeroed, mapped at the
//!   pointer it returns and nobody else's until freed; `share` makes a
//!   buffer reachable at the address it returns until `unshare`.
//! - [`engine::Engine`] (only for a driver of its own): the engine reports
//!   a request complete, failed or abandoned only when its device will
//!   never touch that memory again, and reads addresses in its `Hal`'s
//!   address space.
//! - [`mm::traits::TableMapper`], [`mm::traits::PageCounter`],
//!   [`mm::tlb::TlbFlush`], [`mm::traits::TableAllocator`] and `x86_64`'s
//!   `FrameAllocator`: page tables reached where it says (and no Rust
//!   reference to one held across a call of the space), counts that free
//!   a page only at zero, a flush that really flushes, frames nobody else
//!   uses.
//! - [`iommu::dma::IommuPlatform`] and [`iommu::dma::DeviceDma`] (or the
//!   `iova_platform!` macro, whose `unsafe` says the same, and
//!   `iova_device!`, which needs no word): the unit's static and the
//!   memory under the IOVAs are what they say (the `Memory` Hal's
//!   addresses are physical), `virt_to_phys` answers the real physical
//!   address of a page that does not move, and each device has a static
//!   IOVA space of its own.
//!
//! **What it promises once, when it builds something** (`unsafe`
//! constructors): [`mmio::MmioRegion::new`] (a device window of that
//! size), [`mmio::PortRegion::new`] (the ports are one device's I/O
//! registers, poked by nobody else), the drivers' constructors
//! (`Lsi53c895a::new`, `EduEngine::new`: the window is that device's,
//! driven by nothing else, and the edu mask is at most the device's own),
//! [`mm::frame::FrameDb::new`] and [`mm::frame::FrameDb::with_runs`] (the
//! frames it counts are RAM the database alone hands out),
//! [`mm::space::AddressSpace::add_spare_table`] (a frame nobody else
//! uses, not one of the space's already), [`hal::pool::DmaPool::init`]
//! (the run is RAM given to the pool alone, mapped where it says),
//! [`mm::traits::OffsetMapper::new`],
//! [`mm::space::AddressSpace::from_root`] (its hierarchy stays live, and it
//! adds, changes or frees nothing in the span of the space's areas, nor
//! sets bit 10 on a link of its own under one; the crate refuses areas over
//! any non-zero non-present entry and over bit-10 links no area explains,
//! and frees only tables it linked), [`mm::space::AddressSpace::share_kernel_slots`],
//! and [`iommu::Iommu::new`] (which also covers dropping the unit: that
//! turns translation off as [`iommu::Iommu::disable`] does; a unit that
//! will not turn it off keeps its tables, leaked, rather than freeing what
//! it may walk). With the `testing` feature, the fake devices'
//! constructors too (`FakeLsi::new`, `FakeEdu::new`, `FakeVtd::new` and
//! its variants): a fake moves or reads host memory wherever its registers
//! point, as the device would, so only a driver (or a caller pointing it
//! at memory of its own) may write them.
//!
//! **What it promises per call** (`unsafe fn`s):
//! - Raw DMA addresses: the request methods of [`engine::Channel`]
//!   (`prep`, `prep_batch`, `prep_copy`, `fill`, ...) and the descriptor
//!   methods of [`engine::Engine`] (`prep`, `prep_one`, `prep_run`,
//!   `rewind`): every address is a DMA address of the engine's `Hal`, of
//!   memory the kernel owns and neither frees nor touches in a conflicting
//!   way until the channel (or the engine) reports the request ended; a
//!   mark given to `rewind` is the same engine's since its last issue; an
//!   engine's own `prep_one` leaves nothing behind when it fails. The owned-buffer
//!   calls (`copy`, `fill_buffer`, `SharedChannel::transfer`) are safe:
//!   their types admit only buffers of the engine's own `Hal`, and the
//!   buffers come back only once the engine has stopped touching them (a
//!   request whose engine never stops keeps them, leaked).
//! - [`engine::Channel::engine_mut`]: the engine stays the channel's (not
//!   moved out, replaced or swapped through the reference: the channel
//!   credits what its engine reports to every cookie before it).
//! - The drivers' `regs()` (LSI53C895A, edu): nothing written through it,
//!   no read with a side effect.
//! - `Lsi53c895a::set_doorbell`: the ports are the I/O BAR of the same chip
//!   whose register window the engine drives.
//! - [`mm::traits::PageCounter`]'s `try_map` and `unmap`: only the address
//!   space whose entry is counted calls them, each mapping counted is given
//!   back once, after its entry is cleared and flushed.
//! - [`mm::space::AddressSpace::tlb_mut`]: the flusher stays one that
//!   flushes that space (an IOMMU domain's keeps its domain id), never
//!   swapped with or replaced by another space's.
//! - [`mm::frame::FrameDb::release`]: nothing uses the reserved or kernel
//!   frame it puts back in the pool (no entry maps it, no device or
//!   kernel pointer reaches it); taking a frame out (`set_kind`) is safe.
//! - [`mm::space::AddressSpace::remap_pfn_range`], `io_remap_pfn_range` and
//!   `insert_pfn`: the frames are device memory, or RAM the kernel owns and
//!   neither frees nor reuses (in particular never a free frame of the
//!   page counter) while any entry maps them, in the space, a fork of it,
//!   or an IOMMU domain built with it.
//! - [`iommu::Iommu::disable`]: no device behind the unit has DMA in flight
//!   or starting while translation is off (every IOVA becomes a physical
//!   address); [`iommu::Iommu::attach`]: the domain's tables stay live
//!   until the device is detached (kept if `detach` fails), its id is the
//!   one its flusher invalidates; [`iommu::Iommu::enable_fault_interrupts`]:
//!   the address is an interrupt message (0xfee0_0000..=0xfeef_ffff on
//!   x86), never memory; [`engine::Channel::set_fault_hook`]: the fault
//!   source outlives the hook and is used by nobody else meanwhile.
//! - [`iommu::dma::IovaSpace::attach`]: the requester id is that of the
//!   device whose drivers use the space's `IovaHal`, attached to no other
//!   space; [`iommu::dma::StaticUnit::take`]: no space is attached through
//!   the unit, and none is used until another is installed.
//!
//! Everything else is checked: addresses, lengths and counts passed to the
//! copy and mapping calls are checked before any sum, and bad ones get an
//! error value, never a panic, a wrapped range or a write out of bounds.
//! Reference counts are raised only from a non-zero count (a freed frame
//! cannot be revived), guards that mask interrupts are not `Send`, and
//! channel ids never wrap. The library's host tests also run under Miri,
//! and loom models check every interleaving of two or three threads over
//! the frame counts, the waker slots, the shared channel's lock and the
//! registry (`.ci/run` says how to run both).
//!
//! # Features
//! - `test-hooks`: fault injection and state setting for tests (an LSI
//!   illegal instruction, its manual-start mode, a channel's next cookie).
//! - `testing` (host only: it links `std`): the fakes the crate's own tests
//!   use, public so that a kernel can test its glue on the host: a fake
//!   [`Hal`](hal::Hal) over host memory (`hal::fake`) and fake devices for
//!   the drivers to drive (`testing`: the LSI53C895A, edu and VT-d).
//!
//! # Example
//!
//! A kernel provides DMA memory through [`hal::Hal`]; here, host memory
//! stands in for it and the CPU engine does the copy, through the same
//! channel API the LSI53C895A and edu engines use.
//!
//! ```
//! use core::ptr::NonNull;
//! use core::time::Duration;
//! use dmaengine::drivers::cpu::CpuEngine;
//! use dmaengine::engine::{Channel, PrepFlags};
//! use dmaengine::hal::{Dma, DmaAddr, Hal, PAGE_SIZE};
//!
//! struct HostHal;
//! // SAFETY: zeroed, page-aligned host memory whose address is its "DMA
//! // address", freed with the same layout.
//! unsafe impl Hal for HostHal {
//!     fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
//!         let layout = std::alloc::Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).ok()?;
//!         // SAFETY: the layout is not empty.
//!         let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
//!         if ptr.as_ptr() as u64 + (pages * PAGE_SIZE) as u64 - 1 > dma_mask {
//!             // SAFETY: allocated above with this layout.
//!             unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
//!             return None;
//!         }
//!         Some((ptr.as_ptr() as DmaAddr, ptr))
//!     }
//!     unsafe fn dma_dealloc(_paddr: DmaAddr, vaddr: NonNull<u8>, pages: usize) {
//!         let layout = std::alloc::Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
//!         // SAFETY: allocated above with this layout.
//!         unsafe { std::alloc::dealloc(vaddr.as_ptr(), layout) }
//!     }
//!     fn phys_to_virt(paddr: DmaAddr) -> NonNull<u8> {
//!         NonNull::new(paddr as *mut u8).unwrap()
//!     }
//! }
//!
//! struct NoDelay;
//! impl embedded_hal::delay::DelayNs for NoDelay {
//!     fn delay_ns(&mut self, _ns: u32) {}
//! }
//!
//! let mut chan: Channel<CpuEngine<HostHal>> = Channel::new(CpuEngine::new());
//! let mut src = Dma::<HostHal>::new(4096)?;
//! src.as_mut_slice().fill(0xab);
//! let dst = Dma::<HostHal>::new(4096)?;
//! let transfer = chan.copy(dst, 0, src, 0, 4096, PrepFlags::empty()).map_err(|e| e.error)?;
//! chan.issue_pending();
//! let (dst, _src) = transfer.wait(&mut chan, &mut NoDelay, Duration::from_millis(10)).unwrap();
//! assert!(dst.as_slice().iter().all(|&b| b == 0xab));
//! # Ok::<(), dmaengine::engine::DmaError>(())
//! ```
// The `testing` feature's fakes keep host state in `std` (heap arenas,
// mutexes); only a host build enables it.
#![cfg_attr(not(any(test, feature = "testing")), no_std)]
#![deny(
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::undocumented_unsafe_blocks
)]

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The `x86_64` crate this one is built on (its frames, pages, addresses
/// and allocator traits are this crate's boundary types): name them as
/// `dmaengine::x86_64::...` and no version has to be kept in step.
pub use x86_64;

pub mod drivers;
pub mod engine;
pub mod hal;
pub mod iommu;
pub mod mm;
pub mod mmio;
mod slots;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
