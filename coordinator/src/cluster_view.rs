//! What the coordinator last saw of the cluster, for the node's metrics: whether this node
//! leads and, while it does, the leases by state and the nodes by liveness. Plain atomics,
//! written by the coordinator each cycle and read at each scrape.

use crate::planner::is_ready;
use proto::Lease;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct ClusterView {
    leader: AtomicBool,
    /// Owned, unassigned (ready, nobody holds it), waiting (a parent not finished), finished.
    leases: [AtomicI64; 4],
    /// Live, draining, dead.
    nodes: [AtomicI64; 3],
}

/// The lease states the leader reports, in `ClusterView::leases` order.
pub const LEASE_STATES: [&str; 4] = ["owned", "unassigned", "waiting", "finished"];
/// The node states the leader reports, in `ClusterView::nodes` order.
pub const NODE_STATES: [&str; 3] = ["live", "draining", "dead"];

impl ClusterView {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.store(leading, Ordering::Relaxed);
    }

    /// Counts per state of `LEASE_STATES` (meaningful while `is_leader`).
    pub fn leases(&self) -> [i64; 4] {
        self.leases.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    /// Counts per state of `NODE_STATES` (meaningful while `is_leader`).
    pub fn nodes(&self) -> [i64; 3] {
        self.nodes.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    /// Records one cycle's view: `leases` as scanned (shard leases only), node counts.
    pub fn observe(&self, leases: &[Lease], nodes: [usize; 3]) {
        let by_key: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
        let mut counts = [0i64; 4];
        for lease in leases {
            let state = if lease.is_finished() {
                3
            } else if lease.owner.is_some() {
                0
            } else if is_ready(lease, &by_key) {
                1
            } else {
                2
            };
            counts[state] += 1;
        }
        for (slot, n) in self.leases.iter().zip(counts) {
            slot.store(n, Ordering::Relaxed);
        }
        for (slot, n) in self.nodes.iter().zip(nodes) {
            slot.store(n as i64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Checkpoint, ShardId, WorkerId};

    #[test]
    fn leases_are_counted_by_state() {
        let lease = |id: &str, parents: &[&str], cp: Checkpoint| {
            Lease::for_shard(&ShardId::new(id), parents.iter().map(|p| ShardId::new(*p)).collect(), None, cp)
        };
        let mut owned = lease("a", &[], Checkpoint::TrimHorizon);
        owned.owner = Some(WorkerId::new("n1"));
        let leases = vec![
            owned,
            lease("parent", &[], Checkpoint::TrimHorizon),
            lease("child", &["parent"], Checkpoint::TrimHorizon),
            lease("done", &[], Checkpoint::ShardEnd),
            lease("after-done", &["done"], Checkpoint::TrimHorizon),
        ];
        let view = ClusterView::default();
        view.observe(&leases, [2, 1, 0]);
        assert_eq!(view.leases(), [1, 2, 1, 1], "owned, unassigned (parent, after-done), waiting (child), finished");
        assert_eq!(view.nodes(), [2, 1, 0]);
    }
}
