//! The lease protocol: create, renew, take, assign, hand off, checkpoint, release. Every write is
//! conditional, and every failed or ambiguous write is settled by re-reading the row, so a write
//! that landed but whose reply was lost is recognised as ours instead of losing the lease.

use crate::checkpoint::Checkpoint;
use crate::ids::WorkerId;
use crate::lease::{Expect, Lease, LeaseChange, WorkerRow};
use crate::lease_table::{LeaseError, LeaseTable};
use crate::retry::RetryPolicy;
use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// The row changed under us: another node owns it now, or it is gone.
    #[error("lease {key} lost (now {current:?})")]
    Lost { key: String, current: Option<Box<Lease>> },
    /// A checkpoint behind the stored one was refused.
    #[error("checkpoint for {key} would go backwards: {from:?} -> {to:?}")]
    Backward { key: String, from: Checkpoint, to: Checkpoint },
    /// This node's heartbeat row is gone or moved: the leader declared it dead.
    #[error("worker {worker} was declared dead")]
    Evicted { worker: WorkerId },
    #[error(transparent)]
    Table(#[from] LeaseError),
}

/// Lease operations over a table, with one retry policy.
#[derive(Clone)]
pub struct LeaseProtocol<'a> {
    pub table: &'a dyn LeaseTable,
    pub retry: &'a RetryPolicy,
}

impl<'a> LeaseProtocol<'a> {
    pub fn new(table: &'a dyn LeaseTable, retry: &'a RetryPolicy) -> Self {
        Self { table, retry }
    }

    /// Creates a lease unless one exists. `Ok(true)` when this call created it.
    pub async fn create(&self, lease: &Lease) -> Result<bool, ProtocolError> {
        match self.retry.run(LeaseError::is_retryable, || self.table.create(lease)).await {
            Ok(()) => Ok(true),
            Err(LeaseError::ConditionFailed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Lease>, ProtocolError> {
        Ok(self.retry.run(LeaseError::is_retryable, || self.table.get(key)).await?)
    }

    pub async fn scan(&self) -> Result<Vec<Lease>, ProtocolError> {
        Ok(self.retry.run(LeaseError::is_retryable, || self.table.scan()).await?)
    }

    pub async fn owned_by(&self, owner: &WorkerId) -> Result<Vec<Lease>, ProtocolError> {
        Ok(self.retry.run(LeaseError::is_retryable, || self.table.owned_by(owner)).await?)
    }

    /// Renews a lease this node holds (counter + 1), e.g. the leader lock.
    pub async fn renew(&self, lease: &Lease, me: &WorkerId) -> Result<Lease, ProtocolError> {
        let expect = Expect { counter: Some(lease.counter), owner: Some(Some(me.clone())), checkpoint_owner: None };
        self.write(&lease.key, &expect, &LeaseChange::default()).await
    }

    /// Takes a lease whose counter this node observed unchanged (expired or unowned).
    pub async fn take(&self, lease: &Lease, me: &WorkerId) -> Result<Lease, ProtocolError> {
        self.assign(lease, me).await
    }

    /// Gives a lease to `to` at once (its owner is gone or it had none); clears any handoff.
    pub async fn assign(&self, lease: &Lease, to: &WorkerId) -> Result<Lease, ProtocolError> {
        let change = LeaseChange { owner: Some(Some(to.clone())), checkpoint_owner: Some(None), ..Default::default() };
        self.write(&lease.key, &Expect::unchanged(lease), &change).await
    }

    /// Starts a graceful handoff from the live owner to `to`: `to` becomes the owner but waits
    /// until the previous owner, recorded in `checkpointOwner`, has checkpointed and cleared it.
    pub async fn hand_off(&self, lease: &Lease, to: &WorkerId) -> Result<Lease, ProtocolError> {
        let expect = Expect { checkpoint_owner: Some(None), ..Expect::unchanged(lease) };
        let change = LeaseChange {
            owner: Some(Some(to.clone())),
            checkpoint_owner: Some(lease.owner.clone()),
            ..Default::default()
        };
        self.write(&lease.key, &expect, &change).await
    }

    /// Records progress on a lease this node owns. Refuses to go backwards.
    pub async fn checkpoint(&self, lease: &Lease, me: &WorkerId, to: Checkpoint) -> Result<Lease, ProtocolError> {
        self.forward_only(lease, &to)?;
        let expect =
            Expect { counter: Some(lease.counter), owner: Some(Some(me.clone())), checkpoint_owner: Some(None) };
        self.write(&lease.key, &expect, &LeaseChange { checkpoint: Some(to), ..Default::default() }).await
    }

    /// Gives up a lease this node owns after a final checkpoint (graceful stop).
    pub async fn release(&self, lease: &Lease, me: &WorkerId, to: Checkpoint) -> Result<Lease, ProtocolError> {
        self.forward_only(lease, &to)?;
        let expect =
            Expect { counter: Some(lease.counter), owner: Some(Some(me.clone())), checkpoint_owner: Some(None) };
        let change = LeaseChange { owner: Some(None), checkpoint: Some(to), ..Default::default() };
        self.write(&lease.key, &expect, &change).await
    }

    /// The previous owner's side of a handoff: final checkpoint, then the new owner may start.
    pub async fn finish_handoff(&self, lease: &Lease, me: &WorkerId, to: Checkpoint) -> Result<Lease, ProtocolError> {
        self.forward_only(lease, &to)?;
        let expect = Expect { counter: Some(lease.counter), owner: None, checkpoint_owner: Some(Some(me.clone())) };
        let change = LeaseChange { checkpoint: Some(to), checkpoint_owner: Some(None), ..Default::default() };
        self.write(&lease.key, &expect, &change).await
    }

    /// Checkpoints SHARD_END with the shard's children (`childShardIds`) in one write. The
    /// library writes it itself once every record of the shard committed.
    pub async fn end_shard(
        &self,
        lease: &Lease,
        me: &WorkerId,
        children: Vec<crate::ShardId>,
    ) -> Result<Lease, ProtocolError> {
        let expect = Expect { counter: Some(lease.counter), owner: Some(Some(me.clone())), checkpoint_owner: None };
        let change = LeaseChange {
            checkpoint: Some(Checkpoint::ShardEnd),
            child_shard_ids: Some(children),
            ..Default::default()
        };
        self.write(&lease.key, &expect, &change).await
    }

    fn forward_only(&self, lease: &Lease, to: &Checkpoint) -> Result<(), ProtocolError> {
        match to.progress_cmp(&lease.checkpoint) {
            Some(Ordering::Less) | None => {
                Err(ProtocolError::Backward { key: lease.key.clone(), from: lease.checkpoint.clone(), to: to.clone() })
            }
            _ => Ok(()),
        }
    }

    /// The one conditional write. Throttles are retried; a failed condition or an unknown
    /// outcome is settled by a consistent re-read: our change is there (it landed), the row is
    /// untouched (try again), or someone else changed it (lost).
    async fn write(&self, key: &str, expect: &Expect, change: &LeaseChange) -> Result<Lease, ProtocolError> {
        let mut attempt = 1;
        loop {
            let outcome = self.table.update(key, expect, change).await;
            let retry_allowed = attempt < self.retry.max_attempts;
            match outcome {
                Ok(row) => return Ok(row),
                Err(LeaseError::Throttled | LeaseError::Unavailable(_)) if retry_allowed => {}
                Err(LeaseError::ConditionFailed | LeaseError::Ambiguous(_)) => {
                    let current = self.get(key).await?;
                    match current {
                        Some(row) if landed(expect, change, &row) => return Ok(row),
                        Some(row) if expect.holds_for(&row) && retry_allowed => {}
                        Some(row) if expect.holds_for(&row) => {
                            return Err(LeaseError::Unavailable("write did not land after retries".into()).into())
                        }
                        current => {
                            return Err(ProtocolError::Lost { key: key.to_owned(), current: current.map(Box::new) })
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(self.retry.backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Registers or renews this node's heartbeat row. `local` is the counter this node last
    /// wrote (`None` at start). A row that vanished means the leader declared this node dead.
    /// `draining` tells the leader to assign nothing more to this node.
    pub async fn heartbeat(
        &self,
        me: &WorkerId,
        local: Option<u64>,
        draining: bool,
    ) -> Result<WorkerRow, ProtocolError> {
        let mut expected = local;
        let mut attempt = 1;
        loop {
            let retry_allowed = attempt < self.retry.max_attempts;
            match self.table.heartbeat(me, expected, draining).await {
                Ok(row) => return Ok(row),
                Err(LeaseError::Throttled | LeaseError::Unavailable(_)) if retry_allowed => {}
                Err(LeaseError::ConditionFailed | LeaseError::Ambiguous(_)) => {
                    let rows = self.retry.run(LeaseError::is_retryable, || self.table.workers()).await?;
                    let current = rows.into_iter().find(|r| &r.id == me);
                    match (expected, current) {
                        (None, None) if retry_allowed => {}
                        // Our row exists (a restart under the same id, or our create landed):
                        // carry on from its counter.
                        (None, Some(row)) => expected = Some(row.counter),
                        (Some(e), Some(row)) if row.counter == e + 1 => return Ok(row),
                        (Some(e), Some(row)) if row.counter == e && retry_allowed => {}
                        _ => return Err(ProtocolError::Evicted { worker: me.clone() }),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(self.retry.backoff(attempt)).await;
            attempt += 1;
        }
    }
}

/// Whether `row` is what our write would have produced.
fn landed(expect: &Expect, change: &LeaseChange, row: &Lease) -> bool {
    let Some(before) = expect.counter else { return false };
    row.counter == before + 1
        && match &change.owner {
            Some(o) => o == &row.owner,
            // A write that keeps the owner only landed if the owner is still the expected one.
            None => expect.owner.as_ref().is_none_or(|o| o == &row.owner),
        }
        && change.checkpoint.as_ref().is_none_or(|c| c == &row.checkpoint)
        && change.checkpoint_owner.as_ref().is_none_or(|o| o == &row.checkpoint_owner)
        && change.child_shard_ids.as_ref().is_none_or(|c| c == &row.child_shard_ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{FaultConfig, FaultyLeaseTable, MemoryLeaseTable};
    use crate::{Position, SequenceNumber, ShardId};
    use std::sync::Arc;

    fn at(seq: u128) -> Checkpoint {
        Checkpoint::At(Position::new(SequenceNumber::from_u128(seq), 0))
    }

    async fn owned_lease(table: &dyn LeaseTable, retry: &RetryPolicy, owner: &WorkerId) -> Lease {
        let p = LeaseProtocol::new(table, retry);
        let lease = Lease::for_shard(&ShardId::numbered(0), vec![], None, Checkpoint::TrimHorizon);
        assert!(p.create(&lease).await.unwrap());
        assert!(!p.create(&lease).await.unwrap(), "a second create finds the row");
        p.assign(&lease, owner).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_lost_its_lease_cannot_checkpoint() {
        let table = MemoryLeaseTable::new();
        let retry = RetryPolicy::default();
        let p = LeaseProtocol::new(&table, &retry);
        let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
        let held = owned_lease(&table, &retry, &a).await;
        let held = p.checkpoint(&held, &a, at(5)).await.unwrap();
        assert_eq!(held.checkpoint, at(5));
        // b takes it (a was seen expired); a's next checkpoint must fail.
        let taken = p.take(&held, &b).await.unwrap();
        assert_eq!(taken.owner_switches_since_checkpoint, 1);
        assert!(matches!(p.checkpoint(&held, &a, at(9)).await, Err(ProtocolError::Lost { .. })));
        assert!(matches!(p.release(&held, &a, at(9)).await, Err(ProtocolError::Lost { .. })));
        assert_eq!(table.get(&held.key).await.unwrap().unwrap().checkpoint, at(5));
    }

    #[tokio::test(start_paused = true)]
    async fn checkpoints_never_go_backwards() {
        let table = MemoryLeaseTable::new();
        let retry = RetryPolicy::default();
        let p = LeaseProtocol::new(&table, &retry);
        let a = WorkerId::new("a");
        let lease = owned_lease(&table, &retry, &a).await;
        let lease = p.checkpoint(&lease, &a, at(10)).await.unwrap();
        assert!(matches!(p.checkpoint(&lease, &a, at(9)).await, Err(ProtocolError::Backward { .. })));
        assert!(matches!(p.checkpoint(&lease, &a, Checkpoint::TrimHorizon).await, Err(ProtocolError::Backward { .. })));
        let ended = p.end_shard(&lease, &a, vec![ShardId::numbered(1)]).await.unwrap();
        assert_eq!((ended.checkpoint, ended.child_shard_ids), (Checkpoint::ShardEnd, vec![ShardId::numbered(1)]));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_landed_but_reported_failure_are_recognised() {
        // Every write lands and then reports ConditionFailed or Ambiguous, as a client retry of a
        // landed write does: the protocol re-reads and keeps the lease.
        let inner = MemoryLeaseTable::new();
        let retry = RetryPolicy::default();
        let a = WorkerId::new("a");
        let lease = owned_lease(&inner, &retry, &a).await;
        let faulty =
            FaultyLeaseTable::new(Arc::new(inner.clone()), FaultConfig { fail_before: 0.0, fail_after: 1.0 }, 7);
        let p = LeaseProtocol::new(&faulty, &retry);
        let renewed = p.renew(&lease, &a).await.unwrap();
        assert_eq!(renewed.counter, lease.counter + 1);
        let cp = p.checkpoint(&renewed, &a, at(3)).await.unwrap();
        assert_eq!(cp.checkpoint, at(3));
        let hb = p.heartbeat(&a, None, false).await.unwrap();
        let hb2 = p.heartbeat(&a, Some(hb.counter), false).await.unwrap();
        assert_eq!(hb2.counter, hb.counter + 1);
        assert_eq!(inner.stats().writes, 3 + 2 + 2, "create + assign + renew + checkpoint + 2 heartbeats, once each");
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_writes_are_retried_and_a_vanished_heartbeat_row_means_evicted() {
        let inner = MemoryLeaseTable::new();
        let retry = RetryPolicy { max_attempts: 50, ..RetryPolicy::default() };
        let faulty =
            FaultyLeaseTable::new(Arc::new(inner.clone()), FaultConfig { fail_before: 0.5, fail_after: 0.0 }, 3);
        let p = LeaseProtocol::new(&faulty, &retry);
        let a = WorkerId::new("a");
        let hb = p.heartbeat(&a, None, false).await.unwrap();
        inner.remove_worker(&a, hb.counter).await.unwrap();
        assert!(matches!(p.heartbeat(&a, Some(hb.counter), false).await, Err(ProtocolError::Evicted { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn handoff_waits_for_the_previous_owner() {
        let table = MemoryLeaseTable::new();
        let retry = RetryPolicy::default();
        let p = LeaseProtocol::new(&table, &retry);
        let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
        let lease = owned_lease(&table, &retry, &a).await;
        let moving = p.hand_off(&lease, &b).await.unwrap();
        assert_eq!((moving.owner.clone(), moving.checkpoint_owner.clone()), (Some(b.clone()), Some(a.clone())));
        // The new owner cannot checkpoint while the handoff is open; the old owner finishes it.
        assert!(matches!(p.checkpoint(&moving, &b, at(1)).await, Err(ProtocolError::Lost { .. })));
        let done = p.finish_handoff(&moving, &a, at(4)).await.unwrap();
        assert_eq!((done.checkpoint_owner.clone(), done.checkpoint.clone()), (None, at(4)));
        p.checkpoint(&done, &b, at(6)).await.unwrap();
    }
}
