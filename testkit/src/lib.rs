//! tributary's kit for tests, benchmarks and the demo: nothing of it runs in `tributary run`.
//!
//! | file | what it holds |
//! |---|---|
//! | `cluster.rs` | `LocalCluster`: several nodes in one process (the demo, simulation and timing tests) |
//! | `timeline.rs` | cluster events, the failover / handoff / child-start figures, the ordering check |
//! | `ev.rs` | the EV charging-session generator, its pipeline and its oracle |
//! | `tickets.rs` | the ticket-activity source (AWS DMS records), its pipeline and its oracle |
//! | `fault_proxy.rs` | `FaultProxy`: a TCP proxy on 127.0.0.1 that delays, black-holes, refuses or cuts a node's traffic to one service |
//! | `faults.rs` | fault injection around any port: outages, throttles, writes whose reply is lost (seeded) |
//! | `local_stack.rs` | the Kinesis and DynamoDB emulators on 127.0.0.1, started on demand |
//! | `postgres_server.rs` | a throwaway PostgreSQL on 127.0.0.1 |

pub mod cluster;
pub mod ev;
pub mod fault_proxy;
pub mod faults;
pub mod local_stack;
pub mod postgres_server;
pub mod tickets;
pub mod timeline;
