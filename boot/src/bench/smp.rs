//! Submission from every CPU at once: each on a channel of its own against
//! all on one shared channel (CPU engines, so the engine is never the
//! bottleneck and the difference is the sharing).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

use dmaengine::drivers::cpu::CpuEngine;
use dmaengine::engine::shared::X86Interrupts;
use dmaengine::engine::{Channel, PrepFlags, SharedChannel, Status};
use dmaengine::hal::Dma;

use super::report;
use crate::dma::KernelHal;
use crate::{println, smp, time};

/// Requests each CPU submits per run.
const REQUESTS: usize = 4000;
const LEN: usize = 64;

type SharedCpu = SharedChannel<CpuEngine<KernelHal>, X86Interrupts>;

static SHARED: spin::Mutex<Option<Arc<SharedCpu>>> = spin::Mutex::new(None);
/// Requests that did not complete (a benchmark of failures is no result).
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// `REQUESTS` 64-byte copies, each submitted and checked through `submit`.
fn submit_all(mut submit: impl FnMut(u64, u64) -> bool) {
    let (Ok(src), Ok(dst)) = (
        Dma::<KernelHal>::new(LEN * 64),
        Dma::<KernelHal>::new(LEN * 64),
    ) else {
        FAILED.fetch_add(REQUESTS, Ordering::Relaxed);
        return;
    };
    for i in 0..REQUESTS {
        let at = ((i % 64) * LEN) as u64;
        if !submit(dst.paddr() + at, src.paddr() + at) {
            FAILED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn own_job(_cpu: usize) {
    let mut channel = Channel::new(CpuEngine::<KernelHal>::new());
    submit_all(|dst, src| {
        // SAFETY: this job's own buffers, untouched by the CPU meanwhile.
        let Ok(c) = (unsafe { channel.prep_copy(dst, src, LEN, PrepFlags::empty()) }) else {
            return false;
        };
        channel.issue_pending();
        channel.status(c).status == Status::Complete
    });
}

fn shared_job(_cpu: usize) {
    let Some(channel) =
        x86_64::instructions::interrupts::without_interrupts(|| SHARED.lock().clone())
    else {
        FAILED.fetch_add(REQUESTS, Ordering::Relaxed);
        return;
    };
    submit_all(|dst, src| {
        let mut channel = channel.lock();
        // SAFETY: as in `own_job`.
        let Ok(c) = (unsafe { channel.prep_copy(dst, src, LEN, PrepFlags::empty()) }) else {
            return false;
        };
        channel.issue_pending();
        channel.status(c).status == Status::Complete
    });
}

/// Requests per second of `job` on every CPU at once.
fn rate(job: fn(usize)) -> Option<f64> {
    FAILED.store(0, Ordering::Relaxed);
    let start = time::rdtsc();
    smp::run_on_all(job, 60_000_000_000).ok()?;
    let ns = time::cycles_to_ns(time::rdtsc() - start).max(1);
    (FAILED.load(Ordering::Relaxed) == 0).then(|| (REQUESTS * smp::cpus()) as f64 * 1e9 / ns as f64)
}

pub fn run() {
    let shared = Arc::new(SharedChannel::new(Channel::new(CpuEngine::new())));
    x86_64::instructions::interrupts::without_interrupts(|| *SHARED.lock() = Some(shared.clone()));
    // Warm-up, then the two alternately, best of three each.
    let _ = rate(own_job);
    let (mut own, mut together) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        own = own.max(rate(own_job).unwrap_or(0.0));
        together = together.max(rate(shared_job).unwrap_or(0.0));
    }
    x86_64::instructions::interrupts::without_interrupts(|| SHARED.lock().take());
    if own == 0.0 || together == 0.0 {
        println!("smp benchmark: a run failed, no result");
        return;
    }
    report("dma.submit.cpus", smp::cpus() as f64, "cpus");
    report("dma.submit.percpu.per_s", own, "requests/s");
    report("dma.submit.shared.per_s", together, "requests/s");
    report("dma.submit.percpu_vs_shared.ratio", own / together, "x");
}
