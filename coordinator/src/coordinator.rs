//! The coordinator actor, one per node. Every `assign_interval` it reads the membership row (the
//! heartbeats, so any node that becomes leader already knows who is alive; the leader's claim;
//! the change counter), claims leadership when the leader's heartbeat stood still for
//! `failover_time`, and while leader: syncs shards into leases, plans and applies moves, and
//! removes rows of dead nodes whose leases were all reassigned. Shard listing runs beside the
//! cycles (a task the leader starts when sync is due and picks up when done): a slow or
//! unreachable Kinesis delays new leases, never failover or balancing.
//!
//! The leader scans the leases only when something can have changed: the change counter moved,
//! a node joined, left, drained or died, the last plan was not at rest (moves made, a handoff
//! or an assignment settling, a lease nobody holds, a node's or another application's leases
//! to watch), shard sync is due, or `failover_time` passed since the last scan.

use crate::cluster_view::ClusterView;
use crate::events::{ClusterEvent, EventSink};
use crate::liveness::Liveness;
use crate::membership_watch::MembershipWatch;
use crate::planner::{is_ready, plan, Move, PlanInput};
use crate::settings::ClusterSettings;
use crate::shard_sync::leases_to_create;
use proto::{
    Checkpoint, Lease, LeaseProtocol, LeaseTable, Membership, ProtocolError, ReadError, RetryPolicy, ShardInfo,
    ShardReader, WorkerId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub struct Coordinator;

/// The nodes as the heartbeats show them.
#[derive(Default, PartialEq)]
struct Members {
    live: BTreeSet<WorkerId>,
    /// Stopping: they keep their leases until they release them, and get no new ones.
    draining: BTreeSet<WorkerId>,
    /// With their last counter, so their row is removed only if it did not move since.
    dead: Vec<(WorkerId, u64)>,
}

impl Members {
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
    /// What it shares with the node's lease keeper (leadership confirmed by heartbeats, the
    /// change counter).
    pub watch: Arc<MembershipWatch>,
}

/// What the leader's last scan saw: while nothing that could change the plan moved, it does
/// not scan again.
struct LastScan {
    at: Instant,
    changes: u64,
    members: Members,
    /// The plan made no move and had nothing to wait for.
    at_rest: bool,
}

pub enum CoordinatorMsg {
    Tick,
    IsLeader(RpcReplyPort<bool>),
    /// Gives up leadership (graceful stop) so another node takes over at once.
    Resign(RpcReplyPort<()>),
}

/// A shard listing: the leases as scanned just before it, then each stream's shards (or why
/// they could not be listed).
struct Listed {
    leases: Vec<Lease>,
    shards: Vec<Result<Vec<ShardInfo>, ReadError>>,
}

pub struct CoordinatorState {
    args: CoordinatorArgs,
    /// Whether this node led at its last cycle (to report becoming and ceasing to be leader).
    leading: bool,
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
    /// When shard sync is due next (`None`: now).
    next_sync: Option<Instant>,
    /// The shard listing under way, one result per stream: it runs beside the cycles, so a slow
    /// or unreachable Kinesis never holds up failover and balancing.
    listing: Option<(Instant, tokio::task::JoinHandle<Result<Listed, ProtocolError>>)>,
    last_scan: Option<LastScan>,
    /// Moves were made whose announcement failed.
    unannounced: bool,
    resigned: bool,
}

impl Drop for CoordinatorState {
    fn drop(&mut self) {
        if let Some((_, listing)) = self.listing.take() {
            listing.abort();
        }
    }
}

impl CoordinatorState {
    fn protocol(&self) -> LeaseProtocol<'_> {
        LeaseProtocol::new(self.args.table.as_ref(), &self.args.retry)
    }

    /// The streams' shards, once a listing finished: one is started when `due` and none is
    /// under way, and waited for up to half a cycle (a healthy Kinesis answers within it); one
    /// still running is picked up by a later cycle.
    ///
    /// The listing scans the lease table first and lists the shards after, as a sync in the
    /// cycle did: shard sync decides from that scan, so a shard listing never meets leases newer
    /// than itself (a parent deleted after a split the listing predates would look unread and be
    /// leased again from its start). One that took longer than `failover_time` is discarded.
    async fn listed(&mut self, due: bool) -> Option<Result<Listed, ProtocolError>> {
        let mut budget = std::time::Duration::ZERO;
        if due && self.listing.is_none() {
            let readers: Vec<Arc<dyn ShardReader>> = self.args.streams.iter().map(|s| s.reader.clone()).collect();
            let (table, retry) = (self.args.table.clone(), self.args.retry.clone());
            let task = tokio::spawn(async move {
                let leases = LeaseProtocol::new(table.as_ref(), &retry).scan().await?;
                let mut shards = Vec::with_capacity(readers.len());
                for reader in readers {
                    shards.push(reader.list_shards().await);
                }
                Ok(Listed { leases, shards })
            });
            self.listing = Some((Instant::now(), task));
            budget = self.args.settings.assign_interval / 2;
        }
        let (started, listing) = self.listing.as_mut()?;
        let started = *started;
        let done = tokio::time::timeout(budget, listing).await.ok()?;
        self.listing = None;
        let failover = self.args.settings.failover_time;
        if started.elapsed() > failover {
            warn!(took = ?started.elapsed(), "shard sync: the listing took longer than failover_time; discarded");
            self.next_sync = Some(Instant::now() + failover / 2);
            return None;
        }
        Some(done.unwrap_or_else(|e| Err(ProtocolError::Table(proto::LeaseError::Unavailable(e.to_string())))))
    }

    /// Leading is allowed only while a row written by this node named it the leader recently
    /// enough that no other node can have seen its heartbeat unchanged for a whole failover
    /// time.
    fn may_lead(&self, now: Instant) -> bool {
        self.args.watch.led_at().is_some_and(|at| now.duration_since(at) < self.args.settings.failover_time / 2)
    }

    /// Reports becoming or ceasing to be the leader.
    fn note_leadership(&mut self, now: Instant) {
        let leading = self.may_lead(now);
        if leading && !self.leading {
            info!(node = %self.args.me, "became leader");
            self.args.events.emit(ClusterEvent::BecameLeader { node: self.args.me.clone() });
            self.next_sync = None;
            self.last_scan = None;
        } else if !leading && self.leading {
            info!(node = %self.args.me, "no longer leader");
            self.args.events.emit(ClusterEvent::LostLeadership { node: self.args.me.clone() });
        }
        self.leading = leading;
        self.args.view.set_leader(leading);
    }

    /// Claims leadership when nobody holds it, or when its holder's heartbeat stood still for
    /// `failover_time` (or is gone). The claim is conditional on leadership being as read, so
    /// of two nodes claiming at once one wins, and a leader whose heartbeat moved keeps it.
    async fn elect(&mut self, row: &Membership, now: Instant) -> Result<(), ProtocolError> {
        let me = self.args.me.clone();
        if row.row(&me).is_none() || self.may_lead(now) {
            return Ok(());
        }
        let observed = match &row.leader {
            None => None,
            // A read older than our own write that made us leader: nothing to claim.
            Some(leader) if leader == &me => return Ok(()),
            Some(leader) => match row.row(leader) {
                None => Some((leader, None)),
                Some(r) if self.workers_seen.expired(leader, r.counter, now, self.args.settings.failover_time) => {
                    Some((leader, Some(r.counter)))
                }
                Some(_) => return Ok(()),
            },
        };
        if let Some(written) = self.protocol().claim_leadership(&me, observed).await? {
            self.args.watch.written(&written, now);
        }
        Ok(())
    }

    /// The nodes by state, as the membership row shows them.
    fn observe_workers(&mut self, row: &Membership, now: Instant) -> Members {
        let rows = &row.workers;
        let mut members = Members::default();
        for row in rows {
            self.workers_seen.observe(&row.id, row.counter, now);
            if self.workers_seen.expired(&row.id, row.counter, now, self.args.settings.failover_time) {
                members.dead.push((row.id.clone(), row.counter));
            } else if row.draining {
                members.draining.insert(row.id.clone());
            } else {
                members.live.insert(row.id.clone());
            }
        }
        let present: BTreeSet<&WorkerId> = rows.iter().map(|r| &r.id).collect();
        self.workers_seen.retain(|w| present.contains(w));
        members
    }

    /// Leases owned by a worker that is not a node of this cluster (no heartbeat row: a KCL
    /// worker sharing the table, e.g. during a migration) and held by it under KCL's own rule:
    /// its counter moved within `failover_time` on this leader's clock. Such a lease is never
    /// taken; once its owner stops renewing it for `failover_time` it is free, and is assigned
    /// from its checkpoint like any other.
    fn held_elsewhere(&mut self, leases: &[Lease], members: &Members, now: Instant) -> BTreeSet<String> {
        let failover = self.args.settings.failover_time;
        let is_member = |o: &WorkerId| members.includes(o) || members.dead.iter().any(|(d, _)| d == o);
        let foreign: Vec<&Lease> = leases
            .iter()
            .filter(|l| !l.is_finished())
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

    async fn lead(&mut self, now: Instant, members: Members, changes: u64) -> Result<(), ProtocolError> {
        let sync_due = self.next_sync.is_none_or(|t| now >= t);
        let mut listed = self.listed(sync_due).await;
        let unchanged = self.last_scan.as_ref().is_some_and(|last| {
            last.at_rest
                && last.changes == changes
                && last.members == members
                && now.duration_since(last.at) < self.args.settings.failover_time
        });
        if unchanged && listed.is_none() {
            return Ok(());
        }
        let dead = &members.dead;
        let mut leases = self.protocol().scan().await?;
        if leases.is_empty() && listed.is_none() && self.listing.is_none() {
            // A table without leases (a new cluster): shard sync at once, whenever it was due.
            listed = self.listed(true).await;
        }
        let mut changed = false;
        let listed = match listed {
            Some(Err(e)) => {
                warn!(error = %e, "shard sync: cannot scan the leases");
                self.next_sync = Some(now + self.args.settings.failover_time / 2);
                None
            }
            Some(Ok(listed)) => Some(listed),
            None => None,
        };
        if let Some(Listed { leases: before, shards: results }) = listed {
            let mut synced = true;
            for (stream, result) in self.args.streams.iter().zip(results) {
                let id = stream.id.as_deref();
                match result {
                    Ok(shards) => {
                        let own: Vec<Lease> = before.iter().filter(|l| l.stream() == id).cloned().collect();
                        for lease in leases_to_create(id, &shards, &own, &stream.initial_position) {
                            if self.protocol().create(&lease).await? {
                                changed = true;
                                debug!(shard = %lease.key, "lease created by shard sync");
                                self.args.events.emit(ClusterEvent::LeaseCreated { shard: lease.shard_id() });
                            }
                            if !leases.iter().any(|l| l.key == lease.key) {
                                leases.push(lease);
                            }
                        }
                    }
                    Err(e) => {
                        warn!(stream = id.unwrap_or("(the stream)"), error = %e, "shard sync: cannot list shards");
                        synced = false;
                    }
                }
            }
            // A failed listing is tried again after half a failover time, not at every cycle.
            let settings = &self.args.settings;
            let wait = if synced { settings.shard_sync_interval } else { settings.failover_time / 2 };
            self.next_sync = Some(now + wait);
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
        let mut held_elsewhere = self.held_elsewhere(&leases, &members, now);
        let foreign = !held_elsewhere.is_empty();
        // Leases of a stream this cluster does not consume (one removed from the config, or the
        // other mode's keys): left as they are, never deleted (`tributary leases --forget`).
        let consumed = |l: &Lease| self.args.streams.iter().any(|s| s.id.as_deref() == l.stream());
        held_elsewhere.extend(leases.iter().filter(|l| !consumed(l)).map(|l| l.key.clone()));
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
                    changed = true;
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
                Err(e) => {
                    // The write may have landed: an assignment settles as if it had (its new owner
                    // must see it before it is handed on), and the nodes are told to look.
                    if matches!(m, Move::Assign { .. }) {
                        self.assigned_at.insert(m.lease().to_owned(), now);
                    }
                    self.unannounced = true;
                    return Err(e);
                }
            }
        }
        // Leases of a stream this cluster does not consume are not its own to count (their
        // being unowned raises no alert).
        after.retain(|l| consumed(l));
        self.args.view.observe(&after, [members.live.len(), members.draining.len(), dead.len()]);
        if changed || self.unannounced {
            // The new owners (and the old ones of a handoff) look at their leases at once. One
            // that failed is tried again next cycle (the nodes' own looks every heartbeat
            // interval find the moves meanwhile).
            self.unannounced = self.protocol().announce_change().await.is_err();
        }
        let by_key = after.iter().map(|l| (l.key.as_str(), l)).collect();
        let waiting = after.iter().any(|l| {
            !l.is_finished()
                && (l.checkpoint_owner.is_some()
                    || l.owner.as_ref().map_or(is_ready(l, &by_key), |o| !members.live.contains(o)))
        });
        let at_rest = !changed
            && !self.unannounced
            && !waiting
            && !foreign
            && stalled.is_empty()
            && self.assigned_at.is_empty()
            && dead.is_empty();
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
        self.last_scan = Some(LastScan { at: now, changes, members, at_rest });
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
            leading: false,
            workers_seen: Liveness::default(),
            handoffs_seen: Liveness::default(),
            foreign_seen: Liveness::default(),
            foreign_first: BTreeMap::new(),
            foreign_reported: BTreeSet::new(),
            assigned_at: BTreeMap::new(),
            next_sync: None,
            listing: None,
            last_scan: None,
            unannounced: false,
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
                // One read a cycle, eventually consistent: liveness is judged over a whole
                // failover time, and every write it leads to is conditional.
                let row = match state.protocol().membership(false).await {
                    Ok(row) => row,
                    Err(e) => {
                        warn!(error = %e, "cannot read the membership row");
                        state.note_leadership(now);
                        return Ok(());
                    }
                };
                state.args.watch.read(&row);
                let members = state.observe_workers(&row, now);
                if let Err(e) = state.elect(&row, now).await {
                    warn!(error = %e, "leader election failed this cycle");
                }
                state.note_leadership(now);
                // The leader assigns only while it sees its own heartbeat: before its first one
                // (just started) its own leases would look orphaned and move away.
                if state.leading && members.includes(&state.args.me) {
                    if let Err(e) = state.lead(now, members, row.changes).await {
                        warn!(error = %e, "assignment cycle failed");
                    }
                }
            }
            CoordinatorMsg::IsLeader(reply) => {
                let _ = reply.send(state.may_lead(Instant::now()));
            }
            CoordinatorMsg::Resign(reply) => {
                state.resigned = true;
                if state.leading {
                    state.args.watch.resigned();
                    let (table, me) = (state.args.table.clone(), state.args.me.clone());
                    let resigned =
                        state.args.retry.run(proto::LeaseError::is_retryable, || table.resign_leadership(&me)).await;
                    if let Err(e) = resigned {
                        debug!(error = %e, "leadership not given up; another node claims it after failover_time");
                    }
                    state.note_leadership(Instant::now());
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
