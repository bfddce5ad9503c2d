//! The Helm chart (`deploy/helm/tributary`) and the node's IAM policy (`deploy/helm/iam-policy.json`),
//! checked offline with the real tools `deploy/local/ops-tools.sh` installs: every values file
//! (the defaults and `ci/*.yaml`) passes `helm lint --strict`, renders objects that
//! `kubernetes-validate --strict` accepts for the oldest and newest Kubernetes the chart supports,
//! custom resources that match KEDA's and prometheus-operator's CRDs (`@kubernetes-models`, plus
//! `tsc` for unknown fields: `tests/helm/crds.mjs`) and nothing checkov objects to beyond four
//! justified skips. The objects agree with each other (selectors, port names, probe paths), the
//! schema holds exactly the keys the node's parser reads, typed as it reads them, and refuses
//! misspelt ones, the
//! ConfigMap's node.toml loads with the node's own parser and passes `tributary check`, the pods
//! are hardened by default, the config checksum rolls them, render-time checks refuse what would
//! break a drain or over-scale, an autoscaler keeps replicaCount's standby node, the PrometheusRule
//! (its job made the Service's name) and the dashboard embed their files verbatim, and the IAM
//! policy grants exactly the AWS calls the node makes.
//!
//! YAML is read by js-yaml in the node script (it prints the objects as JSON, which serde_json
//! reads here), so no YAML crate is needed.

mod helm;
mod prometheus;

use helm::{documents, ops_tool, render, repo, try_render, try_render_release, TempDir, NAMESPACE, RELEASE};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use tributary::run::DRAIN_MARGIN;

/// The oldest and newest Kubernetes the chart supports (Chart.yaml's kubeVersion is >=1.28).
const KUBE_VERSIONS: [&str; 2] = ["1.28.0", "1.37.0"];
const MONITORING_AND_KEDA: &[&str] =
    &["--api-versions", "monitoring.coreos.com/v1", "--api-versions", "keda.sh/v1alpha1"];

/// One values file and what `helm template` needs besides.
struct Case {
    name: &'static str,
    files: &'static [&'static str],
    extra: &'static [&'static str],
}

const CASES: [Case; 4] = [
    Case { name: "defaults", files: &[], extra: &[] },
    Case { name: "minimal", files: &["ci/minimal-values.yaml"], extra: &[] },
    Case { name: "hpa", files: &["ci/hpa-values.yaml"], extra: &[] },
    Case { name: "irsa-keda-monitoring", files: &["ci/irsa-keda-monitoring-values.yaml"], extra: MONITORING_AND_KEDA },
];

fn case(name: &str) -> &'static Case {
    CASES.iter().find(|c| c.name == name).expect("a case of CASES")
}

fn render_case(case: &Case, more: &[&str]) -> String {
    let mut args = case.extra.to_vec();
    args.extend(["--kube-version", KUBE_VERSIONS[0]]);
    args.extend(more);
    render(case.files, &args)
}

fn run(command: &mut Command) -> (bool, String) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The rendered objects as JSON, through `tests/helm/crds.mjs`, which also validates the custom
/// resources with their CRDs' models, and with `typecheck`, checks them for unknown fields too
/// (with tsc: a second or two).
fn objects_checked(rendered: &str, typecheck: bool) -> Vec<Value> {
    let dir = TempDir::new("helm-objects");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, rendered).unwrap();
    let modules = ops_tool("node/node_modules", "node");
    let mut node = Command::new("node");
    node.arg(repo().join("tests/helm/crds.mjs")).arg(&file).env("TRIBUTARY_OPS_NODE_MODULES", modules);
    if typecheck {
        node.arg(dir.path());
    }
    let out = node.output().expect("node (apt-get install nodejs npm) runs tests/helm/crds.mjs");
    assert!(
        out.status.success(),
        "the rendered custom resources do not match their CRDs:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("crds.mjs prints a JSON array")
}

fn rendered_objects(rendered: &str) -> Vec<Value> {
    objects_checked(rendered, false)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    let mut found = objects.iter().filter(|o| o["kind"] == kind);
    let first = found.next();
    assert!(found.next().is_none(), "more than one {kind}");
    first
}

fn the<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    find(objects, kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or_else(|| panic!("no {pointer} in {value:#}"))
}

fn text(value: &Value, pointer: &str) -> String {
    at(value, pointer).as_str().unwrap_or_else(|| panic!("{pointer} is not a string")).to_owned()
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not a label map: {value}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("label values are strings").to_owned()))
        .collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// The Deployment's one container.
fn the_container(deployment: &Value) -> &Value {
    let containers = at(deployment, "/spec/template/spec/containers").as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The node.toml of the ConfigMap the Deployment mounts.
fn node_toml(objects: &[Value]) -> String {
    let deployment = the(objects, "Deployment");
    let volumes = at(deployment, "/spec/template/spec/volumes").as_array().unwrap();
    let name = volumes.iter().find_map(|v| v.pointer("/configMap/name")).expect("a ConfigMap volume");
    let config_map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == *name)
        .unwrap_or_else(|| panic!("the mounted ConfigMap {name} is not rendered"));
    text(config_map, "/data/node.toml")
}

#[test]
fn every_values_file_passes_helm_lint_strict() {
    for case in &CASES {
        let mut args = vec!["lint", "--strict", ".", "--namespace", NAMESPACE];
        for file in case.files {
            args.extend(["--values", file]);
        }
        // helm lint takes no --api-versions: the chart's own override says the APIs are served.
        if !case.extra.is_empty() {
            args.extend(["--set", "assumeApiVersions={monitoring.coreos.com/v1,keda.sh/v1alpha1}"]);
        }
        let out = helm::helm(&args);
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && printed.contains("0 chart(s) failed"), "{}: helm lint:\n{printed}", case.name);
    }
}

#[test]
fn renders_are_valid_objects_for_the_oldest_and_newest_kubernetes() {
    let validate = ops_tool("venv/bin/kubernetes-validate", "python");
    let dir = TempDir::new("helm-validate");
    for case in &CASES {
        for version in KUBE_VERSIONS {
            let mut args = case.extra.to_vec();
            args.extend(["--kube-version", version]);
            let file = dir.path().join(format!("{}-{version}.yaml", case.name));
            std::fs::write(&file, render(case.files, &args)).unwrap();
            let (ok, printed) = run(Command::new(&validate).args(["--strict", "--quiet", "-k", version]).arg(&file));
            assert!(ok && !printed.contains("ERROR"), "{} on Kubernetes {version}:\n{printed}", case.name);
            // Only the custom resources have no schema here (crds.mjs checks them).
            for warning in printed.lines().filter(|l| l.starts_with("WARN")) {
                assert!(
                    ["ScaledObject", "ServiceMonitor", "PrometheusRule"].iter().any(|k| warning.contains(k)),
                    "{}: {warning}",
                    case.name
                );
            }
        }
    }
    let err = try_render(&[], &["--kube-version", "1.27.0"]).unwrap_err();
    assert!(err.contains("kubeVersion"), "Chart.yaml refuses Kubernetes older than 1.28: {err}");
}

#[test]
fn custom_resources_match_their_crds() {
    // crds.mjs fails the test on any invalid or unknown field; here: every one is rendered.
    let objects = objects_checked(&render_case(case("irsa-keda-monitoring"), &[]), true);
    for kind in ["ScaledObject", "ServiceMonitor", "PrometheusRule"] {
        the(&objects, kind);
    }
    // Without the APIs: no monitoring objects; KEDA without its API is refused (the Deployment
    // would lose its replica count to nobody).
    let files = case("irsa-keda-monitoring").files;
    let rendered = render(files, &["--api-versions", "keda.sh/v1alpha1"]);
    assert!(documents(&rendered, "ServiceMonitor").is_empty() && documents(&rendered, "PrometheusRule").is_empty());
    let err = try_render(files, &[]).unwrap_err();
    assert!(err.contains("keda.sh/v1alpha1"), "{err}");
    let assumed = render(files, &["--set", "assumeApiVersions={monitoring.coreos.com/v1,keda.sh/v1alpha1}"]);
    assert_eq!(documents(&assumed, "ServiceMonitor").len(), 1, "assumeApiVersions stands in for --api-versions");
}

#[test]
fn objects_agree_on_selectors_ports_and_probes() {
    for case in &CASES {
        let objects = rendered_objects(&render_case(case, &[]));
        let name = case.name;
        let deployment = the(&objects, "Deployment");
        let pod_labels = labels(at(deployment, "/spec/template/metadata/labels"));
        let selector = labels(at(deployment, "/spec/selector/matchLabels"));
        assert!(!selector.is_empty() && is_subset(&selector, &pod_labels), "{name}: the Deployment selects its pods");

        let service = the(&objects, "Service");
        assert_eq!(labels(at(service, "/spec/selector")), selector, "{name}: Service selector");
        if let Some(pdb) = find(&objects, "PodDisruptionBudget") {
            assert_eq!(labels(at(pdb, "/spec/selector/matchLabels")), selector, "{name}: PDB selector");
        }
        if let Some(policy) = find(&objects, "NetworkPolicy") {
            assert_eq!(labels(at(policy, "/spec/podSelector/matchLabels")), selector, "{name}: NetworkPolicy");
            let ports = at(policy, "/spec/ingress/0/ports").as_array().unwrap();
            assert!(ports.iter().all(|p| p["port"] == "metrics"), "{name}: ingress only to the metrics port");
        }
        let spec = at(deployment, "/spec/template/spec");
        for constraint in spec["topologySpreadConstraints"].as_array().into_iter().flatten() {
            assert_eq!(labels(at(constraint, "/labelSelector/matchLabels")), selector, "{name}: spread constraint");
        }
        if let Some(monitor) = find(&objects, "ServiceMonitor") {
            let monitor_selector = labels(at(monitor, "/spec/selector/matchLabels"));
            assert_eq!(monitor_selector, selector, "{name}: ServiceMonitor selector");
            assert!(
                is_subset(&monitor_selector, &labels(at(service, "/metadata/labels"))),
                "{name}: it finds the Service"
            );
            assert_eq!(at(monitor, "/spec/namespaceSelector/matchNames/0"), at(service, "/metadata/namespace"));
            assert_eq!(text(monitor, "/spec/endpoints/0/port"), "metrics", "{name}: ServiceMonitor port");
            assert_eq!(text(monitor, "/spec/endpoints/0/path"), "/metrics");
        }

        // One port, named `metrics`, everywhere.
        let container = the_container(deployment);
        let ports = at(container, "/ports").as_array().unwrap();
        assert_eq!(ports.len(), 1, "{name}: one container port");
        assert_eq!(text(&ports[0], "/name"), "metrics");
        let port = ports[0]["containerPort"].as_u64().unwrap();
        assert_eq!(text(service, "/spec/ports/0/name"), "metrics", "{name}: Service port name");
        assert_eq!(text(service, "/spec/ports/0/targetPort"), "metrics", "{name}: Service targetPort");
        for (probe, path) in
            [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
        {
            let get = at(container, &format!("/{probe}/httpGet"));
            assert_eq!(text(get, "/path"), path, "{name}: {probe} path");
            assert_eq!(text(get, "/port"), "metrics", "{name}: {probe} port");
        }
        let config = tributary::run_config::RunConfig::from_toml(&node_toml(&objects)).unwrap();
        let listen = config.metrics.expect("the chart writes [metrics]").listen;
        assert_eq!((listen.ip().to_string(), u64::from(listen.port())), ("0.0.0.0".into(), port), "{name}");

        let account = text(spec, "/serviceAccountName");
        let accounts: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "ServiceAccount").collect();
        assert!(accounts.iter().any(|a| a["metadata"]["name"] == *account), "{name}: the ServiceAccount {account}");

        let scalers: Vec<&Value> =
            objects.iter().filter(|o| o["kind"] == "ScaledObject" || o["kind"] == "HorizontalPodAutoscaler").collect();
        for scaler in &scalers {
            assert_eq!(at(scaler, "/spec/scaleTargetRef/kind"), "Deployment");
            assert_eq!(at(scaler, "/spec/scaleTargetRef/name"), at(deployment, "/metadata/name"), "{name}");
        }
        assert_eq!(deployment["spec"].get("replicas").is_some(), scalers.is_empty(), "{name}: replicas iff no scaler");
    }
}

#[test]
fn node_toml_loads_with_the_node_parser_and_passes_tributary_check() {
    let dir = TempDir::new("helm-config");
    for case in &CASES {
        let objects = rendered_objects(&render_case(case, &[]));
        let toml = node_toml(&objects);
        let config = tributary::run_config::RunConfig::from_toml(&toml)
            .unwrap_or_else(|e| panic!("{}: the chart's node.toml does not load: {e}\n{toml}", case.name));
        // (The node refuses a key of another kind, e.g. a postgres url left in a redshift
        // [warehouse]: the chart leaves them out.)
        // The kubelet's SIGKILL comes after the grace period: a drain (bounded by the node at
        // shutdown_deadline + DRAIN_MARGIN) must end before.
        let grace =
            at(the(&objects, "Deployment"), "/spec/template/spec/terminationGracePeriodSeconds").as_u64().unwrap();
        let drain = config.node.shutdown_deadline + DRAIN_MARGIN;
        assert!(grace as f64 > drain.as_secs_f64(), "{}: grace {grace}s, drain up to {drain:?}", case.name);

        let file = dir.path().join(format!("{}.toml", case.name));
        std::fs::write(&file, &toml).unwrap();
        let (ok, printed) = run(Command::new(env!("CARGO_BIN_EXE_tributary")).args(["check", "--config"]).arg(&file));
        assert!(ok, "{}: `tributary check --config` refuses the chart's node.toml:\n{printed}\n{toml}", case.name);
    }
}

#[test]
fn default_render_is_hardened() {
    let objects = rendered_objects(&render_case(case("defaults"), &[]));
    let deployment = the(&objects, "Deployment");
    let pod = at(deployment, "/spec/template/spec");
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    for id in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert_eq!(security[id], 65532, "{id}");
    }
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], false);
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod.get(host).is_none_or(|v| v == false), "{host}");
    }
    let container = the_container(deployment);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(security["capabilities"].get("add").is_none() && security.get("privileged").is_none_or(|v| v == false));
    // Memory guaranteed (request = limit); CPU requested, never throttled by a limit.
    let resources = &container["resources"];
    for resource in ["cpu", "memory"] {
        assert!(resources["requests"][resource].is_string(), "resources.requests.{resource}");
    }
    assert!(resources["limits"]["memory"].is_string(), "resources.limits.memory");
    assert_eq!(resources["limits"]["memory"], resources["requests"]["memory"], "memory request = limit");
    assert!(resources["limits"].get("cpu").is_none(), "no CPU limit: {resources}");
    // The read-only root file system keeps a writable /tmp.
    let tmp = at(container, "/volumeMounts").as_array().unwrap().iter().find(|m| m["mountPath"] == "/tmp").unwrap();
    let volumes = at(pod, "/volumes").as_array().unwrap();
    assert!(volumes.iter().any(|v| v["name"] == tmp["name"] && v.get("emptyDir").is_some()), "/tmp is an emptyDir");

    assert_eq!(at(container, "/args"), &serde_json::json!(["run", "--config", "/etc/tributary/node.toml"]));
    let env = at(container, "/env").as_array().unwrap();
    let pod_name = env.iter().find(|e| e["name"] == "POD_NAME").expect("POD_NAME");
    assert_eq!(at(pod_name, "/valueFrom/fieldRef/fieldPath"), "metadata.name");
    assert_eq!(text(container, "/image"), format!("tributary:{}", env!("CARGO_PKG_VERSION")), "the tag is appVersion");
    let keys: BTreeSet<&str> =
        pod["topologySpreadConstraints"].as_array().unwrap().iter().filter_map(|c| c["topologyKey"].as_str()).collect();
    assert_eq!(keys, BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]));
    assert_eq!(pod["terminationGracePeriodSeconds"], 60);
    assert!(at(deployment, "/spec/template/metadata/annotations/checksum~1config").is_string());
    let pdb = the(&objects, "PodDisruptionBudget");
    assert_eq!(at(pdb, "/spec/maxUnavailable"), 1);
    // An unready node (a stale heartbeat) must not block node drains.
    assert_eq!(at(pdb, "/spec/unhealthyPodEvictionPolicy"), "AlwaysAllow");
    assert_eq!(at(the(&objects, "ServiceAccount"), "/automountServiceAccountToken"), false);
    assert!(the(&objects, "ServiceAccount")["metadata"].get("annotations").is_none(), "no IRSA role by default");
    for kind in ["ScaledObject", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"] {
        assert!(find(&objects, kind).is_none(), "{kind} is opt-in");
    }

    // With IRSA: the role annotation, the region, the image by digest.
    let objects = rendered_objects(&render_case(case("irsa-keda-monitoring"), &[]));
    let account = the(&objects, "ServiceAccount");
    assert_eq!(
        text(account, "/metadata/annotations/eks.amazonaws.com~1role-arn"),
        "arn:aws:iam::111122223333:role/tributary-tickets"
    );
    let container = the_container(the(&objects, "Deployment"));
    assert!(text(container, "/image").contains("/tributary@sha256:"));
    let env = at(container, "/env").as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "AWS_REGION" && e["value"] == "eu-west-1"));
}

#[test]
fn the_config_checksum_rolls_the_pods_on_a_config_change_only() {
    let checksum = |more: &[&str]| {
        let rendered = render_case(case("defaults"), more);
        let deployment = documents(&rendered, "Deployment")[0];
        deployment.lines().find_map(|l| l.trim().strip_prefix("checksum/config: ")).expect("the annotation").to_owned()
    };
    let base = checksum(&[]);
    assert_ne!(base, checksum(&["--set", "config.node.failover_time=12s"]), "a node.toml value changed");
    assert_ne!(base, checksum(&["--set", "config.warehouse.url=host=other sslmode=require"]));
    assert_eq!(base, checksum(&["--set", "replicaCount=3"]), "a change outside node.toml does not roll the pods");
}

#[test]
fn render_time_checks_refuse_what_would_break_a_drain_or_overscale() {
    let refused = |files: &[&str], args: &[&str], says: &str| match try_render(files, args) {
        Ok(_) => panic!("{files:?} {args:?} rendered; it should be refused saying {says:?}"),
        Err(err) => assert!(err.contains(says), "{args:?}: {err}"),
    };
    // The grace period must exceed shutdown_deadline (30s) + drainMarginSeconds (10).
    refused(&[], &["--set", "terminationGracePeriodSeconds=40"], "terminationGracePeriodSeconds (40) must exceed");
    try_render(&[], &["--set", "terminationGracePeriodSeconds=41"]).expect("41 > 30 + 10");
    refused(&[], &["--set", "config.node.shutdown_deadline=1m"], "config.node.shutdown_deadline (60s)");
    refused(&[], &["--set", "config.node.shutdown_deadline=soon"], "shutdown_deadline");
    // The margin covers at least the node's own DRAIN_MARGIN beyond shutdown_deadline.
    let margin = DRAIN_MARGIN.as_secs();
    let below = format!("drainMarginSeconds={}", margin - 1);
    refused(&[], &["--set", &below], &format!("drainMarginSeconds ({}) must be at least {margin}", margin - 1));
    try_render(&[], &["--set", &format!("drainMarginSeconds={margin}")]).expect("the node's own margin is enough");

    let keda = case("irsa-keda-monitoring");
    let with = |more: &[&'static str]| [keda.extra, more].concat();
    refused(
        keda.files,
        &with(&["--set", "autoscaling.keda.maxReplicaCount=9"]),
        "must not exceed autoscaling.openShards (8)",
    );
    refused(keda.files, &with(&["--set", "autoscaling.openShards=0"]), "autoscaling.openShards");
    refused(keda.files, &with(&["--set", "autoscaling.hpa.enabled=true"]), "not both");
    refused(keda.files, &with(&["--set", "autoscaling.keda.fallbackReplicas=1"]), "fallbackReplicas (1)");
    refused(
        keda.files,
        &with(&["--set", "autoscaling.keda.minReplicaCount=9"]),
        "autoscaling.keda.minReplicaCount (9) must be between 1 and autoscaling.keda.maxReplicaCount (8)",
    );
    refused(
        case("hpa").files,
        &["--set", "autoscaling.hpa.maxReplicas=1"],
        "autoscaling.hpa.minReplicas (2) must be between 1 and autoscaling.hpa.maxReplicas (1)",
    );
    refused(case("hpa").files, &["--set", "autoscaling.hpa.maxReplicas=5"], "autoscaling.hpa.maxReplicas (5)");
    // values.schema.json types the values.
    refused(&[], &["--set", "replicaCount=two"], "replicaCount");
    refused(&[], &["--set", "config.node.failover_time=ten"], "failover_time");
    refused(&[], &["--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=Never"], "unhealthyPodEvictionPolicy");
    let relaxed = render(&[], &["--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=IfHealthyBudget"]);
    assert!(documents(&relaxed, "PodDisruptionBudget")[0].contains("\n  unhealthyPodEvictionPolicy: IfHealthyBudget\n"));
}

/// What the node says of `[section] key = value` in `config` (a node.toml that loads), when it
/// refuses that key's value: the problem, or `None` if it loads or fails at another key.
fn refusal(config: &toml::Table, section: &str, key: &str, value: toml::Value) -> Option<String> {
    let mut config = config.clone();
    config[section].as_table_mut().unwrap().insert(key.to_owned(), value);
    let e = tributary::run_config::RunConfig::from_toml(&toml::to_string(&config).unwrap()).err()?;
    (e.field == format!("{section}.{key}")).then_some(e.problem)
}

#[test]
fn the_schema_holds_exactly_the_config_keys_the_node_reads() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(helm::chart_dir().join("values.schema.json")).unwrap()).unwrap();
    let config = at(&schema, "/properties/config/properties");
    // Rendered node.toml files that load, among them setting every key the schema types.
    let every_key = [
        "config.node.id=node-a",
        "config.node.failover_time=12s",
        "config.node.initial_position=at_timestamp",
        "config.node.initial_timestamp=2024-03-01T00:00:00Z",
        "config.node.shutdown_deadline=20s",
        "config.node.checkpoint_interval=2s",
        "config.node.read_interval=250ms",
        "config.node.idle_read_interval=1s",
        "config.node.batch_latency=750ms",
        "config.node.batch_rows=1000",
        "config.node.batch_bytes=1048576",
        "config.stream.consumer=efo",
        "config.stream.consumer_name=etl-efo",
        "config.warehouse.kind=redshift",
        "config.warehouse.cluster=analytics",
        "config.warehouse.database=dev",
        "config.warehouse.db_user=etl",
        "config.warehouse.lock_tables=false",
    ];
    let args: Vec<&str> = every_key.iter().flat_map(|kv| ["--set", kv]).collect();
    let cases = [case("defaults"), case("irsa-keda-monitoring")];
    let rendered: Vec<toml::Table> = [render(&[], &args), render_case(cases[0], &[]), render_case(cases[1], &[])]
        .iter()
        .map(|r| toml::from_str(&node_toml(&rendered_objects(r))).unwrap())
        .collect();
    for (section, keys) in tributary::run_config::keys_by_section() {
        if section == "metrics" {
            // [metrics] is the chart's own (listen on metrics.port): no config.metrics.
            assert_eq!(keys, ["listen"], "a new [metrics] key: give the chart a value for it");
            assert!(config.get("metrics").is_none());
            continue;
        }
        let schema = &config[section];
        assert_eq!(schema["additionalProperties"], false, "config.{section} refuses unknown keys");
        let properties = schema["properties"].as_object().unwrap();
        let listed: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
        assert_eq!(listed, keys.iter().copied().collect(), "config.{section}: the keys the node reads");
        // Each key is typed as the node reads it: a value of another type (or past the
        // minimum, or not in the enum) is refused at that key, naming what the node expects.
        for (key, property) in properties {
            let loaded = rendered.iter().find(|t| t[section].get(key).is_some());
            let loaded = loaded.unwrap_or_else(|| panic!("no rendered node.toml sets {section}.{key}: add it above"));
            let says = |value: toml::Value| refusal(loaded, section, key, value).unwrap_or_default();
            let string = |s: &str| toml::Value::String(s.into());
            let fits = if property["$ref"] == "#/definitions/duration" || property["type"] == "string" {
                says(toml::Value::Boolean(true)).contains("expected a string")
            } else if property["type"] == "integer" {
                let minimum = property["minimum"].as_i64().unwrap_or(i64::MIN);
                says(string("x")).contains("expected usize")
                    && !says(toml::Value::Integer(minimum - 1)).is_empty()
                    && says(toml::Value::Integer(minimum)).is_empty()
            } else if property["type"] == "boolean" {
                says(string("x")).contains("expected a boolean")
            } else if let Some(values) = property["enum"].as_array() {
                let problem = says(string("bogus"));
                let expected = problem.split_once("expected").map_or("", |(_, e)| e);
                let named: BTreeSet<&str> = expected.split('`').skip(1).step_by(2).collect();
                named == values.iter().map(|v| v.as_str().unwrap()).collect()
            } else {
                panic!("config.{section}.{key}: map the schema's {property} to a probe in this test")
            };
            assert!(fits, "config.{section}.{key} is typed {property} in values.schema.json, not as the node reads it");
        }
    }

    // A misspelt key in any section is refused before anything is made…
    for (section, key) in [("node", "failover_tme"), ("stream", "nmae"), ("lease_table", "nme"), ("warehouse", "kidn")]
    {
        let set = format!("config.{section}.{key}=x");
        let says = format!("at '/config/{section}': additional properties '{key}' not allowed");
        let err = try_render(&[], &["--set", &set]).err().unwrap_or_else(|| panic!("--set {set} rendered"));
        assert!(err.contains(&says), "helm template --set {set}: {err}");
        let out = helm::helm(&["lint", "--strict", ".", "--set", &set]);
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success() && printed.contains(&says), "helm lint --set {set}:\n{printed}");
    }
    // …and every key the schema types renders into a node.toml the node loads.
    let loaded = tributary::run_config::RunConfig::from_toml(&toml::to_string(&rendered[0]).unwrap())
        .expect("every typed key loads");
    assert_eq!(loaded.node.id.as_deref(), Some("node-a"));
    assert_eq!((loaded.sink.batch_rows, loaded.sink.batch_bytes), (1000, 1 << 20));
    assert_eq!(loaded.consumer.read_interval, std::time::Duration::from_millis(250));
    match loaded.warehouse {
        tributary::run_config::WarehouseSection::Redshift(w) => {
            assert!(!w.lock_tables && w.db_user.as_deref() == Some("etl"), "{w:?}")
        }
        other => panic!("not redshift: {other:?}"),
    }
}

#[test]
fn an_autoscaler_keeps_the_steady_state_of_replica_count() {
    // Off: replicaCount nodes. On (either autoscaler, defaults otherwise): never fewer, so a node
    // still stands by to take over a failed or drained node's shards.
    let objects = rendered_objects(&render_case(case("defaults"), &[]));
    let replicas = at(the(&objects, "Deployment"), "/spec/replicas").as_u64().unwrap();
    assert!(replicas >= 2, "replicaCount {replicas}: one node would leave nothing standing by");
    let on = |scaler: &str| -> Vec<Value> {
        let enable = format!("autoscaling.{scaler}.enabled=true");
        rendered_objects(&render_case(
            case("defaults"),
            &["--set", &enable, "--set", "autoscaling.openShards=4", "--api-versions", "keda.sh/v1alpha1"],
        ))
    };
    let keda = on("keda");
    let scaled = the(&keda, "ScaledObject");
    assert_eq!(at(scaled, "/spec/minReplicaCount").as_u64(), Some(replicas), "KEDA's minimum");
    let max = at(scaled, "/spec/maxReplicaCount").as_u64().unwrap();
    let fallback = at(scaled, "/spec/fallback/replicas").as_u64().unwrap();
    assert!(replicas <= fallback && fallback <= max && max <= 4, "min ≤ fallback ≤ max ≤ openShards");
    let hpa = on("hpa");
    let autoscaler = the(&hpa, "HorizontalPodAutoscaler");
    assert_eq!(at(autoscaler, "/spec/minReplicas").as_u64(), Some(replicas), "the HPA's minimum");
    assert!(at(autoscaler, "/spec/maxReplicas").as_u64().unwrap() <= 4);
}

#[test]
fn the_prometheus_rule_is_alerts_yml_verbatim_and_packaged() {
    let alerts_path = repo().join("deploy/prometheus/alerts.yml");
    let alerts = std::fs::read_to_string(&alerts_path).unwrap();
    let chart = helm::chart_dir();
    assert_eq!(
        std::fs::canonicalize(chart.join("files/alerts.yml")).unwrap(),
        std::fs::canonicalize(&alerts_path).unwrap(),
        "files/alerts.yml links to deploy/prometheus/alerts.yml"
    );
    // The spec is the file, indented by two, after the chart's two comment lines.
    let embedded = |rendered: &str| -> String {
        let rule = documents(rendered, "PrometheusRule")[0];
        let spec = rule.split_once("\nspec:\n").expect("a spec").1;
        let lines: Vec<&str> = spec.lines().skip(2).map(|l| l.strip_prefix("  ").unwrap_or(l)).collect();
        lines.join("\n").trim_end().to_owned()
    };
    let same_lines = |embedded: &str, expected: &str, what: &str| {
        let (embedded, expected): (Vec<&str>, Vec<&str>) = (embedded.lines().collect(), expected.lines().collect());
        if let Some(i) = (0..embedded.len().max(expected.len())).find(|&i| embedded.get(i) != expected.get(i)) {
            let (line, want) = (embedded.get(i), expected.get(i));
            panic!("the PrometheusRule's spec is not {what}: line {} reads {line:?}, not {want:?}", i + 1);
        }
    };
    let keda = case("irsa-keda-monitoring");
    let rendered = render_case(keda, &[]);
    same_lines(&embedded(&rendered), alerts.trim_end(), "alerts.yml as it is (release tributary)");
    assert!(alerts.contains("{{ $labels."), "alerts.yml's Prometheus templates are kept");
    // Another release: only the job, which a ServiceMonitor names after the Service, changes.
    let job = r#"job="tributary""#;
    assert!(alerts.contains(job), "alerts.yml selects {job} (TributaryDown): the substitution is checked on it");
    let args = [keda.extra, &["--kube-version", KUBE_VERSIONS[0]]].concat();
    let other = try_render_release("other", keda.files, &args).unwrap_or_else(|e| panic!("release other: {e}"));
    let service = documents(&other, "Service")[0];
    assert!(service.contains("\n  name: other-tributary\n"), "{service}");
    let other_spec = embedded(&other);
    same_lines(
        &other_spec,
        &alerts.trim_end().replace(job, r#"job="other-tributary""#),
        "alerts.yml for release other",
    );
    let dir = TempDir::new("helm-rules");
    let rules = dir.path().join("other.yml");
    std::fs::write(&rules, &other_spec).unwrap();
    prometheus::promtool(&["check", "rules", rules.to_str().unwrap()], "");
    let objects = rendered_objects(&rendered);
    let groups = at(the(&objects, "PrometheusRule"), "/spec/groups").as_array().unwrap();
    let alert_lines = alerts.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    assert_eq!(groups.iter().map(|g| g["rules"].as_array().unwrap().len()).sum::<usize>(), alert_lines);

    // `helm package` puts the linked files' contents in the archive.
    let dir = TempDir::new("helm-package");
    let out = helm::helm(&["package", ".", "--destination", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "helm package: {}", String::from_utf8_lossy(&out.stderr));
    let archive = dir.path().join(format!("tributary-{}.tgz", chart_field("version")));
    let (ok, printed) = run(Command::new("tar").arg("xzf").arg(&archive).arg("-C").arg(dir.path()));
    assert!(ok, "tar: {printed}");
    let packaged = dir.path().join("tributary/files");
    assert!(!packaged.join("alerts.yml").is_symlink());
    assert_eq!(std::fs::read_to_string(packaged.join("alerts.yml")).unwrap(), alerts);
    assert_eq!(
        std::fs::read(packaged.join("tributary.json")).unwrap(),
        std::fs::read(chart.join("files/tributary.json")).unwrap()
    );
}

#[test]
fn the_dashboard_configmap_carries_the_dashboard() {
    let chart_file = helm::chart_dir().join("files/tributary.json");
    assert_eq!(
        std::fs::canonicalize(&chart_file).ok(),
        std::fs::canonicalize(repo().join("deploy/grafana/tributary.json")).ok(),
        "files/tributary.json links to deploy/grafana/tributary.json"
    );
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&chart_file).unwrap()).unwrap();
    let rendered = render_case(case("irsa-keda-monitoring"), &[]);
    let objects = rendered_objects(&rendered);
    let config_map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a ConfigMap labelled grafana_dashboard: \"1\"");
    let embedded: Value = serde_json::from_str(&text(config_map, "/data/tributary.json")).unwrap();
    assert_eq!(embedded, dashboard);
    let relabelled = render_case(
        case("irsa-keda-monitoring"),
        &["--set", "grafanaDashboard.label=dashboards", "--set", "grafanaDashboard.namespace=grafana"],
    );
    let objects = rendered_objects(&relabelled);
    let config_map = objects.iter().find(|o| o["metadata"]["labels"]["dashboards"] == "1").expect("the label is set");
    assert_eq!(config_map["metadata"]["namespace"], "grafana");
    // Off by default: node.toml's is the one ConfigMap.
    let defaults = rendered_objects(&render_case(case("defaults"), &[]));
    assert_eq!(defaults.iter().filter(|o| o["kind"] == "ConfigMap").count(), 1);
}

#[test]
fn the_keda_query_selects_the_nodes_and_parses() {
    let files = case("irsa-keda-monitoring").files;
    let query = helm::keda_query(files, &[]);
    assert_eq!(query, format!(r#"max(tributary_shard_lag_seconds{{namespace="{NAMESPACE}",job="{RELEASE}"}})"#));
    let settable = helm::keda_query(
        files,
        &["--set", "autoscaling.keda.prometheus.job=nodes", "--set", "autoscaling.keda.prometheus.namespace=test"],
    );
    assert_eq!(settable, r#"max(tributary_shard_lag_seconds{namespace="test",job="nodes"})"#);
    // The default job is the Service's name: the job a ServiceMonitor gives its targets.
    let renamed = render(files, &[MONITORING_AND_KEDA, &["--set", "fullnameOverride=orders"]].concat());
    let service = documents(&renamed, "Service")[0];
    assert!(service.contains("\n  name: orders\n"), "{service}");
    let query = helm::keda_query(files, &["--set", "fullnameOverride=orders"]);
    assert_eq!(query, format!(r#"max(tributary_shard_lag_seconds{{namespace="{NAMESPACE}",job="orders"}})"#));
    let whole = helm::keda_query(files, &["--set", "autoscaling.keda.prometheus.query=max(up)"]);
    assert_eq!(whole, "max(up)");

    // Prometheus parses it, and it reads only metrics a node exports.
    let dir = TempDir::new("helm-query");
    let rules = dir.path().join("query.yml");
    std::fs::write(
        &rules,
        format!("groups:\n  - name: keda\n    rules:\n      - record: lag\n        expr: {query:?}\n"),
    )
    .unwrap();
    prometheus::promtool(&["check", "rules", rules.to_str().unwrap()], "");
    let exported = worker::NodeMetrics::default().metric_names();
    for name in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("tributary_"))
    {
        assert!(exported.iter().any(|e| e == name), "the query reads {name}, which a node does not export");
    }

    let objects = rendered_objects(&render_case(case("irsa-keda-monitoring"), &[]));
    let scaled = the(&objects, "ScaledObject");
    let trigger = at(scaled, "/spec/triggers/0");
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(trigger["metadata"]["ignoreNullValues"], "false", "a failing query falls back");
    assert_eq!(at(scaled, "/spec/fallback/replicas"), 4);
    assert_eq!(at(scaled, "/spec/maxReplicaCount"), 8, "the open shard count");
    let objects = rendered_objects(&render_case(case("hpa"), &[]));
    let metric = at(the(&objects, "HorizontalPodAutoscaler"), "/spec/metrics/0/external/metric");
    assert_eq!(metric["selector"]["matchLabels"], serde_json::json!({"namespace": NAMESPACE, "job": RELEASE}));
}

#[test]
fn checkov_passes_every_render() {
    let checkov = ops_tool("venv/bin/checkov", "python");
    let dir = TempDir::new("helm-checkov");
    for case in &CASES {
        // Each render its own release: checkov matches objects across files by their labels
        // (a NetworkPolicy of one render would otherwise cover another's pods).
        let mut args = vec!["template", case.name, ".", "--namespace", NAMESPACE];
        for file in case.files {
            args.extend(["--values", file]);
        }
        args.extend(case.extra);
        let out = helm::helm(&args);
        assert!(out.status.success(), "{}: {}", case.name, String::from_utf8_lossy(&out.stderr));
        std::fs::write(dir.path().join(format!("{}.yaml", case.name)), out.stdout).unwrap();
    }
    let skips = [
        // "Image should use digest": the default cannot name the digest of an image the user
        // builds; `image.digest` pins it (the IRSA values do).
        "CKV_K8S_43",
        // "Image Pull Policy should be Always": tags are immutable releases (or a digest);
        // IfNotPresent spares every restart a registry round trip and dependency.
        "CKV_K8S_15",
        // "Prefer secrets as files over environment variables": the node reads PGPASSWORD
        // (libpq's convention) and the tokenize key from its environment by design (README.md:
        // no secrets in node.toml).
        "CKV_K8S_35",
        // "CPU limits should be set": a limit only throttles a consumer (more lag, drains and
        // probe answers cut short); the CPU request reserves its share, memory is limited.
        "CKV_K8S_11",
    ];
    let (ok, printed) = run(Command::new(checkov)
        .args(["--skip-download", "--quiet", "--compact", "--framework", "kubernetes", "-d"])
        .arg(dir.path())
        .args(["--skip-check", &skips.join(",")]));
    assert!(ok, "checkov:\n{printed}");
    assert!(printed.contains("Passed checks"), "checkov ran its checks:\n{printed}");
}

fn chart_field(key: &str) -> String {
    let chart = std::fs::read_to_string(helm::chart_dir().join("Chart.yaml")).unwrap();
    let prefix = format!("{key}: ");
    chart.lines().find_map(|l| l.strip_prefix(&prefix)).expect("the field").trim_matches('"').to_owned()
}

#[test]
fn the_chart_tracks_the_crate_version() {
    assert_eq!(chart_field("appVersion"), env!("CARGO_PKG_VERSION"), "Chart.yaml's appVersion is tributary's version");
    assert_eq!(chart_field("apiVersion"), "v2");
}

// ---------------------------------------------------------------------------------------------
// The IAM policy: exactly the actions of the AWS calls the node makes.
//
// The node is `tributary run`. It reaches the adapters only through the four ports (worker/ and
// coordinator/ name no AWS type) and through what src/run.rs calls by name; from those roots the
// test follows calls between an adapter's own functions. What gen and the tests use to write and
// reshard streams (`put_records`, `create_stream`, `split`, `merge`, `wait_active`) is reached
// from neither, and `local_stack.rs` (the tests' emulators) makes no SDK call. Every SDK call is
// `self.<client field>.<operation>(…)…send()`; a call made any other way fails the check
// instead of slipping past it.

/// The adapters with AWS SDK calls.
const ADAPTERS: [&str; 7] = [
    "aws.rs",
    "kinesis.rs",
    "kinesis_fan_out.rs",
    "dynamodb_lease_table.rs",
    "dynamodb_reference.rs",
    "redshift_data.rs",
    "s3_staging.rs",
];
/// The ports the node reaches the adapters through (worker/ and coordinator/ call nothing else).
const PORTS: [&str; 4] = ["ShardReader", "LeaseTable", "ReferenceSource", "Warehouse"];

/// Source with string literals, char literals and comments blanked (same length), so braces
/// and identifiers can be matched on code alone.
fn code_only(source: &str) -> String {
    let b = source.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = source[i..].find('\n').map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let end = source[i..].find("*/").map_or(b.len(), |n| i + n + 2);
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let start = i + 2 + hashes;
            let end = source[start..].find(&close).map_or(b.len(), |n| start + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\')) {
            // A char literal ('x' or '\n'), not a lifetime.
            let end = source[i + 2..].find('\'').map_or(b.len(), |n| i + 2 + n + 1);
            blank(&mut out, i, end);
            i = end;
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII blanks were written")
}

/// The byte after the `}` closing the `{` at `open`.
fn block_end(code: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i + 1;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Starts of the keyword `word` (not part of a longer identifier).
fn keyword_at(code: &str, word: &str) -> Vec<usize> {
    code.match_indices(word)
        .map(|(i, _)| i)
        .filter(|&i| !code[..i].ends_with(is_ident) && code[i + word.len()..].starts_with(|c: char| c.is_whitespace()))
        .collect()
}

/// Names called in `code` (an identifier right before `(`), whitespace ignored.
fn calls(code: &str) -> BTreeSet<String> {
    let dense: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    dense
        .match_indices('(')
        .filter_map(|(i, _)| {
            let start = dense[..i].rfind(|c: char| !is_ident(c)).map_or(0, |s| s + 1);
            (start < i).then(|| dense[start..i].to_owned())
        })
        .collect()
}

struct Function {
    name: String,
    body: String,
    /// In an `impl <Port> for …` block: the node calls it through the port.
    port: bool,
}

/// An adapter's functions outside its `#[cfg(test)]` module, and the SDK clients its structs
/// hold (field → SDK crate).
fn functions(code: &str) -> Vec<Function> {
    let impls: Vec<(usize, usize, bool)> = keyword_at(code, "impl")
        .into_iter()
        .map(|i| {
            let open = i + code[i..].find('{').unwrap();
            let header = &code[i..open];
            let port = header.contains(" for ")
                && PORTS.iter().any(|p| header.split(" for ").next().unwrap().trim().ends_with(p));
            (i, block_end(code, open), port)
        })
        .collect();
    keyword_at(code, "fn")
        .into_iter()
        .filter_map(|i| {
            let rest = &code[i + 2..];
            let name: String = rest.trim_start().chars().take_while(|&c| is_ident(c)).collect();
            let open = i + code[i..].find(['{', ';'])?;
            if !code[open..].starts_with('{') {
                return None;
            }
            let end = block_end(code, open);
            let port = impls.iter().any(|&(s, e, port)| port && s < i && i < e);
            Some(Function { name, body: code[open..end].to_owned(), port })
        })
        .collect()
}

fn camel(snake: &str) -> String {
    snake.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect()
}

/// The IAM action of each SDK call in `code` (`self.<client field>.<operation>(`).
fn sdk_actions(code: &str, clients: &BTreeMap<String, &'static str>) -> Vec<String> {
    let dense: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let mut actions = Vec::new();
    for (field, prefix) in clients {
        let pattern = format!("self.{field}.");
        for (i, _) in dense.match_indices(&pattern) {
            let op: String = dense[i + pattern.len()..].chars().take_while(|&c| is_ident(c)).collect();
            if dense[i + pattern.len() + op.len()..].starts_with('(') {
                actions.push(format!("{prefix}:{}", camel(&op)));
            }
        }
    }
    actions
}

/// The SDK client fields of an adapter's structs, with the IAM prefix of their service.
fn client_fields(code: &str) -> BTreeMap<String, &'static str> {
    let dense: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let prefix = |krate: &str| match krate {
        "kinesis" => "kinesis",
        // DynamoDB Streams' actions carry DynamoDB's prefix.
        "dynamodb" | "dynamodbstreams" => "dynamodb",
        "redshiftdata" => "redshift-data",
        "s3" => "s3",
        other => panic!("an SDK client of aws_sdk_{other}: map its service to an IAM prefix in this test"),
    };
    let mut fields = BTreeMap::new();
    for (i, _) in dense.match_indices("useaws_sdk_") {
        let statement = &dense[i..i + dense[i..].find(';').unwrap()];
        let Some((krate, alias)) = statement["useaws_sdk_".len()..].split_once("::Client") else { continue };
        let alias = alias.strip_prefix("as").unwrap_or("Client");
        for end in [",", "}"] {
            for (j, _) in dense.match_indices(&format!(":{alias}{end}")) {
                let field = &dense[dense[..j].rfind(|c: char| !is_ident(c)).unwrap() + 1..j];
                fields.insert(field.to_owned(), prefix(krate));
            }
        }
    }
    fields
}

/// Actions the node's calls need beyond the calls' own, each tied to the code that needs it:
/// the Data API reads `secret_arn` with the caller's permission, and `db_user` asks Redshift for
/// temporary credentials (Redshift's "Configuring IAM permissions" for the Data API).
const IMPLIED: [(&str, &str, &str); 2] = [
    ("redshift_data.rs", "set_secret_arn(", "secretsmanager:GetSecretValue"),
    ("redshift_data.rs", "set_db_user(", "redshift:GetClusterCredentials"),
];

/// Every AWS action the node (`tributary run`) needs, and the ones the adapters' other callers
/// (`gen`, the tests) use and the node never reaches.
/// `src/run.rs` (the node's wiring) and the adapters' sources, by file name.
struct Sources {
    run: String,
    adapters: Vec<(&'static str, String)>,
}

impl Sources {
    fn read() -> Self {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self {
            run: read(&repo().join("src/run.rs")),
            adapters: ADAPTERS.iter().map(|f| (*f, read(&repo().join("adapters/src").join(f)))).collect(),
        }
    }

    /// Replaces `from` (which must occur) by `to` in `file` (`run.rs` or an adapter).
    fn edit(&mut self, file: &str, from: &str, to: &str) {
        let text = if file == "run.rs" {
            &mut self.run
        } else {
            &mut self.adapters.iter_mut().find(|(f, _)| *f == file).expect("an adapter").1
        };
        assert!(text.contains(from), "{file} has no {from:?}");
        *text = text.replacen(from, to, 1);
    }
}

fn node_actions(sources: &Sources) -> (BTreeSet<String>, BTreeSet<String>) {
    // Each adapter's functions and SDK clients.
    let parsed: Vec<(&str, Vec<Function>, BTreeMap<String, &'static str>)> = sources
        .adapters
        .iter()
        .map(|(file, source)| {
            let source = source.split("#[cfg(test)]\nmod tests").next().unwrap();
            let code = code_only(source);
            let clients = client_fields(&code);
            // Every SDK request is sent: a call made other than as `self.<client>.<op>(` shows up here.
            let sends = code.chars().filter(|c| !c.is_whitespace()).collect::<String>().matches(".send()").count();
            assert_eq!(sends, sdk_actions(&code, &clients).len(), "{file}: an SDK call this test cannot attribute");
            (*file, functions(&code), clients)
        })
        .collect();
    // The node reaches an adapter through the ports and through what src/run.rs calls; from there
    // through what those functions call, in their own file or in another adapter (the Data API's
    // COPY load stages its files through s3_staging.rs).
    let called_by_run = calls(&code_only(&sources.run));
    let mut reached: BTreeSet<(&str, String)> = parsed
        .iter()
        .flat_map(|(file, functions, _)| {
            functions.iter().filter(|f| f.port || called_by_run.contains(&f.name)).map(|f| (*file, f.name.clone()))
        })
        .collect();
    loop {
        let called: BTreeSet<String> = parsed
            .iter()
            .flat_map(|(file, functions, _)| functions.iter().map(move |f| (file, f)))
            .filter(|(file, f)| reached.contains(&(**file, f.name.clone())))
            .flat_map(|(_, f)| calls(&f.body))
            .collect();
        let more: Vec<(&str, String)> = parsed
            .iter()
            .flat_map(|(file, functions, _)| functions.iter().map(move |f| (*file, f.name.clone())))
            .filter(|(file, name)| called.contains(name) && !reached.contains(&(*file, name.clone())))
            .collect();
        if more.is_empty() {
            break;
        }
        reached.extend(more);
    }
    let (mut node, mut all) = (BTreeSet::new(), BTreeSet::new());
    for (file, functions, clients) in &parsed {
        for f in functions {
            let actions = sdk_actions(&f.body, clients);
            all.extend(actions.iter().cloned());
            if reached.contains(&(*file, f.name.clone())) {
                node.extend(actions);
                for (_, marker, action) in IMPLIED.iter().filter(|(at, _, _)| at == file) {
                    if f.body.chars().filter(|c| !c.is_whitespace()).collect::<String>().contains(marker) {
                        node.insert((*action).to_owned());
                    }
                }
            }
        }
    }
    let others = all.difference(&node).cloned().collect();
    (node, others)
}

/// The actions `policy` grants, after checking each statement's shape: Allow, and resources
/// of the actions' own service with the placeholders' region and account (`"*"` only where the
/// action takes no resource, limited by a condition).
fn granted_actions(policy: &Value) -> BTreeSet<String> {
    assert_eq!(policy["Version"], "2012-10-17");
    let mut granted = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        let sid = statement["Sid"].as_str().expect("every statement has a Sid");
        assert_eq!(statement["Effect"], "Allow", "{sid}");
        let actions: Vec<&str> = statement["Action"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let resources: Vec<&str> = match &statement["Resource"] {
            Value::String(one) => vec![one.as_str()],
            many => many.as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect(),
        };
        for resource in &resources {
            if *resource == "*" {
                // Only statement polling and cancelling take no resource (the Data API names no
                // statement ARN); they are limited to the node's own statements.
                let unscoped = ["redshift-data:DescribeStatement", "redshift-data:CancelStatement"];
                assert!(actions.iter().all(|a| unscoped.contains(a)), "{sid}: \"*\" for {actions:?}");
                let condition = &statement["Condition"]["StringEquals"]["redshift-data:statement-owner-iam-userid"];
                assert_eq!(condition, "${aws:userid}", "{sid}: only the caller's own statements");
                continue;
            }
            for action in &actions {
                if action.starts_with("s3:") {
                    // S3 ARNs name no region or account: the staging prefix's objects only.
                    assert_eq!(*resource, "arn:aws:s3:::${StagingBucket}/${StagingPrefix}*", "{sid}: {action}");
                    continue;
                }
                let arn_services: &[&str] = match action.split(':').next().unwrap() {
                    "redshift-data" => &["redshift", "redshift-serverless"],
                    other => &[other],
                };
                let scoped = |s: &&str| resource.starts_with(&format!("arn:aws:{s}:${{Region}}:${{Account}}:"));
                assert!(arn_services.iter().any(scoped), "{sid}: {action} on {resource}");
            }
        }
        granted.extend(actions.into_iter().map(str::to_owned));
    }
    granted
}

/// What the node calls and `granted` lacks, and what `granted` holds that the node never calls.
fn gaps(node: &BTreeSet<String>, granted: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    (node.difference(granted).cloned().collect(), granted.difference(node).cloned().collect())
}

fn read_policy() -> (String, BTreeSet<String>) {
    let text = std::fs::read_to_string(repo().join("deploy/helm/iam-policy.json")).unwrap();
    let granted = granted_actions(&serde_json::from_str(&text).expect("iam-policy.json is JSON"));
    (text, granted)
}

#[test]
fn the_iam_policy_grants_exactly_what_the_node_calls() {
    let (policy, granted) = read_policy();
    let (node, others) = node_actions(&Sources::read());
    eprintln!("the node calls {node:?}\nonly gen and the tests call {others:?}");
    let (missing, extra) = gaps(&node, &granted);
    assert!(missing.is_empty(), "the node calls {missing:?}, which deploy/helm/iam-policy.json does not grant");
    assert!(extra.is_empty(), "deploy/helm/iam-policy.json grants {extra:?}, which the node never calls");
    // gen and the tests write and reshard streams; the node only reads.
    assert!(others.contains("kinesis:PutRecords") && others.contains("kinesis:CreateStream"), "{others:?}");

    // Every placeholder is explained in the chart's README.
    let readme = std::fs::read_to_string(repo().join("deploy/helm/README.md")).unwrap();
    for (i, _) in policy.match_indices("${") {
        let name = &policy[i..i + policy[i..].find('}').unwrap() + 1];
        if name != "${aws:userid}" {
            assert!(readme.contains(&format!("`{name}`")), "deploy/helm/README.md does not explain {name}");
        }
    }
}

/// The role COPY reads the staged files as (`copy_role`): Redshift may assume it, and it may
/// read and list the staging prefix the node writes under, nothing else; its placeholders are
/// those of the node's policy and explained in the chart's README.
#[test]
fn the_copy_role_reads_exactly_the_prefix_the_node_stages_under() {
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/helm").join(name)).unwrap()).unwrap()
    };
    let trust = read("redshift-copy-role-trust.json");
    let services = &trust["Statement"][0]["Principal"]["Service"];
    assert_eq!(trust["Statement"][0]["Action"], "sts:AssumeRole");
    assert!(services.as_array().unwrap().contains(&Value::from("redshift.amazonaws.com")), "{services}");
    let policy = read("redshift-copy-role-policy.json");
    let mut granted = BTreeMap::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        for action in statement["Action"].as_array().unwrap() {
            granted.insert(action.as_str().unwrap().to_owned(), statement.clone());
        }
    }
    assert_eq!(granted.keys().collect::<Vec<_>>(), ["s3:GetObject", "s3:ListBucket"]);
    let (node_policy, _) = read_policy();
    let objects = "arn:aws:s3:::${StagingBucket}/${StagingPrefix}*";
    assert!(node_policy.contains(objects), "the node stages under the same prefix");
    assert_eq!(granted["s3:GetObject"]["Resource"], serde_json::json!([objects]));
    assert_eq!(granted["s3:ListBucket"]["Resource"], serde_json::json!(["arn:aws:s3:::${StagingBucket}"]));
    let prefix = &granted["s3:ListBucket"]["Condition"]["StringLike"]["s3:prefix"];
    assert_eq!(prefix, &serde_json::json!(["${StagingPrefix}*"]), "listing limited to the prefix");
    let readme = std::fs::read_to_string(repo().join("deploy/helm/README.md")).unwrap();
    for name in
        ["redshift-copy-role-trust.json", "redshift-copy-role-policy.json", "`${StagingBucket}`", "`${StagingPrefix}`"]
    {
        assert!(readme.contains(name), "deploy/helm/README.md does not mention {name}");
    }
}

#[test]
fn a_new_call_in_the_node_without_a_policy_update_fails_the_policy_check() {
    let (_, granted) = read_policy();
    let missing = |sources: &Sources| gaps(&node_actions(sources).0, &granted).0;
    // A call added inside a port method's reach…
    let mut sources = Sources::read();
    sources.edit(
        "kinesis.rs",
        "let result = self.client.get_records()",
        "self.client.describe_stream().stream_name(&self.stream).send().await.ok();\n        \
         let result = self.client.get_records()",
    );
    assert_eq!(missing(&sources), ["kinesis:DescribeStream"]);
    // …or src/run.rs starting to call what only gen called.
    let mut sources = Sources::read();
    sources.edit(
        "run.rs",
        "let sdk = adapters::aws::load_config().await;",
        "let sdk = adapters::aws::load_config().await;\n    Kinesis::new(&sdk, \"s\").create_stream(1).await?;",
    );
    assert_eq!(missing(&sources), ["kinesis:CreateStream"]);
    // A call through something else than `self.<client>.<op>(` is refused rather than missed.
    sources.edit(
        "redshift_data.rs",
        "let out = call.send()",
        "let c = &self.client;\n        c.list_databases().send().await.ok();\n        let out = call.send()",
    );
    let refused = std::panic::catch_unwind(|| node_actions(&sources)).expect_err("an unattributed call");
    let message = refused.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("redshift_data.rs: an SDK call this test cannot attribute"), "{message}");
}

#[test]
fn the_policy_check_sees_calls_the_node_makes_through_any_path() {
    // The parser behind the policy check, on a made-up adapter: a port's method, a helper it
    // calls, a function src/run.rs-style code would call, and one nobody in the node calls.
    let code = code_only(
        r#"
        use aws_sdk_kinesis::Client;
        struct K { client: Client, n: u8 }
        impl K {
            async fn helper(&self) { self.client.get_records().send().await; }
            pub async fn for_gen(&self) { let s = "{ fn not_code() }"; self.client.put_records().send().await; }
        }
        #[async_trait]
        impl ShardReader for K {
            async fn read(&self) { self.helper().await; }
        }
        "#,
    );
    let clients = client_fields(&code);
    assert_eq!(clients, BTreeMap::from([("client".to_owned(), "kinesis")]));
    let functions = functions(&code);
    let names: Vec<(&str, bool)> = functions.iter().map(|f| (f.name.as_str(), f.port)).collect();
    assert_eq!(names, [("helper", false), ("for_gen", false), ("read", true)]);
    assert_eq!(sdk_actions(&code, &clients), ["kinesis:GetRecords", "kinesis:PutRecords"]);
    assert!(calls(&functions[2].body).contains("helper"));
}
