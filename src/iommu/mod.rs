//! An IOMMU between the engines and memory: an Intel VT-d DMA-remapping
//! unit, with one domain per device (or per group of devices a caller
//! chooses).
//!
//! A domain is an [`AddressSpace`] in VT-d's second-level format
//! ([`SecondLevel`]): the same walker and the same operations as the CPU's
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

pub mod dma;
#[cfg(test)]
mod dma_failure_tests;
#[cfg(test)]
mod dma_tests;
pub mod dmar;
// Public with the `testing` feature, as `dmaengine::testing::*`.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fake;
pub mod regs;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use core::cell::RefCell;
use core::fmt;
use core::sync::atomic::{Ordering, fence};

use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

use crate::mm::pte::SecondLevel;
use crate::mm::space::AddressSpace;
use crate::mm::tlb::TlbFlush;
use crate::mm::traits::{PageCounter, TableAllocator, TableMapper};
use crate::mmio::Registers;

pub use dmar::{Dmar, DmarError};

/// Register reads a wait for the hardware makes before giving up.
const WAIT_POLLS: u32 = 1_000_000;

/// Faults of other devices [`Iommu::take_fault_of`] read from the
/// registers while looking for one device's, kept for their owners.
pub const UNCLAIMED_FAULTS: usize = 16;

/// Faults read from the registers and not yet taken, oldest first.
struct Unclaimed {
    faults: [Option<DmaFault>; UNCLAIMED_FAULTS],
    len: usize,
}

impl Unclaimed {
    /// Removes and returns the oldest fault `wanted` accepts.
    fn take(&mut self, wanted: impl Fn(&DmaFault) -> bool) -> Option<DmaFault> {
        let at = self.faults[..self.len]
            .iter()
            .position(|f| f.as_ref().is_some_and(&wanted))?;
        let fault = self.faults[at].take();
        self.faults[at..self.len].rotate_left(1);
        self.len -= 1;
        fault
    }
}

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

/// A domain's id (VT-d domain ids are 16 bits; 0 is kept unused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DomainId(u16);

impl DomainId {
    /// Domain `id`, if it is not 0.
    pub const fn new(id: u16) -> Option<DomainId> {
        if id == 0 { None } else { Some(DomainId(id)) }
    }

    /// The id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// A DMA access the unit refused, as its fault recording register held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// The device that made the access.
    pub source: SourceId,
    /// The page of the address it used (an IOVA), 4 KiB-aligned.
    pub address: u64,
    /// Whether it was a write (else a read).
    pub write: bool,
    /// The VT-d fault reason (5: write not allowed, 6: read not allowed,
    /// 2: no context entry, ...).
    pub reason: u8,
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
    /// An IOVA window that is not page-aligned or runs past 48 bits.
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
            IommuError::OutOfMemory => "no frame for an IOMMU table",
            IommuError::TimedOut => "the IOMMU did not finish a command in time",
            IommuError::Attached => "the device is already attached to a domain",
            IommuError::DomainIdInUse => "the domain id is in use with other tables",
            IommuError::BadWindow => "the IOVA window is misaligned or past 48 bits",
            IommuError::BadDomainId => "the domain id is past the unit's number of domains",
            IommuError::NotAttached => "no device is attached",
            IommuError::NoUnit => "no IOMMU unit is installed",
            IommuError::QueueError => "the IOMMU refused an invalidation descriptor",
        })
    }
}

impl core::error::Error for IommuError {}

/// The root and context tables, behind a `RefCell` so domains (which
/// borrow the unit for their IOTLB flushes) and attach calls can coexist.
struct Tables<A> {
    alloc: A,
    /// Physical address of each bus's context table, 0 if none.
    context: [u64; 256],
}

/// The invalidation queue (spec 6.5.2): one page of 256 descriptors, and a
/// status word the unit writes when it reaches a wait descriptor.
struct Queue {
    /// The ring's physical address and CPU pointer.
    ring: u64,
    ring_ptr: *mut u64,
    /// The status word's physical address and CPU pointer.
    status: u64,
    status_ptr: *mut u32,
    /// The next descriptor slot.
    tail: u32,
    /// The status data of the last wait descriptor.
    seq: u32,
}

// SAFETY: the two pointers reach frames the queue owns (allocated for it,
// freed only with it); nothing about them is tied to the thread that made
// them.
unsafe impl Send for Queue {}

/// One invalidation request, for the registers or the queue.
#[derive(Clone, Copy)]
enum Invalidation {
    /// Every context-cache entry.
    Context,
    /// Every IOTLB entry.
    Global,
    /// The IOTLB entries (and paging-structure caches) of a domain.
    Domain(DomainId),
    /// One page of a domain.
    Page(DomainId, u64),
}

impl Queue {
    /// Writes the descriptors of `request` and a wait descriptor, hands
    /// them to the unit and waits for the status write.
    fn submit<R: Registers>(&mut self, regs: &R, request: Invalidation) -> Result<(), IommuError> {
        let desc = match request {
            Invalidation::Context => [regs::DESC_CONTEXT_GLOBAL, 0],
            Invalidation::Global => [regs::DESC_IOTLB | regs::DESC_IOTLB_GLOBAL, 0],
            Invalidation::Domain(id) => [
                regs::DESC_IOTLB | regs::DESC_IOTLB_DOMAIN | (id.get() as u64) << 16,
                0,
            ],
            Invalidation::Page(id, page) => [
                regs::DESC_IOTLB | regs::DESC_IOTLB_PAGE | (id.get() as u64) << 16,
                page & !0xfff,
            ],
        };
        self.seq = self.seq.wrapping_add(1);
        let wait = [regs::DESC_WAIT | (self.seq as u64) << 32, self.status];
        for d in [desc, wait] {
            // SAFETY: `ring_ptr` maps the queue's page (256 descriptors of
            // two quadwords) and `tail` is below 256; the unit reads only
            // the slots between its head and the tail we publish below,
            // which it has finished (every submit waits for them).
            unsafe {
                let slot = self.ring_ptr.add(2 * self.tail as usize);
                slot.write_volatile(d[0]);
                slot.add(1).write_volatile(d[1]);
            }
            self.tail = (self.tail + 1) % regs::QUEUE_DESCRIPTORS;
        }
        // The descriptors are in memory before the unit is told of them.
        fence(Ordering::Release);
        regs.write64(regs::IQT, (self.tail as u64) << 4);
        for _ in 0..WAIT_POLLS {
            // SAFETY: `status_ptr` maps the status word, which only the unit
            // writes (by the wait descriptor) and we read.
            if unsafe { self.status_ptr.read_volatile() } == self.seq {
                return Ok(());
            }
            if regs.read32(regs::FSTS) & regs::FSTS_IQE != 0 {
                return Err(IommuError::QueueError);
            }
        }
        Err(IommuError::TimedOut)
    }
}

/// Runs `request` through the queue if there is one, else through the
/// registers.
fn invalidate<R: Registers>(
    regs: &R,
    iotlb: usize,
    queue: &RefCell<Option<Queue>>,
    request: Invalidation,
) -> Result<(), IommuError> {
    if let Some(queue) = queue.borrow_mut().as_mut() {
        return queue.submit(regs, request);
    }
    match request {
        Invalidation::Context => {
            regs.write64(regs::CCMD, regs::CCMD_ICC | regs::CCMD_GLOBAL);
            for _ in 0..WAIT_POLLS {
                if regs.read64(regs::CCMD) & regs::CCMD_ICC == 0 {
                    return Ok(());
                }
            }
            Err(IommuError::TimedOut)
        }
        Invalidation::Global => iotlb_command(regs, iotlb, regs::IOTLB_GLOBAL),
        Invalidation::Domain(id) => {
            iotlb_command(regs, iotlb, regs::IOTLB_DOMAIN | (id.get() as u64) << 32)
        }
        Invalidation::Page(id, page) => {
            regs.write64(iotlb + regs::IVA_REG, page & !0xfff);
            iotlb_command(regs, iotlb, regs::IOTLB_PAGE | (id.get() as u64) << 32)
        }
    }
}

/// Writes GCMD: the persistent state bits of GSTS, minus `clear`, plus the
/// command `set`.
fn command<R: Registers>(regs: &R, set: u32, clear: u32) {
    let status = regs.read32(regs::GSTS) & regs::GSTS_PERSISTENT;
    regs.write32(regs::GCMD, (status & !clear) | set);
}

/// Flushes the unit's write buffer (GCMD.WBF) and waits for GSTS.WBFS to
/// clear: what a unit with CAP.RWBF needs before it sees table writes that
/// no invalidation followed (spec 6.8).
fn flush_write_buffer<R: Registers>(regs: &R) -> Result<(), IommuError> {
    command(regs, regs::GCMD_WBF, 0);
    for _ in 0..WAIT_POLLS {
        if regs.read32(regs::GSTS) & regs::GSTS_WBFS == 0 {
            return Ok(());
        }
    }
    Err(IommuError::TimedOut)
}

/// What a unit needs after entries of its tables went from not present to
/// present (CAP bits read once by [`Iommu::new`]).
#[derive(Clone, Copy)]
struct Publish {
    /// CAP.CM: it may have cached the entries as not present, so they
    /// need an IOTLB invalidation.
    caching_mode: bool,
    /// CAP.RWBF: it may not see the writes until its write buffer is
    /// flushed.
    write_buffer: bool,
}

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
    /// A unit without 4-level second-level tables, or one of VT-d version
    /// 6 or later without the queue, is refused before anything is
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
        if cap & regs::CAP_SAGAW_4LEVEL == 0 {
            return Err(IommuError::Unsupported(Missing::FourLevelTables));
        }
        if ecap & regs::ECAP_QI == 0 && regs::ver_major(regs.read32(regs::VER)) >= 6 {
            return Err(IommuError::Unsupported(Missing::QueuedInvalidation));
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
            iotlb: regs::ecap_iro(ecap),
            frcd: regs::cap_fro(cap),
            nfr: regs::cap_nfr(cap),
            psi: cap & regs::CAP_PSI != 0,
            publish: Publish {
                caching_mode: cap & regs::CAP_CM != 0,
                write_buffer: cap & regs::CAP_RWBF != 0,
            },
            domains: regs::cap_domains(cap),
            tables: RefCell::new(Tables {
                alloc,
                context: [0; 256],
            }),
            queue: RefCell::new(None),
            unclaimed: RefCell::new(Unclaimed {
                faults: [None; UNCLAIMED_FAULTS],
                len: 0,
            }),
        };
        iommu.zero(root);
        iommu.command(0, regs::GSTS_TES);
        iommu.regs.write64(regs::RTADDR, root);
        iommu.command(regs::GCMD_SRTP, 0);
        iommu.wait_status(regs::GSTS_RTPS)?;
        if ecap & regs::ECAP_QI != 0 {
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
        self.command(regs::GCMD_QIE, 0);
        self.wait_status(regs::GSTS_QIES)
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
        self.command(regs::GCMD_TE, 0);
        self.wait_status(regs::GSTS_TES)
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
        self.command(0, regs::GSTS_TES);
        for _ in 0..WAIT_POLLS {
            if self.regs.read32(regs::GSTS) & regs::GSTS_TES == 0 {
                return Ok(());
            }
        }
        Err(IommuError::TimedOut)
    }

    /// Whether translation is on.
    pub fn is_enabled(&self) -> bool {
        self.regs.read32(regs::GSTS) & regs::GSTS_TES != 0
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

    /// Attaches `device` to the domain `domain` whose second-level tables
    /// are rooted at `tables` (an [`AddressSpace`] in [`SecondLevel`]
    /// format's root): its DMA is translated through them from now on.
    ///
    /// # Safety
    /// `tables` must stay a live second-level hierarchy, reachable by the
    /// unit, until the device is detached (and the domain's IOTLB entries
    /// flushed by its [`IotlbFlush`]); if [`Iommu::detach`] fails, they
    /// must be kept (leaked). `domain` must be the id whose
    /// [`IotlbFlush`] unmaps from `tables` (the id the [`Domain`] was made
    /// with): the unit caches the device's translations under `domain`,
    /// and an unmap that flushed another id would let it reach a page
    /// already given back. (Two domains under one id are refused with
    /// [`IommuError::DomainIdInUse`]: each device could reach the other's
    /// pages through the cache.) If `attach` answers `TimedOut` or
    /// `QueueError`, the entry was written and may be in use: keep the
    /// tables as for a failed [`Iommu::detach`], and detach before
    /// freeing them. The device must have no DMA in flight aimed at
    /// addresses meant for another domain (or for no translation): from
    /// here on, they are translated through `tables`.
    pub unsafe fn attach(
        &self,
        device: SourceId,
        domain: DomainId,
        tables: PhysFrame,
    ) -> Result<(), IommuError> {
        let entry = self.free_entry(device, domain)?;
        if self.id_used_elsewhere(domain, tables.start_address().as_u64()) {
            return Err(IommuError::DomainIdInUse);
        }
        let hi = regs::CONTEXT_AW_4LEVEL | regs::context_domain(domain.get());
        // SAFETY: as above; the high half first, the present bit last, so
        // the unit never sees half an entry.
        unsafe {
            entry.add(1).write_volatile(hi);
            entry.write_volatile(tables.start_address().as_u64() | regs::CONTEXT_PRESENT);
        }
        self.invalidate(Invalidation::Context)?;
        self.invalidate(Invalidation::Domain(domain))
    }

    /// Detaches `device`: its DMA faults again (until attached elsewhere).
    ///
    /// Safe with requests in flight (audited for issue 17): once the
    /// context entry is gone and the caches invalidated, each access of
    /// theirs is refused (a write dropped, a read returning zeros, both
    /// recorded as faults), so none reaches memory; their channels report
    /// them failed when they check the unit's faults (see
    /// [`crate::engine::FaultHook`]); a channel without a fault hook hears
    /// nothing, and its engine (the LSI53C895A's SCRIPTS) runs on, its
    /// requests in progress, until the channel's `terminate`. What is unsafe is what may come
    /// next: attaching the device elsewhere ([`Iommu::attach`]) or turning
    /// translation off ([`Iommu::disable`]) while they are in flight.
    ///
    /// On an error the invalidation did not finish: the unit may still
    /// translate the device through the old domain's tables, which must
    /// then be kept (see [`Iommu::attach`]).
    pub fn detach(&self, device: SourceId) -> Result<(), IommuError> {
        let context = self.tables.borrow().context[device.bus as usize];
        if context == 0 {
            return Ok(());
        }
        let entry = self.entry(context, device.devfn());
        // SAFETY: a context entry in a table this unit owns; present bit
        // first, so the unit never sees half an entry.
        unsafe {
            entry.write_volatile(0);
            entry.add(1).write_volatile(0);
        }
        self.invalidate(Invalidation::Context)?;
        self.invalidate(Invalidation::Global)
    }

    /// Sends a fault event, the MSI message `address`/`data` (on x86,
    /// 0xfee00000 with the target's APIC ID in bits 19:12, and the vector),
    /// each time a fault is recorded while none is pending (spec 7.3.1,
    /// 11.4.9.2-5). The handler reads the faults with
    /// [`Iommu::take_fault`] until it answers `None`: only then does the
    /// next fault raise an event again.
    ///
    /// `unsafe` since issue 17 (it was safe): the unit writes `data` to
    /// `address` as a DMA write that no domain checks.
    ///
    /// # Safety
    /// `address` must be one the platform takes as an interrupt message,
    /// never as memory (on x86, within 0xfee00000..=0xfeefffff), and
    /// `data` a fixed or lowest-priority message to a vector (32 or above)
    /// whose handler tolerates being run at any time.
    ///
    /// ```compile_fail,E0133
    /// # use dmaengine::iommu::Iommu;
    /// # use dmaengine::mm::traits::{TableAllocator, TableMapper};
    /// # use dmaengine::mmio::Registers;
    /// fn aim<R: Registers, M: TableMapper, A: TableAllocator>(unit: &Iommu<R, M, A>) {
    ///     // Safe code can no longer have the unit write 4 bytes anywhere.
    ///     unit.enable_fault_interrupts(0x1000, 0x5a5a_5a5a);
    /// }
    /// ```
    pub unsafe fn enable_fault_interrupts(&self, address: u64, data: u32) {
        self.regs.write32(regs::FEDATA, data);
        self.regs.write32(regs::FEADDR, address as u32 & !0b11);
        self.regs.write32(regs::FEUADDR, (address >> 32) as u32);
        self.regs.write32(regs::FECTL, 0);
    }

    /// Masks fault events again (faults are still recorded, for
    /// [`Iommu::take_fault`]).
    pub fn disable_fault_interrupts(&self) {
        self.regs.write32(regs::FECTL, regs::FECTL_IM);
    }

    /// The oldest recorded fault, or `None`: first those
    /// [`Iommu::take_fault_of`] kept for other devices, then the registers'
    /// (cleared as they are read).
    pub fn take_fault(&self) -> Option<DmaFault> {
        self.unclaimed
            .borrow_mut()
            .take(|_| true)
            .or_else(|| self.read_fault())
    }

    /// The oldest recorded fault of `device`, or `None`. Faults of other
    /// devices read from the registers on the way are kept (up to
    /// [`UNCLAIMED_FAULTS`]) for [`Iommu::take_fault_of`] with their
    /// device, or [`Iommu::take_fault`]. While that many wait for owners
    /// that do not ask, it reads no more registers (it answers `None`) and
    /// the unit, its records full, drops new faults (FSTS.PFO): a kernel
    /// that also services faults nobody claims drains them with
    /// `take_fault`.
    pub fn take_fault_of(&self, device: SourceId) -> Option<DmaFault> {
        let mut unclaimed = self.unclaimed.borrow_mut();
        if let Some(fault) = unclaimed.take(|f| f.source == device) {
            return Some(fault);
        }
        while unclaimed.len < UNCLAIMED_FAULTS {
            let fault = self.read_fault()?;
            if fault.source == device {
                return Some(fault);
            }
            let at = unclaimed.len;
            unclaimed.faults[at] = Some(fault);
            unclaimed.len = at + 1;
        }
        None
    }

    /// The first fault in the recording registers, cleared, or `None`.
    fn read_fault(&self) -> Option<DmaFault> {
        if self.regs.read32(regs::FSTS) & regs::FSTS_PPF == 0 {
            return None;
        }
        for i in 0..self.nfr {
            let at = self.frcd + 16 * i;
            let high = self.regs.read64(at + 8);
            if high & regs::FRCD_F == 0 {
                continue;
            }
            let low = self.regs.read64(at);
            // Writing F back (1) clears the record.
            self.regs.write64(at + 8, regs::FRCD_F);
            self.regs.write32(regs::FSTS, regs::FSTS_PFO);
            return Some(DmaFault {
                source: SourceId::from_raw(regs::frcd_source(high)),
                address: low & !0xfff,
                write: high & regs::FRCD_T_READ == 0,
                reason: regs::frcd_reason(high),
            });
        }
        None
    }

    /// The context table of `bus`, made (and linked in the root table) on
    /// first use.
    fn context_table(&self, bus: u8) -> Result<u64, IommuError> {
        let mut tables = self.tables.borrow_mut();
        if tables.context[bus as usize] == 0 {
            let table = tables
                .alloc
                .allocate_table()
                .ok_or(IommuError::OutOfMemory)?
                .start_address()
                .as_u64();
            self.zero(table);
            let root_entry = self.entry(self.root, bus as usize);
            // SAFETY: the root entry of `bus` in our root table.
            unsafe { root_entry.write_volatile(table | regs::ROOT_PRESENT) };
            tables.context[bus as usize] = table;
        }
        Ok(tables.context[bus as usize])
    }

    /// Whether [`Iommu::attach`] of `device` to a domain not yet built
    /// under id `domain` would be refused, checked before the domain's
    /// tables are taken from an allocator (that may not free): the id fits
    /// the unit, no device uses it, `device` is attached to nothing, and
    /// its bus's context table exists (made now if not). What `attach`
    /// itself may still answer then is an invalidation's failure.
    pub fn check_attach(&self, device: SourceId, domain: DomainId) -> Result<(), IommuError> {
        self.free_entry(device, domain)?;
        if self.id_used_elsewhere(domain, u64::MAX) {
            return Err(IommuError::DomainIdInUse);
        }
        Ok(())
    }

    /// The context entry of `device`, if it is free and `domain` fits the
    /// unit.
    fn free_entry(&self, device: SourceId, domain: DomainId) -> Result<*mut u64, IommuError> {
        if u32::from(domain.get()) >= self.domains {
            return Err(IommuError::BadDomainId);
        }
        let context = self.context_table(device.bus)?;
        let entry = self.entry(context, device.devfn());
        // SAFETY: a context entry (16 bytes) in a table this unit owns.
        let lo = unsafe { entry.read_volatile() };
        if lo & regs::CONTEXT_PRESENT != 0 {
            return Err(IommuError::Attached);
        }
        Ok(entry)
    }

    /// Whether a present context entry names `domain` with tables other
    /// than `tables` (a scan of the context tables in use: at attach time
    /// only).
    fn id_used_elsewhere(&self, domain: DomainId, tables: u64) -> bool {
        let context = self.tables.borrow().context;
        context.iter().filter(|&&t| t != 0).any(|&table| {
            (0..256).any(|devfn| {
                let entry = self.entry(table, devfn);
                // SAFETY: a context entry (16 bytes) in a table this unit
                // owns.
                let (lo, hi) = unsafe { (entry.read_volatile(), entry.add(1).read_volatile()) };
                lo & regs::CONTEXT_PRESENT != 0
                    && hi & regs::context_domain(u16::MAX) == regs::context_domain(domain.get())
                    && lo & !0xfff != tables
            })
        })
    }

    /// A pointer to the low half of 16-byte entry `index` of the table at
    /// `table` (a root or context table).
    fn entry(&self, table: u64, index: usize) -> *mut u64 {
        let frame = PhysFrame::containing_address(PhysAddr::new_truncate(table));
        let base = self.mapper.frame_ptr(frame).cast::<u64>();
        // SAFETY: a table frame of ours, mapped as 4096 bytes by the mapper's
        // contract; `index < 256`, 16 bytes each.
        unsafe { base.add(2 * (index & 0xff)) }
    }

    fn zero(&self, table: u64) {
        let frame = PhysFrame::containing_address(PhysAddr::new_truncate(table));
        // SAFETY: a frame just allocated to us; the mapper maps 4096 bytes.
        unsafe { self.mapper.frame_ptr(frame).write_bytes(0, 4096) }
    }

    fn command(&self, set: u32, clear: u32) {
        command(&self.regs, set, clear);
    }

    fn wait_status(&self, bit: u32) -> Result<(), IommuError> {
        for _ in 0..WAIT_POLLS {
            if self.regs.read32(regs::GSTS) & bit != 0 {
                return Ok(());
            }
        }
        Err(IommuError::TimedOut)
    }
}

/// Issues an IOTLB invalidation and waits for it.
fn iotlb_command<R: Registers>(regs: &R, iotlb: usize, kind: u64) -> Result<(), IommuError> {
    regs.write64(
        iotlb + regs::IOTLB_REG,
        regs::IOTLB_IVT | regs::IOTLB_DRAIN | kind,
    );
    for _ in 0..WAIT_POLLS {
        if regs.read64(iotlb + regs::IOTLB_REG) & regs::IOTLB_IVT == 0 {
            return Ok(());
        }
    }
    Err(IommuError::TimedOut)
}

impl<R: Registers, M: TableMapper, A: TableAllocator> crate::engine::FaultSource
    for Iommu<R, M, A>
{
    fn take_fault_of(&self, device: SourceId) -> Option<DmaFault> {
        Iommu::take_fault_of(self, device)
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
            self.command(0, regs::GSTS_QIES);
            let stopped =
                (0..WAIT_POLLS).any(|_| self.regs.read32(regs::GSTS) & regs::GSTS_QIES == 0);
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

/// A domain's IOTLB flush: what a second-level [`AddressSpace`] calls where
/// the CPU's would flush its TLB.
pub struct IotlbFlush<'a, R: Registers> {
    regs: &'a R,
    iotlb: usize,
    domain: DomainId,
    psi: bool,
    publish: Publish,
    queue: &'a RefCell<Option<Queue>>,
}

impl<R: Registers> IotlbFlush<'_, R> {
    /// The domain it flushes.
    pub fn domain(&self) -> DomainId {
        self.domain
    }

    /// Makes the `pages` pages from `start`, just mapped in the domain
    /// where nothing was, usable by its devices: on a unit with Caching
    /// Mode (CAP.CM) an IOTLB invalidation of them (it may have cached
    /// them as not present, spec 6.1), else on one with CAP.RWBF a
    /// write-buffer flush (spec 6.8), else nothing. Call it after
    /// `insert_pages` or `remap_pfn_range` on a [`Domain`], before a
    /// device is told of the pages (the IOVA layer,
    /// [`IovaHal`](dma::IovaHal), does). Unmaps need nothing more: their
    /// invalidation is the domain's own.
    ///
    /// On an error the unit may still refuse the pages (its accesses
    /// fault; no memory is at stake).
    pub fn mapped(&self, start: VirtAddr, pages: u64) -> Result<(), IommuError> {
        if self.publish.caching_mode {
            let one_by_one = self.psi && pages <= crate::mm::tlb::FULL_FLUSH_THRESHOLD as u64;
            if !one_by_one {
                return self.invalidate(Invalidation::Domain(self.domain));
            }
            // A page-selective invalidation drops the paging-structure
            // caches of the page too (no IH), so a table that was missing
            // when the device looked is seen as well.
            for i in 0..pages {
                let page = start.as_u64().wrapping_add(i * 4096);
                self.invalidate(Invalidation::Page(self.domain, page))?;
            }
            return Ok(());
        }
        if self.publish.write_buffer {
            return flush_write_buffer(self.regs);
        }
        Ok(())
    }

    fn invalidate(&self, request: Invalidation) -> Result<(), IommuError> {
        invalidate(self.regs, self.iotlb, self.queue, request)
    }

    fn domain_selective(&self) {
        let done = invalidate(
            self.regs,
            self.iotlb,
            self.queue,
            Invalidation::Domain(self.domain),
        );
        // The caller frees memory the unit may still translate to as soon
        // as this returns: a unit that never finishes is fatal.
        assert!(
            done.is_ok(),
            "the IOMMU did not finish an IOTLB invalidation"
        );
    }
}

// SAFETY: both calls return only after the unit reports the invalidation
// done (IVT clear, or the status write of the wait descriptor queued after
// it), with reads and writes drained; a page-selective one
// covers the page, a domain-selective one the whole domain (and the
// paging-structure caches, which the unit invalidates with the IOTLB).
unsafe impl<R: Registers> TlbFlush for IotlbFlush<'_, R> {
    fn flush_page(&mut self, _root: PhysFrame, va: VirtAddr) {
        if !self.psi {
            self.domain_selective();
            return;
        }
        let page = Invalidation::Page(self.domain, va.as_u64());
        if invalidate(self.regs, self.iotlb, self.queue, page).is_err() {
            self.domain_selective();
        }
    }

    fn flush_all(&mut self, _root: PhysFrame) {
        self.domain_selective();
    }
}

/// A DMA domain: second-level tables built by the same walker as the CPU's
/// page tables, flushed through the unit's IOTLB.
pub type Domain<'a, C, M, A, R> = AddressSpace<C, M, A, IotlbFlush<'a, R>, SecondLevel>;

/// Makes a domain with id `id` on `iommu`: pages counted by `counter`,
/// tables from `alloc` reached through `mapper` (the unit reads them
/// directly, so they must be ordinary RAM).
pub fn domain<'a, C: PageCounter, M: TableMapper, A: TableAllocator, R: Registers, M2, A2>(
    iommu: &'a Iommu<R, M2, A2>,
    id: DomainId,
    counter: C,
    mapper: M,
    alloc: A,
) -> Result<Domain<'a, C, M, A, R>, crate::mm::MmError>
where
    M2: TableMapper,
    A2: TableAllocator,
{
    AddressSpace::new_in(counter, mapper, alloc, iommu.flusher(id), false)
}
