//! The `Warehouse` conformance suite: the same assertions against the in-memory model, SQLite, a
//! real PostgreSQL (started on 127.0.0.1 by the test harness), the Redshift statements run on
//! that PostgreSQL, and the Redshift Data API sink (through the test endpoint that runs its
//! batches on that PostgreSQL). Random batches of upserts and deletes, where one (key, version)
//! comes with several contents (a replay whose join read newer data, a delete and an upsert of
//! one version), then replayed, must leave every implementation holding, row for row and
//! column for column, what the README promises: per key, the change of the highest version
//! that was committed first (the last of it within its batch), present for an upsert, absent
//! for a delete. An older or equal version never replaces what a commit wrote.

use adapters::dialect::Dialect;
use adapters::merge_sql::MergeSql;
use adapters::postgres::{PostgresWarehouse, Staging};
use adapters::redshift_data::{Load, RedshiftDataConfig, RedshiftDataWarehouse, Target};
use adapters::sqlite::SqliteWarehouse;
use adapters::warehouse_ddl::create_tables;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proto::memory::MemoryWarehouse;
use proto::{Batch, Column, Row, RowOp, SqlType, TableSchema, Value, Version, Warehouse};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::postgres_server::postgres;

mod redshift_data_endpoint;

/// key → (every column's value, version) of the rows a warehouse holds.
type Held = BTreeMap<String, (Vec<Value>, String)>;

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

/// One change: key `k`, `version`, and which of the contents of that (key, version) it carries.
type Change = (u8, u64, u8);

/// The row of a change. Contents of one (key, version) differ in `amount`, `n`, `at` and
/// `note` (and in `ok` for neighbouring variants); variant 3 is a delete.
fn row((k, version, variant): Change) -> Row {
    let seed = u64::from(k) * 31 + version * 7 + u64::from(variant) * 1009;
    Row {
        op: if variant == 3 { RowOp::Delete } else { RowOp::Upsert },
        version: Version::from_text(format!("{version:08}")),
        values: vec![
            Value::Text(format!("k{k}")),
            Value::Float(seed as f64 / 8.0),
            Value::Int(seed as i64 - 500),
            Value::Bool((u64::from(k) + version + u64::from(variant)).is_multiple_of(2)),
            Value::Timestamp(1_700_000_000_000 + seed as i64),
            if seed.is_multiple_of(3) { Value::Null } else { Value::Text(format!("it's \"{seed}\"; -- ✓")) },
        ],
    }
}

fn rows(batches: &[Vec<Change>]) -> Vec<Vec<Row>> {
    batches.iter().map(|b| b.iter().copied().map(row).collect()).collect()
}

fn key_of(r: &Row) -> &str {
    match &r.values[0] {
        Value::Text(k) => k,
        v => panic!("{v:?}"),
    }
}

/// What the README promises, from the batches in the order first sent (replays left out: they
/// change nothing), computed from the whole history rather than commit by commit: per key, its
/// highest version; the first batch that carries that version (a later batch's change of an
/// equal version never replaces a committed one, whether upsert or delete); within that batch,
/// the last change of it (a batch keeps its latest row per key, the later one on a tie).
fn oracle(batches: &[Vec<Row>]) -> Held {
    let mut top: BTreeMap<&str, &Version> = BTreeMap::new();
    for r in batches.iter().flatten() {
        let v = top.entry(key_of(r)).or_insert(&r.version);
        *v = (*v).max(&r.version);
    }
    let mut held = Held::new();
    for (k, v) in top {
        let of = |r: &&Row| key_of(r) == k && &r.version == v;
        let first = batches.iter().find(|b| b.iter().any(|r| of(&r))).expect("the version's batch");
        let last = first.iter().rev().find(of).expect("its change");
        if last.op == RowOp::Upsert {
            held.insert(k.to_owned(), (last.values.clone(), v.as_str().to_owned()));
        }
    }
    held
}

/// Batches covering each rule once, then (in `replayed`) sent again in other contents.
fn ties() -> Vec<Vec<Change>> {
    vec![
        // k0: upsert; k1: upsert; k2: delete; k3: two upserts of one version; k5: upsert.
        vec![(0, 3, 0), (1, 3, 0), (2, 3, 3), (3, 2, 0), (3, 2, 1), (5, 5, 0)],
        // k1: a delete of the held version; k2: an upsert of the deleted version; k4: an upsert
        // and a delete of one version; k5: an older version.
        vec![(1, 3, 3), (2, 3, 1), (4, 4, 0), (4, 4, 3), (5, 1, 1)],
        // k0, k3, k4: the held version again in another content; k5: a newer version.
        vec![(0, 3, 1), (3, 2, 2), (4, 4, 1), (5, 6, 2)],
    ]
}

/// The oracle says what the README says on the fixed cases, written out by hand.
#[test]
fn the_oracle_keeps_the_first_committed_change_of_the_highest_version() {
    let expected: Held = [(0, 3, 0), (1, 3, 0), (3, 2, 1), (5, 6, 2)]
        .into_iter()
        .map(|c| {
            let r = row(c);
            (key_of(&r).to_owned(), (r.values.clone(), r.version.as_str().to_owned()))
        })
        .collect();
    assert_eq!(oracle(&rows(&ties())), expected);
}

/// `batches`, with each replay (a copy of batch `which` modulo their number, every change's
/// content shifted by `shift` variants: 0 is the same content) inserted `after` batches after
/// the one it copies (at the end if there are fewer).
fn replayed(batches: &[Vec<Change>], replays: &[(usize, usize, u8)]) -> Vec<Vec<Row>> {
    let mut sequence: Vec<(usize, Vec<Change>)> = batches.iter().cloned().enumerate().collect();
    for &(which, after, shift) in replays {
        let which = which % batches.len();
        let original = sequence.iter().position(|(b, _)| *b == which).expect("the original");
        let copy = batches[which].iter().map(|&(k, v, variant)| (k, v, (variant + shift) % 4)).collect();
        sequence.insert(original + 1 + after.min(sequence.len() - original - 1), (which, copy));
    }
    rows(&sequence.into_iter().map(|(_, b)| b).collect::<Vec<_>>())
}

/// Random batches over 6 keys and 6 versions (so that one version of a key often comes in
/// several batches and contents), and the sequence committed: those batches with replays.
fn scenario() -> impl Strategy<Value = (Vec<Vec<Row>>, Vec<Vec<Row>>)> {
    let batch = proptest::collection::vec((0..6u8, 0..6u64, 0..4u8), 1..8);
    (proptest::collection::vec(batch, 1..8), proptest::collection::vec((0..8usize, 0..8usize, 0..4u8), 0..6))
        .prop_map(|(batches, replays)| (rows(&batches), replayed(&batches, &replays)))
}

/// Runs the suite against one implementation: `make` gives a fresh warehouse and table,
/// `held` reads the table back. The fixed cases first (with every batch replayed in the other
/// contents), then random ones.
fn conformance<W, M, H>(rt: &tokio::runtime::Runtime, cases: u32, make: M, held: H)
where
    W: Warehouse,
    M: Fn() -> (W, Arc<TableSchema>),
    H: Fn(&W, &TableSchema) -> Held,
{
    let run = |batches: &[Vec<Row>], sequence: &[Vec<Row>]| {
        let (w, table) = make();
        rt.block_on(async {
            w.ensure_table(&table).await.unwrap();
            w.ensure_table(&table).await.unwrap();
            for rows in sequence {
                w.commit(&Batch { table: table.clone(), rows: rows.clone() }).await.unwrap();
            }
        });
        (held(&w, &table), oracle(batches))
    };
    let fixed = ties();
    let replays: Vec<_> = (0..fixed.len() * 3).map(|i| (i / 3, usize::MAX, 1 + (i % 3) as u8)).collect();
    let (got, want) = run(&rows(&fixed), &replayed(&fixed, &replays));
    assert_eq!(got, want, "the fixed cases");
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    runner
        .run(&scenario(), |(batches, sequence)| {
            let (got, want) = run(&batches, &sequence);
            prop_assert_eq!(got, want);
            Ok(())
        })
        .unwrap();
}

/// Tombstones are kept for the retention, then pruned: within it a replayed older upsert of a
/// deleted key is still fenced; once a pass removed the tombstone the same replay lands (the
/// bound is what keeps rows deleted); and under a steady stream of deletes each pass removes
/// exactly the tombstones of the round before it, so the table does not grow. A pass stamps
/// first and removes second, so a tombstone survives the pass that first saw it.
fn tombstones_are_kept_for_the_retention_then_pruned<W, H>(rt: &tokio::runtime::Runtime, w: &W, held: H)
where
    W: Warehouse,
    H: Fn(&W, &TableSchema) -> Held,
{
    let table = schema(&fresh_name());
    let commit = |changes: Vec<Change>| {
        let batch = Batch { table: table.clone(), rows: changes.into_iter().map(row).collect() };
        rt.block_on(w.commit(&batch)).unwrap()
    };
    let prune = |retention: Duration| rt.block_on(w.prune_tombstones(&table, retention)).unwrap();
    // The SQLite clock stamps whole seconds: passes a second apart see each other's stamps.
    let later = || std::thread::sleep(Duration::from_millis(1_100));
    rt.block_on(w.ensure_table(&table)).unwrap();
    commit((0..10).map(|k| (k, 1, 0)).collect());
    commit((0..10).map(|k| (k, 2, 3)).collect());
    let hour = Duration::from_secs(3_600);
    assert_eq!(prune(hour), 0, "first pass: stamps only");
    later();
    assert_eq!(prune(hour), 0, "within the retention nothing goes");
    let replay = commit(vec![(0, 1, 1)]);
    assert_eq!(replay.fenced, 1, "a replay within the retention is fenced");
    assert!(held(w, &table).is_empty());
    assert_eq!(prune(Duration::ZERO), 10, "past the retention every tombstone goes");
    commit(vec![(0, 1, 1)]);
    assert_eq!(held(w, &table).len(), 1, "without its tombstone the replay lands: the bound matters");

    // A newer delete of a tombstoned key ages from itself, not from the tombstone it replaced.
    commit(vec![(50, 1, 3)]);
    assert_eq!(prune(Duration::ZERO), 0, "stamped");
    later();
    commit(vec![(50, 2, 3)]);
    assert_eq!(prune(Duration::ZERO), 0, "the newer delete is stamped afresh");
    later();
    assert_eq!(prune(Duration::ZERO), 1);

    for round in 0..4u64 {
        let keys = (20 + 10 * round as u8)..(30 + 10 * round as u8);
        commit(keys.map(|k| (k, 5, 3)).collect());
        later();
        let removed = prune(Duration::ZERO);
        assert_eq!(removed, if round == 0 { 0 } else { 10 }, "round {round}: the round before's tombstones");
    }
}

static TABLES: AtomicU32 = AtomicU32::new(0);

fn fresh_name() -> String {
    format!("conformance {} \"t\"", TABLES.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn key_of_values(values: &[Value]) -> String {
    match &values[0] {
        Value::Text(k) => k.clone(),
        v => panic!("{v:?}"),
    }
}

/// Rows read back (values, version) by key; a key held twice fails the test.
fn by_key(rows: impl IntoIterator<Item = (Vec<Value>, String)>) -> Held {
    let mut held = Held::new();
    for (values, version) in rows {
        let k = key_of_values(&values);
        assert!(held.insert(k.clone(), (values, version)).is_none(), "key {k} is held twice");
    }
    held
}

/// Every row of the table on PostgreSQL, read back as text and typed by hand (the timestamp as
/// milliseconds since the epoch), so it compares with the oracle's values.
fn pg_held(rt: &tokio::runtime::Runtime, w: &PostgresWarehouse, t: &TableSchema) -> Held {
    let name = adapters::sql_text::quote_ident(&t.name).unwrap();
    let sql = format!(
        "SELECT \"id\", \"amount\", \"n\", \"ok\", (extract(epoch FROM \"at\") * 1000)::bigint, \"note\", \"_version\" \
         FROM {name}"
    );
    let typed = |text: &Option<String>, ty: SqlType| match (text.as_deref(), ty) {
        (None, _) => Value::Null,
        (Some(s), SqlType::Text) => Value::Text(s.to_owned()),
        (Some(s), SqlType::Double) => Value::Float(s.parse().unwrap()),
        (Some(s), SqlType::BigInt) => Value::Int(s.parse().unwrap()),
        (Some(s), SqlType::Boolean) => Value::Bool(match s {
            "t" => true,
            "f" => false,
            other => panic!("boolean {other:?}"),
        }),
        (Some(s), SqlType::Timestamp) => Value::Timestamp(s.parse().unwrap()),
    };
    let rows = rt.block_on(w.query_text(&sql)).unwrap();
    by_key(
        rows.into_iter()
            .map(|r| (t.columns.iter().zip(&r).map(|(c, text)| typed(text, c.ty)).collect(), r[6].clone().unwrap())),
    )
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
                .map(|r| (key_of_values(&r.values), (r.values, r.version.as_str().to_owned())))
                .collect()
        },
    );
}

#[test]
fn tombstones_are_pruned_past_the_retention_in_memory_sqlite_and_postgres() {
    let rt = runtime();
    let memory = MemoryWarehouse::new();
    tombstones_are_kept_for_the_retention_then_pruned(&rt, &memory, |w, t| {
        w.rows(&t.name)
            .into_values()
            .map(|r| (key_of_values(&r.values), (r.values, r.version.as_str().to_owned())))
            .collect()
    });
    let sqlite = SqliteWarehouse::in_memory().unwrap();
    tombstones_are_kept_for_the_retention_then_pruned(&rt, &sqlite, |w, t| by_key(w.rows(t).unwrap()));
    let pg = postgres().expect("a postgresql for the tests");
    let w = rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap();
    tombstones_are_kept_for_the_retention_then_pruned(&rt, &w, |w, t| pg_held(&rt, w, t));
}

#[test]
fn sqlite_warehouse_conforms() {
    conformance(
        &runtime(),
        128,
        || (SqliteWarehouse::in_memory().unwrap(), schema(&fresh_name())),
        |w, t| by_key(w.rows(t).unwrap()),
    );
}

#[test]
fn postgres_warehouse_conforms() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let w = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    conformance(&rt, 48, || (Shared(w.clone()), schema(&fresh_name())), |w, t| pg_held(&rt, &w.0, t));
}

/// The earlier staging path (multi-row INSERTs), kept for the benchmarks' comparison, holds
/// the same cases.
#[test]
fn postgres_staging_by_inserts_conforms() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let w = rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap().with_staging(Staging::Inserts);
    let w = Arc::new(w);
    conformance(&rt, 24, || (Shared(w.clone()), schema(&fresh_name())), |w, t| pg_held(&rt, &w.0, t));
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
    let name = adapters::sql_text::quote_ident(&table.name).unwrap();
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

/// A commit looks its keys up in the target and the tombstones by index, never by reading the
/// whole table: with 20,000 rows held in each and one staged, PostgreSQL plans every statement
/// of the merge with index scans (without the index each commit scans both tables, and a commit
/// into a table of millions of rows takes seconds), planned as a commit plans them.
#[test]
fn a_postgres_commit_finds_its_keys_by_index() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    rt.block_on(async {
        let w = PostgresWarehouse::connect(&pg.url).await.unwrap();
        let table = schema(&fresh_name());
        w.ensure_table(&table).await.unwrap();
        let sql = MergeSql::new(&table, Dialect::Postgres).unwrap();
        let name = adapters::sql_text::quote_ident(&table.name).unwrap();
        let tombstones = adapters::sql_text::quote_ident(&format!("{}__deleted", table.name)).unwrap();
        let (client, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "INSERT INTO {name} (\"id\", \"_version\") SELECT 'k' || g, '1' FROM generate_series(1, 20000) g; \
                 INSERT INTO {tombstones} (\"id\", \"_version\") SELECT 'd' || g, '1' FROM generate_series(1, 20000) g; \
                 ANALYZE {name}; ANALYZE {tombstones}; BEGIN; {}; {}; \
                 INSERT INTO {} (\"id\", \"_version\", \"_op\", \"_ord\") VALUES ('k7', '2', 'U', 0), ('d7', '2', 'D', 1), ('k8', '2', 'D', 2)",
                adapters::postgres::PLAN_BY_INDEX,
                sql.create_stage,
                adapters::sql_text::quote_ident(&format!("{}__stage", table.name)).unwrap()
            ))
            .await
            .unwrap();
        let upserts = sql.upserts.as_ref().expect("postgresql merges by ON CONFLICT");
        for statement in [
            &sql.fence_by_tombstone,
            &upserts.upsert_target,
            &upserts.delete_deleted,
            &upserts.upsert_tombstones,
            &upserts.delete_revived_tombstones,
        ] {
            let plan = client.simple_query(&format!("EXPLAIN {statement}")).await.unwrap();
            let plan: Vec<String> = plan
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect();
            assert!(
                plan.iter().any(|line| line.contains("Index")) && !plan.iter().any(|line| line.contains(&format!("Seq Scan on {name}")) || line.contains(&format!("Seq Scan on {tombstones}"))),
                "{statement}:\n{}",
                plan.join("\n")
            );
        }
        client.batch_execute("ROLLBACK").await.unwrap();
    });
}

/// A PostgreSQL table made by hand (or by an earlier tributary) gets the unique key indexes
/// the commits need at the node's start; one that holds a key twice cannot have them, and the
/// node does not start, saying why (not which key: the server's detail would quote its value).
#[test]
fn an_existing_postgres_table_gets_its_key_index_or_says_why_not() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    rt.block_on(async {
        let w = PostgresWarehouse::connect(&pg.url).await.unwrap();
        let indexed = |table: String| {
            let w = &w;
            async move {
                let sql = format!(
                    "SELECT count(*) FROM pg_indexes WHERE tablename IN ('{0}', '{0}__deleted') AND indexdef LIKE 'CREATE UNIQUE INDEX%(id)'",
                    table.replace('\'', "''")
                );
                w.query_text(&sql).await.unwrap()[0][0].clone().unwrap()
            }
        };
        for duplicated in [false, true] {
            let table = schema(&fresh_name());
            let name = adapters::sql_text::quote_ident(&table.name).unwrap();
            w.query_text(&format!(
                "CREATE TABLE {name} (\"id\" TEXT, \"amount\" FLOAT, \"n\" BIGINT, \"ok\" BOOLEAN, \
                 \"at\" TIMESTAMP, \"note\" TEXT, \"_version\" TEXT); \
                 INSERT INTO {name} (\"id\", \"_version\") VALUES ('a', '1'), ('b', '1')"
            ))
            .await
            .unwrap();
            if duplicated {
                w.query_text(&format!("INSERT INTO {name} (\"id\", \"_version\") VALUES ('a', '2')")).await.unwrap();
                let e = w.ensure_table(&table).await.unwrap_err().to_string();
                assert!(e.contains("holds a key more than once") && e.contains(&table.name), "{e}");
                assert_eq!(indexed(table.name.clone()).await, "0");
            } else {
                w.ensure_table(&table).await.unwrap();
                assert_eq!(indexed(table.name.clone()).await, "2");
            }
        }
    });
}

/// A tombstone table made before the pruning stamp (no `_deleted_at`) gets the column at start,
/// on PostgreSQL and SQLite, and its old tombstones are stamped by the first pass, not removed.
#[test]
fn an_existing_tombstone_table_gets_its_stamp_column() {
    let rt = runtime();
    let old_layout = |name: &str| {
        let tombstones = adapters::sql_text::quote_ident(&format!("{name}__deleted")).unwrap();
        format!(
            "CREATE TABLE {tombstones} (\"id\" TEXT, \"_version\" TEXT); INSERT INTO {tombstones} VALUES ('gone', '1')"
        )
    };
    let pg = postgres().expect("a postgresql for the tests");
    let w = rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap();
    let table = schema(&fresh_name());
    rt.block_on(w.query_text(&old_layout(&table.name))).unwrap();
    rt.block_on(w.ensure_table(&table)).unwrap();
    assert_eq!(rt.block_on(w.prune_tombstones(&table, Duration::ZERO)).unwrap(), 0, "stamped, not removed");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rt.block_on(w.prune_tombstones(&table, Duration::ZERO)).unwrap(), 1);

    let sqlite = SqliteWarehouse::in_memory().unwrap();
    let table = schema(&fresh_name());
    sqlite.execute_batch(&old_layout(&table.name)).unwrap();
    rt.block_on(sqlite.ensure_table(&table)).unwrap();
    assert_eq!(rt.block_on(sqlite.prune_tombstones(&table, Duration::ZERO)).unwrap(), 0, "stamped, not removed");
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(rt.block_on(sqlite.prune_tombstones(&table, Duration::ZERO)).unwrap(), 1);
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
    let name = adapters::sql_text::quote_ident(&table.name).unwrap();
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

/// One batch is one transaction on PostgreSQL: when its last row is refused (a constraint the
/// table's owner added), nothing of the batch stays — no row, no tombstone — and the error is
/// final (a retry cannot pass). The same batch without that row then commits whole.
#[test]
fn a_postgres_batch_lands_whole_or_not_at_all() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let w = rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap();
    let table = schema(&fresh_name());
    rt.block_on(w.ensure_table(&table)).unwrap();
    let name = adapters::sql_text::quote_ident(&table.name).unwrap();
    rt.block_on(w.query_text(&format!("ALTER TABLE {name} ADD CONSTRAINT small CHECK (\"n\" < 1000)"))).unwrap();
    let upsert = |k: u8, n: i64| Row {
        op: RowOp::Upsert,
        version: Version::from_text("00000001"),
        values: vec![
            Value::Text(format!("k{k}")),
            Value::Float(1.0),
            Value::Int(n),
            Value::Bool(true),
            Value::Timestamp(0),
            Value::Null,
        ],
    };
    let delete = Row { op: RowOp::Delete, version: Version::from_text("00000001"), values: upsert(9, 0).values };
    let mut rows: Vec<Row> = (0..5).map(|k| upsert(k, 1)).collect();
    rows.push(delete);
    rows.push(upsert(5, 5000));
    let e = rt.block_on(w.commit(&Batch { table: table.clone(), rows: rows.clone() })).unwrap_err();
    assert!(matches!(e, proto::WarehouseError::Rejected(_)) && e.to_string().contains("small"), "{e:?}");
    assert_eq!(pg_held(&rt, &w, &table), Held::new(), "nothing of the refused batch stayed");
    let deleted = adapters::sql_text::quote_ident(&adapters::warehouse_ddl::tombstone_table(&table.name)).unwrap();
    let tombstones = rt.block_on(w.query_text(&format!("SELECT count(*) FROM {deleted}"))).unwrap();
    assert_eq!(tombstones[0][0].as_deref(), Some("0"), "no tombstone of the refused batch either");
    rows.pop();
    let stats = rt.block_on(w.commit(&Batch { table: table.clone(), rows })).unwrap();
    assert_eq!((stats.upserted, stats.deleted), (5, 1));
    assert_eq!(pg_held(&rt, &w, &table).len(), 5);
}

/// Commits to one PostgreSQL table take turns through an advisory lock that blocks nothing
/// else: while another committer holds the table's turn, a commit waits, but readers of the
/// table and an operator's own writes go on; the commit lands once the turn is released.
#[test]
fn a_postgres_commit_waits_its_turn_and_blocks_no_reader() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    rt.block_on(async {
        let w = PostgresWarehouse::connect(&pg.url).await.unwrap();
        let table = schema(&fresh_name());
        w.ensure_table(&table).await.unwrap();
        let name = adapters::sql_text::quote_ident(&table.name).unwrap();
        // Another committer's turn, held in an open transaction on a connection of its own.
        let (holder, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        holder.batch_execute("BEGIN").await.unwrap();
        let turn = format!("tributary commit {}", table.name);
        holder.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&turn]).await.unwrap();

        let row = Row {
            op: RowOp::Upsert,
            version: Version::from_text("00000001"),
            values: vec![
                Value::Text("k".into()),
                Value::Float(1.0),
                Value::Int(1),
                Value::Bool(true),
                Value::Timestamp(0),
                Value::Null,
            ],
        };
        let batch = Batch { table: table.clone(), rows: vec![row] };
        let commit = tokio::spawn(async move { w.commit(&batch).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!commit.is_finished(), "the commit waits for the table's turn");
        let (reader, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let count = format!("SELECT count(*) FROM {name}");
        let read = tokio::time::timeout(Duration::from_secs(10), reader.query(count.as_str(), &[]));
        assert!(read.await.is_ok(), "a reader is not blocked");
        let write = format!("INSERT INTO {name} (\"id\", \"_version\") VALUES ('operator', '0')");
        let write = tokio::time::timeout(Duration::from_secs(10), reader.execute(write.as_str(), &[]));
        assert!(write.await.is_ok(), "nor is an operator's own write");
        holder.batch_execute("COMMIT").await.unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(10), commit).await.expect("lands once released");
        assert_eq!(stats.unwrap().unwrap().upserted, 1);
    });
}

/// The statements the Redshift Data API sink sends (Redshift dialect, literal values, stage
/// inserts split at a small statement limit so every batch takes several), run on PostgreSQL
/// in one transaction with backslashes read as escapes, as Redshift reads them.
#[test]
fn redshift_statements_conform_on_postgres() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let w = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    conformance(&rt, 32, || (RedshiftSqlOnPg(w.clone()), schema(&fresh_name())), |w, t| pg_held(&rt, &w.0, t));
}

struct RedshiftSqlOnPg(Arc<PostgresWarehouse>);

/// The Redshift Data API sink, through the test endpoint that runs its batches on PostgreSQL.
#[test]
fn redshift_data_api_warehouse_conforms() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = runtime();
    let endpoint = rt.block_on(redshift_data_endpoint::Endpoint::start(&pg.url));
    let w = Arc::new(RedshiftDataWarehouse::new(
        &testkit::local_stack::sdk_config_for(&endpoint.url),
        RedshiftDataConfig {
            target: Target::Cluster { identifier: "etl".into() },
            database: "dev".into(),
            secret_arn: None,
            db_user: Some("etl".into()),
            timeout: std::time::Duration::from_secs(60),
            lock_tables: true,
            load: Load::Statements,
        },
        "test-node",
    ));
    let check = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    conformance(&rt, 24, || (Shared(w.clone()), schema(&fresh_name())), |_, t| pg_held(&rt, &check, t));
    tombstones_are_kept_for_the_retention_then_pruned(&rt, &Shared(w.clone()), |_, t| pg_held(&rt, &check, t));
}

/// The Redshift Data API sink loading every batch by a gzip CSV file in S3 (moto's) and COPY,
/// through the test endpoint that runs COPY from that S3 on PostgreSQL.
#[test]
fn redshift_copy_load_conforms() {
    let pg = postgres().expect("a postgresql for the tests");
    let moto = testkit::local_stack::emulator(testkit::local_stack::Service::Dynamo).expect("moto (S3)");
    let rt = runtime();
    let endpoint = rt.block_on(redshift_data_endpoint::Endpoint::start_with_s3(&pg.url, &moto.endpoint));
    let s3_sdk = testkit::local_stack::sdk_config_for(&moto.endpoint);
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&s3_sdk).force_path_style(true).build());
    let _ = rt.block_on(s3.create_bucket().bucket("tributary-conformance").send());
    let load = Load::Copy {
        staging: adapters::redshift_data::S3Prefix::parse("s3://tributary-conformance/loads/").unwrap(),
        role: "default".into(),
        min_rows: 0,
    };
    let config = RedshiftDataConfig {
        target: Target::Cluster { identifier: "etl".into() },
        database: "dev".into(),
        secret_arn: None,
        db_user: Some("etl".into()),
        timeout: std::time::Duration::from_secs(60),
        lock_tables: true,
        load,
    };
    let w = RedshiftDataWarehouse::new(&testkit::local_stack::sdk_config_for(&endpoint.url), config, "conformance")
        .with_s3(&s3_sdk, "conformance");
    let w = Arc::new(w);
    let check = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    conformance(&rt, 24, || (Shared(w.clone()), schema(&fresh_name())), |_, t| pg_held(&rt, &check, t));
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
    /// Not exercised: the Data API adapter's pruning is (`redshift_data_api_warehouse_conforms`).
    async fn prune_tombstones(&self, _: &TableSchema, _: Duration) -> Result<u64, proto::WarehouseError> {
        Err(proto::WarehouseError::Rejected("not part of this check".into()))
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
    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, proto::WarehouseError> {
        self.0.prune_tombstones(table, retention).await
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
    adapters::sql_text::values_text(rows.iter().map(|r| &r[..]), &mut sql).unwrap();
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
