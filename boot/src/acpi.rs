//! Just enough ACPI to find the DMA-remapping units: the RSDP the PVH
//! start info points at, the RSDT or XSDT, and the DMAR table's DRHD
//! structures (their register base addresses). Source: ACPI 6.5 §5.2.5
//! (RSDP), §5.2.6 (header), §5.2.7-8 (RSDT/XSDT); VT-d spec §8.1 (DMAR) and
//! §8.3 (DRHD).

use alloc::vec::Vec;

use crate::mem::phys_to_virt;

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

/// The register base address of every DMA-remapping unit (DRHD) the DMAR
/// table lists, or none without a DMAR table.
pub fn dmar_units(rsdp: u64) -> Vec<u64> {
    let Some(dmar) = tables(rsdp)
        .into_iter()
        .find(|&t| read::<[u8; 4]>(t) == *b"DMAR")
    else {
        return Vec::new();
    };
    let length = read::<u32>(dmar + 4) as u64;
    let mut units = Vec::new();
    // Remapping structures start after the 36-byte header, the host
    // address width, the flags and 10 reserved bytes.
    let mut at = dmar + 48;
    while at + 4 <= dmar + length {
        let kind: u16 = read(at);
        let size = read::<u16>(at + 2) as u64;
        if size < 4 {
            break;
        }
        if kind == 0 {
            units.push(read::<u64>(at + 8));
        }
        at += size;
    }
    units
}
