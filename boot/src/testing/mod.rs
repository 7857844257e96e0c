//! The in-guest test harness and the tests themselves.

pub mod harness;
pub mod tests;
