//! The in-guest test harness: a static list of named functions, run one by
//! one under [`recover::catch`] with a watchdog, reported line by line.
//!
//! A test fails by panicking (`assert!` and friends), by taking an
//! unexpected exception, or by running past its deadline; the next test runs
//! either way. The last line is always `N passed, M failed`.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::exit::ExitCode;
use crate::{print, println, recover, time};

/// One guest test.
#[derive(Clone, Copy)]
pub struct Test {
    /// Dotted name, matched by the command-line filter.
    pub name: &'static str,
    /// The test body; it fails by panicking.
    pub run: fn(),
    /// Watchdog deadline in milliseconds.
    pub timeout_ms: u64,
}

/// The default watchdog deadline: generous for TCG on a loaded machine.
const DEFAULT_TIMEOUT_MS: u64 = 20_000;

impl Test {
    /// A test with the default deadline.
    pub const fn new(name: &'static str, run: fn()) -> Test {
        Test {
            name,
            run,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// The same test with its own deadline.
    pub const fn timeout_ms(self, timeout_ms: u64) -> Test {
        Test { timeout_ms, ..self }
    }
}

/// The lowest words of the boot stack hold this while nothing has grown
/// the stack that deep: the stack sits just above the direct map's page
/// directories, which an overflow would silently overwrite.
const STACK_CANARY: u64 = 0x57ac_c0de_57ac_c0de;
const CANARY_WORDS: usize = 64;

unsafe extern "C" {
    static mut boot_stack_bottom: u8;
}

fn canary() -> *mut u64 {
    (&raw mut boot_stack_bottom).cast::<u64>()
}

fn set_stack_canary() {
    for i in 0..CANARY_WORDS {
        // SAFETY: the lowest words of the boot stack, far below anything the
        // kernel's shallow stack uses at this point.
        unsafe { canary().add(i).write_volatile(STACK_CANARY) };
    }
}

fn stack_canary_intact() -> bool {
    // SAFETY: as above; reads only.
    (0..CANARY_WORDS).all(|i| unsafe { canary().add(i).read_volatile() } == STACK_CANARY)
}

/// TSC nanoseconds after which the running test is declared hung (0: none).
static DEADLINE_NS: AtomicU64 = AtomicU64::new(0);

/// Arms the watchdog: the timer interrupt checks the running test's
/// deadline after its EOI. Done by `run`, so only the test modes hook the
/// timer.
fn arm_watchdog() {
    crate::irq::after_eoi(0, on_tick);
}

fn on_tick(frame: &mut crate::trap::TrapFrame) {
    if watchdog_expired() {
        recover::watchdog(frame);
    }
}

/// Whether the running test is past its deadline. Fires once per test.
fn watchdog_expired() -> bool {
    let deadline = DEADLINE_NS.load(Ordering::Acquire);
    if deadline != 0 && time::now_ns() > deadline {
        DEADLINE_NS.store(0, Ordering::Release);
        return true;
    }
    false
}

/// Runs the tests whose names contain `filter` (all if `None`).
pub fn run(tests: &[Test], filter: Option<&str>) -> ExitCode {
    arm_watchdog();
    let selected = || {
        tests
            .iter()
            .filter(|t| filter.is_none_or(|f| t.name.contains(f)))
    };
    let count = selected().count();
    if count == 0 {
        println!("error: no test matches filter {:?}", filter.unwrap_or(""));
        return ExitCode::NoTestMatched;
    }
    println!("running {count} tests");
    set_stack_canary();
    let (mut passed, mut failed) = (0, 0);
    for test in selected() {
        print!("test {} ... ", test.name);
        let start = time::now_ns();
        DEADLINE_NS.store(start + test.timeout_ms * 1_000_000, Ordering::Release);
        let outcome = recover::catch(test.run);
        DEADLINE_NS.store(0, Ordering::Release);
        // A test that failed with its own page tables loaded leaves them.
        crate::mm::restore_kernel_cr3();
        let ms = (time::now_ns() - start) / 1_000_000;
        if !stack_canary_intact() {
            println!("FAILED: the kernel stack overflowed (its lowest words were overwritten)");
            println!("{passed} passed, {} failed", failed + 1);
            return ExitCode::Failure;
        }
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("ok ({ms} ms)");
            }
            Err(why) => {
                failed += 1;
                println!("FAILED: {why}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}
