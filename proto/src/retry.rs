//! The one retry policy: exponential back-off with jitter (backon's), for calls whose error
//! says "retryable" (`run`) and for the waits actors keep themselves (`backoff`: a consumer's
//! failed reads, a failed consumer's restart). With jitter each wait is drawn between the
//! delay and twice it, so nodes that failed together do not retry together against one table
//! or one stream. The draws come from `fastrand`'s generator of the calling thread (seed it with
//! `fastrand::seed` to replay a run).

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first wait (before jitter); each next one doubles, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 6, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(2) }
    }
}

/// The waits of one run of failures, each between the delay and twice it.
#[derive(Debug)]
pub struct Backoff {
    waits: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        self.waits.next().unwrap_or(self.max)
    }
}

impl RetryPolicy {
    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
    }

    /// Waits that grow from `initial_backoff` to `max_backoff` and then stay there, whatever
    /// `max_attempts` says (the caller counts its attempts).
    pub fn backoff(&self) -> Backoff {
        Backoff { waits: self.builder().build(), max: self.max_backoff }
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or attempts run out.
    pub async fn run<T, E, F, Fut>(&self, is_retryable: impl Fn(&E) -> bool, op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let retries = self.max_attempts.saturating_sub(1) as usize;
        op.retry(self.builder().with_max_times(retries)).sleep(tokio::time::sleep).when(is_retryable).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_errors_and_stops_at_the_bound() {
        let policy = RetryPolicy::default();
        let mut calls = 0;
        let started = tokio::time::Instant::now();
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
        // Five waits of 50, 100, 200, 400 and 800 ms, each up to twice that with jitter.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1549) && waited <= Duration::from_millis(3101), "{waited:?}");
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
    }

    /// Each wait lies between its delay (doubling from the first, up to the last) and twice it,
    /// and two runs of failures do not wait alike.
    #[test]
    fn waits_double_up_to_the_bound_with_jitter() {
        let policy = RetryPolicy::default();
        let runs: Vec<Vec<Duration>> = (0..2)
            .map(|_| {
                let mut backoff = policy.backoff();
                (0..12).map(|_| backoff.next_wait()).collect()
            })
            .collect();
        // backon computes in f32 seconds: a microsecond either way.
        let slack = Duration::from_micros(1);
        for run in &runs {
            for (i, wait) in run.iter().enumerate() {
                let delay = (policy.initial_backoff * (1 << i)).min(policy.max_backoff);
                assert!(*wait + slack >= delay && *wait <= delay * 2 + slack, "wait {i}: {wait:?} for {delay:?}");
            }
        }
        assert_ne!(runs[0], runs[1], "jitter");
    }
}
