//! What differs between the SQL engines the warehouses write to: column types and placeholders.

use proto::SqlType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    /// Amazon Redshift (through the Data API): PostgreSQL's types, no COLLATE clause, no
    /// correlated subquery under OR.
    Redshift,
}

impl Dialect {
    pub(crate) fn column_type(self, ty: SqlType) -> &'static str {
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
    pub(crate) fn version_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "TEXT",
            Dialect::Postgres => "VARCHAR(256) COLLATE \"C\"",
            Dialect::Redshift => "VARCHAR(256)",
        }
    }

    pub(crate) fn text_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "TEXT",
            Dialect::Postgres | Dialect::Redshift => "VARCHAR(256)",
        }
    }

    pub(crate) fn int_type(self) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_each_engines_form() {
        assert_eq!(Dialect::Sqlite.placeholder(3), "?3");
        assert_eq!(Dialect::Postgres.placeholder(3), "$3");
    }
}
