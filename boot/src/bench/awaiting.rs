//! Awaited copies against polled ones, and two engines' waits overlapped
//! by the executor against the same work one engine after the other.

use alloc::format;
use alloc::vec::Vec;
use core::pin::pin;

use dmaengine::engine::shared::X86Interrupts;
use dmaengine::engine::{Cookie, Engine, Op, PrepFlags, SharedChannel, Status};
use dmaengine::hal::Dma;

use super::{ns_per_iter, report};
use crate::dma::{EDU, KernelHal, LSI};
use crate::{executor, println, time};

/// More than the 99 moves QEMU runs inside the start write: the batch
/// really completes later, by interrupt (QEMU-FACTS.md).
const BATCH: usize = 150;
/// Alternating rounds of the polled and the awaited copies.
const ROUNDS: usize = 11;
/// How long one measured wait may take before the benchmark gives up.
const LIMIT_NS: u64 = 10_000_000_000;

/// Prepares `ops` as one batch; returns its last cookie.
fn prep<E: Engine>(
    channel: &SharedChannel<E, X86Interrupts>,
    ops: &[Op],
    flags: PrepFlags,
) -> Cookie {
    // SAFETY: the benchmark's buffers live until `run` returns, after every
    // request has ended, and the CPU does not touch them meanwhile.
    unsafe { channel.lock().prep_batch(ops, flags) }
        .expect("benchmark prep")
        .last
}

/// Spins on the channel until `cookie` ends (the polled way).
fn polled<E: Engine>(channel: &SharedChannel<E, X86Interrupts>, cookie: Cookie) {
    let deadline = time::now_ns() + LIMIT_NS;
    loop {
        let status = {
            let mut channel = channel.lock();
            channel.issue_pending();
            channel.status(cookie).status
        };
        match status {
            Status::Complete => return,
            Status::InProgress if time::now_ns() < deadline => core::hint::spin_loop(),
            other => panic!("benchmark copy ended {other:?}"),
        }
    }
}

/// Awaits `cookie` on the executor (the async way).
fn awaited<E: Engine>(channel: &SharedChannel<E, X86Interrupts>, cookie: Cookie) {
    executor::block_on(channel.completion(cookie), LIMIT_NS)
        .expect("benchmark wait timed out")
        .expect("benchmark copy failed");
}

pub fn run() {
    let (Ok(src), Ok(dst)) = (
        Dma::<KernelHal>::new(64 << 10),
        Dma::<KernelHal>::new(64 << 10),
    ) else {
        println!("async benchmarks skipped: no DMA memory");
        return;
    };
    if crate::dma::LSI.device().is_none() || crate::dma::EDU.device().is_none() {
        println!("async benchmarks skipped: no LSI53C895A or edu device");
        return;
    }
    let (lsi, lsi_line) = LSI.serviced().expect("LSI53C895A channel");
    let copy = |len: usize, k: usize| Op::Copy {
        dst: dst.paddr() + (k * len) as u64,
        src: src.paddr() + (k * len) as u64,
        len,
    };
    let one = [copy(4096, 0)];
    let batch: Vec<Op> = (0..BATCH).map(|k| copy(16, k)).collect();
    let mut batch_ns = 0.0;
    for (label, ops, n) in [("4KiB", &one[..], 20), ("batch150", &batch[..], 2)] {
        // Rounds of each, alternating, and the median round of each: a
        // timer tick or a host hiccup lands in one round, not in the ratio.
        let mut rounds = [(0.0, 0.0); ROUNDS];
        for round in rounds.iter_mut() {
            let poll_ns = ns_per_iter(n, || polled(&lsi, prep(&lsi, ops, PrepFlags::empty())));
            // No INTERRUPT: the future queues an interrupt-only request
            // behind the copy only if the copy has not ended when it looks.
            let await_ns = ns_per_iter(n, || awaited(&lsi, prep(&lsi, ops, PrepFlags::empty())));
            *round = (poll_ns, await_ns);
        }
        let median = |of: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(of).collect();
            v.sort_by(f64::total_cmp);
            v[ROUNDS / 2]
        };
        let (poll_ns, await_ns) = (median(|r| r.0), median(|r| r.1));
        report(&format!("dma.async.{label}.polled.us"), poll_ns / 1e3, "us");
        report(
            &format!("dma.async.{label}.awaited.us"),
            await_ns / 1e3,
            "us",
        );
        report(
            &format!("dma.async_vs_poll.{label}.ratio"),
            await_ns / poll_ns,
            "x",
        );
        batch_ns = await_ns;
    }

    // One edu copy (two of its 100 ms transfers) and as many LSI batches
    // as take as long, first one after the other, then awaited together.
    let (edu, edu_line) = EDU.serviced().expect("edu channel");
    let edu_op = [Op::Copy {
        dst: dst.paddr() + (32 << 10),
        src: src.paddr() + (32 << 10),
        len: 64,
    }];
    let edu_alone = ns_per_iter(1, || {
        awaited(&edu, prep(&edu, &edu_op, PrepFlags::INTERRUPT))
    });
    let batches = ((edu_alone / batch_ns) as usize).clamp(1, 10_000);
    let lsi_batches = || async {
        for _ in 0..batches {
            let last = prep(&lsi, &batch, PrepFlags::INTERRUPT);
            lsi.completion(last).await.expect("LSI batch");
        }
    };
    let edu_copy = || async {
        let last = prep(&edu, &edu_op, PrepFlags::INTERRUPT);
        edu.completion(last).await.expect("edu copy");
    };
    let one_by_one = ns_per_iter(1, || {
        executor::block_on(edu_copy(), LIMIT_NS).expect("edu");
        executor::block_on(lsi_batches(), LIMIT_NS).expect("LSI");
    });
    let together = ns_per_iter(1, || {
        let (mut a, mut b) = (pin!(edu_copy()), pin!(lsi_batches()));
        executor::run(&mut [a.as_mut(), b.as_mut()], LIMIT_NS).expect("both");
    });
    EDU.release(edu_line);
    LSI.release(lsi_line);
    report("dma.overlap.lsi_batches", batches as f64, "batches");
    report("dma.overlap.one_by_one.ms", one_by_one / 1e6, "ms");
    report("dma.overlap.together.ms", together / 1e6, "ms");
    report("dma.overlap.lsi_edu.ratio", together / one_by_one, "x");
}
