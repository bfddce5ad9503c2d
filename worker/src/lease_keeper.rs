//! The lease keeper actor, one per node: writes the node's heartbeat, finds the leases assigned
//! to it, and runs one shard consumer per owned lease under an explicit restart policy.
//!
//! - heartbeat every `heartbeat_interval` (the row it writes says whether this node still leads:
//!   `MembershipWatch`); a node that cannot heartbeat for most of a failover time stops its
//!   consumers (it may have been declared dead), and one whose row was removed re-registers with
//!   no leases;
//! - poll its leases (at most every `poll_interval`) when the membership row's change counter
//!   moved (and for a moment after, as the owner index may lag), while a lease of its own waits
//!   (a handoff to it, a restart back-off), and every `heartbeat_interval`: start consumers for owned
//!   leases (not finished, no handoff pending to us from another node), stop consumers whose
//!   lease moved (gracefully when the leader handed it off, at once when it was taken);
//! - a consumer that fails is restarted after 1 s, 2 s, 4 s … (≤ 30 s, each up to twice that with
//!   jitter); after 5 failures in 10 minutes the lease is released so that another node tries it;
//! - shutdown: every consumer flushes, checkpoints and releases; the heartbeat row is removed.

use crate::shard_consumer::{reason, ConsumerContext, ConsumerMsg, ShardConsumer, StopMode};
use coordinator::planner::is_ready;
use coordinator::{ClusterEvent, ClusterSettings, MembershipWatch};
use proto::{Backoff, Lease, LeaseProtocol, ProtocolError, RetryPolicy, ShardId};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// When a failed consumer is started again.
#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_failures: usize,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_failures: 5,
            window: Duration::from_secs(600),
        }
    }
}

/// A shard's recent consumer failures.
struct Failures {
    /// When each failure within the policy's window happened.
    history: VecDeque<Instant>,
    /// No restart before this.
    not_before: Instant,
    /// The waits of this run of failures.
    backoff: Backoff,
}

impl RestartPolicy {
    fn backoff(&self) -> Backoff {
        RetryPolicy { max_attempts: u32::MAX, initial_backoff: self.initial_backoff, max_backoff: self.max_backoff }
            .backoff()
    }
}

pub enum KeeperMsg {
    Heartbeat,
    Poll,
    /// Graceful stop: replies once every consumer released its lease (or the deadline passed).
    Shutdown(Duration, RpcReplyPort<()>),
    ShutdownDeadline,
    /// The shards this node is consuming.
    Owned(RpcReplyPort<Vec<ShardId>>),
}

pub struct LeaseKeeper;

pub struct KeeperArgs {
    /// One per stream the node consumes (the first also serves what every stream shares: the
    /// lease table, the node's id, events and metrics).
    pub streams: Vec<Arc<ConsumerContext>>,
    pub settings: ClusterSettings,
    pub restart: RestartPolicy,
    /// Shared with the node's coordinator.
    pub watch: Arc<MembershipWatch>,
}

/// How long after the change counter moved a node keeps polling its leases each cycle: the
/// owner index a poll reads is eventually consistent.
const POLL_AFTER_CHANGE: Duration = Duration::from_secs(2);

struct Running {
    actor: ActorRef<ConsumerMsg>,
    stopping: Option<StopMode>,
}

pub struct KeeperState {
    args: KeeperArgs,
    heartbeat: Option<u64>,
    last_heartbeat: Instant,
    consumers: BTreeMap<ShardId, Running>,
    by_actor: BTreeMap<ActorId, ShardId>,
    failures: BTreeMap<ShardId, Failures>,
    /// The leases the last poll found owned by this node.
    known: BTreeSet<ShardId>,
    /// The change counter as of the last poll, when it last moved, and when the last poll ran.
    changes: u64,
    changed_at: Instant,
    polled_at: Option<Instant>,
    /// The last poll left a lease of this node's not running (a handoff to it, a back-off, a
    /// silent heartbeat): poll again next cycle.
    waiting: bool,
    /// When this node told the leader it is stopping.
    draining_since: Option<Instant>,
    stale_handoffs_checked: bool,
    shutdown: Option<RpcReplyPort<()>>,
}

impl KeeperArgs {
    /// What every stream's context shares (the lease table, this node, events, metrics).
    fn ctx(&self) -> &ConsumerContext {
        &self.streams[0]
    }

    /// The context of the stream a lease belongs to; `None` for a stream this node does not
    /// consume.
    fn stream_of(&self, lease: &Lease) -> Option<&Arc<ConsumerContext>> {
        self.stream_of_key(&lease.key)
    }

    fn stream_of_key(&self, key: &str) -> Option<&Arc<ConsumerContext>> {
        self.streams.iter().find(|c| c.stream.as_deref() == proto::stream_of(key))
    }

    /// Stops a consumer at once. A killed actor's `post_stop` does not run, so what its reader
    /// holds open for the shard (a fan-out subscription) is let go here.
    fn kill(&self, shard: &ShardId, running: &Running) {
        if let Some(ctx) = self.stream_of_key(shard.as_str()) {
            let stream_shard = shard.as_str().rsplit(':').next().unwrap_or(shard.as_str());
            ctx.reader.release(&ShardId::new(stream_shard));
        }
        running.actor.kill();
    }
}

impl KeeperState {
    fn protocol(&self) -> LeaseProtocol<'_> {
        LeaseProtocol::new(self.args.ctx().table.as_ref(), &self.args.ctx().retry)
    }

    fn me(&self) -> &proto::WorkerId {
        &self.args.ctx().me
    }

    fn kill_all(&mut self, why: &str) {
        for (shard, running) in std::mem::take(&mut self.consumers) {
            warn!(node = %self.me(), shard = %shard, why, "stopping consumer at once");
            self.args.kill(&shard, &running);
            self.args.ctx().metrics.forget_shard(shard.as_str());
            self.args.ctx().events.emit(ClusterEvent::ConsumerStopped {
                node: self.me().clone(),
                shard,
                why: why.to_owned(),
            });
        }
        self.by_actor.clear();
        self.waiting = true;
    }

    /// Tells the other nodes (the leader above all) that a lease changed hands here.
    async fn announce(&self) {
        if let Err(e) = self.protocol().announce_change().await {
            warn!(node = %self.me(), error = %e, "cannot announce a lease change; the leader finds it within failover_time");
        }
    }

    async fn heartbeat(&mut self) {
        let me = self.me().clone();
        let draining = self.shutdown.is_some();
        let sent = Instant::now();
        match self.protocol().heartbeat(&me, self.heartbeat, draining).await {
            Ok(written) => {
                self.args.watch.written(&written, sent);
                let Some(row) = written.row(&me) else { return };
                self.heartbeat = Some(row.counter);
                self.last_heartbeat = Instant::now();
                self.args.ctx().metrics.health.heartbeat();
            }
            Err(ProtocolError::Evicted { .. }) => {
                warn!(node = %me, "declared dead by the leader; dropping every lease and re-registering");
                self.kill_all(reason::LOST);
                self.heartbeat = None;
            }
            Err(e) => {
                warn!(node = %me, error = %e, "heartbeat failed");
                let silent = self.last_heartbeat.elapsed();
                if silent + self.args.settings.heartbeat_interval >= self.args.settings.failover_time {
                    self.kill_all("heartbeat lost");
                }
            }
        }
    }

    async fn start(&mut self, myself: &ActorRef<KeeperMsg>, lease: Lease) -> Result<(), ActorProcessingErr> {
        let shard = lease.shard_id();
        let Some(ctx) = self.args.stream_of(&lease).cloned() else {
            warn!(shard = %shard, "a lease of a stream this node does not consume; not started");
            return Ok(());
        };
        let (actor, _) = Actor::spawn_linked(None, ShardConsumer, (ctx, lease), myself.get_cell()).await?;
        self.by_actor.insert(actor.get_id(), shard.clone());
        self.consumers.insert(shard, Running { actor, stopping: None });
        Ok(())
    }

    /// Whether a poll could find anything new: the change counter moved (or did a moment ago),
    /// a lease of this node's waits, or a heartbeat interval passed since the last one (so a
    /// move whose announcement was lost is found well within the failover time after which the
    /// leader completes a handoff its giver did not finish).
    fn poll_due(&mut self, now: Instant) -> bool {
        let changes = self.args.watch.changes();
        if changes != self.changes {
            self.changes = changes;
            self.changed_at = now;
        }
        !self.stale_handoffs_checked
            || self.waiting
            || now.duration_since(self.changed_at) < POLL_AFTER_CHANGE
            || self.polled_at.is_none_or(|at| now.duration_since(at) >= self.args.settings.heartbeat_interval)
    }

    async fn poll(&mut self, myself: &ActorRef<KeeperMsg>) -> Result<(), ActorProcessingErr> {
        if self.shutdown.is_some() || self.heartbeat.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        if !self.poll_due(now) {
            return Ok(());
        }
        self.polled_at = Some(now);
        let me = self.me().clone();
        if !self.stale_handoffs_checked {
            // A handoff this node started in an earlier life and never finished: finish it with
            // the stored checkpoint so the new owner is not left waiting.
            for lease in self.protocol().scan().await? {
                if lease.checkpoint_owner.as_ref() == Some(&me) {
                    let _ = self.protocol().finish_handoff(&lease, &me, lease.checkpoint.clone()).await;
                }
            }
            self.stale_handoffs_checked = true;
        }
        let owned = self.protocol().owned_by(&me).await?;
        let owned_keys: BTreeSet<ShardId> = owned.iter().map(Lease::shard_id).collect();
        let mut waiting = false;
        // A node whose heartbeat has been failing may already be declared dead: start nothing.
        let silent =
            self.last_heartbeat.elapsed() + self.args.settings.heartbeat_interval >= self.args.settings.failover_time;
        for lease in owned {
            let shard = lease.shard_id();
            let startable = |l: &Lease| {
                l.is_owned_by(&me) && !l.is_finished() && l.checkpoint_owner.as_ref().is_none_or(|prev| prev == &me)
            };
            let backing_off = self.failures.get(&shard).is_some_and(|f| now < f.not_before);
            if self.args.stream_of(&lease).is_none() {
                // A stream this node does not read (a rollout adding one reached the leader
                // first): given back, with its checkpoint, for a node that reads it.
                if startable(&lease) && !silent {
                    warn!(node = %me, shard = %shard, "assigned a lease of a stream this node does not read; releasing it");
                    if self.protocol().release(&lease, &me, lease.checkpoint.clone()).await.is_ok() {
                        self.announce().await;
                    }
                }
                continue;
            }
            if self.consumers.contains_key(&shard) || lease.is_finished() {
                continue;
            }
            if silent || !startable(&lease) || backing_off {
                waiting = true;
                continue;
            }
            // The owner index may lag: start from a consistent read of the row.
            let Some(lease) = self.protocol().get(shard.as_str()).await?.filter(startable) else {
                waiting = true;
                continue;
            };
            info!(node = %me, shard = %shard, checkpoint = ?lease.checkpoint, "starting consumer");
            self.start(myself, lease).await?;
        }
        // Leases that left this node: the consumer stops (gracefully for a handoff); a handoff of
        // a lease this node was not running (restart back-off) is finished at once.
        let moved: Vec<ShardId> = self
            .consumers
            .iter()
            .filter(|(shard, r)| r.stopping.is_none() && !owned_keys.contains(*shard))
            .map(|(shard, _)| shard.clone())
            .chain(self.known.iter().filter(|s| !owned_keys.contains(*s) && !self.consumers.contains_key(*s)).cloned())
            .collect();
        for shard in moved {
            let current = self.protocol().get(shard.as_str()).await?;
            let Some(running) = self.consumers.get_mut(&shard) else {
                if let Some(lease) = current.filter(|l| l.checkpoint_owner.as_ref() == Some(&me)) {
                    info!(node = %me, shard = %shard, "finishing the handoff of a lease not running here");
                    let _ = self.protocol().finish_handoff(&lease, &me, lease.checkpoint.clone()).await;
                }
                continue;
            };
            match current {
                Some(l) if l.is_owned_by(&me) => {} // the owner index lags; still ours
                Some(l) if l.checkpoint_owner.as_ref() == Some(&me) => {
                    info!(node = %me, shard = %shard, "handing the lease off");
                    running.stopping = Some(StopMode::HandOff);
                    let _ = running.actor.cast(ConsumerMsg::Stop(StopMode::HandOff));
                }
                _ => {
                    warn!(node = %me, shard = %shard, "lease taken by another node; stopping at once");
                    self.args.kill(&shard, running);
                }
            }
        }
        // Leases gone from this node while no consumer ran them (restart back-off): their
        // shards' series go too.
        for shard in self.known.iter().filter(|s| !owned_keys.contains(*s) && !self.consumers.contains_key(*s)) {
            self.args.ctx().metrics.forget_shard(shard.as_str());
        }
        self.known = owned_keys;
        self.waiting = waiting;
        Ok(())
    }

    /// The fast path at a shard's end: a child whose parents are now all finished and that
    /// nobody owns yet is taken and started at once, instead of waiting for the leader's next
    /// cycle and this node's next poll. The take is conditional, so it never doubles an owner;
    /// the leader may hand the child on later to keep the balance.
    async fn adopt_children(
        &mut self,
        myself: &ActorRef<KeeperMsg>,
        parent: &ShardId,
    ) -> Result<(), ActorProcessingErr> {
        let me = self.me().clone();
        let Some(parent) = self.protocol().get(parent.as_str()).await? else { return Ok(()) };
        for child in &parent.child_shard_ids {
            let child = ShardId::new(parent.sibling_key(child));
            let Some(lease) = self.protocol().get(child.as_str()).await? else { continue };
            if lease.owner.is_some() || self.consumers.contains_key(&child) {
                continue;
            }
            // The planner's readiness rule, over consistent reads of the parents. A parent
            // without a lease is left to the leader: it may be one shard sync has not created yet
            // (its own parent still being read), not only one never to be read.
            let mut parents = Vec::new();
            for p in &lease.parent_shard_ids {
                parents.extend(self.protocol().get(&lease.sibling_key(p)).await?);
            }
            if parents.len() < lease.parent_shard_ids.len() {
                continue;
            }
            let by_key = parents.iter().map(|l| (l.key.as_str(), l)).collect();
            if !is_ready(&lease, &by_key) {
                continue;
            }
            match self.protocol().take(&lease, &me).await {
                Ok(taken) => {
                    info!(node = %me, shard = %child, "parents finished; starting the child at once");
                    self.known.insert(child.clone());
                    self.start(myself, taken).await?;
                }
                Err(ProtocolError::Lost { .. }) => {}
                // The take may have landed: the next poll looks (and starts it, or finishes a
                // handoff the leader began from this node meanwhile).
                Err(e) => {
                    warn!(node = %me, shard = %child, error = %e, "taking the child may have failed; looking again");
                    self.known.insert(child.clone());
                    self.waiting = true;
                }
            }
        }
        // A shard ended here (and its children may have moved here): the leader rebalances.
        self.announce().await;
        Ok(())
    }

    /// Records a failure; `true` when the lease should be given up.
    fn failed(&mut self, shard: &ShardId) -> bool {
        let policy = &self.args.restart;
        let now = Instant::now();
        let failures = self.failures.entry(shard.clone()).or_insert_with(|| Failures {
            history: VecDeque::new(),
            not_before: now,
            backoff: policy.backoff(),
        });
        while failures.history.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
            failures.history.pop_front();
        }
        if failures.history.is_empty() {
            failures.backoff = policy.backoff();
        }
        failures.history.push_back(now);
        failures.not_before = now + failures.backoff.next_wait();
        failures.history.len() >= policy.max_failures
    }

    async fn give_up(&mut self, shard: &ShardId) {
        let me = self.me().clone();
        if let Ok(Some(lease)) = self.protocol().get(shard.as_str()).await {
            if lease.is_owned_by(&me) {
                warn!(node = %me, shard = %shard, "consumer keeps failing; releasing the lease for another node");
                if self.protocol().release(&lease, &me, lease.checkpoint.clone()).await.is_ok() {
                    self.announce().await;
                }
            }
        }
        self.failures.remove(shard);
    }

    async fn after_exit(&mut self, myself: &ActorRef<KeeperMsg>, cell: &ActorCell) {
        let Some(shard) = self.by_actor.remove(&cell.get_id()) else { return };
        let was = self.consumers.remove(&shard);
        // A handoff that did not complete (the consumer died first): finish it with the stored
        // checkpoint, so the new owner does not wait for a previous owner that is gone.
        if was.is_some_and(|r| r.stopping == Some(StopMode::HandOff)) {
            let me = self.me().clone();
            if let Ok(Some(lease)) = self.protocol().get(shard.as_str()).await {
                if lease.checkpoint_owner.as_ref() == Some(&me) {
                    let _ = self.protocol().finish_handoff(&lease, &me, lease.checkpoint.clone()).await;
                }
            }
        }
        if self.shutdown.is_some() && self.consumers.is_empty() {
            self.finish_shutdown(myself).await;
        }
    }

    async fn finish_shutdown(&mut self, myself: &ActorRef<KeeperMsg>) {
        self.kill_all("shutdown deadline");
        // Leases assigned to this node that it never started (assigned before the leader saw it
        // draining, or in restart back-off) are released too, so the leader can reassign them at
        // once. A leader that read the heartbeats before the draining flag may still be applying
        // its moves: wait out two assignment cycles first.
        let settled = self.draining_since.map(|t| t + self.args.settings.assign_interval * 2);
        if let Some(settled) = settled {
            tokio::time::sleep_until(settled).await;
        }
        let me = self.me().clone();
        if let Ok(owned) = self.protocol().owned_by(&me).await {
            for lease in owned.into_iter().filter(|l| !l.is_finished()) {
                let _ = self.protocol().release(&lease, &me, lease.checkpoint.clone()).await;
            }
        }
        if let Some(counter) = self.heartbeat.take() {
            match self.args.ctx().table.remove_worker(&me, counter).await {
                Ok(()) => info!(node = %me, "stopped; heartbeat row removed"),
                Err(e) => warn!(node = %me, error = %e, "stopped; heartbeat row left to expire"),
            }
        }
        if let Some(reply) = self.shutdown.take() {
            let _ = reply.send(());
        }
        myself.stop(Some("shutdown".into()));
    }
}

impl Actor for LeaseKeeper {
    type Msg = KeeperMsg;
    type State = KeeperState;
    type Arguments = KeeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: KeeperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.settings.heartbeat_interval, || KeeperMsg::Heartbeat);
        myself.send_interval(args.settings.poll_interval, || KeeperMsg::Poll);
        let _ = myself.cast(KeeperMsg::Heartbeat);
        // A moved change counter is looked at at once, not at the next poll tick.
        let mut changes = args.watch.subscribe();
        let keeper = myself.clone();
        tokio::spawn(async move { while changes.changed().await.is_ok() && keeper.cast(KeeperMsg::Poll).is_ok() {} });
        let changes = args.watch.changes();
        Ok(KeeperState {
            args,
            heartbeat: None,
            last_heartbeat: Instant::now(),
            consumers: BTreeMap::new(),
            by_actor: BTreeMap::new(),
            failures: BTreeMap::new(),
            known: BTreeSet::new(),
            changes,
            changed_at: Instant::now(),
            polled_at: None,
            waiting: true,
            draining_since: None,
            stale_handoffs_checked: false,
            shutdown: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            KeeperMsg::Heartbeat => state.heartbeat().await,
            KeeperMsg::Poll => {
                if let Err(e) = state.poll(&myself).await {
                    warn!(node = %state.me(), error = %e, "lease poll failed");
                }
            }
            KeeperMsg::Shutdown(deadline, reply) => {
                state.shutdown = Some(reply);
                state.draining_since = Some(Instant::now());
                state.heartbeat().await;
                for running in state.consumers.values_mut() {
                    running.stopping = Some(StopMode::Release);
                    let _ = running.actor.cast(ConsumerMsg::Stop(StopMode::Release));
                }
                if state.consumers.is_empty() {
                    state.finish_shutdown(&myself).await;
                } else {
                    myself.send_after(deadline, || KeeperMsg::ShutdownDeadline);
                }
            }
            KeeperMsg::ShutdownDeadline => {
                if state.shutdown.is_some() {
                    state.finish_shutdown(&myself).await;
                }
            }
            KeeperMsg::Owned(reply) => {
                let _ = reply.send(state.consumers.keys().cloned().collect());
            }
        }
        state.args.ctx().metrics.leases_owned.set(state.consumers.len() as i64);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, why) => {
                let shard = state.by_actor.get(&cell.get_id()).cloned();
                state.after_exit(&myself, &cell).await;
                // The lease left (released, handed off, lost, ended): so do its shard's series.
                if let Some(shard) = &shard {
                    state.args.ctx().metrics.forget_shard(shard.as_str());
                }
                if let (Some(shard), Some(reason::SHARD_END)) = (shard, why.as_deref()) {
                    if state.draining_since.is_none() {
                        if let Err(e) = state.adopt_children(&myself, &shard).await {
                            warn!(node = %state.me(), error = %e, "could not adopt the children of {shard}");
                        }
                    }
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(shard) = state.by_actor.get(&cell.get_id()).cloned() else { return Ok(()) };
                warn!(node = %state.me(), shard = %shard, %error, "consumer failed");
                state.args.ctx().events.emit(ClusterEvent::ConsumerStopped {
                    node: state.me().clone(),
                    shard: shard.clone(),
                    why: format!("failed: {error}"),
                });
                state.args.ctx().metrics.consumer_failed(shard.as_str());
                let give_up = state.failed(&shard);
                state.after_exit(&myself, &cell).await;
                // A consumer that is restarted keeps its shard's series (its last checkpoint
                // time above all: a crash loop must not look like fresh progress); a lease given
                // up goes from them at the next poll, unless it came straight back.
                if give_up {
                    state.give_up(&shard).await;
                }
            }
            _ => {}
        }
        state.args.ctx().metrics.leases_owned.set(state.consumers.len() as i64);
        Ok(())
    }
}
