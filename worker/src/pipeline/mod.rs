//! The record pipeline: decode → join → transform → rows, one `Row` per target table for each
//! change. A record that cannot be decoded, typed or joined (per its join's policy) becomes its
//! dead letter instead, with the reason: all of its rows or none. No actors: the consumer calls
//! it through `RecordMapper`.
//!
//! One record's path, in the order of the files:
//!
//! | file | what it holds |
//! |---|---|
//! | `config.rs` | `[[reference]]` / `[[table]]` configuration and its validation |
//! | `plan.rs` | the configuration compiled at start: sources, joins, schemas |
//! | `doc.rs` | JSON without a value tree: a record parsed straight into the slots of the fields the columns read |
//! | `decode.rs` | record formats (JSON, AWS DMS) → changes with their version |
//! | `resolve.rs` | what a source holds for one record: a field, a joined attribute, metadata, a constant |
//! | `joins.rs` | reference lookups and the `on_missing` policies |
//! | `typing.rs` | every JSON → SQL value conversion, and its errors |
//! | `transform.rs` | `mask` and `tokenize` (HMAC-SHA256) |
//! | `rows.rs` | one table's rows of one change (the old key's delete first when the key moved) |
//! | `dead_letter.rs` | the dead-letter table: its schema, its rows, what they keep |
//! | `tests.rs` | the pipeline end to end: records in, rows or dead letters out |

pub mod config;
pub mod dead_letter;
mod decode;
pub mod doc;
mod joins;
mod plan;
mod resolve;
mod rows;
pub mod transform;
mod typing;

#[cfg(test)]
mod tests;

pub use config::PipelineConfig;
pub use plan::PipelineError;

use crate::record_mapper::{MapOutcome, MappedRows, RecordMapper, TableId, Target, UserRecord};
use crate::reference_cache::RefSnapshot;
use crate::reference_set::ReferenceSet;
use decode::decode;
use plan::Plan;
use proto::{Row, ShardId, TableSchema};
use resolve::{Context, Unmapped};
use std::sync::Arc;

pub struct Pipeline {
    plan: Plan,
    /// Keeps the joined caches (and their refreshers) alive as long as the pipeline.
    _references: Arc<ReferenceSet>,
}

impl Pipeline {
    /// A pipeline whose tables join nothing.
    pub fn without_references(config: &PipelineConfig) -> Result<Self, PipelineError> {
        Self::new(config, Arc::new(ReferenceSet::empty()))
    }

    pub fn new(config: &PipelineConfig, references: Arc<ReferenceSet>) -> Result<Self, PipelineError> {
        Ok(Self { plan: Plan::compile(config, &references)?, _references: references })
    }

    /// The top-level record fields the tables read (what decoding extracts).
    pub fn record_fields(&self) -> &doc::FieldSlots {
        &self.plan.fields
    }

    /// One record's rows, or its dead letter.
    fn map_one(
        &self,
        snapshots: &[RefSnapshot],
        shard: &ShardId,
        record: &UserRecord,
        give_up: bool,
        out: &mut Vec<(Target, Row)>,
    ) -> MapOutcome {
        let start = out.len();
        let reject = |out: &mut Vec<(Target, Row)>, reason: &str| {
            out.truncate(start);
            dead_letter::rows(shard, record, reason, out);
            MapOutcome::Done
        };
        if let Some(error) = &record.error {
            return reject(out, error);
        }
        let plan = &self.plan;
        if record.data.len() > plan.max_record_bytes {
            let (len, max) = (record.data.len(), plan.max_record_bytes);
            return reject(out, &format!("record of {len} bytes exceeds max_record_bytes {max}"));
        }
        let text = match std::str::from_utf8(&record.data) {
            Ok(t) => t,
            Err(e) => return reject(out, &format!("payload is not utf-8: {e}")),
        };
        let change = match decode(plan.format, &plan.before_image_field, text, &record.position, &plan.fields) {
            Ok(Some(c)) => c,
            Ok(None) => return MapOutcome::Done,
            Err(e) => return reject(out, &e),
        };
        let mut ctx = Context {
            shard,
            record,
            change: &change,
            slots: &change.data,
            snapshots,
            joined: Vec::with_capacity(plan.max_joins),
        };
        for (i, table) in plan.tables.iter().enumerate() {
            if !table.takes(change.source_table.as_deref()) {
                continue;
            }
            match rows::table_rows(plan, table, TableId::new(i), &mut ctx, give_up, out) {
                Ok(()) => {}
                Err(Unmapped::Wait(d)) => {
                    out.truncate(start);
                    return MapOutcome::Wait(d);
                }
                Err(Unmapped::Dead(reason)) => return reject(out, &format!("table {}: {reason}", table.schema.name)),
            }
        }
        MapOutcome::Done
    }
}

impl RecordMapper for Pipeline {
    fn tables(&self) -> Vec<Arc<TableSchema>> {
        self.plan.tables.iter().map(|t| t.schema.clone()).collect()
    }

    /// Takes the reference snapshots once for the whole run.
    fn map(
        &self,
        shard: &ShardId,
        records: &[UserRecord],
        give_up_first: bool,
        out: &mut MappedRows,
    ) -> (usize, MapOutcome) {
        let snapshots = self.plan.snapshots();
        for (i, record) in records.iter().enumerate() {
            if let MapOutcome::Wait(d) = self.map_one(&snapshots, shard, record, give_up_first && i == 0, &mut out.rows)
            {
                return (i, MapOutcome::Wait(d));
            }
            out.end_record();
        }
        (records.len(), MapOutcome::Done)
    }
}
