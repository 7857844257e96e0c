//! The CPU engine: the fallback when no hardware channel exists (as Linux's
//! async_tx falls back to the CPU), and the baseline in benchmarks.
//!
//! Prepared requests wait in a fixed queue; `issue` runs them all, in order,
//! on the calling CPU, so every request is complete when `issue_pending`
//! returns. It copies through the kernel's mapping of DMA addresses
//! ([`Hal::phys_to_virt`]).

use core::marker::PhantomData;

use crate::engine::{
    Capabilities, Cookie, DmaError, Engine, EngineError, Limits, Notify, Op, Progress, Termination,
    copy_is_valid,
};
use crate::hal::{Hal, PAGE_SIZE};

/// A CPU engine holding up to `N` prepared descriptors.
pub struct CpuEngine<H: Hal, const N: usize = 256> {
    queue: [Option<(Cookie, Op, bool)>; N],
    len: usize,
    completed: Option<Cookie>,
    _hal: PhantomData<H>,
}

impl<H: Hal, const N: usize> Default for CpuEngine<H, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Hal, const N: usize> CpuEngine<H, N> {
    /// An empty engine.
    pub const fn new() -> Self {
        CpuEngine {
            queue: [None; N],
            len: 0,
            completed: None,
            _hal: PhantomData,
        }
    }

    /// Forgets the requests prepared and not issued (nothing else is kept).
    fn forget_prepared(&mut self) {
        self.queue[..self.len].fill(None);
        self.len = 0;
    }

    fn run(op: Op) {
        if H::CPU_CONTIGUOUS {
            Self::run_linear(op);
        } else {
            Self::run_by_page(op);
        }
    }

    /// `op` through a Hal whose pages need not be adjacent for the CPU
    /// (see [`Hal::CPU_CONTIGUOUS`]): in pieces that stay inside one page
    /// of each side, each side's page looked up on its own.
    #[inline(never)]
    fn run_by_page(op: Op) {
        let room = |addr: u64| PAGE_SIZE - (addr % PAGE_SIZE as u64) as usize;
        let (dst, src, len) = match op {
            Op::Copy { dst, src, len } => (dst, Some(src), len),
            Op::Fill { dst, len, .. } | Op::Zero { dst, len } => (dst, None, len),
            Op::Interrupt => return,
        };
        let mut done = 0;
        while done < len {
            // The request was validated: `dst + len - 1` (and the
            // source's) do not wrap, so these sums are exact.
            let at = done as u64;
            let n = (len - done)
                .min(room(dst + at))
                .min(src.map_or(usize::MAX, |src| room(src + at)));
            let piece = op.piece(done, n);
            Self::run_linear(piece);
            done += n;
        }
    }

    /// `op` through `H::phys_to_virt` of its first bytes alone: each side
    /// contiguous for the CPU.
    fn run_linear(op: Op) {
        match op {
            Op::Copy { dst, src, len } => {
                let (d, s) = (H::phys_to_virt(dst), H::phys_to_virt(src));
                // SAFETY: `Engine::prep`'s contract: a valid op (the ranges do
                // not overlap), both sides DMA memory of `H` that nothing else
                // touches until the request ends.
                unsafe { core::ptr::copy_nonoverlapping(s.as_ptr(), d.as_ptr(), len) }
            }
            Op::Zero { dst, len } => {
                // SAFETY: as above, for the destination.
                unsafe { H::phys_to_virt(dst).as_ptr().write_bytes(0, len) }
            }
            Op::Interrupt => {}
            Op::Fill { dst, len, pattern } => {
                let bytes = pattern.to_le_bytes();
                let d = H::phys_to_virt(dst).as_ptr();
                for i in 0..len {
                    // SAFETY: as above; `i < len`.
                    unsafe { d.add(i).write(bytes[i % 8]) }
                }
            }
        }
    }
}

// SAFETY: every request runs to its end inside `issue`, on this CPU, before
// `poll` reports it complete; `terminate` and `reset` find nothing running
// (there is no device); addresses are read through `H::phys_to_virt`, page
// by page unless `H::CPU_CONTIGUOUS`.
unsafe impl<H: Hal, const N: usize> Engine for CpuEngine<H, N> {
    type Mark = usize;
    type Hal = H;

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPY | Capabilities::FILL
    }

    fn limits(&self) -> Limits {
        Limits {
            max_len: isize::MAX as usize,
            dma_mask: u64::MAX,
            align: 1,
        }
    }

    fn mark(&self) -> usize {
        self.len
    }

    unsafe fn rewind(&mut self, mark: usize) {
        self.queue[mark..self.len].fill(None);
        self.len = mark;
    }

    unsafe fn prep(
        &mut self,
        cookie: Cookie,
        op: Op,
        end: Option<Notify>,
    ) -> Result<(), EngineError> {
        let slot = self.queue.get_mut(self.len).ok_or(EngineError::RingFull)?;
        *slot = Some((cookie, op, end.is_some()));
        self.len += 1;
        Ok(())
    }

    unsafe fn prep_copies(&mut self, first: Cookie, ops: &[Op], dma_mask: u64) -> bool {
        let Some(slots) = self.queue.get_mut(self.len..self.len + ops.len()) else {
            return false;
        };
        // All checked before any is written: a refusal has nothing to undo.
        let valid = ops.iter().all(|op| match *op {
            Op::Copy { dst, src, len } => {
                copy_is_valid(dst, src, len, dma_mask) & (len <= isize::MAX as usize)
            }
            _ => false,
        });
        if !valid {
            return false;
        }
        let mut cookie = first;
        for (slot, &op) in slots.iter_mut().zip(ops) {
            *slot = Some((cookie, op, true));
            cookie = cookie.next();
        }
        self.len += ops.len();
        true
    }

    fn issue(&mut self) {
        for slot in &mut self.queue[..self.len] {
            if let Some((cookie, op, last)) = slot.take() {
                Self::run(op);
                if last {
                    self.completed = Some(cookie);
                }
            }
        }
        self.len = 0;
    }

    fn poll(&mut self, _check_hardware: bool) -> Progress {
        Progress {
            completed: self.completed.take(),
            fault: None,
        }
    }

    fn handle_interrupt(&mut self) -> bool {
        false
    }

    fn terminate(&mut self) -> Termination {
        self.forget_prepared();
        Termination {
            completed: self.completed.take(),
            stopped: true,
        }
    }

    fn reset(&mut self) -> Result<(), DmaError> {
        self.forget_prepared();
        self.completed = None;
        Ok(())
    }
}

#[cfg(test)]
mod api_tests;
