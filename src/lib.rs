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
//!   domains built by the same page-table walker, faults reported.
//! - [`mmio`]: register windows accessed through volatile pointers.
//!
//! The crate builds for `x86_64-unknown-none` and for the host, where its
//! unit tests run with plain `cargo test`. The library never allocates.
//!
//! # Soundness
//! The safe API cannot corrupt memory. Every way for the crate to touch
//! memory or a device it was only told about goes through an `unsafe`
//! promise the kernel makes once: the `unsafe` traits [`hal::Hal`] (DMA
//! memory and its CPU mapping), [`mm::traits::TableMapper`],
//! [`mm::traits::PageCounter`], [`mm::tlb::TlbFlush`] and `x86_64`'s
//! `FrameAllocator`; the `unsafe` constructors [`mmio::MmioRegion::new`],
//! [`mm::frame::FrameDb::new`], [`mm::traits::OffsetMapper::new`] and
//! [`mm::space::AddressSpace::from_root`]; and, for raw DMA addresses, the
//! `unsafe` request methods of [`engine::Channel`] (the owned-buffer ones,
//! `copy` and `fill_buffer`, are safe). Addresses, lengths and counts
//! passed to the copy and mapping calls are checked before any sum: bad
//! ones get an error value, never a panic, a wrapped range or a write out
//! of bounds.
//!
//! # Features
//! - `test-hooks`: fault injection and state setting for tests (an LSI
//!   illegal instruction, its manual-start mode, a channel's next cookie).
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
#![cfg_attr(not(test), no_std)]
#![deny(
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::undocumented_unsafe_blocks
)]

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod drivers;
pub mod engine;
pub mod hal;
pub mod iommu;
pub mod mm;
pub mod mmio;
mod sync;
