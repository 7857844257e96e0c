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
// Without the test rig (the demo's, the examples' and the soak's build),
// what only the guest suite and the benchmarks exercise goes unused: the
// platform's MSI allocation and AP restart, the ring-3 test programs, the
// IOMMU fault routing. It is the same code either way, linted with the rig.
#![cfg_attr(not(feature = "rig"), allow(dead_code, unused_imports))]

extern crate alloc;

// The folders show the architecture: the machine, the glue a kernel embedding
// the crate writes, what runs on top, the test harness and the benchmarks.
mod apps;
#[cfg(feature = "rig")]
mod bench;
mod embed;
mod example;
mod platform;
#[cfg(feature = "rig")]
mod testing;

// Short names for the modules the others use, so a path says what it uses
// rather than where the folder puts it.
use apps::{demo, soak, user};
use embed::{devices, dma, executor, iommu, iommu_hal, mm};
use platform::{
    acpi, apic, exit, gdt, ioapic, irq, mem, pci, pvh, recover, rng, serial, smp, time, trap,
};
#[cfg(feature = "rig")]
use testing::{harness, tests};

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

/// Moves the boot CPU's ring-0 and double-fault stacks to guarded ones
/// (an unmapped page below each), now that frames and the kernel's tables
/// are up: a stack overflow in a system call then faults instead of
/// running into the kernel's statics.
fn guard_kernel_stacks() {
    use mem::paging::map_guarded_stack;
    // Stack places 0..MAX_CPUS are the APs'.
    const RING0_STACK_PLACE: usize = smp::MAX_CPUS;
    const DOUBLE_FAULT_STACK_PLACE: usize = smp::MAX_CPUS + 1;
    let pages = |bytes: usize| (bytes / mem::PAGE_SIZE as usize) as u64;
    let ring0 = map_guarded_stack(RING0_STACK_PLACE, pages(gdt::RING0_STACK_SIZE));
    let double_fault = map_guarded_stack(DOUBLE_FAULT_STACK_PLACE, pages(gdt::STACK_SIZE));
    match (ring0, double_fault) {
        (Ok(ring0), Ok(double_fault)) => gdt::load_guarded_stacks(ring0, double_fault),
        (Err(e), _) | (_, Err(e)) => fatal("kernel stacks", &e),
    }
}

/// Entered from `entry.rs` in 64-bit mode with `.bss` zeroed and interrupts
/// off; `start_info` is the physical address of the PVH start info.
/// What the command line asks for: the mode, its filter and the seed.
struct Command<'a> {
    mode: &'a str,
    filter: Option<&'a str>,
}

/// Splits the command line into the mode (first word, `demo` if none), the
/// optional filter and `seed=N`, which seeds the randomized tests.
fn parse_command(cmdline: &str) -> Command<'_> {
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
    Command { mode, filter }
}

/// Entered from `entry.rs` in 64-bit mode with `.bss` zeroed and interrupts
/// off; `start_info` is the physical address of the PVH start info.
///
/// Brings the machine up, then hands over to the mode. The layers only some
/// modes use start when first used: the harness arms its watchdog when it
/// runs, the first ring-3 process registers the system call, and the
/// copy-break is measured when the demo first routes a copy.
#[unsafe(no_mangle)]
extern "C" fn kernel_main(start_info: u32) -> ! {
    serial::init();
    println!("dmaengine tiny kernel: booted");
    gdt::init();
    trap::init();
    // The layers above the trap layer register their handlers with it:
    // recovery is the fallback every mode relies on to report a fault.
    recover::init();
    let boot =
        pvh::parse(start_info.into(), mem::phys_to_virt).unwrap_or_else(|e| fatal("boot info", &e));
    let frames_at_boot = mem::frames::init(&boot);
    let nx = mem::paging::init(&boot).unwrap_or_else(|e| fatal("paging", &e));
    mem::heap::init().unwrap_or_else(|e| fatal("heap", &e));
    guard_kernel_stacks();
    let madt = boot
        .rsdp()
        .and_then(acpi::madt)
        .unwrap_or_else(|| fatal("ACPI", &"no MADT: the kernel needs the APICs it lists"));
    irq::init(&madt);
    let tsc_hz = time::init();
    // The tick is wired here so the clock needs nothing from the interrupt
    // layer, which (through the APIC) uses the clock.
    irq::register_isa(0, time::tick).expect("the PIT's line 0 is wired and free");
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

    // The embedding (embed/) is handed what it needs, once: it never
    // reaches back up for the platform.
    embed::devices::init(&platform.pci);
    embed::iommu::init(platform.boot.rsdp());
    embed::mm::init(platform.pages_1g);

    let Command { mode, filter } = parse_command(platform.boot.cmdline());
    println!(
        "seed: {} (SEED={} ./qemu-run.sh ... repeats this run)",
        rng::seed(),
        rng::seed()
    );
    let code = match mode {
        "demo" => demo::run(platform),
        #[cfg(feature = "rig")]
        "test" => harness::run(&tests::all(), filter),
        #[cfg(feature = "rig")]
        "selftest" => harness::run(&tests::selftest(), filter),
        #[cfg(feature = "rig")]
        "bench" => bench::run(filter),
        #[cfg(not(feature = "rig"))]
        "test" | "selftest" | "bench" => {
            println!("error: mode {mode:?} needs the test rig (build with --features rig)");
            ExitCode::BadCommandLine
        }
        "soak" => soak::run(filter),
        "example" => example::run(platform),
        other => {
            println!(
                "error: unknown mode {other:?} (expected demo, test, bench, soak, example or selftest)"
            );
            ExitCode::BadCommandLine
        }
    };
    exit_qemu(code)
}
