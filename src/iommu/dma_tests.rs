//! Host tests of the per-device IOVA layer against the fake unit: each
//! device reaches exactly the memory its own space mapped for it, at IOVAs
//! its window gave, until that memory goes back; a channel over it moves
//! real bytes and learns of its device's refused DMA.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::dma::{DeviceDma, IommuPlatform, IovaHal, StaticUnit, UnitLock, WINDOW_PAGES};
use super::fake::{Access, FakeVtd};
use super::testing::{EDU, LSI};
use super::{DomainId, Iommu, IommuError, SourceId, regs};
use crate::drivers::cpu::CpuEngine;
use crate::engine::shared::NoMasking;
use crate::engine::{Channel, ErrorKind, PrepFlags, Status};
use crate::hal::fake::FakeHal;
use crate::hal::{Direction, Dma, DmaAddr, Hal, SharedBuffer};
use crate::mm::frame::FrameDb;
use crate::mm::testing::{Memory, mapper};
use crate::mm::traits::OffsetMapper;

type Unit = StaticUnit<FakeVtd, OffsetMapper, &'static FrameDb<'static>, NoMasking>;

/// Frames for the unit's and the domains' tables, for the whole run.
fn tables() -> &'static FrameDb<'static> {
    let mem: &'static Memory = Box::leak(Box::new(Memory::new(256)));
    Box::leak(Box::new(mem.db()))
}

/// One unit per test (tests run in parallel).
static UNITS: [Unit; 6] = [const { StaticUnit::new() }; 6];

struct TestUnit<const N: usize>;

/// Pages each unit's devices hold of the fake Hal (tests run in parallel,
/// so the fake's own total is no measure).
static LIVE: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];

/// The fake Hal, counted per unit.
struct Counted<const N: usize>;

// SAFETY: the fake Hal's memory, passed through.
unsafe impl<const N: usize> Hal for Counted<N> {
    fn dma_alloc(pages: usize, dma_mask: u64) -> Option<(DmaAddr, NonNull<u8>)> {
        let got = FakeHal::dma_alloc(pages, dma_mask)?;
        LIVE[N].fetch_add(pages, Ordering::SeqCst);
        Some(got)
    }
    unsafe fn dma_dealloc(paddr: DmaAddr, vaddr: NonNull<u8>, pages: usize) {
        LIVE[N].fetch_sub(pages, Ordering::SeqCst);
        // SAFETY: the caller's contract, passed on.
        unsafe { FakeHal::dma_dealloc(paddr, vaddr, pages) }
    }
    fn phys_to_virt(paddr: DmaAddr) -> NonNull<u8> {
        FakeHal::phys_to_virt(paddr)
    }
}

fn live<const N: usize>() -> usize {
    LIVE[N].load(Ordering::SeqCst)
}

// SAFETY: the fake Hal's addresses are host addresses, which are the
// test's physical addresses, and so are pointers.
unsafe impl<const N: usize> IommuPlatform for TestUnit<N> {
    type Unit = Unit;
    type Memory = Counted<N>;

    fn unit() -> &'static Unit {
        &UNITS[N]
    }

    fn virt_to_phys(va: *const u8) -> Option<u64> {
        Some(va as u64)
    }
}

/// A fresh unit `N`, translation on.
fn unit<const N: usize>() {
    unit_with::<N>(regs::Cap::empty());
}

/// A fresh unit `N` that also reports CAP bits `cap`, translation on.
fn unit_with<const N: usize>(cap: regs::Cap) {
    // SAFETY: the fake is this unit's window; tables from host memory.
    let unit = unsafe { Iommu::new(FakeVtd::new().and_cap(cap), mapper(), tables()) }.unwrap();
    unit.enable().unwrap();
    assert!(UNITS[N].install(unit).is_ok(), "one unit per test");
}

fn dma<const N: usize>(source: SourceId, iova: u64, write: bool) -> Access {
    UNITS[N].with_unit(|unit| unit.regs.dma(source.raw(), iova, write))
}

/// Declares device type `$name` on unit `$unit`, its space at `$base`.
macro_rules! device {
    ($name:ident, $unit:literal, $base:expr) => {
        crate::iova_device!($name: TestUnit<$unit>, $base);
    };
}

/// Attaches `$name`'s space to `source` under domain id `$id`.
macro_rules! attach {
    ($name:ident, $source:expr, $id:expr) => {
        // SAFETY: each test's devices are distinct requesters on its unit.
        unsafe { $name::space().attach($source, id($id), mapper(), tables()) }
    };
}

const WINDOW: u64 = 0x8000_0000;

struct NoDelay;

impl embedded_hal::delay::DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}
const FAR: SourceId = SourceId {
    bus: 0,
    device: 5,
    function: 0,
};

device!(Lsi0, 0, WINDOW);
device!(Edu0, 0, WINDOW);

fn id(n: u16) -> DomainId {
    DomainId::new(n).unwrap()
}

#[test]
fn each_device_reaches_its_own_memory_and_nothing_else() {
    unit::<0>();
    attach!(Lsi0, LSI, 1).unwrap();
    attach!(Edu0, EDU, 2).unwrap();

    let mut lsi = Dma::<IovaHal<Lsi0>>::new(8192).unwrap();
    let edu = Dma::<IovaHal<Edu0>>::new(4096).unwrap();
    let (at, theirs) = (lsi.paddr(), edu.paddr());
    assert!((WINDOW..WINDOW + (WINDOW_PAGES * 4096) as u64).contains(&at));
    // Both windows start at the same IOVA: only the domains tell them apart.
    assert_eq!(at, theirs);
    lsi.as_mut_slice()[4096 + 7] = 0x42;
    let phys = |access| match access {
        Access::Ok(pa) => pa,
        other => panic!("refused: {other:?}"),
    };
    // The LSI reaches its buffer, both pages, at consecutive IOVAs.
    let second = phys(dma::<0>(LSI, at + 4096 + 7, true));
    // SAFETY: the fake Hal's memory is host memory at its physical address.
    assert_eq!(unsafe { *(second as *const u8) }, 0x42);
    assert_eq!(phys(dma::<0>(LSI, at, false)), lsi.as_ptr() as u64);
    assert_eq!(phys(dma::<0>(EDU, theirs, true)), edu.as_ptr() as u64);
    // Past its buffer: refused (not present).
    assert_eq!(dma::<0>(LSI, at + 8192, false), Access::Fault(6));
    UNITS[0].with_unit(|unit| {
        assert_eq!(unit.take_fault().map(|f| f.source), Some(LSI));
    });
    assert_eq!(Lsi0::space().pages_in_use(), 2);

    // Freed: unmapped and flushed before the memory goes back.
    drop(lsi);
    assert_eq!(dma::<0>(LSI, at, false), Access::Fault(6));
    UNITS[0].with_unit(|unit| unit.take_fault());
    assert_eq!(Lsi0::space().pages_in_use(), 0);
    assert_eq!(phys(dma::<0>(EDU, theirs, false)), edu.as_ptr() as u64);
    drop(edu);
    assert_eq!(live::<0>(), 0, "all memory back");

    // A second attach of the same space is refused; after a detach, the
    // device's DMA faults until it is attached again.
    assert_eq!(attach!(Lsi0, LSI, 1), Err(IommuError::Attached));
    let again = Dma::<IovaHal<Lsi0>>::new(4096).unwrap();
    Lsi0::space().detach().unwrap();
    assert_eq!(Lsi0::space().device(), None);
    assert_eq!(dma::<0>(LSI, again.paddr(), false), Access::Fault(2));
    UNITS[0].with_unit(|unit| unit.take_fault());
    attach!(Lsi0, LSI, 1).unwrap();
    assert_eq!(
        phys(dma::<0>(LSI, again.paddr(), false)),
        again.as_ptr() as u64
    );
}

device!(Lsi1, 1, WINDOW);
device!(Other1, 1, 0x4000_0000);

#[test]
fn masks_ids_and_shared_buffers_are_checked() {
    unit::<1>();
    // Nothing before the device is attached.
    assert!(Dma::<IovaHal<Lsi1>>::new(4096).is_err());
    attach!(Lsi1, LSI, 1).unwrap();
    // Another device may not reuse the id with other tables.
    assert_eq!(attach!(Other1, EDU, 1), Err(IommuError::DomainIdInUse));
    assert_eq!(live::<1>(), 0);
    // The refusal kept nothing: the same space attaches under its own id.
    attach!(Other1, EDU, 4).unwrap();
    assert_eq!(Other1::space().device(), Some(EDU));
    // A mask below the window: no IOVA fits, nothing is left allocated.
    assert!(Dma::<IovaHal<Lsi1>>::new_below(4096, WINDOW - 1).is_err());
    assert_eq!(live::<1>(), 0);
    assert_eq!(Lsi1::space().pages_in_use(), 0);
    // A mask inside the window: the IOVA stays under it.
    let low = Dma::<IovaHal<Lsi1>>::new_below(4096, WINDOW + 0x1fff).unwrap();
    assert!(low.paddr() + 4095 <= WINDOW + 0x1fff);
    // A window that runs past 48 bits (and so past 47) is refused.
    device!(Far1, 1, (1 << 48) - 4096);
    assert_eq!(attach!(Far1, FAR, 3), Err(IommuError::BadWindow));

    // A buffer that is not DMA memory, shared for the device to read: it
    // reads it, may not write it, and loses it when unshared.
    let mut bytes = vec![0u8; 6000];
    bytes[5000] = 0x77;
    let at = SharedBuffer::<IovaHal<Lsi1>>::to_device(&bytes, |shared| {
        let iova = shared.dma_addr();
        let pa = match dma::<1>(LSI, iova + 5000, false) {
            Access::Ok(pa) => pa,
            other => panic!("refused: {other:?}"),
        };
        // SAFETY: the buffer's own byte, host memory.
        assert_eq!(unsafe { *(pa as *const u8) }, 0x77);
        assert_eq!(dma::<1>(LSI, iova, true), Access::Fault(5), "read-only");
        iova
    })
    .unwrap();
    UNITS[1].with_unit(|unit| unit.take_fault());
    assert_eq!(dma::<1>(LSI, at, false), Access::Fault(6), "unshared");
    UNITS[1].with_unit(|unit| unit.take_fault());
    assert_eq!(Lsi1::space().pages_in_use(), 1, "only the low buffer");
    // Direction::FromDevice maps writable.
    let mut out = vec![0u8; 64];
    SharedBuffer::<IovaHal<Lsi1>>::from_device(&mut out, Direction::FromDevice, |shared| {
        assert!(matches!(
            dma::<1>(LSI, shared.dma_addr(), true),
            Access::Ok(_)
        ));
    })
    .unwrap();
}

device!(Cpu2, 2, WINDOW);

#[test]
fn a_channel_over_the_iova_hal_copies_and_fails_on_its_devices_refused_dma() {
    unit::<2>();
    attach!(Cpu2, LSI, 1).unwrap();
    let mut chan: Channel<CpuEngine<IovaHal<Cpu2>>> = Channel::new(CpuEngine::new());
    Cpu2::space().report_faults_to(&mut chan).unwrap();
    let mut src = Dma::<IovaHal<Cpu2>>::new(4096).unwrap();
    src.as_mut_slice().fill(0x3c);
    let dst = Dma::<IovaHal<Cpu2>>::new(4096).unwrap();
    let transfer = chan
        .copy(dst, 16, src, 0, 100, PrepFlags::empty())
        .map_err(|e| e.error)
        .unwrap();
    chan.issue_pending();
    let (dst, _src) = transfer
        .wait(&mut chan, &mut NoDelay, Duration::from_millis(100))
        .unwrap();
    assert!(dst.as_slice()[16..116].iter().all(|&b| b == 0x3c));
    assert_eq!((dst.as_slice()[15], dst.as_slice()[116]), (0, 0), "guards");

    // A buffer the device may only read, made the destination of a copy:
    // the unit refuses the device's write (here the fake's access stands
    // for it), and the next status check pins the fault on that request.
    let mut plain = vec![0u8; 4096];
    let buffer = NonNull::from(plain.as_mut_slice());
    // SAFETY: `plain` is not touched until `unshare` below.
    let ro = unsafe { IovaHal::<Cpu2>::share(buffer, Direction::ToDevice) }.unwrap();
    // SAFETY: both ends are this test's memory, mapped in the domain; the
    // CPU engine writes `plain` through the domain's translation.
    let cookie = unsafe { chan.prep_copy(ro, dst.paddr(), 64, PrepFlags::empty()) }.unwrap();
    chan.issue_pending();
    assert_eq!(dma::<2>(LSI, ro, true), Access::Fault(5));
    assert_eq!(
        chan.status(cookie).status,
        Status::Error(ErrorKind::WriteFailed)
    );
    assert!(chan.is_halted());
    UNITS[2].with_unit(|unit| assert_eq!(unit.take_fault(), None, "claimed by the channel"));
    // SAFETY: the values of the `share` above; the request has ended.
    unsafe { IovaHal::<Cpu2>::unshare(ro, buffer, Direction::ToDevice) };
    assert_eq!(plain[..64], dst.as_slice()[..64], "the CPU engine did copy");
    assert!(plain[64..].iter().all(|&b| b == 0), "and nothing past it");
}

device!(Lsi3, 3, WINDOW);
device!(Lsi4, 4, WINDOW);

/// A device that touched an IOVA before it was mapped (a stray or early
/// access: refused) then reaches the memory mapped there, on a unit that
/// caches failed lookups (CAP.CM).
#[test]
fn a_mapping_is_usable_on_a_unit_that_caches_misses() {
    unit_with::<3>(regs::Cap::CM);
    attach!(Lsi3, LSI, 1).unwrap();
    assert_eq!(
        dma::<3>(LSI, WINDOW, true),
        Access::Fault(5),
        "not yet mapped"
    );
    UNITS[3].with_unit(|unit| unit.take_fault());
    let buffer = Dma::<IovaHal<Lsi3>>::new(4096).unwrap();
    assert_eq!(buffer.paddr(), WINDOW, "first fit");
    assert_eq!(
        dma::<3>(LSI, WINDOW, true),
        Access::Ok(buffer.as_ptr() as u64),
        "CM: the failed lookup was invalidated when the page was mapped"
    );
}

/// The same on a unit that sees table writes only after a write-buffer
/// flush (CAP.RWBF).
#[test]
fn a_mapping_is_usable_on_a_unit_that_buffers_table_writes() {
    unit_with::<4>(regs::Cap::RWBF);
    attach!(Lsi4, LSI, 1).unwrap();
    assert_eq!(
        dma::<4>(LSI, WINDOW, true),
        Access::Fault(5),
        "not yet mapped"
    );
    UNITS[4].with_unit(|unit| unit.take_fault());
    let flushes = UNITS[4].with_unit(|unit| unit.regs.write_buffer_flushes());
    let buffer = Dma::<IovaHal<Lsi4>>::new(4096).unwrap();
    assert_eq!(
        dma::<4>(LSI, WINDOW, true),
        Access::Ok(buffer.as_ptr() as u64),
        "RWBF: the new entries were flushed to the unit"
    );
    let flushed = UNITS[4].with_unit(|unit| unit.regs.write_buffer_flushes());
    assert_eq!(flushed, flushes + 1, "one flush for the mapping");
}

/// The page the next share's first page is scattered to (see [`Scattered`]).
static SCATTER: std::sync::Mutex<Option<(u64, u64)>> = std::sync::Mutex::new(None);

/// Unit 5's platform: as [`TestUnit`], but the page `SCATTER` names lies
/// at another frame, as a buffer's pages do in a real kernel (virtually
/// contiguous, physically anywhere).
struct Scattered;

// SAFETY: as for `TestUnit`; the scattered page stands for a frame the
// test owns, which the unit maps for the device; the CPU reaches the
// buffer at its own addresses, as a kernel whose map is the frames would.
unsafe impl IommuPlatform for Scattered {
    type Unit = Unit;
    type Memory = Counted<5>;

    fn unit() -> &'static Unit {
        &UNITS[5]
    }

    fn virt_to_phys(va: *const u8) -> Option<u64> {
        let va = va as u64;
        match *SCATTER.lock().unwrap() {
            Some((page, frame)) if va & !0xfff == page => Some(frame + (va & 0xfff)),
            _ => Some(va),
        }
    }
}

crate::iova_device!(Cpu5: Scattered, WINDOW);

/// A shared buffer's pages sit at consecutive IOVAs but at frames
/// anywhere: the CPU engine over the IOVA Hal reaches them where the
/// sharer has them (its CPU addresses, which a real kernel's
/// `virt_to_phys` names the frames of), never through the `Memory` Hal's
/// view of the first frame, and so never runs on into the frame after it
/// (someone else's memory).
#[test]
fn the_cpu_engine_reaches_a_scattered_share_where_its_sharer_has_it() {
    unit::<5>();
    attach!(Cpu5, LSI, 1).unwrap();
    let mut chan: Channel<CpuEngine<IovaHal<Cpu5>>> = Channel::new(CpuEngine::new());
    let mut src = Dma::<IovaHal<Cpu5>>::new(2 * 4096).unwrap();
    src.as_mut_slice().fill(0x5a);
    // Frames: the buffer's first page lies at `frames[0]`; `frames[1]`,
    // the frame after it, is another owner's.
    let frames = Dma::<FakeHal>::new(2 * 4096).unwrap();
    let mut plain = Dma::<FakeHal>::new(2 * 4096).unwrap();
    let buffer = NonNull::from(plain.as_mut_slice());
    *SCATTER.lock().unwrap() = Some((plain.paddr(), frames.paddr()));
    // SAFETY: `plain` is not touched until `unshare` below.
    let iova = unsafe { IovaHal::<Cpu5>::share(buffer, Direction::FromDevice) }.unwrap();
    // SAFETY: both IOVA ranges are this test's buffers, whole, mapped in
    // the domain until the copy has ended (waited for below).
    let cookie =
        unsafe { chan.prep_copy(iova, src.paddr(), 2 * 4096, PrepFlags::empty()) }.unwrap();
    chan.wait(cookie, &mut NoDelay, Duration::from_millis(100))
        .unwrap();
    // SAFETY: the values of the `share` above; the copy has ended.
    unsafe { IovaHal::<Cpu5>::unshare(iova, buffer, Direction::FromDevice) };
    let frames = frames.as_slice();
    assert!(
        frames[4096..].iter().all(|&b| b == 0),
        "the frame after the first one is not the buffer's"
    );
    // The frame standing for the first page is the test's fiction: the
    // CPU reaches that page at the buffer, as a kernel's map would.
    assert!(frames[..4096].iter().all(|&b| b == 0), "no frame written");
    assert!(
        plain.as_slice().iter().all(|&b| b == 0x5a),
        "both pages, at the buffer"
    );
    // A fill across a page boundary keeps the pattern's phase.
    let transfer = chan
        .fill_buffer(src, 4090, 20, 0x0807_0605_0403_0201, PrepFlags::empty())
        .map_err(|e| e.error)
        .unwrap();
    let (src, _) = transfer
        .wait(&mut chan, &mut NoDelay, Duration::from_millis(100))
        .unwrap();
    let filled: Vec<u8> = (0..20).map(|i| i % 8 + 1).collect();
    assert_eq!(src.as_slice()[4090..4110], filled[..]);
    assert_eq!((src.as_slice()[4089], src.as_slice()[4110]), (0x5a, 0x5a));
}
