//! What an SRE needs to size tributary's pods, measured on the local stack (kinesis-local, moto,
//! PostgreSQL) with one release-build `tributary run` node at a time, metrics served on
//! `127.0.0.1:0`, JSON records of ~300 bytes into PostgreSQL:
//!
//! 1. **Idle memory per owned shard**: a node owning the one shard of a 1-shard stream, then a
//!    node owning the 64 shards of a 64-shard stream, each measured after it owns every lease
//!    (`tributary_leases_owned`) and stayed idle for a while: VmRSS from `/proc/PID/status`
//!    (and `process_resident_memory_bytes`), and (RSS₆₄ − RSS₁) / 63.
//! 2. **Memory and CPU under load**: the 64-shard node while this program writes records at a
//!    steady target rate (random partition keys, up to four PutRecords in flight, throttled
//!    entries retried): the rate written and the rate consumed (deltas of
//!    `tributary_records_read_total`), the largest VmRSS (sampled every second), and CPU
//!    seconds per second per 1,000 records/s consumed. CPU comes from `/proc/PID/stat` (utime +
//!    stime, to the clock tick): the node's `process_cpu_seconds_total` counts whole seconds.
//! 3. **Scrape**: bytes of one `/metrics` response and the time of one scrape over loopback
//!    (connect, request, whole response), sequential, on the 64-shard node once it has read
//!    everything written (every per-shard series present); then its stop, idle, is timed.
//! 4. **Drain**: a node owning the 16 shards of a 16-shard stream under the same load (measured
//!    as in 2, so the load's memory can be compared between 16 and 64 shards), then SIGTERM
//!    while records still flow: time to exit (exit code 0 asserted; the wait polls every
//!    50 ms), the `stopped in` figure the node logs, and every lease released in the lease
//!    table (asserted).
//!
//! `cargo bench --bench operations` (needs `deploy/local/stack.sh install`; about 2 min 15 s).
//! Environment: `TRIBUTARY_OPS_RATE` (records/s asked, default 1000), `TRIBUTARY_OPS_SECS`
//! (each load's measured window, default 40, after 5 s of warm-up), `TRIBUTARY_OPS_IDLE_SECS`
//! (default 10), `TRIBUTARY_OPS_SHARDS` (the large node's shards, default 64),
//! `TRIBUTARY_OPS_DRAIN_SHARDS` (default 16), `TRIBUTARY_OPS_SCRAPES` (default 50). The last
//! line starts with `operations:` and holds every figure.

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use adapters::postgres::PostgresWarehouse;
use proto::LeaseTable;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::local_stack::{emulator, Emulator, Service};
use testkit::postgres_server::postgres;

#[path = "common.rs"]
mod common;
use common::{env, pipeline, record};

#[path = "../tests/processes/mod.rs"]
mod processes;
#[path = "../tests/prometheus/mod.rs"]
mod prometheus;

/// PutRecords calls in flight at once, as a small producer fleet would have.
const IN_FLIGHT: usize = 4;
const MIB: f64 = 1024.0 * 1024.0;

/// Everything the phases share: the emulators, the database, the directory of configs and logs.
struct Stack {
    ks: Emulator,
    ds: Emulator,
    url: String,
    dir: PathBuf,
}

/// A `tributary run` node (killed on drop) with its metrics port and process id.
struct Node {
    process: processes::NodeProcess,
    stream: String,
    port: u16,
    pid: u32,
}

/// One scrape's figures that the phases read.
struct Sample {
    owned: f64,
    cpu: f64,
    rss: f64,
    read: f64,
}

impl Node {
    /// Starts a node on a new `shards`-shard stream and waits until it owns every lease; the
    /// node and how long that took.
    async fn start(stack: &Stack, name: &str, stream: &str, shards: u32) -> (Self, Duration) {
        Kinesis::new(&stack.ks.sdk_config(), stream).create_stream(shards).await.unwrap();
        let config = stack.dir.join(format!("{name}.toml"));
        let pipeline = pipeline("ops_events");
        std::fs::write(
            &config,
            format!(
                "{pipeline}\n[node]\nfailover_time = \"10s\"\n[stream]\nname = \"{stream}\"\n\
                 [lease_table]\nname = \"{stream}-leases\"\n[warehouse]\nkind = \"postgres\"\nurl = \"{}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n",
                stack.url
            ),
        )
        .unwrap();
        let started = Instant::now();
        let mut process = processes::NodeProcess::spawn(&config, name, &stack.ks, &stack.ds);
        let mut port = None;
        for _ in 0..200 {
            port = process.log().lines().find_map(|l| {
                l.strip_prefix("tributary: metrics on http://127.0.0.1:")?.strip_suffix("/metrics")?.parse().ok()
            });
            if port.is_some() || !process.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let port = port.unwrap_or_else(|| panic!("{name} serves metrics:\n{}", process.log()));
        let pid = process.pid();
        let node = Self { process, stream: stream.to_owned(), port, pid };
        for _ in 0..900 {
            if node.sample().await.owned == f64::from(shards) {
                return (node, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} did not own the {shards} leases in 90 s:\n{}", node.process.log());
    }

    async fn sample(&self) -> Sample {
        let (_, body) = prometheus::scrape(("127.0.0.1", self.port)).await;
        let value = |name: &str| prometheus::sample(&body, name).unwrap_or(f64::NAN);
        Sample {
            owned: value("tributary_leases_owned"),
            cpu: value("process_cpu_seconds_total"),
            rss: value("process_resident_memory_bytes"),
            read: value("tributary_records_read_total"),
        }
    }

    /// A line of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`).
    fn status(&self, field: &str) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or(f64::NAN);
        kib * 1024.0
    }

    /// User + system CPU seconds from `/proc/PID/stat`, to the clock tick (the
    /// `process_cpu_seconds_total` the node exports counts whole seconds only).
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // The fields after the command name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
        (ticks(11) + ticks(12)) / clock_ticks()
    }

    /// SIGTERM; the exit code, the time to exit (to within the 50 ms the wait polls) and the
    /// `stopped in` figure the node logged.
    fn terminate(&mut self) -> (Option<i32>, Duration, Option<f64>) {
        let sent = Instant::now();
        let code = tokio::task::block_in_place(|| self.process.terminate());
        let took = sent.elapsed();
        let logged = self.process.log().lines().find_map(|l| {
            let rest = &l[l.find(" stopped in ")? + " stopped in ".len()..];
            rest[..rest.find('s')?].parse().ok()
        });
        (code, took, logged)
    }
}

/// Clock ticks a second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Writes records at `rate` a second until stopped: random partition keys, refused entries
/// retried after 50 ms, at most `IN_FLIGHT` PutRecords at once; counts the records accepted
/// and the entries refused (throttled), and times each call (the emulator's load shows there).
struct Producer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    /// When each PutRecords call returned, and how long it took (ms).
    calls: Arc<std::sync::Mutex<Vec<(Instant, f64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    fn start(kinesis: &Kinesis, rate: u64, prefix: &'static str, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (written, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (kinesis, flag, count, refusals) = (kinesis.clone(), stop.clone(), written.clone(), refused.clone());
        let timings = calls.clone();
        let task = tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let (start, mut n) = (Instant::now(), 0usize);
            while !flag.load(Ordering::Relaxed) {
                ticker.tick().await;
                // What the asked rate has due by now, at most one PutRecords' worth a tick.
                let due = (rate as f64 * start.elapsed().as_secs_f64()) as usize;
                let take = due.saturating_sub(n).min(500);
                if take == 0 {
                    continue;
                }
                let batch: Vec<(String, Vec<u8>)> = (n..n + take)
                    .map(|i| (format!("{:016x}", rng.gen::<u64>()), record(&format!("{prefix}-{i:09}"), 240)))
                    .collect();
                n += take;
                let permit = in_flight.clone().acquire_owned().await.unwrap();
                let (kinesis, count, refusals, timings) =
                    (kinesis.clone(), count.clone(), refusals.clone(), timings.clone());
                tokio::spawn(async move {
                    let mut pending = batch;
                    while !pending.is_empty() {
                        let sent = Instant::now();
                        let result = kinesis.put_records(&pending).await;
                        let ms = sent.elapsed().as_secs_f64() * 1000.0;
                        timings.lock().unwrap().push((Instant::now(), ms));
                        match result {
                            Ok(refused) => {
                                count.fetch_add(pending.len() - refused.len(), Ordering::Relaxed);
                                refusals.fetch_add(refused.len(), Ordering::Relaxed);
                                pending = adapters::kinesis::refused_only(pending, &refused);
                                if !pending.is_empty() {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    drop(permit);
                });
            }
            // The calls in flight finish (bounded: an emulator that stopped answering must not
            // hang the bench).
            let _ = tokio::time::timeout(Duration::from_secs(30), in_flight.acquire_many(IN_FLIGHT as u32)).await;
        });
        Self { stop, written, refused, calls, task }
    }

    /// Median and max time of the PutRecords calls that returned since `since` (ms).
    fn call_ms(&self, since: Instant) -> (f64, f64) {
        let ms: Vec<f64> =
            self.calls.lock().unwrap().iter().filter(|(at, _)| *at >= since).map(|(_, ms)| *ms).collect();
        if ms.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        median_max(ms)
    }

    fn written(&self) -> usize {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops writing; the records accepted and the entries refused, once the calls in flight
    /// are done.
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.written.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / MIB
}

fn median_max(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

/// A node idle after it owned every lease.
struct Idle {
    rss: f64,
    cpu: f64,
}

/// Starts a node owning `shards` shards, leaves it idle for `idle`, measures it.
async fn idle_node(stack: &Stack, name: &str, shards: u32, idle: Duration) -> (Node, Idle) {
    let (node, owned_in) = Node::start(stack, name, &format!("ops-{name}-{}", std::process::id()), shards).await;
    let (cpu0, metric0) = (node.cpu(), node.sample().await.cpu);
    tokio::time::sleep(idle).await;
    let (cpu1, after) = (node.cpu(), node.sample().await);
    let (rss, hwm) = (node.status("VmRSS"), node.status("VmHWM"));
    let cpu = (cpu1 - cpu0) / idle.as_secs_f64();
    println!(
        "idle, {shards} shard(s) owned (all owned {:.1}s after start), {}s idle: VmRSS {:.1} MiB \
         (process_resident_memory_bytes {:.1} MiB, VmHWM {:.1} MiB), CPU {cpu:.4} CPU-s/s \
         (process_cpu_seconds_total: +{} s)",
        owned_in.as_secs_f64(),
        idle.as_secs(),
        mib(rss),
        mib(after.rss),
        mib(hwm),
        after.cpu - metric0
    );
    (node, Idle { rss, cpu })
}

/// A node under load, over the measured window.
struct Load {
    written: f64,
    consumed: f64,
    rss_max: f64,
    cpu: f64,
    cpu_per_k: f64,
}

/// Measures `node` while `producer` writes into its stream: 5 s of warm-up, then `secs`.
async fn load(node: &Node, producer: &Producer, shards: u32, rate: u64, secs: u64) -> Load {
    eprintln!("writing {rate} records/s into {shards} shards: 5 s warm-up, then {secs} s measured");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (t0, s0, c0, w0) = (Instant::now(), node.sample().await, node.cpu(), producer.written());
    let (mut rss_max, mut trace): (f64, Vec<String>) = (0.0, Vec::new());
    for second in 1.. {
        tokio::time::sleep_until((t0 + Duration::from_secs(second)).into()).await;
        let rss = node.status("VmRSS");
        rss_max = rss_max.max(rss);
        if second % 5 == 0 {
            trace.push(format!("{:.1}", mib(rss)));
        }
        if second >= secs {
            break;
        }
    }
    let (wall, s1, c1, w1) = (t0.elapsed().as_secs_f64(), node.sample().await, node.cpu(), producer.written());
    let rss_end = node.status("VmRSS");
    rss_max = rss_max.max(rss_end);
    let written = (w1 - w0) as f64 / wall;
    let consumed = (s1.read - s0.read) / wall;
    let cpu = (c1 - c0) / wall;
    let cpu_per_k = cpu / (consumed / 1000.0);
    println!(
        "load, {shards} shards: asked {rate} rec/s, written {written:.0} rec/s, consumed {consumed:.0} rec/s over \
         {wall:.1}s; VmRSS max {:.1} MiB, {:.1} at the end (VmHWM {:.1}, process_resident_memory_bytes {:.1})",
        mib(rss_max),
        mib(rss_end),
        mib(node.status("VmHWM")),
        mib(s1.rss)
    );
    println!("load VmRSS, {shards} shards, every 5 s of the window (MiB): {}", trace.join(" "));
    let (put_p50, put_max) = producer.call_ms(t0);
    println!(
        "load PutRecords calls, {shards} shards: median {put_p50:.0} ms, max {put_max:.0} ms (the emulator's load)"
    );
    println!(
        "load CPU, {shards} shards: {cpu:.3} CPU-s/s at {consumed:.0} rec/s = {cpu_per_k:.3} CPU-s/s per 1,000 rec/s \
         (process_cpu_seconds_total: +{} s in the window)",
        s1.cpu - s0.cpu
    );
    Load { written, consumed, rss_max, cpu, cpu_per_k }
}

/// Sequential scrapes.
struct Scrape {
    bytes: usize,
    median_ms: f64,
    max_ms: f64,
}

async fn scrapes(node: &Node, shards: u32, n: u64) -> Scrape {
    let (mut times, mut body) = (Vec::new(), String::new());
    for _ in 0..n {
        let at = Instant::now();
        body = prometheus::scrape(("127.0.0.1", node.port)).await.1;
        times.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    let bytes = body.len();
    let samples: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
    let per_shard: Vec<&str> = samples.iter().copied().filter(|l| l.contains("shard=\"")).collect();
    let series = per_shard.iter().filter(|l| l.starts_with("tributary_shard_last_read_timestamp_seconds{")).count();
    let shard_bytes: usize = per_shard.iter().map(|l| l.len() + 1).sum();
    let mut families: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for l in &per_shard {
        *families.entry(l.split(['{', ' ']).next().unwrap_or_default()).or_default() += 1;
    }
    let families: Vec<String> = families.iter().map(|(name, n)| format!("{name} ×{n}")).collect();
    let (median_ms, max_ms) = median_max(times);
    println!("scrape, per-shard series: {}", families.join(", "));
    println!(
        "scrape, {shards} shards owned ({series} with a last-read series): {bytes} bytes, {} samples, of which {} \
         per-shard samples in {shard_bytes} bytes ({:.0} bytes a shard); median {median_ms:.2} ms, max {max_ms:.2} \
         ms over {n} sequential scrapes",
        samples.len(),
        per_shard.len(),
        shard_bytes as f64 / f64::from(shards)
    );
    Scrape { bytes, median_ms, max_ms }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate = env("TRIBUTARY_OPS_RATE", 1000);
    let secs = env("TRIBUTARY_OPS_SECS", 40);
    let idle = Duration::from_secs(env("TRIBUTARY_OPS_IDLE_SECS", 10));
    let many = env("TRIBUTARY_OPS_SHARDS", 64).max(2) as u32;
    let drain_shards = env("TRIBUTARY_OPS_DRAIN_SHARDS", 16) as u32;
    let n_scrapes = env("TRIBUTARY_OPS_SCRAPES", 50).max(1);
    let bench_start = Instant::now();
    let (ks, ds) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = processes::database(&admin, &pg.url, "operations").await;
    let dir = std::env::temp_dir().join(format!("tributary-operations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stack = Stack { ks, ds, url, dir };
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    println!("record size {} bytes; {cores} cores", record("a-000000000", 240).len());

    // 1. Idle: one shard, then many.
    let (mut one, idle_one) = idle_node(&stack, "one-shard", 1, idle).await;
    let (code, _, _) = one.terminate();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", one.process.log());
    drop(one);
    let (mut node, idle_many) = idle_node(&stack, "many-shards", many, idle).await;
    let per_shard = (idle_many.rss - idle_one.rss) / f64::from(many - 1);
    println!(
        "idle RSS per owned shard: ({:.1} − {:.1} MiB) / {} = {:.0} KiB; idle CPU per owned shard {:.2} ms/s",
        mib(idle_many.rss),
        mib(idle_one.rss),
        many - 1,
        per_shard / 1024.0,
        (idle_many.cpu - idle_one.cpu) / f64::from(many - 1) * 1000.0
    );

    // 2. Load on the many-shard node.
    let producer = Producer::start(&Kinesis::new(&stack.ks.sdk_config(), &node.stream), rate, "a", 1);
    let load_many = load(&node, &producer, many, rate, secs).await;
    let (written, refused) = producer.stop().await;
    println!(
        "load RSS per owned shard: max VmRSS / {many} = {:.0} KiB; (max VmRSS − idle 1-shard VmRSS) / {} = {:.0} KiB \
         ({written} records written in all, {refused} PutRecords entries refused and retried)",
        load_many.rss_max / f64::from(many) / 1024.0,
        many - 1,
        (load_many.rss_max - idle_one.rss) / f64::from(many - 1) / 1024.0
    );

    // 3. Scrapes, once the node has read everything written (every shard has its series); then
    // its stop, idle.
    let stopped = Instant::now();
    let mut read = 0.0;
    for _ in 0..300 {
        read = node.sample().await.read;
        if read >= written as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{read:.0} of {written} records read {:.1}s after the writes stopped", stopped.elapsed().as_secs_f64());
    let scrape = scrapes(&node, many, n_scrapes).await;
    let (code, took, logged) = node.terminate();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", node.process.log());
    println!(
        "drain, {many} shards idle: SIGTERM → exit 0 in {:.2}s (node logs stopped in {:.2}s)",
        took.as_secs_f64(),
        logged.unwrap_or(f64::NAN)
    );
    drop(node);

    // 4. A node owning fewer shards under the same load, then SIGTERM while records flow.
    let (mut node, _) = Node::start(&stack, "drain", &format!("ops-drain-{}", std::process::id()), drain_shards).await;
    let producer = Producer::start(&Kinesis::new(&stack.ks.sdk_config(), &node.stream), rate, "b", 2);
    let load_few = load(&node, &producer, drain_shards, rate, secs).await;
    let (put_p50, put_max) = producer.call_ms(Instant::now() - Duration::from_secs(5));
    let (code, took, logged) = node.terminate();
    let (written, refused) = producer.stop().await;
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", node.process.log());
    let leases = DynamoLeaseTable::new(&stack.ds.sdk_config(), format!("{}-leases", node.stream)).scan().await.unwrap();
    let released = leases.iter().filter(|l| l.owner.is_none()).count();
    println!(
        "drain, {drain_shards} shards, records flowing ({written} written in all, {refused} refused; PutRecords median \
         {put_p50:.0} ms, max {put_max:.0} ms in the 5 s before): SIGTERM → exit 0 in {:.2}s (node logs stopped in \
         {:.2}s); {released} of {} leases released",
        took.as_secs_f64(),
        logged.unwrap_or(f64::NAN),
        leases.len()
    );
    assert_eq!((released, leases.len()), (drain_shards as usize, drain_shards as usize), "{leases:?}");
    let marginal = (load_many.rss_max - load_few.rss_max) / f64::from(many.abs_diff(drain_shards).max(1));
    println!(
        "load RSS per owned shard, {drain_shards} vs {many} shards at the same rate: (max {:.1} − max {:.1} MiB) / {} = \
         {:.0} KiB",
        mib(load_many.rss_max),
        mib(load_few.rss_max),
        many.abs_diff(drain_shards),
        marginal / 1024.0
    );

    println!(
        "operations: idle RSS {:.1} MiB (1 shard), {:.1} MiB ({many} shards), {:.0} KiB per shard; load {:.0} of \
         {rate} rec/s written, {:.0} consumed: max RSS {:.1} MiB ({many} shards), {:.1} MiB ({drain_shards}), \
         {:.0} KiB per shard, {:.3} CPU-s/s per 1,000 rec/s ({:.3} CPU-s/s; {:.3} with {drain_shards} shards); scrape {} \
         bytes, median {:.2} ms, max {:.2} ms; drain of {drain_shards} shards {:.2}s (logged {:.2}s), \
         {released}/{drain_shards} released; bench {:.0}s",
        mib(idle_one.rss),
        mib(idle_many.rss),
        per_shard / 1024.0,
        load_many.written,
        load_many.consumed,
        mib(load_many.rss_max),
        mib(load_few.rss_max),
        marginal / 1024.0,
        load_many.cpu_per_k,
        load_many.cpu,
        load_few.cpu_per_k,
        scrape.bytes,
        scrape.median_ms,
        scrape.max_ms,
        took.as_secs_f64(),
        logged.unwrap_or(f64::NAN),
        bench_start.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&stack.dir);
}
