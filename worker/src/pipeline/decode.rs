//! Record formats: a user record's bytes → the changes it carries.
//!
//! - `json`: one JSON object, an upsert.
//! - `dms`: the AWS DMS envelope (`data`, `metadata`, and the before-image under the task's
//!   `BeforeImageSettings.FieldName`, `before-image` unless configured). Data records with
//!   operation load / insert / update are upserts, delete is a delete; control records carry no
//!   rows. The version orders changes of a key: when DMS includes transaction details,
//!   (commit-timestamp, stream-position compared as a log position, transaction-record-id);
//!   without them (DMS's default), the record's `metadata.timestamp` then its position in its
//!   Kinesis shard, so changes of one key that landed on different shards still order by time
//!   and a producer's retry of an older change does not win over a newer one. A full-load row
//!   ranks as of when DMS read it (`metadata.timestamp`) less a minute (`LOAD_MARGIN_MS`): a
//!   table reloaded after CDC replaces what the changes wrote, and the changes DMS cached during
//!   a load still win over it. An update that changed the primary key (seen in the
//!   before-image) also deletes the old key; a before-image that is not an object (`null`) is no
//!   before-image.

use super::config::Format;
use super::doc::{Doc, FieldSlots, Slots};
use proto::{Position, Version};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    Upsert,
    Delete,
}

/// One change to one source row, borrowing the record's bytes.
#[derive(Debug)]
pub struct Change<'a> {
    pub op: ChangeOp,
    /// What the source says happened: DMS's `load`, `insert`, `update` or `delete`; `upsert`
    /// for plain JSON.
    pub operation: &'static str,
    /// `schema.table` for DMS records; `None` for plain JSON.
    pub source_table: Option<String>,
    /// The row's wanted fields, by slot.
    pub data: Slots<'a>,
    /// The row before an update (DMS before-image), when present.
    pub before: Option<Slots<'a>>,
    /// The source's order for this change.
    pub version: Version,
}

/// Parses a user record into the `wanted` fields of its row. `Ok(None)` for records that carry
/// no row (DMS control records).
pub fn decode<'a>(
    format: Format,
    before_image_field: &str,
    text: &'a str,
    position: &Position,
    wanted: &FieldSlots,
) -> Result<Option<Change<'a>>, String> {
    match format {
        Format::Json => Ok(Some(Change {
            op: ChangeOp::Upsert,
            operation: "upsert",
            source_table: None,
            data: wanted.parse(text)?,
            before: None,
            version: position.version(),
        })),
        Format::Dms => dms(&Doc::parse(text)?, before_image_field, position, wanted),
    }
}

/// `2023-05-25T12:34:56.1234Z` → `2023-05-25T12:34:56.123400000`: fixed width, so text order is
/// time order.
/// How much earlier than DMS read it a full-load row ranks. Changes are ordered by their
/// commit time on the source's clock (with transaction details) or by DMS's (without); a load row
/// by DMS's. The margin covers the two clocks' skew and the commit time's precision (whole
/// seconds on MySQL): a change committed just after the row was read always outranks it. A change
/// within the margin before the read outranks the row too, harmlessly: the row already holds it,
/// and the latest such change is the newest state.
pub const LOAD_MARGIN_MS: i64 = 60_000;

/// `ms` as a normalized timestamp (`YYYY-MM-DDTHH:MM:SS.fffffffff`, as `normalize_timestamp`
/// writes DMS's).
fn push_version_time(ms: i64, out: &mut String) {
    let mut civil = String::with_capacity(23);
    proto::civil::push_datetime_ms(ms, &mut civil);
    out.push_str(&civil.replacen(' ', "T", 1));
    out.push_str("000000");
}

fn normalize_timestamp(ts: &str) -> String {
    let ts = ts.trim_end_matches('Z');
    let (whole, fraction) = ts.split_once('.').unwrap_or((ts, ""));
    format!("{whole}.{fraction:0<9}")
}

/// A DMS `stream-position` (the source log's position: a MySQL binlog file and offset, a
/// PostgreSQL or SQL Server LSN in hex, an Oracle SCN, …) in a form whose text order is the
/// log's order: each run of hex digits (decimal ones included) is written lowercase as its
/// length (2 digits) then its digits without leading zeros, so `000009:99` < `000009:100` <
/// `000010:5` and `0/19` < `0/1A`. Ends with a space, below any character it holds, so a
/// position that is a prefix of another sorts first and the fields after it never compare
/// against it.
fn ordered_stream_position(position: &str, out: &mut String) {
    let mut rest = position;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_hexdigit() {
            let end = rest.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(rest.len());
            let digits = rest[..end].trim_start_matches('0');
            let digits = if digits.is_empty() { "0" } else { digits };
            let len = digits.len().min(99);
            out.push(char::from(b'0' + (len / 10) as u8));
            out.push(char::from(b'0' + (len % 10) as u8));
            out.extend(digits[..len].chars().map(|c| c.to_ascii_lowercase()));
            rest = &rest[end..];
        } else {
            out.push(if c <= ' ' { '!' } else { c });
            rest = &rest[c.len_utf8()..];
        }
    }
    out.push(' ');
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(rename = "record-type", borrow)]
    record_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(rename = "schema-name", borrow)]
    schema_name: Option<Cow<'a, str>>,
    #[serde(rename = "table-name", borrow)]
    table_name: Option<Cow<'a, str>>,
    #[serde(rename = "commit-timestamp", borrow)]
    commit_timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "stream-position", borrow)]
    stream_position: Option<Cow<'a, str>>,
    #[serde(rename = "transaction-record-id")]
    transaction_record_id: Option<u64>,
    /// When DMS made the record (every record has it; the only time without transaction details).
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
}

fn object<'a>(raw: &'a RawValue, what: &str, wanted: &FieldSlots) -> Result<Slots<'a>, String> {
    wanted.parse(raw.get()).map_err(|_| format!("dms {what} is not an object"))
}

fn dms<'a>(
    doc: &Doc<'a>,
    before_image_field: &str,
    position: &Position,
    wanted: &FieldSlots,
) -> Result<Option<Change<'a>>, String> {
    let meta = doc.get("metadata").ok_or("dms record has no metadata")?;
    let meta: Metadata<'_> = serde_json::from_str(meta.get()).map_err(|e| format!("dms metadata: {e}"))?;
    match meta.record_type.as_deref() {
        Some("data") => {}
        Some("control") => return Ok(None),
        other => return Err(format!("dms record-type {other:?} is neither data nor control")),
    }
    let operation = meta.operation.as_deref().ok_or("dms data record has no operation")?;
    let (op, operation) = match operation {
        "load" => (ChangeOp::Upsert, "load"),
        "insert" => (ChangeOp::Upsert, "insert"),
        "update" => (ChangeOp::Upsert, "update"),
        "delete" => (ChangeOp::Delete, "delete"),
        other => return Err(format!("dms operation {other:?} is not load, insert, update or delete")),
    };
    let source_table = match (meta.schema_name.as_deref(), meta.table_name.as_deref()) {
        (Some(s), Some(t)) if !s.is_empty() => Some(format!("{s}.{t}")),
        (_, Some(t)) => Some(t.to_owned()),
        _ => return Err("dms record has no table-name".into()),
    };
    let data = object(doc.get("data").ok_or("dms data record has no data object")?, "data", wanted)?;
    let before = match doc.get(before_image_field) {
        Some(raw) if raw.get().starts_with('{') => Some(object(raw, before_image_field, wanted)?),
        _ => None,
    };
    let here = position.version();
    let version = if operation == "load" {
        match meta.timestamp.as_deref().and_then(super::typing::parse_timestamp) {
            // A full-load row ranks as of when DMS read it, less `LOAD_MARGIN_MS`: it replaces
            // the changes before it (a table reloaded after CDC) and loses to the changes after
            // it (those DMS cached while the table loaded, sent after it).
            Some(read_ms) => {
                let mut version = String::from("1");
                push_version_time(read_ms - LOAD_MARGIN_MS, &mut version);
                version.push_str(here.as_str());
                version
            }
            // No time to place it by (not DMS's shape): below every change, as a first load.
            None => format!("0{}", here.as_str()),
        }
    } else if let Some(commit) = meta.commit_timestamp.as_deref() {
        // The change order DMS gives: commit time, then the log position (which orders two
        // transactions committed within the timestamp's precision, a whole second on MySQL),
        // then the record's place in its transaction.
        let record_id = meta.transaction_record_id.unwrap_or(0);
        let mut version = format!("1{}", normalize_timestamp(commit));
        ordered_stream_position(meta.stream_position.as_deref().unwrap_or(""), &mut version);
        let _ = write!(version, "{record_id:020}");
        // With a log position the change is identified already (a replay carries the same
        // metadata); the record's own position is the last tie-break only without one, and
        // leaving it out keeps long binlog positions within the version column's 256 bytes.
        if meta.stream_position.is_none() {
            version.push_str(here.as_str());
        }
        version
    } else if let Some(made) = meta.timestamp.as_deref() {
        // Without transaction details: when DMS made the record, then its place in its shard
        // (which orders records of one key on one shard made within one timestamp).
        format!("1{}{}", normalize_timestamp(made), here.as_str())
    } else {
        format!("1{}", here.as_str())
    };
    Ok(Some(Change { op, operation, source_table, data, before, version: Version::from_text(version) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::SequenceNumber;

    fn at(seq: u128) -> Position {
        Position::new(SequenceNumber::from_u128(seq), 0)
    }

    fn dms_record(op: &str, commit: Option<&str>, record_id: u64) -> String {
        dms_record_at(op, commit, None, record_id)
    }

    fn dms_record_at(op: &str, commit: Option<&str>, stream_position: Option<&str>, record_id: u64) -> String {
        let mut meta = serde_json::json!({
            "timestamp": "2024-01-01T00:00:00.000000Z", "record-type": "data", "operation": op,
            "partition-key-type": "primary-key", "schema-name": "sales", "table-name": "ticket_activity",
            "transaction-id": 42
        });
        if let Some(c) = commit {
            meta["commit-timestamp"] = c.into();
            meta["transaction-record-id"] = record_id.into();
        }
        if let Some(p) = stream_position {
            meta["stream-position"] = p.into();
        }
        serde_json::json!({"data": {"ticket_id": 7, "purchased_by": 3}, "metadata": meta}).to_string()
    }

    #[test]
    fn dms_operations_map_to_upserts_and_deletes() {
        let mut wanted = FieldSlots::default();
        let ticket = wanted.slot("ticket_id");
        let text = dms_record("insert", None, 0);
        let c = decode(Format::Dms, "before-image", &text, &at(5), &wanted).unwrap().unwrap();
        assert_eq!((c.op, c.source_table.as_deref()), (ChangeOp::Upsert, Some("sales.ticket_activity")));
        assert_eq!(c.data[ticket].unwrap().get(), "7");
        let text = dms_record("delete", None, 0);
        assert_eq!(decode(Format::Dms, "before-image", &text, &at(6), &wanted).unwrap().unwrap().op, ChangeOp::Delete);
        let control = r#"{"data":{},"metadata":{"record-type":"control","operation":"create-table","table-name":"t"}}"#;
        assert!(decode(Format::Dms, "before-image", control, &at(7), &wanted).unwrap().is_none());
        assert!(decode(Format::Dms, "before-image", r#"{"data":{}}"#, &at(8), &wanted)
            .unwrap_err()
            .contains("metadata"));
        let bad_op = dms_record("truncate", None, 0);
        assert!(decode(Format::Dms, "before-image", &bad_op, &at(9), &wanted).unwrap_err().contains("truncate"));
        // The source table is `schema.table`, or the table alone when the schema is empty or
        // absent; a record without a table name is refused.
        let named =
            |meta: &str| format!(r#"{{"data":{{}},"metadata":{{"record-type":"data","operation":"insert"{meta}}}}}"#);
        for meta in [r#","schema-name":"","table-name":"t""#, r#","table-name":"t""#] {
            let text = named(meta);
            let c = decode(Format::Dms, "before-image", &text, &at(10), &wanted).unwrap().unwrap();
            assert_eq!(c.source_table.as_deref(), Some("t"), "{meta}");
        }
        // A before-image that is not an object is none; one that is an object is read.
        let with_before = |before: &str| {
            format!(
                r#"{{"data":{{"ticket_id":8}},"before-image":{before},"metadata":{{"record-type":"data","operation":"update","table-name":"t"}}}}"#
            )
        };
        let text = with_before("null");
        assert!(decode(Format::Dms, "before-image", &text, &at(12), &wanted).unwrap().unwrap().before.is_none());
        let text = with_before(r#"{"ticket_id":7}"#);
        let c = decode(Format::Dms, "before-image", &text, &at(13), &wanted).unwrap().unwrap();
        assert_eq!(c.before.expect("a before-image")[ticket].unwrap().get(), "7");
        let nameless = named(r#","schema-name":"s""#);
        assert!(decode(Format::Dms, "before-image", &nameless, &at(11), &wanted).unwrap_err().contains("table-name"));
    }

    #[test]
    fn dms_versions_order_loads_then_commits_then_positions() {
        let wanted = FieldSlots::default();
        let v = |op, commit, id, seq| {
            let text = dms_record(op, commit, id);
            decode(Format::Dms, "before-image", &text, &at(seq), &wanted).unwrap().unwrap().version
        };

        // Commit order wins over arrival order (a retried, reordered batch).
        assert!(v("update", Some("2024-01-01T00:00:01.5Z"), 0, 1) > v("update", Some("2024-01-01T00:00:01.25Z"), 0, 2));
        // Within one commit, the record id orders the changes.
        assert!(v("update", Some("2024-01-01T00:00:01Z"), 3, 1) > v("update", Some("2024-01-01T00:00:01Z"), 2, 2));
        assert!(v("update", None, 0, 10) > v("update", None, 0, 9));
        // Two transactions committed within one second (MySQL's precision): the log position
        // orders them, numerically, whatever their record ids and arrival order.
        let at_position = |position, id, seq| {
            let text = dms_record_at("update", Some("2024-01-01T00:00:01Z"), Some(position), id);
            decode(Format::Dms, "before-image", &text, &at(seq), &wanted).unwrap().unwrap().version
        };
        let log = [
            "mysql-bin-changelog.000009:99:-1:100:7:mysql-bin-changelog.000009:80",
            "mysql-bin-changelog.000009:1000:-1:1001:8:mysql-bin-changelog.000009:990",
            "mysql-bin-changelog.000010:5:-1:6:9:mysql-bin-changelog.000010:4",
        ];
        let versions: Vec<Version> =
            log.iter().enumerate().map(|(i, p)| at_position(p, 5 - i as u64, 100 - i as u128)).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        // PostgreSQL LSNs and SQL Server LSNs are hex.
        assert!(at_position("0/19", 1, 2) < at_position("0/1A", 1, 1));
        assert!(at_position("0/19F", 1, 2) < at_position("0/1a2", 1, 1));
        assert!(at_position("00000025:00000d98:0005", 1, 2) < at_position("00000025:00000DA0:0001", 1, 1));
        // A position that is a prefix of another sorts first; the record id breaks a tie.
        assert!(at_position("lsn:12", 9, 2) < at_position("lsn:12:1", 0, 1));
        assert!(at_position("lsn:12", 1, 2) < at_position("lsn:12", 2, 1));
    }

    /// DMS's reload of a table after CDC: a load row read later than a change (by more than the
    /// margin) replaces it; a change committed after the row was read wins over it even when its
    /// commit time (whole seconds on MySQL, another clock) reads a little earlier; a load row
    /// without a time ranks below every change.
    #[test]
    fn a_full_load_ranks_as_of_when_dms_read_the_row() {
        let wanted = FieldSlots::default();
        let version = |op: &str, made: Option<&str>, commit: Option<&str>, seq| {
            let mut meta = serde_json::json!({"record-type": "data", "operation": op, "table-name": "t"});
            if let Some(m) = made {
                meta["timestamp"] = m.into();
            }
            if let Some(c) = commit {
                meta["commit-timestamp"] = c.into();
                meta["transaction-record-id"] = 1.into();
            }
            let text = serde_json::json!({"data": {"id": 1}, "metadata": meta}).to_string();
            decode(Format::Dms, "before-image", &text, &at(seq), &wanted).unwrap().unwrap().version
        };
        let reload = version("load", Some("2024-03-01T12:00:00.250000Z"), None, 1);
        // Changes before the reload, with and without transaction details: replaced.
        assert!(reload > version("update", Some("2024-03-01T11:58:00Z"), Some("2024-03-01T11:58:00Z"), 9));
        assert!(reload > version("update", Some("2024-03-01T11:58:59.9Z"), None, 9));
        // Changes after it (cached during the load, sent after it): they win.
        assert!(reload < version("update", Some("2024-03-01T12:00:05Z"), Some("2024-03-01T12:00:00Z"), 0));
        assert!(reload < version("update", Some("2024-03-01T12:00:00.3Z"), None, 0));
        // Committed just after the read, its commit time rounded down and its clock behind.
        assert!(reload < version("update", Some("2024-03-01T12:00:02Z"), Some("2024-03-01T11:59:30Z"), 0));
        // Two reads of one row by two loads: the later wins.
        assert!(reload < version("load", Some("2024-03-01T13:00:00Z"), None, 0));
        // No time to rank it by: a first load, below any change.
        assert!(version("load", None, None, 900) < version("update", None, Some("2020-01-01T00:00:00Z"), 1));
    }

    /// The version of an update committed at `commit`, at `position` in the source's log,
    /// record `id` of its transaction, read from the stream at sequence number `seq`.
    fn change_version(commit: &str, position: &str, id: u64, seq: u128) -> Version {
        let text = dms_record_at("update", Some(commit), Some(position), id);
        decode(Format::Dms, "before-image", &text, &at(seq), &FieldSlots::default()).unwrap().unwrap().version
    }

    /// Checks that `history`, (commit-timestamp, stream-position, transaction-record-id) in the
    /// order the source applied them, gets increasing versions although it is read in reverse.
    fn assert_versions_follow(history: &[(&str, &str, u64)]) {
        let versions: Vec<Version> = history
            .iter()
            .enumerate()
            .map(|(i, (commit, position, id))| change_version(commit, position, *id, 1000 - i as u128))
            .collect();
        for (i, pair) in versions.windows(2).enumerate() {
            assert!(pair[0] < pair[1], "{:?} should be older than {:?}: {pair:?}", history[i], history[i + 1]);
        }
    }

    /// Within one commit timestamp (a whole second on MySQL) the log position orders changes, as
    /// numbers across a binlog rollover and between offsets of different lengths, and the record
    /// id orders the rows of one log event; hex LSNs compare as numbers, not as text.
    #[test]
    fn one_commit_time_orders_by_stream_position_then_record_id() {
        let second = "2024-01-01T00:00:05Z";
        assert_versions_follow(&[
            (second, "mysql-bin-changelog.000009:99:-1:180:1:mysql-bin-changelog.000009:99", 1),
            (second, "mysql-bin-changelog.000009:99:-1:180:1:mysql-bin-changelog.000009:99", 2),
            (second, "mysql-bin-changelog.000009:980:-1:1020:1:mysql-bin-changelog.000009:980", 1),
            (second, "mysql-bin-changelog.000009:1020:-1:1200:1:mysql-bin-changelog.000009:980", 2),
            (second, "mysql-bin-changelog.000009:99999:-1:100100:1:mysql-bin-changelog.000009:99999", 1),
            // The next binlog file starts again at a small offset.
            (second, "mysql-bin-changelog.000010:4:-1:120:1:mysql-bin-changelog.000010:4", 1),
            (second, "mysql-bin-changelog.000010:120:-1:300:1:mysql-bin-changelog.000010:4", 2),
        ]);
        let micros = "2024-01-01T00:00:05.123456Z";
        assert_versions_follow(&[
            (micros, "0/9F", 3),
            (micros, "0/16B3748", 1),
            (micros, "0/FFFFFFF0", 2),
            (micros, "1/A0", 1),
            (micros, "1/A0", 2),
            (micros, "1/1A00", 1),
        ]);
    }

    /// Long numbers order by their value whatever their length: Oracle SCNs and other positions
    /// past nine digits, up to runs of 99 significant digits (longer runs compare by their first
    /// 99), with leading zeros ignored.
    #[test]
    fn long_positions_order_by_value() {
        let second = "2024-01-01T00:00:05Z";
        let run = |digits: usize| format!("scn:{}", "9".repeat(digits));
        let positions: Vec<String> = [
            "scn:000000001".to_owned(),
            run(9),
            "scn:1000000000".to_owned(),
            run(10),
            run(11),
            run(20),
            format!("scn:1{}", "0".repeat(20)),
            run(21),
            run(59),
            run(60),
            run(98),
            run(99),
        ]
        .to_vec();
        let ordered: Vec<(&str, &str, u64)> = positions.iter().map(|p| (second, p.as_str(), 1)).collect();
        assert_versions_follow(&ordered);
    }

    /// Commit time ranks before the log position: a transaction that committed later holds the
    /// newer change even where its log position is earlier (a PostgreSQL transaction that wrote
    /// its rows before an older one committed; a MySQL binlog numbered anew after a failover).
    #[test]
    fn a_later_commit_wins_over_an_earlier_stream_position() {
        assert_versions_follow(&[
            ("2024-01-01T00:00:01.000001Z", "1/A0", 1),
            ("2024-01-01T00:00:01.000002Z", "0/16B3748", 1),
            ("2024-01-01T00:00:01.5Z", "0/16B3740", 7),
            ("2024-01-01T00:00:02Z", "0/9F", 1),
        ]);
        assert_versions_follow(&[
            ("2024-01-01T00:00:05Z", "mysql-bin-changelog.000010:4:-1:120:1:mysql-bin-changelog.000010:4", 2),
            ("2024-01-01T00:00:06Z", "mysql-bin-changelog.000009:500:-1:620:1:mysql-bin-changelog.000009:500", 1),
        ]);
    }

    proptest::proptest! {
        #[test]
        fn stream_positions_order_like_their_numbers(a in proptest::collection::vec(0u64..100_000, 1..4), b in proptest::collection::vec(0u64..100_000, 1..4), pad in 0usize..9) {
            // Decimal, lowercase or uppercase hex: the same order as the numbers.
            let text = |v: &[u64]| match pad % 3 {
                0 => v.iter().map(|n| format!("{n:0pad$}")).collect::<Vec<_>>().join(":"),
                1 => v.iter().map(|n| format!("{n:0pad$x}")).collect::<Vec<_>>().join("/"),
                _ => v.iter().map(|n| format!("{n:0pad$X}")).collect::<Vec<_>>().join("/"),
            };
            let (mut x, mut y) = (String::new(), String::new());
            ordered_stream_position(&text(&a), &mut x);
            ordered_stream_position(&text(&b), &mut y);
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }
    }

    #[test]
    fn json_and_bad_payloads() {
        let wanted = FieldSlots::default();
        let c = decode(Format::Json, "before-image", r#"{"a":1}"#, &at(1), &wanted).unwrap().unwrap();
        assert_eq!((c.op, c.version), (ChangeOp::Upsert, at(1).version()));
        assert!(decode(Format::Json, "before-image", "[1]", &at(1), &wanted)
            .unwrap_err()
            .starts_with("payload is not a json object"));
        assert!(decode(Format::Json, "before-image", "{\"a\":", &at(1), &wanted)
            .unwrap_err()
            .starts_with("payload is not json"));
    }
}
