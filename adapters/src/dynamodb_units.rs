//! What the lease table's rows weigh in DynamoDB and what a call on them costs, by DynamoDB's
//! published rules: an item's size is the sum of its attribute names' and values' sizes; a read
//! costs one read request unit per 4 KB read (rounded up; half of that eventually consistent,
//! which reads of a global secondary index always are), a write one write request unit per
//! 1 KB of the larger of the item before and after (rounded up), a failed conditional write
//! too. A Scan or Query is charged on the bytes it read in total, not per item. For the scale
//! benchmark's comparison of tributary's protocol with KCL's, on rows as this crate writes them.

use crate::kcl_lease_item::{attr, n, s, to_item, Item, MEMBERSHIP_ENTITY, MEMBERSHIP_KEY};
use aws_sdk_dynamodb::types::AttributeValue;
use proto::{Lease, Membership};
use std::collections::HashMap;

/// DynamoDB's size of an attribute value, in bytes.
fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(text) => text.len(),
        AttributeValue::N(number) => number_size(number),
        AttributeValue::B(blob) => blob.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Ns(set) => set.iter().map(|x| number_size(x)).sum(),
        AttributeValue::Bs(set) => set.iter().map(|b| b.as_ref().len()).sum(),
        // A list or map: 3 bytes, plus 1 per element, plus the elements (a map's with its names).
        AttributeValue::L(list) => 3 + list.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(map) => 3 + map.iter().map(|(k, e)| 1 + k.len() + value_size(e)).sum::<usize>(),
        _ => 0,
    }
}

/// A number: about one byte per two significant digits, plus one (at most 21).
fn number_size(number: &str) -> usize {
    let digits = number.trim_start_matches('-').replace('.', "");
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1);
    (significant.div_ceil(2) + 1).min(21)
}

/// An item's size: its attribute names and values.
fn item_size(item: &Item) -> usize {
    item.iter().map(|(name, value)| name.len() + value_size(value)).sum()
}

/// The size of a lease's row as the lease table stores it.
pub fn lease_bytes(lease: &Lease) -> usize {
    item_size(&to_item(lease))
}

/// The size of the membership row: these nodes' heartbeat entries, the leader, the counter.
pub fn membership_bytes(row: &Membership) -> usize {
    let entries: HashMap<String, AttributeValue> = row
        .workers
        .iter()
        .map(|w| {
            let entry = HashMap::from([
                ("counter".to_owned(), n(w.counter)),
                ("draining".to_owned(), AttributeValue::Bool(w.draining)),
            ]);
            (w.id.as_str().to_owned(), AttributeValue::M(entry))
        })
        .collect();
    let mut item = Item::from([
        (attr::KEY.to_owned(), s(MEMBERSHIP_KEY)),
        (attr::ENTITY.to_owned(), s(MEMBERSHIP_ENTITY)),
        (attr::WORKERS.to_owned(), AttributeValue::M(entries)),
        (attr::CHANGES.to_owned(), n(row.changes)),
    ]);
    if let Some(leader) = &row.leader {
        item.insert(attr::LEADER.to_owned(), s(leader.as_str()));
    }
    item_size(&item)
}

/// Read request units of reading `bytes` in one call (GetItem, or a whole Scan or Query).
pub fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// Write request units of a write to an item of `bytes` (the larger of before and after).
pub fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Checkpoint, Position, SequenceNumber, ShardId, WorkerId, WorkerRow};

    /// Sizes by DynamoDB's rules, counted by hand.
    #[test]
    fn sizes_follow_dynamodb_rules() {
        assert_eq!(number_size("0"), 2);
        assert_eq!(number_size("7"), 2);
        assert_eq!(number_size("123"), 3);
        assert_eq!(number_size("1000"), 2, "trailing zeros are not significant");
        assert_eq!(number_size("-12.5"), 3);
        let item = Item::from([
            ("ab".to_owned(), s("xyz")),
            ("n".to_owned(), n(42)),
            ("m".to_owned(), AttributeValue::M(HashMap::from([("k".to_owned(), AttributeValue::Bool(true))]))),
        ]);
        // "ab"+"xyz" = 5; "n"+2 = 3; "m" + (3 + 1 + "k" + 1) = 7.
        assert_eq!(item_size(&item), 15);
    }

    #[test]
    fn a_lease_row_and_the_membership_row_weigh_what_they_hold() {
        let mut lease = Lease::for_shard(&ShardId::new("shardId-000000000007"), vec![], None, Checkpoint::TrimHorizon);
        let unowned = lease_bytes(&lease);
        // leaseKey + its value, leaseCounter, checkpoint (TRIM_HORIZON), sub-sequence number,
        // ownerSwitchesSinceCheckpoint.
        assert_eq!(unowned, 8 + 20 + 12 + 2 + 10 + 12 + 27 + 2 + 28 + 2);
        lease.owner = Some(WorkerId::new("node-a"));
        lease.checkpoint = Checkpoint::At(Position::new(SequenceNumber::from_u128(49_000_000_000_000_000_000), 0));
        assert_eq!(lease_bytes(&lease), unowned + "leaseOwner".len() + 6 + (20 - "TRIM_HORIZON".len()));
        let workers: Vec<WorkerRow> = (0..64)
            .map(|i| WorkerRow { id: WorkerId::new(format!("node-{i:02}")), counter: 100, draining: false })
            .collect();
        let row = |workers: &[WorkerRow]| Membership { workers: workers.to_vec(), leader: None, changes: 0 };
        let one = membership_bytes(&row(&workers[..1]));
        let all = membership_bytes(&row(&workers));
        let led = Membership { leader: Some(WorkerId::new("node-07")), changes: 123, ..row(&workers) };
        // "leader" + "node-07"; "changes" + 123 (3 bytes) instead of 0 (2).
        assert_eq!(membership_bytes(&led) - all, 6 + 7 + 1);
        // Each entry: 1 + "node-00" + (3 + 1 + "counter" + 2 + 1 + "draining" + 1).
        assert_eq!(all - one, 63 * (1 + 7 + 3 + 1 + 7 + 2 + 1 + 8 + 1));
        assert_eq!((read_units(all, true), write_units(all)), (1.0, 3.0));
        assert_eq!((read_units(4097, false), write_units(1024)), (1.0, 1.0));
    }
}
