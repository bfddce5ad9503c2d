//! What happened in a cluster, in time order, and what is derived from it: the figures (crash
//! failover, graceful handoff and child-start delays) and the check of the two ordering promises
//! (no shard consumed by two nodes at once, no child consumed before all its parents stopped).

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

/// A point of a run: how long after the run's origin, and for an event seen in one process,
/// its place in the order events were emitted. Two marks with places compare by place; else by
/// time, and at one instant an end counts as before a start (a kill, or log lines of several
/// processes, carry no place).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub at: Duration,
    pub seq: Option<usize>,
}

impl Mark {
    /// Whether something that ended at `self` ended before something that began at `start`.
    fn before(self, start: Mark) -> bool {
        match (self.seq, start.seq) {
            (Some(a), Some(b)) => a < b,
            _ => self.at <= start.at,
        }
    }
}

/// One consumer's life on one node: every read it made lies between its start and its end (a
/// consumer starts before its first read and stops, or is killed, after its last).
#[derive(Clone, Debug)]
pub struct Span {
    pub node: WorkerId,
    pub shard: ShardId,
    pub start: Mark,
    /// `None`: still consuming when the run ended.
    pub end: Option<Mark>,
}

impl Span {
    fn ends_before(&self, other: &Span) -> bool {
        self.end.is_some_and(|end| end.before(other.start))
    }

    fn describe(&self) -> String {
        let at = |m: Mark| format!("{:.3}s", m.at.as_secs_f64());
        let end = self.end.map(at).unwrap_or_else(|| "the end".into());
        format!("{} on {} from {} to {end}", self.shard, self.node, at(self.start))
    }
}

/// Each child shard's parents, from a listing of the stream's shards.
pub fn parents(shards: Vec<proto::ShardInfo>) -> BTreeMap<ShardId, Vec<ShardId>> {
    shards.into_iter().filter(|s| !s.parents.is_empty()).map(|s| (s.id, s.parents)).collect()
}

/// Breaches of the two ordering promises, described: a shard consumed by two nodes (or twice on
/// one) at overlapping times, and a child consumed before one of its parents' consumers
/// stopped. `parents` gives each child shard's parents.
pub fn ordering_breaches(spans: &[Span], parents: &BTreeMap<ShardId, Vec<ShardId>>) -> Vec<String> {
    let mut by_shard: BTreeMap<&ShardId, Vec<&Span>> = BTreeMap::new();
    for span in spans {
        by_shard.entry(&span.shard).or_default().push(span);
    }
    let mut breaches = Vec::new();
    for list in by_shard.values() {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if !a.ends_before(b) && !b.ends_before(a) {
                    breaches.push(format!("consumed twice at once: {} and {}", a.describe(), b.describe()));
                }
            }
        }
    }
    for (child, ps) in parents {
        for c in by_shard.get(child).into_iter().flatten() {
            for p in ps.iter().filter_map(|p| by_shard.get(p)).flatten() {
                if !p.ends_before(c) {
                    breaches.push(format!("child before parent: {} while its parent {}", c.describe(), p.describe()));
                }
            }
        }
    }
    breaches
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

    fn first_start_after(events: &[(Instant, ClusterEvent)], shard: &ShardId, after: Instant) -> Option<Instant> {
        events.iter().find_map(|(t, e)| match e {
            ClusterEvent::ConsumerStarted { shard: s, .. } if s == shard && *t >= after => Some(*t),
            _ => None,
        })
    }

    /// Every consumer's span, from the events and the kills, timed from the first event.
    pub fn spans(&self) -> Vec<Span> {
        let inner = self.inner.lock().unwrap();
        let Some(origin) = inner.events.first().map(|(at, _)| *at) else { return Vec::new() };
        // Events and kills in time order; at one instant the killed node's own events came
        // first (it emits nothing once killed).
        let mut steps: Vec<(Instant, usize, Option<&ClusterEvent>, Option<&WorkerId>)> =
            inner.events.iter().enumerate().map(|(seq, (at, e))| (*at, seq, Some(e), None)).collect();
        steps.extend(inner.actions.iter().filter_map(|(at, a)| match a {
            Action::Kill { node, .. } => Some((*at, usize::MAX, None, Some(node))),
            Action::Stop { .. } => None,
        }));
        steps.sort_by_key(|(at, seq, ..)| (*at, *seq));
        let mut spans: Vec<Span> = Vec::new();
        for (at, seq, event, killed) in steps {
            let at = at.saturating_duration_since(origin);
            let end = |spans: &mut Vec<Span>, node: &WorkerId, shard: Option<&ShardId>, mark: Mark| {
                for span in spans.iter_mut().filter(|s| s.end.is_none() && &s.node == node) {
                    if shard.is_none_or(|shard| &span.shard == shard) {
                        span.end = Some(mark);
                    }
                }
            };
            match (event, killed) {
                (Some(ClusterEvent::ConsumerStarted { node, shard }), _) => spans.push(Span {
                    node: node.clone(),
                    shard: shard.clone(),
                    start: Mark { at, seq: Some(seq) },
                    end: None,
                }),
                // A consumer's reads end when it stops, or when its shard is drained (every
                // record committed, the SHARD_END checkpoint being written: it reads nothing more).
                (
                    Some(
                        ClusterEvent::ConsumerStopped { node, shard, .. } | ClusterEvent::ShardDrained { node, shard },
                    ),
                    _,
                ) => end(&mut spans, node, Some(shard), Mark { at, seq: Some(seq) }),
                (None, Some(node)) => end(&mut spans, node, None, Mark { at, seq: None }),
                _ => {}
            }
        }
        spans
    }

    /// [`ordering_breaches`] of this run's spans.
    pub fn ordering_breaches(&self, parents: &BTreeMap<ShardId, Vec<ShardId>>) -> Vec<String> {
        ordering_breaches(&self.spans(), parents)
    }

    /// Derives the figures; `parents` gives each child shard's parents.
    pub fn figures(&self, parents: &BTreeMap<ShardId, Vec<ShardId>>) -> Figures {
        let inner = self.inner.lock().unwrap();
        let events = &inner.events;
        let mut figures = Figures::default();
        for (at, action) in &inner.actions {
            match action {
                Action::Kill { shards, .. } => {
                    // The killed node is gone, so any later start counts: another node's, or
                    // the node's own once it comes back under the same id and resumes its leases.
                    let restarts: Option<Vec<Instant>> =
                        shards.iter().map(|s| Self::first_start_after(events, s, *at)).collect();
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
                            if let Some(started) = Self::first_start_after(events, shard, released) {
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
                        // From when its SHARD_END was being written: the write may land (and
                        // the child start) before the parent's consumer hears back.
                        ClusterEvent::ShardDrained { shard, .. } if shard == p => Some(*t),
                        _ => None,
                    })
                })
                .collect();
            if let Some(last_end) = ends.and_then(|e| e.into_iter().max()) {
                if let Some(started) = Self::first_start_after(events, child, last_end) {
                    figures.child_start.push(started.duration_since(last_end));
                }
            }
        }
        figures
    }
}
