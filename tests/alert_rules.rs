//! The Prometheus alert rules in `deploy/prometheus/alerts.yml`: valid for Prometheus
//! (`promtool check rules`), firing when and only when their unit tests say
//! (`promtool test rules deploy/prometheus/alerts_test.yml`), in the monitoring-mixins style with
//! a runbook page each, and reading only metrics a node exports.

use std::path::Path;
use worker::NodeMetrics;

mod prometheus;
use prometheus::{promtool, yaml};

const RUNBOOKS: &str = "https://github.com/tributary-rs/tributary/blob/main/deploy/runbooks/";

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

#[test]
fn alert_rules_are_valid_and_pass_their_unit_tests() {
    assert!(promtool(&["check", "rules", "alerts.yml"], "").contains("SUCCESS: 13 rules found"));
    assert!(promtool(&["test", "rules", "alerts_test.yml"], "").contains("SUCCESS"));
}

/// The monitoring-mixins conventions: a prefixed CamelCase name, a severity, a static summary
/// sentence, a templated description and a runbook page that exists; and unit cases where each
/// alert fires and where it does not.
#[test]
fn every_alert_has_severity_summary_description_runbook_and_cases_both_ways() {
    let rules = yaml(&deploy("prometheus/alerts.yml"));
    let tests = yaml(&deploy("prometheus/alerts_test.yml"));
    let cases: Vec<&serde_json::Value> =
        tests["tests"].as_array().unwrap().iter().flat_map(|t| t["alert_rule_test"].as_array().unwrap()).collect();
    let mut alerts = 0;
    for rule in rules["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        alerts += 1;
        assert!(name.starts_with("Tributary") && !name.contains('_'), "{name}: CamelCase with the prefix");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning", "info"].contains(&severity), "{name}: severity {severity:?}");
        let a = &rule["annotations"];
        let summary = a["summary"].as_str().unwrap_or_default();
        assert!(summary.ends_with('.') && !summary.contains("{{"), "{name}: a static sentence: {summary:?}");
        assert!(a["description"].as_str().unwrap_or_default().contains("{{ $"), "{name}: a templated description");
        let url = a["runbook_url"].as_str().unwrap_or_default();
        assert_eq!(url, format!("{RUNBOOKS}{name}.md"), "{name}: runbook_url");
        let page = std::fs::read_to_string(deploy(&format!("runbooks/{name}.md")))
            .unwrap_or_else(|e| panic!("{name}: runbook page: {e}"));
        for section in ["## Meaning", "## Confirm", "## Act"] {
            assert!(page.contains(section), "{name}: the runbook has {section}");
        }
        let of_alert: Vec<_> = cases.iter().filter(|c| c["alertname"] == name).collect();
        let firing = |c: &&&serde_json::Value| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
        assert!(of_alert.iter().any(firing), "{name}: a case where it fires");
        assert!(of_alert.iter().any(|c| !firing(c)), "{name}: a case where it does not fire");
    }
    assert_eq!(alerts, 13);
}

#[test]
fn alert_rules_read_only_metrics_a_node_exports() {
    let exported = NodeMetrics::default().metric_names();
    let rules = yaml(&deploy("prometheus/alerts.yml"));
    let exprs: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["expr"].as_str().unwrap().to_owned())
        .collect();
    let mut used: Vec<&str> = exprs
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("tributary_") || w.starts_with("process_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 10, "{used:?}");
    for name in used {
        assert!(
            exported.iter().any(|e| e == name),
            "alerts.yml reads {name}, which a node does not export: {exported:?}"
        );
    }
}
