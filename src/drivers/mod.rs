//! Drivers for the DMA-capable devices QEMU emulates.

pub mod edu;
pub mod lsi53c895a;
