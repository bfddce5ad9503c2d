//! Reference data in memory, for joins on the hot path.
//!
//! Items are projected on load to the attributes the pipeline reads, kept in a fixed attribute
//! order with scalars and short text inline, and up to two attributes inside the hash table's
//! slot: a join reads an attribute by index and, for the usual narrow dimension row, touches
//! nothing but the slot.
//!
//! Each reference table is a snapshot behind an atomic pointer: a base map plus a small overlay
//! of recent changes. Readers take the snapshot (`ReferenceCache::snapshot`) and look up in it,
//! never waiting on a writer; the pipeline takes it once per run of records, so a lookup costs
//! no atomic operation. A full load swaps in a new base; a change feed's changes go into a new
//! overlay (copying only the overlay), and the overlay is folded into the base once it grows
//! past an eighth of it. Those rebuilds run on the runtime's blocking pool.

use arc_swap::ArcSwap;
use proto::{Item, ReferenceChange, ReferenceError};
use serde_json::Value as Json;

/// Keys come from the operator's own tables; ahash is fast and still seeded per process.
type HashMap<K, V> = ahash::AHashMap<K, V>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Snapshot {
    base: Arc<HashMap<Key, StoredRow>>,
    /// What `base` holds (`table_bytes`), counted when it was built.
    base_bytes: usize,
    /// `None` marks a removed key.
    overlay: HashMap<Key, Option<StoredRow>>,
    items: usize,
    /// `base_bytes` and what the overlay holds.
    bytes: usize,
}

/// Keys of up to 24 bytes are held inside the hash table's slot: a lookup compares them
/// without following a pointer to the heap (one cache miss fewer per join).
type Key = compact_str::CompactString;

/// A reference item projected to the cache's attributes, in their order; up to two of them
/// are held in the hash slot itself (one cache miss per join instead of two).
type StoredRow = smallvec::SmallVec<[RefValue; 2]>;

/// One attribute of a cached item. Text of up to 24 bytes is held inline, so reading a joined
/// column does not follow a pointer out of the row.
#[derive(Clone, Debug, PartialEq)]
pub enum RefValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Text(compact_str::CompactString),
    /// Arrays and objects, kept as JSON for paths into them.
    Nested(Box<Json>),
}

impl From<&Json> for RefValue {
    fn from(v: &Json) -> Self {
        match v {
            Json::Null => RefValue::Null,
            Json::Bool(b) => RefValue::Bool(*b),
            Json::Number(n) => RefValue::Number(n.clone()),
            Json::String(s) => RefValue::Text(s.as_str().into()),
            nested => RefValue::Nested(Box::new(nested.clone())),
        }
    }
}

impl RefValue {
    pub fn to_json(&self) -> Json {
        match self {
            RefValue::Null => Json::Null,
            RefValue::Bool(b) => Json::Bool(*b),
            RefValue::Number(n) => Json::Number(n.clone()),
            RefValue::Text(s) => Json::String(s.to_string()),
            RefValue::Nested(v) => (**v).clone(),
        }
    }
}

/// What a row holds outside its slot: attributes beyond the two inline ones, text longer than
/// 24 bytes, nested JSON (estimated from its text).
fn row_heap(row: &StoredRow) -> usize {
    let heap = |v: &RefValue| match v {
        RefValue::Text(s) if s.is_heap_allocated() => s.len(),
        RefValue::Null | RefValue::Bool(_) | RefValue::Number(_) | RefValue::Text(_) => 0,
        RefValue::Nested(v) => v.to_string().len() + 64,
    };
    let spilled = if row.spilled() { row.capacity() * std::mem::size_of::<RefValue>() } else { 0 };
    spilled + row.iter().map(heap).sum::<usize>()
}

/// What a hash table of rows holds, estimated: its slots (a power-of-two count, each with a
/// control byte) and each entry's heap. Checked against the heap the benchmark's allocator
/// counts (`cargo bench -p worker --bench pipeline`).
fn table_bytes<V>(table: &HashMap<Key, V>, heap: impl Fn(&V) -> usize) -> usize {
    let slots = if table.capacity() == 0 { 0 } else { (table.capacity() * 8 / 7).next_power_of_two() };
    let key_heap = |k: &Key| if k.is_heap_allocated() { k.len() } else { 0 };
    slots * (std::mem::size_of::<(Key, V)>() + 1) + table.iter().map(|(k, v)| key_heap(k) + heap(v)).sum::<usize>()
}

impl Snapshot {
    fn get(&self, key: &str) -> Option<&[RefValue]> {
        if !self.overlay.is_empty() {
            if let Some(entry) = self.overlay.get(key) {
                return entry.as_deref();
            }
        }
        self.base.get(key).map(|row| &row[..])
    }
}

/// A reference table's contents at one moment.
pub struct RefSnapshot(Arc<Snapshot>);

impl RefSnapshot {
    /// The item under `key`, its attributes in the cache's order.
    pub fn get(&self, key: &str) -> Option<&[RefValue]> {
        self.0.get(key)
    }
}

/// One reference table's cache.
pub struct ReferenceCache {
    pub name: String,
    /// How often a table without a change feed is reloaded (and a failed refresh retried): what
    /// bounds `age()` while the source answers.
    pub refresh_interval: Duration,
    attributes: Vec<String>,
    snapshot: ArcSwap<Snapshot>,
    /// When the cache last refreshed successfully (a load, or a read of its change feed).
    fresh_at: std::sync::Mutex<tokio::time::Instant>,
    refresh_failures: AtomicU64,
}

impl ReferenceCache {
    /// A cache keeping `attributes` of each item.
    pub fn new(name: &str, attributes: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            refresh_interval: Duration::ZERO,
            attributes,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            fresh_at: std::sync::Mutex::new(tokio::time::Instant::now()),
            refresh_failures: AtomicU64::new(0),
        }
    }

    /// Time since the cache last refreshed successfully: what `refresh_interval` (or the
    /// change feed's poll interval) bounds while the source answers.
    pub fn age(&self) -> Duration {
        self.fresh_at.lock().expect("never poisoned").elapsed()
    }

    /// Refreshes that failed since start (each leaves the last snapshot in service).
    pub fn refresh_failures(&self) -> u64 {
        self.refresh_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn refreshed(&self, ok: bool) {
        if ok {
            *self.fresh_at.lock().expect("never poisoned") = tokio::time::Instant::now();
        } else {
            self.refresh_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Where an attribute sits in the rows `get` returns.
    pub fn attribute(&self, name: &str) -> Option<usize> {
        self.attributes.iter().position(|a| a == name)
    }

    fn project(&self, item: &Item) -> StoredRow {
        self.attributes.iter().map(|a| item.get(a).map(RefValue::from).unwrap_or(RefValue::Null)).collect()
    }

    /// One attribute of one item (tests, diagnostics).
    pub fn get_attr(&self, key: &str, attribute: &str) -> Option<Json> {
        Some(self.get(key)?[self.attribute(attribute)?].to_json())
    }

    /// One item, from the current snapshot (tests, diagnostics; joins use `snapshot`).
    pub fn get(&self, key: &str) -> Option<Vec<RefValue>> {
        self.snapshot.load().get(key).map(<[RefValue]>::to_vec)
    }

    /// The current contents, for any number of lookups: later changes do not show in it.
    pub fn snapshot(&self) -> RefSnapshot {
        RefSnapshot(self.snapshot.load_full())
    }

    pub fn len(&self) -> usize {
        self.snapshot.load().items
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.snapshot.load().bytes
    }

    /// Swaps in a full load.
    pub fn replace(&self, items: Vec<(String, Item)>) {
        let base: HashMap<Key, StoredRow> = items.into_iter().map(|(k, i)| (Key::from(k), self.project(&i))).collect();
        let (items, bytes) = (base.len(), table_bytes(&base, row_heap));
        self.snapshot.store(Arc::new(Snapshot {
            base: Arc::new(base),
            base_bytes: bytes,
            overlay: HashMap::default(),
            items,
            bytes,
        }));
    }

    /// Applies changes from a change feed, unless they would make the table hold more than
    /// `max_items` (then nothing is applied: a cache that dropped rows would join wrong values).
    pub fn apply(&self, changes: Vec<ReferenceChange>, max_items: usize) -> Result<(), CacheError> {
        if changes.is_empty() {
            return Ok(());
        }
        let current = self.snapshot.load_full();
        let mut overlay = current.overlay.clone();
        let mut items = current.items;
        for change in changes {
            let (key, new) = match change {
                ReferenceChange::Put { key, item } => (Key::from(key), Some(self.project(&item))),
                ReferenceChange::Remove { key } => (Key::from(key), None),
            };
            let existed = match overlay.get(&key) {
                Some(entry) => entry.is_some(),
                None => current.base.contains_key(&key),
            };
            items = items + usize::from(new.is_some()) - usize::from(existed);
            overlay.insert(key, new);
        }
        if items > max_items {
            return Err(CacheError::TooLarge { name: self.name.clone(), items, max: max_items });
        }
        let next = if overlay.len() > 1024.max(current.base.len() / 8) {
            let mut base = (*current.base).clone();
            for (key, entry) in overlay {
                match entry {
                    Some(item) => base.insert(key, item),
                    None => base.remove(&key),
                };
            }
            let bytes = table_bytes(&base, row_heap);
            Snapshot { base: Arc::new(base), base_bytes: bytes, overlay: HashMap::default(), items, bytes }
        } else {
            let bytes = current.base_bytes + table_bytes(&overlay, |e| e.as_ref().map_or(0, row_heap));
            Snapshot { base: current.base.clone(), base_bytes: current.base_bytes, overlay, items, bytes }
        };
        self.snapshot.store(Arc::new(next));
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reference {name}: {source}")]
    Source { name: String, source: ReferenceError },
    #[error("reference {name} holds {items} items, more than its max_items {max}")]
    TooLarge { name: String, items: usize, max: usize },
    #[error("reference refreshers could not start: {0}")]
    Refreshers(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(name: &str) -> Item {
        json!({ "name": name }).as_object().unwrap().clone()
    }

    #[test]
    fn overlay_changes_and_compaction_keep_lookups_right() {
        // Longer than the 24 bytes held inline: the estimate grows by its text.
        const LONG: &str = "changed to a name of more than 24 bytes";
        let cache = ReferenceCache::new("c", vec!["name".into()]);
        cache.replace((0..100).map(|i| (format!("k{i}"), item(&format!("v{i}")))).collect());
        assert_eq!(cache.len(), 100);
        let before = cache.bytes();
        cache
            .apply(
                vec![
                    ReferenceChange::Put { key: "k1".into(), item: item(LONG) },
                    ReferenceChange::Remove { key: "k2".into() },
                    ReferenceChange::Put { key: "new".into(), item: item("n") },
                ],
                usize::MAX,
            )
            .unwrap();
        assert_eq!(cache.get_attr("k1", "name").unwrap(), LONG);
        assert!(cache.get("k2").is_none());
        assert_eq!(cache.get_attr("new", "name").unwrap(), "n");
        assert_eq!(cache.len(), 100);
        // The base is unchanged; the overlay adds its slots and the long text.
        assert!(cache.bytes() >= before + LONG.len() + 3 * 80, "{before} → {}", cache.bytes());
        // Enough changes to fold the overlay into the base.
        let fold: Vec<ReferenceChange> =
            (0..2000).map(|i| ReferenceChange::Put { key: format!("x{i}"), item: item("x") }).collect();
        // Past max_items nothing is applied.
        let err = cache.apply(fold.clone(), 2099).unwrap_err();
        assert!(err.to_string().contains("2100 items, more than its max_items 2099"), "{err}");
        assert_eq!(cache.len(), 100);
        cache.apply(fold, 2100).unwrap();
        assert_eq!(cache.len(), 2100);
        assert_eq!(cache.get_attr("k1", "name").unwrap(), LONG);
        assert!(cache.get("k2").is_none());
        assert_eq!(cache.get_attr("x1999", "name").unwrap(), "x");
        // Folded: the new base counted whole (2,100 rows in 4,096 slots, one long text).
        assert_eq!(cache.bytes(), 4096 * (std::mem::size_of::<(Key, StoredRow)>() + 1) + LONG.len());
    }

    #[test]
    fn memory_estimate_counts_slots_spilled_rows_and_long_text() {
        let cache = ReferenceCache::new("c", vec!["a".into(), "b".into(), "c".into()]);
        let long_key = "k".repeat(30);
        let item = json!({"a": 1, "b": "x".repeat(40), "c": null}).as_object().unwrap().clone();
        cache.replace(vec![(long_key, item)]);
        // One entry in a 4-slot table; a 3-attribute row spills to the heap (capacity 4 or 3).
        let slot = std::mem::size_of::<(Key, StoredRow)>() + 1;
        let spilled = cache.snapshot.load().base.values().next().unwrap().capacity() * std::mem::size_of::<RefValue>();
        assert_eq!(cache.bytes(), 4 * slot + 30 + spilled + 40);
    }
}
