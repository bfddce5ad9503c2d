//! The `ShardReader` port: Kinesis's ListShards, GetShardIterator and GetRecords.

use crate::ids::ShardId;
use crate::record::{ReadBatch, ShardInfo, ShardIterator, StartingPosition};
use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("shard iterator expired")]
    ExpiredIterator,
    #[error("read throughput exceeded")]
    Throttled,
    #[error("shard or stream not found: {0}")]
    NotFound(String),
    #[error("stream unavailable: {0}")]
    Unavailable(String),
    #[error("read failed: {0}")]
    Fatal(String),
}

impl ReadError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ReadError::Throttled | ReadError::Unavailable(_))
    }

    /// A short name of the failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadError::ExpiredIterator => "expired_iterator",
            ReadError::Throttled => "throttled",
            ReadError::NotFound(_) => "not_found",
            ReadError::Unavailable(_) => "unavailable",
            ReadError::Fatal(_) => "fatal",
        }
    }
}

#[async_trait]
pub trait ShardReader: Send + Sync + 'static {
    /// Every shard of the stream still within retention, open and closed.
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ReadError>;
    async fn iterator(&self, shard: &ShardId, from: &StartingPosition) -> Result<ShardIterator, ReadError>;
    /// At most `limit` records from the position of an iterator of `shard`. Calls are not
    /// paced here: the caller keeps to the shard's read limits.
    async fn read(&self, shard: &ShardId, iterator: &ShardIterator, limit: usize) -> Result<ReadBatch, ReadError>;
    /// Whether records are pushed (enhanced fan-out): `read` itself waits for the next event,
    /// so the caller reads again at once instead of keeping to GetRecords' pace.
    fn pushes(&self) -> bool {
        false
    }
    /// The shard's consumer stopped: whatever the reader holds open for it (a subscription)
    /// can go.
    fn release(&self, _shard: &ShardId) {}
}
