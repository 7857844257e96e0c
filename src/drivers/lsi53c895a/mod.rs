//! The LSI53C895A SCSI controller's SCRIPTS processor (`-device lsi53c895a`,
//! PCI 1000:0012), used as a memory-to-memory copy engine.

pub mod regs;
