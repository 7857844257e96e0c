//! What a channel accepts: every request checked against the engine's
//! capabilities and limits before a descriptor is written, every sum on a
//! caller's address or length checked.

use super::Channel;
use crate::engine::{Capabilities, DmaError, Engine, EngineError, Limits, Op, PrepFlags};
use crate::hal::{DmaAddr, PAGE_SIZE};

impl<E: Engine> Channel<E> {
    /// Checks `op` and `flags` against the engine without changing
    /// anything. Every sum is checked: addresses and lengths come from
    /// callers.
    // Performance note H1 (guide, performance chapter).
    #[inline(always)]
    pub(super) fn validate(&self, op: &Op, flags: PrepFlags) -> Result<(), DmaError> {
        self.check_flags(flags)?;
        self.check_op(op).map(|_| ())
    }

    /// What [`Channel::validate`] checks once per call: the channel is
    /// running and the engine has what `flags` ask for.
    #[inline(always)]
    pub(super) fn check_flags(&self, flags: PrepFlags) -> Result<(), DmaError> {
        if self.halted {
            return Err(DmaError::Halted);
        }
        if flags.contains(PrepFlags::INTERRUPT) && !self.caps.contains(Capabilities::INTERRUPT) {
            return Err(DmaError::NotSupported);
        }
        Ok(())
    }

    /// What [`Channel::validate`] checks per request; returns its length
    /// (0 for an interrupt-only request).
    #[inline(always)]
    pub(super) fn check_op(&self, op: &Op) -> Result<usize, DmaError> {
        // The common case without `check_op`'s chain of early exits; what
        // it does not accept goes through `check_op`, which says why.
        if let Op::Copy { dst, src, len } = *op
            && self.plain_copies
            && copy_is_valid(dst, src, len, self.limits.dma_mask)
        {
            return Ok(len);
        }
        check_op(op, self.caps, self.limits)
    }
}

/// What [`Channel::validate`] checks per request, against an engine's
/// capabilities and limits; returns its length (0 for an interrupt-only
/// request).
#[inline(always)]
pub(super) fn check_op(op: &Op, caps: Capabilities, limits: Limits) -> Result<usize, DmaError> {
    let (dst, src, len, needs) = match *op {
        Op::Copy { dst, src, len } => (dst, Some(src), len, Capabilities::COPY),
        Op::Fill { dst, len, .. } | Op::Zero { dst, len } => (dst, None, len, Capabilities::FILL),
        Op::Interrupt if caps.contains(Capabilities::INTERRUPT_OP) => return Ok(0),
        Op::Interrupt => return Err(DmaError::NotSupported),
    };
    if !caps.contains(needs) {
        return Err(DmaError::NotSupported);
    }
    if len == 0 {
        return Err(DmaError::ZeroLength);
    }
    // The last byte of each side; `None` if the range wraps past 2^64
    // or leaves the engine's mask.
    let span = u64::try_from(len - 1).map_err(|_| DmaError::BeyondDmaMask)?;
    let last_of = |addr: DmaAddr| addr.checked_add(span).filter(|&l| l <= limits.dma_mask);
    let dst_last = last_of(dst).ok_or(DmaError::BeyondDmaMask)?;
    let src = match src {
        Some(src) => Some((src, last_of(src).ok_or(DmaError::BeyondDmaMask)?)),
        None => None,
    };
    // Most engines take any byte alignment: no division for them.
    if limits.align > 1 {
        let align = limits.align as u64;
        let aligned = |v: u64| v.is_multiple_of(align);
        if !aligned(dst) || !aligned(len as u64) || !src.is_none_or(|(s, _)| aligned(s)) {
            return Err(DmaError::Misaligned);
        }
    }
    if let Some((src, src_last)) = src
        && dst <= src_last
        && src <= dst_last
    {
        return Err(DmaError::Overlap);
    }
    Ok(len)
}

/// Checks every request of a batch (see [`check_op`]); returns whether each
/// takes one descriptor of at most `piece_max` bytes. Not generic, and not
/// inlined into [`Channel::prep_batch`] (performance note H4, in the guide's
/// performance chapter).
#[inline(never)]
pub(super) fn check_batch(
    ops: &[Op],
    caps: Capabilities,
    limits: Limits,
    piece_max: usize,
) -> Result<bool, DmaError> {
    // The common case first, in a loop of its own: a batch of copies the
    // engine takes as they are. Sharing the loop with `check_op`'s
    // fallback cost every copy some 10 instructions of that fallback's
    // set-up.
    if caps.contains(Capabilities::COPY) && limits.align <= 1 {
        let mut longest = 0;
        let all_valid = ops.iter().all(|op| match *op {
            Op::Copy { dst, src, len } => {
                longest = longest.max(len);
                copy_is_valid(dst, src, len, limits.dma_mask)
            }
            _ => false,
        });
        if all_valid {
            return Ok(longest <= piece_max);
        }
    }
    // Anything else, request by request through `check_op`, which also
    // says why one is refused.
    let mut one_descriptor_each = true;
    for op in ops {
        one_descriptor_each &= check_op(op, caps, limits)? <= piece_max;
    }
    Ok(one_descriptor_each)
}

/// Whether a channel accepts a copy of `len` bytes from `src` to `dst` on an
/// engine that takes copies at any alignment and addresses up to `mask`
/// (length limits aside), computed without an early exit (performance note
/// H5): both sides' last bytes (`side + len - 1`) are within `mask` without
/// wrapping, and the sides are more than `len - 1`
/// bytes apart, so they do not overlap. An empty copy's `len - 1` wraps to
/// the largest value, which no distance exceeds.
///
/// Public for engines whose [`Engine::prep_copies`] checks copies as it
/// writes them: the channel's own check, so both accept the same copies.
#[inline(always)]
pub fn copy_is_valid(dst: DmaAddr, src: DmaAddr, len: usize, mask: u64) -> bool {
    let Ok(span) = u64::try_from(len.wrapping_sub(1)) else {
        return false;
    };
    // With `span <= mask`, `mask - span` cannot wrap, and the higher side's
    // last byte is within the mask exactly when it is at most `mask - span`.
    (span <= mask) & (dst.max(src) <= mask.wrapping_sub(span)) & (dst.abs_diff(src) > span)
}

/// An engine's refusal as the channel reports it (see `prep_batch`).
#[cold]
#[inline(never)]
pub(super) fn engine_error(e: EngineError) -> DmaError {
    e.into()
}

pub(super) fn page_range(page: DmaAddr, offset: usize, len: usize) -> Result<DmaAddr, DmaError> {
    if !page.is_multiple_of(PAGE_SIZE as u64) {
        return Err(DmaError::Misaligned);
    }
    if offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
        return Err(DmaError::OutOfPage);
    }
    Ok(page + offset as u64)
}

#[cfg(test)]
mod check_tests {
    use proptest::prelude::*;

    use super::{Capabilities, Limits, Op, check_op, copy_is_valid};
    use crate::engine::fake::edge_copy;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 64 } else { 4000 }))]

        /// Both `prep` and `prep_batch` take a copy on `copy_is_valid`'s
        /// word and ask `check_op` only about what it refuses: it must
        /// accept exactly the copies `check_op` accepts, on a 32-bit and a
        /// 64-bit mask, sides close together or apart, lengths at the edge
        /// of overlapping and of the mask.
        #[test]
        fn copy_is_valid_accepts_exactly_what_check_op_accepts((d, src, len, mask) in edge_copy()) {
            let limits = Limits { max_len: usize::MAX, dma_mask: mask, align: 1 };
            let checked = check_op(&Op::Copy { dst: d, src, len }, Capabilities::COPY, limits);
            prop_assert_eq!(copy_is_valid(d, src, len, mask), checked.is_ok());
        }
    }
}
