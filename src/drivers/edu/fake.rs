//! A fake edu device for host tests: its DMA registers, its 4 KiB buffer,
//! transfers that finish a set number of command-register reads after they
//! start (QEMU finishes them 100 ms of virtual time later), the
//! interrupt-status and acknowledge registers, and a switch that makes a
//! transfer never finish. Memory is [`FakeHal`]'s (host memory, 1:1).
//! Public with the `testing` feature.
//!
//! Not modelled: time (a transfer ends after a number of reads of the
//! command register, [`FakeEdu::latency`], not 100 ms later, and never
//! between two reads), the interrupt line itself (only its status
//! register: the test calls the channel's interrupt handler or polls),
//! the device's other registers (liveness check, factorial, the raise
//! register: they read 0) and its address mask (every address reaches
//! host memory). What QEMU 7.2 refuses it refuses by panicking: a
//! transfer started while one runs, one outside the device buffer, one
//! that would reach the buffer's last byte.
//!
//! # Example
//!
//! A copy through [`EduEngine`], which the fake finishes after
//! [`FakeEdu::latency`] polls of each transfer:
//!
//! ```
//! use dmaengine::drivers::edu::EduEngine;
//! use dmaengine::engine::{Channel, PrepFlags, Status};
//! use dmaengine::hal::Dma;
//! use dmaengine::hal::fake::FakeHal;
//! use dmaengine::testing::edu::FakeEdu;
//!
//! // SAFETY: the fake device is driven by this engine alone, moves only
//! // the buffers the channel hands it and drops no address bit.
//! let engine = unsafe { EduEngine::<FakeHal, _>::new(FakeEdu::new(2), u64::MAX) }.unwrap();
//! let mut chan = Channel::new(engine);
//! let mut src = Dma::<FakeHal>::new(100)?;
//! src.as_mut_slice().fill(7);
//! let dst = Dma::<FakeHal>::new(100)?;
//! // SAFETY: both buffers are ours, and read only after the request ends.
//! let cookie = unsafe { chan.prep_copy(dst.paddr(), src.paddr(), 100, PrepFlags::empty()) }?;
//! chan.issue_pending();
//! while chan.status(cookie).status == Status::InProgress {}
//! assert_eq!(chan.status(cookie).status, Status::Complete);
//! assert_eq!(dst.as_slice(), src.as_slice());
//! // Into the device's buffer and out of it.
//! // SAFETY: the fake's count is read; no register is touched.
//! assert_eq!(unsafe { chan.engine().regs() }.transfers(), 2);
//! # Ok::<(), dmaengine::engine::DmaError>(())
//! ```
//!
//! [`EduEngine`]: crate::drivers::edu::EduEngine

use core::cell::RefCell;

use crate::drivers::edu::regs;
use crate::hal::Hal;
use crate::hal::fake::FakeHal;
use crate::mmio::Registers;

/// The registers this fake decodes, as the offsets its accesses match.
const DMA_CMD_AT: usize = regs::DMA_CMD.offset();
const DMA_COUNT_AT: usize = regs::DMA_COUNT.offset();
const DMA_DST_AT: usize = regs::DMA_DST.offset();
const DMA_SRC_AT: usize = regs::DMA_SRC.offset();
const ID_AT: usize = regs::ID.offset();
const INTR_STATUS_AT: usize = regs::INTR_STATUS.offset();

#[derive(Debug)]
struct State {
    src: u64,
    dst: u64,
    count: u64,
    cmd: u64,
    intr: u32,
    buffer: [u8; regs::BUFFER_SIZE],
    /// Command reads left before the running transfer finishes.
    left: u32,
    accesses: u64,
    reads: u64,
    transfers: u64,
}

/// The fake device: give it to [`EduEngine::new`] as the register window,
/// and reach it again through [`EduEngine::regs`] (nothing written through
/// it) to count its transfers or wedge it.
///
/// [`EduEngine::new`]: crate::drivers::edu::EduEngine::new
/// [`EduEngine::regs`]: crate::drivers::edu::EduEngine::regs
#[derive(Debug)]
pub struct FakeEdu {
    state: RefCell<State>,
    /// Command reads a transfer takes.
    pub latency: u32,
    /// A transfer never finishes while set.
    pub stuck: core::cell::Cell<bool>,
}

impl FakeEdu {
    /// A device whose transfers take `latency` command reads.
    ///
    /// # Safety
    /// A transfer reads or writes host memory at the address in its source
    /// or destination register ([`FakeHal`]'s DMA addresses are host
    /// pointers): the registers must be written only by one driver (under
    /// [`EduEngine::new`]'s contract), or by a caller that points them only
    /// at memory it owns and touches nothing else there until the transfer
    /// ends.
    ///
    /// [`EduEngine::new`]: crate::drivers::edu::EduEngine::new
    pub unsafe fn new(latency: u32) -> Self {
        FakeEdu {
            state: RefCell::new(State {
                src: 0,
                dst: 0,
                count: 0,
                cmd: 0,
                intr: 0,
                buffer: [0; regs::BUFFER_SIZE],
                left: 0,
                accesses: 0,
                reads: 0,
                transfers: 0,
            }),
            latency,
            stuck: core::cell::Cell::new(false),
        }
    }

    /// Transfers started so far.
    pub fn transfers(&self) -> u64 {
        self.state.borrow().transfers
    }

    fn finish(s: &mut State) {
        let len = s.count as usize;
        if s.cmd & regs::DMA_CMD_TO_RAM != 0 {
            let off = (s.src - regs::BUFFER) as usize;
            let dst = FakeHal::phys_to_virt(s.dst).as_ptr();
            // SAFETY: the driver points the device only at host memory it
            // owns; `off + len` is inside the buffer (checked at start).
            unsafe { core::ptr::copy_nonoverlapping(s.buffer[off..].as_ptr(), dst, len) };
        } else {
            let off = (s.dst - regs::BUFFER) as usize;
            let src = FakeHal::phys_to_virt(s.src).as_ptr();
            // SAFETY: as above.
            unsafe { core::ptr::copy_nonoverlapping(src, s.buffer[off..].as_mut_ptr(), len) };
        }
        s.cmd &= !regs::DMA_CMD_START;
        if s.cmd & regs::DMA_CMD_IRQ != 0 {
            s.intr |= regs::INTR_DMA;
        }
    }
}

impl Registers for FakeEdu {
    fn read8(&self, _offset: usize) -> u8 {
        panic!("edu: 1-byte accesses are not allowed");
    }

    fn write8(&self, _offset: usize, _value: u8) {
        panic!("edu: 1-byte accesses are not allowed");
    }

    fn read32(&self, offset: usize) -> u32 {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        s.reads += 1;
        match offset {
            INTR_STATUS_AT => s.intr,
            ID_AT => regs::ID_VALUE,
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        if offset == regs::INTR_ACK.offset() {
            s.intr &= !value;
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        s.reads += 1;
        if offset != regs::DMA_CMD.offset() {
            return 0;
        }
        if s.cmd & regs::DMA_CMD_START != 0 && !self.stuck.get() {
            s.left = s.left.saturating_sub(1);
            if s.left == 0 {
                Self::finish(&mut s);
            }
        }
        s.cmd
    }

    fn write64(&self, offset: usize, value: u64) {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        match offset {
            DMA_SRC_AT => s.src = value,
            DMA_DST_AT => s.dst = value,
            DMA_COUNT_AT => s.count = value,
            DMA_CMD_AT if value & regs::DMA_CMD_START != 0 => {
                assert_eq!(s.cmd & regs::DMA_CMD_START, 0, "edu: started while busy");
                // QEMU 7.2 aborts on a whole-buffer transfer.
                let device = if value & regs::DMA_CMD_TO_RAM != 0 {
                    s.src
                } else {
                    s.dst
                };
                let off = device
                    .checked_sub(regs::BUFFER)
                    .expect("edu: not the buffer");
                assert!(
                    off + s.count < regs::BUFFER_SIZE as u64,
                    "edu: QEMU 7.2 would abort on this transfer"
                );
                s.cmd = value;
                s.left = self.latency.max(1);
                s.transfers += 1;
            }
            _ => {}
        }
    }

    fn accesses(&self) -> u64 {
        self.state.borrow().accesses
    }

    fn reads(&self) -> u64 {
        self.state.borrow().reads
    }
}
