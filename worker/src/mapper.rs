//! Turning Kinesis records into warehouse rows. A record that cannot be mapped becomes a row of
//! the dead-letter table (shard, sequence number, reason, payload in base64) so its position
//! still checkpoints and the shard keeps moving.

use base64::Engine;
use proto::{Column, KinesisRecord, Position, Row, RowOp, ShardId, SqlType, TableSchema, Value};
use serde_json::Value as Json;
use std::sync::Arc;

/// Where one column's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ColumnSource {
    /// A top-level field of the record's JSON object.
    Field(String),
    ShardId,
    SequenceNumber,
    SubSequence,
    PartitionKey,
    /// `ApproximateArrivalTimestamp`.
    ArrivalTime,
    /// The whole payload as text.
    Payload,
}

/// One target table: its schema and where each column comes from.
#[derive(Clone, Debug)]
pub struct TableMapping {
    pub schema: Arc<TableSchema>,
    pub sources: Vec<ColumnSource>,
}

/// Maps records onto the rows of every target table; table `i` goes to sink `i`.
pub trait RecordMapper: Send + Sync + 'static {
    /// The target tables; the last one is the dead-letter table.
    fn tables(&self) -> Vec<Arc<TableSchema>>;
    /// Appends `(table index, row)` pairs for one record.
    fn map(&self, shard: &ShardId, record: &KinesisRecord, position: &Position, out: &mut Vec<(usize, Row)>);
}

/// The name of the dead-letter table.
pub const DEAD_LETTER_TABLE: &str = "tributary_dead_letters";

/// Where a record came from: the key of a raw landing table (its first three columns) and of
/// the dead-letter table, so a replayed record lands once.
pub fn record_origin_columns() -> Vec<(Column, ColumnSource)> {
    vec![
        (Column::new("shard_id", SqlType::Text), ColumnSource::ShardId),
        (Column::new("sequence_number", SqlType::Text), ColumnSource::SequenceNumber),
        (Column::new("sub_sequence", SqlType::BigInt), ColumnSource::SubSequence),
        (Column::new("partition_key", SqlType::Text), ColumnSource::PartitionKey),
        (Column::new("approximate_arrival_timestamp", SqlType::Timestamp), ColumnSource::ArrivalTime),
    ]
}

/// The dead-letter table: one row per record that could not be mapped, keyed by its position.
pub fn dead_letter_schema() -> TableSchema {
    let mut columns: Vec<Column> = record_origin_columns().into_iter().map(|(c, _)| c).collect();
    columns.push(Column::new("reason", SqlType::Text));
    columns.push(Column::new("payload_base64", SqlType::Text));
    TableSchema {
        name: DEAD_LETTER_TABLE.to_owned(),
        columns,
        key: vec![0, 1, 2],
        version_column: "_version".to_owned(),
    }
}

/// Maps JSON records onto one or more tables by top-level field names and stream metadata. The
/// row version is the record's position, so replays are fenced out by the warehouse.
pub struct JsonMapper {
    tables: Vec<TableMapping>,
    dead_letters: Arc<TableSchema>,
    /// Largest payload accepted, in bytes.
    pub max_record_bytes: usize,
}

impl JsonMapper {
    pub fn new(tables: Vec<TableMapping>) -> Self {
        Self { tables, dead_letters: Arc::new(dead_letter_schema()), max_record_bytes: 1 << 20 }
    }

    fn dead_letter(&self, shard: &ShardId, record: &KinesisRecord, position: &Position, reason: String) -> Row {
        Row {
            op: RowOp::Upsert,
            version: position.version(),
            values: vec![
                Value::Text(shard.to_string()),
                Value::Text(position.sequence.to_string()),
                Value::Int(position.sub_sequence as i64),
                Value::Text(record.partition_key.clone()),
                Value::Timestamp(record.arrival_ms),
                Value::Text(reason),
                Value::Text(base64::engine::general_purpose::STANDARD.encode(&record.data)),
            ],
        }
    }

    fn row(
        mapping: &TableMapping,
        shard: &ShardId,
        record: &KinesisRecord,
        position: &Position,
        text: &str,
        doc: &serde_json::Map<String, Json>,
    ) -> Result<Row, String> {
        let mut values = Vec::with_capacity(mapping.sources.len());
        for (i, (source, column)) in mapping.sources.iter().zip(&mapping.schema.columns).enumerate() {
            let value = match source {
                ColumnSource::Field(name) => typed(doc.get(name), column.ty)
                    .map_err(|found| format!("field {name:?}: expected {:?}, found {found}", column.ty))?,
                ColumnSource::ShardId => Value::Text(shard.to_string()),
                ColumnSource::SequenceNumber => Value::Text(position.sequence.to_string()),
                ColumnSource::SubSequence => Value::Int(position.sub_sequence as i64),
                ColumnSource::PartitionKey => Value::Text(record.partition_key.clone()),
                ColumnSource::ArrivalTime => Value::Timestamp(record.arrival_ms),
                ColumnSource::Payload => Value::Text(text.to_owned()),
            };
            if value == Value::Null && mapping.schema.key.contains(&i) {
                return Err(format!("key column {:?} is missing", column.name));
            }
            values.push(value);
        }
        Ok(Row { op: RowOp::Upsert, version: position.version(), values })
    }
}

/// A JSON value as a column of type `ty`; `Err` names what was found instead.
fn typed(value: Option<&Json>, ty: SqlType) -> Result<Value, &'static str> {
    let Some(value) = value else { return Ok(Value::Null) };
    Ok(match (ty, value) {
        (_, Json::Null) => Value::Null,
        (SqlType::Text, Json::String(s)) => Value::Text(s.clone()),
        (SqlType::Text, Json::Number(n)) => Value::Text(n.to_string()),
        (SqlType::Boolean, Json::Bool(b)) => Value::Bool(*b),
        (SqlType::BigInt, Json::Number(n)) => Value::Int(n.as_i64().ok_or("a non-integer number")?),
        (SqlType::Double, Json::Number(n)) => Value::Float(n.as_f64().ok_or("a number out of range")?),
        (SqlType::Timestamp, Json::Number(n)) => Value::Timestamp(n.as_i64().ok_or("a non-integer number")?),
        (_, Json::String(_)) => return Err("a string"),
        (_, Json::Number(_)) => return Err("a number"),
        (_, Json::Bool(_)) => return Err("a boolean"),
        (_, Json::Array(_)) => return Err("an array"),
        (_, Json::Object(_)) => return Err("an object"),
    })
}

impl RecordMapper for JsonMapper {
    fn tables(&self) -> Vec<Arc<TableSchema>> {
        self.tables.iter().map(|t| t.schema.clone()).chain([self.dead_letters.clone()]).collect()
    }

    fn map(&self, shard: &ShardId, record: &KinesisRecord, position: &Position, out: &mut Vec<(usize, Row)>) {
        let dead = self.tables.len();
        if record.data.len() > self.max_record_bytes {
            let reason = format!("record of {} bytes exceeds {} bytes", record.data.len(), self.max_record_bytes);
            out.push((dead, self.dead_letter(shard, record, position, reason)));
            return;
        }
        let text = match std::str::from_utf8(&record.data) {
            Ok(t) => t,
            Err(e) => {
                out.push((dead, self.dead_letter(shard, record, position, format!("payload is not utf-8: {e}"))));
                return;
            }
        };
        let doc = match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(doc)) => doc,
            Ok(_) => {
                out.push((dead, self.dead_letter(shard, record, position, "payload is not a json object".into())));
                return;
            }
            Err(e) => {
                out.push((dead, self.dead_letter(shard, record, position, format!("payload is not json: {e}"))));
                return;
            }
        };
        let start = out.len();
        for (i, mapping) in self.tables.iter().enumerate() {
            match Self::row(mapping, shard, record, position, text, &doc) {
                Ok(row) => out.push((i, row)),
                Err(reason) => {
                    // All or nothing: a record is either in every table or in the dead letters.
                    out.truncate(start);
                    out.push((dead, self.dead_letter(shard, record, position, reason)));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::SequenceNumber;

    fn mapper() -> JsonMapper {
        let schema = TableSchema {
            name: "t".into(),
            columns: vec![
                Column { name: "id".into(), ty: SqlType::Text },
                Column { name: "n".into(), ty: SqlType::Double },
                Column { name: "shard".into(), ty: SqlType::Text },
            ],
            key: vec![0],
            version_column: "_version".into(),
        };
        JsonMapper::new(vec![TableMapping {
            schema: Arc::new(schema),
            sources: vec![ColumnSource::Field("id".into()), ColumnSource::Field("n".into()), ColumnSource::ShardId],
        }])
    }

    fn map(data: &[u8]) -> Vec<(usize, Row)> {
        let record = KinesisRecord {
            sequence: SequenceNumber::from_u128(7),
            partition_key: "k".into(),
            data: data.into(),
            arrival_ms: 1,
        };
        let mut out = Vec::new();
        mapper().map(&ShardId::numbered(0), &record, &record.position(), &mut out);
        out
    }

    #[test]
    fn maps_fields_and_metadata() {
        let out = map(br#"{"id":"a","n":1.5}"#);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 0);
        assert_eq!(
            out[0].1.values,
            vec![Value::Text("a".into()), Value::Float(1.5), Value::Text("shardId-000000000000".into())]
        );
    }

    #[test]
    fn bad_records_become_dead_letters_with_a_reason() {
        for (data, reason) in [
            (&b"{not json"[..], "payload is not json"),
            (&b"[1,2]"[..], "payload is not a json object"),
            (&b"\xff\xfe"[..], "payload is not utf-8"),
            (&br#"{"n":1}"#[..], "key column \"id\" is missing"),
            (&br#"{"id":"a","n":"x"}"#[..], "field \"n\": expected Double, found a string"),
        ] {
            let out = map(data);
            assert_eq!(out.len(), 1, "{reason}");
            assert_eq!(out[0].0, 1);
            match &out[0].1.values[5] {
                Value::Text(r) => assert!(r.starts_with(reason), "{r} vs {reason}"),
                v => panic!("{v:?}"),
            }
        }
    }
}
