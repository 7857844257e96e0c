//! Copies awaited with `async`/`.await` on shared channels, woken by the
//! engines' interrupts and run by the kernel's executor.

use alloc::vec::Vec;
use core::cell::Cell;
use core::pin::pin;

use dmaengine::drivers::cpu::CpuEngine;
use dmaengine::engine::shared::X86Interrupts;
use dmaengine::engine::{Channel, Op, PrepFlags, SharedChannel};
use dmaengine::hal::DmaAddr;

use super::dma::{TIMEOUT, buffer, dst_pattern, first_mismatch, src_pattern, window};
use crate::dma::{EDU, KernelHal, LSI, LSI2, SharedLsi};
use crate::harness::Test;
use crate::mem::phys_to_virt;
use crate::time::Delay;
use crate::{executor, irq};

pub const TESTS: &[Test] = &[
    Test::new(
        "async.two_lsis_edu_and_cpu_awaited_at_once",
        lsi_edu_and_cpu_at_once,
    ),
    Test::new(
        "async.dropped_and_forgotten_futures_leave_the_buffers_alone",
        dropped_futures,
    ),
    Test::new(
        "async.an_await_that_must_wait_asks_for_its_own_interrupt",
        await_arms_its_interrupt,
    ),
];

/// Moves in one LSI batch: more than the 99 instructions QEMU runs inside
/// the register write that starts the chip, so the batch really completes
/// later, from QEMU's timer (QEMU-FACTS.md).
const LSI_BATCH: usize = 150;

/// `rounds` LSI batches of [`LSI_BATCH`] moves awaited one after the
/// other on `lsi`: round r moves 16 bytes from `src[16k]` to
/// `dst[32k + r]` for every k (see [`check_lsi_slots`]).
async fn lsi_rounds(lsi: &SharedLsi, src: DmaAddr, dst: DmaAddr) {
    for round in 0..4usize {
        let ops: Vec<Op> = (0..LSI_BATCH)
            .map(|k| Op::Copy {
                dst: dst + (32 * k + round) as u64,
                src: src + 16 * k as u64,
                len: 16,
            })
            .collect();
        // SAFETY: inside buffers the caller owns and reads only after the
        // batch's last request has ended.
        let batch =
            unsafe { lsi.lock().prep_batch(&ops, PrepFlags::INTERRUPT) }.expect("LSI batch");
        lsi.completion(batch.last).await.expect("LSI batch");
    }
}

/// Four LSI batches of 150 moves awaited one after the other on each of
/// the two LSI chips (one if the machine has one), the edu device's 200 ms
/// copy and a CPU-engine fill, all awaited at once by four tasks. Tasks
/// are polled only when woken, so the edu's completion (and on QEMU 7.2,
/// which finishes long batches later, the LSIs') reached its task through
/// the interrupt handler. The edu ends last, as its hardware is the slowest
/// (which of the CPU fill and the LSI batches end first depends on whether
/// the emulator paces SCRIPTS), and every byte is checked.
fn lsi_edu_and_cpu_at_once() {
    let (lsi, lsi_line) = LSI.serviced().expect("LSI53C895A channel");
    let second = LSI2.serviced().ok();
    let (edu, edu_line) = EDU.serviced().expect("edu channel");
    let cpu: SharedChannel<CpuEngine<KernelHal>, X86Interrupts> =
        SharedChannel::new(Channel::new(CpuEngine::new()));
    let lsi2_line = second.as_ref().map(|(_, line)| *line);
    let count = |line: Option<u8>| line.map_or(0, irq::count);
    let (lsi_irqs, lsi2_irqs, edu_irqs) =
        (irq::count(lsi_line), count(lsi2_line), irq::count(edu_line));
    let order = Cell::new(0);
    let ended = |at: &Cell<Option<u32>>| {
        at.set(Some(order.get()));
        order.set(order.get() + 1);
    };
    let at = [const { Cell::new(None) }; 4];
    let [lsi_at, lsi2_at, edu_at, cpu_at] = &at;
    let src = buffer(16 * LSI_BATCH, src_pattern);
    let lsi_dst = buffer(32 * LSI_BATCH, dst_pattern);
    let lsi2_dst = buffer(32 * LSI_BATCH, dst_pattern);

    let outcome = {
        let mut lsi_task = pin!(async {
            lsi_rounds(&lsi, src.paddr(), lsi_dst.paddr()).await;
            ended(lsi_at);
        });
        let mut lsi2_task = pin!(async {
            if let Some((lsi2, _)) = &second {
                lsi_rounds(lsi2, src.paddr(), lsi2_dst.paddr()).await;
                ended(lsi2_at);
            }
        });
        let mut edu_task = pin!(async {
            let (src, dst) = (buffer(4096, src_pattern), buffer(4096, dst_pattern));
            let transfer = edu
                .lock()
                .copy(dst, 1, src, 2, 4000, PrepFlags::INTERRUPT)
                .expect("edu prep");
            let (dst, _) = edu.transfer(transfer).await.expect("edu copy");
            assert_eq!(first_mismatch(dst.as_slice(), window(1, 2, 4000)), None);
            ended(edu_at);
        });
        let mut cpu_task = pin!(async {
            let dst = buffer(4096, dst_pattern);
            let transfer = cpu
                .lock()
                .fill_buffer(dst, 5, 1000, FILL, PrepFlags::empty())
                .expect("CPU prep");
            let (dst, _) = cpu.transfer(transfer).await.expect("CPU fill");
            let pattern = FILL.to_le_bytes();
            let expected = |i: usize| {
                if (5..1005).contains(&i) {
                    pattern[(i - 5) % 8]
                } else {
                    dst_pattern(i)
                }
            };
            assert_eq!(first_mismatch(dst.as_slice(), expected), None);
            ended(cpu_at);
        });
        executor::run(
            &mut [
                lsi_task.as_mut(),
                lsi2_task.as_mut(),
                edu_task.as_mut(),
                cpu_task.as_mut(),
            ],
            TIMEOUT.as_nanos() as u64,
        )
    };
    LSI.release(lsi_line);
    if let Some(line) = lsi2_line {
        LSI2.release(line);
    }
    EDU.release(edu_line);
    drop((lsi, second, edu));
    assert_eq!(outcome, Ok(()), "every task ended");
    let tasks = if lsi2_line.is_some() { 4 } else { 3 };
    let mut before_edu: Vec<u32> = [cpu_at, lsi_at, lsi2_at]
        .iter()
        .filter_map(|at| at.get())
        .collect();
    before_edu.sort();
    assert_eq!(
        (before_edu, edu_at.get()),
        ((0..tasks - 1).collect::<Vec<u32>>(), Some(tasks - 1)),
        "ended in the hardware's order: CPU and LSIs, then edu"
    );
    assert!(
        irq::count(lsi_line) - lsi_irqs >= 4,
        "the LSI's completions came by interrupt"
    );
    if let Some(line) = lsi2_line {
        assert!(
            irq::count(line) - lsi2_irqs >= 4,
            "the second LSI's completions came by interrupt"
        );
        check_lsi_slots(lsi2_dst.as_slice());
    }
    assert!(
        irq::count(edu_line) > edu_irqs,
        "the edu's completion came by interrupt"
    );
    check_lsi_slots(lsi_dst.as_slice());
}

/// The pattern `fill_buffer` writes in the CPU task.
const FILL: u64 = 0x0123_4567_89ab_cdef;

/// Slot k of the LSI destination (32 bytes) after rounds 0..4 each copied
/// `src[16k..16k + 16]` to offset `round` of it: byte j of the slot comes
/// from the last round that covered it (round r covers r..r + 16).
fn check_lsi_slots(dst: &[u8]) {
    let expected = |i: usize| {
        let (k, j) = (i / 32, i % 32);
        match (0..4usize).rev().find(|&r| (r..r + 16).contains(&j)) {
            Some(r) if k < LSI_BATCH => src_pattern(16 * k + j - r),
            _ => dst_pattern(i),
        }
    };
    assert_eq!(first_mismatch(dst, expected), None, "LSI destination");
}

/// A batch of 1000 LSI moves prepared *without* `INTERRUPT`, then awaited.
/// If it is still running when the future first looks (QEMU 7.2 runs 99
/// SCRIPTS instructions inside the start write, then the rest from its
/// timer), the future must queue exactly one interrupt-only request behind
/// it and be woken by that interrupt; if it has already ended, no request
/// is added. Either way every byte is checked.
fn await_arms_its_interrupt() {
    const MOVES: usize = 1000;
    let (lsi, line) = LSI.serviced().expect("LSI53C895A channel");
    let src = buffer(16 * MOVES, src_pattern);
    let dst = buffer(32 * MOVES, dst_pattern);
    let ops: Vec<Op> = (0..MOVES)
        .map(|k| Op::Copy {
            dst: dst.paddr() + 32 * k as u64,
            src: src.paddr() + 16 * k as u64,
            len: 16,
        })
        .collect();
    let irqs = irq::count(line);
    // SAFETY: inside buffers this test owns, read after the batch ended.
    let batch = unsafe { lsi.lock().prep_batch(&ops, PrepFlags::empty()) };
    let last = batch.expect("LSI batch").last;
    let (waited, after_first_look, outcome) = {
        let mut future = lsi.completion(last);
        let first_look = executor::poll_once(&mut future);
        let after_first_look = lsi.lock().snapshot().last_used;
        match first_look {
            core::task::Poll::Ready(outcome) => (false, after_first_look, Ok(outcome)),
            core::task::Poll::Pending => (
                true,
                after_first_look,
                executor::block_on(future, TIMEOUT.as_nanos() as u64),
            ),
        }
    };
    LSI.release(line);
    drop(lsi);
    assert_eq!(outcome, Ok(Ok(())), "the batch ended, complete");
    if waited {
        assert_eq!(
            after_first_look,
            last.get() + 1,
            "one interrupt request queued behind the batch"
        );
        assert!(irq::count(line) > irqs, "and its interrupt came");
    } else {
        assert_eq!(after_first_look, last.get(), "nothing queued");
    }
    let expected = |i: usize| {
        let (k, j) = (i / 32, i % 32);
        if j < 16 {
            src_pattern(16 * k + j)
        } else {
            dst_pattern(i)
        }
    };
    assert_eq!(first_mismatch(dst.as_slice(), expected), None);
}

/// A pending transfer future dropped, another forgotten: both requests run
/// to their end, into buffers that were never freed (a buffer allocated
/// after the drop is elsewhere, and its canary survives), and the
/// forgotten future's waker is woken and let go when its request ends.
fn dropped_futures() {
    let (edu, line) = EDU.serviced().expect("edu channel");
    let canary = |i: usize| 0xa5 ^ (i as u8);
    let src = buffer(4096, src_pattern);
    let dst = buffer(4096, dst_pattern);
    let leaked_at = dst.paddr();
    let src2 = buffer(4096, src_pattern);
    let dst2 = buffer(4096, dst_pattern);
    let forgotten_at = dst2.paddr();

    let transfer = edu
        .lock()
        .copy(dst, 0, src, 0, 4000, PrepFlags::INTERRUPT)
        .expect("edu prep");
    let mut dropped = edu.transfer(transfer);
    assert!(
        executor::poll_once(&mut dropped).is_pending(),
        "the edu copy takes 100 ms"
    );
    drop(dropped);
    let transfer = edu
        .lock()
        .copy(dst2, 0, src2, 0, 4000, PrepFlags::INTERRUPT)
        .expect("edu prep");
    let last = transfer.cookie();
    let mut forgotten = edu.transfer(transfer);
    assert!(executor::poll_once(&mut forgotten).is_pending());
    core::mem::forget(forgotten);
    assert_eq!(
        edu.lock().wakers_waiting(),
        1,
        "the forgotten future's waker"
    );

    let after = buffer(8192, canary);
    let after_pages = after.paddr()..after.paddr() + 8192;
    let wait = edu.wait(last, &mut Delay, TIMEOUT);
    let wakers = edu.lock().wakers_waiting();
    EDU.release(line);
    drop(edu);
    wait.expect("both requests ran on");
    assert!(
        !after_pages.contains(&leaked_at) && !after_pages.contains(&forgotten_at),
        "the leaked buffers were not handed out again"
    );
    assert_eq!(first_mismatch(after.as_slice(), canary), None, "canary");
    assert_eq!(wakers, 0, "woken and let go when its request ended");
    for at in [leaked_at, forgotten_at] {
        // SAFETY: the request writing these frames has ended and they were
        // leaked (never freed), so nothing else owns them; reading is safe.
        let written = unsafe { core::slice::from_raw_parts(phys_to_virt(at), 4000) };
        assert_eq!(first_mismatch(written, window(0, 0, 4000)), None);
    }
}
