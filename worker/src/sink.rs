//! The sink actor, one per target table: gathers rows from every consumer of the node into
//! batches (by rows, bytes and latency), commits each batch in one warehouse transaction, then
//! acks the chunks it carried back to their consumers. While the warehouse is unavailable the
//! sink keeps retrying the same batch (back-off up to `commit_retry.max_backoff`), so an outage
//! holds reads back instead of cycling consumers through restarts; a batch the warehouse
//! rejects, or one still failing after `commit_retry.max_attempts`, is nacked and its consumers
//! restart from their last checkpoint.

use crate::metrics::NodeMetrics;
use crate::record_mapper::Target;
use proto::{Batch, RetryPolicy, Row, TableSchema, Value, Warehouse, WarehouseError};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use std::sync::Arc;
use tracing::warn;

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

pub enum SinkMsg {
    Write {
        rows: Vec<Row>,
        ack: Ack,
    },
    /// Commit what is buffered now (a consumer is stopping).
    Flush,
    /// The latency deadline of batch number `.0`.
    Deadline(u64),
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

pub struct SinkArgs {
    pub table: Arc<TableSchema>,
    pub warehouse: Arc<dyn Warehouse>,
    pub settings: SinkSettings,
    pub retry: RetryPolicy,
    pub metrics: Arc<NodeMetrics>,
    /// This sink writes the dead letters: what it commits is counted as such.
    pub dead_letters: bool,
}

pub struct SinkState {
    args: SinkArgs,
    rows: Vec<Row>,
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
    async fn commit(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        self.generation += 1;
        let batch = Batch { table: self.args.table.clone(), rows: std::mem::take(&mut self.rows) };
        let acks = std::mem::take(&mut self.acks);
        self.bytes = 0;
        let warehouse = self.args.warehouse.clone();
        let metrics = self.args.metrics.clone();
        let table = [self.args.table.name.as_str()];
        let started = tokio::time::Instant::now();
        let result = self
            .args
            .settings
            .commit_retry
            .run(WarehouseError::is_retryable, || {
                let warehouse = warehouse.clone();
                let batch = &batch;
                let metrics = metrics.clone();
                async move {
                    let r = warehouse.commit(batch).await;
                    if r.is_err() {
                        metrics.commit_retries.with_label_values(&table).inc();
                    }
                    r
                }
            })
            .await;
        let m = &self.args.metrics;
        match result {
            Ok(stats) => {
                m.commit_seconds.with_label_values(&table).observe(started.elapsed().as_secs_f64());
                m.commit_rows.with_label_values(&table).observe(batch.rows.len() as f64);
                m.commits.with_label_values(&table).inc();
                m.rows_committed.with_label_values(&[table[0], "upsert"]).inc_by(stats.upserted);
                m.rows_committed.with_label_values(&[table[0], "delete"]).inc_by(stats.deleted);
                m.rows_fenced.with_label_values(&table).inc_by(stats.fenced);
                if self.args.dead_letters {
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

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: SinkArgs) -> Result<Self::State, ActorProcessingErr> {
        let warehouse = args.warehouse.clone();
        let table = args.table.clone();
        args.retry.run(WarehouseError::is_retryable, || warehouse.ensure_table(&table)).await?;
        args.metrics.register_table(&table.name);
        Ok(SinkState { args, rows: Vec::new(), bytes: 0, acks: Vec::new(), generation: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Write { rows, ack } => {
                let first = state.acks.is_empty();
                state.bytes += rows.iter().map(row_bytes).sum::<usize>();
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
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Column, CommitStats, RowOp, SqlType, Version};
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
        let table = Arc::new(TableSchema {
            name: "t".into(),
            columns: vec![Column::new("id", SqlType::BigInt), Column::new("note", SqlType::Text)],
            key: vec![0],
            version_column: "_version".into(),
        });
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
            dead_letters: false,
        };
        let (sink, sink_task) = Actor::spawn(None, Sink, args).await.unwrap();
        let (writer, writer_task) = Actor::spawn(None, Writer, ()).await.unwrap();
        let acks: DerivedActorRef<ChunkCommit> = writer.get_derived();
        let write =
            |rows: Vec<Row>, chunk| sink.cast(SinkMsg::Write { rows, ack: Ack { to: acks.clone(), chunk } }).unwrap();
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
}
