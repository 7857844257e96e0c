//! The glue a kernel embedding `dmaengine` writes: the device table, the DMA
//! channels and their interrupts, the IOMMU's host interface, the page-table
//! glue and the small executor that awaits copies.

pub mod devices;
pub mod dma;
pub mod executor;
pub mod iommu;
pub mod iommu_hal;
pub mod mm;
