//! What a node runs: the lease keeper, one consumer per owned shard, the sinks.
//!
//! | file | what it holds |
//! |---|---|
//! | `settings.rs` | `NodeSettings`, `ConsumerSettings`, `SinkSettings`: what a node runs with, and the keys of node.toml's `[node]` |
//! | `node.rs` | `Node`: the supervisor actor that starts everything, `start` / `shutdown` / `kill` |
//! | `lease_keeper.rs` | heartbeat, finding assigned leases, starting/stopping consumers, restart policy |
//! | `shard_consumer.rs` | one actor per lease: read → map → sinks → checkpoint what committed |
//! | `sink.rs` | one actor per table: batch by rows/bytes/latency, commit, ack positions |
//! | `mapper.rs` | the `RecordMapper` seam between consumers and the pipeline; the dead-letter table |
//! | `kpl.rs` | KPL aggregates → user records with sub-sequence numbers |
//! | `doc.rs` | JSON without a value tree: records parsed straight into the slots of the fields the columns read, raw values typed on demand |
//! | `decode.rs` | record formats (JSON, AWS DMS) → changes with their version |
//! | `pipeline_config.rs` | `[[reference]]` / `[[table]]` configuration and its validation |
//! | `pipeline.rs` | the configured pipeline: decode → join → transform → rows, dead letters |
//! | `reference_cache.rs` | reference tables in memory: rows in the hash slots, snapshots, change feeds, refreshes |
//! | `transform.rs` | `mask` and `tokenize` (HMAC-SHA256) |
//! | `metrics.rs` | the node's Prometheus metrics (one registry per node) |
//! | `process_metrics.rs` | `process_*`: CPU seconds (fractional), memory, file descriptors, threads, start time |
//! | `health.rs` | readiness: started, heartbeating, not draining |
//! | `observed.rs` | the ports wrapped so that every failed call is counted by service and kind |

pub mod decode;
pub mod doc;
pub mod health;
pub mod kpl;
pub mod lease_keeper;
pub mod mapper;
pub mod metrics;
pub mod node;
pub mod observed;
pub mod pipeline;
pub mod pipeline_config;
pub mod process_metrics;
pub mod reference_cache;
pub mod settings;
pub mod shard_consumer;
pub mod sink;
pub mod transform;

pub use lease_keeper::RestartPolicy;
pub use mapper::{MapOutcome, RecordMapper, DEAD_LETTER_TABLE};
pub use metrics::NodeMetrics;
pub use node::{Node, NodeConfig, NodePorts};
pub use pipeline::Pipeline;
pub use pipeline_config::PipelineConfig;
pub use settings::{ConsumerSettings, NodeSettings, SinkSettings};
