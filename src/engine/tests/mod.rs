//! Host tests of the channel over a scripted engine, one file per concern
//! (requests, bad input, batches, failures, callbacks, fault attribution).
//! The tests that need bytes really moved run over the CPU engine, beside
//! it (`drivers/cpu/api_tests.rs`).

use std::cell::RefCell;
use std::time::Duration;

use proptest::strategy::Strategy;

use super::fake::{CountingDelay, Scripted, edge_copy, hostile_u64};
use super::*;
use crate::hal::Dma;
use crate::hal::fake::FakeHal;

fn copy(chan: &mut Channel<Scripted>, dst: u64, src: u64, len: usize) -> Result<Cookie, DmaError> {
    // SAFETY: the scripted engine never touches memory.
    unsafe { chan.prep_copy(dst, src, len, PrepFlags::empty()) }
}

fn cookie(v: i32) -> Cookie {
    Cookie::new(v).unwrap()
}

fn batch(chan: &mut Channel<Scripted>, ops: &[Op]) -> Result<Batch, DmaError> {
    // SAFETY: the scripted engine never touches memory.
    unsafe { chan.prep_batch(ops, PrepFlags::empty()) }
}

mod attribution;
mod bad_input;
mod batches;
mod callbacks;
mod failures;
mod laps;
mod requests;
