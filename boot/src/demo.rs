//! `./qemu-run.sh` with no mode: a short report of what the stack does.

use dmaengine::drivers::edu;

use crate::exit::ExitCode;
use crate::mem::{PAGE_SIZE, frames, heap};
use crate::pvh::E820_RAM;
use crate::recover::{Caught, catch};
use crate::{devices, irq, platform, println, time, trap};

/// Prints the report.
pub fn run() -> ExitCode {
    let p = platform();
    println!();
    println!("== memory");
    let ram: u64 = p
        .boot
        .regions()
        .iter()
        .filter(|r| r.kind == E820_RAM)
        .map(|r| r.len)
        .sum();
    println!(
        "  RAM {} MiB in {} map entries",
        ram >> 20,
        p.boot.regions().len()
    );
    println!(
        "  frame allocator: {} free frames ({} MiB) at boot, {} now; heap {} KiB used",
        p.frames_at_boot,
        (p.frames_at_boot as u64 * PAGE_SIZE) >> 20,
        frames::free_frames(),
        heap::used() >> 10
    );
    println!("  NX {}", if p.nx { "on" } else { "unsupported" });

    println!("== time and interrupts");
    let mhz = p.tsc_hz / 1_000_000;
    println!(
        "  TSC {mhz} MHz (calibrated against the PIT), timer at {} mHz",
        time::tick_millihz()
    );
    let before = time::ticks();
    let start = time::now_ns();
    while time::now_ns() - start < 100_000_000 {
        x86_64::instructions::hlt();
    }
    println!(
        "  {} timer interrupts in 100 ms of TSC time",
        time::ticks() - before
    );

    println!("== exceptions");
    // SAFETY: the read is meant to fault; `catch` turns the fault into a value.
    match catch(|| unsafe { core::ptr::read_volatile(0x0000_4000_0000_0000 as *const u64) }) {
        Err(Caught::Exception(fault)) => println!("  caught: {fault}"),
        other => println!("  expected a page fault, got {other:?}"),
    }

    println!("== PCI bus 0");
    for dev in &p.pci {
        println!("  {dev}");
    }

    println!("== edu device");
    match devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID)
        .and_then(|d| devices::map_bar(d, 0))
    {
        Some(regs) => println!("  ID register {:#010x}", regs.read32(edu::regs::ID)),
        None => println!("  not present (qemu-run.sh adds -device edu)"),
    }
    println!(
        "  interrupts so far: timer {}, spurious {}, exceptions {}",
        irq::count(0),
        irq::SPURIOUS.load(core::sync::atomic::Ordering::Relaxed),
        trap::EXCEPTIONS.load(core::sync::atomic::Ordering::Relaxed)
    );
    println!();
    println!("demo done");
    ExitCode::Success
}
