//! COM1 console: everything the kernel prints goes to QEMU's stdout.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::{Config, Uart16550, backend::PioBackend};

/// The legacy COM1 base port.
const COM1: u16 = 0x3f8;

struct Console(Option<Uart16550<PioBackend>>);

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(uart) = self.0.as_mut() {
            uart.send_bytes_exact(s.as_bytes());
        }
        Ok(())
    }
}

static CONSOLE: Mutex<Console> = Mutex::new(Console(None));

/// Initialises COM1 (115200 8N1). Output before this call is dropped.
pub fn init() {
    // SAFETY: COM1's eight ports belong to this console alone; nothing else
    // in the kernel touches them.
    let mut uart = unsafe { Uart16550::new_port(COM1) }.expect("COM1 is a valid port range");
    // An emulated 16550 always initialises; a missing one leaves us silent,
    // which is all we could do anyway.
    if uart.init(Config::default()).is_ok() {
        CONSOLE.lock().0 = Some(uart);
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _ = CONSOLE.lock().write_fmt(args);
    });
}

/// Releases the console lock if a panic or a recovered test left it held,
/// so the report of that failure can still be printed.
pub fn force_unlock() {
    if CONSOLE.is_locked() {
        // SAFETY: called only on the panic/recovery path on the one CPU, with
        // interrupts off; the holder was abandoned and will never run again.
        unsafe { CONSOLE.force_unlock() };
    }
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::_print(format_args!($($arg)*)));
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::print!("{}\n", format_args!($($arg)*)));
}
