//! The ports as the node sees them, with every failed call counted in
//! `tributary_call_errors_total{service, kind}`: one wrapper per port, each forwarding to the
//! real adapter and counting its error's `kind()` under the service the adapter talks to.

use crate::metrics::NodeMetrics;
use async_trait::async_trait;
use proto::{
    Batch, CommitStats, Expect, Lease, LeaseChange, LeaseError, LeaseTable, Membership, ReadBatch, ReadError,
    ReferenceChange, ReferenceError, ReferenceSource, ShardId, ShardInfo, ShardIterator, ShardReader, Snapshot,
    StartingPosition, TableSchema, Warehouse, WarehouseError, WorkerId,
};
use std::sync::Arc;
use std::time::Duration;

/// A port `inner` whose failures count under `service`.
pub struct Observed<P: ?Sized> {
    inner: Arc<P>,
    service: &'static str,
    metrics: Arc<NodeMetrics>,
}

impl<P: ?Sized> Observed<P> {
    pub fn new(inner: Arc<P>, service: &'static str, metrics: Arc<NodeMetrics>) -> Self {
        Self { inner, service, metrics }
    }

    fn count<T, E>(&self, service: &'static str, result: Result<T, E>, kind: fn(&E) -> &'static str) -> Result<T, E> {
        if let Err(e) = &result {
            self.metrics.call_errors.with_label_values(&[service, kind(e)]).inc();
        }
        result
    }
}

#[async_trait]
impl LeaseTable for Observed<dyn LeaseTable> {
    async fn create(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.count(self.service, self.inner.create(lease).await, LeaseError::kind)
    }
    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.count(self.service, self.inner.get(key).await, LeaseError::kind)
    }
    async fn scan(&self) -> Result<Vec<Lease>, LeaseError> {
        self.count(self.service, self.inner.scan().await, LeaseError::kind)
    }
    async fn owned_by(&self, owner: &WorkerId) -> Result<Vec<Lease>, LeaseError> {
        self.count(self.service, self.inner.owned_by(owner).await, LeaseError::kind)
    }
    async fn update(&self, key: &str, expect: &Expect, change: &LeaseChange) -> Result<Lease, LeaseError> {
        self.count(self.service, self.inner.update(key, expect, change).await, LeaseError::kind)
    }
    async fn delete(&self, key: &str, expect: &Expect) -> Result<(), LeaseError> {
        self.count(self.service, self.inner.delete(key, expect).await, LeaseError::kind)
    }
    async fn heartbeat(
        &self,
        worker: &WorkerId,
        expected: Option<u64>,
        draining: bool,
    ) -> Result<Membership, LeaseError> {
        self.count(self.service, self.inner.heartbeat(worker, expected, draining).await, LeaseError::kind)
    }
    async fn membership(&self, consistent: bool) -> Result<Membership, LeaseError> {
        self.count(self.service, self.inner.membership(consistent).await, LeaseError::kind)
    }
    async fn remove_worker(&self, worker: &WorkerId, expected: u64) -> Result<(), LeaseError> {
        self.count(self.service, self.inner.remove_worker(worker, expected).await, LeaseError::kind)
    }
    async fn claim_leadership(
        &self,
        me: &WorkerId,
        observed: Option<(&WorkerId, Option<u64>)>,
    ) -> Result<Membership, LeaseError> {
        self.count(self.service, self.inner.claim_leadership(me, observed).await, LeaseError::kind)
    }
    async fn resign_leadership(&self, me: &WorkerId) -> Result<(), LeaseError> {
        self.count(self.service, self.inner.resign_leadership(me).await, LeaseError::kind)
    }
    async fn announce_change(&self) -> Result<(), LeaseError> {
        self.count(self.service, self.inner.announce_change().await, LeaseError::kind)
    }
}

#[async_trait]
impl ShardReader for Observed<dyn ShardReader> {
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ReadError> {
        self.count(self.service, self.inner.list_shards().await, ReadError::kind)
    }
    async fn iterator(&self, shard: &ShardId, from: &StartingPosition) -> Result<ShardIterator, ReadError> {
        self.count(self.service, self.inner.iterator(shard, from).await, ReadError::kind)
    }
    async fn read(&self, shard: &ShardId, iterator: &ShardIterator, limit: usize) -> Result<ReadBatch, ReadError> {
        self.count(self.service, self.inner.read(shard, iterator, limit).await, ReadError::kind)
    }
    fn pushes(&self) -> bool {
        self.inner.pushes()
    }
    fn release(&self, shard: &ShardId) {
        self.inner.release(shard)
    }
}

#[async_trait]
impl Warehouse for Observed<dyn Warehouse> {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        self.count(self.service, self.inner.ensure_table(table).await, WarehouseError::kind)
    }
    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        self.count(self.service, self.inner.commit(batch).await, WarehouseError::kind)
    }
    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        self.count(self.service, self.inner.prune_tombstones(table, retention).await, WarehouseError::kind)
    }
}

/// Full loads are counted under the service (DynamoDB's Scan), change feeds under
/// `changes_service` (DynamoDB Streams).
pub struct ObservedReferences {
    observed: Observed<dyn ReferenceSource>,
    changes_service: &'static str,
}

impl ObservedReferences {
    pub fn new(
        inner: Arc<dyn ReferenceSource>,
        service: &'static str,
        changes_service: &'static str,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        Self { observed: Observed::new(inner, service, metrics), changes_service }
    }
}

#[async_trait]
impl ReferenceSource for ObservedReferences {
    async fn load(&self, table: &str, key_attribute: &str) -> Result<Snapshot, ReferenceError> {
        let o = &self.observed;
        o.count(o.service, o.inner.load(table, key_attribute).await, ReferenceError::kind)
    }
    async fn changes(
        &self,
        table: &str,
        key_attribute: &str,
        cursor: &str,
    ) -> Result<Option<(Vec<ReferenceChange>, String)>, ReferenceError> {
        let o = &self.observed;
        o.count(self.changes_service, o.inner.changes(table, key_attribute, cursor).await, ReferenceError::kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::memory::MemoryLeaseTable;

    #[tokio::test]
    async fn failed_calls_count_by_service_and_kind() {
        let metrics = Arc::new(NodeMetrics::default());
        let inner: Arc<dyn LeaseTable> = Arc::new(MemoryLeaseTable::default());
        let table = Observed::new(inner, "dynamodb", metrics.clone());
        let lease = Lease::for_shard(&ShardId::new("s"), vec![], None, proto::Checkpoint::TrimHorizon);
        table.create(&lease).await.unwrap();
        assert_eq!(table.create(&lease).await, Err(LeaseError::ConditionFailed));
        table.get("s").await.unwrap();
        let errors = |kind: &str| metrics.call_errors.with_label_values(&["dynamodb", kind]).get();
        assert_eq!((errors("condition_failed"), errors("throttled")), (1, 0));
    }
}
