//! The `tributary` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The pipeline allocates per row; mimalloc keeps that cheap (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tributary", version, about = "Kinesis to warehouse, with KCL-style leases")]
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
        #[arg(long, default_value = "24s", value_parser = worker::pipeline_config::parse_duration)]
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
        #[arg(long, default_value = "10s", value_parser = worker::pipeline_config::parse_duration)]
        failover: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
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
