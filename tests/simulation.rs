//! Deterministic simulation of the lease protocol and the data path: paused tokio time, a seeded
//! RNG, 5 nodes over in-memory ports with injected faults (throttling, lost replies that make
//! writes look failed or ambiguous, warehouse outages, expired iterators), random kills, graceful
//! stops, restarts, splits and merges. After each run the warehouse must equal the generator's
//! oracle (nothing lost, nothing applied twice, each key's last write kept), no shard may have
//! been consumed by two nodes at overlapping times, and no child before its parents stopped.
//!
//! `TRIBUTARY_SIM_SEEDS=N` sets how many seeds run (default 200); `TRIBUTARY_SIM_SEED=S` replays
//! one. A failure prints its seed.

use coordinator::ClusterSettings;
use proto::memory::{MemoryLeaseTable, MemoryStream, MemoryWarehouse};
use proto::{Clock, LeaseTable, ShardId, ShardReader, Value, WorkerId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use testkit::cluster::LocalCluster;
use testkit::faults::{FaultConfig, FaultyLeaseTable, FaultyReader, FaultyWarehouse};
use testkit::timeline::{max, median, Figures};
use worker::{NodeConfig, NodePorts, DEAD_LETTER_TABLE};

mod common;
use common::mapper;

const KEYS: usize = 64;
const PRODUCE_FOR: Duration = Duration::from_secs(40);
const FAILOVER: Duration = Duration::from_secs(10);

/// What the generator wrote.
#[derive(Default)]
struct Oracle {
    last_value: BTreeMap<String, i64>,
    good: BTreeSet<String>,
    shard_of: BTreeMap<String, ShardId>,
    malformed: BTreeSet<String>,
}

struct Outcome {
    figures: Figures,
    produced: usize,
    splits: usize,
    merges: usize,
    kills: usize,
    stops: usize,
}

async fn run_seed(seed: u64) -> Result<Outcome, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let stream = MemoryStream::new(16, Clock::starting_at(1_700_000_000_000));
    let leases = MemoryLeaseTable::new();
    let warehouse = MemoryWarehouse::new();
    let lease_faults = FaultConfig { fail_before: 0.03, fail_after: 0.03 };
    let faulty_table = Arc::new(FaultyLeaseTable::new(Arc::new(leases.clone()), lease_faults, seed ^ 1));
    let faulty_warehouse = Arc::new(FaultyWarehouse::new(
        Arc::new(warehouse.clone()),
        FaultConfig { fail_before: 0.05, fail_after: 0.05 },
        seed ^ 2,
    ));
    let faulty_reader = Arc::new(FaultyReader::new(
        Arc::new(stream.clone()),
        FaultConfig { fail_before: 0.02, fail_after: 0.02 },
        seed ^ 3,
    ));
    let ports = NodePorts {
        table: faulty_table.clone() as Arc<dyn LeaseTable>,
        reader: faulty_reader.clone() as Arc<dyn ShardReader>,
        warehouse: faulty_warehouse.clone(),
        mapper: Arc::new(mapper()),
    };
    let mut template = NodeConfig::new(WorkerId::new("template"), ClusterSettings::with_failover(FAILOVER));
    template.consumer.idle_read_interval = Duration::from_millis(250);
    template.consumer.max_records = 200;
    template.consumer.max_in_flight_rows = 400;
    template.sink.batch_rows = 300;
    template.sink.batch_latency = Duration::from_millis(300);
    let mut cluster = LocalCluster::new(ports, template);
    let mut down: Vec<WorkerId> = Vec::new();
    for i in 0..5 {
        cluster.start_node(Some(WorkerId::new(format!("n{i}")))).await.map_err(|e| e.to_string())?;
    }

    let mut oracle = Oracle::default();
    let mut counters = vec![0i64; KEYS];
    let (mut splits, mut merges, mut kills, mut stops) = (0, 0, 0, 0);
    let start = tokio::time::Instant::now();
    let mut next_chaos = start + Duration::from_secs(rng.gen_range(2..5));
    while start.elapsed() < PRODUCE_FOR {
        for _ in 0..rng.gen_range(5..15) {
            if rng.gen_bool(0.01) {
                let pk = format!("bad{}", rng.gen::<u32>());
                let (_, seq) = stream.put(&pk, b"{not json".to_vec());
                oracle.malformed.insert(seq.to_string());
            } else {
                let k = rng.gen_range(0..KEYS);
                counters[k] += 1;
                let key = format!("k{k}");
                let payload = format!(r#"{{"key":"{key}","value":{}}}"#, counters[k]);
                let (shard, seq) = stream.put(&key, payload.into_bytes());
                oracle.shard_of.insert(seq.to_string(), shard);
                oracle.last_value.insert(key, counters[k]);
                oracle.good.insert(seq.to_string());
            }
        }
        if tokio::time::Instant::now() >= next_chaos {
            next_chaos += Duration::from_secs(rng.gen_range(2..6));
            let live = cluster.live();
            match rng.gen_range(0..6) {
                0 if live.len() > 1 => {
                    let victim = live[rng.gen_range(0..live.len())].clone();
                    cluster.kill(&victim).await;
                    down.push(victim);
                    kills += 1;
                }
                1 if live.len() > 1 => {
                    let victim = live[rng.gen_range(0..live.len())].clone();
                    cluster.stop(&victim).await;
                    down.push(victim);
                    stops += 1;
                }
                2 if !down.is_empty() => {
                    let back = down.remove(rng.gen_range(0..down.len()));
                    // Half come back under the same id (a StatefulSet pod), half as new nodes.
                    let id = if rng.gen_bool(0.5) { Some(back) } else { None };
                    cluster.start_node(id).await.map_err(|e| e.to_string())?;
                }
                3 if stream.open_shards().len() < 24 => {
                    let open = stream.open_shards();
                    let s = &open[rng.gen_range(0..open.len())];
                    let mid = s.hash_range.start + (s.hash_range.end - s.hash_range.start) / 2;
                    if stream.split(&s.id, mid + 1).is_ok() {
                        splits += 1;
                    }
                }
                4 | 5 if stream.open_shards().len() > 4 => {
                    let mut open = stream.open_shards();
                    open.sort_by_key(|s| s.hash_range.start);
                    let i = rng.gen_range(0..open.len() - 1);
                    if stream.merge(&open[i].id, &open[i + 1].id).is_ok() {
                        merges += 1;
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Quiesce: faults off, a full cluster, then wait for the warehouse to catch up.
    faulty_table.set_enabled(false);
    faulty_warehouse.set_enabled(false);
    faulty_reader.set_enabled(false);
    while cluster.live().len() < 3 {
        cluster.start_node(None).await.map_err(|e| e.to_string())?;
    }
    let produced = oracle.good.len() + oracle.malformed.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let raw = warehouse.rows("sim_raw").len();
        let dead = warehouse.rows(DEAD_LETTER_TABLE).len();
        if raw + dead >= produced || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then every unfinished lease must be running on a live node (dead nodes' leases reassigned),
    // and the leader must have removed every dead node's heartbeat row.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let live: BTreeSet<WorkerId> = cluster.live().into_iter().collect();
        let rows = leases.membership(true).await.map(|m| m.workers).map_err(|e| e.to_string())?;
        if let Some(ghost) = rows.iter().find(|w| !live.contains(&w.id)) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("dead node {} still has a heartbeat row", ghost.id));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let orphan = leases.rows().into_iter().find(|l| {
            l.entity == proto::EntityType::Lease
                && !l.is_finished()
                && !l.owner.as_ref().is_some_and(|o| live.contains(o))
        });
        match orphan {
            None => break,
            Some(l) if tokio::time::Instant::now() > deadline => {
                return Err(format!("lease {} still owned by {:?} (live: {live:?})", l.key, l.owner))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    if let Some(crashed) = cluster.crashed().first() {
        return Err(format!("node {crashed} stopped on its own"));
    }
    cluster.stop_all().await;

    // Nothing lost, nothing extra.
    let raw: BTreeSet<String> = warehouse
        .rows("sim_raw")
        .values()
        .map(|r| match &r.values[1] {
            Value::Text(s) => s.clone(),
            v => panic!("{v:?}"),
        })
        .collect();
    let missing: Vec<&String> = oracle.good.difference(&raw).collect();
    if !missing.is_empty() {
        let shards: BTreeSet<&ShardId> = missing.iter().map(|s| &oracle.shard_of[*s]).collect();
        let rows: Vec<String> = leases
            .rows()
            .into_iter()
            .filter(|l| shards.iter().any(|s| s.as_str() == l.key))
            .map(|l| {
                format!(
                    "{} owner={:?} cpo={:?} cp={:?} parents={:?}",
                    l.key, l.owner, l.checkpoint_owner, l.checkpoint, l.parent_shard_ids
                )
            })
            .collect();
        return Err(format!(
            "{} records lost, e.g. {:?}; their leases: {rows:#?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        ));
    }
    if raw.len() != oracle.good.len() {
        return Err(format!("{} raw rows for {} records", raw.len(), oracle.good.len()));
    }
    let dead: BTreeSet<String> = warehouse
        .rows(DEAD_LETTER_TABLE)
        .values()
        .map(|r| match &r.values[1] {
            Value::Text(s) => s.clone(),
            v => panic!("{v:?}"),
        })
        .collect();
    if dead != oracle.malformed {
        return Err(format!("dead letters {} != malformed {}", dead.len(), oracle.malformed.len()));
    }
    // No (key, version) applied twice.
    for table in ["sim_latest", "sim_raw", DEAD_LETTER_TABLE] {
        let twice = warehouse.applied_twice(table);
        if !twice.is_empty() {
            return Err(format!("{table}: {} changes applied twice, e.g. {:?}", twice.len(), twice[0]));
        }
    }
    // Every key holds its last written value: per-key order kept across reshards and failovers.
    let latest = warehouse.rows("sim_latest");
    for (key, value) in &oracle.last_value {
        let k = proto::memory::MemoryWarehouse::key_of(&[&Value::Text(key.clone())]);
        let got = latest.get(&k).map(|r| r.values[1].clone());
        if got != Some(Value::Int(*value)) {
            return Err(format!("key {key}: warehouse has {got:?}, last written {value}"));
        }
    }
    // A graceful stop of the whole cluster leaves every unfinished lease released.
    let rows = leases.rows();
    if let Some(held) =
        rows.iter().find(|l| l.entity == proto::EntityType::Lease && !l.is_finished() && l.owner.is_some())
    {
        return Err(format!("lease {} still owned by {:?} after every node stopped", held.key, held.owner));
    }
    let shard_parents = testkit::timeline::parents(stream.list_shards().await.map_err(|e| e.to_string())?);
    // Ordering: no shard consumed by two nodes at once, no child before its parents stopped.
    let breaches = cluster.timeline.ordering_breaches(&shard_parents);
    if !breaches.is_empty() {
        return Err(format!("{} ordering breaches, e.g. {:#?}", breaches.len(), &breaches[..breaches.len().min(3)]));
    }
    Ok(Outcome { figures: cluster.timeline.figures(&shard_parents), produced, splits, merges, kills, stops })
}

fn run(seed: u64) -> Result<Outcome, String> {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    // The retries' jitter draws from this thread's generator (the runtime runs here): seeded,
    // a seed's run replays.
    fastrand::seed(seed);
    rt.block_on(run_seed(seed))
}

fn seeds() -> Vec<u64> {
    if let Ok(one) = std::env::var("TRIBUTARY_SIM_SEED") {
        return vec![one.parse().expect("TRIBUTARY_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("TRIBUTARY_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    (0..n).collect()
}

fn fmt(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}s", d.as_secs_f64())).unwrap_or_else(|| "-".into())
}

#[test]
fn simulation_keeps_the_warehouse_equal_to_the_oracle() {
    let mut all = Figures::default();
    let mut failures = Vec::new();
    let (mut produced, mut splits, mut merges, mut kills, mut stops) = (0, 0, 0, 0, 0);
    let seeds = seeds();
    for &seed in &seeds {
        match run(seed) {
            Ok(o) => {
                all.failover.extend(o.figures.failover);
                all.handoff.extend(o.figures.handoff);
                all.child_start.extend(o.figures.child_start);
                produced += o.produced;
                splits += o.splits;
                merges += o.merges;
                kills += o.kills;
                stops += o.stops;
            }
            Err(_) if failures.len() >= 10 => failures.push(seed),
            Err(e) => {
                eprintln!("seed {seed} FAILED: {e}   (replay: TRIBUTARY_SIM_SEED={seed} cargo test --test simulation)");
                failures.push(seed);
            }
        }
    }
    eprintln!(
        "simulation: {} seeds, {produced} records, {kills} kills, {stops} graceful stops, {splits} splits, {merges} merges",
        seeds.len()
    );
    eprintln!(
        "virtual time (with injected faults): failover median {} max {} | handoff median {} max {} | child start median {} max {}",
        fmt(median(&all.failover)),
        fmt(max(&all.failover)),
        fmt(median(&all.handoff)),
        fmt(max(&all.handoff)),
        fmt(median(&all.child_start)),
        fmt(max(&all.child_start)),
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    // The timing targets, in virtual time: the typical failover and handoff meet the fault-free
    // targets of tests/timing.rs even with faults injected, and a child never waits: its
    // parents' node takes it as it ends the last parent.
    let within = |d: Option<Duration>, target: Duration| d.is_none_or(|d| d <= target);
    assert!(within(median(&all.failover), FAILOVER + Duration::from_secs(2)), "failover median");
    assert!(within(median(&all.handoff), Duration::from_secs(1)), "handoff median");
    assert!(within(max(&all.child_start), Duration::from_secs(1)), "child start max");
}
