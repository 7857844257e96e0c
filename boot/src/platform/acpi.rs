//! Just enough ACPI to find the DMA-remapping units and the processors:
//! the RSDP the PVH start info points at, the RSDT or XSDT, the DMAR
//! table's bytes (the library's `iommu::dmar` parses them) and the MADT's
//! local APICs, I/O APICs and interrupt source overrides. Source: ACPI 6.5 §5.2.5
//! (RSDP), §5.2.6 (header), §5.2.7-8 (RSDT/XSDT).

use alloc::vec::Vec;

use crate::mem::{DIRECT_MAP_SIZE, phys_to_virt};

fn read<T: Copy>(pa: u64) -> T {
    // SAFETY: ACPI tables lie in RAM or firmware memory the direct map
    // covers (below 4 GiB); `read_unaligned` assumes no alignment.
    unsafe { phys_to_virt(pa).cast::<T>().read_unaligned() }
}

/// The physical addresses of every table the RSDP's RSDT (or XSDT) lists.
fn tables(rsdp: u64) -> Vec<u64> {
    if read::<[u8; 8]>(rsdp) != *b"RSD PTR " {
        return Vec::new();
    }
    let revision: u8 = read(rsdp + 15);
    let (root, entry_size) = if revision >= 2 && read::<u64>(rsdp + 24) != 0 {
        (read::<u64>(rsdp + 24), 8)
    } else {
        (read::<u32>(rsdp + 16) as u64, 4)
    };
    let length: u32 = read(root + 4);
    let count = (length as u64).saturating_sub(36) / entry_size;
    (0..count)
        .map(|i| {
            let at = root + 36 + i * entry_size;
            if entry_size == 8 {
                read::<u64>(at)
            } else {
                read::<u32>(at) as u64
            }
        })
        .collect()
}

/// The DMAR table's bytes (its header's length of them), for
/// `dmaengine::iommu::dmar::Dmar::parse` to check and read, or `None`
/// without a DMAR table.
pub fn dmar(rsdp: u64) -> Option<&'static [u8]> {
    let dmar = tables(rsdp)
        .into_iter()
        .find(|&t| read::<[u8; 4]>(t) == *b"DMAR")?;
    let length: u32 = read(dmar + 4);
    // A length that would run the slice past the direct map is a lie the
    // parser could not catch: it trusts the slice.
    if dmar.saturating_add(length as u64) > DIRECT_MAP_SIZE {
        return None;
    }
    // SAFETY: the firmware's table, all of it within the direct map
    // (checked above), which maps every physical address below 4 GiB;
    // nothing writes ACPI tables after boot.
    Some(unsafe { core::slice::from_raw_parts(phys_to_virt(dmar), length as usize) })
}

/// What the MADT says about the processors and interrupt controllers
/// (ACPI 6.5 §5.2.12).
pub struct Madt {
    /// The local APICs' register base (the table's field, or a type 5
    /// override).
    pub lapic_base: u64,
    /// The APIC IDs of the enabled processors (type 0 entries, flags bit 0).
    pub apic_ids: Vec<u8>,
    /// The I/O APICs (type 1 entries, §5.2.12.3).
    pub io_apics: Vec<IoApicEntry>,
    /// ISA interrupts wired to another GSI or with another trigger or
    /// polarity than ISA's edge, active high (type 2 entries, §5.2.12.5).
    pub overrides: Vec<SourceOverride>,
}

/// An I/O APIC the MADT lists.
#[derive(Clone, Copy, Debug)]
pub struct IoApicEntry {
    /// Its registers' physical address.
    pub address: u64,
    /// The first global system interrupt (GSI) its pins carry.
    pub gsi_base: u32,
}

/// An interrupt source override: ISA IRQ `source` arrives on `gsi`.
#[derive(Clone, Copy, Debug)]
pub struct SourceOverride {
    /// The ISA IRQ.
    pub source: u8,
    /// The global system interrupt it is wired to.
    pub gsi: u32,
    /// MPS INTI flags: polarity in bits 1-0 (00 as the bus, 01 high,
    /// 11 low), trigger mode in bits 3-2 (00 as the bus, 01 edge, 11 level)
    /// (ACPI 6.5 Table 5.50).
    pub flags: u16,
}

/// The MADT's processors, if the firmware gave one.
pub fn madt(rsdp: u64) -> Option<Madt> {
    let madt = tables(rsdp)
        .into_iter()
        .find(|&t| read::<[u8; 4]>(t) == *b"APIC")?;
    let length = read::<u32>(madt + 4) as u64;
    let mut out = Madt {
        lapic_base: read::<u32>(madt + 36) as u64,
        apic_ids: Vec::new(),
        io_apics: Vec::new(),
        overrides: Vec::new(),
    };
    // Interrupt controller structures start after the header, the local
    // APIC address and the flags.
    let mut at = madt + 44;
    while at + 2 <= madt + length {
        let (kind, size) = (read::<u8>(at), read::<u8>(at + 1) as u64);
        if size < 2 {
            break;
        }
        match kind {
            0 if read::<u32>(at + 4) & 1 != 0 => out.apic_ids.push(read(at + 3)),
            1 => out.io_apics.push(IoApicEntry {
                address: read::<u32>(at + 4) as u64,
                gsi_base: read(at + 8),
            }),
            2 => out.overrides.push(SourceOverride {
                source: read(at + 3),
                gsi: read(at + 4),
                flags: read(at + 8),
            }),
            5 => out.lapic_base = read(at + 4),
            _ => {}
        }
        at += size;
    }
    Some(out)
}
