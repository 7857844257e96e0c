//! The GDT and the TSS: kernel and user segments, and a separate stack for
//! double faults so a kernel stack overflow is reported instead of becoming
//! a triple fault.

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

const STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

/// The ring-0 stack of system calls: 128 KiB, as a call such as
/// `grant_lsi` builds a channel (some 7 KiB) and moves it through several
/// frames. At 32 KiB, a build with one code-generation unit (which inlines
/// more, and so keeps more copies live in one frame) ran past its bottom
/// into the statics below it, and the kernel jumped to address 0. The
/// stack has no guard page below it (it is a static in the kernel image):
/// an overflow corrupts rather than faults.
const RING0_STACK_SIZE: usize = 128 * 1024;

#[repr(C, align(16))]
struct Ring0Stack([u8; RING0_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; STACK_SIZE]);
static mut RING0_STACK: Ring0Stack = Ring0Stack([0; RING0_STACK_SIZE]);

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

/// Loads the GDT and TSS and reloads every segment register.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] =
            stack_top(&raw mut DOUBLE_FAULT_STACK);
        tss.privilege_stack_table[0] =
            VirtAddr::from_ptr(&raw mut RING0_STACK) + RING0_STACK_SIZE as u64;
        tss
    });
    let gdt = GDT.call_once(|| segments(tss));
    gdt.load();
    // SAFETY: the GDT `segments` built was just loaded, its TSS unused.
    unsafe { load_segments() };
}
