//! `dmaengine`: asynchronous memory-copy engines and page-table insertion for
//! remapped frames, for `no_std` x86_64 kernels.
//!
//! - [`mmio`]: register windows accessed through volatile pointers.
//! - [`drivers`]: the devices QEMU really emulates (LSI53C895A SCRIPTS, edu).
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
pub mod mmio;
