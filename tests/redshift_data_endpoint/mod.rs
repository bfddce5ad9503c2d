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
    statements: Mutex<HashMap<String, Statement>>,
    next_id: AtomicU64,
    faults: Arc<Faults>,
    /// Calls answered, by operation.
    calls: Mutex<HashMap<String, u64>>,
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
        let faults = Arc::new(Faults::default());
        let inner = Arc::new(Inner {
            pg: pg.to_owned(),
            statements: Mutex::default(),
            next_id: AtomicU64::new(1),
            faults: faults.clone(),
            calls: Mutex::default(),
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
            } else {
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
