//! Interrupt routing: every CPU's own APIC timer, the I/O APIC's lines, and
//! the edu device's MSI aimed at one CPU. With `SMP=1` the same tests run
//! on the boot CPU alone.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dmaengine::engine::PrepFlags;
use x86_64::instructions::interrupts;

use super::dma::{TIMEOUT, buffer, dst_pattern, first_mismatch, src_pattern, window};
use crate::apic::{self, MAX_CPUS};
use crate::harness::Test;
use crate::{dma, executor, irq, smp, time};

pub const TESTS: &[Test] = &[
    Test::new(
        "irq.every_cpu_takes_its_own_timer",
        every_cpu_takes_its_own_timer,
    ),
    Test::new(
        "irq.edu_msi_arrives_on_the_cpu_it_names",
        edu_msi_arrives_on_the_cpu_it_names,
    ),
];

/// How long a CPU waits for its ticks or its interrupt.
const WAIT_NS: u64 = 2_000_000_000;
/// Timer ticks each CPU must see: 30 ms at 100 Hz.
const TICKS: u64 = 3;

/// Ticks each CPU saw while its job had interrupts on (u64::MAX: did not run).
static SEEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

/// Turns interrupts on for at most `WAIT_NS`, until `done` says so, and
/// restores the interrupt flag.
fn with_interrupts_on_until(done: impl Fn() -> bool) {
    let was_on = interrupts::are_enabled();
    interrupts::enable();
    let start = time::now_ns();
    while !done() && time::now_ns() - start < WAIT_NS {
        core::hint::spin_loop();
    }
    if !was_on {
        interrupts::disable();
    }
}

fn timer_job(cpu: usize) {
    let before = apic::ticks(cpu);
    with_interrupts_on_until(|| apic::ticks(cpu) >= before + TICKS);
    SEEN[cpu].store(apic::ticks(cpu) - before, Ordering::Release);
}

/// Each CPU turns its interrupts on and counts the ticks of the timer
/// counted under its own number: an AP whose APIC timer was not started,
/// or whose local APIC was not enabled, sees none (the boot CPU's timer
/// is counted under CPU 0 only).
fn every_cpu_takes_its_own_timer() {
    for seen in &SEEN {
        seen.store(u64::MAX, Ordering::Release);
    }
    smp::run_on_all(timer_job, 2 * WAIT_NS).expect("every CPU ran the job");
    let seen: Vec<u64> = SEEN
        .iter()
        .take(smp::cpus())
        .map(|s| s.load(Ordering::Acquire))
        .collect();
    assert!(
        seen.iter().all(|&t| (TICKS..u64::MAX).contains(&t)),
        "ticks per CPU within {WAIT_NS} ns: {seen:?}"
    );
}

/// Set when the CPU listening for interrupts may stop.
pub(super) static STOP: AtomicBool = AtomicBool::new(false);

/// A job that takes the interrupts aimed at its CPU until [`STOP`] (or
/// for at most 2 s).
pub(super) fn listen_job(_cpu: usize) {
    with_interrupts_on_until(|| STOP.load(Ordering::Acquire));
}

/// The edu device's MSI is aimed at the last CPU, which listens with its
/// interrupts on; the boot CPU awaits an edu copy in the executor. The
/// completion must come as that MSI, taken by that CPU alone (no other
/// CPU's count of the vector moves, and the edu's INTx line stays quiet),
/// and must wake the awaiting task on the boot CPU; every byte is checked.
fn edu_msi_arrives_on_the_cpu_it_names() {
    let cpus = smp::cpus();
    let target = cpus - 1;
    let line = dma::EDU.device().expect("edu").irq_line;
    let (edu, message) = dma::EDU.serviced_msi(target).expect("edu MSI");
    let msi_before: Vec<u64> = (0..cpus)
        .map(|c| irq::msi_count(message.vector, c))
        .collect();
    let intx_before = irq::count(line);
    STOP.store(false, Ordering::Release);
    if target != 0 {
        smp::start_on(target, listen_job);
    }
    let (src, dst) = (buffer(4096, src_pattern), buffer(4096, dst_pattern));
    let prepared = edu.lock().copy(dst, 3, src, 5, 3000, PrepFlags::INTERRUPT);
    let outcome = prepared
        .map(|transfer| executor::block_on(edu.transfer(transfer), TIMEOUT.as_nanos() as u64));
    STOP.store(true, Ordering::Release);
    let listened = target == 0 || smp::wait_for(target, 2 * WAIT_NS);
    let msi_after: Vec<u64> = (0..cpus)
        .map(|c| irq::msi_count(message.vector, c))
        .collect();
    let intx_after = irq::count(line);
    dma::EDU.release_msi(message);
    drop(edu);
    let (dst, _) = outcome
        .expect("edu prep")
        .expect("awaited in time")
        .expect("edu copy");
    assert!(listened, "CPU {target} stopped listening");
    assert_eq!(first_mismatch(dst.as_slice(), window(3, 5, 3000)), None);
    let taken: Vec<u64> = msi_after
        .iter()
        .zip(&msi_before)
        .map(|(a, b)| a - b)
        .collect();
    assert!(taken[target] >= 1, "CPU {target} took no MSI: {taken:?}");
    assert!(
        taken
            .iter()
            .enumerate()
            .all(|(cpu, &n)| cpu == target || n == 0),
        "only CPU {target} takes the vector: {taken:?}"
    );
    assert_eq!(intx_after, intx_before, "the INTx line stayed quiet");
}
