//! Host tests of issue 17's memory-management holes and bugs: counts that
//! must not be resurrected, areas reaching the top of the lower half,
//! copy-on-write never copying a frame onto itself, and kernel entries the
//! crate must leave alone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::frame::{FrameKind, PageRef};
use super::tests::Memory;

/// How long a race test hammers (Miri runs it much slower, so fewer).
fn race_budget() -> (Duration, usize) {
    if cfg!(miri) {
        (Duration::from_secs(5), 200)
    } else {
        (Duration::from_millis(1500), 2_000_000)
    }
}

/// One thread allocates and drops the only frame while another looks it up
/// (issue 17, hole 7): a reference `get` hands out must keep the frame an
/// allocated `Normal` page while held, and the allocator must never hand
/// out a frame someone still holds. Before the fix `get` checked the count,
/// then incremented: it resurrected a frame whose last reference had gone.
#[test]
fn get_racing_the_last_drop_never_resurrects_a_free_frame() {
    let memory = Memory::new(1);
    let db = memory.db();
    let frame = db.frame(0).unwrap();
    let (budget, rounds) = race_budget();
    let stop = AtomicBool::new(false);
    let bad = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(held) = db.get(frame) {
                    let state = db.state(frame).unwrap();
                    if state.kind != FrameKind::Normal || state.refcount == 0 {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(held);
                }
            }
        });
        let start = Instant::now();
        for _ in 0..rounds {
            if start.elapsed() > budget {
                break;
            }
            let Ok(page): Result<PageRef<'_>, _> = db.alloc_page() else {
                continue;
            };
            // Held by this page and at most the other thread's lookup.
            let state = db.state(frame).unwrap();
            if state.kind != FrameKind::Normal || !(1..=2).contains(&state.refcount) {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            drop(page);
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0, "references to a free frame");
    let state = db.state(frame).unwrap();
    assert_eq!(
        (state.kind, state.refcount, state.mapcount),
        (FrameKind::Free, 0, 0)
    );
}
