//! The GDT and the TSS: kernel and user segments, and a separate stack for
//! double faults so a kernel stack overflow is reported instead of becoming
//! a triple fault.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::PrivilegeLevel::{Ring0, Ring3};
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// Index in the TSS interrupt stack table used by the double-fault gate.
pub const DOUBLE_FAULT_IST: u8 = 0;
/// Kernel code segment selector (GDT entry 1).
pub const KERNEL_CODE: SegmentSelector = SegmentSelector::new(1, Ring0);
/// Kernel data segment selector (GDT entry 2).
pub const KERNEL_DATA: SegmentSelector = SegmentSelector::new(2, Ring0);
/// User data segment selector (GDT entry 3), before user code as SYSRET wants.
pub const USER_DATA: SegmentSelector = SegmentSelector::new(3, Ring3);
/// User code segment selector (GDT entry 4).
pub const USER_CODE: SegmentSelector = SegmentSelector::new(4, Ring3);

/// Bytes of a double-fault stack.
pub const STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

/// The ring-0 stack of system calls and of interrupts taken in ring 3:
/// 128 KiB, as a call such as `grant_lsi` builds a channel (some 7 KiB)
/// and moves it through several frames. At 32 KiB, a build with one
/// code-generation unit (which inlines more, and so keeps more copies live
/// in one frame) ran past its bottom into the statics below it, and the
/// kernel jumped to address 0. It has an unmapped guard page below it
/// ([`load_guarded_stacks`]), so an overflow faults instead.
pub const RING0_STACK_SIZE: usize = 128 * 1024;

/// The boot CPU's double-fault stack until [`load_guarded_stacks`]: a
/// static in the image, with no guard page, used only before memory is up.
static mut DOUBLE_FAULT_STACK: Stack = Stack([0; STACK_SIZE]);

/// The boot CPU's TSS stacks as last loaded: the ring-0 one (0 until
/// [`load_guarded_stacks`]: nothing runs in ring 3 before) and the
/// double-fault one.
static RING0_TOP: AtomicU64 = AtomicU64::new(0);
static DOUBLE_FAULT_TOP: AtomicU64 = AtomicU64::new(0);

static TSS: spin::Once<TaskStateSegment> = spin::Once::new();
static GDT: spin::Once<GlobalDescriptorTable<8>> = spin::Once::new();

fn stack_top(stack: *mut Stack) -> VirtAddr {
    VirtAddr::from_ptr(stack) + STACK_SIZE as u64
}

/// Gives an application processor a GDT and TSS of its own and loads
/// them: the boot CPU's segments, and a TSS whose double-fault stack is the
/// AP's own. An AP's stack has an unmapped guard page below it, so an
/// overflow page-faults there; the CPU cannot push that fault's frame onto
/// the guard either, and raises a double fault, which this stack takes:
/// the failure is then reported like any other, instead of a triple fault
/// that resets the machine. Allocated here and never freed: a restarted AP
/// (`smp::restart`) gets new ones, as `ltr` refuses the old TSS descriptor,
/// which its first load marked busy. An AP runs no ring-3 code, so the
/// TSS's ring-0 stack is left empty.
pub fn load_on_ap() {
    use alloc::boxed::Box;
    let stack: &'static mut Stack = Box::leak(Box::new(Stack([0; STACK_SIZE])));
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = stack_top(stack);
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
    let gdt: &'static GlobalDescriptorTable<8> = Box::leak(Box::new(segments(tss)));
    gdt.load();
    // SAFETY: the GDT `segments` built was just loaded, its TSS unused.
    unsafe { load_segments() };
}

/// The kernel's and the user's segments, and `tss` as entry 5.
fn segments(tss: &'static TaskStateSegment) -> GlobalDescriptorTable<8> {
    let mut gdt = GlobalDescriptorTable::new();
    let selectors = [
        gdt.append(Descriptor::kernel_code_segment()),
        gdt.append(Descriptor::kernel_data_segment()),
        gdt.append(Descriptor::user_data_segment()),
        gdt.append(Descriptor::user_code_segment()),
    ];
    assert_eq!(selectors, [KERNEL_CODE, KERNEL_DATA, USER_DATA, USER_CODE]);
    gdt.append(Descriptor::tss_segment(tss));
    gdt
}

/// Reloads every segment register and the task register from the GDT
/// [`segments`] built.
///
/// # Safety
/// That GDT must be loaded, with its TSS descriptor not yet busy.
unsafe fn load_segments() {
    // SAFETY: the selectors name the descriptors `segments` appended, in
    // the GDT the caller loaded; the TSS selector is entry 5 (a 16-byte
    // system descriptor).
    unsafe {
        CS::set_reg(KERNEL_CODE);
        SS::set_reg(KERNEL_DATA);
        DS::set_reg(KERNEL_DATA);
        ES::set_reg(KERNEL_DATA);
        load_tss(SegmentSelector::new(5, Ring0));
    }
}

/// Loads the GDT and TSS and reloads every segment register, with the
/// double-fault stack in the image (memory is not up yet) and no ring-0
/// stack: [`load_guarded_stacks`] replaces both once it is.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let top = stack_top(&raw mut DOUBLE_FAULT_STACK);
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = top;
        DOUBLE_FAULT_TOP.store(top.as_u64(), Ordering::Relaxed);
        tss
    });
    let gdt = GDT.call_once(|| segments(tss));
    gdt.load();
    // SAFETY: the GDT `segments` built was just loaded, its TSS unused.
    unsafe { load_segments() };
}

/// Gives the boot CPU a GDT and TSS whose ring-0 stack (RSP0) and
/// double-fault stack are the guarded ones whose tops are given (each with
/// an unmapped page below it; see `mem::paging::map_guarded_stack`), and
/// loads them. Call once memory is up and before anything runs in ring 3.
/// Allocated here and never freed; a new TSS, as `ltr` refuses the first
/// one, whose load marked it busy (as for an AP).
pub fn load_guarded_stacks(ring0_top: u64, double_fault_top: u64) {
    use alloc::boxed::Box;
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = VirtAddr::new(double_fault_top);
    tss.privilege_stack_table[0] = VirtAddr::new(ring0_top);
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
    let gdt: &'static GlobalDescriptorTable<8> = Box::leak(Box::new(segments(tss)));
    gdt.load();
    // SAFETY: the GDT `segments` built was just loaded, its TSS unused.
    unsafe { load_segments() };
    RING0_TOP.store(ring0_top, Ordering::Relaxed);
    DOUBLE_FAULT_TOP.store(double_fault_top, Ordering::Relaxed);
}

/// The top of the boot CPU's ring-0 stack (the TSS's RSP0; 0 before
/// [`load_guarded_stacks`]).
pub fn ring0_stack_top() -> u64 {
    RING0_TOP.load(Ordering::Relaxed)
}

/// The top of the boot CPU's double-fault stack.
pub fn double_fault_stack_top() -> u64 {
    DOUBLE_FAULT_TOP.load(Ordering::Relaxed)
}
