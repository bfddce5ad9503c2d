//! Put → visible latency of a cluster on the local stack: `tributary run` nodes (release build)
//! consume an 8-shard kinesis-local stream into PostgreSQL while this program writes records at
//! a steady rate; one record in 50 is a probe whose arrival in PostgreSQL is watched (polled
//! every 20 ms), so the figure is what a reader of the warehouse sees, under the full load.
//!
//! `cargo bench --bench latency` (needs `deploy/local/stack.sh install`). Environment:
//! `TRIBUTARY_LATENCY_RATE` (records/s, default 5000), `TRIBUTARY_LATENCY_SECS` (default 30),
//! `TRIBUTARY_LATENCY_NODES` (default 2), and the nodes' `idle_read_interval` and
//! `batch_latency` as `TRIBUTARY_LATENCY_IDLE_MS` / `TRIBUTARY_LATENCY_BATCH_MS` (default 500 each,
//! the defaults of `tributary run`), and `TRIBUTARY_LATENCY_CONSUMER` (`polling`, the default, or
//! `efo`: enhanced fan-out, the emulator pushing an event a second). The last line reads
//! `latency: p50 N ms, p99 M ms, max X ms; R rec/s written, W rec/s landed`.

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use adapters::postgres::PostgresWarehouse;
use proto::LeaseTable;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::local_stack::{emulator, Service};
use testkit::postgres_server::postgres;

#[path = "common.rs"]
mod common;
use common::{env, pipeline, record};

#[path = "../tests/processes/mod.rs"]
mod processes;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (rate, secs, nodes) =
        (env("TRIBUTARY_LATENCY_RATE", 5000), env("TRIBUTARY_LATENCY_SECS", 30), env("TRIBUTARY_LATENCY_NODES", 2));
    let (ks, ds) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = processes::database(&admin, &pg.url, "latency").await;
    let stream = format!("latency-{}", std::process::id());
    let kinesis = Kinesis::new(&ks.sdk_config(), &stream);
    kinesis.create_stream(8).await.unwrap();
    let (idle, batch) = (env("TRIBUTARY_LATENCY_IDLE_MS", 500), env("TRIBUTARY_LATENCY_BATCH_MS", 500));
    let consumer = std::env::var("TRIBUTARY_LATENCY_CONSUMER").unwrap_or_else(|_| "polling".into());
    let dir = std::env::temp_dir().join(format!("tributary-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    let pipeline = pipeline("latency_events");
    std::fs::write(
        &config,
        format!(
            "{pipeline}\n[node]\nfailover_time = \"10s\"\nidle_read_interval = \"{idle}ms\"\nbatch_latency = \"{batch}ms\"\n\
             [stream]\nname = \"{stream}\"\nconsumer = \"{consumer}\"\n[lease_table]\nname = \"{stream}-leases\"\n[warehouse]\nkind = \"postgres\"\n\
             url = \"{url}\"\n"
        ),
    )
    .unwrap();
    let mut running: Vec<processes::NodeProcess> =
        (0..nodes).map(|i| processes::NodeProcess::spawn(&config, &format!("node-{i}"), &ks, &ds)).collect();
    // Start measuring once every shard is owned.
    let table = DynamoLeaseTable::new(&ds.sdk_config(), format!("{stream}-leases"));
    for _ in 0..300 {
        let leases = table.scan().await.unwrap_or_default();
        if leases.len() == 8 && leases.iter().all(|l| l.owner.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{nodes} nodes own the 8 shards (reading by {consumer}); writing {rate} records/s for {secs}s");

    let warehouse = PostgresWarehouse::connect(&url).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let producer = {
        let kinesis = kinesis.clone();
        tokio::spawn(async move {
            let tick = Duration::from_millis(20);
            let per_tick = (rate as usize * tick.as_millis() as usize / 1000).max(1);
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
            let (start, mut n) = (Instant::now(), 0usize);
            while start.elapsed() < Duration::from_secs(secs) {
                ticker.tick().await;
                let batch: Vec<(String, Vec<u8>)> = (n..n + per_tick)
                    .map(|i| {
                        let id = if i % 50 == 0 { format!("p-{i:09}") } else { format!("r-{i:09}") };
                        (id.clone(), record(&id, 200))
                    })
                    .collect();
                // Several PutRecords in flight, as a producer fleet would have.
                let permit = in_flight.clone().acquire_owned().await.unwrap();
                let (kinesis, tx) = (kinesis.clone(), tx.clone());
                tokio::spawn(async move {
                    let sent_at = Instant::now();
                    for chunk in batch.chunks(500) {
                        let mut pending = chunk.to_vec();
                        while !pending.is_empty() {
                            let refused = kinesis.put_records(&pending).await.unwrap();
                            pending = adapters::kinesis::refused_only(pending, &refused);
                        }
                    }
                    for (id, _) in batch.iter().filter(|(id, _)| id.starts_with("p-")) {
                        let _ = tx.send((id.clone(), sent_at));
                    }
                    drop(permit);
                });
                n += per_tick;
            }
            let _ = in_flight.acquire_many(16).await;
            (n, start.elapsed())
        })
    };
    // Watch the probes.
    let mut waiting: BTreeMap<String, Instant> = BTreeMap::new();
    let mut latencies = Vec::new();
    let deadline_after_producer = Duration::from_secs(60);
    let mut producer_done: Option<(usize, Duration, Instant)> = None;
    let mut producer = Some(producer);
    loop {
        while let Ok((id, at)) = rx.try_recv() {
            waiting.insert(id, at);
        }
        if !waiting.is_empty() {
            let ids: Vec<String> = waiting.keys().take(200).map(|k| format!("'{k}'")).collect();
            let sql = format!("SELECT id FROM latency_events WHERE id IN ({})", ids.join(", "));
            if let Ok(rows) = warehouse.query_text(&sql).await {
                let now = Instant::now();
                for r in rows {
                    if let Some(at) = r[0].as_ref().and_then(|id| waiting.remove(id)) {
                        latencies.push(now - at);
                    }
                }
            }
        }
        if producer_done.is_none() && producer.as_ref().is_some_and(|p| p.is_finished()) {
            let (n, took) = producer.take().unwrap().await.unwrap();
            producer_done = Some((n, took, Instant::now()));
        }
        if let Some((_, _, at)) = producer_done {
            if (waiting.is_empty() && rx.is_empty()) || at.elapsed() > deadline_after_producer {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (written, took, _) = producer_done.unwrap();
    // Records written after the last probe may still be on their way: wait for them (bounded).
    let landed = processes::wait_count(&warehouse, "SELECT count(*) FROM latency_events", written).await;
    for n in &mut running {
        n.terminate();
    }
    let _ = std::fs::remove_dir_all(&dir);
    latencies.sort();
    assert!(!latencies.is_empty(), "no probe landed");
    println!("{} probes, {} never seen", latencies.len(), waiting.len());
    println!(
        "latency ({consumer}): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {:.0} rec/s written, {} of {written} landed",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        written as f64 / took.as_secs_f64(),
        landed
    );
}
