//! PCI configuration through the legacy mechanism #1 ports (0xCF8 address,
//! 0xCFC data), enumeration of bus 0 with `pci_types`, and enabling a device.

use alloc::vec::Vec;
use core::fmt;

use pci_types::capability::{MsiCapability, MultipleMessageSupport, PciCapability};
use pci_types::{
    Bar, CommandRegister, ConfigRegionAccess, EndpointHeader, HeaderType, PciAddress, PciHeader,
};
use spin::Mutex;
use x86_64::instructions::port::Port;

/// CONFIG_ADDRESS: enable bit 31, bus 23-16, device 15-11, function 10-8,
/// register 7-2 (PCI Local Bus spec 3.0, 3.2.2.3.2).
const CONFIG_ADDRESS: u16 = 0xcf8;
/// CONFIG_DATA: the selected dword.
const CONFIG_DATA: u16 = 0xcfc;

static PORTS: Mutex<()> = Mutex::new(());

/// Config space access through ports 0xCF8/0xCFC.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortAccess;

fn config_address(address: PciAddress, offset: u16) -> u32 {
    0x8000_0000
        | (address.bus() as u32) << 16
        | (address.device() as u32) << 11
        | (address.function() as u32) << 8
        | (offset as u32 & 0xfc)
}

impl ConfigRegionAccess for PortAccess {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        let _guard = PORTS.lock();
        // SAFETY: mechanism #1 ports; the lock keeps the address/data pair
        // atomic with respect to other config accesses.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(config_address(address, offset));
            Port::<u32>::new(CONFIG_DATA).read()
        }
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        let _guard = PORTS.lock();
        // SAFETY: as for `read`; the caller vouches for the register written.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(config_address(address, offset));
            Port::<u32>::new(CONFIG_DATA).write(value);
        }
    }
}

/// One function found on bus 0.
#[derive(Clone, Debug)]
pub struct Device {
    /// Its address (segment 0, bus 0).
    pub address: PciAddress,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Base class, subclass and programming interface.
    pub class: (u8, u8, u8),
    /// Its BARs by slot (a 64-bit BAR fills its slot; the next is `None`).
    pub bars: [Option<Bar>; 6],
    /// The ISA IRQ line firmware routed INTx to (config 0x3C), 0xff if none.
    pub irq_line: u8,
    /// INTx pin (1 = INTA#), 0 if it uses none.
    pub irq_pin: u8,
}

impl Device {
    /// The memory BAR in `slot` as (physical address, size).
    pub fn mem_bar(&self, slot: usize) -> Option<(u64, u64)> {
        match self.bars.get(slot).copied().flatten()? {
            Bar::Memory32 { address, size, .. } => Some((address.into(), size.into())),
            Bar::Memory64 { address, size, .. } => Some((address, size)),
            Bar::Io { .. } => None,
        }
    }

    /// The first port of the I/O BAR in `slot`.
    pub fn io_bar(&self, slot: usize) -> Option<u16> {
        match self.bars.get(slot).copied().flatten()? {
            Bar::Io { port } => u16::try_from(port).ok(),
            _ => None,
        }
    }

    /// Enables memory decoding, I/O decoding and bus mastering as asked.
    pub fn enable(&self, memory: bool, io: bool, bus_master: bool) {
        let mut header = PciHeader::new(self.address);
        header.update_command(PortAccess, |mut cmd| {
            cmd.set(CommandRegister::MEMORY_ENABLE, memory);
            cmd.set(CommandRegister::IO_ENABLE, io);
            cmd.set(CommandRegister::BUS_MASTER_ENABLE, bus_master);
            cmd
        });
    }

    /// The command register.
    pub fn command(&self) -> CommandRegister {
        PciHeader::new(self.address).command(PortAccess)
    }

    /// The device's MSI capability, if its capability list has one.
    fn msi(&self) -> Option<MsiCapability> {
        let header = EndpointHeader::from_header(PciHeader::new(self.address), PortAccess)?;
        header.capabilities(PortAccess).find_map(|cap| match cap {
            PciCapability::Msi(msi) => Some(msi),
            _ => None,
        })
    }

    /// Points the device's MSI capability at `address` with `data` (one
    /// message) and turns MSI on, which turns its INTx off (PCI Local Bus
    /// 3.0 §6.8.1). `false` if the device has no MSI capability.
    pub fn enable_msi(&self, address: u64, data: u16) -> bool {
        let Some(msi) = self.msi() else {
            return false;
        };
        if address >> 32 != 0 && !msi.is_64bit() {
            return false;
        }
        msi.set_enabled(false, PortAccess);
        msi.set_multiple_message_enable(MultipleMessageSupport::Int1, PortAccess);
        msi.set_message_info(address, data as u32, PortAccess);
        msi.set_enabled(true, PortAccess);
        true
    }

    /// Turns MSI off: the device interrupts on its INTx pin again.
    pub fn disable_msi(&self) {
        if let Some(msi) = self.msi() {
            msi.set_enabled(false, PortAccess);
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00:{:02x}.{} {:04x}:{:04x} class {:02x}{:02x}{:02x}",
            self.address.device(),
            self.address.function(),
            self.vendor,
            self.device,
            self.class.0,
            self.class.1,
            self.class.2
        )?;
        if self.irq_pin != 0 {
            write!(f, " irq {}", self.irq_line)?;
        }
        for (slot, bar) in self.bars.iter().enumerate() {
            match bar {
                Some(Bar::Io { port }) => write!(f, " bar{slot}=io:{port:#x}")?,
                Some(Bar::Memory32 { address, size, .. }) => {
                    write!(f, " bar{slot}=mem32:{address:#x}+{size:#x}")?
                }
                Some(Bar::Memory64 { address, size, .. }) => {
                    write!(f, " bar{slot}=mem64:{address:#x}+{size:#x}")?
                }
                None => {}
            }
        }
        Ok(())
    }
}

fn probe(address: PciAddress) -> Option<Device> {
    let header = PciHeader::new(address);
    let (vendor, device) = header.id(PortAccess);
    if vendor == 0xffff {
        return None;
    }
    let (_, class, subclass, prog_if) = header.revision_and_class(PortAccess);
    let mut found = Device {
        address,
        vendor,
        device,
        class: (class, subclass, prog_if),
        bars: [None; 6],
        irq_line: 0xff,
        irq_pin: 0,
    };
    if header.header_type(PortAccess) == HeaderType::Endpoint {
        let endpoint = EndpointHeader::from_header(header, PortAccess)?;
        // Sizing a BAR writes all-ones to it; turn decoding off meanwhile so
        // the device never answers at a bogus address (PCI spec 6.2.5.1).
        let command = endpoint.command(PortAccess);
        let mut header = PciHeader::new(address);
        header.update_command(PortAccess, |c| {
            c - CommandRegister::MEMORY_ENABLE - CommandRegister::IO_ENABLE
        });
        let mut slot = 0;
        while slot < 6 {
            let bar = endpoint.bar(slot, PortAccess);
            found.bars[slot as usize] = bar;
            slot += if matches!(bar, Some(Bar::Memory64 { .. })) {
                2
            } else {
                1
            };
        }
        header.update_command(PortAccess, |_| command);
        let (pin, line) = endpoint.interrupt(PortAccess);
        found.irq_pin = pin;
        found.irq_line = line;
    }
    Some(found)
}

/// Enumerates every function on bus 0.
pub fn enumerate() -> Vec<Device> {
    let mut devices = Vec::new();
    for slot in 0..32 {
        let Some(device) = probe(PciAddress::new(0, 0, slot, 0)) else {
            continue;
        };
        let multi = PciHeader::new(device.address).has_multiple_functions(PortAccess);
        devices.push(device);
        if multi {
            devices.extend((1..8).filter_map(|f| probe(PciAddress::new(0, 0, slot, f))));
        }
    }
    devices
}

/// Finds the first function with this vendor and device ID.
pub fn find(devices: &[Device], vendor: u16, device: u16) -> Option<&Device> {
    devices
        .iter()
        .find(|d| d.vendor == vendor && d.device == device)
}
