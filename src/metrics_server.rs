//! The node's HTTP listener (`[metrics] listen`), served from the start of `tributary run`:
//! `GET /metrics` in Prometheus's text format (the node's metrics plus its reference tables'
//! size and freshness once they are loaded, read at each scrape),
//! `GET /healthz` (the process serves: liveness) and `GET /readyz` (the node started, its lease
//! heartbeat is fresh and it is not draining: readiness; 503 with the reason otherwise).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use worker::NodeMetrics;

/// What the listener reports on.
#[derive(Clone)]
pub struct Served {
    pub node: Arc<NodeMetrics>,
    /// A heartbeat older than this makes the node unready (its leases may be moving away).
    pub heartbeat_stale_after: Duration,
}

async fn metrics(State(s): State<Served>) -> impl IntoResponse {
    ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], s.node.gather())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Served>) -> (StatusCode, String) {
    match s.node.health.ready(s.heartbeat_stale_after) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    served: Served,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(served);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
