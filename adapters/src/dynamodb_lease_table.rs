//! The lease table on DynamoDB, in KCL's schema: hash key `leaseKey` (S), KCL's attribute names
//! and types, on-demand billing, GSI `LeaseOwnerToLeaseKeyIndex` (leaseOwner, leaseKey). A
//! table KCL created reads as ours: its rows carry no `entityType`, and so are leases.
//!
//! Besides the leases the table holds two rows of tributary's own, each marked by `entityType`:
//! the leader lock (a lease-shaped row) and the membership row, whose `workers` map holds every
//! node's heartbeat counter, so reading all heartbeats is one strongly consistent GetItem, not a
//! scan, and a heartbeat is one conditional UpdateItem of the node's own map entry.
//!
//! Every write is conditional. Errors are classified: a refused condition is `ConditionFailed`;
//! a write without an answer (or a 5xx) is `Ambiguous`, and the lease protocol settles it by
//! re-reading the row, so a write that landed is never taken for a lost lease.

use crate::aws::{classify, Failure};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ReturnValue, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use proto::{
    Checkpoint, EntityType, Expect, HashKeyRange, Lease, LeaseChange, LeaseError, LeaseTable, ShardId, WorkerId,
    WorkerRow,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

type Item = HashMap<String, AttributeValue>;

pub const OWNER_INDEX: &str = "LeaseOwnerToLeaseKeyIndex";
/// The key of the membership row (heartbeats).
pub const MEMBERSHIP_KEY: &str = "__tributary_membership";
const LEADER_ENTITY: &str = "tributary-leader";
const MEMBERSHIP_ENTITY: &str = "tributary-membership";

mod attr {
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
    pub const WORKERS: &str = "workers";
}

/// The lease table of one application.
pub struct DynamoLeaseTable {
    client: Client,
    table: String,
    /// Whether the table has the owner index (tables made by old KCL versions may not).
    owner_index: AtomicBool,
    calls: Calls,
}

/// Calls made to the table, by kind (each page of a scan or query counts as one read).
#[derive(Default)]
struct Calls {
    reads: AtomicU64,
    writes: AtomicU64,
}

/// What a `DynamoLeaseTable` has cost so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub reads: u64,
    pub writes: u64,
}

enum Call {
    Read,
    Write,
}

fn lease_error(f: Failure, call: Call) -> LeaseError {
    match (f.code(), call) {
        ("ConditionalCheckFailedException", _) => LeaseError::ConditionFailed,
        ("TransactionConflictException", _) => LeaseError::Throttled,
        _ if f.is_throttle() => LeaseError::Throttled,
        (_, Call::Write) if f.is_server_fault() || matches!(f, Failure::NoAnswer(_)) => {
            LeaseError::Ambiguous(f.to_string())
        }
        _ if f.is_server_fault() => LeaseError::Unavailable(f.to_string()),
        _ => match f {
            Failure::NoAnswer(m) | Failure::NotSent(m) => LeaseError::Unavailable(m),
            other => LeaseError::Fatal(other.to_string()),
        },
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn bad(key: &str, what: &str) -> LeaseError {
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
fn from_item(item: &Item) -> Result<Option<Lease>, LeaseError> {
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

fn to_item(lease: &Lease) -> Item {
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

fn ss(ids: &[ShardId]) -> AttributeValue {
    let mut v: Vec<String> = ids.iter().map(|s| s.as_str().to_owned()).collect();
    v.sort();
    v.dedup();
    AttributeValue::Ss(v)
}

/// Builds one conditional write: expression text with `#names` and `:values`.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: Item,
    condition: Vec<String>,
    set: Vec<String>,
    remove: Vec<String>,
}

impl Expr {
    fn name(&mut self, attribute: &str) -> String {
        let alias = format!("#{attribute}");
        self.names.insert(alias.clone(), attribute.to_owned());
        alias
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let alias = format!(":v{}", self.values.len());
        self.values.insert(alias.clone(), v);
        alias
    }

    /// `attribute = value`, or `attribute_not_exists(attribute)` for `None`.
    fn expect_optional(&mut self, attribute: &str, value: Option<&str>) {
        let name = self.name(attribute);
        let clause = match value {
            Some(v) => format!("{name} = {}", self.value(s(v))),
            None => format!("attribute_not_exists({name})"),
        };
        self.condition.push(clause);
    }

    fn set(&mut self, attribute: &str, value: AttributeValue) {
        let (name, value) = (self.name(attribute), self.value(value));
        self.set.push(format!("{name} = {value}"));
    }

    fn remove(&mut self, attribute: &str) {
        let name = self.name(attribute);
        self.remove.push(name);
    }

    fn expect(&mut self, expect: &Expect) {
        let key = self.name(attr::KEY);
        self.condition.push(format!("attribute_exists({key})"));
        if let Some(c) = expect.counter {
            let (name, value) = (self.name(attr::COUNTER), self.value(n(c)));
            self.condition.push(format!("{name} = {value}"));
        }
        if let Some(o) = &expect.owner {
            self.expect_optional(attr::OWNER, o.as_ref().map(WorkerId::as_str));
        }
        if let Some(o) = &expect.checkpoint_owner {
            self.expect_optional(attr::CHECKPOINT_OWNER, o.as_ref().map(WorkerId::as_str));
        }
    }

    fn update_text(&self) -> String {
        let mut text = String::new();
        if !self.set.is_empty() {
            text.push_str("SET ");
            text.push_str(&self.set.join(", "));
        }
        if !self.remove.is_empty() {
            text.push_str(" REMOVE ");
            text.push_str(&self.remove.join(", "));
        }
        text
    }

    fn condition_text(&self) -> String {
        self.condition.join(" AND ")
    }
}

impl DynamoLeaseTable {
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::with_client(Client::new(config), table.into())
    }

    fn with_client(client: Client, table: String) -> Self {
        Self { client, table, owner_index: AtomicBool::new(true), calls: Calls::default() }
    }

    /// Bounds each call attempt by `attempt` (a node passes a third of its failover time): a
    /// heartbeat or renewal that hangs for the SDK's general 20 s would outlive the lease it is
    /// meant to keep; one that gives up early is retried, or settled by a re-read if it was a
    /// write.
    pub fn with_attempt_timeout(config: &aws_config::SdkConfig, table: impl Into<String>, attempt: Duration) -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(attempt.min(Duration::from_secs(3)))
            .operation_attempt_timeout(attempt)
            .build();
        let client_config = aws_sdk_dynamodb::config::Builder::from(config).timeout_config(timeouts).build();
        Self::with_client(Client::from_conf(client_config), table.into())
    }

    pub fn call_counts(&self) -> CallCounts {
        CallCounts {
            reads: self.calls.reads.load(Ordering::Relaxed),
            writes: self.calls.writes.load(Ordering::Relaxed),
        }
    }

    fn read_call(&self) {
        self.calls.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn write_call(&self) {
        self.calls.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// Creates the table if it does not exist (on-demand billing, the owner index), waits until
    /// it is active, learns whether it has the owner index, and creates the membership row.
    pub async fn ensure_table(&self) -> Result<(), LeaseError> {
        let definitions = [attr::KEY, attr::OWNER].map(|a| {
            AttributeDefinition::builder()
                .attribute_name(a)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type set")
        });
        let key = |a: &str, t: KeyType| KeySchemaElement::builder().attribute_name(a).key_type(t).build().expect("set");
        let index = GlobalSecondaryIndex::builder()
            .index_name(OWNER_INDEX)
            .key_schema(key(attr::OWNER, KeyType::Hash))
            .key_schema(key(attr::KEY, KeyType::Range))
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .expect("index fields set");
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .set_attribute_definitions(Some(definitions.to_vec()))
            .key_schema(key(attr::KEY, KeyType::Hash))
            .global_secondary_indexes(index)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        if let Err(e) = created {
            let f = classify(&e);
            if f.code() != "ResourceInUseException" {
                return Err(lease_error(f, Call::Read));
            }
        }
        for _ in 0..600 {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| lease_error(classify(&e), Call::Read))?;
            let table = out.table().ok_or_else(|| LeaseError::Fatal("describe_table returned no table".into()))?;
            if table.table_status() == Some(&TableStatus::Active) {
                let has_index = table.global_secondary_indexes().iter().any(|i| i.index_name() == Some(OWNER_INDEX));
                self.owner_index.store(has_index, Ordering::Relaxed);
                return self.ensure_membership().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LeaseError::Unavailable(format!("table {} not active after a minute", self.table)))
    }

    async fn ensure_membership(&self) -> Result<(), LeaseError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(attr::KEY, s(MEMBERSHIP_KEY))
            .item(attr::ENTITY, s(MEMBERSHIP_ENTITY))
            .item(attr::WORKERS, AttributeValue::M(HashMap::new()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", attr::KEY)
            .send()
            .await;
        match result.map_err(|e| lease_error(classify(&e), Call::Write)) {
            Ok(_) | Err(LeaseError::ConditionFailed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get_item(&self, key: &str) -> Result<Option<Item>, LeaseError> {
        self.read_call();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::KEY, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| lease_error(classify(&e), Call::Read))?;
        Ok(out.item)
    }

    async fn scan_items(&self) -> Result<Vec<Item>, LeaseError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            self.read_call();
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| lease_error(classify(&e), Call::Read))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// A heartbeat write on the membership row; creates that row once if it is missing.
    async fn update_membership(&self, expr: &Expr) -> Result<Item, LeaseError> {
        for attempt in 0..2 {
            self.write_call();
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(attr::KEY, s(MEMBERSHIP_KEY))
                .update_expression(expr.update_text())
                .condition_expression(expr.condition_text())
                .set_expression_attribute_names(Some(expr.names.clone()))
                .set_expression_attribute_values((!expr.values.is_empty()).then(|| expr.values.clone()))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            match result {
                Ok(out) => return Ok(out.attributes.unwrap_or_default()),
                Err(e) => {
                    let f = classify(&e);
                    // The row (or its map) is missing: the document path is invalid.
                    if attempt == 0 && f.code() == "ValidationException" {
                        self.ensure_membership().await?;
                        continue;
                    }
                    return Err(lease_error(f, Call::Write));
                }
            }
        }
        unreachable!("the loop returns")
    }
}

fn worker_row(id: &WorkerId, entry: &AttributeValue) -> Option<WorkerRow> {
    let m = entry.as_m().ok()?;
    Some(WorkerRow {
        id: id.clone(),
        counter: m.get("counter")?.as_n().ok()?.parse().ok()?,
        draining: m.get("draining").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
    })
}

#[async_trait]
impl LeaseTable for DynamoLeaseTable {
    async fn create(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.write_call();
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(lease)))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", attr::KEY)
            .send()
            .await
            .map_err(|e| lease_error(classify(&e), Call::Write))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        match self.get_item(key).await? {
            Some(item) => from_item(&item),
            None => Ok(None),
        }
    }

    async fn scan(&self) -> Result<Vec<Lease>, LeaseError> {
        let mut leases = Vec::new();
        for item in self.scan_items().await? {
            if let Some(lease) = from_item(&item)? {
                if lease.entity == EntityType::Lease {
                    leases.push(lease);
                }
            }
        }
        Ok(leases)
    }

    async fn owned_by(&self, owner: &WorkerId) -> Result<Vec<Lease>, LeaseError> {
        if !self.owner_index.load(Ordering::Relaxed) {
            let all = self.scan().await?;
            return Ok(all.into_iter().filter(|l| l.is_owned_by(owner)).collect());
        }
        let mut leases = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            self.read_call();
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(OWNER_INDEX)
                .key_condition_expression("#o = :o")
                .expression_attribute_names("#o", attr::OWNER)
                .expression_attribute_values(":o", s(owner.as_str()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| lease_error(classify(&e), Call::Read))?;
            for item in out.items.unwrap_or_default() {
                if let Some(lease) = from_item(&item)? {
                    if lease.entity == EntityType::Lease {
                        leases.push(lease);
                    }
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(leases),
            }
        }
    }

    async fn update(&self, key: &str, expect: &Expect, change: &LeaseChange) -> Result<Lease, LeaseError> {
        let mut e = Expr::default();
        e.expect(expect);
        let (counter, zero, one) = (e.name(attr::COUNTER), e.value(n(0)), e.value(n(1)));
        e.set.push(format!("{counter} = if_not_exists({counter}, {zero}) + {one}"));
        if let Some(owner) = &change.owner {
            match owner {
                Some(o) => e.set(attr::OWNER, s(o.as_str())),
                None => e.remove(attr::OWNER),
            }
            // Counted unless the condition pins the owner to the same one (a new checkpoint
            // resets the count below).
            let same = expect.owner.as_ref() == Some(owner);
            if !same && change.checkpoint.is_none() {
                let switches = e.name(attr::SWITCHES);
                e.set.push(format!("{switches} = if_not_exists({switches}, {zero}) + {one}"));
            }
        }
        if let Some(cp) = &change.checkpoint {
            e.set(attr::CHECKPOINT, s(cp.as_attribute()));
            e.set(attr::CHECKPOINT_SUB, n(cp.sub_sequence()));
            e.set(attr::SWITCHES, n(0));
            for a in [attr::PENDING, attr::PENDING_SUB, attr::PENDING_STATE] {
                e.remove(a);
            }
        }
        if let Some(cpo) = &change.checkpoint_owner {
            match cpo {
                Some(o) => e.set(attr::CHECKPOINT_OWNER, s(o.as_str())),
                None => e.remove(attr::CHECKPOINT_OWNER),
            }
        }
        if let Some(children) = &change.child_shard_ids {
            if children.is_empty() {
                e.remove(attr::CHILDREN);
            } else {
                e.set(attr::CHILDREN, ss(children));
            }
        }
        if let Some(t) = change.throughput_kbps {
            e.set(attr::THROUGHPUT, n(t));
        }
        self.write_call();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::KEY, s(key))
            .update_expression(e.update_text())
            .condition_expression(e.condition_text())
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values(Some(e.values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|err| lease_error(classify(&err), Call::Write))?;
        let item = out.attributes.unwrap_or_default();
        from_item(&item)?.ok_or_else(|| bad(key, attr::ENTITY))
    }

    async fn delete(&self, key: &str, expect: &Expect) -> Result<(), LeaseError> {
        let mut e = Expr::default();
        e.expect(expect);
        self.write_call();
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(attr::KEY, s(key))
            .condition_expression(e.condition_text())
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values((!e.values.is_empty()).then_some(e.values))
            .send()
            .await
            .map_err(|err| lease_error(classify(&err), Call::Write))?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        worker: &WorkerId,
        expected: Option<u64>,
        draining: bool,
    ) -> Result<WorkerRow, LeaseError> {
        let mut e = Expr::default();
        let workers = e.name(attr::WORKERS);
        e.names.insert("#w".into(), worker.as_str().to_owned());
        let next = match expected {
            None => {
                e.condition.push(format!("attribute_not_exists({workers}.#w)"));
                let mut entry = Item::new();
                entry.insert("counter".into(), n(0));
                entry.insert("draining".into(), AttributeValue::Bool(draining));
                let v = e.value(AttributeValue::M(entry));
                e.set.push(format!("{workers}.#w = {v}"));
                0
            }
            Some(c) => {
                e.names.insert("#n".into(), "counter".into());
                e.names.insert("#d".into(), "draining".into());
                let (was, next, d) = (e.value(n(c)), e.value(n(c + 1)), e.value(AttributeValue::Bool(draining)));
                e.condition.push(format!("{workers}.#w.#n = {was}"));
                e.set.push(format!("{workers}.#w.#n = {next}, {workers}.#w.#d = {d}"));
                c + 1
            }
        };
        self.update_membership(&e).await?;
        Ok(WorkerRow { id: worker.clone(), counter: next, draining })
    }

    async fn workers(&self) -> Result<Vec<WorkerRow>, LeaseError> {
        let Some(item) = self.get_item(MEMBERSHIP_KEY).await? else { return Ok(Vec::new()) };
        let Some(AttributeValue::M(map)) = item.get(attr::WORKERS) else { return Ok(Vec::new()) };
        let mut rows: Vec<WorkerRow> =
            map.iter().filter_map(|(id, entry)| worker_row(&WorkerId::new(id.as_str()), entry)).collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }

    async fn remove_worker(&self, worker: &WorkerId, expected: u64) -> Result<(), LeaseError> {
        let mut e = Expr::default();
        let workers = e.name(attr::WORKERS);
        e.names.insert("#w".into(), worker.as_str().to_owned());
        e.names.insert("#n".into(), "counter".into());
        let was = e.value(n(expected));
        e.condition.push(format!("{workers}.#w.#n = {was}"));
        e.remove.push(format!("{workers}.#w"));
        self.update_membership(&e).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
