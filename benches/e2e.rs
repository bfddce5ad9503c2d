//! End to end, one node into real PostgreSQL: how long a record takes from its put to the
//! commit that makes it visible, what the node spends on it, and the most it commits.
//!
//! The node is the real one (`worker::Node`: coordinator, lease keeper, shard consumers, sinks)
//! with the real lease table (DynamoDB on the local stack) and the real warehouse adapter
//! (`PostgresWarehouse`). Its stream is the in-memory one, read through the same `ShardReader`
//! port with the same pacing as Kinesis (a read every `read_interval`, 200 ms, at most 5 reads a
//! second per shard), running in real time: the Kinesis emulator takes only some hundreds of
//! records a second here, far below the design load; the first phase measures what it does take.
//!
//! Phases, in one run:
//! 1. **e2e**: 8 shards, `TRIBUTARY_E2E_RATE` records/s (default 5,000) for `TRIBUTARY_E2E_SECS`
//!    (default 60). Each record carries its put time (µs); when a commit returns, every row it
//!    made visible gives one latency. CPU is the process's minus the producer thread's (the node
//!    and its PostgreSQL client, not the generator), per 10,000 records; PostgreSQL's backends'
//!    CPU is reported apart. First, so the process's peak RSS is this phase's.
//! 2. **emulator**: the node reads an 8-shard kinesis-local stream while PutRecords calls (16 in
//!    flight, 500 records each) write as fast as the emulator accepts, for
//!    `TRIBUTARY_E2E_EMULATOR_SECS` (default 20; 0 skips it): the rate it sustains.
//! 3. **ceiling**: `TRIBUTARY_E2E_CEILING_ROWS` records (default 300,000) wait in the stream
//!    before the node starts; the rows/s it commits from its first commit to its last, with 8
//!    and 64 shards, and with 8 shards staging by INSERTs (the earlier path). Next to it, the
//!    **copy limit**: the same rows by plain binary `COPY` into an unindexed table, on the same
//!    server, one connection, as the node has. 8 shards deliver at most 16 MiB/s (the consumer
//!    keeps each shard under Kinesis's 2 MiB/s), about 56,000 of these records a second.
//!
//! Node settings: `TRIBUTARY_E2E_BATCH_MS` (`batch_latency`, default 100) and
//! `TRIBUTARY_E2E_READ_MS` (`read_interval`, default 200).
//!
//! `cargo bench --bench e2e` (needs `deploy/local/stack.sh install`). The last two lines read
//! `e2e: p50 N ms, p95 N ms, p99 N ms at R rec/s over S shards` and
//! `ceiling: N rows/s, copy limit: M rows/s, ratio X`.

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use adapters::postgres::{PostgresWarehouse, Staging};
use async_trait::async_trait;
use coordinator::{ClusterSettings, EventSink};
use proto::memory::{MemoryLeaseTable, MemoryStream};
use proto::{
    Batch, Clock, CommitStats, LeaseTable, ShardReader, TableSchema, Value, Warehouse, WarehouseError, WorkerId,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::local_stack::{emulator, Emulator, Service};
use testkit::postgres_server::postgres;
use worker::reference_set::ReferenceSet;
use worker::{Node, NodeConfig, NodePorts, Pipeline, PipelineConfig};

#[path = "common.rs"]
mod common;
use common::env;

#[path = "../tests/processes/mod.rs"]
mod processes;

const TABLE: &str = "e2e_events";

const PIPELINE: &str = r#"
format = "json"
[[table]]
name = "e2e_events"
key = ["id"]
column = [
    { name = "id", from = "id", type = "text" },
    { name = "station", from = "station", type = "text" },
    { name = "kwh", from = "kwh", type = "double" },
    { name = "note", from = "note", type = "text" },
    { name = "put_us", from = "put_us", type = "bigint" },
]
"#;

/// Microseconds since the Unix epoch.
fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_micros() as i64
}

/// Record `i`: ~300 bytes of JSON carrying its put time.
fn record(i: u64, put_us: i64) -> (String, Vec<u8>) {
    let id = format!("r-{i:010}");
    let payload = format!(
        r#"{{"id":"{id}","station":"2-39-{}","kwh":{}.5,"note":"{}","put_us":{put_us}}}"#,
        i % 997,
        i % 60,
        "x".repeat(200)
    );
    (id, payload.into_bytes())
}

/// What the node committed, seen from the warehouse port.
#[derive(Default)]
struct Seen {
    /// Put → commit returned, one per row of the watched table.
    latencies_us: Vec<i64>,
    first_commit: Option<Instant>,
    last_commit: Option<Instant>,
    /// Rows in the first commit (not counted in the rate from first to last commit).
    first_rows: usize,
    rows: usize,
    commits: usize,
    /// Time spent inside the warehouse's commits.
    busy: Duration,
}

/// The warehouse port with a watch on its commits.
struct Watched {
    inner: Arc<dyn Warehouse>,
    seen: Mutex<Seen>,
}

#[async_trait]
impl Warehouse for Watched {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        self.inner.ensure_table(table).await
    }

    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        self.inner.prune_tombstones(table, retention).await
    }

    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        let started = Instant::now();
        let stats = self.inner.commit(batch).await?;
        if batch.table.name == TABLE {
            let (at, now) = (Instant::now(), now_us());
            let put = batch.table.columns.iter().position(|c| c.name == "put_us").expect("put_us column");
            let mut seen = self.seen.lock().unwrap();
            for row in &batch.rows {
                if let Value::Int(put_us) = row.values[put] {
                    seen.latencies_us.push(now - put_us);
                }
            }
            if seen.first_commit.is_none() {
                seen.first_commit = Some(at);
                seen.first_rows = batch.rows.len();
            }
            seen.last_commit = Some(at);
            seen.rows += batch.rows.len();
            seen.commits += 1;
            seen.busy += started.elapsed();
        }
        Ok(stats)
    }
}

impl Watched {
    fn rows(&self) -> usize {
        self.seen.lock().unwrap().rows
    }

    /// Rows/s from the first commit to the last (the first commit's rows not counted).
    fn rate(&self) -> f64 {
        let seen = self.seen.lock().unwrap();
        match (seen.first_commit, seen.last_commit) {
            (Some(a), Some(b)) if b > a => (seen.rows - seen.first_rows) as f64 / (b - a).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Where the node keeps its leases.
#[derive(Clone, Copy)]
enum Leases {
    /// DynamoDB on the local stack: the real adapter, its calls and their CPU.
    Dynamo,
    /// In memory: the ceiling phases, so the emulator (moto, Python, up to half a core here
    /// answering the node's polls) does not take the CPU the node and PostgreSQL share, as the
    /// real DynamoDB, elsewhere, would not.
    Memory,
}

struct Bench {
    dynamo: Emulator,
    pg_url: String,
    admin: PostgresWarehouse,
    batch_latency: Duration,
    read_interval: Duration,
    run: u32,
}

/// CPU seconds of this process, and of its thread named `except` (to leave out).
fn cpu_seconds(except: &str) -> (f64, f64) {
    let ticks = procfs::ticks_per_second() as f64;
    let me = procfs::process::Process::myself().expect("/proc/self");
    let stat = me.stat().expect("stat");
    let mut apart = 0.0;
    for task in me.tasks().expect("tasks").flatten() {
        if let Ok(s) = task.stat() {
            if s.comm == except {
                apart += (s.utime + s.stime) as f64 / ticks;
            }
        }
    }
    ((stat.utime + stat.stime) as f64 / ticks, apart)
}

/// CPU seconds of the PostgreSQL backends serving `database`.
async fn backend_cpu(admin: &PostgresWarehouse, database: &str) -> f64 {
    let rows = admin
        .query_text(&format!("SELECT pid FROM pg_stat_activity WHERE datname = '{database}'"))
        .await
        .unwrap_or_default();
    let ticks = procfs::ticks_per_second() as f64;
    rows.iter()
        .filter_map(|r| r[0].as_ref()?.parse::<i32>().ok())
        .filter_map(|pid| procfs::process::Process::new(pid).ok()?.stat().ok())
        .map(|s| (s.utime + s.stime) as f64 / ticks)
        .sum()
}

/// Peak and current resident memory of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = procfs::process::Process::myself().and_then(|p| p.status()).expect("status");
    let mib = |kb: Option<u64>| kb.unwrap_or(0) as f64 / 1024.0;
    (mib(status.vmhwm), mib(status.vmrss))
}

fn percentile_ms(sorted: &[i64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

impl Bench {
    /// A fresh database; its connection string and name.
    async fn database(&mut self, what: &str) -> (String, String) {
        self.run += 1;
        let name = format!("e2e_{what}_{}", self.run);
        (processes::database(&self.admin, &self.pg_url, &name).await, name)
    }

    /// One node on `reader`, committing into `url`; it owns every shard when this returns.
    async fn node(
        &mut self,
        reader: Arc<dyn ShardReader>,
        shards: usize,
        url: &str,
        staging: Staging,
        leases: Leases,
    ) -> (Node, Arc<Watched>) {
        let config = PipelineConfig::from_toml(PIPELINE).unwrap();
        let mapper = Pipeline::new(&config, Arc::new(ReferenceSet::empty())).unwrap();
        let warehouse = PostgresWarehouse::connect(url).await.unwrap().with_staging(staging);
        let watched = Arc::new(Watched { inner: Arc::new(warehouse), seen: Mutex::default() });
        let table: Arc<dyn LeaseTable> = match leases {
            Leases::Dynamo => {
                let name = format!("e2e-{}-{}-leases", std::process::id(), self.run);
                let table = DynamoLeaseTable::new(&self.dynamo.sdk_config(), name);
                table.ensure_table().await.unwrap();
                Arc::new(table)
            }
            Leases::Memory => Arc::new(MemoryLeaseTable::new()),
        };
        let mut config =
            NodeConfig::new(WorkerId::new("e2e-node"), ClusterSettings::with_failover(Duration::from_secs(10)));
        config.sink.batch_latency = self.batch_latency;
        config.consumer.read_interval = self.read_interval;
        let ports = NodePorts { table, reader, warehouse: watched.clone(), mapper: Arc::new(mapper) };
        let node = Node::start(config, ports, EventSink::none()).await.unwrap();
        for _ in 0..600 {
            if node.owned().await.len() == shards {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(node.owned().await.len(), shards, "the node did not take every shard");
        (node, watched)
    }

    /// Waits (up to `limit`) until `want` rows are committed; how many were.
    async fn settle(watched: &Watched, want: usize, limit: Duration) -> usize {
        let start = Instant::now();
        while watched.rows() < want && start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        watched.rows()
    }

    /// Phase 1: what the Kinesis emulator sustains, written as fast as it accepts.
    async fn emulator_rate(&mut self, secs: u64) -> Option<(f64, f64)> {
        if secs == 0 {
            return None;
        }
        let ks = emulator(Service::Kinesis).unwrap();
        let kinesis = Kinesis::new(&ks.sdk_config(), format!("e2e-{}", std::process::id()));
        kinesis.create_stream(8).await.unwrap();
        let (url, _) = self.database("emulator").await;
        let (node, watched) = self.node(Arc::new(kinesis.clone()), 8, &url, Staging::Copy, Leases::Dynamo).await;
        let (start, mut written) = (Instant::now(), 0u64);
        let mut in_flight = tokio::task::JoinSet::new();
        while start.elapsed() < Duration::from_secs(secs) {
            while in_flight.len() < 16 {
                let batch: Vec<(String, Vec<u8>)> = (written..written + 500).map(|i| record(i, now_us())).collect();
                written += 500;
                let kinesis = kinesis.clone();
                in_flight.spawn(async move {
                    let mut pending = batch;
                    while !pending.is_empty() {
                        match kinesis.put_records(&pending).await {
                            Ok(refused) => pending = adapters::kinesis::refused_only(pending, &refused),
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                });
            }
            in_flight.join_next().await;
        }
        while in_flight.join_next().await.is_some() {}
        let put_rate = written as f64 / start.elapsed().as_secs_f64();
        let landed = Self::settle(&watched, written as usize, Duration::from_secs(120)).await;
        let landed_rate = landed as f64 / start.elapsed().as_secs_f64();
        node.shutdown().await;
        Some((put_rate, landed_rate))
    }

    /// Phase 2: rows/s the node commits from a backlog of `rows` over `shards` shards.
    async fn ceiling(&mut self, shards: u32, rows: u64, staging: Staging) -> f64 {
        let stream = MemoryStream::new(shards, Clock::system());
        for i in 0..rows {
            let (key, data) = record(i, now_us());
            stream.put(&key, data);
        }
        let (url, _) = self.database("ceiling").await;
        let (node, watched) = self.node(Arc::new(stream), shards as usize, &url, staging, Leases::Memory).await;
        let landed = Self::settle(&watched, rows as usize, Duration::from_secs(600)).await;
        assert_eq!(landed, rows as usize, "the backlog did not land");
        let rate = watched.rate();
        let (commits, busy) = {
            let seen = watched.seen.lock().unwrap();
            let span = seen.last_commit.zip(seen.first_commit).map(|(b, a)| b - a).unwrap_or_default();
            (seen.commits, seen.busy.as_secs_f64() / span.as_secs_f64().max(1e-9))
        };
        println!(
            "ceiling, {shards} shards, staging by {staging:?}: {rate:.0} rows/s ({commits} commits, the warehouse busy {:.0}% of the time)",
            busy * 100.0
        );
        node.shutdown().await;
        rate
    }

    /// Phase 2's reference: the same rows by plain binary COPY into an unindexed table.
    async fn copy_limit(&mut self, rows: u64) -> f64 {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::{ToSql, Type};
        let (url, _) = self.database("copy").await;
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE plain (id varchar, station varchar, kwh float8, note varchar, put_us int8, \
                 _version varchar)",
            )
            .await
            .unwrap();
        let types = [Type::VARCHAR, Type::VARCHAR, Type::FLOAT8, Type::VARCHAR, Type::INT8, Type::VARCHAR];
        let chunk = 5_000u64;
        let start = Instant::now();
        let mut i = 0u64;
        while i < rows {
            let sink = client.copy_in("COPY plain FROM STDIN (FORMAT binary)").await.unwrap();
            let writer = BinaryCopyInWriter::new(sink, &types);
            tokio::pin!(writer);
            for n in i..(i + chunk).min(rows) {
                let (id, note) = (format!("r-{n:010}"), "x".repeat(200));
                let station = format!("2-39-{}", n % 997);
                let (kwh, put, version) = ((n % 60) as f64 + 0.5, now_us(), format!("49{n:054}0000000000"));
                let row: [&(dyn ToSql + Sync); 6] = [&id, &station, &kwh, &note, &put, &version];
                writer.as_mut().write(&row).await.unwrap();
            }
            writer.finish().await.unwrap();
            i += chunk;
        }
        let rate = rows as f64 / start.elapsed().as_secs_f64();
        drop(client);
        let _ = driver.await;
        println!("copy limit: {rate:.0} rows/s (plain binary COPY, {chunk} rows per COPY, one connection)");
        rate
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let mut bench = Bench {
        dynamo: emulator(Service::Dynamo).unwrap(),
        pg_url: pg.url.clone(),
        admin,
        batch_latency: Duration::from_millis(env("TRIBUTARY_E2E_BATCH_MS", 100)),
        read_interval: Duration::from_millis(env("TRIBUTARY_E2E_READ_MS", 200)),
        run: 0,
    };

    // 1. Put → visible at the design load (first: the peak RSS is this phase's).
    let (rate, secs) = (env("TRIBUTARY_E2E_RATE", 5_000), env("TRIBUTARY_E2E_SECS", 60));
    let shards = 8;
    let stream = MemoryStream::new(shards, Clock::system());
    let (url, database) = bench.database("load").await;
    let (node, watched) =
        bench.node(Arc::new(stream.clone()), shards as usize, &url, Staging::Copy, Leases::Dynamo).await;
    let (_, rss_before) = rss_mib();
    let (cpu_before, producer_before) = cpu_seconds("e2e-producer");
    let pg_before = backend_cpu(&bench.admin, &database).await;
    let producer = {
        let stream = stream.clone();
        std::thread::Builder::new()
            .name("e2e-producer".into())
            .spawn(move || {
                let (start, mut written) = (Instant::now(), 0u64);
                let mut put_bytes = 0usize;
                while start.elapsed() < Duration::from_secs(secs) {
                    let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                    while written < due {
                        let (key, data) = record(written, now_us());
                        put_bytes += data.len();
                        stream.put(&key, data);
                        written += 1;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (written, start.elapsed(), put_bytes)
            })
            .unwrap()
    };
    while !producer.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (written, took, put_bytes) = producer.join().unwrap();
    let landed = Bench::settle(&watched, written as usize, Duration::from_secs(60)).await;
    let (cpu_after, producer_after) = cpu_seconds("e2e-producer");
    let pg_after = backend_cpu(&bench.admin, &database).await;
    let (peak, now) = rss_mib();
    let commits = watched.seen.lock().unwrap().commits;
    node.shutdown().await;

    // 2. The emulator path.
    let emulator = bench.emulator_rate(env("TRIBUTARY_E2E_EMULATOR_SECS", 20)).await;
    if let Some((put, landed)) = emulator {
        println!("emulator: kinesis-local accepted {put:.0} rec/s of PutRecords, the node committed {landed:.0} rec/s");
    }

    // 3. The ceiling, and the copy limit.
    let rows = env("TRIBUTARY_E2E_CEILING_ROWS", 300_000);
    let copy_limit = bench.copy_limit(rows).await;
    let inserts = bench.ceiling(8, rows, Staging::Inserts).await;
    let ceiling_8 = bench.ceiling(8, rows, Staging::Copy).await;
    let ceiling_64 = bench.ceiling(64, rows, Staging::Copy).await;

    let node_cpu = (cpu_after - cpu_before) - (producer_after - producer_before);
    let per_10k = |cpu: f64| cpu * 10_000.0 / landed.max(1) as f64;
    let mut latencies = std::mem::take(&mut watched.seen.lock().unwrap().latencies_us);
    latencies.sort_unstable();
    assert!(!latencies.is_empty(), "nothing landed");
    let offered = written as f64 / took.as_secs_f64();
    println!(
        "load: {written} records put in {:.1}s ({offered:.0} rec/s), {landed} committed in {commits} commits \
         ({:.0} rows/s)",
        took.as_secs_f64(),
        landed as f64 / took.as_secs_f64()
    );
    println!(
        "cpu: node {:.3} s per 10k records ({node_cpu:.1} s), postgresql backend {:.3} s per 10k ({:.1} s)",
        per_10k(node_cpu),
        per_10k(pg_after - pg_before),
        pg_after - pg_before
    );
    println!(
        "rss: peak {peak:.0} MiB, {rss_before:.0} MiB before the load, {now:.0} MiB after (the in-memory stream \
         holds every record put: {:.0} MiB of payload)",
        put_bytes as f64 / (1 << 20) as f64
    );
    println!("put→visible max {:.0} ms", percentile_ms(&latencies, 1.0));
    let ceiling = ceiling_8.max(ceiling_64);
    println!("ceiling vs INSERT staging: {:.1}x", ceiling_8.max(ceiling_64) / inserts.max(1.0));
    println!(
        "e2e: p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms at {offered:.0} rec/s over {shards} shards",
        percentile_ms(&latencies, 0.5),
        percentile_ms(&latencies, 0.95),
        percentile_ms(&latencies, 0.99),
    );
    println!("ceiling: {ceiling:.0} rows/s, copy limit: {copy_limit:.0} rows/s, ratio {:.2}", ceiling / copy_limit);
}
