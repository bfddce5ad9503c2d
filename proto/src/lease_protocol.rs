//! The lease protocol: create, renew, take, assign, hand off, checkpoint, release. Every write is
//! conditional, and every failed or ambiguous write is settled by re-reading the row, so a write
//! that landed but whose reply was lost is recognised as ours instead of losing the lease.

use crate::checkpoint::Checkpoint;
use crate::ids::WorkerId;
use crate::lease::{Expect, Lease, LeaseChange, Membership};
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
        let mut backoff = self.retry.backoff();
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
            tokio::time::sleep(backoff.next_wait()).await;
            attempt += 1;
        }
    }

    /// Registers or renews this node's heartbeat entry and returns the membership row as
    /// written. `local` is the counter this node last wrote (`None` at start). An entry that
    /// vanished means the leader declared this node dead. `draining` tells the leader to assign
    /// nothing more to this node.
    pub async fn heartbeat(
        &self,
        me: &WorkerId,
        local: Option<u64>,
        draining: bool,
    ) -> Result<Membership, ProtocolError> {
        let mut expected = local;
        let mut attempt = 1;
        let mut backoff = self.retry.backoff();
        loop {
            let retry_allowed = attempt < self.retry.max_attempts;
            match self.table.heartbeat(me, expected, draining).await {
                Ok(row) => return Ok(row),
                Err(LeaseError::Throttled | LeaseError::Unavailable(_)) if retry_allowed => {}
                Err(LeaseError::ConditionFailed | LeaseError::Ambiguous(_)) => {
                    let members = self.membership(true).await?;
                    let current = members.row(me).map(|r| r.counter);
                    match (expected, current) {
                        (None, None) if retry_allowed => {}
                        // Our row exists (a restart under the same id, or our create landed):
                        // carry on from its counter.
                        (None, Some(counter)) => expected = Some(counter),
                        (Some(e), Some(counter)) if counter == e + 1 => return Ok(members),
                        (Some(e), Some(counter)) if counter == e && retry_allowed => {}
                        // Still as we left it: the table did not take the write, nobody evicted
                        // us. Unavailable, as for any write, so the caller's grace applies.
                        (None, None) => return Err(LeaseError::Unavailable("heartbeat did not land".into()).into()),
                        (Some(e), Some(counter)) if counter == e => {
                            return Err(LeaseError::Unavailable("heartbeat did not land after retries".into()).into())
                        }
                        _ => return Err(ProtocolError::Evicted { worker: me.clone() }),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(backoff.next_wait()).await;
            attempt += 1;
        }
    }

    /// The membership row (`consistent`: a strongly consistent read).
    pub async fn membership(&self, consistent: bool) -> Result<Membership, ProtocolError> {
        Ok(self.retry.run(LeaseError::is_retryable, || self.table.membership(consistent)).await?)
    }

    /// Claims leadership as observed (`LeaseTable::claim_leadership`); `Ok(Some(row))` when this
    /// node leads now, `Ok(None)` when leadership was not as observed. A claim without an answer
    /// is settled by a consistent read.
    pub async fn claim_leadership(
        &self,
        me: &WorkerId,
        observed: Option<(&WorkerId, Option<u64>)>,
    ) -> Result<Option<Membership>, ProtocolError> {
        match self.retry.run(|e| matches!(e, LeaseError::Throttled), || self.table.claim_leadership(me, observed)).await
        {
            Ok(row) => Ok(Some(row)),
            Err(LeaseError::ConditionFailed) => Ok(None),
            Err(LeaseError::Ambiguous(_) | LeaseError::Unavailable(_)) => {
                let row = self.membership(true).await?;
                Ok((row.leader.as_ref() == Some(me)).then_some(row))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Counts a change of who should consume a lease, so that nodes look at their leases again.
    pub async fn announce_change(&self) -> Result<(), ProtocolError> {
        Ok(self.retry.run(LeaseError::is_retryable, || self.table.announce_change()).await?)
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
    use crate::lease::WorkerRow;
    use crate::memory::MemoryLeaseTable;
    use crate::{Position, SequenceNumber, ShardId};
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
    use std::sync::Mutex;

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
        let faulty = ScriptedTable::new(&inner)
            .updates(vec![Step::LandThenFail(LeaseError::ConditionFailed), Step::LandThenFail(amb())])
            // The first heartbeat's row landed: it carries on from its counter, one more write.
            .heartbeats(vec![
                Step::LandThenFail(amb()),
                Step::LandThenFail(LeaseError::ConditionFailed),
                Step::LandThenFail(amb()),
            ]);
        let p = LeaseProtocol::new(&faulty, &retry);
        let renewed = p.renew(&lease, &a).await.unwrap();
        assert_eq!(renewed.counter, lease.counter + 1);
        let cp = p.checkpoint(&renewed, &a, at(3)).await.unwrap();
        assert_eq!(cp.checkpoint, at(3));
        let hb = own(p.heartbeat(&a, None, false).await.unwrap(), &a);
        let hb2 = own(p.heartbeat(&a, Some(hb.counter), false).await.unwrap(), &a);
        assert_eq!(hb2.counter, hb.counter + 1);
        assert_eq!(inner.stats().writes, 3 + 2 + 2, "create + assign + renew + checkpoint + 2 heartbeats, once each");
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_writes_are_retried_and_a_vanished_heartbeat_row_means_evicted() {
        let inner = MemoryLeaseTable::new();
        let retry = RetryPolicy { max_attempts: 50, ..RetryPolicy::default() };
        let throttled = || Step::FailBefore(LeaseError::Throttled);
        let faulty =
            ScriptedTable::new(&inner).heartbeats(vec![throttled(), throttled(), Step::Pass, throttled(), Step::Pass]);
        let p = LeaseProtocol::new(&faulty, &retry);
        let a = WorkerId::new("a");
        let hb = own(p.heartbeat(&a, None, false).await.unwrap(), &a);
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

    // ---- A scripted lease table: deterministic faults for `write()` and `heartbeat()`. ----

    /// What the scripted table does with one `update` or `heartbeat` call.
    #[derive(Clone, Debug)]
    enum Step {
        /// Pass the call to the memory table.
        Pass,
        /// Fail before anything is applied.
        FailBefore(LeaseError),
        /// Apply the call, then report this error (the reply was lost).
        LandThenFail(LeaseError),
    }

    /// Wraps a `MemoryLeaseTable`; every `update`/`heartbeat` pops the next scripted step and a
    /// call past the end of the script panics, so a retry loop that does not stop fails the test
    /// instead of hanging it. Reads pass straight through.
    struct ScriptedTable {
        inner: MemoryLeaseTable,
        updates: Mutex<VecDeque<Step>>,
        heartbeats: Mutex<VecDeque<Step>>,
        update_calls: AtomicU32,
        heartbeat_calls: AtomicU32,
    }

    impl ScriptedTable {
        fn new(inner: &MemoryLeaseTable) -> Self {
            Self {
                inner: inner.clone(),
                updates: Mutex::default(),
                heartbeats: Mutex::default(),
                update_calls: AtomicU32::new(0),
                heartbeat_calls: AtomicU32::new(0),
            }
        }

        fn updates(self, steps: Vec<Step>) -> Self {
            *self.updates.lock().unwrap() = steps.into();
            self
        }

        fn heartbeats(self, steps: Vec<Step>) -> Self {
            *self.heartbeats.lock().unwrap() = steps.into();
            self
        }

        fn update_calls(&self) -> u32 {
            self.update_calls.load(AtomicOrdering::SeqCst)
        }

        fn heartbeat_calls(&self) -> u32 {
            self.heartbeat_calls.load(AtomicOrdering::SeqCst)
        }

        fn next(script: &Mutex<VecDeque<Step>>, calls: &AtomicU32, what: &str) -> Step {
            let n = calls.fetch_add(1, AtomicOrdering::SeqCst) + 1;
            let step = script.lock().unwrap().pop_front();
            step.unwrap_or_else(|| panic!("{what} call #{n} was not scripted (a retry loop that does not stop?)"))
        }

        async fn play<T>(
            step: Step,
            call: impl std::future::Future<Output = Result<T, LeaseError>>,
        ) -> Result<T, LeaseError> {
            match step {
                Step::Pass => call.await,
                Step::FailBefore(e) => Err(e),
                Step::LandThenFail(e) => {
                    call.await?;
                    Err(e)
                }
            }
        }
    }

    #[async_trait::async_trait]
    impl LeaseTable for ScriptedTable {
        async fn create(&self, lease: &Lease) -> Result<(), LeaseError> {
            self.inner.create(lease).await
        }
        async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
            self.inner.get(key).await
        }
        async fn scan(&self) -> Result<Vec<Lease>, LeaseError> {
            self.inner.scan().await
        }
        async fn owned_by(&self, owner: &WorkerId) -> Result<Vec<Lease>, LeaseError> {
            self.inner.owned_by(owner).await
        }
        async fn update(&self, key: &str, expect: &Expect, change: &LeaseChange) -> Result<Lease, LeaseError> {
            let step = Self::next(&self.updates, &self.update_calls, "update");
            Self::play(step, self.inner.update(key, expect, change)).await
        }
        async fn delete(&self, key: &str, expect: &Expect) -> Result<(), LeaseError> {
            self.inner.delete(key, expect).await
        }
        async fn heartbeat(
            &self,
            worker: &WorkerId,
            expected: Option<u64>,
            draining: bool,
        ) -> Result<Membership, LeaseError> {
            let step = Self::next(&self.heartbeats, &self.heartbeat_calls, "heartbeat");
            Self::play(step, self.inner.heartbeat(worker, expected, draining)).await
        }
        async fn membership(&self, consistent: bool) -> Result<Membership, LeaseError> {
            self.inner.membership(consistent).await
        }
        async fn remove_worker(&self, worker: &WorkerId, expected: u64) -> Result<(), LeaseError> {
            self.inner.remove_worker(worker, expected).await
        }
        async fn claim_leadership(
            &self,
            me: &WorkerId,
            observed: Option<(&WorkerId, Option<u64>)>,
        ) -> Result<Membership, LeaseError> {
            self.inner.claim_leadership(me, observed).await
        }
        async fn resign_leadership(&self, me: &WorkerId) -> Result<(), LeaseError> {
            self.inner.resign_leadership(me).await
        }
        async fn announce_change(&self) -> Result<(), LeaseError> {
            self.inner.announce_change().await
        }
    }

    /// `me`'s own entry in a membership row a heartbeat wrote.
    fn own(row: Membership, me: &WorkerId) -> WorkerRow {
        row.row(me).cloned().expect("the heartbeat's own entry")
    }

    fn three_attempts() -> RetryPolicy {
        RetryPolicy { max_attempts: 3, ..RetryPolicy::default() }
    }

    fn amb() -> LeaseError {
        LeaseError::Ambiguous("timeout".into())
    }

    /// Shard 0's lease, created and assigned to `a` on `inner`: counter 1, owner `a`.
    async fn lease_of_a(inner: &MemoryLeaseTable) -> Lease {
        let held = owned_lease(inner, &RetryPolicy::default(), &WorkerId::new("a")).await;
        assert_eq!((held.counter, held.owner.clone()), (1, Some(WorkerId::new("a"))));
        held
    }

    async fn stored(inner: &MemoryLeaseTable, key: &str) -> Lease {
        inner.get(key).await.unwrap().expect("the row exists")
    }

    /// Node `a`'s heartbeat from its local counter 2, its row stored at `stored`, the table
    /// playing `script`: the outcome and how many heartbeat calls it took.
    async fn beat_from_2(
        inner: &MemoryLeaseTable,
        stored: u64,
        script: Vec<Step>,
    ) -> (Result<WorkerRow, ProtocolError>, u32) {
        let a = WorkerId::new("a");
        heartbeat_row_at(inner, &a, stored).await;
        let t = ScriptedTable::new(inner).heartbeats(script);
        let retry = three_attempts();
        let r = LeaseProtocol::new(&t, &retry).heartbeat(&a, Some(2), false).await;
        (r.map(|row| own(row, &a)), t.heartbeat_calls())
    }

    /// `inner` holds `me`'s heartbeat row with counter `n`.
    async fn heartbeat_row_at(inner: &MemoryLeaseTable, me: &WorkerId, n: u64) {
        inner.heartbeat(me, None, false).await.unwrap();
        for c in 0..n {
            inner.heartbeat(me, Some(c), false).await.unwrap();
        }
        let rows = inner.membership(true).await.unwrap().workers;
        assert_eq!(rows, vec![WorkerRow { id: me.clone(), counter: n, draining: false }]);
    }

    #[tokio::test(start_paused = true)]
    async fn write_retries_throttles_until_the_last_attempt_succeeds() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let t = ScriptedTable::new(&inner).updates(vec![
            Step::FailBefore(LeaseError::Throttled),
            Step::FailBefore(LeaseError::Unavailable("503".into())),
            Step::Pass,
        ]);
        let retry = three_attempts();
        let renewed = LeaseProtocol::new(&t, &retry).renew(&held, &WorkerId::new("a")).await.unwrap();
        assert_eq!((renewed.counter, t.update_calls()), (2, 3));
        assert_eq!(stored(&inner, &held.key).await.counter, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn write_gives_up_on_throttles_after_max_attempts() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let t = ScriptedTable::new(&inner).updates(vec![Step::FailBefore(LeaseError::Throttled); 3]);
        let retry = three_attempts();
        let r = LeaseProtocol::new(&t, &retry).renew(&held, &WorkerId::new("a")).await;
        assert_eq!(r, Err(ProtocolError::Table(LeaseError::Throttled)));
        assert_eq!(t.update_calls(), 3);
        assert_eq!(stored(&inner, &held.key).await.counter, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn write_gives_up_on_unavailable_after_max_attempts() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let t = ScriptedTable::new(&inner).updates(vec![Step::FailBefore(LeaseError::Unavailable("503".into())); 3]);
        let retry = three_attempts();
        let r = LeaseProtocol::new(&t, &retry).renew(&held, &WorkerId::new("a")).await;
        assert_eq!(r, Err(ProtocolError::Table(LeaseError::Unavailable("503".into()))));
        assert_eq!(t.update_calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn write_with_one_attempt_does_not_retry_a_throttle() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let t = ScriptedTable::new(&inner).updates(vec![Step::FailBefore(LeaseError::Throttled)]);
        let retry = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
        let r = LeaseProtocol::new(&t, &retry).renew(&held, &WorkerId::new("a")).await;
        assert_eq!((r, t.update_calls()), (Err(ProtocolError::Table(LeaseError::Throttled)), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn write_retries_an_ambiguous_reply_that_did_not_land() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let t = ScriptedTable::new(&inner).updates(vec![Step::FailBefore(amb()), Step::Pass]);
        let retry = three_attempts();
        let b = WorkerId::new("b");
        let got = LeaseProtocol::new(&t, &retry).assign(&held, &b).await.unwrap();
        assert_eq!((got.counter, got.owner.clone(), t.update_calls()), (2, Some(b.clone()), 2));
        let row = stored(&inner, &held.key).await;
        assert_eq!((row.counter, row.owner, row.owner_switches_since_checkpoint), (2, Some(b), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn write_that_never_lands_after_ambiguous_replies_is_unavailable() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let t = ScriptedTable::new(&inner).updates(vec![Step::FailBefore(amb()); 3]);
        let retry = three_attempts();
        let r = LeaseProtocol::new(&t, &retry).renew(&held, &WorkerId::new("a")).await;
        assert_eq!(r, Err(ProtocolError::Table(LeaseError::Unavailable("write did not land after retries".into()))));
        assert_eq!(t.update_calls(), 3);
        assert_eq!(stored(&inner, &held.key).await.counter, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn write_whose_reply_was_lost_after_it_landed_is_ours() {
        for lost in [amb(), LeaseError::ConditionFailed] {
            let inner = MemoryLeaseTable::new();
            let held = lease_of_a(&inner).await;
            let t = ScriptedTable::new(&inner).updates(vec![Step::LandThenFail(lost.clone())]);
            let retry = three_attempts();
            let a = WorkerId::new("a");
            let cp = LeaseProtocol::new(&t, &retry).checkpoint(&held, &a, at(8)).await.unwrap();
            assert_eq!((cp.counter, cp.checkpoint.clone(), t.update_calls()), (2, at(8), 1), "{lost:?}");
            assert_eq!(stored(&inner, &held.key).await.counter, 2, "applied once ({lost:?})");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn write_loses_a_row_another_writer_changed() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let b = WorkerId::new("b");
        let change = LeaseChange { owner: Some(Some(b.clone())), ..Default::default() };
        inner.update(&held.key, &Expect::unchanged(&held), &change).await.unwrap();
        let t = ScriptedTable::new(&inner).updates(vec![Step::Pass]);
        let retry = three_attempts();
        let r = LeaseProtocol::new(&t, &retry).renew(&held, &WorkerId::new("a")).await;
        let Err(ProtocolError::Lost { key, current: Some(current) }) = r else { panic!("expected Lost, got {r:?}") };
        assert_eq!((key.as_str(), current.counter, current.owner), ("shardId-000000000000", 2, Some(b)));
        assert_eq!(t.update_calls(), 1);
    }

    /// A row one write ahead, by the same owner, is ours only if it holds exactly what our write
    /// would have written: another checkpoint, other children or a handoff another writer
    /// finished mean someone else wrote it (a second process under the same id), so the lease
    /// is lost, not taken for our own landed write.
    #[tokio::test(start_paused = true)]
    async fn a_row_one_write_ahead_with_other_content_is_not_ours() {
        let a = WorkerId::new("a");
        let retry = three_attempts();
        // Each case: what another writer did, then what we try from the row as we read it.
        let other_checkpoint = LeaseChange { checkpoint: Some(at(9)), ..Default::default() };
        let other_children = LeaseChange {
            checkpoint: Some(Checkpoint::ShardEnd),
            child_shard_ids: Some(vec![ShardId::numbered(7)]),
            ..Default::default()
        };
        for (case, theirs) in [("checkpoint", other_checkpoint), ("children", other_children)] {
            let inner = MemoryLeaseTable::new();
            let held = lease_of_a(&inner).await;
            inner.update(&held.key, &Expect::unchanged(&held), &theirs).await.unwrap();
            let p = LeaseProtocol::new(&inner, &retry);
            let r = match case {
                "checkpoint" => p.checkpoint(&held, &a, at(5)).await,
                _ => p.end_shard(&held, &a, vec![ShardId::numbered(8)]).await,
            };
            assert!(matches!(r, Err(ProtocolError::Lost { .. })), "{case}: {r:?}");
        }
        // A handoff: our finish (checkpoint at 4) against another finish of it (at 6).
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let p = LeaseProtocol::new(&inner, &retry);
        let moving = p.hand_off(&held, &WorkerId::new("b")).await.unwrap();
        let theirs = LeaseChange { checkpoint: Some(at(6)), checkpoint_owner: Some(None), ..Default::default() };
        inner.update(&moving.key, &Expect::unchanged(&moving), &theirs).await.unwrap();
        let r = p.finish_handoff(&moving, &a, at(4)).await;
        assert!(matches!(r, Err(ProtocolError::Lost { .. })), "handoff: {r:?}");
        // Our handoff to b against another writer's plain assignment to b: same owner and
        // counter, but no checkpointOwner, so not ours.
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let b = WorkerId::new("b");
        let theirs = LeaseChange { owner: Some(Some(b.clone())), checkpoint_owner: Some(None), ..Default::default() };
        inner.update(&held.key, &Expect::unchanged(&held), &theirs).await.unwrap();
        let r = LeaseProtocol::new(&inner, &retry).hand_off(&held, &b).await;
        assert!(matches!(r, Err(ProtocolError::Lost { .. })), "handoff against an assignment: {r:?}");
        // Our own finished handoff whose reply was lost is recognised.
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let p = LeaseProtocol::new(&inner, &retry);
        let moving = p.hand_off(&held, &b).await.unwrap();
        let ours = LeaseChange { checkpoint: Some(at(4)), checkpoint_owner: Some(None), ..Default::default() };
        inner.update(&moving.key, &Expect::unchanged(&moving), &ours).await.unwrap();
        let r = p.finish_handoff(&moving, &a, at(4)).await;
        assert_eq!(r.map(|l| (l.checkpoint_owner, l.checkpoint)), Ok((None, at(4))));
        // An owner change: ours (to b) landed with its reply lost is ours; another writer's (to
        // c) is not.
        for (to, want_ours) in [("b", true), ("c", false)] {
            let inner = MemoryLeaseTable::new();
            let held = lease_of_a(&inner).await;
            let landed = LeaseChange { owner: Some(Some(WorkerId::new(to))), ..Default::default() };
            inner.update(&held.key, &Expect::unchanged(&held), &landed).await.unwrap();
            let r = LeaseProtocol::new(&inner, &retry).assign(&held, &b).await;
            assert_eq!(r.is_ok(), want_ours, "assign to b after a write to {to}: {r:?}");
        }
        // And the same write by us, reply lost, is recognised (the positive side of the check).
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let ours = LeaseChange { checkpoint: Some(at(5)), ..Default::default() };
        inner.update(&held.key, &Expect::unchanged(&held), &ours).await.unwrap();
        let r = LeaseProtocol::new(&inner, &retry).checkpoint(&held, &a, at(5)).await;
        assert_eq!(r.map(|l| (l.counter, l.checkpoint)), Ok((2, at(5))));
    }

    #[tokio::test(start_paused = true)]
    async fn write_loses_a_row_that_is_gone() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        inner.delete(&held.key, &Expect::default()).await.unwrap();
        let t = ScriptedTable::new(&inner).updates(vec![Step::Pass]);
        let retry = three_attempts();
        let r = LeaseProtocol::new(&t, &retry).renew(&held, &WorkerId::new("a")).await;
        assert_eq!(r, Err(ProtocolError::Lost { key: "shardId-000000000000".into(), current: None }));
        assert_eq!(t.update_calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn write_returns_a_fatal_error_at_once() {
        let inner = MemoryLeaseTable::new();
        let held = lease_of_a(&inner).await;
        let t = ScriptedTable::new(&inner).updates(vec![Step::FailBefore(LeaseError::Fatal("bad request".into()))]);
        let retry = three_attempts();
        let r = LeaseProtocol::new(&t, &retry).renew(&held, &WorkerId::new("a")).await;
        assert_eq!(r, Err(ProtocolError::Table(LeaseError::Fatal("bad request".into()))));
        assert_eq!(t.update_calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_create_whose_reply_was_lost_carries_on_from_the_stored_row() {
        let inner = MemoryLeaseTable::new();
        let a = WorkerId::new("a");
        let t =
            ScriptedTable::new(&inner).heartbeats(vec![Step::LandThenFail(LeaseError::ConditionFailed), Step::Pass]);
        let retry = three_attempts();
        let row = own(LeaseProtocol::new(&t, &retry).heartbeat(&a, None, true).await.unwrap(), &a);
        // The create landed (counter 0); the retry renews from it.
        assert_eq!(row, WorkerRow { id: a.clone(), counter: 1, draining: true });
        assert_eq!(t.heartbeat_calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_create_that_did_not_land_is_retried() {
        let inner = MemoryLeaseTable::new();
        let a = WorkerId::new("a");
        let t = ScriptedTable::new(&inner).heartbeats(vec![Step::FailBefore(amb()), Step::Pass]);
        let retry = three_attempts();
        let row = own(LeaseProtocol::new(&t, &retry).heartbeat(&a, None, false).await.unwrap(), &a);
        assert_eq!((row.counter, t.heartbeat_calls()), (0, 2));
        assert_eq!(
            inner.membership(true).await.unwrap().workers,
            vec![WorkerRow { id: a, counter: 0, draining: false }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_whose_reply_was_lost_after_it_landed_is_ours() {
        for lost in [amb(), LeaseError::ConditionFailed] {
            let (r, calls) = beat_from_2(&MemoryLeaseTable::new(), 2, vec![Step::LandThenFail(lost.clone())]).await;
            assert_eq!((r.unwrap().counter, calls), (3, 1), "{lost:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_that_did_not_land_is_retried() {
        let (r, calls) = beat_from_2(&MemoryLeaseTable::new(), 2, vec![Step::FailBefore(amb()), Step::Pass]).await;
        assert_eq!((r.unwrap().counter, calls), (3, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_that_never_lands_stops_after_max_attempts() {
        // The row is still ours and untouched: the table is failing, nobody evicted this node,
        // so the error is Unavailable (the keeper's grace applies), not Evicted (which stops
        // every consumer at once).
        let inner = MemoryLeaseTable::new();
        let (r, calls) = beat_from_2(&inner, 2, vec![Step::FailBefore(amb()); 3]).await;
        assert!(matches!(r, Err(ProtocolError::Table(LeaseError::Unavailable(_)))), "{r:?}");
        assert_eq!(calls, 3);
        // A first heartbeat that never lands either.
        let retry = three_attempts();
        let t = ScriptedTable::new(&inner).heartbeats(vec![Step::FailBefore(amb()); 3]);
        let r = LeaseProtocol::new(&t, &retry).heartbeat(&WorkerId::new("new"), None, false).await;
        assert!(matches!(r, Err(ProtocolError::Table(LeaseError::Unavailable(_)))), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_behind_the_stored_counter_is_evicted() {
        let (r, calls) = beat_from_2(&MemoryLeaseTable::new(), 7, vec![Step::Pass]).await;
        assert_eq!((r, calls), (Err(ProtocolError::Evicted { worker: WorkerId::new("a") }), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_whose_row_is_gone_is_evicted() {
        let inner = MemoryLeaseTable::new();
        let a = WorkerId::new("a");
        heartbeat_row_at(&inner, &a, 2).await;
        inner.remove_worker(&a, 2).await.unwrap();
        let t = ScriptedTable::new(&inner).heartbeats(vec![Step::Pass]);
        let retry = three_attempts();
        let r = LeaseProtocol::new(&t, &retry).heartbeat(&a, Some(2), false).await;
        assert_eq!((r, t.heartbeat_calls()), (Err(ProtocolError::Evicted { worker: a }), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_retries_throttles_until_the_last_attempt() {
        let script = vec![
            Step::FailBefore(LeaseError::Throttled),
            Step::FailBefore(LeaseError::Unavailable("503".into())),
            Step::Pass,
        ];
        let (r, calls) = beat_from_2(&MemoryLeaseTable::new(), 2, script).await;
        assert_eq!((r.unwrap().counter, calls), (3, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_gives_up_on_throttles_after_max_attempts() {
        let inner = MemoryLeaseTable::new();
        let (r, calls) = beat_from_2(&inner, 2, vec![Step::FailBefore(LeaseError::Throttled); 3]).await;
        assert_eq!((r, calls), (Err(ProtocolError::Table(LeaseError::Throttled)), 3));
        assert_eq!(inner.membership(true).await.unwrap().workers[0].counter, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn scan_and_owned_by_return_the_stored_leases() {
        let table = MemoryLeaseTable::new();
        let retry = RetryPolicy::default();
        let p = LeaseProtocol::new(&table, &retry);
        let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
        let mine = owned_lease(&table, &retry, &a).await;
        let theirs = Lease::for_shard(&ShardId::numbered(1), vec![], None, Checkpoint::TrimHorizon);
        assert!(p.create(&theirs).await.unwrap());
        p.assign(&theirs, &b).await.unwrap();
        assert!(p.create(&Lease::leader_lock("leader", &a)).await.unwrap());
        let keys = |leases: Vec<Lease>| leases.into_iter().map(|l| l.key).collect::<Vec<_>>();
        assert_eq!(keys(p.scan().await.unwrap()), vec!["shardId-000000000000", "shardId-000000000001"]);
        let owned = p.owned_by(&a).await.unwrap();
        assert_eq!(owned.len(), 1);
        assert_eq!((owned[0].key.as_str(), owned[0].counter, owned[0].owner.clone()), (mine.key.as_str(), 1, Some(a)));
        assert_eq!(keys(p.owned_by(&b).await.unwrap()), vec!["shardId-000000000001"]);
        assert!(p.owned_by(&WorkerId::new("c")).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn assign_clears_an_open_handoff() {
        let table = MemoryLeaseTable::new();
        let retry = RetryPolicy::default();
        let p = LeaseProtocol::new(&table, &retry);
        let (a, b, c) = (WorkerId::new("a"), WorkerId::new("b"), WorkerId::new("c"));
        let lease = owned_lease(&table, &retry, &a).await;
        let moving = p.hand_off(&lease, &b).await.unwrap();
        assert_eq!(moving.checkpoint_owner, Some(a));
        let assigned = p.assign(&moving, &c).await.unwrap();
        assert_eq!(
            (assigned.owner.clone(), assigned.checkpoint_owner.clone(), assigned.counter),
            (Some(c.clone()), None, 3)
        );
        let row = stored(&table, &lease.key).await;
        assert_eq!((row.owner, row.checkpoint_owner), (Some(c), None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_handoff_of_a_lease_in_handoff_is_refused() {
        let table = MemoryLeaseTable::new();
        let retry = RetryPolicy::default();
        let p = LeaseProtocol::new(&table, &retry);
        let (a, b, c) = (WorkerId::new("a"), WorkerId::new("b"), WorkerId::new("c"));
        let lease = owned_lease(&table, &retry, &a).await;
        let moving = p.hand_off(&lease, &b).await.unwrap();
        let r = p.hand_off(&moving, &c).await;
        let Err(ProtocolError::Lost { current: Some(current), .. }) = r else { panic!("expected Lost, got {r:?}") };
        assert_eq!((current.counter, current.owner, current.checkpoint_owner), (2, Some(b.clone()), Some(a.clone())));
        let row = stored(&table, &lease.key).await;
        assert_eq!((row.counter, row.owner, row.checkpoint_owner), (2, Some(b), Some(a)));
    }

    #[tokio::test(start_paused = true)]
    async fn release_drops_the_owner_and_writes_the_checkpoint() {
        let table = MemoryLeaseTable::new();
        let retry = RetryPolicy::default();
        let p = LeaseProtocol::new(&table, &retry);
        let a = WorkerId::new("a");
        let lease = owned_lease(&table, &retry, &a).await;
        let released = p.release(&lease, &a, at(7)).await.unwrap();
        assert_eq!((released.owner.clone(), released.checkpoint.clone(), released.counter), (None, at(7), 2));
        let row = stored(&table, &lease.key).await;
        assert_eq!((row.owner, row.checkpoint, row.counter), (None, at(7), 2));
    }
}
