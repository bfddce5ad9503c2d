//! The warehouse's tables: a target and its tombstone table (`<table>__deleted`, where deletes
//! are remembered by key and version), which schemas they can serve, and the DDL that creates
//! them in each dialect.

use crate::dialect::Dialect;
use crate::sql_text::{quote_ident, SqlError};
use proto::TableSchema;

/// Names the stage adds next to the target's columns, and the tombstones' stamp.
const STAGE_COLUMNS: [&str; 3] = ["_op", "_ord", DELETED_AT];

/// The tombstone table's column stamped by the pruning pass (`tombstone_prune.rs`): NULL until
/// a pass first sees the tombstone. Not in `expected_columns`: a tombstone table made before it
/// existed still serves commits (PostgreSQL adds it at start; see the README for the others).
pub const DELETED_AT: &str = "_deleted_at";

/// Refuses schemas the SQL cannot serve: no key, a key index out of range or repeated, or two
/// columns (the version column and the stage's `_op`/`_ord` included) with the same name. Names
/// are compared ignoring ASCII case, since SQLite and Redshift (by default) do.
pub(crate) fn check_schema(schema: &TableSchema) -> Result<(), SqlError> {
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

/// The name of the table remembering deletes of `table`.
pub fn tombstone_table(table: &str) -> String {
    format!("{table}__deleted")
}

/// DDL that creates the target and its tombstone table if absent, with an index on the key
/// where the engine has indexes (SQLite; PostgreSQL, unique; Redshift has none): every commit
/// looks its keys up in both tables, which without an index is a scan of each per commit.
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
            "CREATE TABLE IF NOT EXISTS {tombstones} ({}, {version} {} NOT NULL, {} {})",
            key_defs.join(", "),
            dialect.version_type(),
            quote_ident(DELETED_AT)?,
            dialect.column_type(proto::SqlType::Timestamp)
        ),
    ];
    // PostgreSQL's are unique: its commits merge by `ON CONFLICT` on them (`UpsertSql`).
    let unique = if dialect == Dialect::Postgres { "UNIQUE " } else { "" };
    if dialect != Dialect::Redshift {
        out.push(format!(
            "CREATE {unique}INDEX IF NOT EXISTS {} ON {target} ({})",
            quote_ident(&format!("{}__key", schema.name))?,
            keys.join(", ")
        ));
        out.push(format!(
            "CREATE {unique}INDEX IF NOT EXISTS {} ON {tombstones} ({})",
            quote_ident(&format!("{}__deleted_key", schema.name))?,
            keys.join(", ")
        ));
    }
    // A tombstone table made before the pruning stamp gets it (SQLite's adapter adds it after
    // reading the table's columns: it has no `IF NOT EXISTS` here).
    if dialect == Dialect::Postgres {
        out.push(format!(
            "ALTER TABLE {tombstones} ADD COLUMN IF NOT EXISTS {} {}",
            quote_ident(DELETED_AT)?,
            dialect.column_type(proto::SqlType::Timestamp)
        ));
    }
    Ok(out)
}

/// The key columns, quoted, in key order.
pub(crate) fn key_columns(schema: &TableSchema) -> Result<Vec<String>, SqlError> {
    schema.key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proto::{Column, SqlType};

    /// A table with a quote in its name, every column type and a two-column key.
    pub(crate) fn sample() -> TableSchema {
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
             \"_version\" TEXT NOT NULL, \"_deleted_at\" INTEGER)"
        );
        let pg = create_tables(&sample(), Dialect::Postgres).unwrap();
        assert_eq!(pg.len(), 5);
        assert_eq!(
            pg[4],
            "ALTER TABLE \"charge \"\"sessions\"\"__deleted\" ADD COLUMN IF NOT EXISTS \"_deleted_at\" TIMESTAMP"
        );
        assert_eq!(pg[2], "CREATE UNIQUE INDEX IF NOT EXISTS \"charge \"\"sessions\"\"__key\" ON \"charge \"\"sessions\"\"\" (\"site\", \"n\")");
        assert!(pg[0].contains("\"at\" TIMESTAMP") && pg[0].contains("\"ok\" BOOLEAN"), "{}", pg[0]);
    }

    #[test]
    fn redshift_ddl_has_no_collate_and_holds_what_the_pipeline_lets_through() {
        let ddl = create_tables(&sample(), Dialect::Redshift).unwrap().join("; ");
        assert!(!ddl.contains("COLLATE") && ddl.contains("VARCHAR(256)"), "{ddl}");
        // Text columns hold what the pipeline lets through (`proto::unstorable_text`).
        assert!(ddl.contains(&format!("VARCHAR({})", proto::MAX_TEXT_BYTES)), "{ddl}");
        assert!(ddl.contains(&format!("\"_version\" VARCHAR({})", proto::MAX_VERSION_BYTES)), "{ddl}");
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
            assert!(check_schema(&bad).is_err(), "{bad:?}");
            assert!(create_tables(&bad, Dialect::Postgres).is_err(), "{bad:?}");
        }
    }
}
