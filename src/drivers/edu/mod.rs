//! QEMU's `edu` teaching device (`-device edu`, PCI 1234:11e8).

pub mod regs;
