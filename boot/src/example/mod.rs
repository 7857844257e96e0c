//! `./qemu-run.sh example`: kernels written as an outsider would, from the
//! README and rustdoc, each adopting one part of the crate with the glue
//! between its `glue: begin` and `glue: end` markers (counted by a host
//! test, which holds each to the README's number):
//! - [`mm`]: a kernel with its own `x86_64` page tables and frame
//!   allocator inserts, remaps and zaps pages in the same hierarchy;
//! - [`dma`]: a kernel with PCI configuration access, a frame allocator
//!   and a delay copies memory with the LSI53C895A;
//! - [`iommu`]: the same kernel confines the chip with the VT-d unit its
//!   ACPI DMAR table names.

mod dma;
mod iommu;
mod mm;

use crate::Platform;
use crate::exit::ExitCode;
use crate::println;
use crate::recover::catch;

/// Runs every example; a check that fails is a panic, reported as a
/// failure of the run.
pub fn run(platform: &'static Platform) -> ExitCode {
    let examples = [
        ("mm", mm::run as fn(&'static Platform)),
        ("dma", dma::run),
        ("iommu", iommu::run),
    ];
    for (name, example) in examples {
        if let Err(why) = catch(|| example(platform)) {
            println!("example {name} FAILED: {why}");
            return ExitCode::Failure;
        }
    }
    println!("example done");
    ExitCode::Success
}
