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
];

fn story() {
    let free = db().free_frames();
    let outcome = user::run(user::story(), false).expect("process");
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
    let outcome = user::run(user::faulting(), false).expect("process");
    match outcome.exit {
        Exit::Killed(f) => {
            assert_eq!((f.vector, f.cr2), (14, 0x100_0000_0000));
            assert_eq!(f.error_code & 0b100, 0b100, "the fault came from user mode");
        }
        other => panic!("expected a page fault, got {other:?}"),
    }
    assert_eq!(db().free_frames(), free);
    // The kernel is fine: the next process runs.
    let again = user::run(user::story(), false).expect("process");
    assert!(matches!(again.exit, Exit::Code(0)), "{:?}", again.exit);
}

fn privileged_instruction() {
    let outcome = user::run(user::privileged(), false).expect("process");
    assert!(
        matches!(outcome.exit, Exit::Killed(f) if f.vector == 13),
        "{:?}",
        outcome.exit
    );
}

fn hung_process() {
    let outcome = user::run(user::spinning(), false).expect("process");
    assert!(matches!(outcome.exit, Exit::Hung), "{:?}", outcome.exit);
}

fn unmap_faults() {
    let free = db().free_frames();
    let outcome = user::run(user::unmapping(), false).expect("process");
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
    let outcome = user::run(user::copy_on_write(), false).expect("process");
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
    let story = user::run(user::story(), false).expect("process");
    assert!(matches!(story.exit, Exit::Code(0)));
}
