//! Warehouse rows: typed values, target table schemas, batches.

use crate::sequence::Version;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A column's SQL type (portable across PostgreSQL, Redshift and SQLite).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SqlType {
    Boolean,
    BigInt,
    Double,
    Text,
    /// Milliseconds since the Unix epoch, stored as the engine's timestamp type.
    Timestamp,
}

/// The timestamps a row can hold, in milliseconds: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999Z, what every warehouse's TIMESTAMP holds and a literal can spell.
pub const TIMESTAMP_RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

/// The longest text a column holds, in bytes: the widest VARCHAR of Redshift, which counts
/// bytes (PostgreSQL's `VARCHAR(65535)` counts characters, so bytes are the bound for both).
pub const MAX_TEXT_BYTES: usize = 65_535;

/// The most a row may take written as SQL literals (quotes and doubled `'` and `\` counted):
/// the Redshift Data API sends each SQL string whole, up to 100 KB, so a row past this could
/// never be staged there. Leaves room for the stage INSERT's head.
pub const MAX_ROW_SQL_BYTES: usize = 90_000;

/// Why a row cannot be sent as SQL to every warehouse, if it cannot (`MAX_ROW_SQL_BYTES`).
pub fn unsendable_row(values: &[Value]) -> Option<String> {
    // Quotes included; the longest non-text literal is `TIMESTAMP '0001-01-01 00:00:00.000'`.
    let unescaped = |v: &Value| match v {
        Value::Text(s) => s.len() + 2,
        _ => 48,
    };
    // Counted exactly only when it could matter: doubled characters at most double a text.
    if values.iter().map(unescaped).sum::<usize>() * 2 <= MAX_ROW_SQL_BYTES {
        return None;
    }
    let doubled = |v: &Value| match v {
        Value::Text(s) => s.bytes().filter(|b| matches!(b, b'\'' | b'\\')).count(),
        _ => 0,
    };
    let exact: usize = values.iter().map(|v| unescaped(v) + doubled(v)).sum();
    (exact > MAX_ROW_SQL_BYTES).then(|| {
        format!("the row takes {exact} bytes as SQL, more than the {MAX_ROW_SQL_BYTES} one statement may hold")
    })
}

/// The longest version a row carries, in bytes (the version column is a `VARCHAR(256)`).
pub const MAX_VERSION_BYTES: usize = 256;

/// Why a text cannot be stored in any warehouse, if it cannot: longer than `MAX_TEXT_BYTES`,
/// or holding a NUL character (PostgreSQL and Redshift refuse it in text).
pub fn unstorable_text(text: &str) -> Option<String> {
    if text.len() > MAX_TEXT_BYTES {
        Some(format!("text of {} bytes is longer than a column's {MAX_TEXT_BYTES}", text.len()))
    } else if text.as_bytes().contains(&0) {
        Some("text holds a NUL character (U+0000), which warehouses do not store".to_owned())
    } else {
        None
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: SqlType,
}

impl Column {
    pub fn new(name: impl Into<String>, ty: SqlType) -> Self {
        Self { name: name.into(), ty }
    }
}

/// A target table: its columns, which of them form the key, and the version column that fences
/// older changes out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns`.
    pub key: Vec<usize>,
    /// Name of the version column the sink adds to the table (text, ordered bytewise).
    pub version_column: String,
}

impl TableSchema {
    pub fn key_of<'r>(&self, row: &'r Row) -> Vec<&'r Value> {
        self.key.iter().map(|&i| &row.values[i]).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RowOp {
    Upsert,
    Delete,
}

/// One change to a target row. `values` follow the schema's columns; a delete needs only its key.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub op: RowOp,
    pub version: Version,
    pub values: Vec<Value>,
}

/// Rows for one table, committed in one transaction.
#[derive(Clone, Debug)]
pub struct Batch {
    pub table: Arc<TableSchema>,
    pub rows: Vec<Row>,
}

impl Batch {
    /// Keeps, for each key, only the row with the highest version (the later one on a tie), in
    /// first-seen key order: what the stage table holds after its dedupe step.
    pub fn latest_per_key(&self) -> Vec<&Row> {
        let mut out: Vec<&Row> = Vec::new();
        let mut index: std::collections::HashMap<Vec<String>, usize> = std::collections::HashMap::new();
        for row in &self.rows {
            let key: Vec<String> = self.table.key_of(row).iter().map(|v| format!("{v:?}")).collect();
            match index.get(&key) {
                Some(&i) if out[i].version > row.version => {}
                Some(&i) => out[i] = row,
                None => {
                    index.insert(key, out.len());
                    out.push(row);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each key keeps its highest version, the later row on a tie, in first-seen key order;
    /// the key is all key columns together.
    #[test]
    fn latest_per_key_keeps_the_highest_version_and_the_later_on_a_tie() {
        let table = Arc::new(TableSchema {
            name: "t".into(),
            columns: vec![
                Column::new("a", SqlType::Text),
                Column::new("b", SqlType::BigInt),
                Column::new("v", SqlType::Text),
            ],
            key: vec![0, 1],
            version_column: "_version".into(),
        });
        let row = |a: &str, b: i64, version: &str, tag: &str| Row {
            op: RowOp::Upsert,
            version: Version::from_text(version),
            values: vec![Value::Text(a.into()), Value::Int(b), Value::Text(tag.into())],
        };
        let batch = Batch {
            table,
            rows: vec![
                row("x", 1, "2", "x1 first"),
                row("x", 2, "1", "x2 only"),
                row("x", 1, "1", "x1 older"),
                row("y", 1, "5", "y1 first"),
                row("x", 1, "2", "x1 tie, later"),
                row("y", 1, "6", "y1 newer"),
                row("z", 1, "3", "z1 newest"),
                row("z", 1, "1", "z1 older, last"),
            ],
        };
        let kept: Vec<&Value> = batch.latest_per_key().iter().map(|r| &r.values[2]).collect();
        let want = ["x1 tie, later", "x2 only", "y1 newer", "z1 newest"].map(|t| Value::Text(t.into()));
        assert_eq!(kept, want.iter().collect::<Vec<_>>());
    }

    /// The timestamp range is years 1 to 9999, to the millisecond.
    #[test]
    fn the_timestamp_range_is_years_1_to_9999() {
        let text = |ms: i64| {
            let mut out = String::new();
            crate::civil::push_datetime_ms(ms, &mut out);
            out
        };
        assert_eq!(text(*TIMESTAMP_RANGE.start()), "0001-01-01 00:00:00.000");
        assert_eq!(text(*TIMESTAMP_RANGE.end()), "9999-12-31 23:59:59.999");
    }

    /// Quotes and backslashes are doubled in a literal: a text of 45,000 quotes takes 90,002
    /// bytes as SQL and is refused, though its own length is half the limit.
    #[test]
    fn doubled_characters_count_toward_the_row_limit() {
        let quotes = Value::Text("'".repeat(45_000));
        assert_eq!(
            unsendable_row(&[quotes]).as_deref(),
            Some("the row takes 90002 bytes as SQL, more than the 90000 one statement may hold")
        );
        let plain = Value::Text("a".repeat(45_000));
        assert_eq!(unsendable_row(&[plain]), None);
    }

    /// Characters of 2, 3 and 4 bytes in UTF-8: the limits below are checked with each.
    const WIDE: [char; 3] = ['é', '€', '𝄞'];

    /// Text of exactly `bytes` bytes: ASCII `a`s, then as many `c` as fit, so the last
    /// character is a wide one ending on the last byte.
    fn text_of(bytes: usize, c: char) -> String {
        let n = bytes / c.len_utf8();
        let mut text = "a".repeat(bytes - n * c.len_utf8());
        text.extend(std::iter::repeat_n(c, n));
        assert_eq!(text.len(), bytes);
        text
    }

    /// A column holds 65,535 bytes whatever the characters: that much multi-byte text is
    /// stored; one byte more is refused, whether an ASCII byte added or a wide character
    /// crossing the limit; so is text of fewer characters than the limit but more bytes.
    #[test]
    fn the_text_limit_counts_bytes_not_characters() {
        for c in WIDE {
            let at = text_of(MAX_TEXT_BYTES, c);
            assert_eq!(unstorable_text(&at), None, "{c}: exactly {MAX_TEXT_BYTES} bytes");
            let over = format!("{at}a");
            assert_eq!(
                unstorable_text(&over).as_deref(),
                Some("text of 65536 bytes is longer than a column's 65535"),
                "{c}: one byte over"
            );
            let crossing = format!("{}{c}", "a".repeat(MAX_TEXT_BYTES - 1));
            assert!(crossing.chars().count() == MAX_TEXT_BYTES && crossing.len() > MAX_TEXT_BYTES);
            assert!(unstorable_text(&crossing).is_some(), "{c}: the last character crosses the limit");
            let few: String = std::iter::repeat_n(c, MAX_TEXT_BYTES / c.len_utf8() + 1).collect();
            assert!(few.chars().count() < MAX_TEXT_BYTES && few.len() > MAX_TEXT_BYTES);
            let why = unstorable_text(&few).unwrap_or_else(|| panic!("{c}: {} bytes stored", few.len()));
            assert!(why.contains(&format!("text of {} bytes", few.len())), "{why}");
        }
    }

    /// A row goes through one Data API statement while its SQL literals take at most 90,000
    /// bytes: quotes and doubled `'` and `\` counted, and multi-byte text by its bytes, so a row
    /// of fewer characters than the limit can still be too long.
    #[test]
    fn the_row_sql_limit_counts_bytes_not_characters() {
        for c in WIDE {
            // `'\` then the text: its bytes, 2 doubled, 2 quotes; the second text: bytes, 2 quotes.
            let half = (MAX_ROW_SQL_BYTES - 8) / 2;
            let row = |extra: usize| {
                vec![Value::Text(format!("'\\{}", text_of(half, c))), Value::Text(text_of(half + extra, c))]
            };
            let at = row(0);
            assert!(at.iter().all(|v| matches!(v, Value::Text(t) if unstorable_text(t).is_none())));
            assert_eq!(unsendable_row(&at), None, "{c}: exactly {MAX_ROW_SQL_BYTES} bytes");
            let over = row(1);
            let chars: usize = over.iter().map(|v| if let Value::Text(t) = v { t.chars().count() } else { 0 }).sum();
            assert!(chars < MAX_ROW_SQL_BYTES, "{chars}");
            assert_eq!(
                unsendable_row(&over).as_deref(),
                Some("the row takes 90001 bytes as SQL, more than the 90000 one statement may hold"),
                "{c}: one byte over"
            );
        }
    }
}
