//! How the driver learns that the SCRIPTS processor stopped and why, and
//! how it stops it for good.

use super::regs::{self, Dstat, Istat};
use super::{Lsi53c895a, Registers};
use crate::engine::{Cookie, ErrorKind, Fault};
use crate::hal::Hal;

impl<H: Hal, R: Registers> Lsi53c895a<H, R> {
    /// Records the failure behind error bits read from DSTAT.
    pub(super) fn note_errors(&mut self, dstat: Dstat) {
        let errors = dstat & Dstat::ERRORS;
        if errors.is_empty() || self.halted || self.ring.issued() == 0 {
            return;
        }
        // DSP has moved past the instruction that failed: 8 bytes for the
        // two-dword instructions that raise IID.
        let failed_at = self.regs.read(regs::DSP).wrapping_sub(8);
        let cookie = self.ring.owner_of(failed_at).or(self.ring.oldest());
        let kind = if errors.contains(Dstat::IID) {
            ErrorKind::InvalidDescriptor
        } else if errors.contains(Dstat::ABRT) {
            ErrorKind::Aborted
        } else {
            ErrorKind::BusFault
        };
        if let Some(cookie) = cookie {
            self.fault = Some(Fault { cookie, kind });
        }
        self.halted = true;
    }

    /// [`Engine::poll`] with work outstanding after the completion word
    /// was read: whether the chip stopped, and why (a failure is left in
    /// `self.fault`); returns the newest request complete, not a
    /// [`Progress`] (performance note H2, in the guide's performance
    /// chapter).
    #[inline(never)]
    pub(super) fn poll_hardware(&mut self, completed: Option<Cookie>) -> Option<Cookie> {
        if self.is_running() {
            return completed;
        }
        // Stopped with work outstanding: failed (the resident loop never
        // stops by itself), or stopped by manual start mode.
        let completed = self.ring.retire().or(completed);
        if self.ring.issued() > 0 {
            let dstat = Dstat::from_bits_retain(self.regs.read_clearing(regs::DSTAT));
            self.note_errors(dstat);
        }
        completed
    }

    pub(super) fn stop(&mut self) {
        // ABRT alone leaves QEMU's resume timer armed (and a parked WAIT
        // wakeable); the soft reset that follows stops the processor for
        // good (QEMU 7.2's and 10.0's behaviour).
        self.regs.write(regs::ISTAT, Istat::ABRT.bits());
        self.regs.write(regs::ISTAT, Istat::SRST.bits());
        self.regs.write(regs::ISTAT, 0);
        // The abort raised the interrupt line (DSTAT.ABRT, which DIEN
        // enables) and the soft reset cleared the status without lowering
        // it: QEMU recomputes the line only when status changes hands, so
        // ISTAT now reads 0 while the line stays up, and `handle_interrupt`
        // would disown it forever. Clearing as for an interrupt (INTF, then
        // DSTAT, then SIST0/SIST1; QEMU-FACTS.md) lowers it.
        self.regs.write(regs::ISTAT, Istat::INTF.bits());
        self.regs.read_clearing(regs::DSTAT);
        self.regs.read_clearing(regs::SIST0);
        self.regs.read_clearing(regs::SIST1);
    }
}
