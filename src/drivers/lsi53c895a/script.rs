//! SCRIPTS instruction encodings: the few the copy engine uses.
//!
//! Source: LSI53C895A Technical Manual, chapter 6 "SCRIPTS Instruction Set":
//! the first dword's bits 31-30 select the type (11 = Memory Move or
//! Load/Store, 10 = Transfer Control); the encodings below were also checked
//! against QEMU 7.2 and 10.0 (measured there).

use super::regs;
use crate::mmio::Reg;

/// Memory Move, first dword: bits 31-29 = 110 (bit 29 clear: not Load/Store),
/// bits 23-0 the byte count. The second dword is the source, the third the
/// destination (32-bit addresses).
pub const MEMORY_MOVE: u32 = 0xc000_0000;
/// Load/Store, first dword: bits 31-29 = 111, bit 28 clear (absolute
/// address, not DSA-relative), bit 24 clear for a Store (register to
/// memory), bits 22-16 the register's address, bits 2-0 the byte count
/// (1-4). The second dword is the memory address.
pub const STORE: u32 = 0xe000_0000;
/// The largest Memory Move byte count (24 bits).
pub const MAX_MOVE: u32 = 0x00ff_ffff;
/// Transfer Control JUMP: bits 31-30 = 10, opcode (29-27) = 000, bit 19 =
/// jump if true with no condition tested: always taken. Dword two: target.
pub const JUMP: u32 = 0x8008_0000;
/// Transfer Control INT: opcode 011, bit 19 set (without it QEMU treats the
/// instruction as a no-op). Stops SCRIPTS; dword two lands in DSPS.
pub const INT: u32 = 0x9808_0000;
/// INT with bit 20 (interrupt on the fly): sets ISTAT.INTF and asserts the
/// interrupt without stopping.
pub const INTFLY: u32 = 0x9818_0000;
/// Transfer Control with the reserved opcode 100: always an illegal
/// instruction (DSTAT.IID). Only for fault injection.
pub const ILLEGAL: u32 = 0xa008_0000;

/// Read-Modify-Write "Move register to SFBR" with the OR operator: bits
/// 31-30 = 01, opcode (29-27) = 110, operator (26-24) = 010 (OR: the
/// register is really read, which plain data-move does not do), bits 22-16
/// the register, bits 15-8 the immediate operand. Dword two is unused.
pub const MOVE_REG_OR_TO_SFBR: u32 = 0x7200_0000;
/// I/O WAIT RESELECT: bits 31-30 = 01, opcode (29-27) = 010. Dword two is
/// the alternate address, taken at once when ISTAT.SIGP is set; otherwise
/// the processor parks until a host write of SIGP, then takes it (QEMU
/// `lsi_wait_reselect`, `lsi_reg_writeb` for ISTAT0).
pub const WAIT_RESELECT: u32 = 0x5000_0000;

/// Words in a Memory Move.
pub const MOVE_WORDS: u32 = 3;
/// Words in a Transfer Control instruction.
pub const TC_WORDS: u32 = 2;
/// Words in a Load/Store instruction.
pub const STORE_WORDS: u32 = 2;

/// A Memory Move of `count` bytes (at most [`MAX_MOVE`]) from `src` to `dst`.
#[inline]
pub const fn memory_move(count: u32, src: u32, dst: u32) -> [u32; 3] {
    assert!(count <= MAX_MOVE, "Memory Move count is 24 bits");
    [MEMORY_MOVE | count, src, dst]
}

/// A Store of `count` bytes (1-4) of register `reg` (its offset in the
/// register window is below 0x80) to `addr`.
#[inline]
pub const fn store<T, A>(reg: Reg<T, A>, count: u32, addr: u32) -> [u32; 2] {
    let reg = reg.offset();
    assert!(
        reg < 0x80 && count >= 1 && count <= 4,
        "Store: bad register or count"
    );
    [STORE | (reg as u32) << 16 | count, addr]
}

/// An unconditional JUMP to `target`.
#[inline]
pub const fn jump(target: u32) -> [u32; 2] {
    [JUMP, target]
}

/// An INT that stops SCRIPTS with `value` in DSPS.
#[inline]
pub const fn int(value: u32) -> [u32; 2] {
    [INT, value]
}

/// An INTFLY: interrupt without stopping.
#[inline]
pub const fn intfly(value: u32) -> [u32; 2] {
    [INTFLY, value]
}

/// `MOVE CTEST2 | 0 TO SFBR`: reads CTEST2, which clears ISTAT.SIGP (the
/// doorbell), and changes nothing else the copy engine uses.
#[inline]
pub const fn clear_sigp() -> [u32; 2] {
    [
        MOVE_REG_OR_TO_SFBR | (regs::CTEST2.offset() as u32) << 16,
        0,
    ]
}

/// A WAIT RESELECT whose alternate address is `alt`: parks the processor
/// until the doorbell (ISTAT.SIGP), then jumps to `alt`; jumps at once if
/// SIGP is already set.
#[inline]
pub const fn wait_reselect(alt: u32) -> [u32; 2] {
    [WAIT_RESELECT, alt]
}

/// An illegal instruction, for fault injection.
#[inline]
pub const fn illegal() -> [u32; 2] {
    [ILLEGAL, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(word: u32, high: u32, low: u32) -> u32 {
        (word >> low) & ((1 << (high - low + 1)) - 1)
    }

    #[test]
    fn memory_move_fields() {
        let [op, src, dst] = memory_move(0x12_3456, 0x1000, 0x2000);
        assert_eq!(bits(op, 31, 30), 0b11, "type: memory move / load-store");
        assert_eq!(bits(op, 29, 29), 0, "not load/store");
        assert_eq!(bits(op, 23, 0), 0x12_3456, "byte count");
        assert_eq!((src, dst), (0x1000, 0x2000));
        assert_eq!(memory_move(MAX_MOVE, 0, 0)[0], 0xc0ff_ffff);
        assert_eq!(memory_move(0, 0, 0)[0], 0xc000_0000);
    }

    #[test]
    #[should_panic(expected = "24 bits")]
    fn memory_move_count_is_24_bits() {
        let _ = memory_move(MAX_MOVE + 1, 0, 0);
    }

    #[test]
    fn store_fields() {
        let [op, addr] = store(Reg::<u32, crate::mmio::ReadWrite>::at(0x2c), 4, 0x1234_5678);
        assert_eq!(bits(op, 31, 29), 0b111, "type: load/store");
        assert_eq!(bits(op, 28, 28), 0, "absolute address");
        assert_eq!(bits(op, 24, 24), 0, "store, not load");
        assert_eq!(bits(op, 22, 16), 0x2c, "register");
        assert_eq!(bits(op, 2, 0), 4, "byte count");
        assert_eq!(addr, 0x1234_5678);
    }

    #[test]
    fn transfer_control_fields() {
        for (word, opcode) in [
            (jump(0)[0], 0b000),
            (int(0)[0], 0b011),
            (intfly(0)[0], 0b011),
            (illegal()[0], 0b100),
        ] {
            assert_eq!(bits(word, 31, 30), 0b10, "{word:#x}: transfer control");
            assert_eq!(bits(word, 29, 27), opcode, "{word:#x}: opcode");
            assert_eq!(
                bits(word, 19, 19),
                1,
                "{word:#x}: jump-if-true, so the instruction acts"
            );
            assert_eq!(
                bits(word, 18, 17) | bits(word, 21, 21),
                0,
                "{word:#x}: no condition tested"
            );
        }
        assert_eq!(bits(intfly(0)[0], 20, 20), 1, "interrupt on the fly");
        assert_eq!(bits(int(0)[0], 20, 20), 0);
        assert_eq!(jump(0xdead_beef)[1], 0xdead_beef);
        assert_eq!(int(0x42)[1], 0x42);
    }

    #[test]
    fn doorbell_instruction_fields() {
        let [op, unused] = clear_sigp();
        assert_eq!(op, 0x721a_0000, "the encoding tried on QEMU 7.2 and 10.0");
        assert_eq!(bits(op, 31, 30), 0b01, "type: I/O or read-modify-write");
        assert_eq!(bits(op, 29, 27), 0b110, "move register to SFBR");
        assert_eq!(bits(op, 26, 24), 0b010, "OR: reads the register");
        assert_eq!(bits(op, 22, 16), 0x1a, "CTEST2");
        assert_eq!(bits(op, 15, 8), 0, "OR with 0: SFBR gets CTEST2 as is");
        assert_eq!(unused, 0);
        let [op, alt] = wait_reselect(0x1234_5678);
        assert_eq!(op, 0x5000_0000);
        assert_eq!(bits(op, 31, 30), 0b01, "type: I/O");
        assert_eq!(bits(op, 29, 27), 0b010, "WAIT RESELECT");
        assert_eq!(bits(op, 26, 26), 0, "absolute alternate address");
        assert_eq!(alt, 0x1234_5678);
    }
}
