//! The contract every other crate of tributary speaks.
//!
//! | file | what it holds |
//! |---|---|
//! | `ids.rs` | `ShardId`, `WorkerId` |
//! | `sequence.rs` | `SequenceNumber` (any length), `Position` (+ sub-sequence), row `Version` |
//! | `checkpoint.rs` | `Checkpoint`: a position or TRIM_HORIZON / LATEST / AT_TIMESTAMP / SHARD_END |
//! | `lease.rs` | the `Lease` row with every KCL attribute, write conditions (`Expect`) and changes |
//! | `lease_table.rs` | the `LeaseTable` port |
//! | `lease_protocol.rs` | create, renew, take, assign, hand off, checkpoint, release, heartbeat |
//! | `record.rs` | Kinesis records, shard descriptions, child shards, starting positions |
//! | `shard_reader.rs` | the `ShardReader` port |
//! | `row.rs` | warehouse values, table schemas, rows and batches |
//! | `warehouse.rs` | the `Warehouse` port |
//! | `reference_source.rs` | the `ReferenceSource` port |
//! | `retry.rs` | the one retry policy: exponential back-off with jitter (backon), for calls and for actors' own waits |
//! | `civil.rs` | civil dates ⇄ days since 1970 (timestamp parsing, SQL literals, ISO text) |
//! | `duration.rs` | durations as configs write them (humantime, plus bare seconds) |
//! | `clock.rs` | wall-clock milliseconds that follow tokio's (paused) clock |
//! | `memory/` | in-memory implementations of the four ports (the demo, the simulation) |

pub mod checkpoint;
pub mod civil;
pub mod clock;
pub mod duration;
pub mod ids;
pub mod lease;
pub mod lease_protocol;
pub mod lease_table;
pub mod memory;
pub mod record;
pub mod reference_source;
pub mod retry;
pub mod row;
pub mod sequence;
pub mod shard_reader;
pub mod warehouse;

pub use checkpoint::Checkpoint;
pub use clock::Clock;
pub use ids::{ShardId, WorkerId};
pub use lease::{lease_key, stream_of, EntityType, Expect, HashKeyRange, Lease, LeaseChange, Membership, WorkerRow};
pub use lease_protocol::{LeaseProtocol, ProtocolError};
pub use lease_table::{LeaseError, LeaseTable};
pub use record::{ChildShard, KinesisRecord, ReadBatch, ShardInfo, ShardIterator, StartingPosition};
pub use reference_source::{Item, ReferenceChange, ReferenceError, ReferenceSource, Snapshot};
pub use retry::{Backoff, RetryPolicy};
pub use row::{
    unsendable_row, unstorable_text, Batch, Column, Row, RowOp, SqlType, TableSchema, Value, MAX_ROW_SQL_BYTES,
    MAX_TEXT_BYTES, MAX_VERSION_BYTES, TIMESTAMP_RANGE,
};
pub use sequence::{Position, SequenceNumber, Version};
pub use shard_reader::{ReadError, ShardReader};
pub use warehouse::{CommitStats, Warehouse, WarehouseError};
