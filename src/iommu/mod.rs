//! An IOMMU between the engines and memory: an Intel VT-d DMA-remapping
//! unit, with one domain per device (or per group of devices a caller
//! chooses).
//!
//! A domain is an [`AddressSpace`](crate::mm::space::AddressSpace) in VT-d's second-level format
//! ([`SecondLevel`](crate::mm::pte::SecondLevel)): the same walker and the same operations as the CPU's
//! page tables (`insert_pages` maps counted pages for DMA and holds them
//! while mapped, `remap_pfn_range` maps raw frames with 2 MiB and 1 GiB
//! entries, `zap_range` unmaps), with an [`IotlbFlush`] in place of the
//! CPU's TLB flush, so no frame is given back before the IOTLB forgets it.
//! A device attached to a domain reaches only what the domain maps; any
//! other access is dropped (a read returns zeros on QEMU) and recorded, and
//! [`Iommu::take_fault`] reports it.
//!
//! Invalidation goes through the unit's invalidation queue when it has one
//! (ECAP.QI; units of VT-d version 6 and later have no other way, spec
//! 6.5): a one-page ring of descriptors, each batch followed by an
//! invalidation-wait descriptor whose status write the driver polls.
//! Without one, it is register-based (the context command and IOTLB
//! registers). A unit with Caching Mode (CAP.CM) or Required Write-Buffer
//! Flushing (CAP.RWBF) must also hear of new mappings:
//! [`IotlbFlush::mapped`] does what it needs. Faults are polled with
//! [`Iommu::take_fault`] (or per device with [`Iommu::take_fault_of`]),
//! or arrive as an MSI after
//! [`Iommu::enable_fault_interrupts`]. A channel whose device is behind
//! the unit reads its device's faults itself before it reports a request
//! complete once given a [`FaultHook`](crate::engine::FaultHook) of the
//! unit ([`Channel::set_fault_hook`](crate::engine::Channel::set_fault_hook)):
//! a request whose DMA the unit refused then ends in error, never
//! `Complete`.
//!
//! [`dmar`] parses ACPI's DMAR table from its bytes: the units' register
//! bases ([`Dmar::units`]), the unit covering a PCI function
//! ([`Dmar::unit_for`]) and the reserved memory regions a device keeps
//! using ([`Dmar::reserved_regions_for`]), with every length checked.

mod context;
pub mod dma;
#[cfg(test)]
mod dma_failure_tests;
#[cfg(test)]
mod dma_tests;
pub mod dmar;
mod domain;
// Public with the `testing` feature, as `dmaengine::testing::*`.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fake;
mod fault;
#[cfg(test)]
mod platform_tests;
mod queue;
pub mod regs;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use core::cell::RefCell;
use core::fmt;

use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

use crate::mm::traits::{TableAllocator, TableMapper};
use crate::mmio::Registers;

use context::Tables;
use fault::Unclaimed;
use queue::{Invalidation, Publish, Queue, command, invalidate};
use regs::{Cap, Ecap, Gcmd, Gsts};

pub use dmar::{Dmar, DmarError};
pub use domain::{Domain, DomainId, IotlbFlush, domain};
pub use fault::{DmaFault, OWED_DEVICES, UNCLAIMED_FAULTS};

/// Register reads a wait for the hardware makes before giving up.
const WAIT_POLLS: u32 = 1_000_000;

/// A PCI requester: bus, device and function (the "source id").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId {
    /// Bus number.
    pub bus: u8,
    /// Device number (0-31).
    pub device: u8,
    /// Function number (0-7).
    pub function: u8,
}

impl SourceId {
    /// Function `function` of device `device` on bus `bus`.
    pub const fn new(bus: u8, device: u8, function: u8) -> SourceId {
        SourceId {
            bus,
            device,
            function,
        }
    }

    /// The 16-bit requester id: bus in bits 15:8, device 7:3, function 2:0.
    pub const fn raw(self) -> u16 {
        (self.bus as u16) << 8 | ((self.device as u16 & 0x1f) << 3) | (self.function as u16 & 7)
    }

    /// The requester with id `raw`.
    pub const fn from_raw(raw: u16) -> SourceId {
        SourceId {
            bus: (raw >> 8) as u8,
            device: ((raw >> 3) & 0x1f) as u8,
            function: (raw & 7) as u8,
        }
    }

    fn devfn(self) -> usize {
        (self.raw() & 0xff) as usize
    }
}

/// What a unit lacks that [`Iommu::new`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Missing {
    /// CAP.SAGAW bit 2 (spec 11.4.2): 48-bit, 4-level second-level tables,
    /// the only layout the driver builds. QEMU's `intel-iommu` reports it
    /// only with `aw-bits=48`; its default on QEMU 7.2, 39 bits, gives
    /// 3-level tables alone.
    FourLevelTables,
    /// ECAP.QI (spec 11.4.3) on a unit of VT-d version 6 or later (VER bits
    /// 7:4): such a unit has no register-based invalidation (spec 6.5), so
    /// without the queue nothing could be invalidated.
    QueuedInvalidation,
    /// IOTLB registers (ECAP.IRO) or fault recording registers (CAP.FRO,
    /// NFR) inside the unit's first 4 KiB ([`regs::MMIO_SIZE`], the window
    /// the driver is given; spec 11.4.2, 11.4.3): a unit with a larger
    /// register set (DMAR Size above 0) that puts them further is not
    /// driven.
    OnePageRegisters,
}

/// Errors of the IOMMU driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IommuError {
    /// The unit lacks a capability the driver needs (which one: the
    /// field).
    Unsupported(Missing),
    /// No frame for a root or context table.
    OutOfMemory,
    /// The unit did not finish a command in time.
    TimedOut,
    /// The device is already attached to a domain (detach it first).
    Attached,
    /// Another device is attached under the same domain id with other
    /// tables: the unit caches translations by id, so each could reach
    /// the other's pages.
    DomainIdInUse,
    /// An IOVA window that is not page-aligned, or ends past 2^47 (the top
    /// of what a domain maps, as a process's lower half) or past the
    /// unit's guest address width ([`Iommu::address_width`]).
    BadWindow,
    /// A domain id past the unit's number of domains (CAP.ND).
    BadDomainId,
    /// No device is attached to the space.
    NotAttached,
    /// No unit is installed under the space yet
    /// ([`StaticUnit::install`](dma::StaticUnit::install)).
    NoUnit,
    /// The unit refused an invalidation descriptor (FSTS.IQE).
    QueueError,
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IommuError::Unsupported(Missing::FourLevelTables) => {
                "the unit has no 4-level (48-bit) second-level tables, CAP.SAGAW bit 2 \
                 (QEMU: -device intel-iommu,aw-bits=48)"
            }
            IommuError::Unsupported(Missing::QueuedInvalidation) => {
                "the unit is VT-d version 6 or later without an invalidation queue, ECAP.QI"
            }
            IommuError::Unsupported(Missing::OnePageRegisters) => {
                "the unit's IOTLB or fault recording registers lie past its first 4 KiB"
            }
            IommuError::OutOfMemory => "no frame for an IOMMU table",
            IommuError::TimedOut => "the IOMMU did not finish a command in time",
            IommuError::Attached => "the device is already attached to a domain",
            IommuError::DomainIdInUse => "the domain id is in use with other tables",
            IommuError::BadWindow => {
                "the IOVA window is misaligned or ends past what the domain or unit translates"
            }
            IommuError::BadDomainId => "the domain id is past the unit's number of domains",
            IommuError::NotAttached => "no device is attached",
            IommuError::NoUnit => "no IOMMU unit is installed",
            IommuError::QueueError => "the IOMMU refused an invalidation descriptor",
        })
    }
}

impl core::error::Error for IommuError {}

/// One VT-d DMA-remapping unit.
pub struct Iommu<R: Registers, M: TableMapper, A: TableAllocator> {
    regs: R,
    mapper: M,
    root: u64,
    iotlb: usize,
    frcd: usize,
    nfr: usize,
    psi: bool,
    publish: Publish,
    /// Domain ids the unit takes: 2^(4 + 2 * CAP.ND).
    domains: u32,
    /// Bits of the IOVAs the unit translates (CAP.MGAW + 1).
    address_width: u32,
    tables: RefCell<Tables<A>>,
    /// The invalidation queue, when the unit has one.
    queue: RefCell<Option<Queue>>,
    unclaimed: RefCell<Unclaimed>,
}

impl<R: Registers, M: TableMapper, A: TableAllocator> Iommu<R, M, A> {
    /// Takes over the unit behind `regs` (its register window,
    /// [`regs::MMIO_SIZE`] bytes at the base address its ACPI DMAR table
    /// gives): turns translation off if it was on, and installs an empty
    /// root table (every device then faults once translation is on, until
    /// attached to a domain). Tables come from `alloc` and are reached
    /// through `mapper`; an allocator that cannot free
    /// ([`NoFree`](crate::mm::traits::NoFree)) keeps them all, its own
    /// and the unit's, when the `Iommu` is dropped (a few frames, once).
    /// If the unit has an invalidation queue (ECAP.QI),
    /// it is set up (two more frames: the ring and its status word) and
    /// used for every invalidation from then on.
    ///
    /// A unit without 4-level second-level tables, one of VT-d version 6
    /// or later without the queue, or one whose IOTLB or fault recording
    /// registers lie past the window's 4 KiB, is refused before anything is
    /// allocated or written: [`IommuError::Unsupported`] says which
    /// ([`Missing`]). On QEMU the unit is `-machine q35 -device
    /// intel-iommu,aw-bits=48` (add `intremap=off` unless the kernel
    /// remaps interrupts); QEMU 7.2's default `aw-bits=39` gives only
    /// 3-level tables, so plain `-device intel-iommu` is refused with
    /// `Unsupported(Missing::FourLevelTables)`. The register base comes
    /// from ACPI's DMAR table ([`dmar::Dmar::units`]).
    ///
    /// # Safety
    /// `regs` must be this unit's register window and nothing else may
    /// program the unit; queued invalidation must be off (it is at reset).
    /// While translation is off (until [`Iommu::enable`]), devices reach
    /// physical memory directly, as without an IOMMU.
    ///
    /// Dropping the `Iommu` turns translation off, as [`Iommu::disable`]
    /// does: the caller vouches that when it is dropped, `disable`'s
    /// contract holds (no device behind the unit still has DMA in flight
    /// to an IOVA). If the unit does not turn translation off, the drop
    /// leaks its tables rather than free what the unit may still walk.
    pub unsafe fn new(regs: R, mapper: M, mut alloc: A) -> Result<Self, IommuError> {
        let cap = regs.read64(regs::CAP);
        let ecap = regs.read64(regs::ECAP);
        let (caps, ecaps) = (Cap::from_bits_retain(cap), Ecap::from_bits_retain(ecap));
        if !caps.contains(Cap::SAGAW_4LEVEL) {
            return Err(IommuError::Unsupported(Missing::FourLevelTables));
        }
        if !ecaps.contains(Ecap::QI) && regs::ver_major(regs.read32(regs::VER)) >= 6 {
            return Err(IommuError::Unsupported(Missing::QueuedInvalidation));
        }
        // The IOTLB registers span 16 bytes from IRO, each fault record 16
        // bytes from FRO: all must lie in the window the caller mapped.
        let (iotlb, frcd, nfr) = (regs::ecap_iro(ecap), regs::cap_fro(cap), regs::cap_nfr(cap));
        if iotlb + 16 > regs::MMIO_SIZE || frcd + 16 * nfr > regs::MMIO_SIZE {
            return Err(IommuError::Unsupported(Missing::OnePageRegisters));
        }
        let root = alloc
            .allocate_table()
            .ok_or(IommuError::OutOfMemory)?
            .start_address()
            .as_u64();
        let iommu = Iommu {
            regs,
            mapper,
            root,
            iotlb,
            frcd,
            nfr,
            psi: caps.contains(Cap::PSI),
            publish: Publish {
                caching_mode: caps.contains(Cap::CM),
                write_buffer: caps.contains(Cap::RWBF),
            },
            domains: regs::cap_domains(cap),
            address_width: regs::cap_mgaw(cap),
            tables: RefCell::new(Tables {
                alloc,
                context: [0; 256],
            }),
            queue: RefCell::new(None),
            unclaimed: RefCell::new(Unclaimed::new()),
        };
        iommu.zero(root);
        iommu.command(Gcmd::empty(), Gsts::TES);
        iommu.clear_faults();
        iommu.regs.write64(regs::RTADDR, root);
        iommu.command(Gcmd::SRTP, Gsts::empty());
        iommu.wait_status(Gsts::RTPS)?;
        if ecaps.contains(Ecap::QI) {
            iommu.start_queue()?;
        }
        iommu.invalidate(Invalidation::Context)?;
        iommu.invalidate(Invalidation::Global)?;
        Ok(iommu)
    }

    /// Sets up the invalidation queue and turns it on (the unit's queue
    /// head is 0 while it is off, so the tail starts at 0 too).
    fn start_queue(&self) -> Result<(), IommuError> {
        let frames = {
            let mut tables = self.tables.borrow_mut();
            let ring = tables.alloc.allocate_table();
            let status = tables.alloc.allocate_table();
            match (ring, status) {
                (Some(ring), Some(status)) => (ring, status),
                (ring, status) => {
                    for frame in [ring, status].into_iter().flatten() {
                        // SAFETY: just allocated, never handed to the unit.
                        unsafe { tables.alloc.take_back(frame) };
                    }
                    return Err(IommuError::OutOfMemory);
                }
            }
        };
        let (ring, status) = (
            frames.0.start_address().as_u64(),
            frames.1.start_address().as_u64(),
        );
        self.zero(ring);
        self.zero(status);
        *self.queue.borrow_mut() = Some(Queue {
            ring,
            ring_ptr: self.mapper.frame_ptr(frames.0).cast(),
            status,
            status_ptr: self.mapper.frame_ptr(frames.1).cast(),
            tail: 0,
            seq: 0,
        });
        self.regs.write64(regs::IQT, 0);
        self.regs.write64(regs::IQA, ring);
        self.command(Gcmd::QIE, Gsts::empty());
        self.wait_status(Gsts::QIES)
    }

    /// Bits of the IOVAs the unit translates (CAP.MGAW + 1): it refuses a
    /// device's DMA to an address at or above 2^width, whatever a domain
    /// maps there. [`IovaSpace::attach`](dma::IovaSpace::attach) refuses a
    /// window past it; a caller of [`domain`] maps below it.
    pub fn address_width(&self) -> u32 {
        self.address_width
    }

    /// Whether invalidations go through the queue.
    pub fn queued_invalidation(&self) -> bool {
        self.queue.borrow().is_some()
    }

    fn invalidate(&self, request: Invalidation) -> Result<(), IommuError> {
        invalidate(&self.regs, self.iotlb, &self.queue, request)
    }

    /// Turns translation on: from now on every device reaches only what its
    /// domain maps.
    pub fn enable(&self) -> Result<(), IommuError> {
        self.command(Gcmd::TE, Gsts::empty());
        self.wait_status(Gsts::TES)
    }

    /// Turns translation off: devices reach physical memory directly.
    ///
    /// `unsafe` since issue 17 (it was safe): every address a device was
    /// given as an IOVA becomes a physical address, so a request in
    /// flight (an owned-buffer one too) would write whatever RAM sits at
    /// its IOVA.
    ///
    /// On `TimedOut` translation may still be on: the tables stay in use.
    ///
    /// # Safety
    /// No device behind this unit may have DMA in flight, or be started,
    /// while translation is off, unless every address it was given is
    /// valid for that access as a physical address: stop (terminate and
    /// see stopped) every channel of a device attached to a domain first,
    /// or keep its domain an identity map of memory the requests own.
    ///
    /// ```compile_fail,E0133
    /// # use dmaengine::iommu::Iommu;
    /// # use dmaengine::mm::traits::{TableAllocator, TableMapper};
    /// # use dmaengine::mmio::Registers;
    /// fn off<R: Registers, M: TableMapper, A: TableAllocator>(unit: &Iommu<R, M, A>) {
    ///     let _ = unit.disable(); // safe code can no longer turn it off
    /// }
    /// ```
    pub unsafe fn disable(&self) -> Result<(), IommuError> {
        self.command(Gcmd::empty(), Gsts::TES);
        for _ in 0..WAIT_POLLS {
            if !self.status().contains(Gsts::TES) {
                return Ok(());
            }
        }
        Err(IommuError::TimedOut)
    }

    /// Whether translation is on.
    pub fn is_enabled(&self) -> bool {
        self.status().contains(Gsts::TES)
    }

    /// The flusher a domain with id `domain` uses: page-selective (or
    /// domain-selective) IOTLB invalidation on this unit.
    pub fn flusher(&self, domain: DomainId) -> IotlbFlush<'_, R> {
        IotlbFlush {
            regs: &self.regs,
            iotlb: self.iotlb,
            domain,
            psi: self.psi,
            publish: self.publish,
            queue: &self.queue,
        }
    }

    /// Whether the unit reports Caching Mode (CAP.CM, spec 6.1): it may
    /// cache entries it found not present, so each new mapping needs
    /// [`IotlbFlush::mapped`] before a device uses it. Domain id 0, which
    /// such a unit reserves, is never used ([`DomainId::new`] refuses it).
    pub fn caching_mode(&self) -> bool {
        self.publish.caching_mode
    }

    fn command(&self, set: Gcmd, clear: Gsts) {
        command(&self.regs, set, clear);
    }

    /// GSTS.
    fn status(&self) -> Gsts {
        Gsts::from_bits_retain(self.regs.read32(regs::GSTS))
    }

    fn wait_status(&self, bit: Gsts) -> Result<(), IommuError> {
        for _ in 0..WAIT_POLLS {
            if self.status().contains(bit) {
                return Ok(());
            }
        }
        Err(IommuError::TimedOut)
    }
}

impl<R: Registers, M: TableMapper, A: TableAllocator> Drop for Iommu<R, M, A> {
    fn drop(&mut self) {
        // Translation off first: then no device walks the tables we free.
        // A unit that will not turn it off may still walk the root and
        // context tables and write the queue's status word: all leaked,
        // never reused.
        // SAFETY: `new`'s contract: when the unit is dropped, no device
        // behind it has DMA in flight to an IOVA.
        if unsafe { self.disable() }.is_err() {
            return;
        }
        // The queue off next (the unit then reads neither page), and its
        // pages back.
        if let Some(queue) = self.queue.get_mut().take() {
            self.command(Gcmd::empty(), Gsts::QIES);
            let stopped = (0..WAIT_POLLS).any(|_| !self.status().contains(Gsts::QIES));
            let tables = self.tables.get_mut();
            // A queue that would not stop keeps its pages: leaked, never
            // reused while the unit may still write the status word.
            if stopped {
                for page in [queue.ring, queue.status] {
                    let frame = PhysFrame::containing_address(PhysAddr::new_truncate(page));
                    // SAFETY: the queue's frames from this allocator; the
                    // queue is off, so the unit no longer reads or writes
                    // them.
                    unsafe { tables.alloc.take_back(frame) };
                }
            }
        }
        let tables = self.tables.get_mut();
        for table in tables.context.iter_mut().filter(|t| **t != 0) {
            let frame = PhysFrame::containing_address(PhysAddr::new_truncate(*table));
            // SAFETY: a context table from this allocator; translation is
            // off, so the unit no longer reads it.
            unsafe { tables.alloc.take_back(frame) };
            *table = 0;
        }
        let root = PhysFrame::containing_address(PhysAddr::new_truncate(self.root));
        // SAFETY: as above, for the root table.
        unsafe { tables.alloc.take_back(root) };
    }
}
