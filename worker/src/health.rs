//! Whether a node is fit to serve, for `/readyz`: it reached its lease table and warehouse at
//! start (the sinks checked their tables), its lease keeper heartbeats, and it is not draining.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct NodeHealth {
    started: AtomicBool,
    draining: AtomicBool,
    heartbeat: Mutex<Option<Instant>>,
}

impl NodeHealth {
    /// Every part of the node started: the warehouse tables are checked, the keeper runs.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// A graceful stop began: the node takes no more work.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The lease keeper's heartbeat was written now.
    pub fn heartbeat(&self) {
        *self.heartbeat.lock().expect("never poisoned") = Some(Instant::now());
    }

    /// `Ok` when ready, else why not. A heartbeat older than `stale_after` (the time after which
    /// the cluster may declare the node dead) makes the node unready.
    pub fn ready(&self, stale_after: Duration) -> Result<(), &'static str> {
        if !self.started.load(Ordering::Relaxed) {
            return Err("starting");
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining");
        }
        match *self.heartbeat.lock().expect("never poisoned") {
            None => Err("no heartbeat yet"),
            Some(at) if at.elapsed() >= stale_after => Err("heartbeat stale"),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_only_when_started_heartbeating_and_not_draining() {
        let health = NodeHealth::default();
        let stale = Duration::from_secs(10);
        assert_eq!(health.ready(stale), Err("starting"));
        health.set_started();
        assert_eq!(health.ready(stale), Err("no heartbeat yet"));
        health.heartbeat();
        assert_eq!(health.ready(stale), Ok(()));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(health.ready(stale), Ok(()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(health.ready(stale), Err("heartbeat stale"));
        health.heartbeat();
        health.set_draining();
        assert_eq!(health.ready(stale), Err("draining"));
    }
}
