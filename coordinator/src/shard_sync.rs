//! Shard sync: which leases to create for the shards a stream lists.
//!
//! A shard gets a lease when it has none and no descendant has one (a descendant's lease means
//! the shard was already processed, or deliberately skipped). Parents are recorded so the planner
//! can hold children back. With LATEST or AT_TIMESTAMP only open shards get leases; with
//! TRIM_HORIZON every listed shard does, so nothing still retained is skipped.

use proto::{Checkpoint, Lease, ShardId, ShardInfo};
use std::collections::{BTreeMap, BTreeSet};

/// The leases to create for `shards` of the stream `stream` (`None`: a single-stream table),
/// given that stream's `leases`.
pub fn leases_to_create(
    stream: Option<&str>,
    shards: &[ShardInfo],
    leases: &[Lease],
    initial: &Checkpoint,
) -> Vec<Lease> {
    let shard_ids: Vec<ShardId> = leases.iter().map(Lease::stream_shard_id).collect();
    let have: BTreeSet<&str> = shard_ids.iter().map(ShardId::as_str).collect();
    let mut children: BTreeMap<&ShardId, Vec<&ShardId>> = BTreeMap::new();
    for s in shards {
        for p in &s.parents {
            children.entry(p).or_default().push(&s.id);
        }
    }
    let descendant_has_lease = |id: &ShardId| {
        let mut stack: Vec<&ShardId> = children.get(id).cloned().unwrap_or_default();
        let mut seen = BTreeSet::new();
        while let Some(c) = stack.pop() {
            if have.contains(c.as_str()) {
                return true;
            }
            if seen.insert(c) {
                stack.extend(children.get(c).cloned().unwrap_or_default());
            }
        }
        false
    };
    let from_start = matches!(initial, Checkpoint::TrimHorizon);
    let candidates: Vec<&ShardInfo> =
        shards.iter().filter(|s| !have.contains(s.id.as_str()) && !descendant_has_lease(&s.id)).collect();
    // Open shards (every retained one from TRIM_HORIZON), and, whatever the start, a closed shard
    // whose parent is read: its records follow the parent's and may not be skipped (a shard
    // split and merged again before any sync saw it open). Parents first, to a fixed point.
    let mut leased: BTreeSet<&str> = have.clone();
    let mut creating: Vec<&ShardInfo> = Vec::new();
    loop {
        let more: Vec<&ShardInfo> = candidates
            .iter()
            .copied()
            .filter(|s| !leased.contains(s.id.as_str()))
            .filter(|s| from_start || s.is_open() || s.parents.iter().any(|p| leased.contains(p.as_str())))
            .collect();
        if more.is_empty() {
            break;
        }
        leased.extend(more.iter().map(|s| s.id.as_str()));
        creating.extend(more);
    }
    creating.sort_by_key(|s| shards.iter().position(|x| x.id == s.id));
    creating
        .into_iter()
        .map(|s| {
            // A child whose parent has a lease starts at its beginning: the parent's lease covers
            // the data before it, so nothing between the parent's end and now may be skipped.
            let start = if s.parents.iter().any(|p| leased.contains(p.as_str())) {
                Checkpoint::TrimHorizon
            } else {
                initial.clone()
            };
            Lease::for_stream_shard(stream, &s.id, s.parents.clone(), Some(s.hash_range), start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{HashKeyRange, WorkerId};

    fn shard(id: &str, parents: &[&str], open: bool) -> ShardInfo {
        ShardInfo {
            id: ShardId::new(id),
            parents: parents.iter().map(|p| ShardId::new(*p)).collect(),
            hash_range: HashKeyRange::FULL,
            ending_sequence: (!open).then(|| proto::SequenceNumber::from_u128(9)),
        }
    }

    #[test]
    fn creates_each_missing_lease_once_with_lineage() {
        let shards = vec![shard("p", &[], false), shard("a", &["p"], true), shard("b", &["p"], true)];
        let created = leases_to_create(None, &shards, &[], &Checkpoint::TrimHorizon);
        assert_eq!(created.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(), vec!["p", "a", "b"]);
        assert_eq!(created[1].parent_shard_ids, vec![ShardId::new("p")]);
        assert!(leases_to_create(None, &shards, &created, &Checkpoint::TrimHorizon).is_empty());
    }

    /// In a multi-stream table the keys carry the stream; lineage stays in shard ids, as KCL
    /// keeps it; a stream's leases are recognised by their shard.
    #[test]
    fn multi_stream_leases_are_keyed_by_stream_and_shard() {
        let shards = vec![shard("p", &[], false), shard("a", &["p"], true)];
        let stream = Some("111122223333:orders:1700000000");
        let created = leases_to_create(stream, &shards, &[], &Checkpoint::TrimHorizon);
        let keys: Vec<&str> = created.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(keys, ["111122223333:orders:1700000000:p", "111122223333:orders:1700000000:a"]);
        assert_eq!(created[1].parent_shard_ids, vec![ShardId::new("p")]);
        assert!(leases_to_create(stream, &shards, &created, &Checkpoint::TrimHorizon).is_empty());
    }

    #[test]
    fn a_parent_whose_children_have_leases_is_not_recreated() {
        let shards = vec![shard("p", &[], false), shard("c", &["p"], true)];
        let mut child = Lease::for_shard(&ShardId::new("c"), vec![ShardId::new("p")], None, Checkpoint::TrimHorizon);
        child.owner = Some(WorkerId::new("w"));
        assert!(leases_to_create(None, &shards, &[child], &Checkpoint::TrimHorizon).is_empty());
    }

    #[test]
    fn latest_starts_only_open_shards() {
        let shards = vec![shard("p", &[], false), shard("c", &["p"], true)];
        let created = leases_to_create(None, &shards, &[], &Checkpoint::Latest);
        assert_eq!(created.len(), 1);
        assert_eq!((created[0].key.as_str(), &created[0].checkpoint), ("c", &Checkpoint::Latest));
    }

    /// Whatever the start, a closed shard whose parent is read gets a lease too (from its
    /// beginning, after that parent): `a` was split from `p` and merged into `m` before any sync
    /// saw it open. Without it `a`'s records would be skipped and `m` would look ready with a
    /// parent that has no lease.
    #[test]
    fn a_closed_child_of_a_leased_shard_is_read_whatever_the_start() {
        let shards = vec![
            shard("p", &[], false),
            shard("a", &["p"], false),
            shard("b", &["p"], true),
            shard("m", &["a", "x"], true),
            shard("x", &[], false),
        ];
        let p = Lease::for_shard(&ShardId::new("p"), vec![], None, Checkpoint::Latest);
        for initial in [Checkpoint::Latest, Checkpoint::AtTimestamp] {
            let created = leases_to_create(None, &shards, std::slice::from_ref(&p), &initial);
            let keys: Vec<(&str, &Checkpoint)> = created.iter().map(|l| (l.key.as_str(), &l.checkpoint)).collect();
            // `x`: closed, its parent unread (none): skipped as LATEST skips it.
            let from_start = &Checkpoint::TrimHorizon;
            assert_eq!(keys, [("a", from_start), ("b", from_start), ("m", from_start)], "{initial:?}");
        }
    }
}
