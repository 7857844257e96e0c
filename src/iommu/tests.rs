//! Host tests of the VT-d driver against the fake unit: tables the fake
//! walks as the hardware does, faults recorded and decoded, and the IOTLB
//! forgetting an unmapped page before its frame is given back.

use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::fake::{Access, FakeVtd};
use super::{DmaFault, DomainId, Iommu, IommuError, Missing, SourceId, domain, regs};
use crate::engine::{
    Capabilities, Channel, Cookie, DmaError, Engine, EngineError, ErrorKind, FaultHook, Limits,
    Notify, Op, PrepFlags, Progress, Status, Termination,
};
use crate::mm::frame::PageRef;
use crate::mm::pte::PageProt;
use crate::mm::testing::{Memory, counts, mapper, table_frames};
use crate::mm::vma::VmFlags;

use super::testing::{EDU, LSI};

const IOVA: u64 = 0x10_0000;

fn page(addr: u64) -> Page {
    Page::from_start_address(VirtAddr::new(addr)).unwrap()
}

#[test]
fn a_unit_lacking_what_the_driver_needs_is_refused_by_name() {
    let mem = Memory::new(8);
    let db = mem.db();
    let free = db.free_frames();
    let start = |version: u32, missing_cap: u64| {
        // SAFETY: the fake is this unit's register window, written only by
        // the `Iommu` made over it; tables come from the database, reached
        // 1:1.
        unsafe { Iommu::new(FakeVtd::reporting(version, missing_cap), mapper(), &db) }.map(|_| ())
    };
    // QEMU 7.2's plain `-device intel-iommu`: 39-bit, 3-level tables only.
    let three_level = start(1, regs::Cap::SAGAW_4LEVEL.bits()).unwrap_err();
    assert_eq!(
        three_level,
        IommuError::Unsupported(Missing::FourLevelTables)
    );
    assert!(
        three_level.to_string().contains("aw-bits=48"),
        "{three_level}"
    );
    assert_eq!(
        start(6, 0),
        Err(IommuError::Unsupported(Missing::QueuedInvalidation)),
        "version 6 has no register-based invalidation"
    );
    assert_eq!(db.free_frames(), free, "refused before any table");
    // Version 5 still has the registers: taken, and its frames given back.
    assert_eq!(start(5, 0), Ok(()));
    assert_eq!(db.free_frames(), free);
}

/// The fake unit with its CAP and ECAP fields replaced: FRO (bits 33:24)
/// and NFR (47:40) by `cap`, IRO (ECAP bits 17:8) by `ecap`, when given.
struct Relocated {
    unit: FakeVtd,
    cap: Option<u64>,
    ecap: Option<u64>,
}

impl crate::mmio::Registers for Relocated {
    fn read8(&self, offset: usize) -> u8 {
        self.unit.read8(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.unit.write8(offset, value)
    }
    fn read32(&self, offset: usize) -> u32 {
        self.unit.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.unit.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        let value = self.unit.read64(offset);
        match (offset, self.cap, self.ecap) {
            (regs::CAP, Some(fields), _) => value & !(0xff_03ff << 24) | fields,
            (regs::ECAP, _, Some(fields)) => value & !(0x3ff << 8) | fields,
            _ => value,
        }
    }
    fn write64(&self, offset: usize, value: u64) {
        self.unit.write64(offset, value)
    }
    fn accesses(&self) -> u64 {
        self.unit.accesses()
    }
    fn reads(&self) -> u64 {
        self.unit.reads()
    }
}

/// A unit whose CAP or ECAP put its fault recording or IOTLB registers
/// past the one page the driver is given ([`regs::MMIO_SIZE`]; units with
/// a larger register set exist) is refused by name before anything is
/// allocated or written, not left to fail a bounds check later.
#[test]
fn a_unit_with_registers_past_the_window_is_refused() {
    let mem = Memory::new(8);
    let db = mem.db();
    let free = db.free_frames();
    let start = |cap: Option<u64>, ecap: Option<u64>| {
        // SAFETY: the fake is this unit's register window, written only by
        // the `Iommu` made over it; tables come from the database, reached
        // 1:1.
        let unit = unsafe { FakeVtd::new() };
        let unit = Relocated { unit, cap, ecap };
        // SAFETY: as above.
        unsafe { Iommu::new(unit, mapper(), &db) }.map(|_| ())
    };
    let past = Err(IommuError::Unsupported(Missing::OnePageRegisters));
    // IOTLB registers at 0x1000 (IRO 0x100): past the page.
    assert_eq!(start(None, Some(0x100 << 8)), past);
    // One fault record at 0xff0 fits; a second (NFR 1) does not; nor does
    // the last record of 256 from 0x200.
    assert!(start(Some(0xff << 24), None).is_ok());
    assert_eq!(start(Some(0xff << 24 | 1 << 40), None), past);
    assert_eq!(start(Some(0x20 << 24 | 0xff << 40), None), past);
    assert_eq!(db.free_frames(), free, "refused before any table");
    assert!(
        IommuError::Unsupported(Missing::OnePageRegisters)
            .to_string()
            .contains("4 KiB"),
    );
}

#[test]
fn a_device_reaches_only_what_its_domain_maps() {
    // SAFETY: driven by the Iommu under test alone, over host tables.
    reaches_only_what_its_domain_maps(unsafe { FakeVtd::new() }, false);
}

#[test]
fn with_an_invalidation_queue_every_invalidation_goes_through_it() {
    // SAFETY: as above.
    reaches_only_what_its_domain_maps(unsafe { FakeVtd::with_queue() }, true);
}

/// A domain's mappings, faults and unmapping on `unit`, which has an
/// invalidation queue or not (`queued`): the fake then honours only the
/// queue, so an unmap the queue did not invalidate would still translate.
fn reaches_only_what_its_domain_maps(unit: FakeVtd, queued: bool) {
    let mem = Memory::new(64);
    let db = mem.db();
    // SAFETY: the fake is this unit's register window; tables come from the
    // database, reached 1:1.
    let iommu = unsafe { Iommu::new(unit, mapper(), &db) }.unwrap();
    assert_eq!(iommu.queued_invalidation(), queued);
    let descriptors = iommu.regs.descriptors();
    assert_eq!(
        descriptors > 0,
        queued,
        "new() invalidated through the queue"
    );
    assert_eq!(
        iommu.regs.dma(LSI.raw(), 0x1234, true),
        Access::Ok(0x1234),
        "off: untranslated"
    );
    let id = DomainId::new(1).unwrap();
    let mut dom = domain(&iommu, id, &db, mapper(), &db).unwrap();
    let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
    let buffers = dom.map_vma(page(IOVA), 16, rw).unwrap();
    let pages: Vec<PageRef<'_>> = (0..3).map(|_| db.alloc_page().unwrap()).collect();
    dom.insert_pages(buffers, page(IOVA), &pages).unwrap();
    let ro = dom.map_vma(page(IOVA + 0x10_0000), 512, rw).unwrap();
    let frames = PhysFrame::containing_address(PhysAddr::new(0x4020_0000));
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe { dom.remap_pfn_range(ro, page(IOVA + 0x20_0000), frames, 512, PageProt::READ_ONLY) }
        .unwrap_err(); // outside the area: refused
    // SAFETY: host tables are never loaded, and this test faults only
    // on frames it owns and keeps (or on none): nothing reads the others.
    unsafe { dom.remap_pfn_range(ro, page(IOVA + 0x10_0000), frames, 512, PageProt::READ_ONLY) }
        .unwrap();
    // SAFETY: the domain lives until after `detach` below.
    unsafe { iommu.attach(LSI, id, dom.root()) }.unwrap();
    // SAFETY: as above.
    let twice = unsafe { iommu.attach(LSI, id, dom.root()) };
    assert_eq!(twice, Err(IommuError::Attached));
    iommu.enable().unwrap();
    assert!(iommu.is_enabled());
    let v = &iommu.regs;
    assert_eq!(
        v.dma(LSI.raw(), IOVA + 0x1005, true),
        Access::Ok(pages[1].phys().as_u64() + 5)
    );
    assert_eq!(
        v.dma(LSI.raw(), IOVA + 0x10_0000 + 0x3456, false),
        Access::Ok(0x4020_3456)
    );
    // Not mapped, or read-only: refused, recorded, decoded, cleared.
    assert_eq!(v.dma(LSI.raw(), IOVA + 0x8000, true), Access::Fault(5));
    assert_eq!(
        iommu.take_fault(),
        Some(DmaFault {
            source: LSI,
            address: IOVA + 0x8000,
            write: true,
            reason: 5
        })
    );
    assert_eq!(iommu.take_fault(), None, "cleared");
    assert_eq!(
        v.dma(LSI.raw(), IOVA + 0x10_0000, true),
        Access::Fault(5),
        "read-only"
    );
    assert!(iommu.take_fault().is_some_and(|f| f.write));
    assert_eq!(v.dma(LSI.raw(), 0x7000_0000, false), Access::Fault(6));
    assert_eq!(
        iommu.take_fault().map(|f| (f.write, f.reason)),
        Some((false, 6))
    );
    // Another device, attached to nothing: no context entry.
    assert_eq!(v.dma(EDU.raw(), IOVA, false), Access::Fault(2));
    assert_eq!(iommu.take_fault().map(|f| f.source), Some(EDU));
    // Unmapping invalidates the IOTLB before the page goes back: the next
    // access faults although the translation was cached.
    let (before, descriptors) = (v.invalidations(), v.descriptors());
    dom.zap_range(buffers, page(IOVA + 0x1000), 1).unwrap();
    assert!(v.invalidations() > before, "the unmap was flushed");
    assert_eq!(v.descriptors() > descriptors, queued, "through the queue");
    assert_eq!(v.dma(LSI.raw(), IOVA + 0x1005, true), Access::Fault(5));
    assert_eq!(
        counts(&db, pages[1].pfn()),
        (1, 0),
        "the page's mapping reference is back"
    );
    assert_eq!(
        counts(&db, pages[0].pfn()),
        (2, 1),
        "a mapped page is held for DMA"
    );
    iommu.detach(LSI).unwrap();
    assert_eq!(v.dma(LSI.raw(), IOVA, true), Access::Fault(2));
    drop(dom);
    drop(iommu);
    assert_eq!(
        table_frames(&db),
        0,
        "domain, context and root tables, and the queue's pages, all back"
    );
}

/// On a unit with Caching Mode, with or without its queue: a device that
/// looked before its domain had the page keeps being refused until
/// [`IotlbFlush::mapped`](super::IotlbFlush::mapped), then reaches it; one
/// that looked before it was attached reaches its domain once `attach`
/// returns.
#[test]
fn with_caching_mode_new_mappings_are_invalidated() {
    for queued in [false, true] {
        let mem = Memory::new(64);
        let db = mem.db();
        // SAFETY: the fake is this unit's register window; tables come
        // from the database, reached 1:1.
        let unit = unsafe {
            if queued {
                FakeVtd::with_queue()
            } else {
                FakeVtd::new()
            }
        };
        // SAFETY: as above.
        let iommu = unsafe { Iommu::new(unit.and_cap(regs::Cap::CM), mapper(), &db) }.unwrap();
        assert!(iommu.caching_mode());
        iommu.enable().unwrap();
        let v = &iommu.regs;
        assert_eq!(
            v.dma(LSI.raw(), IOVA, true),
            Access::Fault(1),
            "no root entry yet"
        );
        let id = DomainId::new(1).unwrap();
        let mut dom = domain(&iommu, id, &db, mapper(), &db).unwrap();
        let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
        let area = dom.map_vma(page(IOVA), 4, rw).unwrap();
        // SAFETY: the domain lives until after `detach` below.
        unsafe { iommu.attach(LSI, id, dom.root()) }.unwrap();
        assert_eq!(v.dma(LSI.raw(), IOVA, true), Access::Fault(5), "attached");
        let pages: Vec<PageRef<'_>> = (0..2).map(|_| db.alloc_page().unwrap()).collect();
        dom.insert_pages(area, page(IOVA), &pages).unwrap();
        assert_eq!(
            v.dma(LSI.raw(), IOVA, true),
            Access::Fault(5),
            "the fake caches the miss, as CM allows"
        );
        dom.tlb().mapped(VirtAddr::new(IOVA), 2).unwrap();
        for (i, p) in pages.iter().enumerate() {
            let at = IOVA + i as u64 * 4096;
            assert_eq!(v.dma(LSI.raw(), at, true), Access::Ok(p.phys().as_u64()));
        }
        while iommu.take_fault().is_some() {}
        iommu.detach(LSI).unwrap();
        assert_eq!(v.descriptors() > 0, queued);
    }
}

#[test]
fn a_fault_event_is_sent_once_per_fault_read_and_never_while_masked() {
    let mem = Memory::new(16);
    let db = mem.db();
    // SAFETY: as in the test above.
    let iommu = unsafe { Iommu::new(FakeVtd::new(), mapper(), &db) }.unwrap();
    let id = DomainId::new(1).unwrap();
    let dom = domain(&iommu, id, &db, mapper(), &db).unwrap();
    // SAFETY: the domain lives until after `detach` below.
    unsafe { iommu.attach(LSI, id, dom.root()) }.unwrap();
    iommu.enable().unwrap();
    let v = &iommu.regs;
    // Masked at reset: recorded, no event.
    assert_eq!(v.dma(LSI.raw(), IOVA, true), Access::Fault(5));
    assert_eq!(v.fault_events(), 0);
    assert!(iommu.take_fault().is_some());
    // SAFETY: the fake delivers no message; the address is in x86's
    // interrupt window and 0x93 a fixed vector.
    unsafe { iommu.enable_fault_interrupts(0xfee0_1000, 0x93) };
    assert_eq!(v.dma(LSI.raw(), IOVA, true), Access::Fault(5));
    assert_eq!(v.fault_events(), 1);
    // Another before the first is read: no second event.
    assert_eq!(v.dma(LSI.raw(), IOVA + 0x1000, false), Access::Fault(6));
    assert_eq!(v.fault_events(), 1);
    while iommu.take_fault().is_some() {}
    assert_eq!(v.dma(LSI.raw(), IOVA, false), Access::Fault(6));
    assert_eq!(v.fault_events(), 2, "read out, the next fault sends again");
    while iommu.take_fault().is_some() {}
    iommu.disable_fault_interrupts();
    assert_eq!(v.dma(LSI.raw(), IOVA, false), Access::Fault(6));
    assert_eq!(v.fault_events(), 2, "masked again");
    iommu.detach(LSI).unwrap();
}

/// A unit that will not turn translation off may still walk its root and
/// context tables (and write the queue's status word): dropping its driver
/// must leak them, never give them back for reuse.
#[test]
fn a_unit_that_will_not_stop_translating_keeps_its_tables_when_dropped() {
    let mem = Memory::new(16);
    let db = mem.db();
    // SAFETY: as in the tests above.
    let iommu = unsafe { Iommu::new(FakeVtd::refusing_to_disable(), mapper(), &db) }.unwrap();
    let id = DomainId::new(1).unwrap();
    let dom = domain(&iommu, id, &db, mapper(), &db).unwrap();
    // SAFETY: the domain's tables are leaked below, so they stay live for
    // as long as the unit may walk them.
    unsafe { iommu.attach(LSI, id, dom.root()) }.unwrap();
    iommu.enable().unwrap();
    core::mem::forget(dom);
    // SAFETY: no DMA is in flight (the fake has none).
    assert_eq!(unsafe { iommu.disable() }, Err(IommuError::TimedOut));
    let tables = table_frames(&db);
    drop(iommu);
    assert_eq!(
        table_frames(&db),
        tables,
        "root, context and domain tables all still held"
    );
    // A unit that does stop gives its own tables back (the domain's, leaked
    // above, are not its own).
    // SAFETY: as above.
    let iommu = unsafe { Iommu::new(FakeVtd::new(), mapper(), &db) }.unwrap();
    let id2 = DomainId::new(2).unwrap();
    let dom = domain(&iommu, id2, &db, mapper(), &db).unwrap();
    // SAFETY: the domain lives until after `detach` below.
    unsafe { iommu.attach(EDU, id2, dom.root()) }.unwrap();
    iommu.detach(EDU).unwrap();
    drop(dom);
    drop(iommu);
    assert_eq!(table_frames(&db), tables, "only the first unit's leak left");
}

/// A copy engine whose DMA goes through the fake unit as device `source`:
/// each copy reads every page of its source and writes every page of its
/// destination at `issue`, and, like the LSI53C895A after a refused write,
/// reports it done whatever the unit answered. A `lazy` one runs what was
/// issued only when it is stopped, and reports it done then (a request the
/// engine finished between the channel's last look and its `terminate`).
struct Behind<'a> {
    unit: &'a FakeVtd,
    source: SourceId,
    prepared: Vec<(Cookie, Op)>,
    issued: Vec<(Cookie, Op)>,
    lazy: bool,
    done: Option<Cookie>,
}

impl<'a> Behind<'a> {
    fn new(unit: &'a FakeVtd, source: SourceId, lazy: bool) -> Self {
        Behind {
            unit,
            source,
            prepared: Vec::new(),
            issued: Vec::new(),
            lazy,
            done: None,
        }
    }

    /// Runs the issued copies' DMA; returns the last one's cookie.
    fn run(&mut self) -> Option<Cookie> {
        let mut last = None;
        for (cookie, op) in self.issued.drain(..) {
            if let Op::Copy { dst, src, len } = op {
                let pages = |at: u64| (at & !0xfff..at + len as u64).step_by(4096);
                for page in pages(src) {
                    let _ = self.unit.dma(self.source.raw(), page, false);
                }
                for page in pages(dst) {
                    let _ = self.unit.dma(self.source.raw(), page, true);
                }
            }
            last = Some(cookie);
        }
        last
    }
}

// SAFETY: it runs its requests synchronously in `issue` and `terminate`,
// through the fake unit; nothing touches memory after it reports.
unsafe impl Engine for Behind<'_> {
    type Mark = usize;
    type Hal = crate::hal::fake::FakeHal;
    fn capabilities(&self) -> Capabilities {
        Capabilities::COPY
    }
    fn limits(&self) -> Limits {
        Limits {
            max_len: 1 << 20,
            dma_mask: u64::MAX,
            align: 1,
        }
    }
    fn mark(&self) -> usize {
        self.prepared.len()
    }
    unsafe fn rewind(&mut self, mark: usize) {
        self.prepared.truncate(mark);
    }
    unsafe fn prep(
        &mut self,
        cookie: Cookie,
        op: Op,
        _end: Option<Notify>,
    ) -> Result<(), EngineError> {
        self.prepared.push((cookie, op));
        Ok(())
    }
    fn issue(&mut self) {
        self.issued.append(&mut self.prepared);
        if !self.lazy {
            self.done = self.run().or(self.done);
        }
    }
    fn poll(&mut self, _check_hardware: bool) -> Progress {
        Progress {
            completed: self.done.take(),
            fault: None,
        }
    }
    fn handle_interrupt(&mut self) -> bool {
        false
    }
    fn terminate(&mut self) -> Termination {
        self.prepared.clear();
        Termination {
            completed: self.run().or(self.done.take()),
            stopped: true,
        }
    }
    fn reset(&mut self) -> Result<(), DmaError> {
        Ok(())
    }
}

/// The set-up the hooked-channel tests share: a unit (`$iommu`) over a
/// fresh frame database, a domain that maps two pages at [`IOVA`]
/// attached for the LSI, translation on, and a channel (`$chan`) of the
/// fake engine behind it with the unit's fault hook. A macro, because
/// the values borrow one another and must all live to the test's end
/// (each test detaches the LSI when it is done).
macro_rules! hooked_lsi_behind_a_domain {
    ($iommu:ident, $chan:ident) => {
        let mem = Memory::new(32);
        let db = mem.db();
        // SAFETY: as in the tests above.
        let $iommu = unsafe { Iommu::new(FakeVtd::new(), mapper(), &db) }.unwrap();
        let id = DomainId::new(1).unwrap();
        let mut dom = domain(&$iommu, id, &db, mapper(), &db).unwrap();
        let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
        let area = dom.map_vma(page(IOVA), 2, rw).unwrap();
        let pages: Vec<PageRef<'_>> = (0..2).map(|_| db.alloc_page().unwrap()).collect();
        dom.insert_pages(area, page(IOVA), &pages).unwrap();
        // SAFETY: the domain lives until the test detaches it.
        unsafe { $iommu.attach(LSI, id, dom.root()) }.unwrap();
        $iommu.enable().unwrap();
        let mut $chan = Channel::new(Behind::new(&$iommu.regs, LSI, false));
        // SAFETY: the unit outlives the channel, and this thread is the
        // only one using either.
        unsafe { $chan.set_fault_hook(Some(FaultHook::new(&$iommu, LSI))) };
    };
}

/// Bug 5 of issue 17: a copy whose write the unit refused was reported
/// `Complete` (the engine never learns of it) until someone read the fault
/// and called `fail_at`. With the unit's fault hook, the channel reads its
/// device's faults before it calls anything complete, and a fault of
/// another device, read on the way, stays for its owner.
#[test]
fn a_request_whose_write_the_unit_refused_never_reads_complete() {
    hooked_lsi_behind_a_domain!(iommu, chan);
    let copy = |chan: &mut Channel<Behind<'_>>, dst: u64| {
        // SAFETY: the fake moves no bytes.
        let cookie = unsafe { chan.prep_copy(dst, IOVA, 64, PrepFlags::empty()) }.unwrap();
        chan.issue_pending();
        cookie
    };
    // Another device's stray read, recorded first.
    assert_eq!(iommu.regs.dma(EDU.raw(), 0x5000, false), Access::Fault(2));
    let good = copy(&mut chan, IOVA + 0x1000);
    assert_eq!(chan.status(good).status, Status::Complete);
    // The LSI writes a page its domain does not map: refused, yet the
    // engine reports the copy done.
    let stray = copy(&mut chan, 0x7000_0000);
    let after = copy(&mut chan, IOVA + 0x1000);
    assert_eq!(
        chan.status(stray).status,
        Status::Error(ErrorKind::WriteFailed)
    );
    assert_eq!(chan.status(after).status, Status::Error(ErrorKind::Aborted));
    assert_eq!(chan.status(good).status, Status::Complete);
    assert!(chan.is_halted());
    assert_eq!(
        iommu.take_fault().map(|f| (f.source, f.address)),
        Some((EDU, 0x5000)),
        "the other device's fault kept for its owner"
    );
    assert_eq!(iommu.take_fault(), None, "the LSI's was claimed");
    drop(chan);
    iommu.detach(LSI).unwrap();
}

/// `take_fault_of` hands each device its own faults, oldest first, and
/// keeps the rest; `take_fault` returns the kept ones first.
#[test]
fn faults_are_taken_per_device_and_none_is_lost() {
    let mem = Memory::new(16);
    let db = mem.db();
    // SAFETY: as in the tests above.
    let iommu = unsafe { Iommu::new(FakeVtd::new(), mapper(), &db) }.unwrap();
    iommu.enable().unwrap();
    let v = &iommu.regs;
    // The fake has one recording register, as QEMU's unit: each fault is
    // read out before the next.
    assert_eq!(v.dma(EDU.raw(), 0x1000, true), Access::Fault(1));
    assert_eq!(iommu.take_fault_of(LSI), None);
    assert_eq!(v.dma(EDU.raw(), 0x2000, false), Access::Fault(1));
    assert_eq!(iommu.take_fault_of(LSI), None);
    assert_eq!(v.dma(LSI.raw(), 0x3000, true), Access::Fault(1));
    assert_eq!(iommu.take_fault_of(LSI).map(|f| f.address), Some(0x3000));
    assert_eq!(iommu.take_fault_of(LSI), None);
    assert_eq!(iommu.take_fault_of(EDU).map(|f| f.address), Some(0x1000));
    assert_eq!(iommu.take_fault().map(|f| f.address), Some(0x2000));
    assert_eq!(iommu.take_fault(), None);
}

/// A fault of the channel's device that no remembered request explains
/// (the engine's own memory, say) leaves no outstanding request able to
/// read `Complete`: they all end, the first `BusFault`.
#[test]
fn a_fault_no_request_explains_ends_the_outstanding_ones() {
    let mem = Memory::new(16);
    let db = mem.db();
    // SAFETY: as in the tests above.
    let iommu = unsafe { Iommu::new(FakeVtd::new(), mapper(), &db) }.unwrap();
    iommu.enable().unwrap();
    let mut chan = Channel::new(Behind::new(&iommu.regs, LSI, false));
    // SAFETY: the unit outlives the channel; one thread.
    unsafe { chan.set_fault_hook(Some(FaultHook::new(&iommu, LSI))) };
    // SAFETY: the fake moves no bytes.
    let a = unsafe { chan.prep_copy(0x10_0000, 0x20_0000, 64, PrepFlags::empty()) }.unwrap();
    chan.poll();
    assert_eq!(chan.status(a).status, Status::InProgress, "no fault yet");
    assert_eq!(iommu.regs.dma(LSI.raw(), 0x9000, false), Access::Fault(1));
    assert_eq!(chan.status(a).status, Status::Error(ErrorKind::BusFault));
    assert!(chan.is_halted());
    assert_eq!(iommu.take_fault(), None, "claimed");
}

/// What the engine's own `terminate` reports complete may include refused
/// DMA made after the channel last looked: it is checked too.
#[test]
fn refused_dma_finished_while_the_engine_stops_is_not_called_complete() {
    let mem = Memory::new(16);
    let db = mem.db();
    // SAFETY: as in the tests above.
    let iommu = unsafe { Iommu::new(FakeVtd::new(), mapper(), &db) }.unwrap();
    iommu.enable().unwrap();
    let mut chan = Channel::new(Behind::new(&iommu.regs, LSI, true));
    // SAFETY: the unit outlives the channel; one thread.
    unsafe { chan.set_fault_hook(Some(FaultHook::new(&iommu, LSI))) };
    // SAFETY: the fake moves no bytes.
    let a = unsafe { chan.prep_copy(0x10_0000, 0x20_0000, 64, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    assert_eq!(chan.status(a).status, Status::InProgress);
    chan.terminate();
    // Attached to nothing, its first access (the read) is refused.
    assert_eq!(chan.status(a).status, Status::Error(ErrorKind::ReadFailed));
    assert_eq!(iommu.take_fault(), None, "claimed");
}

/// The unit's one fault recording register (QEMU's unit has one too) is
/// held by another device's fault that nobody has read yet, so the unit
/// drops the LSI's refused write and sets FSTS.PFO only. The channel's
/// hook reads the other device's fault and the overflow: the LSI is told
/// its faults were lost, and its copy, whose write never reached memory,
/// does not read `Complete` (`Channel::set_fault_hook`'s promise).
#[test]
fn a_refused_write_lost_to_a_full_fault_record_never_reads_complete() {
    hooked_lsi_behind_a_domain!(iommu, chan);
    // Another device's stray read, recorded and not yet read by anyone.
    assert_eq!(iommu.regs.dma(EDU.raw(), 0x5000, false), Access::Fault(2));
    // The LSI writes a page its domain does not map: refused (the engine
    // reports the copy done anyway).
    // SAFETY: the fake moves no bytes.
    let stray = unsafe { chan.prep_copy(0x7000_0000, IOVA, 64, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    assert_ne!(
        chan.status(stray).status,
        Status::Complete,
        "the unit refused this copy's write"
    );
    drop(chan);
    iommu.detach(LSI).unwrap();
}

/// The kernel's fault handler, as `enable_fault_interrupts` describes it,
/// drains every fault with `take_fault`, the LSI's included, between its
/// refused DMA and the channel's next look: the LSI is owed a report of
/// the fault, so its refused copy does not read `Complete`.
#[test]
fn a_fault_handler_draining_take_fault_leaves_no_refused_copy_complete() {
    hooked_lsi_behind_a_domain!(iommu, chan);
    // SAFETY: the fake moves no bytes.
    let stray = unsafe { chan.prep_copy(0x7000_0000, IOVA, 64, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    // The kernel's fault handler, as `enable_fault_interrupts` describes it.
    while iommu.take_fault().is_some() {}
    assert_ne!(
        chan.status(stray).status,
        Status::Complete,
        "the unit refused this copy's write"
    );
    drop(chan);
    iommu.detach(LSI).unwrap();
}

/// Faults the unit could not record (FSTS.PFO) belong to nobody known:
/// every device's `take_fault_of` reports them once, after its recorded
/// faults, as a fault no request's page matches.
#[test]
fn every_device_is_told_once_of_faults_the_unit_could_not_record() {
    let mem = Memory::new(8);
    let db = mem.db();
    // SAFETY: the fake is this unit's register window, written only by
    // this `Iommu`; tables from the database, reached 1:1.
    let unit = unsafe { FakeVtd::new() };
    // SAFETY: as above.
    let iommu = unsafe { Iommu::new(&unit, mapper(), &db) }.unwrap();
    iommu.enable().unwrap();
    let other = SourceId::new(0, 5, 0);
    // Nothing is attached: every access is refused. The EDU's fills the
    // one record, the LSI's is dropped.
    assert!(matches!(
        unit.dma(EDU.raw(), 0x5000, false),
        Access::Fault(_)
    ));
    assert!(matches!(
        unit.dma(LSI.raw(), 0x6000, true),
        Access::Fault(_)
    ));
    let lost = DmaFault::lost(LSI);
    assert!(lost.is_lost());
    assert_eq!(
        iommu.take_fault_of(LSI),
        Some(lost),
        "the LSI's fault was lost"
    );
    assert_eq!(iommu.take_fault_of(LSI), None, "told once");
    let edu: Vec<_> = core::iter::from_fn(|| iommu.take_fault_of(EDU)).collect();
    assert_eq!(
        edu.iter()
            .map(|f| (f.address, f.is_lost()))
            .collect::<Vec<_>>(),
        [(0x5000, false), (DmaFault::LOST_ADDRESS, true)]
    );
    assert_eq!(
        iommu.take_fault_of(other),
        Some(DmaFault::lost(other)),
        "a device that has not asked yet"
    );
    assert_eq!(iommu.take_fault_of(other), None);
    assert_eq!(iommu.take_fault(), None);
}

/// `Iommu::new` clears the records and PFO an earlier driver (firmware)
/// left: while PFO is set the unit records nothing new, so the first
/// refused access under the new driver would be lost.
#[test]
fn a_new_driver_clears_the_faults_left_from_before() {
    let mem = Memory::new(8);
    let db = mem.db();
    // SAFETY: the fake is this unit's register window, written by one
    // `Iommu` at a time; tables from the database, reached 1:1.
    let unit = unsafe { FakeVtd::new() };
    // SAFETY: as above.
    let before = unsafe { Iommu::new(&unit, mapper(), &db) }.unwrap();
    before.enable().unwrap();
    assert!(matches!(
        unit.dma(EDU.raw(), 0x5000, false),
        Access::Fault(_)
    ));
    assert!(matches!(
        unit.dma(LSI.raw(), 0x6000, true),
        Access::Fault(_)
    ));
    drop(before);
    // SAFETY: as above; the earlier `Iommu` is gone.
    let iommu = unsafe { Iommu::new(&unit, mapper(), &db) }.unwrap();
    iommu.enable().unwrap();
    assert!(matches!(
        unit.dma(LSI.raw(), 0x7000, true),
        Access::Fault(_)
    ));
    assert_eq!(
        iommu.take_fault_of(LSI).map(|f| f.address),
        Some(0x7000),
        "recorded"
    );
    assert_eq!(
        iommu.take_fault_of(LSI),
        None,
        "nothing lost under this driver"
    );
    assert_eq!(iommu.take_fault(), None, "the old records are gone");
}

/// A fault `take_fault` took (a kernel's handler draining the unit) is
/// still its device's: that device's next `take_fault_of` reports it
/// lost, and no other device's.
#[test]
fn a_fault_take_fault_took_is_reported_lost_to_its_device_alone() {
    let mem = Memory::new(8);
    let db = mem.db();
    // SAFETY: as in the tests above.
    let unit = unsafe { FakeVtd::new() };
    // SAFETY: as above.
    let iommu = unsafe { Iommu::new(&unit, mapper(), &db) }.unwrap();
    iommu.enable().unwrap();
    assert!(matches!(
        unit.dma(LSI.raw(), 0x6000, true),
        Access::Fault(_)
    ));
    assert_eq!(iommu.take_fault().map(|f| f.address), Some(0x6000));
    assert_eq!(iommu.take_fault_of(EDU), None, "not the EDU's");
    assert_eq!(iommu.take_fault_of(LSI), Some(DmaFault::lost(LSI)));
    assert_eq!(iommu.take_fault_of(LSI), None, "told once");
}

/// More devices owed a report than the unit can name: none of them misses
/// its report; only then does every device get one (a spurious report for
/// those owed nothing, never a missed one), and each device is told once.
#[test]
fn devices_owed_past_what_the_unit_names_are_all_told_once() {
    let mem = Memory::new(8);
    let db = mem.db();
    // SAFETY: as in the tests above.
    let unit = unsafe { FakeVtd::new() };
    // SAFETY: as above.
    let iommu = unsafe { Iommu::new(&unit, mapper(), &db) }.unwrap();
    iommu.enable().unwrap();
    let devices: Vec<SourceId> = (0..=super::OWED_DEVICES as u8)
        .map(|d| SourceId::new(1, d % 32, d / 32))
        .collect();
    let steal = |device: SourceId| {
        assert!(matches!(
            unit.dma(device.raw(), 0x6000, true),
            Access::Fault(_)
        ));
        assert_eq!(iommu.take_fault().map(|f| f.source), Some(device));
    };
    for &device in &devices[..super::OWED_DEVICES] {
        steal(device);
    }
    assert_eq!(
        iommu.take_fault_of(EDU),
        None,
        "owed nothing, while all are named"
    );
    steal(devices[super::OWED_DEVICES]);
    for &device in devices.iter().chain([&EDU]) {
        assert_eq!(
            iommu.take_fault_of(device),
            Some(DmaFault::lost(device)),
            "{device:?}"
        );
        assert_eq!(iommu.take_fault_of(device), None, "{device:?} told once");
    }
}

/// Other devices' faults kept for their owners no longer stop the reading
/// of the records once `UNCLAIMED_FAULTS` wait: the oldest makes way (its
/// device is owed a report), so the LSI's refused access still reaches the
/// LSI, here as a loss since the unit could not record it.
#[test]
fn kept_faults_that_fill_the_buffer_hide_no_devices_refused_access() {
    let mem = Memory::new(8);
    let db = mem.db();
    // SAFETY: as in the tests above.
    let unit = unsafe { FakeVtd::new() };
    // SAFETY: as above.
    let iommu = unsafe { Iommu::new(&unit, mapper(), &db) }.unwrap();
    iommu.enable().unwrap();
    let edu_page = |i: u64| 0x10_0000 + 0x1000 * i;
    for i in 0..super::UNCLAIMED_FAULTS as u64 {
        assert!(matches!(
            unit.dma(EDU.raw(), edu_page(i), false),
            Access::Fault(_)
        ));
        assert_eq!(iommu.take_fault_of(LSI), None, "kept for the EDU");
    }
    let last = super::UNCLAIMED_FAULTS as u64;
    assert!(matches!(
        unit.dma(EDU.raw(), edu_page(last), false),
        Access::Fault(_)
    ));
    assert!(matches!(
        unit.dma(LSI.raw(), 0x6000, true),
        Access::Fault(_)
    ));
    assert_eq!(iommu.take_fault_of(LSI), Some(DmaFault::lost(LSI)));
    let edu: Vec<_> = core::iter::from_fn(|| iommu.take_fault_of(EDU))
        .map(|f| f.address)
        .collect();
    let mut want: Vec<u64> = (1..=last).map(edu_page).collect();
    want.push(DmaFault::LOST_ADDRESS);
    assert_eq!(edu, want, "the oldest made way, and the EDU is told");
}

/// A unit with three fault recording registers (real units have several;
/// the fake has one), filled as the hardware fills them: round robin from
/// the index FSTS.FRI reports for the first pending one (spec 7.3.1).
struct ThreeRecords {
    unit: FakeVtd,
    /// (low, high) of each record.
    records: std::cell::RefCell<[(u64, u64); 3]>,
    /// FSTS.FRI: the first pending record.
    fri: std::cell::Cell<u32>,
}

const FRO: usize = super::fake::FRO;

impl crate::mmio::Registers for ThreeRecords {
    fn read8(&self, offset: usize) -> u8 {
        self.unit.read8(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.unit.write8(offset, value)
    }
    fn read32(&self, offset: usize) -> u32 {
        if offset == regs::FSTS {
            let pending = self.records.borrow().iter().any(|r| r.1 >> 63 != 0);
            return u32::from(pending) << 1 | self.fri.get() << 8;
        }
        self.unit.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.unit.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        if offset == regs::CAP {
            // NFR (bits 47:40) = 2: three records.
            return self.unit.read64(offset) | 2 << 40;
        }
        if (FRO..FRO + 48).contains(&offset) {
            let r = self.records.borrow()[(offset - FRO) / 16];
            return if (offset - FRO).is_multiple_of(16) {
                r.0
            } else {
                r.1
            };
        }
        self.unit.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        if (FRO..FRO + 48).contains(&offset) && (offset - FRO) % 16 == 8 {
            if value >> 63 != 0 {
                self.records.borrow_mut()[(offset - FRO) / 16] = (0, 0);
            }
            return;
        }
        self.unit.write64(offset, value)
    }
    fn accesses(&self) -> u64 {
        self.unit.accesses()
    }
    fn reads(&self) -> u64 {
        self.unit.reads()
    }
}

/// `Iommu::take_fault` promises "the oldest recorded fault", but the
/// records were scanned from index 0, ignoring FSTS.FRI, so on a unit with
/// more than one record, once the hardware's round robin had wrapped, a
/// newer fault (in record 0) came out before older ones. Now the scan
/// starts at FRI.
#[test]
fn take_fault_returns_the_oldest_fault_on_a_unit_with_several_records() {
    let mem = Memory::new(16);
    let db = mem.db();
    let unit = ThreeRecords {
        // SAFETY: its registers are written only by the `Iommu` below.
        unit: unsafe { FakeVtd::new() },
        records: std::cell::RefCell::new([(0, 0); 3]),
        fri: std::cell::Cell::new(0),
    };
    // SAFETY: the fake is this unit's window; tables from host memory.
    let iommu = unsafe { Iommu::new(unit, mapper(), &db) }.unwrap();
    let record = |page: u64| {
        (
            page,
            1u64 << 63 | 1 << 62 | 6u64 << 32 | u64::from(LSI.raw()),
        )
    };
    // Earlier faults filled records 0 and 1 and were read; the hardware
    // then recorded at 2 (oldest now), wrapped, and recorded at 0.
    iommu.regs.records.borrow_mut()[2] = record(0x1000);
    iommu.regs.records.borrow_mut()[0] = record(0x2000);
    iommu.regs.fri.set(2);
    let order: Vec<_> = core::iter::from_fn(|| iommu.take_fault().map(|f| f.address)).collect();
    assert_eq!(
        order,
        [0x1000, 0x2000],
        "the older fault, in record 2 (FRI), first"
    );
}

/// The interrupt handler took the first copy's fault (its device is owed a
/// lost report), then the second copy's was recorded: the channel drains
/// the recorded one first and the lost one after, and pins the earliest
/// cause, so neither copy reads `Complete`.
#[test]
fn a_lost_fault_reported_after_a_later_recorded_one_still_fails_the_first_copy() {
    hooked_lsi_behind_a_domain!(iommu, chan);
    // SAFETY: the fake moves no bytes.
    let first = unsafe { chan.prep_copy(0x7000_0000, IOVA, 64, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    // The kernel's fault handler, as `enable_fault_interrupts` describes it.
    while iommu.take_fault().is_some() {}
    // SAFETY: the fake moves no bytes.
    let second = unsafe { chan.prep_copy(0x7100_0000, IOVA, 64, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    let (s1, s2) = (chan.status(first).status, chan.status(second).status);
    assert_ne!(s2, Status::Complete, "the second copy's write was refused");
    assert_ne!(
        s1,
        Status::Complete,
        "the first copy's write was refused too"
    );
    drop(chan);
    iommu.detach(LSI).unwrap();
}

/// A unit with several records whose round robin wrapped past a stale
/// FSTS.FRI gives the newer fault first: the channel still pins the
/// earlier copy (the earliest cause, not the first drained).
#[test]
fn faults_read_newest_first_still_fail_the_earliest_refused_copy() {
    let mem = Memory::new(16);
    let db = mem.db();
    let unit = ThreeRecords {
        // SAFETY: its registers are written only by the `Iommu` below.
        unit: unsafe { FakeVtd::new() },
        records: std::cell::RefCell::new([(0, 0); 3]),
        fri: std::cell::Cell::new(0),
    };
    // SAFETY: the fake is this unit's window; tables from host memory.
    let iommu = unsafe { Iommu::new(unit, mapper(), &db) }.unwrap();
    let mut chan = Channel::new(Behind::new(&iommu.regs.unit, LSI, false));
    // SAFETY: the unit outlives the channel; one thread.
    unsafe { chan.set_fault_hook(Some(FaultHook::new(&iommu, LSI))) };
    // SAFETY: the fake moves no bytes.
    let first = unsafe { chan.prep_copy(0x7000_0000, IOVA, 64, PrepFlags::empty()) }.unwrap();
    // SAFETY: as above.
    let second = unsafe { chan.prep_copy(0x7100_0000, IOVA, 64, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    let write_fault = |page: u64| (page, 1u64 << 63 | 5u64 << 32 | u64::from(LSI.raw()));
    iommu.regs.fri.set(0);
    iommu.regs.records.borrow_mut()[2] = write_fault(0x7000_0000);
    iommu.regs.records.borrow_mut()[0] = write_fault(0x7100_0000);
    // The engine (not lazy) ran both in `issue_pending` and reports them
    // done at the next poll.
    let (s1, s2) = (chan.status(first).status, chan.status(second).status);
    assert_ne!(s2, Status::Complete, "the second copy's write was refused");
    assert_ne!(
        s1,
        Status::Complete,
        "the first copy's write was refused too"
    );
}
