//! Who reads which shard: leader election, shard sync and lease assignment.
//!
//! | file | what it holds |
//! |---|---|
//! | `settings.rs` | `ClusterSettings`: failover time, heartbeat/assign/poll/sync intervals |
//! | `liveness.rs` | observed expiry: a counter unchanged for `failover_time` on the observer's clock |
//! | `planner.rs` | the pure assignment planner: (leases, live nodes) → moves |
//! | `shard_sync.rs` | which leases to create for the listed shards, with lineage |
//! | `cluster_view.rs` | what the coordinator last saw (leader or not, leases and nodes by state), for metrics |
//! | `membership_watch.rs` | what a node's coordinator and lease keeper share: leadership confirmed by heartbeats, the change counter |
//! | `coordinator.rs` | the `Coordinator` actor: election, liveness, sync, apply moves |
//! | `events.rs` | `ClusterEvent`s for progress displays and failover measurements |

pub mod cluster_view;
pub mod coordinator;
pub mod events;
pub mod liveness;
pub mod membership_watch;
pub mod planner;
pub mod settings;
pub mod shard_sync;

pub use cluster_view::ClusterView;
pub use coordinator::{Coordinator, CoordinatorArgs, CoordinatorMsg, SyncedStream};
pub use events::{ClusterEvent, EventSink};
pub use membership_watch::MembershipWatch;
pub use planner::{plan, Move};
pub use settings::ClusterSettings;
