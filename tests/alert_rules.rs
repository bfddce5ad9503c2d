//! The Prometheus alert rules in `deploy/prometheus/alerts.yml`: valid for Prometheus
//! (`promtool check rules`), firing when and only when their unit tests say
//! (`promtool test rules deploy/prometheus/alerts_test.yml`), and reading only metrics a node
//! exports.

use proto::memory::MemoryReferenceSource;
use std::path::Path;
use std::sync::Arc;
use worker::reference_cache::ReferenceSet;
use worker::{NodeMetrics, PipelineConfig};

mod prometheus;
use prometheus::promtool;

#[test]
fn alert_rules_are_valid_and_pass_their_unit_tests() {
    assert!(promtool(&["check", "rules", "alerts.yml"], "").contains("SUCCESS: 5 rules found"));
    assert!(promtool(&["test", "rules", "alerts_test.yml"], "").contains("SUCCESS"));
}

#[tokio::test]
async fn alert_rules_read_only_metrics_a_node_exports() {
    let source = MemoryReferenceSource::new();
    source.create_table("customer", false);
    let config = PipelineConfig::from_toml(
        r#"
        [[reference]]
        name = "customer"
        key = "id"
        [[table]]
        name = "t"
        key = ["id"]
        join = [{ reference = "customer", key = "id", on_missing = "null" }]
        column = [{ name = "id", from = "id", type = "text" }, { name = "n", from = "customer.name", type = "text" }]
        "#,
    )
    .unwrap();
    let references = ReferenceSet::start(Arc::new(source), &config.reference_specs()).await.unwrap();
    let metrics = NodeMetrics::default();
    metrics.millis_behind.with_label_values(&["shardId-000000000000"]).set(0);
    let exported = metrics.gather(&references);
    let rules =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml")).unwrap();
    let mut used: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("tributary_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 5, "{used:?}");
    for name in used {
        assert!(
            exported.contains(&format!("\n{name}")),
            "alerts.yml reads {name}, which a node does not export:\n{exported}"
        );
    }
}
