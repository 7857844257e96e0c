//! Ending the run through QEMU's `isa-debug-exit` device (port 0xf4).
//!
//! Writing `v` makes QEMU exit with status `(v << 1) | 1`, so no value can
//! look like a clean exit 0, which is what a triple fault gives under
//! `-no-reboot` (QEMU-FACTS.md, "Exit and output").

use x86_64::instructions::port::Port;

/// The I/O port `qemu-run.sh` configures for `isa-debug-exit`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the kernel ends the run; `qemu-run.sh` maps each to its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything asked for ran and passed (QEMU status 33).
    Success = 0x10,
    /// A test failed or the kernel hit a fatal error (QEMU status 35).
    Failure = 0x11,
    /// The test filter on the command line matched no test (QEMU status 37).
    NoTestMatched = 0x12,
    /// The command line named an unknown mode (QEMU status 39).
    BadCommandLine = 0x13,
}

/// Exits QEMU with `code`. Halts forever if the exit device is missing.
pub fn exit_qemu(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is the debug-exit device configured by qemu-run.sh;
    // writing it has no effect other than ending the VM.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(code as u32) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
