//! Guest instructions per request, exact and independent of the host: only
//! meaningful under `-icount shift=0,sleep=off` (`qemu-run.sh` gives this
//! group a boot of its own), where RDTSC reads the number of guest
//! instructions executed and a device's own work counts as none.
//!
//! Each key counts one window of [`N`] requests after [`WARMUP`] unmeasured
//! ones, with interrupts off (a timer tick in the window would add its
//! handler), and reports the window's instructions over `N` (or over the
//! copies, `insns_per_copy`): an exact quotient of two deterministic
//! integers (the window's total is printed beside it), not rounded, as a
//! bare batch of 16 costs under 2 instructions per copy. A request is
//! the whole round trip as the throughput benchmarks run it: prepare,
//! issue, then status calls until one finds it complete, the loop's own
//! instructions included. Polls that found it still in progress would be
//! counted too, and would make the count depend on how long the device
//! takes in virtual time: each key's polls are printed, and have been 0 on
//! QEMU 7.2 and 10.0, the chip running a chain this short inside the
//! register write that starts it.

use alloc::format;
use x86_64::instructions::interrupts::without_interrupts;

use dmaengine::engine::{Channel, Cookie, Engine, Op, PrepFlags, Status};
use dmaengine::hal::Dma;

use super::bare::{BareChip, RawScript, SigpScript};
use super::dma::{small_moves, small_ops};
use super::report;
use crate::dma::{KernelHal, LSI, cpu_channel};
use crate::{println, time};

/// Requests counted per key.
const N: u64 = 64;
/// Requests run before the counted window, so first-use paths (a fresh
/// ring, a chain not yet parked) are not counted.
const WARMUP: usize = 8;
/// Status calls that may find one request in progress before the
/// benchmark gives up.
const POLL_LIMIT: u64 = 100_000_000;

/// The batch sizes counted: one copy, and one batch of 16.
const BATCHES: [usize; 2] = [1, 16];

/// Prepares `ops` through `chan` (`prep_copy` for a single copy,
/// `prep_batch` otherwise); returns the last cookie. Inlined, so each
/// window counts what a caller's own code would run.
#[inline(always)]
fn prep<E: Engine>(chan: &mut Channel<E>, ops: &[Op]) -> Cookie {
    if let [Op::Copy { dst, src, len }] = *ops {
        // SAFETY: both buffers are the benchmark's, touched by nothing else
        // until the request completes (every caller waits for it).
        unsafe { chan.prep_copy(dst, src, len, PrepFlags::empty()) }.expect("prep")
    } else {
        // SAFETY: as above.
        unsafe { chan.prep_batch(ops, PrepFlags::empty()) }
            .expect("prep_batch")
            .last
    }
}

/// One request of `ops` through `chan` ([`prep`]), issued, then status
/// calls until the last is complete; returns the status calls that found
/// it in progress. Inlined into the counting loop, as a caller's own loop
/// would have it: a call here added the harness's own call, saves and
/// restores to every request.
#[inline(always)]
fn request<E: Engine>(chan: &mut Channel<E>, ops: &[Op]) -> u64 {
    let last = prep(chan, ops);
    chan.issue_pending();
    let mut polls = 0;
    loop {
        match chan.status(last).status {
            Status::Complete => return polls,
            Status::InProgress => {
                polls += 1;
                assert!(polls < POLL_LIMIT, "benchmark copy never completed");
            }
            Status::Error(kind) => panic!("benchmark copy failed: {kind}"),
        }
    }
}

/// Instructions of `N` requests of `ops` through `chan`, and the polls that
/// found one in progress.
fn api<E: Engine>(chan: &mut Channel<E>, ops: &[Op]) -> (u64, u64) {
    for _ in 0..WARMUP {
        request(chan, ops);
    }
    without_interrupts(|| {
        let mut polls = 0;
        let start = time::rdtsc();
        for _ in 0..N {
            polls += request(chan, ops);
        }
        (time::rdtsc() - start, polls)
    })
}

/// The parts of `N` requests of `ops` through `chan`, counted apart in a
/// window of their own (the whole-request keys are counted without these
/// TSC reads): instructions preparing, issuing, and in the status calls up
/// to the one that finds the last request done, each less the cost of the
/// TSC read that ends it.
fn api_parts<E: Engine>(chan: &mut Channel<E>, ops: &[Op]) -> [u64; 3] {
    for _ in 0..WARMUP {
        request(chan, ops);
    }
    without_interrupts(|| {
        // What one TSC read adds between two others.
        let (a, b) = (time::rdtsc(), time::rdtsc());
        let tsc = b - a;
        let mut parts = [0; 3];
        for _ in 0..N {
            let start = time::rdtsc();
            let last = prep(chan, ops);
            let prepared = time::rdtsc();
            chan.issue_pending();
            let issued = time::rdtsc();
            while chan.status(last).status != Status::Complete {}
            let done = time::rdtsc();
            for (part, (from, to)) in
                parts
                    .iter_mut()
                    .zip([(start, prepared), (prepared, issued), (issued, done)])
            {
                *part += (to - from).saturating_sub(tsc);
            }
        }
        parts
    })
}

/// Instructions of `N` runs of a bare chain (`run(n)` runs it `n` times).
fn bare(mut run: impl FnMut(usize) -> u64) -> u64 {
    run(WARMUP);
    without_interrupts(|| {
        let start = time::rdtsc();
        run(N as usize);
        time::rdtsc() - start
    })
}

/// Reports the parts ([`api_parts`]) under the key [`report_count`] uses,
/// with `.prep`, `.issue` and `.status` appended.
fn report_parts(prefix: &str, batch: usize, parts: [u64; 3]) {
    let per = N * batch as u64;
    let key = if batch == 1 {
        format!("{prefix}.insns.batch1")
    } else {
        format!("{prefix}.insns_per_copy.batch{batch}")
    };
    for (name, insns) in ["prep", "issue", "status"].iter().zip(parts) {
        report(&format!("{key}.{name}"), insns as f64 / per as f64, "insns");
    }
}

/// Reports `insns` of `N` requests of `batch` copies under `prefix`:
/// `{prefix}.insns.batch1` per request, `{prefix}.insns_per_copy.batchN`
/// per copy otherwise; prints the raw count and the API's `polls`.
fn report_count(prefix: &str, batch: usize, insns: u64, polls: Option<u64>) {
    let per = N * batch as u64;
    let key = if batch == 1 {
        format!("{prefix}.insns.batch1")
    } else {
        format!("{prefix}.insns_per_copy.batch{batch}")
    };
    match polls {
        Some(polls) => {
            println!("insns: {key}: {insns} over {per} copies, {polls} polls in progress")
        }
        None => println!("insns: {key}: {insns} over {per} copies"),
    }
    report(&key, insns as f64 / per as f64, "insns");
}

pub fn run() {
    let (Ok(src), Ok(dst)) = (Dma::<KernelHal>::new(4096), Dma::<KernelHal>::new(4096)) else {
        println!("insns benchmarks skipped: no DMA memory");
        return;
    };
    let (s, d) = (src.paddr(), dst.paddr());
    let mut cpu = cpu_channel();
    for batch in BATCHES {
        let (insns, polls) = api(&mut cpu, &small_ops(batch, s, d));
        report_count("dma.small.cpu", batch, insns, Some(polls));
        report_parts(
            "dma.small.cpu",
            batch,
            api_parts(&mut cpu, &small_ops(batch, s, d)),
        );
    }
    // The API's channel on the first chip, the bare chains on the second,
    // as in the throughput benchmarks.
    let (Ok(mut lsi), Some(mut chip), Some(mut raw), Some(mut sigp)) = (
        LSI.channel(),
        BareChip::take(),
        RawScript::new(BATCHES[1]),
        SigpScript::new(BATCHES[1]),
    ) else {
        println!("LSI insns benchmarks skipped: no two LSI53C895As");
        return;
    };
    for batch in BATCHES {
        let (insns, polls) = api(&mut lsi, &small_ops(batch, s, d));
        report_count("dma.small", batch, insns, Some(polls));
        report_parts(
            "dma.small",
            batch,
            api_parts(&mut lsi, &small_ops(batch, s, d)),
        );
        raw.build(small_moves(batch, s, d));
        let insns = bare(|n| raw.run(&mut chip, n));
        report_count("dma.small.raw", batch, insns, None);
        sigp.build(&mut chip, small_moves(batch, s, d));
        let insns = bare(|n| sigp.run(&mut chip, n));
        sigp.check(&mut chip);
        report_count("dma.small.sigp_raw", batch, insns, None);
    }
}
