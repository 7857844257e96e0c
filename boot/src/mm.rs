//! The kernel's side of `dmaengine::mm`: a frame database over frames taken
//! from the boot allocator, TLB flushes with `invlpg` and CR3 reloads, and
//! address spaces that share the kernel's own mappings.

use alloc::boxed::Box;
use alloc::vec::Vec;

use dmaengine::mm::MmError;
use dmaengine::mm::frame::{FrameDb, PageInfo};
use dmaengine::mm::space::AddressSpace;
use dmaengine::mm::tlb::TlbFlush;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

use crate::dma::KernelHal;
use crate::mem::{PAGE_SIZE, frames, paging};

/// The end of the user half of the address space.
pub use dmaengine::mm::space::USER_END;

/// Frames the database manages (128 MiB).
const DB_FRAMES: usize = 32 * 1024;
/// PML4 slots every address space shares with the kernel: 0 (the kernel
/// image, identity-mapped) and 256 (the direct map).
pub const KERNEL_SLOTS: [usize; 2] = [0, 256];

static DB: spin::Once<FrameDb<'static>> = spin::Once::new();

/// The kernel's frame database, built on first use.
pub fn db() -> &'static FrameDb<'static> {
    DB.call_once(|| {
        let base = frames::alloc_contiguous(DB_FRAMES, 1).expect("128 MiB for the frame database");
        let infos: Vec<PageInfo> = (0..DB_FRAMES).map(|_| PageInfo::new()).collect();
        FrameDb::new(Box::leak(infos.into_boxed_slice()), base / PAGE_SIZE)
    })
}

/// Flushes with `invlpg` / a CR3 reload, only while its space is loaded.
#[derive(Debug)]
pub struct KernelTlb {
    root: u64,
}

impl KernelTlb {
    fn active(&self) -> bool {
        paging::root().as_u64() == self.root
    }
}

impl TlbFlush for KernelTlb {
    fn flush_page(&mut self, va: u64) {
        if self.active() {
            x86_64::instructions::tlb::flush(VirtAddr::new_truncate(va));
        }
    }

    fn flush_all(&mut self) {
        if self.active() {
            x86_64::instructions::tlb::flush_all();
        }
    }
}

/// A user address space in the kernel.
pub type Space = AddressSpace<'static, KernelHal, KernelTlb>;

/// A new address space sharing the kernel's slots with the running one.
pub fn new_space(nx: bool) -> Result<Space, MmError> {
    // The flusher needs the root, which exists only once the space does:
    // start with an impossible one and fix it at once.
    let mut space = AddressSpace::new(db(), KernelTlb { root: u64::MAX }, nx)?;
    space.tlb_mut().root = space.root();
    // SAFETY: the kernel's PML4 lives for the whole run, and its slots 0 and
    // 256 map the kernel image and the direct map for good.
    unsafe { space.share_kernel_slots(paging::root().as_u64(), KERNEL_SLOTS) };
    Ok(space)
}

/// The CR3 the kernel booted with, restored after every test.
static KERNEL_CR3: spin::Once<u64> = spin::Once::new();

/// Records the kernel's CR3 (call once at boot).
pub fn remember_kernel_cr3() {
    KERNEL_CR3.call_once(|| paging::root().as_u64());
}

/// Loads the page tables at `root`.
///
/// # Safety
/// `root` must be a PML4 that maps the kernel (see [`new_space`]) and stays
/// alive while loaded.
pub unsafe fn load(root: u64) {
    let frame = PhysFrame::containing_address(PhysAddr::new(root));
    // SAFETY: per the contract, the kernel keeps running on these tables.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
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
    unsafe { load(space.root()) };
    let result = f(space);
    restore_kernel_cr3();
    result
}
