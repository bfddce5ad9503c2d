//! What a shard gives: records, shard descriptions, child shards at a shard's end.

use crate::ids::ShardId;
use crate::lease::HashKeyRange;
use crate::sequence::{Position, SequenceNumber};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One Kinesis record as read from a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisRecord {
    pub sequence: SequenceNumber,
    pub partition_key: String,
    pub data: Arc<[u8]>,
    /// `ApproximateArrivalTimestamp`, milliseconds since the Unix epoch.
    pub arrival_ms: i64,
}

impl KinesisRecord {
    pub fn position(&self) -> Position {
        Position::new(self.sequence.clone(), 0)
    }
}

/// A shard as `ListShards` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: ShardId,
    /// One parent after a split, two after a merge (parent, adjacent parent).
    pub parents: Vec<ShardId>,
    pub hash_range: HashKeyRange,
    /// Set once the shard is closed (split or merged away).
    pub ending_sequence: Option<SequenceNumber>,
}

impl ShardInfo {
    pub fn is_open(&self) -> bool {
        self.ending_sequence.is_none()
    }
}

/// A child of a shard that ended, as `GetRecords` reports it at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    pub id: ShardId,
    pub parents: Vec<ShardId>,
    pub hash_range: HashKeyRange,
}

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    TrimHorizon,
    Latest,
    /// Milliseconds since the Unix epoch.
    AtTimestamp(i64),
    /// The record right after this sequence number (resume after a checkpoint).
    AfterSequence(SequenceNumber),
    AtSequence(SequenceNumber),
}

/// An opaque shard iterator (expires after five minutes, as Kinesis's do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIterator(pub String);

/// The answer of one `GetRecords` call.
#[derive(Clone, Debug, Default)]
pub struct ReadBatch {
    pub records: Vec<KinesisRecord>,
    /// `None` once the shard is closed and fully read; then `child_shards` is set.
    pub next_iterator: Option<ShardIterator>,
    pub millis_behind_latest: u64,
    pub child_shards: Vec<ChildShard>,
}
