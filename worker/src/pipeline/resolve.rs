//! Resolving: what a compiled `Source` holds for one record, before typing: a field of the
//! record (raw JSON), an attribute of a joined reference row, metadata or a constant.

use super::decode::Change;
use super::doc::{raw_key, walk};
use super::plan::{Meta, Source};
use super::typing::{coerce, in_range, typed, typed_raw, Scalar};
use crate::record_mapper::UserRecord;
use crate::reference_cache::{RefSnapshot, RefValue};
use proto::{ShardId, SqlType, Value};
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};
use std::borrow::Cow;
use std::time::Duration;

/// Why a record makes no rows.
pub enum Unmapped {
    /// It is a dead letter, for this reason.
    Dead(String),
    /// A join waits (at most this long) for its reference row.
    Wait(Duration),
}

/// What one record resolves against.
pub struct Context<'r, 'a> {
    pub shard: &'r ShardId,
    pub record: &'r UserRecord,
    pub change: &'r Change<'a>,
    /// The row's fields by slot: the change's data, or its before-image while the delete of
    /// a changed key is built.
    pub slots: &'r [Option<&'a RawValue>],
    /// The reference snapshots of this run, one per join (`CompiledJoin::snapshot`).
    pub snapshots: &'r [RefSnapshot],
    /// The current table's joined rows, by join (`None`: no row, joined as nulls).
    pub joined: Vec<Option<&'r [RefValue]>>,
}

/// A value found for a column or a join key, before typing.
pub enum Found<'r> {
    Missing,
    Raw(&'r RawValue),
    Scalar(Scalar<'r>),
    Value(Value),
}

impl Found<'_> {
    /// The value as a column of type `ty`; `Err` says why it cannot be one.
    #[inline]
    pub fn typed(self, ty: SqlType) -> Result<Value, String> {
        in_range(match self {
            Found::Missing => Ok(Value::Null),
            Found::Raw(raw) => typed_raw(Some(raw), ty),
            Found::Scalar(v) => typed(v, ty),
            Found::Value(v) => coerce(v, ty),
        }?)
    }

    /// The text a reference table is keyed by.
    #[inline]
    pub fn key(&self) -> Option<Cow<'_, str>> {
        match self {
            Found::Missing => None,
            Found::Raw(raw) => raw_key(raw),
            Found::Scalar(v) => v.key_text(),
            Found::Value(Value::Text(s)) => Some(Cow::Borrowed(s)),
            Found::Value(Value::Int(i)) => Some(Cow::Owned(i.to_string())),
            Found::Value(_) => None,
        }
    }
}

/// A record field: its top-level field's slot, then the rest of its path.
#[inline]
pub fn record_field<'a>(slots: &[Option<&'a RawValue>], slot: usize, path: &[String]) -> Option<&'a RawValue> {
    slots[slot].and_then(|raw| walk(raw, &path[1..]))
}

/// Follows a path into a joined row's nested object.
#[inline]
fn walk_json<'j>(mut at: &'j Map<String, Json>, path: &[String]) -> Option<&'j Json> {
    for (i, segment) in path.iter().enumerate() {
        let v = at.get(segment)?;
        if i + 1 == path.len() {
            return Some(v);
        }
        at = v.as_object()?;
    }
    None
}

impl Context<'_, '_> {
    #[inline]
    pub fn resolve<'s>(&'s self, source: &'s Source) -> Found<'s> {
        match source {
            Source::Record(slot, path) => {
                record_field(self.slots, *slot, path).map(Found::Raw).unwrap_or(Found::Missing)
            }
            Source::Joined(j, attribute, path) => {
                let value = self.joined[*j].and_then(|row| row.get(*attribute));
                let value = match (value, path.is_empty()) {
                    (Some(RefValue::Nested(v)), false) => {
                        v.as_object().and_then(|item| walk_json(item, path)).map(Scalar::from)
                    }
                    (_, false) => None,
                    (v, true) => v.map(Scalar::from),
                };
                value.map(Found::Scalar).unwrap_or(Found::Missing)
            }
            Source::Constant(v) => Found::Scalar(Scalar::from(v)),
            Source::Meta(m) => Found::Value(match m {
                Meta::ShardId => Value::Text(self.shard.as_str().to_owned()),
                Meta::SequenceNumber => Value::Text(self.record.position.sequence.as_str().to_owned()),
                Meta::SubSequence => Value::Int(self.record.position.sub_sequence as i64),
                Meta::PartitionKey => Value::Text(self.record.partition_key.clone()),
                Meta::ArrivalTime => Value::Timestamp(self.record.arrival_ms),
                Meta::Payload => Value::Text(String::from_utf8_lossy(&self.record.data).into_owned()),
                Meta::Operation => Value::Text(self.change.operation.to_owned()),
                Meta::SourceTable => self.change.source_table.clone().map(Value::Text).unwrap_or(Value::Null),
            }),
        }
    }
}
