//! The tiny kernel that boots `dmaengine` in QEMU and exercises it: boot,
//! memory, interrupts, PCI, the drivers, the tests and the benchmarks.
//!
//! The command line (`-append`) picks the mode: `demo` (default), `test
//! [filter]`, `bench [filter]`, `soak [requests]` or `selftest` (the
//! harness's own canaries, which must fail); `seed=N` anywhere seeds the
//! randomized tests.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod acpi;
mod apic;
mod bench;
mod demo;
mod devices;
mod dma;
mod entry;
mod example;
mod executor;
mod exit;
mod gdt;
mod harness;
mod ioapic;
mod iommu;
mod iommu_hal;
mod irq;
mod mem;
mod mm;
mod pci;
mod pvh;
mod recover;
mod rng;
mod serial;
mod smp;
mod soak;
mod tests;
mod time;
mod trap;
mod user;

use alloc::vec::Vec;

use exit::{ExitCode, exit_qemu};

/// What boot found, for the modes and tests.
pub struct Platform {
    /// The boot memory map and command line.
    pub boot: pvh::BootInfo,
    /// Every PCI function on bus 0.
    pub pci: Vec<pci::Device>,
    /// The calibrated TSC frequency.
    pub tsc_hz: u64,
    /// Free frames right after the allocator was built.
    pub frames_at_boot: usize,
    /// Whether EFER.NXE is on.
    pub nx: bool,
    /// Whether the CPU has 1 GiB pages (CPUID.80000001H:EDX bit 26).
    pub pages_1g: bool,
}

static PLATFORM: spin::Once<Platform> = spin::Once::new();

/// The platform, once boot is done.
pub fn platform() -> &'static Platform {
    PLATFORM.get().expect("platform used before boot finished")
}

fn fatal(what: &str, why: &dyn core::fmt::Display) -> ! {
    println!("FATAL: {what}: {why}");
    exit_qemu(ExitCode::Failure)
}

/// Entered from `entry.rs` in 64-bit mode with `.bss` zeroed and interrupts
/// off; `start_info` is the physical address of the PVH start info.
#[unsafe(no_mangle)]
extern "C" fn kernel_main(start_info: u32) -> ! {
    serial::init();
    println!("dmaengine tiny kernel: booted");
    gdt::init();
    trap::init();
    // The layers above the trap layer register their handlers with it.
    recover::init();
    user::init();
    let boot = pvh::parse(start_info.into()).unwrap_or_else(|e| fatal("boot info", &e));
    let frames_at_boot = mem::frames::init(&boot);
    let nx = mem::paging::init(&boot).unwrap_or_else(|e| fatal("paging", &e));
    mem::heap::init().unwrap_or_else(|e| fatal("heap", &e));
    let madt = boot
        .rsdp()
        .and_then(acpi::madt)
        .unwrap_or_else(|| fatal("ACPI", &"no MADT: the kernel needs the APICs it lists"));
    irq::init(&madt);
    harness::init();
    let tsc_hz = time::init();
    apic::calibrate_timer();
    apic::start_timer();
    x86_64::instructions::interrupts::enable();
    mm::remember_kernel_cr3();
    let cpus = smp::init(&madt);
    println!("cpus: {cpus}");
    let pci = pci::enumerate();
    let platform = PLATFORM.call_once(|| Platform {
        boot,
        pci,
        tsc_hz,
        frames_at_boot,
        nx,
        pages_1g: mem::paging::pages_1g_supported(),
    });

    // Measured once at start-up, while nothing else uses the chip.
    match dma::copy_break() {
        Some(policy) => println!("copy-break: {} bytes (measured)", policy.threshold()),
        None => println!("copy-break: not measured (no LSI53C895A)"),
    }
    let cmdline = platform.boot.cmdline();
    let mut words = cmdline.split_whitespace();
    let mode = words.next().unwrap_or("demo");
    let mut filter = None;
    for word in words {
        match word.strip_prefix("seed=").map(str::parse::<u64>) {
            Some(Ok(seed)) => rng::set_seed(seed),
            Some(Err(_)) => {
                println!("error: bad seed in {word:?}");
                exit_qemu(ExitCode::BadCommandLine);
            }
            None => filter = Some(word),
        }
    }
    println!(
        "seed: {} (SEED={} ./qemu-run.sh ... repeats this run)",
        rng::seed(),
        rng::seed()
    );
    let code = match mode {
        "demo" => demo::run(),
        "test" => harness::run(&tests::all(), filter),
        "selftest" => harness::run(&tests::selftest(), filter),
        "bench" => bench::run(filter),
        "soak" => soak::run(filter),
        "example" => example::run(),
        other => {
            println!(
                "error: unknown mode {other:?} (expected demo, test, bench, soak or selftest)"
            );
            ExitCode::BadCommandLine
        }
    };
    exit_qemu(code)
}
