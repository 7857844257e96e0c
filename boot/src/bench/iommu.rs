//! IOMMU benchmarks, each side by side in one run: mapping 64 MiB of pages
//! into a VT-d domain against inserting them into a CPU address space (the
//! same walker, another entry format); the entries a 1 GiB remap writes;
//! 1 MiB LSI53C895A copies with translation on against off, and against a
//! hand-written chain behind the same domain; and small copies by the
//! ring-3 driver against the kernel's channel.

use alloc::vec::Vec;

use dmaengine::engine::PrepFlags;
use dmaengine::iommu::{self, DomainId};
use dmaengine::mm::frame::PageRef;
use dmaengine::mm::vma::{PageProt, VmFlags};
use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::bare::{BareChip, RawScript};
use super::report;
use crate::dma::{LSI, LSI2, LsiChannel};
use crate::iommu::{source_of, take};
use crate::mm::{db, mapper, new_space};
use crate::{platform, println, time};

const PAGES: usize = (64 << 20) / 4096;
const ROUNDS: usize = 5;
const AREA: u64 = 1 << 39;
const RW: VmFlags = VmFlags::READ
    .union(VmFlags::WRITE)
    .union(VmFlags::SHARED)
    .union(VmFlags::MAYWRITE);

fn page(addr: u64) -> Page {
    Page::containing_address(VirtAddr::new(addr))
}

/// `n` copies of `len` bytes from DMA address `src` to `dst` through
/// `chan`, each waited for; returns the nanoseconds they took.
///
/// # Safety
/// Both ranges must be the caller's memory, touched by nothing else until
/// this returns.
unsafe fn copies_ns(chan: &mut LsiChannel, src: u64, dst: u64, len: usize, n: u64) -> u64 {
    let start = time::rdtsc();
    for _ in 0..n {
        // SAFETY: the caller gives both ranges over to the copies, and each
        // copy is waited for before the next and before the return.
        let c = unsafe { chan.prep_copy(dst, src, len, PrepFlags::empty()) }.expect("prep");
        chan.wait(c, &mut time::Delay, core::time::Duration::from_secs(5))
            .expect("copy");
    }
    time::cycles_to_ns(time::rdtsc() - start)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run() {
    let Ok(unit) = take() else {
        println!("iommu benchmarks skipped: no DMA-remapping unit (IOMMU=off?)");
        return;
    };
    let Ok(pages) = (0..PAGES)
        .map(|_| db().alloc_page())
        .collect::<Result<Vec<PageRef<'static>>, _>>()
    else {
        println!("iommu benchmarks skipped: not enough pages");
        return;
    };
    let id = DomainId::new(2).expect("a domain id");
    let (mut dom_v, mut cpu_v) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut domain = iommu::domain(&unit, id, db(), mapper(), db()).expect("a domain");
        let area = domain.map_vma(page(AREA), PAGES as u64, RW).expect("area");
        let start = time::rdtsc();
        for (i, chunk) in pages.chunks(512).enumerate() {
            domain
                .insert_pages(area, page(AREA + (i * 512 * 4096) as u64), chunk)
                .expect("map");
        }
        dom_v.push(time::cycles_to_ns(time::rdtsc() - start) as f64 / PAGES as f64);
        drop(domain);
        let mut space = new_space(platform().nx).expect("a space");
        let area = space.map_vma(page(AREA), PAGES as u64, RW).expect("area");
        let start = time::rdtsc();
        for (i, chunk) in pages.chunks(512).enumerate() {
            space
                .insert_pages(area, page(AREA + (i * 512 * 4096) as u64), chunk)
                .expect("insert");
        }
        cpu_v.push(time::cycles_to_ns(time::rdtsc() - start) as f64 / PAGES as f64);
    }
    let (dom, cpu) = (median(dom_v), median(cpu_v));
    report("iommu.map.ns_per_page", dom, "ns");
    report("iommu.map_vs_insert_pages.ratio", dom / cpu, "x");
    drop(pages);

    // 1 GiB of IOVA space over 1 GiB of physical memory from 0.
    let mut domain = iommu::domain(&unit, id, db(), mapper(), db()).expect("a domain");
    domain.set_1g_pages(true);
    let area = domain.map_vma(page(1 << 30), 1 << 18, RW).expect("area");
    let before = domain.entries_written();
    let frame = PhysFrame::containing_address(PhysAddr::new(0));
    // SAFETY: the first GiB of physical memory at IOVA 1 GiB, for the device only; no device is
    // attached to this domain, which is dropped right after.
    unsafe { domain.remap_pfn_range(area, page(1 << 30), frame, 1 << 18, PageProt::READ_WRITE) }
        .expect("remap 1 GiB");
    report(
        "iommu.map_1GiB.entries",
        (domain.entries_written() - before) as f64,
        "count",
    );
    drop(domain);
    copy_with_and_without_translation(&unit);
    // The ring-3 driver takes the unit itself.
    drop(unit);
    user_driver_vs_kernel();
}

/// 64-byte copies one after the other by the ring-3 driver (its own
/// SCRIPTS, started through DSP, ISTAT polled, behind its domain) against
/// the kernel's channel on the same chip (prepared, issued and waited for,
/// translation off), three runs of each, alternating.
fn user_driver_vs_kernel() {
    const LEN: usize = 64;
    let copies = crate::user::BENCH_DRIVER_COPIES;
    let (mut user_runs, mut kernel_runs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let Ok(outcome) = crate::user::run(crate::platform(), crate::user::bench_driver(), false)
        else {
            return;
        };
        match outcome.exit {
            crate::user::Exit::Code(cycles) if cycles >= 100 => {
                user_runs.push(copies as f64 * 1e9 / time::cycles_to_ns(cycles) as f64);
            }
            other => {
                println!("user driver benchmark: the process ended {other:?}");
                return;
            }
        }
        let (Ok(mut chip), Ok(src), Ok(dst)) = (
            crate::dma::LSI2.channel(),
            dmaengine::hal::Dma::<crate::dma::KernelHal>::new(4096),
            dmaengine::hal::Dma::<crate::dma::KernelHal>::new(4096),
        ) else {
            return;
        };
        // SAFETY: both buffers were just allocated and are used by nothing
        // else.
        let ns = unsafe { copies_ns(&mut chip, src.paddr(), dst.paddr(), LEN, copies) } as f64;
        kernel_runs.push(copies as f64 * 1e9 / ns);
    }
    let (user, kernel) = (median(user_runs), median(kernel_runs));
    report("user.lsi_driver.copies_per_s", user, "copies/s");
    report("user.lsi_driver.kernel_copies_per_s", kernel, "copies/s");
    report("user.lsi_driver_vs_kernel.ratio", user / kernel, "x");
}

/// A 2 MiB run of frames, given back when dropped.
struct Aligned(u64);

impl Aligned {
    fn paddr(&self) -> u64 {
        self.0
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let _ = crate::mem::frames::free_contiguous(self.0, 512);
    }
}

/// 1 MiB LSI53C895A copies, translation on (buffers mapped at their own
/// addresses in the chip's domain) and off, alternating; and, with it on,
/// a hand-written chain of the same copy (one Memory Move, an INT) on the
/// second chip, attached to the same domain: same buffers, same leaves, so
/// what QEMU's translation costs (QEMU-FACTS: "VT-d and Memory Moves") is
/// paid alike and the ratio is the driver's own cost with translation on.
fn copy_with_and_without_translation(unit: &crate::iommu::Unit) {
    const SIZE: usize = 1 << 20;
    const N: usize = 40;
    let (Ok(mut lsi), Some(dev), Some(mut chip), Some(second), Some(mut raw)) = (
        LSI.channel(),
        LSI.device(),
        BareChip::take(),
        LSI2.device(),
        RawScript::new(1),
    ) else {
        return;
    };
    // 2 MiB-aligned buffers, so the domain maps each with one 2 MiB entry
    // and QEMU translates a whole copy with one IOTLB entry.
    let (Ok(src_pa), Ok(dst_pa)) = (
        crate::mem::frames::alloc_contiguous(512, 512),
        crate::mem::frames::alloc_contiguous(512, 512),
    ) else {
        return;
    };
    let (src, dst) = (Aligned(src_pa), Aligned(dst_pa));
    let id = DomainId::new(3).expect("a domain id");
    let mut domain = iommu::domain(unit, id, db(), mapper(), db()).expect("a domain");
    let (block, len) = lsi.engine().dma_block();
    let (chain, chain_len) = raw.range();
    for (at, bytes) in [
        (block, len),
        (chain, chain_len),
        (src.paddr(), 2 * SIZE),
        (dst.paddr(), 2 * SIZE),
    ] {
        let pages = (bytes as u64).div_ceil(4096);
        let area = domain.map_vma(page(at), pages, RW).expect("area");
        let frame = PhysFrame::containing_address(PhysAddr::new(at));
        // SAFETY: the chip's DMA block, the chain and the benchmark's two buffers, held until
        // the domain is dropped at the end of this function; for the devices only.
        unsafe { domain.remap_pfn_range(area, page(at), frame, pages, PageProt::READ_WRITE) }
            .expect("identity");
    }
    raw.build(core::iter::once((
        SIZE as u32,
        src.paddr() as u32,
        dst.paddr() as u32,
    )));
    let (source, second) = (source_of(dev), source_of(second));
    // SAFETY: the domain outlives both attachments (detached below); the
    // second chip is stopped (`BareChip::take`).
    unsafe {
        unit.attach(source, id, domain.root()).expect("attach");
        unit.attach(second, id, domain.root()).expect("attach");
    }
    // The chain, translation on.
    let mut run_raw = || {
        unit.enable().expect("on");
        let ns = time::cycles_to_ns(raw.run(&mut chip, N));
        (SIZE * N) as f64 / ns as f64
    };
    let mut run = |on: bool| {
        if on {
            unit.enable().expect("on");
        } else {
            // SAFETY: both chips are idle between runs, and the domain maps
            // the buffers and the chain at their own physical addresses.
            unsafe { unit.disable() }.expect("off");
        }
        // SAFETY: both buffers are ours for the whole benchmark.
        let ns = unsafe { copies_ns(&mut lsi, src.paddr(), dst.paddr(), SIZE, N as u64) };
        (SIZE * N) as f64 / ns as f64
    };
    run(true);
    run_raw();
    let (mut on, mut off, mut raw_on) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..9 {
        // The chain and the API's "on" run side by side, alternating which
        // goes first.
        if round % 2 == 0 {
            raw_on.push(run_raw());
            on.push(run(true));
            off.push(run(false));
        } else {
            off.push(run(false));
            on.push(run(true));
            raw_on.push(run_raw());
        }
    }
    // SAFETY: both chips are idle (every run waited for its copies).
    let _ = unsafe { unit.disable() };
    unit.detach(source).expect("detach");
    unit.detach(second).expect("detach");
    let (on, off, raw_on) = (median(on), median(off), median(raw_on));
    report("iommu.copy.lsi.1MiB.on.gbps", on, "GB/s");
    report("iommu.copy.lsi.1MiB.off.gbps", off, "GB/s");
    report("iommu.copy.lsi.1MiB.ratio", on / off, "x");
    report("iommu.copy.raw.1MiB.on.gbps", raw_on, "GB/s");
    report("iommu.copy.lsi_vs_raw.1MiB.on.ratio", on / raw_on, "x");
    assert_eq!(unit.take_fault(), None, "no fault while benchmarking");
}
