//! The shard consumer actor, one per owned lease: read (`shard_cursor.rs`) → map → hand rows to
//! the sinks in chunks → on acks, checkpoint the end of the committed prefix
//! (`chunk_progress.rs`) → at the shard's end, its children's leases and SHARD_END.
//!
//! Reading pauses while the rows in flight exceed a budget, so a slow warehouse slows the reads,
//! not the memory.

use crate::chunk_progress::ChunkProgress;
use crate::kpl::deaggregate;
use crate::metrics::NodeMetrics;
use crate::record_mapper::{MapOutcome, MappedRows, RecordMapper, UserRecord};
use crate::shard_cursor::{Fetched, ShardCursor};
use crate::sink::{Ack, ChunkCommit, Origin, SinkMsg, Sinks};
use coordinator::{ClusterEvent, EventSink};
use proto::{
    Checkpoint, ChildShard, Lease, LeaseProtocol, LeaseTable, Position, ProtocolError, ReadError, RetryPolicy, Row,
    ShardId, ShardReader, WorkerId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::settings::ConsumerSettings;

/// What every consumer of a node shares.
pub struct ConsumerContext {
    pub me: WorkerId,
    /// The stream's identifier in a multi-stream table (its lease keys' prefix); `None` in a
    /// single-stream one.
    pub stream: Option<String>,
    pub table: Arc<dyn LeaseTable>,
    pub reader: Arc<dyn ShardReader>,
    pub mapper: Arc<dyn RecordMapper>,
    pub sinks: Sinks,
    pub settings: ConsumerSettings,
    pub retry: RetryPolicy,
    pub events: EventSink,
    pub metrics: Arc<NodeMetrics>,
}

/// How a consumer ends on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Graceful node stop: flush, checkpoint, release the lease.
    Release,
    /// The leader moved the lease: flush, checkpoint, let the new owner start.
    HandOff,
}

pub enum ConsumerMsg {
    Read,
    /// A deferred checkpoint is due.
    Checkpoint,
    /// A sink committed (or could not commit) its rows of a chunk.
    Commit(ChunkCommit),
    Stop(StopMode),
}

impl From<ChunkCommit> for ConsumerMsg {
    fn from(commit: ChunkCommit) -> Self {
        ConsumerMsg::Commit(commit)
    }
}

impl TryFrom<ConsumerMsg> for ChunkCommit {
    type Error = ConsumerMsg;
    fn try_from(msg: ConsumerMsg) -> Result<Self, ConsumerMsg> {
        match msg {
            ConsumerMsg::Commit(commit) => Ok(commit),
            other => Err(other),
        }
    }
}

/// Why a consumer stopped: the reason string its supervisor sees.
pub mod reason {
    pub const RELEASED: &str = "released";
    pub const HANDED_OFF: &str = "handed off";
    pub const SHARD_END: &str = "shard end";
    pub const LOST: &str = "lost";
}

pub struct ShardConsumer;

pub struct ConsumerState {
    ctx: Arc<ConsumerContext>,
    lease: Lease,
    /// The lease's identity (its key) in logs, events, metrics and the rows' `shard_id` (with
    /// several streams, `account:stream:epoch:shardId-…`, so two streams' records never collide
    /// in the shared dead-letter table).
    shard: ShardId,
    /// The shard as its stream names it (reads, its children).
    stream_shard: ShardId,
    cursor: ShardCursor,
    /// Where the sinks send their acks (this actor).
    acks: DerivedActorRef<ChunkCommit>,
    /// Fetched user records not mapped yet (a join is waiting for reference data).
    pending: VecDeque<UserRecord>,
    /// Since when the first pending record has been waiting.
    waiting_since: Option<Instant>,
    /// The last position handed to the sinks.
    read_upto: Option<Position>,
    /// The chunks handed to the sinks (their in-flight rows are what `max_in_flight_rows` bounds).
    progress: ChunkProgress,
    last_checkpoint: Instant,
    read_scheduled: bool,
    checkpoint_scheduled: bool,
    ended: Option<Vec<ChildShard>>,
    stopping: Option<StopMode>,
}

impl ConsumerState {
    fn protocol(&self) -> LeaseProtocol<'_> {
        LeaseProtocol::new(self.ctx.table.as_ref(), &self.ctx.retry)
    }

    fn schedule_read(&mut self, myself: &ActorRef<ConsumerMsg>, after: Duration) {
        if !self.read_scheduled {
            self.read_scheduled = true;
            if after.is_zero() {
                let _ = myself.cast(ConsumerMsg::Read);
            } else {
                myself.send_after(after, || ConsumerMsg::Read);
            }
        }
    }

    fn in_flight_rows(&self) -> usize {
        self.progress.in_flight_rows()
    }

    fn done_upto(&self) -> Option<&Position> {
        self.read_upto.as_ref().or(match &self.lease.checkpoint {
            Checkpoint::At(p) => Some(p),
            _ => None,
        })
    }

    async fn read(&mut self, myself: &ActorRef<ConsumerMsg>) -> Result<(), ActorProcessingErr> {
        self.read_scheduled = false;
        if self.stopping.is_some() || self.in_flight_rows() >= self.ctx.settings.max_in_flight_rows {
            return Ok(());
        }
        if !self.pending.is_empty() {
            self.hand_on()?;
            if !self.pending.is_empty() {
                // Still waiting for reference data: look again soon, read nothing new.
                self.schedule_read(myself, self.ctx.settings.idle_read_interval);
                return Ok(());
            }
            if self.ended.is_some() {
                return self.maybe_finish(myself).await;
            }
        }
        if self.ended.is_some() {
            return Ok(());
        }
        let fetched = self.cursor.fetch(self.ctx.reader.as_ref(), &self.lease.checkpoint, &self.ctx.settings).await;
        let batch = match fetched {
            Ok(Fetched::Batch(batch)) => batch,
            Ok(Fetched::Again(after)) => {
                self.schedule_read(myself, after);
                return Ok(());
            }
            Err(ReadError::NotFound(why)) => return self.shard_gone(myself, why).await,
            Err(e) => return Err(e.into()),
        };
        let metrics = &self.ctx.metrics;
        let shard = [self.shard.as_str()];
        metrics.shard_read(self.shard.as_str(), batch.millis_behind_latest);
        let got_records = !batch.records.is_empty();
        // Records not done before (a restart re-reads the checkpoint's own record): the
        // stuck-shard alert compares this with the last checkpoint.
        let done = self.done_upto();
        if batch.records.last().is_some_and(|r| done.is_none_or(|d| r.position() > *d)) {
            metrics.shard_last_read.with_label_values(&shard).set(crate::metrics::unix_now());
        }
        metrics.records_read.inc_by(batch.records.len() as u64);
        metrics.bytes_read.inc_by(batch.records.iter().map(|r| r.data.len() as u64).sum());
        self.pending.extend(batch.records.iter().flat_map(deaggregate));
        self.hand_on()?;
        // Records that made no rows (another source table, a control record) are done at once.
        self.checkpoint_soon(myself).await;
        if batch.next_iterator.is_none() {
            info!(shard = %self.shard, children = batch.child_shards.len(), "reached the end of the shard");
            self.create_children(&batch.child_shards).await?;
            self.ended = Some(batch.child_shards);
            if !self.pending.is_empty() {
                // A join still waits: keep looking (the pending branch above finishes).
                self.schedule_read(myself, self.ctx.settings.idle_read_interval);
            }
            return self.maybe_finish(myself).await;
        }
        self.schedule_read(myself, self.cursor.pace(got_records, self.pending.is_empty(), &self.ctx.settings));
        Ok(())
    }

    /// The stream no longer has this shard (trimmed past retention): everything it held is gone,
    /// so it has ended; its children come from the shard list. If the shard is still listed the
    /// error is real and the consumer fails.
    async fn shard_gone(&mut self, myself: &ActorRef<ConsumerMsg>, why: String) -> Result<(), ActorProcessingErr> {
        let shards = self.ctx.reader.list_shards().await?;
        if shards.iter().any(|s| s.id == self.stream_shard) {
            return Err(format!("shard {} listed but not readable: {why}", self.shard).into());
        }
        warn!(shard = %self.shard, "shard no longer in the stream (past retention); ending it");
        let children: Vec<ChildShard> = shards
            .into_iter()
            .filter(|s| s.parents.contains(&self.stream_shard))
            .map(|s| ChildShard { id: s.id, parents: s.parents, hash_range: s.hash_range })
            .collect();
        self.create_children(&children).await?;
        self.ended = Some(children);
        self.maybe_finish(myself).await
    }

    /// Maps pending records into rows (up to one whose join must wait), sends them to the
    /// sinks as one chunk.
    fn hand_on(&mut self) -> Result<(), ActorProcessingErr> {
        let mut out = MappedRows::default();
        let skip_upto = self.done_upto().cloned();
        while self.pending.front().is_some_and(|r| skip_upto.as_ref().is_some_and(|done| &r.position <= done)) {
            self.pending.pop_front();
        }
        let records = self.pending.make_contiguous();
        let mut mapped = 0;
        while mapped < records.len() {
            let waited = self.waiting_since.map(|t| t.elapsed());
            let (n, outcome) = self.ctx.mapper.map(&self.shard, &records[mapped..], false, &mut out);
            if n > 0 {
                self.waiting_since = None;
                mapped += n;
            }
            match outcome {
                MapOutcome::Done => break,
                // The first record has waited long enough: it is dead-lettered, the run goes on.
                MapOutcome::Wait(max_wait) if n == 0 && waited.is_some_and(|w| w >= max_wait) => {
                    self.ctx.mapper.map(&self.shard, &records[mapped..=mapped], true, &mut out);
                    self.waiting_since = None;
                    mapped += 1;
                }
                MapOutcome::Wait(_) => {
                    self.waiting_since.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        if mapped == 0 {
            return Ok(());
        }
        // The chunk's records stay with its rows until they commit: a row the warehouse refuses
        // is dead-lettered with its record.
        let records: Arc<[UserRecord]> = self.pending.drain(..mapped).collect();
        let last = records[records.len() - 1].position.clone();
        self.read_upto = Some(last.clone());
        // The mapper's contract: one end per record mapped, so every row has its record.
        debug_assert_eq!(out.ends.len(), mapped, "the mapper reports where each record's rows end");
        let mut per_sink: Vec<(Vec<Row>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); self.ctx.sinks.len()];
        let mut record = 0;
        for (i, (target, row)) in out.rows.into_iter().enumerate() {
            while out.ends.get(record).is_some_and(|&end| end <= i) {
                record += 1;
            }
            let (rows, origins) = &mut per_sink[self.ctx.sinks.index(target)];
            rows.push(row);
            origins.push(record as u32);
        }
        let chunk = self.progress.next_id();
        let rows: Vec<usize> = per_sink.iter().map(|(rows, _)| rows.len()).collect();
        for (sink, (rows, record_of_row)) in self.ctx.sinks.iter().zip(per_sink) {
            if !rows.is_empty() {
                let origin = Origin { shard: self.shard.clone(), records: records.clone(), record_of_row };
                sink.cast(SinkMsg::Write { rows, origin, ack: Ack { to: self.acks.clone(), chunk } })?;
            }
        }
        self.progress.push(last, rows);
        self.report_in_flight();
        Ok(())
    }

    fn report_in_flight(&self) {
        let tables = self.ctx.sinks.names().iter().cloned();
        let rows = self.progress.in_flight_by_sink().iter().map(|n| *n as i64);
        self.ctx.metrics.shard_in_flight(self.shard.as_str(), tables.zip(rows));
    }

    /// The checkpoint the committed prefix allows, if it is ahead of the lease's.
    fn next_checkpoint(&self) -> Option<Checkpoint> {
        let cp = Checkpoint::At(self.progress.committed()?.clone());
        matches!(cp.progress_cmp(&self.lease.checkpoint), Some(std::cmp::Ordering::Greater)).then_some(cp)
    }

    /// Checkpoints what committed, at most once per `checkpoint_interval`; a deferred write
    /// happens when the interval ends, so an idle shard's checkpoint does not lag behind.
    async fn checkpoint_soon(&mut self, myself: &ActorRef<ConsumerMsg>) {
        if self.stopping.is_some() || self.ended.is_some() || self.next_checkpoint().is_none() {
            return;
        }
        let wait = self.ctx.settings.checkpoint_interval.saturating_sub(self.last_checkpoint.elapsed());
        if wait.is_zero() {
            self.checkpoint(myself).await;
        } else if !self.checkpoint_scheduled {
            self.checkpoint_scheduled = true;
            myself.send_after(wait, || ConsumerMsg::Checkpoint);
        }
    }

    async fn checkpoint(&mut self, myself: &ActorRef<ConsumerMsg>) {
        let Some(cp) = self.next_checkpoint() else { return };
        let me = self.ctx.me.clone();
        match self.protocol().checkpoint(&self.lease, &me, cp).await {
            Ok(lease) => {
                self.lease = lease;
                self.last_checkpoint = Instant::now();
                self.ctx.metrics.checkpoints.inc();
                let shard = [self.shard.as_str()];
                self.ctx.metrics.shard_last_checkpoint.with_label_values(&shard).set(crate::metrics::unix_now());
            }
            // The leader moved the lease with this node as its checkpointOwner: a handoff this
            // consumer has not been told of yet. It finishes it as if told (flush, checkpoint what
            // committed, clear checkpointOwner), rather than stopping as lost and leaving the
            // taker to start from an older checkpoint.
            Err(ProtocolError::Lost { current: Some(row), .. }) if row.checkpoint_owner.as_ref() == Some(&me) => {
                info!(shard = %self.shard, node = %me, "lease handed to another node; finishing the handoff");
                let _ = myself.cast(ConsumerMsg::Stop(StopMode::HandOff));
            }
            Err(ProtocolError::Lost { .. }) => self.stop(myself, reason::LOST),
            Err(e) => warn!(shard = %self.shard, error = %e, "checkpoint failed; will retry"),
        }
    }

    /// Creates the children's leases, but not a merged child's while its other parent has none:
    /// that parent's own parent may still be read (a split just before the merge), and a child
    /// with a parent without a lease could be taken for ready. The other parent's consumer, or
    /// shard sync, creates it once that parent has a lease.
    async fn create_children(&self, children: &[ChildShard]) -> Result<(), ProtocolError> {
        'child: for child in children {
            for parent in child.parents.iter().filter(|p| **p != self.stream_shard) {
                if self.protocol().get(&self.lease.sibling_key(parent)).await?.is_none() {
                    info!(shard = %self.shard, child = %child.id, other_parent = %parent, "the merged child waits for its other parent's lease");
                    continue 'child;
                }
            }
            let lease = Lease::for_stream_shard(
                self.lease.stream(),
                &child.id,
                child.parents.clone(),
                Some(child.hash_range),
                Checkpoint::TrimHorizon,
            );
            if self.protocol().create(&lease).await? {
                self.ctx.events.emit(ClusterEvent::LeaseCreated { shard: lease.shard_id() });
            }
        }
        Ok(())
    }

    /// Once nothing is in flight: the final write of a stop, or SHARD_END.
    async fn maybe_finish(&mut self, myself: &ActorRef<ConsumerMsg>) -> Result<(), ActorProcessingErr> {
        if !self.progress.all_committed() {
            return Ok(());
        }
        let me = self.ctx.me.clone();
        // SHARD_END only once every record of the shard is mapped and committed.
        if let Some(children) = self.ended.as_ref().filter(|_| self.pending.is_empty()) {
            let ids = children.iter().map(|c| c.id.clone()).collect();
            self.ctx.events.emit(ClusterEvent::ShardDrained { node: me.clone(), shard: self.shard.clone() });
            match self.protocol().end_shard(&self.lease, &me, ids).await {
                Ok(lease) => {
                    self.lease = lease;
                    self.ctx.events.emit(ClusterEvent::ShardEnded { node: me, shard: self.shard.clone() });
                    self.stop(myself, reason::SHARD_END);
                }
                Err(ProtocolError::Lost { .. }) => self.stop(myself, reason::LOST),
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        }
        let Some(mode) = self.stopping else { return Ok(()) };
        let to = self.next_checkpoint().unwrap_or_else(|| self.lease.checkpoint.clone());
        let result = match mode {
            StopMode::Release => self.protocol().release(&self.lease, &me, to).await,
            StopMode::HandOff => match self.protocol().get(&self.lease.key).await? {
                Some(current) if current.checkpoint_owner.as_ref() == Some(&me) => {
                    // Record progress only from the checkpoint this consumer itself wrote last;
                    // otherwise hand over what the table holds.
                    let to = if current.checkpoint == self.lease.checkpoint { to } else { current.checkpoint.clone() };
                    self.protocol().finish_handoff(&current, &me, to).await
                }
                current => Err(ProtocolError::Lost { key: self.lease.key.clone(), current: current.map(Box::new) }),
            },
        };
        match (result, mode) {
            (Ok(_), StopMode::Release) => self.stop(myself, reason::RELEASED),
            (Ok(_), StopMode::HandOff) => self.stop(myself, reason::HANDED_OFF),
            (Err(ProtocolError::Lost { .. }), _) => self.stop(myself, reason::LOST),
            (Err(e), _) => return Err(e.into()),
        }
        Ok(())
    }

    fn stop(&self, myself: &ActorRef<ConsumerMsg>, why: &str) {
        info!(shard = %self.shard, node = %self.ctx.me, why, "consumer stopping");
        self.ctx.events.emit(ClusterEvent::ConsumerStopped {
            node: self.ctx.me.clone(),
            shard: self.shard.clone(),
            why: why.to_owned(),
        });
        myself.stop(Some(why.to_owned()));
    }
}

impl Actor for ShardConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = (Arc<ConsumerContext>, Lease);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (ctx, lease): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let shard = lease.shard_id();
        ctx.events.emit(ClusterEvent::ConsumerStarted { node: ctx.me.clone(), shard: shard.clone() });
        ctx.metrics.consumer_started(shard.as_str());
        let progress = ChunkProgress::new(ctx.sinks.len());
        let stream_shard = lease.stream_shard_id();
        let mut state = ConsumerState {
            ctx,
            lease,
            cursor: ShardCursor::new(stream_shard.clone()),
            stream_shard,
            shard,
            acks: myself.get_derived(),
            pending: VecDeque::new(),
            waiting_since: None,
            read_upto: None,
            progress,
            last_checkpoint: Instant::now(),
            read_scheduled: false,
            checkpoint_scheduled: false,
            ended: None,
            stopping: None,
        };
        state.schedule_read(&myself, Duration::ZERO);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Read => state.read(&myself).await?,
            ConsumerMsg::Commit(ChunkCommit::Committed(chunk)) => {
                state.progress.acked(chunk);
                state.report_in_flight();
                state.checkpoint_soon(&myself).await;
                state.maybe_finish(&myself).await?;
                if state.in_flight_rows() < state.ctx.settings.max_in_flight_rows {
                    state.schedule_read(&myself, Duration::ZERO);
                }
            }
            ConsumerMsg::Checkpoint => {
                state.checkpoint_scheduled = false;
                if state.stopping.is_none() && state.ended.is_none() {
                    state.checkpoint(&myself).await;
                }
            }
            ConsumerMsg::Commit(ChunkCommit::Failed(_, why)) => {
                return Err(format!("shard {}: rows not committed: {why}", state.shard).into());
            }
            ConsumerMsg::Stop(mode) => {
                if state.stopping.is_none() {
                    state.stopping = Some(mode);
                    for sink in state.ctx.sinks.iter() {
                        let _ = sink.cast(SinkMsg::Flush);
                    }
                    state.maybe_finish(&myself).await?;
                }
            }
        }
        Ok(())
    }

    /// However it stopped (finished, handed off, lost, failed), what the reader holds open for
    /// the shard (an enhanced fan-out subscription) is let go.
    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.ctx.reader.release(&state.stream_shard);
        Ok(())
    }
}
