//! Every CPU at once: jobs on the application processors, one LSI channel
//! shared by all of them, and each CPU on a channel of its own. With
//! `SMP=1` the same tests run on the boot CPU alone.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use dmaengine::engine::registry::{ChannelHandle, ClientId, Event, EventCallback, Registry};
use dmaengine::engine::shared::X86Interrupts;
use dmaengine::engine::{Channel, Engine, PrepFlags};
use dmaengine::hal::Dma;

use super::dma::{TIMEOUT, dst_pattern};
use crate::dma::{EDU, KernelHal, LSI, LSI2, cpu_channel};
use crate::harness::Test;
use crate::rng::Rng;
use crate::smp::{self, MAX_CPUS};
use crate::time::Delay;

/// Only with two CPUs or more.
pub const MULTI_CPU_TESTS: &[Test] = &[
    Test::new(
        "smp.a_zap_shoots_down_another_cpus_translation",
        zap_is_seen_by_another_cpu,
    ),
    Test::new(
        "smp.a_failed_job_parks_its_cpu_and_a_restart_brings_it_back",
        failed_job_parks_its_cpu,
    ),
];

/// Reads an address nothing maps.
fn faulting_job(_cpu: usize) {
    // SAFETY: deliberately unsound: the read faults, which is the point.
    unsafe { core::ptr::read_volatile(0x4000_dead_0000 as *const u64) };
}

fn panicking_job(_cpu: usize) {
    panic!("a deliberate panic on an AP");
}

/// A job that faults, one that panics, then one that overflows its stack,
/// on the last CPU: each is
/// recorded for that CPU (the vector and address, the message), the CPU
/// parks instead of unwinding into the boot CPU's test (whose `catch` it
/// would corrupt: this test goes on running), `wait_for` says the job did
/// not end, and a restart (INIT-SIPI-SIPI again) brings the CPU back to run
/// jobs with the others.
fn failed_job_parks_its_cpu() {
    use crate::recover::ApFailure;
    let cpu = smp::cpus() - 1;
    smp::start_on(cpu, faulting_job);
    assert!(
        !smp::wait_for(cpu, JOB_TIMEOUT_NS),
        "a faulted job never ends"
    );
    match smp::failure(cpu) {
        Some(ApFailure::Fault(f)) => assert_eq!((f.vector, f.cr2), (14, 0x4000_dead_0000)),
        Some(other) => panic!("CPU {cpu} recorded {other}"),
        None => panic!("CPU {cpu} recorded nothing"),
    }
    assert!(smp::restart(cpu), "CPU {cpu} restarted");
    assert!(smp::failure(cpu).is_none());
    smp::start_on(cpu, panicking_job);
    assert!(
        !smp::wait_for(cpu, JOB_TIMEOUT_NS),
        "a panicked job never ends"
    );
    match smp::failure(cpu) {
        Some(ApFailure::Panic(m)) => {
            assert!(m.as_str().contains("deliberate panic"), "{}", m.as_str())
        }
        Some(other) => panic!("CPU {cpu} recorded {other}"),
        None => panic!("CPU {cpu} recorded nothing"),
    }
    assert!(smp::restart(cpu), "CPU {cpu} restarted again");
    // An overflow: the guard page below the AP's stack faults, the CPU
    // cannot push that fault's frame there either, and the double fault
    // runs on the AP's own IST stack.
    smp::start_on(cpu, overflowing_job);
    assert!(
        !smp::wait_for(cpu, JOB_TIMEOUT_NS),
        "an overflowed job never ends"
    );
    match smp::failure(cpu) {
        Some(ApFailure::Fault(f)) => assert_eq!(f.vector, 8, "a double fault"),
        Some(other) => panic!("CPU {cpu} recorded {other}"),
        None => panic!("CPU {cpu} recorded nothing"),
    }
    assert!(smp::restart(cpu), "CPU {cpu} restarted a third time");
    every_cpu_runs_a_job();
}

/// Recurses until the stack runs out.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    let frame = core::hint::black_box([depth; 32]);
    recurse(depth + 1).wrapping_add(frame[depth as usize % 32])
}

fn overflowing_job(_cpu: usize) {
    core::hint::black_box(recurse(0));
}

pub const TESTS: &[Test] = &[
    Test::new("smp.every_cpu_runs_a_job", every_cpu_runs_a_job),
    Test::new(
        "smp.all_cpus_share_one_lsi_channel",
        all_cpus_share_one_lsi_channel,
    ),
    Test::new(
        "smp.each_cpu_copies_at_once_on_the_channel_one_shared_registry_gave_it",
        each_cpu_on_its_own_channel,
    ),
];

/// How long a test gives the other CPUs.
const JOB_TIMEOUT_NS: u64 = 20_000_000_000;

/// What each CPU reported: a value, or u64::MAX for "did not run".
static REPORT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
/// Errors each CPU met (a job must not panic: it counts instead).
static ERRORS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

fn reset_reports() {
    for cpu in 0..MAX_CPUS {
        REPORT[cpu].store(u64::MAX, Ordering::Release);
        ERRORS[cpu].store(0, Ordering::Release);
    }
}

fn error(cpu: usize) {
    ERRORS[cpu].fetch_add(1, Ordering::AcqRel);
}

fn check_reports(what: &str) -> Vec<u64> {
    let n = smp::cpus();
    let reports: Vec<u64> = (0..n).map(|c| REPORT[c].load(Ordering::Acquire)).collect();
    let errors: Vec<usize> = (0..n).map(|c| ERRORS[c].load(Ordering::Acquire)).collect();
    assert!(
        errors.iter().all(|&e| e == 0),
        "{what}: errors per CPU {errors:?}"
    );
    assert!(
        reports.iter().all(|&r| r != u64::MAX),
        "{what}: a CPU did not report ({reports:?})"
    );
    reports
}

/// Each CPU reports its own index through its own job.
fn every_cpu_runs_a_job() {
    reset_reports();
    smp::run_on_all(
        |cpu| REPORT[cpu].store(cpu as u64, Ordering::Release),
        JOB_TIMEOUT_NS,
    )
    .expect("every CPU ran its job");
    let reports = check_reports("jobs");
    assert_eq!(reports, (0..smp::cpus() as u64).collect::<Vec<_>>());
}

/// Copies one CPU makes on a channel; returns how many, or counts an
/// error. `submit` prepares a copy and `wait` waits for it.
fn copies_with(
    cpu: usize,
    count: usize,
    mut copy: impl FnMut(u64, u64, usize) -> Result<(), ()>,
) -> u64 {
    const LEN: usize = 8192;
    let (Ok(mut src), Ok(mut dst)) = (Dma::<KernelHal>::new(LEN), Dma::<KernelHal>::new(LEN))
    else {
        error(cpu);
        return 0;
    };
    let mut rng = Rng::from_seed(0x5eed_0000 + cpu as u64);
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = 0x80 | ((i * 7 + cpu * 31) as u8 & 0x7f);
    }
    dst.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = dst_pattern(i));
    let mut model: Vec<u8> = dst.as_slice().to_vec();
    for _ in 0..count {
        let len = 1 + rng.below(512) as usize;
        let from = rng.below((LEN - len) as u64) as usize;
        let to = rng.below((LEN - len) as u64) as usize;
        if copy(dst.paddr() + to as u64, src.paddr() + from as u64, len).is_err() {
            error(cpu);
            return 0;
        }
        model[to..to + len].copy_from_slice(&src.as_slice()[from..from + len]);
    }
    if dst.as_slice() != &model[..] {
        error(cpu);
    }
    count as u64
}

const SHARED_COPIES: usize = 150;

fn shared_job(cpu: usize) {
    let Some(channel) = LSI.serviced_channel() else {
        error(cpu);
        return;
    };
    let done = copies_with(cpu, SHARED_COPIES, |dst, src, len| {
        // SAFETY: inside this CPU's own buffers, read after the wait.
        let cookie = unsafe { channel.lock().prep_copy(dst, src, len, PrepFlags::empty()) }
            .map_err(|_| ())?;
        channel
            .wait(cookie, &mut Delay, Duration::from_secs(5))
            .map_err(|_| ())
    });
    REPORT[cpu].store(done, Ordering::Release);
}

/// Every CPU makes 150 random copies through the one shared LSI channel at
/// the same time (each waiting for each of its copies), into buffers of its
/// own checked against a model; no cookie is lost: the channel's last cookie
/// moved by exactly the number of copies, and all of them completed.
fn all_cpus_share_one_lsi_channel() {
    reset_reports();
    let (channel, line) = LSI.serviced().expect("LSI53C895A channel");
    let before = channel.lock().snapshot().last_used;
    let outcome = smp::run_on_all(shared_job, JOB_TIMEOUT_NS);
    let after = channel.lock().snapshot();
    LSI.release(line);
    drop(channel);
    outcome.expect("every CPU finished");
    let reports = check_reports("shared channel");
    let total: u64 = reports.iter().sum();
    assert_eq!(total, (SHARED_COPIES * smp::cpus()) as u64);
    assert_eq!(
        after.last_used as i64 - before as i64,
        total as i64,
        "one cookie per copy, none lost"
    );
    assert_eq!(after.last_completed, after.last_used, "every copy ended");
}

/// The per-CPU test's registry, shared by every CPU (it is `Sync`), with
/// its locks taken with interrupts off.
static REGISTRY: Registry<'static, 2, { MAX_CPUS + 3 }, X86Interrupts> = Registry::new();
/// The registry's client: one channel per CPU.
static CLIENT: spin::Once<ClientId> = spin::Once::new();

fn ignore_event(_client: ClientId, _event: Event, _context: usize) {}

fn copies_on(cpu: usize, handle: ChannelHandle, count: usize) -> u64 {
    let Some(&client) = CLIENT.get() else {
        error(cpu);
        return 0;
    };
    copies_with(cpu, count, |dst, src, len| {
        let mut channel = REGISTRY.channel(client, handle).map_err(|_| ())?;
        // SAFETY: inside this CPU's own buffers, read after the wait.
        let cookie = unsafe { channel.memcpy_buf_to_buf(dst, src, len) }.map_err(|_| ())?;
        channel.wait(cookie, &mut Delay, TIMEOUT).map_err(|_| ())
    })
}

fn own_job(cpu: usize) {
    let Some(handle) = CLIENT
        .get()
        .and_then(|&client| REGISTRY.channel_for_cpu(client, cpu).ok())
    else {
        error(cpu);
        return;
    };
    // The edu device takes 200 ms a copy (CPU 1 gets it): a few.
    let count = if cpu == 1 { 3 } else { 300 };
    REPORT[cpu].store(copies_on(cpu, handle, count), Ordering::Release);
}

/// A channel lent to the registry for the test: its handle, and the box
/// that owns it (a `Box<T>` as a raw pointer) with the function that frees
/// it once the registry has given the channel back.
struct Lent {
    handle: ChannelHandle,
    owner: *mut (),
    free: unsafe fn(*mut ()),
}

/// Frees a box `lend` made.
///
/// # Safety
/// `owner` is a `Box<T>` from `Box::into_raw` in `lend`, no reference into
/// it is left (the registry gave its channel back), and it is freed once.
unsafe fn free_box<T>(owner: *mut ()) {
    // SAFETY: per the contract above.
    drop(unsafe { Box::from_raw(owner.cast::<T>()) });
}

/// Lends `owner`'s channel (`as_channel` finds it) to the registry, which
/// holds `'static` channels, as an engine or a fallback channel.
fn lend<T: Send + 'static, E: Engine + Send + 'static>(
    owner: T,
    as_channel: fn(&mut T) -> &mut Channel<E>,
    fallback: bool,
) -> Lent {
    let owner = Box::into_raw(Box::new(owner));
    // SAFETY: the box lives until `free_box`, which runs only after the
    // registry has given this reference back (`remove_channel`).
    let channel: &'static mut Channel<E> = as_channel(unsafe { &mut *owner });
    let handle = if fallback {
        REGISTRY.add_fallback_channel(channel)
    } else {
        REGISTRY.add_channel(channel)
    }
    .expect("room in the registry");
    Lent {
        handle,
        owner: owner.cast(),
        free: free_box::<T>,
    }
}

/// The registry hands one client a channel per CPU: the first LSI53C895A
/// to CPU 0, the edu device to CPU 1, the second LSI53C895A to CPU 2 (in
/// the order they were added) and CPU-engine fallbacks to the others. Every
/// CPU looks its channel up and copies through the one shared registry at
/// the same time, every byte checked.
fn each_cpu_on_its_own_channel() {
    reset_reports();
    let client = *CLIENT.call_once(|| {
        REGISTRY
            .register_client(EventCallback {
                func: ignore_event,
                context: 0,
            })
            .expect("room for the client")
    });
    REGISTRY
        .request_per_cpu(client, smp::cpus())
        .expect("the client asks");
    let mut lent = Vec::new();
    lent.push(lend(LSI.channel().expect("LSI"), |c| &mut **c, false));
    if smp::cpus() > 1 {
        lent.push(lend(EDU.channel().expect("edu"), |c| &mut **c, false));
    }
    if smp::cpus() > 2 {
        let second = LSI2.channel().expect("second LSI53C895A");
        lent.push(lend(second, |c| &mut **c, false));
    }
    for _ in 3..smp::cpus() {
        lent.push(lend(cpu_channel(), |c| c, true));
    }
    let spread: Vec<Option<ChannelHandle>> = (0..smp::cpus())
        .map(|cpu| REGISTRY.channel_for_cpu(client, cpu).ok())
        .collect();
    let outcome = smp::run_on_all(own_job, JOB_TIMEOUT_NS);
    REGISTRY
        .request_per_cpu(client, 0)
        .expect("the client lets go");
    for Lent {
        handle,
        owner,
        free,
    } in lent.iter()
    {
        let given_back = REGISTRY.remove_channel(*handle).is_ok();
        assert!(given_back, "the registry gives back what it was lent");
        // SAFETY: the registry gave the channel back (the reference it
        // returned is dropped), and each box is freed once.
        unsafe { free(*owner) };
    }
    outcome.expect("every CPU finished");
    assert_eq!(
        spread,
        lent.iter().map(|l| Some(l.handle)).collect::<Vec<_>>(),
        "CPU n got the n-th channel added"
    );
    let reports = check_reports("own channels");
    for (cpu, &n) in reports.iter().enumerate() {
        assert!(n > 0, "CPU {cpu} copied nothing");
    }
}

/// The shootdown test's shared state: the space's root, the kernel's, what
/// CPU 1 read before and after, and how far the two CPUs got.
static SHOOT_ROOT: AtomicU64 = AtomicU64::new(0);
static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);
static BEFORE: AtomicU64 = AtomicU64::new(0);
static AFTER: AtomicU64 = AtomicU64::new(0);
static STAGE: AtomicU32 = AtomicU32::new(0);

/// Spins until `STAGE` is `stage`, for at most 5 s.
fn await_stage(stage: u32) -> bool {
    let start = crate::time::now_ns();
    while STAGE.load(Ordering::Acquire) != stage {
        if crate::time::now_ns() - start > 5_000_000_000 {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn reader_job(cpu: usize) {
    let (root, kernel) = (
        SHOOT_ROOT.load(Ordering::Acquire),
        KERNEL_ROOT.load(Ordering::Acquire),
    );
    // SAFETY: the space outlives the job (the test waits for it) and shares
    // the kernel's mappings; the job goes back to the kernel's tables.
    unsafe { smp::load_root(cpu, root, kernel) };
    BEFORE.store(super::mm::read(super::mm::AREA), Ordering::Release);
    STAGE.store(1, Ordering::Release);
    if await_stage(2) {
        AFTER.store(super::mm::read(super::mm::AREA), Ordering::Release);
    } else {
        error(cpu);
    }
    // SAFETY: as above.
    unsafe { smp::load_root(cpu, 0, kernel) };
}

/// CPU 1 loads a user space and reads a page (its TLB now holds the
/// translation); CPU 0 zaps the page and inserts another frame there; CPU
/// 1 reads again and must see the new frame. QEMU does not snoop
/// page-table writes, so without the shootdown CPU 1 reads the old frame
/// through its stale translation (checked by skipping it). One shootdown
/// round for the zap.
fn zap_is_seen_by_another_cpu() {
    use crate::mm::{db, npages, pg};
    reset_reports();
    STAGE.store(0, Ordering::Release);
    let db = db();
    let mut space = super::mm::space();
    let area = super::mm::AREA;
    let v = space
        .map_vma(pg(area), npages(area, area + 4096), super::mm::SHARED_RW)
        .expect("vma");
    let (old, new) = (
        db.alloc_page().expect("page"),
        db.alloc_page().expect("page"),
    );
    super::mm::fill(&old, 0xaaaa_0000);
    super::mm::fill(&new, 0xbbbb_0000);
    space.insert_page(v, pg(area), &old).expect("insert");
    SHOOT_ROOT.store(space.root().start_address().as_u64(), Ordering::Release);
    KERNEL_ROOT.store(crate::mm::kernel_root(), Ordering::Release);
    smp::start_on(1, reader_job);
    let loaded = await_stage(1);
    let rounds = smp::shootdown_rounds();
    space.zap_range(v, pg(area), 1).expect("zap");
    let rounds = smp::shootdown_rounds() - rounds;
    space.insert_page(v, pg(area), &new).expect("insert");
    STAGE.store(2, Ordering::Release);
    let finished = smp::wait_for(1, JOB_TIMEOUT_NS);
    drop(space);
    assert!(loaded && finished, "CPU 1 ran its part");
    assert_eq!(ERRORS[1].load(Ordering::Acquire), 0);
    assert_eq!(
        BEFORE.load(Ordering::Acquire),
        0xaaaa_0000,
        "CPU 1 read the old page"
    );
    assert_eq!(
        AFTER.load(Ordering::Acquire),
        0xbbbb_0000,
        "CPU 1 read the new page, not the old one through a stale translation"
    );
    assert_eq!(rounds, 1, "one shootdown round for the zap");
}
