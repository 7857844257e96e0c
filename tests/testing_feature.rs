//! The `testing` feature as a kernel outside the crate uses it: only the
//! public API, a fake Hal and fake devices under the crate's own drivers.
//! `cargo test` enables the feature through the crate's dev-dependency on
//! itself.
#![cfg(feature = "testing")]

use std::alloc::{Layout, alloc_zeroed};

use dmaengine::drivers::edu::EduEngine;
use dmaengine::drivers::lsi53c895a::Lsi53c895a;
use dmaengine::engine::{Channel, PrepFlags, Status};
use dmaengine::hal::fake::{FakeHal, FakeHal32};
use dmaengine::hal::{Dma, Hal};
use dmaengine::iommu::{DomainId, Iommu, SourceId, domain};
use dmaengine::mm::frame::{FrameDb, PageInfo};
use dmaengine::mm::traits::OffsetMapper;
use dmaengine::mm::vma::VmFlags;
use dmaengine::testing::edu::FakeEdu;
use dmaengine::testing::lsi53c895a::FakeLsi;
use dmaengine::testing::vtd::{Access, FakeVtd};
use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

const GUARD: u8 = 0xee;

/// A destination of `len` guard bytes.
fn guarded<H: Hal>(len: usize) -> Dma<H> {
    let mut buf = Dma::<H>::new(len).unwrap();
    buf.as_mut_slice().fill(GUARD);
    buf
}

fn pattern<H: Hal>(len: usize) -> Dma<H> {
    let mut buf = Dma::<H>::new(len).unwrap();
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 31 + 7) as u8;
    }
    buf
}

#[test]
fn the_fake_hal_refuses_what_it_cannot_allocate_whoever_asks() {
    // `Hal::dma_alloc` is safe to call: a kernel's glue may ask the fake
    // directly, with any count.
    assert!(FakeHal::dma_alloc(0, u64::MAX).is_none());
    assert!(FakeHal::dma_alloc(usize::MAX / 4096 + 2, u64::MAX).is_none());
    assert!(
        FakeHal32::dma_alloc(1, 0xff_ffff).is_none(),
        "below the arena"
    );
    let (paddr, ptr) = FakeHal::dma_alloc(2, u64::MAX).unwrap();
    assert!(FakeHal::is_live(paddr));
    // SAFETY: the allocation just made, of two pages, used by nothing.
    unsafe { FakeHal::dma_dealloc(paddr, ptr, 2) };
    assert!(!FakeHal::is_live(paddr));
}

#[test]
fn a_channel_on_the_fake_lsi_copies_only_what_it_was_asked_to() {
    // SAFETY: the fake chip is driven by this engine alone and moves only
    // the buffers this test hands the channel.
    let engine = unsafe { Lsi53c895a::<FakeHal32, _>::new(FakeLsi::new()) }.unwrap();
    let mut chan = Channel::new(engine);
    // SAFETY: only the fake's slice length is set; no register is touched.
    unsafe { chan.engine().regs() }.set_slice(1);
    let src = pattern::<FakeHal32>(4096);
    let dst = guarded::<FakeHal32>(4096);
    // Two copies in one batch, with a gap between them that stays guard.
    // SAFETY: both buffers are this test's, read only once the requests
    // ended (or, if they never end, never: the test fails first).
    let cookies = unsafe {
        [
            chan.prep_copy(dst.paddr() + 16, src.paddr(), 1000, PrepFlags::empty()),
            chan.prep_copy(
                dst.paddr() + 2048,
                src.paddr() + 1000,
                2000,
                PrepFlags::empty(),
            ),
        ]
    }
    .map(Result::unwrap);
    chan.issue_pending();
    // One instruction per slice: the chain runs only as the test ticks the
    // chip, as QEMU's timer would.
    let mut ticks = 0;
    while cookies
        .iter()
        .any(|&c| chan.status(c).status == Status::InProgress)
    {
        assert!(ticks < 1000, "the chain never finished");
        // SAFETY: the fake's timer fires; no register is touched.
        unsafe { chan.engine().regs() }.tick();
        ticks += 1;
    }
    assert!(ticks > 1, "the chain paused and resumed");
    for cookie in cookies {
        assert_eq!(chan.status(cookie).status, Status::Complete);
    }
    let (s, d) = (src.as_slice(), dst.as_slice());
    assert_eq!(&d[16..1016], &s[..1000]);
    assert_eq!(&d[2048..4048], &s[1000..3000]);
    let guards = d[..16].iter().chain(&d[1016..2048]).chain(&d[4048..]);
    assert!(
        guards.into_iter().all(|&b| b == GUARD),
        "bytes around the copies untouched"
    );
}

#[test]
fn a_channel_on_the_fake_edu_copies_through_the_device_buffer() {
    // SAFETY: the fake device is driven by this engine alone, moves only
    // the buffers this test hands the channel and drops no address bit.
    let engine = unsafe { EduEngine::<FakeHal, _>::new(FakeEdu::new(3), u64::MAX) }.unwrap();
    let mut chan = Channel::new(engine);
    let src = pattern::<FakeHal>(6000);
    let dst = guarded::<FakeHal>(6004);
    // SAFETY: both buffers are this test's, read once the request ended.
    let cookie =
        unsafe { chan.prep_copy(dst.paddr() + 2, src.paddr(), 6000, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    let mut polls = 0;
    while chan.status(cookie).status == Status::InProgress {
        polls += 1;
        assert!(polls < 10_000, "the copy never finished");
    }
    assert_eq!(chan.status(cookie).status, Status::Complete);
    let d = dst.as_slice();
    assert_eq!(&d[2..6002], src.as_slice());
    assert_eq!([d[0], d[1], d[6002], d[6003]], [GUARD; 4]);
    // SAFETY: the fake's count is read; no register is touched.
    let transfers = unsafe { chan.engine().regs() }.transfers();
    assert_eq!(transfers, 4, "two pieces, each into the device and out");
}

#[test]
fn the_fake_vtd_confines_a_device_to_its_domain() {
    const FRAMES: usize = 32;
    // Host memory for the tables and the device's page: the unit reads
    // tables at their physical address, so the frames' physical address is
    // their host address. Left allocated: the process ends soon.
    let layout = Layout::from_size_align(FRAMES * 4096, 4096).unwrap();
    // SAFETY: the layout is not empty.
    let base = unsafe { alloc_zeroed(layout) };
    assert!(!base.is_null());
    let infos: Vec<PageInfo> = (0..FRAMES).map(|_| PageInfo::default()).collect();
    let first = PhysFrame::containing_address(PhysAddr::new(base as u64));
    // SAFETY: the frames are this allocation, which only the database
    // hands out while it lives.
    let db = unsafe { FrameDb::new(&infos, first) };
    // SAFETY: host memory is reached at its "physical" address.
    let mapper = || unsafe { OffsetMapper::new(VirtAddr::zero()) };

    // SAFETY: the unit is driven by this Iommu alone, over the tables the
    // database gives it in host memory.
    let unit = unsafe { FakeVtd::new() };
    // SAFETY: as above; dropping the Iommu turns translation off, and no
    // device of this test has DMA in flight then.
    let iommu = unsafe { Iommu::new(&unit, mapper(), &db) }.unwrap();
    let lsi = SourceId {
        bus: 0,
        device: 3,
        function: 0,
    };
    let other = SourceId {
        bus: 0,
        device: 4,
        function: 0,
    };
    let id = DomainId::new(1).unwrap();
    let mut dom = domain(&iommu, id, &db, mapper(), &db).unwrap();
    let iova = Page::from_start_address(VirtAddr::new(0x40_0000)).unwrap();
    let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
    let area = dom.map_vma(iova, 2, rw).unwrap();
    let page = db.alloc_page().unwrap();
    dom.insert_pages(area, iova, std::slice::from_ref(&page))
        .unwrap();
    // SAFETY: the domain outlives the attachment: detached below.
    unsafe { iommu.attach(lsi, id, dom.root()) }.unwrap();
    iommu.enable().unwrap();

    assert_eq!(
        unit.dma(lsi.raw(), 0x40_0123, true),
        Access::Ok(page.phys().as_u64() + 0x123),
        "the mapped page is reached"
    );
    assert_eq!(iommu.take_fault(), None);
    // The area's second page has no page in it, and 0x1000 is no area.
    for (address, write) in [(0x40_1000, true), (0x1000, false)] {
        assert!(matches!(
            unit.dma(lsi.raw(), address, write),
            Access::Fault(_)
        ));
        let fault = iommu.take_fault().expect("the refusal is reported");
        assert_eq!(
            (fault.source, fault.address, fault.write),
            (lsi, address, write)
        );
    }
    // A device attached to no domain reaches nothing.
    assert!(matches!(
        unit.dma(other.raw(), 0x40_0000, false),
        Access::Fault(_)
    ));
    assert_eq!(iommu.take_fault().map(|f| f.source), Some(other));

    iommu.detach(lsi).unwrap();
    assert!(matches!(
        unit.dma(lsi.raw(), 0x40_0123, true),
        Access::Fault(_)
    ));
    assert_eq!(iommu.take_fault().map(|f| f.source), Some(lsi));
}
