//! The local stack for tests and local runs: Kinesis (kinesis-local) and DynamoDB + DynamoDB
//! Streams (moto's server), installed by `deploy/local/stack.sh install`, started here on
//! 127.0.0.1 on free ports and stopped when the last handle is dropped.
//!
//! Each emulator runs in its own process group under a small shell watchdog that also stops it
//! when the test process dies without dropping its handles (a panic in another thread, a kill):
//! no emulator outlives the tests that started it.
//!
//! `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL_DYNAMODB` override all of this: the tests then
//! use those endpoints as they are (a stack started by `deploy/local/stack.sh up`, say).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::config::Credentials;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("cannot start the local stack: {0}")]
pub struct StackError(String);

/// Which emulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// kinesis-local: Kinesis with resharding and ChildShards.
    Kinesis,
    /// moto: DynamoDB and DynamoDB Streams on one port.
    Dynamo,
}

impl Service {
    fn index(self) -> usize {
        self as usize
    }

    fn env_override(self) -> &'static str {
        match self {
            Service::Kinesis => "AWS_ENDPOINT_URL_KINESIS",
            Service::Dynamo => "AWS_ENDPOINT_URL_DYNAMODB",
        }
    }
}

struct Running {
    endpoint: String,
    /// The watchdog shell, leader of the emulator's process group.
    watchdog: std::process::Child,
}

static SHARED: Mutex<[(usize, Option<Running>); 2]> = Mutex::new([(0, None), (0, None)]);

/// Keeps an emulator up while it lives.
pub struct Emulator {
    pub endpoint: String,
    service: Option<Service>,
}

impl Emulator {
    /// An SDK configuration pointing at this emulator, with fixed local credentials and no SDK
    /// retries (the adapters retry through `RetryPolicy`).
    pub fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.endpoint)
    }
}

/// An SDK configuration for a local endpoint: fixed local credentials, no SDK retries.
pub fn sdk_config_for(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(Credentials::new(
            "local",
            "local",
            None,
            None,
            "local-stack",
        )))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(adapters::aws::timeouts())
        .build()
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let Some(service) = self.service else { return };
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut shared[service.index()];
        slot.0 -= 1;
        if slot.0 == 0 {
            if let Some(running) = slot.1.take() {
                stop(running);
            }
        }
    }
}

/// A handle on a running emulator (started on first use).
pub fn emulator(service: Service) -> Result<Emulator, StackError> {
    if let Ok(endpoint) = std::env::var(service.env_override()) {
        return Ok(Emulator { endpoint, service: None });
    }
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let slot = &mut shared[service.index()];
    if slot.1.is_none() {
        slot.1 = Some(start(service)?);
    }
    slot.0 += 1;
    Ok(Emulator { endpoint: slot.1.as_ref().expect("started").endpoint.clone(), service: Some(service) })
}

/// Where `deploy/local/stack.sh` installs the local stack (and `ops-tools.sh` the operations
/// tools, under `ops/`): `$TRIBUTARY_STACK_DIR`, else `target/local-stack`.
pub fn stack_dir() -> PathBuf {
    std::env::var_os("TRIBUTARY_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/local-stack")))
}

fn free_port() -> Result<u16, StackError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| StackError(e.to_string()))?;
    Ok(listener.local_addr().map_err(|e| StackError(e.to_string()))?.port())
}

fn start(service: Service) -> Result<Running, StackError> {
    let dir = stack_dir();
    let port = free_port()?;
    let (workdir, program) = match service {
        Service::Kinesis => (dir.join("kinesis"), "exec node main.js".to_owned()),
        Service::Dynamo => (dir.clone(), format!("exec {}/moto/bin/moto_server -H 127.0.0.1 -p {port}", dir.display())),
    };
    let installed = match service {
        Service::Kinesis => workdir.join("main.js").exists(),
        Service::Dynamo => dir.join("moto/bin/moto_server").exists(),
    };
    if !installed {
        return Err(StackError(format!(
            "{service:?} emulator not installed under {} (run deploy/local/stack.sh install)",
            dir.display()
        )));
    }
    // The watchdog: runs the emulator in the background and ends it when the test process is
    // gone; the whole group is ended by `stop` otherwise.
    let script = format!(
        "({program}) >/dev/null 2>&1 & child=$!; \
         while kill -0 {parent} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 1; done; \
         kill -TERM $child 2>/dev/null; sleep 3; kill -KILL $child 2>/dev/null",
        parent = std::process::id()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).current_dir(&workdir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if service == Service::Kinesis {
        cmd.env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", free_port()?.to_string())
            .env("SHARD_LIMIT", "1000")
            .env("LOG_LEVEL", "WARN");
        for op in [
            "CREATE_STREAM",
            "DELETE_STREAM",
            "SPLIT_SHARD",
            "MERGE_SHARDS",
            "UPDATE_SHARD_COUNT",
            "REGISTER_STREAM_CONSUMER",
            "DEREGISTER_STREAM_CONSUMER",
            "UPDATE_STREAM_MODE",
            "START_STREAM_ENCRYPTION",
            "STOP_STREAM_ENCRYPTION",
        ] {
            cmd.env(format!("{op}_DURATION"), "0ms");
        }
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let watchdog = cmd.spawn().map_err(|e| StackError(format!("{service:?}: {e}")))?;
    let running = Running { endpoint: format!("http://127.0.0.1:{port}"), watchdog };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            stop(running);
            return Err(StackError(format!("{service:?} did not listen on 127.0.0.1:{port} within 20 s")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(running)
}

/// Ends the emulator's process group: TERM, then KILL for what is left after a grace period.
fn stop(mut running: Running) {
    let group = format!("-{}", running.watchdog.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    for _ in 0..30 {
        let alive = Command::new("kill").args(["-0", "--", &group]).stderr(Stdio::null()).status();
        if !alive.is_ok_and(|s| s.success()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
    let _ = running.watchdog.wait();
}
