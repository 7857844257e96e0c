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

#[cfg(test)]
mod tests;

use core::fmt;
use core::ops::RangeInclusive;
use core::slice::ChunksExact;

use bitflags::bitflags;

use super::SourceId;

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

/// The remapping structures of a [`Dmar`] table, in order.
#[derive(Clone, Debug)]
pub struct Structures<'a> {
    table: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Structures<'a> {
    type Item = Structure<'a>;

    fn next(&mut self) -> Option<Structure<'a>> {
        if self.at >= self.table.len() {
            return None;
        }
        // `Dmar::parse` checked every structure, so this fails only if the
        // bytes changed under it, which a shared borrow rules out; stop
        // rather than guess.
        match structure_at(self.table, self.at) {
            Ok((structure, length)) => {
                self.at += length;
                Some(structure)
            }
            Err(_) => {
                self.at = self.table.len();
                None
            }
        }
    }
}

/// One remapping structure (§8.2, Table "Remapping Structure Types").
#[derive(Clone, Debug)]
pub enum Structure<'a> {
    /// Type 0, a remapping unit.
    Drhd(Drhd<'a>),
    /// Type 1, a reserved memory region.
    Rmrr(Rmrr<'a>),
    /// Type 2, the root ports whose devices may use ATS.
    Atsr(Atsr<'a>),
    /// Type 3, a unit's NUMA proximity domain.
    Rhsa(Rhsa),
    /// Type 4, an ACPI namespace device.
    Andd(Andd<'a>),
    /// Type 5, SoC-integrated devices' address translation caches.
    Satc(Satc<'a>),
    /// A type this parser does not decode (6 and later, or reserved).
    Other {
        /// §8.2 Type.
        kind: u16,
        /// The bytes after its type and length.
        body: &'a [u8],
    },
}

/// The structure at `at` and its length, checked: its length against its
/// type's fixed part and the table's end, its device scopes, an RMRR's
/// region.
fn structure_at(table: &[u8], at: usize) -> Result<(Structure<'_>, usize), DmarError> {
    let Some([k0, k1, n0, n1]) = le::<4>(table, at) else {
        return Err(DmarError::TrailingBytes { offset: at });
    };
    let kind = u16::from_le_bytes([k0, k1]);
    let length = u16::from_le_bytes([n0, n1]);
    let fixed = match kind {
        0 => 16,
        1 => 24,
        2 | 4 | 5 => 8,
        3 => 20,
        _ => 4,
    };
    if usize::from(length) < fixed {
        return Err(DmarError::StructureTooShort {
            offset: at,
            kind,
            length,
        });
    }
    let past_end = DmarError::StructurePastEnd {
        offset: at,
        kind,
        length,
    };
    let s = table
        .get(at..)
        .and_then(|rest| rest.get(..usize::from(length)))
        .ok_or(past_end)?;
    // The fixed part is within `s` (checked above); a read that missed
    // would be this parser's bug, reported as the structure being short.
    let short = DmarError::StructureTooShort {
        offset: at,
        kind,
        length,
    };
    let u8_at = |i: usize| s.get(i).copied().ok_or(short);
    let u16_at = |i| le::<2>(s, i).map(u16::from_le_bytes).ok_or(short);
    let u32_at = |i| le::<4>(s, i).map(u32::from_le_bytes).ok_or(short);
    let u64_at = |i| le::<8>(s, i).map(u64::from_le_bytes).ok_or(short);
    let scopes = |from: usize| Scopes::checked(s, from, at);
    let structure = match kind {
        // §8.3: flags (4), size (5), segment (6), register base (8).
        0 => {
            let unit = Drhd {
                flags: u8_at(4)?,
                size: u8_at(5)?,
                segment: u16_at(6)?,
                register_base: u64_at(8)?,
                scopes: scopes(16)?,
            };
            // A kernel maps these pages and writes the unit's registers
            // there: page 0, a base inside a page, or a set past physical
            // memory would aim those writes at RAM or nowhere.
            let base = unit.register_base;
            let end = base.checked_add(unit.register_size());
            if base == 0 || base & 0xfff != 0 || end.is_none_or(|end| end > PHYS_END) {
                return Err(DmarError::RegisterBase {
                    offset: at,
                    base,
                    size: unit.size,
                });
            }
            Structure::Drhd(unit)
        }
        // §8.4: reserved (4), segment (6), base (8), limit (16).
        1 => {
            let (base, limit) = (u64_at(8)?, u64_at(16)?);
            let aligned =
                base & 0xfff == 0 && limit.checked_add(1).is_some_and(|end| end & 0xfff == 0);
            if limit < base || !aligned || limit >= PHYS_END {
                return Err(DmarError::Region {
                    offset: at,
                    base,
                    limit,
                });
            }
            Structure::Rmrr(Rmrr {
                segment: u16_at(6)?,
                base,
                limit,
                scopes: scopes(24)?,
            })
        }
        // §8.5: flags (4), reserved (5), segment (6).
        2 => Structure::Atsr(Atsr {
            flags: u8_at(4)?,
            segment: u16_at(6)?,
            scopes: scopes(8)?,
        }),
        // §8.6: reserved (4), register base (8), proximity domain (16).
        3 => Structure::Rhsa(Rhsa {
            register_base: u64_at(8)?,
            proximity_domain: u32_at(16)?,
        }),
        // §8.7: reserved (4-6), device number (7), object name (8).
        4 => {
            let name = s.get(8..).unwrap_or(&[]);
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            Structure::Andd(Andd {
                device_number: u8_at(7)?,
                name: name.get(..end).unwrap_or(&[]),
            })
        }
        // §8.8: flags (4), reserved (5), segment (6).
        5 => Structure::Satc(Satc {
            flags: u8_at(4)?,
            segment: u16_at(6)?,
            scopes: scopes(8)?,
        }),
        _ => Structure::Other {
            kind,
            body: s.get(4..).unwrap_or(&[]),
        },
    };
    Ok((structure, usize::from(length)))
}

/// A DMA-remapping hardware unit definition (§8.3).
#[derive(Clone, Debug)]
pub struct Drhd<'a> {
    /// §8.3 Flags (byte 4): bit 0 INCLUDE_PCI_ALL, the rest reserved.
    pub flags: u8,
    /// §8.3 Size (byte 5): bits 3:0 hold N, the register set spans 2^N
    /// 4 KiB pages (reserved, so 0, in older revisions of the spec, which
    /// reads as the one page their units had).
    pub size: u8,
    /// §8.3 Segment Number (bytes 6-7): the PCI segment the unit serves.
    pub segment: u16,
    /// §8.3 Register Base Address (bytes 8-15): the unit's register set,
    /// [`Drhd::register_size`] bytes of it, which [`Dmar::parse`] checked
    /// are whole pages, not page 0, below 2^52.
    pub register_base: u64,
    scopes: Scopes<'a>,
}

impl<'a> Drhd<'a> {
    /// §8.3 Flags bit 0, INCLUDE_PCI_ALL: the unit covers every PCI device
    /// of its segment that no other unit's scope names (its own scopes
    /// then list only IOAPICs and HPETs). QEMU 7.2's unit is not one: it
    /// names each PCI function of bus 0 in an endpoint scope instead
    /// (measured by the guest suite).
    pub fn include_pci_all(&self) -> bool {
        self.flags & 1 != 0
    }

    /// The bytes of the register set: 4 KiB × 2^(Size bits 3:0).
    pub fn register_size(&self) -> u64 {
        4096 << (self.size & 0xf)
    }

    /// §8.3 Device Scope (from byte 16): the devices the unit covers.
    pub fn scopes(&self) -> Scopes<'a> {
        self.scopes.clone()
    }
}

/// A reserved memory region (§8.4): memory devices in its scope may
/// reach at any time (the firmware left them using it).
#[derive(Clone, Debug)]
pub struct Rmrr<'a> {
    /// §8.4 Segment Number (bytes 6-7).
    pub segment: u16,
    /// §8.4 Reserved Memory Region Base Address (bytes 8-15), 4 KiB-aligned.
    pub base: u64,
    /// §8.4 Reserved Memory Region Limit Address (bytes 16-23): the last
    /// byte of the region (limit + 1 is 4 KiB-aligned).
    pub limit: u64,
    scopes: Scopes<'a>,
}

impl<'a> Rmrr<'a> {
    /// §8.4 Device Scope (from byte 24): the devices that use the region.
    pub fn scopes(&self) -> Scopes<'a> {
        self.scopes.clone()
    }
}

/// A root-port ATS capability reporting structure (§8.5).
#[derive(Clone, Debug)]
pub struct Atsr<'a> {
    /// §8.5 Flags (byte 4): bit 0 ALL_PORTS, every root port of the
    /// segment supports ATS (then the scopes list none).
    pub flags: u8,
    /// §8.5 Segment Number (bytes 6-7).
    pub segment: u16,
    scopes: Scopes<'a>,
}

impl<'a> Atsr<'a> {
    /// §8.5 Device Scope (from byte 8): root ports whose devices may use
    /// ATS.
    pub fn scopes(&self) -> Scopes<'a> {
        self.scopes.clone()
    }
}

/// A remapping hardware static affinity structure (§8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rhsa {
    /// §8.6 Register Base Address (bytes 8-15): the unit it describes.
    pub register_base: u64,
    /// §8.6 Proximity Domain (bytes 16-19): the unit's NUMA node, as the
    /// SRAT numbers them.
    pub proximity_domain: u32,
}

/// An ACPI namespace device declaration (§8.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Andd<'a> {
    /// §8.7 ACPI Device Number (byte 7): the enumeration id by which
    /// ACPI namespace device scopes refer to it.
    pub device_number: u8,
    /// §8.7 ACPI Object Name (from byte 8): the device's full path in the
    /// ACPI namespace, ASCII, without its terminating NUL.
    pub name: &'a [u8],
}

/// A SoC-integrated address translation cache reporting structure (§8.8).
#[derive(Clone, Debug)]
pub struct Satc<'a> {
    /// §8.8 Flags (byte 4): bit 0 ATC_REQUIRED, the devices need their
    /// translation caches enabled to work.
    pub flags: u8,
    /// §8.8 Segment Number (bytes 6-7).
    pub segment: u16,
    scopes: Scopes<'a>,
}

impl<'a> Satc<'a> {
    /// §8.8 Device Scope (from byte 8): the devices with a translation
    /// cache.
    pub fn scopes(&self) -> Scopes<'a> {
        self.scopes.clone()
    }
}

/// The device scopes of one structure (§8.3.1), in order.
#[derive(Clone, Debug)]
pub struct Scopes<'a> {
    /// The structure's bytes.
    structure: &'a [u8],
    /// The next scope's offset within it.
    at: usize,
    /// The structure's offset in the table, for errors.
    offset: usize,
}

impl<'a> Scopes<'a> {
    /// The scopes of `structure` (at `offset` in the table) from byte
    /// `from` to its end, each checked.
    fn checked(structure: &'a [u8], from: usize, offset: usize) -> Result<Scopes<'a>, DmarError> {
        let scopes = Scopes {
            structure,
            at: from,
            offset,
        };
        let mut at = from;
        while at < structure.len() {
            at += scopes.scope_at(at)?.1;
        }
        Ok(scopes)
    }

    /// The scope at `at` and its length, checked.
    fn scope_at(&self, at: usize) -> Result<(DeviceScope<'a>, usize), DmarError> {
        let offset = self.offset + at;
        // A scope's length is its second byte; fewer than 2 bytes left
        // cannot hold one.
        let Some([kind, length]) = le::<2>(self.structure, at) else {
            return Err(DmarError::ScopeTooShort { offset, length: 0 });
        };
        if usize::from(length) < SCOPE_FIXED + 2 {
            return Err(DmarError::ScopeTooShort { offset, length });
        }
        if usize::from(length) % 2 != 0 {
            return Err(DmarError::OddPath { offset, length });
        }
        let scope = self
            .structure
            .get(at..)
            .and_then(|rest| rest.get(..usize::from(length)))
            .ok_or(DmarError::ScopePastEnd { offset, length })?;
        let Some(&[_, _, flags, _, enumeration_id, start_bus]) = scope.first_chunk::<SCOPE_FIXED>()
        else {
            return Err(DmarError::ScopeTooShort { offset, length });
        };
        Ok((
            DeviceScope {
                kind: ScopeKind::from(kind),
                flags,
                enumeration_id,
                start_bus,
                path: scope.get(SCOPE_FIXED..).unwrap_or(&[]),
            },
            usize::from(length),
        ))
    }
}

impl<'a> Iterator for Scopes<'a> {
    type Item = DeviceScope<'a>;

    fn next(&mut self) -> Option<DeviceScope<'a>> {
        if self.at >= self.structure.len() {
            return None;
        }
        // Checked when the structure was made (see `Structures::next`).
        match self.scope_at(self.at) {
            Ok((scope, length)) => {
                self.at += length;
                Some(scope)
            }
            Err(_) => {
                self.at = self.structure.len();
                None
            }
        }
    }
}

/// §8.3.1 Device Scope Type (byte 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    /// 1: a PCI endpoint device (the path's last hop).
    PciEndpoint,
    /// 2: a PCI-to-PCI bridge and every device below it.
    PciSubHierarchy,
    /// 3: an I/O APIC (the enumeration id is its I/O APIC id).
    IoApic,
    /// 4: an MSI-capable HPET (the enumeration id is its HPET number).
    Hpet,
    /// 5: an ACPI namespace device (the enumeration id is an ANDD's device
    /// number).
    AcpiNamespace,
    /// Any other value (0 and 6 on are reserved).
    Other(u8),
}

impl From<u8> for ScopeKind {
    fn from(kind: u8) -> ScopeKind {
        match kind {
            1 => ScopeKind::PciEndpoint,
            2 => ScopeKind::PciSubHierarchy,
            3 => ScopeKind::IoApic,
            4 => ScopeKind::Hpet,
            5 => ScopeKind::AcpiNamespace,
            other => ScopeKind::Other(other),
        }
    }
}

/// A device scope entry (§8.3.1): one device, or a bridge and what is
/// below it, by the path from a bus to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceScope<'a> {
    /// §8.3.1 Type (byte 0).
    pub kind: ScopeKind,
    /// §8.3.1 Flags (byte 2; reserved in older revisions of the spec), as
    /// given.
    pub flags: u8,
    /// §8.3.1 Enumeration ID (byte 4): an I/O APIC id, HPET number or
    /// ANDD device number, by `kind`; unused for PCI scopes.
    pub enumeration_id: u8,
    /// §8.3.1 Start Bus Number (byte 5): the bus the path starts on.
    pub start_bus: u8,
    /// §8.3.1 Path (from byte 6), (device, function) pairs.
    path: &'a [u8],
}

/// One hop of a device scope's path: a PCI device and function on the
/// bus the previous hop's bridge leads to (or the start bus).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathHop {
    /// §8.3.1 Path, first byte of a pair: the PCI device number.
    pub device: u8,
    /// §8.3.1 Path, second byte of a pair: the PCI function number.
    pub function: u8,
}

/// The hops of a device scope's path.
#[derive(Clone, Debug)]
pub struct Path<'a>(ChunksExact<'a, u8>);

impl Iterator for Path<'_> {
    type Item = PathHop;

    fn next(&mut self) -> Option<PathHop> {
        match *self.0.next()? {
            [device, function] => Some(PathHop { device, function }),
            _ => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for Path<'_> {}

impl<'a> DeviceScope<'a> {
    /// The path from `start_bus` to the device: at least one hop, every
    /// hop but the last a bridge.
    pub fn path(&self) -> Path<'a> {
        Path(self.path.chunks_exact(2))
    }

    /// Whether this PCI scope names `device`: as its endpoint, or (a
    /// sub-hierarchy scope) as the bridge or a function on a bus below it.
    /// `bridge_buses` as for [`Dmar::unit_for`]. Other kinds of scope name
    /// no PCI function.
    pub fn covers<F>(&self, device: SourceId, bridge_buses: &mut F) -> bool
    where
        F: FnMut(u8, u8, u8) -> Option<RangeInclusive<u8>>,
    {
        let below = match self.kind {
            ScopeKind::PciEndpoint => false,
            ScopeKind::PciSubHierarchy => true,
            _ => return false,
        };
        let mut hops = self.path();
        let Some(mut last) = hops.next() else {
            return false;
        };
        let mut bus = self.start_bus;
        for hop in hops {
            match bridge_buses(bus, last.device, last.function) {
                Some(buses) => bus = *buses.start(),
                None => return false,
            }
            last = hop;
        }
        if (bus, last.device, last.function) == (device.bus, device.device, device.function) {
            return true;
        }
        below
            && bridge_buses(bus, last.device, last.function)
                .is_some_and(|buses| buses.contains(&device.bus))
    }
}
