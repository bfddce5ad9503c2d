//! In-memory reference tables whose items can change while the cluster runs, with a change
//! feed (like DynamoDB Streams) that can be switched off to exercise full refreshes.

use crate::reference_source::{Item, ReferenceChange, ReferenceError, ReferenceSource, Snapshot};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Table {
    items: BTreeMap<String, Item>,
    log: Vec<ReferenceChange>,
    has_feed: bool,
}

#[derive(Clone, Default)]
pub struct MemoryReferenceSource {
    tables: Arc<Mutex<BTreeMap<String, Table>>>,
}

impl MemoryReferenceSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates (or empties) a table; `change_feed` says whether `changes` answers for it.
    pub fn create_table(&self, table: &str, change_feed: bool) {
        self.tables.lock().unwrap().insert(table.to_owned(), Table { has_feed: change_feed, ..Table::default() });
    }

    pub fn put(&self, table: &str, key: &str, item: Item) {
        let mut tables = self.tables.lock().unwrap();
        let t = tables.entry(table.to_owned()).or_default();
        t.items.insert(key.to_owned(), item.clone());
        t.log.push(ReferenceChange::Put { key: key.to_owned(), item });
    }

    pub fn remove(&self, table: &str, key: &str) {
        let mut tables = self.tables.lock().unwrap();
        let t = tables.entry(table.to_owned()).or_default();
        t.items.remove(key);
        t.log.push(ReferenceChange::Remove { key: key.to_owned() });
    }
}

#[async_trait]
impl ReferenceSource for MemoryReferenceSource {
    async fn load(&self, table: &str, _key_attribute: &str) -> Result<Snapshot, ReferenceError> {
        let tables = self.tables.lock().unwrap();
        let t = tables.get(table).ok_or_else(|| ReferenceError::NotFound(table.to_owned()))?;
        Ok(Snapshot {
            items: t.items.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cursor: t.has_feed.then(|| t.log.len().to_string()),
        })
    }

    async fn changes(
        &self,
        table: &str,
        _key_attribute: &str,
        cursor: &str,
    ) -> Result<Option<(Vec<ReferenceChange>, String)>, ReferenceError> {
        let tables = self.tables.lock().unwrap();
        let t = tables.get(table).ok_or_else(|| ReferenceError::NotFound(table.to_owned()))?;
        if !t.has_feed {
            return Ok(None);
        }
        let from: usize = cursor.parse().map_err(|_| ReferenceError::CursorExpired)?;
        if from > t.log.len() {
            return Err(ReferenceError::CursorExpired);
        }
        Ok(Some((t.log[from..].to_vec(), t.log.len().to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(v: &str) -> Item {
        json!({"name": v}).as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn load_then_follow_changes() {
        let src = MemoryReferenceSource::new();
        src.create_table("country", true);
        src.put("country", "FR", item("France"));
        let snap = src.load("country", "code").await.unwrap();
        assert_eq!(snap.items.len(), 1);
        src.put("country", "FR", item("République française"));
        src.remove("country", "FR");
        let (changes, cursor) = src.changes("country", "code", snap.cursor.as_deref().unwrap()).await.unwrap().unwrap();
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[1], ReferenceChange::Remove { key } if key == "FR"));
        assert!(src.changes("country", "code", &cursor).await.unwrap().unwrap().0.is_empty());
        src.create_table("plain", false);
        assert!(src.changes("plain", "code", "0").await.unwrap().is_none());
    }
}
