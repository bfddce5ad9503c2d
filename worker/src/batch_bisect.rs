//! What a sink does with a batch the warehouse refused as a whole (a constraint the pipeline
//! cannot know of, a value one engine takes and another does not): it commits the batch again
//! in halves, and the halves of any half refused, down to single rows. What commits, commits;
//! each row refused on its own is returned with the warehouse's reason, to be dead-lettered.
//!
//! Splitting is safe because every commit is fenced by version: rows of one key that end up in
//! different commits leave the newest, whatever their order, exactly as one commit would.
//! A batch of n rows with k refused rows takes at most about 2·k·log2(n) commits.

use proto::{CommitStats, WarehouseError};
use std::future::Future;
use std::ops::Range;

/// What became of a refused batch once split: what its commits did, and each row refused on its
/// own (its index in the batch) with the warehouse's reason.
#[derive(Debug, Default, PartialEq)]
pub struct Bisected {
    pub stats: CommitStats,
    pub refused: Vec<(usize, String)>,
}

/// Commits the `rows` rows of a batch the warehouse refused as one with `refusal`, in halves
/// until each refused part is a single row. `commit` commits the rows of a range of the batch
/// in one transaction (with the sink's retries). Any failure other than a refusal ends it: the
/// caller fails the batch (what already committed is fenced when the batch is read again).
pub async fn bisect<F, Fut>(rows: usize, refusal: String, mut commit: F) -> Result<Bisected, WarehouseError>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<CommitStats, WarehouseError>>,
{
    let mut out = Bisected::default();
    // Parts still refused, the earliest on top, so refused rows come out in batch order.
    let mut refused_parts = vec![(0..rows, refusal)];
    while let Some((part, why)) = refused_parts.pop() {
        if part.len() <= 1 {
            out.refused.extend(part.map(|i| (i, why.clone())));
            continue;
        }
        let middle = part.start + part.len() / 2;
        let mut halves_refused = Vec::new();
        for half in [part.start..middle, middle..part.end] {
            match commit(half.clone()).await {
                Ok(stats) => {
                    out.stats.upserted += stats.upserted;
                    out.stats.deleted += stats.deleted;
                    out.stats.fenced += stats.fenced;
                }
                Err(WarehouseError::Rejected(why)) => halves_refused.push((half, why)),
                Err(e) => return Err(e),
            }
        }
        refused_parts.extend(halves_refused.into_iter().rev());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::{Row, RowOp, Value, Version};

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("a runtime").block_on(f)
    }

    fn row(i: usize) -> Row {
        Row { op: RowOp::Upsert, version: Version::from_text("1"), values: vec![Value::Int(i as i64)] }
    }

    /// A warehouse that refuses any batch holding a bad row, naming the first, and remembers
    /// what it committed.
    struct Refusing {
        bad: Vec<bool>,
        committed: Vec<i64>,
        commits: usize,
    }

    impl Refusing {
        fn commit(&mut self, rows: &[Row]) -> Result<CommitStats, WarehouseError> {
            self.commits += 1;
            let ids: Vec<i64> = rows.iter().map(|r| if let Value::Int(i) = r.values[0] { i } else { -1 }).collect();
            if let Some(i) = ids.iter().find(|&&i| self.bad[i as usize]) {
                return Err(WarehouseError::Rejected(format!("row {i} breaks a check")));
            }
            self.committed.extend(&ids);
            Ok(CommitStats { upserted: ids.len() as u64, ..CommitStats::default() })
        }
    }

    proptest! {
        /// Whatever rows are bad, exactly those are refused (each with its own reason, in batch
        /// order), every other row commits once, and the commits stay within 2·k·log2(n) + 2.
        #[test]
        fn exactly_the_refused_rows_are_isolated(bad in prop::collection::vec(prop::bool::weighted(0.1), 1..200)) {
            let rows: Vec<Row> = (0..bad.len()).map(row).collect();
            let bad_rows: Vec<usize> = (0..bad.len()).filter(|&i| bad[i]).collect();
            prop_assume!(!bad_rows.is_empty());
            let mut w = Refusing { bad, committed: Vec::new(), commits: 0 };
            // As the sink does: the whole batch first, then its refusal split.
            let Err(WarehouseError::Rejected(refusal)) = w.commit(&rows) else { panic!("a bad row refuses the batch") };
            w.commits = 0;
            let out = run(bisect(rows.len(), refusal, |part| std::future::ready(w.commit(&rows[part])))).unwrap();
            let refused: Vec<usize> = out.refused.iter().map(|(i, _)| *i).collect();
            prop_assert_eq!(&refused, &bad_rows);
            for (i, why) in &out.refused {
                prop_assert_eq!(why, &format!("row {i} breaks a check"));
            }
            let mut committed = w.committed.clone();
            committed.sort_unstable();
            let good: Vec<i64> = (0..rows.len() as i64).filter(|i| !w.bad[*i as usize]).collect();
            prop_assert_eq!(committed, good.clone());
            prop_assert_eq!(out.stats.upserted, good.len() as u64);
            let bound = 2 * bad_rows.len() * (usize::BITS - rows.len().leading_zeros()) as usize + 2;
            prop_assert!(w.commits <= bound, "{} commits for {} bad of {}", w.commits, bad_rows.len(), rows.len());
        }
    }

    /// A failure other than a refusal ends the split: the caller fails the batch.
    #[test]
    fn an_outage_while_splitting_fails_the_batch() {
        let rows: Vec<Row> = (0..8).map(row).collect();
        let mut calls = 0;
        let out = run(bisect(rows.len(), "refused".into(), |_| {
            calls += 1;
            std::future::ready(if calls == 1 {
                Err(WarehouseError::Rejected("still".into()))
            } else {
                Err(WarehouseError::Unavailable("down".into()))
            })
        }));
        assert_eq!(out, Err(WarehouseError::Unavailable("down".into())));
    }
}
