//! Record formats: a user record's bytes → the changes it carries.
//!
//! - `json`: one JSON object, an upsert.
//! - `dms`: the AWS DMS envelope (`data`, `metadata`, optional `before-image`). Data records
//!   with operation load / insert / update are upserts, delete is a delete; control records
//!   carry no rows. The version orders changes of a key: full-load rows before every change,
//!   then (commit-timestamp, transaction-record-id) when DMS includes transaction details, then
//!   the record's position. An update that changed the primary key (seen in the before-image)
//!   also deletes the old key.

use proto::{Position, Version};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Dms,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    Upsert,
    Delete,
}

/// One change to one source row.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub op: ChangeOp,
    /// `schema.table` for DMS records; `None` for plain JSON.
    pub source_table: Option<String>,
    pub data: Map<String, Json>,
    /// The row before an update (DMS before-image), when present.
    pub before: Option<Map<String, Json>>,
    /// The source's order for this change.
    pub version: Version,
}

/// Parses a user record. `Ok(empty)` for records that carry no row (DMS control records).
pub fn decode(format: Format, data: &[u8], position: &Position) -> Result<Vec<Change>, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("payload is not utf-8: {e}"))?;
    let doc: Json = serde_json::from_str(text).map_err(|e| format!("payload is not json: {e}"))?;
    let Json::Object(doc) = doc else { return Err("payload is not a json object".into()) };
    match format {
        Format::Json => Ok(vec![Change {
            op: ChangeOp::Upsert,
            source_table: None,
            data: doc,
            before: None,
            version: position.version(),
        }]),
        Format::Dms => dms(doc, position),
    }
}

fn text<'a>(meta: &'a Map<String, Json>, field: &str) -> Option<&'a str> {
    meta.get(field).and_then(Json::as_str)
}

/// `2023-05-25T12:34:56.1234Z` → `2023-05-25T12:34:56.123400000`: fixed width, so text order is
/// time order.
fn normalize_timestamp(ts: &str) -> String {
    let ts = ts.trim_end_matches('Z');
    let (whole, fraction) = ts.split_once('.').unwrap_or((ts, ""));
    format!("{whole}.{fraction:0<9}")
}

fn dms(mut doc: Map<String, Json>, position: &Position) -> Result<Vec<Change>, String> {
    let Some(Json::Object(meta)) = doc.remove("metadata") else { return Err("dms record has no metadata".into()) };
    match text(&meta, "record-type") {
        Some("data") => {}
        Some("control") => return Ok(Vec::new()),
        other => return Err(format!("dms record-type {other:?} is neither data nor control")),
    }
    let operation = text(&meta, "operation").ok_or("dms data record has no operation")?;
    let op = match operation {
        "load" | "insert" | "update" => ChangeOp::Upsert,
        "delete" => ChangeOp::Delete,
        other => return Err(format!("dms operation {other:?} is not load, insert, update or delete")),
    };
    let source_table = match (text(&meta, "schema-name"), text(&meta, "table-name")) {
        (Some(s), Some(t)) if !s.is_empty() => Some(format!("{s}.{t}")),
        (_, Some(t)) => Some(t.to_owned()),
        _ => return Err("dms record has no table-name".into()),
    };
    let Some(Json::Object(data)) = doc.remove("data") else { return Err("dms data record has no data object".into()) };
    let before = match doc.remove("before-image") {
        Some(Json::Object(b)) => Some(b),
        _ => None,
    };
    let here = position.version();
    let version = if operation == "load" {
        format!("0{}", here.as_str())
    } else if let Some(commit) = text(&meta, "commit-timestamp") {
        let record_id = meta.get("transaction-record-id").and_then(Json::as_u64).unwrap_or(0);
        format!("1{}{record_id:020}{}", normalize_timestamp(commit), here.as_str())
    } else {
        format!("1{}", here.as_str())
    };
    Ok(vec![Change { op, source_table, data, before, version: Version::from_text(version) }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::SequenceNumber;

    fn at(seq: u128) -> Position {
        Position::new(SequenceNumber::from_u128(seq), 0)
    }

    fn dms_record(op: &str, commit: Option<&str>, record_id: u64) -> String {
        let mut meta = serde_json::json!({
            "timestamp": "2024-01-01T00:00:00.000000Z", "record-type": "data", "operation": op,
            "partition-key-type": "primary-key", "schema-name": "sales", "table-name": "ticket_activity",
            "transaction-id": 42
        });
        if let Some(c) = commit {
            meta["commit-timestamp"] = c.into();
            meta["transaction-record-id"] = record_id.into();
        }
        serde_json::json!({"data": {"ticket_id": 7, "purchased_by": 3}, "metadata": meta}).to_string()
    }

    #[test]
    fn dms_operations_map_to_upserts_and_deletes() {
        let c = decode(Format::Dms, dms_record("insert", None, 0).as_bytes(), &at(5)).unwrap();
        assert_eq!((c[0].op, c[0].source_table.as_deref()), (ChangeOp::Upsert, Some("sales.ticket_activity")));
        assert_eq!(c[0].data["ticket_id"], 7);
        let d = decode(Format::Dms, dms_record("delete", None, 0).as_bytes(), &at(6)).unwrap();
        assert_eq!(d[0].op, ChangeOp::Delete);
        let control = r#"{"data":{},"metadata":{"record-type":"control","operation":"create-table","table-name":"t"}}"#;
        assert!(decode(Format::Dms, control.as_bytes(), &at(7)).unwrap().is_empty());
        assert!(decode(Format::Dms, br#"{"data":{}}"#, &at(8)).unwrap_err().contains("metadata"));
        let bad_op = dms_record("truncate", None, 0);
        assert!(decode(Format::Dms, bad_op.as_bytes(), &at(9)).unwrap_err().contains("truncate"));
    }

    #[test]
    fn dms_versions_order_loads_then_commits_then_positions() {
        let v = |op, commit, id, seq| {
            decode(Format::Dms, dms_record(op, commit, id).as_bytes(), &at(seq)).unwrap()[0].version.clone()
        };
        // A full-load row read late is still older than any change.
        assert!(v("load", None, 0, 900) < v("update", Some("2020-01-01T00:00:00Z"), 0, 1));
        // Commit order wins over arrival order (a retried, reordered batch).
        assert!(v("update", Some("2024-01-01T00:00:01.5Z"), 0, 1) > v("update", Some("2024-01-01T00:00:01.25Z"), 0, 2));
        // Within one commit, the record id orders the changes.
        assert!(v("update", Some("2024-01-01T00:00:01Z"), 3, 1) > v("update", Some("2024-01-01T00:00:01Z"), 2, 2));
        assert!(v("update", None, 0, 10) > v("update", None, 0, 9));
    }

    #[test]
    fn json_and_bad_payloads() {
        let c = decode(Format::Json, br#"{"a":1}"#, &at(1)).unwrap();
        assert_eq!((c[0].op, c[0].version.clone()), (ChangeOp::Upsert, at(1).version()));
        assert!(decode(Format::Json, b"\xff", &at(1)).unwrap_err().starts_with("payload is not utf-8"));
        assert!(decode(Format::Json, b"[1]", &at(1)).unwrap_err().starts_with("payload is not a json object"));
        assert!(decode(Format::Json, b"{\"a\":", &at(1)).unwrap_err().starts_with("payload is not json"));
    }
}
