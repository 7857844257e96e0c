//! A fake LSI53C895A for host tests (public with the `testing` feature): the SCRIPTS subset the driver uses,
//! executed against [`FakeHal32`] memory, with QEMU's timing rules: at most
//! a slice of instructions (100 on QEMU 7.2, 500 on 10.0; any number in
//! tests) inside the register write that started them, then a slice per
//! tick of a resume timer (which the test drives with [`FakeLsi::tick`])
//! with SRUN set meanwhile; a DSP write while SRUN is set only moves the
//! resume point; an abort leaves the timer armed, a soft reset disarms it.
//! WAIT RESELECT and the doorbell as in QEMU (`lsi_wait_reselect`, the
//! ISTAT0 write): the WAIT jumps to its alternate address when ISTAT.SIGP
//! is set and otherwise parks with SRUN set and no timer; a host write of
//! SIGP latches it (a write keeps ISTAT's low nibble and replaces the top
//! one) and wakes a parked processor at the alternate address with a fresh
//! slice; only reading CTEST2 clears SIGP (the host never should: the fake
//! counts it). Every Memory Move executed is logged. Its interrupt
//! line follows QEMU's: raised when DSTAT holds a bit DIEN enables or
//! ISTAT.INTF is set, and recomputed only where QEMU recomputes it (a
//! status bit set, INTF cleared, DSTAT read), so a soft reset clears the
//! status but leaves the line as it was until DSTAT is read.

//!
//! Not modelled: SCSI (no bus, no targets; of SCRIPTS only what a copy
//! engine runs: Memory Move, the Store of DSP, WAIT RESELECT, the read of
//! CTEST2, JUMP, INT and INTFLY, and any other instruction stops the chip
//! with IID), the registers the driver does not use
//! (they read 0 and ignore writes), PCI config space and the I/O BAR
//! (so [`Lsi53c895a::set_doorbell`] cannot be used with it), bus errors,
//! and time: a slice runs inside the register write that started it or
//! when the test calls [`FakeLsi::tick`], never on its own. Memory is
//! [`FakeHal32`]'s arena; any other address panics.
//!
//! # Example
//!
//! A kernel's glue over the fake chip: a [`Channel`] on an
//! [`Lsi53c895a`] copies between [`FakeHal32`] buffers, and the bytes
//! around the copy stay as they were.
//!
//! ```
//! use core::time::Duration;
//! use dmaengine::drivers::lsi53c895a::Lsi53c895a;
//! use dmaengine::engine::{Channel, PrepFlags};
//! use dmaengine::hal::Dma;
//! use dmaengine::hal::fake::FakeHal32;
//! use dmaengine::testing::lsi53c895a::FakeLsi;
//!
//! struct NoDelay;
//! impl embedded_hal::delay::DelayNs for NoDelay {
//!     fn delay_ns(&mut self, _ns: u32) {}
//! }
//!
//! // SAFETY: the fake chip is driven by this engine alone and moves only
//! // the buffers the channel hands it.
//! let engine = unsafe { Lsi53c895a::<FakeHal32, _>::new(FakeLsi::new()) }.unwrap();
//! let mut chan = Channel::new(engine);
//! let mut src = Dma::<FakeHal32>::new(64)?;
//! src.as_mut_slice().fill(0x5a);
//! let dst = Dma::<FakeHal32>::new(64)?;
//! let transfer = chan.copy(dst, 8, src, 0, 48, PrepFlags::empty()).map_err(|e| e.error)?;
//! chan.issue_pending();
//! let (dst, _src) = transfer.wait(&mut chan, &mut NoDelay, Duration::from_millis(10)).unwrap();
//! assert!(dst.as_slice()[8..56].iter().all(|&b| b == 0x5a));
//! assert!(dst.as_slice()[..8].iter().chain(&dst.as_slice()[56..]).all(|&b| b == 0));
//! // The chip ran one Memory Move for the copy: 48 bytes.
//! // SAFETY: the fake's own log is read; no register is touched.
//! let moves = unsafe { chan.engine().regs() }.take_moves();
//! assert!(moves.iter().any(|&(count, _, _)| count == 48));
//! # Ok::<(), dmaengine::engine::DmaError>(())
//! ```
//!
//! [`Channel`]: crate::engine::Channel
//! [`Lsi53c895a`]: crate::drivers::lsi53c895a::Lsi53c895a
//! [`Lsi53c895a::set_doorbell`]: crate::drivers::lsi53c895a::Lsi53c895a::set_doorbell
use core::cell::RefCell;

use crate::drivers::lsi53c895a::regs::{self, Dmode, Dstat, Istat, Istat1};
use crate::drivers::lsi53c895a::script;
use crate::hal::fake::FakeHal32;
use crate::hal::{DmaAddr, Hal};
use crate::mmio::Registers;

/// The registers this fake decodes, as the offsets its accesses match.
const CTEST2_AT: usize = regs::CTEST2.offset();
const DIEN_AT: usize = regs::DIEN.offset();
const DMODE_AT: usize = regs::DMODE.offset();
const DSTAT_AT: usize = regs::DSTAT.offset();
const ISTAT_AT: usize = regs::ISTAT.offset();
const ISTAT1_AT: usize = regs::ISTAT1.offset();

/// Instructions per slice on QEMU 7.2.22 (10.0 runs 500).
pub const SLICE_7_2: usize = 100;

#[derive(Default, Debug)]
struct State {
    dsp: u32,
    /// Instructions per slice; 0 means [`SLICE_7_2`].
    slice: usize,
    /// Parked in a WAIT RESELECT, with the address it will wake at.
    waiting: Option<u32>,
    /// Host reads of CTEST2 (each would have eaten a doorbell).
    host_ctest2_reads: u64,
    /// Memory Moves executed: (count, source, destination).
    moves: Vec<(u32, u32, u32)>,
    dstat: u8,
    istat0: u8,
    srun: bool,
    timer_armed: bool,
    dmode: u8,
    dien: u8,
    /// The interrupt line's level as last computed.
    line: bool,
    accesses: u64,
    reads: u64,
}

/// The fake chip: give it to [`Lsi53c895a::new`] as the register window,
/// and reach it again through [`Lsi53c895a::regs`] (nothing written
/// through it) to [`tick`](FakeLsi::tick) it or look at its state.
///
/// [`Lsi53c895a::new`]: crate::drivers::lsi53c895a::Lsi53c895a::new
/// [`Lsi53c895a::regs`]: crate::drivers::lsi53c895a::Lsi53c895a::regs
#[derive(Debug)]
pub struct FakeLsi {
    state: RefCell<State>,
}

fn read_u32(addr: u32) -> u32 {
    let ptr = FakeHal32::phys_to_virt(addr as DmaAddr)
        .as_ptr()
        .cast::<u32>();
    // SAFETY: `phys_to_virt` checked the address is in the arena.
    unsafe { ptr.read_unaligned() }
}

fn move_bytes(dst: u32, src: u32, count: u32) {
    // QEMU copies front to back in 4 KiB pieces; so does this.
    let mut done = 0;
    while done < count {
        let n = (count - done).min(4096) as usize;
        let s = FakeHal32::phys_to_virt((src + done) as DmaAddr).as_ptr();
        let d = FakeHal32::phys_to_virt((dst + done) as DmaAddr).as_ptr();
        // SAFETY: both ranges are in the arena (the driver only points the
        // chip at memory it allocated there); `copy` allows overlap.
        unsafe { core::ptr::copy(s, d, n) };
        done += n as u32;
    }
}

impl FakeLsi {
    /// A chip in its reset state.
    ///
    /// # Safety
    /// The chip runs the SCRIPTS at whatever address its DSP register is
    /// given, and they read and write [`FakeHal32`] memory wherever they
    /// point, as the real chip's would: its registers must be written
    /// only by one driver (under [`Lsi53c895a::new`]'s contract), or by a
    /// caller that points it only at arena memory it owns and touches
    /// nothing else there until the chip stops.
    ///
    /// [`Lsi53c895a::new`]: crate::drivers::lsi53c895a::Lsi53c895a::new
    pub unsafe fn new() -> Self {
        FakeLsi {
            state: RefCell::default(),
        }
    }

    /// Sets the instructions run per slice (QEMU 7.2: 100, 10.0: 500; a
    /// small number pauses the chain at every point).
    pub fn set_slice(&self, instructions: usize) {
        self.state.borrow_mut().slice = instructions.max(1);
    }

    /// Whether the processor is parked in a WAIT RESELECT.
    pub fn parked(&self) -> bool {
        self.state.borrow().waiting.is_some()
    }

    /// DSP: the address of the next instruction.
    pub fn dsp(&self) -> u32 {
        self.state.borrow().dsp
    }

    /// Whether ISTAT.SIGP is latched (seen without a register access).
    pub fn doorbell_pending(&self) -> bool {
        self.state.borrow().istat0 & Istat::SIGP.bits() != 0
    }

    /// Host reads of CTEST2 so far.
    pub fn host_ctest2_reads(&self) -> u64 {
        self.state.borrow().host_ctest2_reads
    }

    /// Takes the log of Memory Moves executed since the last call.
    pub fn take_moves(&self) -> Vec<(u32, u32, u32)> {
        core::mem::take(&mut self.state.borrow_mut().moves)
    }

    /// Fires the resume timer if it is armed: the next slice runs.
    pub fn tick(&self) {
        let mut s = self.state.borrow_mut();
        if s.timer_armed {
            s.timer_armed = false;
            Self::run(&mut s);
        }
    }

    /// Whether a slice is pending on the timer.
    pub fn paused(&self) -> bool {
        self.state.borrow().timer_armed
    }

    /// Whether the chip's interrupt line is asserted.
    pub fn irq_line(&self) -> bool {
        self.state.borrow().line
    }

    /// Recomputes the line (QEMU's `lsi_update_irq`): a DSTAT bit that DIEN
    /// enables, or INTF.
    fn update_irq(s: &mut State) {
        s.line = s.dstat & s.dien != 0 || s.istat0 & Istat::INTF.bits() != 0;
    }

    fn stop(s: &mut State, cause: Dstat) {
        s.dstat |= cause.bits();
        s.srun = false;
        Self::update_irq(s);
    }

    fn run(s: &mut State) {
        s.srun = true;
        let slice = if s.slice == 0 { SLICE_7_2 } else { s.slice };
        for _ in 0..slice {
            let insn = read_u32(s.dsp);
            if insn == 0 {
                s.dsp += 4;
                continue;
            }
            let arg = read_u32(s.dsp + 4);
            s.dsp += 8;
            match insn >> 30 {
                3 if insn & (1 << 29) == 0 => {
                    let dst = read_u32(s.dsp);
                    s.dsp += 4;
                    move_bytes(dst, arg, insn & 0x00ff_ffff);
                    s.moves.push((insn & 0x00ff_ffff, arg, dst));
                }
                // A Store of DSP (all the driver stores): the address of the
                // next instruction, as QEMU stores it.
                3 if insn & 0xf17f_0007
                    == script::STORE | (regs::DSP.offset() as u32) << 16 | 4 =>
                {
                    let ptr = FakeHal32::phys_to_virt(arg as DmaAddr)
                        .as_ptr()
                        .cast::<u32>();
                    // SAFETY: `phys_to_virt` checked the address is in the arena.
                    unsafe { ptr.write_unaligned(s.dsp) };
                }
                // WAIT RESELECT: taken at once on a pending doorbell, or
                // parked with SRUN still set and no timer.
                1 if insn == script::WAIT_RESELECT => {
                    if s.istat0 & Istat::SIGP.bits() != 0 {
                        s.dsp = arg;
                    } else {
                        s.waiting = Some(arg);
                        return;
                    }
                }
                // Move register to SFBR with OR reads the register; reading
                // CTEST2 clears the doorbell.
                1 if insn & 0xff7f_0000
                    == script::MOVE_REG_OR_TO_SFBR | (regs::CTEST2.offset() as u32) << 16 =>
                {
                    s.istat0 &= !Istat::SIGP.bits();
                }
                2 if insn & 0x002e_0000 == 0 => {}
                2 if insn & (1 << 19) != 0 => match (insn >> 27) & 7 {
                    0 => s.dsp = arg,
                    3 if insn & (1 << 20) != 0 => {
                        s.istat0 |= Istat::INTF.bits();
                        Self::update_irq(s);
                    }
                    3 => return Self::stop(s, Dstat::SIR),
                    _ => return Self::stop(s, Dstat::IID),
                },
                _ => return Self::stop(s, Dstat::IID),
            }
        }
        s.timer_armed = true;
    }
}

impl Registers for FakeLsi {
    fn read8(&self, offset: usize) -> u8 {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        s.reads += 1;
        match offset {
            ISTAT_AT => s.istat0 | if s.dstat != 0 { Istat::DIP.bits() } else { 0 },
            ISTAT1_AT if s.srun => Istat1::SRUN.bits(),
            CTEST2_AT => {
                s.host_ctest2_reads += 1;
                s.istat0 &= !Istat::SIGP.bits();
                0
            }
            DSTAT_AT => {
                let value = s.dstat | Dstat::DFE.bits();
                if s.istat0 & Istat::INTF.bits() == 0 {
                    s.dstat = 0;
                }
                Self::update_irq(&mut s);
                value
            }
            _ => 0,
        }
    }

    fn write8(&self, offset: usize, value: u8) {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        match offset {
            ISTAT_AT => {
                let v = Istat::from_bits_retain(value);
                // The low nibble is status; the top one is replaced.
                s.istat0 = (s.istat0 & 0x0f) | (value & 0xf0);
                if v.contains(Istat::ABRT) {
                    // QEMU stops the script but leaves the resume timer
                    // armed, and a parked WAIT still parked.
                    Self::stop(&mut s, Dstat::ABRT);
                }
                if v.contains(Istat::INTF) {
                    s.istat0 &= !Istat::INTF.bits();
                    Self::update_irq(&mut s);
                }
                if v.contains(Istat::SIGP)
                    && let Some(alt) = s.waiting.take()
                {
                    s.dsp = alt;
                    Self::run(&mut s);
                }
                if v.contains(Istat::SRST) {
                    // The soft reset clears the status without recomputing
                    // the line.
                    let (accesses, reads, line, slice) = (s.accesses, s.reads, s.line, s.slice);
                    let (ctest2, moves) = (s.host_ctest2_reads, core::mem::take(&mut s.moves));
                    *s = State {
                        accesses,
                        reads,
                        line,
                        slice,
                        host_ctest2_reads: ctest2,
                        moves,
                        ..State::default()
                    };
                }
            }
            DMODE_AT => s.dmode = value,
            DIEN_AT => s.dien = value,
            _ => {}
        }
    }

    fn read32(&self, offset: usize) -> u32 {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        s.reads += 1;
        if offset == regs::DSP.offset() {
            s.dsp
        } else {
            0
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        if offset == regs::DSP.offset() {
            s.dsp = value;
            if s.dmode & Dmode::MAN.bits() == 0 && !s.srun {
                Self::run(&mut s);
            }
        }
    }

    /// The chip's registers are at most 32 bits wide: a 64-bit access is
    /// two 32-bit ones, low half first, as the bus splits it.
    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | u64::from(self.read32(offset + 4)) << 32
    }

    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    fn accesses(&self) -> u64 {
        self.state.borrow().accesses
    }

    fn reads(&self) -> u64 {
        self.state.borrow().reads
    }
}
