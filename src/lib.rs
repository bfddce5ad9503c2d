//! The `tributary` binary's library: configuration and wiring of the crates. Errors become
//! `anyhow` here, at the edge, and nowhere else.
//!
//! | file | what it holds |
//! |---|---|
//! | `main.rs` | the CLI (`demo`, `run`, `check`, `gen`, `leases`, `chaos`, `deregister-consumer`) |
//! | `run_config.rs` | `RunConfig`: the TOML of `tributary run` (node, stream, lease table, warehouse, pipeline) |
//! | `run.rs` | `tributary run`: one node on the real services until SIGTERM |
//! | `check.rs` | `tributary check`: a config validated offline, and what the node would run |
//! | `gen.rs` | `tributary gen`: EV, ticket-activity or templated records into a stream at a steady rate |
//! | `template.rs` | `gen --template`: record templates with random placeholders |
//! | `metrics_server.rs` | the node's HTTP listener (`[metrics] listen`): `/metrics`, `/healthz`, `/readyz` |
//! | `leases.rs` | `tributary leases`: the lease table as a table, `--reset` |
//! | `demo.rs` | `tributary demo`: the embedded one-command run (cluster, generators and oracles from `testkit`) |
//! | `demo_tickets.rs` | the demo's second stream: ticket activity as AWS DMS records, joined and tokenized |
//! | `chaos/` | `tributary chaos`: node processes on the local stack under a seeded fault schedule, checked against the generators' oracle |
//! | `lib.rs` | this table |

pub mod chaos;
pub mod check;
pub mod demo;
pub mod demo_tickets;
pub mod gen;
pub mod leases;
pub mod metrics_server;
pub mod run;
pub mod run_config;
pub mod template;
