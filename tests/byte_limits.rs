//! The warehouse limits are bytes, whatever the characters, end to end: a node reads records of
//! multi-byte text from a stream and commits them into a real PostgreSQL (started on 127.0.0.1 by
//! the test harness). PostgreSQL's `VARCHAR(65535)` counts characters and would take more; the
//! pipeline holds every warehouse to Redshift's 65,535 bytes.

use adapters::postgres::PostgresWarehouse;
use base64::Engine;
use coordinator::ClusterSettings;
use proto::memory::{MemoryLeaseTable, MemoryStream};
use proto::{Clock, WorkerId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::cluster::LocalCluster;
use testkit::postgres_server::postgres;
mod processes;
use processes::wait_count;
use worker::{NodeConfig, NodePorts, Pipeline, PipelineConfig};

const PIPELINE: &str = r#"
[[table]]
name = "notes"
key = ["id"]
column = [
    { name = "id", from = "id", type = "text" },
    { name = "note", from = "note", type = "text" },
]
"#;

/// Text of exactly `bytes` bytes: ASCII `a`s, then as many `c` as fit.
fn text_of(bytes: usize, c: char) -> String {
    let n = bytes / c.len_utf8();
    let text = format!("{}{}", "a".repeat(bytes - n * c.len_utf8()), c.to_string().repeat(n));
    assert_eq!(text.len(), bytes);
    text
}

/// For characters of 2, 3 and 4 bytes: a note of exactly 65,535 bytes lands whole; one byte
/// more, and fewer than 65,535 characters taking more bytes, are dead-lettered with the byte
/// count (PostgreSQL alone would have taken both), their payloads whole from their parts; the
/// shard moves on past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multibyte_text_lands_up_to_65535_bytes_and_no_further() {
    let pg = postgres().expect("a postgresql for the tests");
    let admin = PostgresWarehouse::connect(&pg.url).await.expect("connect");
    admin.query_text("DROP DATABASE IF EXISTS byte_limits").await.unwrap();
    admin.query_text("CREATE DATABASE byte_limits").await.unwrap();
    let url = format!("{} dbname=byte_limits", pg.url.replace("dbname=postgres", ""));
    let warehouse = Arc::new(PostgresWarehouse::connect(&url).await.expect("connect"));
    let stream = MemoryStream::new(1, Clock::system());
    let pipeline = Pipeline::without_references(&PipelineConfig::from_toml(PIPELINE).unwrap()).unwrap();
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
    cluster.start_node(None).await.unwrap();

    let (mut lands, mut dead) = (BTreeMap::new(), BTreeMap::new());
    for c in ['é', '€', '𝄞'] {
        let at = text_of(65_535, c);
        let few = c.to_string().repeat(65_535 / c.len_utf8() + 1);
        assert!(few.chars().count() < 65_535 && few.len() > 65_535);
        lands.insert(format!("{c} at"), at.clone());
        dead.insert(format!("{c} over"), format!("{at}a"));
        dead.insert(format!("{c} few"), few);
    }
    let mut payloads = BTreeMap::new();
    for (id, note) in lands.iter().chain(&dead) {
        let payload = serde_json::json!({"id": id, "note": note}).to_string();
        stream.put(id, payload.clone().into_bytes());
        payloads.insert(id.clone(), payload);
    }
    stream.put("after", br#"{"id": "after", "note": "the shard moved on"}"#.to_vec());

    let landed = "SELECT count(*) FROM notes";
    let n = wait_count(&warehouse, landed, lands.len() + 1).await;
    assert_eq!(n, lands.len() + 1, "only the notes of at most 65,535 bytes land, then the one after them");
    let records = "SELECT count(*) FROM tributary_dead_letters WHERE payload_part = 0";
    assert_eq!(wait_count(&warehouse, records, dead.len()).await, dead.len(), "the notes over 65,535 bytes");
    cluster.stop_all().await;

    let rows =
        warehouse.query_text("SELECT id, note, octet_length(note) FROM notes WHERE id <> 'after'").await.unwrap();
    let held: BTreeMap<String, (String, String)> =
        rows.into_iter().map(|r| (r[0].clone().unwrap(), (r[1].clone().unwrap(), r[2].clone().unwrap()))).collect();
    assert_eq!(held.len(), lands.len(), "{:?}", held.keys());
    for (id, note) in &lands {
        let (got, bytes) = &held[id];
        assert!(got == note, "{id}: the note comes back whole");
        assert_eq!(bytes, "65535", "{id}");
    }
    let rows = warehouse
        .query_text(
            "SELECT partition_key, min(reason), string_agg(payload_base64, '' ORDER BY payload_part) \
             FROM tributary_dead_letters GROUP BY shard_id, sequence_number, sub_sequence, partition_key",
        )
        .await
        .unwrap();
    let letters: BTreeMap<String, (String, String)> =
        rows.into_iter().map(|r| (r[0].clone().unwrap(), (r[1].clone().unwrap(), r[2].clone().unwrap()))).collect();
    assert_eq!(letters.len(), dead.len(), "{:?}", letters.keys());
    for (id, note) in &dead {
        let (reason, base64) = &letters[id];
        let want = format!("column \"note\": text of {} bytes is longer than a column's 65535", note.len());
        assert!(reason.contains(&want), "{id}: {reason}");
        let payload = base64::engine::general_purpose::STANDARD.decode(base64).unwrap();
        assert!(payload == payloads[id].as_bytes(), "{id}: the payload comes back whole from its parts");
    }
}
