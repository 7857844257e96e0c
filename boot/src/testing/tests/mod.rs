//! The guest test suite, grouped by subsystem.

use alloc::vec::Vec;

use crate::harness::Test;

mod awaiting;
mod dma;
mod guide;
mod iommu;
mod irq;
mod kernel;
mod mm;
mod selftest;
mod smp;
mod user;

/// Every guest test, in the order they run.
pub fn all() -> Vec<Test> {
    let mut tests = Vec::new();
    tests.extend_from_slice(kernel::TESTS);
    tests.extend_from_slice(dma::TESTS);
    tests.extend_from_slice(guide::TESTS);
    tests.extend_from_slice(awaiting::TESTS);
    tests.extend_from_slice(irq::TESTS);
    tests.extend_from_slice(smp::TESTS);
    if crate::smp::cpus() > 1 {
        tests.extend_from_slice(smp::MULTI_CPU_TESTS);
    }
    tests.extend_from_slice(mm::TESTS);
    tests.extend_from_slice(user::TESTS);
    // Only on a machine with a DMA-remapping unit (not with IOMMU=off).
    if crate::iommu::base().is_some() {
        tests.extend_from_slice(iommu::TESTS);
    }
    tests
}

/// The harness's own canaries (`qemu-run.sh selftest`): one passes, every
/// other one must be reported as a failure.
pub fn selftest() -> Vec<Test> {
    selftest::TESTS.to_vec()
}
