//! Enhanced fan-out (`[stream] consumer = "efo"`): the `ShardReader` port over a registered
//! stream consumer and SubscribeToShard, so each shard is pushed to this application at its own
//! 2 MB/s instead of sharing GetRecords' 5 reads a second with every other reader.
//!
//! The consumer is registered once, or found when another node (or an earlier run) registered
//! it, and is deregistered only when asked (`tributary deregister-consumer`).
//!
//! A shard "iterator" here is a starting position written as text (`AFTER_SEQUENCE_NUMBER:…`):
//! where the shard's next event continues. So the shard's consumer resumes, checkpoints, ends
//! and hands off exactly as with polling; only the reading differs. A read waits for the
//! subscription's next event (at most `EVENT_WAIT`, then an empty batch at the same position,
//! so the consumer's actor stays responsive). A subscription is opened again from its
//! continuation sequence number when the service ends it and after five minutes (the service's
//! own limit), and from the position the consumer asks for when that differs from where the
//! subscription is (a consumer restarted from its checkpoint). ResourceInUse (the shard's
//! subscription is still held, e.g. by the node it was handed over from) and LimitExceeded are
//! retryable: the consumer backs off and calls again, as KCL does.

use crate::aws::{classify, Failure};
use crate::kinesis::{child_shard, read_error, record, Kinesis};
use async_trait::async_trait;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::event_stream::EventReceiver;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{ConsumerStatus, ShardIteratorType, SubscribeToShardEventStream};
use aws_sdk_kinesis::Client;
use proto::{ReadBatch, ReadError, RetryPolicy, ShardId, ShardInfo, ShardIterator, ShardReader, StartingPosition};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a read waits for the next event before answering "nothing yet".
const EVENT_WAIT: Duration = Duration::from_millis(500);
/// How often the list of closed shards is refreshed while subscriptions are caught up.
const CLOSED_SHARDS_REFRESH: Duration = Duration::from_secs(5);
/// The service ends a subscription after five minutes; it is renewed then at the latest.
const SUBSCRIPTION_LIFETIME: Duration = Duration::from_secs(300);

type Events = EventReceiver<SubscribeToShardEventStream, SubscribeToShardEventStreamError>;

/// One shard's open subscription.
struct Subscription {
    /// The position its next event continues from (the token the consumer holds).
    at: String,
    events: Events,
    opened: Instant,
    /// `MillisBehindLatest` of its last event: what a wait without an event reports (a quiet
    /// subscription is not a caught-up shard).
    behind_ms: u64,
}

/// One stream read through one registered consumer.
pub struct KinesisFanOut {
    client: Client,
    kinesis: Kinesis,
    consumer_name: String,
    /// Set by `register`.
    consumer_arn: String,
    subscriptions: Mutex<HashMap<ShardId, Subscription>>,
    /// The shards ListShards last said are closed, and when it was asked.
    closed: Mutex<Option<(Instant, HashSet<ShardId>)>>,
    retry: RetryPolicy,
}

/// A starting position as the token the consumer holds between reads.
fn token(from: &StartingPosition) -> String {
    match from {
        StartingPosition::TrimHorizon => "TRIM_HORIZON".into(),
        StartingPosition::Latest => "LATEST".into(),
        StartingPosition::AtTimestamp(ms) => format!("AT_TIMESTAMP:{ms}"),
        StartingPosition::AfterSequence(s) => format!("AFTER_SEQUENCE_NUMBER:{}", s.as_str()),
        StartingPosition::AtSequence(s) => format!("AT_SEQUENCE_NUMBER:{}", s.as_str()),
    }
}

/// The SubscribeToShard starting position a token names.
fn starting_position(token: &str) -> Result<aws_sdk_kinesis::types::StartingPosition, ReadError> {
    let bad = || ReadError::Fatal(format!("not a fan-out position: {token:?}"));
    let (kind, value) = token.split_once(':').unwrap_or((token, ""));
    let builder = aws_sdk_kinesis::types::StartingPosition::builder();
    let builder = match kind {
        "TRIM_HORIZON" => builder.r#type(ShardIteratorType::TrimHorizon),
        "LATEST" => builder.r#type(ShardIteratorType::Latest),
        "AT_TIMESTAMP" => builder
            .r#type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(value.parse().map_err(|_| bad())?)),
        "AFTER_SEQUENCE_NUMBER" => builder.r#type(ShardIteratorType::AfterSequenceNumber).sequence_number(value),
        "AT_SEQUENCE_NUMBER" => builder.r#type(ShardIteratorType::AtSequenceNumber).sequence_number(value),
        _ => return Err(bad()),
    };
    builder.build().map_err(|e| ReadError::Fatal(e.to_string()))
}

/// A failure inside an open subscription (an exception event): the subscription is gone and is
/// opened again from the same position (retryable), unless the shard or consumer no longer
/// exists or the stream's key cannot be used. Classified by the event's exception type, which the
/// SDK decodes even when the message carries no error code.
fn event_error<R: std::fmt::Debug + 'static>(err: &SdkError<SubscribeToShardEventStreamError, R>) -> ReadError {
    use SubscribeToShardEventStreamError as E;
    let SdkError::ServiceError(e) = err else { return ReadError::Unavailable(crate::error_chain(err)) };
    let message = e.err().message().unwrap_or_default().to_owned();
    match e.err() {
        E::ResourceNotFoundException(_) => ReadError::NotFound(message),
        E::ResourceInUseException(_) | E::InternalFailureException(_) => ReadError::Unavailable(message),
        E::KmsThrottlingException(_) => ReadError::Throttled,
        other => {
            let code = other.code().unwrap_or("Unknown").to_owned();
            read_error(Failure::Service { code, message, status: 400 })
        }
    }
}

impl KinesisFanOut {
    /// The stream consumer `consumer_name` of `kinesis`'s stream; nothing is called yet.
    pub fn new(kinesis: Kinesis, consumer_name: &str) -> Self {
        Self {
            client: kinesis.client().clone(),
            kinesis,
            consumer_name: consumer_name.to_owned(),
            consumer_arn: String::new(),
            subscriptions: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            retry: RetryPolicy::default(),
        }
    }

    /// Registers the consumer, or finds it when it is already registered (by another node or an
    /// earlier run), and waits until it is ACTIVE (at most a minute). The node calls this once,
    /// before reading.
    pub async fn register(mut self) -> Result<Self, ReadError> {
        let stream_arn = self.stream_arn().await?;
        // Described first: nodes starting together mostly find it registered, and do not all
        // send RegisterStreamConsumer (which Kinesis rate-limits).
        let known = match self.retry.run(ReadError::is_retryable, || self.describe_consumer(&stream_arn)).await {
            Ok(_) => true,
            Err(ReadError::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        if !known {
            self.retry.run(ReadError::is_retryable, || self.register_consumer(&stream_arn)).await?;
        }
        for _ in 0..600 {
            let description = self.retry.run(ReadError::is_retryable, || self.describe_consumer(&stream_arn)).await?;
            if let Some(arn) = description {
                self.consumer_arn = arn;
                return Ok(self);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ReadError::Unavailable(format!("stream consumer {} not active after a minute", self.consumer_name)))
    }

    /// RegisterStreamConsumer; one already registered (by another node meanwhile) is fine.
    /// LimitExceeded (the call's rate) is a throttle: retried.
    async fn register_consumer(&self, stream_arn: &str) -> Result<(), ReadError> {
        let registered = self
            .client
            .register_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(&self.consumer_name)
            .send()
            .await;
        match registered {
            Ok(_) => {
                tracing::info!(consumer = self.consumer_name, "registered the stream consumer");
                Ok(())
            }
            Err(e) if classify(&e).code() == "ResourceInUseException" => Ok(()),
            Err(e) => Err(read_error(classify(&e))),
        }
    }

    /// The stream's ARN (DescribeStreamSummary), which the consumer calls take.
    async fn stream_arn(&self) -> Result<String, ReadError> {
        if self.kinesis.is_arn() {
            return Ok(self.kinesis.stream().to_owned());
        }
        let call = || async {
            let out = self
                .client
                .describe_stream_summary()
                .stream_name(self.kinesis.stream())
                .send()
                .await
                .map_err(|e| read_error(classify(&e)))?;
            let summary =
                out.stream_description_summary().ok_or_else(|| ReadError::Fatal("no stream summary".into()))?;
            Ok(summary.stream_arn().to_owned())
        };
        self.retry.run(ReadError::is_retryable, call).await
    }

    /// DescribeStreamConsumer: the consumer's ARN once it is ACTIVE, `None` before.
    async fn describe_consumer(&self, stream_arn: &str) -> Result<Option<String>, ReadError> {
        let out = self
            .client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(&self.consumer_name)
            .send()
            .await
            .map_err(|e| read_error(classify(&e)))?;
        let description = out
            .consumer_description()
            .ok_or_else(|| ReadError::Fatal(format!("consumer {} not described", self.consumer_name)))?;
        Ok((description.consumer_status() == &ConsumerStatus::Active).then(|| description.consumer_arn().to_owned()))
    }

    /// DeregisterStreamConsumer: every subscription through the consumer ends. Only on request
    /// (`tributary deregister-consumer`), never by a node.
    pub async fn deregister(&self) -> Result<(), ReadError> {
        let stream_arn = self.stream_arn().await?;
        self.client
            .deregister_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(&self.consumer_name)
            .send()
            .await
            .map_err(|e| read_error(classify(&e)))?;
        Ok(())
    }

    pub fn consumer_arn(&self) -> &str {
        &self.consumer_arn
    }

    async fn subscribe(&self, shard: &ShardId, at: &str) -> Result<Subscription, ReadError> {
        let out = self
            .client
            .subscribe_to_shard()
            .consumer_arn(&self.consumer_arn)
            .shard_id(shard.as_str())
            .starting_position(starting_position(at)?)
            .send()
            .await
            .map_err(|e| read_error(classify(&e)))?;
        tracing::debug!(shard = %shard, at, "subscribed");
        Ok(Subscription { at: at.to_owned(), events: out.event_stream, opened: Instant::now(), behind_ms: 0 })
    }

    /// The next event of `sub`: `None` when none came within `EVENT_WAIT`; `Err` when the
    /// subscription ended or broke (it is then dropped).
    async fn next_event(sub: &mut Subscription) -> Result<Option<ReadBatch>, ReadError> {
        let event = match tokio::time::timeout(EVENT_WAIT, sub.events.recv()).await {
            Err(_) => return Ok(None),
            Ok(Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)))) => event,
            // An event type this client does not know: nothing to read in it.
            Ok(Ok(Some(_))) => return Ok(None),
            Ok(Ok(None)) => return Err(ReadError::Unavailable("subscription ended".into())),
            Ok(Err(e)) => return Err(event_error(&e)),
        };
        let records = event.records().iter().map(record).collect::<Result<Vec<_>, _>>()?;
        let child_shards = event.child_shards().iter().map(child_shard).collect::<Result<Vec<_>, _>>()?;
        let continuation = event.continuation_sequence_number();
        // The shard's end: no continuation (the service leaves it out), and its children named.
        let next_iterator = if continuation.is_empty() {
            None
        } else {
            sub.at = format!("AFTER_SEQUENCE_NUMBER:{continuation}");
            Some(ShardIterator(sub.at.clone()))
        };
        let millis_behind_latest = event.millis_behind_latest().max(0) as u64;
        sub.behind_ms = millis_behind_latest;
        Ok(Some(ReadBatch { records, next_iterator, millis_behind_latest, child_shards }))
    }
}

impl KinesisFanOut {
    /// Whether the stream lists `shard` as closed (ListShards, at most every 5 s).
    async fn listed_closed(&self, shard: &ShardId) -> Result<bool, ReadError> {
        let fresh = |c: &Option<(Instant, HashSet<ShardId>)>| {
            c.as_ref().filter(|(at, _)| at.elapsed() < CLOSED_SHARDS_REFRESH).map(|(_, set)| set.contains(shard))
        };
        if let Some(known) = fresh(&self.closed.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(known);
        }
        let shards = self.kinesis.list_shards().await?;
        let closed: HashSet<ShardId> = shards.into_iter().filter(|s| !s.is_open()).map(|s| s.id).collect();
        let is_closed = closed.contains(shard);
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), closed));
        Ok(is_closed)
    }

    /// A caught-up subscription of a closed shard: one GetRecords from where it is says whether
    /// the shard has ended (no next iterator, its children named). The service ends a closed
    /// shard's subscription with an event naming the children; this check makes the end certain
    /// also where that event does not come (kinesis-local never sends it).
    async fn end_of_closed(&self, shard: &ShardId, at: &str) -> Result<Option<ReadBatch>, ReadError> {
        if !self.listed_closed(shard).await? {
            return Ok(None);
        }
        let from = match at.split_once(':') {
            Some(("AFTER_SEQUENCE_NUMBER", s)) => StartingPosition::AfterSequence(
                proto::SequenceNumber::parse(s).map_err(|_| ReadError::Fatal(format!("bad sequence number {s:?}")))?,
            ),
            _ => return Ok(None),
        };
        let iterator = self.kinesis.iterator(shard, &from).await?;
        let batch = self.kinesis.read(shard, &iterator, 1).await?;
        Ok((batch.next_iterator.is_none() && batch.records.is_empty()).then_some(batch))
    }
}

#[async_trait]
impl ShardReader for KinesisFanOut {
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ReadError> {
        self.kinesis.list_shards().await
    }

    /// No call: the position itself is the token.
    async fn iterator(&self, _shard: &ShardId, from: &StartingPosition) -> Result<ShardIterator, ReadError> {
        Ok(ShardIterator(token(from)))
    }

    /// The next event from the shard's subscription at `iterator` (opened or renewed here).
    /// `limit` does not apply: an event carries what the service pushed.
    async fn read(&self, shard: &ShardId, iterator: &ShardIterator, _limit: usize) -> Result<ReadBatch, ReadError> {
        let held = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).remove(shard);
        let mut sub = match held {
            Some(sub) if sub.at == iterator.0 && sub.opened.elapsed() < SUBSCRIPTION_LIFETIME => sub,
            _ => self.subscribe(shard, &iterator.0).await?,
        };
        let batch = match Self::next_event(&mut sub).await? {
            Some(batch) if batch.records.is_empty() && batch.next_iterator.is_some() => {
                match self.end_of_closed(shard, &sub.at).await? {
                    Some(end) => end,
                    None => batch,
                }
            }
            Some(batch) => batch,
            None => ReadBatch {
                next_iterator: Some(iterator.clone()),
                millis_behind_latest: sub.behind_ms,
                ..ReadBatch::default()
            },
        };
        if batch.next_iterator.is_some() {
            self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).insert(shard.clone(), sub);
        }
        Ok(batch)
    }

    fn pushes(&self) -> bool {
        true
    }

    fn release(&self, shard: &ShardId) {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).remove(shard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::SequenceNumber;

    #[test]
    fn positions_round_trip_through_their_tokens() {
        let seq = SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898").unwrap();
        for from in [
            StartingPosition::TrimHorizon,
            StartingPosition::Latest,
            StartingPosition::AtTimestamp(1_700_000_000_123),
            StartingPosition::AfterSequence(seq.clone()),
            StartingPosition::AtSequence(seq),
        ] {
            let p = starting_position(&token(&from)).unwrap();
            let want = match &from {
                StartingPosition::TrimHorizon => ShardIteratorType::TrimHorizon,
                StartingPosition::Latest => ShardIteratorType::Latest,
                StartingPosition::AtTimestamp(_) => ShardIteratorType::AtTimestamp,
                StartingPosition::AfterSequence(_) => ShardIteratorType::AfterSequenceNumber,
                StartingPosition::AtSequence(_) => ShardIteratorType::AtSequenceNumber,
            };
            assert_eq!(p.r#type(), &want);
            match &from {
                StartingPosition::AfterSequence(s) | StartingPosition::AtSequence(s) => {
                    assert_eq!(p.sequence_number(), Some(s.as_str()))
                }
                StartingPosition::AtTimestamp(ms) => assert_eq!(p.timestamp().unwrap().to_millis().unwrap(), *ms),
                _ => assert_eq!(p.sequence_number(), None),
            }
        }
        assert!(starting_position("GetRecordsIterator").is_err());
    }
}
