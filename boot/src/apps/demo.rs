//! `./qemu-run.sh` with no mode: a short report of what the stack does.

use dmaengine::drivers::edu;
use dmaengine::mmio::Registers;

use crate::exit::ExitCode;
use crate::mem::{PAGE_SIZE, frames, heap};
use crate::mm::{bytes_to_pages, fr, npages, pg};
use crate::pvh::E820_RAM;
use crate::recover::{Caught, catch};
use crate::{Platform, devices, dma, irq, println, time, trap};

/// Prints the report.
pub fn run(p: &'static Platform) -> ExitCode {
    // Measured first, while no channel holds the chip; the copy-break
    // section below routes copies by it.
    match dma::copy_break() {
        Some(policy) => println!("copy-break: {} bytes (measured)", policy.threshold()),
        None => println!("copy-break: not measured (no LSI53C895A)"),
    }
    println!();
    println!("== memory");
    let ram: u64 = p
        .boot
        .regions()
        .iter()
        .filter(|r| r.kind == E820_RAM)
        .map(|r| r.len)
        .sum();
    println!(
        "  RAM {} MiB in {} map entries",
        ram >> 20,
        p.boot.regions().len()
    );
    println!(
        "  frame allocator: {} free frames ({} MiB) at boot, {} now; heap {} KiB used",
        p.frames_at_boot,
        (p.frames_at_boot as u64 * PAGE_SIZE) >> 20,
        frames::free_frames(),
        heap::used() >> 10
    );
    println!("  NX {}", if p.nx { "on" } else { "unsupported" });

    println!("== time and interrupts");
    let mhz = p.tsc_hz / 1_000_000;
    println!(
        "  TSC {mhz} MHz (calibrated against the PIT), timer at {} mHz",
        time::tick_millihz()
    );
    let before = time::ticks();
    let start = time::now_ns();
    while time::now_ns() - start < 100_000_000 {
        x86_64::instructions::hlt();
    }
    println!(
        "  {} timer interrupts in 100 ms of TSC time",
        time::ticks() - before
    );

    println!("== exceptions");
    // SAFETY: the read is meant to fault; `catch` turns the fault into a value.
    match catch(|| unsafe { core::ptr::read_volatile(0x0000_4000_0000_0000 as *const u64) }) {
        Err(Caught::Exception(fault)) => println!("  caught: {fault}"),
        other => println!("  expected a page fault, got {other:?}"),
    }

    println!("== PCI bus 0");
    for dev in &p.pci {
        println!("  {dev}");
    }

    println!("== edu device");
    match devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID)
        .and_then(|d| devices::map_bar(d, 0))
    {
        Some(regs) => println!("  ID register {:#010x}", regs.read(edu::regs::ID)),
        None => println!("  not present (qemu-run.sh adds -device edu)"),
    }
    println!(
        "  interrupts so far: PIT {}, boot CPU's APIC timer {}, spurious {}, exceptions {}",
        irq::count(0),
        crate::apic::ticks(0),
        irq::SPURIOUS.load(core::sync::atomic::Ordering::Relaxed) + crate::apic::spurious(),
        trap::EXCEPTIONS.load(core::sync::atomic::Ordering::Relaxed)
    );
    dma_section();
    mm_section(p.nx);
    concurrency_section();
    user_section(p);
    stray_dma_section(p);
    println!();
    println!("demo done");
    ExitCode::Success
}

/// A ring-3 driver aims its chip at the kernel's first page, which its
/// domain does not map: the IOMMU drops the write and records the fault.
fn stray_dma_section(p: &'static Platform) {
    use crate::user::{self, Exit};

    const KERNEL_PAGE: u64 = 0x10_0000;
    println!("== IOMMU");
    // SAFETY: the kernel image's first page, mapped by the direct map;
    // read only.
    let page =
        || unsafe { core::slice::from_raw_parts(crate::mem::phys_to_virt(KERNEL_PAGE), 4096) };
    let before = page().to_vec();
    match user::run(p, user::rogue_driver(), false) {
        Ok(outcome) if outcome.granted => {
            let faults = outcome
                .dma_faults
                .iter()
                .filter(|f| f.write && f.address == KERNEL_PAGE)
                .count();
            println!(
                "  a ring-3 driver's chip told to write physical {KERNEL_PAGE:#x}: {} fault(s) recorded, the process {}, the page's 4096 bytes {}",
                faults,
                if matches!(outcome.exit, Exit::Code(0)) {
                    "told through dma_faults"
                } else {
                    "not told"
                },
                if page() == &before[..] {
                    "untouched"
                } else {
                    "CHANGED"
                }
            );
        }
        Ok(_) => println!("  no VT-d unit or second LSI53C895A: skipped"),
        Err(e) => println!("  could not build the process: {e}"),
    }
}

/// Copies each CPU makes through the shared channel in the concurrency
/// section, checked by reading them back; `u64::MAX` for a CPU that failed.
static SHARED_COPIES: [core::sync::atomic::AtomicU64; crate::smp::MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; crate::smp::MAX_CPUS];

/// Copies per CPU in the concurrency section.
const COPIES_PER_CPU: u64 = 100;

/// One CPU's share: copies of 256 bytes between two buffers of its own
/// through the one serviced LSI channel, each waited for and checked.
fn shared_copies(cpu: usize) {
    use core::sync::atomic::Ordering;
    use dmaengine::engine::PrepFlags;
    use dmaengine::hal::Dma;

    let report = |n| SHARED_COPIES[cpu].store(n, Ordering::Release);
    let Some(channel) = dma::LSI.serviced_channel() else {
        return report(u64::MAX);
    };
    let (Ok(mut src), Ok(dst)) = (
        Dma::<dma::KernelHal>::new(256),
        Dma::<dma::KernelHal>::new(256),
    ) else {
        return report(u64::MAX);
    };
    for k in 0..COPIES_PER_CPU {
        src.as_mut_slice().fill((cpu as u8) << 4 | k as u8 & 0xf);
        // SAFETY: both buffers are this CPU's own and untouched until the
        // wait below ends.
        let copied = unsafe {
            channel
                .lock()
                .prep_copy(dst.paddr(), src.paddr(), 256, PrepFlags::empty())
        }
        .and_then(|cookie| {
            channel.wait(cookie, &mut time::Delay, core::time::Duration::from_secs(5))
        });
        if copied.is_err() || dst.as_slice() != src.as_slice() {
            return report(u64::MAX);
        }
    }
    report(COPIES_PER_CPU);
}

/// Every CPU copying through one shared channel, and an awaited LSI copy
/// overlapping the edu device's slow one on the executor.
fn concurrency_section() {
    use core::sync::atomic::Ordering;
    use dmaengine::engine::PrepFlags;
    use dmaengine::hal::Dma;

    println!("== concurrency");
    let Ok((channel, line)) = dma::LSI.serviced() else {
        println!("  no LSI53C895A: skipped");
        return;
    };
    let cpus = crate::smp::cpus();
    let before = channel.lock().snapshot().last_used;
    let ran = crate::smp::run_on_all(shared_copies, 10_000_000_000);
    let cookies = channel.lock().snapshot().last_used as i64 - before as i64;
    let counts: alloc::vec::Vec<u64> = (0..cpus)
        .map(|c| SHARED_COPIES[c].load(Ordering::Acquire))
        .collect();
    match ran {
        Ok(())
            if counts.iter().all(|&n| n == COPIES_PER_CPU)
                && cookies == (cpus as u64 * COPIES_PER_CPU) as i64 =>
        {
            println!(
                "  {cpus} CPUs made {COPIES_PER_CPU} checked copies each through one shared LSI channel: {cookies} cookies handed out, none lost"
            )
        }
        _ => println!("  shared channel: per-CPU copies {counts:?} (failed)"),
    }

    let Ok((edu, edu_line)) = dma::EDU.serviced() else {
        println!("  no edu device: the overlap is skipped");
        dma::LSI.release(line);
        return;
    };
    let (Ok(src), Ok(dst)) = (
        Dma::<dma::KernelHal>::new(4096),
        Dma::<dma::KernelHal>::new(4096),
    ) else {
        dma::EDU.release(edu_line);
        dma::LSI.release(line);
        return;
    };
    // The edu copy is prepared first, so both are in flight at once.
    // SAFETY: the buffers live until both waits end and the CPU does not
    // touch them meanwhile; the two copies are disjoint.
    let slow = unsafe {
        edu.lock()
            .prep_copy(dst.paddr(), src.paddr(), 64, PrepFlags::INTERRUPT)
    };
    let start = time::now_ns();
    let mut lsi_done_ns = 0;
    let (mut lsi_ok, mut edu_ok) = (0, false);
    let lsi_copies = async {
        for _ in 0..10 {
            // SAFETY: as for the edu copy; the LSI's half of the buffers.
            let cookie = unsafe {
                channel.lock().prep_copy(
                    dst.paddr() + 2048,
                    src.paddr() + 2048,
                    2048,
                    PrepFlags::INTERRUPT,
                )
            };
            if let Ok(cookie) = cookie
                && channel.completion(cookie).await.is_ok()
            {
                lsi_ok += 1;
            }
        }
        lsi_done_ns = time::now_ns() - start;
    };
    let edu_copy = async {
        if let Ok(cookie) = slow {
            edu_ok = edu.completion(cookie).await.is_ok();
        }
    };
    let together = {
        let (mut a, mut b) = (core::pin::pin!(edu_copy), core::pin::pin!(lsi_copies));
        crate::executor::run(&mut [a.as_mut(), b.as_mut()], 10_000_000_000)
    };
    let total_ns = time::now_ns() - start;
    dma::EDU.release(edu_line);
    dma::LSI.release(line);
    match together {
        Ok(()) if lsi_ok == 10 && edu_ok => println!(
            "  awaited together: 10 LSI copies done after {} us while the edu device's slow copy took {} ms",
            lsi_done_ns / 1000,
            total_ns / 1_000_000
        ),
        Ok(()) => println!(
            "  awaited together: {lsi_ok}/10 LSI copies and the edu copy ok: {edu_ok} (failed)"
        ),
        Err(_) => println!("  awaited together: timed out"),
    }
}

/// Copies through the LSI53C895A's SCRIPTS processor and the CPU engine.
fn dma_section() {
    use dmaengine::engine::{Engine, PrepFlags};
    use dmaengine::hal::Dma;

    println!("== DMA copy engines");
    let mut lsi = match dma::LSI.channel() {
        Ok(chan) => chan,
        Err(e) => {
            println!("  no LSI53C895A channel: {e}");
            return;
        }
    };
    let limits = lsi.engine().limits();
    println!(
        "  LSI53C895A SCRIPTS engine: {:?}, {} bytes per Memory Move, DMA mask {:#x}",
        lsi.engine().capabilities(),
        limits.max_len,
        limits.dma_mask
    );
    let (Ok(mut src), Ok(dst)) = (
        Dma::<dma::KernelHal>::new(1 << 20),
        Dma::<dma::KernelHal>::new(1 << 20),
    ) else {
        println!("  no DMA memory");
        return;
    };
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 31 + 7) as u8;
    }
    // One untimed copy first: QEMU sets up its view of fresh guest memory
    // on first DMA, which would otherwise be counted.
    // SAFETY: both buffers are ours and untouched until `wait` returns.
    if let Ok(c) = unsafe { lsi.prep_copy(dst.paddr(), src.paddr(), 1 << 20, PrepFlags::empty()) } {
        let _ = lsi.wait(c, &mut time::Delay, core::time::Duration::from_secs(1));
    }
    let start = time::rdtsc();
    let transfer = match lsi.copy(dst, 0, src, 0, 1 << 20, PrepFlags::empty()) {
        Ok(t) => t,
        Err(e) => {
            println!("  prep failed: {}", e.error);
            return;
        }
    };
    let cookie = transfer.cookie();
    lsi.issue_pending();
    match transfer.wait(
        &mut lsi,
        &mut time::Delay,
        core::time::Duration::from_secs(1),
    ) {
        Ok((dst, Some(src))) => {
            let ns = time::cycles_to_ns(time::rdtsc() - start);
            let same = dst.as_slice() == src.as_slice();
            println!(
                "  1 MiB copy, cookie {cookie}: {} us, destination {}",
                ns / 1000,
                if same { "matches" } else { "DIFFERS" }
            );
            let mut cpu = dma::cpu_channel();
            let start = time::rdtsc();
            // The CPU engine needs no warm-up: it copies through the direct map.
            // SAFETY: both buffers are ours and untouched until `wait` returns.
            let c = unsafe { cpu.prep_copy(dst.paddr(), src.paddr(), 1 << 20, PrepFlags::empty()) };
            if let Ok(c) = c {
                let _ = cpu.wait(c, &mut time::Delay, core::time::Duration::from_secs(1));
                let cpu_ns = time::cycles_to_ns(time::rdtsc() - start);
                println!(
                    "  the same copy on the CPU engine: {} us ({}x slower under TCG)",
                    cpu_ns / 1000,
                    cpu_ns / ns.max(1)
                );
            }
        }
        Ok(_) => println!("  copy finished without its source"),
        Err(e) => println!("  copy did not complete: {e:?}"),
    }
    let snapshot = lsi.snapshot();
    println!(
        "  channel snapshot: last completed {}, last used {}",
        snapshot.last_completed, snapshot.last_used
    );
    copy_break_section(&mut lsi);
}

/// Small and large copies routed by the copy-break measured as the demo began.
fn copy_break_section(lsi: &mut dma::LsiChannel) {
    use dmaengine::engine::PrepFlags;
    use dmaengine::engine::copybreak::Routed;
    use dmaengine::hal::Dma;

    let Some(policy) = dma::copy_break() else {
        return;
    };
    println!(
        "  copy-break measured as the demo began: below {} bytes the CPU engine is faster here",
        policy.threshold()
    );
    let mut cpu = dma::cpu_channel();
    let mask = lsi.limits().dma_mask;
    let (Ok(mut src), Ok(dst)) = (
        Dma::<dma::KernelHal>::new_below(64 << 10, mask),
        Dma::<dma::KernelHal>::new_below(64 << 10, mask),
    ) else {
        return;
    };
    src.as_mut_slice().fill(0x5c);
    for len in [256usize, 64 << 10] {
        // SAFETY: both buffers are ours and untouched until the wait ends.
        let routed = unsafe {
            policy.copy(
                &mut cpu,
                &mut **lsi,
                dst.paddr(),
                src.paddr(),
                len,
                PrepFlags::empty(),
            )
        };
        let timeout = core::time::Duration::from_secs(1);
        let (done, on) = match routed {
            Ok(Routed::Cpu(c)) => (cpu.wait(c, &mut time::Delay, timeout), "the CPU engine"),
            Ok(Routed::Engine(c)) => (lsi.wait(c, &mut time::Delay, timeout), "the LSI53C895A"),
            Err(e) => (Err(e), "no channel"),
        };
        let same = dst.as_slice()[..len] == src.as_slice()[..len];
        println!(
            "  a {len}-byte copy went to {on}: {}",
            match (done, same) {
                (Ok(()), true) => "done, destination matches",
                (Ok(()), false) => "done, destination DIFFERS",
                (Err(_), _) => "FAILED",
            }
        );
    }
}

/// Pages inserted into a user address space and the edu BAR remapped into
/// it, read through the MMU.
fn mm_section(nx: bool) {
    use dmaengine::mm::pte::{CacheMode, PAGE_4K};
    use dmaengine::mm::vma::{PageProt, VmFlags};

    println!("== page-table insertion");
    let db = crate::mm::db();
    let Ok(mut space) = crate::mm::new_space(nx) else {
        println!("  no address space");
        return;
    };
    let flags = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED | VmFlags::MAYWRITE;
    let area = 1u64 << 39;
    let (Ok(pages_vma), Ok(io_vma)) = (
        space.map_vma(pg(area), npages(area, area + 4 * PAGE_4K), flags),
        space.map_vma(
            pg(area + (1 << 30)),
            npages(area + (1 << 30), area + (1 << 30) + PAGE_4K),
            flags,
        ),
    ) else {
        println!("  no areas");
        return;
    };
    let pages: alloc::vec::Vec<_> = (0..4).filter_map(|_| db.alloc_page().ok()).collect();
    for (i, p) in pages.iter().enumerate() {
        // SAFETY: the page is ours, reached through the direct map.
        unsafe {
            crate::mem::phys_to_virt(p.phys().as_u64())
                .cast::<u64>()
                .write_volatile(0xda7a_0000 + i as u64)
        };
    }
    if let Err(e) = space.insert_pages(pages_vma, pg(area), &pages) {
        println!("  insert_pages: {:?}", e.error);
        return;
    }
    let bar = devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID).and_then(|d| d.mem_bar(0));
    let remapped = bar.map(|(pa, _)| {
        // SAFETY: edu's BAR 0: device memory, which the kernel never hands out as RAM.
        unsafe {
            space.io_remap_pfn_range(
                io_vma,
                pg(area + (1 << 30)),
                fr(pa / PAGE_4K),
                bytes_to_pages(PAGE_4K),
                PageProt::READ_ONLY,
                CacheMode::Uncached,
            )
        }
    });
    let (words, id) = crate::mm::with_loaded(&mut space, |_| {
        // SAFETY: these addresses were just mapped in the loaded space.
        let words: alloc::vec::Vec<u64> = (0..4)
            .map(|i| unsafe { core::ptr::read_volatile((area + i * PAGE_4K) as *const u64) })
            .collect();
        let id = matches!(remapped, Some(Ok(())))
            // SAFETY: the edu BAR is mapped uncached there.
            .then(|| unsafe { core::ptr::read_volatile((area + (1 << 30)) as *const u32) });
        (words, id)
    });
    println!("  4 pages inserted with insert_pages, read through the MMU: {words:x?}");
    if let Some(p) = pages.first().and_then(|p| db.state(fr(p.pfn()))) {
        println!(
            "  first page: {} references, {} mappings",
            p.refcount, p.mapcount
        );
    }
    match id {
        Some(id) => {
            println!("  edu BAR remapped uncached with io_remap_pfn_range: ID register {id:#010x}")
        }
        None => println!("  edu BAR not remapped: {remapped:?}"),
    }
    let flags = space.vma(io_vma).map(|v| v.flags);
    println!("  remapped area flags: {flags:?}");
}

/// A ring-3 process that maps pages, has the LSI53C895A copy into them and
/// reads a device through its own mapping; then one that faults.
fn user_section(p: &'static Platform) {
    use crate::user::{self, Exit};

    println!("== ring-3 processes");
    match user::run(p, user::story(), true) {
        Ok(outcome) => match outcome.exit {
            Exit::Code(0) => println!("  the process exited 0: every check it made held"),
            other => println!("  the process ended with {other:?}"),
        },
        Err(e) => println!("  could not build the process: {e}"),
    }
    match user::run(p, user::faulting(), false).map(|o| o.exit) {
        Ok(Exit::Killed(fault)) => println!(
            "  a process reading an unmapped address was ended: {fault}; the kernel goes on"
        ),
        other => println!("  the faulting process: {other:?}"),
    }
}
