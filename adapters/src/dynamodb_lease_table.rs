//! The lease table on DynamoDB, in KCL's schema: hash key `leaseKey` (S), KCL's attribute names
//! and types, on-demand billing, GSI `LeaseOwnerToLeaseKeyIndex` (leaseOwner, leaseKey). A
//! table KCL created reads as ours: its rows carry no `entityType`, and so are leases.
//!
//! The lease table holds leases only, so a KCL application sharing it reads nothing foreign.
//! Tributary's own two rows live in a state table beside it (`<lease table>-TributaryState`,
//! as KCL v3 keeps its coordinator state apart), keyed `tributary:…`: the membership row, whose
//! `workers` map holds every node's heartbeat counter, `leader` the leader's id and `changes`
//! the change counter, so reading all of it is one GetItem (eventually consistent, on every
//! node's cycle), a heartbeat one conditional UpdateItem of the node's own map entry returning
//! the row, a leadership claim one UpdateItem conditional on the leader's counter. The lease-row
//! calls (`create`, `get`, `update`, `delete`) go to the state table for keys starting
//! `tributary:` (an earlier version's leader lock row there is left alone).
//! Earlier versions kept both rows in the lease table: `ensure_table` deletes them there.
//!
//! Every write is conditional. Errors are classified: a refused condition is `ConditionFailed`;
//! a write without an answer (or a 5xx) is `Ambiguous`, and the lease protocol settles it by
//! re-reading the row, so a write that landed is never taken for a lost lease.
//!
//! The table's definition and the wait for it to be active are in `lease_table_admin.rs`, the
//! item codec in `kcl_lease_item.rs`, the expression builder in `dynamodb_expr.rs`. Every SDK
//! call is sent from here (`tests/helm_chart.rs` reads this file for the IAM actions the node
//! needs).

use crate::aws::{classify, Failure};
use crate::dynamodb_expr::Expr;
use crate::kcl_lease_item::{
    attr, bad, from_item, membership, n, s, ss, to_item, Item, LEGACY_MEMBERSHIP_KEY, MEMBERSHIP_ENTITY,
    MEMBERSHIP_KEY, STATE_KEY_PREFIX,
};
use crate::lease_table_admin::{kcl_table, state_table, state_table_name, wait_active, OWNER_INDEX};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use proto::{EntityType, Expect, Lease, LeaseChange, LeaseError, LeaseTable, Membership, WorkerId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The lease table of one application.
pub struct DynamoLeaseTable {
    client: Client,
    table: String,
    /// Tributary's own row (membership).
    state_table: String,
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

/// The leader lock's key in earlier versions' lease tables.
const LEGACY_LEADER_KEY: &str = "tributary:leader";

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

impl DynamoLeaseTable {
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::with_client(Client::new(config), table.into())
    }

    fn with_client(client: Client, table: String) -> Self {
        let state_table = state_table_name(&table);
        Self { client, table, state_table, owner_index: AtomicBool::new(true), calls: Calls::default() }
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

    pub fn state_table_name(&self) -> &str {
        &self.state_table
    }

    /// The table a row of `key` lives in.
    fn table_of(&self, key: &str) -> &str {
        if key.starts_with(STATE_KEY_PREFIX) {
            &self.state_table
        } else {
            &self.table
        }
    }

    /// Creates the lease table and the state table if they do not exist (on-demand billing, the
    /// lease table with the owner index), waits until both are active, learns whether the lease
    /// table has the owner index, removes the rows earlier versions kept among the leases, and
    /// creates the membership row.
    pub async fn ensure_table(&self) -> Result<(), LeaseError> {
        for (table, lease_table) in [(&self.table, true), (&self.state_table, false)] {
            let create = self.client.create_table().table_name(table);
            let create = if lease_table { kcl_table(create) } else { state_table(create) };
            if let Err(e) = create.send().await {
                let f = classify(&e);
                if f.code() != "ResourceInUseException" {
                    return Err(lease_error(f, Call::Read));
                }
            }
        }
        for table in [&self.table, &self.state_table] {
            let describe = || async {
                let out = self.client.describe_table().table_name(table).send().await;
                out.map_err(|e| lease_error(classify(&e), Call::Read))
            };
            let has_index = wait_active(table, describe).await?;
            if table == &self.table {
                self.owner_index.store(has_index, Ordering::Relaxed);
            }
        }
        self.remove_legacy_rows().await?;
        self.ensure_membership().await
    }

    /// Deletes the leader lock and membership row earlier versions wrote into the lease table
    /// (only rows marked as tributary's: a lease is never touched). Nodes of such a version
    /// still running would write them again: upgrade with all nodes stopped (README).
    async fn remove_legacy_rows(&self) -> Result<(), LeaseError> {
        for key in [LEGACY_MEMBERSHIP_KEY, LEGACY_LEADER_KEY] {
            self.write_call();
            let result = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key(attr::KEY, s(key))
                .condition_expression("attribute_exists(#e)")
                .expression_attribute_names("#e", attr::ENTITY)
                .send()
                .await;
            match result.map_err(|e| lease_error(classify(&e), Call::Write)) {
                Ok(_) | Err(LeaseError::ConditionFailed) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn ensure_membership(&self) -> Result<(), LeaseError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.state_table)
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

    async fn get_item(&self, key: &str, consistent: bool) -> Result<Option<Item>, LeaseError> {
        self.read_call();
        let out = self
            .client
            .get_item()
            .table_name(self.table_of(key))
            .key(attr::KEY, s(key))
            .consistent_read(consistent)
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

    /// A write on the membership row, returning it as written; creates that row once if it is
    /// missing.
    async fn update_membership(&self, expr: &Expr) -> Result<Item, LeaseError> {
        for attempt in 0..2 {
            self.write_call();
            let result = self
                .client
                .update_item()
                .table_name(&self.state_table)
                .key(attr::KEY, s(MEMBERSHIP_KEY))
                .update_expression(expr.update_text())
                .set_condition_expression((!expr.condition.is_empty()).then(|| expr.condition_text()))
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

#[async_trait]
impl LeaseTable for DynamoLeaseTable {
    async fn create(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.write_call();
        self.client
            .put_item()
            .table_name(self.table_of(&lease.key))
            .set_item(Some(to_item(lease)))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", attr::KEY)
            .send()
            .await
            .map_err(|e| lease_error(classify(&e), Call::Write))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        match self.get_item(key, true).await? {
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
            .table_name(self.table_of(key))
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
            .table_name(self.table_of(key))
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
    ) -> Result<Membership, LeaseError> {
        let mut e = Expr::default();
        let workers = e.name(attr::WORKERS);
        e.names.insert("#w".into(), worker.as_str().to_owned());
        match expected {
            None => {
                e.condition.push(format!("attribute_not_exists({workers}.#w)"));
                let mut entry = Item::new();
                entry.insert("counter".into(), n(0));
                entry.insert("draining".into(), AttributeValue::Bool(draining));
                let v = e.value(AttributeValue::M(entry));
                e.set.push(format!("{workers}.#w = {v}"));
            }
            Some(c) => {
                e.names.insert("#n".into(), "counter".into());
                e.names.insert("#d".into(), "draining".into());
                let (was, next, d) = (e.value(n(c)), e.value(n(c + 1)), e.value(AttributeValue::Bool(draining)));
                e.condition.push(format!("{workers}.#w.#n = {was}"));
                e.set.push(format!("{workers}.#w.#n = {next}, {workers}.#w.#d = {d}"));
            }
        }
        Ok(membership(&self.update_membership(&e).await?))
    }

    async fn membership(&self, consistent: bool) -> Result<Membership, LeaseError> {
        Ok(self.get_item(MEMBERSHIP_KEY, consistent).await?.map(|item| membership(&item)).unwrap_or_default())
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

    async fn claim_leadership(
        &self,
        me: &WorkerId,
        observed: Option<(&WorkerId, Option<u64>)>,
    ) -> Result<Membership, LeaseError> {
        let mut e = Expr::default();
        let (workers, leader) = (e.name(attr::WORKERS), e.name(attr::LEADER));
        e.names.insert("#me".into(), me.as_str().to_owned());
        e.condition.push(format!("attribute_exists({workers}.#me)"));
        match observed {
            None => e.condition.push(format!("attribute_not_exists({leader})")),
            Some((was, counter)) => {
                let was_value = e.value(s(was.as_str()));
                e.condition.push(format!("{leader} = {was_value}"));
                e.names.insert("#was".into(), was.as_str().to_owned());
                match counter {
                    Some(c) => {
                        e.names.insert("#n".into(), "counter".into());
                        let c = e.value(n(c));
                        e.condition.push(format!("{workers}.#was.#n = {c}"));
                    }
                    None => e.condition.push(format!("attribute_not_exists({workers}.#was)")),
                }
            }
        }
        let me_value = e.value(s(me.as_str()));
        e.set.push(format!("{leader} = {me_value}"));
        Ok(membership(&self.update_membership(&e).await?))
    }

    async fn resign_leadership(&self, me: &WorkerId) -> Result<(), LeaseError> {
        let mut e = Expr::default();
        let leader = e.name(attr::LEADER);
        let me_value = e.value(s(me.as_str()));
        e.condition.push(format!("{leader} = {me_value}"));
        e.remove.push(leader);
        count_change(&mut e);
        self.update_membership(&e).await.map(|_| ())
    }

    async fn announce_change(&self) -> Result<(), LeaseError> {
        let mut e = Expr::default();
        count_change(&mut e);
        self.update_membership(&e).await.map(|_| ())
    }
}

/// `changes = changes + 1` (from 0 on a row without it).
fn count_change(e: &mut Expr) {
    let changes = e.name(attr::CHANGES);
    let (zero, one) = (e.value(n(0)), e.value(n(1)));
    e.set.push(format!("{changes} = if_not_exists({changes}, {zero}) + {one}"));
}
