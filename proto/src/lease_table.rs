//! The `LeaseTable` port: a DynamoDB-like table of leases with conditional writes, plus the
//! membership row (the nodes' heartbeats, the leader's claim, the change counter).

use crate::ids::WorkerId;
use crate::lease::{Expect, Lease, LeaseChange, Membership};
use async_trait::async_trait;

/// How a lease-table call failed. `Ambiguous` means the write may or may not have been applied
/// (a timeout after sending): callers re-read before deciding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("conditional check failed")]
    ConditionFailed,
    #[error("throttled by the lease table")]
    Throttled,
    #[error("lease table call outcome unknown: {0}")]
    Ambiguous(String),
    #[error("lease table unavailable: {0}")]
    Unavailable(String),
    #[error("lease table error: {0}")]
    Fatal(String),
}

impl LeaseError {
    /// Whether retrying the same call can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LeaseError::Throttled | LeaseError::Ambiguous(_) | LeaseError::Unavailable(_))
    }

    /// A short name of the failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseError::ConditionFailed => "condition_failed",
            LeaseError::Throttled => "throttled",
            LeaseError::Ambiguous(_) => "ambiguous",
            LeaseError::Unavailable(_) => "unavailable",
            LeaseError::Fatal(_) => "fatal",
        }
    }
}

#[async_trait]
pub trait LeaseTable: Send + Sync + 'static {
    /// Creates a row if no row has its key (`attribute_not_exists(leaseKey)`).
    async fn create(&self, lease: &Lease) -> Result<(), LeaseError>;
    /// Strongly consistent read of one row.
    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError>;
    /// Every lease row.
    async fn scan(&self) -> Result<Vec<Lease>, LeaseError>;
    /// The lease rows owned by `owner` (the `LeaseOwnerToLeaseKeyIndex` GSI; may lag slightly).
    async fn owned_by(&self, owner: &WorkerId) -> Result<Vec<Lease>, LeaseError>;
    /// Conditional update; returns the row as written.
    async fn update(&self, key: &str, expect: &Expect, change: &LeaseChange) -> Result<Lease, LeaseError>;
    /// Conditional delete.
    async fn delete(&self, key: &str, expect: &Expect) -> Result<(), LeaseError>;

    /// Writes a node's heartbeat: creates its entry when `expected` is `None` (fails if it
    /// exists), else requires the stored counter to equal `expected`; the counter becomes
    /// `expected + 1`. Returns the membership row as written.
    async fn heartbeat(
        &self,
        worker: &WorkerId,
        expected: Option<u64>,
        draining: bool,
    ) -> Result<Membership, LeaseError>;
    /// The membership row: strongly consistent when `consistent`, else an eventually consistent
    /// read (half the price; it may not show the last second's writes yet).
    async fn membership(&self, consistent: bool) -> Result<Membership, LeaseError>;
    /// Removes a node's entry if its counter is still `expected` (a dead node's row).
    async fn remove_worker(&self, worker: &WorkerId, expected: u64) -> Result<(), LeaseError>;
    /// Makes `me` (which must have a heartbeat entry) the leader if leadership is still as
    /// observed: `None`, nobody claims it; `Some((leader, counter))`, `leader` claims it and its
    /// heartbeat counter is still `counter` (`None`: its entry is gone). Returns the row as
    /// written.
    async fn claim_leadership(
        &self,
        me: &WorkerId,
        observed: Option<(&WorkerId, Option<u64>)>,
    ) -> Result<Membership, LeaseError>;
    /// Gives up leadership if `me` holds it (so another node claims it at once), counting a
    /// change.
    async fn resign_leadership(&self, me: &WorkerId) -> Result<(), LeaseError>;
    /// Counts a change of who should consume a lease (`Membership::changes`).
    async fn announce_change(&self) -> Result<(), LeaseError>;
}
