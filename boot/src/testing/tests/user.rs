//! Ring-3 processes: the whole stack in one story, and the ways a process
//! can end without taking the kernel with it.

use crate::harness::Test;
use crate::mm::db;
use crate::user::{self, Exit};

pub const TESTS: &[Test] = &[
    Test::new(
        "user.process_maps_pages_dma_copies_into_them_and_reads_a_device",
        story,
    ),
    Test::new(
        "user.fault_outside_mappings_ends_only_the_process",
        fault_ends_the_process,
    ),
    Test::new(
        "user.privileged_instruction_ends_the_process",
        privileged_instruction,
    ),
    Test::new(
        "user.unmapped_page_faults_at_once_in_the_running_process",
        unmap_faults,
    ),
    Test::new(
        "user.write_to_copy_on_write_page_gets_a_private_copy",
        copy_on_write,
    ),
    Test::new("user.hung_process_is_ended_by_the_watchdog", hung_process).timeout_ms(300),
    Test::new(
        "user.failed_dma_copy_changes_no_byte_now_or_later",
        failed_dma_copy_changes_nothing,
    ),
    Test::new(
        "user.bad_system_call_inputs_get_their_errors_and_change_nothing",
        bad_system_call_inputs,
    ),
    Test::new(
        "user.hostile_process_cannot_start_edu_dma_into_kernel_pages",
        edu_dma_from_ring3,
    ),
    Test::new(
        "user.hostile_endless_writes_are_refused_at_the_output_bound",
        endless_writes,
    ),
];

/// A process maps edu's registers (`map_device`) and programs edu's DMA
/// itself, from one kernel page to another by physical address. edu is in
/// no domain of the process's, so the register page must not be writable:
/// the first register write ends the process, and the victim keeps its
/// zeros.
fn edu_dma_from_ring3() {
    use crate::mem::phys_to_virt;
    let src = db().alloc_page().expect("a page");
    let victim = db().alloc_page().expect("a page");
    let (s, v) = (src.phys().as_u64(), victim.phys().as_u64());
    // SAFETY: two pages just allocated to this test; the direct map covers them.
    unsafe {
        phys_to_virt(s).write_bytes(0x5a, 4096);
        phys_to_virt(v).write_bytes(0, 4096);
    }
    let mut program = user::edu_dma().to_vec();
    let n = program.len();
    program[n - 16..n - 8].copy_from_slice(&s.to_le_bytes());
    program[n - 8..].copy_from_slice(&v.to_le_bytes());
    let free = db().free_frames();
    let outcome = user::run(crate::platform(), &program, false).expect("the process");
    // SAFETY: as above.
    let bytes = unsafe { core::slice::from_raw_parts(phys_to_virt(v), 4096) };
    let written = bytes.iter().filter(|&&b| b != 0).count();
    assert_eq!(
        written, 0,
        "the edu device wrote a kernel page for ring 3 ({:?})",
        outcome.exit
    );
    match outcome.exit {
        Exit::Killed(f) => {
            assert_eq!(f.vector, 14, "{f}");
            assert_eq!(f.cr2, user::DEVICE + 0x80, "edu's DMA source register");
            assert_eq!(
                f.error_code & 0b111,
                0b111,
                "a user write to a present page"
            );
        }
        other => panic!("expected a write fault on the register page, got {other:?}"),
    }
    assert_eq!(db().free_frames(), free);
}

/// A process writes 4096 invalid bytes (12 KiB as stored) again and again:
/// the kernel keeps whole writes up to 64 KiB, refuses the sixth with
/// -28, and goes on.
fn endless_writes() {
    let free = db().free_frames();
    let outcome = user::run(crate::platform(), user::endless_writer(), false).expect("the process");
    const STORED: usize = 3 * 4096;
    let taken = user::MAX_OUTPUT / STORED;
    assert!(
        matches!(outcome.exit, Exit::Code(n) if n == taken as u64),
        "{:?} (9000: never refused; 9001: refused with another error)",
        outcome.exit
    );
    assert_eq!(outcome.output.len(), taken * STORED);
    assert!(outcome.output.chars().all(|c| c == '\u{fffd}'));
    assert_eq!(db().free_frames(), free);
    // The kernel is fine: the next process runs.
    let again = user::run(crate::platform(), user::story(), false).expect("process");
    assert!(matches!(again.exit, Exit::Code(0)), "{:?}", again.exit);
}

use crate::user::sys::{DMA_COPY, MAP_DEVICE, MAP_PAGES, UNMAP, WRITE};
use crate::user::{EFAULT, EINVAL};
const KERNEL: u64 = 0xffff_8000_0010_0000;
const PAGE: u64 = 4096;

/// A `dma_copy` whose second piece is refused (the pieces overlap) must
/// leave nothing in the ring: the next successful copy would otherwise run
/// the first piece too.
fn failed_dma_copy_changes_nothing() {
    let free = db().free_frames();
    let heap = user::HEAP;
    let outcome = user::run_script(
        crate::platform(),
        &[
            [MAP_PAGES, 3, 0, 0],
            // Bytes worth noticing after the page boundary: the script itself.
            [DMA_COPY, heap + 4100, user::SCRIPT, 200],
            // 96 bytes from page 1 into page 0 (fine), then 104 bytes whose
            // sides overlap (refused): the whole call must do nothing.
            [DMA_COPY, heap + 4000, heap + 4100, 200],
            // A later copy that succeeds (and issues whatever is in the ring).
            [DMA_COPY, heap + 2 * PAGE, user::SCRIPT, 16],
        ],
    )
    .expect("process");
    assert!(matches!(outcome.exit, Exit::Code(0)), "{:?}", outcome.exit);
    assert_eq!(outcome.results, [heap as i64, 0, EINVAL, 0]);
    let script_bytes = &outcome.heap[4100..4300];
    assert!(script_bytes.iter().any(|&b| b != 0));
    assert!(
        outcome.heap[4000..4096].iter().all(|&b| b == 0),
        "the refused call's first piece ran later"
    );
    assert_eq!(&outcome.heap[2 * 4096..2 * 4096 + 16], &script_bytes[..16]);
    assert_eq!(db().free_frames(), free);
}

/// One row of the bad-input matrix (README.md, "Bad input"): what was
/// tried, the call, and the error it must get.
struct Row(&'static str, user::Call, i64);

/// Every bad input tried on the system calls, after `map_pages(2)` gave the
/// process two heap pages. Keep README.md's matrix in step with this.
const MATRIX: &[Row] = &[
    Row("unknown call number", [99, 0, 0, 0], EINVAL),
    Row("unknown call number, huge", [u64::MAX - 1, 1, 2, 3], EINVAL),
    Row("write: kernel address", [WRITE, KERNEL, 16, 0], EFAULT),
    Row("write: null pointer", [WRITE, 0, 8, 0], EFAULT),
    Row(
        "write: range wraps past 2^64",
        [WRITE, u64::MAX - 7, 16, 0],
        EFAULT,
    ),
    Row(
        "write: longer than 4096",
        [WRITE, user::HEAP, 4097, 0],
        EINVAL,
    ),
    Row("map_pages: zero pages", [MAP_PAGES, 0, 0, 0], EINVAL),
    Row(
        "map_pages: 2^52 pages (wraps the byte count)",
        [MAP_PAGES, 1 << 52, 0, 0],
        EINVAL,
    ),
    Row(
        "map_pages: u64::MAX pages",
        [MAP_PAGES, u64::MAX, 0, 0],
        EINVAL,
    ),
    Row(
        "map_pages: more than the heap holds",
        [MAP_PAGES, 4095, 0, 0],
        EINVAL,
    ),
    Row(
        "dma_copy: zero length",
        [DMA_COPY, user::HEAP, user::HEAP + PAGE, 0],
        EINVAL,
    ),
    Row(
        "dma_copy: longer than 1 MiB",
        [DMA_COPY, user::HEAP, user::HEAP + PAGE, (1 << 20) + 1],
        EINVAL,
    ),
    Row(
        "dma_copy: length u64::MAX",
        [DMA_COPY, user::HEAP, user::HEAP + PAGE, u64::MAX],
        EINVAL,
    ),
    Row(
        "dma_copy: kernel destination",
        [DMA_COPY, KERNEL, user::HEAP, 16],
        EFAULT,
    ),
    Row(
        "dma_copy: kernel source",
        [DMA_COPY, user::HEAP, KERNEL, 16],
        EFAULT,
    ),
    Row(
        "dma_copy: destination wraps past 2^64",
        [DMA_COPY, u64::MAX - 7, user::HEAP, 16],
        EFAULT,
    ),
    Row(
        "dma_copy: source wraps past 2^64",
        [DMA_COPY, user::HEAP, u64::MAX - 7, 16],
        EFAULT,
    ),
    Row(
        "dma_copy: read-only destination (code)",
        [DMA_COPY, user::CODE, user::HEAP, 16],
        EFAULT,
    ),
    Row(
        "dma_copy: read-only destination (script)",
        [DMA_COPY, user::SCRIPT, user::HEAP, 16],
        EFAULT,
    ),
    Row(
        "dma_copy: heap address this process never mapped",
        [DMA_COPY, user::HEAP + (8 << 20), user::HEAP, 16],
        EFAULT,
    ),
    Row(
        "dma_copy: destination runs off the mapped pages",
        [DMA_COPY, user::HEAP + 2 * PAGE - 8, user::HEAP, 16],
        EFAULT,
    ),
    Row(
        "dma_copy: overlapping sides",
        [DMA_COPY, user::HEAP, user::HEAP + 16, 32],
        EINVAL,
    ),
    Row("unmap: zero pages", [UNMAP, user::HEAP, 0, 0], EINVAL),
    Row(
        "unmap: misaligned address",
        [UNMAP, user::HEAP + 1, 1, 0],
        EINVAL,
    ),
    Row(
        "unmap: u64::MAX pages",
        [UNMAP, user::HEAP, u64::MAX, 0],
        EINVAL,
    ),
    Row(
        "unmap: 2^52 pages (wraps the byte count)",
        [UNMAP, user::HEAP, 1 << 52, 0],
        EINVAL,
    ),
    Row(
        "unmap: outside the heap (code)",
        [UNMAP, user::CODE, 1, 0],
        EINVAL,
    ),
    Row(
        "unmap: heap pages never mapped",
        [UNMAP, user::HEAP + 2 * PAGE, 1, 0],
        EINVAL,
    ),
];

fn bad_system_call_inputs() {
    let free = db().free_frames();
    let mut calls = alloc::vec![[MAP_PAGES, 2, 0, 0]];
    calls.extend(MATRIX.iter().map(|row| row.1));
    // Afterwards: the next page comes right after the first two (no bad
    // call moved the heap), the device maps, and the process exits.
    calls.push([MAP_PAGES, 1, 0, 0]);
    calls.push([MAP_DEVICE, 0, 0, 0]);
    let outcome = user::run_script(crate::platform(), &calls).expect("process");
    assert!(matches!(outcome.exit, Exit::Code(0)), "{:?}", outcome.exit);
    assert_eq!(outcome.results[0], user::HEAP as i64);
    for (row, &got) in MATRIX.iter().zip(&outcome.results[1..]) {
        assert_eq!(got, row.2, "{}: {:x?}", row.0, row.1);
    }
    let n = MATRIX.len();
    assert_eq!(outcome.results[n + 1], (user::HEAP + 2 * PAGE) as i64);
    assert!(
        outcome.results[n + 2] > 0,
        "map_device: {}",
        outcome.results[n + 2]
    );
    assert!(
        outcome.heap.iter().all(|&b| b == 0),
        "no refused call wrote the heap"
    );
    assert_eq!(db().free_frames(), free, "no frame leaked");
}

fn story() {
    let free = db().free_frames();
    let translated = user::TRANSLATED_COPIES.load(core::sync::atomic::Ordering::Relaxed);
    let outcome = user::run(crate::platform(), user::story(), false).expect("process");
    if crate::iommu::base().is_some() {
        assert_eq!(
            user::TRANSLATED_COPIES.load(core::sync::atomic::Ordering::Relaxed),
            translated + 1,
            "with a VT-d unit, the copy ran behind it: the chip saw only the caller's pages"
        );
    }
    assert!(
        matches!(outcome.exit, Exit::Code(0)),
        "{:?} after output {:?}",
        outcome.exit,
        outcome.output
    );
    assert!(
        outcome.output.contains("copy verified"),
        "{:?}",
        outcome.output
    );
    assert_eq!(
        db().free_frames(),
        free,
        "the process's pages and tables all came back"
    );
}

fn fault_ends_the_process() {
    let free = db().free_frames();
    let outcome = user::run(crate::platform(), user::faulting(), false).expect("process");
    match outcome.exit {
        Exit::Killed(f) => {
            assert_eq!((f.vector, f.cr2), (14, 0x100_0000_0000));
            assert_eq!(f.error_code & 0b100, 0b100, "the fault came from user mode");
        }
        other => panic!("expected a page fault, got {other:?}"),
    }
    assert_eq!(db().free_frames(), free);
    // The kernel is fine: the next process runs.
    let again = user::run(crate::platform(), user::story(), false).expect("process");
    assert!(matches!(again.exit, Exit::Code(0)), "{:?}", again.exit);
}

fn privileged_instruction() {
    let outcome = user::run(crate::platform(), user::privileged(), false).expect("process");
    assert!(
        matches!(outcome.exit, Exit::Killed(f) if f.vector == 13),
        "{:?}",
        outcome.exit
    );
}

fn hung_process() {
    let outcome = user::run(crate::platform(), user::spinning(), false).expect("process");
    assert!(matches!(outcome.exit, Exit::Hung), "{:?}", outcome.exit);
}

fn unmap_faults() {
    let free = db().free_frames();
    let outcome = user::run(crate::platform(), user::unmapping(), false).expect("process");
    match outcome.exit {
        Exit::Killed(f) => {
            assert_eq!(f.vector, 14, "{f}");
            assert_eq!(f.cr2, user::HEAP, "the page it unmapped");
            assert_eq!(
                f.error_code & 0b101,
                0b100,
                "a user read of a page not present"
            );
        }
        other => panic!("expected a page fault after unmap, got {other:?}"),
    }
    assert_eq!(db().free_frames(), free);
}

fn copy_on_write() {
    let free = db().free_frames();
    let outcome = user::run(crate::platform(), user::copy_on_write(), false).expect("process");
    assert!(matches!(outcome.exit, Exit::Code(0)), "{:?}", outcome.exit);
    assert_eq!(
        outcome.original_data_word,
        user::DATA_WORD,
        "the write went to a private copy"
    );
    assert_eq!(
        db().free_frames(),
        free,
        "the copy was freed with the process"
    );
    // Without the fault path the write would end the process.
    let story = user::run(crate::platform(), user::story(), false).expect("process");
    assert!(matches!(story.exit, Exit::Code(0)));
}
