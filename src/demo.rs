//! `tributary demo`: the whole system in one process, with no network and no AWS. Three nodes
//! consume a 4-shard in-memory stream of EV charging sessions into an SQLite file while the run
//! kills a node, splits a shard, merges two, stops a node gracefully and adds a new one. At the
//! end the SQLite file is checked against the generator's own record of what it wrote.

use crate::demo_tickets::{TicketDemo, TicketVerdict};
use anyhow::{bail, Context};
use coordinator::ClusterSettings;
use proto::memory::{MemoryLeaseTable, MemoryStream};
use proto::{Clock, SequenceNumber, ShardReader, WorkerId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::cluster::LocalCluster;
use testkit::ev::{self, Generator, Oracle, RAW_TABLE, SESSIONS_TABLE};
use testkit::timeline::{max, median, Figures};
use tokio::time::Instant;
use worker::{NodeConfig, NodePorts, DEAD_LETTER_TABLE};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub db: PathBuf,
    pub seed: u64,
    pub duration: Duration,
    pub rate: u32,
    pub nodes: usize,
    pub shards: u32,
    pub failover: Duration,
}

/// What the demo found in the warehouse, against the oracle.
#[derive(Debug, Default)]
pub struct Verdict {
    pub produced: usize,
    pub raw_rows: usize,
    pub session_rows: usize,
    pub sessions_expected: usize,
    pub dead_letters: usize,
    pub dead_letters_expected: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Sessions whose row is not the last state written (per-key order broken).
    pub stale: usize,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.stale == 0 && self.dead_letters == self.dead_letters_expected
    }
}

enum Step {
    Kill,
    Split,
    Merge,
    Stop,
    Join,
}

fn say(start: Instant, what: &str) {
    println!("[{:>5.1}s] {what}", start.elapsed().as_secs_f64());
}

/// Runs the demo; `Ok(true)` when nothing was lost or duplicated.
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let clock = Clock::system();
    let stream = MemoryStream::new(opts.shards, clock.clone());
    let leases = MemoryLeaseTable::new();
    reset(&opts.db)?;
    let warehouse = adapters::sqlite::SqliteWarehouse::open(&opts.db)
        .with_context(|| format!("cannot open the sqlite file {}", opts.db.display()))?;
    let sqlite = Arc::new(warehouse);
    let warehouse: Arc<dyn proto::Warehouse> = sqlite.clone();
    let ports = NodePorts {
        table: Arc::new(leases.clone()),
        reader: Arc::new(stream.clone()),
        warehouse: warehouse.clone(),
        mapper: Arc::new(ev::mapper()),
    };
    let mut template = NodeConfig::new(WorkerId::new("demo"), ClusterSettings::with_failover(opts.failover));
    template.consumer.idle_read_interval = Duration::from_millis(200);
    template.sink.batch_latency = Duration::from_millis(300);
    let mut cluster = LocalCluster::new(ports, template);
    for _ in 0..opts.nodes {
        cluster.start_node(None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let ticket_rate = (opts.rate / 4).max(1);
    let mut tickets =
        TicketDemo::start(warehouse.clone(), opts.failover, ticket_rate, opts.duration, opts.seed).await?;
    let start = Instant::now();
    println!(
        "tributary demo: {} nodes, {}-shard stream, {} records/s for {:?}, failover_time {:?}, warehouse {}",
        opts.nodes,
        opts.shards,
        opts.rate,
        opts.duration,
        opts.failover,
        opts.db.display()
    );
    println!(
        "  and ticket activity: DMS changes at {ticket_rate}/s on 2 nodes, joined with ticket, event and customer \
         tables (tokenize key {})",
        tickets.key_source
    );

    // The generator writes at `rate` records/s and records every write in the oracle.
    let oracle = Arc::new(Mutex::new(Oracle::default()));
    let producer = {
        let (stream, oracle, clock) = (stream.clone(), oracle.clone(), clock.clone());
        let (rate, duration, seed) = (opts.rate, opts.duration, opts.seed);
        tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut generator = Generator::new(clock.now_ms());
            let tick = Duration::from_millis(50);
            let mut ticker = tokio::time::interval(tick);
            let started = Instant::now();
            let mut written = 0u64;
            while started.elapsed() < duration {
                ticker.tick().await;
                let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                while written < due {
                    let (key, payload, session) = generator.next(&mut rng);
                    let (shard, seq) = stream.put(&key, payload);
                    let mut o = oracle.lock().unwrap();
                    match session {
                        Some(s) => {
                            o.records.insert(seq, shard);
                            o.sessions.insert(s.id.clone(), s);
                        }
                        None => {
                            o.malformed.insert(seq);
                        }
                    }
                    written += 1;
                }
            }
        })
    };

    let d = opts.duration.as_secs_f64();
    let mut plan: Vec<(f64, Step)> =
        vec![(0.15, Step::Kill), (0.3, Step::Split), (0.45, Step::Merge), (0.6, Step::Stop), (0.7, Step::Join)];
    plan.reverse();
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut last_progress = Instant::now();
    let mut last_counts = (0usize, 0usize);
    let drain_deadline = opts.duration + opts.failover + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = start.elapsed().as_secs_f64();
        if let Some((at, _)) = plan.last() {
            if elapsed >= at * d {
                let (_, step) = plan.pop().expect("checked");
                act(step, &mut cluster, &stream, &mut rng, start).await?;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            let produced = oracle.lock().unwrap().produced();
            let landed = count(&sqlite, RAW_TABLE)? + count(&sqlite, DEAD_LETTER_TABLE)?;
            let secs = last_progress.elapsed().as_secs_f64();
            let assignment = cluster.assignment().await;
            let leases: Vec<String> = assignment.iter().map(|(n, s)| format!("{n}:{}", s.len())).collect();
            println!(
                "[{elapsed:>5.1}s] produced {produced:>7} ({:>4.0}/s) | in warehouse {landed:>7} ({:>4.0}/s) | lag {:>5} records | leases {}",
                (produced - last_counts.0) as f64 / secs,
                (landed.saturating_sub(last_counts.1)) as f64 / secs,
                produced.saturating_sub(landed),
                leases.join(" ")
            );
            last_counts = (produced, landed);
            last_progress = Instant::now();
        }
        if producer.is_finished() && plan.is_empty() && !tickets.producing() {
            let produced = oracle.lock().unwrap().produced();
            let landed = count(&sqlite, RAW_TABLE)? + count(&sqlite, DEAD_LETTER_TABLE)?;
            let tickets_in = count(&sqlite, testkit::tickets::TARGET)? >= tickets.expected_rows();
            if (landed >= produced && tickets_in) || start.elapsed() > drain_deadline {
                break;
            }
        }
    }
    say(start, "generator done and warehouse caught up; stopping every node gracefully");
    let shard_parents = testkit::timeline::parents(stream.list_shards().await?);
    // Let the last ticket updates land (their count was reached, their content may trail).
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.stop_all().await;
    tickets.stop().await;
    let figures = cluster.timeline.figures(&shard_parents);
    let breaches = cluster.timeline.ordering_breaches(&shard_parents);
    for breach in &breaches {
        eprintln!("ordering breach: {breach}");
    }
    let oracle = oracle.lock().unwrap();
    let verdict = verify(&opts.db, &oracle)?;
    let ticket_verdict = tickets.verify(&opts.db)?;
    report(&opts, &verdict, &ticket_verdict, &figures, breaches.len(), start.elapsed(), leases.stats());
    Ok(verdict.ok() && ticket_verdict.wrong == 0 && breaches.is_empty())
}

async fn act(
    step: Step,
    cluster: &mut LocalCluster,
    stream: &MemoryStream,
    rng: &mut ChaCha8Rng,
    start: Instant,
) -> anyhow::Result<()> {
    match step {
        Step::Kill => {
            let assignment = cluster.assignment().await;
            let Some((victim, shards)) = assignment.iter().max_by_key(|(_, s)| s.len()) else { return Ok(()) };
            say(
                start,
                &format!(
                    ">>> kill -9 {victim} (it was consuming {shards:?}); its leases fail over after failover_time"
                ),
            );
            let victim = victim.clone();
            cluster.kill(&victim).await;
        }
        Step::Split => {
            let open = stream.open_shards();
            let s = &open[rng.gen_range(0..open.len())];
            let mid = s.hash_range.start + (s.hash_range.end - s.hash_range.start) / 2;
            let (a, b) = stream.split(&s.id, mid)?;
            say(start, &format!(">>> split {} into {a} and {b}", s.id));
        }
        Step::Merge => {
            let mut open = stream.open_shards();
            open.sort_by_key(|s| s.hash_range.start);
            let i = rng.gen_range(0..open.len() - 1);
            let child = stream.merge(&open[i].id, &open[i + 1].id)?;
            say(start, &format!(">>> merge {} and {} into {child}", open[i].id, open[i + 1].id));
        }
        Step::Stop => {
            let live = cluster.live();
            let Some(node) = live.first() else { return Ok(()) };
            say(start, &format!(">>> SIGTERM {node}: flush, checkpoint, release its leases"));
            let node = node.clone();
            cluster.stop(&node).await;
        }
        Step::Join => {
            let id = cluster.start_node(None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            say(start, &format!(">>> {id} joins; the leader hands leases over to balance"));
        }
    }
    Ok(())
}

/// Removes the file of an earlier demo run; refuses to touch a file holding other tables.
fn reset(db: &std::path::Path) -> anyhow::Result<()> {
    if !db.exists() {
        return Ok(());
    }
    let names: Vec<String> = {
        let conn = rusqlite::Connection::open(db)?;
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .with_context(|| format!("{} is not an sqlite file", db.display()))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>()?;
        names
    };
    // The EV cluster's tables, the ticket cluster's, and their tombstones and dead letters.
    let ours = |n: &String| {
        n.starts_with("ev_charging_sessions") || n.starts_with(testkit::tickets::TARGET) || n.starts_with("tributary_")
    };
    if let Some(other) = names.iter().find(|n| !ours(n)) {
        bail!("{} holds a table the demo did not make ({other}); choose another file with --db", db.display());
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Rows in a table, for the progress line (the sinks created every table at node start).
fn count(sqlite: &adapters::sqlite::SqliteWarehouse, table: &str) -> anyhow::Result<usize> {
    Ok(sqlite.count(table)? as usize)
}

/// Reads the SQLite file back and compares it with the oracle.
pub fn verify(db: &std::path::Path, oracle: &Oracle) -> anyhow::Result<Verdict> {
    let conn = rusqlite::Connection::open(db)?;
    let mut v = Verdict {
        produced: oracle.produced(),
        sessions_expected: oracle.sessions.len(),
        dead_letters_expected: oracle.malformed.len(),
        ..Verdict::default()
    };
    let mut landed: BTreeMap<SequenceNumber, usize> = BTreeMap::new();
    let mut stmt = conn.prepare(&format!("SELECT sequence_number FROM \"{RAW_TABLE}\""))?;
    for seq in stmt.query_map([], |r| r.get::<_, String>(0))? {
        *landed.entry(SequenceNumber::parse(&seq?)?).or_default() += 1;
        v.raw_rows += 1;
    }
    v.lost = oracle.records.keys().filter(|s| !landed.contains_key(*s)).count();
    v.duplicated = landed.values().map(|n| n - 1).sum::<usize>()
        + landed.keys().filter(|s| !oracle.records.contains_key(*s)).count();
    let mut stmt = conn.prepare(&format!("SELECT \"_id\", \"kWhDelivered\" FROM \"{SESSIONS_TABLE}\""))?;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))? {
        let (id, kwh) = row?;
        v.session_rows += 1;
        if !seen.insert(id.clone()) {
            v.duplicated += 1;
        }
        match oracle.sessions.get(&id) {
            Some(s) if s.kwh_delivered == kwh => {}
            _ => v.stale += 1,
        }
    }
    v.lost += oracle.sessions.keys().filter(|id| !seen.contains(*id)).count();
    let mut stmt = conn.prepare(&format!("SELECT sequence_number FROM \"{DEAD_LETTER_TABLE}\""))?;
    let dead: BTreeSet<SequenceNumber> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|s| Ok(SequenceNumber::parse(&s?)?))
        .collect::<anyhow::Result<_>>()?;
    v.dead_letters = dead.len();
    if dead != oracle.malformed {
        bail!(
            "dead-letter table holds {} records, the generator wrote {} malformed ones",
            dead.len(),
            oracle.malformed.len()
        );
    }
    Ok(v)
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "n/a".into())
}

fn report(
    opts: &DemoOptions,
    v: &Verdict,
    t: &TicketVerdict,
    f: &Figures,
    breaches: usize,
    took: Duration,
    stats: proto::memory::LeaseTableStats,
) {
    let line = "─".repeat(64);
    println!("{line}");
    println!("{:<44}{:>20}", "records produced", v.produced);
    println!("{:<44}{:>20}", "raw rows in the warehouse", v.raw_rows);
    println!(
        "{:<44}{:>20}",
        "sessions in the warehouse (expected)",
        format!("{} ({})", v.session_rows, v.sessions_expected)
    );
    println!(
        "{:<44}{:>20}",
        "dead letters (malformed records written)",
        format!("{} ({})", v.dead_letters, v.dead_letters_expected)
    );
    println!("{:<44}{:>20}", "lost", v.lost);
    println!("{:<44}{:>20}", "duplicated", v.duplicated);
    println!("{:<44}{:>20}", "sessions not at their last state", v.stale);
    println!("{:<44}{:>20}", format!("crash failover (failover_time {:?})", opts.failover), secs(max(&f.failover)));
    println!(
        "{:<44}{:>20}",
        "graceful handoff, median / max",
        format!("{} / {}", secs(median(&f.handoff)), secs(max(&f.handoff)))
    );
    println!("{:<44}{:>20}", "child shard start after parent end, max", secs(max(&f.child_start)));
    println!("{:<44}{:>20}", "shards consumed twice at once, children early", breaches);
    println!("{:<44}{:>20}", "lease table reads / writes", format!("{} / {}", stats.reads, stats.writes));
    println!("{:<44}{:>20}", "ticket activity changes (DMS records)", t.changes);
    println!("{:<44}{:>20}", "sport_event_activity rows (expected)", format!("{} ({})", t.rows, t.expected));
    println!("{:<44}{:>20}", "rows not equal to the source joined", t.wrong);
    println!("{:<44}{:>20}", "run time", format!("{:.1} s", took.as_secs_f64()));
    println!("{line}");
    println!(
        "{}",
        if v.ok() && t.wrong == 0 && breaches == 0 {
            "OK: nothing lost, nothing duplicated, no shard consumed out of order"
        } else {
            "FAILED: the warehouse does not match what was written"
        }
    );
    println!("query it: sqlite3 {} 'SELECT * FROM \"{SESSIONS_TABLE}\" LIMIT 5'", opts.db.display());
    println!(
        "          sqlite3 {} \"SELECT ticket_id, sport_type, datetime(start_date / 1000, 'unixepoch'), customer_name, email, phone FROM {} LIMIT 5\"",
        opts.db.display(),
        testkit::tickets::TARGET
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_an_earlier_demo_is_replaced_and_any_other_refused() {
        let dir = std::env::temp_dir().join(format!("tributary-demo-reset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let earlier = dir.join("earlier.db");
        let conn = rusqlite::Connection::open(&earlier).unwrap();
        for table in
            ["ev_charging_sessions", "sport_event_activity", "sport_event_activity__deleted", "tributary_dead_letters"]
        {
            conn.execute(&format!("CREATE TABLE {table} (x)"), []).unwrap();
        }
        drop(conn);
        reset(&earlier).unwrap();
        assert!(!earlier.exists(), "an earlier demo's file is removed");
        let other = dir.join("other.db");
        rusqlite::Connection::open(&other).unwrap().execute("CREATE TABLE invoices (x)", []).unwrap();
        let e = reset(&other).unwrap_err().to_string();
        assert!(e.contains("invoices") && other.exists(), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn session(id: &str, kwh: f64) -> ev::Session {
        ev::Session {
            id: id.into(),
            cluster_id: "c".into(),
            connection_time: "t".into(),
            kwh_delivered: kwh,
            station_id: "s".into(),
            space_id: "p".into(),
            timezone: "UTC".into(),
            user_id: None,
        }
    }

    /// README: the demo exits non-zero when a record was lost or duplicated (or a session is not
    /// at its last state). An SQLite file with one record missing, one twice and one stale
    /// session is counted as such and is not ok; the same file repaired is ok.
    #[test]
    fn the_verdict_counts_lost_duplicated_and_stale_rows() {
        let dir = std::env::temp_dir().join(format!("tributary-demo-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("verify.db");
        let _ = std::fs::remove_file(&db);
        let seq = |n: u128| SequenceNumber::from_u128(n);
        let oracle = Oracle {
            records: (1..=3).map(|n| (seq(n), proto::ShardId::numbered(0))).collect(),
            malformed: BTreeSet::new(),
            sessions: [("a", 5.0), ("b", 7.0)].into_iter().map(|(id, kwh)| (id.to_owned(), session(id, kwh))).collect(),
        };
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE \"{RAW_TABLE}\" (sequence_number TEXT);
             CREATE TABLE \"{SESSIONS_TABLE}\" (\"_id\" TEXT, \"kWhDelivered\" DOUBLE PRECISION);
             CREATE TABLE \"{DEAD_LETTER_TABLE}\" (sequence_number TEXT);
             INSERT INTO \"{SESSIONS_TABLE}\" VALUES ('a', 5.0), ('b', 6.0);"
        ))
        .unwrap();
        // Record 1 once, record 2 twice, record 3 never.
        for n in [1, 2, 2] {
            conn.execute(&format!("INSERT INTO \"{RAW_TABLE}\" VALUES (?1)"), [seq(n).as_str()]).unwrap();
        }
        let v = verify(&db, &oracle).unwrap();
        assert_eq!((v.lost, v.duplicated, v.stale), (1, 1, 1), "{v:?}");
        assert_eq!((v.produced, v.raw_rows, v.session_rows), (3, 3, 2), "{v:?}");
        assert!(!v.ok(), "{v:?}");
        // Repaired: every record once, every session at its last state.
        conn.execute_batch(&format!(
            "DELETE FROM \"{RAW_TABLE}\"; UPDATE \"{SESSIONS_TABLE}\" SET \"kWhDelivered\" = 7.0 WHERE \"_id\" = 'b';"
        ))
        .unwrap();
        for n in [1, 2, 3] {
            conn.execute(&format!("INSERT INTO \"{RAW_TABLE}\" VALUES (?1)"), [seq(n).as_str()]).unwrap();
        }
        let v = verify(&db, &oracle).unwrap();
        assert_eq!((v.lost, v.duplicated, v.stale), (0, 0, 0), "{v:?}");
        assert!(v.ok(), "{v:?}");
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
