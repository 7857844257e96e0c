//! What runs on top of the kernel: the demo, the ring-3 processes and the
//! soak load.

pub mod demo;
pub mod soak;
pub mod user;
