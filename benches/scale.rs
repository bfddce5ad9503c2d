//! The protocol at scale, simulated: real nodes (coordinator, lease keeper, consumers, sinks) on
//! in-memory ports in virtual time (a paused tokio clock), so the figures are exact and the same
//! on every run. Two clusters: 2 nodes × 4 shards, and 64 nodes × 4,096 shards.
//!
//! For each: after a cold start, after 8 nodes die at once and after 16 join (the large one), the
//! rounds (`assign_interval`s, 500 ms) and seconds until every live node holds its share ±1;
//! the lease table's calls, and DynamoDB's request units for them (rows as the DynamoDB adapter
//! writes them, sized by DynamoDB's rules: `adapters::dynamodb_units`), per minute for the whole
//! cluster, idle and loaded (every shard receiving records, so every shard checkpoints each
//! `checkpoint_interval`); next to KCL's at the same failover time: one renewal per lease every
//! failover_time / 3, the leader's Scan every 2 × failover_time, and the same checkpoints. Cost
//! weighs a write request unit as 5 read request units, as DynamoDB on-demand prices them.
//! And the leader's cycle: the real time its planner takes over the large cluster's leases.
//!
//! `cargo bench --bench scale`. `TRIBUTARY_SCALE_NODES` / `TRIBUTARY_SCALE_SHARDS` change the
//! large cluster (default 64 / 4096). The last line reads
//! `scale: balanced in N, N, N rounds; cost X of KCL's idle, Y loaded (64 × 4096)`.

use async_trait::async_trait;
use coordinator::ClusterSettings;
use proto::memory::{MemoryLeaseTable, MemoryStream, MemoryWarehouse};
use proto::{Clock, Expect, Lease, LeaseChange, LeaseError, LeaseTable, Membership, WorkerId};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::cluster::LocalCluster;
use worker::{NodeConfig, NodePorts, Pipeline, PipelineConfig};

use adapters::dynamodb_units::{lease_bytes, membership_bytes, read_units, write_units};

const FAILOVER: Duration = Duration::from_secs(10);
const ROUND: Duration = Duration::from_millis(500);
/// A write request unit costs this many read request units (on-demand prices).
const WRITE_WEIGHT: f64 = 5.0;

#[path = "common.rs"]
mod common;
use common::env;

/// Calls and request units.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    reads: u64,
    writes: u64,
    read_units: f64,
    write_units: f64,
    checkpoints: u64,
}

impl Tally {
    fn minus(&self, earlier: &Tally) -> Tally {
        Tally {
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
            read_units: self.read_units - earlier.read_units,
            write_units: self.write_units - earlier.write_units,
            checkpoints: self.checkpoints - earlier.checkpoints,
        }
    }

    fn cost(&self) -> f64 {
        self.read_units + WRITE_WEIGHT * self.write_units
    }
}

/// The in-memory lease table, each call charged as DynamoDB would charge the adapter's call:
/// reads strongly consistent except the owner index's, writes on the larger of the row's sizes.
struct Costed {
    inner: MemoryLeaseTable,
    tally: Mutex<Tally>,
}

impl Costed {
    fn read(&self, bytes: usize, consistent: bool) {
        let mut t = self.tally.lock().unwrap();
        t.reads += 1;
        t.read_units += read_units(bytes, consistent);
    }

    fn write(&self, bytes: usize) {
        let mut t = self.tally.lock().unwrap();
        t.writes += 1;
        t.write_units += write_units(bytes);
    }

    async fn size_of(&self, key: &str) -> usize {
        self.inner.get(key).await.ok().flatten().map_or(0, |l| lease_bytes(&l))
    }

    async fn membership_size(&self) -> usize {
        membership_bytes(&self.inner.membership(true).await.unwrap_or_default())
    }
}

#[async_trait]
impl LeaseTable for Costed {
    async fn create(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.write(lease_bytes(lease));
        self.inner.create(lease).await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        let row = self.inner.get(key).await?;
        self.read(row.as_ref().map_or(0, lease_bytes), true);
        Ok(row)
    }

    async fn scan(&self) -> Result<Vec<Lease>, LeaseError> {
        let rows = self.inner.scan().await?;
        self.read(rows.iter().map(lease_bytes).sum(), true);
        Ok(rows)
    }

    async fn owned_by(&self, owner: &WorkerId) -> Result<Vec<Lease>, LeaseError> {
        let rows = self.inner.owned_by(owner).await?;
        self.read(rows.iter().map(lease_bytes).sum(), false);
        Ok(rows)
    }

    async fn update(&self, key: &str, expect: &Expect, change: &LeaseChange) -> Result<Lease, LeaseError> {
        let before = self.size_of(key).await;
        let result = self.inner.update(key, expect, change).await;
        self.write(before.max(result.as_ref().map_or(0, lease_bytes)));
        if result.is_ok() && change.checkpoint.is_some() && change.owner.is_none() {
            self.tally.lock().unwrap().checkpoints += 1;
        }
        result
    }

    async fn delete(&self, key: &str, expect: &Expect) -> Result<(), LeaseError> {
        self.write(self.size_of(key).await);
        self.inner.delete(key, expect).await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerId,
        expected: Option<u64>,
        draining: bool,
    ) -> Result<Membership, LeaseError> {
        let result = self.inner.heartbeat(worker, expected, draining).await;
        self.write(self.membership_size().await);
        result
    }

    async fn membership(&self, consistent: bool) -> Result<Membership, LeaseError> {
        let row = self.inner.membership(consistent).await?;
        self.read(membership_bytes(&row), consistent);
        Ok(row)
    }

    async fn remove_worker(&self, worker: &WorkerId, expected: u64) -> Result<(), LeaseError> {
        self.write(self.membership_size().await);
        self.inner.remove_worker(worker, expected).await
    }

    async fn claim_leadership(
        &self,
        me: &WorkerId,
        observed: Option<(&WorkerId, Option<u64>)>,
    ) -> Result<Membership, LeaseError> {
        self.write(self.membership_size().await);
        self.inner.claim_leadership(me, observed).await
    }

    async fn resign_leadership(&self, me: &WorkerId) -> Result<(), LeaseError> {
        self.write(self.membership_size().await);
        self.inner.resign_leadership(me).await
    }

    async fn announce_change(&self) -> Result<(), LeaseError> {
        self.write(self.membership_size().await);
        self.inner.announce_change().await
    }
}

fn mapper() -> Pipeline {
    let config = PipelineConfig::from_toml(
        r#"
        [[table]]
        name = "scale"
        key = ["key"]
        column = [{ name = "key", from = "key", type = "text" }]
        "#,
    )
    .unwrap();
    Pipeline::new(&config, Arc::new(worker::reference_set::ReferenceSet::empty())).unwrap()
}

struct Sim {
    cluster: LocalCluster,
    stream: MemoryStream,
    table: Arc<Costed>,
    shards: usize,
    put: u64,
}

impl Sim {
    async fn new(nodes: usize, shards: usize) -> Sim {
        let stream = MemoryStream::new(shards as u32, Clock::starting_at(0));
        let table = Arc::new(Costed { inner: MemoryLeaseTable::new(), tally: Mutex::default() });
        let ports = NodePorts {
            table: table.clone(),
            reader: Arc::new(stream.clone()),
            warehouse: Arc::new(MemoryWarehouse::new()),
            mapper: Arc::new(mapper()),
        };
        let mut cluster =
            LocalCluster::new(ports, NodeConfig::new(WorkerId::new("n"), ClusterSettings::with_failover(FAILOVER)));
        for _ in 0..nodes {
            cluster.start_node(None).await.unwrap();
        }
        Sim { cluster, stream, table, shards, put: 0 }
    }

    /// Whether every live node holds its share ±1 of the open shards' leases, all owned.
    async fn balanced(&self) -> bool {
        let assignment = self.cluster.assignment().await;
        let live: BTreeSet<WorkerId> = self.cluster.live().into_iter().collect();
        let counts: Vec<usize> = live.iter().map(|n| assignment.get(n).map_or(0, Vec::len)).collect();
        let held: usize = counts.iter().sum();
        let (min, max) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
        held == self.shards && max - min <= 1
    }

    /// Runs until balanced (at most `limit`); the rounds it took.
    async fn until_balanced(&mut self, limit: Duration, load: bool) -> Option<u32> {
        let mut rounds = 0;
        while ROUND * rounds < limit {
            if self.balanced().await {
                return Some(rounds);
            }
            self.run(ROUND, load).await;
            rounds += 1;
        }
        None
    }

    /// Lets `for_` of virtual time pass, putting 2 records a second per shard when `load`.
    async fn run(&mut self, for_: Duration, load: bool) {
        let step = Duration::from_millis(100);
        let mut left = for_;
        while !left.is_zero() {
            if load {
                for _ in 0..(self.shards / 5).max(1) {
                    self.put += 1;
                    let key = format!("k{}", self.put);
                    self.stream.put(&key, format!(r#"{{"key":"{key}"}}"#).into_bytes());
                }
            }
            tokio::time::sleep(step.min(left)).await;
            left = left.saturating_sub(step);
        }
    }

    /// Calls and units of a minute of virtual time.
    async fn minute(&mut self, load: bool) -> Tally {
        let before = *self.table.tally.lock().unwrap();
        self.run(Duration::from_secs(60), load).await;
        self.table.tally.lock().unwrap().minus(&before)
    }

    /// KCL's calls and units in a minute with these leases, the same checkpoints as `ours`.
    async fn kcl(&self, ours: &Tally) -> Tally {
        let leases = self.table.inner.scan().await.unwrap();
        let renewals_per_lease = 60.0 / (FAILOVER.as_secs_f64() / 3.0);
        let scans = 60.0 / (2.0 * FAILOVER.as_secs_f64());
        let table_bytes: usize = leases.iter().map(lease_bytes).sum();
        let renewal_units: f64 = leases.iter().map(|l| write_units(lease_bytes(l))).sum::<f64>() * renewals_per_lease;
        let checkpoint_units = ours.checkpoints as f64 * write_units(leases.iter().map(lease_bytes).max().unwrap_or(0));
        Tally {
            reads: scans as u64,
            writes: (leases.len() as f64 * renewals_per_lease) as u64 + ours.checkpoints,
            read_units: scans * read_units(table_bytes, false),
            write_units: renewal_units + checkpoint_units,
            checkpoints: ours.checkpoints,
        }
    }
}

fn show(label: &str, ours: &Tally, kcl: &Tally) -> f64 {
    println!(
        "  {label}: tributary {} reads + {} writes a minute ({:.0} RRU + {:.0} WRU, cost {:.0}); KCL {} + {} ({:.0} RRU + \
         {:.0} WRU, cost {:.0}); ratio {:.2}; checkpoints {}",
        ours.reads,
        ours.writes,
        ours.read_units,
        ours.write_units,
        ours.cost(),
        kcl.reads,
        kcl.writes,
        kcl.read_units,
        kcl.write_units,
        kcl.cost(),
        ours.cost() / kcl.cost(),
        ours.checkpoints
    );
    ours.cost() / kcl.cost()
}

fn seconds(rounds: Option<u32>) -> String {
    match rounds {
        Some(r) => format!("{r} rounds ({:.1} s)", (ROUND * r).as_secs_f64()),
        None => "never".into(),
    }
}

/// One cluster: balance after a cold start (and, when `churn`, after 8 die and 16 join), and
/// the cost idle and loaded; (rounds, idle ratio, loaded ratio).
async fn cluster(nodes: usize, shards: usize, churn: bool) -> (Vec<Option<u32>>, f64, f64) {
    println!("{nodes} nodes × {shards} shards, failover_time {FAILOVER:?}:");
    let started = Instant::now();
    let mut sim = Sim::new(nodes, shards).await;
    let mut rounds = vec![sim.until_balanced(Duration::from_secs(120), false).await];
    println!("  cold start: balanced after {}", seconds(rounds[0]));
    sim.run(Duration::from_secs(20), false).await;
    let idle = sim.minute(false).await;
    let idle_ratio = show("idle", &idle, &sim.kcl(&idle).await);
    sim.run(Duration::from_secs(5), true).await;
    let loaded = sim.minute(true).await;
    let loaded_ratio = show("loaded", &loaded, &sim.kcl(&loaded).await);
    if churn {
        let mut victims = Vec::new();
        for id in sim.cluster.live() {
            if victims.len() < 8 && !sim.cluster.node(&id).unwrap().is_leader().await {
                victims.push(id);
            }
        }
        let killed_at = tokio::time::Instant::now();
        for v in &victims {
            sim.cluster.kill(v).await;
        }
        let after_kill = sim.until_balanced(Duration::from_secs(120), true).await;
        // Their death is seen once their heartbeats stood still for failover_time; the rounds
        // that count are the leader's after that.
        let declared = sim.cluster.timeline.events().into_iter().find_map(|(at, e)| {
            (at >= killed_at && matches!(e, coordinator::ClusterEvent::NodeDead { .. })).then_some(at)
        });
        let detection = declared.map(|at| at - killed_at);
        let after_detection = after_kill.zip(detection).map(|(r, d)| {
            let balanced = killed_at + ROUND * r;
            ((balanced - (killed_at + d)).as_millis() / ROUND.as_millis()) as u32
        });
        rounds.push(after_detection);
        println!(
            "  8 nodes killed at once: declared dead {:.1} s after the kill (failover_time), balanced {} later \
             ({} after the kill)",
            detection.unwrap_or_default().as_secs_f64(),
            seconds(after_detection),
            seconds(after_kill)
        );
        for _ in 0..16 {
            sim.cluster.start_node(None).await.unwrap();
        }
        rounds.push(sim.until_balanced(Duration::from_secs(120), true).await);
        println!("  16 nodes joined: balanced after {}", seconds(rounds[2]));
    }
    // The leader's planning, in real time, over this cluster's leases.
    let leases = sim.table.inner.scan().await.unwrap();
    let live: BTreeSet<WorkerId> = sim.cluster.live().into_iter().collect();
    let empty = BTreeSet::new();
    let input = coordinator::planner::PlanInput {
        live: &live,
        draining: &BTreeSet::new(),
        stalled: &empty,
        settling: &empty,
        held_elsewhere: &empty,
    };
    let plan_started = Instant::now();
    let runs = 20;
    for _ in 0..runs {
        std::hint::black_box(coordinator::plan(&leases, &input));
    }
    println!(
        "  leader's plan over {} leases and {} nodes: {:.2} ms a cycle (real time); simulation took {:.1} s",
        leases.len(),
        live.len(),
        plan_started.elapsed().as_secs_f64() * 1000.0 / runs as f64,
        started.elapsed().as_secs_f64()
    );
    sim.cluster.stop_all().await;
    (rounds, idle_ratio, loaded_ratio)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let (_, small_idle, small_loaded) = cluster(2, 4, false).await;
        let (nodes, shards) = (env("TRIBUTARY_SCALE_NODES", 64) as usize, env("TRIBUTARY_SCALE_SHARDS", 4096) as usize);
        let (rounds, idle, loaded) = cluster(nodes, shards, true).await;
        let shown: Vec<String> = rounds.iter().map(|r| r.map_or("never".into(), |r| r.to_string())).collect();
        println!("small cluster: cost {small_idle:.2} of KCL's idle, {small_loaded:.2} loaded (2 × 4)");
        println!(
            "scale: balanced in {} rounds; cost {idle:.2} of KCL's idle, {loaded:.2} loaded ({nodes} × {shards})",
            shown.join(", ")
        );
    });
}
