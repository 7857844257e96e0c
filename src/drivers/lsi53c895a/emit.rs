//! The SCRIPTS instructions of one request: Memory Moves for copies,
//! zeroings and fills, then its write-back and INTFLY.

use super::ring::{ISSUE_RESERVE, ZERO_BYTES};
use super::{Lsi53c895a, script};
use crate::engine::{Cookie, EngineError, Notify, Op};
use crate::hal::Hal;
use crate::mmio::Registers;

impl<H: Hal, R: Registers> Lsi53c895a<H, R> {
    #[inline(always)]
    pub(super) fn push_move(
        &mut self,
        count: u32,
        src: u32,
        dst: u32,
        keep: u32,
    ) -> Result<(), EngineError> {
        self.ring
            .push(keep, &[], |_| script::memory_move(count, src, dst))
    }

    /// The instructions of a request other than a plain copy (and of every
    /// request after fault injection was asked for).
    #[inline(never)]
    pub(super) fn emit_op(&mut self, op: Op) -> Result<(), EngineError> {
        let keep = ISSUE_RESERVE;
        if self.inject {
            self.inject = false;
            self.ring.push(keep, &[], |_| script::illegal())?;
        }
        // The channel checked every address against the 32-bit DMA mask and
        // every length against MAX_MOVE, so these casts are exact.
        match op {
            // Only the notification below: a write-back, and an INTFLY if
            // asked, reached after every earlier move.
            Op::Interrupt => {}
            Op::Copy { dst, src, len } => {
                self.push_move(len as u32, src as u32, dst as u32, keep)?
            }
            Op::Zero { dst, len } => {
                let zeros = self.ring.zero_addr();
                let mut done = 0;
                while done < len as u32 {
                    let n = (len as u32 - done).min(ZERO_BYTES);
                    self.push_move(n, zeros, dst as u32 + done, keep)?;
                    done += n;
                }
            }
            Op::Fill { dst, len, pattern } => {
                let (dst, len) = (dst as u32, len as u32);
                // The first move copies the pattern from its own shadow
                // words.
                let pattern = [pattern as u32, (pattern >> 32) as u32];
                self.ring.push(keep, &pattern, |shadow| {
                    script::memory_move(len.min(8), shadow, dst)
                })?;
                // Double what is there: each move copies the bytes already
                // filled, which end on a multiple of 8, so the phase holds.
                let mut done = len.min(8);
                while done < len {
                    let n = done.min(len - done);
                    self.push_move(n, dst, dst + done, keep)?;
                    done += n;
                }
            }
        }
        Ok(())
    }

    /// A request's own write-back, and its INTFLY if it asked for an
    /// interrupt; returns the value the write-back leaves.
    #[inline(never)]
    pub(super) fn emit_notify(
        &mut self,
        cookie: Cookie,
        notify: Notify,
    ) -> Result<u32, EngineError> {
        let value = self.ring.push_writeback(cookie, ISSUE_RESERVE)?;
        if notify.interrupt {
            self.ring
                .push(ISSUE_RESERVE, &[], |_| script::intfly(cookie.get() as u32))?;
        }
        Ok(value)
    }
}
