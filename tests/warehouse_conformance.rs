//! The `Warehouse` conformance suite: the same assertions against the in-memory model, SQLite, a
//! real PostgreSQL (started on 127.0.0.1 by the test harness) and the Redshift Data API sink
//! (through the test endpoint that runs its batches on that PostgreSQL). Random batches of upserts and
//! deletes, replayed and reordered, must leave every implementation with, per key, the change of
//! the highest version: present for an upsert, absent for a delete.

use adapters::merge_sql::{create_tables, Dialect, MergeSql};
use adapters::postgres::PostgresWarehouse;
use adapters::postgres_server::postgres;
use adapters::redshift_data::{RedshiftDataConfig, RedshiftDataWarehouse, Target};
use adapters::sqlite::SqliteWarehouse;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proto::memory::MemoryWarehouse;
use proto::{Batch, Column, Row, RowOp, SqlType, TableSchema, Value, Version, Warehouse};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

mod redshift_data_endpoint;

/// key → version of what a warehouse holds.
type Held = BTreeMap<String, String>;

fn schema(name: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: name.into(),
        columns: vec![
            Column::new("id", SqlType::Text),
            Column::new("amount", SqlType::Double),
            Column::new("n", SqlType::BigInt),
            Column::new("ok", SqlType::Boolean),
            Column::new("at", SqlType::Timestamp),
            Column::new("note", SqlType::Text),
        ],
        key: vec![0],
        version_column: "_version".into(),
    })
}

/// A change is identified by (key, version): the same pair always carries the same content.
fn change(k: u8, version: u64) -> Row {
    let seed = u64::from(k) * 31 + version * 7;
    Row {
        op: if seed.is_multiple_of(4) { RowOp::Delete } else { RowOp::Upsert },
        version: Version::from_text(format!("{version:08}")),
        values: vec![
            Value::Text(format!("k{k}")),
            Value::Float(seed as f64 / 8.0),
            Value::Int(seed as i64 - 500),
            Value::Bool(seed.is_multiple_of(2)),
            Value::Timestamp(1_700_000_000_000 + seed as i64),
            if seed.is_multiple_of(3) { Value::Null } else { Value::Text(format!("it's \"{seed}\"; -- ✓")) },
        ],
    }
}

fn oracle(batches: &[Vec<Row>]) -> Held {
    let mut best: BTreeMap<String, &Row> = BTreeMap::new();
    for r in batches.iter().flatten() {
        let Value::Text(k) = &r.values[0] else { unreachable!() };
        if best.get(k).is_none_or(|old| old.version < r.version) {
            best.insert(k.clone(), r);
        }
    }
    best.into_iter().filter(|(_, r)| r.op == RowOp::Upsert).map(|(k, r)| (k, r.version.as_str().to_owned())).collect()
}

fn scenario() -> impl Strategy<Value = (Vec<Vec<Row>>, Vec<Vec<Row>>)> {
    let batch = proptest::collection::vec((0..6u8, 0..20u64).prop_map(|(k, v)| change(k, v)), 1..8);
    (
        proptest::collection::vec(batch, 1..8),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..6),
    )
        .prop_map(|(batches, replays)| {
            let mut sequence = batches.clone();
            for (which, at) in replays {
                let b = sequence[which.index(sequence.len())].clone();
                let at = at.index(sequence.len() + 1);
                sequence.insert(at, b);
            }
            (batches, sequence)
        })
}

/// Runs the suite against one implementation: `make` gives a fresh warehouse and table,
/// `held` reads the table back.
fn conformance<W, M, H>(rt: &tokio::runtime::Runtime, cases: u32, make: M, held: H)
where
    W: Warehouse,
    M: Fn() -> (W, Arc<TableSchema>),
    H: Fn(&W, &TableSchema) -> Held,
{
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    runner
        .run(&scenario(), |(batches, sequence)| {
            let (w, table) = make();
            rt.block_on(async {
                w.ensure_table(&table).await.unwrap();
                w.ensure_table(&table).await.unwrap();
                for rows in &sequence {
                    w.commit(&Batch { table: table.clone(), rows: rows.clone() }).await.unwrap();
                }
            });
            prop_assert_eq!(held(&w, &table), oracle(&batches));
            Ok(())
        })
        .unwrap();
}

static TABLES: AtomicU32 = AtomicU32::new(0);

fn fresh_name() -> String {
    format!("conformance {} \"t\"", TABLES.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn memory_warehouse_conforms() {
    conformance(
        &runtime(),
        128,
        || (MemoryWarehouse::new(), schema(&fresh_name())),
        |w, t| {
            w.rows(&t.name)
                .into_values()
                .map(|r| match &r.values[0] {
                    Value::Text(k) => (k.clone(), r.version.as_str().to_owned()),
                    v => panic!("{v:?}"),
                })
                .collect()
        },
    );
}

#[test]
fn sqlite_warehouse_conforms() {
    conformance(
        &runtime(),
        128,
        || (SqliteWarehouse::in_memory().unwrap(), schema(&fresh_name())),
        |w, t| {
            w.rows(t)
                .unwrap()
                .into_iter()
                .map(|(values, version)| match &values[0] {
                    Value::Text(k) => (k.clone(), version),
                    v => panic!("{v:?}"),
                })
                .collect()
        },
    );
}

#[test]
fn postgres_warehouse_conforms() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let w = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    conformance(
        &rt,
        48,
        || (Shared(w.clone()), schema(&fresh_name())),
        |w, t| {
            let name = adapters::merge_sql::quote_ident(&t.name).unwrap();
            let rows = rt.block_on(w.0.query_text(&format!("SELECT \"id\", \"_version\" FROM {name}"))).unwrap();
            rows.into_iter().map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap())).collect()
        },
    );
}

/// A target table that exists without a column the sink writes (made by hand, or by a version
/// of tributary before the column) fails `ensure_table`, naming the column: the node does not
/// start, rather than having every batch refused.
#[test]
fn an_existing_table_missing_a_column_fails_at_start() {
    let rt = runtime();
    let pg = postgres().expect("a postgresql for the tests");
    let w = rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap();
    let table = schema(&fresh_name());
    let name = adapters::merge_sql::quote_ident(&table.name).unwrap();
    rt.block_on(w.query_text(&format!("CREATE TABLE {name} (\"id\" TEXT, \"amount\" FLOAT, \"_version\" TEXT)")))
        .unwrap();
    let e = rt.block_on(w.ensure_table(&table)).unwrap_err().to_string();
    assert!(e.contains("without column(s) \"n\", \"ok\", \"at\", \"note\""), "{e}");
    // Once the columns are there, it starts.
    rt.block_on(w.query_text(&format!(
        "ALTER TABLE {name} ADD COLUMN \"n\" BIGINT, ADD COLUMN \"ok\" BOOLEAN, \
         ADD COLUMN \"at\" TIMESTAMP, ADD COLUMN \"note\" TEXT"
    )))
    .unwrap();
    rt.block_on(w.ensure_table(&table)).unwrap();

    let dir = std::env::temp_dir().join(format!("tributary-drift-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    rusqlite::Connection::open(&dir).unwrap().execute(&format!("CREATE TABLE {name} (\"id\" TEXT)"), []).unwrap();
    let sqlite = SqliteWarehouse::open(&dir).unwrap();
    let e = rt.block_on(sqlite.ensure_table(&table)).unwrap_err().to_string();
    assert!(e.contains("without column(s) \"amount\""), "{e}");
    let _ = std::fs::remove_file(&dir);
}

/// Two nodes committing the same keys at once (a stale owner replaying after a failover, or one
/// key written from two shards): every key still ends with one row, the highest version's.
#[test]
fn concurrent_postgres_commits_leave_one_row_per_key() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let (a, b) = rt.block_on(async {
        (PostgresWarehouse::connect(&pg.url).await.unwrap(), PostgresWarehouse::connect(&pg.url).await.unwrap())
    });
    let table = schema(&fresh_name());
    rt.block_on(a.ensure_table(&table)).unwrap();
    let batch = |version: u64| Batch {
        table: table.clone(),
        rows: (0..300)
            .map(|k| Row {
                op: RowOp::Upsert,
                version: Version::from_text(format!("{version:08}")),
                values: vec![
                    Value::Text(format!("k{k}")),
                    Value::Float(version as f64),
                    Value::Int(k),
                    Value::Bool(true),
                    Value::Timestamp(0),
                    Value::Null,
                ],
            })
            .collect(),
    };
    let name = adapters::merge_sql::quote_ident(&table.name).unwrap();
    for round in 0..8u64 {
        // Round r: one connection replays version 2r+1, the other writes 2r+2 (or the same
        // replay, every other round).
        let newer = if round % 2 == 0 { 2 * round + 1 } else { 2 * round + 2 };
        let (first, second) = (batch(2 * round + 1), batch(newer));
        let (x, y) = rt.block_on(async { tokio::join!(a.commit(&first), b.commit(&second)) });
        x.unwrap();
        y.unwrap();
        let held = rt
            .block_on(a.query_text(&format!("SELECT \"id\", count(*), max(\"_version\") FROM {name} GROUP BY 1")))
            .unwrap();
        assert_eq!(held.len(), 300);
        for r in held {
            assert_eq!(r[1].as_deref(), Some("1"), "round {round}: key {:?} has several rows", r[0]);
            assert_eq!(r[2], Some(format!("{newer:08}")), "round {round}");
        }
    }
}

/// The statements the Redshift Data API sink sends (Redshift dialect, literal values, stage
/// inserts split at a small statement limit so every batch takes several), run on PostgreSQL
/// in one transaction with backslashes read as escapes, as Redshift reads them.
#[test]
fn redshift_statements_conform_on_postgres() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let w = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    conformance(
        &rt,
        32,
        || (RedshiftSqlOnPg(w.clone()), schema(&fresh_name())),
        |w, t| {
            let name = adapters::merge_sql::quote_ident(&t.name).unwrap();
            let rows = rt.block_on(w.0.query_text(&format!("SELECT \"id\", \"_version\" FROM {name}"))).unwrap();
            rows.into_iter().map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap())).collect()
        },
    );
}

struct RedshiftSqlOnPg(Arc<PostgresWarehouse>);

/// The Redshift Data API sink, through the test endpoint that runs its batches on PostgreSQL.
#[test]
fn redshift_data_api_warehouse_conforms() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let endpoint = rt.block_on(redshift_data_endpoint::Endpoint::start(&pg.url));
    let w = Arc::new(RedshiftDataWarehouse::new(
        &adapters::local_stack::sdk_config_for(&endpoint.url),
        RedshiftDataConfig {
            target: Target::Cluster { identifier: "etl".into() },
            database: "dev".into(),
            secret_arn: None,
            db_user: Some("etl".into()),
            timeout: std::time::Duration::from_secs(60),
            lock_tables: true,
        },
    ));
    let check = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    conformance(
        &rt,
        24,
        || (Shared(w.clone()), schema(&fresh_name())),
        |_, t| {
            let name = adapters::merge_sql::quote_ident(&t.name).unwrap();
            let rows = rt.block_on(check.query_text(&format!("SELECT \"id\", \"_version\" FROM {name}"))).unwrap();
            rows.into_iter().map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap())).collect()
        },
    );
}

#[async_trait::async_trait]
impl Warehouse for RedshiftSqlOnPg {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), proto::WarehouseError> {
        for ddl in create_tables(table, Dialect::Redshift).unwrap() {
            self.0.query_text(&ddl).await?;
        }
        Ok(())
    }
    async fn commit(&self, batch: &Batch) -> Result<proto::CommitStats, proto::WarehouseError> {
        let sql = MergeSql::new(&batch.table, Dialect::Redshift).unwrap();
        let statements = sql.literal_statements(&batch.rows, 600, true).unwrap();
        assert!(statements.iter().all(|s| s.len() <= 600), "every statement within the limit");
        let inserts = statements.iter().filter(|s| s.contains(") VALUES (")).count();
        assert!(batch.rows.len() < 8 || inserts > 1, "{} rows in {inserts} stage inserts", batch.rows.len());
        self.0.query_text("BEGIN").await?;
        self.0.query_text("SET LOCAL standard_conforming_strings = off").await?;
        for s in &statements {
            if let Err(e) = self.0.query_text(s).await {
                self.0.query_text("ROLLBACK").await?;
                return Err(e);
            }
        }
        self.0.query_text("COMMIT").await?;
        Ok(proto::CommitStats::default())
    }
}

/// The same warehouse (one connection, one endpoint) for every case.
struct Shared<W>(Arc<W>);

#[async_trait::async_trait]
impl<W: Warehouse> Warehouse for Shared<W> {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), proto::WarehouseError> {
        self.0.ensure_table(table).await
    }
    async fn commit(&self, batch: &Batch) -> Result<proto::CommitStats, proto::WarehouseError> {
        self.0.commit(batch).await
    }
}

#[test]
fn sql_literals_round_trip_through_postgres() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let w = rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap();
    let tricky = [
        "it's",
        "'; DROP TABLE x; --",
        "back\\slash",
        "ends in \\",
        "\\'); DROP TABLE x; --",
        "quote\"d",
        "ünïcödé ✓",
        "",
        "$$dollar$$",
        "E'\\n'",
    ];
    let rows: Vec<Vec<Value>> = tricky
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vec![
                Value::Int(i as i64),
                Value::Text((*s).to_owned()),
                Value::Float(i as f64 / 3.0),
                Value::Bool(i % 2 == 0),
            ]
        })
        .collect();
    let mut sql = "INSERT INTO literal_check VALUES ".to_owned();
    adapters::merge_sql::values_text(rows.iter().map(|r| &r[..]), &mut sql).unwrap();
    let back = rt.block_on(async {
        // Redshift reads backslashes in literals as escapes; PostgreSQL does when told so.
        w.query_text("SET standard_conforming_strings = off").await.unwrap();
        w.query_text("DROP TABLE IF EXISTS literal_check").await.unwrap();
        w.query_text("CREATE TABLE literal_check (i BIGINT, s VARCHAR(100), f DOUBLE PRECISION, b BOOLEAN)")
            .await
            .unwrap();
        w.query_text(&sql).await.unwrap();
        let back = w.query_text("SELECT s, f, b FROM literal_check ORDER BY i").await.unwrap();
        w.query_text("SET standard_conforming_strings = on").await.unwrap();
        back
    });
    for (i, (r, s)) in back.iter().zip(tricky).enumerate() {
        assert_eq!(r[0].as_deref(), Some(s));
        assert_eq!(r[1].as_deref().unwrap().parse::<f64>().unwrap(), i as f64 / 3.0);
        assert_eq!(r[2].as_deref(), Some(if i % 2 == 0 { "t" } else { "f" }));
    }
}
