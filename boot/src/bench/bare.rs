//! Hand-written SCRIPTS on the second LSI53C895A, the emulator's own limit
//! that the copy API is measured against. The first chip belongs to the
//! driver (its resident loop); the second is reserved by holding its
//! channel, and driven here register by register.

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, compiler_fence};

use dmaengine::drivers::lsi53c895a::regs::{self, Dstat, Istat, Istat1};
use dmaengine::drivers::lsi53c895a::script;
use dmaengine::hal::Dma;
use dmaengine::mmio::Registers;
use dmaengine::mmio::{MmioRegion, PortRegion};

use crate::dma::{KernelHal, LSI2, LsiChannel};
use crate::{devices, time};

/// How long one bare run may take before the benchmark gives up (a
/// benchmark must not report the speed of a hang).
const SPIN_LIMIT_NS: u64 = 10_000_000_000;

/// The second chip, reserved by its channel, which stays idle: dropping it
/// stops the chip again.
pub struct BareChip {
    chan: LsiChannel,
    regs: MmioRegion,
    port: PortRegion,
    /// The resident chain's start while one is parked in its WAIT
    /// RESELECT: a DSP write then only moves the resume point (QEMU-FACTS),
    /// so a DSP-started chain must stop it first.
    parked_at: Option<u32>,
}

impl BareChip {
    /// Takes the second chip; `None` without one or while it is in use.
    pub fn take() -> Option<BareChip> {
        let dev = LSI2.device()?;
        let chan = LSI2.channel().ok()?;
        let mut chip = BareChip {
            chan,
            regs: devices::map_bar(dev, regs::MMIO_BAR)?,
            port: devices::map_io_bar(dev, regs::IO_BAR, regs::IO_SIZE)?,
            parked_at: None,
        };
        chip.stop();
        Some(chip)
    }

    /// Aborts and soft-resets the chip through its idle channel, which
    /// stops any chain for good, parked or paused.
    fn stop(&mut self) {
        self.chan.terminate();
        self.parked_at = None;
    }
}

/// Copies the SCRIPTS `words` to the start of `buf`, little-endian.
fn write_words(buf: &mut Dma<KernelHal>, words: &[u32]) {
    for (i, w) in words.iter().enumerate() {
        buf.as_mut_slice()[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
}

/// TSC cycles [`SPIN_LIMIT_NS`] from now.
fn deadline() -> u64 {
    time::rdtsc() + SPIN_LIMIT_NS * (time::tsc_hz() / 1_000_000) / 1000
}

/// A chain started by a DSP write and ended by an INT, polled through
/// ISTAT1.SRUN: how the driver ran each batch before its resident loop.
pub struct RawScript {
    script: Dma<KernelHal>,
}

impl RawScript {
    /// Room for `moves` Memory Moves.
    pub fn new(moves: usize) -> Option<RawScript> {
        let words = moves * script::MOVE_WORDS as usize + script::TC_WORDS as usize;
        Some(RawScript {
            script: Dma::new(words * 4).ok()?,
        })
    }

    /// The chain's DMA address and length (to map it behind an IOMMU).
    pub fn range(&self) -> (u64, usize) {
        (self.script.paddr(), self.script.len())
    }

    /// Writes `moves` Memory Moves (count, source, destination) and a final
    /// INT.
    pub fn build(&mut self, moves: impl Iterator<Item = (u32, u32, u32)>) {
        let mut words = Vec::new();
        for (count, src, dst) in moves {
            words.extend_from_slice(&script::memory_move(count, src, dst));
        }
        words.extend_from_slice(&script::int(0));
        write_words(&mut self.script, &words);
    }

    /// Runs the chain `n` times on `chip`; returns TSC cycles from first
    /// start to last stop.
    pub fn run(&self, chip: &mut BareChip, n: usize) -> u64 {
        run_to_int(chip, self.script.paddr() as u32, n, "raw script")
    }
}

/// Starts the DSP-started chain at `start_at` on `chip` `n` times, each
/// time polling ISTAT1.SRUN until it stops at its INT (DSTAT.SIR); returns
/// TSC cycles from first start to last stop. `what` names it in panics.
/// Inlined, so the bare chain counts no call of ours (`bench insns`).
#[inline(always)]
fn run_to_int(chip: &mut BareChip, start_at: u32, n: usize, what: &str) -> u64 {
    if chip.parked_at.is_some() {
        chip.stop();
    }
    let regs = &mut chip.regs;
    let deadline = deadline();
    let start = time::rdtsc();
    for _ in 0..n {
        regs.write(regs::DSP, start_at);
        while Istat1::from_bits_retain(regs.read(regs::ISTAT1)).contains(Istat1::SRUN) {
            assert!(time::rdtsc() < deadline, "{what} still running after 10 s");
            core::hint::spin_loop();
        }
        let dstat = Dstat::from_bits_retain(regs.read_clearing(regs::DSTAT));
        assert!(
            dstat.contains(Dstat::SIR),
            "{what} did not end at its INT: DSTAT {dstat:?}"
        );
    }
    time::rdtsc() - start
}

/// Words before the batch in a [`SigpScript`]: `MOVE CTEST2|0 TO SFBR` and
/// the WAIT RESELECT.
const SIGP_HEAD_WORDS: usize = 4;

/// The cheapest doorbell-driven chain: parked in WAIT RESELECT, woken by
/// ISTAT.SIGP (one `outb`), it runs its batch, stores DSP to a completion
/// word and parks again. A run costs one port write and memory polls, no
/// register read.
///
/// ```text
/// S: MOVE CTEST2 | 0 TO SFBR     ; clears SIGP, so the WAIT below parks
///    WAIT RESELECT alt = M       ; parks until the doorbell
/// M: MOVE MEMORY ... x batch
///    STORE DSP -> completion word ; DSP is non-zero: the run is done
///    JUMP S
/// ```
pub struct SigpScript {
    script: Dma<KernelHal>,
    /// Byte offset of the completion word in `script`.
    done_at: usize,
}

impl SigpScript {
    /// Room for `moves` Memory Moves.
    pub fn new(moves: usize) -> Option<SigpScript> {
        let done_at = 4
            * (SIGP_HEAD_WORDS
                + moves * script::MOVE_WORDS as usize
                + (script::STORE_WORDS + script::TC_WORDS) as usize);
        Some(SigpScript {
            script: Dma::new(done_at + 4).ok()?,
            done_at,
        })
    }

    /// Writes the chain around `moves` (count, source, destination); stops
    /// the chip first, so it never runs a half-written chain.
    pub fn build(&mut self, chip: &mut BareChip, moves: impl Iterator<Item = (u32, u32, u32)>) {
        chip.stop();
        let start = self.script.paddr() as u32;
        let mut words = Vec::new();
        words.extend_from_slice(&script::clear_sigp());
        words.extend_from_slice(&script::wait_reselect(start + 4 * SIGP_HEAD_WORDS as u32));
        for (count, src, dst) in moves {
            words.extend_from_slice(&script::memory_move(count, src, dst));
        }
        words.extend_from_slice(&script::store(regs::DSP, 4, start + self.done_at as u32));
        words.extend_from_slice(&script::jump(start));
        assert!(4 * words.len() <= self.done_at, "more moves than room");
        write_words(&mut self.script, &words);
    }

    /// The completion word.
    fn done(&self) -> *mut u32 {
        self.script
            .as_ptr()
            .wrapping_add(self.done_at)
            .cast::<u32>()
    }

    /// Starts the chain with a DSP write unless it is parked already: it
    /// clears SIGP and parks.
    fn park(&self, chip: &mut BareChip) {
        let start = self.script.paddr() as u32;
        if chip.parked_at == Some(start) {
            return;
        }
        chip.stop();
        chip.regs.write(regs::DSP, start);
        chip.parked_at = Some(start);
    }

    /// Rings the doorbell `n` times on `chip`, each time waiting for the
    /// completion word; returns TSC cycles from first ring to last
    /// completion.
    pub fn run(&self, chip: &mut BareChip, n: usize) -> u64 {
        self.park(chip);
        let done = self.done();
        let deadline = deadline();
        let start = time::rdtsc();
        for _ in 0..n {
            // SAFETY: the completion word is inside our script buffer, 4-byte
            // aligned; the chip writes it only after the doorbell below.
            unsafe { done.write_volatile(0) };
            // The port write is `nomem` to the compiler: the zero must be in
            // memory before it.
            compiler_fence(Ordering::SeqCst);
            chip.port.write(regs::ISTAT, Istat::SIGP.bits());
            // SAFETY: as for the zeroing; volatile, as the chip writes it.
            while unsafe { done.read_volatile() } == 0 {
                assert!(
                    time::rdtsc() < deadline,
                    "SIGP chain did not complete in 10 s"
                );
                core::hint::spin_loop();
            }
        }
        time::rdtsc() - start
    }

    /// Panics unless the chain is parked again with no error: still
    /// running (SRUN, in its WAIT) and no DMA error or interrupt pending.
    pub fn check(&self, chip: &mut BareChip) {
        let istat1 = Istat1::from_bits_retain(chip.regs.read(regs::ISTAT1));
        let istat = Istat::from_bits_retain(chip.regs.read(regs::ISTAT));
        let dstat = Dstat::from_bits_retain(chip.regs.read_clearing(regs::DSTAT));
        assert!(
            istat1.contains(Istat1::SRUN)
                && !istat.contains(Istat::DIP)
                && !dstat.intersects(Dstat::ERRORS),
            "SIGP chain stopped: ISTAT {istat:?} ISTAT1 {istat1:?} DSTAT {dstat:?}"
        );
    }
}

/// A [`RawScript`] with a fixed-slot ring's boundary cost: after every `k`
/// Memory Moves (and after the last one, closing a partial slot), a Store
/// of DSP to a scratch completion word and a JUMP to the next instruction.
///
/// ```text
///    MOVE MEMORY ... x k
///    STORE DSP -> scratch word
///    JUMP (next instruction)
///    ... (repeated per slot)
///    INT 0
/// ```
pub struct SlotScript {
    script: Dma<KernelHal>,
    /// Byte offset of the scratch completion word in `script`.
    done_at: usize,
}

impl SlotScript {
    /// Room for `moves` Memory Moves with a boundary after each (the
    /// densest layout, `k` = 1).
    pub fn new(moves: usize) -> Option<SlotScript> {
        let done_at = 4
            * (moves * (script::MOVE_WORDS + script::STORE_WORDS + script::TC_WORDS) as usize
                + script::TC_WORDS as usize);
        Some(SlotScript {
            script: Dma::new(done_at + 4).ok()?,
            done_at,
        })
    }

    /// Writes the chain of `moves` with a boundary every `k` moves.
    pub fn build(&mut self, k: usize, moves: impl Iterator<Item = (u32, u32, u32)>) {
        assert!(k > 0);
        let start = self.script.paddr() as u32;
        let done = start + self.done_at as u32;
        let mut words = Vec::new();
        let mut in_slot = 0;
        let boundary = |words: &mut Vec<u32>| {
            words.extend_from_slice(&script::store(regs::DSP, 4, done));
            // The JUMP's own address plus its two words.
            let next = start + 4 * (words.len() + script::TC_WORDS as usize) as u32;
            words.extend_from_slice(&script::jump(next));
        };
        for (count, src, dst) in moves {
            words.extend_from_slice(&script::memory_move(count, src, dst));
            in_slot += 1;
            if in_slot == k {
                boundary(&mut words);
                in_slot = 0;
            }
        }
        if in_slot > 0 {
            boundary(&mut words);
        }
        words.extend_from_slice(&script::int(0));
        assert!(4 * words.len() <= self.done_at, "more moves than room");
        write_words(&mut self.script, &words);
    }

    /// The scratch completion word's current value, and the chain's
    /// address range (start, end) the stored DSP must lie in.
    pub fn done_word(&self) -> (u32, u32, u32) {
        let ptr = self
            .script
            .as_ptr()
            .wrapping_add(self.done_at)
            .cast::<u32>();
        // SAFETY: inside our buffer, 4-byte aligned; volatile, as the chip
        // writes it.
        let word = unsafe { ptr.read_volatile() };
        let start = self.script.paddr() as u32;
        (word, start, start + self.done_at as u32)
    }

    /// Zeroes the scratch completion word.
    pub fn clear_done(&mut self) {
        self.script.as_mut_slice()[self.done_at..self.done_at + 4].fill(0);
    }

    /// Runs the chain `n` times on `chip` (as [`RawScript::run`]); returns
    /// TSC cycles from first start to last stop.
    pub fn run(&self, chip: &mut BareChip, n: usize) -> u64 {
        run_to_int(chip, self.script.paddr() as u32, n, "slot script")
    }
}
