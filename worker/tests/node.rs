//! One node over in-memory ports, in paused time: backpressure from a stalled warehouse, and
//! checkpoints that never run ahead of what committed.

use async_trait::async_trait;
use coordinator::{ClusterSettings, EventSink};
use proto::memory::{MemoryLeaseTable, MemoryStream, MemoryWarehouse};
use proto::{Batch, Checkpoint, Clock, CommitStats, LeaseTable, TableSchema, Warehouse, WarehouseError, WorkerId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use worker::{Node, NodeConfig, NodePorts, Pipeline, PipelineConfig};

/// A warehouse whose commits wait while the gate is closed: every commit, or with `only` the
/// commits to that table (the others go through).
struct Gated {
    inner: MemoryWarehouse,
    open: watch::Receiver<bool>,
    only: Option<&'static str>,
}

#[async_trait]
impl Warehouse for Gated {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        self.inner.ensure_table(table).await
    }
    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        if self.only.is_none_or(|t| t == batch.table.name) {
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
        }
        self.inner.commit(batch).await
    }
    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        self.inner.prune_tombstones(table, retention).await
    }
}

fn mapper() -> Pipeline {
    let config = PipelineConfig::from_toml(
        r#"
        [[table]]
        name = "t"
        key = ["id"]
        column = [{ name = "id", from = "id", type = "bigint" }]
        "#,
    )
    .unwrap();
    Pipeline::without_references(&config).unwrap()
}

/// A one-shard stream holding records `{"id": 0}` … `{"id": n - 1}`, and the last one's sequence
/// number.
fn numbered_stream(n: usize) -> (MemoryStream, proto::SequenceNumber) {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let mut last = None;
    for i in 0..n {
        last = Some(stream.put(&format!("k{i}"), format!(r#"{{"id":{i}}}"#).into_bytes()).1);
    }
    (stream, last.expect("at least one record"))
}

#[tokio::test(start_paused = true)]
async fn a_stalled_warehouse_stops_reads_and_checkpoints() {
    let (stream, last) = numbered_stream(1_000);
    let leases = MemoryLeaseTable::new();
    let warehouse = MemoryWarehouse::new();
    let (gate, open) = watch::channel(false);
    let ports = NodePorts {
        table: Arc::new(leases.clone()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(Gated { inner: warehouse.clone(), open, only: None }),
        mapper: Arc::new(mapper()),
    };
    let mut config = NodeConfig::new(WorkerId::new("n"), ClusterSettings::with_failover(Duration::from_secs(10)));
    config.consumer.max_records = 50;
    config.consumer.max_in_flight_rows = 100;
    config.sink.batch_rows = 1_000;
    config.sink.batch_latency = Duration::from_millis(100);
    let node = Node::start(config, ports, EventSink::none()).await.unwrap();

    tokio::time::sleep(Duration::from_secs(10)).await;
    let read = node.metrics.records_read.get();
    assert!(read > 0, "the node started reading");
    assert!(read <= 150, "reading stops at the in-flight budget (+ one read): read {read}");
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, Checkpoint::TrimHorizon, "nothing committed, nothing checkpointed");

    gate.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(warehouse.rows("t").len(), 1_000);
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, Checkpoint::At(proto::Position::new(last, 0)));
    assert!(node.metrics.checkpoints.get() >= 1);

    node.shutdown().await;
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(lease.owner, None, "a graceful stop releases the lease");
    assert!(leases.membership(true).await.map(|m| m.workers).unwrap().is_empty(), "and removes the heartbeat row");
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_inside_a_kpl_aggregate_resumes_after_its_sub_record() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let items: Vec<(&str, &[u8])> = vec![("a", br#"{"id":1}"#), ("b", br#"{"id":2}"#), ("c", br#"{"id":3}"#)];
    let aggregate = stream.put("a", worker::kpl::aggregate(&items)).1;
    let plain = stream.put("d", br#"{"id":4}"#.to_vec()).1;
    // A lease left by an earlier owner, checkpointed after the second user record.
    let leases = MemoryLeaseTable::new();
    let shard = proto::ShardId::numbered(0);
    let done = Checkpoint::At(proto::Position::new(aggregate.clone(), 1));
    leases.create(&proto::Lease::for_shard(&shard, vec![], None, done)).await.unwrap();
    let warehouse = MemoryWarehouse::new();
    let ports = ports(&leases, &stream, &warehouse);
    let config = NodeConfig::new(WorkerId::new("n"), ClusterSettings::with_failover(Duration::from_secs(10)));
    let node = Node::start(config, ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ids: Vec<proto::Value> = warehouse.rows("t").into_values().map(|r| r.values[0].clone()).collect();
    assert_eq!(ids, vec![proto::Value::Int(3), proto::Value::Int(4)], "user records 1 and 2 were done before");
    let lease = leases.get(shard.as_str()).await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, Checkpoint::At(proto::Position::new(plain, 0)));
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_join_set_to_wait_holds_the_shard_until_the_reference_row_arrives() {
    let (pipeline, refs) = waiting_pipeline("20s").await;
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    stream.put("a", br#"{"id":1,"country":"NO"}"#.to_vec());
    stream.put("b", br#"{"id":2,"country":"XX"}"#.to_vec());
    let warehouse = MemoryWarehouse::new();
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(warehouse.clone()),
        mapper: Arc::new(pipeline),
    };
    let node = Node::start(
        NodeConfig::new(WorkerId::new("n"), ClusterSettings::with_failover(Duration::from_secs(10))),
        ports,
        EventSink::none(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(warehouse.rows("t").is_empty(), "the shard waits: nothing behind the first record either");
    refs.put("country", "NO", serde_json::json!({"code": "NO", "name": "Norway"}).as_object().unwrap().clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = warehouse.rows("t");
    assert_eq!(rows.len(), 1, "record 1 joined once its row arrived; record 2 still waits");
    assert_eq!(rows.values().next().unwrap().values[1], proto::Value::Text("Norway".into()));
    // XX never arrives: after max_wait the record goes to the dead letters and the shard moves on.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let dead = warehouse.rows(worker::DEAD_LETTER_TABLE);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead.values().next().unwrap().values[5],
        proto::Value::Text("table t: no country row for key XX".into())
    );
    node.shutdown().await;
}

/// A pipeline joining an (empty) `country` table with `on_missing = "wait"`, and the source.
async fn waiting_pipeline(max_wait: &str) -> (Pipeline, proto::memory::MemoryReferenceSource) {
    let refs = proto::memory::MemoryReferenceSource::new();
    refs.create_table("country", true);
    let config = PipelineConfig::from_toml(&format!(
        r#"
        [[reference]]
        name = "country"
        key = "code"
        poll_interval = "1s"
        [[table]]
        name = "t"
        key = ["id"]
        join = [{{ reference = "country", key = "country", on_missing = "wait", max_wait = "{max_wait}" }}]
        column = [{{ name = "id", from = "id", type = "bigint" }}, {{ name = "name", from = "country.name", type = "text" }}]
        "#
    ))
    .unwrap();
    let set =
        worker::reference_set::ReferenceSet::start(Arc::new(refs.clone()), &config.reference_specs()).await.unwrap();
    (Pipeline::new(&config, Arc::new(set)).unwrap(), refs)
}

/// The in-memory ports of one node, with the test's `mapper()`.
fn ports(table: &MemoryLeaseTable, stream: &MemoryStream, warehouse: &MemoryWarehouse) -> NodePorts {
    NodePorts {
        table: Arc::new(table.clone()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(warehouse.clone()),
        mapper: Arc::new(mapper()),
    }
}

fn node_config(id: &str) -> NodeConfig {
    NodeConfig::new(WorkerId::new(id), ClusterSettings::with_failover(Duration::from_secs(10)))
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_a_join_waits_inside_an_aggregate_loses_nothing() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let items: Vec<(&str, &[u8])> = vec![
        ("a", br#"{"id":1,"country":"NO"}"#),
        ("b", br#"{"id":2,"country":"SE"}"#),
        ("c", br#"{"id":3,"country":"NO"}"#),
    ];
    stream.put("a", worker::kpl::aggregate(&items));
    let leases = MemoryLeaseTable::new();
    let warehouse = MemoryWarehouse::new();
    let (pipeline, refs) = waiting_pipeline("10m").await;
    refs.put("country", "NO", serde_json::json!({"code": "NO", "name": "Norway"}).as_object().unwrap().clone());
    let pipeline = Arc::new(pipeline);
    let ports = NodePorts {
        table: Arc::new(leases.clone()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(warehouse.clone()),
        mapper: pipeline.clone(),
    };
    let first = Node::start(node_config("first"), ports.clone(), EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(warehouse.rows("t").len(), 1, "user record 0 committed, record 1 waits");
    first.shutdown().await;
    refs.put("country", "SE", serde_json::json!({"code": "SE", "name": "Sweden"}).as_object().unwrap().clone());
    let second = Node::start(node_config("second"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(warehouse.rows("t").len(), 3, "the rest of the aggregate was not skipped");
    second.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shard_that_ends_while_a_join_waits_still_reaches_shard_end() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    stream.put("a", br#"{"id":1,"country":"SE"}"#.to_vec());
    let parent = proto::ShardId::numbered(0);
    stream.split(&parent, u128::MAX / 2).unwrap();
    let leases = MemoryLeaseTable::new();
    let warehouse = MemoryWarehouse::new();
    let (pipeline, refs) = waiting_pipeline("10m").await;
    refs.put("country", "NO", serde_json::json!({"code": "NO", "name": "Norway"}).as_object().unwrap().clone());
    let ports = NodePorts {
        table: Arc::new(leases.clone()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(warehouse.clone()),
        mapper: Arc::new(pipeline),
    };
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_ne!(leases.get(parent.as_str()).await.unwrap().unwrap().checkpoint, Checkpoint::ShardEnd);
    refs.put("country", "SE", serde_json::json!({"code": "SE", "name": "Sweden"}).as_object().unwrap().clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(warehouse.rows("t").len(), 1);
    let lease = leases.get(parent.as_str()).await.unwrap();
    assert!(lease.is_none_or(|l| l.checkpoint == Checkpoint::ShardEnd), "the parent ended (or was cleaned up)");
    assert!(
        leases.rows().iter().any(|l| l.key == proto::ShardId::numbered(1).as_str() && l.owner.is_some()),
        "a child runs"
    );
    node.shutdown().await;
}

/// Maps every record to no row at all (a record of a source table no `[[table]]` takes).
struct NoRows(Pipeline);

impl worker::RecordMapper for NoRows {
    fn tables(&self) -> Vec<Arc<TableSchema>> {
        self.0.tables()
    }
    fn map(
        &self,
        _shard: &proto::ShardId,
        records: &[worker::UserRecord],
        _give_up_first: bool,
        out: &mut worker::MappedRows,
    ) -> (usize, worker::MapOutcome) {
        records.iter().for_each(|_| out.end_record());
        (records.len(), worker::MapOutcome::Done)
    }
}

#[tokio::test(start_paused = true)]
async fn records_that_make_no_rows_are_checkpointed_all_the_same() {
    let (stream, last) = numbered_stream(20);
    let leases = MemoryLeaseTable::new();
    let ports = NodePorts {
        table: Arc::new(leases.clone()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(MemoryWarehouse::new()),
        mapper: Arc::new(NoRows(mapper())),
    };
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, Checkpoint::At(proto::Position::new(last, 0)), "nothing to re-read");
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn lag_grows_while_backpressure_holds_reads_and_dead_letters_count_once_committed() {
    let (stream, _) = numbered_stream(1_000);
    stream.put("bad", b"not json".to_vec());
    let warehouse = MemoryWarehouse::new();
    let (gate, open) = watch::channel(false);
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(Gated { inner: warehouse.clone(), open, only: None }),
        mapper: Arc::new(mapper()),
    };
    let mut config = node_config("n");
    config.consumer.max_records = 50;
    config.consumer.max_in_flight_rows = 100;
    let node = Node::start(config, ports, EventSink::none()).await.unwrap();
    let lag = |text: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with("tributary_shard_lag_seconds{")).expect("a lag sample");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let early = lag(&node.metrics.gather());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let late = lag(&node.metrics.gather());
    assert!(late - early >= 59.0, "reads are held back, so the shard falls behind: {early} then {late}");
    gate.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let text = node.metrics.gather();
    assert_eq!(lag(&text), 0.0, "caught up");
    assert_eq!(warehouse.rows(worker::DEAD_LETTER_TABLE).len(), 1);
    assert_eq!(node.metrics.dead_letters.get(), 1);
    node.shutdown().await;
}

/// The value of the sample named exactly `series` in a gather.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Rejects every commit to one of `tables` until `remaining` reaches zero (each rejection
/// counts one).
struct Rejecting {
    inner: MemoryWarehouse,
    tables: &'static [&'static str],
    remaining: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Warehouse for Rejecting {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        self.inner.ensure_table(table).await
    }
    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        use std::sync::atomic::Ordering;
        let reject = self.tables.contains(&batch.table.name.as_str())
            && self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if reject {
            return Err(WarehouseError::Rejected("planted".into()));
        }
        self.inner.commit(batch).await
    }
    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        self.inner.prune_tombstones(table, retention).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_looping_consumer_is_counted_and_does_not_look_like_progress() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    stream.put("k", br#"{"id":1}"#.to_vec());
    // The table and the dead-letter table refuse every row: a refused row has nowhere to go.
    let tables = &["t", worker::DEAD_LETTER_TABLE];
    let warehouse = Rejecting { inner: MemoryWarehouse::new(), tables, remaining: usize::MAX.into() };
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(warehouse),
        mapper: Arc::new(mapper()),
    };
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    let shard = "{shard=\"shardId-000000000000\"}";
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let first = node.metrics.gather();
    let started_at = sample(&first, &format!("tributary_shard_last_checkpoint_timestamp_seconds{shard}")).unwrap();
    // Restarts after 1, 2 and 4 s (the lease is given up only at the fifth failure).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let later = node.metrics.gather();
    let failures = sample(&later, &format!("tributary_consumer_failures_total{shard}")).unwrap();
    assert!(failures >= 3.0, "each failure counted: {failures}\n{later}");
    assert_eq!(
        sample(&later, &format!("tributary_shard_last_checkpoint_timestamp_seconds{shard}")),
        Some(started_at),
        "a restart is not progress"
    );
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn rows_in_flight_counts_what_waits_behind_a_stalled_commit() {
    let (stream, _) = numbered_stream(1_000);
    let (_gate, open) = watch::channel(false);
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(Gated { inner: MemoryWarehouse::new(), open, only: None }),
        mapper: Arc::new(mapper()),
    };
    let mut config = node_config("n");
    config.consumer.max_records = 50;
    config.consumer.max_in_flight_rows = 200;
    config.sink.batch_rows = 1_000;
    config.sink.batch_latency = Duration::from_millis(100);
    let node = Node::start(config, ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let text = node.metrics.gather();
    // The first batch (50 rows) is stuck in its commit; the rest of the in-flight budget waits
    // in the sink's mailbox behind it, and counts.
    let in_flight = sample(&text, "tributary_rows_in_flight{table=\"t\"}").unwrap();
    assert!((200.0..=250.0).contains(&in_flight), "{in_flight}\n{text}");
    node.kill().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_re_read_after_a_failed_commit_counts_once() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    stream.put("bad", b"not json".to_vec());
    stream.put("good", br#"{"id":1}"#.to_vec());
    let inner = MemoryWarehouse::new();
    let dead = worker::DEAD_LETTER_TABLE;
    let warehouse = Rejecting { inner: inner.clone(), tables: &[worker::DEAD_LETTER_TABLE], remaining: 1.into() };
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(warehouse),
        mapper: Arc::new(mapper()),
    };
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(inner.rows(dead).len(), 1, "committed on the second reading");
    let text = node.metrics.gather();
    assert_eq!(sample(&text, "tributary_consumer_failures_total{shard=\"shardId-000000000000\"}"), Some(1.0));
    assert_eq!(node.metrics.dead_letters.get(), 1, "read twice, counted once");
    node.shutdown().await;
}

/// A stream that answers until `down` is set, then fails every read as unavailable; it
/// remembers which shards it was told to let go of.
struct Outage {
    inner: MemoryStream,
    down: std::sync::atomic::AtomicBool,
    released: std::sync::Mutex<Vec<proto::ShardId>>,
}

impl Outage {
    fn new(inner: MemoryStream) -> Self {
        Self { inner, down: false.into(), released: std::sync::Mutex::new(Vec::new()) }
    }
}

#[async_trait]
impl proto::ShardReader for Outage {
    async fn list_shards(&self) -> Result<Vec<proto::ShardInfo>, proto::ReadError> {
        self.inner.list_shards().await
    }
    async fn iterator(
        &self,
        shard: &proto::ShardId,
        from: &proto::StartingPosition,
    ) -> Result<proto::ShardIterator, proto::ReadError> {
        self.inner.iterator(shard, from).await
    }
    async fn read(
        &self,
        shard: &proto::ShardId,
        iterator: &proto::ShardIterator,
        limit: usize,
    ) -> Result<proto::ReadBatch, proto::ReadError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(proto::ReadError::Unavailable("planted outage".into()));
        }
        self.inner.read(shard, iterator, limit).await
    }
    fn release(&self, shard: &proto::ShardId) {
        self.released.lock().unwrap().push(shard.clone());
    }
}

#[tokio::test(start_paused = true)]
async fn a_caught_up_shard_that_cannot_be_read_shows_growing_lag() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    stream.put("k", br#"{"id":1}"#.to_vec());
    let reader = Arc::new(Outage::new(stream));
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: reader.clone(),
        warehouse: Arc::new(MemoryWarehouse::new()),
        mapper: Arc::new(mapper()),
    };
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    let lag = || sample(&node.metrics.gather(), "tributary_shard_lag_seconds{shard=\"shardId-000000000000\"}");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(lag(), Some(0.0), "caught up, and read every idle interval");
    reader.down.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(lag(), Some(0.0), "a short gap (a read back-off) is no lag");
    tokio::time::sleep(Duration::from_secs(50)).await;
    let behind = lag().unwrap();
    assert!(behind >= 59.0, "no read for a minute: at least that far behind, {behind}");
    node.kill().await;
}

/// Answers every commit to `table` with `WarehouseError::Unavailable` (a retryable outage).
struct Unavailable {
    inner: MemoryWarehouse,
    table: &'static str,
}

#[async_trait]
impl Warehouse for Unavailable {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        self.inner.ensure_table(table).await
    }
    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        if batch.table.name == self.table {
            return Err(WarehouseError::Unavailable("planted outage".into()));
        }
        self.inner.commit(batch).await
    }
    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        self.inner.prune_tombstones(table, retention).await
    }
}

#[tokio::test(start_paused = true)]
async fn commit_retries_are_counted_per_table_while_the_warehouse_is_unavailable() {
    let (stream, _) = numbered_stream(10);
    let inner = MemoryWarehouse::new();
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(Unavailable { inner: inner.clone(), table: "t" }),
        mapper: Arc::new(mapper()),
    };
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let text = node.metrics.gather();
    let retries = sample(&text, "tributary_commit_retries_total{table=\"t\"}").unwrap_or(0.0);
    assert!(retries >= 2.0, "every failed attempt counts (TributaryCommitsFailing reads it): {retries}\n{text}");
    assert_eq!(sample(&text, "tributary_commits_total{table=\"t\"}"), Some(0.0), "nothing committed\n{text}");
    assert!(inner.rows("t").is_empty());
    node.kill().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_lettered_record_still_checkpoints_its_position() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    stream.put("good", br#"{"id":1}"#.to_vec());
    let bad = stream.put("bad", b"not json".to_vec()).1;
    let leases = MemoryLeaseTable::new();
    let warehouse = MemoryWarehouse::new();
    let ports = ports(&leases, &stream, &warehouse);
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(warehouse.rows("t").len(), 1);
    assert_eq!(warehouse.rows(worker::DEAD_LETTER_TABLE).len(), 1);
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, Checkpoint::At(proto::Position::new(bad, 0)), "the dead letter is not re-read");
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_cannot_commit_gives_up_at_the_shutdown_deadline() {
    let (stream, _) = numbered_stream(10);
    let leases = MemoryLeaseTable::new();
    let (_gate, open) = watch::channel(false);
    let ports = NodePorts {
        table: Arc::new(leases.clone()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(Gated { inner: MemoryWarehouse::new(), open, only: None }),
        mapper: Arc::new(mapper()),
    };
    let mut config = node_config("n");
    config.shutdown_deadline = Duration::from_secs(2);
    let node = Node::start(config, ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(node.metrics.records_read.get() > 0, "rows wait in a commit that never returns");
    let stopped = tokio::time::timeout(Duration::from_secs(10), node.shutdown()).await;
    assert!(stopped.is_ok(), "the drain gave up at shutdown_deadline");
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, Checkpoint::TrimHorizon, "nothing committed, nothing checkpointed");
}

/// In real time: the gauge holds the wall clock of the read.
#[tokio::test]
async fn idle_reads_do_not_move_the_last_read_timestamp() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    stream.put("a", br#"{"id":1}"#.to_vec());
    let ports = NodePorts {
        table: Arc::new(MemoryLeaseTable::new()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(MemoryWarehouse::new()),
        mapper: Arc::new(mapper()),
    };
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    let series = "tributary_shard_last_read_timestamp_seconds{shard=\"shardId-000000000000\"}";
    let last_read = || sample(&node.metrics.gather(), series);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let first = last_read().expect("the first record was read");
    assert!(first > 0.0);
    // idle_read_interval is 500 ms: several reads that return nothing.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(last_read(), Some(first), "idle reads are not new records");
    stream.put("b", br#"{"id":2}"#.to_vec());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let second = last_read().expect("still reading");
    assert!(second > first, "a new record moves it: {first} then {second}");
    node.shutdown().await;
}

/// A node that is alive to the cluster (it heartbeats every second) and runs nothing; abort the
/// handle to let it die.
fn alive(leases: &MemoryLeaseTable, node: &WorkerId) -> tokio::task::JoinHandle<()> {
    let (leases, node) = (leases.clone(), node.clone());
    tokio::spawn(async move {
        let mut expected = None;
        loop {
            let written = leases.heartbeat(&node, expected, false).await.unwrap();
            expected = written.row(&node).map(|r| r.counter);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Shard 0's lease, created owned by `owner` (as a node's earlier life or another node left it).
async fn lease_of(leases: &MemoryLeaseTable, owner: &WorkerId) -> proto::Lease {
    let mut lease = proto::Lease::for_shard(&proto::ShardId::numbered(0), vec![], None, Checkpoint::TrimHorizon);
    lease.owner = Some(owner.clone());
    leases.create(&lease).await.unwrap();
    lease
}

#[tokio::test(start_paused = true)]
async fn the_leader_completes_a_handoff_whose_live_giver_never_clears_it() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let leases = MemoryLeaseTable::new();
    let shard = proto::ShardId::numbered(0);
    let (n, ghost) = (WorkerId::new("n"), WorkerId::new("ghost"));
    // The lease is ghost's; ghost is alive (it heartbeats every second) but never runs it.
    let lease = lease_of(&leases, &ghost).await;
    let heartbeats = alive(&leases, &ghost);
    let warehouse = MemoryWarehouse::new();
    let ports = ports(&leases, &stream, &warehouse);
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A handoff from ghost to n (what a leader's rebalance writes) that ghost never finishes.
    let change = proto::LeaseChange {
        owner: Some(Some(n.clone())),
        checkpoint_owner: Some(Some(ghost.clone())),
        ..Default::default()
    };
    leases.update(shard.as_str(), &proto::Expect::unchanged(&lease), &change).await.unwrap();
    stream.put("a", br#"{"id":1}"#.to_vec());
    stream.put("b", br#"{"id":2}"#.to_vec());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(warehouse.rows("t").is_empty(), "n waits for the giver");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(warehouse.rows("t").len(), 2, "the shard was consumed after the leader completed the handoff");
    let lease = leases.get(shard.as_str()).await.unwrap().unwrap();
    assert_eq!((lease.owner, lease.checkpoint_owner), (Some(n), None));
    heartbeats.abort();
    node.shutdown().await;
}

/// A node restarted under its id (a StatefulSet pod) resumes its own leases at once, even when
/// it becomes the leader: the leader plans only once it sees its own heartbeat, so its leases
/// are not taken for orphans and given to another node.
#[tokio::test(start_paused = true)]
async fn a_restarted_node_that_leads_keeps_its_own_leases() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let leases = MemoryLeaseTable::new();
    let shard = proto::ShardId::numbered(0);
    let (n, other) = (WorkerId::new("n"), WorkerId::new("other"));
    // n's lease from its previous life; `other` is alive (it heartbeats every second).
    lease_of(&leases, &n).await;
    let heartbeats = alive(&leases, &other);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let warehouse = MemoryWarehouse::new();
    let ports = ports(&leases, &stream, &warehouse);
    stream.put("a", br#"{"id":1}"#.to_vec());
    stream.put("b", br#"{"id":2}"#.to_vec());
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(node.is_leader().await, "n claimed the free leadership");
    let lease = leases.get(shard.as_str()).await.unwrap().unwrap();
    assert_eq!(lease.owner, Some(n), "the lease stayed with the node that owns it");
    assert_eq!(warehouse.rows("t").len(), 2, "and it consumed the shard at once");
    heartbeats.abort();
    node.shutdown().await;
}

/// Acknowledgements are matched to the chunk they belong to: a later chunk committed by
/// another sink (a dead letter) while an earlier chunk's commit still waits does not move the
/// checkpoint past the earlier chunk's uncommitted record.
#[tokio::test(start_paused = true)]
async fn a_later_chunk_committed_first_does_not_checkpoint_an_earlier_one() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let leases = MemoryLeaseTable::new();
    let warehouse = MemoryWarehouse::new();
    let (gate, open) = watch::channel(false);
    let ports = NodePorts {
        table: Arc::new(leases.clone()),
        reader: Arc::new(stream.clone()),
        warehouse: Arc::new(Gated { inner: warehouse.clone(), open, only: Some("t") }),
        mapper: Arc::new(mapper()),
    };
    stream.put("a", br#"{"id":1}"#.to_vec());
    let node = Node::start(node_config("n"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Read in a second chunk of its own, for the dead-letter sink, which commits at once.
    let (_, bad) = stream.put("b", b"not json".to_vec());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(warehouse.rows(worker::DEAD_LETTER_TABLE).len(), 1, "the later chunk committed");
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, Checkpoint::TrimHorizon, "the earlier chunk has not committed");
    gate.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(warehouse.rows("t").len(), 1);
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, Checkpoint::At(proto::Position::new(bad, 0)));
    node.shutdown().await;
}

/// A checkpoint held back by `checkpoint_interval` is written when the interval ends, not at
/// the next read: with reads of an idle shard 20 s apart, the checkpoint of its last committed
/// record still lands 5 s after the consumer started.
#[tokio::test(start_paused = true)]
async fn a_deferred_checkpoint_is_written_when_the_interval_ends() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let leases = MemoryLeaseTable::new();
    let warehouse = MemoryWarehouse::new();
    let (_, seq) = stream.put("a", br#"{"id":1}"#.to_vec());
    let mut config = node_config("n");
    config.consumer.checkpoint_interval = Duration::from_secs(5);
    config.consumer.idle_read_interval = Duration::from_secs(20);
    let node = Node::start(config, ports(&leases, &stream, &warehouse), EventSink::none()).await.unwrap();
    let checkpoint = || async { leases.get("shardId-000000000000").await.unwrap().unwrap().checkpoint };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(warehouse.rows("t").len(), 1);
    assert_eq!(checkpoint().await, Checkpoint::TrimHorizon, "committed, its checkpoint waits for the interval");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(checkpoint().await, Checkpoint::At(proto::Position::new(seq, 0)), "written as the interval ended");
    node.shutdown().await;
}

/// At a shard's end its consumer creates the children's leases itself (from the last read's
/// child shards) and the node starts them at once: no wait for the leader's next shard sync.
#[tokio::test(start_paused = true)]
async fn a_consumer_creates_its_children_at_shard_end() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let (leases, warehouse) = (MemoryLeaseTable::new(), MemoryWarehouse::new());
    let mut config = node_config("n");
    config.cluster.shard_sync_interval = Duration::from_secs(600);
    let node = Node::start(config, ports(&leases, &stream, &warehouse), EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let parent = proto::ShardId::numbered(0);
    stream.split(&parent, u128::MAX / 2).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let children: Vec<String> = leases
        .rows()
        .into_iter()
        .filter(|l| l.parent_shard_ids == vec![parent.clone()] && l.owner.is_some())
        .map(|l| l.key)
        .collect();
    assert_eq!(children.len(), 2, "both children created and running: {:?}", leases.rows());
    node.shutdown().await;
}

/// One record committed, then a handoff from node `n` to a live `y` written as the leader writes
/// it (owner: the taker, checkpointOwner: `n`; a change announced when `announced`) `handed_at`
/// after the node started: `settle` later
/// the handoff is finished, with the committed record as the checkpoint.
async fn a_handoff_is_finished_with_what_committed(
    config: NodeConfig,
    handed_at: Duration,
    settle: Duration,
    announced: bool,
) {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let (leases, warehouse) = (MemoryLeaseTable::new(), MemoryWarehouse::new());
    let (_, seq) = stream.put("a", br#"{"id":1}"#.to_vec());
    let node = Node::start(config, ports(&leases, &stream, &warehouse), EventSink::none()).await.unwrap();
    tokio::time::sleep(handed_at).await;
    assert_eq!(warehouse.rows("t").len(), 1);
    let (n, y) = (WorkerId::new("n"), WorkerId::new("y"));
    let taker = alive(&leases, &y);
    let key = proto::ShardId::numbered(0);
    let lease = leases.get(key.as_str()).await.unwrap().unwrap();
    assert_eq!((lease.owner.as_ref(), &lease.checkpoint), (Some(&n), &Checkpoint::TrimHorizon));
    let handoff =
        proto::LeaseChange { owner: Some(Some(y.clone())), checkpoint_owner: Some(Some(n)), ..Default::default() };
    leases.update(key.as_str(), &proto::Expect::unchanged(&lease), &handoff).await.unwrap();
    if announced {
        leases.announce_change().await.unwrap();
    }
    tokio::time::sleep(settle).await;
    let lease = leases.get(key.as_str()).await.unwrap().unwrap();
    assert_eq!((lease.owner, lease.checkpoint_owner), (Some(y), None), "the handoff is finished");
    assert_eq!(lease.checkpoint, Checkpoint::At(proto::Position::new(seq, 0)), "with what it committed");
    taker.abort();
    node.shutdown().await;
}

/// A handoff written by the leader is finished by the running consumer at once: it flushes,
/// checkpoints what it committed and clears checkpointOwner, so the taker starts within a
/// second, not after a stalled-handoff wait.
#[tokio::test(start_paused = true)]
async fn a_running_consumer_finishes_its_handoff_at_once() {
    // Committed but not yet checkpointed when the handoff comes: only the consumer knows it.
    let mut config = node_config("n");
    config.consumer.checkpoint_interval = Duration::from_secs(60);
    a_handoff_is_finished_with_what_committed(config, Duration::from_secs(3), Duration::from_secs(1), true).await;
}

/// A handoff the consumer learns of from its own checkpoint write (the leader moved the lease
/// and its announcement of the change failed, so the keeper does not look at its leases before
/// the checkpoint is due) is finished all the same: the consumer flushes, writes what it
/// committed and clears checkpointOwner. It does not stop as "lost" and leave the taker to start
/// from an older checkpoint, re-sending what was committed since.
#[tokio::test(start_paused = true)]
async fn a_handoff_met_by_a_checkpoint_write_is_finished_with_what_committed() {
    let mut config = node_config("n");
    // The consumer starts at 0.5 s (the leader's first cycle, announced: the keeper looks for
    // 2 s more); the committed record's checkpoint is due 3 s later. The handoff comes at 3 s,
    // unannounced: the keeper's next look is a failover time away, so only the checkpoint write
    // meets it, by 4.5 s.
    config.consumer.checkpoint_interval = Duration::from_secs(3);
    a_handoff_is_finished_with_what_committed(config, Duration::from_secs(3), Duration::from_millis(1_500), false)
        .await;
}

/// Stopping and ending each take one write of the lease, even when the last commit lands while
/// the consumer is stopping or ending: the release carries the committed checkpoint, and so
/// does SHARD_END, with no checkpoint write of their own before (the lease's counter counts
/// its writes; checkpoints are otherwise written at once here).
#[tokio::test(start_paused = true)]
async fn a_stop_and_a_shard_end_each_write_the_lease_once() {
    for end in [false, true] {
        let stream = MemoryStream::new(1, Clock::starting_at(0));
        let (leases, warehouse) = (MemoryLeaseTable::new(), MemoryWarehouse::new());
        let (gate, open) = watch::channel(false);
        let ports = NodePorts {
            table: Arc::new(leases.clone()),
            reader: Arc::new(stream.clone()),
            warehouse: Arc::new(Gated { inner: warehouse.clone(), open, only: None }),
            mapper: Arc::new(mapper()),
        };
        let (_, seq) = stream.put("a", br#"{"id":1}"#.to_vec());
        let mut config = node_config("n");
        config.consumer.checkpoint_interval = Duration::ZERO;
        config.cluster.shard_sync_interval = Duration::from_secs(600);
        let mut node = Some(Node::start(config, ports, EventSink::none()).await.unwrap());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let key = proto::ShardId::numbered(0);
        let before = leases.get(key.as_str()).await.unwrap().unwrap();
        assert_eq!((before.counter, &before.checkpoint), (1, &Checkpoint::TrimHorizon), "assigned; the commit waits");
        let stop = if end {
            stream.split(&key, u128::MAX / 2).unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            None
        } else {
            let stopping = node.take().expect("running");
            let stop = tokio::spawn(async move { stopping.shutdown().await });
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some(stop)
        };
        // The commit lands now, while the consumer stops (or waits to end its shard).
        gate.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Some(stop) = stop {
            stop.await.unwrap();
        }
        let after = leases.get(key.as_str()).await.unwrap().unwrap();
        let want = if end { Checkpoint::ShardEnd } else { Checkpoint::At(proto::Position::new(seq, 0)) };
        assert_eq!((after.counter, after.checkpoint), (2, want), "end {end}: one write");
        if let Some(node) = node {
            node.shutdown().await;
        }
    }
}

/// `initial_position = "at_timestamp"`: a shard without a checkpoint starts at the first record
/// that arrived at or after `initial_timestamp`; what came before is not read.
#[tokio::test(start_paused = true)]
async fn a_lease_created_at_a_timestamp_starts_there() {
    let stream = MemoryStream::new(1, Clock::starting_at(0));
    let (leases, warehouse) = (MemoryLeaseTable::new(), MemoryWarehouse::new());
    stream.put("a", br#"{"id":1}"#.to_vec());
    tokio::time::sleep(Duration::from_secs(10)).await;
    stream.put("a", br#"{"id":2}"#.to_vec());
    let mut config = node_config("n");
    config.cluster.initial_position = Checkpoint::AtTimestamp;
    config.consumer.initial_timestamp = Some(5_000);
    let node = Node::start(config, ports(&leases, &stream, &warehouse), EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ids: Vec<String> = warehouse.rows("t").into_keys().collect();
    assert_eq!(ids.len(), 1, "only the record after the timestamp: {ids:?}");
    let lease = leases.get("shardId-000000000000").await.unwrap().unwrap();
    assert!(matches!(lease.checkpoint, Checkpoint::At(_)), "checkpointed past it: {:?}", lease.checkpoint);
    node.shutdown().await;
}

fn table_pipeline(table: &str) -> Arc<Pipeline> {
    let text = format!(
        "[[table]]\nname = \"{table}\"\nkey = [\"id\"]\ncolumn = [{{ name = \"id\", from = \"id\", type = \"bigint\" }}]\n"
    );
    Arc::new(Pipeline::without_references(&PipelineConfig::from_toml(&text).unwrap()).unwrap())
}

/// Two streams in one multi-stream lease table, on two nodes: every shard of both (one stream
/// split while read) is consumed into its own stream's table, the leases are keyed
/// `<stream>:<shard>` as KCL's multi-stream ones, and the lease of a stream neither node
/// consumes (one removed from the config) is left as it was.
#[tokio::test(start_paused = true)]
async fn two_streams_share_one_lease_table_and_the_cluster() {
    let (orders, clicks) = (MemoryStream::new(2, Clock::starting_at(0)), MemoryStream::new(1, Clock::starting_at(0)));
    for i in 0..40 {
        orders.put(&format!("o{i}"), format!(r#"{{"id":{i}}}"#).into_bytes());
        clicks.put(&format!("c{i}"), format!(r#"{{"id":{}}}"#, 1000 + i).into_bytes());
    }
    let leases = MemoryLeaseTable::new();
    let mut removed = proto::Lease::for_stream_shard(
        Some("111122223333:gone:1600000000"),
        &proto::ShardId::numbered(0),
        vec![],
        None,
        Checkpoint::TrimHorizon,
    );
    removed.owner = Some(WorkerId::new("old-node"));
    leases.create(&removed).await.unwrap();
    let warehouse = MemoryWarehouse::new();
    let ports = worker::Ports {
        table: Arc::new(leases.clone()),
        warehouse: Arc::new(warehouse.clone()),
        streams: vec![
            worker::StreamPorts {
                id: Some("111122223333:orders:1700000000".into()),
                reader: Arc::new(orders.clone()),
                mapper: table_pipeline("orders"),
                initial_position: None,
            },
            worker::StreamPorts {
                id: Some("111122223333:clicks:1700000001".into()),
                reader: Arc::new(clicks.clone()),
                mapper: table_pipeline("clicks"),
                initial_position: None,
            },
        ],
    };
    let a = Node::start(node_config("a"), ports.clone(), EventSink::none()).await.unwrap();
    let b = Node::start(node_config("b"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    clicks.split(&proto::ShardId::numbered(0), u128::MAX / 2).unwrap();
    for i in 40..60 {
        clicks.put(&format!("c{i}"), format!(r#"{{"id":{}}}"#, 1000 + i).into_bytes());
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(warehouse.rows("orders").len(), 40);
    assert_eq!(warehouse.rows("clicks").len(), 60, "the split stream's children consumed too");
    let all = leases.scan().await.unwrap();
    let mut keys: Vec<&str> = all.iter().map(|l| l.key.as_str()).collect();
    keys.sort();
    // The split parent's lease went once both children checkpointed (found by its children's
    // keys in its stream).
    assert_eq!(
        keys,
        [
            "111122223333:clicks:1700000001:shardId-000000000001",
            "111122223333:clicks:1700000001:shardId-000000000002",
            "111122223333:gone:1600000000:shardId-000000000000",
            "111122223333:orders:1700000000:shardId-000000000000",
            "111122223333:orders:1700000000:shardId-000000000001",
        ]
    );
    let gone = all.iter().find(|l| l.stream() == Some("111122223333:gone:1600000000")).unwrap();
    assert_eq!(gone, &removed, "a removed stream's lease is left alone");
    let owners: std::collections::BTreeSet<&str> =
        all.iter().filter(|l| !l.is_finished()).filter_map(|l| l.owner.as_ref().map(|o| o.as_str())).collect();
    assert_eq!(owners, ["a", "b", "old-node"].into(), "both nodes share the shards of both streams");
    a.shutdown().await;
    b.shutdown().await;
}

/// What a reader holds open for a shard (an enhanced fan-out subscription) is let go however
/// the consumer ends: stopped at once because another node took the lease (a killed actor's
/// `post_stop` does not run), or gracefully at shutdown.
#[tokio::test(start_paused = true)]
async fn a_stopped_consumer_lets_its_readers_hold_on_the_shard_go() {
    let (stream, _) = numbered_stream(10);
    let leases = MemoryLeaseTable::new();
    let reader = Arc::new(Outage::new(stream));
    let ports = NodePorts {
        table: Arc::new(leases.clone()),
        reader: reader.clone(),
        warehouse: Arc::new(MemoryWarehouse::new()),
        mapper: Arc::new(mapper()),
    };
    let node = Node::start(node_config("a"), ports, EventSink::none()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node.owned().await.len(), 1);
    // Another node takes the lease outright (as the leader does after this one was declared
    // dead, announcing the change).
    let lease = leases.scan().await.unwrap().remove(0);
    let take = proto::LeaseChange { owner: Some(Some(WorkerId::new("b"))), ..proto::LeaseChange::default() };
    leases.update(&lease.key, &proto::Expect::unchanged(&lease), &take).await.unwrap();
    leases.announce_change().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(node.owned().await.is_empty());
    assert_eq!(*reader.released.lock().unwrap(), [proto::ShardId::numbered(0)]);
    node.shutdown().await;
}
