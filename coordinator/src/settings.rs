//! Timing of the lease protocol, shared by the coordinator and the workers. Defaults follow
//! KCL's where KCL has one (failover 10 s).

use proto::Checkpoint;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// A node (or the leader lock) whose counter did not move for this long is dead.
    pub failover_time: Duration,
    /// How often a node writes its heartbeat (and the leader renews its lock).
    pub heartbeat_interval: Duration,
    /// How often every node reads the leader row and the heartbeats, and the leader assigns.
    pub assign_interval: Duration,
    /// How often a node looks for leases assigned to it.
    pub poll_interval: Duration,
    /// How often the leader lists the stream's shards (children are also created at shard end).
    pub shard_sync_interval: Duration,
    /// Where a new lease without parents starts.
    pub initial_position: Checkpoint,
    /// The leader row's key in the lease table.
    pub leader_key: String,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self::with_failover(Duration::from_secs(10))
    }
}

impl ClusterSettings {
    pub fn with_failover(failover_time: Duration) -> Self {
        Self {
            failover_time,
            heartbeat_interval: failover_time / 3,
            assign_interval: Duration::from_millis(500),
            poll_interval: Duration::from_millis(500),
            shard_sync_interval: Duration::from_secs(10),
            initial_position: Checkpoint::TrimHorizon,
            leader_key: "tributary:leader".to_owned(),
        }
    }
}
