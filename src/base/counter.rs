//! Lock-free counters that can live inside snapshot types.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter that can sit inside `Clone` config types (a clone copies
/// the current value).
#[derive(Debug, Default)]
pub struct Counter(pub(crate) AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Clone for Counter {
    fn clone(&self) -> Self {
        Self(AtomicU64::new(self.get()))
    }
}
