//! Fixtures of the iommu host tests, shared by its test modules (which
//! import them from here, never from one another).

use super::SourceId;

/// The requesters the host tests use.
pub(crate) const LSI: SourceId = SourceId {
    bus: 0,
    device: 3,
    function: 0,
};
pub(crate) const EDU: SourceId = SourceId {
    bus: 0,
    device: 4,
    function: 0,
};
