//! What a node reports about its work, as Prometheus metrics in one registry per node (the
//! binary serves it at `/metrics`). Names follow Prometheus's conventions: a `tributary_` prefix,
//! base units (seconds, bytes), `_total` counters, histograms in seconds.
//!
//! Reference tables and the coordinator's view of the cluster are read when the registry is
//! gathered (`NodeMetrics::gather`), so those gauges are never older than the scrape.

use crate::health::NodeHealth;
use crate::reference_set::ReferenceSet;
use coordinator::cluster_view::{LEASE_STATES, NODE_STATES};
use coordinator::ClusterView;
use prometheus::core::Collector;
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Commit latency buckets (seconds): a local PostgreSQL commits in milliseconds, the Redshift
/// Data API in seconds.
const COMMIT_SECONDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Batch size buckets (rows); a batch holds at most `batch_rows` (default 5,000).
const BATCH_ROWS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0];

/// A shard caught up at its last read counts as caught up until reads stop for this long (the
/// longest read back-off is 10 s); then the time since counts as lag.
const READ_GAP: std::time::Duration = std::time::Duration::from_secs(15);

/// What one shard's consumer last reported.
#[derive(Default)]
struct ShardReport {
    /// `MillisBehindLatest` of the last read, and when it was.
    read: Option<(u64, Instant)>,
    /// Rows handed to each table's sink and not committed yet.
    in_flight: Vec<(String, i64)>,
}

pub struct NodeMetrics {
    pub registry: Registry,
    /// Readiness, served beside the metrics.
    pub health: NodeHealth,
    /// What the coordinator sees (leader or not; leases and nodes while leader).
    pub cluster: Arc<ClusterView>,
    pub records_read: IntCounter,
    pub bytes_read: IntCounter,
    /// Labels `table`, `op` (`upsert` or `delete`).
    pub rows_committed: IntCounterVec,
    /// Label `table`.
    pub rows_fenced: IntCounterVec,
    pub rows_refused: IntCounterVec,
    pub commits: IntCounterVec,
    pub commit_retries: IntCounterVec,
    pub commit_seconds: HistogramVec,
    pub commit_rows: HistogramVec,
    /// Rows the node's consumers handed to a table's sink and that have not committed yet:
    /// set at each gather from the shards' reports.
    rows_in_flight: IntGaugeVec,
    pub dead_letters: IntCounter,
    pub checkpoints: IntCounter,
    /// Shards this node consumes now.
    pub leases_owned: IntGauge,
    /// Label `shard` (gone when the lease leaves the node), like the two below. Set at each
    /// gather from the shard's last read.
    pub shard_lag: GaugeVec,
    /// What each shard's consumer reported, by shard.
    shards: Mutex<HashMap<String, ShardReport>>,
    /// The target tables (their per-table series exist from the start, at zero).
    tables: Mutex<Vec<String>>,
    /// Label `shard`: consumers that failed (each restarts after a back-off). Kept for the
    /// process's life, so that failures of a lease that moves on stay visible to `increase()`.
    consumer_failures: IntCounterVec,
    pub shard_last_read: GaugeVec,
    pub shard_last_checkpoint: GaugeVec,
    /// Labels `service`, `kind`.
    pub call_errors: IntCounterVec,
    leader: IntGauge,
    cluster_leases: IntGaugeVec,
    cluster_nodes: IntGaugeVec,
    reference_items: IntGaugeVec,
    reference_bytes: IntGaugeVec,
    reference_age: IntGaugeVec,
    reference_failures: IntCounterVec,
    reference_interval: IntGaugeVec,
    /// The reference tables whose size and freshness are reported, once they are loaded.
    references: OnceLock<Arc<ReferenceSet>>,
    /// Every sample name the registry can hold, histograms expanded.
    names: Vec<String>,
    /// One gather at a time: the refresh-failure counters are brought up to the caches' counts,
    /// which two concurrent scrapes would both add.
    gathering: Mutex<()>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").field("records_read", &self.records_read.get()).finish_non_exhaustive()
    }
}

/// Registers collectors and remembers the names of the samples they produce.
struct Builder {
    registry: Registry,
    names: Vec<String>,
}

impl Builder {
    fn add<C: Collector + Clone + 'static>(&mut self, c: C, histogram: bool) -> C {
        self.register(Box::new(c.clone()), histogram);
        c
    }

    fn register(&mut self, c: Box<dyn Collector>, histogram: bool) {
        for desc in c.desc() {
            if histogram {
                self.names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{}{s}", desc.fq_name)));
            } else {
                self.names.push(desc.fq_name.clone());
            }
        }
        self.registry.register(c).expect("registered once");
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(format!("tributary_{name}"), help).expect("valid"), false)
    }

    fn counters(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(format!("tributary_{name}"), help), labels).expect("valid"), false)
    }

    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(format!("tributary_{name}"), help).expect("valid"), false)
    }

    fn gauges(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(format!("tributary_{name}"), help), labels).expect("valid"), false)
    }

    fn float_gauges(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(format!("tributary_{name}"), help), labels).expect("valid"), false)
    }

    fn histograms(&mut self, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(format!("tributary_{name}"), help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, &["table"]).expect("valid"), true)
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let mut b = Builder { registry: Registry::new(), names: Vec::new() };
        let build = b.gauges("build_info", "Always 1; the label names the running version", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        b.register(Box::new(crate::process_metrics::ProcessMetrics::default()), false);
        let table = &["table"];
        let shard = &["shard"];
        let reference = &["reference"];
        Self {
            health: NodeHealth::default(),
            cluster: Arc::new(ClusterView::default()),
            records_read: b.counter("records_read_total", "Kinesis records read (aggregates count once)"),
            bytes_read: b.counter("bytes_read_total", "Bytes of Kinesis record data read"),
            rows_committed: b.counters(
                "rows_committed_total",
                "Rows upserted or deleted in the warehouse",
                &["table", "op"],
            ),
            rows_fenced: b.counters(
                "rows_fenced_total",
                "Rows not applied because the warehouse held a newer or equal version",
                table,
            ),
            rows_refused: b.counters(
                "rows_refused_total",
                "Rows the warehouse refused one by one, dead-lettered with their records",
                table,
            ),
            commits: b.counters("commits_total", "Warehouse transactions committed", table),
            commit_retries: b.counters(
                "commit_retries_total",
                "Warehouse commits that failed and were retried or given up",
                table,
            ),
            commit_seconds: b.histograms(
                "commit_duration_seconds",
                "Time to commit one batch, retries included",
                COMMIT_SECONDS,
            ),
            commit_rows: b.histograms("commit_batch_rows", "Rows in one committed batch", BATCH_ROWS),
            rows_in_flight: b.gauges(
                "rows_in_flight",
                "Rows handed to a table's sink and not committed yet (backpressure)",
                table,
            ),
            dead_letters: b.counter(
                "dead_letter_rows_total",
                "Rows written to the dead-letter table (one per record; a payload over 48,000 bytes takes several)",
            ),
            checkpoints: b.counter("checkpoints_total", "Checkpoints written to the lease table"),
            leases_owned: b.gauge("leases_owned", "Shards this node consumes"),
            shard_lag: b.float_gauges(
                "shard_lag_seconds",
                "How far the last read of a shard was behind the stream's tip (MillisBehindLatest)",
                shard,
            ),
            shards: Mutex::new(HashMap::new()),
            tables: Mutex::new(Vec::new()),
            consumer_failures: b.counters(
                "consumer_failures_total",
                "Shard consumers that failed (restarted after a back-off; after 5 in 10 minutes the lease is released)",
                shard,
            ),
            shard_last_read: b.float_gauges(
                "shard_last_read_timestamp_seconds",
                "When a read of the shard last returned records (unix time)",
                shard,
            ),
            shard_last_checkpoint: b.float_gauges(
                "shard_last_checkpoint_timestamp_seconds",
                "When the shard was last checkpointed, or its consumer started (unix time)",
                shard,
            ),
            call_errors: b.counters(
                "call_errors_total",
                "Calls to AWS and the warehouse that failed, by service and kind",
                &["service", "kind"],
            ),
            leader: b.gauge("leader", "1 while this node is the cluster's leader"),
            cluster_leases: b.gauges(
                "cluster_leases",
                "Leases by state as the leader last saw them (exported by the leader only)",
                &["state"],
            ),
            cluster_nodes: b.gauges(
                "cluster_nodes",
                "Nodes by liveness as the leader last saw them (exported by the leader only)",
                &["state"],
            ),
            reference_items: b.gauges("reference_items", "Items held by a reference table's cache", reference),
            reference_bytes: b.gauges(
                "reference_bytes",
                "Approximate bytes held by a reference table's cache",
                reference,
            ),
            reference_age: b.gauges(
                "reference_age_seconds",
                "Seconds since a reference table's cache last refreshed successfully (full load or change feed)",
                reference,
            ),
            reference_failures: b.counters(
                "reference_refresh_failures_total",
                "Reference refreshes that failed (the last snapshot is served)",
                reference,
            ),
            reference_interval: b.gauges(
                "reference_refresh_interval_seconds",
                "A reference table's refresh_interval: how often it is reloaded without a change feed",
                reference,
            ),
            references: OnceLock::new(),
            names: b.names,
            registry: b.registry,
            gathering: Mutex::new(()),
        }
    }
}

/// Now as unix time in seconds, for the timestamp gauges.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl NodeMetrics {
    /// Every sample name this node can export (histograms as `_bucket`, `_sum`, `_count`),
    /// whether or not it has a sample yet.
    pub fn metric_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// A target table: its per-table series start at zero (so `rate()` and the dashboard see
    /// them before the first commit or failure).
    pub fn register_table(&self, table: &str) {
        let mut tables = self.tables.lock().expect("never poisoned");
        if !tables.iter().any(|t| t == table) {
            tables.push(table.to_owned());
        }
        for op in ["upsert", "delete"] {
            self.rows_committed.with_label_values(&[table, op]);
        }
        for counters in [&self.rows_fenced, &self.rows_refused, &self.commits, &self.commit_retries] {
            counters.with_label_values(&[table]);
        }
        self.commit_seconds.with_label_values(&[table]);
        self.commit_rows.with_label_values(&[table]);
        self.rows_in_flight.with_label_values(&[table]);
    }

    /// `rows_fenced_total` of each table, as `table=N, …` (for a node's last log line).
    pub fn fenced_rows_text(&self) -> String {
        let tables = self.tables.lock().expect("never poisoned").clone();
        let counts: Vec<String> =
            tables.iter().map(|t| format!("{t}={}", self.rows_fenced.with_label_values(&[t.as_str()]).get())).collect();
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    }

    /// A consumer of `shard` started. The first time (not after a failure and restart) the
    /// shard's last checkpoint is taken as now: the stuck-shard alert measures from here.
    pub fn consumer_started(&self, shard: &str) {
        let mut shards = self.shards.lock().expect("never poisoned");
        if !shards.contains_key(shard) {
            shards.insert(shard.to_owned(), ShardReport::default());
            self.shard_last_checkpoint.with_label_values(&[shard]).set(unix_now());
            // From zero, so that the first failure shows in increase().
            self.consumer_failures.with_label_values(&[shard]);
        }
    }

    /// A read of `shard` found it `millis_behind` the stream's tip.
    pub fn shard_read(&self, shard: &str, millis_behind: u64) {
        let mut shards = self.shards.lock().expect("never poisoned");
        shards.entry(shard.to_owned()).or_default().read = Some((millis_behind, Instant::now()));
    }

    /// The rows `shard` has handed to each table's sink and not seen committed.
    pub fn shard_in_flight(&self, shard: &str, per_table: impl Iterator<Item = (String, i64)>) {
        let mut shards = self.shards.lock().expect("never poisoned");
        shards.entry(shard.to_owned()).or_default().in_flight = per_table.collect();
    }

    /// Forgets a shard whose lease left this node.
    pub fn forget_shard(&self, shard: &str) {
        self.shards.lock().expect("never poisoned").remove(shard);
        for gauges in [&self.shard_lag, &self.shard_last_read, &self.shard_last_checkpoint] {
            let _ = gauges.remove_label_values(&[shard]);
        }
    }

    /// A consumer of `shard` failed: what it had in flight is dropped (its sinks nack it).
    pub fn consumer_failed(&self, shard: &str) {
        self.consumer_failures.with_label_values(&[shard]).inc();
        if let Some(report) = self.shards.lock().expect("never poisoned").get_mut(shard) {
            report.in_flight.clear();
        }
    }

    /// Reports `references` from now on (a node starts serving before they are loaded).
    pub fn watch_references(&self, references: Arc<ReferenceSet>) {
        let _ = self.references.set(references);
    }

    /// The node's metrics in Prometheus's text format, with the reference tables' gauges and
    /// the cluster view read now.
    pub fn gather(&self) -> String {
        let _one_at_a_time = self.gathering.lock().expect("never poisoned");
        for cache in self.references.get().into_iter().flat_map(|r| r.caches()) {
            let name = [cache.name.as_str()];
            self.reference_items.with_label_values(&name).set(cache.len() as i64);
            self.reference_bytes.with_label_values(&name).set(cache.bytes() as i64);
            self.reference_age.with_label_values(&name).set(cache.age().as_secs() as i64);
            self.reference_interval.with_label_values(&name).set(cache.refresh_interval.as_secs() as i64);
            let failures = self.reference_failures.with_label_values(&name);
            failures.inc_by(cache.refresh_failures().saturating_sub(failures.get()));
        }
        let shards = self.shards.lock().expect("never poisoned");
        // A shard behind at its last read has fallen further behind by the time since (reads
        // may be paused: backpressure, a join waiting); one caught up then counts as caught up
        // until reads stop for READ_GAP (a read outage, a wedged consumer).
        for (shard, report) in shards.iter() {
            let Some((behind_ms, at)) = report.read else { continue };
            let since = at.elapsed();
            let since = if behind_ms > 0 || since > READ_GAP { since.as_secs_f64() } else { 0.0 };
            self.shard_lag.with_label_values(&[shard.as_str()]).set(behind_ms as f64 / 1000.0 + since);
        }
        for table in self.tables.lock().expect("never poisoned").iter() {
            let rows: i64 =
                shards.values().flat_map(|r| &r.in_flight).filter(|(t, _)| t == table).map(|(_, n)| n).sum();
            self.rows_in_flight.with_label_values(&[table.as_str()]).set(rows);
        }
        drop(shards);
        let leading = self.cluster.is_leader();
        self.leader.set(leading as i64);
        let states = LEASE_STATES.iter().zip(self.cluster.leases()).map(|(s, n)| (&self.cluster_leases, s, n));
        let nodes = NODE_STATES.iter().zip(self.cluster.nodes()).map(|(s, n)| (&self.cluster_nodes, s, n));
        for (gauges, state, n) in states.chain(nodes) {
            if leading {
                gauges.with_label_values(&[state]).set(n);
            } else {
                let _ = gauges.remove_label_values(&[state]);
            }
        }
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).expect("text encoding cannot fail")
    }
}
