//! Pruning a table's tombstones (`<table>__deleted`). A tombstone keeps an older upsert of a
//! deleted key from bringing the row back; it is needed only while such an upsert can still be
//! read, which a stream's retention bounds. Each pass, in one transaction: stamp the tombstones
//! no pass has seen with the engine's own clock (`_deleted_at`, NULL when written), then remove
//! those stamped more than the retention ago. One clock, the warehouse's, measures every age;
//! a tombstone lives at least the retention after its delete committed, and at most one pass
//! interval longer. A tombstone replaced by a newer delete is stamped afresh.

use crate::dialect::Dialect;
use crate::sql_text::{quote_ident, SqlError};
use crate::warehouse_ddl::{tombstone_table, DELETED_AT};
use proto::TableSchema;
use std::time::Duration;

/// The engine's clock as the tombstones' timestamp column holds it: UTC on PostgreSQL (whatever
/// the session's time zone), `GETDATE()` on Redshift (UTC; its `NOW` and `CURRENT_TIMESTAMP`
/// run on the leader node only), milliseconds since the epoch on SQLite.
fn now(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "(now() AT TIME ZONE 'UTC')",
        Dialect::Redshift => "GETDATE()",
        Dialect::Sqlite => "(CAST(strftime('%s', 'now') AS INTEGER) * 1000)",
    }
}

/// `now` less `retention`, whole seconds (rounded up, so nothing goes early).
fn cutoff(dialect: Dialect, retention: Duration) -> String {
    let secs = retention.as_secs() + u64::from(retention.subsec_nanos() > 0);
    match dialect {
        Dialect::Postgres | Dialect::Redshift => format!("{} - INTERVAL '{secs} seconds'", now(dialect)),
        Dialect::Sqlite => format!("{} - {}", now(dialect), secs.saturating_mul(1000)),
    }
}

/// The pass's two statements, to run in order in one transaction: stamp, then remove.
pub fn prune_statements(schema: &TableSchema, dialect: Dialect, retention: Duration) -> Result<[String; 2], SqlError> {
    let tombstones = quote_ident(&tombstone_table(&schema.name))?;
    let at = quote_ident(DELETED_AT)?;
    Ok([
        format!("UPDATE {tombstones} SET {at} = {} WHERE {at} IS NULL", now(dialect)),
        format!("DELETE FROM {tombstones} WHERE {at} < {}", cutoff(dialect, retention)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Column, SqlType};

    #[test]
    fn each_engine_stamps_by_its_own_clock_and_removes_past_the_retention() {
        let schema = TableSchema {
            name: "t".into(),
            columns: vec![Column::new("id", SqlType::Text)],
            key: vec![0],
            version_column: "_version".into(),
        };
        let hour = Duration::from_secs(3_600);
        let [stamp, remove] = prune_statements(&schema, Dialect::Postgres, hour).unwrap();
        assert_eq!(
            stamp,
            "UPDATE \"t__deleted\" SET \"_deleted_at\" = (now() AT TIME ZONE 'UTC') WHERE \"_deleted_at\" IS NULL"
        );
        assert_eq!(
            remove,
            "DELETE FROM \"t__deleted\" WHERE \"_deleted_at\" < (now() AT TIME ZONE 'UTC') - INTERVAL '3600 seconds'"
        );
        let [_, remove] = prune_statements(&schema, Dialect::Redshift, Duration::from_millis(1_500)).unwrap();
        assert!(remove.ends_with("< GETDATE() - INTERVAL '2 seconds'"), "{remove}");
        let [_, remove] = prune_statements(&schema, Dialect::Sqlite, hour).unwrap();
        assert!(remove.ends_with("* 1000) - 3600000"), "{remove}");
    }
}
