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
}

/// The one function that puts a name into SQL: double quotes, embedded quotes doubled.
pub fn quote_ident(name: &str) -> Result<String, SqlError> {
    if name.is_empty() || name.contains('\0') {
        return Err(SqlError::BadIdentifier(name.to_owned()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn column_type(self, ty: SqlType) -> &'static str {
        match (self, ty) {
            (Dialect::Sqlite, SqlType::Boolean | SqlType::BigInt | SqlType::Timestamp) => "INTEGER",
            (Dialect::Sqlite, SqlType::Double) => "REAL",
            (Dialect::Sqlite, SqlType::Text) => "TEXT",
            (Dialect::Postgres, SqlType::Boolean) => "BOOLEAN",
            (Dialect::Postgres, SqlType::BigInt) => "BIGINT",
            (Dialect::Postgres, SqlType::Double) => "DOUBLE PRECISION",
            (Dialect::Postgres, SqlType::Text) => "VARCHAR(65535)",
            (Dialect::Postgres, SqlType::Timestamp) => "TIMESTAMP",
        }
    }

    fn text_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "TEXT",
            Dialect::Postgres => "VARCHAR(256)",
        }
    }

    fn int_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER",
            Dialect::Postgres => "BIGINT",
        }
    }

    /// The `n`-th placeholder (1-based).
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
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
    /// Latest row per key.
    pub dedupe_stage: String,
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

/// DDL that creates the target and its tombstone table if absent (with a non-unique key index
/// where the engine has indexes).
pub fn create_tables(schema: &TableSchema, dialect: Dialect) -> Result<Vec<String>, SqlError> {
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
            dialect.text_type()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {tombstones} ({}, {version} {} NOT NULL)",
            key_defs.join(", "),
            dialect.text_type()
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
        let target = quote_ident(&schema.name)?;
        let tombstones = quote_ident(&tombstone_table(&schema.name))?;
        let stage = quote_ident(&format!("{}__stage", schema.name))?;
        let stage_index = quote_ident(&format!("{}__stage_key", schema.name))?;
        let version = quote_ident(&schema.version_column)?;
        let keys = key_columns(schema)?;
        let columns: Vec<String> = schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Result<_, _>>()?;
        let mut typed: Vec<String> =
            schema.columns.iter().zip(&columns).map(|(c, q)| format!("{q} {}", dialect.column_type(c.ty))).collect();
        typed.push(format!("{version} {}", dialect.text_type()));
        typed.push(format!("\"_op\" {}", dialect.text_type()));
        typed.push(format!("\"_ord\" {}", dialect.int_type()));
        let mut stage_columns = columns.clone();
        stage_columns.extend([version.clone(), "\"_op\"".to_owned(), "\"_ord\"".to_owned()]);

        let newer_in_stage = format!(
            "SELECT 1 FROM {stage} AS \"n\" WHERE {} AND (\"n\".{version} > {stage}.{version} \
             OR (\"n\".{version} = {stage}.{version} AND \"n\".\"_ord\" > {stage}.\"_ord\"))",
            key_match(&keys, "\"n\"", &stage)
        );
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
            dedupe_stage: format!("DELETE FROM {stage} WHERE EXISTS ({newer_in_stage})"),
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

    /// A multi-row INSERT into the stage for `rows` rows, placeholders numbered from 1.
    pub fn insert_stage(&self, rows: usize) -> String {
        let per = self.params_per_row();
        let tuples: Vec<String> = (0..rows)
            .map(|r| {
                let ps: Vec<String> = (1..=per).map(|i| self.dialect.placeholder(r * per + i)).collect();
                format!("({})", ps.join(", "))
            })
            .collect();
        format!("INSERT INTO {} ({}) VALUES {}", self.stage, self.stage_columns.join(", "), tuples.join(", "))
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
}
