//! The Helm chart in `deploy/helm/tributary`, for tests: rendering it with the helm that
//! `deploy/local/ops-tools.sh helm` installs (under `$TRIBUTARY_STACK_DIR/ops`, default
//! `target/local-stack/ops`), and the query its KEDA ScaledObject gives Prometheus.
//!
//! ```ignore
//! mod helm;
//! let yaml = helm::render(&["ci/irsa-keda-monitoring-values.yaml"], &["--api-versions", "keda.sh/v1alpha1"]);
//! // the lag query for nodes Prometheus scrapes as job "nodes" in namespace "test":
//! let query = helm::keda_query(
//!     &["ci/irsa-keda-monitoring-values.yaml"],
//!     &["--set", "autoscaling.keda.prometheus.job=nodes", "--set", "autoscaling.keda.prometheus.namespace=test"],
//! );
//! ```
// Each test crate uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The release name and namespace of every render (the chart's full name is then `tributary`).
pub const RELEASE: &str = "tributary";
pub const NAMESPACE: &str = "tributary";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    repo().join("deploy/helm/tributary")
}

/// Where `deploy/local/ops-tools.sh` installs the operations tools.
pub fn ops_dir() -> PathBuf {
    testkit::local_stack::stack_dir().join("ops")
}

/// An installed tool under the ops directory; fails the test naming the install command.
pub fn ops_tool(relative: &str, part: &str) -> PathBuf {
    let path = ops_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: install it with `deploy/local/ops-tools.sh {part}` (or `deploy/local/stack.sh install`)",
        path.display()
    );
    path
}

pub fn helm_bin() -> PathBuf {
    ops_tool("bin/helm", "helm")
}

/// `helm ARGS` (in the chart's directory): its output, whatever the exit status.
pub fn helm(args: &[&str]) -> Output {
    Command::new(helm_bin()).args(args).current_dir(chart_dir()).output().expect("helm runs")
}

fn template_args<'a>(release: &'a str, values_files: &'a [&'a str], extra_args: &'a [&'a str]) -> Vec<&'a str> {
    let mut args = vec!["template", release, ".", "--namespace", NAMESPACE];
    for file in values_files {
        args.extend(["--values", file]);
    }
    args.extend(extra_args);
    args
}

/// `helm template` of the chart with these values files (relative to the chart, e.g.
/// `ci/hpa-values.yaml`, or absolute) and extra arguments (`--set k=v`, `--api-versions …`,
/// `--kube-version …`): the objects as one multi-document YAML, or helm's error.
pub fn try_render(values_files: &[&str], extra_args: &[&str]) -> Result<String, String> {
    try_render_release(RELEASE, values_files, extra_args)
}

/// Like `try_render`, as the release `release` (the chart's full name is then
/// `<release>-tributary`, or `release` itself when it contains `tributary`).
pub fn try_render_release(release: &str, values_files: &[&str], extra_args: &[&str]) -> Result<String, String> {
    let out = helm(&template_args(release, values_files, extra_args));
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm prints UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Like `try_render`; fails the test when helm refuses.
pub fn render(values_files: &[&str], extra_args: &[&str]) -> String {
    try_render(values_files, extra_args)
        .unwrap_or_else(|e| panic!("helm template {values_files:?} {extra_args:?} failed:\n{e}"))
}

/// The documents of a render whose `kind:` line says `kind`.
pub fn documents<'a>(rendered: &'a str, kind: &str) -> Vec<&'a str> {
    let line = format!("\nkind: {kind}\n");
    rendered.split("\n---").filter(|doc| doc.contains(&line)).collect()
}

/// The PromQL query of the KEDA ScaledObject rendered with these values files and arguments
/// (KEDA's API is assumed served). Its series selector takes
/// `autoscaling.keda.prometheus.{namespace,job}` (defaults: the release namespace and the
/// Service's name, `tributary`), or `autoscaling.keda.prometheus.query` whole.
pub fn keda_query(values_files: &[&str], extra_args: &[&str]) -> String {
    let mut args = extra_args.to_vec();
    args.extend(["--api-versions", "keda.sh/v1alpha1", "--set", "autoscaling.keda.enabled=true"]);
    let rendered = render(values_files, &args);
    let objects = documents(&rendered, "ScaledObject");
    assert_eq!(objects.len(), 1, "one ScaledObject in:\n{rendered}");
    let line = objects[0]
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("query: "))
        .unwrap_or_else(|| panic!("no query in the ScaledObject:\n{}", objects[0]));
    // Helm's `quote` writes a double-quoted string with JSON's escapes.
    serde_json::from_str(line).unwrap_or_else(|e| panic!("query {line}: {e}"))
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("tributary-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
