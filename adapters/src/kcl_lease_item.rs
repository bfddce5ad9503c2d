//! KCL's lease item: a lease as the attributes of a DynamoDB row (`to_item`) and back
//! (`from_item`), in KCL's names and types. This is the compatibility surface with tables KCL
//! wrote: a row without `entityType` is a lease. Tributary's own rows, kept in a state table of
//! their own, are marked by `entityType`: the leader lock (a lease-shaped row) and the membership
//! row, whose `workers` map holds each node's heartbeat entry (`worker_row`).

use aws_sdk_dynamodb::types::AttributeValue;
use proto::{Checkpoint, EntityType, HashKeyRange, Lease, LeaseError, ShardId, WorkerId, WorkerRow};
use std::collections::HashMap;

/// A row's attributes.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// The key of the membership row (heartbeats), in the state table.
pub const MEMBERSHIP_KEY: &str = "tributary:membership";
/// Where earlier versions kept the membership row: in the lease table, under this key.
pub(crate) const LEGACY_MEMBERSHIP_KEY: &str = "__tributary_membership";
/// Keys of tributary's own rows (the leader lock, the membership row) start with this; they live
/// in the state table, never among the leases (no shard id or KCL lease key starts so).
pub const STATE_KEY_PREFIX: &str = "tributary:";
const LEADER_ENTITY: &str = "tributary-leader";
pub(crate) const MEMBERSHIP_ENTITY: &str = "tributary-membership";

/// KCL's attribute names, and those of tributary's own rows.
pub(crate) mod attr {
    pub const KEY: &str = "leaseKey";
    pub const OWNER: &str = "leaseOwner";
    pub const COUNTER: &str = "leaseCounter";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const CHECKPOINT_SUB: &str = "checkpointSubSequenceNumber";
    pub const PENDING: &str = "pendingCheckpoint";
    pub const PENDING_SUB: &str = "pendingCheckpointSubSequenceNumber";
    pub const PENDING_STATE: &str = "pendingCheckpointState";
    pub const SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
    pub const PARENTS: &str = "parentShardId";
    pub const CHILDREN: &str = "childShardIds";
    pub const START_HASH: &str = "startingHashKey";
    pub const END_HASH: &str = "endingHashKey";
    pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
    pub const THROUGHPUT: &str = "throughputKBps";
    pub const ENTITY: &str = "entityType";
    /// A multi-stream lease's stream identifier (KCL keeps the name for its legacy).
    pub const STREAM: &str = "streamName";
    /// A multi-stream lease's shard id.
    pub const SHARD: &str = "shardId";
    pub const WORKERS: &str = "workers";
    /// The membership row's leader claim (a worker id).
    pub const LEADER: &str = "leader";
    /// The membership row's change counter.
    pub const CHANGES: &str = "changes";
}

/// A string attribute.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A row that does not read as a lease: its attribute `what` is missing or malformed.
pub(crate) fn bad(key: &str, what: &str) -> LeaseError {
    LeaseError::Fatal(format!("lease row {key:?}: bad {what}"))
}

fn get_s<'i>(item: &'i Item, name: &str) -> Option<&'i str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n<T: std::str::FromStr>(item: &Item, key: &str, name: &str) -> Result<Option<T>, LeaseError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(text)) => text.parse().map(Some).map_err(|_| bad(key, name)),
        Some(_) => Err(bad(key, name)),
    }
}

/// A string set, sorted: DynamoDB keeps no order in sets, and rows are compared after writes.
fn get_ss(item: &Item, name: &str) -> Vec<ShardId> {
    let mut ids: Vec<ShardId> = match item.get(name) {
        Some(AttributeValue::Ss(v)) => v.iter().map(ShardId::new).collect(),
        Some(AttributeValue::S(v)) => vec![ShardId::new(v)],
        _ => Vec::new(),
    };
    ids.sort();
    ids
}

/// A row as a lease; `None` for rows that are not leases or the leader lock.
pub(crate) fn from_item(item: &Item) -> Result<Option<Lease>, LeaseError> {
    let key = get_s(item, attr::KEY).ok_or_else(|| bad("?", attr::KEY))?.to_owned();
    let entity = match get_s(item, attr::ENTITY) {
        None | Some("lease" | "LEASE") => EntityType::Lease,
        Some(LEADER_ENTITY) => EntityType::Leader,
        Some(_) => return Ok(None),
    };
    let checkpoint = match get_s(item, attr::CHECKPOINT) {
        Some(text) => Checkpoint::from_attributes(text, get_n(item, &key, attr::CHECKPOINT_SUB)?.unwrap_or(0))
            .map_err(|_| bad(&key, attr::CHECKPOINT))?,
        None => Checkpoint::TrimHorizon,
    };
    let pending_checkpoint = match get_s(item, attr::PENDING) {
        Some(text) => Some(
            Checkpoint::from_attributes(text, get_n(item, &key, attr::PENDING_SUB)?.unwrap_or(0))
                .map_err(|_| bad(&key, attr::PENDING))?,
        ),
        None => None,
    };
    let hash_range = match (get_s(item, attr::START_HASH), get_s(item, attr::END_HASH)) {
        (Some(a), Some(b)) => Some(HashKeyRange {
            start: a.parse().map_err(|_| bad(&key, attr::START_HASH))?,
            end: b.parse().map_err(|_| bad(&key, attr::END_HASH))?,
        }),
        _ => None,
    };
    Ok(Some(Lease {
        entity,
        owner: get_s(item, attr::OWNER).map(WorkerId::new),
        counter: get_n(item, &key, attr::COUNTER)?.unwrap_or(0),
        checkpoint,
        pending_checkpoint,
        pending_checkpoint_state: item
            .get(attr::PENDING_STATE)
            .and_then(|v| v.as_b().ok())
            .map(|b| b.as_ref().to_vec()),
        owner_switches_since_checkpoint: get_n(item, &key, attr::SWITCHES)?.unwrap_or(0),
        parent_shard_ids: get_ss(item, attr::PARENTS),
        child_shard_ids: get_ss(item, attr::CHILDREN),
        hash_range,
        checkpoint_owner: get_s(item, attr::CHECKPOINT_OWNER).map(WorkerId::new),
        throughput_kbps: get_n(item, &key, attr::THROUGHPUT)?,
        key,
    }))
}

/// A lease as a row: `entityType` only on the leader lock, unset attributes absent (DynamoDB
/// stores no empty set).
pub(crate) fn to_item(lease: &Lease) -> Item {
    let mut item = Item::new();
    item.insert(attr::KEY.into(), s(&lease.key));
    if lease.entity == EntityType::Leader {
        item.insert(attr::ENTITY.into(), s(LEADER_ENTITY));
    }
    if let Some(o) = &lease.owner {
        item.insert(attr::OWNER.into(), s(o.as_str()));
    }
    item.insert(attr::COUNTER.into(), n(lease.counter));
    item.insert(attr::CHECKPOINT.into(), s(lease.checkpoint.as_attribute()));
    item.insert(attr::CHECKPOINT_SUB.into(), n(lease.checkpoint.sub_sequence()));
    if let Some(p) = &lease.pending_checkpoint {
        item.insert(attr::PENDING.into(), s(p.as_attribute()));
        item.insert(attr::PENDING_SUB.into(), n(p.sub_sequence()));
    }
    if let Some(state) = &lease.pending_checkpoint_state {
        item.insert(attr::PENDING_STATE.into(), AttributeValue::B(state.clone().into()));
    }
    item.insert(attr::SWITCHES.into(), n(lease.owner_switches_since_checkpoint));
    // A multi-stream lease names its stream and shard apart too, as KCL's multi-stream rows do
    // (KCL reads them from there).
    if let (EntityType::Lease, Some(stream)) = (lease.entity, lease.stream()) {
        item.insert(attr::STREAM.into(), s(stream));
        item.insert(attr::SHARD.into(), s(lease.stream_shard_id().as_str()));
    }
    if !lease.parent_shard_ids.is_empty() {
        item.insert(attr::PARENTS.into(), ss(&lease.parent_shard_ids));
    }
    if !lease.child_shard_ids.is_empty() {
        item.insert(attr::CHILDREN.into(), ss(&lease.child_shard_ids));
    }
    if let Some(r) = lease.hash_range {
        item.insert(attr::START_HASH.into(), s(r.start.to_string()));
        item.insert(attr::END_HASH.into(), s(r.end.to_string()));
    }
    if let Some(o) = &lease.checkpoint_owner {
        item.insert(attr::CHECKPOINT_OWNER.into(), s(o.as_str()));
    }
    if let Some(t) = lease.throughput_kbps {
        item.insert(attr::THROUGHPUT.into(), n(t));
    }
    item
}

/// A string set, sorted and without repeats (DynamoDB refuses repeats in a set).
pub(crate) fn ss(ids: &[ShardId]) -> AttributeValue {
    let mut v: Vec<String> = ids.iter().map(|s| s.as_str().to_owned()).collect();
    v.sort();
    v.dedup();
    AttributeValue::Ss(v)
}

/// The membership row as stored: `workers` (each node's entry), `leader`, `changes`.
pub(crate) fn membership(item: &Item) -> proto::Membership {
    let mut workers: Vec<WorkerRow> = match item.get(attr::WORKERS) {
        Some(AttributeValue::M(map)) => {
            map.iter().filter_map(|(id, entry)| worker_row(&WorkerId::new(id.as_str()), entry)).collect()
        }
        _ => Vec::new(),
    };
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    proto::Membership {
        workers,
        leader: item.get(attr::LEADER).and_then(|v| v.as_s().ok()).map(|id| WorkerId::new(id.as_str())),
        changes: item.get(attr::CHANGES).and_then(|v| v.as_n().ok()).and_then(|c| c.parse().ok()).unwrap_or(0),
    }
}

/// A node's entry in the membership row's `workers` map; `None` if it is not one.
pub(crate) fn worker_row(id: &WorkerId, entry: &AttributeValue) -> Option<WorkerRow> {
    let m = entry.as_m().ok()?;
    Some(WorkerRow {
        id: id.clone(),
        counter: m.get("counter")?.as_n().ok()?.parse().ok()?,
        draining: m.get("draining").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::{Position, SequenceNumber};

    #[test]
    fn rows_round_trip_through_kcl_attributes() {
        let mut lease = Lease::for_shard(
            &ShardId::new("shardId-000000000004"),
            vec![ShardId::new("shardId-000000000001"), ShardId::new("shardId-000000000002")],
            Some(HashKeyRange { start: 0, end: u128::MAX / 2 }),
            Checkpoint::At(Position::new(
                SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898").unwrap(),
                3,
            )),
        );
        lease.owner = Some(WorkerId::new("node-a"));
        lease.counter = 17;
        lease.checkpoint_owner = Some(WorkerId::new("node-b"));
        lease.throughput_kbps = Some(12.5);
        lease.child_shard_ids = vec![ShardId::new("shardId-000000000009")];
        let item = to_item(&lease);
        assert_eq!(item.get("parentShardId").unwrap().as_ss().unwrap().len(), 2);
        assert!(!item.contains_key("entityType"), "lease rows look like KCL's");
        assert_eq!(from_item(&item).unwrap().unwrap(), lease);
        let leader = Lease::leader_lock("__leader", &WorkerId::new("node-a"));
        assert_eq!(from_item(&to_item(&leader)).unwrap().unwrap(), leader);
        let mut membership = Item::new();
        membership.insert("leaseKey".into(), s(MEMBERSHIP_KEY));
        membership.insert("entityType".into(), s(MEMBERSHIP_ENTITY));
        assert_eq!(from_item(&membership).unwrap(), None);
    }

    /// A multi-stream lease as KCL v3 writes it: the key `account:stream:epoch:shard`, plus
    /// `streamName` and `shardId`; lineage in shard ids. It reads as that lease and writes back
    /// the same attributes.
    #[test]
    fn multi_stream_rows_carry_their_stream_and_shard() {
        let row: Item = [
            ("leaseKey", s("123456789012:orders:1700000000:shardId-000000000002")),
            ("streamName", s("123456789012:orders:1700000000")),
            ("shardId", s("shardId-000000000002")),
            ("leaseOwner", s("kcl-worker-a")),
            ("leaseCounter", n(9)),
            ("checkpoint", s("TRIM_HORIZON")),
            ("checkpointSubSequenceNumber", n(0)),
            ("ownerSwitchesSinceCheckpoint", n(0)),
            ("parentShardId", ss_of(&["shardId-000000000000"])),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let lease = from_item(&row).unwrap().unwrap();
        assert_eq!(lease.stream(), Some("123456789012:orders:1700000000"));
        assert_eq!(lease.stream_shard_id(), ShardId::new("shardId-000000000002"));
        assert_eq!(
            lease.sibling_key(&lease.parent_shard_ids[0]),
            "123456789012:orders:1700000000:shardId-000000000000"
        );
        assert_eq!(to_item(&lease), row);
    }

    fn ss_of(ids: &[&str]) -> AttributeValue {
        AttributeValue::Ss(ids.iter().map(|id| (*id).to_owned()).collect())
    }

    /// Rows as KCL writes them (no `entityType`; numbers as N, shard ids as string sets, the
    /// hash range as two decimal strings) read as the leases they are, and those leases write
    /// back exactly the same attributes.
    #[test]
    fn rows_kcl_wrote_read_as_their_leases_and_write_back_unchanged() {
        let seq = "49590338271490256608559692540925702759324208523137515618";
        let child: Item = [
            ("leaseKey", s("shardId-000000000002")),
            ("leaseOwner", s("worker-a")),
            ("leaseCounter", n(5)),
            ("checkpoint", s(seq)),
            ("checkpointSubSequenceNumber", n(2)),
            ("ownerSwitchesSinceCheckpoint", n(1)),
            ("parentShardId", ss_of(&["shardId-000000000000"])),
            ("startingHashKey", s("0")),
            ("endingHashKey", s("170141183460469231731687303715884105727")),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let mut lease = Lease::for_shard(
            &ShardId::new("shardId-000000000002"),
            vec![ShardId::new("shardId-000000000000")],
            Some(HashKeyRange { start: 0, end: u128::MAX >> 1 }),
            Checkpoint::At(Position::new(SequenceNumber::parse(seq).unwrap(), 2)),
        );
        lease.owner = Some(WorkerId::new("worker-a"));
        lease.counter = 5;
        lease.owner_switches_since_checkpoint = 1;
        assert_eq!(from_item(&child).unwrap(), Some(lease.clone()));
        assert_eq!(to_item(&lease), child);

        // A closed parent with its children, a pending checkpoint and its state, no owner.
        let parent: Item = [
            ("leaseKey", s("shardId-000000000000")),
            ("leaseCounter", n(12)),
            ("checkpoint", s("SHARD_END")),
            ("checkpointSubSequenceNumber", n(0)),
            ("pendingCheckpoint", s(seq)),
            ("pendingCheckpointSubSequenceNumber", n(0)),
            ("pendingCheckpointState", AttributeValue::B(vec![1, 2, 3].into())),
            ("ownerSwitchesSinceCheckpoint", n(0)),
            ("childShardIds", ss_of(&["shardId-000000000002", "shardId-000000000003"])),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let mut lease = Lease::for_shard(&ShardId::new("shardId-000000000000"), vec![], None, Checkpoint::ShardEnd);
        lease.counter = 12;
        lease.pending_checkpoint = Some(Checkpoint::At(Position::new(SequenceNumber::parse(seq).unwrap(), 0)));
        lease.pending_checkpoint_state = Some(vec![1, 2, 3]);
        lease.child_shard_ids = vec![ShardId::new("shardId-000000000002"), ShardId::new("shardId-000000000003")];
        assert_eq!(from_item(&parent).unwrap(), Some(lease.clone()));
        assert_eq!(to_item(&lease), parent);
    }

    fn checkpoint() -> impl Strategy<Value = Checkpoint> {
        prop_oneof![
            Just(Checkpoint::TrimHorizon),
            Just(Checkpoint::Latest),
            Just(Checkpoint::AtTimestamp),
            Just(Checkpoint::ShardEnd),
            ("[1-9][0-9]{0,60}", any::<u64>())
                .prop_map(|(seq, sub)| Checkpoint::At(Position::new(SequenceNumber::parse(&seq).unwrap(), sub))),
        ]
    }

    /// Shard ids as a set holds them: sorted, without repeats.
    fn shard_ids() -> impl Strategy<Value = Vec<ShardId>> {
        proptest::collection::btree_set("shardId-[0-9]{12}", 0..3)
            .prop_map(|ids| ids.iter().map(ShardId::new).collect())
    }

    fn lease() -> impl Strategy<Value = Lease> {
        let worker = || proptest::option::of("[a-z0-9.-]{1,12}".prop_map(|w| WorkerId::new(w.as_str())));
        (
            ("[A-Za-z0-9_-]{1,24}", prop_oneof![Just(EntityType::Lease), Just(EntityType::Leader)], worker()),
            (any::<u64>(), checkpoint(), proptest::option::of(checkpoint())),
            (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)), any::<u64>()),
            (shard_ids(), shard_ids(), proptest::option::of((any::<u128>(), any::<u128>()))),
            (worker(), proptest::option::of(proptest::num::f64::NORMAL | proptest::num::f64::ZERO)),
        )
            .prop_map(
                |((key, entity, owner), (counter, checkpoint, pending), (state, switches), ids, more)| {
                    let (parents, children, range) = ids;
                    let (checkpoint_owner, throughput_kbps) = more;
                    Lease {
                        key,
                        entity,
                        owner,
                        counter,
                        checkpoint,
                        pending_checkpoint: pending,
                        pending_checkpoint_state: state,
                        owner_switches_since_checkpoint: switches,
                        parent_shard_ids: parents,
                        child_shard_ids: children,
                        hash_range: range.map(|(start, end)| HashKeyRange { start, end }),
                        checkpoint_owner,
                        throughput_kbps,
                    }
                },
            )
    }

    proptest! {
        /// Every lease and leader row reads back as what was written.
        #[test]
        fn every_lease_round_trips(lease in lease()) {
            prop_assert_eq!(from_item(&to_item(&lease)).unwrap(), Some(lease));
        }
    }
}
