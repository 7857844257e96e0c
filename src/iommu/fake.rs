//! A fake VT-d unit for host tests: the registers the driver uses (with
//! QEMU's command semantics: one-shot GCMD bits, ICC and IVT cleared when
//! done), one fault recording register, and a DMA path that walks the root,
//! context and second-level tables in host memory as the hardware does,
//! through an IOTLB that keeps translations until invalidated. Public with
//! the `testing` feature. A test plays the devices behind the unit: each
//! [`FakeVtd::dma`] is one access by one device, translated or refused
//! and recorded as the unit would.
//!
//! Tables are read at their physical addresses as host pointers (1:1), so
//! the frames a test gives the [`Iommu`] and its domains must be host
//! memory whose address is their physical address.
//!
//! A unit given [`FakeVtd::and_cap`] CAP.CM caches failed lookups as well
//! (until an IOTLB invalidation covers them), so a mapping made present
//! without one stays refused; with CAP.RWBF it keeps seeing each table
//! entry as it first read it until its write buffer is flushed (GCMD.WBF,
//! done when GSTS.WBFS reads clear) or an invalidation flushes it
//! implicitly (spec 6.8).
//!
//! Not modelled: anything but second-level, 4-level translation in legacy
//! mode (no scalable mode, no first-level, no pass-through, no interrupt
//! remapping), more than one fault recording register, caching of context
//! entries (only leaf translations are cached, in one IOTLB for every
//! domain, which a domain-selective invalidation empties entirely), the
//! fault event's message itself (only a count of events sent), and
//! devices: nothing accesses memory unless the test calls
//! [`FakeVtd::dma`], which returns the address the access would reach
//! and touches no memory there.
//!
//! # Example
//!
//! A device confined to its domain: it reaches the page the domain maps,
//! and an access anywhere else is refused and reported as a fault. The
//! unit is lent (`&FakeVtd` is a register window too), so the test keeps
//! it to play the device.
//!
//! ```
//! use std::alloc::{Layout, alloc_zeroed};
//! use x86_64::structures::paging::{Page, PhysFrame};
//! use x86_64::{PhysAddr, VirtAddr};
//! use dmaengine::iommu::{DomainId, Iommu, SourceId, domain};
//! use dmaengine::mm::frame::{FrameDb, PageInfo};
//! use dmaengine::mm::traits::OffsetMapper;
//! use dmaengine::mm::vma::VmFlags;
//! use dmaengine::testing::vtd::{Access, FakeVtd};
//!
//! // 32 frames of host memory, never freed, counted by a frame database.
//! let layout = Layout::from_size_align(32 * 4096, 4096).unwrap();
//! // SAFETY: the layout is not empty.
//! let base = unsafe { alloc_zeroed(layout) } as u64;
//! let infos: Vec<PageInfo> = (0..32).map(|_| PageInfo::default()).collect();
//! let first = PhysFrame::containing_address(PhysAddr::new(base));
//! // SAFETY: the frames are this allocation, which only the database
//! // hands out.
//! let db = unsafe { FrameDb::new(&infos, first) };
//! // SAFETY: host memory is reached at its "physical" address.
//! let mapper = || unsafe { OffsetMapper::new(VirtAddr::zero()) };
//!
//! // SAFETY: the unit is driven by this Iommu alone, and walks the tables
//! // the database gives it, in host memory.
//! let unit = unsafe { FakeVtd::new() };
//! // SAFETY: as above.
//! let iommu = unsafe { Iommu::new(&unit, mapper(), &db) }.unwrap();
//! let id = DomainId::new(1).unwrap();
//! let mut dom = domain(&iommu, id, &db, mapper(), &db).unwrap();
//! let iova = Page::from_start_address(VirtAddr::new(0x10_0000)).unwrap();
//! let area = dom.map_vma(iova, 1, VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED).unwrap();
//! let page = db.alloc_page().unwrap();
//! dom.insert_pages(area, iova, core::slice::from_ref(&page)).unwrap();
//! let device = SourceId { bus: 0, device: 3, function: 0 };
//! // SAFETY: the domain outlives the attachment (detached below).
//! unsafe { iommu.attach(device, id, dom.root()) }.unwrap();
//! iommu.enable().unwrap();
//!
//! let inside = unit.dma(device.raw(), 0x10_0010, true);
//! assert_eq!(inside, Access::Ok(page.phys().as_u64() + 0x10));
//! assert!(matches!(unit.dma(device.raw(), 0x20_0000, true), Access::Fault(_)));
//! let fault = iommu.take_fault().unwrap();
//! assert_eq!((fault.source, fault.address, fault.write), (device, 0x20_0000, true));
//! iommu.detach(device).unwrap();
//! ```
//!
//! [`Iommu`]: crate::iommu::Iommu

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::iommu::regs::{self, Cap};
use crate::mmio::Registers;

/// Where the fake places the IOTLB and fault recording registers.
pub const IRO: usize = 0x100;
/// The first fault recording register.
pub const FRO: usize = 0x200;

#[derive(Default)]
struct State {
    gsts: u32,
    rtaddr: u64,
    /// The root table in use (latched by SRTP).
    root: u64,
    iva: u64,
    fsts: u32,
    frcd: (u64, u64),
    /// (source, page) -> (frame, writable)
    iotlb: BTreeMap<(u16, u64), (u64, bool)>,
    invalidations: usize,
    accesses: u64,
    reads: u64,
    /// Fault events unmasked (FECTL.IM clear).
    events_on: bool,
    /// Whether the unit reports an invalidation queue (ECAP.QI).
    has_queue: bool,
    /// IQA, and the queue's head (a descriptor index).
    iqa: u64,
    iqh: u32,
    /// Queue descriptors processed.
    descriptors: usize,
    /// Fault events sent.
    events: usize,
    /// A unit that never turns translation off (a wedged one).
    refuses_disable: bool,
    /// VER's major version, and CAP bits the unit lacks.
    version: u32,
    missing_cap: u64,
    /// CAP bits the unit reports beyond the usual (CM, RWBF).
    extra_cap: Cap,
    /// CM: lookups that failed, (source, page, write) -> fault reason.
    failed: BTreeMap<(u16, u64, bool), u8>,
    /// RWBF: table entries as the unit first read them since its write
    /// buffer was last flushed, by physical address.
    seen: BTreeMap<u64, u64>,
    /// GSTS reads left before a write-buffer flush is done.
    wbf_reads: u32,
    /// Write-buffer flushes done.
    wb_flushes: usize,
}

impl State {
    /// An invalidation flushes the write buffer too (spec 6.8).
    fn flush_write_buffer(&mut self) {
        self.seen.clear();
    }

    /// An IOTLB invalidation of `page` (or of everything): with CM, the
    /// failed lookups it covers go too.
    fn invalidate_iotlb(&mut self, page: Option<u64>) {
        self.invalidations += 1;
        match page {
            Some(page) => {
                self.iotlb.retain(|&(_, p), _| p != page);
                self.failed.retain(|&(_, p, _), _| p != page);
            }
            None => {
                self.iotlb.clear();
                self.failed.clear();
            }
        }
        self.flush_write_buffer();
    }

    /// A table entry as the unit sees it.
    fn read_entry(&mut self, pa: u64) -> u64 {
        if !self.extra_cap.contains(Cap::RWBF) {
            return read(pa);
        }
        *self.seen.entry(pa).or_insert_with(|| read(pa))
    }
}

/// The fake unit: give it (or a reference to it) to [`Iommu::new`] as the
/// register window.
///
/// [`Iommu::new`]: crate::iommu::Iommu::new
pub struct FakeVtd {
    state: RefCell<State>,
}

/// What a DMA access got.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// Translated to this physical address.
    Ok(u64),
    /// Refused with this fault reason (recorded if the register was free).
    Fault(u8),
}

fn read(pa: u64) -> u64 {
    // SAFETY: test tables live in host memory, 1:1.
    unsafe { (pa as *const u64).read_volatile() }
}

impl FakeVtd {
    /// A unit in its reset state.
    ///
    /// # Safety
    /// The unit reads the root, context and page tables, and writes the
    /// invalidation queue's status words, at the physical addresses its
    /// registers are given, as host pointers: its registers must be
    /// written only by one [`Iommu`](crate::iommu::Iommu) (under
    /// `Iommu::new`'s contract) whose tables are host memory mapped 1:1,
    /// or by a caller that points them only at such memory it owns.
    pub unsafe fn new() -> FakeVtd {
        FakeVtd {
            state: RefCell::default(),
        }
    }

    /// A unit with an invalidation queue, which its driver must then use:
    /// the fake stops honouring the invalidation registers once the queue
    /// is on.
    ///
    /// # Safety
    /// As for [`FakeVtd::new`].
    pub unsafe fn with_queue() -> FakeVtd {
        // SAFETY: the caller's promise.
        let fake = unsafe { FakeVtd::new() };
        fake.state.borrow_mut().has_queue = true;
        fake
    }

    /// A unit that ignores every request to turn translation off, as a
    /// wedged one would.
    ///
    /// # Safety
    /// As for [`FakeVtd::new`].
    pub unsafe fn refusing_to_disable() -> FakeVtd {
        // SAFETY: the caller's promise.
        let fake = unsafe { FakeVtd::new() };
        fake.state.borrow_mut().refuses_disable = true;
        fake
    }

    /// A unit of VT-d major version `version`, without a queue, lacking
    /// the CAP bits `missing_cap`.
    ///
    /// # Safety
    /// As for [`FakeVtd::new`].
    pub unsafe fn reporting(version: u32, missing_cap: u64) -> FakeVtd {
        // SAFETY: the caller's promise.
        let fake = unsafe { FakeVtd::new() };
        let mut s = fake.state.borrow_mut();
        (s.version, s.missing_cap) = (version, missing_cap);
        drop(s);
        fake
    }

    /// The unit, reporting the CAP bits `cap` as well: [`Cap::CM`] (it
    /// caches failed lookups) and [`Cap::RWBF`] (it sees table writes
    /// only after a write-buffer flush or an invalidation), as the module
    /// docs say; other bits are ignored.
    pub fn and_cap(self, cap: Cap) -> FakeVtd {
        self.state.borrow_mut().extra_cap |= cap & (Cap::CM | Cap::RWBF);
        self
    }

    /// Write-buffer flushes (GCMD.WBF) the unit has finished.
    pub fn write_buffer_flushes(&self) -> usize {
        self.state.borrow().wb_flushes
    }

    /// Queue descriptors the unit has processed.
    pub fn descriptors(&self) -> usize {
        self.state.borrow().descriptors
    }

    /// Processes the queue's descriptors from the head up to `tail`.
    fn run_queue(s: &mut State, tail: u32) {
        while s.iqh != tail {
            let at = (s.iqa & !0xfff) + 16 * s.iqh as u64;
            let (low, high) = (read(at), read(at + 8));
            s.descriptors += 1;
            match low & 0xf {
                0x1 => s.flush_write_buffer(),
                0x2 => {
                    let page = (low & (3 << 4) == regs::DESC_IOTLB_PAGE).then_some(high & !0xfff);
                    s.invalidate_iotlb(page);
                }
                0x5 if low & (1 << 5) != 0 => {
                    // SAFETY: test memory is host memory, 1:1; the driver
                    // gave this status word's address.
                    unsafe { ((high & !0b11) as *mut u32).write_volatile((low >> 32) as u32) };
                }
                _ => {
                    s.fsts |= regs::Fsts::IQE.bits();
                    return;
                }
            }
            s.iqh = (s.iqh + 1) % regs::QUEUE_DESCRIPTORS;
        }
    }

    /// Fault events (interrupts) the unit has sent.
    pub fn fault_events(&self) -> usize {
        self.state.borrow().events
    }

    /// IOTLB invalidations done so far.
    pub fn invalidations(&self) -> usize {
        self.state.borrow().invalidations
    }

    /// A DMA access by `source` to `iova`: translated through the IOTLB or
    /// the tables (when translation is on), or refused and recorded.
    pub fn dma(&self, source: u16, iova: u64, write: bool) -> Access {
        let mut s = self.state.borrow_mut();
        if s.gsts & regs::Gsts::TES.bits() == 0 {
            return Access::Ok(iova);
        }
        let page = iova & !0xfff;
        if let Some(&(frame, writable)) = s.iotlb.get(&(source, page))
            && (writable || !write)
        {
            return Access::Ok(frame | (iova & 0xfff));
        }
        let cached = s.failed.get(&(source, page, write)).copied();
        let outcome = match cached {
            Some(reason) => Err(reason),
            None => Self::walk(&mut s, source, iova, write),
        };
        match outcome {
            Ok((frame, writable)) => {
                s.iotlb.insert((source, page), (frame, writable));
                Access::Ok(frame | (iova & 0xfff))
            }
            Err(reason) => {
                if s.extra_cap.contains(Cap::CM) {
                    s.failed.insert((source, page, write), reason);
                }
                if s.frcd.1 & regs::Frcd::F.bits() == 0 {
                    s.frcd = (
                        page,
                        regs::Frcd::F.bits()
                            | if write { 0 } else { regs::Frcd::T.bits() }
                            | (reason as u64) << 32
                            | source as u64,
                    );
                    // An event for a fault recorded while none was pending.
                    if s.fsts & regs::Fsts::PPF.bits() == 0 && s.events_on {
                        s.events += 1;
                    }
                    s.fsts |= regs::Fsts::PPF.bits();
                } else {
                    s.fsts |= regs::Fsts::PFO.bits();
                }
                Access::Fault(reason)
            }
        }
    }

    /// Walks root -> context -> four second-level levels; `Ok((page
    /// frame, writable))` or the fault reason.
    fn walk(s: &mut State, source: u16, iova: u64, write: bool) -> Result<(u64, bool), u8> {
        let root = s.root;
        let root_entry = s.read_entry(root + 16 * (source as u64 >> 8));
        if root_entry & regs::RootEntry::P.bits() == 0 {
            return Err(1);
        }
        let context = root_entry & !0xfff;
        let lo = s.read_entry(context + 16 * (source as u64 & 0xff));
        let hi = s.read_entry(context + 16 * (source as u64 & 0xff) + 8);
        if lo & regs::ContextEntry::P.bits() == 0 {
            return Err(2);
        }
        assert_eq!(hi & 7, regs::CONTEXT_AW_4LEVEL, "4-level tables");
        let mut table = lo & !0xfff;
        let want = if write { 2 } else { 1 };
        for level in (1..=4u32).rev() {
            let index = (iova >> (12 + 9 * (level - 1))) & 0x1ff;
            let entry = s.read_entry(table + 8 * index);
            assert_eq!(entry & (1 << 11), 0, "SNP faults in legacy mode");
            if entry & want == 0 {
                return Err(if write {
                    regs::REASON_WRITE
                } else {
                    regs::REASON_READ
                });
            }
            let address = entry & 0x000f_ffff_ffff_f000;
            if level == 1 || entry & (1 << 7) != 0 {
                let size = 1u64 << (12 + 9 * (level - 1));
                let frame = (address & !(size - 1)) + (iova & (size - 1) & !0xfff);
                return Ok((frame, entry & 2 != 0));
            }
            table = address;
        }
        unreachable!()
    }
}

impl Registers for FakeVtd {
    fn read8(&self, _offset: usize) -> u8 {
        panic!("VT-d registers are 32 or 64 bits wide");
    }
    fn write8(&self, _offset: usize, _value: u8) {
        panic!("VT-d registers are 32 or 64 bits wide");
    }
    fn read32(&self, offset: usize) -> u32 {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        s.reads += 1;
        match offset {
            regs::VER => s.version << 4,
            regs::GSTS => {
                let gsts = s.gsts;
                if s.wbf_reads > 0 {
                    s.wbf_reads -= 1;
                    if s.wbf_reads == 0 {
                        s.gsts &= !regs::Gsts::WBFS.bits();
                        s.flush_write_buffer();
                        s.wb_flushes += 1;
                    }
                }
                gsts
            }
            regs::FSTS => s.fsts,
            _ => 0,
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        match offset {
            regs::GCMD => {
                if value & regs::Gcmd::SRTP.bits() != 0 {
                    s.root = s.rtaddr;
                    s.gsts |= regs::Gsts::RTPS.bits();
                }
                if value & regs::Gcmd::TE.bits() != 0 {
                    s.gsts |= regs::Gsts::TES.bits();
                } else if !s.refuses_disable {
                    s.gsts &= !regs::Gsts::TES.bits();
                }
                // The flush ends a couple of status reads later, so a
                // driver that does not wait for WBFS to clear never sees
                // it done.
                if value & regs::Gcmd::WBF.bits() != 0 && s.extra_cap.contains(Cap::RWBF) {
                    s.gsts |= regs::Gsts::WBFS.bits();
                    s.wbf_reads = 2;
                }
                if value & regs::Gcmd::QIE.bits() != 0 && s.has_queue {
                    s.gsts |= regs::Gsts::QIES.bits();
                } else {
                    s.gsts &= !regs::Gsts::QIES.bits();
                    s.iqh = 0;
                }
            }
            regs::FSTS => s.fsts &= !(value & regs::Fsts::PFO.bits()),
            regs::FECTL => s.events_on = value & regs::Fectl::IM.bits() == 0,
            _ => {}
        }
    }
    fn read64(&self, offset: usize) -> u64 {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        s.reads += 1;
        match offset {
            regs::CAP => {
                (regs::Cap::SAGAW_4LEVEL.bits()
                    | regs::Cap::PSI.bits()
                    // MGAW: 48-bit IOVAs, as QEMU's `aw-bits=48`.
                    | 47 << 16
                    | ((FRO / 16) as u64) << 24
                    | s.extra_cap.bits())
                    & !s.missing_cap
            }
            regs::ECAP => {
                ((IRO / 16) as u64) << 8
                    | if s.has_queue {
                        regs::Ecap::QI.bits()
                    } else {
                        0
                    }
            }
            regs::IQH => (s.iqh as u64) << 4,
            regs::RTADDR => s.rtaddr,
            o if o == FRO => s.frcd.0,
            o if o == FRO + 8 => s.frcd.1,
            _ => 0,
        }
    }
    fn write64(&self, offset: usize, value: u64) {
        let mut s = self.state.borrow_mut();
        s.accesses += 1;
        match offset {
            regs::RTADDR => s.rtaddr = value,
            regs::IQA => s.iqa = value,
            regs::IQT if s.gsts & regs::Gsts::QIES.bits() != 0 => {
                let tail = ((value >> 4) & 0x7fff) as u32;
                FakeVtd::run_queue(&mut s, tail);
            }
            // With the queue on, the invalidation registers do nothing (as
            // on units that have only the queue).
            o if s.gsts & regs::Gsts::QIES.bits() != 0
                && (o == regs::CCMD || o == IRO + regs::IVA_REG || o == IRO + regs::IOTLB_REG) => {}
            regs::CCMD => s.flush_write_buffer(),
            o if o == IRO + regs::IVA_REG => s.iva = value,
            o if o == IRO + regs::IOTLB_REG && value & regs::Iotlb::IVT.bits() != 0 => {
                // Global or domain-selective: the fake keeps one domain.
                let page =
                    (value & (3 << 60) == regs::Iotlb::PAGE.bits()).then_some(s.iva & !0xfff);
                s.invalidate_iotlb(page);
            }
            o if o == FRO + 8 && value & regs::Frcd::F.bits() != 0 => {
                s.frcd = (0, 0);
                s.fsts &= !regs::Fsts::PPF.bits();
            }
            _ => {}
        }
    }
    fn accesses(&self) -> u64 {
        self.state.borrow().accesses
    }
    fn reads(&self) -> u64 {
        self.state.borrow().reads
    }
}

/// A lent unit is a register window too, so a test keeps the unit to play
/// the devices (with [`FakeVtd::dma`]) while the driver owns a reference.
impl Registers for &FakeVtd {
    fn read8(&self, offset: usize) -> u8 {
        FakeVtd::read8(self, offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        FakeVtd::write8(self, offset, value)
    }
    fn read32(&self, offset: usize) -> u32 {
        FakeVtd::read32(self, offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        FakeVtd::write32(self, offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        FakeVtd::read64(self, offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        FakeVtd::write64(self, offset, value)
    }
    fn accesses(&self) -> u64 {
        FakeVtd::accesses(self)
    }
    fn reads(&self) -> u64 {
        FakeVtd::reads(self)
    }
}
