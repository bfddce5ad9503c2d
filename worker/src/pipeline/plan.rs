//! The plan: a `PipelineConfig` compiled once at start. Every column's source is resolved to a
//! record field's slot, a joined row's attribute, a piece of metadata or a constant; every join
//! to its reference cache; every table to its schema.

use super::config::{ColumnType, Format, OnMissing, PipelineConfig, Transform, VersionSource};
use super::doc::FieldSlots;
use super::transform::{TokenKey, TokenKeyError};
use crate::reference_cache::{RefSnapshot, ReferenceCache};
use crate::reference_set::ReferenceSet;
use proto::{Column, SqlType, TableSchema};
use serde_json::Value as Json;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("tokenize_key_env: {0}")]
    TokenKey(#[from] TokenKeyError),
    #[error("reference {0} is joined but was not loaded")]
    MissingReference(String),
}

/// Where a value comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A record field: the slot of its first segment, then the path inside it.
    Record(usize, Vec<String>),
    /// A joined row's attribute (by join, then attribute index), then the path inside it.
    Joined(usize, usize, Vec<String>),
    Meta(Meta),
    Constant(Json),
}

/// The record metadata a column can take (`@shard_id`, …).
#[derive(Clone, Copy, Debug)]
pub enum Meta {
    ShardId,
    SequenceNumber,
    SubSequence,
    PartitionKey,
    ArrivalTime,
    Payload,
    Operation,
    SourceTable,
}

pub struct CompiledJoin {
    pub cache: Arc<ReferenceCache>,
    /// Where this join's snapshot sits in a run's snapshots (joins of all tables, in order).
    pub snapshot: usize,
    pub key: Source,
    pub on_missing: OnMissing,
    pub max_wait: Duration,
}

pub struct CompiledColumn {
    pub name: String,
    pub source: Source,
    pub ty: SqlType,
    pub transform: Option<Transform>,
}

pub struct CompiledTable {
    pub schema: Arc<TableSchema>,
    pub source_table: Option<String>,
    pub version: VersionSource,
    pub joins: Vec<CompiledJoin>,
    pub columns: Vec<CompiledColumn>,
}

impl CompiledTable {
    /// Whether a change of `source` (`schema.table`, or none for plain JSON) is this table's:
    /// its `source_table` alone or after a schema, or any when it names none.
    #[inline]
    pub fn takes(&self, source: Option<&str>) -> bool {
        let (Some(want), Some(got)) = (&self.source_table, source) else { return true };
        got == want
            || (got.len() > want.len()
                && got.ends_with(want.as_str())
                && got.as_bytes()[got.len() - want.len() - 1] == b'.')
    }
}

/// The compiled pipeline.
pub struct Plan {
    pub format: Format,
    /// Where DMS records carry the old row (`before_image_field`).
    pub before_image_field: String,
    pub max_record_bytes: usize,
    pub tables: Vec<CompiledTable>,
    pub token_key: Option<TokenKey>,
    /// The top-level record fields any table reads.
    pub fields: FieldSlots,
    /// The most joins of one table.
    pub max_joins: usize,
}

const fn sql_type(t: ColumnType) -> SqlType {
    match t {
        ColumnType::Boolean => SqlType::Boolean,
        ColumnType::Bigint => SqlType::BigInt,
        ColumnType::Double => SqlType::Double,
        ColumnType::Text => SqlType::Text,
        ColumnType::Timestamp => SqlType::Timestamp,
    }
}

/// A column's or a join key's `from`: metadata, a joined attribute (`alias.attribute.…`), or a
/// record field (`field.…`, `$.` optional).
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

impl Plan {
    /// Compiles a validated configuration against the loaded reference tables.
    pub fn compile(config: &PipelineConfig, references: &ReferenceSet) -> Result<Self, PipelineError> {
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
            before_image_field: config.before_image_field.clone(),
            max_record_bytes: config.max_record_bytes,
            token_key,
            max_joins: tables.iter().map(|t| t.joins.len()).max().unwrap_or(0),
            tables,
            fields,
        })
    }

    /// The reference snapshots a run of records joins against, one per join.
    pub fn snapshots(&self) -> Vec<RefSnapshot> {
        self.tables.iter().flat_map(|t| &t.joins).map(|j| j.cache.snapshot()).collect()
    }
}
