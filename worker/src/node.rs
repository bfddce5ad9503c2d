//! One node: the supervisor actor that starts the sinks, the coordinator and the lease keeper,
//! and its restart policy. The coordinator holds no state worth keeping and is restarted when it
//! fails; a failed keeper or sink stops the node (its process exits and is restarted by its
//! orchestrator, and its leases fail over like a crash).

use crate::lease_keeper::{KeeperArgs, KeeperMsg, LeaseKeeper, RestartPolicy};
use crate::metrics::NodeMetrics;
use crate::record_mapper::RecordMapper;
use crate::settings::{ConsumerSettings, SinkSettings};
use crate::shard_consumer::ConsumerContext;
use crate::sink::{Sink, SinkArgs, SinkRole, Sinks};
use coordinator::{
    ClusterSettings, Coordinator, CoordinatorArgs, CoordinatorMsg, EventSink, MembershipWatch, SyncedStream,
};
use proto::{Checkpoint, LeaseTable, RetryPolicy, ShardId, ShardReader, TableSchema, Warehouse, WorkerId};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, warn};

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub me: WorkerId,
    pub cluster: ClusterSettings,
    pub consumer: ConsumerSettings,
    pub sink: SinkSettings,
    pub restart: RestartPolicy,
    pub retry: RetryPolicy,
    /// How long a graceful stop waits for consumers to flush and release.
    pub shutdown_deadline: Duration,
}

impl NodeConfig {
    pub fn new(me: WorkerId, cluster: ClusterSettings) -> Self {
        Self {
            me,
            cluster,
            consumer: ConsumerSettings::default(),
            sink: SinkSettings::default(),
            restart: RestartPolicy::default(),
            retry: RetryPolicy::default(),
            shutdown_deadline: crate::settings::NodeSettings::DEFAULT.shutdown_deadline,
        }
    }
}

/// The services a node of a single-stream cluster talks to (lease keys are shard ids).
#[derive(Clone)]
pub struct NodePorts {
    pub table: Arc<dyn LeaseTable>,
    pub reader: Arc<dyn ShardReader>,
    pub warehouse: Arc<dyn Warehouse>,
    pub mapper: Arc<dyn RecordMapper>,
}

/// One stream a node consumes: how it is read and mapped, and where its new shards start.
#[derive(Clone)]
pub struct StreamPorts {
    /// Its identifier in a multi-stream lease table (`account:stream:creationEpoch`, the
    /// prefix of its lease keys); `None` in a single-stream table.
    pub id: Option<String>,
    pub reader: Arc<dyn ShardReader>,
    pub mapper: Arc<dyn RecordMapper>,
    /// Where its shards without a checkpoint start, and the time `AtTimestamp` means; `None`:
    /// the cluster's `initial_position` and the consumer settings' `initial_timestamp`.
    pub initial_position: Option<(Checkpoint, Option<i64>)>,
}

/// The services a node talks to: the lease table and the warehouse, shared, and each stream.
#[derive(Clone)]
pub struct Ports {
    pub table: Arc<dyn LeaseTable>,
    pub warehouse: Arc<dyn Warehouse>,
    pub streams: Vec<StreamPorts>,
}

impl From<NodePorts> for Ports {
    fn from(p: NodePorts) -> Self {
        let stream = StreamPorts { id: None, reader: p.reader, mapper: p.mapper, initial_position: None };
        Ports { table: p.table, warehouse: p.warehouse, streams: vec![stream] }
    }
}

struct NodeSupervisor;

struct SupervisorArgs {
    config: NodeConfig,
    ports: Ports,
    events: EventSink,
    metrics: Arc<NodeMetrics>,
    /// What the coordinator and the keeper share (kept across a coordinator's restart).
    watch: Arc<MembershipWatch>,
}

struct SupervisorState {
    args: SupervisorArgs,
    coordinator: ActorRef<CoordinatorMsg>,
    keeper: ActorRef<KeeperMsg>,
}

enum SupervisorMsg {
    Parts(ractor::RpcReplyPort<(ActorRef<CoordinatorMsg>, ActorRef<KeeperMsg>)>),
}

async fn spawn_coordinator(
    args: &SupervisorArgs,
    supervisor: ActorCell,
) -> Result<ActorRef<CoordinatorMsg>, ActorProcessingErr> {
    let cluster_start = &args.config.cluster.initial_position;
    let streams = args
        .ports
        .streams
        .iter()
        .map(|s| SyncedStream {
            id: s.id.clone(),
            reader: s.reader.clone(),
            initial_position: s.initial_position.as_ref().map_or(cluster_start, |(p, _)| p).clone(),
        })
        .collect();
    let coordinator_args = CoordinatorArgs {
        me: args.config.me.clone(),
        table: args.ports.table.clone(),
        streams,
        settings: args.config.cluster.clone(),
        retry: args.config.retry.clone(),
        events: args.events.clone(),
        view: args.metrics.cluster.clone(),
        watch: args.watch.clone(),
    };
    Ok(Actor::spawn_linked(None, Coordinator, coordinator_args, supervisor).await?.0)
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let spawn_sink = |table: Arc<TableSchema>, role: SinkRole| {
            let sink_args = SinkArgs {
                table,
                warehouse: args.ports.warehouse.clone(),
                settings: args.config.sink.clone(),
                retry: args.config.retry.clone(),
                metrics: args.metrics.clone(),
                role,
            };
            Actor::spawn_linked(None, Sink, sink_args, myself.get_cell())
        };
        if args.ports.streams.is_empty() {
            return Err("a node needs at least one stream".into());
        }
        // One dead-letter table for every stream; each stream's tables its own.
        // It is started first: its table exists before any table's sink dead-letters a row the
        // warehouse refused.
        let dead_letter_table = Arc::new(crate::pipeline::dead_letter::schema());
        let dead_letters =
            (dead_letter_table.name.clone(), spawn_sink(dead_letter_table.clone(), SinkRole::DeadLetters).await?.0);
        let mut streams = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for stream in &args.ports.streams {
            let mut tables = Vec::new();
            for table in stream.mapper.tables() {
                if !names.insert(table.name.clone()) {
                    return Err(format!("table {} is written by two streams", table.name).into());
                }
                tables.push((
                    table.name.clone(),
                    spawn_sink(table, SinkRole::Table { dead_letters: dead_letter_table.clone() }).await?.0,
                ));
            }
            let mut settings = args.config.consumer.clone();
            if let Some((_, at)) = &stream.initial_position {
                settings.initial_timestamp = *at;
            }
            streams.push(Arc::new(ConsumerContext {
                me: args.config.me.clone(),
                stream: stream.id.clone(),
                table: args.ports.table.clone(),
                reader: stream.reader.clone(),
                mapper: stream.mapper.clone(),
                sinks: Sinks::new(tables, dead_letters.clone()),
                settings,
                retry: args.config.retry.clone(),
                events: args.events.clone(),
                metrics: args.metrics.clone(),
            }));
        }
        let coordinator = spawn_coordinator(&args, myself.get_cell()).await?;
        let keeper_args = KeeperArgs {
            streams,
            settings: args.config.cluster.clone(),
            restart: args.config.restart.clone(),
            watch: args.watch.clone(),
        };
        let keeper = Actor::spawn_linked(None, LeaseKeeper, keeper_args, myself.get_cell()).await?.0;
        Ok(SupervisorState { args, coordinator, keeper })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Parts(reply) => {
                let _ = reply.send((state.coordinator.clone(), state.keeper.clone()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) if cell.get_id() == state.coordinator.get_id() => {
                warn!(node = %state.args.config.me, %err, "coordinator failed; restarting it");
                state.coordinator = spawn_coordinator(&state.args, myself.get_cell()).await?;
            }
            SupervisionEvent::ActorFailed(_, err) => {
                error!(node = %state.args.config.me, %err, "a node actor failed; stopping the node");
                myself.stop(Some(format!("child failed: {err}")));
            }
            SupervisionEvent::ActorTerminated(cell, _, _) if cell.get_id() == state.keeper.get_id() => {
                myself.stop(Some("stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A running node.
pub struct Node {
    pub id: WorkerId,
    pub metrics: Arc<NodeMetrics>,
    supervisor: ActorRef<SupervisorMsg>,
    handle: tokio::task::JoinHandle<()>,
    /// Fixed for the node's life (its failure stops the node); the coordinator may be
    /// restarted, so it is asked of the supervisor each time.
    keeper: ActorRef<KeeperMsg>,
    shutdown_deadline: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("node {node} failed to start: {reason}")]
pub struct StartError {
    pub node: WorkerId,
    pub reason: String,
}

impl Node {
    pub async fn start(config: NodeConfig, ports: impl Into<Ports>, events: EventSink) -> Result<Node, StartError> {
        Self::start_with_metrics(config, ports, events, Arc::new(NodeMetrics::default())).await
    }

    /// Starts a node that reports into `metrics` (made beforehand, e.g. for ports that count
    /// their failed calls there: `crate::observed`).
    pub async fn start_with_metrics(
        config: NodeConfig,
        ports: impl Into<Ports>,
        events: EventSink,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Node, StartError> {
        let id = config.me.clone();
        let shutdown_deadline = config.shutdown_deadline;
        let fail = |reason: String| StartError { node: id.clone(), reason };
        let watch = Arc::new(MembershipWatch::new(id.clone()));
        let args = SupervisorArgs { config, ports: ports.into(), events, metrics: metrics.clone(), watch };
        let (supervisor, handle) = Actor::spawn(None, NodeSupervisor, args).await.map_err(|e| fail(e.to_string()))?;
        let (_, keeper) = ractor::call!(supervisor, SupervisorMsg::Parts).map_err(|e| fail(e.to_string()))?;
        // The sinks checked their tables and the keeper runs: ready once it heartbeats.
        metrics.health.set_started();
        Ok(Node { id: id.clone(), metrics, supervisor, handle, keeper, shutdown_deadline })
    }

    /// The current coordinator (a restarted one after a failure).
    async fn coordinator(&self) -> Option<ActorRef<CoordinatorMsg>> {
        ractor::call!(self.supervisor, SupervisorMsg::Parts).ok().map(|(c, _)| c)
    }

    /// The shards this node consumes now.
    pub async fn owned(&self) -> Vec<ShardId> {
        ractor::call!(self.keeper, KeeperMsg::Owned).unwrap_or_default()
    }

    pub async fn is_leader(&self) -> bool {
        match self.coordinator().await {
            Some(c) => ractor::call!(c, CoordinatorMsg::IsLeader).unwrap_or(false),
            None => false,
        }
    }

    /// Graceful stop: leadership is given up (so this node assigns nothing more), every
    /// consumer flushes, checkpoints and releases its lease, then the actors stop.
    pub async fn shutdown(self) {
        let deadline = self.shutdown_deadline;
        self.metrics.health.set_draining();
        if let Some(c) = self.coordinator().await {
            let _ = ractor::call!(c, CoordinatorMsg::Resign);
        }
        let _ = ractor::call!(self.keeper, KeeperMsg::Shutdown, deadline);
        self.supervisor.stop(Some("shutdown".into()));
        let _ = self.handle.await;
    }

    /// A crash: every actor of the node stops at once, writing nothing.
    pub async fn kill(self) {
        kill_tree(&self.supervisor.get_cell());
        let _ = self.handle.await;
    }

    /// Resolves when the node stopped on its own (a fatal failure).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

fn kill_tree(cell: &ActorCell) {
    for child in cell.get_children() {
        kill_tree(&child);
    }
    cell.kill();
}
