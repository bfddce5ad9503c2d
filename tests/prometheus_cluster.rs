//! A real Prometheus (Debian's `prometheus`) scraping three real `tributary run` nodes on the
//! local stack (kinesis-local, moto, PostgreSQL) while they consume DMS ticket activity joined
//! with DynamoDB reference tables: every alert rule loads and evaluates healthy, every query of
//! the Grafana dashboard parses, returns data and names only metrics a node exports, and the
//! Helm chart's KEDA query returns one series. The nodes then stop on SIGTERM with exit 0.

use adapters::kinesis::Kinesis;
use adapters::postgres::PostgresWarehouse;
use processes::{database, wait_count, NodeProcess};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::time::Duration;
use testkit::local_stack::{emulator, Service};
use testkit::postgres_server::postgres;
use testkit::tickets::{self, TicketWorld};

mod grafana;
mod helm;
mod processes;
mod prometheus;
use prometheus::PrometheusServer;

const JOB: &str = "tributary";
const NAMESPACE: &str = "observed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_real_nodes_and_serves_the_alerts_dashboard_and_autoscaler_queries() {
    std::env::set_var(tickets::KEY_ENV, "prometheus-test-tokenize-key-0123456789");
    let (ks, ds) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, "prometheus_cluster").await;
    let tag = std::process::id();
    let stream = format!("observed-{tag}");
    let kinesis = Kinesis::new(&ks.sdk_config(), &stream);
    kinesis.create_stream(4).await.unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut world = TicketWorld::new(&mut rng, 6, 10, 30, 1_700_000_000_000);
    tributary::gen::write_reference_tables(&ds.sdk_config(), &world).await.unwrap();
    let mut records = world.full_load(&mut rng);
    records.extend((0..200).map(|_| world.change(&mut rng)));
    // Two records no pipeline can read: the dead-letter panels have something to show.
    records.extend([("bad-1".to_owned(), b"not json".to_vec()), ("bad-2".to_owned(), b"{\"x\":".to_vec())]);

    let dir = std::env::temp_dir().join(format!("tributary-prometheus-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[node]\nfailover_time = \"4s\"\nshutdown_deadline = \"20s\"\n[stream]\nname = \"{stream}\"\n\
             [lease_table]\nname = \"{stream}-leases\"\n[warehouse]\nkind = \"postgres\"\nurl = \"{url}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            tickets::PIPELINE
        ),
    )
    .unwrap();
    let mut nodes: Vec<NodeProcess> =
        ["node-a", "node-b", "node-c"].iter().map(|n| NodeProcess::spawn(&config, n, &ks, &ds)).collect();
    let mut ports = Vec::new();
    for node in &mut nodes {
        for _ in 0..100 {
            if node.metrics_port().is_some() || !node.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ports.push(node.metrics_port().unwrap_or_else(|| panic!("{} serves metrics:\n{}", node.name, node.log())));
    }
    for chunk in records.chunks(100) {
        assert!(kinesis.put_records(chunk).await.unwrap().is_empty());
    }

    let targets: Vec<String> = ports.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let prometheus = PrometheusServer::start(
        &dir.join("prometheus"),
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [{}]\n        \
             labels: {{ namespace: {NAMESPACE} }}\n",
            rules.display(),
            targets.join(", ")
        ),
    )
    .await;

    // Every record is in (or dead-lettered), and Prometheus has scraped long enough for rates.
    let warehouse = PostgresWarehouse::connect(&url).await.unwrap();
    let live = world.activity.values().filter(|a| a.is_some()).count();
    let rows = wait_count(&warehouse, "SELECT count(*) FROM sport_event_activity", live).await;
    assert_eq!(rows, live, "the nodes consumed the stream");
    assert_eq!(wait_count(&warehouse, "SELECT count(*) FROM tributary_dead_letters", 2).await, 2);
    let mut up = 0;
    for _ in 0..300 {
        let data = prometheus.query(&format!("sum(up{{job=\"{JOB}\"}})")).await.unwrap();
        up = data["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        if up == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up, 3, "prometheus scrapes the three nodes:\n{}", prometheus.log());
    tokio::time::sleep(Duration::from_secs(8)).await;

    // The alert rules: loaded and evaluated without error.
    let (status, body) = prometheus.api("/api/v1/rules").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let loaded: Vec<&serde_json::Value> =
        answer["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert_eq!(loaded.len(), 13, "{body}");
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // What the nodes report, as Prometheus holds it, agrees with what happened.
    let value = |data: serde_json::Value| -> f64 {
        let result = data["result"].as_array().cloned().unwrap_or_default();
        assert_eq!(result.len(), 1, "one series: {data}");
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    let j = format!("job=\"{JOB}\"");
    let facts = [
        (format!("sum(tributary_leader{{{j}}})"), 1.0),
        (format!("count(tributary_cluster_leases{{{j},state=\"owned\"}})"), 1.0),
        (format!("sum(tributary_cluster_leases{{{j},state=\"owned\"}})"), 4.0),
        (format!("sum(tributary_cluster_leases{{{j},state=\"unassigned\"}})"), 0.0),
        (format!("sum(tributary_cluster_nodes{{{j},state=\"live\"}})"), 3.0),
        (format!("sum(tributary_leases_owned{{{j}}})"), 4.0),
        (format!("count(tributary_shard_lag_seconds{{{j}}})"), 4.0),
        (format!("sum(tributary_dead_letter_rows_total{{{j}}})"), 2.0),
        (format!("sum(tributary_rows_in_flight{{{j}}})"), 0.0),
        (format!("sum(tributary_commits_total{{{j}}}) - sum(tributary_commit_batch_rows_count{{{j}}})"), 0.0),
        (format!("min(tributary_reference_items{{{j},reference=\"customer\"}})"), world.customers.len() as f64),
        (format!("max(tributary_reference_items{{{j},reference=\"ticket\"}})"), world.tickets.len() as f64),
    ];
    for (expr, want) in facts {
        assert_eq!(value(prometheus.query(&expr).await.unwrap()), want, "{expr}");
    }
    let read = value(prometheus.query(&format!("sum(tributary_records_read_total{{{j}}})")).await.unwrap());
    assert!(read >= records.len() as f64, "{read} records read of {}", records.len());
    let committed = format!("sum(tributary_rows_committed_total{{{j},table=\"sport_event_activity\"}})");
    assert!(value(prometheus.query(&committed).await.unwrap()) >= live as f64);

    // The dashboard: every query parses and returns data, and names only what a node exports.
    let exported: BTreeSet<String> = worker::NodeMetrics::default().metric_names().into_iter().collect();
    let mut failed = Vec::new();
    let queries = grafana::queries(JOB);
    assert!(queries.len() >= 30, "{} queries", queries.len());
    for (title, expr) in &queries {
        for selector in grafana::selectors(expr).unwrap() {
            assert!(exported.contains(&selector.metric), "{title}: {} is not exported", selector.metric);
            // Each selector on its own, so that a fallback (`or vector(0)`) cannot hide one
            // that matches nothing. A healthy run makes no failed call: those selectors may
            // only name the metric's labels and the kinds the ports report.
            let alone = format!("{}{{{}}}", selector.metric, selector.matchers.as_deref().unwrap_or_default());
            if selector.metric == "tributary_call_errors_total" {
                let kinds = ["condition_failed", "throttled", "ambiguous", "unavailable", "fatal", "not_found"];
                for matcher in alone.trim_end_matches('}').split_once('{').unwrap().1.split(',') {
                    let (label, value) = matcher.split_once(['=', '!', '~']).unwrap();
                    let value = value.trim_start_matches(['=', '~']).trim_matches('"');
                    let known = match label.trim() {
                        "job" => true,
                        "kind" => kinds.contains(&value),
                        "service" => ["kinesis", "dynamodb", "dynamodb_streams", "postgres"].contains(&value),
                        _ => false,
                    };
                    assert!(known, "{title}: {alone}: {matcher} is not a label value a node reports");
                }
                continue;
            }
            match prometheus.query(&alone).await {
                Ok(data) if data["result"].as_array().is_some_and(|r| !r.is_empty()) => {}
                other => failed.push(format!("{title}: selector {alone} matches nothing: {other:?}")),
            }
        }
        match prometheus.query(expr).await {
            Ok(data) if data["result"].as_array().is_some_and(|r| !r.is_empty()) => {}
            Ok(data) => failed.push(format!("{title}: no data for {expr}: {data}")),
            Err(e) => failed.push(format!("{title}: {expr}: {e}")),
        }
    }
    assert!(failed.is_empty(), "dashboard queries without data:\n{}", failed.join("\n"));

    // The autoscaler's query, as the chart renders it for these labels: one series.
    let keda = helm::keda_query(
        &["ci/irsa-keda-monitoring-values.yaml"],
        &[
            "--set",
            &format!("autoscaling.keda.prometheus.namespace={NAMESPACE}"),
            "--set",
            &format!("autoscaling.keda.prometheus.job={JOB}"),
        ],
    );
    let data = prometheus.query(&keda).await.unwrap();
    assert_eq!(data["result"].as_array().map(Vec::len), Some(1), "{keda}: {data}");

    for node in &mut nodes {
        assert_eq!(node.terminate(), Some(0), "{} exits 0 on SIGTERM:\n{}", node.name, node.log());
    }
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}
