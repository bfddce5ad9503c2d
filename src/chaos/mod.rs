//! `tributary chaos`: a cluster of `tributary run` processes on the local stack (kinesis-local,
//! moto's DynamoDB) writing to a real PostgreSQL, fed EV sessions and DMS ticket activity
//! while a seeded schedule of faults hits it: nodes killed and restarted (same and new ids),
//! frozen past failover_time, their links to DynamoDB, Kinesis or PostgreSQL slowed, black-holed
//! or dropped, PostgreSQL restarted fast and immediately, shards split and merged. At the end
//! every fault is healed and the run checks that the warehouse equals the generators' oracle,
//! that no shard is left unowned, and that every node exits 0 on SIGTERM.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the run: set-up, the loop (write, inject, observe), the end checks, the report |
//! | `schedule.rs` | the faults, drawn from the seed |
//! | `node.rs` | a node process and its three fault proxies |
//! | `audit.rs` | the oracle, and lost/duplicated effects counted against the warehouse |

mod audit;
mod node;
pub mod schedule;

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use adapters::postgres::PostgresWarehouse;
use anyhow::Context;
use audit::Oracle;
use node::Node;
use proto::{LeaseTable, ShardReader};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schedule::{Fault, LinkFault, Planned, Shape};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use testkit::fault_proxy::Mode;
use testkit::local_stack::{emulator, Emulator};
use testkit::postgres_server::OwnServer;
use testkit::tickets::{self, TicketWorld};
use tokio::time::Instant;

pub struct ChaosOptions {
    /// How long faults are injected.
    pub duration: Duration,
    pub seed: u64,
    pub nodes: usize,
    /// EV records per second (ticket changes: a fifth of that).
    pub rate: u32,
    /// Where the node configs and logs go (kept when the run fails).
    pub dir: Option<PathBuf>,
}

/// failover_time of the run's nodes.
const FAILOVER: Duration = Duration::from_secs(3);
const EV_SHARDS: u32 = 4;
const TICKET_SHARDS: u32 = 2;
/// The tokenize key the nodes get (the run's own, not a secret).
const TOKENIZE_KEY: &str = "chaos-run-tokenize-key-0123456789abcdef";
/// How long the end waits for the warehouse to equal the oracle once the faults are healed.
const SETTLE_DEADLINE: Duration = Duration::from_secs(240);

/// `host:port` of an endpoint URL (`http://host:port[/…]`) or a libpq `key=value` string.
async fn upstream(endpoint: &str) -> anyhow::Result<std::net::SocketAddr> {
    let hostport = if endpoint.contains("port=") {
        let field =
            |k: &str| endpoint.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_owned);
        format!("{}:{}", field("host").unwrap_or_else(|| "127.0.0.1".into()), field("port").unwrap_or_default())
    } else {
        let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    };
    tokio::net::lookup_host(&hostport)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("cannot resolve {hostport} (from {endpoint})"))
}

/// Each node's config: both streams in one lease table, `{ID}` and `{POSTGRES_PORT}` left to
/// fill in per node.
fn node_config(ev_stream: &str, ticket_stream: &str, lease_table: &str, pg_url: &str) -> String {
    let (ticket_head, ticket_tables) = tickets::PIPELINE.split_at(tickets::PIPELINE.find("[[table]]").unwrap_or(0));
    let shared: String = ticket_head.lines().filter(|l| !l.starts_with("format")).map(|l| format!("{l}\n")).collect();
    let ev_tables = testkit::ev::PIPELINE.replace("[[table]]", "[[stream.table]]");
    let ticket_tables = ticket_tables.replace("[[table]]", "[[stream.table]]");
    format!(
        "{shared}\n[[stream]]\nname = \"{ev_stream}\"\n{ev_tables}\n\
         [[stream]]\nname = \"{ticket_stream}\"\nformat = \"dms\"\n{ticket_tables}\n\
         [node]\nid = \"{{ID}}\"\nfailover_time = \"{}s\"\nshutdown_deadline = \"20s\"\n\
         [lease_table]\nname = \"{lease_table}\"\n[warehouse]\nkind = \"postgres\"\nurl = \"{pg_url}\"\n",
        FAILOVER.as_secs()
    )
}

fn disturb(proxy: &testkit::fault_proxy::FaultProxy, fault: LinkFault) {
    match fault {
        LinkFault::Slow(d) => proxy.set(Mode::Delay(d)),
        LinkFault::Blackhole => proxy.set(Mode::Blackhole),
        LinkFault::Drop => {
            proxy.set(Mode::Refuse);
            proxy.cut();
        }
    }
}

/// Healed as a restarted far end would be: what the fault held is dropped.
fn mend(proxy: &testkit::fault_proxy::FaultProxy) {
    proxy.cut();
    proxy.set(Mode::Pass);
}

/// A node fault whose leases must move: from when, and until they did.
struct Watch {
    fault: usize,
    node_id: String,
    keys: Vec<String>,
    since: Instant,
    /// Still wanted once the node is back (a new id never takes the old one's leases back).
    after_back: bool,
    back: bool,
}

/// What the run measured.
#[derive(Default)]
struct Report {
    injected: BTreeMap<String, usize>,
    refused: Vec<String>,
    /// (how long the leases took to move, which fault).
    failovers: Vec<(Duration, String)>,
    back_before_moved: usize,
    /// Time from a heal until everything written before it had landed.
    recoveries: Vec<Duration>,
    worst_lag: Duration,
    failures: Vec<String>,
}

/// The run's world: services, nodes and the generators' state.
struct Run {
    opts: ChaosOptions,
    started: Instant,
    nodes: Vec<Node>,
    pg: Option<Arc<OwnServer>>,
    pg_restart: Option<tokio::task::JoinHandle<Result<(), testkit::postgres_server::ServerError>>>,
    ev: Kinesis,
    tickets: Kinesis,
    leases: DynamoLeaseTable,
    rng: ChaCha8Rng,
    generator: testkit::ev::Generator,
    world: TicketWorld,
    ticket_backlog: Vec<(String, Vec<u8>)>,
    oracle: Oracle,
    /// Cumulative well-formed EV records written, after each write.
    written: Vec<(Instant, usize)>,
    watches: Vec<Watch>,
    /// (heal time, EV records written by then) not yet caught up with.
    pending_recoveries: Vec<(Instant, usize, String)>,
    report: Report,
    url: String,
    monitor: Option<PostgresWarehouse>,
}

impl Run {
    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("chaos: {:6.1}s {what}", self.started.elapsed().as_secs_f64());
    }

    /// Writes one tick's records (rate per second, ticks of 100 ms).
    async fn write(&mut self, owed: &mut f64) -> anyhow::Result<()> {
        *owed += f64::from(self.opts.rate) / 10.0;
        let n = owed.floor() as usize;
        *owed -= n as f64;
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let (key, data, session) = self.generator.next(&mut self.rng);
            match session {
                Some(s) => {
                    *self.oracle.raw.entry(audit::payload_hash(&data)).or_default() += 1;
                    self.oracle.sessions.insert(s.id, s.kwh_delivered);
                }
                None => self.oracle.malformed += 1,
            }
            batch.push((key, data));
        }
        let changes: Vec<(String, Vec<u8>)> = (0..n.div_ceil(5))
            .map(|_| self.ticket_backlog.pop().unwrap_or_else(|| self.world.change(&mut self.rng)))
            .collect();
        self.oracle.ticket_changes += changes.len();
        crate::gen::send(&self.ev, batch).await.context("writing EV records")?;
        crate::gen::send(&self.tickets, changes).await.context("writing ticket changes")?;
        self.written.push((Instant::now(), self.oracle.written_raw()));
        Ok(())
    }

    async fn owned_by(&self, id: &str) -> Vec<String> {
        let leases = self.leases.scan().await.unwrap_or_default();
        leases
            .into_iter()
            .filter(|l| !l.is_finished() && l.owner.as_ref().is_some_and(|o| o.as_str() == id))
            .map(|l| l.key)
            .collect()
    }

    async fn inject(&mut self, i: usize, p: &Planned) {
        let kind = p.fault.kind();
        let mut what = String::new();
        if let Some(n) = p.fault.node() {
            let id = self.nodes[n].id.clone();
            what = format!(" {id}");
            if p.fault.silences_node() {
                let keys = self.owned_by(&id).await;
                what.push_str(&format!(" (holding {} leases)", keys.len()));
                if !keys.is_empty() {
                    let after_back = matches!(p.fault, Fault::Kill { new_id: true, .. });
                    self.watches.push(Watch {
                        fault: i,
                        node_id: id,
                        keys,
                        since: Instant::now(),
                        after_back,
                        back: false,
                    });
                }
            }
        }
        match p.fault {
            Fault::Kill { node, .. } => self.nodes[node].kill(),
            Fault::Pause { node, .. } => self.nodes[node].pause(),
            Fault::Link { node, service, fault, .. } => disturb(self.nodes[node].proxy(service), fault),
            Fault::Outage { service, fault, .. } => {
                for node in &self.nodes {
                    disturb(node.proxy(service), fault);
                }
            }
            Fault::RestartPostgres(how) => {
                if let Some(previous) = self.pg_restart.take() {
                    self.check_restart(previous).await;
                }
                let pg = self.pg.clone().expect("planned only with a server of its own");
                self.pg_restart = Some(tokio::task::spawn_blocking(move || pg.restart(how)));
            }
            Fault::Split | Fault::Merge => {
                if let Err(e) = self.reshard(p.fault == Fault::Split).await {
                    self.say(format!("{kind} refused: {e}"));
                    self.report.refused.push(format!("{kind}: {e}"));
                    return;
                }
            }
        }
        let lasting = p.fault.lasting();
        let until = if lasting.is_zero() { String::new() } else { format!(" for {:.1}s", lasting.as_secs_f64()) };
        self.say(format!("{kind}{what}{until}"));
        *self.report.injected.entry(kind).or_default() += 1;
    }

    async fn check_restart(
        &mut self,
        handle: tokio::task::JoinHandle<Result<(), testkit::postgres_server::ServerError>>,
    ) {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.report.failures.push(format!("postgresql did not restart: {e}")),
            Err(e) => self.report.failures.push(format!("postgresql restart panicked: {e}")),
        }
    }

    async fn reshard(&mut self, split: bool) -> anyhow::Result<()> {
        let mut open: Vec<proto::ShardInfo> =
            self.ev.list_shards().await?.into_iter().filter(proto::ShardInfo::is_open).collect();
        open.sort_by_key(|s| s.hash_range.start);
        if split {
            let shard = open[self.rng.gen_range(0..open.len())].id.clone();
            self.ev.split(&shard).await?;
        } else {
            let pairs: Vec<usize> =
                (1..open.len()).filter(|&i| open[i - 1].hash_range.end + 1 == open[i].hash_range.start).collect();
            anyhow::ensure!(!pairs.is_empty(), "no two adjacent open shards");
            let i = pairs[self.rng.gen_range(0..pairs.len())];
            self.ev.merge(&open[i - 1].id, &open[i].id).await?;
        }
        Ok(())
    }

    fn heal(&mut self, i: usize, p: &Planned) {
        match p.fault {
            Fault::Kill { node, new_id, .. } => {
                if let Err(e) = self.nodes[node].start(new_id) {
                    let id = &self.nodes[node].id;
                    self.report.failures.push(format!("{id} did not start again: {e}"));
                }
            }
            Fault::Pause { node, .. } => self.nodes[node].resume(),
            Fault::Link { node, service, .. } => mend(self.nodes[node].proxy(service)),
            Fault::Outage { service, .. } => {
                for node in &self.nodes {
                    mend(node.proxy(service));
                }
            }
            _ => return,
        }
        for w in self.watches.iter_mut().filter(|w| w.fault == i) {
            w.back = true;
        }
        let node = p.fault.node().map(|n| self.nodes[n].id.clone()).unwrap_or_default();
        let what = format!("{} {node}", p.fault.kind());
        self.say(format!("healed: {what}"));
        self.pending_recoveries.push((Instant::now(), self.oracle.written_raw(), what));
    }

    /// One look at the lease table and the warehouse: failovers, lag, recoveries.
    async fn observe(&mut self) {
        if !self.watches.is_empty() {
            if let Ok(leases) = self.leases.scan().await {
                let now = Instant::now();
                for w in std::mem::take(&mut self.watches) {
                    let gone = w.keys.iter().all(|k| {
                        leases.iter().find(|l| &l.key == k).is_none_or(|l| {
                            l.is_finished() || l.owner.as_ref().is_some_and(|o| o.as_str() != w.node_id)
                        })
                    });
                    let took = now - w.since;
                    if gone {
                        self.say(format!("{}'s leases moved {:.1}s after the fault", w.node_id, took.as_secs_f64()));
                        self.report.failovers.push((took, w.node_id));
                    } else if w.back && !w.after_back {
                        // Back under its own id before failover: the leases are its own again.
                        self.report.back_before_moved += 1;
                    } else if took > Duration::from_secs(120) {
                        self.report.failures.push(format!("{}'s leases did not move in 120 s", w.node_id));
                    } else {
                        self.watches.push(w);
                    }
                }
            }
        }
        // Bounded: a PostgreSQL restarting must not hold up the run's writes, faults and
        // failover watch (a skipped sample is only a coarser lag figure).
        let bound = Duration::from_millis(400);
        if self.monitor.is_none() {
            self.monitor =
                tokio::time::timeout(bound, PostgresWarehouse::connect(&self.url)).await.ok().and_then(Result::ok);
        }
        let Some(monitor) = &self.monitor else { return };
        let count = tokio::time::timeout(bound, monitor.query_text("SELECT count(*) FROM ev_charging_sessions_raw"));
        let landed = match count.await {
            Ok(Ok(rows)) => rows.first().and_then(|r| r[0].as_deref()?.parse::<usize>().ok()).unwrap_or(0),
            _ => {
                self.monitor = None;
                return;
            }
        };
        let now = Instant::now();
        let behind = self.written.iter().find(|(_, n)| *n > landed).map_or(Duration::ZERO, |(at, _)| now - *at);
        self.report.worst_lag = self.report.worst_lag.max(behind);
        for (at, target, what) in std::mem::take(&mut self.pending_recoveries) {
            if landed < target {
                self.pending_recoveries.push((at, target, what));
                continue;
            }
            let took = now - at;
            if took > Duration::from_secs(10) {
                self.say(format!("caught up {:.1}s after healing {what}", took.as_secs_f64()));
            }
            self.report.recoveries.push(took);
        }
    }
}

pub async fn run(opts: ChaosOptions) -> anyhow::Result<bool> {
    tokio::select! {
        outcome = run_to_end(opts) => outcome,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted: every node and server this run started is stopped"),
    }
}

async fn run_to_end(opts: ChaosOptions) -> anyhow::Result<bool> {
    anyhow::ensure!(opts.nodes >= 3, "chaos needs --nodes >= 3 (two stay healthy while others are faulted)");
    anyhow::ensure!(opts.rate >= 10, "chaos needs --rate >= 10");
    let (seed, nodes) = (opts.seed, opts.nodes);
    let (ks, ds): (Emulator, Emulator) = (
        emulator(testkit::local_stack::Service::Kinesis).context("kinesis")?,
        emulator(testkit::local_stack::Service::Dynamo).context("dynamodb")?,
    );
    // PostgreSQL: a server of the run's own (restartable), or `TRIBUTARY_PG_URL` as it is.
    let (server_url, pg) = match std::env::var("TRIBUTARY_PG_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = tokio::task::spawn_blocking(|| OwnServer::start(false)).await?.context("postgresql")?;
            (server.url.clone(), Some(Arc::new(server)))
        }
    };
    anyhow::ensure!(
        server_url.contains("port=") && server_url.contains("dbname="),
        "TRIBUTARY_PG_URL must be a key=value string with host=, port= and dbname="
    );
    let tag = format!("{seed}-{}", std::process::id());
    let database = format!("chaos_{}", tag.replace('-', "_"));
    let admin = PostgresWarehouse::connect(&server_url).await.context("connecting to postgresql")?;
    admin.query_text(&format!("DROP DATABASE IF EXISTS {database}")).await?;
    admin.query_text(&format!("CREATE DATABASE {database}")).await?;
    drop(admin);
    let with_db = |url: &str| {
        url.split_whitespace()
            .map(|kv| if kv.starts_with("dbname=") { format!("dbname={database}") } else { kv.to_owned() })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let url = with_db(&server_url);
    let pg_port = url.split_whitespace().find_map(|kv| kv.strip_prefix("port=")).unwrap_or_default().to_owned();
    let node_url = url.replace(&format!("port={pg_port}"), "port={POSTGRES_PORT}");

    let dir = opts.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("tributary-chaos-{tag}")));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ev_stream, ticket_stream, lease_table) =
        (format!("chaos-ev-{tag}"), format!("chaos-tickets-{tag}"), format!("chaos-{tag}-leases"));
    let ev = Kinesis::new(&ks.sdk_config(), &ev_stream);
    ev.create_stream(EV_SHARDS).await.context("creating the EV stream")?;
    let ticket_kinesis = Kinesis::new(&ks.sdk_config(), &ticket_stream);
    ticket_kinesis.create_stream(TICKET_SHARDS).await.context("creating the ticket stream")?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut world = TicketWorld::new(&mut rng, 10, 20, 60, 1_700_000_000_000);
    crate::gen::write_reference_tables(&ds.sdk_config(), &world).await?;
    let mut ticket_backlog = world.full_load(&mut rng);
    ticket_backlog.reverse();

    std::env::set_var(tickets::KEY_ENV, TOKENIZE_KEY);
    let config = node_config(&ev_stream, &ticket_stream, &lease_table, &node_url);
    let upstreams = [upstream(&ds.endpoint).await?, upstream(&ks.endpoint).await?, upstream(&url).await?];
    // The nodes run a copy of this binary: a rebuild during the run cannot break their restarts.
    let exe = dir.join("tributary");
    std::fs::copy(std::env::current_exe()?, &exe).context("copying the tributary binary for the nodes")?;
    let mut cluster = Vec::new();
    for slot in 1..=nodes {
        let mut node = Node::new(slot, upstreams, &config, &dir, &exe).await?;
        node.start(false).with_context(|| format!("starting node-{slot}"))?;
        cluster.push(node);
    }
    let shape = Shape { run: opts.duration, nodes, failover: FAILOVER, restart_postgres: pg.is_some() };
    let plan = schedule::plan(seed, shape);
    eprintln!(
        "chaos: seed {seed}: {nodes} nodes, streams {ev_stream} ({EV_SHARDS} shards) and {ticket_stream} \
         ({TICKET_SHARDS}), {} faults over {:.0}s, logs in {}",
        plan.len(),
        opts.duration.as_secs_f64(),
        dir.display()
    );
    let mut run = Run {
        started: Instant::now(),
        nodes: cluster,
        pg,
        pg_restart: None,
        ev,
        tickets: ticket_kinesis,
        leases: DynamoLeaseTable::new(&ds.sdk_config(), &lease_table),
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed),
        generator: testkit::ev::Generator::new(1_700_000_000_000),
        world,
        ticket_backlog,
        oracle: Oracle::default(),
        written: Vec::new(),
        watches: Vec::new(),
        pending_recoveries: Vec::new(),
        report: Report::default(),
        url: url.clone(),
        monitor: None,
        opts,
    };

    // The run: starts and heals in time order, a write every 100 ms, a look every 500 ms.
    let mut actions: Vec<(Duration, usize, bool)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        actions.push((p.at, i, false));
        if !p.fault.lasting().is_zero() {
            actions.push((p.at + p.fault.lasting(), i, true));
        }
    }
    actions.sort_by_key(|a| (a.0, a.2));
    actions.reverse();
    let mut healed = vec![false; plan.len()];
    let (mut owed, mut ticker, mut last_look) =
        (0.0, tokio::time::interval(Duration::from_millis(100)), Instant::now());
    while run.started.elapsed() < run.opts.duration {
        ticker.tick().await;
        run.write(&mut owed).await?;
        while actions.last().is_some_and(|a| a.0 <= run.started.elapsed()) {
            let (_, i, heal) = actions.pop().expect("due");
            if heal {
                healed[i] = true;
                run.heal(i, &plan[i]);
            } else {
                run.inject(i, &plan[i]).await;
            }
        }
        if last_look.elapsed() >= Duration::from_millis(500) {
            last_look = Instant::now();
            run.observe().await;
        }
        for node in &mut run.nodes {
            if let Some(status) = node.exited() {
                run.report.failures.push(format!(
                    "{} exited by itself ({status}); see {}",
                    node.id,
                    node.log_path().display()
                ));
                node.kill();
            }
        }
    }

    // The end: every fault still on is healed (a node still down starts again), then the
    // warehouse must settle at the oracle.
    for (_, i, heal) in actions.into_iter().rev() {
        if heal && !healed[i] {
            run.heal(i, &plan[i]);
        }
    }
    if let Some(handle) = run.pg_restart.take() {
        run.check_restart(handle).await;
    }
    let ended = Instant::now();
    run.say("faults over; waiting for the warehouse to settle");
    run.oracle.take_tickets(&run.world);
    let warehouse = PostgresWarehouse::connect(&url).await.context("connecting to the warehouse")?;
    let mut tally = audit::Tally::default();
    while ended.elapsed() < SETTLE_DEADLINE {
        run.observe().await;
        match audit::read(&warehouse, &ev_stream, &ticket_stream).await {
            Ok(found) => {
                tally = audit::tally(&run.oracle, &found);
                if tally.clean() {
                    break;
                }
            }
            Err(e) => tally.examples = vec![format!("the warehouse could not be read: {e}")],
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let settled = ended.elapsed();
    if !tally.clean() {
        run.report.failures.push(format!(
            "after {:.0}s the warehouse still differs from the oracle: {}",
            settled.as_secs_f64(),
            tally.examples.join("; ")
        ));
    } else {
        run.say(format!("the warehouse equals the oracle ({:.1}s after the faults ended)", settled.as_secs_f64()));
    }
    let unowned = unowned(&run, &[&ev_stream, &ticket_stream]).await;
    if !unowned.is_empty() {
        run.report.failures.push(format!("shards without a live owner: {}", unowned.join(", ")));
    }
    for node in &run.nodes {
        node.sigterm();
    }
    let mut exits = Vec::new();
    for node in &mut run.nodes {
        let code = node.exit_code(Duration::from_secs(40)).await;
        if code != Some(0) {
            run.report.failures.push(format!(
                "{} exited {code:?} on SIGTERM; see {}",
                node.id,
                node.log_path().display()
            ));
        }
        exits.push(code);
    }
    print_report(&run, tally.lost, tally.duplicated, &dir);
    let ok = run.report.failures.is_empty();
    if ok && run.opts.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    drop(ks);
    drop(ds);
    Ok(ok)
}

/// Waits (up to a minute) until every unfinished lease of `streams` has a live owner and every
/// open shard a lease; returns what is still not so.
async fn unowned(run: &Run, streams: &[&str]) -> Vec<String> {
    let live: Vec<&str> = run.nodes.iter().filter(|n| n.is_up()).map(|n| n.id.as_str()).collect();
    let mut missing = Vec::new();
    for _ in 0..60 {
        missing.clear();
        let Ok(leases) = run.leases.scan().await else { continue };
        for lease in leases.iter().filter(|l| !l.is_finished()) {
            if !lease.owner.as_ref().is_some_and(|o| live.contains(&o.as_str())) {
                missing.push(format!("{} (owner {:?})", lease.key, lease.owner.as_ref().map(|o| o.as_str())));
            }
        }
        for (stream, kinesis) in streams.iter().zip([&run.ev, &run.tickets]) {
            for shard in kinesis.list_shards().await.unwrap_or_default().iter().filter(|s| s.is_open()) {
                let leased =
                    leases.iter().any(|l| l.key.contains(&format!(":{stream}:")) && l.stream_shard_id() == shard.id);
                if !leased {
                    missing.push(format!("{stream}/{} (no lease)", shard.id));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    missing
}

fn print_report(run: &Run, lost: usize, duplicated: usize, dir: &std::path::Path) {
    let r = &run.report;
    let faults: usize = r.injected.values().sum();
    let kinds: Vec<String> = r.injected.iter().map(|(k, n)| format!("{k} {n}")).collect();
    eprintln!("chaos: faults by kind: {}", kinds.join(", "));
    if !r.refused.is_empty() {
        eprintln!("chaos: not injected (refused by the stream): {}", r.refused.join("; "));
    }
    let worst = r.failovers.iter().max_by_key(|f| f.0);
    eprintln!(
        "chaos: failovers: {} nodes' leases moved, worst {} ; {} came back before their leases moved",
        r.failovers.len(),
        worst.map_or("-".into(), |(d, n)| format!("{:.1}s ({n})", d.as_secs_f64())),
        r.back_before_moved
    );
    let worst_recovery = r.recoveries.iter().max().copied().unwrap_or_default();
    eprintln!(
        "chaos: recoveries: {} heals caught up, worst {:.1}s; worst lag {:.1}s",
        r.recoveries.len(),
        worst_recovery.as_secs_f64(),
        r.worst_lag.as_secs_f64()
    );
    eprintln!(
        "chaos: written: {} EV records ({} malformed) for {} sessions, {} ticket changes for {} tickets",
        run.oracle.written_raw() + run.oracle.malformed,
        run.oracle.malformed,
        run.oracle.sessions.len(),
        run.oracle.ticket_changes,
        run.oracle.tickets.len()
    );
    for failure in &r.failures {
        eprintln!("chaos: FAILED: {failure}");
    }
    if !r.failures.is_empty() {
        let minutes = run.opts.duration.as_secs_f64() / 60.0;
        eprintln!(
            "chaos: replay with: tributary chaos --minutes {minutes} --seed {} --nodes {} --rate {} (logs kept in {})",
            run.opts.seed,
            run.opts.nodes,
            run.opts.rate,
            dir.display()
        );
    }
    println!("chaos: seed {}, faults {faults}, lost {lost}, duplicated {duplicated}", run.opts.seed);
}
