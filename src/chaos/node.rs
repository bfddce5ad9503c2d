//! One node of the chaos run: a `tributary run` process of this very binary, reaching
//! DynamoDB, Kinesis and PostgreSQL through fault proxies of its own, so a fault can hit one
//! node's link to one service. Killed if the run ends without stopping it.

use super::schedule::Service;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::fault_proxy::FaultProxy;

pub struct Node {
    /// `node-<slot>`, then `node-<slot>.<n>` after a restart under a new id.
    pub id: String,
    slot: usize,
    restarts: u32,
    proxies: [FaultProxy; 3],
    child: Option<Child>,
    /// The node's config with `{ID}` and `{POSTGRES_PORT}` still to fill in.
    config: String,
    dir: PathBuf,
    /// The binary the node runs.
    exe: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal(&child, "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) -> bool {
    Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().is_ok_and(|s| s.success())
}

impl Node {
    /// Its proxies in front of `upstreams` (DynamoDB, Kinesis, PostgreSQL); not started yet.
    pub async fn new(
        slot: usize,
        upstreams: [std::net::SocketAddr; 3],
        config: &str,
        dir: &Path,
        exe: &Path,
    ) -> std::io::Result<Self> {
        let proxies = [
            FaultProxy::start(upstreams[0]).await?,
            FaultProxy::start(upstreams[1]).await?,
            FaultProxy::start(upstreams[2]).await?,
        ];
        Ok(Self {
            id: format!("node-{slot}"),
            slot,
            restarts: 0,
            proxies,
            child: None,
            config: config.to_owned(),
            dir: dir.to_owned(),
            exe: exe.to_owned(),
        })
    }

    pub fn proxy(&self, service: Service) -> &FaultProxy {
        &self.proxies[service as usize]
    }

    /// Starts the process (again), under a new id if `new_id`; its stderr goes to `<id>.log`.
    pub fn start(&mut self, new_id: bool) -> std::io::Result<()> {
        if new_id {
            self.restarts += 1;
            self.id = format!("node-{}.{}", self.slot, self.restarts);
        }
        let port = |s: Service| self.proxy(s).addr().port().to_string();
        let config = self.dir.join(format!("{}.toml", self.id));
        let text = self.config.replace("{ID}", &self.id).replace("{POSTGRES_PORT}", &port(Service::Postgres));
        std::fs::write(&config, text)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let (dynamo, kinesis) = (format!("http://127.0.0.1:{}", port(Service::Dynamo)), port(Service::Kinesis));
        let child = Command::new(&self.exe)
            .args(["run", "--config"])
            .arg(&config)
            .env("AWS_ENDPOINT_URL_KINESIS", format!("http://127.0.0.1:{kinesis}"))
            .env("AWS_ENDPOINT_URL_DYNAMODB", &dynamo)
            .env("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", &dynamo)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "local")
            .env("AWS_SECRET_ACCESS_KEY", "local")
            .env("RUST_LOG", "warn,worker::lease_keeper=info,worker::shard_consumer=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.id))
    }

    /// SIGKILL: nothing written on the way out.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, "STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, "CONT");
        }
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process died by itself (it should not): its exit status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGTERM: the node should drain and exit 0.
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            signal(child, "TERM");
        }
    }

    /// Its exit code after `sigterm` (waits up to `deadline`, then kills it and says `None`).
    pub async fn exit_code(&mut self, deadline: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}
