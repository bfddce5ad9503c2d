//! Row building: one table's row of one change (its columns resolved, typed, transformed and
//! checked against what a warehouse stores), and the delete of the old key first when an
//! update moved the key.

use super::config::{Format, Transform, VersionSource};
use super::decode::ChangeOp;
use super::joins::join_rows;
use super::plan::{CompiledTable, Plan, Source};
use super::resolve::{record_field, Context, Unmapped};
use super::transform::mask_owned;
use crate::record_mapper::{TableId, Target};
use proto::{Row, RowOp, Value};
use serde_json::value::RawValue;

/// The rows of one change for one table, appended to `out`: a delete of the old key first
/// when the change moved the key.
#[inline]
pub fn table_rows(
    plan: &Plan,
    table: &CompiledTable,
    id: TableId,
    ctx: &mut Context<'_, '_>,
    give_up: bool,
    out: &mut Vec<(Target, Row)>,
) -> Result<(), Unmapped> {
    if let Some(before) = &ctx.change.before {
        let key_moved = table.schema.key.iter().any(|&i| match &table.columns[i].source {
            Source::Record(slot, path) => {
                let old = record_field(before, *slot, path).map(RawValue::get);
                old.is_some() && old != record_field(ctx.slots, *slot, path).map(RawValue::get)
            }
            _ => false,
        });
        if key_moved && ctx.change.op == ChangeOp::Upsert {
            let data = ctx.slots;
            ctx.slots = before;
            let old = row(plan, table, ctx, ChangeOp::Delete, give_up);
            ctx.slots = data;
            out.push((Target::Table(id), old?));
        }
    }
    let row = row(plan, table, ctx, ctx.change.op, give_up)?;
    out.push((Target::Table(id), row));
    Ok(())
}

/// One row: an upsert of every column, or a delete that carries the key columns only.
#[inline]
fn row(
    plan: &Plan,
    table: &CompiledTable,
    ctx: &mut Context<'_, '_>,
    op: ChangeOp,
    give_up: bool,
) -> Result<Row, Unmapped> {
    let deleting = op == ChangeOp::Delete;
    if !deleting {
        join_rows(&table.joins, ctx, give_up)?;
    }
    let dead = |why: String| Err(Unmapped::Dead(why));
    let mut values = Vec::with_capacity(table.columns.len());
    for (i, column) in table.columns.iter().enumerate() {
        let is_key = table.schema.key.contains(&i);
        if deleting && !is_key {
            values.push(Value::Null);
            continue;
        }
        let value = match ctx.resolve(&column.source).typed(column.ty) {
            Ok(v) => v,
            Err(e) => return dead(format!("column {:?}: {e}", column.name)),
        };
        let value = match (column.transform, value) {
            (Some(Transform::Mask), Value::Text(s)) => Value::Text(mask_owned(s)),
            (Some(Transform::Tokenize), Value::Text(s)) => {
                Value::Text(plan.token_key.as_ref().expect("checked at start").tokenize(&s))
            }
            (_, v) => v,
        };
        if is_key && value == Value::Null {
            return dead(format!("key column {:?} is missing", column.name));
        }
        if let Some(why) = match &value {
            Value::Text(s) => proto::unstorable_text(s),
            _ => None,
        } {
            return dead(format!("column {:?}: {why}", column.name));
        }
        values.push(value);
    }
    let version = match table.version {
        VersionSource::Source => ctx.change.version.clone(),
        // A JSON change's version is already the record's position.
        VersionSource::Sequence if plan.format == Format::Json => ctx.change.version.clone(),
        VersionSource::Sequence => ctx.record.position.version(),
    };
    if let Some(why) = proto::unsendable_row(&values) {
        return dead(why);
    }
    if version.as_str().len() > proto::MAX_VERSION_BYTES {
        let len = version.as_str().len();
        return dead(format!("its version is {len} bytes, more than {}", proto::MAX_VERSION_BYTES));
    }
    Ok(Row { op: if deleting { RowOp::Delete } else { RowOp::Upsert }, version, values })
}
