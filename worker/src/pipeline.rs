//! The configured pipeline: decode → join → transform → rows, one `Row` per target table for
//! each change. A record that cannot be decoded, typed or joined (per its join's policy) becomes
//! one dead-letter row instead, with the reason: all of its rows or none.

use crate::decode::{decode, Change, ChangeOp, Format};
use crate::doc::{raw_key, typed_raw, walk, FieldSlots};
use crate::kpl::UserRecord;
use crate::mapper::{
    dead_letter_schema, map_each, storable, MapOutcome, RecordMapper, DEAD_LETTER_PART_BYTES, MAX_REASON_BYTES,
};
use crate::pipeline_config::{ColumnType, OnMissing, PipelineConfig, Transform, VersionSource};
use crate::reference_cache::{RefSnapshot, RefValue, ReferenceCache, ReferenceSet};
use crate::transform::{mask_owned, TokenKey, TokenKeyError};
use base64::Engine;
use proto::MAX_TEXT_BYTES;
use proto::{Column, Row, RowOp, ShardId, SqlType, TableSchema, Value};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value as Json};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// Where a value comes from, resolved at start.
#[derive(Clone, Debug)]
enum Source {
    /// A record field: the slot of its first segment, then the path inside it.
    Record(usize, Vec<String>),
    /// A joined row's attribute (by join, then attribute index), then the path inside it.
    Joined(usize, usize, Vec<String>),
    Meta(Meta),
    Constant(Json),
}

#[derive(Clone, Copy, Debug)]
enum Meta {
    ShardId,
    SequenceNumber,
    SubSequence,
    PartitionKey,
    ArrivalTime,
    Payload,
    Operation,
    SourceTable,
}

struct CompiledJoin {
    cache: Arc<ReferenceCache>,
    /// Where this join's snapshot sits in a run's snapshots (joins of all tables, in order).
    snapshot: usize,
    key: Source,
    on_missing: OnMissing,
    max_wait: Duration,
}

struct CompiledColumn {
    name: String,
    source: Source,
    ty: SqlType,
    transform: Option<Transform>,
}

struct CompiledTable {
    schema: Arc<TableSchema>,
    source_table: Option<String>,
    version: VersionSource,
    joins: Vec<CompiledJoin>,
    columns: Vec<CompiledColumn>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("tokenize_key_env: {0}")]
    TokenKey(#[from] TokenKeyError),
    #[error("reference {0} is joined but was not loaded")]
    MissingReference(String),
}

pub struct Pipeline {
    format: Format,
    max_record_bytes: usize,
    tables: Vec<CompiledTable>,
    dead_letters: Arc<TableSchema>,
    token_key: Option<TokenKey>,
    /// The record fields any table reads.
    fields: FieldSlots,
    max_joins: usize,
    _references: Arc<ReferenceSet>,
}

fn sql_type(t: ColumnType) -> SqlType {
    match t {
        ColumnType::Boolean => SqlType::Boolean,
        ColumnType::Bigint => SqlType::BigInt,
        ColumnType::Double => SqlType::Double,
        ColumnType::Text => SqlType::Text,
        ColumnType::Timestamp => SqlType::Timestamp,
    }
}

fn compile_path(path: &str, aliases: &[String], caches: &[Arc<ReferenceCache>], fields: &mut FieldSlots) -> Source {
    let meta = match path {
        "@shard_id" => Some(Meta::ShardId),
        "@sequence_number" => Some(Meta::SequenceNumber),
        "@sub_sequence" => Some(Meta::SubSequence),
        "@partition_key" => Some(Meta::PartitionKey),
        "@arrival_time" => Some(Meta::ArrivalTime),
        "@payload" => Some(Meta::Payload),
        "@operation" => Some(Meta::Operation),
        "@source_table" => Some(Meta::SourceTable),
        _ => None,
    };
    if let Some(m) = meta {
        return Source::Meta(m);
    }
    let segments: Vec<String> = path.trim_start_matches("$.").split('.').map(str::to_owned).collect();
    match aliases.iter().position(|a| a == &segments[0]) {
        Some(j) if segments.len() > 1 => {
            let attribute = caches[j].attribute(&segments[1]).unwrap_or(usize::MAX);
            Source::Joined(j, attribute, segments[2..].to_vec())
        }
        _ => Source::Record(fields.slot(&segments[0]), segments),
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fff…][Z]` (UTC) → milliseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let t = text.trim().trim_end_matches('Z');
    let b = t.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let millis = match t.get(19..) {
        Some("") | None => 0,
        Some(f) if f.starts_with('.') && f.len() > 1 && f[1..].bytes().all(|c| c.is_ascii_digit()) => {
            format!("{:0<3}", &f[1..f.len().min(4)]).parse::<i64>().ok()?
        }
        _ => return None,
    };
    Some(((proto::civil::days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60_000 + s * 1000 + millis)
}

/// A JSON value as typing sees it, borrowed from a document, a constant or a cached row.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Number(&'a Number),
    Str(&'a str),
    Array,
    Object,
}

impl<'a> From<&'a Json> for Scalar<'a> {
    fn from(v: &'a Json) -> Self {
        match v {
            Json::Null => Scalar::Null,
            Json::Bool(b) => Scalar::Bool(*b),
            Json::Number(n) => Scalar::Number(n),
            Json::String(s) => Scalar::Str(s),
            Json::Array(_) => Scalar::Array,
            Json::Object(_) => Scalar::Object,
        }
    }
}

impl<'a> From<&'a RefValue> for Scalar<'a> {
    fn from(v: &'a RefValue) -> Self {
        match v {
            RefValue::Null => Scalar::Null,
            RefValue::Bool(b) => Scalar::Bool(*b),
            RefValue::Number(n) => Scalar::Number(n),
            RefValue::Text(s) => Scalar::Str(s),
            RefValue::Nested(v) => Scalar::from(&**v),
        }
    }
}

/// A JSON value as a column of type `ty`; `Err` names what was found instead.
fn typed(value: Scalar<'_>, ty: SqlType) -> Result<Value, String> {
    let found = |what: &str| Err(format!("expected {}, found {what}", format!("{ty:?}").to_lowercase()));
    Ok(match (ty, value) {
        (_, Scalar::Null) => Value::Null,
        (SqlType::Text, Scalar::Str(s)) => Value::Text(s.to_owned()),
        (SqlType::Text, Scalar::Number(n)) => Value::Text(n.to_string()),
        (SqlType::Text, Scalar::Bool(b)) => Value::Text(b.to_string()),
        (SqlType::Boolean, Scalar::Bool(b)) => Value::Bool(b),
        (SqlType::Boolean, Scalar::Str(s)) if s == "true" || s == "false" => Value::Bool(s == "true"),
        (SqlType::BigInt, Scalar::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => return found("a non-integer number"),
        },
        (SqlType::BigInt, Scalar::Str(s)) => match s.trim().parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => return found("a non-integer string"),
        },
        (SqlType::Double, Scalar::Number(n)) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        (SqlType::Double, Scalar::Str(s)) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Value::Float(f),
            _ => return found("a non-numeric string"),
        },
        (SqlType::Timestamp, Scalar::Number(n)) => match n.as_i64() {
            Some(ms) => Value::Timestamp(ms),
            None => return found("a non-integer number"),
        },
        (SqlType::Timestamp, Scalar::Str(s)) => match parse_timestamp(s) {
            Some(ms) => Value::Timestamp(ms),
            None => return found("a string that is not a timestamp"),
        },
        (_, Scalar::Str(_)) => return found("a string"),
        (_, Scalar::Number(_)) => return found("a number"),
        (_, Scalar::Bool(_)) => return found("a boolean"),
        (_, Scalar::Array) => return found("an array"),
        (_, Scalar::Object) => return found("an object"),
    })
}

/// A record field: its top-level field's slot, then the rest of its path.
fn record_field<'a>(slots: &[Option<&'a RawValue>], slot: usize, path: &[String]) -> Option<&'a RawValue> {
    slots[slot].and_then(|raw| walk(raw, &path[1..]))
}

/// What a record resolves against.
struct Context<'r, 'a> {
    shard: &'r ShardId,
    record: &'r UserRecord,
    change: &'r Change<'a>,
    /// The row's fields by slot: the change's data, or its before-image while the delete of
    /// a changed key is built.
    slots: &'r [Option<&'a RawValue>],
    /// The reference snapshots of this run, one per join (`CompiledJoin::snapshot`).
    snapshots: &'r [RefSnapshot],
    joined: Vec<Option<&'r [RefValue]>>,
}

/// A value found for a column or a join key, before typing.
enum Found<'r> {
    Missing,
    Raw(&'r RawValue),
    Scalar(Scalar<'r>),
    Value(Value),
}

impl Found<'_> {
    fn typed(self, ty: SqlType) -> Result<Value, String> {
        let value = match self {
            Found::Missing => Ok(Value::Null),
            Found::Raw(raw) => typed_raw(Some(raw), ty),
            Found::Scalar(v) => typed(v, ty),
            Found::Value(v) => coerce(v, ty),
        }?;
        match value {
            Value::Timestamp(ms) if !proto::TIMESTAMP_RANGE.contains(&ms) => {
                Err(format!("timestamp {ms} ms is outside years 1 to 9999"))
            }
            v => Ok(v),
        }
    }

    /// The text a reference table is keyed by.
    fn key(&self) -> Option<Cow<'_, str>> {
        match self {
            Found::Missing => None,
            Found::Raw(raw) => raw_key(raw),
            Found::Scalar(v) => key_text(*v),
            Found::Value(Value::Text(s)) => Some(Cow::Borrowed(s)),
            Found::Value(Value::Int(i)) => Some(Cow::Owned(i.to_string())),
            Found::Value(_) => None,
        }
    }
}

/// A metadata value as a column of another type (text takes anything).
fn coerce(v: Value, ty: SqlType) -> Result<Value, String> {
    Ok(match (v, ty) {
        (Value::Null, _) => Value::Null,
        (v @ Value::Text(_), SqlType::Text) | (v @ Value::Int(_), SqlType::BigInt) => v,
        (v @ Value::Timestamp(_), SqlType::Timestamp) => v,
        (Value::Int(i), SqlType::Timestamp) => Value::Timestamp(i),
        (Value::Timestamp(i), SqlType::BigInt) => Value::Int(i),
        (Value::Int(i) | Value::Timestamp(i), SqlType::Text) => Value::Text(i.to_string()),
        (Value::Text(s), SqlType::BigInt) => {
            s.parse().map(Value::Int).map_err(|_| format!("{s:?} is not an integer"))?
        }
        (v, ty) => return Err(format!("metadata {v:?} cannot be a {}", format!("{ty:?}").to_lowercase())),
    })
}

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

impl<'r> Context<'r, '_> {
    fn resolve<'s>(&'s self, source: &'s Source) -> Found<'s> {
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
                Meta::Operation => {
                    Value::Text(if self.change.op == ChangeOp::Delete { "delete" } else { "upsert" }.into())
                }
                Meta::SourceTable => self.change.source_table.clone().map(Value::Text).unwrap_or(Value::Null),
            }),
        }
    }
}

/// The lookup key text of a JSON value (strings as they are, numbers in their JSON form).
fn key_text(v: Scalar<'_>) -> Option<Cow<'_, str>> {
    match v {
        Scalar::Str(s) => Some(Cow::Borrowed(s)),
        Scalar::Number(n) => Some(Cow::Owned(n.to_string())),
        Scalar::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
        _ => None,
    }
}

enum Built {
    Row(Row),
    Dead(String),
    Wait(Duration),
}

impl Pipeline {
    /// The top-level record fields the tables read (what decoding extracts).
    pub fn record_fields(&self) -> &FieldSlots {
        &self.fields
    }

    /// A pipeline whose tables join nothing.
    pub fn without_references(config: &PipelineConfig) -> Result<Self, PipelineError> {
        Self::new(config, Arc::new(ReferenceSet::empty()))
    }

    pub fn new(config: &PipelineConfig, references: Arc<ReferenceSet>) -> Result<Self, PipelineError> {
        let token_key = if config.tokenizes() { Some(TokenKey::from_env(&config.tokenize_key_env)?) } else { None };
        let mut tables = Vec::new();
        let mut fields = FieldSlots::default();
        let mut joins_before = 0;
        for t in &config.tables {
            let mut aliases = Vec::new();
            let mut caches: Vec<Arc<ReferenceCache>> = Vec::new();
            let mut joins = Vec::new();
            for j in &t.joins {
                let cache =
                    references.get(&j.reference).ok_or_else(|| PipelineError::MissingReference(j.reference.clone()))?;
                joins.push(CompiledJoin {
                    snapshot: joins_before,
                    cache: cache.clone(),
                    key: compile_path(&j.key, &aliases, &caches, &mut fields),
                    on_missing: j.on_missing,
                    max_wait: j.max_wait,
                });
                joins_before += 1;
                aliases.push(j.alias.clone().unwrap_or_else(|| j.reference.clone()));
                caches.push(cache.clone());
            }
            let columns: Vec<CompiledColumn> = t
                .columns
                .iter()
                .map(|c| CompiledColumn {
                    name: c.name.clone(),
                    source: match (&c.from, &c.value) {
                        (Some(from), _) => compile_path(from, &aliases, &caches, &mut fields),
                        (None, v) => Source::Constant(v.clone().unwrap_or(Json::Null)),
                    },
                    ty: sql_type(c.ty),
                    transform: c.transform,
                })
                .collect();
            let schema = TableSchema {
                name: t.name.clone(),
                columns: columns.iter().map(|c| Column::new(c.name.clone(), c.ty)).collect(),
                key: t.key.iter().map(|k| columns.iter().position(|c| &c.name == k).expect("validated")).collect(),
                version_column: "_version".to_owned(),
            };
            tables.push(CompiledTable {
                schema: Arc::new(schema),
                source_table: t.source_table.clone(),
                version: t.version,
                joins,
                columns,
            });
        }
        Ok(Self {
            format: config.format,
            max_record_bytes: config.max_record_bytes,
            dead_letters: Arc::new(dead_letter_schema()),
            token_key,
            max_joins: tables.iter().map(|t| t.joins.len()).max().unwrap_or(0),
            tables,
            fields,
            _references: references,
        })
    }

    /// A record's dead-letter rows: one per `DEAD_LETTER_PART_BYTES` of its payload (at least
    /// one), each with the reason, all of them storable whatever the record holds.
    fn dead_letter(&self, shard: &ShardId, record: &UserRecord, reason: &str, out: &mut Vec<(usize, Row)>) {
        let version = record.position.version();
        let parts: Vec<&[u8]> =
            if record.data.is_empty() { vec![&[]] } else { record.data.chunks(DEAD_LETTER_PART_BYTES).collect() };
        let (reason, partition_key) =
            (storable(reason, MAX_REASON_BYTES), storable(&record.partition_key, MAX_TEXT_BYTES));
        for (i, part) in parts.iter().enumerate() {
            let values = vec![
                Value::Text(shard.to_string()),
                Value::Text(record.position.sequence.to_string()),
                Value::Int(record.position.sub_sequence as i64),
                Value::Text(partition_key.clone()),
                Value::Timestamp(record.arrival_ms),
                Value::Text(reason.clone()),
                Value::Text(base64::engine::general_purpose::STANDARD.encode(part)),
                Value::Int(i as i64),
                Value::Int(parts.len() as i64),
            ];
            out.push((self.tables.len(), Row { op: RowOp::Upsert, version: version.clone(), values }));
        }
    }

    fn build(&self, table: &CompiledTable, ctx: &mut Context<'_, '_>, op: ChangeOp, give_up: bool) -> Built {
        let deleting = op == ChangeOp::Delete;
        if !deleting {
            ctx.joined.clear();
            let snapshots = ctx.snapshots;
            for join in &table.joins {
                let found = ctx.resolve(&join.key).key().and_then(|k| snapshots[join.snapshot].get(&k));
                let found = match (found, join.on_missing) {
                    (Some(row), _) => Some(row),
                    (None, OnMissing::Null) => None,
                    (None, OnMissing::Wait) if !give_up => return Built::Wait(join.max_wait),
                    (None, OnMissing::DeadLetter | OnMissing::Wait) => {
                        let key = ctx.resolve(&join.key);
                        let key = key.key();
                        return Built::Dead(format!(
                            "no {} row for key {}",
                            join.cache.name,
                            key.as_deref().unwrap_or("null")
                        ));
                    }
                };
                ctx.joined.push(found);
            }
        }
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, column) in table.columns.iter().enumerate() {
            let is_key = table.schema.key.contains(&i);
            if deleting && !is_key {
                values.push(Value::Null);
                continue;
            }
            let value = match ctx.resolve(&column.source).typed(column.ty) {
                Ok(v) => v,
                Err(e) => return Built::Dead(format!("column {:?}: {e}", column.name)),
            };
            let value = match (column.transform, value) {
                (Some(Transform::Mask), Value::Text(s)) => Value::Text(mask_owned(s)),
                (Some(Transform::Tokenize), Value::Text(s)) => {
                    Value::Text(self.token_key.as_ref().expect("checked at start").tokenize(&s))
                }
                (_, v) => v,
            };
            if is_key && value == Value::Null {
                return Built::Dead(format!("key column {:?} is missing", column.name));
            }
            if let Some(why) = match &value {
                Value::Text(s) => proto::unstorable_text(s),
                _ => None,
            } {
                return Built::Dead(format!("column {:?}: {why}", column.name));
            }
            values.push(value);
        }
        let version = match table.version {
            VersionSource::Source => ctx.change.version.clone(),
            // A JSON change's version is already the record's position.
            VersionSource::Sequence if self.format == Format::Json => ctx.change.version.clone(),
            VersionSource::Sequence => ctx.record.position.version(),
        };
        if let Some(why) = proto::unsendable_row(&values) {
            return Built::Dead(why);
        }
        if version.as_str().len() > proto::MAX_VERSION_BYTES {
            let len = version.as_str().len();
            return Built::Dead(format!("its version is {len} bytes, more than {}", proto::MAX_VERSION_BYTES));
        }
        Built::Row(Row { op: if deleting { RowOp::Delete } else { RowOp::Upsert }, version, values })
    }

    /// The rows of one change for one table: a delete of the old key first when the key changed.
    fn rows_for(
        &self,
        table: &CompiledTable,
        ctx: &mut Context<'_, '_>,
        give_up: bool,
        index: usize,
        out: &mut Vec<(usize, Row)>,
    ) -> Result<(), Built> {
        if let Some(before) = &ctx.change.before {
            let key_moved = table.schema.key.iter().any(|&i| match &table.columns[i].source {
                Source::Record(slot, path) => {
                    let old = record_field(before, *slot, path).map(RawValue::get);
                    old.is_some() && old != record_field(ctx.slots, *slot, path).map(RawValue::get)
                }
                _ => false,
            });
            if key_moved && ctx.change.op == ChangeOp::Upsert {
                let data = ctx.slots;
                ctx.slots = before;
                let old = self.build(table, ctx, ChangeOp::Delete, give_up);
                ctx.slots = data;
                match old {
                    Built::Row(r) => out.push((index, r)),
                    other => return Err(other),
                }
            }
        }
        match self.build(table, ctx, ctx.change.op, give_up) {
            Built::Row(r) => out.push((index, r)),
            other => return Err(other),
        }
        Ok(())
    }
}

impl RecordMapper for Pipeline {
    fn tables(&self) -> Vec<Arc<TableSchema>> {
        self.tables.iter().map(|t| t.schema.clone()).chain([self.dead_letters.clone()]).collect()
    }

    fn map(&self, shard: &ShardId, record: &UserRecord, give_up: bool, out: &mut Vec<(usize, Row)>) -> MapOutcome {
        self.map_with(&self.snapshots(), shard, record, give_up, out)
    }

    fn map_run(
        &self,
        shard: &ShardId,
        records: &[UserRecord],
        give_up_first: bool,
        out: &mut Vec<(usize, Row)>,
    ) -> (usize, MapOutcome) {
        let snapshots = self.snapshots();
        map_each(records, give_up_first, |record, give_up| self.map_with(&snapshots, shard, record, give_up, out))
    }
}

impl Pipeline {
    /// The reference snapshots a run of records joins against, one per join.
    fn snapshots(&self) -> Vec<RefSnapshot> {
        self.tables.iter().flat_map(|t| &t.joins).map(|j| j.cache.snapshot()).collect()
    }

    fn map_with(
        &self,
        snapshots: &[RefSnapshot],
        shard: &ShardId,
        record: &UserRecord,
        give_up: bool,
        out: &mut Vec<(usize, Row)>,
    ) -> MapOutcome {
        let reject = |out: &mut Vec<(usize, Row)>, start: usize, reason: String| {
            out.truncate(start);
            self.dead_letter(shard, record, &reason, out);
            MapOutcome::Done
        };
        let start = out.len();
        if let Some(error) = &record.error {
            return reject(out, start, error.clone());
        }
        if record.data.len() > self.max_record_bytes {
            let reason =
                format!("record of {} bytes exceeds max_record_bytes {}", record.data.len(), self.max_record_bytes);
            return reject(out, start, reason);
        }
        let text = match std::str::from_utf8(&record.data) {
            Ok(t) => t,
            Err(e) => return reject(out, start, format!("payload is not utf-8: {e}")),
        };
        let change = match decode(self.format, text, &record.position, &self.fields) {
            Ok(Some(c)) => c,
            Ok(None) => return MapOutcome::Done,
            Err(e) => return reject(out, start, e),
        };
        let mut ctx = Context {
            shard,
            record,
            change: &change,
            slots: &change.data,
            snapshots,
            joined: Vec::with_capacity(self.max_joins),
        };
        for (i, table) in self.tables.iter().enumerate() {
            if let (Some(want), Some(got)) = (&table.source_table, &change.source_table) {
                if want != got
                    && !(got.len() > want.len()
                        && got.ends_with(want.as_str())
                        && got.as_bytes()[got.len() - want.len() - 1] == b'.')
                {
                    continue;
                }
            }
            match self.rows_for(table, &mut ctx, give_up, i, out) {
                Ok(()) => {}
                Err(Built::Wait(d)) => {
                    out.truncate(start);
                    return MapOutcome::Wait(d);
                }
                Err(Built::Dead(reason)) => {
                    return reject(out, start, format!("table {}: {reason}", table.schema.name))
                }
                Err(Built::Row(_)) => unreachable!("rows_for returns only failures as errors"),
            }
        }
        MapOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Position, SequenceNumber};

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2018-04-25 11:08:04.5"), Some(1_524_654_484_500));
        assert_eq!(parse_timestamp("2000-02-29T00:00:01.123456Z"), Some(951_782_401_123));
        assert_eq!(parse_timestamp("2000-13-01T00:00:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn lenient_but_checked_types() {
        let json = |v: Json, ty| typed(Scalar::from(&v), ty);
        assert_eq!(json(Json::from("12.5"), SqlType::Double), Ok(Value::Float(12.5)));
        assert_eq!(json(Json::from(7), SqlType::Text), Ok(Value::Text("7".into())));
        assert!(json(Json::from("x"), SqlType::BigInt).unwrap_err().contains("non-integer string"));
        assert!(json(Json::from(1.5), SqlType::BigInt).unwrap_err().contains("non-integer number"));
        assert!(json(serde_json::json!({"a": 1}), SqlType::Text).unwrap_err().contains("an object"));
        assert_eq!(typed(Scalar::Null, SqlType::Text), Ok(Value::Null));
        // Cached reference values type as the JSON they were loaded from.
        let cached = |v: Json, ty| typed(Scalar::from(&RefValue::from(&v)), ty);
        assert_eq!(cached(Json::from("42"), SqlType::BigInt), Ok(Value::Int(42)));
        assert_eq!(cached(Json::from(2.5), SqlType::Double), Ok(Value::Float(2.5)));
        assert_eq!(cached(Json::from(true), SqlType::Text), Ok(Value::Text("true".into())));
        assert!(cached(serde_json::json!([1]), SqlType::Text).unwrap_err().contains("an array"));
    }

    /// A pipeline of tables that join nothing, from its TOML.
    fn unjoined(toml: &str) -> Pipeline {
        Pipeline::without_references(&PipelineConfig::from_toml(toml).unwrap()).unwrap()
    }

    fn record(data: &str) -> UserRecord {
        UserRecord {
            position: Position::new(SequenceNumber::from_u128(10), 0),
            partition_key: "k".into(),
            data: data.as_bytes().into(),
            arrival_ms: 1,
            error: None,
        }
    }

    #[tokio::test]
    async fn joins_masks_tokenizes_and_dead_letters() {
        let source = proto::memory::MemoryReferenceSource::new();
        source.create_table("customer", true);
        let item = serde_json::json!({"customer_id": 3, "phone": "+1-296-605-8486", "email": "a@b.c"});
        source.put("customer", "3", item.as_object().unwrap().clone());
        let config = PipelineConfig::from_toml(
            r#"
            tokenize_key_env = "TRIBUTARY_TEST_PIPELINE_KEY"
            [[reference]]
            name = "customer"
            key = "customer_id"
            [[table]]
            name = "t"
            key = ["id"]
            [[table.join]]
            reference = "customer"
            key = "buyer"
            on_missing = "dead-letter"
            [[table.column]]
            name = "id"
            from = "id"
            type = "bigint"
            [[table.column]]
            name = "phone"
            from = "customer.phone"
            type = "text"
            transform = "mask"
            [[table.column]]
            name = "email"
            from = "customer.email"
            type = "text"
            transform = "tokenize"
            "#,
        )
        .unwrap();
        std::env::set_var("TRIBUTARY_TEST_PIPELINE_KEY", "0123456789abcdef");
        let refs = Arc::new(ReferenceSet::start(Arc::new(source), &config.reference_specs()).await.unwrap());
        let p = Pipeline::new(&config, refs).unwrap();
        let shard = ShardId::numbered(0);
        let mut out = Vec::new();
        p.map(&shard, &record(r#"{"id": 1, "buyer": 3}"#), false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.values[1], Value::Text("+*-***-***-****".into()));
        assert_eq!(
            out[0].1.values[2],
            Value::Text("c8b9adc27ca0fc812e2cca09aab792e34c9d8d2fce3408abb47cb633bbb5e77f".into())
        );
        out.clear();
        p.map(&shard, &record(r#"{"id": 2, "buyer": 99}"#), false, &mut out);
        assert_eq!(out[0].0, 1, "dead-letter table");
        assert_eq!(out[0].1.values[5], Value::Text("table t: no customer row for key 99".into()));
    }

    #[tokio::test]
    async fn paths_reach_into_nested_record_fields_and_joined_objects() {
        let source = proto::memory::MemoryReferenceSource::new();
        source.create_table("station", false);
        source.create_table("city", false);
        let station = serde_json::json!({"id": "s1", "city": "PAS", "geo": {"lat": 34.1, "tags": {"kind": "dc"}}});
        source.put("station", "s1", station.as_object().unwrap().clone());
        source.put("city", "PAS", serde_json::json!({"code": "PAS", "name": "Pasadena"}).as_object().unwrap().clone());
        let config = PipelineConfig::from_toml(
            r#"
            [[reference]]
            name = "station"
            key = "id"
            [[reference]]
            name = "city"
            key = "code"
            [[table]]
            name = "t"
            key = ["id"]
            join = [
                { reference = "station", key = "meta.station", on_missing = "dead-letter" },
                { reference = "city", key = "station.city", on_missing = "null" },
            ]
            column = [
                { name = "id", from = "meta.id", type = "bigint" },
                { name = "lat", from = "station.geo.lat", type = "double" },
                { name = "kind", from = "station.geo.tags.kind", type = "text" },
                { name = "absent", from = "station.geo.nothing", type = "text" },
                { name = "city", from = "city.name", type = "text" },
            ]
            "#,
        )
        .unwrap();
        let refs = Arc::new(ReferenceSet::start(Arc::new(source), &config.reference_specs()).await.unwrap());
        let p = Pipeline::new(&config, refs).unwrap();
        let mut out = Vec::new();
        p.map(&ShardId::numbered(0), &record(r#"{"meta": {"id": 5, "station": "s1"}}"#), false, &mut out);
        assert_eq!(
            out[0].1.values,
            vec![
                Value::Int(5),
                Value::Float(34.1),
                Value::Text("dc".into()),
                Value::Null,
                Value::Text("Pasadena".into())
            ]
        );
        out.clear();
        p.map(&ShardId::numbered(0), &record(r#"{"meta": {"id": 6, "station": "s2"}}"#), false, &mut out);
        assert_eq!(out[0].1.values[5], Value::Text("table t: no station row for key s2".into()));
    }

    #[test]
    fn unstorable_text_is_a_dead_letter_and_big_payloads_are_split_losslessly() {
        let p = unjoined(
            r#"
            [[table]]
            name = "t"
            key = ["id"]
            column = [
                { name = "id", from = "id", type = "text" },
                { name = "raw", from = "@payload", type = "text" },
            ]
            "#,
        );
        let dead = |data: &str| {
            let mut out = Vec::new();
            p.map(&ShardId::numbered(0), &record(data), false, &mut out);
            assert!(out.iter().all(|(t, _)| *t == 1), "only dead letters: {out:?}");
            out.into_iter().map(|(_, r)| r.values).collect::<Vec<_>>()
        };
        // A NUL inside a string: unescaped, it is a character no warehouse stores.
        let rows = dead(r#"{"id": "a\u0000b"}"#);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0][5],
            Value::Text(
                "table t: column \"id\": text holds a NUL character (U+0000), which warehouses do not store".into()
            )
        );
        // A valid record whose payload column would be longer than a column holds.
        let big = format!(r#"{{"id": "big", "pad": "{}"}}"#, "x".repeat(MAX_TEXT_BYTES));
        let rows = dead(&big);
        let reason = format!("column \"raw\": text of {} bytes is longer than a column's 65535", big.len());
        assert!(matches!(&rows[0][5], Value::Text(r) if r.contains(&reason)), "{:?}", rows[0][5]);
        // Its payload spans two rows whose base64, joined in part order, is the whole payload.
        assert_eq!(rows.len(), 2);
        let mut joined = String::new();
        for (i, row) in rows.iter().enumerate() {
            assert_eq!((&row[7], &row[8]), (&Value::Int(i as i64), &Value::Int(2)));
            let Value::Text(part) = &row[6] else { panic!("{row:?}") };
            assert!(part.len() <= MAX_TEXT_BYTES);
            joined.push_str(part);
        }
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(joined).unwrap(), big.as_bytes());
        // Text within a column's limit that doubles past what one SQL statement holds.
        let quotes = format!(r#"{{"id": "q", "pad": "{}"}}"#, "'".repeat(46_000));
        let rows = dead(&quotes);
        assert!(
            matches!(&rows[0][5], Value::Text(r) if r.contains("bytes as SQL, more than the 90000")),
            "{:?}",
            rows[0][5]
        );
        // Within the limits the same columns land.
        let mut out = Vec::new();
        p.map(&ShardId::numbered(0), &record(r#"{"id": "ok"}"#), false, &mut out);
        assert_eq!(out[0].0, 0);
    }

    /// Characters of 2, 3 and 4 bytes in UTF-8: the byte limits are checked with each.
    const WIDE: [char; 3] = ['é', '€', '𝄞'];

    /// Text of exactly `bytes` bytes: `filler`s (ASCII), then as many `c` as fit.
    fn wide_text(bytes: usize, c: char, filler: char) -> String {
        let n = bytes / c.len_utf8();
        let text = format!("{}{}", filler.to_string().repeat(bytes - n * c.len_utf8()), c.to_string().repeat(n));
        assert_eq!(text.len(), bytes);
        text
    }

    /// A text column takes multi-byte text of exactly 65,535 bytes whole; one byte more, or
    /// fewer characters than 65,535 that take more bytes, makes the record a dead letter.
    #[test]
    fn multibyte_text_is_held_to_the_column_limit_in_bytes() {
        let p = unjoined(
            r#"
            [[table]]
            name = "t"
            key = ["id"]
            column = [
                { name = "id", from = "id", type = "bigint" },
                { name = "note", from = "note", type = "text" },
            ]
            "#,
        );
        for c in WIDE {
            let at = wide_text(MAX_TEXT_BYTES, c, 'a');
            let few = c.to_string().repeat(MAX_TEXT_BYTES / c.len_utf8() + 1);
            assert!(few.chars().count() < MAX_TEXT_BYTES);
            for (note, lands) in [(at.clone(), true), (format!("{at}a"), false), (few, false)] {
                let mut out = Vec::new();
                let data = serde_json::json!({"id": 1, "note": note}).to_string();
                p.map(&ShardId::numbered(0), &record(&data), false, &mut out);
                let bytes = note.len();
                if lands {
                    assert_eq!(out.len(), 1, "{c}: {bytes} bytes");
                    assert_eq!((out[0].0, &out[0].1.values[1]), (0, &Value::Text(note)), "{c}: {bytes} bytes whole");
                } else {
                    let reason = format!("column \"note\": text of {bytes} bytes is longer than a column's 65535");
                    assert_eq!(out[0].0, 1, "{c}: {bytes} bytes should be a dead letter");
                    assert!(matches!(&out[0].1.values[5], Value::Text(r) if r.contains(&reason)), "{c}: {reason}");
                }
            }
        }
    }

    /// A version is held to its column's 256 bytes, not characters: a DMS stream position of
    /// multi-byte characters that makes the version exactly 256 bytes lands; one byte more, or
    /// fewer than 256 characters that take more bytes, makes the record a dead letter.
    #[test]
    fn a_version_longer_than_its_column_is_a_dead_letter() {
        let p = unjoined(
            r#"
            format = "dms"
            [[table]]
            name = "t"
            key = ["id"]
            version = "source"
            column = [{ name = "id", from = "id", type = "bigint" }]
            "#,
        );
        let change = |position: &str| {
            let meta = serde_json::json!({"record-type": "data", "operation": "update", "table-name": "t",
                "commit-timestamp": "2024-01-01T00:00:01Z", "stream-position": position, "transaction-record-id": 1});
            let mut out = Vec::new();
            let data = serde_json::json!({"data": {"id": 1}, "metadata": meta}).to_string();
            p.map(&ShardId::numbered(0), &record(&data), false, &mut out);
            out
        };
        assert_eq!(change("binlog.000001:4")[0].0, 0, "a binlog position lands");
        // What the version holds besides a position of one character that is no hex digit.
        let around = change("x")[0].1.version.as_str().len() - 1;
        for c in WIDE {
            let at = wide_text(proto::MAX_VERSION_BYTES - around, c, 'x');
            let out = change(&at);
            assert_eq!(out[0].0, 0, "{c}: {out:?}");
            assert_eq!(out[0].1.version.as_str().len(), proto::MAX_VERSION_BYTES, "{c}: {:?}", out[0].1.version);
            let few = c.to_string().repeat((proto::MAX_VERSION_BYTES - around) / c.len_utf8() + 1);
            for (position, bytes) in [(format!("{at}x"), 257), (few.clone(), around + few.len())] {
                let out = change(&position);
                assert_eq!(out[0].0, 1, "{c}: a version of {bytes} bytes should be a dead letter");
                let reason = format!("its version is {bytes} bytes, more than 256");
                assert!(matches!(&out[0].1.values[5], Value::Text(r) if r.contains(&reason)), "{c}: {out:?}");
            }
        }
    }

    /// A dead letter's payload is split every 48,000 bytes, not characters. The cuts fall inside
    /// multi-byte characters, which is harmless: each part holds the base64 of raw bytes, and 48,000
    /// being a multiple of 3, no part but the last is padded, so the parts' base64 joined in
    /// order is the base64 of the whole payload; each part's base64 fits a text column.
    #[test]
    fn dead_letter_parts_are_48000_bytes_of_the_payload_whatever_it_holds() {
        assert_eq!(DEAD_LETTER_PART_BYTES, 48_000, "the README promises parts of 48,000 bytes");
        let p = unjoined(
            r#"
            [[table]]
            name = "t"
            key = ["id"]
            column = [{ name = "id", from = "id", type = "text" }]
            "#,
        );
        for c in WIDE {
            // Not JSON (the string never ends); 7 bytes before the wide characters put both cuts
            // inside one of them.
            let payload = format!("{{\"id\":\"{}", c.to_string().repeat(120_000 / c.len_utf8()));
            assert!(!payload.is_char_boundary(48_000) && !payload.is_char_boundary(96_000));
            let mut out = Vec::new();
            p.map(&ShardId::numbered(0), &record(&payload), false, &mut out);
            let bytes = payload.as_bytes();
            let parts = bytes.len().div_ceil(48_000);
            assert_eq!((parts, out.len()), (3, parts), "{c}: {} bytes in parts of 48,000", bytes.len());
            let mut joined = String::new();
            for (i, (table, row)) in out.iter().enumerate() {
                assert_eq!(*table, 1);
                assert_eq!((&row.values[7], &row.values[8]), (&Value::Int(i as i64), &Value::Int(parts as i64)));
                let Value::Text(part) = &row.values[6] else { panic!("{c}: {row:?}") };
                assert!(proto::unstorable_text(part).is_none(), "{c}: part {i} takes {} bytes", part.len());
                let raw = base64::engine::general_purpose::STANDARD.decode(part).unwrap();
                let (start, end) = (i * 48_000, bytes.len().min((i + 1) * 48_000));
                assert!(raw == bytes[start..end], "{c}: part {i} holds {} bytes, not bytes {start}..{end}", raw.len());
                joined.push_str(part);
            }
            assert_eq!(joined, base64::engine::general_purpose::STANDARD.encode(bytes), "{c}");
        }
    }

    #[test]
    fn timestamps_outside_years_1_to_9999_are_dead_letters() {
        let p = unjoined(
            r#"
            [[table]]
            name = "t"
            key = ["id"]
            column = [
                { name = "id", from = "id", type = "bigint" },
                { name = "at", from = "at", type = "timestamp" },
            ]
            "#,
        );
        let mut out = Vec::new();
        for (at, dead) in [("253402300799999", false), ("253402300800000", true), ("\"0000-06-01T00:00:00Z\"", true)] {
            out.clear();
            p.map(&ShardId::numbered(0), &record(&format!(r#"{{"id": 1, "at": {at}}}"#)), false, &mut out);
            assert_eq!(out[0].0 == 1, dead, "{at}: {:?}", out[0].1.values);
        }
    }

    #[test]
    fn a_key_change_in_a_dms_update_deletes_the_old_key() {
        let p = unjoined(
            r#"
            format = "dms"
            [[table]]
            name = "activity"
            source_table = "ticket_activity"
            key = ["ticket_id"]
            column = [
                { name = "ticket_id", from = "ticket_id", type = "bigint" },
                { name = "purchased_by", from = "purchased_by", type = "bigint" },
            ]
            "#,
        );
        let update = serde_json::json!({
            "data": {"ticket_id": 8, "purchased_by": 3},
            "before-image": {"ticket_id": 7, "purchased_by": 3},
            "metadata": {"record-type": "data", "operation": "update", "schema-name": "s",
                         "table-name": "ticket_activity", "commit-timestamp": "2024-01-01T00:00:00Z"}
        });
        let mut out = Vec::new();
        p.map(&ShardId::numbered(0), &record(&update.to_string()), false, &mut out);
        let rows: Vec<(RowOp, Value)> = out.iter().map(|(_, r)| (r.op, r.values[0].clone())).collect();
        assert_eq!(rows, vec![(RowOp::Delete, Value::Int(7)), (RowOp::Upsert, Value::Int(8))]);
        assert_eq!(out[0].1.version, out[1].1.version);
        // Another table's changes are not this table's.
        let other = update.to_string().replace("ticket_activity", "customer");
        out.clear();
        p.map(&ShardId::numbered(0), &record(&other), false, &mut out);
        assert!(out.is_empty());
    }

    /// A DMS change of `schema.table`, as its payload.
    fn dms(operation: &str, schema: &str, table: &str, ticket_id: i64) -> String {
        serde_json::json!({
            "data": {"ticket_id": ticket_id},
            "metadata": {"record-type": "data", "operation": operation, "schema-name": schema,
                         "table-name": table, "commit-timestamp": "2024-01-01T00:00:00Z"}
        })
        .to_string()
    }

    /// README: `source_table = "ticket_activity"` keeps that table's changes (with or without a
    /// schema in front) and skips every other table's: no row, no dead letter.
    #[test]
    fn source_table_keeps_its_table_and_skips_the_others_silently() {
        let p = unjoined(
            r#"
            format = "dms"
            [[table]]
            name = "activity"
            source_table = "ticket_activity"
            key = ["ticket_id"]
            column = [{ name = "ticket_id", from = "ticket_id", type = "bigint" }]
            "#,
        );
        let map = |payload: String| {
            let mut out = Vec::new();
            p.map(&ShardId::numbered(0), &record(&payload), false, &mut out);
            out.into_iter().map(|(table, row)| (table, row.op, row.values)).collect::<Vec<_>>()
        };
        let kept = vec![(0, RowOp::Upsert, vec![Value::Int(5)])];
        assert_eq!(map(dms("insert", "dms_sample", "ticket_activity", 5)), kept);
        assert_eq!(map(dms("insert", "", "ticket_activity", 5)), kept);
        assert_eq!(map(dms("insert", "dms_sample", "other", 5)), vec![]);
        assert_eq!(map(dms("insert", "dms_sample", "xticket_activity", 5)), vec![]);
    }

    /// README: `@source_table` is the change's `schema.table`, `@arrival_time` the record's
    /// approximate arrival timestamp (not the source's commit time). A delete carries its key
    /// only (the other columns of a tombstone are null).
    #[test]
    fn source_table_and_arrival_time_columns() {
        let p = unjoined(
            r#"
            format = "dms"
            [[table]]
            name = "activity"
            key = ["ticket_id"]
            column = [
                { name = "ticket_id", from = "ticket_id", type = "bigint" },
                { name = "origin", from = "@source_table", type = "text" },
                { name = "arrived", from = "@arrival_time", type = "timestamp" },
            ]
            "#,
        );
        let map = |payload: String| {
            let record = UserRecord { arrival_ms: 1_717_171_717_123, ..record(&payload) };
            let mut out = Vec::new();
            p.map(&ShardId::numbered(0), &record, false, &mut out);
            out.into_iter().map(|(table, row)| (table, row.op, row.values)).collect::<Vec<_>>()
        };
        assert_eq!(
            map(dms("insert", "dms_sample", "ticket_activity", 5)),
            vec![(
                0,
                RowOp::Upsert,
                vec![
                    Value::Int(5),
                    Value::Text("dms_sample.ticket_activity".into()),
                    Value::Timestamp(1_717_171_717_123)
                ]
            )]
        );
        assert_eq!(
            map(dms("delete", "dms_sample", "ticket_activity", 5)),
            vec![(0, RowOp::Delete, vec![Value::Int(5), Value::Null, Value::Null])]
        );
    }
}
