//! The ring driven against the fake chip: appending to a running chain,
//! wrapping, failures, with QEMU's slice timing, checked against a model.

use proptest::prelude::*;

use super::Lsi53c895a;
use super::fake::FakeLsi;
use crate::engine::{
    Channel, Cookie, DmaError, Engine, ErrorKind, FAILURE_HISTORY, Notify, Op, PrepFlags, Status,
};
use crate::hal::fake::FakeHal32;
use crate::hal::{Dma, Hal};
use crate::mmio::Registers;

type Chan = Channel<Lsi53c895a<FakeHal32, FakeLsi>>;

/// 64 cells of 64 bytes: each request copies one cell onto another, so the
/// result depends on the order the chip ran them in.
const CELLS: usize = 64;
const CELL: usize = 64;

/// An engine over a fake chip.
fn fake_engine() -> Lsi53c895a<FakeHal32, FakeLsi> {
    // SAFETY: a fake chip, which moves only the test's own memory.
    unsafe { Lsi53c895a::new(FakeLsi::new()) }.unwrap()
}

fn chan() -> Chan {
    // SAFETY: a fake chip, which moves only the test's own memory.
    Channel::new(unsafe { Lsi53c895a::new(FakeLsi::new()) }.expect("engine over the fake chip"))
}

fn cells() -> (Dma<FakeHal32>, Vec<u8>) {
    let mut mem = Dma::<FakeHal32>::new(CELLS * CELL).unwrap();
    for (i, b) in mem.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 7 + i / CELL) as u8;
    }
    let model = mem.as_slice().to_vec();
    (mem, model)
}

fn read_cells(mem: &Dma<FakeHal32>) -> Vec<u8> {
    let ptr = FakeHal32::phys_to_virt(mem.paddr()).as_ptr();
    // SAFETY: the buffer's memory, read after the chip has stopped.
    unsafe { core::slice::from_raw_parts(ptr, CELLS * CELL).to_vec() }
}

/// Ticks the chip until `cookie` ends (at most `limit` ticks).
fn drive(chan: &mut Chan, cookie: Cookie, limit: usize) -> Status {
    for _ in 0..limit {
        let status = chan.status(cookie).status;
        if status != Status::InProgress {
            return status;
        }
        chan.engine().device().tick();
    }
    chan.status(cookie).status
}

#[derive(Clone, Debug)]
enum Action {
    Copy {
        from: usize,
        to: usize,
        len: usize,
    },
    /// Several requests in one `prep_batch`: copies, and fills where a
    /// pattern is given (a run of copies broken by a fill leaves the
    /// driver's one-pass path part of the way through).
    Batch(Vec<(usize, usize, usize, Option<u64>)>),
    /// An interrupt-only request (`Op::Interrupt` with `INTERRUPT`).
    Interrupt,
    Issue,
    Tick(usize),
    Poll,
    Inject,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..CELLS, 0..CELLS, 1..=CELL).prop_map(|(from, to, len)| Action::Copy { from, to: if to == from { (to + 1) % CELLS } else { to }, len }),
        3 => prop::collection::vec((0..CELLS, 0..CELLS, 1..=CELL, prop::option::weighted(0.2, any::<u64>())), 1..40).prop_map(|ops| Action::Batch(
            ops.into_iter().map(|(from, to, len, fill)| (from, if to == from { (to + 1) % CELLS } else { to }, len, fill)).collect()
        )),
        1 => Just(Action::Interrupt),
        2 => Just(Action::Issue),
        2 => (1..4usize).prop_map(Action::Tick),
        1 => Just(Action::Poll),
        1 => Just(Action::Inject),
    ]
}

struct Request {
    cookie: Cookie,
    from: usize,
    to: usize,
    len: usize,
    /// A fill of `to` with this pattern instead of a copy from `from`.
    fill: Option<u64>,
    epoch: usize,
    injected: bool,
}

/// Before a request: a halted channel is reset (a new epoch), and an
/// injected fault armed if the model asked for one.
fn prepare(chan: &mut Chan, epoch: &mut usize, inject: bool) {
    if chan.is_halted() {
        chan.reset().unwrap();
        *epoch += 1;
    }
    if inject {
        chan.test_engine().inject_illegal_instruction();
    }
}

/// Backpressure: a full ring is issued and given time, then `prep` is
/// tried again, as a caller would (up to 1000 times).
fn with_room<T>(
    chan: &mut Chan,
    mut prep: impl FnMut(&mut Chan) -> Result<T, DmaError>,
) -> Result<T, DmaError> {
    let mut tries = 0;
    loop {
        match prep(chan) {
            Err(DmaError::RingFull) if tries < 1000 => {
                tries += 1;
                chan.issue_pending();
                chan.engine().device().tick();
                chan.poll();
            }
            other => return other,
        }
    }
}

/// Runs `actions`, then drains; checks every cookie's end and the memory
/// against a model that applies the completed requests in order.
fn run(actions: &[Action]) -> Result<(), TestCaseError> {
    let mut chan = chan();
    let (mem, mut model) = cells();
    let base = mem.paddr();
    let mut requests: Vec<Request> = Vec::new();
    let (mut epoch, mut inject_next) = (0, false);
    for action in actions {
        match *action {
            Action::Copy { from, to, len } => {
                prepare(&mut chan, &mut epoch, inject_next);
                let (dst, src) = (base + (to * CELL) as u64, base + (from * CELL) as u64);
                // SAFETY: cells of our buffer, read only after the chip stops.
                let prepped = with_room(&mut chan, |chan| unsafe {
                    chan.prep_copy(dst, src, len, PrepFlags::empty())
                });
                let cookie = prepped.map_err(|e| TestCaseError::fail(format!("prep: {e}")))?;
                requests.push(Request {
                    cookie,
                    from,
                    to,
                    len,
                    fill: None,
                    epoch,
                    injected: inject_next,
                });
                inject_next = false;
            }
            Action::Batch(ref items) => {
                prepare(&mut chan, &mut epoch, inject_next);
                let ops: Vec<Op> = items
                    .iter()
                    .map(|&(from, to, len, fill)| {
                        let dst = base + (to * CELL) as u64;
                        match fill {
                            Some(pattern) => Op::Fill { dst, len, pattern },
                            None => Op::Copy {
                                dst,
                                src: base + (from * CELL) as u64,
                                len,
                            },
                        }
                    })
                    .collect();
                // SAFETY: cells of our buffer, read only after the chip stops.
                let prepped = with_room(&mut chan, |chan| unsafe {
                    chan.prep_batch(&ops, PrepFlags::empty())
                });
                let batch = prepped.map_err(|e| TestCaseError::fail(format!("prep_batch: {e}")))?;
                prop_assert_eq!(batch.len, items.len());
                let mut cookie = batch.first;
                for (k, &(from, to, len, fill)) in items.iter().enumerate() {
                    requests.push(Request {
                        cookie,
                        from,
                        to,
                        len,
                        fill,
                        epoch,
                        injected: inject_next && k == 0,
                    });
                    cookie = cookie.next();
                }
                prop_assert_eq!(requests.last().map(|r| r.cookie), Some(batch.last));
                inject_next = false;
            }
            Action::Interrupt => {
                prepare(&mut chan, &mut epoch, inject_next);
                // SAFETY: an interrupt-only request touches no memory.
                let prepped = with_room(&mut chan, |chan| unsafe {
                    chan.prep(Op::Interrupt, PrepFlags::INTERRUPT, None)
                });
                let cookie = prepped.map_err(|e| TestCaseError::fail(format!("prep: {e}")))?;
                // Moves nothing: the model copies zero bytes for it.
                requests.push(Request {
                    cookie,
                    from: 0,
                    to: 0,
                    len: 0,
                    fill: None,
                    epoch,
                    injected: inject_next,
                });
                inject_next = false;
            }
            Action::Issue => {
                let chip = chan.engine().device();
                let (accesses, reads) = (chip.accesses(), chip.reads());
                chan.issue_pending();
                let chip = chan.engine().device();
                prop_assert!(
                    chip.accesses() - accesses <= 1 && chip.reads() == reads,
                    "an issue made {} register accesses, {} of them reads",
                    chip.accesses() - accesses,
                    chip.reads() - reads
                );
            }
            Action::Tick(n) => (0..n).for_each(|_| chan.engine().device().tick()),
            Action::Poll => chan.poll(),
            Action::Inject => inject_next = true,
        }
    }
    chan.issue_pending();
    prop_assert_eq!(
        chan.engine().device().host_ctest2_reads(),
        0,
        "the driver read CTEST2, which eats the doorbell"
    );
    for r in &requests {
        let status = drive(&mut chan, r.cookie, 10_000);
        prop_assert_ne!(
            status,
            Status::InProgress,
            "cookie {:?} never ended",
            r.cookie
        );
    }
    // Per epoch: complete ones first, then the injected failure, then
    // aborts. Only the last FAILURE_HISTORY failures are remembered.
    let oldest = epoch.saturating_sub(FAILURE_HISTORY - 1);
    for e in oldest..=epoch {
        let fates: Vec<(Status, bool)> = requests
            .iter()
            .filter(|r| r.epoch == e)
            .map(|r| (chan.status(r.cookie).status, r.injected))
            .collect();
        let done = fates
            .iter()
            .take_while(|(s, _)| *s == Status::Complete)
            .count();
        if let Some(&(first_bad, injected)) = fates.get(done) {
            prop_assert!(
                injected,
                "epoch {}: a request failed without an injected fault: {:?}",
                e,
                first_bad
            );
            prop_assert_eq!(first_bad, Status::Error(ErrorKind::InvalidDescriptor));
            for (s, _) in &fates[done + 1..] {
                prop_assert_eq!(*s, Status::Error(ErrorKind::Aborted));
            }
        }
        prop_assert!(
            fates[..done].iter().all(|(_, injected)| !injected),
            "an injected request completed"
        );
    }
    // The memory model needs every request's fate; past FAILURE_HISTORY
    // failures the oldest are no longer known.
    if oldest > 0 {
        return Ok(());
    }
    for r in &requests {
        if chan.status(r.cookie).status != Status::Complete {
            continue;
        }
        let chunk: Vec<u8> = match r.fill {
            Some(pattern) => (0..r.len).map(|i| pattern.to_le_bytes()[i % 8]).collect(),
            None => model[r.from * CELL..r.from * CELL + r.len].to_vec(),
        };
        model[r.to * CELL..r.to * CELL + r.len].copy_from_slice(&chunk);
    }
    let got = read_cells(&mem);
    let first = (0..got.len()).find(|&i| got[i] != model[i]);
    prop_assert!(
        first.is_none(),
        "memory differs from the in-order model first at byte {:?} (cell {:?})",
        first,
        first.map(|i| i / CELL)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { ProptestConfig::default().cases } else { 128 }, ..ProptestConfig::default() })]

    #[test]
    fn random_batches_ticks_and_faults_agree_with_the_model(actions in prop::collection::vec(action(), 1..300)) {
        run(&actions)?;
    }
}

#[test]
fn long_runs_wrap_the_ring_many_times() {
    // Deterministic pseudo-random batches: 12000 dependent copies, appended
    // while the chip is paused between slices, wrap the 16 Ki-word ring.
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut actions = Vec::new();
    for _ in 0..120 {
        for _ in 0..100 {
            let (from, to) = (next(CELLS), next(CELLS));
            if from != to {
                actions.push(Action::Copy {
                    from,
                    to,
                    len: 1 + next(CELL),
                });
            }
        }
        actions.push(Action::Issue);
        actions.push(Action::Tick(next(3)));
    }
    run(&actions).unwrap();
}

/// One step of the interleaving below.
#[derive(Clone, Debug)]
enum Step {
    /// Prepares this many 4-byte copies as one batch, the last asking for
    /// an interrupt (an INTFLY) when the flag is set.
    Prep(usize, bool),
    /// The first half of `issue`: the batch is linked behind the tail.
    Link,
    /// The second half: the doorbell.
    Ring,
    /// QEMU's resume timer fires: the chip runs its next slice.
    Tick,
    /// The chip's slice changes (1 pauses it after every instruction,
    /// so between the tail's clear and its WAIT too; 100 is QEMU 7.2's,
    /// 500 QEMU 10.0's).
    Slice(usize),
    /// An interrupt is handled (it acknowledges INTF when it is set).
    Ack,
    /// The engine collects what the completion word says is done.
    Poll,
    /// `terminate` then `reset`: whatever had not run never runs, and a
    /// new loop starts.
    Reset,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1..6usize, any::<bool>()).prop_map(|(n, irq)| Step::Prep(n, irq)),
        2 => Just(Step::Link),
        2 => Just(Step::Ring),
        4 => Just(Step::Tick),
        1 => prop::sample::select(vec![1usize, 2, 3, 5, 100, 500]).prop_map(Step::Slice),
        2 => Just(Step::Ack),
        1 => Just(Step::Poll),
        1 => Just(Step::Reset),
    ]
}

/// Runs `steps` against the engine and the fake chip, with `issue` split
/// into its two halves so the chip can run between them. Each copy writes
/// its own 4 bytes, so the chip's log of Memory Moves says which copies
/// ran and in what order. After every step that log must be a prefix of
/// the copies linked so far, in order: nothing runs before `issue` linked
/// it, nothing runs twice. At the end, once the last link has been rung,
/// the timer alone (no further doorbell) must run every linked copy and
/// the completion must reach the last one: no batch is lost.
fn interleave(slice: usize, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut engine = fake_engine();
    engine.device().set_slice(slice);
    let src = Dma::<FakeHal32>::new(4).unwrap();
    let dst = Dma::<FakeHal32>::new(4 * 4096).unwrap();
    let (mut linked, mut prepared, mut ran) = (Vec::new(), Vec::new(), Vec::new());
    let mut cookie = Cookie::new(1).unwrap();
    let mut last_linked = None;
    let mut newest_done = None;
    let mut rung = true;
    let record = |engine: &Lsi53c895a<FakeHal32, FakeLsi>,
                  ran: &mut Vec<u32>,
                  linked: &[u32]|
     -> Result<(), TestCaseError> {
        ran.extend(engine.device().take_moves().into_iter().map(|(_, _, d)| d));
        prop_assert!(
            ran.len() <= linked.len() && ran[..] == linked[..ran.len()],
            "the chip ran {:x?}, but only {:x?} were linked, in that order",
            ran,
            linked
        );
        Ok(())
    };
    for step in steps {
        match *step {
            Step::Prep(n, irq) => {
                for k in 0..n {
                    let to = dst.paddr() as u32 + 4 * (linked.len() + prepared.len()) as u32;
                    let op = Op::Copy {
                        dst: to as u64,
                        src: src.paddr(),
                        len: 4,
                    };
                    let notify = Notify {
                        writeback: false,
                        interrupt: irq && k == n - 1,
                    };
                    // SAFETY: both sides are the test's buffers, which
                    // outlive the engine's use (it is dropped first).
                    unsafe { engine.prep(cookie, op, Some(notify)) }
                        .map_err(|e| TestCaseError::fail(format!("prep: {e:?}")))?;
                    prepared.push(to);
                    cookie = cookie.next();
                }
            }
            Step::Link => {
                if engine.link() {
                    linked.append(&mut prepared);
                    last_linked = Some(cookie);
                    rung = false;
                }
            }
            Step::Ring => {
                engine.ring_doorbell();
                rung = true;
            }
            Step::Tick => engine.device().tick(),
            Step::Slice(n) => engine.device().set_slice(n),
            Step::Ack => {
                engine.handle_interrupt();
            }
            Step::Poll => {
                if let Some(done) = engine.poll(false).completed {
                    newest_done = Some(done);
                }
            }
            Step::Reset => {
                engine.terminate();
                record(&engine, &mut ran, &linked)?;
                engine.reset().unwrap();
                // What had not run is gone; completions count afresh.
                linked.truncate(ran.len());
                prepared.clear();
                (last_linked, newest_done, rung) = (None, None, true);
            }
        }
        record(&engine, &mut ran, &linked)?;
    }
    if !rung {
        engine.ring_doorbell();
        record(&engine, &mut ran, &linked)?;
    }
    for _ in 0..100_000 {
        if ran.len() == linked.len() && engine.device().parked() {
            break;
        }
        engine.device().tick();
        record(&engine, &mut ran, &linked)?;
    }
    prop_assert_eq!(ran.len(), linked.len(), "linked and rung batches never ran");
    prop_assert!(engine.device().parked(), "the loop did not park again");
    if let Some(done) = engine.poll(true).completed {
        newest_done = Some(done);
    }
    // The cookie after the last linked batch's last copy was the next one
    // to hand out when it was linked.
    let last = last_linked.map(|next: Cookie| Cookie::new(next.get() - 1).unwrap());
    prop_assert_eq!(newest_done, last, "the completion word stopped short");
    prop_assert_eq!(engine.device().host_ctest2_reads(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { ProptestConfig::default().cases } else { 512 }, ..ProptestConfig::default() })]

    #[test]
    fn appends_interleaved_with_the_chip_at_every_point_run_once_in_order(
        slice in prop::sample::select(vec![1usize, 2, 3, 4, 5, 7, 100, 500]),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        interleave(slice, &steps)?;
    }
}

/// The acknowledge must keep a doorbell rung since the processor last
/// parked: with the chip paused between a tail's clear and its WAIT, a
/// batch linked and rung there, then an interrupt acknowledged with INTF
/// alone, the WAIT would park with the batch never run.
#[test]
fn an_interrupt_acknowledge_keeps_a_pending_doorbell() {
    let mut seen = false;
    // Every slice length: one of them pauses the chip right after the
    // clear of the tail behind an interrupting batch.
    for slice in 1..12 {
        let mut engine = fake_engine();
        let src = Dma::<FakeHal32>::new(4).unwrap();
        let dst = Dma::<FakeHal32>::new(8).unwrap();
        let notify = |interrupt| Notify {
            writeback: false,
            interrupt,
        };
        let copy = |at: u64| Op::Copy {
            dst: at,
            src: src.paddr(),
            len: 4,
        };
        let first = Cookie::new(1).unwrap();
        // SAFETY: the test's buffers, which outlive the engine's use.
        unsafe { engine.prep(first, copy(dst.paddr()), Some(notify(true))) }.unwrap();
        engine.device().set_slice(slice);
        engine.issue();
        let tail = engine.ring.tail_addr();
        if !(engine.device().paused() && engine.device().dsp() == tail + 8) {
            continue;
        }
        seen = true;
        // SAFETY: as above.
        unsafe { engine.prep(first.next(), copy(dst.paddr() + 4), Some(notify(false))) }.unwrap();
        engine.issue();
        assert!(engine.device().doorbell_pending());
        assert!(engine.handle_interrupt(), "the INTFLY's interrupt");
        for _ in 0..100 {
            engine.device().tick();
        }
        assert_eq!(
            engine.poll(true).completed,
            Some(first.next()),
            "slice {slice}: the batch rung before the acknowledge never ran"
        );
    }
    assert!(
        seen,
        "no slice paused the chip between the clear and the WAIT"
    );
}

/// Review finding 3: a request of no instructions (`Op::Interrupt` with
/// no flag) claimed no words, so nothing checked the reserve `issue` needs
/// for its write-back and tail; with the ring full, `issue` could not link
/// it and it was left behind, never to run.
#[test]
fn a_request_without_instructions_still_gets_linked() {
    let mut engine = fake_engine();
    // The chip stays stopped, so nothing retires and the ring fills.
    engine.set_manual_start(true);
    let src = Dma::<FakeHal32>::new(4).unwrap();
    let dst = Dma::<FakeHal32>::new(4).unwrap();
    let copy = Op::Copy {
        dst: dst.paddr(),
        src: src.paddr(),
        len: 4,
    };
    let mut cookie = Cookie::new(1).unwrap();
    // SAFETY: the test's buffers, and the chip never runs.
    while unsafe { engine.prep(cookie, copy, Some(Notify::default())) }.is_ok() {
        engine.issue();
        cookie = cookie.next();
    }
    for _ in 0..64 {
        // SAFETY: an interrupt-only request touches no memory.
        if unsafe { engine.prep(cookie, Op::Interrupt, Some(Notify::default())) }.is_err() {
            break;
        }
        engine.issue();
        assert_eq!(engine.ring.unlinked(), 0, "a request was left unlinked");
        cookie = cookie.next();
    }
}

/// Review finding 4: a doorbell window too short for ISTAT panicked only
/// at the first `issue`, after the batch was linked; it is refused when
/// given.
#[test]
#[should_panic(expected = "doorbell window")]
fn a_doorbell_window_without_istat_is_refused_when_given() {
    let mut engine = fake_engine();
    // SAFETY: refused before any port is touched.
    unsafe { engine.set_doorbell(crate::mmio::PortRegion::new(0xc000, 0x10)) };
}

/// A prepared batch does not run until `issue`, even when the chip wakes
/// for another reason (a doorbell rung by an interrupt acknowledge).
#[test]
fn a_prepared_batch_waits_for_issue() {
    let mut chan = chan();
    let (mem, _) = cells();
    // SAFETY: cells of our buffer, which outlives the channel's use.
    let cookie = unsafe {
        chan.prep_copy(
            mem.paddr(),
            mem.paddr() + CELL as u64,
            8,
            PrepFlags::empty(),
        )
    }
    .unwrap();
    chan.engine()
        .device()
        .write(super::regs::ISTAT, super::regs::Istat::SIGP.bits());
    for _ in 0..10 {
        chan.engine().device().tick();
    }
    assert!(
        chan.engine().device().take_moves().is_empty(),
        "ran before issue"
    );
    assert!(chan.engine().device().parked());
    chan.issue_pending();
    assert_eq!(drive(&mut chan, cookie, 10), Status::Complete);
    assert_eq!(chan.engine().device().take_moves().len(), 1);
}

/// Issue 17, bug 1: `terminate` aborted the chip (DSTAT.ABRT, which DIEN
/// enables, raises the line), then soft-reset it, which clears ISTAT and
/// DSTAT without lowering the line; ISTAT then read 0, so
/// `handle_interrupt` said "not mine" and the level interrupt fired
/// forever. The line must be low after `terminate`, with a copy in flight
/// or none, and after `reset`.
#[test]
fn terminate_and_reset_leave_the_interrupt_line_low() {
    let mut chan = chan();
    let (mem, _) = cells();
    let (dst, src) = (mem.paddr(), mem.paddr() + CELL as u64);
    // 150 copies outlast one slice: the chip is paused mid-chain.
    for _ in 0..150 {
        // SAFETY: both sides are in `mem`, which outlives the channel's use
        // of it (terminated below, before `mem` is dropped).
        unsafe { chan.prep_copy(dst, src, 8, PrepFlags::empty()) }.unwrap();
    }
    chan.issue_pending();
    assert!(chan.engine().device().paused(), "stopped mid-chain");
    chan.terminate();
    assert!(
        !chan.engine().device().irq_line(),
        "line low after terminate"
    );
    assert!(!chan.handle_interrupt(), "nothing left to claim");
    chan.reset().unwrap();
    assert!(!chan.engine().device().irq_line(), "line low after reset");
    chan.terminate();
    assert!(
        !chan.engine().device().irq_line(),
        "line low after an idle terminate"
    );
}

/// A copy at the edges of what the chip takes: sides at the ends of its
/// 32-bit addresses, past them, or close together (overlapping or just
/// not); lengths at the ends of a Memory Move's 24-bit count.
fn edge_copy() -> impl Strategy<Value = (u64, u64, usize)> {
    let max = super::script::MAX_MOVE as u64;
    let side = prop_oneof![
        Just(0u64),
        Just(0xffff_ffff),
        Just(0x1_0000_0000),
        Just(u64::MAX),
        (0..2 * max).prop_map(|k| 0xffff_ffff - k),
        any::<u64>(),
        0x10_0000..0x20_0000u64,
    ];
    let len = prop_oneof![
        Just(0u64),
        Just(1),
        Just(max),
        Just(max + 1),
        Just(u64::MAX),
        1..200u64,
    ];
    (side.clone(), side, len, -100i64..100, any::<bool>()).prop_map(|(d, s, len, delta, close)| {
        let s = if close {
            d.wrapping_add_signed(delta)
        } else {
            s
        };
        (d, s, len as usize)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { ProptestConfig::default().cases } else { 1000 }, ..ProptestConfig::default() })]

    /// The driver checks a batch of copies as it writes it
    /// (`Engine::prep_copies`): a hostile copy anywhere in a batch of good
    /// ones gets the error it gets alone, and a refused batch leaves no
    /// trace: the next request takes the next cookie and the chip runs only
    /// it. Memory is the fake Hal's, which the engine only points at (the
    /// chip runs nothing of a refused batch, and a hostile copy that is
    /// accepted is never issued).
    #[test]
    fn a_hostile_copy_in_a_batch_is_refused_as_alone_and_leaves_no_trace(
        (d, s, len) in edge_copy(),
        before in 0..20usize,
        after in 0..20usize,
    ) {
        let src = Dma::<FakeHal32>::new(64).unwrap();
        let dst = Dma::<FakeHal32>::new(64 * 41).unwrap();
        let good = |k: usize| Op::Copy { dst: dst.paddr() + 64 * k as u64, src: src.paddr(), len: 64 };
        let hostile = Op::Copy { dst: d, src: s, len };
        let mut ops: Vec<Op> = (0..before).map(good).collect();
        ops.push(hostile);
        ops.extend((before..before + after).map(good));
        // SAFETY: never issued (the alone case), and its channel dropped
        // without issuing: nothing runs.
        let alone = unsafe { chan().prep(hostile, PrepFlags::empty(), None) }.map(|_| ());
        let mut chan = chan();
        let mark = chan.engine().mark();
        // SAFETY: the good copies are the test's buffers; the hostile one is
        // refused, or accepted and then never issued (the channel is
        // dropped unissued when the batch is accepted).
        let batch = unsafe { chan.prep_batch(&ops, PrepFlags::empty()) };
        prop_assert_eq!(batch.map(|_| ()), alone);
        if batch.is_ok() {
            return Ok(());
        }
        prop_assert_eq!(format!("{:?}", chan.engine().mark()), format!("{mark:?}"));
        // SAFETY: the test's buffers.
        let next = unsafe { chan.prep_copy(dst.paddr() + 64 * 40, src.paddr(), 64, PrepFlags::empty()) }.unwrap();
        prop_assert_eq!(next, Cookie::FIRST);
        chan.issue_pending();
        prop_assert_eq!(drive(&mut chan, next, 100), Status::Complete);
        let moves = chan.engine().device().take_moves();
        prop_assert_eq!(moves.len(), 1, "the chip ran only the request after the refusal");
    }
}

/// A batch of good copies longer than the ring holds is refused whole
/// (`RingFull`): nothing claimed, no cookie consumed, the channel still
/// takes and runs the next request.
#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of copies: minutes under Miri; the ring's unsafe core runs there in its own tests"
)]
fn a_batch_longer_than_the_ring_is_refused_whole() {
    let src = Dma::<FakeHal32>::new(64).unwrap();
    let dst = Dma::<FakeHal32>::new(64 * 2).unwrap();
    let n = (super::ring::RING_WORDS / super::script::MOVE_WORDS) as usize + 8;
    let ops: Vec<Op> = (0..n)
        .map(|_| Op::Copy {
            dst: dst.paddr(),
            src: src.paddr(),
            len: 64,
        })
        .collect();
    let mut chan = chan();
    let mark = format!("{:?}", chan.engine().mark());
    // SAFETY: the test's buffers; refused, so never issued.
    let batch = unsafe { chan.prep_batch(&ops, PrepFlags::empty()) };
    assert_eq!(batch.map(|_| ()), Err(DmaError::RingFull));
    assert_eq!(format!("{:?}", chan.engine().mark()), mark);
    // SAFETY: the test's buffers.
    let next =
        unsafe { chan.prep_copy(dst.paddr() + 64, src.paddr(), 64, PrepFlags::empty()) }.unwrap();
    assert_eq!(next, Cookie::FIRST);
    chan.issue_pending();
    assert_eq!(drive(&mut chan, next, 100), Status::Complete);
    assert_eq!(chan.engine().device().take_moves().len(), 1);
}

/// Single copies prepared until the ring is full: the refused one (which
/// `prep_one` prepares without a mark) leaves the ring as it was, consumes
/// no cookie, and the chip runs exactly the copies prepared before it.
#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of copies: minutes under Miri; the ring's unsafe core runs there in its own tests"
)]
fn a_single_copy_refused_for_room_leaves_the_ring_as_it_was() {
    let src = Dma::<FakeHal32>::new(64).unwrap();
    let dst = Dma::<FakeHal32>::new(64 * 2).unwrap();
    let mut chan = chan();
    let mut prepared = 0;
    let refused = loop {
        let mark = format!("{:?}", chan.engine().mark());
        let snapshot = chan.snapshot();
        // SAFETY: the test's buffers, touched by nothing else.
        match unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 64, PrepFlags::empty()) } {
            Ok(_) => prepared += 1,
            Err(e) => break (e, mark, snapshot),
        }
    };
    let (error, mark, snapshot) = refused;
    assert_eq!(error, DmaError::RingFull);
    assert_eq!(format!("{:?}", chan.engine().mark()), mark);
    assert_eq!(chan.snapshot(), snapshot);
    assert!(prepared > 1000, "the ring held {prepared} copies");
    let last = Cookie::new(snapshot.last_used).unwrap();
    chan.issue_pending();
    assert_eq!(drive(&mut chan, last, 100), Status::Complete);
    assert_eq!(chan.engine().device().take_moves().len(), prepared);
}

/// A batch across the cookies' wrap takes the general path and every
/// request completes under its own cookie.
#[test]
fn a_batch_across_the_cookie_wrap_completes_under_its_cookies() {
    let src = Dma::<FakeHal32>::new(64).unwrap();
    let dst = Dma::<FakeHal32>::new(64 * 4).unwrap();
    let ops: Vec<Op> = (0..4u64)
        .map(|k| Op::Copy {
            dst: dst.paddr() + 64 * k,
            src: src.paddr(),
            len: 64,
        })
        .collect();
    let mut chan = chan();
    chan.set_next_cookie(Cookie::new(i32::MAX - 1).unwrap())
        .unwrap();
    // SAFETY: the test's buffers.
    let b = unsafe { chan.prep_batch(&ops, PrepFlags::empty()) }.unwrap();
    assert_eq!((b.first.get(), b.last.get()), (i32::MAX - 1, 2));
    chan.issue_pending();
    assert_eq!(drive(&mut chan, b.last, 200), Status::Complete);
    for c in [i32::MAX - 1, i32::MAX, 1, 2] {
        assert_eq!(
            chan.status(Cookie::new(c).unwrap()).status,
            Status::Complete
        );
    }
    assert_eq!(chan.engine().device().take_moves().len(), 4);
}

/// Batches around the ring's capacity, with and without an interrupt at
/// the end (the general path, whose run of copies `push_copies` writes
/// before the last request may be refused): a refusal is rewound whole.
#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of copies: minutes under Miri; the ring's unsafe core runs there in its own tests"
)]
fn a_batch_refused_near_the_ring_capacity_leaves_no_trace() {
    let src = Dma::<FakeHal32>::new(64).unwrap();
    let dst = Dma::<FakeHal32>::new(64 * 2).unwrap();
    let cap = (super::ring::RING_WORDS / super::script::MOVE_WORDS) as usize;
    let (mut accepted, mut refused) = (0, 0);
    for n in cap - 40..cap + 4 {
        for flags in [PrepFlags::empty(), PrepFlags::INTERRUPT] {
            let ops: Vec<Op> = (0..n)
                .map(|_| Op::Copy {
                    dst: dst.paddr(),
                    src: src.paddr(),
                    len: 64,
                })
                .collect();
            let mut chan = chan();
            let mark = format!("{:?}", chan.engine().mark());
            // SAFETY: the test's buffers.
            if unsafe { chan.prep_batch(&ops, flags) }.is_ok() {
                accepted += 1;
                continue;
            }
            refused += 1;
            assert_eq!(format!("{:?}", chan.engine().mark()), mark, "n = {n}");
            // SAFETY: the test's buffers.
            let next =
                unsafe { chan.prep_copy(dst.paddr() + 64, src.paddr(), 64, PrepFlags::empty()) }
                    .unwrap();
            assert_eq!(next, Cookie::FIRST, "n = {n}");
            chan.issue_pending();
            assert_eq!(drive(&mut chan, next, 100), Status::Complete, "n = {n}");
        }
    }
    assert!(accepted > 0 && refused > 0, "the boundary was crossed");
}
