//! `tributary gen --template` as an OS process against kinesis-local: it creates the stream,
//! writes templated records at the asked rate, and every record it reports sent is in the
//! stream, rendered from the template (bounds, choices, sequence) under its templated key.

use adapters::kinesis::Kinesis;
use proto::{ShardReader, StartingPosition};
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use testkit::local_stack::{emulator, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_writes_templated_records() {
    let kinesis = emulator(Service::Kinesis).unwrap();
    let dir = std::env::temp_dir().join(format!("tributary-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let template = dir.join("sensor.json");
    std::fs::write(
        &template,
        r#"{"sensor": "{{random.arrayElement(["north", "south"])}}", "reading": {{random.float(10, 20, 1)}},
 "level": {{random.number(1, 5)}}, "id": "{{random.uuid}}", "n": {{seq}}, "at": "{{date.now}}"}"#,
    )
    .unwrap();
    let stream = format!("gen-{}", std::process::id());
    let output = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["gen", "--stream", &stream, "--create", "2", "--rate", "100", "--duration", "2s", "--template"])
        .arg(&template)
        .args(["--partition-key", "{{random.arrayElement([\"north\", \"south\"])}}-{{random.number(9)}}"])
        .env("AWS_ENDPOINT_URL_KINESIS", &kinesis.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // "gen: N records to STREAM in …"
    let sent: usize = stderr
        .rsplit("gen: ")
        .next()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stderr:?}"));
    assert!((150..=250).contains(&sent), "about 100/s for 2 s: {sent}");

    let reader = Kinesis::new(&kinesis.sdk_config(), &stream);
    let mut seen = BTreeSet::new();
    for shard in reader.list_shards().await.unwrap() {
        let mut iterator = reader.iterator(&shard.id, &StartingPosition::TrimHorizon).await.unwrap();
        for _ in 0..20 {
            // Five reads a second per shard at most: the reader leaves pacing to its caller.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let batch = reader.read(&shard.id, &iterator, 1000).await.unwrap();
            let empty = batch.records.is_empty();
            for r in batch.records {
                let v: Json = serde_json::from_slice(&r.data).expect("a rendered template is json");
                assert!(["north", "south"].contains(&v["sensor"].as_str().unwrap()), "{v}");
                assert!((10.0..=20.0).contains(&v["reading"].as_f64().unwrap()), "{v}");
                assert!((1..=5).contains(&v["level"].as_i64().unwrap()), "{v}");
                assert_eq!(v["id"].as_str().unwrap().len(), 36);
                assert!(v["at"].as_str().unwrap().ends_with('Z'));
                let (side, digit) = r.partition_key.split_once('-').expect("templated key");
                assert!(["north", "south"].contains(&side) && digit.parse::<u8>().unwrap() <= 9, "{}", r.partition_key);
                assert!(seen.insert(v["n"].as_u64().unwrap()), "each sequence number once");
            }
            match batch.next_iterator {
                Some(next) if !empty => iterator = next,
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(seen, (1..=sent as u64).collect::<BTreeSet<_>>(), "every record sent is in the stream, once");
    let _ = std::fs::remove_dir_all(&dir);
}
