//! The coordinator actor, one per node. Every `assign_interval` it reads the leader row and the
//! heartbeats (so any node that becomes leader already knows who is alive), takes or renews the
//! leader lock, and while leader: syncs shards into leases, plans and applies moves, and removes
//! rows of dead nodes whose leases were all reassigned.

use crate::cluster_view::ClusterView;
use crate::events::{ClusterEvent, EventSink};
use crate::liveness::Liveness;
use crate::planner::{plan, Move, PlanInput};
use crate::settings::ClusterSettings;
use crate::shard_sync::leases_to_create;
use proto::{Checkpoint, Lease, LeaseProtocol, LeaseTable, ProtocolError, RetryPolicy, ShardReader, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub struct Coordinator;

/// The nodes as the heartbeats show them.
#[derive(Default)]
struct Membership {
    live: BTreeSet<WorkerId>,
    /// Stopping: they keep their leases until they release them, and get no new ones.
    draining: BTreeSet<WorkerId>,
    /// With their last counter, so their row is removed only if it did not move since.
    dead: Vec<(WorkerId, u64)>,
}

impl Membership {
    /// Whether the node's heartbeat is seen (live or draining).
    fn includes(&self, node: &WorkerId) -> bool {
        self.live.contains(node) || self.draining.contains(node)
    }
}

/// A stream the cluster consumes, as shard sync sees it.
#[derive(Clone)]
pub struct SyncedStream {
    /// Its identifier in a multi-stream table (`account:stream:creationEpoch`, the prefix of its
    /// lease keys); `None` in a single-stream table, whose keys are shard ids.
    pub id: Option<String>,
    pub reader: Arc<dyn ShardReader>,
    /// Where its shards without a checkpoint start (its own, else the cluster's).
    pub initial_position: Checkpoint,
}

pub struct CoordinatorArgs {
    pub me: WorkerId,
    pub table: Arc<dyn LeaseTable>,
    pub streams: Vec<SyncedStream>,
    pub settings: ClusterSettings,
    pub retry: RetryPolicy,
    pub events: EventSink,
    /// Where this coordinator reports what it sees (read by the node's metrics).
    pub view: Arc<ClusterView>,
}

pub enum CoordinatorMsg {
    Tick,
    IsLeader(RpcReplyPort<bool>),
    /// Gives up the leader lock (graceful stop) so another node takes over at once.
    Resign(RpcReplyPort<()>),
}

pub struct CoordinatorState {
    args: CoordinatorArgs,
    /// The lock row as last written by us, and when.
    lock: Option<(Lease, Instant)>,
    leader_seen: Liveness<String>,
    workers_seen: Liveness<WorkerId>,
    handoffs_seen: Liveness<String>,
    /// Counters of leases whose owner is not a node of this cluster (KCL's rule: such a lease is
    /// held while its counter moves).
    foreign_seen: Liveness<String>,
    /// The first counter seen of each such lease (a different one now: its owner is running).
    foreign_first: BTreeMap<String, u64>,
    /// Owners of other applications already reported.
    foreign_reported: BTreeSet<WorkerId>,
    /// Leases this leader assigned, and when: not handed off until their owner had time to
    /// see them (two of its polls).
    assigned_at: BTreeMap<String, Instant>,
    last_sync: Option<Instant>,
    resigned: bool,
}

impl CoordinatorState {
    fn protocol(&self) -> LeaseProtocol<'_> {
        LeaseProtocol::new(self.args.table.as_ref(), &self.args.retry)
    }

    /// Leading is allowed only while the lock was renewed recently enough that no other node can
    /// have seen it unchanged for a whole failover time.
    fn may_lead(&self, now: Instant) -> bool {
        self.lock.as_ref().is_some_and(|(_, at)| now.duration_since(*at) < self.args.settings.failover_time / 2)
    }

    fn step_down(&mut self) {
        if self.lock.take().is_some() {
            info!(node = %self.args.me, "no longer leader");
            self.args.events.emit(ClusterEvent::LostLeadership { node: self.args.me.clone() });
        }
    }

    async fn elect(&mut self, now: Instant) -> Result<(), ProtocolError> {
        let key = self.args.settings.leader_key.clone();
        let me = self.args.me.clone();
        let row = self.protocol().get(&key).await?;
        match row {
            None => {
                if self.protocol().create(&Lease::leader_lock(&key, &me)).await? {
                    self.won(Lease::leader_lock(&key, &me), now);
                }
            }
            Some(row) if row.is_owned_by(&me) => {
                let due = self
                    .lock
                    .as_ref()
                    .is_none_or(|(_, at)| now.duration_since(*at) >= self.args.settings.heartbeat_interval);
                if due {
                    match self.protocol().renew(&row, &me).await {
                        Ok(renewed) => self.won(renewed, now),
                        Err(ProtocolError::Lost { .. }) => self.step_down(),
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(row) => {
                self.step_down();
                self.leader_seen.observe(&key, row.counter, now);
                let unowned = row.owner.is_none();
                if unowned || self.leader_seen.expired(&key, row.counter, now, self.args.settings.failover_time) {
                    match self.protocol().take(&row, &me).await {
                        Ok(taken) => self.won(taken, now),
                        Err(ProtocolError::Lost { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    fn won(&mut self, lock: Lease, now: Instant) {
        if self.lock.is_none() {
            info!(node = %self.args.me, "became leader");
            self.args.events.emit(ClusterEvent::BecameLeader { node: self.args.me.clone() });
            self.last_sync = None;
        }
        self.lock = Some((lock, now));
    }

    /// Reads every heartbeat; returns the nodes by state.
    async fn observe_workers(&mut self, now: Instant) -> Result<Membership, ProtocolError> {
        let table = self.args.table.clone();
        let rows = self.args.retry.run(proto::LeaseError::is_retryable, || table.workers()).await?;
        let mut members = Membership::default();
        for row in &rows {
            self.workers_seen.observe(&row.id, row.counter, now);
            if self.workers_seen.expired(&row.id, row.counter, now, self.args.settings.failover_time) {
                members.dead.push((row.id.clone(), row.counter));
            } else if row.draining {
                members.draining.insert(row.id.clone());
            } else {
                members.live.insert(row.id.clone());
            }
        }
        let present: BTreeSet<WorkerId> = rows.into_iter().map(|r| r.id).collect();
        self.workers_seen.retain(|w| present.contains(w));
        Ok(members)
    }

    /// Leases owned by a worker that is not a node of this cluster (no heartbeat row: a KCL
    /// worker sharing the table, e.g. during a migration) and held by it under KCL's own rule:
    /// its counter moved within `failover_time` on this leader's clock. Such a lease is never
    /// taken; once its owner stops renewing it for `failover_time` it is free, and is assigned
    /// from its checkpoint like any other.
    fn held_elsewhere(&mut self, leases: &[Lease], members: &Membership, now: Instant) -> BTreeSet<String> {
        let failover = self.args.settings.failover_time;
        let is_member = |o: &WorkerId| members.includes(o) || members.dead.iter().any(|(d, _)| d == o);
        let foreign: Vec<&Lease> = leases
            .iter()
            .filter(|l| !l.is_finished() && l.key != self.args.settings.leader_key)
            .filter(|l| l.owner.as_ref().is_some_and(|o| !is_member(o)))
            .collect();
        let mut held = BTreeSet::new();
        for lease in &foreign {
            self.foreign_seen.observe(&lease.key, lease.counter, now);
            if self.foreign_seen.expired(&lease.key, lease.counter, now, failover) {
                continue;
            }
            held.insert(lease.key.clone());
            let owner = lease.owner.clone().expect("foreign leases have an owner");
            // Reported once the counter was seen to move: a worker that is really running.
            let first = *self.foreign_first.entry(lease.key.clone()).or_insert(lease.counter);
            if first != lease.counter && self.foreign_reported.insert(owner.clone()) {
                warn!(
                    owner = %owner,
                    shard = %lease.key,
                    "a worker that is not a node of this cluster renews leases of this table (another \
                     application, e.g. KCL): its leases are left alone until it stops renewing them for \
                     failover_time; stop it to move its shards here (README: moving from KCL)"
                );
            }
        }
        self.foreign_seen.retain(|k| foreign.iter().any(|l| &l.key == k));
        self.foreign_first.retain(|k, _| foreign.iter().any(|l| &l.key == k));
        held
    }

    async fn lead(&mut self, now: Instant, members: &Membership) -> Result<(), ProtocolError> {
        let dead = &members.dead;
        let mut leases = self.protocol().scan().await?;
        let sync_due = self.last_sync.is_none_or(|t| now.duration_since(t) >= self.args.settings.shard_sync_interval);
        if sync_due || leases.is_empty() {
            let mut synced = true;
            for stream in &self.args.streams {
                let id = stream.id.as_deref();
                match stream.reader.list_shards().await {
                    Ok(shards) => {
                        let own: Vec<Lease> = leases.iter().filter(|l| l.stream() == id).cloned().collect();
                        for lease in leases_to_create(id, &shards, &own, &stream.initial_position) {
                            if self.protocol().create(&lease).await? {
                                debug!(shard = %lease.key, "lease created by shard sync");
                                self.args.events.emit(ClusterEvent::LeaseCreated { shard: lease.shard_id() });
                            }
                            leases.push(lease);
                        }
                    }
                    Err(e) => {
                        warn!(stream = id.unwrap_or("(the stream)"), error = %e, "shard sync: cannot list shards");
                        synced = false;
                    }
                }
            }
            if synced {
                self.last_sync = Some(now);
            }
        }
        for (node, _) in dead {
            if leases.iter().any(|l| l.owner.as_ref() == Some(node) && !l.is_finished()) {
                self.args.events.emit(ClusterEvent::NodeDead { node: node.clone(), by: self.args.me.clone() });
            }
        }
        // A handoff whose row did not move for a failover time stalled (its giver is alive but
        // never finished it, e.g. it was not running the lease): the planner completes it.
        let mut stalled = BTreeSet::new();
        for lease in leases.iter().filter(|l| l.checkpoint_owner.is_some()) {
            self.handoffs_seen.observe(&lease.key, lease.counter, now);
            if self.handoffs_seen.expired(&lease.key, lease.counter, now, self.args.settings.failover_time) {
                warn!(shard = %lease.key, from = ?lease.checkpoint_owner, "handoff stalled; completing it");
                stalled.insert(lease.key.clone());
            }
        }
        self.handoffs_seen.retain(|k| leases.iter().any(|l| &l.key == k && l.checkpoint_owner.is_some()));
        let mut held_elsewhere = self.held_elsewhere(&leases, members, now);
        // Leases of a stream this cluster does not consume (one removed from the config, or the
        // other mode's keys): left as they are, never deleted (`tributary leases --forget`).
        let consumed = |l: &Lease| self.args.streams.iter().any(|s| s.id.as_deref() == l.stream());
        held_elsewhere.extend(
            leases.iter().filter(|l| l.key != self.args.settings.leader_key && !consumed(l)).map(|l| l.key.clone()),
        );
        let settle = self.args.settings.poll_interval * 2;
        self.assigned_at.retain(|_, at| now.duration_since(*at) < settle);
        let settling: BTreeSet<String> = self.assigned_at.keys().cloned().collect();
        let input = PlanInput {
            live: &members.live,
            draining: &members.draining,
            stalled: &stalled,
            settling: &settling,
            held_elsewhere: &held_elsewhere,
        };
        let mut after = leases.clone();
        for m in plan(&leases, &input) {
            let Some(lease) = leases.iter().find(|l| l.key == m.lease()) else { continue };
            let result = match &m {
                Move::Assign { to, .. } => self.protocol().assign(lease, to).await,
                Move::HandOff { to, .. } => self.protocol().hand_off(lease, to).await,
            };
            match result {
                Ok(_) => {
                    if matches!(m, Move::Assign { .. }) {
                        self.assigned_at.insert(m.lease().to_owned(), now);
                    }
                    if let Some(moved) = after.iter_mut().find(|l| l.key == m.lease()) {
                        moved.owner = Some(m.target().clone());
                    }
                    info!(?m, "lease moved");
                    self.args.events.emit(ClusterEvent::Assigned {
                        shard: lease.shard_id(),
                        to: m.target().clone(),
                        handoff: matches!(m, Move::HandOff { .. }),
                    });
                }
                Err(ProtocolError::Lost { .. }) => debug!(?m, "lease changed before the move; next cycle"),
                Err(e) => return Err(e),
            }
        }
        // Leases of a stream this cluster does not consume are not its own to count (their
        // being unowned raises no alert).
        after.retain(|l| l.key != self.args.settings.leader_key && consumed(l));
        self.args.view.observe(&after, [members.live.len(), members.draining.len(), dead.len()]);
        // A dead node's row goes once nothing refers to it any more.
        for (node, counter) in dead {
            let referenced = leases.iter().any(|l| {
                !l.is_finished() && (l.owner.as_ref() == Some(node) || l.checkpoint_owner.as_ref() == Some(node))
            });
            if !referenced {
                match self.args.table.remove_worker(node, *counter).await {
                    Ok(()) => info!(node = %node, "removed dead node's heartbeat row"),
                    Err(e) => debug!(node = %node, error = %e, "dead node's row not removed"),
                }
            }
        }
        // A finished parent's lease goes once every child has checkpointed progress: nothing
        // needs it any more (shard sync never recreates a shard whose descendants have leases).
        for lease in finished_parents(&leases) {
            match self.args.table.delete(&lease.key, &proto::Expect::unchanged(lease)).await {
                Ok(()) => debug!(shard = %lease.key, "finished parent lease deleted"),
                Err(e) => debug!(shard = %lease.key, error = %e, "finished parent lease kept"),
            }
        }
        Ok(())
    }
}

/// Finished leases whose children all exist and have checkpointed past their start.
fn finished_parents(leases: &[Lease]) -> Vec<&Lease> {
    let progressed = |key: String| {
        leases.iter().any(|l| l.key == key && matches!(l.checkpoint, proto::Checkpoint::At(_) | Checkpoint::ShardEnd))
    };
    leases
        .iter()
        .filter(|l| {
            l.is_finished()
                && !l.child_shard_ids.is_empty()
                && l.child_shard_ids.iter().all(|c| progressed(l.sibling_key(c)))
        })
        .collect()
}

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CoordinatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.settings.assign_interval, || CoordinatorMsg::Tick);
        let _ = myself.cast(CoordinatorMsg::Tick);
        Ok(CoordinatorState {
            args,
            lock: None,
            leader_seen: Liveness::default(),
            workers_seen: Liveness::default(),
            handoffs_seen: Liveness::default(),
            foreign_seen: Liveness::default(),
            foreign_first: BTreeMap::new(),
            foreign_reported: BTreeSet::new(),
            assigned_at: BTreeMap::new(),
            last_sync: None,
            resigned: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CoordinatorMsg::Tick if state.resigned => {}
            CoordinatorMsg::Tick => {
                let now = Instant::now();
                if let Err(e) = state.elect(now).await {
                    warn!(error = %e, "leader election failed this cycle");
                }
                state.args.view.set_leader(state.may_lead(now));
                match state.observe_workers(now).await {
                    // The leader assigns only while it sees its own heartbeat: before its first
                    // one (just started) its own leases would look orphaned and move away.
                    Ok(members) if state.may_lead(now) && members.includes(&state.args.me) => {
                        if let Err(e) = state.lead(now, &members).await {
                            warn!(error = %e, "assignment cycle failed");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "cannot read heartbeats"),
                }
            }
            CoordinatorMsg::IsLeader(reply) => {
                let _ = reply.send(state.may_lead(Instant::now()));
            }
            CoordinatorMsg::Resign(reply) => {
                state.resigned = true;
                state.args.view.set_leader(false);
                if let Some((lock, _)) = state.lock.take() {
                    let expect = proto::Expect::unchanged(&lock);
                    let table = state.args.table.clone();
                    let deleted = state
                        .args
                        .retry
                        .run(proto::LeaseError::is_retryable, || table.delete(&lock.key, &expect))
                        .await;
                    if let Err(e) = deleted {
                        debug!(error = %e, "leader lock not released; it will expire");
                    }
                    state.args.events.emit(ClusterEvent::LostLeadership { node: state.args.me.clone() });
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Checkpoint, Position, SequenceNumber, ShardId};

    #[test]
    fn a_parent_goes_only_after_every_child_progressed() {
        let mut parent = Lease::for_shard(&ShardId::new("p"), vec![], None, Checkpoint::ShardEnd);
        parent.child_shard_ids = vec![ShardId::new("a"), ShardId::new("b")];
        let a = Lease::for_shard(&ShardId::new("a"), vec![ShardId::new("p")], None, Checkpoint::TrimHorizon);
        let mut b = a.clone();
        b.key = "b".into();
        let at = Checkpoint::At(Position::new(SequenceNumber::from_u128(5), 0));
        assert!(finished_parents(&[parent.clone(), a.clone(), b.clone()]).is_empty());
        let a_done = Lease { checkpoint: at.clone(), ..a };
        assert!(finished_parents(&[parent.clone(), a_done.clone(), b.clone()]).is_empty());
        let b_done = Lease { checkpoint: Checkpoint::ShardEnd, ..b };
        assert_eq!(finished_parents(&[parent.clone(), a_done.clone(), b_done.clone()]).len(), 1);
        assert!(finished_parents(&[parent, a_done]).is_empty(), "a child without a lease keeps the parent");
    }
}
