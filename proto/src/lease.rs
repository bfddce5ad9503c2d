//! The lease row (every KCL attribute), the conditions a write may expect and the changes it
//! makes, and the membership row. Lease-shaped rows are leases, or an earlier version's leader
//! lock (read back as such, never written by this one).

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
    /// An earlier version's leader lock (leadership now lives in the membership row).
    Leader,
}

/// A lease's key: the shard id alone in a single-stream table, `<stream>:<shard id>` in a
/// multi-stream one (KCL's multi-stream key, `<stream>` being `account:stream:creationEpoch`).
pub fn lease_key(stream: Option<&str>, shard: &ShardId) -> String {
    match stream {
        Some(stream) => format!("{stream}:{}", shard.as_str()),
        None => shard.as_str().to_owned(),
    }
}

/// The stream identifier of a lease key (everything before its last `:`); `None` for a
/// single-stream key. Shard ids hold no `:`.
pub fn stream_of(key: &str) -> Option<&str> {
    key.rsplit_once(':').map(|(stream, _)| stream)
}

/// One row of the lease table, with KCL's attribute names in the comments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// `leaseKey`: the shard id, `account:stream:creationEpoch:shardId` in a multi-stream table
    /// (or the leader row's key).
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

    /// A leader-lock row as earlier versions wrote it, held by `owner`.
    pub fn leader_lock(key: &str, owner: &WorkerId) -> Self {
        Self {
            entity: EntityType::Leader,
            owner: Some(owner.clone()),
            ..Self::for_shard(&ShardId::new(key), Vec::new(), None, Checkpoint::TrimHorizon)
        }
    }

    /// A fresh, unowned lease for a shard of `stream` (a multi-stream table's stream identifier,
    /// `account:stream:creationEpoch`; `None` in a single-stream table).
    pub fn for_stream_shard(
        stream: Option<&str>,
        shard: &ShardId,
        parents: Vec<ShardId>,
        hash_range: Option<HashKeyRange>,
        start: Checkpoint,
    ) -> Self {
        Self { key: lease_key(stream, shard), ..Self::for_shard(shard, parents, hash_range, start) }
    }

    /// The lease's identity among the consumers, events and metrics of a node: its key (the shard
    /// id in a single-stream table; `account:stream:epoch:shardId` in a multi-stream one).
    pub fn shard_id(&self) -> ShardId {
        ShardId::new(self.key.clone())
    }

    /// The stream identifier of a multi-stream lease; `None` for a single-stream one.
    pub fn stream(&self) -> Option<&str> {
        stream_of(&self.key)
    }

    /// The Kinesis shard the lease is for (what the stream calls it).
    pub fn stream_shard_id(&self) -> ShardId {
        ShardId::new(self.key.rsplit_once(':').map_or(self.key.as_str(), |(_, shard)| shard))
    }

    /// The key of the lease of another shard of the same stream (a parent or a child: KCL keeps
    /// them as shard ids).
    pub fn sibling_key(&self, shard: &ShardId) -> String {
        lease_key(self.stream(), shard)
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

/// The membership row: every node's heartbeat, the leader's claim and the change counter. A
/// node reads it every assignment cycle (one small read): who is alive, who leads, and whether
/// any lease changed hands since it last looked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// By worker id.
    pub workers: Vec<WorkerRow>,
    /// The node that claimed leadership. It leads while its own heartbeat keeps moving; another
    /// node claims it once that heartbeat stood still for `failover_time`.
    pub leader: Option<WorkerId>,
    /// Counts changes of who should consume a lease (the leader's moves, a node's release, a
    /// shard's end): nodes query their leases again when it moved, not on every cycle.
    pub changes: u64,
}

impl Membership {
    /// `worker`'s heartbeat row.
    pub fn row(&self, worker: &WorkerId) -> Option<&WorkerRow> {
        self.workers.iter().find(|w| &w.id == worker)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::{Position, SequenceNumber};

    fn at(seq: u128) -> Checkpoint {
        Checkpoint::At(Position::new(SequenceNumber::from_u128(seq), 0))
    }

    fn shard0() -> Lease {
        Lease::for_shard(&ShardId::numbered(0), vec![], None, Checkpoint::TrimHorizon)
    }

    #[test]
    fn hash_key_range_is_inclusive_at_both_ends() {
        let r = HashKeyRange { start: 10, end: 20 };
        assert!(r.contains(10));
        assert!(r.contains(15));
        assert!(r.contains(20));
        assert!(!r.contains(9));
        assert!(!r.contains(21));
        assert!(HashKeyRange::FULL.contains(0) && HashKeyRange::FULL.contains(u128::MAX));
    }

    #[test]
    fn multi_stream_keys_name_their_stream_and_shard() {
        let shard = ShardId::new("shardId-000000000007");
        let single = Lease::for_shard(&shard, vec![], None, Checkpoint::TrimHorizon);
        assert_eq!((single.key.as_str(), single.stream()), ("shardId-000000000007", None));
        assert_eq!(single.sibling_key(&ShardId::new("shardId-000000000001")), "shardId-000000000001");
        let stream = "123456789012:orders:1700000000";
        let multi = Lease::for_stream_shard(Some(stream), &shard, vec![], None, Checkpoint::TrimHorizon);
        assert_eq!(multi.key, "123456789012:orders:1700000000:shardId-000000000007");
        assert_eq!((multi.stream(), multi.stream_shard_id()), (Some(stream), shard.clone()));
        assert_eq!(single.stream_shard_id(), shard);
        assert_eq!(
            multi.sibling_key(&ShardId::new("shardId-000000000001")),
            "123456789012:orders:1700000000:shardId-000000000001"
        );
    }

    #[test]
    fn leader_lock_is_a_leader_row_held_by_its_owner() {
        let a = WorkerId::new("a");
        let lock = Lease::leader_lock("leader", &a);
        assert_eq!(lock.entity, EntityType::Leader);
        assert_eq!(lock.owner, Some(a));
        assert_eq!((lock.key.as_str(), lock.counter), ("leader", 0));
    }

    #[test]
    fn only_shard_end_is_finished() {
        let mut lease = shard0();
        for cp in [Checkpoint::TrimHorizon, Checkpoint::Latest, Checkpoint::AtTimestamp, at(5)] {
            lease.checkpoint = cp.clone();
            assert!(!lease.is_finished(), "{cp:?}");
        }
        lease.checkpoint = Checkpoint::ShardEnd;
        assert!(lease.is_finished());
    }

    #[test]
    fn is_owned_by_only_the_owner() {
        let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
        let mut lease = shard0();
        assert!(!lease.is_owned_by(&a), "an unowned lease");
        lease.owner = Some(a.clone());
        assert!(lease.is_owned_by(&a));
        assert!(!lease.is_owned_by(&b));
    }

    #[test]
    fn unchanged_holds_until_the_row_is_written() {
        let a = WorkerId::new("a");
        let mut lease = shard0();
        lease.counter = 3;
        lease.owner = Some(a.clone());
        let expect = Expect::unchanged(&lease);
        assert_eq!(expect, Expect { counter: Some(3), owner: Some(Some(a.clone())), checkpoint_owner: None });
        assert!(expect.holds_for(&lease));
        let mut written = lease.clone();
        written.apply(&LeaseChange::default());
        assert!(!expect.holds_for(&written), "the counter moved");
        let mut other_owner = lease.clone();
        other_owner.owner = Some(WorkerId::new("b"));
        assert!(!expect.holds_for(&other_owner), "same counter, another owner");
        let absent = Expect { checkpoint_owner: Some(None), ..Expect::default() };
        assert!(absent.holds_for(&lease));
        lease.checkpoint_owner = Some(a);
        assert!(!absent.holds_for(&lease), "checkpointOwner present");
    }

    #[test]
    fn apply_counts_writes_owner_switches_and_resets_them_on_checkpoint() {
        let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
        let mut lease = shard0();
        lease.counter = 4;
        lease.owner = Some(a.clone());
        lease.owner_switches_since_checkpoint = 2;
        lease.pending_checkpoint = Some(at(9));
        lease.pending_checkpoint_state = Some(vec![1, 2]);

        lease.apply(&LeaseChange { owner: Some(Some(a.clone())), ..Default::default() });
        assert_eq!((lease.counter, lease.owner_switches_since_checkpoint), (5, 2), "same owner: no switch");

        lease.apply(&LeaseChange { owner: Some(Some(b.clone())), ..Default::default() });
        assert_eq!((lease.counter, lease.owner.clone(), lease.owner_switches_since_checkpoint), (6, Some(b), 3));

        lease.apply(&LeaseChange::default());
        assert_eq!((lease.counter, lease.owner_switches_since_checkpoint), (7, 3), "no owner change");

        lease.apply(&LeaseChange { checkpoint: Some(at(12)), ..Default::default() });
        assert_eq!((lease.counter, lease.checkpoint.clone(), lease.owner_switches_since_checkpoint), (8, at(12), 0));
        assert_eq!((lease.pending_checkpoint.clone(), lease.pending_checkpoint_state.clone()), (None, None));

        lease.apply(&LeaseChange {
            owner: Some(None),
            checkpoint_owner: Some(Some(a.clone())),
            child_shard_ids: Some(vec![ShardId::numbered(3)]),
            throughput_kbps: Some(1.5),
            ..Default::default()
        });
        assert_eq!((lease.counter, lease.owner.clone(), lease.owner_switches_since_checkpoint), (9, None, 1));
        assert_eq!(
            (lease.checkpoint_owner.clone(), lease.child_shard_ids.clone(), lease.throughput_kbps),
            (Some(a), vec![ShardId::numbered(3)], Some(1.5))
        );
    }
}
