//! The cluster as OS processes on the local stack (kinesis-local, moto, PostgreSQL): three
//! `tributary run` nodes share an 8-shard stream of EV charging records while one is killed with
//! SIGKILL, a shard is split, two are merged and a fourth node joins; a separate node consumes
//! ticket activity (AWS DMS records) joined with reference tables held in DynamoDB. At the end
//! PostgreSQL holds exactly what was written (nothing lost, no record applied twice, every
//! session and ticket at its last state), no shard was consumed by two nodes at overlapping
//! times nor a child before its parents stopped (from each node's log of its consumers), every
//! node exits 0 on SIGTERM, and the run prints the failover, handoff and lease-table figures.
//! The whole run is made twice: a single-stream cluster reading by polling (GetRecords), the
//! ticket node apart; then one multi-stream cluster whose every node consumes both streams from
//! one lease table (KCL's multi-stream keys), the EV stream by enhanced fan-out, the tickets by
//! polling.

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use adapters::postgres::PostgresWarehouse;
use processes::{check_ev, consumer_spans, database, NodeProcess};
use proto::{LeaseTable, ShardInfo, ShardReader};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use testkit::ev;
use testkit::local_stack::{emulator, Service};
use testkit::postgres_server::postgres;
use testkit::tickets::{self, TicketWorld};
use worker::pipeline::transform::mask;

mod known_tokens;
mod processes;

const KEY: &str = known_tokens::CLUSTER_KEY;

fn write_config(dir: &Path, name: &str, pipeline: &str, stream: &str, consumer: &str, url: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "{pipeline}\n[node]\nfailover_time = \"4s\"\nshutdown_deadline = \"20s\"\n[stream]\nname = \"{stream}\"\n\
             consumer = \"{consumer}\"\n[lease_table]\nname = \"{stream}-leases\"\n[warehouse]\nkind = \"postgres\"\nurl = \"{url}\"\n"
        ),
    )
    .unwrap();
    path
}

async fn put(kinesis: &Kinesis, records: &[(String, Vec<u8>)]) {
    for chunk in records.chunks(500) {
        let mut batch = chunk.to_vec();
        for _ in 0..20 {
            let refused = kinesis.put_records(&batch).await.unwrap();
            batch = adapters::kinesis::refused_only(batch, &refused);
            if batch.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(batch.is_empty(), "records refused 20 times");
    }
}

fn open_shards(shards: &[ShardInfo]) -> Vec<ShardInfo> {
    let mut open: Vec<ShardInfo> = shards.iter().filter(|s| s.is_open()).cloned().collect();
    open.sort_by_key(|s| s.hash_range.start);
    open
}

/// A node consuming both streams (`[[stream]]`): EV by enhanced fan-out, tickets by polling;
/// the tickets' references and tokenize key shared at the top.
fn write_two_stream_config(dir: &Path, ev_stream: &str, ticket_stream: &str, url: &str) -> PathBuf {
    let (ticket_head, ticket_tables) = tickets::PIPELINE.split_at(tickets::PIPELINE.find("[[table]]").unwrap());
    let shared: String = ticket_head.lines().filter(|l| !l.starts_with("format")).map(|l| format!("{l}\n")).collect();
    let ev_tables = ev::PIPELINE.replace("[[table]]", "[[stream.table]]");
    let ticket_tables = ticket_tables.replace("[[table]]", "[[stream.table]]");
    let path = dir.join("two-streams.toml");
    std::fs::write(
        &path,
        format!(
            "{shared}\n[[stream]]\nname = \"{ev_stream}\"\nconsumer = \"efo\"\n{ev_tables}\n\
             [[stream]]\nname = \"{ticket_stream}\"\nformat = \"dms\"\n{ticket_tables}\n\
             [node]\nfailover_time = \"4s\"\nshutdown_deadline = \"20s\"\n\
             [lease_table]\nname = \"{ev_stream}-leases\"\n[warehouse]\nkind = \"postgres\"\nurl = \"{url}\"\n"
        ),
    )
    .unwrap();
    path
}

/// Polls the lease table until none of `keys` is owned by `gone` and each has an owner again.
async fn moved(table: &DynamoLeaseTable, keys: &[String], gone: &str, started: Instant) -> Duration {
    for _ in 0..600 {
        let leases = table.scan().await.unwrap();
        let done = keys.iter().all(|k| {
            leases
                .iter()
                .find(|l| &l.key == k)
                .is_none_or(|l| l.is_finished() || l.owner.as_ref().is_some_and(|o| !o.as_str().starts_with(gone)))
        });
        if done {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{gone}'s leases did not move within 60 s");
}

async fn owned_by(table: &DynamoLeaseTable, node: &str) -> Vec<String> {
    let leases = table.scan().await.unwrap();
    leases
        .into_iter()
        .filter(|l| l.owner.as_ref().is_some_and(|o| o.as_str().starts_with(node)))
        .map(|l| l.key)
        .collect()
}

/// The ticket warehouse against the generator's world.
async fn check_tickets(w: &PostgresWarehouse, world: &TicketWorld) -> Result<(), String> {
    let live: BTreeMap<u64, &tickets::Activity> =
        world.activity.iter().filter_map(|(id, a)| a.as_ref().map(|a| (*id, a))).collect();
    let rows = w
        .query_text("SELECT ticket_id, purchased_by, sport_type, email, phone FROM sport_event_activity")
        .await
        .map_err(|e| e.to_string())?;
    if rows.len() != live.len() {
        return Err(format!("{} ticket rows for {} live tickets", rows.len(), live.len()));
    }
    for r in rows {
        let r: Vec<String> = r.into_iter().map(Option::unwrap_or_default).collect();
        let id: u64 = r[0].parse().unwrap();
        let a = live.get(&id).ok_or_else(|| format!("ticket {id} should not be there"))?;
        let customer = &world.customers[&a.purchased_by];
        let event = &world.events[&world.tickets[&id]["event_id"].as_u64().unwrap()];
        let want = [
            a.purchased_by.to_string(),
            event["sport_type"].as_str().unwrap().to_owned(),
            known_tokens::token(known_tokens::CLUSTER, customer["email"].as_str().unwrap()).to_owned(),
            mask(customer["phone"].as_str().unwrap()),
        ];
        if r[1..] != want {
            return Err(format!("ticket {id}: {:?}, expected {want:?}", &r[1..]));
        }
    }
    Ok(())
}

/// "lease table: R reads, W writes in Ts" from a stopped node's log.
fn lease_calls(log: &str) -> Option<(u64, u64, f64)> {
    let line = log.lines().find(|l| l.contains("lease table:"))?;
    let line = line.split("; rows").next()?;
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.trim_end_matches('.').parse().ok())
        .collect();
    let n = nums.len();
    (n >= 3).then(|| (nums[n - 3] as u64, nums[n - 2] as u64, nums[n - 1]))
}

/// The rows of `table` a stopped node found already in the warehouse ("rows already in the
/// warehouse (…): table=N, …" in its last line).
fn rows_already_there(log: &str, table: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("rows already in the warehouse"))?;
    let counts = line.rsplit("): ").next()?;
    counts.split(", ").find_map(|kv| kv.strip_prefix(&format!("{table}="))?.parse().ok())
}

/// The two runs take turns: each starts five node processes on two cores.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_processes_survives_kill_split_merge_and_join() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    cluster("polling").await;
}

/// The same run as one cluster over two streams in one lease table, the resharded EV stream
/// read by enhanced fan-out (SubscribeToShard), the tickets by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_stream_cluster_reading_by_enhanced_fan_out_survives_kill_split_merge_and_join() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    cluster("efo").await;
}

/// `consumer`: `polling` (one stream per cluster) or `efo` (the two-stream cluster).
async fn cluster(consumer: &str) {
    let two_streams = consumer == "efo";
    std::env::set_var(tickets::KEY_ENV, KEY);
    let (ks, ds) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let (ev_url, tickets_url) = (
        database(&admin, &pg.url, &format!("cluster_ev_{consumer}")).await,
        database(&admin, &pg.url, &format!("cluster_tickets_{consumer}")).await,
    );
    let dir = std::env::temp_dir().join(format!("tributary-cluster-{consumer}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tag = format!("{consumer}-{}", std::process::id());
    let (ev_stream, ticket_stream) = (format!("ev-{tag}"), format!("tickets-{tag}"));
    let ev_kinesis = Kinesis::new(&ks.sdk_config(), &ev_stream);
    ev_kinesis.create_stream(8).await.unwrap();
    let ticket_kinesis = Kinesis::new(&ks.sdk_config(), &ticket_stream);
    ticket_kinesis.create_stream(2).await.unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut world = TicketWorld::new(&mut rng, 10, 20, 60, 1_700_000_000_000);
    tributary::gen::write_reference_tables(&ds.sdk_config(), &world).await.unwrap();

    // The two-stream cluster writes both streams' tables into one database.
    let tickets_url = if two_streams { ev_url.clone() } else { tickets_url };
    let ev_config = match two_streams {
        true => write_two_stream_config(&dir, &ev_stream, &ticket_stream, &ev_url),
        false => write_config(&dir, "ev", ev::PIPELINE, &ev_stream, consumer, &ev_url),
    };
    let mut nodes: Vec<NodeProcess> =
        ["node-1", "node-2", "node-3"].iter().map(|n| NodeProcess::spawn(&ev_config, n, &ks, &ds)).collect();
    let mut ticket_node = (!two_streams).then(|| {
        let ticket_config = write_config(&dir, "tickets", tickets::PIPELINE, &ticket_stream, consumer, &tickets_url);
        NodeProcess::spawn(&ticket_config, "tickets-1", &ks, &ds)
    });
    // Dead letters of the EV stream: all of them with one stream per cluster; with two, those
    // whose shard_id (the lease key) names the EV stream.
    let ev_dead = if two_streams { format!("%:{ev_stream}:%") } else { "%".to_owned() };
    let table = DynamoLeaseTable::new(&ds.sdk_config(), format!("{ev_stream}-leases"));

    let mut generator = ev::Generator::new(1_700_000_000_000);
    let mut oracle = ev::Oracle::default();
    let mut good = 0;
    let mut ticket_backlog = world.full_load(&mut rng);
    ticket_backlog.reverse();
    let (started, origin) = (Instant::now(), SystemTime::now());
    let (mut failover, mut events, mut killed) = (None, Vec::new(), None);
    // 30 ticks of a second: 150 EV records and 30 ticket changes each.
    for tick in 0..30 {
        let mut batch = Vec::new();
        for _ in 0..150 {
            let (key, data, session) = generator.next(&mut rng);
            match session {
                Some(s) => {
                    good += 1;
                    oracle.sessions.insert(s.id.clone(), s);
                }
                None => {
                    oracle.malformed.insert(proto::SequenceNumber::from_u128(oracle.malformed.len() as u128));
                }
            }
            batch.push((key, data));
        }
        put(&ev_kinesis, &batch).await;
        let changes: Vec<(String, Vec<u8>)> =
            (0..30).map(|_| ticket_backlog.pop().unwrap_or_else(|| world.change(&mut rng))).collect();
        put(&ticket_kinesis, &changes).await;
        match tick {
            6 => {
                // The victim must hold shards for the kill to mean anything (bounded wait).
                let mut victim = owned_by(&table, "node-1").await;
                for _ in 0..100 {
                    if !victim.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    victim = owned_by(&table, "node-1").await;
                }
                assert!(!victim.is_empty(), "node-1 never got a shard:\n{}", nodes[0].log());
                let at = Instant::now();
                killed = Some(nodes[0].kill());
                events.push(format!(
                    "{:.1}s: node-1 killed (SIGKILL) holding {} shards",
                    started.elapsed().as_secs_f64(),
                    victim.len()
                ));
                let watcher = DynamoLeaseTable::new(&ds.sdk_config(), format!("{ev_stream}-leases"));
                failover = Some(tokio::spawn(async move { moved(&watcher, &victim, "node-1", at).await }));
            }
            10 => {
                let open = open_shards(&ev_kinesis.list_shards().await.unwrap());
                ev_kinesis.split(&open[0].id).await.unwrap();
                events.push(format!("{:.1}s: {} split", started.elapsed().as_secs_f64(), open[0].id));
            }
            16 => {
                let open = open_shards(&ev_kinesis.list_shards().await.unwrap());
                let pair = open.windows(2).find(|w| w[0].hash_range.end + 1 == w[1].hash_range.start).unwrap();
                ev_kinesis.merge(&pair[0].id, &pair[1].id).await.unwrap();
                events.push(format!(
                    "{:.1}s: {} and {} merged",
                    started.elapsed().as_secs_f64(),
                    pair[0].id,
                    pair[1].id
                ));
            }
            20 => {
                nodes.push(NodeProcess::spawn(&ev_config, "node-4", &ks, &ds));
                events.push(format!("{:.1}s: node-4 joined", started.elapsed().as_secs_f64()));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(1000).saturating_sub(Duration::from_millis(150))).await;
    }
    let failover_time = failover.unwrap().await.unwrap();

    // Everything lands, exactly once, at its last state.
    let ev_wh = PostgresWarehouse::connect(&ev_url).await.unwrap();
    let ticket_wh = PostgresWarehouse::connect(&tickets_url).await.unwrap();
    let mut outcome = (Err(String::new()), Err(String::new()));
    for _ in 0..300 {
        outcome = (check_ev(&ev_wh, &oracle, good, &ev_dead).await, check_tickets(&ticket_wh, &world).await);
        if outcome.0.is_ok() && outcome.1.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in nodes.iter_mut().skip(1) {
        assert!(n.is_running(), "{} stopped on its own:\n{}", n.name, n.log());
        let reading = match two_streams {
            true => format!("consuming {ev_stream} by enhanced fan-out, {ticket_stream} by polling"),
            false => format!("consuming {ev_stream} by polling"),
        };
        assert!(n.log().contains(&reading), "{} reads {reading}:\n{}", n.name, n.log());
    }
    outcome.0.unwrap();
    outcome.1.unwrap();

    // SIGTERM: node-2's shards move to the others at once; every node exits 0.
    let handed = owned_by(&table, "node-2").await;
    let at = Instant::now();
    assert_eq!(nodes[1].terminate(), Some(0), "node-2:\n{}", nodes[1].log());
    let handoff = moved(&table, &handed, "node-2", at).await;
    let mut writes = (0, 0.0, 0.0f64);
    for n in nodes.iter_mut().skip(2) {
        assert_eq!(n.terminate(), Some(0), "{}:\n{}", n.name, n.log());
    }
    if let Some(ticket_node) = &mut ticket_node {
        assert_eq!(ticket_node.terminate(), Some(0), "{}", ticket_node.log());
    }
    for n in nodes.iter().skip(1) {
        if let Some((_, w, secs)) = lease_calls(&n.log()) {
            writes = (writes.0 + w, writes.1 + secs, writes.2.max(secs));
        }
    }
    let leases = table.scan().await.unwrap();
    assert!(leases.iter().all(|l| l.owner.is_none()), "every lease released: {leases:?}");

    // Every consumer's span from the logs: no shard consumed twice at once, no child before
    // its parents stopped.
    let spans: Vec<_> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| consumer_spans(&n.name, &n.log(), origin, if i == 0 { killed } else { None }))
        .collect();
    // node-4 joined under load and got its shards by rebalancing handoffs only (no crash came
    // after it joined): the old owners flushed and checkpointed before letting go, so node-4
    // re-sent nothing. Its raw table rows are keyed by record, so a re-sent record would show.
    let handoffs = spans.iter().filter(|s| s.node.as_str().starts_with("node-4")).count();
    let resent = rows_already_there(&nodes[3].log(), "ev_charging_sessions_raw");
    assert!(handoffs > 0, "node-4 got no shard: {spans:#?}");
    assert_eq!(resent, Some(0), "records re-sent over {handoffs} handoffs to node-4:\n{}", nodes[3].log());
    // With two streams the spans are of lease keys (`account:stream:epoch:shard`): the EV
    // stream's are checked against its lineage, the tickets' for overlaps alone.
    let (spans, ticket_spans): (Vec<_>, Vec<_>) = match two_streams {
        true => {
            let (ev, tickets): (Vec<_>, Vec<_>) =
                spans.into_iter().partition(|s| s.shard.as_str().contains(&format!(":{ev_stream}:")));
            let plain = |mut s: testkit::timeline::Span| {
                s.shard = proto::ShardId::new(s.shard.as_str().rsplit(':').next().unwrap());
                s
            };
            (ev.into_iter().map(plain).collect(), tickets)
        }
        false => (spans, Vec::new()),
    };
    assert!(!two_streams || ticket_spans.len() >= 2, "both ticket shards consumed: {ticket_spans:#?}");
    let breaches = testkit::timeline::ordering_breaches(&ticket_spans, &BTreeMap::new());
    assert!(breaches.is_empty(), "{breaches:#?}");
    let parents = testkit::timeline::parents(ev_kinesis.list_shards().await.unwrap());
    assert_eq!(parents.len(), 3, "two split children and one merged child: {parents:?}");
    for child in parents.keys() {
        assert!(spans.iter().any(|s| &s.shard == child), "{child} was consumed: {spans:#?}");
    }
    let breaches = testkit::timeline::ordering_breaches(&spans, &parents);
    assert!(breaches.is_empty(), "{breaches:#?}");
    assert!(table.membership(true).await.map(|m| m.workers).unwrap().is_empty());
    for e in &events {
        eprintln!("{e}");
    }
    eprintln!(
        "{}: {good} EV records + {} malformed, {} sessions; crash failover {:.1}s; \
         {handoffs} handoffs to node-4 (rebalancing under load, then node-2's SIGTERM), 0 records re-sent; SIGTERM handoff of {} shards {:.1}s; \
         lease table: {} writes by nodes 2-4 ({:.0} node-seconds), {:.1} writes per shard-minute over the \
         {:.0}s run (8 shards, checkpoints at most 1/s per shard while records flow, heartbeats every {:.2}s)",
        if two_streams { "two streams, EV by enhanced fan-out" } else { "one stream by polling" },
        oracle.malformed.len(),
        oracle.sessions.len(),
        failover_time.as_secs_f64(),
        handed.len(),
        handoff.as_secs_f64(),
        writes.0,
        writes.1,
        writes.0 as f64 / 8.0 / (writes.2 / 60.0),
        writes.2,
        4.0 / 3.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
