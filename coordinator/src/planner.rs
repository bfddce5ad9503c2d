//! The assignment planner: a pure function from (leases, live nodes) to moves.
//!
//! - A lease is *ready* when it is not finished and every parent lease is SHARD_END (or gone).
//!   Only ready leases are assigned or counted; a child never starts before its parents end.
//! - Ready leases without a live owner are assigned at once to the least-loaded node.
//! - Then leases move from nodes above their share to nodes below it, so every live node ends
//!   with ⌊n/k⌋ or ⌈n/k⌉ leases; the ⌈n/k⌉ slots go to the nodes that hold most already, which
//!   makes the number of moves the least possible. Moves between live nodes are graceful
//!   handoffs; a lease already in a handoff is left alone, unless the handoff *stalled* (the
//!   previous owner never finished it): then the new owner gets it at once. A lease assigned
//!   moments ago is not handed off before its owner had time to see it.

use proto::{Lease, WorkerId};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Move {
    /// No live owner (unowned, owner dead, or a handoff whose previous owner died): `to` owns it
    /// now and starts at once.
    Assign { lease: String, to: WorkerId },
    /// From a live owner: `to` becomes owner and starts after `from` checkpointed.
    HandOff { lease: String, from: WorkerId, to: WorkerId },
}

impl Move {
    pub fn lease(&self) -> &str {
        match self {
            Move::Assign { lease, .. } | Move::HandOff { lease, .. } => lease,
        }
    }

    pub fn target(&self) -> &WorkerId {
        match self {
            Move::Assign { to, .. } | Move::HandOff { to, .. } => to,
        }
    }
}

/// Whether a lease may be processed: not finished, and no parent lease still unfinished.
pub fn is_ready(lease: &Lease, by_key: &BTreeMap<&str, &Lease>) -> bool {
    !lease.is_finished()
        && lease
            .parent_shard_ids
            .iter()
            .all(|p| by_key.get(lease.sibling_key(p).as_str()).is_none_or(|l| l.is_finished()))
}

#[derive(Default)]
struct NodeLoad {
    movable: Vec<String>,
    fixed: usize,
    load: f64,
}

impl NodeLoad {
    fn count(&self) -> usize {
        self.movable.len() + self.fixed
    }
}

/// What the planner knows besides the leases.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// Nodes that may receive leases.
    pub live: &'a BTreeSet<WorkerId>,
    /// Nodes that are stopping: their leases are left alone until released.
    pub draining: &'a BTreeSet<WorkerId>,
    /// Leases whose handoff has not moved for a failover time.
    pub stalled: &'a BTreeSet<String>,
    /// Leases assigned so recently that their owner may not have seen them yet: they count
    /// toward their owner's share but are not handed off (a node hands off only a lease it knows
    /// it owns; one it never saw would leave the handoff to stall for a failover time).
    pub settling: &'a BTreeSet<String>,
    /// Leases left alone: held by an owner that is not a node of this cluster and still renews
    /// them (a KCL worker on the same table, as KCL leaves a lease whose counter moves), or of a
    /// stream this cluster does not consume.
    pub held_elsewhere: &'a BTreeSet<String>,
}

/// Plans the moves for one assignment cycle.
pub fn plan(leases: &[Lease], input: &PlanInput<'_>) -> Vec<Move> {
    let PlanInput { live, draining, stalled, settling, held_elsewhere } = *input;
    if live.is_empty() {
        return Vec::new();
    }
    let by_key: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let mut nodes: BTreeMap<&WorkerId, NodeLoad> = live.iter().map(|w| (w, NodeLoad::default())).collect();
    let mut moves = Vec::new();
    let mut orphans: Vec<&Lease> = Vec::new();

    for lease in by_key.values().filter(|l| is_ready(l, &by_key)) {
        let load = lease.throughput_kbps.unwrap_or(0.0);
        if lease.owner.as_ref().is_some_and(|o| draining.contains(o)) || held_elsewhere.contains(&lease.key) {
            continue;
        }
        let owner = lease.owner.as_ref().filter(|o| live.contains(*o));
        let handing_off = lease.checkpoint_owner.as_ref();
        match (owner, handing_off) {
            (Some(owner), Some(prev))
                if (live.contains(prev) || draining.contains(prev)) && !stalled.contains(&lease.key) =>
            {
                let n = nodes.get_mut(owner).expect("live");
                n.fixed += 1;
                n.load += load;
            }
            (Some(owner), Some(_gone_or_stalled)) => {
                // The previous owner died mid-handoff, or never finished it: nobody else will
                // clear checkpointOwner.
                moves.push(Move::Assign { lease: lease.key.clone(), to: owner.clone() });
                let n = nodes.get_mut(owner).expect("live");
                n.fixed += 1;
                n.load += load;
            }
            (Some(owner), None) => {
                let n = nodes.get_mut(owner).expect("live");
                if settling.contains(&lease.key) {
                    n.fixed += 1;
                } else {
                    n.movable.push(lease.key.clone());
                }
                n.load += load;
            }
            (None, _) => orphans.push(lease),
        }
    }

    // Heaviest orphans first, each to the node with the fewest leases (then least load).
    orphans.sort_by(|a, b| {
        b.throughput_kbps.unwrap_or(0.0).total_cmp(&a.throughput_kbps.unwrap_or(0.0)).then(a.key.cmp(&b.key))
    });
    for lease in orphans {
        let (to, n) = nodes
            .iter_mut()
            .min_by(|(ia, a), (ib, b)| a.count().cmp(&b.count()).then(a.load.total_cmp(&b.load)).then(ia.cmp(ib)))
            .expect("live is not empty");
        n.fixed += 1;
        n.load += lease.throughput_kbps.unwrap_or(0.0);
        moves.push(Move::Assign { lease: lease.key.clone(), to: (*to).clone() });
    }

    // Shares: the nodes holding most get the ⌈n/k⌉ slots.
    let total: usize = nodes.values().map(NodeLoad::count).sum();
    let (base, extra) = (total / nodes.len(), total % nodes.len());
    let mut order: Vec<&WorkerId> = nodes.keys().copied().collect();
    order.sort_by(|a, b| nodes[b].count().cmp(&nodes[a].count()).then(a.cmp(b)));
    let share: BTreeMap<&WorkerId, usize> =
        order.iter().enumerate().map(|(i, w)| (*w, base + usize::from(i < extra))).collect();

    let mut givers: Vec<(&WorkerId, String)> = Vec::new();
    for (w, n) in nodes.iter_mut() {
        let surplus = n.count().saturating_sub(share[w]);
        // Give away the most recently keyed leases first: a stable, deterministic choice.
        let keep = n.movable.len().saturating_sub(surplus);
        for key in n.movable.drain(keep..) {
            givers.push((*w, key));
        }
    }
    let mut takers: Vec<(&WorkerId, usize)> =
        order.iter().rev().filter_map(|w| share[w].checked_sub(nodes[w].count()).map(|d| (*w, d))).collect();
    for (from, lease) in givers {
        let Some((to, deficit)) = takers.iter_mut().find(|(_, d)| *d > 0) else { break };
        *deficit -= 1;
        moves.push(Move::HandOff { lease, from: from.clone(), to: (*to).clone() });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::{Checkpoint, ShardId};

    fn lease(key: &str, owner: Option<&str>) -> Lease {
        let mut l = Lease::for_shard(&ShardId::new(key), Vec::new(), None, Checkpoint::TrimHorizon);
        l.owner = owner.map(WorkerId::new);
        l
    }

    fn plan_live(leases: &[Lease], live: &BTreeSet<WorkerId>, stalled: &BTreeSet<String>) -> Vec<Move> {
        let (nobody, none) = (BTreeSet::new(), BTreeSet::new());
        plan(leases, &PlanInput { live, draining: &nobody, stalled, settling: &none, held_elsewhere: &none })
    }

    fn nodes(ids: &[&str]) -> BTreeSet<WorkerId> {
        ids.iter().map(|s| WorkerId::new(*s)).collect()
    }

    /// Applies moves as the table would once every handoff completed.
    fn apply(leases: &mut [Lease], moves: &[Move]) {
        for m in moves {
            let l = leases.iter_mut().find(|l| l.key == m.lease()).expect("moved lease exists");
            l.owner = Some(m.target().clone());
            l.checkpoint_owner = None;
        }
    }

    #[test]
    fn dead_nodes_leases_go_to_the_live_ones_in_one_cycle() {
        let mut leases: Vec<Lease> =
            (0..6).map(|i| lease(&format!("s{i}"), Some(if i < 3 { "a" } else { "dead" }))).collect();
        let moves = plan_live(&leases, &nodes(&["a", "b"]), &BTreeSet::new());
        assert_eq!(moves.len(), 3);
        assert!(moves.iter().all(|m| matches!(m, Move::Assign { to, .. } if to.as_str() == "b")));
        apply(&mut leases, &moves);
        assert!(plan_live(&leases, &nodes(&["a", "b"]), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn children_wait_for_every_parent() {
        let mut p1 = lease("p1", Some("a"));
        let p2 = lease("p2", Some("a"));
        let mut child = lease("c", None);
        child.parent_shard_ids = vec![ShardId::new("p1"), ShardId::new("p2")];
        p1.checkpoint = Checkpoint::ShardEnd;
        let live = nodes(&["a", "b"]);
        let moves = plan_live(&[p1.clone(), p2.clone(), child.clone()], &live, &BTreeSet::new());
        assert!(moves.iter().all(|m| m.lease() != "c"), "{moves:?}");
        let mut p2_done = p2.clone();
        p2_done.checkpoint = Checkpoint::ShardEnd;
        let moves = plan_live(&[p1, p2_done, child], &live, &BTreeSet::new());
        assert!(moves.iter().any(|m| m.lease() == "c"));
    }

    /// A merged shard has two parents, listed in either order, each open, ended or already gone
    /// from the table: the child is assigned exactly when neither parent is still open.
    #[test]
    fn a_merged_child_waits_for_both_parents_in_every_order() {
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Parent {
            Open,
            Ended,
            Gone,
        }
        let live = nodes(&["a", "b"]);
        for first in [Parent::Open, Parent::Ended, Parent::Gone] {
            for second in [Parent::Open, Parent::Ended, Parent::Gone] {
                for listed in [["p1", "p2"], ["p2", "p1"]] {
                    let mut leases = Vec::new();
                    for (key, state) in [("p1", first), ("p2", second)] {
                        let mut parent = lease(key, Some("a"));
                        match state {
                            Parent::Open => leases.push(parent),
                            Parent::Ended => {
                                parent.checkpoint = Checkpoint::ShardEnd;
                                leases.push(parent);
                            }
                            Parent::Gone => {}
                        }
                    }
                    let mut child = lease("c", None);
                    child.parent_shard_ids = listed.iter().map(|p| ShardId::new(*p)).collect();
                    leases.push(child);
                    let assigned = plan_live(&leases, &live, &BTreeSet::new()).iter().any(|m| m.lease() == "c");
                    let want = first != Parent::Open && second != Parent::Open;
                    assert_eq!(assigned, want, "p1 {first:?}, p2 {second:?}, listed {listed:?}");
                }
            }
        }
    }

    #[test]
    fn a_handoff_whose_giver_died_is_cleared() {
        let mut l = lease("s", Some("b"));
        l.checkpoint_owner = Some(WorkerId::new("dead"));
        let none = BTreeSet::new();
        let moves = plan_live(&[l.clone()], &nodes(&["a", "b"]), &none);
        assert_eq!(moves, vec![Move::Assign { lease: "s".into(), to: WorkerId::new("b") }]);
        l.checkpoint_owner = Some(WorkerId::new("a"));
        assert!(plan_live(&[l.clone()], &nodes(&["a", "b"]), &none).is_empty());
        let stalled: BTreeSet<String> = ["s".to_owned()].into();
        assert_eq!(plan_live(&[l], &nodes(&["a", "b"]), &stalled), moves);
    }

    /// Every lease a node holds counts toward its load, whatever its state (plain, mid-handoff,
    /// a handoff being cleared, or just assigned in this cycle): an orphan goes to the node with
    /// the fewest leases, and between equals to the one with the least throughput.
    #[test]
    fn orphans_go_to_the_node_with_fewest_leases_then_least_load() {
        let with = |key: &str, owner: Option<&str>, kbps: f64, giver: Option<&str>| {
            let mut l = lease(key, owner);
            l.throughput_kbps = Some(kbps);
            l.checkpoint_owner = giver.map(WorkerId::new);
            l
        };
        let live = nodes(&["a", "b", "c"]);
        let to = |leases: &[Lease], orphan: &str| {
            plan_live(leases, &live, &BTreeSet::new())
                .into_iter()
                .find(|m| m.lease() == orphan)
                .map(|m| m.target().as_str().to_owned())
        };
        let orphan = |key: &str| with(key, None, 1.0, None);
        for giver in [None, Some("b"), Some("dead")] {
            // a: one lease (plain, being handed over by b, or left by a dead giver) of 100 kbps;
            // b and c: one of 10 kbps each. Equal counts: the orphan goes to the lighter b.
            let leases = [
                with("s1", Some("a"), 100.0, giver),
                with("s2", Some("b"), 10.0, None),
                with("s3", Some("c"), 10.0, None),
            ];
            let mut all = leases.to_vec();
            all.push(orphan("s9"));
            assert_eq!(to(&all, "s9").as_deref(), Some("b"), "a's lease with giver {giver:?}");
            // Without c's lease, c has the fewest: the count comes before the load.
            let fewer = [leases[0].clone(), leases[1].clone(), orphan("s9")];
            assert_eq!(to(&fewer, "s9").as_deref(), Some("c"), "giver {giver:?}");
        }
        // Orphans assigned in this cycle count too: 100 → a, 10 → b, 10 → c, then 5 → b, the
        // lightest of three nodes holding one each.
        let orphans = [with("s1", None, 100.0, None), with("s2", None, 10.0, None), with("s3", None, 10.0, None)];
        let mut all = orphans.to_vec();
        all.push(with("s4", None, 5.0, None));
        assert_eq!(to(&all, "s1").as_deref(), Some("a"));
        assert_eq!(to(&all, "s4").as_deref(), Some("b"));
    }

    #[test]
    fn a_draining_node_keeps_its_leases_and_gets_no_new_ones() {
        let leases = vec![lease("s1", Some("d")), lease("s2", Some("d")), lease("s3", None), lease("s4", Some("a"))];
        let draining = nodes(&["d"]);
        let moves = plan(
            &leases,
            &PlanInput {
                live: &nodes(&["a", "b"]),
                draining: &draining,
                stalled: &BTreeSet::new(),
                settling: &BTreeSet::new(),
                held_elsewhere: &BTreeSet::new(),
            },
        );
        assert_eq!(moves, vec![Move::Assign { lease: "s3".into(), to: WorkerId::new("b") }]);
    }

    /// In a multi-stream table a child waits for its parent of the same stream, whatever
    /// another stream's shard of the same id does.
    #[test]
    fn a_multi_stream_child_waits_for_its_own_streams_parent() {
        let (a, b) = (Some("1:a:1"), Some("1:b:1"));
        let keyed = |stream, id: &str, parents: &[&str], cp| {
            let parents = parents.iter().map(|p| ShardId::new(*p)).collect();
            Lease::for_stream_shard(stream, &ShardId::new(id), parents, None, cp)
        };
        let leases = [
            keyed(a, "p", &[], Checkpoint::TrimHorizon),
            keyed(b, "p", &[], Checkpoint::ShardEnd),
            keyed(a, "c", &["p"], Checkpoint::TrimHorizon),
            keyed(b, "c", &["p"], Checkpoint::TrimHorizon),
        ];
        let by_key: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
        let ready: Vec<&str> = leases.iter().filter(|l| is_ready(l, &by_key)).map(|l| l.key.as_str()).collect();
        assert_eq!(ready, ["1:a:1:p", "1:b:1:c"]);
    }

    /// A lease another application's worker still renews is neither taken nor counted; the
    /// same lease once its owner stopped renewing (not held any more) is assigned like any.
    #[test]
    fn a_lease_held_elsewhere_is_left_alone() {
        let leases = vec![lease("s1", Some("kcl-1")), lease("s2", Some("kcl-1")), lease("s3", None)];
        let (live, nobody) = (nodes(&["a", "b"]), BTreeSet::new());
        let (held, none): (BTreeSet<String>, _) = (["s1".to_owned(), "s2".to_owned()].into(), BTreeSet::new());
        let input = |held_elsewhere| PlanInput {
            live: &live,
            draining: &nobody,
            stalled: &none,
            settling: &none,
            held_elsewhere,
        };
        assert_eq!(plan(&leases, &input(&held)), vec![Move::Assign { lease: "s3".into(), to: WorkerId::new("a") }]);
        let moves = plan(&leases, &input(&none));
        assert_eq!(moves.len(), 3, "{moves:?}");
        assert!(moves.iter().all(|m| matches!(m, Move::Assign { .. })), "{moves:?}");
    }

    /// A lease assigned moments ago counts toward its owner but is not handed off until it
    /// settled: the balance is reached one cycle later instead.
    #[test]
    fn a_lease_still_settling_is_not_handed_off() {
        let leases = vec![lease("s1", Some("a")), lease("s2", Some("a")), lease("s3", Some("a"))];
        let live = nodes(&["a", "b"]);
        let (nobody, none) = (BTreeSet::new(), BTreeSet::new());
        let input =
            |settling| PlanInput { live: &live, draining: &nobody, stalled: &none, settling, held_elsewhere: &none };
        let moves = plan(&leases, &input(&none));
        assert_eq!(moves, vec![Move::HandOff { lease: "s3".into(), from: WorkerId::new("a"), to: WorkerId::new("b") }]);
        let settling: BTreeSet<String> = ["s3".to_owned()].into();
        let moves = plan(&leases, &input(&settling));
        assert_eq!(moves, vec![Move::HandOff { lease: "s2".into(), from: WorkerId::new("a"), to: WorkerId::new("b") }]);
        let all: BTreeSet<String> = ["s1", "s2", "s3"].map(String::from).into();
        assert!(plan(&leases, &input(&all)).is_empty(), "nothing settled may move");
        // Settling leases still count: a holds three, so one must go, and only s3 may.
        let two: BTreeSet<String> = ["s1", "s2"].map(String::from).into();
        let moves = plan(&leases, &input(&two));
        assert_eq!(moves, vec![Move::HandOff { lease: "s3".into(), from: WorkerId::new("a"), to: WorkerId::new("b") }]);
    }

    /// The fewest handoffs any balanced outcome needs: give the ⌈n/k⌉ slots to the nodes that
    /// hold most; everything above a node's slot must leave it.
    fn minimal_handoffs(counts: &[usize], orphans: usize) -> usize {
        let total: usize = counts.iter().sum::<usize>() + orphans;
        let (base, extra) = (total / counts.len(), total % counts.len());
        let mut sorted = counts.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.iter().enumerate().map(|(i, c)| c.saturating_sub(base + usize::from(i < extra))).sum()
    }

    /// Leases s00.. with random owners (live, dead or none), some finished, and parents drawn
    /// from the leases before them: none, one (a split's child), two in either order (a merge's
    /// child), or one that is no longer in the table.
    fn scenario() -> impl Strategy<Value = (Vec<Lease>, BTreeSet<WorkerId>)> {
        let pick = (0usize..10, any::<bool>(), 0usize..5, 1usize..4, 1usize..4);
        (1usize..7, 0usize..40, proptest::collection::vec(pick, 40)).prop_map(|(live_count, n, picks)| {
            let live: BTreeSet<WorkerId> = (0..live_count).map(|i| WorkerId::new(format!("n{i}"))).collect();
            let mut leases: Vec<Lease> = (0..n)
                .map(|i| {
                    let (owner, finished, parents, back1, back2) = picks[i];
                    // Owners n0..n9: some live, some dead; 8 and 9 mean unowned.
                    let owner = (owner < 8).then(|| format!("n{owner}"));
                    let mut l = lease(&format!("s{i:02}"), owner.as_deref());
                    if finished {
                        l.checkpoint = Checkpoint::ShardEnd;
                    }
                    let earlier = |back: usize| (i >= back).then(|| ShardId::new(format!("s{:02}", i - back)));
                    let (one, other) = (earlier(back1), earlier(back1 + back2));
                    l.parent_shard_ids = match parents {
                        1 => one.into_iter().collect(),
                        2 => one.into_iter().chain(other).collect(),
                        3 => other.into_iter().chain(one).collect(),
                        4 => vec![ShardId::new(format!("gone{i}"))],
                        _ => Vec::new(),
                    };
                    l
                })
                .collect();
            leases.sort_by(|a, b| a.key.cmp(&b.key));
            (leases, live)
        })
    }

    /// The oracle of readiness, written apart from `is_ready`: the keys still open, and a lease
    /// is ready when it is open itself and shares no key with that set.
    fn ready_oracle(leases: &[Lease]) -> BTreeSet<String> {
        let open: BTreeSet<&str> =
            leases.iter().filter(|l| l.checkpoint != Checkpoint::ShardEnd).map(|l| l.key.as_str()).collect();
        leases
            .iter()
            .filter(|l| open.contains(l.key.as_str()))
            .filter(|l| !l.parent_shard_ids.iter().any(|p| open.contains(p.as_str())))
            .map(|l| l.key.clone())
            .collect()
    }

    proptest! {
        #[test]
        fn balanced_minimal_safe_and_stable((leases, live) in scenario()) {
            let ready = ready_oracle(&leases);
            let moves = plan_live(&leases, &live, &BTreeSet::new());

            // Only ready leases move, only to live nodes, each at most once.
            let moved: BTreeSet<&str> = moves.iter().map(Move::lease).collect();
            prop_assert_eq!(moved.len(), moves.len());
            for m in &moves {
                prop_assert!(ready.contains(m.lease()), "not ready: {:?}", m);
                prop_assert!(live.contains(m.target()), "dead target: {:?}", m);
                if let Move::HandOff { from, .. } = m { prop_assert!(live.contains(from)); }
            }

            // Minimal: handoffs are exactly the surplus above the balanced shares.
            let counts: Vec<usize> = live.iter().map(|w| {
                leases.iter().filter(|l| ready.contains(&l.key) && l.owner.as_ref() == Some(w)).count()
            }).collect();
            let orphans = ready.len() - counts.iter().sum::<usize>();
            let handoffs = moves.iter().filter(|m| matches!(m, Move::HandOff { .. })).count();
            prop_assert_eq!(handoffs, minimal_handoffs(&counts, orphans));
            prop_assert_eq!(moves.len() - handoffs, orphans);

            // After the moves: every ready lease has a live owner, balanced to ±1, and the
            // next cycle plans nothing.
            let mut after = leases.clone();
            apply(&mut after, &moves);
            let mut per_node: BTreeMap<&WorkerId, usize> = live.iter().map(|w| (w, 0)).collect();
            for l in after.iter().filter(|l| ready.contains(&l.key)) {
                let owner = l.owner.as_ref().expect("assigned");
                prop_assert!(live.contains(owner));
                *per_node.get_mut(owner).unwrap() += 1;
            }
            let (min, max) = (per_node.values().min().unwrap(), per_node.values().max().unwrap());
            prop_assert!(max - min <= 1, "unbalanced: {:?}", per_node);
            prop_assert!(plan_live(&after, &live, &BTreeSet::new()).is_empty());
        }
    }
}
