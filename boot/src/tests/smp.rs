//! Every CPU at once: jobs on the application processors, one LSI channel
//! shared by all of them, and each CPU on a channel of its own. With
//! `SMP=1` the same tests run on the boot CPU alone.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use dmaengine::engine::{Channel, Engine, PrepFlags};
use dmaengine::hal::Dma;

use super::dma::{TIMEOUT, dst_pattern};
use crate::dma::{
    CpuChannel, EduChannel, KernelHal, LsiChannel, cpu_channel, edu_channel, lsi_channel,
    release_lsi, second_lsi_channel, serviced_lsi, serviced_lsi_channel,
};
use crate::harness::Test;
use crate::rng::Rng;
use crate::smp::{self, MAX_CPUS};
use crate::time::Delay;

/// Only with two CPUs or more.
pub const SHOOTDOWN_TESTS: &[Test] = &[Test::new(
    "smp.a_zap_shoots_down_another_cpus_translation",
    zap_is_seen_by_another_cpu,
)];

pub const TESTS: &[Test] = &[
    Test::new("smp.every_cpu_runs_a_job", every_cpu_runs_a_job),
    Test::new(
        "smp.all_cpus_share_one_lsi_channel",
        all_cpus_share_one_lsi_channel,
    ),
    Test::new(
        "smp.each_cpu_copies_on_its_own_channel_at_once",
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
    let Some(channel) = serviced_lsi_channel() else {
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
    let (channel, line) = serviced_lsi();
    let before = channel.lock().snapshot().last_used;
    let outcome = smp::run_on_all(shared_job, JOB_TIMEOUT_NS);
    let after = channel.lock().snapshot();
    release_lsi(line);
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

/// The channels of the per-CPU test, taken by the CPU that runs each.
static LSI_OWN: spin::Mutex<Option<LsiChannel>> = spin::Mutex::new(None);
static LSI2_OWN: spin::Mutex<Option<LsiChannel>> = spin::Mutex::new(None);
static EDU_OWN: spin::Mutex<Option<EduChannel>> = spin::Mutex::new(None);
static CPU_OWN: [spin::Mutex<Option<CpuChannel>>; MAX_CPUS] =
    [const { spin::Mutex::new(None) }; MAX_CPUS];

fn copies_on<E: Engine>(cpu: usize, channel: &mut Channel<E>, count: usize) -> u64 {
    copies_with(cpu, count, |dst, src, len| {
        // SAFETY: inside this CPU's own buffers, read after the wait.
        let cookie =
            unsafe { channel.prep_copy(dst, src, len, PrepFlags::empty()) }.map_err(|_| ())?;
        channel.wait(cookie, &mut Delay, TIMEOUT).map_err(|_| ())
    })
}

fn own_job(cpu: usize) {
    let done = match cpu {
        0 => LSI_OWN
            .lock()
            .as_mut()
            .map(|c| copies_on(cpu, &mut **c, 300)),
        // The edu device takes 200 ms a copy: a few.
        1 => EDU_OWN.lock().as_mut().map(|c| copies_on(cpu, &mut **c, 3)),
        2 => LSI2_OWN
            .lock()
            .as_mut()
            .map(|c| copies_on(cpu, &mut **c, 300)),
        _ => CPU_OWN[cpu].lock().as_mut().map(|c| copies_on(cpu, c, 300)),
    };
    match done {
        Some(n) => REPORT[cpu].store(n, Ordering::Release),
        None => error(cpu),
    }
}

/// CPU 0 on the first LSI53C895A, CPU 1 on the edu device, CPU 2 on the
/// second LSI53C895A, the others on CPU engines of their own, all copying
/// at once, every byte checked.
fn each_cpu_on_its_own_channel() {
    reset_reports();
    *LSI_OWN.lock() = Some(lsi_channel().expect("LSI"));
    if smp::cpus() > 1 {
        *EDU_OWN.lock() = Some(edu_channel().expect("edu"));
    }
    if smp::cpus() > 2 {
        *LSI2_OWN.lock() = Some(second_lsi_channel().expect("second LSI53C895A"));
    }
    for slot in CPU_OWN.iter().take(smp::cpus()).skip(3) {
        *slot.lock() = Some(cpu_channel());
    }
    let outcome = smp::run_on_all(own_job, JOB_TIMEOUT_NS);
    LSI_OWN.lock().take();
    LSI2_OWN.lock().take();
    EDU_OWN.lock().take();
    for slot in &CPU_OWN {
        slot.lock().take();
    }
    outcome.expect("every CPU finished");
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
