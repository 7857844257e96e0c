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
//! | 1 | write | buffer, length | bytes written |
//! | 2 | map_pages | count | address of `count` fresh pages (`insert_pages`) |
//! | 3 | dma_copy | dst, src, length | 0, after the LSI53C895A copied between the caller's own pages (behind the IOMMU when there is one: the chip then reaches only those pages) |
//! | 4 | map_device | - | address of the edu device's registers (`io_remap_pfn_range`, UC) |
//! | 5 | unmap | address, count | 0, after `zap_range` of `count` pages from `map_pages` |
//! | 6 | grant_lsi | - | address of the second LSI53C895A's registers (uncached), the chip now the caller's, behind a domain of its own (needs a VT-d unit) |
//! | 7 | iommu_map | address, count, iova | 0, after the caller's `count` heap pages from `address` are mapped for the chip at `iova` (each page counted until the process ends) |
//! | 8 | dma_faults | - | DMA faults the unit recorded for the caller's chip since the last call |
//!
//! Calls 6-8 are the user-space driver model (UIO/VFIO): the process
//! programs the chip itself (SCRIPTS in its own memory, DSP, ISTAT), and the
//! chip reaches only the pages the process mapped into its domain. When the
//! process ends, the chip is stopped first, then detached, then the domain
//! dropped (every page reference given back, every table freed).
//!
//! Errors are negative: -14 (bad address), -12 (no memory), -22 (bad
//! argument), -5 (the copy failed), -19 (no device). Every user pointer is
//! checked page by page against the process's own page tables: a bad one is
//! an error value, never a kernel fault. Counts and lengths are checked
//! before any sum, and a call that fails changes nothing: a `dma_copy`
//! enters the ring as one batch or not at all. README.md's "Bad input"
//! matrix lists every bad input the tests throw at these calls.

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
use crate::{devices, gdt, mem, platform, print, time};

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
const DEVICE: u64 = (1 << 39) + (512 << 20);
/// The longest `dma_copy`.
const MAX_COPY: u64 = 1 << 20;

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
    /// process read with `dma_faults` included).
    pub dma_faults: Vec<iommu::DmaFault>,
    /// Whether the process had a chip granted.
    pub granted: bool,
}

/// One system call of a script: number and three arguments.
pub type Call = [u64; 4];

struct Process {
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
    /// DMA faults recorded for the granted chip so far.
    dma_faults: Vec<iommu::DmaFault>,
    output: String,
    echo: bool,
}

/// IOVAs a process may map for its chip: 16 MiB at 1 GiB (below 4 GiB, as
/// SCRIPTS addresses are 32 bits).
pub const GRANT_IOVA: u64 = 0x4000_0000;
pub const GRANT_IOVA_SIZE: u64 = 16 << 20;
/// Where `grant_lsi` maps the chip's registers.
pub const GRANT_REGS: u64 = DEVICE + (1 << 20);
/// The domain id of a process's chip.
const GRANT_DOMAIN: u16 = 6;

/// A chip given to a process: the kernel holds its channel (so nothing
/// else takes the chip, and dropping it stops the chip), the unit (leaked
/// for the grant's life, as a domain borrows it) and the domain.
struct Grant {
    chip: LsiChannel,
    unit: *mut crate::iommu::Exclusive,
    domain: core::mem::ManuallyDrop<crate::iommu::Domain<'static>>,
    area: VmaId,
    source: iommu::SourceId,
}

impl Grant {
    fn unit(&self) -> &crate::iommu::Exclusive {
        // SAFETY: `unit` is the box `grant_lsi` leaked, freed only in `drop`.
        unsafe { &*self.unit }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        // The chip first: it may still be running the process's script,
        // and must not reach a page after the domain lets it go.
        self.chip.terminate();
        let _ = self.unit().detach(self.source);
        // SAFETY: dropped once, here; the chip is stopped and detached.
        unsafe { core::mem::ManuallyDrop::drop(&mut self.domain) };
        // SAFETY: the box `grant_lsi` leaked; the domain that borrowed it
        // is gone, and nothing else refers to it. Dropping the unit turns
        // translation off and frees its tables.
        drop(unsafe { alloc::boxed::Box::from_raw(self.unit) });
    }
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

fn build(program: &[u8], echo: bool, calls: Option<&[Call]>) -> Result<Process, MmError> {
    let mut space = new_space(platform().nx)?;
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
    let device = space.map_vma(pg(DEVICE), npages(DEVICE, DEVICE + PAGE_4K), SHARED_RW)?;
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
pub fn run(program: &[u8], echo: bool) -> Result<Outcome, MmError> {
    run_process(build(program, echo, None)?)
}

/// Runs a process that makes the system calls `calls` in turn (with any
/// numbers at all: this is how bad input is thrown at the kernel), records
/// each result in [`Outcome::results`], and exits 0.
pub fn run_script(calls: &[Call]) -> Result<Outcome, MmError> {
    if calls.len() > MAX_SCRIPT_CALLS {
        return Err(MmError::OutOfRange);
    }
    let mut outcome = run_process(build(script_runner(), false, Some(calls))?)?;
    outcome.results.truncate(calls.len());
    Ok(outcome)
}

fn run_process(mut process: Process) -> Result<Outcome, MmError> {
    static TRAPS: spin::Once = spin::Once::new();
    TRAPS.call_once(register_traps);
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
        granted,
    })
}

impl Process {
    /// The physical pieces of `[va, va + len)` in the caller's address space
    /// if all of it is mapped to counted user pages (writable ones if
    /// `write`).
    fn user_range(&self, addr: u64, len: u64, write: bool) -> Result<Vec<(u64, u64)>, i64> {
        let end = addr
            .checked_add(len)
            .filter(|&e| e <= crate::mm::USER_END)
            .ok_or(EFAULT)?;
        let mut pieces = Vec::new();
        let mut at = addr;
        while at < end {
            // Below the end of the user half: canonical.
            let leaf = self.space.translate(va(at)).ok_or(EFAULT)?;
            let usable = leaf.entry & pte::USER != 0
                && !leaf.is_special()
                && (!write || leaf.entry & pte::WRITABLE != 0);
            if !usable {
                return Err(EFAULT);
            }
            let n = (leaf.va.as_u64() + leaf.size()).min(end) - at;
            pieces.push((leaf.phys().as_u64() + (at - leaf.va.as_u64()), n));
            at += n;
        }
        Ok(pieces)
    }

    fn write(&mut self, va: u64, len: u64) -> i64 {
        if len > 4096 {
            return EINVAL;
        }
        let pieces = match self.user_range(va, len, false) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let mut bytes = Vec::new();
        for (pa, n) in pieces {
            // SAFETY: a user page of the caller's, reached through the direct
            // map; `n` stays inside it.
            bytes.extend_from_slice(unsafe {
                core::slice::from_raw_parts(mem::phys_to_virt(pa), n as usize)
            });
        }
        let text = String::from_utf8_lossy(&bytes);
        if self.echo {
            print!("{text}");
        }
        self.output.push_str(&text);
        len as i64
    }

    fn map_pages(&mut self, count: u64) -> i64 {
        // Checked: a huge count must not wrap past the limit (and make the
        // kernel allocate its whole pool before failing).
        let fits = count
            .checked_mul(PAGE_4K)
            .and_then(|len| self.heap_next.checked_add(len))
            .is_some_and(|end| end <= HEAP + HEAP_SIZE);
        if count == 0 || !fits {
            return EINVAL;
        }
        let Ok(pages) = (0..count)
            .map(|_| zeroed_page())
            .collect::<Result<Vec<_>, _>>()
        else {
            return ENOMEM;
        };
        let at = self.heap_next;
        match self.space.insert_pages(self.heap, pg(at), &pages) {
            Ok(()) => {
                self.heap_next += count * PAGE_4K;
                at as i64
            }
            Err(partial) => {
                let _ = self.space.zap_range(
                    self.heap,
                    pg(at),
                    npages(at, at + partial.inserted as u64 * PAGE_4K),
                );
                ENOMEM
            }
        }
    }

    fn unmap(&mut self, va: u64, count: u64) -> i64 {
        let Some(end) = count
            .checked_mul(PAGE_4K)
            .and_then(|len| va.checked_add(len))
        else {
            return EINVAL;
        };
        if count == 0 || !va.is_multiple_of(PAGE_4K) || va < HEAP || end > self.heap_next {
            return EINVAL;
        }
        // This space is loaded: its flusher invalidates the caller's TLB.
        match self.space.zap_range(self.heap, pg(va), npages(va, end)) {
            Ok(()) => 0,
            Err(_) => ENOMEM,
        }
    }

    fn map_device(&mut self) -> i64 {
        let Some((bar, _)) =
            devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID).and_then(|d| d.mem_bar(0))
        else {
            return ENODEV;
        };
        if self.space.translate(va(DEVICE)).is_some() {
            return DEVICE as i64;
        }
        // SAFETY: edu's BAR 0: device memory, which the kernel never hands out as RAM.
        match unsafe {
            self.space.io_remap_pfn_range(
                self.device,
                pg(DEVICE),
                fr(bar / PAGE_4K),
                bytes_to_pages(PAGE_4K),
                PageProt::READ_WRITE,
                CacheMode::Uncached,
            )
        } {
            Ok(()) => DEVICE as i64,
            Err(_) => ENOMEM,
        }
    }

    /// Gives the process the second LSI53C895A: its register page mapped
    /// uncached, the chip attached to a domain of its own with nothing in
    /// it yet, translation on.
    fn grant_lsi(&mut self) -> i64 {
        if self.grant.is_some() {
            return EBUSY;
        }
        let Some(device) = crate::dma::LSI2.device() else {
            return ENODEV;
        };
        let Some((bar, size)) = device.mem_bar(lsi53c895a::regs::MMIO_BAR) else {
            return ENODEV;
        };
        // The page must hold this BAR alone: mapping it must not hand the
        // process another device's registers.
        let page = bar & !(PAGE_4K - 1);
        let shared = platform().pci.iter().any(|d| {
            (0..6).any(|slot| {
                d.mem_bar(slot).is_some_and(|(at, len)| {
                    (at, len) != (bar, size) && at < page + PAGE_4K && page < at + len
                })
            })
        });
        if bar != page || size > PAGE_4K || shared {
            return ENODEV;
        }
        let Ok(mut chip) = crate::dma::LSI2.channel() else {
            return EBUSY;
        };
        // The channel only reserves the chip: its resident loop is stopped
        // (abort and soft reset), or a DSP write from ring 3 would only move
        // the parked loop's resume point instead of starting its script.
        chip.terminate();
        let Ok(unit) = crate::iommu::take() else {
            return EBUSY;
        };
        let unit = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(unit));
        // SAFETY: leaked just now; freed by `Grant::drop` (or below), after
        // every domain borrowing it is gone.
        let shared_unit: &'static crate::iommu::Exclusive = unsafe { &*unit };
        let id = DomainId::new(GRANT_DOMAIN).expect("a domain id");
        let made = iommu::domain(shared_unit, id, db(), mapper(), db()).and_then(|mut domain| {
            let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
            let area = domain.map_vma(
                pg(GRANT_IOVA),
                npages(GRANT_IOVA, GRANT_IOVA + GRANT_IOVA_SIZE),
                rw,
            )?;
            Ok((domain, area))
        });
        let Ok((domain, area)) = made else {
            // SAFETY: no domain was made, so nothing borrows the unit.
            drop(unsafe { alloc::boxed::Box::from_raw(unit) });
            return ENOMEM;
        };
        let source = crate::iommu::source_of(device);
        let grant = Grant {
            chip,
            unit,
            domain: core::mem::ManuallyDrop::new(domain),
            area,
            source,
        };
        // SAFETY: the domain outlives the attachment: `Grant::drop` detaches
        // before it drops the domain.
        let attached = unsafe { grant.unit().attach(source, id, grant.domain.root()) };
        if attached.is_err() || grant.unit().enable().is_err() {
            return EIO;
        }
        // SAFETY: the chip's BAR: device memory, which the kernel never hands out as RAM.
        let regs = unsafe {
            self.space.io_remap_pfn_range(
                self.grant_regs,
                pg(GRANT_REGS),
                fr(bar / PAGE_4K),
                1,
                PageProt::READ_WRITE,
                CacheMode::Uncached,
            )
        };
        if regs.is_err() {
            return ENOMEM;
        }
        self.grant = Some(grant);
        GRANT_REGS as i64
    }

    /// Maps the caller's `count` heap pages from `va` for its chip at
    /// `iova`, each page counted (kept alive) until the process ends.
    fn iommu_map(&mut self, va: u64, count: u64, iova: u64) -> i64 {
        let Some(grant) = self.grant.as_mut() else {
            return ENODEV;
        };
        let (Some(len), true) = (count.checked_mul(PAGE_4K), count > 0) else {
            return EINVAL;
        };
        let fits = iova
            .checked_add(len)
            .is_some_and(|end| iova >= GRANT_IOVA && end <= GRANT_IOVA + GRANT_IOVA_SIZE);
        if !fits || !iova.is_multiple_of(PAGE_4K) || !va.is_multiple_of(PAGE_4K) {
            return EINVAL;
        }
        if va < HEAP || va.checked_add(len).is_none_or(|end| end > self.heap_next) {
            return EFAULT;
        }
        let mut pages = Vec::new();
        for i in 0..count {
            let at = crate::mm::va(va + i * PAGE_4K);
            let Some(page) = self
                .space
                .translate(at)
                .and_then(|leaf| leaf.frame_of(at))
                .and_then(|frame| db().get(frame))
            else {
                return EFAULT;
            };
            pages.push(page);
        }
        match grant.domain.insert_pages(grant.area, pg(iova), &pages) {
            Ok(()) => 0,
            Err(partial) => {
                // All or nothing: the pages the call did map come out again.
                if partial.inserted > 0 {
                    let _ = grant
                        .domain
                        .zap_range(grant.area, pg(iova), partial.inserted as u64);
                }
                if partial.error == MmError::Busy {
                    EBUSY
                } else {
                    ENOMEM
                }
            }
        }
    }

    /// Reads every fault the unit recorded (the unit is the process's).
    fn collect_faults(&mut self) -> usize {
        let Some(grant) = self.grant.as_ref() else {
            return 0;
        };
        let before = self.dma_faults.len();
        while let Some(fault) = grant.unit().take_fault() {
            self.dma_faults.push(fault);
        }
        self.dma_faults.len() - before
    }

    fn dma_copy(&mut self, dst_va: u64, src_va: u64, len: u64) -> i64 {
        if len == 0 || len > MAX_COPY {
            return EINVAL;
        }
        let (dst, src) = match (
            self.user_range(dst_va, len, true),
            self.user_range(src_va, len, false),
        ) {
            (Ok(d), Ok(s)) => (d, s),
            _ => return EFAULT,
        };
        if self.lsi.is_none() {
            self.lsi = LSI.channel().ok();
        }
        let Some(chan) = self.lsi.as_mut() else {
            return ENODEV;
        };
        // Walk both lists of pieces together, one copy per overlap. The
        // pieces enter the ring as one batch, whole or not at all: a piece
        // refused after others were written must not leave those to run
        // on a later call.
        let mut ops = Vec::new();
        let (mut di, mut si, mut doff, mut soff) = (0, 0, 0, 0);
        while di < dst.len() && si < src.len() {
            let n = (dst[di].1 - doff).min(src[si].1 - soff);
            ops.push(Op::Copy {
                dst: dst[di].0 + doff,
                src: src[si].0 + soff,
                len: n as usize,
            });
            doff += n;
            soff += n;
            if doff == dst[di].1 {
                (di, doff) = (di + 1, 0);
            }
            if soff == src[si].1 {
                (si, soff) = (si + 1, 0);
            }
        }
        if crate::iommu::base().is_some() {
            // The same refusal as the direct path: a piece whose sides
            // overlap runs nothing.
            let overlap = ops.iter().any(|op| {
                matches!(*op, Op::Copy { dst, src, len }
                    if dst < src + len as u64 && src < dst + len as u64)
            });
            if overlap {
                return EINVAL;
            }
            return self.dma_copy_translated(dst_va, src_va, len);
        }
        // SAFETY: both sides are the caller's own mapped pages, which stay
        // mapped (the process is stopped in this call) until the copy has
        // ended below; a refused batch prepared nothing.
        let batch = match unsafe { chan.prep_batch(&ops, PrepFlags::empty()) } {
            Ok(batch) => batch,
            Err(DmaError::NoMemory) => return ENOMEM,
            Err(_) => return EINVAL,
        };
        match chan.wait(batch.last, &mut time::Delay, Duration::from_secs(2)) {
            Ok(()) => 0,
            Err(_) => {
                // Whatever is still in flight must end before we return.
                chan.terminate();
                let _ = chan.reset();
                EIO
            }
        }
    }
}

/// `dma_copy` calls served through the IOMMU so far.
pub static TRANSLATED_COPIES: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(0);

impl Process {
    /// `dma_copy` with the LSI53C895A behind the IOMMU: for this call the
    /// chip's domain maps its own DMA block and the caller's pages, and
    /// nothing else: the destination pages (writable) in one IOVA window,
    /// the source pages (read-only) in another, each contiguous whatever
    /// the pages' frames, so one Memory Move does the copy.
    fn dma_copy_translated(&mut self, dst_va: u64, src_va: u64, len: u64) -> i64 {
        /// IOVA windows below 4 GiB (SCRIPTS addresses are 32 bits).
        const DST_WINDOW: u64 = 0xc000_0000;
        const SRC_WINDOW: u64 = 0xd000_0000;
        let Ok(unit) = crate::iommu::take() else {
            return EIO;
        };
        let (Some(chan), Some(device)) = (self.lsi.as_mut(), crate::dma::LSI.device()) else {
            return ENODEV;
        };
        let id = DomainId::new(5).expect("a domain id");
        let Ok(mut domain) = iommu::domain(&unit, id, db(), mapper(), db()) else {
            return ENOMEM;
        };
        let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
        let window = |domain: &mut crate::iommu::Domain<'_>, at: u64, pages: u64| {
            domain.map_vma(pg(at), pages, rw).map_err(|_| ENOMEM)
        };
        let (block, block_len) = chan.engine().dma_block();
        let block_pages = (block_len as u64).div_ceil(PAGE_4K);
        let mapped = window(&mut domain, block, block_pages).and_then(|area| {
            // SAFETY: the chip's own DMA block, allocated for as long as the channel lives, which
            // outlives this call; the domain is dropped at its end.
            unsafe {
                domain.remap_pfn_range(
                    area,
                    pg(block),
                    fr(block / PAGE_4K),
                    block_pages,
                    PageProt::READ_WRITE,
                )
            }
            .map_err(|_| ENOMEM)
        });
        let mut iovas = [0u64; 2];
        let user = [
            (dst_va, DST_WINDOW, PageProt::READ_WRITE),
            (src_va, SRC_WINDOW, PageProt::READ_ONLY),
        ];
        let mapped = mapped.and_then(|()| {
            for (k, &(va, base, prot)) in user.iter().enumerate() {
                let first = va & !(PAGE_4K - 1);
                let pages = (va + len).div_ceil(PAGE_4K) - first / PAGE_4K;
                let area = window(&mut domain, base, pages)?;
                for i in 0..pages {
                    // Checked by `user_range`: every page is mapped.
                    let frame = self
                        .space
                        .translate(crate::mm::va(first + i * PAGE_4K))
                        .and_then(|leaf| leaf.frame_of(crate::mm::va(first + i * PAGE_4K)))
                        .ok_or(EFAULT)?;
                    // SAFETY: a page of this process's space, which stays mapped there (the process
                    // is stopped in this call) until the domain is dropped at the end of the call.
                    unsafe { domain.remap_pfn_range(area, pg(base + i * PAGE_4K), frame, 1, prot) }
                        .map_err(|_| ENOMEM)?;
                }
                iovas[k] = base + (va - first);
            }
            Ok(())
        });
        if let Err(e) = mapped {
            return e;
        }
        let source = crate::iommu::source_of(device);
        // SAFETY: the domain outlives the attachment (detached below, after
        // the copy has ended).
        if unsafe { unit.attach(source, id, domain.root()) }.is_err() || unit.enable().is_err() {
            return EIO;
        }
        // SAFETY: both IOVA windows map the caller's own pages, which stay
        // mapped (the process is stopped in this call) until the copy ends.
        let copied =
            unsafe { chan.prep_copy(iovas[0], iovas[1], len as usize, PrepFlags::empty()) }
                .map_err(|_| EINVAL)
                .and_then(|cookie| {
                    chan.wait(cookie, &mut time::Delay, Duration::from_secs(2))
                        .map_err(|_| EIO)
                });
        let fault = unit.take_fault();
        if copied.is_err() {
            chan.terminate();
            let _ = chan.reset();
        }
        // SAFETY: the chip is idle: its one request ended, or it was
        // terminated above.
        let _ = unsafe { unit.disable() };
        let _ = unit.detach(source);
        match (copied, fault) {
            (Ok(()), None) => {
                TRANSLATED_COPIES.fetch_add(1, Ordering::Relaxed);
                0
            }
            (Ok(()), Some(_)) => EIO,
            (Err(e), _) => e,
        }
    }
}

/// Handles a page fault from ring 3 at `cr2`: a write to a present page of
/// a copy-on-write area gets the process a private copy. Returns whether the
/// access can be retried.
fn write_fault(cr2: u64, error_code: u64) -> bool {
    // Error code bit 0: the page was present; bit 1: a write.
    if error_code & 0b11 != 0b11 {
        return false;
    }
    let current = CURRENT.load(Ordering::Acquire);
    if current.is_null() {
        return false;
    }
    // SAFETY: as in `syscall`: the running process, exclusively ours while
    // this trap runs with interrupts off.
    let process = unsafe { &mut *current };
    process.space.handle_write_fault(va(cr2)).is_ok()
}

/// Registers the system call and user copy-on-write faults with the trap
/// layer; done by the first process run, so modes without processes leave
/// those vectors alone.
fn register_traps() {
    crate::trap::register(crate::trap::SYSCALL_VECTOR, on_syscall);
    crate::trap::register(crate::trap::PAGE_FAULT, on_page_fault);
}

fn on_syscall(frame: &mut TrapFrame, _cr2: u64) -> bool {
    syscall(frame);
    true
}

/// A user write to a copy-on-write page: copy it and retry the write.
/// Anything else goes on to the fallback (recovery).
fn on_page_fault(frame: &mut TrapFrame, cr2: u64) -> bool {
    frame.cs & 3 == 3 && write_fault(cr2, frame.error_code)
}

fn syscall(frame: &mut TrapFrame) {
    let current = CURRENT.load(Ordering::Acquire);
    if current.is_null() || frame.cs & 3 != 3 {
        frame.rax = EINVAL as u64;
        return;
    }
    // SAFETY: CURRENT points at the process `run` is running, whose frame
    // outlives its time in ring 3; system calls run with interrupts off on
    // the only CPU, so this is the only reference.
    let process = unsafe { &mut *current };
    let (a, b, c) = (frame.rdi, frame.rsi, frame.rdx);
    let result = match frame.rax {
        sys::EXIT => {
            recover::exit_process(frame, a);
            return;
        }
        sys::WRITE => process.write(a, b),
        sys::MAP_PAGES => process.map_pages(a),
        sys::DMA_COPY => process.dma_copy(a, b, c),
        sys::MAP_DEVICE => process.map_device(),
        sys::UNMAP => process.unmap(a, b),
        sys::GRANT_LSI => process.grant_lsi(),
        sys::IOMMU_MAP => process.iommu_map(a, b, c),
        sys::DMA_FAULTS => {
            if process.grant.is_none() {
                ENODEV
            } else {
                process.collect_faults() as i64
            }
        }
        _ => EINVAL,
    };
    frame.rax = result as u64;
}

// The programs: position-independent code copied into the process.
global_asm!(
    r#"
    .section .rodata.user_programs, "a"
    .global user_story_start
    .global user_story_end
user_story_start:
    lea rdi, [rip + 90f]
    lea rsi, [rip + 91f]
    sub rsi, rdi
    mov eax, 1
    int 0x80
    mov edi, 2
    mov eax, 2
    int 0x80
    test rax, rax
    js 80f
    mov r12, rax
    xor ecx, ecx
    movabs rdx, 0x9e3779b97f4a7c15
2:
    mov rax, rcx
    imul rax, rdx
    mov [r12 + rcx*8], rax
    inc rcx
    cmp rcx, 512
    jb 2b
    lea rdi, [r12 + 4196]
    lea rsi, [r12 + 8]
    mov edx, 3000
    mov eax, 3
    int 0x80
    test rax, rax
    jnz 81f
    lea rsi, [r12 + 8]
    lea rdi, [r12 + 4196]
    mov ecx, 3000
    repe cmpsb
    jne 82f
    cmp byte ptr [r12 + 4195], 0
    jne 82f
    cmp byte ptr [r12 + 7196], 0
    jne 82f
    movabs rdi, 0xffff800000100000
    mov rsi, r12
    mov edx, 16
    mov eax, 3
    int 0x80
    cmp rax, -14
    jne 83f
    mov eax, 4
    int 0x80
    test rax, rax
    js 84f
    mov eax, dword ptr [rax]
    cmp eax, 0x010000ed
    jne 85f
    lea rdi, [rip + 92f]
    lea rsi, [rip + 93f]
    sub rsi, rdi
    mov eax, 1
    int 0x80
    xor edi, edi
    xor eax, eax
    int 0x80
80:
    mov edi, 20
    jmp 99f
81:
    mov edi, 21
    jmp 99f
82:
    mov edi, 22
    jmp 99f
83:
    mov edi, 23
    jmp 99f
84:
    mov edi, 24
    jmp 99f
85:
    mov edi, 25
99:
    xor eax, eax
    int 0x80
90:
    .ascii "ring 3: mapping two pages, asking the LSI53C895A to copy between them\n"
91:
92:
    .ascii "ring 3: copy verified; edu ID read through my own mapping\n"
93:
user_story_end:

    .global user_fault_start
    .global user_fault_end
user_fault_start:
    movabs rax, 0x10000000000
    mov rax, [rax]
    xor edi, edi
    xor eax, eax
    int 0x80
user_fault_end:

    .global user_cli_start
    .global user_cli_end
user_cli_start:
    cli
    xor edi, edi
    xor eax, eax
    int 0x80
user_cli_end:

    .global user_unmap_start
    .global user_unmap_end
user_unmap_start:
    mov edi, 1
    mov eax, 2
    int 0x80
    test rax, rax
    js 3f
    mov r12, rax
    mov qword ptr [r12], 0x1234
    cmp qword ptr [r12], 0x1234
    jne 3f
    mov rdi, r12
    mov esi, 1
    mov eax, 5
    int 0x80
    test rax, rax
    jnz 3f
    mov rax, [r12]
    xor edi, edi
    xor eax, eax
    int 0x80
3:
    mov edi, 30
    xor eax, eax
    int 0x80
user_unmap_end:

    .global user_cow_start
    .global user_cow_end
user_cow_start:
    movabs r12, 0x8000c00000
    mov rax, qword ptr [r12]
    cmp rax, 0x11112222
    jne 4f
    mov qword ptr [r12], 0x33334444
    cmp qword ptr [r12], 0x33334444
    jne 5f
    xor edi, edi
    xor eax, eax
    int 0x80
4:
    mov edi, 40
    xor eax, eax
    int 0x80
5:
    mov edi, 41
    xor eax, eax
    int 0x80
user_cow_end:

    .global user_script_start
    .global user_script_end
user_script_start:
    movabs r12, 0x8000e00000
    movabs r13, 0x8000f00000
1:
    mov rax, [r12]
    cmp rax, -1
    je 2f
    mov rdi, [r12 + 8]
    mov rsi, [r12 + 16]
    mov rdx, [r12 + 24]
    int 0x80
    mov [r13], rax
    add r12, 32
    add r13, 8
    jmp 1b
2:
    xor edi, edi
    xor eax, eax
    int 0x80
user_script_end:

    .global user_spin_start
    .global user_spin_end
user_spin_start:
    jmp user_spin_start
user_spin_end:

/* A user-space driver of the LSI53C895A: three heap pages (script,
   source, destination) mapped for the chip at IOVA 0x40000000, a SCRIPTS
   Memory Move of `len` bytes from the source to IOVA `dst` then an INT,
   run `reps` times (each started through DSP, ISTAT polled, DSTAT read).
   `check` 1: the bytes must have landed; 0: the kernel must report a DMA
   fault; 2: exit with the TSC cycles the runs took. Exits 0 (or the
   cycles), or 61-67 naming the step that failed.
   The chip's registers and instructions, as the library's driver names
   them (drivers/lsi53c895a/regs.rs, script.rs; QEMU-FACTS.md): DSP at
   0x2c starts SCRIPTS at the address written; ISTAT at 0x14, bit 0 (DIP),
   says the processor stopped on a DMA interrupt; DSTAT at 0x0c, read to
   clear it, has bit 2 (SIR) for an INT instruction; a Memory Move is
   0xc0000000 | count, then source, then destination; INT is 0x98080000
   and a value. */
.macro user_driver name, dst, len, reps, check
    .global user_\name\()_start
    .global user_\name\()_end
user_\name\()_start:
    mov edi, 3
    mov eax, 2
    int 0x80
    test rax, rax
    js 61f
    mov r12, rax
    mov eax, 6
    int 0x80
    test rax, rax
    js 62f
    mov r13, rax
    mov rdi, r12
    mov esi, 3
    mov edx, 0x40000000
    mov eax, 7
    int 0x80
    test rax, rax
    jnz 63f
    xor ecx, ecx
1:
    lea eax, [rcx*8 + 1]
    sub eax, ecx
    mov byte ptr [r12 + rcx + 4096], al
    inc ecx
    cmp ecx, 4096
    jb 1b
    mov dword ptr [r12], 0xc0000000 + \len
    mov dword ptr [r12 + 4], 0x40001000
    mov dword ptr [r12 + 8], \dst
    mov dword ptr [r12 + 12], 0x98080000
    mov dword ptr [r12 + 16], 0
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r14, rax
    mov r15d, \reps
5:
    mov dword ptr [r13 + 0x2c], 0x40000000
    mov ecx, 100000000
2:
    test byte ptr [r13 + 0x14], 1
    jnz 3f
    dec ecx
    jnz 2b
    jmp 64f
3:
    mov al, byte ptr [r13 + 0x0c]
    test al, 4
    jz 65f
    dec r15d
    jnz 5b
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r14
    mov r14, rax
.if \check == 2
    mov rdi, r14
    xor eax, eax
    int 0x80
.elseif \check == 1
    lea rsi, [r12 + 4096]
    lea rdi, [r12 + 8192]
    mov ecx, \len
    repe cmpsb
    jne 66f
.else
    mov eax, 8
    int 0x80
    cmp rax, 1
    jl 67f
.endif
    xor edi, edi
    xor eax, eax
    int 0x80
61:
    mov edi, 61
    jmp 69f
62:
    mov edi, 62
    jmp 69f
63:
    mov edi, 63
    jmp 69f
64:
    mov edi, 64
    jmp 69f
65:
    mov edi, 65
    jmp 69f
66:
    mov edi, 66
    jmp 69f
67:
    mov edi, 67
69:
    xor eax, eax
    int 0x80
user_\name\()_end:
.endm

    user_driver lsi_driver, 0x40002000, 256, 1, 1
    user_driver rogue_driver, 0x100000, 256, 1, 0
    user_driver bench_driver, 0x40002000, 64, 20000, 2
"#
);

unsafe extern "C" {
    static user_story_start: u8;
    static user_story_end: u8;
    static user_fault_start: u8;
    static user_fault_end: u8;
    static user_cli_start: u8;
    static user_cli_end: u8;
    static user_unmap_start: u8;
    static user_unmap_end: u8;
    static user_cow_start: u8;
    static user_cow_end: u8;
    static user_script_start: u8;
    static user_script_end: u8;
    static user_spin_start: u8;
    static user_spin_end: u8;
    static user_lsi_driver_start: u8;
    static user_lsi_driver_end: u8;
    static user_rogue_driver_start: u8;
    static user_rogue_driver_end: u8;
    static user_bench_driver_start: u8;
    static user_bench_driver_end: u8;
}

fn bytes(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: the pairs of labels above delimit read-only bytes of the
    // kernel image, `end` after `start`.
    unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) }
}

/// Maps two pages, has the LSI53C895A copy between them, checks the copy,
/// checks that a kernel address is refused, reads the edu ID through its own
/// device mapping; exits 0 when all held (20-25 name the step that did not).
pub fn story() -> &'static [u8] {
    bytes(&raw const user_story_start, &raw const user_story_end)
}

/// Reads an address nothing maps.
pub fn faulting() -> &'static [u8] {
    bytes(&raw const user_fault_start, &raw const user_fault_end)
}

/// Executes `cli`, a privileged instruction.
pub fn privileged() -> &'static [u8] {
    bytes(&raw const user_cli_start, &raw const user_cli_end)
}

/// Maps a page, writes it, unmaps it, reads it again: that read must fault
/// (exit 0 would mean the TLB still held the page; 30 names a failed step).
pub fn unmapping() -> &'static [u8] {
    bytes(&raw const user_unmap_start, &raw const user_unmap_end)
}

/// Reads its copy-on-write data page, writes it (the write faults and the
/// kernel gives it a private copy), reads its write back; exits 0 (40 and 41
/// name the check that failed).
pub fn copy_on_write() -> &'static [u8] {
    bytes(&raw const user_cow_start, &raw const user_cow_end)
}

/// Makes the calls of the script page at SCRIPT, writes each result to
/// RESULTS, exits 0.
fn script_runner() -> &'static [u8] {
    bytes(&raw const user_script_start, &raw const user_script_end)
}

/// Never ends.
pub fn spinning() -> &'static [u8] {
    bytes(&raw const user_spin_start, &raw const user_spin_end)
}

/// A user-space driver: takes the second LSI53C895A (`grant_lsi`), maps
/// three of its pages for it (`iommu_map`), writes a SCRIPTS Memory Move of
/// 256 bytes between two of them, starts the chip through DSP, polls ISTAT
/// and checks the bytes; exits 0 (61-66 name the failed step). Heap page 1
/// holds the source (byte i = 7i + 1), page 2 the destination.
pub fn lsi_driver() -> &'static [u8] {
    bytes(
        &raw const user_lsi_driver_start,
        &raw const user_lsi_driver_end,
    )
}

/// As [`lsi_driver`], but the move's destination is 0x100000, the
/// kernel's own first page by its physical address, which the process
/// never mapped for the chip; exits 0 once `dma_faults` reports the fault
/// (67 if it does not).
pub fn rogue_driver() -> &'static [u8] {
    bytes(
        &raw const user_rogue_driver_start,
        &raw const user_rogue_driver_end,
    )
}

/// Copies handled by [`bench_driver`].
pub const BENCH_DRIVER_COPIES: u64 = 20_000;

/// As [`lsi_driver`], with a 64-byte move run [`BENCH_DRIVER_COPIES`]
/// times, one after the other; exits with the TSC cycles they took (61-67
/// name a failed step).
pub fn bench_driver() -> &'static [u8] {
    bytes(
        &raw const user_bench_driver_start,
        &raw const user_bench_driver_end,
    )
}
