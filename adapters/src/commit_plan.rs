//! The order of one batch commit, written once. SQLite, PostgreSQL and Redshift (Data API) each
//! run this plan in one transaction, doing only what is their own: binding the stage rows (or
//! writing them as literals), the transaction, how commits to a table take turns, the call.
//!
//! create the stage (→ index it, SQLite) → insert the batch's rows → drop staged rows with a
//! newer version of their key in the stage (→ then all but the last of equal versions, Redshift)
//! → take turns → drop staged rows not newer than the target's → or than a remembered delete →
//! delete the target rows being replaced → and their tombstones → insert the upserts → remember
//! the deletes → drop the stage. The rows the dedupes and fences drop are the commit's `fenced`,
//! the rows the two inserts write its `upserted` and `deleted`.
//!
//! On PostgreSQL, whose key indexes are unique, from the turn on: → drop staged rows not newer
//! than a remembered delete → insert the upserts, or update the target's older row of their key
//! (`ON CONFLICT`) → delete the target rows of newer deletes → remember the deletes the target
//! does not hold at an equal or newer version → forget the deletes newer upserts replace.

use crate::merge_sql::MergeSql;
use crate::sql_text::SqlError;
use proto::{CommitStats, Row};

/// One step of a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Create, index or drop the stage: no rows to count.
    Ddl(&'a str),
    /// Insert the batch's rows into the stage: bound (`MergeSql::bound_inserts`) or as literals
    /// (`MergeSql::literal_inserts`).
    StageRows,
    /// From here to the end of the transaction, commits to this table take turns: after the
    /// dedupe, before the target is read. Two commits of one key at once (a stale owner's replay,
    /// one key written from two shards) would otherwise each delete what they see and both
    /// insert.
    TakeTurns,
    /// A statement whose touched rows count toward `tally`.
    Run { sql: &'a str, tally: Tally },
}

/// What a statement's row count adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    Nothing,
    Fenced,
    Upserted,
    Deleted,
}

impl Tally {
    pub fn add(self, stats: &mut CommitStats, rows: u64) {
        match self {
            Tally::Nothing => {}
            Tally::Fenced => stats.fenced += rows,
            Tally::Upserted => stats.upserted += rows,
            Tally::Deleted => stats.deleted += rows,
        }
    }

    /// The stats of statements that ran in order: each one's tally with the rows it touched.
    pub fn stats(tallied: impl IntoIterator<Item = (Tally, u64)>) -> CommitStats {
        let mut stats = CommitStats::default();
        for (tally, rows) in tallied {
            tally.add(&mut stats, rows);
        }
        stats
    }
}

/// The steps of one commit to one table.
#[derive(Clone, Copy, Debug)]
pub struct CommitPlan<'a> {
    sql: &'a MergeSql,
}

impl<'a> CommitPlan<'a> {
    pub fn new(sql: &'a MergeSql) -> Self {
        Self { sql }
    }

    /// The steps in order. What differs by dialect is in the statements: only SQLite indexes
    /// the stage, only Redshift breaks ties in a second statement, only PostgreSQL (unique key
    /// indexes) merges by `ON CONFLICT`.
    pub fn steps(&self) -> impl Iterator<Item = Step<'a>> {
        let sql = self.sql;
        let run = |statement: &'a String, tally| Step::Run { sql: statement, tally };
        let merge = match &sql.upserts {
            None => vec![
                run(&sql.fence_by_target, Tally::Fenced),
                run(&sql.fence_by_tombstone, Tally::Fenced),
                run(&sql.delete_replaced, Tally::Nothing),
                run(&sql.delete_replaced_tombstones, Tally::Nothing),
                run(&sql.insert_upserts, Tally::Upserted),
                run(&sql.insert_tombstones, Tally::Deleted),
            ],
            Some(upserts) => vec![
                run(&sql.fence_by_tombstone, Tally::Fenced),
                run(&upserts.upsert_target, Tally::Upserted),
                run(&upserts.delete_deleted, Tally::Nothing),
                run(&upserts.upsert_tombstones, Tally::Deleted),
                run(&upserts.delete_revived_tombstones, Tally::Nothing),
            ],
        };
        [
            Some(Step::Ddl(&sql.create_stage)),
            sql.index_stage.as_deref().map(Step::Ddl),
            Some(Step::StageRows),
            Some(run(&sql.dedupe_stage, Tally::Fenced)),
            sql.dedupe_ties.as_ref().map(|ties| run(ties, Tally::Fenced)),
            Some(Step::TakeTurns),
        ]
        .into_iter()
        .flatten()
        .chain(merge)
        .chain([Step::Ddl(&sql.drop_stage)])
    }

    /// A commit's stats from its statements' tallies, `rows` staged. Merging by `ON CONFLICT`,
    /// the rows a conflict's version check skipped were fenced too: all that the upserts and the
    /// deletes did not write.
    pub fn stats(&self, tallied: CommitStats, rows: usize) -> CommitStats {
        match self.sql.upserts {
            None => tallied,
            Some(_) => {
                CommitStats { fenced: (rows as u64).saturating_sub(tallied.upserted + tallied.deleted), ..tallied }
            }
        }
    }

    /// The commit of `rows` as SQL text with literal values, for engines that take no parameters
    /// (the Redshift Data API's batches): the stage inserts in statements of at most
    /// `max_statement_bytes` each, the turns taken by `LOCK` when `take_turns`. Each statement
    /// comes with what its row count adds to ([`Tally::stats`]); run them in order in one
    /// transaction.
    pub fn literal(
        &self,
        rows: &[Row],
        max_statement_bytes: usize,
        take_turns: bool,
    ) -> Result<Vec<(String, Tally)>, SqlError> {
        Ok(self.with_stage(self.sql.literal_inserts(rows, max_statement_bytes)?, take_turns))
    }

    /// The commit as SQL text whose rows enter the stage by `stage` (literal INSERTs, or one
    /// `COPY` of a staged file), the turns taken by `LOCK` when `take_turns`.
    pub fn with_stage(&self, stage: Vec<String>, take_turns: bool) -> Vec<(String, Tally)> {
        let mut out = Vec::new();
        let mut stage = Some(stage);
        for step in self.steps() {
            match step {
                Step::Ddl(sql) => out.push((sql.to_owned(), Tally::Nothing)),
                Step::StageRows => {
                    out.extend(stage.take().into_iter().flatten().map(|statement| (statement, Tally::Nothing)));
                }
                Step::TakeTurns if take_turns => out.push((self.sql.lock_target.clone(), Tally::Nothing)),
                Step::TakeTurns => {}
                Step::Run { sql, tally } => out.push((sql.to_owned(), tally)),
            }
        }
        out
    }
}

impl MergeSql {
    /// The statements of [`CommitPlan::literal`] alone (what the conformance suite runs on
    /// PostgreSQL as Redshift would).
    pub fn literal_statements(
        &self,
        rows: &[Row],
        max_statement_bytes: usize,
        lock: bool,
    ) -> Result<Vec<String>, SqlError> {
        let all = CommitPlan::new(self).literal(rows, max_statement_bytes, lock)?;
        Ok(all.into_iter().map(|(statement, _)| statement).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;
    use crate::warehouse_ddl::tests::sample;

    /// An upsert of the sample table with every column `text`.
    fn row_of(text: &str) -> Row {
        let values = vec![proto::Value::Text(text.into()); sample().columns.len()];
        Row { op: proto::RowOp::Upsert, version: proto::Version::from_text("v1"), values }
    }

    fn run(sql: &str, tally: Tally) -> Step<'_> {
        Step::Run { sql, tally }
    }

    /// Every statement of `MergeSql` in the plan, in order, with a dialect's optional ones where
    /// it has them.
    #[test]
    fn the_plan_orders_every_statement() {
        let sql = MergeSql::new(&sample(), Dialect::Sqlite).unwrap();
        let steps: Vec<Step<'_>> = CommitPlan::new(&sql).steps().collect();
        assert_eq!(
            steps,
            [
                Step::Ddl(&sql.create_stage),
                Step::Ddl(sql.index_stage.as_deref().unwrap()),
                Step::StageRows,
                run(&sql.dedupe_stage, Tally::Fenced),
                Step::TakeTurns,
                run(&sql.fence_by_target, Tally::Fenced),
                run(&sql.fence_by_tombstone, Tally::Fenced),
                run(&sql.delete_replaced, Tally::Nothing),
                run(&sql.delete_replaced_tombstones, Tally::Nothing),
                run(&sql.insert_upserts, Tally::Upserted),
                run(&sql.insert_tombstones, Tally::Deleted),
                Step::Ddl(&sql.drop_stage),
            ]
        );
    }

    /// PostgreSQL merges by `ON CONFLICT` after the same stage, dedupe and turn: fenced by the
    /// tombstones, then the upserts, the deletes, the tombstones; what the upserts and deletes
    /// did not write is fenced.
    #[test]
    fn postgresql_merges_by_its_unique_key() {
        let sql = MergeSql::new(&sample(), Dialect::Postgres).unwrap();
        let upserts = sql.upserts.as_ref().unwrap();
        let plan = CommitPlan::new(&sql);
        assert_eq!(
            plan.steps().collect::<Vec<_>>(),
            [
                Step::Ddl(&sql.create_stage),
                Step::StageRows,
                run(&sql.dedupe_stage, Tally::Fenced),
                Step::TakeTurns,
                run(&sql.fence_by_tombstone, Tally::Fenced),
                run(&upserts.upsert_target, Tally::Upserted),
                run(&upserts.delete_deleted, Tally::Nothing),
                run(&upserts.upsert_tombstones, Tally::Deleted),
                run(&upserts.delete_revived_tombstones, Tally::Nothing),
                Step::Ddl(&sql.drop_stage),
            ]
        );
        assert!(upserts
            .upsert_target
            .contains("ON CONFLICT (\"site\", \"n\") DO UPDATE SET \"kwh\" = EXCLUDED.\"kwh\""));
        let tallied = CommitStats { fenced: 2, upserted: 5, deleted: 1 };
        assert_eq!(plan.stats(tallied, 10), CommitStats { fenced: 4, upserted: 5, deleted: 1 });
        let portable = MergeSql::new(&sample(), Dialect::Sqlite).unwrap();
        assert!(portable.upserts.is_none());
        assert_eq!(CommitPlan::new(&portable).stats(tallied, 10), tallied);
    }

    /// The literal form: the stage rows as INSERTs in the stage step, the lock as the turn only
    /// when asked for, and each statement's count read into its tally.
    #[test]
    fn the_literal_commit_locks_when_asked_and_tallies_each_count() {
        let sql = MergeSql::new(&sample(), Dialect::Redshift).unwrap();
        let rows = [row_of("k")];
        let plan = CommitPlan::new(&sql);
        let locked = plan.literal(&rows, 100 * 1024, true).unwrap();
        let statements: Vec<&str> = locked.iter().map(|(s, _)| s.as_str()).collect();
        let insert = statements[1];
        assert!(insert.starts_with("INSERT INTO \"charge \"\"sessions\"\"__stage\""), "{insert}");
        assert_eq!(
            statements,
            [
                sql.create_stage.as_str(),
                insert,
                sql.dedupe_stage.as_str(),
                sql.dedupe_ties.as_deref().unwrap(),
                sql.lock_target.as_str(),
                sql.fence_by_target.as_str(),
                sql.fence_by_tombstone.as_str(),
                sql.delete_replaced.as_str(),
                sql.delete_replaced_tombstones.as_str(),
                sql.insert_upserts.as_str(),
                sql.insert_tombstones.as_str(),
                sql.drop_stage.as_str(),
            ]
        );
        let unlocked: Vec<String> =
            plan.literal(&rows, 100 * 1024, false).unwrap().into_iter().map(|(s, _)| s).collect();
        let without_lock: Vec<&str> = statements.iter().copied().filter(|s| *s != sql.lock_target).collect();
        assert_eq!(unlocked, without_lock);
        // Counts 1, 2, 3, … in statement order: the dedupes' and fences' are fenced, the lock's
        // and the deletes' nothing.
        let stats = Tally::stats(locked.iter().map(|(_, tally)| *tally).zip(1..));
        assert_eq!(stats, CommitStats { fenced: 3 + 4 + 6 + 7, upserted: 10, deleted: 11 });
    }

    #[test]
    fn redshift_statements_have_no_correlated_or() {
        let sql = MergeSql::new(&sample(), Dialect::Redshift).unwrap();
        let rows = [row_of("k\\'")];
        let all = sql.literal_statements(&rows, 100 * 1024, false).unwrap();
        assert!(all.iter().all(|s| !s.contains(" OR ")), "{all:?}");
        assert!(all.iter().all(|s| !s.trim().is_empty()), "{all:?}");
        assert!(
            sql.dedupe_ties.is_some() && MergeSql::new(&sample(), Dialect::Postgres).unwrap().dedupe_ties.is_none()
        );
        assert!(all.iter().any(|s| s.contains("'k\\\\'''")), "backslash and quote doubled: {all:?}");
        assert!(sql.literal_statements(&rows, 50, false).is_err(), "a row over the statement limit is refused");
    }
}
