//! A small executor: runs a fixed set of futures to their end on this CPU,
//! halting until an interrupt wakes one.
//!
//! A waker woken on another CPU (an interrupt handler an MSI sent there)
//! sends the executor's CPU a wake-up IPI, so its `hlt` ends at once rather
//! than at its next timer tick.
//!
//! A task is polled only when its waker was woken (and once at the start),
//! so a task that makes progress was woken by whoever ended its wait: the
//! async tests rely on that to show completions come from interrupts.
//! Nothing allocates per poll: task `i`'s waker is the index `i` of a
//! static ready flag, valid forever, so a waker left in a channel by a
//! forgotten future can only set a flag.

use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use crate::{apic, time};

/// Tasks one run may hold.
pub const MAX_TASKS: usize = 8;

/// Task `i` was woken since it was last polled.
static READY: [AtomicBool; MAX_TASKS] = [const { AtomicBool::new(false) }; MAX_TASKS];
/// One run at a time: the flags are shared.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// The CPU of a run that has halted at least once ([`NO_SLEEPER`]
/// before): set only then, as finding this CPU's number costs a read of
/// the local APIC, which a run whose tasks end at their first poll skips.
static SLEEPER: AtomicUsize = AtomicUsize::new(NO_SLEEPER);
const NO_SLEEPER: usize = usize::MAX;

fn flag(data: *const ()) -> &'static AtomicBool {
    // Data values are indices below MAX_TASKS (made by `waker` only).
    &READY[data as usize % MAX_TASKS]
}

fn clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake(data: *const ()) {
    // SeqCst with the executor's store of SLEEPER and load of the flags:
    // either it sees this flag before it halts, or this sees it sleeping.
    flag(data).store(true, Ordering::SeqCst);
    let on = SLEEPER.load(Ordering::SeqCst);
    if on != NO_SLEEPER && on != apic::cpu() {
        apic::wake(on);
    }
}

fn drop_waker(_: *const ()) {}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop_waker);

fn waker(task: usize) -> Waker {
    // SAFETY: the vtable's functions never dereference the data pointer
    // (an index), are thread-safe (atomics only), and clone returns a waker
    // of the same vtable: the RawWaker contract holds.
    unsafe { Waker::from_raw(RawWaker::new(task as *const (), &VTABLE)) }
}

/// A task that did not end in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

/// Runs `tasks` until every one has ended, or for at most `timeout_ns`.
/// Between polls the CPU halts with interrupts on.
pub fn run(
    tasks: &mut [Pin<&mut dyn Future<Output = ()>>],
    timeout_ns: u64,
) -> Result<(), TimedOut> {
    assert!(tasks.len() <= MAX_TASKS, "at most {MAX_TASKS} tasks");
    assert!(
        !RUNNING.swap(true, Ordering::AcqRel),
        "one executor run at a time"
    );
    // Cycles, converted only when a task has to wait: the run whose tasks
    // all end at their first poll pays no division.
    let start = time::rdtsc();
    let mut done = [false; MAX_TASKS];
    for flag in &READY[..tasks.len()] {
        flag.store(true, Ordering::Release);
    }
    let result = loop {
        for (i, task) in tasks.iter_mut().enumerate() {
            if !done[i] && READY[i].swap(false, Ordering::AcqRel) {
                let waker = waker(i);
                done[i] = task
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready();
            }
        }
        if done[..tasks.len()].iter().all(|&d| d) {
            break Ok(());
        }
        if time::cycles_to_ns(time::rdtsc().wrapping_sub(start)) > timeout_ns {
            break Err(TimedOut);
        }
        // Halt only if no wake slipped in since the flags were read: `sti;
        // hlt` takes no interrupt between the two instructions.
        x86_64::instructions::interrupts::disable();
        if SLEEPER.load(Ordering::Relaxed) == NO_SLEEPER {
            SLEEPER.store(apic::cpu(), Ordering::SeqCst);
        }
        if READY[..tasks.len()]
            .iter()
            .any(|f| f.load(Ordering::SeqCst))
        {
            x86_64::instructions::interrupts::enable();
        } else {
            x86_64::instructions::interrupts::enable_and_hlt();
        }
    };
    SLEEPER.store(NO_SLEEPER, Ordering::SeqCst);
    for flag in &READY {
        flag.store(false, Ordering::Release);
    }
    RUNNING.store(false, Ordering::Release);
    result
}

/// Runs one future to its end (see [`run`]).
pub fn block_on<T>(future: impl Future<Output = T>, timeout_ns: u64) -> Result<T, TimedOut> {
    let mut out = None;
    {
        let mut task = core::pin::pin!(async {
            out = Some(future.await);
        });
        run(&mut [task.as_mut()], timeout_ns)?;
    }
    out.ok_or(TimedOut)
}

/// Polls `future` once with a waker that does nothing, to start it.
pub fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
}
