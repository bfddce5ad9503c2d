//! The node's Prometheus endpoint, scraped over HTTP on 127.0.0.1 and checked by Prometheus's
//! own `promtool check metrics` (Debian's `prometheus` package; `.ci/run` installs it): the
//! counters, and the reference tables' size, freshness and refused refreshes.

use proto::memory::MemoryReferenceSource;
use std::sync::Arc;
use std::time::Duration;
use tributary::metrics_server::Served;
use worker::reference_set::{ReferenceSet, ReferenceSpec};
use worker::NodeMetrics;

mod prometheus;
use prometheus::{get, promtool, sample, scrape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_valid_with_reference_size_freshness_and_refused_refreshes() {
    let source = MemoryReferenceSource::new();
    source.create_table("country", true);
    for (code, name) in [("NO", "Norway"), ("SE", "Sweden"), ("FI", "Finland")] {
        let item = serde_json::json!({"code": code, "name": name});
        source.put("country", code, item.as_object().unwrap().clone());
    }
    let spec = ReferenceSpec {
        name: "country".into(),
        table: "country".into(),
        key: "code".into(),
        attributes: vec!["name".into()],
        refresh_interval: Duration::from_secs(60),
        poll_interval: Duration::from_millis(50),
        max_items: 3,
    };
    let source = Arc::new(source);
    let references = Arc::new(ReferenceSet::start(source.clone(), &[spec]).await.unwrap());
    let node = Arc::new(NodeMetrics::default());
    node.records_read.inc_by(42);
    node.dead_letters.inc();
    node.shard_lag.with_label_values(&["shardId-000000000001"]).set(1.5);

    node.watch_references(references.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = Served { node: node.clone(), heartbeat_stale_after: Duration::from_secs(10) };
    let server = tokio::spawn(tributary::metrics_server::serve(listener, served, async {
        let _ = stopped.await;
    }));

    let (head, body) = scrape(addr).await;
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    promtool(&["check", "metrics"], &body);
    assert_eq!(sample(&body, "tributary_records_read_total"), Some(42.0), "{body}");
    assert_eq!(sample(&body, "tributary_dead_letter_rows_total"), Some(1.0));
    assert_eq!(sample(&body, "tributary_shard_lag_seconds{shard=\"shardId-000000000001\"}"), Some(1.5));
    assert_eq!(sample(&body, "tributary_reference_items{reference=\"country\"}"), Some(3.0));
    let bytes = sample(&body, "tributary_reference_bytes{reference=\"country\"}").unwrap();
    assert_eq!(bytes as usize, references.get("country").unwrap().bytes());
    assert!(bytes > 0.0);
    assert!(sample(&body, "tributary_reference_age_seconds{reference=\"country\"}").unwrap() < 60.0);
    assert_eq!(sample(&body, "tributary_reference_refresh_failures_total{reference=\"country\"}"), Some(0.0));
    // README: the reference's `refresh_interval`, in seconds (60 s configured above).
    assert_eq!(sample(&body, "tributary_reference_refresh_interval_seconds{reference=\"country\"}"), Some(60.0));

    // A fourth item would pass max_items: the change is refused, the three stay in service,
    // and the refusals show.
    let item = serde_json::json!({"code": "DK", "name": "Denmark"});
    source.put("country", "DK", item.as_object().unwrap().clone());
    let mut failures = 0.0;
    for _ in 0..100 {
        let (_, body) = scrape(addr).await;
        failures = sample(&body, "tributary_reference_refresh_failures_total{reference=\"country\"}").unwrap();
        if failures >= 1.0 {
            assert_eq!(sample(&body, "tributary_reference_items{reference=\"country\"}"), Some(3.0));
            promtool(&["check", "metrics"], &body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures >= 1.0, "the refused refresh was not counted");
    assert!(references.get("country").unwrap().get("DK").is_none());

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_is_alive_at_once_and_ready_only_while_started_heartbeating_and_not_draining() {
    let node = Arc::new(NodeMetrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = Served { node: node.clone(), heartbeat_stale_after: Duration::from_millis(300) };
    let server = tokio::spawn(tributary::metrics_server::serve(listener, served, async {
        let _ = stopped.await;
    }));
    let status = |head: &str| head.split(' ').nth(1).unwrap_or_default().to_owned();
    let (head, _) = get(addr, "/healthz").await;
    assert_eq!(status(&head), "200", "alive while starting");
    let (head, body) = get(addr, "/readyz").await;
    assert_eq!((status(&head).as_str(), body.as_str()), ("503", "not ready: starting\n"));
    node.health.set_started();
    let (head, body) = get(addr, "/readyz").await;
    assert_eq!((status(&head).as_str(), body.as_str()), ("503", "not ready: no heartbeat yet\n"));
    node.health.heartbeat();
    let (head, _) = get(addr, "/readyz").await;
    assert_eq!(status(&head), "200");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (head, body) = get(addr, "/readyz").await;
    assert_eq!((status(&head).as_str(), body.as_str()), ("503", "not ready: heartbeat stale\n"));
    node.health.heartbeat();
    node.health.set_draining();
    let (head, body) = get(addr, "/readyz").await;
    assert_eq!((status(&head).as_str(), body.as_str()), ("503", "not ready: draining\n"));
    let (head, _) = get(addr, "/healthz").await;
    assert_eq!(status(&head), "200", "alive while draining");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
