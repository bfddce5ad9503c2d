//! What the tests that run `tributary` as OS processes share: starting a node on the local
//! stack, stopping it (SIGTERM or SIGKILL), and waiting for PostgreSQL to show a count.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use adapters::postgres::PostgresWarehouse;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use testkit::local_stack::Emulator;
use testkit::timeline::{Mark, Span};

/// A `tributary run` process, killed if the test ends without stopping it.
pub struct NodeProcess {
    pub name: String,
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tributary` binary pointed at these Kinesis and DynamoDB endpoints, with local
/// credentials.
pub fn tributary_at(kinesis: &str, dynamo: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
    command
        .env("AWS_ENDPOINT_URL_KINESIS", kinesis)
        .env("AWS_ENDPOINT_URL_DYNAMODB", dynamo)
        .env("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", dynamo)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local");
    command
}

impl NodeProcess {
    /// `tributary run --config CONFIG` as node `name` against the emulators; its stderr goes to
    /// `<config dir>/<name>.log`.
    pub fn spawn(config: &Path, name: &str, kinesis: &Emulator, dynamo: &Emulator) -> Self {
        Self::spawn_at(config, name, &kinesis.endpoint, &dynamo.endpoint)
    }

    /// As `spawn`, against these Kinesis and DynamoDB endpoints.
    pub fn spawn_at(config: &Path, name: &str, kinesis: &str, dynamo: &str) -> Self {
        let log = config.with_file_name(format!("{name}.log"));
        let child = tributary_at(kinesis, dynamo)
            .args(["run", "--config"])
            .arg(config)
            .env("POD_NAME", name)
            // Warnings, plus the lines that mark where each consumer starts and stops.
            .env("RUST_LOG", "warn,worker::lease_keeper=info,worker::shard_consumer=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("tributary starts");
        Self { name: name.to_owned(), child, log }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit code (bounded wait).
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGSTOP: the process is frozen (a long pause of the OS or the runtime), holding
    /// whatever it held; `resume` wakes it.
    pub fn pause(&self) {
        let _ = Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status();
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
    }

    /// SIGKILL: a crash, nothing written on the way out. Returns when the process is gone.
    pub fn kill(&mut self) -> SystemTime {
        let _ = self.child.kill();
        let _ = self.child.wait();
        SystemTime::now()
    }

    /// What the process wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port of its metrics listener, once it logged it (`listen = "127.0.0.1:0"`).
    pub fn metrics_port(&self) -> Option<u16> {
        metrics_port(&self.log())
    }
}

/// The port a node's log says its metrics listener took on 127.0.0.1.
pub fn metrics_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|l| l.strip_prefix("tributary: metrics on http://127.0.0.1:")?.strip_suffix("/metrics")?.parse().ok())
}

/// EV charging record number `i` (an id that orders like `i`): its partition key and JSON.
pub fn ev_record(i: usize) -> (String, Vec<u8>) {
    let id = format!("session-{i:05}");
    let json = format!(
        r#"{{"_id":"{id}","clusterID":"39","connectionTime":"2018-04-25T11:08:04Z","kWhDelivered":{}.5,"stationID":"2-39-{}","spaceID":"CA-{}","timezone":"America/Los_Angeles","userID":null}}"#,
        i % 40,
        i % 90,
        i % 300
    );
    (id, json.into_bytes())
}

pub async fn count(w: &PostgresWarehouse, sql: &str) -> usize {
    w.query_text(sql).await.ok().and_then(|r| r[0][0].as_ref()?.parse().ok()).unwrap_or(0)
}

/// Waits (bounded, 60 s) until `sql`'s single number reaches `want`; returns the last count.
pub async fn wait_count(w: &PostgresWarehouse, sql: &str, want: usize) -> usize {
    let mut got = 0;
    for _ in 0..600 {
        got = count(w, sql).await;
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

/// A fresh database on the test server; its connection string.
pub async fn database(admin: &PostgresWarehouse, server_url: &str, name: &str) -> String {
    admin.query_text(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
    admin.query_text(&format!("CREATE DATABASE {name}")).await.unwrap();
    format!("{} dbname={name}", server_url.replace("dbname=postgres", ""))
}

/// Seconds since the Unix epoch of a log line's leading `2026-11-30T14:01:02.123456Z`.
fn log_time(line: &str) -> Option<Duration> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.splitn(3, ':');
    let (h, mi): (u64, u64) = (hms.next()?.parse().ok()?, hms.next()?.parse().ok()?);
    let secs: f64 = hms.next()?.parse().ok()?;
    let days = u64::try_from(proto::civil::days_from_civil(y, m, d)).ok()?;
    Some(Duration::from_secs(days * 86_400 + h * 3_600 + mi * 60) + Duration::from_secs_f64(secs))
}

/// Text without its ANSI colour sequences (`ESC [ … letter`).
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Each consumer's span in the log of node process `node`, timed from `origin`: it starts at
/// "starting consumer" or "starting the child at once" (logged before the consumer exists, so
/// before its first read) and ends
/// where the consumer stopped, was stopped at once, or failed, or else at `killed` (the process
/// was gone by then) or never (still running).
pub fn consumer_spans(node: &str, log: &str, origin: SystemTime, killed: Option<SystemTime>) -> Vec<Span> {
    let since = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let origin = since(origin);
    let mark = |at: Duration| Mark { at: at.saturating_sub(origin), seq: None };
    let mut spans: Vec<Span> = Vec::new();
    for line in log.lines().map(plain) {
        let Some(shard) = line.split_whitespace().find_map(|w| w.strip_prefix("shard=")) else { continue };
        let Some(at) = log_time(&line) else { continue };
        let shard = proto::ShardId::new(shard);
        if line.contains("starting consumer") || line.contains("starting the child at once") {
            spans.push(Span { node: proto::WorkerId::new(node), shard, start: mark(at), end: None });
        } else if ["consumer stopping", "stopping consumer at once", "consumer failed"].iter().any(|m| line.contains(m))
        {
            if let Some(span) = spans.iter_mut().rev().find(|s| s.shard == shard && s.end.is_none()) {
                span.end = Some(mark(at));
            }
        }
    }
    if let Some(killed) = killed {
        for span in spans.iter_mut().filter(|s| s.end.is_none()) {
            span.end = Some(mark(since(killed)));
        }
    }
    spans
}

/// The EV warehouse against the generator's oracle; `Err` says what differs.
pub async fn check_ev(
    w: &PostgresWarehouse,
    oracle: &testkit::ev::Oracle,
    good: usize,
    dead_of: &str,
) -> Result<(), String> {
    let raw = count(w, "SELECT count(*) FROM ev_charging_sessions_raw").await;
    let distinct = count(w, "SELECT count(DISTINCT (shard_id, sequence_number)) FROM ev_charging_sessions_raw").await;
    let dead = count(w, &format!("SELECT count(*) FROM tributary_dead_letters WHERE shard_id LIKE '{dead_of}'")).await;
    if (raw, distinct, dead) != (good, good, oracle.malformed.len()) {
        return Err(format!(
            "raw {raw} (distinct {distinct}) of {good}, dead letters {dead} of {}",
            oracle.malformed.len()
        ));
    }
    let rows =
        w.query_text("SELECT \"_id\", \"kWhDelivered\" FROM ev_charging_sessions").await.map_err(|e| e.to_string())?;
    if rows.len() != oracle.sessions.len() {
        return Err(format!("{} sessions of {}", rows.len(), oracle.sessions.len()));
    }
    for r in rows {
        let id = r[0].clone().unwrap_or_default();
        let kwh: f64 = r[1].as_deref().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        match oracle.sessions.get(&id) {
            Some(s) if s.kwh_delivered == kwh => {}
            Some(s) => {
                return Err(format!("session {id}: {kwh} kWh in the warehouse, last written {}", s.kwh_delivered))
            }
            None => return Err(format!("session {id} was never written")),
        }
    }
    Ok(())
}
