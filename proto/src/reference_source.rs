//! The `ReferenceSource` port: a keyed table of reference data, loaded whole and then followed
//! by its changes when the source has a change feed.

use async_trait::async_trait;
use serde_json::{Map, Value as Json};

/// One item of a reference table.
pub type Item = Map<String, Json>;

#[derive(Clone, Debug, PartialEq)]
pub enum ReferenceChange {
    Put { key: String, item: Item },
    Remove { key: String },
}

/// A full load: every item, and where the change feed stands (if there is one).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub items: Vec<(String, Item)>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("reference table {0} not found")]
    NotFound(String),
    #[error("reference source unavailable: {0}")]
    Unavailable(String),
    /// The change feed moved past the cursor: do a full load.
    #[error("change feed cursor expired")]
    CursorExpired,
}

impl ReferenceError {
    /// A short name of the failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ReferenceError::NotFound(_) => "not_found",
            ReferenceError::Unavailable(_) => "unavailable",
            ReferenceError::CursorExpired => "cursor_expired",
        }
    }
}

#[async_trait]
pub trait ReferenceSource: Send + Sync + 'static {
    async fn load(&self, table: &str, key_attribute: &str) -> Result<Snapshot, ReferenceError>;
    /// Changes after `cursor`, and the new cursor. `Ok(None)` when the table has no change feed
    /// (the cache then refreshes by full loads).
    async fn changes(
        &self,
        table: &str,
        key_attribute: &str,
        cursor: &str,
    ) -> Result<Option<(Vec<ReferenceChange>, String)>, ReferenceError>;
}
