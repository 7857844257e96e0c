//! The DMAR parser against tables assembled here byte by byte (with their
//! checksums), hostile ones included.

use core::ops::RangeInclusive;

use proptest::prelude::*;

use super::{Dmar, DmarError, DmarFlags, PathHop, ScopeKind, Structure};
use crate::iommu::SourceId;

/// Makes the bytes of `t` sum to 0 through its checksum (byte 9).
fn fix_checksum(t: &mut [u8]) {
    t[9] = 0;
    let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
}

/// A DMAR table: the ACPI header (QEMU's OEM ids), host address width N
/// `haw`, `flags`, then `structures` as given.
fn table(haw: u8, flags: u8, structures: &[Vec<u8>]) -> Vec<u8> {
    let mut t = b"DMAR".to_vec();
    t.extend(0u32.to_le_bytes()); // length, below
    t.extend([1, 0]); // revision, checksum
    t.extend(b"BOCHS BXPC    ");
    t.extend(1u32.to_le_bytes()); // OEM revision
    t.extend(b"BXPC");
    t.extend(1u32.to_le_bytes()); // creator revision
    assert_eq!(t.len(), 36);
    t.extend([haw, flags]);
    t.extend([0; 10]);
    for s in structures {
        t.extend(s);
    }
    let length = t.len() as u32;
    t[4..8].copy_from_slice(&length.to_le_bytes());
    fix_checksum(&mut t);
    t
}

/// A remapping structure: type, length, then `body` and `scopes`.
fn structure(kind: u16, body: &[u8], scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut s = kind.to_le_bytes().to_vec();
    s.extend([0, 0]);
    s.extend(body);
    for scope in scopes {
        s.extend(scope);
    }
    let length = s.len() as u16;
    s[2..4].copy_from_slice(&length.to_le_bytes());
    s
}

fn drhd(flags: u8, size: u8, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![flags, size];
    body.extend(segment.to_le_bytes());
    body.extend(base.to_le_bytes());
    structure(0, &body, scopes)
}

fn rmrr(segment: u16, base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend(segment.to_le_bytes());
    body.extend(base.to_le_bytes());
    body.extend(limit.to_le_bytes());
    structure(1, &body, scopes)
}

fn with_segment(kind: u16, flags: u8, segment: u16, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![flags, 0];
    body.extend(segment.to_le_bytes());
    structure(kind, &body, scopes)
}

/// A device scope of type `kind`.
fn scope(kind: u8, enumeration_id: u8, start_bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    let mut s = vec![
        kind,
        (6 + 2 * path.len()) as u8,
        0,
        0,
        enumeration_id,
        start_bus,
    ];
    for &(device, function) in path {
        s.extend([device, function]);
    }
    s
}

const fn dev(bus: u8, device: u8, function: u8) -> SourceId {
    SourceId {
        bus,
        device,
        function,
    }
}

fn no_bridges(_: u8, _: u8, _: u8) -> Option<RangeInclusive<u8>> {
    None
}

/// The smallest table a platform like QEMU's could give: one unit at
/// 0xfed90000 with INCLUDE_PCI_ALL and an I/O APIC scope (the offsets the
/// tests of lying lengths patch are this table's).
fn qemu() -> Vec<u8> {
    let ioapic = scope(3, 0, 0xff, &[(0, 0)]);
    table(47, 0, &[drhd(1, 0, 0, 0xfed9_0000, &[ioapic])])
}

/// The table QEMU 7.2 really gives (`qemu-run.sh`'s machine, as the guest
/// suite reads it): its unit without INCLUDE_PCI_ALL, naming the I/O APIC
/// and each PCI function of bus 0.
fn qemu_7_2() -> Vec<u8> {
    let mut scopes = vec![scope(3, 0, 0xff, &[(0, 0)])];
    for hop in [(0, 0), (1, 0), (2, 0), (3, 0), (0x1f, 0), (0x1f, 3)] {
        scopes.push(scope(1, 0, 0, &[hop]));
    }
    table(47, 0, &[drhd(0, 0, 0, 0xfed9_0000, &scopes)])
}

#[test]
fn qemus_own_table_names_each_function() {
    let bytes = qemu_7_2();
    let dmar = Dmar::parse(&bytes).unwrap();
    let unit = dmar.units().next().unwrap();
    assert!(!unit.include_pci_all());
    let base = |d| dmar.unit_for(0, d, no_bridges).map(|u| u.register_base);
    assert_eq!(base(dev(0, 3, 0)), Some(0xfed9_0000));
    assert_eq!(base(dev(0, 0x1f, 3)), Some(0xfed9_0000));
    assert_eq!(base(dev(0, 0x1f, 2)), None, "a function it does not name");
    assert_eq!(base(dev(1, 0, 0)), None, "another bus");
}

#[test]
fn qemus_table_gives_one_unit_covering_every_pci_device() {
    let bytes = qemu();
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.host_address_width(), 48);
    assert_eq!(dmar.flags(), DmarFlags::empty());
    let units: Vec<_> = dmar.units().collect();
    assert_eq!(units.len(), 1);
    let unit = &units[0];
    assert!(unit.include_pci_all());
    assert_eq!(unit.segment, 0);
    assert_eq!(unit.register_base, 0xfed9_0000);
    assert_eq!(unit.register_size(), 4096);
    let scopes: Vec<_> = unit.scopes().collect();
    assert_eq!(scopes.len(), 1);
    assert_eq!(scopes[0].kind, ScopeKind::IoApic);
    assert_eq!(scopes[0].enumeration_id, 0);
    assert_eq!(scopes[0].start_bus, 0xff);
    assert_eq!(
        scopes[0].path().collect::<Vec<_>>(),
        [PathHop {
            device: 0,
            function: 0
        }]
    );
    let lsi = dev(0, 3, 0);
    assert_eq!(
        dmar.unit_for(0, lsi, no_bridges).map(|u| u.register_base),
        Some(0xfed9_0000)
    );
    assert!(
        dmar.unit_for(1, lsi, no_bridges).is_none(),
        "no unit for segment 1"
    );
    // The I/O APIC's scope names no PCI function, even at its address.
    assert!(!scopes[0].covers(dev(0xff, 0, 0), &mut no_bridges));
    assert_eq!(dmar.reserved_regions().count(), 0);
    assert_eq!(dmar.bytes(), &bytes[..]);
}

#[test]
fn flags_and_a_longer_slice() {
    let mut bytes = table(38, 0b111, &[]);
    let length = bytes.len();
    bytes.extend([0xaa; 100]); // a whole page mapped, say: ignored
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.bytes().len(), length);
    assert_eq!(dmar.host_address_width(), 39);
    assert_eq!(
        dmar.flags(),
        DmarFlags::INTR_REMAP | DmarFlags::X2APIC_OPT_OUT | DmarFlags::DMA_CTRL_PLATFORM_OPT_IN
    );
    assert_eq!(dmar.structures().count(), 0);
}

/// Two segments; on segment 0 a unit for one endpoint, one for a bridge's
/// hierarchy, one for an endpoint behind a bridge, and the catch-all last.
fn units() -> Vec<u8> {
    table(
        47,
        1,
        &[
            drhd(0, 0, 0, 0xa000, &[scope(1, 0, 0, &[(2, 0)])]),
            drhd(0, 0, 0, 0xb000, &[scope(2, 0, 0, &[(1, 0)])]),
            drhd(0, 0, 0, 0xc000, &[scope(1, 0, 0, &[(0x1c, 0), (0, 1)])]),
            drhd(0, 3, 1, 0xe000, &[]),
            drhd(1, 0, 0, 0xd000, &[scope(3, 8, 0xf0, &[(0x1f, 0)])]),
        ],
    )
}

/// Bridges: 0:1.0 leads to buses 2-4, 0:1c.0 to bus 9.
fn bridges(bus: u8, device: u8, function: u8) -> Option<RangeInclusive<u8>> {
    match (bus, device, function) {
        (0, 1, 0) => Some(2..=4),
        (0, 0x1c, 0) => Some(9..=9),
        _ => None,
    }
}

#[test]
fn a_named_scope_wins_over_include_pci_all() {
    let bytes = units();
    let dmar = Dmar::parse(&bytes).unwrap();
    let base = |d: SourceId| dmar.unit_for(0, d, bridges).map(|u| u.register_base);
    assert_eq!(base(dev(0, 2, 0)), Some(0xa000), "endpoint");
    assert_eq!(
        base(dev(0, 2, 1)),
        Some(0xd000),
        "another function: catch-all"
    );
    assert_eq!(base(dev(0, 1, 0)), Some(0xb000), "the bridge itself");
    assert_eq!(base(dev(3, 7, 2)), Some(0xb000), "below the bridge");
    assert_eq!(base(dev(4, 0, 0)), Some(0xb000), "its subordinate bus");
    assert_eq!(base(dev(5, 0, 0)), Some(0xd000), "past its buses");
    assert_eq!(
        base(dev(9, 0, 1)),
        Some(0xc000),
        "an endpoint two hops down"
    );
    assert_eq!(base(dev(9, 0, 0)), Some(0xd000), "its sibling");
    assert_eq!(
        base(dev(0, 0x1c, 0)),
        Some(0xd000),
        "an endpoint scope's bridge"
    );
    // Without config space, paths through bridges lead nowhere.
    let blind = |d: SourceId| dmar.unit_for(0, d, no_bridges).map(|u| u.register_base);
    assert_eq!(blind(dev(0, 2, 0)), Some(0xa000));
    assert_eq!(blind(dev(0, 1, 0)), Some(0xb000));
    assert_eq!(blind(dev(3, 0, 0)), Some(0xd000));
    assert_eq!(blind(dev(9, 0, 1)), Some(0xd000));
    // Segment 1 has no catch-all and names nothing.
    assert!(dmar.unit_for(1, dev(0, 2, 0), bridges).is_none());
    let seg1 = dmar.units().find(|u| u.segment == 1).unwrap();
    assert_eq!(seg1.register_size(), 8 * 4096);
    let hpet = dmar.units().last().unwrap().scopes().next().unwrap();
    assert_eq!(hpet.kind, ScopeKind::IoApic);
    assert_eq!((hpet.enumeration_id, hpet.start_bus), (8, 0xf0));
}

#[test]
fn reserved_regions_of_a_device() {
    let usb = scope(1, 0, 0, &[(0x1d, 0)]);
    let gfx = scope(1, 0, 0, &[(2, 0)]);
    let bytes = table(
        47,
        0,
        &[
            drhd(1, 0, 0, 0xfed9_0000, &[]),
            rmrr(0, 0xe_0000, 0xe_ffff, std::slice::from_ref(&usb)),
            rmrr(0, 0x8000_0000, 0x8fff_ffff, &[gfx, usb]),
            rmrr(1, 0x1000, 0x1fff, &[scope(1, 0, 0, &[(0x1d, 0)])]),
        ],
    );
    let dmar = Dmar::parse(&bytes).unwrap();
    let regions = |seg, d| {
        dmar.reserved_regions_for(seg, d, no_bridges)
            .map(|r| (r.base, r.limit))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        regions(0, dev(0, 0x1d, 0)),
        [(0xe_0000, 0xe_ffff), (0x8000_0000, 0x8fff_ffff)]
    );
    assert_eq!(regions(0, dev(0, 2, 0)), [(0x8000_0000, 0x8fff_ffff)]);
    assert_eq!(regions(0, dev(0, 3, 0)), []);
    assert_eq!(regions(1, dev(0, 0x1d, 0)), [(0x1000, 0x1fff)]);
    assert_eq!(dmar.reserved_regions().count(), 3);
    assert_eq!(
        dmar.reserved_regions()
            .map(|r| r.segment)
            .collect::<Vec<_>>(),
        [0, 0, 1]
    );
}

#[test]
fn the_other_structures() {
    let mut andd = vec![0, 0, 0, 7];
    andd.extend(b"\\_SB.PCI0.I2C0\0");
    let bytes = table(
        47,
        0,
        &[
            with_segment(2, 1, 0, &[]),
            with_segment(2, 0, 2, &[scope(2, 0, 0, &[(3, 0)])]),
            structure(
                3,
                &[0, 0, 0, 0, 0, 0, 0xd9, 0xfe, 0, 0, 0, 0, 5, 0, 0, 0],
                &[],
            ),
            structure(4, &andd, &[]),
            with_segment(
                5,
                1,
                0,
                &[scope(1, 0, 0, &[(4, 0)]), scope(5, 7, 0, &[(0x15, 0)])],
            ),
            structure(9, &[1, 2, 3], &[]),
            drhd(
                0,
                0,
                0,
                0x1000,
                &[scope(4, 2, 0, &[(0x1f, 7)]), scope(0xee, 1, 2, &[(3, 4)])],
            ),
        ],
    );
    let dmar = Dmar::parse(&bytes).unwrap();
    let all: Vec<_> = dmar.structures().collect();
    assert_eq!(all.len(), 7);
    let Structure::Atsr(all_ports) = &all[0] else {
        panic!("{:?}", all[0])
    };
    assert_eq!((all_ports.flags, all_ports.segment), (1, 0));
    assert_eq!(all_ports.scopes().count(), 0);
    let Structure::Atsr(ports) = &all[1] else {
        panic!("{:?}", all[1])
    };
    assert_eq!((ports.flags, ports.segment), (0, 2));
    let port = ports.scopes().next().unwrap();
    assert_eq!(port.kind, ScopeKind::PciSubHierarchy);
    let Structure::Rhsa(rhsa) = &all[2] else {
        panic!("{:?}", all[2])
    };
    assert_eq!(
        (rhsa.register_base, rhsa.proximity_domain),
        (0xfed9_0000, 5)
    );
    let Structure::Andd(device) = &all[3] else {
        panic!("{:?}", all[3])
    };
    assert_eq!(device.device_number, 7);
    assert_eq!(device.name, b"\\_SB.PCI0.I2C0");
    let Structure::Satc(satc) = &all[4] else {
        panic!("{:?}", all[4])
    };
    assert_eq!((satc.flags, satc.segment), (1, 0));
    let kinds: Vec<_> = satc.scopes().map(|s| (s.kind, s.enumeration_id)).collect();
    assert_eq!(
        kinds,
        [(ScopeKind::PciEndpoint, 0), (ScopeKind::AcpiNamespace, 7)]
    );
    let Structure::Other { kind, body } = all[5] else {
        panic!("{:?}", all[5])
    };
    assert_eq!((kind, body), (9, &[1u8, 2, 3][..]));
    let Structure::Drhd(unit) = &all[6] else {
        panic!("{:?}", all[6])
    };
    let kinds: Vec<_> = unit.scopes().map(|s| s.kind).collect();
    assert_eq!(kinds, [ScopeKind::Hpet, ScopeKind::Other(0xee)]);
    // An HPET or unknown scope names no PCI function, even at its path.
    assert!(dmar.unit_for(0, dev(0, 0x1f, 7), no_bridges).is_none());
}

/// `bytes` with the u16 at `at` replaced and the checksum fixed.
fn patched(mut bytes: Vec<u8>, at: usize, value: &[u8]) -> Vec<u8> {
    bytes[at..at + value.len()].copy_from_slice(value);
    fix_checksum(&mut bytes);
    bytes
}

#[test]
fn bad_headers_are_refused() {
    let good = qemu();
    assert_eq!(
        Dmar::parse(&good[..47]).unwrap_err(),
        DmarError::TooShort { available: 47 }
    );
    let mut apic = good.clone();
    apic[..4].copy_from_slice(b"APIC");
    assert_eq!(
        Dmar::parse(&apic).unwrap_err(),
        DmarError::Signature(*b"APIC")
    );
    let length = good.len();
    assert_eq!(
        Dmar::parse(&good[..length - 1]).unwrap_err(),
        DmarError::Length {
            header: length as u32,
            available: length - 1
        }
    );
    let tiny = patched(good.clone(), 4, &20u32.to_le_bytes());
    assert_eq!(
        Dmar::parse(&tiny).unwrap_err(),
        DmarError::Length {
            header: 20,
            available: length
        }
    );
    let huge = patched(good.clone(), 4, &u32::MAX.to_le_bytes());
    assert!(matches!(
        Dmar::parse(&huge).unwrap_err(),
        DmarError::Length {
            header: u32::MAX,
            ..
        }
    ));
    let mut flipped = good.clone();
    flipped[40] ^= 0x10;
    assert_eq!(
        Dmar::parse(&flipped).unwrap_err(),
        DmarError::Checksum { sum: 0x10 }
    );
}

#[test]
fn lying_structure_lengths_are_refused() {
    // A structure of length 0 would loop forever; 4 is below a DRHD's 16.
    for length in [0u16, 3, 4, 15] {
        let bytes = patched(qemu(), 50, &length.to_le_bytes());
        assert_eq!(
            Dmar::parse(&bytes).unwrap_err(),
            DmarError::StructureTooShort {
                offset: 48,
                kind: 0,
                length
            }
        );
    }
    let bytes = patched(qemu(), 50, &100u16.to_le_bytes());
    assert_eq!(
        Dmar::parse(&bytes).unwrap_err(),
        DmarError::StructurePastEnd {
            offset: 48,
            kind: 0,
            length: 100
        }
    );
    let short_rmrr = table(0, 0, &[structure(1, &[0; 16], &[])]);
    assert_eq!(
        Dmar::parse(&short_rmrr).unwrap_err(),
        DmarError::StructureTooShort {
            offset: 48,
            kind: 1,
            length: 20
        }
    );
    let short_rhsa = table(0, 0, &[structure(3, &[0; 12], &[])]);
    assert!(matches!(
        Dmar::parse(&short_rhsa).unwrap_err(),
        DmarError::StructureTooShort { kind: 3, .. }
    ));
    let trailing = table(0, 0, &[qemu()[48..].to_vec(), vec![0, 0, 0]]);
    assert_eq!(
        Dmar::parse(&trailing).unwrap_err(),
        DmarError::TrailingBytes { offset: 48 + 24 }
    );
    // An unknown type still needs its header, and is then skipped whole.
    let unknown = table(0, 0, &[structure(0x99, &[], &[]), qemu()[48..].to_vec()]);
    assert_eq!(Dmar::parse(&unknown).unwrap().units().count(), 1);
}

#[test]
fn nothing_past_the_declared_length_is_read() {
    // A table whose header stops halfway through its unit, handed over
    // with the rest of the unit's bytes after it (a whole mapped page,
    // say): the unit is refused as running past the end, not completed
    // from the bytes beyond.
    let whole = qemu();
    let mut cut = whole.clone();
    cut[4..8].copy_from_slice(&60u32.to_le_bytes());
    fix_checksum(&mut cut[..60]);
    assert_eq!(
        Dmar::parse(&cut).unwrap_err(),
        DmarError::StructurePastEnd {
            offset: 48,
            kind: 0,
            length: 24
        }
    );
}

#[test]
fn lying_scope_lengths_are_refused() {
    // QEMU's table: the DRHD at 48, its scope at 64 (length byte at 65).
    for (length, error) in [
        (
            0,
            DmarError::ScopeTooShort {
                offset: 64,
                length: 0,
            },
        ),
        (
            6,
            DmarError::ScopeTooShort {
                offset: 64,
                length: 6,
            },
        ),
        (
            9,
            DmarError::OddPath {
                offset: 64,
                length: 9,
            },
        ),
        (
            10,
            DmarError::ScopePastEnd {
                offset: 64,
                length: 10,
            },
        ),
        (
            255,
            DmarError::OddPath {
                offset: 64,
                length: 255,
            },
        ),
    ] {
        let bytes = patched(qemu(), 65, &[length]);
        assert_eq!(Dmar::parse(&bytes).unwrap_err(), error, "length {length}");
    }
    // A stray byte after the last scope: too few for another.
    let stray = {
        let mut unit = drhd(1, 0, 0, 0x1000, &[scope(3, 0, 0, &[(0, 0)])]);
        unit.push(0);
        unit[2] += 1;
        table(0, 0, &[unit])
    };
    assert_eq!(
        Dmar::parse(&stray).unwrap_err(),
        DmarError::ScopeTooShort {
            offset: 48 + 24,
            length: 0
        }
    );
    let rmrr_scope = table(0, 0, &[rmrr(0, 0, 0xfff, &[scope(1, 0, 0, &[])])]);
    assert_eq!(
        Dmar::parse(&rmrr_scope).unwrap_err(),
        DmarError::ScopeTooShort {
            offset: 48 + 24,
            length: 6
        }
    );
}

#[test]
fn bad_regions_are_refused() {
    for (base, limit) in [
        (0x2000, 0x1fff),
        (0x1001, 0x1fff),
        (0x1000, 0x1ffe),
        (0, u64::MAX),
    ] {
        let bytes = table(0, 0, &[rmrr(0, base, limit, &[])]);
        assert_eq!(
            Dmar::parse(&bytes).unwrap_err(),
            DmarError::Region {
                offset: 48,
                base,
                limit
            }
        );
    }
}

/// The first physical address x86_64 cannot have (MAXPHYADDR is at most
/// 52, Intel SDM vol. 3A §4.1.4).
const PHYS_END: u64 = 1 << 52;

#[test]
fn register_bases_that_name_no_register_page_are_refused() {
    // (base, size): zero, inside a page, past physical memory, running
    // past it, wrapping round.
    for (base, size) in [
        (0, 0),
        (0xfed9_0010, 0),
        (0xfed9_0800, 0),
        (PHYS_END, 0),
        (PHYS_END - 0x1000, 1),
        (!0xfff, 0),
        (0xffff_ffff_ffff_0000, 0xf),
    ] {
        let bytes = table(47, 0, &[drhd(1, size, 0, base, &[])]);
        assert_eq!(
            Dmar::parse(&bytes).unwrap_err(),
            DmarError::RegisterBase {
                offset: 48,
                base,
                size
            },
            "{base:#x}, size {size}"
        );
    }
    // The highest page that fits, with its reserved size bits kept.
    let bytes = table(47, 0, &[drhd(1, 0xf0, 0, PHYS_END - 0x1000, &[])]);
    let unit = Dmar::parse(&bytes).unwrap().units().next().unwrap();
    assert_eq!(unit.register_base + unit.register_size(), PHYS_END);
}

#[test]
fn regions_past_physical_memory_are_refused() {
    for (base, limit) in [(PHYS_END, PHYS_END + 0xfff), (0, PHYS_END + 0xfff)] {
        let bytes = table(47, 0, &[rmrr(0, base, limit, &[])]);
        assert_eq!(
            Dmar::parse(&bytes).unwrap_err(),
            DmarError::Region {
                offset: 48,
                base,
                limit
            }
        );
    }
    let bytes = table(47, 0, &[rmrr(0, PHYS_END - 0x1000, PHYS_END - 1, &[])]);
    assert_eq!(Dmar::parse(&bytes).unwrap().reserved_regions().count(), 1);
}

#[test]
fn bridges_that_loop_are_asked_once_per_hop() {
    // Every bridge leads back to the bus it sits on: a path that goes
    // round in circles still has only its own hops.
    let path: Vec<_> = (0..120).map(|i| (i % 32, 0)).collect();
    let bytes = table(
        47,
        0,
        &[
            drhd(
                0,
                0,
                0,
                0xa000,
                &[scope(2, 0, 0, &path), scope(1, 0, 0, &path)],
            ),
            rmrr(0, 0, 0xfff, &[scope(2, 0, 0, &path)]),
        ],
    );
    let dmar = Dmar::parse(&bytes).unwrap();
    let asked = core::cell::Cell::new(0);
    let circle = |bus: u8, _, _| {
        asked.set(asked.get() + 1);
        Some(bus..=bus)
    };
    assert!(dmar.unit_for(0, dev(7, 0, 0), circle).is_none());
    // Each scope: a question per hop after the first, and a sub-hierarchy
    // one more for the buses below its last.
    assert_eq!(asked.get(), 119 + 1 + 119);
    assert_eq!(
        dmar.reserved_regions_for(0, dev(0, 23, 0), circle).count(),
        1
    );
}

#[test]
fn errors_say_what_happened() {
    let e = DmarError::StructureTooShort {
        offset: 48,
        kind: 0,
        length: 0,
    };
    assert_eq!(
        e.to_string(),
        "structure of type 0 at offset 48 claims 0 bytes, below its fixed part"
    );
    assert_eq!(
        DmarError::Checksum { sum: 0x10 }.to_string(),
        "the DMAR table's bytes sum to 0x10, not 0"
    );
    let _: &dyn core::error::Error = &e;
}

/// Runs every public call over `dmar`, with `bridges` for paths: none
/// may panic.
fn exercise(dmar: &Dmar<'_>, bridges: &mut dyn FnMut(u8, u8, u8) -> Option<RangeInclusive<u8>>) {
    let _ = (dmar.host_address_width(), dmar.flags(), dmar.bytes());
    for s in dmar.structures() {
        let scopes = match &s {
            Structure::Drhd(u) => {
                // What a kernel maps as the unit's registers: whole pages
                // of physical address space, never page 0.
                let end = u.register_base.checked_add(u.register_size());
                assert!(u.register_base != 0 && u.register_base % 4096 == 0, "{u:?}");
                assert!(end.is_some_and(|end| end <= PHYS_END), "{u:?}");
                let _ = u.include_pci_all();
                Some(u.scopes())
            }
            Structure::Rmrr(r) => {
                assert!(r.base <= r.limit && r.limit < PHYS_END, "{r:?}");
                assert!(r.base % 4096 == 0 && (r.limit + 1) % 4096 == 0, "{r:?}");
                Some(r.scopes())
            }
            Structure::Atsr(a) => Some(a.scopes()),
            Structure::Satc(c) => Some(c.scopes()),
            Structure::Rhsa(_) | Structure::Andd(_) | Structure::Other { .. } => None,
        };
        for scope in scopes.into_iter().flatten() {
            let hops = scope.path();
            assert_eq!(hops.len(), hops.count());
            let _ = scope.covers(dev(1, 2, 3), &mut &mut *bridges);
        }
    }
    for (bus, device) in [(0, 0), (1, 2), (0xff, 0x1f)] {
        let d = dev(bus, device, 0);
        let _ = dmar.unit_for(0, d, &mut *bridges);
        let _ = dmar.reserved_regions_for(0, d, &mut *bridges).count();
    }
    // Bridges that lead back to their own bus, or to every bus: a lookup
    // asks at most once per hop of each scope (plus once for the buses
    // below a sub-hierarchy), so it ends whatever they answer.
    let budget: usize = dmar
        .structures()
        .flat_map(|s| match s {
            Structure::Drhd(u) => Some(u.scopes()),
            Structure::Rmrr(r) => Some(r.scopes()),
            _ => None,
        })
        .flatten()
        .map(|scope| scope.path().len() + 1)
        .sum();
    let answers: [fn(u8) -> RangeInclusive<u8>; 3] = [
        |bus| bus..=bus,
        |_| 0..=0xff,
        |bus| bus..=bus.wrapping_sub(1),
    ];
    for answer in answers {
        let asked = core::cell::Cell::new(0);
        let looping = |bus: u8, _, _| {
            asked.set(asked.get() + 1);
            Some(answer(bus))
        };
        for segment in [0, 1] {
            let _ = dmar.unit_for(segment, dev(0, 1, 0), looping);
            let _ = dmar
                .reserved_regions_for(segment, dev(0, 1, 0), looping)
                .count();
        }
        assert!(
            asked.get() <= 4 * budget,
            "{} questions, {budget} hops",
            asked.get()
        );
    }
}

/// A device scope of the model: kind, enumeration id, start bus, path.
type ScopeModel = (u8, u8, u8, Vec<(u8, u8)>);

fn scope_model() -> impl Strategy<Value = ScopeModel> + Clone {
    (
        1u8..=5,
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<(u8, u8)>(), 1..5),
    )
}

fn scope_bytes(scopes: &[ScopeModel]) -> Vec<Vec<u8>> {
    scopes
        .iter()
        .map(|(k, e, b, p)| scope(*k, *e, *b, p))
        .collect()
}

/// A DRHD of the model (flags, size, segment, base, scopes) or an RMRR
/// (segment, base page, pages, scopes).
#[derive(Clone, Debug)]
enum Model {
    Drhd(u8, u8, u16, u64, Vec<ScopeModel>),
    Rmrr(u16, u64, u64, Vec<ScopeModel>),
}

fn model() -> impl Strategy<Value = Model> {
    let scopes = prop::collection::vec(scope_model(), 0..4);
    prop_oneof![
        (
            any::<u8>(),
            0u8..=15,
            any::<u16>(),
            (1u64..1 << 24).prop_map(|page| page << 12),
            scopes.clone()
        )
            .prop_map(|(f, s, g, b, sc)| Model::Drhd(f, s, g, b, sc)),
        (any::<u16>(), 0u64..1 << 40, 1u64..1 << 20, scopes)
            .prop_map(|(g, p, n, sc)| Model::Rmrr(g, p, n, sc)),
    ]
}

fn build(models: &[Model]) -> Vec<u8> {
    let structures: Vec<_> = models
        .iter()
        .map(|m| match m {
            Model::Drhd(f, s, g, b, sc) => drhd(*f, *s, *g, *b, &scope_bytes(sc)),
            Model::Rmrr(g, p, n, sc) => rmrr(*g, p << 12, ((p + n) << 12) - 1, &scope_bytes(sc)),
        })
        .collect();
    table(47, 1, &structures)
}

fn arbitrary_bridges(seed: u8) -> impl FnMut(u8, u8, u8) -> Option<RangeInclusive<u8>> {
    move |bus, device, function| {
        let x = bus ^ device ^ function ^ seed;
        (x & 1 == 0).then(|| x..=x.wrapping_add(seed))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 8 } else { 256 }, ..ProptestConfig::default() })]

    /// A table built from a model parses back to the model.
    #[test]
    fn a_valid_table_parses_back(models in prop::collection::vec(model(), 0..6)) {
        let bytes = build(&models);
        let dmar = Dmar::parse(&bytes).unwrap();
        prop_assert_eq!(dmar.host_address_width(), 48);
        prop_assert_eq!(dmar.flags(), DmarFlags::INTR_REMAP);
        let parsed: Vec<_> = dmar.structures().collect();
        prop_assert_eq!(parsed.len(), models.len());
        for (s, m) in parsed.iter().zip(&models) {
            let (scopes, want) = match (s, m) {
                (Structure::Drhd(u), Model::Drhd(f, sz, g, b, sc)) => {
                    prop_assert_eq!((u.flags, u.size, u.segment, u.register_base), (*f, *sz, *g, *b));
                    prop_assert_eq!(u.include_pci_all(), f & 1 != 0);
                    (u.scopes(), sc)
                }
                (Structure::Rmrr(r), Model::Rmrr(g, p, n, sc)) => {
                    prop_assert_eq!((r.segment, r.base, r.limit), (*g, p << 12, ((p + n) << 12) - 1));
                    (r.scopes(), sc)
                }
                _ => return Err(TestCaseError::fail(format!("{s:?} is not {m:?}"))),
            };
            let got: Vec<ScopeModel> = scopes
                .map(|s| {
                    let kind = match s.kind {
                        ScopeKind::PciEndpoint => 1,
                        ScopeKind::PciSubHierarchy => 2,
                        ScopeKind::IoApic => 3,
                        ScopeKind::Hpet => 4,
                        ScopeKind::AcpiNamespace => 5,
                        ScopeKind::Other(k) => k,
                    };
                    let path = s.path().map(|h| (h.device, h.function)).collect();
                    (kind, s.enumeration_id, s.start_bus, path)
                })
                .collect();
            prop_assert_eq!(&got, want);
        }
        // A single-hop endpoint scope names its device.
        for m in &models {
            if let Model::Drhd(_, _, g, b, sc) = m
                && let Some((_, _, bus, path)) = sc.iter().find(|s| s.0 == 1 && s.3.len() == 1)
            {
                let d = dev(*bus, path[0].0, path[0].1);
                let unit = dmar.unit_for(*g, d, no_bridges).unwrap();
                // An earlier unit of the segment may name it first.
                prop_assert!(unit.register_base == *b || unit.scopes().any(|s| s.covers(d, &mut no_bridges)));
            }
        }
        exercise(&dmar, &mut arbitrary_bridges(3));
    }

    /// Random bytes: an error or a table, never a panic.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(dmar) = Dmar::parse(&bytes) {
            exercise(&dmar, &mut arbitrary_bridges(0));
        }
    }

    /// Random structures after a good header (checksum fixed, so they are
    /// what is judged): an error or a table, never a panic.
    #[test]
    fn random_structures_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), seed: u8) {
        let mut bytes = table(47, 0, &[]);
        bytes.extend(&body);
        let length = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
        fix_checksum(&mut bytes);
        if let Ok(dmar) = Dmar::parse(&bytes) {
            exercise(&dmar, &mut arbitrary_bridges(seed));
        }
    }

    /// A valid table with a byte changed (a length lying, most usefully)
    /// and its checksum fixed, or truncated: never a panic, and a
    /// truncated one is refused.
    #[test]
    fn damaged_tables_never_panic(
        models in prop::collection::vec(model(), 1..5),
        at: prop::sample::Index,
        value: u8,
        cut: prop::sample::Index,
        seed: u8,
    ) {
        let good = build(&models);
        let mut bytes = good.clone();
        let i = at.index(bytes.len());
        bytes[i] = value;
        fix_checksum(&mut bytes);
        if let Ok(dmar) = Dmar::parse(&bytes) {
            exercise(&dmar, &mut arbitrary_bridges(seed));
        }
        let short = &good[..cut.index(good.len())];
        prop_assert!(Dmar::parse(short).is_err());
    }

    /// A valid table with up to 8 bytes changed anywhere past the
    /// signature, its checksum fixed or not: never a panic, and whatever
    /// parses is walked whole.
    #[test]
    fn mutated_tables_never_panic(
        models in prop::collection::vec(model(), 1..5),
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        fix in any::<bool>(),
        seed: u8,
    ) {
        let mut bytes = build(&models);
        for (at, value) in changes {
            let i = 4 + at.index(bytes.len() - 4);
            bytes[i] = value;
        }
        if fix {
            fix_checksum(&mut bytes);
        }
        if let Ok(dmar) = Dmar::parse(&bytes) {
            exercise(&dmar, &mut arbitrary_bridges(seed));
        }
    }
}
