//! An in-memory warehouse applying the same version-fenced upsert as the SQL sinks, and
//! counting how often each (key, version) was written so tests can prove none was applied twice.

use crate::row::{Batch, RowOp, TableSchema, Value};
use crate::sequence::Version;
use crate::warehouse::{CommitStats, Warehouse, WarehouseError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A row as the warehouse holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRow {
    pub version: Version,
    pub values: Vec<Value>,
}

#[derive(Default)]
struct Table {
    rows: BTreeMap<String, StoredRow>,
    deleted: BTreeMap<String, Version>,
    /// When a pruning pass first saw each tombstone.
    stamped: BTreeMap<String, tokio::time::Instant>,
    applied: BTreeMap<(String, Version), u32>,
}

#[derive(Clone, Default)]
pub struct MemoryWarehouse {
    tables: Arc<Mutex<BTreeMap<String, Table>>>,
}

fn key_text(values: &[&Value]) -> String {
    serde_json::to_string(values).expect("values serialize")
}

impl MemoryWarehouse {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rows of a table, by key (the key columns' JSON).
    pub fn rows(&self, table: &str) -> BTreeMap<String, StoredRow> {
        self.tables.lock().unwrap().get(table).map(|t| t.rows.clone()).unwrap_or_default()
    }

    /// How many tombstones the table holds.
    pub fn tombstones(&self, table: &str) -> usize {
        self.tables.lock().unwrap().get(table).map_or(0, |t| t.deleted.len())
    }

    /// (key, version) pairs written more than once: must stay empty.
    pub fn applied_twice(&self, table: &str) -> Vec<(String, Version, u32)> {
        let tables = self.tables.lock().unwrap();
        let Some(t) = tables.get(table) else { return Vec::new() };
        t.applied.iter().filter(|(_, n)| **n > 1).map(|((k, v), n)| (k.clone(), v.clone(), *n)).collect()
    }

    /// The key text used by [`MemoryWarehouse::rows`] for given key values.
    pub fn key_of(values: &[&Value]) -> String {
        key_text(values)
    }
}

#[async_trait]
impl Warehouse for MemoryWarehouse {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        self.tables.lock().unwrap().entry(table.name.clone()).or_default();
        Ok(())
    }

    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        let mut tables = self.tables.lock().unwrap();
        let table = tables.entry(batch.table.name.clone()).or_default();
        let mut stats = CommitStats::default();
        let latest = batch.latest_per_key();
        stats.fenced += (batch.rows.len() - latest.len()) as u64;
        for row in latest {
            if row.values.len() != batch.table.columns.len() {
                return Err(WarehouseError::Rejected(format!(
                    "row has {} values for {} columns",
                    row.values.len(),
                    batch.table.columns.len()
                )));
            }
            let key = key_text(&batch.table.key_of(row));
            let held = table.rows.get(&key).map(|r| &r.version).or(table.deleted.get(&key));
            if held.is_some_and(|v| v >= &row.version) {
                stats.fenced += 1;
                continue;
            }
            table.rows.remove(&key);
            table.deleted.remove(&key);
            table.stamped.remove(&key);
            *table.applied.entry((key.clone(), row.version.clone())).or_default() += 1;
            match row.op {
                RowOp::Upsert => {
                    table.rows.insert(key, StoredRow { version: row.version.clone(), values: row.values.clone() });
                    stats.upserted += 1;
                }
                RowOp::Delete => {
                    table.deleted.insert(key, row.version.clone());
                    stats.deleted += 1;
                }
            }
        }
        Ok(stats)
    }

    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        let now = tokio::time::Instant::now();
        let mut tables = self.tables.lock().unwrap();
        let Some(t) = tables.get_mut(&table.name) else { return Ok(0) };
        let expired: Vec<String> =
            t.stamped.iter().filter(|(_, at)| now.duration_since(**at) > retention).map(|(k, _)| k.clone()).collect();
        for key in &expired {
            t.deleted.remove(key);
            t.stamped.remove(key);
        }
        let fresh: Vec<String> = t.deleted.keys().filter(|k| !t.stamped.contains_key(*k)).cloned().collect();
        t.stamped.extend(fresh.into_iter().map(|k| (k, now)));
        Ok(expired.len() as u64)
    }
}
