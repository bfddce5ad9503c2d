//! The sink actor, one per target table: gathers rows from every consumer of the node into
//! batches (by rows, bytes and latency), commits each batch in one warehouse transaction, then
//! acks the chunks it carried back to their consumers. While the warehouse is unavailable the
//! sink keeps retrying the same batch (back-off up to `commit_retry.max_backoff`), so an outage
//! holds reads back instead of cycling consumers through restarts. A batch the warehouse
//! refuses is committed again in halves down to the rows it refuses (`batch_bisect.rs`); each
//! of those goes, with its record and the warehouse's reason, to the dead-letter table, and the
//! chunks are acked: the shard moves on. A batch still failing after
//! `commit_retry.max_attempts` is nacked and its consumers restart from their last checkpoint.

use crate::batch_bisect::{bisect, Bisected};
use crate::metrics::NodeMetrics;
use crate::pipeline::dead_letter;
use crate::record_mapper::{Target, UserRecord};
use proto::{Batch, CommitStats, RetryPolicy, Row, ShardId, TableSchema, Value, Warehouse, WarehouseError};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use std::sync::Arc;
use tracing::{info, warn};

use crate::settings::SinkSettings;

/// What a sink tells the writer of a chunk once its rows are committed, or cannot be.
#[derive(Clone, Debug, PartialEq)]
pub enum ChunkCommit {
    Committed(u64),
    Failed(u64, String),
}

/// Who to tell when a chunk's rows committed: any actor that takes `ChunkCommit`s.
#[derive(Clone)]
pub struct Ack {
    pub to: DerivedActorRef<ChunkCommit>,
    pub chunk: u64,
}

/// The records a write's rows came from, so a row the warehouse refuses is dead-lettered with
/// its record (payload and position).
#[derive(Clone, Debug)]
pub struct Origin {
    pub shard: ShardId,
    /// The chunk's records (shared by the writes of every sink the chunk went to).
    pub records: Arc<[UserRecord]>,
    /// For each row of the write, its record's index in `records`.
    pub record_of_row: Vec<u32>,
}

pub enum SinkMsg {
    Write {
        rows: Vec<Row>,
        origin: Origin,
        ack: Ack,
    },
    /// Commit what is buffered now (a consumer is stopping).
    Flush,
    /// The latency deadline of batch number `.0`.
    Deadline(u64),
    /// Time for a pass over the table's tombstones (`Warehouse::prune_tombstones`).
    PruneTombstones,
}

pub struct Sink;

/// A node's sinks: one per target table in `TableId` order, then the dead-letter sink.
pub struct Sinks {
    refs: Vec<ActorRef<SinkMsg>>,
    names: Vec<String>,
}

impl Sinks {
    pub fn new(tables: Vec<(String, ActorRef<SinkMsg>)>, dead_letters: (String, ActorRef<SinkMsg>)) -> Self {
        let (names, refs) = tables.into_iter().chain([dead_letters]).unzip();
        Self { refs, names }
    }

    /// How many sinks there are (the dead-letter sink included).
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Where a target's sink stands in `iter` and `names`.
    pub fn index(&self, target: Target) -> usize {
        match target {
            Target::Table(id) => id.index(),
            Target::DeadLetters => self.refs.len() - 1,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &ActorRef<SinkMsg>> {
        self.refs.iter()
    }

    /// The tables' names, in `iter` order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// What a sink's table is.
#[derive(Clone, Debug)]
pub enum SinkRole {
    /// A target table: a row the warehouse refuses goes, with its record, to this dead-letter
    /// table.
    Table { dead_letters: Arc<TableSchema> },
    /// The dead-letter table: what it commits is counted as dead letters; a row it refuses
    /// fails its chunk (there is nowhere further to put it).
    DeadLetters,
}

pub struct SinkArgs {
    pub table: Arc<TableSchema>,
    pub warehouse: Arc<dyn Warehouse>,
    pub settings: SinkSettings,
    pub retry: RetryPolicy,
    pub metrics: Arc<NodeMetrics>,
    pub role: SinkRole,
}

pub struct SinkState {
    args: SinkArgs,
    rows: Vec<Row>,
    /// Each write's origin, with the index of its first row in `rows`.
    origins: Vec<(usize, Origin)>,
    bytes: usize,
    acks: Vec<Ack>,
    /// Counts batches, so a deadline set for an earlier batch is ignored.
    generation: u64,
}

/// A rough size of a row on the wire, for the byte limit.
fn row_bytes(row: &Row) -> usize {
    row.version.as_str().len()
        + row
            .values
            .iter()
            .map(|v| match v {
                Value::Text(s) => s.len() + 4,
                _ => 8,
            })
            .sum::<usize>()
}

impl SinkState {
    /// One transaction of `batch`, retried while the failure may pass (`commit_retry`).
    async fn attempt(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        let label = [batch.table.name.as_str()];
        let (warehouse, metrics) = (&self.args.warehouse, &self.args.metrics);
        self.args
            .settings
            .commit_retry
            .run(WarehouseError::is_retryable, || async move {
                let r = warehouse.commit(batch).await;
                if r.is_err() {
                    metrics.commit_retries.with_label_values(&label).inc();
                }
                r
            })
            .await
    }

    /// After the warehouse refused the batch `rows` as a whole: commits what it takes and
    /// dead-letters, with their records, the rows it refuses one by one. Returns what the
    /// table's commits did.
    async fn commit_around_refusals(
        &self,
        rows: &[Row],
        origins: &[(usize, Origin)],
        refusal: String,
        dead_letters: &Arc<TableSchema>,
    ) -> Result<CommitStats, WarehouseError> {
        let table = self.args.table.clone();
        let Bisected { stats, refused } = bisect(rows.len(), refusal, |part| {
            let batch = Batch { table: table.clone(), rows: rows[part].to_vec() };
            async move { self.attempt(&batch).await }
        })
        .await?;
        let mut letters: Vec<(Target, Row)> = Vec::new();
        let mut lettered: std::collections::HashSet<(usize, u32)> = std::collections::HashSet::new();
        for (row, why) in &refused {
            let write = origins.partition_point(|(first, _)| first <= row) - 1;
            let (first, origin) = &origins[write];
            let record = origin.record_of_row[row - first];
            warn!(table = %table.name, shard = %origin.shard, error = %why, "row refused by the warehouse; dead-lettered");
            // A record with several refused rows is dead-lettered once (the first reason).
            if lettered.insert((write, record)) {
                let reason = format!("table {}: the warehouse refused the row: {why}", table.name);
                dead_letter::rows(&origin.shard, &origin.records[record as usize], &reason, &mut letters);
            }
        }
        let m = &self.args.metrics;
        m.rows_refused.with_label_values(&[table.name.as_str()]).inc_by(refused.len() as u64);
        let letters = Batch { table: dead_letters.clone(), rows: letters.into_iter().map(|(_, row)| row).collect() };
        let lettered = self.attempt(&letters).await?;
        m.dead_letters.inc_by(lettered.upserted);
        Ok(stats)
    }

    async fn commit(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        self.generation += 1;
        let batch = Batch { table: self.args.table.clone(), rows: std::mem::take(&mut self.rows) };
        let origins = std::mem::take(&mut self.origins);
        let acks = std::mem::take(&mut self.acks);
        self.bytes = 0;
        let table = [self.args.table.name.as_str()];
        let started = tokio::time::Instant::now();
        let mut result = self.attempt(&batch).await;
        if let (Err(WarehouseError::Rejected(why)), SinkRole::Table { dead_letters }) = (&result, &self.args.role) {
            warn!(table = %table[0], error = %why, rows = batch.rows.len(), "batch refused; committing it in parts");
            result = self.commit_around_refusals(&batch.rows, &origins, why.clone(), dead_letters).await;
        }
        let m = &self.args.metrics;
        match result {
            Ok(stats) => {
                m.commit_seconds.with_label_values(&table).observe(started.elapsed().as_secs_f64());
                m.commit_rows.with_label_values(&table).observe(batch.rows.len() as f64);
                m.commits.with_label_values(&table).inc();
                m.rows_committed.with_label_values(&[table[0], "upsert"]).inc_by(stats.upserted);
                m.rows_committed.with_label_values(&[table[0], "delete"]).inc_by(stats.deleted);
                m.rows_fenced.with_label_values(&table).inc_by(stats.fenced);
                if matches!(self.args.role, SinkRole::DeadLetters) {
                    // Counted once committed: a record re-read after a restart is fenced, not new.
                    m.dead_letters.inc_by(stats.upserted);
                }
                for ack in acks {
                    let _ = ack.to.send_message(ChunkCommit::Committed(ack.chunk));
                }
            }
            Err(e) => {
                warn!(table = %self.args.table.name, error = %e, rows = batch.rows.len(), "batch not committed");
                for ack in acks {
                    let _ = ack.to.send_message(ChunkCommit::Failed(ack.chunk, e.to_string()));
                }
            }
        }
    }
}

impl Actor for Sink {
    type Msg = SinkMsg;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: SinkArgs) -> Result<Self::State, ActorProcessingErr> {
        let warehouse = args.warehouse.clone();
        let table = args.table.clone();
        args.retry.run(WarehouseError::is_retryable, || warehouse.ensure_table(&table)).await?;
        args.metrics.register_table(&table.name);
        if args.settings.tombstone_retention.is_some() {
            myself.send_after(args.settings.prune_interval, || SinkMsg::PruneTombstones);
        }
        Ok(SinkState { args, rows: Vec::new(), origins: Vec::new(), bytes: 0, acks: Vec::new(), generation: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Write { rows, origin, ack } => {
                let first = state.acks.is_empty();
                state.bytes += rows.iter().map(row_bytes).sum::<usize>();
                state.origins.push((state.rows.len(), origin));
                state.rows.extend(rows);
                state.acks.push(ack);
                if state.rows.len() >= state.args.settings.batch_rows || state.bytes >= state.args.settings.batch_bytes
                {
                    state.commit().await;
                } else if first {
                    let generation = state.generation;
                    myself.send_after(state.args.settings.batch_latency, move || SinkMsg::Deadline(generation));
                }
            }
            SinkMsg::Flush => state.commit().await,
            SinkMsg::Deadline(generation) if generation == state.generation => state.commit().await,
            SinkMsg::Deadline(_) => {}
            SinkMsg::PruneTombstones => {
                let (table, settings) = (&state.args.table, &state.args.settings);
                let retention = settings.tombstone_retention.expect("scheduled only with a retention");
                // A failed pass is counted (`call_errors_total`) and the next one tries again.
                match state.args.warehouse.prune_tombstones(table, retention).await {
                    Ok(0) => {}
                    Ok(removed) => info!(table = %table.name, removed, "tombstones past their retention removed"),
                    Err(e) => warn!(table = %table.name, error = %e, "tombstones not pruned"),
                }
                myself.send_after(settings.prune_interval, || SinkMsg::PruneTombstones);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use proto::{Column, RowOp, SqlType, Version};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records the size of each committed batch.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<usize>>);

    #[async_trait::async_trait]
    impl Warehouse for Recorder {
        async fn ensure_table(&self, _table: &TableSchema) -> Result<(), WarehouseError> {
            Ok(())
        }
        async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
            self.0.lock().unwrap().push(batch.rows.len());
            Ok(CommitStats { upserted: batch.rows.len() as u64, ..CommitStats::default() })
        }
        async fn prune_tombstones(&self, _: &TableSchema, _: Duration) -> Result<u64, WarehouseError> {
            Ok(0)
        }
    }

    /// Takes the acks.
    struct Writer;

    impl Actor for Writer {
        type Msg = ChunkCommit;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<ChunkCommit>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    /// Table `t`: a bigint key `id` and a text `note`.
    fn table_t() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            name: "t".into(),
            columns: vec![Column::new("id", SqlType::BigInt), Column::new("note", SqlType::Text)],
            key: vec![0],
            version_column: "_version".into(),
        })
    }

    fn rows(n: usize, text_bytes: usize) -> Vec<Row> {
        (0..n)
            .map(|i| Row {
                op: RowOp::Upsert,
                version: Version::from_text("v"),
                values: vec![Value::Int(i as i64), Value::Text("x".repeat(text_bytes))],
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_cut_by_rows_bytes_and_latency() {
        let warehouse = Arc::new(Recorder::default());
        let table = table_t();
        let settings = SinkSettings {
            batch_rows: 10,
            batch_bytes: 3_000,
            batch_latency: Duration::from_secs(1),
            ..SinkSettings::default()
        };
        let args = SinkArgs {
            table,
            warehouse: warehouse.clone(),
            settings,
            retry: RetryPolicy::default(),
            metrics: Arc::new(NodeMetrics::default()),
            role: SinkRole::DeadLetters,
        };
        let (sink, sink_task) = Actor::spawn(None, Sink, args).await.unwrap();
        let (writer, writer_task) = Actor::spawn(None, Writer, ()).await.unwrap();
        let acks: DerivedActorRef<ChunkCommit> = writer.get_derived();
        let write = |rows: Vec<Row>, chunk| {
            let origin = Origin { shard: ShardId::new("s"), records: Arc::new([]), record_of_row: Vec::new() };
            sink.cast(SinkMsg::Write { rows, origin, ack: Ack { to: acks.clone(), chunk } }).unwrap()
        };
        let committed = || warehouse.0.lock().unwrap().clone();
        let settle = || tokio::time::sleep(Duration::from_millis(10));

        // Rows: the write that reaches 10 rows commits them all at once.
        write(rows(4, 1), 1);
        write(rows(4, 1), 2);
        settle().await;
        assert_eq!(committed(), Vec::<usize>::new());
        write(rows(4, 1), 3);
        settle().await;
        assert_eq!(committed(), vec![12]);
        // Bytes: three rows of 1,000 bytes of text pass 3,000.
        write(rows(2, 1_000), 4);
        settle().await;
        assert_eq!(committed(), vec![12]);
        write(rows(1, 1_000), 5);
        settle().await;
        assert_eq!(committed(), vec![12, 3]);
        // Latency: one row waits batch_latency from the batch's first write, then commits alone.
        write(rows(1, 1), 6);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(committed(), vec![12, 3]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(committed(), vec![12, 3, 1]);

        sink.stop(None);
        writer.stop(None);
        sink_task.await.unwrap();
        writer_task.await.unwrap();
    }

    /// Refuses any batch of table `t` that holds a row whose note is "bad" (a CHECK the
    /// pipeline cannot know of); the rest goes to the memory warehouse.
    struct Checked(proto::memory::MemoryWarehouse);

    #[async_trait::async_trait]
    impl Warehouse for Checked {
        async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
            self.0.ensure_table(table).await
        }
        async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
            let bad = |r: &Row| r.values.get(1) == Some(&Value::Text("bad".into()));
            if batch.table.name == "t" && batch.rows.iter().any(bad) {
                return Err(WarehouseError::Rejected("new row violates check constraint \"no_bad\"".into()));
            }
            self.0.commit(batch).await
        }
        async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
            self.0.prune_tombstones(table, retention).await
        }
    }

    /// Collects what its chunks became.
    struct Collector(Arc<Mutex<Vec<ChunkCommit>>>);

    impl Actor for Collector {
        type Msg = ChunkCommit;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<ChunkCommit>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<ChunkCommit>,
            msg: ChunkCommit,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    /// A batch the warehouse refuses lands without its refused rows, which go to the dead-letter
    /// table with their records' positions, payloads and the warehouse's reason (a record with
    /// two refused rows once); every chunk is acked as committed, so the shard moves on.
    #[tokio::test(start_paused = true)]
    async fn rows_the_warehouse_refuses_are_dead_lettered_and_the_rest_commits() {
        let memory = proto::memory::MemoryWarehouse::new();
        let table = table_t();
        let dead_letters = Arc::new(dead_letter::schema());
        memory.ensure_table(&dead_letters).await.unwrap();
        let metrics = Arc::new(NodeMetrics::default());
        let args = SinkArgs {
            table,
            warehouse: Arc::new(Checked(memory.clone())),
            settings: SinkSettings {
                batch_rows: 1_000,
                batch_latency: Duration::from_secs(1),
                ..SinkSettings::default()
            },
            retry: RetryPolicy::default(),
            metrics: metrics.clone(),
            role: SinkRole::Table { dead_letters },
        };
        let (sink, sink_task) = Actor::spawn(None, Sink, args).await.unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (writer, writer_task) = Actor::spawn(None, Collector(acked.clone()), ()).await.unwrap();
        // Two chunks of 40 records, one row each, except record 7 of chunk 2: two rows, both bad.
        let record = |i: u64| UserRecord {
            position: proto::Position::new(proto::SequenceNumber::from_u128(1_000 + i as u128), 0),
            partition_key: format!("k{i}"),
            data: format!("payload {i}").into_bytes().into(),
            arrival_ms: 0,
            error: None,
        };
        let bad = [3u64, 17, 47];
        let row = |i: u64, note: &str| Row {
            op: RowOp::Upsert,
            version: Version::from_text(format!("{i:04}")),
            values: vec![Value::Int(i as i64), Value::Text(note.into())],
        };
        for chunk in 0..2u64 {
            let records: Arc<[UserRecord]> = (chunk * 40..chunk * 40 + 40).map(record).collect();
            let (mut rows, mut record_of_row) = (Vec::new(), Vec::new());
            for (n, i) in (chunk * 40..chunk * 40 + 40).enumerate() {
                let note = if bad.contains(&i) { "bad" } else { "good" };
                rows.push(row(i, note));
                record_of_row.push(n as u32);
                if i == 47 {
                    rows.push(row(1_047, "bad"));
                    record_of_row.push(n as u32);
                }
            }
            let origin = Origin { shard: ShardId::new("shard-a"), records, record_of_row };
            sink.cast(SinkMsg::Write { rows, origin, ack: Ack { to: writer.get_derived(), chunk } }).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        assert_eq!(*acked.lock().unwrap(), vec![ChunkCommit::Committed(0), ChunkCommit::Committed(1)]);
        let held = memory.rows("t");
        let ids: Vec<i64> = held.values().map(|r| if let Value::Int(i) = r.values[0] { i } else { -1 }).collect();
        let mut ids = ids;
        ids.sort_unstable();
        assert_eq!(ids, (0..80).filter(|i| !bad.contains(&(*i as u64))).collect::<Vec<i64>>());
        let letters: Vec<Vec<Value>> = memory.rows(dead_letter::TABLE).into_values().map(|r| r.values).collect();
        assert_eq!(letters.len(), 3, "one dead letter per record: {letters:?}");
        for (letter, i) in letters.iter().zip(bad) {
            assert_eq!(letter[0], Value::Text("shard-a".into()));
            assert_eq!(letter[1], Value::Text((1_000 + i).to_string()));
            let Value::Text(reason) = &letter[5] else { panic!("{letter:?}") };
            assert!(reason.contains("table t: the warehouse refused the row") && reason.contains("no_bad"), "{reason}");
            let payload = base64::engine::general_purpose::STANDARD.encode(format!("payload {i}"));
            assert_eq!(letter[6], Value::Text(payload));
        }
        assert_eq!(metrics.rows_refused.with_label_values(&["t"]).get(), 4);
        assert_eq!(metrics.dead_letters.get(), 3);

        sink.stop(None);
        writer.stop(None);
        sink_task.await.unwrap();
        writer_task.await.unwrap();
    }

    /// With a retention, the sink prunes its table's tombstones every `prune_interval`, in the
    /// background: a tombstone first seen by the pass at 10 min is still there at 25 min (15 min
    /// retention) and gone after the pass at 30 min.
    #[tokio::test(start_paused = true)]
    async fn the_sink_prunes_tombstones_past_the_retention_in_the_background() {
        let memory = proto::memory::MemoryWarehouse::new();
        let table = table_t();
        let minutes = |n: u64| Duration::from_secs(60 * n);
        let settings = SinkSettings {
            batch_latency: Duration::from_millis(10),
            tombstone_retention: Some(minutes(15)),
            prune_interval: minutes(10),
            ..SinkSettings::default()
        };
        let args = SinkArgs {
            table,
            warehouse: Arc::new(memory.clone()),
            settings,
            retry: RetryPolicy::default(),
            metrics: Arc::new(NodeMetrics::default()),
            role: SinkRole::DeadLetters,
        };
        let (sink, sink_task) = Actor::spawn(None, Sink, args).await.unwrap();
        let (writer, writer_task) = Actor::spawn(None, Writer, ()).await.unwrap();
        let delete =
            Row { op: RowOp::Delete, version: Version::from_text("1"), values: vec![Value::Int(1), Value::Null] };
        let origin = Origin { shard: ShardId::new("s"), records: Arc::new([]), record_of_row: Vec::new() };
        sink.cast(SinkMsg::Write { rows: vec![delete], origin, ack: Ack { to: writer.get_derived(), chunk: 0 } })
            .unwrap();
        tokio::time::sleep(minutes(1)).await;
        assert_eq!(memory.tombstones("t"), 1);
        tokio::time::sleep(minutes(24)).await;
        assert_eq!(memory.tombstones("t"), 1, "stamped at 10 min, 15 min old at 25");
        tokio::time::sleep(minutes(6)).await;
        assert_eq!(memory.tombstones("t"), 0, "removed by the pass at 30 min");

        sink.stop(None);
        writer.stop(None);
        sink_task.await.unwrap();
        writer_task.await.unwrap();
    }
}
