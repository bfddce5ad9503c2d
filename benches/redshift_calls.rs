//! What the Redshift sink sends for 10,000 rows, by each load: Data API calls (the test endpoint
//! counts them), rows per BatchExecuteStatement, statements per call, S3 calls. Redshift itself
//! cannot be reached here, so this is what the adapter sends, not how fast Redshift takes it.
//! Rows are the e2e benchmark's (~300 bytes: a key, a station, a double, a 200-byte note, a
//! bigint), committed in batches of the node's default `batch_rows` (5,000).
//!
//! `cargo bench --bench redshift_calls` (needs `deploy/local/stack.sh install`: moto serves S3).

use adapters::postgres::PostgresWarehouse;
use adapters::redshift_data::{Load, RedshiftDataConfig, RedshiftDataWarehouse, S3Prefix, Target};
use proto::{Batch, Column, Row, RowOp, SqlType, TableSchema, Value, Version, Warehouse};
use std::sync::Arc;
use std::time::Duration;
use testkit::local_stack::{emulator, sdk_config_for, Service};
use testkit::postgres_server::postgres;

#[path = "../tests/redshift_data_endpoint/mod.rs"]
mod redshift_data_endpoint;

const ROWS: usize = 10_000;
const BATCH_ROWS: usize = 5_000;

fn table(name: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: name.into(),
        columns: vec![
            Column::new("id", SqlType::Text),
            Column::new("station", SqlType::Text),
            Column::new("kwh", SqlType::Double),
            Column::new("note", SqlType::Text),
            Column::new("put_us", SqlType::BigInt),
        ],
        key: vec![0],
        version_column: "_version".into(),
    })
}

fn row(i: usize) -> Row {
    Row {
        op: RowOp::Upsert,
        version: Version::from_text(format!("49{i:054}0000000000")),
        values: vec![
            Value::Text(format!("r-{i:010}")),
            Value::Text(format!("2-39-{}", i % 997)),
            Value::Float((i % 60) as f64 + 0.5),
            Value::Text("x".repeat(200)),
            Value::Int(1_764_547_200_000_000 + i as i64),
        ],
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pg = postgres().unwrap();
    let moto = emulator(Service::Dynamo).unwrap();
    let endpoint = redshift_data_endpoint::Endpoint::start_with_s3(&pg.url, &moto.endpoint).await;
    let s3_sdk = sdk_config_for(&moto.endpoint);
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&s3_sdk).force_path_style(true).build());
    let _ = s3.create_bucket().bucket("tributary-bench").send().await;
    let check = PostgresWarehouse::connect(&pg.url).await.unwrap();
    for (name, load) in [
        ("statements", Load::Statements),
        (
            "copy",
            Load::Copy {
                staging: S3Prefix::parse("s3://tributary-bench/loads/").unwrap(),
                role: "default".into(),
                min_rows: 0,
            },
        ),
    ] {
        let config = RedshiftDataConfig {
            target: Target::Workgroup { name: "analytics".into() },
            database: "dev".into(),
            secret_arn: Some("arn:aws:secretsmanager:us-east-1:000000000000:secret:etl".into()),
            db_user: None,
            timeout: Duration::from_secs(120),
            lock_tables: true,
            load,
        };
        let w = RedshiftDataWarehouse::new(&sdk_config_for(&endpoint.url), config, "bench").with_s3(&s3_sdk, "bench");
        let t = table(&format!("calls_{name}"));
        w.ensure_table(&t).await.unwrap();
        let (batches, describes) = (endpoint.calls("BatchExecuteStatement"), endpoint.calls("DescribeStatement"));
        let (sent, sqls) = (endpoint.bytes("BatchExecuteStatement"), endpoint.sqls());
        let rows: Vec<Row> = (0..ROWS).map(row).collect();
        for chunk in rows.chunks(BATCH_ROWS) {
            w.commit(&Batch { table: t.clone(), rows: chunk.to_vec() }).await.unwrap();
        }
        let batches = endpoint.calls("BatchExecuteStatement") - batches;
        let describes = endpoint.calls("DescribeStatement") - describes;
        let (sent, sqls) = (endpoint.bytes("BatchExecuteStatement") - sent, endpoint.sqls() - sqls);
        let held = check.query_text(&format!("SELECT count(*) FROM calls_{name}")).await.unwrap();
        assert_eq!(held[0][0].as_deref(), Some(ROWS.to_string().as_str()), "every row landed");
        let s3_calls = if name == "copy" { 2 * ROWS.div_ceil(BATCH_ROWS) } else { 0 };
        println!(
            "{name}: per {ROWS} rows, {batches} BatchExecuteStatement ({:.0} rows, {:.0} statements, {:.0} KB of \
             request each), {s3_calls} S3 calls, {describes} DescribeStatement polls (as long as the endpoint takes)",
            ROWS as f64 / batches as f64,
            sqls as f64 / batches as f64,
            sent as f64 / batches as f64 / 1024.0
        );
    }
}
