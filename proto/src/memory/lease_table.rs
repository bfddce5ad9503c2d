//! An in-memory lease table with DynamoDB's conditional-write semantics.

use crate::ids::WorkerId;
use crate::lease::{EntityType, Expect, Lease, LeaseChange, Membership, WorkerRow};
use crate::lease_table::{LeaseError, LeaseTable};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Calls the table answered, to compare what the protocol costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseTableStats {
    pub reads: u64,
    pub writes: u64,
    pub failed_conditions: u64,
}

#[derive(Default)]
struct State {
    rows: BTreeMap<String, Lease>,
    workers: BTreeMap<WorkerId, (u64, bool)>,
    leader: Option<WorkerId>,
    changes: u64,
    stats: LeaseTableStats,
}

impl State {
    fn membership(&self) -> Membership {
        Membership {
            workers: self
                .workers
                .iter()
                .map(|(id, (c, d))| WorkerRow { id: id.clone(), counter: *c, draining: *d })
                .collect(),
            leader: self.leader.clone(),
            changes: self.changes,
        }
    }

    fn refused(&mut self) -> Result<(), LeaseError> {
        self.stats.failed_conditions += 1;
        Err(LeaseError::ConditionFailed)
    }
}

#[derive(Clone, Default)]
pub struct MemoryLeaseTable {
    state: Arc<Mutex<State>>,
}

impl MemoryLeaseTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> LeaseTableStats {
        self.state.lock().unwrap().stats
    }

    /// Every row as stored (leases and the leader row), for tests and the demo's report.
    pub fn rows(&self) -> Vec<Lease> {
        self.state.lock().unwrap().rows.values().cloned().collect()
    }
}

#[async_trait]
impl LeaseTable for MemoryLeaseTable {
    async fn create(&self, lease: &Lease) -> Result<(), LeaseError> {
        let mut st = self.state.lock().unwrap();
        if st.rows.contains_key(&lease.key) {
            st.stats.failed_conditions += 1;
            return Err(LeaseError::ConditionFailed);
        }
        st.stats.writes += 1;
        st.rows.insert(lease.key.clone(), lease.clone());
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        let mut st = self.state.lock().unwrap();
        st.stats.reads += 1;
        Ok(st.rows.get(key).cloned())
    }

    async fn scan(&self) -> Result<Vec<Lease>, LeaseError> {
        let mut st = self.state.lock().unwrap();
        st.stats.reads += 1;
        Ok(st.rows.values().filter(|l| l.entity == EntityType::Lease).cloned().collect())
    }

    async fn owned_by(&self, owner: &WorkerId) -> Result<Vec<Lease>, LeaseError> {
        let mut st = self.state.lock().unwrap();
        st.stats.reads += 1;
        Ok(st
            .rows
            .values()
            .filter(|l| l.entity == EntityType::Lease && l.owner.as_ref() == Some(owner))
            .cloned()
            .collect())
    }

    async fn update(&self, key: &str, expect: &Expect, change: &LeaseChange) -> Result<Lease, LeaseError> {
        let mut st = self.state.lock().unwrap();
        let Some(row) = st.rows.get(key).filter(|row| expect.holds_for(row)).cloned() else {
            st.stats.failed_conditions += 1;
            return Err(LeaseError::ConditionFailed);
        };
        let mut row = row;
        row.apply(change);
        st.stats.writes += 1;
        st.rows.insert(key.to_owned(), row.clone());
        Ok(row)
    }

    async fn delete(&self, key: &str, expect: &Expect) -> Result<(), LeaseError> {
        let mut st = self.state.lock().unwrap();
        if !st.rows.get(key).is_some_and(|row| expect.holds_for(row)) {
            st.stats.failed_conditions += 1;
            return Err(LeaseError::ConditionFailed);
        }
        st.stats.writes += 1;
        st.rows.remove(key);
        Ok(())
    }

    async fn heartbeat(
        &self,
        worker: &WorkerId,
        expected: Option<u64>,
        draining: bool,
    ) -> Result<Membership, LeaseError> {
        let mut st = self.state.lock().unwrap();
        let current = st.workers.get(worker).map(|(c, _)| *c);
        let next = match (expected, current) {
            (None, None) => 0,
            (Some(e), Some(c)) if e == c => c + 1,
            _ => return st.refused().map(|()| Membership::default()),
        };
        st.stats.writes += 1;
        st.workers.insert(worker.clone(), (next, draining));
        Ok(st.membership())
    }

    async fn membership(&self, _consistent: bool) -> Result<Membership, LeaseError> {
        let mut st = self.state.lock().unwrap();
        st.stats.reads += 1;
        Ok(st.membership())
    }

    async fn remove_worker(&self, worker: &WorkerId, expected: u64) -> Result<(), LeaseError> {
        let mut st = self.state.lock().unwrap();
        if st.workers.get(worker).map(|(c, _)| *c) != Some(expected) {
            return st.refused();
        }
        st.stats.writes += 1;
        st.workers.remove(worker);
        Ok(())
    }

    async fn claim_leadership(
        &self,
        me: &WorkerId,
        observed: Option<(&WorkerId, Option<u64>)>,
    ) -> Result<Membership, LeaseError> {
        let mut st = self.state.lock().unwrap();
        let as_observed = match observed {
            None => st.leader.is_none(),
            Some((leader, counter)) => {
                st.leader.as_ref() == Some(leader) && st.workers.get(leader).map(|(c, _)| *c) == counter
            }
        };
        if !as_observed || !st.workers.contains_key(me) {
            return st.refused().map(|()| Membership::default());
        }
        st.stats.writes += 1;
        st.leader = Some(me.clone());
        Ok(st.membership())
    }

    async fn resign_leadership(&self, me: &WorkerId) -> Result<(), LeaseError> {
        let mut st = self.state.lock().unwrap();
        if st.leader.as_ref() != Some(me) {
            return st.refused();
        }
        st.stats.writes += 1;
        st.leader = None;
        st.changes += 1;
        Ok(())
    }

    async fn announce_change(&self) -> Result<(), LeaseError> {
        let mut st = self.state.lock().unwrap();
        st.stats.writes += 1;
        st.changes += 1;
        Ok(())
    }
}
