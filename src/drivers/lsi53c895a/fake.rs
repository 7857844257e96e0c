//! A fake LSI53C895A for host tests: the SCRIPTS subset the driver uses,
//! executed against [`FakeHal32`] memory, with QEMU 7.2's timing rules:
//! at most 100 instructions inside the DSP write, then 100 per tick of a
//! resume timer (which the test drives with [`FakeLsi::tick`]) with SRUN set
//! meanwhile; a DSP write while SRUN is set only moves the resume point; an
//! abort leaves the timer armed, a soft reset disarms it. Its interrupt
//! line follows QEMU's: raised when DSTAT holds a bit DIEN enables or
//! ISTAT.INTF is set, and recomputed only where QEMU recomputes it (a
//! status bit set, INTF cleared, DSTAT read), so a soft reset clears the
//! status but leaves the line as it was until DSTAT is read.

use core::cell::RefCell;

use super::regs::{self, Dmode, Dstat, Istat, Istat1};
use super::script;
use crate::hal::fake::FakeHal32;
use crate::hal::{DmaAddr, Hal};
use crate::mmio::Registers;

/// Instructions per slice (QEMU 7.2).
const SLICE: usize = 100;

#[derive(Default, Debug)]
struct State {
    dsp: u32,
    dstat: u8,
    istat0: u8,
    srun: bool,
    timer_armed: bool,
    dmode: u8,
    dien: u8,
    /// The interrupt line's level as last computed.
    line: bool,
    accesses: u64,
    executed: u64,
}

/// The fake chip.
#[derive(Default, Debug)]
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
    pub fn new() -> Self {
        Self::default()
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

    /// Instructions executed since creation.
    pub fn executed(&self) -> u64 {
        self.state.borrow().executed
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
        for _ in 0..SLICE {
            let insn = read_u32(s.dsp);
            s.executed += 1;
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
                }
                // A Store of DSP (all the driver stores): the address of the
                // next instruction, as QEMU stores it.
                3 if insn & 0xf17f_0007 == script::STORE | (regs::DSP as u32) << 16 | 4 => {
                    let ptr = FakeHal32::phys_to_virt(arg as DmaAddr)
                        .as_ptr()
                        .cast::<u32>();
                    // SAFETY: `phys_to_virt` checked the address is in the arena.
                    unsafe { ptr.write_unaligned(s.dsp) };
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
        match offset {
            regs::ISTAT => s.istat0 | if s.dstat != 0 { Istat::DIP.bits() } else { 0 },
            regs::ISTAT1 if s.srun => Istat1::SRUN.bits(),
            regs::DSTAT => {
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
            regs::ISTAT => {
                let v = Istat::from_bits_retain(value);
                if v.contains(Istat::ABRT) {
                    // QEMU stops the script but leaves the resume timer armed.
                    Self::stop(&mut s, Dstat::ABRT);
                }
                if v.contains(Istat::INTF) {
                    s.istat0 &= !Istat::INTF.bits();
                    Self::update_irq(&mut s);
                }
                if v.contains(Istat::SRST) {
                    // The soft reset clears the status without recomputing
                    // the line.
                    let (accesses, executed, line) = (s.accesses, s.executed, s.line);
                    *s = State {
                        accesses,
                        executed,
                        line,
                        ..State::default()
                    };
                }
            }
            regs::DMODE => s.dmode = value,
            regs::DIEN => s.dien = value,
            _ => {}
        }
    }

    fn read32(&self, offset: usize) -> u32 {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        if offset == regs::DSP { s.dsp } else { 0 }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        if offset == regs::DSP {
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
}
