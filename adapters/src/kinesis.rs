//! Kinesis Data Streams (aws-sdk-kinesis): the `ShardReader` port, plus the calls `gen` and the
//! tests use to write and reshard. One thin function per API call; each error is classified
//! retryable or not; retries go through the caller's `RetryPolicy`.
//! GetRecords is not paced here: the shard's consumer keeps to its limits (`shard_cursor.rs`).

use crate::aws::{classify, Failure};
use async_trait::async_trait;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ShardIteratorType, StreamDescriptionSummary, StreamMode, StreamModeDetails, StreamStatus,
};
use aws_sdk_kinesis::Client;
use proto::{
    ChildShard, HashKeyRange, KinesisRecord, ReadBatch, ReadError, RetryPolicy, SequenceNumber, ShardId, ShardInfo,
    ShardIterator, ShardReader, StartingPosition,
};
use std::sync::Arc;
use std::time::Duration;

/// One stream.
#[derive(Clone)]
pub struct Kinesis {
    client: Client,
    stream: String,
    retry: RetryPolicy,
}

pub(crate) fn read_error(f: Failure) -> ReadError {
    match f.code() {
        "ExpiredIteratorException" => ReadError::ExpiredIterator,
        "ResourceNotFoundException" => ReadError::NotFound(f.to_string()),
        _ if f.is_throttle() => ReadError::Throttled,
        _ if f.is_server_fault() => ReadError::Unavailable(f.to_string()),
        "ResourceInUseException" => ReadError::Unavailable(f.to_string()),
        // A ListShards page token lives 5 minutes: the listing starts over (the retry calls
        // `list_shards_once` again, from the first page).
        "ExpiredNextTokenException" => ReadError::Unavailable(f.to_string()),
        _ => match f {
            // Reads are idempotent: an unanswered one can simply be sent again.
            Failure::NoAnswer(m) | Failure::NotSent(m) => ReadError::Unavailable(m),
            other => ReadError::Fatal(other.to_string()),
        },
    }
}

fn hash_key(text: Option<&str>) -> Result<u128, ReadError> {
    text.and_then(|t| t.parse().ok()).ok_or_else(|| ReadError::Fatal(format!("bad hash key {text:?}")))
}

fn sequence(text: &str) -> Result<SequenceNumber, ReadError> {
    SequenceNumber::parse(text).map_err(|_| ReadError::Fatal(format!("bad sequence number {text:?}")))
}

/// A record as GetRecords and SubscribeToShard deliver it.
pub(crate) fn record(r: &aws_sdk_kinesis::types::Record) -> Result<KinesisRecord, ReadError> {
    Ok(KinesisRecord {
        sequence: sequence(r.sequence_number())?,
        partition_key: r.partition_key().unwrap_or_default().to_owned(),
        data: Arc::from(r.data().as_ref()),
        arrival_ms: r.approximate_arrival_timestamp().and_then(|t| t.to_millis().ok()).unwrap_or(0),
    })
}

/// A child shard named at the end of a closed shard (GetRecords and SubscribeToShard alike).
pub(crate) fn child_shard(c: &aws_sdk_kinesis::types::ChildShard) -> Result<ChildShard, ReadError> {
    let range = c.hash_key_range();
    Ok(ChildShard {
        id: ShardId::new(c.shard_id()),
        parents: c.parent_shards().iter().map(ShardId::new).collect(),
        hash_range: HashKeyRange {
            start: hash_key(range.map(|r| r.starting_hash_key()))?,
            end: hash_key(range.map(|r| r.ending_hash_key()))?,
        },
    })
}

/// A record written by `put_records` that the stream refused (throttled), to be sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub index: usize,
    pub code: String,
}

/// The entries of `batch` that `put_records` refused (its answer lists them in order): what to
/// send again.
pub fn refused_only<T>(batch: Vec<T>, refused: &[Refused]) -> Vec<T> {
    let mut again = refused.iter().map(|r| r.index).peekable();
    let mut kept = Vec::with_capacity(refused.len());
    for (i, entry) in batch.into_iter().enumerate() {
        if again.next_if_eq(&i).is_some() {
            kept.push(entry);
        }
    }
    kept
}

impl Kinesis {
    pub fn new(config: &aws_config::SdkConfig, stream: impl Into<String>) -> Self {
        Self { client: Client::new(config), stream: stream.into(), retry: RetryPolicy::default() }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// DescribeStreamSummary of this stream (by name or ARN), retried.
    async fn summary(&self) -> Result<StreamDescriptionSummary, ReadError> {
        let describe = || async {
            let mut call = self.client.describe_stream_summary();
            call = if self.is_arn() { call.stream_arn(&self.stream) } else { call.stream_name(&self.stream) };
            let out = call.send().await.map_err(|e| read_error(classify(&e)))?;
            out.stream_description_summary.ok_or_else(|| ReadError::Fatal("no stream summary".into()))
        };
        self.retry.run(ReadError::is_retryable, describe).await
    }

    /// The stream's identifier in a multi-stream lease table, as KCL writes it:
    /// `account:streamName:creationEpochSeconds` (DescribeStreamSummary).
    pub async fn stream_identifier(&self) -> Result<String, ReadError> {
        let summary = self.summary().await?;
        let account = summary.stream_arn().split_terminator(':').nth(4).filter(|a| !a.is_empty());
        let account = account.ok_or_else(|| ReadError::Fatal(format!("no account in {}", summary.stream_arn())))?;
        let created = summary.stream_creation_timestamp().secs();
        Ok(format!("{account}:{}:{created}", summary.stream_name()))
    }

    /// How long the stream keeps records (DescribeStreamSummary's `RetentionPeriodHours`): the
    /// furthest back any consumer can read it.
    pub async fn retention(&self) -> Result<Duration, ReadError> {
        let hours = self.summary().await?.retention_period_hours().max(0) as u64;
        Ok(Duration::from_secs(3_600 * hours))
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn is_arn(&self) -> bool {
        self.stream.starts_with("arn:")
    }

    /// ListShards, every page: every shard within retention (open and closed).
    async fn list_shards_once(&self) -> Result<Vec<ShardInfo>, ReadError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut call = self.client.list_shards();
            call = match &token {
                // A page token carries the stream and the filter; it must be sent alone.
                Some(t) => call.next_token(t),
                // No filter: every shard within retention, open and closed (AT_TRIM_HORIZON
                // would leave out shards created after the trim horizon).
                None => {
                    if self.is_arn() {
                        call.stream_arn(&self.stream)
                    } else {
                        call.stream_name(&self.stream)
                    }
                }
            };
            let out = call.send().await.map_err(|e| read_error(classify(&e)))?;
            for s in out.shards() {
                let parents: Vec<ShardId> = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(ShardId::new)
                    .collect();
                let range = s.hash_key_range();
                shards.push(ShardInfo {
                    id: ShardId::new(s.shard_id()),
                    parents,
                    hash_range: HashKeyRange {
                        start: hash_key(range.map(|r| r.starting_hash_key()))?,
                        end: hash_key(range.map(|r| r.ending_hash_key()))?,
                    },
                    ending_sequence: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(sequence)
                        .transpose()?,
                });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(shards),
            }
        }
    }

    async fn get_shard_iterator(&self, shard: &ShardId, from: &StartingPosition) -> Result<ShardIterator, ReadError> {
        let mut call = self.client.get_shard_iterator().shard_id(shard.as_str());
        call = if self.is_arn() { call.stream_arn(&self.stream) } else { call.stream_name(&self.stream) };
        call = match from {
            StartingPosition::TrimHorizon => call.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartingPosition::Latest => call.shard_iterator_type(ShardIteratorType::Latest),
            StartingPosition::AtTimestamp(ms) => {
                call.shard_iterator_type(ShardIteratorType::AtTimestamp).timestamp(DateTime::from_millis(*ms))
            }
            StartingPosition::AfterSequence(s) => {
                call.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(s.as_str())
            }
            StartingPosition::AtSequence(s) => {
                call.shard_iterator_type(ShardIteratorType::AtSequenceNumber).starting_sequence_number(s.as_str())
            }
        };
        let out = call.send().await.map_err(|e| read_error(classify(&e)))?;
        let iterator = out.shard_iterator().ok_or_else(|| ReadError::Fatal("no shard iterator returned".into()))?;
        Ok(ShardIterator(iterator.to_owned()))
    }

    async fn get_records(&self, iterator: &ShardIterator, limit: usize) -> Result<ReadBatch, ReadError> {
        let limit = i32::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
        let result = self.client.get_records().shard_iterator(&iterator.0).limit(limit).send().await;
        let out = result.map_err(|e| read_error(classify(&e)))?;
        let records = out.records().iter().map(record).collect::<Result<_, _>>()?;
        let child_shards = out.child_shards().iter().map(child_shard).collect::<Result<_, _>>()?;
        Ok(ReadBatch {
            records,
            next_iterator: out.next_shard_iterator().map(|i| ShardIterator(i.to_owned())),
            millis_behind_latest: out.millis_behind_latest().unwrap_or(0).max(0) as u64,
            child_shards,
        })
    }

    /// PutRecords: the entries the stream refused (throttled or failed), by index.
    pub async fn put_records(&self, entries: &[(String, Vec<u8>)]) -> Result<Vec<Refused>, ReadError> {
        let mut call = self.client.put_records();
        call = if self.is_arn() { call.stream_arn(&self.stream) } else { call.stream_name(&self.stream) };
        for (key, data) in entries {
            let entry = PutRecordsRequestEntry::builder()
                .partition_key(key)
                .data(Blob::new(data.clone()))
                .build()
                .map_err(|e| ReadError::Fatal(e.to_string()))?;
            call = call.records(entry);
        }
        let out = call.send().await.map_err(|e| read_error(classify(&e)))?;
        Ok(out
            .records()
            .iter()
            .enumerate()
            .filter_map(|(index, r)| r.error_code().map(|code| Refused { index, code: code.to_owned() }))
            .collect())
    }

    /// CreateStream (provisioned, `shards` shards) and wait until it is active.
    pub async fn create_stream(&self, shards: u32) -> Result<(), ReadError> {
        self.client
            .create_stream()
            .stream_name(&self.stream)
            .shard_count(shards as i32)
            .stream_mode_details(
                StreamModeDetails::builder()
                    .stream_mode(StreamMode::Provisioned)
                    .build()
                    .map_err(|e| ReadError::Fatal(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| read_error(classify(&e)))?;
        self.wait_active().await
    }

    /// Polls DescribeStreamSummary until the stream is ACTIVE (at most a minute).
    pub async fn wait_active(&self) -> Result<(), ReadError> {
        for _ in 0..600 {
            let out = self
                .client
                .describe_stream_summary()
                .stream_name(&self.stream)
                .send()
                .await
                .map_err(|e| read_error(classify(&e)))?;
            if out.stream_description_summary().map(|d| d.stream_status()) == Some(&StreamStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ReadError::Unavailable(format!("stream {} not active after a minute", self.stream)))
    }

    /// SplitShard at the middle of the shard's hash range.
    pub async fn split(&self, shard: &ShardId) -> Result<(), ReadError> {
        let info = self
            .list_shards()
            .await?
            .into_iter()
            .find(|s| &s.id == shard)
            .ok_or_else(|| ReadError::NotFound(shard.to_string()))?;
        let middle = info.hash_range.start + (info.hash_range.end - info.hash_range.start) / 2 + 1;
        self.client
            .split_shard()
            .stream_name(&self.stream)
            .shard_to_split(shard.as_str())
            .new_starting_hash_key(middle.to_string())
            .send()
            .await
            .map_err(|e| read_error(classify(&e)))?;
        self.wait_active().await
    }

    /// MergeShards of two adjacent open shards.
    pub async fn merge(&self, shard: &ShardId, adjacent: &ShardId) -> Result<(), ReadError> {
        self.client
            .merge_shards()
            .stream_name(&self.stream)
            .shard_to_merge(shard.as_str())
            .adjacent_shard_to_merge(adjacent.as_str())
            .send()
            .await
            .map_err(|e| read_error(classify(&e)))?;
        self.wait_active().await
    }
}

#[async_trait]
impl ShardReader for Kinesis {
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ReadError> {
        self.retry.run(ReadError::is_retryable, || self.list_shards_once()).await
    }

    async fn iterator(&self, shard: &ShardId, from: &StartingPosition) -> Result<ShardIterator, ReadError> {
        self.retry.run(ReadError::is_retryable, || self.get_shard_iterator(shard, from)).await
    }

    /// One GetRecords call: throttles and outages go back to the consumer, which backs off (a
    /// retry here would hold its actor).
    async fn read(&self, _shard: &ShardId, iterator: &ShardIterator, limit: usize) -> Result<ReadBatch, ReadError> {
        self.get_records(iterator, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> Failure {
        Failure::Service { code: code.into(), message: "m".into(), status }
    }

    #[test]
    fn errors_are_classified() {
        assert!(matches!(read_error(service("ExpiredIteratorException", 400)), ReadError::ExpiredIterator));
        assert!(read_error(service("ExpiredNextTokenException", 400)).is_retryable(), "the listing starts over");
        assert!(read_error(service("ProvisionedThroughputExceededException", 400)).is_retryable());
        assert!(read_error(service("InternalFailure", 500)).is_retryable());
        assert!(read_error(Failure::NoAnswer("reset".into())).is_retryable());
        assert!(!read_error(service("AccessDeniedException", 400)).is_retryable());
        assert!(!read_error(service("InvalidArgumentException", 400)).is_retryable());
    }

    #[test]
    fn refused_only_keeps_the_refused_entries_in_order() {
        let refused = |i: usize| Refused { index: i, code: "ProvisionedThroughputExceededException".into() };
        assert_eq!(refused_only(vec!['a', 'b', 'c', 'd'], &[refused(1), refused(3)]), vec!['b', 'd']);
        assert_eq!(refused_only(vec!['a', 'b'], &[]), Vec::<char>::new());
        assert_eq!(refused_only(vec!['a', 'b'], &[refused(0), refused(1)]), vec!['a', 'b']);
    }
}
