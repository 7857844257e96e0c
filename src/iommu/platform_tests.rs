//! Host tests of the IOVA layer and the unit, each over a platform (and so
//! a `static` unit) of its own: a boot allocator that never frees, a pool
//! as the kernel's Hal, units that report what the fake does not.

use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size4KiB};

use super::dma::{DeviceDma, IommuPlatform, IovaHal, SHARED_BUFFERS, StaticUnit};
use super::fake::FakeVtd;
use super::testing::{EDU, LSI};
use super::{DomainId, Iommu, IommuError};
use crate::engine::shared::NoMasking;
use crate::hal::fake::FakeHal;
use crate::hal::{Direction, Hal, HalError};
use crate::mm::frame::FrameDb;
use crate::mm::testing::{Memory, mapper};
use crate::mm::traits::{NoFree, OffsetMapper};

/// Hands out a database's frames and never takes one back (a boot
/// allocator).
struct Boot(&'static FrameDb<'static>);

// SAFETY: the database's frames, each handed out once.
unsafe impl FrameAllocator<Size4KiB> for Boot {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        (&*self.0).allocate_frame()
    }
}

fn frames() -> &'static FrameDb<'static> {
    let mem: &'static Memory = Box::leak(Box::new(Memory::new(64)));
    Box::leak(Box::new(mem.db()))
}

/// The crate's own recipe for a kernel's Hal (`hal::pool`'s example): a
/// pool of DMA memory set aside at boot. Its `phys_to_virt` answers for
/// the pool's addresses, all the `Hal` contract asks of it.
static POOL: crate::hal::pool::DmaPool<NoMasking, 1> = crate::hal::pool::DmaPool::new();

struct PoolHal;

// SAFETY: the pool's memory: contiguous, zeroed, mapped at the pointer it
// returns, nobody else's until freed.
unsafe impl Hal for PoolHal {
    fn dma_alloc(
        pages: usize,
        dma_mask: u64,
    ) -> Option<(crate::hal::DmaAddr, core::ptr::NonNull<u8>)> {
        POOL.alloc(pages, dma_mask)
    }
    unsafe fn dma_dealloc(paddr: crate::hal::DmaAddr, _: core::ptr::NonNull<u8>, pages: usize) {
        // SAFETY: the caller's contract.
        unsafe { POOL.free(paddr, pages) }
    }
    fn phys_to_virt(paddr: crate::hal::DmaAddr) -> core::ptr::NonNull<u8> {
        POOL.phys_to_virt(paddr).expect("an address of the pool")
    }
}

type PoolUnit = StaticUnit<FakeVtd, OffsetMapper, NoFree<Boot>, NoMasking>;

struct PoolPlatform;

// SAFETY: the pool's DMA addresses are its host (= physical) addresses;
// `virt_to_phys` is the identity of host memory, as in the crate's tests.
unsafe impl IommuPlatform for PoolPlatform {
    type Unit = PoolUnit;
    type Memory = PoolHal;
    fn unit() -> &'static PoolUnit {
        static UNIT: PoolUnit = StaticUnit::new();
        &UNIT
    }
    fn virt_to_phys(va: *const u8) -> Option<u64> {
        Some(va as u64)
    }
}

crate::iova_device!(Pooled: PoolPlatform, 0x8000_0000);

/// `IovaHal::phys_to_virt` of a shared buffer's IOVA asked the `Memory`
/// Hal for the CPU pointer of a frame that Hal never handed out, which the
/// `Hal` contract does not bind it to answer: the crate's own pool recipe
/// panics (the CPU engine copying a shared buffer calls it), a `Memory`
/// computing `virt_base + (paddr - phys_base)` would give a wild pointer.
/// Now the space answers from where the buffer was shared; the pool's own
/// memory is still answered by the pool. The same space then shows the
/// limit of shares at once: one more is refused with nothing mapped, and
/// taken again once one is unshared.
#[test]
fn phys_to_virt_of_a_shared_buffer_is_the_buffer() {
    let run = Box::leak(vec![0u8; 8 * 4096 + 4096].into_boxed_slice());
    let at = (run.as_mut_ptr() as usize + 4095) & !4095;
    let virt = core::ptr::NonNull::new(at as *mut u8).unwrap();
    // SAFETY: 8 pages of host memory, leaked, given to the pool alone.
    unsafe { POOL.init(at as u64, virt, 8) }.unwrap();
    // SAFETY: its registers are written only by this `Iommu`.
    let unit = unsafe { Iommu::new(FakeVtd::new(), mapper(), NoFree(Boot(frames()))) }.unwrap();
    assert!(PoolPlatform::unit().install(unit).is_ok());
    // SAFETY: LSI is this device's requester id, attached nowhere else.
    unsafe {
        Pooled::space().attach(
            LSI,
            DomainId::new(1).unwrap(),
            mapper(),
            NoFree(Boot(frames())),
        )
    }
    .unwrap();
    let buffer: &'static mut [u8] = Box::leak(vec![7u8; 64].into_boxed_slice());
    let ptr = core::ptr::NonNull::from(&mut *buffer);
    // SAFETY: the buffer is leaked: valid for good, never touched again.
    let iova = unsafe { IovaHal::<Pooled>::share(ptr, Direction::Both) }.unwrap();
    let got = std::panic::catch_unwind(|| IovaHal::<Pooled>::phys_to_virt(iova + 5));
    assert_eq!(
        got.ok(),
        Some(core::ptr::NonNull::new(ptr.cast::<u8>().as_ptr().wrapping_add(5)).unwrap()),
        "the Hal contract: phys_to_virt of a DMA address `share` handed out points at the buffer"
    );
    let (allocated, cpu) = IovaHal::<Pooled>::dma_alloc(1, u64::MAX).unwrap();
    assert_eq!(
        IovaHal::<Pooled>::phys_to_virt(allocated),
        cpu,
        "the pool's own"
    );

    // SHARED_BUFFERS at once, the first above among them.
    let one: Vec<_> = (1..SHARED_BUFFERS)
        .map(|_| {
            let b = core::ptr::NonNull::from(Box::leak(vec![1u8; 8].into_boxed_slice()));
            // SAFETY: leaked, valid for good.
            (
                unsafe { IovaHal::<Pooled>::share(b, Direction::Both) }.unwrap(),
                b,
            )
        })
        .collect();
    let in_use = Pooled::space().pages_in_use();
    let extra = core::ptr::NonNull::from(Box::leak(vec![2u8; 8].into_boxed_slice()));
    // SAFETY: leaked, valid for good.
    let refused = unsafe { IovaHal::<Pooled>::share(extra, Direction::Both) };
    assert_eq!(refused, Err(HalError::NoMemory));
    assert_eq!(Pooled::space().pages_in_use(), in_use, "nothing mapped");
    // SAFETY: the values of that share; no device uses the buffer.
    unsafe { IovaHal::<Pooled>::unshare(one[0].0, one[0].1, Direction::Both) };
    // SAFETY: leaked, valid for good.
    let again = unsafe { IovaHal::<Pooled>::share(extra, Direction::Both) }.unwrap();
    assert_eq!(
        IovaHal::<Pooled>::phys_to_virt(again),
        extra.cast::<u8>(),
        "the slot the unshare freed"
    );
}

type Unit = StaticUnit<FakeVtd, OffsetMapper, NoFree<Boot>, NoMasking>;

struct Platform;

// SAFETY: the fake Hal's addresses are host addresses, the test's
// physical addresses.
unsafe impl IommuPlatform for Platform {
    type Unit = Unit;
    type Memory = FakeHal;
    fn unit() -> &'static Unit {
        static UNIT: Unit = StaticUnit::new();
        &UNIT
    }
}

// A window ending at 2^47 + 64 MiB, well below 2^48.
crate::iova_device!(High: Platform, 1 << 47);

/// `IovaSpace::attach` promises that a refusal takes no table from
/// `alloc`, but it checked the window against 2^48 while `map_vma` stops at
/// 2^47: a window in between took the domain's root table before `map_vma`
/// refused it, and with an allocator that cannot free, the frame was gone
/// for good, on every retry. Now the window is refused first.
#[test]
fn a_window_past_47_bits_is_refused_before_a_table_is_taken() {
    // SAFETY: its registers are written only by this `Iommu`, whose
    // tables are host memory.
    let unit = unsafe { Iommu::new(FakeVtd::new(), mapper(), NoFree(Boot(frames()))) }.unwrap();
    assert!(Platform::unit().install(unit).is_ok());
    let tables = frames();
    let free = tables.free_frames();
    for _ in 0..3 {
        // SAFETY: LSI is this device's requester id, attached nowhere else.
        let got = unsafe {
            High::space().attach(
                LSI,
                DomainId::new(1).unwrap(),
                mapper(),
                NoFree(Boot(tables)),
            )
        };
        assert_eq!(got, Err(IommuError::BadWindow));
    }
    assert_eq!(tables.free_frames(), free, "a refused attach took frames");
    assert_eq!(High::space().device(), None);
}

/// The fake unit, reporting CAP.MGAW = 38 (39-bit guest addresses) with
/// 4-level tables, as Intel's client units do (CAP 0x1c0000c40660462:
/// SAGAW = 4-level only, MGAW = 39 bits; spec 11.4.2: DMA to an address
/// above MGAW is refused).
struct Mgaw39(FakeVtd);

impl crate::mmio::Registers for Mgaw39 {
    fn read8(&self, offset: usize) -> u8 {
        self.0.read8(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.0.write8(offset, value)
    }
    fn read32(&self, offset: usize) -> u32 {
        self.0.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.0.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        let value = self.0.read64(offset);
        if offset == super::regs::CAP {
            value & !(0x3f << 16) | 38 << 16
        } else {
            value
        }
    }
    fn write64(&self, offset: usize, value: u64) {
        self.0.write64(offset, value)
    }
    fn accesses(&self) -> u64 {
        self.0.accesses()
    }
    fn reads(&self) -> u64 {
        self.0.reads()
    }
}

type NarrowUnit = StaticUnit<Mgaw39, OffsetMapper, NoFree<Boot>, NoMasking>;

struct Narrow;

// SAFETY: the fake Hal's addresses are host addresses.
unsafe impl IommuPlatform for Narrow {
    type Unit = NarrowUnit;
    type Memory = FakeHal;
    fn unit() -> &'static NarrowUnit {
        static UNIT: NarrowUnit = StaticUnit::new();
        &UNIT
    }
}

// A window at 1 TiB: below 2^47, above the unit's 2^39.
crate::iova_device!(Far: Narrow, 1 << 40);
// A window at 2 GiB, well inside it.
crate::iova_device!(Near: Narrow, 0x8000_0000);

/// Nothing read CAP.MGAW: a space whose window lies above the unit's guest
/// address width was attached, and `IovaHal::dma_alloc` handed the driver
/// IOVAs the unit refuses for every access. Now such a window is refused
/// (taking no table), and one inside the width still attaches.
#[test]
fn a_window_above_the_units_mgaw_is_refused() {
    // SAFETY: its registers are written only by this `Iommu`.
    let unit =
        unsafe { Iommu::new(Mgaw39(FakeVtd::new()), mapper(), NoFree(Boot(frames()))) }.unwrap();
    assert_eq!(unit.address_width(), 39);
    assert!(Narrow::unit().install(unit).is_ok());
    let tables = frames();
    let free = tables.free_frames();
    // SAFETY: LSI is this device's requester id, attached nowhere else.
    let got = unsafe {
        Far::space().attach(
            LSI,
            DomainId::new(1).unwrap(),
            mapper(),
            NoFree(Boot(tables)),
        )
    };
    let dma = crate::hal::Dma::<IovaHal<Far>>::new(4096).ok();
    assert_eq!(
        (got, dma.as_ref().map(|d| d.paddr() >> 39)),
        (Err(IommuError::BadWindow), None),
        "a window the unit cannot translate"
    );
    assert_eq!(tables.free_frames(), free, "refused before a table");
    // SAFETY: EDU is this device's requester id, attached nowhere else.
    let near = unsafe {
        Near::space().attach(
            EDU,
            DomainId::new(2).unwrap(),
            mapper(),
            NoFree(Boot(tables)),
        )
    };
    assert_eq!(near, Ok(()));
    let dma = crate::hal::Dma::<IovaHal<Near>>::new(4096).unwrap();
    assert!(dma.paddr() + 4095 < 1 << 39);
}
