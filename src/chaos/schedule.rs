//! The chaos run's faults, drawn from the seed alone: the same seed, run length and node count
//! give the same faults at the same offsets, so a failing run replays with its seed.
//!
//! Every fault kind comes once, in a seeded order, before any comes twice (a short run still
//! mixes them all); then kinds are drawn at random. At most `max_down` nodes are faulted at a
//! time, a node is left alone for a few seconds after its fault heals, and the first faults wait
//! until the cluster has settled.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use testkit::postgres_server::Shutdown;

/// What a node reaches through its own fault proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Dynamo,
    Kinesis,
    Postgres,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Dynamo, Service::Kinesis, Service::Postgres];

    pub fn name(self) -> &'static str {
        match self {
            Service::Dynamo => "dynamodb",
            Service::Kinesis => "kinesis",
            Service::Postgres => "postgresql",
        }
    }
}

/// What a proxy does to a node's link to a service while the fault lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Every chunk held this long (a slow, congested link).
    Slow(Duration),
    /// Nothing passes either way, connections stay open (a partition).
    Blackhole,
    /// Open connections reset, new ones refused (the service is down for this node).
    Drop,
}

impl LinkFault {
    fn name(self) -> &'static str {
        match self {
            LinkFault::Slow(_) => "slow",
            LinkFault::Blackhole => "black-holed",
            LinkFault::Drop => "dropped",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then the node starts again after `down`, under a new id or its old one.
    Kill { node: usize, down: Duration, new_id: bool },
    /// SIGSTOP for `frozen` (longer than failover_time), then SIGCONT: a zombie.
    Pause { node: usize, frozen: Duration },
    /// The node's link to one service misbehaves for `lasting`.
    Link { node: usize, service: Service, fault: LinkFault, lasting: Duration },
    /// Every node's link to one service misbehaves for `lasting` (15–45 s): the service is
    /// down, or slow past the calls' timeouts, for the whole cluster.
    Outage { service: Service, fault: LinkFault, lasting: Duration },
    /// The warehouse's server stopped (fast: transactions rolled back; immediate: a crash
    /// recovered from its log) and started again.
    RestartPostgres(Shutdown),
    /// One open shard of the EV stream split in two.
    Split,
    /// Two adjacent open shards of the EV stream merged.
    Merge,
}

impl Fault {
    /// The kind, as the report counts faults.
    pub fn kind(&self) -> String {
        match self {
            Fault::Kill { new_id: false, .. } => "kill -9 (same id)".into(),
            Fault::Kill { new_id: true, .. } => "kill -9 (new id)".into(),
            Fault::Pause { .. } => "SIGSTOP".into(),
            Fault::Link { service, fault, .. } => format!("{} {}", service.name(), fault.name()),
            Fault::Outage { service, fault, .. } => format!("{} outage ({}, every node)", service.name(), fault.name()),
            Fault::RestartPostgres(Shutdown::Fast) => "postgresql restart (fast)".into(),
            Fault::RestartPostgres(Shutdown::Immediate) => "postgresql restart (immediate)".into(),
            Fault::Split => "split".into(),
            Fault::Merge => "merge".into(),
        }
    }

    /// The node it hits, if it hits one.
    pub fn node(&self) -> Option<usize> {
        match *self {
            Fault::Kill { node, .. } | Fault::Pause { node, .. } | Fault::Link { node, .. } => Some(node),
            _ => None,
        }
    }

    /// How long it lasts before it is healed (zero: it is over once done).
    pub fn lasting(&self) -> Duration {
        match *self {
            Fault::Kill { down, .. } => down,
            Fault::Pause { frozen, .. } => frozen,
            Fault::Link { lasting, .. } | Fault::Outage { lasting, .. } => lasting,
            _ => Duration::ZERO,
        }
    }

    /// Whether the node's leases must move to others while it lasts: it cannot heartbeat.
    pub fn silences_node(&self) -> bool {
        matches!(
            self,
            Fault::Kill { .. }
                | Fault::Pause { .. }
                | Fault::Link { service: Service::Dynamo, fault: LinkFault::Blackhole | LinkFault::Drop, .. }
        )
    }
}

/// A fault and when it starts, from the start of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

/// What the schedule is drawn for.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// How long faults are injected.
    pub run: Duration,
    pub nodes: usize,
    pub failover: Duration,
    /// Whether the run owns its PostgreSQL server (else it cannot restart it).
    pub restart_postgres: bool,
}

/// The faults are injected from here on: the cluster has taken its leases.
pub const SETTLE: Duration = Duration::from_secs(15);
/// No fault starts in the last stretch of the run.
const TAIL: Duration = Duration::from_secs(10);
/// A node is left alone this long after its fault heals.
const RESPITE: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Pause,
    Link(Service),
    Outage,
    RestartPostgres,
    Reshard,
}

/// How many nodes may be faulted at once: at least two stay healthy.
pub fn max_down(nodes: usize) -> usize {
    nodes.saturating_sub(2).clamp(1, 2)
}

pub fn plan(seed: u64, shape: Shape) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut kinds = vec![Kind::Kill, Kind::Pause, Kind::Reshard, Kind::Outage];
    kinds.extend(Service::ALL.map(Kind::Link));
    if shape.restart_postgres {
        kinds.push(Kind::RestartPostgres);
    }
    // Each kind once, in a seeded order, then at random.
    let mut first = kinds.clone();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.gen_range(0..=i));
    }
    first.reverse();
    let last_start = shape.run.saturating_sub(TAIL);
    // When each node is free again.
    let mut free_at = vec![Duration::ZERO; shape.nodes];
    let mut busy: Vec<Duration> = Vec::new();
    let (mut at, mut splits_ahead, mut outage_until) = (SETTLE, 0i32, Duration::ZERO);
    let mut planned = Vec::new();
    while at <= last_start {
        // A kind of the first round leaves the round only once placed.
        let kind = first.last().copied().unwrap_or_else(|| kinds[rng.gen_range(0..kinds.len())]);
        let fault = match kind {
            Kind::Reshard => {
                // Alternate (the stream keeps about its shard count), now and then twice one way.
                let split = if splits_ahead <= 0 { true } else { splits_ahead < 2 && rng.gen_bool(0.3) };
                splits_ahead += if split { 1 } else { -1 };
                if split {
                    Fault::Split
                } else {
                    Fault::Merge
                }
            }
            Kind::Outage => {
                // Not while another outage lasts.
                if outage_until > at {
                    at = outage_until;
                    continue;
                }
                let service = Service::ALL[rng.gen_range(0..3)];
                let fault = match rng.gen_range(0..3) {
                    0 => LinkFault::Slow(Duration::from_millis(rng.gen_range(1_000..4_000))),
                    1 => LinkFault::Blackhole,
                    _ => LinkFault::Drop,
                };
                let lasting = Duration::from_secs_f64(rng.gen_range(15.0..45.0));
                outage_until = at + lasting;
                Fault::Outage { service, fault, lasting }
            }
            Kind::RestartPostgres => {
                Fault::RestartPostgres(if rng.gen_bool(0.5) { Shutdown::Fast } else { Shutdown::Immediate })
            }
            node_kind => {
                busy.retain(|until| *until > at);
                let free: Vec<usize> = (0..shape.nodes).filter(|&n| free_at[n] <= at).collect();
                if busy.len() >= max_down(shape.nodes) || free.is_empty() {
                    at += Duration::from_secs(1);
                    continue;
                }
                let node = free[rng.gen_range(0..free.len())];
                let secs = |lo: f64, hi: f64, rng: &mut ChaCha8Rng| Duration::from_secs_f64(rng.gen_range(lo..hi));
                let failover = shape.failover.as_secs_f64();
                match node_kind {
                    Kind::Kill => Fault::Kill { node, down: secs(2.0, 10.0, &mut rng), new_id: rng.gen_bool(0.5) },
                    Kind::Pause => Fault::Pause { node, frozen: secs(1.5 * failover, 3.5 * failover, &mut rng) },
                    Kind::Link(service) => {
                        let fault = match rng.gen_range(0..3) {
                            0 => LinkFault::Slow(Duration::from_millis(rng.gen_range(100..800))),
                            1 => LinkFault::Blackhole,
                            _ => LinkFault::Drop,
                        };
                        Fault::Link { node, service, fault, lasting: secs(4.0, 12.0, &mut rng) }
                    }
                    _ => unreachable!("the node kinds"),
                }
            }
        };
        first.pop();
        if let Some(node) = fault.node() {
            free_at[node] = at + fault.lasting() + RESPITE;
            busy.push(at + fault.lasting());
        }
        planned.push(Planned { at, fault });
        at += Duration::from_secs_f64(rng.gen_range(3.0..8.0));
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn shape(secs: u64, nodes: usize) -> Shape {
        Shape { run: Duration::from_secs(secs), nodes, failover: Duration::from_secs(3), restart_postgres: true }
    }

    #[test]
    fn a_seed_replays_the_same_faults() {
        assert_eq!(plan(7, shape(120, 4)), plan(7, shape(120, 4)));
        assert_ne!(plan(7, shape(120, 4)), plan(8, shape(120, 4)));
    }

    #[test]
    fn a_two_minute_run_mixes_every_kind() {
        for seed in 0..200 {
            let faults = plan(seed, shape(120, 4));
            let kinds: BTreeSet<&str> = faults
                .iter()
                .map(|p| match p.fault {
                    Fault::Kill { .. } => "kill",
                    Fault::Pause { .. } => "pause",
                    Fault::Link { service, .. } => service.name(),
                    Fault::Outage { .. } => "outage",
                    Fault::RestartPostgres(_) => "restart",
                    Fault::Split | Fault::Merge => "reshard",
                })
                .collect();
            assert_eq!(kinds.len(), 8, "seed {seed}: {kinds:?}");
            assert!(faults.len() >= 10, "seed {seed}: {} faults", faults.len());
        }
    }

    /// Checked against the plan's own timeline, not its bookkeeping: at every fault's start, the
    /// nodes under a fault then are counted from the list.
    #[test]
    fn two_nodes_stay_healthy_and_a_node_gets_one_fault_at_a_time() {
        for (seed, nodes) in (0..300).map(|s| (s, 3 + (s as usize % 3))) {
            let faults = plan(seed, shape(900, nodes));
            for (i, p) in faults.iter().enumerate() {
                assert!(p.at >= SETTLE && p.at <= Duration::from_secs(890), "seed {seed}: {p:?}");
                let Some(node) = p.fault.node() else { continue };
                let active: Vec<&Planned> = faults[..i]
                    .iter()
                    .filter(|q| q.fault.node().is_some() && q.at + q.fault.lasting() > p.at)
                    .collect();
                assert!(active.len() < max_down(nodes), "seed {seed}: {p:?} while {active:?}");
                assert!(nodes - active.len() > 2, "seed {seed}: {nodes} nodes, {} faulted, one more", active.len());
                assert!(active.iter().all(|q| q.fault.node() != Some(node)), "seed {seed}: node {node} twice");
            }
            let (splits, merges) = faults.iter().fold((0, 0), |(s, m), p| match p.fault {
                Fault::Split => (s + 1, m),
                Fault::Merge => (s, m + 1),
                _ => (s, m),
            });
            assert!((0..=2).contains(&(splits - merges)), "seed {seed}: {splits} splits, {merges} merges");
        }
    }

    #[test]
    fn zombies_sleep_past_failover_and_no_postgres_restart_without_a_server_of_its_own() {
        let mut shape = shape(900, 4);
        shape.restart_postgres = false;
        for seed in 0..50 {
            for p in plan(seed, shape) {
                assert!(!matches!(p.fault, Fault::RestartPostgres(_)));
                if let Fault::Pause { frozen, .. } = p.fault {
                    assert!(frozen > shape.failover, "seed {seed}: {frozen:?}");
                }
            }
        }
    }
}
