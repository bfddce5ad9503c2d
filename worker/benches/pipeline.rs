//! Pipeline throughput on one core: decode → join two reference tables → mask / tokenize →
//! batch-encode (the SQL literal form of the rows), on 300-byte JSON records, against a
//! straightforward per-record baseline (`serde_json::Value`, a `HashMap` clone per lookup,
//! `format!` for the output) doing the same work, measured in the same run.
//!
//! `cargo bench -p worker --bench pipeline`; the last line reads
//! `pipeline: N rec/s, baseline: M rec/s, ratio R`.

use hmac::{Hmac, Mac};
use proto::memory::MemoryReferenceSource;
use proto::{KinesisRecord, Position, SequenceNumber, ShardId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value as Json};
use sha2::Sha256;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use worker::pipeline::transform::TokenKey;
use worker::reference_set::ReferenceSet;
use worker::UserRecord;
use worker::{Pipeline, PipelineConfig, RecordMapper};

const STATIONS: usize = 10_000;
const USERS: usize = 100_000;
const RECORDS: usize = 200_000;
const KEY: &str = "bench-tokenize-key-0123456789abcdef";

const CONFIG: &str = r#"
tokenize_key_env = "TRIBUTARY_BENCH_KEY"
[[reference]]
name = "station"
key = "stationID"
[[reference]]
name = "user"
key = "userID"
[[table]]
name = "sessions"
key = ["_id"]
join = [
    { reference = "station", key = "stationID", on_missing = "null" },
    { reference = "user", key = "userID", on_missing = "null" },
]
column = [
    { name = "_id", from = "_id", type = "text" },
    { name = "stationID", from = "stationID", type = "text" },
    { name = "kWhDelivered", from = "kWhDelivered", type = "double" },
    { name = "connectionTime", from = "connectionTime", type = "timestamp" },
    { name = "site", from = "station.site", type = "text" },
    { name = "city", from = "station.city", type = "text" },
    { name = "tier", from = "user.tier", type = "text" },
    { name = "email", from = "email", type = "text", transform = "tokenize" },
    { name = "phone", from = "phone", type = "text", transform = "mask" },
    { name = "shard_id", from = "@shard_id", type = "text" },
]
"#;

fn records(rng: &mut ChaCha8Rng) -> Vec<Vec<u8>> {
    (0..RECORDS)
        .map(|i| {
            let user = rng.gen_range(0..USERS);
            let mut doc = json!({
                "_id": format!("{:024x}", rng.gen::<u128>() >> 32),
                "stationID": format!("2-39-{}", rng.gen_range(0..STATIONS)),
                "userID": format!("{user:09}"),
                "kWhDelivered": (rng.gen_range(100..90_000) as f64) / 1000.0,
                "connectionTime": format!("2018-04-{:02}T11:{:02}:04Z", 1 + i % 28, i % 60),
                "email": format!("user.{user}@example.com"),
                "phone": format!("+1-{}-{}-{}", rng.gen_range(200..999), rng.gen_range(100..999), rng.gen_range(1000..9999)),
                "clusterID": "39",
                "spaceID": format!("CA-{}", rng.gen_range(100..999)),
                "timezone": "America/Los_Angeles",
            });
            let len = doc.to_string().len();
            doc["note"] = Json::String("x".repeat(300usize.saturating_sub(len + 10)));
            doc.to_string().into_bytes()
        })
        .collect()
}

/// The baseline: what a first version written without care for speed does per record.
struct Baseline {
    stations: HashMap<String, HashMap<String, String>>,
    users: HashMap<String, HashMap<String, String>>,
}

impl Baseline {
    fn run(&self, records: &[Vec<u8>], shard: &str) -> usize {
        let mut out = String::new();
        for (n, r) in records.iter().enumerate() {
            let v: Json = serde_json::from_slice(r).unwrap();
            let station = self.stations.get(v["stationID"].as_str().unwrap()).cloned().unwrap_or_default();
            let user = self.users.get(v["userID"].as_str().unwrap()).cloned().unwrap_or_default();
            let phone: String =
                v["phone"].as_str().unwrap().chars().map(|c| if c.is_alphanumeric() { '*' } else { c }).collect();
            let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
            mac.update(v["email"].as_str().unwrap().as_bytes());
            let email = hex::encode(mac.finalize().into_bytes());
            let ts = v["connectionTime"].as_str().unwrap().to_string();
            let line = format!(
                "('{}', '{}', {}, '{}', '{}', '{}', '{}', '{}', '{}', '{}')",
                v["_id"].as_str().unwrap().replace('\'', "''"),
                v["stationID"].as_str().unwrap().replace('\'', "''"),
                v["kWhDelivered"].as_f64().unwrap(),
                ts,
                station.get("site").cloned().unwrap_or_default(),
                station.get("city").cloned().unwrap_or_default(),
                user.get("tier").cloned().unwrap_or_default(),
                email,
                phone,
                shard
            );
            if n > 0 {
                out.push_str(", ");
            }
            out.push_str(&line);
            if out.len() > 1 << 20 {
                black_box(&out);
                out.clear();
            }
        }
        black_box(out.len())
    }
}

fn pipeline_run(p: &Pipeline, records: &[UserRecord], shard: &ShardId) -> usize {
    let mut rows = worker::MappedRows { rows: Vec::with_capacity(5_000), ends: Vec::with_capacity(5_000) };
    let mut text = String::with_capacity(2 << 20);
    let mut n = 0;
    for chunk in records.chunks(5_000) {
        rows.rows.clear();
        rows.ends.clear();
        assert_eq!(p.map(shard, chunk, false, &mut rows), (chunk.len(), worker::MapOutcome::Done));
        text.clear();
        adapters::sql_text::values_text(rows.rows.iter().map(|(_, r)| &r.values[..]), &mut text).unwrap();
        n += black_box(text.len());
    }
    n
}

/// The floor: only the work no implementation can skip, with the join keys and the e-mail
/// handed over already extracted — check the record is UTF-8, look up the two reference rows
/// (the same cache), compute the HMAC token, copy the record's bytes to the output. No decoder,
/// pipeline or encoder can beat it; it bounds the ratio reachable against the baseline.
fn floor_run(refs: &ReferenceSet, records: &[UserRecord], keys: &[(String, String, String)], key: &TokenKey) -> usize {
    let (stations, users) = (refs.get("station").unwrap().snapshot(), refs.get("user").unwrap().snapshot());
    let mut text = String::with_capacity(2 << 20);
    let mut n = 0;
    for (r, (station, user, email)) in records.iter().zip(keys) {
        let data = std::str::from_utf8(&r.data).unwrap();
        let joined = (stations.get(station), users.get(user));
        text.push_str(&key.tokenize(email));
        text.push_str(data);
        n += black_box(joined).0.is_some() as usize;
        if text.len() > 1 << 20 {
            black_box(&text);
            text.clear();
        }
    }
    n
}

/// The pipeline's JSON decoding alone: each record parsed into the slots of the fields its
/// columns and joins read.
fn decode_run(p: &Pipeline, records: &[UserRecord]) -> usize {
    let wanted = p.record_fields();
    records.iter().map(|r| black_box(wanted.parse(std::str::from_utf8(&r.data).unwrap()).unwrap()).len()).sum()
}

/// mimalloc, as in the `tributary` binary, counting live heap bytes while `COUNTING` is on
/// (only around the cache load, so the timed runs pay one relaxed load per allocation, the
/// same on both sides).
struct Counting;

static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if COUNTING.load(std::sync::atomic::Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if COUNTING.load(std::sync::atomic::Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One timed run, in records per second.
fn measure(mut f: impl FnMut() -> usize) -> f64 {
    let t = Instant::now();
    black_box(f());
    RECORDS as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    std::env::set_var("TRIBUTARY_BENCH_KEY", KEY);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let source = MemoryReferenceSource::new();
    source.create_table("station", false);
    source.create_table("user", false);
    let mut baseline = Baseline { stations: HashMap::new(), users: HashMap::new() };
    for i in 0..STATIONS {
        let id = format!("2-39-{i}");
        let (site, city) = (format!("site-{}", i % 300), ["Pasadena", "Mountain View", "San Jose"][i % 3].to_owned());
        source.put("station", &id, json!({"stationID": id, "site": site, "city": city}).as_object().unwrap().clone());
        baseline.stations.insert(id, HashMap::from([("site".to_owned(), site), ("city".to_owned(), city)]));
    }
    for i in 0..USERS {
        let id = format!("{i:09}");
        let tier = ["free", "plus", "fleet"][i % 3].to_owned();
        source.put("user", &id, json!({"userID": id, "tier": tier}).as_object().unwrap().clone());
        baseline.users.insert(id, HashMap::from([("tier".to_owned(), tier)]));
    }
    let raw = records(&mut rng);
    let avg = raw.iter().map(Vec::len).sum::<usize>() / raw.len();
    let user_records: Vec<UserRecord> = raw
        .iter()
        .enumerate()
        .flat_map(|(i, data)| {
            worker::kpl::deaggregate(&KinesisRecord {
                sequence: SequenceNumber::from_u128(49_000_000_000 + i as u128),
                partition_key: "k".into(),
                data: data.clone().into(),
                arrival_ms: 0,
            })
        })
        .collect();
    assert!(user_records.iter().all(|r| r.position != Position::new(SequenceNumber::from_u128(0), 0)));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = PipelineConfig::from_toml(CONFIG).unwrap();
    COUNTING.store(true, std::sync::atomic::Ordering::SeqCst);
    let refs = rt.block_on(ReferenceSet::start(Arc::new(source), &config.reference_specs())).unwrap();
    COUNTING.store(false, std::sync::atomic::Ordering::SeqCst);
    let measured_per_row = LIVE.load(std::sync::atomic::Ordering::SeqCst).max(0) as usize / (USERS + STATIONS);
    let bytes_per_row = refs.get("user").unwrap().bytes() / USERS;
    let refs = Arc::new(refs);
    let pipeline = Pipeline::new(&config, refs.clone()).unwrap();
    let keys: Vec<(String, String, String)> = raw
        .iter()
        .map(|r| {
            let v: Json = serde_json::from_slice(r).unwrap();
            let text = |k: &str| v[k].as_str().unwrap().to_owned();
            (text("stationID"), text("userID"), text("email"))
        })
        .collect();
    let token_key = TokenKey::new(KEY.as_bytes().to_vec()).unwrap();
    let shard = ShardId::numbered(3);

    // Same output from both (a spot check that they do the same work).
    let mut rows = worker::MappedRows::default();
    pipeline.map(&shard, &user_records[..1], false, &mut rows);
    assert_eq!(rows.rows.len(), 1, "no dead letters");

    println!("{RECORDS} records of {avg} bytes; {STATIONS} stations and {USERS} users cached");
    println!(
        "reference cache: {measured_per_row} bytes per row measured (heap still held after the load), \
         {bytes_per_row} estimated by the cache's own gauge: ~{} MB per million rows",
        measured_per_row
    );
    // Rounds alternate the two sides so both see the same machine; the best round of each counts.
    // For profiling one side alone: TRIBUTARY_BENCH_ONLY=pipeline (or baseline).
    let only = std::env::var("TRIBUTARY_BENCH_ONLY").unwrap_or_default();
    // TRIBUTARY_BENCH_ROUNDS (default 7) lengthens the timed part for a profiler.
    let rounds = std::env::var("TRIBUTARY_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    let (mut p, mut b, mut f, mut d) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    for _ in 0..rounds {
        if only.is_empty() {
            f = f.max(measure(|| floor_run(&refs, &user_records, &keys, &token_key)));
            d = d.max(measure(|| decode_run(&pipeline, &user_records)));
        }
        if only != "baseline" {
            p = p.max(measure(|| pipeline_run(&pipeline, &user_records, &shard)));
        }
        if only != "pipeline" {
            b = b.max(measure(|| baseline.run(&raw, shard.as_str())));
        }
    }
    if only.is_empty() {
        println!("json decoding alone (into the wanted fields' slots): {d:.0} rec/s");
        println!(
            "floor (UTF-8 check + 2 lookups + HMAC + copy, nothing else): {f:.0} rec/s, {:.2}x the baseline",
            f / b
        );
    }
    println!("pipeline: {p:.0} rec/s, baseline: {b:.0} rec/s, ratio {:.2}", p / b);
}
