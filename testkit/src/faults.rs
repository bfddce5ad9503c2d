//! Fault injection around any port: throttling and outages (nothing applied), and writes that
//! land but whose reply is lost (an ambiguous error, or the condition failure a client-side
//! retry of a landed write gets). Seeded, so a simulation run can be replayed.

use async_trait::async_trait;
use proto::{
    Batch, CommitStats, Expect, Lease, LeaseChange, LeaseError, LeaseTable, Membership, ReadBatch, ReadError, ShardId,
    ShardInfo, ShardIterator, ShardReader, StartingPosition, TableSchema, Warehouse, WarehouseError, WorkerId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Probabilities, per call, of each fault.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Fails before doing anything (throttling / outage).
    pub fail_before: f64,
    /// Does the work, then reports an error.
    pub fail_after: f64,
}

struct Injector {
    config: FaultConfig,
    rng: Mutex<ChaCha8Rng>,
    enabled: AtomicBool,
}

enum Fault {
    None,
    Before,
    After,
}

impl Injector {
    fn new(config: FaultConfig, seed: u64) -> Self {
        Self { config, rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)), enabled: AtomicBool::new(true) }
    }

    fn draw(&self) -> Fault {
        let roll: f64 = self.rng.lock().unwrap().gen();
        if !self.enabled.load(Ordering::Relaxed) {
            Fault::None
        } else if roll < self.config.fail_before {
            Fault::Before
        } else if roll < self.config.fail_before + self.config.fail_after {
            Fault::After
        } else {
            Fault::None
        }
    }
}

macro_rules! switchable {
    ($name:ident) => {
        impl $name {
            /// Stops (or resumes) injecting faults.
            pub fn set_enabled(&self, on: bool) {
                self.faults.enabled.store(on, Ordering::Relaxed);
            }
        }
    };
}

/// A lease table whose calls are throttled, and whose writes sometimes land but report
/// `Ambiguous` or `ConditionFailed`.
pub struct FaultyLeaseTable {
    inner: Arc<dyn LeaseTable>,
    faults: Injector,
}
switchable!(FaultyLeaseTable);

impl FaultyLeaseTable {
    pub fn new(inner: Arc<dyn LeaseTable>, config: FaultConfig, seed: u64) -> Self {
        Self { inner, faults: Injector::new(config, seed) }
    }

    async fn write<T>(&self, call: impl std::future::Future<Output = Result<T, LeaseError>>) -> Result<T, LeaseError> {
        match self.faults.draw() {
            Fault::Before => Err(LeaseError::Throttled),
            Fault::After => {
                let result = call.await;
                match result {
                    Ok(_) if self.faults.rng.lock().unwrap().gen_bool(0.5) => Err(LeaseError::ConditionFailed),
                    Ok(_) => Err(LeaseError::Ambiguous("reply lost (injected)".into())),
                    Err(e) => Err(e),
                }
            }
            Fault::None => call.await,
        }
    }

    async fn read<T>(&self, call: impl std::future::Future<Output = Result<T, LeaseError>>) -> Result<T, LeaseError> {
        match self.faults.draw() {
            Fault::Before => Err(LeaseError::Throttled),
            _ => call.await,
        }
    }
}

#[async_trait]
impl LeaseTable for FaultyLeaseTable {
    async fn create(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.write(self.inner.create(lease)).await
    }
    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.read(self.inner.get(key)).await
    }
    async fn scan(&self) -> Result<Vec<Lease>, LeaseError> {
        self.read(self.inner.scan()).await
    }
    async fn owned_by(&self, owner: &WorkerId) -> Result<Vec<Lease>, LeaseError> {
        self.read(self.inner.owned_by(owner)).await
    }
    async fn update(&self, key: &str, expect: &Expect, change: &LeaseChange) -> Result<Lease, LeaseError> {
        self.write(self.inner.update(key, expect, change)).await
    }
    async fn delete(&self, key: &str, expect: &Expect) -> Result<(), LeaseError> {
        self.write(self.inner.delete(key, expect)).await
    }
    async fn heartbeat(
        &self,
        worker: &WorkerId,
        expected: Option<u64>,
        draining: bool,
    ) -> Result<Membership, LeaseError> {
        self.write(self.inner.heartbeat(worker, expected, draining)).await
    }
    async fn membership(&self, consistent: bool) -> Result<Membership, LeaseError> {
        self.read(self.inner.membership(consistent)).await
    }
    async fn remove_worker(&self, worker: &WorkerId, expected: u64) -> Result<(), LeaseError> {
        self.write(self.inner.remove_worker(worker, expected)).await
    }
    async fn claim_leadership(
        &self,
        me: &WorkerId,
        observed: Option<(&WorkerId, Option<u64>)>,
    ) -> Result<Membership, LeaseError> {
        self.write(self.inner.claim_leadership(me, observed)).await
    }
    async fn resign_leadership(&self, me: &WorkerId) -> Result<(), LeaseError> {
        self.write(self.inner.resign_leadership(me)).await
    }
    async fn announce_change(&self) -> Result<(), LeaseError> {
        self.write(self.inner.announce_change()).await
    }
}

/// A warehouse that is sometimes down, and sometimes commits but loses the reply.
pub struct FaultyWarehouse {
    inner: Arc<dyn Warehouse>,
    faults: Injector,
}
switchable!(FaultyWarehouse);

impl FaultyWarehouse {
    pub fn new(inner: Arc<dyn Warehouse>, config: FaultConfig, seed: u64) -> Self {
        Self { inner, faults: Injector::new(config, seed) }
    }
}

#[async_trait]
impl Warehouse for FaultyWarehouse {
    async fn ensure_table(&self, table: &TableSchema) -> Result<(), WarehouseError> {
        self.inner.ensure_table(table).await
    }
    async fn commit(&self, batch: &Batch) -> Result<CommitStats, WarehouseError> {
        match self.faults.draw() {
            Fault::Before => Err(WarehouseError::Unavailable("injected outage".into())),
            Fault::After => {
                self.inner.commit(batch).await?;
                Err(WarehouseError::Ambiguous("reply lost (injected)".into()))
            }
            Fault::None => self.inner.commit(batch).await,
        }
    }
    async fn prune_tombstones(&self, table: &TableSchema, retention: Duration) -> Result<u64, WarehouseError> {
        match self.faults.draw() {
            Fault::None => self.inner.prune_tombstones(table, retention).await,
            _ => Err(WarehouseError::Unavailable("injected outage".into())),
        }
    }
}

/// A stream reader with outages and expired iterators.
pub struct FaultyReader {
    inner: Arc<dyn ShardReader>,
    faults: Injector,
}
switchable!(FaultyReader);

impl FaultyReader {
    pub fn new(inner: Arc<dyn ShardReader>, config: FaultConfig, seed: u64) -> Self {
        Self { inner, faults: Injector::new(config, seed) }
    }
}

#[async_trait]
impl ShardReader for FaultyReader {
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ReadError> {
        match self.faults.draw() {
            Fault::None => self.inner.list_shards().await,
            _ => Err(ReadError::Unavailable("injected outage".into())),
        }
    }
    async fn iterator(&self, shard: &ShardId, from: &StartingPosition) -> Result<ShardIterator, ReadError> {
        match self.faults.draw() {
            Fault::None => self.inner.iterator(shard, from).await,
            _ => Err(ReadError::Unavailable("injected outage".into())),
        }
    }
    async fn read(&self, shard: &ShardId, iterator: &ShardIterator, limit: usize) -> Result<ReadBatch, ReadError> {
        match self.faults.draw() {
            Fault::None => self.inner.read(shard, iterator, limit).await,
            Fault::Before => Err(ReadError::Unavailable("injected outage".into())),
            Fault::After => Err(ReadError::ExpiredIterator),
        }
    }
    fn pushes(&self) -> bool {
        self.inner.pushes()
    }
    fn release(&self, shard: &ShardId) {
        self.inner.release(shard)
    }
}
