//! Counters a node keeps about its own work (read by the demo's progress line; exported to
//! Prometheus by the binary).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct NodeMetrics {
    pub records_read: AtomicU64,
    pub rows_committed: AtomicU64,
    pub rows_fenced: AtomicU64,
    pub commits: AtomicU64,
    pub commit_retries: AtomicU64,
    pub dead_letters: AtomicU64,
    pub checkpoints: AtomicU64,
    /// `MillisBehindLatest` of the last read (any shard).
    pub millis_behind: AtomicU64,
}

impl NodeMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
