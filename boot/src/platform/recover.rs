//! Turning a panic, an exception or a hang into a value.
//!
//! [`catch`] runs a closure through `catch_call`, an assembly routine that
//! saves the callee-saved registers and the stack pointer. If the closure
//! panics, faults or overruns the watchdog, control is put back on that saved
//! stack (by the panic handler directly, or by rewriting the trap frame so
//! `iretq` lands in `catch_resume`) and `catch_call` returns non-zero. The
//! abandoned frames are never dropped: whatever they owned is leaked, which is
//! acceptable for a test that has already failed.

use core::arch::global_asm;
use core::fmt::{self, Write};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::trap::{TrapFrame, exception_name};
use crate::{apic, gdt, irq, serial};

/// What an application processor's job ended with instead of returning.
/// The panic message is kept whole, without allocating (the heap may be
/// what failed), hence the size difference between the variants.
#[derive(Clone, Copy)]
#[allow(clippy::large_enum_variant)]
pub enum ApFailure {
    /// A CPU exception no handler took.
    Fault(Fault),
    /// A panic, with its message.
    Panic(Message),
}

impl fmt::Display for ApFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApFailure::Fault(fault) => write!(f, "{fault}"),
            ApFailure::Panic(message) => write!(f, "panic: {}", message.as_str()),
        }
    }
}

/// What an application processor does with its own fault or panic (a
/// `fn(ApFailure) -> !` as an address; 0: none). `catch` is the boot CPU's
/// alone, so an AP must never unwind into it.
static AP_FAILURE: AtomicUsize = AtomicUsize::new(0);

/// Sets what an application processor does when its code faults or
/// panics (the SMP layer records it and parks the CPU).
pub fn on_ap_failure(handler: fn(ApFailure) -> !) {
    AP_FAILURE.store(handler as usize, Ordering::Release);
}

/// Hands an AP's failure to the SMP layer's handler, if this is an AP and
/// one is set; returns otherwise.
fn ap_failure(failure: ApFailure) {
    if apic::cpu() == 0 {
        return;
    }
    let handler = AP_FAILURE.load(Ordering::Acquire);
    if handler != 0 {
        // SAFETY: a non-zero value is a `fn(ApFailure) -> !` stored by
        // `on_ap_failure`.
        let handler = unsafe { core::mem::transmute::<usize, fn(ApFailure) -> !>(handler) };
        handler(failure);
    }
}

global_asm!(
    r#"
    .section .text
    .global catch_call
    .global catch_resume
/* u64 catch_call(u64 *saved_rsp, void (*f)(void *), void *arg) */
catch_call:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    sub $8, %rsp
    mov %rsp, (%rdi)
    mov %rdx, %rdi
    call *%rsi
    xor %eax, %eax
catch_return:
    add $8, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
/* noreturn catch_resume(u64 saved_rsp, u64 value) */
catch_resume:
    mov %rdi, %rsp
    mov %rsi, %rax
    jmp catch_return
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    fn catch_call(saved_rsp: *mut u64, f: extern "C" fn(*mut u8), arg: *mut u8) -> u64;
    fn catch_resume(saved_rsp: u64, value: u64) -> !;
}

/// An exception taken by the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The exception vector (14 for a page fault).
    pub vector: u8,
    /// The error code the CPU pushed, or 0.
    pub error_code: u64,
    /// Address of the faulting instruction.
    pub rip: u64,
    /// CR2 for a page fault (the address accessed), else 0.
    pub cr2: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exception {} ({}) error code {:#x} at rip {:#x}",
            self.vector,
            exception_name(self.vector.into()),
            self.error_code,
            self.rip
        )?;
        if self.vector == crate::trap::PAGE_FAULT {
            write!(f, ", cr2 {:#x}", self.cr2)?;
        }
        Ok(())
    }
}

/// A panic message, kept in a fixed buffer: the panic may have happened with
/// the heap lock held.
#[derive(Clone, Copy)]
pub struct Message {
    buf: [u8; 240],
    len: usize,
}

impl Message {
    const EMPTY: Message = Message {
        buf: [0; 240],
        len: 0,
    };

    /// The message text (truncated to the buffer).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid utf-8>")
    }
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut utf8 = [0; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            if self.len + bytes.len() > self.buf.len() {
                break;
            }
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Why a [`catch`]ed closure did not return.
// The panic message is inline on purpose: the panic path must not allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug)]
pub enum Caught {
    /// It panicked, with this message.
    Panic(Message),
    /// It took a CPU exception.
    Exception(Fault),
    /// It ran past the watchdog's deadline.
    Watchdog,
    /// A user process it ran called `exit` with this code.
    Exited(u64),
}

impl fmt::Display for Caught {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caught::Panic(m) => write!(f, "panicked: {}", m.as_str()),
            Caught::Exception(fault) => write!(f, "unexpected {fault}"),
            Caught::Watchdog => write!(f, "hung: watchdog expired"),
            Caught::Exited(code) => write!(f, "user process exited with {code}"),
        }
    }
}

/// One active [`catch`], linked to the one it is nested in.
struct Catcher {
    saved_rsp: u64,
    prev: *mut Catcher,
    caught: Option<Caught>,
}

/// The innermost active catcher, or null.
static CURRENT: AtomicPtr<Catcher> = AtomicPtr::new(ptr::null_mut());

/// Runs `f`, returning its result, or what stopped it.
///
/// Interrupts must be enabled when this is called: a recovery re-enables them.
#[allow(clippy::result_large_err)]
pub fn catch<F: FnOnce() -> R, R>(f: F) -> Result<R, Caught> {
    struct Call<F, R> {
        f: Option<F>,
        result: Option<R>,
    }
    extern "C" fn trampoline<F: FnOnce() -> R, R>(arg: *mut u8) {
        // SAFETY: `arg` is the `Call` that `catch` below passed to
        // `catch_call`; it outlives this call and nothing else touches it.
        let call = unsafe { &mut *arg.cast::<Call<F, R>>() };
        if let Some(f) = call.f.take() {
            call.result = Some(f());
        }
    }

    let mut call = Call {
        f: Some(f),
        result: None,
    };
    let mut catcher = Catcher {
        saved_rsp: 0,
        prev: CURRENT.load(Ordering::Acquire),
        caught: None,
    };
    CURRENT.store(&raw mut catcher, Ordering::Release);
    // SAFETY: `catch_call` saves and restores every callee-saved register and
    // calls `trampoline` with `call`, both alive for the duration. A resume
    // returns here on the stack `catch_call` saved, which is still ours.
    let status = unsafe {
        catch_call(
            &raw mut catcher.saved_rsp,
            trampoline::<F, R>,
            (&raw mut call).cast(),
        )
    };
    CURRENT.store(catcher.prev, Ordering::Release);
    if status == 0 {
        Ok(call.result.take().expect("the trampoline stored a result"))
    } else {
        Err(catcher.caught.take().unwrap_or(Caught::Watchdog))
    }
}

/// Takes the innermost catcher off the list, storing why it is resumed.
fn unlink_current(caught: Caught) -> Option<u64> {
    let current = CURRENT.load(Ordering::Acquire);
    if current.is_null() {
        return None;
    }
    // SAFETY: a non-null CURRENT points at a live `Catcher` on the stack of a
    // `catch` call that has not returned yet (it unlinks itself before it
    // returns), and we run with interrupts disabled on the only CPU.
    let catcher = unsafe { &mut *current };
    catcher.caught = Some(caught);
    CURRENT.store(catcher.prev, Ordering::Release);
    irq::abandon_handlers();
    Some(catcher.saved_rsp)
}

/// Points an interrupted context at `catch_resume` so `iretq` returns from
/// the innermost `catch` with an error.
fn redirect(frame: &mut TrapFrame, saved_rsp: u64) {
    frame.rip = catch_resume as *const () as u64;
    frame.rdi = saved_rsp;
    frame.rsi = 1;
    frame.rsp = saved_rsp;
    frame.cs = gdt::KERNEL_CODE.0.into();
    frame.ss = gdt::KERNEL_DATA.0.into();
    // IF set, everything else clear: a catch starts with interrupts on.
    frame.rflags = 0x202;
}

/// Handles an exception: resumes the innermost `catch`, or stops the kernel.
pub fn exception(fault: Fault, frame: &mut TrapFrame) {
    ap_failure(ApFailure::Fault(fault));
    match unlink_current(Caught::Exception(fault)) {
        Some(rsp) => redirect(frame, rsp),
        None => {
            serial::force_unlock();
            crate::println!("\nFATAL: {fault}");
            crate::println!("{frame:#x?}");
            crate::exit::exit_qemu(crate::exit::ExitCode::Failure);
        }
    }
}

/// Ends the innermost `catch` (the one running a user process) from a
/// system call: `exit(code)`.
pub fn exit_process(frame: &mut TrapFrame, code: u64) {
    if let Some(rsp) = unlink_current(Caught::Exited(code)) {
        redirect(frame, rsp);
    }
}

/// Makes this layer the trap layer's fallback: every trap no handler took
/// (an exception) ends the innermost `catch`, or the kernel.
pub fn init() {
    crate::trap::set_fallback(on_unhandled);
}

fn on_unhandled(frame: &mut TrapFrame, cr2: u64) {
    let fault = Fault {
        vector: frame.vector as u8,
        error_code: frame.error_code,
        rip: frame.rip,
        cr2,
    };
    exception(fault, frame);
}

/// Called from the timer interrupt when the watchdog fires: ends the
/// innermost `catch` (the test's) as hung.
pub fn watchdog(frame: &mut TrapFrame) {
    if let Some(rsp) = unlink_current(Caught::Watchdog) {
        redirect(frame, rsp);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    let mut message = Message::EMPTY;
    let _ = write!(message, "{}", info.message());
    if let Some(location) = info.location() {
        let _ = write!(message, " at {}:{}", location.file(), location.line());
    }
    // An AP leaves the serial lock alone: the boot CPU may hold it.
    ap_failure(ApFailure::Panic(message));
    serial::force_unlock();
    match unlink_current(Caught::Panic(message)) {
        Some(rsp) => {
            x86_64::instructions::interrupts::enable();
            // SAFETY: `rsp` was saved by `catch_call` on a stack that is still
            // live (its `catch` has not returned) and everything above it is
            // abandoned; `catch_resume` restores the callee-saved registers.
            unsafe { catch_resume(rsp, 1) }
        }
        None => {
            crate::println!("\nKERNEL PANIC: {}", message.as_str());
            crate::exit::exit_qemu(crate::exit::ExitCode::Failure);
        }
    }
}
