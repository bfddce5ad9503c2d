//! The seam between a shard consumer and the record pipeline: the `UserRecord`s a consumer
//! reads, the `RecordMapper` that turns them into rows, and where each row goes (`Target`).
//! The consumer and the pipeline both depend on this file and on nothing of each other.

use proto::{Position, Row, ShardId, TableSchema};
use std::sync::Arc;
use std::time::Duration;

/// One user record: a plain Kinesis record, or one record of a KPL aggregate (`kpl.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub position: Position,
    pub partition_key: String,
    pub data: Arc<[u8]>,
    pub arrival_ms: i64,
    /// Why the Kinesis record could not be split into user records (then `data` is all of it).
    pub error: Option<String>,
}

/// A target table: its place in `RecordMapper::tables()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId(usize);

impl TableId {
    pub const fn new(index: usize) -> Self {
        Self(index)
    }

    pub const fn index(self) -> usize {
        self.0
    }
}

/// Where a mapped row goes: a target table, or the dead-letter table every node has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Table(TableId),
    DeadLetters,
}

/// What became of a run of records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOutcome {
    /// Every record's rows (or its dead letter) were appended.
    Done,
    /// A join waits for reference data: try that record again later; after this long, map it
    /// with `give_up_first` so it is dead-lettered.
    Wait(Duration),
}

/// What `RecordMapper::map` appends to: the rows of each mapped record, and where each
/// record's rows end, so a row the warehouse later refuses can be traced to its record.
#[derive(Debug, Default)]
pub struct MappedRows {
    pub rows: Vec<(Target, Row)>,
    /// One entry per mapped record, in order: `rows.len()` once its rows were appended (a
    /// record that makes no row repeats the end before it).
    pub ends: Vec<usize>,
}

impl MappedRows {
    /// Marks the rows appended since the previous record's end as the next record's.
    pub fn end_record(&mut self) {
        self.ends.push(self.rows.len());
    }

    /// Which mapped record (its index among those mapped) row `row` came from.
    pub fn record_of(&self, row: usize) -> usize {
        self.ends.partition_point(|&end| end <= row)
    }
}

/// Maps user records onto rows of the target tables (and dead letters).
pub trait RecordMapper: Send + Sync + 'static {
    /// The target tables, in `TableId` order (the dead-letter table is not one of them).
    fn tables(&self) -> Vec<Arc<TableSchema>>;

    /// Maps `records` in order, appending each one's rows to `out` (all of its rows, or its
    /// dead letter) and ending it there (`MappedRows::end_record`), until one must wait for
    /// reference data: returns how many were mapped and that record's `Wait`, or `Done` when all
    /// were. With `give_up_first`, the first record does not wait: what it waits for makes it a
    /// dead letter.
    fn map(
        &self,
        shard: &ShardId,
        records: &[UserRecord],
        give_up_first: bool,
        out: &mut MappedRows,
    ) -> (usize, MapOutcome);
}
