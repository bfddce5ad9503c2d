//! The `LeaseTable` conformance suite: the same assertions against the in-memory table and the
//! DynamoDB adapter on the local stack (moto, started on 127.0.0.1 by the test harness). Plus,
//! for DynamoDB only, a lease table written the way KCL writes it is read and resumed.

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use aws_sdk_dynamodb::types::AttributeValue;
use proto::memory::MemoryLeaseTable;
use proto::{
    Checkpoint, Expect, HashKeyRange, Lease, LeaseChange, LeaseError, LeaseProtocol, LeaseTable, Membership, Position,
    ProtocolError, RetryPolicy, SequenceNumber, ShardId, WorkerId,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use testkit::local_stack::{emulator, Emulator, Service};

fn at(seq: &str, sub: u64) -> Checkpoint {
    Checkpoint::At(Position::new(SequenceNumber::parse(seq).unwrap(), sub))
}

fn worker(name: &str) -> WorkerId {
    WorkerId::new(name)
}

fn lease(shard: &str, parents: &[&str]) -> Lease {
    Lease::for_shard(
        &ShardId::new(shard),
        parents.iter().map(|p| ShardId::new(*p)).collect(),
        Some(HashKeyRange { start: 10, end: u128::MAX - 10 }),
        Checkpoint::TrimHorizon,
    )
}

/// `owned_by` reads an index that may lag: ask until it agrees (bounded).
async fn owned(table: &dyn LeaseTable, owner: &str, want: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for _ in 0..50 {
        keys = table.owned_by(&worker(owner)).await.unwrap().into_iter().map(|l| l.key).collect::<Vec<_>>();
        keys.sort();
        if keys.len() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keys
}

/// Every assertion of the port, on an empty table.
async fn conformance(table: &dyn LeaseTable) {
    // create: only once per key.
    let a = lease("shardId-000000000001", &[]);
    let b = lease("shardId-000000000002", &["shardId-000000000000", "shardId-000000000001"]);
    table.create(&a).await.unwrap();
    table.create(&b).await.unwrap();
    assert_eq!(table.create(&a).await, Err(LeaseError::ConditionFailed));
    assert_eq!(table.get(&a.key).await.unwrap().as_ref(), Some(&a));
    assert_eq!(table.get(&b.key).await.unwrap().as_ref(), Some(&b), "parents and hash range read back");
    assert_eq!(table.get("shardId-missing").await.unwrap(), None);

    // update: conditional on counter and owner; returns the row as written.
    let take = LeaseChange { owner: Some(Some(worker("node-a"))), ..LeaseChange::default() };
    let taken = table.update(&a.key, &Expect::unchanged(&a), &take).await.unwrap();
    assert_eq!(
        (taken.counter, taken.owner.clone(), taken.owner_switches_since_checkpoint),
        (1, Some(worker("node-a")), 1)
    );
    assert_eq!(table.get(&a.key).await.unwrap().as_ref(), Some(&taken));
    assert_eq!(
        table.update(&a.key, &Expect::unchanged(&a), &take).await,
        Err(LeaseError::ConditionFailed),
        "stale counter"
    );
    let wrong_owner = Expect { owner: Some(Some(worker("node-b"))), ..Expect::default() };
    assert_eq!(table.update(&a.key, &wrong_owner, &take).await, Err(LeaseError::ConditionFailed));
    let unowned = Expect { owner: Some(None), ..Expect::default() };
    assert_eq!(table.update(&a.key, &unowned, &take).await, Err(LeaseError::ConditionFailed));
    assert_eq!(table.update("shardId-missing", &Expect::default(), &take).await, Err(LeaseError::ConditionFailed));

    // checkpoint: sub-sequence kept, owner switches reset.
    let cp = LeaseChange {
        checkpoint: Some(at("49590338271490256608559692538361571095921575989136588898", 7)),
        ..LeaseChange::default()
    };
    let checkpointed = table.update(&a.key, &Expect::unchanged(&taken), &cp).await.unwrap();
    assert_eq!(checkpointed.checkpoint, cp.checkpoint.clone().unwrap());
    assert_eq!((checkpointed.counter, checkpointed.owner_switches_since_checkpoint), (2, 0));
    // A stale counter fails on its own: same owner, the counter one behind (a node that missed
    // its own write, or a second writer under the same id), alone and with the owner expected.
    assert_eq!(taken.owner, checkpointed.owner, "the owner condition holds, only the counter is stale");
    assert_eq!(
        table.update(&a.key, &Expect::unchanged(&taken), &cp).await,
        Err(LeaseError::ConditionFailed),
        "stale counter, same owner"
    );
    let counter_only = Expect { counter: Some(taken.counter), ..Expect::default() };
    assert_eq!(table.update(&a.key, &counter_only, &cp).await, Err(LeaseError::ConditionFailed));
    let ahead = Expect { counter: Some(checkpointed.counter + 1), ..Expect::default() };
    assert_eq!(table.update(&a.key, &ahead, &cp).await, Err(LeaseError::ConditionFailed), "a counter ahead");
    assert_eq!(table.get(&a.key).await.unwrap().as_ref(), Some(&checkpointed), "no failed write applied");

    // handoff attributes: checkpointOwner set and expected, throughput, children, owner removed.
    let handoff = LeaseChange {
        owner: Some(Some(worker("node-b"))),
        checkpoint_owner: Some(Some(worker("node-a"))),
        throughput_kbps: Some(42.5),
        ..LeaseChange::default()
    };
    let handed = table
        .update(&a.key, &Expect { checkpoint_owner: Some(None), ..Expect::unchanged(&checkpointed) }, &handoff)
        .await
        .unwrap();
    assert_eq!(
        (handed.owner.clone(), handed.checkpoint_owner.clone()),
        (Some(worker("node-b")), Some(worker("node-a")))
    );
    assert_eq!((handed.throughput_kbps, handed.owner_switches_since_checkpoint), (Some(42.5), 1));
    let no_cpo = Expect { checkpoint_owner: Some(None), ..Expect::default() };
    assert_eq!(table.update(&a.key, &no_cpo, &LeaseChange::default()).await, Err(LeaseError::ConditionFailed));
    let end = LeaseChange {
        checkpoint: Some(Checkpoint::ShardEnd),
        checkpoint_owner: Some(None),
        child_shard_ids: Some(vec![ShardId::new("shardId-000000000005"), ShardId::new("shardId-000000000006")]),
        owner: Some(None),
        ..LeaseChange::default()
    };
    let ended = table.update(&a.key, &Expect::unchanged(&handed), &end).await.unwrap();
    assert!(ended.is_finished());
    assert_eq!((ended.owner.clone(), ended.checkpoint_owner.clone()), (None, None));
    assert_eq!(ended.child_shard_ids.len(), 2);
    assert_eq!(table.get(&a.key).await.unwrap().as_ref(), Some(&ended));

    // owned_by and scan.
    let b_taken = table.update(&b.key, &Expect::unchanged(&b), &take).await.unwrap();
    assert_eq!(owned(table, "node-a", 1).await, vec![b.key.clone()]);
    assert_eq!(owned(table, "node-b", 0).await, Vec::<String>::new());
    let leader = Lease::leader_lock("__leader", &worker("node-a"));
    table.create(&leader).await.unwrap();
    assert_eq!(table.get("__leader").await.unwrap().as_ref(), Some(&leader));
    let mut keys: Vec<String> = table.scan().await.unwrap().into_iter().map(|l| l.key).collect();
    keys.sort();
    assert_eq!(keys, vec![a.key.clone(), b.key.clone()], "scan lists leases only");

    // delete: conditional on counter and owner, each on its own.
    assert_eq!(table.delete(&b.key, &Expect::unchanged(&b)).await, Err(LeaseError::ConditionFailed));
    let b_stale =
        Expect { counter: Some(b_taken.counter - 1), owner: Some(b_taken.owner.clone()), ..Expect::default() };
    assert_eq!(table.delete(&b.key, &b_stale).await, Err(LeaseError::ConditionFailed), "stale counter, same owner");
    let b_other = Expect { counter: Some(b_taken.counter), owner: Some(Some(worker("node-b"))), ..Expect::default() };
    assert_eq!(table.delete(&b.key, &b_other).await, Err(LeaseError::ConditionFailed), "right counter, other owner");
    assert_eq!(table.get(&b.key).await.unwrap().as_ref(), Some(&b_taken));
    table.delete(&b.key, &Expect::unchanged(&b_taken)).await.unwrap();
    assert_eq!(table.get(&b.key).await.unwrap(), None);
    assert_eq!(table.delete(&b.key, &Expect::default()).await, Err(LeaseError::ConditionFailed));

    // heartbeats: each returns the membership row as written.
    let (na, nb) = (worker("node-a"), worker("node-b:10.0.0.7"));
    let entry = |m: Membership, who: &WorkerId| m.row(who).map(|r| (r.counter, r.draining));
    assert_eq!(entry(table.heartbeat(&na, None, false).await.unwrap(), &na), Some((0, false)));
    assert_eq!(table.heartbeat(&na, None, false).await, Err(LeaseError::ConditionFailed), "exists already");
    assert_eq!(entry(table.heartbeat(&na, Some(0), false).await.unwrap(), &na), Some((1, false)));
    assert_eq!(table.heartbeat(&na, Some(0), true).await, Err(LeaseError::ConditionFailed), "stale counter");
    assert_eq!(table.heartbeat(&nb, Some(0), false).await, Err(LeaseError::ConditionFailed), "no row yet");
    table.heartbeat(&nb, None, false).await.unwrap();
    let written = table.heartbeat(&na, Some(1), true).await.unwrap();
    assert_eq!((entry(written.clone(), &na), entry(written, &nb)), (Some((2, true)), Some((0, false))));
    let rows = table.membership(true).await.unwrap().workers;
    let seen: Vec<(String, u64, bool)> = rows.iter().map(|r| (r.id.to_string(), r.counter, r.draining)).collect();
    assert_eq!(seen, vec![("node-a".to_owned(), 2, true), ("node-b:10.0.0.7".to_owned(), 0, false)], "by id");
    assert_eq!(table.remove_worker(&na, 1).await, Err(LeaseError::ConditionFailed));
    table.remove_worker(&na, 2).await.unwrap();
    assert_eq!(table.membership(true).await.unwrap().workers.len(), 1);
    assert_eq!(
        entry(table.heartbeat(&na, None, false).await.unwrap(), &na),
        Some((0, false)),
        "a removed node can come back"
    );

    // leadership: claimed by a node with a heartbeat, only as observed; kept by heartbeats;
    // given up by its holder only.
    let refused = Err(LeaseError::ConditionFailed);
    let leader = |m: Result<Membership, LeaseError>| m.map(|m| m.leader);
    assert_eq!(leader(table.claim_leadership(&worker("node-c"), None).await), refused, "no heartbeat entry");
    assert_eq!(leader(table.claim_leadership(&na, None).await), Ok(Some(na.clone())));
    assert_eq!(leader(table.claim_leadership(&nb, None).await), refused, "somebody leads");
    assert_eq!(leader(table.heartbeat(&na, Some(0), false).await), Ok(Some(na.clone())));
    assert_eq!(leader(table.claim_leadership(&nb, Some((&na, Some(0)))).await), refused, "its heartbeat moved");
    assert_eq!(leader(table.claim_leadership(&nb, Some((&nb, Some(0)))).await), refused, "not the leader");
    assert_eq!(leader(table.claim_leadership(&nb, Some((&na, Some(1)))).await), Ok(Some(nb.clone())));
    assert_eq!(leader(table.heartbeat(&na, Some(1), false).await), Ok(Some(nb.clone())), "a heartbeat shows who leads");
    assert_eq!(table.resign_leadership(&na).await, Err(LeaseError::ConditionFailed));
    let changes = table.membership(true).await.unwrap().changes;
    table.resign_leadership(&nb).await.unwrap();
    let after = table.membership(true).await.unwrap();
    assert_eq!((after.leader, after.changes), (None, changes + 1), "resigning counts a change");
    table.announce_change().await.unwrap();
    assert_eq!(table.membership(false).await.unwrap().changes, changes + 2);
    // A leader whose entry is gone (declared dead and removed) is claimed from as such.
    table.claim_leadership(&nb, None).await.unwrap();
    table.remove_worker(&nb, 0).await.unwrap();
    assert_eq!(leader(table.claim_leadership(&na, Some((&nb, Some(0)))).await), refused, "its entry is gone");
    assert_eq!(leader(table.claim_leadership(&na, Some((&nb, None))).await), Ok(Some(na.clone())));
    let last = table.membership(true).await.unwrap();
    assert_eq!((last.leader, last.changes, last.workers.len()), (Some(na.clone()), changes + 2, 1));

    // The protocol on top: a checkpoint can't go backwards, a lost lease is seen as lost.
    let retry = RetryPolicy::default();
    let protocol = LeaseProtocol::new(table, &retry);
    let c = lease("shardId-000000000003", &[]);
    assert!(protocol.create(&c).await.unwrap());
    assert!(!protocol.create(&c).await.unwrap());
    let mine = table.update(&c.key, &Expect::unchanged(&c), &take).await.unwrap();
    let after = protocol.checkpoint(&mine, &worker("node-a"), at("200", 0)).await.unwrap();
    let back = protocol.checkpoint(&after, &worker("node-a"), at("100", 0)).await;
    assert!(matches!(back, Err(ProtocolError::Backward { .. })), "{back:?}");
    let lost = protocol.checkpoint(&after, &worker("node-b"), at("300", 0)).await;
    assert!(matches!(lost, Err(ProtocolError::Lost { .. })), "{lost:?}");
}

#[tokio::test]
async fn memory_lease_table_conforms() {
    conformance(&MemoryLeaseTable::new()).await;
}

static TABLES: AtomicU32 = AtomicU32::new(0);

async fn dynamo_table(stack: &Emulator) -> DynamoLeaseTable {
    let name = format!("leases-{}-{}", std::process::id(), TABLES.fetch_add(1, Ordering::Relaxed));
    let table = DynamoLeaseTable::new(&stack.sdk_config(), name);
    table.ensure_table().await.unwrap();
    table
}

#[tokio::test]
async fn dynamodb_lease_table_conforms() {
    let stack = emulator(Service::Dynamo).unwrap();
    let table = dynamo_table(&stack).await;
    table.ensure_table().await.unwrap(); // idempotent
    conformance(&table).await;
}

/// A lease table KCL created (the lease key alone, no owner index): tributary adopts it as it
/// is, answering "leases owned by" with a scan, and the whole suite holds on it.
#[tokio::test]
async fn a_kcl_table_without_the_owner_index_conforms() {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let stack = emulator(Service::Dynamo).unwrap();
    let name = format!("kcl-leases-{}-{}", std::process::id(), TABLES.fetch_add(1, Ordering::Relaxed));
    let client = aws_sdk_dynamodb::Client::new(&stack.sdk_config());
    client
        .create_table()
        .table_name(&name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("leaseKey").key_type(KeyType::Hash).build().unwrap())
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    let table = DynamoLeaseTable::new(&stack.sdk_config(), name.clone());
    table.ensure_table().await.unwrap();
    let described = client.describe_table().table_name(&name).send().await.unwrap();
    assert!(described.table().unwrap().global_secondary_indexes().is_empty(), "the table is left as KCL made it");
    conformance(&table).await;
}

/// A table with rows written the way KCL writes them (no entityType, KCL's attribute names and
/// types, a checkpoint inside an aggregated record) is read as leases and resumed.
#[tokio::test]
async fn a_kcl_lease_table_is_read_and_resumed() {
    let stack = emulator(Service::Dynamo).unwrap();
    let table = dynamo_table(&stack).await;
    let client = aws_sdk_dynamodb::Client::new(&stack.sdk_config());
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: u64| AttributeValue::N(v.to_string());
    let seq = "49590338271490256608559692538361571095921575989136588898";
    client
        .put_item()
        .table_name(table.table_name())
        .item("leaseKey", s("shardId-000000000007"))
        .item("leaseOwner", s("kcl-worker-1"))
        .item("leaseCounter", n(1234))
        .item("checkpoint", s(seq))
        .item("checkpointSubSequenceNumber", n(2))
        .item("ownerSwitchesSinceCheckpoint", n(0))
        .item("parentShardId", AttributeValue::Ss(vec!["shardId-000000000003".into()]))
        .item("startingHashKey", s("0"))
        .item("endingHashKey", s("170141183460469231731687303715884105727"))
        .send()
        .await
        .unwrap();
    let leases = table.scan().await.unwrap();
    assert_eq!(leases.len(), 1);
    let l = &leases[0];
    assert_eq!((l.owner.as_ref().map(|o| o.to_string()), l.counter), (Some("kcl-worker-1".into()), 1234));
    assert_eq!(l.checkpoint, at(seq, 2));
    assert_eq!(l.parent_shard_ids, vec![ShardId::new("shardId-000000000003")]);
    assert_eq!(l.hash_range.unwrap().end, u128::MAX / 2);
    // Resume: take it over from the (dead) KCL worker, checkpoint further.
    let retry = RetryPolicy::default();
    let protocol = LeaseProtocol::new(&table, &retry);
    let take = LeaseChange { owner: Some(Some(worker("tributary-1"))), ..LeaseChange::default() };
    let mine = table.update(&l.key, &Expect::unchanged(l), &take).await.unwrap();
    let next = protocol.checkpoint(&mine, &worker("tributary-1"), at(seq, 3)).await.unwrap();
    assert_eq!((next.counter, next.checkpoint.clone()), (1236, at(seq, 3)));
}

/// Every row of the lease table itself, as DynamoDB holds it.
async fn raw_rows(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<std::collections::HashMap<String, AttributeValue>> {
    client.scan().table_name(table).send().await.unwrap().items.unwrap_or_default()
}

/// The lease table holds leases only, as a KCL application sharing it expects: the leader lock
/// and the heartbeats are in `<table>-TributaryState`; the rows earlier versions kept among the
/// leases are removed at start (and only they: a lease is never touched).
#[tokio::test]
async fn the_lease_table_holds_only_leases() {
    let stack = emulator(Service::Dynamo).unwrap();
    let table = dynamo_table(&stack).await;
    let client = aws_sdk_dynamodb::Client::new(&stack.sdk_config());
    let s = |v: &str| AttributeValue::S(v.to_owned());
    // What an earlier version left in the lease table.
    for (key, entity) in [("__tributary_membership", "tributary-membership"), ("tributary:leader", "tributary-leader")]
    {
        let put = client.put_item().table_name(table.table_name()).item("leaseKey", s(key));
        put.item("entityType", s(entity)).item("leaseCounter", AttributeValue::N("7".into())).send().await.unwrap();
    }
    table.ensure_table().await.unwrap();
    assert!(raw_rows(&client, table.table_name()).await.is_empty(), "the earlier version's rows are gone");

    let (a, b) = (worker("node-a"), worker("node-b"));
    table.create(&lease("shardId-000000000000", &[])).await.unwrap();
    table.create(&Lease::leader_lock("tributary:leader", &a)).await.unwrap();
    table.heartbeat(&a, None, false).await.unwrap();
    table.heartbeat(&b, None, false).await.unwrap();
    table.heartbeat(&a, Some(0), false).await.unwrap();
    let leader = table.get("tributary:leader").await.unwrap().unwrap();
    assert_eq!(leader.owner.as_ref(), Some(&a));
    let renewed = table.update("tributary:leader", &Expect::unchanged(&leader), &LeaseChange::default()).await.unwrap();
    assert_eq!(renewed.counter, leader.counter + 1);
    let counters: Vec<u64> = table.membership(true).await.unwrap().workers.iter().map(|w| w.counter).collect();
    assert_eq!(counters, [1, 0]);

    let rows = raw_rows(&client, table.table_name()).await;
    let keys: Vec<&str> = rows.iter().map(|r| r["leaseKey"].as_s().unwrap().as_str()).collect();
    assert_eq!(keys, ["shardId-000000000000"], "only the lease");
    assert!(rows.iter().all(|r| !r.contains_key("entityType")), "a lease row as KCL writes it");
    let state = raw_rows(&client, table.state_table_name()).await;
    let mut state_keys: Vec<&str> = state.iter().map(|r| r["leaseKey"].as_s().unwrap().as_str()).collect();
    state_keys.sort();
    assert_eq!(state_keys, ["tributary:leader", "tributary:membership"]);
    assert_eq!(table.scan().await.unwrap().len(), 1);
    table.delete("tributary:leader", &Expect::unchanged(&renewed)).await.unwrap();
    assert!(table.get("tributary:leader").await.unwrap().is_none());
}
