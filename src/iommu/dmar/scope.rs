//! Device scopes (§8.3.1): the devices a structure names, each by a path
//! of (device, function) hops from a start bus, and whether one covers a
//! PCI function.

use core::ops::RangeInclusive;
use core::slice::ChunksExact;

use super::{DmarError, SCOPE_FIXED, le};
use crate::iommu::SourceId;

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
    pub(super) fn checked(
        structure: &'a [u8],
        from: usize,
        offset: usize,
    ) -> Result<Scopes<'a>, DmarError> {
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
    /// `bridge_buses` as for [`Dmar::unit_for`](super::Dmar::unit_for). Other kinds of scope name
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
