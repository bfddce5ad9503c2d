//! The `tributary` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The pipeline allocates per row; mimalloc keeps that cheap (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "Kinesis to warehouse, with KCL-style leases",
    after_help = "node.toml (every section, pipeline key, column type and default), the DMS settings \
                  read, moving from KCL: README.md, sections \"Running it on AWS\", \"The record \
                  pipeline\" and \"Moving from KCL\"."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system in one process (no network, no AWS) and check the result.
    Demo {
        /// The SQLite file the rows land in (replaced if it holds an earlier demo's tables).
        #[arg(long, default_value = "tributary-demo.db")]
        db: PathBuf,
        /// Seed of the generator and of the run's choices: the same seed writes the same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// How long the generator writes, e.g. `24s`, `1m`.
        #[arg(long, default_value = "24s", value_parser = proto::duration::parse)]
        duration: Duration,
        /// Records per second the generator writes.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Nodes at start.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Shards of the stream at start.
        #[arg(long, default_value_t = 4)]
        shards: u32,
        /// After how long a silent node is declared dead (KCL's failoverTime).
        #[arg(long, default_value = "10s", value_parser = proto::duration::parse)]
        failover: Duration,
    },
    /// Run one node of a cluster on the real services (until SIGTERM or Ctrl-C).
    Run {
        /// The TOML configuration (README.md, "Running it on AWS": every section and key).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a node's configuration without connecting to anything; print what it would run.
    Check {
        /// The TOML configuration, as for `run`.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write test records into a Kinesis stream at a steady rate (presets: ev, tickets).
    Gen {
        #[arg(long)]
        stream: String,
        #[arg(long, value_enum, default_value = "ev")]
        preset: tributary::gen::Preset,
        /// Records per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value = "60s", value_parser = proto::duration::parse)]
        duration: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Create the stream first, with this many shards.
        #[arg(long, value_name = "SHARDS")]
        create: Option<u32>,
        /// tickets: write the sport_event, ticket and customer tables to DynamoDB first.
        #[arg(long)]
        reference_tables: bool,
        /// Records from a template file with `{{random.number(1, 9)}}`-style placeholders
        /// (instead of the preset).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["preset", "reference_tables"])]
        template: Option<PathBuf>,
        /// With --template: the partition key, itself a template.
        #[arg(long, value_name = "TEMPLATE", default_value = "{{random.uuid}}", requires = "template")]
        partition_key: String,
    },
    /// Show the lease table: owner, checkpoint, lag, parents and children of every shard.
    Leases {
        /// The TOML configuration (README.md, "Running it on AWS").
        #[arg(long)]
        config: PathBuf,
        /// Put this shard's checkpoint back to TRIM_HORIZON and release it (asks first).
        #[arg(long, value_name = "SHARD")]
        reset: Option<String>,
        /// Delete the leases of a stream the config no longer lists (`account:stream:epoch`, as
        /// their keys begin); nodes leave them alone otherwise (asks first).
        #[arg(long, value_name = "STREAM_ID", conflicts_with = "reset")]
        forget_stream: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Run a cluster of nodes on the local stack under a seeded schedule of faults (kills,
    /// freezes, partitions, PostgreSQL restarts, reshards), then check that the warehouse equals
    /// what was written, that no shard is unowned and that every node exits 0 on SIGTERM.
    Chaos {
        /// How long faults are injected, in minutes (then the run settles and checks).
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
        /// Seed of the fault schedule and of the generators: a failing run replays with it.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Node processes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// EV records per second (ticket changes: a fifth of that).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Where node configs and logs go (default: a temporary folder, removed if the run passes).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Deregister the config's enhanced fan-out stream consumer (`[stream] consumer = "efo"`):
    /// every node reading through it loses its subscriptions. Nodes never deregister it.
    DeregisterConsumer {
        /// The TOML configuration (README.md, "Running it on AWS").
        #[arg(long)]
        config: PathBuf,
    },
}

fn load_config(path: &std::path::Path) -> anyhow::Result<tributary::run_config::RunConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
    tributary::run_config::RunConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
}

/// The demo prints its own progress; a node logs what it does.
fn default_log(command: &Command) -> &'static str {
    match command {
        Command::Demo { .. } => "error",
        Command::Chaos { .. } => "error",
        _ => "info,aws_config=warn,aws_smithy_runtime=warn",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_log(&cli.command).into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { db, seed, duration, rate, nodes, shards, failover } => {
                if nodes < 2 || shards == 0 || rate == 0 {
                    anyhow::bail!("demo needs --nodes >= 2, --shards >= 1 and --rate >= 1");
                }
                tributary::demo::run(tributary::demo::DemoOptions { db, seed, duration, rate, nodes, shards, failover })
                    .await
            }
            Command::Chaos { minutes, seed, nodes, rate, dir } => {
                anyhow::ensure!((0.5..=24.0 * 60.0).contains(&minutes), "--minutes must be between 0.5 and 1440");
                let duration = Duration::from_secs_f64(minutes * 60.0);
                tributary::chaos::run(tributary::chaos::ChaosOptions { duration, seed, nodes, rate, dir }).await
            }
            Command::Run { config } => {
                let config = load_config(&config)?;
                tributary::run::run(config, tributary::run::signals()).await.map(|()| true)
            }
            Command::Check { config: path } => {
                let config = load_config(&path)?;
                println!("config {} is valid", path.display());
                print!("{}", tributary::check::summary(&config));
                Ok(true)
            }
            Command::Gen {
                stream,
                preset,
                rate,
                duration,
                seed,
                create,
                reference_tables,
                template,
                partition_key,
            } => {
                anyhow::ensure!(rate > 0, "--rate must be at least 1");
                let template = match template {
                    Some(path) => {
                        let text = std::fs::read_to_string(&path)
                            .with_context(|| format!("--template: cannot read {}", path.display()))?;
                        let record = tributary::template::Template::parse(&text)
                            .with_context(|| format!("--template {}", path.display()))?;
                        let key = tributary::template::Template::parse(&partition_key).context("--partition-key")?;
                        Some((record, key))
                    }
                    None => None,
                };
                let opts = tributary::gen::GenOptions {
                    stream,
                    preset,
                    rate,
                    duration,
                    seed,
                    create_shards: create,
                    reference_tables,
                    template,
                };
                tributary::gen::run(opts).await.map(|()| true)
            }
            Command::Leases { config, reset, forget_stream, yes } => {
                use tributary::leases::LeasesAction;
                let action = match (reset, forget_stream) {
                    (Some(shard), _) => LeasesAction::Reset(shard),
                    (None, Some(stream)) => LeasesAction::ForgetStream(stream),
                    (None, None) => LeasesAction::List,
                };
                tributary::leases::run(load_config(&config)?, action, yes).await.map(|()| true)
            }
            Command::DeregisterConsumer { config } => {
                let config = load_config(&config)?;
                let sdk = adapters::aws::load_config().await;
                let mut any = false;
                for stream in &config.streams {
                    let Some(name) = stream.consumer_name(&config.lease_table.name) else { continue };
                    let stream_name = &stream.section.name;
                    let kinesis = adapters::kinesis::Kinesis::new(&sdk, stream_name);
                    adapters::kinesis_fan_out::KinesisFanOut::new(kinesis, name)
                        .deregister()
                        .await
                        .with_context(|| format!("deregistering stream consumer {name} of {stream_name}"))?;
                    println!("stream consumer {name} of {stream_name} deregistered");
                    any = true;
                }
                anyhow::ensure!(any, "no stream of the config reads by enhanced fan-out (`consumer = \"efo\"`)");
                Ok(true)
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
