//! Reading one shard: the iterator, where to resume when it expires or a read fails, and how
//! long to wait before the next read. The shard's read limits are kept here, and only here:
//! GetRecords at most 5 times a second (`read_interval`), after a read of B bytes the next waits
//! B / 2 MiB/s (so a shard read at full speed stays under its 2 MB/s instead of being throttled
//! for seconds by the service), and a throttled read waits at least a second.

use crate::settings::ConsumerSettings;
use proto::{
    Backoff, Checkpoint, Position, ReadBatch, ReadError, RetryPolicy, ShardId, ShardIterator, ShardReader,
    StartingPosition,
};
use std::time::Duration;

/// Kinesis's read bandwidth of one shard (GetRecords, shared throughput).
const SHARD_READ_BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;
/// How long Kinesis may go on throttling a shard past its limit.
const THROTTLE_PENALTY: Duration = Duration::from_secs(1);
/// The waits after failed reads (the consumer reads on until it is stopped).
const READ_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    initial_backoff: Duration::from_millis(400),
    max_backoff: Duration::from_secs(10),
};

/// What a read brought.
pub enum Fetched {
    /// Records (maybe none); no `next_iterator` means the shard ended.
    Batch(ReadBatch),
    /// Nothing this time (a retryable failure, an expired iterator): read again after this.
    Again(Duration),
}

/// A consumer's place in its shard.
pub struct ShardCursor {
    shard: ShardId,
    iterator: Option<ShardIterator>,
    /// The last Kinesis record fetched (resume point after an expired iterator).
    fetched_upto: Option<Position>,
    /// The waits of the current run of failed reads.
    failing: Option<Backoff>,
    /// The bytes of the last batch read.
    last_batch_bytes: usize,
    /// The reader pushes records (enhanced fan-out): its reads wait for them, so no pacing.
    pushed: bool,
}

impl ShardCursor {
    pub fn new(shard: ShardId) -> Self {
        Self { shard, iterator: None, fetched_upto: None, failing: None, last_batch_bytes: 0, pushed: false }
    }

    /// Where to resume: after the last Kinesis record fetched (all its user records are
    /// pending or done), else at the lease's checkpoint record, whose user records up to the
    /// checkpoint are then skipped (a checkpoint may stop inside a KPL aggregate).
    fn starting_position(&self, checkpoint: &Checkpoint, settings: &ConsumerSettings) -> StartingPosition {
        if let Some(fetched) = &self.fetched_upto {
            return StartingPosition::AfterSequence(fetched.sequence.clone());
        }
        match checkpoint {
            Checkpoint::At(p) => StartingPosition::AtSequence(p.sequence.clone()),
            Checkpoint::Latest => StartingPosition::Latest,
            Checkpoint::AtTimestamp => StartingPosition::AtTimestamp(settings.initial_timestamp.unwrap_or(0)),
            Checkpoint::TrimHorizon | Checkpoint::ShardEnd => StartingPosition::TrimHorizon,
        }
    }

    fn error_backoff(&mut self) -> Duration {
        self.failing.get_or_insert_with(|| READ_RETRY.backoff()).next_wait()
    }

    /// The next batch of the shard, from `checkpoint` when there is no iterator yet. `Err` is a
    /// failure that is not retried here: `NotFound` (the shard is gone) or a fatal one.
    pub async fn fetch(
        &mut self,
        reader: &dyn ShardReader,
        checkpoint: &Checkpoint,
        settings: &ConsumerSettings,
    ) -> Result<Fetched, ReadError> {
        self.pushed = reader.pushes();
        let iterator = match self.iterator.take() {
            Some(it) => it,
            None => match reader.iterator(&self.shard, &self.starting_position(checkpoint, settings)).await {
                Ok(it) => it,
                Err(e) if e.is_retryable() => return Ok(Fetched::Again(self.error_backoff())),
                Err(e) => return Err(e),
            },
        };
        let batch = match reader.read(&self.shard, &iterator, settings.max_records).await {
            Ok(batch) => batch,
            Err(ReadError::ExpiredIterator) => {
                tracing::debug!(shard = %self.shard, "iterator expired; resuming from the last position");
                return Ok(Fetched::Again(Duration::ZERO));
            }
            Err(ReadError::Throttled) => {
                self.iterator = Some(iterator);
                return Ok(Fetched::Again(self.error_backoff().max(THROTTLE_PENALTY)));
            }
            Err(e) if e.is_retryable() => {
                self.iterator = Some(iterator);
                return Ok(Fetched::Again(self.error_backoff()));
            }
            Err(e) => return Err(e),
        };
        self.last_batch_bytes = batch.records.iter().map(|r| r.data.len() + r.partition_key.len()).sum();
        self.failing = None;
        if let Some(last) = batch.records.last() {
            self.fetched_upto = Some(last.position());
        }
        self.iterator = batch.next_iterator.clone();
        Ok(Fetched::Batch(batch))
    }

    /// The pause after a batch before the next read: `read_interval` after records when nothing
    /// waits to be mapped, `idle_read_interval` after an empty read or while records wait for
    /// reference data; never less than the last batch's bytes take at the shard's bandwidth.
    /// A pushing reader (enhanced fan-out) is read again at once unless records wait for
    /// reference data: its reads wait for the next event themselves, and the service keeps
    /// to the shard's rate.
    pub fn pace(&self, got_records: bool, nothing_pending: bool, settings: &ConsumerSettings) -> Duration {
        if self.pushed {
            return if nothing_pending { Duration::ZERO } else { settings.idle_read_interval };
        }
        let delay = if got_records && nothing_pending { settings.read_interval } else { settings.idle_read_interval };
        delay.max(Duration::from_secs_f64(self.last_batch_bytes as f64 / SHARD_READ_BYTES_PER_SECOND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::memory::MemoryStream;
    use proto::Clock;

    fn batch(fetched: Fetched) -> ReadBatch {
        match fetched {
            Fetched::Batch(b) => b,
            Fetched::Again(d) => panic!("a batch, not again after {d:?}"),
        }
    }

    /// An expired iterator resumes after the last record fetched; the pause after a big batch
    /// is what its bytes take at 2 MiB/s; a throttled read waits at least a second.
    #[tokio::test(start_paused = true)]
    async fn reads_resume_after_the_last_record_and_keep_to_the_shard_limits() {
        let stream = MemoryStream::new(1, Clock::starting_at(0));
        let shard = ShardId::numbered(0);
        let sequences: Vec<_> = (0..3).map(|_| stream.put("k", vec![b'x'; 1 << 20]).1).collect();
        let settings = ConsumerSettings { max_records: 1, ..ConsumerSettings::default() };
        let mut cursor = ShardCursor::new(shard.clone());
        let first = batch(cursor.fetch(&stream, &Checkpoint::TrimHorizon, &settings).await.unwrap());
        assert_eq!(first.records[0].sequence, sequences[0]);
        let pause = cursor.pace(true, true, &settings);
        assert!(pause >= Duration::from_millis(500) && pause < Duration::from_millis(600), "{pause:?}");
        assert_eq!(cursor.pace(false, true, &settings), settings.idle_read_interval.max(pause));

        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(
            matches!(cursor.fetch(&stream, &Checkpoint::TrimHorizon, &settings).await, Ok(Fetched::Again(d)) if d.is_zero())
        );
        let second = batch(cursor.fetch(&stream, &Checkpoint::TrimHorizon, &settings).await.unwrap());
        assert_eq!(second.records[0].sequence, sequences[1], "resumed after the record fetched");

        let mut throttled = None;
        for _ in 0..10 {
            if let Fetched::Again(d) = cursor.fetch(&stream, &Checkpoint::TrimHorizon, &settings).await.unwrap() {
                throttled = Some(d);
                break;
            }
        }
        assert!(throttled.is_some_and(|d| d >= THROTTLE_PENALTY), "{throttled:?}");
    }
}
