//! How a channel learns of DMA its IOMMU refused, before it reports a
//! request complete.
//!
//! An engine never sees an IOMMU's refusal: the unit drops a refused write
//! and answers a refused read with zeros, and the engine goes on and
//! reports the request done. Only the unit's fault records tell. A channel
//! given a [`FaultHook`] ([`Channel::set_fault_hook`]) asks them for its
//! device's faults each time the engine reports progress, after reading
//! that progress and before calling any request complete, and pins each
//! fault on the request that touched the page ([`Channel::fail_at`]). A
//! channel without one pays one not-taken branch.
//!
//! Faults are per unit, not per channel: a [`FaultSource`] hands a channel
//! only its own device's faults and keeps the others' for their owners.
//!
//! [`Channel::set_fault_hook`]: super::Channel::set_fault_hook
//! [`Channel::fail_at`]: super::Channel::fail_at

use core::fmt;

use crate::iommu::{DmaFault, SourceId};

/// Fault records of an IOMMU unit, read per device. [`crate::iommu::Iommu`]
/// is one.
pub trait FaultSource {
    /// The oldest recorded fault of `device`, removed from the records;
    /// faults of other devices stay for their owners.
    fn take_fault_of(&self, device: SourceId) -> Option<DmaFault>;
}

/// A channel's link to the faults of its device (`device`) in a
/// [`FaultSource`]: made safely with [`FaultHook::new`], installed with the
/// `unsafe` [`Channel::set_fault_hook`](super::Channel::set_fault_hook),
/// whose contract keeps the source alive and unshared while installed.
#[derive(Clone, Copy)]
pub struct FaultHook {
    source: *const (),
    take: unsafe fn(*const (), SourceId) -> Option<DmaFault>,
    device: SourceId,
}

// SAFETY: a hook only reaches its source through `take`, which
// `Channel::set_fault_hook`'s contract allows from whatever thread runs the
// channel while the hook is installed.
unsafe impl Send for FaultHook {}
// SAFETY: as above; `&FaultHook` gives no access `FaultHook` does not.
unsafe impl Sync for FaultHook {}

impl FaultHook {
    /// The faults of `device` in `source`.
    pub fn new<S: FaultSource>(source: &S, device: SourceId) -> FaultHook {
        /// # Safety
        /// `source` is a live `S` not used elsewhere during the call.
        unsafe fn take<S: FaultSource>(source: *const (), device: SourceId) -> Option<DmaFault> {
            // SAFETY: the caller's contract.
            unsafe { (*source.cast::<S>()).take_fault_of(device) }
        }
        FaultHook {
            source: core::ptr::from_ref(source).cast(),
            take: take::<S>,
            device,
        }
    }

    /// The device whose faults it takes.
    pub fn device(&self) -> SourceId {
        self.device
    }

    /// The oldest fault of the device.
    ///
    /// # Safety
    /// The source the hook was made from is alive and not used elsewhere
    /// during the call.
    pub(crate) unsafe fn take(&self) -> Option<DmaFault> {
        // SAFETY: the caller's contract.
        unsafe { (self.take)(self.source, self.device) }
    }
}

impl fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultHook")
            .field("source", &self.source)
            .field("device", &self.device)
            .finish()
    }
}
