//! DMA benchmarks: the copy API on the LSI and CPU engines against
//! hand-written SCRIPTS on the second chip (the emulator's own limit: a
//! DSP-started chain and a doorbell-woken resident one), small-copy rates, and
//! MMIO accesses counted per issue and per descriptor.

use alloc::format;
use alloc::vec::Vec;

use dmaengine::drivers::lsi53c895a::{regs, script};
use dmaengine::engine::copybreak::CopyBreak;
use dmaengine::engine::{Channel, Cookie, Engine, Op, PrepFlags, Status};
use dmaengine::hal::Dma;

use super::bare::{BareChip, RawScript, SigpScript, SlotScript};
use super::report;
use crate::dma::{KernelHal, LSI, LsiChannel, cpu_channel};
use crate::{devices, println, time};

const SIZES: [(&str, usize); 4] = [
    ("4KiB", 4 << 10),
    ("64KiB", 64 << 10),
    ("1MiB", 1 << 20),
    ("16MiB", 16 << 20),
];
const BATCHES: [usize; 4] = [1, 16, 256, 4096];
const SMALL: usize = 64;
/// How far on the CPU's copies write their destination: buffers exactly
/// 16 MiB apart alias in QEMU's software TLB (source and destination pages
/// share an index), which makes every CPU copy between them about ten times
/// slower, an artefact of the emulator, not of the engine.
const UNALIASED: u64 = 5 * 4096;

/// Pages in QEMU's software TLB in these runs (7.2 and 10.0 alike),
/// indexed by virtual page number modulo this (QEMU resizes it; the pages
/// a uprobe on its `tlb_set_page_full` saw refilled collide modulo 128). A
/// register page whose slot another page in use also takes is walked again
/// on every register access (the uprobe counted about one refill per access
/// in such a layout, none otherwise: RAM pages that collide are found again
/// in QEMU's victim TLB, the register page is not), which made each 64-byte
/// request ~35% slower in a probe: 1 130 against 840 ns on 7.2, 1 865
/// against 1 360 on 10.0. The channel's own pages can collide so, and so can
/// the pages of the driver's DMA block that it sweeps through as its ring
/// and entries advance. Where a kernel puts its channel and DMA memory
/// decides that: with the channel in one place, the small-copy ratios moved by up to 0.3 from
/// one build to the next, with the layout more than with the code. So each
/// round of the API side below runs with the channel in another of
/// [`ROUNDS`] places spread over the slots, and the median is that of a
/// typical layout; and what sharing the register page's slot costs is
/// measured on its own (`dma.small.lsi.tlb_alias.batch1.ratio`).
const TLB_SLOTS: usize = 128;

/// The TLB slot of the page at `addr`.
fn tlb_slot(addr: usize) -> usize {
    (addr >> 12) % TLB_SLOTS
}

/// Places for the LSI channel on the heap, consecutive, enough of them to
/// cover every TLB slot; the channel sits in one.
struct Places {
    slots: Vec<Option<LsiChannel>>,
    at: usize,
}

impl Places {
    fn new(chan: LsiChannel) -> Places {
        let count = TLB_SLOTS * 4096 / size_of::<Option<LsiChannel>>() + 2;
        let mut slots: Vec<Option<LsiChannel>> = (0..count).map(|_| None).collect();
        slots[0] = Some(chan);
        Places { slots, at: 0 }
    }

    /// Moves the channel to the place for `round` of [`ROUNDS`], spread
    /// over all places, and returns it.
    fn for_round(&mut self, round: usize) -> &mut LsiChannel {
        let to = round % ROUNDS * self.slots.len() / ROUNDS;
        let chan = self.slots[self.at].take();
        self.slots[to] = chan;
        self.at = to;
        self.chan()
    }

    fn chan(&mut self) -> &mut LsiChannel {
        self.slots[self.at]
            .as_mut()
            .expect("the channel is in its place")
    }

    /// Moves the channel to a place one of whose pages takes TLB slot
    /// `slot` (`takes`), or to one none of whose pages takes it or a slot of
    /// the channel's DMA block. False if there is no such place.
    fn move_where(&mut self, slot: usize, takes: bool) -> bool {
        let (block, len) = self.chan().engine().dma_block();
        let block = crate::mem::phys_to_virt(block) as usize;
        let block_slots: Vec<usize> = (block >> 12..(block + len).div_ceil(4096))
            .map(|page| tlb_slot(page << 12))
            .collect();
        let size = size_of::<Option<LsiChannel>>();
        let fits = |i: usize| {
            let start = &self.slots[i] as *const Option<LsiChannel> as usize;
            let pages: Vec<usize> = (start >> 12..=(start + size - 1) >> 12)
                .map(|page| tlb_slot(page << 12))
                .collect();
            if takes {
                pages.contains(&slot)
            } else {
                !pages.contains(&slot) && pages.iter().all(|p| !block_slots.contains(p))
            }
        };
        let Some(to) = (0..self.slots.len()).find(|&i| fits(i)) else {
            return false;
        };
        let chan = self.slots[self.at].take();
        self.slots[to] = chan;
        self.at = to;
        true
    }
}

/// Bytes copied per size class: enough repetitions to take a few ms.
fn repetitions(size: usize) -> usize {
    ((256 << 20) / size).clamp(36, 4000)
}

/// Rounds in which the API and the hand-written script alternate; each
/// result is the median of its rounds, so both sides see the same noise.
const ROUNDS: usize = 9;

fn gbps(bytes: usize, cycles: u64) -> f64 {
    bytes as f64 / time::cycles_to_ns(cycles.max(1)) as f64
}

fn per_second(count: usize, cycles: u64) -> f64 {
    count as f64 * 1e9 / time::cycles_to_ns(cycles.max(1)) as f64
}

fn best(values: Vec<f64>) -> f64 {
    values.into_iter().fold(0.0, f64::max)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values[values.len() / 2]
}

/// How long a benchmark spins for one completion before it gives up.
const SPIN_LIMIT_NS: u64 = 10_000_000_000;

/// Spins until `cookie` ends; panics on an error or after
/// [`SPIN_LIMIT_NS`] (a benchmark must not report the speed of a failure).
fn spin<E: Engine>(chan: &mut Channel<E>, cookie: Cookie) {
    let deadline = time::now_ns() + SPIN_LIMIT_NS;
    loop {
        match chan.status(cookie).status {
            Status::Complete => return,
            Status::InProgress if time::now_ns() < deadline => core::hint::spin_loop(),
            Status::InProgress => panic!("benchmark copy still in progress after 10 s"),
            Status::Error(kind) => panic!("benchmark copy failed: {kind}"),
        }
    }
}

/// `n` copies of `size` bytes through the API, one request each; returns
/// TSC cycles.
fn api_copies<E: Engine>(chan: &mut Channel<E>, src: u64, dst: u64, size: usize, n: usize) -> u64 {
    let start = time::rdtsc();
    for _ in 0..n {
        // SAFETY: both buffers are ours for the whole benchmark and only the
        // engine touches them.
        let c = unsafe { chan.prep_copy(dst, src, size, PrepFlags::empty()) }.expect("prep");
        chan.issue_pending();
        spin(chan, c);
    }
    time::rdtsc() - start
}

/// Counts of one batch through the API.
struct BatchRun {
    cycles: u64,
    prep_mmio: u64,
    issue_mmio: u64,
    issue_reads: u64,
}

/// One batch of `batch` 64-byte copies, prepared (one `prep_batch` call,
/// or request by request for a batch of one), issued and waited for.
fn api_batch(chan: &mut LsiChannel, ops: &[Op]) -> BatchRun {
    let start = time::rdtsc();
    let before = chan.engine().register_accesses();
    let last = if let [op] = ops {
        // SAFETY: as in `api_copies`.
        unsafe { chan.prep(*op, PrepFlags::empty(), None) }.expect("prep")
    } else {
        // SAFETY: as in `api_copies`.
        unsafe { chan.prep_batch(ops, PrepFlags::empty()) }
            .expect("prep_batch")
            .last
    };
    let prepped = chan.engine().register_accesses();
    let reads = chan.engine().register_reads();
    chan.issue_pending();
    let issued = chan.engine().register_accesses();
    let issue_reads = chan.engine().register_reads() - reads;
    spin(chan, last);
    BatchRun {
        cycles: time::rdtsc() - start,
        prep_mmio: prepped - before,
        issue_mmio: issued - prepped,
        issue_reads,
    }
}

/// Batch sizes of the doorbell-driven chain.
const SIGP_BATCHES: [usize; 2] = [1, 16];

/// `batch` 64-byte Memory Moves (count, source, destination), one after
/// the other in both buffers.
pub(super) fn small_moves(batch: usize, s: u64, d: u64) -> impl Iterator<Item = (u32, u32, u32)> {
    (0..batch).map(move |k| {
        (
            SMALL as u32,
            s as u32 + (SMALL * k) as u32,
            d as u32 + (SMALL * k) as u32,
        )
    })
}

/// The same copies as [`small_moves`], as API operations.
pub(super) fn small_ops(batch: usize, s: u64, d: u64) -> Vec<Op> {
    (0..batch)
        .map(|k| Op::Copy {
            dst: d + (SMALL * k) as u64,
            src: s + (SMALL * k) as u64,
            len: SMALL,
        })
        .collect()
}

/// Rates of a batch through the API against a bare chain, side by side.
struct SideBySide {
    /// The bare chain's median copies/s.
    bare: f64,
    /// The API's median copies/s.
    lsi: f64,
    /// Register accesses per `issue_pending`.
    mmio_per_issue: f64,
    /// The reads among them.
    reads_per_issue: f64,
    /// Register accesses while preparing a batch, per issue.
    prep_mmio_per_issue: f64,
}

/// [`ROUNDS`] rounds of `n` batches of `ops` through the API against `n`
/// runs of a bare chain of the same copies (`bare(n)` returns TSC cycles),
/// alternating which goes first.
fn side_by_side(
    places: &mut Places,
    ops: &[Op],
    n: usize,
    mut bare: impl FnMut(usize) -> u64,
) -> SideBySide {
    let batch = ops.len();
    bare(1);
    api_batch(places.chan(), ops);
    let (mut bare_v, mut lsi_v) = (Vec::new(), Vec::new());
    let (mut prep_mmio, mut issue_mmio, mut issue_reads) = (0, 0, 0);
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            bare_v.push(per_second(batch * n, bare(n)));
        }
        let mut cycles = 0;
        let lsi = places.for_round(round);
        for _ in 0..n {
            let one = api_batch(lsi, ops);
            cycles += one.cycles;
            prep_mmio += one.prep_mmio;
            issue_mmio += one.issue_mmio;
            issue_reads += one.issue_reads;
        }
        lsi_v.push(per_second(batch * n, cycles));
        if round % 2 == 1 {
            bare_v.push(per_second(batch * n, bare(n)));
        }
    }
    // Medians: the hand-written chain's best rounds on QEMU 10 run far
    // ahead of its typical ones (batch 256: best 0.63 of the API's pace,
    // median 0.80), so a best would measure that spread.
    let issues = (ROUNDS * n) as f64;
    SideBySide {
        bare: median(bare_v),
        lsi: median(lsi_v),
        mmio_per_issue: issue_mmio as f64 / issues,
        reads_per_issue: issue_reads as f64 / issues,
        prep_mmio_per_issue: prep_mmio as f64 / issues,
    }
}

pub fn run() {
    // Five spare pages in the destination: see `UNALIASED`.
    let (Ok(src), Ok(dst)) = (
        Dma::<KernelHal>::new(16 << 20),
        Dma::<KernelHal>::new((16 << 20) + UNALIASED as usize),
    ) else {
        println!("dma benchmarks skipped: no 2 x 16 MiB of DMA memory");
        return;
    };
    let (s, d) = (src.paddr(), dst.paddr());
    let mut cpu = cpu_channel();
    // Measured (once) before the API's channel takes the first chip: the
    // measurement takes a channel of its own there.
    let copy_break_policy = crate::dma::copy_break();
    // The API's channel takes the first chip, the hand-written chains the
    // second, so neither stops the other's script.
    let (mut places, mut chip, mut raw, mut sigp) = match (
        LSI.channel(),
        BareChip::take(),
        RawScript::new(4096),
        SigpScript::new(SIGP_BATCHES[1]),
    ) {
        (Ok(lsi), Some(chip), Some(raw), Some(sigp)) => (Places::new(lsi), chip, raw, sigp),
        _ => {
            println!("LSI benchmarks skipped: no two LSI53C895As");
            return;
        }
    };
    for &(label, size) in &SIZES {
        // One Memory Move moves at most 16 MiB - 1: the 16 MiB copy is that
        // plus one byte, as the channel splits it.
        let first = size.min(script::MAX_MOVE as usize) as u32;
        let rest = size as u32 - first;
        let tail = (rest > 0).then(|| (rest, s as u32 + first, d as u32 + first));
        raw.build(core::iter::once((first, s as u32, d as u32)).chain(tail));
        let n = (repetitions(size) / ROUNDS).max(1);
        raw.run(&mut chip, 1);
        api_copies(places.chan(), s, d, size, 1);
        let (mut raw_v, mut lsi_v) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate which side goes first, so neither always inherits
            // the other's cache state.
            if round % 2 == 0 {
                raw_v.push(gbps(size * n, raw.run(&mut chip, n)));
            }
            let lsi = places.for_round(round);
            lsi_v.push(gbps(size * n, api_copies(lsi, s, d, size, n)));
            if round % 2 == 1 {
                raw_v.push(gbps(size * n, raw.run(&mut chip, n)));
            }
        }
        // The best of the rounds on each side: the emulator's limit, which
        // host noise can only lower (a median of large copies wandered by
        // 10% between runs).
        let (raw_m, lsi_m) = (best(raw_v), best(lsi_v));
        report(&format!("dma.copy.raw.{label}.gbps"), raw_m, "GB/s");
        report(&format!("dma.copy.lsi.{label}.gbps"), lsi_m, "GB/s");
        report(
            &format!("dma.copy.lsi_vs_raw.{label}.ratio"),
            lsi_m / raw_m,
            "x",
        );
    }
    for &(label, size) in &SIZES {
        let n = (repetitions(size) / ROUNDS).clamp(1, 8);
        let cpu_v = (0..3)
            .map(|_| gbps(size * n, api_copies(&mut cpu, s, d + UNALIASED, size, n)))
            .collect();
        report(&format!("dma.copy.cpu.{label}.gbps"), median(cpu_v), "GB/s");
    }
    for &batch in &BATCHES {
        raw.build(small_moves(batch, s, d));
        let ops = small_ops(batch, s, d);
        let n = (16384 / batch / ROUNDS).max(1);
        let side = side_by_side(&mut places, &ops, n, |n| raw.run(&mut chip, n));
        report(
            &format!("dma.small.raw.batch{batch}.copies_per_s"),
            side.bare,
            "copies/s",
        );
        report(
            &format!("dma.small.lsi.batch{batch}.copies_per_s"),
            side.lsi,
            "copies/s",
        );
        report(
            &format!("dma.small.lsi_vs_raw.batch{batch}.ratio"),
            side.lsi / side.bare,
            "x",
        );
        report(
            &format!("dma.lsi.mmio_reads_per_issue.batch{batch}"),
            side.reads_per_issue,
            "count",
        );
        report(
            &format!("dma.lsi.mmio_writes_per_issue.batch{batch}"),
            side.mmio_per_issue - side.reads_per_issue,
            "count",
        );
        report(
            &format!("dma.lsi.mmio_per_desc.batch{batch}"),
            side.prep_mmio_per_issue / batch as f64,
            "count",
        );
    }
    for &batch in &SIGP_BATCHES {
        sigp.build(&mut chip, small_moves(batch, s, d));
        let ops = small_ops(batch, s, d);
        let n = (16384 / batch / ROUNDS).max(1);
        let side = side_by_side(&mut places, &ops, n, |n| sigp.run(&mut chip, n));
        sigp.check(&mut chip);
        report(
            &format!("dma.small.sigp_raw.batch{batch}.copies_per_s"),
            side.bare,
            "copies/s",
        );
        report(
            &format!("dma.small.lsi_vs_sigp_raw.batch{batch}.ratio"),
            side.lsi / side.bare,
            "x",
        );
    }
    copy_break(places.chan(), s, d, copy_break_policy);
    // The API channel's own register page: the first chip's (the direct
    // map gives a BAR one address, so this window is the channel's page).
    if let Some(regs) = LSI
        .device()
        .and_then(|dev| devices::map_bar(dev, regs::MMIO_BAR))
    {
        tlb_alias(&mut places, tlb_slot(regs.base().as_ptr() as usize), s, d);
    }
}

/// What a channel sharing the register page's TLB slot costs (see
/// [`TLB_SLOTS`]): 64-byte requests one at a time with the channel there,
/// against its own place, in alternating rounds.
fn tlb_alias(places: &mut Places, register_slot: usize, s: u64, d: u64) {
    let ops = [Op::Copy {
        dst: d,
        src: s,
        len: SMALL,
    }];
    let n = 16384 / ROUNDS;
    let (mut apart, mut sharing) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for takes in [round % 2 == 1, round % 2 == 0] {
            if !places.move_where(register_slot, takes) {
                println!("TLB alias benchmark skipped: no place for the channel");
                return;
            }
            let chan = places.chan();
            let cycles = (0..n).map(|_| api_batch(chan, &ops).cycles).sum();
            let rate = per_second(n, cycles);
            if takes {
                sharing.push(rate);
            } else {
                apart.push(rate);
            }
        }
    }
    report(
        "dma.small.lsi.tlb_alias.batch1.ratio",
        median(apart) / median(sharing),
        "x",
    );
}

/// The measured copy-break, and a mixed workload (mostly small copies,
/// some large) timed engine-only and with the copy-break, in one run.
fn copy_break(lsi: &mut LsiChannel, s: u64, d: u64, policy: Option<CopyBreak>) {
    use dmaengine::engine::copybreak::Routed;
    let Some(policy) = policy else {
        println!("copy-break benchmark skipped: not measured");
        return;
    };
    report("dma.copybreak.bytes", policy.threshold() as f64, "bytes");
    let mut cpu = cpu_channel();
    // Three in four copies of 64 B-2 KiB, one in four of 16-256 KiB.
    let mut rng = crate::rng::Rng::new(0xc0b7);
    let sizes: Vec<usize> = (0..400)
        .map(|i| {
            if i % 4 == 3 {
                16384 << rng.below(5)
            } else {
                64 << rng.below(6)
            }
        })
        .collect();
    let d = d + UNALIASED;
    let mut run = |policy: CopyBreak| {
        let start = time::rdtsc();
        for &len in &sizes {
            // SAFETY: both buffers are ours for the whole benchmark and only
            // the engines touch them.
            let routed = unsafe { policy.copy(&mut cpu, &mut *lsi, d, s, len, PrepFlags::empty()) }
                .expect("prep");
            match routed {
                Routed::Cpu(c) => spin(&mut cpu, c),
                Routed::Engine(c) => spin(&mut *lsi, c),
            }
        }
        time::rdtsc() - start
    };
    let (mut engine_only, mut mixed) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            engine_only.push(run(CopyBreak::new(0)) as f64);
        }
        mixed.push(run(policy) as f64);
        if round % 2 == 1 {
            engine_only.push(run(CopyBreak::new(0)) as f64);
        }
    }
    let (engine_only, mixed) = (median(engine_only), median(mixed));
    report(
        "dma.copybreak.mixed_us",
        time::cycles_to_ns(mixed as u64) as f64 / 1000.0,
        "us",
    );
    report(
        "dma.copybreak.engine_only_us",
        time::cycles_to_ns(engine_only as u64) as f64 / 1000.0,
        "us",
    );
    report(
        "dma.copybreak.mixed_vs_engine_only.ratio",
        mixed / engine_only,
        "x",
    );
}

/// Slot boundaries (moves per slot) of the fixed-slot experiment.
const SLOT_KS: [usize; 3] = [1, 16, 64];
/// Batch sizes of the fixed-slot experiment.
const SLOT_BATCHES: [usize; 3] = [16, 256, 4096];

/// Fixed-slot ring cost: a DSP-started chain of 64-byte Memory Moves with a
/// STORE DSP + JUMP after every K moves, against the plain [`RawScript`]
/// chain of the same moves, in alternating rounds on the second chip.
pub fn slots() {
    let len = SMALL * SLOT_BATCHES[2];
    let (Ok(mut src), Ok(mut dst)) = (Dma::<KernelHal>::new(len), Dma::<KernelHal>::new(len))
    else {
        println!("slots benchmark skipped: no DMA memory");
        return;
    };
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] | 1;
    }
    let (s, d) = (src.paddr(), dst.paddr());
    let (mut chip, mut raw, mut slot) = match (
        BareChip::take(),
        RawScript::new(SLOT_BATCHES[2]),
        SlotScript::new(SLOT_BATCHES[2]),
    ) {
        (Some(chip), Some(raw), Some(slot)) => (chip, raw, slot),
        _ => {
            println!("slots benchmark skipped: no second LSI53C895A");
            return;
        }
    };
    // Zeroes the batch's destination, runs `f` once, checks it copied.
    let mut verify = |what: &str, batch: usize, f: &mut dyn FnMut()| {
        let bytes = SMALL * batch;
        dst.as_mut_slice()[..bytes].fill(0);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        f();
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        assert!(
            dst.as_slice()[..bytes] == src.as_slice()[..bytes],
            "slots: {what} batch {batch}: destination differs from source"
        );
    };
    for &batch in &SLOT_BATCHES {
        raw.build(small_moves(batch, s, d));
        verify("plain", batch, &mut || {
            raw.run(&mut chip, 1);
        });
        let n = (16384 / batch / ROUNDS).max(2);
        for &k in &SLOT_KS {
            slot.build(k, small_moves(batch, s, d));
            slot.clear_done();
            verify("slot", batch, &mut || {
                slot.run(&mut chip, 1);
            });
            let (word, lo, hi) = slot.done_word();
            assert!(
                (lo..hi).contains(&word),
                "slots: k{k} batch {batch}: completion word {word:#x} not in the chain {lo:#x}..{hi:#x}"
            );
            println!(
                "slots: k{k} batch {batch}: verified, completion word {word:#x} (chain {lo:#x}..{hi:#x})"
            );
            raw.run(&mut chip, 1);
            let (mut plain_v, mut slot_v) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                if round % 2 == 0 {
                    plain_v.push(per_second(batch * n, raw.run(&mut chip, n)));
                }
                slot_v.push(per_second(batch * n, slot.run(&mut chip, n)));
                if round % 2 == 1 {
                    plain_v.push(per_second(batch * n, raw.run(&mut chip, n)));
                }
            }
            let (plain_m, slot_m) = (median(plain_v), median(slot_v));
            report(
                &format!("slots.batch{batch}.k{k}.plain.copies_per_s"),
                plain_m,
                "copies/s",
            );
            report(
                &format!("slots.batch{batch}.k{k}.slot.copies_per_s"),
                slot_m,
                "copies/s",
            );
            report(
                &format!("slots.batch{batch}.k{k}.ratio"),
                slot_m / plain_m,
                "x",
            );
        }
    }
}
