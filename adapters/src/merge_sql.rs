//! The statements of one batch commit for one table and dialect (SQLite, PostgreSQL, Redshift):
//! stage the batch (bound or as literals) → keep the latest row per key → drop staged rows that
//! are not newer than the target (or than a remembered delete) → delete the target rows being
//! replaced → insert the upserts → remember the deletes. Their order is written once, in
//! `commit_plan.rs`. The portable statements use no ON CONFLICT, no MERGE, no VALUES list as a
//! table, no DELETE … USING and no unique constraint (Redshift enforces none); PostgreSQL, whose
//! key indexes are unique, replaces the middle by `UpsertSql` (`INSERT … ON CONFLICT`, DELETE …
//! USING), a third of the index probes per row. Names and values enter the text only through
//! `sql_text.rs`.

use crate::dialect::Dialect;
use crate::sql_text::{quote_ident, values_text, SqlError};
use crate::warehouse_ddl::{check_schema, key_columns, tombstone_table, DELETED_AT};
use proto::{Row, RowOp, TableSchema, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Staged-row operation codes in the `_op` column.
pub const OP_UPSERT: &str = "U";
pub const OP_DELETE: &str = "D";

/// Every statement of a commit for one table, with identifiers already quoted.
#[derive(Clone, Debug)]
pub struct MergeSql {
    pub dialect: Dialect,
    /// Target columns, the version column, `_op`, `_ord`, as quoted in the stage.
    stage_columns: Vec<String>,
    pub create_stage: String,
    /// SQLite joins by nested loops: it needs an index on the stage's key (PostgreSQL and
    /// Redshift hash-join the EXISTS subqueries).
    pub index_stage: Option<String>,
    /// Latest row per key: drop rows with a newer version of their key in the stage…
    pub dedupe_stage: String,
    /// …then, among equal versions, all but the last staged. One statement with an OR on
    /// SQLite and PostgreSQL (`None` here); two on Redshift, which refuses correlated
    /// subqueries under OR.
    pub dedupe_ties: Option<String>,
    /// `LOCK` of the target and its tombstones, how the Data API's commits take turns when asked
    /// to (`CommitPlan::literal(…, take_turns = true)`): on Redshift under SNAPSHOT isolation
    /// (the default of serverless workgroups and of clusters created since May 2024) two commits
    /// inserting the same new key both succeed, so commits to a table must take turns.
    /// Redshift's LOCK is exclusive: readers wait during the merge.
    pub lock_target: String,
    /// Drop staged rows not newer than the target's row…
    pub fence_by_target: String,
    /// …or than a remembered delete (two statements: Redshift refuses correlated subqueries
    /// under OR).
    pub fence_by_tombstone: String,
    pub delete_replaced: String,
    pub delete_replaced_tombstones: String,
    pub insert_upserts: String,
    pub insert_tombstones: String,
    pub drop_stage: String,
    /// Where the key is unique in the target and the tombstones (PostgreSQL: `create_tables`
    /// makes both indexes unique), a commit merges by `ON CONFLICT` instead: one index probe per
    /// row for the upserts, against three (the fence, the delete of the replaced row, the insert).
    pub upserts: Option<UpsertSql>,
    stage: String,
    /// The target's name, unquoted.
    table: String,
}

/// The statements of a commit that merges by `INSERT … ON CONFLICT` on the key's unique index,
/// after the stage is deduplicated and fenced by the tombstones (as in the portable plan). A
/// staged row the target already holds at an equal or newer version is skipped by the
/// conflict's version check: fenced, counted as what is left of the batch after the upserts and
/// the deletes.
#[derive(Clone, Debug)]
pub struct UpsertSql {
    /// Insert each staged upsert, or update the target's row of its key if that is older.
    pub upsert_target: String,
    /// Delete the target rows a staged delete of a newer version removes…
    pub delete_deleted: String,
    /// …and remember each staged delete the target does not hold at an equal or newer version
    /// (a newer one than a remembered delete of its key replaces it).
    pub upsert_tombstones: String,
    /// A staged upsert newer than a remembered delete of its key ends the remembering.
    pub delete_revived_tombstones: String,
}

/// `a.k1 = b.k1 AND a.k2 = b.k2`
fn key_match(keys: &[String], a: &str, b: &str) -> String {
    keys.iter().map(|k| format!("{a}.{k} = {b}.{k}")).collect::<Vec<_>>().join(" AND ")
}

/// The values a row is staged with, in the stage's column order: its columns, then its version,
/// its operation and its place in the batch (`ord`).
pub(crate) fn stage_row(row: &Row, ord: usize) -> impl Iterator<Item = Cow<'_, Value>> {
    let op = if row.op == RowOp::Delete { OP_DELETE } else { OP_UPSERT };
    let own = [Value::Text(row.version.as_str().to_owned()), Value::Text(op.to_owned()), Value::Int(ord as i64)];
    row.values.iter().map(Cow::Borrowed).chain(own.into_iter().map(Cow::Owned))
}

impl MergeSql {
    pub fn new(schema: &TableSchema, dialect: Dialect) -> Result<Self, SqlError> {
        check_schema(schema)?;
        let target = quote_ident(&schema.name)?;
        let tombstones = quote_ident(&tombstone_table(&schema.name))?;
        let stage = quote_ident(&format!("{}__stage", schema.name))?;
        let stage_index = quote_ident(&format!("{}__stage_key", schema.name))?;
        let version = quote_ident(&schema.version_column)?;
        let keys = key_columns(schema)?;
        let columns: Vec<String> = schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Result<_, _>>()?;
        let mut typed: Vec<String> =
            schema.columns.iter().zip(&columns).map(|(c, q)| format!("{q} {}", dialect.column_type(c.ty))).collect();
        typed.push(format!("{version} {}", dialect.version_type()));
        typed.push(format!("\"_op\" {}", dialect.text_type()));
        typed.push(format!("\"_ord\" {}", dialect.int_type()));
        let mut stage_columns = columns.clone();
        stage_columns.extend([version.clone(), "\"_op\"".to_owned(), "\"_ord\"".to_owned()]);

        let newer = format!("\"n\".{version} > {stage}.{version}");
        let later_tie = format!("\"n\".{version} = {stage}.{version} AND \"n\".\"_ord\" > {stage}.\"_ord\"");
        let in_stage_where = |condition: &str| {
            format!("SELECT 1 FROM {stage} AS \"n\" WHERE {} AND ({condition})", key_match(&keys, "\"n\"", &stage))
        };
        let (dedupe_stage, dedupe_ties) = if dialect == Dialect::Redshift {
            (
                format!("DELETE FROM {stage} WHERE EXISTS ({})", in_stage_where(&newer)),
                Some(format!("DELETE FROM {stage} WHERE EXISTS ({})", in_stage_where(&later_tie))),
            )
        } else {
            (
                format!("DELETE FROM {stage} WHERE EXISTS ({})", in_stage_where(&format!("{newer} OR ({later_tie})"))),
                None,
            )
        };
        let held = |table: &str| {
            format!(
                "SELECT 1 FROM {table} AS \"t\" WHERE {} AND \"t\".{version} >= {stage}.{version}",
                key_match(&keys, "\"t\"", &stage)
            )
        };
        let in_stage =
            |table: &str| format!("SELECT 1 FROM {stage} AS \"s\" WHERE {}", key_match(&keys, "\"s\"", table));
        let cols = columns.join(", ");
        let key_list = keys.join(", ");
        let deleted_at = quote_ident(DELETED_AT)?;
        let upserts = (dialect == Dialect::Postgres).then(|| {
            let is_key = |i: usize| schema.key.contains(&i);
            let mut set: Vec<String> =
                (0..columns.len()).filter(|&i| !is_key(i)).map(|i| format!("{0} = EXCLUDED.{0}", columns[i])).collect();
            set.push(format!("{version} = EXCLUDED.{version}"));
            // A join, not `WHERE EXISTS`: the version filter across both sides keeps PostgreSQL
            // from driving a semi-join from the stage, and it would scan the table instead.
            let delete_staged = |op: &str, table: &str| {
                format!(
                    "DELETE FROM {table} AS \"x\" USING {stage} AS \"s\" WHERE \"s\".\"_op\" = '{op}' AND {} \
                     AND \"x\".{version} < \"s\".{version}",
                    key_match(&keys, "\"s\"", "\"x\"")
                )
            };
            UpsertSql {
                upsert_target: format!(
                    "INSERT INTO {target} AS \"t\" ({cols}, {version}) SELECT {cols}, {version} FROM {stage} \
                     WHERE \"_op\" = '{OP_UPSERT}' ON CONFLICT ({key_list}) DO UPDATE SET {} \
                     WHERE \"t\".{version} < EXCLUDED.{version}",
                    set.join(", ")
                ),
                delete_deleted: delete_staged(OP_DELETE, &target),
                upsert_tombstones: format!(
                    "INSERT INTO {tombstones} AS \"d\" ({key_list}, {version}) SELECT {key_list}, {version} \
                     FROM {stage} AS \"s\" WHERE \"s\".\"_op\" = '{OP_DELETE}' AND NOT EXISTS \
                     (SELECT 1 FROM {target} AS \"t\" WHERE {}) ON CONFLICT ({key_list}) DO UPDATE \
                     SET {version} = EXCLUDED.{version}, {deleted_at} = NULL WHERE \"d\".{version} < EXCLUDED.{version}",
                    key_match(&keys, "\"t\"", "\"s\""),
                    deleted_at = deleted_at
                ),
                delete_revived_tombstones: delete_staged(OP_UPSERT, &tombstones),
            }
        });
        Ok(Self {
            dialect,
            stage_columns,
            create_stage: format!("CREATE TEMP TABLE {stage} ({})", typed.join(", ")),
            index_stage: (dialect == Dialect::Sqlite).then(|| format!("CREATE INDEX {stage_index} ON {stage} ({key_list})")),
            dedupe_stage,
            dedupe_ties,
            lock_target: format!("LOCK {target}, {tombstones}"),
            fence_by_target: format!("DELETE FROM {stage} WHERE EXISTS ({})", held(&target)),
            fence_by_tombstone: format!("DELETE FROM {stage} WHERE EXISTS ({})", held(&tombstones)),
            delete_replaced: format!("DELETE FROM {target} WHERE EXISTS ({})", in_stage(&target)),
            delete_replaced_tombstones: format!("DELETE FROM {tombstones} WHERE EXISTS ({})", in_stage(&tombstones)),
            insert_upserts: format!(
                "INSERT INTO {target} ({cols}, {version}) SELECT {cols}, {version} FROM {stage} WHERE \"_op\" = '{OP_UPSERT}'"
            ),
            insert_tombstones: format!(
                "INSERT INTO {tombstones} ({key_list}, {version}) SELECT {key_list}, {version} FROM {stage} WHERE \"_op\" = '{OP_DELETE}'"
            ),
            drop_stage: format!("DROP TABLE {stage}"),
            upserts,
            stage,
            table: schema.name.clone(),
        })
    }

    /// The target's name, as the schema gives it (unquoted).
    pub(crate) fn table_name(&self) -> &str {
        &self.table
    }

    /// The stage's name, quoted.
    pub(crate) fn stage_name(&self) -> &str {
        &self.stage
    }

    /// The stage's columns, quoted, in `stage_row` order.
    pub(crate) fn stage_columns(&self) -> &[String] {
        &self.stage_columns
    }

    /// Values bound per staged row: the target's columns, the version, `_op`, `_ord`.
    pub fn params_per_row(&self) -> usize {
        self.stage_columns.len()
    }

    /// `COPY` of the stage's columns from the client in PostgreSQL's binary format (the row
    /// values of `stage_row`, in the stage's column order).
    pub fn copy_stage(&self) -> String {
        format!("COPY {} ({}) FROM STDIN (FORMAT binary)", self.stage, self.stage_columns.join(", "))
    }

    /// A multi-row INSERT into the stage for `rows` rows (at least one), placeholders numbered
    /// from 1.
    pub fn insert_stage(&self, rows: usize) -> String {
        debug_assert!(rows > 0, "an INSERT needs at least one row");
        let per = self.params_per_row();
        let tuples: Vec<String> = (0..rows)
            .map(|r| {
                let ps: Vec<String> = (1..=per).map(|i| self.dialect.placeholder(r * per + i)).collect();
                format!("({})", ps.join(", "))
            })
            .collect();
        format!("INSERT INTO {} ({}) VALUES {}", self.stage, self.stage_columns.join(", "), tuples.join(", "))
    }

    /// The batch's rows as stage INSERTs with placeholders, each binding at most `max_params`
    /// values (one row at least): each INSERT's SQL, and its values in placeholder order.
    pub fn bound_inserts<'s, 'r: 's>(
        &'s self,
        rows: &'r [Row],
        max_params: usize,
    ) -> impl Iterator<Item = (String, Vec<Cow<'r, Value>>)> + 's {
        let per_insert = self.rows_per_insert(max_params);
        rows.chunks(per_insert).enumerate().map(move |(chunk_index, chunk)| {
            let mut values = Vec::with_capacity(chunk.len() * self.params_per_row());
            for (i, row) in chunk.iter().enumerate() {
                values.extend(stage_row(row, chunk_index * per_insert + i));
            }
            (self.insert_stage(chunk.len()), values)
        })
    }

    /// The batch's rows as stage INSERTs with literal values (the Redshift Data API takes no
    /// parameters in a batch), in statements of at most `max_statement_bytes` each.
    pub fn literal_inserts(&self, rows: &[Row], max_statement_bytes: usize) -> Result<Vec<String>, SqlError> {
        let mut out = Vec::new();
        let head = format!("INSERT INTO {} ({}) VALUES ", self.stage, self.stage_columns.join(", "));
        let mut insert = String::new();
        let mut tuple = String::new();
        for (ord, row) in rows.iter().enumerate() {
            tuple.clear();
            let values: Vec<Value> = stage_row(row, ord).map(Cow::into_owned).collect();
            values_text([&values[..]], &mut tuple)?;
            if head.len() + tuple.len() > max_statement_bytes {
                return Err(SqlError::BadValue(format!(
                    "one row takes {} bytes of SQL, over the {max_statement_bytes}-byte statement limit",
                    tuple.len()
                )));
            }
            if !insert.is_empty() && insert.len() + 2 + tuple.len() > max_statement_bytes {
                out.push(std::mem::take(&mut insert));
            }
            if insert.is_empty() {
                insert.push_str(&head);
            } else {
                insert.push_str(", ");
            }
            insert.push_str(&tuple);
        }
        if !insert.is_empty() {
            out.push(insert);
        }
        Ok(out)
    }

    /// How many rows one stage INSERT may carry under a bound-parameter limit.
    pub fn rows_per_insert(&self, max_params: usize) -> usize {
        (max_params / self.params_per_row()).max(1)
    }
}

/// Each table's statements, built once per schema (again if a table's schema changes).
pub struct MergeSqlCache {
    dialect: Dialect,
    tables: Mutex<HashMap<String, (TableSchema, Arc<MergeSql>)>>,
}

impl MergeSqlCache {
    pub fn new(dialect: Dialect) -> Self {
        Self { dialect, tables: Mutex::new(HashMap::new()) }
    }

    /// The statements of `table`; refuses a schema the SQL cannot serve.
    pub fn get(&self, table: &TableSchema) -> Result<Arc<MergeSql>, SqlError> {
        // A panic while the lock was held left the map whole: it only inserts built statements.
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((schema, sql)) = tables.get(&table.name) {
            if schema == table {
                return Ok(sql.clone());
            }
        }
        let sql = Arc::new(MergeSql::new(table, self.dialect)?);
        tables.insert(table.name.clone(), (table.clone(), sql.clone()));
        Ok(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse_ddl::tests::sample;
    use proto::{Column, SqlType};

    /// The stage's own columns (`_op` text, `_ord` integer) on each engine.
    #[test]
    fn stage_columns_follow_the_dialect() {
        for (dialect, op, ord) in [
            (Dialect::Sqlite, "\"_op\" TEXT", "\"_ord\" INTEGER"),
            (Dialect::Postgres, "\"_op\" VARCHAR(256)", "\"_ord\" BIGINT"),
            (Dialect::Redshift, "\"_op\" VARCHAR(256)", "\"_ord\" BIGINT"),
        ] {
            let stage = MergeSql::new(&sample(), dialect).unwrap().create_stage;
            assert!(stage.contains(op) && stage.contains(ord), "{dialect:?}: {stage}");
        }
    }

    /// Each stage row carries its version, its operation (`U` or `D`) and its place in the batch,
    /// in the literal form and bound: the place counts on across INSERTs.
    #[test]
    fn stage_rows_carry_version_operation_and_order() {
        use proto::{Row, RowOp, Value, Version};
        let schema = TableSchema {
            name: "t".into(),
            columns: vec![Column::new("id", SqlType::Text)],
            key: vec![0],
            version_column: "_version".into(),
        };
        let sql = MergeSql::new(&schema, Dialect::Redshift).unwrap();
        let row = |op, id: &str| Row { op, version: Version::from_text("v1"), values: vec![Value::Text(id.into())] };
        let rows = [row(RowOp::Upsert, "a"), row(RowOp::Delete, "b")];
        let inserts = sql.literal_inserts(&rows, 100 * 1024).unwrap();
        assert_eq!(inserts.len(), 1, "{inserts:?}");
        assert!(inserts[0].starts_with("INSERT INTO \"t__stage\""), "{}", inserts[0]);
        assert!(inserts[0].ends_with("VALUES ('a', 'v1', 'U', 0), ('b', 'v1', 'D', 1)"), "{}", inserts[0]);
        // Rows share a statement up to its byte limit exactly, the ", " between them counted.
        let two = inserts[0].len();
        let stage_inserts = |max: usize| sql.literal_inserts(&rows, max).unwrap().len();
        assert_eq!((stage_inserts(two), stage_inserts(two - 1)), (1, 2));

        let sql = MergeSql::new(&schema, Dialect::Postgres).unwrap();
        let rows = [row(RowOp::Upsert, "a"), row(RowOp::Delete, "b"), row(RowOp::Upsert, "c")];
        let bound: Vec<_> = sql.bound_inserts(&rows, 2 * sql.params_per_row()).collect();
        let text = |v: &str| Cow::Owned(Value::Text(v.into()));
        assert_eq!(bound.len(), 2);
        assert_eq!(bound[0].0, sql.insert_stage(2));
        assert_eq!(
            bound[0].1,
            [
                text("a"),
                text("v1"),
                text("U"),
                Cow::Owned(Value::Int(0)),
                text("b"),
                text("v1"),
                text("D"),
                Cow::Owned(Value::Int(1))
            ]
        );
        assert_eq!(bound[1], (sql.insert_stage(1), vec![text("c"), text("v1"), text("U"), Cow::Owned(Value::Int(2))]));
    }

    #[test]
    fn statements_use_placeholders_and_quoted_names() {
        let schema = TableSchema {
            name: "sessions".into(),
            columns: vec![
                Column { name: "id".into(), ty: SqlType::Text },
                Column { name: "kwh".into(), ty: SqlType::Double },
            ],
            key: vec![0],
            version_column: "_version".into(),
        };
        let sql = MergeSql::new(&schema, Dialect::Postgres).unwrap();
        assert_eq!(sql.params_per_row(), 5);
        assert_eq!(
            sql.insert_stage(2),
            "INSERT INTO \"sessions__stage\" (\"id\", \"kwh\", \"_version\", \"_op\", \"_ord\") \
             VALUES ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)"
        );
        assert_eq!(sql.rows_per_insert(32_766), 6_553);
        assert!(sql.fence_by_tombstone.contains("\"sessions__deleted\""));
        for s in [&sql.dedupe_stage, &sql.fence_by_target, &sql.delete_replaced, &sql.insert_upserts] {
            assert!(!s.contains("ON CONFLICT") && !s.contains("MERGE") && !s.contains("USING"), "{s}");
        }
    }

    /// Text of exactly `bytes` bytes: ASCII `a`s, then as many `c` as fit.
    fn text_of(bytes: usize, c: char) -> String {
        let n = bytes / c.len_utf8();
        let text = format!("{}{}", "a".repeat(bytes - n * c.len_utf8()), c.to_string().repeat(n));
        assert_eq!(text.len(), bytes);
        text
    }

    /// Data API statements are filled by bytes whatever the characters: a statement of multi-byte
    /// text fits a limit of its byte length and not one byte less; rows pack into statements of
    /// at most the limit, each row in one; and a row at the pipeline's limits (90,000 bytes as
    /// SQL, a 256-byte version, both multi-byte) fits one statement of the Redshift sink.
    #[test]
    fn statements_are_filled_by_bytes_of_multibyte_text() {
        use proto::{Row, RowOp, Value, Version};
        let text = |name: &str| Column::new(name, SqlType::Text);
        let schema = TableSchema {
            name: "notes".into(),
            columns: vec![text("id"), text("a"), text("b")],
            key: vec![0],
            version_column: "_version".into(),
        };
        let sql = MergeSql::new(&schema, Dialect::Redshift).unwrap();
        let inserts = |rows: &[Row], max: usize| sql.literal_inserts(rows, max);
        for c in ['é', '€', '𝄞'] {
            let row = |id: usize, a: usize, b: usize, version: &str| Row {
                op: RowOp::Upsert,
                version: Version::from_text(version),
                values: vec![Value::Text(id.to_string()), Value::Text(text_of(a, c)), Value::Text(text_of(b, c))],
            };
            let one = [row(0, 20_000, 10_000, "v")];
            let bytes = inserts(&one, usize::MAX).unwrap()[0].len();
            assert!(inserts(&one, bytes).is_ok(), "{c}: a statement of {bytes} bytes fits {bytes}");
            assert!(inserts(&one, bytes - 1).is_err(), "{c}: a row of {bytes} bytes is refused under {}", bytes - 1);
            let rows: Vec<Row> = (0..10).map(|i| row(i, 20_000 + i, 10_000, "v")).collect();
            let max = crate::redshift_data::MAX_STATEMENT_BYTES;
            let packed = inserts(&rows, max).unwrap();
            assert!(
                packed.iter().all(|s| s.len() <= max),
                "{c}: {:?}",
                packed.iter().map(String::len).collect::<Vec<_>>()
            );
            for r in &rows {
                let Value::Text(a) = &r.values[1] else { unreachable!() };
                assert_eq!(packed.iter().filter(|s| s.contains(&format!("'{a}'"))).count(), 1, "{c}: each row once");
            }
            // 3 bytes of quoted id, the two texts with their quotes: 90,000 bytes as SQL.
            let widest = row(0, 44_996, 44_997, &text_of(proto::MAX_VERSION_BYTES, c));
            assert_eq!(proto::unsendable_row(&widest.values), None, "{c}");
            assert!(proto::unsendable_row(&row(0, 44_996, 44_998, "v").values).is_some(), "{c}");
            let statements = inserts(std::slice::from_ref(&widest), max).unwrap();
            assert!(statements.len() == 1 && statements[0].len() <= max, "{c}: {}", statements[0].len());
        }
    }

    #[test]
    fn every_statement_is_portable_and_compares_keys_only() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let sql = MergeSql::new(&sample(), dialect).unwrap();
            let steps = [
                &sql.dedupe_stage,
                &sql.fence_by_target,
                &sql.fence_by_tombstone,
                &sql.delete_replaced,
                &sql.delete_replaced_tombstones,
                &sql.insert_upserts,
                &sql.insert_tombstones,
            ];
            for s in steps {
                for banned in ["ON CONFLICT", "MERGE", "USING", "VALUES", "UNIQUE", "kwh\" ="] {
                    assert!(!s.contains(banned), "{banned} in {s}");
                }
            }
            for s in &steps[..5] {
                assert!(s.contains(".\"site\" = ") && s.contains(".\"n\" = "), "{s}");
            }
            let insert = sql.insert_stage(2);
            let last = dialect.placeholder(2 * sql.params_per_row());
            assert!(insert.ends_with(&format!("{last})")), "{insert}");
            for limit in [1, 8, 100, 32_766] {
                let rows = sql.rows_per_insert(limit);
                assert!(rows >= 1 && (rows * sql.params_per_row() <= limit || rows == 1));
            }
        }
    }

    /// `MergeSql::new` checks the schema first (`warehouse_ddl::check_schema` is tested there).
    #[test]
    fn schemas_the_sql_cannot_serve_are_refused() {
        let mut keyless = sample();
        keyless.key.clear();
        assert!(MergeSql::new(&keyless, Dialect::Sqlite).is_err());
    }
}
