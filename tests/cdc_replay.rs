//! Property: any interleaving and replay of a CDC batch sequence leaves the warehouse exactly as
//! applying it once, in order — through the real pipeline (DMS decoding, versions from commit
//! order, key changes by before-image) into a real PostgreSQL — and that is what a plain model
//! of the changes says the source table holds.

use adapters::postgres::PostgresWarehouse;
use adapters::postgres_server::postgres;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proto::{Batch, Position, SequenceNumber, ShardId, Warehouse};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use worker::kpl::UserRecord;
use worker::{Pipeline, PipelineConfig, RecordMapper};

const PIPELINE: &str = r#"
format = "dms"
[[table]]
name = "activity"
key = ["ticket_id"]
column = [
    { name = "ticket_id", from = "ticket_id", type = "bigint" },
    { name = "purchased_by", from = "purchased_by", type = "bigint" },
    { name = "note", from = "note", type = "text" },
]
"#;

#[derive(Clone, Debug)]
enum Op {
    Insert,
    Update,
    Delete,
    /// An update that changes the key to this ticket (DMS sends the before-image).
    Move(u64),
}

/// What the source table holds after `changes`, in commit order: ticket → (buyer, note).
fn model(changes: &[(Op, u64, u64)]) -> Vec<Vec<Option<String>>> {
    let mut table = std::collections::BTreeMap::new();
    for (i, (op, ticket, buyer)) in changes.iter().enumerate() {
        let row = (*buyer, note(*buyer, commit(i)));
        match op {
            Op::Insert | Op::Update => {
                table.insert(*ticket, row);
            }
            Op::Delete => {
                table.remove(ticket);
            }
            Op::Move(to) => {
                table.remove(ticket);
                table.insert(*to, row);
            }
        }
    }
    table.into_iter().map(|(t, (b, n))| vec![Some(t.to_string()), Some(b.to_string()), Some(n)]).collect()
}

fn commit(i: usize) -> u64 {
    1 + i as u64 * 7
}

fn note(buyer: u64, commit: u64) -> String {
    format!("by {buyer} at {commit}")
}

/// A DMS record of one change, committed at `commit` (milliseconds).
fn dms(op: &Op, ticket: u64, buyer: u64, commit: u64) -> Vec<u8> {
    let operation = match op {
        Op::Insert => "insert",
        Op::Update | Op::Move(_) => "update",
        Op::Delete => "delete",
    };
    let ts = format!("2024-01-01T00:{:02}:{:02}.{:03}Z", commit / 60_000 % 60, commit / 1000 % 60, commit % 1000);
    let key = if let Op::Move(to) = op { *to } else { ticket };
    let mut record = serde_json::json!({
        "data": {"ticket_id": key, "purchased_by": buyer, "note": note(buyer, commit)},
        "metadata": {"record-type": "data", "operation": operation, "schema-name": "s", "table-name": "ticket_activity",
                     "commit-timestamp": ts, "transaction-record-id": 1}
    });
    if let Op::Move(_) = op {
        record["before-image"] = serde_json::json!({"ticket_id": ticket, "purchased_by": buyer});
    }
    record.to_string().into_bytes()
}

/// Changes in commit order, mapped to rows, cut into batches.
fn batches(changes: &[(Op, u64, u64)], cut: &[usize], pipeline: &Pipeline) -> Vec<Batch> {
    let table = pipeline.tables()[0].clone();
    let shard = ShardId::numbered(0);
    let mut rows = Vec::new();
    for (i, (op, ticket, buyer)) in changes.iter().enumerate() {
        let record = UserRecord {
            position: Position::new(SequenceNumber::from_u128(1000 + i as u128), 0),
            partition_key: ticket.to_string(),
            data: dms(op, *ticket, *buyer, commit(i)).into(),
            arrival_ms: 0,
            error: None,
        };
        let mut out = Vec::new();
        pipeline.map(&shard, &record, false, &mut out);
        assert!(out.iter().all(|(t, _)| *t == 0), "no dead letters: {out:?}");
        rows.extend(out.into_iter().map(|(_, r)| r));
    }
    let mut out = Vec::new();
    let mut rest = rows.as_slice();
    for &n in cut {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at(n.clamp(1, rest.len()));
        out.push(Batch { table: table.clone(), rows: a.to_vec() });
        rest = b;
    }
    if !rest.is_empty() {
        out.push(Batch { table: table.clone(), rows: rest.to_vec() });
    }
    out
}

static N: AtomicU32 = AtomicU32::new(0);

#[test]
fn any_interleaving_or_replay_equals_applying_once_in_order() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let w = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    let pipeline = Pipeline::without_references(&PipelineConfig::from_toml(PIPELINE).unwrap()).unwrap();
    let op = prop_oneof![Just(Op::Insert), Just(Op::Update), Just(Op::Delete), (0..5u64).prop_map(Op::Move)];
    let strategy = (
        proptest::collection::vec((op, 0..5u64, 0..9u64), 1..40),
        proptest::collection::vec(1..6usize, 1..12),
        // Replays are cut into batches anew.
        proptest::collection::vec(1..6usize, 1..12),
        // The delivered order: indexes into the batches, any order, repeats allowed.
        proptest::collection::vec(any::<prop::sample::Index>(), 1..30),
    );
    let mut runner = TestRunner::new(Config { cases: 40, ..Config::default() });
    runner
        .run(&strategy, |(changes, cut, recut, delivery)| {
            let bs = batches(&changes, &cut, &pipeline);
            let replays = batches(&changes, &recut, &pipeline);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let state = |name: String, order: Vec<&Batch>| {
                rt.block_on(async {
                    let mut table = (*bs[0].table).clone();
                    table.name = name;
                    let table = Arc::new(table);
                    w.ensure_table(&table).await.unwrap();
                    for b in order {
                        w.commit(&Batch { table: table.clone(), rows: b.rows.clone() }).await.unwrap();
                    }
                    let sql =
                        format!("SELECT ticket_id, purchased_by, note, _version FROM \"{}\" ORDER BY 1", table.name);
                    w.query_text(&sql).await.unwrap()
                })
            };
            let once = state(format!("once_{n}"), bs.iter().collect());
            let held: Vec<Vec<Option<String>>> = once.iter().map(|r| r[..3].to_vec()).collect();
            prop_assert_eq!(held, model(&changes), "applied once, in order, it holds what the source holds");
            // Every batch delivered at least once (at-least-once), in a scrambled order with
            // replays cut differently.
            let mut order: Vec<&Batch> = delivery
                .iter()
                .enumerate()
                .map(|(k, i)| if k % 2 == 0 { &bs[i.index(bs.len())] } else { &replays[i.index(replays.len())] })
                .collect();
            order.extend(bs.iter().rev());
            let scrambled = state(format!("scrambled_{n}"), order);
            prop_assert_eq!(scrambled, once);
            Ok(())
        })
        .unwrap();
}
