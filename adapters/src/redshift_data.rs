//! Amazon Redshift through the Data API (aws-sdk-redshiftdata): the `Warehouse` port.
//!
//! A commit is the shared commit plan (`commit_plan.rs`) in the Redshift dialect with literal
//! values (the Data API takes no parameters in a batch): BatchExecuteStatement runs its SQL strings in order as one
//! transaction, and DescribeStatement is polled (back-off 50 ms → 1 s) until the batch finished,
//! failed or was aborted. Each SQL string stays under the API's 100 KB limit (the stage inserts
//! are split); a batch needing more than the API's 40 strings is committed as several
//! transactions of fewer rows each, which is safe because every upsert is fenced by version and
//! each key's latest row is picked before the split (two changes of one version in different
//! parts would otherwise keep the earlier, where one transaction keeps the later).
//!
//! Errors: throttling, ActiveStatementsExceeded and server faults are `Unavailable` (nothing
//! ran; retry); a submission without an answer is `Ambiguous` (it may run; retrying is safe); a
//! FAILED batch is `Unavailable` when Redshift reports a serialization conflict and `Rejected`
//! otherwise (bad SQL or values: it will fail again).

use crate::aws::{classify, Failure};
use crate::column_check::column_probes;
use crate::commit_plan::{CommitPlan, Tally};
use crate::copy_csv;
use crate::dialect::Dialect;
use crate::merge_sql::{MergeSql, MergeSqlCache};
pub use crate::s3_staging::S3Prefix;
use crate::s3_staging::S3Staging;
use crate::tombstone_prune::prune_statements;
use crate::warehouse_ddl::{create_tables, tombstone_table};
use async_trait::async_trait;
use aws_sdk_redshiftdata::types::StatusString;
use aws_sdk_redshiftdata::Client;
use proto::{Batch, CommitStats, Row, TableSchema, Warehouse, WarehouseError};
use std::time::Duration;

/// The API's limit on one SQL string, less a margin.
pub const MAX_STATEMENT_BYTES: usize = 100 * 1024 - 512;
const _: () =
    assert!(proto::MAX_ROW_SQL_BYTES < MAX_STATEMENT_BYTES, "a row the pipeline lets through fits one statement");
/// The API's limit on the SQL strings of one BatchExecuteStatement.
pub const MAX_STATEMENTS: usize = 40;

/// Where the statements run, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A provisioned cluster.
    Cluster { identifier: String },
    /// A Redshift Serverless workgroup.
    Workgroup { name: String },
}

#[derive(Clone, Debug)]
pub struct RedshiftDataConfig {
    pub target: Target,
    pub database: String,
    /// Credentials from Secrets Manager…
    pub secret_arn: Option<String>,
    /// …or temporary credentials for this database user (clusters only).
    pub db_user: Option<String>,
    /// How long one batch may take before the commit is reported as failed.
    pub timeout: Duration,
    /// Lock the target while merging (`CommitPlan::literal`): needed under SNAPSHOT
    /// isolation, Redshift's default; a SERIALIZABLE database aborts one of two conflicting
    /// commits instead (retried), so it can do without and keep readers from waiting.
    pub lock_tables: bool,
    /// How a batch's rows reach the stage.
    pub load: Load,
}

/// How a batch's rows reach the stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Load {
    /// As literal INSERTs in the batch's statements (no S3; ~300 rows of 300 bytes a statement).
    Statements,
    /// A batch of at least `min_rows` rows as one gzip CSV file under `staging`, loaded by `COPY`
    /// reading it with `role` (an IAM role ARN, or `default`); smaller batches as statements.
    Copy { staging: S3Prefix, role: String, min_rows: usize },
}

pub struct RedshiftDataWarehouse {
    client: Client,
    config: RedshiftDataConfig,
    statements: MergeSqlCache,
    /// With `Load::Copy`: where files are staged.
    files: Option<S3Staging>,
}

fn api_error(f: Failure) -> WarehouseError {
    if f.is_throttle() || f.is_server_fault() || f.code() == "ActiveSessionsExceededException" {
        return WarehouseError::Unavailable(f.to_string());
    }
    match f {
        Failure::NotSent(m) => WarehouseError::Unavailable(m),
        Failure::NoAnswer(m) => WarehouseError::Ambiguous(m),
        other => WarehouseError::Rejected(other.to_string()),
    }
}

/// A FAILED batch: conflicts with concurrent transactions, a statement cancelled by request (a
/// CancelStatement, an operator) or by a timeout under load, or a lost connection can pass on
/// a retry; anything else (bad SQL or values, a WLM rule that aborts the query) will fail again.
/// Quoted parts of the message (values, names) are ignored: `relation "connections" does not
/// exist` is not a connection problem.
fn failed(error: &str) -> WarehouseError {
    const TRANSIENT: &[&str] = &[
        "serializable isolation violation",
        "could not serialize access",
        "deadlock detected",
        "server closed the connection",
        "connection reset",
        "terminating connection",
        "query cancelled on user's request",
        "canceling statement due to user request",
        "canceling statement due to statement timeout",
    ];
    let mut plain = String::with_capacity(error.len());
    let mut quote: Option<char> = None;
    for c in error.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            // An apostrophe inside a word ("user's") opens no quote.
            None if c == '"' || (c == '\'' && !plain.ends_with(|p: char| p.is_alphanumeric())) => quote = Some(c),
            None => plain.extend(c.to_lowercase()),
        }
    }
    if TRANSIENT.iter().any(|t| plain.contains(t)) {
        WarehouseError::Unavailable(format!("batch failed: {error}"))
    } else {
        WarehouseError::Rejected(format!("batch failed: {error}"))
    }
}

impl RedshiftDataWarehouse {
    /// `node` names this process in staged files' names (with `Load::Copy`).
    pub fn new(sdk: &aws_config::SdkConfig, config: RedshiftDataConfig, node: &str) -> Self {
        let warehouse =
            Self { client: Client::new(sdk), config, statements: MergeSqlCache::new(Dialect::Redshift), files: None };
        warehouse.with_s3(sdk, node)
    }

    /// BatchExecuteStatement: the statement id.
    async fn submit(&self, sqls: Vec<String>) -> Result<String, WarehouseError> {
        let mut call = self
            .client
            .batch_execute_statement()
            .set_sqls(Some(sqls))
            .database(&self.config.database)
            .set_secret_arn(self.config.secret_arn.clone())
            .set_db_user(self.config.db_user.clone());
        call = match &self.config.target {
            Target::Cluster { identifier } => call.cluster_identifier(identifier),
            Target::Workgroup { name } => call.workgroup_name(name),
        };
        let out = call.send().await.map_err(|e| api_error(classify(&e)))?;
        out.id().map(str::to_owned).ok_or_else(|| WarehouseError::Ambiguous("no statement id returned".into()))
    }

    /// Polls DescribeStatement until the batch ends; the rows each sub-statement touched.
    async fn wait(&self, id: &str) -> Result<Vec<u64>, WarehouseError> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let out = match self.client.describe_statement().id(id).send().await {
                Ok(out) => out,
                Err(e) => match api_error(classify(&e)) {
                    // A poll that failed says nothing about the batch: poll again, within the
                    // deadline and backing off.
                    WarehouseError::Unavailable(_) | WarehouseError::Ambiguous(_)
                        if tokio::time::Instant::now() + pause <= deadline =>
                    {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    // The batch may still commit.
                    other => return Err(WarehouseError::Ambiguous(format!("batch {id}: cannot poll: {other}"))),
                },
            };
            match out.status() {
                Some(StatusString::Finished) => {
                    return Ok(out.sub_statements().iter().map(|s| s.result_rows().max(0) as u64).collect())
                }
                Some(StatusString::Failed) => return Err(failed(out.error().unwrap_or("no reason given"))),
                Some(StatusString::Aborted) => {
                    return Err(WarehouseError::Unavailable(format!("batch {id} was aborted")))
                }
                _ => {}
            }
            if tokio::time::Instant::now() + pause > deadline {
                // Still running: ask Redshift to stop it (best effort — it may be committing
                // this very moment), so an abandoned batch does not hold a slot or land late
                // behind the retry. Either way the outcome is unknown.
                if let Err(e) = self.client.cancel_statement().id(id).send().await {
                    tracing::warn!(statement = id, error = %classify(&e), "cannot cancel a timed-out batch");
                }
                return Err(WarehouseError::Ambiguous(format!(
                    "batch {id} still running after {:?}",
                    self.config.timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// With `Load::Copy`, reaches S3 through `sdk` (`new` passes the Data API's configuration;
    /// another for another endpoint or region: the staging bucket's).
    pub fn with_s3(mut self, sdk: &aws_config::SdkConfig, node: &str) -> Self {
        if let Load::Copy { staging, .. } = &self.config.load {
            self.files = Some(S3Staging::new(sdk, staging.clone(), node));
        }
        self
    }

    /// The batch as one file in S3 and one transaction that COPYs it into the stage and merges;
    /// `None` when it goes by statements (the load says so, it is small, or a value cannot be
    /// written in the file).
    async fn commit_by_copy(&self, sql: &MergeSql, rows: &[Row]) -> Option<Result<CommitStats, WarehouseError>> {
        let (Load::Copy { role, min_rows, .. }, Some(files)) = (&self.config.load, &self.files) else { return None };
        if rows.len() < *min_rows {
            return None;
        }
        let file = copy_csv::stage_csv_gz(rows).ok()?;
        let key = files.fresh_key(sql.table_name());
        Some(
            async {
                let copy = sql.copy_stage_from(&files.url(&key), role)?;
                files.put(&key, file).await?;
                let result = self.run(CommitPlan::new(sql).with_stage(vec![copy], self.config.lock_tables)).await;
                // Done with, whatever the outcome (a batch still running fails without it, and
                // its retry stages a file of its own); one left behind is never read again.
                if let Err(e) = files.delete(&key).await {
                    tracing::warn!(key, error = %e, "cannot delete a staged file (the prefix's lifecycle rule will)");
                }
                result
            }
            .await,
        )
    }

    /// Runs one transaction's statements; the commit's stats.
    async fn run(&self, commit: Vec<(String, Tally)>) -> Result<CommitStats, WarehouseError> {
        let (statements, tallies): (Vec<String>, Vec<Tally>) = commit.into_iter().unzip();
        let id = self.submit(statements).await?;
        let counts = self.wait(&id).await?;
        Ok(Tally::stats(tallies.into_iter().zip(counts)))
    }

    /// One transaction for `rows`, or several when the statements would not fit one call.
    async fn commit_rows(&self, sql: &MergeSql, rows: &[Row]) -> Result<CommitStats, WarehouseError> {
        if let Some(result) = self.commit_by_copy(sql, rows).await {
            return result;
        }
        let commit = CommitPlan::new(sql).literal(rows, MAX_STATEMENT_BYTES, self.config.lock_tables)?;
        if commit.len() > MAX_STATEMENTS && rows.len() > 1 {
            let (a, b) = rows.split_at(rows.len() / 2);
            let first = Box::pin(self.commit_rows(sql, a)).await?;
            let second = Box::pin(self.commit_rows(sql, b)).await?;
            return Ok(CommitStats {
                upserted: first.upserted + second.upserted,
                deleted: first.deleted + second.deleted,
                fenced: first.fenced + second.fenced,
            });
        }
        self.run(commit).await
    }
}

#[async_trait]
impl Warehouse for RedshiftDataWarehouse {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        let mut ddl = create_tables(table, Dialect::Redshift)?;
        // A table that existed without a column the sink writes fails here, at the node's
        // start, rather than every batch later.
        ddl.extend(column_probes(table)?);
        let id = self.submit(ddl).await?;
        self.wait(&id).await.map(|_| ()).map_err(|e| match e {
            WarehouseError::Rejected(m) => WarehouseError::Rejected(format!(
                "table {:?} (or its {:?}) lacks a column the sink writes, or cannot be created: {m}",
                table.name,
                tombstone_table(&table.name)
            )),
            other => other,
        })
    }

    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        if batch.rows.is_empty() {
            return Ok(CommitStats::default());
        }
        if let Some(bad) = batch.rows.iter().find(|r| r.values.len() != batch.table.columns.len()) {
            return Err(WarehouseError::Rejected(format!(
                "a row has {} values for the {} columns of {}",
                bad.values.len(),
                batch.table.columns.len(),
                batch.table.name
            )));
        }
        let sql = self.statements.get(&batch.table)?;
        // A batch too big for one call commits in parts, one transaction each, where a later
        // part's change of a version an earlier part committed would be fenced: keep each key's
        // latest row (the later on a tie) first, as one transaction's dedupe does.
        let latest = batch.latest_per_key();
        if latest.len() == batch.rows.len() {
            return self.commit_rows(&sql, &batch.rows).await;
        }
        let rows: Vec<Row> = latest.into_iter().cloned().collect();
        let mut stats = self.commit_rows(&sql, &rows).await?;
        stats.fenced += (batch.rows.len() - rows.len()) as u64;
        Ok(stats)
    }

    /// Both statements in one call: one transaction.
    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        let id = self.submit(prune_statements(table, Dialect::Redshift, retention)?.to_vec()).await?;
        Ok(self.wait(&id).await?.get(1).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_batches_are_retried_only_when_a_retry_can_pass() {
        for transient in [
            "ERROR: 1023 DETAIL: Serializable isolation violation on table - 123, transactions forming the cycle are: 1, 2",
            "ERROR: Query cancelled on user's request",
            "ERROR: canceling statement due to statement timeout",
            "FATAL: terminating connection due to administrator command",
        ] {
            assert!(failed(transient).is_retryable(), "{transient}");
        }
        for permanent in [
            "ERROR: relation \"events\" does not exist",
            "ERROR: invalid input syntax for type bigint: \"x\"",
            "ERROR: value too long for type character varying(256)",
            "ERROR: relation \"server closed the connection\" does not exist",
            "ERROR: invalid input syntax for type boolean: 'deadlock detected'",
            "ERROR: Query (4242) cancelled by WLM abort action of Query Monitoring Rule \"long\"",
        ] {
            assert!(matches!(failed(permanent), WarehouseError::Rejected(_)), "{permanent}");
        }
    }
}
