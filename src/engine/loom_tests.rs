//! loom models of the engine layer's concurrent cores: the shared channel's
//! lock with interrupts masked around it, the waker slots its futures park
//! in, and the registry's bookkeeping against its per-channel locks. Every
//! interleaving of two or three threads; run with
//! `RUSTFLAGS="--cfg loom" cargo test --release --lib loom` (see `.ci/run`).
//!
//! Under loom the lock is loom's mutex (see `crate::sync`): a model thread
//! that waits on it forever (a lost wake-up, a lock still held when an
//! interrupt arrives, a lock-order cycle) ends the model as a deadlock.

use core::cell::Cell;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use embedded_hal::delay::DelayNs;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

use super::registry::{DmaChannel, EventCallback, Registry, RegistryError};
use super::shared::IrqControl;
use super::{
    Capabilities, Channel, Cookie, DmaError, Engine, EngineError, Limits, Notify, Op, PrepFlags,
    Progress, SharedChannel, Status, Termination, TxState,
};

/// The device's side, shared with the thread that plays it: how many of
/// the issued requests it has completed, and its interrupt line.
#[derive(Default)]
struct Hardware {
    done: AtomicUsize,
    line: AtomicBool,
}

impl Hardware {
    /// Completes the next request and raises the line, as a device does:
    /// without the channel's lock.
    fn complete_next(&self) {
        self.done.fetch_add(1, Ordering::Release);
        self.line.store(true, Ordering::Release);
    }
}

/// An engine whose requests a model thread completes.
struct Device {
    hw: Arc<Hardware>,
    prepared: Vec<Cookie>,
    issued: Vec<Cookie>,
    reported: usize,
}

impl Device {
    fn new(hw: &Arc<Hardware>) -> Self {
        Device {
            hw: hw.clone(),
            prepared: Vec::new(),
            issued: Vec::new(),
            reported: 0,
        }
    }
}

// SAFETY: the model device touches no memory: it only counts cookies.
unsafe impl Engine for Device {
    type Mark = usize;
    type Hal = crate::hal::fake::FakeHal;

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPY | Capabilities::INTERRUPT
    }

    fn limits(&self) -> Limits {
        Limits {
            max_len: 4096,
            dma_mask: u64::MAX,
            align: 1,
        }
    }

    fn mark(&self) -> usize {
        self.prepared.len()
    }

    // It records cookies and touches no memory: nothing to vouch for.
    unsafe fn rewind(&mut self, mark: usize) {
        self.prepared.truncate(mark);
    }

    unsafe fn prep(
        &mut self,
        cookie: Cookie,
        _op: Op,
        _end: Option<Notify>,
    ) -> Result<(), EngineError> {
        self.prepared.push(cookie);
        Ok(())
    }

    fn issue(&mut self) {
        self.issued.append(&mut self.prepared);
    }

    fn poll(&mut self, _check_hardware: bool) -> Progress {
        let done = self.hw.done.load(Ordering::Acquire).min(self.issued.len());
        let completed = (done > self.reported).then(|| self.issued[done - 1]);
        self.reported = done;
        Progress {
            completed,
            fault: None,
        }
    }

    fn handle_interrupt(&mut self) -> bool {
        self.hw.line.swap(false, Ordering::AcqRel)
    }

    fn terminate(&mut self) -> Termination {
        self.prepared.clear();
        self.issued.clear();
        Termination {
            completed: None,
            stopped: true,
        }
    }

    fn reset(&mut self) -> Result<(), DmaError> {
        Ok(())
    }
}

type Shared = SharedChannel<Device, ModelIrq>;

loom::thread_local! {
    /// This model thread's (CPU's) interrupt flag is off.
    static MASKED: Cell<bool> = Cell::new(false);
    /// The channel whose interrupt this CPU takes.
    static HANDLER: Cell<Option<&'static Shared>> = Cell::new(None);
}

/// Interrupts of model threads: `disable` and `restore` keep a per-thread
/// flag, and an interrupt the device raised while they were off is taken
/// the moment they come back on, as `sti` does, by the thread's handler.
/// A lock still held there deadlocks the model.
enum ModelIrq {}

impl IrqControl for ModelIrq {
    fn disable() -> bool {
        !MASKED.with(|m| m.replace(true))
    }

    fn restore(were_on: bool) {
        if were_on {
            MASKED.with(|m| m.set(false));
            take_interrupt();
        }
    }
}

/// Runs this CPU's handler, with interrupts off as the CPU enters it, if
/// the device's line is up.
fn take_interrupt() {
    let Some(shared) = HANDLER.with(Cell::get) else {
        return;
    };
    MASKED.with(|m| m.set(true));
    // The line is the device's, readable without the lock; the lock
    // taken here cannot be this CPU's own.
    if shared.lock().engine().hw.line.load(Ordering::Acquire) {
        shared.handle_interrupt();
    }
    MASKED.with(|m| m.set(false));
}

/// A channel on a fresh device, for the rest of the model's execution.
fn shared() -> (&'static Shared, Arc<Hardware>) {
    let hw = Arc::new(Hardware::default());
    let shared = Box::leak(Box::new(SharedChannel::new(Channel::new(Device::new(&hw)))));
    (shared, hw)
}

/// Prepares a copy asking for the completion interrupt.
fn prep(shared: &Shared, k: u64) -> Cookie {
    let op = Op::Copy {
        dst: 0x10_0000 + 0x1000 * k,
        src: 0x20_0000 + 0x1000 * k,
        len: 64,
    };
    // SAFETY: the model's engine touches no memory.
    unsafe { shared.lock().prep(op, PrepFlags::INTERRUPT, None) }.unwrap()
}

/// A CPU's interrupt handler for the device, entered with interrupts off.
fn interrupt(shared: &Shared) {
    MASKED.with(|m| m.set(true));
    shared.handle_interrupt();
    MASKED.with(|m| m.set(false));
}

/// One CPU awaits a request while the device completes it and another CPU
/// takes the interrupt; the awaiting CPU also takes it when its interrupts
/// come back on after a lock. In every interleaving the future ends `Ok`
/// (the waker is never lost between the status check and the parking,
/// both under the lock) and no interrupt finds the lock held by the code
/// it interrupted (the guard unlocks before it restores interrupts).
#[test]
fn loom_an_awaited_request_is_woken_by_the_interrupt_on_either_cpu() {
    loom::model(|| {
        let (shared, hw) = shared();
        let cookie = prep(shared, 0);
        shared.lock().issue_pending();
        let device = thread::spawn(move || {
            hw.complete_next();
            interrupt(shared);
        });
        HANDLER.with(|h| h.set(Some(shared)));
        assert_eq!(loom::future::block_on(shared.completion(cookie)), Ok(()));
        device.join().unwrap();
        let mut channel = shared.lock();
        assert_eq!(channel.status(cookie).status, Status::Complete);
        assert_eq!(channel.wakers_waiting(), 0, "the slot was given back");
    });
}

/// Two CPUs await two requests of one channel while a third thread, the
/// device, completes them in order and takes each interrupt: each future
/// is woken for its own request (slots are not confused), and every slot
/// is free at the end.
#[test]
fn loom_two_cpus_awaiting_two_requests_are_each_woken() {
    loom::model(|| {
        let (shared, hw) = shared();
        let (first, second) = (prep(shared, 0), prep(shared, 1));
        shared.lock().issue_pending();
        let device = thread::spawn(move || {
            hw.complete_next();
            interrupt(shared);
            hw.complete_next();
            interrupt(shared);
        });
        let other = thread::spawn(move || loom::future::block_on(shared.completion(first)));
        assert_eq!(loom::future::block_on(shared.completion(second)), Ok(()));
        assert_eq!(other.join().unwrap(), Ok(()));
        device.join().unwrap();
        assert_eq!(shared.lock().wakers_waiting(), 0);
    });
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A future parked on a request is dropped on one CPU while the device
/// completes that request and another CPU's handler wakes the slot: the
/// slot is emptied exactly once (by the wake or by the drop, the slot's
/// generation keeping the other from touching a slot that moved on), and a
/// second future registered meanwhile keeps its own slot and its wake.
#[test]
fn loom_a_future_dropped_while_its_request_ends_frees_its_slot_once() {
    loom::model(|| {
        let (shared, hw) = shared();
        let (first, second) = (prep(shared, 0), prep(shared, 1));
        shared.lock().issue_pending();
        let dropped = Arc::new(Counter::default());
        let kept = Arc::new(Counter::default());
        let (dropped_waker, kept_waker) = (Waker::from(dropped.clone()), Waker::from(kept.clone()));
        let mut kept_future = Box::pin(shared.completion(second));
        let poll_pending = kept_future
            .as_mut()
            .poll(&mut Context::from_waker(&kept_waker))
            .is_pending();
        assert!(poll_pending, "nothing completed yet");
        let device = thread::spawn(move || {
            hw.complete_next();
            interrupt(shared);
        });
        {
            // Pending (parked) or already ended: both are interleavings.
            let mut future = pin!(shared.completion(first));
            let _ = future
                .as_mut()
                .poll(&mut Context::from_waker(&dropped_waker));
        }
        device.join().unwrap();
        assert!(dropped.0.load(Ordering::Acquire) <= 1);
        assert_eq!(
            kept.0.load(Ordering::Acquire),
            0,
            "its request has not ended"
        );
        assert_eq!(
            shared.lock().wakers_waiting(),
            1,
            "only the kept future's slot"
        );
        drop(kept_future);
        assert_eq!(shared.lock().wakers_waiting(), 0);
    });
}

/// A registry channel whose every call touches one loom cell: two threads
/// calling it without the registry's locks ordering them is reported by
/// loom as a data race.
struct Probe {
    id: u64,
    touched: loom::cell::UnsafeCell<u32>,
}

impl Probe {
    fn touch(&self) {
        // SAFETY: only through `&mut self` (below) or the registry's lock
        // of this channel; loom checks that claim.
        self.touched.with_mut(|n| unsafe { *n += 1 });
    }
}

impl DmaChannel for Probe {
    fn id(&self) -> u64 {
        self.id
    }
    fn capabilities(&self) -> Capabilities {
        self.touch();
        Capabilities::COPY
    }
    fn limits(&self) -> Limits {
        self.touch();
        Limits {
            max_len: 4096,
            dma_mask: u64::MAX,
            align: 1,
        }
    }
    unsafe fn prep(&mut self, _op: Op, _flags: PrepFlags) -> Result<Cookie, DmaError> {
        self.touch();
        Err(DmaError::NotSupported)
    }
    fn issue_pending(&mut self) {
        self.touch();
    }
    // The probe prepares nothing (`prep` refuses), so no cookie of it is
    // ever in flight: every one reads ended, as on an idle channel.
    fn status(&mut self, _cookie: Cookie) -> TxState {
        self.touch();
        TxState {
            status: Status::Complete,
            snapshot: crate::engine::Snapshot {
                last_completed: 0,
                last_used: 0,
            },
        }
    }
    fn wait(
        &mut self,
        _cookie: Cookie,
        _delay: &mut dyn DelayNs,
        _timeout: Duration,
    ) -> Result<(), DmaError> {
        self.touch();
        Ok(())
    }
    fn terminate(&mut self) {
        self.touch();
    }
    fn is_stopping(&self) -> bool {
        self.touch();
        false
    }
    fn reset(&mut self) -> Result<(), DmaError> {
        self.touch();
        Ok(())
    }
    fn is_halted(&self) -> bool {
        self.touch();
        false
    }
}

fn probe(id: u64) -> &'static mut Probe {
    Box::leak(Box::new(Probe {
        id,
        touched: loom::cell::UnsafeCell::new(0),
    }))
}

fn ignore(_: super::registry::ClientId, _: super::registry::Event, _: usize) {}

/// One thread removes a client's channel (its engine goes away) while the
/// client's CPU looks the channel up and uses it: the lookup either gets
/// the channel before the removal takes it (and the removal waits for the
/// guard), or is refused; never a guard to a channel the removal has handed
/// back. A third thread meanwhile adds a fallback channel, which goes to the
/// client once its engine channel is gone, and another client's lookup of
/// the channel is refused without deadlocking against either (the locks are
/// taken state first, channel second, or the channel's given up first).
#[test]
fn loom_a_channel_removed_while_its_client_uses_it_is_never_shared() {
    loom::model(|| {
        let registry: &'static Registry<'static, 2, 2> = Box::leak(Box::new(Registry::new()));
        let engine = registry.add_channel(probe(1)).unwrap();
        let client = registry
            .register_client(EventCallback {
                func: ignore,
                context: 0,
            })
            .unwrap();
        registry.request_channels(client, 1).unwrap();
        let stranger = registry
            .register_client(EventCallback {
                func: ignore,
                context: 0,
            })
            .unwrap();
        let remover = thread::spawn(move || {
            let channel = registry.remove_channel(engine).unwrap();
            // The channel is the caller's again: a guard still out would
            // race this.
            channel.issue_pending();
            channel.id()
        });
        let adder = thread::spawn(move || registry.add_fallback_channel(probe(2)).unwrap());
        match registry.channel(client, engine) {
            Ok(mut guard) => {
                assert_eq!(guard.id(), 1);
                guard.issue_pending();
            }
            Err(e) => assert_eq!(e, RegistryError::Unknown),
        }
        // Another client's lookup takes the slow path (the state lock after
        // the channel's), against the others' state-then-channel order.
        let refused = registry.channel(stranger, engine).err();
        assert!(
            matches!(
                refused,
                Some(RegistryError::NotOwner | RegistryError::Unknown)
            ),
            "{refused:?}"
        );
        assert_eq!(remover.join().unwrap(), 1);
        let fallback = adder.join().unwrap();
        assert_eq!(
            registry.channel(client, engine).err(),
            Some(RegistryError::Unknown),
            "a removed channel's handle is stale"
        );
        assert_eq!(registry.channel_for_cpu(client, 0), Ok(fallback));
        let mut guard = registry.channel(client, fallback).unwrap();
        assert_eq!(guard.id(), 2);
        guard.issue_pending();
    });
}
