//! The ring against a walking model of the chip.

use proptest::prelude::*;

use super::block::BLOCK_BYTES;
use super::*;
use crate::hal::fake::FakeHal32;

type TestRing = Ring<FakeHal32>;

/// The chip as far as the ring is concerned: it follows the linked
/// instructions from the start, logs each Memory Move's destination
/// (no memory is touched: the destinations here are request numbers),
/// stores DSP on a write-back, and parks in a WAIT unless the tail it
/// waits in has become a JUMP (a doorbell always follows an append:
/// the doorbell itself is the fake chip's business, in `tests.rs`).
struct Walker {
    pc: u32,
    moves: Vec<u32>,
}

impl Walker {
    fn word(ring: &TestRing, addr: u32) -> u32 {
        let word = addr.wrapping_sub(ring.addr(0)) / 4;
        assert!(word < RING_WORDS, "the chain left the ring at {addr:#x}");
        ring.cell::<u32>(RING_OFF + word as usize * 4).read()
    }

    /// Runs at most `steps` instructions; returns whether it is parked.
    fn walk(&mut self, ring: &TestRing, steps: usize) -> bool {
        for _ in 0..steps {
            let (op, arg) = (Self::word(ring, self.pc), Self::word(ring, self.pc + 4));
            match op {
                op if op >> 24 == 0xc0 => {
                    let dst = Self::word(ring, self.pc + 8);
                    // A fault on this move is its request's, whichever of
                    // its words the chip reports (the destinations here
                    // are the cookies). One move in 8 (256 under Miri): each
                    // check walks the linked entries, and checking every
                    // move made this test 28 s long here, a quarter of an hour
                    // under Miri.
                    let every = if cfg!(miri) { 256 } else { 8 };
                    let checked = self.moves.len().is_multiple_of(every);
                    for w in (0..MOVE_WORDS).filter(|_| checked) {
                        let owner = ring.owner_of(self.pc + w * 4).map(Cookie::get);
                        assert_eq!(
                            owner,
                            Some(dst as i32),
                            "word {w} of the move at {:#x}",
                            self.pc
                        );
                    }
                    self.moves.push(dst);
                    self.pc += 12;
                }
                op if op >> 29 == 0b111 => {
                    assert_eq!(arg, ring.completion_addr(), "a Store elsewhere");
                    ring.cell::<u32>(STATUS_OFF).write(self.pc + 8);
                    self.pc += 8;
                }
                script::JUMP => self.pc = arg,
                script::INTFLY => self.pc += 8,
                op if op == script::clear_sigp()[0] => self.pc += 8,
                script::WAIT_RESELECT => {
                    if Self::word(ring, arg) != script::JUMP {
                        return true;
                    }
                    self.pc = arg;
                }
                other => panic!("the chip met {other:#x} at {:#x}", self.pc),
            }
        }
        false
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Requests of one copy each: through the one-pass run when
    /// `batch`, else one by one; the last with its own write-back and
    /// an INTFLY when `writeback`; all taken back (rewound) when
    /// `rewind`, after a retire when `retire_first` (the engine's
    /// contract allows polls between a mark and its rewind).
    Push {
        n: usize,
        batch: bool,
        writeback: bool,
        rewind: bool,
        retire_first: bool,
    },
    /// An append, the chip running this many instructions after each
    /// store it might see mid-way.
    Append(usize),
    Walk(usize),
    Retire,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..400usize, any::<bool>(), prop::bool::weighted(0.2), prop::bool::weighted(0.1), any::<bool>())
            .prop_map(|(n, batch, writeback, rewind, retire_first)| Step::Push { n, batch, writeback, rewind, retire_first }),
        2 => prop_oneof![Just(0usize), 1..6usize].prop_map(Step::Append),
        3 => (1..2000usize).prop_map(Step::Walk),
        2 => Just(Step::Retire),
    ]
}

/// Prepares `n` requests from cookie `first`, as the engine does; all
/// or nothing. Returns how many were prepared.
fn push(ring: &mut TestRing, first: Cookie, n: usize, batch: bool, writeback: bool) -> usize {
    let mark = ring.mark();
    let copy = |k: usize| Op::Copy {
        dst: (first.get() as usize + k) as u64,
        src: 0,
        len: 4,
    };
    let ops: Vec<Op> = (0..n).map(copy).collect();
    let plain = if writeback { n - 1 } else { n };
    let mut done = if batch {
        ring.push_copies(first, &ops[..plain], u32::MAX as u64, false) as usize
    } else {
        0
    };
    let mut cookie = Cookie::new(first.get() + done as i32).unwrap();
    while done < n {
        let Op::Copy { dst, .. } = ops[done] else {
            unreachable!()
        };
        let pushed = ring
            .push(ISSUE_RESERVE, &[], |_| {
                script::memory_move(4, 0, dst as u32)
            })
            .and_then(|()| {
                if writeback && done == n - 1 {
                    let own = ring.push_writeback(cookie, ISSUE_RESERVE)?;
                    ring.push(ISSUE_RESERVE, &[], |_| script::intfly(0))?;
                    Ok(Some(own))
                } else {
                    Ok(None)
                }
            });
        match pushed {
            Ok(own) => ring.end_request(cookie, own),
            Err(EngineError::RingFull) => {
                ring.rewind(mark);
                return 0;
            }
            Err(e) => panic!("{e:?}"),
        }
        cookie = cookie.next();
        done += 1;
    }
    n
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut ring = TestRing::new().unwrap();
    let mut walker = Walker {
        pc: ring.reset(),
        moves: Vec::new(),
    };
    // Request k (from 0) has cookie k + 1 and writes "address" k + 1.
    let (mut prepared, mut appended, mut retired) = (0usize, 0usize, 0usize);
    let check_walk = |walker: &Walker, appended: usize| -> Result<(), TestCaseError> {
        prop_assert!(
            walker.moves.len() <= appended,
            "ran a request not yet appended"
        );
        for (k, &dst) in walker.moves.iter().enumerate() {
            prop_assert_eq!(dst as usize, k + 1, "ran out of order or twice");
        }
        Ok(())
    };
    for step in steps {
        match *step {
            Step::Push {
                n,
                batch,
                writeback,
                rewind,
                retire_first,
            } => {
                let first = Cookie::new(prepared as i32 + 1).unwrap();
                let mark = ring.mark();
                let got = push(&mut ring, first, n, batch, writeback);
                if rewind && got > 0 {
                    if retire_first && let Some(c) = ring.retire() {
                        let c = c.get() as usize;
                        prop_assert!(c > retired && c <= walker.moves.len());
                        retired = c;
                    }
                    ring.rewind(mark);
                } else {
                    prepared += got;
                }
            }
            Step::Append(k) => {
                // The walker must not run what is being linked before
                // the link: it runs against the requests appended so
                // far, checked below.
                let linked = ring.append_observed(|ring| {
                    walker.walk(ring, k);
                });
                check_walk(&walker, appended)?;
                prop_assert_eq!(linked, prepared > appended);
                appended = prepared;
            }
            Step::Walk(k) => {
                walker.walk(&ring, k);
                check_walk(&walker, appended)?;
            }
            Step::Retire => {
                if let Some(c) = ring.retire() {
                    let c = c.get() as usize;
                    prop_assert!(c > retired, "retired {} again", c);
                    prop_assert!(c <= walker.moves.len(), "retired {} before it ran", c);
                    retired = c;
                }
            }
        }
        prop_assert!(
            ring.in_use(walker.pc),
            "the chip is at {:#x}, in words the ring has freed",
            walker.pc
        );
    }
    ring.append();
    appended = prepared;
    let mut parked = false;
    for _ in 0..1000 {
        if walker.walk(&ring, 1000) {
            parked = true;
            break;
        }
    }
    prop_assert!(parked, "the chain never parked");
    check_walk(&walker, appended)?;
    prop_assert_eq!(walker.moves.len(), appended, "appended requests never ran");
    while let Some(c) = ring.retire() {
        retired = c.get() as usize;
    }
    prop_assert_eq!(retired, appended, "the last completion was lost");
    // Every word came back: one request at a time, the ring takes at
    // least as many as fit with the reserve and a wrap's waste.
    let room = (RING_WORDS - TAIL_WORDS - ISSUE_RESERVE - 2 * MOVE_WORDS) / MOVE_WORDS;
    let first = Cookie::new(prepared as i32 + 1).unwrap();
    let fits = (0..room as usize).take_while(|&k| {
        push(
            &mut ring,
            Cookie::new(first.get() + k as i32).unwrap(),
            1,
            false,
            false,
        ) == 1
    });
    prop_assert_eq!(fits.count(), room as usize, "words leaked");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

    #[test]
    fn the_ring_runs_what_was_appended_once_in_order_and_retires_only_what_ran(
        steps in prop::collection::vec(step(), 1..80),
    ) {
        run(&steps)?;
    }
}

#[test]
#[should_panic(expected = "outside or misaligned")]
fn a_cell_past_the_block_panics_before_any_access() {
    let ring = TestRing::new().unwrap();
    let _ = ring.cell::<u32>(BLOCK_BYTES);
}

#[test]
#[should_panic(expected = "from before the last append")]
fn a_mark_from_before_an_append_is_refused() {
    let mut ring = TestRing::new().unwrap();
    ring.reset();
    let mark = ring.mark();
    assert_eq!(push(&mut ring, Cookie::new(1).unwrap(), 3, true, false), 3);
    assert!(ring.append());
    ring.rewind(mark);
}

/// Every word of a linked request is attributed to that request, also
/// inside a run of copies that shares one entry, and the INTFLY a request
/// leaves after its own write-back to the request after it.
#[test]
fn each_word_is_attributed_to_the_request_it_belongs_to() {
    let mut ring = TestRing::new().unwrap();
    ring.reset();
    let c = |n: i32| Cookie::new(n).unwrap();
    // Request 1 on its own, with a write-back and an INTFLY after it.
    assert_eq!(push(&mut ring, c(1), 1, false, true), 1);
    let run_from = ring.head;
    // Requests 2..=5 as one run, then 6 on its own.
    assert_eq!(push(&mut ring, c(2), 4, true, false), 4);
    assert_eq!(ring.head - run_from, 4 * MOVE_WORDS, "one move each");
    assert_eq!(push(&mut ring, c(6), 1, false, false), 1);
    assert!(ring.append());
    let owner = |word: u32| ring.owner_of(ring.addr(word)).map(Cookie::get);
    // Ring word 0 is the first tail; request 1 starts after it.
    let first = TAIL_WORDS;
    assert_eq!(owner(first), Some(1), "request 1's move");
    assert_eq!(owner(first + MOVE_WORDS), Some(1), "its write-back");
    assert_eq!(
        owner(run_from - TC_WORDS),
        Some(2),
        "the INTFLY after its write-back belongs to the next request"
    );
    for k in 0..4 {
        for w in 0..MOVE_WORDS {
            assert_eq!(
                owner(run_from + k * MOVE_WORDS + w),
                Some(2 + k as i32),
                "word {w} of the run's move {k}"
            );
        }
    }
    assert_eq!(owner(run_from + 4 * MOVE_WORDS), Some(6));
    assert_eq!(ring.oldest().map(Cookie::get), Some(1));
    // A run first: the oldest request is its first.
    ring.reset();
    assert_eq!(push(&mut ring, c(7), 3, true, false), 3);
    assert_eq!(ring.oldest().map(Cookie::get), Some(7));
}

/// Next to the cookies' wrap a run stops short of it (the general path
/// takes `i32::MAX`), and faults and completions are still attributed
/// exactly: the walker checks each move's owner as it runs it.
#[test]
fn runs_next_to_the_cookies_wrap_keep_their_owners() {
    let mut ring = TestRing::new().unwrap();
    let mut walker = Walker {
        pc: ring.reset(),
        moves: Vec::new(),
    };
    let c = |n: i32| Cookie::new(n).unwrap();
    let max = i32::MAX;
    assert_eq!(push(&mut ring, c(max - 4), 4, true, false), 4);
    assert_eq!(ring.unlinked(), 1, "one run up to i32::MAX - 1");
    let ops = [Op::Copy {
        dst: max as u64,
        src: 0,
        len: 4,
    }];
    assert_eq!(ring.push_copies(c(max), &ops, u32::MAX as u64, false), 0);
    assert_eq!(push(&mut ring, c(max), 1, false, false), 1);
    assert_eq!(push(&mut ring, c(1), 2, true, false), 2);
    assert_eq!(ring.oldest().map(Cookie::get), Some(max - 4));
    assert!(ring.append());
    assert!(walker.walk(&ring, 100), "parked after the batch");
    assert_eq!(walker.moves.len(), 7);
    assert_eq!(ring.retire().map(Cookie::get), Some(2));
    assert_eq!(ring.issued(), 0);
}

/// Addresses and lengths at the edges `is_one_move` and `copy_is_valid`
/// decide at: 0, `MAX_MOVE`, the 32-bit mask, and their neighbours.
fn edges() -> Vec<u64> {
    let max = script::MAX_MOVE as u64;
    let top = u32::MAX as u64;
    let mut edges = vec![0, 1, 63, 64, 65, u64::MAX];
    for edge in [max, top - max, top - 64, top] {
        edges.extend([edge - 1, edge, edge + 1]);
    }
    edges
}

/// The batch loop's check accepts exactly the copies the channel accepts
/// that fit one Memory Move: every combination of edges, for the masks it
/// is used with (the engine's, and the least and the most allowed).
#[test]
fn is_one_move_agrees_with_the_channels_check_at_the_edges() {
    let edges = edges();
    for mask in [script::MAX_MOVE as u64, u32::MAX as u64, u64::MAX] {
        for &dst in &edges {
            for &src in &edges {
                for &len in &edges {
                    let len = len as usize;
                    assert_eq!(
                        is_one_move(dst, src, len, mask),
                        crate::engine::copy_is_valid(dst, src, len, mask)
                            && len <= script::MAX_MOVE as usize,
                        "dst {dst:#x} src {src:#x} len {len:#x} mask {mask:#x}"
                    );
                }
            }
        }
    }
}

proptest! {
    /// As above, anywhere.
    #[test]
    fn is_one_move_agrees_with_the_channels_check(
        dst in any::<u64>(),
        src in any::<u64>(),
        len in 0..2 * script::MAX_MOVE as usize,
        mask in script::MAX_MOVE as u64..=u64::MAX,
    ) {
        prop_assert_eq!(
            is_one_move(dst, src, len, mask),
            crate::engine::copy_is_valid(dst, src, len, mask) && len <= script::MAX_MOVE as usize
        );
    }
}

/// The words in use are counted as the distance from the oldest to the
/// head, so they must never fill the ring (a full ring would read as an
/// empty one, and its words would be claimed again under the chip): a
/// claim that would take the last free word is refused, with or without a
/// reserve kept, across the wrap too.
#[test]
fn claims_never_fill_the_ring() {
    let mut ring = TestRing::new().unwrap();
    ring.reset();
    // With the reserve first (it stops at the ring's end), then with
    // none, from past the wrap: without the free word that pass filled
    // the ring, which then read as empty and was claimed again.
    for keep in [ISSUE_RESERVE, 0] {
        let free = RING_WORDS - ring.used();
        let mut claimed = 0;
        while ring.reserve(1, keep).is_ok() {
            claimed += 1;
            assert!(claimed < free, "claimed words in use");
        }
        // Refused with a word free beyond `keep` (or a few more, when the
        // last claim would have needed a wrap).
        let used = ring.used();
        assert!(
            used + keep + 1 + 2 * TC_WORDS >= RING_WORDS,
            "keep {keep}: {used} in use"
        );
        assert_eq!(ring.reserve(1, keep), Err(EngineError::RingFull));
        // Free all but the live tail's words (the head is past the wrap
        // on the second pass).
        ring.free_from = ring.head.wrapping_sub(TAIL_WORDS) & (RING_WORDS - 1);
        assert_eq!(ring.used(), TAIL_WORDS);
    }
}

#[test]
#[should_panic(expected = "from before the last append")]
fn a_mark_taken_before_an_append_with_nothing_after_is_refused() {
    let mut ring = TestRing::new().unwrap();
    ring.reset();
    assert_eq!(push(&mut ring, Cookie::new(1).unwrap(), 1, false, false), 1);
    // Nothing is prepared between the mark and the append: a rewind would
    // move the head back behind the write-back and tail just linked.
    let mark = ring.mark();
    assert!(ring.append());
    ring.rewind(mark);
}

/// The entry counters wrap at 2^32: the ring runs as before across it.
#[test]
fn the_entry_counters_wrap() {
    let c = |n: i32| Cookie::new(n).unwrap();
    let mut ring = TestRing::new().unwrap();
    ring.reset();
    let start = u32::MAX - 2;
    (ring.pushed, ring.appended, ring.retired) = (start, start, start);
    // From 100: the helper's copies read 0..4 and write at the cookie,
    // so lower cookies overlap and do not make a run.
    let mut cookie = 100;
    for round in 0..4 {
        // A run of three and a single request, linked, then retired by
        // the completion word as the chip would leave it.
        assert_eq!(push(&mut ring, c(cookie), 3, true, false), 3);
        assert_eq!(push(&mut ring, c(cookie + 3), 1, false, false), 1);
        assert_eq!(ring.entries(), 2, "round {round}");
        assert!(ring.append());
        assert_eq!(ring.issued(), 2);
        assert_eq!(
            ring.owner_of(ring.addr(ring.free_from)).map(Cookie::get),
            Some(cookie)
        );
        assert_eq!(ring.oldest(), Some(c(cookie)));
        let done = ring.linked.value;
        ring.cell::<u32>(STATUS_OFF).write(done);
        assert_eq!(ring.retire(), Some(c(cookie + 3)), "round {round}");
        assert_eq!((ring.entries(), ring.issued()), (0, 0));
        cookie += 4;
    }
    assert!(ring.retired < start, "the counters wrapped");
}

/// The entries never run out: the smallest request (a write-back alone, as
/// an interrupt-only request has) takes [`STORE_WORDS`] words in use until
/// it is retired, so filling the ring with them, then retiring and
/// filling again past the wrap, leaves an entry free every time the ring
/// refuses one.
#[test]
fn the_smallest_requests_fill_the_ring_before_the_entries() {
    let mut ring = TestRing::new().unwrap();
    ring.reset();
    let mut cookie = Cookie::FIRST;
    for round in 0..3 {
        let mut pushed = 0;
        while let Ok(value) = ring.push_writeback(cookie, ISSUE_RESERVE) {
            ring.end_request(cookie, Some(value));
            cookie = cookie.next();
            pushed += 1;
        }
        assert!(pushed > 1000, "round {round}: only {pushed} fitted");
        assert!(
            ring.entries() < MAX_ENTRIES,
            "round {round}: {} entries",
            ring.entries()
        );
        // Linked and run by the chip: everything retires, the ring is
        // empty but for the live tail.
        assert!(ring.append());
        let done = ring.linked.value;
        ring.cell::<u32>(STATUS_OFF).write(done);
        assert!(ring.retire().is_some(), "round {round}");
        assert_eq!(ring.entries(), 0);
    }
}
