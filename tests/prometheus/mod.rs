//! What the tests of tributary's Prometheus side share: scraping `/metrics`, reading a sample,
//! and Prometheus's own `promtool` (Debian: `apt-get install prometheus`; `.ci/run` installs it).
// Each test crate uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` on `addr`: the response head (lowercased) and the body; the status must be 200.
pub async fn scrape(addr: impl tokio::net::ToSocketAddrs) -> (String, String) {
    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    (head, body)
}

/// `GET path` on `addr`: the response head (lowercased, status line first) and the body.
pub async fn get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await.unwrap().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an http response");
    (head.to_lowercase(), body.to_owned())
}

/// The value of the sample named exactly `series` (name and labels).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `promtool <args>` in `deploy/prometheus`, with `stdin` on its standard input; fails the
/// test unless promtool accepts. Returns what it printed.
pub fn promtool(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian: apt-get install prometheus; .ci/run installs it)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} refused:\n{text}\n{stdin}");
    text
}

/// A YAML file as JSON, read by PyYAML from the operations venv
/// (`deploy/local/ops-tools.sh python`; `.ci/run` installs it).
pub fn yaml(path: &std::path::Path) -> serde_json::Value {
    let python = testkit::local_stack::stack_dir().join("ops/venv/bin/python");
    let out = Command::new(&python)
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{} ({e}): run deploy/local/ops-tools.sh python", python.display()));
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A Prometheus server (Debian's `prometheus`) on 127.0.0.1, stopped when dropped.
pub struct PrometheusServer {
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PrometheusServer {
    /// Starts Prometheus with `config` (its `prometheus.yml`), in a fresh directory `dir`; waits
    /// until it is ready.
    pub async fn start(dir: &std::path::Path, config: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian: apt-get install prometheus; deploy/local/ops-tools.sh debian)");
        let server = Self { addr, child, dir: dir.to_owned() };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() && server.api("/-/ready").await.0 == 200 {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus did not get ready:\n{}", server.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` (HTTP/1.0, so the reply is never chunked): the status and the body.
    pub async fn api(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut response)).await.unwrap().unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an http response");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, body.to_owned())
    }

    /// An instant query through the HTTP API: the `data` of a successful answer.
    pub async fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        let encoded: String = form_urlencoded::Serializer::new(String::new()).append_pair("query", expr).finish();
        let (status, body) = self.api(&format!("/api/v1/query?{encoded}")).await;
        let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(answer["data"].clone())
    }
}
