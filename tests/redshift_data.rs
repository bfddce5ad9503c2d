//! The Redshift Data API sink against the test endpoint (`tests/redshift_data_endpoint`), which
//! runs the statements on a real PostgreSQL the way the API reference describes: asynchronous
//! statuses, one transaction per batch, the 100 KB statement limit, throttling and
//! ActiveStatementsExceeded. (The conformance property itself is in `warehouse_conformance.rs`.)

use adapters::postgres::PostgresWarehouse;
use adapters::redshift_data::{Load, RedshiftDataConfig, RedshiftDataWarehouse, Target};
use proto::{Batch, Column, Row, RowOp, SqlType, TableSchema, Value, Version, Warehouse, WarehouseError};
use redshift_data_endpoint::Endpoint;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use testkit::local_stack::sdk_config_for;
use testkit::postgres_server::postgres;

mod redshift_data_endpoint;

fn schema(name: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: name.into(),
        columns: vec![
            Column::new("id", SqlType::Text),
            Column::new("note", SqlType::Text),
            Column::new("n", SqlType::BigInt),
        ],
        key: vec![0],
        version_column: "_version".into(),
    })
}

/// A table of an `id` key and one more column, and its rows at version 1.
fn id_and(name: &str, column: Column) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: name.into(),
        columns: vec![Column::new("id", SqlType::Text), column],
        key: vec![0],
        version_column: "_version".into(),
    })
}

fn id_and_row(id: String, value: Value) -> Row {
    Row { op: RowOp::Upsert, version: Version::from_text("00000001"), values: vec![Value::Text(id), value] }
}

fn row(id: usize, version: u64, note: &str) -> Row {
    Row {
        op: RowOp::Upsert,
        version: Version::from_text(format!("{version:08}")),
        values: vec![Value::Text(format!("k{id:05}")), Value::Text(note.to_owned()), Value::Int(id as i64)],
    }
}

async fn setup(
    database: &str,
) -> (testkit::postgres_server::PgHandle, Endpoint, RedshiftDataWarehouse, PostgresWarehouse) {
    setup_with_timeout(database, Duration::from_secs(60)).await
}

async fn setup_with_timeout(
    database: &str,
    timeout: Duration,
) -> (testkit::postgres_server::PgHandle, Endpoint, RedshiftDataWarehouse, PostgresWarehouse) {
    let (pg, url) = fresh_database(database).await;
    let endpoint = Endpoint::start(&url).await;
    let warehouse = client(&endpoint, timeout);
    let check = PostgresWarehouse::connect(&url).await.unwrap();
    (pg, endpoint, warehouse, check)
}

/// The test server with a fresh database `name`; its connection string.
async fn fresh_database(name: &str) -> (testkit::postgres_server::PgHandle, String) {
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    admin.query_text(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
    admin.query_text(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = format!("{} dbname={name}", pg.url.replace("dbname=postgres", ""));
    (pg, url)
}

/// The sink's settings: a workgroup, locking tables (the default), loading by `load`.
fn config(timeout: Duration, load: Load) -> RedshiftDataConfig {
    RedshiftDataConfig {
        target: Target::Workgroup { name: "analytics".into() },
        database: "dev".into(),
        secret_arn: Some("arn:aws:secretsmanager:us-east-1:000000000000:secret:etl".into()),
        db_user: None,
        timeout,
        lock_tables: true,
        load,
    }
}

/// A Data API sink loading by statements, talking to `endpoint`.
fn client(endpoint: &Endpoint, timeout: Duration) -> RedshiftDataWarehouse {
    RedshiftDataWarehouse::new(&sdk_config_for(&endpoint.url), config(timeout, Load::Statements), "test-node")
}

async fn count(w: &PostgresWarehouse, sql: &str) -> String {
    w.query_text(sql).await.unwrap()[0][0].clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_split_under_the_statement_limits() {
    let (_pg, endpoint, w, check) = setup("rsd_large").await;
    let table = schema("events");
    w.ensure_table(&table).await.unwrap();
    // 3,000 rows of ~1.3 KB: ~4 MB of literals, more than 40 statements of 100 KB (the endpoint
    // refuses a longer statement or a longer batch).
    let note = "x".repeat(1300);
    let rows: Vec<Row> = (0..3000).map(|i| row(i, 1, &note)).collect();
    let before = endpoint.calls("BatchExecuteStatement");
    let stats = w.commit(&Batch { table: table.clone(), rows }).await.unwrap();
    assert_eq!(stats.upserted, 3000);
    assert_eq!(count(&check, "SELECT count(*) FROM events").await, "3000");
    assert!(endpoint.calls("BatchExecuteStatement") - before >= 2, "split into several transactions");
    // Backslashes and quotes arrive intact.
    let tricky = "ends in \\', quote; DROP TABLE events; --\\";
    w.commit(&Batch { table: table.clone(), rows: vec![row(7, 2, tricky)] }).await.unwrap();
    assert_eq!(count(&check, "SELECT note FROM events WHERE id = 'k00007'").await, tricky);
    assert_eq!(count(&check, "SELECT count(*) FROM events").await, "3000");
}

/// A batch split over several transactions still commits what one transaction would (and what
/// every other warehouse commits): of two changes of one key and version, the later in the batch,
/// even when they fall in different parts. Split naively, the later part's change would be
/// fenced by the earlier part's, already committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_batch_keeps_the_later_change_of_an_equal_version() {
    let (_pg, endpoint, w, check) = setup("rsd_split_ties").await;
    let table = schema("events");
    w.ensure_table(&table).await.unwrap();
    // As in the test above: ~4 MB of literals, more than one call's 40 statements.
    let note = "x".repeat(1300);
    let mut rows: Vec<Row> = (0..3000).map(|i| row(i, 1, &note)).collect();
    rows.push(row(0, 1, "later"));
    rows.push(Row { op: RowOp::Delete, ..row(1, 1, "") });
    let before = endpoint.calls("BatchExecuteStatement");
    w.commit(&Batch { table: table.clone(), rows }).await.unwrap();
    assert!(endpoint.calls("BatchExecuteStatement") - before >= 2, "split into several transactions");
    assert_eq!(count(&check, "SELECT left(note, 8) FROM events WHERE id = 'k00000'").await, "later");
    assert_eq!(count(&check, "SELECT count(*) FROM events WHERE id = 'k00001'").await, "0", "deleted");
    assert_eq!(count(&check, "SELECT count(*) FROM events").await, "2999");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_throttled_calls_are_retryable_and_polling_waits_for_the_end() {
    let (_pg, endpoint, w, check) = setup("rsd_busy").await;
    let table = schema("events");
    w.ensure_table(&table).await.unwrap();
    let batch = Batch { table: table.clone(), rows: (0..10).map(|i| row(i, 1, "a")).collect() };
    endpoint.faults.busy_next.store(1, Ordering::SeqCst);
    let e = w.commit(&batch).await.unwrap_err();
    assert!(matches!(e, WarehouseError::Unavailable(_)) && e.is_retryable(), "{e:?}");
    endpoint.faults.throttle_next.store(1, Ordering::SeqCst);
    let e = w.commit(&batch).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    endpoint.faults.delay_per_statement_ms.store(40, Ordering::SeqCst);
    let before = endpoint.calls("DescribeStatement");
    w.commit(&batch).await.unwrap();
    assert!(endpoint.calls("DescribeStatement") - before >= 3, "polled until finished");
    assert_eq!(count(&check, "SELECT count(*) FROM events").await, "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_rolls_the_whole_batch_back() {
    let (_pg, endpoint, w, check) = setup("rsd_fail").await;
    let table = schema("events");
    w.ensure_table(&table).await.unwrap();
    w.commit(&Batch { table: table.clone(), rows: (0..5).map(|i| row(i, 1, "first")).collect() }).await.unwrap();
    // Fail the last step (dropping the stage): everything before it must be rolled back.
    *endpoint.faults.fail_marker.lock().unwrap() = Some("DROP TABLE".into());
    let e = w
        .commit(&Batch { table: table.clone(), rows: (0..8).map(|i| row(i, 2, "second")).collect() })
        .await
        .unwrap_err();
    assert!(matches!(e, WarehouseError::Rejected(ref m) if m.contains("injected failure")), "{e:?}");
    assert_eq!(count(&check, "SELECT count(*) FROM events").await, "5");
    assert_eq!(count(&check, "SELECT count(*) FROM events WHERE note = 'second'").await, "0");
    *endpoint.faults.fail_marker.lock().unwrap() = None;
    let stats =
        w.commit(&Batch { table: table.clone(), rows: (0..8).map(|i| row(i, 2, "second")).collect() }).await.unwrap();
    assert_eq!(stats.upserted, 8);
    assert_eq!(count(&check, "SELECT count(*) FROM events WHERE note = 'second'").await, "8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_its_timeout_is_cancelled_and_reported_ambiguous() {
    let (_pg, endpoint, w, check) = setup_with_timeout("rsd_timeout", Duration::from_millis(300)).await;
    let table = schema("events");
    w.ensure_table(&table).await.unwrap();
    let batch = Batch { table: table.clone(), rows: (0..4).map(|i| row(i, 1, "slow")).collect() };
    // ~13 statements at 100 ms each: far past the 300 ms timeout.
    endpoint.faults.delay_per_statement_ms.store(100, Ordering::SeqCst);
    let e = w.commit(&batch).await.unwrap_err();
    assert!(matches!(e, WarehouseError::Ambiguous(_)) && e.is_retryable(), "{e:?}");
    assert_eq!(endpoint.calls("CancelStatement"), 1);
    for _ in 0..100 {
        if endpoint.last_status() == Some("ABORTED") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(endpoint.last_status(), Some("ABORTED"), "the batch stopped and rolled back");
    assert_eq!(count(&check, "SELECT count(*) FROM events").await, "0");
    endpoint.faults.delay_per_statement_ms.store(0, Ordering::SeqCst);
    assert_eq!(w.commit(&batch).await.unwrap().upserted, 4, "the retry lands");
    assert_eq!(count(&check, "SELECT count(*) FROM events").await, "4");
}

/// Timestamps far from 1970 (before 1901, after 2038, the ends of years 1 and 9999) land exactly,
/// both as Data API literals and as PostgreSQL bind parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_far_from_the_epoch_land_exactly() {
    let (_pg, _endpoint, w, check) = setup("rsd_time").await;
    let table = id_and("times", Column::new("at", SqlType::Timestamp));
    let cases = [
        (*proto::TIMESTAMP_RANGE.start(), "0001-01-01 00:00:00.000"),
        (-2_500_000_000_000, "1890-10-11 19:33:20.000"),
        (-1_500, "1969-12-31 23:59:58.500"),
        (2_147_483_648_000, "2038-01-19 03:14:08.000"),
        (253_402_214_400_000, "9999-12-31 00:00:00.000"),
        (*proto::TIMESTAMP_RANGE.end(), "9999-12-31 23:59:59.999"),
    ];
    let rows = |prefix: &str| -> Vec<Row> {
        cases.iter().enumerate().map(|(i, (ms, _))| id_and_row(format!("{prefix}{i}"), Value::Timestamp(*ms))).collect()
    };
    w.ensure_table(&table).await.unwrap();
    w.commit(&Batch { table: table.clone(), rows: rows("literal-") }).await.unwrap();
    // The PostgreSQL sink checks its table first (and adds the unique key index it merges by).
    check.ensure_table(&table).await.unwrap();
    check.commit(&Batch { table: table.clone(), rows: rows("bound-") }).await.unwrap();
    for prefix in ["literal-", "bound-"] {
        for (i, (_, text)) in cases.iter().enumerate() {
            let sql = format!("SELECT to_char(at, 'YYYY-MM-DD HH24:MI:SS.MS') FROM times WHERE id = '{prefix}{i}'");
            assert_eq!(count(&check, &sql).await, *text, "{prefix}{i}");
        }
    }
}

/// Doubles at the edges (subnormal, largest, tiny, huge, negative zero) read back bit for bit
/// from the Data API's literals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubles_at_the_edges_land_exactly() {
    let (_pg, _endpoint, w, check) = setup("rsd_float").await;
    let table = id_and("numbers", Column::new("x", SqlType::Double));
    let cases = [5e-324, 1e-40, 0.1, -0.0, 1e16, 123_456_789.123_456_7, f64::MAX, -f64::MAX];
    let rows: Vec<Row> = cases.iter().enumerate().map(|(i, x)| id_and_row(format!("n{i}"), Value::Float(*x))).collect();
    w.ensure_table(&table).await.unwrap();
    w.commit(&Batch { table, rows }).await.unwrap();
    for (i, x) in cases.iter().enumerate() {
        let text = count(&check, &format!("SELECT x::text FROM numbers WHERE id = 'n{i}'")).await;
        let back: f64 = text.replace("Infinity", "inf").parse().unwrap();
        assert_eq!(back.to_bits(), x.to_bits(), "{x:e} came back as {text}");
    }
}

/// A table that existed without a column the sink writes fails `ensure_table` (the node's
/// start), with Redshift's own message naming the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_table_missing_a_column_fails_at_start() {
    let (_pg, _endpoint, w, check) = setup("rsd_drift").await;
    check.query_text("CREATE TABLE events (\"id\" VARCHAR(256), \"_version\" VARCHAR(256))").await.unwrap();
    let e = w.ensure_table(&schema("events")).await.unwrap_err();
    assert!(
        matches!(e, WarehouseError::Rejected(ref m) if m.contains("lacks a column") && m.contains("\"note\"")),
        "{e:?}"
    );
    check.query_text("ALTER TABLE events ADD COLUMN \"note\" TEXT, ADD COLUMN \"n\" BIGINT").await.unwrap();
    w.ensure_table(&schema("events")).await.unwrap();
}

/// Two nodes committing the same new keys at once through the Data API. On the test endpoint
/// (PostgreSQL, READ COMMITTED) as on Redshift under SNAPSHOT isolation, both would insert each
/// key; with `lock_tables` the commits take turns and every key ends with one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_of_new_keys_leave_one_row_per_key() {
    let (_pg, endpoint, a, check) = setup("rsd_concurrent").await;
    let b = client(&endpoint, Duration::from_secs(60));
    same_new_keys_at_once(&a, &b, &check, 6).await;
}

/// `rounds` times, `a` and `b` commit the same 200 new keys at once (versions 1 and 2): every key
/// ends with one row, the newer version's.
async fn same_new_keys_at_once(
    a: &RedshiftDataWarehouse,
    b: &RedshiftDataWarehouse,
    check: &PostgresWarehouse,
    rounds: u64,
) {
    let table = schema("events");
    a.ensure_table(&table).await.unwrap();
    for round in 0..rounds {
        let batch = |version: u64| Batch {
            table: table.clone(),
            rows: (0..200).map(|i| row(i + 1_000 * round as usize, version, "concurrent")).collect(),
        };
        let (first, second) = (batch(1), batch(2));
        let (x, y) = tokio::join!(a.commit(&first), b.commit(&second));
        x.unwrap();
        y.unwrap();
        let twice =
            count(check, "SELECT count(*) FROM (SELECT id FROM events GROUP BY id HAVING count(*) > 1) d").await;
        assert_eq!(twice, "0", "round {round}: keys held twice");
        let latest = count(check, "SELECT count(*) FROM events WHERE _version = '00000002'").await;
        assert_eq!(latest, (200 * (round + 1)).to_string(), "round {round}: the newer version won");
    }
}

/// The file the COPY path stages (`adapters::copy_csv`) reads back exactly through a CSV `COPY`
/// with its NULL marker (PostgreSQL's CSV reading, as Redshift's, takes quotes doubled and a
/// backslash as an ordinary character): random texts with quotes, commas, newlines, backslashes
/// and empty strings, NULLs, doubles at their edges, booleans and timestamps of years 1–9999.
#[test]
fn the_copy_file_reads_back_exactly() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::io::Read;
    let pg = postgres().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (client, connection) = rt.block_on(tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)).unwrap();
    rt.spawn(connection);
    let table = Arc::new(TableSchema {
        name: "copy_file".into(),
        columns: vec![
            Column::new("t", SqlType::Text),
            Column::new("n", SqlType::BigInt),
            Column::new("x", SqlType::Double),
            Column::new("b", SqlType::Boolean),
            Column::new("at", SqlType::Timestamp),
        ],
        key: vec![0],
        version_column: "_version".into(),
    });
    let sql = adapters::merge_sql::MergeSql::new(&table, adapters::dialect::Dialect::Postgres).unwrap();
    let maybe = |s: BoxedStrategy<Value>| prop_oneof![1 => Just(Value::Null), 4 => s];
    let text = maybe(
        prop_oneof!["[a-z\",\\\\\n\r ]{0,12}", any::<String>().prop_map(|s| s.replace('\0', "")),]
            .prop_filter("the null marker is refused", |s| s != "\\N")
            .prop_map(Value::Text)
            .boxed(),
    );
    let float = maybe(
        prop_oneof![any::<f64>(), Just(-0.0), Just(f64::MIN_POSITIVE / 8.0), Just(f64::MAX)]
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float)
            .boxed(),
    );
    let row = (
        text,
        maybe(any::<i64>().prop_map(Value::Int).boxed()),
        float,
        maybe(any::<bool>().prop_map(Value::Bool).boxed()),
        maybe(proto::TIMESTAMP_RANGE.prop_map(Value::Timestamp).boxed()),
        prop_oneof![Just(RowOp::Upsert), Just(RowOp::Delete)],
    )
        .prop_map(|(t, n, x, b, at, op)| Row {
            op,
            version: Version::from_text("v1"),
            values: vec![t, n, x, b, at],
        });
    let mut runner = TestRunner::new(Config { cases: 64, ..Config::default() });
    runner
        .run(&prop::collection::vec(row, 1..20), |rows| {
            let gz = adapters::copy_csv::stage_csv_gz(&rows).unwrap();
            let mut csv = Vec::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut csv).unwrap();
            let back = rt.block_on(async {
                client.batch_execute(&format!("BEGIN; {}", sql.create_stage)).await.unwrap();
                let copy = sql.copy_stage().replace("(FORMAT binary)", "(FORMAT csv, NULL '\\N')");
                let sink = client.copy_in::<_, bytes::Bytes>(copy.as_str()).await.unwrap();
                futures_util::pin_mut!(sink);
                futures_util::SinkExt::send(&mut sink, bytes::Bytes::from(csv)).await.unwrap();
                sink.finish().await.unwrap();
                let rows = client
                    .query(r#"SELECT "t", "n", "x", "b", "at", "_version", "_op", "_ord" FROM "copy_file__stage" ORDER BY "_ord""#, &[])
                    .await
                    .unwrap();
                client.batch_execute("ROLLBACK").await.unwrap();
                rows
            });
            prop_assert_eq!(back.len(), rows.len());
            for (got, want) in back.iter().zip(&rows) {
                let ms = |t: Option<std::time::SystemTime>| {
                    t.map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
                        Ok(d) => d.as_millis() as i64,
                        Err(e) => -(e.duration().as_millis() as i64),
                    })
                };
                let read = [
                    got.get::<_, Option<String>>(0).map_or(Value::Null, Value::Text),
                    got.get::<_, Option<i64>>(1).map_or(Value::Null, Value::Int),
                    got.get::<_, Option<f64>>(2).map_or(Value::Null, Value::Float),
                    got.get::<_, Option<bool>>(3).map_or(Value::Null, Value::Bool),
                    ms(got.get(4)).map_or(Value::Null, Value::Timestamp),
                ];
                for (r, w) in read.iter().zip(&want.values) {
                    match (r, w) {
                        (Value::Float(a), Value::Float(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                        _ => prop_assert_eq!(r, w),
                    }
                }
                let op = if want.op == RowOp::Delete { "D" } else { "U" };
                prop_assert_eq!((got.get::<_, String>(5), got.get::<_, String>(6)), ("v1".to_owned(), op.to_owned()));
            }
            Ok(())
        })
        .unwrap();
}

/// The COPY path's pieces: moto's S3 (the DynamoDB emulator's server serves S3 too) with a
/// staging bucket, an endpoint that runs COPY from it, and the sink loading by COPY batches of
/// at least `min_rows` rows under `s3://tributary-staging/<prefix>/`.
struct CopySetup {
    _pg: testkit::postgres_server::PgHandle,
    _moto: testkit::local_stack::Emulator,
    endpoint: Endpoint,
    s3: aws_sdk_s3::Client,
    check: PostgresWarehouse,
    moto_url: String,
}

const BUCKET: &str = "tributary-staging";

impl CopySetup {
    async fn start(database: &str) -> Self {
        let (pg, url) = fresh_database(database).await;
        let moto = testkit::local_stack::emulator(testkit::local_stack::Service::Dynamo).unwrap();
        let endpoint = Endpoint::start_with_s3(&url, &moto.endpoint).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk_config_for(&moto.endpoint)).force_path_style(true).build(),
        );
        let _ = s3.create_bucket().bucket(BUCKET).send().await;
        let check = PostgresWarehouse::connect(&url).await.unwrap();
        let moto_url = moto.endpoint.clone();
        CopySetup { _pg: pg, _moto: moto, endpoint, s3, check, moto_url }
    }

    fn sink(&self, prefix: &str, min_rows: usize) -> RedshiftDataWarehouse {
        self.sink_in(BUCKET, prefix, min_rows)
    }

    fn sink_in(&self, bucket: &str, prefix: &str, min_rows: usize) -> RedshiftDataWarehouse {
        let load = Load::Copy {
            staging: adapters::redshift_data::S3Prefix::parse(&format!("s3://{bucket}/{prefix}")).unwrap(),
            role: "arn:aws:iam::000000000000:role/tributary-copy".into(),
            min_rows,
        };
        let config = config(Duration::from_secs(60), load);
        RedshiftDataWarehouse::new(&sdk_config_for(&self.endpoint.url), config, "test-node")
            .with_s3(&sdk_config_for(&self.moto_url), "test-node")
    }

    /// The keys under `prefix`.
    async fn staged(&self, prefix: &str) -> Vec<String> {
        let listed = self.s3.list_objects_v2().bucket(BUCKET).prefix(prefix).send().await.unwrap();
        listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
    }
}

/// A batch at or over `min_rows` goes as one gzip CSV file in S3 and one transaction that COPYs
/// and merges it (one Data API call, whatever its size: 3,000 rows of 1.3 KB, which by statements
/// take several); the file is gone once the commit ended. A smaller batch goes by statements and
/// never touches S3 (its bucket does not even exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_loads_by_one_copy_and_its_file_is_deleted() {
    let setup = CopySetup::start("rsd_copy").await;
    let w = setup.sink("one-copy/", 100);
    let table = schema("events");
    w.ensure_table(&table).await.unwrap();
    let note = "x\"y,z\\\n".repeat(160);
    let rows: Vec<Row> = (0..3000).map(|i| row(i, 1, &note)).collect();
    let before = setup.endpoint.calls("BatchExecuteStatement");
    let stats = w.commit(&Batch { table: table.clone(), rows }).await.unwrap();
    assert_eq!(stats.upserted, 3000);
    assert_eq!(setup.endpoint.calls("BatchExecuteStatement") - before, 1, "one call for the whole batch");
    assert_eq!(count(&setup.check, "SELECT count(*) FROM events").await, "3000");
    assert_eq!(
        count(&setup.check, "SELECT count(*) FROM events WHERE note = (SELECT note FROM events LIMIT 1)").await,
        "3000"
    );
    assert_eq!(count(&setup.check, "SELECT min(length(note)) FROM events").await, note.chars().count().to_string());
    assert_eq!(setup.staged("one-copy/").await, Vec::<String>::new(), "the staged file is deleted");

    let nowhere = setup.sink_in("no-such-bucket", "x/", 100);
    let small = Batch { table: table.clone(), rows: (0..10).map(|i| row(i, 2, "small")).collect() };
    assert_eq!(nowhere.commit(&small).await.unwrap().upserted, 10, "by statements");
    let large = Batch { table: table.clone(), rows: (0..100).map(|i| row(i, 3, "large")).collect() };
    let e = nowhere.commit(&large).await.unwrap_err();
    assert!(matches!(&e, WarehouseError::Rejected(m) if m.contains("NoSuchBucket")), "{e}");
}

/// A node that dies between its upload and its commit leaves a file nobody reads: here one
/// planted under the table's prefix as such a node leaves it (newer versions of the same keys,
/// another node's name), and a commit that fails after its upload (its retry stages a file of
/// its own). The table ends with what the commits that succeeded wrote, once each; no file is
/// left but the orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_upload_and_commit_loses_and_doubles_nothing() {
    let setup = CopySetup::start("rsd_copy_crash").await;
    let w = setup.sink("crash/", 0);
    let table = schema("events");
    w.ensure_table(&table).await.unwrap();
    let orphan_rows: Vec<Row> = (0..50).map(|i| row(i, 9, "orphan")).collect();
    let orphan = "crash/events/other-node-0000000000000-000000000000.csv.gz";
    let body = adapters::copy_csv::stage_csv_gz(&orphan_rows).unwrap();
    setup.s3.put_object().bucket(BUCKET).key(orphan).body(body.into()).send().await.unwrap();

    *setup.endpoint.faults.fail_marker.lock().unwrap() = Some("FROM 's3://".into());
    let batch = Batch { table: table.clone(), rows: (0..50).map(|i| row(i, 1, "first")).collect() };
    assert!(w.commit(&batch).await.is_err(), "the injected failure after the upload");
    assert_eq!(setup.staged("crash/").await, vec![orphan.to_owned()], "the failed attempt's file is deleted");
    *setup.endpoint.faults.fail_marker.lock().unwrap() = None;
    assert_eq!(w.commit(&batch).await.unwrap().upserted, 50);
    let newer = Batch { table: table.clone(), rows: (25..75).map(|i| row(i, 2, "second")).collect() };
    assert_eq!(w.commit(&newer).await.unwrap().upserted, 50);
    assert_eq!(count(&setup.check, "SELECT count(*) FROM events").await, "75");
    assert_eq!(count(&setup.check, "SELECT count(*) FROM events WHERE note = 'orphan'").await, "0");
    assert_eq!(count(&setup.check, "SELECT count(*) FROM events WHERE note = 'first'").await, "25");
    assert_eq!(count(&setup.check, "SELECT count(*) FROM events WHERE note = 'second'").await, "50");
    assert_eq!(setup.staged("crash/").await, vec![orphan.to_owned()]);
}

/// Two sinks loading by COPY at once, the same new keys: one row per key, the newer version's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copy_commits_leave_one_row_per_key() {
    let setup = CopySetup::start("rsd_copy_concurrent").await;
    let (a, b) = (setup.sink("concurrent/", 0), setup.sink("concurrent/", 0));
    same_new_keys_at_once(&a, &b, &setup.check, 4).await;
}

/// The node's warehouse as node.toml sets it (`tributary::run::warehouse`): with `s3_staging`
/// and `copy_role`, a batch of `copy_min_rows` (default 1,000) rows or more loads by COPY from
/// that prefix, a smaller one by statements. S3 and the Data API are each reached at the endpoint
/// the SDK's per-service settings name, as `AWS_ENDPOINT_URL_S3` and
/// `AWS_ENDPOINT_URL_REDSHIFT_DATA` set them (on AWS the bucket goes in the host name; here, at
/// an endpoint of one's own, in the path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_loads_by_copy_as_its_config_says() {
    /// The per-service endpoints, as the SDK's loader reads them from the environment.
    #[derive(Debug)]
    struct Endpoints {
        s3: String,
        redshift_data: String,
    }
    impl aws_types::service_config::LoadServiceConfig for Endpoints {
        fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
            match (key.service_id(), key.env()) {
                ("S3", "AWS_ENDPOINT_URL") => Some(self.s3.clone()),
                ("Redshift Data", "AWS_ENDPOINT_URL") => Some(self.redshift_data.clone()),
                _ => None,
            }
        }
    }
    let setup = CopySetup::start("rsd_config").await;
    let mut without_endpoint = sdk_config_for("http://unused").to_builder();
    without_endpoint.set_endpoint_url(None);
    let sdk = without_endpoint
        .service_config(Endpoints { s3: setup.moto_url.clone(), redshift_data: setup.endpoint.url.clone() })
        .build();
    let node = |bucket: &str| {
        let text = format!(
            "format = \"json\"\n[[table]]\nname = \"events\"\nkey = [\"id\"]\n\
             column = [{{ name = \"id\", from = \"id\", type = \"text\" }}]\n\
             [stream]\nname = \"s\"\n[lease_table]\nname = \"t\"\n\
             [warehouse]\nkind = \"redshift\"\nworkgroup = \"w\"\ndatabase = \"dev\"\nsecret_arn = \"arn:s\"\n\
             s3_staging = \"s3://{bucket}/from-config/\"\ncopy_role = \"default\"\n"
        );
        tributary::run_config::RunConfig::from_toml(&text).unwrap()
    };
    let table = schema("events");
    let batch = |rows: usize, version: u64| Batch {
        table: table.clone(),
        rows: (0..rows).map(|i| row(i, version, "from config")).collect(),
    };

    let (w, _) = tributary::run::warehouse(&node(BUCKET), &sdk).await.unwrap();
    w.ensure_table(&table).await.unwrap();
    let before = setup.endpoint.calls("BatchExecuteStatement");
    assert_eq!(w.commit(&batch(1_000, 1)).await.unwrap().upserted, 1_000);
    assert_eq!(setup.endpoint.calls("BatchExecuteStatement") - before, 1);
    assert_eq!(count(&setup.check, "SELECT count(*) FROM events WHERE note = 'from config'").await, "1000");

    // Against a bucket that does not exist: 999 rows go by statements, 1,000 by COPY (refused).
    let (nowhere, _) = tributary::run::warehouse(&node("no-such-bucket"), &sdk).await.unwrap();
    assert_eq!(nowhere.commit(&batch(999, 2)).await.unwrap().upserted, 999);
    let e = nowhere.commit(&batch(1_000, 3)).await.unwrap_err();
    assert!(matches!(&e, WarehouseError::Rejected(m) if m.contains("NoSuchBucket")), "{e}");
}
