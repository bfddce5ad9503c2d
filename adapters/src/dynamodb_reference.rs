//! Reference data from DynamoDB: the `ReferenceSource` port. A full load is a paged, strongly
//! consistent Scan; when the table has a stream with item images (NEW_IMAGE or
//! NEW_AND_OLD_IMAGES) its changes are followed through DynamoDB Streams, otherwise `changes`
//! answers `None` and the cache refreshes by full loads.
//!
//! The cursor is the feed's state, as JSON: per stream shard, the iterator to read next. Each
//! shard's LATEST iterator is taken *before* the scan, so a change made during the scan is
//! applied again afterwards: changes of a key come in order, so the cache ends at the last one.
//! A closed shard's children are found with DescribeStream (again on every poll while no
//! followed shard is open) and read from their start; an expired
//! iterator (after 15 minutes without a poll) is `CursorExpired`, and the cache reloads. A
//! child is read only once its parent is read to its end (a parent that is listed but not yet
//! in the cursor is added first); closed shards the stream no longer lists (past its 24-hour
//! retention) leave the cursor. Once a minute the table is asked for its current stream: a
//! stream disabled, or replaced by a new one, ends the cursor (`CursorExpired`, full reload).

use crate::aws::{classify, Failure};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use aws_sdk_dynamodbstreams::Client as StreamsClient;
use base64::Engine;
use proto::{Item, ReferenceChange, ReferenceError, ReferenceSource, Snapshot};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// Pages read per shard in one `changes` call (each up to 1,000 records).
const PAGES_PER_POLL: usize = 4;

/// How often `changes` checks that the table's stream is still the cursor's.
const STREAM_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// One source: tables are named in each call.
pub struct DynamoReferenceSource {
    dynamo: Client,
    streams: StreamsClient,
    stream_check_interval: std::time::Duration,
}

/// Where the feed of one table stands.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cursor {
    stream_arn: String,
    /// Shard id → the iterator to read next; `None` once the shard is closed and read.
    shards: BTreeMap<String, Option<String>>,
    /// When the table's stream was last checked (ms since the epoch).
    #[serde(default)]
    checked_ms: i64,
}

fn reference_error(table: &str, f: Failure) -> ReferenceError {
    match f.code() {
        "ResourceNotFoundException" => ReferenceError::NotFound(table.to_owned()),
        "ExpiredIteratorException" | "TrimmedDataAccessException" => ReferenceError::CursorExpired,
        _ => ReferenceError::Unavailable(f.to_string()),
    }
}

/// DynamoDB attribute values (the table's and the stream's types are distinct but alike) as
/// JSON: numbers as numbers, binaries as base64 text, sets as arrays.
macro_rules! attribute_to_json {
    ($name:ident, $ty:ty) => {
        fn $name(v: &$ty) -> Json {
            use $ty as A;
            let b64 = |b: &[u8]| Json::String(base64::engine::general_purpose::STANDARD.encode(b));
            match v {
                A::S(s) => Json::String(s.clone()),
                A::N(n) => number(n),
                A::Bool(b) => Json::Bool(*b),
                A::Null(_) => Json::Null,
                A::M(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), $name(v))).collect()),
                A::L(l) => Json::Array(l.iter().map($name).collect()),
                A::Ss(s) => Json::Array(s.iter().cloned().map(Json::String).collect()),
                A::Ns(n) => Json::Array(n.iter().map(|n| number(n)).collect()),
                A::B(b) => b64(b.as_ref()),
                A::Bs(bs) => Json::Array(bs.iter().map(|b| b64(b.as_ref())).collect()),
                _ => Json::Null,
            }
        }
    };
}

attribute_to_json!(table_value, aws_sdk_dynamodb::types::AttributeValue);
attribute_to_json!(stream_value, aws_sdk_dynamodbstreams::types::AttributeValue);

fn number(text: &str) -> Json {
    if let Ok(i) = text.parse::<i64>() {
        return Json::from(i);
    }
    text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Json::Number).unwrap_or(Json::Null)
}

/// The lookup key of an item: a string as it is, a number as written.
fn key_of(item: &Item, key_attribute: &str) -> Option<String> {
    match item.get(key_attribute)? {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl DynamoReferenceSource {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            dynamo: Client::new(config),
            streams: StreamsClient::new(config),
            stream_check_interval: STREAM_CHECK_INTERVAL,
        }
    }

    /// Checks the table's stream at another pace than once a minute (tests use zero).
    pub fn with_stream_check_interval(mut self, every: std::time::Duration) -> Self {
        self.stream_check_interval = every;
        self
    }

    /// The table's stream, if it has one that carries new images.
    async fn stream_of(&self, table: &str) -> Result<Option<String>, ReferenceError> {
        let out = self
            .dynamo
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| reference_error(table, classify(&e)))?;
        let Some(t) = out.table() else { return Ok(None) };
        let enabled = t.stream_specification().is_some_and(|s| s.stream_enabled());
        let images = matches!(
            t.stream_specification().and_then(|s| s.stream_view_type()),
            Some(
                aws_sdk_dynamodb::types::StreamViewType::NewImage
                    | aws_sdk_dynamodb::types::StreamViewType::NewAndOldImages
            )
        );
        Ok((enabled && images).then(|| t.latest_stream_arn().map(str::to_owned)).flatten())
    }

    /// The stream's shards: id and parent.
    async fn shards(&self, table: &str, arn: &str) -> Result<Vec<(String, Option<String>, bool)>, ReferenceError> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let out = self
                .streams
                .describe_stream()
                .stream_arn(arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| reference_error(table, classify(&e)))?;
            let Some(d) = out.stream_description() else { return Ok(shards) };
            for s in d.shards() {
                let open = s.sequence_number_range().is_none_or(|r| r.ending_sequence_number().is_none());
                shards.push((
                    s.shard_id().unwrap_or_default().to_owned(),
                    s.parent_shard_id().map(str::to_owned),
                    open,
                ));
            }
            match d.last_evaluated_shard_id() {
                Some(last) => start = Some(last.to_owned()),
                None => return Ok(shards),
            }
        }
    }

    async fn iterator(
        &self,
        table: &str,
        arn: &str,
        shard: &str,
        kind: ShardIteratorType,
    ) -> Result<Option<String>, ReferenceError> {
        let out = self
            .streams
            .get_shard_iterator()
            .stream_arn(arn)
            .shard_id(shard)
            .shard_iterator_type(kind)
            .send()
            .await
            .map_err(|e| reference_error(table, classify(&e)))?;
        Ok(out.shard_iterator().map(str::to_owned))
    }

    async fn scan(&self, table: &str, key_attribute: &str) -> Result<Vec<(String, Item)>, ReferenceError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .dynamo
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| reference_error(table, classify(&e)))?;
            for raw in out.items() {
                let item: Item = raw.iter().map(|(k, v)| (k.clone(), table_value(v))).collect();
                if let Some(key) = key_of(&item, key_attribute) {
                    items.push((key, item));
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// Reads one shard from `iterator`: its changes, and the iterator to go on with (`None`
    /// once the shard is closed and read to its end).
    async fn read_shard(
        &self,
        table: &str,
        key_attribute: &str,
        mut iterator: String,
        out: &mut Vec<ReferenceChange>,
    ) -> Result<Option<String>, ReferenceError> {
        for _ in 0..PAGES_PER_POLL {
            let page = self
                .streams
                .get_records()
                .shard_iterator(&iterator)
                .send()
                .await
                .map_err(|e| reference_error(table, classify(&e)))?;
            let records = page.records();
            for r in records {
                let Some(data) = r.dynamodb() else { continue };
                let keys: Item = data
                    .keys()
                    .map(|k| k.iter().map(|(n, v)| (n.clone(), stream_value(v))).collect())
                    .unwrap_or_default();
                let Some(key) = key_of(&keys, key_attribute) else { continue };
                match (r.event_name().map(|e| e.as_str()), data.new_image()) {
                    (Some("REMOVE"), _) => out.push(ReferenceChange::Remove { key }),
                    (_, Some(image)) => {
                        let item = image.iter().map(|(n, v)| (n.clone(), stream_value(v))).collect();
                        out.push(ReferenceChange::Put { key, item });
                    }
                    _ => {}
                }
            }
            match page.next_shard_iterator() {
                None => return Ok(None),
                Some(next) => iterator = next.to_owned(),
            }
            if records.is_empty() {
                break;
            }
        }
        Ok(Some(iterator))
    }
}

/// After a shard ended: drops from `followed` the shards read to their end that the stream no
/// longer lists (trimmed for good), and answers the listed shards to start reading now — those
/// not followed yet whose parent is read to its end or trimmed away. A parent that is listed but
/// not followed yet is started first; its children wait for its end.
fn next_shards(
    followed: &mut BTreeMap<String, Option<String>>,
    listed: &[(String, Option<String>, bool)],
) -> Vec<String> {
    let known: std::collections::BTreeSet<&str> = listed.iter().map(|(id, _, _)| id.as_str()).collect();
    followed.retain(|id, it| it.is_some() || known.contains(id.as_str()));
    let parent_done = |p: &str| match followed.get(p) {
        Some(it) => it.is_none(),
        None => !known.contains(p),
    };
    listed
        .iter()
        .filter(|(id, parent, _)| !followed.contains_key(id) && parent.as_deref().is_none_or(parent_done))
        .map(|(id, _, _)| id.clone())
        .collect()
}

#[async_trait]
impl ReferenceSource for DynamoReferenceSource {
    async fn load(&self, table: &str, key_attribute: &str) -> Result<Snapshot, ReferenceError> {
        let cursor = match self.stream_of(table).await? {
            Some(arn) => {
                let mut cursor =
                    Cursor { stream_arn: arn.clone(), shards: BTreeMap::new(), checked_ms: proto::clock::system_ms() };
                for (shard, _, open) in self.shards(table, &arn).await? {
                    if open {
                        let it = self.iterator(table, &arn, &shard, ShardIteratorType::Latest).await?;
                        cursor.shards.insert(shard, it);
                    } else {
                        cursor.shards.insert(shard, None);
                    }
                }
                Some(serde_json::to_string(&cursor).expect("a cursor serializes"))
            }
            None => None,
        };
        Ok(Snapshot { items: self.scan(table, key_attribute).await?, cursor })
    }

    async fn changes(
        &self,
        table: &str,
        key_attribute: &str,
        cursor: &str,
    ) -> Result<Option<(Vec<ReferenceChange>, String)>, ReferenceError> {
        let Ok(mut cursor) = serde_json::from_str::<Cursor>(cursor) else { return Err(ReferenceError::CursorExpired) };
        if proto::clock::system_ms().saturating_sub(cursor.checked_ms) >= self.stream_check_interval.as_millis() as i64
        {
            // Disabled, or replaced by a new stream: this cursor will never see another change.
            if self.stream_of(table).await?.as_deref() != Some(cursor.stream_arn.as_str()) {
                return Err(ReferenceError::CursorExpired);
            }
            cursor.checked_ms = proto::clock::system_ms();
        }
        let mut changes = Vec::new();
        let mut ended = false;
        // Parents before children: a child is only added once its parent is read to its end.
        for _ in 0..8 {
            for iterator in cursor.shards.values_mut() {
                if let Some(it) = iterator.take() {
                    *iterator = self.read_shard(table, key_attribute, it, &mut changes).await?;
                    ended |= iterator.is_none();
                }
            }
            // Look for new shards when one ended, and on every call while none is open: a child
            // can be listed a little after its parent ends, and nothing else would look again.
            if !ended && cursor.shards.values().any(Option::is_some) {
                break;
            }
            ended = false;
            let listed = self.shards(table, &cursor.stream_arn).await?;
            let mut added = false;
            for shard in next_shards(&mut cursor.shards, &listed) {
                let it = self.iterator(table, &cursor.stream_arn, &shard, ShardIteratorType::TrimHorizon).await?;
                cursor.shards.insert(shard, it);
                added = true;
            }
            if !added {
                break;
            }
        }
        Ok(Some((changes, serde_json::to_string(&cursor).expect("a cursor serializes"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(shards: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>, bool)> {
        shards.iter().map(|(id, p)| (id.to_string(), p.map(str::to_owned), true)).collect()
    }

    #[test]
    fn children_wait_for_their_parent_and_trimmed_shards_leave() {
        // a ended and was read; b is still being read; c is a's child, d is b's child; e is a
        // listed parent nobody follows yet, f its child; g's parent was trimmed away.
        let mut followed: BTreeMap<String, Option<String>> =
            [("a".into(), None), ("b".into(), Some("it-b".into())), ("old".into(), None)].into();
        let shards = listed(&[
            ("a", None),
            ("b", None),
            ("c", Some("a")),
            ("d", Some("b")),
            ("f", Some("e")),
            ("e", None),
            ("g", Some("gone")),
        ]);
        let next = next_shards(&mut followed, &shards);
        assert_eq!(next, ["c", "e", "g"]);
        assert!(!followed.contains_key("old"), "a read shard no longer listed leaves the cursor");
        assert!(followed.contains_key("a"), "a read shard still listed stays (its children check it)");
    }
}
