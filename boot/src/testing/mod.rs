//! The in-guest test harness, its fault recovery, the seeded randomness and
//! the tests themselves.

pub mod harness;
pub mod recover;
pub mod rng;
pub mod tests;
