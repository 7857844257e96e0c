//! The kernel's side of `dmaengine::iommu`: the VT-d unit found through
//! ACPI's DMAR table, its tables and domains' tables from the frame
//! database, one user at a time.

use core::ops::Deref;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use dmaengine::iommu::dmar::Dmar;
use dmaengine::iommu::{DmaFault, Iommu, IommuError, Missing, SourceId, regs};
use dmaengine::mm::frame::FrameDb;
use dmaengine::mm::traits::OffsetMapper;
use dmaengine::mmio::MmioRegion;

use crate::mem::device_window;
use crate::mm::{db, mapper};
use crate::{acpi, irq, pci};

/// The unit, with its tables in the frame database.
pub type Unit = Iommu<MmioRegion, OffsetMapper, &'static FrameDb<'static>>;

/// A domain of the unit, its pages counted and its tables kept by the frame
/// database.
pub type Domain<'a> = dmaengine::iommu::Domain<
    'a,
    &'static FrameDb<'static>,
    OffsetMapper,
    &'static FrameDb<'static>,
    MmioRegion,
>;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// The register base of the first DMA-remapping unit, if ACPI lists one
/// in a DMAR table the library's parser accepts (`qemu-run.sh` gives QEMU
/// `-machine q35 -device intel-iommu,intremap=off,aw-bits=48` unless
/// `IOMMU=off`). A table it refuses counts as none, which also leaves the
/// guest suite without its IOMMU tests.
pub fn base() -> Option<u64> {
    *BASE.get()?
}

/// The first unit's register base ([`base`]), found at boot ([`init`]).
static BASE: spin::Once<Option<u64>> = spin::Once::new();

/// Looks for the VT-d unit in the ACPI tables under `rsdp` (once, at boot).
pub fn init(rsdp: Option<u64>) {
    BASE.call_once(|| {
        let dmar = Dmar::parse(acpi::dmar(rsdp?)?).ok()?;
        dmar.units().next().map(|unit| unit.register_base)
    });
}

/// The unit, held by one user at a time (dropping it turns translation off
/// and frees its tables).
pub struct Exclusive(Unit);

impl Deref for Exclusive {
    type Target = Unit;
    fn deref(&self) -> &Unit {
        &self.0
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        TAKEN.store(false, Ordering::Release);
    }
}

/// Takes over the unit for the IOVA layer, which keeps it in a
/// `StaticUnit`: [`released`] says when that unit has been dropped.
pub fn take_unit() -> Result<Unit, &'static str> {
    let unit = take()?;
    // The unit leaves the guard; TAKEN stays set until `released`.
    let unit = core::mem::ManuallyDrop::new(unit);
    // SAFETY: read once out of a guard that is never dropped or used again.
    Ok(unsafe { core::ptr::read(&unit.0) })
}

/// The unit [`take_unit`] gave out has been dropped: it may be taken again.
pub fn released() {
    TAKEN.store(false, Ordering::Release);
}

/// Takes over the unit.
pub fn take() -> Result<Exclusive, &'static str> {
    let base = base().ok_or("no DMA-remapping unit in the ACPI DMAR table")?;
    let window = device_window(base, regs::MMIO_SIZE as u64)
        .ok_or("the DMAR's register page is not device memory the direct map maps uncached")?;
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err("the IOMMU is in use");
    }
    // SAFETY: the DRHD's register page, device memory the direct map maps
    // uncached (`device_window`); the kernel never makes references into it.
    let regs = unsafe { MmioRegion::new(window, regs::MMIO_SIZE) };
    // SAFETY: the unit's own register window, programmed by nobody else
    // (TAKEN); queued invalidation is off since reset; tables come from the
    // frame database, which the direct map covers.
    match unsafe { Iommu::new(regs, mapper(), db()) } {
        Ok(unit) => Ok(Exclusive(unit)),
        Err(e) => {
            TAKEN.store(false, Ordering::Release);
            Err(match e {
                IommuError::Unsupported(Missing::FourLevelTables) => {
                    "the IOMMU has no 4-level tables (QEMU: -device intel-iommu,aw-bits=48)"
                }
                IommuError::Unsupported(Missing::QueuedInvalidation) => {
                    "the IOMMU (VT-d 6 or later) has no invalidation queue"
                }
                _ => "the IOMMU refused to start",
            })
        }
    }
}

/// Where a routed fault goes: the unit being served and the sink.
static ROUTED_UNIT: AtomicPtr<Unit> = AtomicPtr::new(core::ptr::null_mut());
static SINK: AtomicUsize = AtomicUsize::new(0);
/// Faults read by the fault interrupt's handler.
static ROUTED: AtomicU64 = AtomicU64::new(0);

/// Fault interrupts of `unit` routed to CPU `cpu` while it lives: their
/// handler reads every recorded fault and hands it to the sink. Dropping it
/// masks them again and frees the vector.
pub struct FaultRoute<'a> {
    unit: &'a Unit,
    message: irq::MsiMessage,
}

/// Sends `unit`'s fault events to CPU `cpu` as an MSI; the handler gives
/// each fault to `sink` (which routes it to the channel of the device that
/// faulted, for one: `Channel::fail_at` pins it only on a channel with
/// fault attribution on, off by default). One route at a time.
///
/// # Safety
/// The route must be dropped, not forgotten, before `unit` is: the
/// handler reaches the unit through a pointer the route's drop clears.
pub unsafe fn route_faults(
    unit: &Unit,
    cpu: usize,
    sink: fn(DmaFault),
) -> Result<FaultRoute<'_>, irq::IrqError> {
    let taken = ROUTED_UNIT.compare_exchange(
        core::ptr::null_mut(),
        core::ptr::from_ref(unit).cast_mut(),
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    if taken.is_err() {
        return Err(irq::IrqError::LineFull);
    }
    SINK.store(sink as usize, Ordering::Release);
    let message = match irq::allocate_msi(cpu, on_fault_event) {
        Ok(message) => message,
        Err(e) => {
            ROUTED_UNIT.store(core::ptr::null_mut(), Ordering::Release);
            return Err(e);
        }
    };
    // SAFETY: an MSI message `allocate_msi` made: an address in the local
    // APICs' interrupt window and a fixed vector of ours, whose handler
    // (`on_fault_event`) reads faults whenever it runs.
    unsafe { unit.enable_fault_interrupts(message.address, message.data as u32) };
    Ok(FaultRoute { unit, message })
}

impl FaultRoute<'_> {
    /// The vector the fault events arrive on.
    pub fn vector(&self) -> u8 {
        self.message.vector
    }
}

impl Drop for FaultRoute<'_> {
    fn drop(&mut self) {
        self.unit.disable_fault_interrupts();
        irq::free_msi(self.message.vector);
        ROUTED_UNIT.store(core::ptr::null_mut(), Ordering::Release);
    }
}

/// Faults the fault interrupt's handler has read since boot.
pub fn routed_faults() -> u64 {
    ROUTED.load(Ordering::Relaxed)
}

fn on_fault_event() {
    let unit = ROUTED_UNIT.load(Ordering::Acquire);
    if unit.is_null() {
        return;
    }
    // SAFETY: set by `route_faults` from a reference its `FaultRoute`
    // holds, and cleared by that route's drop after the events are masked
    // and the vector freed: non-null means the unit is alive.
    let unit = unsafe { &*unit };
    let sink = SINK.load(Ordering::Acquire);
    while let Some(fault) = unit.take_fault() {
        ROUTED.fetch_add(1, Ordering::Relaxed);
        if sink != 0 {
            // SAFETY: a non-zero SINK is a `fn(DmaFault)` stored above.
            let sink = unsafe { core::mem::transmute::<usize, fn(DmaFault)>(sink) };
            sink(fault);
        }
    }
}

/// A PCI function's requester id.
pub fn source_of(device: &pci::Device) -> SourceId {
    SourceId {
        bus: device.address.bus(),
        device: device.address.device(),
        function: device.address.function(),
    }
}
