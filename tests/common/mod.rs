//! What the cluster tests share: the test tables and their mapping.

use proto::{Column, SqlType, TableSchema};
use std::sync::Arc;
use worker::{ColumnSource, JsonMapper, TableMapping};

/// `sim_latest` (key → last value) and `sim_raw` (every record by shard and sequence number).
pub fn mapper() -> JsonMapper {
    let col = |name: &str, ty| Column { name: name.into(), ty };
    let latest = TableSchema {
        name: "sim_latest".into(),
        columns: vec![col("key", SqlType::Text), col("value", SqlType::BigInt)],
        key: vec![0],
        version_column: "_version".into(),
    };
    let raw = TableSchema {
        name: "sim_raw".into(),
        columns: vec![
            col("shard_id", SqlType::Text),
            col("sequence_number", SqlType::Text),
            col("payload", SqlType::Text),
        ],
        key: vec![0, 1],
        version_column: "_version".into(),
    };
    JsonMapper::new(vec![
        TableMapping {
            schema: Arc::new(latest),
            sources: vec![ColumnSource::Field("key".into()), ColumnSource::Field("value".into())],
        },
        TableMapping {
            schema: Arc::new(raw),
            sources: vec![ColumnSource::ShardId, ColumnSource::SequenceNumber, ColumnSource::Payload],
        },
    ])
}
