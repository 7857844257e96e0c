//! The remapping structures of a DMAR table (§8.2-8.8): each one's
//! fixed part decoded and checked against its length, an RMRR's region
//! and a DRHD's register set against physical memory.

use super::scope::Scopes;
use super::{DmarError, PHYS_END, le};

/// The remapping structures of a [`Dmar`](super::Dmar) table, in order.
#[derive(Clone, Debug)]
pub struct Structures<'a> {
    pub(super) table: &'a [u8],
    pub(super) at: usize,
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
pub(super) fn structure_at(table: &[u8], at: usize) -> Result<(Structure<'_>, usize), DmarError> {
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
    /// [`Drhd::register_size`] bytes of it, which [`Dmar::parse`](super::Dmar::parse) checked
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
