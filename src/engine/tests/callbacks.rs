//! Callbacks: run once, in order, with the final status.

use super::*;

thread_local! {
    static SEEN: RefCell<Vec<(i32, Status, usize)>> = const { RefCell::new(Vec::new()) };
}

fn record(cookie: Cookie, status: Status, context: usize) {
    SEEN.with(|s| s.borrow_mut().push((cookie.get(), status, context)));
}

#[test]
fn callbacks_run_once_in_order_with_the_final_status() {
    let mut chan = Channel::new(Scripted::new(1 << 20, 64));
    let mut cookies = Vec::new();
    for i in 0..3 {
        let op = Op::Copy {
            dst: 0x100000 * (i + 1),
            src: 0x10000,
            len: 8,
        };
        // SAFETY: the scripted engine never touches memory.
        let c = unsafe {
            chan.prep(
                op,
                PrepFlags::empty(),
                Some(Callback {
                    func: record,
                    context: i as usize,
                }),
            )
        };
        cookies.push(c.unwrap());
    }
    assert!(
        chan.engine()
            .prepared
            .iter()
            .all(|(_, _, end)| end.unwrap().writeback),
        "callbacks need a write-back"
    );
    chan.issue_pending();
    chan.test_engine().complete_upto = Some(cookies[0]);
    chan.poll();
    chan.poll();
    chan.terminate();
    let seen = SEEN.with(|s| s.borrow().clone());
    assert_eq!(
        seen,
        [
            (1, Status::Complete, 0),
            (2, Status::Error(ErrorKind::Aborted), 1),
            (3, Status::Error(ErrorKind::Aborted), 2)
        ]
    );
}
