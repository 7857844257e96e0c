//! The IOVA layer when the unit fails or refuses: an attach whose
//! invalidation never finishes keeps the domain (the context entry may be
//! in force) and says the device is attached until a detach succeeds; a
//! refused attach takes no table, even from an allocator that cannot free.
//! (Found by a hostile review: the space used to drop the domain of a
//! failed attach, freeing a root the unit's context entry still named.)

use std::cell::Cell;
use std::sync::Mutex;

use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size4KiB};

use super::dma::{DeviceDma, IommuPlatform, IovaHal, IovaSpace};
use super::fake::{Access, FakeVtd};
use super::{DomainId, Iommu, IommuError, SourceId, regs};
use crate::engine::shared::NoMasking;
use crate::hal::Dma;
use crate::hal::fake::FakeHal;
use crate::mm::frame::{FrameDb, FrameKind};
use crate::mm::tests::{Memory, mapper};
use crate::mm::traits::{NoFree, OffsetMapper};
use crate::mmio::Registers;

/// The fake unit, whose context-cache invalidations can be made to hang.
struct Stuck {
    unit: FakeVtd,
    stuck: Cell<bool>,
}

impl Registers for Stuck {
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
        if offset == regs::CCMD && self.stuck.get() {
            value | regs::CCMD_ICC
        } else {
            value
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

/// Hands out a database's frames and never takes one back.
struct Boot(&'static FrameDb<'static>);

// SAFETY: the database's frames, each handed out once.
unsafe impl FrameAllocator<Size4KiB> for Boot {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        (&*self.0).allocate_frame()
    }
}

type Unit = Iommu<Stuck, OffsetMapper, NoFree<Boot>>;

static UNITS: [Mutex<Option<Unit>>; 2] = [const { Mutex::new(None) }; 2];

struct Platform<const N: usize>;

// SAFETY: the same unit every time, behind a mutex; host memory is its own
// physical address.
unsafe impl<const N: usize> IommuPlatform for Platform<N> {
    type Regs = Stuck;
    type Mapper = OffsetMapper;
    type Alloc = NoFree<Boot>;
    type Memory = FakeHal;
    type Irq = NoMasking;

    fn with_unit<T>(f: impl FnOnce(&Unit) -> T) -> T {
        f(UNITS[N].lock().unwrap().as_ref().expect("the test made it"))
    }
}

fn frames() -> &'static FrameDb<'static> {
    let mem: &'static Memory = Box::leak(Box::new(Memory::new(64)));
    Box::leak(Box::new(mem.db()))
}

/// A fresh unit `N`, translation on; the frames its domains come from.
fn unit<const N: usize>() -> &'static FrameDb<'static> {
    let stuck = Stuck {
        unit: FakeVtd::new(),
        stuck: Cell::new(false),
    };
    // SAFETY: the fake is this unit's window; tables from host memory.
    let unit = unsafe { Iommu::new(stuck, mapper(), NoFree(Boot(frames()))) }.unwrap();
    unit.enable().unwrap();
    *UNITS[N].lock().unwrap() = Some(unit);
    frames()
}

fn stuck<const N: usize>(on: bool) {
    Platform::<N>::with_unit(|unit| unit.regs.stuck.set(on));
}

fn dma<const N: usize>(source: SourceId, iova: u64, write: bool) -> Access {
    Platform::<N>::with_unit(|unit| unit.regs.unit.dma(source.raw(), iova, write))
}

const LSI: SourceId = SourceId {
    bus: 0,
    device: 3,
    function: 0,
};
const EDU: SourceId = SourceId {
    bus: 0,
    device: 4,
    function: 0,
};

macro_rules! device {
    ($name:ident, $space:ident, $unit:literal, $source:expr) => {
        struct $name;
        static $space: IovaSpace<$name> = IovaSpace::new(0x8000_0000);
        // SAFETY: its own static; one type per source on each unit.
        unsafe impl DeviceDma for $name {
            type Platform = Platform<$unit>;
            fn source() -> SourceId {
                $source
            }
            fn space() -> &'static IovaSpace<$name> {
                &$space
            }
        }
    };
}

fn id(n: u16) -> DomainId {
    DomainId::new(n).unwrap()
}

device!(Lsi0, LSI0, 0, LSI);

#[test]
fn an_attach_whose_invalidation_hangs_keeps_the_domain_and_counts_as_attached() {
    let tables = unit::<0>();
    stuck::<0>(true);
    assert_eq!(
        LSI0.attach(id(1), mapper(), NoFree(Boot(tables))),
        Err(IommuError::TimedOut)
    );
    stuck::<0>(false);
    // The entry was written: the space says the device may be attached,
    // and the root the entry names is still a table, not a free frame.
    assert_eq!(LSI0.device(), Some(LSI));
    let root = Platform::<0>::with_unit(|unit| unit.regs.unit.dma(LSI.raw(), 0x8000_0000, false));
    assert_eq!(root, Access::Fault(6), "translated through the kept domain");
    Platform::<0>::with_unit(|unit| unit.take_fault());
    let in_use = (0..tables.len())
        .filter(|&i| tables.state(tables.frame(i).unwrap()).unwrap().kind == FrameKind::PageTable)
        .count();
    assert_eq!(in_use, 1, "the domain's root, kept");
    // Memory maps through it, and a detach then really detaches.
    let buf = Dma::<IovaHal<Lsi0>>::new(4096).unwrap();
    assert_eq!(
        dma::<0>(LSI, buf.paddr(), true),
        Access::Ok(buf.as_ptr() as u64)
    );
    LSI0.detach().unwrap();
    assert_eq!(LSI0.device(), None);
    assert_eq!(dma::<0>(LSI, buf.paddr(), true), Access::Fault(2));
    Platform::<0>::with_unit(|unit| unit.take_fault());

    // A re-attach that hangs the same way also counts as attached, so the
    // next detach goes to the unit.
    stuck::<0>(true);
    assert_eq!(
        LSI0.attach(id(1), mapper(), NoFree(Boot(tables))),
        Err(IommuError::TimedOut)
    );
    stuck::<0>(false);
    assert_eq!(LSI0.device(), Some(LSI));
    LSI0.detach().unwrap();
    assert_eq!(dma::<0>(LSI, buf.paddr(), true), Access::Fault(2));
    Platform::<0>::with_unit(|unit| unit.take_fault());
    LSI0.attach(id(1), mapper(), NoFree(Boot(tables))).unwrap();
    assert_eq!(
        dma::<0>(LSI, buf.paddr(), true),
        Access::Ok(buf.as_ptr() as u64)
    );
}

device!(Lsi1, LSI1, 1, LSI);
device!(Edu1, EDU1, 1, EDU);

#[test]
fn a_refused_attach_takes_no_table_from_an_allocator_that_cannot_free() {
    let tables = unit::<1>();
    LSI1.attach(id(1), mapper(), NoFree(Boot(tables))).unwrap();
    let free = tables.free_frames();
    for _ in 0..5 {
        assert_eq!(
            EDU1.attach(id(1), mapper(), NoFree(Boot(tables))),
            Err(IommuError::DomainIdInUse)
        );
        assert_eq!(
            EDU1.attach(id(200), mapper(), NoFree(Boot(tables))),
            Err(IommuError::BadDomainId),
            "the fake unit has 16 domain ids"
        );
    }
    assert_eq!(tables.free_frames(), free, "no frame taken");
    assert_eq!(EDU1.device(), None);
    EDU1.attach(id(2), mapper(), NoFree(Boot(tables))).unwrap();
    assert_eq!(tables.free_frames(), free - 1, "its root");
}
