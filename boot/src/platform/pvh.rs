//! The PVH start info QEMU passes in `ebx` (Xen's `hvm_start_info`, version
//! 1: the command line at offset 24, the E820-style memory map at 40/48).
//! Both are copied out before the frame allocator can hand out their memory.

/// `hvm_start_info.magic`.
const START_INFO_MAGIC: u32 = 0x336e_c578;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Most memory-map entries kept.
const MAX_REGIONS: usize = 32;
/// Longest command line kept.
const MAX_CMDLINE: usize = 256;

/// One memory-map entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// Physical start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// E820 type (1 = RAM).
    pub kind: u32,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// What the kernel keeps from the start info.
pub struct BootInfo {
    regions: [Region; MAX_REGIONS],
    region_count: usize,
    cmdline: [u8; MAX_CMDLINE],
    /// Physical address of the ACPI RSDP (0 if the loader gave none).
    rsdp: u64,
    cmdline_len: usize,
}

impl BootInfo {
    /// The memory map, as QEMU reported it.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.region_count]
    }

    /// Physical address of the ACPI RSDP, if the loader passed one
    /// (`hvm_start_info.rsdp_paddr`; QEMU's PVH option ROM does).
    pub fn rsdp(&self) -> Option<u64> {
        (self.rsdp != 0).then_some(self.rsdp)
    }

    /// The `-append` command line.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }
}

/// The start info's physical memory as the kernel reaches it: through the
/// direct map the caller passes down, so the boot protocol sits below the
/// memory layer that consumes its map.
struct Reader(fn(u64) -> *mut u8);

impl Reader {
    /// Reads `T` at physical address `pa`.
    fn read<T: Copy>(&self, pa: u64) -> T {
        // SAFETY: callers pass addresses inside the start info structures,
        // which QEMU placed in RAM covered by the boot direct map that `self`
        // maps through; `read_unaligned` makes no alignment assumption.
        unsafe { (self.0)(pa).cast::<T>().read_unaligned() }
    }
}

/// Parses the start info at physical address `start_info`, reading it
/// through `direct_map` (physical to virtual address).
pub fn parse(start_info: u64, direct_map: fn(u64) -> *mut u8) -> Result<BootInfo, &'static str> {
    let phys = Reader(direct_map);
    if phys.read::<u32>(start_info) != START_INFO_MAGIC {
        return Err("no PVH start info (boot with qemu -kernel)");
    }
    let version: u32 = phys.read(start_info + 4);
    let mut info = BootInfo {
        regions: [Region::default(); MAX_REGIONS],
        region_count: 0,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        rsdp: phys.read(start_info + 32),
    };
    let cmdline: u64 = phys.read(start_info + 24);
    if cmdline != 0 {
        while info.cmdline_len < MAX_CMDLINE {
            let byte: u8 = phys.read(cmdline + info.cmdline_len as u64);
            if byte == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = byte;
            info.cmdline_len += 1;
        }
    }
    if version < 1 {
        return Err("PVH start info version 0 has no memory map");
    }
    let map: u64 = phys.read(start_info + 40);
    let entries: u32 = phys.read(start_info + 48);
    for i in 0..(entries as usize).min(MAX_REGIONS) {
        let entry = map + 24 * i as u64;
        info.regions[i] = Region {
            start: phys.read(entry),
            len: phys.read(entry + 8),
            kind: phys.read(entry + 16),
        };
        info.region_count += 1;
    }
    Ok(info)
}
