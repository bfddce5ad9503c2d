//! The lease row (every KCL attribute), the conditions a write may expect and the changes it
//! makes. The lease table's rows are leases, plus one leader-lock row that uses the same shape.

use crate::checkpoint::Checkpoint;
use crate::ids::{ShardId, WorkerId};
use serde::{Deserialize, Serialize};

/// Inclusive range of 128-bit hash keys a shard serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HashKeyRange {
    pub start: u128,
    pub end: u128,
}

impl HashKeyRange {
    pub const FULL: HashKeyRange = HashKeyRange { start: 0, end: u128::MAX };

    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }
}

/// What a row of the lease table stands for (`entityType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntityType {
    /// A shard lease (KCL's rows have no entityType: they read back as this).
    Lease,
    /// The leader lock: `leaseOwner` is the leader, `leaseCounter` its heartbeat.
    Leader,
}

/// One row of the lease table, with KCL's attribute names in the comments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// `leaseKey`: the shard id (or the leader row's key).
    pub key: String,
    /// `entityType`.
    pub entity: EntityType,
    /// `leaseOwner`; `None` when unassigned.
    pub owner: Option<WorkerId>,
    /// `leaseCounter`: bumped by every write; the optimistic-concurrency token.
    pub counter: u64,
    /// `checkpoint` + `checkpointSubSequenceNumber`.
    pub checkpoint: Checkpoint,
    /// `pendingCheckpoint` + `pendingCheckpointSubSequenceNumber`.
    pub pending_checkpoint: Option<Checkpoint>,
    /// `pendingCheckpointState`.
    pub pending_checkpoint_state: Option<Vec<u8>>,
    /// `ownerSwitchesSinceCheckpoint`.
    pub owner_switches_since_checkpoint: u64,
    /// `parentShardId` (a string set: one parent after a split, two after a merge).
    pub parent_shard_ids: Vec<ShardId>,
    /// `childShardIds`, written when the shard ends.
    pub child_shard_ids: Vec<ShardId>,
    /// `startingHashKey` / `endingHashKey`.
    pub hash_range: Option<HashKeyRange>,
    /// `checkpointOwner`: the previous owner while a graceful handoff is in progress.
    pub checkpoint_owner: Option<WorkerId>,
    /// `throughputKBps`: the load the assignment balances on.
    pub throughput_kbps: Option<f64>,
}

impl Lease {
    /// A fresh, unowned lease for a shard.
    pub fn for_shard(
        shard: &ShardId,
        parents: Vec<ShardId>,
        hash_range: Option<HashKeyRange>,
        start: Checkpoint,
    ) -> Self {
        Self {
            key: shard.as_str().to_owned(),
            entity: EntityType::Lease,
            owner: None,
            counter: 0,
            checkpoint: start,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: parents,
            child_shard_ids: Vec::new(),
            hash_range,
            checkpoint_owner: None,
            throughput_kbps: None,
        }
    }

    /// The leader-lock row, held by `owner`.
    pub fn leader_lock(key: &str, owner: &WorkerId) -> Self {
        Self {
            entity: EntityType::Leader,
            owner: Some(owner.clone()),
            ..Self::for_shard(&ShardId::new(key), Vec::new(), None, Checkpoint::TrimHorizon)
        }
    }

    pub fn shard_id(&self) -> ShardId {
        ShardId::new(self.key.clone())
    }

    pub fn is_finished(&self) -> bool {
        self.checkpoint.is_shard_end()
    }

    pub fn is_owned_by(&self, worker: &WorkerId) -> bool {
        self.owner.as_ref() == Some(worker)
    }

    /// Applies a change as the table does on a successful conditional write.
    pub fn apply(&mut self, change: &LeaseChange) {
        self.counter += 1;
        if let Some(owner) = &change.owner {
            if owner != &self.owner {
                self.owner_switches_since_checkpoint += 1;
            }
            self.owner = owner.clone();
        }
        if let Some(cp) = &change.checkpoint {
            self.checkpoint = cp.clone();
            self.owner_switches_since_checkpoint = 0;
            self.pending_checkpoint = None;
            self.pending_checkpoint_state = None;
        }
        if let Some(cpo) = &change.checkpoint_owner {
            self.checkpoint_owner = cpo.clone();
        }
        if let Some(children) = &change.child_shard_ids {
            self.child_shard_ids = children.clone();
        }
        if let Some(t) = change.throughput_kbps {
            self.throughput_kbps = Some(t);
        }
    }
}

/// The condition of a write. `None` fields are not checked; `Some(None)` means "attribute absent".
/// Every update also requires the row to exist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expect {
    pub counter: Option<u64>,
    pub owner: Option<Option<WorkerId>>,
    pub checkpoint_owner: Option<Option<WorkerId>>,
}

impl Expect {
    /// The row is exactly as this observer last read it (counter and owner).
    pub fn unchanged(lease: &Lease) -> Self {
        Self { counter: Some(lease.counter), owner: Some(lease.owner.clone()), checkpoint_owner: None }
    }

    pub fn holds_for(&self, lease: &Lease) -> bool {
        self.counter.is_none_or(|c| c == lease.counter)
            && self.owner.as_ref().is_none_or(|o| o == &lease.owner)
            && self.checkpoint_owner.as_ref().is_none_or(|o| o == &lease.checkpoint_owner)
    }
}

/// What a write changes. The counter always goes up by one; changing the owner counts an owner
/// switch; a new checkpoint resets that count and clears the pending checkpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseChange {
    pub owner: Option<Option<WorkerId>>,
    pub checkpoint: Option<Checkpoint>,
    pub checkpoint_owner: Option<Option<WorkerId>>,
    pub child_shard_ids: Option<Vec<ShardId>>,
    pub throughput_kbps: Option<f64>,
}

/// A node's heartbeat row: the leader declares a node dead when this counter has not moved for
/// `failover_time` on the leader's own clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub id: WorkerId,
    pub counter: u64,
    /// The node is stopping: it keeps its leases until it releases them, but gets no new ones.
    pub draining: bool,
}
