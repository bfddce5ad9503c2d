//! What happened in a cluster, in time order, and the figures derived from it: crash failover,
//! graceful handoff and child-start delays.

use coordinator::ClusterEvent;
use proto::{ShardId, WorkerId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Something the harness did to the cluster.
#[derive(Clone, Debug)]
pub enum Action {
    /// A node was killed while it consumed these shards.
    Kill { node: WorkerId, shards: Vec<ShardId> },
    /// A node was asked to stop gracefully while it consumed these shards.
    Stop { node: WorkerId, shards: Vec<ShardId> },
}

#[derive(Clone, Default)]
pub struct Timeline {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    events: Vec<(Instant, ClusterEvent)>,
    actions: Vec<(Instant, Action)>,
}

/// Durations measured over a run (each list holds one figure per occurrence).
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Kill → every shard of the dead node consumed again elsewhere.
    pub failover: Vec<Duration>,
    /// Per shard of a graceful stop: released by the old node → started by a new one.
    pub handoff: Vec<Duration>,
    /// Per child shard: its last parent's SHARD_END → its consumer started.
    pub child_start: Vec<Duration>,
}

pub fn max(d: &[Duration]) -> Option<Duration> {
    d.iter().max().copied()
}

pub fn median(d: &[Duration]) -> Option<Duration> {
    let mut v = d.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

impl Timeline {
    pub fn record(&self, at: Instant, event: ClusterEvent) {
        self.inner.lock().unwrap().events.push((at, event));
    }

    pub fn act(&self, action: Action) {
        self.inner.lock().unwrap().actions.push((Instant::now(), action));
    }

    pub fn events(&self) -> Vec<(Instant, ClusterEvent)> {
        self.inner.lock().unwrap().events.clone()
    }

    fn first_start_after(
        events: &[(Instant, ClusterEvent)],
        shard: &ShardId,
        after: Instant,
        not_on: Option<&WorkerId>,
    ) -> Option<Instant> {
        events.iter().find_map(|(t, e)| match e {
            ClusterEvent::ConsumerStarted { node, shard: s } if s == shard && *t >= after && Some(node) != not_on => {
                Some(*t)
            }
            _ => None,
        })
    }

    /// Derives the figures; `parents` gives each child shard's parents.
    pub fn figures(&self, parents: &BTreeMap<ShardId, Vec<ShardId>>) -> Figures {
        let inner = self.inner.lock().unwrap();
        let events = &inner.events;
        let mut figures = Figures::default();
        for (at, action) in &inner.actions {
            match action {
                Action::Kill { node, shards } => {
                    let restarts: Option<Vec<Instant>> =
                        shards.iter().map(|s| Self::first_start_after(events, s, *at, Some(node))).collect();
                    if let Some(latest) = restarts.and_then(|r| r.into_iter().max()) {
                        if !shards.is_empty() {
                            figures.failover.push(latest.duration_since(*at));
                        }
                    }
                }
                Action::Stop { node, shards } => {
                    for shard in shards {
                        let released = events.iter().find_map(|(t, e)| match e {
                            ClusterEvent::ConsumerStopped { node: n, shard: s, why }
                                if n == node && s == shard && *t >= *at && why == "released" =>
                            {
                                Some(*t)
                            }
                            _ => None,
                        });
                        if let Some(released) = released {
                            if let Some(started) = Self::first_start_after(events, shard, released, None) {
                                figures.handoff.push(started.duration_since(released));
                            }
                        }
                    }
                }
            }
        }
        for (child, ps) in parents {
            let ends: Option<Vec<Instant>> = ps
                .iter()
                .map(|p| {
                    events.iter().find_map(|(t, e)| match e {
                        ClusterEvent::ShardEnded { shard, .. } if shard == p => Some(*t),
                        _ => None,
                    })
                })
                .collect();
            if let Some(last_end) = ends.and_then(|e| e.into_iter().max()) {
                if let Some(started) = Self::first_start_after(events, child, last_end, None) {
                    figures.child_start.push(started.duration_since(last_end));
                }
            }
        }
        figures
    }
}
