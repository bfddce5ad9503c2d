//! The `ShardReader` conformance suite: the same assertions against the in-memory stream and the
//! Kinesis adapter on the local stack (kinesis-local, started on 127.0.0.1 by the test harness):
//! routing by hash key, iterator types (never re-reading a checkpointed record), a split and a
//! merge with their lineage and ChildShards at the parents' ends.

use adapters::kinesis::Kinesis;
use adapters::kinesis_fan_out::KinesisFanOut;
use async_trait::async_trait;
use proto::memory::{hash_key, MemoryStream};
use proto::{Clock, KinesisRecord, ReadError, ShardId, ShardInfo, ShardReader, StartingPosition};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use testkit::local_stack::{emulator, Service};

/// What the suite needs besides reading: writing and resharding.
#[async_trait]
trait StreamUnderTest: Send + Sync {
    fn reader(&self) -> &dyn ShardReader;
    async fn put(&self, key: &str, data: &[u8]);
    async fn split(&self, shard: &ShardId);
    async fn merge(&self, shard: &ShardId, adjacent: &ShardId);
}

struct Memory(MemoryStream);

#[async_trait]
impl StreamUnderTest for Memory {
    fn reader(&self) -> &dyn ShardReader {
        &self.0
    }
    async fn put(&self, key: &str, data: &[u8]) {
        self.0.put(key, data.to_vec());
    }
    async fn split(&self, shard: &ShardId) {
        let info = self.0.open_shards().into_iter().find(|s| &s.id == shard).unwrap();
        let middle = info.hash_range.start + (info.hash_range.end - info.hash_range.start) / 2 + 1;
        self.0.split(shard, middle).unwrap();
    }
    async fn merge(&self, shard: &ShardId, adjacent: &ShardId) {
        self.0.merge(shard, adjacent).unwrap();
    }
}

#[async_trait]
impl StreamUnderTest for Kinesis {
    fn reader(&self) -> &dyn ShardReader {
        self
    }
    async fn put(&self, key: &str, data: &[u8]) {
        let refused = self.put_records(&[(key.to_owned(), data.to_vec())]).await.unwrap();
        assert!(refused.is_empty(), "{refused:?}");
    }
    async fn split(&self, shard: &ShardId) {
        Kinesis::split(self, shard).await.unwrap();
    }
    async fn merge(&self, shard: &ShardId, adjacent: &ShardId) {
        Kinesis::merge(self, shard, adjacent).await.unwrap();
    }
}

/// One read (GetRecords, or the next fan-out event), waiting out throttles and a subscription
/// still held (bounded).
async fn read(
    reader: &dyn ShardReader,
    shard: &ShardId,
    iterator: &proto::ShardIterator,
) -> Result<proto::ReadBatch, ReadError> {
    for _ in 0..50 {
        match reader.read(shard, iterator, 1000).await {
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(250)).await,
            other => return other,
        }
    }
    Err(ReadError::Throttled)
}

/// Every record of a shard from `from`, and the children reported if it ended (bounded: an open
/// shard is read until a read returns nothing; with a pushing reader, until nothing came for over
/// a second (the emulator pushes an event a second), since an empty answer may only mean the next event is still on its way).
async fn drain(
    reader: &dyn ShardReader,
    shard: &ShardId,
    from: StartingPosition,
) -> (Vec<KinesisRecord>, Option<Vec<ShardId>>) {
    let mut iterator = reader.iterator(shard, &from).await.unwrap();
    let mut records = Vec::new();
    let quiet = if reader.pushes() { Duration::from_millis(1200) } else { Duration::ZERO };
    let mut empty_since: Option<std::time::Instant> = None;
    for _ in 0..100 {
        let batch = read(reader, shard, &iterator).await.unwrap();
        let empty = batch.records.is_empty();
        let empty = empty && empty_since.get_or_insert_with(std::time::Instant::now).elapsed() >= quiet;
        if !batch.records.is_empty() {
            empty_since = None;
        }
        records.extend(batch.records);
        match batch.next_iterator {
            None => {
                let mut children: Vec<ShardId> = batch.child_shards.into_iter().map(|c| c.id).collect();
                children.sort();
                return (records, Some(children));
            }
            Some(next) if empty => {
                // An open shard with nothing more to read: done.
                if reader.list_shards().await.unwrap().iter().any(|s| &s.id == shard && s.is_open()) {
                    return (records, None);
                }
                iterator = next;
            }
            Some(next) => iterator = next,
        }
    }
    panic!("shard {shard} did not end within 100 reads");
}

fn open(shards: &[ShardInfo]) -> Vec<ShardInfo> {
    let mut open: Vec<ShardInfo> = shards.iter().filter(|s| s.is_open()).cloned().collect();
    open.sort_by_key(|s| s.hash_range.start);
    open
}

async fn conformance(stream: &dyn StreamUnderTest) {
    let reader = stream.reader();
    let shards = reader.list_shards().await.unwrap();
    let start = open(&shards);
    assert_eq!(start.len(), 2);
    assert_eq!((start[0].hash_range.start, start[1].hash_range.end), (0, u128::MAX));
    assert_eq!(start[0].hash_range.end + 1, start[1].hash_range.start, "open shards tile the hash space");

    // Routing: each record lands in the shard whose range holds MD5(partition key).
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        stream.put(k, format!("v1 {k}").as_bytes()).await;
    }
    let mut seen = BTreeSet::new();
    for s in &start {
        let (records, ended) = drain(reader, &s.id, StartingPosition::TrimHorizon).await;
        assert_eq!(ended, None, "open shard");
        assert!(records.windows(2).all(|w| w[0].sequence < w[1].sequence), "in sequence order");
        for r in &records {
            assert!(s.hash_range.contains(hash_key(&r.partition_key)), "{} routed to {}", r.partition_key, s.id);
            assert_eq!(&r.data[..], format!("v1 {}", r.partition_key).as_bytes());
            assert!(r.arrival_ms > 1_600_000_000_000, "arrival time in ms");
            seen.insert(r.partition_key.clone());
        }
        // Iterator types on this shard.
        if records.len() >= 3 {
            let third = records[2].sequence.clone();
            let (after, _) = drain(reader, &s.id, StartingPosition::AfterSequence(third.clone())).await;
            assert_eq!(after.first().map(|r| &r.sequence), records.get(3).map(|r| &r.sequence), "resumes after");
            assert_eq!(after.len(), records.len() - 3);
            let (at_seq, _) = drain(reader, &s.id, StartingPosition::AtSequence(third)).await;
            assert_eq!(at_seq.len(), records.len() - 2);
        }
        let (latest, _) = drain(reader, &s.id, StartingPosition::Latest).await;
        assert!(latest.is_empty(), "LATEST starts after what is there");
        let (from_time, _) = drain(reader, &s.id, StartingPosition::AtTimestamp(records[0].arrival_ms - 60_000)).await;
        assert_eq!(from_time.len(), records.len());
    }
    assert_eq!(seen.len(), keys.len(), "every record read once");

    // Split the first shard: parent closes, two children with lineage, ChildShards at the end.
    let parent = start[0].id.clone();
    stream.split(&parent).await;
    let after_split = reader.list_shards().await.unwrap();
    let closed = after_split.iter().find(|s| s.id == parent).unwrap();
    assert!(!closed.is_open(), "split parent is closed");
    let children: Vec<&ShardInfo> = after_split.iter().filter(|s| s.parents == vec![parent.clone()]).collect();
    assert_eq!(children.len(), 2);
    let mut ranges: Vec<_> = children.iter().map(|c| c.hash_range).collect();
    ranges.sort_by_key(|r| r.start);
    assert_eq!(
        (ranges[0].start, ranges[0].end + 1, ranges[1].end),
        (start[0].hash_range.start, ranges[1].start, start[0].hash_range.end)
    );
    let (_, ended) = drain(reader, &parent, StartingPosition::TrimHorizon).await;
    let mut want: Vec<ShardId> = children.iter().map(|c| c.id.clone()).collect();
    want.sort();
    assert_eq!(ended, Some(want.clone()), "ChildShards at the parent's end");
    // New records for the parent's keys go to the children.
    for k in &keys {
        stream.put(k, b"v2").await;
    }
    let mut in_children = 0;
    for c in &want {
        in_children += drain(reader, c, StartingPosition::TrimHorizon).await.0.len();
    }
    let in_other = drain(reader, &start[1].id, StartingPosition::TrimHorizon).await.0.len();
    assert_eq!(
        in_children + in_other,
        keys.len() * 2 - seen.iter().filter(|k| start[0].hash_range.contains(hash_key(k))).count()
    );

    // Merge the two children back: one shard with both as parents.
    let kids =
        open(&reader.list_shards().await.unwrap()).into_iter().filter(|s| want.contains(&s.id)).collect::<Vec<_>>();
    stream.merge(&kids[0].id, &kids[1].id).await;
    let after_merge = reader.list_shards().await.unwrap();
    let merged: Vec<&ShardInfo> = after_merge.iter().filter(|s| s.parents.len() == 2).collect();
    assert_eq!(merged.len(), 1);
    let mut parents = merged[0].parents.clone();
    parents.sort();
    assert_eq!(parents, want);
    assert_eq!(merged[0].hash_range, start[0].hash_range, "merged shard covers both");
    for k in &kids {
        let (_, ended) = drain(reader, &k.id, StartingPosition::TrimHorizon).await;
        assert_eq!(ended, Some(vec![merged[0].id.clone()]));
    }
    assert_eq!(open(&after_merge).len(), 2);
}

#[tokio::test]
async fn memory_stream_conforms() {
    conformance(&Memory(MemoryStream::new(2, Clock::system()))).await;
}

static STREAMS: AtomicU32 = AtomicU32::new(0);

#[tokio::test]
async fn kinesis_conforms() {
    let stack = emulator(Service::Kinesis).unwrap();
    let name = format!("conformance-{}-{}", std::process::id(), STREAMS.fetch_add(1, Ordering::Relaxed));
    let kinesis = Kinesis::new(&stack.sdk_config(), name);
    kinesis.create_stream(2).await.unwrap();
    conformance(&kinesis).await;
}

/// Enhanced fan-out: the stream written and resharded through the same calls, read through a
/// registered consumer's subscriptions.
struct FanOut {
    kinesis: Kinesis,
    reader: KinesisFanOut,
}

#[async_trait]
impl StreamUnderTest for FanOut {
    fn reader(&self) -> &dyn ShardReader {
        &self.reader
    }
    async fn put(&self, key: &str, data: &[u8]) {
        StreamUnderTest::put(&self.kinesis, key, data).await;
    }
    async fn split(&self, shard: &ShardId) {
        Kinesis::split(&self.kinesis, shard).await.unwrap();
    }
    async fn merge(&self, shard: &ShardId, adjacent: &ShardId) {
        Kinesis::merge(&self.kinesis, shard, adjacent).await.unwrap();
    }
}

#[tokio::test]
async fn kinesis_enhanced_fan_out_conforms() {
    let stack = emulator(Service::Kinesis).unwrap();
    let name = format!("conformance-efo-{}-{}", std::process::id(), STREAMS.fetch_add(1, Ordering::Relaxed));
    let kinesis = Kinesis::new(&stack.sdk_config(), name);
    kinesis.create_stream(2).await.unwrap();
    let reader = KinesisFanOut::new(kinesis.clone(), "conformance").register().await.unwrap();
    let again = KinesisFanOut::new(kinesis.clone(), "conformance").register().await.unwrap();
    assert_eq!(again.consumer_arn(), reader.consumer_arn(), "a registered consumer is reused");
    assert!(reader.pushes());
    let fan_out = FanOut { kinesis: kinesis.clone(), reader };
    conformance(&fan_out).await;
    // Deregistered only when asked; then it is gone.
    let consumer = KinesisFanOut::new(kinesis.clone(), "conformance");
    consumer.deregister().await.unwrap();
    assert!(matches!(consumer.deregister().await, Err(ReadError::NotFound(_))));
}
