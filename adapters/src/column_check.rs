//! Whether tables that already exist have the columns the sink writes: a table made by hand or
//! by another version fails at start, naming what it lacks, instead of having every batch
//! refused. Read from the catalog where the engine answers (`missing_columns`), probed by
//! statements where it does not (`column_probes`, for the Data API).

use crate::sql_text::{quote_ident, SqlError};
use crate::warehouse_ddl::tombstone_table;
use proto::TableSchema;

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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Column, SqlType};

    /// What an existing table must have, how its lack is named, and how the Data API probes for it.
    #[test]
    fn expected_columns_are_checked_and_probed() {
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
    }
}
