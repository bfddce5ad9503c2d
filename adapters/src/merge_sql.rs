//! The SQL of one batch commit, shared by every SQL warehouse (SQLite, PostgreSQL, Redshift).
//!
//! One transaction: stage the batch → keep the latest row per key → drop staged rows that are
//! not newer than the target (or than a remembered delete) → delete the target rows being
//! replaced → insert the upserts → remember the deletes. Only portable SQL: no ON CONFLICT, no
//! MERGE, no VALUES list as a table, no DELETE … USING, no reliance on unique constraints
//! (Redshift does not enforce them). Identifiers go through [`quote_ident`]; values never appear
//! in the SQL text, only placeholders.

use proto::{SqlType, TableSchema};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("invalid sql identifier {0:?}: empty or containing NUL")]
    BadIdentifier(String),
    #[error("value cannot be written as sql: {0}")]
    BadValue(String),
    #[error("invalid schema for table {table:?}: {reason}")]
    BadSchema { table: String, reason: String },
}

/// Names the stage adds next to the target's columns.
const STAGE_COLUMNS: [&str; 2] = ["_op", "_ord"];

/// Refuses schemas the SQL cannot serve: no key, a key index out of range or repeated, or two
/// columns (the version column and the stage's `_op`/`_ord` included) with the same name. Names
/// are compared ignoring ASCII case, since SQLite and Redshift (by default) do.
fn check_schema(schema: &TableSchema) -> Result<(), SqlError> {
    let bad = |reason: String| Err(SqlError::BadSchema { table: schema.name.clone(), reason });
    if schema.key.is_empty() {
        return bad("no key column".into());
    }
    for (n, &i) in schema.key.iter().enumerate() {
        if i >= schema.columns.len() {
            return bad(format!("key index {i} is out of range ({} columns)", schema.columns.len()));
        }
        if schema.key[..n].contains(&i) {
            return bad(format!("key index {i} is repeated"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let names = schema.columns.iter().map(|c| c.name.as_str()).chain([schema.version_column.as_str()]);
    for name in names.chain(STAGE_COLUMNS) {
        quote_ident(name)?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return bad(format!("column name {name:?} is used twice (or is reserved)"));
        }
    }
    Ok(())
}

/// The one function that puts a name into SQL: double quotes, embedded quotes doubled.
pub fn quote_ident(name: &str) -> Result<String, SqlError> {
    if name.is_empty() || name.contains('\0') {
        return Err(SqlError::BadIdentifier(name.to_owned()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// The one function that puts a value into SQL text (for the Redshift Data API's batches, which
/// take no parameters): NULL, TRUE/FALSE, integers, finite floats, timestamps of years 1–9999
/// as absolute `TIMESTAMP '…'` literals, and strings single-quoted with quotes and backslashes
/// doubled. Redshift reads a backslash in a string literal as an escape (as PostgreSQL does with
/// `standard_conforming_strings = off`), so an undoubled one could swallow the closing quote;
/// doubled, the text reads back exactly. NUL, which neither engine can store, is refused. On
/// `Err`, `out` may hold part of the literal: the caller discards it.
pub fn sql_literal(value: &proto::Value, out: &mut String) -> Result<(), SqlError> {
    use std::fmt::Write;
    match value {
        proto::Value::Null => out.push_str("NULL"),
        proto::Value::Bool(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
        proto::Value::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
        // The shortest text that reads back as the same double. A bare literal is read as
        // NUMERIC first, which has no -0 and, on Redshift, only 38 digits: exponents and -0 go
        // through a cast from text, which reads them as a double directly.
        proto::Value::Float(f) if f.is_finite() => {
            let mut buffer = ryu::Buffer::new();
            let text = buffer.format_finite(*f);
            if text.contains('e') || text == "-0.0" {
                let _ = write!(out, "CAST('{text}' AS DOUBLE PRECISION)");
            } else {
                out.push_str(text);
            }
        }
        proto::Value::Float(f) => return Err(SqlError::BadValue(format!("{f} is not a finite number"))),
        proto::Value::Timestamp(ms) => {
            // An absolute literal: an interval of whole seconds overflows 32 bits past 2038
            // on Redshift and on PostgreSQL before 15.
            if !proto::TIMESTAMP_RANGE.contains(ms) {
                return Err(SqlError::BadValue(format!("timestamp {ms} ms is outside years 1 to 9999")));
            }
            out.push_str("TIMESTAMP '");
            proto::civil::push_datetime_ms(*ms, out);
            out.push('\'');
        }
        proto::Value::Text(s) => {
            out.reserve(s.len() + 2);
            out.push('\'');
            let mut rest = s.as_str();
            // One vectorized scan finds what needs doubling and what is refused.
            while let Some(i) = memchr::memchr3(b'\'', b'\\', 0, rest.as_bytes()) {
                if rest.as_bytes()[i] == 0 {
                    return Err(SqlError::BadValue("text holds a NUL character".into()));
                }
                out.push_str(&rest[..=i]);
                out.push_str(&rest[i..=i]);
                rest = &rest[i + 1..];
            }
            out.push_str(rest);
            out.push('\'');
        }
    }
    Ok(())
}

/// `(v, v, …), (v, v, …)` for rows given as value slices: the literal form of a stage insert.
pub fn values_text<'a>(rows: impl IntoIterator<Item = &'a [proto::Value]>, out: &mut String) -> Result<(), SqlError> {
    for (i, row) in rows.into_iter().enumerate() {
        out.push_str(if i == 0 { "(" } else { ", (" });
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            sql_literal(v, out)?;
        }
        out.push(')');
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    /// Amazon Redshift (through the Data API): PostgreSQL's types, no COLLATE clause, no
    /// correlated subquery under OR.
    Redshift,
}

impl Dialect {
    fn column_type(self, ty: SqlType) -> &'static str {
        match (self, ty) {
            (Dialect::Sqlite, SqlType::Boolean | SqlType::BigInt | SqlType::Timestamp) => "INTEGER",
            (Dialect::Sqlite, SqlType::Double) => "REAL",
            (Dialect::Sqlite, SqlType::Text) => "TEXT",
            (Dialect::Postgres | Dialect::Redshift, SqlType::Boolean) => "BOOLEAN",
            (Dialect::Postgres | Dialect::Redshift, SqlType::BigInt) => "BIGINT",
            (Dialect::Postgres | Dialect::Redshift, SqlType::Double) => "DOUBLE PRECISION",
            // `proto::MAX_TEXT_BYTES`: the pipeline dead-letters longer text.
            (Dialect::Postgres | Dialect::Redshift, SqlType::Text) => "VARCHAR(65535)",
            (Dialect::Postgres | Dialect::Redshift, SqlType::Timestamp) => "TIMESTAMP",
        }
    }

    /// Versions compare byte by byte: on PostgreSQL that needs the "C" collation whatever the
    /// database's default is; Redshift's default collation already compares bytes.
    fn version_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "TEXT",
            Dialect::Postgres => "VARCHAR(256) COLLATE \"C\"",
            Dialect::Redshift => "VARCHAR(256)",
        }
    }

    fn text_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "TEXT",
            Dialect::Postgres | Dialect::Redshift => "VARCHAR(256)",
        }
    }

    fn int_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER",
            Dialect::Postgres | Dialect::Redshift => "BIGINT",
        }
    }

    /// The `n`-th placeholder (1-based). Redshift batches carry no parameters: their values
    /// are literals (`sql_literal`).
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres | Dialect::Redshift => format!("${n}"),
        }
    }
}

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
    /// `LOCK` of the target and its tombstones, for `literal_statements(…, lock = true)`: on
    /// Redshift under SNAPSHOT isolation (the default of serverless workgroups and of clusters
    /// created since May 2024) two commits inserting the same new key both succeed, so commits
    /// to a table must take turns. Redshift's LOCK is exclusive: readers wait during the merge.
    lock_target: String,
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
    stage: String,
}

/// The name of the table remembering deletes of `table`.
pub fn tombstone_table(table: &str) -> String {
    format!("{table}__deleted")
}

/// The tables `create_tables` makes, each with the columns the sink writes: a table that
/// already existed must have them (`missing_columns`).
pub fn expected_columns(schema: &TableSchema) -> Vec<(String, Vec<String>)> {
    let mut target: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
    target.push(schema.version_column.clone());
    let mut tombstones: Vec<String> = schema.key.iter().map(|&i| schema.columns[i].name.clone()).collect();
    tombstones.push(schema.version_column.clone());
    vec![(schema.name.clone(), target), (tombstone_table(&schema.name), tombstones)]
}

/// Checks an existing table's columns (`existing`, as the catalog names them) against those the
/// sink writes: a table made by hand or by another version fails at start, naming what it
/// lacks, instead of having every batch refused.
pub fn missing_columns(table: &str, wanted: &[String], existing: &[String]) -> Result<(), SqlError> {
    let missing: Vec<&String> = wanted.iter().filter(|c| !existing.contains(c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(SqlError::BadSchema {
        table: table.to_owned(),
        reason: format!(
            "the table exists without column(s) {} (made by hand or by another version): add them or drop the table",
            missing.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// For engines whose catalog the sink cannot read back (the Data API returns no rows to it):
/// one `SELECT <every column the sink writes> … WHERE 1 = 0` per table, which fails naming
/// a column the table lacks.
pub fn column_probes(schema: &TableSchema) -> Result<Vec<String>, SqlError> {
    expected_columns(schema)
        .into_iter()
        .map(|(table, columns)| {
            let columns: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect::<Result<_, _>>()?;
            Ok(format!("SELECT {} FROM {} WHERE 1 = 0", columns.join(", "), quote_ident(&table)?))
        })
        .collect()
}

/// DDL that creates the target and its tombstone table if absent (with a non-unique key index
/// where the engine has indexes).
pub fn create_tables(schema: &TableSchema, dialect: Dialect) -> Result<Vec<String>, SqlError> {
    check_schema(schema)?;
    let target = quote_ident(&schema.name)?;
    let tombstones = quote_ident(&tombstone_table(&schema.name))?;
    let version = quote_ident(&schema.version_column)?;
    let mut columns = Vec::new();
    for c in &schema.columns {
        columns.push(format!("{} {}", quote_ident(&c.name)?, dialect.column_type(c.ty)));
    }
    let keys = key_columns(schema)?;
    let key_defs: Vec<String> = schema.key.iter().map(|&i| columns[i].clone()).collect();
    let mut out = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {target} ({}, {version} {} NOT NULL)",
            columns.join(", "),
            dialect.version_type()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {tombstones} ({}, {version} {} NOT NULL)",
            key_defs.join(", "),
            dialect.version_type()
        ),
    ];
    if dialect == Dialect::Sqlite {
        out.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {target} ({})",
            quote_ident(&format!("{}__key", schema.name))?,
            keys.join(", ")
        ));
        out.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {tombstones} ({})",
            quote_ident(&format!("{}__deleted_key", schema.name))?,
            keys.join(", ")
        ));
    }
    Ok(out)
}

fn key_columns(schema: &TableSchema) -> Result<Vec<String>, SqlError> {
    schema.key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect()
}

/// `a.k1 = b.k1 AND a.k2 = b.k2`
fn key_match(keys: &[String], a: &str, b: &str) -> String {
    keys.iter().map(|k| format!("{a}.{k} = {b}.{k}")).collect::<Vec<_>>().join(" AND ")
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
            stage,
        })
    }

    /// Values bound per staged row: the target's columns, the version, `_op`, `_ord`.
    pub fn params_per_row(&self) -> usize {
        self.stage_columns.len()
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

    /// The whole commit of `rows` as SQL text with literal values (the Redshift Data API takes
    /// no parameters in a batch): create the stage, insert the rows in statements of at most
    /// `max_statement_bytes` each, then dedupe, (with `lock`, lock the target and tombstones,)
    /// fence, replace, remember deletes, drop the stage. Run in order in one transaction.
    pub fn literal_statements(
        &self,
        rows: &[proto::Row],
        max_statement_bytes: usize,
        lock: bool,
    ) -> Result<Vec<String>, SqlError> {
        let mut out = vec![self.create_stage.clone()];
        out.extend(self.index_stage.clone());
        let head = format!("INSERT INTO {} ({}) VALUES ", self.stage, self.stage_columns.join(", "));
        let mut insert = String::new();
        let mut tuple = String::new();
        for (ord, row) in rows.iter().enumerate() {
            tuple.clear();
            let op = if row.op == proto::RowOp::Delete { OP_DELETE } else { OP_UPSERT };
            let extra = [
                proto::Value::Text(row.version.as_str().to_owned()),
                proto::Value::Text(op.to_owned()),
                proto::Value::Int(ord as i64),
            ];
            let values: Vec<proto::Value> = row.values.iter().cloned().chain(extra).collect();
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
        out.push(self.dedupe_stage.clone());
        out.extend(self.dedupe_ties.clone());
        if lock {
            out.push(self.lock_target.clone());
        }
        out.extend([
            self.fence_by_target.clone(),
            self.fence_by_tombstone.clone(),
            self.delete_replaced.clone(),
            self.delete_replaced_tombstones.clone(),
            self.insert_upserts.clone(),
            self.insert_tombstones.clone(),
            self.drop_stage.clone(),
        ]);
        Ok(out)
    }

    /// How many rows one stage INSERT may carry under a bound-parameter limit.
    pub fn rows_per_insert(&self, max_params: usize) -> usize {
        (max_params / self.params_per_row()).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Column;

    #[test]
    fn identifiers_are_quoted_once_and_safely() {
        assert_eq!(quote_ident("kWhDelivered").unwrap(), "\"kWhDelivered\"");
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_ident("x\"; DROP TABLE t; --").unwrap(), "\"x\"\"; DROP TABLE t; --\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
    }

    #[test]
    fn redshift_sql_has_no_collate_and_no_correlated_or() {
        let ddl = create_tables(&sample(), Dialect::Redshift).unwrap().join("; ");
        assert!(!ddl.contains("COLLATE") && ddl.contains("VARCHAR(256)"), "{ddl}");
        // Text columns hold what the pipeline lets through (`proto::unstorable_text`).
        assert!(ddl.contains(&format!("VARCHAR({})", proto::MAX_TEXT_BYTES)), "{ddl}");
        assert!(ddl.contains(&format!("\"_version\" VARCHAR({})", proto::MAX_VERSION_BYTES)), "{ddl}");
        let sql = MergeSql::new(&sample(), Dialect::Redshift).unwrap();
        let rows = [proto::Row {
            op: proto::RowOp::Upsert,
            version: proto::Version::from_text("v1"),
            values: vec![proto::Value::Text("k\\'".into()); sample().columns.len()],
        }];
        let all = sql.literal_statements(&rows, 100 * 1024, false).unwrap();
        assert!(all.iter().all(|s| !s.contains(" OR ")), "{all:?}");
        assert!(
            sql.dedupe_ties.is_some() && MergeSql::new(&sample(), Dialect::Postgres).unwrap().dedupe_ties.is_none()
        );
        assert!(all.iter().any(|s| s.contains("'k\\\\'''")), "backslash and quote doubled: {all:?}");
        assert!(sql.literal_statements(&rows, 50, false).is_err(), "a row over the statement limit is refused");
    }

    /// What an existing table must have, how its lack is named, how the Data API probes for it,
    /// and the stage's own columns (`_op` text, `_ord` integer) on each engine.
    #[test]
    fn expected_columns_are_checked_probed_and_staged() {
        let schema = TableSchema {
            name: "t".into(),
            columns: vec![Column::new("id", SqlType::Text), Column::new("n", SqlType::BigInt)],
            key: vec![0],
            version_column: "_version".into(),
        };
        let names = |list: &[&str]| list.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            expected_columns(&schema),
            vec![
                ("t".to_owned(), names(&["id", "n", "_version"])),
                ("t__deleted".to_owned(), names(&["id", "_version"]))
            ]
        );
        let wanted = names(&["id", "n", "_version"]);
        assert!(missing_columns("t", &wanted, &names(&["_version", "n", "id", "extra"])).is_ok());
        let e = missing_columns("t", &wanted, &names(&["id"])).unwrap_err().to_string();
        assert!(e.contains("without column(s) \"n\", \"_version\""), "{e}");
        assert_eq!(
            column_probes(&schema).unwrap(),
            vec![
                "SELECT \"id\", \"n\", \"_version\" FROM \"t\" WHERE 1 = 0".to_owned(),
                "SELECT \"id\", \"_version\" FROM \"t__deleted\" WHERE 1 = 0".to_owned(),
            ]
        );
        for (dialect, op, ord) in [
            (Dialect::Sqlite, "\"_op\" TEXT", "\"_ord\" INTEGER"),
            (Dialect::Postgres, "\"_op\" VARCHAR(256)", "\"_ord\" BIGINT"),
            (Dialect::Redshift, "\"_op\" VARCHAR(256)", "\"_ord\" BIGINT"),
        ] {
            let stage = MergeSql::new(&schema, dialect).unwrap().create_stage;
            assert!(stage.contains(op) && stage.contains(ord), "{dialect:?}: {stage}");
        }
    }

    /// In the literal path each stage row carries its version, its operation (`U` or `D`) and
    /// its place in the batch, and no statement is empty.
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
        let all = sql.literal_statements(&[row(RowOp::Upsert, "a"), row(RowOp::Delete, "b")], 100 * 1024, false);
        let all = all.unwrap();
        assert!(all.iter().all(|s| !s.trim().is_empty()), "{all:?}");
        let inserts: Vec<&String> = all.iter().filter(|s| s.starts_with("INSERT INTO \"t__stage\"")).collect();
        assert_eq!(inserts.len(), 1, "{all:?}");
        assert!(inserts[0].ends_with("VALUES ('a', 'v1', 'U', 0), ('b', 'v1', 'D', 1)"), "{}", inserts[0]);
        // Rows share a statement up to its byte limit exactly, the ", " between them counted.
        let two = inserts[0].len();
        let stage_inserts = |max: usize| {
            let all = sql.literal_statements(&[row(RowOp::Upsert, "a"), row(RowOp::Delete, "b")], max, false);
            all.unwrap().into_iter().filter(|s| s.starts_with("INSERT INTO \"t__stage\"")).count()
        };
        assert_eq!((stage_inserts(two), stage_inserts(two - 1)), (1, 2));
    }

    #[test]
    fn literals_are_escaped_by_one_function() {
        use proto::Value;
        let mut out = String::new();
        let row = [
            Value::Null,
            Value::Bool(true),
            Value::Int(-7),
            Value::Float(0.1),
            Value::Text("it's'; DROP TABLE t; --\\".into()),
            Value::Timestamp(1_500),
        ];
        values_text([&row[..], &row[..1]], &mut out).unwrap();
        assert_eq!(
            out,
            "(NULL, TRUE, -7, 0.1, 'it''s''; DROP TABLE t; --\\\\', TIMESTAMP '1970-01-01 00:00:01.500'), (NULL)"
        );
        let mut before_epoch = String::new();
        sql_literal(&Value::Timestamp(-1_500), &mut before_epoch).unwrap();
        assert_eq!(before_epoch, "TIMESTAMP '1969-12-31 23:59:58.500'");
        for (ms, text) in [
            (2_147_483_648_000, "TIMESTAMP '2038-01-19 03:14:08.000'"),
            (951_782_401_123, "TIMESTAMP '2000-02-29 00:00:01.123'"),
            (*proto::TIMESTAMP_RANGE.start(), "TIMESTAMP '0001-01-01 00:00:00.000'"),
            (*proto::TIMESTAMP_RANGE.end(), "TIMESTAMP '9999-12-31 23:59:59.999'"),
        ] {
            let mut out = String::new();
            sql_literal(&Value::Timestamp(ms), &mut out).unwrap();
            assert_eq!(out, text);
        }
        assert!(sql_literal(&Value::Timestamp(proto::TIMESTAMP_RANGE.end() + 1), &mut String::new()).is_err());
        assert!(sql_literal(&Value::Text("a\0b".into()), &mut String::new()).is_err());
        assert!(sql_literal(&Value::Float(f64::NAN), &mut String::new()).is_err());
        let mut small = String::new();
        sql_literal(&Value::Float(1e-7), &mut small).unwrap();
        assert_eq!(small, "CAST('1e-7' AS DOUBLE PRECISION)");
    }

    proptest::proptest! {
        /// Every literal reads back as its value: text with each quote and backslash doubled
        /// (nothing else touched), numbers and timestamps exactly.
        #[test]
        fn literals_read_back(text in "[a-z'\\\\é\\n ]{0,40}", f in proptest::num::f64::NORMAL, ms in proptest::num::i64::ANY) {
            use proto::Value;
            let mut out = String::new();
            sql_literal(&Value::Text(text.clone()), &mut out).unwrap();
            let inner = &out[1..out.len() - 1];
            proptest::prop_assert_eq!(inner.replace("''", "'").replace("\\\\", "\\"), text.clone());
            proptest::prop_assert_eq!(inner.matches('\'').count() % 2, 0);
            out.clear();
            sql_literal(&Value::Float(f), &mut out).unwrap();
            let number = out.trim_start_matches("CAST('").trim_end_matches("' AS DOUBLE PRECISION)");
            proptest::prop_assert_eq!(number.parse::<f64>().unwrap(), f);
            out.clear();
            let ms = ms.rem_euclid(proto::TIMESTAMP_RANGE.end() - proto::TIMESTAMP_RANGE.start()) + proto::TIMESTAMP_RANGE.start();
            sql_literal(&Value::Timestamp(ms), &mut out).unwrap();
            let t = out.trim_start_matches("TIMESTAMP '").trim_end_matches('\'');
            let num = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
            let days = proto::civil::days_from_civil(num(0..4), num(5..7), num(8..10));
            let back = days * 86_400_000 + num(11..13) * 3_600_000 + num(14..16) * 60_000 + num(17..19) * 1000 + num(20..23);
            proptest::prop_assert_eq!(back, ms);
        }
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
        let inserts = |rows: &[Row], max: usize| {
            let all = sql.literal_statements(rows, max, false)?;
            Ok::<_, SqlError>(
                all.into_iter().filter(|s| s.starts_with("INSERT INTO \"notes__stage\"")).collect::<Vec<_>>(),
            )
        };
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

    fn sample() -> TableSchema {
        TableSchema {
            name: "charge \"sessions\"".into(),
            columns: vec![
                Column::new("site", SqlType::Text),
                Column::new("n", SqlType::BigInt),
                Column::new("kwh", SqlType::Double),
                Column::new("ok", SqlType::Boolean),
                Column::new("at", SqlType::Timestamp),
            ],
            key: vec![0, 1],
            version_column: "_version".into(),
        }
    }

    #[test]
    fn ddl_types_follow_the_dialect() {
        let sqlite = create_tables(&sample(), Dialect::Sqlite).unwrap();
        assert_eq!(
            sqlite[0],
            "CREATE TABLE IF NOT EXISTS \"charge \"\"sessions\"\"\" (\"site\" TEXT, \"n\" INTEGER, \"kwh\" REAL, \
             \"ok\" INTEGER, \"at\" INTEGER, \"_version\" TEXT NOT NULL)"
        );
        assert_eq!(
            sqlite[1],
            "CREATE TABLE IF NOT EXISTS \"charge \"\"sessions\"\"__deleted\" (\"site\" TEXT, \"n\" INTEGER, \
             \"_version\" TEXT NOT NULL)"
        );
        let pg = create_tables(&sample(), Dialect::Postgres).unwrap();
        assert_eq!(pg.len(), 2);
        assert!(pg[0].contains("\"at\" TIMESTAMP") && pg[0].contains("\"ok\" BOOLEAN"), "{}", pg[0]);
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
        assert_eq!(Dialect::Sqlite.placeholder(3), "?3");
        assert_eq!(Dialect::Postgres.placeholder(3), "$3");
    }

    #[test]
    fn schemas_the_sql_cannot_serve_are_refused() {
        let mut keyless = sample();
        keyless.key.clear();
        let mut out_of_range = sample();
        out_of_range.key = vec![9];
        let mut repeated = sample();
        repeated.key = vec![0, 0];
        let mut clash = sample();
        clash.columns[2].name = "SITE".into();
        let mut reserved = sample();
        reserved.columns[2].name = "_op".into();
        let mut unnamed = sample();
        unnamed.version_column = String::new();
        for bad in [keyless, out_of_range, repeated, clash, reserved, unnamed] {
            assert!(MergeSql::new(&bad, Dialect::Sqlite).is_err(), "{bad:?}");
            assert!(create_tables(&bad, Dialect::Postgres).is_err(), "{bad:?}");
        }
    }
}
