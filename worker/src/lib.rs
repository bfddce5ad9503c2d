//! What a node runs: the lease keeper, one consumer per owned shard, the sinks, and the record
//! pipeline the consumers call. Dependencies point one way: node → lease keeper → shard
//! consumer → (shard cursor, chunk progress, sinks, record mapper); the pipeline implements the
//! record mapper and knows no actor; a sink reports commits through its own `ChunkCommit`.
//!
//! | file | what it holds |
//! |---|---|
//! | `settings.rs` | `NodeSettings`, `ConsumerSettings`, `SinkSettings`: what a node runs with, and the keys of node.toml's `[node]` |
//! | `node.rs` | `Node`: the supervisor actor that starts everything, `start` / `shutdown` / `kill` |
//! | `lease_keeper.rs` | heartbeat, finding assigned leases, starting/stopping consumers, restart policy |
//! | `shard_consumer.rs` | one actor per lease: read → map → sinks → checkpoint what committed → shard end |
//! | `shard_cursor.rs` | reading one shard: iterator, resume point, retries, the shard's read limits |
//! | `chunk_progress.rs` | chunks handed to the sinks and the committed prefix a checkpoint may reach |
//! | `sink.rs` | one actor per table: batch by rows/bytes/latency, commit, ack chunks (`ChunkCommit`) |
//! | `batch_bisect.rs` | a batch the warehouse refused: committed in halves down to the rows it refuses |
//! | `record_mapper.rs` | the seam between consumers and the pipeline: `UserRecord`, `RecordMapper`, `Target` |
//! | `kpl.rs` | KPL aggregates → user records with sub-sequence numbers |
//! | `pipeline/` | the configured pipeline: decode → join → transform → rows, dead letters (its own map) |
//! | `reference_cache.rs` | one reference table in memory: rows in the hash slots, snapshots, change application |
//! | `reference_set.rs` | a pipeline's reference tables: loaded at start, kept fresh by supervised refreshers |
//! | `metrics.rs` | the node's Prometheus metrics (one registry per node) |
//! | `process_metrics.rs` | `process_*`: CPU seconds (fractional), memory, file descriptors, threads, start time |
//! | `health.rs` | readiness: started, heartbeating, not draining |
//! | `observed.rs` | the ports wrapped so that every failed call is counted by service and kind |

pub mod batch_bisect;
pub mod chunk_progress;
pub mod health;
pub mod kpl;
pub mod lease_keeper;
pub mod metrics;
pub mod node;
pub mod observed;
pub mod pipeline;
pub mod process_metrics;
pub mod record_mapper;
pub mod reference_cache;
pub mod reference_set;
pub mod settings;
pub mod shard_consumer;
pub mod shard_cursor;
pub mod sink;

pub use lease_keeper::RestartPolicy;
pub use metrics::NodeMetrics;
pub use node::{Node, NodeConfig, NodePorts, Ports, StreamPorts};
pub use pipeline::dead_letter::TABLE as DEAD_LETTER_TABLE;
pub use pipeline::{Pipeline, PipelineConfig};
pub use record_mapper::{MapOutcome, MappedRows, RecordMapper, TableId, Target, UserRecord};
pub use settings::{ConsumerSettings, NodeSettings, SinkSettings};
