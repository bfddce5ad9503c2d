//! The Grafana dashboard `deploy/grafana/tributary.json`, printed by `deploy/grafana/generate.py`:
//! it type-checks against Grafana's own schema (npm `@grafana/schema`, with TypeScript's `tsc`;
//! `deploy/local/ops-tools.sh node` installs both), keeps the rules of Grafana's dashboard linter
//! (a data source variable, the job filter, `$__rate_interval`, units, ids, layout), every query
//! parses in Prometheus (`promtool check rules`) and reads only metrics a node exports. No Grafana
//! server renders it here; tests/ of the metrics endpoint evaluate the queries on real nodes.

mod grafana;
mod prometheus;

use grafana::{dashboard, panels, raw_queries, selectors};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use worker::NodeMetrics;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The matcher every selector carries: the dashboard's `job` variable (several jobs allowed).
const JOB_MATCHER: &str = r#"job=~"$job""#;
/// Functions whose argument is a counter (or a histogram's series): the only place those may appear.
const COUNTER_FUNCTIONS: &[&str] = &["rate", "increase", "irate"];

/// A directory under the system's temp dir, removed (with what it holds) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("tributary-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Symbolic links inside are removed, not followed.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The npm tools of deploy/local/ops-npm (`deploy/local/ops-tools.sh node`).
fn ops_node() -> PathBuf {
    testkit::local_stack::stack_dir().join("ops/node")
}

/// Grafana's TypeScript types of each panel type's options (a module under
/// `@grafana/schema/dist/esm/raw/composable/`), and whether the type has its own field config.
const PANEL_TYPES: &[(&str, &str, bool)] = &[
    ("timeseries", "timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", true),
    ("stat", "stat/panelcfg/x/StatPanelCfg_types.gen", false),
];

/// The dashboard as a TypeScript module that `tsc` accepts only if the JSON fits Grafana's types:
/// the whole dashboard as `Dashboard`, each panel's options and custom field config as its
/// panel type's `Options` and `FieldConfig` (the dashboard type leaves those open).
fn typescript(dashboard: &Value) -> String {
    let mut ts = String::from("import type { Dashboard } from '@grafana/schema';\n");
    for (name, module, _) in PANEL_TYPES {
        ts += &format!("import type * as {name} from '@grafana/schema/dist/esm/raw/composable/{module}';\n");
    }
    // JSON holds an enum's value, never its TypeScript name: let a string enum take its values too.
    ts += "type Json<T> = T extends string ? T | `${T}` : T extends readonly (infer E)[] ? Json<E>[] \
           : T extends object ? { [K in keyof T]: Json<T[K]> } : T;\n";
    ts += &format!(
        "export const dashboard = {} satisfies Json<Dashboard>;\n",
        serde_json::to_string_pretty(dashboard).unwrap()
    );
    for panel in panels(dashboard) {
        let kind = panel["type"].as_str().unwrap_or_default();
        if kind == "row" {
            continue;
        }
        let Some((_, _, custom)) = PANEL_TYPES.iter().find(|(name, ..)| *name == kind) else {
            panic!("panel {:?} has type {kind:?}: add its types to PANEL_TYPES", panel["title"]);
        };
        let id = &panel["id"];
        ts += &format!("// panel {id} {} ({kind})\n", panel["title"]);
        ts += &format!("export const options{id} = {} satisfies Json<{kind}.Options>;\n", panel["options"]);
        let field_config = &panel["fieldConfig"]["defaults"]["custom"];
        if *custom {
            ts += &format!("export const custom{id} = {field_config} satisfies Json<{kind}.FieldConfig>;\n");
        } else {
            assert!(field_config.is_null(), "panel {id}: a {kind} panel has no custom field config");
        }
    }
    ts
}

#[test]
fn dashboard_type_checks_against_grafanas_schema() {
    let node = ops_node();
    let tsc = node.join("node_modules/typescript/bin/tsc");
    assert!(
        tsc.exists() && node.join("node_modules/@grafana/schema").exists(),
        "typescript and @grafana/schema are missing under {}: run deploy/local/ops-tools.sh node",
        node.display()
    );
    let dir = TempDir::new("grafana-schema");
    std::os::unix::fs::symlink(node.join("node_modules"), dir.0.join("node_modules")).unwrap();
    let file = dir.0.join("dashboard.ts");
    let source = typescript(&dashboard());
    std::fs::write(&file, &source).unwrap();
    let out = Command::new("node")
        .arg(&tsc)
        .args(["--strict", "--noEmit", "--skipLibCheck", "--target", "es2022"])
        .args(["--module", "nodenext", "--moduleResolution", "nodenext"])
        .arg(&file)
        .current_dir(&dir.0)
        .output()
        .unwrap_or_else(|e| panic!("node (Debian: apt-get install nodejs): {e}"));
    let report = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = source.lines().collect();
    // Each error names dashboard.ts(line,column): show the line it is about.
    let explained: Vec<String> = report
        .lines()
        .map(|error| {
            let line =
                error.split_once('(').and_then(|(_, rest)| rest.split_once(',')).and_then(|(n, _)| n.parse().ok());
            let at = |n: usize| lines.get(n.wrapping_sub(1)).map(|l| l.trim()).unwrap_or_default();
            // The per-panel checks follow a comment naming their panel.
            let panel = line.map(|n| at(n - 1)).filter(|l| l.starts_with("// panel")).unwrap_or_default();
            let context: String = line.map(at).unwrap_or_default().chars().take(200).collect();
            format!("{error}\n    at: {panel} {context}")
        })
        .collect();
    assert!(
        out.status.success(),
        "deploy/grafana/tributary.json does not fit Grafana's schema (@grafana/schema):\n{}\n{}",
        explained.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unit ids Grafana knows (its value formats: misc, data, data rate, time, throughput); custom
/// units are written `count:…` (scaled like a count) or `suffix:…`. An unknown id is not an error
/// in Grafana: it is printed after the value as is, so a typo shows as a wrong unit.
const UNITS: &str = "none short percent percentunit locale bits bytes kbytes mbytes gbytes decbits decbytes \
    deckbytes decmbytes decgbytes pps bps Bps KBs MBs GBs ns µs ms s m h d dtdurationms dtdurations dthms \
    dateTimeAsIso dateTimeFromNow hertz cps ops reqps rps wps iops cpm opm";

fn unit_is_known(unit: &str) -> bool {
    UNITS.split_whitespace().any(|known| known == unit)
        || ["count:", "suffix:"].iter().any(|p| unit.strip_prefix(p).is_some_and(|rest| !rest.trim().is_empty()))
}

/// The rules of the dashboard's queries; problems go to `problems`, prefixed with `at`.
fn lint_query(at: &str, expr: &str, problems: &mut Vec<String>) {
    let found = match selectors(expr) {
        Ok(found) if found.is_empty() => return problems.push(format!("{at}: no metric in {expr}")),
        Ok(found) => found,
        Err(e) => return problems.push(format!("{at}: cannot read {expr}: {e}")),
    };
    for s in found {
        let name = &s.metric;
        let matchers = s.matchers.as_deref().unwrap_or_default();
        if !matchers.split(',').any(|m| m.trim() == JOB_MATCHER) {
            problems.push(format!("{at}: {name} is not filtered by {JOB_MATCHER}"));
        }
        if let Some(range) = &s.range {
            if range != "$__rate_interval" {
                problems.push(format!("{at}: {name}[{range}]: a range is $__rate_interval"));
            }
        }
        let function = s.function.as_deref().unwrap_or_default();
        if COUNTER_FUNCTIONS.contains(&function) && s.range.is_none() {
            problems.push(format!("{at}: {function}({name}) without a range"));
        }
        let counter = ["_total", "_bucket", "_sum", "_count"].iter().any(|suffix| name.ends_with(suffix));
        if counter && !COUNTER_FUNCTIONS.contains(&function) {
            problems.push(format!("{at}: {name} is a counter: read it through rate() or increase()"));
        }
        let by_le = expr.match_indices("by (").any(|(i, _)| {
            expr[i + 4..].split_once(')').is_some_and(|(labels, _)| labels.split(',').any(|l| l.trim() == "le"))
        });
        if name.ends_with("_bucket") && !(expr.starts_with("histogram_quantile(") && by_le) {
            problems.push(format!("{at}: {name}: buckets go to histogram_quantile, summed by (…, le)"));
        }
        // Lost conditional writes are how leases are contended, not failures: an errors panel
        // leaves them out, a panel of them says so.
        if name == "tributary_call_errors_total" && !matchers.contains(r#""condition_failed""#) {
            problems.push(format!("{at}: {name} without a kind matcher on condition_failed"));
        }
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(-1)
}

#[test]
fn dashboard_follows_the_lint_rules() {
    let d = dashboard();
    let datasource = json!({ "type": "prometheus", "uid": "${datasource}" });
    let mut problems = Vec::new();

    assert_eq!(d["uid"], "tributary");
    assert_eq!(d["title"], "tributary");
    assert!(d["tags"].as_array().is_some_and(|t| !t.is_empty()), "tags");
    // Grafana 11.0 writes 39, 12.0 writes 41; 12.1 and later migrate older ones on load.
    assert!((39..=42).contains(&int(&d["schemaVersion"])), "schemaVersion {}", d["schemaVersion"]);
    assert!(d.get("__inputs").is_none(), "the data source is a variable: nothing to ask on import");

    let variables = d["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("${name}"));
    let ds = variable("datasource");
    assert_eq!((&ds["type"], &ds["query"]), (&json!("datasource"), &json!("prometheus")), "{ds}");
    let job = variable("job");
    assert_eq!(job["type"], "query");
    assert_eq!(job["datasource"], datasource, "the job variable reads ${{datasource}}");
    assert_eq!(job["query"], "label_values(tributary_build_info, job)");
    assert_eq!((&job["multi"], &job["includeAll"]), (&json!(true), &json!(true)), "several jobs, All allowed");
    // All must list the jobs found: `.*` would match other jobs' process_* metrics too.
    assert!(job["allValue"].as_str().unwrap_or_default().is_empty(), "job has no allValue");

    let all = panels(&d);
    let mut ids = BTreeSet::new();
    for p in &all {
        let at = format!("panel {} {}", p["id"], p["title"]);
        if !ids.insert(int(&p["id"])) || int(&p["id"]) < 0 {
            problems.push(format!("{at}: id not unique or not a number"));
        }
        if p["title"].as_str().unwrap_or_default().trim().is_empty() {
            problems.push(format!("{at}: no title"));
        }
        if p["type"] == "row" {
            if p["collapsed"] != false || p["panels"].as_array().is_none_or(|inner| !inner.is_empty()) {
                problems.push(format!("{at}: a row is open, its panels follow it"));
            }
            continue;
        }
        if p["datasource"] != datasource {
            problems.push(format!("{at}: datasource is not {datasource}"));
        }
        match p["fieldConfig"]["defaults"]["unit"].as_str() {
            Some(unit) if unit_is_known(unit) => {}
            unit => problems.push(format!("{at}: unit {unit:?} is not one Grafana knows")),
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{at}: no target"));
        }
        let mut refs = BTreeSet::new();
        for t in targets {
            if t["datasource"] != datasource {
                problems.push(format!("{at}: target {} reads {}, not {datasource}", t["refId"], t["datasource"]));
            }
            if !refs.insert(t["refId"].as_str().unwrap_or_default()) {
                problems.push(format!("{at}: refId {} twice", t["refId"]));
            }
            lint_query(&at, t["expr"].as_str().unwrap_or_default(), &mut problems);
        }
    }

    // Layout: 24 columns; no two panels overlap; rows are full-width bands and every panel
    // lies in the band of the row before it.
    let boxes: Vec<(String, [i64; 4])> = all
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            (format!("panel {} {}", p["id"], p["title"]), [int(&g["x"]), int(&g["y"]), int(&g["w"]), int(&g["h"])])
        })
        .collect();
    for (i, (at, [x, y, w, h])) in boxes.iter().enumerate() {
        if *x < 0 || *y < 0 || *w < 1 || *h < 1 || x + w > 24 {
            problems.push(format!("{at}: gridPos x={x} y={y} w={w} h={h} is off the 24-column grid"));
        }
        for (other, [x2, y2, w2, h2]) in &boxes[i + 1..] {
            if x < &(x2 + w2) && x2 < &(x + w) && y < &(y2 + h2) && y2 < &(y + h) {
                problems.push(format!("{at} overlaps {other}"));
            }
        }
    }
    let top = d["panels"].as_array().unwrap();
    let row_ys: Vec<i64> = top.iter().filter(|p| p["type"] == "row").map(|p| int(&p["gridPos"]["y"])).collect();
    if top.first().is_none_or(|p| p["type"] != "row") {
        problems.push("the dashboard does not start with a row".into());
    }
    let mut row = None;
    for p in top {
        let g = &p["gridPos"];
        if p["type"] == "row" {
            if (int(&g["x"]), int(&g["w"]), int(&g["h"])) != (0, 24, 1) {
                problems.push(format!("row {}: not a full-width band (x 0, w 24, h 1)", p["title"]));
            }
            row = Some(int(&g["y"]));
            continue;
        }
        let Some(row_y) = row else { continue };
        let next = row_ys.iter().copied().find(|y| *y > row_y);
        let (y, h) = (int(&g["y"]), int(&g["h"]));
        if y <= row_y || next.is_some_and(|next| y + h > next) {
            let band = next.map_or(format!("below {row_y}"), |next| format!("{row_y}..{next}"));
            problems.push(format!("panel {}: y {y}..{} is outside its row ({band})", p["title"], y + h));
        }
    }

    assert!(problems.is_empty(), "deploy/grafana/tributary.json:\n{}", problems.join("\n"));
}

#[test]
fn every_query_parses_in_prometheus() {
    // What the real-Prometheus test evaluates: the variables substituted.
    let queries = grafana::queries("tributary");
    let dir = TempDir::new("grafana-promql");
    let file = dir.0.join("dashboard-queries.yml");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in queries.iter().enumerate() {
        // The rule's name says which panel promtool refuses.
        let panel: String =
            title.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        // A JSON string is a YAML double-quoted scalar.
        let expr = serde_json::to_string(expr).unwrap();
        rules += &format!("      - record: dashboard:{panel}:query_{i}\n        expr: {expr}\n");
    }
    std::fs::write(&file, &rules).unwrap();
    let out = prometheus::promtool(&["check", "rules", file.to_str().unwrap()], "");
    assert!(out.contains(&format!("SUCCESS: {} rules found", queries.len())), "{out}");
}

/// The metrics a query reads, with a histogram's `_bucket`, `_sum` and `_count` as one family.
fn family(name: &str, exported: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if exported.contains(&format!("{base}_bucket")) {
                return base.to_owned();
            }
        }
    }
    name.to_owned()
}

#[test]
fn every_query_reads_only_metrics_a_node_exports() {
    let exported: BTreeSet<String> = NodeMetrics::default().metric_names().into_iter().collect();
    assert!(exported.contains("process_resident_memory_bytes"), "{exported:?}");
    let d = dashboard();
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for (title, expr) in raw_queries(&d) {
        for s in selectors(&expr).unwrap_or_else(|e| panic!("{title}: {expr}: {e}")) {
            used.entry(s.metric).or_insert(title.clone());
        }
    }
    let job_query = d["templating"]["list"][1]["query"].as_str().unwrap_or_default();
    let variable_metric = job_query.strip_prefix("label_values(").and_then(|q| q.split_once(',')).map(|(m, _)| m);
    used.entry(variable_metric.expect("label_values(metric, job)").to_owned()).or_insert("$job".into());

    let unknown: Vec<String> =
        used.iter().filter(|(m, _)| !exported.contains(*m)).map(|(m, t)| format!("{m} (in {t})")).collect();
    assert!(unknown.is_empty(), "the dashboard reads metrics no node exports: {unknown:?}\nexported: {exported:?}");

    // And the other way: every tributary_ metric has a panel.
    let shown: BTreeSet<String> = used.keys().map(|m| family(m, &exported)).collect();
    let missing: BTreeSet<String> = exported
        .iter()
        .filter(|m| m.starts_with("tributary_"))
        .map(|m| family(m, &exported))
        .filter(|f| !shown.contains(f))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}: add one in deploy/grafana/generate.py");
}

#[test]
fn dashboard_json_is_what_the_generator_prints() {
    let out = Command::new("python3")
        .arg("deploy/grafana/generate.py")
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("python3 (Debian: apt-get install python3): {e}"));
    assert!(out.status.success(), "generate.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let shipped = std::fs::read(grafana::path()).unwrap();
    assert!(
        out.stdout == shipped,
        "deploy/grafana/tributary.json differs from what deploy/grafana/generate.py prints: edit the \
         script, then python3 deploy/grafana/generate.py > deploy/grafana/tributary.json"
    );
}

#[test]
fn the_selector_scanner_reads_what_the_dashboard_writes() {
    let expr = r#"sum by (table, le) (rate(a_bucket{job=~"$job", x="}"}[$__rate_interval]))"#;
    let found = selectors(&format!(r#"{expr} or on() label_replace(vector(0), "k", "v", "", "") / b"#)).unwrap();
    let names: Vec<(&str, Option<&str>)> = found.iter().map(|s| (s.metric.as_str(), s.function.as_deref())).collect();
    assert_eq!(names, [("a_bucket", Some("rate")), ("b", None)]);
    assert_eq!(found[0].matchers.as_deref(), Some(r#"job=~"$job", x="}""#));
    assert_eq!(found[0].range.as_deref(), Some("$__rate_interval"));
    let aggregated = selectors("max by (shard) (m)").unwrap();
    assert_eq!(aggregated[0].function.as_deref(), Some("max"));
    assert!(selectors(r#"{__name__="m"}"#).is_err());
    assert!(selectors("rate(m[$x]").is_err());
    assert!(selectors("m + $x").is_err());
}
