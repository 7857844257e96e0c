//! ACPI's DMA Remapping Reporting table (DMAR), parsed from its bytes: the
//! remapping units (DRHD) and the devices each covers, the reserved memory
//! regions (RMRR) devices keep using, and the other structures the
//! firmware reports. Source: Intel Virtualization Technology for Directed
//! I/O, Architecture Specification (rev. 4), chapter 8 "BIOS
//! Considerations" (section numbers below), and ACPI 6.5 §5.2.6 (the
//! table header and its checksum).
//!
//! [`Dmar::parse`] checks the whole table once (header, checksum, every
//! structure's and every device scope's length), so the iterators it hands
//! out yield plain values; a table that lies about a length is refused
//! there with a [`DmarError`], never read out of bounds. Nothing is
//! copied or allocated: everything borrows the caller's bytes.
//!
//! ```
//! # fn kernel(dmar_bytes: &[u8]) -> Result<(), dmaengine::iommu::dmar::DmarError> {
//! use dmaengine::iommu::SourceId;
//! use dmaengine::iommu::dmar::Dmar;
//!
//! let dmar = Dmar::parse(dmar_bytes)?;
//! let lsi = SourceId { bus: 0, device: 3, function: 0 };
//! // Bridges' bus numbers come from PCI config space; a kernel with only
//! // bus 0 devices in the table's scopes never needs them.
//! let no_bridges = |_bus, _device, _function| None;
//! if let Some(unit) = dmar.unit_for(0, lsi, no_bridges) {
//!     let _registers = unit.register_base; // for `Iommu::new`
//! }
//! for region in dmar.reserved_regions_for(0, lsi, no_bridges) {
//!     // identity-map region.base..=region.limit in the device's domain
//! #   let _ = region;
//! }
//! # Ok(())
//! # }
//! ```

mod scope;
mod structures;
#[cfg(test)]
mod tests;

use core::fmt;
use core::ops::RangeInclusive;

use bitflags::bitflags;

use super::SourceId;
use structures::structure_at;

pub use scope::{DeviceScope, Path, PathHop, ScopeKind, Scopes};
pub use structures::{Andd, Atsr, Drhd, Rhsa, Rmrr, Satc, Structure, Structures};

/// ACPI 6.5 §5.2.6: the system description table header, 36 bytes.
const HEADER: usize = 36;
/// §8.1: the remapping structures start after the header, the host
/// address width (1 byte), the flags (1) and 10 reserved bytes.
const STRUCTURES: usize = HEADER + 12;
/// x86_64's physical addresses end below 2^52 (MAXPHYADDR is at most 52,
/// Intel SDM vol. 3A §4.1.4): registers and reserved memory lie below.
const PHYS_END: u64 = 1 << 52;
/// §8.3.1: a device scope's fixed part (type, length, flags, reserved,
/// enumeration id, start bus) before its path.
const SCOPE_FIXED: usize = 6;

bitflags! {
    /// §8.1 DMAR Flags (byte 37).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DmarFlags: u8 {
        /// §8.1 bit 0, INTR_REMAP: the platform supports interrupt
        /// remapping.
        const INTR_REMAP = 1 << 0;
        /// §8.1 bit 1, X2APIC_OPT_OUT: firmware asks the OS not to enable
        /// x2APIC mode.
        const X2APIC_OPT_OUT = 1 << 1;
        /// §8.1 bit 2, DMA_CTRL_PLATFORM_OPT_IN: the platform is ready for
        /// the OS to enable DMA remapping at boot (firmware protected
        /// memory until then).
        const DMA_CTRL_PLATFORM_OPT_IN = 1 << 2;
    }
}

/// Why a DMAR table was refused. Offsets count from the table's first
/// byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmarError {
    /// Fewer bytes than the table's fixed part (48: the ACPI header, the
    /// host address width, the flags and 10 reserved bytes).
    TooShort {
        /// Bytes given.
        available: usize,
    },
    /// The signature is not `DMAR`.
    Signature([u8; 4]),
    /// The header's length is below the fixed part, or beyond the bytes
    /// given.
    Length {
        /// The header's length field.
        header: u32,
        /// Bytes given.
        available: usize,
    },
    /// The table's bytes do not sum to 0 (modulo 256): ACPI 6.5 §5.2.6
    /// makes such a table invalid, so nothing in it is trusted.
    Checksum {
        /// What they sum to.
        sum: u8,
    },
    /// 1 to 3 bytes after the last structure: too few for another's type
    /// and length.
    TrailingBytes {
        /// Where they start.
        offset: usize,
    },
    /// A remapping structure whose length is below its type's fixed part
    /// (every one has at least its 4-byte type and length; a length of 0
    /// would never advance).
    StructureTooShort {
        /// Where it starts.
        offset: usize,
        /// Its type.
        kind: u16,
        /// Its length field.
        length: u16,
    },
    /// A remapping structure that runs past the table's end.
    StructurePastEnd {
        /// Where it starts.
        offset: usize,
        /// Its type.
        kind: u16,
        /// Its length field.
        length: u16,
    },
    /// A device scope shorter than 8 bytes (6 fixed, and at least one
    /// hop of path, §8.3.1).
    ScopeTooShort {
        /// Where it starts.
        offset: usize,
        /// Its length field (0 if fewer than 2 bytes were left for it).
        length: u8,
    },
    /// A device scope that runs past the end of its structure.
    ScopePastEnd {
        /// Where it starts.
        offset: usize,
        /// Its length field.
        length: u8,
    },
    /// A device scope whose path has an odd number of bytes: a path is
    /// (device, function) pairs.
    OddPath {
        /// Where the scope starts.
        offset: usize,
        /// Its length field.
        length: u8,
    },
    /// A DRHD whose register set is not whole pages of physical address
    /// space: a base of 0 or inside a page (§8.3: the set is 2^N 4 KiB
    /// pages), or a set that runs past 2^52 (x86_64's widest physical
    /// address, Intel SDM vol. 3A §4.1.4). A kernel maps and writes what
    /// it is given, so such a unit is refused rather than handed on.
    RegisterBase {
        /// Where the DRHD starts.
        offset: usize,
        /// Its register base address.
        base: u64,
        /// Its size field.
        size: u8,
    },
    /// An RMRR whose limit is below its base, whose ends are not 4 KiB
    /// boundaries (§8.4: base 4 KiB-aligned, limit + 1 too), or that runs
    /// past 2^52 (no physical address is there to identity-map).
    Region {
        /// Where the RMRR starts.
        offset: usize,
        /// Its base address.
        base: u64,
        /// Its limit address.
        limit: u64,
    },
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DmarError::TooShort { available } => {
                write!(
                    f,
                    "{available} bytes are too few for a DMAR table (48 at least)"
                )
            }
            DmarError::Signature(s) => write!(f, "signature {s:02x?} is not DMAR"),
            DmarError::Length { header, available } => write!(
                f,
                "the DMAR header says {header} bytes, with {available} given (48 at least)"
            ),
            DmarError::Checksum { sum } => {
                write!(f, "the DMAR table's bytes sum to {sum:#04x}, not 0")
            }
            DmarError::TrailingBytes { offset } => {
                write!(f, "stray bytes at offset {offset} after the last structure")
            }
            DmarError::StructureTooShort {
                offset,
                kind,
                length,
            } => write!(
                f,
                "structure of type {kind} at offset {offset} claims {length} bytes, below its fixed part"
            ),
            DmarError::StructurePastEnd {
                offset,
                kind,
                length,
            } => write!(
                f,
                "structure of type {kind} at offset {offset} claims {length} bytes, past the table's end"
            ),
            DmarError::ScopeTooShort { offset, length } => write!(
                f,
                "device scope at offset {offset} claims {length} bytes, below 8"
            ),
            DmarError::ScopePastEnd { offset, length } => write!(
                f,
                "device scope at offset {offset} claims {length} bytes, past its structure's end"
            ),
            DmarError::OddPath { offset, length } => write!(
                f,
                "device scope at offset {offset} claims {length} bytes: an odd-length path"
            ),
            DmarError::RegisterBase { offset, base, size } => write!(
                f,
                "DRHD at offset {offset} puts its registers (size field {size:#x}) at {base:#x}, \
                 not whole pages below 2^52"
            ),
            DmarError::Region {
                offset,
                base,
                limit,
            } => write!(
                f,
                "RMRR at offset {offset} spans {base:#x}..={limit:#x}, not a run of whole 4 KiB pages"
            ),
        }
    }
}

impl core::error::Error for DmarError {}

/// `N` bytes at `at` in `s`, if they are there.
fn le<const N: usize>(s: &[u8], at: usize) -> Option<[u8; N]> {
    s.get(at..)?.first_chunk::<N>().copied()
}

/// A DMAR table, checked whole by [`Dmar::parse`].
#[derive(Clone, Copy, Debug)]
pub struct Dmar<'a> {
    /// The table, exactly its header's length.
    table: &'a [u8],
}

impl<'a> Dmar<'a> {
    /// Checks `bytes` (the whole table from its ACPI header on; bytes past
    /// the header's length are ignored) and every structure and device
    /// scope in it. A table whose checksum fails is refused, not read:
    /// ACPI calls it invalid, and its lengths are then not worth trusting.
    pub fn parse(bytes: &'a [u8]) -> Result<Dmar<'a>, DmarError> {
        let Some(fixed) = bytes.first_chunk::<STRUCTURES>() else {
            return Err(DmarError::TooShort {
                available: bytes.len(),
            });
        };
        let [s0, s1, s2, s3, l0, l1, l2, l3, ..] = *fixed;
        if [s0, s1, s2, s3] != *b"DMAR" {
            return Err(DmarError::Signature([s0, s1, s2, s3]));
        }
        let header = u32::from_le_bytes([l0, l1, l2, l3]);
        let refused = DmarError::Length {
            header,
            available: bytes.len(),
        };
        let length = usize::try_from(header).map_err(|_| refused)?;
        if length < STRUCTURES {
            return Err(refused);
        }
        let table = bytes.get(..length).ok_or(refused)?;
        let sum = table.iter().fold(0u8, |sum, &b| sum.wrapping_add(b));
        if sum != 0 {
            return Err(DmarError::Checksum { sum });
        }
        let mut at = STRUCTURES;
        while at < table.len() {
            at += structure_at(table, at)?.1;
        }
        Ok(Dmar { table })
    }

    /// The table's bytes, exactly its header's length.
    pub fn bytes(&self) -> &'a [u8] {
        self.table
    }

    /// §8.1 Host Address Width (byte 36, which holds N): the platform's
    /// DMA reaches N + 1 bits of physical address.
    pub fn host_address_width(&self) -> u16 {
        u16::from(self.table.get(HEADER).copied().unwrap_or(0)) + 1
    }

    /// §8.1 Flags (byte 37); bits the spec leaves reserved are kept.
    pub fn flags(&self) -> DmarFlags {
        DmarFlags::from_bits_retain(self.table.get(HEADER + 1).copied().unwrap_or(0))
    }

    /// Every remapping structure, in table order (§8.2).
    pub fn structures(&self) -> Structures<'a> {
        Structures {
            table: self.table,
            at: STRUCTURES,
        }
    }

    /// The remapping units (DRHD structures), in table order. §8.3: the
    /// unit with INCLUDE_PCI_ALL comes last among its segment's.
    pub fn units(&self) -> impl Iterator<Item = Drhd<'a>> + use<'a> {
        self.structures().filter_map(|s| match s {
            Structure::Drhd(unit) => Some(unit),
            _ => None,
        })
    }

    /// The reserved memory regions (RMRR structures), in table order.
    pub fn reserved_regions(&self) -> impl Iterator<Item = Rmrr<'a>> + use<'a> {
        self.structures().filter_map(|s| match s {
            Structure::Rmrr(region) => Some(region),
            _ => None,
        })
    }

    /// The unit whose DMA remapping covers PCI function `device` of
    /// segment `segment` (§8.3): the unit one of whose PCI scopes names it
    /// (as an endpoint, or as a bridge it is below), or else the unit of
    /// that segment with INCLUDE_PCI_ALL, or `None` (its DMA is not
    /// remapped).
    ///
    /// `bridge_buses(bus, device, function)` answers the bus numbers below
    /// the PCI-to-PCI bridge at that address: its secondary bus through its
    /// subordinate bus (config space offsets 0x19 and 0x1A of a type 1
    /// header), or `None` if no bridge is there. It is asked only about
    /// functions a scope's path names: each hop of a path but the last
    /// goes through a bridge (§8.3.1), and a sub-hierarchy scope covers
    /// the buses below its last hop. A kernel reads them from config space
    /// as set up when the firmware or the kernel enumerated PCI; a scope
    /// whose path it cannot follow names no device.
    pub fn unit_for<F>(
        &self,
        segment: u16,
        device: SourceId,
        mut bridge_buses: F,
    ) -> Option<Drhd<'a>>
    where
        F: FnMut(u8, u8, u8) -> Option<RangeInclusive<u8>>,
    {
        self.units()
            .filter(|unit| unit.segment == segment)
            .find(|unit| unit.scopes().any(|s| s.covers(device, &mut bridge_buses)))
            .or_else(|| {
                self.units()
                    .find(|unit| unit.segment == segment && unit.include_pci_all())
            })
    }

    /// The reserved memory regions whose scopes name PCI function `device`
    /// of segment `segment` (§8.4): memory the firmware set the device up
    /// to use (a USB controller's legacy buffers, a graphics stolen area),
    /// which a kernel maps 1:1 in the device's domain before it turns
    /// translation on, or the device faults. `bridge_buses` as for
    /// [`Dmar::unit_for`].
    pub fn reserved_regions_for<F>(
        &self,
        segment: u16,
        device: SourceId,
        mut bridge_buses: F,
    ) -> impl Iterator<Item = Rmrr<'a>> + use<'a, F>
    where
        F: FnMut(u8, u8, u8) -> Option<RangeInclusive<u8>>,
    {
        self.reserved_regions().filter(move |region| {
            region.segment == segment
                && region.scopes().any(|s| s.covers(device, &mut bridge_buses))
        })
    }
}
