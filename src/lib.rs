//! `dmaengine`: asynchronous memory-copy engines and page-table insertion for
//! remapped frames, for `no_std` x86_64 kernels.
//!
//! - [`engine`]: the asynchronous copy API: channels, cookies, `issue_pending`,
//!   status and bounded waits, fill and zero, and the [`engine::Engine`] trait.
//! - [`drivers`]: the LSI53C895A SCRIPTS engine, the CPU engine, QEMU's edu.
//! - [`hal`]: what the host kernel provides (DMA memory), and owned buffers.
//! - [`mm`]: page-table insertion: `insert_page`, `remap_pfn_range` and the
//!   rules around them, on x86_64 4-level page tables.
//! - [`mmio`]: register windows accessed through volatile pointers.
//!
//! The crate builds for `x86_64-unknown-none` and for the host, where its
//! unit tests run with plain `cargo test`.
#![cfg_attr(not(test), no_std)]
#![deny(
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::undocumented_unsafe_blocks
)]

pub mod drivers;
pub mod engine;
pub mod hal;
pub mod mm;
pub mod mmio;
