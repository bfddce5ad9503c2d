//! Joins: each join of a table looks its key up in the run's snapshot of its reference table.
//! A missing row is joined as nulls, waited for, or makes the record a dead letter, as the
//! join's `on_missing` says.

use super::config::OnMissing;
use super::plan::CompiledJoin;
use super::resolve::{Context, Unmapped};

/// Joins a table's reference rows into `ctx.joined`, in join order (later joins may key on
/// earlier ones). With `give_up`, a join that would wait makes a dead letter instead.
#[inline]
pub fn join_rows(joins: &[CompiledJoin], ctx: &mut Context<'_, '_>, give_up: bool) -> Result<(), Unmapped> {
    ctx.joined.clear();
    let snapshots = ctx.snapshots;
    for join in joins {
        let found = ctx.resolve(&join.key).key().and_then(|k| snapshots[join.snapshot].get(&k));
        let found = match (found, join.on_missing) {
            (Some(row), _) => Some(row),
            (None, OnMissing::Null) => None,
            (None, OnMissing::Wait) if !give_up => return Err(Unmapped::Wait(join.max_wait)),
            (None, OnMissing::DeadLetter | OnMissing::Wait) => {
                let key = ctx.resolve(&join.key);
                let key = key.key();
                let key = key.as_deref().unwrap_or("null");
                return Err(Unmapped::Dead(format!("no {} row for key {key}", join.cache.name)));
            }
        };
        ctx.joined.push(found);
    }
    Ok(())
}
