//! The record pipeline end to end, against a real PostgreSQL (started on 127.0.0.1 by the test
//! harness): a 3-node cluster over an in-memory stream and lease table, real time, a node killed
//! mid-run so that replays happen, and the warehouse compared with the generator's oracle.

use adapters::dynamodb_reference::DynamoReferenceSource;
use adapters::postgres::PostgresWarehouse;
use aws_sdk_dynamodb::types::ScalarAttributeType;
use base64::Engine;
use coordinator::ClusterSettings;
use proto::memory::{MemoryLeaseTable, MemoryReferenceSource, MemoryStream};
use proto::{Clock, WorkerId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::cluster::LocalCluster;
use testkit::local_stack::{emulator, Service};
use testkit::postgres_server::{postgres, PgHandle};

mod processes;
use processes::wait_count;
use testkit::tickets::{self, TicketWorld};
use worker::reference_set::ReferenceSet;
use worker::{NodeConfig, NodePorts, Pipeline, PipelineConfig};

mod known_tokens;

const KEY: &str = known_tokens::SCENARIOS_KEY;

struct Setup {
    _pg: PgHandle,
    warehouse: Arc<PostgresWarehouse>,
    stream: MemoryStream,
    cluster: LocalCluster,
}

/// A cluster writing into a database of its own (`database`) on the shared test server.
async fn setup(pipeline: Pipeline, shards: u32, database: &str) -> Setup {
    let pg = postgres().expect("a postgresql for the tests");
    let admin = PostgresWarehouse::connect(&pg.url).await.expect("connect");
    admin.query_text(&format!("DROP DATABASE IF EXISTS {database}")).await.unwrap();
    admin.query_text(&format!("CREATE DATABASE {database}")).await.unwrap();
    let url = format!("{} dbname={database}", pg.url.replace("dbname=postgres", ""));
    let warehouse = Arc::new(PostgresWarehouse::connect(&url).await.expect("connect"));
    let stream = MemoryStream::new(shards, Clock::system());
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: Arc::new(stream.clone()),
        warehouse: warehouse.clone(),
        mapper: Arc::new(pipeline),
    };
    let mut template = NodeConfig::new(WorkerId::new("t"), ClusterSettings::with_failover(Duration::from_secs(3)));
    template.consumer.idle_read_interval = Duration::from_millis(100);
    template.sink.batch_latency = Duration::from_millis(200);
    let mut cluster = LocalCluster::new(ports, template);
    for _ in 0..3 {
        cluster.start_node(None).await.unwrap();
    }
    Setup { _pg: pg, warehouse, stream, cluster }
}

fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_activity_lands_denormalized_masked_and_tokenized() {
    std::env::set_var(tickets::KEY_ENV, KEY);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut world = TicketWorld::new(&mut rng, 12, 25, 40, 1_700_000_000_000);
    let refs = MemoryReferenceSource::new();
    world.load_references(&refs);
    let config = PipelineConfig::from_toml(tickets::PIPELINE).unwrap();
    let set = Arc::new(ReferenceSet::start(Arc::new(refs), &config.reference_specs()).await.unwrap());
    let mut s = setup(Pipeline::new(&config, set).unwrap(), 4, "tickets").await;

    let mut written = Vec::new();
    for (key, data) in world.full_load(&mut rng) {
        s.stream.put(&key, data.clone());
        written.push((key, data));
    }
    for i in 0..1_500 {
        let (key, data) = world.change(&mut rng);
        s.stream.put(&key, data.clone());
        written.push((key, data));
        if i % 10 == 0 {
            // A producer retry: an earlier record written again (older commit, fenced out).
            let (k, d) = written[rng.gen_range(0..written.len())].clone();
            s.stream.put(&k, d);
        }
        if i == 500 {
            let victim = s.cluster.live()[0].clone();
            s.cluster.kill(&victim).await;
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let live: BTreeMap<u64, &tickets::Activity> =
        world.activity.iter().filter_map(|(id, a)| a.as_ref().map(|a| (*id, a))).collect();
    let table = format!("\"{}\"", tickets::TARGET);
    // PostgreSQL writes a timestamp column the way the generator wrote its text.
    let iso = |column: &str| format!("to_char({column}, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')");
    let check = || async {
        let reasons = s.warehouse.query_text("SELECT reason FROM tributary_dead_letters LIMIT 3").await.unwrap();
        if !reasons.is_empty() {
            return Err(format!("dead letters: {reasons:?}"));
        }
        let rows = s
            .warehouse
            .query_text(&format!(
                "SELECT ticket_id, purchased_by, event_id, sport_type, location, seat_level, ticket_price, customer_name, email, phone, \
                 {}, {}, {}, seat_location FROM {table}",
                iso("created_at"),
                iso("updated_at"),
                iso("start_date")
            ))
            .await
            .unwrap();
        let mut seen = BTreeMap::new();
        for r in &rows {
            let r: Vec<String> = r.iter().map(|c| c.clone().unwrap_or_default()).collect();
            let id: u64 = r[0].parse().unwrap();
            if seen.insert(id, ()).is_some() {
                return Err(format!("ticket {id} appears twice"));
            }
            let Some(a) = live.get(&id) else {
                return Err(format!("ticket {id} is in the warehouse but was deleted or never sold"));
            };
            let ticket = &world.tickets[&id];
            let event = &world.events[&ticket["event_id"].as_u64().unwrap()];
            let customer = &world.customers[&a.purchased_by];
            let expected = [
                a.purchased_by.to_string(),
                text(&ticket["event_id"]),
                text(&event["sport_type"]),
                text(&event["location"]),
                text(&ticket["seat_level"]),
                ticket["ticket_price"].as_f64().unwrap().to_string(),
                text(&customer["name"]),
                known_tokens::token(known_tokens::SCENARIOS, customer["email"].as_str().unwrap()).to_owned(),
                worker::pipeline::transform::mask(customer["phone"].as_str().unwrap()),
                a.created_at.clone(),
                a.updated_at.clone(),
                text(&event["start_date"]),
                text(&ticket["seat_location"]),
            ];
            if r[1..] != expected {
                return Err(format!("ticket {id}: warehouse {:?}, expected {expected:?}", &r[1..]));
            }
        }
        if seen.len() != live.len() {
            return Err(format!("{} rows for {} live tickets", seen.len(), live.len()));
        }
        Ok(())
    };
    let mut outcome = Err(String::new());
    for _ in 0..150 {
        outcome = check().await;
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.cluster.stop_all().await;
    outcome.unwrap();
    // Masking leaves only separators: no digit of a phone number reaches the warehouse.
    let phones = s.warehouse.query_text(&format!("SELECT count(*) FROM {table} WHERE phone ~ '[0-9]'")).await.unwrap();
    assert_eq!(phones[0][0].as_deref(), Some("0"));
    let dead = s.warehouse.query_text("SELECT count(*) FROM tributary_dead_letters").await.unwrap();
    assert_eq!(dead[0][0].as_deref(), Some("0"));
}

fn put_json(stream: &MemoryStream, key: &str, doc: Json) {
    stream.put(key, doc.to_string().into_bytes());
}

/// Reference tables in DynamoDB (moto): one followed through its DynamoDB Stream, one reloaded
/// every `refresh_interval`. A country renamed while the cluster runs reaches the rows
/// processed after the change, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_changes_are_followed_without_restart() {
    let dynamo = emulator(Service::Dynamo).expect("moto (deploy/local/stack.sh install)");
    let client = aws_sdk_dynamodb::Client::new(&dynamo.sdk_config());
    let tag = std::process::id();
    let (feed_table, scan_table) = (format!("country-feed-{tag}"), format!("country-scan-{tag}"));
    let country = |code: &str, name: &str| serde_json::json!({"code": code, "name": name});
    for (table, stream) in [(&feed_table, true), (&scan_table, false)] {
        tributary::gen::create_reference_table(&client, table, "code", ScalarAttributeType::S, stream).await.unwrap();
        for (code, name) in [("FR", "France"), ("DE", "Germany"), ("JP", "Japan")] {
            tributary::gen::put_reference_item(&client, table, &country(code, name)).await.unwrap();
        }
    }
    // The followed table's refresh_interval is an hour: only its stream can bring the change.
    let config = PipelineConfig::from_toml(&format!(
        r#"
        [[reference]]
        name = "country_feed"
        table = "{feed_table}"
        key = "code"
        poll_interval = "200ms"
        refresh_interval = "1h"
        [[reference]]
        name = "country_scan"
        table = "{scan_table}"
        key = "code"
        refresh_interval = "1s"
        [[table]]
        name = "visits"
        key = ["id"]
        join = [
            {{ reference = "country_feed", as = "f", key = "country", on_missing = "null" }},
            {{ reference = "country_scan", as = "s", key = "country", on_missing = "null" }},
        ]
        column = [
            {{ name = "id", from = "id", type = "bigint" }},
            {{ name = "country", from = "country", type = "text" }},
            {{ name = "name_by_feed", from = "f.name", type = "text" }},
            {{ name = "name_by_refresh", from = "s.name", type = "text" }},
        ]
        "#
    ))
    .unwrap();
    let source = Arc::new(DynamoReferenceSource::new(&dynamo.sdk_config()));
    let set = Arc::new(ReferenceSet::start(source, &config.reference_specs()).await.unwrap());
    let mut s = setup(Pipeline::new(&config, set.clone()).unwrap(), 2, "reference_changes").await;
    let codes = ["FR", "DE", "JP"];
    for id in 0..300 {
        put_json(&s.stream, &id.to_string(), serde_json::json!({"id": id, "country": codes[id % 3]}));
    }
    let count = "SELECT count(*) FROM visits";
    assert_eq!(wait_count(&s.warehouse, count, 300).await, 300);

    // The source renames a country while the cluster runs; each cache takes it up (bounded wait).
    let renamed_at = std::time::Instant::now();
    for table in [&feed_table, &scan_table] {
        tributary::gen::put_reference_item(&client, table, &country("FR", "République française")).await.unwrap();
    }
    for name in ["country_feed", "country_scan"] {
        let cache = set.get(name).unwrap();
        for _ in 0..300 {
            if cache.get_attr("FR", "name").unwrap() == "République française" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(cache.get_attr("FR", "name").unwrap(), "République française", "{name} followed the change");
        eprintln!("{name}: the change was in the cache {:.2}s after the write", renamed_at.elapsed().as_secs_f64());
    }
    for id in 300..600 {
        put_json(&s.stream, &id.to_string(), serde_json::json!({"id": id, "country": codes[id % 3]}));
    }
    assert_eq!(wait_count(&s.warehouse, count, 600).await, 600);
    s.cluster.stop_all().await;

    let names = |range: &str| {
        format!("SELECT DISTINCT name_by_feed, name_by_refresh FROM visits WHERE country = 'FR' AND id {range}")
    };
    let before = s.warehouse.query_text(&names("< 300")).await.unwrap();
    let after = s.warehouse.query_text(&names(">= 300")).await.unwrap();
    assert_eq!(
        before,
        vec![vec![Some("France".to_owned()), Some("France".to_owned())]],
        "rows joined before keep their value"
    );
    let renamed = Some("République française".to_owned());
    assert_eq!(after, vec![vec![renamed.clone(), renamed]], "rows processed after the change join the new value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_landing_is_replay_safe_and_bad_records_become_dead_letters() {
    let config = PipelineConfig::from_toml(&format!("max_record_bytes = 4096\n{}", testkit::ev::PIPELINE)).unwrap();
    let mut s = setup(Pipeline::without_references(&config).unwrap(), 4, "raw_landing").await;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut generator = testkit::ev::Generator::new(1_700_000_000_000);
    let (mut good, mut malformed) = (0usize, 0usize);
    let mut kwh = BTreeMap::new();
    // (partition key, payload) of every user record written, what the raw table must hold.
    let mut written = std::collections::BTreeSet::new();
    for i in 0..1_200 {
        let (key, payload, session) = generator.next(&mut rng);
        // Every tenth record goes with the next two in one KPL aggregate.
        let sessions = if i % 10 == 0 {
            let (_, p2, s2) = generator.next(&mut rng);
            let (_, p3, s3) = generator.next(&mut rng);
            for (k, p) in [(key.as_str(), &payload), ("k2", &p2), ("k3", &p3)] {
                written.insert((k.to_owned(), String::from_utf8(p.clone()).unwrap()));
            }
            let items: Vec<(&str, &[u8])> = vec![(key.as_str(), &payload), ("k2", &p2), ("k3", &p3)];
            s.stream.put(&key, worker::kpl::aggregate(&items));
            vec![session, s2, s3]
        } else {
            written.insert((key.clone(), String::from_utf8(payload.clone()).unwrap()));
            s.stream.put(&key, payload);
            vec![session]
        };
        for x in sessions {
            match x {
                Some(x) => {
                    kwh.insert(x.id.clone(), x.kwh_delivered);
                    good += 1;
                }
                None => malformed += 1,
            }
        }
        if i == 400 {
            let victim = s.cluster.live()[1].clone();
            s.cluster.kill(&victim).await;
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // One of each kind of bad input.
    let truncated = worker::kpl::aggregate(&[("a", b"{\"_id\":\"x\"}"), ("b", b"{}")]);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("oversized", format!("{{\"_id\":\"big\",\"pad\":\"{}\"}}", "x".repeat(5000)).into_bytes()),
        ("not-utf-8", vec![0xff, 0xfe, 0x00, 0x7b]),
        ("wrong-type", br#"{"_id":"w","kWhDelivered":"lots"}"#.to_vec()),
        ("missing-key", br#"{"kWhDelivered":1.5}"#.to_vec()),
        ("truncated-kpl", truncated[..truncated.len() - 5].to_vec()),
    ];
    for (key, data) in &bad {
        s.stream.put(key, data.clone());
    }
    let raw = format!("SELECT count(*) FROM \"{}\"", testkit::ev::RAW_TABLE);
    assert_eq!(wait_count(&s.warehouse, &raw, good).await, good);
    let dead = bad.len() + malformed;
    assert_eq!(wait_count(&s.warehouse, "SELECT count(*) FROM tributary_dead_letters", dead).await, dead);
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.cluster.stop_all().await;

    // Each record once, by (shard, sequence, sub-sequence), even across the kill's replays.
    let dupes = s
        .warehouse
        .query_text(&format!(
            "SELECT count(*) FROM (SELECT shard_id, sequence_number, sub_sequence FROM \"{}\" \
             GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
            testkit::ev::RAW_TABLE
        ))
        .await
        .unwrap();
    assert_eq!(dupes[0][0].as_deref(), Some("0"));
    let landed = s.warehouse.query_text(&raw).await.unwrap();
    assert_eq!(landed[0][0].as_deref(), Some(good.to_string().as_str()), "nothing beyond the records written");
    let aggregated = s
        .warehouse
        .query_text(&format!("SELECT count(*) FROM \"{}\" WHERE sub_sequence > 0", testkit::ev::RAW_TABLE))
        .await
        .unwrap();
    assert!(aggregated[0][0].as_deref().unwrap().parse::<usize>().unwrap() >= 2 * 100, "aggregates were split");
    // Each raw row is a record as written: its partition key and payload, with its arrival time.
    let raw_rows = s
        .warehouse
        .query_text(&format!(
            "SELECT partition_key, payload, approximate_arrival_timestamp FROM \"{}\"",
            testkit::ev::RAW_TABLE
        ))
        .await
        .unwrap();
    for r in &raw_rows {
        let (key, payload) = (r[0].clone().unwrap(), r[1].clone().unwrap());
        assert!(written.contains(&(key.clone(), payload.clone())), "raw row not written as such: {key} {payload}");
        assert!(r[2].is_some(), "{key}: no arrival time");
    }
    // Typed columns follow the payload; the latest state per session is kept.
    let sessions = s.warehouse.query_text("SELECT \"_id\", \"kWhDelivered\" FROM ev_charging_sessions").await.unwrap();
    assert_eq!(sessions.len(), kwh.len());
    for r in sessions {
        let id = r[0].clone().unwrap();
        assert_eq!(r[1].as_deref().unwrap().parse::<f64>().unwrap(), kwh[&id], "session {id}");
    }
    // Every bad input is in the dead letters with its reason (the generator's own malformed
    // record too); the shard kept moving past them.
    let reasons = s.warehouse.query_text("SELECT partition_key, reason FROM tributary_dead_letters").await.unwrap();
    let by_key: BTreeMap<String, String> =
        reasons.into_iter().map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap())).collect();
    for (key, expected) in [
        ("oversized", "exceeds max_record_bytes 4096"),
        ("not-utf-8", "payload is not utf-8"),
        ("wrong-type", "column \"kWhDelivered\": expected double, found a non-numeric string"),
        ("missing-key", "key column \"_id\" is missing"),
        ("truncated-kpl", "kpl aggregate is truncated or corrupt"),
    ] {
        let reason = by_key.get(key).unwrap_or_else(|| panic!("no dead letter for {key}: {by_key:?}"));
        assert!(reason.contains(expected), "{key}: {reason}");
    }
}

/// What no warehouse column holds (text over 65,535 bytes, a NUL character) and dead letters too
/// big for one row, at the default `max_record_bytes`: each such record is dead-lettered whole,
/// PostgreSQL never refuses a batch for it, and the records behind it still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_no_column_holds_are_dead_lettered_whole_and_the_shard_moves_on() {
    let mut s = setup(testkit::ev::mapper(), 1, "warehouse_limits").await;
    let big_valid = format!(r#"{{"_id":"big","kWhDelivered":1.5,"note":"{}"}}"#, "n".repeat(100_000));
    let big_broken = format!(r#"{{"_id":"broken","note":"{}"#, "b".repeat(150_000));
    let nul = r#"{"_id":"nul","stationID":"a\u0000b","kWhDelivered":2.5}"#.to_owned();
    let bad = [("big-valid", big_valid), ("big-broken", big_broken), ("nul", nul)];
    for (key, data) in &bad {
        s.stream.put(key, data.clone().into_bytes());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut generator = testkit::ev::Generator::new(1_700_000_000_000);
    let (mut good, mut malformed) = (0, 0);
    for _ in 0..100 {
        let (key, payload, session) = generator.next(&mut rng);
        s.stream.put(&key, payload);
        match session {
            Some(_) => good += 1,
            None => malformed += 1,
        }
    }
    let raw = format!("SELECT count(*) FROM \"{}\"", testkit::ev::RAW_TABLE);
    assert_eq!(wait_count(&s.warehouse, &raw, good).await, good, "the records behind them landed");
    let dead = bad.len() + malformed;
    let records = "SELECT count(*) FROM tributary_dead_letters WHERE payload_part = 0";
    assert_eq!(wait_count(&s.warehouse, records, dead).await, dead);
    s.cluster.stop_all().await;

    let rows = s
        .warehouse
        .query_text(
            "SELECT partition_key, min(reason), count(*), min(payload_parts), \
             string_agg(payload_base64, '' ORDER BY payload_part) \
             FROM tributary_dead_letters GROUP BY shard_id, sequence_number, sub_sequence, partition_key",
        )
        .await
        .unwrap();
    let by_key: BTreeMap<String, Vec<String>> = rows
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1..].iter().map(|v| v.clone().unwrap()).collect()))
        .collect();
    let too_long = format!("column \"payload\": text of {} bytes is longer than a column's 65535", bad[0].1.len());
    for ((key, data), (reason, parts)) in bad.iter().zip([
        (too_long.as_str(), 3),
        ("payload is not json", 4),
        ("column \"stationID\": text holds a NUL character", 1),
    ]) {
        let got = by_key.get(*key).unwrap_or_else(|| panic!("no dead letter for {key}: {:?}", by_key.keys()));
        assert!(got[0].contains(reason), "{key}: {}", got[0]);
        assert_eq!(
            (got[1].as_str(), got[2].as_str()),
            (parts.to_string().as_str(), parts.to_string().as_str()),
            "{key}"
        );
        let payload = base64::engine::general_purpose::STANDARD.decode(&got[3]).unwrap();
        assert!(payload == data.as_bytes(), "{key}: the payload comes back whole from its parts");
    }
}
