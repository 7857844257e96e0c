//! Drivers for the DMA-capable devices QEMU emulates, and the CPU fallback.

pub mod cpu;
pub mod edu;
pub mod lsi53c895a;
