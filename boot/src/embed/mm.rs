//! The kernel's side of `dmaengine::mm`: a frame database over frames taken
//! from the boot allocator, TLB flushes with `invlpg` and CR3 reloads, and
//! address spaces that share the kernel's own mappings.

use alloc::boxed::Box;
use alloc::vec::Vec;

use dmaengine::mm::MmError;
use dmaengine::mm::frame::{FrameDb, PageInfo};
use dmaengine::mm::pte::PAGE_4K;
use dmaengine::mm::space::AddressSpace;
use dmaengine::mm::tlb::TlbFlush;
use dmaengine::mm::traits::OffsetMapper;
use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use crate::mem::paging::{self, load};
use crate::mem::{PHYS_OFFSET, frames};

/// The end of the user half of the address space.
pub use dmaengine::mm::space::USER_END;

/// Frames the database manages (128 MiB).
const DB_FRAMES: usize = 32 * 1024;
/// PML4 slots every address space shares with the kernel: 0 (the kernel
/// image, identity-mapped) and 256 (the direct map).
pub const KERNEL_SLOTS: [usize; 3] = [0, 256, crate::mem::paging::STACKS_SLOT];

static DB: spin::Once<FrameDb<'static>> = spin::Once::new();

/// The kernel's frame database, built on first use.
pub fn db() -> &'static FrameDb<'static> {
    DB.call_once(|| {
        let base = frames::alloc_contiguous(DB_FRAMES, 1).expect("128 MiB for the frame database");
        let infos: Vec<PageInfo> = (0..DB_FRAMES).map(|_| PageInfo::new()).collect();
        let first = PhysFrame::containing_address(PhysAddr::new(base));
        // SAFETY: the frames were just taken from the boot allocator for the
        // database alone, for the whole run; the direct map covers them.
        unsafe { FrameDb::new(Box::leak(infos.into_boxed_slice()), first) }
    })
}

/// Physical memory through the kernel's direct map.
pub fn mapper() -> OffsetMapper {
    // SAFETY: the direct map (PML4 slot 256) maps the first 4 GiB of
    // physical memory read-write, write-back, for the whole run, and every
    // frame the database and the spaces use lies below it.
    unsafe { OffsetMapper::new(VirtAddr::new(PHYS_OFFSET)) }
}

/// Flushes with `invlpg` / a CR3 reload, only while the space is loaded
/// (one CPU, no PCIDs: loading CR3 drops the translations of the space
/// unloaded).
#[derive(Debug, Default)]
pub struct KernelTlb;

impl KernelTlb {
    fn active(root: PhysFrame) -> bool {
        paging::root() == root.start_address()
    }
}

// SAFETY: without PCIDs, a space's translations live only in the TLBs of
// CPUs that have it loaded. The boot CPU flushes its own with `invlpg` or a
// CR3 reload when the space is loaded there; every AP that loaded it
// (through `smp::load_root`) is interrupted and flushes the same before
// `smp::shootdown` returns. Both drop the paging-structure caches too.
unsafe impl TlbFlush for KernelTlb {
    fn flush_page(&mut self, root: PhysFrame, va: VirtAddr) {
        if Self::active(root) {
            x86_64::instructions::tlb::flush(va);
        }
        crate::smp::shootdown(root.start_address().as_u64(), Some((va, 1)));
    }

    fn flush_range(&mut self, root: PhysFrame, start: VirtAddr, pages: u64) {
        if Self::active(root) {
            if pages <= dmaengine::mm::tlb::FULL_FLUSH_THRESHOLD as u64 {
                for i in 0..pages {
                    x86_64::instructions::tlb::flush(start + i * PAGE_4K);
                }
            } else {
                x86_64::instructions::tlb::flush_all();
            }
        }
        crate::smp::shootdown(root.start_address().as_u64(), Some((start, pages)));
    }

    fn flush_all(&mut self, root: PhysFrame) {
        if Self::active(root) {
            x86_64::instructions::tlb::flush_all();
        }
        crate::smp::shootdown(root.start_address().as_u64(), None);
    }
}

/// A user address space in the kernel: pages and page tables from the
/// frame database, tables reached through the direct map.
pub type Space =
    AddressSpace<&'static FrameDb<'static>, OffsetMapper, &'static FrameDb<'static>, KernelTlb>;

/// Whether new spaces may use 1 GiB leaves: the CPU has them (handed
/// over at boot, [`init`]).
static PAGES_1G: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Tells the embedding whether the CPU has 1 GiB pages (once, at boot).
pub fn init(pages_1g: bool) {
    PAGES_1G.store(pages_1g, core::sync::atomic::Ordering::Relaxed);
}

/// A new address space sharing the kernel's slots with the running one.
pub fn new_space(nx: bool) -> Result<Space, MmError> {
    let mut space = AddressSpace::new(db(), mapper(), db(), KernelTlb, nx)?;
    space.set_1g_pages(PAGES_1G.load(core::sync::atomic::Ordering::Relaxed));
    let kernel_root = PhysFrame::containing_address(paging::root());
    // SAFETY: the kernel's PML4 lives for the whole run, and its slots 0 and
    // 256 map the kernel image and the direct map for good.
    unsafe { space.share_kernel_slots(kernel_root, KERNEL_SLOTS) }?;
    Ok(space)
}

/// The page starting at `addr`, which must be page-aligned and canonical
/// (for addresses the kernel computed itself, never for user input).
pub fn pg(addr: u64) -> Page {
    Page::from_start_address(VirtAddr::new(addr)).expect("a page-aligned address")
}

/// The virtual address `addr` (canonical: computed by the kernel).
pub fn va(addr: u64) -> VirtAddr {
    VirtAddr::new(addr)
}

/// The frame with number `pfn`.
pub fn fr(pfn: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(pfn << 12))
}

/// Pages in `[start, end)`.
pub fn npages(start: u64, end: u64) -> u64 {
    (end - start) / PAGE_4K
}

/// Whole pages in `bytes`.
pub fn bytes_to_pages(bytes: u64) -> u64 {
    bytes / PAGE_4K
}

/// The CR3 the kernel booted with, restored after every test.
static KERNEL_CR3: spin::Once<u64> = spin::Once::new();

/// Records the kernel's CR3 (call once at boot).
pub fn remember_kernel_cr3() {
    KERNEL_CR3.call_once(|| paging::root().as_u64());
}

/// The kernel's own page tables (its CR3 at boot).
pub fn kernel_root() -> u64 {
    KERNEL_CR3
        .get()
        .copied()
        .unwrap_or_else(|| paging::root().as_u64())
}

/// Goes back to the kernel's own page tables if something else is loaded.
pub fn restore_kernel_cr3() {
    if let Some(&root) = KERNEL_CR3.get()
        && paging::root().as_u64() != root
    {
        // SAFETY: the kernel's boot PML4 is always valid.
        unsafe { load(root) };
    }
}

/// Runs `f` with `space` loaded, then goes back to the kernel's tables
/// (the harness also goes back if `f` fails).
pub fn with_loaded<R>(space: &mut Space, f: impl FnOnce(&mut Space) -> R) -> R {
    // SAFETY: every `Space` shares the kernel slots (see `new_space`) and
    // outlives this call.
    unsafe { load(space.root().start_address().as_u64()) };
    let result = f(space);
    restore_kernel_cr3();
    result
}
