//! Refines the boot page tables once the memory map is known: device memory
//! in the direct map becomes uncached, page 0 of the identity map is removed
//! (a null dereference faults) and EFER.NXE is turned on when supported.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::PhysAddr;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::PhysFrame;
use x86_64::structures::paging::{PageTable, PageTableFlags as F};

use super::{PAGE_SIZE, frames, phys_to_virt};
use crate::pvh::{BootInfo, E820_RAM};

/// The PML4 slot of the direct map (`PHYS_OFFSET`).
const DIRECT_MAP_SLOT: usize = 256;
/// Size of a 2 MiB page.
const HUGE: u64 = 2 << 20;

/// One bit per 2 MiB page of the direct map: set when `init` made it
/// uncached (it holds no RAM).
static UNCACHED: [AtomicU64; CHUNKS / 64] = [const { AtomicU64::new(0) }; CHUNKS / 64];
/// 2 MiB pages in the direct map.
const CHUNKS: usize = (super::DIRECT_MAP_SIZE / HUGE) as usize;

/// Whether the direct map maps every byte of `start..end` uncached
/// (`start < end <= DIRECT_MAP_SIZE`).
pub fn uncached(start: u64, end: u64) -> bool {
    (start / HUGE..end.div_ceil(HUGE)).all(|chunk| {
        let chunk = chunk as usize;
        UNCACHED[chunk / 64].load(Ordering::Acquire) & (1 << (chunk % 64)) != 0
    })
}

/// A page table reached through the direct map.
///
/// # Safety
/// `pa` must be the physical address of a page table that nothing else
/// accesses while the returned reference lives.
unsafe fn table(pa: PhysAddr) -> &'static mut PageTable {
    // SAFETY: per the caller's contract, `pa` is a page table in RAM, which
    // the direct map covers, and the reference is exclusive.
    unsafe { &mut *phys_to_virt(pa.as_u64()).cast::<PageTable>() }
}

/// The physical address `va` maps to in the active page tables, walked by
/// the `x86_64` crate over the direct map; `None` if nothing maps it.
pub fn translate(va: u64) -> Option<u64> {
    use x86_64::structures::paging::{OffsetPageTable, Translate};
    let va = x86_64::VirtAddr::try_new(va).ok()?;
    // SAFETY: the active PML4, reached through the direct map (which covers
    // all RAM at PHYS_OFFSET); the walk only reads the tables, and nothing
    // changes them on this CPU meanwhile (interrupts or not, no handler
    // edits the kernel's own tables).
    let tables = unsafe {
        OffsetPageTable::new(
            &mut *phys_to_virt(root().as_u64()).cast::<PageTable>(),
            x86_64::VirtAddr::new(super::PHYS_OFFSET),
        )
    };
    tables.translate_addr(va).map(|pa| pa.as_u64())
}

/// The PML4 slot of the kernel's guarded stacks (below each, an unmapped
/// guard page): the APs', and the boot CPU's ring-0 and double-fault ones.
pub const STACKS_SLOT: usize = 257;

/// Pages between the starts of two stack places in [`STACKS_SLOT`]: a
/// stack of up to this many pages less one, and its guard page.
const STACK_STRIDE_PAGES: u64 = 64;

/// Maps a stack of `pages` fresh zeroed pages (fewer than 64) at stack
/// place `place` (place `cpu` for AP `cpu`, the boot CPU's two after the
/// last AP's) in the kernel's tables (4 KiB pages in [`STACKS_SLOT`]),
/// with the page below it left unmapped: an overflow faults there instead
/// of running into other memory. Returns the stack's top. Call at boot,
/// once per place, before any address space shares the kernel's slots.
pub fn map_guarded_stack(place: usize, pages: u64) -> Result<u64, frames::FrameError> {
    use x86_64::structures::paging::{Mapper, OffsetPageTable, Page, PhysFrame};
    assert!(
        pages < STACK_STRIDE_PAGES,
        "a stack of {pages} pages overlaps the next place"
    );
    let base = 0xffff_0000_0000_0000 | (STACKS_SLOT as u64) << 39;
    let guard = base + place as u64 * STACK_STRIDE_PAGES * PAGE_SIZE;
    // SAFETY: the active PML4 (the kernel's, at boot), reached through the
    // direct map; only the boot CPU edits the kernel's tables, here.
    let mut tables = unsafe {
        OffsetPageTable::new(
            &mut *phys_to_virt(root().as_u64()).cast::<PageTable>(),
            x86_64::VirtAddr::new(super::PHYS_OFFSET),
        )
    };
    let mut flags = F::PRESENT | F::WRITABLE;
    if Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE) {
        flags |= F::NO_EXECUTE;
    }
    for i in 1..=pages {
        let frame = frames::alloc_zeroed()?;
        let page: Page = Page::containing_address(x86_64::VirtAddr::new(guard + i * PAGE_SIZE));
        // SAFETY: a fresh frame at a fresh page of the stacks' slot, which
        // nothing else maps.
        unsafe {
            tables.map_to(
                page,
                PhysFrame::containing_address(PhysAddr::new(frame)),
                flags,
                &mut frames::BootFrames,
            )
        }
        .map_err(|_| frames::FrameError::OutOfMemory)?
        .flush();
    }
    Ok(guard + (pages + 1) * PAGE_SIZE)
}

/// The physical address of the active PML4.
pub fn root() -> PhysAddr {
    Cr3::read().0.start_address()
}

/// Whether the CPU has 1 GiB pages (CPUID.80000001H:EDX.Page1GB, bit 26;
/// `qemu-run.sh` gives QEMU `-cpu qemu64,+pdpe1gb`).
pub fn pages_1g_supported() -> bool {
    let leaf = core::arch::x86_64::__cpuid(0x8000_0001);
    leaf.edx & (1 << 26) != 0
}

fn nx_supported() -> bool {
    let leaf = core::arch::x86_64::__cpuid(0x8000_0001);
    leaf.edx & (1 << 20) != 0
}

/// IA32_PAT (Intel SDM Vol. 3A, 12.12.2).
const IA32_PAT: u32 = 0x277;

/// Programs the PAT with Linux's layout (on every CPU: each has its own) (`dmaengine::mm::pte::LINUX_PAT`),
/// so the PWT/PCD/PAT bits of `io_remap_pfn_range` mean what the library
/// says. Entries 0-3 keep their power-on types (WB, WT->WC, UC-, UC), so
/// existing mappings (WB, and PCD|PWT = UC for devices) are unaffected.
pub fn program_pat() {
    let leaf = core::arch::x86_64::__cpuid(1);
    if leaf.edx & (1 << 16) == 0 {
        return;
    }
    // SAFETY: the CPU has a PAT (CPUID.1:EDX.PAT). Only entry 1 changes
    // meaning (WT -> WC) and no mapping selects it yet; the caches and
    // TLB are flushed after, as the SDM asks of a PAT change.
    unsafe {
        x86_64::registers::model_specific::Msr::new(IA32_PAT).write(dmaengine::mm::pte::LINUX_PAT);
        core::arch::asm!("wbinvd", options(nostack));
    }
    x86_64::instructions::tlb::flush_all();
}

/// Applies the refinements; returns whether NX is available.
pub fn init(info: &BootInfo) -> Result<bool, frames::FrameError> {
    program_pat();
    let nx = nx_supported();
    if nx {
        // SAFETY: setting NXE only makes bit 63 of PTEs meaningful; no
        // current entry sets it.
        unsafe { Efer::update(|e| e.insert(EferFlags::NO_EXECUTE_ENABLE)) };
    }
    let is_ram = |start: u64, end: u64| {
        info.regions()
            .iter()
            .any(|r| r.kind == E820_RAM && r.start < end && start < r.end())
    };
    // SAFETY: the boot page tables are only modified here, at boot, on one
    // CPU; the entry code built the shape walked below.
    unsafe {
        let pml4 = table(root());
        let pdpt = table(pml4[DIRECT_MAP_SLOT].addr());
        for (g, pdpt_entry) in pdpt.iter().take(4).enumerate() {
            let pd = table(pdpt_entry.addr());
            for (i, entry) in pd.iter_mut().enumerate() {
                let pa = (g as u64 * 512 + i as u64) * HUGE;
                if !is_ram(pa, pa + HUGE) {
                    let mut flags = entry.flags() | F::NO_CACHE | F::WRITE_THROUGH;
                    if nx {
                        flags |= F::NO_EXECUTE;
                    }
                    entry.set_addr(PhysAddr::new(pa), flags);
                    let chunk = g * 512 + i;
                    UNCACHED[chunk / 64].fetch_or(1 << (chunk % 64), Ordering::Release);
                }
            }
        }
        let pt_pa = PhysAddr::new(frames::alloc_zeroed()?);
        let pt = table(pt_pa);
        for (i, entry) in pt.iter_mut().enumerate().skip(1) {
            entry.set_addr(
                PhysAddr::new(i as u64 * PAGE_SIZE),
                F::PRESENT | F::WRITABLE,
            );
        }
        let pd_low = table(table(pml4[0].addr())[0].addr());
        pd_low[0].set_addr(pt_pa, F::PRESENT | F::WRITABLE);
    }
    x86_64::instructions::tlb::flush_all();
    Ok(nx)
}

/// Loads the page tables at `root`: here, below the memory glue, so the
/// other CPUs (`smp::load_root`) can switch tables without reaching up.
///
/// # Safety
/// `root` must be a PML4 that maps the kernel (the memory glue's
/// `new_space` makes such) and stays alive while loaded.
pub unsafe fn load(root: u64) {
    let frame = PhysFrame::containing_address(PhysAddr::new(root));
    // SAFETY: per the contract, the kernel keeps running on these tables.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
}
