//! The embedded warehouse: SQLite (bundled) behind the `Warehouse` port. Each batch commits in
//! one `BEGIN IMMEDIATE` transaction running the shared upsert SQL of `merge_sql.rs`.

use crate::merge_sql::{create_tables, Dialect, MergeSql, OP_DELETE, OP_UPSERT};
use async_trait::async_trait;
use proto::{Batch, CommitStats, RowOp, TableSchema, Value, Warehouse, WarehouseError};
use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use rusqlite::{Connection, ErrorCode, ToSql, TransactionBehavior};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// SQLite's default limit on bound parameters per statement.
const MAX_PARAMS: usize = 32_766;

pub struct SqliteWarehouse {
    conn: Arc<Mutex<Connection>>,
    /// Statements per table, built once.
    sql: Mutex<HashMap<String, Arc<MergeSql>>>,
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
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => WarehouseError::Unavailable(e.to_string()),
        _ => WarehouseError::Rejected(e.to_string().to_lowercase()),
    }
}

impl SqliteWarehouse {
    /// Opens (or creates) a database file in WAL mode.
    pub fn open(path: &Path) -> Result<Self, WarehouseError> {
        let conn = Connection::open(path).map_err(classify)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(classify)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(classify)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(classify)?;
        Ok(Self::from_connection(conn))
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self, WarehouseError> {
        Ok(Self::from_connection(Connection::open_in_memory().map_err(classify)?))
    }

    fn from_connection(conn: Connection) -> Self {
        Self { conn: Arc::new(Mutex::new(conn)), sql: Mutex::new(HashMap::new()) }
    }

    fn statements(&self, table: &TableSchema) -> Result<Arc<MergeSql>, WarehouseError> {
        let mut cache = self.sql.lock().unwrap();
        if let Some(sql) = cache.get(&table.name) {
            return Ok(sql.clone());
        }
        let sql = Arc::new(MergeSql::new(table, Dialect::Sqlite).map_err(|e| WarehouseError::Rejected(e.to_string()))?);
        cache.insert(table.name.clone(), sql.clone());
        Ok(sql)
    }

    /// Every row of a table as (values in column order, version), for checks and tests.
    pub fn rows(&self, table: &TableSchema) -> Result<Vec<(Vec<Value>, String)>, WarehouseError> {
        let conn = self.conn.lock().unwrap();
        let cols: Vec<String> = table
            .columns
            .iter()
            .map(|c| crate::merge_sql::quote_ident(&c.name))
            .chain([crate::merge_sql::quote_ident(&table.version_column)])
            .collect::<Result<_, _>>()
            .map_err(|e| WarehouseError::Rejected(e.to_string()))?;
        let name = crate::merge_sql::quote_ident(&table.name).map_err(|e| WarehouseError::Rejected(e.to_string()))?;
        let mut stmt = conn.prepare(&format!("SELECT {} FROM {name}", cols.join(", "))).map_err(classify)?;
        let n = table.columns.len();
        let rows = stmt
            .query_map([], |r| {
                let mut values = Vec::with_capacity(n);
                for (i, c) in table.columns.iter().enumerate() {
                    let v: SqlValue = r.get(i)?;
                    values.push(match (v, c.ty) {
                        (SqlValue::Null, _) => Value::Null,
                        (SqlValue::Integer(i), proto::SqlType::Boolean) => Value::Bool(i != 0),
                        (SqlValue::Integer(i), proto::SqlType::Timestamp) => Value::Timestamp(i),
                        (SqlValue::Integer(i), _) => Value::Int(i),
                        (SqlValue::Real(f), _) => Value::Float(f),
                        (SqlValue::Text(s), _) => Value::Text(s),
                        (SqlValue::Blob(b), _) => Value::Text(String::from_utf8_lossy(&b).into_owned()),
                    });
                }
                Ok((values, r.get::<_, String>(n)?))
            })
            .map_err(classify)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        Ok(rows)
    }
}

fn commit_blocking(conn: &mut Connection, sql: &MergeSql, batch: &Batch) -> Result<CommitStats, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(&sql.create_stage, [])?;
    if let Some(index) = &sql.index_stage {
        tx.execute(index, [])?;
    }
    let per_insert = sql.rows_per_insert(MAX_PARAMS);
    let ords: Vec<Value> = (0..batch.rows.len()).map(|i| Value::Int(i as i64)).collect();
    let versions: Vec<Value> = batch.rows.iter().map(|r| Value::Text(r.version.as_str().to_owned())).collect();
    let upsert = Value::Text(OP_UPSERT.to_owned());
    let delete = Value::Text(OP_DELETE.to_owned());
    for (chunk_index, chunk) in batch.rows.chunks(per_insert).enumerate() {
        let mut stmt = tx.prepare_cached(&sql.insert_stage(chunk.len()))?;
        let mut params: Vec<Param<'_>> = Vec::with_capacity(chunk.len() * sql.params_per_row());
        for (i, row) in chunk.iter().enumerate() {
            let at = chunk_index * per_insert + i;
            params.extend(row.values.iter().map(Param));
            params.push(Param(&versions[at]));
            params.push(Param(if row.op == RowOp::Delete { &delete } else { &upsert }));
            params.push(Param(&ords[at]));
        }
        stmt.execute(rusqlite::params_from_iter(params.iter()))?;
    }
    let mut stats = CommitStats::default();
    stats.fenced += tx.execute(&sql.dedupe_stage, [])? as u64;
    stats.fenced += tx.execute(&sql.fence_by_target, [])? as u64;
    stats.fenced += tx.execute(&sql.fence_by_tombstone, [])? as u64;
    tx.execute(&sql.delete_replaced, [])?;
    tx.execute(&sql.delete_replaced_tombstones, [])?;
    stats.upserted = tx.execute(&sql.insert_upserts, [])? as u64;
    stats.deleted = tx.execute(&sql.insert_tombstones, [])? as u64;
    tx.execute(&sql.drop_stage, [])?;
    tx.commit()?;
    Ok(stats)
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        let ddl = create_tables(table, Dialect::Sqlite).map_err(|e| WarehouseError::Rejected(e.to_string()))?;
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap();
            for statement in ddl {
                conn.execute(&statement, []).map_err(classify)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| WarehouseError::Unavailable(e.to_string()))?
    }

    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        for row in &batch.rows {
            if row.values.len() != batch.table.columns.len() {
                return Err(WarehouseError::Rejected(format!(
                    "row has {} values for the {} columns of {}",
                    row.values.len(),
                    batch.table.columns.len(),
                    batch.table.name
                )));
            }
        }
        let sql = self.statements(&batch.table)?;
        let conn = self.conn.clone();
        let batch = batch.clone();
        tokio::task::spawn_blocking(move || commit_blocking(&mut conn.lock().unwrap(), &sql, &batch).map_err(classify))
            .await
            .map_err(|e| WarehouseError::Unavailable(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::memory::MemoryWarehouse;
    use proto::{Column, Row, SqlType, Version};
    use std::collections::BTreeMap;

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            name: "t \"quoted\"".into(),
            columns: vec![
                Column { name: "k".into(), ty: SqlType::Text },
                Column { name: "v".into(), ty: SqlType::BigInt },
                Column { name: "note".into(), ty: SqlType::Text },
            ],
            key: vec![0],
            version_column: "_version".into(),
        })
    }

    fn row(op: RowOp, key: &str, version: u64, value: i64) -> Row {
        Row {
            op,
            version: Version::from_text(format!("{version:08}")),
            values: vec![Value::Text(key.into()), Value::Int(value), Value::Text(format!("it's {value}; --"))],
        }
    }

    fn batch(rows: Vec<Row>) -> Batch {
        Batch { table: schema(), rows }
    }

    /// key → (value, version), read back from SQLite.
    fn table(w: &SqliteWarehouse) -> BTreeMap<String, (Value, String)> {
        w.rows(&schema())
            .unwrap()
            .into_iter()
            .map(|(v, version)| match &v[0] {
                Value::Text(k) => (k.clone(), (v[1].clone(), version)),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn memory_table(m: &MemoryWarehouse) -> BTreeMap<String, (Value, String)> {
        m.rows(&schema().name)
            .values()
            .map(|r| match &r.values[0] {
                Value::Text(k) => (k.clone(), (r.values[1].clone(), r.version.as_str().to_owned())),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn replays_change_nothing_and_deletes_are_remembered() {
        let w = SqliteWarehouse::in_memory().unwrap();
        w.ensure_table(&schema()).await.unwrap();
        let b =
            batch(vec![row(RowOp::Upsert, "a", 1, 10), row(RowOp::Upsert, "a", 2, 20), row(RowOp::Upsert, "b", 1, 5)]);
        let stats = w.commit(&b).await.unwrap();
        assert_eq!((stats.upserted, stats.fenced), (2, 1));
        let before = table(&w);
        let again = w.commit(&b).await.unwrap();
        assert_eq!((again.upserted, again.fenced), (0, 3));
        assert_eq!(table(&w), before);
        assert_eq!(before["a"].0, Value::Int(20));

        w.commit(&batch(vec![row(RowOp::Delete, "a", 3, 0)])).await.unwrap();
        assert!(!table(&w).contains_key("a"));
        // An older upsert replayed after the delete must not bring the row back…
        w.commit(&batch(vec![row(RowOp::Upsert, "a", 2, 20)])).await.unwrap();
        assert!(!table(&w).contains_key("a"));
        // …a newer one does.
        w.commit(&batch(vec![row(RowOp::Upsert, "a", 4, 40)])).await.unwrap();
        assert_eq!(table(&w)["a"].0, Value::Int(40));
    }

    #[tokio::test]
    async fn large_batches_are_staged_in_chunks() {
        let w = SqliteWarehouse::in_memory().unwrap();
        w.ensure_table(&schema()).await.unwrap();
        let rows: Vec<Row> = (0..20_000).map(|i| row(RowOp::Upsert, &format!("k{i}"), 1, i)).collect();
        assert_eq!(w.commit(&batch(rows)).await.unwrap().upserted, 20_000);
        assert_eq!(table(&w).len(), 20_000);
    }

    /// A change is identified by (key, version): the same pair always carries the same content,
    /// as a replayed record does.
    fn arb_row() -> impl Strategy<Value = Row> {
        (0..6u8, 0..20u64).prop_map(|(k, version)| {
            let seed = u64::from(k) * 31 + version * 7;
            let op = if seed.is_multiple_of(4) { RowOp::Delete } else { RowOp::Upsert };
            row(op, &format!("k{k}"), version, (seed % 1000) as i64)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of batches, with replays and reordering, leaves SQLite equal to the
        /// in-memory model and to the order-free oracle: per key, the highest version wins.
        #[test]
        fn sqlite_matches_the_model_and_the_oracle(
            batches in proptest::collection::vec(proptest::collection::vec(arb_row(), 1..8), 1..8),
            replays in proptest::collection::vec((any::<proptest::sample::Index>(), any::<proptest::sample::Index>()), 0..6),
        ) {
            let mut sequence: Vec<Vec<Row>> = batches.clone();
            for (which, at) in replays {
                let b = sequence[which.index(sequence.len())].clone();
                let pos = at.index(sequence.len() + 1);
                sequence.insert(pos, b);
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (sqlite, memory) = rt.block_on(async {
                let w = SqliteWarehouse::in_memory().unwrap();
                let m = MemoryWarehouse::new();
                w.ensure_table(&schema()).await.unwrap();
                for rows in &sequence {
                    w.commit(&batch(rows.clone())).await.unwrap();
                    m.commit(&batch(rows.clone())).await.unwrap();
                }
                (table(&w), memory_table(&m))
            });
            prop_assert_eq!(&sqlite, &memory);
            // The oracle, whatever the order: per key the change with the highest version;
            // present if it is an upsert, absent if a delete.
            let mut best: BTreeMap<String, Row> = BTreeMap::new();
            for r in batches.iter().flatten() {
                let Value::Text(k) = &r.values[0] else { unreachable!() };
                if best.get(k).is_none_or(|old| old.version < r.version) {
                    best.insert(k.clone(), r.clone());
                }
            }
            let expected: BTreeMap<String, String> = best
                .into_iter()
                .filter(|(_, r)| r.op == RowOp::Upsert)
                .map(|(k, r)| (k, r.version.as_str().to_owned()))
                .collect();
            let got: BTreeMap<String, String> = sqlite.into_iter().map(|(k, (_, v))| (k, v)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
