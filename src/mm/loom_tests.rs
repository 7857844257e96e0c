//! loom models of the frame database's counts: every interleaving of two
//! or three threads taking, dropping and finding references to one frame.
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom` (see
//! `.ci/run`).

use loom::thread;
use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

use super::frame::{FrameDb, FrameKind, FrameState, PageInfo};
use super::traits::PageCounter;

/// A database of `frames` frames that lives for the rest of the model's
/// execution (its threads need `'static`; each execution leaks a few
/// bytes).
fn db(frames: usize) -> &'static FrameDb<'static> {
    let pages: &'static [PageInfo] = Vec::from_iter((0..frames).map(|_| PageInfo::new())).leak();
    let first = PhysFrame::containing_address(PhysAddr::new(0x10_0000));
    // SAFETY: nothing here maps or writes the frames; the database only
    // counts them.
    Box::leak(Box::new(unsafe { FrameDb::new(pages, first) }))
}

fn normal(refcount: u32, mapcount: u32) -> Option<FrameState> {
    Some(FrameState {
        kind: FrameKind::Normal,
        refcount,
        mapcount,
    })
}

const FREE: Option<FrameState> = Some(FrameState {
    kind: FrameKind::Free,
    refcount: 0,
    mapcount: 0,
});

/// One thread drops the last reference while another looks the frame up
/// (issue 17, hole 7): `get` answers `None`, or a reference to a frame
/// that stays allocated while it is held, so the allocator cannot hand the
/// frame to a second owner.
#[test]
fn loom_get_racing_the_last_drop_never_resurrects_a_free_frame() {
    loom::model(|| {
        let db = db(1);
        let page = db.alloc_page().unwrap();
        let frame = page.frame();
        let dropper = thread::spawn(move || drop(page));
        let got = db.get(frame);
        dropper.join().unwrap();
        match got {
            Some(held) => {
                assert_eq!(
                    db.state(frame),
                    normal(1, 0),
                    "get returned {held:?} for a frame whose last reference went"
                );
                let second = db.alloc_page();
                assert!(
                    second.is_err(),
                    "alloc_page handed out {second:?} while get's {held:?} still holds it"
                );
                drop(held);
            }
            None => assert_eq!(db.state(frame), FREE),
        }
        // Whatever happened, the frame ends free and allocatable once.
        assert_eq!(db.state(frame), FREE);
        assert!(db.alloc_page().is_ok());
    });
}

/// Two threads allocate while a third frees: no frame goes to two owners,
/// and each page handed out holds exactly its one reference.
#[test]
fn loom_concurrent_allocs_and_a_free_never_share_a_frame() {
    loom::model(|| {
        let db = db(2);
        let first = db.alloc_page().unwrap();
        let freer = thread::spawn(move || drop(first));
        let other = thread::spawn(move || db.alloc_page().ok());
        let mine = db.alloc_page().ok();
        freer.join().unwrap();
        let theirs = other.join().unwrap();
        // One frame was free from the start, so at least one succeeds.
        assert!(mine.is_some() || theirs.is_some());
        if let (Some(a), Some(b)) = (&mine, &theirs) {
            assert_ne!(a.pfn(), b.pfn(), "one frame handed out twice");
        }
        for page in mine.iter().chain(&theirs) {
            assert_eq!(db.state(page.frame()), normal(1, 0));
        }
        drop((mine, theirs));
        assert_eq!(db.free_frames(), 2);
    });
}

/// Clones and drops on two threads: the count never loses or gains a
/// reference, and the frame is freed by the last drop exactly.
#[test]
fn loom_clones_dropped_on_two_threads_free_the_frame_once() {
    loom::model(|| {
        let db = db(1);
        let page = db.alloc_page().unwrap();
        let frame = page.frame();
        let clone = page.clone();
        let other = thread::spawn(move || {
            let again = clone.clone();
            drop(clone);
            again
        });
        drop(page);
        let again = other.join().unwrap();
        assert_eq!(db.state(frame), normal(1, 0), "the clone still holds it");
        drop(again);
        assert_eq!(db.state(frame), FREE);
    });
}

/// `PageCounter::try_map` (a safe method of `&FrameDb` at 70f12d8) on a frame whose
/// last reference another thread drops, while a third allocates: a refused
/// map must leave no trace on the counts of the page the allocator hands
/// out, else that page is held with a wrong count and a later clone and
/// drop free it under its owner. (On the code of 70f12d8 it fails: after
/// the last drop, `try_map`'s add lands on the zero count, `take_free`
/// stores the new owner's one reference over it, and the undo subtracts a
/// reference and a mapping from that: refcount 0, mapcount `u32::MAX`.
/// loom may first report both counts 0 instead, an ordering no CPU makes
/// (loom can place a plain store inside another thread's read-modify-write,
/// tokio-rs/loom#254), from the same race.)
#[test]
fn loom_a_refused_map_racing_a_free_and_an_alloc_leaves_the_new_page_counted_right() {
    loom::model(|| {
        let db = db(1);
        let page = db.alloc_page().unwrap();
        let frame = page.frame();
        let dropper = thread::spawn(move || drop(page));
        let mapper = thread::spawn(move || {
            // SAFETY: this thread stands for the one address space that
            // maps the frame: each mapping it counts it gives back once,
            // and it writes no entry, so none outlives the count.
            let mapped = unsafe { PageCounter::try_map(&db, frame) };
            if mapped {
                // SAFETY: as above; the mapping counted just now.
                unsafe { PageCounter::unmap(&db, frame) };
            }
            mapped
        });
        let fresh = db.alloc_page().ok();
        dropper.join().unwrap();
        let mapped = mapper.join().unwrap();
        if let Some(fresh) = fresh {
            assert_eq!(
                db.state(frame),
                normal(1, 0),
                "{fresh:?} just allocated, held once, mapped nowhere (try_map answered {mapped})"
            );
        }
    });
}
