//! Cluster events, for progress displays and for measuring failover and handoff times.

use proto::{ShardId, WorkerId};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub enum ClusterEvent {
    BecameLeader {
        node: WorkerId,
    },
    LostLeadership {
        node: WorkerId,
    },
    /// The leader declared a node dead (its heartbeat stopped).
    NodeDead {
        node: WorkerId,
        by: WorkerId,
    },
    LeaseCreated {
        shard: ShardId,
    },
    Assigned {
        shard: ShardId,
        to: WorkerId,
        handoff: bool,
    },
    /// A node started consuming a shard.
    ConsumerStarted {
        node: WorkerId,
        shard: ShardId,
    },
    /// A node stopped consuming a shard (`why`: released, handed off, lost, shard end, failed).
    ConsumerStopped {
        node: WorkerId,
        shard: ShardId,
        why: String,
    },
    /// Every record of a shard is committed and its consumer reads no more: its SHARD_END
    /// checkpoint is being written (a child may start once that write landed, even before the
    /// consumer learns it did).
    ShardDrained {
        node: WorkerId,
        shard: ShardId,
    },
    /// A shard was checkpointed SHARD_END.
    ShardEnded {
        node: WorkerId,
        shard: ShardId,
    },
}

/// Where events go; `None` drops them.
#[derive(Clone, Debug, Default)]
pub struct EventSink(Option<UnboundedSender<(Instant, ClusterEvent)>>);

impl EventSink {
    pub fn new(tx: UnboundedSender<(Instant, ClusterEvent)>) -> Self {
        Self(Some(tx))
    }

    pub fn none() -> Self {
        Self(None)
    }

    pub fn emit(&self, event: ClusterEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send((Instant::now(), event));
        }
    }
}
