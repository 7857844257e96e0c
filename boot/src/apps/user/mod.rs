//! Ring-3 processes: an address space built with `dmaengine::mm`, entered
//! with `iretq`, served through `int 0x80`.
//!
//! A process runs synchronously inside [`run`]: the kernel enters ring 3
//! under [`recover::catch`], and the process comes back by `exit`, by a CPU
//! exception (which ends the process, not the kernel), or by the test
//! watchdog. System calls:
//!
//! | rax | call | arguments | returns |
//! |---|---|---|---|
//! | 0 | exit | code | (does not return) |
//! | 1 | write | buffer, length | bytes written; -28 once the process's output would pass 64 KiB ([`MAX_OUTPUT`]) |
//! | 2 | map_pages | count | address of `count` fresh pages (`insert_pages`) |
//! | 3 | dma_copy | dst, src, length | 0, after the LSI53C895A copied between the caller's own pages (behind the IOMMU when there is one: the chip then reaches only those pages) |
//! | 4 | map_device | - | address of the edu device's register page, read-only (`io_remap_pfn_range`, UC): a write there ends the process, as the page holds edu's DMA registers and edu is confined to no pages of the process's |
//! | 5 | unmap | address, count | 0, after `zap_range` of `count` pages from `map_pages` |
//! | 6 | grant_lsi | - | address of the second LSI53C895A's registers (uncached), the chip now the caller's, behind a domain of its own (needs a VT-d unit) |
//! | 7 | iommu_map | address, count, iova | 0, after the caller's `count` heap pages from `address` are mapped for the chip at `iova` (each page counted until the process ends) |
//! | 8 | dma_faults | - | DMA faults the unit recorded for the caller's chip since the last call (the kernel keeps the first [`MAX_KEPT_FAULTS`] for [`Outcome::dma_faults`] and counts the rest) |
//!
//! Calls 6-8 are the user-space driver model (UIO/VFIO): the process
//! programs the chip itself (SCRIPTS in its own memory, DSP, ISTAT), and the
//! chip's memory reads and writes reach only the pages the process mapped
//! into its domain. When the process ends, the chip is stopped first, then
//! detached, then the domain dropped (every page reference given back,
//! every table freed).
//!
//! The domain confines memory DMA and nothing else, so a process given the
//! chip is trusted with two things the kernel cannot take from it here:
//! - I/O ports: with DMODE.DIOM (SIOM) set, a Memory Move's destination
//!   (source) is PCI I/O space, which no VT-d unit sees (QEMU's lsi uses
//!   `pci_io_as`), and SCRIPTS can set DMODE themselves with a register
//!   write from inside the chain, so hiding the register page would not
//!   help: the process can write (and read) any I/O port, this kernel's
//!   PIC, PCI configuration and debug-exit ports included. Interrupt
//!   remapping does not change this.
//! - Interrupt messages: a Memory Move to 0xfee0_0000-0xfeef_ffff is an
//!   interrupt request, which VT-d checks only with interrupt remapping,
//!   and `qemu-run.sh` runs the unit with `intremap=off`: the chip can send
//!   any vector to any CPU. Vectors that push an error code (17, 21, 29,
//!   30, and 8 and 10-14 if the APIC accepts vectors below 16 from a
//!   message, which hardware refuses and QEMU's emulation may not) arrive
//!   without one and mis-frame the trap frame (`trap.rs`). The handlers that take no EOI for
//!   their own interrupts (the spurious vector 0xff, the 8259s' vectors)
//!   take one for a message the local APIC has in service, so such a
//!   message does not leave the CPU's interrupts blocked.
//!
//! Until interrupt remapping is on, a ring-3 driver of this chip is as
//! trusted as the kernel with interrupts, and it always is with I/O ports.
//!
//! Errors are negative: -14 (bad address), -12 (no memory), -22 (bad
//! argument), -5 (the copy failed), -19 (no device), -28 (no room left
//! for output). Every user pointer is
//! checked page by page against the process's own page tables: a bad one is
//! an error value, never a kernel fault. Counts and lengths are checked
//! before any sum, and a call that fails changes nothing: a `dma_copy`
//! enters the ring as one batch or not at all. README.md's "Bad input"
//! matrix lists every bad input the tests throw at these calls.
//!
//! Here: the layout, building and running a process; `syscalls` serves the
//! calls, `grant` holds the ring-3 driver's chip and domain, `programs` the
//! ring-3 code.

mod grant;
mod programs;
mod syscalls;

use grant::Grant;
pub use grant::{GRANT_IOVA, GRANT_IOVA_SIZE, GRANT_REGS};

pub use programs::{
    BENCH_DRIVER_COPIES, bench_driver, copy_on_write, edu_dma, endless_writer, faulting,
    lsi_driver, msi_driver_27, msi_driver_ff, privileged, rogue_driver, rogue_driver_100, spinning,
    story, unmapping,
};
pub use syscalls::TRANSLATED_COPIES;

use alloc::string::String;
use alloc::vec::Vec;
use core::arch::global_asm;
use core::sync::atomic::{AtomicPtr, Ordering};
use core::time::Duration;

use dmaengine::drivers::{edu, lsi53c895a};
use dmaengine::engine::{DmaError, Op, PrepFlags};
use dmaengine::iommu::{self, DomainId};
use dmaengine::mm::MmError;
use dmaengine::mm::frame::PageRef;
use dmaengine::mm::pte::{self, CacheMode, PAGE_4K};
use dmaengine::mm::space::VmaId;
use dmaengine::mm::vma::{PageProt, VmFlags};

use crate::dma::{LSI, LsiChannel};
use crate::mm::{Space, bytes_to_pages, db, fr, mapper, new_space, npages, pg, va, with_loaded};
use crate::recover::{self, Caught, Fault};
use crate::trap::TrapFrame;
use crate::{Platform, devices, gdt, mem, print, time};

/// Where a process's code is loaded (PML4 slot 1; slot 0 is the kernel).
pub const CODE: u64 = (1 << 39) + (4 << 20);
/// The top of its stack.
const STACK_TOP: u64 = (1 << 39) + (8 << 20);
const STACK_PAGES: u64 = 4;
/// Where `map_pages` puts pages.
pub const HEAP: u64 = (1 << 39) + (256 << 20);
const HEAP_SIZE: u64 = 16 << 20;
/// A copy-on-write page of initial data (private, writable).
pub const DATA: u64 = (1 << 39) + (12 << 20);
/// The first word of that page as the process starts.
pub const DATA_WORD: u64 = 0x1111_2222;
/// Where a script's system calls are read from (read-only to the process).
pub const SCRIPT: u64 = (1 << 39) + (14 << 20);
/// Where a script's results are written (one `i64` per call).
const RESULTS: u64 = (1 << 39) + (15 << 20);
/// Calls one script holds: a page of 32-byte entries, less the end marker.
const MAX_SCRIPT_CALLS: usize = (PAGE_4K as usize / 32) - 1;
/// Heap pages whose bytes [`Outcome::heap`] reports.
const HEAP_SNAPSHOT_PAGES: u64 = 4;
/// Where `map_device` puts the edu registers.
pub const DEVICE: u64 = (1 << 39) + (512 << 20);
/// The longest `dma_copy`.
const MAX_COPY: u64 = 1 << 20;
/// The most output one process keeps, in bytes as stored (invalid UTF-8
/// is kept as U+FFFD, three bytes a byte): ring 3 must not be able to fill
/// the kernel's heap by writing. A `write` that would pass it gets
/// [`ENOSPC`] and keeps nothing, so what was kept is whole calls.
pub const MAX_OUTPUT: usize = 64 << 10;
/// The DMA faults one process's [`Outcome`] keeps: a granted chip can
/// fault for ever (one record a `dma_faults` call), and every record kept
/// is kernel heap. Faults past these are counted, not kept.
pub const MAX_KEPT_FAULTS: usize = 64;

const SHARED_RW: VmFlags = VmFlags::READ
    .union(VmFlags::WRITE)
    .union(VmFlags::SHARED)
    .union(VmFlags::MAYWRITE);

/// The system calls' numbers (`rax`), as in the table above.
pub mod sys {
    /// `exit(code)`.
    pub const EXIT: u64 = 0;
    /// `write(buffer, length)`.
    pub const WRITE: u64 = 1;
    /// `map_pages(count)`.
    pub const MAP_PAGES: u64 = 2;
    /// `dma_copy(dst, src, length)`.
    pub const DMA_COPY: u64 = 3;
    /// `map_device()`.
    pub const MAP_DEVICE: u64 = 4;
    /// `unmap(address, count)`.
    pub const UNMAP: u64 = 5;
    /// `grant_lsi()`.
    pub const GRANT_LSI: u64 = 6;
    /// `iommu_map(address, count, iova)`.
    pub const IOMMU_MAP: u64 = 7;
    /// `dma_faults()`.
    pub const DMA_FAULTS: u64 = 8;
}

/// Bad address.
pub const EFAULT: i64 = -14;
/// No memory.
pub const ENOMEM: i64 = -12;
/// Bad argument.
pub const EINVAL: i64 = -22;
/// The copy failed.
pub const EIO: i64 = -5;
/// No such device (or no grant).
pub const ENODEV: i64 = -19;
/// Taken already.
pub const EBUSY: i64 = -16;
/// No room left (the process's output is full).
pub const ENOSPC: i64 = -28;

/// How a process ended.
#[derive(Debug)]
pub enum Exit {
    /// It called `exit(code)`.
    Code(u64),
    /// It took this exception and was ended.
    Killed(Fault),
    /// The watchdog ended it.
    Hung,
}

/// A process's end and everything it wrote.
#[derive(Debug)]
pub struct Outcome {
    /// How it ended.
    pub exit: Exit,
    /// Its `write` output.
    pub output: String,
    /// The first word of the original data page after the run: a write by
    /// the process went to its private copy, so this is still `DATA_WORD`.
    pub original_data_word: u64,
    /// What each call of a script returned (empty for other programs).
    pub results: Vec<i64>,
    /// The bytes of the first heap pages as the process ended (zeros where
    /// nothing was mapped).
    pub heap: Vec<u8>,
    /// The DMA faults the unit recorded for a granted chip (those the
    /// process read with `dma_faults` included), the first
    /// [`MAX_KEPT_FAULTS`] of them.
    pub dma_faults: Vec<iommu::DmaFault>,
    /// The faults recorded past those.
    pub dma_faults_dropped: u64,
    /// Whether the process had a chip granted.
    pub granted: bool,
}

/// One system call of a script: number and three arguments.
pub type Call = [u64; 4];

struct Process {
    /// The machine it runs on: its PCI devices are what `grant_lsi` may
    /// hand out.
    platform: &'static Platform,
    space: Space,
    data: PageRef<'static>,
    /// The script's page and its results page, for `run_script`.
    script: Option<(PageRef<'static>, PageRef<'static>)>,
    heap: VmaId,
    heap_next: u64,
    device: VmaId,
    /// Where `grant_lsi` maps the granted chip's registers.
    grant_regs: VmaId,
    lsi: Option<LsiChannel>,
    /// The chip granted to the process (`grant_lsi`), if any.
    grant: Option<Grant>,
    /// DMA faults recorded for the granted chip so far (at most
    /// [`MAX_KEPT_FAULTS`]).
    dma_faults: Vec<iommu::DmaFault>,
    /// Faults recorded past those.
    dma_faults_dropped: u64,
    output: String,
    echo: bool,
}

/// The process running now (only while `run` is inside ring 3).
static CURRENT: AtomicPtr<Process> = AtomicPtr::new(core::ptr::null_mut());

global_asm!(
    r#"
    .section .text
    .global enter_user
/* noreturn enter_user(rip, rsp, cs, ss) */
enter_user:
    push rcx
    push rsi
    push 0x202
    push rdx
    push rdi
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor esi, esi
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    iretq
"#
);

unsafe extern "C" {
    fn enter_user(rip: u64, rsp: u64, cs: u64, ss: u64) -> !;
}

fn build(
    platform: &'static Platform,
    program: &[u8],
    echo: bool,
    calls: Option<&[Call]>,
) -> Result<Process, MmError> {
    let mut space = new_space(platform.nx)?;
    let code_pages = (program.len() as u64).div_ceil(PAGE_4K).max(1);
    let code = space.map_vma(
        pg(CODE),
        npages(CODE, CODE + code_pages * PAGE_4K),
        VmFlags::READ | VmFlags::EXEC,
    )?;
    let stack = space.map_vma(
        pg(STACK_TOP - STACK_PAGES * PAGE_4K),
        npages(STACK_TOP - STACK_PAGES * PAGE_4K, STACK_TOP),
        SHARED_RW,
    )?;
    let heap = space.map_vma(pg(HEAP), npages(HEAP, HEAP + HEAP_SIZE), SHARED_RW)?;
    let device = space.map_vma(
        pg(DEVICE),
        npages(DEVICE, DEVICE + PAGE_4K),
        VmFlags::READ | VmFlags::SHARED,
    )?;
    let grant_regs = space.map_vma(
        pg(GRANT_REGS),
        npages(GRANT_REGS, GRANT_REGS + PAGE_4K),
        SHARED_RW,
    )?;
    let cow = VmFlags::READ | VmFlags::WRITE | VmFlags::MAYWRITE;
    let data_vma = space.map_vma(pg(DATA), npages(DATA, DATA + PAGE_4K), cow)?;
    let data = zeroed_page()?;
    // SAFETY: the page is ours and mapped by the direct map.
    unsafe {
        mem::phys_to_virt(data.phys().as_u64())
            .cast::<u64>()
            .write(DATA_WORD)
    };
    space.insert_page(data_vma, pg(DATA), &data)?;
    let mut code_frames = Vec::new();
    for chunk in program.chunks(PAGE_4K as usize) {
        let page = zeroed_page()?;
        // SAFETY: the page is ours, not mapped anywhere yet, and at least
        // `chunk.len()` bytes long.
        unsafe {
            core::ptr::copy_nonoverlapping(
                chunk.as_ptr(),
                mem::phys_to_virt(page.phys().as_u64()),
                chunk.len(),
            )
        };
        code_frames.push(page);
    }
    space
        .insert_pages(code, pg(CODE), &code_frames)
        .map_err(|e| e.error)?;
    let stack_frames = (0..STACK_PAGES)
        .map(|_| zeroed_page())
        .collect::<Result<Vec<_>, _>>()?;
    space
        .insert_pages(stack, pg(STACK_TOP - STACK_PAGES * PAGE_4K), &stack_frames)
        .map_err(|e| e.error)?;
    let script = match calls {
        Some(calls) => {
            let table = zeroed_page()?;
            let words = calls.iter().flatten().copied().chain([u64::MAX, 0, 0, 0]);
            for (i, word) in words.enumerate() {
                // SAFETY: the page is ours; `calls` fits in it (checked by
                // `run_script`), so `i` stays below 512.
                unsafe {
                    mem::phys_to_virt(table.phys().as_u64())
                        .cast::<u64>()
                        .add(i)
                        .write(word)
                };
            }
            let results = zeroed_page()?;
            let ro = space.map_vma(pg(SCRIPT), npages(SCRIPT, SCRIPT + PAGE_4K), VmFlags::READ)?;
            space.insert_page(ro, pg(SCRIPT), &table)?;
            let rw = space.map_vma(pg(RESULTS), npages(RESULTS, RESULTS + PAGE_4K), SHARED_RW)?;
            space.insert_page(rw, pg(RESULTS), &results)?;
            Some((table, results))
        }
        None => None,
    };
    Ok(Process {
        platform,
        space,
        data,
        script,
        heap,
        heap_next: HEAP,
        device,
        grant_regs,
        lsi: None,
        grant: None,
        dma_faults: Vec::new(),
        dma_faults_dropped: 0,
        output: String::new(),
        echo,
    })
}

/// A zeroed page from the frame database.
fn zeroed_page() -> Result<PageRef<'static>, MmError> {
    let page = db().alloc_page()?;
    // SAFETY: the page was just allocated to us; the direct map covers it.
    unsafe { mem::phys_to_virt(page.phys().as_u64()).write_bytes(0, PAGE_4K as usize) };
    Ok(page)
}

/// Runs `program` (position-independent machine code, entered at its first
/// byte) in ring 3 until it ends. With `echo`, its writes go to the console
/// as well.
pub fn run(platform: &'static Platform, program: &[u8], echo: bool) -> Result<Outcome, MmError> {
    run_process(build(platform, program, echo, None)?)
}

/// Runs a process that makes the system calls `calls` in turn (with any
/// numbers at all: this is how bad input is thrown at the kernel), records
/// each result in [`Outcome::results`], and exits 0.
pub fn run_script(platform: &'static Platform, calls: &[Call]) -> Result<Outcome, MmError> {
    if calls.len() > MAX_SCRIPT_CALLS {
        return Err(MmError::OutOfRange);
    }
    let mut outcome = run_process(build(
        platform,
        programs::script_runner(),
        false,
        Some(calls),
    )?)?;
    outcome.results.truncate(calls.len());
    Ok(outcome)
}

fn run_process(mut process: Process) -> Result<Outcome, MmError> {
    static TRAPS: spin::Once = spin::Once::new();
    TRAPS.call_once(syscalls::register_traps);
    CURRENT.store(&raw mut process, Ordering::Release);
    let exit = with_loaded(&mut process.space, |_| {
        let ended = recover::catch(|| {
            // SAFETY: the loaded space maps the code at CODE and a stack
            // below STACK_TOP, and shares the kernel's slots, so the traps
            // that bring control back all work.
            unsafe {
                enter_user(
                    CODE,
                    STACK_TOP,
                    gdt::USER_CODE.0.into(),
                    gdt::USER_DATA.0.into(),
                )
            }
        });
        match ended {
            Ok(()) => unreachable!("ring 3 is left only through a trap"),
            Err(Caught::Exited(code)) => Exit::Code(code),
            Err(Caught::Exception(fault)) => Exit::Killed(fault),
            Err(Caught::Watchdog) => Exit::Hung,
            Err(Caught::Panic(message)) => {
                panic!("kernel panic in a system call: {}", message.as_str())
            }
        }
    });
    CURRENT.store(core::ptr::null_mut(), Ordering::Release);
    let granted = process.grant.is_some();
    process.collect_faults();
    process.grant = None;
    // SAFETY: the kernel's own reference keeps the original page alive;
    // the direct map covers it.
    let original_data_word = unsafe {
        mem::phys_to_virt(process.data.phys().as_u64())
            .cast::<u64>()
            .read()
    };
    let results = process.script.as_ref().map_or_else(Vec::new, |(_, page)| {
        // SAFETY: the results page is still referenced by us; the direct
        // map covers it.
        let words = unsafe {
            core::slice::from_raw_parts(mem::phys_to_virt(page.phys().as_u64()).cast::<i64>(), 512)
        };
        words.to_vec()
    });
    let mut heap = Vec::new();
    for i in 0..HEAP_SNAPSHOT_PAGES {
        let at = va(HEAP + i * PAGE_4K);
        match process.space.translate(at).and_then(|l| l.phys_of(at)) {
            // SAFETY: a page the process maps, still alive; direct-mapped.
            Some(pa) => heap.extend_from_slice(unsafe {
                core::slice::from_raw_parts(mem::phys_to_virt(pa.as_u64()), PAGE_4K as usize)
            }),
            None => heap.resize(heap.len() + PAGE_4K as usize, 0),
        }
    }
    Ok(Outcome {
        exit,
        output: core::mem::take(&mut process.output),
        original_data_word,
        results,
        heap,
        dma_faults: core::mem::take(&mut process.dma_faults),
        dma_faults_dropped: process.dma_faults_dropped,
        granted,
    })
}
