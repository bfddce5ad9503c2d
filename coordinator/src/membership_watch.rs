//! What a node's coordinator and lease keeper share of the membership row. The keeper writes the
//! node's heartbeats, and each written row says who leads: a heartbeat that shows this node as
//! the leader renews its leadership (there is no lock row of its own). The coordinator reads the
//! row every assignment cycle, and its change counter tells the keeper when to look at its
//! leases again (`changed()` wakes it at once).

use proto::{Membership, WorkerId};
use std::sync::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug)]
pub struct MembershipWatch {
    me: WorkerId,
    /// When the last write that showed this node as the leader was sent (a claim or a
    /// heartbeat); `None` once a written row named another leader (or none).
    led_at: Mutex<Option<Instant>>,
    /// The largest change counter seen.
    changes: watch::Sender<u64>,
}

impl MembershipWatch {
    pub fn new(me: WorkerId) -> Self {
        Self { me, led_at: Mutex::new(None), changes: watch::Sender::new(0) }
    }

    /// A row this node wrote (its heartbeat, or its claim), the write sent at `sent`: the row
    /// is as of after that moment, so it confirms or ends this node's leadership.
    pub fn written(&self, row: &Membership, sent: Instant) {
        *self.led_at.lock().unwrap() = (row.leader.as_ref() == Some(&self.me)).then_some(sent);
        self.read(row);
    }

    /// A row this node read: its change counter.
    pub fn read(&self, row: &Membership) {
        self.changes.send_if_modified(|seen| {
            let moved = row.changes > *seen;
            *seen = (*seen).max(row.changes);
            moved
        });
    }

    /// This node gave leadership up.
    pub fn resigned(&self) {
        *self.led_at.lock().unwrap() = None;
    }

    /// When this node was last confirmed as the leader.
    pub fn led_at(&self) -> Option<Instant> {
        *self.led_at.lock().unwrap()
    }

    /// The change counter as last seen.
    pub fn changes(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Wakes when the change counter moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(leader: Option<&str>, changes: u64) -> Membership {
        Membership { workers: Vec::new(), leader: leader.map(WorkerId::new), changes }
    }

    #[tokio::test(start_paused = true)]
    async fn a_written_row_confirms_or_ends_leadership_and_the_counter_only_grows() {
        let watch = MembershipWatch::new(WorkerId::new("a"));
        let mut woken = watch.subscribe();
        let t = Instant::now();
        watch.written(&row(Some("a"), 3), t);
        assert_eq!((watch.led_at(), watch.changes()), (Some(t), 3));
        assert!(woken.has_changed().unwrap());
        woken.mark_unchanged();
        // A stale read (an eventually consistent one) never takes the counter back.
        watch.read(&row(Some("a"), 2));
        assert_eq!(watch.changes(), 3);
        assert!(!woken.has_changed().unwrap());
        watch.written(&row(Some("b"), 3), t);
        assert_eq!(watch.led_at(), None, "another node leads now");
        watch.written(&row(Some("a"), 4), t);
        watch.resigned();
        assert_eq!(watch.led_at(), None);
    }
}
