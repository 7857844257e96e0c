//! Benchmarks: each result is one line `BENCH <key> <value> <unit>`, which
//! `qemu-run.sh bench` collects into `target/bench/latest.csv`.

mod awaiting;
mod bare;
mod dma;
mod insns;
mod iommu;
mod mm;
mod smp;

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use dmaengine::drivers::{edu, lsi53c895a};
use dmaengine::mmio::MmioRegion;

use crate::exit::ExitCode;
use crate::mem::{PAGE_SIZE, frames, phys_to_virt};
use crate::{devices, println, time};

/// Results reported in this run.
static REPORTED: AtomicUsize = AtomicUsize::new(0);

/// Prints one benchmark result line.
pub fn report(key: &str, value: f64, unit: &str) {
    REPORTED.fetch_add(1, Ordering::Relaxed);
    println!("BENCH {key} {value:.3} {unit}");
}

/// Runs `f` `iterations` times and returns the mean nanoseconds per call.
pub fn ns_per_iter(iterations: u64, mut f: impl FnMut()) -> f64 {
    let start = time::rdtsc();
    for _ in 0..iterations {
        f();
    }
    time::cycles_to_ns(time::rdtsc() - start) as f64 / iterations as f64
}

/// Runs the benchmark groups `filter` names (all if `None`); fails when no
/// result at all was reported.
pub fn run(filter: Option<&str>) -> ExitCode {
    // A filter names a group (`mm`) or a key under it (`mm.remap_1GiB`).
    let wanted = |group: &str| {
        filter.is_none_or(|f| {
            f == group
                || f.strip_prefix(group)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    };
    if wanted("mmio") {
        mmio();
    }
    if wanted("cpu") {
        cpu_copy();
    }
    if wanted("dma") {
        dma::run();
        awaiting::run();
        smp::run();
    }
    if wanted("mm") {
        mm::run();
    }
    if wanted("iommu") {
        iommu::run();
    }
    // Only when named: the fixed-slot experiment.
    if filter.is_some() && wanted("slots") {
        dma::slots();
    }
    // Only when named: its counts mean instructions only under `-icount`,
    // which `qemu-run.sh` gives a boot of its own.
    if filter.is_some() && wanted("insns") {
        insns::run();
    }
    // A filter that names no group, or groups whose devices are missing,
    // is not a successful benchmark run.
    if REPORTED.load(Ordering::Relaxed) == 0 {
        println!(
            "error: no benchmark result (filter {:?})",
            filter.unwrap_or("")
        );
        return ExitCode::NoTestMatched;
    }
    ExitCode::Success
}

fn mmio_pair(name: &str, regs: &MmioRegion, read_at: usize, write_at: usize) {
    const N: u64 = 20_000;
    let read = ns_per_iter(N, || {
        core::hint::black_box(regs.read32(read_at));
    });
    report(&alloc::format!("mmio.{name}.read32.ns"), read, "ns");
    let write = ns_per_iter(N, || regs.write32(write_at, 0x5a5a_5a5a));
    report(&alloc::format!("mmio.{name}.write32.ns"), write, "ns");
    mmio_string(name, regs, read_at, write_at);
}

/// The same accesses made by a one-element `rep lodsd` / `rep stosd`.
/// QEMU 8.2 and later let only the last instruction of a translated block
/// touch a device; an access anywhere else stops the block, which is
/// translated again up to the access and run. A string instruction with a
/// repeat prefix always ends its block, so it is never re-translated.
/// These keys measure what the drivers' ordinary accesses pay for that (the
/// drivers do not use string instructions; see the guide's performance
/// notes).
fn mmio_string(name: &str, regs: &MmioRegion, read_at: usize, write_at: usize) {
    const N: u64 = 20_000;
    let read_ptr = regs.base().as_ptr().wrapping_add(read_at).cast::<u32>();
    let write_ptr = regs.base().as_ptr().wrapping_add(write_at).cast::<u32>();
    let read = ns_per_iter(N, || {
        let value: u32;
        // SAFETY: one 4-byte load from `read_ptr` (RCX = 1, and DF is clear
        // on entry to an asm block), a register inside the window `regs`
        // maps for as long as it lives; the callers pass registers whose
        // reads have no side effects.
        unsafe {
            asm!(
                "rep lodsd",
                inout("rsi") read_ptr => _,
                inout("rcx") 1u64 => _,
                out("eax") value,
                options(nostack, preserves_flags),
            )
        };
        core::hint::black_box(value);
    });
    report(&alloc::format!("mmio.{name}.read32_rep.ns"), read, "ns");
    let write = ns_per_iter(N, || {
        // SAFETY: one 4-byte store to `write_ptr`, as for the read; the
        // callers pass registers that only store what is written (a scratch
        // register, the edu device's liveness register), as `mmio_pair`
        // writes them.
        unsafe {
            asm!(
                "rep stosd",
                inout("rdi") write_ptr => _,
                inout("rcx") 1u64 => _,
                in("eax") 0x5a5a_5a5a_u32,
                options(nostack, preserves_flags),
            )
        };
    });
    report(&alloc::format!("mmio.{name}.write32_rep.ns"), write, "ns");
}

fn mmio() {
    if let Some(regs) = devices::find(lsi53c895a::regs::VENDOR_ID, lsi53c895a::regs::DEVICE_ID)
        .and_then(|d| devices::map_bar(d, lsi53c895a::regs::MMIO_BAR))
    {
        mmio_pair(
            "lsi",
            &regs,
            lsi53c895a::regs::SCRATCHA.offset(),
            lsi53c895a::regs::SCRATCHA.offset(),
        );
    }
    if let Some(regs) = devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID)
        .and_then(|d| devices::map_bar(d, 0))
    {
        mmio_pair(
            "edu",
            &regs,
            edu::regs::ID.offset(),
            edu::regs::LIVENESS.offset(),
        );
    }
}

/// Copy bandwidth of `copy_nonoverlapping` between two physically
/// contiguous buffers, the CPU baseline for the DMA engines.
fn cpu_copy() {
    const MAX: usize = 16 << 20;
    let frames_needed = MAX / PAGE_SIZE as usize;
    // Five spare pages: the destination starts five pages in, so source and
    // destination pages do not alias in QEMU's software TLB (as they do
    // when the buffers are exactly 16 MiB apart, making copies ten times
    // slower than the emulated CPU really is).
    let (Ok(src), Ok(dst)) = (
        frames::alloc_contiguous(frames_needed, 1),
        frames::alloc_contiguous(frames_needed + 5, 1),
    ) else {
        println!("cpu copy benchmark skipped: no 2 x 16 MiB of contiguous memory");
        return;
    };
    let (s, d) = (phys_to_virt(src), phys_to_virt(dst + 5 * PAGE_SIZE));
    // SAFETY: both runs were just allocated to us and are in the direct map.
    unsafe {
        s.write_bytes(0x3c, MAX);
        d.write_bytes(0, MAX);
    }
    for (label, size) in [
        ("4KiB", 4 << 10),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
        ("16MiB", MAX),
    ] {
        let iterations = (64 << 20) / size as u64;
        // SAFETY: `size <= MAX`; the buffers are distinct allocations.
        let ns = ns_per_iter(iterations.max(2), || unsafe {
            core::ptr::copy_nonoverlapping(s, d, size)
        });
        report(
            &alloc::format!("cpu.copy.{label}.gbps"),
            size as f64 / ns,
            "GB/s",
        );
    }
    let _ = frames::free_contiguous(src, frames_needed);
    let _ = frames::free_contiguous(dst, frames_needed + 5);
}
