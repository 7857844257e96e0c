//! A small seeded generator for the tests and the soak, and the run's seed.
//!
//! `qemu-run.sh` passes `seed=N` on the command line (a new one each run,
//! or `SEED=N` to repeat one); every randomized test derives its stream
//! from it, so a failure is reproduced by running with the seed it printed.

use core::sync::atomic::{AtomicU64, Ordering};

static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// Sets the run's seed (from the command line).
pub fn set_seed(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
}

/// The run's seed.
pub fn seed() -> u64 {
    SEED.load(Ordering::Relaxed)
}

/// xorshift64*: small, fast, and good enough for lengths and offsets.
pub struct Rng(u64);

impl Rng {
    /// A generator for one user of the run's seed: `stream` keeps the
    /// users' sequences apart.
    pub fn from_seed(stream: u64) -> Rng {
        Rng::new(seed() ^ stream.wrapping_mul(0xbf58_476d_1ce4_e5b9))
    }

    /// A generator started at `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x2545_f491_4f6c_dd1d
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A length in `1..=max`, log-uniform so that every size class is hit.
    pub fn length(&mut self, max: usize) -> usize {
        let bits = 64 - (max as u64).leading_zeros() as u64;
        let cap = 1u64 << self.below(bits + 1);
        (1 + self.below(cap.min(max as u64))) as usize
    }
}
