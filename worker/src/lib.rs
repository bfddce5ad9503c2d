//! What a node runs: the lease keeper, one consumer per owned shard, the sinks.
//!
//! | file | what it holds |
//! |---|---|
//! | `node.rs` | `Node`: the supervisor actor that starts everything, `start` / `shutdown` / `kill` |
//! | `lease_keeper.rs` | heartbeat, finding assigned leases, starting/stopping consumers, restart policy |
//! | `shard_consumer.rs` | one actor per lease: read → map → sinks → checkpoint what committed |
//! | `sink.rs` | one actor per table: batch by rows/bytes/latency, commit, ack positions |
//! | `mapper.rs` | records → rows (`RecordMapper`, `JsonMapper`), the dead-letter table |
//! | `metrics.rs` | the node's counters |

pub mod lease_keeper;
pub mod mapper;
pub mod metrics;
pub mod node;
pub mod shard_consumer;
pub mod sink;

pub use lease_keeper::RestartPolicy;
pub use mapper::{ColumnSource, JsonMapper, RecordMapper, TableMapping, DEAD_LETTER_TABLE};
pub use metrics::NodeMetrics;
pub use node::{Node, NodeConfig, NodePorts};
pub use shard_consumer::ConsumerSettings;
pub use sink::SinkSettings;
