//! `tributary run --config FILE`: one node of a cluster on the real services. Builds the ports
//! (Kinesis, the DynamoDB lease table, DynamoDB reference tables, PostgreSQL or SQLite), starts
//! the node, and on `shutdown` (SIGTERM / Ctrl-C) stops it gracefully: flush, checkpoint,
//! release, heartbeat row removed. Returns an error if the node stopped on its own.

use crate::metrics_server::Served;
use crate::run_config::{ConsumerKind, PostgresSection, RunConfig, SqliteSection, WarehouseSection};
use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::dynamodb_reference::DynamoReferenceSource;
use adapters::kinesis::Kinesis;
use adapters::kinesis_fan_out::KinesisFanOut;
use adapters::postgres::{Host, PostgresConfig, SslMode};
use adapters::redshift_data::{RedshiftDataConfig, RedshiftDataWarehouse};
use anyhow::Context;
use coordinator::EventSink;
use proto::{LeaseTable, ReferenceSource, ShardReader, Warehouse, WorkerId};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use worker::observed::{Observed, ObservedReferences};
use worker::reference_set::ReferenceSet;
use worker::{Node, NodeConfig, NodeMetrics, Pipeline, Ports, StreamPorts};

/// The PostgreSQL settings: the config's connection string, completed from libpq's variables
/// where it is silent — `PGPASSWORD`, `PGSSLMODE` (every mode that asks for TLS gets it verified,
/// as verify-full; the others are plain) — and the extra root certificates of `PGSSLROOTCERT`.
fn postgres_config(url: &str) -> anyhow::Result<(PostgresConfig, Option<PathBuf>)> {
    // Validated at load: the string parses.
    let mut pg: PostgresConfig = url.parse().context("warehouse.url")?;
    if let (Ok(password), None) = (std::env::var("PGPASSWORD"), pg.get_password()) {
        pg.password(password);
    }
    if let (Ok(mode), false) = (std::env::var("PGSSLMODE"), url.contains("sslmode")) {
        pg.ssl_mode(match mode.as_str() {
            "require" | "verify-ca" | "verify-full" => SslMode::Require,
            "disable" | "allow" | "prefer" => SslMode::Disable,
            other => anyhow::bail!("PGSSLMODE: unknown mode {other:?}"),
        });
    }
    let local = pg.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => name == "localhost" || name.starts_with("127.") || name == "::1",
        _ => true,
    });
    if !local && pg.get_ssl_mode() != SslMode::Require {
        tracing::warn!("the warehouse connection is not encrypted (set sslmode=require)");
    }
    Ok((pg, std::env::var_os("PGSSLROOTCERT").map(PathBuf::from)))
}

/// The warehouse `[warehouse]` names, reached through `sdk`, and the service name its failed
/// calls count under.
pub async fn warehouse(
    config: &RunConfig,
    sdk: &aws_config::SdkConfig,
) -> anyhow::Result<(Arc<dyn Warehouse>, &'static str)> {
    Ok(match &config.warehouse {
        WarehouseSection::Postgres(PostgresSection { url }) => {
            let (pg, roots) = postgres_config(url)?;
            let warehouse = adapters::postgres::PostgresWarehouse::connect_with(pg, roots.as_deref())
                .await
                .context("warehouse: cannot connect to postgresql")?;
            (Arc::new(warehouse), "postgres")
        }
        WarehouseSection::Redshift(w) => {
            let node = config.worker_id();
            let config = RedshiftDataConfig {
                target: w.target.clone(),
                database: w.database.clone(),
                secret_arn: w.secret_arn.clone(),
                db_user: w.db_user.clone(),
                timeout: Duration::from_secs(600),
                lock_tables: w.lock_tables,
                load: w.load.clone(),
            };
            (Arc::new(RedshiftDataWarehouse::new(sdk, config, &node)), "redshift_data")
        }
        WarehouseSection::Sqlite(SqliteSection { url }) => {
            let warehouse = adapters::sqlite::SqliteWarehouse::open(std::path::Path::new(url))
                .with_context(|| format!("warehouse: cannot open {url}"))?;
            (Arc::new(warehouse), "sqlite")
        }
    })
}

/// A node that started, with what its stop needs.
struct Started {
    me: WorkerId,
    node: Node,
    table: Arc<DynamoLeaseTable>,
    metrics: Arc<NodeMetrics>,
    stop_metrics: tokio::sync::oneshot::Sender<()>,
    metrics_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Serves metrics, then connects to everything and starts the node, waiting out outages (a
/// service unreachable or failing in a way worth retrying) with a backoff up to 15 s: a node
/// started during an outage joins once it ends. Nothing is held until the node's keeper runs, so
/// a stop before then needs no drain.
async fn start(config: &RunConfig) -> anyhow::Result<Started> {
    let me = WorkerId::new(config.worker_id());
    // Every failed call to AWS or the warehouse counts in the node's metrics, by service.
    let metrics = Arc::new(NodeMetrics::default());
    // Bound first: a port in use fails the start, naming the field. Served from now on: alive
    // while the node reaches AWS and loads its reference tables (minutes for large ones), ready
    // once the node runs; a node that keeps failing at start is seen restarting.
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match &config.metrics {
        Some(m) => {
            let listener = tokio::net::TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("metrics.listen {}", m.listen))?;
            if let Ok(addr) = listener.local_addr() {
                eprintln!("tributary: metrics on http://{addr}/metrics");
            }
            let served = Served { node: metrics.clone(), heartbeat_stale_after: config.cluster.failover_time };
            let stopped = async move {
                let _ = metrics_stopped.await;
            };
            Some(tokio::spawn(crate::metrics_server::serve(listener, served, stopped)))
        }
        None => None,
    };
    let mut wait = Duration::from_secs(1);
    loop {
        match connect(config, &me, &metrics).await {
            Ok((node, table)) => return Ok(Started { me, node, table, metrics, stop_metrics, metrics_task }),
            // A service down or unreachable: the node joins once it is back, not restarted in a
            // loop by its supervisor. A wrong config or a refusal still fails the start here.
            Err(e) if outage(&e) => {
                warn!(error = %format!("{e:#}"), again_in = ?wait, "cannot start yet (a service is unreachable)");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(15));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a failed start is an outage (a call that may succeed if made again) rather than a
/// config or permission error.
fn outage(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<proto::ReadError>().is_some_and(proto::ReadError::is_retryable)
            || cause.downcast_ref::<proto::LeaseError>().is_some_and(proto::LeaseError::is_retryable)
            || cause.downcast_ref::<proto::WarehouseError>().is_some_and(proto::WarehouseError::is_retryable)
            || matches!(cause.downcast_ref::<proto::ReferenceError>(), Some(proto::ReferenceError::Unavailable(_)))
    })
}

/// Reaches every service the node needs and starts the node.
async fn connect(
    config: &RunConfig,
    me: &WorkerId,
    metrics: &Arc<NodeMetrics>,
) -> anyhow::Result<(Node, Arc<DynamoLeaseTable>)> {
    let sdk = adapters::aws::load_config().await;
    // Resolved once now (cached by the SDK afterwards): no credentials fails at start with the
    // chain's reason, and the first lease-table call does not spend its short attempt on it.
    adapters::aws::check_credentials(&sdk).await.map_err(|e| anyhow::anyhow!("aws credentials: {e}"))?;
    let table = DynamoLeaseTable::with_attempt_timeout(
        &sdk,
        &config.lease_table.name,
        (config.cluster.failover_time / 3).max(Duration::from_secs(1)),
    );
    table.ensure_table().await.with_context(|| format!("lease table {}", config.lease_table.name))?;
    let leases = table.scan().await.with_context(|| format!("lease table {}", config.lease_table.name))?;
    let keys: Vec<&str> = leases.iter().map(|l| l.key.as_str()).collect();
    if let Some(why) = crate::run_config::layout_conflict(config.multi_stream, &keys) {
        anyhow::bail!("lease table {} {why}", config.lease_table.name);
    }
    let table = Arc::new(table);
    let source: Arc<dyn ReferenceSource> = Arc::new(DynamoReferenceSource::new(&sdk));
    let source = ObservedReferences::new(source, "dynamodb", "dynamodb_streams", metrics.clone());
    // Reference tables are shared by every stream's pipeline.
    let specs = config.reference_specs();
    let references = ReferenceSet::start(Arc::new(source), &specs).await.context("reference tables")?;
    let references = Arc::new(references);
    metrics.watch_references(references.clone());
    let (warehouse, warehouse_service) = warehouse(config, &sdk).await?;
    let mut streams = Vec::new();
    let mut longest_retention = Duration::ZERO;
    let hours = |d: Duration| format!("{:.1}h", d.as_secs_f64() / 3_600.0);
    for stream in &config.streams {
        let name = &stream.section.name;
        let retention = Kinesis::new(&sdk, name).retention().await.with_context(|| format!("stream {name}"))?;
        longest_retention = longest_retention.max(retention);
        if let Some(kept) = config.sink.tombstone_retention.filter(|kept| *kept < retention) {
            anyhow::bail!(
                "node.tombstone_retention: {} is shorter than the retention of stream {name} ({}): a replay could \
                 bring deleted rows back",
                hours(kept),
                hours(retention)
            );
        }
        let mapper =
            Pipeline::new(&stream.pipeline, references.clone()).with_context(|| format!("stream {name}: pipeline"))?;
        let kinesis = Kinesis::new(&sdk, name);
        // In a multi-stream table a stream's leases are keyed by its identifier.
        let id = match config.multi_stream {
            true => Some(kinesis.stream_identifier().await.with_context(|| format!("stream {name}"))?),
            false => None,
        };
        if let Some(id) = &id {
            // One stream written twice (by name and by ARN) would have one pipeline never run.
            anyhow::ensure!(
                !streams.iter().any(|s: &StreamPorts| s.id.as_ref() == Some(id)),
                "stream {name} is listed twice (as {id})"
            );
        }
        let reader: Arc<dyn ShardReader> = match stream.consumer_name(&config.lease_table.name) {
            None => Arc::new(kinesis),
            Some(consumer) => {
                let fan_out = KinesisFanOut::new(kinesis, consumer)
                    .register()
                    .await
                    .with_context(|| format!("stream consumer {consumer} (enhanced fan-out) of {name}"))?;
                info!(stream = %name, consumer = fan_out.consumer_arn(), "reading by enhanced fan-out");
                Arc::new(fan_out)
            }
        };
        streams.push(StreamPorts {
            id,
            reader: Arc::new(Observed::new(reader, "kinesis", metrics.clone())),
            mapper: Arc::new(mapper),
            initial_position: stream.start.clone(),
        });
    }
    let lease_table: Arc<dyn LeaseTable> = table.clone();
    let ports = Ports {
        table: Arc::new(Observed::new(lease_table, "dynamodb", metrics.clone())),
        warehouse: Arc::new(Observed::new(warehouse, warehouse_service, metrics.clone())),
        streams,
    };
    let mut node_config = NodeConfig::new(me.clone(), config.cluster.clone());
    node_config.consumer = config.consumer.clone();
    node_config.sink = config.sink.clone();
    // Absent: the longest a replay can reach back (the streams' retention), and an hour more.
    node_config.sink.tombstone_retention =
        Some(config.sink.tombstone_retention.unwrap_or(longest_retention + Duration::from_secs(3_600)));
    node_config.shutdown_deadline = config.node.shutdown_deadline;
    let node = Node::start_with_metrics(node_config, ports, EventSink::none(), metrics.clone()).await?;
    Ok((node, table))
}

/// Runs one node until `shutdown` resolves (then stops it gracefully, within the config's
/// `shutdown_deadline` and a few seconds for the lease table) or it fails. A `shutdown` while
/// the node starts (credentials, lease table, reference tables, warehouse) ends the run at once.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    tokio::pin!(shutdown);
    let Started { me, node, table, metrics, stop_metrics, metrics_task } = tokio::select! {
        node = start(&config) => node?,
        () = &mut shutdown => {
            eprintln!("tributary: stopped while starting (no lease was held)");
            return Ok(());
        }
    };
    let reading: Vec<String> = config
        .streams
        .iter()
        .map(|s| match s.section.consumer {
            ConsumerKind::Polling => format!("{} by polling", s.section.name),
            ConsumerKind::Efo => format!("{} by enhanced fan-out", s.section.name),
        })
        .collect();
    let reading = reading.join(", ");
    info!(node = %me, streams = %reading, lease_table = %config.lease_table.name, "node started");
    eprintln!("tributary: node {me} consuming {reading} (lease table {})", config.lease_table.name);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                if node.is_finished() {
                    anyhow::bail!("node {me} stopped after a failure (see the log)");
                }
            }
        }
    }
    let stopping = tokio::time::Instant::now();
    eprintln!("tributary: stopping node {me}: flushing, checkpointing, releasing leases");
    // The consumers' flush is bounded by shutdown_deadline; the lease-table writes around it
    // (leadership, releases, heartbeat row) get a few seconds more, and no longer: a drain that
    // cannot finish leaves its leases to fail over rather than outlive the pod's grace period.
    let bound = config.node.shutdown_deadline + DRAIN_MARGIN;
    let drained = tokio::time::timeout(bound, node.shutdown()).await;
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    let calls = table.call_counts();
    eprintln!(
        "tributary: node {me} stopped in {:.2}s; lease table: {} reads, {} writes in {:.1}s; \
         rows already in the warehouse (re-sent or older versions): {}",
        stopping.elapsed().as_secs_f64(),
        calls.reads,
        calls.writes,
        started.elapsed().as_secs_f64(),
        metrics.fenced_rows_text()
    );
    drained.map_err(|_| anyhow::anyhow!("node {me} did not drain in {bound:?}; its leases fail over"))
}

/// How long a drain may take beyond `shutdown_deadline` (the lease-table writes around the
/// consumers' flush). The Helm chart keeps the pod's grace period above the two.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled: as PID 1 in a container a signal without a handler is dropped.
pub fn signals() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (term, interrupt) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README: `PGSSLMODE=require` (like `sslmode=require` in `url`) means TLS, the password
    /// comes from `PGPASSWORD`, extra roots from `PGSSLROOTCERT`. The only test of this binary
    /// that sets these variables; it puts back what was there.
    #[test]
    fn libpq_variables_complete_the_connection_string() {
        const VARS: [&str; 3] = ["PGSSLMODE", "PGPASSWORD", "PGSSLROOTCERT"];
        let before: Vec<_> = VARS.iter().map(std::env::var_os).collect();
        std::env::set_var("PGPASSWORD", "s3cret");
        std::env::set_var("PGSSLROOTCERT", "/etc/ssl/rds-bundle.pem");
        let outcome = std::panic::catch_unwind(|| {
            std::env::set_var("PGSSLMODE", "require");
            let (pg, roots) = postgres_config("host=db").unwrap();
            assert_eq!(pg.get_ssl_mode(), SslMode::Require);
            assert_eq!(pg.get_password(), Some(&b"s3cret"[..]));
            assert_eq!(roots, Some(PathBuf::from("/etc/ssl/rds-bundle.pem")));
            // Modes that do not insist on TLS are plain.
            std::env::set_var("PGSSLMODE", "prefer");
            assert_eq!(postgres_config("host=db").unwrap().0.get_ssl_mode(), SslMode::Disable);
            // The connection string wins over the environment.
            std::env::set_var("PGSSLMODE", "require");
            assert_eq!(postgres_config("host=db sslmode=disable").unwrap().0.get_ssl_mode(), SslMode::Disable);
            std::env::set_var("PGSSLMODE", "verify-maybe");
            let e = postgres_config("host=db").unwrap_err().to_string();
            assert!(e.contains("PGSSLMODE") && e.contains("verify-maybe"), "{e}");
        });
        for (var, value) in VARS.iter().zip(before) {
            match value {
                Some(v) => std::env::set_var(var, v),
                None => std::env::remove_var(var),
            }
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
