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
use std::time::{Duration, Instant};
use worker::kpl::UserRecord;
use worker::reference_cache::ReferenceSet;
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
    let mut rows = Vec::with_capacity(5_000);
    let mut text = String::with_capacity(2 << 20);
    let mut n = 0;
    for chunk in records.chunks(5_000) {
        rows.clear();
        for r in chunk {
            p.map(shard, r, false, &mut rows);
        }
        text.clear();
        adapters::merge_sql::values_text(rows.iter().map(|(_, r)| &r.values[..]), &mut text).unwrap();
        n += black_box(text.len());
    }
    n
}

/// Resident memory of this process (Linux), in bytes.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Best of `rounds` runs, in records per second.
fn measure(rounds: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        black_box(f());
        best = best.min(t.elapsed());
    }
    RECORDS as f64 / best.as_secs_f64()
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
    let before = rss_bytes();
    let refs = rt.block_on(ReferenceSet::start(Arc::new(source), &config.reference_specs())).unwrap();
    let measured_per_row = rss_bytes().saturating_sub(before) / (USERS + STATIONS);
    let bytes_per_row = refs.get("user").unwrap().bytes() / USERS;
    let pipeline = Pipeline::new(&config, Arc::new(refs)).unwrap();
    let shard = ShardId::numbered(3);

    // Same output from both (a spot check that they do the same work).
    let mut rows = Vec::new();
    pipeline.map(&shard, &user_records[0], false, &mut rows);
    assert_eq!(rows.len(), 1, "no dead letters");

    println!("{RECORDS} records of {avg} bytes; {STATIONS} stations and {USERS} users cached");
    println!(
        "reference cache: {measured_per_row} bytes per row measured (resident memory grown by the load), \
         {bytes_per_row} estimated by the cache's own gauge: ~{} MB per million rows",
        measured_per_row
    );
    let rounds = 5;
    // For profiling one side alone: TRIBUTARY_BENCH_ONLY=pipeline (or baseline).
    let only = std::env::var("TRIBUTARY_BENCH_ONLY").unwrap_or_default();
    let p =
        if only == "baseline" { f64::NAN } else { measure(rounds, || pipeline_run(&pipeline, &user_records, &shard)) };
    let b = if only == "pipeline" { f64::NAN } else { measure(rounds, || baseline.run(&raw, shard.as_str())) };
    println!("pipeline: {p:.0} rec/s, baseline: {b:.0} rec/s, ratio {:.2}", p / b);
}
