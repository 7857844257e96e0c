//! Chapter 4 of the guide (`guide/src/lsi53c895a.md`) followed by hand, as
//! its complete worked example: the machine's second LSI53C895A driven
//! through raw volatile MMIO with no driver, its registers, bits and
//! instruction words written out from the chapter's tables (not taken from
//! the crate), so that a wrong table fails here on the real (emulated) chip.

use core::sync::atomic::{Ordering, fence};

use dmaengine::hal::Dma;

use crate::dma::{KernelHal, LSI2};
use crate::harness::Test;
use crate::mem::phys_to_virt;
use crate::time;

pub const TESTS: &[Test] = &[Test::new("guide.chapter4_by_hand", guide_chapter4_by_hand)];

// Registers (offsets into BAR1).
const DSTAT: usize = 0x0c;
const ISTAT: usize = 0x14;
const ISTAT1: usize = 0x15;
const DSP: usize = 0x2c;
const DSPS: usize = 0x30;
const DMODE: usize = 0x38;
const DIEN: usize = 0x39;
const SIST0: usize = 0x42;
const SIST1: usize = 0x43;

// Bits.
const ISTAT_ABRT: u8 = 0x80;
const ISTAT_SRST: u8 = 0x40;
const ISTAT_SIGP: u8 = 0x20;
const ISTAT_INTF: u8 = 0x04;
const ISTAT_SIP: u8 = 0x02;
const ISTAT_DIP: u8 = 0x01;
const ISTAT1_SRUN: u8 = 0x02;
const DSTAT_MDPE: u8 = 0x40;
const DSTAT_BF: u8 = 0x20;
const DSTAT_ABRT: u8 = 0x10;
const DSTAT_SIR: u8 = 0x04;
const DSTAT_IID: u8 = 0x01;
const DSTAT_ERRORS: u8 = DSTAT_MDPE | DSTAT_BF | DSTAT_ABRT | DSTAT_IID;

// Instruction words.
const MEMORY_MOVE: u32 = 0xc000_0000;
const STORE_DSP_4: u32 = 0xe02c_0004;
const JUMP: u32 = 0x8008_0000;
const INT: u32 = 0x9808_0000;
const INTFLY: u32 = 0x9818_0000;
const MOVE_CTEST2_OR_0_TO_SFBR: u32 = 0x721a_0000;
const WAIT_RESELECT: u32 = 0x5000_0000;

/// Everything the chip touches: a page of SCRIPTS, a page of data.
const PAGE: usize = 4096;
const LEN: usize = 64;
/// What every data byte that is neither a source nor a destination holds.
const GUARD: u8 = 0xee;
/// The completion word's offset in the data page.
const COMPLETION: usize = 3 * 1024;

/// The chip's operating registers, reached through BAR1 in the direct map
/// (uncached over the PCI hole).
struct Chip(*mut u8);

impl Chip {
    fn read8(&self, reg: usize) -> u8 {
        // SAFETY: `reg` is one of the offsets above, inside BAR1 (0x400
        // bytes), which this test holds (`LSI2.by_hand`) and reaches
        // uncached; device memory is only ever touched through volatile
        // accesses.
        unsafe { self.0.add(reg).read_volatile() }
    }
    fn write8(&self, reg: usize, value: u8) {
        // SAFETY: as in `read8`.
        unsafe { self.0.add(reg).write_volatile(value) }
    }
    fn read32(&self, reg: usize) -> u32 {
        // SAFETY: as in `read8`; the 32-bit registers are 4-byte aligned.
        unsafe { self.0.add(reg).cast::<u32>().read_volatile() }
    }
    fn write32(&self, reg: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { self.0.add(reg).cast::<u32>().write_volatile(value) }
    }

    /// Waits (1 s at most) for `done`, which reads the chip or memory.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = time::now_ns() + 1_000_000_000;
        while !done() {
            assert!(
                time::now_ns() < deadline,
                "timed out waiting for {what}: ISTAT {:#04x} ISTAT1 {:#04x} DSP {:#x}",
                self.read8(ISTAT),
                self.read8(ISTAT1),
                self.read32(DSP),
            );
            core::hint::spin_loop();
        }
    }

    /// The chapter's acknowledge, with `intf` the ISTAT value to write
    /// first: then DSTAT (which does not clear while INTF is set), then
    /// SIST0 and SIST1. Returns DSTAT.
    fn acknowledge(&self, intf: u8) -> u8 {
        self.write8(ISTAT, intf);
        let dstat = self.read8(DSTAT);
        self.read8(SIST0);
        self.read8(SIST1);
        dstat
    }

    /// The chapter's stop: abort, soft reset, release, then clear the
    /// status the abort raised (INTF alone: the soft reset cleared SIGP,
    /// there is no doorbell to keep).
    fn stop(&self) {
        self.write8(ISTAT, ISTAT_ABRT);
        self.write8(ISTAT, ISTAT_SRST);
        self.write8(ISTAT, 0);
        self.acknowledge(ISTAT_INTF);
    }
}

/// Dword `i` of a page the chip fetches from (or stores into).
struct Words<'a>(&'a Dma<KernelHal>);

impl Words<'_> {
    fn addr(&self, word: usize) -> u32 {
        u32::try_from(self.0.paddr() + 4 * word as u64).expect("allocated below 4 GiB")
    }
    /// Writes `words` from dword `at` on, in order.
    fn put(&self, at: usize, words: &[u32]) {
        for (i, &w) in words.iter().enumerate() {
            assert!((at + i + 1) * 4 <= self.0.len());
            // SAFETY: inside the page (checked above), dword-aligned; the
            // chip may be fetching from this page, so plain (non-volatile)
            // stores, which the compiler could merge or reorder, are not used.
            unsafe { self.0.as_ptr().cast::<u32>().add(at + i).write_volatile(w) };
        }
    }
    fn get(&self, at: usize) -> u32 {
        assert!((at + 1) * 4 <= self.0.len());
        // SAFETY: inside the page, dword-aligned; the chip may be storing
        // into it.
        unsafe { self.0.as_ptr().cast::<u32>().add(at).read_volatile() }
    }
}

fn memory_move(len: usize, src: u32, dst: u32) -> [u32; 3] {
    assert!(len <= 0x00ff_ffff);
    [MEMORY_MOVE | len as u32, src, dst]
}

/// Reads the data page back through volatile loads: the chip wrote it.
fn snapshot(data: &Dma<KernelHal>) -> alloc::vec::Vec<u8> {
    (0..data.len())
        // SAFETY: inside the buffer; the chip is parked or stopped.
        .map(|i| unsafe { data.as_ptr().add(i).read_volatile() })
        .collect()
}

fn guide_chapter4_by_hand() {
    // Finding the chip: BAR1, with memory decoding and bus mastering on
    // (`find_nth` turns them on). The guard keeps the crate's channel off
    // the chip while this test drives it.
    let device = LSI2.by_hand().expect("the second LSI53C895A, free");
    let (bar1, size) = device.mem_bar(1).expect("BAR1 is a memory BAR");
    assert!(size >= 0x400);
    let chip = Chip(phys_to_virt(bar1));

    let script = Dma::<KernelHal>::new_below(PAGE, 0xffff_ffff).expect("script page");
    let mut data = Dma::<KernelHal>::new_below(PAGE, 0xffff_ffff).expect("data page");
    let ring = Words(&script);
    let data_base = data.paddr();
    let at =
        |offset: usize| u32::try_from(data_base + offset as u64).expect("allocated below 4 GiB");
    // Three copies: sources at 0, 1024 and 2048, destinations 256 bytes
    // further, guard bytes everywhere else.
    let src = |n: usize| 1024 * n;
    let dst = |n: usize| 1024 * n + 256;
    let pattern = |n: usize, i: usize| (i as u8).wrapping_mul(7).wrapping_add(1 + 64 * n as u8);
    data.as_mut_slice().fill(GUARD);
    for n in 0..3 {
        for i in 0..LEN {
            data.as_mut_slice()[src(n) + i] = pattern(n, i);
        }
    }
    // The data page as it must end after copy `copies`.
    let expected = |copies: usize| {
        let mut bytes = alloc::vec![GUARD; PAGE];
        for n in 0..3 {
            for i in 0..LEN {
                bytes[src(n) + i] = pattern(n, i);
                if n < copies {
                    bytes[dst(n) + i] = pattern(n, i);
                }
            }
        }
        bytes
    };

    // Reset: stop whatever ran before, then the error interrupts on and
    // automatic start (a DSP write starts SCRIPTS).
    chip.stop();
    chip.write8(DIEN, DSTAT_ERRORS);
    chip.write8(DMODE, 0);
    assert_eq!(chip.read8(ISTAT1) & ISTAT1_SRUN, 0, "stopped after reset");

    // 1. One Memory Move, then an INT: start through DSP, poll ISTAT.DIP,
    //    read DSTAT (which acknowledges it) and the INT's value in DSPS.
    ring.put(0, &memory_move(LEN, at(src(0)), at(dst(0))));
    ring.put(3, &[INT, 0x0c4a_0001]);
    // The words are in memory before the chip can fetch them: volatile
    // stores stay in order with the volatile DSP write, and x86 keeps
    // stores in order.
    chip.write32(DSP, ring.addr(0));
    chip.wait_for("the INT", || chip.read8(ISTAT) & ISTAT_DIP != 0);
    let dstat = chip.read8(DSTAT);
    assert_eq!(
        dstat & (DSTAT_SIR | DSTAT_ERRORS),
        DSTAT_SIR,
        "stopped by the INT, no error"
    );
    assert_eq!(chip.read32(DSPS), 0x0c4a_0001, "the INT's value");
    chip.read8(SIST0);
    chip.read8(SIST1);
    assert_eq!(chip.read8(ISTAT) & (ISTAT_DIP | ISTAT_SIP | ISTAT_INTF), 0);
    assert_eq!(chip.read8(ISTAT1) & ISTAT1_SRUN, 0, "an INT stops SCRIPTS");
    assert_eq!(snapshot(&data), expected(1), "first copy");

    // 2. The resident loop: a tail at word 5, started by one DSP write; it
    //    clears SIGP and parks in WAIT RESELECT with SRUN set.
    let tail = 5;
    ring.put(tail, &[MOVE_CTEST2_OR_0_TO_SFBR, 0]);
    ring.put(tail + 2, &[WAIT_RESELECT, ring.addr(tail)]);
    chip.write32(DSP, ring.addr(tail));
    assert_ne!(chip.read8(ISTAT1) & ISTAT1_SRUN, 0, "parked, still running");
    assert_eq!(chip.read8(ISTAT) & ISTAT_DIP, 0, "no stop");

    // A batch behind the tail, then the old tail turned into a JUMP to it,
    // then the doorbell. Returns the new tail.
    let append = |old_tail: usize, batch: &[u32]| -> usize {
        let first = old_tail + 4;
        ring.put(first, batch);
        let new_tail = first + batch.len();
        ring.put(new_tail, &[MOVE_CTEST2_OR_0_TO_SFBR, 0]);
        ring.put(new_tail + 2, &[WAIT_RESELECT, ring.addr(new_tail)]);
        ring.put(old_tail + 1, &[ring.addr(first)]);
        fence(Ordering::Release);
        ring.put(old_tail, &[JUMP]);
        chip.write8(ISTAT, ISTAT_SIGP);
        new_tail
    };
    let completion = Words(&data);
    let store = [STORE_DSP_4, at(COMPLETION)];

    // 3. The second copy with its write-back: done when the completion word
    //    holds the address after the Store, which is the new tail's.
    let mut batch = alloc::vec::Vec::new();
    batch.extend_from_slice(&memory_move(LEN, at(src(1)), at(dst(1))));
    batch.extend_from_slice(&store);
    let tail = append(tail, &batch);
    chip.wait_for("the second write-back", || {
        completion.get(COMPLETION / 4) == ring.addr(tail)
    });
    let mut want = expected(2);
    want[COMPLETION..COMPLETION + 4].copy_from_slice(&ring.addr(tail).to_le_bytes());
    assert_eq!(snapshot(&data), want, "second copy");
    assert_ne!(chip.read8(ISTAT1) & ISTAT1_SRUN, 0, "parked again");

    // 4. The third copy asks for an interrupt: write-back, then INTFLY.
    //    Polled here (ISTAT.INTF), acknowledged as the handler would.
    let mut batch = alloc::vec::Vec::new();
    batch.extend_from_slice(&memory_move(LEN, at(src(2)), at(dst(2))));
    batch.extend_from_slice(&store);
    batch.extend_from_slice(&[INTFLY, 0]);
    // The Store leaves the address after itself: the INTFLY's.
    let intfly = tail + 4 + batch.len() - 2;
    append(tail, &batch);
    chip.wait_for("the INTFLY", || chip.read8(ISTAT) & ISTAT_INTF != 0);
    chip.wait_for("the third write-back", || {
        completion.get(COMPLETION / 4) == ring.addr(intfly)
    });
    // INTF with SIGP: INTF alone would drop a doorbell rung meanwhile.
    let dstat = chip.acknowledge(ISTAT_INTF | ISTAT_SIGP);
    assert_eq!(dstat & DSTAT_ERRORS, 0, "no error");
    assert_eq!(chip.read8(ISTAT) & (ISTAT_DIP | ISTAT_SIP | ISTAT_INTF), 0);
    let mut want = expected(3);
    want[COMPLETION..COMPLETION + 4].copy_from_slice(&ring.addr(intfly).to_le_bytes());
    assert_eq!(snapshot(&data), want, "third copy");
    assert_ne!(chip.read8(ISTAT1) & ISTAT1_SRUN, 0, "parked again");

    // Stopping: the loop ends, nothing is pending.
    chip.stop();
    assert_eq!(chip.read8(ISTAT1) & ISTAT1_SRUN, 0, "stopped");
    assert_eq!(chip.read8(ISTAT) & (ISTAT_DIP | ISTAT_SIP | ISTAT_INTF), 0);
    // For good: a doorbell no longer wakes the WAIT it was parked in.
    chip.write8(ISTAT, ISTAT_SIGP);
    assert_eq!(
        chip.read8(ISTAT1) & ISTAT1_SRUN,
        0,
        "a doorbell wakes nothing"
    );
    assert_eq!(snapshot(&data), want, "nothing moved after the stop");
    chip.stop();
}
