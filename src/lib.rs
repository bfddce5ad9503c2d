//! The `tributary` binary's library: configuration and wiring of the crates.
//!
//! | file | what it holds |
//! |---|---|
//! | `main.rs` | the CLI (`demo`, …) |
//! | `cluster.rs` | `LocalCluster`: several nodes in one process (demo, simulation tests) |
//! | `timeline.rs` | cluster events and the failover / handoff / child-start figures |
//! | `ev.rs` | the EV charging-session generator and its oracle |
//! | `demo.rs` | `tributary demo`: the embedded one-command run |

pub mod cluster;
pub mod demo;
pub mod demo_tickets;
pub mod ev;
pub mod tickets;
pub mod timeline;
