//! Random batches of copies, fills and zeroes with several requests in
//! flight, every byte checked against a model: the guest dmatest's batch
//! test and the `soak` mode (`./qemu-run.sh soak [requests]`).
//!
//! Each batch takes 1 to 16 requests, each in its own slot of the
//! destination with untouched guard bytes around it, enters the ring
//! through `prep_batch` or request by request, is issued once and waited
//! for with `wait_all`. Then each window and its guards are compared with
//! the model, and every 256 batches the whole of both buffers.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::time::Duration;

use dmaengine::engine::{Channel, DmaError, Engine, Op, PrepFlags};
use dmaengine::hal::Dma;

use crate::dma::{KernelHal, LSI, cpu_channel};
use crate::exit::ExitCode;
use crate::rng::{self, Rng};
use crate::time::Delay;
use crate::{println, time};

/// Bytes in each of the source and destination buffers.
const BUF: usize = 1 << 20;
/// Bytes left untouched on each side of every destination window.
const GUARD: usize = 64;
/// The longest request.
const MAX_LEN: usize = 64 << 10;
/// The most requests in one batch.
const MAX_BATCH: u64 = 16;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a run did.
#[derive(Default)]
pub struct Stats {
    /// Requests that were prepared.
    pub requests: u64,
    /// Bytes they wrote.
    pub bytes: u64,
    /// Errors by kind (a prep refused, a wait failed, a byte wrong).
    pub errors: BTreeMap<&'static str, u64>,
    batches: u64,
}

impl Stats {
    /// Every error counted.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// A source with a fixed pattern, a destination, and what the destination
/// must hold.
pub struct Buffers {
    src: Dma<KernelHal>,
    dst: Dma<KernelHal>,
    model: Vec<u8>,
}

fn src_byte(i: usize) -> u8 {
    0x80 | ((i ^ (i >> 7) ^ (i >> 13)) as u8 & 0x7f)
}

impl Buffers {
    /// Two fresh buffers.
    pub fn new() -> Buffers {
        let mut src = Dma::<KernelHal>::new(BUF).expect("soak source buffer");
        for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
            *b = src_byte(i);
        }
        let dst = Dma::<KernelHal>::new(BUF).expect("soak destination buffer");
        Buffers {
            src,
            dst,
            model: alloc::vec![0; BUF],
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Copy { dst, src, len } => {
                let (d, s) = (self.offset(dst), (src - self.src.paddr()) as usize);
                self.model[d..d + len].copy_from_slice(&self.src.as_slice()[s..s + len]);
            }
            Op::Fill { dst, len, pattern } => {
                let d = self.offset(dst);
                let bytes = pattern.to_le_bytes();
                for (i, b) in self.model[d..d + len].iter_mut().enumerate() {
                    *b = bytes[i % 8];
                }
            }
            Op::Zero { dst, len } => {
                let d = self.offset(dst);
                self.model[d..d + len].fill(0);
            }
            // An interrupt-only request, or work the soak never asks for:
            // no byte changes.
            _ => {}
        }
    }

    fn offset(&self, dst: u64) -> usize {
        (dst - self.dst.paddr()) as usize
    }

    /// Whether `[from, to)` of the destination matches the model.
    fn matches(&self, from: usize, to: usize) -> bool {
        self.dst.as_slice()[from..to] == self.model[from..to]
    }
}

/// Runs one random batch on `chan`.
pub fn batch<E: Engine>(
    chan: &mut Channel<E>,
    bufs: &mut Buffers,
    rng: &mut Rng,
    stats: &mut Stats,
) {
    let count = 1 + rng.below(MAX_BATCH) as usize;
    let slot = BUF / count;
    let mut ops = Vec::with_capacity(count);
    for k in 0..count {
        let room = slot - 2 * GUARD;
        let len = rng.length(MAX_LEN.min(room));
        let d = k * slot + GUARD + rng.below((room - len + 1) as u64) as usize;
        let dst = bufs.dst.paddr() + d as u64;
        ops.push(match rng.below(3) {
            0 => {
                let s = rng.below((BUF - len + 1) as u64);
                Op::Copy {
                    dst,
                    src: bufs.src.paddr() + s,
                    len,
                }
            }
            1 => Op::Fill {
                dst,
                len,
                pattern: rng.next(),
            },
            _ => Op::Zero { dst, len },
        });
    }
    let whole = rng.below(2) == 0;
    // SAFETY: every window is inside the buffers this run owns, which are
    // not touched by the CPU until `wait_all` below has ended them all.
    let prepared = unsafe {
        if whole {
            chan.prep_batch(&ops, PrepFlags::empty()).map(|_| ())
        } else {
            ops.iter()
                .try_for_each(|&op| chan.prep(op, PrepFlags::empty(), None).map(|_| ()))
        }
    };
    if let Err(e) = prepared {
        stats.error(match e {
            DmaError::RingFull => "prep: ring full",
            DmaError::Halted => "prep: halted",
            _ => "prep: refused",
        });
        recover(chan, bufs);
        return;
    }
    stats.requests += count as u64;
    chan.issue_pending();
    if chan.wait_all(&mut Delay, TIMEOUT).is_err() {
        stats.error("wait: failed or timed out");
        recover(chan, bufs);
        return;
    }
    for op in &ops {
        bufs.apply(op);
    }
    let errors = stats.error_count();
    for op in &ops {
        let (Op::Copy { dst, len, .. } | Op::Fill { dst, len, .. } | Op::Zero { dst, len }) = *op
        else {
            continue;
        };
        stats.bytes += len as u64;
        let d = bufs.offset(dst);
        if !bufs.matches(d - GUARD, d + len + GUARD) {
            stats.error("bytes: wrong in a window or its guards");
        }
    }
    stats.batches += 1;
    if stats.batches.is_multiple_of(256) {
        check_whole(bufs, stats);
    }
    // Resynchronise after a mismatch, so one error is counted once.
    if stats.error_count() > errors {
        bufs.model.copy_from_slice(bufs.dst.as_slice());
    }
}

/// Compares the whole of both buffers with what they must hold.
pub fn check_whole(bufs: &Buffers, stats: &mut Stats) {
    if !bufs.matches(0, BUF) {
        stats.error("bytes: wrong outside every window");
    }
    if bufs
        .src
        .as_slice()
        .iter()
        .enumerate()
        .any(|(i, &b)| b != src_byte(i))
    {
        stats.error("bytes: the source changed");
    }
}

/// After an error: stop the channel, make it usable, and take the
/// destination's contents as the model again.
fn recover<E: Engine>(chan: &mut Channel<E>, bufs: &mut Buffers) {
    chan.terminate();
    let _ = chan.reset();
    bufs.model.copy_from_slice(bufs.dst.as_slice());
}

/// The `soak` mode: `requests` random requests (default 1 000 000) across the
/// LSI53C895A and the CPU engine, a progress line every tenth of the way,
/// and one summary line.
pub fn run(requests: Option<&str>) -> ExitCode {
    let Some(total) = requests.map_or(Some(1_000_000), |r| r.parse::<u64>().ok()) else {
        println!("error: soak takes a number of requests, got {requests:?}");
        return ExitCode::BadCommandLine;
    };
    let mut lsi = match LSI.channel() {
        Ok(chan) => chan,
        Err(e) => {
            println!("error: no LSI53C895A channel: {e}");
            return ExitCode::Failure;
        }
    };
    let mut cpu = cpu_channel();
    let mut bufs = Buffers::new();
    let mut rng = Rng::from_seed(0x50a6);
    let mut stats = Stats::default();
    let start = time::now_ns();
    println!(
        "soak: {total} requests across the LSI53C895A and the CPU engine, seed {}",
        rng::seed()
    );
    let mut next_report = 1;
    while stats.requests < total {
        if rng.below(2) == 0 {
            batch(&mut lsi, &mut bufs, &mut rng, &mut stats);
        } else {
            batch(&mut cpu, &mut bufs, &mut rng, &mut stats);
        }
        if next_report <= 10 && stats.requests * 10 >= total * next_report {
            println!(
                "soak: {}0% ({} requests, {} MiB, {} errors, {} ms)",
                next_report,
                stats.requests,
                stats.bytes >> 20,
                stats.error_count(),
                (time::now_ns() - start) / 1_000_000
            );
            next_report += 1;
        }
    }
    check_whole(&bufs, &mut stats);
    let mut kinds = alloc::string::String::new();
    for (kind, n) in &stats.errors {
        kinds.push_str(&alloc::format!(" ({kind}: {n})"));
    }
    println!(
        "soak: {} requests, {} bytes, {} errors{kinds}",
        stats.requests,
        stats.bytes,
        stats.error_count()
    );
    if stats.error_count() == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}
