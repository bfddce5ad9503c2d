//! The `Warehouse` port: commits one batch in one transaction with the version-fenced upsert.

use crate::row::{Batch, TableSchema};
use async_trait::async_trait;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarehouseError {
    /// Nothing was committed; the same batch may be retried.
    #[error("warehouse unavailable: {0}")]
    Unavailable(String),
    /// The commit may or may not have happened (a reply lost); retrying is safe because the
    /// upsert is fenced by version.
    #[error("warehouse commit outcome unknown: {0}")]
    Ambiguous(String),
    /// The batch can never commit as it is (schema mismatch, bad value).
    #[error("warehouse rejected the batch: {0}")]
    Rejected(String),
}

impl WarehouseError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, WarehouseError::Unavailable(_) | WarehouseError::Ambiguous(_))
    }

    /// A short name of the failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            WarehouseError::Unavailable(_) => "unavailable",
            WarehouseError::Ambiguous(_) => "ambiguous",
            WarehouseError::Rejected(_) => "rejected",
        }
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Rows written (inserted or replaced) in the target.
    pub upserted: u64,
    pub deleted: u64,
    /// Rows dropped because the target already held an equal or newer version.
    pub fenced: u64,
}

#[async_trait]
pub trait Warehouse: Send + Sync + 'static {
    /// Creates the table (and its bookkeeping) if absent.
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError>;
    /// Stage → latest per key → drop staged rows not newer than the target → delete older target
    /// rows → insert the newer upserts → remember deletes, in one transaction.
    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError>;
    /// One pass over the table's tombstones: those not seen before are stamped with the
    /// engine's clock, and those stamped more than `retention` ago are removed (so a tombstone
    /// survives at least one pass, and lives at least `retention` after its delete committed).
    /// Returns how many were removed.
    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError>;
}
