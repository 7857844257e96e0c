//! Canaries that prove the harness reports failures: each of the ways a
//! test can go wrong, which `tests/qemu.rs` on the host expects to see
//! reported as `FAILED` with the run exiting non-zero.

use crate::harness::Test;

pub const TESTS: &[Test] = &[
    Test::new("selftest.passes", passes),
    Test::new("selftest.assertion_fails", assertion_fails),
    Test::new("selftest.panics", panics),
    Test::new("selftest.unexpected_page_fault", unexpected_page_fault),
    Test::new("selftest.hangs", hangs).timeout_ms(300),
];

fn passes() {}

fn assertion_fails() {
    let copied = 4095;
    assert_eq!(copied, 4096, "deliberate assertion failure");
}

fn panics() {
    panic!("deliberate panic");
}

fn unexpected_page_fault() {
    // SAFETY: none needed for the outcome: this address is unmapped and the
    // read is meant to fault, which the harness turns into a failure.
    let _ = unsafe { core::ptr::read_volatile(0x0000_4000_dead_0000 as *const u64) };
}

fn hangs() {
    loop {
        core::hint::spin_loop();
    }
}
