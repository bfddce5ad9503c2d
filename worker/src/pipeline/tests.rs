//! The pipeline end to end: records in, rows (or dead letters) out.
use super::*;
use crate::record_mapper::TableId;
use base64::Engine;
use proto::{Position, RowOp, SequenceNumber, Value, MAX_TEXT_BYTES};
use std::collections::BTreeMap;

const T0: Target = Target::Table(TableId::new(0));
const DEAD: Target = Target::DeadLetters;

/// Maps one record, as a consumer maps a run of one; its rows end where the mapper says.
fn map_one(p: &Pipeline, shard: &ShardId, record: &UserRecord, give_up: bool, out: &mut Vec<(Target, Row)>) {
    let mut mapped = MappedRows::default();
    let (n, _) = p.map(shard, std::slice::from_ref(record), give_up, &mut mapped);
    let ends = if n == 1 { vec![mapped.rows.len()] } else { vec![] };
    assert_eq!(mapped.ends, ends, "one end per mapped record, after its rows");
    out.extend(mapped.rows);
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
    map_one(&p, &shard, &record(r#"{"id": 1, "buyer": 3}"#), false, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.values[1], Value::Text("+*-***-***-****".into()));
    assert_eq!(
        out[0].1.values[2],
        Value::Text("c8b9adc27ca0fc812e2cca09aab792e34c9d8d2fce3408abb47cb633bbb5e77f".into())
    );
    out.clear();
    map_one(&p, &shard, &record(r#"{"id": 2, "buyer": 99}"#), false, &mut out);
    assert_eq!(out[0].0, DEAD);
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
    map_one(&p, &ShardId::numbered(0), &record(r#"{"meta": {"id": 5, "station": "s1"}}"#), false, &mut out);
    assert_eq!(
        out[0].1.values,
        vec![Value::Int(5), Value::Float(34.1), Value::Text("dc".into()), Value::Null, Value::Text("Pasadena".into())]
    );
    out.clear();
    map_one(&p, &ShardId::numbered(0), &record(r#"{"meta": {"id": 6, "station": "s2"}}"#), false, &mut out);
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
        map_one(&p, &ShardId::numbered(0), &record(data), false, &mut out);
        assert!(out.iter().all(|(t, _)| *t == DEAD), "only dead letters: {out:?}");
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
    map_one(&p, &ShardId::numbered(0), &record(r#"{"id": "ok"}"#), false, &mut out);
    assert_eq!(out[0].0, T0);
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
            map_one(&p, &ShardId::numbered(0), &record(&data), false, &mut out);
            let bytes = note.len();
            if lands {
                assert_eq!(out.len(), 1, "{c}: {bytes} bytes");
                assert_eq!((out[0].0, &out[0].1.values[1]), (T0, &Value::Text(note)), "{c}: {bytes} bytes whole");
            } else {
                let reason = format!("column \"note\": text of {bytes} bytes is longer than a column's 65535");
                assert_eq!(out[0].0, DEAD, "{c}: {bytes} bytes should be a dead letter");
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
        map_one(&p, &ShardId::numbered(0), &record(&data), false, &mut out);
        out
    };
    assert_eq!(change("binlog.000001:4")[0].0, T0, "a binlog position lands");
    // What the version holds besides a position of one character that is no hex digit.
    let around = change("x")[0].1.version.as_str().len() - 1;
    for c in WIDE {
        let at = wide_text(proto::MAX_VERSION_BYTES - around, c, 'x');
        let out = change(&at);
        assert_eq!(out[0].0, T0, "{c}: {out:?}");
        assert_eq!(out[0].1.version.as_str().len(), proto::MAX_VERSION_BYTES, "{c}: {:?}", out[0].1.version);
        let few = c.to_string().repeat((proto::MAX_VERSION_BYTES - around) / c.len_utf8() + 1);
        for (position, bytes) in [(format!("{at}x"), 257), (few.clone(), around + few.len())] {
            let out = change(&position);
            assert_eq!(out[0].0, DEAD, "{c}: a version of {bytes} bytes should be a dead letter");
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
    assert_eq!(dead_letter::DEAD_LETTER_PART_BYTES, 48_000, "the README promises parts of 48,000 bytes");
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
        map_one(&p, &ShardId::numbered(0), &record(&payload), false, &mut out);
        let bytes = payload.as_bytes();
        let parts = bytes.len().div_ceil(48_000);
        assert_eq!((parts, out.len()), (3, parts), "{c}: {} bytes in parts of 48,000", bytes.len());
        let mut joined = String::new();
        for (i, (table, row)) in out.iter().enumerate() {
            assert_eq!(*table, DEAD);
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
        map_one(&p, &ShardId::numbered(0), &record(&format!(r#"{{"id": 1, "at": {at}}}"#)), false, &mut out);
        assert_eq!(out[0].0 == DEAD, dead, "{at}: {:?}", out[0].1.values);
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
    map_one(&p, &ShardId::numbered(0), &record(&update.to_string()), false, &mut out);
    let rows: Vec<(RowOp, Value)> = out.iter().map(|(_, r)| (r.op, r.values[0].clone())).collect();
    assert_eq!(rows, vec![(RowOp::Delete, Value::Int(7)), (RowOp::Upsert, Value::Int(8))]);
    assert_eq!(out[0].1.version, out[1].1.version);
    // Another table's changes are not this table's.
    let other = update.to_string().replace("ticket_activity", "customer");
    out.clear();
    map_one(&p, &ShardId::numbered(0), &record(&other), false, &mut out);
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
        map_one(&p, &ShardId::numbered(0), &record(&payload), false, &mut out);
        out.into_iter().map(|(table, row)| (table, row.op, row.values)).collect::<Vec<_>>()
    };
    let kept = vec![(T0, RowOp::Upsert, vec![Value::Int(5)])];
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
        map_one(&p, &ShardId::numbered(0), &record, false, &mut out);
        out.into_iter().map(|(table, row)| (table, row.op, row.values)).collect::<Vec<_>>()
    };
    assert_eq!(
        map(dms("insert", "dms_sample", "ticket_activity", 5)),
        vec![(
            T0,
            RowOp::Upsert,
            vec![Value::Int(5), Value::Text("dms_sample.ticket_activity".into()), Value::Timestamp(1_717_171_717_123)]
        )]
    );
    assert_eq!(
        map(dms("delete", "dms_sample", "ticket_activity", 5)),
        vec![(T0, RowOp::Delete, vec![Value::Int(5), Value::Null, Value::Null])]
    );
}

/// A DMS record as AWS documents it for a Kinesis target with the task's defaults: no
/// transaction details, so `metadata.timestamp` is the only time it carries.
fn dms_default(operation: &str, timestamp: &str, data: serde_json::Value, before: Option<serde_json::Value>) -> String {
    let mut record = serde_json::json!({
        "data": data,
        "metadata": {
            "timestamp": timestamp,
            "record-type": "data",
            "operation": operation,
            "partition-key-type": "primary-key",
            "schema-name": "dms_sample",
            "table-name": "ticket_activity"
        }
    });
    if let Some(before) = before {
        record["before-image"] = before;
    }
    record.to_string()
}

fn ticket_pipeline(extra: &str) -> Pipeline {
    unjoined(&format!(
        r#"
        format = "dms"
        {extra}
        [[table]]
        name = "activity"
        key = ["ticket_id"]
        version = "source"
        column = [
            {{ name = "ticket_id", from = "ticket_id", type = "bigint" }},
            {{ name = "price", from = "price", type = "bigint" }},
            {{ name = "op", from = "@operation", type = "text" }},
        ]
        "#
    ))
}

/// Records (payload, shard, sequence number) mapped in the order given and committed one by one
/// to a version-fenced warehouse: what the table holds after, key → price.
async fn land(p: &Pipeline, records: &[(String, u64, u128)]) -> BTreeMap<i64, Value> {
    let warehouse = proto::memory::MemoryWarehouse::new();
    let table = p.tables()[0].clone();
    proto::Warehouse::ensure_table(&warehouse, &table).await.unwrap();
    for (payload, shard, seq) in records {
        let record = UserRecord { position: Position::new(SequenceNumber::from_u128(*seq), 0), ..record(payload) };
        let mut out = Vec::new();
        map_one(p, &ShardId::numbered(*shard), &record, false, &mut out);
        assert!(out.iter().all(|(t, _)| *t == T0), "{out:?}");
        let rows = out.into_iter().map(|(_, r)| r).collect();
        proto::Warehouse::commit(&warehouse, &proto::Batch { table: table.clone(), rows }).await.unwrap();
    }
    warehouse
        .rows("activity")
        .into_values()
        .map(|r| match (&r.values[0], &r.values[1]) {
            (Value::Int(k), price) => (*k, price.clone()),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Without transaction details (DMS's default) and with primary-key partitioning, a key's
/// changes land on different shards, whose sequence numbers do not compare: the update that
/// moved ticket 701 to 700 (on a shard whose numbers are lower) still deletes 701, because the
/// records' `metadata.timestamp` orders them, whichever shard is read first.
#[tokio::test]
async fn without_transaction_details_a_key_moved_across_shards_deletes_the_old_key() {
    let p = ticket_pipeline("");
    let insert =
        dms_default("insert", "2024-03-01T10:00:00.000001Z", serde_json::json!({"ticket_id": 701, "price": 5}), None);
    let moved = dms_default(
        "update",
        "2024-03-01T10:00:00.000002Z",
        serde_json::json!({"ticket_id": 700, "price": 5}),
        Some(serde_json::json!({"ticket_id": 701, "price": 5})),
    );
    for order in
        [[(insert.clone(), 1, 900), (moved.clone(), 0, 100)], [(moved.clone(), 0, 100), (insert.clone(), 1, 900)]]
    {
        let held = land(&p, &order).await;
        assert_eq!(held.keys().copied().collect::<Vec<_>>(), vec![700], "{held:?}");
    }
}

/// DMS's defaults through a task's life: the full load, changes, then the table reloaded (DMS's
/// "reload table": new `load` records after the changes) and a change after the reload. The
/// reload replaces what the changes wrote; the change after it wins; whatever order the
/// records are read in (another shard, a retry).
#[tokio::test]
async fn a_table_reloaded_after_cdc_replaces_what_came_before_it() {
    let p = ticket_pipeline("");
    let row = |op: &str, at: &str, id: i64, price: i64| {
        dms_default(op, at, serde_json::json!({"ticket_id": id, "price": price}), None)
    };
    let records = vec![
        (row("load", "2024-03-01T10:00:00.100Z", 1, 1), 0, 10),
        (row("load", "2024-03-01T10:00:00.200Z", 2, 1), 1, 10),
        (row("update", "2024-03-01T10:05:00Z", 1, 2), 0, 11),
        // The reload reads what the source holds: ticket 1 at 9 (a change the stream never
        // carried), ticket 2 as it was, ticket 3 (sold meanwhile, its insert lost too).
        (row("load", "2024-03-01T11:00:00.100Z", 1, 9), 0, 12),
        (row("load", "2024-03-01T11:00:00.150Z", 2, 1), 1, 11),
        (row("load", "2024-03-01T11:00:00.200Z", 3, 3), 1, 12),
        (row("update", "2024-03-01T11:00:30Z", 3, 4), 1, 13),
    ];
    let want = BTreeMap::from([(1, Value::Int(9)), (2, Value::Int(1)), (3, Value::Int(4))]);
    assert_eq!(land(&p, &records).await, want);
    let mut reversed = records.clone();
    reversed.reverse();
    assert_eq!(land(&p, &reversed).await, want, "read in the opposite order");
}

/// `IncludeNullAndEmpty` off (DMS's default) leaves a NULL column out of `data`; on, it is
/// written as `null` (and an empty string as `""`). Either way the column is NULL in the
/// warehouse, and an update that leaves it out replaces the whole row (DMS sends full rows).
#[tokio::test]
async fn a_column_dms_leaves_out_is_null() {
    let p = ticket_pipeline("");
    let held = land(
        &p,
        &[
            (
                dms_default("insert", "2024-03-01T10:00:01Z", serde_json::json!({"ticket_id": 1, "price": 5}), None),
                0,
                1,
            ),
            (dms_default("update", "2024-03-01T10:00:02Z", serde_json::json!({"ticket_id": 1}), None), 0, 2),
            (
                dms_default("insert", "2024-03-01T10:00:03Z", serde_json::json!({"ticket_id": 2, "price": null}), None),
                0,
                3,
            ),
        ],
    )
    .await;
    assert_eq!(held, BTreeMap::from([(1, Value::Null), (2, Value::Null)]));
}

/// DMS delivers at least once: a producer's retry of an older update, read after a newer one,
/// does not overwrite it (the retry carries its original `metadata.timestamp`).
#[tokio::test]
async fn without_transaction_details_a_retried_older_update_does_not_win() {
    let p = ticket_pipeline("");
    let change =
        |op: &str, at: &str, price: i64| dms_default(op, at, serde_json::json!({"ticket_id": 1, "price": price}), None);
    let price_2 = change("update", "2024-03-01T10:00:02Z", 2);
    let held = land(
        &p,
        &[
            (change("insert", "2024-03-01T10:00:01Z", 1), 0, 10),
            (price_2.clone(), 0, 11),
            (change("update", "2024-03-01T10:00:03Z", 3), 0, 12),
            (price_2, 0, 13),
        ],
    )
    .await;
    assert_eq!(held, BTreeMap::from([(1, Value::Int(3))]));
}

/// The before-image is read under the task's `BeforeImageSettings.FieldName`; `@operation` is
/// DMS's own operation; a pretty-printed record reads like a compact one.
#[tokio::test]
async fn the_before_image_field_is_configurable_and_operation_is_dms_own() {
    let p = ticket_pipeline(r#"before_image_field = "old""#);
    let moved = serde_json::json!({
        "data": {"ticket_id": 8, "price": 4},
        "old": {"ticket_id": 7, "price": 4},
        "metadata": {"timestamp": "2024-03-01T10:00:02Z", "record-type": "data", "operation": "update",
                     "partition-key-type": "primary-key", "schema-name": "dms_sample", "table-name": "ticket_activity"}
    });
    let pretty = serde_json::to_string_pretty(&moved).unwrap();
    let mut out = Vec::new();
    map_one(&p, &ShardId::numbered(0), &record(&pretty), false, &mut out);
    let rows: Vec<(RowOp, Value, Value)> =
        out.iter().map(|(_, r)| (r.op, r.values[0].clone(), r.values[2].clone())).collect();
    assert_eq!(
        rows,
        vec![(RowOp::Delete, Value::Int(7), Value::Null), (RowOp::Upsert, Value::Int(8), Value::Text("update".into()))]
    );
    for operation in ["load", "insert"] {
        let mut out = Vec::new();
        let data = serde_json::json!({"ticket_id": 1, "price": 1});
        map_one(
            &p,
            &ShardId::numbered(0),
            &record(&dms_default(operation, "2024-03-01T10:00:02Z", data, None)),
            false,
            &mut out,
        );
        assert_eq!(out[0].1.values[2], Value::Text(operation.into()));
    }
    // Under the default name, the same record's "old" object is just another field.
    let mut out = Vec::new();
    map_one(&ticket_pipeline(""), &ShardId::numbered(0), &record(&pretty), false, &mut out);
    assert_eq!(out.len(), 1, "no before-image, no delete of the old key");
}
