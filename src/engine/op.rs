//! The work of one descriptor.

#[cfg(doc)]
use super::{Capabilities, Channel, Limits, PrepFlags, SharedChannel};
use crate::hal::DmaAddr;

/// One descriptor's work, at most [`Limits::max_len`] bytes. More kinds
/// of work may come (as [`Op::Interrupt`] did): a `match` outside the crate
/// needs a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Copy `len` bytes from `src` to `dst`.
    Copy {
        /// Destination DMA address.
        dst: DmaAddr,
        /// Source DMA address.
        src: DmaAddr,
        /// Bytes.
        len: usize,
    },
    /// Fill `len` bytes at `dst` with `pattern` repeated: byte `i` is byte
    /// `i % 8` of `pattern.to_le_bytes()`.
    Fill {
        /// Destination DMA address.
        dst: DmaAddr,
        /// Bytes.
        len: usize,
        /// The 8-byte pattern.
        pattern: u64,
    },
    /// Zero `len` bytes at `dst`.
    Zero {
        /// Destination DMA address.
        dst: DmaAddr,
        /// Bytes.
        len: usize,
    },
    /// Nothing to move: the request ends when every request before it has
    /// (engines run their rings in order), and with [`PrepFlags::INTERRUPT`]
    /// the engine interrupts then (Linux's `device_prep_dma_interrupt`).
    /// Needs [`Capabilities::INTERRUPT_OP`]. The futures of a
    /// [`SharedChannel`] prepare one when the request they wait for asked
    /// for no interrupt and has not ended (see [`Channel::interrupt_after`]).
    Interrupt,
}

impl Op {
    /// The bytes it writes (0 for an interrupt-only request).
    #[inline(always)]
    pub(crate) fn len(self) -> usize {
        match self {
            Op::Copy { len, .. } | Op::Fill { len, .. } | Op::Zero { len, .. } => len,
            Op::Interrupt => 0,
        }
    }

    /// The part of this validated request from its byte `at`, `len` bytes
    /// long: a fill keeps its pattern's phase. `at + len` is within the
    /// request, whose last addresses do not wrap (validation checked them),
    /// so the sums are exact.
    #[inline(always)]
    pub(crate) fn piece(self, at: usize, len: usize) -> Op {
        let off = at as u64;
        match self {
            Op::Copy { dst, src, .. } => Op::Copy {
                dst: dst + off,
                src: src + off,
                len,
            },
            Op::Fill { dst, pattern, .. } => Op::Fill {
                dst: dst + off,
                len,
                pattern: pattern.rotate_right(8 * (at % 8) as u32),
            },
            Op::Zero { dst, .. } => Op::Zero {
                dst: dst + off,
                len,
            },
            Op::Interrupt => Op::Interrupt,
        }
    }
}
