//! The one retry policy: bounded exponential back-off for calls whose error says "retryable".

use std::future::Future;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 6, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(2) }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or attempts run out.
    pub async fn run<T, E, F, Fut>(&self, is_retryable: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if attempt < self.max_attempts && is_retryable(&e) => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_errors_and_stops_at_the_bound() {
        let policy = RetryPolicy::default();
        let mut calls = 0;
        let r: Result<(), &str> = policy
            .run(
                |e| *e == "busy",
                || {
                    calls += 1;
                    async { Err("busy") }
                },
            )
            .await;
        assert_eq!((r, calls), (Err("busy"), 6));
        let mut calls = 0;
        let r: Result<(), &str> = policy
            .run(
                |e| *e == "busy",
                || {
                    calls += 1;
                    async { Err("bad") }
                },
            )
            .await;
        assert_eq!((r, calls), (Err("bad"), 1));
        assert_eq!(policy.backoff(1), Duration::from_millis(50));
        assert_eq!(policy.backoff(30), Duration::from_secs(2));
    }
}
