//! Fake devices for host tests of a kernel's glue (the `testing` feature):
//! the ones the crate's own tests drive its drivers with, so that a kernel
//! can check on the host, without QEMU, that it builds its channels,
//! domains and requests right.
//!
//! - [`lsi53c895a`]: a SCRIPTS processor for
//!   [`Lsi53c895a`](crate::drivers::lsi53c895a::Lsi53c895a), over
//!   [`FakeHal32`](crate::hal::fake::FakeHal32) memory.
//! - [`edu`]: QEMU's edu device for
//!   [`EduEngine`](crate::drivers::edu::EduEngine), over
//!   [`FakeHal`](crate::hal::fake::FakeHal) memory.
//! - [`vtd`]: a VT-d unit for [`Iommu`](crate::iommu::Iommu), walking
//!   tables in host memory.
//!
//! The fake [`Hal`](crate::hal::Hal)s are in [`hal::fake`](crate::hal::fake).
//! A fake runs only when its driver touches its registers (or the test
//! calls it): nothing runs in the background, so a test decides when a
//! device makes progress. Each is `!Sync` and meant for one test thread.
//!
//! The fakes model what the drivers rely on, not the whole device: a glue
//! test that passes here shows the kernel drives the crate's API right, not
//! that real hardware behaves like the fake (the guest suite, under QEMU,
//! checks that).
//!
//! Each fake's constructor is `unsafe`: the fake moves or reads host memory
//! at the addresses written into its registers, as the device would, so
//! whoever makes one promises what a kernel promises of a real device's
//! register window.

// The fakes live beside their drivers (the crate's own tests use them
// there); this module is where the feature shows them.
#[doc(inline)]
pub use crate::drivers::edu::fake as edu;
#[doc(inline)]
pub use crate::drivers::lsi53c895a::fake as lsi53c895a;
#[doc(inline)]
pub use crate::iommu::fake as vtd;
