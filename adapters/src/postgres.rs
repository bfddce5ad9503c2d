//! PostgreSQL (15+) behind the `Warehouse` port, over tokio-postgres: one transaction per batch
//! running the shared commit plan (`commit_plan.rs`, the same statements Redshift runs), the
//! batch staged into a temporary table by `COPY … FROM STDIN` in the binary format (or, for
//! comparison, by multi-row parameterized INSERTs), commits to a table taking turns by an
//! advisory lock.
//!
//! TLS: `sslmode=require` in the connection string turns it on, and then the server's
//! certificate chain and host name are always verified (libpq's `verify-full`), against the
//! system's roots plus an extra PEM file (`run` takes it from `PGSSLROOTCERT`: RDS and private
//! CAs). Without it
//! the connection is plain TCP (`prefer` does not fall back silently to an unverified TLS).

use crate::column_check::{expected_columns, missing_columns};
use crate::commit_plan::{CommitPlan, Step};
use crate::dialect::Dialect;
use crate::merge_sql::{stage_row, MergeSql, MergeSqlCache};
use crate::tombstone_prune::prune_statements;
use crate::warehouse_ddl::create_tables;
use async_trait::async_trait;
use proto::{Batch, CommitStats, SqlType, TableSchema, Value, Warehouse, WarehouseError};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Socket, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::warn;

/// The protocol's limit on bound parameters per statement.
const MAX_PARAMS: usize = 65_535;

/// The connection settings `run` builds (parsed from the config, password from `PGPASSWORD`).
pub use tokio_postgres::config::{Host, SslMode};
pub use tokio_postgres::Config as PostgresConfig;

/// How a batch's rows enter the stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Staging {
    /// `COPY … FROM STDIN (FORMAT binary)`: one stream of rows, no SQL per row.
    #[default]
    Copy,
    /// Multi-row INSERTs of bound parameters (65,535 values per statement): the earlier path,
    /// kept for the benchmarks' comparison.
    Inserts,
}

pub struct PostgresWarehouse {
    config: tokio_postgres::Config,
    staging: Staging,
    /// Set when the configuration asks for TLS.
    tls: Option<MakeRustlsConnect>,
    client: Mutex<Option<Client>>,
    sql: MergeSqlCache,
}

#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Float(f) => f.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Timestamp(ms) => {
                let offset = std::time::Duration::from_millis(ms.unsigned_abs());
                let t = if *ms >= 0 { std::time::UNIX_EPOCH + offset } else { std::time::UNIX_EPOCH - offset };
                t.to_sql(ty, out)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Connection trouble may leave a commit's outcome unknown; SQL errors are final, except
/// serialization failures and deadlocks, which are retried.
fn classify(e: tokio_postgres::Error, committing: bool) -> WarehouseError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        if code == "40001" || code == "40P01" || code.starts_with("08") || code.starts_with("57") {
            return WarehouseError::Unavailable(db.message().to_lowercase());
        }
        return WarehouseError::Rejected(format!("{}: {}", db.code().code(), db.message()).to_lowercase());
    }
    let text = crate::error_chain(&e);
    if refused_certificate(&e) {
        // Retrying cannot change the server's certificate: a configuration error.
        return WarehouseError::Rejected(text.to_lowercase());
    }
    if committing && e.is_closed() {
        WarehouseError::Ambiguous(text.to_lowercase())
    } else {
        WarehouseError::Unavailable(text.to_lowercase())
    }
}

/// Whether the TLS handshake refused the server's certificate (untrusted, expired, or for
/// another host name), anywhere in the error's chain (rustls's error travels inside an I/O error).
fn refused_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if matches!(err.downcast_ref::<rustls::Error>(), Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            if refused_certificate(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// A verifying TLS connector: the system's root certificates plus those of `extra_roots` (PEM).
pub fn tls_connector(extra_roots: Option<&std::path::Path>) -> Result<MakeRustlsConnect, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_roots {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("PGSSLROOTCERT {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("PGSSLROOTCERT {}: no certificate in the file", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("PGSSLROOTCERT {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("sslmode=require but no root certificate to verify the server with (set PGSSLROOTCERT)".into());
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Connects and drives the connection on its own task.
async fn open<T>(config: &tokio_postgres::Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "postgresql connection closed");
        }
    });
    Ok(client)
}

impl PostgresWarehouse {
    /// `config` is a libpq-style string (`host=… port=… user=… dbname=…`) or a URL.
    pub async fn connect(config: &str) -> Result<Self, WarehouseError> {
        let config = config
            .parse::<tokio_postgres::Config>()
            .map_err(|e| WarehouseError::Rejected(format!("bad postgresql connection string: {e}")))?;
        Self::connect_with(config, None).await
    }

    /// Connects with a parsed configuration (the password set apart from the string, so it
    /// never sits in text that an error message could quote); with TLS, the server is verified
    /// against the system's roots plus those in `extra_roots` (PEM).
    pub async fn connect_with(
        config: tokio_postgres::Config,
        extra_roots: Option<&std::path::Path>,
    ) -> Result<Self, WarehouseError> {
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => {
                Some(tls_connector(extra_roots).map_err(WarehouseError::Rejected)?)
            }
            _ => None,
        };
        let sql = MergeSqlCache::new(Dialect::Postgres);
        let w = Self { config, staging: Staging::default(), tls, client: Mutex::new(None), sql };
        drop(w.client().await?);
        Ok(w)
    }

    /// Stages rows as `staging` says (the benchmarks compare the two).
    pub fn with_staging(mut self, staging: Staging) -> Self {
        self.staging = staging;
        self
    }

    /// The live client, connecting again if the last connection dropped.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, WarehouseError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let client = match &self.tls {
                Some(tls) => open(&self.config, tls.clone()).await,
                None => open(&self.config, NoTls).await,
            };
            *guard = Some(client.map_err(|e| classify(e, false))?);
        }
        Ok(guard)
    }

    /// Runs a query and returns its rows as text (for tests and checks).
    pub async fn query_text(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected");
        let rows = client.simple_query(sql).await.map_err(|e| classify(e, false))?;
        Ok(rows
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect())
    }
}

/// For this transaction only: PostgreSQL's default `random_page_cost` (4, a spinning disk's)
/// makes the planner answer "which of these keys does the table hold" for a batch of thousands
/// of keys by hashing the whole table, so a commit's time grows with the table (160 ms against
/// 300,000 rows for 9,400 keys, measured); priced as on SSDs and cached pages (1.1, the usual
/// setting for them) it probes the key index (16 ms), whatever the table's size.
pub const PLAN_BY_INDEX: &str = "SET LOCAL random_page_cost = 1.1";

/// For this transaction only: its COMMIT returns once the commit is in the write-ahead log, so
/// a crash of the server cannot lose it — whatever the server's or the role's default. The
/// checkpoint that follows a commit would otherwise move past rows a crash then loses (measured:
/// with `synchronous_commit = off`, an immediate shutdown under load lost 35–85 acknowledged
/// rows; `tests/chaos_processes.rs`).
pub const DURABLE_COMMIT: &str = "SET LOCAL synchronous_commit = on";

/// The advisory-lock key under which tables are created ("tributar" in ASCII).
const DDL_LOCK_KEY: i64 = 0x7472_6962_7574_6172;

#[async_trait]
impl Warehouse for PostgresWarehouse {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        let ddl = create_tables(table, Dialect::Postgres)?;
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        // `CREATE TABLE IF NOT EXISTS` is not safe against itself: nodes starting together
        // would fail on the catalog's unique index. One transaction-scoped advisory lock
        // (a fixed key of tributary's) makes them take turns.
        let tx = client.transaction().await.map_err(|e| classify(e, false))?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({DDL_LOCK_KEY})"))
            .await
            .map_err(|e| classify(e, false))?;
        for statement in ddl {
            tx.batch_execute(&statement).await.map_err(|e| match e.code() {
                // The unique key index of a table made by hand or by an earlier version. The
                // server's detail would quote the key: the message names the table only.
                Some(&SqlState::UNIQUE_VIOLATION) => WarehouseError::Rejected(format!(
                    "table {} (or its __deleted table) holds a key more than once, so its unique key \
                     index cannot be built: remove the duplicates",
                    table.name
                )),
                _ => classify(e, false),
            })?;
        }
        for (name, wanted) in expected_columns(table) {
            let rows = tx
                .query(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1",
                    &[&name],
                )
                .await
                .map_err(|e| classify(e, false))?;
            let existing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            missing_columns(&name, &wanted, &existing)?;
        }
        tx.commit().await.map_err(|e| classify(e, false))?;
        Ok(())
    }

    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        let sql = self.sql.get(&batch.table)?;
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let tx = client.transaction().await.map_err(|e| classify(e, false))?;
        let run = |e| classify(e, false);
        tx.batch_execute(PLAN_BY_INDEX).await.map_err(run)?;
        tx.batch_execute(DURABLE_COMMIT).await.map_err(run)?;
        let mut stats = CommitStats::default();
        let plan = CommitPlan::new(&sql);
        for step in plan.steps() {
            match step {
                Step::Ddl(ddl) => tx.batch_execute(ddl).await.map_err(run)?,
                Step::StageRows => match self.staging {
                    Staging::Copy => copy_rows(&tx, &sql, batch).await?,
                    Staging::Inserts => insert_rows(&tx, &sql, batch).await?,
                },
                // READ COMMITTED transactions do not see each other's rows. A transaction-scoped
                // advisory lock on the table's name orders tributary's committers only: readers,
                // the operator's own writes and VACUUM are not blocked (as LOCK TABLE would
                // block VACUUM).
                Step::TakeTurns => {
                    let lock_name = format!("tributary commit {}", batch.table.name);
                    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_name]).await.map_err(run)?;
                }
                Step::Run { sql, tally } => tally.add(&mut stats, tx.execute(sql, &[]).await.map_err(run)?),
            }
        }
        tx.commit().await.map_err(|e| classify(e, true))?;
        Ok(plan.stats(stats, batch.rows.len()))
    }

    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        let [stamp, remove] = prune_statements(table, Dialect::Postgres, retention)?;
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let tx = client.transaction().await.map_err(|e| classify(e, false))?;
        tx.execute(&stamp, &[]).await.map_err(|e| classify(e, false))?;
        let removed = tx.execute(&remove, &[]).await.map_err(|e| classify(e, false))?;
        tx.commit().await.map_err(|e| classify(e, true))?;
        Ok(removed)
    }
}

/// Every row has the table's columns (checked before the first one is sent).
fn check_widths(batch: &Batch) -> Result<(), WarehouseError> {
    if batch.rows.iter().any(|r| r.values.len() != batch.table.columns.len()) {
        return Err(WarehouseError::Rejected(format!(
            "a row does not have the {} columns of {}",
            batch.table.columns.len(),
            batch.table.name
        )));
    }
    Ok(())
}

/// The stage's column types, in its column order: the target's, then the version and `_op`
/// (text) and `_ord` (bigint), as `MergeSql` creates the stage.
fn stage_types(table: &TableSchema) -> Vec<Type> {
    let column = |ty: SqlType| match ty {
        SqlType::Boolean => Type::BOOL,
        SqlType::BigInt => Type::INT8,
        SqlType::Double => Type::FLOAT8,
        SqlType::Text => Type::VARCHAR,
        SqlType::Timestamp => Type::TIMESTAMP,
    };
    let mut types: Vec<Type> = table.columns.iter().map(|c| column(c.ty)).collect();
    types.extend([Type::VARCHAR, Type::VARCHAR, Type::INT8]);
    types
}

/// The batch's rows into the stage by one `COPY … FROM STDIN` in the binary format.
async fn copy_rows(tx: &Transaction<'_>, sql: &MergeSql, batch: &Batch) -> Result<(), WarehouseError> {
    check_widths(batch)?;
    let sink = tx.copy_in(sql.copy_stage().as_str()).await.map_err(|e| classify(e, false))?;
    let writer = BinaryCopyInWriter::new(sink, &stage_types(&batch.table));
    tokio::pin!(writer);
    for (ord, row) in batch.rows.iter().enumerate() {
        let values: Vec<std::borrow::Cow<'_, Value>> = stage_row(row, ord).collect();
        let params: Vec<Param<'_>> = values.iter().map(|v| Param(v)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        writer.as_mut().write(&refs).await.map_err(|e| classify(e, false))?;
    }
    writer.finish().await.map_err(|e| classify(e, false))?;
    Ok(())
}

/// The batch's rows into the stage, by multi-row INSERTs of bound parameters.
async fn insert_rows(tx: &Transaction<'_>, sql: &MergeSql, batch: &Batch) -> Result<(), WarehouseError> {
    check_widths(batch)?;
    for (insert, values) in sql.bound_inserts(&batch.rows, MAX_PARAMS) {
        let params: Vec<Param<'_>> = values.iter().map(|v| Param(v)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        tx.execute(insert.as_str(), &refs).await.map_err(|e| classify(e, false))?;
    }
    Ok(())
}
