//! An in-memory Kinesis stream: partition keys hashed with MD5 onto shards, global sequence
//! numbers 56 digits long, splits and merges that close shards and report ChildShards,
//! iterators that expire after five minutes and a 5 reads/s/shard limit.

use crate::clock::Clock;
use crate::ids::ShardId;
use crate::lease::HashKeyRange;
use crate::record::{ChildShard, KinesisRecord, ReadBatch, ShardInfo, ShardIterator, StartingPosition};
use crate::sequence::SequenceNumber;
use crate::shard_reader::{ReadError, ShardReader};
use async_trait::async_trait;
use md5::{Digest, Md5};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const ITERATOR_TTL: Duration = Duration::from_secs(300);
const READS_PER_SECOND: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("shard {0} not found")]
    NoSuchShard(ShardId),
    #[error("shard {0} is closed")]
    Closed(ShardId),
    #[error("hash key is outside shard {0}'s range")]
    BadHashKey(ShardId),
    #[error("shards {0} and {1} are not adjacent")]
    NotAdjacent(ShardId, ShardId),
}

struct Shard {
    info: ShardInfo,
    records: Vec<KinesisRecord>,
    children: Vec<ChildShard>,
    recent_reads: VecDeque<Instant>,
}

struct IteratorState {
    shard: ShardId,
    index: usize,
    issued: Instant,
}

#[derive(Default)]
struct State {
    shards: BTreeMap<ShardId, Shard>,
    next_shard: u64,
    next_sequence: u64,
    iterators: HashMap<String, IteratorState>,
    next_iterator: u64,
}

/// A stream shared by the generator (writes, reshards) and the cluster (reads).
#[derive(Clone)]
pub struct MemoryStream {
    state: Arc<Mutex<State>>,
    clock: Clock,
}

/// MD5 of the partition key as a 128-bit big-endian integer, as Kinesis maps keys to shards.
pub fn hash_key(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

impl MemoryStream {
    /// A stream of `shards` open shards splitting the hash space evenly.
    pub fn new(shards: u32, clock: Clock) -> Self {
        let stream = Self { state: Arc::default(), clock };
        {
            let mut st = stream.state.lock().unwrap();
            let width = u128::MAX / u128::from(shards.max(1));
            for i in 0..shards.max(1) {
                let start = width * u128::from(i);
                let end = if i + 1 == shards.max(1) { u128::MAX } else { width * u128::from(i + 1) - 1 };
                Self::add_shard(&mut st, Vec::new(), HashKeyRange { start, end });
            }
        }
        stream
    }

    fn add_shard(st: &mut State, parents: Vec<ShardId>, hash_range: HashKeyRange) -> ShardId {
        let id = ShardId::numbered(st.next_shard);
        st.next_shard += 1;
        let info = ShardInfo { id: id.clone(), parents, hash_range, ending_sequence: None };
        st.shards.insert(
            id.clone(),
            Shard { info, records: Vec::new(), children: Vec::new(), recent_reads: VecDeque::new() },
        );
        id
    }

    fn next_sequence(st: &mut State) -> SequenceNumber {
        st.next_sequence += 1;
        SequenceNumber::parse(&format!("49{:054}", st.next_sequence)).expect("digits")
    }

    /// PutRecord: the open shard whose range holds the key's hash gets the record.
    pub fn put(&self, partition_key: &str, data: Vec<u8>) -> (ShardId, SequenceNumber) {
        let hash = hash_key(partition_key);
        let arrival_ms = self.clock.now_ms();
        let mut st = self.state.lock().unwrap();
        let sequence = Self::next_sequence(&mut st);
        let shard = st
            .shards
            .values_mut()
            .find(|s| s.info.is_open() && s.info.hash_range.contains(hash))
            .expect("open shards cover the hash space");
        shard.records.push(KinesisRecord {
            sequence: sequence.clone(),
            partition_key: partition_key.to_owned(),
            data: data.into(),
            arrival_ms,
        });
        (shard.info.id.clone(), sequence)
    }

    fn close(st: &mut State, id: &ShardId, children: Vec<ChildShard>) {
        let ending = Self::next_sequence(st);
        let shard = st.shards.get_mut(id).expect("checked");
        shard.info.ending_sequence = Some(ending);
        shard.children = children;
    }

    /// SplitShard at `new_starting_hash_key`: the shard closes, two children open.
    pub fn split(&self, id: &ShardId, new_starting_hash_key: u128) -> Result<(ShardId, ShardId), StreamError> {
        let mut st = self.state.lock().unwrap();
        let range = Self::open_range(&st, id)?;
        if new_starting_hash_key <= range.start || new_starting_hash_key > range.end {
            return Err(StreamError::BadHashKey(id.clone()));
        }
        let low = HashKeyRange { start: range.start, end: new_starting_hash_key - 1 };
        let high = HashKeyRange { start: new_starting_hash_key, end: range.end };
        let a = Self::add_shard(&mut st, vec![id.clone()], low);
        let b = Self::add_shard(&mut st, vec![id.clone()], high);
        let children = vec![
            ChildShard { id: a.clone(), parents: vec![id.clone()], hash_range: low },
            ChildShard { id: b.clone(), parents: vec![id.clone()], hash_range: high },
        ];
        Self::close(&mut st, id, children);
        Ok((a, b))
    }

    /// MergeShards: two adjacent open shards close, one child covering both opens.
    pub fn merge(&self, id: &ShardId, adjacent: &ShardId) -> Result<ShardId, StreamError> {
        let mut st = self.state.lock().unwrap();
        let ra = Self::open_range(&st, id)?;
        let rb = Self::open_range(&st, adjacent)?;
        let (low, high) = if ra.start < rb.start { (ra, rb) } else { (rb, ra) };
        if low.end.checked_add(1) != Some(high.start) {
            return Err(StreamError::NotAdjacent(id.clone(), adjacent.clone()));
        }
        let range = HashKeyRange { start: low.start, end: high.end };
        let parents = vec![id.clone(), adjacent.clone()];
        let child = Self::add_shard(&mut st, parents.clone(), range);
        let children = vec![ChildShard { id: child.clone(), parents, hash_range: range }];
        Self::close(&mut st, id, children.clone());
        Self::close(&mut st, adjacent, children);
        Ok(child)
    }

    fn open_range(st: &State, id: &ShardId) -> Result<HashKeyRange, StreamError> {
        let shard = st.shards.get(id).ok_or_else(|| StreamError::NoSuchShard(id.clone()))?;
        if !shard.info.is_open() {
            return Err(StreamError::Closed(id.clone()));
        }
        Ok(shard.info.hash_range)
    }

    pub fn open_shards(&self) -> Vec<ShardInfo> {
        let st = self.state.lock().unwrap();
        st.shards.values().filter(|s| s.info.is_open()).map(|s| s.info.clone()).collect()
    }

    pub fn record_count(&self) -> usize {
        self.state.lock().unwrap().shards.values().map(|s| s.records.len()).sum()
    }
}

#[async_trait]
impl ShardReader for MemoryStream {
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ReadError> {
        Ok(self.state.lock().unwrap().shards.values().map(|s| s.info.clone()).collect())
    }

    async fn iterator(&self, shard: &ShardId, from: &StartingPosition) -> Result<ShardIterator, ReadError> {
        let mut st = self.state.lock().unwrap();
        let s = st.shards.get(shard).ok_or_else(|| ReadError::NotFound(shard.to_string()))?;
        let index = match from {
            StartingPosition::TrimHorizon => 0,
            StartingPosition::Latest => s.records.len(),
            StartingPosition::AtTimestamp(ms) => s.records.partition_point(|r| r.arrival_ms < *ms),
            StartingPosition::AtSequence(seq) => s.records.partition_point(|r| &r.sequence < seq),
            StartingPosition::AfterSequence(seq) => s.records.partition_point(|r| &r.sequence <= seq),
        };
        let token = format!("it-{}", st.next_iterator);
        st.next_iterator += 1;
        st.iterators.insert(token.clone(), IteratorState { shard: shard.clone(), index, issued: Instant::now() });
        Ok(ShardIterator(token))
    }

    async fn read(&self, shard: &ShardId, iterator: &ShardIterator, limit: usize) -> Result<ReadBatch, ReadError> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap();
        let it = st.iterators.get(&iterator.0).ok_or(ReadError::ExpiredIterator)?;
        if now.duration_since(it.issued) > ITERATOR_TTL {
            st.iterators.remove(&iterator.0);
            return Err(ReadError::ExpiredIterator);
        }
        if it.shard != *shard {
            return Err(ReadError::Fatal(format!("an iterator of shard {}, not {shard}", it.shard)));
        }
        let (shard_id, index) = (it.shard.clone(), it.index);
        let shard = st.shards.get_mut(&shard_id).ok_or_else(|| ReadError::NotFound(shard_id.to_string()))?;
        while shard.recent_reads.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            shard.recent_reads.pop_front();
        }
        if shard.recent_reads.len() >= READS_PER_SECOND {
            return Err(ReadError::Throttled);
        }
        shard.recent_reads.push_back(now);
        let end = (index + limit.max(1)).min(shard.records.len());
        let records = shard.records[index..end].to_vec();
        let at_end = end == shard.records.len();
        let millis_behind_latest =
            if at_end { 0 } else { (self.clock.now_ms() - shard.records[end].arrival_ms).max(0) as u64 };
        let closed_and_done = at_end && !shard.info.is_open();
        let child_shards = if closed_and_done { shard.children.clone() } else { Vec::new() };
        st.iterators.remove(&iterator.0);
        let next_iterator = if closed_and_done {
            None
        } else {
            let token = format!("it-{}", st.next_iterator);
            st.next_iterator += 1;
            st.iterators.insert(token.clone(), IteratorState { shard: shard_id, index: end, issued: now });
            Some(ShardIterator(token))
        };
        if st.iterators.len() > 100_000 {
            st.iterators.retain(|_, it| now.duration_since(it.issued) <= ITERATOR_TTL);
        }
        Ok(ReadBatch { records, next_iterator, millis_behind_latest, child_shards })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn split_and_merge_close_shards_and_report_children() {
        let stream = MemoryStream::new(2, Clock::starting_at(0));
        let shards = stream.list_shards().await.unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].hash_range.start, 0);
        assert_eq!(shards[1].hash_range.end, u128::MAX);
        assert_eq!(shards[0].hash_range.end + 1, shards[1].hash_range.start);
        for i in 0..20 {
            stream.put(&format!("k{i}"), vec![i]);
        }
        let s0 = shards[0].id.clone();
        let mid = shards[0].hash_range.end / 2;
        let (a, b) = stream.split(&s0, mid).unwrap();
        let it = stream.iterator(&s0, &StartingPosition::TrimHorizon).await.unwrap();
        let batch = stream.read(&s0, &it, 10_000).await.unwrap();
        assert!(batch.next_iterator.is_none());
        assert_eq!(batch.child_shards.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![a.clone(), b.clone()]);
        let child = stream.merge(&a, &b).unwrap();
        assert_eq!(stream.open_shards().len(), 2);
        assert!(stream.open_shards().iter().any(|s| s.id == child && s.parents == vec![a.clone(), b.clone()]));
        assert_eq!(stream.merge(&a, &b), Err(StreamError::Closed(a.clone())));
    }

    #[tokio::test(start_paused = true)]
    async fn iterators_expire_and_reads_are_limited() {
        let stream = MemoryStream::new(1, Clock::starting_at(0));
        let shard = ShardId::numbered(0);
        let first = stream.put("a", b"1".to_vec()).1;
        stream.put("a", b"2".to_vec());
        let it = stream.iterator(&shard, &StartingPosition::AfterSequence(first)).await.unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(stream.read(&shard, &it, 10).await.unwrap_err(), ReadError::ExpiredIterator);
        let mut it = stream.iterator(&shard, &StartingPosition::TrimHorizon).await.unwrap();
        let batch = stream.read(&shard, &it, 1).await.unwrap();
        assert_eq!(batch.records[0].data.as_ref(), b"1");
        it = batch.next_iterator.unwrap();
        for _ in 0..4 {
            it = stream.read(&shard, &it, 1).await.unwrap().next_iterator.unwrap();
        }
        assert_eq!(stream.read(&shard, &it, 1).await.unwrap_err(), ReadError::Throttled);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(stream.read(&shard, &it, 1).await.is_ok());
    }
}
