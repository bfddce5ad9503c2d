//! Dead letters: the record that cannot be mapped lands, with its reason, in the dead-letter
//! table every node writes, keyed by its position so a replay lands it once. Its payload is
//! kept whole in base64, split over several rows when one text column cannot hold it. The
//! node counts them (`dead_letter_rows_total`) once committed.

use crate::record_mapper::{Target, UserRecord};
use base64::Engine;
use proto::{Column, Row, RowOp, ShardId, SqlType, TableSchema, Value, MAX_TEXT_BYTES};

/// A record's dead-letter rows, appended to `out`: one per `DEAD_LETTER_PART_BYTES` of its
/// payload (at least one), each with the reason, all of them storable whatever the record holds.
pub fn rows(shard: &ShardId, record: &UserRecord, reason: &str, out: &mut Vec<(Target, Row)>) {
    let version = record.position.version();
    let parts: Vec<&[u8]> =
        if record.data.is_empty() { vec![&[]] } else { record.data.chunks(DEAD_LETTER_PART_BYTES).collect() };
    let (reason, partition_key) = (storable(reason, MAX_REASON_BYTES), storable(&record.partition_key, MAX_TEXT_BYTES));
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
        out.push((Target::DeadLetters, Row { op: RowOp::Upsert, version: version.clone(), values }));
    }
}

/// The name of the dead-letter table.
pub const TABLE: &str = "tributary_dead_letters";

/// Where a record came from: the key of the dead-letter table and of raw landing tables
/// (shard, sequence number, sub-sequence), so a replayed record lands once.
fn record_origin_columns() -> Vec<Column> {
    vec![
        Column::new("shard_id", SqlType::Text),
        Column::new("sequence_number", SqlType::Text),
        Column::new("sub_sequence", SqlType::BigInt),
        Column::new("partition_key", SqlType::Text),
        Column::new("approximate_arrival_timestamp", SqlType::Timestamp),
    ]
}

/// The longest reason a dead letter keeps, in bytes (a reason quotes the record's key, which
/// can be anything).
pub const MAX_REASON_BYTES: usize = 4_096;

/// `text` as any warehouse stores it: NUL characters replaced by U+FFFD, cut to at most `max`
/// bytes on a character boundary (ending in `…` when cut). For the text of dead letters, which
/// must land whatever the record held.
pub fn storable(text: &str, max: usize) -> String {
    let mut out = text.replace('\0', "\u{fffd}");
    if out.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// Raw payload bytes per dead-letter row. Their base64 (64,000 characters) fits a text column,
/// and a multiple of 3 bytes encodes without padding, so the parts' `payload_base64` joined in
/// `payload_part` order are the base64 of the whole payload.
pub const DEAD_LETTER_PART_BYTES: usize = 48_000;

/// The dead-letter table: each record that could not be mapped, keyed by its position, with
/// the reason and the payload in base64. A payload too big for one text column is split over
/// `payload_parts` rows (`payload_part` 0, 1, …), so nothing of it is lost.
pub fn schema() -> TableSchema {
    let mut columns = record_origin_columns();
    columns.push(Column::new("reason", SqlType::Text));
    columns.push(Column::new("payload_base64", SqlType::Text));
    columns.push(Column::new("payload_part", SqlType::BigInt));
    columns.push(Column::new("payload_parts", SqlType::BigInt));
    TableSchema { name: TABLE.to_owned(), columns, key: vec![0, 1, 2, 7], version_column: "_version".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn storable_replaces_nul_and_cuts_on_a_char_boundary() {
        assert_eq!(storable("a\0b", 10), "a\u{fffd}b");
        assert_eq!(storable("abcdef", 5), "ab…");
        // 'é' is two bytes: a cut never splits it.
        assert_eq!(storable("éééé", 6), "é…");
        assert_eq!(storable("short", 5), "short");
    }

    /// A dead letter's reason and partition key are cut by bytes: multi-byte text of exactly
    /// the limit is kept whole; one byte more, or fewer characters than the limit but more
    /// bytes, is cut on a character boundary to at most the limit, ending in `…`.
    #[test]
    fn storable_cuts_multibyte_text_at_its_byte_limits() {
        for max in [MAX_REASON_BYTES, proto::MAX_TEXT_BYTES] {
            for c in ['é', '€', '𝄞'] {
                let n = max / c.len_utf8();
                let at = format!("{}{}", "a".repeat(max - n * c.len_utf8()), c.to_string().repeat(n));
                assert_eq!(at.len(), max);
                assert_eq!(storable(&at, max), at, "{c}: exactly {max} bytes is kept whole");
                let few = c.to_string().repeat(n + 1);
                assert!(few.chars().count() < max);
                for long in [format!("{at}a"), few] {
                    let out = storable(&long, max);
                    let kept = out.strip_suffix('…').unwrap_or_else(|| panic!("{c}: {} bytes not cut", long.len()));
                    assert!(out.len() <= max && long.starts_with(kept), "{c}: {} bytes", out.len());
                    // Cut at the last boundary that leaves room for the `…`.
                    assert!(kept.len() + '…'.len_utf8() + c.len_utf8() > max, "{c}: cut at {}", kept.len());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn storable_text_is_always_storable(text in "\\PC{0,40}|[\\x00a-zé]{0,40}", max in 3usize..30) {
            let out = storable(&text, max);
            prop_assert!(out.len() <= max);
            prop_assert!(!out.contains('\0'));
            if !text.contains('\0') && text.len() <= max {
                prop_assert_eq!(out, text);
            }
        }
    }
}
