//! Wall-clock milliseconds that follow tokio's clock, so paused-time tests see time move
//! consistently everywhere. Only used for timestamps in data (arrival times), never to decide
//! whether another node's lease expired: expiry is observed with local `Instant`s.

use tokio::time::Instant;

/// The system's wall clock in milliseconds since the epoch (0 before it).
pub fn system_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[derive(Clone, Debug)]
pub struct Clock {
    start: Instant,
    base_ms: i64,
}

impl Clock {
    /// Starts at the system's current time.
    pub fn system() -> Self {
        Self::starting_at(system_ms())
    }

    /// Starts at a given time (repeatable runs).
    pub fn starting_at(base_ms: i64) -> Self {
        Self { start: Instant::now(), base_ms }
    }

    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}
