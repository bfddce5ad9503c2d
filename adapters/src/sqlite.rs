//! The embedded warehouse: SQLite (bundled) behind the `Warehouse` port. Each batch commits in
//! one `BEGIN IMMEDIATE` transaction running the shared commit plan (`commit_plan.rs`), the stage
//! rows bound as parameters.

use crate::column_check::{expected_columns, missing_columns};
use crate::commit_plan::{CommitPlan, Step};
use crate::dialect::Dialect;
use crate::merge_sql::{MergeSql, MergeSqlCache};
use crate::sql_text::{quote_ident, SqlError};
use crate::tombstone_prune::prune_statements;
use crate::warehouse_ddl::{create_tables, tombstone_table, DELETED_AT};
use async_trait::async_trait;
use proto::memory::{MemoryWarehouse, StoredRow};
use proto::{Batch, CommitStats, SqlType, TableSchema, Value, Version, Warehouse, WarehouseError};
use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use rusqlite::{Connection, ErrorCode, ToSql, Transaction, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// SQLite's default limit on bound parameters per statement.
const MAX_PARAMS: usize = 32_766;

pub struct SqliteWarehouse {
    conn: Arc<Mutex<Connection>>,
    sql: MergeSqlCache,
}

struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Owned(SqlValue::Null),
            Value::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
            Value::Int(i) | Value::Timestamp(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Value::Float(f) => ToSqlOutput::Owned(SqlValue::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(s.as_bytes())),
        })
    }
}

fn classify(e: rusqlite::Error) -> WarehouseError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            WarehouseError::Unavailable(e.to_string().to_lowercase())
        }
        _ => WarehouseError::Rejected(e.to_string().to_lowercase()),
    }
}

/// A panic while the lock was held rolled its transaction back (the `Transaction` guard drops
/// during unwinding), so the connection is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stored SQLite value read back as the column's type.
fn value_of(v: SqlValue, ty: SqlType) -> Value {
    match (v, ty) {
        (SqlValue::Null, _) => Value::Null,
        (SqlValue::Integer(i), SqlType::Boolean) => Value::Bool(i != 0),
        (SqlValue::Integer(i), SqlType::Timestamp) => Value::Timestamp(i),
        (SqlValue::Integer(i), SqlType::Double) => Value::Float(i as f64),
        (SqlValue::Integer(i), _) => Value::Int(i),
        (SqlValue::Real(f), _) => Value::Float(f),
        (SqlValue::Text(s), _) => Value::Text(s),
        (SqlValue::Blob(b), _) => Value::Text(String::from_utf8_lossy(&b).into_owned()),
    }
}

impl SqliteWarehouse {
    /// Opens (or creates) a database file in WAL mode; `:memory:` opens a private in-memory one.
    pub fn open(path: &Path) -> Result<Self, WarehouseError> {
        let conn = Connection::open(path).map_err(classify)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(classify)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(classify)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(classify)?;
        Ok(Self::from_connection(conn))
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self, WarehouseError> {
        Ok(Self::from_connection(Connection::open_in_memory().map_err(classify)?))
    }

    fn from_connection(conn: Connection) -> Self {
        Self { conn: Arc::new(Mutex::new(conn)), sql: MergeSqlCache::new(Dialect::Sqlite) }
    }

    /// How long a commit waits for another writer of the same file before it gives up with
    /// `Unavailable` (5 s after `open`).
    pub fn set_busy_timeout(&self, timeout: Duration) -> Result<(), WarehouseError> {
        lock(&self.conn).busy_timeout(timeout).map_err(classify)
    }

    fn statements(&self, table: &TableSchema) -> Result<Arc<MergeSql>, WarehouseError> {
        Ok(self.sql.get(table)?)
    }

    // The readers below are for checks, tests and the demo. They block the calling thread on
    // the connection; keep them off hot async paths.

    /// Runs SQL statements of one's own on the database (an operator's change, a test's setup).
    pub fn execute_batch(&self, sql: &str) -> Result<(), WarehouseError> {
        lock(&self.conn).execute_batch(sql).map_err(classify)
    }

    /// Number of rows in a table (the target or its `__deleted` table).
    pub fn count(&self, table: &str) -> Result<u64, WarehouseError> {
        let sql = format!("SELECT count(*) FROM {}", quote_ident(table)?);
        let n: i64 = lock(&self.conn).query_row(&sql, [], |r| r.get(0)).map_err(classify)?;
        Ok(n as u64)
    }

    /// Every row of a table as (values in column order, version), in no particular order.
    pub fn rows(&self, table: &TableSchema) -> Result<Vec<(Vec<Value>, String)>, WarehouseError> {
        let cols: Vec<String> = table
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .chain([quote_ident(&table.version_column)])
            .collect::<Result<_, SqlError>>()?;
        let sql = format!("SELECT {} FROM {}", cols.join(", "), quote_ident(&table.name)?);
        let n = table.columns.len();
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(&sql).map_err(classify)?;
        let rows = stmt
            .query_map([], |r| {
                let mut values = Vec::with_capacity(n);
                for (i, c) in table.columns.iter().enumerate() {
                    values.push(value_of(r.get(i)?, c.ty));
                }
                Ok((values, r.get::<_, String>(n)?))
            })
            .map_err(classify)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        Ok(rows)
    }

    /// Every row of a table by key, the key written as [`MemoryWarehouse::rows`] writes it (the
    /// key columns' JSON), so the two warehouses compare with `==`.
    pub fn rows_by_key(&self, table: &TableSchema) -> Result<BTreeMap<String, StoredRow>, WarehouseError> {
        self.statements(table)?; // checks the key indexes
        Ok(self
            .rows(table)?
            .into_iter()
            .map(|(values, version)| {
                let key = MemoryWarehouse::key_of(&table.key.iter().map(|&i| &values[i]).collect::<Vec<_>>());
                (key, StoredRow { version: Version::from_text(version), values })
            })
            .collect())
    }

    /// The remembered deletes of a table: key (as in [`SqliteWarehouse::rows_by_key`]) → version.
    pub fn tombstones(&self, table: &TableSchema) -> Result<BTreeMap<String, Version>, WarehouseError> {
        self.statements(table)?; // checks the key indexes
        let keys: Vec<String> =
            table.key.iter().map(|&i| quote_ident(&table.columns[i].name)).collect::<Result<_, SqlError>>()?;
        let sql = format!(
            "SELECT {}, {} FROM {}",
            keys.join(", "),
            quote_ident(&table.version_column)?,
            quote_ident(&tombstone_table(&table.name))?
        );
        let n = keys.len();
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(&sql).map_err(classify)?;
        let rows = stmt
            .query_map([], |r| {
                let mut values = Vec::with_capacity(n);
                for (at, &i) in table.key.iter().enumerate() {
                    values.push(value_of(r.get(at)?, table.columns[i].ty));
                }
                let key = MemoryWarehouse::key_of(&values.iter().collect::<Vec<_>>());
                Ok((key, Version::from_text(r.get::<_, String>(n)?)))
            })
            .map_err(classify)?
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(classify)?;
        Ok(rows)
    }
}

fn commit_blocking(conn: &mut Connection, sql: &MergeSql, batch: &Batch) -> Result<CommitStats, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut stats = CommitStats::default();
    for step in CommitPlan::new(sql).steps() {
        match step {
            Step::Ddl(ddl) => _ = tx.execute(ddl, [])?,
            Step::StageRows => stage_rows(&tx, sql, batch)?,
            // `BEGIN IMMEDIATE` took the database's write lock: commits already take turns.
            Step::TakeTurns => {}
            Step::Run { sql, tally } => tally.add(&mut stats, tx.execute(sql, [])? as u64),
        }
    }
    tx.commit()?;
    Ok(stats)
}

fn stage_rows(tx: &Transaction<'_>, sql: &MergeSql, batch: &Batch) -> Result<(), rusqlite::Error> {
    for (insert, values) in sql.bound_inserts(&batch.rows, MAX_PARAMS) {
        let mut stmt = tx.prepare_cached(&insert)?;
        stmt.execute(rusqlite::params_from_iter(values.iter().map(|v| Param(v))))?;
    }
    Ok(())
}

/// Refuses, before any I/O, a batch that could never commit: a row with the wrong number of
/// values, or with a null key (NULL never equals NULL in SQL, so such a row would escape both
/// the dedupe and the version fence).
fn check_batch(batch: &Batch) -> Result<(), WarehouseError> {
    let table = &batch.table;
    for (n, row) in batch.rows.iter().enumerate() {
        if row.values.len() != table.columns.len() {
            return Err(WarehouseError::Rejected(format!(
                "row {n} has {} values for the {} columns of {}",
                row.values.len(),
                table.columns.len(),
                table.name
            )));
        }
        if let Some(&i) = table.key.iter().find(|&&i| row.values[i] == Value::Null) {
            return Err(WarehouseError::Rejected(format!(
                "row {n} has a null key column {:?} in {}",
                table.columns[i].name, table.name
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        let ddl = create_tables(table, Dialect::Sqlite)?;
        let (conn, table) = (self.conn.clone(), table.clone());
        tokio::task::spawn_blocking(move || {
            let conn = lock(&conn);
            for statement in ddl {
                conn.execute(&statement, []).map_err(classify)?;
            }
            for (name, wanted) in expected_columns(&table) {
                let mut columns = conn.prepare("SELECT name FROM pragma_table_info(?1)").map_err(classify)?;
                let existing: Vec<String> =
                    columns.query_map([&name], |r| r.get(0)).and_then(Iterator::collect).map_err(classify)?;
                missing_columns(&name, &wanted, &existing)?;
                // A tombstone table made before the pruning stamp: it gets the column (NULL,
                // so its tombstones age from the first pass).
                if name == tombstone_table(&table.name) && !existing.iter().any(|c| c == DELETED_AT) {
                    let add =
                        format!("ALTER TABLE {} ADD COLUMN {} INTEGER", quote_ident(&name)?, quote_ident(DELETED_AT)?);
                    conn.execute(&add, []).map_err(classify)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| WarehouseError::Unavailable(e.to_string()))?
    }

    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        let sql = self.statements(&batch.table)?; // checks the schema, so key indexes are valid
        check_batch(batch)?;
        if batch.rows.is_empty() {
            return Ok(CommitStats::default());
        }
        let conn = self.conn.clone();
        let batch = batch.clone();
        tokio::task::spawn_blocking(move || commit_blocking(&mut lock(&conn), &sql, &batch).map_err(classify))
            .await
            .map_err(|e| WarehouseError::Unavailable(e.to_string()))?
    }

    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        let [stamp, remove] = prune_statements(table, Dialect::Sqlite, retention)?;
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&conn);
            let tx = conn.transaction().map_err(classify)?;
            tx.execute(&stamp, []).map_err(classify)?;
            let removed = tx.execute(&remove, []).map_err(classify)?;
            tx.commit().map_err(classify)?;
            Ok(removed as u64)
        })
        .await
        .map_err(|e| WarehouseError::Unavailable(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::{Column, Row, RowOp};

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            name: "t \"quoted\"; --".into(),
            columns: vec![
                Column::new("k", SqlType::Text),
                Column::new("part", SqlType::BigInt),
                Column::new("amount", SqlType::Double),
                Column::new("ok", SqlType::Boolean),
                Column::new("at", SqlType::Timestamp),
                Column::new("note", SqlType::Text),
            ],
            key: vec![0, 1],
            version_column: "_version".into(),
        })
    }

    fn row(op: RowOp, key: &str, version: u64, amount: f64) -> Row {
        Row {
            op,
            version: Version::from_text(format!("{version:08}")),
            values: vec![
                Value::Text(key.into()),
                Value::Int(7),
                Value::Float(amount),
                Value::Bool(true),
                Value::Timestamp(1_700_000_000_000),
                Value::Text(format!("it's \"{amount}\"; --")),
            ],
        }
    }

    fn batch(rows: Vec<Row>) -> Batch {
        Batch { table: schema(), rows }
    }

    fn key(k: &str) -> String {
        MemoryWarehouse::key_of(&[&Value::Text(k.into()), &Value::Int(7)])
    }

    async fn fresh() -> SqliteWarehouse {
        let w = SqliteWarehouse::in_memory().unwrap();
        w.ensure_table(&schema()).await.unwrap();
        w
    }

    #[tokio::test]
    async fn replays_change_nothing_and_deletes_are_remembered() {
        let w = fresh().await;
        let t = schema();
        let b = batch(vec![
            row(RowOp::Upsert, "a", 1, 1.0),
            row(RowOp::Upsert, "a", 2, 2.0),
            row(RowOp::Upsert, "b", 1, 5.0),
        ]);
        assert_eq!(w.commit(&b).await.unwrap(), CommitStats { upserted: 2, deleted: 0, fenced: 1 });
        let before = w.rows_by_key(&t).unwrap();
        assert_eq!(before[&key("a")].values, row(RowOp::Upsert, "a", 2, 2.0).values);
        // The same batch again: everything fenced, nothing changed.
        assert_eq!(w.commit(&b).await.unwrap(), CommitStats { upserted: 0, deleted: 0, fenced: 3 });
        assert_eq!(w.rows_by_key(&t).unwrap(), before);

        let delete = batch(vec![row(RowOp::Delete, "a", 3, 0.0)]);
        assert_eq!(w.commit(&delete).await.unwrap(), CommitStats { upserted: 0, deleted: 1, fenced: 0 });
        assert!(!w.rows_by_key(&t).unwrap().contains_key(&key("a")));
        assert_eq!(w.tombstones(&t).unwrap(), BTreeMap::from([(key("a"), Version::from_text("00000003"))]));
        assert_eq!(w.count(&tombstone_table(&t.name)).unwrap(), 1);
        // A replayed delete, and an older upsert replayed after it, change nothing…
        assert_eq!(w.commit(&delete).await.unwrap().fenced, 1);
        assert_eq!(w.commit(&b).await.unwrap(), CommitStats { upserted: 0, deleted: 0, fenced: 3 });
        assert!(!w.rows_by_key(&t).unwrap().contains_key(&key("a")));
        assert_eq!(w.count(&t.name).unwrap(), 1);
        // …a newer upsert brings the row back and clears the tombstone.
        w.commit(&batch(vec![row(RowOp::Upsert, "a", 4, 4.0)])).await.unwrap();
        assert_eq!(w.rows_by_key(&t).unwrap()[&key("a")].values[2], Value::Float(4.0));
        assert!(w.tombstones(&t).unwrap().is_empty());
        assert_eq!(w.count(&t.name).unwrap(), 2);
    }

    #[tokio::test]
    async fn within_a_batch_the_later_row_wins_a_version_tie() {
        let w = fresh().await;
        let b = batch(vec![
            row(RowOp::Upsert, "a", 5, 1.0),
            row(RowOp::Delete, "a", 5, 0.0),
            row(RowOp::Upsert, "a", 5, 3.0),
        ]);
        assert_eq!(w.commit(&b).await.unwrap(), CommitStats { upserted: 1, deleted: 0, fenced: 2 });
        assert_eq!(w.rows_by_key(&schema()).unwrap()[&key("a")].values[2], Value::Float(3.0));
    }

    #[tokio::test]
    async fn large_batches_are_staged_in_chunks_and_keep_their_order() {
        let w = fresh().await;
        // 6 columns + 3 stage columns: 3640 rows per INSERT, so 20,000 rows take 6 of them, and
        // the last write of each key (same version) sits in a later chunk than the first.
        let rows: Vec<Row> = (0..20_000).map(|i| row(RowOp::Upsert, &format!("k{}", i % 7_000), 1, i as f64)).collect();
        let stats = w.commit(&batch(rows)).await.unwrap();
        assert_eq!(stats, CommitStats { upserted: 7_000, deleted: 0, fenced: 13_000 });
        let held = w.rows_by_key(&schema()).unwrap();
        assert_eq!(held.len(), 7_000);
        assert_eq!(held[&key("k0")].values[2], Value::Float(14_000.0));
        assert_eq!(held[&key("k6999")].values[2], Value::Float(13_999.0));
    }

    #[tokio::test]
    async fn batches_that_cannot_commit_are_rejected_and_leave_nothing() {
        let w = fresh().await;
        let mut short = row(RowOp::Upsert, "a", 1, 1.0);
        short.values.pop();
        let mut null_key = row(RowOp::Upsert, "a", 1, 1.0);
        null_key.values[1] = Value::Null;
        for rows in [vec![row(RowOp::Upsert, "b", 1, 1.0), short], vec![null_key]] {
            let e = w.commit(&batch(rows)).await.unwrap_err();
            assert!(matches!(&e, WarehouseError::Rejected(m) if m == &m.to_lowercase()), "{e:?}");
        }
        let mut keyless = (*schema()).clone();
        keyless.key.clear();
        let mut clash = (*schema()).clone();
        clash.columns[5].name = "_VERSION".into();
        let mut unnamed = (*schema()).clone();
        unnamed.columns[2].name = String::new();
        for t in [keyless, clash, unnamed] {
            let e = w.ensure_table(&t).await.unwrap_err();
            assert!(matches!(e, WarehouseError::Rejected(_)), "{e:?}");
            let e = w.commit(&Batch { table: Arc::new(t), rows: vec![] }).await.unwrap_err();
            assert!(matches!(e, WarehouseError::Rejected(_)), "{e:?}");
        }
        assert_eq!(w.count(&schema().name).unwrap(), 0);
        assert_eq!(w.commit(&batch(vec![])).await.unwrap(), CommitStats::default());
    }

    #[test]
    fn busy_and_locked_are_unavailable_everything_else_rejected() {
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert!(matches!(classify(failure(rusqlite::ffi::SQLITE_BUSY)), WarehouseError::Unavailable(_)));
        assert!(matches!(classify(failure(rusqlite::ffi::SQLITE_LOCKED)), WarehouseError::Unavailable(_)));
        assert!(matches!(classify(failure(rusqlite::ffi::SQLITE_CONSTRAINT)), WarehouseError::Rejected(_)));
    }

    #[tokio::test]
    async fn a_file_in_wal_mode_reports_another_writer_as_unavailable() {
        let path = std::env::temp_dir().join(format!("tributary-sqlite-{}.db", std::process::id()));
        let w = SqliteWarehouse::open(&path).unwrap();
        let mode: String = lock(&w.conn).query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        w.ensure_table(&schema()).await.unwrap();
        w.set_busy_timeout(Duration::from_millis(50)).unwrap();

        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let b = batch(vec![row(RowOp::Upsert, "a", 1, 1.0)]);
        let e = w.commit(&b).await.unwrap_err();
        assert!(matches!(&e, WarehouseError::Unavailable(_)) && e.is_retryable(), "{e:?}");
        other.execute_batch("ROLLBACK").unwrap();
        // The retry goes through, and the rows are visible to another connection.
        assert_eq!(w.commit(&b).await.unwrap().upserted, 1);
        let n: i64 = other.query_row("SELECT count(*) FROM \"t \"\"quoted\"\"; --\"", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        drop((w, other));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// SplitMix64: a random-looking but fixed function of its input.
    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// The change of key (`k`, `part`) at `version`. A change is identified by (key, version):
    /// its op and values are random (drawn from `salt`) but the same every time it is replayed.
    fn change(salt: u64, (k, part, version): (u8, u8, u64)) -> Row {
        let h = mix(salt ^ (u64::from(k) << 40 | u64::from(part) << 32 | version));
        let notes = ["", "it's", "\"x\"; DROP TABLE t; --", "✓ ünï", "NULL"];
        Row {
            op: if h.is_multiple_of(4) { RowOp::Delete } else { RowOp::Upsert },
            version: Version::from_text(format!("{version:03}")),
            values: vec![
                Value::Text(format!("k{k}")),
                Value::Int(i64::from(part) - 1),
                if (h >> 2).is_multiple_of(5) {
                    Value::Null
                } else {
                    Value::Float(((h >> 16) as i64 - (1 << 47)) as f64 / 1024.0)
                },
                Value::Bool((h >> 5) & 1 == 1),
                Value::Timestamp((h >> 20) as i64 - (1 << 43)),
                match (h >> 8) % 7 {
                    5 => Value::Null,
                    6 => Value::Text(h.to_string()),
                    i => Value::Text(notes[i as usize].into()),
                },
            ],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of batches, replayed and reordered, leaves SQLite equal to the in-memory
        /// model given the same sequence (same stats at every commit, same rows), and equal to
        /// the order-free oracle: per key, the change of the highest version — held if an
        /// upsert, a tombstone if a delete.
        #[test]
        fn sqlite_matches_the_model_and_the_oracle(
            salt in any::<u64>(),
            batches in proptest::collection::vec(
                proptest::collection::vec((0..3u8, 0..2u8, 0..12u64), 0..8), 1..8),
            replays in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
            ranks in proptest::collection::vec(any::<u16>(), 16),
        ) {
            let t = schema();
            let batches: Vec<Vec<Row>> =
                batches.into_iter().map(|b| b.into_iter().map(|c| change(salt, c)).collect()).collect();
            let mut sequence = batches.clone();
            sequence.extend(replays.iter().map(|i| batches[i.index(batches.len())].clone()));
            let mut order: Vec<usize> = (0..sequence.len()).collect();
            order.sort_by_key(|&i| ranks[i % ranks.len()]);

            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (w, m) = rt.block_on(async {
                let w = fresh().await;
                let m = MemoryWarehouse::new();
                for &i in &order {
                    let b = Batch { table: t.clone(), rows: sequence[i].clone() };
                    let (got, want) = (w.commit(&b).await.unwrap(), m.commit(&b).await.unwrap());
                    assert_eq!(got, want, "stats of {:?}", b.rows);
                }
                (w, m)
            });
            let held = w.rows_by_key(&t).unwrap();
            prop_assert_eq!(&held, &m.rows(&t.name));

            let mut best: BTreeMap<String, &Row> = BTreeMap::new();
            for r in batches.iter().flatten() {
                let k = MemoryWarehouse::key_of(&t.key_of(r));
                if best.get(&k).is_none_or(|old| old.version < r.version) {
                    best.insert(k, r);
                }
            }
            let rows: BTreeMap<String, StoredRow> = best
                .iter()
                .filter(|(_, r)| r.op == RowOp::Upsert)
                .map(|(k, r)| (k.clone(), StoredRow { version: r.version.clone(), values: r.values.clone() }))
                .collect();
            let tombstones: BTreeMap<String, Version> = best
                .iter()
                .filter(|(_, r)| r.op == RowOp::Delete)
                .map(|(k, r)| (k.clone(), r.version.clone()))
                .collect();
            prop_assert_eq!(held, rows);
            prop_assert_eq!(w.tombstones(&t).unwrap(), tombstones);
        }
    }
}
