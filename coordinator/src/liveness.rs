//! Observed expiry: a counter is expired when *this* observer has not seen it change for
//! `failover_time` on its own monotonic clock. No other node's clock is ever read.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Liveness<K: Ord> {
    seen: BTreeMap<K, (u64, Instant)>,
}

impl<K: Ord + Clone> Default for Liveness<K> {
    fn default() -> Self {
        Self { seen: BTreeMap::new() }
    }
}

impl<K: Ord + Clone> Liveness<K> {
    /// Records a read of `key`'s counter at `now`.
    pub fn observe(&mut self, key: &K, counter: u64, now: Instant) {
        match self.seen.get_mut(key) {
            Some((c, since)) if *c != counter => {
                *c = counter;
                *since = now;
            }
            Some(_) => {}
            None => {
                self.seen.insert(key.clone(), (counter, now));
            }
        }
    }

    /// Whether `key` was seen with `counter` unchanged for at least `failover` (a key never
    /// observed, or observed with another counter, is not expired).
    pub fn expired(&self, key: &K, counter: u64, now: Instant, failover: Duration) -> bool {
        self.seen.get(key).is_some_and(|(c, since)| *c == counter && now.duration_since(*since) >= failover)
    }

    /// When `key` was first seen with its current counter.
    pub fn since(&self, key: &K) -> Option<Instant> {
        self.seen.get(key).map(|(_, since)| *since)
    }

    /// Forgets keys no longer present.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.seen.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expiry_needs_an_unchanged_counter_for_the_whole_failover_time() {
        let failover = Duration::from_secs(10);
        let mut l = Liveness::default();
        let t0 = Instant::now();
        l.observe(&"a", 1, t0);
        assert!(!l.expired(&"a", 1, t0 + Duration::from_secs(9), failover));
        l.observe(&"a", 2, t0 + Duration::from_secs(9));
        assert!(!l.expired(&"a", 2, t0 + Duration::from_secs(12), failover));
        assert!(l.expired(&"a", 2, t0 + Duration::from_secs(19), failover));
        assert!(!l.expired(&"a", 3, t0 + Duration::from_secs(19), failover));
        assert!(!l.expired(&"b", 0, t0 + Duration::from_secs(99), failover));
    }
}
