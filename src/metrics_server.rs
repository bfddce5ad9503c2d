//! The node's Prometheus endpoint: `GET /metrics` in the text exposition format, the node's
//! counters plus its reference tables' size and freshness (read at each scrape).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use worker::reference_cache::ReferenceSet;
use worker::NodeMetrics;

type Sources = (Arc<NodeMetrics>, Arc<ReferenceSet>);

async fn metrics(State((node, references)): State<Sources>) -> impl IntoResponse {
    ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], node.gather(&references))
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    node: Arc<NodeMetrics>,
    references: Arc<ReferenceSet>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(metrics)).with_state((node, references));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
