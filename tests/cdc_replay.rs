//! Property: however a CDC stream's records arrive — in an order unlike the commit order, cut
//! into batches, delivered out of order and replayed — the warehouse ends up holding what the
//! source table holds, through the real pipeline (DMS decoding, versions from commit order, key
//! changes by before-image) into a real PostgreSQL.
//!
//! The source runs transactions of several changes. DMS describes them as it does for a MySQL
//! source (whole-second commit times shared by several transactions, binlog positions across
//! file rollovers, rows of one log event sharing a position), for a PostgreSQL source
//! (microsecond commit times, hex LSNs, a transaction committed later often holding earlier
//! LSNs), or without transaction details (then only `metadata.timestamp`, here the commit
//! time, and the stream's order order them, and the records arrive in commit order). The model replays the transactions in commit order and knows nothing
//! of versions.

use adapters::postgres::PostgresWarehouse;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proto::{Batch, Position, Row, SequenceNumber, ShardId, Warehouse};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use testkit::postgres_server::postgres;
use worker::UserRecord;
use worker::{Pipeline, PipelineConfig, RecordMapper, TableId, Target};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Whole-second commit times; binlog file and offset.
    MySql,
    /// Microsecond commit times; hex LSNs written before the commit.
    Postgres,
    /// No transaction details: the records arrive in commit order.
    NoDetails,
}

#[derive(Clone, Debug)]
enum Op {
    Insert,
    Update,
    Delete,
    /// An update that changes the key to this ticket (DMS sends the before-image).
    Move(u64),
}

/// One source transaction and where the source's clock and log stood when it ran.
#[derive(Clone, Debug)]
struct Transaction {
    /// (operation, ticket, buyer), in the order the transaction made them.
    changes: Vec<(Op, u64, u64)>,
    /// Per change: whether it starts a new binlog rows event (else it shares the previous
    /// change's event and position); the first change always does.
    new_event: Vec<bool>,
    /// MySQL: whole seconds since the previous commit, often 0.
    seconds: u64,
    /// PostgreSQL, and without transaction details: microseconds since the previous commit.
    micros: u64,
    /// Log written since the previous transaction: binlog bytes; on PostgreSQL, WAL records
    /// modulo 64.
    log_gap: u64,
    /// MySQL: the transaction opens a new binlog file.
    rollover: bool,
    /// PostgreSQL: WAL records between its last change and its commit (other transactions'
    /// records and commits: a long one wrote its changes before earlier commits).
    lag: u64,
}

fn note(transaction: usize, change: usize, buyer: u64) -> String {
    format!("by {buyer} in tx {transaction} change {change}")
}

/// What the source table holds after `transactions`, applied in commit order, each one's
/// changes in order: ticket → (buyer, note).
fn model(transactions: &[Transaction]) -> Vec<Vec<Option<String>>> {
    let mut table = BTreeMap::new();
    for (t, tx) in transactions.iter().enumerate() {
        for (c, (op, ticket, buyer)) in tx.changes.iter().enumerate() {
            let row = (*buyer, note(t, c, *buyer));
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
    }
    table.into_iter().map(|(t, (b, n))| vec![Some(t.to_string()), Some(b.to_string()), Some(n)]).collect()
}

/// `2024-01-01T00:00:50Z` plus `micros`, in whole seconds (MySQL) or with microseconds.
fn timestamp(micros: u64, whole_seconds: bool) -> String {
    let secs = 50 + micros / 1_000_000;
    let whole = format!("2024-01-01T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if whole_seconds {
        format!("{whole}Z")
    } else {
        format!("{whole}.{:06}Z", micros % 1_000_000)
    }
}

/// The transaction details DMS adds to one change's metadata (IncludeTransactionDetails).
struct Details {
    commit: String,
    position: String,
    transaction: u64,
    record: u64,
    previous: (u64, u64),
}

/// One record DMS wrote.
struct Sent {
    /// The transaction's place in commit order.
    transaction: usize,
    /// The tickets it changes (two for a key change).
    tickets: Vec<u64>,
    /// Its place in the source's log: (binlog file, offset), or (0, LSN).
    log: (u32, u64),
    data: Vec<u8>,
}

/// The records DMS writes for `transactions`, in commit order.
fn history(source: Source, transactions: &[Transaction]) -> Vec<Sent> {
    let mut out = Vec::new();
    let (mut clock, mut file, mut offset) = (0u64, 9u32, 99_000u64);
    // WAL record numbers, starting just below LSN 1/0; a change's LSN is its record's number
    // times 256 plus its transaction's index, so that no two changes share one.
    let mut wal = 0xFF_FF00u64;
    let mut previous = (0, 0);
    for (t, tx) in transactions.iter().enumerate() {
        let n = tx.changes.len() as u64;
        let transaction = 7000 + t as u64;
        let mut positions = Vec::new();
        let commit = match source {
            Source::MySql => {
                clock += tx.seconds * 1_000_000;
                if tx.rollover {
                    (file, offset) = (file + 1, 4);
                } else {
                    offset += tx.log_gap;
                }
                let (begin, mut end) = (offset, offset);
                for (c, &new_event) in tx.new_event.iter().enumerate() {
                    if c == 0 || new_event {
                        offset = end;
                        end = offset + 60 + 40 * c as u64;
                    }
                    let binlog = format!("mysql-bin-changelog.{file:06}");
                    positions.push(((file, offset), format!("{binlog}:{offset}:-1:{end}:1:{binlog}:{begin}")));
                }
                offset = end;
                timestamp(clock, true)
            }
            Source::Postgres => {
                clock += tx.micros;
                wal += tx.log_gap % 0x40 + n + 1;
                let first = wal - n - tx.lag;
                for c in 0..n {
                    let lsn = ((first + c) << 8) | t as u64;
                    positions.push(((0, lsn), format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)));
                }
                timestamp(clock, false)
            }
            Source::NoDetails => {
                clock += tx.micros;
                positions.resize(tx.changes.len(), ((0, 0), String::new()));
                timestamp(clock, false)
            }
        };
        for (c, (op, ticket, buyer)) in tx.changes.iter().enumerate() {
            let record = c as u64 + 1;
            let (log, position) = positions[c].clone();
            let details = (source != Source::NoDetails).then(|| Details {
                commit: commit.clone(),
                position,
                transaction,
                record,
                previous,
            });
            let tickets = match op {
                Op::Move(to) => vec![*ticket, *to],
                _ => vec![*ticket],
            };
            let data = dms(op, *ticket, *buyer, &note(t, c, *buyer), &commit, details);
            out.push(Sent { transaction: t, tickets, log, data });
            previous = (transaction, record);
        }
    }
    out
}

/// A DMS record of one change; `timestamp` is when DMS read it.
fn dms(op: &Op, ticket: u64, buyer: u64, note: &str, timestamp: &str, details: Option<Details>) -> Vec<u8> {
    let operation = match op {
        Op::Insert => "insert",
        Op::Update | Op::Move(_) => "update",
        Op::Delete => "delete",
    };
    let key = if let Op::Move(to) = op { *to } else { ticket };
    let mut record = serde_json::json!({
        "data": {"ticket_id": key, "purchased_by": buyer, "note": note},
        "metadata": {"timestamp": timestamp, "record-type": "data", "operation": operation,
                     "partition-key-type": "primary-key", "schema-name": "s", "table-name": "ticket_activity"}
    });
    if let Some(d) = details {
        let meta = &mut record["metadata"];
        meta["transaction-id"] = d.transaction.into();
        meta["commit-timestamp"] = d.commit.into();
        meta["stream-position"] = d.position.into();
        meta["transaction-record-id"] = d.record.into();
        meta["prev-transaction-id"] = d.previous.0.into();
        meta["prev-transaction-record-id"] = d.previous.1.into();
    }
    if let Op::Move(_) = op {
        record["before-image"] = serde_json::json!({"ticket_id": ticket, "purchased_by": buyer});
    }
    record.to_string().into_bytes()
}

/// The order the records arrive in: commit order sorted by `keys` (stable), except without
/// transaction details, where the stream's order is the commit order.
fn arrival(source: Source, records: usize, keys: &[u16]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..records).collect();
    if source != Source::NoDetails {
        order.sort_by_key(|&i| keys[i % keys.len()]);
    }
    order
}

/// The records, read from one shard in `order` (each at the next sequence number), mapped to rows.
fn rows(records: &[Sent], order: &[usize], pipeline: &Pipeline) -> Vec<Row> {
    let shard = ShardId::numbered(0);
    let mut rows = Vec::new();
    for (n, &i) in order.iter().enumerate() {
        let record = UserRecord {
            position: Position::new(SequenceNumber::from_u128(1000 + n as u128), 0),
            partition_key: records[i].tickets.last().expect("one ticket at least").to_string(),
            data: records[i].data.clone().into(),
            arrival_ms: 0,
            error: None,
        };
        let mut out = worker::MappedRows::default();
        pipeline.map(&shard, std::slice::from_ref(&record), false, &mut out);
        assert!(out.rows.iter().all(|(t, _)| *t == Target::Table(TableId::new(0))), "no dead letters: {out:?}");
        rows.extend(out.rows.into_iter().map(|(_, r)| r));
    }
    rows
}

/// `rows` cut into batches of the sizes in `cut` (the rest in a last one).
fn batches(rows: &[Row], cut: &[usize], pipeline: &Pipeline) -> Vec<Batch> {
    let table = pipeline.tables()[0].clone();
    let mut out = Vec::new();
    let mut rest = rows;
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

fn transaction() -> impl Strategy<Value = Transaction> {
    let op = prop_oneof![Just(Op::Insert), Just(Op::Update), Just(Op::Delete), (0..5u64).prop_map(Op::Move)];
    (
        proptest::collection::vec((op, 0..5u64, 0..9u64, any::<bool>()), 1..5),
        prop_oneof![3 => Just(0u64), 1 => Just(1u64)],
        1..3_000_000u64,
        prop_oneof![1..200u64, 200..70_000u64],
        proptest::bool::weighted(0.3),
        0..0x200u64,
    )
        .prop_map(|(changes, seconds, micros, log_gap, rollover, lag)| Transaction {
            new_event: changes.iter().map(|c| c.3).collect(),
            changes: changes.into_iter().map(|(op, ticket, buyer, _)| (op, ticket, buyer)).collect(),
            seconds,
            micros,
            log_gap,
            rollover,
            lag,
        })
}

static N: AtomicU32 = AtomicU32::new(0);

/// How often the generated cases hold what this test is about, counted to show they do.
#[derive(Default)]
struct Seen {
    arrival_unlike_commit: AtomicUsize,
    mysql_commit_second_shared: AtomicUsize,
    mysql_rollover_within_a_second: AtomicUsize,
    postgres_later_commit_earlier_lsn: AtomicUsize,
}

#[test]
fn any_arrival_order_or_replay_leaves_what_the_source_committed() {
    let pg = postgres().expect("a postgresql for the tests");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let w = Arc::new(rt.block_on(PostgresWarehouse::connect(&pg.url)).unwrap());
    let pipeline = Pipeline::without_references(&PipelineConfig::from_toml(PIPELINE).unwrap()).unwrap();
    let strategy = (
        prop_oneof![Just(Source::MySql), Just(Source::Postgres), Just(Source::NoDetails)],
        proptest::collection::vec(transaction(), 1..12),
        // Sort keys of the records' arrival order.
        proptest::collection::vec(any::<u16>(), 1..64),
        proptest::collection::vec(1..6usize, 1..12),
        // Replays are cut into batches anew.
        proptest::collection::vec(1..6usize, 1..12),
        // The delivered order: indexes into the batches, any order, repeats allowed.
        proptest::collection::vec(any::<prop::sample::Index>(), 1..30),
    );
    let seen = Seen::default();
    let mut runner = TestRunner::new(Config { cases: 60, ..Config::default() });
    runner
        .run(&strategy, |(source, transactions, keys, cut, recut, delivery)| {
            let records = history(source, &transactions);
            let order = arrival(source, records.len(), &keys);
            count(&seen, source, &transactions, &records, &order);
            let rows = rows(&records, &order, &pipeline);
            let (bs, replays) = (batches(&rows, &cut, &pipeline), batches(&rows, &recut, &pipeline));
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
            prop_assert_eq!(held, model(&transactions), "applied once as they arrived, it holds what the source holds");
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
    let counts = [
        seen.arrival_unlike_commit.load(Ordering::Relaxed),
        seen.mysql_commit_second_shared.load(Ordering::Relaxed),
        seen.mysql_rollover_within_a_second.load(Ordering::Relaxed),
        seen.postgres_later_commit_earlier_lsn.load(Ordering::Relaxed),
    ];
    assert!(counts.iter().all(|&c| c > 0), "the cases hold what they are meant to: {counts:?}");
}

/// Counts, from the generated history itself, the cases where getting the order wrong could
/// show: records arriving out of commit order; two MySQL transactions changing one ticket in
/// one commit second (the binlog position orders them), across a binlog rollover; a PostgreSQL
/// transaction changing a ticket at an earlier LSN than a transaction committed before it.
fn count(seen: &Seen, source: Source, transactions: &[Transaction], records: &[Sent], order: &[usize]) {
    if order.windows(2).any(|w| w[0] > w[1]) {
        seen.arrival_unlike_commit.fetch_add(1, Ordering::Relaxed);
    }
    let same_ticket = || {
        records.iter().flat_map(move |a| {
            records
                .iter()
                .filter(move |b| b.transaction > a.transaction && a.tickets.iter().any(|t| b.tickets.contains(t)))
                .map(move |b| (a, b))
        })
    };
    let same_second =
        |a: &Sent, b: &Sent| transactions[a.transaction + 1..=b.transaction].iter().all(|tx| tx.seconds == 0);
    let (shared, rollover, earlier_lsn) = match source {
        Source::MySql => (
            same_ticket().any(|(a, b)| same_second(a, b)),
            same_ticket().any(|(a, b)| same_second(a, b) && a.log.0 < b.log.0),
            false,
        ),
        Source::Postgres => (false, false, same_ticket().any(|(a, b)| b.log < a.log)),
        Source::NoDetails => (false, false, false),
    };
    for (happened, counter) in [
        (shared, &seen.mysql_commit_second_shared),
        (rollover, &seen.mysql_rollover_within_a_second),
        (earlier_lsn, &seen.postgres_later_commit_earlier_lsn),
    ] {
        if happened {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}
