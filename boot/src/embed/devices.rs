//! Reaching the emulated devices: PCI lookup and MMIO windows over BARs.

use dmaengine::mmio::{MmioRegion, PortRegion};

use crate::mem::device_window;
use crate::pci;

/// The PCI functions the kernel found, handed over at boot ([`init`]).
static DEVICES: spin::Once<&'static [pci::Device]> = spin::Once::new();

/// Hands the embedding the PCI functions the kernel enumerated (once, at
/// boot): [`find`] looks there.
pub fn init(devices: &'static [pci::Device]) {
    DEVICES.call_once(|| devices);
}

/// Finds a device by ID and enables memory decoding and bus mastering.
pub fn find(vendor: u16, device: u16) -> Option<&'static pci::Device> {
    find_nth(vendor, device, 0)
}

/// As [`find`], for the `n`th such function on the bus (0 is the first).
pub fn find_nth(vendor: u16, device: u16, n: usize) -> Option<&'static pci::Device> {
    let dev = DEVICES
        .get()?
        .iter()
        .filter(|d| d.vendor == vendor && d.device == device)
        .nth(n)?;
    dev.enable(true, true, true);
    Some(dev)
}

/// A window over the `len` ports of I/O BAR `slot` of `dev` (I/O BARs do
/// not say their size here: the driver knows it).
pub fn map_io_bar(dev: &pci::Device, slot: usize, len: u16) -> Option<PortRegion> {
    let base = dev.io_bar(slot).filter(|&port| port != 0)?;
    base.checked_add(len)?;
    // SAFETY: the BAR is the device's own ports (firmware assigned them and
    // I/O decoding is on, see `init`); its one driver gets the window.
    Some(unsafe { PortRegion::new(base, len) })
}

/// An MMIO window over memory BAR `slot` of `dev`.
///
/// The direct map covers the PCI hole below 4 GiB uncached (see
/// `mem::paging`), so a BAR there needs no new mapping; a BAR anywhere
/// else (above 4 GiB, or sharing a 2 MiB page with RAM) gets no window.
pub fn map_bar(dev: &pci::Device, slot: usize) -> Option<MmioRegion> {
    let (pa, len) = dev.mem_bar(slot)?;
    let base = device_window(pa, len)?;
    // SAFETY: the BAR is assigned device memory (firmware programmed it and
    // memory decoding is on), mapped uncached by the direct map for the
    // kernel's life (`device_window`), and the kernel never makes
    // references into it.
    Some(unsafe { MmioRegion::new(base, len as usize) })
}
