//! Guest tests of the copy API on the LSI53C895A SCRIPTS engine and the CPU
//! engine: bytes at the destination, guard bytes untouched, cookies ending
//! in the right state, the chip stopping where it must.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::time::Duration;

use dmaengine::engine::{
    Callback, Channel, Cookie, DmaError, Engine, ErrorKind, PrepFlags, Status,
};
use dmaengine::hal::Dma;
use embedded_hal::delay::DelayNs;

use crate::dma::{EDU, EduChannel, KernelHal, LSI, LsiChannel, cpu_channel};
use crate::harness::Test;
use crate::rng::Rng;
use crate::time::Delay;
use crate::{irq, time};

pub const TESTS: &[Test] = &[
    Test::new("dma.lsi.dmatest_small_buffers", lsi_dmatest_small),
    Test::new("dma.lsi.dmatest_up_to_1MiB", lsi_dmatest_large),
    Test::new("dma.cpu.dmatest_small_buffers", cpu_dmatest_small),
    Test::new("dma.cpu.dmatest_up_to_1MiB", cpu_dmatest_large),
    Test::new(
        "dma.lsi.batches_across_the_99_instruction_slice",
        lsi_batches_across_slice,
    ),
    Test::new("dma.lsi.fill_and_zero_odd_lengths", lsi_fill_and_zero),
    Test::new("dma.cpu.fill_and_zero_odd_lengths", cpu_fill_and_zero),
    Test::new("dma.lsi.cookie_wraparound", lsi_cookie_wraparound),
    Test::new(
        "dma.lsi.polling_with_interrupts_off",
        lsi_polling_with_interrupts_off,
    ),
    Test::new(
        "dma.lsi.completion_interrupt_and_callback",
        lsi_interrupt_and_callback,
    ),
    Test::new(
        "dma.lsi.illegal_instruction_fails_one_aborts_rest",
        lsi_illegal_instruction,
    ),
    Test::new(
        "dma.lsi.abort_mid_chain_stops_for_good",
        lsi_abort_mid_chain,
    ),
    Test::new(
        "dma.lsi.terminate_with_the_line_unmasked_raises_no_storm",
        lsi_terminate_no_storm,
    ),
    Test::new("dma.lsi.stalled_engine_wait_times_out", lsi_stalled_engine),
    Test::new("dma.lsi.bad_requests_change_nothing", lsi_bad_requests),
    Test::new("dma.lsi.owned_buffers_round_trip", lsi_owned_buffers),
    Test::new("dma.lsi.fenced_requests_see_earlier_results", lsi_fence),
    Test::new("dma.lsi.one_channel_per_chip", one_channel_per_chip),
    Test::new("dma.edu.copy_completes_by_interrupt", edu_copy_by_interrupt),
    Test::new("dma.edu.split_copy_by_polling", edu_split_copy_by_polling),
    Test::new("dma.edu.unsupported_and_bad_requests", edu_bad_requests),
    Test::new(
        "dma.edu.terminate_keeps_buffers_until_the_device_is_idle",
        edu_terminate_mid_transfer,
    ),
    Test::new(
        "dma.registry.client_gets_and_uses_channels_of_every_engine",
        registry_with_every_engine,
    ),
    Test::new(
        "dma.lsi.dmatest_random_batches_in_flight",
        lsi_random_batches,
    ),
    Test::new(
        "dma.cpu.dmatest_random_batches_in_flight",
        cpu_random_batches,
    ),
    Test::new(
        "dma.registry.engine_removed_mid_transfer_stops_and_aborts",
        registry_removal_mid_transfer,
    ),
    Test::new("dma.lsi_and_edu_in_flight_at_once", lsi_and_edu_at_once),
    Test::new(
        "dma.lsi_copies_between_buffers_the_caller_owns",
        lsi_copies_between_owned_buffers,
    ),
    Test::new(
        "dma.engines_refuse_what_they_cannot_do_with_the_right_error",
        engine_refusals,
    ),
];

pub(super) fn random_batches<E: Engine>(chan: &mut Channel<E>, stream: u64, requests: u64) {
    let mut bufs = crate::soak::Buffers::new();
    let mut rng = crate::rng::Rng::from_seed(stream);
    let mut stats = crate::soak::Stats::default();
    while stats.requests < requests {
        crate::soak::batch(chan, &mut bufs, &mut rng, &mut stats);
        assert_eq!(
            stats.error_count(),
            0,
            "after {} requests (seed {}): {:?}",
            stats.requests,
            crate::rng::seed(),
            stats.errors
        );
    }
    crate::soak::check_whole(&bufs, &mut stats);
    assert_eq!(stats.error_count(), 0, "{:?}", stats.errors);
}

fn lsi_random_batches() {
    random_batches(&mut *lsi(), 1, 4000);
}

fn cpu_random_batches() {
    random_batches(&mut cpu_channel(), 2, 1500);
}

/// An engine that goes away mid-transfer: the client is told, every
/// request not complete ends `Aborted` (none is lost), the chip stops, and
/// the bytes stop changing.
fn registry_removal_mid_transfer() {
    use dmaengine::engine::registry::{Event, Registry};
    const N: usize = 3000;
    REGISTRY_EVENTS.lock().clear();
    let mut lsi = lsi();
    let src = buffer(64 * N, src_pattern);
    let dst = buffer(128 * N, dst_pattern);
    let registry: Registry<'_> = Registry::new();
    let client = recording_client(&registry);
    registry.request_channels(client, 1).unwrap();
    let handle = registry.add_channel(&mut *lsi).unwrap();
    let mut chan = registry.channel(client, handle).unwrap();
    let mut cookies = Vec::new();
    for k in 0..N {
        // SAFETY: slots of buffers we own, read only after the removal has
        // stopped the chip.
        let cookie = unsafe {
            chan.memcpy_buf_to_buf(
                dst.paddr() + 128 * k as u64,
                src.paddr() + 64 * k as u64,
                64,
            )
        }
        .expect("prep");
        cookies.push(cookie);
    }
    chan.issue_pending();
    // The guard holds the channel's lock, which the removal takes.
    drop(chan);
    let chan = registry.remove_channel(handle).expect("remove");
    assert_eq!(
        REGISTRY_EVENTS.lock().as_slice(),
        [Event::ChannelAdded(handle), Event::ChannelRemoved(handle)]
    );
    let fates: Vec<Status> = cookies.iter().map(|&c| chan.status(c).status).collect();
    let done = fates.iter().take_while(|&&s| s == Status::Complete).count();
    assert!(done < N, "3000 moves cannot finish before the removal");
    assert!(
        fates[done..]
            .iter()
            .all(|&s| s == Status::Error(ErrorKind::Aborted)),
        "no cookie lost: every one not complete is aborted"
    );
    let before = checksum(dst.as_slice());
    Delay.delay_ms(5);
    assert_eq!(checksum(dst.as_slice()), before, "the chip kept copying");
    assert_eq!(
        registry.channel(client, handle).err(),
        Some(dmaengine::engine::registry::RegistryError::Unknown),
        "the removed channel's handle is stale"
    );
    // Taken back reset: usable at once by its next user.
    // SAFETY: whole buffers we own, read after `wait`.
    let again = unsafe { chan.memcpy_buf_to_buf(dst.paddr(), src.paddr(), 64) }.expect("prep");
    chan.wait(again, &mut Delay, TIMEOUT)
        .expect("works after removal");
}

/// The edu device's 100 ms transfer and a stream of LSI copies, in flight
/// together; both verified.
fn lsi_and_edu_at_once() {
    let (mut lsi, mut edu) = (lsi(), edu());
    let src = buffer(8192, src_pattern);
    let edu_dst = buffer(4096, dst_pattern);
    let lsi_dst = buffer(8192, dst_pattern);
    // SAFETY: buffers we own, read after both waits.
    let slow = unsafe { edu.prep_copy(edu_dst.paddr(), src.paddr(), 4000, PrepFlags::empty()) }
        .expect("edu prep");
    edu.issue_pending();
    let mut lsi_done = 0;
    while edu.status(slow).status == Status::InProgress {
        let k = (lsi_done % 64) as u64;
        // SAFETY: as above.
        let c = unsafe {
            lsi.prep_copy(
                lsi_dst.paddr() + 128 * k,
                src.paddr() + 4096 + 64 * k,
                64,
                PrepFlags::empty(),
            )
        }
        .expect("lsi prep");
        lsi.wait(c, &mut Delay, TIMEOUT).expect("lsi copy");
        lsi_done += 1;
    }
    edu.wait(slow, &mut Delay, TIMEOUT).expect("edu copy");
    assert!(
        lsi_done >= 10,
        "the LSI ran while the edu copy was in flight ({lsi_done} copies)"
    );
    assert_eq!(first_mismatch(edu_dst.as_slice(), window(0, 0, 4000)), None);
    let slots = lsi_done.min(64);
    let expected = |i: usize| {
        let (k, within) = (i / 128, i % 128);
        if k < slots && within < 64 {
            src_pattern(4096 + 64 * k + within)
        } else {
            dst_pattern(i)
        }
    };
    assert_eq!(first_mismatch(lsi_dst.as_slice(), expected), None);
}

/// The driver-level answers behind `NotSupported` and `Halted`: never
/// `RingFull` for something waiting will not fix.
fn engine_refusals() {
    use dmaengine::engine::{EngineError, Op};
    let mut edu = edu();
    let buf = buffer(4096, dst_pattern);
    let fill = Op::Fill {
        dst: buf.paddr(),
        len: 64,
        pattern: 0,
    };
    assert_eq!(
        // SAFETY: refused (edu cannot fill), nothing runs; the engine
        // stays in its channel.
        unsafe { edu.engine_mut().prep(Cookie::FIRST, fill, None) },
        Err(EngineError::NotSupported)
    );
    let mut lsi = lsi();
    let src = buffer(64 * 2, src_pattern);
    let dst = buffer(128 * 2, dst_pattern);
    // SAFETY: the engine stays in its channel.
    unsafe { lsi.engine_mut() }.inject_illegal_instruction();
    let cookies = prep_slots(&mut lsi, &src, &dst, 0..1);
    lsi.issue_pending();
    assert!(lsi.wait(cookies[0], &mut Delay, TIMEOUT).is_err());
    let copy = Op::Copy {
        dst: dst.paddr(),
        src: src.paddr(),
        len: 64,
    };
    assert_eq!(
        // SAFETY: refused (the engine is halted), nothing runs; the engine
        // stays in its channel.
        unsafe { lsi.engine_mut().prep(Cookie::FIRST, copy, None) },
        Err(EngineError::Halted),
        "a halted ring is not a full one"
    );
    // SAFETY: refused: the channel is halted.
    let refused = unsafe { lsi.prep_copy(dst.paddr(), src.paddr(), 64, PrepFlags::empty()) };
    assert_eq!(refused, Err(DmaError::Halted));
}

pub(super) const TIMEOUT: Duration = Duration::from_secs(5);

/// Source bytes have bit 7 set, destination bytes have it clear (as Linux's
/// dmatest does), and both vary with the position.
pub(super) fn src_pattern(i: usize) -> u8 {
    0x80 | ((i ^ (i >> 7) ^ (i >> 15)) as u8 & 0x7f)
}

pub(super) fn dst_pattern(i: usize) -> u8 {
    (i ^ (i >> 9) ^ (i >> 17)) as u8 & 0x7f
}

pub(super) fn buffer(len: usize, pattern: fn(usize) -> u8) -> Dma<KernelHal> {
    let mut buf = Dma::<KernelHal>::new(len).expect("DMA buffer");
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(i);
    }
    buf
}

/// The first byte of `buf` that differs from `expected(i)`.
pub(super) fn first_mismatch(
    buf: &[u8],
    expected: impl Fn(usize) -> u8,
) -> Option<(usize, u8, u8)> {
    buf.iter()
        .enumerate()
        .find(|&(i, &b)| b != expected(i))
        .map(|(i, &b)| (i, b, expected(i)))
}

/// What a destination filled with `dst_pattern` holds after `len` bytes
/// from offset `s` of a `src_pattern` source were copied to offset `d`.
pub(super) fn window(d: usize, s: usize, len: usize) -> impl Fn(usize) -> u8 {
    move |i| {
        if (d..d + len).contains(&i) {
            src_pattern(s + i - d)
        } else {
            dst_pattern(i)
        }
    }
}

/// Copies `iterations` random windows between two `buf_len` buffers and
/// checks the whole of both buffers after each.
fn dmatest<E: Engine>(
    chan: &mut Channel<E>,
    iterations: usize,
    buf_len: usize,
    max_len: usize,
    seed: u64,
) {
    let src = buffer(buf_len, src_pattern);
    let mut dst = buffer(buf_len, dst_pattern);
    let mut rng = Rng::new(seed);
    for it in 0..iterations {
        let len = rng.length(max_len.min(buf_len));
        let s = rng.below((buf_len - len + 1) as u64) as usize;
        let d = rng.below((buf_len - len + 1) as u64) as usize;
        // SAFETY: both windows are inside buffers we own and do not touch
        // until `wait` has returned.
        let cookie = unsafe {
            chan.prep_copy(
                dst.paddr() + d as u64,
                src.paddr() + s as u64,
                len,
                PrepFlags::empty(),
            )
        }
        .unwrap_or_else(|e| panic!("iteration {it}: prep {len} bytes: {e}"));
        chan.issue_pending();
        chan.wait(cookie, &mut Delay, TIMEOUT)
            .unwrap_or_else(|e| panic!("iteration {it}: {len} bytes: {e}"));
        if let Some((i, got, want)) = first_mismatch(src.as_slice(), src_pattern) {
            panic!("iteration {it}: source byte {i} changed to {got:#x} (was {want:#x})");
        }
        let expected = window(d, s, len);
        if let Some((i, got, want)) = first_mismatch(dst.as_slice(), expected) {
            panic!(
                "iteration {it}: copy {len} bytes {s:#x}->{d:#x}: destination byte {i} is {got:#x}, want {want:#x}"
            );
        }
        for (i, b) in dst.as_mut_slice()[d..d + len].iter_mut().enumerate() {
            *b = dst_pattern(d + i);
        }
    }
}

fn lsi() -> LsiChannel {
    LSI.channel()
        .unwrap_or_else(|e| panic!("LSI53C895A channel: {e}"))
}

fn lsi_dmatest_small() {
    dmatest(&mut lsi(), 2000, 16 << 10, 16 << 10, 0x5eed_0001);
}

fn lsi_dmatest_large() {
    dmatest(&mut lsi(), 24, 2 << 20, 1 << 20, 0x5eed_0002);
}

fn cpu_dmatest_small() {
    dmatest(&mut cpu_channel(), 2000, 16 << 10, 16 << 10, 0x5eed_0003);
}

fn cpu_dmatest_large() {
    dmatest(&mut cpu_channel(), 24, 2 << 20, 1 << 20, 0x5eed_0004);
}

/// `count` 64-byte copies from `src` slot k to `dst` slot 2k (leaving gaps).
fn prep_slots(
    chan: &mut LsiChannel,
    src: &Dma<KernelHal>,
    dst: &Dma<KernelHal>,
    range: core::ops::Range<usize>,
) -> Vec<Cookie> {
    range
        .map(|k| {
            // SAFETY: slots inside buffers we own, untouched until checked
            // after the requests have completed.
            unsafe {
                chan.prep_copy(
                    dst.paddr() + 128 * k as u64,
                    src.paddr() + 64 * k as u64,
                    64,
                    PrepFlags::empty(),
                )
            }
            .expect("prep")
        })
        .collect()
}

fn check_slots(src: &Dma<KernelHal>, dst: &Dma<KernelHal>, copied: core::ops::Range<usize>) {
    let expected = |i: usize| {
        let (k, within) = (i / 128, i % 128);
        if copied.contains(&k) && within < 64 {
            src.as_slice()[64 * k + within]
        } else {
            dst_pattern(i)
        }
    };
    if let Some((i, got, want)) = first_mismatch(dst.as_slice(), expected) {
        panic!(
            "destination byte {i} (slot {}) is {got:#x}, want {want:#x}",
            i / 128
        );
    }
}

fn lsi_batches_across_slice() {
    const N: usize = 2000;
    let mut chan = lsi();
    let src = buffer(64 * 2 * N, src_pattern);
    let dst = buffer(128 * 2 * N, dst_pattern);
    let first = prep_slots(&mut chan, &src, &dst, 0..N);
    chan.issue_pending();
    assert!(
        chan.engine().is_running(),
        "2000 moves must outlast QEMU's first 100-instruction slice"
    );
    let last = *first.last().unwrap();
    assert_eq!(
        chan.status(last).status,
        Status::InProgress,
        "status while SRUN is set"
    );
    // Append to the running chain.
    let second = prep_slots(&mut chan, &src, &dst, N..2 * N);
    chan.issue_pending();
    let end = *second.last().unwrap();
    chan.wait(end, &mut Delay, TIMEOUT)
        .expect("both batches complete");
    assert!(
        chan.engine().is_running(),
        "the resident loop parks in its WAIT, SRUN set, not stopped"
    );
    for c in first.iter().chain(&second) {
        assert_eq!(chan.status(*c).status, Status::Complete, "{c:?}");
    }
    check_slots(&src, &dst, 0..2 * N);
}

fn fill_and_zero<E: Engine>(chan: &mut Channel<E>) {
    const PATTERN: u64 = 0x0123_4567_89ab_cdef;
    let cases = [
        (1, 1),
        (3, 7),
        (8, 8),
        (5, 9),
        (0, 4095),
        (13, 65_537),
        (7, (1 << 20) + 3),
    ];
    let mut dst = buffer((1 << 20) + 64, dst_pattern);
    for (offset, len) in cases {
        for zero in [false, true] {
            let at = dst.paddr() + offset as u64;
            // SAFETY: inside `dst`, which we own and read only after `wait`.
            let cookie = unsafe {
                if zero {
                    chan.zero(at, len, PrepFlags::empty())
                } else {
                    chan.fill(at, len, PATTERN, PrepFlags::empty())
                }
            }
            .expect("prep");
            chan.wait(cookie, &mut Delay, TIMEOUT)
                .expect("fill/zero completes");
            let expected = |i: usize| {
                if !(offset..offset + len).contains(&i) {
                    dst_pattern(i)
                } else if zero {
                    0
                } else {
                    PATTERN.to_le_bytes()[(i - offset) % 8]
                }
            };
            if let Some((i, got, want)) = first_mismatch(dst.as_slice(), expected) {
                panic!(
                    "{} {len} bytes at +{offset}: byte {i} is {got:#x}, want {want:#x}",
                    if zero { "zero" } else { "fill" }
                );
            }
            for (i, b) in dst
                .as_mut_slice()
                .iter_mut()
                .enumerate()
                .skip(offset)
                .take(len)
            {
                *b = dst_pattern(i);
            }
        }
    }
}

fn lsi_fill_and_zero() {
    fill_and_zero(&mut lsi());
}

fn cpu_fill_and_zero() {
    fill_and_zero(&mut cpu_channel());
}

fn lsi_cookie_wraparound() {
    let mut chan = lsi();
    chan.set_next_cookie(Cookie::new(i32::MAX - 9).unwrap())
        .unwrap();
    let src = buffer(64 * 30, src_pattern);
    let dst = buffer(128 * 30, dst_pattern);
    let mut all = Vec::new();
    for batch in 0..3 {
        let cookies = prep_slots(&mut chan, &src, &dst, batch * 10..batch * 10 + 10);
        chan.issue_pending();
        chan.wait_all(&mut Delay, TIMEOUT).expect("batch completes");
        all.extend(cookies);
    }
    let values: Vec<i32> = all.iter().map(|c| c.get()).collect();
    assert_eq!(
        values[..10],
        core::array::from_fn::<i32, 10, _>(|i| i32::MAX - 9 + i as i32)
    );
    assert_eq!(
        values[10..],
        core::array::from_fn::<i32, 20, _>(|i| 1 + i as i32)
    );
    for c in &all {
        assert_eq!(chan.status(*c).status, Status::Complete, "{c:?}");
    }
    assert_eq!(
        (chan.snapshot().last_completed, chan.snapshot().last_used),
        (20, 20)
    );
    check_slots(&src, &dst, 0..30);
}

fn lsi_polling_with_interrupts_off() {
    x86_64::instructions::interrupts::without_interrupts(|| {
        dmatest(&mut lsi(), 100, 8192, 8192, 0x5eed_0005)
    });
}

static LSI_FOR_IRQ: spin::Mutex<Option<LsiChannel>> = spin::Mutex::new(None);
static CALLBACK_STATUS: AtomicU32 = AtomicU32::new(0);
static CALLBACK_RAN: AtomicBool = AtomicBool::new(false);

fn lsi_irq() {
    if let Some(chan) = LSI_FOR_IRQ.lock().as_mut() {
        chan.handle_interrupt();
    }
}

fn on_complete(_cookie: Cookie, status: Status, context: usize) {
    CALLBACK_STATUS.store(
        if status == Status::Complete {
            context as u32
        } else {
            u32::MAX
        },
        Ordering::Release,
    );
    CALLBACK_RAN.store(true, Ordering::Release);
}

fn lsi_interrupt_and_callback() {
    use x86_64::instructions::interrupts::without_interrupts;
    let line = LSI.device().expect("LSI").irq_line;
    let src = buffer(4096, src_pattern);
    let dst = buffer(4096, dst_pattern);
    CALLBACK_RAN.store(false, Ordering::Release);
    let before = irq::count(line);
    without_interrupts(|| *LSI_FOR_IRQ.lock() = Some(lsi()));
    irq::register(line, lsi_irq).expect("register LSI handler");
    let cookie = without_interrupts(|| {
        let mut guard = LSI_FOR_IRQ.lock();
        let chan = guard.as_mut().expect("channel");
        let callback = Callback {
            func: on_complete,
            context: 0x600d,
        };
        let op = dmaengine::engine::Op::Copy {
            dst: dst.paddr() + 100,
            src: src.paddr() + 7,
            len: 3000,
        };
        // SAFETY: inside buffers we own, read only after the callback ran.
        let cookie = unsafe { chan.prep(op, PrepFlags::INTERRUPT, Some(callback)) }.expect("prep");
        chan.issue_pending();
        cookie
    });
    let start = time::now_ns();
    while !CALLBACK_RAN.load(Ordering::Acquire) && time::now_ns() - start < 2_000_000_000 {
        x86_64::instructions::hlt();
    }
    let status =
        without_interrupts(|| LSI_FOR_IRQ.lock().as_mut().map(|c| c.status(cookie).status));
    irq::unregister(line, lsi_irq);
    without_interrupts(|| LSI_FOR_IRQ.lock().take());
    assert!(
        CALLBACK_RAN.load(Ordering::Acquire),
        "no completion callback within 2 s"
    );
    assert_eq!(
        CALLBACK_STATUS.load(Ordering::Acquire),
        0x600d,
        "callback saw Complete and its context"
    );
    assert!(
        irq::count(line) > before,
        "the callback ran from the interrupt on line {line}"
    );
    assert_eq!(status, Some(Status::Complete));
    let expected = window(100, 7, 3000);
    assert_eq!(first_mismatch(dst.as_slice(), expected), None);
}

/// Issue 17, bug 1: `terminate` aborted the chip, which raised its line,
/// and soft-reset it, which cleared the status without lowering the line;
/// the handler found ISTAT 0 and claimed nothing, so the level interrupt
/// fired again at once, about 100 000 times in 20 ms. With the line unmasked
/// and the handler registered, a terminate mid-chain now costs at most a
/// few interrupts.
fn lsi_terminate_no_storm() {
    use x86_64::instructions::interrupts::{self, without_interrupts};
    const N: usize = 2000;
    let line = LSI.device().expect("LSI").irq_line;
    let src = buffer(64 * N, src_pattern);
    let dst = buffer(128 * N, dst_pattern);
    without_interrupts(|| *LSI_FOR_IRQ.lock() = Some(lsi()));
    irq::register(line, lsi_irq).expect("register LSI handler");
    without_interrupts(|| {
        let mut guard = LSI_FOR_IRQ.lock();
        let chan = guard.as_mut().expect("channel");
        prep_slots(chan, &src, &dst, 0..N);
        chan.issue_pending();
        assert!(chan.engine().is_running(), "stopped mid-chain below");
    });
    let before = irq::count(line);
    without_interrupts(|| LSI_FOR_IRQ.lock().as_mut().expect("channel").terminate());
    let was_on = interrupts::are_enabled();
    let start = time::now_ns();
    interrupts::enable();
    while time::now_ns() - start < 20_000_000 {
        core::hint::spin_loop();
    }
    if !was_on {
        interrupts::disable();
    }
    let taken = irq::count(line) - before;
    irq::unregister(line, lsi_irq);
    let halted = without_interrupts(|| LSI_FOR_IRQ.lock().take()).map(|c| c.is_halted());
    assert_eq!(halted, Some(true));
    assert!(
        taken <= 4,
        "{taken} interrupts on line {line} in the 20 ms after terminate"
    );
}

fn lsi_illegal_instruction() {
    let mut chan = lsi();
    let src = buffer(64 * 8, src_pattern);
    let dst = buffer(128 * 8, dst_pattern);
    let mut cookies = prep_slots(&mut chan, &src, &dst, 0..3);
    // SAFETY: the engine stays in its channel.
    unsafe { chan.engine_mut() }.inject_illegal_instruction();
    cookies.extend(prep_slots(&mut chan, &src, &dst, 3..6));
    chan.issue_pending();
    let last = cookies[5];
    assert_eq!(
        chan.wait(last, &mut Delay, TIMEOUT),
        Err(DmaError::Failed(ErrorKind::Aborted))
    );
    let fates: Vec<Status> = cookies.iter().map(|&c| chan.status(c).status).collect();
    assert_eq!(
        fates,
        [
            Status::Complete,
            Status::Complete,
            Status::Complete,
            Status::Error(ErrorKind::InvalidDescriptor),
            Status::Error(ErrorKind::Aborted),
            Status::Error(ErrorKind::Aborted),
        ]
    );
    check_slots(&src, &dst, 0..3);
    assert!(chan.is_halted());
    // SAFETY: never runs: the channel is halted.
    let refused = unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 64, PrepFlags::empty()) };
    assert_eq!(refused, Err(DmaError::Halted));
    chan.reset().expect("reset");
    let again = prep_slots(&mut chan, &src, &dst, 6..8);
    chan.wait(again[1], &mut Delay, TIMEOUT)
        .expect("works after reset");
    let expected_after = |i: usize| {
        let (k, within) = (i / 128, i % 128);
        if !(3..6).contains(&k) && within < 64 {
            src_pattern(64 * k + within)
        } else {
            dst_pattern(i)
        }
    };
    assert_eq!(
        first_mismatch(dst.as_slice(), expected_after),
        None,
        "requests 4-6 never ran"
    );
}

fn checksum(buf: &[u8]) -> u64 {
    buf.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn lsi_abort_mid_chain() {
    const SMALL: usize = 50;
    const BIG: usize = 500;
    const BATCHES: usize = 10;
    let total = SMALL + BIG * BATCHES;
    let mut chan = lsi();
    let src = buffer(64 * total, src_pattern);
    let dst = buffer(128 * total, dst_pattern);
    // A small first batch completes inside the DSP write; the big ones run
    // in QEMU's background slices (100 instructions per 500 us).
    let mut cookies = prep_slots(&mut chan, &src, &dst, 0..SMALL);
    chan.issue_pending();
    for b in 0..BATCHES {
        let start = SMALL + b * BIG;
        cookies.extend(prep_slots(&mut chan, &src, &dst, start..start + BIG));
        chan.issue_pending();
    }
    assert!(chan.engine().is_running());
    chan.terminate();
    let fates: Vec<Status> = cookies.iter().map(|&c| chan.status(c).status).collect();
    let done = fates.iter().take_while(|&&s| s == Status::Complete).count();
    assert!(
        done >= SMALL,
        "the first batch completed before the abort ({done} complete)"
    );
    assert!(
        done < total,
        "the last batch cannot have finished ({done} of {total} complete)"
    );
    assert!(
        fates[done..]
            .iter()
            .all(|&s| s == Status::Error(ErrorKind::Aborted)),
        "after the completed prefix, everything is aborted"
    );
    // Completed requests are exact; an aborted one may have run before the
    // abort (it was not written back yet), but never half of a 64-byte move,
    // and nothing outside the slots is touched.
    let slot_ok = |k: usize| {
        let got = &dst.as_slice()[128 * k..128 * k + 64];
        let copied = got == &src.as_slice()[64 * k..64 * k + 64];
        let untouched = got
            .iter()
            .enumerate()
            .all(|(i, &b)| b == dst_pattern(128 * k + i));
        if k < done {
            copied
        } else {
            copied || untouched
        }
    };
    assert!(
        (0..total).all(slot_ok),
        "a slot holds neither its copy nor its old bytes"
    );
    let gaps_untouched = (0..total)
        .all(|k| (64..128).all(|i| dst.as_slice()[128 * k + i] == dst_pattern(128 * k + i)));
    assert!(gaps_untouched, "bytes between slots were written");
    // QEMU's resume timer survives an abort alone; the soft reset after it
    // must stop the processor for good.
    let before = checksum(dst.as_slice());
    Delay.delay_ms(5);
    assert_eq!(
        checksum(dst.as_slice()),
        before,
        "the processor kept copying after terminate"
    );
    assert!(!chan.engine().is_running());
    chan.reset().expect("reset");
    let again = prep_slots(&mut chan, &src, &dst, 0..1);
    chan.wait(again[0], &mut Delay, TIMEOUT)
        .expect("works after reset");
}

fn lsi_stalled_engine() {
    let mut chan = lsi();
    // SAFETY: the engine stays in its channel.
    unsafe { chan.engine_mut() }.set_manual_start(true);
    let src = buffer(64 * 2, src_pattern);
    let dst = buffer(128 * 2, dst_pattern);
    let cookies = prep_slots(&mut chan, &src, &dst, 0..2);
    let start = time::now_ns();
    assert_eq!(
        chan.wait(cookies[1], &mut Delay, Duration::from_millis(20)),
        Err(DmaError::TimedOut)
    );
    let waited_ms = (time::now_ns() - start) / 1_000_000;
    assert!(waited_ms >= 20, "wait returned after {waited_ms} ms");
    assert_eq!(chan.status(cookies[0]).status, Status::InProgress);
    check_slots(&src, &dst, 0..0);
    chan.terminate();
    for c in &cookies {
        assert_eq!(chan.status(*c).status, Status::Error(ErrorKind::Aborted));
    }
    // SAFETY: the engine stays in its channel.
    unsafe { chan.engine_mut() }.set_manual_start(false);
    chan.reset().expect("reset");
    let again = prep_slots(&mut chan, &src, &dst, 0..2);
    chan.wait(again[1], &mut Delay, TIMEOUT)
        .expect("works after reset");
    check_slots(&src, &dst, 0..2);
}

fn lsi_bad_requests() {
    let mut chan = lsi();
    let src = buffer(8192, src_pattern);
    let dst = buffer(8192, dst_pattern);
    let (s, d) = (src.paddr(), dst.paddr());
    let before = chan.snapshot();
    // SAFETY: none of these is accepted, so nothing runs.
    unsafe {
        assert_eq!(
            chan.prep_copy(d, s, 0, PrepFlags::empty()),
            Err(DmaError::ZeroLength)
        );
        assert_eq!(
            chan.prep_copy(d, d + 100, 200, PrepFlags::empty()),
            Err(DmaError::Overlap)
        );
        assert_eq!(
            chan.prep_copy(0x1_0000_0000, s, 64, PrepFlags::empty()),
            Err(DmaError::BeyondDmaMask)
        );
        assert_eq!(
            chan.prep_copy(d, 0xffff_fff0, 64, PrepFlags::empty()),
            Err(DmaError::BeyondDmaMask)
        );
        assert_eq!(
            chan.fill(0x2_0000_0000, 64, 0, PrepFlags::empty()),
            Err(DmaError::BeyondDmaMask)
        );
        assert_eq!(
            chan.memcpy_buf_to_page(d + 1, 0, s, 64),
            Err(DmaError::Misaligned)
        );
        assert_eq!(
            chan.memcpy_page_to_page(d, 4000, s, 0, 200),
            Err(DmaError::OutOfPage)
        );
    }
    assert_eq!(chan.snapshot(), before);
    // Ring full: prepare until refused, without issuing.
    let mut cookies = Vec::new();
    let refused = loop {
        // SAFETY: 64-byte copies inside our buffers, checked after `wait`.
        match unsafe { chan.memcpy_buf_to_buf(d + 64, s, 64) } {
            Ok(c) => cookies.push(c),
            Err(e) => break e,
        }
        assert!(cookies.len() < 100_000, "the ring never filled");
    };
    assert_eq!(refused, DmaError::RingFull);
    let full = chan.snapshot();
    // SAFETY: refused like the one before, so nothing runs.
    let again = unsafe { chan.memcpy_buf_to_buf(d, s, 64) };
    assert_eq!(again, Err(DmaError::RingFull));
    assert_eq!(chan.snapshot(), full, "a refused request takes no cookie");
    chan.wait_all(&mut Delay, TIMEOUT)
        .expect("the full ring drains");
    assert!(
        cookies
            .iter()
            .all(|&c| chan.status(c).status == Status::Complete)
    );
    // The ring is usable again.
    // SAFETY: inside our buffers, checked after `wait`.
    let c = unsafe { chan.memcpy_page_to_page(d, 128, s, 64, 256) }.expect("room again");
    chan.wait(c, &mut Delay, TIMEOUT).expect("completes");
    assert_eq!(&dst.as_slice()[128..384], &src.as_slice()[64..320]);
    assert_eq!(&dst.as_slice()[64..128], &src.as_slice()[..64]);
    assert!(
        cookies.len() > 1000,
        "the ring held only {} copies",
        cookies.len()
    );
}

fn lsi_owned_buffers() {
    let mut chan = lsi();
    let src = buffer(10_000, src_pattern);
    let dst = buffer(10_000, dst_pattern);
    let transfer = chan
        .copy(dst, 10, src, 20, 9000, PrepFlags::empty())
        .expect("prep");
    let (dst, src) = transfer
        .wait(&mut chan, &mut Delay, TIMEOUT)
        .expect("copy completes");
    let src = src.expect("source back");
    let expected = window(10, 20, 9000);
    assert_eq!(first_mismatch(dst.as_slice(), expected), None);
    let transfer = chan
        .fill_buffer(dst, 1, 9999, 0xfeed_face_dead_beef, PrepFlags::empty())
        .expect("prep");
    chan.issue_pending();
    let (dst, _) = transfer
        .wait(&mut chan, &mut Delay, TIMEOUT)
        .expect("fill completes");
    assert!(
        dst.as_slice()[1..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == 0xfeed_face_dead_beefu64.to_le_bytes()[i % 8])
    );
    let refused = chan
        .copy(dst, 0, src, 0, 10_001, PrepFlags::empty())
        .expect_err("too long");
    assert_eq!(refused.error, DmaError::OutOfBounds);
}

/// A -> B, then B -> C with a fence, then C -> D: each copy reads what the
/// one before wrote, within one batch.
fn lsi_fence() {
    let mut chan = lsi();
    let a = buffer(4096, src_pattern);
    let bufs: Vec<Dma<KernelHal>> = (0..3).map(|_| buffer(4096, dst_pattern)).collect();
    let mut last = None;
    let mut from = a.paddr();
    for buf in &bufs {
        // SAFETY: whole buffers we own, read only after `wait`.
        last = Some(
            unsafe { chan.prep_copy(buf.paddr(), from, 4096, PrepFlags::FENCE) }.expect("prep"),
        );
        from = buf.paddr();
    }
    chan.wait(last.expect("three requests"), &mut Delay, TIMEOUT)
        .expect("chain completes");
    for buf in &bufs {
        assert_eq!(buf.as_slice(), a.as_slice());
    }
}

fn edu() -> EduChannel {
    EDU.channel().unwrap_or_else(|e| panic!("edu channel: {e}"))
}

static EDU_FOR_IRQ: spin::Mutex<Option<EduChannel>> = spin::Mutex::new(None);
static EDU_DONE: AtomicBool = AtomicBool::new(false);

fn edu_irq() {
    if let Some(chan) = EDU_FOR_IRQ.lock().as_mut() {
        chan.handle_interrupt();
    }
}

fn edu_done(_cookie: Cookie, status: Status, _context: usize) {
    EDU_DONE.store(status == Status::Complete, Ordering::Release);
}

/// Two device transfers, 100 ms (virtual) each, driven by the interrupt:
/// the request is in progress long after `issue_pending` returns.
fn edu_copy_by_interrupt() {
    use x86_64::instructions::interrupts::without_interrupts;
    let line = EDU.device().expect("edu").irq_line;
    let src = buffer(4096, src_pattern);
    let dst = buffer(4096, dst_pattern);
    EDU_DONE.store(false, Ordering::Release);
    without_interrupts(|| *EDU_FOR_IRQ.lock() = Some(edu()));
    irq::register(line, edu_irq).expect("register edu handler");
    let start = time::now_ns();
    let (cookie, right_after) = without_interrupts(|| {
        let mut guard = EDU_FOR_IRQ.lock();
        let chan = guard.as_mut().expect("channel");
        let op = dmaengine::engine::Op::Copy {
            dst: dst.paddr() + 1,
            src: src.paddr() + 2,
            len: 4000,
        };
        let callback = Callback {
            func: edu_done,
            context: 0,
        };
        // SAFETY: inside buffers we own, read only after the callback ran.
        let cookie = unsafe { chan.prep(op, PrepFlags::INTERRUPT, Some(callback)) }.expect("prep");
        chan.issue_pending();
        (cookie, chan.status(cookie).status)
    });
    while !EDU_DONE.load(Ordering::Acquire) && time::now_ns() - start < 3_000_000_000 {
        x86_64::instructions::hlt();
    }
    let elapsed_ms = (time::now_ns() - start) / 1_000_000;
    let status =
        without_interrupts(|| EDU_FOR_IRQ.lock().as_mut().map(|c| c.status(cookie).status));
    irq::unregister(line, edu_irq);
    without_interrupts(|| EDU_FOR_IRQ.lock().take());
    assert_eq!(
        right_after,
        Status::InProgress,
        "asynchronous: not done when issue_pending returns"
    );
    assert!(EDU_DONE.load(Ordering::Acquire), "no completion within 3 s");
    assert!(
        elapsed_ms >= 150,
        "two 100 ms transfers took only {elapsed_ms} ms"
    );
    assert_eq!(status, Some(Status::Complete));
    let expected = window(1, 2, 4000);
    assert_eq!(first_mismatch(dst.as_slice(), expected), None);
}

/// A request longer than one transfer is split (4095-byte pieces), and
/// polling alone drives it to the end.
fn edu_split_copy_by_polling() {
    let mut chan = edu();
    let src = buffer(10_000, src_pattern);
    let dst = buffer(10_000, dst_pattern);
    // SAFETY: inside buffers we own, read only after `wait`.
    let c = unsafe { chan.prep_copy(dst.paddr() + 3, src.paddr(), 9000, PrepFlags::empty()) }
        .expect("prep");
    chan.wait(c, &mut Delay, TIMEOUT).expect("copy completes");
    let expected = window(3, 0, 9000);
    assert_eq!(first_mismatch(dst.as_slice(), expected), None);
}

/// The device has no abort: a terminate with a transfer in flight returns
/// at once, and the owned buffers stay in flight until a later poll finds
/// the device idle (its transfer ends 100 ms of virtual time after it
/// started); the second half of the copy, the write to RAM, never starts.
fn edu_terminate_mid_transfer() {
    use dmaengine::engine::TransferError;
    let mut chan = edu();
    let src = buffer(4000, src_pattern);
    let dst = buffer(4000, dst_pattern);
    let transfer = chan
        .copy(dst, 0, src, 0, 4000, PrepFlags::empty())
        .map_err(|e| e.error)
        .expect("prep");
    chan.issue_pending();
    let before = chan.engine().register_accesses();
    chan.terminate();
    let accesses = chan.engine().register_accesses() - before;
    assert!(chan.is_stopping(), "the transfer into the device runs on");
    assert!(
        accesses <= 2,
        "terminate asks, never waits ({accesses} accesses)"
    );
    let mut transfer = match transfer.finish(&mut chan) {
        Err(TransferError::Pending(t)) => t,
        _ => panic!("buffers handed back while the device reads them"),
    };
    let mut waited_us = 0;
    let (kind, dst) = loop {
        match transfer.finish(&mut chan) {
            Err(TransferError::Pending(t)) => transfer = t,
            Err(TransferError::Failed { kind, dst, .. }) => break (kind, dst),
            _ => panic!("the copy cannot have completed"),
        }
        assert!(waited_us < 2_000_000, "the device never went idle");
        Delay.delay_us(100);
        waited_us += 100;
    };
    assert!(waited_us > 0, "stopped only once the device was idle");
    assert_eq!(kind, ErrorKind::Aborted);
    assert_eq!(
        first_mismatch(dst.as_slice(), dst_pattern),
        None,
        "the write to RAM never started"
    );
    assert_eq!(chan.reset(), Ok(()));
}

fn edu_bad_requests() {
    let mut chan = edu();
    let buf = buffer(4096, dst_pattern);
    let before = chan.snapshot();
    // SAFETY: none of these is accepted, so nothing runs.
    unsafe {
        assert_eq!(
            chan.fill(buf.paddr(), 64, 0, PrepFlags::empty()),
            Err(DmaError::NotSupported)
        );
        assert_eq!(
            chan.zero(buf.paddr(), 64, PrepFlags::empty()),
            Err(DmaError::NotSupported)
        );
        assert_eq!(
            chan.prep_copy(0x1_0000_0000, buf.paddr(), 64, PrepFlags::empty()),
            Err(DmaError::BeyondDmaMask)
        );
        assert_eq!(
            chan.prep_copy(buf.paddr(), buf.paddr() + 32, 64, PrepFlags::empty()),
            Err(DmaError::Overlap)
        );
    }
    assert_eq!(chan.snapshot(), before);
    assert_eq!(first_mismatch(buf.as_slice(), dst_pattern), None);
}

static REGISTRY_EVENTS: spin::Mutex<Vec<dmaengine::engine::registry::Event>> =
    spin::Mutex::new(Vec::new());

/// A client of `registry` whose events land in `REGISTRY_EVENTS`.
fn recording_client(
    registry: &dmaengine::engine::registry::Registry<'_>,
) -> dmaengine::engine::registry::ClientId {
    registry
        .register_client(dmaengine::engine::registry::EventCallback {
            func: registry_event,
            context: 0,
        })
        .expect("room for a client")
}

fn registry_event(
    _client: dmaengine::engine::registry::ClientId,
    event: dmaengine::engine::registry::Event,
    _context: usize,
) {
    REGISTRY_EVENTS.lock().push(event);
}

/// The 2005 I/OAT proposal's client flow: a client asks for channels, engines appear and
/// their channels are handed to it; it copies through each; an engine goes
/// and the client is told.
fn registry_with_every_engine() {
    use dmaengine::engine::registry::{Event, Registry};
    REGISTRY_EVENTS.lock().clear();
    let (mut lsi, mut cpu, mut edu) = (lsi(), cpu_channel(), edu());
    let registry: Registry<'_> = Registry::new();
    let client = recording_client(&registry);
    registry.request_channels(client, 3).unwrap();
    let handles = [
        registry.add_channel(&mut *lsi).unwrap(),
        registry.add_channel(&mut cpu).unwrap(),
        registry.add_channel(&mut *edu).unwrap(),
    ];
    assert_eq!(*REGISTRY_EVENTS.lock(), handles.map(Event::ChannelAdded));
    let src = buffer(4096, src_pattern);
    for (k, &handle) in handles.iter().enumerate() {
        let dst = buffer(4096, dst_pattern);
        let mut chan = registry
            .channel(client, handle)
            .expect("the client's channel");
        // SAFETY: whole buffers we own, read only after `wait`.
        let cookie =
            unsafe { chan.memcpy_buf_to_buf(dst.paddr(), src.paddr(), 3000) }.expect("prep");
        chan.wait(cookie, &mut Delay, TIMEOUT)
            .unwrap_or_else(|e| panic!("channel {k}: {e}"));
        let expected = |i: usize| {
            if i < 3000 {
                src_pattern(i)
            } else {
                dst_pattern(i)
            }
        };
        assert_eq!(
            first_mismatch(dst.as_slice(), expected),
            None,
            "channel {k}"
        );
    }
    registry
        .remove_channel(handles[0])
        .expect("remove the LSI channel");
    assert_eq!(
        REGISTRY_EVENTS.lock().last(),
        Some(&Event::ChannelRemoved(handles[0]))
    );
    assert_eq!(registry.channels_of(client), 2);
}

fn one_channel_per_chip() {
    let first = lsi();
    assert_eq!(
        LSI.channel().err(),
        Some(DmaError::Busy),
        "a second engine on the same chip"
    );
    drop(first);
    let mut again = lsi();
    let src = buffer(256, src_pattern);
    let dst = buffer(256, dst_pattern);
    // SAFETY: whole buffers we own, read after `wait`.
    let c = unsafe { again.prep_copy(dst.paddr(), src.paddr(), 256, PrepFlags::empty()) }
        .expect("prep");
    again
        .wait(c, &mut Delay, TIMEOUT)
        .expect("the chip is free again");
    assert_eq!(dst.as_slice(), src.as_slice());
}

/// A heap `Vec` and a static array, neither from `dma_alloc`, shared with
/// the chip through `SharedBuffer` (the kernel's `Hal::share` walks the page
/// tables): the LSI53C895A copies between them, across page boundaries, and
/// every byte lands.
fn lsi_copies_between_owned_buffers() {
    use dmaengine::hal::{Direction, SharedBuffer};
    static TABLE: spin::Mutex<[u8; 6000]> = spin::Mutex::new([0; 6000]);
    let src: Vec<u8> = (0..9000).map(src_pattern).collect();
    let mut dst = alloc::vec![0u8; 9000];
    let mut lsi = lsi();
    let mut table = TABLE.lock();
    table.fill(0xee);
    SharedBuffer::<KernelHal>::to_device(&src, |from| {
        SharedBuffer::<KernelHal>::from_device(&mut dst, Direction::FromDevice, |to| {
            SharedBuffer::<KernelHal>::from_device(&mut table[..], Direction::Both, |into_table| {
                // SAFETY: all three buffers stay shared (borrowed) until the waits end.
                let first = unsafe {
                    lsi.prep_copy(to.dma_addr(), from.dma_addr(), 9000, PrepFlags::empty())
                }
                .expect("prep");
                // SAFETY: as above.
                let second = unsafe {
                    lsi.prep_copy(
                        into_table.dma_addr() + 100,
                        from.dma_addr() + 50,
                        5000,
                        PrepFlags::empty(),
                    )
                }
                .expect("prep");
                lsi.wait(first, &mut Delay, TIMEOUT)
                    .expect("copy into the Vec");
                lsi.wait(second, &mut Delay, TIMEOUT)
                    .expect("copy into the array");
            })
            .expect("share the static array")
        })
        .expect("share the other Vec")
    })
    .expect("share the Vec");
    assert_eq!(first_mismatch(&dst, src_pattern), None);
    let expected = |i: usize| {
        if (100..5100).contains(&i) {
            src_pattern(i - 50)
        } else {
            0xee
        }
    };
    assert_eq!(first_mismatch(&table[..], expected), None);
    let empty: &[u8] = &[];
    // SAFETY: an empty buffer, refused before anything is shared.
    let refused = unsafe {
        <KernelHal as dmaengine::hal::Hal>::share(
            core::ptr::NonNull::from(empty),
            Direction::ToDevice,
        )
    };
    assert_eq!(refused, Err(dmaengine::hal::HalError::ZeroLength));
}
