//! A small Redshift-Data-API-compatible endpoint for tests: it runs the statements on a real
//! PostgreSQL and behaves as the API reference says, so the Data API adapter can be tested
//! without Redshift (no emulator executes SQL behind this API). Test-only; it is not Redshift.
//!
//! - awsJson1.1 on 127.0.0.1: BatchExecuteStatement, ExecuteStatement, DescribeStatement,
//!   CancelStatement (a running batch rolls back and ends ABORTED; an ended one cannot be
//!   cancelled).
//! - Asynchronous: a submission answers with an id at once; the statements run in the
//!   background (SUBMITTED → STARTED → FINISHED | FAILED), sub-statements are `Id:N`.
//! - A batch is one transaction: every statement or none (ROLLBACK on the first failure).
//! - Limits: 1–40 SQL strings per batch, 100 KB per string (ValidationException).
//! - Backslashes in literals are escapes, as on Redshift (`standard_conforming_strings = off`).
//! - `COPY <table> (<columns>) FROM 's3://bucket/key' IAM_ROLE … FORMAT AS CSV GZIP NULL AS '\\N' …`
//!   (the sink's bulk path), when started with an S3 endpoint: every object whose key starts
//!   with `key` (as Redshift reads the name: a prefix), gunzipped, into PostgreSQL by a CSV
//!   `COPY … FROM STDIN` with that NULL marker; its row count is the rows loaded. No object
//!   under the prefix fails the statement, as on Redshift.
//! - `GETDATE()` is Redshift's UTC clock (PostgreSQL's `now() AT TIME ZONE 'UTC'`).
//! - Injectable: the next N calls throttled (ThrottlingException), the next N submissions refused
//!   with ActiveStatementsExceededException, a statement that fails (any SQL containing a
//!   marker), and a delay per statement so callers must poll.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAX_SQL_BYTES: usize = 100 * 1024;
const MAX_SQLS: usize = 40;

#[derive(Clone, Debug)]
struct Statement {
    status: &'static str,
    cancelled: bool,
    error: Option<String>,
    subs: Vec<(&'static str, i64)>,
}

/// What tests can change while the endpoint runs.
#[derive(Default)]
pub struct Faults {
    pub throttle_next: AtomicU32,
    pub busy_next: AtomicU32,
    /// A statement containing this text fails.
    pub fail_marker: Mutex<Option<String>>,
    pub delay_per_statement_ms: AtomicU64,
}

struct Inner {
    pg: String,
    /// Where COPY reads its files (moto's S3).
    s3: Option<aws_sdk_s3::Client>,
    statements: Mutex<HashMap<String, Statement>>,
    next_id: AtomicU64,
    faults: Arc<Faults>,
    /// Calls answered, by operation.
    calls: Mutex<HashMap<String, u64>>,
    /// Request bytes received, by operation.
    bytes: Mutex<HashMap<String, u64>>,
    /// SQL strings received in submissions.
    sqls: AtomicU64,
}

pub struct Endpoint {
    pub url: String,
    pub faults: Arc<Faults>,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    /// Serves on a free port of 127.0.0.1, running statements on the PostgreSQL at `pg`.
    pub async fn start(pg: &str) -> Self {
        Self::serve(pg, None).await
    }

    /// Also runs COPY from the S3 at `s3` (an endpoint URL: moto's).
    pub async fn start_with_s3(pg: &str, s3: &str) -> Self {
        let config =
            aws_sdk_s3::config::Builder::from(&testkit::local_stack::sdk_config_for(s3)).force_path_style(true).build();
        Self::serve(pg, Some(aws_sdk_s3::Client::from_conf(config))).await
    }

    async fn serve(pg: &str, s3: Option<aws_sdk_s3::Client>) -> Self {
        let faults = Arc::new(Faults::default());
        let inner = Arc::new(Inner {
            pg: pg.to_owned(),
            s3,
            statements: Mutex::default(),
            next_id: AtomicU64::new(1),
            faults: faults.clone(),
            calls: Mutex::default(),
            bytes: Mutex::default(),
            sqls: AtomicU64::new(0),
        });
        let app = axum::Router::new().route("/", axum::routing::post(handle)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, faults, inner, task }
    }

    pub fn calls(&self, operation: &str) -> u64 {
        self.inner.calls.lock().unwrap().get(operation).copied().unwrap_or(0)
    }

    /// Request bytes received for `operation`.
    pub fn bytes(&self, operation: &str) -> u64 {
        self.inner.bytes.lock().unwrap().get(operation).copied().unwrap_or(0)
    }

    /// SQL strings received in submissions.
    pub fn sqls(&self) -> u64 {
        self.inner.sqls.load(Ordering::SeqCst)
    }

    /// The status of the latest submission.
    pub fn last_status(&self) -> Option<&'static str> {
        let statements = self.inner.statements.lock().unwrap();
        statements.iter().max_by(|a, b| a.0.cmp(b.0)).map(|(_, s)| s.status)
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, [("content-type", "application/x-amz-json-1.1")], json!({"__type": kind, "message": message}).to_string())
        .into_response()
}

fn ok(body: Json) -> Response {
    (StatusCode::OK, [("content-type", "application/x-amz-json-1.1")], body.to_string()).into_response()
}

fn take(counter: &AtomicU32) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let operation = target.strip_prefix("RedshiftData.").unwrap_or(target).to_owned();
    *inner.calls.lock().unwrap().entry(operation.clone()).or_default() += 1;
    *inner.bytes.lock().unwrap().entry(operation.clone()).or_default() += body.len() as u64;
    let Ok(request) = serde_json::from_slice::<Json>(&body) else {
        return error(StatusCode::BAD_REQUEST, "SerializationException", "body is not json");
    };
    if take(&inner.faults.throttle_next) {
        return error(StatusCode::BAD_REQUEST, "ThrottlingException", "Rate exceeded");
    }
    match operation.as_str() {
        "BatchExecuteStatement" | "ExecuteStatement" => submit(&inner, &operation, &request),
        "DescribeStatement" => describe(&inner, &request),
        "CancelStatement" => cancel(&inner, &request),
        other => error(StatusCode::BAD_REQUEST, "UnknownOperationException", other),
    }
}

fn submit(inner: &Arc<Inner>, operation: &str, request: &Json) -> Response {
    let sqls: Vec<String> = if operation == "ExecuteStatement" {
        request["Sql"].as_str().map(|s| vec![s.to_owned()]).unwrap_or_default()
    } else {
        request["Sqls"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    if request["Database"].as_str().is_none()
        || (request["ClusterIdentifier"].is_null() && request["WorkgroupName"].is_null())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Database and a cluster or workgroup are required",
        );
    }
    if sqls.is_empty() || sqls.len() > MAX_SQLS {
        return error(StatusCode::BAD_REQUEST, "ValidationException", "1 to 40 SQL statements per batch");
    }
    if let Some(big) = sqls.iter().find(|s| s.len() > MAX_SQL_BYTES) {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            &format!("statement of {} bytes exceeds 100 KB", big.len()),
        );
    }
    if take(&inner.faults.busy_next) {
        return error(StatusCode::BAD_REQUEST, "ActiveStatementsExceededException", "too many active statements");
    }
    inner.sqls.fetch_add(sqls.len() as u64, Ordering::SeqCst);
    let id = format!("stmt-{:08}", inner.next_id.fetch_add(1, Ordering::SeqCst));
    inner.statements.lock().unwrap().insert(
        id.clone(),
        Statement { status: "SUBMITTED", cancelled: false, error: None, subs: vec![("SUBMITTED", 0); sqls.len()] },
    );
    tokio::spawn(run(inner.clone(), id.clone(), sqls));
    ok(json!({"Id": id, "Database": request["Database"], "CreatedAt": 0.0}))
}

const CANCELLED: &str = "cancelled";

fn cancel(inner: &Arc<Inner>, request: &Json) -> Response {
    let id = request["Id"].as_str().unwrap_or_default();
    let mut statements = inner.statements.lock().unwrap();
    let Some(s) = statements.get_mut(id) else {
        return error(StatusCode::BAD_REQUEST, "ResourceNotFoundException", &format!("no statement {id}"));
    };
    if matches!(s.status, "FINISHED" | "FAILED" | "ABORTED") {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            &format!("could not cancel a query that is already in {} state", s.status),
        );
    }
    s.cancelled = true;
    ok(json!({"Status": true}))
}

/// Runs a batch as one transaction and records its outcome.
async fn run(inner: Arc<Inner>, id: String, sqls: Vec<String>) {
    let set = |f: &dyn Fn(&mut Statement)| {
        if let Some(s) = inner.statements.lock().unwrap().get_mut(&id) {
            f(s);
        }
    };
    set(&|s| s.status = "STARTED");
    let cancelled = || inner.statements.lock().unwrap().get(&id).is_some_and(|s| s.cancelled);
    let outcome = async {
        let (client, connection) =
            tokio_postgres::connect(&inner.pg, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        client.batch_execute("BEGIN; SET LOCAL standard_conforming_strings = off").await.map_err(|e| e.to_string())?;
        let marker = inner.faults.fail_marker.lock().unwrap().clone();
        for (i, sql) in sqls.iter().enumerate() {
            let delay = inner.faults.delay_per_statement_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if cancelled() {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(CANCELLED.to_owned());
            }
            let result = if marker.as_ref().is_some_and(|m| sql.contains(m.as_str())) {
                Err("ERROR: injected failure".to_owned())
            } else if let Some(copy) = sql.strip_prefix("COPY ") {
                copy_from_s3(&inner, &client, copy).await
            } else {
                // Redshift's clock on compute nodes, as PostgreSQL spells it.
                let sql = sql.replace("GETDATE()", "(now() AT TIME ZONE 'UTC')");
                client
                    .execute(sql.as_str(), &[])
                    .await
                    .map_err(|e| e.as_db_error().map_or(e.to_string(), |d| format!("ERROR: {}", d.message())))
            };
            match result {
                Ok(rows) => set(&|s| s.subs[i] = ("FINISHED", rows as i64)),
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    set(&|s| s.subs[i] = ("FAILED", 0));
                    return Err(e);
                }
            }
        }
        client.batch_execute("COMMIT").await.map_err(|e| e.to_string())
    }
    .await;
    match outcome {
        Ok(()) => set(&|s| s.status = "FINISHED"),
        Err(e) if e == CANCELLED => set(&|s| {
            s.status = "ABORTED";
            for sub in s.subs.iter_mut().filter(|sub| sub.0 != "FINISHED") {
                *sub = ("ABORTED", 0);
            }
        }),
        Err(e) => {
            let error = e.clone();
            set(&move |s| {
                s.status = "FAILED";
                s.error = Some(error.clone());
                for sub in s.subs.iter_mut().filter(|sub| sub.0 != "FAILED") {
                    *sub = ("ABORTED", 0);
                }
            })
        }
    }
}

/// Redshift's COPY from S3, as far as the sink writes it (`COPY ` already taken off): the
/// rows loaded, or the error Redshift would give.
async fn copy_from_s3(inner: &Inner, client: &tokio_postgres::Client, copy: &str) -> Result<u64, String> {
    let s3 = inner.s3.as_ref().ok_or("ERROR: this endpoint has no S3 to COPY from")?;
    let (target, rest) = copy.split_once(" FROM 's3://").ok_or("ERROR: COPY from something other than S3")?;
    let (url, options) = rest.split_once("' IAM_ROLE ").ok_or("ERROR: COPY without IAM_ROLE")?;
    for needed in ["FORMAT AS CSV GZIP", "NULL AS '\\\\N'", "TIMEFORMAT 'YYYY-MM-DD HH:MI:SS'"] {
        if !options.contains(needed) {
            return Err(format!("ERROR: this endpoint runs COPY with {needed} only: {options}"));
        }
    }
    let url = url.replace("''", "'");
    let (bucket, prefix) = url.split_once('/').ok_or("ERROR: COPY from a bucket without a key")?;
    let listed =
        s3.list_objects_v2().bucket(bucket).prefix(prefix).send().await.map_err(|e| format!("ERROR: s3: {e:?}"))?;
    let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
    if keys.is_empty() {
        return Err(format!("ERROR: The specified S3 prefix '{prefix}' does not exist"));
    }
    let mut loaded = 0;
    for key in keys {
        let object = s3.get_object().bucket(bucket).key(&key).send().await.map_err(|e| format!("ERROR: s3: {e:?}"))?;
        let gz = object.body.collect().await.map_err(|e| e.to_string())?.into_bytes();
        let mut csv = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut csv)
            .map_err(|e| format!("ERROR: gzip: {e}"))?;
        let sink = client
            .copy_in::<_, bytes::Bytes>(&format!("COPY {target} FROM STDIN (FORMAT csv, NULL E'\\\\N')"))
            .await
            .map_err(|e| e.as_db_error().map_or(e.to_string(), |d| format!("ERROR: {}", d.message())))?;
        futures_util::pin_mut!(sink);
        futures_util::SinkExt::send(&mut sink, bytes::Bytes::from(csv)).await.map_err(|e| e.to_string())?;
        loaded += sink
            .finish()
            .await
            .map_err(|e| e.as_db_error().map_or(e.to_string(), |d| format!("ERROR: {}", d.message())))?;
    }
    Ok(loaded)
}

fn describe(inner: &Arc<Inner>, request: &Json) -> Response {
    let id = request["Id"].as_str().unwrap_or_default();
    let Some(s) = inner.statements.lock().unwrap().get(id).cloned() else {
        return error(StatusCode::BAD_REQUEST, "ResourceNotFoundException", &format!("no statement {id}"));
    };
    let subs: Vec<Json> = s
        .subs
        .iter()
        .enumerate()
        .map(|(i, (status, rows))| json!({"Id": format!("{id}:{}", i + 1), "Status": status, "ResultRows": rows}))
        .collect();
    let mut body = json!({"Id": id, "Status": s.status, "SubStatements": subs, "HasResultSet": false});
    if let Some(e) = s.error {
        body["Error"] = json!(e);
    }
    ok(body)
}
