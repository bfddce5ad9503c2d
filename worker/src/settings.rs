//! The settings a node runs with, which are also what node.toml's `[node]` says: each field that
//! is not `#[serde(skip)]` is a key of `[node]`, under its own name, and a key not written takes
//! the field's value in the type's one `Default`. `[node]` is one flat section over four types:
//! `NodeSettings` (the node's own keys), `coordinator::ClusterSettings` (`failover_time`,
//! `initial_position`), `ConsumerSettings` and `SinkSettings`; `keys` tells which keys each reads.

use proto::duration;
use proto::RetryPolicy;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::time::Duration;

/// The node's own keys of `[node]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// This node's worker id; default: `$POD_NAME`, else `$HOSTNAME`, else the host name, plus
    /// the process id (a restarted process is a new node).
    pub id: Option<String>,
    /// How long a SIGTERM waits for consumers to flush, checkpoint and release.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_deadline: Duration,
}

impl NodeSettings {
    pub const DEFAULT: Self = Self { id: None, shutdown_deadline: Duration::from_secs(30) };
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How each shard consumer reads and checkpoints.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerSettings {
    /// `Limit` of one GetRecords call.
    #[serde(skip)]
    pub max_records: usize,
    /// Pause after a read that returned nothing.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_read_interval: Duration,
    /// Pause between reads that returned records (5 reads/s/shard is Kinesis's limit).
    #[serde(deserialize_with = "duration::deserialize")]
    pub read_interval: Duration,
    /// Reading pauses while this many rows are read but not yet committed.
    #[serde(skip)]
    pub max_in_flight_rows: usize,
    /// Least time between two checkpoint writes of a shard (each is one DynamoDB write; a longer
    /// interval costs only re-reading after a crash, never a duplicate effect). The final ones
    /// are always written.
    #[serde(deserialize_with = "duration::deserialize")]
    pub checkpoint_interval: Duration,
    /// Where leases created at `initial_position = "at_timestamp"` start: a UTC time in RFC 3339
    /// form (`"2024-03-01T00:00:00Z"`), held as milliseconds since the epoch.
    #[serde(deserialize_with = "rfc3339_ms")]
    pub initial_timestamp: Option<i64>,
}

/// A UTC time in RFC 3339 form (`2024-03-01T00:00:00Z`, `2024-03-01T00:00:00.5Z`) as
/// milliseconds since the epoch; times before 1970 are refused.
fn rfc3339_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let text = String::deserialize(d)?;
    let time = humantime::parse_rfc3339_weak(&text)
        .map_err(|e| de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| de::Error::custom(format!("{text:?} is before 1970")))?;
    Ok(Some(since.as_millis() as i64))
}

impl ConsumerSettings {
    pub const DEFAULT: Self = Self {
        max_records: 10_000,
        idle_read_interval: Duration::from_millis(500),
        read_interval: Duration::from_millis(200),
        max_in_flight_rows: 50_000,
        checkpoint_interval: Duration::from_secs(1),
        initial_timestamp: None,
    };
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How each table's sink batches and commits: a batch commits at `batch_rows` rows or
/// `batch_bytes` bytes of values, whichever comes first, or once its first row waited
/// `batch_latency`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSettings {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    #[serde(deserialize_with = "duration::deserialize")]
    pub batch_latency: Duration,
    /// Retries of a commit the warehouse could not take (outage, lost reply).
    #[serde(skip)]
    pub commit_retry: RetryPolicy,
    /// How long a tombstone is kept after its delete committed. `tributary run` sets it from
    /// the streams' retention when the key is absent; `None` keeps them all.
    #[serde(default, deserialize_with = "duration::some")]
    pub tombstone_retention: Option<Duration>,
    /// How often the sink prunes its table's tombstones.
    #[serde(skip)]
    pub prune_interval: Duration,
}

impl SinkSettings {
    pub const DEFAULT: Self = Self {
        batch_rows: 5_000,
        batch_bytes: 8 << 20,
        batch_latency: Duration::from_millis(500),
        // About an hour of retries, at most 30 s apart: past the first few, each wait is drawn
        // between 15 and 30 s (jitter), 22.5 s on average.
        commit_retry: RetryPolicy {
            max_attempts: 150,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
        },
        tombstone_retention: None,
        prune_interval: Duration::from_secs(600),
    };
}

impl Default for SinkSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The keys a derived `Deserialize` of a struct reads (serde hands them to `deserialize_struct`;
/// this deserializer keeps them and stops). Skipped fields are not keys.
pub fn keys<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Keys<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("only the keys are read")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for Keys<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Keys(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_are_the_fields_that_are_not_skipped() {
        assert_eq!(keys::<NodeSettings>(), ["id", "shutdown_deadline"]);
        assert_eq!(keys::<coordinator::ClusterSettings>(), ["failover_time", "initial_position"]);
        assert_eq!(
            keys::<ConsumerSettings>(),
            ["idle_read_interval", "read_interval", "checkpoint_interval", "initial_timestamp"]
        );
        assert_eq!(keys::<SinkSettings>(), ["batch_rows", "batch_bytes", "batch_latency", "tombstone_retention"]);
    }

    #[test]
    fn a_key_sets_its_field_and_the_rest_keep_the_default() {
        let sink: SinkSettings = toml::from_str("batch_rows = 10\nbatch_latency = \"1.5s\"").unwrap();
        assert_eq!(
            sink,
            SinkSettings { batch_rows: 10, batch_latency: Duration::from_millis(1500), ..SinkSettings::default() }
        );
        let consumer: ConsumerSettings = toml::from_str("read_interval = \"250ms\"").unwrap();
        assert_eq!(consumer, ConsumerSettings { read_interval: Duration::from_millis(250), ..Default::default() });
        let node: NodeSettings = toml::from_str("id = \"a\"").unwrap();
        assert_eq!((node.id.as_deref(), node.shutdown_deadline), (Some("a"), Duration::from_secs(30)));
        let e = toml::from_str::<ConsumerSettings>("max_records = 5").unwrap_err();
        assert!(e.message().starts_with("unknown field `max_records`"), "{e}");
        let e = toml::from_str::<SinkSettings>("batch_latency = \"soon\"").unwrap_err();
        assert!(e.message().starts_with("invalid duration \"soon\""), "{e}");
    }
}
