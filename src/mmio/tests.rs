//! Host tests of the windows' checks and of the counted accesses.

use super::*;

// Only the checks: a host test cannot execute `in` or `out`, and each
// check panics before the instruction.
#[test]
#[should_panic(expected = "outside or misaligned")]
fn a_port_past_the_window_panics_before_any_access() {
    // SAFETY: the access panics at its bounds check; no port is touched.
    let ports = unsafe { PortRegion::new(0xc000, 0x100) };
    ports.write8(0x100, 0x20);
}

#[test]
#[should_panic(expected = "outside or misaligned")]
fn a_misaligned_port_access_panics_before_any_access() {
    // SAFETY: as above.
    let ports = unsafe { PortRegion::new(0xc000, 0x100) };
    ports.write32(0x2e, 0);
}

#[test]
#[should_panic(expected = "past port 0xffff")]
fn a_window_that_wraps_the_port_space_panics_before_any_access() {
    // SAFETY: as above.
    let ports = unsafe { PortRegion::new(0xfff0, 0x100) };
    ports.write8(0x14, 0x20);
}

#[test]
fn accesses_reach_memory_and_are_counted() {
    let mut backing = [0u64; 4];
    let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
    // SAFETY: `backing` outlives `regs` and is only touched through it.
    let regs = unsafe { MmioRegion::new(base, 32) };
    regs.write32(4, 0xdead_beef);
    regs.write8(0, 0x5a);
    regs.write64(8, 0x0123_4567_89ab_cdef);
    assert_eq!(regs.read32(4), 0xdead_beef);
    assert_eq!(regs.read8(0), 0x5a);
    assert_eq!(regs.read64(8), 0x0123_4567_89ab_cdef);
    assert_eq!((regs.accesses(), regs.reads()), (6, 3));
    assert_eq!(backing[0], 0xdead_beef_0000_005a);
}

#[test]
#[should_panic(expected = "outside or misaligned")]
fn offset_past_the_window_panics() {
    let mut backing = [0u32; 2];
    let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
    // SAFETY: `backing` outlives `regs` and is only touched through it.
    let regs = unsafe { MmioRegion::new(base, 8) };
    regs.read32(8);
}

/// Issue 17, hole 9: `offset + size_of::<T>()` wrapped for an offset
/// near `usize::MAX`, so with overflow checks off (release) the check
/// passed and the pointer left the window; with them on, the panic was
/// an overflow, not the bounds check.
#[test]
#[should_panic(expected = "outside or misaligned")]
fn an_offset_whose_end_wraps_panics_at_the_bounds_check() {
    let mut backing = [0u32; 2];
    let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
    // SAFETY: `backing` outlives `regs` and is only touched through it.
    let regs = unsafe { MmioRegion::new(base, 8) };
    regs.read32(usize::MAX - 3);
}
