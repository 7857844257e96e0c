//! The IOVA layer when the unit fails or refuses: an attach whose
//! invalidation never finishes keeps the domain (the context entry may be
//! in force) and says the device is attached until a detach succeeds; a
//! refused attach takes no table, even from an allocator that cannot free.
//! (Found by a hostile review: the space used to drop the domain of a
//! failed attach, freeing a root the unit's context entry still named.)

use std::cell::Cell;

use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size4KiB};

use super::dma::{DeviceDma, IommuPlatform, IovaHal, StaticUnit, UnitLock};
use super::fake::{Access, FakeVtd};
use super::testing::{EDU, LSI};
use super::{DomainId, Iommu, IommuError, SourceId, regs};
use crate::engine::shared::NoMasking;
use crate::hal::Dma;
use crate::hal::fake::FakeHal;
use crate::mm::frame::{FrameDb, FrameKind};
use crate::mm::testing::{Memory, mapper};
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
            value | regs::Ccmd::ICC.bits()
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

type Unit = StaticUnit<Stuck, OffsetMapper, NoFree<Boot>, NoMasking>;

static UNITS: [Unit; 2] = [const { StaticUnit::new() }; 2];

struct Platform<const N: usize>;

// SAFETY: the fake Hal's addresses are host addresses, the test's
// physical addresses.
unsafe impl<const N: usize> IommuPlatform for Platform<N> {
    type Unit = Unit;
    type Memory = FakeHal;

    fn unit() -> &'static Unit {
        &UNITS[N]
    }
}

fn frames() -> &'static FrameDb<'static> {
    let mem: &'static Memory = Box::leak(Box::new(Memory::new(64)));
    Box::leak(Box::new(mem.db()))
}

/// A fresh unit `N`, translation on; the frames its domains come from.
fn unit<const N: usize>() -> &'static FrameDb<'static> {
    let stuck = Stuck {
        // SAFETY: its registers are written only by the `Iommu` below,
        // whose tables are host memory.
        unit: unsafe { FakeVtd::new() },
        stuck: Cell::new(false),
    };
    // SAFETY: the fake is this unit's window; tables from host memory.
    let unit = unsafe { Iommu::new(stuck, mapper(), NoFree(Boot(frames()))) }.unwrap();
    unit.enable().unwrap();
    assert!(UNITS[N].install(unit).is_ok(), "one unit per test");
    frames()
}

fn stuck<const N: usize>(on: bool) {
    UNITS[N].with_unit(|unit| unit.regs.stuck.set(on));
}

fn dma<const N: usize>(source: SourceId, iova: u64, write: bool) -> Access {
    UNITS[N].with_unit(|unit| unit.regs.unit.dma(source.raw(), iova, write))
}

macro_rules! device {
    ($name:ident, $unit:literal) => {
        crate::iova_device!($name: Platform<$unit>, 0x8000_0000);
    };
}

/// Attaches device type `$name` as `$source` under domain id `$id`.
macro_rules! attach {
    ($name:ident, $source:expr, $id:expr, $tables:expr) => {
        // SAFETY: each test's devices are distinct requesters on its unit.
        unsafe { $name::space().attach($source, id($id), mapper(), NoFree(Boot($tables))) }
    };
}

fn id(n: u16) -> DomainId {
    DomainId::new(n).unwrap()
}

device!(Lsi0, 0);

#[test]
fn an_attach_whose_invalidation_hangs_keeps_the_domain_and_counts_as_attached() {
    let tables = unit::<0>();
    stuck::<0>(true);
    assert_eq!(attach!(Lsi0, LSI, 1, tables), Err(IommuError::TimedOut));
    stuck::<0>(false);
    // The entry was written: the space says the device may be attached,
    // and the root the entry names is still a table, not a free frame.
    assert_eq!(Lsi0::space().device(), Some(LSI));
    let root = UNITS[0].with_unit(|unit| unit.regs.unit.dma(LSI.raw(), 0x8000_0000, false));
    assert_eq!(root, Access::Fault(6), "translated through the kept domain");
    UNITS[0].with_unit(|unit| unit.take_fault());
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
    Lsi0::space().detach().unwrap();
    assert_eq!(Lsi0::space().device(), None);
    assert_eq!(dma::<0>(LSI, buf.paddr(), true), Access::Fault(2));
    UNITS[0].with_unit(|unit| unit.take_fault());

    // A re-attach that hangs the same way also counts as attached, so the
    // next detach goes to the unit.
    stuck::<0>(true);
    assert_eq!(attach!(Lsi0, LSI, 1, tables), Err(IommuError::TimedOut));
    stuck::<0>(false);
    assert_eq!(Lsi0::space().device(), Some(LSI));
    Lsi0::space().detach().unwrap();
    assert_eq!(dma::<0>(LSI, buf.paddr(), true), Access::Fault(2));
    UNITS[0].with_unit(|unit| unit.take_fault());
    attach!(Lsi0, LSI, 1, tables).unwrap();
    assert_eq!(
        dma::<0>(LSI, buf.paddr(), true),
        Access::Ok(buf.as_ptr() as u64)
    );
}

device!(Lsi1, 1);
device!(Edu1, 1);

#[test]
fn a_refused_attach_takes_no_table_from_an_allocator_that_cannot_free() {
    let tables = unit::<1>();
    attach!(Lsi1, LSI, 1, tables).unwrap();
    let free = tables.free_frames();
    for _ in 0..5 {
        assert_eq!(
            attach!(Edu1, EDU, 1, tables),
            Err(IommuError::DomainIdInUse)
        );
        assert_eq!(
            attach!(Edu1, EDU, 200, tables),
            Err(IommuError::BadDomainId),
            "the fake unit has 16 domain ids"
        );
    }
    assert_eq!(tables.free_frames(), free, "no frame taken");
    assert_eq!(Edu1::space().device(), None);
    attach!(Edu1, EDU, 2, tables).unwrap();
    assert_eq!(tables.free_frames(), free - 1, "its root");
}

/// Interrupt masking that counts how deep it is (0: interrupts on).
static MASKED: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

struct CountingIrq;

impl crate::sync::IrqControl for CountingIrq {
    fn disable() -> bool {
        MASKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
    }
    fn restore(_were_on: bool) {
        MASKED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

type UnitLater = StaticUnit<FakeVtd, OffsetMapper, &'static FrameDb<'static>, CountingIrq>;

struct NoUnitYet;
// SAFETY: one static unit; the fake Hal's addresses are the test's
// physical addresses.
unsafe impl IommuPlatform for NoUnitYet {
    type Unit = UnitLater;
    type Memory = FakeHal;
    fn unit() -> &'static UnitLater {
        static UNIT: UnitLater = StaticUnit::new();
        &UNIT
    }
}

crate::iova_device!(Early: NoUnitYet, 0x8000_0000);

/// An attach before any unit was installed (a separate, safe step) is
/// refused with an error, and leaves interrupts as they were; it used to
/// panic inside the space's lock with interrupts masked. (Found by a
/// hostile review.)
#[test]
fn an_attach_before_a_unit_is_installed_is_refused() {
    let mem: &'static Memory = Box::leak(Box::new(Memory::new(16)));
    let db: &'static FrameDb<'static> = Box::leak(Box::new(mem.db()));
    // SAFETY: LSI is this device's requester id, attached nowhere else.
    let got = unsafe { Early::space().attach(LSI, DomainId::new(1).unwrap(), mapper(), db) };
    assert_eq!(got, Err(IommuError::NoUnit));
    assert_eq!(MASKED.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(Early::space().device(), None);
}
