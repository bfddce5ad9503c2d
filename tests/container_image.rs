//! The container image (`deploy/docker`), linted, built and run for real. The Dockerfile passes
//! hadolint and checkov; a local stand-in of its distroless base (`standin-base.sh`) and the
//! image (`build.sh`) are built with buildah, offline, around this build's `tributary`; podman
//! runs it read-only, as uid 65532, with no capability: `--version`; the demo, writing only to a
//! host volume; and a node on the local stack (Kinesis and DynamoDB emulators, PostgreSQL) that
//! consumes, serves `/metrics` to the host, and on `podman stop` drains and exits 0 with every
//! lease released. Every image and container made here is removed at the end, also on failure.
//!
//! Tools: `deploy/local/ops-tools.sh debian` (buildah, podman, runc) and `… python` (hadolint,
//! checkov, in `target/local-stack/ops/venv`); images live where `deploy/docker/containers.sh`
//! says (`target/local-stack/ops/containers`), and podman runs through `deploy/docker/podman.sh`.

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use adapters::postgres::PostgresWarehouse;
use processes::{database, ev_record, metrics_port, wait_count};
use proto::LeaseTable;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::local_stack::{emulator, Emulator, Service};
use testkit::postgres_server::postgres;

mod processes;
mod prometheus;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ops() -> PathBuf {
    testkit::local_stack::stack_dir().join("ops")
}

struct Output {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn text(&self) -> String {
        format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `cmd` to the end; `install` says how to get the program when it is missing.
fn run(cmd: &mut Command, install: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {:?} ({e}): {install}", cmd.get_program()));
    let output = Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    output
}

const DEBIAN_TOOLS: &str = "install buildah, podman and runc: deploy/local/ops-tools.sh debian";

/// Fails the test, saying how to install them, unless buildah, podman and runc are on the PATH.
fn require_container_tools() {
    for tool in ["buildah", "podman", "runc"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        assert!(found, "{tool} is not installed: {DEBIAN_TOOLS}");
    }
}

/// `deploy/docker/podman.sh ARGS`: podman on the project's container storage.
fn podman(args: &[&str]) -> Output {
    run(Command::new(repo().join("deploy/docker/podman.sh")).args(args), DEBIAN_TOOLS)
}

/// A script of `deploy/docker`; the last line of what it printed (the image reference).
fn script(name: &str, args: &[&str]) -> String {
    let out = run(Command::new(repo().join("deploy/docker").join(name)).args(args), DEBIAN_TOOLS);
    assert!(out.ok, "deploy/docker/{name} {args:?} failed:\n{}", out.text());
    out.stdout.lines().last().unwrap_or_default().trim().to_owned()
}

/// An image removed when dropped.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", "--ignore", &self.0]);
    }
}

/// A container (by name) removed, stopped first if need be, when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--ignore", "--time", "0", &self.0]);
    }
}

/// A host folder removed when dropped.
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What this test names its images and containers: the process id in each, so that runs side by
/// side keep apart and `sweep` can tell what a killed run left behind.
const IMAGE: &str = "localhost/tributary-test";
const BASE: &str = "localhost/tributary-test-base";
const CONTAINER: &str = "tributary-test-";
const FOLDER: &str = "tributary-image-";

/// Removes the containers, images and host folders of earlier runs of this test whose process is
/// gone (killed before its guards ran). Containers also carry `--timeout`: none runs on forever.
fn sweep() {
    let gone = |pid: &str| pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_str().and_then(|n| n.strip_prefix(FOLDER)).is_some_and(gone) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let names = podman(&["ps", "--all", "--format", "{{.Names}}"]).stdout;
    for name in names.lines().filter(|n| n.strip_prefix(CONTAINER).and_then(|r| r.split('-').next()).is_some_and(gone))
    {
        let _ = podman(&["rm", "--force", "--ignore", "--time", "0", name]);
    }
    let images = podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout;
    for image in images.lines() {
        if let Some((repo, tag)) = image.rsplit_once(':') {
            if (repo == IMAGE || repo == BASE) && tag.split('-').next().is_some_and(gone) {
                let _ = podman(&["rmi", "--force", "--ignore", image]);
            }
        }
    }
}

/// `podman run` as every container here runs: root file system read-only, uid 65532, no
/// capability, no privilege escalation, killed after 5 minutes whatever happens; `extra` before
/// the image, `args` after it. The ulimits: runc cannot raise the defaults podman asks for on
/// these machines.
fn podman_run(name: &str, extra: &[&str], image: &str, args: &[&str]) -> Output {
    let mut all = vec!["run", "--pull=never", "--name", name, "--read-only", "--user", "65532", "--cap-drop", "ALL"];
    all.extend(["--security-opt", "no-new-privileges", "--timeout", "300"]);
    all.extend(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]);
    all.extend(extra);
    all.push(image);
    all.extend(args);
    podman(&all)
}

#[test]
fn dockerfile_passes_hadolint_and_checkov() {
    let dockerfile = repo().join("deploy/docker/Dockerfile");
    let python_tools = "install hadolint and checkov: deploy/local/ops-tools.sh python";
    let hadolint = run(Command::new(ops().join("venv/bin/hadolint")).arg(&dockerfile), python_tools);
    assert!(hadolint.ok, "hadolint finds fault with deploy/docker/Dockerfile:\n{}", hadolint.text());

    let checkov = run(
        Command::new(ops().join("venv/bin/checkov"))
            .args(["--skip-download", "--compact", "--framework", "dockerfile", "-f"])
            .arg(&dockerfile),
        python_tools,
    );
    assert!(checkov.ok, "checkov finds fault with deploy/docker/Dockerfile:\n{}", checkov.text());
    // It did check (an empty or unparsed file passes too): its summary names passed checks.
    let passed: usize = checkov
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Passed checks: ")?.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no checkov summary:\n{}", checkov.text()));
    assert!(passed >= 10, "checkov passed only {passed} checks:\n{}", checkov.text());
    // Every check skipped says why, beside the skip: checkov's in the skip (`ID: reason`),
    // hadolint's in the comment line above it.
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let reason = if let Some((_, skip)) = line.split_once("checkov:skip=") {
            skip.split_once(':').map(|(_, r)| r.trim())
        } else if line.contains("hadolint ignore=") {
            i.checked_sub(1).and_then(|j| lines[j].strip_prefix('#')).filter(|r| !r.contains("ignore=")).map(str::trim)
        } else {
            continue;
        };
        assert!(reason.is_some_and(|r| r.len() >= 20), "a skip without its reason: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_read_only_as_nonroot_and_drains_on_stop() {
    require_container_tools();
    let pid = std::process::id();
    sweep();
    // This build's binary (debug: CI pays for no release build; the same libc linkage), or
    // another one, e.g. TRIBUTARY_IMAGE_BINARY=target/release/tributary.
    let binary = std::env::var("TRIBUTARY_IMAGE_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tributary").into());
    let binary = binary.as_str();

    // The stand-in base, then the image on it, from this build's binary.
    // (Guarded before they exist: removed even if a script fails halfway.)
    let (base, image) = (Image(format!("{BASE}:{pid}")), Image(format!("{IMAGE}:{pid}")));
    let started = Instant::now();
    let printed = script("standin-base.sh", &["--binary", binary, "--tag", &base.0]);
    let base_time = started.elapsed();
    assert_eq!(printed, base.0, "standin-base.sh prints the image reference last");
    let started = Instant::now();
    let printed = script("build.sh", &["--base", &base.0, "--binary", binary, "--tag", &image.0]);
    let build_time = started.elapsed();
    assert_eq!(printed, image.0, "build.sh prints the image reference last");

    // What the image says of itself.
    let inspect = podman(&["image", "inspect", &image.0]);
    assert!(inspect.ok, "{}", inspect.text());
    let json: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    let config = &json[0]["Config"];
    assert_eq!(config["User"], "65532:65532", "non-root by number: {config}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/local/bin/tributary"]), "{config}");
    assert_eq!(config["Cmd"], serde_json::json!(["run", "--config", "/etc/tributary/node.toml"]), "{config}");
    assert!(config["ExposedPorts"].get("9898/tcp").is_some(), "EXPOSE 9898: {config}");
    assert_eq!(config["StopSignal"], "SIGTERM", "{config}");
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"), "{labels}");
    assert_eq!(labels["org.opencontainers.image.title"], "tributary", "{labels}");
    assert_eq!(labels["org.opencontainers.image.base.name"], base.0.as_str(), "{labels}");
    let size = json[0]["Size"].as_u64().unwrap_or(0);

    // --version, with nothing writable and no network.
    let started = Instant::now();
    let name = format!("{CONTAINER}{pid}-version");
    let _guard = Container(name.clone());
    let version = podman_run(&name, &["--rm", "--network", "none"], &image.0, &["--version"]);
    assert!(version.ok, "{}", version.text());
    assert_eq!(version.stdout.trim(), format!("tributary {}", env!("CARGO_PKG_VERSION")));
    let version_time = started.elapsed();

    // build.sh --keep-debug: the same binary with its debug sections, a bigger image that runs
    // (the default strips them).
    let unstripped = Image(format!("{IMAGE}:{pid}-debug"));
    let printed = script("build.sh", &["--base", &base.0, "--binary", binary, "--tag", &unstripped.0, "--keep-debug"]);
    assert_eq!(printed, unstripped.0);
    let unstripped_size =
        podman(&["image", "inspect", "--format", "{{.Size}}", &unstripped.0]).stdout.trim().parse().unwrap_or(0);
    assert!(
        size > 0 && unstripped_size > size,
        "stripped by default: {size} bytes, with --keep-debug: {unstripped_size}"
    );
    let name = format!("{CONTAINER}{pid}-debug");
    let _guard = Container(name.clone());
    let version = podman_run(&name, &["--rm", "--network", "none"], &unstripped.0, &["--version"]);
    assert!(version.ok && version.stdout.starts_with("tributary "), "{}", version.text());
    drop(unstripped);

    // The demo: its SQLite file on a host volume, the only writable place.
    let data = Folder(std::env::temp_dir().join(format!("{FOLDER}{pid}")));
    std::fs::create_dir_all(&data.0).unwrap();
    std::fs::set_permissions(&data.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let started = Instant::now();
    let name = format!("{CONTAINER}{pid}-demo");
    let _guard = Container(name.clone());
    let volume = format!("{}:/data", data.0.display());
    let demo = podman_run(
        &name,
        &["--rm", "--network", "none", "-v", &volume],
        &image.0,
        &["demo", "--duration", "6s", "--rate", "100", "--failover", "3s", "--db", "/data/demo.db"],
    );
    let demo_time = started.elapsed();
    assert!(demo.ok, "the demo in the container:\n{}", demo.text());
    assert!(demo.stdout.contains("OK: nothing lost, nothing duplicated"), "{}", demo.text());
    assert!(data.0.join("demo.db").exists(), "the demo wrote its database to the volume");

    // A node on the local stack.
    let node = node_on_the_local_stack(&image.0, &data.0).await;

    eprintln!(
        "image {} ({:.0} MB, {:.0} MB with --keep-debug): stand-in base built in {:.1}s, image in {:.1}s; --version ran in \
         {:.1}s, the demo in {:.1}s, the node in {:.1}s and drained on `podman stop` in {:.1}s",
        image.0,
        size as f64 / 1e6,
        unstripped_size as f64 / 1e6,
        base_time.as_secs_f64(),
        build_time.as_secs_f64(),
        version_time.as_secs_f64(),
        demo_time.as_secs_f64(),
        node.ran.as_secs_f64(),
        node.stop.as_secs_f64(),
    );
}

struct NodeRun {
    ran: Duration,
    stop: Duration,
}

fn env(kinesis: &Emulator, dynamo: &Emulator) -> Vec<String> {
    [
        "POD_NAME=image-node".to_owned(),
        format!("AWS_ENDPOINT_URL_KINESIS={}", kinesis.endpoint),
        format!("AWS_ENDPOINT_URL_DYNAMODB={}", dynamo.endpoint),
        format!("AWS_ENDPOINT_URL_DYNAMODB_STREAMS={}", dynamo.endpoint),
        "AWS_REGION=us-east-1".to_owned(),
        "AWS_ACCESS_KEY_ID=local".to_owned(),
        "AWS_SECRET_ACCESS_KEY=local".to_owned(),
        "RUST_LOG=info,aws_config=warn,aws_smithy_runtime=warn".to_owned(),
    ]
    .into_iter()
    .flat_map(|e| ["--env".to_owned(), e])
    .collect()
}

/// `tributary run` in the container with the image's default command, on the host network (the
/// emulators and PostgreSQL listen on 127.0.0.1), its config mounted read-only: it consumes
/// what is put in the stream, serves /metrics to the host, and on `podman stop` (SIGTERM)
/// drains, exits 0 and releases every lease with its checkpoint.
async fn node_on_the_local_stack(image: &str, dir: &Path) -> NodeRun {
    let (kinesis_stack, dynamo_stack) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, "container_image").await;
    let pid = std::process::id();
    let stream = format!("container-image-{pid}");
    let kinesis = Kinesis::new(&kinesis_stack.sdk_config(), &stream);
    kinesis.create_stream(2).await.unwrap();
    let lease_table = format!("container-image-leases-{pid}");
    let config = dir.join("node.toml");
    // The pipeline's top-level keys first: in TOML they would otherwise belong to a section.
    std::fs::write(
        &config,
        format!(
            "{}\n[node]\nshutdown_deadline = \"20s\"\n[stream]\nname = \"{stream}\"\n\
             [lease_table]\nname = \"{lease_table}\"\n[warehouse]\nkind = \"postgres\"\nurl = \"{url}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            testkit::ev::PIPELINE
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    let name = format!("{CONTAINER}{pid}-node");
    let container = Container(name.clone());
    let mount = format!("{}:/etc/tributary/node.toml:ro", config.display());
    let mut extra = vec!["--detach".to_owned(), "--network".to_owned(), "host".to_owned(), "-v".to_owned(), mount];
    extra.extend(env(&kinesis_stack, &dynamo_stack));
    let started = Instant::now();
    let run = podman_run(&name, &extra.iter().map(String::as_str).collect::<Vec<_>>(), image, &[]);
    assert!(run.ok, "podman run: {}", run.text());
    let logs = || {
        let out = podman(&["logs", &name]);
        format!("{}{}", out.stdout, out.stderr)
    };
    // The port it listens on for metrics (it picked one: `listen = "127.0.0.1:0"`).
    let mut port = None;
    for _ in 0..300 {
        port = metrics_port(&logs());
        let running = podman(&["inspect", "--format", "{{.State.Running}}", &name]).stdout.trim() == "true";
        if port.is_some() || !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let port: u16 = port.unwrap_or_else(|| panic!("the node logs its metrics address:\n{}", logs()));

    let entries: Vec<(String, Vec<u8>)> = (0..300).map(ev_record).collect();
    for chunk in entries.chunks(100) {
        let refused = kinesis.put_records(chunk).await.unwrap();
        assert!(refused.is_empty(), "{refused:?}");
    }
    let warehouse = PostgresWarehouse::connect(&url).await.unwrap();
    let raw = "SELECT count(*) FROM ev_charging_sessions_raw";
    assert_eq!(wait_count(&warehouse, raw, 300).await, 300, "the node in the container consumes:\n{}", logs());
    let (_, metrics) = prometheus::scrape(("127.0.0.1", port)).await;
    let read = prometheus::sample(&metrics, "tributary_records_read_total").unwrap_or(-1.0);
    assert!(read >= 300.0, "tributary_records_read_total {read}:\n{metrics}");
    // The probes Kubernetes sends (the image has no HEALTHCHECK of its own).
    for path in ["/healthz", "/readyz"] {
        let (head, body) = prometheus::get(("127.0.0.1", port), path).await;
        assert!(head.starts_with("http/1.1 200"), "GET {path}: {head}\n{body}\n{}", logs());
    }
    let ran = started.elapsed();
    assert!(!logs().contains('\u{1b}'), "plain logs, no ANSI colour codes (NO_COLOR):\n{}", logs());

    // `podman stop`: SIGTERM, then up to 60 s before SIGKILL.
    let started = Instant::now();
    let stop = podman(&["stop", "--time", "60", &name]);
    let stop_time = started.elapsed();
    assert!(stop.ok, "podman stop: {}", stop.text());
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(code.stdout.trim(), "0", "the node exits 0 on SIGTERM:\n{}", logs());
    let leases = DynamoLeaseTable::new(&dynamo_stack.sdk_config(), &lease_table).scan().await.unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert!(
        leases.iter().all(|l| l.owner.is_none() && matches!(l.checkpoint, proto::Checkpoint::At(_))),
        "every lease released with its checkpoint: {leases:?}\n{}",
        logs()
    );
    drop(container);
    NodeRun { ran, stop: stop_time }
}
