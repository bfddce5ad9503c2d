//! What a node reports about its work, as Prometheus metrics in one registry per node (the
//! binary serves it at `/metrics`; the demo's progress line reads the same counters).
//!
//! Reference tables are read when the registry is gathered (`NodeMetrics::gather`), so their
//! gauges are never older than the scrape.

use crate::reference_cache::ReferenceSet;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::sync::Mutex;

pub struct NodeMetrics {
    pub registry: Registry,
    pub records_read: IntCounter,
    pub rows_committed: IntCounter,
    pub rows_fenced: IntCounter,
    pub commits: IntCounter,
    pub commit_retries: IntCounter,
    pub dead_letters: IntCounter,
    pub checkpoints: IntCounter,
    /// `MillisBehindLatest` of each shard's last read (label `shard`; gone when the node stops
    /// reading the shard).
    pub millis_behind: IntGaugeVec,
    reference_items: IntGaugeVec,
    reference_bytes: IntGaugeVec,
    reference_age: IntGaugeVec,
    reference_failures: IntCounterVec,
    /// One gather at a time: the refresh-failure counters are brought up to the caches' counts,
    /// which two concurrent scrapes would both add.
    gathering: Mutex<()>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").field("records_read", &self.records_read.get()).finish_non_exhaustive()
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(format!("tributary_{name}"), help).expect("a valid metric name");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let by_reference = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(format!("tributary_{name}"), help), &["reference"]).expect("valid");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let millis_behind = IntGaugeVec::new(
            Opts::new(
                "tributary_millis_behind_latest",
                "MillisBehindLatest of the last read of each shard the node reads",
            ),
            &["shard"],
        )
        .expect("valid");
        registry.register(Box::new(millis_behind.clone())).expect("registered once");
        let reference_failures = IntCounterVec::new(
            Opts::new(
                "tributary_reference_refresh_failures_total",
                "Reference refreshes that failed (the last snapshot is served)",
            ),
            &["reference"],
        )
        .expect("valid");
        registry.register(Box::new(reference_failures.clone())).expect("registered once");
        Self {
            records_read: counter("records_read_total", "Kinesis records read"),
            rows_committed: counter("rows_committed_total", "Rows upserted or deleted in the warehouse"),
            rows_fenced: counter("rows_fenced_total", "Rows not applied because the warehouse held a newer version"),
            commits: counter("commits_total", "Warehouse transactions committed"),
            commit_retries: counter("commit_retries_total", "Warehouse commits retried after a retryable error"),
            dead_letters: counter(
                "dead_letter_rows_total",
                "Rows written to the dead-letter table (one per record; a payload over 48,000 bytes takes several)",
            ),
            checkpoints: counter("checkpoints_total", "Checkpoints written to the lease table"),
            millis_behind,
            reference_items: by_reference("reference_items", "Items held by a reference table's cache"),
            reference_bytes: by_reference("reference_bytes", "Approximate bytes held by a reference table's cache"),
            reference_age: by_reference(
                "reference_age_seconds",
                "Seconds since a reference table's cache last refreshed successfully (full load or change feed)",
            ),
            reference_failures,
            registry,
            gathering: Mutex::new(()),
        }
    }
}

impl NodeMetrics {
    /// The node's metrics in Prometheus's text format, with the reference tables' gauges read
    /// from `references` now.
    pub fn gather(&self, references: &ReferenceSet) -> String {
        let _one_at_a_time = self.gathering.lock().expect("never poisoned");
        for cache in references.caches() {
            let name = [cache.name.as_str()];
            self.reference_items.with_label_values(&name).set(cache.len() as i64);
            self.reference_bytes.with_label_values(&name).set(cache.bytes() as i64);
            self.reference_age.with_label_values(&name).set(cache.age().as_secs() as i64);
            let failures = self.reference_failures.with_label_values(&name);
            failures.inc_by(cache.refresh_failures().saturating_sub(failures.get()));
        }
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).expect("text encoding cannot fail")
    }
}
