//! Faults on real processes and services (kinesis-local, moto's DynamoDB, PostgreSQL), while EV
//! sessions keep being written and updated; each run ends with the warehouse equal to what was
//! written (nothing lost, nothing applied twice, every session at its last written energy) and
//! every node exiting 0 on SIGTERM.
//! - A zombie: of two nodes, one is frozen with SIGSTOP for three times `failover_time`, then
//!   woken with SIGCONT. Its shards must move while it sleeps; awake, it must notice its leases
//!   are gone, commit nothing stale over what the other node wrote since, and rejoin.
//! - The warehouse restarted under the commits: PostgreSQL stopped fast (transactions rolled
//!   back) and immediately (a crash, recovered from its log) while a node commits every 100 ms;
//!   the server runs with `synchronous_commit = off`, which tributary's commits override.
//! - Partitions (`testkit::fault_proxy` in front of one node's DynamoDB, or its PostgreSQL): cut
//!   from the lease table but not from the warehouse, the node loses its shards to the other
//!   one and, healed, notices and rejoins, while what it committed meanwhile is fenced; cut from
//!   the warehouse but not from the lease table, it keeps its shards, holds its reads back and
//!   catches up once healed.
//! - An outage at start: a node started while Kinesis refuses connections waits it out and
//!   joins once it ends (found by `tributary chaos --seed 1`: a node restarted during a Kinesis
//!   outage exited); a stream that does not exist still fails the start at once.

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use adapters::postgres::PostgresWarehouse;
use processes::{check_ev, database, NodeProcess};
use proto::LeaseTable;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};
use testkit::ev;
use testkit::local_stack::{emulator, Service};
use testkit::postgres_server::postgres;
use testkit::postgres_server::{OwnServer, Shutdown};

mod processes;
mod prometheus;
use prometheus::scrape;

/// The runs take turns: each starts node processes on two cores.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The writer of EV sessions and its oracle.
struct Load {
    rng: ChaCha8Rng,
    generator: ev::Generator,
    oracle: ev::Oracle,
    good: usize,
}

impl Load {
    fn new(seed: u64) -> Self {
        let generator = ev::Generator::new(1_700_000_000_000);
        Self { rng: ChaCha8Rng::seed_from_u64(seed), generator, oracle: ev::Oracle::default(), good: 0 }
    }

    /// Writes `n` records (about a third of them updates of recent sessions).
    async fn put(&mut self, kinesis: &Kinesis, n: usize) {
        let mut batch = Vec::new();
        for _ in 0..n {
            let (key, data, session) = self.generator.next(&mut self.rng);
            match session {
                Some(s) => {
                    self.good += 1;
                    self.oracle.sessions.insert(s.id.clone(), s);
                }
                None => {
                    let n = self.oracle.malformed.len() as u128;
                    self.oracle.malformed.insert(proto::SequenceNumber::from_u128(n));
                }
            }
            batch.push((key, data));
        }
        for chunk in batch.chunks(100) {
            let refused = kinesis.put_records(chunk).await.unwrap();
            assert!(refused.is_empty(), "{refused:?}");
        }
    }

    /// Waits (bounded) until the warehouse holds what was written.
    async fn landed(&self, url: &str) -> Result<(), String> {
        let warehouse = PostgresWarehouse::connect(url).await.unwrap();
        let mut outcome = Err(String::new());
        for _ in 0..300 {
            outcome = check_ev(&warehouse, &self.oracle, self.good, "%").await;
            if outcome.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        outcome
    }
}

fn write_config(dir: &std::path::Path, stream: &str, url: &str, extra: &str) -> std::path::PathBuf {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[node]\nfailover_time = \"3s\"\nshutdown_deadline = \"20s\"\n{extra}[stream]\nname = \"{stream}\"\n\
             [lease_table]\nname = \"{stream}-leases\"\n[warehouse]\nkind = \"postgres\"\nurl = \"{url}\"\n",
            ev::PIPELINE
        ),
    )
    .unwrap();
    config
}

/// Waits (bounded) until node-a and node-b both hold shards: a fault on node-a then means
/// something. Fails if node-a holds none.
async fn both_hold_shards(table: &DynamoLeaseTable, a: &NodeProcess) {
    for _ in 0..100 {
        if owned_by(table, "node-a").await > 0 && owned_by(table, "node-b").await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(owned_by(table, "node-a").await > 0, "node-a holds shards:\n{}", a.log());
}

async fn owned_by(table: &DynamoLeaseTable, node: &str) -> usize {
    let leases = table.scan().await.unwrap();
    leases.iter().filter(|l| l.owner.as_ref().is_some_and(|o| o.as_str().starts_with(node))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_loses_its_shards_commits_nothing_stale_and_rejoins() {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    let (ks, ds) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, "zombie").await;
    let stream = format!("zombie-{}", std::process::id());
    let kinesis = Kinesis::new(&ks.sdk_config(), &stream);
    kinesis.create_stream(4).await.unwrap();
    let dir = std::env::temp_dir().join(format!("tributary-zombie-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, &stream, &url, "");
    let mut a = NodeProcess::spawn(&config, "node-a", &ks, &ds);
    let mut b = NodeProcess::spawn(&config, "node-b", &ks, &ds);
    let table = DynamoLeaseTable::new(&ds.sdk_config(), format!("{stream}-leases"));

    let mut load = Load::new(17);
    let started = Instant::now();
    let (mut frozen_at, mut woke_at, mut moved_after) = (None, None, None);
    // 40 ticks of 400 ms, 60 records each.
    for tick in 0..40 {
        load.put(&kinesis, 60).await;
        if tick == 8 {
            both_hold_shards(&table, &a).await;
            a.pause();
            frozen_at = Some(Instant::now());
        }
        if let (Some(at), None) = (frozen_at, moved_after) {
            if owned_by(&table, "node-a").await == 0 {
                moved_after = Some(at.elapsed());
            }
        }
        if tick == 31 {
            // Frozen three times failover_time (and more): its shards moved meanwhile.
            while frozen_at.unwrap().elapsed() < Duration::from_secs(9) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(moved_after.is_some(), "node-a's shards moved while it was frozen");
            a.resume();
            woke_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // Everything lands once, each session at its last written state: nothing the zombie held
    // from before its freeze replaced what node-b wrote since.
    assert_eq!(load.landed(&url).await, Ok(()), "node-a:\n{}\nnode-b:\n{}", a.log(), b.log());
    // Awake, it rejoins: the leader gives it its share again.
    let mut rejoined = None;
    for _ in 0..300 {
        if owned_by(&table, "node-a").await > 0 {
            rejoined = Some(woke_at.unwrap().elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rejoined.is_some(), "node-a got shards again:\n{}", a.log());
    // It noticed by the membership row (the leader declared it dead: every lease dropped), by
    // its lease keeper's poll ("taken by another node"), by a checkpoint the lease table refused
    // ("why=lost"), or as the handoff it was part of.
    let log = processes::plain(&a.log());
    let signs =
        ["declared dead by the leader", "lease taken by another node", "why=lost", "lease handed to another node"];
    assert!(signs.iter().any(|m| log.contains(m)), "awake, node-a saw its leases had gone:\n{log}");
    assert_eq!(a.terminate(), Some(0), "node-a exits 0 on SIGTERM:\n{}", a.log());
    assert_eq!(b.terminate(), Some(0), "node-b exits 0 on SIGTERM:\n{}", b.log());
    eprintln!(
        "zombie: frozen {:.1}s; its shards moved {:.1}s after the freeze; awake, it held shards again after {:.1}s ({:.0}s run)",
        (woke_at.unwrap() - frozen_at.unwrap()).as_secs_f64(),
        moved_after.unwrap().as_secs_f64(),
        rejoined.unwrap().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_fast_and_immediately_under_commits_loses_and_doubles_nothing() {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    let (ks, ds) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    // A server tuned for speed (`synchronous_commit = off`): tributary's commits must still
    // survive its crash, since the checkpoint moves past them.
    let pg = std::sync::Arc::new(OwnServer::start(false).unwrap());
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, "restarted").await;
    drop(admin);
    let stream = format!("pg-restart-{}", std::process::id());
    let kinesis = Kinesis::new(&ks.sdk_config(), &stream);
    kinesis.create_stream(2).await.unwrap();
    let dir = std::env::temp_dir().join(format!("tributary-pg-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, &stream, &url, "batch_latency = \"100ms\"\n");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}[metrics]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let mut node = NodeProcess::spawn(&config, "node-a", &ks, &ds);
    let mut load = Load::new(23);
    let mut restarts = Vec::new();
    for tick in 0..30 {
        load.put(&kinesis, 60).await;
        let how = match tick {
            6 | 14 | 22 => Some(Shutdown::Fast),
            10 | 18 | 26 => Some(Shutdown::Immediate),
            _ => None,
        };
        if let Some(how) = how {
            let (pg, at) = (pg.clone(), Instant::now());
            tokio::task::spawn_blocking(move || pg.restart(how)).await.unwrap().unwrap();
            restarts.push(format!("{how:?} in {:.1}s", at.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(load.landed(&url).await, Ok(()), "{}", node.log());
    // How many of the node's PostgreSQL calls the restarts hit (failed, then retried): a
    // restart between two commits hits none, so this is reported, not required.
    let port = node.metrics_port().unwrap_or_else(|| panic!("the node logs its metrics address:\n{}", node.log()));
    let metrics = scrape(("127.0.0.1", port)).await.1;
    let failed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tributary_call_errors_total{") && l.contains("service=\"postgres\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(node.terminate(), Some(0), "exits 0 on SIGTERM:\n{}", node.log());
    eprintln!("postgres restarts: {}; failed postgres calls, retried: {}", restarts.join(", "), failed as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The port of `host:port` at the end of an endpoint URL, or of `port=N` in a libpq string.
fn port_of(endpoint: &str) -> u16 {
    let tail = match endpoint.split_once("port=") {
        Some((_, rest)) => rest,
        None => endpoint.rsplit(':').next().unwrap(),
    };
    tail.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// Two nodes; node-a reaches DynamoDB (`dynamo`) or PostgreSQL (`warehouse`) through a proxy
/// that black-holes it for 12 s in the middle of the run.
async fn partitioned(cut_from: &str) {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    use testkit::fault_proxy::{FaultProxy, Mode};
    let (ks, ds) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, &format!("partition_{cut_from}")).await;
    let stream = format!("partition-{cut_from}-{}", std::process::id());
    let kinesis = Kinesis::new(&ks.sdk_config(), &stream);
    kinesis.create_stream(4).await.unwrap();
    let dir = std::env::temp_dir().join(format!("tributary-partition-{cut_from}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, &stream, &url, "");
    let upstream = match cut_from {
        "dynamo" => port_of(&ds.endpoint),
        _ => port_of(&pg.url),
    };
    let proxy = FaultProxy::start(([127, 0, 0, 1], upstream).into()).await.unwrap();
    let config_a = dir.join("node-a.toml");
    let (dynamo_a, url_a) = match cut_from {
        "dynamo" => (format!("http://127.0.0.1:{}", proxy.addr().port()), url.clone()),
        _ => (ds.endpoint.clone(), url.replace(&format!("port={upstream}"), &format!("port={}", proxy.addr().port()))),
    };
    std::fs::write(&config_a, std::fs::read_to_string(&config).unwrap().replace(&url, &url_a)).unwrap();
    let mut a = NodeProcess::spawn_at(&config_a, "node-a", &ks.endpoint, &dynamo_a);
    let mut b = NodeProcess::spawn(&config, "node-b", &ks, &ds);
    let table = DynamoLeaseTable::new(&ds.sdk_config(), format!("{stream}-leases"));
    let mut load = Load::new(29);
    let (mut cut_at, mut healed_at, mut a_lost) = (None, None, false);
    for tick in 0..40 {
        load.put(&kinesis, 60).await;
        if tick == 8 {
            both_hold_shards(&table, &a).await;
            proxy.set(Mode::Blackhole);
            cut_at = Some(Instant::now());
        }
        if let (Some(at), None) = (cut_at, healed_at) {
            a_lost |= owned_by(&table, "node-a").await == 0;
            if at.elapsed() >= Duration::from_secs(12) {
                // Healed as a restarted far end would be: open connections dropped.
                proxy.cut();
                proxy.set(Mode::Pass);
                healed_at = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(healed_at.is_some(), "the partition lasted 12 s and healed");
    match cut_from {
        // Cut from the lease table, it cannot heartbeat: its shards go to node-b.
        "dynamo" => assert!(a_lost, "node-a's shards moved while it was cut off:\n{}", a.log()),
        // Cut from the warehouse only, it still heartbeats and keeps its shards.
        _ => assert!(!a_lost, "node-a kept its shards while only its warehouse was cut off:\n{}", a.log()),
    }
    assert_eq!(load.landed(&url).await, Ok(()), "node-a:\n{}\nnode-b:\n{}", a.log(), b.log());
    let mut rejoined = false;
    for _ in 0..300 {
        if owned_by(&table, "node-a").await > 0 {
            rejoined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rejoined, "node-a holds shards after the partition:\n{}", a.log());
    assert_eq!(a.terminate(), Some(0), "node-a exits 0 on SIGTERM:\n{}", a.log());
    assert_eq!(b.terminate(), Some(0), "node-b exits 0 on SIGTERM:\n{}", b.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_the_lease_table_but_not_the_warehouse_loses_its_shards_and_rejoins() {
    partitioned("dynamo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_the_warehouse_but_not_the_lease_table_keeps_its_shards_and_catches_up() {
    partitioned("warehouse").await;
}

/// A node started while Kinesis refuses every connection waits the outage out (it does not exit
/// for its supervisor to restart it in a loop) and joins once Kinesis is back; a stream that
/// does not exist still fails the start at once, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_during_an_outage_joins_once_it_ends_and_a_missing_stream_still_fails_at_once() {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    use testkit::fault_proxy::{FaultProxy, Mode};
    let (ks, ds) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, "outage_at_start").await;
    let stream = format!("outage-{}", std::process::id());
    let kinesis = Kinesis::new(&ks.sdk_config(), &stream);
    kinesis.create_stream(2).await.unwrap();
    let dir = std::env::temp_dir().join(format!("tributary-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let missing = dir.join("missing.toml");
    std::fs::write(&missing, std::fs::read_to_string(write_config(&dir, "no-such-stream", &url, "")).unwrap()).unwrap();
    let mut node = NodeProcess::spawn(&missing, "node-missing", &ks, &ds);
    let asked = Instant::now();
    while node.is_running() && asked.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!node.is_running(), "a missing stream fails the start:\n{}", node.log());
    assert!(node.log().contains("stream no-such-stream"), "{}", node.log());

    let config = write_config(&dir, &stream, &url, "");
    let proxy = FaultProxy::start(([127, 0, 0, 1], port_of(&ks.endpoint)).into()).await.unwrap();
    proxy.set(Mode::Refuse);
    let mut node = NodeProcess::spawn_at(&config, "node-a", &format!("http://{}", proxy.addr()), &ds.endpoint);
    let mut load = Load::new(31);
    load.put(&kinesis, 200).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(node.is_running(), "waits the outage out:\n{}", node.log());
    assert!(processes::plain(&node.log()).contains("cannot start yet"), "{}", node.log());
    proxy.set(Mode::Pass);
    load.put(&kinesis, 200).await;
    assert_eq!(load.landed(&url).await, Ok(()), "{}", node.log());
    assert_eq!(node.terminate(), Some(0), "exits 0 on SIGTERM:\n{}", node.log());
    let _ = std::fs::remove_dir_all(&dir);
}
